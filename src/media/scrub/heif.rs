//! HEIF, HEIC and AVIF: metadata items blanked in place.
//!
//! A HEIF file is a sequence of ISO-BMFF boxes; its `meta` box lists the
//! items (`iinf`) and where their bytes lie (`iloc`), usually in the `mdat`
//! box that follows. The `Exif` item (GPS, serial numbers, owner) and XMP
//! items (`mime` of `application/rdf+xml`) are overwritten with the same
//! number of bytes: an empty TIFF structure, an empty XMP packet padded
//! with spaces. Nothing moves, so every `iloc` offset stays valid and the
//! bytes still stream: only the `meta` box is held (at most
//! [`MAX_HEIF_META`]). Orientation lives in the `irot` and `imir`
//! properties, which are kept, not in EXIF.
//!
//! A file whose metadata items lie before its `meta` box (a `meta` after
//! `mdat`) cannot be blanked once those bytes have gone by: it is refused
//! rather than stored with its metadata.
use bytes::{Bytes, BytesMut};

use super::*;

/// Largest `meta` box held to find the metadata items (an iPhone photo's is
/// a few KiB; grids of tiles and ICC profiles make it larger).
pub const MAX_HEIF_META: u64 = 4 * 1024 * 1024;

/// Major brands of HEIF-family images (HEIC, HEIF, AVIF, and their
/// sequences).
const HEIF_BRANDS: [&[u8; 4]; 10] = [
    b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis",
];

/// Whether a file's first 12 bytes are a HEIF `ftyp` box.
pub(super) fn is_heif(head: &[u8]) -> bool {
    head.len() >= 12
        && &head[4..8] == b"ftyp"
        && HEIF_BRANDS.iter().any(|brand| &head[8..12] == *brand)
}

/// What the HEIF scrubber is reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// A box header: size and type (and a 64-bit size when the size is 1).
    Header,
    /// Holding a whole `meta` box of `len` bytes.
    Meta { len: usize },
    /// Passing `remaining` bytes of a box (`None`: up to the end of file).
    Body { remaining: Option<u64> },
}

/// The HEIF scrubber's state.
#[derive(Debug)]
pub(super) struct Heif {
    step: Step,
    /// Offset in the file of the next byte taken from the input.
    position: u64,
    /// Byte ranges of metadata items still ahead, sorted.
    blanks: Vec<Blank>,
    /// A `meta` box was read.
    meta_seen: bool,
    /// The `mdat` box came before any `meta` box.
    mdat_first: bool,
}

/// Part of a metadata item, to overwrite as it streams by.
#[derive(Clone, Copy, Debug)]
struct Blank {
    /// File offsets: `start..end`.
    start: u64,
    end: u64,
    /// Offset of `start` within the item's bytes (items may have several
    /// extents), and the item's whole length.
    item_offset: u64,
    item_len: u64,
    kind: Item,
}

/// The kinds of items that are blanked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    Exif,
    Xmp,
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

impl Blank {
    /// The replacement for the file's byte at `at`.
    fn byte(&self, at: u64) -> u8 {
        self.kind
            .byte(self.item_offset + (at - self.start), self.item_len)
    }
}

impl Heif {
    pub(super) fn new() -> Self {
        Self {
            step: Step::Header,
            position: 0,
            blanks: Vec::new(),
            meta_seen: false,
            mdat_first: false,
        }
    }

    /// Whether the file may end here: between boxes, or in a box that runs
    /// to the end of the file, with no metadata item still ahead (which
    /// means the file was cut short).
    pub(super) fn complete(&self, pending: usize) -> bool {
        self.blanks.is_empty()
            && match self.step {
                Step::Header => pending == 0,
                Step::Body { remaining } => remaining.is_none_or(|r| r == 0),
                Step::Meta { .. } => false,
            }
    }

