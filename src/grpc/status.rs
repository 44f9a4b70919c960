//! Domain errors as gRPC statuses. Internal causes are logged, never sent.
use tonic::Status;

use crate::domain::DomainError;
use crate::telemetry::error_chain;

impl From<DomainError> for Status {
    fn from(error: DomainError) -> Self {
        match error {
            DomainError::InvalidArgument(message) => Status::invalid_argument(message),
            DomainError::OutOfRange(message) => Status::out_of_range(message),
            DomainError::DataLoss(message) => Status::data_loss(message),
            DomainError::NotFound(message) => Status::not_found(message),
            DomainError::PermissionDenied(message) => Status::permission_denied(message),
            DomainError::ResourceExhausted(message) | DomainError::TooLarge(message) => {
                Status::resource_exhausted(message)
            }
            DomainError::FailedPrecondition(message) => Status::failed_precondition(message),
            DomainError::AlreadyExists(message) => Status::already_exists(message),
            DomainError::Aborted(message) => Status::aborted(message),
            DomainError::DeadlineExceeded(message) => Status::deadline_exceeded(message),
            DomainError::Cancelled => Status::cancelled("the call was cancelled"),
            DomainError::Unavailable(cause) => {
                tracing::warn!(error = %error_chain(cause.as_ref()), "storage backend unavailable");
                Status::unavailable("a storage backend is unavailable; retry later")
            }
            DomainError::Internal(cause) => {
                tracing::error!(error = %error_chain(cause.as_ref()), "internal error");
                Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn internal_causes_do_not_reach_the_caller() {
        let status = Status::from(DomainError::Internal("disk /var/lib/secret failed".into()));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
        let status = Status::from(DomainError::Unavailable(
            "connect to 10.0.0.7 refused".into(),
        ));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("10.0.0.7"));
    }
}
