//! JPEG decoding with libjpeg-turbo (the `libjpeg-turbo` feature): the
//! same reduced-scale decode as jpeg-decoder's, with SIMD IDCT, upsampling
//! and colour conversion: 15–30 % less CPU per phone photo's render (see
//! `BENCHMARKS.md`, figure 8). Built from the sources `mozjpeg-sys` vendors (the
//! decoder of mozjpeg is libjpeg-turbo's), which needs nasm at build time.
//!
//! libjpeg's errors unwind and are caught at the edge of [`decode`], where
//! the decoder is destroyed ([`super::libjpeg`]). Warnings (a truncated
//! file, bad data the decoder would paper over with grey) are errors too,
//! like jpeg-decoder's.
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};

use mozjpeg_sys as ffi;

use super::libjpeg::{caught, install_errors, message, unwind};

use crate::media::limits::MAX_JPEG_SCANS;

/// Most scans a progressive JPEG may have ([`MAX_JPEG_SCANS`]).
const MAX_SCANS: i32 = MAX_JPEG_SCANS as i32;

/// Why a decode failed.
#[derive(Debug)]
pub enum TurboError {
    /// The decoder needed more memory than it was allowed.
    Memory,
    /// The data is not a JPEG libjpeg-turbo can decode, with its message.
    Corrupt(String),
    /// The render's caller went away: the decode stopped.
    Abandoned,
}

/// The payload the error handler unwinds with.
struct Unwound(TurboError);

/// Decoded pixels: width, height and 8-bit samples (RGB, or grey when
/// `grey`).
pub type Pixels = (u32, u32, Vec<u8>);

/// Decodes `source` at 1/`denominator` scale (1, 2, 4 or 8) to RGB, or to
/// greyscale when `grey`, with at most `max_memory` bytes in libjpeg's own
/// large buffers (a progressive file's coefficients). Stops within a row
/// of blocks once `abandoned` is set: libjpeg calls its progress monitor
/// before each row of blocks of each scan it reads, and between the rows
/// it outputs.
pub fn decode(
    source: &[u8],
    denominator: u32,
    grey: bool,
    max_memory: u64,
    abandoned: &AtomicBool,
) -> Result<Pixels, TurboError> {
    // Boxed: libjpeg keeps pointers to the error and progress managers,
    // so none of these may move while it runs.
    let mut state = Box::new(State {
        // SAFETY: these are plain C structs for which all-zero is the
        // state libjpeg expects before `jpeg_std_error` and `create`.
        cinfo: unsafe { std::mem::zeroed() },
        err: unsafe { std::mem::zeroed() },
        progress: Progress {
            // SAFETY: as above.
            manager: unsafe { std::mem::zeroed() },
            abandoned,
        },
    });
    let state = &mut *state;
    // SAFETY: the error manager is installed before anything can fail;
    // `create` allocates the decoder, destroyed below whatever happens.
    unsafe {
        install_errors(
            &mut state.cinfo.common,
            &mut state.err,
            error_exit,
            emit_message,
        );
    }
    let created = catch_unwind(AssertUnwindSafe(|| unsafe {
        ffi::jpeg_create_decompress(&mut state.cinfo);
    }));
    if let Err(payload) = created {
        return Err(unwound(payload));
    }
    state.progress.manager.progress_monitor = Some(progress_monitor);
    // A pointer to the whole `Progress`: the monitor reads `abandoned`
    // through it.
    state.cinfo.common.progress = (&raw mut state.progress).cast();
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `source` outlives the decoder, which is destroyed
        // before this function returns; see `run`.
        unsafe { run(&mut state.cinfo, source, denominator, grey, max_memory) }
    }));
    // SAFETY: the decoder was created; destroying it frees everything
    // libjpeg allocated, whether or not it finished.
    unsafe { ffi::jpeg_destroy_decompress(&mut state.cinfo) };
    result.map_err(unwound)
}

struct State<'a> {
    cinfo: ffi::jpeg_decompress_struct,
    err: ffi::jpeg_error_mgr,
    progress: Progress<'a>,
}

