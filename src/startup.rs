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

use crate::config::{Backend, Config};
use crate::domain::content::ContentLimits;
use crate::domain::signing::SigningKey;
use crate::domain::variants::RenderLimits;
use crate::domain::{Images, Limits};
use crate::grpc::ImageApi;
use crate::grpc::auth::Authenticator;
use crate::pb;
use crate::pb::image_service_server::ImageServiceServer;
use crate::storage::aws::{self, AwsSettings};
use crate::storage::embedded::{self, EmbeddedBlobStore, urls::SignedUrls};
use crate::storage::instrumented::{InstrumentedBlobs, InstrumentedMetadata};
use crate::storage::{BlobStore, MetadataStore};

/// Largest gRPC message accepted: upload chunks up to 4 MiB plus framing.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024 + 64 * 1024;

/// A built server, listening but not yet serving.
pub struct Application {
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    images: Images,
    auth: Arc<Authenticator>,
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
        let auth = Arc::new(Authenticator::from_config(&config)?);
        let grpc_listener = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("binding the gRPC address {}", config.grpc_addr))?;
        let http_listener = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("binding the HTTP address {}", config.http_addr))?;
        let http_base = config.http_public_url.clone().unwrap_or_else(|| {
            format!(
                "http://{}",
                http_listener.local_addr().expect("bound listener")
            )
        });

        let limits = limits(&config);
        let OpenedBackend { images, http_blobs } = open_backend(&config, http_base, limits).await?;
        Ok(Self {
            grpc_listener,
            http_listener,
            images,
            auth,
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

    /// Serves until `shutdown` completes; then reports NOT_SERVING, stops
    /// accepting, lets in-flight calls finish up to the shutdown timeout,
    /// and returns.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let grpc_addr = self.grpc_addr();
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
        let api = ImageServiceServer::new(ImageApi::new(self.images, self.auth))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let grpc = tonic::transport::Server::builder()
            // Windows large enough that a stream of 1 MiB chunks is not
            // throttled by flow control on a fast network.
            .initial_stream_window_size(Some(4 * 1024 * 1024))
            .initial_connection_window_size(Some(16 * 1024 * 1024))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(api)
            // Set on the accepted sockets here: `Server::tcp_nodelay` only
            // applies to listeners tonic binds itself. Without it a response
            // written in two parts (data, then trailers) waits for the
            // client's delayed ACK: 40 ms added to every listing.
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(self.grpc_listener)
                    .with_nodelay(Some(true)),
                stopped(stop_rx.clone()),
            );
        let http_listener = axum::serve::ListenerExt::tap_io(self.http_listener, |tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY");
            }
        });
        let http = axum::serve(http_listener, crate::http::router(self.http_blobs))
            .with_graceful_shutdown(stopped(stop_rx));
        let mut grpc = tokio::spawn(grpc);
        let mut http = tokio::spawn(async move { http.await });

        tracing::info!(grpc = %grpc_addr, http = %http_addr, backend = ?self.backend, "image-service ready");
        tokio::select! {
            () = shutdown => {}
            result = &mut grpc => return Err(anyhow::anyhow!("the gRPC server stopped: {result:?}")),
            result = &mut http => return Err(anyhow::anyhow!("the HTTP server stopped: {result:?}")),
        }

        tracing::info!(timeout = ?self.shutdown_timeout, "shutting down: draining in-flight calls");
        backend_watch.abort();
        metrics_upkeep.abort();
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
        if drained.is_err() {
            tracing::warn!("shutdown timeout reached; closing the remaining calls");
            grpc.abort();
            http.abort();
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The use cases over the configured backend.
struct OpenedBackend {
    images: Images,
    /// The embedded backend's blob store, whose presigned URLs the HTTP
    /// listener serves.
    http_blobs: Option<Arc<EmbeddedBlobStore>>,
}

/// Opens the configured backend, with metrics around both stores.
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
                let (blobs, metadata) = aws::connect(&AwsSettings::from_config(config)).await;
                (Arc::new(blobs), Arc::new(metadata), key, None)
            }
        };
    crate::telemetry::metrics();
    let images = Images::new(
        Arc::new(InstrumentedBlobs(blobs)),
        Arc::new(InstrumentedMetadata(metadata)),
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
        max_concurrent_uploads: config.max_concurrent_uploads,
        upload_idle_timeout: config.upload_idle_timeout,
        keep_metadata: config.keep_metadata,
        variants: config.variants,
        render: RenderLimits {
            max_concurrent: config.max_concurrent_renders.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
            }),
            max_memory: config.max_render_memory,
        },
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
        .map_err(|e| anyhow::anyhow!(crate::domain::images::error_chain(&e)))?;
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
                    .map(crate::domain::images::error_chain)
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
            let settings = AwsSettings::from_config(config);
            aws::init(&settings).await.with_context(|| {
                format!(
                    "creating bucket {} and table {}",
                    settings.bucket, settings.table
                )
            })?;
            println!(
                "aws backend ready: bucket {}, table {}",
                settings.bucket, settings.table
            );
            Ok(())
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
