//! Protobuf messages to domain values and back.
use std::time::Duration;

use crate::domain::audit::{ActionKind, ModerationAction};
use crate::domain::event::ChangeKind;
use crate::domain::image::NewImage;
use crate::domain::image::{ImageRecord, ImageState, Timestamp};
use crate::domain::images::ImageUpdate;
use crate::domain::listing::ListRequest;
use crate::domain::ports::{Disposition, ObjectKey};
use crate::domain::upload::resumable::DirectParts;
use crate::domain::upload::{FramePayload, UploadFrame};
use crate::domain::watch::{MAX_TYPE_FILTERS, WatchFilter, WatchedEvent};
use crate::domain::{DomainError, UserId};
use crate::pb;

pub fn timestamp(time: Timestamp) -> prost_types::Timestamp {
    let micros = time.as_micros();
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

pub fn from_timestamp(
    field: &str,
    time: &prost_types::Timestamp,
) -> Result<Timestamp, DomainError> {
    if !(0..1_000_000_000).contains(&time.nanos) {
        return Err(DomainError::invalid(format!("{field} has invalid nanos")));
    }
    time.seconds
        .checked_mul(1_000_000)
        .and_then(|us| us.checked_add(i64::from(time.nanos / 1_000)))
        .map(Timestamp::from_micros)
        .ok_or_else(|| DomainError::invalid(format!("{field} is out of range")))
}

/// The `Image` as `viewer` may see it: the hash of the bytes as uploaded
/// (before identifying metadata was removed) is shown to the owner only,
/// since anyone holding a guessed original could confirm it with that hash;
/// so is the perceptual hash, which would let anyone tune an image until it
/// slips past a block list.
pub fn image(record: &ImageRecord, viewer: &UserId) -> pb::Image {
    pb::Image {
        image_id: record.id.to_string(),
        owner_id: record.owner.to_string(),
        filename: record.filename.clone(),
        content_type: record.content_type.clone(),
        size_bytes: record.size_bytes as i64,
        sha256: record.sha256.clone(),
        width: record.width,
        height: record.height,
        title: record.title.clone(),
        description: record.description.clone(),
        tags: record.tags.clone(),
        location: record.location.clone(),
        attributes: record
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        create_time: Some(timestamp(record.create_time)),
        update_time: Some(timestamp(record.update_time)),
        variants: record
            .variants
            .iter()
            .map(|v| pb::ImageVariant {
                name: v.name.to_string(),
                content_type: v.content_type.clone(),
                size_bytes: v.size_bytes as i64,
                width: v.width,
                height: v.height,
            })
            .collect(),
        etag: record.etag(),
        crc32c: record.crc32c,
        uploaded_sha256: if record.owner == *viewer {
            record.uploaded_sha256().to_owned()
        } else {
            String::new()
        },
        metadata_stripped: record.metadata_stripped,
        blurhash: record.blurhash.clone(),
        thumbhash: record.thumbhash.clone(),
        state: image_state(record.state) as i32,
        state_reason: record.state_reason.clone(),
        state_time: record.state_time.map(timestamp),
        pdq_hash: if record.owner == *viewer {
            record.pdq_hash.clone()
        } else {
            String::new()
        },
        pdq_quality: if record.owner == *viewer {
            record.pdq_quality
        } else {
            0
        },
    }
}

/// The `Image` as a moderator sees it: everything its owner sees, the
/// hashes a block list or a report is matched by included.
pub fn image_for_moderator(record: &ImageRecord) -> pb::Image {
    image(record, &record.owner)
}

pub fn image_state(state: ImageState) -> pb::ImageState {
    match state {
        ImageState::Active => pb::ImageState::Active,
        ImageState::Pending => pb::ImageState::Pending,
        ImageState::Quarantined => pb::ImageState::Quarantined,
        ImageState::Removed => pb::ImageState::Removed,
    }
}

/// A state a caller names: `INVALID_ARGUMENT` for an unknown or unset one.
pub fn state_of(value: i32) -> Result<ImageState, DomainError> {
    match pb::ImageState::try_from(value) {
        Ok(pb::ImageState::Active) => Ok(ImageState::Active),
        Ok(pb::ImageState::Pending) => Ok(ImageState::Pending),
        Ok(pb::ImageState::Quarantined) => Ok(ImageState::Quarantined),
        Ok(pb::ImageState::Removed) => Ok(ImageState::Removed),
        Ok(pb::ImageState::Unspecified) | Err(_) => Err(DomainError::invalid(format!(
            "state {value} is not an image state: name ACTIVE, PENDING, QUARANTINED or REMOVED"
        ))),
    }
}

pub fn moderation_action(action: &ModerationAction) -> pb::ModerationAction {
    pb::ModerationAction {
        time: Some(timestamp(action.time)),
        moderator_id: action.moderator.to_string(),
        r#type: match action.kind {
            ActionKind::SetState => pb::ModerationActionType::SetState,
            ActionKind::Purge => pb::ModerationActionType::Purge,
            ActionKind::ScanVerdict => pb::ModerationActionType::ScanVerdict,
        } as i32,
        image_id: action.image_id.to_string(),
        owner_id: action.owner.to_string(),
        from_state: image_state(action.from) as i32,
        to_state: image_state(action.to) as i32,
        reason: action.reason.clone(),
    }
}

