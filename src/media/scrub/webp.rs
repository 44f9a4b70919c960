//! WebP: chunk by chunk, as an allow-list, with what is dropped blanked in
//! place so that the RIFF size at the start stays true and the file streams.
//!
//! Kept: exactly the chunks the container allows, in their order. The
//! simple format is one `VP8 ` or `VP8L` chunk and nothing after it: what
//! follows is dropped and the RIFF size (held until the first chunk is
//! read) says where the image ends. A file that begins with neither
//! `VP8X` nor an image chunk is refused. In the extended format: `VP8X`,
//! the `ICCP` it announces (before any image chunk), then a still image
//! or, when `VP8X` announces animation, one `ANIM` (6 bytes, or the file
//! is refused; an `ANMF` before it is refused too) and `ANMF` frames. Per
//! image, the still or each frame: one `ALPH`, only when `VP8X` announces
//! alpha and before the bitstream, then one `VP8 ` or `VP8L`. A kept
//! `ALPH` is already stored when the next chunk is read: a `VP8L` after
//! it (which carries its own alpha, so decoders ignore the `ALPH`), or no
//! `VP8 ` at all, refuses the file; an uncompressed `ALPH` holds a header
//! byte and a byte per pixel, and bytes past that are zeroed (the chunk
//! keeps its length; libwebp writes a compressed one only when it is
//! smaller). Every other chunk (a second bitstream or `ALPH`, an `ANMF`
//! or `ANIM` in a still, `EXIF`, `XMP `, and unknown ones such as
//! `C2PA`), at the top level or inside a frame, becomes a `JUNK` chunk of
//! the same size whose payload is zeros: RIFF defines `JUNK` as padding,
//! and decoders skip chunks they do not know, so nothing moves. `VP8X`
//! stops announcing EXIF and XMP. An `ICCP` chunk that `VP8X` does not
//! announce is no part of the image: decoders ignore it, so it is blanked
//! too. An announced one is read whole (at most [`MAX_WEBP_COLLECT`],
//! larger is blanked) and kept with its free text blanked (see [`icc`]);
//! a malformed one is blanked, and the image renders as sRGB. A WebP
//! holds one `VP8X`, one `ICCP` and one `EXIF`: any later one is blanked
//! unread. `VP8X` must be 10 bytes long (decoders refuse any other length,
//! and a longer one could carry anything), or the file is refused; its
//! reserved flag bits and reserved bytes are zeroed. An empty chunk is a
//! whole chunk, at the end too. Bytes after the frame inside a `VP8 `
//! chunk, and after the lossless stream inside `VP8L` or a compressed
//! `ALPH`, are kept: their end is not in any header, so it cannot be
//! found without decoding.
//!
//! Bounds: one chunk header (8 bytes, 20 with the RIFF header before the
//! first chunk; 24 with an `ANMF` frame header) is held at a time, or one whole
//! `VP8X`, `EXIF` or `ICCP` chunk of at most [`MAX_WEBP_COLLECT`] + 8 bytes (read
//! for its flags and the orientation), never more than the bytes received.
//! Kept data passes through as slices, and a blanked payload as slices of
//! one static block of zeros, so nothing else is allocated but a fixed
//! 8-byte header per blanked chunk. CPU: a constant amount per input byte
//! (a copy of held bytes, zeros for blanked ones) and per chunk header,
//! and, once per file, one profile blanked and one EXIF read, each of at
//! most [`MAX_WEBP_COLLECT`] bytes: no chunk's work repeats.
use bytes::Bytes;

