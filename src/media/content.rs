//! Inspection of an image's bytes as they stream in: type sniffing, header
//! dimensions, size limits and checksums, without decoding pixels.
//!
//! Bounds: the header kept for sniffing and dimensions is at most
//! [`HEADER_LIMIT`] bytes and never more than the bytes received; it is
//! probed at 64 bytes, then each time it doubles, so parsing it costs at
//! most twice its size. `imagesize` walks the header's segments, chunks or
//! boxes by the lengths they give without allocating for them; GIFs are
//! walked by [`GifFrames`], which holds 13 bytes.
use sha2::{Digest, Sha256};

use super::MediaError;
use crate::media::gif::GifFrames;
use crate::media::scrub::{heif_dimensions, heif_meta_after_media, heif_type};
use crate::media::variants::{Renderer, memory_needed};

/// Bytes of the stream kept to find the type and dimensions. JPEG headers
/// can sit behind large EXIF and ICC segments (64 KiB each), so this is
/// generous; it bounds the memory an upload holds for inspection.
const HEADER_LIMIT: usize = 1024 * 1024;
/// Bytes needed before the type is sniffed (a HEIF `ftyp` box with its brands).
const SNIFF_LEN: usize = 64;

/// The media types the service accepts.
pub const ACCEPTED_TYPES: &[&str] = &[
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/webp",
    "image/avif",
    "image/heic",
    "image/heif",
    "image/bmp",
    "image/tiff",
];

/// What the server allows for any upload.
#[derive(Clone, Copy, Debug)]
pub struct ContentLimits {
    pub max_bytes: u64,
    pub max_pixels: u64,
    /// Most passes over its coefficients a JPEG's scans may take to
    /// decode ([`crate::media::limits::JpegDecodeWork`]); the scrubber
    /// refuses more.
    pub max_jpeg_decode_passes: u32,
}

/// What the caller declared about the bytes; each is checked when set.
#[derive(Clone, Debug, Default)]
pub struct Declared {
    pub content_type: Option<String>,
    pub size: Option<u64>,
    pub sha256_hex: Option<String>,
    pub crc32c: Option<u32>,
}

/// What the service learned from the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentFacts {
    pub content_type: &'static str,
    pub size_bytes: u64,
    pub sha256_hex: String,
    pub crc32c: u32,
    pub width: u32,
    pub height: u32,
}

/// Checks an upload's bytes chunk by chunk, failing as soon as a rule is
/// broken rather than after the whole image has been received.
pub struct ContentInspector {
    limits: ContentLimits,
    declared: Declared,
    size: u64,
    sha256: Sha256,
    crc32c: u32,
    header: Vec<u8>,
    content_type: Option<&'static str>,
    dimensions: Option<(u32, u32)>,
    /// A HEIF whose `meta` box comes after `mdat`: its dimensions are
    /// given at the end of the stream ([`ContentInspector::finish_with`]).
    late_dimensions: bool,
    next_probe_at: usize,
    /// GIFs: every frame's size, whatever the header says; and how many
    /// of the stream's bytes it has walked.
    gif: Option<GifFrames>,
    gif_walked: u64,
    /// `--max-render-memory` when variants are made: an image whose
    /// render the header shows will be refused is refused with it.
    max_render_memory: Option<u64>,
    /// The longest side of the largest variant: what the render estimate
    /// covers.
    largest_variant: u32,
}

impl ContentInspector {
    /// Fails at once when the declared size alone breaks the limits.
    pub fn new(limits: ContentLimits, declared: Declared) -> Result<Self, MediaError> {
        if let Some(size) = declared.size {
            if size == 0 {
                return Err(MediaError::invalid("expected_size must be positive"));
            }
            if size > limits.max_bytes {
                return Err(too_large(limits.max_bytes));
            }
        }
        if let Some(declared_type) = &declared.content_type
            && canonical_type(declared_type).is_none()
        {
            return Err(MediaError::invalid(format!(
                "content_type {declared_type:?} is not an accepted image type"
            )));
        }
        Ok(Self {
            limits,
            declared,
            size: 0,
            sha256: Sha256::new(),
            crc32c: 0,
            header: Vec::new(),
            content_type: None,
            dimensions: None,
            late_dimensions: false,
            next_probe_at: SNIFF_LEN,
            gif: None,
            gif_walked: 0,
            max_render_memory: None,
            largest_variant: 0,
        })
    }

