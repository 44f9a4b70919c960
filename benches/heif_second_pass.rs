//! The cost of the second pass a HEIC whose `meta` box comes after `mdat`
//! takes (Samsung's layout), against the same file with `meta` first:
//! `cargo bench --bench heif_second_pass` prints, per size and layout, the
//! upload's time (median of the rounds, first message to answer) and the
//! service's peak resident memory (`VmHWM`, a fresh process per row), on
//! the embedded backend; with `-- aws` and the test servers installed
//! (`TOOLS_DIR`, see `scripts/tools.sh`), on the aws backend too. Run by
//! `cargo test` (without `--bench`) it does one small round, so the
//! benchmark cannot rot.
#[path = "../tests/api/helpers/servers.rs"]
#[allow(dead_code)]
mod servers;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use image_service::fixtures::{HeifLayout, heic_photo_sized};
use image_service::pb;
use image_service::pb::image_service_client::ImageServiceClient;
use image_service::pb::upload_image_request::Data;

const MIB: usize = 1024 * 1024;

/// The service binary on a fresh data directory (or the test servers),
/// serving on loopback.
struct Service {
    child: Child,
    grpc: SocketAddr,
    _data: tempfile::TempDir,
}

impl Service {
    fn start(backend: &[String]) -> Self {
        let data = tempfile::tempdir().expect("a temp dir");
        let command = || {
            let mut command = Command::new(env!("CARGO_BIN_EXE_image-service"));
            command
                .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
                .args(["--log-format", "json", "--max-image-bytes", "64MiB"])
                // The scrub and its second pass alone: the photos are
                // synthetic HEICs (no decodable HEVC), and decoding them
                // for variants (feature `heif`) is another cost.
                .args(["--variants", "false"])
                .arg("--data-dir")
                .arg(data.path())
                .args(backend);
            command
        };
        if !backend.is_empty() {
            // A fresh bucket and table on the test servers.
            let status = command()
                .arg("init")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("image-service init runs");
            assert!(status.success(), "image-service init failed");
        }
        let mut child = command()
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the service starts");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|l| l.contains("image-service ready"))
            .expect("the service says it is ready");
        let ready: serde_json::Value = serde_json::from_str(&ready).expect("a JSON line");
        let grpc = ready["fields"]["grpc"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("its gRPC address");
        std::thread::spawn(move || lines.for_each(drop));
        Self {
            child,
            grpc,
            _data: data,
        }
    }

    /// The process's peak resident memory so far, in MiB.
    fn peak_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Uploads `bytes` in messages of 1 MiB; the time until the answer.
async fn upload(service: &Service, bytes: &[u8]) -> Duration {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", service.grpc))
        .expect("an endpoint")
        .connect()
        .await
        .expect("the service answers");
    let mut client = ImageServiceClient::new(channel);
    let mut messages = vec![pb::UploadImageRequest {
        data: Some(Data::Spec(pb::ImageSpec {
            filename: "20240601_120000.heic".into(),
            ..Default::default()
        })),
        ..Default::default()
    }];
    messages.extend(bytes.chunks(MIB).map(|chunk| pb::UploadImageRequest {
        data: Some(Data::Chunk(Bytes::copy_from_slice(chunk))),
        ..Default::default()
    }));
    if let Some(last) = messages.last_mut() {
        last.finish_write = true;
    }
    let mut request = tonic::Request::new(tokio_stream::iter(messages));
    request
        .metadata_mut()
        .insert("x-user-id", "bench".parse().expect("a header value"));
    let started = Instant::now();
    let image = client
        .upload_image(request)
        .await
        .expect("the upload is stored")
        .into_inner()
        .image
        .expect("an image");
    assert!(image.metadata_stripped && image.width == 3024);
    started.elapsed()
}

/// One row: a fresh service, `rounds` uploads of the file; the median
/// time and the peak memory (and the service's peak before the uploads).
async fn row(backend: &[String], bytes: &[u8], rounds: usize) -> (Duration, f64, f64) {
    let service = Service::start(backend);
    let idle = service.peak_mib();
    let mut times = Vec::new();
    for _ in 0..rounds {
        times.push(upload(&service, bytes).await);
    }
    times.sort();
    (times[times.len() / 2], service.peak_mib(), idle)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (sizes, rounds): (&[usize], usize) = if full {
        (&[3 * MIB, 12 * MIB], 5)
    } else {
        (&[MIB], 1)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut backends = vec![("embedded", Vec::new(), None)];
    if std::env::args().any(|a| a == "aws") {
        let s3 = servers::start_s3();
        let dynamodb = servers::start_dynamodb();
        let args = vec![
            "--backend".into(),
            "aws".into(),
            "--s3-endpoint".into(),
            s3.endpoint(),
            "--dynamodb-endpoint".into(),
            dynamodb.endpoint(),
        ];
        backends.push(("aws", args, Some((s3, dynamodb))));
    }
    println!(
        "| backend | size | layout | upload (median of {rounds}) | peak RSS (idle) | second pass |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, args, _servers) in &backends {
        for &size in sizes {
            let mut first = None;
            for layout in [HeifLayout::MetaFirst, HeifLayout::MetaLast] {
                let bytes = heic_photo_sized(4032, 3024, layout, size);
                let (time, peak, idle) = runtime.block_on(row(args, &bytes, rounds));
                let extra = match first {
                    None => {
                        first = Some((time, peak));
                        "-".to_owned()
                    }
                    Some((t, p)) => format!(
                        "+{:.0} ms, +{:.1} MiB",
                        (time.as_secs_f64() - t.as_secs_f64()) * 1e3,
                        peak - p
                    ),
                };
                println!(
                    "| {name} | {} MiB | {} | {:.0} ms | {peak:.1} MiB ({idle:.1}) | {extra} |",
                    size / MIB,
                    match layout {
                        HeifLayout::MetaLast => "meta after mdat",
                        _ => "meta first",
                    },
                    time.as_secs_f64() * 1e3,
                );
            }
        }
    }
}
