//! Wiring: storage adapters into the domain, the domain into the gRPC and
//! HTTP listeners, and the server's lifecycle (ready, drain, stop).
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::{AuthMode, Backend, Config};
use crate::domain::ports::{BlobStore, MetadataStore, OpenSessions, SessionQuota};
use crate::domain::signing::SigningKey;
use crate::domain::upload::PaceLimits;
use crate::domain::upload::resumable::SessionLimits;
use crate::domain::{Images, Limits};
use crate::grpc::ImageApi;
use crate::grpc::auth::Authenticator;
use crate::grpc::service::CallLimits;
use crate::listener::{self, AcceptSettings, Idleness, Shedding};
use crate::media::content::ContentLimits;
use crate::media::variants::RenderLimits;
use crate::pb;
use crate::pb::image_service_server::ImageServiceServer;
use crate::storage::aws::{self, AwsSettings};
use crate::storage::embedded::{self, EmbeddedBlobStore, urls::SignedUrls};
use crate::storage::instrumented::{InstrumentedBlobs, InstrumentedMetadata};
use crate::tls::{Tls, TlsFiles};

/// Largest gRPC message accepted: upload chunks up to 4 MiB plus framing.
const MAX_MESSAGE_BYTES: usize = crate::domain::upload::MAX_MESSAGE_BYTES as usize;

/// A built server, listening but not yet serving.
pub struct Application {
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    /// `/metrics` apart from the HTTP listener (`--metrics-addr`).
    metrics_listener: Option<TcpListener>,
    images: Images,
    auth: Arc<Authenticator>,
    transport: TransportLimits,
    /// TLS of the gRPC and HTTP listeners, when configured.
    tls: Option<(Arc<Tls>, Arc<Tls>)>,
    http_blobs: Option<Arc<EmbeddedBlobStore>>,
    backend: Backend,
    shutdown_timeout: Duration,
    health_check_interval: Duration,
    repair_interval: Duration,
    repair_grace: Duration,
}

