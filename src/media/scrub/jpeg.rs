//! JPEG: segment by segment, with the scan data passed through as slices.
use bytes::Bytes;

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Jpeg {
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
pub(super) enum Action {
    Keep,
    Drop,
    /// Collect the whole payload, then decide (EXIF, ICC).
    Inspect,
}

const SOS: u8 = 0xDA;

const EOI: u8 = 0xD9;

/// Most JPEG marker segments outside scan data. A camera JPEG has about
/// ten, a progressive one a few dozen (a DHT and an SOS per scan); a file
/// with more is built to make every segment cost a parse and a piece.
pub const MAX_JPEG_SEGMENTS: u32 = 10_000;

fn corrupt_jpeg() -> MediaError {
    MediaError::invalid("the JPEG's marker structure is corrupt")
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

impl Scrubber {
    pub(super) fn jpeg(
        &mut self,
        state: Jpeg,
        chunk: &mut Bytes,
        out: &mut Vec<Bytes>,
    ) -> Result<(), MediaError> {
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

    fn jpeg_marker(&mut self, chunk: &mut Bytes, out: &mut Vec<Bytes>) -> Result<(), MediaError> {
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
                return Err(MediaError::invalid(format!(
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
                return Err(MediaError::invalid(
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
        while let Some(found) = memchr::memchr(0xFF, &chunk[at..]) {
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
}
