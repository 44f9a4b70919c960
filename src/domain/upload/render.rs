//! Once the original is stored: its variants and placeholder
//! ([`crate::media::variants`]), within the render slots and memory budget.
use bytes::Bytes;
use futures::StreamExt;

use super::encodings::HeldPixels;
use super::shared::Uploads;
use super::stored::{Checksums, StoredFacts, digest_of};
use super::writes::Writes;
use crate::domain::image::{ObjectName, Variant};
use crate::domain::ports::ObjectKey;
use crate::domain::{DomainError, UserId, VariantName};
use crate::media::MediaError;
use crate::media::content::render_memory_refused;
use crate::media::variants::{self, Rendered, Renderer};

/// Bytes of a stored original read before its render's turn, to estimate
/// what the render will hold: the header the estimate reads (a JPEG's
/// segments up to its first scan, a PNG's IHDR) is within them for the
/// files of phones and cameras; a longer one is estimated as the worst
/// case, and the estimate of the whole file can then only be smaller.
const HEAD_BYTES: u64 = 256 * 1024;

/// What a render made and stored.
#[derive(Default)]
pub(super) struct Made {
    pub(super) variants: Vec<Variant>,
    pub(super) blurhash: String,
    pub(super) thumbhash: String,
    /// The PDQ hash (64 hex digits, empty when the image has none) and its
    /// quality.
    pub(super) pdq_hash: String,
    pub(super) pdq_quality: u32,
    /// The renditions' pixels, when other encodings are made of them in
    /// the background.
    pub(super) held: Option<HeldPixels>,
}

impl Uploads {
    /// Makes the variants, placeholders (BlurHash, ThumbHash) and PDQ hash of a
    /// stored original of `owner`'s and stores the variants through the
    /// session; `None` for types that are not decoded. When it has to read the original back,
    /// it fills in missing checksums from those bytes.
    ///
    /// What a render holds (its copy of the original and, estimated from
    /// the header, what decoding, resizing and encoding need) is counted
    /// against the owner's share of the memory budget as well as the
    /// budget: refused at once over `--max-render-memory`; else counted
    /// before the render's turn, at once when the share has room or the
    /// owner has no other render in progress, else once one of those is
    /// so ([`crate::domain::budget::MemoryBudget::charge_render`]), so a
    /// user whose share is full holds no turn and a user's batch still
    /// renders one by one. Turns are taken fairly between users
    /// ([`crate::domain::admission::Admissions::render_slot`]).
    pub(super) async fn render_and_store(
        &self,
        owner: &UserId,
        writes: &mut Writes,
        facts: &mut StoredFacts,
    ) -> Result<Option<Made>, DomainError> {
        let content_type = facts.uploaded.content_type;
        if !self.limits.variants || !Renderer::can_render(content_type) {
            return Ok(None);
        }
        let original = ObjectKey::new(writes.id(), &VariantName::original());
        let (width, height) = (facts.uploaded.width, facts.uploaded.height);
        let pixels = u64::from(width) * u64::from(height);
        // The estimate covers the largest variant configured.
        let largest = self.renderer.largest_side();
        // The bytes the upload still holds (and its reservation counts),
        // and those the render holds: its copy of the original, made from
        // the kept bytes (which are then let go) or read back.
        let source_bytes = facts.size_bytes;
        let needed = {
            let head = match &facts.kept {
                Some(pieces) => head_of(pieces).into(),
                None => {
                    self.read_all(&original, source_bytes.min(HEAD_BYTES))
                        .await?
                }
            };
            variants::memory_needed(&head, content_type, width, height, largest)
        };
        self.render_fits(needed)?;
        let what = "making this image's variants";
        let charge = self
            .budget
            .charge_render(owner, source_bytes + needed)
            .await;
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
        let needed =
            variants::memory_needed(&source, content_type, width, height, largest).min(needed);
        memory.shrink_to(source_held + needed);
        let orientation = facts.scrubbed.orientation;
        let rendered = self
            .renderer
            .render(slot, source.clone(), content_type, orientation)
            .await;
        let Rendered {
            variants,
            blurhash,
            thumbhash,
            pdq,
            pixels,
            icc,
        } = match rendered {
            // Damaged scan data (a corrupted block in a camera's file)
            // stops the fast, scaled decoders; decoded whole, the damage
            // shows as it does in a browser. The whole decode's memory is
            // counted and reserved like the render's, within the same caps.
            Err(MediaError::Invalid(reason)) if content_type == "image/jpeg" => {
                let whole = variants::memory_needed_whole_jpeg(width, height, largest);
                if self.render_fits(whole).is_err() {
                    return Err(MediaError::Invalid(reason).into());
                }
                tracing::debug!(%reason, "decoding a damaged JPEG whole");
                // Counted again as a new render of the owner's, which
                // waits for none of its own: this one is given back first.
                drop(memory);
                let what = "decoding this damaged JPEG to make its variants";
                let charge = self.budget.charge_render(owner, source_held + whole).await;
                let slot = self
                    .admissions
                    .render_slot(&self.renderer, owner, pixels)
                    .await;
                let _whole_memory = self
                    .budget
                    .reserve_within(source_held + whole, what, self.render_wait())
                    .await?
                    .charged(charge);
                self.renderer
                    .render_whole_jpeg(slot, source, orientation, whole)
                    .await
                    .map_err(|_| MediaError::Invalid(reason))?
            }
            other => other?,
        };
        // Upright as stored, so its pixels are a variant's as they are.
        let original = (facts.scrubbed.orientation <= 1).then_some(Original {
            content_type,
            width,
            height,
            size_bytes: facts.size_bytes,
        });
        let mut stored: Vec<Variant> = Vec::with_capacity(variants.len());
        for rendition in variants {
            let name = VariantName::parse(&rendition.name)?;
            let variant = Variant {
                name,
                content_type: rendition.content_type.to_owned(),
                size_bytes: rendition.bytes.len() as u64,
                width: rendition.width,
                height: rendition.height,
                object: None,
            };
            let variant = match shared_object(&stored, original.as_ref(), &variant) {
                Some(shared) => shared,
                None => {
                    writes.write_object(&variant.name, rendition.bytes).await?;
                    variant
                }
            };
            stored.push(variant);
        }
        // Kept for the encodings made after the acknowledgement, if any.
        let held =
            (!self.limits.encodings.background.is_empty()).then_some(HeldPixels { pixels, icc });
        Ok(Some(Made {
            variants: stored,
            blurhash,
            thumbhash,
            pdq_hash: pdq.map(|pdq| pdq.hash.to_hex()).unwrap_or_default(),
            pdq_quality: pdq.map_or(0, |pdq| pdq.quality),
            held,
        }))
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
    pub(super) async fn read_all(&self, key: &ObjectKey, size: u64) -> Result<Bytes, DomainError> {
        let mut stream = self.blobs.read(key, 0, size).await?;
        let mut bytes = bytes::BytesMut::with_capacity(usize::try_from(size).unwrap_or(0));
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk?);
        }
        Ok(bytes.freeze())
    }
}

