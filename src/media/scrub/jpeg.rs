//! JPEG: segment by segment, with the scan data passed through as slices.
//!
//! An allow-list: the segments that decide how the pixels decode are kept
//! (the frame header, one and only to its defined length: a second one is
//! refused; tables, each at its defined length, filling their segment,
//! at most [`MAX_JPEG_TABLES`] before a scan, and each only where it is
//! used: held until the frame header (quantization tables its components
//! name) or a scan (the Huffman tables its components name, of the
//! classes its coding reads, and the frame's quantization tables still
//! held) and output just before it, a table redefined first or never
//! used being dropped, and so a quantization table redefined once every
//! component using it has had its first scan (libjpeg takes a component's
//! table then; jpeg-decoder at its last scan, so such a file decodes alike
//! in both once the table is gone), and every quantization table of a
//! lossless frame, which reads none; a Huffman table a scan uses is a
//! prefix code of symbols, each once, that such a scan can code, else the
//! file is refused (which valid symbols, in what order, is how the image
//! is coded and is left as it came); scan headers to their defined length,
//! at most [`MAX_JPEG_SCANS`] of them, kept metadata or not; APP0 JFIF
//! without its thumbnail, APP2 ICC
//! profiles, APP14 Adobe colour transform, each JFIF and Adobe only the
//! first and before the frame header, where decoders read them; a DRI
//! restart interval only where it changes the interval in force, at most
//! one before each scan, and a second change before the same scan, or a
//! DRI of another length than 4, refuses the file); APP1 EXIF
//! becomes a minimal block holding only the orientation; every other
//! segment (XMP, MPF, APP13 IPTC, vendor segments, comments, extension and
//! reserved markers) is dropped, and so are the bytes after EOI.
//!
//! Scan data is passed without being decoded. Fill bytes (runs of `FF`)
//! are legal before any marker, and a damaged scan (an `FF` run followed by
//! a byte no decoder acts on as a marker) is more scan data, as
//! libjpeg-turbo reads it. Once a scan has begun, bytes where a marker was
//! expected are damaged scan data too: decoders skip them to the next
//! marker.
//!
//! Tables held go out as they came when every one of them is used and
//! nothing but a DRI came in between (a file that defines its tables just
//! before the frame or scan that uses them stays byte for byte), else in
//! one DQT and one DHT segment; a DRI that came after them goes out with
//! them.
//!
//! Bounds: memory held is at most one segment (64 KiB + 4 bytes, for the
//! segments that are inspected), a fixed 26-byte EXIF replacement, the
//! tables held (4 quantization tables of at most 129 bytes, 8 Huffman
//! tables of at most 273) and, until the first of them goes out, the
//! segments they came in (at most [`MAX_JPEG_TABLES`] tables, about
//! 18 KiB); the other output pieces are slices of the input. Work is
//! linear in the input: every byte is looked at a bounded number of
//! times, and at most
//! [`MAX_JPEG_SEGMENTS`] marker segments are parsed.
use bytes::Bytes;

use super::icc;
use super::stream::{Next, Stream, minimal_tiff};
use crate::media::MediaError;
use crate::media::limits::{JpegDecodeWork, MAX_JPEG_SCANS};

/// The JPEG parser's state: where in the file it is, and the tables
/// defined but not yet used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Jpeg {
    step: Step,
    tables: Box<Tables>,
    /// The decode work of the scans so far, and the most allowed, in
    /// passes (`--max-jpeg-decode-passes`).
    work: JpegDecodeWork,
    max_passes: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Expecting a marker (`FF xx`, fill bytes allowed).
    Marker { seen: Seen },
    /// A segment's marker and length are known; its payload comes next.
    Payload {
        marker: u8,
        len: usize,
        action: Action,
        seen: Seen,
    },
    /// Inside entropy-coded scan data, scanning for the next marker.
    Scan { seen: Seen },
}

/// What the segments so far have set, for the segments a JPEG holds once
/// (or once per scan).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Seen {
    /// A scan has begun.
    scanned: bool,
    /// A frame header (SOFn) went by: JFIF and Adobe belong before it.
    frame: bool,
    /// A JFIF APP0, an Adobe APP14 was kept.
    jfif: bool,
    adobe: bool,
    /// The restart interval in force (0: none), and whether a DRI was
    /// kept since the last scan.
    restart: u16,
    restart_kept: bool,
    /// Quantization and Huffman tables defined since the last scan began.
    tables: u8,
    /// The quantization table ids of the frame's components that have
    /// not had a scan yet, a bit each: decoders (libjpeg) take a
    /// component's table at its first scan, so a table redefined after
    /// that, for no component still to come, is never read.
    quantization: u8,
    /// The frame's sample precision in bits (8 or 12 for DCT frames, up to
    /// 16 for lossless ones), and whether it is lossless (SOF3, SOF7,
    /// SOF11, SOF15): what a Huffman table's symbols may code.
    precision: u8,
    lossless: bool,
    /// The frame is progressive with Huffman coding (SOF2, SOF6): its
    /// scans use DC or AC tables, not both.
    progressive: bool,
    /// Scan headers so far, at most [`MAX_JPEG_SCANS`], whether metadata
    /// is kept or not.
    scans: u32,
}

impl Jpeg {
    /// Right after the start-of-image marker; the file's scans may take
    /// at most `max_passes` passes to decode ([`JpegDecodeWork`]).
    pub(super) fn start(max_passes: u32) -> Jpeg {
        Jpeg {
            step: Step::Marker {
                seen: Seen {
                    scanned: false,
                    frame: false,
                    jfif: false,
                    adobe: false,
                    restart: 0,
                    restart_kept: false,
                    tables: 0,
                    quantization: 0,
                    precision: 0,
                    lossless: false,
                    progressive: false,
                    scans: 0,
                },
            },
            tables: Box::new(Tables::NONE),
            work: JpegDecodeWork::default(),
            max_passes,
        }
    }

    /// The decode work of the scans so far, in passes.
    pub(super) fn decode_passes(&self) -> f64 {
        self.work.passes()
    }

    /// Takes the next bytes of the JPEG from `chunk`; says what comes next.
    pub(super) fn push(
        &mut self,
        stream: &mut Stream,
        chunk: &mut Bytes,
        out: &mut Vec<Bytes>,
    ) -> Result<Next<()>, MediaError> {
        Ok(
            match self.step.push(
                &mut self.tables,
                (&mut self.work, self.max_passes),
                stream,
                chunk,
                out,
            )? {
                Next::Stay(step) => {
                    self.step = step;
                    Next::Stay(())
                }
                Next::Trailer => Next::Trailer,
            },
        )
    }
}

/// Quantization and Huffman tables defined and not yet used: each is held
/// until the frame (quantization) or a scan (both) names it, and goes out
/// just before that frame or scan header; a table redefined first, or
/// never named, is dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Tables {
    /// Quantization tables by id (empty: none pending), each whole with
    /// its precision and id byte.
    quantization: [Vec<u8>; 4],
    /// Huffman tables by class (DC, AC) and id: `4 * class + id`.
    huffman: [Vec<u8>; 8],
    /// The segments the pending tables came in, as they came, while they
    /// may still go out so (every one of them used, and nothing went out
    /// since the first).
    segments: Vec<u8>,
    /// A pending table was replaced or dropped, or other bytes went out
    /// after it: the tables go out in segments of their own.
    moved: bool,
    /// A restart interval (DRI) segment that came after pending tables:
    /// it goes out with them (it holds for the next scan wherever it is
    /// before it).
    restart: Option<Bytes>,
    /// The frame's components that have not had a scan yet: id and
    /// quantization table id.
    unscanned: Vec<[u8; 2]>,
}

impl Tables {
    const NONE: Tables = Tables {
        quantization: [Vec::new(), Vec::new(), Vec::new(), Vec::new()],
        huffman: [
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        ],
        segments: Vec::new(),
        moved: false,
        restart: None,
        unscanned: Vec::new(),
    };

    /// Holds a DRI `segment` that came after pending tables.
    fn hold_restart(&mut self, segment: Bytes) {
        if !self.moved {
            self.segments.extend_from_slice(&segment);
        }
        self.restart = Some(segment);
    }

    fn pending(&self) -> bool {
        self.quantization
            .iter()
            .chain(&self.huffman)
            .any(|table| !table.is_empty())
    }

    /// Bytes other than the pending tables go out (or the tables do not
    /// go out as they came).
    fn moved(&mut self, stream: &mut Stream) {
        if self.pending() {
            self.moved = true;
            self.segments = Vec::new();
            stream.changed = true;
        }
    }

    /// Holds `table` of `marker`'s kind (its first byte the class or
    /// precision and the id), replacing a pending one of the same id.
    fn hold(&mut self, stream: &mut Stream, marker: u8, table: &[u8]) {
        let (class, id) = (usize::from(table[0] >> 4), usize::from(table[0] & 0x0F));
        let slot = if marker == DQT {
            &mut self.quantization[id]
        } else {
            &mut self.huffman[4 * class + id]
        };
        let replaced = !slot.is_empty();
        slot.clear();
        slot.extend_from_slice(table);
        if replaced {
            self.moved(stream);
        }
    }

