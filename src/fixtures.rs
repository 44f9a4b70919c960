//! Image files made for the tests, the benchmark and the soak tool: valid
//! containers with real headers, built here once so that every caller
//! tests the same bytes; and the limits of tests that build the domain
//! directly. Not used by the service itself.

mod phone;
mod progressive;
mod scene;

pub use phone::PHONE_SECRETS;
use phone::{jpeg_segment, phone_exif, with_phone_metadata};
pub use progressive::{
    FloodScan, narrow_scans_jpeg, progressive_jpeg, repeated_scans_jpeg, wide_scans_jpeg,
};
pub use scene::{PHONE_SHOTS, PhoneShot, phone_shot, scene};

/// A valid, uncompressed (stored-deflate) RGB PNG whose pixels depend on
/// `seed`, so different seeds give different bytes. Its size is about
/// `width * height * 3` bytes.
pub fn png(width: u32, height: u32, seed: u32) -> Vec<u8> {
    let mut raw = Vec::with_capacity(((width * 3 + 1) * height) as usize);
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    for _ in 0..height {
        raw.extend([0u8]); // filter byte: none
        for _ in 0..width * 3 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            raw.push(state as u8);
        }
    }
    let ihdr = rgb_ihdr(width, height);
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &zlib_stored(&raw));
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// An 8-bit RGB PNG of `width` × `height` blank pixels, deflated: a render
/// of 3 bytes a pixel from a file of a few KiB.
pub fn blank_png(width: u32, height: u32) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::new(width, height)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("a blank PNG encodes");
    out.into_inner()
}

/// An 8-bit RGB PNG of `width` × `height` vertical stripes of colours
/// drawn from `seed`, deflated: every row repeats the first, so the file
/// is a few KiB, while a JPEG of it (all edges) is many times that.
pub fn striped_png(width: u32, height: u32, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    let row: Vec<[u8; 3]> = (0..width)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let [r, g, b, _] = state.to_le_bytes();
            [r, g, b]
        })
        .collect();
    let pixels = image::RgbImage::from_fn(width, height, |x, _| image::Rgb(row[x as usize]));
    let mut out = std::io::Cursor::new(Vec::new());
    pixels
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("a striped PNG encodes");
    out.into_inner()
}

/// A PNG of at least `bytes` bytes.
pub fn png_of_size(bytes: usize, seed: u32) -> Vec<u8> {
    let width = 512;
    let height = (bytes / (width as usize * 3) + 1) as u32;
    png(width, height, seed)
}

/// A PNG whose chunks and checksums are all valid but whose compressed
/// pixel data is noise: only a decoder finds out.
pub fn png_with_corrupt_pixels(width: u32, height: u32) -> Vec<u8> {
    let ihdr = rgb_ihdr(width, height);
    let mut noise = vec![0x78, 0x9C];
    let mut state = 0x1234_5678u32;
    noise.extend((0..400).map(|_| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state as u8
    }));
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &noise);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A PNG `tEXt` chunk, as editors write an author's name.
pub fn png_text_chunk(keyword: &str, text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    png_chunk(
        &mut out,
        b"tEXt",
        &[keyword.as_bytes(), &[0], text.as_bytes()].concat(),
    );
    out
}

/// Only the header of a PNG claiming `width` x `height`: enough for the
/// service to read the dimensions (a decompression bomb looks like this).
pub fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let ihdr = rgb_ihdr(width, height);
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &zlib_stored(&[0; 64]));
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// The data of an IHDR chunk: 8-bit RGB, not interlaced.
fn rgb_ihdr(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    ihdr
}

/// A RIFF chunk (as in WebP): FourCC, little-endian size, data, padding.
pub fn riff_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = kind.to_vec();
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
    out
}

/// One PNG chunk (length, type, data, CRC).
pub fn png_chunk_bytes(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + data.len());
    png_chunk(&mut out, kind, data);
    out
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

/// `data` as a zlib stream of stored (uncompressed) deflate blocks.
pub fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = data.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    if blocks.is_empty() {
        out.extend_from_slice(&[1, 0, 0, 0xFF, 0xFF]);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for byte in data {
        a = (a + u32::from(*byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

/// A real baseline JPEG of `width` x `height`: a colour gradient, so
/// resized renditions have something to show.
pub fn jpeg(width: u16, height: u16) -> Vec<u8> {
    encode_jpeg(&gradient(u32::from(width), u32::from(height)))
}

fn gradient(width: u32, height: u32) -> image::RgbImage {
    image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x * 255 / width.max(1)) as u8,
            (y * 255 / height.max(1)) as u8,
            128,
        ])
    })
}

