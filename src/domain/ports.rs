//! The ports: what the domain needs from storage. [`BlobStore`] keeps image
//! bytes and [`MetadataStore`] keeps image records; every adapter in
//! `storage/` implements both with the guarantees documented on each method,
//! and passes the same trait-level contract suite (`storage::contract`).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::audit::{ActionPage, ModerationAction};
use super::event::{ChangeKind, EventRead, EventStart};
use super::image::{Encoding, ImageState, ObjectName, Timestamp};
use super::listing::ListFilter;
use super::session::{UploadId, UploadSessionRecord};
use super::similar::{PdqHash, SimilarFound};
use super::usage::{ErasureRecord, QuotaOverride, UsageCeiling, UsageChange, UsageRecord};
use super::{DomainError, ImageId, ImageRecord, UserId, VariantName};
use crate::BoxError;

/// What went wrong in a store, by meaning rather than by backend.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object or record does not exist.
    #[error("not found")]
    NotFound,
    /// A record with this id already exists.
    #[error("already exists")]
    AlreadyExists,
    /// A conditional write found another state than expected.
    #[error("condition failed")]
    ConditionFailed,
    /// The backend could not be reached or refused for now (retryable).
    #[error("storage backend unavailable")]
    Unavailable(#[source] BoxError),
    /// Anything else: an unexpected answer, corrupt data, a local I/O error.
    #[error("storage backend error")]
    Internal(#[source] BoxError),
}

impl StorageError {
    pub fn internal(error: impl Into<BoxError>) -> Self {
        Self::Internal(error.into())
    }
}

impl From<StorageError> for DomainError {
    fn from(error: StorageError) -> Self {
        match error {
            StorageError::NotFound => DomainError::image_not_found(),
            StorageError::Unavailable(source) => DomainError::Unavailable(source),
            // Conditions and collisions that reach this conversion were not
            // expected by the use case: they are bugs, not caller errors.
            StorageError::AlreadyExists | StorageError::ConditionFailed => {
                DomainError::Internal(Box::new(error))
            }
            StorageError::Internal(source) => DomainError::Internal(source),
        }
    }
}

/// The key of a stored object. Built only from an image id and a variant
/// name (and an encoding's extension), never from caller text:
/// `images/{image_id}/{variant}` or `images/{image_id}/{variant}.{ext}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// The object named like the rendition.
    pub fn new(id: &ImageId, variant: &VariantName) -> Self {
        Self::of(id, &ObjectName::plain(variant.clone()))
    }

    /// The object `name` of the image.
    pub fn of(id: &ImageId, name: &ObjectName) -> Self {
        Self(format!("images/{id}/{name}"))
    }

    /// The image and object of an image key (every key [`ObjectKey::of`]
    /// makes); `None` for any other key.
    pub fn parse(key: &str) -> Option<(ImageId, ObjectName)> {
        let rest = key.strip_prefix("images/")?;
        let (id, name) = rest.split_once('/')?;
        let id = ImageId::parse(id).ok()?;
        let name = ObjectName::parse(name)?;
        (ObjectKey::of(&id, &name).0 == key).then_some((id, name))
    }

    /// A piece of an upload session's bytes before it commits:
    /// `uploads/{upload_id}/{name}`, `name` chosen by the service.
    pub fn staged(upload: &UploadId, name: &str) -> Self {
        Self(format!("{}{name}", Self::staged_prefix(upload)))
    }

    /// The upload session of a staged object's key; `None` for any other.
    pub fn parse_staged(key: &str) -> Option<UploadId> {
        let rest = key.strip_prefix("uploads/")?;
        let (id, name) = rest.split_once('/')?;
        let id = UploadId::parse(id).ok()?;
        (!name.is_empty() && key.starts_with(&Self::staged_prefix(&id))).then_some(id)
    }

    /// The prefix of every object of an upload session.
    pub fn staged_prefix(upload: &UploadId) -> String {
        format!("uploads/{upload}/")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A stream of an object's bytes.
pub type ByteStream = BoxStream<'static, Result<Bytes, StorageError>>;

/// How a browser should present a downloaded object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    Inline,
    Attachment,
}

/// Characters escaped in RFC 8187 `filename*` values.
const FILENAME_ESCAPES: &AsciiSet = &NON_ALPHANUMERIC.remove(b'.').remove(b'-').remove(b'_');

impl Disposition {
    /// The `Content-Disposition` header: an ASCII fallback name and the
    /// exact UTF-8 name (RFC 6266).
    pub fn header_value(self, filename: &str) -> String {
        let kind = match self {
            Disposition::Inline => "inline",
            Disposition::Attachment => "attachment",
        };
        let fallback: String = filename
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let exact = utf8_percent_encode(filename, FILENAME_ESCAPES);
        format!("{kind}; filename=\"{fallback}\"; filename*=UTF-8''{exact}")
    }
}

/// What a presigned download URL grants.
#[derive(Clone, Debug)]
pub struct PresignRequest {
    pub key: ObjectKey,
    /// The URL is signed as if made at this time (the start of the
    /// caller's URL window: at or before now, whole seconds), so that every
    /// request in the window gets the same URL...
    pub signed_at: Timestamp,
    /// ...valid for this long from `signed_at`.
    pub expires_in: Duration,
    /// Served as `Content-Type`.
    pub content_type: String,
    pub disposition: Disposition,
    /// Suggested file name for `attachment`.
    pub filename: String,
}

/// A URL that fetches an object without credentials until `expire_time`.
#[derive(Clone, Debug)]
pub struct PresignedUrl {
    pub url: String,
    pub expire_time: Timestamp,
}

/// The body a presigned upload URL accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteSize {
    /// Exactly this many bytes: the store refuses any other length.
    Exact(u64),
    /// At most this many for all the parts of the upload session
    /// together, where the store can enforce it
    /// ([`BlobStore::bounds_presigned_parts`]: the embedded store does; S3
    /// cannot bound a presigned `PUT` other than by an exact length).
    AtMost(u64),
}

