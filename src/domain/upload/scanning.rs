//! The scan hook's part of an upload ([`crate::domain::scan`]): every new
//! image, from an upload stream or an upload session alike, is scanned
//! where both commit their record ([`Uploads::commit`]).
//!
//! - `sync`: the verdict is taken before the record is stored. A rejected
//!   image is not stored at all (the upload fails and undoes its writes);
//!   a quarantined one is stored `Quarantined`, with an audit entry.
//! - `async`: the record is stored `Pending` and its id queued: the
//!   replica's scan worker ([`Uploads::serve_scan_queue`]) scans it once a
//!   place is free, users taking turns ([`crate::domain::scan::queue`]).
//!   The verdict goes through the moderators' state change
//!   ([`crate::domain::state_change`]): `Active`, `Quarantined`, or for a
//!   rejection `Removed` with every byte deleted. A `Pending` record is
//!   its own journal: in the review index of `Pending` images, it is
//!   scanned by the repair pass ([`Uploads::complete_scan`]) if this
//!   replica dies (or stops) first, or its queue had no room for it.
//!
//! Every scan, `sync`, queued or the repair pass's, takes one of the
//! replica's scan places in turn, within its owner's share.
//!
//! The scanner is sent the `medium` rendition, else the largest variant,
//! else the original (at most `--scan-max-bytes`: a larger one fails the
//! scan).
use bytes::BytesMut;
use futures::StreamExt;
use tracing::Instrument as _;

use super::shared::Uploads;
use crate::domain::audit::ActionKind;
use crate::domain::image::{ImageRecord, ImageState, Timestamp};
use crate::domain::ports::{ObjectKey, ScanRequest};
use crate::domain::scan::{PENDING_REASON, SCAN_REJECTED, ScanHook, ScanMode, Verdict};
use crate::domain::state_change::{Change, StateChanges, scanner};
use crate::domain::{DomainError, ImageId, VariantName};
use crate::telemetry::error_chain;

/// The rendition sent to the scanner, when it has one.
const SCANNED_VARIANT: &str = "medium";

/// What became of a `Pending` image scanned after its acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scanned {
    /// The verdict was applied: the image's state now.
    Applied(ImageState, String),
    /// The image was deleted, or a moderator decided, before the verdict.
    Moot,
    /// No scanner is configured: the image stays `Pending`.
    NoScanner,
}

impl Uploads {
    /// The one path of an image's state changes, over these stores.
    pub(in crate::domain) fn state_changes(&self) -> StateChanges {
        StateChanges::new(
            self.metadata.clone(),
            self.blobs.clone(),
            self.quotas.clone(),
        )
    }

    /// Before a new record is stored: in the `sync` mode, the verdict on
    /// it (a rejection is the upload's error; a quarantine is set on the
    /// record); in the `async` mode, the record is made `Pending`.
    pub(super) async fn scan_before_store(
        &self,
        record: &mut ImageRecord,
    ) -> Result<(), DomainError> {
        let Some(hook) = &self.scan else {
            return Ok(());
        };
        let (state, reason) = match hook.policy().mode {
            ScanMode::Async => (ImageState::Pending, PENDING_REASON.to_owned()),
            ScanMode::Sync => {
                let _place = hook.place(&record.owner).await;
                match self.verdict_on(hook, record).await {
                    Verdict::Allow => return Ok(()),
                    Verdict::Quarantine(reason) => (ImageState::Quarantined, reason),
                    Verdict::Reject(reason) => {
                        return Err(DomainError::FailedPrecondition(format!(
                            "{SCAN_REJECTED} ({reason}); nothing was stored"
                        )));
                    }
                }
            }
        };
        record.state = state;
        record.state_reason = reason;
        record.state_time = Some(record.create_time);
        Ok(())
    }

    /// Once a new record is stored: a quarantine the `sync` scan set is
    /// added to the audit trail; a `Pending` image is queued for its scan
    /// (else, when the queue is full, left to the repair pass).
    pub(super) async fn scan_after_store(&self, record: &ImageRecord) {
        let Some(hook) = &self.scan else {
            return;
        };
        match record.state {
            ImageState::Quarantined => {
                let recorded = self
                    .state_changes()
                    .record(
                        &scanner(),
                        ActionKind::ScanVerdict,
                        ImageState::Pending,
                        record,
                        &record.state_reason,
                    )
                    .await;
                if let Err(error) = recorded {
                    tracing::warn!(image_id = %record.id, error = %error_chain(&error), "could not add the scanner's quarantine to the audit trail");
                }
            }
            ImageState::Pending => {
                if !hook.queue(&record.owner, record.id) {
                    metrics::counter!("imageservice_scans_left_to_repair_total").increment(1);
                    tracing::info!(image_id = %record.id, owner = %record.owner, "the scan queue is full (--max-queued-scans, --max-queued-scans-per-user): the repair pass scans the image");
                }
            }
            ImageState::Active | ImageState::Removed => {}
        }
    }

    /// Scans a `Pending` image and applies the verdict (the repair pass's
    /// part: a replica that died, or had no room in its queue, left it),
    /// in one of the replica's scan places, within its owner's share. The
    /// record is read again once the place is given: the wait may be long,
    /// and one scanned meanwhile (by this replica's queue or another's),
    /// deleted or decided by a moderator is not scanned again.
    pub async fn complete_scan(&self, record: &ImageRecord) -> Result<Scanned, DomainError> {
        let Some(hook) = &self.scan else {
            return Ok(Scanned::NoScanner);
        };
        let _place = hook.place(&record.owner).await;
        self.scan_queued(hook, &record.id).await
    }

