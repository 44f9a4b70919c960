//! The block list's file (`--block-list`): read at the start, where a
//! malformed one stops the service with its line number, then checked
//! every `--block-list-poll-interval` for a change of its modification time
//! or size and read again. A changed file that is malformed, or cannot be
//! read, is logged and the list in use is kept.
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::config::BlockSettings;
use crate::domain::block::{BlockHook, BlockList};

/// What tells a changed file: its modification time and size.
type Stamp = Option<(SystemTime, u64)>;

/// The hook of `--block-list`, when set, with its reloading task started.
pub async fn hook(settings: &BlockSettings) -> anyhow::Result<Option<BlockHook>> {
    let Some(path) = settings.block_list.clone() else {
        return Ok(None);
    };
    if settings.block_list_poll_interval.is_zero() {
        anyhow::bail!(
            "--block-list-poll-interval (IMAGE_SERVICE_BLOCK_LIST_POLL_INTERVAL) must be more than 0s"
        );
    }
    let max = settings.block_list_max_entries as usize;
    let stamp = stamp(&path).await;
    let list = read(&path, max)
        .await
        .map_err(|e| anyhow::anyhow!("--block-list (IMAGE_SERVICE_BLOCK_LIST): {e}"))?;
    let policy = settings.policy();
    tracing::info!(path = %path.display(), entries = list.len(), distance = policy.distance, action = ?policy.action, "every new image is checked against the block list");
    metrics::gauge!("imageservice_block_list_entries").set(list.len() as f64);
    let hook = BlockHook::new(list, policy);
    tokio::spawn(reload(
        hook.clone(),
        path,
        max,
        settings.block_list_poll_interval,
        stamp,
    ));
    Ok(Some(hook))
}

/// The file's text, parsed.
async fn read(path: &Path, max_entries: usize) -> Result<BlockList, String> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    BlockList::parse(&text, max_entries).map_err(|e| format!("{}: {e}", path.display()))
}

async fn stamp(path: &Path) -> Stamp {
    let meta = tokio::fs::metadata(path).await.ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Reads the file again whenever its stamp changes, for as long as the
/// hook is used.
async fn reload(hook: BlockHook, path: PathBuf, max: usize, every: Duration, mut seen: Stamp) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = stamp(&path).await;
        if now == seen {
            continue;
        }
        seen = now;
        match read(&path, max).await {
            Ok(list) => {
                tracing::info!(path = %path.display(), entries = list.len(), "the block list changed and was read again");
                metrics::counter!("imageservice_block_list_reloads_total", "outcome" => "ok")
                    .increment(1);
                metrics::gauge!("imageservice_block_list_entries").set(list.len() as f64);
                hook.replace(list);
            }
            Err(error) => {
                tracing::error!(error = %error, "the changed block list is not used; the list read before stays in use");
                metrics::counter!("imageservice_block_list_reloads_total", "outcome" => "refused")
                    .increment(1);
            }
        }
    }
}
