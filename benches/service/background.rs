//! The encodings made after the acknowledgement (#33): what they cost the
//! acknowledged upload and what they cost in the background.
//!
//! - The acknowledged latency of the phone photos (12 MP and 8 MP) with
//!   `--variant-formats jpeg` and `jpeg,webp`, side by side: two services
//!   on the embedded backend, uploaded to in turn by one caller, each
//!   upload to the second waiting for its background work to end (its
//!   `imageservice_background_encodings_total`) before the next, so that
//!   both measure the acknowledgement alone.
//! - The CPU each encoding takes per photo, from the pixels the render
//!   holds (its `small` and `medium`), on one thread; the bytes against
//!   the acknowledged JPEG's, and how many the service would not keep (no
//!   smaller than the JPEG); and from the CPU, the photos per second one
//!   core's background keeps up with.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use image_service::fixtures;
use image_service::media::variants::{self, Codec};
use image_service::testkit::process::own_cpu_seconds;
use image_service::testkit::service::Service;
use image_service::testkit::stats::{Samples, ms};

use crate::Plan;
use crate::harness::{start_service, time, upload};

/// Uploads of each photo to each service.
const ROUNDS: usize = 5;

pub async fn run(plan: &Plan) -> String {
    let mut out = String::from("### Encodings made after the acknowledgement (#33)\n\n");
    let photos: Vec<(String, Bytes)> = plan
        .phone_shots()
        .map(|shot| (shot.describe(), Bytes::from(fixtures::phone_shot(&shot))))
        .collect();
    latency(&mut out, plan, &photos).await;
    encode_cost(&mut out, &photos);
    out
}

/// Acknowledged upload latency with and without background encodings.
async fn latency(out: &mut String, plan: &Plan, photos: &[(String, Bytes)]) {
    let formats = |list: &str| vec!["--variant-formats".to_owned(), list.to_owned()];
    let jpeg = start_service(&formats("jpeg"));
    let webp = start_service(&formats("jpeg,webp"));
    let (jpeg_client, webp_client) = (jpeg.wide_client().await, webp.wide_client().await);
    // Warm both up (the first render loads code and grows the heap).
    for (_, bytes) in photos {
        upload(&jpeg_client, bytes.clone(), "bench")
            .await
            .expect("upload");
        upload(&webp_client, bytes.clone(), "bench")
            .await
            .expect("upload");
    }
    background_done(&webp, photos.len()).await;
    let rounds = if plan.rounds > 1 { ROUNDS } else { 1 };
    let _ = writeln!(
        out,
        "Acknowledged upload latency, one caller, the median of {rounds} uploads per photo \
         (the two services in turn; the background's work ended before each upload):\n\n\
         | photo | `jpeg` | `jpeg,webp` | ratio |\n|---|---|---|---|"
    );
    let mut done = photos.len();
    let (mut all_jpeg, mut all_webp) = (Samples::default(), Samples::default());
    for (describe, bytes) in photos {
        let (mut alone, mut with_webp) = (Samples::default(), Samples::default());
        for _ in 0..rounds {
            let (took, result) = time(upload(&jpeg_client, bytes.clone(), "bench")).await;
            result.expect("upload");
            alone.push(ms(took));
            let (took, result) = time(upload(&webp_client, bytes.clone(), "bench")).await;
            result.expect("upload");
            with_webp.push(ms(took));
            done += 1;
            background_done(&webp, done).await;
        }
        let _ = writeln!(
            out,
            "| {describe} | {:.0} ms | {:.0} ms | {:.3} |",
            alone.median(),
            with_webp.median(),
            with_webp.median() / alone.median()
        );
        all_jpeg.push(alone.median());
        all_webp.push(with_webp.median());
    }
    let _ = writeln!(
        out,
        "| median of the photos | {:.0} ms | {:.0} ms | {:.3} |\n",
        all_jpeg.median(),
        all_webp.median(),
        all_webp.median() / all_jpeg.median()
    );
}

/// Waits until the service's background has ended `count` images' work.
async fn background_done(service: &Service, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while service
        .metric("imageservice_background_encodings_total")
        .await
        < count as f64
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the background did not finish"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// CPU and bytes of each background encoding, from the render's pixels.
fn encode_cost(out: &mut String, photos: &[(String, Bytes)]) {
    let mut codecs = vec![("WebP", Codec::WebP)];
    if Codec::Avif.available() {
        codecs.push(("AVIF", Codec::Avif));
    }
    let _ = writeln!(
        out,
        "Background encodings per photo (`small` + `medium`, from the pixels the render \
         holds; one thread; CPU the mean of {ROUNDS}); bytes against the acknowledged JPEG \
         of the same variant; kept: variants whose encoding is smaller than the JPEG (the \
         others are not stored); photos / core / s: what one core's background keeps up \
         with:\n\n\
         | photo | encoding | CPU ms per photo | bytes / JPEG (small, medium) | kept | photos / core / s |\n\
         |---|---|---|---|---|---|"
    );
    for (describe, bytes) in photos {
        let before = own_cpu_seconds();
        let rendered =
            variants::render(bytes, image::ImageFormat::Jpeg, 1, 1 << 30).expect("a render");
        let render_ms = (own_cpu_seconds() - before) * 1000.0;
        let _ = writeln!(
            out,
            "| {describe} | JPEG at the acknowledgement (the whole render: decode, resize, encode) | {render_ms:.0} | 1 | | |"
        );
        for (name, codec) in &codecs {
            let before = own_cpu_seconds();
            let mut sizes = Vec::new();
            for _ in 0..ROUNDS {
                sizes.clear();
                for (_, pixels) in &rendered.pixels {
                    let encoded = pixels
                        .encode_as(*codec, rendered.icc.as_deref())
                        .expect("encodes");
                    sizes.push(encoded.len());
                }
            }
            let cpu_ms = (own_cpu_seconds() - before) * 1000.0 / ROUNDS as f64;
            // The pixels are held largest first; the renditions smallest first.
            let ratios: Vec<f64> = rendered
                .pixels
                .iter()
                .zip(&sizes)
                .rev()
                .map(|((name, _), size)| {
                    let jpeg = rendered
                        .variants
                        .iter()
                        .find(|v| &v.name == name)
                        .expect("the rendition")
                        .bytes
                        .len();
                    *size as f64 / jpeg as f64
                })
                .collect();
            let kept = ratios.iter().filter(|r| **r < 1.0).count();
            let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            let _ = writeln!(
                out,
                "| {describe} | {name} | {cpu_ms:.0} | {} | {kept} of {} | {:.1} |",
                shown.join(", "),
                ratios.len(),
                1000.0 / cpu_ms
            );
        }
    }
    out.push('\n');
}
