//! Configuration from flags and environment variables (12-factor). Every
//! knob has both; `image-service --help` documents them.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::domain::block::{BlockAction, BlockPolicy};
use crate::domain::image::Encoding;
use crate::domain::limits::EncodingLimits;
use crate::domain::scan::{OnFailure, PlaceLimits, ScanMode, ScanPolicy};
use crate::media::variants::VariantSize;
use crate::storage::aws::{AwsSettings, PayloadSigning, S3Checksums};
use crate::telemetry::LogFormat;

/// image-service: stores users' images (bytes in S3 or local files, metadata
/// in DynamoDB or an embedded store) behind a gRPC API.
///
/// With no subcommand it serves. Every flag can also be set through the
/// environment variable shown beside it.
#[derive(Clone, Debug, Parser)]
#[command(name = "image-service", version, about, long_about = None)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The listeners' addresses and TLS.
    #[command(flatten)]
    pub listeners: ListenerSettings,

    /// What each listener allows its connections and calls.
    #[command(flatten)]
    pub connections: ConnectionSettings,

    /// How callers are identified (the settings of [`crate::grpc::auth`]).
    #[command(flatten)]
    pub identity: AuthSettings,

    /// What one upload, download, render or listing may take (the
    /// domain's limits).
    #[command(flatten)]
    pub limits: LimitSettings,

    /// Where images and metadata are kept, and the key that signs page
    /// tokens and URLs.
    #[command(flatten)]
    pub storage: StorageSettings,

    /// Health checks, the periodic repair pass and shutdown.
    #[command(flatten)]
    pub operations: OperationSettings,

    /// The event stream: who may watch, retention, delivery.
    #[command(flatten)]
    pub events: EventSettings,

    /// The content scanner every new image is sent to.
    #[command(flatten)]
    pub scan: ScanSettings,

    /// The block list every new image is checked against.
    #[command(flatten)]
    pub block: BlockSettings,

    /// Logs.
    #[command(flatten)]
    pub telemetry: TelemetrySettings,
}

/// The listeners' addresses and TLS.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Listeners and TLS")]
pub struct ListenerSettings {
    /// Address of the gRPC listener (ImageService, health, reflection).
    #[arg(
        long,
        env = "IMAGE_SERVICE_GRPC_ADDR",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP listener: presigned downloads of the embedded
    /// backend and `/metrics`.
    #[arg(
        long,
        env = "IMAGE_SERVICE_HTTP_ADDR",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub http_addr: SocketAddr,

    /// Base URL that callers use to reach the HTTP listener, for the
    /// presigned URLs of the embedded backend (e.g. `https://img.example.com`).
    /// Default: `http://` + the HTTP listener's address.
    #[arg(long, env = "IMAGE_SERVICE_HTTP_PUBLIC_URL", global = true)]
    pub http_public_url: Option<String>,

    /// Serve `/metrics` on this address instead of the HTTP listener's, so
    /// the port callers reach does not expose metrics and a scraper never
    /// competes with callers for connection slots. Plain HTTP.
    #[arg(long, env = "IMAGE_SERVICE_METRICS_ADDR", global = true)]
    pub metrics_addr: Option<SocketAddr>,

    /// PEM file with the server's certificate chain. With --tls-key, both
    /// listeners speak TLS only. Reloaded when the file changes.
    #[arg(
        long,
        env = "IMAGE_SERVICE_TLS_CERT",
        requires = "tls_key",
        global = true
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM file with the private key of --tls-cert.
    #[arg(
        long,
        env = "IMAGE_SERVICE_TLS_KEY",
        requires = "tls_cert",
        global = true
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM file of the CA(s) that sign client certificates. When set, every
    /// client must present a certificate it signed (mutual TLS).
    #[arg(
        long,
        env = "IMAGE_SERVICE_TLS_CLIENT_CA",
        requires = "tls_cert",
        global = true
    )]
    pub tls_client_ca: Option<PathBuf>,
}

/// What each listener allows its connections and calls.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Connections")]
pub struct ConnectionSettings {
    /// HTTP/2 streams (calls) one gRPC connection may have open at once.
    #[arg(
        long,
        env = "IMAGE_SERVICE_MAX_CONCURRENT_STREAMS",
        default_value_t = 100,
        global = true
    )]
    pub max_concurrent_streams: u32,

    /// Calls the server runs at once over all connections; more are
    /// refused at once with UNAVAILABLE (retryable) rather than queued.
    #[arg(
        long,
        env = "IMAGE_SERVICE_MAX_IN_FLIGHT_CALLS",
        default_value_t = 1000,
        global = true
    )]
    pub max_in_flight_calls: usize,

    /// Connections each listener (gRPC, HTTP) keeps open at once; at the
    /// cap, a new connection takes the place of the one idle longest (no
    /// call in flight on gRPC, no byte moved on HTTP, for at least 1 s), or
    /// waits until one closes.
    #[arg(
        long,
        env = "IMAGE_SERVICE_MAX_CONNECTIONS",
        default_value_t = 1000,
        global = true
    )]
    pub max_connections: usize,

    /// A new connection must finish its TLS handshake and send its first
    /// request (HTTP/2 preface, or HTTP/1 headers) within this, or it is
    /// closed.
    #[arg(long, env = "IMAGE_SERVICE_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub handshake_timeout: Duration,

    /// A download stream whose caller reads nothing for this long is ended
    /// (its buffers and memory reservation are released).
    #[arg(long, env = "IMAGE_SERVICE_DOWNLOAD_STALL_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub download_stall_timeout: Duration,

    /// HTTP listener: a response the peer takes no byte of for this long
    /// ends the connection (a presigned download that is never read).
    #[arg(long, env = "IMAGE_SERVICE_HTTP_STALL_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub http_stall_timeout: Duration,

    /// HTTP listener: a request body (a presigned part upload) must have
    /// fully arrived within this of the request's start, or the request
    /// is answered 408 and its bytes are discarded. The default lets a
    /// 50 MiB part through at 200 KiB/s.
    #[arg(long, env = "IMAGE_SERVICE_HTTP_BODY_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration, global = true)]
    pub http_body_timeout: Duration,

    /// HTTP listener: a request body must bring at least this many bytes
    /// per second over every window of --http-min-body-rate-grace (a
    /// sliding window, from the request's start on: a body that was fast
    /// and then trickles is cut as soon as its last window falls short),
    /// or all its remaining bytes within the window; otherwise it is cut
    /// with 408 and its connection closed, so trickled bodies cannot hold
    /// the connection slots or their files. 0: no floor.
    #[arg(
        long,
        env = "IMAGE_SERVICE_HTTP_MIN_BODY_RATE",
        default_value_t = 500,
        global = true
    )]
    pub http_min_body_rate: u64,

    /// HTTP listener: the window --http-min-body-rate is measured over
    /// (a body's first window starts with the request, so a slow start
    /// gets this long).
    #[arg(long, env = "IMAGE_SERVICE_HTTP_MIN_BODY_RATE_GRACE", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub http_min_body_rate_grace: Duration,

    /// HTTP listener: connections one remote address (IPv4 address, IPv6
    /// /64) may have open at once; more are closed when accepted. 0: no
    /// cap.
    #[arg(
        long,
        env = "IMAGE_SERVICE_HTTP_MAX_CONNECTIONS_PER_PEER",
        default_value_t = 64,
        global = true
    )]
    pub http_max_connections_per_peer: usize,

    /// HTTP listener: streams one HTTP/2 connection may have open at once
    /// (each a request, a presigned part upload among them). With
    /// --http-max-connections-per-peer it bounds the bodies and files one
    /// address holds at once (64 × 16 = 1024 by default). Clients send
    /// parts over HTTP/1 or a few streams each; 0 is taken as 1.
    #[arg(
        long,
        env = "IMAGE_SERVICE_HTTP_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 16,
        global = true
    )]
    pub http_max_streams_per_connection: u32,

    /// HTTP listener (embedded backend): part bodies of direct uploads
    /// received at once by this replica, from all callers; past it a part
    /// upload is answered 503 with Retry-After. Each holds an open file and
    /// up to a part's bytes in blobs/.partial. A body holds its slot from
    /// its first byte on. With --http-max-part-uploads-per-user (16 by
    /// default) it takes 256 / 16 = 16 users sending at once to fill it.
    /// 0: no cap.
    #[arg(
        long,
        env = "IMAGE_SERVICE_HTTP_MAX_CONCURRENT_PART_UPLOADS",
        default_value_t = 256,
        global = true
    )]
    pub http_max_concurrent_part_uploads: usize,

    /// HTTP listener (embedded backend): part bodies of direct uploads one
    /// user (the owner of the parts' sessions, all sessions together)
    /// sends to this replica at once; past it that user's part upload is
    /// answered 503 with Retry-After at once, while other users' parts go
    /// through. A phone or a browser sends a few parts at once (browsers
    /// open 6 connections per host), so 16 leaves room; with the default
    /// --http-max-concurrent-part-uploads of 256 it takes 16 users to fill
    /// the replica. A body holds its slot from its first byte on. 0: no
    /// per-user cap.
    #[arg(
        long,
        env = "IMAGE_SERVICE_HTTP_MAX_PART_UPLOADS_PER_USER",
        default_value_t = 16,
        global = true
    )]
    pub http_max_part_uploads_per_user: usize,

    /// HTTP listener (embedded backend): presigned downloads this replica
    /// sends at once, to all callers; past it a download is answered 503
    /// with Retry-After. Each holds until it is sent, or until its peer
    /// has read nothing for --http-stall-timeout, one open file and its
    /// read-ahead (512 KiB) from --memory-budget, charged to no user's
    /// share: 512 × 512 KiB = 256 MiB by default. 0: no cap.
    #[arg(
        long,
        env = "IMAGE_SERVICE_HTTP_MAX_DOWNLOADS",
        default_value_t = 512,
        global = true
    )]
    pub http_max_downloads: usize,

    /// HTTP listener (embedded backend): presigned downloads one remote
    /// address (IPv4 address, IPv6 /64) receives at once; past it that
    /// address's download is answered 503 with Retry-After, so that one
    /// address cannot take all of --http-max-downloads. 0: no cap.
    #[arg(
        long,
        env = "IMAGE_SERVICE_HTTP_MAX_DOWNLOADS_PER_PEER",
        default_value_t = 64,
        global = true
    )]
    pub http_max_downloads_per_peer: usize,

    /// gRPC listener: connections one remote address (IPv4 address, IPv6
    /// /64) may have open at once; more are closed when accepted. 0: no cap.
    /// A gateway multiplexes its calls over a few connections per replica,
    /// far below the default; a caller whose calls never send their request
    /// keeps its connections busy, and this keeps it to a quarter of the
    /// default --max-connections.
    #[arg(
        long,
        env = "IMAGE_SERVICE_GRPC_MAX_CONNECTIONS_PER_PEER",
        default_value_t = 256,
        global = true
    )]
    pub grpc_max_connections_per_peer: usize,

    /// gRPC listener: a connection with no call in flight for this long is
    /// closed (0s: never). At --max-connections, connections without a
    /// call for 1 s are closed anyway when another waits.
    #[arg(long, env = "IMAGE_SERVICE_GRPC_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration, global = true)]
    pub grpc_idle_timeout: Duration,

    /// gRPC listener: bytes of request messages still arriving that one
    /// connection may hold at once. A message not whole in the frame that
    /// starts it reserves its declared length from this and from
    /// --memory-budget until its last byte arrives; past it the message
    /// waits (its stream is not read) up to --memory-wait, then its call
    /// is refused with RESOURCE_EXHAUSTED. The default holds four upload
    /// chunks of 4 MiB, or sixteen of the recommended 1 MiB; at least one
    /// message of the largest size (4 MiB + 64 KiB) is always allowed.
    #[arg(long, env = "IMAGE_SERVICE_GRPC_MAX_PARTIAL_REQUEST_BYTES_PER_CONNECTION", default_value = "16MiB", value_parser = parse_byte_size, global = true)]
    pub grpc_max_partial_request_bytes_per_connection: u64,

    /// gRPC listener: request messages that may wait for memory at once,
    /// over all connections. A waiting message's stream is not read, so
    /// each keeps up to its HTTP/2 stream window of unread bytes (the
    /// connection window / --max-concurrent-streams, 164 KiB by default);
    /// past this a message that finds no room is refused at once with
    /// RESOURCE_EXHAUSTED (retryable). Health and reflection messages never
    /// wait: without room in their pool they are refused at once.
    #[arg(
        long,
        env = "IMAGE_SERVICE_GRPC_MAX_WAITING_REQUEST_MESSAGES",
        default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(1..),
        global = true
    )]
    pub grpc_max_waiting_request_messages: u32,

    /// gRPC listener: memory that reflection streams (v1 and v1alpha,
    /// open to callers without an identity) may hold together over all
    /// connections. Each open stream reserves what it may hold ahead of a
    /// reader that does not read (a few responses, and its stream window
    /// of requests sent ahead); without room a new stream is refused with
    /// RESOURCE_EXHAUSTED. The default admits some 40 at once.
    #[arg(long, env = "IMAGE_SERVICE_GRPC_REFLECTION_MEMORY", default_value = "16MiB", value_parser = parse_byte_size, global = true)]
    pub grpc_reflection_memory: u64,
}