    /// Outputs the pending quantization tables of the ids in `quantization`
    /// and Huffman tables of the slots in `huffman` (a bit each), as they
    /// came when they are all that is pending and nothing went out since,
    /// else in one segment of each kind.
    fn emit(&mut self, stream: &mut Stream, quantization: u8, huffman: u8, out: &mut Vec<Bytes>) {
        let mut tables = [Vec::new(), Vec::new()];
        for (bit, table) in self.quantization.iter_mut().enumerate() {
            if quantization & (1 << bit) != 0 {
                tables[0].append(table);
            }
        }
        for (bit, table) in self.huffman.iter_mut().enumerate() {
            if huffman & (1 << bit) != 0 {
                tables[1].append(table);
            }
        }
        if !self.moved && !self.pending() {
            if !self.segments.is_empty() {
                out.push(Bytes::from(std::mem::take(&mut self.segments)));
            }
            self.restart = None;
        } else {
            for (marker, tables) in [DQT, DHT].into_iter().zip(tables) {
                if !tables.is_empty() {
                    stream.changed = true;
                    out.push(jpeg_segment(marker, &tables));
                }
            }
            out.extend(self.restart.take());
            // The frame or scan header goes out next, between pending
            // tables and where they came.
            self.moved(stream);
        }
        if !self.pending() {
            self.segments = Vec::new();
            self.moved = false;
        }
    }

