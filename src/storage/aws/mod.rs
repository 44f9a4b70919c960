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

pub use dynamodb::{DynamoMetadataStore, MIN_EVENT_RETENTION};
pub use s3::S3BlobStore;
pub use settings::{AwsSettings, PayloadSigning, S3Checksums};
pub use watched_object::{ObjectReadError, WatchedObject};

use crate::domain::ports::StorageError;

/// Connects to both stores (no network call is made until first use).
pub async fn connect(settings: &AwsSettings) -> (S3BlobStore, DynamoMetadataStore) {
    let (shared, region) = settings.sdk_config().await;
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