impl Application {
    /// Binds the listeners (port 0 picks a free port) and opens the backend.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.check_identity().map_err(anyhow::Error::msg)?;
        config
            .memory_per_user(memory_budget(&config))
            .map_err(anyhow::Error::msg)?;
        let auth = Arc::new(Authenticator::from_config(&config).await?);
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let files = TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: config.tls_client_ca.clone(),
                };
                Some((
                    Tls::load(files.clone(), crate::tls::GRPC_ALPN)?,
                    Tls::load(files, crate::tls::HTTP_ALPN)?,
                ))
            }
            _ => None,
        };
        warn_about_exposure(&config, tls.is_some());
        let grpc_listener = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("binding the gRPC address {}", config.grpc_addr))?;
        let http_listener = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("binding the HTTP address {}", config.http_addr))?;
        let metrics_listener = match config.metrics_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics address {addr}"))?,
            ),
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let http_base = config.http_public_url.clone().unwrap_or_else(|| {
            format!(
                "{scheme}://{}",
                http_listener.local_addr().expect("bound listener")
            )
        });

        let limits = limits(&config);
        let OpenedBackend { images, http_blobs } = open_backend(&config, http_base, limits).await?;
        Ok(Self {
            grpc_listener,
            http_listener,
            metrics_listener,
            images,
            auth,
            transport: TransportLimits::from_config(&config),
            tls,
            http_blobs,
            backend: config.backend,
            shutdown_timeout: config.shutdown_timeout,
            health_check_interval: config.health_check_interval,
            repair_interval: config.repair_interval,
            repair_grace: config.repair_grace,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener.local_addr().expect("bound listener")
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_listener.local_addr().expect("bound listener")
    }

    /// The metrics listener's address, when `/metrics` has its own.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .map(|listener| listener.local_addr().expect("bound listener"))
    }

    /// Serves until `shutdown` completes; then reports NOT_SERVING, stops
    /// accepting, lets in-flight calls finish up to the shutdown timeout,
    /// and returns.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let grpc_addr = self.grpc_addr();
        let metrics_addr = self.metrics_addr();
        let http_addr = self.http_addr();
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<ImageServiceServer<ImageApi>>().await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        let repairs = (!self.repair_interval.is_zero()).then(|| {
            tokio::spawn(
                self.images
                    .clone()
                    .repair_periodically(self.repair_interval, self.repair_grace),
            )
        });
        let metrics_upkeep = tokio::spawn(crate::telemetry::upkeep_periodically());
        let backend_watch = tokio::spawn(watch_backends(
            self.images.clone(),
            health.clone(),
            self.health_check_interval,
        ));
        // The embedded listener refuses parts of upload sessions that are
        // no longer open: the domain's session records answer it.
        let open_sessions: Arc<dyn OpenSessions> = Arc::new(self.images.uploads().clone());
        let limits = self.transport;
        let api = ImageServiceServer::new(ImageApi::new(
            self.images,
            self.auth,
            CallLimits {
                max_in_flight: limits.max_in_flight_calls,
                download_stall_timeout: limits.download_stall_timeout,
            },
        ))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let certificate_watch = self.tls.clone().map(|(grpc, http)| {
            tokio::spawn(async move {
                tokio::join!(
                    grpc.watch(CERTIFICATE_CHECK_INTERVAL),
                    http.watch(CERTIFICATE_CHECK_INTERVAL)
                );
            })
        });

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        // HTTP: a connection is idle when it moves no byte; its writes
        // stall out.
        let http_shedding = Shedding {
            idleness: Idleness::NoBytes,
            stall_timeout: Some(limits.http_stall_timeout),
            idle_timeout: None,
        };
        let accept = |listener: &'static str, tls: Option<Arc<Tls>>| AcceptSettings {
            listener,
            max_connections: limits.max_connections,
            max_per_peer: 0,
            handshake_timeout: limits.handshake_timeout,
            tls,
            shedding: http_shedding,
        };
        let (grpc_tls, http_tls) = match self.tls {
            Some((grpc, http)) => (Some(grpc), Some(http)),
            None => (None, None),
        };
        let grpc_incoming = listener::incoming(
            self.grpc_listener,
            AcceptSettings {
                max_per_peer: limits.grpc_max_connections_per_peer,
                // gRPC: a connection is idle when it has no call in flight
                // (pings are traffic, not work; a long upload stream is
                // work); calls have deadlines of their own and downloads
                // the download stall timeout.
                shedding: Shedding {
                    idleness: Idleness::NoCalls,
                    stall_timeout: None,
                    idle_timeout: limits.grpc_idle_timeout,
                },
                ..accept("grpc", grpc_tls)
            },
            stop_rx.clone(),
        );
        let http_incoming = listener::incoming(
            self.http_listener,
            AcceptSettings {
                max_per_peer: limits.http_max_connections_per_peer,
                ..accept("http", http_tls)
            },
            stop_rx.clone(),
        );
        let metrics = self.metrics_listener.map(|metrics_listener| {
            let incoming = listener::incoming(
                metrics_listener,
                AcceptSettings {
                    // A scraper or two, and an operator's curl.
                    max_connections: METRICS_MAX_CONNECTIONS,
                    ..accept("metrics", None)
                },
                stop_rx.clone(),
            );
            tokio::spawn(listener::serve_http(
                incoming,
                crate::http::metrics_router(),
                limits.handshake_timeout,
                stop_rx.clone(),
            ))
        });
        let grpc = tonic::transport::Server::builder()
            // Responses hold their memory until sent; one not read for the
            // stall timeout is dropped, ending its count below.
            .layer(crate::grpc::response_memory::HoldResponses {
                stall_timeout: limits.download_stall_timeout,
            })
            // Counts each connection's calls in flight: the listener sheds
            // only connections without one.
            .layer(listener::CountCalls)
            // Bytes a connection's callers may send ahead of what the
            // service has read, and each call's share of them. The streams
            // of one connection together can never fill its window: an
            // upload waiting for admission holds at most its share unread,
            // so it cannot starve the admitted uploads of the same
            // connection (a gateway's, carrying many users).
            .initial_stream_window_size(Some(stream_window(limits.max_concurrent_streams)))
            .initial_connection_window_size(Some(CONNECTION_WINDOW))
            // Without it hyper allows any number of streams per connection:
            // one connection could open thousands of calls.
            .max_concurrent_streams(Some(limits.max_concurrent_streams))
            // Pings reap peers that went away without closing (a phone that
            // lost its network): 30 s between pings, 10 s for the answer.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            // Bounds the headers one call may send (16 KiB is generous for
            // a bearer token and a few ids).
            .http2_max_header_list_size(Some(16 * 1024))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(api)
            .serve_with_incoming_shutdown(grpc_incoming, stopped(stop_rx.clone()));
        let http = listener::serve_http(
            http_incoming,
            crate::http::router(
                self.http_blobs
                    .map(|blobs| embedded::downloads::routes(blobs, open_sessions)),
                metrics.is_none(),
                crate::http::BodyLimits {
                    timeout: limits.http_body_timeout,
                    min_rate: limits.http_min_body_rate,
                    min_rate_grace: limits.http_min_body_rate_grace,
                },
            ),
            limits.handshake_timeout,
            stop_rx,
        );
        let mut grpc = tokio::spawn(grpc);
        let mut http = tokio::spawn(async move {
            http.await;
            Ok::<(), std::convert::Infallible>(())
        });

        tracing::info!(grpc = %grpc_addr, http = %http_addr, metrics = ?metrics_addr, backend = ?self.backend, "image-service ready");
        tokio::select! {
            () = shutdown => {}
            result = &mut grpc => return Err(anyhow::anyhow!("the gRPC server stopped: {result:?}")),
            result = &mut http => return Err(anyhow::anyhow!("the HTTP server stopped: {result:?}")),
        }

        tracing::info!(timeout = ?self.shutdown_timeout, "shutting down: draining in-flight calls");
        backend_watch.abort();
        metrics_upkeep.abort();
        if let Some(watch) = certificate_watch {
            watch.abort();
        }
        if let Some(repairs) = repairs {
            repairs.abort();
        }
        health
            .set_not_serving::<ImageServiceServer<ImageApi>>()
            .await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(self.shutdown_timeout, async {
            let _ = (&mut grpc).await;
            let _ = (&mut http).await;
        })
        .await;
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        if drained.is_err() {
            tracing::warn!("shutdown timeout reached; closing the remaining calls");
            grpc.abort();
            http.abort();
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// HTTP/2 flow-control window of a gRPC connection: the most its callers
/// may send that the service has not read yet.
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Each stream's window: an equal share of the connection's (at least
/// 64 KiB, at most 4 MiB), so that all the streams a connection may have
/// open, each sending ahead as far as it may, still leave room.
fn stream_window(max_concurrent_streams: u32) -> u32 {
    (CONNECTION_WINDOW / max_concurrent_streams.max(1)).clamp(64 * 1024, 4 * 1024 * 1024)
}

/// Connections the metrics listener keeps open at once.
const METRICS_MAX_CONNECTIONS: usize = 16;

/// How often the TLS files are checked for a rotated certificate.
const CERTIFICATE_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// What the listeners allow each connection and call.
#[derive(Clone, Copy, Debug)]
struct TransportLimits {
    max_concurrent_streams: u32,
    max_in_flight_calls: usize,
    max_connections: usize,
    handshake_timeout: Duration,
    download_stall_timeout: Duration,
    http_stall_timeout: Duration,
    http_body_timeout: Duration,
    http_min_body_rate: u64,
    http_min_body_rate_grace: Duration,
    http_max_connections_per_peer: usize,
    grpc_max_connections_per_peer: usize,
    /// `None`: connections without a call stay open.
    grpc_idle_timeout: Option<Duration>,
}

impl TransportLimits {
    fn from_config(config: &Config) -> Self {
        Self {
            max_concurrent_streams: config.max_concurrent_streams.max(1),
            max_in_flight_calls: config.max_in_flight_calls.max(1),
            max_connections: config.max_connections.max(1),
            handshake_timeout: config.handshake_timeout,
            download_stall_timeout: config.download_stall_timeout,
            http_stall_timeout: config.http_stall_timeout,
            http_body_timeout: config.http_body_timeout,
            http_min_body_rate: config.http_min_body_rate,
            http_min_body_rate_grace: config.http_min_body_rate_grace,
            http_max_connections_per_peer: config.http_max_connections_per_peer,
            grpc_max_connections_per_peer: config.grpc_max_connections_per_peer,
            grpc_idle_timeout: (!config.grpc_idle_timeout.is_zero())
                .then_some(config.grpc_idle_timeout),
        }
    }
}

/// Says so when `x-user-id` can be sent by anyone who reaches the port.
fn warn_about_exposure(config: &Config, tls: bool) {
    if config.auth != AuthMode::TrustedHeader || !config.trusted_peers.is_empty() {
        return;
    }
    if !config.grpc_addr.ip().is_loopback() {
        tracing::warn!(
            addr = %config.grpc_addr,
            tls,
            "trusted-header mode without --trusted-peers: anyone who can reach this address \
             can act as any user with x-user-id; use mutual TLS with --trusted-peers, a \
             NetworkPolicy that admits only the gateway, or --auth jwt"
        );
    }
}

/// The use cases over the configured backend.
struct OpenedBackend {
    images: Images,
    /// The embedded backend's blob store, whose presigned URLs the HTTP
    /// listener serves.
    http_blobs: Option<Arc<EmbeddedBlobStore>>,
}

/// Opens the configured backend, with metrics and trace spans around both
/// stores.
async fn open_backend(
    config: &Config,
    http_base: String,
    limits: Limits,
) -> anyhow::Result<OpenedBackend> {
    let (blobs, metadata, key, http_blobs): (Arc<dyn BlobStore>, Arc<dyn MetadataStore>, _, _) =
        match config.backend {
            Backend::Embedded => {
                let key = match &config.signing_key {
                    Some(secret) => configured_key(secret)?,
                    None => embedded::load_or_create_signing_key(&config.data_dir)
                        .context("reading the signing key in the data directory")?,
                };
                let (blobs, metadata) =
                    embedded::open(&config.data_dir, SignedUrls::new(key.clone(), http_base))
                        .with_context(|| {
                            format!("opening the data directory {}", config.data_dir.display())
                        })?;
                let blobs = Arc::new(blobs);
                (blobs.clone(), Arc::new(metadata), key, Some(blobs))
            }
            Backend::Aws => {
                let key = match &config.signing_key {
                    Some(secret) => configured_key(secret)?,
                    None => {
                        tracing::warn!(
                            "no --signing-key: page tokens are signed with a key of this process only; \
                         set IMAGE_SERVICE_SIGNING_KEY when running more than one replica"
                        );
                        SigningKey::generate()
                    }
                };
                let (blobs, metadata) = aws::connect(&aws_settings(config)).await;
                (Arc::new(blobs), Arc::new(metadata), key, None)
            }
        };
    crate::telemetry::metrics();
    let (blob_system, metadata_system) = match config.backend {
        Backend::Embedded => ("files", "redb"),
        Backend::Aws => ("s3", "dynamodb"),
    };
    let images = Images::new(
        Arc::new(InstrumentedBlobs(blobs, blob_system)),
        Arc::new(InstrumentedMetadata(metadata, metadata_system)),
        key,
        limits,
    );
    Ok(OpenedBackend { images, http_blobs })
}

fn limits(config: &Config) -> Limits {
    Limits {
        content: ContentLimits {
            max_bytes: config.max_image_bytes,
            max_pixels: config.max_image_pixels,
        },
        max_url_expiry: config.download_url_max_expiry,
        url_window: config.download_url_window,
        max_concurrent_uploads: config.max_concurrent_uploads,
        upload_slot_wait: config.upload_slot_wait,
        max_uploads_per_user: config.max_uploads_per_user,
        pace: PaceLimits {
            idle_timeout: config.upload_idle_timeout,
            deadline: config.upload_deadline,
            free_messages: FREE_UPLOAD_MESSAGES,
            bytes_per_message: config.upload_bytes_per_message,
        },
        memory_budget: memory_budget(config),
        // Checked at start (Server::build); repair holds no user's memory.
        max_memory_per_user: config
            .memory_per_user(memory_budget(config))
            .unwrap_or(u64::MAX),
        memory_wait: config.memory_wait,
        max_page_bytes: usize::try_from(config.max_page_bytes).unwrap_or(usize::MAX),
        keep_metadata: config.keep_metadata,
        variants: config.variants,
        render: RenderLimits {
            max_concurrent: config.max_concurrent_renders.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
            }),
            max_memory: config.max_render_memory,
        },
        sessions: SessionLimits {
            ttl: config.upload_session_ttl,
            segment_bytes: config.upload_session_segment_size,
            max_parts: config.max_upload_parts,
            url_expiry: config.upload_url_expiry,
            per_user: SessionQuota {
                max_open: config.max_open_sessions_per_user,
                max_staged_bytes: config.max_staged_bytes_per_user,
            },
        },
    }
}