use super::icc;
use super::stream::{Next, Stream};
use crate::media::MediaError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Webp {
    /// Bytes of the RIFF container not yet taken from the input.
    left: u64,
    step: Step,
    /// Bytes not yet taken of the `ANMF` frame being walked (0 at the top
    /// level).
    frame: u64,
    /// Which of the two WebP layouts the first chunk chose.
    layout: Layout,
    /// `VP8X`'s flags (0 until it is read).
    flags: u8,
    /// The top-level chunks met so far (see [`once_bit`] and
    /// [`ANIM_KEPT`], [`FRAMES`]).
    seen: u8,
    /// The still image's chunks met so far ([`ALPH_SEEN`], ...).
    still: u8,
    /// The current `ANMF` frame's chunks met so far.
    frame_image: u8,
    /// Pixels of the canvas (from `VP8X`) and of the current frame (from
    /// its `ANMF` header): what bounds an `ALPH` chunk.
    canvas: u64,
    frame_area: u64,
}

impl Webp {
    /// At the first chunk header after the RIFF header, with `left` bytes
    /// of the container to come; the RIFF header's 12 bytes are held in
    /// the stream until the first chunk says whether its size stays.
    pub(super) fn start(left: u64) -> Webp {
        Webp {
            left,
            step: Step::Header,
            frame: 0,
            layout: Layout::Held,
            flags: 0,
            seen: 0,
            still: 0,
            frame_image: 0,
            canvas: 0,
            frame_area: 0,
        }
    }
}

/// The WebP container's two layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// No chunk read yet: the RIFF header is held.
    Held,
    /// The simple format: one `VP8 ` or `VP8L` chunk, and nothing after it.
    Simple,
    /// The extended format: `VP8X` first (or metadata kept: any layout).
    Extended,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Expecting a chunk header (FourCC and little-endian size).
    Header,
    /// Passing `remaining` bytes of a chunk's (padded) payload, then
    /// replacing `zeros` more by zeros (an `ALPH` chunk's bytes past its
    /// pixels).
    Body { remaining: u64, zeros: u64 },
    /// Replacing `remaining` bytes of a dropped chunk's payload by zeros.
    Blank { remaining: u64 },
    /// Collecting a whole chunk (`VP8X` flags, `EXIF` orientation).
    Collect { len: usize },
    /// Collecting an `ANMF` chunk's header and its frame header (for the
    /// frame's size).
    Frame,
}

/// Largest WebP chunk collected whole (`VP8X` is 10 bytes, `EXIF` blocks
/// a few KiB); larger `EXIF` chunks are blanked unread.
const MAX_WEBP_COLLECT: u32 = 1024 * 1024;

/// Bytes of an `ANMF` payload before its frame data (position, size,
/// duration, flags).
const ANMF_HEADER: u64 = 16;

/// `ANIM`'s payload length (background colour, loop count).
const ANIM_LEN: u32 = 6;

/// What a blanked chunk's payload is replaced by, a piece at a time.
static ZEROS: [u8; 16 * 1024] = [0; 16 * 1024];

/// The bit in [`Webp::seen`] of the top-level chunks a WebP holds at most
/// once (`VP8X`; the `ICCP` it announces; `EXIF`, read for the
/// orientation), 0 for the others.
fn once_bit(kind: &[u8; 4]) -> u8 {
    match kind {
        b"VP8X" => 1,
        b"ICCP" => 2,
        b"EXIF" => 4,
        _ => 0,
    }
}

/// In [`Webp::seen`]: an `ANIM` chunk was kept; an `ANMF` frame was met.
const ANIM_KEPT: u8 = 8;
const FRAMES: u8 = 16;

/// In an image's bits (the still's, or a frame's): an `ALPH` chunk was
/// met; one was kept, and its `VP8 ` chunk must come next; the image's
/// bitstream (`VP8 ` or `VP8L`) was met.
const ALPH_SEEN: u8 = 1;
const ALPH_KEPT: u8 = 2;
const BITSTREAM: u8 = 4;

/// `VP8X`'s payload length.
const VP8X_LEN: u32 = 10;

