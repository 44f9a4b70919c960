//! Renditions made from an uploaded image: `small` and `medium` variants,
//! BlurHash and ThumbHash placeholders, and the PDQ perceptual hash.
//!
//! Decoding only starts after the header's dimensions passed the pixel limit
//! (see [`crate::media::content`]); it runs on the blocking pool, at most
//! [`RenderLimits::max_concurrent`] at a time, each with a bound on the
//! memory its decoder may allocate. JPEGs are decoded at the smallest DCT
//! scale (1/8, 1/4, 1/2) that still covers the largest variant with some
//! headroom (see [`JPEG_DECODE_HEADROOM`]), resizing
//! uses SIMD convolution (Lanczos3), and the EXIF orientation is applied so
//! variants come out upright.
//!
//! Variants of opaque images are JPEG, which every browser and phone
//! decodes, made by mozjpeg (progressive, optimised Huffman tables, its
//! own quantisation tables; see
//! [`encode::JPEG_ACKNOWLEDGED`]). Images with real transparency get
//! lossless WebP instead, which keeps the alpha channel and is smaller than
//! PNG. The encoders and their measured settings are in [`encode`].
use std::io::{Cursor, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::metadata::Orientation;
use image::{DynamicImage, ImageFormat, RgbImage, RgbaImage};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::MediaError;
use super::pdq::{self, Pdq};

pub mod compress;
pub mod encode;
mod libjpeg;
#[cfg(feature = "libjpeg-turbo")]
mod turbo;

/// The variants made for every decodable image unless `--variant` says
/// otherwise: name and longest side, smallest first (the order of
/// `Image.variants`).
pub const DEFAULT_VARIANTS: [(&str, u32); 2] = [("small", 320), ("medium", 1080)];

/// A variant to make: its name and the longest side it is fitted in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VariantSize {
    pub name: String,
    pub longest_side: u32,
}

/// [`DEFAULT_VARIANTS`], as sizes.
pub fn default_sizes() -> Vec<VariantSize> {
    DEFAULT_VARIANTS
        .iter()
        .map(|&(name, longest_side)| VariantSize {
            name: name.to_owned(),
            longest_side,
        })
        .collect()
}

/// The longest side of the largest of `sizes`: what decoding and the memory
/// estimate must cover.
pub fn largest_side(sizes: &[VariantSize]) -> u32 {
    sizes.iter().map(|s| s.longest_side).max().unwrap_or(0)
}
pub use super::limits::MAX_ICC_PROFILE;
pub use encode::MAX_VARIANT_ICC_PROFILE;
/// Longest side of the image both placeholders are computed from: the
/// BlurHash keeps 4 cosine components along a side and the ThumbHash at
/// most 7, so more pixels would change nothing visible. (ThumbHash takes
/// up to 100 px; from 100 px its hash costs 1.1 ms, from 32 px 0.1 ms.)
const PLACEHOLDER_SOURCE: u32 = 32;

/// How much rendering may take at once.
#[derive(Clone, Copy, Debug)]
pub struct RenderLimits {
    /// Renders (decode, resize, encode) running at once.
    pub max_concurrent: usize,
    /// Bytes one decoder may allocate for pixels.
    pub max_memory: u64,
    /// Most passes over its coefficients a HEIF's JPEG-coded image may
    /// take to decode (`--max-jpeg-decode-passes`; an uploaded JPEG's are
    /// counted as it streams in).
    pub max_jpeg_decode_passes: u32,
}

/// What one decode may take.
#[derive(Clone, Copy, Debug)]
struct DecodeLimits {
    /// Bytes the decoder may allocate.
    max_memory: u64,
    /// See [`RenderLimits::max_jpeg_decode_passes`]: only HEIF's JPEG
    /// items are counted at decode, so a build without `heif` reads none.
    #[cfg_attr(not(feature = "heif"), allow(dead_code))]
    max_jpeg_passes: u32,
}

impl DecodeLimits {
    /// Within `max_memory`, and the default bound on a JPEG's passes.
    fn of_memory(max_memory: u64) -> Self {
        Self {
            max_memory,
            max_jpeg_passes: crate::media::limits::DEFAULT_MAX_JPEG_DECODE_PASSES,
        }
    }
}

/// One rendition, ready to store.
#[derive(Clone, Debug)]
pub struct Rendition {
    /// The name of one of the [`VariantSize`]s rendered.
    pub name: String,
    pub content_type: &'static str,
    pub width: u32,
    pub height: u32,
    pub bytes: Bytes,
}

/// Everything made from one image.
#[derive(Debug)]
pub struct Rendered {
    pub variants: Vec<Rendition>,
    pub blurhash: String,
    /// A ThumbHash of the image as viewed, base64 (standard alphabet, padded).
    pub thumbhash: String,
    /// The PDQ perceptual hash of the image as viewed ([`pdq`]), from the
    /// largest rendition's pixels; `None` for an image smaller than PDQ
    /// hashes (5 pixels on a side).
    pub pdq: Option<Pdq>,
    /// The resized, upright pixels each rendition was encoded from, by the
    /// name of the [`Rendition`] made from them (a variant that shares a
    /// larger one's rendition has none of its own): the other encodings
    /// are made from them without decoding the image again.
    pub pixels: Vec<(String, Pixels)>,
    /// The ICC profile the variants carry, when it is small enough to
    /// embed ([`MAX_VARIANT_ICC_PROFILE`]).
    pub icc: Option<Vec<u8>>,
}

/// The encodings made after a rendition's first one, from its pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// Lossy WebP ([`encode::WEBP`]), alpha kept.
    WebP,
    /// AVIF ([`encode::AVIF`]), alpha kept; in a build with the `avif`
    /// feature.
    Avif,
}

impl Codec {
    /// Whether this build can make it.
    pub fn available(self) -> bool {
        match self {
            Codec::WebP => true,
            Codec::Avif => cfg!(feature = "avif"),
        }
    }
}

/// Images up to this many pixels (a 16-megapixel phone photo) render in
/// their own lane: a queue of huge images must not make every small upload
/// wait behind it.
pub const SMALL_RENDER_PIXELS: u64 = 16_000_000;

/// Runs renders with the limits above: `max_concurrent` at a time in each
/// of two lanes, one for images up to [`SMALL_RENDER_PIXELS`] and one for
/// larger ones (which take seconds each).
#[derive(Clone)]
pub struct Renderer {
    limits: RenderLimits,
    /// The variants made, smallest first.
    sizes: Arc<[VariantSize]>,
    slots: Arc<Semaphore>,
    large_slots: Arc<Semaphore>,
}

/// A turn to render, taken before the source bytes are loaded so that the
/// memory of waiting renders is not held either. The render's thread
/// holds it until the decode has stopped, so a render whose caller went
/// away keeps its turn while it still uses CPU.
pub struct RenderSlot(#[allow(dead_code)] OwnedSemaphorePermit);

/// Set when the render's caller has gone away (its future was dropped):
/// the render's thread stops at the next point it can, so no new stage
/// starts and libjpeg-turbo stops within a row of blocks; jpeg-decoder
/// stops at its next read of the file, at the latest at the next scan
/// (a scan's work is bounded by `--max-jpeg-decode-passes`).
#[derive(Clone, Default)]
pub struct Abandoned(Arc<AtomicBool>);

impl Abandoned {
    /// Whether the caller went away.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// An error if the caller went away: the render stops.
    fn check(&self) -> Result<(), MediaError> {
        if self.is_set() {
            return Err(MediaError::invalid("the render's caller went away"));
        }
        Ok(())
    }
}

/// Sets [`Abandoned`] when dropped: held by the future awaiting a render,
/// so dropping that future (the caller cancelled) stops the render.
struct AbandonOnDrop(Abandoned);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.0.store(true, Ordering::Relaxed);
    }
}

