//! JPEG: segment by segment, with the scan data passed through as slices.
//!
//! An allow-list: the segments that decide how the pixels decode are kept
//! (the frame header, one and only to its defined length: a second one is
//! refused; tables, each at its defined length, filling their segment,
//! at most [`MAX_JPEG_TABLES`] before a scan, and after the frame header
//! no quantization table of an id its components do not use; scans; APP0 JFIF without its thumbnail, APP2 ICC
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
//! Bounds: memory held is at most one segment (64 KiB + 4 bytes, for the
//! segments that are inspected) plus a fixed 26-byte EXIF replacement; the
//! output pieces are slices of the input. Work is linear in the input: every
//! byte is looked at a bounded number of times, and at most
//! [`MAX_JPEG_SEGMENTS`] marker segments are parsed.
use bytes::Bytes;

use super::icc;
use super::stream::{Next, Stream, minimal_tiff};
use crate::media::MediaError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Jpeg {
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
    /// The quantization table ids the frame's components use, a bit each.
    quantization: u8,
}

impl Jpeg {
    /// Right after the start-of-image marker.
    pub(super) const START: Jpeg = Jpeg::Marker {
        seen: Seen {
            scanned: false,
            frame: false,
            jfif: false,
            adobe: false,
            restart: 0,
            restart_kept: false,
            tables: 0,
            quantization: 0,
        },
    };
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

impl Jpeg {
    /// Takes the next bytes of the JPEG from `chunk`; says what comes next.
    pub(super) fn push(
        self,
        stream: &mut Stream,
        chunk: &mut Bytes,
        out: &mut Vec<Bytes>,
    ) -> Result<Next<Jpeg>, MediaError> {
        let next = match self {
            Jpeg::Marker { seen } => return marker(stream, seen, chunk, out),
            Jpeg::Payload {
                marker,
                len,
                action: Action::Inspect,
                mut seen,
            } => {
                if !stream.fill(chunk, 4 + len) {
                    return Ok(Next::Stay(self));
                }
                let segment = stream.pending.split().freeze();
                inspect_segment(stream, &mut seen, marker, segment, out)?;
                Jpeg::Marker { seen }
            }
            Jpeg::Payload {
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
                    Jpeg::Payload {
                        marker,
                        len: len - n,
                        action,
                        seen,
                    }
                } else if marker == SOS {
                    Jpeg::Scan {
                        seen: Seen {
                            scanned: true,
                            restart_kept: false,
                            tables: 0,
                            ..seen
                        },
                    }
                } else {
                    Jpeg::Marker { seen }
                }
            }
            Jpeg::Scan { seen } => scan(stream, seen, chunk, out),
        };
        Ok(Next::Stay(next))
    }
}

/// A marker, and the length of its segment: what follows `FF xx`.
fn marker(
    stream: &mut Stream,
    mut seen: Seen,
    chunk: &mut Bytes,
    out: &mut Vec<Bytes>,
) -> Result<Next<Jpeg>, MediaError> {
    let scanned = seen.scanned;
    let waiting = Next::Stay(Jpeg::Marker { seen });
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
                return Ok(Next::Stay(Jpeg::Scan { seen }));
            }
            return Err(corrupt_jpeg());
        }
        // Fill bytes: all pass but the last `FF`, which stays pending.
        let fill = chunk.iter().take_while(|&&b| b == 0xFF).count();
        if fill > 0 {
            out.push(chunk.split_to(fill));
        }
        if !stream.fill(chunk, 2) {
            return Ok(waiting);
        }
        let marker = stream.pending[1];
        if scanned && !ends_scan(marker) {
            out.push(stream.pending.split().freeze());
            return Ok(Next::Stay(Jpeg::Scan { seen }));
        }
        stream.segments += 1;
        if stream.segments > MAX_JPEG_SEGMENTS {
            return Err(MediaError::invalid(format!(
                "the JPEG has more than {MAX_JPEG_SEGMENTS} marker segments"
            )));
        }
        match marker {
            EOI => {
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
            return Ok(Next::Stay(Jpeg::Scan { seen }));
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
    let action = action(stream.keep_metadata, marker);
    match action {
        Action::Keep => out.push(stream.pending.split().freeze()),
        Action::Drop => {
            stream.changed = true;
            stream.pending.clear();
        }
        // The header stays pending with the payload to come.
        Action::Inspect => {}
    }
    Ok(Next::Stay(Jpeg::Payload {
        marker,
        len: len - 2,
        action,
        seen,
    }))
}

/// Entropy-coded data: an `FF` (or a run of them) followed by a marker
/// that ends the scan (see [`ends_scan`]) ends it; followed by anything
/// else (a stuffed zero, a restart marker, damage) it is scan data.
fn scan(stream: &mut Stream, seen: Seen, chunk: &mut Bytes, out: &mut Vec<Bytes>) -> Jpeg {
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
                return Jpeg::Marker { seen };
            }
        }
    }
    out.push(std::mem::take(chunk));
    Jpeg::Scan { seen }
}

