//! image-service: a gRPC service that stores users' images and their metadata.
//!
//! The code is layered so that dependencies point inward:
//! - [`grpc`] and [`http`] are transports: protobuf and HTTP in, domain calls out.
//! - [`domain`] holds the rules: validation, the upload pipeline, the use cases.
//!   It knows nothing of tonic or of any storage SDK.
//! - [`storage`] holds the adapters that implement the domain's storage traits.
//!
//! [`startup`] wires them together into the server; [`backend`] opens the
//! configured stores for it and for the [`commands`] (`init`, `repair`,
//! `migrate`); [`listener`] and [`tls`] accept the connections of both
//! listeners.

// The crate is a service, not a library: its documentation is built with
// `--document-private-items` (scripts/test checks it), so module overviews
// link to the private items they describe.
#![allow(rustdoc::private_intra_doc_links)]

pub mod backend;
pub mod backfill;
pub mod block_list;
pub mod checkpoint;
pub mod commands;
pub mod config;
pub mod domain;
mod error;
#[cfg(any(test, feature = "testkit"))]
pub mod fixtures;
pub mod grpc;
pub mod http;
pub mod listener;
pub mod media;
pub mod migrate;
pub mod pb;
pub mod response_stall;
pub mod scanner;
pub mod startup;
pub mod storage;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tls;

pub use error::BoxError;
