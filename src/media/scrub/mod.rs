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
//! WebP's metadata chunks are blanked in place instead (see [`webp`]), and
//! so are the metadata items of HEIF, HEIC and AVIF files (see [`heif`]). Other formats pass through unchanged;
//! [`Scrubbed::stripped`] says which happened. The same parse also finds the
//! EXIF orientation and rejects JPEG, PNG and WebP streams that end before
//! their end-of-image marker (or RIFF size).
//!
//! Each format's parser lives in a module of its own, with a state type
//! whose `push` takes the next bytes and says what comes next ([`Next`]:
//! more of the format, or the trailer; a HEIF runs to the end of the file);
//! what the parsers share (the bytes held, the orientation, whether
//! anything changed) is a [`Stream`] from the [`stream`] module, which they
//! import. The [`Scrubber`] tells the format and hands each chunk to its
//! parser.
use bytes::Bytes;
#[cfg(test)]
use image::metadata::Orientation;

use super::MediaError;
#[cfg(doc)]
use super::limits::JpegDecodeWork;

mod heif;
mod icc;
mod jpeg;
mod png;
mod stream;
mod webp;

use heif::Heif;
pub use heif::{MAX_HEIF_META, Rescrub, heif_dimensions, heif_meta_after_media, heif_type};
use jpeg::Jpeg;
pub use jpeg::MAX_JPEG_SEGMENTS;
use png::{PNG_SIGNATURE, Png};
use stream::{Next, Stream};
use webp::Webp;

/// What the scrubber found, once the stream has ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scrubbed {
    /// The EXIF orientation, 1 (upright) to 8; 1 when there was none.
    pub orientation: u8,
    /// Identifying metadata was removed (the format is one the scrubber
    /// rewrites, and the service was not told to keep metadata).
    pub stripped: bool,
    /// The stored bytes differ from the uploaded ones.
    pub changed: bool,
    /// A HEIF whose metadata items came before its `meta` box: the bytes
    /// written must be streamed once more through this before anyone may
    /// read them (see [`Scrubber::may_rescrub`]).
    pub rescrub: Option<Rescrub>,
    /// A HEIF whose `meta` box came after `mdat`: its primary image's
    /// width and height as viewed, read from that box (the header the
    /// content inspector reads does not hold it).
    pub late_size: Option<(u32, u32)>,
}

/// A streaming rewriter of an image's bytes; see the module documentation.
pub struct Scrubber {
    /// What the format parsers share: bytes held, orientation, changes.
    stream: Stream,
    state: State,
    /// Most pixels of image data followed in one file (an APNG's
    /// frames together).
    max_pixels: u64,
    /// Most passes over its coefficients a JPEG's scans may take to
    /// decode (`--max-jpeg-decode-passes`).
    max_jpeg_passes: u32,
    /// A JPEG's decode work in passes, once its end-of-image went by.
    jpeg_passes: Option<f64>,
}

/// Where in the upload the scrubber is: the format found, with its
/// parser's state.
enum State {
    /// Waiting for enough bytes to tell the format.
    Sniff,
    /// Not a format the scrubber rewrites: everything passes.
    Pass,
    Jpeg(Jpeg),
    Png(Png),
    /// Inside a WebP's RIFF container.
    Webp(Webp),
    /// Inside a HEIF-family file (HEIC, HEIF, AVIF); see [`heif`].
    Heif(Box<Heif>),
    /// After the end-of-image marker: the rest is dropped.
    Trailer,
}

/// The scrubber's state after a step of a format's parser: `format` wraps
/// the parser's next state.
fn after<S>(next: Next<S>, format: fn(S) -> State) -> State {
    match next {
        Next::Stay(state) => format(state),
        Next::Trailer => State::Trailer,
    }
}

impl Scrubber {
    /// A scrubber that follows image data without bound on its pixels
    /// (the content check bounds a still's) nor on a JPEG's decode work.
    pub fn new(keep_metadata: bool) -> Self {
        Self::bounded(keep_metadata, u64::MAX, u32::MAX)
    }

    /// A scrubber that refuses a file whose image data it would follow
    /// over more than `max_pixels` pixels in all (an APNG's frames
    /// together; `--max-image-pixels`), and a JPEG whose scans take more
    /// than `max_jpeg_passes` passes over its coefficients to decode
    /// (`--max-jpeg-decode-passes`, see [`JpegDecodeWork`]).
    pub fn bounded(keep_metadata: bool, max_pixels: u64, max_jpeg_passes: u32) -> Self {
        Self {
            stream: Stream::new(keep_metadata),
            state: State::Sniff,
            max_pixels,
            max_jpeg_passes,
            jpeg_passes: None,
        }
    }

    /// Takes the next chunk of the upload; appends what is to be stored to
    /// `out` (slices of `chunk` wherever possible).
    pub fn push(&mut self, mut chunk: Bytes, out: &mut Vec<Bytes>) -> Result<(), MediaError> {
        while !chunk.is_empty() {
            let stream = &mut self.stream;
            match &mut self.state {
                State::Sniff => self.sniff(&mut chunk, out)?,
                State::Pass => out.push(std::mem::take(&mut chunk)),
                State::Trailer if stream.keep_metadata => out.push(std::mem::take(&mut chunk)),
                State::Trailer => {
                    stream.changed = true;
                    chunk.clear();
                }
                State::Jpeg(jpeg) => {
                    if let Next::Trailer = jpeg.push(stream, &mut chunk, out)? {
                        self.jpeg_passes = Some(jpeg.decode_passes());
                        self.state = State::Trailer;
                    }
                }
                State::Png(png) => {
                    let png = std::mem::replace(png, Png::START);
                    self.state = after(png.push(stream, &mut chunk, out)?, State::Png);
                }
                State::Webp(webp) => {
                    self.state = after(webp.push(stream, &mut chunk, out)?, State::Webp);
                }
                State::Heif(heif) => heif.push(stream, &mut chunk, out)?,
            }
        }
        Ok(())
    }