/// The `VP8X` flags that mean something: ICC (0x20), alpha (0x10), EXIF
/// (0x08), XMP (0x04), animation (0x02); the others are reserved.
const VP8X_FLAGS: u8 = 0x3E;
const ICC_FLAG: u8 = 0x20;
const ALPHA_FLAG: u8 = 0x10;
const ANIMATION_FLAG: u8 = 0x02;

/// A RIFF `JUNK` chunk header for `size` bytes of payload.
fn webp_junk_header(size: u32) -> Bytes {
    let mut header = b"JUNK".to_vec();
    header.extend_from_slice(&size.to_le_bytes());
    Bytes::from(header)
}

/// A width and a height stored less one in 3 little-endian bytes each:
/// their product.
fn area(bytes: &[u8]) -> u64 {
    let side = |b: &[u8]| u64::from(u32::from_le_bytes([b[0], b[1], b[2], 0])) + 1;
    side(&bytes[..3]) * side(&bytes[3..6])
}

fn alpha_without_vp8() -> MediaError {
    MediaError::invalid("the WebP's ALPH chunk is not followed by a VP8 chunk")
}

/// Whether an image (the still, or a frame) whose chunks so far are
/// `bits` keeps its next chunk, `kind`: at most one `ALPH` (when
/// `alpha`, before the bitstream), then one `VP8 ` or `VP8L`;
/// nothing else. A kept `ALPH` has passed already: its `VP8 ` must come
/// (other chunks on the way are blanked); a `VP8L` (which carries its own
/// alpha, so decoders ignore the `ALPH`) refuses the file.
fn image_chunk(kind: &[u8; 4], bits: &mut u8, alpha: bool) -> Result<bool, MediaError> {
    if *bits & ALPH_KEPT != 0 {
        return match kind {
            b"VP8 " => {
                *bits = ALPH_SEEN | BITSTREAM;
                Ok(true)
            }
            b"VP8L" => Err(alpha_without_vp8()),
            _ => Ok(false),
        };
    }
    Ok(match kind {
        b"ALPH" => {
            let keep = alpha && *bits == 0;
            *bits |= ALPH_SEEN | if keep { ALPH_KEPT } else { 0 };
            keep
        }
        b"VP8 " | b"VP8L" => {
            let keep = *bits & BITSTREAM == 0;
            *bits |= BITSTREAM;
            keep
        }
        _ => false,
    })
}

impl Webp {
    /// Whether the chunk `kind` of `size` bytes is kept, metadata being
    /// stripped; `first` when no chunk with its [`once_bit`] came before.
    fn keeps(&mut self, kind: &[u8; 4], size: u32, first: bool) -> Result<bool, MediaError> {
        if self.frame > 0 {
            let alpha = self.flags & ALPHA_FLAG != 0;
            return image_chunk(kind, &mut self.frame_image, alpha);
        }
        if self.frame_image & ALPH_KEPT != 0 {
            // The last frame ended after its `ALPH`.
            return Err(alpha_without_vp8());
        }
        let animated = self.flags & ANIMATION_FLAG != 0;
        let begun = self.seen & (ANIM_KEPT | FRAMES) != 0 || self.still != 0;
        if self.still & ALPH_KEPT != 0 {
            return image_chunk(kind, &mut self.still, false);
        }
        Ok(match kind {
            b"VP8X" => first,
            b"ICCP" => {
                first
                    && self.flags & ICC_FLAG != 0
                    && size > 0
                    && size <= MAX_WEBP_COLLECT
                    && !begun
            }
            b"ANIM" => {
                let keep = animated && !begun;
                if keep && size != ANIM_LEN {
                    return Err(MediaError::invalid(
                        "the WebP's ANIM chunk is not 6 bytes long",
                    ));
                }
                if keep {
                    self.seen |= ANIM_KEPT;
                }
                keep
            }
            b"ANMF" if animated => {
                if self.seen & ANIM_KEPT == 0 {
                    return Err(MediaError::invalid(
                        "the WebP's ANMF frame comes before its ANIM chunk",
                    ));
                }
                self.seen |= FRAMES;
                true
            }
            b"ALPH" | b"VP8 " | b"VP8L" if !animated => {
                let alpha = self.flags & ALPHA_FLAG != 0;
                image_chunk(kind, &mut self.still, alpha)?
            }
            _ => false,
        })
    }
}