/// The file's bytes to jpeg-decoder, failing once the render is
/// abandoned: jpeg-decoder has no other way to be stopped.
struct StopsWhenAbandoned<'a> {
    bytes: Cursor<&'a [u8]>,
    abandoned: &'a Abandoned,
}

impl Read for StopsWhenAbandoned<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.abandoned.is_set() {
            return Err(std::io::Error::other("the render's caller went away"));
        }
        self.bytes.read(buf)
    }
}

impl Renderer {
    /// A renderer of the variants `sizes` (smallest first).
    pub fn new(limits: RenderLimits, sizes: Arc<[VariantSize]>) -> Self {
        Self {
            limits,
            sizes,
            slots: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
            large_slots: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
        }
    }

    /// The longest side of the largest variant made.
    pub fn largest_side(&self) -> u32 {
        largest_side(&self.sizes)
    }

    /// Whether images of this media type are decoded. HEIC, HEIF and AVIF
    /// are, in a build with the `heif` feature (libheif); without it they
    /// are stored without variants.
    pub fn can_render(content_type: &str) -> bool {
        format_of(content_type).is_some()
    }

    /// Waits for a turn in the lane of an image of `pixels`.
    pub async fn slot(&self, pixels: u64) -> RenderSlot {
        let lane = if pixels <= SMALL_RENDER_PIXELS {
            &self.slots
        } else {
            &self.large_slots
        };
        let permit = lane
            .clone()
            .acquire_owned()
            .await
            .expect("the render semaphore is never closed");
        RenderSlot(permit)
    }

    /// Makes the variants and the placeholder of `source`, on the blocking
    /// pool. `orientation` is the EXIF orientation (1 to 8).
    pub async fn render(
        &self,
        slot: RenderSlot,
        source: Bytes,
        content_type: &str,
        orientation: u8,
    ) -> Result<Rendered, MediaError> {
        let format = format_of(content_type)
            .ok_or_else(|| MediaError::invalid(format!("{content_type} is not decoded")))?;
        let limits = DecodeLimits {
            max_memory: self.limits.max_memory,
            max_jpeg_passes: self.limits.max_jpeg_decode_passes,
        };
        let sizes = self.sizes.clone();
        let abandoned = Abandoned::default();
        let _on_drop = AbandonOnDrop(abandoned.clone());
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            render_as(
                &source,
                format,
                orientation,
                limits,
                JpegDecode::Scaled,
                &sizes,
                &abandoned,
            )
            .map(|(rendered, _)| rendered)
        })
        .await
        .map_err(|e| MediaError::Internal(Box::new(e)))?
    }

    /// Makes the variants of a JPEG decoded whole by the general decoder,
    /// allocating at most `max_memory` (see [`JpegDecode::Whole`] and
    /// [`memory_needed_whole_jpeg`]).
    pub async fn render_whole_jpeg(
        &self,
        slot: RenderSlot,
        source: Bytes,
        orientation: u8,
        max_memory: u64,
    ) -> Result<Rendered, MediaError> {
        let limits = DecodeLimits {
            max_memory: max_memory.min(self.limits.max_memory),
            max_jpeg_passes: self.limits.max_jpeg_decode_passes,
        };
        let sizes = self.sizes.clone();
        let abandoned = Abandoned::default();
        let _on_drop = AbandonOnDrop(abandoned.clone());
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            render_as(
                &source,
                ImageFormat::Jpeg,
                orientation,
                limits,
                JpegDecode::Whole,
                &sizes,
                &abandoned,
            )
            .map(|(rendered, _)| rendered)
        })
        .await
        .map_err(|e| MediaError::Internal(Box::new(e)))?
    }
}

/// How a JPEG is decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JpegDecode {
    /// At the smallest DCT scale that still covers the largest variant
    /// with [`JPEG_DECODE_HEADROOM`]:
    /// the fast path, which stops at damaged scan data.
    Scaled,
    /// Whole, by the general decoder, which shows what it can of damaged
    /// scan data (a corrupted block in a camera's file), as browsers do.
    Whole,
}

fn format_of(content_type: &str) -> Option<ImageFormat> {
    Some(match content_type {
        "image/jpeg" => ImageFormat::Jpeg,
        "image/png" => ImageFormat::Png,
        "image/gif" => ImageFormat::Gif,
        "image/webp" => ImageFormat::WebP,
        "image/bmp" => ImageFormat::Bmp,
        "image/tiff" => ImageFormat::Tiff,
        // The image crate's one HEIF-family format stands for all three
        // here: libheif decodes them (see `decode_heif`).
        #[cfg(feature = "heif")]
        "image/heic" | "image/heif" | "image/avif" => ImageFormat::Avif,
        _ => return None,
    })
}

/// Decodes, orients, resizes and encodes; the whole of one render, of the
/// [`DEFAULT_VARIANTS`].
pub fn render(
    source: &[u8],
    format: ImageFormat,
    orientation: u8,
    max_memory: u64,
) -> Result<Rendered, MediaError> {
    render_profiled(source, format, orientation, max_memory).map(|(rendered, _)| rendered)
}

/// Where the time of one render went, for the benchmark.
#[derive(Clone, Copy, Debug, Default)]
pub struct RenderProfile {
    /// Decoding the source (at a reduced DCT scale for JPEG).
    pub decode: Duration,
    /// Resizing to each variant, and turning upright.
    pub resize: Duration,
    /// Encoding the variants.
    pub encode: Duration,
    /// The BlurHash, from the smallest variant (with the downscale both
    /// placeholders are made from).
    pub placeholder: Duration,
    /// The ThumbHash, from the same downscale.
    pub thumbhash: Duration,
    /// The PDQ hash, from the largest rendition's pixels.
    pub pdq: Duration,
}

/// [`render`], timing each stage.
pub fn render_profiled(
    source: &[u8],
    format: ImageFormat,
    orientation: u8,
    max_memory: u64,
) -> Result<(Rendered, RenderProfile), MediaError> {
    render_as(
        source,
        format,
        orientation,
        DecodeLimits::of_memory(max_memory),
        JpegDecode::Scaled,
        &default_sizes(),
        &Abandoned::default(),
    )
}

