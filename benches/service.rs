//! The service against the raw backends, side by side, in one run on the
//! same data: `scripts/bench` (or `cargo bench --bench service` with the
//! test servers installed, see README). Prints a table and writes
//! `BENCHMARKS.md`'s generated section. Run by `cargo test` (without
//! `--bench`) it does a one-round smoke pass with small sizes, so the
//! benchmark cannot rot.
#[path = "../tests/api/helpers/servers.rs"]
#[allow(dead_code)]
mod servers;

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use image_service::domain::image::{ImageRecord, Timestamp};
use image_service::domain::{ImageId, UserId};
use image_service::fixtures;
use image_service::pb;
use image_service::pb::image_service_client::ImageServiceClient;
use image_service::pb::upload_image_request::Data;
use tonic::transport::Channel;

const MIB: usize = 1024 * 1024;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
/// The S3 part size and parts in flight, for the service and the raw SDK.
const PART_SIZE: usize = 8 * MIB;
const PARTS_IN_FLIGHT: usize = 4;
/// Upload chunk size of the gRPC client.
const CHUNK: usize = MIB;

/// Sizes and counts; the smoke pass shrinks them.
struct Plan {
    rounds: usize,
    big: usize,
    huge: usize,
    concurrent: (usize, usize),
    small_counts: [(usize, usize); 3],
    embedded_listing: usize,
    dynamodb_listing: usize,
    list_calls: usize,
    renders: usize,
    /// Phone photos are rendered at their size divided by this.
    photo_shrink: u32,
    /// Rounds of the three phone photos uploaded by 1 and by 16 callers.
    photo_rounds: (usize, usize),
    /// Feed pages read each way.
    feed_pages: usize,
    /// Images moved by figure 12.
    migrated: usize,
}

const FULL: Plan = Plan {
    rounds: 3,
    big: 256 * MIB,
    huge: 1024 * MIB,
    concurrent: (32, 64 * MIB),
    small_counts: [(1, 100), (16, 400), (64, 640)],
    embedded_listing: 100_000,
    dynamodb_listing: 10_000,
    list_calls: 200,
    renders: 10,
    photo_shrink: 1,
    photo_rounds: (8, 32),
    feed_pages: 100,
    migrated: 500,
};

const SMOKE: Plan = Plan {
    rounds: 1,
    big: 12 * MIB,
    huge: 16 * MIB,
    concurrent: (2, 8 * MIB),
    small_counts: [(1, 4), (4, 8), (8, 8)],
    embedded_listing: 300,
    dynamodb_listing: 60,
    list_calls: 5,
    renders: 1,
    photo_shrink: 8,
    photo_rounds: (1, 2),
    feed_pages: 3,
    migrated: 6,
};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let plan = if full { FULL } else { SMOKE };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // `cargo bench --bench service -- renders`: only the variants section,
    // printed and not written (it needs no servers).
    if std::env::args().any(|a| a == "renders") {
        println!("{}", thumbnailing(&plan));
        return;
    }
    // `cargo bench --bench service -- feed`: only figure 11, printed.
    if std::env::args().any(|a| a == "feed") {
        println!("{}", runtime.block_on(feed_pages_alone(&plan)));
        return;
    }
    // `cargo bench --bench service -- photos`: only figure 10, printed.
    if std::env::args().any(|a| a == "photos") {
        println!("{}", runtime.block_on(photo_uploads_alone(&plan)));
        return;
    }
    let report = runtime.block_on(run(&plan));
    println!("{report}");
    if full {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
        write_results(&path, &report).expect("BENCHMARKS.md written");
        println!("written to {}", path.display());
    }
}

