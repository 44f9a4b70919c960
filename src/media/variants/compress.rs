//! JPEG compression with mozjpeg through its C API (the sources
//! `mozjpeg-sys` vendors, built with the C compiler in every build; its
//! nasm SIMD under the `libjpeg-turbo` feature): every setting mozjpeg
//! has, where the `mozjpeg` crate's wrapper offers only its two profiles.
//! Each cost of mozjpeg's full compression (its quantisation tables,
//! trellis quantisation of the AC and DC coefficients, the search for the
//! progressive scans) can so be chosen apart (BENCHMARKS.md: Encodings).
//!
//! libjpeg's errors unwind and are caught at the edge of [`compress`],
//! where the compressor is destroyed ([`super::libjpeg`]).
use std::panic::{AssertUnwindSafe, catch_unwind};

use mozjpeg_sys as ffi;

use super::libjpeg::{caught, install_errors, message, unwind};

/// How mozjpeg codes: the settings that change a photo's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mozjpeg {
    /// mozjpeg's own defaults as the base (`JCP_MAX_COMPRESSION`: its
    /// progressive script, overshoot deringing, merged table markers),
    /// else libjpeg's (`JCP_FASTEST`).
    pub mozjpeg_defaults: bool,
    /// The quantisation tables quality scales: libjpeg's (Annex K, index
    /// 0) or ImageMagick's (N. Robidoux's, index 3: mozjpeg's default).
    pub imagemagick_tables: bool,
    /// Trellis quantisation of the AC coefficients (rate-distortion
    /// choice of each block's values).
    pub trellis: bool,
    /// Trellis quantisation of the DC coefficients too.
    pub trellis_dc: bool,
    /// Trellis optimises runs of end-of-block codes across blocks.
    pub trellis_eob: bool,
    /// The progressive scans searched for the smallest split (one trial
    /// encode of each candidate), else the base's fixed script.
    pub scan_search: bool,
}

impl Mozjpeg {
    /// libjpeg's settings and tables, progressive (libjpeg's script).
    pub const LIBJPEG: Self = Self {
        mozjpeg_defaults: false,
        imagemagick_tables: false,
        trellis: false,
        trellis_dc: false,
        trellis_eob: false,
        scan_search: false,
    };

    /// mozjpeg's defaults: its full compression.
    pub const FULL: Self = Self {
        mozjpeg_defaults: true,
        imagemagick_tables: true,
        trellis: true,
        trellis_dc: true,
        trellis_eob: false,
        scan_search: true,
    };
}

/// Why a compression failed: libjpeg's message.
#[derive(Debug)]
pub struct CompressError(pub String);

impl std::fmt::Display for CompressError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The payload the error handler unwinds with.
struct Unwound(String);

/// Compresses RGB pixels (`width` × `height`, rows without padding) to a
/// progressive 4:2:0 JPEG with optimised Huffman tables at `quality` (1 to
/// 100), with the ICC profile `icc` if given.
pub fn compress(
    rgb: &[u8],
    width: u32,
    height: u32,
    quality: u8,
    settings: Mozjpeg,
    icc: Option<&[u8]>,
) -> Result<Vec<u8>, CompressError> {
    let row = width as usize * 3;
    if width == 0 || height == 0 || rgb.len() != row * height as usize {
        return Err(CompressError(format!(
            "{} bytes are not {width} × {height} RGB pixels",
            rgb.len()
        )));
    }
    // Boxed: libjpeg keeps pointers to the error and destination
    // managers, so none of these may move while it runs.
    let mut state = Box::new(State {
        // SAFETY: plain C structs for which all-zero is the state libjpeg
        // expects before `jpeg_std_error` and `create`.
        cinfo: unsafe { std::mem::zeroed() },
        err: unsafe { std::mem::zeroed() },
        destination: Destination {
            manager: ffi::jpeg_destination_mgr {
                next_output_byte: std::ptr::null_mut(),
                free_in_buffer: 0,
                init_destination: Some(init_destination),
                empty_output_buffer: Some(empty_output_buffer),
                term_destination: Some(term_destination),
            },
            out: Vec::with_capacity(rgb.len() / 8),
            buffer: vec![0; 64 * 1024],
        },
    });
    let state = &mut *state;
    // SAFETY: the error manager is installed before anything can fail;
    // `create` allocates the compressor, destroyed below whatever happens.
    unsafe {
        install_errors(
            &mut state.cinfo.common,
            &mut state.err,
            error_exit,
            emit_message,
        );
    }
    let created = catch_unwind(AssertUnwindSafe(|| unsafe {
        ffi::jpeg_create_compress(&mut state.cinfo);
    }));
    if let Err(payload) = created {
        return Err(unwound(payload));
    }
    // A pointer to the whole `Destination` (not to its first field): the
    // callbacks reach the output and buffer through it.
    state.cinfo.dest = (&raw mut state.destination).cast();
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the compressor was created with this module's error
        // manager and destination, which outlive it; see `run`.
        unsafe {
            run(
                &mut state.cinfo,
                rgb,
                (width, height),
                quality,
                settings,
                icc,
            );
        }
    }));
    // SAFETY: the compressor was created; destroying it frees everything
    // libjpeg allocated, whether or not it finished.
    unsafe { ffi::jpeg_destroy_compress(&mut state.cinfo) };
    result.map_err(unwound)?;
    Ok(std::mem::take(&mut state.destination.out))
}