/// [`render_profiled`], with the JPEG decoding path chosen; stops at the
/// next stage (or within the decode, see [`Abandoned`]) once
/// `abandoned` is set.
fn render_as(
    source: &[u8],
    format: ImageFormat,
    orientation: u8,
    limits: DecodeLimits,
    jpeg: JpegDecode,
    sizes: &[VariantSize],
    abandoned: &Abandoned,
) -> Result<(Rendered, RenderProfile), MediaError> {
    // A render that waited for a thread after its caller went away.
    abandoned.check()?;
    let mut profile = RenderProfile::default();
    let mut clock = Instant::now();
    let mut lap = |stage: &mut Duration| {
        let now = Instant::now();
        *stage += now - clock;
        clock = now;
    };
    let (decoded, icc) = decode(source, format, largest_side(sizes), limits, jpeg, abandoned)?;
    let icc = icc.filter(|icc| icc.len() <= MAX_VARIANT_ICC_PROFILE);
    lap(&mut profile.decode);
    let orientation = Orientation::from_exif(orientation).unwrap_or(Orientation::NoTransforms);
    let mut resizer = Resizer::new();

    // Largest first, each next one from the previous: cheaper, and the
    // orientation is applied once, to the first (already small) result.
    let mut variants: Vec<Rendition> = Vec::with_capacity(sizes.len());
    let mut kept: Vec<(String, Pixels)> = Vec::with_capacity(sizes.len());
    let mut previous: Option<(String, Pixels)> = None;
    let mut pdq = None;
    let mut decoded = Some(decoded);
    for VariantSize { name, longest_side } in sizes.iter().rev() {
        abandoned.check()?;
        let (name, side) = (name.clone(), *longest_side);
        // A variant no smaller than the one made before it has its pixels:
        // not resized nor encoded again (its entry shares the object).
        if let (Some((_, larger)), Some(made)) = (&previous, variants.last())
            && fit(larger.width(), larger.height(), side) == (larger.width(), larger.height())
        {
            let same = Rendition {
                name,
                ..made.clone()
            };
            variants.push(same);
            continue;
        }
        let pixels = match (&previous, decoded.take()) {
            (None, Some(decoded)) => {
                let swapped = swaps_axes(orientation);
                let (w, h) = (decoded.width(), decoded.height());
                let (vw, vh) = if swapped { (h, w) } else { (w, h) };
                let (tw, th) = fit(vw, vh, side);
                let target = if swapped { (th, tw) } else { (tw, th) };
                // The full-size pixels are freed as soon as the largest
                // variant is made from them.
                let mut resized = Pixels::from_image(decoded).resize_full(&mut resizer, target)?;
                resized.orient(orientation);
                lap(&mut profile.resize);
                pdq = pdq_of(&resized, &mut resizer)?;
                lap(&mut profile.pdq);
                resized
            }
            (None, None) => return Err(MediaError::invalid("no image was decoded")),
            (Some((_, larger)), _) => {
                let target = fit(larger.width(), larger.height(), side);
                larger.resize(&mut resizer, target)?
            }
        };
        lap(&mut profile.resize);
        let (content_type, bytes) = pixels.encode(icc.as_deref())?;
        lap(&mut profile.encode);
        variants.push(Rendition {
            name: name.clone(),
            content_type,
            width: pixels.width(),
            height: pixels.height(),
            bytes,
        });
        // Each rendition's pixels are kept for its other encodings; the
        // next, smaller one is resized from them.
        if let Some(larger) = previous.take() {
            kept.push(larger);
        }
        previous = Some((name, pixels));
    }
    variants.reverse();
    let (smallest_name, smallest) =
        previous.ok_or_else(|| MediaError::invalid("no variants are configured"))?;
    let tiny = placeholder_source(&smallest, &mut resizer)?;
    kept.push((smallest_name, smallest));
    let blurhash = placeholder(&tiny)?;
    lap(&mut profile.placeholder);
    let thumbhash = thumbhash(&tiny);
    lap(&mut profile.thumbhash);
    let rendered = Rendered {
        variants,
        blurhash,
        thumbhash,
        pdq,
        pixels: kept,
        icc,
    };
    Ok((rendered, profile))
}

/// The PDQ hash of the largest rendition's upright pixels, shrunk first to
/// the side the reference hasher works on ([`pdq::REFERENCE_SIDE`]), as it
/// shrinks every larger image: its filter then spans the same share of
/// the picture, and costs a few milliseconds rather than a pass over
/// every pixel of the rendition.
fn pdq_of(pixels: &Pixels, resizer: &mut Resizer) -> Result<Option<Pdq>, MediaError> {
    let target = fit(pixels.width(), pixels.height(), pdq::REFERENCE_SIDE);
    let shrunk;
    let source = if target == (pixels.width(), pixels.height()) {
        pixels
    } else {
        shrunk = pixels.resize(resizer, target)?;
        &shrunk
    };
    Ok(match source {
        Pixels::Rgb(image) => pdq::hash(image.as_raw(), image.width(), image.height(), 3),
        Pixels::Rgba(image) => pdq::hash(image.as_raw(), image.width(), image.height(), 4),
    })
}

