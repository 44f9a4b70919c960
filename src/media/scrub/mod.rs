//! Removal of identifying metadata from an upload as it streams through,
//! without touching the pixels.
//!
//! JPEG and PNG are parsed segment by segment (chunk by chunk) on the way to
//! the blob store: what decides how the pixels look is kept (the coded image,
//! JFIF, Adobe colour transform, ICC profiles, gamma and chromaticities,
//! transparency, animation), the EXIF block is replaced by a minimal one
//! holding only the orientation, and everything else that can carry who,
//! where or with what a photo was taken (the rest of EXIF with its GPS, serial
//! numbers and owner name; XMP; IPTC; comments; text chunks; maker and
//! multi-picture data; bytes after the end of the image, such as embedded
//! motion-photo videos) is dropped. Only one segment's header (or one EXIF
//! block, at most 64 KiB in JPEG) is held at a time; coded image data passes
//! through as slices of the received chunks, without copies.
//!
//! WebP's metadata chunks are blanked in place instead (see
//! [`Scrubber::webp`]), and so are the metadata items of HEIF, HEIC and
//! AVIF files (see [`heif`]). Other formats pass through unchanged;
//! [`Scrubbed::stripped`] says which happened. The same parse also finds the
//! EXIF orientation and rejects JPEG, PNG and WebP streams that end before
//! their end-of-image marker (or RIFF size).
use bytes::{Bytes, BytesMut};
#[cfg(test)]
use image::metadata::Orientation;

use super::MediaError;

mod heif;
mod icc;
mod jpeg;
mod png;
mod webp;

use heif::Heif;
pub use heif::{MAX_HEIF_META, Rescrub, heif_dimensions, heif_meta_after_media, heif_type};
use jpeg::Jpeg;
pub use jpeg::MAX_JPEG_SEGMENTS;
use png::{PNG_SIGNATURE, Png};
use webp::Webp;

/// What the scrubber found, once the stream has ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scrubbed {
    /// The EXIF orientation, 1 (upright) to 8; 1 when there was none.
    pub orientation: u8,
    /// Identifying metadata was removed (the format is one the scrubber
    /// rewrites, and the service was not told to keep metadata).
    pub stripped: bool,
    /// The stored bytes differ from the uploaded ones.
    pub changed: bool,
    /// A HEIF whose metadata items came before its `meta` box: the bytes
    /// written must be streamed once more through this before anyone may
    /// read them (see [`Scrubber::may_rescrub`]).
    pub rescrub: Option<Rescrub>,
    /// A HEIF whose `meta` box came after `mdat`: its primary image's
    /// width and height as viewed, read from that box (the header the
    /// content inspector reads does not hold it).
    pub late_size: Option<(u32, u32)>,
}

/// A streaming rewriter of an image's bytes; see the module documentation.
pub struct Scrubber {
    keep_metadata: bool,
    state: State,
    /// Bytes of a structure not yet complete (a marker, a segment header, an
    /// EXIF block), at most one structure.
    pending: BytesMut,
    orientation: u8,
    /// Some byte was dropped or inserted: the output is no longer a copy
    /// of the input.
    changed: bool,
    /// JPEG marker segments seen (see [`MAX_JPEG_SEGMENTS`]).
    segments: u32,
    /// A HEIF's boxes and metadata items (in [`State::Heif`]).
    heif: Option<Box<Heif>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for enough bytes to tell the format.
    Sniff,
    /// Not a format the scrubber rewrites: everything passes.
    Pass,
    Jpeg(Jpeg),
    Png(Png),
    /// Inside a WebP's RIFF container; `left` bytes of it remain.
    Webp {
        left: u64,
        chunk: Webp,
    },
    /// Inside a HEIF-family file (HEIC, HEIF, AVIF); see [`heif`].
    Heif,
    /// After the end-of-image marker: the rest is dropped.
    Trailer,
}

impl Scrubber {
    pub fn new(keep_metadata: bool) -> Self {
        Self {
            keep_metadata,
            state: State::Sniff,
            pending: BytesMut::new(),
            orientation: 1,
            changed: false,
            segments: 0,
            heif: None,
        }
    }

    /// Takes the next chunk of the upload; appends what is to be stored to
    /// `out` (slices of `chunk` wherever possible).
    pub fn push(&mut self, mut chunk: Bytes, out: &mut Vec<Bytes>) -> Result<(), MediaError> {
        while !chunk.is_empty() {
            match self.state {
                State::Sniff => self.sniff(&mut chunk, out)?,
                State::Pass => out.push(std::mem::take(&mut chunk)),
                State::Trailer if self.keep_metadata => out.push(std::mem::take(&mut chunk)),
                State::Trailer => {
                    self.changed = true;
                    chunk.clear();
                }
                State::Jpeg(jpeg) => self.jpeg(jpeg, &mut chunk, out)?,
                State::Png(png) => self.png(png, &mut chunk, out)?,
                State::Webp { left, chunk: state } => {
                    self.webp(left, state, &mut chunk, out)?;
                }
                State::Heif => self.heif(&mut chunk, out)?,
            }
        }
        Ok(())
    }

