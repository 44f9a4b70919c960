//! Figure 8: variants of phone photos on one core, the renderer against
//! libvips on the same files: CPU per photo, how close each medium variant
//! is to a reference downscale, and one render's memory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use image_service::fixtures;
use image_service::testkit::process::{own_cpu_seconds, peak_growth};
use image_service::testkit::servers::tools_dir;
use image_service::testkit::stats::ms;

use crate::Plan;
use crate::harness::MIB;

pub fn run(plan: &Plan) -> String {
    let decoder = if cfg!(feature = "libjpeg-turbo") {
        "libjpeg-turbo (feature `libjpeg-turbo`)"
    } else {
        "jpeg-decoder (the default build)"
    };
    let mut out =
        format!("### 8. Variants of phone photos (one core; JPEGs decoded by {decoder})\n\n");
    let dir = tempfile::tempdir().expect("temp dir");
    let photos = photos(plan);
    let _ = writeln!(
        out,
        "| photo | JPEG | image-service CPU ms | libvips CPU ms | ratio libvips / image-service | PSNR of `medium`, image-service / libvips | image-service: decode / resize / encode / BlurHash / ThumbHash / PDQ ms | one render's memory: peak RSS growth / reserved |\n|---|---|---|---|---|---|---|---|"
    );
    let mut vips_error = None;
    for (i, (what, jpeg, orientation)) in photos.iter().enumerate() {
        let path = dir.path().join(format!("photo-{i}.jpg"));
        std::fs::write(&path, jpeg).expect("write photo");
        let (row, vips) = photo_row(plan, what, jpeg, *orientation, &path);
        out.push_str(&row);
        if let Err(why) = vips {
            vips_error = Some(why);
        }
    }
    if let Some(why) = vips_error {
        let _ = writeln!(out, "\nlibvips not measured: {why}.");
    }
    let _ = writeln!(
        out,
        "\nCPU time (user + system) per photo for `small` (320) + `medium` (1080) + BlurHash + ThumbHash + PDQ hash (from `medium`'s pixels shrunk to 512), the mean of {} renders each. The photos are rendered from a scene (sky, clouds, hills, a textured field, a house, trees, vignetting, sensor grain) and encoded the way phones write them, with EXIF; the synthetic row is the old noise-textured JPEG. libvips runs through pyvips with `VIPS_CONCURRENCY=1`: one `thumbnail` to 1080 (shrink-on-load, EXIF rotation) held in memory, written as JPEG Q82, and 320 made from it and written the same way, like the service. PSNR compares each `medium` with a reference: the photo decoded at full size, turned upright and resized straight to the same size with Lanczos3. Memory: how far the process's resident memory rose during one render (after handing freed memory back to the kernel), next to what the service reserves from its memory budget for that render, estimated from the header.\n",
        plan.renders
    );
    out
}

/// The photos of this figure (and of the encodings'): the phone photos
/// and the synthetic one, each with its description and orientation.
pub fn photos(plan: &Plan) -> Vec<(String, Vec<u8>, u16)> {
    first_photos(plan, usize::MAX)
}

/// The first `count` of [`photos`], the others not rendered.
pub fn first_photos(plan: &Plan, count: usize) -> Vec<(String, Vec<u8>, u16)> {
    let mut photos: Vec<(String, Vec<u8>, u16)> = plan
        .phone_shots()
        .take(count)
        .map(|shot| (shot.describe(), cached_shot(&shot), shot.orientation))
        .collect();
    if photos.len() < count {
        let (w, h) = (4000 / plan.photo_shrink, 3000 / plan.photo_shrink);
        photos.push((
            format!("synthetic: {w} × {h} noise-textured, baseline, 4:2:0, Q90"),
            fixtures::photo_jpeg(w, h),
            1,
        ));
    }
    photos
}

