//! What every figure family measures with: the test servers and the raw
//! SDK clients on them ([`Stores`]), the service started with the
//! benchmark's flags, the gRPC calls, timing and rates.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use image_service::fixtures;
use image_service::pb;
use image_service::pb::image_service_client::ImageServiceClient;
use image_service::testkit::servers::{self, ServerProcess};
use image_service::testkit::service::{QUIET, Service};
use image_service::testkit::stats::{Samples, ms, percentile};
use image_service::testkit::{as_user, upload_messages};
use tonic::transport::Channel;

use crate::raw::Raw;

pub const MIB: usize = 1024 * 1024;
pub const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
/// The S3 part size and parts in flight, for the service and the raw SDK.
pub const PART_SIZE: usize = 8 * MIB;
pub const PARTS_IN_FLIGHT: usize = 4;
/// Upload chunk size of the gRPC client.
pub const CHUNK: usize = MIB;

/// The S3 and DynamoDB test servers of a run, and the raw SDK clients on
/// them (with the bucket and table `raw`), shared by the families.
pub struct Stores {
    pub s3: ServerProcess,
    pub dynamodb: ServerProcess,
    pub raw: Raw,
}

impl Stores {
    pub async fn start() -> Self {
        let s3 = servers::start_s3();
        let dynamodb = servers::start_dynamodb();
        let raw = Raw::connect(&s3.endpoint(), &dynamodb.endpoint()).await;
        raw.create_bucket("raw").await;
        Self { s3, dynamodb, raw }
    }

    /// The service's arguments for the aws backend, with `name` as bucket
    /// and table.
    pub fn backend_args(&self, name: &str) -> Vec<String> {
        [
            "--backend",
            "aws",
            "--s3-endpoint",
            &self.s3.endpoint(),
            "--dynamodb-endpoint",
            &self.dynamodb.endpoint(),
            "--s3-bucket",
            name,
            "--dynamodb-table",
            name,
        ]
        .map(String::from)
        .to_vec()
    }

    /// [`Stores::backend_args`] with the part size and parts in flight the
    /// raw SDK uploads with.
    pub fn aws_args(&self, name: &str) -> Vec<String> {
        let mut args = self.backend_args(name);
        args.extend([
            "--s3-part-size".into(),
            format!("{PART_SIZE}"),
            "--s3-parts-in-flight".into(),
            format!("{PARTS_IN_FLIGHT}"),
        ]);
        args
    }
}

/// `args` with variants off: the byte path alone.
pub fn without_variants(args: &[String]) -> Vec<String> {
    let mut args = args.to_vec();
    args.extend(["--variants".into(), "false".into()]);
    args
}

/// The service binary on loopback with `extra` after the benchmark's own
/// flags (limits no figure may hit), on a fresh data directory unless
/// `extra` names one; on the aws backend, after `init`.
pub fn start_service(extra: &[String]) -> Service {
    let binary = Path::new(env!("CARGO_BIN_EXE_image-service"));
    let mut args: Vec<String> = [
        "--log-format",
        "json",
        "--signing-key",
        "a-signing-key-for-benchmarks-0123456789",
        "--max-image-bytes",
        "4GiB",
        "--max-concurrent-uploads",
        "256",
        // One benchmark user uploads many images at once, and figure 4
        // measures what 32 concurrent large uploads take, so neither
        // the per-user cap nor the memory budget may stop them.
        "--max-uploads-per-user",
        "256",
        "--memory-budget",
        "8GiB",
    ]
    .map(String::from)
    .to_vec();
    args.extend_from_slice(extra);
    if extra.iter().any(|a| a == "aws") {
        Service::init(binary, &args);
    }
    let (command, dir) = Service::command(binary, &args);
    Service::spawn_logging(command, dir, QUIET)
}

pub fn row(out: &mut String, what: &str, service: &Samples, direct: &Samples) {
    let _ = writeln!(
        out,
        "| {what} | {:.0} | {:.0} | {:.2} |",
        service.median(),
        direct.median(),
        service.median() / direct.median()
    );
}

pub async fn time<F: std::future::Future>(work: F) -> (Duration, F::Output) {
    let start = Instant::now();
    let output = work.await;
    (start.elapsed(), output)
}

pub fn mib_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64()
}

/// Rate and latency of `count` calls made by `callers` concurrent callers.
pub struct Rate {
    pub rate: f64,
    pub p50: Duration,
    pub p99: Duration,
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

pub async fn concurrently<F, Fut>(images: &[Bytes], callers: usize, call: F) -> Rate
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

pub async fn upload(
    client: &ImageServiceClient<Channel>,
    bytes: Bytes,
    user: &str,
) -> Result<pb::Image, tonic::Status> {
    upload_with(client, bytes, user, pb::ImageSpec::default()).await
}

pub async fn upload_with(
    client: &ImageServiceClient<Channel>,
    bytes: Bytes,
    user: &str,
    spec: pb::ImageSpec,
) -> Result<pb::Image, tonic::Status> {
    // As imagectl and well-behaved clients do: the size up front.
    let spec = pb::ImageSpec {
        expected_size: Some(bytes.len() as i64),
        ..spec
    };
    let messages = upload_messages(spec, bytes, CHUNK);
    let response = client
        .clone()
        .upload_image(as_user(user, futures::stream::iter(messages)))
        .await?;
    Ok(response.into_inner().image.expect("an image"))
}

pub async fn download(client: &ImageServiceClient<Channel>, image_id: &str) -> usize {
    let message = pb::DownloadImageRequest {
        image_id: image_id.into(),
        ..Default::default()
    };
    let mut stream = client
        .clone()
        .download_image(as_user("bench", message))
        .await
        .expect("download")
        .into_inner();
    let mut total = 0;
    while let Some(message) = stream.message().await.expect("a message") {
        total += message.chunk.len();
    }
    total
}

pub async fn download_url(client: &ImageServiceClient<Channel>, image_id: &str) -> String {
    let message = pb::GetDownloadUrlRequest {
        image_id: image_id.into(),
        ..Default::default()
    };
    client
        .clone()
        .get_download_url(as_user("bench", message))
        .await
        .expect("a URL")
        .into_inner()
        .url
}

pub async fn fetch(url: &str) -> usize {
    let response = reqwest::get(url).await.expect("fetch");
    assert!(response.status().is_success(), "{}", response.status());
    response
        .bytes_stream()
        .try_fold(0, |n, chunk| async move { Ok(n + chunk.len()) })
        .await
        .expect("body")
}

pub async fn delete(client: &ImageServiceClient<Channel>, image_id: &str) {
    let message = pb::DeleteImageRequest {
        image_id: image_id.into(),
    };
    client
        .clone()
        .delete_image(as_user("bench", message))
        .await
        .expect("delete");
}

pub fn fake_png(size: usize, seed: u32) -> Bytes {
    Bytes::from(fixtures::png_around_noise(size, seed))
}

pub fn small_png(seed: u32) -> Bytes {
    Bytes::from(fixtures::noise_png(seed))
}
