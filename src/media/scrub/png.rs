//! PNG: chunk by chunk, as an allow-list. The critical chunks (`IHDR`,
//! `PLTE`, `IDAT`, `IEND`) are kept, an unknown critical chunk is refused
//! (no decoder may show such a file), as is a file that does not open with
//! one 13-byte `IHDR` of a size, colour type and bit depth PNG allows, or
//! whose `IEND` is not empty. Of the image data only its zlib stream is
//! kept: the stream is followed across the `IDAT` chunks (inflated, the
//! output thrown away; see [`ImageData`]) and the bytes after its end, in
//! the same chunk or in later ones, are dropped (decoders stop there); a
//! stream that does not inflate, inflates to more than the filtered
//! rows `IHDR` declares (Adam7 passes counted), or ends with an Adler-32
//! other than its data's (libpng refuses it too), is refused. `PLTE` is kept
//! only where it is drawn: in a palette image, before `IDAT`, cut to the
//! entries its bit depth can index (it is refused there when missing,
//! repeated or not of whole entries, and dropped from grey and RGB
//! images). APNG chunks are kept only in their place: `acTL` before
//! `IDAT`, `fcTL` after it and no more of them than it announces (one
//! before `IDAT`, the default image's), `fdAT` only after an `fcTL` that
//! starts a frame after the default image; each frame's data end with
//! its zlib stream as the image's do (within the rows its `fcTL`
//! declares), and kept `fcTL` and `fdAT` chunks are numbered afresh since
//! some are dropped. Image data pass as they come, each chunk at its
//! length: bytes after the stream's end in the chunk where it ends are
//! zeroed, and later data chunks dropped. Of the ancillary chunks
//! only those that change how the image looks or moves are kept (see
//! [`keep_png_chunk`]), and only at the length PNG defines for each (for
//! the colour type `IHDR` gives; see [`defined_length`]), in their place
//! (before `PLTE` or `IDAT` where PNG says so) and, for those PNG allows
//! once ([`ONCE`]), the first of their kind, with fields in their range
//! (`sBIT` within the bit depth, a palette's `tRNS` no longer than the
//! palette): a chunk of any other length, place, repeat or value is no
//! valid PNG, decoders ignore it, and it could carry anything, so it is
//! dropped. Every kept chunk's CRC is computed over
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
//! bytes received, or the inflater's state that image data passes
//! through (its 32 KiB window and tables, 43 KiB, and a 32 KiB buffer its
//! output is thrown into), or a short chunk whose fields are
//! checked (`PLTE`, at most 780 bytes); other chunk data passes through as
//! slices of the input. CPU: a constant amount per input byte (a CRC over
//! kept bytes, a copy of held ones and, for image data, inflating it: at
//! most 1 032 bytes of output per input byte, deflate's largest ratio,
//! never more in all than `IHDR` (or a frame's `fcTL`) declares, and
//! over an APNG's image and frames together the rows of no more pixels
//! than the scrubber's bound ([`Png::bounded`]: `--max-image-pixels`; a
//! frame past it is refused at its `fcTL`, before its data): a
//! 10.7 MB PNG of a 12-megapixel photo took 0.3 s in a debug build, a
//! 390 KB stream of 400 MB of zeros 0.09 s), a constant amount per chunk
//! header, and, once per file,
//! one inflate, blank and deflate of at most [`MAX_ICC_PROFILE`] bytes and
//! one EXIF read of at most [`MAX_PNG_EXIF`]: no chunk's work repeats.
use bytes::Bytes;
use miniz_oxide::inflate::stream::{InflateState, MinReset, inflate};
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};

use super::icc;
use super::stream::{Next, Stream, minimal_tiff};
use crate::media::MediaError;

pub(super) struct Png {
    step: Step,
    /// IHDR's colour type, once read (it decides `tRNS`, `bKGD` and
    /// `sBIT` lengths).
    colour: Option<u8>,
    /// IHDR's bit depth, once read.
    depth: u8,
    /// The length of the filtered image data IHDR declares (every row of
    /// every interlace pass with its filter byte), once read; its bits per
    /// pixel and interlace (which also measure each APNG frame).
    image_len: u64,
    bits: u8,
    interlaced: bool,
    /// Entries of the kept `PLTE`, once met (`Some(0)` when one was met
    /// and dropped: it is not that of a palette image).
    palette: Option<u16>,
    /// APNG: the frames `acTL` announces (0 when none was kept), the
    /// `fcTL` chunks kept, and the next sequence number written (kept
    /// `fcTL` and `fdAT` chunks are numbered afresh, since chunks are
    /// dropped).
    frames: u32,
    frame_controls: u32,
    sequence: u32,
    /// Whether the last `fcTL` was kept and started a frame after the
    /// default image: its `fdAT` data follow `frame` (made once, restarted
    /// for each frame), as `IDAT` data follow the image's stream, within
    /// the length the frame's rows take.
    frame_open: bool,
    frame: Option<Box<ImageData>>,
    frame_len: u64,
    /// The image data's zlib stream, followed once the first `IDAT` is met.
    image: Option<Box<ImageData>>,
    /// The ancillary chunks PNG allows once per file already met (kept or
    /// dropped): a later one is dropped unread ([`ONCE`] gives the bits).
    seen: u16,
    /// `PLTE` or `IDAT` met: the chunks that must come before them no
    /// longer count.
    past_plte: bool,
    past_idat: bool,
    /// Pixels of the image and the frames whose data is followed so far
    /// (IHDR's, then each kept `fcTL` after the image data's), and the
    /// most allowed: every frame's stream is inflated, so their sum
    /// bounds the work as `--max-image-pixels` bounds a still's.
    pixels: u64,
    max_pixels: u64,
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
    /// Collecting a short chunk whose fields decide whether it is kept
    /// (`PLTE`, a palette's `tRNS`, `sBIT`, `acTL`, `fcTL`): `len` data
    /// bytes plus CRC.
    Fields { len: u32 },
    /// Following `remaining` bytes of an `IDAT` chunk's data (or, `frame`,
    /// an `fdAT` chunk's after its sequence number) through the zlib
    /// stream (see [`ImageData`]), written as they pass, those after the
    /// stream's end zeroed (the chunk keeps its length); `whole` while
    /// written as it came (nothing zeroed, its number unchanged); `crc`
    /// over what was written.
    Data {
        remaining: u32,
        whole: bool,
        frame: bool,
        crc: u32,
    },
    /// The received CRC of an `IDAT` or `fdAT` chunk, replaced by the one
    /// computed over what was written.
    DataCrc { whole: bool, crc: u32 },
    /// Reading the sequence number of an `fdAT` chunk of `len` data bytes.
    Sequence { len: u32 },
}