/// What one user may hold in open upload sessions (neither committed nor
/// expired).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionQuota {
    /// Sessions open at once (`--max-open-sessions-per-user`).
    pub max_open: u32,
    /// Bytes their [`UploadSessionRecord::staged_bytes`] add up to
    /// (`--max-staged-bytes-per-user`).
    pub max_staged_bytes: u64,
}

/// Whether a new upload session was stored, or which cap refused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionAdmission {
    Created,
    TooManyOpen,
    TooManyStagedBytes,
}

impl SessionQuota {
    /// Whether open sessions holding `open` (each one's staged bytes; the
    /// new session's among them) fit: `open` needs no more than
    /// `max_open + 1` items to tell.
    pub fn admits(&self, open: impl IntoIterator<Item = u64>) -> SessionAdmission {
        let (mut count, mut bytes) = (0u64, 0u64);
        for staged in open {
            count += 1;
            bytes = bytes.saturating_add(staged);
        }
        if count > u64::from(self.max_open) {
            SessionAdmission::TooManyOpen
        } else if bytes > self.max_staged_bytes {
            SessionAdmission::TooManyStagedBytes
        } else {
            SessionAdmission::Created
        }
    }
}

/// Which upload sessions may still receive parts: the domain answers, for
/// a store that serves its own upload URLs (the embedded backend's HTTP
/// listener) without depending on the domain's services.
#[async_trait]
pub trait OpenSessions: Send + Sync + 'static {
    /// The owner of the session, if it exists and is neither committed nor
    /// expired: the listener caps the part bodies each user sends at once.
    async fn open_owner(&self, upload: &UploadId) -> Result<Option<UserId>, StorageError>;

    /// Whether the session exists and is neither committed nor expired.
    async fn is_open(&self, upload: &UploadId) -> Result<bool, StorageError> {
        Ok(self.open_owner(upload).await?.is_some())
    }
}

/// Which images anyone may fetch: the domain answers, for a store that
/// serves its own download URLs (the embedded backend's HTTP listener), so
/// that a URL issued before an image left `Active` stops working.
#[async_trait]
pub trait PublicImages: Send + Sync + 'static {
    /// Whether the image exists, is `Active` and holds its bytes.
    async fn is_public(&self, id: &ImageId) -> Result<bool, StorageError>;
}

/// An object as a listing of the store sees it.
#[derive(Clone, Debug)]
pub struct StoredObject {
    pub image_id: ImageId,
    pub object: ObjectName,
    pub modified: Timestamp,
}

