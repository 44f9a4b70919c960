//! `image-soak --hostile`: runs each attack of a hostile caller against a
//! running service on this machine, one after the other, and prints what it
//! cost the replica (peak RSS growth over the idle level, server CPU
//! seconds) and what a well-behaved caller saw meanwhile (latency of its
//! calls, and any that failed). Every attack is bounded in count and time.
use std::time::{Duration, Instant};

use bytes::Bytes;
use image_service::fixtures;
use image_service::pb;
use image_service::pb::image_service_client::ImageServiceClient;
use image_service::pb::upload_image_request::Data;
use image_service::testkit::{as_user, process, upload_messages};
use tokio::io::AsyncWriteExt;
use tonic::transport::Channel;

use super::png;

/// The attacks, by the name `--attacks` selects them with.
pub const ATTACKS: &[&str] = &[
    "unread-downloads",
    "large-pages",
    "zero-png",
    "progressive-jpeg",
    "gif-frame",
    "marker-flood",
    "byte-messages",
    "heartbeats",
    "half-open",
    "huge-icc",
    "burst",
];

/// What one attack cost, and what the well-behaved caller saw.
struct Outcome {
    attack: &'static str,
    detail: String,
    rss_growth_mib: f64,
    cpu_seconds: f64,
    probe: Probe,
}

#[derive(Default)]
struct Probe {
    latencies: Vec<Duration>,
    failures: u64,
}

/// The service's memory and CPU, from /proc.
struct Meter {
    pid: u32,
}

impl Meter {
    fn status_kib(&self, field: &str) -> u64 {
        process::status_kib(&self.pid.to_string(), field).unwrap_or(0)
    }

    /// Resets the peak (VmHWM) to the current RSS.
    fn reset_peak(&self) {
        let _ = process::reset_peak(&self.pid.to_string());
    }

    fn cpu_seconds(&self) -> f64 {
        process::cpu_seconds(self.pid).unwrap_or(0.0)
    }
}

/// Runs the selected attacks, one at a time, and prints a table.
pub async fn run(
    channel: Channel,
    grpc_addr: String,
    http_addr: Option<String>,
    pid: u32,
    selected: &[String],
) -> anyhow::Result<()> {
    let meter = Meter { pid };
    let client = ImageServiceClient::new(channel.clone());
    // What the well-behaved caller reads and writes.
    let probe_image = upload(&client, "probe", png(1, 64), 64 * 1024, None)
        .await
        .map_err(|s| anyhow::anyhow!("the probe's upload failed: {s}"))?;
    let mut outcomes = Vec::new();
    for &attack in ATTACKS {
        if !selected.is_empty() && !selected.iter().any(|s| s == attack) {
            continue;
        }
        // Let the previous attack's work drain first.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle_kib = meter.status_kib("VmRSS:");
        meter.reset_peak();
        let cpu_before = meter.cpu_seconds();
        let (stop_probe, probe) = start_probe(client.clone(), probe_image.image_id.clone());
        let detail = match attack {
            "unread-downloads" => unread_downloads(&grpc_addr).await,
            "large-pages" => large_pages(&client).await,
            "zero-png" => zero_png(&client).await,
            "progressive-jpeg" => progressive_jpeg(&client).await,
            "gif-frame" => gif_frame(&client).await,
            "marker-flood" => marker_flood(&client).await,
            "byte-messages" => byte_messages(&client).await,
            "heartbeats" => heartbeats(&client).await,
            "half-open" => half_open(&grpc_addr, http_addr.as_deref()).await,
            "huge-icc" => huge_icc(&client).await,
            "burst" => burst(&channel).await,
            _ => unreachable!("every attack is listed"),
        };
        let _ = stop_probe.send(());
        let probe = probe.await.unwrap_or_default();
        let peak_kib = meter.status_kib("VmHWM:");
        outcomes.push(Outcome {
            attack,
            detail,
            rss_growth_mib: peak_kib.saturating_sub(idle_kib) as f64 / 1024.0,
            cpu_seconds: meter.cpu_seconds() - cpu_before,
            probe,
        });
        let outcome = outcomes.last().expect("just pushed");
        eprintln!(
            "{}: +{:.0} MiB, {:.1} CPU-s; {}",
            outcome.attack, outcome.rss_growth_mib, outcome.cpu_seconds, outcome.detail
        );
    }
    println!(
        "| attack | what the attacker got | peak RSS growth | server CPU | well-behaved caller p50 / p99 / max | its failures |"
    );
    println!("|---|---|---|---|---|---|");
    for outcome in &outcomes {
        let mut latencies = outcome.probe.latencies.clone();
        latencies.sort();
        let at = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        println!(
            "| {} | {} | +{:.0} MiB | {:.1} s | {:.1?} / {:.1?} / {:.1?} | {} of {} |",
            outcome.attack,
            outcome.detail,
            outcome.rss_growth_mib,
            outcome.cpu_seconds,
            at(0.5),
            at(0.99),
            latencies.last().copied().unwrap_or_default(),
            outcome.probe.failures,
            latencies.len() as u64 + outcome.probe.failures
        );
    }
    Ok(())
}