/// How callers are identified: the settings of [`crate::grpc::auth`].
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Identity")]
pub struct AuthSettings {
    /// How callers are identified: `trusted-header` (the `x-user-id`
    /// metadata, set by an authenticating gateway or mesh) or `jwt`
    /// (`authorization: Bearer <token>`; the `sub` claim is the user).
    #[arg(long, env = "IMAGE_SERVICE_AUTH", value_enum, default_value_t = AuthMode::TrustedHeader, global = true)]
    pub auth: AuthMode,

    /// JWT mode: the HS256 shared secret. Exactly one of this and
    /// `--jwt-rs256-public-key-file` is required with `--auth jwt`.
    #[arg(
        long,
        env = "IMAGE_SERVICE_JWT_HS256_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub jwt_hs256_secret: Option<String>,

    /// JWT mode: a PEM file with the RS256 public key that verifies tokens.
    #[arg(long, env = "IMAGE_SERVICE_JWT_RS256_PUBLIC_KEY_FILE", global = true)]
    pub jwt_rs256_public_key_file: Option<PathBuf>,

    /// JWT mode: tokens must carry this `iss`. Required with a JWKS unless
    /// `--jwt-allow-any-issuer` says otherwise.
    #[arg(long, env = "IMAGE_SERVICE_JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,

    /// JWT mode: tokens must carry this `aud`. Required with `--auth jwt`
    /// unless `--jwt-allow-any-audience` says otherwise.
    #[arg(long, env = "IMAGE_SERVICE_JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,

    /// JWT mode: accept tokens whatever their `aud`, i.e. every token the
    /// key or provider signs, for any application. Without it, `--auth jwt`
    /// needs `--jwt-audience`.
    #[arg(
        long,
        env = "IMAGE_SERVICE_JWT_ALLOW_ANY_AUDIENCE",
        conflicts_with = "jwt_audience",
        global = true
    )]
    pub jwt_allow_any_audience: bool,

    /// JWKS: accept tokens whatever their `iss`, i.e. from every issuer
    /// that signs with the JWKS's keys. Without it, a JWKS needs
    /// `--jwt-issuer` (a fixed key needs none: it is this service's alone).
    #[arg(
        long,
        env = "IMAGE_SERVICE_JWT_ALLOW_ANY_ISSUER",
        conflicts_with = "jwt_issuer",
        global = true
    )]
    pub jwt_allow_any_issuer: bool,

    /// JWT mode: the identity provider's JWKS document, an `https://` URL
    /// (`http://` only to a loopback address) or a file path. Keys are
    /// chosen by the token's `kid`, each pinned to the algorithm of its
    /// `kty`/`alg` (RS256/384/512, PS256/384/512, ES256/384, EdDSA). With
    /// `--jwt-issuer` alone, the URL is discovered from the issuer's
    /// `/.well-known/openid-configuration`.
    #[arg(long, env = "IMAGE_SERVICE_JWT_JWKS_URL", global = true)]
    pub jwt_jwks_url: Option<String>,

    /// JWT mode: the claim that names the user [default: sub].
    #[arg(long, env = "IMAGE_SERVICE_JWT_USER_CLAIM", global = true)]
    pub jwt_user_claim: Option<String>,

    /// JWKS: how often the document is fetched again when its response
    /// carries no `Cache-Control: max-age` (otherwise max-age is used,
    /// between `--jwt-jwks-min-refresh` and 24 h) [default: 5m].
    #[arg(long, env = "IMAGE_SERVICE_JWT_JWKS_REFRESH", value_parser = humantime::parse_duration, global = true)]
    pub jwt_jwks_refresh: Option<Duration>,

    /// JWKS: the least time between two fetches. A token naming an unknown
    /// `kid` fetches the document again only if the last fetch is older,
    /// so garbage `kid`s cannot make the service hammer the provider
    /// [default: 30s].
    #[arg(long, env = "IMAGE_SERVICE_JWT_JWKS_MIN_REFRESH", value_parser = humantime::parse_duration, global = true)]
    pub jwt_jwks_min_refresh: Option<Duration>,

    /// JWKS: a PEM file of CA certificates trusted for the JWKS and
    /// discovery URLs, on top of the public roots (e.g. a cluster's CA).
    #[arg(long, env = "IMAGE_SERVICE_JWT_JWKS_CA_FILE", global = true)]
    pub jwt_jwks_ca_file: Option<PathBuf>,

    /// JWKS: a file whose content is sent as a bearer token with each JWKS
    /// and discovery fetch, read again every time (e.g. a Kubernetes
    /// service-account token, which is rotated).
    #[arg(long, env = "IMAGE_SERVICE_JWT_JWKS_TOKEN_FILE", global = true)]
    pub jwt_jwks_token_file: Option<PathBuf>,

    /// Trusted-header mode over mutual TLS: the client certificate names
    /// (DNS or URI subject alternative names, comma-separated) allowed to
    /// send `x-user-id`. Calls from any other peer are UNAUTHENTICATED.
    #[arg(
        long,
        env = "IMAGE_SERVICE_TRUSTED_PEERS",
        value_delimiter = ',',
        requires = "tls_client_ca",
        global = true
    )]
    pub trusted_peers: Vec<String>,

    /// The users (ids as the identity mode names them: `x-user-id` values
    /// or the JWT user claim, comma-separated) who may read any user's
    /// usage (GetUsage), set users' quotas (SetUserQuota) and erase any
    /// user's data (DeleteUserData, GetUserDataDeletion).
    #[arg(
        long,
        env = "IMAGE_SERVICE_ADMINS",
        value_delimiter = ',',
        global = true
    )]
    pub admins: Vec<String>,

    /// The users (ids as the identity mode names them: `x-user-id` values
    /// or the JWT user claim, comma-separated) who may see every image
    /// whatever its moderation state and use the moderation service
    /// (review, set states, purge, read the audit trail).
    #[arg(
        long,
        env = "IMAGE_SERVICE_MODERATORS",
        value_delimiter = ',',
        global = true
    )]
    pub moderators: Vec<String>,
}

