//! Figure 12: `image-service migrate --from embedded --to aws` on images
//! uploaded to the embedded backend with the default settings.

use std::process::{Command, Stdio};

use bytes::Bytes;

use crate::Plan;
use crate::harness::{Stores, concurrently, small_png, start_service, upload};

pub async fn run(plan: &Plan, stores: &Stores) -> String {
    let data = tempfile::tempdir().expect("temp dir");
    let data_dir = ["--data-dir".to_owned(), data.path().display().to_string()];
    let embedded = start_service(
        &[
            vec!["--backend".to_owned(), "embedded".into()],
            data_dir.to_vec(),
        ]
        .concat(),
    );
    let client = embedded.wide_client().await;
    let images: Vec<Bytes> = (0..plan.migrated)
        .map(|i| small_png(2000 + i as u32))
        .collect();
    concurrently(&images, 8, |bytes| {
        let client = client.clone();
        async move {
            upload(&client, bytes, "migrated").await.expect("upload");
        }
    })
    .await;
    drop(client);
    embedded.stop().await;
    let output = Command::new(env!("CARGO_BIN_EXE_image-service"))
        .arg("migrate")
        .args(["--from", "embedded", "--to", "aws"])
        .args(&data_dir)
        .args(stores.backend_args("migrated"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("image-service migrate runs");
    assert!(
        output.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let run = text
        .lines()
        .find(|l| l.starts_with("this run:"))
        .unwrap_or("this run: (no summary)");
    format!(
        "### 12. Migration: embedded → aws (dynalite + s3s-fs)\n\n{} images of 256 KiB with their variants (three objects each), uploaded with the default settings; `image-service migrate --from embedded --to aws` prints: `{}`. Each object is read, written, read back and hashed; then the record is created.\n\n",
        plan.migrated,
        run.trim()
    )
}
