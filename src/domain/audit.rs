//! The moderation audit trail: one entry per moderator's action on an
//! image, appended by the metadata store and never changed or removed
//! (see [`super::ports::MetadataStore::append_moderation_action`]).
use super::image::{ImageRecord, ImageState, Timestamp};
use super::{ImageId, UserId};

/// What a moderator did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Set the image's state (approve, quarantine, remove).
    SetState,
    /// Removed every byte of the image, keeping a tombstone record.
    Purge,
    /// The content scanner's verdict (`--scan-url`) on an image: its
    /// actor is [`super::state_change::SCANNER_ACTOR`].
    ScanVerdict,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::SetState => "set_state",
            ActionKind::Purge => "purge",
            ActionKind::ScanVerdict => "scan_verdict",
        }
    }
}

/// One entry of the audit trail.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModerationAction {
    /// Unique and time-ordered (a UUIDv7, like image ids): the trail's
    /// order among actions of the same microsecond.
    pub id: ImageId,
    /// When the action was taken.
    pub time: Timestamp,
    /// The moderator.
    pub moderator: UserId,
    pub kind: ActionKind,
    pub image_id: ImageId,
    /// The owner of the image.
    pub owner: UserId,
    /// The image's state before and after.
    pub from: ImageState,
    pub to: ImageState,
    /// The reason category given.
    pub reason: String,
}

/// One page of the audit trail.
#[derive(Debug, Default)]
pub struct ActionPage {
    /// Oldest first.
    pub actions: Vec<ModerationAction>,
    /// Where the next page starts; `None` when there is none.
    pub next_cursor: Option<Vec<u8>>,
}

/// Times as big-endian with the sign bit flipped sort like the numbers.
fn sortable(time: Timestamp) -> [u8; 8] {
    ((time.as_micros() as u64) ^ (1 << 63)).to_be_bytes()
}

/// Where `action` sorts in the trail, as bytes: its time and id.
pub fn action_position(action: &ModerationAction) -> Vec<u8> {
    [&sortable(action.time)[..], action.id.as_bytes()].concat()
}

/// Where `record` sorts among the records of its state, as bytes: when it
/// entered the state, and its id. `None` for an `Active` record, which
/// no review lists.
pub fn review_position(record: &ImageRecord) -> Option<Vec<u8>> {
    if record.state.is_active() {
        return None;
    }
    let since = record.state_time.unwrap_or(record.update_time);
    Some([&sortable(since)[..], record.id.as_bytes()].concat())
}

/// The length of both positions.
pub const ORDER_LEN: usize = 8 + 16;
