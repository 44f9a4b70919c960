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
//! [`Scrubber::webp`]). Other formats pass through unchanged;
//! [`Scrubbed::stripped`] says which happened. The same parse also finds the
//! EXIF orientation and rejects JPEG, PNG and WebP streams that end before
//! their end-of-image marker (or RIFF size).
use bytes::{Bytes, BytesMut};
#[cfg(test)]
use image::metadata::Orientation;

use super::DomainError;

/// Largest PNG `eXIf` chunk read for its orientation; larger ones are
/// dropped unread.
const MAX_PNG_EXIF: u32 = 1024 * 1024;
/// Most JPEG marker segments outside scan data. A camera JPEG has about
/// ten, a progressive one a few dozen (a DHT and an SOS per scan); a file
/// with more is built to make every segment cost a parse and a piece.
pub const MAX_JPEG_SEGMENTS: u32 = 10_000;

/// What the scrubber found, once the stream has ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scrubbed {
    /// The EXIF orientation, 1 (upright) to 8; 1 when there was none.
    pub orientation: u8,
    /// Identifying metadata was removed (the format is one the scrubber
    /// rewrites, and the service was not told to keep metadata).
    pub stripped: bool,
    /// The stored bytes differ from the uploaded ones.
    pub changed: bool,
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
    /// After the end-of-image marker: the rest is dropped.
    Trailer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Webp {
    /// Expecting a chunk header (FourCC and little-endian size).
    Header,
    /// Passing `remaining` bytes of a chunk's (padded) payload.
    Body { remaining: u64 },
    /// Replacing `remaining` bytes of a metadata chunk's payload by zeros.
    Blank { remaining: u64 },
    /// Collecting a whole chunk (`VP8X` flags, `EXIF` orientation).
    Collect { len: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Jpeg {
    /// Expecting a marker (`FF xx`, fill bytes allowed).
    Marker,
    /// A segment's marker and length are known; its payload comes next.
    Payload {
        marker: u8,
        len: usize,
        action: Action,
    },
    /// Inside entropy-coded scan data, scanning for the next marker.
    Scan,
    /// Scan data ended a chunk with FF (held pending).
    ScanFf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Png {
    /// Expecting a chunk header (length and type).
    Header,
    /// Passing or dropping `remaining` bytes of a chunk (data and CRC);
    /// `last` for IEND.
    Body {
        remaining: u64,
        keep: bool,
        last: bool,
    },
    /// Collecting an `eXIf` chunk of `len` data bytes (plus CRC).
    Exif { len: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Keep,
    Drop,
    /// Collect the whole payload, then decide (EXIF, ICC).
    Inspect,
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
        }
    }

    /// Takes the next chunk of the upload; appends what is to be stored to
    /// `out` (slices of `chunk` wherever possible).
    pub fn push(&mut self, mut chunk: Bytes, out: &mut Vec<Bytes>) -> Result<(), DomainError> {
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
            }
        }
        Ok(())
    }

    /// Whether the output differs from the input so far: a byte was
    /// dropped or inserted.
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// Ends the stream: flushes what is held and reports what was found.
    pub fn finish(mut self, out: &mut Vec<Bytes>) -> Result<Scrubbed, DomainError> {
        let stripped = match self.state {
            State::Sniff | State::Pass => {
                if !self.pending.is_empty() {
                    out.push(self.pending.split().freeze());
                }
                false
            }
            State::Trailer => !self.keep_metadata,
            State::Jpeg(_) => {
                return Err(DomainError::invalid(
                    "the JPEG is truncated: it ends before its end-of-image marker",
                ));
            }
            State::Png(_) => {
                return Err(DomainError::invalid(
                    "the PNG is truncated: it ends before its IEND chunk",
                ));
            }
            State::Webp { .. } => {
                return Err(DomainError::invalid(
                    "the WebP is truncated: it ends before its RIFF size",
                ));
            }
        };
        Ok(Scrubbed {
            orientation: self.orientation,
            stripped,
            changed: self.changed,
        })
    }

    /// Moves up to `n` bytes from `chunk` into `pending`; true once `pending`
    /// holds `n` bytes.
    fn fill(&mut self, chunk: &mut Bytes, n: usize) -> bool {
        let want = n.saturating_sub(self.pending.len()).min(chunk.len());
        self.pending.extend_from_slice(&chunk.split_to(want));
        self.pending.len() >= n
    }

    fn sniff(&mut self, chunk: &mut Bytes, out: &mut Vec<Bytes>) -> Result<(), DomainError> {
        if !self.fill(chunk, SNIFF_LEN) {
            return Ok(());
        }
        let head = self.pending.split().freeze();
        if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
            // SOI; the bytes after it are parsed like any others.
            out.push(head.slice(..2));
            self.state = State::Jpeg(Jpeg::Marker);
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
                chunk: Webp::Header,
            };
            self.push(head.slice(12..), out)
        } else {
            out.push(head);
            self.state = State::Pass;
            Ok(())
        }
    }

    fn jpeg(
        &mut self,
        state: Jpeg,
        chunk: &mut Bytes,
        out: &mut Vec<Bytes>,
    ) -> Result<(), DomainError> {
        match state {
            Jpeg::Marker => self.jpeg_marker(chunk, out)?,
            Jpeg::Payload {
                marker,
                len,
                action: Action::Inspect,
            } => {
                if self.fill(chunk, 4 + len) {
                    let segment = self.pending.split().freeze();
                    self.inspect_jpeg_segment(marker, segment, out);
                    self.state = State::Jpeg(Jpeg::Marker);
                }
            }
            Jpeg::Payload {
                marker,
                len,
                action,
            } => {
                let n = len.min(chunk.len());
                let part = chunk.split_to(n);
                if action == Action::Keep {
                    out.push(part);
                } else if n > 0 {
                    self.changed = true;
                }
                self.state = State::Jpeg(if len > n {
                    Jpeg::Payload {
                        marker,
                        len: len - n,
                        action,
                    }
                } else if marker == SOS {
                    Jpeg::Scan
                } else {
                    Jpeg::Marker
                });
            }
            Jpeg::Scan => self.jpeg_scan(chunk, out),
            Jpeg::ScanFf => {
                // The byte after an FF that ended the previous chunk.
                let next = chunk[0];
                if next == 0x00 || (0xD0..=0xD7).contains(&next) {
                    out.push(self.pending.split().freeze());
                    out.push(chunk.split_to(1));
                    self.state = State::Jpeg(Jpeg::Scan);
                } else {
                    // A marker (or fill): parsed with the FF already pending.
                    self.state = State::Jpeg(Jpeg::Marker);
                }
            }
        }
        Ok(())
    }

    fn jpeg_marker(&mut self, chunk: &mut Bytes, out: &mut Vec<Bytes>) -> Result<(), DomainError> {
        if !self.fill(chunk, 2) {
            return Ok(());
        }
        let (ff, marker) = (self.pending[0], self.pending[1]);
        if ff != 0xFF {
            return Err(corrupt_jpeg());
        }
        if marker != 0xFF {
            self.segments += 1;
            if self.segments > MAX_JPEG_SEGMENTS {
                return Err(DomainError::invalid(format!(
                    "the JPEG has more than {MAX_JPEG_SEGMENTS} marker segments"
                )));
            }
        }
        match marker {
            // A fill byte before the marker code.
            0xFF => self.pending.truncate(1),
            EOI => {
                out.push(self.pending.split().freeze());
                self.state = State::Trailer;
            }
            // TEM and the restart markers belong inside scan data (where
            // `jpeg_scan` passes them); outside it they mean a corrupt or
            // a crafted file.
            0x01 | 0xD0..=0xD7 => {
                return Err(DomainError::invalid(
                    "the JPEG has a marker outside scan data that belongs inside it",
                ));
            }
            0x00 | 0xD8 => return Err(corrupt_jpeg()),
            _ => {
                if !self.fill(chunk, 4) {
                    return Ok(());
                }
                let len = usize::from(u16::from_be_bytes([self.pending[2], self.pending[3]]));
                if len < 2 {
                    return Err(corrupt_jpeg());
                }
                let action = self.jpeg_action(marker);
                match action {
                    Action::Keep => out.push(self.pending.split().freeze()),
                    Action::Drop => {
                        self.changed = true;
                        self.pending.clear();
                    }
                    // The header stays pending with the payload to come.
                    Action::Inspect => {}
                }
                self.state = State::Jpeg(Jpeg::Payload {
                    marker,
                    len: len - 2,
                    action,
                });
            }
        }
        Ok(())
    }

    /// Entropy-coded data: an FF is followed by 00 (a stuffed byte), a
    /// restart marker, or a real marker that ends the scan.
    fn jpeg_scan(&mut self, chunk: &mut Bytes, out: &mut Vec<Bytes>) {
        let mut at = 0;
        while let Some(found) = chunk[at..].iter().position(|&b| b == 0xFF) {
            let ff = at + found;
            let Some(&next) = chunk.get(ff + 1) else {
                // FF ends the chunk: the next chunk's first byte decides.
                out.push(chunk.split_to(ff));
                self.pending.extend_from_slice(&chunk.split_to(1));
                self.state = State::Jpeg(Jpeg::ScanFf);
                return;
            };
            if next == 0x00 || (0xD0..=0xD7).contains(&next) {
                at = ff + 2;
                continue;
            }
            out.push(chunk.split_to(ff));
            self.state = State::Jpeg(Jpeg::Marker);
            return;
        }
        out.push(std::mem::take(chunk));
    }

    fn jpeg_action(&self, marker: u8) -> Action {
        match marker {
            // EXIF (APP1) is read for its orientation even when kept;
            // APP2 is kept only when it is an ICC profile.
            0xE1 | 0xE2 => Action::Inspect,
            _ if self.keep_metadata => Action::Keep,
            // JFIF, Adobe (colour transform): they change how pixels decode.
            0xE0 | 0xEE => Action::Keep,
            // Every other application segment and comments.
            0xE3..=0xED | 0xEF | 0xFE => Action::Drop,
            _ => Action::Keep,
        }
    }

    fn inspect_jpeg_segment(&mut self, marker: u8, segment: Bytes, out: &mut Vec<Bytes>) {
        let payload = &segment[4..];
        if marker == 0xE1
            && let Some(tiff) = payload.strip_prefix(b"Exif\0\0")
        {
            self.note_orientation(tiff);
            if self.keep_metadata {
                out.push(segment);
                return;
            }
            self.changed = true;
            if self.orientation != 1 {
                out.push(minimal_jpeg_exif(self.orientation));
            }
            return;
        }
        let keep = self.keep_metadata || (marker == 0xE2 && payload.starts_with(b"ICC_PROFILE\0"));
        if keep {
            out.push(segment);
        } else {
            self.changed = true;
        }
    }

    fn note_orientation(&mut self, tiff: &[u8]) {
        if let Some(orientation) = image::metadata::Orientation::from_exif_chunk(tiff) {
            self.orientation = orientation.to_exif();
        }
    }

    /// WebP metadata cannot be removed while streaming (the RIFF size at
    /// the start would change), so it is blanked in place: `EXIF` and
    /// `XMP ` chunks become `JUNK` chunks of zeros (which decoders skip, as
    /// RIFF defines) and `VP8X` stops announcing them. `left` counts the
    /// container's bytes not yet taken from the input.
    fn webp(
        &mut self,
        left: u64,
        state: Webp,
        chunk: &mut Bytes,
        out: &mut Vec<Bytes>,
    ) -> Result<(), DomainError> {
        let before = chunk.len();
        let taken = |chunk: &Bytes| (before - chunk.len()) as u64;
        let corrupt = || DomainError::invalid("the WebP's chunk structure is corrupt");
        let next = match state {
            Webp::Header => {
                if left + (self.pending.len() as u64) < 8 {
                    return Err(corrupt());
                }
                if !self.fill(chunk, 8) {
                    self.state = State::Webp {
                        left: left - taken(chunk),
                        chunk: Webp::Header,
                    };
                    return Ok(());
                }
                let kind = [
                    self.pending[0],
                    self.pending[1],
                    self.pending[2],
                    self.pending[3],
                ];
                let size = u32::from_le_bytes([
                    self.pending[4],
                    self.pending[5],
                    self.pending[6],
                    self.pending[7],
                ]);
                let padded = u64::from(size) + u64::from(size & 1);
                if padded > left - taken(chunk) {
                    return Err(corrupt());
                }
                let metadata = &kind == b"EXIF" || &kind == b"XMP ";
                if (&kind == b"VP8X" || &kind == b"EXIF") && size <= MAX_WEBP_COLLECT {
                    Webp::Collect {
                        len: 8 + padded as usize,
                    }
                } else if metadata && !self.keep_metadata {
                    self.changed = true;
                    self.pending.clear();
                    out.push(webp_junk_header(size));
                    Webp::Blank { remaining: padded }
                } else {
                    out.push(self.pending.split().freeze());
                    Webp::Body { remaining: padded }
                }
            }
            Webp::Body { remaining } | Webp::Blank { remaining } => {
                let n = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                let part = chunk.split_to(n);
                if matches!(state, Webp::Body { .. }) {
                    out.push(part);
                } else {
                    out.push(Bytes::from(vec![0u8; n]));
                }
                match (state, remaining - n as u64) {
                    (_, 0) => Webp::Header,
                    (Webp::Body { .. }, remaining) => Webp::Body { remaining },
                    (_, remaining) => Webp::Blank { remaining },
                }
            }
            Webp::Collect { len } => {
                if !self.fill(chunk, len) {
                    self.state = State::Webp {
                        left: left - taken(chunk),
                        chunk: state,
                    };
                    return Ok(());
                }
                let mut whole = self.pending.split();
                if &whole[..4] == b"EXIF" {
                    let payload = &whole[8..];
                    let tiff = payload.strip_prefix(b"Exif\0\0").unwrap_or(payload);
                    self.note_orientation(tiff);
                    if !self.keep_metadata {
                        self.changed = true;
                        whole[..4].copy_from_slice(b"JUNK");
                        whole[8..].fill(0);
                    }
                } else if !self.keep_metadata && whole.len() > 8 && whole[8] & 0x0C != 0 {
                    // VP8X: clear the EXIF (0x08) and XMP (0x04) flags.
                    self.changed = true;
                    whole[8] &= !0x0C;
                }
                out.push(whole.freeze());
                Webp::Header
            }
        };
        let left = left - taken(chunk);
        self.state = if left == 0 && next == Webp::Header {
            State::Trailer
        } else {
            State::Webp { left, chunk: next }
        };
        Ok(())
    }

    fn png(
        &mut self,
        state: Png,
        chunk: &mut Bytes,
        out: &mut Vec<Bytes>,
    ) -> Result<(), DomainError> {
        match state {
            Png::Header => {
                if !self.fill(chunk, 8) {
                    return Ok(());
                }
                let len = u32::from_be_bytes([
                    self.pending[0],
                    self.pending[1],
                    self.pending[2],
                    self.pending[3],
                ]);
                let kind = [
                    self.pending[4],
                    self.pending[5],
                    self.pending[6],
                    self.pending[7],
                ];
                if len > i32::MAX as u32 || !kind.iter().all(u8::is_ascii_alphabetic) {
                    return Err(DomainError::invalid("the PNG's chunk structure is corrupt"));
                }
                if &kind == b"eXIf" && len <= MAX_PNG_EXIF {
                    // The header stays pending with the data to come.
                    self.state = State::Png(Png::Exif { len });
                    return Ok(());
                }
                let keep = self.keep_metadata || keep_png_chunk(&kind);
                let header = self.pending.split().freeze();
                if keep {
                    out.push(header);
                } else {
                    self.changed = true;
                }
                self.state = State::Png(Png::Body {
                    remaining: u64::from(len) + 4,
                    keep,
                    last: &kind == b"IEND",
                });
            }
            Png::Body {
                remaining,
                keep,
                last,
            } => {
                let n = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                let part = chunk.split_to(n);
                if keep {
                    out.push(part);
                }
                let remaining = remaining - n as u64;
                self.state = match (remaining, last) {
                    (0, true) => State::Trailer,
                    (0, false) => State::Png(Png::Header),
                    _ => State::Png(Png::Body {
                        remaining,
                        keep,
                        last,
                    }),
                };
            }
            Png::Exif { len } => {
                let len = len as usize;
                if !self.fill(chunk, 8 + len + 4) {
                    return Ok(());
                }
                let whole = self.pending.split().freeze();
                self.note_orientation(&whole[8..8 + len]);
                if self.keep_metadata {
                    out.push(whole);
                } else {
                    self.changed = true;
                    if self.orientation != 1 {
                        out.push(minimal_png_exif(self.orientation));
                    }
                }
                self.state = State::Png(Png::Header);
            }
        }
        Ok(())
    }
}

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
/// Bytes that tell the formats apart (a RIFF header with its form type).
const SNIFF_LEN: usize = 12;
/// Largest WebP chunk collected whole (`VP8X` is 10 bytes, `EXIF` blocks
/// a few KiB); larger metadata chunks are blanked unread.
const MAX_WEBP_COLLECT: u32 = 1024 * 1024;
const SOS: u8 = 0xDA;
const EOI: u8 = 0xD9;

