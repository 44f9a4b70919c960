//! Upload sessions: an upload that survives a cut stream and the replica
//! that received it, or whose bytes go straight to the store.
//!
//! A session is a record in the metadata store ([`UploadSessionRecord`])
//! and, until it commits, objects under `uploads/{upload_id}/` in the blob
//! store. Streamed bytes are kept as the caller sent them, in *segments* of
//! `--upload-session-segment-size`: a stream holds at most one segment in
//! memory, writes each one as soon as it is full, and writes the rest when
//! it breaks, so a later stream (on any replica) resumes from
//! [`UploadSessionRecord::persisted_size`]. A short last segment is read
//! back by the stream that resumes and written again with what follows, so
//! a session holds at most one segment that is not full.
//!
//! Streams take turns through a lease in the record: every change of the
//! record is conditional on its revision, so two streams can never both
//! write, and a replica that dies leaves a lease that simply runs out.
//!
//! Finishing runs the bytes through the same pipeline as a one-shot upload
//! ([`Uploads::store_new`]), under the image id fixed when the session
//! started, so a retried finish can only ever make that one image.
use std::collections::VecDeque;
use std::time::Duration;
use tracing::Instrument as _;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};

use super::pace::Pace;
use super::shared::{Origin, UPLOAD_OVERHEAD, UploadSlot, Uploads};
use super::spec::ValidSpec;
use super::spec::{FramePayload, UploadFrame};
use crate::domain::budget::Reservation;
use crate::domain::chunks::{Gatherer, exact_chunks};
use crate::domain::image::NewImage;
use crate::domain::image::{ImageRecord, Timestamp};
use crate::domain::ports::{
    ObjectKey, OpenSessions, SessionAdmission, SessionQuota, StorageError, WriteSize,
};
use crate::domain::scan::SCAN_REJECTED;
use crate::domain::{DomainError, ImageId, UserId};
use crate::media::content::ContentInspector;
use crate::telemetry::error_chain;

use crate::domain::session::{Delivery, Lease, Segment, UploadId, UploadSessionRecord};

/// What `QueryUploadStatus` reports.
#[derive(Debug)]
pub struct SessionStatus {
    pub persisted_size: u64,
    pub expire_time: Timestamp,
    /// The image, once committed.
    pub image: Option<ImageRecord>,
}

/// How the caller asks a direct upload to be cut (`GetUploadUrls`'
/// `part_count` or `part_sizes`).
#[derive(Clone, Debug)]
pub enum DirectParts {
    /// This many parts, of any size.
    Count(u32),
    /// Parts of exactly these sizes.
    Sizes(Vec<u64>),
}

/// The URLs of a direct upload's parts, in order.
#[derive(Debug)]
pub struct UploadUrls {
    pub urls: Vec<String>,
    pub expire_time: Timestamp,
}

/// How long after its URL expires a part may still be arriving (a `PUT`
/// is checked when it starts), capped by the URL's own lifetime: a closed
/// session's charge lasts this much longer than its URLs, and its staged
/// objects are removed then. A part still arriving after that is left to
/// the repair pass.
const PART_ARRIVAL: Duration = Duration::from_secs(60);

/// Errors after which a session cannot succeed: its bytes are wrong, so it
/// is removed rather than kept for another try.
fn is_bad_content(error: &DomainError) -> bool {
    matches!(
        error,
        DomainError::InvalidArgument(_)
            | DomainError::OutOfRange(_)
            | DomainError::DataLoss(_)
            | DomainError::TooLarge(_)
            | DomainError::AlreadyExists(_)
    ) || rejected_by_the_scanner(error)
}

/// Whether the content scanner rejected the session's image: its bytes are
/// final, and sending them again would be rejected again.
fn rejected_by_the_scanner(error: &DomainError) -> bool {
    matches!(error, DomainError::FailedPrecondition(message) if message.starts_with(SCAN_REJECTED))
}

fn session_not_found() -> DomainError {
    DomainError::NotFound("upload session not found (it may have expired)".into())
}

/// The refusal of a session over its owner's caps: a fixed limit, not
/// worth retrying until one of the owner's sessions ends.
fn over_quota(refused: SessionAdmission, quota: SessionQuota, staged: u64) -> DomainError {
    DomainError::TooLarge(match refused {
        SessionAdmission::TooManyOpen => format!(
            "you have {} upload sessions open, the most allowed \
             (--max-open-sessions-per-user): complete or cancel one first",
            quota.max_open
        ),
        _ => format!(
            "a session of {staged} bytes would take your open upload sessions over {} bytes \
             (--max-staged-bytes-per-user; a session without expected_size counts as \
             --max-image-bytes): complete or cancel one first",
            quota.max_staged_bytes
        ),
    })
}

/// The refusal of a `StartUpload` whose idempotency key names a closed
/// session whose part URLs may still store parts.
fn reopens_live_urls() -> DomainError {
    DomainError::FailedPrecondition(
        "the upload session of this idempotency key was closed, and its upload URLs may still \
         be used: start the upload with a new idempotency key"
            .into(),
    )
}

fn lost_lease() -> DomainError {
    DomainError::Aborted(
        "the upload session was changed by another call (another stream took it over, or it \
         was cancelled); query its status and resume"
            .into(),
    )
}

fn part_name(index: usize) -> String {
    format!("part-{index:05}")
}

