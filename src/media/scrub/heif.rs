//! HEIF, HEIC and AVIF: an allow-list of boxes and items, blanked in place.
//!
//! A HEIF file is a sequence of ISO-BMFF boxes; its `meta` box lists the
//! items (`iinf`) and where their bytes lie (`iloc`), usually in the `mdat`
//! box that follows. Items are addressed by absolute file offsets, so
//! nothing may move: what is not image data is overwritten with the same
//! number of bytes instead of being cut out.
//!
//! - Boxes: at the top level only `ftyp`, `meta`, `mdat`, `free` and `skip`
//!   are kept (the last two as padding: their payload is zeroed, wherever
//!   they are allowed); inside `meta` only the image structure (`hdlr`,
//!   `pitm`, `iloc`, `iinf`, `iref`, `iprp`, `idat`, `dinf`, `grpl`; not
//!   `ipro`, protected items' schemes, which the service cannot decode);
//!   inside `ipco` only the properties that say how the pixels look to a
//!   decoder the service has ([`PROPERTIES`]), and only those an item
//!   `iinf` declares is associated with. Any other box (a motion photo's `mpvd` video with its GPS track,
//!   `uuid` boxes with XMP, an image sequence's or motion track's `moov`,
//!   `udes` descriptions, creation times) becomes a `free` box of the same
//!   size filled with zeros. A sequence's samples lie in `mdat` where no
//!   item says, so they are zeroed with every other byte no item covers:
//!   the still image is what is kept.
//! - Kept boxes are parsed to what they define and the rest zeroed, since
//!   free text fits in their slack: `ftyp` brands that are not known
//!   ([`scrub_ftyp`]), property bytes past their defined length, `auxC`
//!   types that are not known and subtypes, `hvcC` NAL units other than
//!   parameter sets (SEI), `av1C` OBUs other than the sequence header
//!   ([`scrub_property`]), `dref` locations ([`scrub_data_references`]),
//!   `infe` strings ([`blank_item_strings`]), bytes after the fields of
//!   `pitm`, `iloc` and `ipma`, and after the fields of `uncC`, `ccst`,
//!   `a1lx`, `cmpC`, `icef`, `cloc`, `cclv` and `amve`; `cmpd` component
//!   URIs; `jpgC`'s APPn segments and comments (walked as a `jpeg` item);
//!   `iref` keeps only the known reference types ([`REFERENCES`]) between
//!   items `iinf` declares that have data (or are `iden` items derived
//!   from one that has), each item once,
//!   and `grpl` the known groups ([`GROUPS`]) of version 0, each to its
//!   ids with its flags zeroed, the rest `free` ([`scrub_references`], [`scrub_groups`]); item ids, chosen
//!   by the caller, become 1 to N in `iinf`'s order wherever they stand,
//!   each field keeping its width, and undeclared ones 0; an item the
//!   image cannot use, or of a type not known, has its type zeroed and
//!   is hidden ([`renumber_items`]);
//!   flags that no standard defines ([`zero_flags`]: of `meta`, `hdlr`,
//!   `iinf`, `pitm`, `iloc`, `iref`, `ispe`, all but the hidden flag of
//!   `infe` and the index width of `ipma`), `hdlr`'s pre_defined and
//!   reserved fields ([`scrub_handler`]), `infe` protection indices,
//!   `iloc` extent indices and the ids of `iloc` entries no `infe`
//!   describes ([`item_extents`]).
//! - Items: image items (`hvc1`, `av01`, …) are kept (a `grid`'s data to
//!   its defined 8 or 12 bytes, an `iovl`'s to its fields for as many
//!   images as its `dimg` references, a `tmap`'s to its fields for one or
//!   three channels ([`Shape`]), an `iden`'s, which has none, not at
//!   all), but those of [`UNSHOWN_ITEMS`] (tiles, layers, masks, codecs
//!   the service does not decode) only when the primary image uses them
//!   ([`unused_items`]); every
//!   other item's bytes are overwritten as they stream by: the `Exif` item
//!   by an empty TIFF structure, XMP (`mime` of `application/rdf+xml`) by
//!   an empty packet padded with spaces, anything else (other `mime` items,
//!   `uri ` items, unknown types, items `iinf` does not describe) by zeros.
//! - Bytes no item covers: every byte of an `mdat` or `idat` payload that
//!   no item's extent covers (text between two tiles, after the last item)
//!   is zeroed. Items must lie in those payloads: one whose bytes would be
//!   another box's (`ftyp`, the `meta` box, a `free` box), a metadata
//!   item built from another item (`iloc` construction method 2), that
//!   runs past
//!   the end of the file, that has an extent without a length (to the end
//!   of the data), or whose bytes an image item's overlap, is refused
//!   (`INVALID_ARGUMENT`); so is an item described twice. A file with no
//!   `meta` box has no items: all of its `mdat` payloads are zeroed.
//! - JPEG-coded items (`jpeg`): a phone JPEG stored whole, with its EXIF
//!   and XMP. They are walked segment by segment as they stream by, one byte
//!   of state at a time (see [`Walk`]): the segments the JPEG scrubber keeps
//!   stay, every other keeps its marker and length and has its payload
//!   zeroed, so nothing moves and the JPEG still decodes. Their EXIF
//!   orientation goes too: HEIF orients by `irot`. Their pieces must lie in
//!   order, and on one side of the `meta` box.
//! - Names: the free text kept structure may carry, the handler's name
//!   (`hdlr`, its last field) and every item's name (`infe`), is emptied in
//!   place: zeros, and in `infe` an XMP item's content type moves up, so no
//!   box changes size.
//!
//! Only the `meta` box is held (at most [`MAX_HEIF_META`]), and the `ftyp`
//! box (at most as much). Parsing it
//! allocates at most 1 × its length besides (16 bytes per `infe` entry,
//! each entry at least 16 bytes of the box) plus 48 KiB
//! ([`MAX_METADATA_EXTENTS`] pieces of 48 bytes) and 1 MiB
//! ([`MAX_IMAGE_EXTENTS`] ranges of image items of 16 bytes, kept until
//! they have streamed by; the payloads of the `mdat` boxes before it, at
//! most [`MAX_METADATA_EXTENTS`], take 16 bytes each too) and 4 KiB (a
//! bit for each property index an item uses), and its CPU is
//! linear in its length: every count read from the file is checked
//! against the bytes that remain before anything is looped over or sized
//! from it, boxes are walked without being collected, and items are found
//! by binary search; the bytes that stream by are matched against the
//! sorted ranges once each.
//! Orientation lives in the `irot` and `imir` properties, which are kept,
//! not in EXIF.
//!
//! Coded parameters and bitstreams are kept as they are, whatever bytes
//! they hold: `hvcC`'s six general constraint indicator bytes, the
//! payloads of its parameter sets, the bytes of `av1C`'s sequence header
//! OBU up to its declared size, `cmpd` component type values, and SEI or
//! unspecified NAL units and AV1 metadata or padding OBUs inside image
//! items' data.
//!
//! A file whose metadata items lie before its `meta` box (a `meta` after
//! `mdat`, as Samsung phones write them) cannot be blanked as those bytes go
//! by: the pieces behind, and the bytes of the `mdat` payloads gone by that
//! no item covers, are handed over as a [`Rescrub`] when the stream
//! ends, for a second pass over the stored bytes (the upload pipeline keeps
//! them where no caller can read them until then). The `meta` box itself,
//! and every box before it, is scrubbed on the way as usual, and the
//! primary image's size is read from it ([`Scrubbed::late_size`](super::Scrubbed::late_size)).
use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::icc;
use super::stream::Stream;
use crate::media::MediaError;

/// Largest `meta` box held to find the metadata items (an iPhone photo's is
/// a few KiB; grids of tiles and ICC profiles make it larger).
pub const MAX_HEIF_META: u64 = 4 * 1024 * 1024;

/// Most boxes read in one file: the box headers that stream by and the
/// boxes inside its `meta` boxes (a phone photo has a few hundred; a grid
/// of 48 tiles under a thousand).
pub const MAX_HEIF_BOXES: u32 = 100_000;

/// Brands of HEVC-coded HEIF (HEIC and its sequences).
const HEVC_BRANDS: [&[u8; 4]; 8] = [
    b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs",
];
/// Brands of AV1-coded HEIF (AVIF and its sequences and profiles).
const AV1_BRANDS: [&[u8; 4]; 5] = [b"avif", b"avis", b"avio", b"MA1A", b"MA1B"];
/// Structural brands of HEIF and MIAF images and sequences, whatever the
/// codec.
const HEIF_BRANDS: [&[u8; 4]; 4] = [b"mif1", b"mif2", b"miaf", b"msf1"];

/// The media type of a file that opens with `head`, when its `ftyp` box
/// names a HEIF-family brand, major or compatible: `image/heic` or
/// `image/avif` by the first codec brand, else `image/heif`. The one
/// list of brands for the sniffer and the scrubber: every file the sniffer
/// calls HEIF is scrubbed as one (the scrubber takes every `ftyp` file).
pub fn heif_type(head: &[u8]) -> Option<&'static str> {
    if head.len() < 12 || &head[4..8] != b"ftyp" {
        return None;
    }
    let size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let compatible = head.get(16..size.min(head.len())).unwrap_or_default();
    let mut heif = false;
    for brand in std::iter::once(&head[8..12]).chain(compatible.chunks_exact(4)) {
        if HEVC_BRANDS.iter().any(|b| *b == brand) {
            return Some("image/heic");
        }
        if AV1_BRANDS.iter().any(|b| *b == brand) {
            return Some("image/avif");
        }
        heif |= HEIF_BRANDS.iter().any(|b| *b == brand);
    }
    heif.then_some("image/heif")
}

/// Whether a file's first bytes are an ISO-BMFF `ftyp` box: all of them
/// are scrubbed as HEIF (the sniffer refuses those that name no HEIF
/// brand, see [`heif_type`]).
pub(super) fn is_heif(head: &[u8]) -> bool {
    head.len() >= 8 && &head[4..8] == b"ftyp"
}

/// Boxes kept at the top level of the file (not `moov`: an image
/// sequence, or a phone's motion track, is dropped and its still kept).
const TOP_LEVEL_BOXES: [&[u8; 4]; 5] = [b"ftyp", b"meta", b"mdat", b"free", b"skip"];
/// Boxes kept in a `meta` box: the image structure.
const META_BOXES: [&[u8; 4]; 11] = [
    b"hdlr", b"pitm", b"iloc", b"iinf", b"iref", b"iprp", b"idat", b"dinf", b"grpl", b"free",
    b"skip",
];
/// Item reference types kept in `iref` (thumbnails, auxiliary images,
/// derived images' inputs, metadata describing an image, base and
/// premultiplied images, items built from other items); any other becomes
/// `free`.
const REFERENCES: [&[u8; 4]; 7] = [
    b"thmb", b"auxl", b"dimg", b"cdsc", b"base", b"prem", b"iloc",
];
/// Entity groups kept in `grpl` (alternatives, stereo pairs, bursts); any
/// other becomes `free`.
const GROUPS: [&[u8; 4]; 3] = [b"altr", b"ster", b"brst"];
/// Item properties kept in `ipco`, each parsed to its fields and the rest
/// zeroed ([`scrub_property`]): the configurations of the codecs the
/// service decodes (HEVC, AV1, JPEG, uncompressed) and what decides how the
/// pixels look. Every other property becomes `free`: descriptions (`udes`),
/// times (`crtt`, `mdft`), `uuid` properties, and the configurations of
/// codecs and layers the service does not decode (`avcC`, `vvcC`, `evcC`,
/// `j2kH`, layered HEVC's `lhvC`, `oinf` and `tols`), sensor calibration
/// (`splz`, `sbpm`), palettes (`cpal`) and viewing environments (`reve`),
/// none of which libheif reads to decode the image.
const PROPERTIES: [&[u8; 4]; 27] = [
    b"hvcC", b"av1C", b"jpgC", b"uncC", b"cmpd", b"cmpC", b"icef", b"ispe", b"pixi", b"colr",
    b"irot", b"imir", b"clap", b"auxC", b"rloc", b"lsel", b"a1op", b"a1lx", b"clli", b"mdcv",
    b"cclv", b"amve", b"pasp", b"ccst", b"cloc", b"free", b"skip",
];
/// Item types whose bytes are image data (coded images, tiles, derived
/// images, masks); every other item is blanked (a `jpeg` item is walked
/// segment by segment, see [`Walk`]; a `grid` keeps its defined 8 or 12
/// bytes, an `iden` none).
const IMAGE_ITEMS: [&[u8; 4]; 10] = [
    b"hvc1", b"hvt1", b"lhv1", b"av01", b"avc1", b"vvc1", b"evc1", b"j2k1", b"unci", b"mski",
];

/// Image items of types the service does not decode, or that are only
/// shown as part of another image (tiles, layers, masks): when the
/// primary image does not use them ([`unused_items`]) nobody sees them,
/// and their bytes are blanked as other items' are.
const UNSHOWN_ITEMS: [&[u8; 4]; 8] = [
    b"hvt1", b"lhv1", b"avc1", b"vvc1", b"evc1", b"j2k1", b"unci", b"mski",
];

/// Item types other than images' that keep their type when the image may
/// reach them: metadata (blanked), and derived images, which have no
/// coded data.
const TYPED_ITEMS: [&[u8; 4]; 8] = [
    b"Exif", b"mime", b"uri ", b"grid", b"iovl", b"iden", b"tmap", b"jpeg",
];

fn listed(list: &[&[u8; 4]], kind: &[u8; 4]) -> bool {
    list.contains(&kind)
}

/// Whether a box of `kind` is kept at the top level when metadata is
/// removed.
fn kept_box(kind: &[u8; 4]) -> bool {
    listed(&TOP_LEVEL_BOXES, kind)
}

fn corrupt() -> MediaError {
    MediaError::invalid("the HEIF's box structure is corrupt")
}

fn meta_corrupt() -> MediaError {
    MediaError::invalid("the HEIF's meta box is corrupt")
}

fn outside_media() -> MediaError {
    MediaError::invalid(
        "the HEIF's item locations point outside its media data (mdat) and item data (idat)",
    )
}

/// Counts one more box read, refusing more than [`MAX_HEIF_BOXES`].
fn count_box(count: &mut u32) -> Result<(), MediaError> {
    *count += 1;
    if *count > MAX_HEIF_BOXES {
        return Err(MediaError::invalid(format!(
            "the HEIF has more than {MAX_HEIF_BOXES} boxes"
        )));
    }
    Ok(())
}

/// What the HEIF scrubber is reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// A box header: size and type (and a 64-bit size when the size is 1).
    Header,
    /// Holding a whole `meta` box of `len` bytes.
    Meta { len: usize },
    /// Passing `remaining` bytes of a box (`None`: up to the end of file),
    /// as zeros when `blank`; an `mdat` box's payload when `media`.
    Body {
        remaining: Option<u64>,
        blank: bool,
        media: bool,
    },
}

/// The HEIF scrubber's state.
#[derive(Debug)]
pub(super) struct Heif {
    step: Step,
    /// Offset in the file of the next byte taken from the input.
    position: u64,
    /// Byte ranges of metadata items still ahead, sorted, not overlapping.
    blanks: Vec<Blank>,
    /// Byte ranges of metadata items that had gone by when their `meta`
    /// box came, sorted, not overlapping, and the bytes of the `mdat`
    /// boxes gone by that no item covers: for the second pass.
    behind: Vec<Blank>,
    /// Byte ranges of image items still ahead, sorted, merged: what of an
    /// `mdat` box is kept.
    images: VecDeque<(u64, u64)>,
    /// The payloads of the `mdat` boxes that came before any `meta` box.
    media: Vec<(u64, u64)>,
    /// The primary image's size, from a `meta` box that came after `mdat`.
    late_size: Option<(u32, u32)>,
    /// A `meta` box was read.
    meta_seen: bool,
    /// The `mdat` box came before any `meta` box.
    mdat_first: bool,
    /// Boxes read so far (see [`MAX_HEIF_BOXES`]).
    boxes: u32,
}

/// Part of an item to overwrite as it streams by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Blank {
    /// File offsets: `start..end`.
    start: u64,
    end: u64,
    /// Offset of `start` within the item's bytes (items may have several
    /// extents), and the item's whole length.
    item_offset: u64,
    item_len: u64,
    kind: Item,
    /// The item's id, to carry a `jpeg` item's walk from one extent to
    /// the next.
    id: u64,
    /// Where a `jpeg` item's segment walk stands at `start`.
    walk: Walk,
}

/// The kinds of items that are blanked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    Exif,
    Xmp,
    /// Any other item that is not image data: zeros.
    Other,
    /// A JPEG-coded image: its metadata segments are blanked ([`Walk`]).
    Jpeg,
    /// A derived image's data: the fields its `shape` defines are kept,
    /// the rest zeroed; `long` is read from its flags as they stream by.
    Defined {
        shape: Shape,
        long: bool,
    },
}

/// The data of the derived images whose fields are known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// A grid of tiles: version, flags, rows and columns, and width and
    /// height of 16 bits (32 when long, flag 1).
    Grid,
    /// An overlay of `refs` images (its `dimg` references): version,
    /// flags, four fill values of 16 bits, then width and height and an
    /// offset pair per image, of 16 bits (32 when long, flag 1).
    Overlay { refs: u32 },
    /// A tone map (a gain map's metadata): version, minimum and writer
    /// versions, flags, two headrooms, and five fractions per channel, of
    /// one channel (three when multichannel, the flags' high bit).
    ToneMap,
}

impl Shape {
    /// Whether the data is long, when byte `at` of it (`byte`) says.
    fn long(self, at: u64, byte: u8) -> Option<bool> {
        match self {
            Shape::Grid | Shape::Overlay { .. } => (at == 1).then_some(byte & 1 == 1),
            Shape::ToneMap => (at == 5).then_some(byte & 0x80 != 0),
        }
    }

    /// The length the fields take.
    fn len(self, long: bool) -> u64 {
        let field = if long { 4 } else { 2 };
        match self {
            Shape::Grid => 4 + 2 * field,
            Shape::Overlay { refs } => 10 + 2 * field * (1 + u64::from(refs)),
            Shape::ToneMap => 22 + if long { 120 } else { 40 },
        }
    }
}

/// The empty item an `Exif` item becomes: the 4-byte offset to the TIFF
/// header (0), a big-endian TIFF header, an IFD with no entries, no next
/// IFD. Shorter items become zeros.
const EMPTY_EXIF: [u8; 18] = [
    0, 0, 0, 0, b'M', b'M', 0, 0x2A, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0,
];

/// The empty item an XMP item becomes, padded with spaces (shorter items
/// become spaces only).
const EMPTY_XMP: &[u8] = b"<?xpacket begin=\"\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\
<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"/><?xpacket end=\"w\"?>";

impl Item {
    /// Byte `at` of the replacement for an item of `len` bytes.
    fn byte(self, at: u64, len: u64) -> u8 {
        let (template, fill): (&[u8], u8) = match self {
            Item::Exif => (&EMPTY_EXIF, 0),
            Item::Xmp => (EMPTY_XMP, b' '),
            Item::Other | Item::Jpeg | Item::Defined { .. } => (&[], 0),
        };
        if len < template.len() as u64 {
            return fill;
        }
        usize::try_from(at)
            .ok()
            .and_then(|at| template.get(at))
            .copied()
            .unwrap_or(fill)
    }
}

/// Where the walk through a `jpeg` item's segments stands, one byte at a
/// time (no more than this is held, so an item may be cut anywhere across
/// chunks and extents): it mirrors the JPEG scrubber's allow-list, but in
/// place. Frame headers, tables, restart intervals, scans and their data,
/// and EOI pass as they are; APP0 JFIF keeps its 12 bytes of version and
/// densities, APP14 Adobe its 12 bytes; every other segment (EXIF and XMP
/// in APP1, IPTC, vendor segments, comments, and APP2 ICC profiles, whose
/// free text cannot be found one byte at a time: the JPEG then renders as
/// sRGB) keeps its
/// marker and length and has its payload zeroed, which readers skip as an
/// unknown segment. Bytes after EOI, and every byte from where the structure
/// breaks, become zeros.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Walk {
    /// Before SOI, and after its `FF`.
    #[default]
    Start,
    StartMarker,
    /// Expecting a marker; `ff` once an `FF` went by, `scanned` once a
    /// scan has begun.
    Marker {
        ff: bool,
        scanned: bool,
    },
    /// A segment's length; `high` once its first byte went by.
    Length {
        marker: u8,
        high: Option<u8>,
        scanned: bool,
    },
    /// `left` bytes of a segment's payload, `at` of them gone by.
    Payload {
        marker: u8,
        at: u16,
        left: u16,
        keep: Keep,
        scanned: bool,
    },
    /// Entropy-coded data; `ff` after an `FF`.
    Scan {
        ff: bool,
    },
    /// After EOI or a break: zeros.
    Zeros,
}

/// What is kept of a segment's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keep {
    All,
    Nothing,
    /// The payload when it opens with `tag`: the bytes of `tag` (which say
    /// nothing) while they match, then up to `limit` bytes in all
    /// (`None`: all); zeros from the first byte that does not match.
    Tagged {
        tag: &'static [u8],
        limit: Option<u16>,
        matched: bool,
    },
}