pub fn new_image(spec: pb::ImageSpec) -> NewImage {
    NewImage {
        filename: spec.filename,
        content_type: spec.content_type,
        title: spec.title,
        description: spec.description,
        tags: spec.tags,
        location: spec.location,
        attributes: spec.attributes.into_iter().collect(),
        expected_size: spec.expected_size,
        sha256: spec.sha256,
        crc32c: spec.crc32c,
        idempotency_key: spec.idempotency_key,
    }
}

pub fn upload_frame(message: pb::UploadImageRequest) -> UploadFrame {
    let payload = match message.data {
        Some(pb::upload_image_request::Data::Spec(spec)) => {
            FramePayload::Spec(Box::new(new_image(spec)))
        }
        Some(pb::upload_image_request::Data::Resume(resume)) => FramePayload::Resume {
            upload_id: resume.upload_id,
            write_offset: resume.write_offset,
        },
        Some(pb::upload_image_request::Data::Chunk(data)) => FramePayload::Chunk {
            data,
            crc32c: message.chunk_crc32c,
        },
        None => FramePayload::Nothing,
    };
    UploadFrame {
        payload,
        finish: message.finish_write,
    }
}

pub fn list_request(message: pb::ListImagesRequest) -> Result<ListRequest, DomainError> {
    Ok(ListRequest {
        owner: message.owner_id,
        tag: message.tag,
        location: message.location,
        content_type: message.content_type,
        created_after: message
            .created_after
            .as_ref()
            .map(|t| from_timestamp("created_after", t))
            .transpose()?,
        created_before: message
            .created_before
            .as_ref()
            .map(|t| from_timestamp("created_before", t))
            .transpose()?,
        page_size: message.page_size,
        page_token: message.page_token,
    })
}

pub fn expires_in(
    duration: Option<prost_types::Duration>,
) -> Result<Option<Duration>, DomainError> {
    let Some(duration) = duration else {
        return Ok(None);
    };
    if duration.seconds < 0 || duration.nanos < 0 {
        return Err(DomainError::invalid("expires_in must not be negative"));
    }
    Ok(Some(Duration::new(
        duration.seconds as u64,
        duration.nanos.clamp(0, 999_999_999) as u32,
    )))
}

pub fn part_plan(
    parts: Option<pb::get_upload_urls_request::Parts>,
) -> Result<DirectParts, DomainError> {
    use pb::get_upload_urls_request::Parts;
    match parts {
        Some(Parts::PartCount(n)) => u32::try_from(n)
            .map(DirectParts::Count)
            .map_err(|_| DomainError::invalid("part_count must be positive")),
        Some(Parts::PartSizes(sizes)) => sizes
            .sizes
            .into_iter()
            .map(|n| {
                u64::try_from(n).map_err(|_| DomainError::invalid("part sizes must be positive"))
            })
            .collect::<Result<_, _>>()
            .map(DirectParts::Sizes),
        None => Err(DomainError::invalid("part_count or part_sizes is required")),
    }
}

pub fn disposition(value: i32) -> Result<Disposition, DomainError> {
    match pb::Disposition::try_from(value) {
        Ok(pb::Disposition::Unspecified | pb::Disposition::Inline) => Ok(Disposition::Inline),
        Ok(pb::Disposition::Attachment) => Ok(Disposition::Attachment),
        Err(_) => Err(DomainError::invalid("disposition is not a known value")),
    }
}

/// The fields to change: those named by the mask (empty values clear), or
/// without a mask every field given a non-empty value.
pub fn image_update(message: pb::UpdateImageRequest) -> Result<ImageUpdate, DomainError> {
    let paths = message
        .update_mask
        .map(|mask| mask.paths)
        .unwrap_or_default();
    let expected_etag = (!message.etag.is_empty()).then_some(message.etag);
    if paths.is_empty() {
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        return Ok(ImageUpdate {
            title: non_empty(message.title),
            description: non_empty(message.description),
            tags: (!message.tags.is_empty()).then_some(message.tags),
            location: non_empty(message.location),
            expected_etag,
        });
    }
    let mut update = ImageUpdate {
        expected_etag,
        ..ImageUpdate::default()
    };
    for path in paths {
        match path.as_str() {
            "title" => update.title = Some(message.title.clone()),
            "description" => update.description = Some(message.description.clone()),
            "tags" => update.tags = Some(message.tags.clone()),
            "location" => update.location = Some(message.location.clone()),
            other => {
                return Err(DomainError::invalid(format!(
                    "update_mask path {other:?} is not one of title, description, tags, location"
                )));
            }
        }
    }
    Ok(update)
}