/// A stream's bytes not yet in a segment, from `start` (the persisted size,
/// or the offset of a short last segment read back): the received chunks
/// themselves, shared rather than copied.
#[derive(Default)]
struct Tail {
    start: u64,
    pieces: VecDeque<Bytes>,
    len: u64,
    /// The short last segment these bytes begin with, replaced by the next
    /// segment written.
    replaces: Option<Segment>,
}

impl Tail {
    fn end(&self) -> u64 {
        self.start + self.len
    }

    fn push(&mut self, piece: Bytes) {
        self.len += piece.len() as u64;
        self.pieces.push_back(piece);
    }

    /// The first `length` bytes, as shared slices; the tail keeps them
    /// until [`Tail::advance`].
    fn prefix(&self, length: u64) -> Vec<Bytes> {
        let mut left = length as usize;
        let mut out = Vec::new();
        for piece in &self.pieces {
            if left == 0 {
                break;
            }
            let take = piece.len().min(left);
            out.push(piece.slice(..take));
            left -= take;
        }
        out
    }

    /// Drops the first `length` bytes (now in a segment).
    fn advance(&mut self, length: u64) {
        let mut left = length as usize;
        while left > 0 {
            let Some(front) = self.pieces.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                self.pieces.pop_front();
            } else {
                let _ = front.split_to(left);
                left = 0;
            }
        }
        self.start += length;
        self.len -= length;
    }

    /// Whether it holds bytes that no segment holds.
    fn has_new_bytes(&self) -> bool {
        self.replaces
            .as_ref()
            .map_or(self.len > 0, |old| self.len > old.length)
    }
}

impl Uploads {
    /// Starts a session for `spec`, validated now; a retry with the same
    /// idempotency key returns the same session.
    pub async fn start_session(
        &self,
        caller: &UserId,
        mut spec: NewImage,
        expected_size: Option<i64>,
    ) -> Result<UploadSessionRecord, DomainError> {
        match (spec.expected_size, expected_size) {
            (Some(a), Some(b)) if a != b => {
                return Err(DomainError::invalid(
                    "expected_size and spec.expected_size differ",
                ));
            }
            (None, Some(size)) => spec.expected_size = Some(size),
            _ => {}
        }
        let valid = ValidSpec::parse(spec.clone())?;
        ContentInspector::new(self.limits.content, valid.declared.clone())?;
        // Stored as it will be used: every field of the record is then
        // within the metadata limits (the filename is cut, not refused).
        spec.filename = valid.filename.clone();
        // Not race-free, but the commit's reservation is: a session that
        // starts as an erasure is marked stores nothing.
        let usage = self.metadata.get_usage(caller).await?;
        if usage.is_being_erased() {
            return Err(crate::domain::quota::being_erased());
        }
        let erased = usage.erasure.as_ref().map(|erasure| erasure.requested);
        let id = match &valid.idempotency_key {
            Some(key) => UploadId::for_idempotency_key(caller, key, erased),
            None => UploadId::new(),
        };
        let now = Timestamp::now();
        let staged_bytes = valid.declared.size.unwrap_or(self.limits.content.max_bytes);
        let record = UploadSessionRecord {
            id,
            owner: caller.clone(),
            image_id: ImageId::new(),
            spec,
            create_time: now,
            expire_time: now.saturating_add(self.limits.sessions.ttl),
            revision: 1,
            delivery: Delivery::Undecided,
            segments: Vec::new(),
            lease: None,
            committed: false,
            staged_bytes,
            charge_until: None,
            urls_until: None,
            cancelled: false,
        };
        let quota = self.limits.sessions.per_user;
        for _ in 0..2 {
            match self.metadata.create_upload_session(&record, quota).await {
                Ok(SessionAdmission::Created) => {
                    // The session's bytes count in its owner's usage while
                    // it lives; past the quota it goes again at once.
                    let reserved = self
                        .quotas
                        .reserve_for_session(caller, &id, staged_bytes)
                        .await;
                    if let Err(error) = reserved {
                        self.remove_session(&record).await?;
                        return Err(error);
                    }
                    metrics::counter!("imageservice_upload_sessions_started_total").increment(1);
                    return Ok(record);
                }
                Ok(refused) => {
                    metrics::counter!("imageservice_upload_session_refusals_total").increment(1);
                    return Err(over_quota(refused, quota, staged_bytes));
                }
                Err(StorageError::AlreadyExists) => {}
                Err(error) => return Err(error.into()),
            }
            match self.metadata.get_upload_session(&id).await? {
                Some(existing) if existing.owner == *caller => {
                    // Only the owner's key leads here. An expired session of
                    // that key, or one whose image was deleted since, makes
                    // way for the new one.
                    let image_deleted = existing.committed
                        && self.metadata.get(&existing.image_id).await?.is_none();
                    if !existing.cancelled && !existing.is_expired(now) && !image_deleted {
                        return Ok(existing);
                    }
                    // A session under the same id would make the old
                    // session's part URLs work again.
                    if existing.urls_live(now) {
                        return Err(reopens_live_urls());
                    }
                    self.remove_session(&existing).await?;
                }
                Some(_) => return Err(DomainError::Internal("upload id collision".into())),
                None => {}
            }
        }
        Err(DomainError::Aborted(
            "the upload session changed while it was started; retry".into(),
        ))
    }

