//! The upload pipeline, shared by every backend. One upload, in order:
//!
//! 1. [`spec`]: the first message, validated: the metadata to store and what
//!    the bytes must match.
//! 2. [`pace`]: every message: the upload keeps moving, within its deadline,
//!    without cutting its bytes too fine.
//! 3. [`stored`]: every chunk: checked ([`crate::media::content`]), scrubbed
//!    ([`crate::media::scrub`]), gathered into pieces and written.
//!    A HEIF whose metadata items come before its `meta` box is written
//!    where no caller can read it, then once more with them overwritten
//!    ([`rescrub`]).
//! 4. [`render`]: once the original is durable: variants and the placeholder
//!    ([`crate::media::variants`]).
//! 5. The record, last ([`MetadataStore::create`]): until it exists, no
//!    caller can see the image. An erasure of the owner's data begun under
//!    the upload withdraws it ([`erased`]).
//!
//! Every write goes through the upload's [`writes::Writes`], which undoes
//! them all unless the record was stored: on an error, a panic or a
//! cancelled call.
use std::sync::Arc;
use tracing::Instrument as _;

use futures::Stream;

use super::admission::Admissions;
use super::block::BlockHook;
use super::budget::{MemoryBudget, Reservation, UserUploads};
use super::image::{ImageRecord, ImageState, Timestamp};
use super::limits::Limits;
use super::ports::{
    BlobStore, CreateOutcome, MetadataStore, ObjectKey, PendingEncodings, StorageError,
};
use super::quota::{self, QuotaHold, Quotas, held_by};
use super::scan::ScanHook;
use super::{DomainError, UserId, VariantName};
use crate::media::content::ContentInspector;
use crate::media::variants::Renderer;

mod backfill;
mod blocking;
mod encodings;
mod erased;
mod pace;
mod render;
mod rescrub;
pub mod resumable;
mod scanning;
mod shared;
mod spec;
mod stored;
mod writes;

pub use backfill::{Backfilled, Lacking};
pub use encodings::{AddedToRecord, Completed};
pub use scanning::{Scanned, scan_overdue};
pub use spec::{FramePayload, UploadFrame};

use pace::Pace;
pub use shared::Uploads;
use shared::{Origin, UPLOAD_OVERHEAD, UploadSlot};
use spec::ValidSpec;
use stored::{StoredBytes, StoredFacts};
use writes::Writes;

/// Largest upload message the transport accepts: chunks of up to 4 MiB
/// plus framing. An upload's working set counts one of them.
pub const MAX_MESSAGE_BYTES: u64 = 4 * 1024 * 1024 + 64 * 1024;

/// What an upload message carries besides its chunk (the field's key and
/// length, `chunk_crc32c`, `finish_write`: 13 bytes at most), with room.
const MESSAGE_FRAMING: u64 = 64;

/// The largest message an upload of an image declared to be `declared`
/// bytes sends: one chunk of the whole image at most. Its working set
/// counts one message of this size; the transport reserves the rest of
/// any longer message still arriving, so a small declared size cannot
/// make room for large unfinished messages.
pub fn message_bound(declared: Option<u64>) -> u64 {
    declared.map_or(MAX_MESSAGE_BYTES, |size| {
        size.saturating_add(MESSAGE_FRAMING).min(MAX_MESSAGE_BYTES)
    })
}

/// The part of [`UPLOAD_OVERHEAD`] that is the scrubber's: a structure
/// larger than this (a HEIF's `meta` box, up to
/// [`crate::media::scrub::MAX_HEIF_META`]) grows the upload's reservation
/// by the rest as soon as its length is read, before its bytes are held.
const SCRUBBER_SHARE: u64 = 1024 * 1024;

/// An upload's share of the memory budget: the received bytes kept for the
/// renders and those in the store's buffers (mostly the same `Bytes`), up
/// to the larger of the two bounds, one message, plus [`UPLOAD_OVERHEAD`].
///
/// What the upload needs to go on (the store's buffers, one message, the
/// overhead; and the kept copy when the size is declared) is reserved whole
/// when it is admitted (see [`Admissions`]), so it is never refused for
/// memory half-way. The kept copy of an upload of undeclared size is an
/// extra: it grows while the budget has room at that moment, and is given
/// up (the renders then read the original back) when it has not.
struct MemoryUse {
    reservation: Reservation,
    /// The most of the received bytes the store's buffers hold at once.
    store: u64,
    /// The most the kept copy holds, while it is kept.
    kept: u64,
    received: u64,
    /// What the scrubber holds or is about to hold (one structure).
    structure: u64,
}

