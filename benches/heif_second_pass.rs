//! The cost of the second pass a HEIC whose `meta` box comes after `mdat`
//! takes (Samsung's layout), against the same file with `meta` first:
//! `cargo bench --bench heif_second_pass` prints, per size and layout, the
//! upload's time (median of the rounds, first message to answer) and the
//! service's peak resident memory (`VmHWM`, a fresh process per row), on
//! the embedded backend; with `-- aws` and the test servers installed
//! (`TOOLS_DIR`, see `scripts/tools.sh`), on the aws backend too. Run by
//! `cargo test` (without `--bench`) it does one small round, so the
//! benchmark cannot rot.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use image_service::fixtures::{HeifLayout, heic_photo_sized};
use image_service::pb;
use image_service::testkit::service::Service;
use image_service::testkit::{as_user, servers, upload_messages};

const MIB: usize = 1024 * 1024;

/// The service binary on a fresh data directory (or the test servers),
/// serving on loopback.
fn start(backend: &[String]) -> Service {
    let binary = Path::new(env!("CARGO_BIN_EXE_image-service"));
    let mut args: Vec<String> = ["--log-format", "json", "--max-image-bytes", "64MiB"]
        // The scrub and its second pass alone: the photos are synthetic
        // HEICs (no decodable HEVC), and decoding them for variants
        // (feature `heif`) is another cost.
        .into_iter()
        .chain(["--variants", "false"])
        .map(String::from)
        .collect();
    args.extend_from_slice(backend);
    if !backend.is_empty() {
        // A fresh bucket and table on the test servers.
        Service::init(binary, &args);
    }
    let (command, dir) = Service::command(binary, &args);
    Service::spawn(command, dir)
}

/// The process's peak resident memory so far, in MiB.
fn peak_mib(service: &Service) -> f64 {
    service.peak_kib() as f64 / 1024.0
}

/// Uploads `bytes` in messages of 1 MiB; the time until the answer.
async fn upload(service: &Service, bytes: &[u8]) -> Duration {
    let mut client = service.client().await;
    let spec = pb::ImageSpec {
        filename: "20240601_120000.heic".into(),
        ..Default::default()
    };
    let messages = upload_messages(spec, Bytes::copy_from_slice(bytes), MIB);
    let request = as_user("bench", tokio_stream::iter(messages));
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
    let service = start(backend);
    let idle = peak_mib(&service);
    let mut times = Vec::new();
    for _ in 0..rounds {
        times.push(upload(&service, bytes).await);
    }
    times.sort();
    (times[times.len() / 2], peak_mib(&service), idle)
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