    /// The session, if `caller` owns it and it has not expired. Another
    /// user's session is NOT_FOUND like a missing one: ids derive from the
    /// owner and the idempotency key, so any other answer would confirm a
    /// guess.
    async fn owned_session(
        &self,
        caller: &UserId,
        upload_id: &str,
    ) -> Result<UploadSessionRecord, DomainError> {
        let id = UploadId::parse(upload_id)?;
        self.metadata
            .get_upload_session(&id)
            .await?
            .filter(|s| !s.is_expired(Timestamp::now()) && !s.cancelled && s.owner == *caller)
            .ok_or_else(session_not_found)
    }

    /// Stores `session` if it is unchanged since it was read, bumping its
    /// revision; ABORTED when another call changed it first.
    async fn save_session(&self, session: &mut UploadSessionRecord) -> Result<(), DomainError> {
        let expected = session.revision;
        session.revision += 1;
        match self
            .metadata
            .replace_upload_session(session, expected)
            .await
        {
            Ok(()) => Ok(()),
            Err(StorageError::ConditionFailed | StorageError::NotFound) => {
                session.revision = expected;
                Err(lost_lease())
            }
            Err(error) => {
                session.revision = expected;
                Err(error.into())
            }
        }
    }

    /// Takes the session's lease for `holder` for `duration`, `finishing`
    /// when it is taken to store the image (a cancel is refused while it
    /// lasts): ABORTED when another stream holds it.
    async fn take_lease(
        &self,
        session: &mut UploadSessionRecord,
        holder: &str,
        duration: Duration,
        finishing: bool,
    ) -> Result<(), DomainError> {
        let now = Timestamp::now();
        if session.leased_to_other(holder, now) {
            return Err(DomainError::Aborted(
                "another call is writing or completing this upload session; retry when it has \
                 ended"
                    .into(),
            ));
        }
        session.lease = Some(Lease {
            holder: holder.to_owned(),
            until: now.saturating_add(duration),
            finishing,
        });
        self.save_session(session).await
    }

    /// Gives the lease up, if it is still ours; failures only delay the
    /// next stream until the lease runs out.
    async fn release_lease(&self, session: &mut UploadSessionRecord) {
        session.lease = None;
        if let Err(error) = self.save_session(session).await {
            tracing::debug!(error = %error_chain(&error), "could not release an upload session's lease");
        }
    }

    /// The image of a committed session.
    async fn committed_image(
        &self,
        session: &UploadSessionRecord,
    ) -> Result<ImageRecord, DomainError> {
        self.metadata.get(&session.image_id).await?.ok_or_else(|| {
            DomainError::NotFound(
                "the upload session's image was deleted after it was stored".into(),
            )
        })
    }

    /// Removes the session and every object it holds: the record first, so
    /// that a stream still writing fails its next change and removes what
    /// it wrote.
    pub(in crate::domain) async fn remove_session(
        &self,
        session: &UploadSessionRecord,
    ) -> Result<(), DomainError> {
        self.metadata.delete_upload_session(&session.id).await?;
        self.quotas.end_session(&session.owner, &session.id).await;
        self.blobs.delete_staged(&session.id).await?;
        self.clean_up_after_urls(session);
        Ok(())
    }

    /// A closed session whose part URLs cannot be revoked: what they store
    /// until they are over is removed once they are, when its tombstone
    /// stops counting ([`UploadSessionRecord::charge_until`]). Should this
    /// process stop first, the repair pass removes it.
    fn clean_up_after_urls(&self, session: &UploadSessionRecord) {
        let Some(until) = session.held_after_close(Timestamp::now()) else {
            return;
        };
        let wait =
            Duration::from_micros((until.as_micros() - Timestamp::now().as_micros()).max(0) as u64);
        let (blobs, metadata, closed) =
            (self.blobs.clone(), self.metadata.clone(), session.clone());
        tokio::spawn(
            async move {
                tokio::time::sleep(wait).await;
                // A session started again under the same id (the same
                // idempotency key) keeps its parts.
                match metadata.get_upload_session(&closed.id).await {
                    Ok(Some(current))
                        if current.create_time != closed.create_time && !current.committed =>
                    {
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(error = %error_chain(&error), upload_id = %closed.id, "could not read a closed upload session; the repair pass removes its bytes");
                        return;
                    }
                    Ok(_) => {}
                }
                if let Err(error) = blobs.delete_staged(&closed.id).await {
                    tracing::warn!(error = %error_chain(&error), upload_id = %closed.id, "could not remove what a closed upload session's URLs stored; the repair pass removes it");
                }
            }
            .in_current_span(),
        );
    }

    /// After a commit: the session's objects are not needed any more.
    async fn mark_committed(&self, session: &mut UploadSessionRecord) {
        session.committed = true;
        session.lease = None;
        if let Err(error) = self.save_session(session).await {
            tracing::warn!(error = %error_chain(&error), upload_id = %session.id, "could not mark an upload session committed; finishing it again returns the same image");
        }
        if let Err(error) = self.blobs.delete_staged(&session.id).await {
            tracing::warn!(error = %error_chain(&error), upload_id = %session.id, "could not delete a committed upload session's bytes; the repair pass removes them when it expires");
        }
        self.clean_up_after_urls(session);
        metrics::counter!("imageservice_upload_sessions_committed_total").increment(1);
    }

    pub async fn session_status(
        &self,
        caller: &UserId,
        upload_id: &str,
    ) -> Result<SessionStatus, DomainError> {
        let session = self.owned_session(caller, upload_id).await?;
        let image = if session.committed {
            Some(self.committed_image(&session).await?)
        } else {
            None
        };
        Ok(SessionStatus {
            persisted_size: session.persisted_size(),
            expire_time: session.expire_time,
            image,
        })
    }