/// Whether an EXIF orientation turns the image by a quarter.
fn swaps_axes(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// The size that fits `longest` on the longer side, never larger than the
/// image itself.
pub fn fit(width: u32, height: u32, longest: u32) -> (u32, u32) {
    let long = width.max(height);
    if long <= longest {
        return (width, height);
    }
    let scale = |side: u32| {
        ((u64::from(side) * u64::from(longest) + u64::from(long) / 2) / u64::from(long)).max(1)
            as u32
    };
    (scale(width), scale(height))
}

/// Decoded pixels and the ICC profile they came with.
type Decoded = (DynamicImage, Option<Vec<u8>>);

fn decode(
    source: &[u8],
    format: ImageFormat,
    largest: u32,
    limits: DecodeLimits,
    jpeg: JpegDecode,
    abandoned: &Abandoned,
) -> Result<Decoded, MediaError> {
    let max_memory = limits.max_memory;
    if format == ImageFormat::Jpeg
        && jpeg == JpegDecode::Scaled
        && let Some(decoded) = decode_jpeg_scaled(source, largest, max_memory, abandoned)?
    {
        return Ok(decoded);
    }
    #[cfg(feature = "heif")]
    if format == ImageFormat::Avif {
        return decode_heif(source, limits);
    }
    let without_icc;
    let source = match format {
        ImageFormat::Png => match png_without_large_iccp(source) {
            Some(copy) => {
                without_icc = copy;
                &without_icc[..]
            }
            None => source,
        },
        _ => source,
    };
    let mut reader = image::ImageReader::with_format(Cursor::new(source), format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_memory);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let icc = image::ImageDecoder::icc_profile(&mut decoder)
        .ok()
        .flatten();
    let image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    Ok((image, icc))
}

/// A HEIC, HEIF or AVIF's primary image, decoded by libheif upright (its
/// `irot`, `imir` and crop applied) and whole (the tiles of a grid
/// assembled), within `limits.max_memory` of libheif's allocations, once
/// its JPEG-coded images are found within the bounds of an uploaded JPEG
/// ([`check_heif_jpeg_items`]).
#[cfg(feature = "heif")]
fn decode_heif(source: &[u8], limits: DecodeLimits) -> Result<Decoded, MediaError> {
    let DecodeLimits {
        max_memory,
        max_jpeg_passes,
    } = limits;
    use libheif_rs::{ColorSpace, HeifContext, HeifErrorCode, LibHeif, RgbChroma, SecurityLimits};
    let refused = |error: libheif_rs::HeifError| match error.code {
        HeifErrorCode::MemoryAllocationError => too_large_to_decode(),
        HeifErrorCode::UnsupportedFeature | HeifErrorCode::UnsupportedFileType => {
            MediaError::invalid(format!("this HEIF cannot be decoded: {}", error.message))
        }
        _ => corrupt(error.message),
    };
    let mut context = HeifContext::new().map_err(refused)?;
    // A grid's tiles on this thread (0), not a pool of libheif's own:
    // the render slots count cores.
    context.set_max_decoding_threads(0);
    let mut limits = SecurityLimits::new();
    limits.set_max_total_memory(max_memory);
    context.set_security_limits(&limits).map_err(refused)?;
    context.read_bytes(source).map_err(refused)?;
    check_heif_jpeg_items(source, max_jpeg_passes)?;
    let handle = context.primary_image_handle().map_err(refused)?;
    let alpha = handle.has_alpha_channel();
    let chroma = if alpha {
        RgbChroma::Rgba
    } else {
        RgbChroma::Rgb
    };
    let image = LibHeif::new()
        .decode(&handle, ColorSpace::Rgb(chroma), None)
        .map_err(refused)?;
    let plane = image
        .planes()
        .interleaved
        .ok_or_else(|| corrupt("no interleaved plane"))?;
    let channels = if alpha { 4 } else { 3 };
    let row = plane.width as usize * channels;
    let mut pixels = Vec::with_capacity(row * plane.height as usize);
    for y in 0..plane.height as usize {
        let start = y * plane.stride;
        let line = plane
            .data
            .get(start..start + row)
            .ok_or_else(|| corrupt("a short plane"))?;
        pixels.extend_from_slice(line);
    }
    let image = if alpha {
        RgbaImage::from_raw(plane.width, plane.height, pixels).map(DynamicImage::ImageRgba8)
    } else {
        RgbImage::from_raw(plane.width, plane.height, pixels).map(DynamicImage::ImageRgb8)
    }
    .ok_or_else(|| corrupt("a plane of the wrong size"))?;
    let icc = handle.color_profile_raw().map(|profile| profile.data);
    Ok((image, icc))
}

/// Refuses a HEIF with a JPEG-coded item (`jpeg`: a whole image, or a
/// grid's tile) that an upload of that JPEG would be refused for: libheif
/// hands such items to libjpeg, which decodes any number of scans, so a
/// few kilobytes of narrow progressive scans would hold a render thread
/// for minutes. Each item's data is counted as an uploaded JPEG is
/// ([`Scrubber::check_whole_jpeg`]: at most
/// [`crate::media::limits::MAX_JPEG_SCANS`] scans and `max_passes` passes
/// over its coefficients). Called once libheif has read the file, which
/// bounds its items.
///
/// [`Scrubber::check_whole_jpeg`]: crate::media::scrub::Scrubber::check_whole_jpeg
#[cfg(feature = "heif")]
fn check_heif_jpeg_items(source: &[u8], max_passes: u32) -> Result<(), MediaError> {
    use libheif_sys as lh;

    /// A context of libheif's over `source`, freed on drop.
    struct Context(*mut lh::heif_context);
    impl Drop for Context {
        fn drop(&mut self) {
            // SAFETY: allocated by `heif_context_alloc`, freed once.
            unsafe { lh::heif_context_free(self.0) }
        }
    }
    const JPEG: u32 = u32::from_be_bytes(*b"jpeg");
    let failed = |error: lh::heif_error| {
        // SAFETY: libheif's messages are static, NUL-terminated strings.
        let message = if error.message.is_null() {
            Default::default()
        } else {
            unsafe { std::ffi::CStr::from_ptr(error.message) }.to_string_lossy()
        };
        corrupt(format!("libheif could not read an item: {message}"))
    };
    // SAFETY: every pointer passed below is either the context allocated
    // here (checked for null, freed on drop, after the item data it
    // lent), `source` (which outlives the context), or an out-parameter
    // on this stack; item data is copied out before it is released.
    unsafe {
        let context = Context(lh::heif_context_alloc());
        if context.0.is_null() {
            return Err(too_large_to_decode());
        }
        let read = lh::heif_context_read_from_memory_without_copy(
            context.0,
            source.as_ptr().cast(),
            source.len(),
            std::ptr::null(),
        );
        if read.code != lh::heif_error_code_heif_error_Ok {
            return Err(failed(read));
        }
        let count = lh::heif_context_get_number_of_items(context.0);
        // The number of items libheif read from the file: each takes bytes
        // of it, so this is bounded by the file's size.
        let count = usize::try_from(count).unwrap_or(0).min(source.len());
        let mut ids: Vec<lh::heif_item_id> = vec![0; count];
        let listed = lh::heif_context_get_list_of_item_IDs(
            context.0,
            ids.as_mut_ptr(),
            i32::try_from(count).unwrap_or(i32::MAX),
        );
        ids.truncate(usize::try_from(listed).unwrap_or(0));
        for id in ids {
            if lh::heif_item_get_item_type(context.0, id) != JPEG {
                continue;
            }
            let mut data: *mut u8 = std::ptr::null_mut();
            let mut size = 0usize;
            let got = lh::heif_item_get_item_data(
                context.0,
                id,
                std::ptr::null_mut(),
                &mut data,
                &mut size,
            );
            if got.code != lh::heif_error_code_heif_error_Ok {
                return Err(failed(got));
            }
            let item = if data.is_null() {
                bytes::Bytes::new()
            } else {
                let copy = bytes::Bytes::copy_from_slice(std::slice::from_raw_parts(data, size));
                lh::heif_release_item_data(context.0, &mut data);
                copy
            };
            crate::media::scrub::Scrubber::check_whole_jpeg(item, max_passes)?;
        }
    }
    Ok(())
}

/// A PNG's bytes without its `iCCP` chunk, when that chunk is larger than
/// [`MAX_ICC_PROFILE`]: the decoder would hold the chunk whole and inflate
/// it (100 MB of compressed profile became 230 MB), for a profile no
/// variant carries anyway. `None` when there is nothing to remove.
fn png_without_large_iccp(source: &[u8]) -> Option<Vec<u8>> {
    let mut at = 8;
    while let Some(header) = source.get(at..at + 8) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = &header[4..8];
        let end = at.checked_add(12)?.checked_add(len)?;
        if kind == b"iCCP" && len > MAX_ICC_PROFILE {
            let mut copy = Vec::with_capacity(source.len() - (end - at).min(source.len()));
            copy.extend_from_slice(&source[..at]);
            copy.extend_from_slice(source.get(end..).unwrap_or_default());
            return Some(copy);
        }
        if kind == b"IDAT" || kind == b"IEND" {
            // The profile must come before the image data.
            return None;
        }
        at = end;
    }
    None
}

/// Bytes of working memory a render of a `width` × `height` image of
/// this type needs at most, from the header alone: the decoded pixels in
/// the decoder's layout (16-bit samples, a GIF's canvas and frame), a
/// conversion to 8-bit RGBA when the layout is another, a progressive
/// JPEG's coefficients (which are kept for the whole image, whatever the
/// scale it is decoded at), and the resizer's buffers. Renders reserve
/// this from the memory budget before they decode.
/// `largest` is the longest side of the largest variant made.
pub fn memory_needed(
    source: &[u8],
    content_type: &str,
    width: u32,
    height: u32,
    largest: u32,
) -> u64 {
    let pixels = u64::from(width) * u64::from(height);
    let resize = resize_memory(width, height, largest);
    let decode = match content_type {
        "image/jpeg" => {
            let scale = jpeg_scale(width, height, largest);
            let scaled = (u64::from(width) / scale + 1) * (u64::from(height) / scale + 1);
            // Planes and the interleaved output, 4 bytes per pixel at most
            // (CMYK); in several scans: the 2-byte coefficients of every
            // component at its own resolution (a 4:2:0 photo's chroma has a
            // quarter of the pixels), or of 4 full-size components when the
            // frame header cannot be read.
            let frame = jpeg_frame(source);
            let coefficients = if frame.multiple_scans {
                jpeg_coefficient_bytes(&frame.sampling, width, height).unwrap_or(pixels * 8)
            } else {
                0
            };
            scaled * 8 + coefficients
        }
        "image/png" => {
            let (channels, bytes) = png_layout(source);
            let decoded = pixels * channels * bytes;
            let converted = if bytes == 1 && channels >= 3 {
                0
            } else {
                pixels * 4
            };
            decoded + converted
        }
        // A canvas and a frame, 4 bytes each.
        "image/gif" | "image/webp" => pixels * 8,
        // BMP and TIFF may hold 16-bit samples.
        _ => pixels * 12,
    };
    decode + resize
}

