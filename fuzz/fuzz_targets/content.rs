#![no_main]
//! See the driver `image_service_fuzz::content`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| image_service_fuzz::content(data));
