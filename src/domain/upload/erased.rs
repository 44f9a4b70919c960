//! Uploads that an erasure of their owner's data began under: an erasure
//! waits for the uploads that reserved before its mark only so long
//! (`--upload-deadline`), and an upload's commit (its variants) may take
//! longer, so every commit looks, once its record is stored, whether an
//! erasure runs or was asked for since the upload began, and withdraws its
//! image if so. A record stored before the look is one the erasure's
//! listing (after its mark) finds; one stored after is withdrawn here.

use super::shared::Uploads;
use crate::domain::UserId;
use crate::domain::image::{ImageRecord, Timestamp};
use crate::telemetry::error_chain;

impl Uploads {
    /// Whether an erasure of `owner`'s data runs, or was asked for after
    /// `began`. A failed read counts as none (the caller's image is not
    /// thrown away for a store's hiccup); it is logged, and the image stays
    /// unless the erasure still lists it.
    pub(super) async fn erased_since(&self, owner: &UserId, began: Timestamp) -> bool {
        match self.metadata.get_usage(owner).await {
            Ok(usage) => usage
                .erasure
                .is_some_and(|erasure| erasure.is_running() || erasure.requested > began),
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), %owner, "could not read whether the owner's data is being erased; the stored image stays");
                false
            }
        }
    }

    /// Deletes an image an upload stored as its owner's data was being
    /// erased; one left behind is the erasure's or the repair pass's.
    pub(super) async fn withdraw(&self, record: ImageRecord) {
        let (id, owner) = (record.id, record.owner.clone());
        let erased = crate::domain::erasure::erase_image(
            &self.blobs,
            &self.metadata,
            &self.quotas,
            &owner,
            record,
        )
        .await;
        match erased {
            Ok(_) => {
                tracing::info!(image_id = %id, %owner, "an image stored while its owner's data was being erased was removed")
            }
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), image_id = %id, %owner, "could not remove an image stored while its owner's data was being erased")
            }
        }
    }
}