impl Webp {
    /// One step of the walk over a WebP's chunks: takes the next bytes from
    /// `chunk`; says what comes next.
    pub(super) fn push(
        mut self,
        stream: &mut Stream,
        chunk: &mut Bytes,
        out: &mut Vec<Bytes>,
    ) -> Result<Next<Webp>, MediaError> {
        let before = chunk.len();
        let taken = |chunk: &Bytes| (before - chunk.len()) as u64;
        let corrupt = || MediaError::invalid("the WebP's chunk structure is corrupt");
        // What the chunk being read must fit in: the frame, or the file.
        let room = if self.frame > 0 {
            self.frame
        } else {
            self.left
        };
        // The RIFF header, held before the first chunk.
        let held = if self.layout == Layout::Held { 12 } else { 0 };
        let step = match self.step {
            Step::Header => {
                if room + ((stream.pending.len() - held) as u64) < 8 {
                    return Err(corrupt());
                }
                if !stream.fill(chunk, held + 8) {
                    return self.after(taken(chunk));
                }
                let mut riff = stream.pending.split_to(held);
                let kind = [
                    stream.pending[0],
                    stream.pending[1],
                    stream.pending[2],
                    stream.pending[3],
                ];
                let size = u32::from_le_bytes([
                    stream.pending[4],
                    stream.pending[5],
                    stream.pending[6],
                    stream.pending[7],
                ]);
                let padded = u64::from(size) + u64::from(size & 1);
                if padded > room - taken(chunk) {
                    return Err(corrupt());
                }
                let strip = !stream.keep_metadata;
                if self.layout == Layout::Held {
                    self.layout = match &kind {
                        b"VP8 " | b"VP8L" if strip => {
                            // The simple format ends with its image:
                            // the RIFF size says so.
                            let fitted = (12 + padded) as u32;
                            stream.changed |= riff[4..8] != fitted.to_le_bytes();
                            riff[4..8].copy_from_slice(&fitted.to_le_bytes());
                            Layout::Simple
                        }
                        b"VP8X" => Layout::Extended,
                        _ if strip => {
                            return Err(MediaError::invalid(
                                "the WebP does not begin with a VP8X, VP8 or VP8L chunk",
                            ));
                        }
                        _ => Layout::Extended,
                    };
                    out.push(riff.freeze());
                }
                let profile = &kind == b"ICCP" && strip;
                let bit = if self.frame > 0 { 0 } else { once_bit(&kind) };
                let first = self.seen & bit == 0;
                self.seen |= bit;
                if &kind == b"VP8X" && size != VP8X_LEN && first && strip {
                    // Decoders refuse it too; longer, it could carry anything.
                    return Err(MediaError::invalid(
                        "the WebP's VP8X chunk is not 10 bytes long",
                    ));
                }
                let keep =
                    !strip || self.layout == Layout::Simple || self.keeps(&kind, size, first)?;
                // Of EXIF only the first is read for the orientation.
                let collect =
                    (&kind == b"VP8X" && keep) || (&kind == b"EXIF" && first) || (profile && keep);
                if self.frame == 0 && collect && size > 0 && size <= MAX_WEBP_COLLECT {
                    Step::Collect {
                        len: 8 + padded as usize,
                    }
                } else if !keep {
                    stream.changed = true;
                    stream.pending.clear();
                    out.push(webp_junk_header(size));
                    Step::Blank { remaining: padded }
                } else if &kind == b"ANMF" && self.frame == 0 && strip {
                    // Its frame header is read for the frame's size; then
                    // its chunks are walked like the file's own.
                    if padded < ANMF_HEADER {
                        return Err(corrupt());
                    }
                    self.frame = padded + taken(chunk);
                    self.frame_image = 0;
                    Step::Frame
                } else {
                    out.push(stream.pending.split().freeze());
                    // An `ALPH` holds a header byte and at most a byte per
                    // pixel (uncompressed; compressed, encoders write it
                    // so when that is smaller): what is past that is
                    // zeroed.
                    let remaining = if &kind == b"ALPH" && strip {
                        let area = if self.frame > 0 {
                            self.frame_area
                        } else {
                            self.canvas
                        };
                        padded.min(area + 1)
                    } else {
                        padded
                    };
                    stream.changed |= remaining < padded;
                    Step::Body {
                        remaining,
                        zeros: padded - remaining,
                    }
                }
            }
            Step::Frame => {
                if !stream.fill(chunk, 8 + ANMF_HEADER as usize) {
                    return self.after(taken(chunk));
                }
                self.frame_area = area(&stream.pending[14..20]);
                out.push(stream.pending.split().freeze());
                Step::Header
            }
            Step::Body { remaining, .. } | Step::Blank { remaining } => {
                let n = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                let part = chunk.split_to(n);
                if matches!(self.step, Step::Body { .. }) {
                    out.push(part);
                } else {
                    for piece in (0..n).step_by(ZEROS.len()) {
                        let len = (n - piece).min(ZEROS.len());
                        out.push(Bytes::from_static(&ZEROS[..len]));
                    }
                }
                match self.step {
                    Step::Body { zeros, .. } => Step::Body {
                        remaining: remaining - n as u64,
                        zeros,
                    },
                    _ => Step::Blank {
                        remaining: remaining - n as u64,
                    },
                }
            }
            Step::Collect { len } => {
                if !stream.fill(chunk, len) {
                    return self.after(taken(chunk));
                }
                let mut whole = stream.pending.split();
                if &whole[..4] == b"ICCP" {
                    // Kept with its text blanked; malformed, dropped.
                    let size = u32::from_le_bytes([whole[4], whole[5], whole[6], whole[7]]);
                    match icc::blank_profile_text(&mut whole[8..8 + size as usize]) {
                        Ok(changed) => stream.changed |= changed,
                        Err(icc::Malformed) => {
                            stream.changed = true;
                            whole[..4].copy_from_slice(b"JUNK");
                            whole[8..].fill(0);
                        }
                    }
                } else if &whole[..4] == b"EXIF" {
                    let payload = &whole[8..];
                    let tiff = payload.strip_prefix(b"Exif\0\0").unwrap_or(payload);
                    stream.note_orientation(tiff);
                    if !stream.keep_metadata {
                        stream.changed = true;
                        whole[..4].copy_from_slice(b"JUNK");
                        whole[8..].fill(0);
                    }
                } else if whole.len() >= 8 + VP8X_LEN as usize {
                    // VP8X: its flags say which chunks count; the canvas
                    // size bounds `ALPH`.
                    self.flags = whole[8];
                    self.canvas = area(&whole[12..18]);
                    if !stream.keep_metadata {
                        // Clear the EXIF (0x08) and XMP (0x04) flags, the
                        // reserved ones and the 3 reserved bytes.
                        let before = [whole[8], whole[9], whole[10], whole[11]];
                        whole[8] &= VP8X_FLAGS & !0x0C;
                        whole[9..12].fill(0);
                        stream.changed |= whole[8..12] != before;
                    }
                }
                out.push(whole.freeze());
                Step::Header
            }
        };
        self.step = step;
        self.after(taken(chunk))
    }