    /// Cancels a session. The cancel and a store of the session's image
    /// (a stream's finish, `CompleteUpload`) agree through the session's
    /// conditional update: once a store has claimed the session (its
    /// finishing lease), the cancel is refused; once the cancel is saved,
    /// the store's claim fails and it stores nothing.
    pub async fn cancel_session(
        &self,
        caller: &UserId,
        upload_id: &str,
    ) -> Result<(), DomainError> {
        let mut tries = 0;
        let session = loop {
            let mut session = self.owned_session(caller, upload_id).await?;
            if session.committed {
                return Err(DomainError::FailedPrecondition(
                    "the upload session is committed: delete its image instead".into(),
                ));
            }
            if session.is_finishing(Timestamp::now()) {
                return Err(DomainError::FailedPrecondition(
                    "the upload is being completed: query its status (QueryUploadStatus) and \
                     delete its image once it is stored"
                        .into(),
                ));
            }
            // Closed first, by a conditional update: a store that has not
            // claimed the session yet can no longer claim it.
            session.cancelled = true;
            session.lease = None;
            match self.save_session(&mut session).await {
                Ok(()) => break session,
                // Changed by a call still running on it: read it again.
                Err(DomainError::Aborted(_)) if tries < 3 => tries += 1,
                Err(error) => return Err(error),
            }
        };
        if session.urls_live(Timestamp::now()) {
            // Its part URLs still live: the record stays, closed, until
            // they are over, so that its idempotency key cannot reopen them.
            self.quotas.end_session(&session.owner, &session.id).await;
            self.blobs.delete_staged(&session.id).await?;
            self.clean_up_after_urls(&session);
        } else {
            self.remove_session(&session).await?;
        }
        metrics::counter!("imageservice_upload_sessions_cancelled_total").increment(1);
        Ok(())
    }

    /// Continues a session from the stream after its `resume` message; the
    /// work runs on its own task, so that what the stream sent is kept even
    /// when the call is cancelled or its connection drops.
    pub(super) async fn resume<S>(
        &self,
        caller: &UserId,
        upload_id: &str,
        write_offset: i64,
        (finished, pace, frames, slot): (bool, Pace, S, UploadSlot),
    ) -> Result<ImageRecord, DomainError>
    where
        S: Stream<Item = Result<UploadFrame, DomainError>> + Send + Unpin + 'static,
    {
        let session = self.owned_session(caller, upload_id).await?;
        if session.committed {
            return self.committed_image(&session).await;
        }
        if matches!(session.delivery, Delivery::Direct { .. }) {
            return Err(DomainError::FailedPrecondition(
                "this upload session's bytes are sent with upload URLs: call CompleteUpload".into(),
            ));
        }
        let offset = u64::try_from(write_offset)
            .map_err(|_| DomainError::invalid("write_offset must not be negative"))?;
        let persisted = session.persisted_size();
        if offset > persisted {
            return Err(DomainError::OutOfRange(format!(
                "write_offset {offset} is beyond the {persisted} bytes the upload session holds; \
                 resume from {persisted}"
            )));
        }
        let uploads = self.clone();
        let caller = caller.clone();
        tokio::spawn(
            async move {
                let _slot = slot;
                let mut stream = SessionStream {
                    uploads: &uploads,
                    session,
                    holder: uuid::Uuid::new_v4().to_string(),
                    reservation: None,
                };
                stream.run(&caller, offset, finished, pace, frames).await
            }
            .in_current_span(),
        )
        .await
        .map_err(|e| DomainError::Internal(Box::new(e)))?
    }