async fn run(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Date: {}. Machine: {} cores, {} GiB of memory ({}).\n",
        today(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        total_memory_gib(),
        cpu_model()
    );

    let s3 = servers::start_s3();
    let dynamodb = servers::start_dynamodb();
    let raw = Raw::connect(&s3.endpoint(), &dynamodb.endpoint()).await;
    let aws_args = |bucket: &'static str| {
        vec![
            "--backend".to_owned(),
            "aws".into(),
            "--s3-endpoint".into(),
            s3.endpoint(),
            "--dynamodb-endpoint".into(),
            dynamodb.endpoint(),
            "--s3-bucket".into(),
            bucket.into(),
            "--dynamodb-table".into(),
            bucket.into(),
            "--s3-part-size".into(),
            format!("{PART_SIZE}"),
            "--s3-parts-in-flight".into(),
            format!("{PARTS_IN_FLIGHT}"),
        ]
    };
    raw.create_bucket("raw").await;

    // 1-4: large images through the service (variants off: the byte path)
    // and straight to S3.
    let bytes_only =
        Service::start(&[aws_args("bench"), vec!["--variants".into(), "false".into()]].concat());
    let client = bytes_only.client().await;
    let big = fake_png(plan.big, 1);
    let mut up = Samples::default();
    let mut raw_up = Samples::default();
    let mut down = Samples::default();
    let mut raw_down = Samples::default();
    let mut url_down = Samples::default();
    let (mut up_cpu, mut down_cpu) = (0.0, 0.0);
    for round in 0..plan.rounds {
        let key = format!("big-{round}");
        raw_up.push(mib_per_s(
            big.len(),
            time(raw.multipart_upload("raw", &key, &big, true)).await.0,
        ));
        let cpu = bytes_only.cpu_seconds();
        let (elapsed, image) = time(upload(&client, big.clone(), "bench")).await;
        up_cpu += bytes_only.cpu_seconds() - cpu;
        let image = image.expect("the big upload succeeds");
        up.push(mib_per_s(big.len(), elapsed));

        raw_down.push(mib_per_s(
            big.len(),
            time(raw.get_object("raw", &key)).await.0,
        ));
        let cpu = bytes_only.cpu_seconds();
        let (elapsed, n) = time(download(&client, &image.image_id)).await;
        down_cpu += bytes_only.cpu_seconds() - cpu;
        assert_eq!(n, big.len(), "the download is whole");
        down.push(mib_per_s(n, elapsed));
        let url = download_url(&client, &image.image_id).await;
        let (elapsed, n) = time(fetch(&url)).await;
        assert_eq!(n, big.len());
        url_down.push(mib_per_s(n, elapsed));
        delete(&client, &image.image_id).await;
    }
    let moved = (big.len() * plan.rounds) as f64 / GIB;

    // The same upload with part bytes outside the signature on both sides,
    // as every upload over HTTPS goes (the test S3 server speaks plain HTTP).
    let unsigned = Service::start(
        &[
            aws_args("bench"),
            vec![
                "--variants".into(),
                "false".into(),
                "--s3-payload-signing".into(),
                "unsigned".into(),
            ],
        ]
        .concat(),
    );
    let unsigned_client = unsigned.client().await;
    let (mut up_unsigned, mut raw_up_unsigned, mut up_unsigned_cpu) =
        (Samples::default(), Samples::default(), 0.0);
    for round in 0..plan.rounds {
        let key = format!("big-unsigned-{round}");
        raw_up_unsigned.push(mib_per_s(
            big.len(),
            time(raw.multipart_upload("raw", &key, &big, false)).await.0,
        ));
        let cpu = unsigned.cpu_seconds();
        let (elapsed, image) = time(upload(&unsigned_client, big.clone(), "bench")).await;
        up_unsigned_cpu += unsigned.cpu_seconds() - cpu;
        up_unsigned.push(mib_per_s(big.len(), elapsed));
        delete(
            &unsigned_client,
            &image.expect("the upload succeeds").image_id,
        )
        .await;
    }
    drop(unsigned_client);
    drop(unsigned);

    let _ = writeln!(
        out,
        "### 1-2. Throughput, one {} MiB image (aws backend: s3s-fs + dynalite on loopback)\n",
        plan.big / MIB
    );
    let _ = writeln!(
        out,
        "| | service | direct | service / direct |\n|---|---|---|---|"
    );
    row(&mut out, "upload (MiB/s)", &up, &raw_up);
    row(
        &mut out,
        "upload, part bytes unsigned on both sides as over HTTPS (MiB/s)",
        &up_unsigned,
        &raw_up_unsigned,
    );
    row(
        &mut out,
        "download, `DownloadImage` vs `GetObject` (MiB/s)",
        &down,
        &raw_down,
    );
    row(
        &mut out,
        "download, presigned URL vs `GetObject` (MiB/s)",
        &url_down,
        &raw_down,
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
        up_cpu / moved,
        down_cpu / moved,
        up_unsigned_cpu / moved
    );

    // 4: memory.
    let idle = bytes_only.rss_kib();
    bytes_only.reset_peak();
    let huge = fake_png(plan.huge, 2);
    let image = upload(&client, huge, "bench")
        .await
        .expect("the huge upload succeeds");
    let huge_peak = bytes_only.peak_kib();
    delete(&client, &image.image_id).await;
    drop(image);
    bytes_only.reset_peak();
    let (count, size) = plan.concurrent;
    let uploads = (0..count).map(|i| {
        let client = client.clone();
        let bytes = fake_png(size, 10 + i as u32);
        async move { upload(&client, bytes, "bench").await.expect("upload") }
    });
    let images: Vec<_> = futures::future::join_all(uploads).await;
    let concurrent_peak = bytes_only.peak_kib();
    for image in images {
        delete(&client, &image.image_id).await;
    }
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
    drop(bytes_only);

    // 5: small images, with the default settings (variants made) and with
    // variants off, against the raw pair of calls.
    let with_variants = Service::start(&aws_args("small"));
    let variant_client = with_variants.client().await;
    let bytes_client =
        Service::start(&[aws_args("small"), vec!["--variants".into(), "false".into()]].concat());
    let plain_client = bytes_client.client().await;
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
    drop(with_variants);
    drop(bytes_client);

    // 6: listings.
    let _ = writeln!(out, "### 6. Listing: a filtered page of 50\n");
    let _ = writeln!(
        out,
        "| store | images | filter | p50 | p99 | records read per record returned |\n|---|---|---|---|---|---|"
    );
    let embedded_dir = tempfile::tempdir().expect("temp dir");
    import_embedded(embedded_dir.path(), plan.embedded_listing).await;
    let embedded = Service::start(&[
        "--backend".to_owned(),
        "embedded".into(),
        "--data-dir".into(),
        embedded_dir.path().display().to_string(),
    ]);
    listing_rows(
        &mut out,
        &embedded,
        "embedded",
        plan.embedded_listing,
        plan.list_calls,
    )
    .await;
    drop(embedded);
    let listed = Service::start(
        &[
            aws_args("listing"),
            vec!["--variants".into(), "false".into()],
        ]
        .concat(),
    );
    populate_over_grpc(&listed.client().await, plan.dynamodb_listing).await;
    listing_rows(
        &mut out,
        &listed,
        "DynamoDB (dynalite)",
        plan.dynamodb_listing,
        plan.list_calls,
    )
    .await;
    drop(listed);
    let _ = writeln!(
        out,
        "\nRecords read: image records the store fetched (`imageservice_list_records_read_total` / `_returned_total`).\n"
    );

    // 7: the embedded backend against plain files.
    let data = tempfile::tempdir().expect("temp dir");
    let embedded = Service::start(&[
        "--backend".to_owned(),
        "embedded".into(),
        "--data-dir".into(),
        data.path().display().to_string(),
        "--variants".into(),
        "false".into(),
    ]);
    let client = embedded.client().await;
    let (mut up, mut file_up, mut down, mut file_down) = Default::default();
    for round in 0..plan.rounds {
        let path = data.path().join(format!("plain-{round}"));
        let plain_write = time(async { write_file(&path, &big) }).await.0;
        Samples::push(&mut file_up, mib_per_s(big.len(), plain_write));
        drop_page_cache_hint(&path);
        let plain_read = time(async { std::fs::read(&path).expect("read").len() })
            .await
            .0;
        Samples::push(&mut file_down, mib_per_s(big.len(), plain_read));
        let (elapsed, image) = time(upload(&client, big.clone(), "bench")).await;
        let image = image.expect("upload");
        Samples::push(&mut up, mib_per_s(big.len(), elapsed));
        let elapsed = time(download(&client, &image.image_id)).await.0;
        Samples::push(&mut down, mib_per_s(big.len(), elapsed));
        delete(&client, &image.image_id).await;
        let _ = std::fs::remove_file(&path);
    }
    let _ = writeln!(
        out,
        "### 7. Embedded backend vs plain files, one {} MiB image\n",
        plan.big / MIB
    );
    let _ = writeln!(
        out,
        "| | service | plain files | service / files |\n|---|---|---|---|"
    );
    row(&mut out, "write (MiB/s)", &up, &file_up);
    row(&mut out, "read (MiB/s)", &down, &file_down);
    let _ = writeln!(
        out,
        "\nPlain files: `write` + `fsync` of the same bytes, then `read` (from the page cache, like the service's read).\n"
    );
    drop(embedded);

    // 8: thumbnailing.
    out.push_str(&thumbnailing(plan));

    // 9: upload sessions.
    out.push_str(&sessions(plan, &aws_args("sessions")).await);

    // 10: phone photos through the whole upload, against libvips + PutObject.
    out.push_str(&photo_uploads(plan, &aws_args("photos"), &raw).await);

    // 11: a feed page.
    out.push_str(&feed_pages(plan, &aws_args("feed")).await);

    // 12: moving from the embedded backend to S3 + DynamoDB.
    out.push_str(&migration(plan, &s3, &dynamodb).await);
    out
}