impl Uploads {
    /// Refuses a render that needs `needed` bytes over the per-render cap.
    pub(super) fn render_fits(&self, needed: u64) -> Result<(), DomainError> {
        let cap = self.limits.render.max_memory;
        if needed > cap {
            return Err(render_memory_refused(needed, cap).into());
        }
        Ok(())
    }

    /// How long a render of an admitted upload waits for memory: as long
    /// as an upload may wait to be admitted, if longer than the memory
    /// wait, so that a burst let in whole is not refused at its end.
    pub(super) fn render_wait(&self) -> std::time::Duration {
        self.limits.memory_wait.max(self.limits.upload_slot_wait)
    }
}

/// The stored original, as a variant could share it.
pub(super) struct Original<'a> {
    pub(super) content_type: &'a str,
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) size_bytes: u64,
}

/// `variant` as an entry that reads an object already stored, when one
/// holds the same rendition: a smaller variant's of the same dimensions
/// and type (the same pixels, encoded alike), or the original when it has
/// the variant's dimensions and type and is no larger. `None` when the
/// variant needs an object of its own.
pub(super) fn shared_object(
    made: &[Variant],
    original: Option<&Original<'_>>,
    variant: &Variant,
) -> Option<Variant> {
    let same = |content_type: &str, width: u32, height: u32| {
        content_type == variant.content_type && (width, height) == (variant.width, variant.height)
    };
    if let Some(smaller) = made
        .iter()
        .find(|v| same(&v.content_type, v.width, v.height))
    {
        return Some(Variant {
            name: variant.name.clone(),
            object: Some(smaller.object_name()),
            ..smaller.clone()
        });
    }
    let original = original?;
    (same(original.content_type, original.width, original.height)
        && original.size_bytes <= variant.size_bytes)
        .then(|| Variant {
            size_bytes: original.size_bytes,
            object: Some(ObjectName::original()),
            ..variant.clone()
        })
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
