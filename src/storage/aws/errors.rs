//! How the SDKs' errors become the storage errors the domain understands.

use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::domain::ports::StorageError;

/// Error codes that mean "slow down or try again later".
const RETRYABLE_CODES: &[&str] = &[
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "ThrottlingException",
    "Throttling",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "InternalServerError",
    "LimitExceededException",
];

/// Sorts an SDK error into the storage errors the domain understands. The
/// SDK's text stays in the cause chain, for logs.
pub(super) fn classify<E, R>(error: aws_sdk_s3::error::SdkError<E, R>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    use aws_sdk_s3::error::SdkError;
    tracing::debug!(error = %crate::telemetry::error_chain(&error), code = ?error.code(), "storage backend call failed");
    match &error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            StorageError::Unavailable(Box::new(error))
        }
        SdkError::ServiceError(service) => match service.err().code() {
            // DynamoDB's ResourceNotFoundException means a missing table: a
            // deployment error, not a missing image.
            Some("NoSuchKey" | "NotFound" | "NoSuchUpload") => StorageError::NotFound,
            Some("ConditionalCheckFailedException") => StorageError::ConditionFailed,
            Some(code) if RETRYABLE_CODES.contains(&code) => {
                StorageError::Unavailable(Box::new(error))
            }
            _ => StorageError::Internal(Box::new(error)),
        },
        _ => StorageError::Internal(Box::new(error)),
    }
}
