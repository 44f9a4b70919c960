//! The repair pass: removes what interrupted work can leave behind. Nothing
//! it removes is visible to callers (bytes without metadata, index entries
//! without their image, unfinished uploads), and it only touches what is
//! older than a grace period, so work in progress is never mistaken for debris.
use futures::StreamExt as _;
use std::collections::HashMap;
use std::time::Duration;

use super::image::{ImageState, Timestamp};
use super::listing::ListFilter;
use super::quota::{held_by, reserving_session};
use super::upload::{Completed, Scanned, scan_overdue};
use super::usage::UsageRecord;
use super::{DomainError, ImageId, Images, UserId};
use crate::domain::ports::{ObjectKey, StorageError, StoredObject};
use crate::telemetry::error_chain;

/// Records read per listing page while usage is recomputed.
const USAGE_PAGE: usize = 1000;
/// Pending images read per page of the review index.
const SCAN_PAGE: usize = 100;
/// Pending scans the repair pass asks for at once (each then waits for a
/// place among the replica's `--max-concurrent-scans`, within its owner's
/// `--max-concurrent-scans-per-user`, in turn with live uploads' scans).
const SCANS_IN_FLIGHT: usize = 64;

/// What a repair pass found (and, unless it was a dry run, removed).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RepairReport {
    /// Objects whose image has no metadata (or no entry that reads them).
    pub orphan_objects: Vec<String>,
    /// Unfinished uploads (multipart uploads, partial files); `None` when
    /// the store cannot list them.
    pub unfinished_writes: Option<Vec<String>>,
    /// Index entries pointing at no image.
    pub stale_index_entries: usize,
    /// Changes a crash left without their event (announced now), and
    /// deletes announced but not done (completed now).
    pub unannounced_changes: usize,
    /// Upload sessions past their expiry, removed with their bytes.
    pub expired_upload_sessions: usize,
    /// Upload sessions gone from the metadata store (or committed, their
    /// part URLs over) whose objects were still in the blob store (sent to
    /// a URL after a cancel or a commit, or left by a replica that died
    /// between a write and its record).
    pub orphan_upload_objects: Vec<String>,
    /// Users whose usage item did not match their records (a crash between
    /// a reservation and its end, a delete whose give-back failed), with
    /// what it said and what it says now.
    pub usage_corrections: Vec<UsageCorrection>,
    /// Images whose encodings made after the acknowledgement were still
    /// journaled (a replica stopped before making them, or left them when
    /// its queue was full), with what the pass did: `{id} (webp,avif):
    /// added N`, `image gone`, `undecodable`, or why it failed (the entry
    /// then stays for the next pass).
    pub pending_encodings: Vec<String>,
    /// Images still `Pending` their content scan (`--scan-mode async`: a
    /// replica stopped before the verdict, or had no room in its scan queue),
    /// with what the pass did: `{id}: active`, `quarantined (reason)`,
    /// `removed (reason)`, `moot` (deleted or decided meanwhile), `left
    /// pending: no --scan-url`, or why it failed (the image then stays
    /// `Pending` for the next pass).
    pub pending_scans: Vec<String>,
    pub dry_run: bool,
}

/// One user's usage, as it was and as recomputed from the records.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UsageCorrection {
    pub user: String,
    pub bytes_before: u64,
    pub images_before: u64,
    pub bytes_after: u64,
    pub images_after: u64,
    /// Reservations dropped: older than the longest an upload may take
    /// (`--upload-deadline`) plus the grace period, their upload long gone.
    pub stale_reservations: usize,
}

impl RepairReport {
    pub fn is_clean(&self) -> bool {
        self.orphan_objects.is_empty()
            && self.unfinished_writes.as_ref().is_none_or(Vec::is_empty)
            && self.stale_index_entries == 0
            && self.unannounced_changes == 0
            && self.expired_upload_sessions == 0
            && self.orphan_upload_objects.is_empty()
            && self.usage_corrections.is_empty()
            && self.pending_encodings.is_empty()
            && self.pending_scans.is_empty()
    }
}