impl AuthSettings {
    /// The users of `--admins`; an id no caller could have stops the start.
    pub fn admins(&self) -> anyhow::Result<Vec<crate::domain::UserId>> {
        users("--admins", &self.admins)
    }

    /// The users of `--moderators`; an id no caller could have stops the
    /// start.
    pub fn moderators(&self) -> anyhow::Result<Vec<crate::domain::UserId>> {
        users("--moderators", &self.moderators)
    }
}

/// The user ids of a list flag.
fn users(flag: &str, ids: &[String]) -> anyhow::Result<Vec<crate::domain::UserId>> {
    ids.iter()
        .map(|id| {
            crate::domain::UserId::parse(id)
                .map_err(|error| anyhow::anyhow!("{flag}: {id:?}: {error}"))
        })
        .collect()
}

/// What one upload, download, render or listing may take: the domain's
/// limits.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitSettings {
    /// Largest image accepted, in bytes (suffixes such as `MiB` allowed).
    #[arg(long, env = "IMAGE_SERVICE_MAX_IMAGE_BYTES", default_value = "50MiB", value_parser = parse_byte_size, global = true)]
    pub max_image_bytes: u64,

    /// Largest image accepted, in pixels (width × height, read from the header).
    #[arg(
        long,
        env = "IMAGE_SERVICE_MAX_IMAGE_PIXELS",
        default_value_t = 100_000_000,
        global = true
    )]
    pub max_image_pixels: u64,

    /// Most passes over its coefficients a JPEG's scans may take to decode
    /// (a baseline JPEG takes 1, cameras' progressive ones 2 to 7); more is
    /// refused on upload with RESOURCE_EXHAUSTED. Bounds the CPU one
    /// progressive file built with many scans makes a render spend.
    #[arg(
        long,
        env = "IMAGE_SERVICE_MAX_JPEG_DECODE_PASSES",
        default_value_t = crate::media::limits::DEFAULT_MAX_JPEG_DECODE_PASSES,
        value_parser = clap::value_parser!(u32).range(1..),
        global = true
    )]
    pub max_jpeg_decode_passes: u32,

    /// Uploads received at once; more are refused with RESOURCE_EXHAUSTED.
    /// Memory per upload is bounded (S3 part size × (parts in flight + 1)),
    /// so this bounds the memory uploads can take.
    #[arg(
        long,
        env = "IMAGE_SERVICE_MAX_CONCURRENT_UPLOADS",
        default_value_t = 64,
        global = true
    )]
    pub max_concurrent_uploads: usize,

    /// How long an upload that finds every upload slot busy waits for one
    /// before RESOURCE_EXHAUSTED, so that a burst above the cap is slowed
    /// down rather than refused. 0 refuses at once.
    #[arg(long, env = "IMAGE_SERVICE_UPLOAD_SLOT_WAIT", default_value = "2s", value_parser = humantime::parse_duration, global = true)]
    pub upload_slot_wait: Duration,

    /// Keep identifying metadata (GPS, serial numbers, owner names, XMP,
    /// comments) in stored JPEG, PNG and WebP originals instead of removing it.
    #[arg(long, env = "IMAGE_SERVICE_KEEP_METADATA", global = true)]
    pub keep_metadata: bool,

    /// Make `small` and `medium` variants and a BlurHash of every decodable
    /// upload (`--variants false`: store originals only).
    // Not global: `backfill --variants` names the variants it makes; a
    // command takes this one before its name.
    #[arg(long, env = "IMAGE_SERVICE_VARIANTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub variants: bool,

    /// A variant made of every decodable upload, as NAME=LONGEST_SIDE
    /// (repeatable, or comma-separated in the environment): the image
    /// fitted in LONGEST_SIDE pixels (16 to 8192), never upscaled. `small`
    /// (320) and `medium` (1080) are always made, since callers ask for
    /// them by name; naming one sets its side. At most 8 variants in all;
    /// the names follow the rules of `variant` in download requests, and
    /// `original` is the uploaded bytes.
    #[arg(long = "variant", env = "IMAGE_SERVICE_VARIANT", value_name = "NAME=LONGEST_SIDE", value_delimiter = ',', value_parser = parse_variant_size, global = true)]
    pub variant: Vec<VariantSize>,

    /// The encodings each variant is kept in, comma-separated: `jpeg`
    /// (always: every client decodes it), `webp`, `avif` (in a build with
    /// the `avif` feature). The JPEG variants (lossless WebP for images
    /// with transparency) are made before an upload is acknowledged; the
    /// others after it, in the background, and appear in the image's
    /// variants once stored. One that comes out no smaller than the
    /// variant's first encoding is not kept.
    #[arg(long, env = "IMAGE_SERVICE_VARIANT_FORMATS", value_name = "FORMATS", default_value = "jpeg,webp", value_delimiter = ',', value_parser = parse_variant_format, global = true)]
    pub variant_formats: Vec<Encoding>,

    /// Images whose background encodings (--variant-formats) may wait or
    /// be made at once on a replica; past it, and past its memory budget,
    /// an image's are left to the repair pass (the upload is acknowledged
    /// all the same). The pixels each holds while queued (3 MiB for the
    /// default variants of a photo, twice that while encoded) count in
    /// --memory-budget.
    #[arg(
        long,
        env = "IMAGE_SERVICE_MAX_QUEUED_ENCODINGS",
        default_value_t = 32,
        global = true
    )]
    pub max_queued_encodings: usize,

    /// Of those, the images of one user; past it, the user's are left to
    /// the repair pass.
    #[arg(
        long,
        env = "IMAGE_SERVICE_MAX_QUEUED_ENCODINGS_PER_USER",
        default_value_t = 8,
        global = true
    )]
    pub max_queued_encodings_per_user: usize,

    /// Images decoded and resized at once to make variants, in each of two
    /// lanes (images up to 16 megapixels, and larger ones, so huge images
    /// never hold up small ones); others wait their turn. Defaults to the
    /// number of CPU cores.
    #[arg(long, env = "IMAGE_SERVICE_MAX_CONCURRENT_RENDERS", global = true)]
    pub max_concurrent_renders: Option<usize>,

    /// Memory one render may need (decoded pixels, a progressive JPEG's
    /// coefficients, resize buffers; estimated from the header and reserved
    /// from --memory-budget before decoding, and counted in the uploader's
    /// --max-memory-per-user); an image that needs more is refused with
    /// RESOURCE_EXHAUSTED. One render of each user may take it past its
    /// share (the user's other renders wait for it), so this, not the
    /// share, bounds the largest image rendered: the default holds a
    /// 100-megapixel PNG (~460 MiB).
    #[arg(long, env = "IMAGE_SERVICE_MAX_RENDER_MEMORY", default_value = "512MiB", value_parser = parse_byte_size, global = true)]
    pub max_render_memory: u64,

    /// An upload stream that sends no image bytes for this long is
    /// abandoned (DEADLINE_EXCEEDED) and stores nothing. Messages without
    /// bytes (empty chunks) do not count as progress. Also the longest a
    /// request message of any call may take to arrive whole, from its
    /// first bytes (DEADLINE_EXCEEDED after it).
    #[arg(long, env = "IMAGE_SERVICE_UPLOAD_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    pub upload_idle_timeout: Duration,

    /// How long an upload session (StartUpload) lives: after it, the
    /// session and every byte it holds are removed unless it was committed.
    #[arg(long, env = "IMAGE_SERVICE_UPLOAD_SESSION_TTL", default_value = "24h", value_parser = humantime::parse_duration, global = true)]
    pub upload_session_ttl: Duration,

    /// The unit in which a resumable upload's streamed bytes are stored:
    /// a stream holds at most this much in memory, and a replica that
    /// dies loses at most this much of it (a clean break loses nothing).
    #[arg(long, env = "IMAGE_SERVICE_UPLOAD_SESSION_SEGMENT_SIZE", default_value = "8MiB", value_parser = parse_segment_size, global = true)]
    pub upload_session_segment_size: u64,

    /// Most parts GetUploadUrls cuts a direct upload into.
    #[arg(long, env = "IMAGE_SERVICE_MAX_UPLOAD_PARTS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000), global = true)]
    pub max_upload_parts: u32,

    /// How long the part URLs of GetUploadUrls live, by default and at
    /// most (within the session's own life). A presigned S3 `PUT` cannot
    /// be revoked: on the aws backend a session that is cancelled or
    /// completed keeps counting against `--max-open-sessions-per-user` and
    /// `--max-staged-bytes-per-user` until its URLs are over (plus a minute
    /// for a part still arriving), and what they stored is removed then.
    #[arg(long, env = "IMAGE_SERVICE_UPLOAD_URL_EXPIRY", default_value = "15m", value_parser = parse_upload_url_expiry, global = true)]
    pub upload_url_expiry: Duration,

    /// Upload sessions one user may have open (started, neither committed
    /// nor cancelled nor expired); StartUpload past it is refused with
    /// RESOURCE_EXHAUSTED until one of them ends.
    #[arg(long, env = "IMAGE_SERVICE_MAX_OPEN_SESSIONS_PER_USER", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000), global = true)]
    pub max_open_sessions_per_user: u32,

    /// Bytes one user's open upload sessions may hold in the blob store
    /// together. Each session counts its `expected_size`, or
    /// `--max-image-bytes` when it declares none.
    #[arg(long, env = "IMAGE_SERVICE_MAX_STAGED_BYTES_PER_USER", default_value = "200MiB", value_parser = parse_byte_size, global = true)]
    pub max_staged_bytes_per_user: u64,

    /// Bytes one user may hold: the originals and every stored variant of
    /// their images, plus what their uploads in progress reserve (each its
    /// `expected_size`, or --max-image-bytes when it declares none). An
    /// upload past it is refused with RESOURCE_EXHAUSTED and a
    /// `google.rpc.QuotaFailure`, on every replica at once. An admin may
    /// set a user's own (SetUserQuota). 0: no quota.
    #[arg(long, env = "IMAGE_SERVICE_QUOTA_BYTES_PER_USER", default_value = "0", value_parser = parse_byte_size, global = true)]
    pub quota_bytes_per_user: u64,

    /// Images one user may hold, those being uploaded included; like
    /// --quota-bytes-per-user. 0: no quota.
    #[arg(
        long,
        env = "IMAGE_SERVICE_QUOTA_IMAGES_PER_USER",
        default_value_t = 0,
        global = true
    )]
    pub quota_images_per_user: u64,

    /// User data erasures (DeleteUserData) one replica works on at once;
    /// more wait for a slot, marked and reported RUNNING. Each deletes 8
    /// images at a time, and holds its slot only while it works (not while
    /// it waits for uploads that reserved before its mark).
    #[arg(
        long,
        env = "IMAGE_SERVICE_MAX_RUNNING_ERASURES",
        default_value_t = 2,
        value_parser = clap::value_parser!(u32).range(1..),
        global = true
    )]
    pub max_running_erasures: u32,

    /// User data erasures one replica holds in memory at once: running,
    /// waiting for a slot, or waiting for uploads that reserved before
    /// their mark. Past it an erasure is still marked (and reported
    /// RUNNING), and left in the store for a later pass of this or any
    /// replica to pick up.
    #[arg(
        long,
        env = "IMAGE_SERVICE_MAX_QUEUED_ERASURES",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(1..),
        global = true
    )]
    pub max_queued_erasures: u32,

    /// Longest time an upload may take from its first message to
    /// `finish_write` (DEADLINE_EXCEEDED after it; nothing is stored).
    #[arg(long, env = "IMAGE_SERVICE_UPLOAD_DEADLINE", default_value = "15m", value_parser = humantime::parse_duration, global = true)]
    pub upload_deadline: Duration,

    /// Uploads one user may have in progress at once; more are refused
    /// with RESOURCE_EXHAUSTED, so one user cannot hold every upload slot.
    #[arg(
        long,
        env = "IMAGE_SERVICE_MAX_UPLOADS_PER_USER",
        default_value_t = 8,
        global = true
    )]
    pub max_uploads_per_user: usize,

    /// After its first 1 024 messages, an upload may send one more message
    /// per this many bytes received (RESOURCE_EXHAUSTED beyond): an upload
    /// costs CPU by its bytes, not by how finely it is cut.
    #[arg(long, env = "IMAGE_SERVICE_UPLOAD_BYTES_PER_MESSAGE", default_value = "16KiB", value_parser = parse_byte_size, global = true)]
    pub upload_bytes_per_message: u64,

    /// Memory that uploads, downloads and renders may hold together, in
    /// bytes. Work reserves what it may need before it allocates; what
    /// cannot be reserved within --memory-wait is refused with
    /// RESOURCE_EXHAUSTED. Default: 60% of the container's memory limit
    /// (cgroup), or 512 MiB when there is none.
    #[arg(long, env = "IMAGE_SERVICE_MEMORY_BUDGET", value_parser = parse_byte_size, global = true)]
    pub memory_budget: Option<u64>,

    /// How long work waits for memory from the budget before it is refused.
    #[arg(long, env = "IMAGE_SERVICE_MEMORY_WAIT", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub memory_wait: Duration,

    /// Bytes of --memory-budget that one user's calls in progress may hold
    /// at once: downloads, uploads and the renders of their variants, and
    /// responses the caller has not read yet. Past it that user's new calls
    /// are refused with RESOURCE_EXHAUSTED while other users go on being
    /// served (a user holding nothing is always let in, within the budget).
    /// A user with no render in progress may start one past it (within
    /// --max-render-memory and the budget); the user's other renders wait
    /// for room or for that render to end. Default: half of
    /// --memory-budget, so that one user's phone photos (a 12-megapixel
    /// HEIC's render needs ~170 MiB, a 48-megapixel JPEG's 70–210 MiB) render
    /// beside its other calls, and it takes two users to take the whole
    /// budget; must not exceed --memory-budget.
    #[arg(long, env = "IMAGE_SERVICE_MAX_MEMORY_PER_USER", value_parser = parse_byte_size, global = true)]
    pub max_memory_per_user: Option<u64>,

    /// Largest ListImages response, in bytes: a page is cut short, with a
    /// next_page_token for the rest, rather than grow past it.
    #[arg(long, env = "IMAGE_SERVICE_MAX_PAGE_BYTES", default_value = "2MiB", value_parser = parse_byte_size, global = true)]
    pub max_page_bytes: u64,

    /// Most entries of the similar-image index one FindSimilarImages search
    /// reads, an even share of it (a 32nd) in each of the 32 buckets of the
    /// query's hash, so that its time and memory are bounded however many
    /// copies of one image were uploaded. A bucket holding more than its
    /// share is read up to it and the response says the search was cut
    /// short (`candidates_truncated`). Buckets hold about 1/256 of the
    /// hashed images each: the default cuts no search of an evenly spread
    /// catalogue short below about 150 000 images.
    #[arg(long, env = "IMAGE_SERVICE_MAX_SIMILAR_CANDIDATES", default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(32..=1_000_000), global = true)]
    pub max_similar_candidates: u32,

    /// Longest validity a caller may ask of a download URL (e.g. `1h`, `7d`).
    #[arg(long, env = "IMAGE_SERVICE_DOWNLOAD_URL_MAX_EXPIRY", default_value = "1h", value_parser = humantime::parse_duration, global = true)]
    pub download_url_max_expiry: Duration,

    /// Download URLs are signed from the start of a window this long (whole
    /// multiples of it since the Unix epoch), so that every request for the
    /// same image, variant, disposition and `expires_in` in the window gets
    /// the same URL, which browsers and CDNs can cache. Each URL is valid
    /// for at least the `expires_in` asked for, and at most this much
    /// longer. `0s` signs every URL from the moment it is asked for.
    #[arg(long, env = "IMAGE_SERVICE_DOWNLOAD_URL_WINDOW", default_value = "15m", value_parser = humantime::parse_duration, global = true)]
    pub download_url_window: Duration,
}

