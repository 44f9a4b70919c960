//! PNG: chunk by chunk, as an allow-list. The critical chunks (`IHDR`,
//! `PLTE`, `IDAT`, `IEND`) are kept, an unknown critical chunk is refused
//! (no decoder may show such a file), and of the ancillary chunks only those
//! that change how the image looks or moves are kept (see
//! [`keep_png_chunk`]); `eXIf` becomes a minimal chunk holding only the
//! orientation, and every other chunk (text, time, unknown or private
//! chunks) is dropped, as are the bytes after `IEND`. The profile name of
//! `iCCP`, free text, becomes [`ICC_PROFILE_NAME`] (the chunk's length and
//! CRC follow; its profile passes as it is).
//!
//! Bounds: one chunk header (8 bytes) is held at a time, or one `eXIf`
//! chunk of at most [`MAX_PNG_EXIF`] + 12 bytes, or an `iCCP` header with
//! its name (at most 88 bytes), never more than the bytes
//! received; chunk data passes through as slices of the input, and the
//! only allocation is the fixed 38-byte replacement `eXIf` chunk. Work is
//! linear in the input.
use bytes::Bytes;

use super::stream::{Next, Stream, minimal_tiff};
use crate::media::MediaError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Png {
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
    /// Collecting an `iCCP` chunk's header and profile name (`len` data
    /// bytes in all).
    IccName { len: u32 },
    /// Passing `remaining` bytes of an `iCCP` chunk's profile, then
    /// replacing its CRC by `crc` (of the chunk as rewritten) finished.
    Icc { remaining: u64, crc: u32 },
}

/// The name every stored `iCCP` profile gets (the name is free text).
pub(super) const ICC_PROFILE_NAME: &[u8] = b"ICC profile";

/// Longest `iCCP` profile name and its NUL.
const MAX_ICC_NAME: usize = 80;

pub(super) const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

/// Largest PNG `eXIf` chunk read for its orientation; larger ones are
/// dropped unread.
const MAX_PNG_EXIF: u32 = 1024 * 1024;

/// The critical chunks PNG defines; a decoder must refuse any other.
const PNG_CRITICAL: [&[u8; 4]; 4] = [b"IHDR", b"PLTE", b"IDAT", b"IEND"];

/// The ancillary chunks that change how the image looks or moves:
/// transparency, colour space and gamma, significant bits, background and
/// pixel aspect, HDR (in both spellings the drafts used) and APNG animation.
/// None of them carries free text.
fn keep_png_chunk(kind: &[u8; 4]) -> bool {
    PNG_CRITICAL.contains(&kind)
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

impl Png {
    /// Takes the next bytes of the PNG from `chunk`; says what comes next.
    pub(super) fn push(
        self,
        stream: &mut Stream,
        chunk: &mut Bytes,
        out: &mut Vec<Bytes>,
    ) -> Result<Next<Png>, MediaError> {
        let next = match self {
            Png::Header => {
                if !stream.fill(chunk, 8) {
                    return Ok(Next::Stay(self));
                }
                let (len, kind) = stream.length_and_kind();
                if len > i32::MAX as u32 || !kind.iter().all(u8::is_ascii_alphabetic) {
                    return Err(MediaError::invalid("the PNG's chunk structure is corrupt"));
                }
                if kind[0].is_ascii_uppercase() && !PNG_CRITICAL.contains(&&kind) {
                    return Err(MediaError::invalid(format!(
                        "the PNG has an unknown critical chunk {:?}",
                        String::from_utf8_lossy(&kind)
                    )));
                }
                if &kind == b"iCCP" && !stream.keep_metadata {
                    return Ok(Next::Stay(Png::IccName { len }));
                }
                if &kind == b"eXIf" && len <= MAX_PNG_EXIF {
                    // The header stays pending with the data to come.
                    return Ok(Next::Stay(Png::Exif { len }));
                }
                let keep = stream.keep_metadata || keep_png_chunk(&kind);
                let header = stream.pending.split().freeze();
                if keep {
                    out.push(header);
                } else {
                    stream.changed = true;
                }
                Next::Stay(Png::Body {
                    remaining: u64::from(len) + 4,
                    keep,
                    last: &kind == b"IEND",
                })
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
                match (remaining, last) {
                    (0, true) => Next::Trailer,
                    (0, false) => Next::Stay(Png::Header),
                    _ => Next::Stay(Png::Body {
                        remaining,
                        keep,
                        last,
                    }),
                }
            }
            Png::IccName { len } => {
                let want = 8 + MAX_ICC_NAME.min(len as usize);
                if !stream.fill(chunk, want) {
                    return Ok(Next::Stay(self));
                }
                let held = stream.pending.split().freeze();
                let nul = held[8..].iter().position(|&b| b == 0).ok_or_else(|| {
                    MediaError::invalid("the PNG's iCCP chunk has no profile name")
                })?;
                // The name goes; what follows it (compression method,
                // profile) stays.
                let after = held.slice(8 + nul..);
                let new_len = len as usize - nul + ICC_PROFILE_NAME.len();
                let mut head = Vec::with_capacity(8 + ICC_PROFILE_NAME.len());
                head.extend_from_slice(&(new_len as u32).to_be_bytes());
                head.extend_from_slice(b"iCCP");
                head.extend_from_slice(ICC_PROFILE_NAME);
                let mut crc = crc32fast::Hasher::new();
                crc.update(&head[4..]);
                crc.update(&after);
                stream.changed = true;
                out.push(Bytes::from(head));
                out.push(after);
                Next::Stay(Png::Icc {
                    remaining: u64::from(len) - (held.len() - 8) as u64 + 4,
                    crc: crc.finalize(),
                })
            }
            Png::Icc { remaining, crc } => {
                // The profile's bytes, then its old CRC, dropped.
                let n = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                let part = chunk.split_to(n);
                let profile = usize::try_from(remaining.saturating_sub(4))
                    .unwrap_or(usize::MAX)
                    .min(n);
                let mut hasher = crc32fast::Hasher::new_with_initial(crc);
                hasher.update(&part[..profile]);
                let crc = hasher.finalize();
                out.push(part.slice(..profile));
                let remaining = remaining - n as u64;
                Next::Stay(if remaining == 0 {
                    out.push(Bytes::copy_from_slice(&crc.to_be_bytes()));
                    Png::Header
                } else {
                    Png::Icc { remaining, crc }
                })
            }
            Png::Exif { len } => {
                let len = len as usize;
                if !stream.fill(chunk, 8 + len + 4) {
                    return Ok(Next::Stay(self));
                }
                let whole = stream.pending.split().freeze();
                stream.note_orientation(&whole[8..8 + len]);
                if stream.keep_metadata {
                    out.push(whole);
                } else {
                    stream.changed = true;
                    if stream.orientation != 1 {
                        out.push(minimal_png_exif(stream.orientation));
                    }
                }
                Next::Stay(Png::Header)
            }
        };
        Ok(next)
    }
}
