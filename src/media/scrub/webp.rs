//! WebP: chunk by chunk, as an allow-list, with what is dropped blanked in
//! place so that the RIFF size at the start stays true and the file streams.
//!
//! Kept: the chunks that make the image (`VP8 `, `VP8L`, `VP8X`, `ALPH`,
//! `ANIM`, `ANMF`, `ICCP`); inside an `ANMF` frame, its `ALPH`, `VP8 ` and
//! `VP8L`. Every other chunk (`EXIF`, `XMP `, and unknown ones such as
//! `C2PA`), at the top level or inside a frame, becomes a `JUNK` chunk of
//! the same size whose payload is zeros: RIFF defines `JUNK` as padding,
//! and decoders skip chunks they do not know, so nothing moves. `VP8X`
//! stops announcing EXIF and XMP. An `ICCP` chunk that `VP8X` does not
//! announce (or with no `VP8X` at all) is no part of the image: decoders
//! ignore it, so it is blanked too. An announced one is read whole (at
//! most [`MAX_WEBP_COLLECT`], larger is blanked) and kept with its free
//! text blanked (see [`icc`]); a malformed one is blanked, and the image
//! renders as sRGB. A WebP holds one `VP8X`, one `ICCP` and one `EXIF`:
//! any later one is blanked unread. `VP8X` must be 10 bytes long (decoders
//! refuse any other length, and a longer one could carry anything), or the
//! file is refused; its reserved flag bits and reserved bytes are zeroed.
//! Bytes after the frame inside a `VP8 ` chunk are kept: the frame's
//! length is not in its header (only the first partition's is), so it
//! cannot be bounded without decoding.
//!
//! Bounds: one chunk header (8 bytes) is held at a time, or one whole
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
    /// `VP8X` announced an ICC profile.
    icc: bool,
    /// The chunks a WebP holds once met so far (see [`once_bit`]): a later
    /// one is blanked unread.
    seen: u8,
}