    /// Drops the pending quantization tables of ids not in `used`.
    fn drop_quantization(&mut self, stream: &mut Stream, used: u8) {
        for (bit, table) in self.quantization.iter_mut().enumerate() {
            if used & (1 << bit) == 0 && !table.is_empty() {
                table.clear();
                self.moved = true;
                stream.changed = true;
            }
        }
        if self.moved {
            self.segments = Vec::new();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    Keep,
    Drop,
    /// Collect the whole payload, then decide (EXIF, JFIF, ICC, Adobe).
    Inspect,
}

const SOS: u8 = 0xDA;
const DHT: u8 = 0xC4;
const DQT: u8 = 0xDB;

/// Most quantization and Huffman tables defined between two scans (or
/// before the first). A JPEG uses at most 4 of each kind, and a
/// progressive one defines a few before each scan; more are tables
/// nothing uses, defined again and again.
const MAX_JPEG_TABLES: u8 = 64;
const DRI: u8 = 0xDD;

/// Frame headers: SOF0 to SOF15 but DHT (C4), JPG (C8) and DAC (CC).
fn is_frame(marker: u8) -> bool {
    matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

/// What opens an APP2 segment holding (part of) an ICC profile; its
/// sequence number and the count of segments follow.
const ICC_TAG: &[u8] = b"ICC_PROFILE\0";

const EOI: u8 = 0xD9;

/// Most JPEG marker segments outside scan data. A camera JPEG has about
/// ten, a progressive one a few dozen (a DHT and an SOS per scan); a file
/// with more is built to make every segment cost a parse and a piece.
pub const MAX_JPEG_SEGMENTS: u32 = 10_000;

/// The JFIF APP0 payload without a thumbnail: identifier, version, density
/// units, densities and two zero thumbnail dimensions.
const JFIF_LEN: usize = 14;

/// The Adobe APP14 payload: identifier, version, two flag words and the
/// colour transform.
const ADOBE_LEN: usize = 12;

fn corrupt_jpeg() -> MediaError {
    MediaError::invalid("the JPEG's marker structure is corrupt")
}

/// Markers that end a scan and that decoders act on: frame headers
/// (SOFn), tables (DHT, DAC, DQT), DNL, DRI, the next scan, EOI,
/// application segments and comments. After an `FF` in a scan, any other
/// byte (stuffed zero, restart marker, or the damage of a corrupted block)
/// is scan data.
pub(super) fn ends_scan(marker: u8) -> bool {
    matches!(
        marker,
        0xC0..=0xC7 | 0xC9..=0xCF | 0xD9..=0xDD | 0xE0..=0xEF | 0xFE
    )
}

/// A segment with `marker` and `payload`.
fn jpeg_segment(marker: u8, payload: &[u8]) -> Bytes {
    let mut segment = Vec::with_capacity(4 + payload.len());
    segment.extend_from_slice(&[0xFF, marker]);
    segment.extend_from_slice(&((2 + payload.len()) as u16).to_be_bytes());
    segment.extend_from_slice(payload);
    Bytes::from(segment)
}

/// An APP1 segment carrying only the orientation.
fn minimal_jpeg_exif(orientation: u8) -> Bytes {
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend_from_slice(&minimal_tiff(orientation));
    jpeg_segment(0xE1, &payload)
}

impl Step {
    /// Takes the next bytes of the JPEG from `chunk`; says what comes next.
    fn push(
        self,
        tables: &mut Tables,
        (work, max_passes): (&mut JpegDecodeWork, u32),
        stream: &mut Stream,
        chunk: &mut Bytes,
        out: &mut Vec<Bytes>,
    ) -> Result<Next<Step>, MediaError> {
        let next = match self {
            Step::Marker { seen } => return marker(stream, tables, seen, chunk, out),
            Step::Payload {
                marker,
                len,
                action: Action::Inspect,
                mut seen,
            } => {
                if !stream.fill(chunk, 4 + len) {
                    return Ok(Next::Stay(self));
                }
                let segment = stream.pending.split().freeze();
                // Counted whether metadata is kept or not: the decoders
                // read these headers either way.
                if is_frame(marker) {
                    work.frame(marker, &segment[4..]);
                } else if marker == SOS {
                    work.scan(&segment[4..]);
                    work.check(max_passes)?;
                }
                inspect_segment(stream, tables, &mut seen, marker, segment, out)?;
                if marker == SOS {
                    Step::Scan {
                        seen: scanning(seen),
                    }
                } else {
                    Step::Marker { seen }
                }
            }
            Step::Payload {
                marker,
                len,
                action,
                seen,
            } => {
                let n = len.min(chunk.len());
                let part = chunk.split_to(n);
                if action == Action::Keep {
                    out.push(part);
                } else if n > 0 {
                    stream.changed = true;
                }
                if len > n {
                    Step::Payload {
                        marker,
                        len: len - n,
                        action,
                        seen,
                    }
                } else if marker == SOS {
                    Step::Scan {
                        seen: scanning(seen),
                    }
                } else {
                    Step::Marker { seen }
                }
            }
            Step::Scan { seen } => scan(stream, seen, chunk, out),
        };
        Ok(Next::Stay(next))
    }
}

/// What is in force once a scan has begun.
fn scanning(seen: Seen) -> Seen {
    Seen {
        scanned: true,
        restart_kept: false,
        tables: 0,
        ..seen
    }
}

/// A marker, and the length of its segment: what follows `FF xx`.
fn marker(
    stream: &mut Stream,
    tables: &mut Tables,
    mut seen: Seen,
    chunk: &mut Bytes,
    out: &mut Vec<Bytes>,
) -> Result<Next<Step>, MediaError> {
    let scanned = seen.scanned;
    let waiting = Next::Stay(Step::Marker { seen });
    // Until the marker code is known (a segment's length may still be
    // to come when a chunk ends inside it).
    if stream.pending.len() < 2 {
        if !stream.fill(chunk, 1) {
            return Ok(waiting);
        }
        if stream.pending[0] != 0xFF {
            if scanned {
                // Damage after a scan: decoders skip to the next marker.
                out.push(stream.pending.split().freeze());
                return Ok(Next::Stay(Step::Scan { seen }));
            }
            return Err(corrupt_jpeg());
        }
        // Fill bytes: all pass but the last `FF`, which stays pending.
        let fill = chunk.iter().take_while(|&&b| b == 0xFF).count();
        if fill > 0 {
            tables.moved(stream);
            out.push(chunk.split_to(fill));
        }
        if !stream.fill(chunk, 2) {
            return Ok(waiting);
        }
        let marker = stream.pending[1];
        if scanned && !ends_scan(marker) {
            out.push(stream.pending.split().freeze());
            return Ok(Next::Stay(Step::Scan { seen }));
        }
        stream.segments += 1;
        if stream.segments > MAX_JPEG_SEGMENTS {
            return Err(MediaError::invalid(format!(
                "the JPEG has more than {MAX_JPEG_SEGMENTS} marker segments"
            )));
        }
        match marker {
            EOI => {
                // Tables no scan used are dropped with the rest.
                if tables.pending() {
                    stream.changed = true;
                }
                out.push(stream.pending.split().freeze());
                return Ok(Next::Trailer);
            }
            // TEM and the restart markers belong inside scan data (where
            // `scan` passes them); before any scan they mean a corrupt or
            // a crafted file.
            0x01 | 0xD0..=0xD7 => {
                return Err(MediaError::invalid(
                    "the JPEG has a marker outside scan data that belongs inside it",
                ));
            }
            0x00 | 0xD8 => return Err(corrupt_jpeg()),
            _ => {}
        }
    }
    if !stream.fill(chunk, 4) {
        return Ok(waiting);
    }
    let marker = stream.pending[1];
    let len = usize::from(u16::from_be_bytes([stream.pending[2], stream.pending[3]]));
    if len < 2 {
        if scanned {
            // Damage that only looked like a marker.
            out.push(stream.pending.split().freeze());
            return Ok(Next::Stay(Step::Scan { seen }));
        }
        return Err(corrupt_jpeg());
    }
    if is_frame(marker) {
        // One frame per image: a second frame header (a hierarchical
        // file, or room for chosen bytes) is no image the service shows.
        if seen.frame {
            return Err(MediaError::invalid(
                "the JPEG has more than one frame header",
            ));
        }
        seen.frame = true;
    }
    if marker == SOS {
        // Every scan is a pass over the image's coefficients when decoded.
        seen.scans += 1;
        if seen.scans > MAX_JPEG_SCANS {
            return Err(MediaError::invalid(format!(
                "the JPEG has more than {MAX_JPEG_SCANS} scans"
            )));
        }
    }
    let action = action(stream.keep_metadata, marker);
    if action != Action::Drop && !matches!(marker, DQT | DHT | DRI | SOS) && !is_frame(marker) {
        // Bytes that go out between the pending tables and where they
        // are used.
        tables.moved(stream);
    }
    match action {
        Action::Keep => out.push(stream.pending.split().freeze()),
        Action::Drop => {
            stream.changed = true;
            stream.pending.clear();
        }
        // The header stays pending with the payload to come.
        Action::Inspect => {}
    }
    Ok(Next::Stay(Step::Payload {
        marker,
        len: len - 2,
        action,
        seen,
    }))
}

/// Entropy-coded data: an `FF` (or a run of them) followed by a marker
/// that ends the scan (see [`ends_scan`]) ends it; followed by anything
/// else (a stuffed zero, a restart marker, damage) it is scan data.
fn scan(stream: &mut Stream, seen: Seen, chunk: &mut Bytes, out: &mut Vec<Bytes>) -> Step {
    let mut at = 0;
    while let Some(found) = memchr::memchr(0xFF, &chunk[at..]) {
        let ff = at + found;
        let end = ff + chunk[ff..].iter().take_while(|&&b| b == 0xFF).count();
        match chunk.get(end) {
            Some(&next) if !ends_scan(next) => at = end + 1,
            // A marker, or the chunk ends in `FF`: the last `FF` stays
            // pending and the next byte decides.
            _ => {
                out.push(chunk.split_to(end - 1));
                stream.pending.extend_from_slice(&chunk.split_to(1));
                return Step::Marker { seen };
            }
        }
    }
    out.push(std::mem::take(chunk));
    Step::Scan { seen }
}

/// What becomes of the segment `marker` opens.
fn action(keep_metadata: bool, marker: u8) -> Action {
    match marker {
        // EXIF (APP1) is read for its orientation even when kept.
        0xE1 => Action::Inspect,
        // Frame and scan headers: read for the work they make a decoder
        // do even when kept, and else kept to their defined length (scan
        // headers after the tables they use).
        SOS => Action::Inspect,
        _ if is_frame(marker) => Action::Inspect,
        _ if keep_metadata => Action::Keep,
        // Arithmetic-coding conditioning (DAC) and DNL.
        0xCC | 0xDC => Action::Keep,
        // Quantization and Huffman tables: read for their lengths, held
        // until used.
        DQT | DHT => Action::Inspect,
        // JFIF, ICC profiles, Adobe: kept when they are what they say;
        // restart intervals, when they change the one in force.
        0xE0 | 0xE2 | 0xEE | DRI => Action::Inspect,
        // Every other application segment, comments, extensions.
        _ => Action::Drop,
    }
}

/// An APP2 ICC profile, whole in one segment (sequence 1 of 1): kept
/// with its text blanked ([`icc`]). A malformed one is dropped, and so
/// is a profile cut across several segments (over 64 KiB, printer
/// profiles): its tags cannot be read without holding every segment,
/// and an image without one renders as sRGB.
fn keep_icc(stream: &mut Stream, segment: Bytes, out: &mut Vec<Bytes>) {
    let payload = &segment[4..];
    let mut profile = payload
        .get(ICC_TAG.len() + 2..)
        .unwrap_or_default()
        .to_vec();
    let whole = payload.get(ICC_TAG.len()..ICC_TAG.len() + 2) == Some(&[1, 1][..]);
    match whole.then(|| icc::blank_profile_text(&mut profile)) {
        Some(Ok(false)) => out.push(segment),
        Some(Ok(true)) => {
            stream.changed = true;
            let head = &payload[..ICC_TAG.len() + 2];
            out.push(jpeg_segment(0xE2, &[head, &profile].concat()));
        }
        _ => stream.changed = true,
    }
}

/// A restart interval (DRI) that is kept (held with the tables pending
/// before it, to go out with them): one that changes the interval
/// in force, at most one before each scan (decoders use the last before
/// it, which has passed already when another comes: a second change is
/// refused). Another with the interval in force changes nothing and is
/// dropped.
fn keep_restart(
    stream: &mut Stream,
    tables: &mut Tables,
    seen: &mut Seen,
    segment: Bytes,
    out: &mut Vec<Bytes>,
) -> Result<(), MediaError> {
    let [interval_high, interval_low] = segment[4..] else {
        return Err(MediaError::invalid(
            "the JPEG's DRI segment is not 4 bytes long",
        ));
    };
    let interval = u16::from_be_bytes([interval_high, interval_low]);
    if interval == seen.restart {
        stream.changed = true;
    } else if seen.restart_kept {
        return Err(MediaError::invalid(
            "the JPEG changes its restart interval twice before one scan",
        ));
    } else {
        seen.restart = interval;
        seen.restart_kept = true;
        if tables.pending() {
            tables.hold_restart(segment);
        } else {
            out.push(segment);
        }
    }
    Ok(())
}

/// A DQT or DHT segment: tables of their defined lengths that fill it,
/// each of an id a decoder knows, and at most [`MAX_JPEG_TABLES`] of
/// them between two scans.
///
/// Each table is held until the frame or a scan uses it ([`Tables`]);
/// after the frame header, a quantization table of an id no component
/// uses is dropped at once.
fn check_tables(
    stream: &mut Stream,
    tables: &mut Tables,
    seen: &mut Seen,
    segment: &Bytes,
) -> Result<(), MediaError> {
    let marker = segment[1];
    let mut payload = &segment[4..];
    let corrupt = || MediaError::invalid("the JPEG's quantization or Huffman tables are corrupt");
    if payload.is_empty() {
        return Err(corrupt());
    }
    let (mut dropped, mut kept) = (false, false);
    while let Some(&kind) = payload.first() {
        let (class, id) = (kind >> 4, kind & 0x0F);
        if class > 1 || id > 3 {
            return Err(corrupt());
        }
        let len = if marker == DQT {
            // 64 entries of 8 or of 16 bits.
            1 + 64 * (usize::from(class) + 1)
        } else {
            // 16 counts of codes by length, then the symbols.
            let counts = payload.get(1..17).ok_or_else(corrupt)?;
            let symbols: usize = counts.iter().map(|&n| usize::from(n)).sum();
            if symbols > 256 {
                return Err(corrupt());
            }
            17 + symbols
        };
        let table = payload.get(..len).ok_or_else(corrupt)?;
        payload = &payload[len..];
        if marker == DQT && seen.frame && seen.quantization & (1 << id) == 0 {
            dropped = true;
        } else {
            kept = true;
            tables.hold(stream, marker, table);
        }
        seen.tables += 1;
        if seen.tables > MAX_JPEG_TABLES {
            return Err(MediaError::invalid(format!(
                "the JPEG defines more than {MAX_JPEG_TABLES} tables before a scan"
            )));
        }
    }
    if dropped {
        stream.changed = true;
    }
    if dropped && kept {
        tables.moved(stream);
    } else if !dropped && !tables.moved {
        tables.segments.extend_from_slice(segment);
    }
    Ok(())
}

/// A scan header, kept to its defined length (the count of components,
/// 2 bytes for each, the spectral selection and the successive
/// approximation), after the pending tables it uses: the quantization
/// tables of the frame's components and the Huffman tables the scan's
/// components name, of the classes its coding reads (a progressive
/// scan reads DC tables for a first DC scan, none for a DC refinement, AC
/// tables for an AC scan; any other reads both).
fn keep_scan(
    stream: &mut Stream,
    tables: &mut Tables,
    seen: &mut Seen,
    segment: Bytes,
    out: &mut Vec<Bytes>,
) -> Result<(), MediaError> {
    let payload = &segment[4..];
    let corrupt = || MediaError::invalid("the JPEG's scan header is corrupt");
    let components = usize::from(*payload.first().ok_or_else(corrupt)?);
    let defined = 1 + 2 * components + 3;
    if !(1..=4).contains(&components) || payload.len() < defined {
        return Err(corrupt());
    }
    let (start, approximation) = (payload[defined - 3], payload[defined - 1]);
    let (dc, ac) = match (seen.progressive, start) {
        // Lossless scans code differences with DC tables only.
        _ if seen.lossless => (true, false),
        (false, _) => (true, true),
        (true, 0) => (approximation >> 4 == 0, false),
        (true, _) => (false, true),
    };
    let mut huffman = 0u8;
    for component in payload[1..defined - 3].chunks_exact(2) {
        let (dc_id, ac_id) = (component[1] >> 4, component[1] & 0x0F);
        if (dc && dc_id > 3) || (ac && ac_id > 3) {
            return Err(corrupt());
        }
        if dc {
            huffman |= 1 << dc_id;
        }
        if ac {
            huffman |= 1 << (4 + ac_id);
        }
    }
    for (slot, table) in tables.huffman.iter().enumerate() {
        if huffman & (1 << slot) != 0 && !table.is_empty() {
            check_huffman(table, seen)?;
        }
    }
    tables.emit(stream, seen.quantization, huffman, out);
    // The scan's components have taken their quantization tables.
    let scanned = &payload[1..defined - 3];
    tables
        .unscanned
        .retain(|[id, _]| !scanned.chunks_exact(2).any(|c| c[0] == *id));
    seen.quantization = tables
        .unscanned
        .iter()
        .fold(0, |ids, [_, table]| ids | 1 << table);
    if payload.len() > defined {
        stream.changed = true;
        out.push(jpeg_segment(SOS, &payload[..defined]));
    } else {
        out.push(segment);
    }
    Ok(())
}

/// A Huffman `table` (class and id, 16 counts, symbols) a scan of the
/// frame `seen` describes is about to use: its code lengths form a prefix
/// code, and each symbol, once, is one such a scan can code (T.81 F.1.2,
/// G.1.2, H.1.2). Any other symbol is never read: room for chosen bytes.
/// Which valid symbols a table holds, and in what order, is left as it
/// came: that is how the image is coded.
fn check_huffman(table: &[u8], seen: &Seen) -> Result<(), MediaError> {
    let (counts, symbols) = table[1..].split_at(16);
    // Codes free at each length, from the one empty code at length 0.
    let mut free = 1u32;
    for &count in counts {
        free *= 2;
        free = free.checked_sub(u32::from(count)).ok_or_else(|| {
            MediaError::invalid("the JPEG's Huffman table has more codes than its lengths allow")
        })?;
    }
    let wide = seen.precision > 8;
    let valid = |symbol: u8| {
        let (run, size) = (symbol >> 4, symbol & 0x0F);
        if table[0] >> 4 == 0 {
            // DC: the size of a difference.
            symbol
                <= if seen.lossless {
                    16
                } else if wide {
                    15
                } else {
                    11
                }
        } else if size == 0 {
            // EOB and ZRL; a progressive scan's EOB runs (EOBn).
            symbol == 0x00 || symbol == 0xF0 || (seen.progressive && run < 15)
        } else {
            size <= if wide { 14 } else { 10 }
        }
    };
    let mut used = [false; 256];
    for &symbol in symbols {
        if !valid(symbol) || std::mem::replace(&mut used[usize::from(symbol)], true) {
            return Err(MediaError::invalid(
                "the JPEG's Huffman table holds symbols no scan can code",
            ));
        }
    }
    Ok(())
}

/// A frame header, kept to its defined length: precision, height,
/// width, the count of components and 3 bytes for each.
fn keep_frame(
    stream: &mut Stream,
    tables: &mut Tables,
    seen: &mut Seen,
    segment: Bytes,
    out: &mut Vec<Bytes>,
) -> Result<(), MediaError> {
    let payload = &segment[4..];
    let components = payload.get(5).map_or(0, |&n| usize::from(n));
    let defined = 6 + 3 * components;
    if components == 0 || payload.len() < defined {
        return Err(MediaError::invalid("the JPEG's frame header is corrupt"));
    }
    seen.progressive = matches!(segment[1], 0xC2 | 0xC6);
    seen.lossless = matches!(segment[1], 0xC3 | 0xC7 | 0xCB | 0xCF);
    // Each component: id, sampling factors, quantization table id. A
    // lossless frame reads no quantization table, whatever it names: all
    // of them are dropped.
    for component in payload[6..defined].chunks_exact(3) {
        let table = component[2];
        if table > 3 {
            return Err(MediaError::invalid("the JPEG's frame header is corrupt"));
        }
        if !seen.lossless {
            seen.quantization |= 1 << table;
            tables.unscanned.push([component[0], table]);
        }
    }
    seen.precision = payload[0];
    // The quantization tables defined so far that the frame uses go out
    // before it; the others are never used.
    tables.drop_quantization(stream, seen.quantization);
    tables.emit(stream, seen.quantization, 0, out);
    if payload.len() > defined {
        stream.changed = true;
        out.push(jpeg_segment(segment[1], &payload[..defined]));
    } else {
        out.push(segment);
    }
    Ok(())
}

/// A whole segment held to be read (EXIF, JFIF, ICC, Adobe, DRI, tables,
/// frame and scan headers): kept, rewritten, held or dropped.
fn inspect_segment(
    stream: &mut Stream,
    tables: &mut Tables,
    seen: &mut Seen,
    marker: u8,
    segment: Bytes,
    out: &mut Vec<Bytes>,
) -> Result<(), MediaError> {
    let payload = &segment[4..];
    if marker == 0xE1
        && let Some(tiff) = payload.strip_prefix(b"Exif\0\0")
    {
        stream.note_orientation(tiff);
        if stream.keep_metadata {
            out.push(segment);
            return Ok(());
        }
        stream.changed = true;
        if stream.orientation != 1 {
            out.push(minimal_jpeg_exif(stream.orientation));
        }
        return Ok(());
    }
    if stream.keep_metadata {
        out.push(segment);
        return Ok(());
    }
    if marker == DRI {
        return keep_restart(stream, tables, seen, segment, out);
    }
    if is_frame(marker) {
        return keep_frame(stream, tables, seen, segment, out);
    }
    if marker == DQT || marker == DHT {
        return check_tables(stream, tables, seen, &segment);
    }
    if marker == SOS {
        return keep_scan(stream, tables, seen, segment, out);
    }
    if marker == 0xE2 && payload.starts_with(ICC_TAG) {
        keep_icc(stream, segment, out);
        return Ok(());
    }
    // The part of the payload that is kept, if any: the first JFIF and
    // the first Adobe segment before the frame header, where decoders
    // read them.
    let kept = match marker {
        0xE0 if payload.starts_with(b"JFIF\0")
            && payload.len() >= JFIF_LEN
            && !seen.jfif
            && !seen.frame =>
        {
            seen.jfif = true;
            Some(&payload[..JFIF_LEN])
        }
        0xEE if payload.starts_with(b"Adobe")
            && payload.len() >= ADOBE_LEN
            && !seen.adobe
            && !seen.frame =>
        {
            seen.adobe = true;
            Some(&payload[..ADOBE_LEN])
        }
        _ => None,
    };
    let Some(kept) = kept else {
        stream.changed = true;
        return Ok(());
    };
    let thumbnail = marker == 0xE0 && kept[12..] != [0, 0];
    if !thumbnail && kept.len() == payload.len() {
        out.push(segment);
        return Ok(());
    }
    // A JFIF thumbnail, or bytes after what the segment defines.
    let mut kept = kept.to_vec();
    if thumbnail {
        kept[12..].fill(0);
    }
    stream.changed = true;
    out.push(jpeg_segment(marker, &kept));
    Ok(())
}

/// Segments a JPEG holds once (JFIF, Adobe) or once per scan (DRI) are
/// not kept again: repeated, they were room for chosen bytes.
#[cfg(test)]
mod attack5 {
    use super::super::tests::{contains, encoded_jpeg, scrub, segment, write_to_corpus};

    use super::super::tests::PERSONAL as MARKER;

    /// `jpeg` with `extra` inserted before its first `FF marker`.
    pub(super) fn insert_before(jpeg: &[u8], marker: u8, extra: &[u8]) -> Vec<u8> {
        let at = jpeg.windows(2).position(|w| w == [0xFF, marker]).unwrap();
        [&jpeg[..at], extra, &jpeg[at..]].concat()
    }

    pub(super) fn pixels(jpeg: &[u8]) -> image::RgbImage {
        image::load_from_memory(jpeg).unwrap().to_rgb8()
    }

    fn count(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .filter(|w| *w == needle)
            .count()
    }

    /// `jpeg` scrubbed, the same whatever the pieces it arrives in.
    pub(super) fn stored(jpeg: &[u8]) -> Vec<u8> {
        let whole = scrub(jpeg, jpeg.len(), false).unwrap().0;
        for piece in [1, 5] {
            assert_eq!(scrub(jpeg, piece, false).unwrap().0, whole);
        }
        whole
    }

    /// A baseline JPEG with a restart interval of `interval` MCUs.
    fn restart_jpeg(interval: u16) -> Vec<u8> {
        let pixels: Vec<u8> = (0..48 * 32 * 3).map(|i| (i * 7 % 251) as u8).collect();
        let mut out = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut out, 90);
        encoder.set_restart_interval(interval);
        encoder
            .encode(&pixels, 48, 32, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        out
    }

    /// The crafted files (name, bytes, how a clean copy decodes).
    fn crafted() -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
        let base = encoded_jpeg();
        let adobe = |chosen: &[u8]| segment(0xEE, &[b"Adobe", chosen, &[1]].concat());
        let jfif = |chosen: &[u8]| segment(0xE0, &[b"JFIF\0", chosen, &[0, 0]].concat());
        let mut first = adobe(&[0, 100, 0, 0, 0, 0]);
        first.extend(jfif(&[1, 1, 0, 0, 1, 0, 1]));
        let with_first = insert_before(&base, 0xDB, &first);
        let adobes: Vec<u8> = MARKER.chunks_exact(6).flat_map(adobe).collect();
        let jfifs: Vec<u8> = MARKER.chunks_exact(7).flat_map(jfif).collect();
        let restart = restart_jpeg(2);
        let dri = segment(0xDD, &[0, 2]);
        let zero = segment(0xDD, &[0, 0]);
        vec![
            (
                "repeated-adobe",
                insert_before(&with_first, 0xDB, &adobes),
                with_first.clone(),
            ),
            (
                "repeated-jfif",
                insert_before(&with_first, 0xDB, &jfifs),
                with_first.clone(),
            ),
            (
                "adobe-after-the-frame",
                insert_before(&base, 0xDA, &adobe(&MARKER[..6])),
                base.clone(),
            ),
            (
                "repeated-dri",
                insert_before(&restart, 0xDA, &dri.repeat(200)),
                restart.clone(),
            ),
            (
                "dri-of-the-interval-in-force",
                insert_before(&base, 0xDB, &zero.repeat(200)),
                base.clone(),
            ),
        ]
    }

    /// One JFIF and one Adobe segment, the first, before the frame; a DRI
    /// only where it changes the interval for the next scan; the pixels
    /// stay.
    #[test]
    fn segments_a_jpeg_holds_once_are_kept_once() {
        for (name, file, clean) in crafted() {
            let stored = stored(&file);
            assert!(!contains(&stored, &MARKER[..6]), "{name}");
            assert!(count(&stored, b"Adobe") <= 1, "{name}");
            assert!(count(&stored, b"JFIF\0") <= 1, "{name}");
            assert!(count(&stored, &[0xFF, 0xDD]) <= 1, "{name}");
            assert!(pixels(&stored) == pixels(&clean), "{name}");
        }
        let restart = restart_jpeg(2);
        assert_eq!(stored(&restart), restart, "its own DRI stays");
        assert_eq!(count(&restart, &[0xFF, 0xDD]), 1);
    }

    /// A DRI that would change the interval again before the same scan
    /// cannot be dropped (the first has passed, decoders use the last),
    /// nor one of another length than 4: the file is refused.
    #[test]
    fn a_restart_interval_changed_twice_before_a_scan_is_refused() {
        let base = encoded_jpeg();
        let chosen: Vec<u8> = MARKER
            .chunks_exact(2)
            .flat_map(|v| segment(0xDD, v))
            .collect();
        let long = segment(0xDD, &[0, 2, 0]);
        for (extra, because) in [(chosen, "twice"), (long, "4 bytes")] {
            let file = insert_before(&base, 0xDA, &extra);
            let error = scrub(&file, 7, false).unwrap_err();
            assert!(error.to_string().contains(because), "{error}");
        }
    }

    /// Writes the crafted files to the scrub corpus, which tests/parsers
    /// replays.
    #[test]
    #[ignore = "writes fuzz/corpus/scrub/: run by hand when the cases change"]
    fn write_corpus() {
        write_to_corpus(
            "a5-jpeg-",
            crafted().into_iter().map(|(name, file, _)| (name, file)),
        );
    }
}

/// A JPEG keeps one frame header, at its defined length, and only the
/// tables its frame and scans use.
#[cfg(test)]
mod attack6 {
    use super::super::tests::{contains, encoded_jpeg, scrub, segment, write_to_corpus};
    use super::attack5::{insert_before, pixels, stored};

    use super::super::tests::PERSONAL as MARKER;

    /// `jpeg` with its frame header's payload grown by `extra`.
    fn longer_frame(jpeg: &[u8], extra: &[u8]) -> Vec<u8> {
        let at = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        let len = usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]));
        let mut frame = jpeg[at + 4..at + 2 + len].to_vec();
        frame.extend_from_slice(extra);
        [&jpeg[..at], &segment(0xC0, &frame), &jpeg[at + 2 + len..]].concat()
    }

    /// A second frame header of any kind, after the frame or before it.
    fn second_frames() -> Vec<(String, Vec<u8>)> {
        let base = encoded_jpeg();
        let text = MARKER.repeat(1200);
        let mut files: Vec<(String, Vec<u8>)> = [0xC0u8, 0xC1, 0xC2, 0xC3, 0xC5, 0xC7, 0xCB, 0xCF]
            .into_iter()
            .map(|m| {
                let file = insert_before(&base, 0xDA, &segment(m, &text));
                (format!("second-sof{:x}", m & 0x0F), file)
            })
            .collect();
        let before = insert_before(&base, 0xC0, &segment(0xCF, &text));
        files.push(("sof15-before-the-frame".into(), before));
        files
    }

    /// A second frame header is refused, whatever its kind: a JPEG the
    /// service shows has one frame (text before the frame is refused
    /// first as a corrupt frame header, its table ids past 3).
    #[test]
    fn a_second_frame_header_is_refused() {
        for (name, file) in second_frames() {
            let error = scrub(&file, 7, false).unwrap_err();
            assert!(
                error.to_string().contains("frame header"),
                "{name}: {error}"
            );
        }
    }

    /// Bytes after what the frame header defines are cut; the pixels stay.
    #[test]
    fn the_frame_header_keeps_its_defined_length() {
        let base = encoded_jpeg();
        let file = longer_frame(&base, MARKER);
        let stored = stored(&file);
        assert!(!contains(&stored, &MARKER[..6]));
        assert_eq!(stored.len(), base.len());
        assert!(pixels(&stored) == pixels(&base));
        assert_eq!(
            super::attack5::stored(&base),
            base,
            "a real frame header stays"
        );
    }

    /// A DHT of `symbols` (all coded at 16 bits) in table `kind`.
    fn dht(kind: u8, symbols: &[u8]) -> Vec<u8> {
        let mut counts = [0u8; 16];
        counts[15] = symbols.len() as u8;
        segment(0xC4, &[&[kind][..], &counts, symbols].concat())
    }

    /// Tables that break the bounds: too many before a scan, bytes past
    /// the last table, an id no decoder has.
    fn bad_tables() -> Vec<(&'static str, Vec<u8>, &'static str)> {
        let base = encoded_jpeg();
        let text: Vec<u8> = MARKER.repeat(4)[..160].to_vec();
        let dqt = |kind: u8| segment(0xDB, &[&[kind][..], &MARKER.repeat(2)[..64]].concat());
        let many: Vec<u8> = (0..65).flat_map(|_| dht(0x13, &text)).collect();
        let mut long = dht(0x13, &text);
        long.extend_from_slice(&MARKER[..5]);
        let end = (long.len() - 2) as u16;
        long[2..4].copy_from_slice(&end.to_be_bytes());
        vec![
            (
                "many-tables",
                insert_before(&base, 0xC0, &many),
                "more than 64 tables",
            ),
            (
                "dht-with-bytes-after",
                insert_before(&base, 0xDA, &long),
                "corrupt",
            ),
            (
                "dqt-id-4",
                insert_before(&base, 0xC0, &dqt(0x04)),
                "corrupt",
            ),
        ]
    }

    /// A quantization table of id 3, which the test image does not use.
    fn unused_dqt() -> Vec<u8> {
        segment(0xDB, &[&[0x03][..], &MARKER.repeat(2)[..64]].concat())
    }

    /// After the frame header, a quantization table of an id no
    /// component uses is dropped; the pixels stay.
    #[test]
    fn quantization_tables_no_component_uses_are_dropped() {
        let base = encoded_jpeg();
        let unused = unused_dqt();
        for at in [0xC4, 0xDA] {
            let file = insert_before(&base, at, &unused);
            let kept = stored(&file);
            assert!(!contains(&kept, &MARKER[..6]));
            assert!(pixels(&kept) == pixels(&base));
        }
        let before = insert_before(&base, 0xC0, &unused);
        assert!(pixels(&stored(&before)) == pixels(&base));
    }

    /// A JPEG defining table after table before a scan, or tables that do
    /// not fill their segment, is refused.
    #[test]
    fn tables_beyond_their_bounds_are_refused() {
        for (name, file, because) in bad_tables() {
            let error = scrub(&file, 7, false).unwrap_err();
            assert!(error.to_string().contains(because), "{name}: {error}");
        }
    }

    /// Real files keep their pixels: a progressive one (its tables go
    /// out before the scans that use them), and a baseline one every
    /// byte.
    #[test]
    fn real_tables_stay_as_they_are() {
        let pixels_in: Vec<u8> = (0..64 * 48 * 3).map(|i| (i * 13 % 253) as u8).collect();
        let mut progressive = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut progressive, 85);
        encoder.set_progressive(true);
        encoder
            .encode(&pixels_in, 64, 48, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        assert!(
            progressive
                .windows(2)
                .filter(|w| *w == [0xFF, 0xDA])
                .count()
                > 1
        );
        // Its Huffman tables, all defined before the first scan, go out
        // before the scans that use them.
        let kept = stored(&progressive);
        assert!(kept.len() <= progressive.len());
        assert!(pixels(&kept) == pixels(&progressive));
        let base = encoded_jpeg();
        assert_eq!(stored(&base), base);
    }

    /// Writes the crafted files to the scrub corpus, which tests/parsers
    /// replays.
    #[test]
    #[ignore = "writes fuzz/corpus/scrub/: run by hand when the cases change"]
    fn write_corpus() {
        let long = (
            "long-frame-header".into(),
            longer_frame(&encoded_jpeg(), MARKER),
        );
        let unused = (
            "unused-dqt-after-the-frame".into(),
            insert_before(&encoded_jpeg(), 0xDA, &unused_dqt()),
        );
        let tables = bad_tables()
            .into_iter()
            .map(|(name, file, _)| (name.to_owned(), file));
        let files = second_frames().into_iter().chain([long, unused]);
        write_to_corpus("a6-jpeg-", files.chain(tables));
    }
}