    /// This state once `taken` bytes of the container were consumed. The
    /// image ends at a chunk boundary: with none of the container left,
    /// or after the one chunk of the simple format; a kept `ALPH` must
    /// have had its `VP8 `.
    fn after(self, taken: u64) -> Result<Next<Webp>, MediaError> {
        let left = self.left - taken;
        let step = match self.step {
            Step::Body {
                remaining: 0,
                zeros: 0,
            }
            | Step::Blank { remaining: 0 } => Step::Header,
            Step::Body {
                remaining: 0,
                zeros,
            } => Step::Blank { remaining: zeros },
            step => step,
        };
        if step == Step::Header && (left == 0 || self.layout == Layout::Simple) {
            if (self.still | self.frame_image) & ALPH_KEPT != 0 {
                return Err(alpha_without_vp8());
            }
            return Ok(Next::Trailer);
        }
        Ok(Next::Stay(Webp {
            left,
            step,
            frame: self.frame.saturating_sub(taken),
            ..self
        }))
    }
}

/// Each image keeps exactly the chunks the container allows, in their
/// order; the simple format ends with its image; an empty last chunk is
/// no truncation.
#[cfg(test)]
mod attack5 {
    use super::super::tests::{contains, riff_webp, scrub, vp8l_chunk, write_to_corpus};
    use crate::fixtures::riff_chunk;

