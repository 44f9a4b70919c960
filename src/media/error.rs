//! Why bytes were refused or could not be processed.

use crate::BoxError;

/// Why bytes were refused or could not be processed. The messages of every
/// variant but `Internal` describe the caller's file and are safe to show.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// Not an accepted image, or a corrupt one.
    #[error("{0}")]
    Invalid(String),
    /// More or fewer bytes than declared.
    #[error("{0}")]
    OutOfRange(String),
    /// A declared checksum does not match the bytes.
    #[error("{0}")]
    DataLoss(String),
    /// A size, pixel, frame or memory limit was exceeded.
    #[error("{0}")]
    TooLarge(String),
    /// A codec failed on input it had accepted: a bug, not the caller's file.
    #[error("image processing failed")]
    Internal(#[source] BoxError),
}

impl MediaError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }
}