impl Png {
    /// Before the first chunk, after the signature.
    pub(super) const START: Png = Png {
        step: Step::Header,
        colour: None,
        depth: 0,
        image_len: 0,
        bits: 0,
        interlaced: false,
        palette: None,
        frames: 0,
        frame_controls: 0,
        sequence: 0,
        frame_open: false,
        frame: None,
        frame_len: 0,
        image: None,
        seen: 0,
        past_plte: false,
        past_idat: false,
        pixels: 0,
        max_pixels: u64::MAX,
    };

    /// Before the first chunk, following at most `max_pixels` pixels of
    /// image data over the image and all its frames.
    pub(super) fn bounded(max_pixels: u64) -> Png {
        Png {
            max_pixels,
            ..Png::START
        }
    }
}

/// The image data's zlib stream as it crosses the `IDAT` chunks: inflated
/// with the output thrown away, only to learn where the stream ends (the
/// bytes after it are no image data: decoders stop there) and how much it
/// holds (more than IHDR declares is no valid image).
struct ImageData {
    inflater: Box<InflateState>,
    /// Where inflated bytes go, to be thrown away.
    scratch: Box<[u8; 32 * 1024]>,
    /// Bytes the stream has inflated to so far.
    inflated: u64,
    /// The stream has ended: later image data is dropped.
    ended: bool,
    /// Adler-32 of what the stream inflated to so far.
    adler: simd_adler32::Adler32,
    /// The last four bytes of the stream read so far: once it ends, its
    /// Adler-32 as written.
    tail: [u8; 4],
}

impl ImageData {
    fn new() -> Box<Self> {
        Box::new(Self {
            // The Adler-32 checksum is compared here, where the output
            // is seen: a stream whose checksum is wrong is refused (as
            // libpng refuses it), so its four bytes carry nothing else.
            inflater: InflateState::new_boxed(DataFormat::ZLibIgnoreChecksum),
            scratch: Box::new([0; 32 * 1024]),
            inflated: 0,
            ended: false,
            adler: simd_adler32::Adler32::new(),
            tail: [0; 4],
        })
    }

    /// Ready for a new stream (an APNG frame's). What the inflater held
    /// of the last one stays: its output is never read.
    fn restart(&mut self) {
        self.inflater.reset_as(MinReset);
        self.inflated = 0;
        self.ended = false;
        self.adler = simd_adler32::Adler32::new();
        self.tail = [0; 4];
    }

    /// Follows the stream over `data`; returns how many of its bytes are
    /// the stream's (all of them unless the stream ends inside). Refuses
    /// a stream that does not inflate, inflates to more than `limit`, or
    /// ends with an Adler-32 other than its data's.
    fn follow(&mut self, data: &[u8], limit: u64) -> Result<usize, MediaError> {
        let was_ended = self.ended;
        let used = self.inflate(data, limit)?;
        if self.ended && !was_ended && self.adler.finish().to_be_bytes() != self.tail {
            return Err(MediaError::invalid(
                "the PNG's image data fails its Adler-32 checksum",
            ));
        }
        Ok(used)
    }

    fn inflate(&mut self, mut data: &[u8], limit: u64) -> Result<usize, MediaError> {
        let mut used = 0;
        while !data.is_empty() && !self.ended {
            let result = inflate(
                &mut self.inflater,
                data,
                &mut self.scratch[..],
                MZFlush::None,
            );
            self.inflated += result.bytes_written as u64;
            if self.inflated > limit {
                return Err(MediaError::invalid(
                    "the PNG's image data is longer than its IHDR declares",
                ));
            }
            self.adler.write(&self.scratch[..result.bytes_written]);
            let consumed = &data[..result.bytes_consumed];
            let keep = 4 - consumed.len().min(4);
            self.tail.copy_within(4 - keep.., 0);
            self.tail[keep..].copy_from_slice(&consumed[consumed.len() - (4 - keep)..]);
            used += result.bytes_consumed;
            data = &data[result.bytes_consumed..];
            match result.status {
                Ok(MZStatus::StreamEnd) => self.ended = true,
                Ok(_) if result.bytes_consumed + result.bytes_written > 0 => {}
                // Nothing moved: the stream wants more input.
                Ok(_) | Err(MZError::Buf) => break,
                Err(_) => {
                    return Err(MediaError::invalid("the PNG's image data is corrupt"));
                }
            }
        }
        Ok(used)
    }
}

/// The length of the filtered image data of an image `width` by
/// `height` of `bits` bits per pixel, `interlaced` (Adam7) or not: each
/// row (of each pass, where a pass has any pixel) is a filter byte and
/// its pixels' bytes. `u64::MAX` when it does not fit.
fn image_data_len(width: u32, height: u32, bits: u8, interlaced: bool) -> u64 {
    let rows = |width: u64, height: u64| -> u128 {
        if width == 0 || height == 0 {
            return 0;
        }
        let row = (u128::from(width) * u128::from(bits)).div_ceil(8);
        u128::from(height) * (1 + row)
    };
    let (width, height) = (u64::from(width), u64::from(height));
    let total = if interlaced {
        // Adam7: each pass's first column and row, and its steps.
        [
            (0, 0, 8, 8),
            (4, 0, 8, 8),
            (0, 4, 4, 8),
            (2, 0, 4, 4),
            (0, 2, 2, 4),
            (1, 0, 2, 2),
            (0, 1, 1, 2),
        ]
        .iter()
        .map(|&(x, y, dx, dy)| {
            rows(
                width.saturating_sub(x).div_ceil(dx),
                height.saturating_sub(y).div_ceil(dy),
            )
        })
        .sum()
    } else {
        rows(width, height)
    };
    u64::try_from(total).unwrap_or(u64::MAX)
}

