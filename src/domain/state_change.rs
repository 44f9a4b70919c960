//! The one path an image's state changes by: a moderator's action
//! ([`super::moderation`]) and the content scanner's verdict
//! ([`super::scan`]) alike. A change is conditional on the record's
//! revision, is announced by the record's event (`STATE_CHANGED` or
//! `PURGED`), removes the objects a `Removed` image no longer holds and
//! gives their bytes back, and is appended to the audit trail
//! ([`super::audit`]) with who made it.
use std::sync::Arc;

use tracing::Instrument as _;

use super::audit::{ActionKind, ModerationAction};
use super::event::ChangeKind;
use super::image::{ImageRecord, ImageState, Timestamp};
use super::ports::{BlobStore, MetadataStore, ObjectKey, StorageError};
use super::quota::{Quotas, held_by};
use super::{DomainError, ImageId, UserId};
use crate::telemetry::error_chain;

/// Attempts of a change that keeps losing to concurrent ones.
const ATTEMPTS: usize = 5;

/// The actor of the audit entries of the scanner's verdicts
/// ([`ActionKind::ScanVerdict`]).
pub const SCANNER_ACTOR: &str = "scanner";

/// A change of an image's record.
pub enum Change {
    /// To a state (and reason), by a moderator.
    State(ImageState, String),
    /// Every byte removed and the descriptive metadata with them.
    Purge(String),
    /// The scanner's verdict on a `Pending` image: to a state (and reason).
    /// An image no longer pending (a moderator decided first) is left as
    /// it is.
    Verdict(ImageState, String),
}

impl Change {
    fn kind(&self) -> ActionKind {
        match self {
            Change::State(..) => ActionKind::SetState,
            Change::Purge(_) => ActionKind::Purge,
            Change::Verdict(..) => ActionKind::ScanVerdict,
        }
    }

    fn reason(&self) -> &str {
        match self {
            Change::State(_, reason) | Change::Purge(reason) | Change::Verdict(_, reason) => reason,
        }
    }
}

/// The stores a state change writes to.
#[derive(Clone)]
pub struct StateChanges {
    pub(super) metadata: Arc<dyn MetadataStore>,
    pub(super) blobs: Arc<dyn BlobStore>,
    pub(super) quotas: Quotas,
}

impl StateChanges {
    pub fn new(
        metadata: Arc<dyn MetadataStore>,
        blobs: Arc<dyn BlobStore>,
        quotas: Quotas,
    ) -> Self {
        Self {
            metadata,
            blobs,
            quotas,
        }
    }