    /// `bytes`, the file's bytes at `self.position`, with the parts of
    /// metadata items among them overwritten.
    fn blanked(&mut self, bytes: Bytes, changed: &mut bool) -> Bytes {
        let (start, end) = (self.position, self.position + bytes.len() as u64);
        self.position = end;
        let hits: Vec<Blank> = self
            .blanks
            .iter()
            .filter(|b| b.start < end && b.end > start)
            .copied()
            .collect();
        self.blanks.retain(|b| b.end > end);
        if hits.is_empty() {
            return bytes;
        }
        *changed = true;
        let mut copy = BytesMut::from(&bytes[..]);
        for blank in hits {
            for at in blank.start.max(start)..blank.end.min(end) {
                copy[(at - start) as usize] = blank.byte(at);
            }
        }
        copy.freeze()
    }
}

impl Scrubber {
    /// Takes HEIF bytes: box headers, a `meta` box held whole and parsed,
    /// other boxes passed with their metadata items overwritten.
    pub(super) fn heif(
        &mut self,
        chunk: &mut Bytes,
        out: &mut Vec<Bytes>,
    ) -> Result<(), MediaError> {
        let corrupt = || MediaError::invalid("the HEIF's box structure is corrupt");
        let Some(mut heif) = self.heif.take() else {
            return Err(corrupt());
        };
        let result = self.heif_step(&mut heif, chunk, out);
        self.heif = Some(heif);
        result
    }

    fn heif_step(
        &mut self,
        heif: &mut Heif,
        chunk: &mut Bytes,
        out: &mut Vec<Bytes>,
    ) -> Result<(), MediaError> {
        let corrupt = || MediaError::invalid("the HEIF's box structure is corrupt");
        match heif.step {
            Step::Header => {
                if !self.fill(chunk, 8) {
                    return Ok(());
                }
                let (size, kind) = self.length_and_kind();
                let size = u64::from(size);
                let (size, header) = match size {
                    1 => {
                        if !self.fill(chunk, 16) {
                            return Ok(());
                        }
                        let mut large = [0u8; 8];
                        large.copy_from_slice(&self.pending[8..16]);
                        (Some(u64::from_be_bytes(large)), 16)
                    }
                    0 => (None, 8),
                    size => (Some(size), 8),
                };
                if size.is_some_and(|size| size < header) {
                    return Err(corrupt());
                }
                if &kind == b"mdat" && !heif.meta_seen {
                    heif.mdat_first = true;
                }
                if &kind == b"meta" && !self.keep_metadata {
                    let Some(size) = size else {
                        return Err(corrupt());
                    };
                    if size > MAX_HEIF_META {
                        return Err(MediaError::invalid(format!(
                            "the HEIF's meta box is larger than {} MiB",
                            MAX_HEIF_META >> 20
                        )));
                    }
                    heif.step = Step::Meta { len: size as usize };
                } else {
                    let head = self.pending.split().freeze();
                    out.push(heif.blanked(head, &mut self.changed));
                    heif.step = Step::Body {
                        remaining: size.map(|size| size - header),
                    };
                }
            }
            Step::Meta { len } => {
                if !self.fill(chunk, len) {
                    return Ok(());
                }
                let mut meta = self.pending.split();
                let meta_start = heif.position;
                let meta_end = meta_start + meta.len() as u64;
                let (ahead, in_meta) = metadata_items(&meta)?;
                if ahead.iter().any(|blank| blank.start < meta_end) {
                    return Err(MediaError::invalid(if heif.mdat_first {
                        "the HEIF's metadata comes before its meta box (meta after mdat), so it \
                         cannot be removed while streaming; save the file with its meta box first"
                    } else {
                        "the HEIF's item locations point into its own boxes"
                    }));
                }
                for blank in in_meta {
                    for at in blank.start..blank.end {
                        meta[at as usize] = blank.byte(at);
                    }
                    self.changed = true;
                }
                heif.position = meta_end;
                // A second `meta` box (rare) adds to what the first found.
                heif.blanks.extend(ahead);
                if heif.blanks.len() > MAX_METADATA_EXTENTS {
                    return Err(too_many_pieces());
                }
                heif.blanks.sort_by_key(|blank| blank.start);
                heif.meta_seen = true;
                out.push(meta.freeze());
                heif.step = Step::Header;
            }
            Step::Body { remaining } => {
                let n = remaining.map_or(chunk.len(), |r| {
                    usize::try_from(r).unwrap_or(usize::MAX).min(chunk.len())
                });
                let part = chunk.split_to(n);
                out.push(heif.blanked(part, &mut self.changed));
                heif.step = match remaining.map(|r| r - n as u64) {
                    Some(0) => Step::Header,
                    remaining => Step::Body { remaining },
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

    /// An unsigned big-endian number of `n` bytes (0, 1, 2, 4 or 8).
    fn uint(&mut self, n: usize) -> Result<u64, MediaError> {
        if !matches!(n, 0 | 1 | 2 | 4 | 8) {
            return Err(MediaError::invalid(
                "the HEIF's iloc box uses an invalid field size",
            ));
        }
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |value, &b| (value << 8) | u64::from(b)))
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

    /// A NUL-terminated string (the rest, when unterminated).
    fn string(&mut self) -> &'a [u8] {
        let rest = &self.bytes[self.at..];
        let len = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        self.at += (len + 1).min(rest.len());
        &rest[..len]
    }

    fn rest(&self) -> &'a [u8] {
        &self.bytes[self.at..]
    }
}

/// A box inside another: its type, the offset of its payload in the
/// parent's bytes, and the payload.
type Child<'a> = ([u8; 4], usize, &'a [u8]);

