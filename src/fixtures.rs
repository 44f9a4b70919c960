//! Image files made for the tests, the benchmark and the soak tool: valid
//! containers with real headers, built here once so that every caller
//! tests the same bytes; and the limits of tests that build the domain
//! directly. Not used by the service itself.

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

fn zlib_stored(data: &[u8]) -> Vec<u8> {
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

/// What a phone writes into a photo's EXIF that identifies someone.
pub const PHONE_SECRETS: [&str; 4] = [
    "PhoneMaker Model X",
    "SN-4411-2093-77",
    "Alice Example",
    "GPS-N-48.8584",
];

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
    let plain = encode_jpeg(&pixels);
    let mut exif = b"Exif\0\0".to_vec();
    exif.extend_from_slice(&phone_exif(6));
    let mut out = plain[..2].to_vec();
    out.extend(jpeg_segment(0xE1, &exif));
    let xmp = format!(
        "http://ns.adobe.com/xap/1.0/\0<x:xmpmeta><exif:GPSLatitude>{}</exif:GPSLatitude></x:xmpmeta>",
        PHONE_SECRETS[3]
    );
    out.extend(jpeg_segment(0xE1, xmp.as_bytes()));
    out.extend_from_slice(&plain[2..]);
    out
}

fn jpeg_segment(marker: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0xFF, marker];
    out.extend_from_slice(&(payload.len() as u16 + 2).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A big-endian TIFF block as cameras write it: IFD0 (Make/Model,
/// Orientation, Artist, pointers to the Exif and GPS IFDs), an Exif IFD
/// with the body serial number, and a GPS IFD with a latitude.
fn phone_exif(orientation: u16) -> Vec<u8> {
    struct Entry {
        tag: u16,
        kind: u16,
        count: u32,
        value: Vec<u8>,
    }
    let ascii = |tag, text: &str| {
        let mut value = text.as_bytes().to_vec();
        value.push(0);
        Entry {
            tag,
            kind: 2,
            count: value.len() as u32,
            value,
        }
    };
    let long = |tag, n: u32| Entry {
        tag,
        kind: 4,
        count: 1,
        value: n.to_be_bytes().to_vec(),
    };
    // Lays out one IFD at `at`, its out-of-line values right after it.
    let ifd = |at: u32, entries: Vec<Entry>| -> Vec<u8> {
        let table = 2 + entries.len() as u32 * 12 + 4;
        let mut head = (entries.len() as u16).to_be_bytes().to_vec();
        let mut data = Vec::new();
        for e in &entries {
            head.extend_from_slice(&e.tag.to_be_bytes());
            head.extend_from_slice(&e.kind.to_be_bytes());
            head.extend_from_slice(&e.count.to_be_bytes());
            if e.value.len() <= 4 {
                let mut inline = e.value.clone();
                inline.resize(4, 0);
                head.extend_from_slice(&inline);
            } else {
                head.extend_from_slice(&(at + table + data.len() as u32).to_be_bytes());
                data.extend_from_slice(&e.value);
            }
        }
        head.extend_from_slice(&0u32.to_be_bytes());
        head.extend(data);
        head
    };
    // IFD0 first with placeholder pointers to learn its length.
    let ifd0_entries = |exif_at, gps_at| {
        vec![
            ascii(0x010F, PHONE_SECRETS[0]),
            Entry {
                tag: 0x0112,
                kind: 3,
                count: 1,
                value: orientation.to_be_bytes().to_vec(),
            },
            ascii(0x013B, PHONE_SECRETS[2]),
            long(0x8769, exif_at),
            long(0x8825, gps_at),
        ]
    };
    let ifd0_len = ifd(8, ifd0_entries(0, 0)).len() as u32;
    let exif_at = 8 + ifd0_len;
    let exif_ifd = ifd(exif_at, vec![ascii(0xA431, PHONE_SECRETS[1])]);
    let gps_at = exif_at + exif_ifd.len() as u32;
    let gps_ifd = ifd(
        gps_at,
        vec![ascii(0x0001, "N"), ascii(0x001B, PHONE_SECRETS[3])],
    );
    let mut tiff = b"MM\0\x2A\0\0\0\x08".to_vec();
    tiff.extend(ifd(8, ifd0_entries(exif_at, gps_at)));
    tiff.extend(exif_ifd);
    tiff.extend(gps_ifd);
    tiff
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

/// A PNG of `size` bytes with a valid chunk structure around noise,
/// claiming 8000 x 8000: what the byte path sees of a large image, for
/// services that do not decode it (variants off).
pub fn png_around_noise(size: usize, seed: u32) -> Vec<u8> {
    let ihdr = rgb_ihdr(8000, 8000);
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(
        &mut out,
        b"IDAT",
        &noise(size.saturating_sub(8 + 25 + 12 + 12), seed),
    );
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
        },
        max_url_expiry: Duration::from_secs(3600),
        max_concurrent_uploads: 8,
        max_uploads_per_user: 8,
        pace: crate::domain::upload::PaceLimits {
            idle_timeout: Duration::from_secs(10),
            deadline: Duration::from_secs(60),
            free_messages: 1024,
            bytes_per_message: 16 * 1024,
        },
        memory_budget: 1 << 30,
        memory_wait: Duration::from_secs(5),
        max_page_bytes: 2 << 20,
        keep_metadata: false,
        variants: true,
        render: crate::media::variants::RenderLimits {
            max_concurrent: 2,
            max_memory: 256 << 20,
        },
        sessions: crate::domain::upload::resumable::SessionLimits {
            ttl: Duration::from_secs(3600),
            segment_bytes: 1 << 20,
            max_parts: 100,
        },
    }
}