/// What becomes of the segment `marker` opens.
fn action(keep_metadata: bool, marker: u8) -> Action {
    match marker {
        // EXIF (APP1) is read for its orientation even when kept.
        0xE1 => Action::Inspect,
        _ if keep_metadata => Action::Keep,
        // Arithmetic-coding conditioning (DAC), scans and DNL.
        0xCC | 0xDA | 0xDC => Action::Keep,
        // Quantization and Huffman tables: read for their lengths.
        DQT | DHT => Action::Inspect,
        // Frame headers: kept to their defined length.
        _ if is_frame(marker) => Action::Inspect,
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

/// A restart interval (DRI) that is kept: one that changes the interval
/// in force, at most one before each scan (decoders use the last before
/// it, which has passed already when another comes: a second change is
/// refused). Another with the interval in force changes nothing and is
/// dropped.
fn keep_restart(
    stream: &mut Stream,
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
        out.push(segment);
    }
    Ok(())
}

/// A DQT or DHT segment: tables of their defined lengths that fill it,
/// each of an id a decoder knows, and at most [`MAX_JPEG_TABLES`] of
/// them between two scans.
///
/// Returns the tables that are kept: after the frame header, a
/// quantization table of an id no component uses is dropped.
fn check_tables(seen: &mut Seen, marker: u8, mut payload: &[u8]) -> Result<Vec<u8>, MediaError> {
    let mut kept = Vec::new();
    let corrupt = || MediaError::invalid("the JPEG's quantization or Huffman tables are corrupt");
    if payload.is_empty() {
        return Err(corrupt());
    }
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
        if marker == DHT || !seen.frame || seen.quantization & (1 << id) != 0 {
            kept.extend_from_slice(table);
        }
        seen.tables += 1;
        if seen.tables > MAX_JPEG_TABLES {
            return Err(MediaError::invalid(format!(
                "the JPEG defines more than {MAX_JPEG_TABLES} tables before a scan"
            )));
        }
    }
    Ok(kept)
}

/// A frame header, kept to its defined length: precision, height,
/// width, the count of components and 3 bytes for each.
fn keep_frame(
    stream: &mut Stream,
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
    // Each component: id, sampling factors, quantization table id.
    for component in payload[6..defined].chunks_exact(3) {
        let table = component[2];
        if table > 3 {
            return Err(MediaError::invalid("the JPEG's frame header is corrupt"));
        }
        seen.quantization |= 1 << table;
    }
    if payload.len() > defined {
        stream.changed = true;
        out.push(jpeg_segment(segment[1], &payload[..defined]));
    } else {
        out.push(segment);
    }
    Ok(())
}

/// A whole segment held to be read (EXIF, JFIF, ICC, Adobe, DRI): kept,
/// rewritten or dropped.
fn inspect_segment(
    stream: &mut Stream,
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
        return keep_restart(stream, seen, segment, out);
    }
    if is_frame(marker) {
        return keep_frame(stream, seen, segment, out);
    }
    if marker == DQT || marker == DHT {
        let kept = check_tables(seen, marker, payload)?;
        if kept.len() == payload.len() {
            out.push(segment);
        } else {
            stream.changed = true;
            if !kept.is_empty() {
                out.push(jpeg_segment(marker, &kept));
            }
        }
        return Ok(());
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
    use super::super::tests::{contains, encoded_jpeg, scrub, segment};

    const MARKER: &[u8] = b"NAME=John Q Public;SERIAL=XYZ123;GPS48.8584N2.2945E";

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
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/scrub");
        for (name, file, _) in crafted() {
            std::fs::write(format!("{dir}/a5-jpeg-{name}"), file).unwrap();
        }
    }
}

/// A JPEG keeps one frame header, at its defined length, and only the
/// tables its frame and scans use.
#[cfg(test)]
mod attack6 {
    use super::super::tests::{contains, encoded_jpeg, scrub, segment};
    use super::attack5::{insert_before, pixels, stored};

    const MARKER: &[u8] = b"NAME=John Q Public;SERIAL=XYZ123;GPS48.8584N2.2945E";

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
            assert_eq!(kept, base);
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

    /// Real files keep every byte: a progressive one (tables between its
    /// scans) and one with a restart interval.
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
        let kept = stored(&progressive);
        assert_eq!(kept, progressive);
        assert!(pixels(&kept) == pixels(&progressive));
        let base = encoded_jpeg();
        assert_eq!(stored(&base), base);
    }

    /// Writes the crafted files to the scrub corpus, which tests/parsers
    /// replays.
    #[test]
    #[ignore = "writes fuzz/corpus/scrub/: run by hand when the cases change"]
    fn write_corpus() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/scrub");
        let long = (
            "long-frame-header".into(),
            longer_frame(&encoded_jpeg(), MARKER),
        );
        for (name, file) in second_frames().into_iter().chain([long]) {
            std::fs::write(format!("{dir}/a6-jpeg-{name}"), file).unwrap();
        }
        for (name, file, _) in bad_tables() {
            std::fs::write(format!("{dir}/a6-jpeg-{name}"), file).unwrap();
        }
        let unused = insert_before(&encoded_jpeg(), 0xDA, &unused_dqt());
        std::fs::write(format!("{dir}/a6-jpeg-unused-dqt-after-the-frame"), unused).unwrap();
    }
}
