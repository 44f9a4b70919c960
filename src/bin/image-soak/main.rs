//! image-soak: mixed traffic against a running image-service for a bounded
//! time at a bounded rate, then a check of every image that should exist.
//! Reports operations, errors by status code, latency percentiles per
//! operation, and the service's memory at start and end (with `--pid`).
//! With `--hostile`, runs the attacks of a hostile caller instead (see
//! `hostile.rs`). Only for services on this machine (loopback).
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use image_service::fixtures;
use image_service::pb;
use image_service::pb::image_service_client::ImageServiceClient;
use rand::Rng;
use sha2::{Digest, Sha256};
use tonic::Request;
use tonic::transport::Channel;

/// Drive mixed traffic against a running image-service, then verify it.
#[derive(Parser)]
#[command(name = "image-soak", version, about)]
struct Args {
    /// gRPC address of the service (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// How long to run, e.g. 10m.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Operations started per second, at most.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Operations in flight at most.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Distinct users.
    #[arg(long, default_value_t = 8)]
    users: usize,
    /// The service's process id, to report its memory (VmRSS).
    #[arg(long)]
    pid: Option<u32>,
    /// Instead of mixed traffic, run each attack of a hostile caller in
    /// turn and report what it cost the service (needs --pid) and what a
    /// well-behaved caller saw meanwhile.
    #[arg(long, requires = "pid")]
    hostile: bool,
    /// With --hostile: only these attacks (comma-separated; all by default).
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(hostile::ATTACKS))]
    attacks: Vec<String>,
    /// With --hostile: the service's HTTP address (host:port), for the
    /// half-open connection attack.
    #[arg(long)]
    http_addr: Option<String>,
}

mod hostile;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Op {
    Upload,
    Get,
    List,
    Download,
    Delete,
}

#[derive(Default)]
struct Stats {
    latencies: HashMap<Op, Vec<Duration>>,
    outcomes: BTreeMap<(Op, String), u64>,
}

/// Images that exist: id → (owner, sha256).
type Live = Arc<Mutex<HashMap<String, (String, String)>>>;

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn as_user<T>(user: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-user-id", user.parse().expect("ascii user"));
    request
}

/// A small valid PNG, different for every `seed`.
fn png(seed: u64, side: u32) -> Vec<u8> {
    fixtures::png(side, side, seed as u32)
}

async fn run_op(
    client: &mut ImageServiceClient<Channel>,
    op: Op,
    user: &str,
    seed: u64,
    live: &Live,
) -> Result<(), tonic::Status> {
    let pick = |live: &Live| -> Option<(String, String, String)> {
        let live = live.lock().expect("lock");
        let n = live.len();
        if n == 0 {
            return None;
        }
        let (id, (owner, sha)) = live.iter().nth((seed as usize) % n)?;
        Some((id.clone(), owner.clone(), sha.clone()))
    };
    match op {
        Op::Upload => {
            let bytes = png(seed, 64 + (seed % 192) as u32);
            let spec = pb::ImageSpec {
                filename: format!("soak-{seed}.png"),
                tags: vec![format!("t{}", seed % 5)],
                location: format!("city-{}", seed % 3),
                sha256: Some(hex::encode(Sha256::digest(&bytes))),
                ..Default::default()
            };
            let mut messages = vec![pb::UploadImageRequest {
                data: Some(pb::upload_image_request::Data::Spec(spec)),
                ..Default::default()
            }];
            for piece in bytes.chunks(64 * 1024) {
                messages.push(pb::UploadImageRequest {
                    data: Some(pb::upload_image_request::Data::Chunk(
                        bytes::Bytes::copy_from_slice(piece),
                    )),
                    ..Default::default()
                });
            }
            if let Some(last) = messages.last_mut() {
                last.finish_write = true;
            }
            let image = client
                .upload_image(as_user(user, tokio_stream::iter(messages)))
                .await?
                .into_inner()
                .image;
            if let Some(image) = image {
                live.lock()
                    .expect("lock")
                    .insert(image.image_id, (user.to_owned(), image.sha256));
            }
        }
        Op::Get => {
            if let Some((id, _, _)) = pick(live) {
                client
                    .get_image(as_user(user, pb::GetImageRequest { image_id: id }))
                    .await
                    .or_else(raced)?;
            }
        }
        Op::List => {
            let request = pb::ListImagesRequest {
                tag: format!("t{}", seed % 5),
                page_size: 20,
                ..Default::default()
            };
            client.list_images(as_user(user, request)).await?;
        }
        Op::Download => {
            if let Some((id, _, _)) = pick(live) {
                let request = pb::DownloadImageRequest {
                    image_id: id,
                    ..Default::default()
                };
                match client.download_image(as_user(user, request)).await {
                    Ok(response) => {
                        let mut stream = response.into_inner();
                        while let Some(message) = stream.next().await {
                            if let Err(status) = message {
                                return raced::<()>(status).map(|_| ());
                            }
                        }
                    }
                    Err(status) => return raced::<()>(status).map(|_| ()),
                }
            }
        }
        Op::Delete => {
            if let Some((id, owner, _)) = pick(live) {
                live.lock().expect("lock").remove(&id);
                client
                    .delete_image(as_user(&owner, pb::DeleteImageRequest { image_id: id }))
                    .await
                    .or_else(raced)?;
            }
        }
    }
    Ok(())
}