impl MemoryUse {
    /// Bytes held with `message` bytes just received.
    fn held(&self, message: u64, keeping: bool) -> u64 {
        let kept = if keeping { self.kept } else { 0 };
        (self.received.min(self.store.max(kept)))
            .saturating_add(message)
            .saturating_add(UPLOAD_OVERHEAD)
            .saturating_add(self.structure.saturating_sub(SCRUBBER_SHARE))
    }
}

/// The encodings an acknowledged image still needs, and the pixels they
/// are made from.
type BackgroundWork = (PendingEncodings, encodings::HeldPixels);

/// An upload between its spec and its last byte.
struct Receiving {
    spec: ValidSpec,
    inspector: ContentInspector,
    stored: StoredBytes,
    pace: Pace,
    memory: MemoryUse,
}

impl Uploads {
    pub fn new(
        blobs: Arc<dyn BlobStore>,
        metadata: Arc<dyn MetadataStore>,
        limits: Limits,
        budget: MemoryBudget,
    ) -> Self {
        let total = budget.total();
        Self {
            quotas: Quotas::new(metadata.clone(), limits.quota),
            blobs,
            metadata,
            slots: Arc::new(tokio::sync::Semaphore::new(
                limits.max_concurrent_uploads.max(1),
            )),
            user_uploads: UserUploads::new(limits.max_uploads_per_user),
            admissions: Admissions::new(budget.clone()),
            budget,
            renderer: Renderer::new(limits.render, limits.variant_sizes.clone()),
            background: shared::Background::new(
                limits.encodings.max_queued,
                limits.encodings.max_queued_per_user,
                limits.render.max_concurrent,
                total,
            ),
            limits,
            scan: None,
            block: None,
        }
    }

    /// The same, with every new image sent to the content scanner `hook`.
    pub fn with_scan_hook(mut self, hook: Option<ScanHook>) -> Self {
        self.scan = hook;
        self
    }

    /// The same, with every new image checked against the block list
    /// `hook` first.
    pub fn with_block_list(mut self, hook: Option<BlockHook>) -> Self {
        self.block = hook;
        self
    }

    /// Receives an upload stream and stores the image. On any error, a
    /// cancelled call or a stream that ends without `finish`, nothing is
    /// stored. A stream whose first message resumes an upload session
    /// continues it instead (see [`resumable`]).
    pub async fn upload<S>(
        &self,
        caller: &UserId,
        mut frames: S,
    ) -> Result<ImageRecord, DomainError>
    where
        S: Stream<Item = Result<UploadFrame, DomainError>> + Send + Unpin + 'static,
    {
        let slot = self.slot(caller).await?;
        let mut pace = Pace::new(&self.limits.pace);
        let first = pace
            .next(&mut frames)
            .await?
            .ok_or_else(|| DomainError::invalid("the upload stream is empty"))??;
        match first.payload {
            FramePayload::Spec(spec) => {
                let spec = ValidSpec::parse(*spec)?;
                self.store_new(
                    caller,
                    spec,
                    first.finish,
                    pace,
                    frames,
                    Origin::Stream(slot),
                )
                .await
            }
            FramePayload::Resume {
                upload_id,
                write_offset,
            } => {
                let resumed = (first.finish, pace, frames, slot);
                self.resume(caller, &upload_id, write_offset, resumed).await
            }
            _ => Err(DomainError::invalid(
                "the first message of an upload must carry spec or resume",
            )),
        }
    }

    /// Per-user usage and quotas, which uploads reserve from.
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// One of the caller's uploads, then one of the replica's upload slots.
    /// The caller's cap is checked first and refuses at once, so one user's
    /// waiting uploads are bounded like its running ones; a busy replica is
    /// waited for up to `--upload-slot-wait`, then RESOURCE_EXHAUSTED.
    async fn slot(&self, caller: &UserId) -> Result<UploadSlot, DomainError> {
        let user = self.user_uploads.start(caller)?;
        let global = match self.slots.clone().try_acquire_owned() {
            Ok(global) => global,
            Err(_) => {
                let started = tokio::time::Instant::now();
                let waited = tokio::time::timeout(
                    self.limits.upload_slot_wait,
                    self.slots.clone().acquire_owned(),
                )
                .await;
                metrics::histogram!("imageservice_upload_slot_wait_seconds")
                    .record(started.elapsed().as_secs_f64());
                match waited {
                    Ok(Ok(global)) => global,
                    _ => {
                        metrics::counter!("imageservice_upload_slot_refusals_total").increment(1);
                        return Err(DomainError::ResourceExhausted(format!(
                            "every upload slot of this replica stayed busy for {} \
                             (--max-concurrent-uploads, --upload-slot-wait); retry with backoff",
                            humantime::format_duration(self.limits.upload_slot_wait)
                        )));
                    }
                }
            }
        };
        Ok(UploadSlot {
            _global: global,
            _user: user,
        })
    }