impl Keep {
    /// The segments the JPEG scrubber keeps, and how much of them.
    fn of(marker: u8) -> Self {
        let tagged = |tag, limit| Keep::Tagged {
            tag,
            limit,
            matched: true,
        };
        match marker {
            0xC0..=0xC7 | 0xC9..=0xCF | 0xDA..=0xDD => Keep::All,
            // JFIF without its thumbnail (its size, bytes 12 and 13, too).
            0xE0 => tagged(b"JFIF\0", Some(12)),
            0xEE => tagged(b"Adobe", Some(12)),
            _ => Keep::Nothing,
        }
    }

    /// Payload byte `at`, which is `byte`, as kept.
    fn byte(&mut self, at: u16, byte: u8) -> u8 {
        match self {
            Keep::All => byte,
            Keep::Nothing => 0,
            Keep::Tagged {
                tag,
                limit,
                matched,
            } => {
                if let Some(&expected) = tag.get(usize::from(at)) {
                    *matched &= byte == expected;
                }
                let kept = *matched && limit.is_none_or(|limit| at < limit);
                if kept { byte } else { 0 }
            }
        }
    }
}

impl Walk {
    /// The next byte of the item, `byte`, as it is stored.
    fn step(&mut self, byte: u8) -> u8 {
        let (next, out) = self.next(byte);
        *self = next;
        out
    }

    fn next(self, byte: u8) -> (Walk, u8) {
        let after = |marker: u8, scanned: bool| {
            if marker == 0xDA {
                Walk::Scan { ff: false }
            } else {
                Walk::Marker { ff: false, scanned }
            }
        };
        match self {
            Walk::Start if byte == 0xFF => (Walk::StartMarker, byte),
            Walk::StartMarker if byte == 0xD8 => (
                Walk::Marker {
                    ff: false,
                    scanned: false,
                },
                byte,
            ),
            Walk::Start | Walk::StartMarker | Walk::Zeros => (Walk::Zeros, 0),
            Walk::Marker { ff: false, scanned } => match byte {
                0xFF => (Walk::Marker { ff: true, scanned }, byte),
                // Damage after a scan: decoders skip to the next marker.
                _ if scanned => (Walk::Scan { ff: false }, byte),
                _ => (Walk::Zeros, 0),
            },
            Walk::Marker { ff: true, scanned } => match byte {
                // Fill bytes.
                0xFF => (self, byte),
                _ if scanned && !super::jpeg::ends_scan(byte) => (Walk::Scan { ff: false }, byte),
                // EOI: what follows is not the image.
                0xD9 => (Walk::Zeros, byte),
                0x00 | 0x01 | 0xD0..=0xD8 => (Walk::Zeros, 0),
                marker => (
                    Walk::Length {
                        marker,
                        high: None,
                        scanned,
                    },
                    byte,
                ),
            },
            Walk::Length {
                marker,
                high: None,
                scanned,
            } => (
                Walk::Length {
                    marker,
                    high: Some(byte),
                    scanned,
                },
                byte,
            ),
            Walk::Length {
                marker,
                high: Some(high),
                scanned,
            } => match u16::from_be_bytes([high, byte]) {
                len if len < 2 && scanned => (Walk::Scan { ff: false }, byte),
                len if len < 2 => (Walk::Zeros, 0),
                2 => (after(marker, scanned), byte),
                len => (
                    Walk::Payload {
                        marker,
                        at: 0,
                        left: len - 2,
                        keep: Keep::of(marker),
                        scanned,
                    },
                    byte,
                ),
            },
            Walk::Payload {
                marker,
                at,
                left,
                mut keep,
                scanned,
            } => {
                let out = keep.byte(at, byte);
                let next = if left == 1 {
                    after(marker, scanned)
                } else {
                    Walk::Payload {
                        marker,
                        at: at + 1,
                        left: left - 1,
                        keep,
                        scanned,
                    }
                };
                (next, out)
            }
            Walk::Scan { ff: true } if byte == 0xFF => (self, byte),
            Walk::Scan { ff: true } if super::jpeg::ends_scan(byte) => Walk::Marker {
                ff: true,
                scanned: true,
            }
            .next(byte),
            Walk::Scan { .. } => (Walk::Scan { ff: byte == 0xFF }, byte),
        }
    }
}

impl Blank {
    /// The replacement for the file's byte at `at`, which is `original`:
    /// the bytes of an item are given in order.
    fn byte(&mut self, at: u64, original: u8) -> u8 {
        match self.kind {
            Item::Jpeg => self.walk.step(original),
            Item::Defined { shape, long } => {
                let at = self.item_offset + (at - self.start);
                let long = shape.long(at, original).unwrap_or(long);
                self.kind = Item::Defined { shape, long };
                if at < shape.len(long) { original } else { 0 }
            }
            kind => kind.byte(self.item_offset + (at - self.start), self.item_len),
        }
    }
}

/// Overwrites the parts of `blanks` (sorted, disjoint) in `bytes`, the
/// file's bytes from `start`; a `jpeg` item's walk passes on to its next
/// extent when one ends here. Whether any byte was overwritten (an item
/// other than `jpeg` met counts as changed).
fn overwrite(blanks: &mut [Blank], bytes: &mut [u8], start: u64) -> bool {
    let end = start + bytes.len() as u64;
    let mut changed = false;
    for i in 0..blanks.len() {
        let blank = &mut blanks[i];
        if blank.start >= end {
            break;
        }
        if blank.end <= start {
            continue;
        }
        let carried = matches!(blank.kind, Item::Jpeg | Item::Defined { .. });
        changed |= !carried;
        let (mut at, to) = (blank.start.max(start), blank.end.min(end));
        while at < to {
            if blank.walk == (Walk::Scan { ff: false }) {
                // Scan data passes as it is up to the next `FF`.
                let rest = &bytes[(at - start) as usize..(to - start) as usize];
                at += memchr::memchr(0xFF, rest).unwrap_or(rest.len()) as u64;
                if at == to {
                    break;
                }
            }
            let byte = &mut bytes[(at - start) as usize];
            let new = blank.byte(at, *byte);
            changed |= new != *byte;
            *byte = new;
            at += 1;
        }
        // A derived image's flags, read in its first piece, carry on the
        // same way.
        let (id, walk, kind) = (blank.id, blank.walk, blank.kind);
        if carried
            && blank.end <= end
            && let Some(next) = blanks[i + 1..].iter_mut().find(|next| {
                std::mem::discriminant(&next.kind) == std::mem::discriminant(&kind) && next.id == id
            })
        {
            next.walk = walk;
            next.kind = kind;
        }
    }
    changed
}

/// Sorts `blanks` and refuses overlapping ones (no real file overlaps its
/// metadata items; overlaps would make the bytes written per byte read
/// grow with their number).
fn sort_disjoint(blanks: &mut [Blank]) -> Result<(), MediaError> {
    blanks.sort_unstable_by_key(|blank| blank.start);
    if blanks.windows(2).any(|pair| pair[1].start < pair[0].end) {
        return Err(MediaError::invalid("the HEIF's metadata items overlap"));
    }
    Ok(())
}

impl Heif {
    pub(super) fn new() -> Self {
        Self {
            step: Step::Header,
            position: 0,
            blanks: Vec::new(),
            behind: Vec::new(),
            images: VecDeque::new(),
            media: Vec::new(),
            late_size: None,
            meta_seen: false,
            mdat_first: false,
            boxes: 0,
        }
    }

    /// Refuses a file that ends here: inside a box (other than one that
    /// runs to the end of the file), or with an item still ahead (past the
    /// end). A file with no `meta` box has no item: every `mdat` payload
    /// (a sequence's samples) is zeroed by the second pass.
    pub(super) fn complete(&mut self, pending: usize) -> Result<(), MediaError> {
        let between = match self.step {
            Step::Header => pending == 0,
            Step::Body { remaining, .. } => remaining.is_none_or(|r| r == 0),
            Step::Meta { .. } => false,
        };
        if !between {
            return Err(MediaError::invalid(
                "the HEIF is truncated: it ends inside a box",
            ));
        }
        self.pass_images();
        if !self.blanks.is_empty() || !self.images.is_empty() {
            return Err(MediaError::invalid(
                "the HEIF's item locations point past its end",
            ));
        }
        if !self.meta_seen {
            let zeros = self.gone_by(&[], &[], true)?;
            self.behind.extend(zeros);
        }
        Ok(())
    }

    /// For a `meta` box whose items (`images`, `blanks`, sorted) lie
    /// before it: refuses those not in an `mdat` payload gone by, and
    /// returns the bytes of those payloads that no item covers, to be
    /// zeroed by the second pass.
    fn gone_by(
        &self,
        images: &[(u64, u64)],
        blanks: &[Blank],
        first: bool,
    ) -> Result<Vec<Blank>, MediaError> {
        let within = |start: u64, end: u64| {
            let at = self.media.partition_point(|&(from, _)| from <= start);
            at > 0 && end <= self.media[at - 1].1
        };
        if !images.iter().all(|&(start, end)| within(start, end))
            || !blanks.iter().all(|blank| within(blank.start, blank.end))
        {
            return Err(outside_media());
        }
        refuse_shared(images, blanks)?;
        let mut zeros = Vec::new();
        // The `mdat` boxes between two `meta` boxes were zeroed as they
        // went by.
        if !first {
            return Ok(zeros);
        }
        for &(start, end) in &self.media {
            gaps(start, end, images, blanks, |from, to| {
                zeros.push(Blank {
                    start: from,
                    end: to,
                    item_offset: 0,
                    item_len: to - from,
                    kind: Item::Other,
                    id: 0,
                    walk: Walk::default(),
                });
            });
            if zeros.len() > MAX_METADATA_EXTENTS {
                return Err(too_many_pieces());
            }
        }
        Ok(zeros)
    }

    /// Forgets the image ranges that have gone by.
    fn pass_images(&mut self) {
        while self
            .images
            .front()
            .is_some_and(|&(_, end)| end <= self.position)
        {
            self.images.pop_front();
        }
    }

    /// Refuses the box that starts here and whose bytes up to `reach` are
    /// no item's (all but an `mdat` box's payload) when an item lies among
    /// them: its bytes would be the box's, read as the item's.
    fn refuse_items_in(&mut self, reach: u64) -> Result<(), MediaError> {
        self.pass_images();
        let image = self.images.front().map(|&(start, _)| start);
        let blank = self.blanks.first().map(|blank| blank.start);
        if image.into_iter().chain(blank).any(|start| start < reach) {
            return Err(outside_media());
        }
        Ok(())
    }

    /// `bytes`, the file's bytes at `self.position` in an `mdat` box's
    /// payload, with those no item covers zeroed, once a `meta` box has
    /// said where the items lie.
    fn media(&mut self, bytes: Bytes, changed: &mut bool) -> Bytes {
        if !self.meta_seen {
            return bytes;
        }
        self.pass_images();
        let (start, end) = (self.position, self.position + bytes.len() as u64);
        let images = self.images.make_contiguous();
        let mut any = false;
        gaps(start, end, images, &self.blanks, |_, _| any = true);
        if !any {
            return bytes;
        }
        let mut copy = BytesMut::from(&bytes[..]);
        *changed |= zero_gaps(&mut copy, start, images, &self.blanks);
        copy.freeze()
    }

    /// `bytes`, the file's bytes at `self.position`, with the parts of
    /// metadata items among them overwritten.
    fn blanked(&mut self, bytes: Bytes, changed: &mut bool) -> Bytes {
        blank_at(&mut self.blanks, &mut self.position, bytes, changed)
    }

    /// The length of the `meta` box being gathered, if one is.
    pub(super) fn holding(&self) -> Option<u64> {
        match self.step {
            Step::Meta { len } => Some(len as u64),
            _ => None,
        }
    }

    /// Whether the bytes gone by may hold metadata that is yet to be, or
    /// was, found behind: no `meta` box read yet, or one that pointed
    /// behind itself.
    pub(super) fn may_point_behind(&self) -> bool {
        !self.meta_seen || !self.behind.is_empty()
    }

    /// The second pass the file needs, if any, and the primary image's
    /// size from a `meta` box after `mdat`.
    pub(super) fn take_late(&mut self) -> (Option<Rescrub>, Option<(u32, u32)>) {
        let behind = std::mem::take(&mut self.behind);
        let rescrub = (!behind.is_empty()).then_some(Rescrub {
            blanks: behind,
            position: 0,
        });
        (rescrub, self.late_size)
    }
}

/// `bytes`, the file's bytes at `*position`, with the parts of `blanks`
/// (sorted, disjoint) among them overwritten; moves `*position` past them
/// and forgets the blanks passed.
fn blank_at(
    blanks: &mut Vec<Blank>,
    position: &mut u64,
    bytes: Bytes,
    changed: &mut bool,
) -> Bytes {
    let (start, end) = (*position, *position + bytes.len() as u64);
    *position = end;
    // Sorted and disjoint: the ones met here are at the front.
    let hits = blanks
        .iter()
        .take_while(|b| b.start < end)
        .filter(|b| b.end > start)
        .count();
    if hits == 0 {
        blanks.retain(|b| b.end > end);
        return bytes;
    }
    let mut copy = BytesMut::from(&bytes[..]);
    *changed |= overwrite(blanks, &mut copy, start);
    blanks.retain(|b| b.end > end);
    copy.freeze()
}

/// The second pass over a HEIF whose metadata items came before its `meta`
/// box: the stored bytes of the first pass, streamed through
/// [`Rescrub::apply`] from the first byte on, come out as a file whose
/// `meta` came first would have (the items overwritten the same way, every
/// other byte as it was). It holds the pieces to overwrite, at most
/// [`MAX_METADATA_EXTENTS`] of 48 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rescrub {
    blanks: Vec<Blank>,
    /// Offset in the file of the next byte.
    position: u64,
}

impl Rescrub {
    /// The next bytes of the file, with the metadata among them
    /// overwritten (a slice of `bytes` when there is none).
    pub fn apply(&mut self, bytes: Bytes) -> Bytes {
        blank_at(&mut self.blanks, &mut self.position, bytes, &mut false)
    }

    /// Whether every piece to overwrite has gone by.
    pub fn is_done(&self) -> bool {
        self.blanks.is_empty()
    }

    /// The bytes of the file the pieces to overwrite cover.
    pub fn blanked_bytes(&self) -> u64 {
        self.blanks.iter().map(|b| b.end - b.start).sum()
    }
}

impl Heif {
    /// Takes HEIF bytes: box headers, a `meta` box held whole and parsed,
    /// other boxes passed with their metadata items overwritten (or as
    /// zeros, when the box is not one kept).
    pub(super) fn push(
        &mut self,
        stream: &mut Stream,
        chunk: &mut Bytes,
        out: &mut Vec<Bytes>,
    ) -> Result<(), MediaError> {
        let heif = self;
        match heif.step {
            Step::Header => {
                if !stream.fill(chunk, 8) {
                    return Ok(());
                }
                let (size, kind) = stream.length_and_kind();
                let size = u64::from(size);
                let (size, header) = match size {
                    1 => {
                        if !stream.fill(chunk, 16) {
                            return Ok(());
                        }
                        let mut large = [0u8; 8];
                        large.copy_from_slice(&stream.pending[8..16]);
                        (Some(u64::from_be_bytes(large)), 16)
                    }
                    0 => (None, 8),
                    size => (Some(size), 8),
                };
                if size.is_some_and(|size| size < header) {
                    return Err(corrupt());
                }
                count_box(&mut heif.boxes)?;
                let start = heif.position;
                let end = size.map_or(u64::MAX, |size| start.saturating_add(size));
                let media = &kind == b"mdat";
                if media && !heif.meta_seen {
                    heif.mdat_first = true;
                }
                if !stream.keep_metadata {
                    // Items lie in `mdat` payloads (or in `idat`): any
                    // other bytes are a box's own.
                    heif.refuse_items_in(if media { start + header } else { end })?;
                    if media && !heif.meta_seen {
                        if heif.media.len() >= MAX_METADATA_EXTENTS {
                            return Err(MediaError::invalid(format!(
                                "the HEIF has more than {MAX_METADATA_EXTENTS} media data \
                                 (mdat) boxes before its meta box"
                            )));
                        }
                        heif.media.push((start + header, end));
                    }
                }
                let keep = stream.keep_metadata || kept_box(&kind);
                // A `meta` after `mdat` is held even when metadata is kept:
                // the image's size is read from it.
                let hold = !stream.keep_metadata || (heif.mdat_first && !heif.meta_seen);
                // So is an `ftyp` when metadata is removed: its brands are
                // rewritten.
                let ftyp = &kind == b"ftyp" && !stream.keep_metadata;
                if (&kind == b"meta" && hold) || ftyp {
                    let Some(size) = size else {
                        return Err(corrupt());
                    };
                    if size > MAX_HEIF_META {
                        return Err(MediaError::invalid(format!(
                            "the HEIF's {} box is larger than {} MiB",
                            String::from_utf8_lossy(&kind),
                            MAX_HEIF_META >> 20
                        )));
                    }
                    heif.step = Step::Meta { len: size as usize };
                    return Ok(());
                }
                let mut head = stream.pending.split();
                if !keep {
                    head[4..8].copy_from_slice(b"free");
                    stream.changed = true;
                }
                out.push(heif.blanked(head.freeze(), &mut stream.changed));
                heif.step = Step::Body {
                    remaining: size.map(|size| size - header),
                    // Padding is kept as padding: its bytes are nobody's.
                    blank: !keep || (!stream.keep_metadata && is_padding(&kind)),
                    media: media && !stream.keep_metadata,
                };
            }
            Step::Meta { len } => {
                if !stream.fill(chunk, len) {
                    return Ok(());
                }
                let mut meta = stream.pending.split();
                if &meta[4..8] == b"ftyp" {
                    stream.changed |= scrub_ftyp(&mut meta);
                    heif.position += meta.len() as u64;
                    out.push(meta.freeze());
                    heif.step = Step::Header;
                    return Ok(());
                }
                let meta_start = heif.position;
                let meta_end = meta_start + meta.len() as u64;
                if heif.mdat_first && !heif.meta_seen {
                    heif.late_size = Some(primary_size(&meta, &mut heif.boxes)?);
                }
                let first = !heif.meta_seen;
                heif.meta_seen = true;
                heif.position = meta_end;
                if stream.keep_metadata {
                    out.push(meta.freeze());
                    heif.step = Step::Header;
                    return Ok(());
                }
                let (extents, changed) = scrub_meta(&mut meta, &mut heif.boxes)?;
                let Extents {
                    blanks: mut ahead,
                    images: mut images_ahead,
                    ..
                } = extents;
                // Items wholly before this box are blanked by the second
                // pass; none may lie in it.
                let straddles = |start: u64, end: u64| start < meta_end && end > meta_start;
                if ahead.iter().any(|blank| straddles(blank.start, blank.end))
                    || images_ahead
                        .iter()
                        .any(|&(start, end)| straddles(start, end))
                {
                    return Err(MediaError::invalid(
                        "the HEIF's item locations point into its own boxes",
                    ));
                }
                // Both sorted: the pieces behind come first.
                let behind_count = ahead.partition_point(|blank| blank.end <= meta_start);
                let behind: Vec<Blank> = ahead.drain(..behind_count).collect();
                let images_behind_count =
                    images_ahead.partition_point(|&(_, end)| end <= meta_start);
                let images_behind: Vec<(u64, u64)> =
                    images_ahead.drain(..images_behind_count).collect();
                let jpeg = |blank: &&Blank| blank.kind == Item::Jpeg;
                if behind
                    .iter()
                    .filter(jpeg)
                    .any(|b| ahead.iter().filter(jpeg).any(|a| a.id == b.id))
                {
                    return Err(MediaError::invalid(
                        "the HEIF's jpeg item lies both before and after its meta box",
                    ));
                }
                let mut gone_by = heif.gone_by(&images_behind, &behind, first)?;
                stream.changed |= changed || !behind.is_empty() || !gone_by.is_empty();
                // A second `meta` box (rare) adds to what the first found.
                heif.blanks.extend(ahead);
                heif.behind.extend(behind);
                heif.behind.append(&mut gone_by);
                if heif.blanks.len() + heif.behind.len() > MAX_METADATA_EXTENTS {
                    return Err(too_many_pieces());
                }
                sort_disjoint(&mut heif.blanks)?;
                sort_disjoint(&mut heif.behind)?;
                let mut images: Vec<(u64, u64)> = heif.images.drain(..).collect();
                images.extend(images_ahead);
                merge(&mut images);
                if images.len() > MAX_IMAGE_EXTENTS {
                    return Err(too_many_image_pieces());
                }
                refuse_shared(&images, &heif.blanks)?;
                heif.images = images.into();
                out.push(meta.freeze());
                heif.step = Step::Header;
            }
            Step::Body {
                remaining,
                blank,
                media,
            } => {
                let n = remaining.map_or(chunk.len(), |r| {
                    usize::try_from(r).unwrap_or(usize::MAX).min(chunk.len())
                });
                let mut part = chunk.split_to(n);
                if media {
                    part = heif.media(part, &mut stream.changed);
                }
                let part = heif.blanked(part, &mut stream.changed);
                if blank {
                    stream.changed |= part.iter().any(|&b| b != 0);
                    out.push(Bytes::from(vec![0; n]));
                } else {
                    out.push(part);
                }
                heif.step = match remaining.map(|r| r - n as u64) {
                    Some(0) => Step::Header,
                    remaining => Step::Body {
                        remaining,
                        blank,
                        media,
                    },
                };
            }
        }
        Ok(())
    }
}

