//! What one upload has put in the stores, undone unless it is committed.
//!
//! Every write of an upload goes through its [`Writes`]: the original's
//! unfinished write, its journal entry, and each finished object (the
//! original, then the variants). Cleanup is the default: an error undoes
//! everything before the caller hears of it ([`Writes::undo_on_error`]),
//! and writes dropped without [`Writes::commit`] (a panic, a cancelled
//! call) undoes itself in the background. A new step of the pipeline that
//! writes through it cannot forget its cleanup.
//!
//! The original is written to its own key, unless it is staged first
//! ([`Writes::stage_original`]): then it goes to a key of the same image
//! that no record ever names ([`STAGED_ORIGINAL`]), so no caller can read
//! it (every read goes through the record's renditions); the second pass
//! writes the original from it and deletes it. A crash in between leaves an
//! object without a record, which the repair pass removes like any other
//! (and an unfinished write, journaled like the original's).
use std::sync::Arc;

use bytes::Bytes;

use crate::domain::image::Timestamp;
use crate::domain::ports::{BlobStore, BlobWriter, MetadataStore, ObjectKey, PendingWrite};
use crate::domain::{DomainError, ImageId, VariantName};
use crate::telemetry::error_chain;

pub(super) struct Writes {
    id: ImageId,
    /// The id was given (an upload session's), not made for this upload.
    given_id: bool,
    undo: Undo,
    armed: bool,
    size_hint: Option<u64>,
    /// Where the original's bytes go: [`STAGED_ORIGINAL`] or the original.
    target: VariantName,
    /// The original's write was started (it is opened by its first byte).
    opened: bool,
}

/// The variant name of an original kept where no caller can read it until
/// a second pass has made it fit to be read (see the module documentation):
/// no record ever lists it.
pub(super) const STAGED_ORIGINAL: &str = "staged-original";

/// What undoing removes.
struct Undo {
    blobs: Arc<dyn BlobStore>,
    metadata: Arc<dyn MetadataStore>,
    /// The original's write while it is unfinished.
    writer: Option<Box<dyn BlobWriter>>,
    /// The journal entry of that write, once the store has given it an id.
    journaled: Option<PendingWrite>,
    /// Finished objects, in the order they were written.
    written: Vec<ObjectKey>,
    /// The image's id when it was given (an upload session's): another
    /// finish of the same session may have stored that image meanwhile,
    /// and its objects are then that image's, never to be overwritten
    /// nor removed.
    given: Option<ImageId>,
}

impl Writes {
    /// Starts writing the original of a new image, with the id `given`
    /// or a new one.
    pub(super) async fn start(
        blobs: Arc<dyn BlobStore>,
        metadata: Arc<dyn MetadataStore>,
        given: Option<ImageId>,
        size_hint: Option<u64>,
    ) -> Result<Self, DomainError> {
        let id = given.unwrap_or_default();
        Ok(Self {
            id,
            given_id: given.is_some(),
            undo: Undo {
                blobs,
                metadata,
                writer: None,
                journaled: None,
                written: Vec::new(),
                given: given.is_some().then_some(id),
            },
            armed: true,
            size_hint,
            target: VariantName::original(),
            opened: false,
        })
    }

    /// Sends the original's bytes to [`STAGED_ORIGINAL`] instead of the
    /// original; only before its first byte.
    pub(super) fn stage_original(&mut self) -> Result<(), DomainError> {
        if self.opened {
            return Err(DomainError::Internal(
                "the original was staged after its first byte".into(),
            ));
        }
        self.target = staged_original();
        Ok(())
    }

    /// Whether the original's bytes went to [`STAGED_ORIGINAL`].
    pub(super) fn is_staged(&self) -> bool {
        self.target != VariantName::original()
    }

    /// The key the original's bytes go to.
    pub(super) fn target_key(&self) -> ObjectKey {
        ObjectKey::new(&self.id, &self.target)
    }

