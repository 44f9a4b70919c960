//! WebP: metadata chunks blanked in place (RIFF sizes stay as they are).
use bytes::Bytes;

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Webp {
    /// Expecting a chunk header (FourCC and little-endian size).
    Header,
    /// Passing `remaining` bytes of a chunk's (padded) payload.
    Body { remaining: u64 },
    /// Replacing `remaining` bytes of a metadata chunk's payload by zeros.
    Blank { remaining: u64 },
    /// Collecting a whole chunk (`VP8X` flags, `EXIF` orientation).
    Collect { len: usize },
}

/// Largest WebP chunk collected whole (`VP8X` is 10 bytes, `EXIF` blocks
/// a few KiB); larger metadata chunks are blanked unread.
const MAX_WEBP_COLLECT: u32 = 1024 * 1024;

/// A RIFF `JUNK` chunk header for `size` bytes of payload.
fn webp_junk_header(size: u32) -> Bytes {
    let mut header = b"JUNK".to_vec();
    header.extend_from_slice(&size.to_le_bytes());
    Bytes::from(header)
}

impl Scrubber {
    /// WebP metadata cannot be removed while streaming (the RIFF size at
    /// the start would change), so it is blanked in place: `EXIF` and
    /// `XMP ` chunks become `JUNK` chunks of zeros (which decoders skip, as
    /// RIFF defines) and `VP8X` stops announcing them. `left` counts the
    /// container's bytes not yet taken from the input.
    pub(super) fn webp(
        &mut self,
        left: u64,
        state: Webp,
        chunk: &mut Bytes,
        out: &mut Vec<Bytes>,
    ) -> Result<(), MediaError> {
        let before = chunk.len();
        let taken = |chunk: &Bytes| (before - chunk.len()) as u64;
        let corrupt = || MediaError::invalid("the WebP's chunk structure is corrupt");
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
}
