//! The encodings of an image's variants made after its upload is
//! acknowledged (`--variant-formats`: WebP, AVIF), beside the JPEG (or,
//! for transparent images, lossless WebP) made before it.
//!
//! Before the acknowledgement a journal entry ([`PendingEncodings`]) says
//! which encodings the image needs. Once the record is stored, the work is
//! queued with the resized, upright pixels the render already holds, so
//! nothing is decoded again: it waits for a render slot (the same lanes,
//! taken in turn with the uploads' renders), encodes, writes the objects,
//! adds their entries to the record conditionally on its revision
//! ([`Uploads::add_encodings`]) and clears the entry. The queue is bounded
//! (`--max-queued-encodings`, and per user), and the held pixels are
//! counted in the memory budget and the owner's share while they wait and
//! while they are encoded: work that finds no room is not held, it is left
//! to the repair pass, which decodes the stored original through the same
//! render admission ([`Uploads::complete_encodings`]). So is the work of a
//! replica that stops before it is done.
use std::time::Duration;

use bytes::Bytes;
use tracing::Instrument as _;

use super::shared::Uploads;
use crate::domain::event::ChangeKind;
use crate::domain::image::{
    DeclinedEncoding, Encoding, ImageRecord, ObjectName, Timestamp, Variant,
};
use crate::domain::ports::{ObjectKey, PendingEncodings, StorageError};
use crate::domain::quota::held_by;
use crate::domain::{DomainError, ImageId, UserId, VariantName};
use crate::media::MediaError;
use crate::media::pdq::Pdq;
use crate::media::scrub::Scrubber;
use crate::media::variants::{self, Codec, Pixels, RenderSlot, Renderer};
use crate::telemetry::error_chain;

/// Attempts of a record update that keeps losing to concurrent edits.
const ADD_ATTEMPTS: usize = 10;

/// What encoding held pixels takes besides them, as a share of them: the
/// encoder's YUV planes (1.5 bytes a pixel against 3 or 4) and its output
/// (smaller than the pixels) stay under one more copy.
const ENCODER_WORKING_SET: u64 = 1;

/// The resized, upright pixels of an image's renditions (by the name of
/// the variant rendered from them) and the ICC profile they carry.
pub(super) struct HeldPixels {
    pub(super) pixels: Vec<(String, Pixels)>,
    pub(super) icc: Option<Vec<u8>>,
}

impl HeldPixels {
    fn bytes(&self) -> u64 {
        self.pixels.iter().map(|(_, p)| p.bytes()).sum()
    }
}

/// What was added to an image's record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddedToRecord {
    /// Entries of `variants` added.
    pub entries: usize,
    /// Bytes of the objects the record now refers to and did not before
    /// (counted in the owner's usage).
    pub bytes: u64,
    /// Whether its ThumbHash was set.
    pub thumbhash: bool,
    /// Whether its PDQ hash was set.
    pub pdq: bool,
    /// Encodings of variants recorded as made and not kept.
    pub declined: usize,
    /// Entries made and not added because their bytes would have taken
    /// the owner past the byte quota (their objects are removed; a later
    /// backfill may add them once there is room).
    pub over_quota: usize,
}

/// What encoding some planned renditions came to: the entries of those
/// kept, the objects written for them, and the encodings not kept.
#[derive(Default)]
pub(super) struct Encoded {
    pub(super) entries: Vec<Variant>,
    pub(super) written: Vec<ObjectKey>,
    pub(super) declined: Vec<DeclinedEncoding>,
}

/// A stored image rendered again from its original.
pub(super) struct StoredRender {
    pub(super) rendered: variants::Rendered,
    /// The EXIF orientation the original is viewed with.
    pub(super) orientation: u8,
    /// The memory the render holds, reserved until this is dropped.
    pub(super) memory: crate::domain::budget::Reservation,
}