/// Messages every upload may send before `--upload-bytes-per-message`
/// applies: room for a spec and small chunks of a small image.
const FREE_UPLOAD_MESSAGES: u64 = 1024;
/// The share of the container's memory limit the budget takes by default:
/// the rest is the process's own (code, the runtime, connections, the
/// allocator's slack).
const MEMORY_BUDGET_SHARE: f64 = 0.6;
/// The budget when no container limit is found (a developer's machine, a
/// VM): enough for one render at the pixel limit or dozens of uploads, and
/// small enough that no caller takes the machine's memory.
const FALLBACK_MEMORY_BUDGET: u64 = 512 * 1024 * 1024;

fn memory_budget(config: &Config) -> u64 {
    config.memory_budget.unwrap_or_else(default_memory_budget)
}

/// `--memory-budget` by default: a share of the cgroup memory limit (v2,
/// else v1) when there is one, so a pod's budget follows its manifest.
pub fn default_memory_budget() -> u64 {
    let limit = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|path| std::fs::read_to_string(path).ok())
    .filter_map(|text| text.trim().parse::<u64>().ok())
    // cgroup v1 says "no limit" with a number near i64::MAX.
    .find(|&limit| limit < 1 << 60);
    match limit {
        Some(limit) => (limit as f64 * MEMORY_BUDGET_SHARE) as u64,
        None => FALLBACK_MEMORY_BUDGET,
    }
}