/// Bits per pixel for an IHDR's colour type and bit depth, if PNG allows
/// that pair.
fn bits_per_pixel(colour: u8, depth: u8) -> Option<u8> {
    let channels = match (colour, depth) {
        (0, 1 | 2 | 4 | 8 | 16) | (3, 1 | 2 | 4 | 8) => 1,
        (4, 8 | 16) => 2,
        (2, 8 | 16) => 3,
        (6, 8 | 16) => 4,
        _ => return None,
    };
    Some(channels * depth)
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
const MAX_ICC_PROFILE: usize = crate::media::limits::MAX_ICC_PROFILE;

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

/// The step that drops the data (`len` bytes) and CRC of a chunk whose
/// header was read: the zlib stream it would carry on has ended.
fn dropped(stream: &mut Stream, len: u32) -> Step {
    stream.changed = true;
    Step::Body {
        remaining: u64::from(len) + 4,
        keep: false,
        last: false,
        crc: None,
    }
}

/// Writes the CRC computed over a chunk in place of the 4 received bytes
/// pending; whether they were the same.
fn written_crc(stream: &mut Stream, crc: u32, out: &mut Vec<Bytes>) -> bool {
    let computed = crc.to_be_bytes();
    let same = stream.pending.split()[..] == computed;
    out.push(Bytes::copy_from_slice(&computed));
    same
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
                if !written_crc(stream, crc, out) {
                    stream.changed = true;
                }
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
                let field = |at: usize| {
                    u32::from_be_bytes([whole[at], whole[at + 1], whole[at + 2], whole[at + 3]])
                };
                let (width, height) = (field(8), field(12));
                let (depth, colour) = (whole[8 + 8], whole[8 + 9]);
                let (compression, filter, interlace) =
                    (whole[8 + 10], whole[8 + 11], whole[8 + 12]);
                let bits = bits_per_pixel(colour, depth);
                let (Some(bits), 1..0x8000_0000, 1..0x8000_0000, 0, 0, 0 | 1) =
                    (bits, width, height, compression, filter, interlace)
                else {
                    return Err(MediaError::invalid("the PNG's IHDR chunk is corrupt"));
                };
                self.colour = Some(colour);
                self.depth = depth;
                self.pixels = u64::from(width) * u64::from(height);
                self.image_len = image_data_len(width, height, bits, interlace == 1);
                self.bits = bits;
                self.interlaced = interlace == 1;
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
            Step::Fields { len } => {
                let len = len as usize;
                if !stream.fill(chunk, 8 + len + 4) {
                    return Ok(Next::Stay(self));
                }
                let whole = stream.pending.split().freeze();
                let kind = [whole[4], whole[5], whole[6], whole[7]];
                match self.fields(kind, &whole[8..8 + len])? {
                    Some(data) => {
                        let mut rewritten = Vec::with_capacity(12 + data.len());
                        rewritten.extend_from_slice(&(data.len() as u32).to_be_bytes());
                        rewritten.extend_from_slice(&kind);
                        rewritten.extend_from_slice(data);
                        if &kind == b"fcTL" {
                            rewritten[8..12].copy_from_slice(&self.next_sequence());
                        }
                        let rewritten = with_crc(rewritten);
                        stream.changed |= rewritten[..] != whole[..];
                        out.push(rewritten);
                    }
                    None => stream.changed = true,
                }
                Step::Header
            }
            Step::Sequence { len } => {
                if !stream.fill(chunk, 4) {
                    return Ok(Next::Stay(self));
                }
                let received = stream.pending.split();
                let number = self.next_sequence();
                let mut header = Vec::with_capacity(12);
                header.extend_from_slice(&len.to_be_bytes());
                header.extend_from_slice(b"fdAT");
                header.extend_from_slice(&number);
                let crc = crc_over(0, &header[4..]);
                out.push(Bytes::from(header));
                Step::Data {
                    remaining: len - 4,
                    whole: received[..] == number,
                    frame: true,
                    crc,
                }
            }
            Step::Data {
                remaining,
                whole,
                frame,
                crc,
            } => {
                let (data, limit) = self.data(frame);
                let n = (remaining as usize).min(chunk.len());
                let part = chunk.split_to(n);
                let used = data.follow(&part, limit)?;
                let written = if used == n {
                    part
                } else {
                    // Past the stream's end: no image data, and the
                    // chunk's length is already written.
                    let mut zeroed = part.to_vec();
                    zeroed[used..].fill(0);
                    Bytes::from(zeroed)
                };
                let crc = crc_over(crc, &written);
                out.push(written);
                let whole = whole && used == n;
                let remaining = remaining - n as u32;
                if remaining == 0 {
                    Step::DataCrc { whole, crc }
                } else {
                    Step::Data {
                        remaining,
                        whole,
                        frame,
                        crc,
                    }
                }
            }
            Step::DataCrc { whole, crc } => {
                if !stream.fill(chunk, 4) {
                    return Ok(Next::Stay(self));
                }
                let same = written_crc(stream, crc, out);
                stream.changed |= !whole || !same;
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
        let palette_image = self.colour == Some(3);
        let mut wanted = first && placed;
        match &kind {
            b"IDAT" => {
                self.past_idat = true;
                return self.idat_header(stream, len, out);
            }
            b"PLTE" => {
                self.past_plte = true;
                // A palette image's one PLTE, before its image data, of
                // whole entries; any other is drawn by nothing (PNG forbids
                // it in grey images; an RGB image's suggests a palette).
                wanted = palette_image && !self.past_idat;
                if wanted
                    && (self.palette.is_some() || len == 0 || !len.is_multiple_of(3) || len > 768)
                {
                    return Err(MediaError::invalid("the PNG's PLTE chunk is corrupt"));
                }
            }
            b"fdAT" => wanted &= self.frame_open,
            _ => {}
        }
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
        if &kind == b"fcTL" && !keep {
            // The frame it would start has none of its data kept.
            self.frame_open = false;
        }
        if &kind == b"fdAT" && keep {
            stream.pending.clear();
            if self.data(true).0.ended {
                return Ok(dropped(stream, len));
            }
            return Ok(Step::Sequence { len });
        }
        let checked = matches!(&kind, b"PLTE" | b"sBIT" | b"acTL" | b"fcTL")
            || &kind == b"tRNS" && palette_image;
        if keep && checked {
            // The header stays pending with the data to come.
            return Ok(Step::Fields { len });
        }
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

    /// The step after an `IDAT` chunk header when metadata is removed: its
    /// data is followed through the image's zlib stream as it is written;
    /// an empty `IDAT`, or one after the stream's end, is dropped.
    fn idat_header(
        &mut self,
        stream: &mut Stream,
        len: u32,
        out: &mut Vec<Bytes>,
    ) -> Result<Step, MediaError> {
        let header = stream.pending.split().freeze();
        if self.colour == Some(3) && self.palette.is_none() {
            return Err(MediaError::invalid(
                "the PNG is a palette image without a PLTE chunk before its image data",
            ));
        }
        let image = self.image.get_or_insert_with(ImageData::new);
        if image.ended || len == 0 {
            return Ok(dropped(stream, len));
        }
        let crc = crc_over(0, &header[4..]);
        out.push(header);
        Ok(Step::Data {
            remaining: len,
            whole: true,
            frame: false,
            crc,
        })
    }

    /// The stream `IDAT` (or, `frame`, `fdAT`) data follow, and the length
    /// its rows take.
    fn data(&mut self, frame: bool) -> (&mut ImageData, u64) {
        let (data, limit) = match frame {
            true => (&mut self.frame, self.frame_len),
            false => (&mut self.image, self.image_len),
        };
        (data.as_mut().expect("image data follows its stream"), limit)
    }

    /// The sequence number of the next `fcTL` or `fdAT` written.
    fn next_sequence(&mut self) -> [u8; 4] {
        self.sequence += 1;
        (self.sequence - 1).to_be_bytes()
    }

    /// The data kept of a chunk whose fields decide it ([`Step::Fields`]),
    /// or `None` when it is dropped: a palette past the entries the bit
    /// depth can index is cut to them; a palette's transparency with more
    /// entries than the palette, significant bits of none or more than the
    /// bit depth, an animation of no frames, and a frame control past the
    /// frames announced (or a second one before the image data) are
    /// dropped. A frame that takes the pixels followed past the bound
    /// ([`Png::bounded`]) is refused.
    fn fields<'a>(
        &mut self,
        kind: [u8; 4],
        data: &'a [u8],
    ) -> Result<Option<&'a [u8]>, MediaError> {
        let field =
            |at: usize| u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        match &kind {
            b"PLTE" => {
                let entries = (data.len() / 3).min(1 << self.depth);
                self.palette = Some(entries as u16);
                Ok(Some(&data[..entries * 3]))
            }
            b"tRNS" => Ok((data.len() <= usize::from(self.palette.unwrap_or(0))).then_some(data)),
            b"sBIT" => {
                let depth = if self.colour == Some(3) {
                    8
                } else {
                    self.depth
                };
                Ok(data
                    .iter()
                    .all(|bits| (1..=depth).contains(bits))
                    .then_some(data))
            }
            b"acTL" => {
                self.frames = field(0);
                Ok((self.frames > 0).then_some(data))
            }
            b"fcTL" => {
                let room = self.frame_controls < self.frames
                    && (self.past_idat || self.frame_controls == 0);
                self.frame_controls += u32::from(room);
                self.frame_open = room && self.past_idat;
                if self.frame_open {
                    let (width, height) = (field(4), field(8));
                    self.pixels += u64::from(width) * u64::from(height);
                    if self.pixels > self.max_pixels {
                        return Err(MediaError::invalid(format!(
                            "the APNG's frames hold more than {} pixels in all \
                             (--max-image-pixels)",
                            self.max_pixels
                        )));
                    }
                    self.frame_len = image_data_len(width, height, self.bits, self.interlaced);
                    self.frame.get_or_insert_with(ImageData::new).restart();
                }
                Ok(room.then_some(data))
            }
            _ => Ok(Some(data)),
        }
    }
}

