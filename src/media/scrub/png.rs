//! PNG: chunk by chunk, as an allow-list. The critical chunks (`IHDR`,
//! `PLTE`, `IDAT`, `IEND`) are kept, an unknown critical chunk is refused
//! (no decoder may show such a file), as is a file that does not open with
//! one 13-byte `IHDR` or whose `IEND` is not empty; of the ancillary chunks
//! only those that change how the image looks or moves are kept (see
//! [`keep_png_chunk`]), and only at the length PNG defines for each (for
//! the colour type `IHDR` gives; see [`defined_length`]), in their place
//! (before `PLTE` or `IDAT` where PNG says so) and, for those PNG allows
//! once ([`ONCE`]), the first of their kind: a chunk of any other length,
//! place or repeat is no valid PNG, decoders ignore it, and it could carry
//! anything, so it is dropped. Every kept chunk's CRC is computed over
//! what is written, never copied, so the CRC field carries nothing of the
//! caller's. `eXIf` (the first only) becomes a minimal chunk holding only
//! the orientation, and every other chunk (text, time, unknown or private
//! chunks) is dropped, as are the bytes after `IEND`. The first `iCCP`
//! chunk is rewritten: its profile name, free text, becomes
//! [`ICC_PROFILE_NAME`], and its profile (zlib-compressed) is inflated,
//! has its text blanked as every kept profile does ([`icc`]) and is
//! compressed again; a profile that does not inflate or parse, or a chunk
//! larger than [`MAX_ICC_PROFILE`], is dropped (the image then renders as
//! sRGB). Any later `iCCP` is dropped unread.
//!
//! Bounds: one chunk header (8 bytes) is held at a time, or one `eXIf`
//! chunk of at most [`MAX_PNG_EXIF`] + 12 bytes, or the one `iCCP` chunk
//! of at most [`MAX_ICC_PROFILE`] + 12 bytes with its profile inflated (at
//! most [`MAX_ICC_PROFILE`] too) and compressed again, never more than the
//! bytes received; other chunk data passes through as slices of the input.
//! CPU: a constant amount per input byte (a CRC over kept bytes, a copy
//! of held ones), a constant amount per chunk header, and, once per file,
//! one inflate, blank and deflate of at most [`MAX_ICC_PROFILE`] bytes and
//! one EXIF read of at most [`MAX_PNG_EXIF`]: no chunk's work repeats.
use bytes::Bytes;

use super::icc;
use super::stream::{Next, Stream, minimal_tiff};
use crate::media::MediaError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Png {
    step: Step,
    /// IHDR's colour type, once read (it decides `tRNS`, `bKGD` and
    /// `sBIT` lengths).
    colour: Option<u8>,
    /// The ancillary chunks PNG allows once per file already met (kept or
    /// dropped): a later one is dropped unread ([`ONCE`] gives the bits).
    seen: u16,
    /// `PLTE` or `IDAT` met: the chunks that must come before them no
    /// longer count.
    past_plte: bool,
    past_idat: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Expecting a chunk header (length and type).
    Header,
    /// Passing or dropping `remaining` bytes of a chunk: data and CRC
    /// when the CRC is passed or dropped with it (`crc` is `None`), data
    /// only when a CRC is computed (`crc` holds it so far, over the type
    /// and the data passed) and written in place of the received one.
    /// `last` for IEND.
    Body {
        remaining: u64,
        keep: bool,
        last: bool,
        crc: Option<u32>,
    },
    /// Replacing the received CRC (4 bytes) by `crc`, computed over what
    /// was written.
    Crc { crc: u32, last: bool },
    /// Collecting the `IHDR` chunk (13 data bytes plus CRC) for its
    /// colour type.
    Ihdr,
    /// Collecting an `eXIf` chunk of `len` data bytes (plus CRC).
    Exif { len: u32 },
    /// Collecting an `iCCP` chunk of `len` data bytes (plus CRC).
    Icc { len: u32 },
}

impl Png {
    /// Before the first chunk, after the signature.
    pub(super) const START: Png = Png {
        step: Step::Header,
        colour: None,
        seen: 0,
        past_plte: false,
        past_idat: false,
    };
}

/// The ancillary chunks PNG allows at most once per file; the bit of each
/// in [`Png::seen`] is its place here.
const ONCE: [&[u8; 4]; 13] = [
    b"iCCP", b"eXIf", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"bKGD", b"pHYs", b"tRNS", b"cICP",
    b"mDCV", b"cLLI", b"acTL",
];