/// Whether rendering a stored original failed because of the original
/// itself (it no longer decodes, or is over a limit), so that nothing can
/// be made of it: the image is skipped rather than the work failed.
pub(super) fn undecodable(error: &DomainError) -> bool {
    matches!(
        error,
        DomainError::InvalidArgument(_) | DomainError::TooLarge(_) | DomainError::OutOfRange(_)
    )
}

/// What became of an image's journaled encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completed {
    /// This many entries were added to the record (none when each was
    /// there already, or came out no smaller than the variant's first
    /// encoding and was not kept).
    Added(usize),
    /// The image is gone: what was written for it was removed.
    ImageGone,
    /// Its original cannot be decoded any more: nothing can be made.
    Undecodable,
}

/// One encoding of one stored rendition, to make.
pub(super) struct Planned {
    /// The variants whose entries read the rendition (several when they
    /// share its object).
    names: Vec<VariantName>,
    width: u32,
    height: u32,
    /// The size of the rendition's first encoding: a new one is kept only
    /// when smaller.
    first_size: u64,
    encoding: Encoding,
    /// Which of the held pixels it is made from.
    pixels: usize,
}

impl Planned {
    /// Its object: the first variant's name with the encoding's extension.
    fn object(&self) -> ObjectName {
        ObjectName::encoded(self.names[0].clone(), self.encoding)
    }
}

fn codec(encoding: Encoding) -> Option<Codec> {
    match encoding {
        // Made before the acknowledgement.
        Encoding::Jpeg => None,
        Encoding::WebP => Some(Codec::WebP),
        Encoding::Avif => Some(Codec::Avif),
    }
}

/// Counts what became of an image's background work.
fn count(outcome: &'static str) {
    metrics::counter!("imageservice_background_encodings_total", "outcome" => outcome).increment(1);
}

/// The renditions the record holds in their first encoding (each object
/// once, with the names that read it) that lack one of `encodings`.
pub(super) fn missing(
    record: &ImageRecord,
    encodings: &[Encoding],
) -> Vec<(Vec<VariantName>, Variant, Encoding)> {
    let mut firsts: Vec<(ObjectName, Vec<VariantName>, &Variant)> = Vec::new();
    for variant in &record.variants {
        let object = variant.object_name();
        if object.encoding().is_some() {
            continue; // an encoding added after the first
        }
        match firsts.iter_mut().find(|(seen, _, _)| *seen == object) {
            Some((_, names, _)) => names.push(variant.name.clone()),
            None => firsts.push((object, vec![variant.name.clone()], variant)),
        }
    }
    let mut missing = Vec::new();
    for (_, names, first) in firsts {
        for &encoding in encodings {
            let held = record
                .variants
                .iter()
                .any(|v| names.contains(&v.name) && v.content_type == encoding.content_type());
            if codec(encoding).is_some_and(Codec::available)
                && !held
                && !record.declined(&names, encoding.content_type())
            {
                missing.push((names.clone(), first.clone(), encoding));
            }
        }
    }
    missing
}

/// What to make of the pixels held: each missing encoding of a rendition
/// whose pixels are held at its stored dimensions.
pub(super) fn plan(
    record: &ImageRecord,
    encodings: &[Encoding],
    held: &HeldPixels,
) -> Vec<Planned> {
    missing(record, encodings)
        .into_iter()
        .filter_map(|(names, first, encoding)| {
            let pixels = held.pixels.iter().position(|(name, p)| {
                names.iter().any(|n| n.as_str() == name)
                    && (p.width(), p.height()) == (first.width, first.height)
            })?;
            Some(Planned {
                names,
                width: first.width,
                height: first.height,
                first_size: first.size_bytes,
                encoding,
                pixels,
            })
        })
        .collect()
}