    /// Stores a new image from its validated spec and the frames after it,
    /// for an upload stream or for the upload session it finishes (see
    /// [`Origin`]).
    async fn store_new<S>(
        &self,
        caller: &UserId,
        spec: ValidSpec,
        finished: bool,
        mut pace: Pace,
        mut frames: S,
        origin: Origin<'_>,
    ) -> Result<ImageRecord, DomainError>
    where
        S: Stream<Item = Result<UploadFrame, DomainError>> + Send + Unpin,
    {
        let limits = &self.limits;
        let began = Timestamp::now();
        // Before anything is held: an upload past its owner's quota is
        // refused at once.
        let (image_id, quota, slot) = match origin {
            Origin::Session(image_id, upload) => (
                Some(image_id),
                self.quotas.session_hold(caller, upload),
                None,
            ),
            Origin::Stream(slot) => {
                let bytes = spec.declared.size.unwrap_or(limits.content.max_bytes);
                // A retry of an upload already stored (its idempotency
                // key names an image) reserves nothing: it stores nothing
                // new, so a user at the quota still gets their image.
                let retry = match &spec.idempotency_key {
                    Some(key) => self.metadata.keyed_image(caller, key).await?.is_some(),
                    None => false,
                };
                let quota = if retry {
                    self.quotas.nothing_reserved(caller)
                } else {
                    self.quotas.reserve(caller, bytes).await?
                };
                (None, quota, Some(slot))
            }
        };
        let inspector = ContentInspector::new(limits.content, spec.declared.clone())?
            .refusing_renders_over(
                limits.variants.then_some(limits.render.max_memory),
                self.renderer.largest_side(),
            );
        let stored = StoredBytes::new(limits.keep_metadata, spec.declared.size, &limits.content);
        // Nothing holds more than the largest image allowed (a store that
        // keeps everything in memory would otherwise have no bound).
        let store = self
            .blobs
            .write_memory(spec.declared.size)
            .min(self.limits.content.max_bytes);
        let kept = stored.kept_bound(spec.declared.size);
        // The working set, before any image byte is read. A declared size
        // makes it smaller (one part, the message no larger than the
        // image) and reserves the kept copy too.
        let message = message_bound(spec.declared.size);
        let kept_upfront = if spec.declared.size.is_some() {
            kept
        } else {
            0
        };
        let working_set = store
            .max(kept_upfront)
            .saturating_add(message)
            .saturating_add(UPLOAD_OVERHEAD);
        let memory = MemoryUse {
            reservation: self
                .admissions
                .admit(caller, working_set, self.limits.upload_slot_wait)
                .await?,
            store,
            kept,
            received: 0,
            structure: 0,
        };
        pace.waited_for_the_service();
        let mut upload = Receiving {
            spec,
            inspector,
            stored,
            pace,
            memory,
        };

        let received = async move {
            let mut writes = Writes::start(
                self.blobs.clone(),
                self.metadata.clone(),
                image_id,
                upload.spec.declared.size,
            )
            .await?;
            let received = if finished {
                Ok(())
            } else {
                self.receive(&mut frames, &mut upload, &mut writes).await
            };
            let finished = match received {
                Ok(()) => upload.stored.finish(&mut writes, upload.inspector).await,
                Err(error) => Err(error),
            };
            let facts = writes.undo_on_error(finished).await?;
            Ok::<_, DomainError>((writes, facts, upload.spec, upload.memory.reservation))
        }
        .await;
        // A refused upload gives its reservation back before the caller
        // hears of it, so that a corrected retry finds the room.
        let (writes, facts, spec, memory) = match received {
            Ok(received) => received,
            Err(error) => {
                quota.release().await;
                return Err(error);
            }
        };

        // From here on the image is complete: finish it even if the caller
        // goes away, so a cancellation cannot leave bytes without metadata.
        // The upload's memory goes with it (the store's last parts, the
        // kept bytes).
        let uploads = self.clone();
        let owner = caller.clone();
        tokio::spawn(
            async move {
                // The stream's upload slot too (see `Origin::Stream`).
                let _slot = slot;
                let uploader = Uploader { owner, began };
                uploads
                    .commit(writes, uploader, spec, facts, memory, quota)
                    .await
            }
            .in_current_span(),
        )
        .await
        .map_err(|e| DomainError::Internal(Box::new(e)))?
    }

