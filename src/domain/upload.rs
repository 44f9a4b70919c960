//! The upload pipeline, shared by every backend: the spec first, then chunks
//! checked as they arrive and piped into the blob store, then the metadata.
use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::budget::{MemoryBudget, Reservation};
use super::image::{ImageRecord, Timestamp, Variant};
use super::{DomainError, ImageId, Images, UserId, VariantName, validation};
use crate::domain::ports::{BlobWriter, CreateOutcome, MetadataStore, ObjectKey, PendingWrite};
use crate::media::content::{ContentFacts, ContentInspector, Declared};
use crate::media::scrub::{Scrubbed, Scrubber};
use crate::media::variants::{self, Rendered, Renderer};

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
            DomainError::ResourceExhausted(
                "too many uploads in progress (--max-concurrent-uploads); retry shortly".into(),
            )
        })?;
        let _user_slot = self.user_uploads.start(caller)?;
        let mut pace = Pace::new(&self.limits.pace);
        let first = pace
            .next(&mut frames)
            .await?
            .ok_or_else(|| DomainError::invalid("the upload stream is empty"))??;
        let FramePayload::Spec(spec) = first.payload else {
            return Err(DomainError::invalid(
                "the first message of an upload must carry spec",
            ));
        };
        let spec = ValidSpec::parse(*spec)?;
        let mut inspector = ContentInspector::new(self.limits.content, spec.declared.clone())?;
        let mut stored = StoredBytes::new(self.limits.keep_metadata, spec.declared.size);
        // What this upload holds in memory, reserved as it grows: the
        // received bytes kept for the renders and those in the store's
        // buffers (mostly the same `Bytes`), up to the larger of the two
        // bounds, plus the structures inspection holds.
        let mut memory = MemoryUse {
            reservation: self.budget.reserve(UPLOAD_OVERHEAD, "an upload").await?,
            bound: self
                .blobs
                .write_memory(spec.declared.size)
                .max(stored.kept_bound(spec.declared.size)),
            received: 0,
        };

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
                &mut stored,
                writer.as_mut(),
                &mut journal,
                (&mut pace, &mut memory, &self.budget),
            )
            .await
        };
        let finished = match received {
            Ok(()) => stored.finish(writer.as_mut(), inspector).await,
            Err(error) => Err(error),
        };
        let pending = journal.entry;
        let facts = match finished {
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

    /// Writes bytes durably, makes and stores the variants, then writes the
    /// metadata; removes every object it wrote if anything fails.
    async fn commit(
        &self,
        owner: UserId,
        write: CompleteWrite,
        spec: ValidSpec,
        mut facts: StoredFacts,
    ) -> Result<ImageRecord, DomainError> {
        let CompleteWrite {
            id,
            key,
            mut writer,
            pending,
        } = write;
        if let Some((sha256_hex, crc32c)) = &facts.digest {
            writer.written_checksums(sha256_hex, *crc32c);
        }
        // Finished or aborted by `finish`, the write needs no journal any more.
        let finished = writer.finish().await;
        self.clear_journal(pending).await;
        finished?;
        // Rendering first: when it reads the original back, the same bytes
        // give the checksums, so nothing is read twice. Checksums still
        // missing after it mean nothing was rendered (no variants to undo).
        let rendered = match self.render_and_store(&id, &mut facts).await {
            Ok(rendered) => rendered,
            Err(error) => {
                self.delete_blob_logged(&key).await;
                return Err(error);
            }
        };
        let digest = match facts.digest.take() {
            Some(digest) => Ok(digest),
            None => self.stored_digest(&key, facts.size_bytes).await,
        };
        let (sha256_hex, crc32c) = match digest {
            Ok(digest) => digest,
            Err(error) => {
                self.delete_blob_logged(&key).await;
                return Err(error);
            }
        };
        let (variants, blurhash) = rendered.unwrap_or_default();
        let (width, height) = facts.viewed_dimensions();
        let now = Timestamp::now();
        let record = ImageRecord {
            id,
            owner,
            filename: spec.filename,
            content_type: facts.uploaded.content_type.to_owned(),
            size_bytes: facts.size_bytes,
            sha256: sha256_hex,
            crc32c,
            width,
            height,
            title: spec.title,
            description: spec.description,
            tags: spec.tags,
            location: spec.location,
            attributes: spec.attributes,
            create_time: now,
            update_time: now,
            variants,
            revision: 1,
            idempotency_key: spec.idempotency_key,
            uploaded_sha256: facts.uploaded.sha256_hex,
            metadata_stripped: facts.scrubbed.stripped,
            blurhash,
        };
        let outcome = self.metadata.create(&record).await;
        if !matches!(outcome, Ok(CreateOutcome::Created)) {
            for variant in record.rendition_names() {
                self.delete_blob_logged(&ObjectKey::new(&id, &variant))
                    .await;
            }
        }
        match outcome? {
            CreateOutcome::Created => Ok(record),
            CreateOutcome::IdempotencyKeyTaken(existing)
                if existing.uploaded_sha256() == record.uploaded_sha256() =>
            {
                Ok(*existing)
            }
            CreateOutcome::IdempotencyKeyTaken(_) => Err(DomainError::AlreadyExists(
                "idempotency_key was already used for an image with other content".into(),
            )),
        }
    }
}

