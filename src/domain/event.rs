//! What the event log keeps: one event per acknowledged change of an image
//! record, written by the metadata store with the change itself (see
//! [`super::ports::MetadataStore::replace`]), and the cursors callers
//! resume from.
//!
//! A store places each event at a *position* (bytes only that store reads:
//! a sequence number on the embedded store, a time and key on DynamoDB).
//! Callers see a position as a [`Cursor`]: the position behind a version
//! byte, in unpadded URL-safe base64, opaque to them and checked when it
//! comes back.
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::image::{ImageRecord, ObjectName, Timestamp};
use super::{DomainError, ImageId, UserId};

/// What a change did to an image, as watchers see it. New kinds may come
/// (scan results): consumers skip kinds they do not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ChangeKind {
    /// The record was stored (any upload path).
    Created,
    /// Its metadata was edited (`UpdateImage`).
    Updated,
    /// Renditions were added to it in the background (new encodings, a
    /// backfill): a conditional replace made by the service, not a caller.
    VariantsAdded,
    /// The record and its objects went.
    Deleted,
    /// A moderator (or a scan) set its state; to `Removed`, its objects
    /// went and the record stays.
    StateChanged,
    /// A moderator removed every object of it, keeping a tombstone record.
    Purged,
}

impl ChangeKind {
    pub const ALL: [ChangeKind; 6] = [
        ChangeKind::Created,
        ChangeKind::Updated,
        ChangeKind::VariantsAdded,
        ChangeKind::Deleted,
        ChangeKind::StateChanged,
        ChangeKind::Purged,
    ];
}

/// One change of one image.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageEvent {
    pub kind: ChangeKind,
    pub image_id: ImageId,
    pub owner: UserId,
    /// When the store wrote the change.
    pub time: Timestamp,
    /// The record's revision after the change (for `Deleted`, the revision
    /// that was deleted): with the image id, the event's identity.
    pub revision: u64,
    /// The record after the change; `None` for `Deleted`.
    pub image: Option<ImageRecord>,
    /// `Deleted`, and a `StateChanged` or `Purged` that removed the
    /// image's bytes: the name of every object the image had (`original`,
    /// `small.webp`, ...), whose keys a CDN purge needs.
    pub objects: Vec<String>,
}

impl ImageEvent {
    /// The event of `kind` for `record` as it is after the change (as it
    /// was, for `Deleted`), stamped now.
    pub fn of_change(kind: ChangeKind, record: &ImageRecord) -> Self {
        let deleted = kind == ChangeKind::Deleted;
        Self {
            kind,
            image_id: record.id,
            owner: record.owner.clone(),
            time: Timestamp::now(),
            revision: record.revision,
            image: (!deleted).then(|| record.clone()),
            objects: match kind {
                ChangeKind::Deleted if record.bytes_removed() => record.removed_objects.clone(),
                ChangeKind::Deleted => record
                    .objects()
                    .into_iter()
                    .map(|(name, _)| name.to_string())
                    .collect(),
                ChangeKind::StateChanged | ChangeKind::Purged => record.removed_objects.clone(),
                ChangeKind::Created | ChangeKind::Updated | ChangeKind::VariantsAdded => Vec::new(),
            },
        }
    }

    /// The etag of the record this event shows (see [`ImageRecord::etag`]).
    pub fn etag(&self) -> String {
        ImageRecord::etag_of(self.revision)
    }

    /// The names of [`ImageEvent::objects`], parsed back.
    pub fn object_names(&self) -> impl Iterator<Item = ObjectName> + '_ {
        self.objects
            .iter()
            .filter_map(|name| ObjectName::parse(name))
    }
}

/// An event at its place in a store's log.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    /// Where a read resumes to get the events after this one.
    pub position: Vec<u8>,
    pub event: ImageEvent,
}

/// Where a read of the event log starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventStart {
    /// At the oldest event retained.
    Oldest,
    /// After the event at this position (or the position of "now").
    After(Vec<u8>),
    /// At the first event written at or after this time: for stores whose
    /// log is read by time ([`super::ports::MetadataStore::event_lookback`]).
    Since(Timestamp),
}

/// What a read of the event log found.
#[derive(Debug)]
pub enum EventRead {
    /// The next events in log order (none yet: an empty page).
    Events(Vec<StoredEvent>),
    /// The position is older than the retention: events after it may be
    /// gone. `oldest` is where the retained events start.
    Expired { oldest: Vec<u8> },
    /// The position was not made by this store.
    Malformed,
}

/// The longest cursor accepted: positions are a few dozen bytes.
pub const MAX_CURSOR_LEN: usize = 256;
/// The first byte of every position inside a cursor: a cursor of another
/// encoding is refused, not misread.
const CURSOR_VERSION: u8 = 1;
/// The cursor that starts at the oldest retained event.
pub const OLDEST: &str = "oldest";

/// A caller's cursor: where a watch starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cursor {
    /// `""`: only events after the watch starts.
    Now,
    /// `"oldest"`: every event retained.
    Oldest,
    /// A cursor the service gave: the events after that one.
    After(Vec<u8>),
}

impl Cursor {
    /// Parses a cursor from a caller: `INVALID_ARGUMENT` for anything the
    /// service did not make.
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        match text {
            "" => return Ok(Cursor::Now),
            OLDEST => return Ok(Cursor::Oldest),
            _ => {}
        }
        let invalid = || {
            DomainError::invalid(
                "cursor is not a cursor this service gave: pass one from an event, \"oldest\" or \"\"",
            )
        };
        if text.len() > MAX_CURSOR_LEN {
            return Err(invalid());
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
        match bytes.split_first() {
            Some((&CURSOR_VERSION, position)) if !position.is_empty() => {
                Ok(Cursor::After(position.to_vec()))
            }
            _ => Err(invalid()),
        }
    }

    /// The cursor a caller resumes from to get the events after `position`.
    pub fn encode(position: &[u8]) -> String {
        let mut bytes = Vec::with_capacity(position.len() + 1);
        bytes.push(CURSOR_VERSION);
        bytes.extend_from_slice(position);
        URL_SAFE_NO_PAD.encode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_its_position() {
        let cursor = Cursor::encode(&[0, 0, 0, 0, 0, 0, 1, 7]);
        assert_eq!(
            Cursor::parse(&cursor).expect("a cursor"),
            Cursor::After(vec![0, 0, 0, 0, 0, 0, 1, 7])
        );
        assert_eq!(Cursor::parse("").expect("now"), Cursor::Now);
        assert_eq!(Cursor::parse("oldest").expect("oldest"), Cursor::Oldest);
    }

    #[test]
    fn anything_else_is_an_invalid_argument() {
        let long = "A".repeat(MAX_CURSOR_LEN + 1);
        for text in ["%%%", "AA", "Ag", long.as_str(), "newest", "AQ"] {
            assert!(
                matches!(Cursor::parse(text), Err(DomainError::InvalidArgument(_))),
                "{text}"
            );
        }
    }
}
