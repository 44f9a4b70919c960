//! The gRPC transport: protobuf in, domain calls, protobuf out. Handlers are
//! thin: authenticate, convert, call the domain, convert back.

pub mod auth;
mod convert;
pub mod request_memory;
pub mod response_memory;
pub mod service;
mod status;

pub use service::ImageApi;
pub use status::RETRY_PUSHBACK;

/// The inner service a layer made ready, taken to serve one call, a clone
/// left in its place to be made ready for the next (tower's rule: only
/// the service `poll_ready` answered may take the call).
fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}