#[cfg(test)]
mod attack5 {
    //! Crafted PNGs that hid a marker where the scrubber kept what it did
    //! not know: bytes after the image data's zlib stream, APNG chunks out
    //! of their place, palettes no image draws, fields past their range.
    use super::image_data_len;
    use crate::fixtures::png_chunk_bytes as chunk;
    use crate::media::MediaError;
    use crate::media::scrub::tests::{contains, scrub};

    use super::super::tests::PERSONAL as MARKER;
    const W: u32 = 16;
    const H: u32 = 16;

    fn ihdr(colour: u8, depth: u8, interlace: u8) -> Vec<u8> {
        let mut data = Vec::new();
        data.extend_from_slice(&W.to_be_bytes());
        data.extend_from_slice(&H.to_be_bytes());
        data.extend_from_slice(&[depth, colour, 0, 0, interlace]);
        chunk(b"IHDR", &data)
    }

    /// Filtered rows (filter byte 0) of a `W` × `H` 8-bit image with
    /// `channels` samples per pixel; palette indices stay below 4.
    fn raw(channels: u32, palette: bool) -> Vec<u8> {
        let mut rows = Vec::new();
        for y in 0..H {
            rows.push(0);
            for x in 0..W * channels {
                rows.push(if palette {
                    (x % 4) as u8
                } else {
                    (x * 7 + y * 13) as u8
                });
            }
        }
        rows
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        miniz_oxide::deflate::compress_to_vec_zlib(data, 6)
    }

    fn png(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut file = super::PNG_SIGNATURE.to_vec();
        for chunk in chunks {
            file.extend_from_slice(chunk);
        }
        file.extend(chunk(b"IEND", &[]));
        file
    }

    fn pixels(file: &[u8]) -> image::RgbaImage {
        image::load_from_memory(file).unwrap().to_rgba8()
    }

    /// `file` scrubbed (in pieces of several sizes, all alike) without
    /// the marker, decoding to `base`'s pixels.
    fn scrubbed_like(file: &[u8], base: &[u8]) -> Vec<u8> {
        let (out, _) = scrub(file, 1 << 20, false).unwrap();
        for piece in [1, 7, 4096] {
            assert_eq!(scrub(file, piece, false).unwrap().0, out);
        }
        assert!(!contains(&out, MARKER));
        assert_eq!(pixels(&out), pixels(base));
        out
    }

    fn refused(file: &[u8]) -> String {
        match scrub(file, 4096, false) {
            Err(MediaError::Invalid(message)) => message,
            other => panic!("not refused: {:?}", other.map(|(out, _)| out.len())),
        }
    }

    fn rgb() -> (Vec<u8>, Vec<u8>) {
        let ihdr = ihdr(2, 8, 0);
        let idat = chunk(b"IDAT", &zlib(&raw(3, false)));
        (ihdr.clone(), png(&[ihdr, idat]))
    }

    #[test]
    fn bytes_after_the_image_data_stream_are_dropped() {
        let (ihdr, base) = rgb();
        let stream = zlib(&raw(3, false));
        let big = MARKER.repeat(3000);
        let tail = [stream.as_slice(), &big].concat();
        let cases = [
            // In the same chunk, after the stream's end.
            png(&[ihdr.clone(), chunk(b"IDAT", &tail)]),
            // In an IDAT of its own.
            png(&[ihdr.clone(), chunk(b"IDAT", &stream), chunk(b"IDAT", &big)]),
            // After an empty IDAT.
            png(&[
                ihdr.clone(),
                chunk(b"IDAT", &stream),
                chunk(b"IDAT", &[]),
                chunk(b"IDAT", MARKER),
            ]),
            // The stream split at each byte, then the marker.
            png(&[ihdr.clone()]
                .into_iter()
                .chain(tail.iter().map(|byte| chunk(b"IDAT", &[*byte])))
                .collect::<Vec<_>>()),
        ];
        for file in cases {
            scrubbed_like(&file, &base);
        }
    }

    #[test]
    fn a_stream_whose_adler32_is_not_its_data_is_refused_however_it_is_cut() {
        let (ihdr, base) = rgb();
        let stream = zlib(&raw(3, false));
        let mut wrong = stream.clone();
        let at = wrong.len() - 4;
        wrong[at..].copy_from_slice(b"Q.P.");
        let cases = [
            png(&[ihdr.clone(), chunk(b"IDAT", &wrong)]),
            // The checksum across two chunks, then across many.
            png(&[
                ihdr.clone(),
                chunk(b"IDAT", &wrong[..at + 2]),
                chunk(b"IDAT", &wrong[at + 2..]),
            ]),
            png(&[ihdr.clone()]
                .into_iter()
                .chain(wrong.chunks(3).map(|piece| chunk(b"IDAT", piece)))
                .collect::<Vec<_>>()),
        ];
        for file in cases {
            for piece in [1, 5, 4096] {
                match scrub(&file, piece, false) {
                    Err(MediaError::Invalid(message)) => assert!(message.contains("Adler-32")),
                    other => panic!("not refused: {:?}", other.map(|(out, _)| out.len())),
                }
            }
        }
        // The right checksum, however the stream is split, passes as it came.
        let split = png(&[ihdr]
            .into_iter()
            .chain(stream.chunks(3).map(|piece| chunk(b"IDAT", piece)))
            .collect::<Vec<_>>());
        for file in [base, split] {
            assert_eq!(scrub(&file, 1, false).unwrap().0, file);
        }
    }