    /// Reads chunks until `finish`, checking each and writing it through the
    /// session.
    async fn receive<S>(
        &self,
        frames: &mut S,
        upload: &mut Receiving,
        writes: &mut Writes,
    ) -> Result<(), DomainError>
    where
        S: Stream<Item = Result<UploadFrame, DomainError>> + Send + Unpin,
    {
        let memory = &mut upload.memory;
        loop {
            let frame = upload
                .pace
                .next_after_first(frames, || {
                    "the upload stream ended without finish_write; nothing was stored".into()
                })
                .await?;
            if let FramePayload::Chunk { data, crc32c } = frame.payload {
                // Checked first: bytes past the declared size are refused
                // for what they are, not for the memory they would take.
                upload.inspector.feed(&data, crc32c)?;
                memory.received += data.len() as u64;
                memory.structure = upload.stored.structure();
                let message = data.len() as u64;
                let keeping = upload.stored.keeps();
                let held = memory.held(message, keeping);
                if !self.budget.try_grow(&mut memory.reservation, held) && keeping {
                    metrics::counter!("imageservice_upload_kept_copies_dropped_total").increment(1);
                    upload.stored.stop_keeping();
                }
                // Within what admission reserved: this waits only if a
                // message was larger than the transport's cap, or for a
                // HEIF `meta` box over the scrubber's share.
                let held = memory.held(message, upload.stored.keeps());
                self.budget
                    .grow(&mut memory.reservation, held, "an upload")
                    .await?;
                upload.pace.progressed(data.len());
                if !data.is_empty() {
                    upload.stored.write(data, writes).await?;
                }
            }
            if frame.finish {
                return Ok(());
            }
        }
    }

    /// Makes the original durable, makes and stores the variants, then
    /// stores the record; the session undoes every write unless the record
    /// was stored.
    async fn commit(
        &self,
        mut writes: Writes,
        Uploader { owner, began }: Uploader,
        spec: ValidSpec,
        facts: StoredFacts,
        memory: Reservation,
        quota: QuotaHold,
    ) -> Result<ImageRecord, DomainError> {
        let mut quota = quota;
        let described = self
            .describe(&mut writes, owner, spec, facts, memory, &mut quota)
            .await;
        let described = writes.undo_on_error(described).await;
        let (record, outcome, background) = match described {
            Ok(described) => described,
            Err(error) => {
                quota.release().await;
                self.forget_encodings(writes.id()).await;
                return Err(error);
            }
        };
        match outcome {
            CreateOutcome::Created => {
                let (id, session) = (*writes.id(), writes.has_given_id());
                writes.commit();
                // An upload session's commit looks for itself, since the
                // session began (see `resumable`).
                if !session && self.erased_since(&record.owner, began).await {
                    self.forget_encodings(&id).await;
                    self.withdraw(record).await;
                    return Err(quota::being_erased());
                }
                if let Some((pending, held)) = background {
                    self.queue_encodings(record.clone(), pending, held);
                }
                if !self.block_after_store(&record).await {
                    self.scan_after_store(&record).await;
                }
                Ok(record)
            }
            CreateOutcome::IdempotencyKeyTaken(existing) => {
                // Nothing of this upload is referred to: it goes.
                writes.undo().await;
                quota.release().await;
                self.forget_encodings(writes.id()).await;
                if existing.uploaded_sha256() == record.uploaded_sha256() {
                    Ok(*existing)
                } else {
                    Err(DomainError::AlreadyExists(
                        "idempotency_key was already used for an image with other content".into(),
                    ))
                }
            }
        }
    }

