//! The CPU a JPEG's render takes against the decode work its scans count
//! (`--max-jpeg-decode-passes`, [`JpegDecodeWork`]): progressive files
//! built to cost the most for their size beside the phone photos and the
//! encoders' own progressive files. For each, the passes the scrubber
//! counts, whether the default limit lets it in, and the thread CPU of one
//! render (decode at the reduced DCT scale, resize, encode) by the build's
//! JPEG decoder: jpeg-decoder, or libjpeg-turbo with
//! `--features libjpeg-turbo`.
//!
//! `cargo bench --bench jpeg_decode_work` measures full-size files (up to
//! 64 megapixels); run by `cargo test` (without `--bench`) it does small
//! ones, so the benchmark cannot rot. `-- full` under `cargo test` gives
//! the full sizes in a debug build (the decoders are built optimised in
//! debug builds too: Cargo.toml).
//!
//! [`JpegDecodeWork`]: image_service::media::limits::JpegDecodeWork

use image::ImageFormat;
use image_service::fixtures::{
    PhoneShot, narrow_scans_jpeg, phone_shot, repeated_scans_jpeg, scene, wide_scans_jpeg,
};
use image_service::media::limits::DEFAULT_MAX_JPEG_DECODE_PASSES;
use image_service::media::scrub::Scrubber;
use image_service::media::variants::{self, encode};

/// The thread's CPU time so far, in seconds.
fn thread_cpu() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// The passes the scrubber counts for `jpeg`, and whether it refuses it at
/// the default limit.
fn passes(jpeg: &[u8]) -> (f64, bool) {
    let mut scrubber = Scrubber::bounded(false, u64::MAX, DEFAULT_MAX_JPEG_DECODE_PASSES);
    let mut out = Vec::new();
    let refused = scrubber
        .push(bytes::Bytes::copy_from_slice(jpeg), &mut out)
        .is_err();
    let mut counting = Scrubber::new(false);
    let _ = counting.push(bytes::Bytes::copy_from_slice(jpeg), &mut out);
    (counting.jpeg_decode_passes().unwrap_or(0.0), refused)
}

/// One render's thread CPU, in seconds, and how it ended.
fn render_cpu(jpeg: &[u8]) -> (f64, String) {
    let started = thread_cpu();
    let result = variants::render(jpeg, ImageFormat::Jpeg, 1, 2 << 30);
    let cpu = thread_cpu() - started;
    let outcome = match result {
        Ok(_) => "rendered".to_owned(),
        Err(e) => format!("refused by the decoder: {e}"),
    };
    (cpu, outcome)
}

fn encoded(width: u32, height: u32, coder: encode::JpegCoder) -> Vec<u8> {
    let pixels = scene(width, height, 1);
    encode::jpeg(
        &pixels,
        None,
        encode::Jpeg {
            coder,
            ..encode::JPEG_BASELINE
        },
    )
    .expect("a scene encodes")
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench" || a == "full");
    // Side of the crafted files, and of the phone photos (4:3).
    let (side, photo) = if full {
        (8000u16, (4000, 3000))
    } else {
        (512, (640, 480))
    };
    // mozjpeg's scan search (and the scene) at 50 MP take minutes in a
    // debug build: its scan script does not change with the size.
    let big = if full { (2000, 1500) } else { (800, 600) };
    let decoder = if cfg!(feature = "libjpeg-turbo") {
        "libjpeg-turbo"
    } else {
        "jpeg-decoder"
    };
    let shot = move |progressive| PhoneShot {
        width: photo.0,
        height: photo.1,
        progressive,
        subsampled: true,
        orientation: 1,
        quality: 90,
        seed: 1,
    };
    let mp = |w: u32, h: u32| f64::from(w) * f64::from(h) / 1e6;
    let s = u32::from(side);
    // Made one at a time, as each row is measured: crafted files first.
    type Make = Box<dyn Fn() -> Vec<u8>>;
    let files: Vec<(String, Make)> = vec![
        (
            format!("crafted: 499 scans repeating the AC band, grey {s}²"),
            Box::new(move || repeated_scans_jpeg(side, side, 499)),
        ),
        (
            format!("crafted: 500 one-coefficient scans (valid), grey {s}²"),
            Box::new(move || narrow_scans_jpeg(side, side, 500)),
        ),
        (
            format!("crafted: 16 whole-band scans (valid), grey {s}²"),
            Box::new(move || wide_scans_jpeg(side, side)),
        ),
        (
            format!("phone photo, baseline, {:.0} MP", mp(photo.0, photo.1)),
            Box::new(move || phone_shot(&shot(false))),
        ),
        (
            format!(
                "phone photo, progressive (jpeg-encoder), {:.0} MP",
                mp(photo.0, photo.1)
            ),
            Box::new(move || phone_shot(&shot(true))),
        ),
        (
            format!(
                "libjpeg's progressive script (mozjpeg, fastest defaults), {:.0} MP",
                mp(photo.0, photo.1)
            ),
            Box::new(move || encoded(photo.0, photo.1, encode::JpegCoder::Mozjpeg)),
        ),
        (
            format!(
                "mozjpeg's default scans (scan search, trellis), {:.0} MP",
                mp(big.0, big.1)
            ),
            Box::new(move || encoded(big.0, big.1, encode::JpegCoder::MozjpegTrellis)),
        ),
    ];
    println!(
        "JPEG decode work (decoder: {decoder}; default limit {DEFAULT_MAX_JPEG_DECODE_PASSES} passes)\n"
    );
    println!("| file | bytes | passes | at the default | render CPU | render |");
    println!("|---|---|---|---|---|---|");
    for (name, make) in files {
        let jpeg = make();
        let (passes, refused) = passes(&jpeg);
        let (cpu, outcome) = render_cpu(&jpeg);
        println!(
            "| {name} | {} | {passes:.2} | {} | {cpu:.2} s | {outcome} |",
            jpeg.len(),
            if refused { "refused" } else { "accepted" },
        );
    }
}
