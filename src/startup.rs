//! The server's lifecycle: the configured backend ([`crate::backend`]) behind
//! the gRPC and HTTP listeners; ready, health, drain, stop. The other
//! subcommands live in [`crate::commands`].
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::backend::{OpenedBackend, open_images};
use crate::config::{AuthMode, AuthSettings, Backend, Config, ConnectionSettings};
use crate::domain::Images;
use crate::domain::erasure::Erasures;
use crate::domain::ports::{OpenSessions, PublicImages};
use crate::domain::watch::Watches;
use crate::grpc::auth::Authenticator;
use crate::grpc::request_memory::{HoldRequests, RequestLimits};
use crate::grpc::response_memory::{
    HoldResponses, MAX_REFLECTION_REQUEST, REFLECTION_STREAMS_PER_CONNECTION, ReflectionLimits,
    reflection_reserve,
};
use crate::grpc::service::CallLimits;
use crate::grpc::{ImageApi, ModerationApi};
use crate::listener::{self, AcceptSettings, Idleness, Shedding};
use crate::pb;
use crate::pb::image_service_server::ImageServiceServer;
use crate::pb::moderation_service_server::ModerationServiceServer;
use crate::storage::embedded::{self, EmbeddedBlobStore};
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
    watches: Watches,
    auth: Arc<Authenticator>,
    transport: TransportLimits,
    /// What a request message still arriving may hold, and for how long.
    requests: RequestLimits,
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
        config.identity.check().map_err(anyhow::Error::msg)?;
        config
            .limits
            .memory_per_user()
            .map_err(anyhow::Error::msg)?;
        config.limits.variant_sizes().map_err(anyhow::Error::msg)?;
        config.limits.encodings().map_err(anyhow::Error::msg)?;
        config.events.check().map_err(anyhow::Error::msg)?;
        config.scan.policy().map_err(anyhow::Error::msg)?;
        if config.storage.backend == Backend::Aws
            && config.events.event_retention < crate::storage::aws::MIN_EVENT_RETENTION
        {
            anyhow::bail!(
                "--event-retention (IMAGE_SERVICE_EVENT_RETENTION) must be at least {} on the aws \
                 backend: its watchers re-read the last 5 s of the log, and cursors that old must \
                 not have expired",
                humantime::format_duration(crate::storage::aws::MIN_EVENT_RETENTION)
            );
        }
        let auth = Arc::new(Authenticator::from_settings(&config.identity).await?);
        let tls = match (&config.listeners.tls_cert, &config.listeners.tls_key) {
            (Some(cert), Some(key)) => {
                let files = TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: config.listeners.tls_client_ca.clone(),
                };
                Some((
                    Tls::load(files.clone(), crate::tls::GRPC_ALPN)?,
                    Tls::load(files, crate::tls::HTTP_ALPN)?,
                ))
            }
            _ => None,
        };
        warn_about_exposure(&config.identity, config.listeners.grpc_addr, tls.is_some());
        let grpc_listener = TcpListener::bind(config.listeners.grpc_addr)
            .await
            .with_context(|| format!("binding the gRPC address {}", config.listeners.grpc_addr))?;
        let http_listener = TcpListener::bind(config.listeners.http_addr)
            .await
            .with_context(|| format!("binding the HTTP address {}", config.listeners.http_addr))?;
        let metrics_listener = match config.listeners.metrics_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the metrics address {addr}"))?,
            ),
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let http_base = config.listeners.http_public_url.clone().unwrap_or_else(|| {
            format!(
                "{scheme}://{}",
                http_listener.local_addr().expect("bound listener")
            )
        });

        let OpenedBackend {
            images,
            watches,
            embedded_blobs: http_blobs,
        } = open_images(&config, Some(http_base)).await?;
        Ok(Self {
            grpc_listener,
            http_listener,
            metrics_listener,
            images,
            watches,
            auth,
            transport: TransportLimits::from_settings(&config.connections),
            requests: RequestLimits {
                per_connection: config
                    .connections
                    .grpc_max_partial_request_bytes_per_connection,
                wait: config.limits.memory_wait,
                message_timeout: config.limits.upload_idle_timeout,
                max_waiting: config.connections.grpc_max_waiting_request_messages,
            },
            tls,
            http_blobs,
            backend: config.storage.backend,
            shutdown_timeout: config.operations.shutdown_timeout,
            health_check_interval: config.operations.health_check_interval,
            repair_interval: config.operations.repair_interval,
            repair_grace: config.operations.repair_grace,
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
        // A reflection response repeats its request: requests stay small.
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?
            .max_decoding_message_size(MAX_REFLECTION_REQUEST);
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?
            .max_decoding_message_size(MAX_REFLECTION_REQUEST);
        // Streams of reflection reserve what they may hold from their own
        // pool: the largest file served is within the largest set.
        let reflection_limits = ReflectionLimits {
            pool: Arc::new(Semaphore::new(
                usize::try_from(self.transport.grpc_reflection_memory)
                    .unwrap_or(usize::MAX)
                    .min(Semaphore::MAX_PERMITS),
            )),
            pool_bytes: self.transport.grpc_reflection_memory,
            per_stream: reflection_reserve(
                pb::FILE_DESCRIPTOR_SET
                    .len()
                    .max(tonic_health::pb::FILE_DESCRIPTOR_SET.len()),
                stream_window(self.transport.max_concurrent_streams),
            ),
            per_connection: REFLECTION_STREAMS_PER_CONNECTION,
        };
        let repairs = (!self.repair_interval.is_zero()).then(|| {
            tokio::spawn(
                self.images
                    .clone()
                    .repair_periodically(self.repair_interval, self.repair_grace),
            )
        });
        let erasures = Erasures::new(self.images.clone());
        // Erasures a stopped replica left marked are resumed with the
        // repair pass (the first look at once: this replica may be the one
        // that stopped).
        let erasure_resumes = (!self.repair_interval.is_zero())
            .then(|| tokio::spawn(erasures.clone().resume_periodically(self.repair_interval)));
        let metrics_upkeep = tokio::spawn(crate::telemetry::upkeep_periodically());
        let event_sweep = tokio::spawn(self.watches.clone().sweep_periodically());
        let backend_watch = tokio::spawn(watch_backends(
            self.images.clone(),
            health.clone(),
            self.health_check_interval,
        ));
        // The embedded listener refuses parts of upload sessions that are
        // no longer open: the domain's session records answer it.
        let open_sessions: Arc<dyn OpenSessions> = Arc::new(self.images.uploads().clone());
        // ...and download URLs of images that moderation hid or removed
        // since they were issued: the domain's records answer it too.
        let public_images: Arc<dyn PublicImages> = Arc::new(self.images.clone());
        // Presigned downloads reserve their read-ahead from the budget.
        let read_ahead = read_ahead_from(self.images.memory().clone());
        let uploads = self.images.uploads().clone();
        // `async` scans are queued and made in turn by one worker.
        let scan_worker = uploads.serve_scan_queue();
        let limits = self.transport;
        let hold_requests = HoldRequests::new(
            self.images.memory().clone(),
            self.requests,
            self.auth.clone(),
        );
        let watches = self.watches.clone();
        let image_api = ImageApi::new(
            self.images,
            erasures,
            self.watches,
            self.auth,
            CallLimits {
                max_in_flight: limits.max_in_flight_calls,
            },
        );
        let moderation = ModerationServiceServer::new(ModerationApi::beside(&image_api))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let api = ImageServiceServer::new(image_api).max_decoding_message_size(MAX_MESSAGE_BYTES);
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
                limits.http_max_streams_per_connection,
                stop_rx.clone(),
            ))
        });
        let grpc = tonic::transport::Server::builder()
            // Responses hold their memory until sent; one not read for the
            // stall timeout is dropped, ending its count below.
            .layer(HoldResponses {
                stall_timeout: limits.download_stall_timeout,
                reflection: reflection_limits,
            })
            // Counts each connection's calls in flight: the listener sheds
            // only connections without one.
            .layer(listener::CountCalls)
            // Request messages hold their memory while they arrive, and
            // one larger than its call takes, or that does not arrive, ends.
            .layer(hold_requests)
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
            .add_service(moderation)
            .serve_with_incoming_shutdown(grpc_incoming, stopped(stop_rx.clone()));
        let http = listener::serve_http(
            http_incoming,
            crate::http::router(
                self.http_blobs.map(|blobs| {
                    embedded::downloads::routes(
                        blobs,
                        public_images,
                        open_sessions,
                        embedded::downloads::PartUploadCaps {
                            at_once: limits.http_max_concurrent_part_uploads,
                            per_user: limits.http_max_part_uploads_per_user,
                        },
                        embedded::downloads::DownloadCaps {
                            at_once: limits.http_max_downloads,
                            per_peer: limits.http_max_downloads_per_peer,
                        },
                        read_ahead,
                    )
                }),
                metrics.is_none(),
                crate::http::BodyLimits {
                    timeout: limits.http_body_timeout,
                    min_rate: limits.http_min_body_rate,
                    min_rate_grace: limits.http_min_body_rate_grace,
                },
            ),
            limits.handshake_timeout,
            limits.http_max_streams_per_connection,
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
        event_sweep.abort();
        // Watches never end by themselves: each is told to resume elsewhere.
        watches.stop();
        if let Some(watch) = certificate_watch {
            watch.abort();
        }
        if let Some(repairs) = repairs {
            repairs.abort();
        }
        if let Some(resumes) = erasure_resumes {
            resumes.abort();
        }
        health
            .set_not_serving::<ImageServiceServer<ImageApi>>()
            .await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        let _ = stop_tx.send(true);
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        let drained = tokio::time::timeout_at(deadline, async {
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
        // Scans still queued are dropped: their images stay PENDING, for
        // the repair pass (those in flight end by themselves).
        if let Some(worker) = scan_worker {
            worker.abort();
            let _ = worker.await;
        }
        uploads.stop_scan_queue();
        // Uploads acknowledged during the drain may have queued some too.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !uploads.drain_encodings(left).await {
            tracing::warn!(
                "shutdown timeout reached; background encodings still queued stay journaled for the repair pass"
            );
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
    http_max_streams_per_connection: u32,
    http_max_concurrent_part_uploads: usize,
    http_max_part_uploads_per_user: usize,
    http_max_downloads: usize,
    http_max_downloads_per_peer: usize,
    grpc_max_connections_per_peer: usize,
    grpc_reflection_memory: u64,
    /// `None`: connections without a call stay open.
    grpc_idle_timeout: Option<Duration>,
}

impl TransportLimits {
    fn from_settings(settings: &ConnectionSettings) -> Self {
        Self {
            max_concurrent_streams: settings.max_concurrent_streams.max(1),
            max_in_flight_calls: settings.max_in_flight_calls.max(1),
            max_connections: settings.max_connections.max(1),
            handshake_timeout: settings.handshake_timeout,
            download_stall_timeout: settings.download_stall_timeout,
            http_stall_timeout: settings.http_stall_timeout,
            http_body_timeout: settings.http_body_timeout,
            http_min_body_rate: settings.http_min_body_rate,
            http_min_body_rate_grace: settings.http_min_body_rate_grace,
            http_max_connections_per_peer: settings.http_max_connections_per_peer,
            http_max_streams_per_connection: settings.http_max_streams_per_connection.max(1),
            http_max_concurrent_part_uploads: settings.http_max_concurrent_part_uploads,
            http_max_part_uploads_per_user: settings.http_max_part_uploads_per_user,
            http_max_downloads: settings.http_max_downloads,
            http_max_downloads_per_peer: settings.http_max_downloads_per_peer,
            grpc_max_connections_per_peer: settings.grpc_max_connections_per_peer,
            grpc_reflection_memory: settings.grpc_reflection_memory,
            grpc_idle_timeout: (!settings.grpc_idle_timeout.is_zero())
                .then_some(settings.grpc_idle_timeout),
        }
    }
}

/// The embedded backend's presigned downloads reserve what they read ahead
/// from the replica's memory budget, counted against no user's share: the
/// URL names no caller, and charging the image's owner would let anyone
/// holding a URL lock the owner out. `--http-max-downloads` bounds what
/// they hold together.
pub fn read_ahead_from(
    budget: crate::domain::budget::MemoryBudget,
) -> embedded::downloads::ReserveReadAhead {
    Arc::new(move |bytes| {
        let budget = budget.clone();
        Box::pin(async move {
            budget
                .reserve(bytes, "a download")
                .await
                .ok()
                .map(crate::response_stall::HeldMemory::new)
        })
    })
}

/// Says so when `x-user-id` can be sent by anyone who reaches the port.
fn warn_about_exposure(identity: &AuthSettings, grpc_addr: SocketAddr, tls: bool) {
    if identity.auth != AuthMode::TrustedHeader || !identity.trusted_peers.is_empty() {
        return;
    }
    if !grpc_addr.ip().is_loopback() {
        tracing::warn!(
            addr = %grpc_addr,
            tls,
            "trusted-header mode without --trusted-peers: anyone who can reach this address \
             can act as any user with x-user-id; use mutual TLS with --trusted-peers, a \
             NetworkPolicy that admits only the gateway, or --auth jwt"
        );
    }
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