    /// Refuses, as soon as the header gives the dimensions, an image
    /// whose render would be refused for needing more than
    /// `max_render_memory` (`None` when no variants are made): its render
    /// is estimated from the header as the render estimates it
    /// ([`memory_needed`]), before the rest of the upload is received
    /// and scrubbed (a PNG's image data inflated). A JPEG is left to the
    /// render: its estimate depends on whether it has several scans,
    /// which the header need not show, and its scrubber decodes nothing.
    /// `largest` is the longest side of the largest variant configured.
    pub fn refusing_renders_over(mut self, max_render_memory: Option<u64>, largest: u32) -> Self {
        self.max_render_memory = max_render_memory;
        self.largest_variant = largest;
        self
    }

    /// Bytes seen so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Takes the next chunk of the image, with its optional CRC32C.
    pub fn feed(&mut self, chunk: &[u8], chunk_crc32c: Option<u32>) -> Result<(), MediaError> {
        if let Some(expected) = chunk_crc32c
            && crc32c::crc32c(chunk) != expected
        {
            return Err(MediaError::DataLoss(format!(
                "chunk_crc32c does not match the chunk at offset {}",
                self.size
            )));
        }
        let size = self.size + chunk.len() as u64;
        if size > self.limits.max_bytes {
            return Err(too_large(self.limits.max_bytes));
        }
        if let Some(expected) = self.declared.size
            && size > expected
        {
            return Err(MediaError::OutOfRange(format!(
                "received more than the {expected} bytes of expected_size"
            )));
        }
        let offset = self.size;
        self.size = size;
        self.sha256.update(chunk);
        self.crc32c = crc32c::crc32c_append(self.crc32c, chunk);

        // The header is gathered only up to the next probe, so a first
        // chunk of megabytes is not copied to read a few hundred bytes.
        let mut rest = chunk;
        while self.dimensions.is_none() && !self.late_dimensions && !rest.is_empty() {
            let wanted = self.next_probe_at.saturating_sub(self.header.len()).max(1);
            let (head, tail) = rest.split_at(wanted.min(rest.len()));
            self.header.extend_from_slice(head);
            rest = tail;
            if self.header.len() >= self.next_probe_at || self.header.len() == HEADER_LIMIT {
                self.inspect_header(false)?;
            }
        }
        if let Some(gif) = &mut self.gif {
            let walked = usize::try_from(self.gif_walked - offset).unwrap_or(usize::MAX);
            gif.feed(chunk.get(walked..).unwrap_or_default())?;
            self.gif_walked = self.size;
        }
        Ok(())
    }

    /// Ends the stream: checks declared size and checksums, and that the
    /// type and dimensions were found.
    pub fn finish(self) -> Result<ContentFacts, MediaError> {
        self.finish_with(None)
    }