/// Figure 12: `image-service migrate --from embedded --to aws` on images
/// uploaded to the embedded backend with the default settings.
async fn migration(
    plan: &Plan,
    s3: &servers::ServerProcess,
    dynamodb: &servers::ServerProcess,
) -> String {
    let data = tempfile::tempdir().expect("temp dir");
    let data_dir = ["--data-dir".to_owned(), data.path().display().to_string()];
    let embedded = Service::start(
        &[
            vec!["--backend".to_owned(), "embedded".into()],
            data_dir.to_vec(),
        ]
        .concat(),
    );
    let client = embedded.client().await;
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
    embedded.stop();
    let output = Command::new(env!("CARGO_BIN_EXE_image-service"))
        .arg("migrate")
        .args(["--from", "embedded", "--to", "aws"])
        .args(&data_dir)
        .args(aws_backend(s3, dynamodb, "migrated"))
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

/// The service's arguments for the aws backend on `s3` and `dynamodb`,
/// with `name` as bucket and table.
fn aws_backend(
    s3: &servers::ServerProcess,
    dynamodb: &servers::ServerProcess,
    name: &str,
) -> Vec<String> {
    [
        "--backend",
        "aws",
        "--s3-endpoint",
        &s3.endpoint(),
        "--dynamodb-endpoint",
        &dynamodb.endpoint(),
        "--s3-bucket",
        name,
        "--dynamodb-table",
        name,
    ]
    .map(String::from)
    .to_vec()
}

async fn photo_uploads_alone(plan: &Plan) -> String {
    let s3 = servers::start_s3();
    let dynamodb = servers::start_dynamodb();
    let raw = Raw::connect(&s3.endpoint(), &dynamodb.endpoint()).await;
    raw.create_bucket("raw").await;
    photo_uploads(plan, &aws_backend(&s3, &dynamodb, "photos"), &raw).await
}

async fn feed_pages_alone(plan: &Plan) -> String {
    let s3 = servers::start_s3();
    let dynamodb = servers::start_dynamodb();
    feed_pages(plan, &aws_backend(&s3, &dynamodb, "feed")).await
}

/// Images on a feed page.
const FEED_PAGE: usize = 50;

/// Figure 11: a feed page of 50 images, each with the URL of its `small`
/// variant: one `BatchGetImages` against 50 `GetImage` + 50
/// `GetDownloadUrl` calls made at once, on both backends.
async fn feed_pages(plan: &Plan, aws_args: &[String]) -> String {
    let mut out = format!(
        "### 11. A feed page: {FEED_PAGE} images with a `small` URL each\n\n| backend | one `BatchGetImages`: p50 / p99 | service CPU per page | {FEED_PAGE} `GetImage` + {FEED_PAGE} `GetDownloadUrl` at once: p50 / p99 | service CPU per page | latency ratio (p50) | CPU ratio |\n|---|---|---|---|---|---|---|\n"
    );
    let embedded = ["--backend".to_owned(), "embedded".into()];
    for (name, args) in [
        ("embedded", &embedded[..]),
        ("aws (dynalite + s3s-fs)", aws_args),
    ] {
        let service = Service::start(args);
        let client = service.client().await;
        let mut ids = Vec::with_capacity(FEED_PAGE);
        for i in 0..FEED_PAGE {
            let image = upload(&client, small_png(900 + i as u32), "feed")
                .await
                .expect("a feed image");
            ids.push(image.image_id);
        }
        let batch = || {
            let message = pb::BatchGetImagesRequest {
                image_ids: ids.clone(),
                url_variant: "small".into(),
                ..Default::default()
            };
            let client = client.clone();
            async move {
                let page = client
                    .clone()
                    .batch_get_images(request(message, "viewer"))
                    .await
                    .expect("a batch")
                    .into_inner();
                assert_eq!(page.images.len(), FEED_PAGE, "a whole page");
                assert!(page.images.iter().all(|i| !i.url.is_empty()));
            }
        };
        let singles = || {
            let client = client.clone();
            let ids = ids.clone();
            async move {
                let calls = ids.iter().map(|id| {
                    let client = client.clone();
                    async move {
                        let get = pb::GetImageRequest {
                            image_id: id.clone(),
                        };
                        let url = pb::GetDownloadUrlRequest {
                            image_id: id.clone(),
                            variant: "small".into(),
                            ..Default::default()
                        };
                        let (mut images, mut urls) = (client.clone(), client.clone());
                        let (image, url) = futures::join!(
                            images.get_image(request(get, "viewer")),
                            urls.get_download_url(request(url, "viewer"))
                        );
                        image.expect("an image");
                        url.expect("a URL");
                    }
                });
                futures::future::join_all(calls).await;
            }
        };
        // Warm both paths, then time them in turn.
        batch().await;
        singles().await;
        let (mut batched, mut single) = (Vec::new(), Vec::new());
        let (mut batched_cpu, mut single_cpu) = (0.0, 0.0);
        for _ in 0..plan.feed_pages {
            let cpu = service.cpu_seconds();
            batched.push(time(batch()).await.0);
            batched_cpu += service.cpu_seconds() - cpu;
            let cpu = service.cpu_seconds();
            single.push(time(singles()).await.0);
            single_cpu += service.cpu_seconds() - cpu;
        }
        batched.sort();
        single.sort();
        let pages = plan.feed_pages as f64;
        let _ = writeln!(
            out,
            "| {name} | {:.2} / {:.2} ms | {:.2} ms | {:.2} / {:.2} ms | {:.2} ms | {:.1}× | {:.1}× |",
            ms(percentile(&batched, 0.5)),
            ms(percentile(&batched, 0.99)),
            batched_cpu * 1000.0 / pages,
            ms(percentile(&single, 0.5)),
            ms(percentile(&single, 0.99)),
            single_cpu * 1000.0 / pages,
            ms(percentile(&single, 0.5)) / ms(percentile(&batched, 0.5)),
            single_cpu / batched_cpu.max(1e-9),
        );
    }
    let _ = writeln!(
        out,
        "\n{} pages each way, alternating, after one warm-up page each; one client connection (HTTP/2). The {} single calls of a page are made at once, as a feed service would. Service CPU: user + system time of the service process per page (at 10 ms ticks, so small figures are coarse).\n",
        plan.feed_pages,
        2 * FEED_PAGE
    );
    out
}

/// Figure 10: phone photos uploaded with the default settings (variants
/// made), at one caller and at 16, against what the same work costs done
/// by libvips and `PutObject` calls, per core.
async fn photo_uploads(plan: &Plan, aws_args: &[String], raw: &Raw) -> String {
    let mut out = String::from("### 10. Phone photo uploads, variants on (aws backend)\n\n");
    let dir = tempfile::tempdir().expect("temp dir");
    let photos: Vec<(PathBuf, Bytes)> = fixtures::PHONE_SHOTS
        .iter()
        .enumerate()
        .map(|(i, shot)| {
            let shot = fixtures::PhoneShot {
                width: shot.width / plan.photo_shrink,
                height: shot.height / plan.photo_shrink,
                ..*shot
            };
            let path = dir.path().join(format!("upload-{i}.jpg"));
            let jpeg = fixtures::phone_shot(&shot);
            std::fs::write(&path, &jpeg).expect("write photo");
            (path, Bytes::from(jpeg))
        })
        .collect();

    // The baseline: libvips makes the two sizes (one decode, as in figure
    // 8), and the original and both sizes go to S3 with one `PutObject`
    // each from the Rust SDK; its CPU is this process's.
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
    let baseline = (baseline_ms.len() == photos.len())
        .then(|| baseline_ms.iter().sum::<f64>() / baseline_ms.len() as f64);

    let service = Service::start(aws_args);
    let client = service.client().await;
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

/// Figure 9: what a cut costs with upload sessions, what resuming takes,
/// and the three ways in side by side.
async fn sessions(plan: &Plan, aws_args: &[String]) -> String {
    let mut out = String::new();
    let service =
        Service::start(&[aws_args.to_vec(), vec!["--variants".into(), "false".into()]].concat());
    let client = service.client().await;

    // Three ways in for one large image: one-shot UploadImage, a session
    // streamed through the service, and presigned PUTs straight to S3
    // then CompleteUpload (which reads the object back to check it).
    let image = fake_png(plan.big / 4, 3);
    let mut ways: Vec<(&str, Samples, f64)> = vec![
        ("`UploadImage`, one stream", Samples::default(), 0.0),
        (
            "session: `StartUpload` + `UploadImage` with `resume`",
            Samples::default(),
            0.0,
        ),
        (
            "direct: `GetUploadUrls` + `PUT` to S3 + `CompleteUpload`",
            Samples::default(),
            0.0,
        ),
    ];
    for _ in 0..plan.rounds {
        for (way, (_, samples, cpu)) in ways.iter_mut().enumerate() {
            let before = service.cpu_seconds();
            let (elapsed, uploaded) = time(async {
                match way {
                    0 => upload(&client, image.clone(), "bench")
                        .await
                        .expect("upload"),
                    1 => {
                        let id = start_session(&client, image.len()).await;
                        resume(&client, &id, 0, image.clone(), true)
                            .await
                            .expect("a resumed upload")
                    }
                    _ => direct_upload(&client, image.clone()).await,
                }
            })
            .await;
            *cpu += service.cpu_seconds() - before;
            samples.push(mib_per_s(image.len(), elapsed));
            delete(&client, &uploaded.image_id).await;
        }
    }
    let moved = (image.len() * plan.rounds) as f64 / GIB;
    let _ = writeln!(
        out,
        "### 9. Upload sessions (aws backend, variants off)\n\nOne {} MiB image, three ways in:\n\n| | MiB/s | service CPU-s/GiB |\n|---|---|---|",
        image.len() / MIB
    );
    for (what, samples, cpu) in &ways {
        let _ = writeln!(
            out,
            "| {what} | {:.0} | {:.2} |",
            samples.median(),
            cpu / moved
        );
    }
    let _ = writeln!(
        out,
        "\nA session stores the streamed bytes as segments (8 MiB) and, at the finish, reads them back through the pipeline; a direct upload's bytes do not pass through the service on the way in, only when `CompleteUpload` reads them back to check, scrub and hash them.\n"
    );

    // Cuts at random offsets of a phone-sized photo: how much the caller
    // sends again, and what a resume costs.
    let photo = Bytes::from(fixtures::photo_jpeg(2400, 1800));
    let cuts = plan.rounds * 7;
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut offsets = Vec::with_capacity(cuts);
    for _ in 0..cuts {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        offsets.push(1 + (seed % (photo.len() as u64 - 1)) as usize);
    }
    let (mut resent_clean, mut resent_cut) = (Vec::new(), Vec::new());
    let mut latencies = Vec::new();
    for (index, &cut) in offsets.iter().enumerate() {
        let id = start_session(&client, photo.len()).await;
        let abrupt = index % 2 == 1;
        if abrupt {
            // The network drops under the stream after the bytes left the
            // client: its own connection, through a proxy that closes both
            // sockets.
            let proxy = servers::CutProxy::start(service.grpc).await;
            let channel = Channel::from_shared(format!("http://{}", proxy.addr))
                .expect("uri")
                .connect()
                .await
                .expect("connects");
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            let mut call_client = ImageServiceClient::new(channel);
            let call = tokio::spawn(async move {
                call_client
                    .upload_image(request(
                        tokio_stream::wrappers::ReceiverStream::new(rx),
                        "bench",
                    ))
                    .await
            });
            for message in resume_messages(&id, 0, photo.slice(..cut), false) {
                tx.send(message).await.expect("open");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            proxy.cut();
            assert!(
                call.await.expect("ran").is_err(),
                "a cut stream stores nothing"
            );
        } else {
            let ended = resume(&client, &id, 0, photo.slice(..cut), false).await;
            assert!(ended.is_err(), "a stream without finish stores no image");
        }
        // The new caller (on any replica) asks, then resumes.
        let started = Instant::now();
        let mut held;
        loop {
            held = persisted(&client, &id).await;
            if held == cut || started.elapsed() > Duration::from_secs(5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (elapsed, image) = time(resume(&client, &id, held, photo.slice(held..), true)).await;
        let image = image.expect("the resume finishes");
        assert_eq!(image.size_bytes as usize, photo.len());
        latencies.push(elapsed);
        let resent = cut.saturating_sub(held);
        if abrupt {
            resent_cut.push(resent);
        } else {
            resent_clean.push(resent);
        }
        delete(&client, &image.image_id).await;
    }
    latencies.sort();
    let stats = |resent: &[usize]| {
        let max = resent.iter().max().copied().unwrap_or(0);
        let mean = resent.iter().sum::<usize>() as f64 / resent.len().max(1) as f64;
        format!("mean {mean:.0} B, max {max} B over {} cuts", resent.len())
    };
    let _ = writeln!(
        out,
        "A {:.1} MiB photo-like JPEG cut at {cuts} random offsets, then resumed from `QueryUploadStatus.persisted_size`. Bytes sent again: stream ended without `finish_write`: {}; connection dropped: {}. Without sessions, a cut upload is sent again whole (mean {:.0} KiB here). Resume to stored image (the rest of the bytes, the segments read back, the pipeline): p50 {:.1} ms, p99 {:.1} ms.\n",
        photo.len() as f64 / MIB as f64,
        stats(&resent_clean),
        stats(&resent_cut),
        offsets.iter().sum::<usize>() as f64 / cuts as f64 / 1024.0,
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
    );
    out
}

async fn start_session(client: &ImageServiceClient<Channel>, size: usize) -> String {
    let message = pb::StartUploadRequest {
        spec: Some(pb::ImageSpec::default()),
        expected_size: Some(size as i64),
    };
    client
        .clone()
        .start_upload(request(message, "bench"))
        .await
        .expect("a session")
        .into_inner()
        .session
        .expect("a session")
        .upload_id
}

async fn persisted(client: &ImageServiceClient<Channel>, upload_id: &str) -> usize {
    let message = pb::QueryUploadStatusRequest {
        upload_id: upload_id.into(),
    };
    client
        .clone()
        .query_upload_status(request(message, "bench"))
        .await
        .expect("a status")
        .into_inner()
        .persisted_size as usize
}

fn resume_messages(
    upload_id: &str,
    offset: usize,
    bytes: Bytes,
    finish: bool,
) -> Vec<pb::UploadImageRequest> {
    let first = pb::UploadImageRequest {
        data: Some(Data::Resume(pb::ResumeUpload {
            upload_id: upload_id.into(),
            write_offset: offset as i64,
        })),
        finish_write: finish && bytes.is_empty(),
        ..Default::default()
    };
    let chunks = bytes.len().div_ceil(CHUNK);
    std::iter::once(first)
        .chain((0..chunks).map(|i| pb::UploadImageRequest {
            data: Some(Data::Chunk(
                bytes.slice(i * CHUNK..((i + 1) * CHUNK).min(bytes.len())),
            )),
            finish_write: finish && i + 1 == chunks,
            ..Default::default()
        }))
        .collect()
}

async fn resume(
    client: &ImageServiceClient<Channel>,
    upload_id: &str,
    offset: usize,
    bytes: Bytes,
    finish: bool,
) -> Result<pb::Image, tonic::Status> {
    let messages = resume_messages(upload_id, offset, bytes, finish);
    let response = client
        .clone()
        .upload_image(request(futures::stream::iter(messages), "bench"))
        .await?;
    Ok(response.into_inner().image.expect("an image"))
}

/// A direct upload in 8 MiB parts, sent with a plain HTTP client.
async fn direct_upload(client: &ImageServiceClient<Channel>, image: Bytes) -> pb::Image {
    let id = start_session(client, image.len()).await;
    let parts: Vec<Bytes> = image
        .chunks(PART_SIZE)
        .map(|c| image.slice_ref(c))
        .collect();
    let message = pb::GetUploadUrlsRequest {
        upload_id: id.clone(),
        parts: Some(pb::get_upload_urls_request::Parts::PartSizes(
            pb::PartSizes {
                sizes: parts.iter().map(|p| p.len() as i64).collect(),
            },
        )),
        expires_in: None,
    };
    let urls = client
        .clone()
        .get_upload_urls(request(message, "bench"))
        .await
        .expect("URLs")
        .into_inner()
        .urls;
    let http = reqwest::Client::new();
    let puts = urls.iter().zip(parts).map(|(url, part)| {
        let http = http.clone();
        async move {
            let response = http.put(url).body(part).send().await.expect("a PUT");
            assert!(response.status().is_success(), "{}", response.status());
        }
    });
    futures::stream::iter(puts)
        .buffer_unordered(PARTS_IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
    let message = pb::CompleteUploadRequest { upload_id: id };
    client
        .clone()
        .complete_upload(request(message, "bench"))
        .await
        .expect("completed")
        .into_inner()
        .image
        .expect("an image")
}

/// Median of a few rounds.
#[derive(Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    fn median(&self) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

fn row(out: &mut String, what: &str, service: &Samples, direct: &Samples) {
    let _ = writeln!(
        out,
        "| {what} | {:.0} | {:.0} | {:.2} |",
        service.median(),
        direct.median(),
        service.median() / direct.median()
    );
}

async fn time<F: std::future::Future>(work: F) -> (Duration, F::Output) {
    let start = Instant::now();
    let output = work.await;
    (start.elapsed(), output)
}

fn mib_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64()
}

/// Rate and latency of `count` calls made by `callers` concurrent callers.
struct Rate {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0}/s ({:.1} / {:.1} ms)",
            self.rate,
            ms(self.p50),
            ms(self.p99)
        )
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(at).copied().unwrap_or_default()
}

async fn concurrently<F, Fut>(images: &[Bytes], callers: usize, call: F) -> Rate
where
    F: Fn(Bytes) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    let mut latencies: Vec<Duration> = futures::stream::iter(images.iter().cloned())
        .map(|bytes| {
            let call = &call;
            async move { time(call(bytes)).await.0 }
        })
        .buffer_unordered(callers)
        .collect()
        .await;
    let elapsed = start.elapsed();
    latencies.sort();
    Rate {
        rate: images.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
    }
}

/// A service process on free loopback ports, killed when dropped.
struct Service {
    child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
    _data: tempfile::TempDir,
}

impl Service {
    fn start(extra: &[String]) -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        let binary = env!("CARGO_BIN_EXE_image-service");
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
        };
        let (grpc, http) = (port(), port());
        let mut common = vec![
            "--grpc-addr".to_owned(),
            grpc.to_string(),
            "--http-addr".into(),
            http.to_string(),
            "--signing-key".into(),
            "a-signing-key-for-benchmarks-0123456789".into(),
            "--max-image-bytes".into(),
            "4GiB".into(),
            "--max-concurrent-uploads".into(),
            "256".into(),
            // One benchmark user uploads many images at once, and figure 4
            // measures what 32 concurrent large uploads take, so neither
            // the per-user cap nor the memory budget may stop them.
            "--max-uploads-per-user".into(),
            "256".into(),
            "--memory-budget".into(),
            "8GiB".into(),
        ];
        if !extra.iter().any(|a| a == "--data-dir") {
            common.extend(["--data-dir".into(), data.path().display().to_string()]);
        }
        let args: Vec<String> = common.iter().chain(extra).cloned().collect();
        if extra.iter().any(|a| a == "aws") {
            let status = Command::new(binary)
                .args(&args)
                .arg("init")
                .stdout(Stdio::null())
                .status()
                .expect("image-service init runs");
            assert!(status.success(), "image-service init failed");
        }
        let mut child = Command::new(binary)
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("the service starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&grpc, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the service exited with {status}");
            }
            assert!(Instant::now() < deadline, "the service did not start");
            std::thread::sleep(Duration::from_millis(25));
        }
        Self {
            child,
            grpc,
            http,
            _data: data,
        }
    }

    async fn client(&self) -> ImageServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.grpc))
            .expect("uri")
            .initial_stream_window_size(Some(4 * MIB as u32))
            .initial_connection_window_size(Some(16 * MIB as u32))
            .connect()
            .await
            .expect("connects");
        ImageServiceClient::new(channel).max_decoding_message_size(8 * MIB)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the process the way an operator does (SIGTERM) and waits.
    fn stop(mut self) {
        // SAFETY: a signal to the child this benchmark started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }

    /// User + system CPU time of the process so far.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        let after = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = after.split(' ').collect();
        // utime and stime are fields 14 and 15; `after` starts at field 3.
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        ticks as f64 / per_second
    }

    fn status_kib(&self, field: &str) -> u64 {
        status_kib(&self.pid().to_string(), field)
    }

    fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    fn peak_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// Resets the peak RSS to the current RSS.
    fn reset_peak(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").expect("clear_refs");
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("http://{}/metrics", self.http))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn request<T>(message: T, user: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-user-id", user.parse().expect("ascii"));
    request
}

