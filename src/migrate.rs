//! `image-service migrate --from embedded --to aws` (and back): copies every
//! image, its bytes (original and variants) and its record (id, owner,
//! times, etag and all), from one backend to the other.
//!
//! - **Verified**: each object's bytes are hashed (SHA-256) as they are
//!   read from the source, and read back from the destination and hashed
//!   again; the original's hash must also be the record's `sha256`. A
//!   mismatch leaves the image uncopied (no record, and none of its
//!   objects: those already written are removed) and is reported.
//! - **Ordered like an upload**: bytes first, then the record, so an image
//!   visible in the destination always has its bytes.
//! - **Idempotent**: an image whose record the destination already holds is
//!   skipped, so a second run copies nothing (and a run after new uploads
//!   copies only those).
//! - **Resumable**: the source listing's cursor after each image is kept in
//!   a checkpoint file; after a crash or Ctrl-C, the next run goes on from
//!   there. A finished run removes it.
//! - **What is kept beside the images travels too**: each user's quota
//!   override (`SetUserQuota`) and erasure record (`DeleteUserData`: the
//!   proof that it happened) before the images, and the moderation audit
//!   trail after them, each entry once however many runs copy it. Each
//!   image copied adds what it holds to its owner's usage in the
//!   destination, so quotas hold there from the first upload (an image
//!   whose usage a crash left uncounted is counted by the repair pass).
//! - **The destination's own decisions win**: a quota override set in the
//!   destination is kept; an erasure is copied only to a user who holds
//!   nothing in the destination (else it would reset the usage of images
//!   it did not erase: the user is named, to be erased there); and an
//!   image of a user whose data the destination erased after the image
//!   was made is not copied back. An erasure still running in the source
//!   is copied running (its user's uploads stay refused) and named in the
//!   summary: asking for it again on the destination (`DeleteUserData`)
//!   finishes it.
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use crate::domain::image::Timestamp;
use crate::domain::listing::ListFilter;
use crate::domain::ports::{BlobStore, CreateOutcome, MetadataStore, ObjectKey, StorageError};
use crate::domain::quota::held_by;
use crate::domain::usage::UsageChange;
use crate::domain::{ImageRecord, UserId};

/// Records listed from the source at once (and looked up in the
/// destination with one batch read).
const PAGE: usize = 100;
/// Images copied at once.
const IN_FLIGHT: usize = 8;

/// One side of a migration.
#[derive(Clone)]
pub struct Side {
    pub blobs: Arc<dyn BlobStore>,
    pub metadata: Arc<dyn MetadataStore>,
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Images read from the source.
    pub seen: u64,
    /// Images copied (or, in a dry run, that would be).
    pub copied: u64,
    /// Images the destination already held.
    pub present: u64,
    /// Images that could not be copied, with why.
    pub failed: Vec<(String, String)>,
    /// Bytes of the objects copied.
    pub bytes: u64,
    /// Whether the run stopped before the end (Ctrl-C); a checkpoint remains.
    pub interrupted: bool,
    /// Of `copied` and `bytes`, what this run did (the rest was done by
    /// the runs it resumed).
    pub run_copied: u64,
    pub run_bytes: u64,
    /// Users whose quota override or erasure record the destination holds.
    pub users: u64,
    /// Users whose erasure was still running in the source.
    pub erasures_running: Vec<String>,
    /// Users whose erasure in the source was not copied: the destination
    /// holds data of theirs, which only an erasure there removes.
    pub erasures_not_copied: Vec<String>,
    /// Images not copied: their owner's data was erased in the
    /// destination after they were made.
    pub erased: u64,
    /// Entries of the moderation audit trail the destination holds.
    pub actions: u64,
}

/// The totals kept in the checkpoint ([`crate::checkpoint`]), so that the
/// final summary covers every run.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Totals {
    seen: u64,
    copied: u64,
    present: u64,
    bytes: u64,
}

/// Where the checkpoint of a migration is kept by default.
pub fn default_checkpoint(data_dir: &Path, from: &str, to: &str) -> PathBuf {
    data_dir.join(format!("migrate-{from}-to-{to}.checkpoint"))
}

