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
//! renders as sRGB.
//!
//! Bounds: one chunk header (8 bytes) is held at a time, or one whole
//! `VP8X`, `EXIF` or `ICCP` chunk of at most [`MAX_WEBP_COLLECT`] + 8 bytes (read
//! for its flags and the orientation), never more than the bytes received.
//! Kept data passes through as slices, and a blanked payload as slices of
//! one static block of zeros, so nothing else is allocated but a fixed
//! 8-byte header per blanked chunk. Work is linear in the input.
use bytes::Bytes;

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Webp {
    step: Step,
    /// Bytes not yet taken of the `ANMF` frame being walked (0 at the top
    /// level).
    frame: u64,
    /// `VP8X` announced an ICC profile.
    icc: bool,
}

impl Webp {
    /// At the first chunk header after the RIFF header.
    pub(super) const START: Webp = Webp {
        step: Step::Header,
        frame: 0,
        icc: false,
    };
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

/// A RIFF `JUNK` chunk header for `size` bytes of payload.
fn webp_junk_header(size: u32) -> Bytes {
    let mut header = b"JUNK".to_vec();
    header.extend_from_slice(&size.to_le_bytes());
    Bytes::from(header)
}

impl Scrubber {
    /// One step of the walk over a WebP's chunks; `left` counts the
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
        let Webp {
            step,
            frame,
            mut icc,
        } = state;
        // What the chunk being read must fit in: the frame, or the file.
        let room = if frame > 0 { frame } else { left };
        let step = match step {
            Step::Header => {
                if room + (self.pending.len() as u64) < 8 {
                    return Err(corrupt());
                }
                if !self.fill(chunk, 8) {
                    self.state = State::Webp {
                        left: left - taken(chunk),
                        chunk: Webp {
                            step,
                            frame: frame.saturating_sub(taken(chunk)),
                            icc,
                        },
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
                if padded > room - taken(chunk) {
                    return Err(corrupt());
                }
                let profile = &kind == b"ICCP" && !self.keep_metadata;
                let keep = self.keep_metadata
                    || if frame > 0 {
                        keep_frame_chunk(&kind)
                    } else {
                        keep_webp_chunk(&kind) && (!profile || (icc && size <= MAX_WEBP_COLLECT))
                    };
                let collect = matches!(&kind, b"VP8X" | b"EXIF") || (profile && keep);
                if frame == 0 && collect && size <= MAX_WEBP_COLLECT {
                    Step::Collect {
                        len: 8 + padded as usize,
                    }
                } else if !keep {
                    self.changed = true;
                    self.pending.clear();
                    out.push(webp_junk_header(size));
                    Step::Blank { remaining: padded }
                } else {
                    out.push(self.pending.split().freeze());
                    if &kind == b"ANMF" && frame == 0 && !self.keep_metadata {
                        // Its frame header passes; then its chunks are
                        // walked like the file's own.
                        if padded < ANMF_HEADER {
                            return Err(corrupt());
                        }
                        let frame = padded + taken(chunk);
                        return self.webp_next(
                            left,
                            taken(chunk),
                            Webp {
                                step: Step::Body {
                                    remaining: ANMF_HEADER,
                                },
                                frame,
                                icc,
                            },
                        );
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
                if !self.fill(chunk, len) {
                    self.state = State::Webp {
                        left: left - taken(chunk),
                        chunk: state,
                    };
                    return Ok(());
                }
                let mut whole = self.pending.split();
                if &whole[..4] == b"ICCP" {
                    // Kept with its text blanked; malformed, dropped.
                    let size = u32::from_le_bytes([whole[4], whole[5], whole[6], whole[7]]);
                    match icc::blank_profile_text(&mut whole[8..8 + size as usize]) {
                        Ok(changed) => self.changed |= changed,
                        Err(icc::Malformed) => {
                            self.changed = true;
                            whole[..4].copy_from_slice(b"JUNK");
                            whole[8..].fill(0);
                        }
                    }
                } else if &whole[..4] == b"EXIF" {
                    let payload = &whole[8..];
                    let tiff = payload.strip_prefix(b"Exif\0\0").unwrap_or(payload);
                    self.note_orientation(tiff);
                    if !self.keep_metadata {
                        self.changed = true;
                        whole[..4].copy_from_slice(b"JUNK");
                        whole[8..].fill(0);
                    }
                } else if whole.len() > 8 {
                    // VP8X: its ICC flag (0x20) says whether ICCP counts.
                    icc = whole[8] & 0x20 != 0;
                    if !self.keep_metadata && whole[8] & 0x0C != 0 {
                        // Clear the EXIF (0x08) and XMP (0x04) flags.
                        self.changed = true;
                        whole[8] &= !0x0C;
                    }
                }
                out.push(whole.freeze());
                Step::Header
            }
        };
        self.webp_next(left, taken(chunk), Webp { step, frame, icc })
    }

    /// Moves on after `taken` bytes of the container were consumed.
    fn webp_next(&mut self, left: u64, taken: u64, next: Webp) -> Result<(), MediaError> {
        let left = left - taken;
        let frame = next.frame.saturating_sub(taken);
        self.state = if left == 0 && next.step == Step::Header {
            State::Trailer
        } else {
            State::Webp {
                left,
                chunk: Webp {
                    step: next.step,
                    frame,
                    icc: next.icc,
                },
            }
        };
        Ok(())
    }
}
