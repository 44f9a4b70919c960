//! The upload pipeline, shared by every backend: the spec first, then chunks
//! checked as they arrive and piped into the blob store, then the metadata.
use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::content::{ContentFacts, ContentInspector, Declared};
use super::image::{ImageRecord, Timestamp};
use super::{DomainError, ImageId, Images, UserId, VariantName, validation};
use crate::storage::{BlobWriter, CreateOutcome, MetadataStore, ObjectKey, PendingWrite};

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
        let mut journal = Journal {
            metadata: self.metadata.as_ref(),
            image_id: id,
            entry: None,
        };
        let received = if first.finish {
            Ok(())
        } else {
            receive(
                &mut frames,
                &mut inspector,
                writer.as_mut(),
                &mut journal,
                idle,
            )
            .await
        };
        let pending = journal.entry;
        let facts = match received.and_then(|()| inspector.finish()) {
            Ok(facts) => facts,
            Err(error) => {
                writer.abort().await;
                self.clear_journal(pending).await;
                return Err(error);
            }
        };

        // From here on the image is complete: finish it even if the caller
        // goes away, so a cancellation cannot leave bytes without metadata.
        let images = self.clone();
        let owner = caller.clone();
        let write = CompleteWrite {
            id,
            key,
            writer,
            pending,
        };
        tokio::spawn(async move { images.commit(owner, write, spec, facts).await })
            .await
            .map_err(|e| DomainError::Internal(Box::new(e)))?
    }

    /// Writes bytes durably, then the metadata; removes the bytes if the
    /// metadata cannot be written.
    async fn commit(
        &self,
        owner: UserId,
        write: CompleteWrite,
        spec: ValidSpec,
        facts: ContentFacts,
    ) -> Result<ImageRecord, DomainError> {
        let CompleteWrite {
            id,
            key,
            writer,
            pending,
        } = write;
        // Finished or aborted by `finish`, the write needs no journal any more.
        let finished = writer.finish().await;
        self.clear_journal(pending).await;
        finished?;
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

/// An upload whose bytes have all arrived, not yet made durable.
struct CompleteWrite {
    id: ImageId,
    key: ObjectKey,
    writer: Box<dyn BlobWriter>,
    pending: Option<PendingWrite>,
}

/// The journal entry of an upload's unfinished write, recorded as soon as
/// the store has one (a multipart upload), so that the repair pass can abort
/// it if this process dies before it finishes.
struct Journal<'a> {
    metadata: &'a dyn MetadataStore,
    image_id: ImageId,
    entry: Option<PendingWrite>,
}

impl Journal<'_> {
    async fn note(&mut self, pending_id: Option<String>) -> Result<(), DomainError> {
        if self.entry.is_some() {
            return Ok(());
        }
        if let Some(pending_id) = pending_id {
            let entry = PendingWrite {
                image_id: self.image_id,
                variant: VariantName::original(),
                pending_id,
                started: Timestamp::now(),
            };
            self.metadata.record_pending_write(&entry).await?;
            self.entry = Some(entry);
        }
        Ok(())
    }
}

impl Images {
    /// Forgets a journaled write; on failure the repair pass clears it later.
    async fn clear_journal(&self, pending: Option<PendingWrite>) {
        let Some(entry) = pending else { return };
        if let Err(error) = self.metadata.clear_pending_write(&entry).await {
            tracing::warn!(image_id = %entry.image_id, error = %super::images::error_chain(&error), "could not clear an upload's journal entry");
        }
    }
}

/// Reads chunks until `finish`, checking each and passing it to the writer.
async fn receive<S>(
    frames: &mut S,
    inspector: &mut ContentInspector,
    writer: &mut dyn BlobWriter,
    journal: &mut Journal<'_>,
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
                    journal.note(writer.pending_id()).await?;
                }
            }
            FramePayload::Nothing => {}
        }
        if frame.finish {
            return Ok(());
        }
    }
}