fn encode_jpeg(pixels: &image::RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(
            pixels.as_raw(),
            pixels.width() as u16,
            pixels.height() as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .unwrap();
    out
}

/// A phone photo taken sideways: the sensor's `width` x `height` pixels
/// (left half red, right half blue) with EXIF orientation 6 (turn 90°
/// clockwise to view), GPS coordinates, a camera serial number and the
/// owner's name, plus XMP with the location.
pub fn phone_photo(width: u32, height: u32) -> Vec<u8> {
    let pixels = image::RgbImage::from_fn(width, height, |x, _| {
        if x < width / 2 {
            image::Rgb([220, 20, 20])
        } else {
            image::Rgb([20, 20, 220])
        }
    });
    with_phone_metadata(&encode_jpeg(&pixels), 6)
}

/// A photo as a phone camera writes it: photo-like pixels, EXIF with GPS
/// coordinates, the maker, a serial number and the owner's name, XMP with
/// the location, and bytes after the image's end (where phones append a
/// motion clip).
pub fn camera_photo(width: u32, height: u32) -> Vec<u8> {
    let mut out = with_phone_metadata(&photo_jpeg(width, height), 1);
    out.extend_from_slice(b"MotionPhoto_Data\0");
    out.extend_from_slice(PHONE_SECRETS[2].as_bytes());
    out
}

/// A phone photo ([`phone_photo`], EXIF with GPS, maker, serial number and
/// owner, and XMP) with more that identifies its owner: an IPTC APP13
/// segment, a vendor APP7 segment and a comment; and an ICC profile
/// (APP2), which is kept.
pub fn phone_photo_with_extras(width: u32, height: u32) -> Vec<u8> {
    let photo = phone_photo(width, height);
    let mut out = photo[..2].to_vec();
    out.extend(jpeg_segment(
        0xE2,
        b"ICC_PROFILE\0\x01\x01colour-profile-bytes",
    ));
    let owner = PHONE_SECRETS[2].as_bytes();
    out.extend(jpeg_segment(
        0xED,
        &[b"Photoshop 3.0\0".as_slice(), owner].concat(),
    ));
    out.extend(jpeg_segment(0xE7, PHONE_SECRETS[1].as_bytes()));
    out.extend(jpeg_segment(0xFE, PHONE_SECRETS[0].as_bytes()));
    out.extend_from_slice(&photo[2..]);
    out
}

/// A HEIF whose primary item is `jpeg`-coded (ISO/IEC 23008-12 allows
/// JPEG image items): `jpeg` as its bytes, `width` x `height` (`ispe`),
/// with its `meta` box first or, when `meta_last`, after `mdat`.
pub fn heif_with_jpeg_item(jpeg: &[u8], width: u32, height: u32, meta_last: bool) -> Vec<u8> {
    let parts = HeifParts {
        ftyp: b"mif1\0\0\0\0mif1".to_vec(),
        meta_last,
        ..HeifParts::default()
    };
    heif_file(&[HeifItem::new(b"jpeg", jpeg).sized(width, height)], &parts)
}

/// Where [`heic_photo`] puts its boxes and items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeifLayout {
    /// `ftyp`, `meta`, `mdat` (holding the coded image, EXIF and XMP), as
    /// cameras write it.
    MetaFirst,
    /// The same with the EXIF item in the `meta` box's `idat`.
    ExifInIdat,
    /// `ftyp`, `mdat`, `meta`: the items come before their locations.
    MetaLast,
}

/// A phone's HEIF `Exif` item (GPS, maker, serial number, owner; its TIFF
/// header after a non-zero offset, `Exif\0\0` first, as some devices write
/// it) and XMP packet (location, owner).
fn phone_heif_metadata() -> (Vec<u8>, String) {
    let mut exif = 6u32.to_be_bytes().to_vec();
    exif.extend_from_slice(b"Exif\0\0");
    exif.extend_from_slice(&phone_exif(1));
    let xmp = format!(
        "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF><rdf:Description \
         exif:GPSLatitude=\"{}\" tiff:Artist=\"{}\"/></rdf:RDF></x:xmpmeta>",
        PHONE_SECRETS[3], PHONE_SECRETS[2]
    );
    (exif, xmp)
}

/// A HEIC as a phone writes it, box by box: a primary `hvc1` item of
/// `width` x `height` (`ispe`) rotated a quarter turn (`irot`), an `Exif`
/// item with GPS, maker, serial number and owner whose TIFF header sits
/// after a non-zero offset (`Exif\0\0` first, as some devices write it),
/// and an XMP item with the location. The coded image is not real HEVC:
/// only the container is (see the tests for real encoded files).
pub fn heic_photo(width: u32, height: u32, layout: HeifLayout) -> Vec<u8> {
    heic_photo_with(width, height, layout, b"hvc1-coded-image-data-".repeat(40))
}