/// A big-endian reader over a box's bytes that refuses to read past them.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], MediaError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        let end = end.ok_or_else(|| MediaError::invalid("the HEIF's meta box is truncated"))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    /// An unsigned big-endian number of `n` bytes (at most 8).
    fn uint(&mut self, n: usize) -> Result<u64, MediaError> {
        debug_assert!(n <= 8);
        Ok(be_uint(self.take(n)?))
    }

    fn u8(&mut self) -> Result<u8, MediaError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u64, MediaError> {
        self.uint(2)
    }

    fn u32(&mut self) -> Result<u64, MediaError> {
        self.uint(4)
    }

    /// A full box's version (its flags skipped).
    fn version(&mut self) -> Result<u8, MediaError> {
        let version = self.u8()?;
        self.take(3)?;
        Ok(version)
    }

    /// A NUL-terminated string (the rest, when unterminated).
    fn string(&mut self) -> &'a [u8] {
        let rest = &self.bytes[self.at..];
        let len = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        self.at += (len + 1).min(rest.len());
        &rest[..len]
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }
}

/// A box inside a held buffer: its type and offsets in the buffer.
#[derive(Clone, Copy, Debug)]
struct Child {
    kind: [u8; 4],
    /// The box's first byte, its payload's, and the byte after it.
    start: usize,
    body: usize,
    end: usize,
}

/// The box at `*at` in `bytes[..end]`, moving `*at` past it; `None` at
/// `end`. Every box is counted against [`MAX_HEIF_BOXES`].
fn next_box(
    bytes: &[u8],
    at: &mut usize,
    end: usize,
    count: &mut u32,
) -> Result<Option<Child>, MediaError> {
    if *at >= end {
        return Ok(None);
    }
    let mut reader = Reader::new(&bytes[*at..end]);
    let size = reader.u32().map_err(|_| meta_corrupt())?;
    let kind: [u8; 4] = reader
        .take(4)
        .map_err(|_| meta_corrupt())?
        .try_into()
        .map_err(|_| meta_corrupt())?;
    let (size, header) = match size {
        1 => (reader.uint(8).map_err(|_| meta_corrupt())?, 16),
        0 => ((end - *at) as u64, 8),
        size => (size, 8),
    };
    let size = usize::try_from(size).map_err(|_| meta_corrupt())?;
    if size < header || size > end - *at {
        return Err(meta_corrupt());
    }
    count_box(count)?;
    let child = Child {
        kind,
        start: *at,
        body: *at + header,
        end: *at + size,
    };
    *at = child.end;
    Ok(Some(child))
}

/// The children of `parent` (a full box when `full`), one by one.
fn children(parent: &Child, full: bool) -> Result<usize, MediaError> {
    let first = parent.body + if full { 4 } else { 0 };
    if first > parent.end {
        return Err(meta_corrupt());
    }
    Ok(first)
}

/// Makes `child` a `free` box of zeros, in place.
fn blank_box(bytes: &mut [u8], child: &Child) {
    bytes[child.start + 4..child.start + 8].copy_from_slice(b"free");
    bytes[child.body..child.end].fill(0);
}

/// Notes the one box of a kind that a `meta` box may hold.
fn once(slot: &mut Option<Child>, child: Child) -> Result<(), MediaError> {
    if slot.replace(child).is_some() {
        return Err(MediaError::invalid(format!(
            "the HEIF's meta box has two {} boxes",
            String::from_utf8_lossy(&child.kind)
        )));
    }
    Ok(())
}

/// Zeros a `free` or `skip` box's payload, in place (its header stays);
/// whether it held anything.
fn zero_payload(bytes: &mut [u8], child: &Child) -> bool {
    let payload = &mut bytes[child.body..child.end];
    let held = payload.iter().any(|&b| b != 0);
    payload.fill(0);
    held
}

fn is_padding(kind: &[u8; 4]) -> bool {
    matches!(kind, b"free" | b"skip")
}

/// Blanks, in `meta` (a whole `meta` box), the boxes and items that are not
/// image structure, and the bytes of its `idat` that no item covers;
/// returns where the items lie in the file (the pieces of those blanked,
/// the ranges of the images, file offsets), and whether `meta` changed.
fn scrub_meta(meta: &mut [u8], count: &mut u32) -> Result<(Extents, bool), MediaError> {
    let mut at = 0;
    let outer = next_box(meta, &mut at, meta.len(), count)?.ok_or_else(meta_corrupt)?;
    let (mut iinf, mut iloc, mut idat, mut primary) = (None, None, None, None);
    let mut changed = zero_flags(&mut meta[outer.body..outer.end], 0);
    let first = children(&outer, true)?;
    let mut at = first;
    while let Some(child) = next_box(meta, &mut at, outer.end, count)? {
        match &child.kind {
            b"iinf" => once(&mut iinf, child)?,
            b"iloc" => once(&mut iloc, child)?,
            b"idat" => once(&mut idat, child)?,
            b"pitm" => {
                let (id, zeroed) = scrub_primary(meta, &child)?;
                primary = Some(id);
                changed |= zeroed;
            }
            // Read once the items are known, below.
            b"iref" | b"iprp" => {}
            b"grpl" => changed |= scrub_groups(meta, &child, count)?,
            b"hdlr" => changed |= scrub_handler(meta, &child),
            b"dinf" => changed |= scrub_data_references(meta, &child, count)?,
            kind if is_padding(kind) => changed |= zero_payload(meta, &child),
            kind if listed(&META_BOXES, kind) => {}
            _ => {
                blank_box(meta, &child);
                changed = true;
            }
        }
    }
    let Declared {
        mut kinds,
        unshown,
        derived,
    } = match iinf {
        Some(iinf) => blanked_items(meta, &iinf, count, &mut changed)?,
        None => Declared::default(),
    };
    // The items a reference may name: declared, and with data, or `iden`
    // items (with none of their own) derived from one that has.
    let mut usable = match &iloc {
        Some(iloc) => located_items(&meta[iloc.body..iloc.end])?,
        None => Vec::new(),
    };
    usable.retain(|&id| declared(&kinds, id));
    if !derived.is_empty() {
        let mut found = Vec::new();
        each_reference(meta, &outer, first, |kind, from, to| {
            if kind == b"dimg"
                && derived.binary_search(&from).is_ok()
                && to.iter().any(|to| usable.binary_search(to).is_ok())
            {
                found.push(from);
            }
        })?;
        usable.extend(found);
        usable.sort_unstable();
        usable.dedup();
    }
    // The references and properties of the items `iinf` declares: a
    // second walk over the children (counted once, above).
    // The `dimg` references by item: an overlay's data has a pair of
    // offsets for each.
    let mut inputs = Vec::new();
    let (mut at, mut walked) = (first, 0);
    while let Some(child) = next_box(meta, &mut at, outer.end, &mut walked)? {
        match &child.kind {
            b"iref" => changed |= scrub_references(meta, &child, count, &usable, &mut inputs)?,
            b"iprp" => changed |= scrub_properties(meta, &child, count, &kinds)?,
            _ => {}
        }
    }
    if !unshown.is_empty() {
        for id in unused_items(meta, &outer, first, primary, &kinds, unshown)? {
            if let Ok(at) = kinds.binary_search_by_key(&id, |&(item, _)| item) {
                kinds[at].1 = Some(Item::Other);
            }
        }
    }
    for (from, n) in inputs {
        if let Ok(at) = kinds.binary_search_by_key(&u64::from(from), |&(item, _)| item)
            && let Some(Item::Defined {
                shape: Shape::Overlay { refs },
                ..
            }) = &mut kinds[at].1
        {
            *refs = refs.saturating_add(n);
        }
    }
    let range = idat.map(|idat| (idat.body as u64, idat.end as u64));
    let mut extents = match iloc {
        Some(iloc) => {
            let body = &mut meta[iloc.body..iloc.end];
            changed |= zero_flags(body, 0);
            let extents = item_extents(body, &kinds, range)?;
            changed |= extents.zeroed | zero_from(body, extents.parsed);
            extents
        }
        None => Extents::default(),
    };
    sort_disjoint(&mut extents.blanks_in_meta)?;
    refuse_shared(&extents.images_in_meta, &extents.blanks_in_meta)?;
    sort_disjoint(&mut extents.blanks)?;
    refuse_shared(&extents.images, &extents.blanks)?;
    if let Some(idat) = idat {
        let (images, blanks) = (&extents.images_in_meta, &extents.blanks_in_meta);
        let body = &mut meta[idat.body..idat.end];
        changed |= zero_gaps(body, idat.body as u64, images, blanks);
    }
    changed |= overwrite(&mut extents.blanks_in_meta, meta, 0);
    // The types the image may use: of an item it may reach, one known.
    let typed = |id: u64, kind: &[u8; 4]| {
        (primary == Some(id) || usable.binary_search(&id).is_ok())
            && (listed(&IMAGE_ITEMS, kind) || listed(&TYPED_ITEMS, kind))
    };
    changed |= renumber_items(meta, &outer, first, iinf, typed)?;
    Ok((extents, changed))
}

/// Blanks the properties in an `iprp` box's `ipco` that are not in
/// [`PROPERTIES`], or that no `ipma` entry of an item `iinf` declares
/// (`kinds`) associates with (the index of every other stays as it was);
/// whether any was. The `ipma` boxes keep their entries, and of their
/// flags the one defined (16-bit indices).
fn scrub_properties(
    meta: &mut [u8],
    iprp: &Child,
    count: &mut u32,
    kinds: &[ItemKind],
) -> Result<bool, MediaError> {
    // The property indices (1-based, 15 bits) associated with declared
    // items, one bit each.
    let mut used = vec![0u64; (1 << 15) / 64];
    let (mut at, mut walked) = (children(iprp, false)?, 0);
    while let Some(child) = next_box(meta, &mut at, iprp.end, &mut walked)? {
        if &child.kind == b"ipma" {
            let mut found = Vec::new();
            associations_each(&meta[child.body..child.end], |_, item, bytes, wide| {
                if declared(kinds, item) {
                    indices(bytes, wide, &mut found);
                    for index in found.drain(..) {
                        used[usize::from(index) / 64] |= 1 << (index % 64);
                    }
                }
            })?;
        }
    }
    let mut changed = false;
    let mut at = children(iprp, false)?;
    while let Some(child) = next_box(meta, &mut at, iprp.end, count)? {
        match &child.kind {
            b"ipma" => {
                let body = &mut meta[child.body..child.end];
                let len = associations_each(body, |_, _, _, _| {})?;
                changed |= zero_flags(body, 1) | zero_from(body, len);
            }
            b"ipco" => {
                let mut at = children(&child, false)?;
                let mut index = 0usize;
                while let Some(property) = next_box(meta, &mut at, child.end, count)? {
                    index += 1;
                    let associated = index < 1 << 15 && used[index / 64] & (1 << (index % 64)) != 0;
                    if is_padding(&property.kind) {
                        changed |= zero_payload(meta, &property);
                    } else if !associated || !listed(&PROPERTIES, &property.kind) {
                        blank_box(meta, &property);
                        changed = true;
                    } else if &property.kind == b"colr" {
                        changed |= scrub_colour(meta, &property);
                    } else {
                        changed |=
                            scrub_property(&mut meta[property.body..property.end], &property.kind);
                    }
                }
            }
            _ => {
                blank_box(meta, &child);
                changed = true;
            }
        }
    }
    Ok(changed)
}

/// An item's id, and how it is blanked (`None`: an image, kept).
type ItemKind = (u64, Option<Item>);

/// Zeros `bytes` from `len` on (nothing when shorter); whether any was
/// not zero.
fn zero_from(bytes: &mut [u8], len: usize) -> bool {
    let rest = bytes.get_mut(len..).unwrap_or_default();
    let held = rest.iter().any(|&b| b != 0);
    rest.fill(0);
    held
}

/// Writes `kept` at the start of `bytes` and zeros the rest; whether
/// anything changed (`kept` is no longer than `bytes`).
fn rewrite(bytes: &mut [u8], kept: &[u8]) -> bool {
    let changed = bytes[..kept.len()] != *kept || bytes[kept.len()..].iter().any(|&b| b != 0);
    bytes[..kept.len()].copy_from_slice(kept);
    bytes[kept.len()..].fill(0);
    changed
}

/// Brands kept in `ftyp`: those of HEIF and MIAF images and of the ISO
/// base format. A sequence's brand becomes its image's ([`image_brand`]).
const KEPT_BRANDS: [&[u8; 4]; 22] = [
    b"heic", b"heix", b"heim", b"heis", b"avif", b"avio", b"MA1A", b"MA1B", b"mif1", b"mif2",
    b"miaf", b"MiHE", b"MiHA", b"MiHB", b"MiAB", b"MiAC", b"MiPr", b"tmap", b"iso8", b"isom",
    b"unif", b"jpeg",
];

/// The brand `brand` is stored as, if it is kept: the image brand of a
/// sequence brand (the sequence is dropped), itself if known.
fn image_brand(brand: &[u8]) -> Option<[u8; 4]> {
    let brand: [u8; 4] = brand.try_into().ok()?;
    let image = match &brand {
        b"hevc" => *b"heic",
        b"hevx" => *b"heix",
        b"hevm" => *b"heim",
        b"hevs" => *b"heis",
        b"avis" => *b"avif",
        b"msf1" => *b"mif1",
        _ => brand,
    };
    listed(&KEPT_BRANDS, &image).then_some(image)
}

/// Rewrites a whole `ftyp` box in place: a brand that is not known (four
/// free bytes each) becomes the major brand, a sequence's brand its
/// image's, the minor version 0; an unknown major brand becomes the first
/// known compatible one (else `mif1`). The media type the sniffer reads
/// ([`heif_type`]) stays. Whether anything changed.
fn scrub_ftyp(ftyp: &mut [u8]) -> bool {
    let header = if ftyp[..4] == [0, 0, 0, 1] { 16 } else { 8 };
    let body = &ftyp[header..];
    let compatible = body.get(8..).unwrap_or_default().chunks_exact(4);
    let major = body
        .get(..4)
        .and_then(image_brand)
        .or_else(|| compatible.clone().find_map(image_brand))
        .unwrap_or(*b"mif1");
    let mut kept = major.to_vec();
    kept.extend_from_slice(&[0; 4]);
    for brand in compatible {
        kept.extend_from_slice(&image_brand(brand).unwrap_or(major));
    }
    kept.truncate(body.len());
    rewrite(&mut ftyp[header..], &kept)
}

/// Known `auxC` types: alpha and depth of HEVC and of MIAF (AV1 and
/// others), and the HDR gain map of Apple's HEIC. Any other becomes empty.
const AUX_TYPES: [&[u8]; 5] = [
    b"urn:mpeg:hevc:2015:auxid:1",
    b"urn:mpeg:hevc:2015:auxid:2",
    b"urn:mpeg:mpegB:cicp:systems:auxiliary:alpha",
    b"urn:mpeg:mpegB:cicp:systems:auxiliary:depth",
    b"urn:com:apple:photo:2020:aux:hdrgainmap",
];

/// Zeros, in a kept property's payload, what the property does not
/// define: bytes past its defined length, an `auxC` type that is not
/// known and every `auxC` subtype, NAL units other than parameter sets in
/// `hvcC`, configuration OBUs other than the sequence header in `av1C`.
/// Whether anything changed.
fn scrub_property(body: &mut [u8], kind: &[u8; 4]) -> bool {
    // Full boxes whose flags the standard leaves at zero.
    let flags = matches!(kind, b"ispe" | b"cloc" | b"cmpC" | b"icef") && zero_flags(body, 0);
    let len = match kind {
        b"hvcC" => return scrub_hvcc(body),
        b"av1C" => return scrub_av1c(body),
        b"auxC" => {
            let urn = body.get(4..).unwrap_or_default();
            let urn = &urn[..urn.iter().position(|&b| b == 0).unwrap_or(urn.len())];
            let known = AUX_TYPES.contains(&urn);
            return zero_from(body, if known { 4 + urn.len() + 1 } else { 4 });
        }
        b"jpgC" => return blank_jpeg_segments(body),
        b"cmpd" => return scrub_components(body),
        b"cclv" => return scrub_colour_volume(body),
        b"icef" => return flags | scrub_compressed_units(body),
        b"uncC" => uncompressed_config_len(body),
        b"ccst" => 8,
        // Its flags, then three layer sizes of 16 bits (32 with flag 1).
        b"a1lx" => {
            1 + if body.first().is_some_and(|&b| b & 1 == 1) {
                12
            } else {
                6
            }
        }
        b"pixi" => 5 + usize::from(body.get(4).copied().unwrap_or(0)),
        b"ispe" | b"rloc" => 12,
        // Version and flags, a compression type and a unit type.
        b"cmpC" => 9,
        // Version and flags, a chroma location.
        b"cloc" => 5,
        // An illuminance of 32 bits, a chromaticity of twice 16.
        b"amve" => 8,
        b"irot" | b"imir" | b"a1op" => 1,
        b"clap" => 32,
        b"pasp" => 8,
        b"clli" => 4,
        b"lsel" => 2,
        b"mdcv" => 24,
        _ => return false,
    };
    flags | zero_from(body, len)
}

/// Zeros a full box's flags (the 3 bytes after its version in `body`, its
/// payload) but for the bits of `keep` in the last byte; whether any other
/// was set.
fn zero_flags(body: &mut [u8], keep: u8) -> bool {
    let Some(flags) = body.get_mut(1..4) else {
        return false;
    };
    let kept = [0, 0, flags[2] & keep];
    let changed = *flags != kept;
    flags.copy_from_slice(&kept);
    changed
}

/// A `cclv` property (content colour volume) keeps its flags byte, its
/// reserved bits zeroed, and the fields it says are present: the three
/// primaries (24 bytes), the minimum, maximum and average luminance (4
/// bytes each); zeros fill the rest. Whether anything changed.
fn scrub_colour_volume(body: &mut [u8]) -> bool {
    let Some(flags) = body.first_mut() else {
        return false;
    };
    let changed = *flags & !0x3C != 0;
    *flags &= 0x3C;
    let primaries = if *flags & 0x20 != 0 { 24 } else { 0 };
    let luminances = 4 * (*flags & 0x1C).count_ones() as usize;
    changed | zero_from(body, 1 + primaries + luminances)
}

/// An `icef` property (where the compressed units of an uncompressed
/// image lie) keeps its version and flags, its two size codes (the
/// reserved bits zeroed), its unit count and as many units of the sizes
/// the codes give; zeros fill the rest. An unknown version or code, or a
/// count past the bytes, keeps the version alone. Whether anything
/// changed.
fn scrub_compressed_units(body: &mut [u8]) -> bool {
    // The bytes of a unit's offset and size, by code.
    const OFFSET: [usize; 5] = [0, 2, 3, 4, 8];
    const SIZE: [usize; 5] = [1, 2, 3, 4, 8];
    let mut reader = Reader::new(body);
    let (Ok(0), Ok(codes), Ok(units)) = (reader.version(), reader.u8(), reader.u32()) else {
        return zero_from(body, 4);
    };
    let unit = OFFSET
        .get(usize::from(codes >> 5))
        .zip(SIZE.get(usize::from((codes >> 2) & 7)))
        .map(|(offset, size)| offset + size);
    let len = unit
        .and_then(|unit| usize::try_from(units).ok()?.checked_mul(unit))
        .and_then(|units| units.checked_add(9))
        .filter(|&len| len <= body.len());
    let Some(len) = len else {
        return zero_from(body, 4);
    };
    let changed = codes & 3 != 0;
    body[4] &= !3;
    changed | zero_from(body, len)
}

/// A `jpgC` property holds the headers a JPEG-coded item's data shares
/// (from SOI on): walked as a `jpeg` item is ([`Walk`]), so its APPn
/// segments (EXIF, XMP) and comments keep their marker and length and
/// lose their payload. Whether anything changed.
fn blank_jpeg_segments(body: &mut [u8]) -> bool {
    let mut walk = Walk::default();
    let mut changed = false;
    for byte in body.iter_mut() {
        let new = walk.step(*byte);
        changed |= new != *byte;
        *byte = new;
    }
    changed
}