async fn upload(
    client: &ImageServiceClient<Channel>,
    bytes: Bytes,
    user: &str,
) -> Result<pb::Image, tonic::Status> {
    upload_with(client, bytes, user, pb::ImageSpec::default()).await
}

async fn upload_with(
    client: &ImageServiceClient<Channel>,
    bytes: Bytes,
    user: &str,
    spec: pb::ImageSpec,
) -> Result<pb::Image, tonic::Status> {
    let chunks = bytes.len().div_ceil(CHUNK);
    // As imagectl and well-behaved clients do: the size up front.
    let spec = pb::ImageSpec {
        expected_size: Some(bytes.len() as i64),
        ..spec
    };
    let messages = std::iter::once(pb::UploadImageRequest {
        data: Some(Data::Spec(spec)),
        ..Default::default()
    })
    .chain((0..chunks).map(move |i| pb::UploadImageRequest {
        data: Some(Data::Chunk(
            bytes.slice(i * CHUNK..((i + 1) * CHUNK).min(bytes.len())),
        )),
        finish_write: i + 1 == chunks,
        ..Default::default()
    }));
    let response = client
        .clone()
        .upload_image(request(futures::stream::iter(messages), user))
        .await?;
    Ok(response.into_inner().image.expect("an image"))
}

async fn download(client: &ImageServiceClient<Channel>, image_id: &str) -> usize {
    let message = pb::DownloadImageRequest {
        image_id: image_id.into(),
        ..Default::default()
    };
    let mut stream = client
        .clone()
        .download_image(request(message, "bench"))
        .await
        .expect("download")
        .into_inner();
    let mut total = 0;
    while let Some(message) = stream.message().await.expect("a message") {
        total += message.chunk.len();
    }
    total
}

