//! The encoders of variants: oriented, resized pixels (and the ICC profile
//! they came with) to the bytes of one encoding.
//!
//! Each takes pixels no larger than the largest variant, so its memory is
//! bounded by the variant set, and none panics on any pixels: an encoder's
//! failure is an internal error, never the caller's file. The settings
//! below were chosen from the measured table in BENCHMARKS.md (Encodings):
//! each encoding at the score of the JPEG variants made before it.

use image::{RgbImage, RgbaImage};

use super::compress::{self, Mozjpeg};
use crate::media::MediaError;

/// Largest ICC profile embedded in a variant: a display or camera
/// profile is a few KiB, a larger one (a printer's lookup tables) is left
/// out, and the variant renders as sRGB, so a small upload cannot make
/// every variant as large as its profile.
pub const MAX_VARIANT_ICC_PROFILE: usize = 64 * 1024;

/// Pixels to encode, borrowed.
#[derive(Clone, Copy)]
pub enum Frame<'a> {
    Rgb(&'a RgbImage),
    Rgba(&'a RgbaImage),
}

impl Frame<'_> {
    pub fn width(&self) -> u32 {
        match self {
            Self::Rgb(image) => image.width(),
            Self::Rgba(image) => image.width(),
        }
    }

    pub fn height(&self) -> u32 {
        match self {
            Self::Rgb(image) => image.height(),
            Self::Rgba(image) => image.height(),
        }
    }
}

/// Which JPEG encoder, and how it codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JpegCoder {
    /// jpeg-encoder, baseline, the standard tables: the variants made
    /// before the encodings were measured.
    Baseline,
    /// jpeg-encoder, progressive with optimised Huffman tables.
    Progressive,
    /// mozjpeg with libjpeg's tables, progressive with optimised Huffman
    /// tables, no trellis quantisation.
    Mozjpeg,
    /// mozjpeg's full compression: its tables, trellis quantisation and
    /// optimised progressive scans.
    MozjpegTrellis,
    /// mozjpeg with each of its settings chosen, progressive with
    /// optimised Huffman tables.
    MozjpegTuned(Mozjpeg),
}

impl JpegCoder {
    /// mozjpeg's settings of this coder; `None` for jpeg-encoder.
    pub fn mozjpeg(self) -> Option<Mozjpeg> {
        match self {
            Self::Baseline | Self::Progressive => None,
            Self::Mozjpeg => Some(Mozjpeg::LIBJPEG),
            Self::MozjpegTrellis => Some(Mozjpeg::FULL),
            Self::MozjpegTuned(settings) => Some(settings),
        }
    }
}

/// A JPEG encoder and its quality (1 to 100).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Jpeg {
    pub coder: JpegCoder,
    pub quality: u8,
}

/// The JPEG variants made before the encodings were measured: the
/// baseline every size is compared with.
pub const JPEG_BASELINE: Jpeg = Jpeg {
    coder: JpegCoder::Baseline,
    quality: 82,
};

/// mozjpeg's quantisation tables (ImageMagick's) on its own base,
/// progressive with optimised Huffman tables and mozjpeg's fixed script,
/// without trellis quantisation or the scan search.
pub const MOZJPEG_TABLES: Mozjpeg = Mozjpeg {
    trellis: false,
    trellis_dc: false,
    scan_search: false,
    ..Mozjpeg::FULL
};

/// The JPEG variants made before an upload is acknowledged: mozjpeg with
/// its own quantisation tables ([`MOZJPEG_TABLES`]), without trellis
/// quantisation or the scan search. On the measured photos
/// (BENCHMARKS.md: Encodings) quality 80 makes 0.77 of the baseline's
/// bytes at its mean SSIMULACRA2 (0.08 below; each phone photo 0.4 to 1.2
/// above at 0.83 to 0.85 of its bytes, the noise-textured one 2.6 below at
/// 0.47), where libjpeg's tables needed 0.87 of the bytes; on the feed
/// page of 50 crops, 0.70 of the bytes at 1.1 points below. Its CPU is
/// 14.4 against the baseline's 9.1 ms per `medium` in a release build
/// (a debug build's pure-Rust baseline is the slower one).
/// Trellis quantisation of the AC coefficients would save 3 % more bytes
/// for three times the CPU; mozjpeg's full mode 5 % for five times.
pub const JPEG_ACKNOWLEDGED: Jpeg = Jpeg {
    coder: JpegCoder::MozjpegTuned(MOZJPEG_TABLES),
    quality: 80,
};