/// A `cmpd` property's components (a count of 32 bits, then a type of 16
/// bits each, followed by a URI for the user-defined types from 0x8000)
/// keep their types; the URIs, free text, become empty, the components
/// move up and zeros fill the end. A count past the bytes keeps the count
/// alone. Whether anything changed.
fn scrub_components(body: &mut [u8]) -> bool {
    let mut reader = Reader::new(body);
    let mut kept = Vec::new();
    let mut whole = false;
    // Each component takes at least its type.
    let count = reader.u32().ok();
    if let Some(count) = count.filter(|&count| count <= (reader.remaining() / 2) as u64) {
        kept.extend_from_slice(&(count as u32).to_be_bytes());
        whole = true;
        for _ in 0..count {
            let Ok(kind) = reader.u16() else {
                whole = false;
                break;
            };
            kept.extend_from_slice(&(kind as u16).to_be_bytes());
            if kind >= 0x8000 {
                reader.string();
                kept.push(0);
            }
        }
    }
    if !whole {
        kept = body[..4.min(body.len())].to_vec();
    }
    kept.truncate(body.len());
    rewrite(body, &kept)
}

/// The defined length of an `uncC` property: version 1 is a profile
/// alone; version 0 adds its components (5 bytes each) and 24 bytes of
/// sampling, interleaving and alignment. An unknown version, or a count
/// past the bytes, keeps the version and flags alone.
fn uncompressed_config_len(body: &[u8]) -> usize {
    let mut reader = Reader::new(body);
    let (Ok(version), Ok(_profile)) = (reader.version(), reader.u32()) else {
        return 4;
    };
    match version {
        1 => 8,
        0 => reader
            .u32()
            .ok()
            .and_then(|count| usize::try_from(count).ok()?.checked_mul(5))
            .and_then(|components| components.checked_add(12 + 24))
            .filter(|&len| len <= body.len())
            .unwrap_or(4),
        _ => 4,
    }
}

/// An `hvcC` keeps its 22 fixed bytes and, of its arrays of NAL units,
/// the video, sequence and picture parameter sets (NAL types 32 to 34):
/// SEI units (39, 40), which may carry any text, and others are dropped;
/// the arrays move up, their count is fixed, zeros fill the end.
fn scrub_hvcc(body: &mut [u8]) -> bool {
    const FIXED: usize = 22;
    let Some(&count) = body.get(FIXED) else {
        return false;
    };
    let mut kept = body[..=FIXED].to_vec();
    let mut arrays = 0u8;
    let mut reader = Reader::new(&body[FIXED + 1..]);
    'arrays: for _ in 0..count {
        let Ok(kind) = reader.u8() else { break };
        let Ok(units) = reader.u16() else { break };
        let mut array = Vec::new();
        let mut kept_units = 0u16;
        for _ in 0..units {
            let Ok(len) = reader.u16() else { break 'arrays };
            let Ok(unit) = reader.take(len as usize) else {
                break 'arrays;
            };
            if unit
                .first()
                .is_some_and(|&b| matches!((b >> 1) & 0x3F, 32..=34))
            {
                array.extend_from_slice(&(len as u16).to_be_bytes());
                array.extend_from_slice(unit);
                kept_units += 1;
            }
        }
        if kept_units > 0 {
            kept.push(kind);
            kept.extend_from_slice(&kept_units.to_be_bytes());
            kept.extend(array);
            arrays += 1;
        }
    }
    kept[FIXED] = arrays;
    rewrite(body, &kept)
}

/// An `av1C` keeps its 4 fixed bytes and, of its configuration OBUs, the
/// sequence headers (each a copy of the one in the image's data);
/// metadata OBUs and others are dropped, zeros fill the end.
fn scrub_av1c(body: &mut [u8]) -> bool {
    const FIXED: usize = 4;
    if body.len() < FIXED {
        return false;
    }
    let mut kept = body[..FIXED].to_vec();
    let mut reader = Reader::new(&body[FIXED..]);
    while reader.remaining() > 0 {
        let start = reader.at;
        let Ok(header) = reader.u8() else { break };
        if header & 4 != 0 && reader.u8().is_err() {
            break;
        }
        // Without a size field an OBU runs to the end.
        let len = if header & 2 != 0 {
            let mut len = 0u64;
            let mut ok = false;
            for shift in 0..8 {
                let Ok(byte) = reader.u8() else { break };
                len |= u64::from(byte & 0x7F) << (7 * shift);
                if byte & 0x80 == 0 {
                    ok = true;
                    break;
                }
            }
            if !ok {
                break;
            }
            len
        } else {
            reader.remaining() as u64
        };
        let Ok(len) = usize::try_from(len) else { break };
        if reader.take(len).is_err() {
            break;
        }
        if (header >> 3) & 0x0F == 1 {
            kept.extend_from_slice(&reader.bytes[start..reader.at]);
        }
    }
    rewrite(body, &kept)
}

/// A `colr` property holding an ICC profile (`prof`, `rICC`) keeps it with
/// its text blanked ([`icc`]); a malformed one becomes a `free` box of
/// zeros (the image then renders as sRGB). Whether it changed.
fn scrub_colour(meta: &mut [u8], colr: &Child) -> bool {
    let body = &mut meta[colr.body..colr.end];
    if !matches!(body.get(..4), Some(b"prof" | b"rICC")) {
        // `nclx`: four fields in 7 bytes; `nclc` (QuickTime): 6.
        let len = match body.get(..4) {
            Some(b"nclx") => 11,
            Some(b"nclc") => 10,
            _ => 4,
        };
        return zero_from(body, len);
    }
    match icc::blank_profile_text(&mut body[4..]) {
        Ok(changed) => changed,
        Err(icc::Malformed) => {
            blank_box(meta, colr);
            true
        }
    }
}

/// The items an `iinf` box declares.
#[derive(Default)]
struct Declared {
    /// By id, sorted, with how each is blanked (`None`: an image, kept).
    kinds: Vec<ItemKind>,
    /// The ids of the [`UNSHOWN_ITEMS`].
    unshown: Vec<u64>,
    /// The ids of the `iden` items (derived, with no data), sorted.
    derived: Vec<u64>,
}

/// The items of an `iinf` box ([`Declared`]); any other box in it
/// becomes `free`. Sets `changed` when anything did.
fn blanked_items(
    meta: &mut [u8],
    iinf: &Child,
    count: &mut u32,
    changed: &mut bool,
) -> Result<Declared, MediaError> {
    let mut reader = Reader::new(&meta[iinf.body..iinf.end]);
    let version = reader.version()?;
    // The entry count is not needed: the `infe` boxes follow.
    reader.take(if version == 0 { 2 } else { 4 })?;
    let mut at = iinf.end - reader.remaining();
    let (mut kinds, mut unshown, mut derived) = (Vec::new(), Vec::new(), Vec::new());
    let mut named = zero_flags(&mut meta[iinf.body..iinf.end], 0);
    while let Some(entry) = next_box(meta, &mut at, iinf.end, count)? {
        if &entry.kind != b"infe" {
            named |= zero_payload(meta, &entry) || !is_padding(&entry.kind);
            blank_box(meta, &entry);
            continue;
        }
        let body = &mut meta[entry.body..entry.end];
        let (id, kind, strings) = item_entry(body)?;
        // Flag 1 hides the item; the protection index (after an id of 16
        // bits, 32 from version 3) names a scheme of `ipro`, which is not
        // kept.
        named |= zero_flags(body, 1);
        let protection = if body[0] > 2 { 8 } else { 6 };
        named |= rewrite(&mut body[protection..protection + 2], &[]);
        // The item type follows, from version 2.
        let item_type = body
            .get(protection + 2..protection + 6)
            .filter(|_| body[0] >= 2);
        if kind.is_none() && item_type.is_some_and(|t| UNSHOWN_ITEMS.iter().any(|u| *u == t)) {
            unshown.push(id);
        }
        if item_type.is_some_and(|t| t == b"iden") {
            derived.push(id);
        }
        named |= blank_item_strings(body, strings, kind);
        kinds.push((id, kind));
    }
    kinds.sort_unstable_by_key(|&(id, _)| id);
    derived.sort_unstable();
    // Which of two entries a reader takes is its choice: one may be an
    // image, the other the metadata.
    if kinds.windows(2).any(|pair| pair[0].0 == pair[1].0) {
        return Err(MediaError::invalid("the HEIF describes an item twice"));
    }
    *changed |= named;
    Ok(Declared {
        kinds,
        unshown,
        derived,
    })
}

/// The content type of XMP items, the one kept in `infe` (the item's bytes
/// are blanked as XMP).
const XMP_TYPE: &[u8] = b"application/rdf+xml";

/// An `infe` box's payload: the item's id, how it is blanked (`None`: an
/// image item, kept), and where its strings (name first) begin.
fn item_entry(entry: &[u8]) -> Result<(u64, Option<Item>, usize), MediaError> {
    let mut entry = Reader::new(entry);
    let version = entry.version()?;
    let (id, item_type, strings, content_type) = if version >= 2 {
        let id = if version == 2 {
            entry.u16()?
        } else {
            entry.u32()?
        };
        entry.u16()?; // protection index
        let item_type: [u8; 4] = entry.take(4)?.try_into().unwrap_or_default();
        let strings = entry.at;
        entry.string();
        let content_type = if &item_type == b"mime" {
            entry.string()
        } else {
            &[][..]
        };
        (id, item_type, strings, content_type)
    } else {
        // Versions 0 and 1 describe MIME items only.
        let id = entry.u16()?;
        entry.u16()?;
        let strings = entry.at;
        entry.string();
        (id, *b"mime", strings, entry.string())
    };
    let kind = if &item_type == b"jpeg" {
        Some(Item::Jpeg)
    } else if let Some(shape) = match &item_type {
        b"grid" => Some(Shape::Grid),
        b"iovl" => Some(Shape::Overlay { refs: 0 }),
        b"tmap" => Some(Shape::ToneMap),
        _ => None,
    } {
        Some(Item::Defined { shape, long: false })
    } else if &item_type == b"iden" {
        // A derived image with no data of its own: any is not pixels.
        Some(Item::Other)
    } else if listed(&IMAGE_ITEMS, &item_type) {
        None
    } else if &item_type == b"Exif" {
        Some(Item::Exif)
    } else if &item_type == b"mime" && content_type.eq_ignore_ascii_case(XMP_TYPE) {
        Some(Item::Xmp)
    } else {
        Some(Item::Other)
    };
    Ok((id, kind, strings))
}

/// Empties the free text of an `infe` payload in place, from `from` (its
/// strings) on: the name becomes empty, an XMP item's content type stays
/// (right after it), everything else (other content types, content
/// encodings, a `uri ` item's URI type, extensions) becomes zeros, so
/// the box keeps its size. Whether anything changed.
fn blank_item_strings(entry: &mut [u8], from: usize, kind: Option<Item>) -> bool {
    let strings = &mut entry[from..];
    let mut kept = vec![0u8];
    if kind == Some(Item::Xmp) && strings.len() > XMP_TYPE.len() + 1 {
        kept.extend_from_slice(XMP_TYPE);
        kept.push(0);
    }
    kept.truncate(strings.len());
    rewrite(strings, &kept)
}

/// A `dinf` box keeps its `dref` and, in it, `url ` and `urn ` entries
/// that say "in this file" (flag 1) with their strings zeroed: where the
/// data would be is free text, and items elsewhere are not in the upload.
/// Any other box becomes `free`. Whether anything changed.
fn scrub_data_references(
    meta: &mut [u8],
    dinf: &Child,
    count: &mut u32,
) -> Result<bool, MediaError> {
    let mut changed = false;
    let mut at = children(dinf, false)?;
    while let Some(child) = next_box(meta, &mut at, dinf.end, count)? {
        if &child.kind != b"dref" {
            changed |= zero_payload(meta, &child) || !is_padding(&child.kind);
            blank_box(meta, &child);
            continue;
        }
        // Version and flags, the entry count (the entries follow).
        let mut at = children(&child, true)? + 4;
        if at > child.end {
            return Err(meta_corrupt());
        }
        while let Some(entry) = next_box(meta, &mut at, child.end, count)? {
            if matches!(&entry.kind, b"url " | b"urn ") {
                changed |= rewrite(
                    &mut meta[entry.body..entry.end],
                    &[0, 0, 0, 1][..(entry.end - entry.body).min(4)],
                );
            } else {
                changed = true;
                blank_box(meta, &entry);
            }
        }
    }
    Ok(changed)
}

/// The primary item's id, from a `pitm` box; zeros its flags and what
/// follows the id, and says whether any was set.
fn scrub_primary(meta: &mut [u8], pitm: &Child) -> Result<(u64, bool), MediaError> {
    let body = &mut meta[pitm.body..pitm.end];
    let mut reader = Reader::new(body);
    let version = reader.version()?;
    let id = reader.uint(if version == 0 { 2 } else { 4 })?;
    let len = reader.at;
    Ok((id, zero_flags(body, 0) | zero_from(body, len)))
}

/// Of the items in `unshown` (ids, in `kinds`' order), those the primary
/// image does not use: not the primary, and not related to it by a kept
/// reference (`iref`, read after [`scrub_references`]) within three
/// steps, either way (an overlay's grids' tiles, an alpha plane's tiles,
/// a thumbnail). The references are read three times, so the time is
/// linear in the `meta` box's length.
fn unused_items(
    meta: &[u8],
    outer: &Child,
    first: usize,
    primary: Option<u64>,
    kinds: &[ItemKind],
    unshown: Vec<u64>,
) -> Result<Vec<u64>, MediaError> {
    let position = |id: u64| kinds.binary_search_by_key(&id, |&(item, _)| item).ok();
    let mut used = vec![false; kinds.len()];
    if let Some(at) = primary.and_then(position) {
        used[at] = true;
    }
    for _ in 0..3 {
        each_reference(meta, outer, first, |_, from, to| {
            let from = position(from);
            let from_used = from.is_some_and(|at| used[at]);
            for to in to.iter().filter_map(|&to| position(to)) {
                if from_used {
                    used[to] = true;
                } else if used[to]
                    && let Some(from) = from
                {
                    used[from] = true;
                }
            }
        })?;
    }
    Ok(unshown
        .into_iter()
        .filter(|&id| position(id).is_some_and(|at| !used[at]))
        .collect())
}

/// Calls `visit` with the type, the `from` id and the `to` ids of each
/// reference of a known type ([`REFERENCES`]) in the `iref` boxes of the
/// `meta` box `outer` (its children from `first`).
fn each_reference(
    meta: &[u8],
    outer: &Child,
    first: usize,
    mut visit: impl FnMut(&[u8; 4], u64, &[u64]),
) -> Result<(), MediaError> {
    let (mut at, mut walked) = (first, 0);
    let mut to = Vec::new();
    while let Some(child) = next_box(meta, &mut at, outer.end, &mut walked)? {
        if &child.kind != b"iref" {
            continue;
        }
        let version = *meta.get(child.body).ok_or_else(meta_corrupt)?;
        let id_size = if version == 0 { 2 } else { 4 };
        let (mut at, mut walked) = (children(&child, true)?, 0);
        while let Some(reference) = next_box(meta, &mut at, child.end, &mut walked)? {
            if !listed(&REFERENCES, &reference.kind) {
                continue;
            }
            let mut reader = Reader::new(&meta[reference.body..reference.end]);
            let from = reader.uint(id_size)?;
            let n = reader.u16()? as usize;
            to.clear();
            to.extend(reader.take(n * id_size)?.chunks_exact(id_size).map(be_uint));
            visit(&reference.kind, from, &to);
        }
    }
    Ok(())
}

/// Whether the item `id` is one an `iinf` entry declares (in `kinds`).
fn declared(kinds: &[ItemKind], id: u64) -> bool {
    kinds.binary_search_by_key(&id, |&(item, _)| item).is_ok()
}

/// An `iref` box keeps the references of the types in [`REFERENCES`]
/// between items the image may use (`usable`, sorted: declared by
/// `iinf`, and with data or `iden` items derived from one with), each from its id to its ids (a
/// `from` id, a count, as many `to` ids: 16 bits each in version 0,
/// else 32): the `to` ids of no usable item, and repeats of one already
/// kept, are dropped, the others move up and the count follows, zeros
/// fill the end; a reference from an item that is not usable, or left
/// with no `to` id, and any other box in it become `free`. Its flags, which the standard leaves at zero, are
/// zeroed. Adds to `inputs` each `dimg` reference's item and count.
/// Whether anything changed.
fn scrub_references(
    meta: &mut [u8],
    iref: &Child,
    count: &mut u32,
    usable: &[u64],
    inputs: &mut Vec<(u32, u32)>,
) -> Result<bool, MediaError> {
    let version = *meta.get(iref.body).ok_or_else(meta_corrupt)?;
    let id_size = if version == 0 { 2 } else { 4 };
    let flags = zero_flags(&mut meta[iref.body..iref.end], 0);
    let mut moved = false;
    let mut seen = std::collections::HashSet::new();
    let changed = scrub_listed(meta, iref, true, &REFERENCES, count, |kind, body| {
        let mut reader = Reader::new(body);
        let from = reader.uint(id_size)?;
        let ids = reader.u16()? as usize;
        reader.take(ids * id_size)?;
        let (first, end) = (reader.at - ids * id_size, reader.at);
        if usable.binary_search(&from).is_err() {
            return Ok(None);
        }
        seen.clear();
        let mut kept = 0;
        for at in (first..end).step_by(id_size) {
            let to = be_uint(&body[at..at + id_size]);
            if usable.binary_search(&to).is_ok() && seen.insert(to) {
                body.copy_within(at..at + id_size, first + kept * id_size);
                kept += 1;
            }
        }
        if kept == 0 {
            return Ok(None);
        }
        moved |= kept < ids;
        body[first - 2..first].copy_from_slice(&(kept as u16).to_be_bytes());
        if kind == b"dimg" {
            // Ids are at most 32 bits wide.
            inputs.push((from as u32, kept as u32));
        }
        Ok(Some(first + kept * id_size))
    })?;
    Ok(flags | changed | moved)
}

/// A `grpl` box keeps the entity groups in [`GROUPS`], each to its ids (a
/// full box of version 0, no flag defined, zeroed: a group id, a count, as
/// many entity ids, 32 bits each), the bytes after them zeroed; any other
/// box in it, or a group of another version, becomes `free`. Whether
/// anything changed.
fn scrub_groups(meta: &mut [u8], grpl: &Child, count: &mut u32) -> Result<bool, MediaError> {
    let mut flags = false;
    let changed = scrub_listed(meta, grpl, false, &GROUPS, count, |_, body| {
        let mut reader = Reader::new(body);
        if reader.version()? != 0 {
            return Ok(None);
        }
        reader.u32()?;
        let entities = usize::try_from(reader.u32()?).map_err(|_| meta_corrupt())?;
        reader.take(entities.checked_mul(4).ok_or_else(meta_corrupt)?)?;
        let len = reader.at;
        flags |= zero_flags(body, 0);
        Ok(Some(len))
    })?;
    Ok(flags | changed)
}

/// Walks the boxes in `parent` (a full box when `full`): those of a kind
/// in `kept` are read by `read`, which gives the bytes of the payload
/// kept (`None`: none, the box is dropped), and the rest is zeroed; any
/// other becomes `free`. Whether anything changed.
fn scrub_listed(
    meta: &mut [u8],
    parent: &Child,
    full: bool,
    kept: &[&[u8; 4]],
    count: &mut u32,
    mut read: impl FnMut(&[u8; 4], &mut [u8]) -> Result<Option<usize>, MediaError>,
) -> Result<bool, MediaError> {
    let mut changed = false;
    let mut at = children(parent, full)?;
    while let Some(child) = next_box(meta, &mut at, parent.end, count)? {
        let len = if listed(kept, &child.kind) {
            read(&child.kind, &mut meta[child.body..child.end])?
        } else {
            None
        };
        let Some(len) = len else {
            changed |= zero_payload(meta, &child) || !is_padding(&child.kind);
            blank_box(meta, &child);
            continue;
        };
        changed |= zero_from(&mut meta[child.body..child.end], len);
    }
    Ok(changed)
}

/// An `hdlr` box keeps its version and handler type: its flags, its
/// pre_defined and reserved fields (16 bytes the standard sets to zero)
/// and its name (free text, its last field) become zeros, so nothing
/// moves. Whether any was not zero.
fn scrub_handler(meta: &mut [u8], hdlr: &Child) -> bool {
    let body = &mut meta[hdlr.body..hdlr.end];
    // Version, flags, pre_defined, handler_type.
    let mut kept = [0u8; 12];
    let len = body.len().min(kept.len());
    kept[..len].copy_from_slice(&body[..len]);
    kept[1..8].fill(0);
    rewrite(body, &kept[..len])
}

/// The unsigned big-endian number `bytes` hold (at most 8).
fn be_uint(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0u64, |value, &b| (value << 8) | u64::from(b))
}

/// Writes `id` over the id field `field` (16 or 32 bits), refusing one
/// that does not fit; whether it changed.
fn write_id(field: &mut [u8], id: u64) -> Result<bool, MediaError> {
    if field.len() < 8 && id >> (8 * field.len()) != 0 {
        return Err(MediaError::invalid(format!(
            "the HEIF has more items than its {}-bit ids can number",
            8 * field.len()
        )));
    }
    let bytes = &id.to_be_bytes()[8 - field.len()..];
    let changed = field != bytes;
    field.copy_from_slice(bytes);
    Ok(changed)
}