async fn download_url(client: &ImageServiceClient<Channel>, image_id: &str) -> String {
    let message = pb::GetDownloadUrlRequest {
        image_id: image_id.into(),
        ..Default::default()
    };
    client
        .clone()
        .get_download_url(request(message, "bench"))
        .await
        .expect("a URL")
        .into_inner()
        .url
}

async fn fetch(url: &str) -> usize {
    let response = reqwest::get(url).await.expect("fetch");
    assert!(response.status().is_success(), "{}", response.status());
    response
        .bytes_stream()
        .try_fold(0, |n, chunk| async move { Ok(n + chunk.len()) })
        .await
        .expect("body")
}

async fn delete(client: &ImageServiceClient<Channel>, image_id: &str) {
    let message = pb::DeleteImageRequest {
        image_id: image_id.into(),
    };
    client
        .clone()
        .delete_image(request(message, "bench"))
        .await
        .expect("delete");
}

fn fake_png(size: usize, seed: u32) -> Bytes {
    Bytes::from(fixtures::png_around_noise(size, seed))
}

fn small_png(seed: u32) -> Bytes {
    Bytes::from(fixtures::noise_png(seed))
}

/// The same work without the service: aws-sdk-s3 and aws-sdk-dynamodb on
/// the same servers.
struct Raw {
    s3: aws_sdk_s3::Client,
    dynamodb: aws_sdk_dynamodb::Client,
}