/// `image-service repair`: one repair pass, printed.
pub async fn run_repair(
    config: &Config,
    grace: Duration,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    let OpenedBackend { images, .. } =
        open_backend(config, "http://unused".into(), limits(config)).await?;
    let report = images
        .repair(grace, dry_run)
        .await
        .map_err(|e| anyhow::anyhow!(crate::telemetry::error_chain(&e)))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    println!(
        "repair pass (grace {}): {verb}",
        humantime::format_duration(grace)
    );
    println!(
        "  {} object(s) without metadata",
        report.orphan_objects.len()
    );
    for key in &report.orphan_objects {
        println!("    {key}");
    }
    match &report.unfinished_writes {
        Some(keys) => {
            println!("  {} unfinished upload(s)", keys.len());
            for key in keys {
                println!("    {key}");
            }
        }
        None => println!(
            "  unfinished uploads: this store cannot list them (a lifecycle rule should expire them)"
        ),
    }
    println!(
        "  {} index entr(y/ies) without their image",
        report.stale_index_entries
    );
    Ok(())
}

/// Probes both stores every `interval`; the image service is NOT_SERVING
/// while either does not answer, so load balancers and Kubernetes stop
/// routing to a replica that cannot work, and SERVING again when they do.
async fn watch_backends(images: Images, health: HealthReporter, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = interval.clamp(Duration::from_millis(500), Duration::from_secs(5));
    let mut serving = true;
    loop {
        ticker.tick().await;
        match (images.check_health(timeout).await, serving) {
            (Err(error), true) => {
                let cause = std::error::Error::source(&error)
                    .map(crate::telemetry::error_chain)
                    .unwrap_or_else(|| error.to_string());
                tracing::warn!(error = %cause, "a storage backend is unreachable: reporting NOT_SERVING");
                health
                    .set_not_serving::<ImageServiceServer<ImageApi>>()
                    .await;
                serving = false;
            }
            (Ok(()), false) => {
                tracing::info!("storage backends reachable again: reporting SERVING");
                health.set_serving::<ImageServiceServer<ImageApi>>().await;
                serving = true;
            }
            _ => {}
        }
    }
}

