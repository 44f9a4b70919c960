//! The gRPC transport: protobuf in, domain calls, protobuf out. Handlers are
//! thin: authenticate, convert, call the domain, convert back.

pub mod auth;
mod convert;
pub mod moderation;
mod ready;
pub mod request_memory;
pub mod response_memory;
pub mod service;
mod status;

pub use moderation::ModerationApi;
pub use service::{ImageApi, RESUME_CURSOR};
pub use status::RETRY_PUSHBACK;