/// Where images and metadata are kept, and the key that signs page tokens
/// and URLs.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Storage")]
pub struct StorageSettings {
    /// Storage backend: `embedded` (local files + an embedded database, no
    /// server needed) or `aws` (S3 + DynamoDB, or compatible stores).
    #[arg(long, env = "IMAGE_SERVICE_BACKEND", value_enum, default_value_t = Backend::Embedded, global = true)]
    pub backend: Backend,

    /// Directory of the embedded backend's files and database.
    #[arg(
        long,
        env = "IMAGE_SERVICE_DATA_DIR",
        default_value = "./data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Secret that signs page tokens and the embedded backend's download URLs
    /// (at least 32 bytes). Replicas must share it. When unset, the embedded
    /// backend keeps a generated one in its data directory; the aws backend
    /// generates one per process (fine for a single replica only).
    #[arg(
        long,
        env = "IMAGE_SERVICE_SIGNING_KEY",
        hide_env_values = true,
        global = true
    )]
    pub signing_key: Option<String>,

    /// S3 bucket of the image bytes (aws backend).
    #[arg(
        long,
        env = "IMAGE_SERVICE_S3_BUCKET",
        default_value = "images",
        global = true
    )]
    pub s3_bucket: String,

    /// S3 endpoint URL, for S3-compatible stores (path-style addressing is
    /// used). Default: AWS.
    #[arg(long, env = "IMAGE_SERVICE_S3_ENDPOINT", global = true)]
    pub s3_endpoint: Option<String>,

    /// S3 endpoint that callers reach, used in presigned URLs when it differs
    /// from `--s3-endpoint`.
    #[arg(long, env = "IMAGE_SERVICE_S3_PUBLIC_ENDPOINT", global = true)]
    pub s3_public_endpoint: Option<String>,

    /// AWS region (aws backend). Default: the standard AWS configuration
    /// chain (`AWS_REGION`, profile, instance metadata), else `us-east-1`.
    #[arg(long, env = "IMAGE_SERVICE_AWS_REGION", global = true)]
    pub aws_region: Option<String>,

    /// Size of the parts of an S3 multipart upload (at least 5 MiB). Images
    /// that fit in one part are a single PutObject. Grown automatically so
    /// that no image needs more than 10 000 parts.
    #[arg(long, env = "IMAGE_SERVICE_S3_PART_SIZE", default_value = "8MiB", value_parser = parse_part_size, global = true)]
    pub s3_part_size: u64,

    /// How many parts of one upload are sent to S3 at once. Memory per upload
    /// is at most part size × (this + 1).
    #[arg(long, env = "IMAGE_SERVICE_S3_PARTS_IN_FLIGHT", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64), global = true)]
    pub s3_parts_in_flight: u16,

    /// Checksums sent with object bytes (each part's CRC32C, checked by the
    /// store) and checked on responses: `when-supported` (AWS and most
    /// compatible stores) or `when-required` (stores that reject checksum
    /// headers).
    #[arg(long, env = "IMAGE_SERVICE_S3_CHECKSUMS", value_enum, default_value_t = S3Checksums::WhenSupported, global = true)]
    pub s3_checksums: S3Checksums,

    /// Whether SigV4 signs the bytes of each object and part (one SHA-256
    /// pass over every byte): `auto` signs over plain HTTP and not over
    /// HTTPS, where TLS protects the bytes; `signed` always; `unsigned`
    /// never (a trusted network). Either way each part carries its CRC32C,
    /// which the store checks, unless `--s3-checksums when-required`.
    #[arg(long, env = "IMAGE_SERVICE_S3_PAYLOAD_SIGNING", value_enum, default_value_t = PayloadSigning::Auto, global = true)]
    pub s3_payload_signing: PayloadSigning,

    /// DynamoDB table of the image metadata (aws backend).
    #[arg(
        long,
        env = "IMAGE_SERVICE_DYNAMODB_TABLE",
        default_value = "images",
        global = true
    )]
    pub dynamodb_table: String,

    /// Partitions the DynamoDB `by_time` index key is spread over, so that
    /// no single index partition takes every write; set by `init` (which
    /// only ever raises it: images keep their partitions), read by the
    /// replicas from the table. The unfiltered listing queries each one.
    #[arg(long, env = "IMAGE_SERVICE_DYNAMODB_TIME_SHARDS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64), global = true)]
    pub dynamodb_time_shards: u32,

    /// DynamoDB endpoint URL, for DynamoDB-compatible stores. Default: AWS.
    #[arg(long, env = "IMAGE_SERVICE_DYNAMODB_ENDPOINT", global = true)]
    pub dynamodb_endpoint: Option<String>,
}