    #[test]
    fn image_data_split_or_not_is_kept_as_it_came() {
        let (ihdr, base) = rgb();
        assert_eq!(scrub(&base, 5, false).unwrap().0, base);
        let stream = zlib(&raw(3, false));
        let pieces: Vec<_> = stream
            .chunks(10)
            .map(|piece| chunk(b"IDAT", piece))
            .collect();
        let split = png(&[vec![ihdr], pieces].concat());
        let (out, report) = scrub(&split, 3, false).unwrap();
        assert_eq!(out, split);
        assert!(!report.changed);
        // A large IDAT passes as it came, however the upload is cut.
        let large = crate::fixtures::png(200, 200, 7);
        let (out, report) = scrub(&large, 1000, false).unwrap();
        assert!(!report.changed);
        assert_eq!(out, large);
        assert_eq!(scrub(&large, 7, false).unwrap().0, out);
    }

    #[test]
    fn image_data_longer_than_ihdr_declares_is_refused() {
        let (ihdr, _) = rgb();
        let longer = [raw(3, false), MARKER.repeat(4)].concat();
        let file = png(&[ihdr, chunk(b"IDAT", &crate::fixtures::zlib_stored(&longer))]);
        assert!(refused(&file).contains("longer than its IHDR"));
        let corrupt = png(&[rgb().0, chunk(b"IDAT", &[0x78, 0x9c, 0xff, 0xff, 0xff])]);
        assert!(refused(&corrupt).contains("corrupt"));
    }

    #[test]
    fn interlaced_image_data_is_measured_by_its_passes() {
        // 16 × 16 RGB: passes of 2×2, 2×2, 4×2, 4×4, 8×4, 8×8, 16×8.
        assert_eq!(image_data_len(16, 16, 24, true), 798);
        assert_eq!(image_data_len(1, 1, 24, true), 4);
        assert_eq!(image_data_len(3, 1, 1, false), 2);
        assert_eq!(image_data_len(u32::MAX, u32::MAX, 64, false), u64::MAX);
        let rows = vec![0u8; 798];
        let file = png(&[ihdr(2, 8, 1), chunk(b"IDAT", &zlib(&rows))]);
        let (out, report) = scrub(&file, 64, false).unwrap();
        assert_eq!(out, file);
        assert!(!report.changed);
        assert_eq!(
            pixels(&out),
            image::RgbaImage::from_pixel(W, H, image::Rgba([0, 0, 0, 255]))
        );
        let longer = png(&[ihdr(2, 8, 1), chunk(b"IDAT", &zlib(&[0u8; 799]))]);
        refused(&longer);
    }

    pub(super) fn actl(frames: u32) -> Vec<u8> {
        chunk(
            b"acTL",
            &[frames.to_be_bytes(), 0u32.to_be_bytes()].concat(),
        )
    }

    fn fctl(sequence: u32) -> Vec<u8> {
        fctl_sized(sequence, W, H)
    }

    /// A frame of `width` × `height` at the canvas's corner, 1/10 s long.
    pub(super) fn fctl_sized(sequence: u32, width: u32, height: u32) -> Vec<u8> {
        let mut data = Vec::new();
        for field in [sequence, width, height, 0, 0] {
            data.extend_from_slice(&field.to_be_bytes());
        }
        data.extend_from_slice(&[0, 1, 0, 10, 0, 0]);
        chunk(b"fcTL", &data)
    }

    pub(super) fn fdat(sequence: u32, data: &[u8]) -> Vec<u8> {
        chunk(b"fdAT", &[&sequence.to_be_bytes(), data].concat())
    }

    #[test]
    fn apng_chunks_out_of_their_place_are_dropped() {
        let (ihdr, base) = rgb();
        let idat = chunk(b"IDAT", &zlib(&raw(3, false)));
        let big = MARKER.repeat(3000);
        let cases = [
            // After the one frame acTL announces (the default image).
            vec![ihdr.clone(), actl(1), fctl(0), idat.clone(), fdat(1, &big)],
            // Hundreds of them.
            [
                vec![ihdr.clone(), actl(1), fctl(0), idat.clone()],
                (1..300).map(|n| fdat(n, MARKER)).collect(),
            ]
            .concat(),
            // No fcTL before it.
            vec![ihdr.clone(), actl(2), fctl(0), idat.clone(), fdat(1, &big)],
            // No acTL at all.
            vec![ihdr.clone(), idat.clone(), fdat(1, &big)],
            vec![ihdr.clone(), idat.clone(), fctl(1), fdat(2, &big)],
            // An fcTL past the frames announced.
            vec![
                ihdr.clone(),
                actl(1),
                fctl(0),
                idat.clone(),
                fctl(1),
                fdat(2, &big),
            ],
            // A second fcTL before the image data, and one before acTL.
            vec![
                ihdr.clone(),
                fctl(0),
                actl(1),
                fctl(0),
                fctl(1),
                idat.clone(),
                fdat(2, &big),
            ],
        ];
        for chunks in cases {
            let out = scrubbed_like(&png(&chunks), &base);
            let count = |kind: &[u8]| out.windows(4).filter(|w| *w == kind).count();
            assert!(count(b"fcTL") <= 1 && count(b"fdAT") == 0);
        }
    }

    #[test]
    fn a_well_formed_apng_is_kept_as_it_came() {
        let (ihdr, _) = rgb();
        let stream = zlib(&raw(3, false));
        let file = png(&[
            ihdr,
            actl(2),
            fctl(0),
            chunk(b"IDAT", &stream),
            fctl(1),
            fdat(2, &stream),
        ]);
        let (out, report) = scrub(&file, 9, false).unwrap();
        assert_eq!(out, file);
        assert!(!report.changed);
    }

    #[test]
    fn palettes_no_image_draws_are_dropped() {
        let palette = MARKER.repeat(16)[..768].to_vec();
        for (colour, channels) in [(0, 1), (4, 2), (2, 3), (6, 4)] {
            let ihdr = ihdr(colour, 8, 0);
            let idat = chunk(b"IDAT", &zlib(&raw(channels, false)));
            let base = png(&[ihdr.clone(), idat.clone()]);
            let file = png(&[ihdr, chunk(b"PLTE", &palette), idat]);
            let out = scrubbed_like(&file, &base);
            assert!(!contains(&out, b"PLTE"));
        }
    }