/// The smallest JPEG at the baseline's score, with trellis quantisation:
/// for variants made in the background. Quality 82 is the closest to the
/// baseline's score (0.8 below; 83 is 1.0 above) with 29 % fewer bytes,
/// at 2.3 times the encode CPU.
pub const JPEG_BACKGROUND: Jpeg = Jpeg {
    coder: JpegCoder::MozjpegTrellis,
    quality: 82,
};

/// Lossy WebP (alpha kept losslessly compressed): libwebp's settings
/// that change the bytes of a photo.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Webp {
    /// 0 to 100.
    pub quality: f32,
    /// Effort, 0 to 6.
    pub method: u8,
    /// Spatial noise shaping, 0 to 100: how far bits move from busy areas
    /// to flat ones (libwebp's default 50, its photo preset 80).
    pub sns_strength: u8,
    /// Deblocking filter strength, 0 to 100 (default 60, photo preset 30);
    /// with `autofilter` libwebp chooses it.
    pub filter_strength: u8,
    /// Deblocking filter sharpness, 0 to 7 (default 0, photo preset 3).
    pub filter_sharpness: u8,
    /// libwebp chooses the filter strength per segment from the result.
    pub autofilter: bool,
    /// Segments with their own quantiser, 1 to 4 (default 4).
    pub segments: u8,
    /// The slower, sharper RGB to YUV conversion (chroma edges kept).
    pub sharp_yuv: bool,
}

impl Webp {
    /// libwebp's defaults (`WebPConfigInit`) at `quality` and `method`.
    pub const fn libwebp(quality: f32, method: u8) -> Self {
        Self {
            quality,
            method,
            sns_strength: 50,
            filter_strength: 60,
            filter_sharpness: 0,
            autofilter: false,
            segments: 4,
            sharp_yuv: false,
        }
    }

    /// libwebp's photo preset (`WEBP_PRESET_PHOTO`, as `cwebp -preset
    /// photo` sets it, without its dithering of the colour conversion).
    pub const fn photo(quality: f32, method: u8) -> Self {
        Self {
            sns_strength: 80,
            filter_strength: 30,
            filter_sharpness: 3,
            ..Self::libwebp(quality, method)
        }
    }
}

/// WebP variants at the baseline JPEG's score, with libwebp's deblocking
/// filter off: SSIMULACRA2 counts the filter's smoothing of fine texture
/// as loss. On the first photo of the measured grid (BENCHMARKS.md:
/// Encodings) quality 88 without the filter scores 78.50 against the
/// baseline's 78.30 at 0.84 of its bytes, where libwebp's defaults need
/// quality 90 (79.17) and 0.98 of its bytes; autofilter scores between
/// the two at 4 times the CPU.
pub const WEBP: Webp = Webp {
    filter_strength: 0,
    ..Webp::libwebp(88.0, 4)
};

/// AVIF through ravif (always 4:4:4: ravif has no chroma subsampling):
/// quality 1 to 100, speed 1 (slowest, smallest) to 10, and the depth
/// of the coded samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Avif {
    pub quality: f32,
    pub speed: u8,
    /// 10-bit samples (ravif's default, better at equal bytes); 8-bit ones
    /// are coded with rav1e's 8-bit pixel type.
    pub ten_bit: bool,
}

/// AVIF variants at the baseline JPEG's score: on the first photo of the
/// measured grid (BENCHMARKS.md: Encodings) quality 85 at speed 8 scores
/// 79.73 against the baseline's 78.30 at 0.59 of its bytes (quality 80:
/// 72.18 at 0.41; ravif switches to small blocks above 80), for 4.2 s of
/// CPU per `medium` variant in a debug build with rav1e optimised: speed 6
/// is 1 % smaller at 6.1 s, speed 10 15 % larger at 1.6 s.
pub const AVIF: Avif = Avif {
    quality: 85.0,
    speed: 8,
    ten_bit: true,
};

/// Largest side a JPEG can have.
const JPEG_MAX_SIDE: u32 = u16::MAX as u32;
/// Largest side a WebP can have.
const WEBP_MAX_SIDE: u32 = 16_383;
/// Largest side of an AVIF variant: far above any variant's, it bounds
/// the frames rav1e holds (its planes and analysis buffers).
#[cfg(feature = "avif")]
const AVIF_MAX_SIDE: u32 = 16_384;

