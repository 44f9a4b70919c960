//! The first message of an upload: what the caller declares, and that
//! declaration validated.
use std::collections::BTreeMap;

use bytes::Bytes;

use crate::domain::image::NewImage;
use crate::domain::{DomainError, validation};
use crate::media::content::Declared;

/// One message of an upload stream.
#[derive(Clone, Debug)]
pub struct UploadFrame {
    pub payload: FramePayload,
    /// The last message: the image is complete.
    pub finish: bool,
}

#[derive(Clone, Debug)]
pub enum FramePayload {
    Spec(Box<NewImage>),
    /// Continues the upload session `upload_id` from `write_offset`.
    Resume {
        upload_id: String,
        write_offset: i64,
    },
    Chunk {
        data: Bytes,
        crc32c: Option<u32>,
    },
    Nothing,
}

/// The spec once validated: the metadata to store and the declarations to
/// check the bytes against.
pub(super) struct ValidSpec {
    pub(super) filename: String,
    pub(super) title: String,
    pub(super) description: String,
    pub(super) tags: Vec<String>,
    pub(super) location: String,
    pub(super) attributes: BTreeMap<String, String>,
    pub(super) idempotency_key: Option<String>,
    pub(super) declared: Declared,
}

impl ValidSpec {
    pub(super) fn parse(spec: NewImage) -> Result<Self, DomainError> {
        let size = spec
            .expected_size
            .map(|n| {
                u64::try_from(n).map_err(|_| DomainError::invalid("expected_size must be positive"))
            })
            .transpose()?;
        Ok(Self {
            filename: validation::filename(&spec.filename),
            title: validation::title(&spec.title)?,
            description: validation::description(&spec.description)?,
            tags: validation::tags(&spec.tags)?,
            location: validation::location(&spec.location)?,
            attributes: validation::attributes(&spec.attributes)?,
            idempotency_key: spec
                .idempotency_key
                .as_deref()
                .map(validation::idempotency_key)
                .transpose()?,
            declared: Declared {
                content_type: spec.content_type.filter(|t| !t.trim().is_empty()),
                size,
                sha256_hex: spec
                    .sha256
                    .as_deref()
                    .map(validation::sha256_hex)
                    .transpose()?,
                crc32c: spec.crc32c,
            },
        })
    }
}
