//! `image-service backfill`: adds to every stored image what it lacks of
//! the configured renditions (the encodings of `--variant-formats`, the
//! variants of `--variant`, the ThumbHash), each image through
//! [`Uploads::backfill`](crate::domain::upload::Uploads::backfill).
//!
//! - **Idempotent**: an image that lacks nothing is not rendered, so a
//!   second run writes no object and changes no record.
//! - **Resumable**: the listing's cursor after each image is kept in a
//!   checkpoint file ([`crate::checkpoint`]) with the run's totals and the
//!   set of renditions it makes; after a crash or Ctrl-C, the next run for
//!   the same set goes on from there. A finished run removes it.
//! - **Safe beside live traffic**: each record update is conditional on
//!   the revision read (an edit meanwhile is kept, a deleted image is not
//!   brought back), renders take the service's render slots and memory
//!   budget, and `max_rate` bounds the images rendered per second.
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;

use crate::domain::DomainError;
use crate::domain::upload::{Backfilled, Uploads};

/// Records listed at once.
const PAGE: usize = 100;
/// Images backfilled at once (their renders also wait for the render
/// slots, `--max-concurrent-renders`).
const IN_FLIGHT: usize = 4;

/// What a run did (with the runs it resumed).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// Images listed.
    pub seen: u64,
    /// Images that lacked something (in a dry run: that do).
    pub lacking: u64,
    /// What they lacked, counted before rendering: variants, encodings of
    /// their stored renditions, ThumbHashes, PDQ hashes.
    pub variants: u64,
    pub encodings: u64,
    pub thumbhashes: u64,
    #[serde(default)]
    pub pdq_hashes: u64,
    /// Images whose record changed, the entries added to them, the
    /// ThumbHashes and PDQ hashes set and the bytes of the objects added;
    /// the encodings made and not kept (no smaller than the variant's
    /// first), recorded so that no later run makes them again.
    pub changed: u64,
    pub entries: u64,
    #[serde(default)]
    pub declined: u64,
    /// Entries made and not kept because their owner's byte quota had no
    /// room for them (a later run tries again).
    #[serde(default)]
    pub over_quota: u64,
    pub thumbhashes_set: u64,
    #[serde(default)]
    pub pdq_hashes_set: u64,
    pub bytes: u64,
    /// Images deleted while they were backfilled.
    #[serde(skip)]
    pub gone: u64,
    /// Images that could not be backfilled, with why (kept only for the
    /// run that met them).
    #[serde(skip)]
    pub failed: Vec<(String, String)>,
    /// Whether the run stopped before the end (Ctrl-C); a checkpoint remains.
    #[serde(skip)]
    pub interrupted: bool,
    /// Of `seen` and `changed`, what this run did.
    #[serde(skip)]
    pub run_seen: u64,
    #[serde(skip)]
    pub run_changed: u64,
}

/// The checkpoint's totals: the summary's, and the renditions the run
/// makes, so that a run for another set starts over.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Totals {
    wanted: String,
    #[serde(flatten)]
    summary: Summary,
}

/// Where the checkpoint of a backfill is kept by default.
pub fn default_checkpoint(data_dir: &Path) -> PathBuf {
    data_dir.join("backfill.checkpoint")
}

/// How a run goes.
pub struct Options<'a> {
    /// Where progress is kept.
    pub checkpoint: &'a Path,
    /// What the run makes (`jpeg,webp; small=320,…`): a checkpoint of
    /// another set is not resumed.
    pub wanted: String,
    /// Count what is lacking; write nothing.
    pub dry_run: bool,
    /// Images rendered per second at most; 0 for no bound.
    pub max_rate: u32,
    /// Set to stop after the images in progress.
    pub stop: &'a AtomicBool,
}

/// Spaces out the renders to at most a rate.
struct Pace {
    interval: Option<Duration>,
    next: Mutex<tokio::time::Instant>,
}