    fn palette_image(depth: u8, chunks: &[Vec<u8>]) -> Vec<u8> {
        // Each row: its filter byte, then the indices 0, 1, 2, 3 over and
        // over.
        let per_byte = 8 / usize::from(depth);
        let mut row = vec![0];
        for byte in 0..(W as usize).div_ceil(per_byte) {
            let mut packed = 0u8;
            for at in 0..per_byte {
                packed = packed.checked_shl(depth.into()).unwrap_or(0)
                    | ((byte * per_byte + at) % 4) as u8;
            }
            row.push(packed);
        }
        let rows = row.repeat(H as usize);
        let mut all = vec![ihdr(3, depth, 0)];
        all.extend_from_slice(chunks);
        all.push(chunk(b"IDAT", &zlib(&rows)));
        png(&all)
    }

    #[test]
    fn palettes_are_checked() {
        let colours: Vec<u8> = (0..12).map(|n| n * 20).collect();
        let base = palette_image(2, &[chunk(b"PLTE", &colours)]);
        let (out, report) = scrub(&base, 100, false).unwrap();
        assert_eq!(out, base);
        assert!(!report.changed);
        // Entries past what two bits index are cut.
        let long = [colours.clone(), MARKER.repeat(15)[..756].to_vec()].concat();
        let out = scrubbed_like(&palette_image(2, &[chunk(b"PLTE", &long)]), &base);
        assert_eq!(out, base);
        // After the image data: dropped.
        let after = palette_image(2, &[chunk(b"PLTE", &colours)]);
        let at = after.len() - 12;
        let after = [&after[..at], &chunk(b"PLTE", &MARKER[..48]), &after[at..]].concat();
        assert_eq!(scrubbed_like(&after, &base), base);
        // Not whole entries, a second one, none at all: corrupt.
        for chunks in [
            vec![chunk(b"PLTE", &long[..767])],
            vec![chunk(b"PLTE", &[])],
            vec![chunk(b"PLTE", &colours), chunk(b"PLTE", MARKER)],
            vec![],
        ] {
            refused(&palette_image(2, &chunks));
        }
    }

    #[test]
    fn fields_past_their_range_are_dropped() {
        let colours: Vec<u8> = (0..12).map(|n| n * 20).collect();
        let plte = chunk(b"PLTE", &colours);
        let base = palette_image(8, std::slice::from_ref(&plte));
        // A palette's transparency longer than the palette, or before it.
        for chunks in [
            vec![plte.clone(), chunk(b"tRNS", &MARKER[..5])],
            vec![chunk(b"tRNS", &MARKER[..4]), plte.clone()],
        ] {
            let out = scrubbed_like(&palette_image(8, &chunks), &base);
            assert!(!contains(&out, b"tRNS"));
        }
        let kept = palette_image(8, &[plte.clone(), chunk(b"tRNS", &[0, 128, 255, 7])]);
        assert_eq!(scrub(&kept, 10, false).unwrap().0, kept);
        // Significant bits above the bit depth, or none.
        let (ihdr, base) = rgb();
        let idat = chunk(b"IDAT", &zlib(&raw(3, false)));
        for bits in [[b'N', b'A', b'M'], [8, 8, 9], [0, 8, 8]] {
            let file = png(&[ihdr.clone(), chunk(b"sBIT", &bits), idat.clone()]);
            let out = scrubbed_like(&file, &base);
            assert!(!contains(&out, b"sBIT"));
        }
        let kept = png(&[ihdr, chunk(b"sBIT", &[5, 6, 5]), idat]);
        assert_eq!(scrub(&kept, 10, false).unwrap().0, kept);
    }

    /// Every frame of an APNG, decoded, and the sequence numbers of its
    /// `fcTL` and `fdAT` chunks.
    fn frames(file: &[u8]) -> (Vec<image::RgbaImage>, Vec<u32>) {
        use image::AnimationDecoder;
        let decoder = image::codecs::png::PngDecoder::new(std::io::Cursor::new(file)).unwrap();
        let frames = decoder.apng().unwrap().into_frames();
        let frames = frames.map(|frame| frame.unwrap().into_buffer()).collect();
        let mut numbers = Vec::new();
        let mut at = 8;
        while at + 12 <= file.len() {
            let len = u32::from_be_bytes(file[at..at + 4].try_into().unwrap()) as usize;
            if matches!(&file[at + 4..at + 8], b"fcTL" | b"fdAT") {
                numbers.push(u32::from_be_bytes(
                    file[at + 8..at + 12].try_into().unwrap(),
                ));
            }
            at += 12 + len;
        }
        (frames, numbers)
    }

    #[test]
    fn a_frame_keeps_only_its_zlib_stream() {
        let (ihdr, _) = rgb();
        let stream = zlib(&raw(3, false));
        let second = zlib(&vec![0; raw(3, false).len()]);
        let animation = |frame_data: Vec<Vec<u8>>| {
            let mut chunks = vec![
                ihdr.clone(),
                actl(3),
                fctl(0),
                chunk(b"IDAT", &stream),
                fctl(1),
            ];
            let mut sequence = 2;
            for data in frame_data {
                chunks.push(fdat(sequence, &data));
                sequence += 1;
            }
            chunks.push(fctl(sequence));
            chunks.push(fdat(sequence + 1, &stream));
            png(&chunks)
        };
        let base = animation(vec![second.clone()]);
        assert_eq!(scrub(&base, 11, false).unwrap().0, base);
        let big = MARKER.repeat(3000);
        for frame_data in [
            // After the frame's stream, in its fdAT or in one more.
            vec![[second.as_slice(), &big].concat()],
            vec![second.clone(), big.clone()],
            // The stream split over many fdATs, then the marker.
            second
                .chunks(3)
                .map(<[u8]>::to_vec)
                .chain([MARKER.to_vec()])
                .collect(),
        ] {
            let file = animation(frame_data);
            let (out, _) = scrub(&file, 4096, false).unwrap();
            assert_eq!(scrub(&file, 1, false).unwrap().0, out);
            assert!(!contains(&out, MARKER));
            let (kept, numbers) = frames(&out);
            assert_eq!(kept, frames(&base).0);
            assert_eq!(numbers, (0..numbers.len() as u32).collect::<Vec<_>>());
        }
        // A frame's data longer than its fcTL declares.
        let longer = zlib(&vec![0; raw(3, false).len() + 1]);
        refused(&animation(vec![longer]));
    }

