//! Responses count against the memory budget until they are sent, and a
//! response its caller does not read ends: every response, the health
//! service's and reflection's included (see [`crate::response_stall`]).
//!
//! A handler reserves its response's encoded size from the budget and puts
//! the reservation in the response's extensions ([`HeldMemory`]; a download
//! puts an empty one, its stream holding its memory, to be watched alike);
//! tonic
//! copies them into the `http::Response`, where [`HoldResponses`] moves the
//! reservation into the response body. HTTP/2 flow control decides when
//! that body is sent: a caller that opens streams with a window of 0 and
//! never reads keeps it, and its reservation, for as long as it likes. So
//! a body not asked for its next message for the stall timeout is dropped,
//! which releases the reservation, the message and the call's count on
//! its connection (so that `--grpc-idle-timeout` and `--max-connections`
//! can close it); if the caller reads at last, the call ends with
//! DEADLINE_EXCEEDED.
//!
//! Reflection streams have no identity to count against: each reserves
//! what it may hold ahead of its reader ([`ReflectionLimits`]: responses,
//! and the requests its caller may send ahead while the responses wait)
//! from a pool of the replica's (`--grpc-reflection-memory`) when it
//! opens, refused at once without room, and a connection has at most a
//! few open at once.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::codegen::http;

use crate::domain::budget::Reservation;
use crate::listener::{PeerInfo, ReflectionSlot};
use crate::response_stall::{OnStall, Watched};

pub use crate::response_stall::HeldMemory;

/// The layer on the gRPC server that watches every response body: it keeps
/// a response's [`HeldMemory`] until the body is sent or dropped, drops a
/// body not read for `stall_timeout`, and admits reflection streams
/// within [`ReflectionLimits`]. It must be outside
/// [`crate::listener::CountCalls`], so that dropping a stalled body ends
/// its call's count.
#[derive(Clone, Debug)]
pub struct HoldResponses {
    pub stall_timeout: Duration,
    pub reflection: ReflectionLimits,
}

/// What reflection streams may hold.
#[derive(Clone, Debug)]
pub struct ReflectionLimits {
    /// The replica's pool, in bytes, which each stream reserves from.
    pub pool: Arc<Semaphore>,
    /// The pool's size (`--grpc-reflection-memory`).
    pub pool_bytes: u64,
    /// Reserved by each stream while it is open: what it may hold ahead of
    /// its reader (see [`reflection_reserve`]).
    pub per_stream: u64,
    /// Streams one connection may have open at once.
    pub per_connection: u64,
}

/// Reflection streams one connection may have open at once: grpcurl opens
/// one.
pub const REFLECTION_STREAMS_PER_CONNECTION: u64 = 4;

/// The largest reflection request accepted (a symbol or file name, and a
/// host): a response repeats its request.
pub const MAX_REFLECTION_REQUEST: usize = 8 * 1024;

/// What one reflection stream may hold ahead of a reader that does not
/// read, for a largest response of `largest_file` (the largest encoded
/// file descriptor served) plus its request repeated: the message being
/// handed out, the one in the reflection service's channel, and the one
/// its task waits to send, and one more being encoded; and the requests
/// its caller sends ahead, unread while the responses wait, up to the
/// stream's HTTP/2 window `stream_window`.
pub fn reflection_reserve(largest_file: usize, stream_window: u32) -> u64 {
    let response = largest_file + 2 * MAX_REFLECTION_REQUEST + 64;
    4 * response as u64 + u64::from(stream_window)
}

impl<S> tower_layer::Layer<S> for HoldResponses {
    type Service = HeldResponses<S>;

    fn layer(&self, inner: S) -> HeldResponses<S> {
        HeldResponses {
            inner,
            stall_timeout: self.stall_timeout,
            reflection: self.reflection.clone(),
        }
    }
}

/// See [`HoldResponses`].
#[derive(Clone, Debug)]
pub struct HeldResponses<S> {
    inner: S,
    stall_timeout: Duration,
    reflection: ReflectionLimits,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Request = http::Request<tonic::body::Body>;
type Response = http::Response<tonic::body::Body>;

/// Paths of the reflection services, v1 and v1alpha.
const REFLECTION: &str = "/grpc.reflection.";

impl<S, B> tower_service::Service<Request> for HeldResponses<S>
where
    S: tower_service::Service<Request, Response = http::Response<B>> + Clone + Send + 'static,
    S::Error: Send,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let stall_timeout = self.stall_timeout;
        if !request.uri().path().starts_with(REFLECTION) {
            let response = self.inner.call(request);
            return Box::pin(async move {
                let mut response = response.await?;
                let memory = HeldMemory::take_from(&mut response);
                Ok(watched(response, memory, Held::default(), stall_timeout))
            });
        }
        let limits = self.reflection.clone();
        let slot = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|peer| peer.connection.as_ref())
            .map(|connection| connection.open_reflection(limits.per_connection));
        let slot = match slot {
            Some(Some(slot)) => Some(slot),
            Some(None) => {
                let status = tonic::Status::resource_exhausted(format!(
                    "this connection has {} reflection streams open, the most one may: \
                     end one, then retry",
                    limits.per_connection
                ));
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
            None => None,
        };
        // The service is called once the memory is reserved.
        let mut inner = super::ready::take_ready(&mut self.inner);
        Box::pin(async move {
            let permits = u32::try_from(limits.per_stream).unwrap_or(u32::MAX);
            let Ok(pool) = limits.pool.clone().try_acquire_many_owned(permits) else {
                let status = tonic::Status::resource_exhausted(format!(
                    "the reflection streams open on this server hold the {} they may \
                     (--grpc-reflection-memory): retry shortly",
                    bytesize::ByteSize::b(limits.pool_bytes).display().iec()
                ));
                return Ok(status.into_http());
            };
            let response = inner.call(request).await?;
            let held = Held {
                _slot: slot,
                _pool: Some(pool),
            };
            Ok(watched(response, Reservation::none(), held, stall_timeout))
        })
    }
}

/// `response` with its body watched for stalls, holding `memory` and
/// `held` until it is sent or dropped.
fn watched<B>(
    response: http::Response<B>,
    memory: Reservation,
    held: Held,
    stall_timeout: Duration,
) -> Response
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    response.map(|body| {
        let body = WithSlot { body, _held: held };
        tonic::body::Body::new(Watched::new(
            body,
            memory,
            stall_timeout,
            OnStall::Trailers(stalled(stall_timeout)),
            "grpc",
        ))
    })
}

/// What a reflection stream holds while it is open: its slot on its
/// connection and its part of the reflection pool.
#[derive(Default)]
struct Held {
    _slot: Option<ReflectionSlot>,
    _pool: Option<OwnedSemaphorePermit>,
}

/// A body that keeps what its reflection stream holds.
struct WithSlot<B> {
    body: B,
    _held: Held,
}

impl<B: http_body::Body + Unpin> http_body::Body for WithSlot<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The trailers of a response dropped for not being read.
fn stalled(timeout: Duration) -> http::HeaderMap {
    let status = tonic::Status::deadline_exceeded(format!(
        "the response was not read for {}s (--download-stall-timeout)",
        timeout.as_secs_f32()
    ));
    let mut trailers = http::HeaderMap::new();
    let _ = status.add_header(&mut trailers);
    trailers
}