/// What the resizer holds: the first pass writes the target width by the
/// source height; then the variants and the placeholder.
fn resize_memory(width: u32, height: u32, largest: u32) -> u64 {
    let largest = u64::from(largest);
    let long = u64::from(width.max(height));
    long * largest * 4 + 3 * largest.pow(2) * 4
}

/// What decoding a JPEG whole ([`JpegDecode::Whole`]) and resizing it may
/// hold: the decoder's planes and coefficients and its interleaved output
/// (8 bytes a pixel covers both, as for a progressive file), a conversion
/// to 8-bit RGBA, and the resizer's buffers.
pub fn memory_needed_whole_jpeg(width: u32, height: u32, largest: u32) -> u64 {
    let pixels = u64::from(width) * u64::from(height);
    pixels * 12 + resize_memory(width, height, largest)
}

/// How much larger than the largest variant a JPEG decoded at a reduced
/// DCT scale must stay (numerator, denominator): 1.5 times, so the resize
/// after it keeps that much headroom and the variant scores as one made
/// from the full-size image does; at 1× a 4608 px photo was decoded at
/// 1/4, left a resize of 1.07× and lost detail
/// (BENCHMARKS.md: Encodings, the DCT scale).
const JPEG_DECODE_HEADROOM: (u64, u64) = (3, 2);

/// The longer side a JPEG is decoded to at least for variants of at most
/// `largest`.
fn jpeg_decode_side(largest: u32) -> u64 {
    let (numerator, denominator) = JPEG_DECODE_HEADROOM;
    u64::from(largest) * numerator / denominator
}

/// The DCT scale denominator (1, 2, 4, 8) `decode_jpeg_scaled` asks for.
fn jpeg_scale(width: u32, height: u32, largest: u32) -> u64 {
    let long = u64::from(width.max(height));
    let mut scale = 8;
    while scale > 1 && long.div_ceil(scale) < jpeg_decode_side(largest) {
        scale /= 2;
    }
    scale
}

/// What the marker segments of a JPEG up to its first scan say of the
/// frame.
struct JpegFrame {
    /// Whether a decoder must hold the coefficients of the whole image:
    /// the frame is progressive (SOF2, 6, 10, 14), or its first scan
    /// carries fewer components than the frame (a baseline file in several
    /// scans, which libjpeg-turbo buffers whole like a progressive one).
    /// True when the segments cannot be read.
    multiple_scans: bool,
    /// Each component's horizontal and vertical sampling factors (empty
    /// when the frame header was not read).
    sampling: Vec<(u64, u64)>,
}

fn jpeg_frame(source: &[u8]) -> JpegFrame {
    let mut at = 2;
    let mut sampling = Vec::new();
    let mut frame_components = None;
    let multiple_scans = loop {
        let Some(&[0xFF, marker]) = source.get(at..at + 2) else {
            break true;
        };
        if marker == 0xFF {
            at += 1;
            continue;
        }
        let Some(len) = source.get(at + 2..at + 4) else {
            break true;
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if matches!(
            marker,
            0xC0..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF
        ) {
            // Length, precision, height and width come before the number
            // of components, then 3 bytes per component: its id, its
            // sampling factors (4 bits each) and its table.
            frame_components = source.get(at + 9).copied();
            let components = source.get(at + 10..at + 2 + len).unwrap_or_default();
            sampling = components
                .chunks_exact(3)
                .map(|c| (u64::from(c[1] >> 4), u64::from(c[1] & 0x0F)))
                .collect();
        }
        match marker {
            0xC2 | 0xC6 | 0xCA | 0xCE => break true,
            0xDA => {
                break match (frame_components, source.get(at + 4)) {
                    (Some(frame), Some(&scan)) => scan < frame,
                    _ => true,
                };
            }
            0xD9 => break false,
            _ => {}
        }
        at += 2 + len;
    };
    JpegFrame {
        multiple_scans,
        sampling,
    }
}

/// Bytes of the coefficients of a whole `width` × `height` frame with
/// these sampling factors, as decoders hold them for a progressive file:
/// 64 two-byte coefficients per block, each component's blocks padded to
/// whole MCUs. `None` when the factors are missing or zero.
fn jpeg_coefficient_bytes(sampling: &[(u64, u64)], width: u32, height: u32) -> Option<u64> {
    let h_max = sampling.iter().map(|(h, _)| *h).max()?;
    let v_max = sampling.iter().map(|(_, v)| *v).max()?;
    if sampling.iter().any(|&(h, v)| h == 0 || v == 0) {
        return None;
    }
    let mcus_across = u64::from(width).div_ceil(8 * h_max);
    let mcus_down = u64::from(height).div_ceil(8 * v_max);
    Some(
        sampling
            .iter()
            .map(|(h, v)| mcus_across * h * mcus_down * v * 64 * 2)
            .sum(),
    )
}

/// Channels and bytes per sample of a PNG, from its IHDR (the widest, 4
/// channels of 2 bytes, when it cannot be read).
fn png_layout(source: &[u8]) -> (u64, u64) {
    let (Some(&depth), Some(&color)) = (source.get(24), source.get(25)) else {
        return (4, 2);
    };
    let channels = match color {
        0 => 1,
        2 => 3,
        // Palette images are expanded to RGB or RGBA.
        3 => 4,
        4 => 2,
        _ => 4,
    };
    (channels, if depth == 16 { 2 } else { 1 })
}

/// A JPEG decoded at the smallest DCT scale whose result still covers
/// `largest` on its longer side with [`JPEG_DECODE_HEADROOM`]. `None` for pixel formats left to the
/// general decoder (CMYK, 16-bit greyscale).
fn decode_jpeg_scaled(
    source: &[u8],
    largest: u32,
    max_memory: u64,
    abandoned: &Abandoned,
) -> Result<Option<Decoded>, MediaError> {
    use jpeg_decoder::PixelFormat;
    let mut decoder = jpeg_decoder::Decoder::new(StopsWhenAbandoned {
        bytes: Cursor::new(source),
        abandoned,
    });
    decoder.set_max_decoding_buffer_size(usize::try_from(max_memory).unwrap_or(usize::MAX));
    decoder.read_info().map_err(jpeg_error)?;
    let info = decoder.info().ok_or_else(|| corrupt("no frame header"))?;
    if !matches!(info.pixel_format, PixelFormat::L8 | PixelFormat::RGB24) {
        return Ok(None);
    }
    let icc = decoder.icc_profile();
    let grey = info.pixel_format == PixelFormat::L8;
    #[cfg(feature = "libjpeg-turbo")]
    let (width, height, pixels) = {
        let denominator = jpeg_scale(u32::from(info.width), u32::from(info.height), largest);
        turbo::decode(source, denominator as u32, grey, max_memory, &abandoned.0).map_err(|e| {
            match e {
                turbo::TurboError::Memory => too_large_to_decode(),
                turbo::TurboError::Corrupt(message) => corrupt(message),
                turbo::TurboError::Abandoned => {
                    MediaError::invalid("the render's caller went away")
                }
            }
        })?
    };
    #[cfg(not(feature = "libjpeg-turbo"))]
    let (width, height, pixels) = {
        // The requested box is square: the longer side decides whichever
        // way the image is turned.
        let side = u16::try_from(jpeg_decode_side(largest)).unwrap_or(u16::MAX);
        let (width, height) = decoder.scale(side, side).map_err(jpeg_error)?;
        let pixels = decoder
            .decode()
            .map_err(|e| abandoned.check().err().unwrap_or_else(|| jpeg_error(e)))?;
        (u32::from(width), u32::from(height), pixels)
    };
    let image = if grey {
        image::GrayImage::from_raw(width, height, pixels).map(DynamicImage::ImageLuma8)
    } else {
        RgbImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgb8)
    }
    .ok_or_else(|| corrupt("the decoder returned fewer pixels than the header promised"))?;
    Ok(Some((image, icc)))
}