/// Memory an upload holds besides its received bytes: the header the
/// inspector gathers and the structure the scrubber holds (1 MiB each at
/// most).
const UPLOAD_OVERHEAD: u64 = 2 * 1024 * 1024;

/// An upload's share of the memory budget: see [`Images::upload`].
struct MemoryUse {
    reservation: Reservation,
    /// The most of the received bytes held at once: kept for the renders,
    /// or in the store's part buffers.
    bound: u64,
    received: u64,
}

/// How fast an upload must move, so that a slow or idle caller cannot hold
/// an upload slot and its buffers.
#[derive(Clone, Copy, Debug)]
pub struct PaceLimits {
    /// Longest time without a new image byte: messages without bytes
    /// (empty chunks, heartbeats) do not count as progress.
    pub idle_timeout: Duration,
    /// Longest time from the first message to `finish_write`.
    pub deadline: Duration,
    /// Messages every upload may send whatever their size.
    pub free_messages: u64,
    /// Past those, one more message is allowed per this many bytes
    /// received: the cost of an upload follows its bytes, not how finely
    /// it was cut (each message costs a decode, a wake-up and a check).
    pub bytes_per_message: u64,
}

/// The clock and message count of one upload; see [`PaceLimits`].
struct Pace {
    limits: PaceLimits,
    started: Instant,
    last_progress: Instant,
    messages: u64,
    bytes: u64,
}

impl Pace {
    fn new(limits: &PaceLimits) -> Self {
        let now = Instant::now();
        Self {
            limits: *limits,
            started: now,
            last_progress: now,
            messages: 0,
            bytes: 0,
        }
    }

    /// The next message, unless the upload stalls or runs out of time.
    async fn next<S>(
        &mut self,
        frames: &mut S,
    ) -> Result<Option<Result<UploadFrame, DomainError>>, DomainError>
    where
        S: Stream<Item = Result<UploadFrame, DomainError>> + Send + Unpin,
    {
        let idle_at = self.last_progress + self.limits.idle_timeout;
        let deadline_at = self.started + self.limits.deadline;
        let frame = tokio::time::timeout_at(idle_at.min(deadline_at), frames.next())
            .await
            .map_err(|_| {
                if Instant::now() >= deadline_at {
                    DomainError::DeadlineExceeded(format!(
                        "the upload did not finish within {}s (--upload-deadline)",
                        self.limits.deadline.as_secs_f32()
                    ))
                } else {
                    DomainError::DeadlineExceeded(format!(
                        "the upload stream sent no image bytes for {}s (--upload-idle-timeout)",
                        self.limits.idle_timeout.as_secs_f32()
                    ))
                }
            })?;
        self.messages += 1;
        let allowed = self.limits.free_messages + self.bytes / self.limits.bytes_per_message.max(1);
        if self.messages > allowed {
            return Err(DomainError::ResourceExhausted(format!(
                "the upload sends too many small messages: after {} messages, each must bring \
                 {} bytes on average (send chunks of 64 KiB to 1 MiB)",
                self.limits.free_messages, self.limits.bytes_per_message
            )));
        }
        Ok(frame)
    }

