//! Responses count against the memory budget until they are sent, and a
//! response its caller does not read ends.
//!
//! A handler reserves its response's encoded size from the budget and puts
//! the reservation in the response's extensions ([`HeldMemory`]; a download
//! puts an empty one, its stream holding its memory, to be watched alike);
//! tonic
//! copies them into the `http::Response`, where [`HoldResponses`] moves the
//! reservation into the response body. HTTP/2 flow control decides when
//! that body is sent: a caller that opens streams with a window of 0 and
//! never reads keeps it, and its reservation, for as long as it likes. So
//! a body not polled for the stall timeout is dropped, which releases the
//! reservation, the message and the call's count on its connection (so
//! that `--grpc-idle-timeout` and `--max-connections` can close it); if
//! the caller reads at last, the call ends with DEADLINE_EXCEEDED.
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use tokio::time::Instant;
use tonic::codegen::http;

use crate::domain::budget::Reservation;

/// A response's reservation on its way from the handler to
/// [`HoldResponses`] (extensions must be `Clone`; the reservation is taken
/// once).
#[derive(Clone, Debug)]
pub struct HeldMemory(Arc<Mutex<Option<Reservation>>>);

impl HeldMemory {
    pub fn new(reservation: Reservation) -> Self {
        Self(Arc::new(Mutex::new(Some(reservation))))
    }

    fn take(&self) -> Option<Reservation> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The layer on the gRPC server that keeps each response's [`HeldMemory`]
/// until its body is sent or dropped, and drops a body not read for
/// `stall_timeout`. It must be outside [`crate::listener::CountCalls`], so
/// that dropping a stalled body ends its call's count.
#[derive(Clone, Copy, Debug)]
pub struct HoldResponses {
    pub stall_timeout: Duration,
}

impl<S> tower_layer::Layer<S> for HoldResponses {
    type Service = HeldResponses<S>;

    fn layer(&self, inner: S) -> HeldResponses<S> {
        HeldResponses {
            inner,
            stall_timeout: self.stall_timeout,
        }
    }
}

/// See [`HoldResponses`].
#[derive(Clone, Debug)]
pub struct HeldResponses<S> {
    inner: S,
    stall_timeout: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Request = http::Request<tonic::body::Body>;
type Response = http::Response<tonic::body::Body>;

impl<S, B> tower_service::Service<Request> for HeldResponses<S>
where
    S: tower_service::Service<Request, Response = http::Response<B>>,
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
        let response = self.inner.call(request);
        let stall_timeout = self.stall_timeout;
        Box::pin(async move {
            let mut response = response.await?;
            let held = response
                .extensions_mut()
                .remove::<HeldMemory>()
                .and_then(|held| held.take());
            Ok(match held {
                Some(memory) => response
                    .map(|body| tonic::body::Body::new(HeldBody::new(body, memory, stall_timeout))),
                None => response.map(tonic::body::Body::new),
            })
        })
    }
}

/// A response body with its reservation, both dropped together: when the
/// body ends, or when it has not been polled for the stall timeout.
struct HeldBody<B> {
    inner: Arc<Mutex<Option<(B, Reservation)>>>,
    last_poll: Arc<Mutex<Instant>>,
    timeout: Duration,
    /// Dropped with the body: stops its watchdog.
    _watching: tokio::sync::oneshot::Sender<()>,
    ended: bool,
}

impl<B: Send + 'static> HeldBody<B> {
    fn new(body: B, memory: Reservation, timeout: Duration) -> Self {
        let inner = Arc::new(Mutex::new(Some((body, memory))));
        let last_poll = Arc::new(Mutex::new(Instant::now()));
        let (watching, dropped) = tokio::sync::oneshot::channel();
        tokio::spawn(drop_when_stalled(
            Arc::downgrade(&inner),
            last_poll.clone(),
            timeout,
            dropped,
        ));
        Self {
            inner,
            last_poll,
            timeout,
            _watching: watching,
            ended: false,
        }
    }
}

/// Drops what `inner` holds once `last_poll` is `timeout` old, unless the
/// body goes first.
async fn drop_when_stalled<T>(
    inner: Weak<Mutex<Option<T>>>,
    last_poll: Arc<Mutex<Instant>>,
    timeout: Duration,
    mut body_dropped: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        let due = *last_poll.lock().unwrap_or_else(|e| e.into_inner()) + timeout;
        tokio::select! {
            () = tokio::time::sleep_until(due) => {}
            _ = &mut body_dropped => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        if last_poll
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            >= timeout
        {
            let stalled = inner.lock().unwrap_or_else(|e| e.into_inner()).take();
            if stalled.is_some() {
                metrics::counter!("imageservice_response_stalls_total").increment(1);
                tracing::debug!(?timeout, "dropped a response its caller did not read");
            }
            return;
        }
    }
}

impl<B> http_body::Body for HeldBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        *this.last_poll.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        let mut inner = this.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some((body, _memory)) = inner.as_mut() else {
            this.ended = true;
            return Poll::Ready(Some(Ok(Frame::trailers(stalled(this.timeout)))));
        };
        let polled = Pin::new(&mut *body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || body.is_end_stream() {
            // Sent: the memory goes back now.
            *inner = None;
            this.ended = true;
        }
        polled.map(|frame| frame.map(|frame| frame.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
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