fn jpeg_error(error: jpeg_decoder::Error) -> MediaError {
    match error {
        jpeg_decoder::Error::Unsupported(_) => MediaError::invalid(format!(
            "the JPEG uses a feature that is not supported: {error}"
        )),
        jpeg_decoder::Error::Format(ref message) if message.contains("exceeds maximum") => {
            too_large_to_decode()
        }
        other => corrupt(other),
    }
}

fn decode_error(error: image::ImageError) -> MediaError {
    match error {
        image::ImageError::Limits(_) => too_large_to_decode(),
        other => corrupt(other),
    }
}

fn too_large_to_decode() -> MediaError {
    MediaError::TooLarge("the image needs more memory to decode than the server allows".into())
}

fn corrupt(detail: impl std::fmt::Display) -> MediaError {
    MediaError::invalid(format!(
        "the image data is corrupt and cannot be decoded ({detail})"
    ))
}

/// How every variant is resized.
fn lanczos3() -> ResizeOptions {
    ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
}

/// Decoded pixels in one of the two layouts variants are made from.
#[derive(Debug)]
pub enum Pixels {
    Rgb(RgbImage),
    Rgba(RgbaImage),
}

impl Pixels {
    /// Takes the decoded image without a copy when it already is 8-bit
    /// RGB or RGBA (a copy of a 100-megapixel image is 400 MB).
    fn from_image(image: DynamicImage) -> Self {
        if image.color().has_alpha() {
            Self::Rgba(image.into_rgba8())
        } else {
            Self::Rgb(image.into_rgb8())
        }
    }

    pub fn width(&self) -> u32 {
        match self {
            Self::Rgb(image) => image.width(),
            Self::Rgba(image) => image.width(),
        }
    }

    /// Bytes the pixels hold.
    pub fn bytes(&self) -> u64 {
        match self {
            Self::Rgb(image) => image.as_raw().len() as u64,
            Self::Rgba(image) => image.as_raw().len() as u64,
        }
    }

    /// Whether any pixel is transparent: its encodings must keep alpha.
    pub fn has_alpha(&self) -> bool {
        match self {
            Self::Rgb(_) => false,
            Self::Rgba(image) => image.pixels().any(|p| p.0[3] != u8::MAX),
        }
    }

    /// The pixels in `codec`, with the ICC profile `icc` where the
    /// encoding carries one (see [`encode`]).
    pub fn encode_as(&self, codec: Codec, icc: Option<&[u8]>) -> Result<Bytes, MediaError> {
        let opaque;
        let frame = match self {
            Self::Rgb(image) => encode::Frame::Rgb(image),
            Self::Rgba(image) if !self.has_alpha() => {
                opaque = DynamicImage::ImageRgba8(image.clone()).into_rgb8();
                encode::Frame::Rgb(&opaque)
            }
            Self::Rgba(image) => encode::Frame::Rgba(image),
        };
        let bytes = match codec {
            Codec::WebP => encode::webp(frame, icc, encode::WEBP)?,
            #[cfg(feature = "avif")]
            Codec::Avif => encode::avif(frame, encode::AVIF)?,
            #[cfg(not(feature = "avif"))]
            Codec::Avif => {
                let _ = frame;
                return Err(MediaError::Internal(
                    "AVIF needs a build with the avif feature".into(),
                ));
            }
        };
        Ok(Bytes::from(bytes))
    }

    pub fn height(&self) -> u32 {
        match self {
            Self::Rgb(image) => image.height(),
            Self::Rgba(image) => image.height(),
        }
    }

    fn resize(
        &self,
        resizer: &mut Resizer,
        (width, height): (u32, u32),
    ) -> Result<Self, MediaError> {
        let options = lanczos3();
        let failed = |e: fast_image_resize::ResizeError| MediaError::Internal(Box::new(e));
        Ok(match self {
            Self::Rgb(source) => {
                let mut target = RgbImage::new(width, height);
                resizer
                    .resize(source, &mut target, &options)
                    .map_err(failed)?;
                Self::Rgb(target)
            }
            Self::Rgba(source) => {
                let mut target = RgbaImage::new(width, height);
                resizer
                    .resize(source, &mut target, &options)
                    .map_err(failed)?;
                Self::Rgba(target)
            }
        })
    }

    /// Like [`Pixels::resize`], for the full-size decoded image, which is
    /// not needed afterwards: its alpha is premultiplied in place, where the
    /// resizer would premultiply into a copy as large as the image (400 MB
    /// for 100 megapixels).
    fn resize_full(self, resizer: &mut Resizer, target: (u32, u32)) -> Result<Self, MediaError> {
        let Self::Rgba(mut source) = self else {
            return self.resize(resizer, target);
        };
        let failed = |e: fast_image_resize::ImageError| MediaError::Internal(Box::new(e));
        let alpha = fast_image_resize::MulDiv::default();
        alpha.multiply_alpha_inplace(&mut source).map_err(failed)?;
        let mut resized = RgbaImage::new(target.0, target.1);
        let options = lanczos3().use_alpha(false);
        resizer
            .resize(&source, &mut resized, &options)
            .map_err(|e| MediaError::Internal(Box::new(e)))?;
        drop(source);
        alpha.divide_alpha_inplace(&mut resized).map_err(failed)?;
        Ok(Self::Rgba(resized))
    }

    fn orient(&mut self, orientation: Orientation) {
        let mut image = match std::mem::replace(self, Self::Rgb(RgbImage::new(0, 0))) {
            Self::Rgb(image) => DynamicImage::ImageRgb8(image),
            Self::Rgba(image) => DynamicImage::ImageRgba8(image),
        };
        image.apply_orientation(orientation);
        *self = match image {
            DynamicImage::ImageRgba8(image) => Self::Rgba(image),
            other => Self::Rgb(other.into_rgb8()),
        };
    }

    /// JPEG when opaque, lossless WebP when any pixel is transparent.
    fn encode(&self, icc: Option<&[u8]>) -> Result<(&'static str, Bytes), MediaError> {
        let opaque;
        let rgb = match self {
            Self::Rgb(image) => image,
            Self::Rgba(image) if image.pixels().all(|p| p.0[3] == u8::MAX) => {
                opaque = DynamicImage::ImageRgba8(image.clone()).into_rgb8();
                &opaque
            }
            Self::Rgba(image) => {
                let bytes = encode::webp_lossless(image, icc)?;
                return Ok(("image/webp", Bytes::from(bytes)));
            }
        };
        let bytes = encode::jpeg(rgb, icc, encode::JPEG_ACKNOWLEDGED)?;
        Ok(("image/jpeg", Bytes::from(bytes)))
    }
}

/// A BlurHash with 4 components along the longer side and 3 along the
/// shorter.
fn placeholder(rgba: &RgbaImage) -> Result<String, MediaError> {
    let (x, y) = if rgba.width() >= rgba.height() {
        (4, 3)
    } else {
        (3, 4)
    };
    blurhash::encode(x, y, rgba.width(), rgba.height(), rgba.as_raw())
        .map_err(|e| MediaError::Internal(Box::new(e)))
}

