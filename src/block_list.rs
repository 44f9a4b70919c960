//! The block list (`--block-list`): a file, or on the aws backend an S3
//! object, read at the start, where one that is malformed, too long or
//! cannot be read stops the service naming it, then checked every
//! `--block-list-poll-interval` for a change and read again. A change that
//! is malformed, too long or cannot be read is logged and counted, and the
//! list in use is kept. Both sources share all of this; they differ only in
//! how a change is told (a file's modification time and size, an object's
//! ETag: see [`crate::storage::aws::WatchedObject`]) and read.
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::io::AsyncReadExt;

use crate::config::{BlockListLocation, BlockSettings};
use crate::domain::block::{BlockHook, BlockList, MAX_BYTES_PER_ENTRY};
use crate::storage::aws::{AwsSettings, ObjectReadError, WatchedObject};

/// The hook of `--block-list`, when set, with its reloading task started.
/// `s3` is the aws backend's settings, whose S3 client reads an `s3://`
/// list; `None` on the embedded backend, where such a list stops the start.
pub async fn hook(
    settings: &BlockSettings,
    s3: Option<&AwsSettings>,
) -> anyhow::Result<Option<BlockHook>> {
    let Some(location) = settings.block_list.clone() else {
        return Ok(None);
    };
    if settings.block_list_poll_interval.is_zero() {
        anyhow::bail!(
            "--block-list-poll-interval (IMAGE_SERVICE_BLOCK_LIST_POLL_INTERVAL) must be more than 0s"
        );
    }
    let mut source = Source::open(&location, s3).await?;
    let bounds = Bounds::of(settings);
    // A source not read before is always read: `None` cannot come.
    let list = source
        .read_if_changed(bounds)
        .await
        .and_then(|list| list.ok_or_else(|| format!("{location}: not read")))
        .map_err(|e| anyhow::anyhow!("--block-list (IMAGE_SERVICE_BLOCK_LIST): {e}"))?;
    let policy = settings.policy();
    if list.is_empty() {
        // Started all the same (an empty list may be meant, to be filled
        // later), but loudly: a broken export would leave blocking off.
        tracing::warn!(list = %location, "the block list is empty: no upload is checked against it until it has entries");
    } else {
        tracing::info!(list = %location, entries = list.len(), distance = policy.distance, action = ?policy.action, "every new image is checked against the block list");
    }
    metrics::gauge!("imageservice_block_list_entries").set(list.len() as f64);
    let list_len = list.len();
    let hook = BlockHook::new(list, policy);
    tokio::spawn(reload(
        hook.clone(),
        source,
        bounds,
        settings.block_list_poll_interval,
        list_len,
    ));
    Ok(Some(hook))
}

/// How long a list may be: in entries, and in bytes of text.
#[derive(Clone, Copy)]
struct Bounds {
    entries: usize,
    bytes: u64,
}

impl Bounds {
    fn of(settings: &BlockSettings) -> Self {
        Self {
            entries: settings.block_list_max_entries as usize,
            bytes: u64::from(settings.block_list_max_entries) * MAX_BYTES_PER_ENTRY,
        }
    }
}

/// Where the list is read from, and what tells its last read version.
enum Source {
    File {
        path: PathBuf,
        /// The stamp of the file read last; `None` before the first read.
        seen: Option<Stamp>,
    },
    S3 {
        object: WatchedObject,
        name: String,
    },
}

/// What tells a changed file: its modification time and size (`None`
/// when it cannot be had, e.g. the file is gone).
type Stamp = Option<(SystemTime, u64)>;

impl Source {
    async fn open(location: &BlockListLocation, s3: Option<&AwsSettings>) -> anyhow::Result<Self> {
        Ok(match location {
            BlockListLocation::File(path) => Self::File {
                path: path.clone(),
                seen: None,
            },
            BlockListLocation::S3 { bucket, key } => {
                let Some(settings) = s3 else {
                    anyhow::bail!(
                        "--block-list (IMAGE_SERVICE_BLOCK_LIST) {location} is read with the aws \
                         backend's S3 client; with --backend embedded, give a file"
                    );
                };
                Self::S3 {
                    object: WatchedObject::new(settings, bucket, key).await,
                    name: location.to_string(),
                }
            }
        })
    }