impl Raw {
    async fn connect(s3_endpoint: &str, dynamodb_endpoint: &str) -> Self {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .load()
            .await;
        let s3 = aws_sdk_s3::config::Builder::from(&shared)
            .endpoint_url(s3_endpoint)
            .force_path_style(true)
            .build();
        let dynamodb = aws_sdk_dynamodb::config::Builder::from(&shared)
            .endpoint_url(dynamodb_endpoint)
            .build();
        Self {
            s3: aws_sdk_s3::Client::from_conf(s3),
            dynamodb: aws_sdk_dynamodb::Client::from_conf(dynamodb),
        }
    }

    async fn create_bucket(&self, bucket: &str) {
        self.s3
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .expect("bucket");
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        };
        self.dynamodb
            .create_table()
            .table_name(bucket)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("pk")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("attr"),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("pk")
                    .key_type(KeyType::Hash)
                    .build()
                    .expect("key"),
            )
            .send()
            .await
            .expect("table");
    }

    /// `signed`: whether SigV4 covers the part bytes (the SDK's default
    /// over plain HTTP) or they go as `UNSIGNED-PAYLOAD`, as over HTTPS.
    async fn multipart_upload(&self, bucket: &str, key: &str, bytes: &Bytes, signed: bool) {
        let upload = self
            .s3
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .expect("create multipart");
        let id = upload.upload_id().expect("upload id").to_owned();
        let parts: Vec<_> = futures::stream::iter(0..bytes.len().div_ceil(PART_SIZE))
            .map(|i| {
                let body = bytes.slice(i * PART_SIZE..((i + 1) * PART_SIZE).min(bytes.len()));
                let id = id.clone();
                async move {
                    let number = i as i32 + 1;
                    let request = self
                        .s3
                        .upload_part()
                        .bucket(bucket)
                        .key(key)
                        .upload_id(id)
                        .part_number(number)
                        .body(body.into())
                        .customize();
                    let request = if signed {
                        request
                    } else {
                        request.disable_payload_signing()
                    };
                    let part = request.send().await.expect("part");
                    aws_sdk_s3::types::CompletedPart::builder()
                        .part_number(number)
                        .e_tag(part.e_tag().unwrap_or_default())
                        .build()
                }
            })
            .buffered(PARTS_IN_FLIGHT)
            .collect()
            .await;
        self.s3
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .expect("complete");
    }

    async fn put_object(&self, bucket: &str, key: &str, bytes: Bytes) {
        self.s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(bytes.into())
            .send()
            .await
            .expect("put");
    }

    async fn get_object(&self, bucket: &str, key: &str) -> usize {
        let mut body = self
            .s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .expect("get")
            .body;
        let mut total = 0;
        while let Some(chunk) = body.try_next().await.expect("body") {
            total += chunk.len();
        }
        total
    }

    /// What storing one small image minimally takes: the object, then an
    /// item describing it, of the service's item's shape and in its table
    /// (so the store maintains the same indexes for both).
    async fn put_pair(&self, bucket: &str, bytes: Bytes) {
        let id = ImageId::new().to_string();
        let len = bytes.len();
        self.put_object(bucket, &format!("images/{id}/original"), bytes)
            .await;
        use aws_sdk_dynamodb::types::AttributeValue;
        let micros = Timestamp::now().as_micros().to_string();
        self.dynamodb
            .put_item()
            .table_name(bucket)
            .item("pk", AttributeValue::S(format!("image#{id}")))
            .item("sk", AttributeValue::S("image".into()))
            .item("size", AttributeValue::N(len.to_string()))
            .item("doc", AttributeValue::S("x".repeat(600)))
            .item("rev", AttributeValue::N("1".into()))
            .item("owner", AttributeValue::S("small".into()))
            .item("content_type", AttributeValue::S("image/png".into()))
            .item("created", AttributeValue::N(micros))
            .item("all", AttributeValue::S("image".into()))
            .send()
            .await
            .expect("put item");
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> usize {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("create");
    file.write_all(bytes).expect("write");
    file.sync_all().expect("fsync");
    bytes.len()
}

/// The service's reads come from the page cache right after its write, so
/// the plain read does too; nothing to drop.
fn drop_page_cache_hint(_path: &Path) {}

const OWNERS: usize = 100;
const TAGS: usize = 50;
const LOCATIONS: usize = 20;

/// A catalogue with owners, tags, locations and two content types spread
/// evenly, straight into an embedded data directory.
async fn import_embedded(dir: &Path, count: usize) {
    let store =
        image_service::storage::embedded::EmbeddedMetadataStore::open(&dir.join("metadata.redb"))
            .expect("opens");
    let start = Timestamp::now().as_micros() - count as i64 * 1000;
    for batch in (0..count).collect::<Vec<_>>().chunks(5_000) {
        let records = batch
            .iter()
            .map(|&i| catalogue_record(i, start + i as i64 * 1000))
            .collect();
        store.import(records).await.expect("import");
    }
}

fn catalogue_record(i: usize, micros: i64) -> ImageRecord {
    let time = Timestamp::from_micros(micros);
    ImageRecord {
        id: ImageId::new(),
        owner: UserId::parse(&format!("user{}", i % OWNERS)).expect("user"),
        filename: format!("{i}.jpg"),
        content_type: if i.is_multiple_of(3) {
            "image/png"
        } else {
            "image/jpeg"
        }
        .into(),
        size_bytes: 100_000,
        sha256: "0".repeat(64),
        crc32c: 0,
        width: 1080,
        height: 1080,
        title: format!("image {i}"),
        description: String::new(),
        tags: vec![format!("tag{}", i % TAGS), format!("tag{}", (i / 7) % TAGS)],
        location: format!("city{}", i % LOCATIONS),
        attributes: Default::default(),
        create_time: time,
        update_time: time,
        variants: Vec::new(),
        revision: 1,
        idempotency_key: None,
        uploaded_sha256: String::new(),
        metadata_stripped: false,
        blurhash: String::new(),
    }
}

/// The same catalogue's metadata through the service (tiny images).
async fn populate_over_grpc(client: &ImageServiceClient<Channel>, count: usize) {
    let tiny = fake_png(200, 0);
    futures::stream::iter(0..count)
        .map(|i| {
            let spec = pb::ImageSpec {
                tags: vec![format!("tag{}", i % TAGS), format!("tag{}", (i / 7) % TAGS)],
                location: format!("city{}", i % LOCATIONS),
                ..Default::default()
            };
            let (client, tiny) = (client.clone(), tiny.clone());
            async move {
                upload_with(&client, tiny, &format!("user{}", i % OWNERS), spec)
                    .await
                    .expect("upload");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

/// The service's storage calls per upload, by store and operation.
async fn backend_calls(service: &Service, uploads: usize) -> String {
    let text = reqwest::get(format!("http://{}/metrics", service.http))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
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

/// A listing request for the i-th call.
type Filter = fn(usize) -> pb::ListImagesRequest;

async fn listing_rows(
    out: &mut String,
    service: &Service,
    store: &str,
    images: usize,
    calls: usize,
) {
    let client = service.client().await;
    let filters: [(&str, Filter); 6] = [
        ("none", |_| pb::ListImagesRequest::default()),
        ("owner", |i| pb::ListImagesRequest {
            owner_id: format!("user{}", i % OWNERS),
            ..Default::default()
        }),
        ("tag", |i| pb::ListImagesRequest {
            tag: format!("tag{}", i % TAGS),
            ..Default::default()
        }),
        ("location", |i| pb::ListImagesRequest {
            location: format!("city{}", i % LOCATIONS),
            ..Default::default()
        }),
        ("content type", |_| pb::ListImagesRequest {
            content_type: "image/png".into(),
            ..Default::default()
        }),
        ("owner + tag", |i| pb::ListImagesRequest {
            owner_id: format!("user{}", i % OWNERS),
            tag: format!("tag{}", i % TAGS),
            ..Default::default()
        }),
    ];
    for (name, make) in filters {
        let read_before = service.metric("imageservice_list_records_read_total").await;
        let returned_before = service
            .metric("imageservice_list_records_returned_total")
            .await;
        let mut latencies = Vec::with_capacity(calls);
        for i in 0..calls {
            let message = pb::ListImagesRequest {
                page_size: 50,
                ..make(i)
            };
            let (elapsed, response) =
                time(client.clone().list_images(request(message, "bench"))).await;
            response.expect("a page");
            latencies.push(elapsed);
        }
        latencies.sort();
        let read = service.metric("imageservice_list_records_read_total").await - read_before;
        let returned = service
            .metric("imageservice_list_records_returned_total")
            .await
            - returned_before;
        let _ = writeln!(
            out,
            "| {store} | {images} | {name} | {:.2} ms | {:.2} ms | {:.2} |",
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            read / returned
        );
    }
}

/// Variants of phone photos on one core: the renderer and libvips on
/// the same files, CPU per photo, and how close each medium variant is to
/// a reference downscale.
fn thumbnailing(plan: &Plan) -> String {
    let decoder = if cfg!(feature = "libjpeg-turbo") {
        "libjpeg-turbo (feature `libjpeg-turbo`)"
    } else {
        "jpeg-decoder (the default build)"
    };
    let mut out =
        format!("### 8. Variants of phone photos (one core; JPEGs decoded by {decoder})\n\n");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut photos: Vec<(String, Vec<u8>, u16)> = fixtures::PHONE_SHOTS
        .iter()
        .map(|shot| {
            let shot = fixtures::PhoneShot {
                width: shot.width / plan.photo_shrink,
                height: shot.height / plan.photo_shrink,
                ..*shot
            };
            (
                shot.describe(),
                fixtures::phone_shot(&shot),
                shot.orientation,
            )
        })
        .collect();
    let (w, h) = (4000 / plan.photo_shrink, 3000 / plan.photo_shrink);
    photos.push((
        format!("synthetic: {w} × {h} noise-textured, baseline, 4:2:0, Q90"),
        fixtures::photo_jpeg(w, h),
        1,
    ));
    let _ = writeln!(
        out,
        "| photo | JPEG | image-service CPU ms | libvips CPU ms | ratio libvips / image-service | PSNR of `medium`, image-service / libvips | image-service: decode / resize / encode / BlurHash ms | one render's memory: peak RSS growth / reserved |\n|---|---|---|---|---|---|---|---|"
    );
    let mut vips_error = None;
    for (i, (what, jpeg, orientation)) in photos.iter().enumerate() {
        let path = dir.path().join(format!("photo-{i}.jpg"));
        std::fs::write(&path, jpeg).expect("write photo");
        let (ours, profile, medium, peak) = our_renders(jpeg, *orientation as u8, plan.renders);
        let (width, height) = imagesize::blob_size(jpeg)
            .map(|size| (size.width as u32, size.height as u32))
            .expect("the photo's size");
        let reserved =
            image_service::media::variants::memory_needed(jpeg, "image/jpeg", width, height);
        let reference = reference_image(jpeg, *orientation);
        let our_psnr = psnr(&reference, &medium);
        let (theirs, their_psnr) = match vips_renders(&path, plan.renders) {
            Ok((ms, medium_path)) => {
                let medium = image::open(&medium_path)
                    .expect("libvips' medium")
                    .to_rgb8();
                (format!("{ms:.1}"), Some((ms, psnr(&reference, &medium))))
            }
            Err(why) => {
                vips_error = Some(why);
                ("–".into(), None)
            }
        };
        let stage = |d: Duration| ms(d) / plan.renders as f64;
        let _ = writeln!(
            out,
            "| {what} | {:.2} MB, {:.2} bits/px | {ours:.1} | {theirs} | {} | {our_psnr:.2} / {} dB | {:.1} / {:.1} / {:.1} / {:.1} | {:.1} / {:.1} MiB |",
            jpeg.len() as f64 / 1e6,
            jpeg.len() as f64 * 8.0 / f64::from(reference.width() * reference.height()),
            their_psnr.map_or("–".into(), |(t, _)| format!("{:.2}", t / ours)),
            their_psnr.map_or("–".into(), |(_, p)| format!("{p:.2}")),
            stage(profile.decode),
            stage(profile.resize),
            stage(profile.encode),
            stage(profile.placeholder),
            peak as f64 / MIB as f64,
            reserved as f64 / MIB as f64,
        );
    }
    if let Some(why) = vips_error {
        let _ = writeln!(out, "\nlibvips not measured: {why}.");
    }
    let _ = writeln!(
        out,
        "\nCPU time (user + system) per photo for `small` (320) + `medium` (1080) + BlurHash, the mean of {} renders each. The photos are rendered from a scene (sky, clouds, hills, a textured field, a house, trees, vignetting, sensor grain) and encoded the way phones write them, with EXIF; the synthetic row is the old noise-textured JPEG. libvips runs through pyvips with `VIPS_CONCURRENCY=1`: one `thumbnail` to 1080 (shrink-on-load, EXIF rotation) held in memory, written as JPEG Q82, and 320 made from it and written the same way, like the service. PSNR compares each `medium` with a reference: the photo decoded at full size, turned upright and resized straight to the same size with Lanczos3. Memory: how far the process's resident memory rose during one render (after handing freed memory back to the kernel), next to what the service reserves from its memory budget for that render, estimated from the header.\n",
        plan.renders
    );
    out
}

/// Mean CPU milliseconds and stage times of `renders` renders, and the
/// medium variant of the last one, decoded.
fn our_renders(
    jpeg: &[u8],
    orientation: u8,
    renders: usize,
) -> (
    f64,
    image_service::media::variants::RenderProfile,
    image::RgbImage,
    u64,
) {
    use image_service::media::variants::{RenderProfile, render_profiled};
    let once = || {
        render_profiled(
            jpeg,
            image::ImageFormat::Jpeg,
            orientation,
            512 * MIB as u64,
        )
        .expect("renders")
    };
    // The first render measures the memory one render holds; it also
    // warms the caches for the timed ones.
    let (peak, (mut last, _)) = peak_growth(once);
    let mut profile = RenderProfile::default();
    let before = own_cpu_seconds();
    for _ in 0..renders {
        let (rendered, p) = once();
        profile.decode += p.decode;
        profile.resize += p.resize;
        profile.encode += p.encode;
        profile.placeholder += p.placeholder;
        last = rendered;
    }
    let cpu_ms = (own_cpu_seconds() - before) * 1000.0 / renders as f64;
    let medium = last
        .variants
        .iter()
        .find(|v| v.name == "medium")
        .expect("a medium variant");
    let medium = image::load_from_memory(&medium.bytes)
        .expect("medium decodes")
        .to_rgb8();
    (cpu_ms, profile, medium, peak)
}

/// The photo decoded whole and turned upright: what every variant is
/// compared with.
fn reference_image(jpeg: &[u8], orientation: u16) -> image::RgbImage {
    // jpeg-decoder, not the image crate's zune-jpeg: zune-jpeg 0.5.15
    // decodes the first phone photo (baseline, Q94) to garbage.
    let mut decoder = jpeg_decoder::Decoder::new(std::io::Cursor::new(jpeg));
    let pixels = decoder.decode().expect("the photo decodes");
    let info = decoder.info().expect("a frame header");
    let mut full = image::DynamicImage::ImageRgb8(
        image::RgbImage::from_raw(u32::from(info.width), u32::from(info.height), pixels)
            .expect("RGB pixels"),
    );
    if let Some(o) = image::metadata::Orientation::from_exif(orientation as u8) {
        full.apply_orientation(o);
    }
    full.to_rgb8()
}

/// PSNR in dB of `candidate` against `reference` resized straight to the
/// candidate's size with Lanczos3.
fn psnr(reference: &image::RgbImage, candidate: &image::RgbImage) -> f64 {
    use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
    let mut target = image::RgbImage::new(candidate.width(), candidate.height());
    Resizer::new()
        .resize(
            reference,
            &mut target,
            &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3)),
        )
        .expect("reference resized");
    let squared: f64 = target
        .as_raw()
        .iter()
        .zip(candidate.as_raw())
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum();
    let mse = squared / target.as_raw().len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// A memory figure (`VmRSS:`, `VmHWM:`) of process `pid` ("self" for
/// this one), in KiB.
fn status_kib(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a memory figure")
}

/// How far this process's resident memory rose while `work` ran, in
/// bytes. Freed memory is handed back to the kernel first, so memory an
/// earlier render left in the allocator is not reused unseen.
fn peak_growth<T>(work: impl FnOnce() -> T) -> (u64, T) {
    // SAFETY: malloc_trim only returns free memory to the kernel.
    unsafe { libc::malloc_trim(0) };
    std::fs::write("/proc/self/clear_refs", "5").expect("clear_refs");
    let before = status_kib("self", "VmRSS:");
    let result = work();
    let peak = status_kib("self", "VmHWM:");
    (peak.saturating_sub(before) * 1024, result)
}

/// User + system CPU seconds of this process so far.
fn own_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// libvips' mean CPU milliseconds per photo over `renders`, and the path
/// of the medium it wrote.
fn vips_renders(path: &Path, renders: usize) -> Result<(f64, PathBuf), String> {
    let python = std::env::var("BENCH_PYTHON").unwrap_or_else(|_| {
        let venv = tools_dir().join("venv/bin/python");
        venv.display().to_string()
    });
    let medium_path = path.with_extension("vips-medium.jpg");
    let script = format!(
        "import time, pyvips\n\
         def once():\n    \
             medium = pyvips.Image.thumbnail({path:?}, 1080).copy_memory()\n    \
             m = medium.write_to_buffer('.jpg[Q=82]')\n    \
             s = medium.thumbnail_image(320).write_to_buffer('.jpg[Q=82]')\n    \
             return m, s\n\
         m, s = once()\n\
         open({medium:?}, 'wb').write(m)\n\
         open({small:?}, 'wb').write(s)\n\
         start = time.process_time()\n\
         for _ in range({renders}):\n    once()\n\
         print((time.process_time() - start) * 1000 / {renders})\n",
        path = path.display().to_string(),
        medium = medium_path.display().to_string(),
        small = small_path(&medium_path).display().to_string(),
    );
    let output = Command::new(python)
        .arg("-c")
        .arg(script)
        .env("VIPS_CONCURRENCY", "1")
        .output()
        .map_err(|e| format!("python: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "pyvips unavailable ({})",
            stderr.lines().last().unwrap_or("")
        ));
    }
    let ms = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("unexpected output: {e}"))?;
    Ok((ms, medium_path))
}

/// Where `vips_renders` writes its small, beside its medium.
fn small_path(medium: &Path) -> PathBuf {
    medium.with_extension("small.jpg")
}

fn tools_dir() -> PathBuf {
    std::env::var_os("TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools"))
}

fn today() -> String {
    let output = Command::new("date").arg("+%Y-%m-%d").output();
    output
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn total_memory_gib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| (kib + 512 * 1024) / 1024 / 1024)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Replaces the generated section of `BENCHMARKS.md`, keeping the rest.
fn write_results(path: &Path, report: &str) -> std::io::Result<()> {
    const START: &str = "<!-- benchmark: generated by scripts/bench -->";
    const END: &str = "<!-- end of generated section -->";
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!(
        "{START}\n## Service vs raw backends\n\nCommand: `scripts/bench` (runs `cargo bench --bench service`). Throughputs are the median of 3 rounds; the service and the raw backend run side by side in one run, on the same servers and data. Release builds; s3s-fs and dynalite share the 2 cores with the service and the benchmark's own client, so absolute figures are low and the ratios are what to read.\n\n{report}\n{END}"
    );
    let updated = match (existing.find(START), existing.find(END)) {
        (Some(start), Some(end)) => {
            format!(
                "{}{section}{}",
                &existing[..start],
                &existing[end + END.len()..]
            )
        }
        _ => {
            let title_end = existing.find("\n## ").unwrap_or(existing.len());
            format!(
                "{}\n\n{section}\n{}",
                &existing[..title_end].trim_end(),
                &existing[title_end..]
            )
        }
    };
    std::fs::write(path, updated)
}