/// A JPEG keeps a table only where the frame or a scan uses it: tables
/// are held until then, a table redefined first or never used is
/// dropped.
#[cfg(test)]
mod attack7 {
    use super::super::tests::{contains, encoded_jpeg, scrub, segment, write_to_corpus};
    use super::attack5::{insert_before, pixels, stored};

    use super::super::tests::PERSONAL as MARKER;

    /// A DHT of table `kind` (class and id) whose symbols are the marker,
    /// all coded at 16 bits.
    fn dht(kind: u8) -> Vec<u8> {
        let symbols = &MARKER.repeat(4)[..160];
        let mut counts = [0u8; 16];
        counts[15] = symbols.len() as u8;
        segment(0xC4, &[&[kind][..], &counts, symbols].concat())
    }

    /// A DQT of id `id`, 8-bit, its entries the marker.
    fn dqt(id: u8) -> Vec<u8> {
        segment(0xDB, &[&[id][..], &MARKER.repeat(2)[..64]].concat())
    }

    /// A JPEG of 64 by 48 pixels, progressive or not, with a restart
    /// interval of `restart` MCUs (0: none).
    pub(super) fn real_jpeg(progressive: bool, restart: u16) -> Vec<u8> {
        let pixels: Vec<u8> = (0..64 * 48 * 3).map(|i| (i * 13 % 253) as u8).collect();
        let mut out = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut out, 85);
        encoder.set_progressive(progressive);
        encoder.set_restart_interval(restart);
        encoder
            .encode(&pixels, 64, 48, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        out
    }

