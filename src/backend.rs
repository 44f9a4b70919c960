//! The configured backend, opened: the one place that turns the storage
//! settings into stores, for the server and for every command.
use std::sync::Arc;

use anyhow::Context;

use crate::config::{Backend, Config, LimitSettings};
use crate::domain::limits::{PaceLimits, SessionLimits};
use crate::domain::ports::{BlobStore, MetadataStore, SessionQuota};
use crate::domain::quota::QuotaLimits;
use crate::domain::signing::SigningKey;
use crate::domain::watch::{WatchLimits, Watches};
use crate::domain::{Images, Limits, UserId};
use crate::media::content::ContentLimits;
use crate::media::variants::RenderLimits;
use crate::storage::aws;
use crate::storage::embedded::{self, EmbeddedBlobStore, urls::SignedUrls};
use crate::storage::instrumented::{InstrumentedBlobs, InstrumentedMetadata};

/// A backend's two stores.
pub struct Stores {
    pub blobs: Arc<dyn BlobStore>,
    pub metadata: Arc<dyn MetadataStore>,
    /// The embedded backend's blob store, whose presigned URLs the HTTP
    /// listener serves.
    pub embedded_blobs: Option<Arc<EmbeddedBlobStore>>,
}

/// Opens `backend` with the configured settings. `urls` signs the embedded
/// backend's presigned URLs: the server's, pointing at its HTTP listener;
/// commands hand out no URL and pass `None`. Nothing is created on the aws
/// side (see [`create_aws`]).
pub async fn open_stores(
    config: &Config,
    backend: Backend,
    urls: Option<SignedUrls>,
) -> anyhow::Result<Stores> {
    Ok(match backend {
        Backend::Embedded => {
            let (blobs, metadata) =
                embedded::open(&config.storage.data_dir, urls).with_context(|| {
                    format!(
                        "opening the data directory {} (is a service still using it?)",
                        config.storage.data_dir.display()
                    )
                })?;
            let blobs = Arc::new(blobs);
            Stores {
                blobs: blobs.clone(),
                metadata: Arc::new(metadata),
                embedded_blobs: Some(blobs),
            }
        }
        Backend::Aws => {
            let (blobs, metadata) = aws::connect(&config.aws_settings()).await;
            Stores {
                blobs: Arc::new(blobs),
                metadata: Arc::new(metadata),
                embedded_blobs: None,
            }
        }
    })
}

/// Creates the aws backend's bucket and table (idempotent); returns the
/// table's time shard count.
pub async fn create_aws(config: &Config) -> anyhow::Result<u32> {
    let settings = config.aws_settings();
    aws::init(&settings).await.with_context(|| {
        format!(
            "creating bucket {} and table {}",
            settings.bucket, settings.table
        )
    })
}

/// The use cases over the configured backend, and the embedded blob store
/// whose URLs the HTTP listener serves.
pub struct OpenedBackend {
    pub images: Images,
    /// The event stream over the same metadata store.
    pub watches: Watches,
    pub embedded_blobs: Option<Arc<EmbeddedBlobStore>>,
}

/// The use cases over the configured backend, with metrics and trace spans
/// around both stores. `http_base` is where callers reach the HTTP listener,
/// for the embedded backend's presigned URLs: the server's; `None` for a
/// command, which hands out no URL.
pub async fn open_images(
    config: &Config,
    http_base: Option<String>,
) -> anyhow::Result<OpenedBackend> {
    let key = signing_key(config)?;
    let urls = http_base.map(|base| SignedUrls::new(key.clone(), base));
    let stores = open_stores(config, config.storage.backend, urls).await?;
    crate::telemetry::metrics();
    let (blob_system, metadata_system) = match config.storage.backend {
        Backend::Embedded => ("files", "redb"),
        Backend::Aws => ("s3", "dynamodb"),
    };
    let metadata: Arc<dyn MetadataStore> =
        Arc::new(InstrumentedMetadata(stores.metadata, metadata_system));
    let images = Images::new(
        Arc::new(InstrumentedBlobs(stores.blobs, blob_system)),
        metadata.clone(),
        key,
        limits(&config.limits),
    )
    .with_admins(config.identity.admins()?)
    .with_moderators(config.identity.moderators()?)
    .with_scan_hook(crate::scanner::hook(&config.scan)?)
    .with_block_list(block_list(config).await?);
    let events = &config.events;
    let watches = Watches::new(
        metadata,
        WatchLimits {
            watchers: events
                .event_watchers
                .iter()
                .filter_map(|w| UserId::parse(w).ok())
                .collect(),
            max_watchers: events.max_event_watchers as usize,
            stall_timeout: events.event_watcher_stall_timeout,
            poll_interval: events.event_poll_interval,
            retention: events.event_retention,
        },
    );
    Ok(OpenedBackend {
        images,
        watches,
        embedded_blobs: stores.embedded_blobs,
    })
}

