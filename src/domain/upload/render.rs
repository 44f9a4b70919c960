//! Once the original is stored: its variants and placeholder
//! ([`crate::media::variants`]), within the render slots and memory budget.
use bytes::Bytes;
use futures::StreamExt;

use super::shared::Uploads;
use super::stored::{Checksums, StoredFacts, digest_of};
use super::writes::Writes;
use crate::domain::image::Variant;
use crate::domain::ports::ObjectKey;
use crate::domain::{DomainError, UserId, VariantName};
use crate::media::MediaError;
use crate::media::variants::{self, Rendered, Renderer};

/// Bytes of a stored original read before its render's turn, to estimate
/// what the render will hold: the header the estimate reads (a JPEG's
/// segments up to its first scan, a PNG's IHDR) is within them for the
/// files of phones and cameras; a longer one is estimated as the worst
/// case, and the estimate of the whole file can then only be smaller.
const HEAD_BYTES: u64 = 256 * 1024;

impl Uploads {
    /// Makes the variants and placeholder of a stored original of
    /// `owner`'s and stores the variants through the session; `None` for
    /// types that are not decoded. When it has to read the original back,
    /// it fills in missing checksums from those bytes.
    ///
    /// What a render holds (its copy of the original and, estimated from
    /// the header, what decoding, resizing and encoding need) is counted
    /// against the owner's share of the memory budget as well as the
    /// budget: refused at once when the share could never hold it (with
    /// the kept bytes the upload still holds), else waited for (the
    /// owner's other work gives it back) before the render's turn, so a
    /// user whose share is full holds no turn. Turns are taken fairly
    /// between users ([`crate::domain::admission::Admissions::render_slot`]).
    pub(super) async fn render_and_store(
        &self,
        owner: &UserId,
        writes: &mut Writes,
        facts: &mut StoredFacts,
    ) -> Result<Option<(Vec<Variant>, String)>, DomainError> {
        let content_type = facts.uploaded.content_type;
        if !self.limits.variants || !Renderer::can_render(content_type) {
            return Ok(None);
        }
        let original = ObjectKey::new(writes.id(), &VariantName::original());
        let (width, height) = (facts.uploaded.width, facts.uploaded.height);
        let pixels = u64::from(width) * u64::from(height);
        // The bytes the upload still holds (and its reservation counts),
        // and those the render holds: its copy of the original, made from
        // the kept bytes (which are then let go) or read back.
        let kept: u64 = facts.kept.iter().flatten().map(|b| b.len() as u64).sum();
        let source_bytes = facts.size_bytes;
        let needed = {
            let head = match &facts.kept {
                Some(pieces) => head_of(pieces).into(),
                None => {
                    self.read_all(&original, source_bytes.min(HEAD_BYTES))
                        .await?
                }
            };
            variants::memory_needed(&head, content_type, width, height)
        };
        self.render_fits(needed, kept + source_bytes)?;
        let what = "making this image's variants";
        let charge = self
            .budget
            .charge_within(owner, source_bytes + needed, what, self.render_wait())
            .await?;
        // The turn, then the memory: waiting renders hold none.
        let slot = self
            .admissions
            .render_slot(&self.renderer, owner, pixels)
            .await;
        let mut memory = self
            .budget
            .reserve_within(source_bytes + needed, what, self.render_wait())
            .await?
            .charged(charge);
        // A copy of the kept bytes takes their place, within the upload's
        // reservation; bytes read back are the render's own.
        let (source, source_held): (Bytes, u64) = match facts.kept.take() {
            Some(pieces) => (pieces.concat().into(), 0),
            None => {
                let source = self.read_all(&original, source_bytes).await?;
                if facts.digest.is_none() {
                    facts.digest = Some(digest_of(std::slice::from_ref(&source)));
                }
                (source, source_bytes)
            }
        };
        // From the whole header now: never more than from its head.
        let needed = variants::memory_needed(&source, content_type, width, height).min(needed);
        memory.shrink_to(source_held + needed);
        let orientation = facts.scrubbed.orientation;
        let rendered = self
            .renderer
            .render(slot, source.clone(), content_type, orientation)
            .await;
        let Rendered { variants, blurhash } = match rendered {
            // Damaged scan data (a corrupted block in a camera's file)
            // stops the fast, scaled decoders; decoded whole, the damage
            // shows as it does in a browser. The whole decode's memory is
            // counted and reserved like the render's, within the same caps.
            Err(MediaError::Invalid(reason)) if content_type == "image/jpeg" => {
                let whole = variants::memory_needed_whole_jpeg(width, height);
                if self.render_fits(whole, kept + source_held).is_err() {
                    return Err(MediaError::Invalid(reason).into());
                }
                tracing::debug!(%reason, "decoding a damaged JPEG whole");
                memory.shrink_to(source_held);
                let what = "decoding this damaged JPEG to make its variants";
                let charge = self
                    .budget
                    .charge_within(owner, whole, what, self.render_wait())
                    .await?;
                let slot = self
                    .admissions
                    .render_slot(&self.renderer, owner, pixels)
                    .await;
                let _whole_memory = self
                    .budget
                    .reserve_within(whole, what, self.render_wait())
                    .await?
                    .charged(charge);
                self.renderer
                    .render_whole_jpeg(slot, source, orientation, whole)
                    .await
                    .map_err(|_| MediaError::Invalid(reason))?
            }
            other => other?,
        };
        let mut stored: Vec<Variant> = Vec::with_capacity(variants.len());
        for rendition in variants {
            let name = VariantName::parse(rendition.name)?;
            let variant = Variant {
                name,
                content_type: rendition.content_type.to_owned(),
                size_bytes: rendition.bytes.len() as u64,
                width: rendition.width,
                height: rendition.height,
            };
            writes.write_object(&variant.name, rendition.bytes).await?;
            stored.push(variant);
        }
        Ok(Some((stored, blurhash)))
    }