    /// Scans the queued `async` images as they are given places, each in
    /// a task of its own, until the returned task is aborted (the replica
    /// stops; see [`Self::stop_scan_queue`]). None without a scanner.
    pub fn serve_scan_queue(&self) -> Option<tokio::task::JoinHandle<()>> {
        let hook = self.scan.clone()?;
        let uploads = self.clone();
        Some(tokio::spawn(
            async move {
                loop {
                    let (_, id, place) = hook.next_queued().await;
                    let (uploads, hook) = (uploads.clone(), hook.clone());
                    tokio::spawn(
                        async move {
                            let _place = place;
                            if let Err(error) = uploads.scan_queued(&hook, &id).await {
                                tracing::warn!(image_id = %id, error = %error_chain(&error), "could not apply the scanner's verdict; the repair pass scans the image again");
                            }
                        }
                        .in_current_span(),
                    );
                }
            }
            .in_current_span(),
        ))
    }

    /// Drops the images still queued for a scan (they stay `PENDING`, for
    /// the repair pass) and queues no more.
    pub fn stop_scan_queue(&self) {
        if let Some(hook) = &self.scan {
            hook.close_queue();
        }
    }

    /// Scans queued image `id`, read again: one deleted, or decided by a
    /// moderator, while it waited is not scanned.
    async fn scan_queued(&self, hook: &ScanHook, id: &ImageId) -> Result<Scanned, DomainError> {
        match self.metadata.get(id).await? {
            Some(record) if record.state == ImageState::Pending => {
                self.apply_verdict(hook, &record).await
            }
            _ => Ok(Scanned::Moot),
        }
    }

    async fn apply_verdict(
        &self,
        hook: &ScanHook,
        record: &ImageRecord,
    ) -> Result<Scanned, DomainError> {
        let (state, reason) = match self.verdict_on(hook, record).await {
            Verdict::Allow => (ImageState::Active, String::new()),
            Verdict::Quarantine(reason) => (ImageState::Quarantined, reason),
            Verdict::Reject(reason) => (ImageState::Removed, reason),
        };
        let change = Change::Verdict(state, reason.clone());
        match self
            .state_changes()
            .change(&scanner(), &record.id, change, None)
            .await
        {
            Ok(after) if after.state == state && after.state_reason == reason => {
                Ok(Scanned::Applied(state, reason))
            }
            Ok(_) | Err(DomainError::NotFound(_)) => Ok(Scanned::Moot),
            Err(error) => Err(error),
        }
    }

    /// The verdict on `record`'s bytes: the scanner's, or the failure
    /// policy's when they cannot be sent.
    async fn verdict_on(&self, hook: &ScanHook, record: &ImageRecord) -> Verdict {
        match self.scan_request(hook, record).await {
            Ok(request) => hook.judge(&request).await,
            Err(why) => hook.failed(&why, &record.id.to_string()),
        }
    }

    /// What the scanner is sent of `record`: its `medium` rendition, else
    /// its largest variant, else its original.
    async fn scan_request(
        &self,
        hook: &ScanHook,
        record: &ImageRecord,
    ) -> Result<ScanRequest, String> {
        let firsts = record
            .variants
            .iter()
            .filter(|v| v.object_name().encoding().is_none());
        let chosen = firsts
            .clone()
            .find(|v| v.name.as_str() == SCANNED_VARIANT)
            .or_else(|| firsts.max_by_key(|v| v.size_bytes));
        let (rendition, key, content_type, size) = match chosen {
            Some(variant) => (
                variant.name.to_string(),
                ObjectKey::of(&record.id, &variant.object_name()),
                variant.content_type.clone(),
                variant.size_bytes,
            ),
            None => (
                VariantName::original().to_string(),
                ObjectKey::new(&record.id, &VariantName::original()),
                record.content_type.clone(),
                record.size_bytes,
            ),
        };
        let max = hook.policy().max_bytes;
        if size > max {
            return Err(format!(
                "its {rendition} is {size} bytes, over --scan-max-bytes ({max})"
            ));
        }
        let mut stream = self
            .blobs
            .read(&key, 0, size)
            .await
            .map_err(|e| format!("reading its {rendition}: {}", error_chain(&e)))?;
        let mut bytes = BytesMut::with_capacity(size as usize);
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| format!("reading its {rendition}: {}", error_chain(&e)))?;
            if (bytes.len() + chunk.len()) as u64 > max {
                return Err(format!("its {rendition} is over --scan-max-bytes ({max})"));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(ScanRequest {
            image_id: record.id,
            owner: record.owner.clone(),
            sha256: record.sha256.clone(),
            pdq_hash: record.pdq_hash.clone(),
            pdq_quality: record.pdq_quality,
            rendition,
            content_type,
            bytes: bytes.freeze(),
        })
    }
}

/// When a record's scan is due to the repair pass: it entered `Pending`
/// before `older_than`.
pub fn scan_overdue(record: &ImageRecord, older_than: Timestamp) -> bool {
    record.state == ImageState::Pending
        && record.state_time.unwrap_or(record.update_time) < older_than
}