/// The profile to embed: none when it is larger than a display's (the
/// variant is then sRGB), so a small upload cannot make every variant as
/// large as its profile.
fn embedded(icc: Option<&[u8]>) -> Option<&[u8]> {
    icc.filter(|icc| !icc.is_empty() && icc.len() <= MAX_VARIANT_ICC_PROFILE)
}

fn failed(what: &str, detail: impl std::fmt::Display) -> MediaError {
    MediaError::Internal(format!("{what} encoding failed: {detail}").into())
}

fn check_size(what: &str, width: u32, height: u32, max: u32) -> Result<(), MediaError> {
    if width == 0 || height == 0 || width > max || height > max {
        return Err(failed(what, format_args!("{width} × {height}")));
    }
    Ok(())
}

/// Encodes opaque pixels as JPEG (4:2:0 chroma).
pub fn jpeg(rgb: &RgbImage, icc: Option<&[u8]>, settings: Jpeg) -> Result<Vec<u8>, MediaError> {
    check_size("JPEG", rgb.width(), rgb.height(), JPEG_MAX_SIDE)?;
    let icc = embedded(icc);
    match settings.coder {
        JpegCoder::Baseline => jpeg_encoder(rgb, icc, settings.quality, false),
        JpegCoder::Progressive => jpeg_encoder(rgb, icc, settings.quality, true),
        JpegCoder::Mozjpeg | JpegCoder::MozjpegTrellis | JpegCoder::MozjpegTuned(_) => {
            let mozjpeg = settings.coder.mozjpeg().unwrap_or(Mozjpeg::LIBJPEG);
            compress::compress(
                rgb.as_raw(),
                rgb.width(),
                rgb.height(),
                settings.quality,
                mozjpeg,
                icc,
            )
            .map_err(|e| failed("JPEG", e))
        }
    }
}

fn jpeg_encoder(
    rgb: &RgbImage,
    icc: Option<&[u8]>,
    quality: u8,
    progressive: bool,
) -> Result<Vec<u8>, MediaError> {
    let error = |e: jpeg_encoder::EncodingError| failed("JPEG", e);
    let mut out = Vec::with_capacity(rgb.as_raw().len() / 8);
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100));
    if progressive {
        encoder.set_progressive(true);
        encoder.set_optimized_huffman_tables(true);
    }
    if let Some(icc) = icc {
        encoder.add_icc_profile(icc).map_err(error)?;
    }
    // check_size keeps both sides within u16.
    encoder
        .encode(
            rgb.as_raw(),
            rgb.width() as u16,
            rgb.height() as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .map_err(error)?;
    Ok(out)
}

#[cfg(feature = "avif")]
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "the encoder stopped".into())
}

/// Encodes lossy WebP; the alpha channel of RGBA pixels is kept (itself
/// compressed losslessly).
pub fn webp(frame: Frame<'_>, icc: Option<&[u8]>, settings: Webp) -> Result<Vec<u8>, MediaError> {
    let (width, height) = (frame.width(), frame.height());
    check_size("WebP", width, height, WEBP_MAX_SIDE)?;
    let mut config = webp::WebPConfig::new().map_err(|()| failed("WebP", "no configuration"))?;
    config.lossless = 0;
    config.quality = settings.quality.clamp(0.0, 100.0);
    config.method = i32::from(settings.method.min(6));
    config.sns_strength = i32::from(settings.sns_strength.min(100));
    config.filter_strength = i32::from(settings.filter_strength.min(100));
    config.filter_sharpness = i32::from(settings.filter_sharpness.min(7));
    config.autofilter = i32::from(settings.autofilter);
    config.segments = i32::from(settings.segments.clamp(1, 4));
    config.use_sharp_yuv = i32::from(settings.sharp_yuv);
    config.alpha_compression = 1;
    let encoder = match frame {
        Frame::Rgb(image) => webp::Encoder::from_rgb(image.as_raw(), width, height),
        Frame::Rgba(image) => webp::Encoder::from_rgba(image.as_raw(), width, height),
    };
    let encoded = encoder
        .encode_advanced(&config)
        .map_err(|e| failed("WebP", format_args!("{e:?}")))?;
    Ok(with_icc_profile(&encoded, embedded(icc), width, height))
}

