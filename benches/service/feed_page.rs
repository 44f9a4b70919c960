//! Bytes of a feed page (#33): 50 phone photos as `medium` variants, and
//! as `small` ones, in each encoding at the settings the service uses
//! (`media::variants::encode`): the page's bytes, their ratio to the
//! page of the JPEGs made before (jpeg-encoder baseline, quality 82), the
//! mean SSIMULACRA2 against the reference, and the encode CPU per variant,
//! side by side in one run.
//!
//! The photos: figure 8's four whole, then windows of them in the shapes
//! phones take (4:3 both ways, 16:9 both ways, square, and the 2.33:1 of
//! #33's wide shot), each 1.25 times `medium`'s side, at places spread
//! over the photo: sky, hills, field, house and trees in other framings.
//! Rendering 46 more scenes would take most of an hour of CPU in a debug
//! build; a window of a phone photo has its texture, grain and JPEG
//! history. Each is resized straight to the variant with Lanczos3, as
//! figure 8's reference is.
//!
//! Then each encoding at equal SSIMULACRA2: the `medium` page encoded at
//! qualities around the service's setting, and its bytes where the page's
//! mean score crosses the old JPEG's (interpolated between the two
//! qualities around it, as the encodings family does per photo).

use std::fmt::Write as _;

use image::RgbImage;
use image_service::media::variants::encode::{
    JPEG_ACKNOWLEDGED, JPEG_BACKGROUND, JPEG_BASELINE, WEBP,
};
use image_service::media::variants::{DEFAULT_VARIANTS, fit};

use crate::Plan;
use crate::encodings::{Point, Setting, crossing, lanczos3, medium_side, ssimulacra2};
use crate::variants::{photos, reference_image};

/// Images on a feed page, as figure 11's.
const PAGE: usize = 50;

/// The shapes of the windows, cycled: width and height in proportion.
const SHAPES: [(u32, u32); 6] = [(4, 3), (3, 4), (16, 9), (1, 1), (7, 3), (9, 16)];

/// The encodings compared, with what each is in the service.
fn encodings() -> Vec<(&'static str, Setting)> {
    #[cfg_attr(not(feature = "avif"), allow(unused_mut))]
    let mut list = vec![
        ("JPEG before (#33)", Setting::Jpeg(JPEG_BASELINE)),
        ("JPEG acknowledged", Setting::Jpeg(JPEG_ACKNOWLEDGED)),
        ("JPEG background", Setting::Jpeg(JPEG_BACKGROUND)),
        ("WebP", Setting::Webp(WEBP)),
    ];
    #[cfg(feature = "avif")]
    list.push((
        "AVIF",
        Setting::Avif(image_service::media::variants::encode::AVIF),
    ));
    list
}

/// One encoding's figures over the page, per variant size.
#[derive(Clone, Copy, Default)]
struct Totals {
    bytes: usize,
    score: f64,
    scored: usize,
    cpu_ms: f64,
}

pub fn run(plan: &Plan) -> String {
    let full = plan.photo_shrink == 1;
    let page = if full { PAGE } else { 4 };
    let sizes = [
        ("medium", medium_side()),
        (
            "small",
            DEFAULT_VARIANTS
                .iter()
                .find(|(name, _)| *name == "small")
                .map_or(320, |(_, side)| *side),
        ),
    ];
    let encodings = encodings();
    let mut totals = vec![[Totals::default(); 2]; encodings.len()];
    let mut mediums = Vec::with_capacity(page);
    for upright in page_photos(plan, page) {
        for (i, (_, side)) in sizes.iter().enumerate() {
            let reference = lanczos3(&upright, fit(upright.width(), upright.height(), *side));
            if i == 0 {
                mediums.push(reference.clone());
            }
            for ((_, setting), total) in encodings.iter().zip(&mut totals) {
                let measured = setting.measure(&reference, 1);
                let total = &mut total[i];
                total.bytes += measured.bytes;
                total.cpu_ms += measured.cpu_ms;
                if let Some(decoded) = measured.decoded {
                    total.score += ssimulacra2(&reference, &decoded);
                    total.scored += 1;
                }
            }
        }
    }
    let mut out = report(page, &sizes, &encodings, &totals);
    out.push_str(&at_equal_score(&mediums, &encodings, &totals));
    out
}

/// Qualities tried around each encoding's setting, as offsets: AVIF's
/// encodes take seconds each, so it gets fewer.
fn ladder(setting: &Setting) -> &'static [f64] {
    match setting {
        Setting::Avif(_) => &[-5.0, -2.0, 0.0, 3.0],
        _ => &[-6.0, -3.0, 0.0, 3.0, 6.0],
    }
}