/// The chunks that must come before `PLTE` and `IDAT` (colour space and
/// the like), and those that must come before `IDAT` only.
const BEFORE_PLTE: [&[u8; 4]; 10] = [
    b"iCCP", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"cICP", b"mDCV", b"cLLI", b"mDCv", b"cLLi",
];
const BEFORE_IDAT: [&[u8; 4]; 5] = [b"tRNS", b"bKGD", b"pHYs", b"eXIf", b"acTL"];

/// The one name of chunks the HDR drafts spelled two ways.
fn canonical(kind: &[u8; 4]) -> &[u8; 4] {
    match kind {
        b"mDCv" => b"mDCV",
        b"cLLi" => b"cLLI",
        other => other,
    }
}

/// Whether a kept ancillary chunk of `kind` may have `len` data bytes, in
/// an image of colour type `colour` (`None`: IHDR not met, so nothing
/// that depends on it is kept). Each has the length PNG defines; one of
/// any other length is no valid chunk (decoders ignore it) and could carry
/// anything after its fields.
fn defined_length(kind: &[u8; 4], len: u32, colour: Option<u8>) -> bool {
    // Samples per pixel: grey, -, RGB, palette (RGB entries), grey+alpha,
    // -, RGBA.
    let channels = |colour| match colour {
        0 => Some(1),
        2 | 3 => Some(3),
        4 => Some(2),
        6 => Some(4),
        _ => None,
    };
    match canonical(kind) {
        b"gAMA" | b"cICP" => len == 4,
        b"cHRM" => len == 32,
        b"sRGB" => len == 1,
        b"pHYs" => len == 9,
        b"cLLI" | b"acTL" => len == 8,
        b"mDCV" => len == 24,
        b"fcTL" => len == 26,
        // Sequence number, then frame data.
        b"fdAT" => len > 4,
        b"sBIT" => colour.and_then(channels) == Some(len),
        b"bKGD" => match colour {
            Some(3) => len == 1,
            Some(0 | 4) => len == 2,
            Some(2 | 6) => len == 6,
            _ => false,
        },
        b"tRNS" => match colour {
            Some(3) => (1..=256).contains(&len),
            Some(0) => len == 2,
            Some(2) => len == 6,
            _ => false,
        },
        // The critical chunks and iCCP are checked where they are read.
        _ => true,
    }
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

/// `chunk` (length, type, data) with its CRC computed and appended.
fn with_crc(mut chunk: Vec<u8>) -> Bytes {
    let crc = crc32fast::hash(&chunk[4..]);
    chunk.extend_from_slice(&crc.to_be_bytes());
    Bytes::from(chunk)
}

/// The CRC computed so far over a chunk (`crc`), carried on over `data`.
fn crc_over(crc: u32, data: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(crc);
    hasher.update(data);
    hasher.finalize()
}

impl Png {
    /// Takes the next bytes of the PNG from `chunk`; says what comes next.
    pub(super) fn push(
        mut self,
        stream: &mut Stream,
        chunk: &mut Bytes,
        out: &mut Vec<Bytes>,
    ) -> Result<Next<Png>, MediaError> {
        let corrupt = || MediaError::invalid("the PNG's chunk structure is corrupt");
        self.step = match self.step {
            Step::Header => {
                if !stream.fill(chunk, 8) {
                    return Ok(Next::Stay(self));
                }
                let (len, kind) = stream.length_and_kind();
                if len > i32::MAX as u32 || !kind.iter().all(u8::is_ascii_alphabetic) {
                    return Err(corrupt());
                }
                if kind[0].is_ascii_uppercase() && !PNG_CRITICAL.contains(&&kind) {
                    return Err(MediaError::invalid(format!(
                        "the PNG has an unknown critical chunk {:?}",
                        String::from_utf8_lossy(&kind)
                    )));
                }
                if stream.keep_metadata {
                    self.keep_all(stream, len, kind, out)
                } else {
                    self.scrub_header(stream, len, kind, out)?
                }
            }
            Step::Body {
                remaining,
                keep,
                last,
                crc,
            } => {
                let n = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                let part = chunk.split_to(n);
                let crc = crc.map(|crc| crc_over(crc, &part));
                if keep {
                    out.push(part);
                }
                let remaining = remaining - n as u64;
                match (remaining, crc) {
                    (0, Some(crc)) => Step::Crc { crc, last },
                    (0, None) if last => return Ok(Next::Trailer),
                    (0, None) => Step::Header,
                    _ => Step::Body {
                        remaining,
                        keep,
                        last,
                        crc,
                    },
                }
            }
            Step::Crc { crc, last } => {
                if !stream.fill(chunk, 4) {
                    return Ok(Next::Stay(self));
                }
                let computed = crc.to_be_bytes();
                if stream.pending.split()[..] != computed {
                    stream.changed = true;
                }
                out.push(Bytes::copy_from_slice(&computed));
                if last {
                    return Ok(Next::Trailer);
                }
                Step::Header
            }
            Step::Ihdr => {
                if !stream.fill(chunk, 8 + 13 + 4) {
                    return Ok(Next::Stay(self));
                }
                let whole = stream.pending.split();
                self.colour = Some(whole[8 + 9]);
                let rewritten = with_crc(whole[..8 + 13].to_vec());
                stream.changed |= rewritten[..] != whole[..];
                out.push(rewritten);
                Step::Header
            }
            Step::Icc { len } => {
                let len = len as usize;
                if !stream.fill(chunk, 8 + len + 4) {
                    return Ok(Next::Stay(self));
                }
                let whole = stream.pending.split().freeze();
                stream.changed = true;
                if let Some(rewritten) = scrub_iccp(&whole[8..8 + len]) {
                    out.push(rewritten);
                }
                Step::Header
            }
            Step::Exif { len } => {
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
                Step::Header
            }
        };
        Ok(Next::Stay(self))
    }

    /// The step after a chunk header when metadata is kept: everything
    /// passes as it came; the first `eXIf` is read for the orientation.
    fn keep_all(
        &mut self,
        stream: &mut Stream,
        len: u32,
        kind: [u8; 4],
        out: &mut Vec<Bytes>,
    ) -> Step {
        if &kind == b"eXIf" && len <= MAX_PNG_EXIF && self.first(&kind) {
            // The header stays pending with the data to come.
            return Step::Exif { len };
        }
        out.push(stream.pending.split().freeze());
        Step::Body {
            remaining: u64::from(len) + 4,
            keep: true,
            last: &kind == b"IEND",
            crc: None,
        }
    }

    /// Whether this is the first chunk of `kind` met, for the chunks PNG
    /// allows once ([`ONCE`]); any other kind is always first.
    fn first(&mut self, kind: &[u8; 4]) -> bool {
        let Some(bit) = ONCE.iter().position(|once| *once == canonical(kind)) else {
            return true;
        };
        let first = self.seen & (1 << bit) == 0;
        self.seen |= 1 << bit;
        first
    }

    /// The step after a chunk header when metadata is removed: the chunk
    /// is kept only if it is on the allow-list, the first of its kind where
    /// PNG allows one, in its place, and of its defined length; a kept
    /// chunk gets a CRC computed over what is written.
    fn scrub_header(
        &mut self,
        stream: &mut Stream,
        len: u32,
        kind: [u8; 4],
        out: &mut Vec<Bytes>,
    ) -> Result<Step, MediaError> {
        let corrupt = || MediaError::invalid("the PNG's chunk structure is corrupt");
        match &kind {
            // IHDR comes first, once, with its 13 bytes; IEND is empty.
            b"IHDR" if self.colour.is_none() && len == 13 => return Ok(Step::Ihdr),
            b"IEND" if len != 0 => return Err(corrupt()),
            _ if self.colour.is_none() => return Err(corrupt()),
            b"IHDR" => return Err(corrupt()),
            _ => {}
        }
        let first = self.first(&kind);
        let placed = !(BEFORE_PLTE.contains(&&kind) && (self.past_plte || self.past_idat)
            || BEFORE_IDAT.contains(&&kind) && self.past_idat);
        match &kind {
            b"PLTE" => self.past_plte = true,
            b"IDAT" => self.past_idat = true,
            _ => {}
        }
        let wanted = first && placed;
        if &kind == b"iCCP" && wanted && len as usize <= MAX_ICC_PROFILE {
            // The header stays pending with the data to come.
            return Ok(Step::Icc { len });
        }
        if &kind == b"eXIf" && wanted && len <= MAX_PNG_EXIF {
            return Ok(Step::Exif { len });
        }
        let keep = wanted
            && keep_png_chunk(&kind)
            && &kind != b"iCCP"
            && defined_length(&kind, len, self.colour);
        let header = stream.pending.split().freeze();
        let last = &kind == b"IEND";
        if !keep {
            stream.changed = true;
            return Ok(Step::Body {
                remaining: u64::from(len) + 4,
                keep,
                last,
                crc: None,
            });
        }
        let crc = crc_over(0, &header[4..]);
        out.push(header);
        Ok(Step::Body {
            remaining: u64::from(len),
            keep,
            last,
            crc: Some(crc),
        })
    }
}