    /// `n` image bytes arrived.
    fn progressed(&mut self, n: usize) {
        if n > 0 {
            self.bytes += n as u64;
            self.last_progress = Instant::now();
        }
    }
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
            tracing::warn!(image_id = %entry.image_id, error = %crate::telemetry::error_chain(&error), "could not clear an upload's journal entry");
        }
    }
}

/// Reads chunks until `finish`, checking each and passing it to the writer.
async fn receive<S>(
    frames: &mut S,
    inspector: &mut ContentInspector,
    stored: &mut StoredBytes,
    writer: &mut dyn BlobWriter,
    journal: &mut Journal<'_>,
    (pace, memory, budget): (&mut Pace, &mut MemoryUse, &MemoryBudget),
) -> Result<(), DomainError>
where
    S: Stream<Item = Result<UploadFrame, DomainError>> + Send + Unpin,
{
    loop {
        let Some(frame) = pace.next(frames).await? else {
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
                memory.received += data.len() as u64;
                let held = memory.received.min(memory.bound) + data.len() as u64;
                budget
                    .grow(&mut memory.reservation, held + UPLOAD_OVERHEAD, "an upload")
                    .await?;
                inspector.feed(&data, crc32c)?;
                pace.progressed(data.len());
                if !data.is_empty() {
                    stored.write(data, writer).await?;
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

/// Stored originals up to this size are kept in memory until the upload
/// is committed (phone photos are 2-12 MiB): variants are made from them,
/// and their checksums computed, without reading them back from the store.
/// It bounds what an upload holds beyond the store's own buffers.
const KEEP_IN_MEMORY: u64 = 16 * 1024 * 1024;

/// The bytes that reach the store: the upload with its identifying
/// metadata removed (see [`crate::media::scrub`]).
///
/// Their checksums are those of the upload unless the scrubber changed a
/// byte; only then are they computed again, from the kept bytes or, for
/// larger originals, from the store (see [`Images::stored_digest`]). Most
/// large images carry no metadata, so they are hashed once.
struct StoredBytes {
    scrubber: Option<Scrubber>,
    /// The stored bytes while they fit in [`KEEP_IN_MEMORY`], as shared
    /// slices of the received chunks (not copies).
    kept: Option<Vec<Bytes>>,
    pieces: Vec<Bytes>,
    /// Small pieces waiting to make up one of [`MIN_PIECE`] bytes.
    small: Vec<Bytes>,
    small_len: usize,
    size: u64,
}

/// Pieces smaller than this are gathered (copied together) before they
/// reach the store or the kept copy: the scrubber cuts the stream at every
/// segment, and a piece costs a write call (on the embedded store, a trip
/// to the blocking pool) and an entry in an S3 part body, so an upload cut
/// into tiny segments would cost per segment rather than per byte. Pieces
/// at least this large pass without a copy.
const MIN_PIECE: usize = 64 * 1024;

impl StoredBytes {
    /// Nothing is kept for an upload declared larger than
    /// [`KEEP_IN_MEMORY`].
    fn new(keep_metadata: bool, declared_size: Option<u64>) -> Self {
        let keep = declared_size.is_none_or(|size| size <= KEEP_IN_MEMORY);
        Self {
            scrubber: Some(Scrubber::new(keep_metadata)),
            kept: keep.then(Vec::new),
            pieces: Vec::new(),
            small: Vec::new(),
            small_len: 0,
            size: 0,
        }
    }

    /// Most bytes the kept copy can hold, for an upload of `declared` bytes.
    fn kept_bound(&self, declared: Option<u64>) -> u64 {
        if self.kept.is_some() {
            declared.map_or(KEEP_IN_MEMORY, |size| size.min(KEEP_IN_MEMORY))
        } else {
            0
        }
    }

    async fn write(&mut self, data: Bytes, writer: &mut dyn BlobWriter) -> Result<(), DomainError> {
        let scrubber = self.scrubber.as_mut().expect("written before finish");
        scrubber.push(data, &mut self.pieces)?;
        self.flush(writer, false).await
    }

    /// Passes the scrubber's output on in pieces of at least [`MIN_PIECE`]
    /// bytes (the last may be smaller when `last`).
    async fn flush(&mut self, writer: &mut dyn BlobWriter, last: bool) -> Result<(), DomainError> {
        for piece in std::mem::take(&mut self.pieces) {
            if piece.is_empty() {
                continue;
            }
            if piece.len() >= MIN_PIECE {
                if !self.small.is_empty() {
                    let gathered = self.take_small();
                    self.store(gathered, writer).await?;
                }
                self.store(piece, writer).await?;
                continue;
            }
            self.small_len += piece.len();
            self.small.push(piece);
            if self.small_len >= MIN_PIECE {
                let gathered = self.take_small();
                self.store(gathered, writer).await?;
            }
        }
        if last && !self.small.is_empty() {
            let gathered = self.take_small();
            self.store(gathered, writer).await?;
        }
        Ok(())
    }

    /// The small pieces as one.
    fn take_small(&mut self) -> Bytes {
        self.small_len = 0;
        gather(std::mem::take(&mut self.small))
    }

    async fn store(
        &mut self,
        piece: Bytes,
        writer: &mut dyn BlobWriter,
    ) -> Result<(), DomainError> {
        self.size += piece.len() as u64;
        if self.size > KEEP_IN_MEMORY {
            self.kept = None;
        } else if let Some(kept) = &mut self.kept {
            kept.push(piece.clone());
        }
        writer.write(piece).await?;
        Ok(())
    }

    /// Ends the stream: writes what the scrubber held back and checks the
    /// upload as a whole.
    async fn finish(
        mut self,
        writer: &mut dyn BlobWriter,
        inspector: ContentInspector,
    ) -> Result<StoredFacts, DomainError> {
        let scrubber = self.scrubber.take().expect("finished once");
        let scrubbed = scrubber.finish(&mut self.pieces);
        let uploaded = inspector.finish()?;
        let scrubbed = scrubbed?;
        self.flush(writer, true).await?;
        let digest = if scrubbed.changed {
            self.kept.as_deref().map(digest_of)
        } else {
            Some((uploaded.sha256_hex.clone(), uploaded.crc32c))
        };
        Ok(StoredFacts {
            uploaded,
            scrubbed,
            size_bytes: self.size,
            digest,
            kept: self.kept,
        })
    }
}

/// Pieces as one, copied once into a buffer of the final size (a single
/// piece is returned as it is).
pub(super) fn gather(pieces: Vec<Bytes>) -> Bytes {
    if let [piece] = pieces.as_slice() {
        return piece.clone();
    }
    let len = pieces.iter().map(Bytes::len).sum();
    let mut gathered = bytes::BytesMut::with_capacity(len);
    pieces
        .iter()
        .for_each(|piece| gathered.extend_from_slice(piece));
    gathered.freeze()
}

/// SHA-256 (hex) and CRC32C of bytes in pieces.
fn digest_of(pieces: &[Bytes]) -> (String, u32) {
    let mut checksums = Checksums::default();
    pieces.iter().for_each(|piece| checksums.update(piece));
    checksums.finish()
}

/// The stored checksums, SHA-256 and CRC32C, computed together.
#[derive(Default)]
struct Checksums {
    sha256: sha2::Sha256,
    crc32c: u32,
}

impl Checksums {
    fn update(&mut self, bytes: &[u8]) {
        sha2::Digest::update(&mut self.sha256, bytes);
        self.crc32c = crc32c::crc32c_append(self.crc32c, bytes);
    }

    /// Lower-case hex SHA-256 and the CRC32C.
    fn finish(self) -> (String, u32) {
        (
            hex::encode(sha2::Digest::finalize(self.sha256)),
            self.crc32c,
        )
    }
}

/// What is known of an upload once all of it is stored.
struct StoredFacts {
    /// Of the bytes as uploaded.
    uploaded: ContentFacts,
    scrubbed: Scrubbed,
    /// Of the bytes as stored; the checksums are `None` until computed
    /// from the store (changed bytes too large to keep).
    size_bytes: u64,
    digest: Option<(String, u32)>,
    /// The stored bytes, when small enough to have been kept.
    kept: Option<Vec<Bytes>>,
}

impl StoredFacts {
    /// Width and height as a viewer shows them: EXIF orientations 5 to 8
    /// turn the image by a quarter.
    fn viewed_dimensions(&self) -> (u32, u32) {
        let (width, height) = (self.uploaded.width, self.uploaded.height);
        if (5..=8).contains(&self.scrubbed.orientation) {
            (height, width)
        } else {
            (width, height)
        }
    }
}

impl Images {
    /// Makes the variants and placeholder of a stored original and stores
    /// the variants; `None` for types that are not decoded. On failure,
    /// removes the variants it stored. When it has to read the original
    /// back, it fills in missing checksums from those bytes.
    async fn render_and_store(
        &self,
        id: &ImageId,
        facts: &mut StoredFacts,
    ) -> Result<Option<(Vec<Variant>, String)>, DomainError> {
        let content_type = facts.uploaded.content_type;
        if !self.limits.variants || !Renderer::can_render(content_type) {
            return Ok(None);
        }
        // The turn first, then the bytes: waiting renders hold no memory.
        let pixels = u64::from(facts.uploaded.width) * u64::from(facts.uploaded.height);
        let slot = self.renderer.slot(pixels).await;
        let _source_memory = self
            .budget
            .reserve(facts.size_bytes, "reading this image to make its variants")
            .await?;
        let source = match &facts.kept {
            Some(pieces) => pieces.concat().into(),
            None => {
                let original = ObjectKey::new(id, &VariantName::original());
                let source = self.read_all(&original, facts.size_bytes).await?;
                if facts.digest.is_none() {
                    facts.digest = Some(digest_of(std::slice::from_ref(&source)));
                }
                source
            }
        };
        // What decoding, resizing and encoding will hold, from the header:
        // refused when over the per-render cap, else reserved (waiting for
        // other work to give memory back) before anything is decoded.
        let (width, height) = (facts.uploaded.width, facts.uploaded.height);
        let needed = variants::memory_needed(&source, content_type, width, height);
        if needed > self.limits.render.max_memory {
            return Err(DomainError::ResourceExhausted(format!(
                "the image needs about {} MiB of memory to decode and resize; the limit is {} MiB \
                 (--max-render-memory)",
                needed >> 20,
                self.limits.render.max_memory >> 20
            )));
        }
        let _render_memory = self
            .budget
            .reserve(needed, "making this image's variants")
            .await?;
        let Rendered { variants, blurhash } = self
            .renderer
            .render(slot, source, content_type, facts.scrubbed.orientation)
            .await?;
        let mut stored: Vec<Variant> = Vec::with_capacity(variants.len());
        for rendition in variants {
            let name = VariantName::parse(rendition.name)?;
            let key = ObjectKey::new(id, &name);
            let variant = Variant {
                name,
                content_type: rendition.content_type.to_owned(),
                size_bytes: rendition.bytes.len() as u64,
                width: rendition.width,
                height: rendition.height,
            };
            if let Err(error) = self.write_object(&key, rendition.bytes).await {
                for written in &stored {
                    self.delete_blob_logged(&ObjectKey::new(id, &written.name))
                        .await;
                }
                return Err(error);
            }
            stored.push(variant);
        }
        Ok(Some((stored, blurhash)))
    }

    /// Checksums of a stored object, read back from the store.
    async fn stored_digest(
        &self,
        key: &ObjectKey,
        size: u64,
    ) -> Result<(String, u32), DomainError> {
        let mut stream = self.blobs.read(key, 0, size).await?;
        let mut checksums = Checksums::default();
        while let Some(chunk) = stream.next().await {
            checksums.update(&chunk?);
        }
        Ok(checksums.finish())
    }

    /// The whole of a stored object, in memory.
    async fn read_all(&self, key: &ObjectKey, size: u64) -> Result<Bytes, DomainError> {
        let mut stream = self.blobs.read(key, 0, size).await?;
        let mut bytes = bytes::BytesMut::with_capacity(usize::try_from(size).unwrap_or(0));
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk?);
        }
        Ok(bytes.freeze())
    }

    /// Stores a small object in one go (a failed write leaves nothing).
    async fn write_object(&self, key: &ObjectKey, bytes: Bytes) -> Result<(), DomainError> {
        let mut writer = self
            .blobs
            .start_write(key, Some(bytes.len() as u64))
            .await?;
        if let Err(error) = writer.write(bytes).await {
            writer.abort().await;
            return Err(error.into());
        }
        writer.finish().await?;
        Ok(())
    }
}
