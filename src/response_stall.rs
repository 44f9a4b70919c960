//! Response bodies their peer does not take end, on both listeners.
//!
//! hyper polls a response body for its next frame only once the frame
//! before it fits in the stream's HTTP/2 flow-control window (on HTTP/1,
//! once the socket took it): a frame ready but not asked for means the peer
//! does not take the bytes offered. A body not asked for its next frame
//! for the stall timeout is dropped, with what it holds (its reservation
//! from the memory budget, an open file, a call's count on its
//! connection). A body that waits for news of its own (a health `Watch`
//! with nothing to say) is not stalled: the timer runs only while a frame
//! is offered.
//!
//! Data frames are handed to hyper in pieces of at most [`PIECE`] bytes
//! (copies, so that a piece does not keep its whole frame alive), so that
//! what hyper and the HTTP/2 stream hold of a response its peer does not
//! read is at most two pieces; the rest stays here, counted and watched,
//! and goes when the body is dropped.
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::codegen::http;

use crate::domain::budget::Reservation;

/// The most of a data frame handed to hyper at once: one HTTP/2 DATA frame
/// of the default maximum size, so that pieces add no framing.
pub const PIECE: usize = 16 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response's reservation on its way from the handler to the layer
/// that watches its body ([`crate::grpc::response_memory::HoldResponses`],
/// the HTTP listener's) (extensions must be `Clone`; the reservation is taken
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

    /// The reservation `response` carries, taken out of its extensions;
    /// none if it carries none.
    pub fn take_from<B>(response: &mut http::Response<B>) -> Reservation {
        response
            .extensions_mut()
            .remove::<HeldMemory>()
            .and_then(|held| held.take())
            .unwrap_or_else(Reservation::none)
    }
}

/// What a stalled body yields if hyper polls it after all.
#[derive(Clone, Debug)]
pub enum OnStall {
    /// These trailers (a gRPC status).
    Trailers(http::HeaderMap),
    /// An error: hyper resets the HTTP/2 stream (or closes an HTTP/1
    /// connection).
    Reset,
}

/// A response body dropped, with `memory`, once it is not asked for its
/// next frame for `timeout` while one is ready.
pub struct Watched<B> {
    shared: Arc<Shared<B>>,
    on_stall: OnStall,
    /// Dropped with the body: stops its watchdog.
    _watching: tokio::sync::oneshot::Sender<()>,
    /// The last poll found the body waiting for news: the watchdog waits
    /// to hear of the next frame offered.
    waited: bool,
    ended: bool,
}

struct Shared<B> {
    inner: Mutex<Option<Inner<B>>>,
    /// Where the body stands with hyper.
    offered: Mutex<Offer>,
    /// Tells the watchdog that a frame is offered again.
    offering: Notify,
}

/// Where a body stands with hyper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Offer {
    /// A frame offered at this instant, not asked for since.
    Since(Instant),
    /// Being polled: it is offered or waiting in a moment.
    Polling,
    /// The body waits for news of its own: no timer runs.
    Waiting,
}

struct Inner<B> {
    body: B,
    /// What is left of the data frame being handed out in pieces.
    rest: Bytes,
    /// Whether `rest` is part of a larger frame: its pieces are copies, so
    /// that a piece hyper keeps does not keep the whole frame.
    sliced: bool,
    _memory: Reservation,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl<B: Send + 'static> Watched<B> {
    /// Watches `body`, which holds `memory`; `what` names it in logs and
    /// metrics (`grpc`, `http`).
    pub fn new(
        body: B,
        memory: Reservation,
        timeout: Duration,
        on_stall: OnStall,
        what: &'static str,
    ) -> Self {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Some(Inner {
                body,
                rest: Bytes::new(),
                sliced: false,
                _memory: memory,
            })),
            // hyper asks for the first frame as soon as the headers are
            // sent.
            offered: Mutex::new(Offer::Since(Instant::now())),
            offering: Notify::new(),
        });
        let (watching, dropped) = tokio::sync::oneshot::channel();
        tokio::spawn(drop_when_stalled(shared.clone(), timeout, dropped, what));
        Self {
            shared,
            on_stall,
            _watching: watching,
            waited: false,
            ended: false,
        }
    }
}