/// A ThumbHash, base64 with the standard alphabet and padding. Unlike the
/// BlurHash it carries the aspect ratio and the alpha channel.
fn thumbhash(rgba: &RgbaImage) -> String {
    use base64::Engine as _;
    // Within the format's 100 x 100: the source fits PLACEHOLDER_SOURCE.
    let hash =
        thumbhash::rgba_to_thumb_hash(rgba.width() as usize, rgba.height() as usize, rgba.as_raw());
    base64::engine::general_purpose::STANDARD.encode(hash)
}

/// What both placeholders are computed from: `pixels` resized to fit
/// within [`PLACEHOLDER_SOURCE`] (never upscaled), as RGBA.
fn placeholder_source(pixels: &Pixels, resizer: &mut Resizer) -> Result<RgbaImage, MediaError> {
    let side = PLACEHOLDER_SOURCE;
    let tiny = pixels.resize(resizer, fit(pixels.width(), pixels.height(), side))?;
    Ok(match tiny {
        Pixels::Rgba(image) => image,
        Pixels::Rgb(image) => DynamicImage::ImageRgb8(image).into_rgba8(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_never_upscales_and_keeps_the_aspect_ratio() {
        assert_eq!(fit(4000, 3000, 1080), (1080, 810));
        assert_eq!(fit(3000, 4000, 320), (240, 320));
        assert_eq!(fit(200, 100, 320), (200, 100));
        assert_eq!(fit(10_000, 1, 320), (320, 1));
    }

    #[test]
    fn a_progressive_photo_reserves_its_components_at_their_own_resolution() {
        let mut jpeg = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut jpeg, 90);
        encoder.set_progressive(true);
        encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
        encoder
            .encode(&[128; 64 * 48 * 3], 64, 48, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let frame = jpeg_frame(&jpeg);
        assert!(frame.multiple_scans);
        assert_eq!(frame.sampling, [(2, 2), (1, 1), (1, 1)]);
        // A 12-megapixel phone photo's header: 4:2:0 chroma holds a quarter
        // of the luma's coefficients each (37 MB in all, not 98 MB), so
        // its render fits a user's default share of the fallback budget
        // (256 MiB), with the photo's own bytes besides.
        assert_eq!(
            jpeg_coefficient_bytes(&frame.sampling, 4032, 3024),
            Some(24_385_536 + 2 * 6_096_384)
        );
        let needed = memory_needed(&jpeg, "image/jpeg", 4032, 3024, 1080);
        assert!(needed < 96 << 20, "{needed}");
        // A header that cannot be read still counts four full components.
        let cut = &jpeg[..20];
        assert_eq!(
            memory_needed(cut, "image/jpeg", 4032, 3024, 1080),
            needed - 36_578_304 + 4032 * 3024 * 8
        );
    }

    #[test]
    fn jpegs_are_decoded_with_headroom_over_the_largest_variant() {
        // At 4608 px, 1/4 would leave 1152 px for `medium` (a resize of
        // 1.07×, visibly softer); 1/2 keeps 2304.
        assert_eq!(jpeg_scale(4608, 1976, 1080), 2);
        assert_eq!(jpeg_scale(1976, 4608, 1080), 2);
        assert_eq!(jpeg_scale(8000, 6000, 1080), 4);
        assert_eq!(jpeg_scale(1200, 900, 1080), 1);
        // The reservation follows the larger decode.
        let wide = memory_needed(&[], "image/jpeg", 4608, 1976, 1080);
        assert!(wide >= (4608 / 2) * (1976 / 2) * 8, "{wide}");
    }

    fn jpeg_of(width: u32, height: u32) -> Vec<u8> {
        // Left half red, right half blue: orientation is visible.
        let image = RgbImage::from_fn(width, height, |x, _| {
            if x < width / 2 {
                image::Rgb([200, 10, 10])
            } else {
                image::Rgb([10, 10, 200])
            }
        });
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, 90)
            .encode(
                image.as_raw(),
                width as u16,
                height as u16,
                jpeg_encoder::ColorType::Rgb,
            )
            .unwrap();
        out
    }

    #[test]
    fn a_large_jpeg_gets_both_variants_at_their_sizes() {
        let rendered = render(&jpeg_of(2400, 1600), ImageFormat::Jpeg, 1, 1 << 30).unwrap();
        let sizes: Vec<_> = rendered
            .variants
            .iter()
            .map(|v| (v.name.to_owned(), v.width, v.height, v.content_type))
            .collect();
        assert_eq!(
            sizes,
            [
                ("small".to_owned(), 320, 213, "image/jpeg"),
                ("medium".to_owned(), 1080, 720, "image/jpeg")
            ]
        );
        let small = image::load_from_memory(&rendered.variants[0].bytes).unwrap();
        assert_eq!((small.width(), small.height()), (320, 213));
        assert!(!rendered.blurhash.is_empty());
    }

    #[test]
    fn orientation_6_turns_the_variants_upright() {
        // Stored 400x300 with "rotate 90° clockwise to view": a viewer sees
        // 300x400 with the red half on top.
        let rendered = render(&jpeg_of(400, 300), ImageFormat::Jpeg, 6, 1 << 30).unwrap();
        let small = &rendered.variants[0];
        assert_eq!((small.width, small.height), (240, 320));
        let pixels = image::load_from_memory(&small.bytes).unwrap().to_rgb8();
        let top = pixels.get_pixel(120, 40);
        let bottom = pixels.get_pixel(120, 280);
        assert!(top.0[0] > 150 && top.0[2] < 80, "top is {top:?}");
        assert!(
            bottom.0[2] > 150 && bottom.0[0] < 80,
            "bottom is {bottom:?}"
        );
    }

    #[test]
    fn a_truncated_jpeg_is_refused_as_corrupt() {
        let jpeg = jpeg_of(640, 480);
        let error = render(&jpeg[..jpeg.len() / 3], ImageFormat::Jpeg, 1, 1 << 30).unwrap_err();
        assert!(matches!(error, MediaError::Invalid(_)), "{error:?}");
    }

    #[test]
    fn a_decoder_that_needs_more_memory_than_allowed_is_stopped() {
        let error = render(&jpeg_of(2400, 1600), ImageFormat::Jpeg, 1, 64 * 1024).unwrap_err();
        assert!(matches!(error, MediaError::TooLarge(_)), "{error:?}");
    }

    #[test]
    fn transparent_images_keep_their_alpha_in_webp() {
        let image = RgbaImage::from_fn(64, 64, |x, _| image::Rgba([0, 0, 0, (x * 4) as u8]));
        let mut png = Vec::new();
        DynamicImage::ImageRgba8(image)
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        let rendered = render(&png, ImageFormat::Png, 1, 1 << 30).unwrap();
        assert!(
            rendered
                .variants
                .iter()
                .all(|v| v.content_type == "image/webp")
        );
    }
}

/// Variants embed a profile only up to [`MAX_VARIANT_ICC_PROFILE`].
#[cfg(test)]
mod attack6 {
    use super::*;

    fn encoded_with(icc: &[u8]) -> Bytes {
        let pixels = Pixels::from_image(DynamicImage::ImageRgb8(image::RgbImage::new(8, 8)));
        let (content_type, bytes) = pixels.encode(Some(icc)).unwrap();
        assert_eq!(content_type, "image/jpeg");
        bytes
    }

    #[test]
    fn a_profile_larger_than_a_displays_is_not_copied_into_variants() {
        let carried = |bytes: &[u8]| bytes.windows(12).any(|w| w == b"ICC_PROFILE\0");
        let small = encoded_with(&[7; 3 * 1024]);
        assert!(carried(&small) && small.len() > 3 * 1024);
        let large = encoded_with(&[7; MAX_VARIANT_ICC_PROFILE + 1]);
        assert!(!carried(&large));
        assert!(large.len() < 4 * 1024, "{} bytes", large.len());
    }
}

/// A render whose caller went away stops: at once when it had not
/// started, and within its decode when it had (jpeg-decoder at its next
/// read of the file, libjpeg-turbo within a row of blocks).
#[cfg(test)]
mod abandoned {
    use super::*;
    use crate::fixtures::{jpeg, narrow_scans_jpeg};

    fn render_abandonable(source: &[u8], abandoned: &Abandoned) -> Result<Rendered, MediaError> {
        render_as(
            source,
            ImageFormat::Jpeg,
            1,
            DecodeLimits::of_memory(1 << 30),
            JpegDecode::Scaled,
            &default_sizes(),
            abandoned,
        )
        .map(|(rendered, _)| rendered)
    }

    #[test]
    fn a_render_abandoned_before_it_starts_does_not_start() {
        let abandoned = Abandoned::default();
        drop(AbandonOnDrop(abandoned.clone()));
        let error = render_abandonable(&jpeg(64, 48), &abandoned).unwrap_err();
        assert!(error.to_string().contains("went away"), "{error}");
    }

    /// A valid progressive file of 500 scans, each visiting all 262 144
    /// blocks: seconds of decoding, stopped a moment after it starts.
    #[test]
    fn a_render_abandoned_while_decoding_stops() {
        let file = narrow_scans_jpeg(4096, 4096, 500);
        let abandoned = Abandoned::default();
        let on_drop = AbandonOnDrop(abandoned.clone());
        let caller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(on_drop);
        });
        let error = render_abandonable(&file, &abandoned).unwrap_err();
        caller.join().unwrap();
        assert!(error.to_string().contains("went away"), "{error}");
    }
}