struct State {
    cinfo: ffi::jpeg_compress_struct,
    err: ffi::jpeg_error_mgr,
    destination: Destination,
}

/// libjpeg's destination manager, followed by the output and the buffer
/// libjpeg writes into: the manager first, so the pointer libjpeg hands
/// back is this struct's.
#[repr(C)]
struct Destination {
    manager: ffi::jpeg_destination_mgr,
    out: Vec<u8>,
    buffer: Vec<u8>,
}

fn unwound(payload: Box<dyn std::any::Any + Send>) -> CompressError {
    CompressError(caught::<Unwound>(payload).0)
}

/// # Safety
/// `cinfo` is a created compressor with this module's error manager and
/// destination; `rgb` holds `width` × `height` RGB pixels.
unsafe fn run(
    cinfo: &mut ffi::jpeg_compress_struct,
    rgb: &[u8],
    (width, height): (u32, u32),
    quality: u8,
    settings: Mozjpeg,
    icc: Option<&[u8]>,
) {
    use ffi::J_BOOLEAN_PARAM::*;
    use ffi::J_INT_PARAM::*;
    let flag = |on: bool| ffi::boolean::from(on);
    unsafe {
        cinfo.image_width = width;
        cinfo.image_height = height;
        cinfo.in_color_space = ffi::J_COLOR_SPACE::JCS_RGB;
        cinfo.input_components = 3;
        let profile = if settings.mozjpeg_defaults {
            ffi::JINT_COMPRESS_PROFILE_VALUE::JCP_MAX_COMPRESSION
        } else {
            ffi::JINT_COMPRESS_PROFILE_VALUE::JCP_FASTEST
        };
        ffi::jpeg_c_set_int_param(cinfo, JINT_COMPRESS_PROFILE, profile as i32);
        // YCbCr 4:2:0 (luma sampled 2 × 2, chroma 1 × 1) by default.
        ffi::jpeg_set_defaults(cinfo);
        let table = if settings.imagemagick_tables { 3 } else { 0 };
        ffi::jpeg_c_set_int_param(cinfo, JINT_BASE_QUANT_TBL_IDX, table);
        ffi::jpeg_c_set_bool_param(cinfo, JBOOLEAN_TRELLIS_QUANT, flag(settings.trellis));
        ffi::jpeg_c_set_bool_param(
            cinfo,
            JBOOLEAN_TRELLIS_QUANT_DC,
            flag(settings.trellis && settings.trellis_dc),
        );
        ffi::jpeg_c_set_bool_param(
            cinfo,
            JBOOLEAN_TRELLIS_EOB_OPT,
            flag(settings.trellis && settings.trellis_eob),
        );
        ffi::jpeg_c_set_bool_param(cinfo, JBOOLEAN_OPTIMIZE_SCANS, flag(settings.scan_search));
        // The script again: the defaults made one for the settings before.
        ffi::jpeg_simple_progression(cinfo);
        cinfo.optimize_coding = 1;
        ffi::jpeg_set_quality(cinfo, i32::from(quality.clamp(1, 100)), 0);
        ffi::jpeg_start_compress(cinfo, 1);
        if let Some(icc) = icc {
            write_icc_profile(cinfo, icc);
        }
        let row = width as usize * 3;
        while cinfo.next_scanline < height {
            let first = cinfo.next_scanline as usize;
            let mut rows: [*const u8; 16] = [std::ptr::null(); 16];
            let count = (height as usize - first).min(rows.len());
            for (i, slot) in rows.iter_mut().take(count).enumerate() {
                *slot = rgb.as_ptr().add((first + i) * row);
            }
            if ffi::jpeg_write_scanlines(cinfo, rows.as_ptr(), count as _) == 0 {
                fail("the encoder took no rows".into());
            }
        }
        ffi::jpeg_finish_compress(cinfo);
    }
}