    /// Presigned URLs for the parts of a direct upload.
    pub async fn upload_urls(
        &self,
        caller: &UserId,
        upload_id: &str,
        parts: DirectParts,
        expires_in: Option<Duration>,
    ) -> Result<UploadUrls, DomainError> {
        let mut session = self.owned_session(caller, upload_id).await?;
        if session.committed {
            return Err(DomainError::FailedPrecondition(
                "the upload session is committed".into(),
            ));
        }
        if !session.segments.is_empty() {
            return Err(DomainError::FailedPrecondition(
                "this upload session's bytes are being streamed: resume it with UploadImage".into(),
            ));
        }
        let max_parts = self.limits.sessions.max_parts.max(1);
        // What the session may stage, for all its parts together.
        let max_bytes = match session.staged_bytes {
            0 => self.limits.content.max_bytes,
            staged => staged.min(self.limits.content.max_bytes),
        };
        let sizes: Vec<WriteSize> = match parts {
            DirectParts::Count(_) if !self.blobs.bounds_presigned_parts() => {
                return Err(DomainError::invalid(
                    "this store bounds a part only by its exact size: send part_sizes \
                     rather than part_count",
                ));
            }
            DirectParts::Count(n) if (1..=max_parts).contains(&n) => {
                vec![WriteSize::AtMost(max_bytes); n as usize]
            }
            DirectParts::Sizes(sizes) if (1..=max_parts as usize).contains(&sizes.len()) => {
                if sizes.contains(&0) {
                    return Err(DomainError::invalid("part sizes must be positive"));
                }
                let total: u64 = sizes.iter().sum();
                if total > self.limits.content.max_bytes {
                    return Err(DomainError::TooLarge(format!(
                        "the parts add up to {total} bytes, over the {} byte limit \
                         (--max-image-bytes)",
                        self.limits.content.max_bytes
                    )));
                }
                if let Some(declared) = session.spec.expected_size
                    && declared as u64 != total
                {
                    return Err(DomainError::OutOfRange(format!(
                        "the parts add up to {total} bytes, but expected_size is {declared}"
                    )));
                }
                sizes.into_iter().map(WriteSize::Exact).collect()
            }
            _ => {
                return Err(DomainError::invalid(format!(
                    "a direct upload has 1 to {max_parts} parts (--max-upload-parts)"
                )));
            }
        };
        let now = Timestamp::now();
        if session.leased_to_other("", now) {
            return Err(DomainError::Aborted(
                "the upload session is being completed".into(),
            ));
        }
        let left = Duration::from_micros(
            (session.expire_time.as_micros() - now.as_micros()).max(0) as u64,
        );
        let longest = self.limits.sessions.url_expiry;
        let expires_in = expires_in.unwrap_or(longest).min(longest).min(left);
        let planned: Vec<u64> = sizes
            .iter()
            .map(|size| match size {
                WriteSize::Exact(n) => *n,
                WriteSize::AtMost(_) => 0,
            })
            .collect();
        if let Delivery::Direct { sizes: before, .. } = &session.delivery
            && !before.is_empty()
            && *before != planned
        {
            return Err(DomainError::FailedPrecondition(format!(
                "this upload session's URLs were made for other parts ({} of them): ask for \
                 the same parts again, or cancel it and start another",
                before.len()
            )));
        }
        session.delivery = Delivery::Direct {
            parts: sizes.len() as u32,
            sizes: planned,
        };
        // Recorded before any URL exists: whatever closes the session
        // keeps its id (and, where the store cannot revoke the URLs, its
        // charge) until these URLs are over.
        let over = now.saturating_add(expires_in + PART_ARRIVAL.min(expires_in));
        session.urls_until = session.urls_until.max(Some(over));
        if !self.blobs.revokes_presigned_writes() {
            session.charge_until = session.charge_until.max(Some(over));
        }
        self.save_session(&mut session).await?;
        let mut urls = Vec::with_capacity(sizes.len());
        let mut expire_time = session.expire_time;
        for (index, size) in sizes.into_iter().enumerate() {
            let key = ObjectKey::staged(&session.id, &part_name(index));
            let url = self.blobs.presign_write(&key, expires_in, size).await?;
            expire_time = expire_time.min(url.expire_time);
            urls.push(url.url);
        }
        Ok(UploadUrls { urls, expire_time })
    }

    /// Reads a direct upload's parts back, stores the image like a
    /// streamed upload and commits the session. The work runs on its own
    /// task: a caller that goes away does not leave the session leased.
    pub async fn complete_session(
        &self,
        caller: &UserId,
        upload_id: &str,
    ) -> Result<ImageRecord, DomainError> {
        let uploads = self.clone();
        let (caller, upload_id) = (caller.clone(), upload_id.to_owned());
        tokio::spawn(async move { uploads.complete(&caller, &upload_id).await }.in_current_span())
            .await
            .map_err(|e| DomainError::Internal(Box::new(e)))?
    }

    async fn complete(&self, caller: &UserId, upload_id: &str) -> Result<ImageRecord, DomainError> {
        let mut session = self.owned_session(caller, upload_id).await?;
        if session.committed {
            return self.committed_image(&session).await;
        }
        let Delivery::Direct { parts, .. } = session.delivery else {
            return Err(DomainError::FailedPrecondition(
                "no upload URLs were handed out for this upload session (GetUploadUrls)".into(),
            ));
        };
        let slot = self.slot(caller).await?;
        let holder = uuid::Uuid::new_v4().to_string();
        let deadline = self.limits.pace.deadline;
        if let Err(error) = self.take_lease(&mut session, &holder, deadline, true).await {
            // Cancelled since it was read: say so, rather than ask for a
            // retry that would say it then.
            return Err(match self.owned_session(caller, upload_id).await {
                Err(gone @ DomainError::NotFound(_)) => gone,
                _ => error,
            });
        }
        let mut keys = Vec::with_capacity(parts as usize);
        for index in 0..parts as usize {
            let key = ObjectKey::staged(&session.id, &part_name(index));
            match self.blobs.object_size(&key).await {
                Ok(Some(size)) => keys.push((key, size)),
                Ok(None) => {
                    self.release_lease(&mut session).await;
                    return Err(DomainError::FailedPrecondition(format!(
                        "part {index} of the upload has not been sent to its URL"
                    )));
                }
                Err(error) => {
                    self.release_lease(&mut session).await;
                    return Err(error.into());
                }
            }
        }
        let total: u64 = keys.iter().map(|(_, size)| size).sum();
        let stored = if total > self.limits.content.max_bytes {
            Err(DomainError::TooLarge(format!(
                "the uploaded parts add up to {total} bytes, over the {} byte limit \
                 (--max-image-bytes)",
                self.limits.content.max_bytes
            )))
        } else {
            let chunks = read_in_order(self.blobs.clone(), keys);
            self.store_session(caller, &session, chunks).await
        };
        drop(slot);
        self.conclude(&mut session, stored).await
    }