/// Image bytes.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Starts writing the object `key`. Nothing is visible at `key` until
    /// [`BlobWriter::finish`] succeeds; [`BlobWriter::abort`], or dropping the
    /// writer, discards everything written (a drop cleans up in the
    /// background). `size_hint` is the declared size, when known.
    async fn start_write(
        &self,
        key: &ObjectKey,
        size_hint: Option<u64>,
    ) -> Result<Box<dyn BlobWriter>, StorageError>;

    /// The most memory one write of an object of `size_hint` bytes (or of
    /// unknown size) holds in buffers of the store's own at once, so the
    /// upload pipeline can reserve it before it starts (S3: part size ×
    /// (parts in flight + 1)).
    fn write_memory(&self, size_hint: Option<u64>) -> u64;

    /// Streams `length` bytes of the object from `offset`. The caller has
    /// checked the range against the object's size. `NotFound` when the
    /// object does not exist.
    async fn read(
        &self,
        key: &ObjectKey,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream, StorageError>;

    /// Deletes the object. Deleting a missing object succeeds.
    async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError>;

    /// A URL that fetches the object over HTTP without credentials, valid
    /// for `request.expires_in`, capped by [`BlobStore::max_presign_expiry`].
    async fn presign_read(&self, request: &PresignRequest) -> Result<PresignedUrl, StorageError>;

    /// The longest validity this store can give a presigned URL.
    fn max_presign_expiry(&self) -> Duration;

    /// Whether a presigned write of [`WriteSize::AtMost`] is bounded by
    /// the store, for the parts of one upload session together. S3 bounds
    /// a presigned `PUT` only by an exact length.
    fn bounds_presigned_parts(&self) -> bool {
        true
    }

    /// Whether a presigned write to a part of an upload session is refused
    /// once the session is closed (committed, cancelled, expired): the
    /// embedded store's own listener asks [`OpenSessions`] before and after
    /// it writes. A presigned S3 `PUT` cannot be revoked: a closed
    /// session's charge is then kept until its URLs are over
    /// ([`UploadSessionRecord::charge_until`]).
    fn revokes_presigned_writes(&self) -> bool {
        false
    }

    /// A cheap call that succeeds only if the store is reachable and usable
    /// (health checks call it every few seconds).
    async fn check_health(&self) -> Result<(), StorageError>;

    /// The size of the object, or `None` when it does not exist.
    async fn object_size(&self, key: &ObjectKey) -> Result<Option<u64>, StorageError>;

    /// A URL that stores the body of an HTTP `PUT` as the object `key`
    /// without credentials, valid for `expires_in` (capped like
    /// [`BlobStore::presign_read`]), for a body of `size`.
    async fn presign_write(
        &self,
        key: &ObjectKey,
        expires_in: Duration,
        size: WriteSize,
    ) -> Result<PresignedUrl, StorageError>;

    /// Deletes every object of the upload session `upload` (the keys
    /// under [`ObjectKey::staged_prefix`]). Succeeds when there are none.
    async fn delete_staged(&self, upload: &UploadId) -> Result<(), StorageError>;

    /// Every upload session that has objects in the store, with the time
    /// its newest one was written (for the repair pass: objects whose
    /// session is gone, e.g. sent to a URL after a cancel, are removed).
    async fn list_staged(&self) -> Result<Vec<(UploadId, Timestamp)>, StorageError>;

    /// Every image object in the store (for the repair pass; paginated
    /// underneath, so its cost is proportional to the store's size).
    /// Objects whose keys are not image keys are skipped.
    async fn list_objects(&self) -> Result<Vec<StoredObject>, StorageError>;

    /// Abandons the unfinished write `pending_id` of `key` (see
    /// [`BlobWriter::pending_id`]); succeeds if it is already gone.
    async fn abort_pending(&self, key: &ObjectKey, pending_id: &str) -> Result<(), StorageError>;

    /// Removes unfinished writes started before `older_than` (multipart
    /// uploads, partial files) and returns their keys. `None` when the store
    /// cannot list them.
    async fn remove_unfinished_writes(
        &self,
        older_than: Timestamp,
        dry_run: bool,
    ) -> Result<Option<Vec<String>>, StorageError>;
}

