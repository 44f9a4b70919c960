//! The moderators' use cases: review the images not `Active`, set an
//! image's state, purge an image, and read the audit trail. Only the users
//! of `--moderators` may; every action they take is an entry of the audit
//! trail ([`super::audit`]) and an event of the image.
//!
//! States: `Active` (seen by all), `Pending` (set by a scan, not by a
//! moderator), `Quarantined` (hidden, bytes kept) and `Removed` (bytes
//! gone, record kept; final). A moderator moves an image that is not
//! removed to `Active`, `Quarantined` or `Removed`.
use super::audit::ModerationAction;
use super::image::{ImageRecord, ImageState};
use super::images::{Images, ListResult};
use super::listing;
use super::similar::{self, PdqHash, SimilarFound};
use super::state_change::{Change, valid_reason};
use super::{DomainError, ImageId, UserId};
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
        self.images
            .state_changes()
            .change(caller, &id, Change::State(state, reason), expected_etag)
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
        self.images
            .state_changes()
            .change(caller, &id, Change::Purge(reason), None)
            .await
    }

    /// The images whose PDQ hash is within `max_distance` (default and
    /// maximum [`similar::MAX_DISTANCE`]) of the query's, nearest first, at
    /// most `page_size` (bounded like a listing's page, and so are the
    /// records read), read from the band index: at most
    /// `--max-similar-candidates` entries of it, shared evenly among the
    /// buckets (see [`similar::band_share`]).
    pub async fn find_similar(
        &self,
        caller: &UserId,
        query: Option<SimilarTo<'_>>,
        max_distance: Option<u32>,
        page_size: i32,
    ) -> Result<SimilarFound, DomainError> {
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
                PdqHash::from_hex(hex)
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
                let hash = similar::hash_of(&record).ok_or_else(|| {
                    DomainError::FailedPrecondition(
                        "the image has no PDQ hash: it could not be decoded".into(),
                    )
                })?;
                (hash, Some(id))
            }
        };
        // One more, in case the query's own image is among them.
        let per_band = similar::band_share(self.images.limits.max_similar_candidates);
        let mut found = self
            .images
            .metadata
            .find_similar(
                &hash,
                max_distance,
                limit + usize::from(itself.is_some()),
                per_band,
            )
            .await?;
        found.images.retain(|f| Some(f.record.id) != itself);
        found.images.truncate(limit);
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
}