    /// The durable original, the variants, the checksums, and the attempt
    /// to store the record that describes them; with the work left for
    /// the background, journaled before the record is stored.
    async fn describe(
        &self,
        writes: &mut Writes,
        owner: UserId,
        spec: ValidSpec,
        mut facts: StoredFacts,
        mut memory: Reservation,
        quota: &mut QuotaHold,
    ) -> Result<(ImageRecord, CreateOutcome, Option<BackgroundWork>), DomainError> {
        writes.finish_original(facts.digest.as_ref()).await?;
        if writes.is_staged() {
            // Within the upload's reservation: the store's buffers again.
            self.second_pass(writes, &mut facts).await?;
        }
        // The store's buffers are empty now: only the kept bytes stay held
        // (the renders reserve their own memory), so that admitted uploads
        // waiting to render do not hold the memory their renders need.
        let kept: u64 = facts.kept.iter().flatten().map(|b| b.len() as u64).sum();
        memory.shrink_to(kept);
        // Rendering first: when it reads the original back, the same bytes
        // give the checksums, so nothing is read twice. Checksums still
        // missing after it mean nothing was rendered.
        // The journal entry of the encodings made after the acknowledgement
        // is written while the variants are made: it must exist before the
        // record, and costs the acknowledgement no time of its own.
        let id = *writes.id();
        let pending = self.pending_encodings(&id, &owner, facts.uploaded.content_type);
        let journal = async {
            match &pending {
                Some(pending) => Ok(self.metadata.record_pending_encodings(pending).await?),
                None => Ok::<(), DomainError>(()),
            }
        };
        let (rendered, ()) =
            tokio::try_join!(self.render_and_store(&owner, writes, &mut facts), journal)?;
        let (sha256_hex, crc32c) = match facts.digest.take() {
            Some(digest) => digest,
            None => {
                let original = ObjectKey::new(writes.id(), &VariantName::original());
                self.stored_digest(&original, facts.size_bytes).await?
            }
        };
        let render::Made {
            variants,
            blurhash,
            thumbhash,
            pdq_hash,
            pdq_quality,
            held,
        } = rendered.unwrap_or_default();
        let background = pending.zip(held);
        let (width, height) = facts.viewed_dimensions();
        let now = Timestamp::now();
        let mut record = ImageRecord {
            id: *writes.id(),
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
            thumbhash,
            state: ImageState::Active,
            state_reason: String::new(),
            state_time: None,
            removed_objects: Vec::new(),
            pdq_hash,
            pdq_quality,
            declined_encodings: Vec::new(),
        };
        // The block list first: an image it quarantines is not scanned.
        // Then the content scanner's verdict (`sync`), or `Pending`
        // (`async`).
        if !self.block_before_store(&mut record)? {
            self.scan_before_store(&mut record).await?;
        }
        // An upload session's image, stored by an earlier attempt whose
        // replica went away before it could say so: the same bytes made
        // the same objects, which the stored record refers to, and that
        // attempt counted them.
        if writes.has_given_id()
            && let Some(existing) = self.metadata.get(&record.id).await?
        {
            return Ok((existing, CreateOutcome::Created, background));
        }
        // A retry of an upload already stored counts nothing: the stored
        // image is its answer (or, with other bytes, ALREADY_EXISTS).
        if let Some(key) = &record.idempotency_key
            && let Some(existing) = self.metadata.keyed_image(&record.owner, key).await?
        {
            let taken = CreateOutcome::IdempotencyKeyTaken(Box::new(existing));
            return Ok((record, taken, background));
        }
        // Counted before the record is stored, held to the quota: past it
        // the upload is refused and its writes undone.
        let settled = quota.settle(held_by(&record)).await?;
        match self.metadata.create(&record).await {
            Ok(CreateOutcome::Created) => Ok((record, CreateOutcome::Created, background)),
            outcome => {
                settled.undo().await;
                match outcome {
                    // Another attempt at the same session stored it meanwhile.
                    Err(StorageError::AlreadyExists) if writes.has_given_id() => {
                        let existing =
                            self.metadata.get(&record.id).await?.ok_or_else(|| {
                                DomainError::Internal("the image vanished".into())
                            })?;
                        Ok((existing, CreateOutcome::Created, background))
                    }
                    outcome => Ok((record, outcome?, background)),
                }
            }
        }
    }
}

/// Who stores an image, and since when: an erasure of their data asked for
/// after the upload began withdraws it (see [`erased`]).
struct Uploader {
    owner: UserId,
    began: Timestamp,
}