/// [`heic_photo`] of about `size` bytes (a phone photo's 3-12 MB), its
/// coded image made of varied bytes so that nothing compresses it.
pub fn heic_photo_sized(width: u32, height: u32, layout: HeifLayout, size: usize) -> Vec<u8> {
    let mut state = 0x2545_F491_u32;
    let coded = (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect();
    heic_photo_with(width, height, layout, coded)
}

fn heic_photo_with(width: u32, height: u32, layout: HeifLayout, coded: Vec<u8>) -> Vec<u8> {
    let (boxed, full) = (iso_box, iso_full_box);
    let (exif, xmp) = phone_heif_metadata();
    let xmp = format!("{xmp}{}", " ".repeat(100)).into_bytes();
    let ftyp = boxed(b"ftyp", b"heic\0\0\0\0mif1heic");
    let meta = |offsets: [u32; 3]| {
        let mut iinf = 3u16.to_be_bytes().to_vec();
        for (id, kind, extra) in [
            (1u16, b"hvc1", &b""[..]),
            (2, b"Exif", b""),
            (3, b"mime", b"application/rdf+xml\0"),
        ] {
            let mut entry = id.to_be_bytes().to_vec();
            entry.extend_from_slice(&0u16.to_be_bytes());
            entry.extend_from_slice(kind);
            entry.push(0);
            entry.extend_from_slice(extra);
            iinf.extend(full(b"infe", 2, &entry));
        }
        let mut ispe = width.to_be_bytes().to_vec();
        ispe.extend_from_slice(&height.to_be_bytes());
        let mut ipco = full(b"ispe", 0, &ispe);
        ipco.extend(boxed(b"irot", &[1]));
        let mut ipma = 1u32.to_be_bytes().to_vec();
        ipma.extend_from_slice(&1u16.to_be_bytes());
        ipma.extend_from_slice(&[2, 0x01, 0x82]);
        let mut iprp = boxed(b"ipco", &ipco);
        iprp.extend(full(b"ipma", 0, &ipma));
        let in_idat = layout == HeifLayout::ExifInIdat;
        let mut iloc = vec![0x44, 0x00];
        iloc.extend_from_slice(&3u16.to_be_bytes());
        for (id, length) in [(1u16, coded.len()), (2, exif.len()), (3, xmp.len())] {
            let method = u16::from(id == 2 && in_idat);
            iloc.extend_from_slice(&id.to_be_bytes());
            iloc.extend_from_slice(&method.to_be_bytes());
            iloc.extend_from_slice(&0u16.to_be_bytes());
            iloc.extend_from_slice(&1u16.to_be_bytes());
            iloc.extend_from_slice(&offsets[usize::from(id - 1)].to_be_bytes());
            iloc.extend_from_slice(&(length as u32).to_be_bytes());
        }
        let mut hdlr = 0u32.to_be_bytes().to_vec();
        hdlr.extend_from_slice(b"pict");
        hdlr.extend_from_slice(&[0; 13]);
        let mut children = full(b"hdlr", 0, &hdlr);
        children.extend(full(b"pitm", 0, &1u16.to_be_bytes()));
        children.extend(full(b"iinf", 0, &iinf));
        children.extend(boxed(b"iprp", &iprp));
        children.extend(full(b"iloc", 1, &iloc));
        if in_idat {
            children.extend(boxed(b"idat", &exif));
        }
        full(b"meta", 0, &children)
    };
    let mut data = coded.clone();
    if layout != HeifLayout::ExifInIdat {
        data.extend_from_slice(&exif);
    }
    data.extend_from_slice(&xmp);
    let meta_len = meta([0; 3]).len();
    let data_at = (ftyp.len()
        + 8
        + if layout == HeifLayout::MetaLast {
            0
        } else {
            meta_len
        }) as u32;
    let exif_at = if layout == HeifLayout::ExifInIdat {
        0
    } else {
        data_at + coded.len() as u32
    };
    let xmp_at = data_at + (data.len() - xmp.len()) as u32;
    let meta = meta([data_at, exif_at, xmp_at]);
    let mdat = boxed(b"mdat", &data);
    let mut out = ftyp;
    if layout == HeifLayout::MetaLast {
        out.extend(mdat);
        out.extend(meta);
    } else {
        out.extend(meta);
        out.extend(mdat);
    }
    out
}

/// An ISO-BMFF box of `kind` around `payload`.
pub fn iso_box(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(payload);
    out
}

/// An ISO-BMFF full box (version, zero flags) of `kind` around `payload`.
pub fn iso_full_box(kind: &[u8; 4], version: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![version, 0, 0, 0];
    body.extend_from_slice(payload);
    iso_box(kind, &body)
}

/// One item of a [`heif_file`].
#[derive(Clone, Debug)]
pub struct HeifItem {
    pub kind: [u8; 4],
    /// The `mime` item's content type (empty for other items).
    pub content_type: &'static str,
    /// Its name in `infe` (free text; empty as cameras leave it).
    pub name: &'static str,
    /// Its bytes, stored in `mdat`.
    pub data: Vec<u8>,
    /// Property boxes associated with it (added to `ipco`).
    pub properties: Vec<Vec<u8>>,
}

impl HeifItem {
    pub fn new(kind: &[u8; 4], data: &[u8]) -> Self {
        Self {
            kind: *kind,
            content_type: "",
            name: "",
            data: data.to_vec(),
            properties: Vec::new(),
        }
    }

    /// An image item's `ispe` property of `width` x `height`.
    pub fn sized(mut self, width: u32, height: u32) -> Self {
        let mut ispe = width.to_be_bytes().to_vec();
        ispe.extend_from_slice(&height.to_be_bytes());
        self.properties.push(iso_full_box(b"ispe", 0, &ispe));
        self
    }
}

/// The parts of a [`heif_file`] around its items.
#[derive(Clone, Debug)]
pub struct HeifParts {
    /// The `ftyp` payload: major brand, minor version, compatible brands.
    pub ftyp: Vec<u8>,
    /// Boxes between `ftyp` and `meta`.
    pub before_meta: Vec<u8>,
    /// Boxes added to the `meta` box's children.
    pub in_meta: Vec<u8>,
    /// Boxes after `mdat`.
    pub after: Vec<u8>,
    /// The primary item's id (`pitm`): items are numbered from 1.
    pub primary: u16,
    /// `mdat` before `meta` (as Samsung phones write it), `parts.after`
    /// last.
    pub meta_last: bool,
}

impl Default for HeifParts {
    fn default() -> Self {
        Self {
            ftyp: b"heic\0\0\0\0mif1heic".to_vec(),
            before_meta: Vec::new(),
            in_meta: Vec::new(),
            after: Vec::new(),
            primary: 1,
            meta_last: false,
        }
    }
}

/// A HEIF file box by box: `ftyp`, `parts.before_meta`, a `meta` box with
/// `items`, numbered from 1 (`pitm`, `iinf`, `iloc`, and
/// `iprp` with each item's properties), `mdat` holding the items' bytes,
/// `parts.after`. The coded images are not real: only the container is.
pub fn heif_file(items: &[HeifItem], parts: &HeifParts) -> Vec<u8> {
    let meta = |offsets: &[u32]| {
        let mut iinf = (items.len() as u16).to_be_bytes().to_vec();
        let (mut ipco, mut ipma) = (Vec::new(), (items.len() as u32).to_be_bytes().to_vec());
        let mut iloc = vec![0x44, 0x00];
        iloc.extend_from_slice(&(items.len() as u16).to_be_bytes());
        let mut property = 0u8;
        for (n, item) in items.iter().enumerate() {
            let id = n as u16 + 1;
            let mut entry = id.to_be_bytes().to_vec();
            entry.extend_from_slice(&0u16.to_be_bytes());
            entry.extend_from_slice(&item.kind);
            entry.extend_from_slice(item.name.as_bytes());
            entry.push(0);
            if &item.kind == b"mime" {
                entry.extend_from_slice(item.content_type.as_bytes());
                entry.push(0);
            }
            iinf.extend(iso_full_box(b"infe", 2, &entry));
            ipma.extend_from_slice(&id.to_be_bytes());
            ipma.push(item.properties.len() as u8);
            for boxed in &item.properties {
                ipco.extend_from_slice(boxed);
                property += 1;
                ipma.push(property);
            }
            iloc.extend_from_slice(&id.to_be_bytes());
            iloc.extend_from_slice(&[0, 0, 0, 0, 0, 1]);
            iloc.extend_from_slice(&offsets[n].to_be_bytes());
            iloc.extend_from_slice(&(item.data.len() as u32).to_be_bytes());
        }
        let mut hdlr = 0u32.to_be_bytes().to_vec();
        hdlr.extend_from_slice(b"pict");
        hdlr.extend_from_slice(&[0; 13]);
        let mut iprp = iso_box(b"ipco", &ipco);
        iprp.extend(iso_full_box(b"ipma", 0, &ipma));
        let mut children = iso_full_box(b"hdlr", 0, &hdlr);
        children.extend(iso_full_box(b"pitm", 0, &parts.primary.to_be_bytes()));
        children.extend(iso_full_box(b"iinf", 0, &iinf));
        children.extend(iso_box(b"iprp", &iprp));
        children.extend(iso_full_box(b"iloc", 1, &iloc));
        children.extend_from_slice(&parts.in_meta);
        iso_full_box(b"meta", 0, &children)
    };
    let mut out = iso_box(b"ftyp", &parts.ftyp);
    out.extend_from_slice(&parts.before_meta);
    let meta_len = if parts.meta_last {
        0
    } else {
        meta(&vec![0; items.len()]).len()
    };
    let mut at = (out.len() + meta_len + 8) as u32;
    let mut offsets = Vec::new();
    for item in items {
        offsets.push(at);
        at += item.data.len() as u32;
    }
    let data: Vec<u8> = items.iter().flat_map(|item| item.data.clone()).collect();
    if parts.meta_last {
        out.extend(iso_box(b"mdat", &data));
        out.extend(meta(&offsets));
    } else {
        out.extend(meta(&offsets));
        out.extend(iso_box(b"mdat", &data));
    }
    out.extend_from_slice(&parts.after);
    out
}

/// An ICC profile as a phone writes one (Display P3 style): a `desc`, a
/// `cprt` in `mluc`, a `dmdd` in `text`, a private tag of an unknown
/// type, white point and curves; `secret` in every text, and after
/// the last tag.
pub fn icc_profile_with_text(secret: &str) -> Vec<u8> {
    let mut desc = b"desc\0\0\0\0".to_vec();
    desc.extend_from_slice(&(secret.len() as u32 + 1).to_be_bytes());
    desc.extend_from_slice(secret.as_bytes());
    desc.push(0);
    desc.extend_from_slice(&[0; 4 + 4 + 2 + 1 + 67]);
    let utf16: Vec<u8> = secret.encode_utf16().flat_map(u16::to_be_bytes).collect();
    let mut mluc = b"mluc\0\0\0\0".to_vec();
    for value in [1u32, 12] {
        mluc.extend_from_slice(&value.to_be_bytes());
    }
    mluc.extend_from_slice(b"enUS");
    mluc.extend_from_slice(&(utf16.len() as u32).to_be_bytes());
    mluc.extend_from_slice(&28u32.to_be_bytes());
    mluc.extend_from_slice(&utf16);
    let text = [&b"text\0\0\0\0"[..], secret.as_bytes(), b"\0"].concat();
    let private = [&b"priv\0\0\0\0"[..], secret.as_bytes()].concat();
    let wtpt = [
        &b"XYZ \0\0\0\0"[..],
        &[0, 0, 0xF6, 0xD6, 0, 1, 0, 0, 0, 0, 0xD3, 0x2D],
    ]
    .concat();
    let curv = [&b"curv\0\0\0\0"[..], &[0, 0, 0, 1, 1, 0xCD]].concat();
    let tags: [(&[u8; 4], &[u8]); 6] = [
        (b"desc", &desc),
        (b"cprt", &mluc),
        (b"dmdd", &text),
        (b"zzzz", &private),
        (b"wtpt", &wtpt),
        (b"rTRC", &curv),
    ];
    let mut data = Vec::new();
    let mut table = (tags.len() as u32).to_be_bytes().to_vec();
    let data_at = 132 + 12 * tags.len();
    for (signature, bytes) in tags {
        table.extend_from_slice(signature);
        table.extend_from_slice(&((data_at + data.len()) as u32).to_be_bytes());
        table.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        data.extend_from_slice(bytes);
        data.resize(data.len().next_multiple_of(4), 0);
    }
    data.extend_from_slice(secret.as_bytes());
    let mut header = vec![0u8; 128];
    header[4..8].copy_from_slice(b"appl");
    header[8..12].copy_from_slice(&[4, 0x40, 0, 0]);
    header[12..24].copy_from_slice(b"mntrRGB XYZ ");
    header[36..40].copy_from_slice(b"acsp");
    header[84..100].copy_from_slice(&[0xAB; 16]);
    let mut profile = [header, table, data].concat();
    let len = profile.len() as u32;
    profile[..4].copy_from_slice(&len.to_be_bytes());
    profile
}

/// `file` (a HEIF) with `text` hidden where no item's bytes lie: at the
/// end of its `mdat` payload (no item offset moves: a `meta` box after it
/// addresses only bytes before it) and in a `free` box appended.
pub fn heif_with_text_outside_its_items(file: &[u8], text: &[u8]) -> Vec<u8> {
    let mut at = 0;
    loop {
        let size = u32::from_be_bytes(file[at..at + 4].try_into().unwrap()) as usize;
        if &file[at + 4..at + 8] == b"mdat" {
            let mut out = file[..at].to_vec();
            out.extend_from_slice(&((size + text.len()) as u32).to_be_bytes());
            out.extend_from_slice(&file[at + 4..at + size]);
            out.extend_from_slice(text);
            out.extend_from_slice(&file[at + size..]);
            out.extend(iso_box(b"free", text));
            return out;
        }
        at += size;
    }
}

/// A phone's HEIC motion photo, as Samsung writes it: a HEIC still with
/// the phone's EXIF and XMP items, then a top-level `mpvd` box holding an
/// MP4 video whose `udta` `©xyz` holds the location, and a top-level
/// `uuid` box of XMP with the location and owner; another `uuid` box sits
/// between `ftyp` and `meta`, before the items it must not move.
pub fn heic_motion_photo(width: u32, height: u32) -> Vec<u8> {
    let secrets = format!("{} {}", PHONE_SECRETS[3], PHONE_SECRETS[2]);
    let mut xyz = (secrets.len() as u16).to_be_bytes().to_vec();
    xyz.extend_from_slice(&[0x15, 0xC7]);
    xyz.extend_from_slice(secrets.as_bytes());
    let udta = iso_box(b"udta", &iso_box(b"\xA9xyz", &xyz));
    let mut video = iso_box(b"ftyp", b"mp42\0\0\0\0isommp42");
    video.extend(iso_box(b"moov", &udta));
    video.extend(iso_box(b"mdat", &b"video-frames-".repeat(64)));
    let mut uuid = [0x42u8; 16].to_vec();
    uuid.extend_from_slice(format!("<x:xmpmeta>{secrets}</x:xmpmeta>").as_bytes());
    let mut after = iso_box(b"mpvd", &video);
    after.extend(iso_box(b"uuid", &uuid));
    let parts = HeifParts {
        before_meta: iso_box(b"uuid", &uuid),
        after,
        ..HeifParts::default()
    };
    heif_file(&phone_heif_items(width, height), &parts)
}

/// A phone's HEIC with a motion track: brands of an image and of a
/// sequence, a `moov` whose every text field holds `marker` (bytes after
/// `mvhd` and `tkhd`, the handler's name, the sample entry's compressor
/// name, `udta`, `meta`), and the track's samples (with `marker`) in an
/// `mdat` before the `meta` box and in one after; the still's items as a
/// phone writes them, `meta` after its `mdat` when `meta_last`.
pub fn heic_with_motion_track(marker: &str, meta_last: bool) -> Vec<u8> {
    let (moov, samples) = motion_track(marker);
    let parts = HeifParts {
        ftyp: b"heic\0\0\0\0mif1msf1heichevc".to_vec(),
        before_meta: samples.clone(),
        after: [moov, samples].concat(),
        meta_last,
        ..HeifParts::default()
    };
    heif_file(&phone_heif_items(640, 480), &parts)
}

/// The boxes of a motion track for [`heic_with_motion_track`]: a `moov`
/// box with `marker` in every text field, and an `mdat` box of samples
/// holding `marker` too.
pub fn motion_track(marker: &str) -> (Vec<u8>, Vec<u8>) {
    let text = marker.as_bytes();
    let mut hdlr = [0u8; 4].to_vec();
    hdlr.extend_from_slice(b"vide");
    hdlr.extend_from_slice(&[0; 12]);
    hdlr.extend_from_slice(text);
    hdlr.push(0);
    let mut entry = [0u8; 6 + 2 + 16 + 4 + 8 + 4 + 2].to_vec();
    entry.push(text.len().min(31) as u8);
    entry.extend_from_slice(&text[..text.len().min(31)]);
    entry.resize(6 + 2 + 16 + 4 + 8 + 4 + 2 + 32 + 4, 0);
    let stsd = iso_full_box(
        b"stsd",
        0,
        &[&1u32.to_be_bytes()[..], &iso_box(b"hvc1", &entry)].concat(),
    );
    let stbl = iso_box(b"stbl", &stsd);
    let minf = iso_box(b"minf", &stbl);
    let mdia = [
        iso_full_box(b"mdhd", 0, &[0; 20]),
        iso_full_box(b"hdlr", 0, &hdlr),
        minf,
    ]
    .concat();
    let trak = [
        iso_full_box(b"tkhd", 0, &[&[0; 80][..], text].concat()),
        iso_box(b"mdia", &mdia),
        iso_box(b"udta", text),
        iso_full_box(b"meta", 0, text),
    ]
    .concat();
    let moov = [
        iso_full_box(b"mvhd", 0, &[&[0; 96][..], text].concat()),
        iso_box(b"trak", &trak),
        iso_box(b"udta", text),
    ]
    .concat();
    let samples = iso_box(
        b"mdat",
        &[b"sample-frame-".repeat(8), text.to_vec()].concat(),
    );
    (iso_box(b"moov", &moov), samples)
}

/// The items of a phone's HEIC: the coded image (`ispe` of `width` x
/// `height`), the `Exif` item with GPS, maker, serial number and owner,
/// and an XMP item with the location and owner.
pub fn phone_heif_items(width: u32, height: u32) -> Vec<HeifItem> {
    let (exif, xmp) = phone_heif_metadata();
    vec![
        HeifItem::new(b"hvc1", &b"hvc1-coded-image-data-".repeat(40)).sized(width, height),
        HeifItem::new(b"Exif", &exif),
        HeifItem {
            content_type: "application/rdf+xml",
            ..HeifItem::new(b"mime", xmp.as_bytes())
        },
    ]
}

/// A HEIC whose primary item is a `grid` of `width` x `height` (its own
/// `ispe`) made of `tile` x `tile` `hvc1` tiles (each with its `ispe`), as
/// Samsung phones store photos: the tiles and their properties first, the
/// grid last; `quarter_turns` of `irot` on the grid.
pub fn heic_grid(width: u32, height: u32, tile: u32, quarter_turns: u8) -> Vec<u8> {
    let tiles = width.div_ceil(tile) * height.div_ceil(tile);
    let mut items: Vec<HeifItem> = (0..tiles.min(8))
        .map(|_| HeifItem::new(b"hvc1", b"tile").sized(tile, tile))
        .collect();
    let mut grid = HeifItem::new(b"grid", &[0, 0, 0, 0, 0, 0, 0, 0]).sized(width, height);
    if quarter_turns > 0 {
        grid.properties.push(iso_box(b"irot", &[quarter_turns]));
    }
    items.push(grid);
    let parts = HeifParts {
        primary: items.len() as u16,
        ..HeifParts::default()
    };
    heif_file(&items, &parts)
}

/// A HEIC whose `iloc` lists `items` items of `extents` extents each
/// with fields of no width (version 2 when `items` needs 32 bits): a
/// few bytes per item, nothing per extent.
pub fn heif_iloc_bomb(items: u32, extents: u16) -> Vec<u8> {
    let version = u8::from(items > 0xFFFF) * 2;
    let mut iloc = vec![0x00, 0x00];
    let id = |n: u32| {
        if version == 2 {
            n.to_be_bytes().to_vec()
        } else {
            (n as u16).to_be_bytes().to_vec()
        }
    };
    iloc.extend(id(items));
    for n in 1..=items {
        iloc.extend(id(n));
        if version >= 1 {
            iloc.extend_from_slice(&0u16.to_be_bytes()); // construction method
        }
        iloc.extend_from_slice(&0u16.to_be_bytes()); // data reference
        iloc.extend_from_slice(&extents.to_be_bytes());
    }
    // The EXIF item is none of the located ones.
    let mut exif = 0u16.to_be_bytes().to_vec();
    exif.extend_from_slice(&[0, 0]);
    exif.extend_from_slice(b"Exif\0");
    let mut iinf = 1u16.to_be_bytes().to_vec();
    iinf.extend(iso_full_box(b"infe", 2, &exif));
    // Item 1 is a 64 x 64 image, so that the header is otherwise valid.
    let ispe = iso_full_box(b"ispe", 0, &[0, 0, 0, 64, 0, 0, 0, 64]);
    let mut iprp = iso_box(b"ipco", &ispe);
    iprp.extend(iso_full_box(b"ipma", 0, &[0, 0, 0, 1, 0, 1, 1, 1]));
    let mut children = iso_full_box(b"pitm", 0, &1u16.to_be_bytes());
    children.extend(iso_box(b"iprp", &iprp));
    children.extend(iso_full_box(b"iinf", 0, &iinf));
    children.extend(iso_full_box(b"iloc", version, &iloc));
    let mut file = iso_box(b"ftyp", b"heic\0\0\0\0mif1heic");
    file.extend(iso_full_box(b"meta", 0, &children));
    file.extend(iso_box(b"mdat", b"data"));
    file
}

/// The codec of an [`encoded_heif`].
#[cfg(feature = "heif")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeifCodec {
    /// HEIC: HEVC through x265.
    Hevc,
    /// AVIF: AV1 through aom.
    Av1,
}

