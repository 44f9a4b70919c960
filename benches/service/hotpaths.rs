//! The hot paths on the embedded backend with the default settings, for
//! before/after comparisons of one build against another: uploads of a
//! real phone photo (`examples/images/phone-photo.jpg`) and of the 256 KiB
//! synthetic PNGs, by one and by 16 callers, then `GetImage`,
//! `DownloadImage` and a `ListImages` page on what was stored. Not part of
//! the generated report; run alone: `scripts/bench hotpaths`.
//!
//! Family `acknowledged` (also run alone): the acknowledged upload latency
//! of the test kit's phone photos (12 MP and 8 MP) with the default
//! settings, one caller, each upload after a pause in which whatever the
//! service does after an acknowledgement ends. It passes no flag a build
//! of any age lacks, so `scripts/compare-hotpaths` can run it against a
//! build from before a change.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use image_service::fixtures;
use image_service::pb;
use image_service::testkit::as_user;
use image_service::testkit::stats::{ms, percentile};
use tonic::transport::Channel;

use crate::Plan;
use crate::harness::{concurrently, download, small_png, start_service, time, upload};

type Client = pb::image_service_client::ImageServiceClient<Channel>;

/// Single calls timed per read path.
const READS: usize = 200;

/// Uploads timed per phone photo by the `acknowledged` family.
const ACKNOWLEDGED: usize = 7;

/// The pause before each timed upload of the `acknowledged` family: far
/// longer than the encodings made after an acknowledgement take (about
/// 0.1 s of CPU per photo for WebP, BENCHMARKS.md), so none overlaps the
/// next upload.
const SETTLE: Duration = Duration::from_millis(1500);

/// Acknowledged upload latency of each phone photo: a fresh
/// embedded-backend service with the default settings, one warm-up upload
/// per photo, then [`ACKNOWLEDGED`] timed uploads of each, one caller,
/// each after [`SETTLE`]. Rows: the photo, the median and range in ms.
pub async fn acknowledged(plan: &Plan) -> String {
    let data = tempfile::tempdir().expect("temp dir");
    let mut args = vec![
        "--backend".to_owned(),
        "embedded".into(),
        "--data-dir".into(),
        data.path().display().to_string(),
    ];
    // Flags for this run only (e.g. `--variant-formats jpeg`, to time a
    // build's acknowledgement without its background encodings' CPU).
    let extra = std::env::var("BENCH_ACKNOWLEDGED_ARGS").unwrap_or_default();
    args.extend(extra.split_whitespace().map(str::to_owned));
    let service = start_service(&args);
    let client = service.wide_client().await;
    let photos: Vec<(String, Bytes)> = plan
        .phone_shots()
        .map(|shot| (shot.describe(), Bytes::from(fixtures::phone_shot(&shot))))
        .collect();
    for (_, bytes) in &photos {
        upload(&client, bytes.clone(), "hot").await.expect("upload");
    }
    let rounds = if plan.rounds > 1 { ACKNOWLEDGED } else { 1 };
    let mut out = format!(
        "### Acknowledged upload latency, embedded backend, default settings{}\n\n\
         One caller; {rounds} uploads per photo, each after a {:.1} s pause. \
         Service CPU: the service process's user + system time over the photo's uploads \
         and pauses (what follows each acknowledgement included), per upload.\n\n\
         | photo | median ms | min–max ms | service CPU ms per upload |\n|---|---|---|---|\n",
        if extra.is_empty() {
            String::new()
        } else {
            format!(" and `{extra}`")
        },
        SETTLE.as_secs_f64()
    );
    for (describe, bytes) in &photos {
        let cpu = service.cpu_seconds();
        let mut took: Vec<Duration> = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            tokio::time::sleep(SETTLE).await;
            let (elapsed, result) = time(upload(&client, bytes.clone(), "hot")).await;
            result.expect("upload");
            took.push(elapsed);
        }
        // What follows the last acknowledgement, counted like the others'.
        tokio::time::sleep(SETTLE).await;
        let cpu_ms = (service.cpu_seconds() - cpu) * 1000.0 / rounds as f64;
        took.sort();
        let _ = writeln!(
            out,
            "| {describe} | {:.0} | {:.0}–{:.0} | {cpu_ms:.0} |",
            ms(percentile(&took, 0.5)),
            ms(took[0]),
            ms(took[took.len() - 1])
        );
    }
    out
}