impl Uploads {
    /// The journal entry of a new image of `owner`'s, when it will be
    /// rendered and encodings are made in the background.
    pub(super) fn pending_encodings(
        &self,
        id: &ImageId,
        owner: &UserId,
        content_type: &str,
    ) -> Option<PendingEncodings> {
        let background = &self.limits.encodings.background;
        (self.limits.variants && Renderer::can_render(content_type) && !background.is_empty()).then(
            || PendingEncodings {
                image_id: *id,
                owner: owner.clone(),
                encodings: background.clone(),
                started: Timestamp::now(),
            },
        )
    }

    /// Forgets the journal entry of an upload that stored nothing (the
    /// repair pass would drop it anyway).
    pub(super) async fn forget_encodings(&self, id: &ImageId) {
        if self.limits.encodings.background.is_empty() {
            return;
        }
        if let Err(error) = self.metadata.clear_pending_encodings(id).await {
            tracing::debug!(error = %error_chain(&error), "the journal entry stays for the repair pass");
        }
    }

    /// Queues the background encodings of the stored `record` from the
    /// pixels its render holds, or leaves them to the repair pass when
    /// the queue, the owner's part of it, the queue's half of the memory
    /// budget, the owner's memory share or the budget has no room for
    /// them. They are made one render slot short of the renderer's (at
    /// least one), so uploads always have a slot other users' encodings
    /// do not hold.
    pub(super) fn queue_encodings(
        &self,
        record: ImageRecord,
        pending: PendingEncodings,
        held: HeldPixels,
    ) {
        let Some(queued) = self.background.enter(&record.owner) else {
            count("left_to_repair");
            return;
        };
        let bytes = held.bytes() * (1 + ENCODER_WORKING_SET);
        let Some(share) = self.background.hold(bytes) else {
            count("left_to_repair");
            return;
        };
        let charge =
            match self
                .budget
                .charge(&record.owner, bytes, "making this image's other encodings")
            {
                Ok(charge) => charge,
                Err(_) => {
                    count("left_to_repair");
                    return;
                }
            };
        let Some(memory) = self.budget.try_reserve(bytes) else {
            count("left_to_repair");
            return;
        };
        let memory = memory.charged(charge);
        let uploads = self.clone();
        let work = async move {
            {
                // Everything the work holds of the stores goes before its
                // place in the queue: a drain that has taken every place
                // finds the stores let go (the embedded one opens once).
                let uploads = uploads;
                let _running = uploads.background.run().await;
                let slot = uploads
                    .admissions
                    .render_slot(&uploads.renderer, &record.owner, largest(&held))
                    .await;
                match uploads.make_encodings(&record, &pending, held, slot).await {
                    Ok(_) => count("completed"),
                    Err(error) => {
                        count("failed");
                        tracing::warn!(image_id = %record.id, error = %error_chain(&error), "background encodings failed; the repair pass will make them");
                    }
                }
            }
            drop(memory);
            drop(share);
            drop(queued);
        };
        tokio::spawn(work.in_current_span());
    }

    /// Waits up to `timeout` for the queued background encodings to end;
    /// whether they all did. What is left stays journaled.
    pub async fn drain_encodings(&self, timeout: Duration) -> bool {
        let background = &self.background;
        let all = background.queue.acquire_many(background.capacity);
        tokio::time::timeout(timeout, all).await.is_ok()
    }

    /// Makes the journaled encodings of an image from its stored original
    /// (the repair pass's way, for work no replica finished): decoded and
    /// resized through the same render admission as an upload's, then
    /// encoded and added like the background's. A missing image's entry is
    /// dropped; so is one whose original no longer decodes.
    pub async fn complete_encodings(
        &self,
        pending: &PendingEncodings,
    ) -> Result<Completed, DomainError> {
        let Some(record) = self.metadata.get(&pending.image_id).await? else {
            self.metadata
                .clear_pending_encodings(&pending.image_id)
                .await?;
            return Ok(Completed::ImageGone);
        };
        if missing(&record, &pending.encodings).is_empty() {
            self.metadata.clear_pending_encodings(&record.id).await?;
            return Ok(Completed::Added(0));
        }
        let stored = match self.render_stored(&record).await {
            Ok(stored) => stored,
            Err(error) if undecodable(&error) => {
                tracing::warn!(image_id = %record.id, error = %error_chain(&error), "the original no longer decodes: its encodings cannot be made");
                self.metadata.clear_pending_encodings(&record.id).await?;
                return Ok(Completed::Undecodable);
            }
            Err(other) => return Err(other),
        };
        let _memory = stored.memory;
        let held = HeldPixels {
            pixels: stored.rendered.pixels,
            icc: stored.rendered.icc,
        };
        let slot = self
            .admissions
            .render_slot(&self.renderer, &record.owner, largest(&held))
            .await;
        self.make_encodings(&record, pending, held, slot).await
    }