    /// Refuses `jpeg`, a JPEG held whole (a HEIF's JPEG-coded item, which
    /// libheif hands to libjpeg), as an upload of it would be refused: more
    /// than [`crate::media::limits::MAX_JPEG_SCANS`] scans, or scans that
    /// take more than `max_passes` passes over its coefficients
    /// (`--max-jpeg-decode-passes`), or not a JPEG from its first byte
    /// (its headers kept apart, in a `jpgC` property, cannot be counted).
    pub fn check_whole_jpeg(jpeg: Bytes, max_passes: u32) -> Result<(), MediaError> {
        let mut scrubber = Self::bounded(true, u64::MAX, max_passes);
        let mut out = Vec::new();
        scrubber.push(jpeg, &mut out)?;
        match scrubber.jpeg_decode_passes() {
            Some(_) => Ok(()),
            None => Err(MediaError::invalid(
                "a JPEG-coded image of the HEIF is not a whole JPEG (one whose headers \
                 are kept apart from its data is not decoded)",
            )),
        }
    }

    /// A JPEG's decode work so far, in passes over its coefficients
    /// ([`JpegDecodeWork`]); `None` for other formats.
    pub fn jpeg_decode_passes(&self) -> Option<f64> {
        match &self.state {
            State::Jpeg(jpeg) => Some(jpeg.decode_passes()),
            _ => self.jpeg_passes,
        }
    }

    /// Whether the output differs from the input so far: a byte was
    /// dropped or inserted.
    pub fn changed(&self) -> bool {
        self.stream.changed
    }

    /// Bytes of one structure the scrubber holds, or will hold once they
    /// arrive (a HEIF's `meta` box whose length it has read).
    pub fn holding(&self) -> u64 {
        let held = self.stream.pending.len() as u64;
        match &self.state {
            State::Heif(heif) => heif.holding().unwrap_or(held),
            _ => held,
        }
    }

    /// Whether the bytes output so far may need a second pass
    /// ([`Scrubbed::rescrub`]): a HEIF being stripped whose metadata items
    /// may lie before its `meta` box (none read yet), or do (one read
    /// pointed behind itself). Until this is false, what was output must
    /// be kept where no caller can read it.
    pub fn may_rescrub(&self) -> bool {
        !self.stream.keep_metadata
            && match &self.state {
                State::Sniff => true,
                State::Heif(heif) => heif.may_point_behind(),
                _ => false,
            }
    }

    /// Ends the stream: flushes what is held and reports what was found.
    pub fn finish(mut self, out: &mut Vec<Bytes>) -> Result<Scrubbed, MediaError> {
        let stream = &mut self.stream;
        let mut late = (None, None);
        let stripped = match &mut self.state {
            State::Sniff | State::Pass => {
                if !stream.pending.is_empty() {
                    out.push(stream.pending.split().freeze());
                }
                false
            }
            State::Trailer => !stream.keep_metadata,
            State::Jpeg(_) => {
                return Err(MediaError::invalid(
                    "the JPEG is truncated: it ends before its end-of-image marker",
                ));
            }
            State::Png(_) => {
                return Err(MediaError::invalid(
                    "the PNG is truncated: it ends before its IEND chunk",
                ));
            }
            State::Webp(_) => {
                return Err(MediaError::invalid(
                    "the WebP is truncated: it ends before its RIFF size",
                ));
            }
            State::Heif(heif) => {
                heif.complete(stream.pending.len())?;
                late = heif.take_late();
                !stream.keep_metadata
            }
        };
        let (rescrub, late_size) = late;
        Ok(Scrubbed {
            orientation: stream.orientation,
            stripped,
            changed: stream.changed,
            rescrub,
            late_size,
        })
    }

    fn sniff(&mut self, chunk: &mut Bytes, out: &mut Vec<Bytes>) -> Result<(), MediaError> {
        if !self.stream.fill(chunk, SNIFF_LEN) {
            return Ok(());
        }
        let head = self.stream.pending.split().freeze();
        if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
            // SOI; the bytes after it are parsed like any others.
            out.push(head.slice(..2));
            self.state = State::Jpeg(Jpeg::start(self.max_jpeg_passes));
            self.push(head.slice(2..), out)
        } else if head[..8] == PNG_SIGNATURE {
            out.push(head.slice(..8));
            self.state = State::Png(Png::bounded(self.max_pixels));
            self.push(head.slice(8..), out)
        } else if &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
            // The RIFF size counts from the form type on. The header is
            // held until the first chunk says whether the size stays.
            let size = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            self.stream.pending.extend_from_slice(&head[..12]);
            self.state = State::Webp(Webp::start(u64::from(size).saturating_sub(4)));
            self.push(head.slice(12..), out)
        } else if heif::is_heif(&head) {
            // The ftyp box is parsed like any other box.
            self.state = State::Heif(Box::new(Heif::new()));
            self.push(head, out)
        } else {
            out.push(head);
            self.state = State::Pass;
            Ok(())
        }
    }
}

/// Bytes that tell the formats apart (a RIFF header with its form type).
const SNIFF_LEN: usize = 12;

#[cfg(test)]
mod tests;