    /// `jpeg` with `extra` inserted before its last scan header.
    fn before_last_scan(jpeg: &[u8], extra: &[u8]) -> Vec<u8> {
        let at = jpeg.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap();
        [&jpeg[..at], extra, &jpeg[at..]].concat()
    }

    /// The crafted files (name, bytes, the file whose pixels they show).
    fn crafted() -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
        let base = encoded_jpeg();
        let progressive = real_jpeg(true, 0);
        let unused = [dht(0x13), dht(0x02), dqt(0x03)].concat();
        // The file's own first quantization table (id 0), a whole segment.
        let at = base.windows(2).position(|w| w == [0xFF, 0xDB]).unwrap();
        let own = &base[at..at + 2 + 67];
        vec![
            (
                // The file's own DC table 0 comes after it.
                "dht-redefined-before-use",
                insert_before(&base, 0xC4, &dht(0x00)),
                base.clone(),
            ),
            (
                "unused-dht-before-the-scan",
                insert_before(&base, 0xDA, &dht(0x13)),
                base.clone(),
            ),
            (
                "unused-dht-before-the-frame",
                insert_before(&base, 0xC0, &[dht(0x13), dht(0x02)].concat()),
                base.clone(),
            ),
            (
                "unused-dqt-before-the-frame",
                insert_before(&base, 0xC0, &dqt(0x03)),
                base.clone(),
            ),
            (
                "dqt-redefined-before-the-frame",
                insert_before(&base, 0xC0, &[&dqt(0x00)[..], own].concat()),
                base.clone(),
            ),
            (
                "unused-tables-between-progressive-scans",
                before_last_scan(&progressive, &unused),
                progressive.clone(),
            ),
            (
                "dht-redefined-between-progressive-scans",
                before_last_scan(&progressive, &[dht(0x10), dht(0x10)].concat()),
                // The last scan is an AC scan of table 0 or 1: either
                // way, the second definition is the one a decoder reads.
                before_last_scan(&progressive, &dht(0x10)),
            ),
        ]
    }

    /// Crafted tables nothing uses (or that are replaced before use) are
    /// dropped; the file shows the same pixels.
    #[test]
    fn tables_no_frame_or_scan_uses_are_dropped() {
        for (name, file, clean) in crafted() {
            let kept = stored(&file);
            if name == "dht-redefined-between-progressive-scans" {
                // The one a decoder reads stays: only one copy.
                let copies = kept.windows(6).filter(|w| *w == &MARKER[..6]).count();
                let before = clean.windows(6).filter(|w| *w == &MARKER[..6]).count();
                assert!(copies <= before, "{name}");
                assert!(pixels(&kept) == pixels(&clean), "{name}");
                continue;
            }
            assert!(!contains(&kept, &MARKER[..6]), "{name}");
            assert!(pixels(&kept) == pixels(&clean), "{name}");
            let report = scrub(&file, 7, false).unwrap().1;
            assert!(report.changed, "{name}");
        }
    }

    /// Real files keep their pixels, and a baseline file, with or without
    /// restart intervals, and a phone photo keep every byte of their
    /// tables, frame and scans.
    #[test]
    fn real_files_keep_their_tables_and_pixels() {
        for restart in [0, 2] {
            let file = real_jpeg(false, restart);
            assert_eq!(stored(&file), file, "restart {restart}");
            assert!(!scrub(&file, 7, false).unwrap().1.changed);
            let progressive = real_jpeg(true, restart);
            let kept = stored(&progressive);
            assert!(pixels(&kept) == pixels(&progressive), "restart {restart}");
            // Nothing but how the tables are grouped changes.
            assert!(kept.len() <= progressive.len());
            assert!(progressive.len() - kept.len() < 40);
        }
        let phone = include_bytes!("../../../examples/images/phone-photo.jpg");
        let kept = stored(phone);
        let frame = |jpeg: &[u8]| jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        // The same from the frame header to the end of the image (the
        // bytes after it are dropped).
        assert!(phone[frame(phone)..].starts_with(&kept[frame(&kept)..]));
        assert!(pixels(&kept) == pixels(phone));
    }

    /// A scan that names a table never defined passes as it came (the
    /// decoders refuse it; no table is made up).
    #[test]
    fn a_scan_naming_an_undefined_table_is_not_given_one() {
        let base = encoded_jpeg();
        let at = base.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let mut file = base.clone();
        // The first component's tables become DC 2 and AC 2.
        file[at + 6] = 0x22;
        let kept = stored(&file);
        assert!(contains(&kept, &file[at..at + 14]));
        // DC 0 and AC 0, which no scan names now, are dropped (segments of
        // 2 + 31 and 2 + 181 bytes).
        assert!(kept.len() <= file.len() - (2 + 31) - (2 + 181));
    }

    /// Writes the crafted files to the scrub corpus, which tests/parsers
    /// replays.
    #[test]
    #[ignore = "writes fuzz/corpus/scrub/: run by hand when the cases change"]
    fn write_corpus() {
        write_to_corpus(
            "a7-jpeg-",
            crafted().into_iter().map(|(name, file, _)| (name, file)),
        );
    }
}

