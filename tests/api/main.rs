//! The integration tests: one binary, a module per feature, one set of
//! helpers. Each test starts the real server on loopback ports chosen by
//! the OS (`helpers::TestApp`) and drives it over a real socket; the aws
//! backend's tests start real S3- and DynamoDB-compatible servers
//! (`helpers::servers`).

mod aws;
mod backfill;
mod contract;
mod deployment;
mod direct_uploads;
mod grpc_listener;
mod heif;
mod helpers;
mod hostile;
mod http_listener;
mod identity;
mod imagectl;
mod migrate;
mod partial_requests;
mod pipeline;
mod properties;
mod render_share;
mod scrubbing;
mod server;
mod soak;
mod traces;
mod unread;
mod variant_set;