/// Encodes lossless WebP with alpha.
pub fn webp_lossless(rgba: &RgbaImage, icc: Option<&[u8]>) -> Result<Vec<u8>, MediaError> {
    check_size("WebP", rgba.width(), rgba.height(), WEBP_MAX_SIDE)?;
    let mut out = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut out)
        .encode(
            rgba.as_raw(),
            rgba.width(),
            rgba.height(),
            image::ExtendedColorType::Rgba8,
        )
        .map_err(|e| failed("WebP", e))?;
    Ok(with_icc_profile(
        &out,
        embedded(icc),
        rgba.width(),
        rgba.height(),
    ))
}

/// A WebP file with an ICCP chunk: after its VP8X chunk (one is written
/// when the file has none) whose ICC flag is set. Unchanged without a
/// profile, or when the file is not the RIFF the encoders write.
fn with_icc_profile(file: &[u8], icc: Option<&[u8]>, width: u32, height: u32) -> Vec<u8> {
    const ICC_FLAG: u8 = 0x20;
    const ALPHA_FLAG: u8 = 0x10;
    let (Some(icc), Some(b"RIFF"), Some(b"WEBP")) = (icc, file.get(..4), file.get(8..12)) else {
        return file.to_vec();
    };
    let chunk = |kind: &[u8], body: &[u8]| {
        let mut out = Vec::with_capacity(body.len() + 9);
        out.extend_from_slice(kind);
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(body);
        if body.len() % 2 == 1 {
            out.push(0);
        }
        out
    };
    let chunks = &file[12..];
    let mut body = Vec::with_capacity(file.len() + icc.len() + 32);
    let rest = if chunks.starts_with(b"VP8X") && chunks.len() >= 18 {
        let mut vp8x = chunks[..18].to_vec();
        vp8x[8] |= ICC_FLAG;
        body.extend_from_slice(&vp8x);
        &chunks[18..]
    } else {
        // A lossless bitstream says in its header whether it has alpha;
        // lossless variants are made for transparent images only.
        let alpha = if chunks.starts_with(b"VP8L") {
            ALPHA_FLAG
        } else {
            0
        };
        let mut vp8x = [0u8; 10];
        vp8x[0] = ICC_FLAG | alpha;
        vp8x[4..7].copy_from_slice(&(width - 1).to_le_bytes()[..3]);
        vp8x[7..10].copy_from_slice(&(height - 1).to_le_bytes()[..3]);
        body.extend_from_slice(&chunk(b"VP8X", &vp8x));
        chunks
    };
    body.extend_from_slice(&chunk(b"ICCP", icc));
    body.extend_from_slice(rest);
    let mut out = Vec::with_capacity(body.len() + 12);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(body.len() as u32 + 4).to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend_from_slice(&body);
    out
}