/// A real HEIC or AVIF, encoded by libheif, as a phone writes it: the
/// sensor's `width` x `height` pixels of [`phone_photo`] (left half red,
/// right half blue) stored with `irot` to be turned a quarter clockwise
/// for viewing, an `Exif` item with GPS, maker, serial number and owner,
/// and an XMP item with the location and owner.
#[cfg(feature = "heif")]
pub fn encoded_heif(width: u32, height: u32, codec: HeifCodec) -> Vec<u8> {
    use libheif_rs::{EncodingOptions, HeifContext, ImageOrientation};
    let image = heif_image(width, height, |x, _| x < width / 2);
    let mut encoder = heif_encoder(codec);
    let mut options = EncodingOptions::new().unwrap();
    options.set_image_orientation(ImageOrientation::Rotate90Cw);
    let mut context = HeifContext::new().unwrap();
    let handle = context
        .encode_image(&image, &mut encoder, Some(options))
        .unwrap();
    with_phone_items(context, &handle)
}

/// A real HEIC whose primary image is a grid of `columns` x `rows` tiles
/// of `tile` pixels each, as iPhones store their photos (512 x 512 tiles):
/// red above the middle, blue below, upright, with the phone's EXIF and
/// XMP items.
#[cfg(feature = "heif")]
pub fn encoded_heif_grid(tile: (u32, u32), columns: u16, rows: u16) -> Vec<u8> {
    use libheif_rs::HeifContext;
    let height = tile.1 * u32::from(rows);
    let mut tiles = Vec::new();
    for row in 0..u32::from(rows) {
        let top = row * tile.1;
        for _ in 0..columns {
            tiles.push(heif_image(tile.0, tile.1, |_, y| top + y < height / 2));
        }
    }
    let mut encoder = heif_encoder(HeifCodec::Hevc);
    let mut context = HeifContext::new().unwrap();
    // libheif-rs 3.0 hands its `rows` argument to libheif as the grid's
    // columns (heif-info on the result shows it), so the columns go there.
    let columns = std::num::NonZeroU16::new(columns).unwrap();
    let handle = context
        .encode_grid(&tiles, columns, &mut encoder, None)
        .unwrap()
        .unwrap();
    with_phone_items(context, &handle)
}