impl Images {
    /// Finds (and unless `dry_run`, removes) debris older than `grace`.
    pub async fn repair(
        &self,
        grace: Duration,
        dry_run: bool,
    ) -> Result<RepairReport, DomainError> {
        let older_than = Timestamp::from_micros(
            Timestamp::now().as_micros() - i64::try_from(grace.as_micros()).unwrap_or(i64::MAX),
        );
        let mut report = RepairReport {
            dry_run,
            ..RepairReport::default()
        };

        // Events first: a delete completed here leaves its bytes to the
        // orphan pass below.
        report.unannounced_changes = self
            .metadata
            .write_missing_events(older_than, dry_run)
            .await?;

        // Index entries first: an image whose bytes are removed below must
        // not stay reachable through a stale entry meanwhile.
        report.stale_index_entries = self
            .metadata
            .remove_stale_index_entries(older_than, dry_run)
            .await?;

        let mut by_image: HashMap<ImageId, Vec<StoredObject>> = HashMap::new();
        for object in self.blobs.list_objects().await? {
            if object.modified < older_than {
                by_image.entry(object.image_id).or_default().push(object);
            }
        }
        for (id, objects) in by_image {
            let record = self.metadata.get(&id).await?;
            for object in objects {
                // Entries may share an object: it is kept while any names it.
                let referenced = record
                    .as_ref()
                    .is_some_and(|r| r.names_object(&object.object));
                if referenced {
                    continue;
                }
                let key = ObjectKey::of(&id, &object.object);
                if !dry_run {
                    self.blobs.delete(&key).await?;
                }
                report.orphan_objects.push(key.as_str().to_owned());
            }
        }
        report.orphan_objects.sort();

        // Journaled writes first: they work on stores that cannot list
        // their unfinished uploads.
        let mut unfinished = Vec::new();
        for write in self.metadata.pending_writes(older_than).await? {
            let key = ObjectKey::new(&write.image_id, &write.variant);
            if !dry_run {
                self.blobs.abort_pending(&key, &write.pending_id).await?;
                self.metadata.clear_pending_write(&write).await?;
            }
            unfinished.push(format!("{} ({})", key.as_str(), write.pending_id));
        }
        let listed = self
            .blobs
            .remove_unfinished_writes(older_than, dry_run)
            .await?;
        report.unfinished_writes = match listed {
            Some(listed) => Some(unfinished.into_iter().chain(listed).collect()),
            None if unfinished.is_empty() => None,
            None => Some(unfinished),
        };

        // Expired sessions go whatever their age: their expiry is their grace.
        report.expired_upload_sessions = self.uploads.remove_expired_sessions(dry_run).await?;
        let now = Timestamp::now();
        for (upload, modified) in self.blobs.list_staged().await? {
            let session = self.metadata.get_upload_session(&upload).await?;
            // A closed session's objects are never read again: a cancelled
            // one's go at once, a committed one's once its part URLs are
            // over and none can arrive.
            let finished = session
                .as_ref()
                .is_some_and(|s| s.cancelled || (s.committed && s.held_after_close(now).is_none()));
            let orphaned = session.is_none() && modified < older_than;
            if !(finished || orphaned) {
                continue;
            }
            if !dry_run {
                self.blobs.delete_staged(&upload).await?;
            }
            report
                .orphan_upload_objects
                .push(ObjectKey::staged_prefix(&upload));
        }

        report.usage_corrections = self.correct_usage(grace, dry_run).await?;
        report.pending_encodings = self.complete_encodings(older_than, dry_run).await?;
        report.pending_scans = self.complete_scans(older_than, dry_run).await?;

        let unfinished = report.unfinished_writes.as_ref().map_or(0, Vec::len);
        for (kind, count) in [
            ("orphan_object", report.orphan_objects.len()),
            ("unfinished_write", unfinished),
            ("stale_index_entry", report.stale_index_entries),
            ("expired_upload_session", report.expired_upload_sessions),
            ("orphan_upload_objects", report.orphan_upload_objects.len()),
            ("usage_correction", report.usage_corrections.len()),
            ("pending_encodings", report.pending_encodings.len()),
            ("pending_scans", report.pending_scans.len()),
        ] {
            metrics::counter!("imageservice_repair_findings_total", "kind" => kind)
                .increment(count as u64);
        }
        Ok(report)
    }