    /// The renditions of a stored image (pixels, encodings, placeholders),
    /// decoded from its original within the render slots and memory budget
    /// (the reservation held while they are).
    pub(super) async fn render_stored(
        &self,
        record: &ImageRecord,
    ) -> Result<StoredRender, DomainError> {
        let content_type = record.content_type.as_str();
        let original = ObjectKey::of(&record.id, &ObjectName::original());
        let source = self.read_all(&original, record.size_bytes).await?;
        // Only the bytes the record describes, whose header was checked
        // against the limits when they were uploaded, are decoded: a file
        // changed at rest (or torn) could be any size of image.
        use sha2::Digest as _;
        if hex::encode(sha2::Sha256::digest(&source)) != record.sha256 {
            return Err(DomainError::DataLoss(format!(
                "the stored original of image {} does not match its record's SHA-256;                  it is not decoded",
                record.id
            )));
        }
        let orientation = stored_orientation(&source);
        let (width, height) = if (5..=8).contains(&orientation) {
            (record.height, record.width)
        } else {
            (record.width, record.height)
        };
        let largest = self.renderer.largest_side();
        let needed = variants::memory_needed(&source, content_type, width, height, largest)
            + record.size_bytes;
        self.render_fits(needed)?;
        let charge = self.budget.charge_render(&record.owner, needed).await;
        let pixels = u64::from(width) * u64::from(height);
        // An image stored under a larger `--max-image-pixels` than today's.
        let max_pixels = self.limits.content.max_pixels;
        if pixels > max_pixels {
            return Err(DomainError::ResourceExhausted(format!(
                "image {} is {width}x{height}, over --max-image-pixels ({max_pixels}); \
                 it is not decoded",
                record.id
            )));
        }
        let slot = self
            .admissions
            .render_slot(&self.renderer, &record.owner, pixels)
            .await;
        let memory = self
            .budget
            .reserve_within(
                needed,
                "making this image's other encodings",
                self.render_wait(),
            )
            .await?
            .charged(charge);
        let rendered = self
            .renderer
            .render(slot, source, content_type, orientation)
            .await?;
        Ok(StoredRender {
            rendered,
            orientation,
            memory,
        })
    }

    /// Encodes what the record lacks from `held` (in `slot`), writes the
    /// objects, adds their entries and clears the journal entry.
    async fn make_encodings(
        &self,
        record: &ImageRecord,
        pending: &PendingEncodings,
        held: HeldPixels,
        slot: RenderSlot,
    ) -> Result<Completed, DomainError> {
        let planned = plan(record, &pending.encodings, &held);
        let Encoded {
            entries,
            written,
            declined,
        } = self.encode_planned(&record.id, planned, held, slot).await?;
        let completed = match self
            .add_to_record(&record.id, &entries, &declined, None, None)
            .await
        {
            Ok(Some(_)) => Completed::Added(entries.len()),
            Ok(None) => Completed::ImageGone,
            Err(error) => {
                // What was written is referred to by nothing: removed now,
                // or by the repair pass.
                self.remove_written(&written).await;
                return Err(error);
            }
        };
        if completed == Completed::ImageGone {
            self.remove_written(&written).await;
        }
        self.metadata.clear_pending_encodings(&record.id).await?;
        Ok(completed)
    }