/// Health checks, the periodic repair pass and shutdown.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Operations")]
pub struct OperationSettings {
    /// How often both stores are probed; `imageservice.v1.ImageService` is
    /// NOT_SERVING while either does not answer.
    #[arg(long, env = "IMAGE_SERVICE_HEALTH_CHECK_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub health_check_interval: Duration,

    /// How often the service runs the repair pass itself (`0s`: never).
    #[arg(long, env = "IMAGE_SERVICE_REPAIR_INTERVAL", default_value = "1h", value_parser = humantime::parse_duration, global = true)]
    pub repair_interval: Duration,

    /// The repair pass leaves alone anything younger than this.
    #[arg(long, env = "IMAGE_SERVICE_REPAIR_GRACE", default_value = "1h", value_parser = humantime::parse_duration, global = true)]
    pub repair_grace: Duration,

    /// How long in-flight calls may run on after SIGTERM or Ctrl-C.
    #[arg(long, env = "IMAGE_SERVICE_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub shutdown_timeout: Duration,
}

/// The event stream (`WatchImageEvents`).
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Events")]
pub struct EventSettings {
    /// The identities (user ids, or JWT subjects) that may watch the event
    /// stream, comma-separated. Events name every user's images: empty (the
    /// default) lets nobody watch.
    #[arg(
        long,
        env = "IMAGE_SERVICE_EVENT_WATCHERS",
        value_delimiter = ',',
        global = true
    )]
    pub event_watchers: Vec<String>,

    /// How long events are kept: a cursor older than this gets
    /// OUT_OF_RANGE. A sweep removes them on the embedded backend, a TTL
    /// attribute on DynamoDB.
    #[arg(long, env = "IMAGE_SERVICE_EVENT_RETENTION", default_value = "7d", value_parser = humantime::parse_duration, global = true)]
    pub event_retention: Duration,

    /// How often a watcher reads the log when no write of this process
    /// wakes it: on the aws backend (written by every replica), the
    /// delivery latency across replicas.
    #[arg(long, env = "IMAGE_SERVICE_EVENT_POLL_INTERVAL", default_value = "250ms", value_parser = humantime::parse_duration, global = true)]
    pub event_poll_interval: Duration,

    /// Event watches open at once on this replica; more are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "IMAGE_SERVICE_MAX_EVENT_WATCHERS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000), global = true)]
    pub max_event_watchers: u32,

    /// A watcher that takes no event for this long while one waits is cut
    /// with RESOURCE_EXHAUSTED and the cursor to resume from, rather than
    /// buffered without limit.
    #[arg(long, env = "IMAGE_SERVICE_EVENT_WATCHER_STALL_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub event_watcher_stall_timeout: Duration,
}

impl EventSettings {
    /// Settings that would be ignored or make no sense stop the start.
    pub fn check(&self) -> Result<(), String> {
        if self.event_retention < Duration::from_secs(1) {
            return Err(
                "--event-retention (IMAGE_SERVICE_EVENT_RETENTION) must be at least 1s".into(),
            );
        }
        if self.event_poll_interval.is_zero() || self.event_poll_interval > Duration::from_secs(60)
        {
            return Err("--event-poll-interval (IMAGE_SERVICE_EVENT_POLL_INTERVAL) must be between 1ms and 60s".into());
        }
        if self.event_watcher_stall_timeout.is_zero() {
            return Err("--event-watcher-stall-timeout (IMAGE_SERVICE_EVENT_WATCHER_STALL_TIMEOUT) must be more than 0s".into());
        }
        if let Some(bad) = self
            .event_watchers
            .iter()
            .find(|w| crate::domain::UserId::parse(w).is_err())
        {
            return Err(format!(
                "--event-watchers (IMAGE_SERVICE_EVENT_WATCHERS): {bad:?} is not a valid user id"
            ));
        }
        Ok(())
    }
}

/// The content scan hook (`--scan-url`, see
/// [`crate::domain::scan`]).
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Content scanning")]
pub struct ScanSettings {
    /// The content scanner (an `http://` or `https://` URL) every new image
    /// is POSTed to; none (the default): images are not scanned.
    #[arg(long, env = "IMAGE_SERVICE_SCAN_URL", global = true)]
    pub scan_url: Option<String>,

    /// `sync`: an upload is acknowledged with the verdict applied (a
    /// rejected image is not stored); `async`: it is acknowledged PENDING
    /// at once and the verdict is applied when it comes.
    #[arg(long, env = "IMAGE_SERVICE_SCAN_MODE", value_enum, default_value_t = ScanModeArg::Sync, global = true)]
    pub scan_mode: ScanModeArg,

    /// Longest wait for one attempt's answer.
    #[arg(long, env = "IMAGE_SERVICE_SCAN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub scan_timeout: Duration,

    /// Attempts after the first when a scan fails (no answer, an error
    /// status, an answer that is not a verdict), with backoff.
    #[arg(long, env = "IMAGE_SERVICE_SCAN_RETRIES", default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=10), global = true)]
    pub scan_retries: u32,

    /// The verdict when a scan finds none: `quarantine`, `reject`, or
    /// `allow` (only with --scan-accept-unscanned).
    #[arg(long, env = "IMAGE_SERVICE_SCAN_ON_FAILURE", value_enum, default_value_t = OnFailureArg::Quarantine, global = true)]
    pub scan_on_failure: OnFailureArg,

    /// Accepts that with --scan-on-failure allow an image the scanner did
    /// not judge is shown to everyone.
    #[arg(long, env = "IMAGE_SERVICE_SCAN_ACCEPT_UNSCANNED", global = true)]
    pub scan_accept_unscanned: bool,

    /// Allows an `http://` --scan-url to a host other than loopback (the
    /// images and their owners then cross the network in clear).
    #[arg(long, env = "IMAGE_SERVICE_SCAN_ALLOW_PLAINTEXT", global = true)]
    pub scan_allow_plaintext: bool,

    /// Scans in flight at once on this replica: work past it waits for a
    /// place, users taking turns (a sync upload waits; an async image is
    /// queued).
    #[arg(long, env = "IMAGE_SERVICE_MAX_CONCURRENT_SCANS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000), global = true)]
    pub max_concurrent_scans: u32,

    /// Of those, the scans of one user's images: past it, the user's work
    /// waits while other users' goes first. At most --max-concurrent-scans.
    #[arg(long, env = "IMAGE_SERVICE_MAX_CONCURRENT_SCANS_PER_USER", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000), global = true)]
    pub max_concurrent_scans_per_user: u32,

    /// Async images queued on this replica for a scan place (their ids
    /// alone); past it, an image stays PENDING for the repair pass.
    #[arg(long, env = "IMAGE_SERVICE_MAX_QUEUED_SCANS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000), global = true)]
    pub max_queued_scans: u32,

    /// Of those, one user's images. At most --max-queued-scans.
    #[arg(long, env = "IMAGE_SERVICE_MAX_QUEUED_SCANS_PER_USER", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000), global = true)]
    pub max_queued_scans_per_user: u32,

    /// Most bytes sent per scan: the `medium` rendition, else the largest
    /// variant, else the original; a larger one fails the scan.
    #[arg(long, env = "IMAGE_SERVICE_SCAN_MAX_BYTES", default_value = "16MiB", value_parser = parse_byte_size, global = true)]
    pub scan_max_bytes: u64,
}

/// `--scan-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScanModeArg {
    Sync,
    Async,
}

/// `--scan-on-failure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnFailureArg {
    Quarantine,
    Reject,
    Allow,
}

