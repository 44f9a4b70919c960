//! The aws backend: image bytes in S3 and metadata in DynamoDB, through the
//! AWS SDKs, pointed at AWS or at any compatible store (Garage, MinIO, Ceph
//! RGW; ScyllaDB Alternator). Credentials come from the standard
//! `aws-config` chain only.

mod body;
mod dynamodb;
mod errors;
mod s3;
mod settings;
mod watched_object;

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::config::Region;

pub use dynamodb::{DynamoMetadataStore, MIN_EVENT_RETENTION};
pub use s3::S3BlobStore;
pub use settings::{AwsSettings, PayloadSigning, S3Checksums};
pub use watched_object::{ObjectReadError, WatchedObject};

use crate::domain::ports::StorageError;

/// Region used when neither the configuration nor the AWS chain names one
/// (typical for S3- and DynamoDB-compatible stores).
const FALLBACK_REGION: &str = "us-east-1";

/// Connects to both stores (no network call is made until first use).
pub async fn connect(settings: &AwsSettings) -> (S3BlobStore, DynamoMetadataStore) {
    let (shared, region) = shared_config(settings).await;
    let s3 = S3BlobStore::new(&shared, region.clone(), settings);
    let dynamodb = DynamoMetadataStore::new(&shared, region, settings);
    (s3, dynamodb)
}

/// The SDK configuration every client of the backend starts from (the
/// standard credential chain, the timeouts), and its region.
async fn shared_config(settings: &AwsSettings) -> (aws_config::SdkConfig, Region) {
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
    (shared, region)
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