    /// The list, parsed, when it changed since the last read (always at
    /// the first); `None` when it has not. The error names the list.
    async fn read_if_changed(&mut self, bounds: Bounds) -> Result<Option<BlockList>, String> {
        let (name, text) = match self {
            Self::File { path, seen } => {
                let now = stamp(path).await;
                if seen.as_ref() == Some(&now) {
                    return Ok(None);
                }
                *seen = Some(now);
                let name = path.display().to_string();
                let text = read_file(path, bounds.bytes)
                    .await
                    .map_err(|e| format!("{name}: {e}"))?;
                (name, text)
            }
            Self::S3 { object, name } => {
                let bytes = match object.read_if_changed(bounds.bytes).await {
                    Ok(Some(bytes)) => bytes,
                    Ok(None) => return Ok(None),
                    Err(ObjectReadError::TooLarge { max }) => {
                        return Err(format!("{name}: {}", too_large(max)));
                    }
                    Err(error) => return Err(format!("{name}: {error}")),
                };
                let text = String::from_utf8(bytes).map_err(|_| format!("{name}: {NOT_TEXT}"))?;
                (name.clone(), text)
            }
        };
        BlockList::parse(&text, bounds.entries)
            .map(Some)
            .map_err(|e| format!("{name}: {e}"))
    }
}

async fn stamp(path: &std::path::Path) -> Stamp {
    let meta = tokio::fs::metadata(path).await.ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The file's text, refused past `max_bytes` without reading further, and
/// refused when it is not a regular file: a named pipe or a device could
/// hold a read (and the replica's shutdown) for as long as nothing writes
/// to it. Opened without blocking, so that even the open of a pipe returns.
async fn read_file(path: &std::path::Path, max_bytes: u64) -> Result<String, String> {
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .await
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().await.map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".to_owned());
    }
    let mut bytes = Vec::new();
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(max_bytes));
    }
    String::from_utf8(bytes).map_err(|_| NOT_TEXT.to_owned())
}

/// How a list's text that is not text reads.
const NOT_TEXT: &str = "not UTF-8 text";

/// How a list longer than its bound in bytes reads.
fn too_large(max_bytes: u64) -> String {
    format!(
        "larger than {max_bytes} bytes ({MAX_BYTES_PER_ENTRY} per entry --block-list-max-entries allows)"
    )
}

/// Reads the list again whenever it changes, for as long as the hook is
/// used. A failure to read that repeats the one before is not logged
/// again: a deleted object would otherwise be logged at every poll.
async fn reload(
    hook: BlockHook,
    mut source: Source,
    bounds: Bounds,
    every: Duration,
    mut entries: usize,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_refusal = None;
    loop {
        ticks.tick().await;
        match source.read_if_changed(bounds).await {
            Ok(None) => last_refusal = None,
            Ok(Some(list)) => {
                last_refusal = None;
                if list.is_empty() && entries > 0 {
                    // Used all the same (emptying the list may be meant),
                    // but loudly: a broken export would switch blocking off.
                    tracing::warn!(
                        entries_before = entries,
                        "the block list changed and is now empty: no upload is checked against it"
                    );
                } else {
                    tracing::info!(
                        entries = list.len(),
                        "the block list changed and was read again"
                    );
                }
                entries = list.len();
                metrics::counter!("imageservice_block_list_reloads_total", "outcome" => "ok")
                    .increment(1);
                metrics::gauge!("imageservice_block_list_entries").set(list.len() as f64);
                hook.replace(list);
            }
            Err(error) if last_refusal.as_ref() == Some(&error) => {}
            Err(error) => {
                tracing::error!(error = %error, "the changed block list is not used; the list read before stays in use");
                metrics::counter!("imageservice_block_list_reloads_total", "outcome" => "refused")
                    .increment(1);
                last_refusal = Some(error);
            }
        }
    }
}
