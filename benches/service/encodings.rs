//! The encodings of variants (#33): for the photos of figure 8, each
//! encoder over a grid of settings and qualities, its bytes, its
//! SSIMULACRA2 score and butteraugli distance, and its CPU per `medium`
//! variant; each encoder's bytes at the score of the JPEG variants made
//! before (jpeg-encoder at quality 82), interpolated between the qualities
//! that bracket it; and the DCT scale JPEGs are decoded at, by how much
//! larger than the variant the decode must stay.
//!
//! Every score compares with the reference of figure 8: the photo decoded
//! at full size, turned upright and resized straight to `medium` with
//! Lanczos3. The encoders are given that same reference, so the encoding
//! table measures the encoders alone.
//!
//! `BENCH_ENCODINGS=webp,avif` measures only those encodings' grids (the
//! baseline JPEG always), to explore one encoder without waiting for the
//! others; `mozjpeg` is the grid of mozjpeg's settings taken apart.
//! `BENCH_PHOTOS=N` measures only the first N photos.

use std::fmt::Write as _;

use image::RgbImage;
use image_service::fixtures;
use image_service::media::variants::compress::Mozjpeg;
use image_service::media::variants::encode::{
    self, Avif, Frame, JPEG_BASELINE, Jpeg, JpegCoder, Webp,
};
use image_service::media::variants::{DEFAULT_VARIANTS, fit};
use image_service::testkit::process::own_cpu_seconds;

use crate::Plan;
use crate::variants::{first_photos, photos, reference_image};

/// One encoder's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Setting {
    Jpeg(Jpeg),
    Webp(Webp),
    #[cfg_attr(not(feature = "avif"), allow(dead_code))]
    Avif(Avif),
}