/// A well-behaved caller on its own connection: a GetImage every 100 ms
/// and a small upload every 500 ms, until told to stop.
fn start_probe(
    client: ImageServiceClient<Channel>,
    image_id: String,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Probe>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut probe = Probe::default();
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        for round in 0u64.. {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = &mut stopped => break,
            }
            let begun = Instant::now();
            let result = if round % 5 == 4 {
                upload(&client, "probe", png(round + 2, 16), 64 * 1024, None)
                    .await
                    .map(|_| ())
            } else {
                client
                    .clone()
                    .get_image(as_user(
                        "probe",
                        pb::GetImageRequest {
                            image_id: image_id.clone(),
                        },
                    ))
                    .await
                    .map(|_| ())
            };
            match result {
                Ok(()) => probe.latencies.push(begun.elapsed()),
                Err(_) => probe.failures += 1,
            }
        }
        probe
    });
    (stop, task)
}

/// Uploads `bytes` in `chunk`-byte messages.
async fn upload(
    client: &ImageServiceClient<Channel>,
    user: &str,
    bytes: impl Into<Bytes>,
    chunk: usize,
    spec: Option<pb::ImageSpec>,
) -> Result<pb::Image, tonic::Status> {
    let spec = spec.unwrap_or_else(|| pb::ImageSpec {
        filename: "attack.bin".into(),
        ..Default::default()
    });
    let messages = upload_messages(spec, bytes.into(), chunk);
    let response = client
        .clone()
        .upload_image(as_user(user, tokio_stream::iter(messages)))
        .await?;
    Ok(response.into_inner().image.unwrap_or_default())
}

fn status_of<T>(result: &Result<T, tonic::Status>) -> String {
    match result {
        Ok(_) => "OK".into(),
        Err(status) => format!("{:?}", status.code()),
    }
}

/// 1 000 downloads of a 20 MB image on one connection, never read, held
/// for 10 s.
async fn unread_downloads(grpc_addr: &str) -> String {
    let Ok(channel) = Channel::from_shared(grpc_addr.to_owned()) else {
        return "bad address".into();
    };
    let Ok(channel) = channel.connect().await else {
        return "could not connect".into();
    };
    let client = ImageServiceClient::new(channel);
    let image = match upload(&client, "attacker", png(7, 2600), 1024 * 1024, None).await {
        Ok(image) => image,
        Err(status) => return format!("the 20 MB upload failed: {:?}", status.code()),
    };
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let mut client = client.clone();
        let id = image.image_id.clone();
        calls.spawn(async move {
            let request = pb::DownloadImageRequest {
                image_id: id,
                ..Default::default()
            };
            let started = client.download_image(as_user("attacker", request)).await;
            let code = status_of(&started);
            // Held, never read.
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(started);
            code
        });
    }
    let codes = tally(calls).await;
    format!("1000 unread downloads of 20 MB on one connection: {codes}")
}

async fn tally(mut calls: tokio::task::JoinSet<String>) -> String {
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    while let Some(code) = calls.join_next().await {
        *counts
            .entry(code.unwrap_or_else(|_| "panic".into()))
            .or_default() += 1;
    }
    counts
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// 1 000 images with the most metadata allowed, then 30 ListImages of
/// 1 000 at once.
async fn large_pages(client: &ImageServiceClient<Channel>) -> String {
    let attributes: std::collections::HashMap<String, String> = (0..32)
        .map(|i| (format!("{i:0>1024}"), "v".repeat(1024)))
        .collect();
    let spec = pb::ImageSpec {
        filename: "meta.png".into(),
        description: "d".repeat(2200),
        tags: (0..30).map(|t| format!("{t:0>64}")).collect(),
        attributes,
        ..Default::default()
    };
    let mut uploads = tokio::task::JoinSet::new();
    let mut outcomes = std::collections::BTreeMap::<String, u64>::new();
    let started = Instant::now();
    for seed in 0..1000u64 {
        let (client, spec) = (client.clone(), spec.clone());
        uploads.spawn(async move {
            status_of(&upload(&client, "lister", png(seed + 100, 4), 64 * 1024, Some(spec)).await)
        });
        // One user may have 8 uploads in progress (the default cap).
        while uploads.len() >= 8 {
            if let Some(Ok(code)) = uploads.join_next().await {
                *outcomes.entry(code).or_default() += 1;
            }
        }
    }
    while let Some(code) = uploads.join_next().await {
        *outcomes.entry(code.unwrap_or_default()).or_default() += 1;
    }
    let uploaded_in = started.elapsed();
    let uploaded = outcomes
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut lists = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let mut client = client.clone().max_decoding_message_size(128 * 1024 * 1024);
        lists.spawn(async move {
            let request = pb::ListImagesRequest {
                owner_id: "lister".into(),
                page_size: 1000,
                ..Default::default()
            };
            match client.list_images(as_user("lister", request)).await {
                Ok(page) => {
                    let page = page.into_inner();
                    format!(
                        "{} images / {} KiB",
                        page.images.len(),
                        prost::Message::encoded_len(&page) / 1024
                    )
                }
                Err(status) => format!("{:?}", status.code()),
            }
        });
    }
    let pages = tally(lists).await;
    format!(
        "1000 uploads ({uploaded}) in {uploaded_in:.0?}, then 30 pages of 1000 at once: {pages}"
    )
}