impl ScanSettings {
    /// The scanner's URL and the hook's policy, when `--scan-url` is set;
    /// a URL that is not one, plaintext to another host, or an unscanned
    /// image allowed without its acknowledgement stop the start.
    pub fn policy(&self) -> Result<Option<(reqwest::Url, ScanPolicy)>, String> {
        let places = self.places()?;
        let Some(text) = &self.scan_url else {
            return Ok(None);
        };
        let url = reqwest::Url::parse(text).map_err(|e| {
            format!("--scan-url (IMAGE_SERVICE_SCAN_URL): {text:?} is not a URL: {e}")
        })?;
        let host = url.host_str().unwrap_or_default();
        match url.scheme() {
            "https" => {}
            "http" if loopback(host) || self.scan_allow_plaintext => {}
            "http" => {
                return Err(format!(
                    "--scan-url (IMAGE_SERVICE_SCAN_URL): http:// to {host:?} would send every \
                     image and its owner in clear: use https://, or accept it with \
                     --scan-allow-plaintext"
                ));
            }
            other => {
                return Err(format!(
                    "--scan-url (IMAGE_SERVICE_SCAN_URL): the scheme must be http or https, not {other:?}"
                ));
            }
        }
        if host.is_empty() {
            return Err("--scan-url (IMAGE_SERVICE_SCAN_URL) names no host".into());
        }
        if self.scan_on_failure == OnFailureArg::Allow && !self.scan_accept_unscanned {
            return Err(
                "--scan-on-failure allow shows every image the scanner could not judge to \
                 everyone: accept it with --scan-accept-unscanned, or choose quarantine or reject"
                    .into(),
            );
        }
        if self.scan_timeout.is_zero() {
            return Err("--scan-timeout (IMAGE_SERVICE_SCAN_TIMEOUT) must be more than 0s".into());
        }
        let policy = ScanPolicy {
            mode: match self.scan_mode {
                ScanModeArg::Sync => ScanMode::Sync,
                ScanModeArg::Async => ScanMode::Async,
            },
            on_failure: match self.scan_on_failure {
                OnFailureArg::Quarantine => OnFailure::Quarantine,
                OnFailureArg::Reject => OnFailure::Reject,
                OnFailureArg::Allow => OnFailure::Allow,
            },
            timeout: self.scan_timeout,
            retries: self.scan_retries,
            max_bytes: self.scan_max_bytes,
            places,
        };
        Ok(Some((url, policy)))
    }

    /// The scan places and their queue's bounds: a user's share above the
    /// whole stops the start.
    fn places(&self) -> Result<PlaceLimits, String> {
        if self.max_concurrent_scans_per_user > self.max_concurrent_scans {
            return Err(format!(
                "--max-concurrent-scans-per-user (IMAGE_SERVICE_MAX_CONCURRENT_SCANS_PER_USER) is \
                 {}, more than the {} scans of --max-concurrent-scans it is a share of: lower it, \
                 or raise --max-concurrent-scans",
                self.max_concurrent_scans_per_user, self.max_concurrent_scans
            ));
        }
        if self.max_queued_scans_per_user > self.max_queued_scans {
            return Err(format!(
                "--max-queued-scans-per-user (IMAGE_SERVICE_MAX_QUEUED_SCANS_PER_USER) is {}, \
                 more than the {} images of --max-queued-scans it is a share of: lower it, or \
                 raise --max-queued-scans",
                self.max_queued_scans_per_user, self.max_queued_scans
            ));
        }
        Ok(PlaceLimits {
            total: self.max_concurrent_scans as usize,
            per_user: self.max_concurrent_scans_per_user as usize,
            max_queued: self.max_queued_scans as usize,
            max_queued_per_user: self.max_queued_scans_per_user as usize,
        })
    }
}

/// Block lists of PDQ hashes and SHA-256s (`--block-list`, see
/// [`crate::domain::block`]).
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Block lists")]
pub struct BlockSettings {
    /// A file, or on the aws backend an S3 object (`s3://BUCKET/KEY`), of
    /// PDQ hashes and SHA-256s no one may upload, one a line:
    /// `pdq:<hex> [label]` or `sha256:<hex> [label]`, `#` comments; read
    /// again when it changes. None (the default): nothing is blocked.
    #[arg(long, env = "IMAGE_SERVICE_BLOCK_LIST", value_parser = BlockListLocation::parse, global = true)]
    pub block_list: Option<BlockListLocation>,

    /// Most entries of the block list; a longer one stops the start (or,
    /// changed, is not used). Its text may be at most 1 KiB per entry
    /// allowed, comments included.
    #[arg(long, env = "IMAGE_SERVICE_BLOCK_LIST_MAX_ENTRIES", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000), global = true)]
    pub block_list_max_entries: u32,

    /// How often the block list is checked for a change (a file's
    /// modification time and size, an S3 object's ETag).
    #[arg(long, env = "IMAGE_SERVICE_BLOCK_LIST_POLL_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    pub block_list_poll_interval: Duration,

    /// Most bits an upload's PDQ hash may differ from a listed one and
    /// match (0 to 64; Meta recommends 31).
    #[arg(long, env = "IMAGE_SERVICE_BLOCK_DISTANCE", default_value_t = 31, value_parser = clap::value_parser!(u32).range(0..=64), global = true)]
    pub block_distance: u32,

    /// What becomes of a matching upload: `reject` (not stored,
    /// FAILED_PRECONDITION) or `quarantine` (stored QUARANTINED, reason
    /// `blocked`).
    #[arg(long, env = "IMAGE_SERVICE_BLOCK_ACTION", value_enum, default_value_t = BlockActionArg::Reject, global = true)]
    pub block_action: BlockActionArg,
}

/// Where the block list is read from (`--block-list`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockListLocation {
    File(std::path::PathBuf),
    /// An object read with the aws backend's S3 client.
    S3 {
        bucket: String,
        key: String,
    },
}

impl BlockListLocation {
    /// `s3://BUCKET/KEY` (both parts non-empty), else a file's path.
    fn parse(text: &str) -> Result<Self, String> {
        let Some(object) = text.strip_prefix("s3://") else {
            return Ok(Self::File(text.into()));
        };
        match object.split_once('/') {
            Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => {
                if !is_bucket_name(bucket) {
                    return Err(format!(
                        "{text}: `{bucket}` is not an S3 bucket name (3 to 63 letters, \
                         digits, dots, hyphens or underscores, starting and ending with a \
                         letter or digit)"
                    ));
                }
                Ok(Self::S3 {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                })
            }
            _ => Err(format!("{text}: an S3 object is s3://BUCKET/KEY")),
        }
    }
}

/// Whether `name` can name a bucket: S3's rules, with the capitals and
/// underscores its older buckets and some compatible stores allow, so that
/// a typo stops the start with a message rather than with the SDK's error
/// on the first read.
fn is_bucket_name(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && edge(name.chars().next())
        && edge(name.chars().last())
}

impl std::fmt::Display for BlockListLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

/// `--block-action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BlockActionArg {
    Reject,
    Quarantine,
}

impl BlockSettings {
    /// The matching policy of these settings.
    pub fn policy(&self) -> BlockPolicy {
        BlockPolicy {
            distance: self.block_distance,
            action: match self.block_action {
                BlockActionArg::Reject => BlockAction::Reject,
                BlockActionArg::Quarantine => BlockAction::Quarantine,
            },
        }
    }
}

/// Whether `host` (of a URL) is this machine.
fn loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Logs.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Telemetry")]
pub struct TelemetrySettings {
    /// Log format.
    #[arg(long, env = "IMAGE_SERVICE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Subcommands besides serving.
#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Create the storage the configured backend needs (the bucket and the
    /// table with its indexes, or the data directory). Idempotent.
    Init,
    /// Copy every image (original, variants and record, verified by
    /// SHA-256) from one backend to the other: `--from embedded --to aws`
    /// to outgrow one machine, or back. The embedded side is `--data-dir`
    /// (stop the service using it first), the aws side the usual S3 and
    /// DynamoDB settings (created if missing, as by `init`). Resumable
    /// after a crash or Ctrl-C, and idempotent: images already in the
    /// destination are skipped.
    Migrate {
        /// The backend to copy from.
        #[arg(long, value_enum)]
        from: Backend,
        /// The backend to copy to.
        #[arg(long, value_enum)]
        to: Backend,
        /// Count what would be copied; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Where progress is kept between runs (default: a file in
        /// `--data-dir`).
        #[arg(long)]
        checkpoint: Option<std::path::PathBuf>,
    },
    /// Add what images stored under an earlier configuration lack: the
    /// encodings of `--formats`, the variants of `--variants` and the
    /// ThumbHash, each made from the stored original as an upload's are
    /// (the same render slots, memory budget and decode limits) and added
    /// to the record conditionally on its revision, so an edit meanwhile
    /// is kept. Resumable after a crash or Ctrl-C, and idempotent: a
    /// second run changes nothing. With the embedded backend, stop the
    /// service first (it holds the database).
    Backfill {
        /// The encodings each variant is wanted in, comma-separated, as
        /// `--variant-formats` takes them (default: `--variant-formats`).
        #[arg(long, value_name = "FORMATS", value_delimiter = ',', value_parser = parse_variant_format)]
        formats: Vec<Encoding>,
        /// The variants wanted besides `small` and `medium`, as
        /// NAME=LONGEST_SIDE, comma-separated, as `--variant` takes them
        /// (default: those of `--variant`).
        #[arg(long, value_name = "NAME=LONGEST_SIDE", value_delimiter = ',', value_parser = parse_variant_size)]
        variants: Vec<VariantSize>,
        /// Count what images lack; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Where progress is kept between runs (default: a file in
        /// `--data-dir`).
        #[arg(long)]
        checkpoint: Option<std::path::PathBuf>,
        /// Images rendered per second at most, to run beside live
        /// traffic; 0 renders as fast as the render slots allow.
        #[arg(long, value_name = "N", default_value_t = 0)]
        max_rate: u32,
    },
    /// Run one repair pass and print what it found: bytes without metadata,
    /// index entries without their image, unfinished uploads. With the
    /// embedded backend, stop the service first (it holds the database).
    Repair {
        /// Report only; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Leave alone anything younger than this (work in progress).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Where images and metadata are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Local files and an embedded database under `--data-dir`.
    Embedded,
    /// S3 and DynamoDB (or compatible stores).
    Aws,
}

/// How callers are identified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// `x-user-id` metadata, trusted as is: only behind an authenticating proxy.
    TrustedHeader,
    /// `authorization: Bearer <JWT>`, verified with the configured key.
    Jwt,
}

