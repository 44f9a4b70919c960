//! The aws backend: image bytes in S3 and metadata in DynamoDB, through the
//! AWS SDKs, pointed at AWS or at any compatible store (Garage, MinIO, Ceph
//! RGW; ScyllaDB Alternator). Credentials come from the standard
//! `aws-config` chain only.

mod body;
mod dynamodb;
mod s3;

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::config::Region;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

pub use dynamodb::DynamoMetadataStore;
pub use s3::S3BlobStore;

use crate::domain::ports::StorageError;

/// Region used when neither the configuration nor the AWS chain names one
/// (typical for S3- and DynamoDB-compatible stores).
const FALLBACK_REGION: &str = "us-east-1";

/// What the aws backend needs to know.
#[derive(Clone, Debug)]
pub struct AwsSettings {
    pub bucket: String,
    pub s3_endpoint: Option<String>,
    pub s3_public_endpoint: Option<String>,
    pub table: String,
    pub dynamodb_endpoint: Option<String>,
    pub region: Option<String>,
    pub part_size: u64,
    pub parts_in_flight: usize,
    pub checksums: S3Checksums,
    pub payload_signing: PayloadSigning,
    /// The largest object that will be written (sizes parts so that no
    /// upload needs more than 10 000).
    pub max_object_bytes: u64,
    /// What `init` sets the `by_time` index's partition count to (see
    /// [`dynamodb`]).
    pub time_shards: u32,
}

/// When the S3 client computes and checks checksums (`--s3-checksums`).
// The variants' explanations are plain comments: as doc comments, clap
// would print them in `--help` instead of the flag's list of values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum S3Checksums {
    // On every request and response that supports them.
    WhenSupported,
    // Only where the API requires them (stores that reject the headers).
    WhenRequired,
}

/// Whether SigV4 signs the bytes of each object and part
/// (`--s3-payload-signing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PayloadSigning {
    // Over plain HTTP only: TLS protects the bytes otherwise.
    Auto,
    Signed,
    Unsigned,
}

/// Connects to both stores (no network call is made until first use).
pub async fn connect(settings: &AwsSettings) -> (S3BlobStore, DynamoMetadataStore) {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
        TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .read_timeout(Duration::from_secs(30))
            .build(),
    );
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    let shared = loader.load().await;
    let region = shared
        .region()
        .cloned()
        .unwrap_or_else(|| Region::new(FALLBACK_REGION));
    let s3 = S3BlobStore::new(&shared, region.clone(), settings);
    let dynamodb = DynamoMetadataStore::new(&shared, region, settings);
    (s3, dynamodb)
}

/// Creates the bucket and the table with its indexes; succeeds without
/// changes when they exist.
/// Returns the table's time shard count.
pub async fn init(settings: &AwsSettings) -> Result<u32, StorageError> {
    let (s3, dynamodb) = connect(settings).await;
    s3.create_bucket().await?;
    dynamodb.create_table().await?;
    dynamodb.raise_time_shards(settings.time_shards).await
}

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
fn classify<E, R>(error: aws_sdk_s3::error::SdkError<E, R>) -> StorageError
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