    /// [`ContentInspector::finish`], given the size of a HEIF whose `meta`
    /// box came after `mdat` as the scrubber read it from that box
    /// ([`crate::media::scrub::Scrubbed::late_size`]); it is checked
    /// against the limits as a header's would be.
    pub fn finish_with(
        mut self,
        late_size: Option<(u32, u32)>,
    ) -> Result<ContentFacts, MediaError> {
        if self.size == 0 {
            return Err(MediaError::invalid("the image is empty"));
        }
        if let Some(expected) = self.declared.size
            && self.size != expected
        {
            return Err(MediaError::OutOfRange(format!(
                "received {} bytes but expected_size is {expected}",
                self.size
            )));
        }
        let sha256_hex = hex::encode(self.sha256.finalize_reset());
        if let Some(expected) = &self.declared.sha256_hex
            && *expected != sha256_hex
        {
            return Err(MediaError::DataLoss(
                "sha256 does not match the received bytes".into(),
            ));
        }
        if let Some(expected) = self.declared.crc32c
            && expected != self.crc32c
        {
            return Err(MediaError::DataLoss(
                "crc32c does not match the received bytes".into(),
            ));
        }
        if self.dimensions.is_none() && !self.late_dimensions {
            self.inspect_header(true)?;
        }
        if self.late_dimensions {
            let (width, height) = late_size.ok_or_else(|| {
                MediaError::invalid(
                    "the HEIF's meta box, which comes after its media data (mdat), is missing",
                )
            })?;
            self.check_dimensions(width, height)?;
        }
        if let (Some(gif), Some(_)) = (&self.gif, self.dimensions) {
            // The box of the screen and every frame, not the screen alone,
            // checked like a header's: a file that ends inside its screen
            // descriptor has walked none of it.
            let (width, height) = gif.dimensions();
            self.check_dimensions(width, height)?;
        }
        let (Some(content_type), Some((width, height))) = (self.content_type, self.dimensions)
        else {
            return Err(MediaError::invalid(
                "could not read the image's type and dimensions",
            ));
        };
        Ok(ContentFacts {
            content_type,
            size_bytes: self.size,
            sha256_hex,
            crc32c: self.crc32c,
            width,
            height,
        })
    }

    /// Sniffs the type, then reads the dimensions once the header holds them.
    /// `complete` means no more bytes will come.
    fn inspect_header(&mut self, complete: bool) -> Result<(), MediaError> {
        if self.content_type.is_none() {
            if self.header.len() < SNIFF_LEN && !complete {
                return Ok(());
            }
            let sniffed = sniff(&self.header).ok_or_else(|| {
                MediaError::invalid(
                    "the bytes are not an image of an accepted type (JPEG, PNG, GIF, WebP, AVIF, HEIC, BMP, TIFF)",
                )
            })?;
            if let Some(declared) = &self.declared.content_type
                && !types_agree(declared, sniffed)
            {
                return Err(MediaError::invalid(format!(
                    "content_type {declared:?} disagrees with the bytes, which are {sniffed}"
                )));
            }
            self.content_type = Some(sniffed);
            if sniffed == "image/gif" {
                // Everything so far is in the header: walk it, then every
                // later byte (see `feed`).
                let mut gif = GifFrames::new(self.limits.max_pixels);
                gif.feed(&self.header)?;
                self.gif_walked = self.header.len() as u64;
                self.gif = Some(gif);
            }
        }
        let at_end = complete || self.header.len() == HEADER_LIMIT;
        let size = if matches!(self.content_type, Some(t) if heif_type_name(t)) {
            // Our own bounded reading: the primary item's size, not a tile's.
            let size = heif_dimensions(&self.header, false)?;
            if size.is_none() && heif_meta_after_media(&self.header) {
                // Read from the `meta` box at the end of the stream.
                self.late_dimensions = true;
                self.header = Vec::new();
                return Ok(());
            }
            match size {
                None if at_end => heif_dimensions(&self.header, true)?,
                size => size,
            }
        } else {
            match imagesize::blob_size(&self.header) {
                Ok(size) => Some((
                    u32::try_from(size.width).unwrap_or(u32::MAX),
                    u32::try_from(size.height).unwrap_or(u32::MAX),
                )),
                Err(_) if at_end => {
                    return Err(MediaError::invalid(
                        "could not read the image's dimensions from its header",
                    ));
                }
                Err(_) => None,
            }
        };
        let Some((width, height)) = size else {
            // Most likely the header is not complete yet: probe again when
            // twice as many bytes are in.
            self.next_probe_at = (self.header.len() * 2).min(HEADER_LIMIT);
            return Ok(());
        };
        self.check_dimensions(width, height)?;
        self.header = Vec::new();
        Ok(())
    }