/// The default of `--jwt-user-claim`.
pub const DEFAULT_JWT_USER_CLAIM: &str = "sub";
/// The default of `--jwt-jwks-refresh`.
pub const DEFAULT_JWT_JWKS_REFRESH: Duration = Duration::from_secs(5 * 60);
/// The default of `--jwt-jwks-min-refresh`.
pub const DEFAULT_JWT_JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);

/// One identity setting: its flag, its environment variable, and whether
/// it is set.
type Setting = (&'static str, &'static str, bool);

/// The settings of `settings` that are set, as `--flag (ENV)`.
fn named<'a>(settings: impl IntoIterator<Item = &'a Setting>) -> Option<String> {
    let set: Vec<String> = settings
        .into_iter()
        .filter(|(_, _, set)| *set)
        .map(|(flag, env, _)| format!("{flag} ({env})"))
        .collect();
    (!set.is_empty()).then(|| set.join(", "))
}

impl AuthSettings {
    /// Identity settings fail closed: a setting the chosen mode would
    /// ignore, or a `jwt` setup that would accept tokens meant for other
    /// applications or from other issuers, stops the start with a message
    /// that names the setting and what to do.
    pub fn check(&self) -> Result<(), String> {
        // Settings only a JWKS reads.
        let jwks_only: [Setting; 5] = [
            (
                "--jwt-jwks-refresh",
                "IMAGE_SERVICE_JWT_JWKS_REFRESH",
                self.jwt_jwks_refresh.is_some(),
            ),
            (
                "--jwt-jwks-min-refresh",
                "IMAGE_SERVICE_JWT_JWKS_MIN_REFRESH",
                self.jwt_jwks_min_refresh.is_some(),
            ),
            (
                "--jwt-jwks-ca-file",
                "IMAGE_SERVICE_JWT_JWKS_CA_FILE",
                self.jwt_jwks_ca_file.is_some(),
            ),
            (
                "--jwt-jwks-token-file",
                "IMAGE_SERVICE_JWT_JWKS_TOKEN_FILE",
                self.jwt_jwks_token_file.is_some(),
            ),
            (
                "--jwt-allow-any-issuer",
                "IMAGE_SERVICE_JWT_ALLOW_ANY_ISSUER",
                self.jwt_allow_any_issuer,
            ),
        ];
        // Settings every kind of key reads.
        let jwt: [Setting; 7] = [
            (
                "--jwt-hs256-secret",
                "IMAGE_SERVICE_JWT_HS256_SECRET",
                self.jwt_hs256_secret.is_some(),
            ),
            (
                "--jwt-rs256-public-key-file",
                "IMAGE_SERVICE_JWT_RS256_PUBLIC_KEY_FILE",
                self.jwt_rs256_public_key_file.is_some(),
            ),
            (
                "--jwt-jwks-url",
                "IMAGE_SERVICE_JWT_JWKS_URL",
                self.jwt_jwks_url.is_some(),
            ),
            (
                "--jwt-issuer",
                "IMAGE_SERVICE_JWT_ISSUER",
                self.jwt_issuer.is_some(),
            ),
            (
                "--jwt-audience",
                "IMAGE_SERVICE_JWT_AUDIENCE",
                self.jwt_audience.is_some(),
            ),
            (
                "--jwt-allow-any-audience",
                "IMAGE_SERVICE_JWT_ALLOW_ANY_AUDIENCE",
                self.jwt_allow_any_audience,
            ),
            (
                "--jwt-user-claim",
                "IMAGE_SERVICE_JWT_USER_CLAIM",
                self.jwt_user_claim.is_some(),
            ),
        ];
        if self.auth == AuthMode::TrustedHeader {
            if let Some(set) = named(jwt.iter().chain(&jwks_only)) {
                return Err(format!(
                    "{set}: set, but --auth is trusted-header (IMAGE_SERVICE_AUTH), which ignores \
                     every JWT setting and trusts x-user-id instead; add --auth jwt to verify \
                     tokens, or remove them"
                ));
            }
            if !self.trusted_peers.is_empty()
                && self.trusted_peers.iter().all(|name| name.trim().is_empty())
            {
                return Err(
                    "--trusted-peers (IMAGE_SERVICE_TRUSTED_PEERS) names no peer: list \
                     the client certificate names allowed to send x-user-id"
                        .into(),
                );
            }
            return Ok(());
        }

        if !self.trusted_peers.is_empty() {
            return Err(
                "--trusted-peers (IMAGE_SERVICE_TRUSTED_PEERS) is set, but --auth jwt \
                 ignores it: every caller proves who it is with a token. Remove it (and use \
                 --tls-client-ca or a NetworkPolicy to restrict who may connect)"
                    .into(),
            );
        }
        let keys = [
            self.jwt_hs256_secret.is_some(),
            self.jwt_rs256_public_key_file.is_some(),
            self.jwt_jwks_url.is_some(),
        ];
        let fixed_key = keys[0] || keys[1];
        let key_sources = keys.iter().filter(|set| **set).count();
        if key_sources > 1 || (key_sources == 0 && self.jwt_issuer.is_none()) {
            return Err("--auth jwt needs exactly one of --jwt-hs256-secret, \
                 --jwt-rs256-public-key-file and --jwt-jwks-url (or --jwt-issuer alone, to \
                 discover the JWKS)"
                .into());
        }
        if fixed_key && let Some(set) = named(&jwks_only) {
            return Err(format!(
                "{set}: set, but tokens are verified with a fixed key (--jwt-hs256-secret or \
                 --jwt-rs256-public-key-file), which ignores it; remove it, or verify with the \
                 provider's JWKS (--jwt-jwks-url or --jwt-issuer) instead"
            ));
        }
        for (flag, value) in [
            ("--jwt-issuer", &self.jwt_issuer),
            ("--jwt-audience", &self.jwt_audience),
            ("--jwt-user-claim", &self.jwt_user_claim),
        ] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(format!("{flag} is empty: give it a value, or unset it"));
            }
        }
        if self.jwt_audience.is_none() && !self.jwt_allow_any_audience {
            return Err(
                "--auth jwt without --jwt-audience (IMAGE_SERVICE_JWT_AUDIENCE) would \
                 accept a token signed for any application: set the audience this service's \
                 tokens carry, or pass --jwt-allow-any-audience \
                 (IMAGE_SERVICE_JWT_ALLOW_ANY_AUDIENCE) if every token of this key or provider \
                 may call it"
                    .into(),
            );
        }
        if !fixed_key && self.jwt_issuer.is_none() && !self.jwt_allow_any_issuer {
            return Err(
                "a JWKS without --jwt-issuer (IMAGE_SERVICE_JWT_ISSUER) would accept \
                 tokens of every issuer that signs with its keys (e.g. every tenant of a \
                 multi-tenant provider): set the issuer, or pass --jwt-allow-any-issuer \
                 (IMAGE_SERVICE_JWT_ALLOW_ANY_ISSUER) if the keys are one issuer's alone"
                    .into(),
            );
        }
        Ok(())
    }
}

impl Config {
    /// The aws backend's settings: the storage group's, and the largest
    /// object an upload may write.
    pub fn aws_settings(&self) -> AwsSettings {
        AwsSettings {
            event_retention: self.events.event_retention,
            ..self.storage.aws(self.limits.max_image_bytes)
        }
    }
}

impl LimitSettings {
    /// `--max-memory-per-user` against the `--memory-budget` it shares: the
    /// flag, half the budget by default, or why it cannot be.
    /// The variants to make, smallest first: the defaults, with those
    /// `--variant` adds or resizes. A name given twice, or more than
    /// [`MAX_VARIANTS`] in all, stops the start.
    pub fn variant_sizes(&self) -> Result<Vec<VariantSize>, String> {
        let mut sizes = crate::media::variants::default_sizes();
        for (i, given) in self.variant.iter().enumerate() {
            if self.variant[..i].iter().any(|v| v.name == given.name) {
                return Err(format!(
                    "--variant names {} twice (IMAGE_SERVICE_VARIANT)",
                    given.name
                ));
            }
            match sizes.iter_mut().find(|v| v.name == given.name) {
                Some(default) => default.longest_side = given.longest_side,
                None => sizes.push(given.clone()),
            }
        }
        if sizes.len() > MAX_VARIANTS {
            return Err(format!(
                "--variant makes {} variants with small and medium; at most {MAX_VARIANTS} are allowed",
                sizes.len()
            ));
        }
        sizes.sort_by_key(|v| v.longest_side);
        Ok(sizes)
    }

    /// The encodings made in the background and their queue's bounds, from
    /// `--variant-formats`: a list without `jpeg`, or with `avif` in a build
    /// without the `avif` feature, stops the start.
    pub fn encodings(&self) -> Result<EncodingLimits, String> {
        if !self.variant_formats.contains(&Encoding::Jpeg) {
            return Err(
                "--variant-formats (IMAGE_SERVICE_VARIANT_FORMATS) must include jpeg: it is the \
                 encoding every client decodes, made before an upload is acknowledged"
                    .into(),
            );
        }
        if self.variant_formats.contains(&Encoding::Avif) && !cfg!(feature = "avif") {
            return Err(
                "--variant-formats (IMAGE_SERVICE_VARIANT_FORMATS) names avif, but this build \
                 has no AVIF encoder (the `avif` cargo feature): remove it, or use a build with it"
                    .into(),
            );
        }
        let mut background: Vec<Encoding> = Vec::new();
        for &encoding in &self.variant_formats {
            if encoding != Encoding::Jpeg && !background.contains(&encoding) {
                background.push(encoding);
            }
        }
        Ok(EncodingLimits {
            background,
            max_queued: self.max_queued_encodings,
            max_queued_per_user: self.max_queued_encodings_per_user,
        })
    }

