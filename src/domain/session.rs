//! What the stores keep about an upload session between its streams.
use std::fmt;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::image::{ImageId, NewImage, Timestamp};
use super::{DomainError, UserId};

/// An upload session's id: random, or derived from the owner and the
/// idempotency key so that a retried `StartUpload` finds its session.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct UploadId(Uuid);

impl UploadId {
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    /// The id of `owner`'s session for `idempotency_key`, since the
    /// erasure of their data asked for at `erased` (if any): a key used
    /// again after an erasure names another session, so that no upload URL
    /// of a session the erasure removed reaches the new one.
    pub fn for_idempotency_key(
        owner: &UserId,
        idempotency_key: &str,
        erased: Option<Timestamp>,
    ) -> Self {
        let mut hash = Sha256::new();
        hash.update(b"imageservice upload session\0");
        hash.update(owner.as_str().as_bytes());
        hash.update([0]);
        hash.update(idempotency_key.as_bytes());
        if let Some(erased) = erased {
            hash.update(b"\0erased\0");
            hash.update(erased.as_micros().to_be_bytes());
        }
        let digest: [u8; 32] = hash.finalize().into();
        let mut bytes = [0; 16];
        bytes.copy_from_slice(&digest[..16]);
        Self(uuid::Builder::from_custom_bytes(bytes).into_uuid())
    }

    pub fn parse(text: &str) -> Result<Self, DomainError> {
        if text.is_empty() {
            return Err(DomainError::invalid("upload_id is required"));
        }
        Uuid::try_parse(text)
            .map(Self)
            .map_err(|_| DomainError::invalid("upload_id is not a valid upload id"))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl Default for UploadId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A stored run of a session's bytes: the object `uploads/{id}/{name}`
/// holds bytes `offset..offset + length` of the image.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    pub offset: u64,
    pub length: u64,
    pub name: String,
}

/// The stream that may write a session now, and until when.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    pub holder: String,
    pub until: Timestamp,
    /// Taken to store the session's image (a stream's finish,
    /// `CompleteUpload`): the session is claimed by that store, and a
    /// cancel is refused until the lease has ended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub finishing: bool,
}

/// How the session's bytes arrive.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Nothing yet: either way is open.
    #[default]
    Undecided,
    /// Streamed through the service, kept as [`Segment`]s.
    Streamed,
    /// Sent straight to the store: this many part objects.
    Direct {
        parts: u32,
        /// The size each part's URL was made for, 0 for a part of any
        /// size (`part_count`): URLs handed out again must be for the same
        /// parts, or old and new URLs together could stage more than the
        /// session is charged for. Empty in records written before.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        sizes: Vec<u64>,
    },
}

/// One upload session, as the metadata store keeps it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UploadSessionRecord {
    pub id: UploadId,
    pub owner: UserId,
    /// The image the session makes: fixed up front, so that a commit that
    /// is retried (after a replica died half-way) finds it.
    pub image_id: ImageId,
    /// The spec as the caller sent it (validated at `StartUpload`).
    pub spec: NewImage,
    pub create_time: Timestamp,
    pub expire_time: Timestamp,
    /// Bumped by every change; changes are conditional on it.
    pub revision: u64,
    pub delivery: Delivery,
    /// The streamed bytes held durably, in order and contiguous.
    pub segments: Vec<Segment>,
    pub lease: Option<Lease>,
    /// Set once the image is stored.
    pub committed: bool,
    /// The most bytes the session may hold in the blob store (its
    /// `expected_size`, else `--max-image-bytes`), counted against its
    /// owner's `--max-staged-bytes-per-user` while it is open.
    #[serde(default)]
    pub staged_bytes: u64,
    /// Until when [`Self::staged_bytes`] stay counted against the owner's
    /// caps even once the session is closed (committed, cancelled,
    /// refused): set when part URLs the store cannot revoke (S3's
    /// presigned `PUT`s) were handed out, to when the last of them has
    /// expired and its part has had time to arrive. A closed session
    /// keeps its charge until then as a *tombstone*.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charge_until: Option<Timestamp>,
    /// Until when part URLs handed out for the session may still store a
    /// part (the last URL's expiry and the time for its part to arrive),
    /// whichever store serves them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls_until: Option<Timestamp>,
    /// Cancelled while its part URLs still lived: the record stays, closed,
    /// so that its idempotency key cannot start a session under the same
    /// id (and so reopen those URLs) until they are over.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancelled: bool,
}

impl UploadSessionRecord {
    /// Bytes held durably: a resumed stream starts here.
    pub fn persisted_size(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.offset + s.length)
    }

    /// Whether it counts against its owner's caps: neither closed nor
    /// expired.
    pub fn is_open(&self, now: Timestamp) -> bool {
        !self.is_closed() && !self.is_expired(now)
    }

    /// Committed or cancelled: it takes no more bytes.
    pub fn is_closed(&self) -> bool {
        self.committed || self.cancelled
    }

    /// Whether a part URL handed out for it may still store a part.
    pub fn urls_live(&self, now: Timestamp) -> bool {
        self.urls_until.is_some_and(|until| until > now)
    }

    /// Until when the session, once closed, still counts against its
    /// owner's caps (see [`Self::charge_until`]); `None` when it no longer
    /// does.
    pub fn held_after_close(&self, now: Timestamp) -> Option<Timestamp> {
        self.charge_until.filter(|until| *until > now)
    }

    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expire_time <= now
    }

    /// Whether a call is storing the session's image now (see
    /// [`Lease::finishing`]).
    pub fn is_finishing(&self, now: Timestamp) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|lease| lease.finishing && lease.until > now)
    }

    /// Whether a stream other than `holder` may write now.
    pub fn leased_to_other(&self, holder: &str, now: Timestamp) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|lease| lease.holder != holder && lease.until > now)
    }
}