/// A PNG of 10 000 x 10 000 RGBA zeros (a few hundred KB), four at once.
async fn zero_png(client: &ImageServiceClient<Channel>) -> String {
    let side = 10_000;
    let zeros = vec![0u8; side * side * 4];
    let mut bytes = Vec::new();
    let encoder = image::codecs::png::PngEncoder::new_with_quality(
        &mut bytes,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::NoFilter,
    );
    if let Err(error) = image::ImageEncoder::write_image(
        encoder,
        &zeros,
        side as u32,
        side as u32,
        image::ExtendedColorType::Rgba8,
    ) {
        return format!("could not make the PNG: {error}");
    }
    drop(zeros);
    four_at_once(client, bytes, "10000x10000 RGBA zeros PNG").await
}

async fn four_at_once(client: &ImageServiceClient<Channel>, bytes: Vec<u8>, what: &str) -> String {
    let size = bytes.len();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (client, bytes) = (client.clone(), bytes.clone());
        calls.spawn(async move {
            status_of(&upload(&client, "attacker", bytes, 1024 * 1024, None).await)
        });
    }
    format!(
        "{what} ({} KB), 4 at once: {}",
        size / 1000,
        tally(calls).await
    )
}

/// A progressive 4:4:4 JPEG of 10 000 x 10 000, four at once.
async fn progressive_jpeg(client: &ImageServiceClient<Channel>) -> String {
    let (width, height) = (10_000u16, 10_000u16);
    let mut rgb = Vec::with_capacity(usize::from(width) * usize::from(height) * 3);
    for y in 0..height {
        for x in 0..width {
            rgb.extend_from_slice(&[(x / 40) as u8, (y / 40) as u8, 128]);
        }
    }
    let mut bytes = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut bytes, 60);
    encoder.set_progressive(true);
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_1_1);
    if let Err(error) = encoder.encode(&rgb, width, height, jpeg_encoder::ColorType::Rgb) {
        return format!("could not make the JPEG: {error}");
    }
    drop(rgb);
    four_at_once(client, bytes, "progressive 4:4:4 JPEG 10000x10000").await
}

/// A GIF with a 1 x 1 screen and one 11 000 x 11 000 frame.
async fn gif_frame(client: &ImageServiceClient<Channel>) -> String {
    let mut bytes = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff".to_vec();
    bytes.extend_from_slice(&[0x2C, 0, 0, 0, 0]);
    bytes.extend_from_slice(&11_000u16.to_le_bytes());
    bytes.extend_from_slice(&11_000u16.to_le_bytes());
    bytes.push(0);
    // The frame's data: LZW code size 2, sub-blocks of "clear" codes.
    bytes.push(2);
    for _ in 0..4096 {
        bytes.push(255);
        bytes.extend(std::iter::repeat_n(0x4C, 255));
    }
    bytes.extend_from_slice(&[0, 0x3B]);
    let result = upload(client, "attacker", bytes, 64 * 1024, None).await;
    match result {
        Ok(image) => format!("accepted as {}x{}", image.width, image.height),
        Err(status) => format!("{:?}: {}", status.code(), status.message()),
    }
}

/// A 16 MiB JPEG with 8 M empty TEM markers before its scan.
async fn marker_flood(client: &ImageServiceClient<Channel>) -> String {
    let mut small = Vec::new();
    let rgb = vec![90u8; 64 * 48 * 3];
    if jpeg_encoder::Encoder::new(&mut small, 80)
        .encode(&rgb, 64, 48, jpeg_encoder::ColorType::Rgb)
        .is_err()
    {
        return "could not make the JPEG".into();
    }
    // After the frame header (so the dimensions are read as usual), right
    // before the scan.
    let Some(sos) = small.windows(2).position(|w| w == [0xFF, 0xDA]) else {
        return "the JPEG has no scan".into();
    };
    let mut bytes = small[..sos].to_vec();
    while bytes.len() < 16 * 1024 * 1024 - small.len() {
        bytes.extend_from_slice(&[0xFF, 0x01]);
    }
    bytes.extend_from_slice(&small[sos..]);
    let started = Instant::now();
    let result = upload(client, "attacker", bytes, 1024 * 1024, None).await;
    format!(
        "16 MiB of FF01 markers: {} after {:.1?}",
        status_of(&result),
        started.elapsed()
    )
}