/// The child boxes of `bytes`.
fn boxes(bytes: &[u8]) -> Result<Vec<Child<'_>>, MediaError> {
    let corrupt = || MediaError::invalid("the HEIF's meta box is corrupt");
    let mut found = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let mut reader = Reader::new(&bytes[at..]);
        let size = reader.u32()?;
        let kind: [u8; 4] = reader.take(4)?.try_into().map_err(|_| corrupt())?;
        let (size, header) = match size {
            1 => (reader.uint(8)?, 16),
            0 => ((bytes.len() - at) as u64, 8),
            size => (size, 8),
        };
        let size = usize::try_from(size).map_err(|_| corrupt())?;
        if size < header || size > bytes.len() - at {
            return Err(corrupt());
        }
        found.push((kind, at + header, &bytes[at + header..at + size]));
        at += size;
    }
    Ok(found)
}

/// The parts of the `Exif` and XMP items that `meta` (a whole `meta` box)
/// locates: those in the file (file offsets) and those in its own `idat`
/// (offsets in `meta`).
fn metadata_items(meta: &[u8]) -> Result<(Vec<Blank>, Vec<Blank>), MediaError> {
    let corrupt = || MediaError::invalid("the HEIF's meta box is corrupt");
    let (_, payload_at, payload) = *boxes(meta)?.first().ok_or_else(corrupt)?;
    // `meta` is a full box: version and flags, then its children.
    let children_at = payload_at + 4;
    let children = boxes(payload.get(4..).ok_or_else(corrupt)?)?;
    let mut kinds: Vec<(u64, Item)> = Vec::new();
    let mut locations = None;
    let mut idat_at = None;
    for (kind, at, body) in children {
        match &kind {
            b"iinf" => kinds = metadata_kinds(body)?,
            b"iloc" => locations = Some(body),
            b"idat" => idat_at = Some((children_at + at) as u64),
            _ => {}
        }
    }
    let (mut ahead, mut in_meta) = (Vec::new(), Vec::new());
    let Some(locations) = locations else {
        return Ok((ahead, in_meta));
    };
    for (id, method, extents) in item_locations(locations)? {
        let Some(&(_, kind)) = kinds.iter().find(|(item, _)| *item == id) else {
            continue;
        };
        let item_len = extents
            .iter()
            .fold(0u64, |sum, (_, length)| sum.saturating_add(*length));
        let mut item_offset = 0u64;
        for (offset, length) in extents {
            if length == 0 {
                return Err(MediaError::invalid(
                    "the HEIF's metadata item has an extent without a length",
                ));
            }
            let (base, into) = match method {
                0 => (0, &mut ahead),
                1 => (idat_at.ok_or_else(corrupt)?, &mut in_meta),
                // Items built from other items hold no bytes of their own.
                _ => continue,
            };
            let start = base.checked_add(offset).ok_or_else(corrupt)?;
            let end = start.checked_add(length).ok_or_else(corrupt)?;
            if method == 1 && end > meta.len() as u64 {
                return Err(corrupt());
            }
            into.push(Blank {
                start,
                end,
                item_offset,
                item_len,
                kind,
            });
            item_offset += length;
        }
    }
    if ahead.len() + in_meta.len() > MAX_METADATA_EXTENTS {
        return Err(too_many_pieces());
    }
    Ok((ahead, in_meta))
}

