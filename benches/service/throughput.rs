//! Figures 1-3: one large image through the service (variants off: the
//! byte path) and straight to S3, both ways, and the service's CPU per GiB.

use std::fmt::Write as _;

use bytes::Bytes;
use image_service::testkit::service::Service;
use image_service::testkit::stats::Samples;

use crate::Plan;
use crate::harness::{
    GIB, MIB, PART_SIZE, PARTS_IN_FLIGHT, Stores, delete, download, download_url, fake_png, fetch,
    mib_per_s, row, start_service, time, upload, without_variants,
};

pub async fn run(plan: &Plan, stores: &Stores) -> String {
    let big = fake_png(plan.big, 1);
    let signed = start_service(&without_variants(&stores.aws_args("bench")));
    let both = both_ways(plan, stores, &signed, &big).await;
    drop(signed);
    // The same upload with part bytes outside the signature on both sides,
    // as every upload over HTTPS goes (the test S3 server speaks plain HTTP).
    let mut args = without_variants(&stores.aws_args("bench"));
    args.extend(["--s3-payload-signing".into(), "unsigned".into()]);
    let unsigned = unsigned_uploads(plan, stores, &start_service(&args), &big).await;
    let moved = (big.len() * plan.rounds) as f64 / GIB;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "### 1-2. Throughput, one {} MiB image (aws backend: s3s-fs + dynalite on loopback)\n",
        plan.big / MIB
    );
    let _ = writeln!(
        out,
        "| | service | direct | service / direct |\n|---|---|---|---|"
    );
    row(&mut out, "upload (MiB/s)", &both.up, &both.raw_up);
    row(
        &mut out,
        "upload, part bytes unsigned on both sides as over HTTPS (MiB/s)",
        &unsigned.up,
        &unsigned.raw_up,
    );
    row(
        &mut out,
        "download, `DownloadImage` vs `GetObject` (MiB/s)",
        &both.down,
        &both.raw_down,
    );
    row(
        &mut out,
        "download, presigned URL vs `GetObject` (MiB/s)",
        &both.url_down,
        &both.raw_down,
    );
    let _ = writeln!(
        out,
        "\nService: {PART_SIZE_MIB} MiB parts, {PARTS_IN_FLIGHT} in flight, 1 MiB gRPC chunks; direct: `aws-sdk-s3` multipart at the same part size and parallelism, one `GetObject` streamed.\n",
        PART_SIZE_MIB = PART_SIZE / MIB
    );
    let _ = writeln!(out, "### 3. Service CPU per GiB\n");
    let _ = writeln!(
        out,
        "upload {:.2} CPU-s/GiB, download {:.2} CPU-s/GiB (user + system time of the service process, `/proc/PID/stat`); upload with part bytes unsigned (as over HTTPS, `--s3-payload-signing unsigned` here) {:.2} CPU-s/GiB. Every upload also takes one SHA-256 pass for the image's `sha256`.\n",
        both.up_cpu / moved,
        both.down_cpu / moved,
        unsigned.up_cpu / moved
    );
    out
}

/// Rates in MiB/s (service and raw) and the service's CPU seconds.
#[derive(Default)]
struct Rounds {
    up: Samples,
    raw_up: Samples,
    down: Samples,
    raw_down: Samples,
    url_down: Samples,
    up_cpu: f64,
    down_cpu: f64,
}

/// Up and down, through `service` (`DownloadImage` and a presigned URL)
/// and raw, in turn.
async fn both_ways(plan: &Plan, stores: &Stores, service: &Service, big: &Bytes) -> Rounds {
    let client = service.wide_client().await;
    let raw = &stores.raw;
    let mut rounds = Rounds::default();
    for round in 0..plan.rounds {
        let key = format!("big-{round}");
        rounds.raw_up.push(mib_per_s(
            big.len(),
            time(raw.multipart_upload("raw", &key, big, true)).await.0,
        ));
        let cpu = service.cpu_seconds();
        let (elapsed, image) = time(upload(&client, big.clone(), "bench")).await;
        rounds.up_cpu += service.cpu_seconds() - cpu;
        let image = image.expect("the big upload succeeds");
        rounds.up.push(mib_per_s(big.len(), elapsed));

        rounds.raw_down.push(mib_per_s(
            big.len(),
            time(raw.get_object("raw", &key)).await.0,
        ));
        let cpu = service.cpu_seconds();
        let (elapsed, n) = time(download(&client, &image.image_id)).await;
        rounds.down_cpu += service.cpu_seconds() - cpu;
        assert_eq!(n, big.len(), "the download is whole");
        rounds.down.push(mib_per_s(n, elapsed));
        let url = download_url(&client, &image.image_id).await;
        let (elapsed, n) = time(fetch(&url)).await;
        assert_eq!(n, big.len());
        rounds.url_down.push(mib_per_s(n, elapsed));
        delete(&client, &image.image_id).await;
    }
    rounds
}

/// Uploads with part bytes unsigned, through `service` and raw.
async fn unsigned_uploads(plan: &Plan, stores: &Stores, service: &Service, big: &Bytes) -> Rounds {
    let client = service.wide_client().await;
    let mut rounds = Rounds::default();
    for round in 0..plan.rounds {
        let key = format!("big-unsigned-{round}");
        rounds.raw_up.push(mib_per_s(
            big.len(),
            time(stores.raw.multipart_upload("raw", &key, big, false))
                .await
                .0,
        ));
        let cpu = service.cpu_seconds();
        let (elapsed, image) = time(upload(&client, big.clone(), "bench")).await;
        rounds.up_cpu += service.cpu_seconds() - cpu;
        rounds.up.push(mib_per_s(big.len(), elapsed));
        delete(&client, &image.expect("the upload succeeds").image_id).await;
    }
    rounds
}