    /// Runs a session's bytes, `chunks` in order, through the upload
    /// pipeline under its image id.
    async fn store_session<S>(
        &self,
        caller: &UserId,
        session: &UploadSessionRecord,
        chunks: S,
    ) -> Result<ImageRecord, DomainError>
    where
        S: Stream<Item = Result<Bytes, DomainError>> + Send + Unpin,
    {
        if self.metadata.get(&session.image_id).await?.is_some() {
            // Stored by an earlier attempt that could not say so.
            return self.committed_image(session).await;
        }
        let spec = ValidSpec::parse(session.spec.clone())?;
        let frames = chunks
            .map_ok(|data| UploadFrame {
                payload: FramePayload::Chunk { data, crc32c: None },
                finish: false,
            })
            .chain(futures::stream::once(async {
                Ok(UploadFrame {
                    payload: FramePayload::Nothing,
                    finish: true,
                })
            }));
        let frames = Box::pin(frames);
        let stored = self
            .store_new(
                caller,
                spec,
                false,
                Pace::new(&self.limits.pace),
                frames,
                Origin::Session(session.image_id, &session.id),
            )
            .await;
        match stored {
            // A finish whose lease ran out while another one stored the
            // image: it wrote over nothing of it and removed nothing.
            Err(error) if self.metadata.get(&session.image_id).await?.is_some() => {
                tracing::info!(error = %error_chain(&error), upload_id = %session.id, "another finish stored this upload session's image first");
                self.committed_image(session).await
            }
            other => other,
        }
    }

    /// Commits the session after a successful store, removes it after bad
    /// content, or gives its lease up for another try.
    async fn conclude(
        &self,
        session: &mut UploadSessionRecord,
        stored: Result<ImageRecord, DomainError>,
    ) -> Result<ImageRecord, DomainError> {
        match &stored {
            Ok(record) => {
                // An erasure of the owner's data asked for since the session
                // began removed the session (and its reservation) under
                // this commit, and may have ended before the image was
                // stored: the image goes, as the erasure promised.
                let erased = self.erased_since(&session.owner, session.create_time).await;
                self.mark_committed(session).await;
                if erased {
                    self.withdraw(record.clone()).await;
                    return Err(crate::domain::quota::being_erased());
                }
            }
            Err(error) if is_bad_content(error) => {
                if let Err(removal) = self.remove_session(session).await {
                    tracing::warn!(error = %error_chain(&removal), upload_id = %session.id, "could not remove a refused upload session; the repair pass removes it when it expires");
                }
            }
            Err(_) => self.release_lease(session).await,
        }
        stored
    }

    /// Removes expired sessions and everything they hold (the repair pass);
    /// returns how many there were.
    pub async fn remove_expired_sessions(&self, dry_run: bool) -> Result<usize, DomainError> {
        let expired = self
            .metadata
            .expired_upload_sessions(Timestamp::now())
            .await?;
        if !dry_run {
            for session in &expired {
                self.remove_session(session).await?;
            }
        }
        Ok(expired.len())
    }
}

#[async_trait::async_trait]
impl OpenSessions for Uploads {
    async fn open_owner(&self, upload: &UploadId) -> Result<Option<UserId>, StorageError> {
        let session = self.metadata.get_upload_session(upload).await?;
        Ok(session
            .filter(|s| s.is_open(Timestamp::now()))
            .map(|s| s.owner))
    }
}

/// One stream writing a session.
struct SessionStream<'a> {
    uploads: &'a Uploads,
    session: UploadSessionRecord,
    holder: String,
    reservation: Option<Reservation>,
}