/// The JPEG of `shot`, rendered once and kept in the build's temporary
/// directory: a 12-megapixel scene takes a minute of CPU to render in a
/// debug build, and the renders are deterministic.
fn cached_shot(shot: &fixtures::PhoneShot) -> Vec<u8> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("phone-shots");
    let path = dir.join(format!(
        "{}x{}-p{}-s{}-o{}-q{}-seed{}.jpg",
        shot.width,
        shot.height,
        u8::from(shot.progressive),
        u8::from(shot.subsampled),
        shot.orientation,
        shot.quality,
        shot.seed
    ));
    if let Ok(jpeg) = std::fs::read(&path) {
        return jpeg;
    }
    let jpeg = fixtures::phone_shot(shot);
    // A cache only: a render that cannot be kept is made again next time.
    let partial = path.with_extension(format!("{}.partial", std::process::id()));
    let _ = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&partial, &jpeg))
        .and_then(|()| std::fs::rename(&partial, &path));
    jpeg
}

/// The row of one photo (the JPEG at `path`), and why libvips was not
/// measured if it was not.
fn photo_row(
    plan: &Plan,
    what: &str,
    jpeg: &[u8],
    orientation: u16,
    path: &Path,
) -> (String, Result<(), String>) {
    let (ours, profile, medium, peak) = our_renders(jpeg, orientation as u8, plan.renders);
    let (width, height) = imagesize::blob_size(jpeg)
        .map(|size| (size.width as u32, size.height as u32))
        .expect("the photo's size");
    let largest = image_service::media::variants::largest_side(
        &image_service::media::variants::default_sizes(),
    );
    let reserved =
        image_service::media::variants::memory_needed(jpeg, "image/jpeg", width, height, largest);
    let reference = reference_image(jpeg, orientation);
    let our_psnr = psnr(&reference, &medium);
    let mut vips = Ok(());
    let (theirs, their_psnr) = match vips_renders(path, plan.renders) {
        Ok((ms, medium_path)) => {
            let medium = image::open(&medium_path)
                .expect("libvips' medium")
                .to_rgb8();
            (format!("{ms:.1}"), Some((ms, psnr(&reference, &medium))))
        }
        Err(why) => {
            vips = Err(why);
            ("–".into(), None)
        }
    };
    let stage = |d: Duration| ms(d) / plan.renders as f64;
    let row = format!(
        "| {what} | {:.2} MB, {:.2} bits/px | {ours:.1} | {theirs} | {} | {our_psnr:.2} / {} dB | {:.1} / {:.1} / {:.1} / {:.1} / {:.2} / {:.2} | {:.1} / {:.1} MiB |\n",
        jpeg.len() as f64 / 1e6,
        jpeg.len() as f64 * 8.0 / f64::from(reference.width() * reference.height()),
        their_psnr.map_or("–".into(), |(t, _)| format!("{:.2}", t / ours)),
        their_psnr.map_or("–".into(), |(_, p)| format!("{p:.2}")),
        stage(profile.decode),
        stage(profile.resize),
        stage(profile.encode),
        stage(profile.placeholder),
        stage(profile.thumbhash),
        stage(profile.pdq),
        peak as f64 / MIB as f64,
        reserved as f64 / MIB as f64,
    );
    (row, vips)
}

/// Mean CPU milliseconds and stage times of `renders` renders, and the
/// medium variant of the last one, decoded.
fn our_renders(
    jpeg: &[u8],
    orientation: u8,
    renders: usize,
) -> (
    f64,
    image_service::media::variants::RenderProfile,
    image::RgbImage,
    u64,
) {
    use image_service::media::variants::{RenderProfile, render_profiled};
    let once = || {
        render_profiled(
            jpeg,
            image::ImageFormat::Jpeg,
            orientation,
            512 * MIB as u64,
        )
        .expect("renders")
    };
    // The first render measures the memory one render holds; it also
    // warms the caches for the timed ones.
    let (peak, (mut last, _)) = peak_growth(once);
    let mut profile = RenderProfile::default();
    let before = own_cpu_seconds();
    for _ in 0..renders {
        let (rendered, p) = once();
        profile.decode += p.decode;
        profile.resize += p.resize;
        profile.encode += p.encode;
        profile.placeholder += p.placeholder;
        profile.thumbhash += p.thumbhash;
        profile.pdq += p.pdq;
        last = rendered;
    }
    let cpu_ms = (own_cpu_seconds() - before) * 1000.0 / renders as f64;
    let medium = last
        .variants
        .iter()
        .find(|v| v.name == "medium")
        .expect("a medium variant");
    let medium = image::load_from_memory(&medium.bytes)
        .expect("medium decodes")
        .to_rgb8();
    (cpu_ms, profile, medium, peak)
}