    /// Notes the image's dimensions, refusing a zero one or more pixels
    /// than allowed.
    fn check_dimensions(&mut self, width: u32, height: u32) -> Result<(), MediaError> {
        if width == 0 || height == 0 {
            return Err(MediaError::invalid(
                "the image header gives a zero dimension",
            ));
        }
        let pixels = u64::from(width) * u64::from(height);
        if pixels > self.limits.max_pixels {
            return Err(MediaError::TooLarge(format!(
                "the image has {pixels} pixels ({width}x{height}); the limit is {}",
                self.limits.max_pixels
            )));
        }
        if let (Some(cap), Some(content_type)) = (self.max_render_memory, self.content_type)
            && content_type != "image/jpeg"
            && Renderer::can_render(content_type)
        {
            let needed = memory_needed(
                &self.header,
                content_type,
                width,
                height,
                self.largest_variant,
            );
            if needed > cap {
                return Err(render_memory_refused(needed, cap));
            }
        }
        self.dimensions = Some((width, height));
        Ok(())
    }
}

/// The refusal of an image whose render would need `needed` bytes of
/// memory, over `cap` (`--max-render-memory`).
pub fn render_memory_refused(needed: u64, cap: u64) -> MediaError {
    MediaError::TooLarge(format!(
        "the image needs about {} MiB of memory to decode and resize; the limit is {} MiB \
         (--max-render-memory)",
        needed >> 20,
        cap >> 20
    ))
}

/// Whether a sniffed type is one of the HEIF family.
fn heif_type_name(content_type: &str) -> bool {
    matches!(content_type, "image/heic" | "image/heif" | "image/avif")
}

fn too_large(max_bytes: u64) -> MediaError {
    MediaError::TooLarge(format!(
        "the image is larger than the limit of {max_bytes} bytes"
    ))
}

/// The media type of an image, from its first bytes.
pub fn sniff(header: &[u8]) -> Option<&'static str> {
    use imagesize::ImageType;
    if header.get(4..8) == Some(b"ftyp") {
        // One list of HEIF brands for the sniffer and the scrubber.
        return heif_type(header);
    }
    let kind = imagesize::image_type(header).ok()?;
    Some(match kind {
        ImageType::Jpeg => "image/jpeg",
        ImageType::Png => "image/png",
        ImageType::Gif => "image/gif",
        ImageType::Webp => "image/webp",
        ImageType::Bmp => "image/bmp",
        ImageType::Tiff => "image/tiff",
        _ => return None,
    })
}

/// The canonical name of a declared media type, accepting common aliases
/// and parameters; `None` when it is not an accepted image type.
/// `application/octet-stream` says nothing and is treated as undeclared.
fn canonical_type(declared: &str) -> Option<&'static str> {
    let essence = declared
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let canonical = match essence.as_str() {
        "image/jpg" | "image/pjpeg" => "image/jpeg",
        "image/x-ms-bmp" | "image/x-bmp" => "image/bmp",
        "image/heic-sequence" => "image/heic",
        "image/heif-sequence" => "image/heif",
        "application/octet-stream" => "application/octet-stream",
        other => ACCEPTED_TYPES.iter().find(|t| **t == other).copied()?,
    };
    Some(canonical)
}