    /// Encodes `planned` from `held` (in `slot`) and writes the objects of
    /// those smaller than their rendition's first encoding: their entries,
    /// the objects written (for the caller to remove should the record not
    /// take them), and the encodings not kept. On a failure what was
    /// written is removed.
    pub(super) async fn encode_planned(
        &self,
        id: &ImageId,
        planned: Vec<Planned>,
        held: HeldPixels,
        slot: RenderSlot,
    ) -> Result<Encoded, DomainError> {
        let encoded = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            planned
                .into_iter()
                .map(|p| {
                    let codec = codec(p.encoding).expect("planned encodings have a codec");
                    let bytes = held.pixels[p.pixels]
                        .1
                        .encode_as(codec, held.icc.as_deref());
                    (p, bytes)
                })
                .collect::<Vec<(Planned, Result<Bytes, MediaError>)>>()
        })
        .await
        .map_err(|e| DomainError::Internal(Box::new(e)))?;

        let mut written = Vec::new();
        let mut entries = Vec::new();
        let mut declined = Vec::new();
        let result = async {
            for (planned, bytes) in encoded {
                let bytes = bytes?;
                let size_bytes = bytes.len() as u64;
                // Never more bytes than needed: a viewer that accepts it
                // would be sent more than the first encoding's.
                if size_bytes >= planned.first_size {
                    count("not_smaller");
                    declined.extend(planned.names.iter().map(|name| DeclinedEncoding {
                        name: name.clone(),
                        content_type: planned.encoding.content_type().to_owned(),
                    }));
                    continue;
                }
                let key = ObjectKey::of(id, &planned.object());
                write_object(self, &key, bytes).await?;
                written.push(key);
                for name in &planned.names {
                    entries.push(Variant {
                        name: name.clone(),
                        content_type: planned.encoding.content_type().to_owned(),
                        size_bytes,
                        width: planned.width,
                        height: planned.height,
                        object: Some(planned.object()),
                    });
                }
            }
            Ok::<(), DomainError>(())
        }
        .await;
        if let Err(error) = result {
            self.remove_written(&written).await;
            return Err(error);
        }
        Ok(Encoded {
            entries,
            written,
            declined,
        })
    }

    /// Adds `entries` (each an encoding of a variant whose object is
    /// stored) to the image's record, conditionally on the revision read:
    /// on a concurrent change the record is read again and they are added
    /// to it, so an edit meanwhile is kept and a deleted image is not
    /// brought back. The record as stored, or `None` when the image is
    /// gone. An entry the record already has (same name and content
    /// type) is not added again.
    pub async fn add_encodings(
        &self,
        id: &ImageId,
        entries: &[Variant],
    ) -> Result<Option<ImageRecord>, DomainError> {
        Ok(self
            .add_to_record(id, entries, &[], None, None)
            .await?
            .map(|(record, _)| record))
    }

    /// [`Uploads::add_encodings`], which also records the encodings
    /// `declined` (made and not kept), sets the record's ThumbHash to
    /// `thumbhash` when it has none, and places the entries of a
    /// variant the record does not name yet among the others by size
    /// (smallest first). The record as stored and what was added to it.
    pub(super) async fn add_to_record(
        &self,
        id: &ImageId,
        entries: &[Variant],
        declined: &[DeclinedEncoding],
        thumbhash: Option<&str>,
        pdq: Option<Pdq>,
    ) -> Result<Option<(ImageRecord, AddedToRecord)>, DomainError> {
        // Emptied once the quota refused the entries (their objects are
        // gone): a later attempt does not add them.
        let mut entries = entries;
        let mut over_quota = 0;
        for _ in 0..ADD_ATTEMPTS {
            // A record whose bytes moderation removed takes no new ones:
            // to the caller it is gone.
            let Some(current) = self.metadata.get(id).await?.filter(|r| !r.bytes_removed()) else {
                return Ok(None);
            };
            let mut next = current.clone();
            let mut added = AddedToRecord {
                over_quota,
                ..AddedToRecord::default()
            };
            for entry in entries {
                let held = next
                    .variants
                    .iter()
                    .any(|v| v.name == entry.name && v.content_type == entry.content_type);
                if held {
                    continue;
                }
                // After the variant's other entries: its first stays first.
                // A new variant goes before the first larger one.
                let longest = entry.width.max(entry.height);
                let at = next
                    .variants
                    .iter()
                    .rposition(|v| v.name == entry.name)
                    .map(|i| i + 1)
                    .or_else(|| {
                        next.variants
                            .iter()
                            .position(|v| v.width.max(v.height) > longest)
                    })
                    .unwrap_or(next.variants.len());
                next.variants.insert(at, entry.clone());
                added.entries += 1;
            }
            for encoding in declined {
                if !next.declined_encodings.contains(encoding) {
                    next.declined_encodings.push(encoding.clone());
                    added.declined += 1;
                }
            }
            if let Some(hash) = thumbhash
                && next.thumbhash.is_empty()
                && !hash.is_empty()
            {
                next.thumbhash = hash.to_owned();
                added.thumbhash = true;
            }
            if let Some(pdq) = pdq
                && next.pdq_hash.is_empty()
            {
                next.pdq_hash = pdq.hash.to_hex();
                next.pdq_quality = pdq.quality;
                added.pdq = true;
            }
            // The new objects count in what the owner holds, before the
            // record refers to them and held to the quota: what does not
            // fit is not kept.
            added.bytes = held_by(&next).saturating_sub(held_by(&current));
            let counted = match added.bytes {
                0 => None,
                bytes => match self.quotas.add_bytes(&next.owner, bytes).await {
                    Ok(counted) => Some(counted),
                    Err(DomainError::QuotaExceeded(_)) => {
                        self.drop_over_quota(&current, &mut next, &mut added).await;
                        (entries, over_quota) = (&[], added.over_quota);
                        None
                    }
                    Err(error) => return Err(error),
                },
            };
            if added.entries == 0 && !added.thumbhash && !added.pdq && added.declined == 0 {
                return Ok(Some((current, added)));
            }
            next.revision = current.revision + 1;
            let replaced = self
                .metadata
                .replace(&next, current.revision, ChangeKind::VariantsAdded)
                .await;
            if replaced.is_err()
                && let Some(counted) = counted
            {
                counted.undo().await;
            }
            match replaced {
                Ok(()) => return Ok(Some((next, added))),
                Err(StorageError::ConditionFailed) => continue,
                Err(StorageError::NotFound) => return Ok(None),
                Err(other) => return Err(other.into()),
            }
        }
        Err(DomainError::Aborted(
            "the image kept changing while its encodings were added".into(),
        ))
    }

    /// Takes the entries `next` adds to `current` back out, as the owner's
    /// quota has no room for them, and removes their objects (those
    /// `current` does not read).
    async fn drop_over_quota(
        &self,
        current: &ImageRecord,
        next: &mut ImageRecord,
        added: &mut AddedToRecord,
    ) {
        metrics::counter!("imageservice_quota_refusals_total").increment(1);
        let mut unread: Vec<ObjectKey> = Vec::new();
        for entry in &next.variants {
            let object = entry.object_name();
            let key = ObjectKey::of(&next.id, &object);
            if !current.names_object(&object) && !unread.contains(&key) {
                unread.push(key);
            }
        }
        tracing::info!(
            image_id = %next.id,
            entries = added.entries,
            bytes = added.bytes,
            "encodings not kept: the owner's byte quota has no room for them"
        );
        next.variants = current.variants.clone();
        added.over_quota = added.entries;
        added.entries = 0;
        added.bytes = 0;
        self.remove_written(&unread).await;
    }

    /// Deletes objects no record refers to; a failure leaves them to the
    /// repair pass.
    pub(super) async fn remove_written(&self, written: &[ObjectKey]) {
        for key in written {
            if let Err(error) = self.blobs.delete(key).await {
                tracing::warn!(key = key.as_str(), error = %error_chain(&error), "could not delete an encoding; the repair pass will");
            }
        }
    }
}

