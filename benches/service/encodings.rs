//! The encodings of variants (#33): for the photos of figure 8, each
//! encoder over a grid of qualities and efforts, its bytes, its
//! SSIMULACRA2 score and its CPU per `medium` variant; the setting of each
//! encoding whose score matches the JPEG variants made before (jpeg-encoder
//! at quality 82); and the DCT scale JPEGs are decoded at, by how much
//! larger than the variant the decode must stay.
//!
//! Every score compares with the reference of figure 8: the photo decoded
//! at full size, turned upright and resized straight to `medium` with
//! Lanczos3. The encoders are given that same reference, so the encoding
//! table measures the encoders alone.

use std::fmt::Write as _;

use image::RgbImage;
use image_service::fixtures;
use image_service::media::variants::encode::{
    self, Avif, Frame, JPEG_BASELINE, Jpeg, JpegCoder, Webp,
};
use image_service::media::variants::{DEFAULT_VARIANTS, fit};
use image_service::testkit::process::own_cpu_seconds;

use crate::Plan;
use crate::variants::{photos, reference_image};

/// One encoder's settings.
#[derive(Clone, Copy, Debug)]
enum Setting {
    Jpeg(Jpeg),
    Webp(Webp),
    #[cfg_attr(not(feature = "avif"), allow(dead_code))]
    Avif(Avif),
}

impl Setting {
    /// The encoding it belongs to, one choice each.
    fn family(&self) -> String {
        match self {
            Self::Jpeg(j) => match j.coder {
                JpegCoder::Baseline => "JPEG, jpeg-encoder baseline".into(),
                JpegCoder::Progressive => {
                    "JPEG, jpeg-encoder progressive + optimised Huffman".into()
                }
                JpegCoder::Mozjpeg => {
                    "JPEG, mozjpeg progressive + optimised Huffman, no trellis".into()
                }
                JpegCoder::MozjpegTrellis => "JPEG, mozjpeg with trellis quantisation".into(),
            },
            Self::Webp(w) => format!("WebP lossy, method {}", w.method),
            Self::Avif(a) => format!("AVIF (ravif), speed {}", a.speed),
        }
    }

    fn quality(&self) -> String {
        match self {
            Self::Jpeg(j) => j.quality.to_string(),
            Self::Webp(w) => format!("{}", w.quality),
            Self::Avif(a) => format!("{}", a.quality),
        }
    }

    fn encode(&self, pixels: &RgbImage) -> Vec<u8> {
        match *self {
            Self::Jpeg(settings) => encode::jpeg(pixels, None, settings),
            Self::Webp(settings) => encode::webp(Frame::Rgb(pixels), None, settings),
            #[cfg(feature = "avif")]
            Self::Avif(settings) => encode::avif(Frame::Rgb(pixels), settings),
            #[cfg(not(feature = "avif"))]
            Self::Avif(_) => unreachable!("AVIF settings are listed with the feature only"),
        }
        .expect("the variant encodes")
    }

    /// The encoded variant's pixels; `None` for AVIF without a decoder in
    /// this build (feature `heif`).
    fn decode(&self, bytes: &[u8]) -> Option<RgbImage> {
        match self {
            Self::Jpeg(_) => Some(decode_jpeg(bytes)),
            Self::Webp(_) => Some(
                image::load_from_memory_with_format(bytes, image::ImageFormat::WebP)
                    .expect("the WebP decodes")
                    .to_rgb8(),
            ),
            Self::Avif(_) => decode_avif(bytes),
        }
    }

    /// Encodes per measured CPU: AVIF is slow, one is enough.
    fn repeats(&self, full: bool) -> usize {
        match (self, full) {
            (Self::Avif(_), _) | (_, false) => 1,
            _ => 5,
        }
    }
}

/// The grid: qualities around the baseline's score for each encoder.
fn grid(full: bool) -> Vec<Setting> {
    let jpeg = |coder, quality| Setting::Jpeg(Jpeg { coder, quality });
    let webp = |method, quality| Setting::Webp(Webp { quality, method });
    let mut grid = vec![Setting::Jpeg(JPEG_BASELINE)];
    if !full {
        grid.extend([
            jpeg(JpegCoder::Progressive, 82),
            jpeg(JpegCoder::Mozjpeg, 82),
            jpeg(JpegCoder::MozjpegTrellis, 82),
            webp(4, 82.0),
        ]);
        #[cfg(feature = "avif")]
        grid.push(Setting::Avif(Avif {
            quality: 70.0,
            speed: 10,
        }));
        return grid;
    }
    // Qualities in steps of one around the baseline's score (found with a
    // coarser grid first: mozjpeg 76-88 and 76-92 by 2, WebP 70-94 by 3).
    grid.push(jpeg(JpegCoder::Progressive, 82));
    for quality in 78..=82 {
        grid.push(jpeg(JpegCoder::Mozjpeg, quality));
    }
    for quality in 81..=85 {
        grid.push(jpeg(JpegCoder::MozjpegTrellis, quality));
    }
    for quality in (86..=92).step_by(2) {
        grid.push(webp(4, quality as f32));
    }
    for quality in [88.0, 90.0] {
        grid.push(webp(6, quality));
    }
    // rav1e is far too slow unoptimised (seconds per variant at speed 10
    // even with its own crate optimised): AVIF is measured in release
    // builds only.
    #[cfg(all(feature = "avif", not(debug_assertions)))]
    for speed in [6, 8] {
        for quality in (55..=90).step_by(5) {
            grid.push(Setting::Avif(Avif {
                quality: quality as f32,
                speed,
            }));
        }
    }
    grid
}

