//! Figure 10: phone photos uploaded with the default settings (variants
//! made), at one caller and at 16, against what the same work costs done
//! by libvips and `PutObject` calls, per core.

use std::fmt::Write as _;
use std::path::PathBuf;

use bytes::Bytes;
use image_service::fixtures;
use image_service::testkit::process::own_cpu_seconds;
use image_service::testkit::stats::ms;

use crate::Plan;
use crate::harness::{Stores, concurrently, start_service, upload};
use crate::raw::Raw;
use crate::variants::{small_path, vips_renders};

pub async fn run(plan: &Plan, stores: &Stores) -> String {
    let mut out = String::from("### 10. Phone photo uploads, variants on (aws backend)\n\n");
    let dir = tempfile::tempdir().expect("temp dir");
    let photos: Vec<(PathBuf, Bytes)> = plan
        .phone_shots()
        .enumerate()
        .map(|(i, shot)| {
            let path = dir.path().join(format!("upload-{i}.jpg"));
            let jpeg = fixtures::phone_shot(&shot);
            std::fs::write(&path, &jpeg).expect("write photo");
            (path, Bytes::from(jpeg))
        })
        .collect();
    let baseline = baseline_ms(plan, &photos, &stores.raw).await;
    let service = start_service(&stores.aws_args("photos"));
    let client = service.wide_client().await;
    for (_, jpeg) in &photos {
        upload(&client, jpeg.clone(), "photos")
            .await
            .expect("a photo upload");
    }
    let _ = writeln!(
        out,
        "| callers | uploads/s | p50 / p99 latency | service CPU per upload | uploads/s per core: service | libvips + `PutObject` | ratio |\n|---|---|---|---|---|---|---|"
    );
    for (callers, rounds) in [(1, plan.photo_rounds.0), (16, plan.photo_rounds.1)] {
        let images: Vec<Bytes> = (0..rounds)
            .flat_map(|_| photos.iter().map(|(_, jpeg)| jpeg.clone()))
            .collect();
        let before = service.cpu_seconds();
        let rate = concurrently(&images, callers, |bytes| {
            let client = client.clone();
            async move {
                upload(&client, bytes, "photos")
                    .await
                    .expect("a photo upload");
            }
        })
        .await;
        let cpu_ms = (service.cpu_seconds() - before) * 1000.0 / images.len() as f64;
        let _ = writeln!(
            out,
            "| {callers} | {:.1} | {:.0} / {:.0} ms | {cpu_ms:.1} ms | {:.1} | {} | {} |",
            rate.rate,
            ms(rate.p50),
            ms(rate.p99),
            1000.0 / cpu_ms,
            baseline.map_or("–".into(), |b| format!("{:.1}", 1000.0 / b)),
            baseline.map_or("–".into(), |b| format!("{:.2}", b / cpu_ms)),
        );
    }
    let _ = writeln!(
        out,
        "\nThe three phone photos of figure 8 in turn, with EXIF, uploaded by {} and {} callers ({} and {} uploads) to a service with the default settings: metadata stripped, SHA-256, `small` + `medium` + BlurHash, three objects and one record. Per core: 1000 / CPU ms per upload. libvips + `PutObject`: libvips' CPU for both sizes as in figure 8, plus the CPU of three `PutObject` calls (the original and both sizes) from `aws-sdk-s3` in this process; {}. The store servers' CPU counts on neither side; they share the two cores with the service and its callers, so the uploads/s column is what one machine does with everything on it.\n",
        1,
        16,
        plan.photo_rounds.0 * photos.len(),
        plan.photo_rounds.1 * photos.len(),
        baseline.map_or(
            "libvips not measured (pyvips unavailable)".into(),
            |b| format!("{b:.1} ms per photo on the mean")
        ),
    );
    out
}

/// The baseline: libvips makes the two sizes (one decode, as in figure 8),
/// and the original and both sizes go to S3 with one `PutObject` each from
/// the Rust SDK; its CPU is this process's. The mean CPU milliseconds per
/// photo, when pyvips is there.
async fn baseline_ms(plan: &Plan, photos: &[(PathBuf, Bytes)], raw: &Raw) -> Option<f64> {
    let mut baseline_ms = Vec::new();
    for (i, (path, jpeg)) in photos.iter().enumerate() {
        let Ok((vips_ms, medium_path)) = vips_renders(path, plan.renders) else {
            break;
        };
        let medium = Bytes::from(std::fs::read(&medium_path).expect("libvips' medium"));
        let small = Bytes::from(std::fs::read(small_path(&medium_path)).expect("libvips' small"));
        let before = own_cpu_seconds();
        for round in 0..plan.renders {
            for (what, bytes) in [("original", jpeg), ("medium", &medium), ("small", &small)] {
                raw.put_object("raw", &format!("photo-{i}-{round}/{what}"), bytes.clone())
                    .await;
            }
        }
        let put_ms = (own_cpu_seconds() - before) * 1000.0 / plan.renders as f64;
        baseline_ms.push(vips_ms + put_ms);
    }
    (baseline_ms.len() == photos.len())
        .then(|| baseline_ms.iter().sum::<f64>() / baseline_ms.len() as f64)
}