/// An 8-bit RGB image for libheif to encode: red where `red(x, y)`, blue
/// elsewhere.
#[cfg(feature = "heif")]
fn heif_image(width: u32, height: u32, red: impl Fn(u32, u32) -> bool) -> libheif_rs::Image {
    use libheif_rs::{Channel, ColorSpace, Image, RgbChroma};
    let mut image = Image::new(width, height, ColorSpace::Rgb(RgbChroma::Rgb)).unwrap();
    image
        .create_plane(Channel::Interleaved, width, height, 8)
        .unwrap();
    let planes = image.planes_mut();
    let plane = planes.interleaved.unwrap();
    for y in 0..height {
        for x in 0..width {
            let at = y as usize * plane.stride + x as usize * 3;
            let pixel = if red(x, y) {
                [220, 20, 20]
            } else {
                [20, 20, 220]
            };
            plane.data[at..at + 3].copy_from_slice(&pixel);
        }
    }
    image
}

#[cfg(feature = "heif")]
fn heif_encoder(codec: HeifCodec) -> libheif_rs::Encoder<'static> {
    use libheif_rs::{CompressionFormat, EncoderQuality, LibHeif};
    let format = match codec {
        HeifCodec::Hevc => CompressionFormat::Hevc,
        HeifCodec::Av1 => CompressionFormat::Av1,
    };
    // One library handle for the process: encoders borrow it.
    static LIB: std::sync::OnceLock<LibHeif> = std::sync::OnceLock::new();
    let lib = LIB.get_or_init(LibHeif::new);
    let mut encoder = lib.encoder_for_format(format).unwrap();
    encoder.set_quality(EncoderQuality::Lossy(90)).unwrap();
    encoder
}