    /// After the staged original is finished: the bytes written next go to
    /// the original itself (the second pass).
    pub(super) fn unstage(&mut self) -> Result<(), DomainError> {
        if self.undo.writer.is_some() {
            return Err(DomainError::Internal(
                "the staged original was left unfinished".into(),
            ));
        }
        self.target = VariantName::original();
        self.opened = false;
        Ok(())
    }

    /// Deletes the staged original once the original is finished; on
    /// failure the object stays for the undo or the repair pass.
    pub(super) async fn delete_staged(&mut self) {
        let key = ObjectKey::new(&self.id, &staged_original());
        match self.undo.blobs.delete(&key).await {
            Ok(()) => self.undo.written.retain(|written| *written != key),
            Err(error) => {
                tracing::warn!(key = key.as_str(), error = %error_chain(&error), "could not delete a staged original; the repair pass removes it")
            }
        }
    }

    /// The original's writer, started on its first use.
    async fn writer(&mut self) -> Result<&mut Box<dyn BlobWriter>, DomainError> {
        if self.undo.writer.is_none() {
            if self.opened {
                return Err(finished_already());
            }
            let writer = self
                .undo
                .blobs
                .start_write(&self.target_key(), self.size_hint)
                .await?;
            self.undo.writer = Some(writer);
            self.opened = true;
        }
        self.undo.writer.as_mut().ok_or_else(finished_already)
    }

    pub(super) fn id(&self) -> &ImageId {
        &self.id
    }

    /// Whether the image's id was given rather than made for this upload.
    pub(super) fn has_given_id(&self) -> bool {
        self.given_id
    }

    /// Appends bytes to the original. As soon as the store gives the
    /// unfinished write an id (an S3 multipart upload), it is journaled, so
    /// the repair pass can abort it if this process dies first.
    pub(super) async fn write(&mut self, piece: Bytes) -> Result<(), DomainError> {
        let writer = self.writer().await?;
        writer.write(piece).await?;
        let pending_id = writer.pending_id();
        if self.undo.journaled.is_none()
            && let Some(pending_id) = pending_id
        {
            let entry = PendingWrite {
                image_id: self.id,
                variant: self.target.clone(),
                pending_id,
                started: Timestamp::now(),
            };
            self.undo.metadata.record_pending_write(&entry).await?;
            self.undo.journaled = Some(entry);
        }
        Ok(())
    }

    /// Makes the original durable and visible. `digest` (SHA-256 hex and
    /// CRC32C of the stored bytes), when known, spares a store that sends
    /// checksums computing them again.
    pub(super) async fn finish_original(
        &mut self,
        digest: Option<&(String, u32)>,
    ) -> Result<(), DomainError> {
        self.writer().await?;
        let mut writer = self.undo.writer.take().ok_or_else(finished_already)?;
        if let Err(error) = not_stored_yet(self.undo.metadata.clone(), self.undo.given).await {
            writer.abort().await;
            self.undo.clear_journal().await;
            return Err(error);
        }
        if let Some((sha256_hex, crc32c)) = digest {
            writer.written_checksums(sha256_hex, *crc32c);
        }
        // Finished or aborted by `finish`, the write needs no journal any more.
        let finished = writer.finish().await;
        self.undo.clear_journal().await;
        finished?;
        self.undo.written.push(self.target_key());
        Ok(())
    }

    /// Stores a small object of this image (a variant) in one go.
    pub(super) async fn write_object(
        &mut self,
        variant: &VariantName,
        bytes: Bytes,
    ) -> Result<(), DomainError> {
        not_stored_yet(self.undo.metadata.clone(), self.undo.given).await?;
        let key = ObjectKey::new(&self.id, variant);
        let mut writer = self
            .undo
            .blobs
            .start_write(&key, Some(bytes.len() as u64))
            .await?;
        if let Err(error) = writer.write(bytes).await {
            writer.abort().await;
            return Err(error.into());
        }
        writer.finish().await?;
        self.undo.written.push(key);
        Ok(())
    }

