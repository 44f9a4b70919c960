//! image-soak: mixed traffic against a running image-service for a bounded
//! time at a bounded rate, then a check of every image that should exist.
//! Reports operations, errors by status code, latency percentiles of the
//! operations that ran, load the service shed (RESOURCE_EXHAUSTED,
//! UNAVAILABLE) with its rate, and the memory of the process listening on
//! the address at start and end.
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
use image_service::testkit::stats::percentile;
use image_service::testkit::{as_user, process, upload_messages};
use rand::Rng;
use sha2::{Digest, Sha256};
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
    /// gRPC connections the operations are spread over (default: one per
    /// 64 in flight, as a service's callers come from many replicas).
    #[arg(long)]
    connections: Option<usize>,
    /// Distinct users.
    #[arg(long, default_value_t = 8)]
    users: usize,
    /// The service's process id, to report its memory (VmRSS). Default:
    /// the process listening on --addr's port; a pid that is not listening
    /// there (say, `cargo run`'s) is replaced by the one that is.
    #[arg(long)]
    pid: Option<u32>,
    /// Instead of mixed traffic, run each attack of a hostile caller in
    /// turn and report what it cost the service (needs --pid) and what a
    /// well-behaved caller saw meanwhile.
    #[arg(long)]
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

/// What became of one operation.
enum Outcome {
    /// It ran and succeeded: timed.
    Done,
    /// There was nothing to act on (no image yet): not timed.
    Skipped,
    /// The service shed it (RESOURCE_EXHAUSTED, UNAVAILABLE): counted and
    /// timed apart, since a refusal is fast or waited out a queue.
    Shed(tonic::Code),
    /// Anything else: an unexpected error.
    Failed(tonic::Code),
}

#[derive(Default)]
struct Stats {
    /// Latencies of the operations that ran and succeeded.
    latencies: HashMap<Op, Vec<Duration>>,
    /// Latencies of the refusals.
    shed_latencies: HashMap<Op, Vec<Duration>>,
    outcomes: BTreeMap<(Op, String), u64>,
    skipped: BTreeMap<Op, u64>,
}

/// Images that exist: id → (owner, sha256).
type Live = Arc<Mutex<HashMap<String, (String, String)>>>;

fn rss_kib(pid: u32) -> Option<u64> {
    process::status_kib(&pid.to_string(), "VmRSS:")
}

/// The process listening on TCP `port` on this machine: the socket's inode
/// from /proc/net/tcp{,6}, then the process holding it.
fn listening_pid(port: u16) -> Option<u32> {
    let inodes: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields.get(1)?.rsplit(':').next()?;
                    let listening = fields.get(3)? == &"0A";
                    (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                        .then(|| fields.get(9).map(|inode| format!("socket:[{inode}]")))?
                })
                .collect::<Vec<_>>()
        })
        .collect();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .any(|link| {
                    inodes
                        .iter()
                        .any(|inode| link.as_os_str() == inode.as_str())
                })
                .then_some(pid)
        })
}

/// The service's process: the one listening on `port`, which `given`
/// must be when it is named (a `cargo run` wrapper's pid is not).
fn service_pid(given: Option<u32>, port: u16) -> Option<u32> {
    let listening = listening_pid(port);
    match (given, listening) {
        (Some(given), Some(listening)) if given != listening => {
            eprintln!(
                "image-soak: pid {given} does not listen on port {port}; measuring pid {listening}, which does"
            );
            Some(listening)
        }
        (given, listening) => listening.or(given),
    }
}