    const MARKER: &[u8] = b"NAME=John Q Public;GPS48.8584N2.2945E";

    /// A 16 x 16 lossy WebP with alpha (`VP8X`, compressed `ALPH`, `VP8 `).
    const ALPHA_WEBP: &[u8] = include_bytes!("../../../fuzz/corpus/scrub/a5-webp-alpha-base");

    /// The payloads of [`ALPHA_WEBP`]'s `VP8X`, `ALPH` and `VP8 ` chunks.
    fn alpha_parts() -> [Vec<u8>; 3] {
        let mut parts = Vec::new();
        let mut at = 12;
        while at < ALPHA_WEBP.len() {
            let size = u32::from_le_bytes(ALPHA_WEBP[at + 4..at + 8].try_into().unwrap()) as usize;
            parts.push(ALPHA_WEBP[at + 8..at + 8 + size].to_vec());
            at += 8 + size + (size & 1);
        }
        parts.try_into().unwrap()
    }

    fn vp8x(flags: u8, width: u32, height: u32) -> Vec<u8> {
        let mut vp8x = vec![flags, 0, 0, 0];
        vp8x.extend_from_slice(&(width - 1).to_le_bytes()[..3]);
        vp8x.extend_from_slice(&(height - 1).to_le_bytes()[..3]);
        riff_chunk(b"VP8X", &vp8x)
    }

    /// An `ANMF` frame of `width` x `height` at the origin holding `data`.
    fn anmf(width: u32, height: u32, data: &[u8]) -> Vec<u8> {
        let mut frame = vec![0; 6];
        frame.extend_from_slice(&(width - 1).to_le_bytes()[..3]);
        frame.extend_from_slice(&(height - 1).to_le_bytes()[..3]);
        frame.extend_from_slice(&[100, 0, 0, 0]);
        frame.extend_from_slice(data);
        riff_chunk(b"ANMF", &frame)
    }

    /// A raw (uncompressed) `ALPH` of 16 x 16 opaque pixels, and `more`.
    fn raw_alph(more: &[u8]) -> Vec<u8> {
        let mut alph = vec![0];
        alph.extend(vec![0xFF; 256]);
        alph.extend_from_slice(more);
        riff_chunk(b"ALPH", &alph)
    }

    fn pixels(webp: &[u8]) -> image::RgbaImage {
        image::load_from_memory(webp).unwrap().to_rgba8()
    }

    /// `webp` scrubbed, the same whatever the pieces it arrives in.
    fn stored(webp: &[u8]) -> Vec<u8> {
        let (whole, report) = scrub(webp, webp.len(), false).unwrap();
        assert!(report.stripped);
        for piece in [1, 7] {
            assert_eq!(scrub(webp, piece, false).unwrap().0, whole);
        }
        whole
    }

