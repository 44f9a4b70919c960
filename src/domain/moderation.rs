//! The moderators' use cases: review the images not `Active`, set an
//! image's state, purge an image, and read the audit trail. Only the users
//! of `--moderators` may; every action they take is an entry of the audit
//! trail ([`super::audit`]) and an event of the image.
//!
//! States: `Active` (seen by all), `Pending` (set by a scan, not by a
//! moderator), `Quarantined` (hidden, bytes kept) and `Removed` (bytes
//! gone, record kept; final). A moderator moves an image that is not
//! removed to `Active`, `Quarantined` or `Removed`.
use tracing::Instrument as _;

use super::audit::{ActionKind, ModerationAction};
use super::event::ChangeKind;
use super::image::{ImageRecord, ImageState, Timestamp};
use super::images::{Images, ListResult, stale_etag};
use super::listing;
use super::ports::{ObjectKey, StorageError};
use super::quota::held_by;
use super::similar::{self, PdqHash, SimilarImage};
use super::{DomainError, ImageId, UserId};

/// Attempts of a change that keeps losing to concurrent ones.
const ATTEMPTS: usize = 5;
/// The longest reason category.
pub const MAX_REASON_LEN: usize = 64;
/// What the page tokens of the audit trail are bound to.
const ACTIONS_FINGERPRINT: &[u8] = b"moderation_actions";

/// A page of the audit trail.
#[derive(Debug)]
pub struct ActionsResult {
    pub actions: Vec<ModerationAction>,
    /// Empty when there are no more actions.
    pub next_page_token: String,
}

/// The moderators' use cases over the image use cases' stores.
#[derive(Clone)]
pub struct Moderation {
    images: Images,
}

impl Images {
    /// The moderators' use cases over the same stores.
    pub fn moderation(&self) -> Moderation {
        Moderation {
            images: self.clone(),
        }
    }
}