    /// Checksums of a stored object, read back from the store.
    pub(super) async fn stored_digest(
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

    /// The whole of a stored object, in memory (or its first `size` bytes).
    async fn read_all(&self, key: &ObjectKey, size: u64) -> Result<Bytes, DomainError> {
        let mut stream = self.blobs.read(key, 0, size).await?;
        let mut bytes = bytes::BytesMut::with_capacity(usize::try_from(size).unwrap_or(0));
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk?);
        }
        Ok(bytes.freeze())
    }
}

impl Uploads {
    /// Refuses a render that needs `needed` bytes besides `besides` (the
    /// original's bytes the upload and the render hold) when the per-render
    /// cap or the owner's whole share could never hold it.
    fn render_fits(&self, needed: u64, besides: u64) -> Result<(), DomainError> {
        let cap = self.limits.render.max_memory;
        let share = self.budget.user_share();
        if needed > cap {
            return Err(DomainError::TooLarge(format!(
                "the image needs about {} MiB of memory to decode and resize; the limit is {} MiB \
                 (--max-render-memory, one user's --max-memory-per-user unless set lower)",
                needed >> 20,
                cap >> 20
            )));
        }
        if needed.saturating_add(besides) > share {
            return Err(DomainError::TooLarge(format!(
                "the image needs about {} MiB of memory to decode and resize, and its {} MiB of \
                 bytes besides; one user's work may hold {} MiB at once \
                 (--max-memory-per-user)",
                needed >> 20,
                besides >> 20,
                share >> 20
            )));
        }
        Ok(())
    }

    /// How long a render of an admitted upload waits for memory: as long
    /// as an upload may wait to be admitted, if longer than the memory
    /// wait, so that a burst let in whole is not refused at its end.
    fn render_wait(&self) -> std::time::Duration {
        self.limits.memory_wait.max(self.limits.upload_slot_wait)
    }
}

/// The first [`HEAD_BYTES`] of the kept pieces of an original.
fn head_of(pieces: &[Bytes]) -> Vec<u8> {
    let mut head = Vec::new();
    for piece in pieces {
        let room = HEAD_BYTES as usize - head.len();
        head.extend_from_slice(&piece[..piece.len().min(room)]);
        if head.len() == HEAD_BYTES as usize {
            break;
        }
    }
    head
}