    pub fn memory_per_user(&self) -> Result<u64, String> {
        let budget = self.memory_budget();
        match self.max_memory_per_user {
            None => Ok(budget / MEMORY_SHARES_PER_BUDGET),
            Some(share) if share > budget => Err(format!(
                "--max-memory-per-user (IMAGE_SERVICE_MAX_MEMORY_PER_USER) is {share} bytes, \
                 more than the whole --memory-budget of {budget} bytes: lower it, or raise \
                 the budget"
            )),
            Some(share) => Ok(share),
        }
    }

    /// `--memory-budget`, or its default for this container.
    pub fn memory_budget(&self) -> u64 {
        self.memory_budget.unwrap_or_else(default_memory_budget)
    }
}

impl StorageSettings {
    /// The aws backend's settings; `max_object_bytes` sizes the parts of
    /// its multipart uploads.
    pub fn aws(&self, max_object_bytes: u64) -> AwsSettings {
        AwsSettings {
            bucket: self.s3_bucket.clone(),
            s3_endpoint: self.s3_endpoint.clone(),
            s3_public_endpoint: self.s3_public_endpoint.clone(),
            table: self.dynamodb_table.clone(),
            dynamodb_endpoint: self.dynamodb_endpoint.clone(),
            region: self.aws_region.clone(),
            part_size: self.s3_part_size,
            parts_in_flight: usize::from(self.s3_parts_in_flight),
            checksums: self.s3_checksums,
            payload_signing: self.s3_payload_signing,
            max_object_bytes,
            time_shards: self.dynamodb_time_shards,
            event_retention: DEFAULT_EVENT_RETENTION,
        }
    }
}

/// The default of `--event-retention`.
pub const DEFAULT_EVENT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The share of the container's memory limit the budget takes by default:
/// the rest is the process's own (code, the runtime, connections, the
/// allocator's slack).
const MEMORY_BUDGET_SHARE: f64 = 0.6;
/// The budget when no container limit is found (a developer's machine, a
/// VM): enough for one render at the pixel limit or dozens of uploads, and
/// small enough that no caller takes the machine's memory.
const FALLBACK_MEMORY_BUDGET: u64 = 512 * 1024 * 1024;

/// `--memory-budget` by default: a share of the cgroup memory limit (v2,
/// else v1) when there is one, so a pod's budget follows its manifest.
pub fn default_memory_budget() -> u64 {
    let limit = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|path| std::fs::read_to_string(path).ok())
    .filter_map(|text| text.trim().parse::<u64>().ok())
    // cgroup v1 says "no limit" with a number near i64::MAX.
    .find(|&limit| limit < 1 << 60);
    match limit {
        Some(limit) => (limit as f64 * MEMORY_BUDGET_SHARE) as u64,
        None => FALLBACK_MEMORY_BUDGET,
    }
}

/// Users it takes, at their share, to hold the whole memory budget by
/// default: two, so that a share holds a phone photo's render (up to
/// ~170 MiB for a 12-megapixel HEIC) beside the user's other calls under
/// the 512 MiB default budget.
const MEMORY_SHARES_PER_BUDGET: u64 = 2;

/// Most variants made of an image (`--variant`, with `small` and
/// `medium`): each costs a resize and an encode in every render, and an
/// entry in every `Image`.
pub const MAX_VARIANTS: usize = 8;
/// The sides a variant may be fitted in: below 16 pixels a variant is
/// no picture; above 8192 it is larger than any screen.
const VARIANT_SIDES: std::ops::RangeInclusive<u32> = 16..=8192;

/// One of `--variant-formats`.
fn parse_variant_format(text: &str) -> Result<Encoding, String> {
    match text.trim() {
        "jpeg" => Ok(Encoding::Jpeg),
        "webp" => Ok(Encoding::WebP),
        "avif" => Ok(Encoding::Avif),
        other => Err(format!("{other:?} is not an encoding: jpeg, webp or avif")),
    }
}

/// One `--variant NAME=LONGEST_SIDE`.
fn parse_variant_size(text: &str) -> Result<VariantSize, String> {
    let (name, side) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=LONGEST_SIDE (e.g. large=2048)"))?;
    let valid = crate::domain::VariantName::parse(name)
        .ok()
        .filter(|v| !name.is_empty() && v.as_str() == name)
        .ok_or_else(|| {
            format!("{name:?} is not a variant name: 1 to 32 of a-z, 0-9, `_` and `-`")
        })?;
    if valid.is_original() {
        return Err("`original` names the uploaded bytes, not a variant".into());
    }
    let longest_side: u32 = side
        .trim()
        .parse()
        .map_err(|_| format!("{side:?} is not a number of pixels"))?;
    if !VARIANT_SIDES.contains(&longest_side) {
        return Err(format!(
            "a variant's longest side is {} to {} pixels, not {longest_side}",
            VARIANT_SIDES.start(),
            VARIANT_SIDES.end()
        ));
    }
    Ok(VariantSize {
        name: name.to_owned(),
        longest_side,
    })
}

fn parse_byte_size(text: &str) -> Result<u64, String> {
    if let Ok(n) = text.trim().parse::<u64>() {
        return Ok(n);
    }
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|e| format!("not a byte size ({e}); use e.g. 52428800 or 50MiB"))
}

fn parse_part_size(text: &str) -> Result<u64, String> {
    let size = parse_byte_size(text)?;
    if size < 5 * 1024 * 1024 {
        return Err("S3 parts must be at least 5 MiB".into());
    }
    Ok(size)
}

fn parse_segment_size(text: &str) -> Result<u64, String> {
    let size = parse_byte_size(text)?;
    if !(64 * 1024..=256 * 1024 * 1024).contains(&size) {
        return Err("upload session segments are 64 KiB to 256 MiB".into());
    }
    Ok(size)
}

/// At least a second (a URL must outlive its own round trip), at most the
/// 7 days a presigned S3 URL can live.
fn parse_upload_url_expiry(text: &str) -> Result<Duration, String> {
    let expiry = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if !(Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600)).contains(&expiry) {
        return Err("upload URLs live 1s to 7d".into());
    }
    Ok(expiry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_accept_plain_numbers_and_binary_suffixes() {
        assert_eq!(parse_byte_size("1024").unwrap(), 1024);
        assert_eq!(parse_byte_size("50MiB").unwrap(), 50 * 1024 * 1024);
        assert!(parse_byte_size("lots").is_err());
    }

    #[test]
    fn defaults_match_the_design() {
        let config = Config::try_parse_from(["image-service"]).unwrap();
        assert_eq!(config.listeners.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(config.listeners.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(config.storage.backend, Backend::Embedded);
        assert_eq!(config.identity.auth, AuthMode::TrustedHeader);
        assert_eq!(config.limits.max_image_bytes, 50 * 1024 * 1024);
        assert_eq!(config.storage.s3_bucket, "images");
        assert_eq!(config.storage.dynamodb_table, "images");
    }

    #[test]
    fn a_setting_that_needs_another_is_refused_without_it_even_in_another_group() {
        let parse = |args: &[&str]| Config::try_parse_from([&["image-service"], args].concat());
        // --trusted-peers (identity) needs --tls-client-ca (listeners).
        assert!(parse(&["--trusted-peers", "gateway"]).is_err());
        assert!(parse(&["--tls-cert", "cert.pem"]).is_err());
        assert!(parse(&["--jwt-audience", "images", "--jwt-allow-any-audience"]).is_err());
        assert!(parse(&["--tls-cert", "cert.pem", "--tls-key", "key.pem"]).is_ok());
    }

    #[test]
    fn a_block_list_is_an_s3_object_when_it_says_so_and_a_file_otherwise() {
        let parse = BlockListLocation::parse;
        assert_eq!(
            parse("s3://lists/moderation/block-list.txt").unwrap(),
            BlockListLocation::S3 {
                bucket: "lists".into(),
                key: "moderation/block-list.txt".into()
            }
        );
        assert_eq!(
            parse("/etc/block-list.txt").unwrap(),
            BlockListLocation::File("/etc/block-list.txt".into())
        );
        for half in ["s3://lists", "s3://lists/", "s3:///list.txt", "s3://"] {
            assert!(parse(half).is_err(), "{half}");
        }
        for bucket in ["ab", "my bucket", "lists?", "-lists", "lists.", "a:b"] {
            let error = parse(&format!("s3://{bucket}/list.txt")).unwrap_err();
            assert!(error.contains("is not an S3 bucket name"), "{error}");
        }
        for bucket in ["abc", "my-lists.example", "Legacy_Lists"] {
            assert!(
                parse(&format!("s3://{bucket}/list.txt")).is_ok(),
                "{bucket}"
            );
        }
        let object = parse("s3://lists/a b.txt").unwrap();
        assert_eq!(object.to_string(), "s3://lists/a b.txt");
    }

    #[test]
    fn a_similar_image_search_reads_a_bounded_share_of_each_bucket() {
        let parse = |args: &[&str]| Config::try_parse_from([&["image-service"], args].concat());
        let config = parse(&[]).unwrap();
        assert_eq!(config.limits.max_similar_candidates, 20_000);
        // Fewer than one entry per bucket, or an unbounded read, stops the
        // start.
        for refused in ["0", "31", "1000001", "-1", "lots"] {
            assert!(
                parse(&["--max-similar-candidates", refused]).is_err(),
                "{refused}"
            );
        }
        let config = parse(&["--max-similar-candidates", "32"]).unwrap();
        assert_eq!(config.limits.max_similar_candidates, 32);
    }
}