/// Copies every image of `from` into `to`; see the module documentation.
/// `stop` ends the run after the image in progress. `progress` is told of
/// every image handled.
pub async fn migrate(
    from: &Side,
    to: &Side,
    checkpoint_path: &Path,
    dry_run: bool,
    stop: &AtomicBool,
    progress: &(dyn Fn(&Summary) + Sync),
) -> anyhow::Result<Summary> {
    let (mut cursor, saved) = if dry_run {
        (None, Totals::default())
    } else {
        crate::checkpoint::load::<Totals>(checkpoint_path)?
    };
    let mut summary = Summary {
        seen: saved.seen,
        copied: saved.copied,
        present: saved.present,
        bytes: saved.bytes,
        ..Default::default()
    };
    copy_users(from, to, dry_run, &mut summary)
        .await
        .context("copying the users' quotas and erasure records")?;
    let everything = ListFilter::default();
    loop {
        let page = from
            .metadata
            .list(&everything, cursor.as_deref(), PAGE)
            .await
            .context("listing the source's images")?;
        let erased_since = erasures_in(to, &page.records)
            .await
            .context("reading the destination's erasures")?;
        let ids: Vec<_> = page.records.iter().map(|r| r.id).collect();
        let present: std::collections::HashSet<_> = to
            .metadata
            .get_many(&ids)
            .await
            .context("looking the images up in the destination")?
            .into_iter()
            .map(|r| r.id)
            .collect();
        // Images are copied a few at a time, and their outcomes taken in
        // listing order, so the checkpoint always follows a finished
        // prefix. Once stopped, no new image starts; those in flight end.
        let work = page
            .records
            .iter()
            .zip(&page.record_cursors)
            .take_while(|_| !stop.load(Ordering::Relaxed))
            .map(|(record, after)| {
                let erased = erased_since
                    .get(&record.owner)
                    .is_some_and(|since| record.create_time <= *since);
                let copy = !present.contains(&record.id) && !erased && !dry_run;
                async move {
                    let outcome = if copy {
                        Some(copy_image(from, to, record).await)
                    } else {
                        None
                    };
                    (record, after, erased, outcome)
                }
            });
        let mut outcomes = futures::stream::iter(work).buffered(IN_FLIGHT);
        let mut handled = 0;
        while let Some((record, after, erased, outcome)) = outcomes.next().await {
            handled += 1;
            summary.seen += 1;
            match outcome {
                None if present.contains(&record.id) => summary.present += 1,
                None if erased => summary.erased += 1,
                None => {
                    summary.copied += 1;
                    summary.bytes += record.objects().iter().map(|(_, size)| size).sum::<u64>();
                }
                Some(Ok(Copied::Copied(bytes))) => {
                    summary.copied += 1;
                    summary.bytes += bytes;
                    summary.run_copied += 1;
                    summary.run_bytes += bytes;
                }
                Some(Ok(Copied::Present)) => summary.present += 1,
                Some(Err(CopyError::Image(why))) => {
                    summary.failed.push((record.id.to_string(), why));
                }
                Some(Err(CopyError::Store(error))) => {
                    return Err(anyhow::anyhow!(crate::telemetry::error_chain(&error)))
                        .with_context(|| format!("copying image {}", record.id));
                }
            }
            if !dry_run {
                save(checkpoint_path, after, &summary)?;
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
    summary.actions = copy_audit_trail(from, to, dry_run)
        .await
        .context("copying the moderation audit trail")?;
    if !dry_run {
        crate::checkpoint::remove(checkpoint_path)?;
    }
    Ok(summary)
}

/// Copies each user's quota override and erasure record where the
/// destination does not hold them yet. Before the images: a finished
/// erasure written to a usage item resets its totals, which the images
/// copied after it then add to.
async fn copy_users(
    from: &Side,
    to: &Side,
    dry_run: bool,
    summary: &mut Summary,
) -> Result<(), StorageError> {
    for (user, item) in from.metadata.list_usage().await? {
        if item.quota == Default::default() && item.erasure.is_none() {
            continue;
        }
        let held = to.metadata.get_usage(&user).await?;
        let mut copied = false;
        // An override the destination has, set there, is kept.
        if item.quota != Default::default() && held.quota == Default::default() {
            copied = true;
            if !dry_run {
                to.metadata.set_user_quota(&user, item.quota).await?;
            }
        }
        let new_erasure = item
            .erasure
            .as_ref()
            .filter(|e| held.erasure.as_ref() != Some(e));
        if let Some(erasure) = new_erasure {
            if held.held_bytes > 0 || held.held_images > 0 || held.erasure.is_some() {
                // The user holds data in the destination (or was erased
                // there): the record would reset the usage of images it
                // did not erase.
                summary.erasures_not_copied.push(user.to_string());
            } else {
                copied = true;
                if erasure.is_running() {
                    summary.erasures_running.push(user.to_string());
                }
                if !dry_run {
                    // Read again: a quota just set moved the revision.
                    let held = to.metadata.get_usage(&user).await?;
                    to.metadata
                        .set_erasure(&user, erasure, held.revision)
                        .await?;
                }
            }
        }
        summary.users += u64::from(copied);
    }
    Ok(())
}

/// For the owners of `records`, when the destination erased (or is
/// erasing) their data: their images made before then are not copied
/// back.
async fn erasures_in(
    to: &Side,
    records: &[ImageRecord],
) -> Result<HashMap<UserId, Timestamp>, StorageError> {
    let mut erased = HashMap::new();
    let owners: HashSet<&UserId> = records.iter().map(|r| &r.owner).collect();
    for owner in owners {
        if let Some(erasure) = to.metadata.get_usage(owner).await?.erasure {
            erased.insert(owner.clone(), erasure.requested);
        }
    }
    Ok(erased)
}

/// Copies the moderation audit trail, oldest first; an entry the
/// destination holds already is left as it is. Returns the entries read.
async fn copy_audit_trail(from: &Side, to: &Side, dry_run: bool) -> Result<u64, StorageError> {
    let mut cursor: Option<Vec<u8>> = None;
    let mut entries = 0;
    loop {
        let page = from
            .metadata
            .list_moderation_actions(cursor.as_deref(), PAGE)
            .await?;
        for action in &page.actions {
            entries += 1;
            if dry_run {
                continue;
            }
            match to.metadata.append_moderation_action(action).await {
                Ok(()) | Err(StorageError::AlreadyExists) => {}
                Err(error) => return Err(error),
            }
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(entries),
        }
    }
}

/// Keeps the cursor after the last image finished and the totals.
fn save(path: &Path, cursor: &[u8], summary: &Summary) -> anyhow::Result<()> {
    let totals = Totals {
        seen: summary.seen,
        copied: summary.copied,
        present: summary.present,
        bytes: summary.bytes,
    };
    crate::checkpoint::save(path, cursor, &totals)
}

enum Copied {
    /// Bytes of the objects copied.
    Copied(u64),
    /// Created meanwhile (by a concurrent run).
    Present,
}

enum CopyError {
    /// This image cannot be copied (missing or damaged bytes in the
    /// source); the run goes on.
    Image(String),
    /// A store failed; the run stops (and resumes from its checkpoint).
    Store(StorageError),
}

impl From<StorageError> for CopyError {
    fn from(error: StorageError) -> Self {
        Self::Store(error)
    }
}

/// Copies one image's objects, each verified, then its record. An image
/// that cannot be copied leaves none of its objects in the destination.
async fn copy_image(from: &Side, to: &Side, record: &ImageRecord) -> Result<Copied, CopyError> {
    match copy_verified(from, to, record).await {
        Err(CopyError::Image(why)) => Err(CopyError::Image(remove_copied(to, record, why).await)),
        other => other,
    }
}

/// After `record`'s image failed to copy for `why`: removes whatever of
/// its objects reached the destination (bytes that do not match the
/// record, or bytes without one), unless the destination holds its record
/// meanwhile (another run copied it). Returns `why` with what was done.
async fn remove_copied(to: &Side, record: &ImageRecord, why: String) -> String {
    match to.metadata.get(&record.id).await {
        Ok(None) => {}
        Ok(Some(_)) => return why,
        Err(error) => {
            return format!(
                "{why}; whether its objects in the destination may be removed could not be checked ({}): `image-service repair` removes objects without a record",
                crate::telemetry::error_chain(&error)
            );
        }
    }
    for (name, _) in record.objects() {
        let key = ObjectKey::of(&record.id, &name);
        match to.blobs.delete(&key).await {
            Ok(()) | Err(StorageError::NotFound) => {}
            Err(error) => {
                return format!(
                    "{why}; removing {} from the destination failed ({}): `image-service repair` removes objects without a record",
                    key.as_str(),
                    crate::telemetry::error_chain(&error)
                );
            }
        }
    }
    format!("{why}; none of its objects were left in the destination")
}

/// [`copy_image`] up to the first failure.
async fn copy_verified(from: &Side, to: &Side, record: &ImageRecord) -> Result<Copied, CopyError> {
    let mut bytes = 0;
    // Each object once, however many entries share it.
    for (name, size) in record.objects() {
        let key = ObjectKey::of(&record.id, &name);
        let sha256 = copy_object(from, to, &key, size).await?;
        if name.is_original() && sha256 != record.sha256 {
            return Err(CopyError::Image(format!(
                "the source's original does not match its record's SHA-256 ({sha256}, recorded {})",
                record.sha256
            )));
        }
        let copied = hash_object(&*to.blobs, &key, size).await?;
        if copied != sha256 {
            return Err(CopyError::Image(format!(
                "{} reads back from the destination with another SHA-256",
                key.as_str()
            )));
        }
        bytes += size;
    }
    match to.metadata.create(record).await {
        Ok(CreateOutcome::Created) => {
            let held = UsageChange {
                bytes: i64::try_from(held_by(record)).unwrap_or(i64::MAX),
                images: 1,
                ..UsageChange::default()
            };
            to.metadata.change_usage(&record.owner, &held, None).await?;
            Ok(Copied::Copied(bytes))
        }
        Ok(CreateOutcome::IdempotencyKeyTaken(other)) => Err(CopyError::Image(format!(
            "its idempotency key is already taken in the destination by image {}",
            other.id
        ))),
        Err(StorageError::AlreadyExists) => Ok(Copied::Present),
        Err(error) => Err(error.into()),
    }
}

/// Streams one object from the source into the destination, returning the
/// SHA-256 of what was read.
async fn copy_object(
    from: &Side,
    to: &Side,
    key: &ObjectKey,
    size: u64,
) -> Result<String, CopyError> {
    let mut source = match from.blobs.read(key, 0, size).await {
        Ok(stream) => stream,
        Err(StorageError::NotFound) => {
            return Err(CopyError::Image(format!(
                "{} is missing from the source",
                key.as_str()
            )));
        }
        Err(error) => return Err(error.into()),
    };
    let mut writer = to.blobs.start_write(key, Some(size)).await?;
    let mut hash = Sha256::new();
    let mut read = 0u64;
    while let Some(chunk) = source.try_next().await? {
        read += chunk.len() as u64;
        hash.update(&chunk);
        writer.write(chunk).await?;
    }
    if read != size {
        writer.abort().await;
        return Err(CopyError::Image(format!(
            "{} has {read} bytes in the source, {size} recorded",
            key.as_str()
        )));
    }
    writer.finish().await?;
    Ok(hex::encode(hash.finalize()))
}

/// The SHA-256 of an object as a store reads it back.
async fn hash_object(
    blobs: &dyn BlobStore,
    key: &ObjectKey,
    size: u64,
) -> Result<String, CopyError> {
    let mut hash = Sha256::new();
    let mut stream = blobs.read(key, 0, size).await?;
    while let Some(chunk) = stream.try_next().await? {
        hash.update(&chunk);
    }
    Ok(hex::encode(hash.finalize()))
}
