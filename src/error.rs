//! The error type every layer keeps as a cause.

/// A boxed error kept as a cause, for logs (never shown to callers).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
