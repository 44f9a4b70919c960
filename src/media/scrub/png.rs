//! PNG: chunk by chunk, as an allow-list. The critical chunks (`IHDR`,
//! `PLTE`, `IDAT`, `IEND`) are kept, an unknown critical chunk is refused
//! (no decoder may show such a file), and of the ancillary chunks only those
//! that change how the image looks or moves are kept (see
//! [`keep_png_chunk`]); `eXIf` becomes a minimal chunk holding only the
//! orientation, and every other chunk (text, time, unknown or private
//! chunks) is dropped, as are the bytes after `IEND`. An `iCCP` chunk is
//! rewritten: its profile name, free text, becomes [`ICC_PROFILE_NAME`],
//! and its profile (zlib-compressed) is inflated, has its text blanked as
//! every kept profile does ([`icc`]) and is compressed again; a profile
//! that does not inflate or parse, or a chunk larger than
//! [`MAX_ICC_PROFILE`], is dropped (the image then renders as sRGB).
//!
//! Bounds: one chunk header (8 bytes) is held at a time, or one `eXIf`
//! chunk of at most [`MAX_PNG_EXIF`] + 12 bytes, or one `iCCP` chunk of at
//! most [`MAX_ICC_PROFILE`] + 12 bytes with its profile inflated (at most
//! [`MAX_ICC_PROFILE`] too) and compressed again, never more than the
//! bytes received; other chunk data passes through as slices of the input.
//! Work is linear in the input.
use bytes::Bytes;

use super::icc;
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
    /// Collecting an `iCCP` chunk of `len` data bytes (plus CRC).
    Icc { len: u32 },
}

/// The name every stored `iCCP` profile gets (the name is free text).
pub(super) const ICC_PROFILE_NAME: &[u8] = b"ICC profile";

/// Longest `iCCP` profile name and its NUL.
const MAX_ICC_NAME: usize = 80;

/// Largest `iCCP` chunk read, and largest profile inflated from one: the
/// limit of the profiles carried into variants (larger ones are dropped).
const MAX_ICC_PROFILE: usize = crate::media::variants::MAX_ICC_PROFILE;

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

/// The `iCCP` chunk stored for the data of one (`data`: name, NUL,
/// compression method, zlib stream): named [`ICC_PROFILE_NAME`], its
/// profile's text blanked; `None` (dropped) when the profile does not
/// inflate within [`MAX_ICC_PROFILE`] or does not parse.
fn scrub_iccp(data: &[u8]) -> Option<Bytes> {
    let nul = data.iter().take(MAX_ICC_NAME).position(|&b| b == 0)?;
    let (&method, compressed) = data[nul + 1..].split_first()?;
    if method != 0 {
        return None;
    }
    let mut profile =
        miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(compressed, MAX_ICC_PROFILE)
            .ok()?;
    icc::blank_profile_text(&mut profile).ok()?;
    let compressed = miniz_oxide::deflate::compress_to_vec_zlib(&profile, 6);
    let len = ICC_PROFILE_NAME.len() + 2 + compressed.len();
    let mut chunk = Vec::with_capacity(12 + len);
    chunk.extend_from_slice(&(len as u32).to_be_bytes());
    chunk.extend_from_slice(b"iCCP");
    chunk.extend_from_slice(ICC_PROFILE_NAME);
    chunk.extend_from_slice(&[0, 0]);
    chunk.extend_from_slice(&compressed);
    let crc = crc32fast::hash(&chunk[4..]);
    chunk.extend_from_slice(&crc.to_be_bytes());
    Some(Bytes::from(chunk))
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
                if &kind == b"iCCP" && !stream.keep_metadata && len as usize <= MAX_ICC_PROFILE {
                    // The header stays pending with the data to come.
                    return Ok(Next::Stay(Png::Icc { len }));
                }
                if &kind == b"eXIf" && len <= MAX_PNG_EXIF {
                    // The header stays pending with the data to come.
                    return Ok(Next::Stay(Png::Exif { len }));
                }
                let keep = stream.keep_metadata || (keep_png_chunk(&kind) && &kind != b"iCCP");
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
            Png::Icc { len } => {
                let len = len as usize;
                if !stream.fill(chunk, 8 + len + 4) {
                    return Ok(Next::Stay(self));
                }
                let whole = stream.pending.split().freeze();
                stream.changed = true;
                if let Some(rewritten) = scrub_iccp(&whole[8..8 + len]) {
                    out.push(rewritten);
                }
                Next::Stay(Png::Header)
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