/// Gives the items the `iinf` box declares the ids 1 to N, in its order,
/// wherever an id stands in the `meta` box `outer` (its children from
/// `first`), each field keeping its width: the `infe` entries (and the
/// `iinf` entry count, N), `pitm`, the `iloc` entries, the kept `iref`
/// references (from and to), the `ipma` entries and the entity ids of the
/// kept `grpl` groups. An id no `infe` declares becomes 0, which none
/// has now (an `ipma` entry's associations with it too: 0 is no
/// property), and a group naming one becomes `free`: ids are numbers the
/// caller chose, and nothing of them stays. The kept groups' own ids
/// become N + 1 onward, in their order (ids share one space).
/// Runs after every other step, which read the ids as they were. Whether
/// anything changed.
///
/// An item whose type the image does not use (`typed` says, from its id
/// and its type, before both change): data-less or unusable, or of a type
/// not known, has its type zeroed, four more bytes of the caller's, and
/// is hidden (flag 1), which readers skip as they skip unknown types.
fn renumber_items(
    meta: &mut [u8],
    outer: &Child,
    first: usize,
    iinf: Option<Child>,
    typed: impl Fn(u64, &[u8; 4]) -> bool,
) -> Result<bool, MediaError> {
    let mut ids = Vec::new();
    let mut changed = false;
    if let Some(iinf) = iinf {
        let count_size = if meta[iinf.body] == 0 { 2 } else { 4 };
        let (mut at, mut walked) = (children(&iinf, true)? + count_size, 0);
        while let Some(entry) = next_box(meta, &mut at, iinf.end, &mut walked)? {
            if &entry.kind != b"infe" {
                continue;
            }
            // Read by `item_entry`: 32 bits from version 3.
            let id_size = if meta[entry.body] > 2 { 4 } else { 2 };
            let field = &mut meta[entry.body + 4..entry.body + 4 + id_size];
            let id = be_uint(field);
            changed |= write_id(field, ids.len() as u64 + 1)?;
            ids.push((id, ids.len() as u64 + 1));
            // The type follows the protection index, from version 2.
            let kind_at = entry.body + 4 + id_size + 2;
            let versioned = meta[entry.body] >= 2;
            if let Some(kind) = meta.get_mut(kind_at..kind_at + 4).filter(|_| versioned)
                && !typed(id, &(*kind).try_into().unwrap_or_default())
            {
                changed |= rewrite(kind, &[]);
                changed |= meta[entry.body + 3] & 1 == 0;
                meta[entry.body + 3] |= 1;
            }
        }
        let field = &mut meta[iinf.body + 4..iinf.body + 4 + count_size];
        changed |= write_id(field, ids.len() as u64)?;
    }
    let items = ids.len() as u64;
    // Kept groups are numbered after the items: ids share one space.
    let mut groups = 0;
    ids.sort_unstable();
    let new = |id: u64| {
        ids.binary_search_by_key(&id, |&(old, _)| old)
            .map_or(0, |at| ids[at].1)
    };
    let renumber = |meta: &mut [u8], at: usize, size: usize| -> Result<bool, MediaError> {
        let field = meta.get_mut(at..at + size).ok_or_else(meta_corrupt)?;
        write_id(field, new(be_uint(field)))
    };
    let (mut at, mut walked) = (first, 0);
    while let Some(child) = next_box(meta, &mut at, outer.end, &mut walked)? {
        // The version of a full box (those below were read before).
        let version = || meta[child.body];
        match &child.kind {
            b"pitm" => {
                let id_size = if version() == 0 { 2 } else { 4 };
                changed |= renumber(meta, child.body + 4, id_size)?;
            }
            b"iloc" => {
                let iloc = &meta[child.body..child.end];
                let layout = iloc_layout(iloc)?;
                let mut reader = Reader::new(iloc);
                reader.at = layout.at;
                let mut entries = Vec::new();
                for _ in 0..layout.count {
                    entries.push(child.body + reader.at);
                    reader.take(layout.id_size + layout.method_size + 2 + layout.base_size)?;
                    let extents = reader.u16()? as usize;
                    reader.take(extents * layout.extent_size())?;
                }
                for entry in entries {
                    changed |= renumber(meta, entry, layout.id_size)?;
                }
            }
            b"iref" => {
                let id_size = if version() == 0 { 2 } else { 4 };
                let (mut at, mut walked) = (children(&child, true)?, 0);
                while let Some(reference) = next_box(meta, &mut at, child.end, &mut walked)? {
                    if !listed(&REFERENCES, &reference.kind) {
                        continue;
                    }
                    let body = reference.body;
                    let to = be_uint(
                        meta.get(body + id_size..body + id_size + 2)
                            .ok_or_else(meta_corrupt)?,
                    );
                    changed |= renumber(meta, body, id_size)?;
                    for n in 0..to as usize {
                        changed |= renumber(meta, body + id_size + 2 + n * id_size, id_size)?;
                    }
                }
            }
            b"iprp" => {
                let (mut at, mut walked) = (children(&child, false)?, 0);
                while let Some(ipma) = next_box(meta, &mut at, child.end, &mut walked)? {
                    if &ipma.kind != b"ipma" {
                        continue;
                    }
                    let id_size = if meta[ipma.body] < 1 { 2 } else { 4 };
                    let mut entries = Vec::new();
                    associations_each(&meta[ipma.body..ipma.end], |at, _, bytes, _| {
                        entries.push((ipma.body + at, bytes.len()));
                    })?;
                    for (entry, len) in entries {
                        changed |= renumber(meta, entry, id_size)?;
                        if meta[entry..entry + id_size].iter().all(|&b| b == 0) {
                            let associations = entry + id_size + 1;
                            changed |= rewrite(&mut meta[associations..associations + len], &[]);
                        }
                    }
                }
            }
            b"grpl" => {
                let (mut at, mut walked) = (children(&child, false)?, 0);
                while let Some(kept) = next_box(meta, &mut at, child.end, &mut walked)? {
                    if !listed(&GROUPS, &kept.kind) {
                        continue;
                    }
                    // Version and flags, the group's id, the count.
                    let ids_at = kept.body + 12;
                    let entities =
                        be_uint(meta.get(kept.body + 8..ids_at).ok_or_else(meta_corrupt)?);
                    let ids_end = ids_at + 4 * entities as usize;
                    let entities = meta.get(ids_at..ids_end).ok_or_else(meta_corrupt)?;
                    if entities.chunks_exact(4).any(|id| new(be_uint(id)) == 0) {
                        blank_box(meta, &kept);
                        changed = true;
                        continue;
                    }
                    groups += 1;
                    changed |= write_id(&mut meta[kept.body + 4..ids_at - 4], items + groups)?;
                    for id in (ids_at..ids_end).step_by(4) {
                        changed |= renumber(meta, id, 4)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(changed)
}

/// Most pieces (`iloc` extents) the blanked items may be cut into; a
/// camera writes one each.
const MAX_METADATA_EXTENTS: usize = 1024;

/// Most pieces the image items may be cut into, once touching pieces are
/// merged (16 bytes each: 1 MiB): a grid's tiles lie one after the other,
/// and a 200-megapixel photo has under a thousand 512-pixel tiles.
const MAX_IMAGE_EXTENTS: usize = 1 << 16;

fn too_many_pieces() -> MediaError {
    MediaError::invalid("the HEIF's metadata items are cut into too many pieces")
}

fn too_many_image_pieces() -> MediaError {
    MediaError::invalid(format!(
        "the HEIF's image items are cut into more than {MAX_IMAGE_EXTENTS} pieces"
    ))
}

fn iloc_error(why: &str) -> MediaError {
    MediaError::invalid(format!("the HEIF's iloc box {why}"))
}

/// Where the items of an `iloc` box lie: the pieces of the items that are
/// blanked, and the ranges of the image items, which are kept as they are
/// (sorted, touching ones merged); in the file (file offsets) and in the
/// `meta` box's `idat` (offsets in the `meta` box).
#[derive(Debug, Default)]
struct Extents {
    blanks: Vec<Blank>,
    blanks_in_meta: Vec<Blank>,
    images: Vec<(u64, u64)>,
    images_in_meta: Vec<(u64, u64)>,
    /// The bytes of the `iloc` payload its fields take (what follows is
    /// zeroed).
    parsed: usize,
    /// Whether fields of the `iloc` payload were zeroed (ids of items no
    /// `infe` describes, extent indices no construction method uses).
    zeroed: bool,
}

/// The field widths of an `iloc` payload, its item count, and where its
/// first item begins.
struct IlocLayout {
    offset_size: usize,
    length_size: usize,
    base_size: usize,
    index_size: usize,
    id_size: usize,
    method_size: usize,
    count: u64,
    at: usize,
}

impl IlocLayout {
    /// The bytes of one extent.
    fn extent_size(&self) -> usize {
        self.index_size + self.offset_size + self.length_size
    }
}

/// Reads the header of an `iloc` payload ([`IlocLayout`]), refusing
/// widths the standard does not define and counts the box cannot hold.
fn iloc_layout(iloc: &[u8]) -> Result<IlocLayout, MediaError> {
    let mut reader = Reader::new(iloc);
    let version = reader.version()?;
    if version > 2 {
        return Err(iloc_error("has an unknown version"));
    }
    let sizes = reader.u8()?;
    let (offset_size, length_size) = (usize::from(sizes >> 4), usize::from(sizes & 15));
    let sizes = reader.u8()?;
    let base_size = usize::from(sizes >> 4);
    let index_size = if version >= 1 {
        usize::from(sizes & 15)
    } else {
        0
    };
    if [offset_size, length_size, base_size, index_size]
        .iter()
        .any(|size| !matches!(size, 0 | 4 | 8))
    {
        return Err(iloc_error("uses an invalid field size"));
    }
    let id_size = if version < 2 { 2 } else { 4 };
    let count = reader.uint(id_size)?;
    let method_size = if version >= 1 { 2 } else { 0 };
    let item_size = id_size + method_size + 2 + base_size + 2;
    if count > (reader.remaining() / item_size) as u64 {
        return Err(iloc_error("lists more items than it holds"));
    }
    Ok(IlocLayout {
        offset_size,
        length_size,
        base_size,
        index_size,
        id_size,
        method_size,
        count,
        at: reader.at,
    })
}

/// The ids of the items an `iloc` payload gives at least one extent,
/// sorted: the items that have data.
fn located_items(iloc: &[u8]) -> Result<Vec<u64>, MediaError> {
    let layout = iloc_layout(iloc)?;
    let extent_size = layout.extent_size();
    let mut reader = Reader {
        bytes: iloc,
        at: layout.at,
    };
    let mut located = Vec::new();
    for _ in 0..layout.count {
        let id = reader.uint(layout.id_size)?;
        reader.take(layout.method_size + 2 + layout.base_size)?;
        let extents = reader.u16()? as usize;
        reader.take(extents * extent_size)?;
        if extents > 0 {
            located.push(id);
        }
    }
    located.sort_unstable();
    Ok(located)
}

/// Where the items lie, from an `iloc` box's payload; `kinds` says, by
/// id, how each item the `iinf` describes is blanked (`None`: an image,
/// kept); an item it does not describe is no image, and is blanked.
/// `idat`: its payload's range, as offsets in the `meta` box.
///
/// Every count is checked against the bytes left before it is looped
/// over: an item takes at least its fixed fields, and an extent its
/// fields (an item may have one extent of no width: all its data), so the
/// loops are linear in the box's length; at most [`MAX_METADATA_EXTENTS`]
/// pieces of blanked items and [`MAX_IMAGE_EXTENTS`] of image items are
/// kept.
fn item_extents(
    iloc: &mut [u8],
    kinds: &[ItemKind],
    idat: Option<(u64, u64)>,
) -> Result<Extents, MediaError> {
    let layout = iloc_layout(iloc)?;
    // Fields of no width make an extent free to declare: that is only
    // valid for an item whose one extent is all its data.
    let extent_size = layout.extent_size();
    let free_extents = extent_size == 0;
    // An id 0 that no item has may stand for one that no item has either.
    let blank_id = !declared(kinds, 0);
    let mut extents = Extents::default();
    let mut at = layout.at;
    for _ in 0..layout.count {
        // A reader for each item, so that its fields may be zeroed after.
        let mut reader = Reader { bytes: iloc, at };
        let id_at = reader.at;
        let id = reader.uint(layout.id_size)?;
        let method = reader.uint(layout.method_size)? & 15;
        let data_reference = reader.u16()?;
        let base = reader.uint(layout.base_size)?;
        let extent_count = reader.u16()? as usize;
        let extents_at = reader.at;
        if free_extents && extent_count > 1 {
            return Err(iloc_error("gives several extents with fields of no width"));
        }
        let kind = kinds
            .binary_search_by_key(&id, |&(item, _)| item)
            .map_or(Some(Item::Other), |at| kinds[at].1);
        // Data in another file is not in this upload; items built from
        // other items hold no bytes of their own: a metadata item built
        // so would be a view of an image's bytes, which it may not share.
        if method == 2 && kind.is_some() {
            return Err(MediaError::invalid(
                "the HEIF's image and metadata items share bytes: a metadata item is built \
                 from another item (iloc construction method 2)",
            ));
        }
        let located = data_reference == 0 && method < 2;
        let in_meta = method == 1;
        let first = if in_meta {
            extents.blanks_in_meta.len()
        } else {
            extents.blanks.len()
        };
        let mut item_len = 0u64;
        for _ in 0..extent_count {
            reader.uint(layout.index_size)?;
            let offset = reader.uint(layout.offset_size)?;
            let length = reader.uint(layout.length_size)?;
            if !located {
                continue;
            }
            // A length of 0 means "to the end of the data": bytes no one
            // can tell apart from what follows the item.
            if length == 0 {
                return Err(MediaError::invalid(format!(
                    "the HEIF's {} item has an extent without a length",
                    if kind.is_some() { "metadata" } else { "image" }
                )));
            }
            let start = match (method, idat) {
                (0, _) => base.checked_add(offset),
                (_, Some((body, _))) => base.checked_add(offset).and_then(|o| o.checked_add(body)),
                (_, None) => None,
            };
            let start = start.ok_or_else(meta_corrupt)?;
            let end = start.checked_add(length).ok_or_else(meta_corrupt)?;
            if in_meta && idat.is_none_or(|(_, idat_end)| end > idat_end) {
                return Err(meta_corrupt());
            }
            let Some(kind) = kind else {
                let images = if in_meta {
                    &mut extents.images_in_meta
                } else {
                    &mut extents.images
                };
                if let Some(last) = images.last_mut().filter(|last| last.1 == start) {
                    last.1 = end;
                } else if images.len() >= MAX_IMAGE_EXTENTS {
                    return Err(too_many_image_pieces());
                } else {
                    images.push((start, end));
                }
                continue;
            };
            if extents.blanks.len() + extents.blanks_in_meta.len() >= MAX_METADATA_EXTENTS {
                return Err(too_many_pieces());
            }
            let into = if in_meta {
                &mut extents.blanks_in_meta
            } else {
                &mut extents.blanks
            };
            // A JPEG is walked in order: its pieces must lie in order.
            if kind == Item::Jpeg
                && into.last().is_some_and(|last: &Blank| {
                    last.id == id && last.kind == kind && last.end > start
                })
            {
                return Err(MediaError::invalid(
                    "the HEIF's jpeg item has pieces out of order",
                ));
            }
            into.push(Blank {
                start,
                end,
                item_offset: item_len,
                item_len: 0,
                kind,
                id,
                walk: Walk::default(),
            });
            item_len += length;
        }
        let into = if in_meta {
            &mut extents.blanks_in_meta
        } else {
            &mut extents.blanks
        };
        for blank in &mut into[first..] {
            blank.item_len = item_len;
        }
        at = reader.at;
        // The id of an entry no `infe` describes (its bytes are blanked
        // above), and the extent indices, which only construction method
        // 2 uses: numbers no reader needs, zeroed.
        if !declared(kinds, id) && blank_id {
            extents.zeroed |= rewrite(&mut iloc[id_at..id_at + layout.id_size], &[]);
        }
        if method != 2 {
            for extent in (extents_at..at).step_by(extent_size.max(1)) {
                extents.zeroed |= rewrite(&mut iloc[extent..extent + layout.index_size], &[]);
            }
        }
    }
    merge(&mut extents.images);
    merge(&mut extents.images_in_meta);
    extents.parsed = at;
    Ok(extents)
}

/// Sorts `ranges` and merges those that overlap or touch.
fn merge(ranges: &mut Vec<(u64, u64)>) {
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for &(start, end) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    *ranges = merged;
}

/// Refuses an image item and a metadata item that share bytes: blanking
/// the one would break the other, keeping it would keep the metadata.
/// Both lists sorted, each disjoint.
fn refuse_shared(images: &[(u64, u64)], blanks: &[Blank]) -> Result<(), MediaError> {
    let (mut i, mut b) = (0, 0);
    while let (Some(&(start, end)), Some(blank)) = (images.get(i), blanks.get(b)) {
        if start < blank.end && blank.start < end {
            return Err(MediaError::invalid(
                "the HEIF's image and metadata items share bytes",
            ));
        }
        if end <= blank.start {
            i += 1;
        } else {
            b += 1;
        }
    }
    Ok(())
}

/// Calls `gap` with each range of `start..end` that neither `images` nor
/// `blanks` cover (both sorted; each disjoint, and from each other).
fn gaps(
    start: u64,
    end: u64,
    images: &[(u64, u64)],
    blanks: &[Blank],
    mut gap: impl FnMut(u64, u64),
) {
    let met = |&(from, to): &(u64, u64)| from < end && to > start;
    let mut images = images
        .iter()
        .copied()
        .take_while(|&(from, _)| from < end)
        .filter(met)
        .peekable();
    let mut blanks = blanks
        .iter()
        .map(|b| (b.start, b.end))
        .take_while(|&(from, _)| from < end)
        .filter(met)
        .peekable();
    let mut cursor = start;
    while cursor < end {
        let next = match (images.peek(), blanks.peek()) {
            (Some(image), Some(blank)) if image.0 <= blank.0 => images.next(),
            (_, Some(_)) => blanks.next(),
            (Some(_), None) => images.next(),
            (None, None) => None,
        };
        let (from, to) = next.unwrap_or((end, end));
        if from > cursor {
            gap(cursor, from);
        }
        cursor = cursor.max(to);
        if next.is_none() {
            break;
        }
    }
}

/// Zeros the bytes of `bytes` (the file's bytes, or the `meta` box's,
/// from `start`) that no item covers; whether any was not zero already.
fn zero_gaps(bytes: &mut [u8], start: u64, images: &[(u64, u64)], blanks: &[Blank]) -> bool {
    let end = start + bytes.len() as u64;
    let mut changed = false;
    gaps(start, end, images, blanks, |from, to| {
        let gap = &mut bytes[(from - start) as usize..(to - start) as usize];
        changed |= gap.iter().any(|&b| b != 0);
        gap.fill(0);
    });
    changed
}

/// The primary image's width and height as viewed, from the first bytes
/// of a HEIF file (`head`): its own `ispe` (a grid's is the whole image,
/// not a tile's), swapped when `irot` turns it a quarter. `None` while the
/// `meta` box is not all in `head`; an error when `at_end` (no more bytes
/// will come) and it is still not.
pub fn heif_dimensions(head: &[u8], at_end: bool) -> Result<Option<(u32, u32)>, MediaError> {
    let mut count = 0;
    let mut at = 0usize;
    let mut mdat_first = false;
    while head.len() - at >= 8 {
        let size = u32::from_be_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
        let kind = &head[at + 4..at + 8];
        let size = match size {
            0 => (head.len() - at) as u64,
            1 if head.len() - at >= 16 => {
                u64::from_be_bytes(head[at + 8..at + 16].try_into().unwrap_or_default())
            }
            1 => break,
            size => u64::from(size),
        };
        if size < 8 {
            return Err(corrupt());
        }
        count_box(&mut count)?;
        let end = usize::try_from(size)
            .ok()
            .and_then(|size| at.checked_add(size));
        if kind == b"meta" {
            match end.filter(|&end| end <= head.len()) {
                Some(end) => return primary_size(&head[at..end], &mut count).map(Some),
                None => break,
            }
        }
        mdat_first |= kind == b"mdat";
        match end {
            Some(end) if end < head.len() => at = end,
            _ => break,
        }
    }
    if !at_end {
        return Ok(None);
    }
    Err(MediaError::invalid(if mdat_first {
        "the HEIF's meta box comes after its media data (mdat), so the image's dimensions \
         cannot be read from its header; save the file with its meta box first"
    } else {
        "the HEIF has no complete meta box in its first MiB to give the image's dimensions"
    }))
}

/// Whether the first bytes of a HEIF file (`head`) show an `mdat` box
/// before any `meta` box: its `meta` comes after the media data, so the
/// image's size is read from it by the scrubber at the end of the stream
/// ([`Scrubbed::late_size`](super::Scrubbed::late_size)), not from the header.
pub fn heif_meta_after_media(head: &[u8]) -> bool {
    let mut at = 0usize;
    while head.len() - at >= 8 {
        let size = u32::from_be_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
        match &head[at + 4..at + 8] {
            b"mdat" => return true,
            b"meta" => return false,
            _ => {}
        }
        // A 64-bit or to-the-end size before either: not this layout.
        match usize::try_from(size) {
            Ok(size) if size >= 8 => match at.checked_add(size) {
                Some(end) if end <= head.len() => at = end,
                _ => return false,
            },
            _ => return false,
        }
    }
    false
}

/// The primary item's `ispe`, turned by its `irot`, from a whole `meta`
/// box.
fn primary_size(meta: &[u8], count: &mut u32) -> Result<(u32, u32), MediaError> {
    let mut at = 0;
    let outer = next_box(meta, &mut at, meta.len(), count)?.ok_or_else(meta_corrupt)?;
    let (mut primary, mut iprp) = (None, None);
    let mut at = children(&outer, true)?;
    while let Some(child) = next_box(meta, &mut at, outer.end, count)? {
        match &child.kind {
            b"pitm" => {
                let mut reader = Reader::new(&meta[child.body..child.end]);
                let version = reader.version()?;
                primary = Some(reader.uint(if version == 0 { 2 } else { 4 })?);
            }
            b"iprp" => iprp = Some(child),
            _ => {}
        }
    }
    let primary =
        primary.ok_or_else(|| MediaError::invalid("the HEIF names no primary image (pitm)"))?;
    let no_size = || MediaError::invalid("the HEIF's primary image has no size (ispe)");
    let iprp = iprp.ok_or_else(no_size)?;
    let (mut ipco, mut associated) = (None, Vec::new());
    let mut at = children(&iprp, false)?;
    while let Some(child) = next_box(meta, &mut at, iprp.end, count)? {
        match &child.kind {
            b"ipco" => ipco = Some(child),
            b"ipma" => associations(&meta[child.body..child.end], primary, &mut associated)?,
            _ => {}
        }
    }
    associated.sort_unstable();
    let ipco = ipco.ok_or_else(no_size)?;
    let (mut size, mut quarter_turns) = (None, 0);
    let mut at = children(&ipco, false)?;
    let mut index = 0u16;
    while let Some(property) = next_box(meta, &mut at, ipco.end, count)? {
        index = index.saturating_add(1);
        if associated.binary_search(&index).is_err() {
            continue;
        }
        let mut reader = Reader::new(&meta[property.body..property.end]);
        match &property.kind {
            b"ispe" => {
                reader.version()?;
                let width = reader.u32()? as u32;
                let height = reader.u32()? as u32;
                size = Some((width, height));
            }
            b"irot" => quarter_turns = reader.u8()? & 3,
            _ => {}
        }
    }
    let (width, height) = size.ok_or_else(no_size)?;
    Ok(if quarter_turns % 2 == 1 {
        (height, width)
    } else {
        (width, height)
    })
}

/// Adds to `found` the property indices (1-based) that an `ipma` box's
/// payload associates with item `id`.
fn associations(ipma: &[u8], id: u64, found: &mut Vec<u16>) -> Result<(), MediaError> {
    associations_each(ipma, |_, item, bytes, wide| {
        if item == id {
            indices(bytes, wide, found);
        }
    })?;
    Ok(())
}

/// Adds to `found` the property indices of one `ipma` entry's
/// associations (`bytes`, 16 bits each when `wide`, else 8), without
/// their essential bit.
fn indices(bytes: &[u8], wide: bool, found: &mut Vec<u16>) {
    if wide {
        found.extend(
            bytes
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]) & 0x7FFF),
        );
    } else {
        found.extend(bytes.iter().map(|&b| u16::from(b & 0x7F)));
    }
}

/// Calls `each` with every entry of an `ipma` box's payload: where it
/// begins (its id), the item's id, its associations' bytes, and whether
/// they are 16 bits wide; returns the bytes the entries take (what
/// follows is no association).
fn associations_each(
    ipma: &[u8],
    mut each: impl FnMut(usize, u64, &[u8], bool),
) -> Result<usize, MediaError> {
    let mut reader = Reader::new(ipma);
    let version = reader.u8()?;
    let flags = reader.take(3)?;
    let wide = flags[2] & 1 == 1;
    let id_size = if version < 1 { 2 } else { 4 };
    let entries = reader.u32()?;
    // Each entry takes its id and its count of associations.
    if entries > (reader.remaining() / (id_size + 1)) as u64 {
        return Err(meta_corrupt());
    }
    for _ in 0..entries {
        let at = reader.at;
        let item = reader.uint(id_size)?;
        let n = usize::from(reader.u8()?);
        let bytes = reader.take(n * if wide { 2 } else { 1 })?;
        each(at, item, bytes, wide);
    }
    Ok(reader.at)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::fixtures::{
        HeifItem, HeifLayout, HeifParts, PHONE_SECRETS, heic_grid, heic_motion_photo, heic_photo,
        heif_file, heif_iloc_bomb as iloc_bomb, heif_with_jpeg_item,
        heif_with_text_outside_its_items, iso_box, iso_full_box, phone_heif_items,
        phone_photo_with_extras,
    };
    use crate::media::scrub::{Scrubbed, Scrubber};

    /// The bytes stored for `bytes` pushed in chunks of `chunk`, and what
    /// the scrubber found.
    pub(super) fn scrub(bytes: &[u8], chunk: usize) -> Result<(Vec<u8>, Scrubbed), MediaError> {
        let mut scrubber = Scrubber::new(false);
        let mut out = Vec::new();
        for part in bytes.chunks(chunk) {
            scrubber.push(Bytes::copy_from_slice(part), &mut out)?;
        }
        let report = scrubber.finish(&mut out)?;
        Ok((out.concat(), report))
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    fn assert_no_secrets(stored: &[u8], what: &str) {
        for secret in PHONE_SECRETS {
            assert!(
                !contains(stored, secret.as_bytes()),
                "{secret} left in {what}"
            );
        }
    }

    /// The handler's name and the items' names are free text a camera or
    /// an app fills in: emptied, while what follows a name (a `mime`
    /// item's content type) still reads, so XMP is still found and blanked.
    #[test]
    fn handler_and_item_names_are_emptied_in_place() {
        let secret = PHONE_SECRETS[2];
        let mut items = phone_heif_items(64, 48);
        for item in &mut items {
            item.name = secret;
        }
        let mut hdlr = 0u32.to_be_bytes().to_vec();
        hdlr.extend_from_slice(b"pict");
        hdlr.extend_from_slice(&[0; 12]);
        hdlr.extend_from_slice(format!("{secret}\0").as_bytes());
        let parts = HeifParts {
            in_meta: iso_full_box(b"hdlr", 0, &hdlr),
            ..HeifParts::default()
        };
        let original = heif_file(&items, &parts);
        let (stored, report) = scrub(&original, 9).unwrap();
        assert!(report.changed);
        assert_eq!(stored.len(), original.len(), "nothing moves");
        assert_no_secrets(&stored, "the names");
        assert!(
            contains(&stored, b"application/rdf+xml\0"),
            "still a mime type"
        );
        assert!(contains(
            &stored,
            b"<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"/>"
        ));
        assert!(contains(&stored, b"hvc1-coded-image-data-"));
        assert_eq!(heif_dimensions(&stored, true).unwrap(), Some((64, 48)));
        // Scrubbed again, nothing changes: the names are gone.
        let (again, _) = scrub(&stored, 64).unwrap();
        assert_eq!(again, stored);
    }

    /// The file after both passes: the first, streamed in `chunk`s, and
    /// the second over its output when the first hands one over.
    fn scrub_both(bytes: &[u8], chunk: usize) -> Vec<u8> {
        let mut scrubber = Scrubber::new(false);
        let mut out = Vec::new();
        for part in bytes.chunks(chunk) {
            scrubber
                .push(Bytes::copy_from_slice(part), &mut out)
                .unwrap();
        }
        let report = scrubber.finish(&mut out).unwrap();
        assert!(report.stripped);
        let first = out.concat();
        let Some(mut rescrub) = report.rescrub else {
            return first;
        };
        let mut second = Vec::new();
        for piece in first.chunks(chunk) {
            second.extend_from_slice(&rescrub.apply(Bytes::copy_from_slice(piece)));
        }
        assert!(rescrub.is_done());
        second
    }

    /// A `jpeg` item (a phone JPEG stored as a HEIF image item) loses its
    /// EXIF, XMP, IPTC, vendor segment and comment in place, whether its
    /// `meta` box comes first or after `mdat`, however the file is cut:
    /// the same bytes, nothing moved, the JPEG still decodes with its
    /// pixels.
    #[test]
    fn a_jpeg_item_loses_its_metadata_segments_in_place() {
        let jpeg = phone_photo_with_extras(64, 48);
        let pixels = image::load_from_memory(&jpeg).unwrap().to_rgb8();
        for meta_last in [false, true] {
            let original = heif_with_jpeg_item(&jpeg, 64, 48, meta_last);
            let at = original
                .windows(jpeg.len())
                .position(|w| w == jpeg)
                .unwrap();
            assert!(
                contains(&original, PHONE_SECRETS[3].as_bytes()),
                "GPS in fixture"
            );
            let whole = scrub_both(&original, original.len());
            for chunk in [1, 3, 7, 100, 4096] {
                assert_eq!(scrub_both(&original, chunk), whole, "{chunk}-byte chunks");
            }
            assert_eq!(whole.len(), original.len(), "nothing moves");
            assert_no_secrets(&whole, "the jpeg item");
            for tag in [
                &b"Exif\0\0"[..],
                b"http://ns.adobe.com/xap",
                b"Photoshop 3.0",
            ] {
                assert!(!contains(&whole, tag), "{tag:?} left");
            }
            let item = &whole[at..at + jpeg.len()];
            assert!(
                !contains(item, b"ICC_PROFILE\0"),
                "an ICC profile's text cannot be told apart in a walk"
            );
            assert!(item.starts_with(b"\xFF\xD8") && item.ends_with(b"\xFF\xD9"));
            let decoded = image::load_from_memory(item).unwrap().to_rgb8();
            assert_eq!(decoded, pixels, "the same pixels");
            assert_eq!(heif_dimensions(&whole, true).unwrap(), Some((64, 48)));
            // Scrubbed again, nothing changes.
            assert_eq!(scrub_both(&whole, 5), whole);
        }
    }

    /// A `jpeg` item cut into pieces with another item between them is
    /// walked across the gap; bytes after EOI and a broken structure are
    /// zeros; pieces out of order are refused.
    #[test]
    fn a_jpeg_item_is_walked_across_its_pieces() {
        let jpeg = phone_photo_with_extras(16, 16);
        let cut = jpeg.len() / 3;
        let mut file = jpeg[..cut].to_vec();
        file.extend_from_slice(PHONE_SECRETS[3].as_bytes());
        let gap = cut as u64;
        file.extend_from_slice(&jpeg[cut..]);
        file.extend_from_slice(PHONE_SECRETS[2].as_bytes());
        let piece = |start: u64, end: u64, kind| Blank {
            start,
            end,
            item_offset: 0,
            item_len: 0,
            kind,
            id: 1,
            walk: Walk::default(),
        };
        let gap_end = gap + PHONE_SECRETS[3].len() as u64;
        let mut blanks = vec![
            piece(0, cut as u64, Item::Jpeg),
            Blank {
                id: 2,
                ..piece(gap, gap_end, Item::Other)
            },
            piece(gap_end, file.len() as u64, Item::Jpeg),
        ];
        let mut stored = Vec::new();
        let mut position = 0;
        for part in file.chunks(11) {
            let part = blank_at(
                &mut blanks,
                &mut position,
                Bytes::copy_from_slice(part),
                &mut false,
            );
            stored.extend_from_slice(&part);
        }
        assert!(blanks.is_empty());
        assert_no_secrets(&stored, "the pieces");
        let mut item = stored[..cut].to_vec();
        item.extend_from_slice(&stored[gap_end as usize..]);
        image::load_from_memory(&item).unwrap();
        assert!(
            item[jpeg.len()..].iter().all(|&b| b == 0),
            "after EOI: zeros"
        );
        // Not a JPEG at all: zeros.
        let mut walk = Walk::default();
        let text = PHONE_SECRETS[0].as_bytes();
        assert!(text.iter().all(|&b| walk.step(b) == 0));
        // Pieces out of order cannot be walked.
        let mut iloc = vec![1, 0, 0, 0, 0x44, 0x00, 0, 1, 0, 1, 0, 0, 0, 0, 0, 2];
        for (offset, length) in [(100u32, 10u32), (50, 10)] {
            iloc.extend_from_slice(&offset.to_be_bytes());
            iloc.extend_from_slice(&length.to_be_bytes());
        }
        let error = item_extents(&mut iloc, &[(1, Some(Item::Jpeg))], None).unwrap_err();
        assert!(error.to_string().contains("out of order"), "{error}");
    }

    /// Where item `item` (from 1) of a [`heif_file`] has its `iloc`
    /// entry's offset (its length follows).
    fn iloc_entry(file: &[u8], item: usize) -> usize {
        let iloc = file.windows(4).position(|w| w == b"iloc").unwrap() + 4;
        // Version and flags, field sizes, item count; 16 bytes per item.
        iloc + 4 + 2 + 2 + (item - 1) * 16 + 8
    }

    fn set_u32(file: &mut [u8], at: usize, value: u32) {
        file[at..at + 4].copy_from_slice(&value.to_be_bytes());
    }

    fn u32_at(file: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(file[at..at + 4].try_into().unwrap())
    }

    /// Text between two items in `mdat`, after the last one, and in a
    /// `free` box is zeroed, whether the `meta` box comes first or after
    /// `mdat` (then by the second pass), however the file is cut; the
    /// items are as a file without the text would have them.
    #[test]
    fn bytes_no_item_covers_are_zeroed() {
        let between = PHONE_SECRETS[3].as_bytes();
        let after = PHONE_SECRETS[2].as_bytes();
        for meta_last in [false, true] {
            let mut items = phone_heif_items(64, 48);
            let coded = items[0].data.clone();
            items[0].data.extend_from_slice(between);
            let parts = HeifParts {
                meta_last,
                ..HeifParts::default()
            };
            let mut original = heif_file(&items, &parts);
            // The image item no longer covers the text after it.
            let length_at = iloc_entry(&original, 1) + 4;
            set_u32(&mut original, length_at, coded.len() as u32);
            let original = heif_with_text_outside_its_items(&original, after);
            let plain = scrub_both(&heif_file(&phone_heif_items(64, 48), &parts), 64);
            let whole = scrub_both(&original, original.len());
            for chunk in [1, 7, 100] {
                assert_eq!(scrub_both(&original, chunk), whole, "{chunk}-byte chunks");
            }
            assert_eq!(whole.len(), original.len(), "nothing moves");
            for text in [between, after] {
                let at = original
                    .windows(text.len())
                    .position(|w| w == text)
                    .unwrap();
                assert!(
                    whole[at..at + text.len()].iter().all(|&b| b == 0),
                    "meta last: {meta_last}"
                );
            }
            assert!(contains(&whole, &coded), "the image stays");
            let exif_at = u32_at(&original, iloc_entry(&original, 2)) as usize;
            let exif_in_plain = u32_at(&plain, iloc_entry(&plain, 2)) as usize;
            let exif_len = u32_at(&original, iloc_entry(&original, 2) + 4) as usize;
            assert_eq!(
                whole[exif_at..exif_at + exif_len],
                plain[exif_in_plain..exif_in_plain + exif_len],
                "the EXIF item is emptied as it was"
            );
            assert_eq!(heif_dimensions(&whole, true).unwrap(), Some((64, 48)));
            assert_eq!(scrub_both(&whole, 5), whole, "scrubbed again, the same");
        }
    }

    /// `free` and `skip` boxes keep their type and size, at the top level,
    /// in `meta` and among the properties, and lose their bytes; an
    /// `idat` no item points into is zeros.
    #[test]
    fn padding_and_unused_item_data_lose_their_bytes() {
        let secret = PHONE_SECRETS[3].as_bytes();
        let mut items = phone_heif_items(64, 48);
        items[0].properties.push(iso_box(b"free", secret));
        let parts = HeifParts {
            before_meta: iso_box(b"free", secret),
            in_meta: [iso_box(b"skip", secret), iso_box(b"idat", secret)].concat(),
            after: iso_box(b"skip", secret),
            ..HeifParts::default()
        };
        let original = heif_file(&items, &parts);
        let (stored, report) = scrub(&original, 11).unwrap();
        assert!(report.changed);
        assert_eq!(stored.len(), original.len());
        assert!(!contains(&stored, secret), "the padding's text is stored");
        let padding = [b"free", b"skip", b"idat"].map(|kind| {
            let mut boxed = iso_box(kind, &vec![0; secret.len()]);
            boxed.truncate(8);
            boxed
        });
        for header in padding {
            assert!(contains(&stored, &header), "{header:?} kept with its size");
        }
        assert_eq!(heif_dimensions(&stored, true).unwrap(), Some((64, 48)));
    }

    /// An item that `iinf` does not describe is no image: its bytes are
    /// zeros.
    #[test]
    fn an_item_no_entry_describes_is_blanked() {
        let original = heif_file(&phone_heif_items(64, 48), &HeifParts::default());
        let mut renamed = original.clone();
        let id_at = iloc_entry(&renamed, 2) - 8;
        renamed[id_at..id_at + 2].copy_from_slice(&9u16.to_be_bytes());
        let (stored, _) = scrub(&renamed, 64).unwrap();
        let exif_at = u32_at(&original, iloc_entry(&original, 2)) as usize;
        let exif_len = u32_at(&original, iloc_entry(&original, 2) + 4) as usize;
        assert!(stored[exif_at..exif_at + exif_len].iter().all(|&b| b == 0));
        assert_no_secrets(&stored[..exif_at + exif_len], "the undescribed item");
    }

    /// Items whose bytes would be another box's (`ftyp`, the `meta` box,
    /// a `free` box), past the end of the file, or an image's are refused,
    /// with the `meta` box first or last: blanking them would break the
    /// box, keeping them would keep the metadata.
    #[test]
    fn items_outside_the_media_data_are_refused() {
        let parts = |meta_last| HeifParts {
            meta_last,
            after: iso_box(b"free", &[0; 64]),
            ..HeifParts::default()
        };
        for meta_last in [false, true] {
            let original = heif_file(&phone_heif_items(64, 48), &parts(meta_last));
            let len = original.len() as u32;
            let meta_at = original.windows(8).position(|w| w == b"meta\0\0\0\0");
            let meta_at = meta_at.unwrap() as u32;
            let image_at = u32_at(&original, iloc_entry(&original, 1));
            for (item, offset, why) in [
                (2, 8, "outside its media data"),
                (1, 8, "outside its media data"),
                (2, meta_at + 20, "own boxes"),
                (2, len - 40, "outside its media data"),
                (2, len + 1000, "past its end"),
                (3, image_at + 4, "share bytes"),
            ] {
                let mut bad = original.clone();
                let offset_at = iloc_entry(&bad, item);
                set_u32(&mut bad, offset_at, offset);
                set_u32(&mut bad, offset_at + 4, 8);
                for chunk in [7, bad.len()] {
                    let error = scrub(&bad, chunk).map(|_| ()).unwrap_err();
                    assert!(
                        error.to_string().contains(why),
                        "item {item} at {offset} (meta last: {meta_last}): {error}"
                    );
                }
            }
        }
    }

    /// An ICC profile in a `colr` property keeps its colour and loses its
    /// text; a malformed one becomes a `free` box of zeros.
    #[test]
    fn a_colour_profile_loses_its_text() {
        let secret = PHONE_SECRETS[3];
        let profile = crate::fixtures::icc_profile_with_text(secret);
        for (colour, kept) in [
            ([&b"prof"[..], &profile].concat(), true),
            ([&b"rICC"[..], &profile[..200]].concat(), false),
        ] {
            let mut items = phone_heif_items(64, 48);
            items[0].properties.push(iso_box(b"colr", &colour));
            let original = heif_file(&items, &HeifParts::default());
            let (stored, report) = scrub(&original, 13).unwrap();
            assert!(report.changed);
            assert_eq!(stored.len(), original.len());
            assert_no_secrets(&stored, "the colour profile");
            assert_eq!(contains(&stored, b"colr"), kept);
            assert_eq!(contains(&stored, b"acsp"), kept);
            assert_eq!(heif_dimensions(&stored, true).unwrap(), Some((64, 48)));
        }
    }

    /// Before the bound, the 12 KB file made a replica allocate 2 GB (16
    /// bytes per extent) and the 393 KB one aborted the process; now the
    /// extent counts are checked against the box's bytes first.
    #[test]
    fn an_iloc_bomb_is_refused_at_once() {
        for (items, extents) in [(2000, 0xFFFF), (0xFFFF, 0xFFFF), (70_000, 0xFFFF)] {
            let bomb = iloc_bomb(items, extents);
            let started = Instant::now();
            let error = scrub(&bomb, 64 * 1024).unwrap_err();
            assert!(matches!(error, MediaError::Invalid(_)), "{error:?}");
            assert!(error.to_string().contains("iloc"), "{error}");
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{items} x {extents} took {:?}",
                started.elapsed()
            );
        }
        assert!(iloc_bomb(2000, 0xFFFF).len() < 13_000);
    }

    /// Extents whose fields have no width are free to declare: an item
    /// may have one, not two; and that one has no length (the data to the
    /// end, whatever else lies there), which is refused too.
    #[test]
    fn zero_width_extents_are_one_per_item() {
        let error = scrub(&iloc_bomb(3, 1), 100).unwrap_err();
        assert!(error.to_string().contains("without a length"), "{error}");
        let error = scrub(&iloc_bomb(3, 2), 100).unwrap_err();
        assert!(error.to_string().contains("no width"), "{error}");
    }

    #[test]
    fn an_iloc_with_more_items_than_bytes_is_refused() {
        let mut bomb = iloc_bomb(3, 1);
        // The item count (after the iloc's version, flags and sizes).
        let at = bomb.windows(4).position(|w| w == b"iloc").unwrap() + 4 + 6;
        bomb[at..at + 2].copy_from_slice(&0xFFFFu16.to_be_bytes());
        let error = scrub(&bomb, 100).unwrap_err();
        assert!(error.to_string().contains("more items"), "{error}");
    }

    #[test]
    fn more_boxes_than_the_limit_are_refused() {
        let mut file = iso_box(b"ftyp", b"heic\0\0\0\0mif1heic");
        for _ in 0..=MAX_HEIF_BOXES {
            file.extend(iso_box(b"free", b""));
        }
        let error = scrub(&file, 64 * 1024).unwrap_err();
        assert!(error.to_string().contains("boxes"), "{error}");
    }

    /// A Samsung motion photo: the still is kept byte for byte at the same
    /// offsets, the video (`mpvd`, with its GPS track) and the `uuid`
    /// boxes of XMP become `free` boxes of zeros.
    #[test]
    fn a_motion_photo_keeps_its_still_and_loses_its_video_and_uuid_boxes() {
        let original = heic_motion_photo(4032, 3024);
        for secret in PHONE_SECRETS {
            assert!(
                contains(&original, secret.as_bytes()),
                "{secret} in fixture"
            );
        }
        for chunk in [1, 7, 100, original.len()] {
            let (stored, report) = scrub(&original, chunk).unwrap();
            assert!(report.stripped && report.changed);
            assert_eq!(stored.len(), original.len(), "nothing moves");
            assert_no_secrets(&stored, "the motion photo");
            for kind in [b"mpvd", b"uuid", b"moov", b"\xA9xyz"] {
                assert!(!contains(&stored, kind), "{kind:?} left");
            }
            let coded = b"hvc1-coded-image-data-".repeat(40);
            let at = original.windows(coded.len()).position(|w| w == coded);
            assert_eq!(
                stored.windows(coded.len()).position(|w| w == coded),
                at,
                "the coded image stays where iloc says"
            );
            assert_eq!(heif_dimensions(&stored, true).unwrap(), Some((4032, 3024)));
        }
    }

    /// Boxes in `meta` that are not image structure, properties that are
    /// not about pixels, and items that are not images (any `mime`, `uri `)
    /// are blanked, not only EXIF and XMP.
    #[test]
    fn everything_not_image_structure_is_blanked() {
        let secret = PHONE_SECRETS[3];
        let mut items = phone_heif_items(640, 480);
        items[0].properties.push(iso_full_box(
            b"udes",
            0,
            format!("en\0{secret}\0").as_bytes(),
        ));
        items.push(HeifItem {
            content_type: "text/plain",
            ..HeifItem::new(b"mime", secret.as_bytes())
        });
        items.push(HeifItem::new(b"uri ", secret.as_bytes()));
        let parts = HeifParts {
            in_meta: [
                iso_box(b"uuid", secret.as_bytes()),
                iso_box(b"xml ", secret.as_bytes()),
            ]
            .concat(),
            ..HeifParts::default()
        };
        let original = heif_file(&items, &parts);
        let (stored, report) = scrub(&original, 13).unwrap();
        assert!(report.stripped);
        assert_eq!(stored.len(), original.len());
        assert_no_secrets(&stored, "the meta box");
        assert!(contains(&stored, &b"hvc1-coded-image-data-".repeat(40)));
        assert!(contains(&stored, b"ispe"), "the image's properties stay");
        assert_eq!(heif_dimensions(&stored, true).unwrap(), Some((640, 480)));
    }

    /// An image sequence's `moov` goes whole (a `free` box of zeros), its
    /// `udta` and `meta` with it; the still image stays.
    #[test]
    fn a_sequence_is_dropped_and_its_still_kept() {
        let secret = PHONE_SECRETS[3].as_bytes();
        let trak = [
            iso_full_box(b"tkhd", 0, &[0; 80]),
            iso_box(b"udta", secret),
            iso_full_box(b"meta", 0, secret),
        ]
        .concat();
        let moov = [
            iso_full_box(b"mvhd", 0, &[0; 96]),
            iso_box(b"trak", &trak),
            iso_box(b"udta", secret),
        ]
        .concat();
        let parts = HeifParts {
            ftyp: b"msf1\0\0\0\0msf1hevc".to_vec(),
            after: iso_box(b"moov", &moov),
            ..HeifParts::default()
        };
        let original = heif_file(&phone_heif_items(64, 64), &parts);
        let (stored, _) = scrub(&original, 5).unwrap();
        assert_eq!(stored.len(), original.len());
        assert_no_secrets(&stored, "the sequence");
        for kind in [b"moov", b"trak", b"tkhd", b"mvhd", b"msf1", b"hevc"] {
            assert!(!contains(&stored, kind), "{kind:?} dropped");
        }
        assert!(stored.ends_with(&[&b"free"[..], &vec![0; moov.len()]].concat()));
        assert!(contains(&stored, &b"hvc1-coded-image-data-".repeat(40)));
        assert_eq!(&stored[8..24], b"mif1\0\0\0\0mif1heic");
    }

    /// Every brand list of the sniffer is the scrubber's: a `miaf` HEIC,
    /// or one whose major brand is unknown but compatible brands say HEIF,
    /// loses its metadata.
    #[test]
    fn every_heif_brand_the_sniffer_accepts_is_scrubbed() {
        for (ftyp, kind) in [
            (&b"miaf\0\0\0\0miafmif1"[..], "image/heif"),
            (b"miaf\0\0\0\0miafheic", "image/heic"),
            (b"isom\0\0\0\0isommif1heic", "image/heic"),
            (b"mp42\0\0\0\0mif1avif", "image/avif"),
            (b"msf1\0\0\0\0msf1", "image/heif"),
        ] {
            let parts = HeifParts {
                ftyp: ftyp.to_vec(),
                ..HeifParts::default()
            };
            let original = heif_file(&phone_heif_items(64, 64), &parts);
            assert_eq!(heif_type(&original), Some(kind));
            let (stored, report) = scrub(&original, 64).unwrap();
            assert!(report.stripped);
            assert_no_secrets(&stored, kind);
        }
        let mp4 = iso_box(b"ftyp", b"isom\0\0\0\0isommp42");
        assert_eq!(heif_type(&mp4), None, "a video is not an image");
    }

    /// The size of a grid is the grid's own `ispe`, not a tile's, turned
    /// by the grid's `irot`.
    #[test]
    fn a_grid_gives_its_own_size_turned_by_irot() {
        for (turns, expected) in [
            (0, (4000, 1848)),
            (1, (1848, 4000)),
            (2, (4000, 1848)),
            (3, (1848, 4000)),
        ] {
            let grid = heic_grid(4000, 1848, 512, turns);
            assert_eq!(heif_dimensions(&grid, true).unwrap(), Some(expected));
            assert_eq!(
                heif_dimensions(&grid[..grid.len() / 2], false).unwrap(),
                None
            );
        }
        let photo = heic_photo(4032, 3024, HeifLayout::MetaFirst);
        assert_eq!(heif_dimensions(&photo, true).unwrap(), Some((3024, 4032)));
    }

    /// A `meta` box is counted whole as soon as its length is read, before
    /// its bytes are held (the upload grows its memory reservation by it).
    #[test]
    fn the_meta_box_being_held_is_counted_from_its_header() {
        let parts = HeifParts {
            in_meta: iso_box(b"free", &vec![0; 2 << 20]),
            ..HeifParts::default()
        };
        let file = heif_file(&phone_heif_items(64, 64), &parts);
        let meta_at = file.windows(4).position(|w| w == b"meta").unwrap() - 4;
        let meta_len = u32::from_be_bytes(file[meta_at..meta_at + 4].try_into().unwrap());
        let mut scrubber = Scrubber::new(false);
        let mut out = Vec::new();
        scrubber
            .push(Bytes::copy_from_slice(&file[..meta_at + 8]), &mut out)
            .unwrap();
        assert_eq!(scrubber.holding(), u64::from(meta_len));
        scrubber
            .push(Bytes::copy_from_slice(&file[meta_at + 8..]), &mut out)
            .unwrap();
        assert!(scrubber.holding() < 16, "the meta box was passed on");
    }

    #[test]
    fn a_meta_box_after_mdat_beyond_the_header_says_why() {
        let late = heic_photo(640, 480, HeifLayout::MetaLast);
        let mdat_end = late.windows(4).position(|w| w == b"meta").unwrap() - 4;
        let error = heif_dimensions(&late[..mdat_end + 20], true).unwrap_err();
        assert!(
            error.to_string().contains("after its media data"),
            "{error}"
        );
        assert_eq!(heif_dimensions(&late, true).unwrap(), Some((480, 640)));
    }
}

/// Structure kept whole that could carry a caller's text: properties of
/// codecs the service does not decode, properties no item uses,
/// references to items that do not exist, flags and reserved fields.
#[cfg(test)]
mod attack5 {
    use bytes::Bytes;

    use super::heif_dimensions;
    use super::tests::scrub;
    use crate::fixtures::{
        HeifItem, HeifParts, heif_file, iso_box, iso_full_box, phone_heif_items,
    };

    const MARK: &[u8] = b"NAME=Alice Example;GPS48.8584N2.2945E";

    pub(super) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// Where `kind`'s `nth` box type lies in `file`.
    fn find(file: &[u8], kind: &[u8; 4], nth: usize) -> usize {
        let mut found = file
            .windows(4)
            .enumerate()
            .filter(|(_, w)| w == kind)
            .map(|(at, _)| at);
        found.nth(nth).unwrap()
    }

    /// The bytes stored for `original` (pushed in pieces of 7, the second
    /// pass applied): the same length, and the primary image's size
    /// still read.
    pub(super) fn scrubbed(original: &[u8]) -> Vec<u8> {
        let (mut stored, report) = scrub(original, 7).unwrap();
        if let Some(mut rescrub) = report.rescrub {
            stored = rescrub.apply(Bytes::from(stored)).to_vec();
        }
        assert_eq!(stored.len(), original.len(), "nothing moves");
        assert_eq!(heif_dimensions(&stored, true).unwrap(), Some((64, 48)));
        stored
    }

    fn photo(properties: &[Vec<u8>], parts: &HeifParts) -> Vec<u8> {
        let mut items = phone_heif_items(64, 48);
        items[0].properties.extend_from_slice(properties);
        heif_file(&items, parts)
    }

    #[test]
    fn properties_of_codecs_the_service_does_not_decode_are_blanked() {
        for kind in [
            b"lhvC", b"avcC", b"vvcC", b"evcC", b"j2kH", b"oinf", b"tols", b"reve", b"splz",
            b"sbpm", b"cpal",
        ] {
            let property = iso_box(kind, &MARK.repeat(400));
            for meta_last in [false, true] {
                let parts = HeifParts {
                    meta_last,
                    ..HeifParts::default()
                };
                let stored = scrubbed(&photo(std::slice::from_ref(&property), &parts));
                assert!(!contains(&stored, MARK), "{kind:?}");
                let free = [&(property.len() as u32).to_be_bytes()[..], b"free"].concat();
                assert!(contains(&stored, &free), "{kind:?} becomes free");
            }
        }
    }

    #[test]
    fn properties_keep_their_fields_and_nothing_else() {
        let primaries: Vec<u8> = (1..=28).collect();
        for (property, kept) in [
            (
                iso_full_box(b"cloc", 0, &[&[1][..], MARK].concat()),
                b"cloc\0\0\0\0\x01\0".to_vec(),
            ),
            (
                iso_full_box(b"cmpC", 0, &[&b"zlib\x01"[..], MARK].concat()),
                b"cmpC\0\0\0\0zlib\x01\0".to_vec(),
            ),
            (
                iso_box(
                    b"amve",
                    &[&[0, 0, 1, 0, 0x3D, 0x13, 0x40, 0x42][..], MARK].concat(),
                ),
                b"amve\0\0\x01\0\x3D\x13\x40\x42\0".to_vec(),
            ),
            (
                // Primaries and minimum luminance, a reserved bit set.
                iso_box(b"cclv", &[&[0xB0][..], &primaries, MARK].concat()),
                [&b"cclv\x30"[..], &primaries, &[0]].concat(),
            ),
            (
                // Two units of a 16-bit offset and a 16-bit size, the
                // reserved bits set.
                iso_full_box(
                    b"icef",
                    0,
                    &[&[0x27, 0, 0, 0, 2, 0, 0, 0, 9, 0, 9, 0, 5][..], MARK].concat(),
                ),
                b"icef\0\0\0\0\x24\0\0\0\x02\0\0\0\x09\0\x09\0\x05\0".to_vec(),
            ),
        ] {
            let stored = scrubbed(&photo(&[property], &HeifParts::default()));
            assert!(contains(&stored, &kept), "{kept:?}");
            assert!(!contains(&stored, &MARK[..8]), "{kept:?}");
        }
    }

    #[test]
    fn a_property_no_item_uses_is_blanked() {
        // Every byte of a `cclv` with all its fields present is a field.
        let cclv = iso_box(b"cclv", &[&[0x3C][..], &MARK[..36]].concat());
        let used = photo(std::slice::from_ref(&cclv), &HeifParts::default());
        assert!(
            contains(&scrubbed(&used), &cclv),
            "kept where an item uses it"
        );
        // The primary's entry: its id, a count of 2, the `ispe`'s index
        // and the `cclv`'s, which becomes 0 (no property).
        let mut unused = used.clone();
        let entry = find(&unused, b"ipma", 0) + 4 + 8;
        assert_eq!(unused[entry..entry + 5], [0, 1, 2, 1, 2]);
        unused[entry + 4] = 0;
        let stored = scrubbed(&unused);
        assert!(!contains(&stored, &MARK[..36]));
        let free = [&(cclv.len() as u32).to_be_bytes()[..], b"free"].concat();
        assert!(contains(&stored, &free));
    }

    #[test]
    fn references_keep_only_items_that_exist() {
        let ids = &MARK[..36];
        // Version 0: a thumbnail from the image to the EXIF item and to
        // 18 ids no item has; metadata of an item no one has.
        let thmb = [&[0, 1, 0, 19, 0, 2][..], ids].concat();
        let cdsc = [&MARK[..2], &[0, 1, 0, 1][..]].concat();
        let iref = iso_full_box(
            b"iref",
            0,
            &[iso_box(b"thmb", &thmb), iso_box(b"cdsc", &cdsc)].concat(),
        );
        let parts = HeifParts {
            in_meta: iref,
            ..HeifParts::default()
        };
        let stored = scrubbed(&photo(&[], &parts));
        assert!(!contains(&stored, ids));
        assert!(contains(&stored, b"thmb\0\x01\0\x01\0\x02\0\0"));
        assert!(!contains(&stored, b"cdsc"), "a reference from nothing goes");
        // Version 1, ids of 32 bits: XMP describing the image and 9 ids
        // no item has; a thumbnail from an item no one has; a reference
        // to nothing but ids no item has.
        let cdsc = [&[0, 0, 0, 3, 0, 10, 0, 0, 0, 1][..], ids].concat();
        let thmb = [&MARK[..4], &[0, 1, 0, 0, 0, 1][..]].concat();
        let dimg = [&[0, 0, 0, 1, 0, 9][..], ids].concat();
        let iref = iso_full_box(
            b"iref",
            1,
            &[
                iso_box(b"cdsc", &cdsc),
                iso_box(b"thmb", &thmb),
                iso_box(b"dimg", &dimg),
            ]
            .concat(),
        );
        let parts = HeifParts {
            in_meta: iref,
            meta_last: true,
            ..HeifParts::default()
        };
        let stored = scrubbed(&photo(&[], &parts));
        assert!(!contains(&stored, ids) && !contains(&stored, &MARK[..4]));
        assert!(contains(&stored, b"cdsc\0\0\0\x03\0\x01\0\0\0\x01\0\0"));
        assert!(!contains(&stored, b"thmb") && !contains(&stored, b"dimg"));
    }

    #[test]
    fn flags_and_reserved_fields_are_zeroed() {
        let iref = iso_full_box(b"iref", 0, &iso_box(b"cdsc", &[0, 3, 0, 1, 0, 1]));
        let parts = HeifParts {
            in_meta: iref,
            ..HeifParts::default()
        };
        let mut original = photo(&[], &parts);
        // The flags after each box's type and version, text; `ipma`'s
        // bit 0 (16-bit indices) and `infe`'s (hidden) are defined.
        let mut flags = Vec::new();
        for (kind, nth, set, kept) in [
            (b"meta", 0, b"GPS", [0, 0, 0]),
            (b"hdlr", 0, b"GPS", [0, 0, 0]),
            (b"pitm", 0, b"GPS", [0, 0, 0]),
            (b"iinf", 0, b"GPS", [0, 0, 0]),
            (b"iloc", 0, b"GPS", [0, 0, 0]),
            (b"ispe", 0, b"GPS", [0, 0, 0]),
            (b"iref", 0, b"GPS", [0, 0, 0]),
            (b"ipma", 0, b"GPR", [0, 0, 0]),
            (b"infe", 1, b"GPS", [0, 0, 1]),
        ] {
            let at = find(&original, kind, nth) + 5;
            original[at..at + 3].copy_from_slice(set);
            flags.push((at, kept, kind));
        }
        // `hdlr`'s pre_defined and reserved fields; the EXIF item's
        // protection index (no `ipro` is kept).
        let hdlr = find(&original, b"hdlr", 0);
        original[hdlr + 8..hdlr + 12].copy_from_slice(&MARK[..4]);
        original[hdlr + 16..hdlr + 28].copy_from_slice(&MARK[4..16]);
        let protection = find(&original, b"infe", 1) + 10;
        original[protection..protection + 2].copy_from_slice(b"GP");
        let stored = scrubbed(&original);
        for (at, kept, kind) in flags {
            assert_eq!(stored[at..at + 3], kept, "{kind:?}");
        }
        assert_eq!(
            stored[hdlr + 4..hdlr + 28],
            *b"\0\0\0\0\0\0\0\0pict\0\0\0\0\0\0\0\0\0\0\0\0"
        );
        assert_eq!(stored[protection..protection + 2], [0, 0]);
    }

    #[test]
    fn iloc_extent_indices_and_undescribed_ids_are_zeroed() {
        // The `meta` box last, so that its `iloc` may grow: the same
        // items, with extent indices of 4 bytes, and four entries for
        // items no `infe` describes.
        let parts = HeifParts {
            meta_last: true,
            ..HeifParts::default()
        };
        let original = photo(&[], &parts);
        let at = find(&original, b"iloc", 0) - 4;
        let len = u32::from_be_bytes(original[at..at + 4].try_into().unwrap()) as usize;
        let old = &original[at + 16..at + len];
        let mut iloc = vec![0x44, 0x04, 0, 7];
        for (n, entry) in old.chunks_exact(16).enumerate() {
            iloc.extend_from_slice(&entry[..8]);
            iloc.extend_from_slice(&MARK[4 * n..4 * n + 4]);
            iloc.extend_from_slice(&entry[8..]);
        }
        for ghost in MARK[16..24].chunks_exact(2) {
            iloc.extend_from_slice(&[ghost, &[0; 6]].concat());
        }
        let iloc = iso_full_box(b"iloc", 1, &iloc);
        let mut changed = [&original[..at], &iloc, &original[at + len..]].concat();
        // After `ftyp` and `mdat`.
        let size = |at: usize| u32::from_be_bytes(changed[at..at + 4].try_into().unwrap()) as usize;
        let meta = size(0) + size(size(0));
        let meta_len = (changed.len() - meta) as u32;
        changed[meta..meta + 4].copy_from_slice(&meta_len.to_be_bytes());
        let stored = scrubbed(&changed);
        let stored_iloc = &stored[at..at + iloc.len()];
        // Its header as it was; no index, no ghost id.
        assert_eq!(stored_iloc[..16], iloc[..16]);
        let stored_iloc = &stored_iloc[16..];
        for piece in MARK[..24].chunks_exact(2) {
            assert!(!contains(stored_iloc, piece), "{piece:?}");
        }
        assert!(contains(&stored, b"hvc1-coded-image-data-"));
    }

    #[test]
    fn coded_items_the_primary_does_not_use_are_blanked() {
        let text = MARK.repeat(400);
        for kind in [
            b"hvt1", b"lhv1", b"avc1", b"vvc1", b"evc1", b"j2k1", b"unci", b"mski",
        ] {
            let mut items = phone_heif_items(64, 48);
            items.push(HeifItem::new(kind, &text));
            let original = heif_file(&items, &HeifParts::default());
            assert!(!contains(&scrubbed(&original), MARK), "{kind:?}");
            // The primary's thumbnail (item 4) is the primary's: it stays,
            // however it is coded; so do the tiles of a grid.
            for iref in [
                iso_box(b"thmb", &[0, 4, 0, 1, 0, 1]),
                iso_box(b"dimg", &[0, 1, 0, 1, 0, 4]),
            ] {
                let parts = HeifParts {
                    in_meta: iso_full_box(b"iref", 0, &iref),
                    ..HeifParts::default()
                };
                let original = heif_file(&items, &parts);
                assert!(contains(&scrubbed(&original), &text), "{kind:?}");
            }
        }
    }

    /// The files of the fuzz corpus whose names start with `prefix`, by
    /// name.
    pub(super) fn crafted(prefix: &str) -> Vec<(String, Vec<u8>)> {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/scrub");
        let mut files = Vec::new();
        for entry in std::fs::read_dir(corpus).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with(prefix) {
                files.push((name, std::fs::read(&path).unwrap()));
            }
        }
        files
    }

    /// The crafted files of the fuzz corpus (`a5-heif-*`, each with GPS
    /// text where the structure had room for it) keep none of it.
    #[test]
    fn the_crafted_corpus_files_lose_their_text() {
        let mut files = 0;
        for (name, original) in crafted("a5-heif-") {
            let stored = scrubbed(&original);
            assert!(!contains(&stored, b"GPS"), "{name}");
            files += 1;
        }
        assert!(files >= 12, "{files} crafted files");
    }

    /// A real HEIC, AVIF and grid render the same variants once scrubbed
    /// (decoded by libheif to the same pixels).
    #[cfg(feature = "heif")]
    #[test]
    fn real_files_decode_to_the_same_pixels() {
        use crate::fixtures::{HeifCodec, encoded_heif, encoded_heif_grid};
        use crate::media::variants::render;
        let shown = |file: &[u8]| {
            let rendered = render(file, image::ImageFormat::Avif, 1, 1 << 30).unwrap();
            let variants: Vec<_> = rendered.variants.into_iter().map(|v| v.bytes).collect();
            (variants, rendered.blurhash)
        };
        for original in [
            encoded_heif(64, 48, HeifCodec::Hevc),
            encoded_heif(64, 48, HeifCodec::Av1),
            encoded_heif_grid((64, 48), 2, 2),
        ] {
            let (stored, report) = scrub(&original, 7).unwrap();
            assert!(report.changed);
            assert_eq!(stored.len(), original.len());
            assert_eq!(shown(&stored), shown(&original));
        }
    }
}

/// Item ids that carry a caller's text: references from or to items that
/// have no data (ids chosen to spell text), and ids repeated in one
/// reference.
#[cfg(test)]
mod attack6 {
    use super::attack5::{contains, crafted, scrubbed};
    use crate::fixtures::{
        HeifItem, HeifParts, heif_file, iso_box, iso_full_box, phone_heif_items,
    };

    /// A reference keeps each item it names once: a thumbnail (item 4,
    /// with data) of the image listed four times, the EXIF item
    /// describing it twice.
    #[test]
    fn a_reference_names_each_item_once() {
        let mut items = phone_heif_items(64, 48);
        items.push(HeifItem::new(b"hvc1", b"thumbnail").sized(16, 12));
        let iref = [
            iso_box(b"thmb", &[0, 4, 0, 4, 0, 1, 0, 1, 0, 1, 0, 1]),
            iso_box(b"cdsc", &[0, 2, 0, 2, 0, 1, 0, 1]),
        ]
        .concat();
        for meta_last in [false, true] {
            let parts = HeifParts {
                in_meta: iso_full_box(b"iref", 0, &iref),
                meta_last,
                ..HeifParts::default()
            };
            let stored = scrubbed(&heif_file(&items, &parts));
            assert!(contains(&stored, b"thmb\0\x04\0\x01\0\x01\0\0\0\0\0\0"));
            assert!(contains(&stored, b"cdsc\0\x02\0\x01\0\x01\0\0"));
        }
    }

    /// The crafted corpus files (`a6-heif-*`): items declared with no
    /// data, whose ids spell a record, named by a thumbnail or alpha
    /// reference from the image (16- and 32-bit ids, ids repeated) or
    /// describing it (`cdsc` from each): every such reference goes.
    #[test]
    fn ids_of_items_with_no_data_are_not_kept() {
        let mut files = 0;
        let ghosts = [
            crafted("a6-heif-ghost-ids"),
            crafted("a6-heif-repeated-ids"),
        ];
        for (name, original) in ghosts.into_iter().flatten() {
            if name.ends_with("-iden") {
                continue;
            }
            let stored = scrubbed(&original);
            assert!(!contains(&stored, b"GPS=48"), "{name}");
            for kind in [b"thmb", b"auxl", b"cdsc"] {
                assert!(!contains(&stored, kind), "{name}: {kind:?}");
            }
            files += 1;
        }
        assert!(files >= 6, "{files} crafted files");
    }

    /// An `iden` item (no data of its own) derived from the image stays a
    /// reference's target; those derived from items with no data, whose
    /// ids spell text, go with their references.
    #[test]
    fn only_iden_items_derived_from_data_are_named() {
        let (_, original) = &crafted("a6-heif-ghost-ids-iden")[0];
        let stored = scrubbed(original);
        assert!(!contains(&stored, b"GPS=48"));
        assert!(contains(&stored, b"thmb\0\x01\0\x01\0\x02\0\0"));
        assert!(contains(&stored, b"dimg\0\x02\0\x01\0\x01"));
        let dimg = stored.windows(4).filter(|w| w == b"dimg").count();
        assert_eq!(dimg, 1);
    }

    /// A 64x48 RGBA image with `pixel` at each place and a 16-pixel
    /// thumbnail, encoded by libheif (HEVC): its context, to add to and
    /// write, and the image's handle.
    #[cfg(feature = "heif")]
    pub(super) fn encoded(
        pixel: impl Fn(usize, usize) -> [u8; 4],
    ) -> (libheif_rs::HeifContext<'static>, libheif_rs::ImageHandle) {
        use libheif_rs::{
            Channel, ColorSpace, CompressionFormat, EncoderQuality, HeifContext, Image, LibHeif,
            RgbChroma,
        };
        let (width, height) = (64u32, 48u32);
        let mut image = Image::new(width, height, ColorSpace::Rgb(RgbChroma::Rgba)).unwrap();
        image
            .create_plane(Channel::Interleaved, width, height, 8)
            .unwrap();
        let plane = image.planes_mut().interleaved.unwrap();
        for y in 0..height as usize {
            for x in 0..width as usize {
                let at = y * plane.stride + x * 4;
                plane.data[at..at + 4].copy_from_slice(&pixel(x, y));
            }
        }
        let lib = LibHeif::new();
        let mut encoder = lib.encoder_for_format(CompressionFormat::Hevc).unwrap();
        encoder.set_quality(EncoderQuality::Lossy(90)).unwrap();
        let mut context = HeifContext::new().unwrap();
        let handle = context.encode_image(&image, &mut encoder, None).unwrap();
        context
            .encode_thumbnail(&image, &handle, 16, &mut encoder, None)
            .unwrap()
            .unwrap();
        (context, handle)
    }

    /// The RGBA pixels libheif decodes `file`'s primary image to, which
    /// has one thumbnail, and an alpha plane when `alpha`.
    #[cfg(feature = "heif")]
    pub(super) fn decoded(file: &[u8], alpha: bool) -> Vec<u8> {
        use libheif_rs::{ColorSpace, HeifContext, LibHeif, RgbChroma};
        let context = HeifContext::read_from_bytes(file).unwrap();
        let primary = context.primary_image_handle().unwrap();
        assert_eq!(primary.has_alpha_channel(), alpha);
        assert_eq!(primary.number_of_thumbnails(), 1);
        let image = LibHeif::new()
            .decode(&primary, ColorSpace::Rgb(RgbChroma::Rgba), None)
            .unwrap();
        image.planes().interleaved.unwrap().data.to_vec()
    }

    /// A real HEIC with an alpha plane and a thumbnail, encoded by
    /// libheif: both stay, and it decodes to the same pixels.
    #[cfg(feature = "heif")]
    #[test]
    fn a_real_file_keeps_its_alpha_and_thumbnail() {
        use super::tests::scrub;
        let (context, _) = encoded(|x, y| {
            let alpha = if x < 32 { 255 } else { 96 };
            [200, 30, (y * 5) as u8, alpha]
        });
        let original = context.write_to_bytes().unwrap();
        let (stored, report) = scrub(&original, 7).unwrap();
        assert_eq!(stored.len(), original.len());
        assert_eq!(
            decoded(&stored, true),
            decoded(&original, true),
            "changed: {}",
            report.changed
        );
    }
}

#[cfg(test)]
mod attack7 {
    use super::attack5::{contains, crafted, scrubbed};
    use crate::fixtures::{iso_box, iso_full_box};

    /// Text the crafted files spell in their item ids, 4 (or 2) bytes an
    /// id.
    const MARK: &[u8; 24] = b"JQPUBLIC;GPS48.85N2.29E;";

    /// Ids of `size` bytes (2 or 4), as they are written.
    fn ids(size: usize, ids: &[u32]) -> Vec<u8> {
        ids.iter()
            .flat_map(|id| id.to_be_bytes()[4 - size..].to_vec())
            .collect()
    }

    /// A 64x48 HEIF whose ids are the marker, `size` bytes each: with 4,
    /// 32-bit ids everywhere (`pitm` v1, `infe` v3, `iloc` v2, `iref` v1,
    /// `ipma` v1), with 2, 16-bit ones (`pitm` v0, `infe` v2, `iloc` v1,
    /// `iref` v0, `ipma` v0): the image, its thumbnail and an EXIF item
    /// describing it, with data; two items with none, named by the
    /// thumbnail reference; an `iloc` and an `ipma` entry for an id no
    /// `infe` declares.
    pub(super) fn ids_spelling_text(size: usize) -> Vec<u8> {
        let wide = u8::from(size == 4);
        let id = |n: usize| {
            MARK[size * n..size * n + size]
                .iter()
                .fold(0u32, |id, &b| (id << 8) | u32::from(b))
        };
        let (image, thumbnail, exif) = (id(0), id(1), id(2));
        let data: [&[u8]; 4] = [
            b"image data",
            b"thumb",
            b"\0\0\0\0MM\0*\0\0\0\x08\0\0",
            b"xx",
        ];
        let ids = |list: &[u32]| ids(size, list);
        let build = |mdat_at: u32| {
            let infe = |id: u32, kind: &[u8; 4]| {
                iso_full_box(
                    b"infe",
                    2 + wide,
                    &[&ids(&[id])[..], &[0, 0], kind, &[0]].concat(),
                )
            };
            let iinf = [
                &ids(&[5])[..],
                &infe(image, b"hvc1"),
                &infe(thumbnail, b"hvc1"),
                &infe(exif, b"Exif"),
                &infe(id(3), b"hvc1"),
                &infe(id(4), b"zzzz"),
            ]
            .concat();
            let (mut iloc, mut at) = ([&[0x44, 0][..], &ids(&[4])].concat(), mdat_at);
            for (item, bytes) in [image, thumbnail, exif, id(5)].into_iter().zip(data) {
                iloc.extend_from_slice(&ids(&[item]));
                iloc.extend_from_slice(&[0, 0, 0, 0, 0, 1]);
                iloc.extend_from_slice(&at.to_be_bytes());
                iloc.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                at += bytes.len() as u32;
            }
            let iref = [
                iso_box(
                    b"thmb",
                    &[
                        &ids(&[thumbnail])[..],
                        &[0, 3],
                        &ids(&[image, id(3), id(4)]),
                    ]
                    .concat(),
                ),
                iso_box(
                    b"cdsc",
                    &[&ids(&[exif])[..], &[0, 1], &ids(&[image])].concat(),
                ),
            ]
            .concat();
            let ispe = |w: u32, h: u32| {
                iso_full_box(b"ispe", 0, &[w.to_be_bytes(), h.to_be_bytes()].concat())
            };
            let ipma = [
                &3u32.to_be_bytes()[..],
                &ids(&[image]),
                &[1, 0x81],
                &ids(&[thumbnail]),
                &[1, 0x82],
                &ids(&[id(5)]),
                &[1, 0x01],
            ]
            .concat();
            let iprp = iso_box(
                b"iprp",
                &[
                    iso_box(b"ipco", &[ispe(64, 48), ispe(16, 12)].concat()),
                    iso_full_box(b"ipma", wide, &ipma),
                ]
                .concat(),
            );
            let meta = iso_full_box(
                b"meta",
                0,
                &[
                    iso_full_box(b"hdlr", 0, &[&[0; 4][..], b"pict", &[0; 13]].concat()),
                    iso_full_box(b"pitm", wide, &ids(&[image])),
                    iso_full_box(b"iinf", wide, &iinf),
                    iso_full_box(b"iloc", 1 + wide, &iloc),
                    iso_full_box(b"iref", wide, &iref),
                    iprp,
                ]
                .concat(),
            );
            let ftyp = iso_box(b"ftyp", b"heic\0\0\0\0mif1heic");
            [ftyp, meta, iso_box(b"mdat", &data.concat())].concat()
        };
        let mdat_at = build(0).len() - data.concat().len();
        build(mdat_at as u32)
    }

    /// Every id becomes 1 to N in `iinf`'s order, in every box that holds
    /// one, with each field's width: no piece of the text stays, and the
    /// image, its size, its thumbnail and its EXIF item still line up.
    #[test]
    fn item_ids_are_renumbered_in_iinf_order() {
        for size in [4, 2] {
            let wide = u8::from(size == 4);
            let original = ids_spelling_text(size);
            let stored = scrubbed(&original);
            // Six ids, the first six pieces.
            for piece in MARK[..6 * size].chunks(size) {
                assert!(contains(&original, piece));
                let piece = String::from_utf8_lossy(piece);
                assert!(!contains(&stored, piece.as_bytes()), "{piece:?}");
            }
            let ids = |list: &[u32]| ids(size, list);
            let full = |kind: &[u8], version| [kind, &[version, 0, 0, 0]].concat();
            // The primary is the first item, the iinf count is 5.
            assert!(contains(
                &stored,
                &[full(b"pitm", wide), ids(&[1])].concat()
            ));
            assert!(contains(
                &stored,
                &[full(b"iinf", wide), ids(&[5])].concat()
            ));
            // The thumbnail (2) of the image (1), the ghosts dropped; the
            // EXIF item (3) describes the image.
            let thmb = [&b"thmb"[..], &ids(&[2]), &[0, 1], &ids(&[1])].concat();
            assert!(contains(&stored, &thmb), "{size}");
            let cdsc = [&b"cdsc"[..], &ids(&[3]), &[0, 1], &ids(&[1])].concat();
            assert!(contains(&stored, &cdsc), "{size}");
            // The image's and the thumbnail's properties stay theirs; the
            // undeclared entry is 0 with no property.
            let ipma = [
                &full(b"ipma", wide)[..],
                &3u32.to_be_bytes(),
                &ids(&[1]),
                &[1, 0x81],
                &ids(&[2]),
                &[1, 0x82],
                &ids(&[0]),
                &[1, 0],
            ]
            .concat();
            assert!(contains(&stored, &ipma), "{size}");
            for n in 1..=3 {
                let infe = [&full(b"infe", 2 + wide)[..], &ids(&[n])].concat();
                assert!(contains(&stored, &infe), "infe {n}");
            }
            // The items with no data lose their types, and are hidden.
            for n in 4..=5 {
                let infe = [&b"infe"[..], &[2 + wide, 0, 0, 1], &ids(&[n]), &[0; 6]].concat();
                assert!(contains(&stored, &infe), "infe {n}");
            }
            assert!(!contains(&stored, b"zzzz"));
        }
    }

    /// More items than the 16-bit ids of `infe` version 2 can number (all
    /// 65 536 of them) are refused, as the ids could not be renumbered.
    #[test]
    fn more_items_than_16_bit_ids_can_number_are_refused() {
        use super::tests::scrub;
        let entries = (0..=u16::MAX).flat_map(|id| {
            iso_full_box(
                b"infe",
                2,
                &[&id.to_be_bytes()[..], &[0, 0], b"zzzz", &[0]].concat(),
            )
        });
        let iinf = [65_536u32.to_be_bytes().to_vec(), entries.collect()].concat();
        let meta = iso_full_box(
            b"meta",
            0,
            &[
                iso_full_box(b"hdlr", 0, &[&[0; 4][..], b"pict", &[0; 13]].concat()),
                iso_full_box(b"pitm", 0, &[0, 1]),
                iso_full_box(b"iinf", 1, &iinf),
            ]
            .concat(),
        );
        let file = [iso_box(b"ftyp", b"heic\0\0\0\0mif1heic"), meta].concat();
        let error = scrub(&file, 1 << 16).unwrap_err();
        assert!(error.to_string().contains("16-bit ids"), "{error}");
    }

    /// The crafted files of the fuzz corpus (`a7-heif-*`, ids spelling
    /// the text) keep none of it.
    #[test]
    fn the_crafted_corpus_files_lose_their_ids() {
        let files = crafted("a7-heif-");
        assert!(files.len() >= 2);
        for (name, original) in files {
            let stored = scrubbed(&original);
            let size = if name.contains("16") { 2 } else { 4 };
            for piece in MARK[..6 * size].chunks(size) {
                assert!(contains(&original, piece), "{name}");
                assert!(!contains(&stored, piece), "{name}");
            }
        }
    }

    /// A real HEIC encoded by libheif, with a thumbnail, EXIF and an item
    /// of a type no reader knows: the unknown type goes, the image
    /// decodes to the same pixels with its thumbnail.
    #[cfg(feature = "heif")]
    #[test]
    fn a_real_file_renumbered_decodes_the_same() {
        use super::attack6::{decoded, encoded};
        use super::tests::scrub;
        use libheif_rs::HeifContext;
        let (mut context, handle) = encoded(|x, y| [(x * 4) as u8, 90, (y * 5) as u8, 255]);
        let tiff = b"MM\0*\0\0\0\x08\0\0";
        context.add_exif_metadata(&handle, tiff).unwrap();
        context
            .add_generic_metadata(&handle, MARK, b"zzzz", None)
            .unwrap();
        let original = context.write_to_bytes().unwrap();
        assert!(contains(&original, b"zzzz"));
        let (stored, _) = scrub(&original, 7).unwrap();
        assert_eq!(stored.len(), original.len());
        assert!(!contains(&stored, b"zzzz"));
        assert!(!contains(&stored, MARK));
        let alpha = HeifContext::read_from_bytes(&original)
            .unwrap()
            .primary_image_handle()
            .unwrap()
            .has_alpha_channel();
        assert_eq!(decoded(&stored, alpha), decoded(&original, alpha));
    }
}

/// Entity groups keep only their defined version and no flag.
#[cfg(test)]
mod attack8 {
    use super::super::tests::write_to_corpus;
    use super::attack5::{contains, crafted, scrubbed};
    use crate::fixtures::{HeifParts, heif_file, iso_box, phone_heif_items};

    /// A 64x48 HEIF whose `grpl` holds an `altr` group of the primary
    /// image of `version`, its 3 flag bytes spelling text.
    fn group_with_flags(version: u8) -> Vec<u8> {
        let group = [
            &[version][..],
            b"GPS",
            &100u32.to_be_bytes(),
            &1u32.to_be_bytes(),
            &1u32.to_be_bytes(),
        ]
        .concat();
        let parts = HeifParts {
            in_meta: iso_box(b"grpl", &iso_box(b"altr", &group)),
            ..HeifParts::default()
        };
        heif_file(&phone_heif_items(64, 48), &parts)
    }

    #[test]
    fn a_group_loses_its_flags_and_one_of_another_version_goes() {
        let stored = scrubbed(&group_with_flags(0));
        assert!(!contains(&stored, b"GPS"));
        // Kept, its id numbered after the items, the primary image in it.
        assert!(contains(
            &stored,
            &[&b"altr\0\0\0\0"[..], &[0, 0, 0]].concat()
        ));
        assert!(contains(
            &stored,
            &[&1u32.to_be_bytes()[..], &1u32.to_be_bytes()].concat()
        ));
        let stored = scrubbed(&group_with_flags(1));
        assert!(!contains(&stored, b"GPS"));
        assert!(!contains(&stored, b"altr"), "version 1 is not defined");
    }

    /// The crafted file of the fuzz corpus (`a8-heif-*`) keeps no text.
    #[test]
    fn the_crafted_corpus_files_lose_their_flags() {
        let files = crafted("a8-heif-");
        assert!(!files.is_empty());
        for (name, original) in files {
            assert!(contains(&original, b"GPS"), "{name}");
            assert!(!contains(&scrubbed(&original), b"GPS"), "{name}");
        }
    }

    /// Writes the crafted files to the scrub corpus, which tests/parsers
    /// replays.
    #[test]
    #[ignore = "writes fuzz/corpus/scrub/: run by hand when the cases change"]
    fn write_corpus() {
        write_to_corpus(
            "a8-heif-grpl-flags-v",
            [0, 1].map(|v| (v, group_with_flags(v))),
        );
    }
}