/// The block list's hook; an `s3://` list is read with the aws backend's
/// S3 settings.
async fn block_list(config: &Config) -> anyhow::Result<Option<crate::domain::block::BlockHook>> {
    let s3 = match config.storage.backend {
        Backend::Aws => Some(config.aws_settings()),
        Backend::Embedded => None,
    };
    crate::block_list::hook(&config.block, s3.as_ref()).await
}

/// The key of page tokens and embedded download URLs: `--signing-key`, else
/// the one kept in the data directory (embedded) or one of this process
/// (aws).
fn signing_key(config: &Config) -> anyhow::Result<SigningKey> {
    if let Some(secret) = &config.storage.signing_key {
        return SigningKey::from_secret(secret.as_bytes())
            .map_err(|e| anyhow::anyhow!("--signing-key: {e}"));
    }
    match config.storage.backend {
        Backend::Embedded => embedded::load_or_create_signing_key(&config.storage.data_dir)
            .context("reading the signing key in the data directory"),
        Backend::Aws => {
            tracing::warn!(
                "no --signing-key: page tokens are signed with a key of this process only; \
                 set IMAGE_SERVICE_SIGNING_KEY when running more than one replica"
            );
            Ok(SigningKey::generate())
        }
    }
}

/// The domain's limits, from the limits group.
fn limits(settings: &LimitSettings) -> Limits {
    Limits {
        content: ContentLimits {
            max_bytes: settings.max_image_bytes,
            max_pixels: settings.max_image_pixels,
            max_jpeg_decode_passes: settings.max_jpeg_decode_passes,
        },
        max_url_expiry: settings.download_url_max_expiry,
        url_window: settings.download_url_window,
        max_concurrent_uploads: settings.max_concurrent_uploads,
        upload_slot_wait: settings.upload_slot_wait,
        max_uploads_per_user: settings.max_uploads_per_user,
        pace: PaceLimits {
            idle_timeout: settings.upload_idle_timeout,
            deadline: settings.upload_deadline,
            free_messages: FREE_UPLOAD_MESSAGES,
            bytes_per_message: settings.upload_bytes_per_message,
        },
        memory_budget: settings.memory_budget(),
        memory_wait: settings.memory_wait,
        // Checked at start (Application::build); commands hold no user's memory.
        max_memory_per_user: settings.memory_per_user().unwrap_or(u64::MAX),
        max_page_bytes: usize::try_from(settings.max_page_bytes).unwrap_or(usize::MAX),
        max_similar_candidates: settings.max_similar_candidates as usize,
        keep_metadata: settings.keep_metadata,
        variants: settings.variants,
        render: RenderLimits {
            max_concurrent: settings.max_concurrent_renders.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
            }),
            max_memory: settings.max_render_memory,
            max_jpeg_decode_passes: settings.max_jpeg_decode_passes,
        },
        // Checked at start (Application::build); commands make no variants.
        variant_sizes: settings
            .variant_sizes()
            .unwrap_or_else(|_| crate::media::variants::default_sizes())
            .into(),
        // Checked at start (Application::build); commands make none in
        // the background (the repair pass makes what is journaled).
        encodings: settings.encodings().unwrap_or_default(),
        sessions: SessionLimits {
            ttl: settings.upload_session_ttl,
            segment_bytes: settings.upload_session_segment_size,
            max_parts: settings.max_upload_parts,
            url_expiry: settings.upload_url_expiry,
            per_user: SessionQuota {
                max_open: settings.max_open_sessions_per_user,
                max_staged_bytes: settings.max_staged_bytes_per_user,
            },
        },
        quota: QuotaLimits {
            max_bytes: settings.quota_bytes_per_user,
            max_images: settings.quota_images_per_user,
        },
        max_running_erasures: settings.max_running_erasures as usize,
        max_queued_erasures: settings.max_queued_erasures as usize,
    }
}

/// Messages every upload may send before `--upload-bytes-per-message`
/// applies: room for a spec and small chunks of a small image.
const FREE_UPLOAD_MESSAGES: u64 = 1024;