/// The EXIF orientation of a stored original, as the upload's scrubber
/// read it (the bytes are already scrubbed and pass through unchanged);
/// 1 for what the scrubber does not follow.
fn stored_orientation(source: &Bytes) -> u8 {
    let mut scrubber = Scrubber::new(true);
    let mut out = Vec::new();
    if scrubber.push(source.clone(), &mut out).is_err() {
        return 1;
    }
    scrubber
        .finish(&mut out)
        .map_or(1, |scrubbed| scrubbed.orientation)
}

/// Pixels of the largest held rendition: which render lane it takes.
pub(super) fn largest(held: &HeldPixels) -> u64 {
    held.pixels
        .iter()
        .map(|(_, p)| u64::from(p.width()) * u64::from(p.height()))
        .max()
        .unwrap_or(0)
}

/// Writes a whole object.
pub(super) async fn write_object(
    uploads: &Uploads,
    key: &ObjectKey,
    bytes: Bytes,
) -> Result<(), DomainError> {
    let mut writer = uploads
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::upload::shared::Background;

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    #[test]
    fn the_queue_holds_at_most_its_size_and_each_users_share() {
        let queue = Background::new(3, 2, 2, GIB);
        let (alice, bob) = (user("alice"), user("bob"));
        let first = queue.enter(&alice).expect("room");
        let _second = queue.enter(&alice).expect("room");
        assert!(queue.enter(&alice).is_none(), "alice's share is full");
        let _bob = queue.enter(&bob).expect("bob has his own share");
        assert!(queue.enter(&user("carol")).is_none(), "the queue is full");
        drop(first);
        assert!(queue.enter(&alice).is_some(), "a place given back is taken");
    }

    #[test]
    fn a_refused_user_gives_the_queue_place_back() {
        let queue = Background::new(2, 1, 2, GIB);
        let _alice = queue.enter(&user("alice")).expect("room");
        assert!(queue.enter(&user("alice")).is_none());
        assert!(
            queue.enter(&user("bob")).is_some(),
            "not taken by the refusal"
        );
    }

    const GIB: u64 = 1 << 30;

    #[tokio::test]
    async fn encodings_leave_uploads_a_render_slot() {
        let queue = Background::new(32, 8, 4, GIB);
        let mut running = Vec::new();
        for _ in 0..3 {
            running.push(queue.run().await);
        }
        let fourth = tokio::time::timeout(std::time::Duration::from_millis(50), queue.run()).await;
        assert!(
            fourth.is_err(),
            "3 of 4 slots at most: one stays for uploads"
        );
        drop(running.pop());
        let _again = queue.run().await;
        // With one render slot, encodings still get it in turn.
        let _one = Background::new(32, 8, 1, GIB).run().await;
    }

    #[test]
    fn queued_pixels_hold_at_most_half_the_budget() {
        let queue = Background::new(32, 8, 2, GIB);
        let mib = 1 << 20;
        let first = queue.hold(300 * mib).expect("room");
        assert!(queue.hold(300 * mib).is_none(), "past half of 1 GiB");
        let _small = queue.hold(200 * mib).expect("what is left of the half");
        drop(first);
        assert!(queue.hold(300 * mib).is_some(), "given back with the work");
        assert!(Background::new(32, 8, 2, GIB).hold(600 * mib).is_none());
    }

    #[test]
    fn no_queue_leaves_everything_to_the_repair_pass() {
        assert!(
            Background::new(0, 8, 2, GIB)
                .enter(&user("alice"))
                .is_none()
        );
    }
}