/// A Huffman table holds only symbols a scan of its frame can code, in a
/// prefix code; a quantization table redefined once every component
/// using it has had its first scan is dropped; a JPEG has at most
/// [`MAX_JPEG_SCANS`] scans.
#[cfg(test)]
mod attack8 {
    use super::super::tests::{contains, encoded_jpeg, scrub, segment, write_to_corpus};
    use super::MAX_JPEG_SCANS;
    use super::attack5::{pixels, stored};
    use super::attack7::real_jpeg;

    use super::super::tests::PERSONAL as MARKER;

    /// A DHT of table `kind` (class and id) with `codes`: symbols by code
    /// length.
    fn dht(kind: u8, codes: &[(usize, &[u8])]) -> Vec<u8> {
        let mut counts = [0u8; 16];
        let mut symbols = Vec::new();
        for &(len, these) in codes {
            counts[len - 1] = these.len() as u8;
            symbols.extend_from_slice(these);
        }
        segment(0xC4, &[&[kind][..], &counts, &symbols].concat())
    }

    /// A DQT of id 0, 8-bit, every entry `value`.
    fn dqt(value: u8) -> Vec<u8> {
        segment(0xDB, &[&[0][..], &[value; 64]].concat())
    }

    /// A scan header for `components` (id, tables), the spectral band
    /// `band` and successive approximation 0.
    fn sos(components: &[(u8, u8)], band: (u8, u8)) -> Vec<u8> {
        let mut payload = vec![components.len() as u8];
        for &(id, tables) in components {
            payload.extend_from_slice(&[id, tables]);
        }
        payload.extend_from_slice(&[band.0, band.1, 0]);
        segment(0xDA, &payload)
    }