/// libjpeg's progress manager, followed by what the monitor reads: the
/// manager first, so the pointer libjpeg hands back is this struct's.
#[repr(C)]
struct Progress<'a> {
    manager: ffi::jpeg_progress_mgr,
    abandoned: &'a AtomicBool,
}

fn unwound(payload: Box<dyn std::any::Any + Send>) -> TurboError {
    caught::<Unwound>(payload).0
}

/// # Safety
/// `cinfo` is a created decompressor with this module's error manager.
unsafe fn run(
    cinfo: &mut ffi::jpeg_decompress_struct,
    source: &[u8],
    denominator: u32,
    grey: bool,
    max_memory: u64,
) -> Pixels {
    unsafe {
        (*cinfo.common.mem).max_memory_to_use =
            ffi::c_long::try_from(max_memory).unwrap_or(ffi::c_long::MAX);
        ffi::jpeg_mem_src(cinfo, source.as_ptr(), source.len() as _);
        ffi::jpeg_read_header(cinfo, 1);
        cinfo.scale_num = 1;
        cinfo.scale_denom = denominator;
        cinfo.out_color_space = if grey {
            ffi::J_COLOR_SPACE::JCS_GRAYSCALE
        } else {
            ffi::J_COLOR_SPACE::JCS_RGB
        };
        cinfo.dct_method = ffi::J_DCT_METHOD::JDCT_ISLOW;
        ffi::jpeg_start_decompress(cinfo);
        let (width, height) = (cinfo.output_width, cinfo.output_height);
        let channels = cinfo.output_components as usize;
        let row = width as usize * channels;
        if (row as u64).saturating_mul(u64::from(height)) > max_memory {
            fail(TurboError::Memory);
        }
        let mut pixels = vec![0u8; row * height as usize];
        while cinfo.output_scanline < height {
            let first = cinfo.output_scanline as usize;
            let mut rows: [*mut u8; 16] = [std::ptr::null_mut(); 16];
            let count = (height as usize - first).min(rows.len());
            for (i, slot) in rows.iter_mut().take(count).enumerate() {
                *slot = pixels.as_mut_ptr().add((first + i) * row);
            }
            if ffi::jpeg_read_scanlines(cinfo, rows.as_mut_ptr(), count as _) == 0 {
                fail(TurboError::Corrupt("the decoder made no progress".into()));
            }
        }
        ffi::jpeg_finish_decompress(cinfo);
        (width, height, pixels)
    }
}

fn fail(error: TurboError) -> ! {
    unwind(Unwound(error))
}

unsafe extern "C-unwind" fn error_exit(cinfo: &mut ffi::jpeg_common_struct) {
    // SAFETY: libjpeg calls this with its own, live `cinfo`.
    let code = unsafe { (*cinfo.err).msg_code };
    if code == ffi::JERR_OUT_OF_MEMORY || code == ffi::JERR_NO_BACKING_STORE {
        fail(TurboError::Memory);
    }
    fail(TurboError::Corrupt(unsafe { message(cinfo) }));
}

/// Warnings (level -1) stop the decode; trace messages are ignored.
unsafe extern "C-unwind" fn emit_message(cinfo: &mut ffi::jpeg_common_struct, level: i32) {
    if level < 0 {
        fail(TurboError::Corrupt(unsafe { message(cinfo) }));
    }
}

unsafe extern "C-unwind" fn progress_monitor(cinfo: &mut ffi::jpeg_common_struct) {
    if cinfo.is_decompressor == 0 {
        return;
    }
    // SAFETY: a decompressor's common part is the start of its
    // `jpeg_decompress_struct`.
    let scans = unsafe {
        (*(cinfo as *mut ffi::jpeg_common_struct as *mut ffi::jpeg_decompress_struct))
            .input_scan_number
    };
    if scans > MAX_SCANS {
        fail(TurboError::Corrupt(format!(
            "the JPEG has more than {MAX_SCANS} scans"
        )));
    }
    // SAFETY: `progress` is the manager `decode` installed, the first
    // field of a `Progress` that outlives the decoder.
    let abandoned = unsafe { (*(cinfo.progress as *const Progress<'_>)).abandoned };
    if abandoned.load(Ordering::Relaxed) {
        fail(TurboError::Abandoned);
    }
}
