//! Once the original is stored: its variants and placeholder
//! ([`crate::media::variants`]), within the render slots and memory budget.
use bytes::Bytes;
use futures::StreamExt;

use super::shared::Uploads;
use super::stored::{Checksums, StoredFacts, digest_of};
use super::writes::Writes;
use crate::domain::image::Variant;
use crate::domain::ports::ObjectKey;
use crate::domain::{DomainError, VariantName};
use crate::media::MediaError;
use crate::media::variants::{self, Rendered, Renderer};

impl Uploads {
    /// Makes the variants and placeholder of a stored original and stores
    /// the variants through the session; `None` for types that are not
    /// decoded. When it has to read the original back, it fills in missing
    /// checksums from those bytes.
    pub(super) async fn render_and_store(
        &self,
        writes: &mut Writes,
        facts: &mut StoredFacts,
    ) -> Result<Option<(Vec<Variant>, String)>, DomainError> {
        let content_type = facts.uploaded.content_type;
        if !self.limits.variants || !Renderer::can_render(content_type) {
            return Ok(None);
        }
        // The turn first, then the bytes: waiting renders hold no memory.
        let pixels = u64::from(facts.uploaded.width) * u64::from(facts.uploaded.height);
        let slot = self.renderer.slot(pixels).await;
        // Kept bytes are still counted in the upload's reservation.
        let _source_memory = if facts.kept.is_some() {
            None
        } else {
            Some(
                self.budget
                    .reserve(facts.size_bytes, "reading this image to make its variants")
                    .await?,
            )
        };
        let source = match &facts.kept {
            Some(pieces) => pieces.concat().into(),
            None => {
                let original = ObjectKey::new(writes.id(), &VariantName::original());
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
            return Err(DomainError::TooLarge(format!(
                "the image needs about {} MiB of memory to decode and resize; the limit is {} MiB \
                 (--max-render-memory)",
                needed >> 20,
                self.limits.render.max_memory >> 20
            )));
        }
        let render_memory = self
            .budget
            .reserve_within(needed, "making this image's variants", self.render_wait())
            .await?;
        let orientation = facts.scrubbed.orientation;
        let rendered = self
            .renderer
            .render(slot, source.clone(), content_type, orientation)
            .await;
        let Rendered { variants, blurhash } = match rendered {
            // Damaged scan data (a corrupted block in a camera's file)
            // stops the fast, scaled decoders; decoded whole, the damage
            // shows as it does in a browser. The whole decode's memory is
            // reserved first, within the per-render cap.
            Err(MediaError::Invalid(reason)) if content_type == "image/jpeg" => {
                let whole = variants::memory_needed_whole_jpeg(width, height);
                if whole > self.limits.render.max_memory {
                    return Err(MediaError::Invalid(reason).into());
                }
                tracing::debug!(%reason, "decoding a damaged JPEG whole");
                drop(render_memory);
                let slot = self.renderer.slot(pixels).await;
                let _whole_memory = self
                    .budget
                    .reserve(whole, "decoding this damaged JPEG to make its variants")
                    .await?;
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

    /// The whole of a stored object, in memory.
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
    /// How long a render of an admitted upload waits for memory: as long
    /// as an upload may wait to be admitted, if longer than the memory
    /// wait, so that a burst let in whole is not refused at its end.
    fn render_wait(&self) -> std::time::Duration {
        self.limits.memory_wait.max(self.limits.upload_slot_wait)
    }
}