    /// An 8 by 8 greyscale JPEG of frame `sof` and `precision` bits, with
    /// `tables` before its scans, and `between` before each AC scan of a
    /// progressive frame, each of which codes only an EOB (lossless: the
    /// differences are all 0).
    fn grey(sof: u8, precision: u8, tables: &[u8], scans: usize, between: &[u8]) -> Vec<u8> {
        let frame = segment(sof, &[precision, 0, 8, 0, 8, 1, 1, 0x11, 0]);
        let mut file = [&[0xFF, 0xD8][..], &dqt(1), &frame, tables].concat();
        match sof {
            0xC2 => {
                file.extend(sos(&[(1, 0x00)], (0, 0)));
                file.push(0x7F);
                for _ in 1..scans {
                    file.extend_from_slice(between);
                    file.extend(sos(&[(1, 0x00)], (1, 1)));
                    file.push(0x7F);
                }
            }
            0xC3 => {
                file.extend(sos(&[(1, 0x00)], (1, 0)));
                file.extend([0; 8]);
            }
            _ => {
                file.extend(sos(&[(1, 0x00)], (0, 63)));
                file.push(0x3F);
            }
        }
        file.extend([0xFF, 0xD9]);
        file
    }

    /// The DC and AC tables of the plain files: one code, symbol 0 (a DC
    /// difference of 0, an EOB).
    fn plain_tables() -> Vec<u8> {
        [dht(0x00, &[(1, &[0])]), dht(0x10, &[(1, &[0])])].concat()
    }

    /// Files whose Huffman tables hold symbols no scan can code, or more
    /// codes than their lengths allow (name, file).
    fn bad_symbols() -> Vec<(&'static str, Vec<u8>)> {
        let dc = dht(0x00, &[(1, &[0])]);
        let ac = dht(0x10, &[(1, &[0])]);
        let text_ac = dht(0x10, &[(1, &[0]), (16, MARKER)]);
        let text_dc = dht(0x00, &[(1, &[0]), (16, MARKER)]);
        let unique = dht(0x10, &[(1, &[0]), (16, b"NAMEJohn:QPubli")]);
        let table_2 = [&dc[..], &dht(0x12, &[(1, &[0]), (16, MARKER)])].concat();
        let mut id_2 = grey(0xC0, 8, &table_2, 1, &[]);
        // The scan names AC table 2.
        let at = id_2.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        id_2[at + 6] = 0x02;
        let ac_with = |codes: &[u8]| [&dc[..], &dht(0x10, &[(1, &[0]), (4, codes)])].concat();
        vec![
            (
                "baseline-ac-text",
                grey(0xC0, 8, &[&dc, &text_ac[..]].concat(), 1, &[]),
            ),
            (
                "baseline-ac-unique-text",
                grey(0xC0, 8, &[&dc, &unique[..]].concat(), 1, &[]),
            ),
            (
                "baseline-dc-text",
                grey(0xC0, 8, &[&text_dc, &ac[..]].concat(), 1, &[]),
            ),
            ("baseline-ac-table-2-text", id_2),
            (
                "progressive-dc-text",
                grey(0xC2, 8, &[&text_dc, &ac[..]].concat(), 2, &[]),
            ),
            (
                "progressive-ac-text",
                grey(0xC2, 8, &[&dc, &text_ac[..]].concat(), 2, &[]),
            ),
            ("lossless-dc-text", grey(0xC3, 8, &text_dc, 1, &[])),
            ("ac-symbol-twice", grey(0xC0, 8, &ac_with(&[1, 1]), 1, &[])),
            (
                "ac-size-11-at-8-bits",
                grey(0xC0, 8, &ac_with(&[0x0B]), 1, &[]),
            ),
            (
                "eob-run-in-a-baseline-scan",
                grey(0xC0, 8, &ac_with(&[0x10]), 1, &[]),
            ),
            (
                "dc-size-12-at-8-bits",
                grey(
                    0xC0,
                    8,
                    &[&dht(0x00, &[(1, &[0]), (2, &[12])]), &ac[..]].concat(),
                    1,
                    &[],
                ),
            ),
            (
                "more-codes-than-lengths-allow",
                grey(
                    0xC0,
                    8,
                    &[&dc, &dht(0x10, &[(1, &[0, 1, 2])])[..]].concat(),
                    1,
                    &[],
                ),
            ),
        ]
    }

    /// A used Huffman table holding symbols no scan of its frame can
    /// code, twice the same symbol, or more codes than its lengths allow,
    /// refuses the file.
    #[test]
    fn huffman_symbols_no_scan_can_code_are_refused() {
        for (name, file) in bad_symbols() {
            let error = scrub(&file, 7, false).unwrap_err().to_string();
            let because = if name.starts_with("more-codes") {
                "more codes than its lengths allow"
            } else {
                "symbols no scan can code"
            };
            assert!(error.contains(because), "{name}: {error}");
        }
    }

    /// Every symbol the frame's scans can code is accepted: EOB runs in
    /// a progressive scan, 12-bit sizes in a 12-bit frame, 16 in a
    /// lossless one; the tables stay whole.
    #[test]
    fn huffman_symbols_a_scan_can_code_are_kept() {
        let dc = dht(0x00, &[(1, &[0]), (5, &(1..=11).collect::<Vec<u8>>())]);
        let sizes: Vec<u8> = (0..16)
            .flat_map(|run| (1..=10).map(move |s| run << 4 | s))
            .collect();
        let ac = dht(0x10, &[(1, &[0]), (2, &[0xF0]), (16, &sizes)]);
        let eob_runs: Vec<u8> = (0..15).map(|run| run << 4).collect();
        let progressive_ac = dht(0x10, &[(4, &eob_runs), (5, &[0xF0, 0x01])]);
        let wide_dc = dht(0x00, &[(1, &[0]), (5, &(1..=15).collect::<Vec<u8>>())]);
        let wide_ac = dht(0x10, &[(1, &[0]), (5, &[0x0E, 0xFE])]);
        let lossless = dht(0x00, &[(1, &[0]), (6, &(1..=16).collect::<Vec<u8>>())]);
        for (name, file) in [
            ("baseline", grey(0xC0, 8, &plain_tables(), 1, &[])),
            (
                "every-baseline-symbol",
                grey(0xC0, 8, &[&dc, &ac[..]].concat(), 1, &[]),
            ),
            ("progressive", grey(0xC2, 8, &plain_tables(), 3, &[])),
            (
                "eob-runs",
                grey(0xC2, 8, &[&dc, &progressive_ac[..]].concat(), 3, &[]),
            ),
            (
                "12-bit",
                grey(0xC1, 12, &[&wide_dc, &wide_ac[..]].concat(), 1, &[]),
            ),
            ("lossless", grey(0xC3, 8, &lossless, 1, &[])),
        ] {
            // Every Huffman table stays whole (a progressive frame's AC
            // table moves to just before the first AC scan); a lossless
            // frame's quantization table goes, since it reads none.
            let kept = stored(&file);
            let dropped = if name == "lossless" { dqt(1).len() } else { 0 };
            assert_eq!(kept.len(), file.len() - dropped, "{name}");
        }
        let plain = grey(0xC0, 8, &plain_tables(), 1, &[]);
        assert!(pixels(&stored(&plain)) == pixels(&plain));
    }

    /// Real encoders' tables pass, standard and optimised, baseline and
    /// progressive, colour and grey: the pixels stay.
    #[test]
    fn real_huffman_tables_pass() {
        let colour: Vec<u8> = (0..64 * 48 * 3).map(|i| (i * 13 % 253) as u8).collect();
        let grey_pixels: Vec<u8> = (0..64 * 48).map(|i| (i * 29 % 251) as u8).collect();
        let mut files = vec![
            encoded_jpeg(),
            include_bytes!("../../../examples/images/phone-photo.jpg").to_vec(),
        ];
        for (progressive, optimised, grey) in [
            (false, false, false),
            (false, true, false),
            (true, false, false),
            (true, true, false),
            (false, false, true),
            (true, true, true),
        ] {
            let mut out = Vec::new();
            let mut encoder = jpeg_encoder::Encoder::new(&mut out, 85);
            encoder.set_progressive(progressive);
            encoder.set_optimized_huffman_tables(optimised);
            let (data, colour_type) = if grey {
                (&grey_pixels, jpeg_encoder::ColorType::Luma)
            } else {
                (&colour, jpeg_encoder::ColorType::Rgb)
            };
            encoder.encode(data, 64, 48, colour_type).unwrap();
            files.push(out);
        }
        for (n, file) in files.iter().enumerate() {
            let kept = stored(file);
            assert!(pixels(&kept) == pixels(file), "file {n}");
        }
    }