/// The ICC profile in APP2 markers, as libjpeg-turbo's
/// `jpeg_write_icc_profile` writes it: a signature, the marker's number
/// (from 1) and the count, then up to 65 519 bytes of the profile.
///
/// # Safety
/// `cinfo` is a started compressor that has written no rows.
unsafe fn write_icc_profile(cinfo: &mut ffi::jpeg_compress_struct, icc: &[u8]) {
    const APP2: i32 = 0xE2;
    const SIGNATURE: &[u8] = b"ICC_PROFILE\0";
    const MAX_CHUNK: usize = 65_533 - SIGNATURE.len() - 2;
    let chunks = icc.chunks(MAX_CHUNK);
    let count = chunks.len();
    if icc.is_empty() || count > usize::from(u8::MAX) {
        return;
    }
    let mut marker = Vec::with_capacity(icc.len().min(MAX_CHUNK) + SIGNATURE.len() + 2);
    for (i, chunk) in chunks.enumerate() {
        marker.clear();
        marker.extend_from_slice(SIGNATURE);
        marker.extend([i as u8 + 1, count as u8]);
        marker.extend_from_slice(chunk);
        unsafe { ffi::jpeg_write_marker(cinfo, APP2, marker.as_ptr(), marker.len() as _) };
    }
}

fn fail(message: String) -> ! {
    unwind(Unwound(message))
}

/// The destination of a compressor of [`compress`].
///
/// # Safety
/// `cinfo.dest` points at the manager of a live [`Destination`].
unsafe fn destination(cinfo: &mut ffi::jpeg_compress_struct) -> &mut Destination {
    unsafe { &mut *(cinfo.dest as *mut Destination) }
}

unsafe extern "C-unwind" fn init_destination(cinfo: &mut ffi::jpeg_compress_struct) {
    // SAFETY: libjpeg calls this with the compressor `compress` set up.
    let destination = unsafe { destination(cinfo) };
    destination.manager.next_output_byte = destination.buffer.as_mut_ptr();
    destination.manager.free_in_buffer = destination.buffer.len();
}

/// The buffer is full: its bytes go to the output, and it is reused.
unsafe extern "C-unwind" fn empty_output_buffer(cinfo: &mut ffi::jpeg_compress_struct) -> i32 {
    // SAFETY: as above.
    let destination = unsafe { destination(cinfo) };
    destination.out.extend_from_slice(&destination.buffer);
    destination.manager.next_output_byte = destination.buffer.as_mut_ptr();
    destination.manager.free_in_buffer = destination.buffer.len();
    1
}

/// The last bytes written go to the output.
unsafe extern "C-unwind" fn term_destination(cinfo: &mut ffi::jpeg_compress_struct) {
    // SAFETY: as above.
    let destination = unsafe { destination(cinfo) };
    let written = destination.buffer.len() - destination.manager.free_in_buffer;
    destination
        .out
        .extend_from_slice(&destination.buffer[..written]);
}

unsafe extern "C-unwind" fn error_exit(cinfo: &mut ffi::jpeg_common_struct) {
    // SAFETY: libjpeg calls this with its own, live `cinfo`.
    fail(unsafe { message(cinfo) });
}

/// Warnings and trace messages are not errors of a compression.
unsafe extern "C-unwind" fn emit_message(_: &mut ffi::jpeg_common_struct, _: i32) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixels(width: u32, height: u32) -> Vec<u8> {
        (0..width * height * 3)
            .map(|i| ((i * 37) % 251) as u8 ^ ((i / 3 / width) as u8))
            .collect()
    }

    #[test]
    fn every_setting_writes_a_progressive_jpeg_of_the_right_size() {
        let rgb = pixels(61, 37);
        for settings in [
            Mozjpeg::LIBJPEG,
            Mozjpeg::FULL,
            Mozjpeg {
                scan_search: false,
                trellis_eob: true,
                ..Mozjpeg::FULL
            },
        ] {
            let bytes = compress(&rgb, 61, 37, 80, settings, None).unwrap();
            let image = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
                .expect("decodes");
            assert_eq!((image.width(), image.height()), (61, 37), "{settings:?}");
            assert!(bytes.windows(2).any(|w| w == [0xFF, 0xC2]), "{settings:?}");
        }
    }

    #[test]
    fn a_large_image_spans_several_buffers_and_the_profile_is_carried() {
        let (width, height) = (700, 500);
        let rgb = pixels(width, height);
        let icc = vec![5u8; 70_000];
        let bytes = compress(&rgb, width, height, 95, Mozjpeg::LIBJPEG, Some(&icc)).unwrap();
        assert!(bytes.len() > 64 * 1024 + icc.len(), "{}", bytes.len());
        assert!(bytes.ends_with(&[0xFF, 0xD9]));
        let mut decoder =
            image::codecs::jpeg::JpegDecoder::new(std::io::Cursor::new(&bytes)).unwrap();
        let carried = image::ImageDecoder::icc_profile(&mut decoder).unwrap();
        assert_eq!(carried.as_deref(), Some(&icc[..]));
    }

    #[test]
    fn pixels_that_do_not_fill_the_size_are_an_error() {
        assert!(compress(&[0; 10], 2, 2, 80, Mozjpeg::LIBJPEG, None).is_err());
        assert!(compress(&[], 0, 2, 80, Mozjpeg::LIBJPEG, None).is_err());
    }
}