/// Adds the phone's EXIF and XMP items to `handle`'s image and writes the
/// file.
#[cfg(feature = "heif")]
fn with_phone_items(
    mut context: libheif_rs::HeifContext<'static>,
    handle: &libheif_rs::ImageHandle,
) -> Vec<u8> {
    context.add_exif_metadata(handle, &phone_exif(1)).unwrap();
    let xmp = format!(
        "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\
         <rdf:Description xmlns:exif=\"http://ns.adobe.com/exif/1.0/\" exif:GPSLatitude=\"{}\" \
         xmlns:tiff=\"http://ns.adobe.com/tiff/1.0/\" tiff:Artist=\"{}\"/></rdf:RDF></x:xmpmeta>",
        PHONE_SECRETS[3], PHONE_SECRETS[2]
    );
    context.add_xmp_metadata(handle, xmp.as_bytes()).unwrap();
    context.write_to_bytes().unwrap()
}

/// A real one-frame GIF of `width` x `height`.
pub fn gif(width: u16, height: u16) -> Vec<u8> {
    let frame = image::Frame::new(image::RgbaImage::from_pixel(
        u32::from(width),
        u32::from(height),
        image::Rgba([30, 160, 90, 255]),
    ));
    encode_gif(vec![frame])
}

/// An animated GIF: a green first frame, then a magenta one.
pub fn animated_gif(width: u32, height: u32) -> Vec<u8> {
    let frames = [[30, 160, 90, 255], [200, 0, 200, 255]]
        .into_iter()
        .map(|colour| {
            image::Frame::new(image::RgbaImage::from_pixel(
                width,
                height,
                image::Rgba(colour),
            ))
        })
        .collect();
    encode_gif(frames)
}