/// One setting's figures over the photos.
#[derive(Default, Clone)]
struct Totals {
    bytes: f64,
    baseline_bytes: f64,
    score: f64,
    scored: usize,
    cpu_ms: f64,
    photos: usize,
}

impl Totals {
    fn score(&self) -> Option<f64> {
        (self.scored == self.photos && self.photos > 0).then(|| self.score / self.scored as f64)
    }
    fn relative(&self) -> f64 {
        self.bytes / self.baseline_bytes
    }
}

pub fn run(plan: &Plan) -> String {
    let full = plan.photo_shrink == 1;
    let photos = photos(plan);
    let grid = grid(full);
    let medium = DEFAULT_VARIANTS
        .iter()
        .find(|(name, _)| *name == "medium")
        .map_or(1080, |(_, side)| *side);
    let mut totals = vec![Totals::default(); grid.len()];
    for (_, jpeg, orientation) in &photos {
        let full_size = reference_image(jpeg, *orientation);
        let target = fit(full_size.width(), full_size.height(), medium);
        let reference = lanczos3(&full_size, target);
        drop(full_size);
        let mut baseline_bytes = 0.0;
        for (setting, total) in grid.iter().zip(&mut totals) {
            let repeats = setting.repeats(full);
            let before = own_cpu_seconds();
            let mut bytes = Vec::new();
            for _ in 0..repeats {
                bytes = setting.encode(&reference);
            }
            total.cpu_ms += (own_cpu_seconds() - before) * 1000.0 / repeats as f64;
            if matches!(setting, Setting::Jpeg(j) if *j == JPEG_BASELINE) {
                baseline_bytes = bytes.len() as f64;
            }
            total.bytes += bytes.len() as f64;
            total.baseline_bytes += baseline_bytes;
            total.photos += 1;
            if let Some(decoded) = setting.decode(&bytes) {
                total.score += ssimulacra2(&reference, &decoded);
                total.scored += 1;
            }
        }
    }
    report(plan, &photos, &grid, &totals, medium)
}

/// The phone photo of #33's report, wider than figure 8's: at 4608 px its
/// old decode scale (1/4) left a resize of only 1.07× to `medium`.
const WIDE_SHOT: fixtures::PhoneShot = fixtures::PhoneShot {
    width: 4608,
    height: 1976,
    progressive: false,
    subsampled: true,
    orientation: 1,
    quality: 90,
    seed: 4,
};

/// The DCT scale table: the photos of figure 8 and [`WIDE_SHOT`], each
/// decoded under every headroom rule.
pub fn run_scale(plan: &Plan) -> String {
    let mut photos = photos(plan);
    let wide = fixtures::PhoneShot {
        width: WIDE_SHOT.width / plan.photo_shrink,
        height: WIDE_SHOT.height / plan.photo_shrink,
        ..WIDE_SHOT
    };
    photos.push((wide.describe(), fixtures::phone_shot(&wide), 1));
    let medium = DEFAULT_VARIANTS
        .iter()
        .find(|(name, _)| *name == "medium")
        .map_or(1080, |(_, side)| *side);
    let mut rows = String::new();
    let mut totals = vec![(0.0, 0.0); HEADROOMS.len() + 1];
    for (_, jpeg, orientation) in &photos {
        let full_size = reference_image(jpeg, *orientation);
        let target = fit(full_size.width(), full_size.height(), medium);
        let reference = lanczos3(&full_size, target);
        drop(full_size);
        headroom_row(
            plan,
            jpeg,
            *orientation,
            medium,
            &reference,
            &mut totals,
            &mut rows,
        );
    }
    scale_report(plan, photos.len(), medium, &rows, &totals)
}

/// The headroom rules measured: the smallest DCT scale whose decode is at
/// least this many times the variant's longest side.
const HEADROOMS: [(u32, u32); 3] = [(1, 1), (3, 2), (2, 1)];