/// The photo decoded whole and turned upright: what every variant is
/// compared with.
pub fn reference_image(jpeg: &[u8], orientation: u16) -> image::RgbImage {
    // jpeg-decoder, not the image crate's zune-jpeg: zune-jpeg 0.5.15
    // decodes the first phone photo (baseline, Q94) to garbage.
    let mut decoder = jpeg_decoder::Decoder::new(std::io::Cursor::new(jpeg));
    let pixels = decoder.decode().expect("the photo decodes");
    let info = decoder.info().expect("a frame header");
    let mut full = image::DynamicImage::ImageRgb8(
        image::RgbImage::from_raw(u32::from(info.width), u32::from(info.height), pixels)
            .expect("RGB pixels"),
    );
    if let Some(o) = image::metadata::Orientation::from_exif(orientation as u8) {
        full.apply_orientation(o);
    }
    full.to_rgb8()
}

/// PSNR in dB of `candidate` against `reference` resized straight to the
/// candidate's size with Lanczos3.
fn psnr(reference: &image::RgbImage, candidate: &image::RgbImage) -> f64 {
    use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
    let mut target = image::RgbImage::new(candidate.width(), candidate.height());
    Resizer::new()
        .resize(
            reference,
            &mut target,
            &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3)),
        )
        .expect("reference resized");
    let squared: f64 = target
        .as_raw()
        .iter()
        .zip(candidate.as_raw())
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum();
    let mse = squared / target.as_raw().len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// libvips' mean CPU milliseconds per photo over `renders`, and the path
/// of the medium it wrote.
pub fn vips_renders(path: &Path, renders: usize) -> Result<(f64, PathBuf), String> {
    let python = std::env::var("BENCH_PYTHON").unwrap_or_else(|_| {
        let venv = tools_dir().join("venv/bin/python");
        venv.display().to_string()
    });
    let medium_path = path.with_extension("vips-medium.jpg");
    let script = format!(
        "import time, pyvips\n\
         def once():\n    \
             medium = pyvips.Image.thumbnail({path:?}, 1080).copy_memory()\n    \
             m = medium.write_to_buffer('.jpg[Q=82]')\n    \
             s = medium.thumbnail_image(320).write_to_buffer('.jpg[Q=82]')\n    \
             return m, s\n\
         m, s = once()\n\
         open({medium:?}, 'wb').write(m)\n\
         open({small:?}, 'wb').write(s)\n\
         start = time.process_time()\n\
         for _ in range({renders}):\n    once()\n\
         print((time.process_time() - start) * 1000 / {renders})\n",
        path = path.display().to_string(),
        medium = medium_path.display().to_string(),
        small = small_path(&medium_path).display().to_string(),
    );
    let output = Command::new(python)
        .arg("-c")
        .arg(script)
        .env("VIPS_CONCURRENCY", "1")
        .output()
        .map_err(|e| format!("python: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "pyvips unavailable ({})",
            stderr.lines().last().unwrap_or("")
        ));
    }
    let ms = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("unexpected output: {e}"))?;
    Ok((ms, medium_path))
}

/// Where `vips_renders` writes its small, beside its medium.
pub fn small_path(medium: &Path) -> PathBuf {
    medium.with_extension("small.jpg")
}