fn encode_gif(frames: Vec<image::Frame>) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut out);
        encoder
            .set_repeat(image::codecs::gif::Repeat::Infinite)
            .unwrap();
        encoder.encode_frames(frames).unwrap();
    }
    out
}

/// A real GIF of `width` x `height` whose header claims a 1 x 1 screen.
pub fn gif_with_tiny_screen(width: u16, height: u16) -> Vec<u8> {
    let mut bytes = gif(width, height);
    bytes[6..10].copy_from_slice(&[1, 0, 1, 0]);
    bytes
}

/// A GIF whose logical screen is `screen` but whose one frame is `frame`
/// (with no real image data): decoders allocate for the frame, whatever
/// the screen says.
pub fn gif_with_frame(screen: (u16, u16), frame: (u16, u16)) -> Vec<u8> {
    let mut bytes = b"GIF89a".to_vec();
    bytes.extend_from_slice(&screen.0.to_le_bytes());
    bytes.extend_from_slice(&screen.1.to_le_bytes());
    // A global colour table of two entries: black and white.
    bytes.extend_from_slice(&[0x80, 0, 0, 0, 0, 0, 255, 255, 255]);
    // A graphic control extension, as animation tools write before frames.
    bytes.extend_from_slice(&[0x21, 0xF9, 4, 0, 0, 0, 0, 0]);
    bytes.push(0x2C);
    bytes.extend_from_slice(&[0, 0, 0, 0]);
    bytes.extend_from_slice(&frame.0.to_le_bytes());
    bytes.extend_from_slice(&frame.1.to_le_bytes());
    bytes.push(0);
    // LZW minimum code size 2, one sub-block (clear, end), terminator.
    bytes.extend_from_slice(&[2, 2, 0x4C, 0x01, 0]);
    bytes.push(0x3B);
    bytes
}

/// A real JPEG with `count` empty TEM markers (`FF 01`) after its SOI:
/// each is two bytes, and each used to cost a piece of its own.
pub fn jpeg_with_marker_flood(count: usize) -> Vec<u8> {
    let jpeg = jpeg(64, 48);
    let mut flood = jpeg[..2].to_vec();
    flood.extend(std::iter::repeat_n([0xFF, 0x01], count).flatten());
    flood.extend_from_slice(&jpeg[2..]);
    flood
}

/// A PNG (`width` x `height`) carrying an ICC profile chunk of
/// `profile_bytes` zeros, stored uncompressed.
pub fn png_with_icc_profile(width: u32, height: u32, profile_bytes: usize) -> Vec<u8> {
    let plain = png(width, height, 5);
    let mut iccp = b"huge\0\0".to_vec();
    iccp.extend_from_slice(&zlib_stored(&vec![0; profile_bytes]));
    let mut out = plain[..33].to_vec();
    png_chunk(&mut out, b"iCCP", &iccp);
    out.extend_from_slice(&plain[33..]);
    out
}