fn headroom_name(index: usize) -> String {
    match HEADROOMS.get(index) {
        Some((1, 1)) => "≥ 1× (before)".into(),
        Some((n, d)) => format!("≥ {}×", *n as f64 / *d as f64),
        None => "full decode".into(),
    }
}

/// The `medium` of one photo decoded under each headroom rule and in
/// full, resized, encoded as before (jpeg-encoder Q82) and scored: one
/// row, and the sums of score and decode CPU.
fn headroom_row(
    plan: &Plan,
    jpeg: &[u8],
    orientation: u16,
    medium: u32,
    reference: &RgbImage,
    totals: &mut [(f64, f64)],
    rows: &mut String,
) {
    let repeats = if plan.photo_shrink == 1 { 3 } else { 1 };
    let (width, height) = imagesize::blob_size(jpeg)
        .map(|s| (s.width as u32, s.height as u32))
        .expect("the photo's size");
    let _ = write!(rows, "| {width} × {height} |");
    for (i, total) in totals.iter_mut().enumerate() {
        // The requested side; the full decode asks for the whole image.
        let side = HEADROOMS
            .get(i)
            .map_or(width.max(height), |(n, d)| medium * n / d);
        let before = own_cpu_seconds();
        let mut decoded = None;
        for _ in 0..repeats {
            decoded = Some(decode_jpeg_at(jpeg, side));
        }
        let decode_ms = (own_cpu_seconds() - before) * 1000.0 / repeats as f64;
        let mut decoded = image::DynamicImage::ImageRgb8(decoded.expect("decoded"));
        let scale = width.max(height) as f64 / decoded.width().max(decoded.height()) as f64;
        if let Some(o) = image::metadata::Orientation::from_exif(orientation as u8) {
            decoded.apply_orientation(o);
        }
        let resized = lanczos3(&decoded.to_rgb8(), (reference.width(), reference.height()));
        let bytes = encode::jpeg(&resized, None, JPEG_BASELINE).expect("encodes");
        let score = ssimulacra2(reference, &decode_jpeg(&bytes));
        total.0 += score;
        total.1 += decode_ms;
        let _ = write!(rows, " 1/{scale:.0}: {score:.1}, {decode_ms:.0} ms |");
    }
    rows.push('\n');
}

fn report(
    plan: &Plan,
    photos: &[(String, Vec<u8>, u16)],
    grid: &[Setting],
    totals: &[Totals],
    medium: u32,
) -> String {
    let n = photos.len() as f64;
    let mut out = format!(
        "### Encodings of `medium` ({medium} px), one core\n\nPhotos: {}.\n\n| encoding | quality | bytes (mean) | bytes / before | SSIMULACRA2 (mean) | encode CPU ms |\n|---|---|---|---|---|---|\n",
        photos
            .iter()
            .map(|(what, _, _)| what.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    );
    for (setting, total) in grid.iter().zip(totals) {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.3} | {} | {:.1} |",
            setting.family(),
            setting.quality(),
            total.bytes / n,
            total.relative(),
            total
                .score()
                .map_or("– (no AVIF decoder: feature `heif`)".into(), |s| format!(
                    "{s:.2}"
                )),
            total.cpu_ms / n,
        );
    }
    let target = totals[0].score().unwrap_or(0.0);
    let _ = writeln!(
        out,
        "\n**Chosen** (each encoding's smallest setting within ±0.5 of the score before, {target:.2}, else the closest):\n\n| encoding | quality | SSIMULACRA2 | bytes / before | encode CPU ms |\n|---|---|---|---|---|"
    );
    let mut families: Vec<String> = grid.iter().map(Setting::family).collect();
    families.dedup();
    for family in families.iter().skip(1) {
        let candidates: Vec<_> = grid
            .iter()
            .zip(totals)
            .filter(|(s, t)| s.family() == *family && t.score().is_some())
            .collect();
        let within = candidates
            .iter()
            .filter(|(_, t)| (t.score().unwrap_or(0.0) - target).abs() <= 0.5)
            .min_by(|a, b| a.1.bytes.total_cmp(&b.1.bytes));
        let closest = candidates.iter().min_by(|a, b| {
            let off = |t: &Totals| (t.score().unwrap_or(0.0) - target).abs();
            off(a.1).total_cmp(&off(b.1))
        });
        if let Some((setting, total)) = within.or(closest) {
            let _ = writeln!(
                out,
                "| {family} | {}{} | {:.2} | {:.3} | {:.1} |",
                setting.quality(),
                if within.is_some() { "" } else { " (closest)" },
                total.score().unwrap_or(0.0),
                total.relative(),
                total.cpu_ms / n,
            );
        }
    }
    let _ = writeln!(
        out,
        "\nEncode CPU: the mean of {} encodes per photo (1 for AVIF); scores: SSIMULACRA2 (crate `ssimulacra2`) of the decoded variant (jpeg-decoder, image-webp, libheif) against the reference.\n",
        if plan.photo_shrink == 1 { 5 } else { 1 },
    );
    out
}

