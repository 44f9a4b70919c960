//! What the aws backend is configured with.
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::config::Region;

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
    /// [`super::dynamodb`]).
    pub time_shards: u32,
    /// How long events are kept: their items' TTL (`--event-retention`).
    pub event_retention: std::time::Duration,
}

impl AwsSettings {
    /// The SDK configuration every client of the backend starts from (the
    /// standard credential chain, the timeouts), and its region.
    pub(super) async fn sdk_config(&self) -> (aws_config::SdkConfig, Region) {
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .read_timeout(Duration::from_secs(30))
                .build(),
        );
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let shared = loader.load().await;
        let region = shared
            .region()
            .cloned()
            .unwrap_or_else(|| Region::new(FALLBACK_REGION));
        (shared, region)
    }
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