fn types_agree(declared: &str, sniffed: &'static str) -> bool {
    match canonical_type(declared) {
        Some("application/octet-stream") => true,
        // HEIC and AVIF are both HEIF containers.
        Some("image/heif") => heif_type_name(sniffed),
        Some(canonical) => canonical == sniffed,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fixtures::png_header_only as png_header;

    fn limits() -> ContentLimits {
        ContentLimits {
            max_bytes: 10_000,
            max_pixels: 1_000_000,
            max_jpeg_decode_passes: crate::media::limits::DEFAULT_MAX_JPEG_DECODE_PASSES,
        }
    }

    fn inspect(bytes: &[u8], declared: Declared) -> Result<ContentFacts, MediaError> {
        let mut inspector = ContentInspector::new(limits(), declared)?;
        for chunk in bytes.chunks(7) {
            inspector.feed(chunk, None)?;
        }
        inspector.finish()
    }

    /// Found by fuzzing (`fuzz/regressions/content/`): a GIF cut inside its
    /// 13-byte screen descriptor, whose 12 bytes still give imagesize a
    /// size, was taken as 0 by 0.
    #[test]
    fn a_gif_that_ends_inside_its_screen_descriptor_is_refused() {
        let cut = b"GIF8\x10MM\0\0\x04\x0c!";
        let error = inspect(cut, Declared::default()).unwrap_err();
        assert!(matches!(error, MediaError::Invalid(_)), "{error:?}");
    }

    #[test]
    fn a_png_header_gives_type_and_dimensions() {
        let facts = inspect(&png_header(640, 480), Declared::default()).unwrap();
        assert_eq!(facts.content_type, "image/png");
        assert_eq!((facts.width, facts.height), (640, 480));
        assert_eq!(facts.size_bytes, png_header(640, 480).len() as u64);
        assert_eq!(facts.crc32c, crc32c::crc32c(&png_header(640, 480)));
    }

    /// Real files of every decodable type, the JPEG with a large EXIF
    /// segment before its frame header, read at every chunking: the header
    /// is probed as it grows, and no probe of a partial header may give
    /// other dimensions than the whole file does.
    #[test]
    fn real_files_give_their_dimensions_however_they_are_chunked() {
        use image::ImageFormat;
        let picture = image::RgbImage::from_fn(67, 41, |x, y| image::Rgb([x as u8, y as u8, 9]));
        let mut files = Vec::new();
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Gif,
            ImageFormat::WebP,
            ImageFormat::Bmp,
            ImageFormat::Tiff,
        ] {
            let mut bytes = std::io::Cursor::new(Vec::new());
            picture.write_to(&mut bytes, format).unwrap();
            files.push((format, bytes.into_inner()));
        }
        let jpeg = files[1].1.clone();
        let mut exif = vec![0xFF, 0xD8, 0xFF, 0xE1, 0xFF, 0xF0];
        exif.extend_from_slice(b"Exif\0\0");
        exif.resize(4 + 0xFFF0, 0x5A);
        exif.extend_from_slice(&jpeg[2..]);
        files.push((ImageFormat::Jpeg, exif));

        let limits = ContentLimits {
            max_bytes: 1 << 20,
            max_pixels: 1 << 20,
            max_jpeg_decode_passes: crate::media::limits::DEFAULT_MAX_JPEG_DECODE_PASSES,
        };
        for (format, bytes) in &files {
            for size in [1, 7, 100, 4096, bytes.len()] {
                let mut inspector = ContentInspector::new(limits, Declared::default()).unwrap();
                for chunk in bytes.chunks(size) {
                    inspector.feed(chunk, None).unwrap();
                }
                let facts = inspector.finish().unwrap();
                assert_eq!(
                    (facts.width, facts.height),
                    (67, 41),
                    "{format:?} in chunks of {size}"
                );
            }
        }
    }

    /// A HEIF's size is its primary item's: a Samsung grid's whole size,
    /// not the first tile's `ispe`; and a `miaf` file is HEIF.
    #[test]
    fn a_heif_grid_gives_the_grids_size_not_a_tiles() {
        let limits = ContentLimits {
            max_bytes: 1 << 20,
            max_pixels: 1 << 30,
            max_jpeg_decode_passes: crate::media::limits::DEFAULT_MAX_JPEG_DECODE_PASSES,
        };
        let grid = crate::fixtures::heic_grid(4000, 1848, 512, 0);
        for size in [1, 64, grid.len()] {
            let mut inspector = ContentInspector::new(limits, Declared::default()).unwrap();
            for chunk in grid.chunks(size) {
                inspector.feed(chunk, None).unwrap();
            }
            let facts = inspector.finish().unwrap();
            assert_eq!(facts.content_type, "image/heic");
            assert_eq!(
                (facts.width, facts.height),
                (4000, 1848),
                "chunks of {size}"
            );
        }
        let mut miaf = grid.clone();
        miaf[8..12].copy_from_slice(b"miaf");
        assert_eq!(sniff(&miaf), Some("image/heic"), "by its compatible brands");
    }

    #[test]
    fn text_is_not_an_image() {
        let err = inspect(&[b'x'; 200], Declared::default()).unwrap_err();
        assert!(matches!(err, MediaError::Invalid(_)));
    }

    /// A HEIF whose `meta` box comes after a large `mdat`: the header
    /// stops being gathered at the `mdat`, and the size the scrubber read
    /// from the `meta` box is checked against the limits at the end.
    #[test]
    fn a_heif_meta_after_mdat_gives_its_size_at_the_end() {
        use crate::fixtures::{HeifLayout, heic_photo_sized};
        let late = heic_photo_sized(640, 480, HeifLayout::MetaLast, 3 * HEADER_LIMIT);
        let fed = |bytes: &[u8]| {
            let limits = ContentLimits {
                max_bytes: 1 << 30,
                ..limits()
            };
            let mut inspector = ContentInspector::new(limits, Declared::default()).unwrap();
            for chunk in bytes.chunks(64 * 1024) {
                inspector.feed(chunk, None).unwrap();
            }
            assert!(inspector.header.len() < 1024, "the header is not gathered");
            inspector
        };
        let error = fed(&late).finish().unwrap_err();
        assert!(error.to_string().contains("meta box"), "{error}");
        let facts = fed(&late).finish_with(Some((480, 640))).unwrap();
        assert_eq!(
            (facts.content_type, facts.width, facts.height),
            ("image/heic", 480, 640)
        );
        let bomb = fed(&late).finish_with(Some((100_000, 100_000)));
        assert!(matches!(bomb, Err(MediaError::TooLarge(_))), "{bomb:?}");
        // A meta-first file's size comes from its header, as before.
        let first = heic_photo_sized(640, 480, HeifLayout::MetaFirst, 3 * HEADER_LIMIT);
        let facts = fed(&first).finish().unwrap();
        assert_eq!((facts.width, facts.height), (480, 640));
    }

    #[test]
    fn non_images_fail_before_the_whole_stream_arrives() {
        let mut inspector = ContentInspector::new(limits(), Declared::default()).unwrap();
        assert!(inspector.feed(&[b'x'; SNIFF_LEN], None).is_err());
    }

    #[test]
    fn a_declared_type_must_agree_with_the_bytes() {
        let declared = |t: &str| Declared {
            content_type: Some(t.into()),
            ..Declared::default()
        };
        assert!(inspect(&png_header(1, 1), declared("image/png")).is_ok());
        assert!(inspect(&png_header(1, 1), declared("IMAGE/PNG; q=1")).is_ok());
        assert!(inspect(&png_header(1, 1), declared("application/octet-stream")).is_ok());
        assert!(matches!(
            inspect(&png_header(1, 1), declared("image/jpeg")),
            Err(MediaError::Invalid(_))
        ));
        assert!(matches!(
            ContentInspector::new(limits(), declared("text/html")),
            Err(MediaError::Invalid(_))
        ));
    }

    #[test]
    fn too_many_pixels_are_refused_from_the_header_alone() {
        let mut inspector = ContentInspector::new(limits(), Declared::default()).unwrap();
        let err = inspector
            .feed(&png_header(40_000, 40_000), None)
            .unwrap_err();
        assert!(matches!(err, MediaError::TooLarge(_)));
    }

    #[test]
    fn a_render_certain_to_be_refused_is_refused_from_the_header() {
        // 1000 × 1000 RGB: about 20 MiB to decode and resize.
        let header = png_header(1000, 1000);
        let estimate = memory_needed(&header, "image/png", 1000, 1000, 1080);
        assert!((16 << 20..32 << 20).contains(&estimate), "{estimate}");
        let inspector = |cap| {
            ContentInspector::new(limits(), Declared::default())
                .unwrap()
                .refusing_renders_over(cap, 1080)
        };
        // Over the cap: refused as the render would be, from the first
        // 64 bytes.
        let err = inspector(Some(16 << 20))
            .feed(&header[..64], None)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            render_memory_refused(estimate, 16 << 20).to_string()
        );
        assert!(matches!(err, MediaError::TooLarge(_)), "{err:?}");
        assert!(err.to_string().contains("--max-render-memory"), "{err}");
        // Within it, or with no variants made, the image is taken.
        for cap in [Some(32 << 20), None] {
            let mut inspector = inspector(cap);
            inspector.feed(&header, None).unwrap();
            assert_eq!(inspector.finish().unwrap().width, 1000);
        }
    }

    #[test]
    fn crossing_the_byte_limit_fails_at_that_chunk() {
        let mut inspector = ContentInspector::new(limits(), Declared::default()).unwrap();
        let header = png_header(10, 10);
        inspector.feed(&header, None).unwrap();
        inspector
            .feed(&vec![0; 10_000 - header.len()], None)
            .unwrap();
        let err = inspector.feed(&[0; 1], None).unwrap_err();
        assert!(matches!(err, MediaError::TooLarge(_)));
    }

    #[test]
    fn declared_sizes_are_enforced_both_ways() {
        let declared = |n| Declared {
            size: Some(n),
            ..Declared::default()
        };
        let len = png_header(2, 2).len() as u64;
        assert!(inspect(&png_header(2, 2), declared(len)).is_ok());
        assert!(matches!(
            inspect(&png_header(2, 2), declared(len - 1)),
            Err(MediaError::OutOfRange(_))
        ));
        assert!(matches!(
            inspect(&png_header(2, 2), declared(len + 1)),
            Err(MediaError::OutOfRange(_))
        ));
        assert!(matches!(
            ContentInspector::new(limits(), declared(10_001)),
            Err(MediaError::TooLarge(_))
        ));
    }

    #[test]
    fn checksum_mismatches_are_data_loss() {
        let bytes = png_header(3, 3);
        let good_sha = hex::encode(Sha256::digest(&bytes));
        let sha = |s: String| Declared {
            sha256_hex: Some(s),
            ..Declared::default()
        };
        assert!(inspect(&bytes, sha(good_sha)).is_ok());
        assert!(matches!(
            inspect(&bytes, sha("0".repeat(64))),
            Err(MediaError::DataLoss(_))
        ));
        let crc = Declared {
            crc32c: Some(crc32c::crc32c(&bytes) ^ 1),
            ..Declared::default()
        };
        assert!(matches!(inspect(&bytes, crc), Err(MediaError::DataLoss(_))));

        let mut inspector = ContentInspector::new(limits(), Declared::default()).unwrap();
        let err = inspector
            .feed(&bytes, Some(crc32c::crc32c(&bytes) ^ 1))
            .unwrap_err();
        assert!(matches!(err, MediaError::DataLoss(_)));
    }

    #[test]
    fn an_empty_stream_is_not_an_image() {
        let inspector = ContentInspector::new(limits(), Declared::default()).unwrap();
        assert!(matches!(inspector.finish(), Err(MediaError::Invalid(_))));
    }

    #[test]
    fn a_truncated_header_is_rejected() {
        let bytes = &png_header(5, 5)[..20];
        assert!(matches!(
            inspect(bytes, Declared::default()),
            Err(MediaError::Invalid(_))
        ));
    }
}