/// The aws backend's settings, from the configuration (adapters never read
/// `Config` themselves).
pub fn aws_settings(config: &Config) -> AwsSettings {
    use crate::config::{PayloadSigning, S3Checksums};
    AwsSettings {
        bucket: config.s3_bucket.clone(),
        s3_endpoint: config.s3_endpoint.clone(),
        s3_public_endpoint: config.s3_public_endpoint.clone(),
        table: config.dynamodb_table.clone(),
        dynamodb_endpoint: config.dynamodb_endpoint.clone(),
        region: config.aws_region.clone(),
        part_size: config.s3_part_size,
        parts_in_flight: usize::from(config.s3_parts_in_flight),
        checksums: match config.s3_checksums {
            S3Checksums::WhenSupported => aws::S3Checksums::WhenSupported,
            S3Checksums::WhenRequired => aws::S3Checksums::WhenRequired,
        },
        payload_signing: match config.s3_payload_signing {
            PayloadSigning::Auto => aws::PayloadSigning::Auto,
            PayloadSigning::Signed => aws::PayloadSigning::Signed,
            PayloadSigning::Unsigned => aws::PayloadSigning::Unsigned,
        },
        max_object_bytes: config.max_image_bytes,
        time_shards: config.dynamodb_time_shards,
    }
}