/// A 330 KB image sent one byte per message.
async fn byte_messages(client: &ImageServiceClient<Channel>) -> String {
    let bytes = png(9, 330);
    let size = bytes.len();
    let started = Instant::now();
    let result = upload(client, "attacker", bytes, 1, None).await;
    format!(
        "{} KB in 1-byte messages: {} after {:.1?}",
        size / 1000,
        status_of(&result),
        started.elapsed()
    )
}

/// 64 uploads that send only empty messages every 3 s, for 20 s.
async fn heartbeats(client: &ImageServiceClient<Channel>) -> String {
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let mut client = client.clone();
        calls.spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let request = as_user("attacker", tokio_stream::wrappers::ReceiverStream::new(rx));
            let call = tokio::spawn(async move { client.upload_image(request).await });
            let _ = tx
                .send(pb::UploadImageRequest {
                    data: Some(Data::Spec(pb::ImageSpec {
                        filename: "slow.png".into(),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .await;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(20) && !call.is_finished() {
                let _ = tx.send(pb::UploadImageRequest::default()).await;
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            drop(tx);
            match call.await {
                Ok(result) => status_of(&result),
                Err(_) => "panic".into(),
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let real = upload(client, "someone-else", png(11, 32), 64 * 1024, None).await;
    let held = tally(calls).await;
    format!(
        "64 heartbeat-only uploads for 20 s: {held}; a real upload meanwhile: {}",
        status_of(&real)
    )
}

/// 300 HTTP connections with unfinished headers and 300 gRPC connections
/// that never send the HTTP/2 preface; how many are still open after 15 s.
async fn half_open(grpc_addr: &str, http_addr: Option<&str>) -> String {
    let grpc = grpc_addr.trim_start_matches("http://").to_owned();
    let mut report = Vec::new();
    for (what, addr, opening) in [
        ("gRPC without preface", Some(grpc.as_str()), &b""[..]),
        (
            "HTTP with unfinished headers",
            http_addr,
            &b"GET /metrics HTTP/1.1\r\nHost: x\r\n"[..],
        ),
    ] {
        let Some(addr) = addr else { continue };
        let mut sockets = Vec::new();
        for _ in 0..300 {
            if let Ok(mut socket) = tokio::net::TcpStream::connect(addr).await {
                let _ = socket.write_all(opening).await;
                sockets.push(socket);
            }
        }
        tokio::time::sleep(Duration::from_secs(15)).await;
        let mut open = 0;
        for socket in &sockets {
            // Whatever the server sent (an HTTP/2 server speaks first),
            // then: nothing more to read means open, end of stream closed.
            let mut buf = [0u8; 4096];
            loop {
                match socket.try_read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        open += 1;
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        report.push(format!(
            "{what}: {open} of {} open after 15 s",
            sockets.len()
        ));
    }
    report.join("; ")
}

/// A PNG whose ICC profile chunk is 40 MB.
async fn huge_icc(client: &ImageServiceClient<Channel>) -> String {
    let bytes = fixtures::png_with_icc_profile(64, 64, 40 * 1000 * 1000);
    let result = upload(client, "attacker", bytes, 1024 * 1024, None).await;
    match result {
        Ok(image) => format!("40 MB iCCP: OK, {} variants", image.variants.len()),
        Err(status) => format!("40 MB iCCP: {:?}: {}", status.code(), status.message()),
    }
}

/// Not an attack: a legitimate burst of 64 uploads of 48 MiB at once, from
/// 64 users over one connection (a gateway's). Each should either complete
/// or be refused before it has sent its bytes; none may be cut half-way.
async fn burst(channel: &Channel) -> String {
    const UPLOADS: usize = 64;
    const SIZE: usize = 48 * 1024 * 1024;
    let image = Bytes::from(fixtures::png_of_size(SIZE - 64 * 1024, 21));
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..UPLOADS {
        let client = ImageServiceClient::new(channel.clone());
        let image = image.clone();
        calls.spawn(async move {
            let spec = pb::ImageSpec {
                filename: format!("burst-{n}.png"),
                ..Default::default()
            };
            let result = upload(
                &client,
                &format!("burst-{n}"),
                image,
                1024 * 1024,
                Some(spec),
            )
            .await;
            status_of(&result)
        });
    }
    let outcomes = tally(calls).await;
    format!(
        "{UPLOADS} uploads of {} MiB at once, one connection, in {:.0?}: {outcomes}",
        SIZE >> 20,
        started.elapsed()
    )
}