/// A process's name, for the report.
fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
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
) -> Result<bool, tonic::Status> {
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
            let messages = upload_messages(spec, bytes.into(), 64 * 1024);
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
            let Some((id, _, _)) = pick(live) else {
                return Ok(false);
            };
            client
                .get_image(as_user(user, pb::GetImageRequest { image_id: id }))
                .await
                .or_else(raced)?;
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
            let Some((id, _, _)) = pick(live) else {
                return Ok(false);
            };
            let request = pb::DownloadImageRequest {
                image_id: id,
                ..Default::default()
            };
            match client.download_image(as_user(user, request)).await {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    while let Some(message) = stream.next().await {
                        if let Err(status) = message {
                            return raced::<()>(status).map(|_| true);
                        }
                    }
                }
                Err(status) => return raced::<()>(status).map(|_| true),
            }
        }
        Op::Delete => {
            let Some((id, owner, _)) = pick(live) else {
                return Ok(false);
            };
            live.lock().expect("lock").remove(&id);
            client
                .delete_image(as_user(&owner, pb::DeleteImageRequest { image_id: id }))
                .await
                .or_else(raced)?;
        }
    }
    Ok(true)
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let uri: tonic::transport::Uri = args.addr.parse().context("--addr")?;
    let host = uri.host().unwrap_or_default();
    if !(host == "localhost" || host.starts_with("127.") || host == "[::1]" || host == "::1") {
        bail!("image-soak only targets services on this machine (loopback addresses)");
    }
    let endpoint = Channel::from_shared(args.addr.clone())?;
    let channel = endpoint.connect().await.context("connecting")?;
    let port = uri.port_u16().unwrap_or(80);
    let pid = service_pid(args.pid, port);
    if args.hostile {
        if let Some(http) = &args.http_addr
            && !(http.starts_with("127.") || http.starts_with("localhost"))
        {
            bail!("image-soak only targets services on this machine (loopback addresses)");
        }
        let pid = pid.context("--hostile measures the service: pass --pid")?;
        return hostile::run(
            channel,
            args.addr.clone(),
            args.http_addr.clone(),
            pid,
            &args.attacks,
        )
        .await;
    }
    let connections = args
        .connections
        .unwrap_or_else(|| args.concurrency.div_ceil(64))
        .max(1);
    let mut clients = vec![ImageServiceClient::new(channel)];
    for _ in 1..connections {
        clients.push(ImageServiceClient::new(
            endpoint.connect().await.context("connecting")?,
        ));
    }
    let rss_start = pid.and_then(rss_kib);
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
        let client = clients[seed as usize % clients.len()].clone();
        let (mut client, stats, live) = (client, stats.clone(), live.clone());
        tasks.spawn(async move {
            let begun = Instant::now();
            let outcome = match run_op(&mut client, op, &user, seed, &live).await {
                Ok(true) => Outcome::Done,
                Ok(false) => Outcome::Skipped,
                Err(status) => match status.code() {
                    code @ (tonic::Code::ResourceExhausted | tonic::Code::Unavailable) => {
                        Outcome::Shed(code)
                    }
                    code => Outcome::Failed(code),
                },
            };
            let took = begun.elapsed();
            let mut stats = stats.lock().expect("lock");
            match outcome {
                Outcome::Done => {
                    stats.latencies.entry(op).or_default().push(took);
                    *stats.outcomes.entry((op, "OK".into())).or_default() += 1;
                }
                Outcome::Skipped => *stats.skipped.entry(op).or_default() += 1,
                Outcome::Shed(code) => {
                    stats.shed_latencies.entry(op).or_default().push(took);
                    *stats.outcomes.entry((op, format!("{code:?}"))).or_default() += 1;
                }
                Outcome::Failed(code) => {
                    *stats.outcomes.entry((op, format!("{code:?}"))).or_default() += 1;
                }
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let rss_end = pid.and_then(rss_kib);

    // Every image that should exist re-reads with its sha256.
    let survivors: Vec<(String, (String, String))> = live.lock().expect("lock").drain().collect();
    let mut verified = 0;
    let mut broken = Vec::new();
    for (id, (owner, sha)) in &survivors {
        let mut client = clients[0].clone();
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
    let skipped: u64 = stats.skipped.values().sum();
    let seconds = elapsed.as_secs_f64();
    println!(
        "image-soak: {total} operations in {elapsed:.0?} ({:.1}/s) over {connections} connection(s), \
         {} concurrent, {} users; {skipped} skipped for want of an image (not counted)",
        total as f64 / seconds,
        args.concurrency,
        args.users
    );
    println!(
        "{:<10} {:>8} {:>8} {:>10} {:>10} {:>8} {:>10}  outcomes",
        "operation", "done", "done/s", "p50", "p99", "shed/s", "shed p50"
    );
    let is_shed = |code: &str| code == "ResourceExhausted" || code == "Unavailable";
    let (mut unexpected, mut shed) = (0, 0);
    for op in [Op::Upload, Op::Get, Op::List, Op::Download, Op::Delete] {
        let mut latencies = stats.latencies.get(&op).cloned().unwrap_or_default();
        latencies.sort();
        let mut refused = stats.shed_latencies.get(&op).cloned().unwrap_or_default();
        refused.sort();
        let outcomes: Vec<String> = stats
            .outcomes
            .iter()
            .filter(|((o, _), _)| *o == op)
            .map(|((_, code), n)| {
                if is_shed(code) {
                    shed += n;
                } else if code != "OK" {
                    unexpected += n;
                }
                format!("{code}={n}")
            })
            .collect();
        println!(
            "{:<10} {:>8} {:>8.1} {:>10.1?} {:>10.1?} {:>8.1} {:>10.1?}  {}",
            format!("{op:?}"),
            latencies.len(),
            latencies.len() as f64 / seconds,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            refused.len() as f64 / seconds,
            percentile(&refused, 0.5),
            outcomes.join(" ")
        );
    }
    println!(
        "shed by the service (RESOURCE_EXHAUSTED, UNAVAILABLE): {shed} ({:.1}/s, {:.1} % of operations)",
        shed as f64 / seconds,
        100.0 * shed as f64 / total.max(1) as f64
    );
    match (pid, rss_start, rss_end) {
        (Some(pid), Some(start), Some(end)) => println!(
            "service RSS (pid {pid}, {}): {:.1} MiB at start, {:.1} MiB at end",
            process_name(pid),
            start as f64 / 1024.0,
            end as f64 / 1024.0
        ),
        _ => println!(
            "service RSS: not measured (no process of this machine listens on port {port})"
        ),
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