/// Encodes AVIF (4:4:4 YCbCr at the settings' depth; alpha kept).
/// ravif writes no ICC profile: the variant renders as sRGB.
#[cfg(feature = "avif")]
pub fn avif(frame: Frame<'_>, settings: Avif) -> Result<Vec<u8>, MediaError> {
    use ravif::{Img, RGBA8};
    let (width, height) = (frame.width(), frame.height());
    check_size("AVIF", width, height, AVIF_MAX_SIDE)?;
    let encoder = ravif::Encoder::new()
        .with_quality(settings.quality.clamp(1.0, 100.0))
        .with_alpha_quality(100.0)
        .with_speed(settings.speed.clamp(1, 10))
        .with_bit_depth(if settings.ten_bit {
            ravif::BitDepth::Ten
        } else {
            ravif::BitDepth::Eight
        })
        .with_num_threads(Some(1));
    let (w, h) = (width as usize, height as usize);
    // Opaque pixels go through `encode_rgba` too, fully opaque, which
    // ravif codes exactly as `encode_rgb` (it leaves the alpha plane out):
    // `encode_rgb` is `#[inline]`, so the whole of rav1e's generic encoder
    // would be instantiated in this crate, unoptimised in debug builds
    // (the tests, the dev-profile benchmark: seconds per variant), where
    // through `encode_rgba` it is built in ravif with ravif's opt-level.
    let pixels: Vec<RGBA8> = match frame {
        Frame::Rgb(image) => image
            .as_raw()
            .chunks_exact(3)
            .map(|p| RGBA8::new(p[0], p[1], p[2], 255))
            .collect(),
        Frame::Rgba(image) => image
            .as_raw()
            .chunks_exact(4)
            .map(|p| RGBA8::new(p[0], p[1], p[2], p[3]))
            .collect(),
    };
    let run = || encoder.encode_rgba(Img::new(&pixels[..], w, h));
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(Ok(encoded)) => Ok(encoded.avif_file),
        Ok(Err(e)) => Err(failed("AVIF", e)),
        Err(panic) => Err(failed("AVIF", panic_message(&*panic))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A photo-like test image: gradients and fine texture.
    fn rgb(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            let t = ((x * 7 + y * 13) % 17) as u8;
            image::Rgb([
                (x * 255 / width) as u8 ^ t,
                (y * 255 / height) as u8,
                128u8.wrapping_add(t * 3),
            ])
        })
    }

    fn rgba(width: u32, height: u32) -> RgbaImage {
        let rgb = rgb(width, height);
        RgbaImage::from_fn(width, height, |x, y| {
            let [r, g, b] = rgb.get_pixel(x, y).0;
            image::Rgba([r, g, b, (x * 255 / width) as u8])
        })
    }

    fn decoded(bytes: &[u8], format: image::ImageFormat) -> image::DynamicImage {
        image::load_from_memory_with_format(bytes, format).expect("decodes")
    }

    const CODERS: [JpegCoder; 4] = [
        JpegCoder::Baseline,
        JpegCoder::Progressive,
        JpegCoder::Mozjpeg,
        JpegCoder::MozjpegTrellis,
    ];

    #[test]
    fn every_jpeg_coder_writes_a_jpeg_of_the_right_size_close_to_its_pixels() {
        let pixels = rgb(333, 201);
        for coder in CODERS {
            let bytes = jpeg(&pixels, None, Jpeg { coder, quality: 82 }).unwrap();
            let image = decoded(&bytes, image::ImageFormat::Jpeg).to_rgb8();
            assert_eq!((image.width(), image.height()), (333, 201), "{coder:?}");
            let mean_error = image
                .as_raw()
                .iter()
                .zip(pixels.as_raw())
                .map(|(&a, &b)| f64::from(a.abs_diff(b)))
                .sum::<f64>()
                / pixels.as_raw().len() as f64;
            assert!(mean_error < 12.0, "{coder:?}: {mean_error}");
        }
    }

    #[test]
    fn progressive_coders_write_progressive_frames() {
        let pixels = rgb(64, 48);
        for coder in [
            JpegCoder::Progressive,
            JpegCoder::Mozjpeg,
            JpegCoder::MozjpegTrellis,
        ] {
            let bytes = jpeg(&pixels, None, Jpeg { coder, quality: 82 }).unwrap();
            assert!(bytes.windows(2).any(|w| w == [0xFF, 0xC2]), "{coder:?}");
        }
    }

    /// SSIMULACRA2 of a JPEG against the pixels it was made from.
    fn score(reference: &RgbImage, jpeg: &[u8]) -> f64 {
        use ssimulacra2::{ColorPrimaries, Rgb, TransferCharacteristic};
        let frame = |image: &RgbImage| {
            let data = image.pixels().map(|p| p.0.map(|c| f32::from(c) / 255.0));
            let (w, h) = (image.width() as usize, image.height() as usize);
            Rgb::new(
                data.collect(),
                w,
                h,
                TransferCharacteristic::SRGB,
                ColorPrimaries::BT709,
            )
            .unwrap()
        };
        let decoded = decoded(jpeg, image::ImageFormat::Jpeg).to_rgb8();
        ssimulacra2::compute_frame_ssimulacra2(frame(reference), frame(&decoded)).unwrap()
    }

    /// The goal for the JPEG variants, on a phone-like scene at
    /// `medium`'s size: at least 15 % fewer bytes than the JPEGs made
    /// before, and no lower a score.
    #[test]
    fn acknowledged_jpegs_are_smaller_than_the_baseline_and_no_worse() {
        let scene = crate::fixtures::scene(1080, 810, 1);
        let before = jpeg(&scene, None, JPEG_BASELINE).unwrap();
        let now = jpeg(&scene, None, JPEG_ACKNOWLEDGED).unwrap();
        let (score_before, score_now) = (score(&scene, &before), score(&scene, &now));
        let ratio = now.len() as f64 / before.len() as f64;
        assert!(ratio <= 0.85, "{} / {} bytes", now.len(), before.len());
        assert!(
            score_now >= score_before,
            "{score_now:.2} < {score_before:.2}"
        );
    }

    #[test]
    fn mozjpeg_carries_a_displays_profile_and_not_a_larger_one() {
        let carried = |bytes: &[u8]| bytes.windows(12).any(|w| w == b"ICC_PROFILE\0");
        let pixels = rgb(16, 16);
        let settings = JPEG_ACKNOWLEDGED;
        let small = jpeg(&pixels, Some(&[7; 3 * 1024]), settings).unwrap();
        assert!(carried(&small) && small.len() > 3 * 1024);
        let large = jpeg(&pixels, Some(&[7; MAX_VARIANT_ICC_PROFILE + 1]), settings).unwrap();
        assert!(!carried(&large));
    }

    #[test]
    fn an_empty_image_is_an_internal_error_not_a_panic() {
        for coder in CODERS {
            let error = jpeg(&RgbImage::new(0, 5), None, Jpeg { coder, quality: 82 }).unwrap_err();
            assert!(matches!(error, MediaError::Internal(_)), "{error:?}");
        }
        let error = webp(Frame::Rgb(&RgbImage::new(5, 0)), None, WEBP).unwrap_err();
        assert!(matches!(error, MediaError::Internal(_)), "{error:?}");
    }

    #[test]
    fn lossy_webp_decodes_to_the_right_size_and_keeps_alpha() {
        let bytes = webp(Frame::Rgb(&rgb(301, 157)), None, WEBP).unwrap();
        let image = decoded(&bytes, image::ImageFormat::WebP);
        assert_eq!((image.width(), image.height()), (301, 157));
        assert!(!image.color().has_alpha());

        let source = rgba(120, 80);
        let bytes = webp(Frame::Rgba(&source), None, WEBP).unwrap();
        let image = decoded(&bytes, image::ImageFormat::WebP).to_rgba8();
        assert_eq!((image.width(), image.height()), (120, 80));
        // Alpha is coded losslessly: the left edge transparent, the right
        // nearly opaque.
        assert_eq!(image.get_pixel(0, 40).0[3], 0);
        assert!(image.get_pixel(119, 40).0[3] > 250);
    }

    #[test]
    fn webp_carries_the_icc_profile_in_an_iccp_chunk() {
        let profile = vec![9u8; 1001];
        for (bytes, alpha) in [
            (
                webp(Frame::Rgb(&rgb(40, 30)), Some(&profile), WEBP).unwrap(),
                false,
            ),
            (
                webp(Frame::Rgba(&rgba(40, 30)), Some(&profile), WEBP).unwrap(),
                true,
            ),
            (webp_lossless(&rgba(40, 30), Some(&profile)).unwrap(), true),
        ] {
            let mut decoder =
                image::codecs::webp::WebPDecoder::new(std::io::Cursor::new(&bytes)).unwrap();
            let icc = image::ImageDecoder::icc_profile(&mut decoder).unwrap();
            assert_eq!(icc.as_deref(), Some(&profile[..]));
            let image = decoded(&bytes, image::ImageFormat::WebP);
            assert_eq!((image.width(), image.height()), (40, 30));
            assert_eq!(image.color().has_alpha(), alpha);
            let riff = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
            assert_eq!(riff + 8, bytes.len());
        }
    }

    /// Decoded by libheif (with dav1d or aom), another implementation
    /// than the encoder's.
    #[cfg(all(feature = "avif", feature = "heif"))]
    #[test]
    fn avif_decodes_with_libheif_to_the_right_size_and_keeps_alpha() {
        let (opaque, _) = super::super::decode_heif(
            &avif(Frame::Rgb(&rgb(64, 40)), AVIF).unwrap(),
            super::super::DecodeLimits::of_memory(1 << 30),
        )
        .unwrap();
        assert_eq!((opaque.width(), opaque.height()), (64, 40));
        assert!(!opaque.color().has_alpha());
        let (clear, _) = super::super::decode_heif(
            &avif(Frame::Rgba(&rgba(64, 40)), AVIF).unwrap(),
            super::super::DecodeLimits::of_memory(1 << 30),
        )
        .unwrap();
        assert_eq!((clear.width(), clear.height()), (64, 40));
        let clear = clear.to_rgba8();
        assert!(clear.get_pixel(0, 20).0[3] < 8);
        assert!(clear.get_pixel(63, 20).0[3] > 240);
    }

    #[cfg(feature = "avif")]
    #[test]
    fn avif_is_an_avif_file() {
        let bytes = avif(Frame::Rgb(&rgb(64, 40)), AVIF).unwrap();
        assert_eq!(&bytes[4..12], b"ftypavif");
        assert_eq!(
            imagesize::blob_size(&bytes)
                .map(|s| (s.width, s.height))
                .ok(),
            Some((64, 40))
        );
    }
}
