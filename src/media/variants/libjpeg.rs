//! What the compressor ([`super::compress`]) and the decoder (`turbo`,
//! with the `libjpeg-turbo` feature) share of libjpeg's error handling.
//!
//! libjpeg reports an error by calling its error manager's `error_exit`,
//! which must not return. Ours unwinds with a payload of the caller's own
//! type (the C code is built with unwind tables); the caller catches it at
//! the edge of its call into libjpeg, destroys the codec and turns the
//! payload back into its error ([`caught`]). Any other unwind is a real
//! bug and goes on.
use std::any::Any;
use std::panic::resume_unwind;

use mozjpeg_sys as ffi;

/// libjpeg's handlers of errors and of warnings and trace messages.
pub(super) type ErrorExit = unsafe extern "C-unwind" fn(&mut ffi::jpeg_common_struct);
pub(super) type EmitMessage = unsafe extern "C-unwind" fn(&mut ffi::jpeg_common_struct, i32);

/// Fills `err` with libjpeg's standard error manager, with `error_exit`
/// and `emit_message` in place of its own, and installs it in `common`.
///
/// # Safety
/// `err` outlives every use of `common` by libjpeg and does not move.
pub(super) unsafe fn install_errors(
    common: &mut ffi::jpeg_common_struct,
    err: &mut ffi::jpeg_error_mgr,
    error_exit: ErrorExit,
    emit_message: EmitMessage,
) {
    // SAFETY: `jpeg_std_error` fills the manager and returns it.
    let err = unsafe { ffi::jpeg_std_error(err) };
    err.error_exit = Some(error_exit);
    err.emit_message = Some(emit_message);
    common.err = err;
}

/// Unwinds with `payload`, which [`caught`] gives back. Without a panic
/// message: a caller's bad file is not a bug of the service.
pub(super) fn unwind<T: Any + Send>(payload: T) -> ! {
    resume_unwind(Box::new(payload))
}

/// The payload [`unwind`] unwound with; any other unwind goes on.
pub(super) fn caught<T: Any>(payload: Box<dyn Any + Send>) -> T {
    match payload.downcast::<T>() {
        Ok(payload) => *payload,
        // Not libjpeg's: a real bug, which must not be swallowed.
        Err(other) => resume_unwind(other),
    }
}

/// The message of libjpeg's current error, formatted by libjpeg.
///
/// # Safety
/// `cinfo.err` points at a live error manager.
pub(super) unsafe fn message(cinfo: &mut ffi::jpeg_common_struct) -> String {
    /// libjpeg's `JMSG_LENGTH_MAX`.
    const LENGTH: usize = 80;
    /// `format_message` as libjpeg declares it: it writes into the
    /// buffer, which the binding's `&[u8; 80]` does not say.
    type Format = unsafe extern "C-unwind" fn(&mut ffi::jpeg_common_struct, *mut u8);
    let mut buffer = [0u8; LENGTH];
    // SAFETY: `cinfo.err` is live; a reference and a raw pointer to the
    // same array are passed alike, so the transmuted function is the
    // same C function with its true signature; it writes at most
    // `LENGTH` bytes, ending with a NUL.
    unsafe {
        if let Some(format) = (*cinfo.err).format_message {
            let format = std::mem::transmute::<
                unsafe extern "C-unwind" fn(&mut ffi::jpeg_common_struct, &[u8; LENGTH]),
                Format,
            >(format);
            format(cinfo, buffer.as_mut_ptr());
        }
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(LENGTH);
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}