    fn refused(webp: &[u8], because: &str) {
        for piece in [1, 9, webp.len()] {
            let error = scrub(webp, piece, false).unwrap_err();
            assert!(error.to_string().contains(because), "{error}");
        }
    }

    /// The crafted files (name, bytes, how a clean copy decodes), each
    /// with [`MARKER`] where no decoder reads it.
    fn crafted() -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
        let [x, a, v] = alpha_parts();
        let (xa, aa, va) = (
            riff_chunk(b"VP8X", &x),
            riff_chunk(b"ALPH", &a),
            riff_chunk(b"VP8 ", &v),
        );
        let still = riff_webp(&[xa.clone(), aa.clone(), va.clone()]);
        let opaque = riff_webp(&[vp8x(0, 16, 16), va.clone()]);
        let (l, _) = vp8l_chunk(16, 16);
        let lossless = riff_webp(&[vp8x(0, 16, 16), l.clone()]);
        let anim = riff_chunk(b"ANIM", &[0; 6]);
        let animation = riff_webp(&[vp8x(0x02, 16, 16), anim.clone(), anmf(16, 16, &l)]);
        let mut l_marked = l.clone();
        l_marked[8..].copy_from_slice(&MARKER.repeat(l.len())[..l.len() - 8]);
        vec![
            (
                "second-vp8",
                riff_webp(&[
                    xa.clone(),
                    aa.clone(),
                    va.clone(),
                    riff_chunk(b"VP8 ", MARKER),
                ]),
                still.clone(),
            ),
            (
                "vp8-then-vp8l",
                riff_webp(&[xa.clone(), aa.clone(), va.clone(), l_marked.clone()]),
                still.clone(),
            ),
            (
                "second-alph",
                riff_webp(&[
                    xa.clone(),
                    aa.clone(),
                    riff_chunk(b"ALPH", &[&[0][..], MARKER].concat()),
                    va.clone(),
                ]),
                still.clone(),
            ),
            (
                "chunk-between-alph-and-vp8",
                riff_webp(&[
                    xa.clone(),
                    aa.clone(),
                    riff_chunk(b"ZZZZ", MARKER),
                    va.clone(),
                ]),
                still.clone(),
            ),
            (
                "alph-without-alpha-flag",
                riff_webp(&[vp8x(0, 16, 16), raw_alph(MARKER), va.clone()]),
                opaque.clone(),
            ),
            (
                "raw-alph-too-long",
                riff_webp(&[xa.clone(), raw_alph(MARKER), va.clone()]),
                opaque.clone(),
            ),
            (
                "anmf-in-still",
                riff_webp(&[vp8x(0, 16, 16), l.clone(), anmf(16, 16, &l_marked)]),
                lossless.clone(),
            ),
            (
                "anim-in-still",
                riff_webp(&[
                    vp8x(0, 16, 16),
                    riff_chunk(b"ANIM", &MARKER[..6]),
                    l.clone(),
                ]),
                lossless.clone(),
            ),
            (
                "two-bitstreams-in-a-frame",
                riff_webp(&[
                    vp8x(0x02, 16, 16),
                    anim.clone(),
                    anmf(16, 16, &[l.clone(), l_marked.clone()].concat()),
                ]),
                animation.clone(),
            ),
            (
                "raw-alph-too-long-in-a-frame",
                riff_webp(&[
                    vp8x(0x12, 16, 16),
                    anim.clone(),
                    anmf(16, 16, &[raw_alph(MARKER), va.clone()].concat()),
                ]),
                riff_webp(&[
                    vp8x(0x12, 16, 16),
                    anim.clone(),
                    anmf(16, 16, &[raw_alph(b""), va.clone()].concat()),
                ]),
            ),
            (
                "simple-vp8l-then-more",
                riff_webp(&[l.clone(), l_marked.clone(), riff_chunk(b"ZZZZ", MARKER)]),
                riff_webp(std::slice::from_ref(&l)),
            ),
            (
                "simple-vp8-then-vp8x",
                riff_webp(&[va.clone(), vp8x(0x08, 16, 16), riff_chunk(b"EXIF", MARKER)]),
                riff_webp(std::slice::from_ref(&va)),
            ),
        ]
    }

    /// Per still image: one `ALPH` (announced, no longer than its pixels)
    /// then one `VP8 `; per frame the same; no frame in a still, one
    /// bitstream per frame; the simple format is its one chunk. What is
    /// dropped elsewhere becomes zeros; the pixels stay.
    #[test]
    fn each_image_keeps_only_the_chunks_the_container_allows() {
        for (name, file, clean) in crafted() {
            let stored = stored(&file);
            assert!(!contains(&stored, &MARKER[..6]), "{name}");
            let decoded = image::load_from_memory(&stored).expect(name).to_rgba8();
            assert!(decoded == pixels(&clean), "{name}");
            if name.starts_with("simple") {
                assert_eq!(stored, clean, "{name}: the RIFF size is the image's");
            } else {
                assert_eq!(stored.len(), file.len(), "{name}");
            }
        }
        // What is kept passes unchanged.
        assert_eq!(stored(ALPHA_WEBP), ALPHA_WEBP);
    }

    /// An `ALPH` already passed needs its `VP8 `: a `VP8L` instead (which
    /// ignores it), or no image at all, refuses the file; so do a first
    /// chunk that is no image, an `ANMF` before `ANIM` and a long `ANIM`.
    #[test]
    fn structures_that_cannot_be_dropped_after_the_fact_are_refused() {
        let [x, a, _] = alpha_parts();
        let (xa, aa) = (riff_chunk(b"VP8X", &x), riff_chunk(b"ALPH", &a));
        let (l, _) = vp8l_chunk(16, 16);
        let alpha = "ALPH chunk is not followed by a VP8";
        refused(&riff_webp(&[xa.clone(), aa.clone(), l.clone()]), alpha);
        refused(&riff_webp(&[xa.clone(), aa.clone()]), alpha);
        let frame = anmf(16, 16, &aa);
        let anim = riff_chunk(b"ANIM", &[0; 6]);
        refused(
            &riff_webp(&[vp8x(0x12, 16, 16), anim.clone(), frame.clone(), frame]),
            alpha,
        );
        refused(&riff_webp(&[aa, l.clone()]), "does not begin with");
        refused(
            &riff_webp(&[vp8x(0x02, 16, 16), anmf(16, 16, &l), anim]),
            "before its ANIM",
        );
        let long = riff_chunk(b"ANIM", &MARKER[..8]);
        refused(
            &riff_webp(&[vp8x(0x02, 16, 16), long, anmf(16, 16, &l)]),
            "ANIM chunk is not 6 bytes",
        );
    }

    /// An empty chunk at the end (or anywhere) is a whole chunk.
    #[test]
    fn an_empty_last_chunk_is_no_truncation() {
        let (l, pixels_in) = vp8l_chunk(16, 16);
        for kind in [b"JUNK", b"EXIF", b"ZZZZ", b"ICCP"] {
            for at_end in [true, false] {
                let empty = riff_chunk(kind, b"");
                let chunks = if at_end {
                    [vp8x(0, 16, 16), l.clone(), empty]
                } else {
                    [vp8x(0, 16, 16), empty, l.clone()]
                };
                let file = riff_webp(&chunks);
                let stored = stored(&file);
                assert_eq!(stored.len(), file.len());
                assert!(pixels(&stored) == pixels_in);
            }
        }
    }

    /// Writes the crafted files to the scrub corpus, which tests/parsers
    /// replays.
    #[test]
    #[ignore = "writes fuzz/corpus/scrub/: run by hand when the cases change"]
    fn write_corpus() {
        write_to_corpus(
            "a5-webp-",
            crafted().into_iter().map(|(name, file, _)| (name, file)),
        );
    }
}
