//! Errors the use cases return. Each variant means one thing to a caller;
//! the transports map them to status codes exhaustively.
use crate::BoxError;
use crate::media::MediaError;

/// Why a use case failed. Messages of the client-facing variants are safe to
/// show to callers; `Unavailable` and `Internal` carry causes for logs only.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The request is malformed or the bytes are not an accepted image.
    #[error("{0}")]
    InvalidArgument(String),
    /// More or fewer bytes than declared, or a read outside the object.
    #[error("{0}")]
    OutOfRange(String),
    /// A declared checksum does not match the bytes.
    #[error("{0}")]
    DataLoss(String),
    /// No such image (or variant).
    #[error("{0}")]
    NotFound(String),
    /// The caller is not allowed to do this to this image.
    #[error("{0}")]
    PermissionDenied(String),
    /// The replica is busy (its upload slots, the caller's uploads, the
    /// memory budget): retrying later may succeed.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The request is over a fixed limit (bytes, pixels, memory to decode,
    /// messages per byte): retrying it as it is cannot succeed.
    #[error("{0}")]
    TooLarge(String),
    /// The caller holds as much as a quota allows (bytes or images):
    /// retrying cannot succeed until they delete something.
    #[error("{}", .0.description)]
    QuotaExceeded(QuotaViolation),
    /// The request does not fit the state it acts on (an upload session
    /// already committed, or fed another way).
    #[error("{0}")]
    FailedPrecondition(String),
    /// An idempotency key was reused with other content.
    #[error("{0}")]
    AlreadyExists(String),
    /// A conditional update lost against a concurrent change.
    #[error("{0}")]
    Aborted(String),
    /// The call took too long (an upload stream that went quiet).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The caller cancelled.
    #[error("cancelled")]
    Cancelled,
    /// A backend could not be reached; retrying later may succeed.
    #[error("a storage backend is unavailable")]
    Unavailable(#[source] BoxError),
    /// A bug or an unexpected backend answer.
    #[error("internal error")]
    Internal(#[source] BoxError),
}

impl DomainError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }

    pub fn image_not_found() -> Self {
        Self::NotFound("image not found".into())
    }
}

impl From<MediaError> for DomainError {
    fn from(error: MediaError) -> Self {
        match error {
            MediaError::Invalid(message) => DomainError::InvalidArgument(message),
            MediaError::OutOfRange(message) => DomainError::OutOfRange(message),
            MediaError::DataLoss(message) => DomainError::DataLoss(message),
            MediaError::TooLarge(message) => DomainError::TooLarge(message),
            MediaError::Internal(source) => DomainError::Internal(source),
        }
    }
}

/// What refused an upload past a quota: the `google.rpc.QuotaFailure`
/// violation the caller gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaViolation {
    /// `user:{id}`.
    pub subject: String,
    /// Which quota, its limit and what the user holds.
    pub description: String,
}