fn configured_key(secret: &str) -> anyhow::Result<SigningKey> {
    SigningKey::from_secret(secret.as_bytes()).map_err(|e| anyhow::anyhow!("--signing-key: {e}"))
}

/// `image-service init`: creates what the configured backend needs.
pub async fn init_backend(config: &Config) -> anyhow::Result<()> {
    match config.backend {
        Backend::Embedded => {
            embedded::load_or_create_signing_key(&config.data_dir)?;
            let urls = SignedUrls::new(SigningKey::generate(), "http://unused");
            embedded::open(&config.data_dir, urls)?;
            println!("embedded backend ready in {}", config.data_dir.display());
            Ok(())
        }
        Backend::Aws => {
            let settings = aws_settings(config);
            let shards = aws::init(&settings).await.with_context(|| {
                format!(
                    "creating bucket {} and table {}",
                    settings.bucket, settings.table
                )
            })?;
            println!(
                "aws backend ready: bucket {}, table {} (by_time index in {shards} shards)",
                settings.bucket, settings.table
            );
            Ok(())
        }
    }
}

/// `image-service migrate`: see [`crate::migrate`].
pub async fn run_migrate(
    config: &Config,
    from: Backend,
    to: Backend,
    dry_run: bool,
    checkpoint: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};

    use crate::migrate::{Side, Summary};

    let name = |backend: Backend| match backend {
        Backend::Embedded => "embedded",
        Backend::Aws => "aws",
    };
    if from == to {
        anyhow::bail!(
            "--from and --to are both {}: nothing to migrate",
            name(from)
        );
    }
    let open = |backend: Backend, destination: bool| async move {
        anyhow::Ok(match backend {
            Backend::Embedded => {
                let urls = SignedUrls::new(SigningKey::generate(), "http://unused");
                let (blobs, metadata) =
                    embedded::open(&config.data_dir, urls).with_context(|| {
                        format!(
                            "opening the data directory {} (is a service still using it?)",
                            config.data_dir.display()
                        )
                    })?;
                Side {
                    blobs: Arc::new(blobs),
                    metadata: Arc::new(metadata),
                }
            }
            Backend::Aws => {
                let settings = aws_settings(config);
                if destination && !dry_run {
                    aws::init(&settings).await.with_context(|| {
                        format!(
                            "creating bucket {} and table {}",
                            settings.bucket, settings.table
                        )
                    })?;
                }
                let (blobs, metadata) = aws::connect(&settings).await;
                Side {
                    blobs: Arc::new(blobs),
                    metadata: Arc::new(metadata),
                }
            }
        })
    };
    let source = open(from, false).await?;
    let destination = open(to, true).await?;
    let checkpoint = checkpoint.unwrap_or_else(|| {
        crate::migrate::default_checkpoint(&config.data_dir, name(from), name(to))
    });
    if checkpoint.exists() && !dry_run {
        eprintln!("resuming from {}", checkpoint.display());
    }

    // Ctrl-C or SIGTERM: finish the image in progress, keep the checkpoint.
    let stop = Arc::new(AtomicBool::new(false));
    let signal = shutdown_signal()?;
    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            signal.await;
            eprintln!("stopping after the image in progress…");
            stop.store(true, Ordering::Relaxed);
        })
    };
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let verb = if dry_run { "to copy" } else { "copied" };
    let describe = |s: &Summary| {
        format!(
            "{} images: {} {verb} ({:.1} MiB), {} already there, {} failed",
            s.seen,
            s.copied,
            s.bytes as f64 / 1048576.0,
            s.present,
            s.failed.len()
        )
    };
    let started = std::time::Instant::now();
    let result = crate::migrate::migrate(
        &source,
        &destination,
        &checkpoint,
        dry_run,
        &stop,
        &|summary| {
            bar.set_message(describe(summary));
            bar.tick();
        },
    )
    .await;
    bar.finish_and_clear();
    stopper.abort();
    let summary = result?;
    let elapsed = started.elapsed().as_secs_f64().max(1e-3);
    println!(
        "{} {} → {}: {}",
        if dry_run { "dry run" } else { "migration" },
        name(from),
        name(to),
        describe(&summary)
    );
    if !dry_run {
        println!(
            "this run: {} images in {elapsed:.1} s ({:.1} images/s, {:.1} MiB/s)",
            summary.run_copied,
            summary.run_copied as f64 / elapsed,
            summary.run_bytes as f64 / 1048576.0 / elapsed
        );
    }
    for (id, why) in &summary.failed {
        println!("  not copied: {id}: {why}");
    }
    if summary.interrupted {
        anyhow::bail!(
            "interrupted; run the same command again to go on from {}",
            checkpoint.display()
        );
    }
    if !summary.failed.is_empty() {
        anyhow::bail!("{} image(s) could not be copied", summary.failed.len());
    }
    Ok(())
}

/// A future that completes on Ctrl-C (SIGINT) or SIGTERM. The handlers are
/// installed by this call, not on the first poll: a SIGTERM that arrives
/// once the server says it is ready must drain it, not kill the process.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
