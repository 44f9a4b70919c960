//! The bytes that reach the store: scrubbed, gathered into pieces, kept in
//! memory for the renders when small, and their checksums.
use bytes::Bytes;

use super::writes::Writes;
use crate::domain::DomainError;
use crate::domain::chunks::Gatherer;
use crate::media::content::{ContentFacts, ContentInspector, ContentLimits};
use crate::media::scrub::{Scrubbed, Scrubber};

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
/// larger originals, from the store (`stored_digest` in render.rs). Most
/// large images carry no metadata, so they are hashed once.
pub(super) struct StoredBytes {
    scrubber: Option<Scrubber>,
    /// The stored bytes while they fit in [`KEEP_IN_MEMORY`], as shared
    /// slices of the received chunks (not copies).
    kept: Option<Vec<Bytes>>,
    pieces: Vec<Bytes>,
    /// The scrubber's small pieces, waiting to make up one for the store.
    gatherer: Gatherer,
    size: u64,
    /// Whether the original is staged for a second pass, decided at its
    /// first byte (see [`Scrubber::may_rescrub`]).
    staged: Option<bool>,
    /// Once the scrubber has finished: whether a second pass is needed.
    rescrub: bool,
}

impl StoredBytes {
    /// Nothing is kept for an upload declared larger than
    /// [`KEEP_IN_MEMORY`]; the scrubber follows at most `max_pixels` of
    /// image data (`--max-image-pixels`, an APNG's frames together) and
    /// JPEG scans of at most `max_jpeg_decode_passes`
    /// (`--max-jpeg-decode-passes`).
    pub(super) fn new(
        keep_metadata: bool,
        declared_size: Option<u64>,
        limits: &ContentLimits,
    ) -> Self {
        let keep = declared_size.is_none_or(|size| size <= KEEP_IN_MEMORY);
        let scrubber = Scrubber::bounded(
            keep_metadata,
            limits.max_pixels,
            limits.max_jpeg_decode_passes,
        );
        Self {
            scrubber: Some(scrubber),
            kept: keep.then(Vec::new),
            pieces: Vec::new(),
            gatherer: Gatherer::for_writes(),
            size: 0,
            staged: None,
            rescrub: false,
        }
    }

    /// What the scrubber holds, or is about to hold, of one structure.
    pub(super) fn structure(&self) -> u64 {
        self.scrubber.as_ref().map_or(0, Scrubber::holding)
    }

    /// Whether the stored bytes are still being kept for the renders.
    pub(super) fn keeps(&self) -> bool {
        self.kept.is_some()
    }

    /// Gives up the kept copy (the memory budget has no room for it): the
    /// renders will read the original back from the store.
    pub(super) fn stop_keeping(&mut self) {
        self.kept = None;
    }

    /// Most bytes the kept copy can hold, for an upload of `declared` bytes.
    pub(super) fn kept_bound(&self, declared: Option<u64>) -> u64 {
        if self.kept.is_some() {
            declared.map_or(KEEP_IN_MEMORY, |size| size.min(KEEP_IN_MEMORY))
        } else {
            0
        }
    }

    pub(super) async fn write(
        &mut self,
        data: Bytes,
        writes: &mut Writes,
    ) -> Result<(), DomainError> {
        let scrubber = self.scrubber.as_mut().expect("written before finish");
        scrubber.push(data, &mut self.pieces)?;
        self.flush(writes, false).await
    }

    /// Passes the scrubber's output on in pieces of at least
    /// [`MIN_PIECE`](crate::domain::chunks::MIN_PIECE) bytes (the last may be
    /// smaller when `last`).
    async fn flush(&mut self, writes: &mut Writes, last: bool) -> Result<(), DomainError> {
        for piece in std::mem::take(&mut self.pieces) {
            for gathered in self.gatherer.push(piece) {
                self.store(gathered, writes).await?;
            }
        }
        if last && let Some(gathered) = self.gatherer.finish() {
            self.store(gathered, writes).await?;
        }
        Ok(())
    }

    async fn store(&mut self, piece: Bytes, writes: &mut Writes) -> Result<(), DomainError> {
        if self.staged.is_none() {
            // Bytes that may hold metadata found only later never reach
            // the original's key.
            let stage = match &self.scrubber {
                Some(scrubber) => scrubber.may_rescrub(),
                None => self.rescrub,
            };
            if stage {
                writes.stage_original()?;
            }
            self.staged = Some(stage);
        }
        self.size += piece.len() as u64;
        if self.size > KEEP_IN_MEMORY {
            self.kept = None;
        } else if let Some(kept) = &mut self.kept {
            kept.push(piece.clone());
        }
        writes.write(piece).await
    }

    /// Ends the stream: writes what the scrubber held back and checks the
    /// upload as a whole.
    pub(super) async fn finish(
        mut self,
        writes: &mut Writes,
        inspector: ContentInspector,
    ) -> Result<StoredFacts, DomainError> {
        let scrubber = self.scrubber.take().expect("finished once");
        let scrubbed = scrubber.finish(&mut self.pieces);
        let late_size = scrubbed.as_ref().ok().and_then(|s| s.late_size);
        let uploaded = inspector.finish_with(late_size)?;
        let scrubbed = scrubbed?;
        self.rescrub = scrubbed.rescrub.is_some();
        self.flush(writes, true).await?;
        if self.rescrub && !writes.is_staged() {
            // Only a second `meta` box, after bytes were stored, can
            // point behind itself there.
            return Err(DomainError::invalid(
                "the HEIF's second meta box points at bytes before it; save the file with one \
                 meta box, before its media data",
            ));
        }
        let digest = if writes.is_staged() {
            // Those of the second pass's output, computed as it runs.
            None
        } else if scrubbed.changed {
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

/// SHA-256 (hex) and CRC32C of bytes in pieces.
pub(super) fn digest_of(pieces: &[Bytes]) -> (String, u32) {
    let mut checksums = Checksums::default();
    pieces.iter().for_each(|piece| checksums.update(piece));
    checksums.finish()
}

/// The stored checksums, SHA-256 and CRC32C, computed together.
#[derive(Default)]
pub(super) struct Checksums {
    sha256: sha2::Sha256,
    crc32c: u32,
}

impl Checksums {
    pub(super) fn update(&mut self, bytes: &[u8]) {
        sha2::Digest::update(&mut self.sha256, bytes);
        self.crc32c = crc32c::crc32c_append(self.crc32c, bytes);
    }

    /// Lower-case hex SHA-256 and the CRC32C.
    pub(super) fn finish(self) -> (String, u32) {
        (
            hex::encode(sha2::Digest::finalize(self.sha256)),
            self.crc32c,
        )
    }
}

/// What is known of an upload once all of it is stored.
pub(super) struct StoredFacts {
    /// Of the bytes as uploaded.
    pub(super) uploaded: ContentFacts,
    pub(super) scrubbed: Scrubbed,
    /// Of the bytes as stored; the checksums are `None` until computed
    /// from the store (changed bytes too large to keep).
    pub(super) size_bytes: u64,
    pub(super) digest: Option<(String, u32)>,
    /// The stored bytes, when small enough to have been kept.
    pub(super) kept: Option<Vec<Bytes>>,
}

impl StoredFacts {
    /// Width and height as a viewer shows them: EXIF orientations 5 to 8
    /// turn the image by a quarter.
    pub(super) fn viewed_dimensions(&self) -> (u32, u32) {
        let (width, height) = (self.uploaded.width, self.uploaded.height);
        if (5..=8).contains(&self.scrubbed.orientation) {
            (height, width)
        } else {
            (width, height)
        }
    }
}
