//! What the format scrubbers share as an upload streams through them: the
//! bytes of the structure being collected, what was found on the way (the
//! EXIF orientation, JPEG's segment count) and whether the output still
//! copies the input; and [`Next`], what each step of a format's parser
//! says comes after it.
//!
//! The scrubber ([`super::Scrubber`]) owns one [`Stream`] and hands it to
//! the parser of the format it found; the parsers import this module and
//! never their parent.
use bytes::{Bytes, BytesMut};

/// The state the format parsers share over one upload.
pub(super) struct Stream {
    /// Metadata is kept: only the orientation is read.
    pub(super) keep_metadata: bool,
    /// Bytes of a structure not yet complete (a marker, a segment header, an
    /// EXIF block), at most one structure.
    pub(super) pending: BytesMut,
    /// The EXIF orientation found so far, 1 (upright) to 8.
    pub(super) orientation: u8,
    /// Some byte was dropped or inserted: the output is no longer a copy
    /// of the input.
    pub(super) changed: bool,
    /// JPEG marker segments seen (see [`super::MAX_JPEG_SEGMENTS`]).
    pub(super) segments: u32,
}

/// What follows one step of a format's parser.
pub(super) enum Next<S> {
    /// More of the format, in this state of its parser.
    Stay(S),
    /// The image has ended (JPEG's end-of-image marker, PNG's `IEND`,
    /// WebP's RIFF size): the bytes after it are a trailer.
    Trailer,
}

impl Stream {
    pub(super) fn new(keep_metadata: bool) -> Self {
        Self {
            keep_metadata,
            pending: BytesMut::new(),
            orientation: 1,
            changed: false,
            segments: 0,
        }
    }

    /// Moves up to `n` bytes from `chunk` into `pending`; true once `pending`
    /// holds `n` bytes.
    pub(super) fn fill(&mut self, chunk: &mut Bytes, n: usize) -> bool {
        let want = n.saturating_sub(self.pending.len()).min(chunk.len());
        self.pending.extend_from_slice(&chunk.split_to(want));
        self.pending.len() >= n
    }

    /// The big-endian 32-bit length and the type that open a PNG chunk or
    /// an ISO-BMFF box, from the first 8 bytes of `pending`.
    pub(super) fn length_and_kind(&self) -> (u32, [u8; 4]) {
        let p = &self.pending;
        (
            u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
            [p[4], p[5], p[6], p[7]],
        )
    }

    /// Takes the orientation of the EXIF (TIFF) block `tiff`, if it has one.
    pub(super) fn note_orientation(&mut self, tiff: &[u8]) {
        if let Some(orientation) = image::metadata::Orientation::from_exif_chunk(tiff) {
            self.orientation = orientation.to_exif();
        }
    }
}

/// A big-endian TIFF structure with one IFD holding one entry: Orientation.
pub(super) fn minimal_tiff(orientation: u8) -> [u8; 26] {
    let mut tiff = [0u8; 26];
    tiff[..8].copy_from_slice(b"MM\0\x2A\0\0\0\x08");
    tiff[8..10].copy_from_slice(&1u16.to_be_bytes()); // one entry
    tiff[10..12].copy_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff[12..14].copy_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff[14..18].copy_from_slice(&1u32.to_be_bytes()); // count
    tiff[18..20].copy_from_slice(&u16::from(orientation).to_be_bytes());
    // Value padding (2 bytes) and the next-IFD offset (0) stay zero.
    tiff
}
