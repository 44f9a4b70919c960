#![no_main]
//! See the driver `image_service_fuzz::authorization`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| image_service_fuzz::authorization(data));