impl SessionStream<'_> {
    fn segment_bytes(&self) -> u64 {
        self.uploads.limits.sessions.segment_bytes.max(1)
    }

    /// The lease lasts as long as a stream may go without a byte, and is
    /// renewed as bytes arrive.
    fn lease_time(&self) -> Duration {
        self.uploads.limits.pace.idle_timeout + Duration::from_secs(5)
    }

    async fn run<S>(
        &mut self,
        caller: &UserId,
        offset: u64,
        finished: bool,
        mut pace: Pace,
        mut frames: S,
    ) -> Result<ImageRecord, DomainError>
    where
        S: Stream<Item = Result<UploadFrame, DomainError>> + Send + Unpin,
    {
        let lease_time = self.lease_time();
        let holder = self.holder.clone();
        self.uploads
            .take_lease(&mut self.session, &holder, lease_time, false)
            .await?;
        if self.session.delivery == Delivery::Undecided {
            self.session.delivery = Delivery::Streamed;
        }
        let mut tail = match self.read_back_tail().await {
            Ok(tail) => tail,
            Err(error) => {
                self.uploads.release_lease(&mut self.session).await;
                return Err(error);
            }
        };
        let received = if finished {
            Ok(())
        } else {
            self.receive(offset, &mut tail, &mut pace, &mut frames)
                .await
        };
        if let Err(error) = received {
            return Err(self.keep(&mut tail, error).await);
        }
        // The lease now covers the pipeline, which ends within the deadline.
        let deadline = self.uploads.limits.pace.deadline;
        self.uploads
            .take_lease(&mut self.session, &holder, deadline, true)
            .await?;
        let chunks = self.all_bytes(&tail);
        let stored = self
            .uploads
            .store_session(caller, &self.session, chunks)
            .await;
        match stored {
            // Kept for another try of the finish (which gives the lease up).
            Err(error) if !is_bad_content(&error) => Err(self.keep(&mut tail, error).await),
            other => self.uploads.conclude(&mut self.session, other).await,
        }
    }

    /// A tail starting at the persisted size, holding the short last
    /// segment read back if there is one.
    async fn read_back_tail(&mut self) -> Result<Tail, DomainError> {
        let persisted = self.session.persisted_size();
        let mut tail = Tail {
            start: persisted,
            ..Tail::default()
        };
        let Some(last) = self.session.segments.last().cloned() else {
            return Ok(tail);
        };
        if last.length >= self.segment_bytes() {
            return Ok(tail);
        }
        self.reserve(last.length).await?;
        let key = ObjectKey::staged(&self.session.id, &last.name);
        let mut stream = self.uploads.blobs.read(&key, 0, last.length).await?;
        while let Some(piece) = stream.next().await {
            tail.push(piece?);
        }
        if tail.len != last.length {
            return Err(DomainError::Internal(
                "an upload session's segment is shorter than recorded".into(),
            ));
        }
        tail.start = last.offset;
        tail.replaces = Some(last);
        Ok(tail)
    }

    /// Grows the stream's memory reservation to `bytes` plus a message,
    /// counted against the session owner's share of the budget too.
    async fn reserve(&mut self, bytes: u64) -> Result<(), DomainError> {
        let wanted = bytes + UPLOAD_OVERHEAD;
        let budget = &self.uploads.budget;
        let owner = &self.session.owner;
        match &mut self.reservation {
            Some(reservation) => {
                budget
                    .grow_for(owner, reservation, wanted, "an upload")
                    .await
            }
            None => {
                self.reservation = Some(budget.reserve_for(owner, wanted, "an upload").await?);
                Ok(())
            }
        }
    }

    /// Reads chunks until `finish`, writing a segment whenever one is full.
    async fn receive<S>(
        &mut self,
        offset: u64,
        tail: &mut Tail,
        pace: &mut Pace,
        frames: &mut S,
    ) -> Result<(), DomainError>
    where
        S: Stream<Item = Result<UploadFrame, DomainError>> + Send + Unpin,
    {
        let limit = self
            .session
            .spec
            .expected_size
            .map_or(self.uploads.limits.content.max_bytes, |n| n as u64);
        let mut position = offset;
        let mut lease_renewed = tokio::time::Instant::now();
        loop {
            let held = tail.end();
            let frame = pace
                .next_after_first(frames, || {
                    format!(
                        "the upload stream ended without finish_write; {held} bytes are kept: \
                         resume from there"
                    )
                })
                .await?;
            if let FramePayload::Chunk { data, crc32c } = frame.payload {
                if let Some(expected) = crc32c
                    && crc32c::crc32c(&data) != expected
                {
                    return Err(DomainError::DataLoss(
                        "a chunk does not match its chunk_crc32c".into(),
                    ));
                }
                pace.progressed(data.len());
                let end = position + data.len() as u64;
                // Bytes the session holds already are skipped.
                let skip = tail.end().saturating_sub(position).min(data.len() as u64);
                position = end;
                let new = data.slice(skip as usize..);
                if !new.is_empty() {
                    if end > limit {
                        return Err(if self.session.spec.expected_size.is_some() {
                            DomainError::OutOfRange(format!(
                                "the upload is longer than its expected_size of {limit} bytes"
                            ))
                        } else {
                            DomainError::TooLarge(format!(
                                "the image is larger than the {limit} byte limit \
                                 (--max-image-bytes)"
                            ))
                        });
                    }
                    self.reserve(tail.len + new.len() as u64).await?;
                    tail.push(new);
                    while tail.len >= self.segment_bytes() {
                        let length = self.segment_bytes();
                        self.write_segment(tail, length).await?;
                        lease_renewed = tokio::time::Instant::now();
                    }
                }
                if lease_renewed.elapsed() > self.lease_time() / 2 {
                    let (lease_time, holder) = (self.lease_time(), self.holder.clone());
                    self.uploads
                        .take_lease(&mut self.session, &holder, lease_time, false)
                        .await?;
                    lease_renewed = tokio::time::Instant::now();
                }
            }
            if frame.finish {
                return Ok(());
            }
        }
    }

    /// Writes the first `length` bytes of the tail as a segment and records
    /// it (renewing the lease), then drops the segment it replaces.
    /// On failure the tail is as it was.
    async fn write_segment(&mut self, tail: &mut Tail, length: u64) -> Result<(), DomainError> {
        let segment = Segment {
            offset: tail.start,
            length,
            name: format!("{:016x}-{}", tail.start, self.session.revision + 1),
        };
        let key = ObjectKey::staged(&self.session.id, &segment.name);
        let mut writer = self.uploads.blobs.start_write(&key, Some(length)).await?;
        for piece in Gatherer::for_writes().gather_all(tail.prefix(length)) {
            if let Err(error) = writer.write(piece).await {
                writer.abort().await;
                return Err(error.into());
            }
        }
        writer.finish().await?;
        let replaced = tail.replaces.clone();
        if let Some(old) = &replaced {
            self.session.segments.retain(|s| s.name != old.name);
        }
        self.session.segments.push(segment.clone());
        self.session.lease = Some(Lease {
            holder: self.holder.clone(),
            until: Timestamp::now().saturating_add(self.lease_time()),
            finishing: false,
        });
        if let Err(error) = self.uploads.save_session(&mut self.session).await {
            // Not recorded: the segment is nobody's.
            self.session.segments.retain(|s| s.name != segment.name);
            if let Some(old) = replaced {
                self.session.segments.push(old);
            }
            let _ = self.uploads.blobs.delete(&key).await;
            return Err(error);
        }
        tail.replaces = None;
        tail.advance(length);
        if let Some(old) = replaced {
            let old_key = ObjectKey::staged(&self.session.id, &old.name);
            if let Err(error) = self.uploads.blobs.delete(&old_key).await {
                tracing::debug!(error = %error_chain(&error), "could not delete a replaced upload segment; it goes with its session");
            }
        }
        metrics::counter!("imageservice_upload_session_segments_total").increment(1);
        Ok(())
    }

    /// After the stream broke (or a finish failed for a reason worth
    /// another try): keeps what the tail holds, gives the lease up, and
    /// returns `error` with the offset to resume from.
    async fn keep(&mut self, tail: &mut Tail, error: DomainError) -> DomainError {
        // Removed under the stream (an erasure of its owner's data): that
        // is why it broke, and there is nothing to keep.
        if let Ok(None) = self
            .uploads
            .metadata
            .get_upload_session(&self.session.id)
            .await
        {
            tracing::info!(upload_id = %self.session.id, reason = %error, "upload session removed while its stream ran");
            let (owner, began) = (&self.session.owner, self.session.create_time);
            return if self.uploads.erased_since(owner, began).await {
                crate::domain::quota::being_erased()
            } else {
                session_not_found()
            };
        }
        if tail.has_new_bytes() {
            let length = tail.len;
            if let Err(kept) = self.write_segment(tail, length).await {
                tracing::warn!(error = %error_chain(&kept), upload_id = %self.session.id, "could not keep the end of a broken upload stream");
                return error;
            }
        }
        self.uploads.release_lease(&mut self.session).await;
        tracing::info!(upload_id = %self.session.id, persisted = self.session.persisted_size(), reason = %error, "upload session stream ended before finish");
        match error {
            DomainError::Cancelled | DomainError::Unavailable(_) | DomainError::Internal(_) => {
                error
            }
            DomainError::InvalidArgument(message) if message.contains("resume from") => {
                DomainError::InvalidArgument(message)
            }
            other => with_resume_hint(other, self.session.persisted_size()),
        }
    }

    /// The session's bytes in order: its segments from the store, then the
    /// tail in memory.
    fn all_bytes(
        &self,
        tail: &Tail,
    ) -> futures::stream::BoxStream<'static, Result<Bytes, DomainError>> {
        let replaced = tail.replaces.as_ref().map(|s| s.name.clone());
        let segments: Vec<(ObjectKey, u64)> = self
            .session
            .segments
            .iter()
            .filter(|s| Some(&s.name) != replaced.as_ref())
            .map(|s| (ObjectKey::staged(&self.session.id, &s.name), s.length))
            .collect();
        let stored = read_in_order(self.uploads.blobs.clone(), segments);
        let rest: Vec<Result<Bytes, DomainError>> = tail.pieces.iter().cloned().map(Ok).collect();
        stored.chain(futures::stream::iter(rest)).boxed()
    }
}