fn scale_report(
    plan: &Plan,
    photos: usize,
    medium: u32,
    rows: &str,
    totals: &[(f64, f64)],
) -> String {
    let n = photos as f64;
    let mut out = format!(
        "### The DCT scale of JPEG decodes: headroom over `medium` ({medium} px)\n\nEach cell: the scale, the SSIMULACRA2 of `medium` (jpeg-encoder Q82, as before) against the reference, and the decode's CPU ms (jpeg-decoder, the mean of {} decodes).\n\n| photo |{}\n|---|{}\n{rows}| mean |",
        if plan.photo_shrink == 1 { 3 } else { 1 },
        (0..=HEADROOMS.len())
            .map(|i| format!(" {} |", headroom_name(i)))
            .collect::<String>(),
        "---|".repeat(HEADROOMS.len() + 1),
    );
    for (score, decode_ms) in totals {
        let _ = write!(out, " {:.2}, {:.0} ms |", score / n, decode_ms / n);
    }
    let full = totals.last().map_or(0.0, |t| t.0 / n);
    let chosen = totals
        .iter()
        .position(|t| t.0 / n >= full - 1.0)
        .unwrap_or(HEADROOMS.len());
    let _ = writeln!(
        out,
        "\n\nThe first rule whose mean is within 1 point of the full decode's: {}.\n",
        headroom_name(chosen),
    );
    out
}

/// Lanczos3 straight to `(width, height)`, as the reference of figure 8.
fn lanczos3(source: &RgbImage, (width, height): (u32, u32)) -> RgbImage {
    use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
    let mut target = RgbImage::new(width, height);
    Resizer::new()
        .resize(
            source,
            &mut target,
            &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3)),
        )
        .expect("resized");
    target
}

fn decode_jpeg(bytes: &[u8]) -> RgbImage {
    decode_jpeg_at(bytes, u32::from(u16::MAX))
}

/// A JPEG decoded by jpeg-decoder at the smallest DCT scale whose longer
/// side is at least `side`, as the service's default build does.
fn decode_jpeg_at(bytes: &[u8], side: u32) -> RgbImage {
    let mut decoder = jpeg_decoder::Decoder::new(std::io::Cursor::new(bytes));
    let side = u16::try_from(side).unwrap_or(u16::MAX);
    let (width, height) = decoder.scale(side, side).expect("the JPEG's header");
    let pixels = decoder.decode().expect("the JPEG decodes");
    RgbImage::from_raw(u32::from(width), u32::from(height), pixels).expect("RGB pixels")
}

#[cfg(feature = "heif")]
fn decode_avif(bytes: &[u8]) -> Option<RgbImage> {
    use libheif_rs::{ColorSpace, HeifContext, LibHeif, RgbChroma};
    let context = HeifContext::read_from_bytes(bytes).expect("the AVIF reads");
    let handle = context.primary_image_handle().expect("a primary image");
    let image = LibHeif::new()
        .decode(&handle, ColorSpace::Rgb(RgbChroma::Rgb), None)
        .expect("the AVIF decodes");
    let plane = image.planes().interleaved.expect("interleaved RGB");
    let row = plane.width as usize * 3;
    let mut pixels = Vec::with_capacity(row * plane.height as usize);
    for y in 0..plane.height as usize {
        pixels.extend_from_slice(&plane.data[y * plane.stride..][..row]);
    }
    RgbImage::from_raw(plane.width, plane.height, pixels)
}

#[cfg(not(feature = "heif"))]
fn decode_avif(_: &[u8]) -> Option<RgbImage> {
    None
}

/// SSIMULACRA2 of `distorted` against `reference` (sRGB).
fn ssimulacra2(reference: &RgbImage, distorted: &RgbImage) -> f64 {
    use ssimulacra2::{ColorPrimaries, Rgb, TransferCharacteristic, compute_frame_ssimulacra2};
    let frame = |image: &RgbImage| {
        let data = image
            .pixels()
            .map(|p| p.0.map(|c| f32::from(c) / 255.0))
            .collect();
        Rgb::new(
            data,
            image.width() as usize,
            image.height() as usize,
            TransferCharacteristic::SRGB,
            ColorPrimaries::BT709,
        )
        .expect("an sRGB frame")
    };
    compute_frame_ssimulacra2(frame(reference), frame(distorted)).expect("a score")
}