/// An object being written. See [`BlobStore::start_write`].
#[async_trait]
pub trait BlobWriter: Send {
    /// Appends bytes. May wait while earlier bytes are being stored
    /// (backpressure).
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError>;

    /// Makes the object durable and visible at its key, atomically: readers
    /// see the whole object or nothing.
    async fn finish(self: Box<Self>) -> Result<(), StorageError>;

    /// Discards everything written and waits until it is gone.
    async fn abort(self: Box<Self>);

    /// The store's id of this unfinished write, once it has one that must
    /// be cleaned up if the process dies (an S3 multipart upload id). The
    /// upload pipeline journals it, so the repair pass can abort it even on
    /// stores that cannot list unfinished uploads.
    fn pending_id(&self) -> Option<String> {
        None
    }

    /// The checksums of everything written, SHA-256 (lowercase hex) and
    /// CRC32C, when the caller has them: given before `finish`, they spare
    /// a store that sends checksums with the bytes computing them again. A
    /// wrong value makes the store refuse the write.
    fn written_checksums(&mut self, _sha256_hex: &str, _crc32c: u32) {}
}

/// What the content scanner is sent of an image (see [`Scanner`]).
#[derive(Clone, Debug)]
pub struct ScanRequest {
    pub image_id: ImageId,
    pub owner: UserId,
    /// The SHA-256 of the stored original, hex.
    pub sha256: String,
    /// The image's PDQ hash (hex) and its quality; empty when not computed.
    pub pdq_hash: String,
    pub pdq_quality: u32,
    /// The rendition sent: a variant's name or `original`.
    pub rendition: String,
    /// The media type of `bytes`.
    pub content_type: String,
    pub bytes: Bytes,
}

/// The content scanner's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanAnswer {
    Allow,
    /// Hidden with the reason given (as the scanner said it).
    Quarantine(String),
    /// Refused with the reason given.
    Reject(String),
}

/// What failed in a scan: no answer, or one that is not a verdict.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ScanFailure(pub String);

/// The content scanner an upload is sent to (`--scan-url`).
#[async_trait]
pub trait Scanner: Send + Sync + 'static {
    /// One attempt: the scanner's verdict on the image, or why there is
    /// none. The caller bounds the time it takes and retries.
    async fn scan(&self, request: &ScanRequest) -> Result<ScanAnswer, ScanFailure>;
}

/// A journaled unfinished write: see [`BlobWriter::pending_id`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PendingWrite {
    pub image_id: ImageId,
    pub variant: VariantName,
    pub pending_id: String,
    pub started: Timestamp,
}

/// A journaled promise, written before an upload is acknowledged: the
/// image needs `encodings` of its variants besides those it was stored
/// with, made in the background. Cleared once they are in its record (or
/// the image is gone); the repair pass completes what a replica that died
/// left (see [`MetadataStore::record_pending_encodings`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PendingEncodings {
    pub image_id: ImageId,
    /// Whose memory share the work is counted in.
    pub owner: UserId,
    pub encodings: Vec<Encoding>,
    pub started: Timestamp,
}

/// The result of [`MetadataStore::create`].
#[derive(Debug)]
pub enum CreateOutcome {
    /// The record was stored.
    Created,
    /// Nothing was stored: the owner already used the record's idempotency
    /// key for this image.
    IdempotencyKeyTaken(Box<ImageRecord>),
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct ListPage {
    /// Newest first.
    pub records: Vec<ImageRecord>,
    /// Where the next page starts; `None` when there is none.
    pub next_cursor: Option<Vec<u8>>,
    /// Where a listing resumes after each record: `record_cursors[i]` is a
    /// cursor for the records after `records[i]`, so a caller may end the
    /// page at any record.
    pub record_cursors: Vec<Vec<u8>>,
    /// Image records fetched to make the page (its read amplification, with
    /// `records.len()`).
    pub records_read: u64,
}

/// Most ids one [`MetadataStore::get_many`] call reads (DynamoDB's
/// `BatchGetItem` limit).
pub const MAX_BATCH_GET: usize = 100;

/// Image records and the indexes that list them.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Stores a new record with its index entries and its `Created` event
    /// (see [Events](#events)). `AlreadyExists` if a record with this id
    /// exists; `IdempotencyKeyTaken` (and nothing stored) if the owner
    /// already used its idempotency key.
    async fn create(&self, record: &ImageRecord) -> Result<CreateOutcome, StorageError>;