/// A RIFF `JUNK` chunk header for `size` bytes of payload.
fn webp_junk_header(size: u32) -> Bytes {
    let mut header = b"JUNK".to_vec();
    header.extend_from_slice(&size.to_le_bytes());
    Bytes::from(header)
}

fn corrupt_jpeg() -> DomainError {
    DomainError::invalid("the JPEG's marker structure is corrupt")
}

/// Critical chunks (upper-case first letter) are always kept; of the
/// ancillary ones, those that change how the image looks or moves.
fn keep_png_chunk(kind: &[u8; 4]) -> bool {
    kind[0].is_ascii_uppercase()
        || matches!(
            kind,
            b"tRNS"
                | b"gAMA"
                | b"cHRM"
                | b"sRGB"
                | b"iCCP"
                | b"sBIT"
                | b"bKGD"
                | b"pHYs"
                | b"cICP"
                | b"mDCV"
                | b"cLLI"
                | b"mDCv"
                | b"cLLi"
                | b"acTL"
                | b"fcTL"
                | b"fdAT"
        )
}

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

/// An APP1 segment carrying only the orientation.
fn minimal_jpeg_exif(orientation: u8) -> Bytes {
    let tiff = minimal_tiff(orientation);
    let mut segment = Vec::with_capacity(4 + 6 + tiff.len());
    segment.extend_from_slice(&[0xFF, 0xE1]);
    segment.extend_from_slice(&((2 + 6 + tiff.len()) as u16).to_be_bytes());
    segment.extend_from_slice(b"Exif\0\0");
    segment.extend_from_slice(&tiff);
    Bytes::from(segment)
}