/// Most pieces (`iloc` extents) the metadata items may be cut into; a
/// camera writes one each.
const MAX_METADATA_EXTENTS: usize = 1024;

fn too_many_pieces() -> MediaError {
    MediaError::invalid("the HEIF's metadata items are cut into too many pieces")
}

/// Items whose bytes are metadata, by id, from an `iinf` box's payload.
fn metadata_kinds(iinf: &[u8]) -> Result<Vec<(u64, Item)>, MediaError> {
    let mut reader = Reader::new(iinf);
    let version = reader.u8()?;
    reader.take(3)?;
    if version == 0 {
        reader.u16()?;
    } else {
        reader.u32()?;
    }
    let mut kinds = Vec::new();
    for (kind, _, body) in boxes(reader.rest())? {
        if &kind != b"infe" {
            continue;
        }
        let mut entry = Reader::new(body);
        let version = entry.u8()?;
        entry.take(3)?;
        let (id, item_type, content_type) = if version >= 2 {
            let id = if version == 2 {
                entry.u16()?
            } else {
                entry.u32()?
            };
            entry.u16()?; // protection index
            let item_type: [u8; 4] = entry.take(4)?.try_into().unwrap_or_default();
            entry.string(); // name
            let content_type = if &item_type == b"mime" {
                entry.string()
            } else {
                &[][..]
            };
            (id, item_type, content_type)
        } else {
            let id = entry.u16()?;
            entry.u16()?;
            entry.string();
            (id, *b"mime", entry.string())
        };
        if &item_type == b"Exif" {
            kinds.push((id, Item::Exif));
        } else if &item_type == b"mime" && content_type.eq_ignore_ascii_case(b"application/rdf+xml")
        {
            kinds.push((id, Item::Xmp));
        }
    }
    Ok(kinds)
}

/// An item's location: its id, construction method, and extents (offset,
/// length) with the base offset added.
type Location = (u64, u8, Vec<(u64, u64)>);

/// Every item's location, from an `iloc` box's payload.
fn item_locations(iloc: &[u8]) -> Result<Vec<Location>, MediaError> {
    let mut reader = Reader::new(iloc);
    let version = reader.u8()?;
    reader.take(3)?;
    if version > 2 {
        return Err(MediaError::invalid(
            "the HEIF's iloc box has an unknown version",
        ));
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
    let count = if version < 2 {
        reader.u16()?
    } else {
        reader.u32()?
    };
    let mut items = Vec::new();
    for _ in 0..count {
        let id = if version < 2 {
            reader.u16()?
        } else {
            reader.u32()?
        };
        let method = if version >= 1 {
            (reader.u16()? & 15) as u8
        } else {
            0
        };
        let data_reference = reader.u16()?;
        let base = reader.uint(base_size)?;
        let extent_count = reader.u16()?;
        let mut extents = Vec::new();
        for _ in 0..extent_count {
            reader.uint(index_size)?;
            let offset = reader.uint(offset_size)?;
            let length = reader.uint(length_size)?;
            let offset = base
                .checked_add(offset)
                .ok_or_else(|| MediaError::invalid("the HEIF's iloc box is corrupt"))?;
            extents.push((offset, length));
        }
        // Data in another file is not in this upload.
        if data_reference == 0 {
            items.push((id, method, extents));
        }
    }
    Ok(items)
}