/// `len` bytes of noise from `seed` (xorshift): incompressible, and
/// different for every seed.
pub fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut state = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A PNG of about `size` bytes whose image data is noise in stored
/// (uncompressed) deflate blocks: a valid zlib stream, as the scrubber
/// follows it, 8000 pixels wide and as tall as the noise fills: what the
/// byte path sees of a large image, for services that do not decode it
/// (variants off).
pub fn png_around_noise(size: usize, seed: u32) -> Vec<u8> {
    const BLOCK: usize = 65_535;
    let data_len = size.saturating_sub(8 + 25 + 12 + 12 + 6).max(1);
    let blocks = data_len.div_ceil(BLOCK + 5);
    let raw = noise(data_len.saturating_sub(5 * blocks).max(1), seed);
    let row = 8000 * 3 + 1;
    let height = u32::try_from(raw.len().div_ceil(row)).expect("a height");
    let mut stream = vec![0x78, 0x01];
    for (n, block) in raw.chunks(BLOCK).enumerate() {
        let last = n == raw.len().div_ceil(BLOCK) - 1;
        let len = block.len() as u16;
        stream.push(u8::from(last));
        stream.extend_from_slice(&len.to_le_bytes());
        stream.extend_from_slice(&(!len).to_le_bytes());
        stream.extend_from_slice(block);
    }
    stream.extend_from_slice(&simd_adler32::adler32(&raw.as_slice()).to_be_bytes());
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    png_chunk(&mut out, b"IHDR", &rgb_ihdr(8000, height));
    png_chunk(&mut out, b"IDAT", &stream);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// A real, compressed PNG of 300 x 290 noise (about 256 KiB: noise does
/// not compress).
pub fn noise_png(seed: u32) -> Vec<u8> {
    use image::ImageEncoder as _;
    let (width, height) = (300, 290);
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::NoFilter,
    )
    .write_image(
        &noise((width * height * 3) as usize, seed),
        width,
        height,
        image::ExtendedColorType::Rgb8,
    )
    .expect("an in-memory PNG encodes");
    out
}

/// A photo-like JPEG: smooth gradients with fine texture, so it compresses
/// like a photo rather than like a flat test card.
pub fn photo_jpeg(width: u32, height: u32) -> Vec<u8> {
    let texture = noise((width * height) as usize, 7);
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        let t = texture[(y * width + x) as usize] / 8;
        image::Rgb([
            (x * 200 / width) as u8 + t,
            (y * 200 / height) as u8 + t,
            ((x + y) * 100 / (width + height)) as u8 + t,
        ])
    });
    encode_jpeg(&image)
}

/// Limits roomy enough for every fixture, for tests that build
/// [`crate::domain::Images`] directly; tests change the ones they probe.
pub fn limits() -> crate::domain::Limits {
    use std::time::Duration;
    crate::domain::Limits {
        content: crate::media::content::ContentLimits {
            max_bytes: 64 << 20,
            max_pixels: 100_000_000,
            max_jpeg_decode_passes: crate::media::limits::DEFAULT_MAX_JPEG_DECODE_PASSES,
        },
        max_url_expiry: Duration::from_secs(3600),
        url_window: Duration::from_secs(15 * 60),
        max_concurrent_uploads: 8,
        upload_slot_wait: Duration::ZERO,
        max_uploads_per_user: 8,
        pace: crate::domain::limits::PaceLimits {
            idle_timeout: Duration::from_secs(10),
            deadline: Duration::from_secs(60),
            free_messages: 1024,
            bytes_per_message: 16 * 1024,
        },
        memory_budget: 1 << 30,
        memory_wait: Duration::from_secs(5),
        max_memory_per_user: 1 << 30,
        max_page_bytes: 2 << 20,
        max_similar_candidates: 20_000,
        keep_metadata: false,
        variants: true,
        render: crate::media::variants::RenderLimits {
            max_concurrent: 2,
            max_memory: 256 << 20,
            max_jpeg_decode_passes: crate::media::limits::DEFAULT_MAX_JPEG_DECODE_PASSES,
        },
        variant_sizes: crate::media::variants::default_sizes().into(),
        sessions: crate::domain::limits::SessionLimits {
            ttl: Duration::from_secs(3600),
            segment_bytes: 1 << 20,
            max_parts: 100,
            url_expiry: Duration::from_secs(900),
            per_user: crate::domain::ports::SessionQuota {
                max_open: 32,
                max_staged_bytes: 1 << 30,
            },
        },
        quota: crate::domain::quota::QuotaLimits::default(),
        max_running_erasures: 2,
        max_queued_erasures: 1000,
        encodings: crate::domain::limits::EncodingLimits::default(),
    }
}

#[cfg(test)]
mod tests {
    /// `examples/images/phone-photo.jpg`, which the Python example tries the
    /// service with (`scripts/walkthrough`), is a [`super::camera_photo`]: it
    /// carries everything a phone writes that the service removes.
    /// `IMAGE_SERVICE_WRITE_EXAMPLES=1 cargo test --lib` writes it anew.
    #[test]
    fn the_example_phone_photo_carries_a_phones_metadata() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/images/phone-photo.jpg"
        );
        if std::env::var_os("IMAGE_SERVICE_WRITE_EXAMPLES").is_some() {
            std::fs::write(path, super::camera_photo(480, 360)).unwrap();
        }
        let photo = std::fs::read(path).unwrap();
        for secret in super::PHONE_SECRETS {
            assert!(
                photo.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret}"
            );
        }
        let end = photo.windows(2).rposition(|w| w == [0xFF, 0xD9]).unwrap();
        assert!(end + 2 < photo.len(), "bytes follow the image");
        let decoded = image::load_from_memory(&photo).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (480, 360));
    }

    /// The benchmark's large PNG passes the scrubber as it is: a valid
    /// zlib stream, checksum included.
    #[test]
    fn the_noise_png_is_stored_as_it_came() {
        let png = super::png_around_noise(300 * 1024, 7);
        let mut scrubber = crate::media::scrub::Scrubber::new(false);
        let mut out = Vec::new();
        for piece in png.chunks(64 * 1024) {
            let piece = bytes::Bytes::copy_from_slice(piece);
            scrubber.push(piece, &mut out).unwrap();
        }
        assert!(!scrubber.finish(&mut out).unwrap().changed);
        assert_eq!(out.concat(), png);
    }
}