/// An `eXIf` chunk carrying only the orientation.
fn minimal_png_exif(orientation: u8) -> Bytes {
    let tiff = minimal_tiff(orientation);
    let mut chunk = Vec::with_capacity(12 + tiff.len());
    chunk.extend_from_slice(&(tiff.len() as u32).to_be_bytes());
    chunk.extend_from_slice(b"eXIf");
    chunk.extend_from_slice(&tiff);
    let crc = crc32fast::hash(&chunk[4..]);
    chunk.extend_from_slice(&crc.to_be_bytes());
    Bytes::from(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little-endian TIFF block: Orientation and Artist in IFD0.
    fn exif_tiff(orientation: u16, artist: &str) -> Vec<u8> {
        let mut tiff = b"II*\0\x08\0\0\0".to_vec();
        tiff.extend_from_slice(&2u16.to_le_bytes());
        tiff.extend_from_slice(&0x0112u16.to_le_bytes());
        tiff.extend_from_slice(&3u16.to_le_bytes());
        tiff.extend_from_slice(&1u32.to_le_bytes());
        tiff.extend_from_slice(&u32::from(orientation).to_le_bytes());
        let artist_at = 8 + 2 + 2 * 12 + 4;
        tiff.extend_from_slice(&0x013Bu16.to_le_bytes());
        tiff.extend_from_slice(&2u16.to_le_bytes());
        tiff.extend_from_slice(&(artist.len() as u32 + 1).to_le_bytes());
        tiff.extend_from_slice(&(artist_at as u32).to_le_bytes());
        tiff.extend_from_slice(&0u32.to_le_bytes());
        tiff.extend_from_slice(artist.as_bytes());
        tiff.push(0);
        tiff
    }

    fn segment(marker: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0xFF, marker];
        out.extend_from_slice(&(payload.len() as u16 + 2).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn encoded_jpeg() -> Vec<u8> {
        let pixels: Vec<u8> = (0..48 * 32 * 3).map(|i| (i * 7 % 251) as u8).collect();
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, 90)
            .encode(&pixels, 48, 32, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        out
    }

    /// A camera-like JPEG: EXIF with an owner's name, XMP, IPTC, a comment,
    /// an ICC profile, and a video appended after the image.
    fn camera_jpeg(orientation: u16) -> Vec<u8> {
        let plain = encoded_jpeg();
        let mut exif = b"Exif\0\0".to_vec();
        exif.extend_from_slice(&exif_tiff(orientation, "Alice Example"));
        let mut out = plain[..2].to_vec();
        out.extend(segment(0xE1, &exif));
        out.extend(segment(
            0xE1,
            b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta>GPSLatitude 48.85</x:xmpmeta>",
        ));
        out.extend(segment(0xE2, b"ICC_PROFILE\0\x01\x01fake-icc-profile"));
        out.extend(segment(0xE2, b"MPF\0secondary-image-index"));
        out.extend(segment(0xED, b"Photoshop 3.0\0IPTC By-line: Alice Example"));
        out.extend(segment(0xFE, b"shot by Alice Example"));
        out.extend_from_slice(&plain[2..]);
        out.extend_from_slice(b"ftypmp42 motion photo video with GPS");
        out
    }

    fn scrub(bytes: &[u8], chunk: usize, keep: bool) -> Result<(Vec<u8>, Scrubbed), DomainError> {
        let mut scrubber = Scrubber::new(keep);
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk) {
            scrubber.push(Bytes::copy_from_slice(piece), &mut out)?;
        }
        let report = scrubber.finish(&mut out)?;
        Ok((out.concat(), report))
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn identifying_jpeg_metadata_is_removed_and_pixels_are_untouched() {
        let original = camera_jpeg(6);
        let expected_pixels = image::load_from_memory(&original).unwrap().to_rgb8();
        let mut results = Vec::new();
        for chunk in [1, 2, 3, 7, 64, 1000, original.len()] {
            let (stored, report) = scrub(&original, chunk, false).unwrap();
            assert_eq!(
                report,
                Scrubbed {
                    orientation: 6,
                    stripped: true,
                    changed: true
                }
            );
            for secret in [&b"Alice"[..], b"GPSLatitude", b"MPF", b"motion photo"] {
                assert!(!contains(&stored, secret), "{secret:?} survived");
            }
            assert!(
                contains(&stored, b"fake-icc-profile"),
                "the ICC profile was dropped"
            );
            let pixels = image::load_from_memory(&stored).unwrap().to_rgb8();
            assert!(pixels == expected_pixels, "the pixels changed");
            let exif = Orientation::from_stored(&stored);
            assert_eq!(exif, Some(6), "the stored original lost its orientation");
            results.push(stored);
        }
        assert!(
            results.windows(2).all(|w| w[0] == w[1]),
            "chunking changed the output"
        );
    }

    #[test]
    fn an_upright_jpeg_keeps_no_exif_at_all() {
        let (stored, report) = scrub(&camera_jpeg(1), 5, false).unwrap();
        assert_eq!(report.orientation, 1);
        assert!(!contains(&stored, b"Exif"));
    }

    #[test]
    fn images_without_metadata_are_stored_byte_for_byte() {
        let jpeg = encoded_jpeg();
        let (stored, report) = scrub(&jpeg, 4096, false).unwrap();
        assert_eq!(stored, jpeg);
        assert!(report.stripped && !report.changed);
    }

    #[test]
    fn keeping_metadata_stores_the_bytes_as_uploaded() {
        let original = camera_jpeg(3);
        let (stored, report) = scrub(&original, 9, true).unwrap();
        assert_eq!(stored, original);
        assert_eq!(
            report,
            Scrubbed {
                orientation: 3,
                stripped: false,
                changed: false
            }
        );
    }

    fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc32fast::hash(&out[4..]).to_be_bytes());
        out
    }

    #[test]
    fn identifying_png_metadata_is_removed() {
        let image = image::RgbaImage::from_fn(20, 10, |x, y| {
            image::Rgba([x as u8 * 9, y as u8 * 20, 7, 200])
        });
        let mut plain = Vec::new();
        image::DynamicImage::ImageRgba8(image.clone())
            .write_to(
                &mut std::io::Cursor::new(&mut plain),
                image::ImageFormat::Png,
            )
            .unwrap();
        // Signature and IHDR, then metadata, then the rest.
        let mut original = plain[..33].to_vec();
        original.extend(png_chunk(b"tEXt", b"Author\0Alice Example"));
        original.extend(png_chunk(b"eXIf", &exif_tiff(8, "Alice Example")));
        original.extend(png_chunk(b"gAMA", &45455u32.to_be_bytes()));
        original.extend_from_slice(&plain[33..]);
        original.extend_from_slice(b"trailing Alice");
        for chunk in [1, 5, 13, 4096] {
            let (stored, report) = scrub(&original, chunk, false).unwrap();
            assert_eq!(
                report,
                Scrubbed {
                    orientation: 8,
                    stripped: true,
                    changed: true
                }
            );
            assert!(!contains(&stored, b"Alice"));
            assert!(contains(&stored, b"gAMA"));
            let decoded = image::load_from_memory(&stored).unwrap().to_rgba8();
            assert!(decoded == image);
            // The replacement eXIf chunk is well-formed and says 8.
            let at = stored.windows(4).position(|w| w == b"eXIf").unwrap();
            let len = u32::from_be_bytes(stored[at - 4..at].try_into().unwrap()) as usize;
            let data = &stored[at + 4..at + 4 + len];
            let crc = u32::from_be_bytes(stored[at + 4 + len..at + 8 + len].try_into().unwrap());
            assert_eq!(crc, crc32fast::hash(&stored[at..at + 4 + len]));
            assert_eq!(
                image::metadata::Orientation::from_exif_chunk(data).map(|o| o.to_exif()),
                Some(8)
            );
        }
    }

    #[test]
    fn truncated_jpegs_and_pngs_are_refused() {
        let jpeg = encoded_jpeg();
        let error = scrub(&jpeg[..jpeg.len() - 40], 100, false).unwrap_err();
        assert!(error.to_string().contains("truncated"), "{error}");
        let png = {
            let mut out = Vec::new();
            image::DynamicImage::ImageRgb8(image::RgbImage::new(8, 8))
                .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
                .unwrap();
            out
        };
        let error = scrub(&png[..png.len() - 12], 100, false).unwrap_err();
        assert!(error.to_string().contains("truncated"), "{error}");
    }

    #[test]
    fn other_formats_and_tiny_inputs_pass_unchanged() {
        for bytes in [
            &b"GIF89a and the rest of a gif"[..],
            b"RIFF\0\0\0\0AVI LIST",
            b"abc",
        ] {
            let (stored, report) = scrub(bytes, 2, false).unwrap();
            assert_eq!(stored, bytes);
            assert_eq!(
                report,
                Scrubbed {
                    orientation: 1,
                    stripped: false,
                    changed: false
                }
            );
        }
    }

    #[test]
    fn a_flood_of_empty_markers_is_refused() {
        let jpeg = encoded_jpeg();
        // TEM markers between SOI and the first segment.
        let mut flood = jpeg[..2].to_vec();
        flood.extend(std::iter::repeat_n([0xFF, 0x01], 1000).flatten());
        flood.extend_from_slice(&jpeg[2..]);
        assert!(scrub(&flood, 4096, false).is_err());
        // Empty comment segments: valid one by one, not by the million.
        let mut flood = jpeg[..2].to_vec();
        let count = MAX_JPEG_SEGMENTS as usize + 1;
        flood.extend(std::iter::repeat_n([0xFF, 0xFE, 0x00, 0x02], count).flatten());
        flood.extend_from_slice(&jpeg[2..]);
        let error = scrub(&flood, 64 * 1024, true).unwrap_err();
        assert!(error.to_string().contains("marker segments"), "{error}");
    }

    #[test]
    fn corrupt_jpeg_structure_is_refused_not_panicked_on() {
        let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(scrub(&bytes, 3, false).is_err());
        bytes = vec![0xFF, 0xD8, 0xFF, 0xD8, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(scrub(&bytes, 1, false).is_err());
        bytes = vec![
            0xFF, 0xD8, 0xFF, 0x12, 0x00, 0x02, 0x34, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert!(scrub(&bytes, 1, false).is_err());
        // A WebP whose chunk claims more than its RIFF size.
        bytes = b"RIFF\x10\0\0\0WEBPVP8L\xFF\0\0\0abcd".to_vec();
        assert!(scrub(&bytes, 5, false).is_err());
    }

    /// A WebP as cameras and editors write it: `VP8X` announcing EXIF and
    /// XMP, the image, then both metadata chunks.
    fn camera_webp(orientation: u16) -> (Vec<u8>, image::RgbaImage) {
        let image = image::RgbaImage::from_fn(30, 20, |x, y| {
            image::Rgba([x as u8 * 8, y as u8 * 12, 90, 255])
        });
        let mut simple = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut simple)
            .encode(image.as_raw(), 30, 20, image::ExtendedColorType::Rgba8)
            .unwrap();
        // `simple` is RIFF + WEBP + one VP8L chunk: keep that chunk.
        let vp8l = &simple[12..];
        let chunk = |kind: &[u8; 4], data: &[u8]| {
            let mut out = kind.to_vec();
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(data);
            if data.len() % 2 == 1 {
                out.push(0);
            }
            out
        };
        let mut vp8x = vec![0x08 | 0x04 | 0x10, 0, 0, 0];
        vp8x.extend_from_slice(&29u32.to_le_bytes()[..3]);
        vp8x.extend_from_slice(&19u32.to_le_bytes()[..3]);
        let mut body = b"WEBP".to_vec();
        body.extend(chunk(b"VP8X", &vp8x));
        body.extend_from_slice(vp8l);
        body.extend(chunk(b"EXIF", &exif_tiff(orientation, "Alice Example")));
        body.extend(chunk(
            b"XMP ",
            b"<x:xmpmeta>Alice Example, GPS 48.85</x:xmpmeta>",
        ));
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend(body);
        (out, image)
    }

    #[test]
    fn webp_metadata_is_blanked_in_place() {
        let (original, pixels) = camera_webp(6);
        for chunk in [1, 3, 8, 50, original.len()] {
            let (stored, report) = scrub(&original, chunk, false).unwrap();
            assert_eq!(
                report,
                Scrubbed {
                    orientation: 6,
                    stripped: true,
                    changed: true
                }
            );
            assert_eq!(stored.len(), original.len(), "sizes stay, so it streams");
            assert!(
                !contains(&stored, b"Alice")
                    && !contains(&stored, b"EXIF")
                    && !contains(&stored, b"XMP ")
            );
            let vp8x = stored.windows(4).position(|w| w == b"VP8X").unwrap();
            assert_eq!(
                stored[vp8x + 8] & 0x0C,
                0,
                "VP8X no longer announces metadata"
            );
            let decoded = image::load_from_memory(&stored).unwrap().to_rgba8();
            assert!(decoded == pixels, "the pixels changed");
        }
        let (kept, report) = scrub(&original, 7, true).unwrap();
        assert_eq!(kept, original);
        assert!(!report.stripped && !report.changed && report.orientation == 6);
        let error = scrub(&original[..original.len() - 5], 64, false).unwrap_err();
        assert!(error.to_string().contains("truncated"), "{error}");
    }

    trait FromStored {
        fn from_stored(jpeg: &[u8]) -> Option<u8>;
    }

    /// The orientation in a stored JPEG's EXIF segment.
    impl FromStored for Orientation {
        fn from_stored(jpeg: &[u8]) -> Option<u8> {
            let at = jpeg.windows(6).position(|w| w == b"Exif\0\0")? + 6;
            Orientation::from_exif_chunk(&jpeg[at..]).map(|o| o.to_exif())
        }
    }
}