    /// Recomputes every user's usage from their records and the
    /// reservations still live, and writes it where it differs. Each usage
    /// item is read before the records are listed and written only if no
    /// change came in between (its revision), so an upload or delete
    /// running meanwhile is never counted twice or lost: that user is
    /// looked at again by the next pass.
    async fn correct_usage(
        &self,
        grace: Duration,
        dry_run: bool,
    ) -> Result<Vec<UsageCorrection>, DomainError> {
        let mut items: HashMap<UserId, UsageRecord> =
            self.metadata.list_usage().await?.into_iter().collect();
        let mut held: HashMap<UserId, (u64, u64)> = HashMap::new();
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let page = self
                .metadata
                .list(&ListFilter::default(), cursor.as_deref(), USAGE_PAGE)
                .await?;
            for record in &page.records {
                let entry = held.entry(record.owner.clone()).or_default();
                entry.0 += held_by(record);
                entry.1 += 1;
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let longest = self.limits.pace.deadline.saturating_add(grace);
        let stale_before = Timestamp::from_micros(
            Timestamp::now().as_micros() - i64::try_from(longest.as_micros()).unwrap_or(i64::MAX),
        );
        for user in held.keys() {
            items.entry(user.clone()).or_default();
        }
        let mut corrections = Vec::new();
        for (user, item) in items {
            let (stored_bytes, stored_images) = held.get(&user).copied().unwrap_or_default();
            let (mut live, mut stale) = (Vec::new(), Vec::new());
            for reservation in &item.reservations {
                // A session's lasts as long as the session is open; an
                // upload's, as long as an upload may run.
                let alive = match reserving_session(reservation) {
                    Some(upload) => self
                        .metadata
                        .get_upload_session(&upload)
                        .await?
                        .is_some_and(|session| session.is_open(Timestamp::now())),
                    None => reservation.started >= stale_before,
                };
                if alive {
                    live.push(reservation.clone());
                } else {
                    stale.push(reservation.clone());
                }
            }
            let recomputed = UsageRecord {
                held_bytes: stored_bytes + live.iter().map(|r| r.bytes).sum::<u64>(),
                held_images: stored_images + live.iter().map(|r| r.images).sum::<u64>(),
                reservations: live,
                ..UsageRecord::default()
            };
            if (recomputed.held_bytes, recomputed.held_images, stale.len())
                == (item.held_bytes, item.held_images, 0)
            {
                continue;
            }
            if !dry_run {
                match self
                    .metadata
                    .replace_usage(&user, &recomputed, item.revision)
                    .await
                {
                    Ok(()) => {}
                    Err(StorageError::ConditionFailed) => continue,
                    Err(error) => return Err(error.into()),
                }
            }
            corrections.push(UsageCorrection {
                user: user.to_string(),
                bytes_before: item.held_bytes,
                images_before: item.held_images,
                bytes_after: recomputed.held_bytes,
                images_after: recomputed.held_images,
                stale_reservations: stale.len(),
            });
        }
        corrections.sort_by(|a, b| a.user.cmp(&b.user));
        Ok(corrections)
    }

    /// Completes the encodings journaled before `older_than` (unless
    /// `dry_run`) and says what became of each. Images are taken one at a
    /// time: each decode goes through the render admission of uploads.
    async fn complete_encodings(
        &self,
        older_than: Timestamp,
        dry_run: bool,
    ) -> Result<Vec<String>, DomainError> {
        let mut done = Vec::new();
        for pending in self.metadata.pending_encodings(older_than).await? {
            let names: Vec<&str> = pending.encodings.iter().map(|e| e.extension()).collect();
            let what = format!("{} ({})", pending.image_id, names.join(","));
            if dry_run {
                done.push(what);
                continue;
            }
            let outcome = match self.uploads.complete_encodings(&pending).await {
                Ok(Completed::Added(count)) => format!("added {count}"),
                Ok(Completed::ImageGone) => "image gone".to_owned(),
                Ok(Completed::Undecodable) => "undecodable".to_owned(),
                Err(error) => {
                    tracing::warn!(image_id = %pending.image_id, error = %error_chain(&error), "could not complete an image's encodings; the next pass will retry");
                    "failed; left for the next pass".to_owned()
                }
            };
            done.push(format!("{what}: {outcome}"));
        }
        Ok(done)
    }

    /// Scans the images that entered `Pending` before `older_than` (unless
    /// `dry_run`) and says what became of each, oldest first, read from the
    /// review index of `Pending` images.
    async fn complete_scans(
        &self,
        older_than: Timestamp,
        dry_run: bool,
    ) -> Result<Vec<String>, DomainError> {
        let mut done = Vec::new();
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let page = self
                .metadata
                .list_for_review(ImageState::Pending, cursor.as_deref(), SCAN_PAGE)
                .await?;
            // Oldest first: past the first that is not overdue, the rest
            // are younger still.
            let overdue: Vec<_> = page
                .records
                .iter()
                .take_while(|record| scan_overdue(record, older_than))
                .cloned()
                .collect();
            let all_overdue = overdue.len() == page.records.len();
            if dry_run {
                done.extend(overdue.iter().map(|record| record.id.to_string()));
            } else {
                // Several at once: each waits for one of the replica's
                // `--max-concurrent-scans` places, so a scanner that hangs
                // costs the pass its timeout once per place, not per image;
                // one user's backlog takes at most that user's share of
                // them, and waits its turn with live uploads' scans.
                let uploads = &self.uploads;
                let outcomes = futures::stream::iter(overdue)
                    .map(|record| async move {
                        let outcome = match uploads.complete_scan(&record).await {
                            Ok(Scanned::Applied(state, reason)) if reason.is_empty() => {
                                state.to_string()
                            }
                            Ok(Scanned::Applied(state, reason)) => format!("{state} ({reason})"),
                            Ok(Scanned::Moot) => "moot".to_owned(),
                            Ok(Scanned::NoScanner) => "left pending: no --scan-url".to_owned(),
                            Err(error) => {
                                tracing::warn!(image_id = %record.id, error = %error_chain(&error), "could not apply a scan's verdict; the next pass will retry");
                                "failed; left for the next pass".to_owned()
                            }
                        };
                        format!("{}: {outcome}", record.id)
                    })
                    .buffered(SCANS_IN_FLIGHT)
                    .collect::<Vec<_>>()
                    .await;
                done.extend(outcomes);
            }
            if !all_overdue {
                return Ok(done);
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(done),
            }
        }
    }

    /// Runs the repair pass every `interval`, logging what it finds.
    pub async fn repair_periodically(self, interval: Duration, grace: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // not at start: let the service settle first
        loop {
            ticker.tick().await;
            match self.repair(grace, false).await {
                Ok(report) if report.is_clean() => tracing::debug!("repair pass: nothing to fix"),
                Ok(report) => tracing::info!(
                    orphan_objects = report.orphan_objects.len(),
                    unfinished_writes = report.unfinished_writes.as_ref().map_or(0, Vec::len),
                    stale_index_entries = report.stale_index_entries,
                    expired_upload_sessions = report.expired_upload_sessions,
                    usage_corrections = report.usage_corrections.len(),
                    pending_encodings = report.pending_encodings.len(),
                    pending_scans = report.pending_scans.len(),
                    "repair pass fixed leftovers"
                ),
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "repair pass failed; will retry")
                }
            }
        }
    }
}