    #[test]
    fn frames_are_numbered_afresh_when_chunks_go() {
        let large = crate::fixtures::png(200, 200, 7);
        // The fixture's one IDAT, 120 KB of stored deflate.
        let ihdr = large[8..33].to_vec();
        let len = u32::from_be_bytes(large[33..37].try_into().unwrap()) as usize;
        let stream = large[41..41 + len].to_vec();
        let fctl_large = |sequence: u32| {
            let mut data = fctl(sequence)[8..34].to_vec();
            data[4..12].copy_from_slice(&[0, 0, 0, 200, 0, 0, 0, 200]);
            chunk(b"fcTL", &data)
        };
        let head = [ihdr, actl(1), chunk(b"IDAT", &stream)];
        let clean = png(&[&head[..], &[fctl_large(0), fdat(1, &stream)]].concat());
        let file = png(&[
            &head[..],
            // An fdAT of no frame, then a frame.
            &[fdat(0, MARKER), fctl_large(1), fdat(2, &stream)],
        ]
        .concat());
        let (out, report) = scrub(&file, 4096, false).unwrap();
        assert!(report.changed && !contains(&out, MARKER));
        let (kept, numbers) = frames(&out);
        assert_eq!(kept, frames(&clean).0);
        assert_eq!(numbers, vec![0, 1]);
    }

    #[test]
    fn a_phone_photo_saved_as_png_keeps_its_pixels() {
        let photo =
            image::load_from_memory(include_bytes!("../../../examples/images/phone-photo.jpg"))
                .unwrap();
        for photo in [
            photo.clone(),
            image::DynamicImage::ImageRgba8(photo.to_rgba8()),
        ] {
            let mut file = Vec::new();
            photo
                .write_to(
                    &mut std::io::Cursor::new(&mut file),
                    image::ImageFormat::Png,
                )
                .unwrap();
            let (out, _) = scrub(&file, 16 * 1024, false).unwrap();
            assert_eq!(scrub(&file, 1000, false).unwrap().0, out);
            assert_eq!(pixels(&out), pixels(&file));
        }
    }
}

#[cfg(test)]
mod attack8 {
    //! The cost of an APNG's frames: each frame's zlib stream is
    //! inflated, so the pixels of all the frames followed are bounded
    //! (`--max-image-pixels`), and a frame past the bound is refused at
    //! its `fcTL`, before any of its data is inflated.
    use bytes::Bytes;

    use super::attack5::{actl, fctl_sized as fctl, fdat};
    use crate::fixtures::png_chunk_bytes as chunk;
    use crate::media::MediaError;
    use crate::media::scrub::Scrubber;

    const SIGNATURE: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

    fn ihdr(width: u32, height: u32, depth: u8, colour: u8) -> Vec<u8> {
        let data = [
            &width.to_be_bytes()[..],
            &height.to_be_bytes(),
            &[depth, colour, 0, 0, 0],
        ]
        .concat();
        chunk(b"IHDR", &data)
    }

    /// A 16 × 16 RGB APNG of `frames` frames (the image the first).
    fn animation(frames: u32) -> Vec<u8> {
        let rows: Vec<u8> = (0..16u8)
            .flat_map(|y| std::iter::once(0).chain((0..48u8).map(move |x| x ^ y)))
            .collect();
        let stream = miniz_oxide::deflate::compress_to_vec_zlib(&rows, 6);
        let mut chunks = vec![
            SIGNATURE.to_vec(),
            ihdr(16, 16, 8, 2),
            actl(frames),
            fctl(0, 16, 16),
            chunk(b"IDAT", &stream),
        ];
        for frame in 1..frames {
            chunks.push(fctl(2 * frame - 1, 16, 16));
            chunks.push(fdat(2 * frame, &stream));
        }
        chunks.push(chunk(b"IEND", &[]));
        chunks.concat()
    }

    /// Pushes `bytes` through a scrubber bounded to `max_pixels`, 7 bytes
    /// at a time; the first refusal, if any, with the bytes pushed by then.
    fn push(bytes: &[u8], max_pixels: u64) -> Result<Vec<u8>, (MediaError, usize)> {
        let mut scrubber = Scrubber::bounded(false, max_pixels, u32::MAX);
        let mut out = Vec::new();
        for (at, piece) in bytes.chunks(7).enumerate() {
            scrubber
                .push(Bytes::copy_from_slice(piece), &mut out)
                .map_err(|error| (error, at * 7 + piece.len()))?;
        }
        scrubber.finish(&mut out).map_err(|e| (e, bytes.len()))?;
        Ok(out.concat())
    }

    fn frames(file: &[u8]) -> Vec<image::RgbaImage> {
        use image::AnimationDecoder;
        let decoder = image::codecs::png::PngDecoder::new(std::io::Cursor::new(file)).unwrap();
        let frames = decoder.apng().unwrap().into_frames();
        frames.map(|frame| frame.unwrap().into_buffer()).collect()
    }

    /// Where the `n`th (from 0) chunk of `kind` starts.
    fn chunk_at(file: &[u8], kind: &[u8; 4], n: usize) -> usize {
        let mut at = 8;
        let mut seen = 0;
        loop {
            let len = u32::from_be_bytes(file[at..at + 4].try_into().unwrap()) as usize;
            if &file[at + 4..at + 8] == kind {
                if seen == n {
                    return at;
                }
                seen += 1;
            }
            at += 12 + len;
        }
    }

    #[test]
    fn frames_past_the_pixel_bound_are_refused_at_their_frame_control() {
        let file = animation(4);
        // Four frames of 256 pixels: within a bound of 1 024, kept whole
        // and drawn the same.
        let out = push(&file, 1024).unwrap();
        assert_eq!(out, file);
        assert_eq!(frames(&out), frames(&file));
        assert_eq!(frames(&out).len(), 4);
        // Within 1 023, the fourth frame's fcTL is refused, before any of
        // its data is pushed.
        let (error, pushed) = push(&file, 1023).unwrap_err();
        assert!(matches!(error, MediaError::Invalid(_)), "{error:?}");
        assert!(error.to_string().contains("--max-image-pixels"), "{error}");
        let last_fctl = chunk_at(&file, b"fcTL", 3);
        assert!(
            pushed <= last_fctl + 12 + 26 + 7,
            "refused at byte {pushed}"
        );
        assert!(pushed > last_fctl, "refused at byte {pushed}");
    }

    #[test]
    fn the_attackers_animation_of_100_megapixel_frames_is_refused_at_its_second_frame() {
        // n16.py: 10 000 × 10 000 RGBA16 frames of zeros at the default
        // --max-image-pixels. Only the image's first bytes of data are
        // pushed: the second frame's fcTL is refused without waiting for
        // (or inflating) the rest.
        let (side, max_pixels) = (10_000, 100_000_000);
        let row = vec![0u8; side as usize * 8 + 1];
        let stream = miniz_oxide::deflate::compress_to_vec_zlib(&row, 9);
        let head = [
            SIGNATURE.to_vec(),
            ihdr(side, side, 16, 6),
            actl(5),
            fctl(0, side, side),
            chunk(b"IDAT", &stream[..stream.len() - 8]),
            fctl(1, side, side),
            fdat(2, &stream),
        ]
        .concat();
        let (error, pushed) = push(&head, max_pixels).unwrap_err();
        assert!(error.to_string().contains("100000000"), "{error}");
        assert!(pushed < chunk_at(&head, b"fdAT", 0) + 7, "{pushed}");
        // A still of as many pixels is followed as before.
        let still = [
            SIGNATURE.to_vec(),
            ihdr(side, side, 16, 6),
            chunk(b"IDAT", &stream[..stream.len() - 8]),
        ]
        .concat();
        let mut scrubber = Scrubber::bounded(false, max_pixels, u32::MAX);
        scrubber
            .push(Bytes::from(still), &mut Vec::new())
            .expect("a still within the bound");
    }
}