    /// A 16-bit quantization table of id 0, its entries the marker.
    fn text_dqt() -> Vec<u8> {
        segment(0xDB, &[&[0x10][..], &MARKER.repeat(3)[..128]].concat())
    }

    /// Quantization tables redefined after every component using them
    /// had its first scan (name, file, the file without them).
    fn dead_quantization() -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
        let progressive = real_jpeg(true, 0);
        let at = progressive
            .windows(2)
            .rposition(|w| w == [0xFF, 0xDA])
            .unwrap();
        let before_last = [&progressive[..at], &text_dqt(), &progressive[at..]].concat();
        vec![
            (
                "dqt-redefined-before-the-last-scan",
                before_last,
                progressive,
            ),
            (
                "dqt-redefined-before-every-ac-scan",
                grey(0xC2, 8, &plain_tables(), 64, &text_dqt()),
                grey(0xC2, 8, &plain_tables(), 64, &[]),
            ),
        ]
    }

    /// A quantization table redefined once every component using it has
    /// had its first scan is dropped: decoders took the table then.
    #[test]
    fn dead_quantization_tables_are_dropped() {
        for (name, file, clean) in dead_quantization() {
            let kept = stored(&file);
            assert!(!contains(&kept, &MARKER[..6]), "{name}");
            assert!(pixels(&kept) == pixels(&clean), "{name}");
            assert_eq!(kept, stored(&clean), "{name}");
            assert!(scrub(&file, 7, false).unwrap().1.changed, "{name}");
        }
    }

    /// One redefined before the first scan of a component using it is
    /// what that component decodes with: it stays.
    #[test]
    fn a_quantization_table_redefined_before_a_components_first_scan_stays() {
        let frame = segment(0xC0, &[8, 0, 8, 0, 8, 2, 1, 0x11, 0, 2, 0x11, 0]);
        let second = dqt(2);
        let file = [
            &[0xFF, 0xD8][..],
            &dqt(1),
            &frame,
            &plain_tables(),
            &sos(&[(1, 0x00)], (0, 63)),
            &[0x3F],
            &second,
            &sos(&[(2, 0x00)], (0, 63)),
            &[0x3F, 0xFF, 0xD9],
        ]
        .concat();
        let kept = stored(&file);
        assert!(contains(&kept, &second));
        assert_eq!(kept, file);
    }

    /// A progressive greyscale file of `scans` scans.
    fn many_scans(scans: usize) -> Vec<u8> {
        grey(0xC2, 8, &plain_tables(), scans, &[])
    }

    /// A JPEG of more than [`MAX_JPEG_SCANS`] scans is refused, whether
    /// its metadata is kept or not; one of that many is not.
    #[test]
    fn more_scans_than_the_cap_are_refused() {
        let cap = MAX_JPEG_SCANS as usize;
        for keep in [false, true] {
            let file = many_scans(cap);
            let kept = scrub(&file, 1000, keep).unwrap().0;
            assert_eq!(kept.len(), file.len(), "keep {keep}");
            let error = scrub(&many_scans(cap + 1), 1000, keep).unwrap_err();
            assert!(error.to_string().contains("more than 500 scans"), "{error}");
        }
    }

    /// Writes the crafted files to the scrub corpus, which tests/parsers
    /// replays.
    #[test]
    #[ignore = "writes fuzz/corpus/scrub/: run by hand when the cases change"]
    fn write_corpus() {
        let cap = MAX_JPEG_SCANS as usize;
        let many = ("too-many-scans", many_scans(cap + 1));
        let dead = dead_quantization()
            .into_iter()
            .map(|(name, file, _)| (name, file));
        write_to_corpus(
            "a8-jpeg-",
            bad_symbols().into_iter().chain(dead).chain([many]),
        );
    }

    /// A lossless frame reads no quantization table: one before or after
    /// the frame header, naming the component's table id, is dropped.
    #[test]
    fn a_lossless_frame_keeps_no_quantization_table() {
        let text = segment(0xDB, &[&[0x10][..], &MARKER.repeat(3)[..128]].concat());
        let dc = dht(0x00, &[(1, &[0])]);
        let file = grey(0xC3, 8, &[&text[..], &dc].concat(), 1, &[]);
        let (out, report) = scrub(&file, 7, false).unwrap();
        assert!(report.changed && !contains(&out, &MARKER[..16]));
        assert!(!out.windows(2).any(|w| w == [0xFF, 0xDB]), "a DQT was kept");
        assert_eq!(scrub(&file, 1 << 20, false).unwrap().0, out);
    }
}

/// A JPEG's scans are counted in passes over its coefficients
/// ([`JpegDecodeWork`]) as their headers go by, and a file whose scans
/// take more than `--max-jpeg-decode-passes` is refused at the scan that
/// passes it, whether its metadata is kept or not: the files encoders and
/// cameras write take a few passes, files built to spend a decoder's CPU
/// take hundreds.
#[cfg(test)]
mod decode_work {
    use bytes::Bytes;

    use super::super::Scrubber;
    use crate::fixtures::{
        PhoneShot, jpeg, narrow_scans_jpeg, phone_shot, repeated_scans_jpeg, scene, wide_scans_jpeg,
    };
    use crate::media::MediaError;
    use crate::media::limits::DEFAULT_MAX_JPEG_DECODE_PASSES as DEFAULT;
    use crate::media::variants::encode;

    /// The passes the scrubber counts for `file` (in 4 KiB chunks), within
    /// `max` passes.
    fn passes(file: &[u8], keep: bool, max: u32) -> Result<f64, MediaError> {
        let mut scrubber = Scrubber::bounded(keep, u64::MAX, max);
        let mut out = Vec::new();
        for piece in file.chunks(4096) {
            scrubber.push(Bytes::copy_from_slice(piece), &mut out)?;
        }
        let passes = scrubber.jpeg_decode_passes();
        scrubber.finish(&mut out)?;
        Ok(passes.expect("a JPEG's passes are counted"))
    }

    fn mozjpeg(coder: encode::JpegCoder) -> Vec<u8> {
        let settings = encode::Jpeg {
            coder,
            ..encode::JPEG_BASELINE
        };
        encode::jpeg(&scene(640, 480, 2), None, settings).unwrap()
    }

    /// Real files: a baseline JPEG is one pass; the progressive files of
    /// jpeg-encoder (4:2:0 and 4:4:4), of libjpeg's scan script and of
    /// mozjpeg's scan search, and the phone photo of the examples, take a
    /// few, far under the default.
    #[test]
    fn encoders_and_cameras_files_take_a_few_passes() {
        assert_eq!(passes(&jpeg(640, 480), false, DEFAULT).unwrap(), 1.0);
        let shot = |progressive, subsampled| PhoneShot {
            width: 640,
            height: 480,
            progressive,
            subsampled,
            orientation: 6,
            quality: 90,
            seed: 1,
        };
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/images/phone-photo.jpg"
        );
        let files = [
            ("baseline", phone_shot(&shot(false, true))),
            ("jpeg-encoder 4:2:0", phone_shot(&shot(true, true))),
            ("jpeg-encoder 4:4:4", phone_shot(&shot(true, false))),
            ("libjpeg's script", mozjpeg(encode::JpegCoder::Mozjpeg)),
            (
                "mozjpeg's scan search",
                mozjpeg(encode::JpegCoder::MozjpegTrellis),
            ),
            ("the example phone photo", std::fs::read(example).unwrap()),
        ];
        for (name, file) in files {
            for keep in [false, true] {
                let passes = passes(&file, keep, DEFAULT).unwrap();
                assert!((1.0..=8.0).contains(&passes), "{name}: {passes} passes");
            }
        }
    }

    /// Progressive files built with the most scans allowed, each visiting
    /// every block: refused, naming the flag, with metadata kept or not.
    #[test]
    fn files_built_to_spend_a_decoders_cpu_are_refused() {
        for (name, file) in [
            ("repeated", repeated_scans_jpeg(256, 256, 499)),
            ("narrow", narrow_scans_jpeg(256, 256, 500)),
        ] {
            assert!(passes(&file, false, u32::MAX).unwrap() > 100.0, "{name}");
            for keep in [false, true] {
                let error = passes(&file, keep, DEFAULT).unwrap_err();
                assert!(
                    matches!(error, MediaError::TooLarge(_)),
                    "{name}: {error:?}"
                );
                assert!(
                    error.to_string().contains("--max-jpeg-decode-passes"),
                    "{error}"
                );
            }
        }
    }

    /// The flag is the bound: the 16 whole-band scans of a valid
    /// progression take 9.6 passes, so 10 lets the file in and 9 does
    /// not.
    #[test]
    fn the_limit_is_the_flags() {
        let file = wide_scans_jpeg(256, 256);
        assert_eq!(passes(&file, false, 10).unwrap(), 9.6);
        assert!(passes(&file, false, 9).is_err());
    }
}