    /// Passes `result` on; an error first undoes everything
    /// wrote, and waits until it is done, so that the caller who hears of
    /// the failure finds nothing left behind.
    pub(super) async fn undo_on_error<T>(
        &mut self,
        result: Result<T, DomainError>,
    ) -> Result<T, DomainError> {
        if result.is_err() {
            self.undo().await;
        }
        result
    }

    /// Undoes everything written so far and waits until it is done.
    pub(super) async fn undo(&mut self) {
        self.armed = false;
        self.undo.take().run().await;
    }

    /// Keeps everything written: the record that refers to it is stored.
    pub(super) fn commit(mut self) {
        self.armed = false;
    }
}

impl Drop for Writes {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let undo = self.undo.take();
        if undo.is_empty() {
            return;
        }
        // Dropped by a panic or a cancelled call: undone in the background.
        // Without a runtime (the process is ending), the writer's own drop
        // and the repair pass clean up.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(undo.run());
        }
    }
}

impl Undo {
    /// Moves out what is to be undone, leaving nothing.
    fn take(&mut self) -> Self {
        Self {
            blobs: self.blobs.clone(),
            metadata: self.metadata.clone(),
            writer: self.writer.take(),
            journaled: self.journaled.take(),
            written: std::mem::take(&mut self.written),
            given: self.given,
        }
    }

    fn is_empty(&self) -> bool {
        self.writer.is_none() && self.journaled.is_none() && self.written.is_empty()
    }

    async fn run(mut self) {
        if let Some(writer) = self.writer.take() {
            writer.abort().await;
        }
        self.clear_journal().await;
        if !self.written.is_empty() && !may_delete(self.metadata.clone(), self.given).await {
            tracing::info!(
                "an upload session's image was stored by another finish: its objects stay"
            );
            return;
        }
        // Newest first; whatever is left (a crash half-way) has no record,
        // and the repair pass removes it.
        for key in self.written.iter().rev() {
            if let Err(error) = self.blobs.delete(key).await {
                tracing::warn!(key = key.as_str(), error = %error_chain(&error), "could not delete image bytes; the object is orphaned");
            }
        }
    }

    /// Forgets the journal entry; on failure the repair pass clears it later.
    async fn clear_journal(&mut self) {
        let Some(entry) = self.journaled.take() else {
            return;
        };
        if let Err(error) = self.metadata.clear_pending_write(&entry).await {
            tracing::warn!(image_id = %entry.image_id, error = %error_chain(&error), "could not clear an upload's journal entry");
        }
    }
}

/// For a `given` id: whether its record is still missing. ABORTED once
/// another finish has stored it; the caller then answers with that image
/// (see `store_session`).
async fn not_stored_yet(
    metadata: Arc<dyn MetadataStore>,
    given: Option<ImageId>,
) -> Result<(), DomainError> {
    let Some(id) = given else {
        return Ok(());
    };
    match metadata.get(&id).await? {
        None => Ok(()),
        Some(_) => Err(stored_by_another()),
    }
}

/// Whether finished objects may be deleted: always for a new id; for a
/// `given` one only while no record refers to them (when that cannot be
/// read, they are left to the repair pass, which removes objects without
/// a record).
async fn may_delete(metadata: Arc<dyn MetadataStore>, given: Option<ImageId>) -> bool {
    match given {
        None => true,
        Some(id) => matches!(metadata.get(&id).await, Ok(None)),
    }
}

/// Another finish of the same upload session stored the image first.
fn stored_by_another() -> DomainError {
    DomainError::Aborted("the upload session's image was stored by another call meanwhile".into())
}

fn staged_original() -> VariantName {
    VariantName::parse(STAGED_ORIGINAL).expect("a valid variant name")
}

fn finished_already() -> DomainError {
    DomainError::Internal("the upload's original was written after it was finished".into())
}
