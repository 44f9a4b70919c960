//! The upload pipeline, shared by every backend: the spec first, then chunks
//! checked as they arrive and piped into the blob store, then the metadata.
use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::content::{ContentFacts, ContentInspector, Declared};
use super::image::{ImageRecord, Timestamp};
use super::{DomainError, ImageId, Images, UserId, VariantName, validation};
use crate::storage::{BlobWriter, CreateOutcome, ObjectKey};

/// What the caller declares about an image before its bytes, as sent.
#[derive(Clone, Debug, Default)]
pub struct NewImage {
    pub filename: String,
    pub content_type: Option<String>,
    pub title: String,
    pub description: String,
    pub tags: Vec<String>,
    pub location: String,
    pub attributes: BTreeMap<String, String>,
    pub expected_size: Option<i64>,
    pub sha256: Option<String>,
    pub crc32c: Option<u32>,
    pub idempotency_key: Option<String>,
}

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
    Chunk { data: Bytes, crc32c: Option<u32> },
    Nothing,
}

/// The spec once validated: the metadata to store and the declarations to
/// check the bytes against.
struct ValidSpec {
    filename: String,
    title: String,
    description: String,
    tags: Vec<String>,
    location: String,
    attributes: BTreeMap<String, String>,
    idempotency_key: Option<String>,
    declared: Declared,
}

impl ValidSpec {
    fn parse(spec: NewImage) -> Result<Self, DomainError> {
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

impl Images {
    /// Receives an upload stream and stores the image. On any error, a
    /// cancelled call or a stream that ends without `finish`, nothing is
    /// stored.
    pub async fn upload<S>(
        &self,
        caller: &UserId,
        mut frames: S,
    ) -> Result<ImageRecord, DomainError>
    where
        S: Stream<Item = Result<UploadFrame, DomainError>> + Send + Unpin,
    {
        let _slot = self.upload_slots.clone().try_acquire_owned().map_err(|_| {
            DomainError::ResourceExhausted("too many uploads in progress; retry shortly".into())
        })?;
        let idle = self.limits.upload_idle_timeout;
        let first = next_frame(&mut frames, idle)
            .await?
            .ok_or_else(|| DomainError::invalid("the upload stream is empty"))??;
        let FramePayload::Spec(spec) = first.payload else {
            return Err(DomainError::invalid(
                "the first message of an upload must carry spec",
            ));
        };
        let spec = ValidSpec::parse(*spec)?;
        let mut inspector = ContentInspector::new(self.limits.content, spec.declared.clone())?;

        let id = ImageId::new();
        let key = ObjectKey::new(&id, &VariantName::original());
        let mut writer = self.blobs.start_write(&key, spec.declared.size).await?;
        let received = if first.finish {
            Ok(())
        } else {
            receive(&mut frames, &mut inspector, writer.as_mut(), idle).await
        };
        let facts = match received.and_then(|()| inspector.finish()) {
            Ok(facts) => facts,
            Err(error) => {
                writer.abort().await;
                return Err(error);
            }
        };

        // From here on the image is complete: finish it even if the caller
        // goes away, so a cancellation cannot leave bytes without metadata.
        let images = self.clone();
        let owner = caller.clone();
        tokio::spawn(async move { images.commit(owner, id, key, writer, spec, facts).await })
            .await
            .map_err(|e| DomainError::Internal(Box::new(e)))?
    }

    /// Writes bytes durably, then the metadata; removes the bytes if the
    /// metadata cannot be written.
    async fn commit(
        &self,
        owner: UserId,
        id: ImageId,
        key: ObjectKey,
        writer: Box<dyn BlobWriter>,
        spec: ValidSpec,
        facts: ContentFacts,
    ) -> Result<ImageRecord, DomainError> {
        writer.finish().await?;
        let now = Timestamp::now();
        let record = ImageRecord {
            id,
            owner,
            filename: spec.filename,
            content_type: facts.content_type.to_owned(),
            size_bytes: facts.size_bytes,
            sha256: facts.sha256_hex,
            crc32c: facts.crc32c,
            width: facts.width,
            height: facts.height,
            title: spec.title,
            description: spec.description,
            tags: spec.tags,
            location: spec.location,
            attributes: spec.attributes,
            create_time: now,
            update_time: now,
            variants: Vec::new(),
            revision: 1,
            idempotency_key: spec.idempotency_key,
        };
        let outcome = self.metadata.create(&record).await;
        if !matches!(outcome, Ok(CreateOutcome::Created)) {
            self.delete_blob_logged(&key).await;
        }
        match outcome? {
            CreateOutcome::Created => Ok(record),
            CreateOutcome::IdempotencyKeyTaken(existing) if existing.sha256 == record.sha256 => {
                Ok(*existing)
            }
            CreateOutcome::IdempotencyKeyTaken(_) => Err(DomainError::AlreadyExists(
                "idempotency_key was already used for an image with other content".into(),
            )),
        }
    }
}

/// The next message, unless the caller sends nothing for `idle`: an abandoned
/// stream must not hold an upload slot (and its buffers) for ever.
async fn next_frame<S>(
    frames: &mut S,
    idle: Duration,
) -> Result<Option<Result<UploadFrame, DomainError>>, DomainError>
where
    S: Stream<Item = Result<UploadFrame, DomainError>> + Send + Unpin,
{
    tokio::time::timeout(idle, frames.next())
        .await
        .map_err(|_| {
            DomainError::DeadlineExceeded(format!(
                "the upload stream sent nothing for {}s",
                idle.as_secs_f32()
            ))
        })
}

/// Reads chunks until `finish`, checking each and passing it to the writer.
async fn receive<S>(
    frames: &mut S,
    inspector: &mut ContentInspector,
    writer: &mut dyn BlobWriter,
    idle: Duration,
) -> Result<(), DomainError>
where
    S: Stream<Item = Result<UploadFrame, DomainError>> + Send + Unpin,
{
    loop {
        let Some(frame) = next_frame(frames, idle).await? else {
            return Err(DomainError::invalid(
                "the upload stream ended without finish_write; nothing was stored",
            ));
        };
        let frame = frame?;
        match frame.payload {
            FramePayload::Spec(_) => {
                return Err(DomainError::invalid(
                    "spec may only be sent in the first message",
                ));
            }
            FramePayload::Chunk { data, crc32c } => {
                inspector.feed(&data, crc32c)?;
                if !data.is_empty() {
                    writer.write(data).await?;
                }
            }
            FramePayload::Nothing => {}
        }
        if frame.finish {
            return Ok(());
        }
    }
}
