//! Domain errors as gRPC statuses. Internal causes are logged, never sent.
use tonic::Status;

use crate::domain::DomainError;
use crate::domain::error::QuotaViolation;
use crate::telemetry::error_chain;

impl From<DomainError> for Status {
    fn from(error: DomainError) -> Self {
        match error {
            DomainError::InvalidArgument(message) => Status::invalid_argument(message),
            DomainError::OutOfRange(message) => Status::out_of_range(message),
            DomainError::DataLoss(message) => Status::data_loss(message),
            DomainError::NotFound(message) => Status::not_found(message),
            DomainError::PermissionDenied(message) => Status::permission_denied(message),
            DomainError::ResourceExhausted(message) => Status::resource_exhausted(message),
            DomainError::TooLarge(message) => do_not_retry(Status::resource_exhausted(message)),
            DomainError::QuotaExceeded(violation) => do_not_retry(quota_failure(violation)),
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

/// Marks a status that retrying cannot change: gRPC clients with a retry
/// policy (see the shipped service config) do not retry a call whose
/// `grpc-retry-pushback-ms` is negative, so RESOURCE_EXHAUSTED for a busy
/// replica is retried and for an image over a limit is not.
fn do_not_retry(mut status: Status) -> Status {
    status.metadata_mut().insert(
        RETRY_PUSHBACK,
        tonic::metadata::MetadataValue::from_static("-1"),
    );
    status
}

/// RESOURCE_EXHAUSTED with a `google.rpc.QuotaFailure` naming the user and
/// the quota, as `grpc-status-details-bin`.
fn quota_failure(violation: QuotaViolation) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let details = ErrorDetails::with_quota_failure_violation(
        violation.subject,
        violation.description.clone(),
    );
    Status::with_error_details(
        tonic::Code::ResourceExhausted,
        violation.description,
        details,
    )
}

/// The trailer through which a server tells gRPC clients when to retry.
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

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

    /// The service config shipped for generated clients names every RPC
    /// once, and retries a mutation only on a refusal that changed nothing.
    #[test]
    fn the_shipped_service_config_covers_every_rpc() {
        use prost::Message;
        let config: serde_json::Value = serde_json::from_str(include_str!(
            "../../proto/imageservice/v1/imageservice_grpc_service_config.json"
        ))
        .unwrap();
        let descriptors =
            prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap();
        let mut rpcs: Vec<String> = descriptors
            .file
            .iter()
            .flat_map(|file| &file.service)
            .filter(|service| service.name() == "ImageService")
            .flat_map(|service| service.method.iter().map(|m| m.name().to_owned()))
            .collect();
        rpcs.sort();
        let mut named = Vec::new();
        for method_config in config["methodConfig"].as_array().unwrap() {
            let codes = &method_config["retryPolicy"]["retryableStatusCodes"];
            let codes: Vec<&str> = codes
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap())
                .collect();
            for name in method_config["name"].as_array().unwrap() {
                assert_eq!(name["service"], "imageservice.v1.ImageService");
                let method = name["method"].as_str().unwrap().to_owned();
                let mutates = ["UploadImage", "UpdateImage", "DeleteImage", "CancelUpload"];
                if mutates.contains(&method.as_str()) {
                    assert_eq!(codes, ["RESOURCE_EXHAUSTED"], "{method} may have acted");
                }
                named.push(method);
            }
        }
        named.sort();
        assert_eq!(named, rpcs);
    }

    #[test]
    fn a_quota_refusal_carries_its_quota_failure_and_is_not_retried() {
        use tonic_types::StatusExt;
        let status = Status::from(DomainError::QuotaExceeded(QuotaViolation {
            subject: "user:alice".into(),
            description: "the quota of 10 images per user is reached".into(),
        }));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.metadata().get(RETRY_PUSHBACK).unwrap(), "-1");
        let failure = status.get_details_quota_failure().unwrap();
        assert_eq!(failure.violations[0].subject, "user:alice");
        assert!(status.message().contains("10 images"));
    }

    #[test]
    fn only_a_busy_replica_is_worth_retrying() {
        let busy = Status::from(DomainError::ResourceExhausted("slots".into()));
        let over = Status::from(DomainError::TooLarge("50 MiB".into()));
        assert_eq!(busy.code(), Code::ResourceExhausted);
        assert_eq!(over.code(), Code::ResourceExhausted);
        assert!(busy.metadata().get(RETRY_PUSHBACK).is_none());
        assert_eq!(over.metadata().get(RETRY_PUSHBACK).unwrap(), "-1");
    }
}