/// What a search for similar images compares with.
#[derive(Clone, Copy, Debug)]
pub enum SimilarTo<'a> {
    /// An image's hash (the image itself is left out of the answer).
    Image(&'a str),
    /// A PDQ hash, in hex.
    Hash(&'a str),
}

/// A change of an image's record made by a moderator.
enum Change {
    /// To a state (and reason).
    State(ImageState, String),
    /// Every byte removed and the descriptive metadata with them.
    Purge(String),
}

impl Moderation {
    fn ensure_moderator(&self, caller: &UserId) -> Result<(), DomainError> {
        if self.images.is_moderator(caller) {
            Ok(())
        } else {
            Err(DomainError::PermissionDenied(
                "only the moderators (--moderators) may use the moderation service".into(),
            ))
        }
    }

    /// A page of the images in `state` (not `Active`), those in it longest
    /// first, read from the review index.
    pub async fn list_for_review(
        &self,
        caller: &UserId,
        state: ImageState,
        page_size: i32,
        page_token: &str,
    ) -> Result<ListResult, DomainError> {
        self.ensure_moderator(caller)?;
        if state.is_active() {
            return Err(DomainError::invalid(
                "state must be PENDING, QUARANTINED or REMOVED: active images are listed by ListImages",
            ));
        }
        let limit = listing::page_size(page_size)?;
        let fingerprint = format!("review:{state}").into_bytes();
        let tokens = self.images.page_tokens();
        let cursor = tokens.open_page(&fingerprint, page_token)?;
        let page = self
            .images
            .metadata
            .list_for_review(state, cursor.as_deref(), limit)
            .await?;
        Ok(ListResult {
            images: page.records,
            next_page_token: tokens.seal_page(&fingerprint, page.next_cursor),
        })
    }

    /// Sets an image's state with a reason, if its etag is still
    /// `expected_etag` (when given). To `Removed`, every object of the image
    /// goes and the record stays. The image as it is now.
    pub async fn set_state(
        &self,
        caller: &UserId,
        image_id: &str,
        state: ImageState,
        reason: &str,
        expected_etag: Option<&str>,
    ) -> Result<ImageRecord, DomainError> {
        self.ensure_moderator(caller)?;
        let id = ImageId::parse(image_id)?;
        let reason = match state {
            ImageState::Active if reason.is_empty() => String::new(),
            ImageState::Active | ImageState::Quarantined | ImageState::Removed => {
                valid_reason(reason)?
            }
            ImageState::Pending => {
                return Err(DomainError::invalid(
                    "state must be ACTIVE, QUARANTINED or REMOVED: PENDING is set by a scan",
                ));
            }
        };
        self.change(caller, &id, Change::State(state, reason), expected_etag)
            .await
    }

    /// Removes every byte of an image and its descriptive metadata,
    /// keeping a tombstone record in `Removed` with its hashes.
    pub async fn purge(
        &self,
        caller: &UserId,
        image_id: &str,
        reason: &str,
    ) -> Result<ImageRecord, DomainError> {
        self.ensure_moderator(caller)?;
        let id = ImageId::parse(image_id)?;
        let reason = valid_reason(reason)?;
        self.change(caller, &id, Change::Purge(reason), None).await
    }

    /// The images whose PDQ hash is within `max_distance` (default and
    /// maximum [`similar::MAX_DISTANCE`]) of the query's, nearest first, at
    /// most `page_size` (bounded like a listing's page), read from the band
    /// index.
    pub async fn find_similar(
        &self,
        caller: &UserId,
        query: Option<SimilarTo<'_>>,
        max_distance: Option<u32>,
        page_size: i32,
    ) -> Result<Vec<SimilarImage>, DomainError> {
        self.ensure_moderator(caller)?;
        let max_distance = match max_distance {
            None => similar::MAX_DISTANCE,
            Some(d) if d <= similar::MAX_DISTANCE => d,
            Some(_) => {
                return Err(DomainError::invalid(format!(
                    "max_distance must be at most {}: past it two hashes may differ in every \
                     one of the index's {} bands, and the search could miss them",
                    similar::MAX_DISTANCE,
                    similar::BANDS
                )));
            }
        };
        let limit = listing::page_size(page_size)?;
        let (hash, itself) = match query {
            None => return Err(DomainError::invalid("set image_id or pdq_hash")),
            Some(SimilarTo::Hash(hex)) => (
                PdqHash::parse(hex)
                    .ok_or_else(|| DomainError::invalid("pdq_hash must be 64 hex digits"))?,
                None,
            ),
            Some(SimilarTo::Image(image_id)) => {
                let id = ImageId::parse(image_id)?;
                let record = self
                    .images
                    .metadata
                    .get(&id)
                    .await?
                    .ok_or_else(DomainError::image_not_found)?;
                let hash = PdqHash::of(&record).ok_or_else(|| {
                    DomainError::FailedPrecondition(
                        "the image has no PDQ hash: it could not be decoded".into(),
                    )
                })?;
                (hash, Some(id))
            }
        };
        // One more, in case the query's own image is among them.
        let mut found = self
            .images
            .metadata
            .find_similar(&hash, max_distance, limit + usize::from(itself.is_some()))
            .await?;
        found.retain(|f| Some(f.record.id) != itself);
        found.truncate(limit);
        Ok(found)
    }

    /// A page of the audit trail, oldest first.
    pub async fn actions(
        &self,
        caller: &UserId,
        page_size: i32,
        page_token: &str,
    ) -> Result<ActionsResult, DomainError> {
        self.ensure_moderator(caller)?;
        let limit = listing::page_size(page_size)?;
        let tokens = self.images.page_tokens();
        let cursor = tokens.open_page(ACTIONS_FINGERPRINT, page_token)?;
        let page = self
            .images
            .metadata
            .list_moderation_actions(cursor.as_deref(), limit)
            .await?;
        Ok(ActionsResult {
            actions: page.actions,
            next_page_token: tokens.seal_page(ACTIONS_FINGERPRINT, page.next_cursor),
        })
    }

    /// Makes `change` to the image's record (conditionally on its revision,
    /// read again on a concurrent change unless the caller named an etag),
    /// then removes the objects it no longer holds, gives their bytes back
    /// and records the action.
    async fn change(
        &self,
        caller: &UserId,
        id: &ImageId,
        change: Change,
        expected_etag: Option<&str>,
    ) -> Result<ImageRecord, DomainError> {
        let metadata = &self.images.metadata;
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
                    self.finish(caller, &current, &next, &change).await?;
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
        caller: &UserId,
        before: &ImageRecord,
        after: &ImageRecord,
        change: &Change,
    ) -> Result<(), DomainError> {
        if after.bytes_removed() && !before.bytes_removed() {
            let images = self.images.clone();
            let before = before.clone();
            let removal = tokio::spawn(
                async move {
                    images
                        .quotas()
                        .give_back_bytes(&before.owner, held_by(&before))
                        .await;
                    for (object, _) in before.objects() {
                        images
                            .delete_blob_logged(&ObjectKey::of(&before.id, &object))
                            .await;
                    }
                }
                .in_current_span(),
            );
            let _ = removal.await;
        }
        let (kind, reason) = match change {
            Change::State(_, reason) => (ActionKind::SetState, reason.clone()),
            Change::Purge(reason) => (ActionKind::Purge, reason.clone()),
        };
        let action = ModerationAction {
            id: ImageId::new(),
            time: after.update_time,
            moderator: caller.clone(),
            kind,
            image_id: after.id,
            owner: after.owner.clone(),
            from: before.state,
            to: after.state,
            reason,
        };
        tracing::info!(image_id = %after.id, from = %before.state, to = %after.state, action = kind.as_str(), reason = %action.reason, "moderation action");
        // Written after the change: were it to fail, the call fails with
        // the change made, and the same call again changes nothing more.
        Ok(self
            .images
            .metadata
            .append_moderation_action(&action)
            .await?)
    }
}

/// The record after `change`, and the kind of its event; `None` when the
/// record already is as the change would make it.
fn changed(
    current: &ImageRecord,
    change: &Change,
) -> Result<Option<(ImageRecord, ChangeKind)>, DomainError> {
    if current.state == ImageState::Removed && matches!(change, Change::State(..)) {
        return Err(DomainError::FailedPrecondition(format!(
            "the image was removed ({}): its bytes are gone and its state is final",
            current.state_reason
        )));
    }
    let now = Timestamp::now().max(current.update_time);
    let mut next = current.clone();
    let kind = match change {
        Change::State(state, reason) => {
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

/// A reason category: 1 to [`MAX_REASON_LEN`] characters of `a-z`, `0-9`,
/// `_` and `-` (a category, not free text: it is shown to the owner).
fn valid_reason(reason: &str) -> Result<String, DomainError> {
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
    fn reasons_are_short_categories() {
        assert!(valid_reason("spam").is_ok());
        for bad in ["", "Spam", "a b", "x\n", &"x".repeat(MAX_REASON_LEN + 1)] {
            assert!(valid_reason(bad).is_err(), "{bad:?}");
        }
    }
}