#[cfg(test)]
mod attack8_cost {
    //! What scrubbing costs, measured by hand (`cargo test --lib
    //! attack8_cost -- --ignored --nocapture`): the attacker's bombs
    //! through the content check and the scrubber as an upload runs them,
    //! refused from the header now, and a 12-megapixel photo saved as PNG.
    use std::time::Instant;

    use bytes::Bytes;

    use super::attack5::{actl, fctl_sized};
    use crate::fixtures::png_chunk_bytes as chunk;
    use crate::media::content::{ContentInspector, ContentLimits, Declared};
    use crate::media::scrub::Scrubber;
    use miniz_oxide::{MZFlush, MZStatus};

    const SIGNATURE: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

    /// n15.py, n16.py, bz.py: a `side`² RGBA16 image of zeros, with
    /// `frames` frames.
    fn bomb(side: u32, frames: u32) -> Vec<u8> {
        use miniz_oxide::deflate::core::{CompressorOxide, create_comp_flags_from_zip_params};
        use miniz_oxide::deflate::stream::deflate;
        let row = vec![0u8; side as usize * 8 + 1];
        let mut deflater = CompressorOxide::new(create_comp_flags_from_zip_params(9, 1, 0));
        let (mut stream, mut buffer) = (Vec::new(), vec![0u8; 1 << 16]);
        for y in 0..=side {
            let (mut input, flush) = match y < side {
                true => (&row[..], MZFlush::None),
                false => (&[][..], MZFlush::Finish),
            };
            loop {
                let result = deflate(&mut deflater, input, &mut buffer, flush);
                stream.extend_from_slice(&buffer[..result.bytes_written]);
                input = &input[result.bytes_consumed..];
                let done = result.status == Ok(MZStatus::StreamEnd);
                if done || input.is_empty() && result.bytes_written < buffer.len() {
                    break;
                }
            }
        }
        let ihdr = [
            &side.to_be_bytes()[..],
            &side.to_be_bytes(),
            &[16, 6, 0, 0, 0],
        ]
        .concat();
        let fctl = |sequence| fctl_sized(sequence, side, side);
        let mut file = vec![SIGNATURE.to_vec(), chunk(b"IHDR", &ihdr)];
        if frames > 1 {
            file.push(actl(frames));
            file.push(fctl(0));
        }
        file.push(chunk(b"IDAT", &stream));
        for frame in 1..frames {
            file.push(fctl(2 * frame - 1));
            file.push(chunk(
                b"fdAT",
                &[&(2 * frame).to_be_bytes()[..], &stream].concat(),
            ));
        }
        file.push(chunk(b"IEND", &[]));
        file.concat()
    }

    /// Feeds `file` in 64 KiB messages to the content check and then the
    /// scrubber, as an upload does; the seconds taken and the outcome.
    fn upload(file: &[u8], render_cap: Option<u64>, max_pixels: u64) -> (f64, String) {
        let limits = ContentLimits {
            max_bytes: 50 << 20,
            max_pixels: 100_000_000,
            max_jpeg_decode_passes: crate::media::limits::DEFAULT_MAX_JPEG_DECODE_PASSES,
        };
        let started = Instant::now();
        let mut inspector = ContentInspector::new(limits, Declared::default())
            .unwrap()
            .refusing_renders_over(render_cap, 1080);
        let mut scrubber = Scrubber::bounded(false, max_pixels, u32::MAX);
        let mut out = Vec::new();
        let outcome = (|| {
            for piece in file.chunks(64 * 1024) {
                inspector.feed(piece, None)?;
                scrubber.push(Bytes::copy_from_slice(piece), &mut out)?;
                out.clear();
            }
            inspector.finish()?;
            scrubber.finish(&mut out)?;
            Ok::<_, crate::media::MediaError>("stored".to_owned())
        })();
        let outcome = outcome.unwrap_or_else(|error| error.to_string());
        (started.elapsed().as_secs_f64(), outcome)
    }

    #[test]
    #[ignore = "a measurement, run by hand"]
    fn cost_of_the_attackers_bombs_before_and_after() {
        for (name, file) in [
            ("10000^2 RGBA16 still (n15)", bomb(10_000, 1)),
            ("6400^2 RGBA16 still (n16)", bomb(6_400, 1)),
            ("5 frames 10000^2 RGBA16 (bz)", bomb(10_000, 5)),
            ("17 frames 6400^2 RGBA16 (n16)", bomb(6_400, 17)),
        ] {
            let (before, outcome) = upload(&file, None, u64::MAX);
            println!("{name}, {} B: before {before:.2} s ({outcome})", file.len());
            let (after, outcome) = upload(&file, Some(512 << 20), 100_000_000);
            println!("  after {after:.4} s ({outcome})");
            // Variants off: only the APNG bound applies.
            let (off, outcome) = upload(&file, None, 100_000_000);
            println!("  after, no variants {off:.2} s ({outcome})");
        }
    }

    #[test]
    #[ignore = "a measurement, run by hand"]
    fn cost_of_a_12_megapixel_photo() {
        let photo =
            image::load_from_memory(include_bytes!("../../../examples/images/phone-photo.jpg"))
                .unwrap()
                .resize_exact(4000, 3000, image::imageops::FilterType::Triangle)
                .to_rgb8();
        // A camera's noise, so the file compresses as a photo does.
        let mut seed = 0x9E37_79B9_u32;
        let noisy = image::RgbImage::from_fn(4000, 3000, |x, y| {
            let mut pixel = *photo.get_pixel(x, y);
            for sample in &mut pixel.0 {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                *sample = sample.saturating_add((seed % 8) as u8);
            }
            pixel
        });
        let mut file = Vec::new();
        noisy
            .write_to(
                &mut std::io::Cursor::new(&mut file),
                image::ImageFormat::Png,
            )
            .unwrap();
        for _ in 0..3 {
            let (seconds, outcome) = upload(&file, Some(512 << 20), 100_000_000);
            let mb = file.len() as f64 / 1e6;
            println!(
                "12 MP PNG, {mb:.1} MB: {seconds:.3} s, {:.1} MB/s in, {:.1} MB/s inflated ({outcome})",
                mb / seconds,
                (4000.0 * 3001.0 * 3.0 / 1e6) / seconds
            );
        }
    }
}