pub async fn run(plan: &Plan) -> String {
    let photo = Bytes::from(
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/images/phone-photo.jpg"
        ))
        .expect("the example photo"),
    );
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Hot paths, embedded backend, default settings (variants on)\n\n| input | callers | uploads/s (p50 / p99) | service CPU per upload | `GetImage` p50 / p99 | `DownloadImage` p50 / p99 | `ListImages` (50) p50 / p99 |\n|---|---|---|---|---|---|---|"
    );
    let inputs: [(&str, Vec<Bytes>); 2] = [
        (
            "phone-photo.jpg (68 KB)",
            vec![photo; plan.small_counts[0].1],
        ),
        (
            "256 KiB PNG (synthetic)",
            (0..plan.small_counts[0].1)
                .map(|i| small_png(i as u32))
                .collect(),
        ),
    ];
    for (name, images) in &inputs {
        for callers in [1, 16] {
            out.push_str(&row(name, images, callers).await);
        }
    }
    let _ = writeln!(
        out,
        "\nA fresh service per row; the reads are {READS} calls one after the other on images of that row.\n"
    );
    out
}

async fn row(name: &str, images: &[Bytes], callers: usize) -> String {
    let data = tempfile::tempdir().expect("temp dir");
    let service = start_service(&[
        "--backend".to_owned(),
        "embedded".into(),
        "--data-dir".into(),
        data.path().display().to_string(),
    ]);
    let client = service.wide_client().await;
    // One warm-up upload, not counted.
    upload(&client, images[0].clone(), "hot")
        .await
        .expect("upload");
    let cpu = service.cpu_seconds();
    let ids = std::sync::Mutex::new(Vec::new());
    let rate = concurrently(images, callers, |bytes| {
        let (client, ids) = (client.clone(), &ids);
        async move {
            let image = upload(&client, bytes, "hot").await.expect("upload");
            ids.lock().expect("ids").push(image.image_id);
        }
    })
    .await;
    let cpu_ms = (service.cpu_seconds() - cpu) * 1000.0 / images.len() as f64;
    let ids = ids.into_inner().expect("ids");
    let get = reads(&ids, |id| get_image(client.clone(), id)).await;
    let down = reads(&ids, |id| {
        let client = client.clone();
        async move {
            download(&client, &id).await;
        }
    })
    .await;
    let list = reads(&ids, |_| list_page(client.clone())).await;
    format!("| {name} | {callers} | {rate} | {cpu_ms:.2} ms | {get} | {down} | {list} |\n")
}

/// p50 / p99 of [`READS`] calls of `call`, one after the other, on the
/// ids in turn.
async fn reads<F, Fut>(ids: &[String], call: F) -> String
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut latencies: Vec<Duration> = Vec::with_capacity(READS);
    for i in 0..READS {
        latencies.push(time(call(ids[i % ids.len()].clone())).await.0);
    }
    latencies.sort();
    format!(
        "{:.2} / {:.2} ms",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99))
    )
}

async fn get_image(mut client: Client, image_id: String) {
    client
        .get_image(as_user("hot", pb::GetImageRequest { image_id }))
        .await
        .expect("an image");
}

async fn list_page(mut client: Client) {
    let message = pb::ListImagesRequest {
        page_size: 50,
        ..Default::default()
    };
    let page = client
        .list_images(as_user("hot", message))
        .await
        .expect("a page")
        .into_inner();
    assert!(!page.images.is_empty(), "a page");
}