impl Pace {
    fn new(per_second: u32) -> Self {
        Self {
            interval: (per_second > 0).then(|| Duration::from_secs(1) / per_second),
            next: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits for the next render's turn.
    async fn turn(&self) {
        let Some(interval) = self.interval else {
            return;
        };
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let at = (*next).max(tokio::time::Instant::now());
            *next = at + interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// One image's outcome.
enum Outcome {
    /// Stopped before it started: not counted, not checkpointed.
    NotStarted,
    /// Lacked nothing (in a dry run: counted only).
    Counted(crate::domain::upload::Lacking),
    Done(
        crate::domain::upload::Lacking,
        Result<Backfilled, DomainError>,
    ),
}

/// Backfills every image; see the module documentation. `progress` is
/// told of every image handled.
pub async fn backfill(
    uploads: &Uploads,
    options: &Options<'_>,
    progress: &(dyn Fn(&Summary) + Sync),
) -> anyhow::Result<Summary> {
    let (saved_cursor, saved) = if options.dry_run {
        (None, Totals::default())
    } else {
        crate::checkpoint::load::<Totals>(options.checkpoint)?
    };
    let (mut cursor, mut summary) = if saved.wanted == options.wanted {
        (saved_cursor, saved.summary)
    } else {
        if saved_cursor.is_some() {
            eprintln!(
                "the checkpoint {} is of another set ({}): starting over",
                options.checkpoint.display(),
                saved.wanted
            );
        }
        (None, Summary::default())
    };
    let pace = Pace::new(options.max_rate);
    let stop = options.stop;
    loop {
        let page = uploads
            .every_image(cursor.as_deref(), PAGE)
            .await
            .map_err(|e| anyhow::anyhow!(crate::telemetry::error_chain(&e)))
            .context("listing the images")?;
        // Images are backfilled a few at a time, and their outcomes taken
        // in listing order, so the checkpoint always follows a finished
        // prefix. Once stopped, no new image starts.
        let pace = &pace;
        let work = page
            .records
            .iter()
            .zip(&page.record_cursors)
            .take_while(|_| !stop.load(Ordering::Relaxed))
            .map(|(record, after)| async move {
                let lacking = uploads.lacking(record);
                if lacking.is_empty() || options.dry_run {
                    return (record, after, Outcome::Counted(lacking));
                }
                pace.turn().await;
                if stop.load(Ordering::Relaxed) {
                    return (record, after, Outcome::NotStarted);
                }
                let done = uploads.backfill(record).await;
                (record, after, Outcome::Done(lacking, done))
            });
        let mut outcomes = futures::stream::iter(work).buffered(IN_FLIGHT);
        let mut handled = 0;
        while let Some((record, after, outcome)) = outcomes.next().await {
            let (lacking, done) = match outcome {
                Outcome::NotStarted => break,
                Outcome::Counted(lacking) => (lacking, None),
                Outcome::Done(lacking, done) => (lacking, Some(done)),
            };
            handled += 1;
            summary.seen += 1;
            summary.run_seen += 1;
            if !lacking.is_empty() {
                summary.lacking += 1;
                summary.variants += lacking.variants.len() as u64;
                summary.encodings += lacking.encodings as u64;
                summary.thumbhashes += u64::from(lacking.thumbhash);
                summary.pdq_hashes += u64::from(lacking.pdq);
            }
            match done {
                None | Some(Ok(Backfilled::Complete)) => {}
                Some(Ok(Backfilled::Added(added))) => {
                    if added.entries > 0 || added.thumbhash || added.pdq || added.declined > 0 {
                        summary.changed += 1;
                        summary.run_changed += 1;
                    }
                    summary.entries += added.entries as u64;
                    summary.declined += added.declined as u64;
                    summary.over_quota += added.over_quota as u64;
                    summary.thumbhashes_set += u64::from(added.thumbhash);
                    summary.pdq_hashes_set += u64::from(added.pdq);
                    summary.bytes += added.bytes;
                }
                Some(Ok(Backfilled::ImageGone)) => summary.gone += 1,
                Some(Ok(Backfilled::Unrenderable(why))) => {
                    summary.failed.push((record.id.to_string(), why));
                }
                Some(Err(error)) if stops_the_run(&error) => {
                    return Err(anyhow::anyhow!(crate::telemetry::error_chain(&error)))
                        .with_context(|| format!("backfilling image {}", record.id));
                }
                Some(Err(error)) => {
                    summary
                        .failed
                        .push((record.id.to_string(), crate::telemetry::error_chain(&error)));
                }
            }
            if !options.dry_run {
                let totals = Totals {
                    wanted: options.wanted.clone(),
                    summary: summary.clone(),
                };
                crate::checkpoint::save(options.checkpoint, after, &totals)?;
            }
            progress(&summary);
        }
        if handled < page.records.len() {
            summary.interrupted = true;
            return Ok(summary);
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    if !options.dry_run {
        crate::checkpoint::remove(options.checkpoint)?;
    }
    Ok(summary)
}

/// Whether a failure is the stores' (the run stops, and resumes from its
/// checkpoint) rather than the image's (reported, and the run goes on).
fn stops_the_run(error: &DomainError) -> bool {
    matches!(
        error,
        DomainError::Unavailable(_) | DomainError::Internal(_)
    )
}