/// The `medium` page of each encoding (after the old JPEG) at qualities
/// around its setting, and where its mean SSIMULACRA2 crosses the old
/// JPEG's page: the quality and the page's bytes there.
fn at_equal_score(
    mediums: &[RgbImage],
    encodings: &[(&str, Setting)],
    totals: &[[Totals; 2]],
) -> String {
    let page = mediums.len() as f64;
    let before = totals[0][0];
    if before.scored != mediums.len() {
        return String::new();
    }
    let target = before.score / page;
    let mut out = format!(
        "\n**At equal SSIMULACRA2**: the `medium` page in each encoding at the qualities listed, and where its mean score crosses the old JPEG's ({target:.2}): the quality and the page's bytes there, interpolated (log bytes, linear in the score) between the two qualities around it.\n\n| encoding | qualities tried: mean SSIMULACRA2, bytes / before | quality at equal SSIMULACRA2 | bytes per page | / before | encode CPU ms per variant |\n|---|---|---|---|---|---|\n"
    );
    for (what, setting) in encodings.iter().skip(1) {
        let mut curve = Vec::new();
        for offset in ladder(setting) {
            let setting = setting.at_quality(setting.quality() + offset);
            let mut point = Point {
                quality: setting.quality(),
                relative: 0.0,
                cpu_ms: 0.0,
                score: 0.0,
                butteraugli: f64::NAN,
            };
            let mut bytes = 0;
            for reference in mediums {
                let measured = setting.measure(reference, 1);
                let Some(decoded) = measured.decoded else {
                    return String::new();
                };
                bytes += measured.bytes;
                point.cpu_ms += measured.cpu_ms / page;
                point.score += ssimulacra2(reference, &decoded) / page;
            }
            point.relative = bytes as f64 / before.bytes as f64;
            curve.push(point);
        }
        let tried: Vec<String> = curve
            .iter()
            .map(|p| format!("{}: {:.2}, {:.3}", p.quality, p.score, p.relative))
            .collect();
        let equal = match crossing(&curve, target, |p| p.score) {
            Some(p) => format!(
                "{:.1} | {:.0} | {:.3} | {:.1}",
                p.quality,
                p.relative * before.bytes as f64,
                p.relative,
                p.cpu_ms
            ),
            None => "– (not reached) | – | – | –".into(),
        };
        let _ = writeln!(out, "| {what} | {} | {equal} |", tried.join("; "));
    }
    out
}

/// `page` upright photos: figure 8's whole, then windows of them.
fn page_photos(plan: &Plan, page: usize) -> Vec<RgbImage> {
    let whole: Vec<RgbImage> = photos(plan)
        .iter()
        .map(|(_, jpeg, orientation)| reference_image(jpeg, *orientation))
        .collect();
    let long = medium_side() * 5 / 4 / plan.photo_shrink;
    let mut out: Vec<RgbImage> = whole.iter().take(page).cloned().collect();
    for i in out.len()..page {
        let source = &whole[i % whole.len()];
        let (w, h) = SHAPES[i % SHAPES.len()];
        let scale = long as f64 / w.max(h) as f64;
        let width = ((w as f64 * scale) as u32).min(source.width());
        let height = ((h as f64 * scale) as u32).min(source.height());
        // Spread over the photo by two coprime strides.
        let x = (i as u32 * 7919) % (source.width() - width + 1);
        let y = (i as u32 * 104_729) % (source.height() - height + 1);
        out.push(image::imageops::crop_imm(source, x, y, width, height).to_image());
    }
    out
}

fn report(
    page: usize,
    sizes: &[(&str, u32); 2],
    encodings: &[(&str, Setting)],
    totals: &[[Totals; 2]],
) -> String {
    let mut out = format!(
        "### A feed page of {page} phone photos in each encoding (#33), one core\n\n| encoding | settings |{}\n|---|---|{}\n",
        sizes
            .iter()
            .map(|(name, side)| format!(
                " `{name}` ({side} px): bytes per page | / before | SSIMULACRA2 (mean) | encode CPU ms per variant |"
            ))
            .collect::<String>(),
        "---|---|---|---|".repeat(sizes.len()),
    );
    let before = totals[0];
    for ((what, setting), total) in encodings.iter().zip(totals) {
        let _ = write!(
            out,
            "| {what} | {}, quality {} |",
            setting.family(),
            setting.quality()
        );
        for (size, before) in total.iter().zip(&before) {
            let score = if size.scored == page {
                format!("{:.2}", size.score / page as f64)
            } else {
                "– (no AVIF decoder: feature `heif`)".into()
            };
            let _ = write!(
                out,
                " {} | {:.3} | {score} | {:.1} |",
                size.bytes,
                size.bytes as f64 / before.bytes as f64,
                size.cpu_ms / page as f64,
            );
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "\nPer encoding, the CPU of one photo's `small` + `medium` and how many photos one core encodes a second at that rate:\n\n| encoding | CPU ms per photo | photos per core per second |\n|---|---|---|"
    );
    for ((what, _), total) in encodings.iter().zip(totals) {
        let ms = (total[0].cpu_ms + total[1].cpu_ms) / page as f64;
        let _ = writeln!(out, "| {what} | {ms:.1} | {:.1} |", 1000.0 / ms);
    }
    let _ = writeln!(
        out,
        "\nEach photo is decoded at full size (jpeg-decoder), turned upright and resized straight to each variant with Lanczos3; every encoder is given those pixels, and each variant is scored (SSIMULACRA2, crate `ssimulacra2`) against them once decoded again (jpeg-decoder, image-webp, libheif). One encode per variant; CPU is user + system time of the process.\n"
    );
    out
}
