//! Figure 4: the service's resident memory at rest, during one huge
//! upload, and during many large uploads at once (variants off).

use std::fmt::Write as _;

use image_service::pb::image_service_client::ImageServiceClient;
use image_service::testkit::service::Service;
use tonic::transport::Channel;

use crate::Plan;
use crate::harness::{
    MIB, PART_SIZE, PARTS_IN_FLIGHT, Stores, delete, fake_png, start_service, upload,
    without_variants,
};

pub async fn run(plan: &Plan, stores: &Stores) -> String {
    let service = start_service(&without_variants(&stores.aws_args("bench")));
    let client = service.wide_client().await;
    let idle = service.rss_kib();
    let huge_peak = peak_kib(&service, &client, &[(plan.huge, 2)]).await;
    let (count, size) = plan.concurrent;
    let sizes: Vec<(usize, u32)> = (0..count).map(|i| (size, 10 + i as u32)).collect();
    let concurrent_peak = peak_kib(&service, &client, &sizes).await;

    let mut out = String::new();
    let _ = writeln!(out, "### 4. Memory (service RSS)\n");
    let _ = writeln!(out, "| | peak RSS | growth over idle |\n|---|---|---|");
    let _ = writeln!(out, "| idle | {} MiB | |", idle / 1024);
    let _ = writeln!(
        out,
        "| one {} MiB upload | {} MiB | {} MiB |",
        plan.huge / MIB,
        huge_peak / 1024,
        huge_peak.saturating_sub(idle) / 1024
    );
    let _ = writeln!(
        out,
        "| {count} concurrent {} MiB uploads | {} MiB | {} MiB |\n",
        size / MIB,
        concurrent_peak / 1024,
        concurrent_peak.saturating_sub(idle) / 1024
    );
    let _ = writeln!(
        out,
        "Bound: part size × (parts in flight + 1) plus the 4 MiB HTTP/2 stream window per upload = {} MiB, so {} MiB for {count} uploads; peaks from `VmHWM` after resetting it (`/proc/PID/clear_refs`).\n",
        PART_SIZE * (PARTS_IN_FLIGHT + 1) / MIB + 4,
        count * (PART_SIZE * (PARTS_IN_FLIGHT + 1) / MIB + 4)
    );
    out
}

/// The service's peak RSS while images of these sizes (and seeds) upload
/// at once; they are deleted after.
async fn peak_kib(
    service: &Service,
    client: &ImageServiceClient<Channel>,
    images: &[(usize, u32)],
) -> u64 {
    service.reset_peak();
    let uploads = images.iter().map(|&(size, seed)| {
        let client = client.clone();
        let bytes = fake_png(size, seed);
        async move { upload(&client, bytes, "bench").await.expect("upload") }
    });
    let images: Vec<_> = futures::future::join_all(uploads).await;
    let peak = service.peak_kib();
    for image in images {
        delete(client, &image.image_id).await;
    }
    peak
}