/// Drops the body `shared` holds once a frame has been offered for
/// `timeout` without being asked for, unless the body goes first.
async fn drop_when_stalled<B>(
    shared: Arc<Shared<B>>,
    timeout: Duration,
    mut body_dropped: tokio::sync::oneshot::Receiver<()>,
    what: &'static str,
) {
    loop {
        let offering = shared.offering.notified();
        let state = *lock(&shared.offered);
        let since = match state {
            Offer::Since(since) => since,
            // Offered or waiting in a moment: look again after a timeout.
            Offer::Polling => Instant::now(),
            Offer::Waiting => {
                tokio::select! {
                    () = offering => continue,
                    _ = &mut body_dropped => return,
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(since + timeout) => {}
            () = offering => continue,
            _ = &mut body_dropped => return,
        }
        if *lock(&shared.offered) != Offer::Since(since) {
            continue;
        }
        let stalled = lock(&shared.inner).take();
        if stalled.is_some() {
            metrics::counter!("imageservice_response_stalls_total", "listener" => what)
                .increment(1);
            tracing::debug!(
                ?timeout,
                listener = what,
                "dropped a response its peer did not read"
            );
        }
        drop(stalled);
        return;
    }
}

impl<B> Watched<B> {
    fn offer(&mut self) {
        *lock(&self.shared.offered) = Offer::Since(Instant::now());
        if std::mem::take(&mut self.waited) {
            self.shared.offering.notify_one();
        }
    }
}

impl<B> Body for Watched<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        *lock(&this.shared.offered) = Offer::Polling;
        let mut guard = lock(&this.shared.inner);
        let Some(inner) = guard.as_mut() else {
            this.ended = true;
            return Poll::Ready(Some(match &this.on_stall {
                OnStall::Trailers(trailers) => Ok(Frame::trailers(trailers.clone())),
                OnStall::Reset => Err("the response was not read for the stall timeout".into()),
            }));
        };
        if inner.rest.is_empty() {
            match Pin::new(&mut inner.body).poll_frame(cx) {
                Poll::Pending => {
                    drop(guard);
                    *lock(&this.shared.offered) = Offer::Waiting;
                    this.waited = true;
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        inner.sliced = data.len() > PIECE;
                        inner.rest = data;
                    }
                    Err(frame) => {
                        // Trailers: the end, and the memory goes back.
                        *guard = None;
                        this.ended = true;
                        return Poll::Ready(Some(Ok(frame)));
                    }
                },
                Poll::Ready(other) => {
                    *guard = None;
                    this.ended = true;
                    return Poll::Ready(other.map(|frame| frame.map_err(Into::into)));
                }
            }
        }
        let piece = if inner.sliced {
            let n = inner.rest.len().min(PIECE);
            let piece = Bytes::copy_from_slice(&inner.rest[..n]);
            bytes::Buf::advance(&mut inner.rest, n);
            piece
        } else {
            std::mem::take(&mut inner.rest)
        };
        if inner.rest.is_empty() && inner.body.is_end_stream() {
            *guard = None;
            this.ended = true;
        } else {
            drop(guard);
            this.offer();
        }
        Poll::Ready(Some(Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
            || lock(&self.shared.inner)
                .as_ref()
                .is_some_and(|inner| inner.rest.is_empty() && inner.body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match lock(&self.shared.inner).as_ref() {
            Some(inner) => {
                let body = inner.body.size_hint();
                let rest = inner.rest.len() as u64;
                let mut hint = SizeHint::new();
                hint.set_lower(body.lower() + rest);
                if let Some(upper) = body.upper() {
                    hint.set_upper(upper + rest);
                }
                hint
            }
            None if self.ended => SizeHint::with_exact(0),
            None => SizeHint::default(),
        }
    }
}