    /// The record, or `None`.
    async fn get(&self, id: &ImageId) -> Result<Option<ImageRecord>, StorageError>;

    /// The record of `owner`'s image stored with `idempotency_key`, or
    /// `None` (no such key, or its image is not stored yet).
    async fn keyed_image(
        &self,
        owner: &UserId,
        idempotency_key: &str,
    ) -> Result<Option<ImageRecord>, StorageError>;

    /// The records of those of `ids` that exist, in any order, read in one
    /// or two round trips rather than one per id. At most
    /// [`MAX_BATCH_GET`] distinct ids.
    async fn get_many(&self, ids: &[ImageId]) -> Result<Vec<ImageRecord>, StorageError>;

    /// Replaces the record (and its index entries) if the stored one still
    /// has `expected_revision`, with the event of `change` (`Updated` for a
    /// caller's edit, `VariantsAdded` for renditions the service added):
    /// `ConditionFailed` otherwise, `NotFound` if it is gone. The caller
    /// names the change, the store never guesses it; `record.revision` is
    /// greater than `expected_revision`.
    async fn replace(
        &self,
        record: &ImageRecord,
        expected_revision: u64,
        change: ChangeKind,
    ) -> Result<(), StorageError>;

    /// Deletes the record and its index entries if `owner` owns it, with
    /// its `Deleted` event, and returns it: `NotFound` if absent,
    /// `ConditionFailed` if owned by someone else.
    async fn delete(&self, id: &ImageId, owner: &UserId) -> Result<ImageRecord, StorageError>;

