//! The block list's part of an upload ([`crate::domain::block`]): every
//! new image, from an upload stream or an upload session alike, is checked
//! where both commit their record ([`Uploads::commit`]), before the
//! content scan hook. A match is rejected (the upload fails and undoes its
//! writes, its quota reservation given back) or stored `Quarantined` with
//! reason `blocked` and an audit entry, per `--block-action`.
use super::shared::Uploads;
use crate::domain::DomainError;
use crate::domain::UserId;
use crate::domain::audit::ActionKind;
use crate::domain::block::{BLOCK_LIST_ACTOR, BLOCK_REJECTED, BLOCKED_REASON, BlockAction};
use crate::domain::image::{ImageRecord, ImageState};
use crate::telemetry::error_chain;

impl Uploads {
    /// Before a new record is stored: a match with the block list is the
    /// upload's error (`reject`) or sets the record `Quarantined`
    /// (`quarantine`: then `true`, and the record is not scanned).
    pub(super) fn block_before_store(&self, record: &mut ImageRecord) -> Result<bool, DomainError> {
        let Some(hook) = &self.block else {
            return Ok(false);
        };
        let Some(found) = hook.check(record) else {
            return Ok(false);
        };
        let action = hook.policy().action;
        let action_name = match action {
            BlockAction::Reject => "reject",
            BlockAction::Quarantine => "quarantine",
        };
        metrics::counter!("imageservice_block_list_matches_total", "kind" => found.kind, "action" => action_name).increment(1);
        tracing::warn!(image_id = %record.id, kind = found.kind, entry = %found.entry, distance = found.distance, action = action_name, "an upload matches the block list");
        match action {
            BlockAction::Reject => Err(DomainError::FailedPrecondition(BLOCK_REJECTED.into())),
            BlockAction::Quarantine => {
                record.state = ImageState::Quarantined;
                record.state_reason = BLOCKED_REASON.to_owned();
                record.state_time = Some(record.create_time);
                Ok(true)
            }
        }
    }

    /// Once a new record is stored: a quarantine the block list set is
    /// added to the audit trail (then `true`).
    pub(super) async fn block_after_store(&self, record: &ImageRecord) -> bool {
        if self.block.is_none()
            || record.state != ImageState::Quarantined
            || record.state_reason != BLOCKED_REASON
        {
            return false;
        }
        let actor = UserId::parse(BLOCK_LIST_ACTOR).expect("a valid user id");
        let recorded = self
            .state_changes()
            .record(
                &actor,
                ActionKind::ScanVerdict,
                ImageState::Pending,
                record,
                BLOCKED_REASON,
            )
            .await;
        if let Err(error) = recorded {
            tracing::warn!(image_id = %record.id, error = %error_chain(&error), "could not add the block list's quarantine to the audit trail");
        }
        true
    }
}
