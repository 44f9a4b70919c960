//! Limits shared by the scrubber and the decoders, so a file one accepts
//! the other does not refuse for the same reason.

/// Most scans a JPEG may have. Every progressive scan is a pass over all
/// the image's coefficients: cameras write about ten, a file with
/// thousands is built to spend CPU (libjpeg-turbo's own tools stop at
/// 500). The scrubber refuses more on upload, whatever the build's
/// decoder; the libjpeg-turbo decode checks it again.
pub const MAX_JPEG_SCANS: u32 = 500;