/// NOT_FOUND is an expected outcome when another operation deleted the
/// image first.
fn raced<T: Default>(status: tonic::Status) -> Result<tonic::Response<T>, tonic::Status> {
    if status.code() == tonic::Code::NotFound {
        Ok(tonic::Response::new(T::default()))
    } else {
        Err(status)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let uri: tonic::transport::Uri = args.addr.parse().context("--addr")?;
    let host = uri.host().unwrap_or_default();
    if !(host == "localhost" || host.starts_with("127.") || host == "[::1]" || host == "::1") {
        bail!("image-soak only targets services on this machine (loopback addresses)");
    }
    let channel = Channel::from_shared(args.addr.clone())?
        .connect()
        .await
        .context("connecting")?;
    if args.hostile {
        if let Some(http) = &args.http_addr
            && !(http.starts_with("127.") || http.starts_with("localhost"))
        {
            bail!("image-soak only targets services on this machine (loopback addresses)");
        }
        let pid = args.pid.context("--hostile needs --pid")?;
        return hostile::run(
            channel,
            args.addr.clone(),
            args.http_addr.clone(),
            pid,
            &args.attacks,
        )
        .await;
    }
    let client = ImageServiceClient::new(channel);
    let rss_start = args.pid.and_then(rss_kib);
    let stats = Arc::new(Mutex::new(Stats::default()));
    let live: Live = Arc::new(Mutex::new(HashMap::new()));
    let slots = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let started = Instant::now();
    let mut ticker =
        tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1))));
    let mut seed = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    while started.elapsed() < args.duration {
        ticker.tick().await;
        let permit = slots.clone().acquire_owned().await?;
        seed += 1;
        let op = match rand::rng().random_range(0..100) {
            // As many deletes as uploads: the catalogue stays about the same
            // size, so memory that keeps growing would be a leak.
            0..25 => Op::Upload,
            25..40 => Op::Get,
            40..55 => Op::List,
            55..75 => Op::Download,
            _ => Op::Delete,
        };
        let user = format!("soak-user-{}", seed as usize % args.users.max(1));
        let (mut client, stats, live) = (client.clone(), stats.clone(), live.clone());
        tasks.spawn(async move {
            let begun = Instant::now();
            let result = run_op(&mut client, op, &user, seed, &live).await;
            let outcome = match result {
                Ok(()) => "OK".to_owned(),
                Err(status) => format!("{:?}", status.code()),
            };
            let mut stats = stats.lock().expect("lock");
            stats.latencies.entry(op).or_default().push(begun.elapsed());
            *stats.outcomes.entry((op, outcome)).or_default() += 1;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let rss_end = args.pid.and_then(rss_kib);

    // Every image that should exist re-reads with its sha256.
    let survivors: Vec<(String, (String, String))> = live.lock().expect("lock").drain().collect();
    let mut verified = 0;
    let mut broken = Vec::new();
    for (id, (owner, sha)) in &survivors {
        let mut client = client.clone();
        let request = pb::DownloadImageRequest {
            image_id: id.clone(),
            ..Default::default()
        };
        let mut hasher = Sha256::new();
        let mut ok = true;
        match client.download_image(as_user(owner, request)).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                while let Some(message) = stream.next().await {
                    match message {
                        Ok(message) => hasher.update(&message.chunk),
                        Err(_) => ok = false,
                    }
                }
            }
            Err(_) => ok = false,
        }
        if ok && hex::encode(hasher.finalize()) == *sha {
            verified += 1;
        } else {
            broken.push(id.clone());
        }
    }

    let stats = stats.lock().expect("lock");
    let total: u64 = stats.outcomes.values().sum();
    println!(
        "image-soak: {total} operations in {:.0?} ({:.1}/s), {} concurrent, {} users",
        elapsed,
        total as f64 / elapsed.as_secs_f64(),
        args.concurrency,
        args.users
    );
    println!(
        "{:<10} {:>8} {:>10} {:>10}  outcomes",
        "operation", "count", "p50", "p99"
    );
    let mut unexpected = 0;
    for op in [Op::Upload, Op::Get, Op::List, Op::Download, Op::Delete] {
        let mut latencies = stats.latencies.get(&op).cloned().unwrap_or_default();
        latencies.sort();
        let outcomes: Vec<String> = stats
            .outcomes
            .iter()
            .filter(|((o, _), _)| *o == op)
            .map(|((_, code), n)| {
                if code != "OK" {
                    unexpected += n;
                }
                format!("{code}={n}")
            })
            .collect();
        println!(
            "{:<10} {:>8} {:>10.1?} {:>10.1?}  {}",
            format!("{op:?}"),
            latencies.len(),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            outcomes.join(" ")
        );
    }
    match (rss_start, rss_end) {
        (Some(start), Some(end)) => println!(
            "service RSS: {} MiB at start, {} MiB at end",
            start / 1024,
            end / 1024
        ),
        _ => println!("service RSS: not measured (pass --pid)"),
    }
    println!(
        "verified {verified} surviving image(s) by sha256; {} broken",
        broken.len()
    );
    println!("unexpected errors: {unexpected}");
    if unexpected > 0 || !broken.is_empty() {
        bail!("the soak found errors");
    }
    Ok(())
}