/// The objects `keys` (with their sizes), one after the other, in messages
/// of 256 KiB to 1 MiB, each object exactly as long as recorded.
fn read_in_order(
    blobs: std::sync::Arc<dyn crate::domain::ports::BlobStore>,
    keys: Vec<(ObjectKey, u64)>,
) -> futures::stream::BoxStream<'static, Result<Bytes, DomainError>> {
    futures::stream::iter(keys)
        .then(move |(key, size)| {
            let blobs = blobs.clone();
            async move {
                let stream = blobs.read(&key, 0, size).await?;
                Ok::<_, DomainError>(exact_chunks(stream, size))
            }
        })
        .try_flatten()
        .boxed()
}

/// `error` with the offset a new stream resumes from.
fn with_resume_hint(error: DomainError, persisted: u64) -> DomainError {
    let hint = |message: String| format!("{message}; the upload session holds {persisted} bytes");
    match error {
        DomainError::InvalidArgument(m) => DomainError::InvalidArgument(hint(m)),
        DomainError::OutOfRange(m) => DomainError::OutOfRange(hint(m)),
        DomainError::DataLoss(m) => DomainError::DataLoss(hint(m)),
        DomainError::DeadlineExceeded(m) => DomainError::DeadlineExceeded(hint(m)),
        DomainError::ResourceExhausted(m) => DomainError::ResourceExhausted(hint(m)),
        DomainError::TooLarge(m) => DomainError::TooLarge(hint(m)),
        DomainError::Aborted(m) => DomainError::Aborted(hint(m)),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail_of(pieces: &[&[u8]]) -> Tail {
        let mut tail = Tail {
            start: 100,
            ..Tail::default()
        };
        for piece in pieces {
            tail.push(Bytes::copy_from_slice(piece));
        }
        tail
    }

    #[test]
    fn a_tail_gives_its_prefix_and_keeps_the_rest() {
        let mut tail = tail_of(&[b"abc", b"defg", b"h"]);
        assert_eq!((tail.len, tail.end()), (8, 108));
        assert_eq!(tail.prefix(5).concat(), b"abcde");
        assert_eq!(tail.len, 8, "a prefix takes nothing away");
        tail.advance(5);
        assert_eq!((tail.start, tail.len), (105, 3));
        assert_eq!(tail.prefix(3).concat(), b"fgh");
        tail.advance(3);
        assert!(tail.pieces.is_empty() && !tail.has_new_bytes());
    }

    #[test]
    fn a_read_back_segment_alone_is_not_new() {
        let mut tail = tail_of(&[b"0123"]);
        tail.replaces = Some(Segment {
            offset: 100,
            length: 4,
            name: "old".into(),
        });
        assert!(!tail.has_new_bytes());
        tail.push(Bytes::from_static(b"4"));
        assert!(tail.has_new_bytes());
    }
}