    /// Whether the output differs from the input so far: a byte was
    /// dropped or inserted.
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// Bytes of one structure the scrubber holds, or will hold once they
    /// arrive (a HEIF's `meta` box whose length it has read).
    pub fn holding(&self) -> u64 {
        let held = self.pending.len() as u64;
        match &self.heif {
            Some(heif) if self.state == State::Heif => heif.holding().unwrap_or(held),
            _ => held,
        }
    }

    /// Whether the bytes output so far may need a second pass
    /// ([`Scrubbed::rescrub`]): a HEIF being stripped whose metadata items
    /// may lie before its `meta` box (none read yet), or do (one read
    /// pointed behind itself). Until this is false, what was output must
    /// be kept where no caller can read it.
    pub fn may_rescrub(&self) -> bool {
        !self.keep_metadata
            && matches!(self.state, State::Sniff | State::Heif)
            && self
                .heif
                .as_ref()
                .is_none_or(|heif| heif.may_point_behind())
    }

    /// Ends the stream: flushes what is held and reports what was found.
    pub fn finish(mut self, out: &mut Vec<Bytes>) -> Result<Scrubbed, MediaError> {
        let stripped = match self.state {
            State::Sniff | State::Pass => {
                if !self.pending.is_empty() {
                    out.push(self.pending.split().freeze());
                }
                false
            }
            State::Trailer => !self.keep_metadata,
            State::Jpeg(_) => {
                return Err(MediaError::invalid(
                    "the JPEG is truncated: it ends before its end-of-image marker",
                ));
            }
            State::Png(_) => {
                return Err(MediaError::invalid(
                    "the PNG is truncated: it ends before its IEND chunk",
                ));
            }
            State::Webp { .. } => {
                return Err(MediaError::invalid(
                    "the WebP is truncated: it ends before its RIFF size",
                ));
            }
            State::Heif => {
                let pending = self.pending.len();
                match self.heif.as_mut() {
                    Some(heif) => heif.complete(pending)?,
                    None => return Err(MediaError::invalid("the HEIF is truncated")),
                }
                !self.keep_metadata
            }
        };
        let (rescrub, late_size) = self
            .heif
            .as_mut()
            .map_or((None, None), |heif| heif.take_late());
        Ok(Scrubbed {
            orientation: self.orientation,
            stripped,
            changed: self.changed,
            rescrub,
            late_size,
        })
    }

    /// Moves up to `n` bytes from `chunk` into `pending`; true once `pending`
    /// holds `n` bytes.
    fn fill(&mut self, chunk: &mut Bytes, n: usize) -> bool {
        let want = n.saturating_sub(self.pending.len()).min(chunk.len());
        self.pending.extend_from_slice(&chunk.split_to(want));
        self.pending.len() >= n
    }

    fn sniff(&mut self, chunk: &mut Bytes, out: &mut Vec<Bytes>) -> Result<(), MediaError> {
        if !self.fill(chunk, SNIFF_LEN) {
            return Ok(());
        }
        let head = self.pending.split().freeze();
        if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
            // SOI; the bytes after it are parsed like any others.
            out.push(head.slice(..2));
            self.state = State::Jpeg(Jpeg::Marker { scanned: false });
            self.push(head.slice(2..), out)
        } else if head[..8] == PNG_SIGNATURE {
            out.push(head.slice(..8));
            self.state = State::Png(Png::Header);
            self.push(head.slice(8..), out)
        } else if &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
            // The RIFF size counts from the form type on.
            let size = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            out.push(head.slice(..12));
            self.state = State::Webp {
                left: u64::from(size).saturating_sub(4),
                chunk: Webp::START,
            };
            self.push(head.slice(12..), out)
        } else if heif::is_heif(&head) {
            // The ftyp box is parsed like any other box.
            self.state = State::Heif;
            self.heif = Some(Box::new(Heif::new()));
            self.push(head, out)
        } else {
            out.push(head);
            self.state = State::Pass;
            Ok(())
        }
    }

    /// The big-endian 32-bit length and the type that open a PNG chunk or
    /// an ISO-BMFF box, from the first 8 bytes of `pending`.
    fn length_and_kind(&self) -> (u32, [u8; 4]) {
        let p = &self.pending;
        (
            u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
            [p[4], p[5], p[6], p[7]],
        )
    }

    fn note_orientation(&mut self, tiff: &[u8]) {
        if let Some(orientation) = image::metadata::Orientation::from_exif_chunk(tiff) {
            self.orientation = orientation.to_exif();
        }
    }
}

/// Bytes that tell the formats apart (a RIFF header with its form type).
const SNIFF_LEN: usize = 12;

/// A big-endian TIFF structure with one IFD holding one entry: Orientation.
fn minimal_tiff(orientation: u8) -> [u8; 26] {
    let mut tiff = [0u8; 26];
    tiff[..8].copy_from_slice(b"MM\0\x2A\0\0\0\x08");
    tiff[8..10].copy_from_slice(&1u16.to_be_bytes()); // one entry
    tiff[10..12].copy_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff[12..14].copy_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff[14..18].copy_from_slice(&1u32.to_be_bytes()); // count
    tiff[18..20].copy_from_slice(&u16::from(orientation).to_be_bytes());
    // Value padding (2 bytes) and the next-IFD offset (0) stay zero.
    tiff
}

#[cfg(test)]
mod tests;
