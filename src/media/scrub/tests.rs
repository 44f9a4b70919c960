use super::*;

/// A little-endian TIFF block: Orientation and Artist in IFD0.
fn exif_tiff(orientation: u16, artist: &str) -> Vec<u8> {
    let mut tiff = b"II*\0\x08\0\0\0".to_vec();
    tiff.extend_from_slice(&2u16.to_le_bytes());
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&u32::from(orientation).to_le_bytes());
    let artist_at = 8 + 2 + 2 * 12 + 4;
    tiff.extend_from_slice(&0x013Bu16.to_le_bytes());
    tiff.extend_from_slice(&2u16.to_le_bytes());
    tiff.extend_from_slice(&(artist.len() as u32 + 1).to_le_bytes());
    tiff.extend_from_slice(&(artist_at as u32).to_le_bytes());
    tiff.extend_from_slice(&0u32.to_le_bytes());
    tiff.extend_from_slice(artist.as_bytes());
    tiff.push(0);
    tiff
}

fn segment(marker: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0xFF, marker];
    out.extend_from_slice(&(payload.len() as u16 + 2).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn encoded_jpeg() -> Vec<u8> {
    let pixels: Vec<u8> = (0..48 * 32 * 3).map(|i| (i * 7 % 251) as u8).collect();
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(&pixels, 48, 32, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    out
}

/// A camera-like JPEG: EXIF with an owner's name, XMP, IPTC, a comment,
/// an ICC profile, and a video appended after the image.
fn camera_jpeg(orientation: u16) -> Vec<u8> {
    let plain = encoded_jpeg();
    let mut exif = b"Exif\0\0".to_vec();
    exif.extend_from_slice(&exif_tiff(orientation, "Alice Example"));
    let mut out = plain[..2].to_vec();
    out.extend(segment(0xE1, &exif));
    out.extend(segment(
        0xE1,
        b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta>GPSLatitude 48.85</x:xmpmeta>",
    ));
    let profile = crate::fixtures::icc_profile_with_text("Alice Example, 48.8584 N");
    out.extend(segment(
        0xE2,
        &[&b"ICC_PROFILE\0\x01\x01"[..], &profile].concat(),
    ));
    out.extend(segment(0xE2, b"MPF\0secondary-image-index"));
    out.extend(segment(0xED, b"Photoshop 3.0\0IPTC By-line: Alice Example"));
    out.extend(segment(0xFE, b"shot by Alice Example"));
    out.extend_from_slice(&plain[2..]);
    out.extend_from_slice(b"ftypmp42 motion photo video with GPS");
    out
}

fn scrub(bytes: &[u8], chunk: usize, keep: bool) -> Result<(Vec<u8>, Scrubbed), MediaError> {
    let mut scrubber = Scrubber::new(keep);
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk) {
        scrubber.push(Bytes::copy_from_slice(piece), &mut out)?;
    }
    let report = scrubber.finish(&mut out)?;
    Ok((out.concat(), report))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn identifying_jpeg_metadata_is_removed_and_pixels_are_untouched() {
    let original = camera_jpeg(6);
    let expected_pixels = image::load_from_memory(&original).unwrap().to_rgb8();
    let mut results = Vec::new();
    for chunk in [1, 2, 3, 7, 64, 1000, original.len()] {
        let (stored, report) = scrub(&original, chunk, false).unwrap();
        assert_eq!(
            report,
            Scrubbed {
                orientation: 6,
                stripped: true,
                changed: true,
                rescrub: None,
                late_size: None,
            }
        );
        for secret in [&b"Alice"[..], b"GPSLatitude", b"MPF", b"motion photo"] {
            assert!(!contains(&stored, secret), "{secret:?} survived");
        }
        assert!(
            contains(&stored, b"ICC_PROFILE\0\x01\x01") && contains(&stored, b"acsp"),
            "the ICC profile was dropped"
        );
        let pixels = image::load_from_memory(&stored).unwrap().to_rgb8();
        assert!(pixels == expected_pixels, "the pixels changed");
        let exif = Orientation::from_stored(&stored);
        assert_eq!(exif, Some(6), "the stored original lost its orientation");
        results.push(stored);
    }
    assert!(
        results.windows(2).all(|w| w[0] == w[1]),
        "chunking changed the output"
    );
}

#[test]
fn an_upright_jpeg_keeps_no_exif_at_all() {
    let (stored, report) = scrub(&camera_jpeg(1), 5, false).unwrap();
    assert_eq!(report.orientation, 1);
    assert!(!contains(&stored, b"Exif"));
}

#[test]
fn images_without_metadata_are_stored_byte_for_byte() {
    let jpeg = encoded_jpeg();
    let (stored, report) = scrub(&jpeg, 4096, false).unwrap();
    assert_eq!(stored, jpeg);
    assert!(report.stripped && !report.changed);
}

#[test]
fn keeping_metadata_stores_the_bytes_as_uploaded() {
    let original = camera_jpeg(3);
    let (stored, report) = scrub(&original, 9, true).unwrap();
    assert_eq!(stored, original);
    assert_eq!(
        report,
        Scrubbed {
            orientation: 3,
            stripped: false,
            changed: false,
            rescrub: None,
            late_size: None,
        }
    );
}

use crate::fixtures::{png_chunk_bytes as png_chunk, riff_chunk};

fn encode_png(image: image::DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

#[test]
fn identifying_png_metadata_is_removed() {
    let image = image::RgbaImage::from_fn(20, 10, |x, y| {
        image::Rgba([x as u8 * 9, y as u8 * 20, 7, 200])
    });
    let plain = encode_png(image::DynamicImage::ImageRgba8(image.clone()));
    // Signature and IHDR, then metadata, then the rest.
    let mut original = plain[..33].to_vec();
    original.extend(png_chunk(b"tEXt", b"Author\0Alice Example"));
    original.extend(png_chunk(b"eXIf", &exif_tiff(8, "Alice Example")));
    original.extend(png_chunk(b"gAMA", &45455u32.to_be_bytes()));
    original.extend_from_slice(&plain[33..]);
    original.extend_from_slice(b"trailing Alice");
    for chunk in [1, 5, 13, 4096] {
        let (stored, report) = scrub(&original, chunk, false).unwrap();
        assert_eq!(
            report,
            Scrubbed {
                orientation: 8,
                stripped: true,
                changed: true,
                rescrub: None,
                late_size: None,
            }
        );
        assert!(!contains(&stored, b"Alice"));
        assert!(contains(&stored, b"gAMA"));
        let decoded = image::load_from_memory(&stored).unwrap().to_rgba8();
        assert!(decoded == image);
        // The replacement eXIf chunk is well-formed and says 8.
        let at = stored.windows(4).position(|w| w == b"eXIf").unwrap();
        let len = u32::from_be_bytes(stored[at - 4..at].try_into().unwrap()) as usize;
        let data = &stored[at + 4..at + 4 + len];
        let crc = u32::from_be_bytes(stored[at + 4 + len..at + 8 + len].try_into().unwrap());
        assert_eq!(crc, crc32fast::hash(&stored[at..at + 4 + len]));
        assert_eq!(
            image::metadata::Orientation::from_exif_chunk(data).map(|o| o.to_exif()),
            Some(8)
        );
    }
}

#[test]
fn truncated_jpegs_and_pngs_are_refused() {
    let jpeg = encoded_jpeg();
    let error = scrub(&jpeg[..jpeg.len() - 40], 100, false).unwrap_err();
    assert!(error.to_string().contains("truncated"), "{error}");
    let png = {
        let mut out = Vec::new();
        image::DynamicImage::ImageRgb8(image::RgbImage::new(8, 8))
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    };
    let error = scrub(&png[..png.len() - 12], 100, false).unwrap_err();
    assert!(error.to_string().contains("truncated"), "{error}");
}

#[test]
fn other_formats_and_tiny_inputs_pass_unchanged() {
    for bytes in [
        &b"GIF89a and the rest of a gif"[..],
        b"RIFF\0\0\0\0AVI LIST",
        b"abc",
    ] {
        let (stored, report) = scrub(bytes, 2, false).unwrap();
        assert_eq!(stored, bytes);
        assert_eq!(
            report,
            Scrubbed {
                orientation: 1,
                stripped: false,
                changed: false,
                rescrub: None,
                late_size: None,
            }
        );
    }
}

#[test]
fn a_flood_of_empty_markers_is_refused() {
    let jpeg = encoded_jpeg();
    // TEM markers between SOI and the first segment.
    let mut flood = jpeg[..2].to_vec();
    flood.extend(std::iter::repeat_n([0xFF, 0x01], 1000).flatten());
    flood.extend_from_slice(&jpeg[2..]);
    assert!(scrub(&flood, 4096, false).is_err());
    // Empty comment segments: valid one by one, not by the million.
    let mut flood = jpeg[..2].to_vec();
    let count = MAX_JPEG_SEGMENTS as usize + 1;
    flood.extend(std::iter::repeat_n([0xFF, 0xFE, 0x00, 0x02], count).flatten());
    flood.extend_from_slice(&jpeg[2..]);
    let error = scrub(&flood, 64 * 1024, true).unwrap_err();
    assert!(error.to_string().contains("marker segments"), "{error}");
}

#[test]
fn corrupt_jpeg_structure_is_refused_not_panicked_on() {
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0];
    assert!(scrub(&bytes, 3, false).is_err());
    bytes = vec![0xFF, 0xD8, 0xFF, 0xD8, 0, 0, 0, 0, 0, 0, 0, 0];
    assert!(scrub(&bytes, 1, false).is_err());
    bytes = vec![
        0xFF, 0xD8, 0xFF, 0x12, 0x00, 0x02, 0x34, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert!(scrub(&bytes, 1, false).is_err());
    // A WebP whose chunk claims more than its RIFF size.
    bytes = b"RIFF\x10\0\0\0WEBPVP8L\xFF\0\0\0abcd".to_vec();
    assert!(scrub(&bytes, 5, false).is_err());
}

/// A WebP as cameras and editors write it: `VP8X` announcing EXIF and
/// XMP, the image, then both metadata chunks.
fn camera_webp(orientation: u16) -> (Vec<u8>, image::RgbaImage) {
    let image = image::RgbaImage::from_fn(30, 20, |x, y| {
        image::Rgba([x as u8 * 8, y as u8 * 12, 90, 255])
    });
    let mut simple = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut simple)
        .encode(image.as_raw(), 30, 20, image::ExtendedColorType::Rgba8)
        .unwrap();
    // `simple` is RIFF + WEBP + one VP8L chunk: keep that chunk.
    let vp8l = &simple[12..];
    let chunk = riff_chunk;
    let mut vp8x = vec![0x08 | 0x04 | 0x10, 0, 0, 0];
    vp8x.extend_from_slice(&29u32.to_le_bytes()[..3]);
    vp8x.extend_from_slice(&19u32.to_le_bytes()[..3]);
    let mut body = b"WEBP".to_vec();
    body.extend(chunk(b"VP8X", &vp8x));
    body.extend_from_slice(vp8l);
    body.extend(chunk(b"EXIF", &exif_tiff(orientation, "Alice Example")));
    body.extend(chunk(
        b"XMP ",
        b"<x:xmpmeta>Alice Example, GPS 48.85</x:xmpmeta>",
    ));
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend(body);
    (out, image)
}

#[test]
fn webp_metadata_is_blanked_in_place() {
    let (original, pixels) = camera_webp(6);
    for chunk in [1, 3, 8, 50, original.len()] {
        let (stored, report) = scrub(&original, chunk, false).unwrap();
        assert_eq!(
            report,
            Scrubbed {
                orientation: 6,
                stripped: true,
                changed: true,
                rescrub: None,
                late_size: None,
            }
        );
        assert_eq!(stored.len(), original.len(), "sizes stay, so it streams");
        assert!(
            !contains(&stored, b"Alice")
                && !contains(&stored, b"EXIF")
                && !contains(&stored, b"XMP ")
        );
        let vp8x = stored.windows(4).position(|w| w == b"VP8X").unwrap();
        assert_eq!(
            stored[vp8x + 8] & 0x0C,
            0,
            "VP8X no longer announces metadata"
        );
        let decoded = image::load_from_memory(&stored).unwrap().to_rgba8();
        assert!(decoded == pixels, "the pixels changed");
    }
    let (kept, report) = scrub(&original, 7, true).unwrap();
    assert_eq!(kept, original);
    assert!(!report.stripped && !report.changed && report.orientation == 6);
    let error = scrub(&original[..original.len() - 5], 64, false).unwrap_err();
    assert!(error.to_string().contains("truncated"), "{error}");
}

/// Where a JPEG's first scan data begins (after its SOS segment).
fn scan_start(jpeg: &[u8]) -> usize {
    let sos = jpeg.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    sos + 2 + usize::from(u16::from_be_bytes([jpeg[sos + 2], jpeg[sos + 3]]))
}

#[test]
fn only_jpeg_segments_known_to_decide_the_pixels_are_kept() {
    let plain = encoded_jpeg();
    let mut jfif = b"JFIF\0\x01\x02\x01\0\x48\0\x48\x02\x01".to_vec();
    jfif.extend_from_slice(b"Alice"); // a 2 x 1 thumbnail, 6 bytes of RGB
    jfif.push(0);
    let mut adobe = b"Adobe\0\x64\0\0\0\0\x01".to_vec();
    adobe.extend_from_slice(b"Alice");
    let mut original = plain[..2].to_vec();
    original.extend(segment(0xE0, &jfif));
    original.extend(segment(0xE0, b"JFXX\0\x10Alice thumbnail"));
    original.extend(segment(0xEE, &adobe));
    original.extend(segment(0xE5, b"VendorTag\0Alice Example, serial 4411"));
    original.extend(segment(0xED, b"Photoshop 3.0\08BIM\x04\x04IPTC Alice"));
    original.extend(segment(0xEF, b"Alice in APP15"));
    original.extend(segment(0xF1, b"Alice in JPG1"));
    original.extend(segment(0xFE, b"Alice's comment"));
    original.extend_from_slice(&plain[2..]);
    let expected_pixels = image::load_from_memory(&plain).unwrap().to_rgb8();
    let mut results = Vec::new();
    for chunk in [1, 2, 5, 64, original.len()] {
        let (stored, report) = scrub(&original, chunk, false).unwrap();
        assert!(report.stripped && report.changed);
        assert!(!contains(&stored, b"Alice"), "a segment survived");
        // JFIF without its thumbnail; Adobe's 12 bytes.
        assert!(contains(
            &stored,
            &segment(0xE0, b"JFIF\0\x01\x02\x01\0\x48\0\x48\0\0")
        ));
        assert!(contains(&stored, &segment(0xEE, &adobe[..12])));
        let pixels = image::load_from_memory(&stored).unwrap().to_rgb8();
        assert!(pixels == expected_pixels, "the pixels changed");
        results.push(stored);
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    let (kept, _) = scrub(&original, 9, true).unwrap();
    assert_eq!(kept, original, "kept whole with --keep-metadata");
}

/// A photo-like JPEG whose scan has a run of `FF` in its middle (a
/// corrupted block) followed by `next`.
fn damaged_jpeg(run: usize, next: u8) -> Vec<u8> {
    let mut jpeg = crate::fixtures::photo_jpeg(320, 240);
    let (start, end) = (scan_start(&jpeg), jpeg.len() - 2);
    assert!(end - start > run + 100, "a long enough scan");
    let at = start + (end - start - run) / 2;
    jpeg[at..at + run].fill(0xFF);
    jpeg[at + run] = next;
    jpeg
}

#[test]
fn a_damaged_scan_is_stored_as_it_came() {
    // Whatever follows the run, unless it is a marker decoders act on, the
    // scan goes on: nothing is identifying in it, nothing changes.
    for next in (0..=0xFEu8).filter(|&b| !jpeg::ends_scan(b)) {
        let damaged = damaged_jpeg(4096, next);
        for chunk in [3, 4096, damaged.len()] {
            let (stored, report) = scrub(&damaged, chunk, false)
                .unwrap_or_else(|e| panic!("next byte {next:#04x}, chunks of {chunk}: {e}"));
            assert!(stored == damaged, "next byte {next:#04x}: changed");
            assert!(report.stripped && !report.changed);
        }
    }
    // Across every chunk boundary, a 16 KiB run as a flash card leaves it.
    let damaged = damaged_jpeg(16 * 1024, 0xFC);
    let (stored, _) = scrub(&damaged, 1, false).unwrap();
    assert!(stored == damaged);
    // A run up to the end-of-image marker is fill before it.
    let mut jpeg = encoded_jpeg();
    let end = jpeg.len() - 2;
    jpeg.splice(end..end, std::iter::repeat_n(0xFF, 100));
    assert_eq!(scrub(&jpeg, 7, false).unwrap().0, jpeg);
}

#[test]
fn damage_that_looks_like_a_marker_is_never_a_panic() {
    // A run followed by what decoders take for a marker: the segment that
    // seems to follow is parsed under the same rules (and dropped unless
    // allowed), and the bytes after it are damaged scan data again.
    for next in (0..=0xFEu8).filter(|&b| jpeg::ends_scan(b)) {
        let damaged = damaged_jpeg(4096, next);
        match scrub(&damaged, 4096, false) {
            Ok((stored, _)) => assert!(stored.starts_with(&damaged[..scan_start(&damaged)])),
            Err(e) => assert!(e.to_string().contains("JPEG"), "{next:#04x}: {e}"),
        }
    }
    // An application segment inside damaged data: dropped, the rest kept.
    let mut damaged = damaged_jpeg(64, 0xE4);
    let at = damaged.windows(2).position(|w| w == [0xFF, 0xE4]).unwrap();
    damaged[at + 2..at + 4].copy_from_slice(&12u16.to_be_bytes());
    damaged[at + 4..at + 14].copy_from_slice(b"Alice Exam");
    let (stored, report) = scrub(&damaged, 100, false).unwrap();
    assert!(!contains(&stored, b"Alice") && report.changed);
    assert_eq!(stored.len(), damaged.len() - 14);
}

#[test]
fn markers_after_a_scan_still_count_against_the_limit() {
    let jpeg = encoded_jpeg();
    let end = jpeg.len() - 2;
    let count = MAX_JPEG_SEGMENTS as usize;
    let mut flood = jpeg[..end].to_vec();
    flood.extend(std::iter::repeat_n([0xFF, 0xFE, 0x00, 0x02], count).flatten());
    flood.extend_from_slice(&jpeg[end..]);
    let error = scrub(&flood, 64 * 1024, false).unwrap_err();
    assert!(error.to_string().contains("marker segments"), "{error}");
    // Damage is not segments: a million `FF 12` pairs pass, in linear time.
    let mut damage = jpeg[..end].to_vec();
    damage.extend(std::iter::repeat_n([0xFF, 0x12], 1 << 20).flatten());
    damage.extend_from_slice(&jpeg[end..]);
    let started = std::time::Instant::now();
    let (stored, _) = scrub(&damage, 64 * 1024, false).unwrap();
    assert!(stored == damage);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn fill_bytes_before_markers_are_kept() {
    let jpeg = encoded_jpeg();
    let mut filled = jpeg[..2].to_vec();
    filled.extend_from_slice(&[0xFF; 7]);
    filled.extend_from_slice(&jpeg[2..]);
    for chunk in [1, 3, 4096] {
        let (stored, report) = scrub(&filled, chunk, false).unwrap();
        assert_eq!(stored, filled);
        assert!(!report.changed);
    }
}

#[test]
fn only_png_chunks_known_to_decide_the_pixels_are_kept() {
    let image = image::RgbImage::from_fn(16, 9, |x, y| image::Rgb([x as u8 * 15, y as u8, 3]));
    let plain = encode_png(image::DynamicImage::ImageRgb8(image.clone()));
    let allowed = [
        png_chunk(b"sRGB", &[0]),
        png_chunk(b"pHYs", &[0, 0, 0x0B, 0x13, 0, 0, 0x0B, 0x13, 1]),
    ];
    let mut original = plain[..33].to_vec();
    for kept in &allowed {
        original.extend_from_slice(kept);
    }
    original.extend(png_chunk(b"iTXt", b"Author\0\0\0\0\0Alice Example"));
    original.extend(png_chunk(b"zTXt", b"Comment\0\0x\x9c Alice"));
    original.extend(png_chunk(b"tIME", &[0x07, 0xEA, 12, 6, 5, 9, 0]));
    original.extend(png_chunk(b"caBX", b"c2pa manifest: Alice Example"));
    original.extend(png_chunk(b"prVt", b"private Alice"));
    original.extend_from_slice(&plain[33..]);
    let (stored, report) = scrub(&original, 11, false).unwrap();
    assert!(report.stripped && report.changed);
    let mut expected = plain[..33].to_vec();
    expected.extend(allowed.concat());
    expected.extend_from_slice(&plain[33..]);
    assert_eq!(stored, expected, "exactly the allowed chunks are left");
    assert!(image::load_from_memory(&stored).unwrap().to_rgb8() == image);
    // An unknown critical chunk: no decoder may show the file.
    let mut critical = plain[..33].to_vec();
    critical.extend(png_chunk(b"ALCE", b"Alice"));
    critical.extend_from_slice(&plain[33..]);
    let error = scrub(&critical, 64, false).unwrap_err();
    assert!(
        error.to_string().contains("unknown critical chunk"),
        "{error}"
    );
}

fn riff_webp(chunks: &[Vec<u8>]) -> Vec<u8> {
    let body = chunks.concat();
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32 + 4).to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend(body);
    out
}

/// A lossless `VP8L` chunk of `width` x `height` pixels.
fn vp8l_chunk(width: u32, height: u32) -> (Vec<u8>, image::RgbaImage) {
    let image = image::RgbaImage::from_fn(width, height, |x, y| {
        image::Rgba([x as u8 * 8, y as u8 * 12, 90, 255])
    });
    let mut simple = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut simple)
        .encode(
            image.as_raw(),
            width,
            height,
            image::ExtendedColorType::Rgba8,
        )
        .unwrap();
    (simple[12..].to_vec(), image)
}

/// The profile name of `iCCP` is free text: it becomes a fixed one; the
/// profile's text tags are blanked inside the compressed stream, its
/// colour tags kept, the pixels untouched.
#[test]
fn a_png_icc_profile_loses_its_name_and_its_text_but_not_its_colours() {
    let secret = "GPS 48.8584 N 2.2945 E";
    let profile = crate::fixtures::icc_profile_with_text(secret);
    let mut blanked = profile.clone();
    icc::blank_profile_text(&mut blanked).unwrap();
    let plain = crate::fixtures::png(8, 8, 5);
    let with_profile = |compressed: &[u8]| {
        let mut iccp = b"Alice Example's calibrated phone\0\0".to_vec();
        iccp.extend_from_slice(compressed);
        let mut png = plain[..33].to_vec();
        png.extend_from_slice(&(iccp.len() as u32).to_be_bytes());
        png.extend_from_slice(b"iCCP");
        png.extend_from_slice(&iccp);
        let crc = crc32fast::hash(&png[37..]);
        png.extend_from_slice(&crc.to_be_bytes());
        png.extend_from_slice(&plain[33..]);
        png
    };
    let original = with_profile(&crate::fixtures::zlib_stored(&profile));
    let read_profile = |png: &[u8]| {
        use image::ImageDecoder;
        let mut decoder = image::codecs::png::PngDecoder::new(std::io::Cursor::new(png)).unwrap();
        decoder.icc_profile().unwrap()
    };
    assert_eq!(read_profile(&original).as_deref(), Some(&profile[..]));
    for chunk in [1, 7, 40, original.len()] {
        let (stored, report) = scrub(&original, chunk, false).unwrap();
        assert!(report.changed);
        assert!(!contains(&stored, b"Alice"));
        assert!(contains(&stored, b"iCCPICC profile\0\0"));
        assert_eq!(read_profile(&stored).as_deref(), Some(&blanked[..]));
        let decoded = image::load_from_memory(&stored).unwrap();
        assert!(decoded == image::load_from_memory(&plain).unwrap());
    }
    let (kept, _) = scrub(&original, 64, true).unwrap();
    assert_eq!(kept, original);
    // A profile that does not parse, or does not inflate, is dropped.
    for broken in [
        crate::fixtures::zlib_stored(&b"a colour profile".repeat(20)),
        b"not zlib at all".to_vec(),
    ] {
        let (stored, _) = scrub(&with_profile(&broken), 9, false).unwrap();
        assert_eq!(stored, plain);
    }
}

/// An `ICCP` chunk counts only when `VP8X` announces it (flag 0x20): one
/// it does not announce (decoders ignore it) may carry anything, and is
/// blanked; an announced one is kept, without its text.
#[test]
fn an_unannounced_webp_iccp_chunk_is_blanked() {
    let (vp8l, pixels) = vp8l_chunk(30, 20);
    let secret = b"Alice Example";
    let profile = crate::fixtures::icc_profile_with_text("Alice Example");
    for (flags, kept) in [(0x00, false), (0x20, true)] {
        let mut vp8x = vec![flags, 0, 0, 0];
        vp8x.extend_from_slice(&29u32.to_le_bytes()[..3]);
        vp8x.extend_from_slice(&19u32.to_le_bytes()[..3]);
        let original = riff_webp(&[
            riff_chunk(b"VP8X", &vp8x),
            riff_chunk(b"ICCP", &profile),
            vp8l.clone(),
        ]);
        for chunk in [1, 5, original.len()] {
            let (stored, _) = scrub(&original, chunk, false).unwrap();
            assert_eq!(stored.len(), original.len());
            assert!(!contains(&stored, secret), "flags {flags:#x}");
            assert_eq!(contains(&stored, b"acsp"), kept, "flags {flags:#x}");
            assert_eq!(contains(&stored, b"ICCP"), kept, "flags {flags:#x}");
            assert!(image::load_from_memory(&stored).unwrap().to_rgba8() == pixels);
        }
    }
}

#[test]
fn unknown_webp_chunks_are_blanked_wherever_they_are() {
    let (vp8l, pixels) = vp8l_chunk(30, 20);
    let mut vp8x = vec![0, 0, 0, 0];
    vp8x.extend_from_slice(&29u32.to_le_bytes()[..3]);
    vp8x.extend_from_slice(&19u32.to_le_bytes()[..3]);
    let c2pa = riff_chunk(b"C2PA", b"manifest signed by Alice Example");
    let original = riff_webp(&[
        riff_chunk(b"VP8X", &vp8x),
        c2pa.clone(),
        vp8l.clone(),
        riff_chunk(b"ALCE", b"Alice, odd"),
    ]);
    for chunk in [1, 4, 9, original.len()] {
        let (stored, report) = scrub(&original, chunk, false).unwrap();
        assert!(report.stripped && report.changed);
        assert_eq!(stored.len(), original.len());
        assert!(!contains(&stored, b"Alice") && !contains(&stored, b"C2PA"));
        let mut junk = b"JUNK".to_vec();
        junk.extend_from_slice(&c2pa[4..8]);
        junk.extend(vec![0; c2pa.len() - 8]);
        assert!(contains(&stored, &junk), "same size, zeros");
        assert!(image::load_from_memory(&stored).unwrap().to_rgba8() == pixels);
    }

    // An animation: unknown chunks inside a frame are blanked too.
    let mut anmf = vec![0; 6];
    anmf.extend_from_slice(&29u32.to_le_bytes()[..3]);
    anmf.extend_from_slice(&19u32.to_le_bytes()[..3]);
    anmf.extend_from_slice(&[100, 0, 0, 0]);
    anmf.extend_from_slice(&vp8l);
    anmf.extend(riff_chunk(b"XYZW", b"Alice in a frame"));
    let mut animated_vp8x = vp8x.clone();
    animated_vp8x[0] = 0x02 | 0x10;
    let original = riff_webp(&[
        riff_chunk(b"VP8X", &animated_vp8x),
        riff_chunk(b"ANIM", &[0, 0, 0, 0, 0, 0]),
        riff_chunk(b"ANMF", &anmf),
        riff_chunk(b"ANMF", &anmf),
    ]);
    let expected = image::load_from_memory(&original).unwrap().to_rgba8();
    for chunk in [1, 7, original.len()] {
        let (stored, _) = scrub(&original, chunk, false).unwrap();
        assert!(!contains(&stored, b"Alice") && !contains(&stored, b"XYZW"));
        assert!(contains(&stored, &vp8l), "the frames' image data is kept");
        assert!(image::load_from_memory(&stored).unwrap().to_rgba8() == expected);
    }
    // A frame's chunk that claims more than its frame is corrupt.
    let mut bad = anmf.clone();
    let at = 16 + vp8l.len();
    bad[at + 4..at + 8].copy_from_slice(&1000u32.to_le_bytes());
    let bad = riff_webp(&[
        riff_chunk(b"VP8X", &animated_vp8x),
        riff_chunk(b"ANMF", &bad),
        vec![0; 1000],
    ]);
    assert!(scrub(&bad, 64, false).is_err());
}

trait FromStored {
    fn from_stored(jpeg: &[u8]) -> Option<u8>;
}

/// The orientation in a stored JPEG's EXIF segment.
impl FromStored for Orientation {
    fn from_stored(jpeg: &[u8]) -> Option<u8> {
        let at = jpeg.windows(6).position(|w| w == b"Exif\0\0")? + 6;
        Orientation::from_exif_chunk(&jpeg[at..]).map(|o| o.to_exif())
    }
}

mod heif {
    use super::*;
    use crate::fixtures::{HeifLayout, PHONE_SECRETS, heic_photo};

    #[test]
    fn heif_metadata_items_are_blanked_in_place_and_nothing_moves() {
        for layout in [HeifLayout::MetaFirst, HeifLayout::ExifInIdat] {
            let original = heic_photo(4032, 3024, layout);
            for secret in PHONE_SECRETS {
                assert!(
                    contains(&original, secret.as_bytes()),
                    "{secret} in the fixture"
                );
            }
            let mut results = Vec::new();
            for chunk in [1, 3, 7, 64, 1000, original.len()] {
                let (stored, report) = scrub(&original, chunk, false).unwrap();
                assert_eq!(
                    report,
                    Scrubbed {
                        orientation: 1,
                        stripped: true,
                        changed: true,
                        rescrub: None,
                        late_size: None,
                    }
                );
                results.push(stored);
            }
            let stored = &results[0];
            assert!(
                results.iter().all(|r| r == stored),
                "chunking changes nothing"
            );
            assert_eq!(
                stored.len(),
                original.len(),
                "every iloc offset stays valid"
            );
            for secret in PHONE_SECRETS {
                assert!(
                    !contains(stored, secret.as_bytes()),
                    "{secret} left ({layout:?})"
                );
            }
            // The coded image, its size and its rotation are as they were;
            // the EXIF item is an empty TIFF structure now.
            assert!(contains(stored, &b"hvc1-coded-image-data-".repeat(40)));
            assert!(contains(stored, b"irot\x01"));
            assert!(contains(stored, b"MM\0\x2A\0\0\0\x08\0\0\0\0\0\0"));
            assert!(contains(stored, b"<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"/>"));
            let size = imagesize::blob_size(stored).unwrap();
            assert_eq!(
                (size.width, size.height),
                (3024, 4032),
                "as viewed, turned by irot"
            );
        }
    }

    /// The payload of the first top-level box of `kind`.
    fn top_level_body<'a>(file: &'a [u8], kind: &[u8; 4]) -> &'a [u8] {
        let mut at = 0;
        while at + 8 <= file.len() {
            let size = u32::from_be_bytes(file[at..at + 4].try_into().unwrap()) as usize;
            if &file[at + 4..at + 8] == kind {
                return &file[at + 8..at + size];
            }
            at += size;
        }
        panic!("no {kind:?} box");
    }

    /// A `meta` after `mdat` (Samsung's layout): the stream's bytes keep
    /// the items that had gone by, and a second pass over them overwrites
    /// those exactly as a `meta`-first file's are; the size comes from
    /// that `meta` box.
    #[test]
    fn heif_metadata_before_its_meta_box_is_blanked_by_a_second_pass() {
        let original = heic_photo(640, 480, HeifLayout::MetaLast);
        let (first_first, _) =
            scrub(&heic_photo(640, 480, HeifLayout::MetaFirst), 4096, false).unwrap();
        let mut passes = Vec::new();
        for chunk in [1, 7, 4096, original.len()] {
            let (first, report) = scrub(&original, chunk, false).unwrap();
            assert!(report.stripped && report.changed);
            assert_eq!(report.late_size, Some((480, 640)), "as viewed, from irot");
            let mut rescrub = report.rescrub.expect("a second pass");
            assert!(rescrub.blanked_bytes() > 0);
            let mut second = Vec::new();
            for piece in first.chunks(chunk.min(1000)) {
                second.extend_from_slice(&rescrub.apply(Bytes::copy_from_slice(piece)));
            }
            assert!(rescrub.is_done());
            assert_eq!(second.len(), original.len(), "nothing moves");
            for secret in PHONE_SECRETS {
                assert!(contains(&original, secret.as_bytes()));
                assert!(!contains(&second, secret.as_bytes()), "{secret} left");
            }
            assert_eq!(
                top_level_body(&second, b"mdat"),
                top_level_body(&first_first, b"mdat"),
                "the items are overwritten as a meta-first file's"
            );
            assert_eq!(heif_dimensions(&second, true).unwrap(), Some((480, 640)));
            passes.push(second);
        }
        assert!(
            passes.iter().all(|p| *p == passes[0]),
            "chunking changes nothing"
        );

        // Kept as it is when the service keeps metadata; the size is read.
        let (stored, report) = scrub(&original, 4096, true).unwrap();
        assert_eq!(stored, original);
        assert!(!report.stripped && !report.changed && report.rescrub.is_none());
        assert_eq!(report.late_size, Some((480, 640)));
    }

    /// Until a `meta` box has been read, what was output may hold
    /// metadata; a `meta`-first file's bytes are known clean once it is.
    #[test]
    fn heif_bytes_are_suspect_until_a_meta_box_says_otherwise() {
        for (layout, after) in [(HeifLayout::MetaFirst, false), (HeifLayout::MetaLast, true)] {
            let original = heic_photo(640, 480, layout);
            let mut scrubber = Scrubber::new(false);
            let mut out = Vec::new();
            scrubber
                .push(Bytes::copy_from_slice(&original[..100]), &mut out)
                .unwrap();
            assert!(scrubber.may_rescrub(), "{layout:?}");
            scrubber
                .push(Bytes::copy_from_slice(&original[100..]), &mut out)
                .unwrap();
            assert_eq!(scrubber.may_rescrub(), after, "{layout:?}");
            let mut kept = Scrubber::new(true);
            kept.push(Bytes::copy_from_slice(&original), &mut out)
                .unwrap();
            assert!(
                !kept.may_rescrub(),
                "nothing is blanked when metadata is kept"
            );
        }
        let mut jpeg = Scrubber::new(false);
        jpeg.push(Bytes::from(encoded_jpeg()), &mut Vec::new())
            .unwrap();
        assert!(!jpeg.may_rescrub());
    }

    #[test]
    fn heif_kept_whole_when_metadata_is_kept() {
        let original = heic_photo(640, 480, HeifLayout::MetaFirst);
        let (stored, report) = scrub(&original, 100, true).unwrap();
        assert_eq!(stored, original);
        assert!(!report.stripped && !report.changed);
    }

    #[test]
    fn a_truncated_heif_is_refused() {
        let original = heic_photo(640, 480, HeifLayout::MetaFirst);
        for cut in [13, 40, 200, original.len() / 2, original.len() - 1] {
            let error = scrub(&original[..cut], 64, false).unwrap_err();
            assert!(error.to_string().contains("HEIF"), "cut at {cut}: {error}");
        }
    }

    #[test]
    fn corrupt_heif_boxes_are_refused_not_panicked_on() {
        let original = heic_photo(640, 480, HeifLayout::MetaFirst);
        let meta_end = 600.min(original.len());
        for at in 12..meta_end {
            for value in [0x00, 0x01, 0x7F, 0xFF] {
                let mut damaged = original.clone();
                damaged[at] = value;
                // Either a clear refusal or a stored file: never a panic.
                let _ = scrub(&damaged, 97, false);
            }
        }
    }
}

/// A JPEG's ICC profile keeps its colour and loses its text when it is
/// whole in one APP2 segment; one cut across several segments, or
/// malformed, is dropped (the image renders as sRGB), and the JPEG still
/// decodes.
#[test]
fn jpeg_icc_profiles_lose_their_text_or_are_dropped() {
    let plain = encoded_jpeg();
    let secret = "GPS 48.8584 N 2.2945 E";
    let profile = crate::fixtures::icc_profile_with_text(secret);
    let half = profile.len() / 2;
    for (segments, kept) in [
        (
            vec![[&b"ICC_PROFILE\0\x01\x01"[..], &profile].concat()],
            true,
        ),
        (
            vec![
                [&b"ICC_PROFILE\0\x01\x02"[..], &profile[..half]].concat(),
                [&b"ICC_PROFILE\0\x02\x02"[..], &profile[half..]].concat(),
            ],
            false,
        ),
        (
            vec![[&b"ICC_PROFILE\0\x01\x01"[..], &profile[..half]].concat()],
            false,
        ),
    ] {
        let mut original = plain[..2].to_vec();
        for payload in &segments {
            original.extend(segment(0xE2, payload));
        }
        original.extend_from_slice(&plain[2..]);
        let (stored, report) = scrub(&original, 7, false).unwrap();
        assert!(report.changed);
        assert!(
            !contains(&stored, secret.as_bytes()),
            "{} segments",
            segments.len()
        );
        assert_eq!(contains(&stored, b"ICC_PROFILE\0"), kept);
        if kept {
            assert_eq!(stored.len(), original.len(), "blanked in place");
        }
        image::load_from_memory(&stored).unwrap();
    }
}

/// Free text wherever a HEIF's kept structure has room for it: in every
/// case the marker is gone, nothing moved, and the file still parses.
mod heif_text {
    use super::*;
    use crate::fixtures::{
        HeifItem, HeifParts, heif_file, iso_box, iso_full_box, phone_heif_items,
    };
    use crate::media::scrub::{heif_dimensions, heif_type};

    const MARKER: &str = "MARKER-Alice-Example-48.8584N";

    /// Scrubbed in chunks of 7 (and the second pass applied, if any):
    /// same length, no marker, the primary image's size still read.
    fn scrubbed(original: &[u8]) -> Vec<u8> {
        assert!(
            contains(original, MARKER.as_bytes()),
            "marker in the fixture"
        );
        let mut scrubber = Scrubber::new(false);
        let mut out = Vec::new();
        for piece in original.chunks(7) {
            scrubber
                .push(Bytes::copy_from_slice(piece), &mut out)
                .unwrap();
        }
        let report = scrubber.finish(&mut out).unwrap();
        assert!(report.stripped && report.changed);
        let mut stored = out.concat();
        if let Some(mut rescrub) = report.rescrub {
            stored = rescrub.apply(Bytes::from(stored)).to_vec();
        }
        assert_eq!(stored.len(), original.len(), "nothing moves");
        assert!(!contains(&stored, MARKER.as_bytes()), "the marker is gone");
        assert!(heif_dimensions(&stored, true).unwrap().is_some());
        stored
    }

    fn with_property(property: Vec<u8>) -> Vec<u8> {
        let mut items = phone_heif_items(64, 48);
        items[0].properties.push(property);
        heif_file(&items, &HeifParts::default())
    }

    #[test]
    fn unknown_ftyp_brands_become_known_ones() {
        let ftyp = [
            &b"heic\0\0\0\x01mif1"[..],
            MARKER.as_bytes(),
            b"...",
            b"heicmsf1hevc",
        ]
        .concat();
        let original = heif_file(
            &phone_heif_items(64, 48),
            &HeifParts {
                ftyp,
                ..HeifParts::default()
            },
        );
        let stored = scrubbed(&original);
        assert_eq!(&stored[8..20], b"heic\0\0\0\0mif1");
        assert_eq!(&stored[20..52], b"heic".repeat(8));
        assert_eq!(
            &stored[52..64],
            b"heicmif1heic",
            "sequence brands become image brands"
        );
        assert_eq!(heif_type(&stored), heif_type(&original));
        // An unknown major brand becomes the first known compatible one.
        let original = heif_file(
            &phone_heif_items(64, 48),
            &HeifParts {
                ftyp: [&MARKER.as_bytes()[..8], b"avis"].concat(),
                ..HeifParts::default()
            },
        );
        let (stored, _) = scrub(&original, 5, false).unwrap();
        assert_eq!(&stored[8..20], b"avif\0\0\0\0avif");
        assert_eq!(heif_type(&stored), Some("image/avif"));
    }

    #[test]
    fn only_known_auxiliary_types_are_kept() {
        let alpha = b"urn:mpeg:mpegB:cicp:systems:auxiliary:alpha\0";
        let original = with_property(iso_full_box(
            b"auxC",
            0,
            &[&alpha[..], MARKER.as_bytes()].concat(),
        ));
        let stored = scrubbed(&original);
        assert!(contains(&stored, alpha), "a known type stays");
        let original = with_property(iso_full_box(
            b"auxC",
            0,
            format!("urn:{MARKER}\0{MARKER}").as_bytes(),
        ));
        let stored = scrubbed(&original);
        assert!(contains(
            &stored,
            &[b"auxC\0\0\0\0\0\0\0"[..].to_vec()].concat()
        ));
    }

    fn hvcc(arrays: &[(u8, &[&[u8]])]) -> Vec<u8> {
        let mut body = vec![
            1, 1, 0x60, 0, 0, 0, 0x90, 0, 0, 0, 0, 0, 0x5D, 0xF0, 0, 0xFC, 0xFD, 0xF8, 0xF8, 0, 0,
            0x0F,
        ];
        body.push(arrays.len() as u8);
        for (kind, units) in arrays {
            body.push(0x80 | kind);
            body.extend_from_slice(&(units.len() as u16).to_be_bytes());
            for unit in *units {
                body.extend_from_slice(&(unit.len() as u16).to_be_bytes());
                body.extend_from_slice(unit);
            }
        }
        iso_box(b"hvcC", &body)
    }

    #[test]
    fn hvcc_keeps_parameter_sets_and_loses_sei() {
        let sei = [&[39 << 1, 1][..], MARKER.as_bytes()].concat();
        let suffix = [&[40 << 1, 1][..], MARKER.as_bytes()].concat();
        let (vps, sps, pps) = (
            &[0x40, 1, 0xC, 1][..],
            &[0x42, 1, 1, 1][..],
            &[0x44, 1, 0xC1][..],
        );
        let with_sei = hvcc(&[
            (32, &[vps, &sei]),
            (33, &[sps]),
            (34, &[pps]),
            (39, &[&sei]),
            (40, &[&suffix]),
        ]);
        let clean = hvcc(&[(32, &[vps]), (33, &[sps]), (34, &[pps])]);
        let mut items = phone_heif_items(64, 48);
        items[0].properties.push(with_sei.clone());
        // A second `hvcC`, associated with nothing.
        items[0].properties.push(with_sei.clone());
        let original = heif_file(&items, &HeifParts::default());
        let stored = scrubbed(&original);
        let mut expected = clean.clone();
        expected.resize(with_sei.len(), 0);
        expected[..4].copy_from_slice(&(with_sei.len() as u32).to_be_bytes());
        assert_eq!(
            stored
                .windows(expected.len())
                .filter(|w| *w == expected)
                .count(),
            2,
            "the parameter sets stay, moved up, with their count"
        );
    }

    #[test]
    fn av1c_keeps_only_its_sequence_header() {
        let sequence_header = [0x0A, 3, 0, 0, 0];
        let metadata = [&[0x2A, MARKER.len() as u8][..], MARKER.as_bytes()].concat();
        let body = [&[0x81, 0, 0x0C, 0][..], &sequence_header, &metadata].concat();
        let original = with_property(iso_box(b"av1C", &body));
        let stored = scrubbed(&original);
        assert!(contains(
            &stored,
            &[&b"av1C\x81\0\x0C\0"[..], &sequence_header].concat()
        ));
    }

    #[test]
    fn bytes_after_a_property_defined_length_are_zeroed() {
        for (property, kept) in [
            (
                iso_box(
                    b"colr",
                    &[b"nclx\0\x01\0\x0D\0\x06\x80", MARKER.as_bytes()].concat(),
                ),
                &b"colrnclx\0\x01\0\x0D\0\x06\x80\0"[..],
            ),
            (
                iso_full_box(b"pixi", 0, &[&[3, 8, 8, 8][..], MARKER.as_bytes()].concat()),
                &b"pixi\0\0\0\0\x03\x08\x08\x08\0"[..],
            ),
            (
                iso_full_box(
                    b"ispe",
                    0,
                    &[&[0, 0, 0, 64, 0, 0, 0, 48][..], MARKER.as_bytes()].concat(),
                ),
                &b"ispe\0\0\0\0\0\0\0\x40\0\0\0\x30\0"[..],
            ),
        ] {
            let stored = scrubbed(&with_property(property));
            assert!(contains(&stored, kept), "{kept:?}");
        }
    }

    #[test]
    fn data_references_say_this_file_and_nothing_else() {
        let url = iso_full_box(b"url ", 0, format!("https://{MARKER}\0").as_bytes());
        let urn = iso_full_box(b"urn ", 0, format!("{MARKER}\0{MARKER}\0").as_bytes());
        let dref = iso_full_box(b"dref", 0, &[&2u32.to_be_bytes()[..], &url, &urn].concat());
        let original = heif_file(
            &phone_heif_items(64, 48),
            &HeifParts {
                in_meta: iso_box(b"dinf", &dref),
                ..HeifParts::default()
            },
        );
        let stored = scrubbed(&original);
        assert!(contains(&stored, b"url \0\0\0\x01\0"));
        assert!(contains(&stored, b"urn \0\0\0\x01\0"));
    }

    #[test]
    fn item_strings_other_than_known_content_types_are_zeroed() {
        let mut items = phone_heif_items(64, 48);
        items.push(HeifItem {
            content_type: "text/MARKER-Alice-Example-48.8584N\0MARKER-Alice-Example-48.8584N",
            ..HeifItem::new(b"mime", b"plain")
        });
        items.push(HeifItem {
            name: "\0MARKER-Alice-Example-48.8584N",
            ..HeifItem::new(b"uri ", b"uri data")
        });
        items.push(HeifItem {
            content_type: "application/rdf+xml",
            name: "MARKER-Alice-Example-48.8584N",
            ..HeifItem::new(b"mime", b"<x:xmpmeta/>")
        });
        let stored = scrubbed(&heif_file(&items, &HeifParts::default()));
        assert!(
            contains(&stored, b"mime\0application/rdf+xml\0"),
            "XMP is still XMP"
        );
        assert!(!contains(&stored, b"<x:xmpmeta/>"));
    }

    #[test]
    fn grid_and_iden_items_keep_only_their_defined_bytes() {
        for (grid, kept) in [
            (vec![0, 0, 1, 1, 0, 64, 0, 48], 8),
            (vec![0, 1, 1, 1, 0, 0, 0, 64, 0, 0, 0, 48], 12),
        ] {
            let mut items = phone_heif_items(64, 48);
            let data = [&grid[..], MARKER.as_bytes()].concat();
            items.push(HeifItem::new(b"grid", &data).sized(64, 48));
            items.push(HeifItem::new(b"iden", MARKER.as_bytes()));
            let stored = scrubbed(&heif_file(&items, &HeifParts::default()));
            let mut expected = grid[..kept].to_vec();
            expected.resize(kept + MARKER.len() * 2, 0);
            assert!(contains(&stored, &expected));
        }
    }

    /// A phone's HEIC with a motion track (a sequence in `moov`, its
    /// samples in `mdat`): the still stays, the sequence goes whole.
    #[test]
    fn a_motion_track_goes_and_the_still_stays() {
        for meta_last in [false, true] {
            let original = crate::fixtures::heic_with_motion_track(MARKER, meta_last);
            let stored = scrubbed(&original);
            assert!(!contains(&stored, b"moov"));
            let coded = b"hvc1-coded-image-data-".repeat(40);
            assert_eq!(
                stored.windows(coded.len()).position(|w| w == coded),
                original.windows(coded.len()).position(|w| w == coded),
            );
            assert_eq!(heif_type(&stored), Some("image/heic"));
        }
    }
}

/// PNG and WebP keep only the structures they know, at their defined
/// length, once each.
mod png_webp_lengths {
    use super::*;
    use crate::fixtures::{icc_profile_with_text, png_chunk_bytes as png_chunk};

    /// `plain` (an RGB PNG) with `chunks` after IHDR.
    fn after_ihdr(plain: &[u8], chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut png = plain[..33].to_vec();
        png.extend(chunks.concat());
        png.extend_from_slice(&plain[33..]);
        png
    }

    /// How many chunks of `kind` a PNG holds, walking its structure.
    fn count_png_chunks(png: &[u8], kind: &[u8; 4]) -> usize {
        let (mut at, mut count) = (8, 0);
        while at + 8 <= png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            count += usize::from(&png[at + 4..at + 8] == kind);
            at += 12 + len;
        }
        count
    }

    fn iccp(name: &str, profile: &[u8]) -> Vec<u8> {
        let mut data = name.as_bytes().to_vec();
        data.extend_from_slice(&[0, 0]);
        data.extend(miniz_oxide::deflate::compress_to_vec_zlib(profile, 9));
        png_chunk(b"iCCP", &data)
    }

    /// A flood of `iCCP` chunks, each inflating to a large valid profile:
    /// the first is rewritten, the others go unread.
    #[test]
    fn only_the_first_png_icc_profile_is_read_and_kept() {
        let plain = crate::fixtures::png(8, 8, 3);
        let pixels = image::load_from_memory(&plain).unwrap().to_rgba8();
        let big = icc_profile_with_text(&"A".repeat(1_000_000));
        let first = iccp("Alice Example", &icc_profile_with_text("first"));
        let flood = iccp("Bob Example", &big);
        let mut chunks = vec![first];
        chunks.extend(std::iter::repeat_n(flood, 400));
        let original = after_ihdr(&plain, &chunks);
        let started = std::time::Instant::now();
        let (stored, report) = scrub(&original, 64 * 1024, false).unwrap();
        let took = started.elapsed();
        assert!(report.changed);
        assert_eq!(count_png_chunks(&stored, b"iCCP"), 1);
        assert!(!contains(&stored, b"Alice") && !contains(&stored, b"Bob"));
        assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
        assert!(image::load_from_memory(&stored).unwrap().to_rgba8() == pixels);
        // A profile after PLTE or IDAT is no part of the image.
        let mut late = plain[..plain.len() - 12].to_vec();
        late.extend(iccp("Alice", &icc_profile_with_text("late")));
        late.extend_from_slice(&plain[plain.len() - 12..]);
        let (stored, _) = scrub(&late, 7, false).unwrap();
        assert_eq!(stored, plain);
    }

    /// Each kept ancillary chunk has the length PNG defines for it (for
    /// the image's colour type); one longer or shorter goes whole.
    #[test]
    fn png_chunks_of_another_length_than_their_own_are_dropped() {
        let plain = crate::fixtures::png(8, 8, 4); // colour type 2, RGB
        assert_eq!(plain[25], 2);
        let pixels = image::load_from_memory(&plain).unwrap().to_rgba8();
        let valid: [(&[u8; 4], &[u8]); 9] = [
            (b"gAMA", &[0, 0, 0xB1, 0x8F]),
            (b"cHRM", &[0; 32]),
            (b"sBIT", &[8, 8, 8]),
            (b"cICP", &[1, 13, 0, 1]),
            (b"cLLI", &[0; 8]),
            (b"mDCV", &[0; 24]),
            (b"bKGD", &[0, 1, 0, 2, 0, 3]),
            (b"pHYs", &[0, 0, 0x0B, 0x13, 0, 0, 0x0B, 0x13, 1]),
            (b"tRNS", &[0, 1, 0, 2, 0, 3]),
        ];
        for (kind, data) in valid {
            let kept = after_ihdr(&plain, &[png_chunk(kind, data)]);
            let (stored, _) = scrub(&kept, 5, false).unwrap();
            assert_eq!(stored, kept, "{}", String::from_utf8_lossy(kind));
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"Alice Example");
            let (stored, report) =
                scrub(&after_ihdr(&plain, &[png_chunk(kind, &longer)]), 5, false).unwrap();
            assert!(report.changed);
            assert_eq!(stored, plain, "{}", String::from_utf8_lossy(kind));
            let (stored, _) = scrub(
                &after_ihdr(&plain, &[png_chunk(kind, &data[1..])]),
                5,
                false,
            )
            .unwrap();
            assert_eq!(stored, plain, "{}", String::from_utf8_lossy(kind));
        }
        // sRGB's one byte and a grey image's tRNS, on an RGB image.
        let (stored, _) = scrub(
            &after_ihdr(
                &plain,
                &[png_chunk(b"sRGB", b"\0Alice"), png_chunk(b"tRNS", &[0, 1])],
            ),
            3,
            false,
        )
        .unwrap();
        assert_eq!(stored, plain);
        assert!(image::load_from_memory(&stored).unwrap().to_rgba8() == pixels);
    }

    /// The CRC written is the one computed over what is written: what a
    /// caller put in a kept chunk's CRC field is gone.
    #[test]
    fn png_crcs_are_computed_not_copied() {
        let plain = crate::fixtures::png(8, 8, 5);
        let pixels = image::load_from_memory(&plain).unwrap().to_rgba8();
        let mut original = after_ihdr(&plain, &[png_chunk(b"gAMA", &[0, 0, 0xB1, 0x8F])]);
        // gAMA's CRC, and IDAT's, say "Alic" and "e Ex".
        original[33 + 16 - 4..33 + 16].copy_from_slice(b"Alic");
        let iend = original.len() - 12;
        original[iend - 4..iend].copy_from_slice(b"e Ex");
        for chunk in [1, 3, 4096] {
            let (stored, report) = scrub(&original, chunk, false).unwrap();
            assert!(report.changed);
            assert!(!contains(&stored, b"Alic") && !contains(&stored, b"e Ex"));
            assert_eq!(
                stored,
                after_ihdr(&plain, &[png_chunk(b"gAMA", &[0, 0, 0xB1, 0x8F])])
            );
            assert!(image::load_from_memory(&stored).unwrap().to_rgba8() == pixels);
        }
        // Kept metadata keeps the bytes as they came.
        assert_eq!(scrub(&original, 9, true).unwrap().0, original);
    }

    /// Chunks PNG allows once: a second one (which decoders ignore) goes,
    /// so repeats carry nothing; of `eXIf` only the first is read.
    #[test]
    fn repeated_png_chunks_are_dropped() {
        let plain = crate::fixtures::png(8, 8, 6);
        let gama = png_chunk(b"gAMA", &[0, 0, 0xB1, 0x8F]);
        let mut chunks = vec![gama.clone()];
        for _ in 0..1000 {
            chunks.push(png_chunk(b"gAMA", b"Alic"));
            chunks.push(png_chunk(b"eXIf", &exif_tiff(6, "Alice Example")));
        }
        let original = after_ihdr(&plain, &chunks);
        let (stored, report) = scrub(&original, 100, false).unwrap();
        assert_eq!(report.orientation, 6);
        assert_eq!(count_png_chunks(&stored, b"gAMA"), 1);
        assert_eq!(count_png_chunks(&stored, b"eXIf"), 1);
        assert!(!contains(&stored, b"Alic"));
        assert!(contains(&stored, &gama));
    }

    #[test]
    fn corrupt_ihdr_or_iend_is_refused() {
        let plain = crate::fixtures::png(8, 8, 7);
        let mut missing = plain[..8].to_vec();
        missing.extend_from_slice(&plain[33..]);
        let twice = after_ihdr(&plain, &[plain[8..33].to_vec()]);
        for bad in [missing, twice] {
            let error = scrub(&bad, 16, false).unwrap_err();
            assert!(error.to_string().contains("corrupt"), "{error}");
        }
    }

    /// A lossless WebP with `VP8X` (`flags`, then `reserved`) and `more`
    /// chunks between it and the image.
    fn extended_webp(
        flags: u8,
        reserved: [u8; 3],
        more: &[Vec<u8>],
    ) -> (Vec<u8>, image::RgbaImage) {
        let (vp8l, pixels) = vp8l_chunk(12, 10);
        let mut vp8x = vec![flags];
        vp8x.extend_from_slice(&reserved);
        vp8x.extend_from_slice(&11u32.to_le_bytes()[..3]);
        vp8x.extend_from_slice(&9u32.to_le_bytes()[..3]);
        let mut chunks = vec![riff_chunk(b"VP8X", &vp8x)];
        chunks.extend_from_slice(more);
        chunks.push(vp8l);
        (riff_webp(&chunks), pixels)
    }

    /// One `ICCP` (the one `VP8X` announces) is read; later ones are
    /// blanked unread, and so are later `EXIF` and `VP8X` chunks.
    #[test]
    fn only_the_first_webp_icc_profile_and_exif_are_read() {
        let profile = icc_profile_with_text("Alice Example");
        let mut more = vec![riff_chunk(b"ICCP", &profile)];
        for _ in 0..200 {
            more.push(riff_chunk(b"ICCP", &icc_profile_with_text("Bob Example")));
        }
        let mut exif = b"Exif\0\0".to_vec();
        exif.extend(exif_tiff(6, "Carol"));
        more.push(riff_chunk(b"EXIF", &exif));
        more.push(riff_chunk(b"EXIF", &exif_tiff(3, "Dave")));
        let (original, pixels) = extended_webp(0x20, [0; 3], &more);
        for chunk in [1, 13, original.len()] {
            let (stored, report) = scrub(&original, chunk, false).unwrap();
            assert_eq!(stored.len(), original.len());
            assert_eq!(report.orientation, 6);
            for secret in [&b"Alice"[..], b"Bob", b"Carol", b"Dave"] {
                assert!(!contains(&stored, secret));
            }
            let profiles = stored.windows(4).filter(|w| *w == b"ICCP").count();
            assert_eq!(profiles, 1);
            assert!(image::load_from_memory(&stored).unwrap().to_rgba8() == pixels);
        }
    }

    /// `VP8X` is 10 bytes, its reserved bits and bytes zero: a longer one
    /// is refused, reserved ones are zeroed.
    #[test]
    fn vp8x_keeps_only_its_defined_bits() {
        let (original, pixels) = extended_webp(0xC1 | 0x08, *b"Ali", &[]);
        let (stored, report) = scrub(&original, 3, false).unwrap();
        assert!(report.changed);
        assert_eq!(stored.len(), original.len());
        assert!(!contains(&stored, b"Ali"));
        let at = stored.windows(4).position(|w| w == b"VP8X").unwrap();
        assert_eq!(&stored[at + 8..at + 12], &[0, 0, 0, 0]);
        assert!(image::load_from_memory(&stored).unwrap().to_rgba8() == pixels);
        let (plain, _) = extended_webp(0, [0; 3], &[]);
        assert_eq!(scrub(&plain, 5, false).unwrap().0, plain);
        // Longer: text after the canvas size.
        let (vp8l, _) = vp8l_chunk(12, 10);
        let mut vp8x = vec![0; 4];
        vp8x.extend_from_slice(&11u32.to_le_bytes()[..3]);
        vp8x.extend_from_slice(&9u32.to_le_bytes()[..3]);
        vp8x.extend_from_slice(b"Alice Example");
        let long = riff_webp(&[riff_chunk(b"VP8X", &vp8x), vp8l]);
        let error = scrub(&long, 7, false).unwrap_err();
        assert!(error.to_string().contains("VP8X"), "{error}");
        assert_eq!(scrub(&long, 7, true).unwrap().0, long);
    }
}