impl Setting {
    /// The encoder and its settings but the quality: one curve of the
    /// table, one choice each.
    pub fn family(&self) -> String {
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
                JpegCoder::MozjpegTuned(m) => mozjpeg_tuning(&m),
            },
            Self::Webp(w) => format!("WebP lossy, method {}, {}", w.method, webp_tuning(w)),
            Self::Avif(a) => format!(
                "AVIF (ravif), speed {}, {}-bit 4:4:4",
                a.speed,
                if a.ten_bit { 10 } else { 8 }
            ),
        }
    }

    pub fn quality(&self) -> f64 {
        match self {
            Self::Jpeg(j) => f64::from(j.quality),
            Self::Webp(w) => f64::from(w.quality),
            Self::Avif(a) => f64::from(a.quality),
        }
    }

    /// The same setting at another quality (clamped to 1–100).
    pub fn at_quality(&self, quality: f64) -> Self {
        let quality = quality.clamp(1.0, 100.0);
        match *self {
            Self::Jpeg(j) => Self::Jpeg(Jpeg {
                quality: quality as u8,
                ..j
            }),
            Self::Webp(w) => Self::Webp(Webp {
                quality: quality as f32,
                ..w
            }),
            Self::Avif(a) => Self::Avif(Avif {
                quality: quality as f32,
                ..a
            }),
        }
    }

    pub fn encode(&self, pixels: &RgbImage) -> Vec<u8> {
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
    pub fn decode(&self, bytes: &[u8]) -> Option<RgbImage> {
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

    /// `repeats` encodes of `pixels`: the bytes, the CPU ms of one, and
    /// the decoded pixels.
    pub fn measure(&self, pixels: &RgbImage, repeats: usize) -> Measured {
        let before = own_cpu_seconds();
        let mut bytes = Vec::new();
        for _ in 0..repeats {
            bytes = self.encode(pixels);
        }
        let cpu_ms = (own_cpu_seconds() - before) * 1000.0 / repeats as f64;
        Measured {
            bytes: bytes.len(),
            cpu_ms,
            decoded: self.decode(&bytes),
        }
    }

    /// Encodes per measured CPU: AVIF is slow, one is enough.
    pub fn repeats(&self, full: bool) -> usize {
        match (self, full) {
            (Self::Avif(_), _) | (_, false) => 1,
            (Self::Webp(_), true) => 2,
            (Self::Jpeg(_), true) => 5,
        }
    }
}

/// One setting's encode of one image.
pub struct Measured {
    pub bytes: usize,
    /// CPU ms of one encode.
    pub cpu_ms: f64,
    /// The pixels decoded again (`None`: no AVIF decoder in this build).
    pub decoded: Option<RgbImage>,
}

/// What a WebP setting changes from libwebp's defaults.
fn webp_tuning(w: &Webp) -> String {
    let defaults = Webp::libwebp(w.quality, w.method);
    if *w == defaults {
        return "libwebp defaults".into();
    }
    if *w == Webp::photo(w.quality, w.method) {
        return "photo preset".into();
    }
    let mut changes = Vec::new();
    if w.sns_strength != defaults.sns_strength {
        changes.push(format!("sns {}", w.sns_strength));
    }
    if w.autofilter {
        changes.push("autofilter".into());
    } else if w.filter_strength != defaults.filter_strength {
        changes.push(format!("filter {}", w.filter_strength));
    }
    if w.filter_sharpness != defaults.filter_sharpness {
        changes.push(format!("sharpness {}", w.filter_sharpness));
    }
    if w.segments != defaults.segments {
        changes.push(format!("{} segments", w.segments));
    }
    if w.sharp_yuv {
        changes.push("sharp YUV".into());
    }
    changes.join(", ")
}

/// What a mozjpeg setting takes of mozjpeg's full compression.
fn mozjpeg_tuning(m: &Mozjpeg) -> String {
    let mut parts = vec![
        if m.mozjpeg_defaults {
            "mozjpeg base"
        } else {
            "libjpeg base"
        },
        if m.imagemagick_tables {
            "ImageMagick tables"
        } else {
            "libjpeg tables"
        },
    ];
    parts.push(match (m.trellis, m.trellis_dc, m.trellis_eob) {
        (false, ..) => "no trellis",
        (true, false, false) => "trellis AC",
        (true, true, false) => "trellis AC + DC",
        (true, false, true) => "trellis AC + EOB",
        (true, true, true) => "trellis AC + DC + EOB",
    });
    parts.push(if m.scan_search {
        "scan search"
    } else {
        "fixed script"
    });
    format!("JPEG, mozjpeg: {}", parts.join(", "))
}

/// mozjpeg's full compression taken apart, each with its qualities: the
/// tables alone (on libjpeg's and on mozjpeg's base), then trellis on the
/// AC coefficients, then on the DC ones too, then on the end-of-block
/// runs. The full mode without its scan search is trellis on AC + DC:
/// its defaults. The full mode itself is in the `jpeg` grid.
fn mozjpeg_grid() -> Vec<(Mozjpeg, std::ops::RangeInclusive<u8>)> {
    let tables = Mozjpeg {
        imagemagick_tables: true,
        ..Mozjpeg::LIBJPEG
    };
    let untrellised = Mozjpeg {
        trellis: false,
        trellis_dc: false,
        scan_search: false,
        ..Mozjpeg::FULL
    };
    let ac = Mozjpeg {
        trellis: true,
        ..untrellised
    };
    let dc = Mozjpeg {
        trellis_dc: true,
        ..ac
    };
    let eob = Mozjpeg {
        trellis_eob: true,
        ..dc
    };
    vec![
        (tables, 76..=83),
        (untrellised, 76..=83),
        (ac, 78..=85),
        (dc, 78..=85),
        (eob, 78..=85),
    ]
}

/// The WebP settings measured, each over [`WEBP_QUALITIES`]: libwebp's
/// defaults and photo preset, then one knob at a time, then the knobs
/// that helped together.
const WEBP_TUNINGS: [Webp; 12] = {
    let d = Webp::libwebp(0.0, 4);
    [
        d,
        Webp::libwebp(0.0, 6),
        Webp::photo(0.0, 4),
        Webp {
            sns_strength: 0,
            ..d
        },
        Webp {
            sns_strength: 25,
            ..d
        },
        Webp {
            sns_strength: 80,
            ..d
        },
        Webp {
            filter_strength: 20,
            ..d
        },
        Webp {
            filter_strength: 0,
            ..d
        },
        Webp {
            autofilter: true,
            ..d
        },
        Webp { segments: 1, ..d },
        Webp {
            sharp_yuv: true,
            ..d
        },
        Webp {
            filter_strength: 20,
            sharp_yuv: true,
            ..d
        },
    ]
};

const WEBP_QUALITIES: [f32; 9] = [78.0, 80.0, 82.0, 84.0, 86.0, 88.0, 90.0, 92.0, 94.0];

/// The AVIF speeds and qualities measured (ravif's quality scale).
#[cfg(feature = "avif")]
const AVIF_SPEEDS: [u8; 3] = [6, 8, 10];
#[cfg(feature = "avif")]
const AVIF_QUALITIES: [f32; 4] = [70.0, 75.0, 80.0, 85.0];

/// The encodings whose grids to measure: `BENCH_ENCODINGS`, all when
/// unset.
fn measured(kind: &str) -> bool {
    match std::env::var("BENCH_ENCODINGS") {
        Ok(list) => list.split(',').any(|k| k.trim() == kind),
        Err(_) => true,
    }
}

/// The grid: qualities around the baseline's score for each encoder.
fn grid(full: bool) -> Vec<Setting> {
    let jpeg = |coder, quality| Setting::Jpeg(Jpeg { coder, quality });
    let mut grid = vec![Setting::Jpeg(JPEG_BASELINE)];
    if !full {
        grid.extend([
            jpeg(JpegCoder::Progressive, 82),
            jpeg(JpegCoder::Mozjpeg, 82),
            jpeg(JpegCoder::MozjpegTrellis, 82),
            Setting::Webp(encode::WEBP),
            Setting::Webp(Webp::photo(82.0, 4)),
        ]);
        #[cfg(feature = "avif")]
        grid.push(Setting::Avif(Avif {
            speed: 10,
            ..encode::AVIF
        }));
        return grid;
    }
    // Qualities in steps of one around the baseline's score (found with a
    // coarser grid first: mozjpeg 76-88 and 76-92 by 2).
    grid.push(jpeg(JpegCoder::Progressive, 82));
    for quality in 78..=82 {
        grid.push(jpeg(JpegCoder::Mozjpeg, quality));
    }
    for quality in 81..=85 {
        grid.push(jpeg(JpegCoder::MozjpegTrellis, quality));
    }
    if !measured("jpeg") {
        grid.truncate(1);
    }
    if measured("mozjpeg") {
        for (tuning, qualities) in mozjpeg_grid() {
            for quality in qualities {
                grid.push(jpeg(JpegCoder::MozjpegTuned(tuning), quality));
            }
        }
    }
    if measured("webp") {
        for tuning in WEBP_TUNINGS {
            for quality in WEBP_QUALITIES {
                grid.push(Setting::Webp(Webp { quality, ..tuning }));
            }
        }
    }
    #[cfg(feature = "avif")]
    if measured("avif") {
        for speed in AVIF_SPEEDS {
            for quality in AVIF_QUALITIES {
                grid.push(Setting::Avif(Avif {
                    quality,
                    speed,
                    ten_bit: true,
                }));
            }
        }
        // 8-bit samples at the middle speed: rav1e's 8-bit pixels are
        // cheaper to code.
        for quality in [75.0, 80.0] {
            grid.push(Setting::Avif(Avif {
                quality,
                speed: 8,
                ten_bit: false,
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
    butteraugli: f64,
    scored: usize,
    cpu_ms: f64,
    photos: usize,
}

impl Totals {
    fn score(&self) -> Option<f64> {
        (self.scored == self.photos && self.photos > 0).then(|| self.score / self.scored as f64)
    }
    fn butteraugli(&self) -> Option<f64> {
        (self.scored == self.photos && self.photos > 0)
            .then(|| self.butteraugli / self.scored as f64)
    }
    fn relative(&self) -> f64 {
        self.bytes / self.baseline_bytes
    }
}

pub fn run(plan: &Plan) -> String {
    let full = plan.photo_shrink == 1;
    let photos = match std::env::var("BENCH_PHOTOS").map(|n| n.parse()) {
        Ok(Ok(count)) => first_photos(plan, count),
        _ => photos(plan),
    };
    let grid = grid(full);
    let medium = medium_side();
    let mut totals = vec![Totals::default(); grid.len()];
    for (_, jpeg, orientation) in &photos {
        let full_size = reference_image(jpeg, *orientation);
        let target = fit(full_size.width(), full_size.height(), medium);
        let reference = lanczos3(&full_size, target);
        drop(full_size);
        let butteraugli_reference = ButteraugliReference::new(&reference);
        let mut baseline_bytes = 0.0;
        for (setting, total) in grid.iter().zip(&mut totals) {
            let measured = setting.measure(&reference, setting.repeats(full));
            total.cpu_ms += measured.cpu_ms;
            if matches!(setting, Setting::Jpeg(j) if *j == JPEG_BASELINE) {
                baseline_bytes = measured.bytes as f64;
            }
            total.bytes += measured.bytes as f64;
            total.baseline_bytes += baseline_bytes;
            total.photos += 1;
            if let Some(decoded) = measured.decoded {
                let score = ssimulacra2(&reference, &decoded);
                let distance = butteraugli_reference.distance(&decoded);
                // Progress: the grid takes a while on a shared machine.
                eprintln!(
                    "{} q{}: {} bytes, SSIMULACRA2 {score:.2}, butteraugli {distance:.3}, {:.0} ms",
                    setting.family(),
                    setting.quality(),
                    measured.bytes,
                    measured.cpu_ms
                );
                total.score += score;
                total.butteraugli += distance;
                total.scored += 1;
            }
        }
    }
    report(plan, &photos, &grid, &totals, medium)
}

/// The longest side of `medium`.
pub fn medium_side() -> u32 {
    DEFAULT_VARIANTS
        .iter()
        .find(|(name, _)| *name == "medium")
        .map_or(1080, |(_, side)| *side)
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
    let medium = medium_side();
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
        "### Encodings of `medium` ({medium} px), one core\n\nPhotos: {}.\n\n| encoding | quality | bytes (mean) | bytes / before | SSIMULACRA2 (mean) | butteraugli 3-norm (mean) | encode CPU ms |\n|---|---|---|---|---|---|---|\n",
        photos
            .iter()
            .map(|(what, _, _)| what.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    );
    let missing = "– (no AVIF decoder: feature `heif`)";
    for (setting, total) in grid.iter().zip(totals) {
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {:.3} | {} | {} | {:.1} |",
            setting.family(),
            setting.quality(),
            total.bytes / n,
            total.relative(),
            total.score().map_or(missing.into(), |s| format!("{s:.2}")),
            total
                .butteraugli()
                .map_or(missing.into(), |s| format!("{s:.3}")),
            total.cpu_ms / n,
        );
    }
    let target = totals[0].score().unwrap_or(0.0);
    let target_butteraugli = totals[0].butteraugli().unwrap_or(0.0);
    let _ = writeln!(
        out,
        "\n**At the score before** (SSIMULACRA2 {target:.2}, butteraugli 3-norm {target_butteraugli:.3}: jpeg-encoder baseline Q82): each setting's bytes where its curve crosses that score, interpolated (log bytes, linear in the score) between the two qualities of the grid that bracket it; \"–\" where the grid does not reach it.\n\n| encoding | quality at equal SSIMULACRA2 | bytes / before | encode CPU ms | quality at equal butteraugli | bytes / before |\n|---|---|---|---|---|---|"
    );
    let mut families: Vec<String> = grid.iter().map(Setting::family).collect();
    families.dedup();
    for family in families.iter().skip(1) {
        let curve: Vec<Point> = grid
            .iter()
            .zip(totals)
            .filter(|(s, _)| s.family() == *family)
            .filter_map(|(s, t)| {
                Some(Point {
                    quality: s.quality(),
                    relative: t.relative(),
                    cpu_ms: t.cpu_ms / n,
                    score: t.score()?,
                    butteraugli: t.butteraugli()?,
                })
            })
            .collect();
        let by_score = crossing(&curve, target, |p| p.score);
        let by_butteraugli = crossing(&curve, target_butteraugli, |p| p.butteraugli);
        let cell = |p: Option<Point>, cpu: bool| match p {
            Some(p) if cpu => format!("{:.1} | {:.3} | {:.1}", p.quality, p.relative, p.cpu_ms),
            Some(p) => format!("{:.1} | {:.3}", p.quality, p.relative),
            None if cpu => "– | – | –".into(),
            None => "– | –".into(),
        };
        let _ = writeln!(
            out,
            "| {family} | {} | {} |",
            cell(by_score, true),
            cell(by_butteraugli, false)
        );
    }
    let _ = writeln!(
        out,
        "\nEncode CPU: the mean of {} encodes per photo and setting (JPEG; 2 for WebP, 1 for AVIF); SSIMULACRA2 (crate `ssimulacra2`, higher is better) and butteraugli (crate `butteraugli`, libjxl's 3-norm, lower is better) of the decoded variant (jpeg-decoder, image-webp, libheif) against the reference.\n",
        if plan.photo_shrink == 1 { 5 } else { 1 },
    );
    out
}

/// One setting of a curve: its quality and mean figures.
#[derive(Clone, Copy)]
pub struct Point {
    pub quality: f64,
    pub relative: f64,
    pub cpu_ms: f64,
    pub score: f64,
    pub butteraugli: f64,
}

/// Where a curve (in the grid's order of quality) first crosses `target`
/// of `metric`: the quality, bytes (interpolated in log bytes) and CPU
/// there, linear in the metric between the two settings around it.
pub fn crossing(curve: &[Point], target: f64, metric: impl Fn(&Point) -> f64) -> Option<Point> {
    curve.windows(2).find_map(|pair| {
        let (a, b) = (pair[0], pair[1]);
        let (ma, mb) = (metric(&a), metric(&b));
        if (ma - target) * (mb - target) > 0.0 || ma == mb {
            return None;
        }
        let t = (target - ma) / (mb - ma);
        let along = |x: f64, y: f64| x + t * (y - x);
        Some(Point {
            quality: along(a.quality, b.quality),
            relative: along(a.relative.ln(), b.relative.ln()).exp(),
            cpu_ms: along(a.cpu_ms, b.cpu_ms),
            score: along(a.score, b.score),
            butteraugli: along(a.butteraugli, b.butteraugli),
        })
    })
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
pub fn lanczos3(source: &RgbImage, (width, height): (u32, u32)) -> RgbImage {
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
pub fn ssimulacra2(reference: &RgbImage, distorted: &RgbImage) -> f64 {
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

/// Butteraugli distances from one reference, its analysis made once.
pub struct ButteraugliReference(butteraugli::ButteraugliReference);

impl ButteraugliReference {
    pub fn new(reference: &RgbImage) -> Self {
        Self(
            butteraugli::ButteraugliReference::new(
                reference.as_raw(),
                reference.width() as usize,
                reference.height() as usize,
                butteraugli::ButteraugliParams::default(),
            )
            .expect("a butteraugli reference"),
        )
    }

    /// libjxl's 3-norm of the difference map: the mean of the 3-, 6- and
    /// 12-norms, less dominated by one pixel than the max-norm.
    pub fn distance(&self, distorted: &RgbImage) -> f64 {
        self.0
            .compare(distorted.as_raw())
            .expect("a butteraugli distance")
            .pnorm_3
    }
}
