//! What the aws backend is configured with.

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