    /// Up to `limit` records matching `filter`, newest first, starting after
    /// `cursor` (a `next_cursor` of an earlier page with the same filter).
    /// Never returns a record that does not exist any more.
    async fn list(
        &self,
        filter: &ListFilter,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<ListPage, StorageError>;

    /// A cheap call that succeeds only if the store is reachable and usable
    /// (health checks call it every few seconds).
    async fn check_health(&self) -> Result<(), StorageError>;

    /// Up to `limit` records in `state` (not `Active`), those in it longest
    /// first (by [`ImageRecord::state_time`], then id), starting after
    /// `cursor` (a `next_cursor` of an earlier page of the same state).
    /// Read from an index of the records not `Active`, kept with the
    /// records like the listing indexes: its cost is the page's, however
    /// many images there are. Never returns a record not in `state`.
    async fn list_for_review(
        &self,
        state: ImageState,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<ListPage, StorageError>;

    /// The images whose PDQ hash is within `max_distance` (at most
    /// [`super::similar::MAX_DISTANCE`]) of `hash`, each once with its
    /// distance, nearest first (then by id), at most `limit`. Read from a
    /// band index kept with the records like the listing indexes (one entry
    /// per band of a record's hash, carrying the whole hash: see
    /// [`super::similar`]): its cost is at most `per_band` entries of each
    /// of the 32 buckets of `hash` and the records of the matches, never a
    /// scan of every record, however crowded a bucket is. A bucket holding
    /// more than `per_band` entries is read up to `per_band`, in the
    /// store's index order, and the answer says it was cut short
    /// ([`SimilarFound::truncated`]). Records in every state but `Removed`
    /// are found: a purged tombstone keeps its hash on its record but
    /// leaves the index ([`super::similar::indexed_hash`]); a deleted record
    /// is not found either. Never returns a record whose hash is not the one it was found
    /// by.
    async fn find_similar(
        &self,
        hash: &PdqHash,
        max_distance: u32,
        limit: usize,
        per_band: usize,
    ) -> Result<SimilarFound, StorageError>;

    /// Appends an entry to the moderation audit trail. Entries are never
    /// changed or removed.
    async fn append_moderation_action(&self, action: &ModerationAction)
    -> Result<(), StorageError>;

    /// Up to `limit` entries of the audit trail, oldest first (by time,
    /// then id), after `cursor` (a `next_cursor` of an earlier page).
    async fn list_moderation_actions(
        &self,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<ActionPage, StorageError>;

    /// Journals an unfinished write before the process depends on it.
    async fn record_pending_write(&self, write: &PendingWrite) -> Result<(), StorageError>;

    /// Forgets a journaled write once it is finished or aborted; forgetting
    /// an unknown one succeeds.
    async fn clear_pending_write(&self, write: &PendingWrite) -> Result<(), StorageError>;

    /// Journaled writes started before `older_than` (for the repair pass).
    async fn pending_writes(
        &self,
        older_than: Timestamp,
    ) -> Result<Vec<PendingWrite>, StorageError>;

    /// Journals the encodings an image still needs (one entry per image:
    /// a second replaces the first), before the upload that needs them
    /// is acknowledged.
    async fn record_pending_encodings(
        &self,
        pending: &PendingEncodings,
    ) -> Result<(), StorageError>;

    /// Forgets the image's journaled encodings once they are stored or
    /// the image is gone; forgetting an unknown entry succeeds.
    async fn clear_pending_encodings(&self, image_id: &ImageId) -> Result<(), StorageError>;

    /// Journaled encodings started before `older_than` (for the repair
    /// pass).
    async fn pending_encodings(
        &self,
        older_than: Timestamp,
    ) -> Result<Vec<PendingEncodings>, StorageError>;

    /// Stores a new upload session unless its owner's open sessions (not
    /// committed, not expired) would exceed `quota` with it: that check
    /// and the write are one step for every replica, and read at most
    /// `quota.max_open + 1` of the owner's sessions however many they
    /// started. `AlreadyExists` if a session has its id.
    async fn create_upload_session(
        &self,
        session: &UploadSessionRecord,
        quota: SessionQuota,
    ) -> Result<SessionAdmission, StorageError>;

    /// The upload session, or `None`.
    async fn get_upload_session(
        &self,
        id: &UploadId,
    ) -> Result<Option<UploadSessionRecord>, StorageError>;

    /// Replaces the session if the stored one still has
    /// `expected_revision`: `ConditionFailed` otherwise, `NotFound` if it
    /// is gone. This is how streams on different replicas take turns.
    async fn replace_upload_session(
        &self,
        session: &UploadSessionRecord,
        expected_revision: u64,
    ) -> Result<(), StorageError>;

    /// Deletes the session; deleting a missing one succeeds.
    async fn delete_upload_session(&self, id: &UploadId) -> Result<(), StorageError>;

    /// Sessions that expired before `now` (for the repair pass).
    async fn expired_upload_sessions(
        &self,
        now: Timestamp,
    ) -> Result<Vec<UploadSessionRecord>, StorageError>;

    /// The user's usage item; [`UsageRecord::default`] when there is none.
    /// Strongly consistent: it reflects every change that returned.
    async fn get_usage(&self, user: &UserId) -> Result<UsageRecord, StorageError>;

    /// Applies `change` to the user's usage item (creating it) in one step
    /// for every replica: `ConditionFailed` (and nothing changed) if the
    /// totals after it would pass `ceiling`, or if `change.remove` names a
    /// reservation the item does not hold (see [`UsageRecord::apply`]).
    async fn change_usage(
        &self,
        user: &UserId,
        change: &UsageChange,
        ceiling: Option<UsageCeiling>,
    ) -> Result<(), StorageError>;

    /// Sets the user's quota override, keeping the usage.
    async fn set_user_quota(&self, user: &UserId, quota: QuotaOverride)
    -> Result<(), StorageError>;

    /// Replaces the totals and reservations of the user's usage item if
    /// its revision is still `expected_revision` (0: no item yet), keeping
    /// its quota override: `ConditionFailed` otherwise. For the repair
    /// pass, which recomputes usage from the records.
    async fn replace_usage(
        &self,
        user: &UserId,
        usage: &UsageRecord,
        expected_revision: u64,
    ) -> Result<(), StorageError>;

    /// Every usage item (for the repair pass: a scan of the store).
    async fn list_usage(&self) -> Result<Vec<(UserId, UsageRecord)>, StorageError>;

    /// Sets the erasure of the user's usage item (creating the item) if
    /// its revision is still `expected_revision` (0: no item yet):
    /// `ConditionFailed` otherwise. The item becomes
    /// [`UsageRecord::with_erasure`]: while `erasure` runs, every change
    /// that adds a reservation is refused on every replica; once it is
    /// finished, the totals and reservations are reset.
    async fn set_erasure(
        &self,
        user: &UserId,
        erasure: &ErasureRecord,
        expected_revision: u64,
    ) -> Result<(), StorageError>;

    /// Every upload session record of `owner` (open, committed or closed),
    /// for an erasure of the user's data. Stores without an index of all
    /// of a user's sessions scan for them: its cost is the store's size.
    async fn upload_sessions_of(
        &self,
        owner: &UserId,
    ) -> Result<Vec<UploadSessionRecord>, StorageError>;

    /// Removes the image (the record: title, tags, filename...) from every
    /// retained event of `owner`, keeping its id, kind, time, revision and
    /// object names; returns how many events changed. For an erasure of
    /// the user's data, after their images are deleted. Stores without an
    /// index of events by owner scan the log: its cost is the log's size.
    async fn redact_events(&self, owner: &UserId) -> Result<usize, StorageError>;

    /// Removes index entries that point at no image (or at an image that no
    /// longer matches them), written before `older_than`; returns how many
    /// there were. Stores whose indexes change with their records in one
    /// transaction have none.
    async fn remove_stale_index_entries(
        &self,
        older_than: Timestamp,
        dry_run: bool,
    ) -> Result<usize, StorageError>;

    // # Events
    //
    // Every change `create`, `replace` and `delete` acknowledge has exactly
    // one event, keyed by (image, revision): written in the change's
    // transaction where the store has transactions, otherwise before the
    // change is acknowledged, and by `write_missing_events` for a change a
    // crash left without one.

    /// Up to `limit` events after `start`, in log order: the events of one
    /// image in the order of its changes, and every event at least once to
    /// a reader that resumes from the last position it read.
    async fn read_events(
        &self,
        start: &EventStart,
        limit: usize,
    ) -> Result<EventRead, StorageError>;

    /// The position of "now": reading after it returns only events written
    /// after this call.
    async fn event_head(&self) -> Result<Vec<u8>, StorageError>;

    /// Removes events written before `older_than` (the retention); returns
    /// how many. Reads after a removed position are `Expired` from then.
    /// Stores whose events expire by themselves (a TTL) remove none.
    async fn remove_expired_events(&self, older_than: Timestamp) -> Result<usize, StorageError>;

    /// Writes the event of every change written before `older_than` that
    /// has none (a crash between the change and its event), and returns
    /// how many. Stores that write both in one transaction have none.
    async fn write_missing_events(
        &self,
        _older_than: Timestamp,
        _dry_run: bool,
    ) -> Result<usize, StorageError> {
        Ok(0)
    }

    /// `None` when the log has one order that every writer appends to
    /// (positions are final when read). `Some(bound)` when writers on
    /// several machines place events by their own clocks: an event becomes
    /// readable at most `bound` after its time (the store refuses to
    /// acknowledge a change whose event took longer), so a reader re-reads
    /// the last `bound` of the log ([`EventStart::Since`]) and drops what
    /// it has seen.
    fn event_lookback(&self) -> Option<Duration> {
        None
    }

    /// A signal that changes when an event is written by this process,
    /// for stores whose writers all live in it (the embedded store): its
    /// watchers are woken at once instead of polling. `None` where other
    /// processes write too.
    fn event_signal(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::image::Encoding;

    #[test]
    fn every_key_the_service_writes_parses_back() {
        let id = ImageId::new();
        let small = VariantName::parse("small").unwrap();
        let mut names = vec![ObjectName::original(), ObjectName::plain(small.clone())];
        names.extend(Encoding::ALL.map(|e| ObjectName::encoded(small.clone(), e)));
        for name in names {
            let key = ObjectKey::of(&id, &name);
            assert_eq!(ObjectKey::parse(key.as_str()), Some((id, name)), "{key:?}");
        }
        for other in [
            format!("images/{id}/small.png"),
            format!("images/{id}/small.webp.jpg"),
            format!("images/{id}/"),
            format!("images/{id}/a/b"),
            format!("uploads/{id}/small"),
        ] {
            assert_eq!(ObjectKey::parse(&other), None, "{other}");
        }
    }

    #[test]
    fn content_disposition_keeps_unicode_names_safe() {
        let header = Disposition::Attachment.header_value("été \"x\".png");
        assert_eq!(
            header,
            "attachment; filename=\"_t_ _x_.png\"; filename*=UTF-8''%C3%A9t%C3%A9%20%22x%22.png"
        );
    }
}