    /// Makes `change` to the image's record (conditionally on its revision,
    /// read again on a concurrent change unless the caller named an etag),
    /// then removes the objects it no longer holds, gives their bytes back
    /// and records the action as `actor`'s.
    pub async fn change(
        &self,
        actor: &UserId,
        id: &ImageId,
        change: Change,
        expected_etag: Option<&str>,
    ) -> Result<ImageRecord, DomainError> {
        let metadata = &self.metadata;
        for _ in 0..ATTEMPTS {
            let current = metadata
                .get(id)
                .await?
                .ok_or_else(DomainError::image_not_found)?;
            if let Some(etag) = expected_etag
                && etag != current.etag()
            {
                return Err(stale_etag());
            }
            let Some((next, kind)) = changed(&current, &change)? else {
                // Already so: nothing to change or to record.
                return Ok(current);
            };
            match metadata.replace(&next, current.revision, kind).await {
                Ok(()) => {
                    self.finish(actor, &current, &next, &change).await?;
                    return Ok(next);
                }
                Err(StorageError::ConditionFailed) if expected_etag.is_some() => {
                    return Err(stale_etag());
                }
                Err(StorageError::ConditionFailed) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(DomainError::Aborted(
            "the image is being changed concurrently; retry".into(),
        ))
    }

    /// After a change is stored: the objects it removed go (even if the
    /// caller goes away now), their bytes are given back, and the action is
    /// appended to the audit trail.
    async fn finish(
        &self,
        actor: &UserId,
        before: &ImageRecord,
        after: &ImageRecord,
        change: &Change,
    ) -> Result<(), DomainError> {
        if after.bytes_removed() && !before.bytes_removed() {
            let stores = self.clone();
            let before = before.clone();
            let removal = tokio::spawn(
                async move {
                    stores
                        .quotas
                        .give_back_bytes(&before.owner, held_by(&before))
                        .await;
                    for (object, _) in before.objects() {
                        let key = ObjectKey::of(&before.id, &object);
                        if let Err(error) = stores.blobs.delete(&key).await {
                            tracing::warn!(key = key.as_str(), error = %error_chain(&error), "could not delete image bytes; the object is orphaned");
                        }
                    }
                }
                .in_current_span(),
            );
            let _ = removal.await;
        }
        self.record(actor, change.kind(), before.state, after, change.reason())
            .await
    }

    /// Appends `actor`'s action that took `after` from the state `from` to
    /// the audit trail. Written after the change: were it to fail, the
    /// call fails with the change made, and the same call again changes
    /// nothing more.
    pub async fn record(
        &self,
        actor: &UserId,
        kind: ActionKind,
        from: ImageState,
        after: &ImageRecord,
        reason: &str,
    ) -> Result<(), DomainError> {
        let action = ModerationAction {
            id: ImageId::new(),
            time: after.update_time,
            moderator: actor.clone(),
            kind,
            image_id: after.id,
            owner: after.owner.clone(),
            from,
            to: after.state,
            reason: reason.to_owned(),
        };
        tracing::info!(image_id = %after.id, from = %from, to = %after.state, action = kind.as_str(), reason = %action.reason, "moderation action");
        Ok(self.metadata.append_moderation_action(&action).await?)
    }
}

/// A change conditional on an etag that is no longer the image's.
pub fn stale_etag() -> DomainError {
    DomainError::Aborted("the image changed since the given etag; read it again and retry".into())
}

/// The actor of the scanner's verdicts.
pub fn scanner() -> UserId {
    UserId::parse(SCANNER_ACTOR).expect("a valid user id")
}

/// The longest reason category.
pub const MAX_REASON_LEN: usize = 64;

/// A reason category: 1 to [`MAX_REASON_LEN`] characters of `a-z`, `0-9`,
/// `_` and `-` (a category, not free text: it is shown to the owner).
pub fn valid_reason(reason: &str) -> Result<String, DomainError> {
    let valid = !reason.is_empty()
        && reason.len() <= MAX_REASON_LEN
        && reason
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if valid {
        Ok(reason.to_owned())
    } else {
        Err(DomainError::invalid(format!(
            "reason must be a category of 1 to {MAX_REASON_LEN} characters of a-z, 0-9, _ and - \
             (e.g. spam, nudity, copyright)"
        )))
    }
}

/// The record after `change`, and the kind of its event; `None` when the
/// record already is as the change would make it.
fn changed(
    current: &ImageRecord,
    change: &Change,
) -> Result<Option<(ImageRecord, ChangeKind)>, DomainError> {
    if let Change::Verdict(..) = change
        && current.state != ImageState::Pending
    {
        return Ok(None);
    }
    if current.state == ImageState::Removed && matches!(change, Change::State(..)) {
        return Err(DomainError::FailedPrecondition(format!(
            "the image was removed ({}): its bytes are gone and its state is final",
            current.state_reason
        )));
    }
    let now = Timestamp::now().max(current.update_time);
    let mut next = current.clone();
    let kind = match change {
        Change::State(state, reason) | Change::Verdict(state, reason) => {
            if current.state == *state && current.state_reason == *reason {
                return Ok(None);
            }
            next.state = *state;
            next.state_reason.clone_from(reason);
            ChangeKind::StateChanged
        }
        Change::Purge(reason) => {
            next.state = ImageState::Removed;
            next.state_reason.clone_from(reason);
            next.filename.clear();
            next.title.clear();
            next.description.clear();
            next.tags.clear();
            next.location.clear();
            next.attributes.clear();
            next.blurhash.clear();
            next.thumbhash.clear();
            ChangeKind::Purged
        }
    };
    if next.state != current.state {
        next.state_time = Some(now);
    }
    if next.state == ImageState::Active {
        next.state_time = None;
    }
    if next.state == ImageState::Removed && !current.bytes_removed() {
        next.removed_objects = current
            .objects()
            .into_iter()
            .map(|(name, _)| name.to_string())
            .collect();
        next.variants.clear();
    }
    next.revision = current.revision + 1;
    next.update_time = now;
    Ok(Some((next, kind)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ImageRecord {
        let owner = UserId::parse("alice").unwrap();
        let mut record = ImageRecord::sample(&owner, 1_000);
        record.variants.push(super::super::image::Variant {
            name: super::super::VariantName::parse("small").unwrap(),
            content_type: "image/jpeg".into(),
            size_bytes: 4,
            width: 2,
            height: 1,
            object: None,
        });
        record
    }

    #[test]
    fn removing_an_image_names_its_objects_and_holds_no_bytes() {
        let current = record();
        let (next, kind) = changed(&current, &Change::State(ImageState::Removed, "spam".into()))
            .unwrap()
            .unwrap();
        assert_eq!(kind, ChangeKind::StateChanged);
        assert_eq!(next.removed_objects, ["original", "small"]);
        assert!(next.variants.is_empty());
        assert_eq!(held_by(&next), 0);
        assert_eq!(next.revision, current.revision + 1);
        assert!(next.state_time.is_some());
        assert_eq!(next.title, current.title, "the record stays");
    }

    #[test]
    fn a_purge_keeps_the_hashes_and_drops_the_description() {
        let current = record();
        let (next, kind) = changed(&current, &Change::Purge("csam".into()))
            .unwrap()
            .unwrap();
        assert_eq!(kind, ChangeKind::Purged);
        assert_eq!(next.state, ImageState::Removed);
        assert_eq!(next.sha256, current.sha256);
        assert_eq!(next.uploaded_sha256, current.uploaded_sha256);
        assert!(next.title.is_empty() && next.thumbhash.is_empty());
        // Purging a removed image again removes nothing more.
        let (again, _) = changed(&next, &Change::Purge("csam".into()))
            .unwrap()
            .unwrap();
        assert_eq!(again.removed_objects, next.removed_objects);
    }

    #[test]
    fn a_removed_image_changes_state_no_more() {
        let mut current = record();
        current.state = ImageState::Removed;
        let refused = changed(&current, &Change::State(ImageState::Active, String::new()));
        assert!(matches!(refused, Err(DomainError::FailedPrecondition(_))));
    }

    #[test]
    fn the_same_state_and_reason_again_changes_nothing() {
        let current = record();
        let (quarantined, _) = changed(
            &current,
            &Change::State(ImageState::Quarantined, "spam".into()),
        )
        .unwrap()
        .unwrap();
        let again = changed(
            &quarantined,
            &Change::State(ImageState::Quarantined, "spam".into()),
        )
        .unwrap();
        assert!(again.is_none());
    }

    #[test]
    fn a_verdict_changes_only_a_pending_image() {
        let mut current = record();
        current.state = ImageState::Pending;
        let (next, kind) = changed(
            &current,
            &Change::Verdict(ImageState::Quarantined, "nudity".into()),
        )
        .unwrap()
        .unwrap();
        assert_eq!(kind, ChangeKind::StateChanged);
        assert_eq!(next.state, ImageState::Quarantined);
        // A moderator decided first: the verdict changes nothing.
        let late = changed(&next, &Change::Verdict(ImageState::Active, String::new())).unwrap();
        assert!(late.is_none());
    }

    #[test]
    fn reasons_are_short_categories() {
        assert!(valid_reason("spam").is_ok());
        for bad in ["", "Spam", "a b", "x\n", &"x".repeat(MAX_REASON_LEN + 1)] {
            assert!(valid_reason(bad).is_err(), "{bad:?}");
        }
    }
}