/// A user's usage and the quotas that apply, as the API shows them.
pub fn usage(usage: &crate::domain::quota::UserUsage) -> pb::Usage {
    let record = &usage.usage;
    pb::Usage {
        user_id: usage.user.to_string(),
        bytes_held: record.held_bytes,
        images_held: record.held_images,
        bytes_reserved: record.reserved_bytes(),
        images_reserved: record.reserved_images(),
        quota_bytes: usage.limits.max_bytes,
        quota_images: usage.limits.max_images,
        quota_overridden: record.quota.max_bytes.is_some() || record.quota.max_images.is_some(),
    }
}

pub fn user_data_deletion(status: &crate::domain::erasure::ErasureStatus) -> pb::UserDataDeletion {
    use pb::user_data_deletion::State;
    let record = &status.record;
    let state = if record.is_running() {
        State::Running
    } else {
        State::Done
    };
    pb::UserDataDeletion {
        user_id: status.user.to_string(),
        state: state.into(),
        requested_by: record.requested_by.to_string(),
        request_time: Some(timestamp(record.requested)),
        finish_time: record.finished.map(timestamp),
        images_deleted: record.images_deleted,
        sessions_deleted: record.sessions_deleted,
        images_left: status.images_left,
    }
}

/// The filter of a `WatchImageEvents` request: an owner that is not a
/// valid user id, an unknown or unspecified type, or more than
/// [`MAX_TYPE_FILTERS`] types is INVALID_ARGUMENT.
pub fn watch_filter(owner_id: &str, types: &[i32]) -> Result<WatchFilter, DomainError> {
    let owner = if owner_id.is_empty() {
        None
    } else {
        Some(
            UserId::parse(owner_id)
                .map_err(|_| DomainError::invalid("owner_id is not a valid user id"))?,
        )
    };
    if types.len() > MAX_TYPE_FILTERS {
        return Err(DomainError::invalid(format!(
            "types names at most {MAX_TYPE_FILTERS} types"
        )));
    }
    let kinds = types
        .iter()
        .map(|&value| match pb::ImageEventType::try_from(value) {
            Ok(pb::ImageEventType::Created) => Ok(ChangeKind::Created),
            Ok(pb::ImageEventType::Updated) => Ok(ChangeKind::Updated),
            Ok(pb::ImageEventType::VariantsAdded) => Ok(ChangeKind::VariantsAdded),
            Ok(pb::ImageEventType::Deleted) => Ok(ChangeKind::Deleted),
            Ok(pb::ImageEventType::StateChanged) => Ok(ChangeKind::StateChanged),
            Ok(pb::ImageEventType::Purged) => Ok(ChangeKind::Purged),
            Ok(pb::ImageEventType::Unspecified) | Err(_) => Err(DomainError::invalid(format!(
                "types holds {value}, which is not an image event type"
            ))),
        })
        .collect::<Result<_, _>>()?;
    Ok(WatchFilter { owner, kinds })
}

pub fn event_type(kind: ChangeKind) -> pb::ImageEventType {
    match kind {
        ChangeKind::Created => pb::ImageEventType::Created,
        ChangeKind::Updated => pb::ImageEventType::Updated,
        ChangeKind::VariantsAdded => pb::ImageEventType::VariantsAdded,
        ChangeKind::Deleted => pb::ImageEventType::Deleted,
        ChangeKind::StateChanged => pb::ImageEventType::StateChanged,
        ChangeKind::Purged => pb::ImageEventType::Purged,
    }
}

/// An event as `viewer` (a watcher) may see it.
pub fn event(watched: WatchedEvent, viewer: &UserId) -> pb::ImageEvent {
    let event = watched.event;
    pb::ImageEvent {
        cursor: watched.cursor,
        r#type: event_type(event.kind) as i32,
        image_id: event.image_id.to_string(),
        owner_id: event.owner.as_str().to_owned(),
        time: Some(timestamp(event.time)),
        image: event.image.as_ref().map(|record| image(record, viewer)),
        etag: event.etag(),
        object_keys: event
            .object_names()
            .map(|name| ObjectKey::of(&event.image_id, &name).as_str().to_owned())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_including_before_the_epoch() {
        for micros in [0, 1, 1_700_000_000_123_456, -1, -1_500_000] {
            let time = Timestamp::from_micros(micros);
            assert_eq!(from_timestamp("t", &timestamp(time)).unwrap(), time);
        }
    }

    #[test]
    fn unknown_mask_paths_are_rejected() {
        let message = pb::UpdateImageRequest {
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["owner_id".into()],
            }),
            ..Default::default()
        };
        assert!(image_update(message).is_err());
    }

    #[test]
    fn a_mask_can_clear_a_field() {
        let message = pb::UpdateImageRequest {
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["title".into()],
            }),
            description: "ignored".into(),
            ..Default::default()
        };
        let update = image_update(message).unwrap();
        assert_eq!(update.title.as_deref(), Some(""));
        assert_eq!(update.description, None);
    }
}
