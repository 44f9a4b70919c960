//! The latency the content scan hook adds in its `sync` mode (#35): small
//! uploads through two services on the embedded backend in one run, one
//! without `--scan-url` and one with a scanner that answers `allow` after
//! 20 ms (an HTTP server in this process), side by side.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;

use crate::Plan;
use crate::harness::{concurrently, small_png, start_service, upload};

/// How long the scanner takes to answer.
const SCANNER_DELAY: Duration = Duration::from_millis(20);

/// A scanner on loopback answering `allow` after [`SCANNER_DELAY`]; its URL.
async fn start_scanner() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("an address");
    let router = axum::Router::new().route(
        "/scan",
        axum::routing::post(|_body: axum::body::Bytes| async {
            tokio::time::sleep(SCANNER_DELAY).await;
            (
                [("content-type", "application/json")],
                r#"{"verdict": "allow"}"#,
            )
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}/scan")
}

pub async fn run(plan: &Plan) -> String {
    let url = start_scanner().await;
    let plain = start_service(&[]);
    let scanned = start_service(
        &[
            "--scan-url",
            &url,
            "--scan-mode",
            "sync",
            "--max-concurrent-scans",
            "256",
            // The callers are one user: the figure is the hook's latency,
            // not the wait for a user's share of the places.
            "--max-concurrent-scans-per-user",
            "256",
        ]
        .map(String::from),
    );
    let clients = [plain.wide_client().await, scanned.wide_client().await];
    // Warm both up (the first render loads code and grows the heap).
    for client in &clients {
        upload(client, small_png(0), "bench").await.expect("upload");
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Content scan hook: `--scan-mode sync`, a scanner answering in 20 ms \
         (256 KiB PNGs, embedded backend)\n"
    );
    let _ = writeln!(
        out,
        "| callers | no hook | sync hook | added p50 |\n|---|---|---|---|"
    );
    for (callers, count) in plan.small_counts {
        let images: Vec<Bytes> = (0..count).map(|i| small_png(i as u32)).collect();
        let mut rates = Vec::new();
        for client in &clients {
            let rate = concurrently(&images, callers, |bytes| {
                let client = client.clone();
                async move {
                    upload(&client, bytes, "bench").await.expect("upload");
                }
            })
            .await;
            rates.push(rate);
        }
        let added = rates[1].p50.as_secs_f64() - rates[0].p50.as_secs_f64();
        let _ = writeln!(
            out,
            "| {callers} | {} | {} | {:.1} ms |",
            rates[0],
            rates[1],
            added * 1000.0
        );
    }
    let _ = writeln!(
        out,
        "\nUploads/s (p50 / p99 latency). The sync hook reads the `medium` rendition back \
         and POSTs it; the scanner's 20 ms are the floor of what it adds.\n"
    );
    out
}
