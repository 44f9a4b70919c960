//! The backfill rate (#33): `image-service backfill --formats jpeg,webp`
//! over phone photos uploaded with `--variant-formats jpeg`, on the
//! embedded backend, with the service stopped.

use std::process::{Command, Stdio};
use std::time::Instant;

use bytes::Bytes;
use image_service::fixtures;
use image_service::testkit::process::children_cpu_seconds;

use crate::Plan;
use crate::harness::{start_service, upload};

pub async fn run(plan: &Plan) -> String {
    let data = tempfile::tempdir().expect("temp dir");
    let data_dir = ["--data-dir".to_owned(), data.path().display().to_string()];
    let service = start_service(
        &[
            vec!["--variant-formats".to_owned(), "jpeg".into()],
            data_dir.to_vec(),
        ]
        .concat(),
    );
    let client = service.wide_client().await;
    let shots: Vec<(String, Bytes)> = plan
        .phone_shots()
        .map(|shot| (shot.describe(), Bytes::from(fixtures::phone_shot(&shot))))
        .collect();
    for i in 0..plan.backfilled {
        let (_, bytes) = &shots[i % shots.len()];
        upload(&client, bytes.clone(), "backfilled")
            .await
            .expect("upload");
    }
    drop(client);
    service.stop().await;

    let cpu_before = children_cpu_seconds();
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_image-service"))
        .arg("backfill")
        .args(["--formats", "jpeg,webp"])
        .args(&data_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("image-service backfill runs");
    let took = started.elapsed();
    let cpu = children_cpu_seconds() - cpu_before;
    assert!(
        output.status.success(),
        "backfill failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let summary: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("backfill (") || l.starts_with("this run:"))
        .map(str::trim)
        .collect();
    let photos: Vec<String> = shots.iter().map(|(describe, _)| describe.clone()).collect();
    let images = plan.backfilled as f64;
    format!(
        "### Backfill (#33)\n\n{} phone photos ({}, in turn) uploaded to the embedded backend \
         with `--variant-formats jpeg`; the service stopped; then `image-service backfill \
         --formats jpeg,webp` took {:.1} s: **{:.2} images/s**, {:.2} CPU s per image \
         ({:.2} images per CPU second; `--max-concurrent-renders` at its default). It prints: \
         `{}`\n\n",
        plan.backfilled,
        photos.join("; "),
        took.as_secs_f64(),
        images / took.as_secs_f64(),
        cpu / images,
        images / cpu.max(f64::EPSILON),
        summary.join("` / `"),
    )
}