impl Webp {
    /// At the first chunk header after the RIFF header, with `left` bytes
    /// of the container to come.
    pub(super) fn start(left: u64) -> Webp {
        Webp {
            left,
            step: Step::Header,
            frame: 0,
            icc: false,
            seen: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Expecting a chunk header (FourCC and little-endian size).
    Header,
    /// Passing `remaining` bytes of a chunk's (padded) payload.
    Body { remaining: u64 },
    /// Replacing `remaining` bytes of a dropped chunk's payload by zeros.
    Blank { remaining: u64 },
    /// Collecting a whole chunk (`VP8X` flags, `EXIF` orientation).
    Collect { len: usize },
}

/// Largest WebP chunk collected whole (`VP8X` is 10 bytes, `EXIF` blocks
/// a few KiB); larger `EXIF` chunks are blanked unread.
const MAX_WEBP_COLLECT: u32 = 1024 * 1024;

/// Bytes of an `ANMF` payload before its frame data (position, size,
/// duration, flags).
const ANMF_HEADER: u64 = 16;

/// What a blanked chunk's payload is replaced by, a piece at a time.
static ZEROS: [u8; 16 * 1024] = [0; 16 * 1024];

/// The chunks kept at the top level.
fn keep_webp_chunk(kind: &[u8; 4]) -> bool {
    matches!(
        kind,
        b"VP8 " | b"VP8L" | b"VP8X" | b"ALPH" | b"ANIM" | b"ANMF" | b"ICCP"
    )
}

/// The chunks kept inside an `ANMF` frame.
fn keep_frame_chunk(kind: &[u8; 4]) -> bool {
    matches!(kind, b"VP8 " | b"VP8L" | b"ALPH")
}

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

/// `VP8X`'s payload length.
const VP8X_LEN: u32 = 10;

/// The `VP8X` flags that mean something: ICC (0x20), alpha (0x10), EXIF
/// (0x08), XMP (0x04), animation (0x02); the others are reserved.
const VP8X_FLAGS: u8 = 0x3E;

/// A RIFF `JUNK` chunk header for `size` bytes of payload.
fn webp_junk_header(size: u32) -> Bytes {
    let mut header = b"JUNK".to_vec();
    header.extend_from_slice(&size.to_le_bytes());
    Bytes::from(header)
}

impl Webp {
    /// One step of the walk over a WebP's chunks: takes the next bytes from
    /// `chunk`; says what comes next.
    pub(super) fn push(
        self,
        stream: &mut Stream,
        chunk: &mut Bytes,
        out: &mut Vec<Bytes>,
    ) -> Result<Next<Webp>, MediaError> {
        let before = chunk.len();
        let taken = |chunk: &Bytes| (before - chunk.len()) as u64;
        let corrupt = || MediaError::invalid("the WebP's chunk structure is corrupt");
        let Webp {
            left,
            step,
            frame,
            mut icc,
            mut seen,
        } = self;
        // What the chunk being read must fit in: the frame, or the file.
        let room = if frame > 0 { frame } else { left };
        let step = match step {
            Step::Header => {
                if room + (stream.pending.len() as u64) < 8 {
                    return Err(corrupt());
                }
                if !stream.fill(chunk, 8) {
                    return Ok(Next::Stay(Webp {
                        left: left - taken(chunk),
                        step,
                        frame: frame.saturating_sub(taken(chunk)),
                        icc,
                        seen,
                    }));
                }
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
                let profile = &kind == b"ICCP" && !stream.keep_metadata;
                let bit = if frame > 0 { 0 } else { once_bit(&kind) };
                let first = seen & bit == 0;
                seen |= bit;
                if &kind == b"VP8X" && size != VP8X_LEN && first && !stream.keep_metadata {
                    // Decoders refuse it too; longer, it could carry anything.
                    return Err(MediaError::invalid(
                        "the WebP's VP8X chunk is not 10 bytes long",
                    ));
                }
                let keep = stream.keep_metadata
                    || if frame > 0 {
                        keep_frame_chunk(&kind)
                    } else {
                        first
                            && keep_webp_chunk(&kind)
                            && (!profile || (icc && size <= MAX_WEBP_COLLECT))
                    };
                // Of EXIF only the first is read for the orientation.
                let collect =
                    (&kind == b"VP8X" && keep) || (&kind == b"EXIF" && first) || (profile && keep);
                if frame == 0 && collect && size <= MAX_WEBP_COLLECT {
                    Step::Collect {
                        len: 8 + padded as usize,
                    }
                } else if !keep {
                    stream.changed = true;
                    stream.pending.clear();
                    out.push(webp_junk_header(size));
                    Step::Blank { remaining: padded }
                } else {
                    out.push(stream.pending.split().freeze());
                    if &kind == b"ANMF" && frame == 0 && !stream.keep_metadata {
                        // Its frame header passes; then its chunks are
                        // walked like the file's own.
                        if padded < ANMF_HEADER {
                            return Err(corrupt());
                        }
                        let frame = padded + taken(chunk);
                        let next = Webp {
                            left,
                            step: Step::Body {
                                remaining: ANMF_HEADER,
                            },
                            frame,
                            icc,
                            seen,
                        };
                        return Ok(next.after(taken(chunk)));
                    }
                    Step::Body { remaining: padded }
                }
            }
            Step::Body { remaining } | Step::Blank { remaining } => {
                let n = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                let part = chunk.split_to(n);
                if matches!(step, Step::Body { .. }) {
                    out.push(part);
                } else {
                    for piece in (0..n).step_by(ZEROS.len()) {
                        let len = (n - piece).min(ZEROS.len());
                        out.push(Bytes::from_static(&ZEROS[..len]));
                    }
                }
                match (step, remaining - n as u64) {
                    (_, 0) => Step::Header,
                    (Step::Body { .. }, remaining) => Step::Body { remaining },
                    (_, remaining) => Step::Blank { remaining },
                }
            }
            Step::Collect { len } => {
                if !stream.fill(chunk, len) {
                    return Ok(Next::Stay(Webp {
                        left: left - taken(chunk),
                        ..self
                    }));
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
                } else if whole.len() > 8 {
                    // VP8X: its ICC flag (0x20) says whether ICCP counts.
                    icc = whole[8] & 0x20 != 0;
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
        let next = Webp {
            left,
            step,
            frame,
            icc,
            seen,
        };
        Ok(next.after(taken(chunk)))
    }

    /// This state once `taken` bytes of the container were consumed: the
    /// container ends at a chunk boundary with none of it left.
    fn after(self, taken: u64) -> Next<Webp> {
        let left = self.left - taken;
        if left == 0 && self.step == Step::Header {
            Next::Trailer
        } else {
            Next::Stay(Webp {
                left,
                frame: self.frame.saturating_sub(taken),
                ..self
            })
        }
    }
}