/// The PDQ hash the render makes, against the reference pipeline's hash of
/// the full-size pixels and against other photos.
#[cfg(test)]
mod perceptual_hash {
    use super::*;
    use crate::fixtures::{PhoneShot, phone_shot, scene};

    fn shot(width: u32, height: u32, quality: u8, seed: u32) -> PhoneShot {
        PhoneShot::upright(width, height, quality, seed)
    }

    fn rendered_pdq(shot: &PhoneShot) -> Pdq {
        let rendered = render(
            &phone_shot(shot),
            ImageFormat::Jpeg,
            shot.orientation as u8,
            1 << 30,
        )
        .expect("the photo renders");
        rendered.pdq.expect("a photo has a PDQ hash")
    }

    /// The reference's way: every full-size pixel, shrunk to 512 on the
    /// longer side, then hashed.
    fn full_size_pdq(width: u32, height: u32, seed: u32) -> Pdq {
        let full = Pixels::Rgb(scene(width, height, seed));
        pdq_of(&full, &mut Resizer::new())
            .expect("resizes")
            .expect("hashable")
    }

    #[test]
    fn a_photo_hashes_from_its_largest_rendition_as_from_its_full_size_pixels() {
        let photo = shot(1600, 1200, 92, 1);
        let rendered = rendered_pdq(&photo);
        assert!(
            rendered.quality >= pdq::RECOMMENDED_MIN_QUALITY,
            "{rendered:?}"
        );
        let full = full_size_pdq(1600, 1200, 1);
        let distance = rendered.hash.distance(&full.hash);
        eprintln!("rendition vs full size: {distance} bits");
        assert!(distance <= 8, "{distance} bits from the full-size hash");
    }

    #[test]
    fn a_resized_reencoded_copy_is_near_and_another_photo_is_far() {
        let original = rendered_pdq(&shot(1600, 1200, 92, 1));
        let copy = rendered_pdq(&shot(800, 600, 60, 1));
        let near = original.hash.distance(&copy.hash);
        eprintln!("resized, re-encoded copy: {near} bits");
        assert!(
            near <= pdq::RECOMMENDED_MAX_DISTANCE,
            "{near} bits from a resized copy"
        );
        for seed in [2, 3] {
            let other = rendered_pdq(&shot(1600, 1200, 92, seed));
            let far = original.hash.distance(&other.hash);
            eprintln!("scene {seed}: {far} bits");
            assert!(
                far > pdq::RECOMMENDED_MAX_DISTANCE,
                "{far} bits from scene {seed}"
            );
        }
    }

    #[test]
    fn an_image_too_small_to_hash_renders_without_one() {
        let rendered =
            render(&crate::fixtures::jpeg(4, 4), ImageFormat::Jpeg, 1, 1 << 30).expect("renders");
        assert_eq!(rendered.pdq, None);
    }
}

/// A HEIF's JPEG-coded items are held to an uploaded JPEG's bounds on
/// decode work before libheif hands them to libjpeg, which has none.
#[cfg(test)]
#[cfg(feature = "heif")]
mod heif_jpeg_items {
    use super::*;
    use crate::fixtures::{heif_with_jpeg_item, narrow_scans_jpeg};
    use crate::media::limits::DEFAULT_MAX_JPEG_DECODE_PASSES as DEFAULT;

    fn render_heif(file: &[u8], max_jpeg_passes: u32) -> Result<Rendered, MediaError> {
        let limits = DecodeLimits {
            max_memory: 1 << 30,
            max_jpeg_passes,
        };
        let (sizes, abandoned) = (default_sizes(), Abandoned::default());
        render_as(
            file,
            ImageFormat::Avif,
            1,
            limits,
            JpegDecode::Scaled,
            &sizes,
            &abandoned,
        )
        .map(|(rendered, _)| rendered)
    }

    #[test]
    fn a_phone_photo_in_a_jpeg_item_renders() {
        let jpeg = include_bytes!("../../examples/images/phone-photo.jpg");
        for meta_last in [false, true] {
            let file = heif_with_jpeg_item(jpeg, 480, 360, meta_last);
            let rendered = render_heif(&file, DEFAULT).unwrap();
            let small = &rendered.variants[0];
            assert_eq!((small.width, small.height), (320, 240));
        }
    }

    #[test]
    fn a_jpeg_item_of_many_narrow_scans_is_refused_before_libjpeg_decodes_it() {
        // 400 scans that each visit every block: about 85 passes.
        let jpeg = narrow_scans_jpeg(1024, 1024, 400);
        let file = heif_with_jpeg_item(&jpeg, 1024, 1024, false);
        let error = render_heif(&file, DEFAULT).unwrap_err();
        assert!(
            matches!(&error, MediaError::TooLarge(m) if m.contains("--max-jpeg-decode-passes")),
            "{error:?}"
        );
        // The operator's bound is the one applied: past it, libheif has it.
        let raised = render_heif(&file, 100);
        assert!(
            !matches!(raised, Err(MediaError::TooLarge(_))),
            "{raised:?}"
        );
    }

    #[test]
    fn a_jpeg_item_of_more_scans_than_any_decoder_takes_is_refused() {
        let jpeg = narrow_scans_jpeg(64, 64, 600);
        let file = heif_with_jpeg_item(&jpeg, 64, 64, false);
        let error = render_heif(&file, u32::MAX).unwrap_err();
        assert!(
            matches!(&error, MediaError::TooLarge(m) | MediaError::Invalid(m) if m.contains("scans")),
            "{error:?}"
        );
    }
}
