//! Figure 5: small uploads through the service, with variants off and on
//! (the default), against the raw pair of calls (`PutObject` + `PutItem`).

use std::fmt::Write as _;

use bytes::Bytes;
use image_service::testkit::service::Service;

use crate::Plan;
use crate::harness::{Stores, concurrently, small_png, start_service, upload, without_variants};

pub async fn run(plan: &Plan, stores: &Stores) -> String {
    let raw = &stores.raw;
    let with_variants = start_service(&stores.aws_args("small"));
    let variant_client = with_variants.wide_client().await;
    let bytes_client = start_service(&without_variants(&stores.aws_args("small")));
    let plain_client = bytes_client.wide_client().await;
    let mut out = String::new();
    let _ = writeln!(out, "### 5. Small images: 256 KiB PNGs (aws backend)\n");
    let _ = writeln!(
        out,
        "| callers | raw PutObject + PutItem | service, variants off | ratio | service, variants on (default) | ratio |\n|---|---|---|---|---|---|"
    );
    let cpu_before = (bytes_client.cpu_seconds(), with_variants.cpu_seconds());
    for (callers, count) in plan.small_counts {
        let images: Vec<Bytes> = (0..count).map(|i| small_png(i as u32)).collect();
        let raw_rate = concurrently(&images, callers, |bytes| raw.put_pair("small", bytes)).await;
        let plain = concurrently(&images, callers, |bytes| {
            let client = plain_client.clone();
            async move {
                upload(&client, bytes, "small").await.expect("upload");
            }
        })
        .await;
        let rendered = concurrently(&images, callers, |bytes| {
            let client = variant_client.clone();
            async move {
                upload(&client, bytes, "small").await.expect("upload");
            }
        })
        .await;
        let _ = writeln!(
            out,
            "| {callers} | {raw_rate} | {plain} | {:.2} | {rendered} | {:.2} |",
            plain.rate / raw_rate.rate,
            rendered.rate / raw_rate.rate
        );
    }
    let uploads: usize = plan.small_counts.iter().map(|(_, n)| n).sum();
    let cpu_ms =
        |before: f64, service: &Service| (service.cpu_seconds() - before) * 1000.0 / uploads as f64;
    let _ = writeln!(
        out,
        "\nUploads/s (p50 / p99 latency). Service CPU per upload: {:.2} ms with variants off, {:.2} ms with variants on. Backend calls per upload, variants off: {}; variants on: {}.\n",
        cpu_ms(cpu_before.0, &bytes_client),
        cpu_ms(cpu_before.1, &with_variants),
        backend_calls(&bytes_client, uploads).await,
        backend_calls(&with_variants, uploads).await
    );
    out
}

/// The service's storage calls per upload, by store and operation.
pub async fn backend_calls(service: &Service, uploads: usize) -> String {
    let text = service.metrics().await;
    let series = |prefix: &str| -> std::collections::BTreeMap<String, f64> {
        text.lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter_map(|l| {
                let (labels, value) = l.split_once("} ")?;
                let operation = labels
                    .replace("store=", "")
                    .replace("operation=", "")
                    .replace('"', "")
                    .replace(',', ".");
                Some((operation, value.parse().ok()?))
            })
            .filter(|(operation, _)| !operation.contains("check_health"))
            .collect()
    };
    let counts = series("imageservice_backend_request_duration_seconds_count{");
    let sums = series("imageservice_backend_request_duration_seconds_sum{");
    let calls: Vec<String> = counts
        .iter()
        .map(|(operation, count)| {
            let mean = sums.get(operation).copied().unwrap_or(0.0) / count * 1000.0;
            format!("{operation} {:.1} × {mean:.2} ms", count / uploads as f64)
        })
        .collect();
    calls.join(", ")
}
