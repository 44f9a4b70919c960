//! Request messages count against the memory budget while they arrive, a
//! message larger than its call can use is refused from its header, and a
//! message that does not arrive whole in time ends.
//!
//! tonic gathers each request message whole before it decodes it, and it
//! allocates the length a message's gRPC frame header declares (5 bytes:
//! a flag and a big-endian length) as soon as it reads the header. A
//! caller that declares 4 MiB, sends all but a few bytes and then trickles
//! the rest holds that buffer for as long as it likes; 100 streams on each
//! of many connections took a replica from 50 MB to 1.6 GB. So
//! [`HoldRequests`] reads the frame headers in each request body before
//! tonic does:
//!
//! - a message longer than its method's largest valid request
//!   ([`largest_message`]) is refused at once, before its bytes are read
//!   (RESOURCE_EXHAUSTED, not to be retried);
//! - a call of the image service names its caller before any of its
//!   messages is read: the layer asks the service's [`Authenticator`] (the
//!   same check the handler makes) at the request's headers and answers
//!   UNAUTHENTICATED at once when it does not, so a caller without an
//!   identity cannot make the replica hold anything of its messages;
//! - a message that does not arrive in the DATA frame that starts it
//!   reserves its declared length from its connection's allowance
//!   (`--grpc-max-partial-request-bytes-per-connection`) and, for the image
//!   service, from the memory budget, counted against its caller's share
//!   (`--max-memory-per-user`), so one user's unfinished messages stop at
//!   that share; health and reflection, open to callers without an
//!   identity, reserve theirs (at most 16 KiB each) from a small pool of
//!   their own ([`OPEN_POOL_BYTES`]) instead of the budget. All of this
//!   happens before tonic sees the header: the length, not the bytes so far,
//!   because that is what tonic allocates, and because a message that was
//!   let in can then always finish (reserving as bytes arrive, partial
//!   messages could each wait for room the others hold). While it waits
//!   for room nothing more of its stream is read, so HTTP/2 flow control
//!   holds the caller back; past `--memory-wait` the call ends with
//!   RESOURCE_EXHAUSTED (worth retrying: the room is others' work);
//! - a waiting message keeps up to its stream's window of bytes unread
//!   with hyper, so only `--grpc-max-waiting-request-messages` wait at
//!   once over the replica and health's and reflection's never do: past
//!   that, a message without room is refused at once;
//! - the message must arrive whole within `--upload-idle-timeout` of its
//!   header, or the call ends with DEADLINE_EXCEEDED. An upload already
//!   needs a whole message within that time (its pace counts bytes as
//!   tonic hands over whole messages), so honest callers see no change;
//! - an upload's messages after its first reserve only what is beyond
//!   the one message its working set counts ([`UploadMessages`], set by
//!   the handler from the first message: a chunk of the whole declared
//!   image, or the largest message when no size is declared; nothing for
//!   a resumed session's stream, whose reservation grows with the bytes
//!   received), so honest uploads reserve nothing more, while an upload
//!   declaring a small size cannot hold large messages unfinished
//!   outside the budget. The frame that ends an upload's first message is
//!   handed on alone, so the handler has read the first message before
//!   the second's header is weighed; an upload not admitted has nothing
//!   more of its stream read;
//! - the reservation is given back when the message's last byte has
//!   passed (tonic decodes it, and the handler's own accounting takes
//!   over) or when the body is dropped.
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::codegen::http;

use crate::domain::budget::{MemoryBudget, Reservation};
use crate::domain::upload::MAX_MESSAGE_BYTES;
use crate::domain::{DomainError, UserId};
use crate::grpc::auth::{Authenticator, Identified};
use crate::listener::PeerInfo;

/// The one method whose messages carry image bytes.
const UPLOAD: &str = "/imageservice.v1.ImageService/UploadImage";

/// The image service's methods other than `UploadImage`.
const IMAGE_SERVICE: &str = "/imageservice.v1.ImageService/";
/// The moderation service's methods: identified and sized like the image
/// service's.
const MODERATION_SERVICE: &str = "/imageservice.v1.ModerationService/";

/// Whether `path` is a method of a service whose callers have an identity.
fn identified(path: &str) -> bool {
    path.starts_with(IMAGE_SERVICE) || path.starts_with(MODERATION_SERVICE)
}

/// The largest request of the image service's calls other than
/// `UploadImage`. The largest valid ones, at every limit the service
/// checks and with characters of 4 bytes, are a `StartUpload` spec (its 32
/// attributes of 1 KiB keys and values, 30 tags of 64 characters and a
/// description of 2 200: about 90 KiB) and a `GetUploadUrls` naming the
/// size of each of the most parts `--max-upload-parts` allows (10 000 × 11
/// bytes); twice the larger leaves room for a long filename (cut to 255
/// characters only once read) and fields a newer client adds.
pub const MAX_CALL_REQUEST_BYTES: u64 = 256 * 1024;

/// The largest request of the health and reflection services: a service
/// name, a symbol or a file name.
pub const MAX_OTHER_REQUEST_BYTES: u64 = 16 * 1024;

/// Bytes the unfinished request messages of health and reflection, which
/// need no identity, may hold together on one replica: 256 of their
/// largest. They come from this pool, not the memory budget, so callers
/// without an identity cannot take the budget from anyone.
pub const OPEN_POOL_BYTES: u64 = 4 * 1024 * 1024;

const STILL_ARRIVING: &str = "a request message still arriving";

/// The largest request message `path` may be sent.
pub fn largest_message(path: &str) -> u64 {
    if path == UPLOAD {
        MAX_MESSAGE_BYTES
    } else if identified(path) {
        MAX_CALL_REQUEST_BYTES
    } else {
        MAX_OTHER_REQUEST_BYTES
    }
}

/// The bytes of each message after an upload's first that the upload's
/// working set counts; the request layer reserves the rest of a longer
/// message while it arrives. Found in an `UploadImage` request's
/// extensions; nothing is counted until the handler says.
#[derive(Clone, Debug, Default)]
pub struct UploadMessages(Arc<AtomicU64>);

impl UploadMessages {
    /// The upload's working set counts a message of `bytes`.
    pub fn counted(&self, bytes: u64) {
        self.0.store(bytes, Ordering::Release);
    }

    fn counts(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// What [`HoldRequests`] allows a request message still arriving.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    /// Bytes the messages still arriving on one connection may reserve
    /// together (at least one message of the largest size).
    pub per_connection: u64,
    /// How long a message waits for room before its call is refused.
    pub wait: Duration,
    /// How long a message may take to arrive whole, from its header.
    pub message_timeout: Duration,
    /// Messages that may wait for room at once, over all connections.
    pub max_waiting: u32,
}

/// The layer on the gRPC server that reads the frame headers of request
/// bodies: see the module's documentation.
#[derive(Clone)]
pub struct HoldRequests {
    shared: Arc<Shared>,
}

impl HoldRequests {
    /// `auth` names the callers of the image service, as its handlers do.
    pub fn new(budget: MemoryBudget, limits: RequestLimits, auth: Arc<Authenticator>) -> Self {
        Self {
            shared: Arc::new(Shared {
                budget,
                auth,
                open_pool: Arc::new(Semaphore::new(OPEN_POOL_BYTES as usize)),
                waiting: Arc::new(Semaphore::new(limits.max_waiting.max(1) as usize)),
                limits: RequestLimits {
                    per_connection: limits.per_connection.max(MAX_MESSAGE_BYTES),
                    ..limits
                },
                connections: Mutex::default(),
            }),
        }
    }
}

struct Shared {
    budget: MemoryBudget,
    auth: Arc<Authenticator>,
    /// What health's and reflection's messages still arriving may hold.
    open_pool: Arc<Semaphore>,
    /// Messages waiting for room: each keeps its stream's window of
    /// unread bytes while it waits.
    waiting: Arc<Semaphore>,
    limits: RequestLimits,
    connections: Mutex<Connections>,
}

/// Each connection's allowance, in bytes, while some message of it holds
/// part of it; keyed by the peer's address and port, which name one open
/// connection of the listener.
#[derive(Debug, Default)]
struct Connections {
    allowances: HashMap<SocketAddr, Weak<Semaphore>>,
    /// The number of entries after the last sweep of those no message holds.
    swept: usize,
}

impl Shared {
    fn allowance(&self, peer: SocketAddr) -> Arc<Semaphore> {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(allowance) = connections.allowances.get(&peer).and_then(Weak::upgrade) {
            return allowance;
        }
        if connections.allowances.len() >= (connections.swept * 2).max(64) {
            connections
                .allowances
                .retain(|_, allowance| allowance.strong_count() > 0);
            connections.swept = connections.allowances.len();
        }
        let permits = usize::try_from(self.limits.per_connection)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        let allowance = Arc::new(Semaphore::new(permits));
        connections
            .allowances
            .insert(peer, Arc::downgrade(&allowance));
        allowance
    }

    /// Reserves `bytes` for a message of `caller` on the connection of
    /// `peer` ([`Shared::reserve`]). A message that finds no room at once
    /// keeps its stream's unread bytes (up to its window) while it waits,
    /// so only so many may wait: a message of health or reflection not at
    /// all, the image service's up to `max_waiting` over the replica.
    async fn hold(
        self: Arc<Self>,
        caller: Option<UserId>,
        peer: Option<SocketAddr>,
        bytes: u64,
    ) -> Result<Held, Status> {
        let mut reserve = Box::pin(self.clone().reserve(caller.clone(), peer, bytes));
        if let Some(held) = futures::FutureExt::now_or_never(&mut reserve) {
            return held;
        }
        if caller.is_none() {
            return Err(open_pool_full());
        }
        let Ok(_waiting) = self.waiting.clone().try_acquire_owned() else {
            refused("waiting");
            return Err(Status::from(DomainError::ResourceExhausted(format!(
                "{} request messages already wait for memory on this server \
                 (--grpc-max-waiting-request-messages): retry shortly",
                self.limits.max_waiting
            ))));
        };
        reserve.await
    }

    /// Reserves `bytes` for a message of `caller` on the connection of
    /// `peer`: from the connection's allowance, then from the caller's
    /// share and the budget (or the open pool), within the wait.
    async fn reserve(
        self: Arc<Self>,
        caller: Option<UserId>,
        peer: Option<SocketAddr>,
        bytes: u64,
    ) -> Result<Held, Status> {
        let started = Instant::now();
        let wait = self.limits.wait;
        let connection = match peer {
            Some(peer) => {
                let permits = u32::try_from(bytes).unwrap_or(u32::MAX);
                let acquire = self.allowance(peer).acquire_many_owned(permits);
                match tokio::time::timeout(wait, acquire).await {
                    Ok(Ok(permit)) => Some(permit),
                    _ => {
                        refused("connection");
                        return Err(Status::from(DomainError::ResourceExhausted(format!(
                            "the request messages still arriving on this connection hold its \
                             allowance of {} (--grpc-max-partial-request-bytes-per-connection); \
                             this one needs {}: retry shortly",
                            human(self.limits.per_connection),
                            human(bytes)
                        ))));
                    }
                }
            }
            None => None,
        };
        let left = wait.saturating_sub(started.elapsed());
        let memory = match caller {
            Some(user) => {
                let charge = self
                    .budget
                    .charge(&user, bytes, STILL_ARRIVING)
                    .map_err(|e| {
                        refused("user_share");
                        Status::from(e)
                    })?;
                let reservation = self
                    .budget
                    .reserve_within(bytes, STILL_ARRIVING, left)
                    .await
                    .map_err(Status::from)?;
                Memory::Budget {
                    _reservation: reservation.charged(charge),
                }
            }
            None => {
                let permits = u32::try_from(bytes).unwrap_or(u32::MAX);
                let acquire = self.open_pool.clone().acquire_many_owned(permits);
                match tokio::time::timeout(left, acquire).await {
                    Ok(Ok(permit)) => Memory::Open { _permit: permit },
                    _ => return Err(open_pool_full()),
                }
            }
        };
        Ok(Held {
            _memory: memory,
            _connection: connection,
        })
    }
}

/// The refusal of a health or reflection message without room in its pool.
fn open_pool_full() -> Status {
    refused("open_pool");
    Status::from(DomainError::ResourceExhausted(format!(
        "the health and reflection request messages still arriving hold the {} they may: \
         retry shortly",
        human(OPEN_POOL_BYTES)
    )))
}

fn human(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}

fn refused(reason: &'static str) {
    metrics::counter!("imageservice_request_message_refusals_total", "reason" => reason)
        .increment(1);
}

impl<S> tower_layer::Layer<S> for HoldRequests {
    type Service = HeldRequests<S>;

    fn layer(&self, inner: S) -> HeldRequests<S> {
        HeldRequests {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// See [`HoldRequests`].
#[derive(Clone)]
pub struct HeldRequests<S> {
    inner: S,
    shared: Arc<Shared>,
}

type Request = http::Request<tonic::body::Body>;

type Response = http::Response<tonic::body::Body>;

impl<S> tower_service::Service<Request> for HeldRequests<S>
where
    S: tower_service::Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if !identified(request.uri().path()) {
            let request = self.metered(request, None);
            return Box::pin(self.inner.call(request));
        }
        let mut inner = super::ready::take_ready(&mut self.inner);
        let shared = self.shared.clone();
        Box::pin(async move {
            // The headers are lent to the check and put back, not copied.
            let mut request = request;
            let metadata =
                tonic::metadata::MetadataMap::from_headers(std::mem::take(request.headers_mut()));
            let user = shared
                .auth
                .authenticate(&metadata, request.extensions().get::<PeerInfo>())
                .await;
            *request.headers_mut() = metadata.into_headers();
            let user = match user {
                Ok(user) => user,
                Err(status) => {
                    refused("unauthenticated");
                    return Ok(status.into_http());
                }
            };
            // The handler takes the caller from here rather than verifying
            // the same headers (a token's signature) a second time.
            request.extensions_mut().insert(Identified(user.clone()));
            let request = metered(&shared, request, Some(user));
            inner.call(request).await
        })
    }
}

impl<S> HeldRequests<S> {
    fn metered(&self, request: Request, caller: Option<UserId>) -> Request {
        metered(&self.shared, request, caller)
    }
}

/// `request`, its body measured as it passes (see [`HoldRequests`]).
fn metered(shared: &Arc<Shared>, request: Request, caller: Option<UserId>) -> Request {
    if request.body().is_end_stream() {
        return request;
    }
    let largest = largest_message(request.uri().path());
    let mut request = request;
    let upload = (request.uri().path() == UPLOAD).then(|| {
        let upload = UploadMessages::default();
        request.extensions_mut().insert(upload.clone());
        upload
    });
    let peer = request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|peer| peer.remote);
    let shared = shared.clone();
    request.map(|body| {
        tonic::body::Body::new(MeteredBody {
            inner: body,
            largest,
            upload,
            messages: 0,
            caller,
            peer,
            shared,
            reading: Reading::Header {
                header: [0; HEADER],
                have: 0,
            },
            waiting: None,
            rest: None,
            deadline: None,
            ended: false,
        })
    })
}

/// A gRPC frame header: the compressed flag and the length.
const HEADER: usize = 5;

/// Where a request body is among its messages.
enum Reading {
    /// Between messages: `have` bytes of the next header so far.
    Header { header: [u8; HEADER], have: usize },
    /// Inside a message of `length` bytes, `left` of them still to come;
    /// `held` once it has had to reserve them.
    Message {
        length: u64,
        left: u64,
        held: Option<Held>,
    },
}

/// What a message still arriving holds.
struct Held {
    _memory: Memory,
    _connection: Option<OwnedSemaphorePermit>,
}

/// Where a message's bytes are reserved.
enum Memory {
    /// From the budget, counted against its caller's share.
    Budget { _reservation: Reservation },
    /// From the pool of the calls open to callers without an identity.
    Open { _permit: OwnedSemaphorePermit },
}

type Holding = Pin<Box<dyn Future<Output = Result<Held, Status>> + Send>>;

/// What a frame's bytes left to do.
struct Scanned {
    /// The bytes to reserve for the message the frame leaves unfinished,
    /// when it has not reserved them yet.
    reserve: Option<u64>,
    /// Where an upload's first message ended with more bytes after it.
    split: Option<usize>,
}

/// A request body whose messages are measured as they pass.
struct MeteredBody {
    inner: tonic::body::Body,
    largest: u64,
    /// An upload's: what its working set counts of each later message.
    upload: Option<UploadMessages>,
    /// Messages whose header has been read.
    messages: u64,
    /// The image service's caller; none for health and reflection.
    caller: Option<UserId>,
    peer: Option<SocketAddr>,
    shared: Arc<Shared>,
    reading: Reading,
    /// A frame that starts a message it does not finish, held back until
    /// the message has its reservation.
    waiting: Option<(Frame<Bytes>, Holding)>,
    /// The bytes after an upload's first message, when the frame that
    /// ended it carried more: handed on by the next poll.
    rest: Option<Bytes>,
    /// When the message being read must be whole.
    deadline: Option<Pin<Box<Sleep>>>,
    ended: bool,
}

impl MeteredBody {
    /// Follows `data` through the messages, up to the end of an upload's
    /// first message when more follows it.
    fn scan(&mut self, data: &[u8]) -> Result<Scanned, Status> {
        let total = data.len();
        let mut data = data;
        while !data.is_empty() {
            match &mut self.reading {
                Reading::Header { header, have } => {
                    let take = (HEADER - *have).min(data.len());
                    header[*have..*have + take].copy_from_slice(&data[..take]);
                    *have += take;
                    data.advance(take);
                    if *have < HEADER {
                        continue;
                    }
                    let length = u64::from(u32::from_be_bytes([
                        header[1], header[2], header[3], header[4],
                    ]));
                    if length > self.largest {
                        refused("too_large");
                        return Err(Status::from(DomainError::TooLarge(format!(
                            "the request message declares {length} bytes; this call takes at \
                             most {} bytes",
                            self.largest
                        ))));
                    }
                    self.messages += 1;
                    self.reading = Reading::Message {
                        length,
                        left: length,
                        held: None,
                    };
                    self.deadline = Some(Box::pin(tokio::time::sleep(
                        self.shared.limits.message_timeout,
                    )));
                }
                Reading::Message { left, .. } => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                    *left -= take as u64;
                    data.advance(take);
                }
            }
            if matches!(self.reading, Reading::Message { left: 0, .. }) {
                // Whole: tonic decodes it now; its reservation goes back.
                self.reading = Reading::Header {
                    header: [0; HEADER],
                    have: 0,
                };
                self.deadline = None;
                if self.upload.is_some() && self.messages == 1 && !data.is_empty() {
                    return Ok(Scanned {
                        reserve: None,
                        split: Some(total - data.len()),
                    });
                }
            }
        }
        let reserve = match &self.reading {
            Reading::Message {
                length, held: None, ..
            } => {
                let counted = match &self.upload {
                    Some(upload) if self.messages > 1 => upload.counts(),
                    _ => 0,
                };
                (*length > counted).then(|| *length - counted)
            }
            _ => None,
        };
        Ok(Scanned {
            reserve,
            split: None,
        })
    }

    fn fail(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.ended = true;
        self.waiting = None;
        self.rest = None;
        self.reading = Reading::Header {
            header: [0; HEADER],
            have: 0,
        };
        self.deadline = None;
        Poll::Ready(Some(Err(status)))
    }

    fn stalled(&self) -> Status {
        refused("stalled");
        Status::deadline_exceeded(format!(
            "a request message did not arrive whole within {}s of its start \
             (--upload-idle-timeout)",
            self.shared.limits.message_timeout.as_secs_f32()
        ))
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            if let Some((_, holding)) = &mut this.waiting {
                let held = match holding.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(status)) => return this.fail(status),
                    Poll::Ready(Ok(held)) => held,
                };
                let (frame, _) = this.waiting.take().expect("a frame waits");
                if let Reading::Message { held: slot, .. } = &mut this.reading {
                    *slot = Some(held);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            if let Some(deadline) = &mut this.deadline
                && deadline.as_mut().poll(cx).is_ready()
            {
                let status = this.stalled();
                return this.fail(status);
            }
            let polled = match this.rest.take() {
                Some(rest) => Poll::Ready(Some(Ok(Frame::data(rest)))),
                None => Pin::new(&mut this.inner).poll_frame(cx),
            };
            let frame = match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    let inside = match &this.reading {
                        Reading::Header { have, .. } => *have > 0,
                        Reading::Message { .. } => true,
                    };
                    if inside {
                        return this.fail(Status::invalid_argument(
                            "the request ended inside a message",
                        ));
                    }
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(status))) => return Poll::Ready(Some(Err(status))),
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            let mut data = match frame.into_data() {
                Ok(data) => data,
                Err(other) => return Poll::Ready(Some(Ok(other))),
            };
            match this.scan(&data) {
                Err(status) => return this.fail(status),
                Ok(Scanned {
                    split: Some(at), ..
                }) => {
                    this.rest = Some(data.split_off(at));
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Scanned { reserve: None, .. }) => {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Scanned {
                    reserve: Some(length),
                    ..
                }) => {
                    let holding = Box::pin(this.shared.clone().hold(
                        this.caller.clone(),
                        this.peer,
                        length,
                    ));
                    this.waiting = Some((Frame::data(data), holding));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || (self.waiting.is_none() && self.rest.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::validation::{
        MAX_ATTRIBUTE_BYTES, MAX_ATTRIBUTES, MAX_DESCRIPTION_CHARS, MAX_FILENAME_CHARS,
        MAX_IDEMPOTENCY_KEY_BYTES, MAX_LOCATION_CHARS, MAX_TAG_CHARS, MAX_TAGS, MAX_TITLE_CHARS,
    };
    use crate::pb;
    use prost::Message;

    /// A string of `chars` characters of 4 bytes each.
    fn wide(chars: usize) -> String {
        "😀".repeat(chars)
    }

    fn largest_spec() -> pb::ImageSpec {
        pb::ImageSpec {
            filename: wide(MAX_FILENAME_CHARS),
            content_type: Some("image/jpeg".into()),
            title: wide(MAX_TITLE_CHARS),
            description: wide(MAX_DESCRIPTION_CHARS),
            tags: (0..MAX_TAGS).map(|_| wide(MAX_TAG_CHARS)).collect(),
            location: wide(MAX_LOCATION_CHARS),
            attributes: (0..MAX_ATTRIBUTES)
                .map(|n| {
                    let key = format!("{n:02}{}", "k".repeat(MAX_ATTRIBUTE_BYTES - 2));
                    (key, "v".repeat(MAX_ATTRIBUTE_BYTES))
                })
                .collect(),
            expected_size: Some(i64::MAX),
            sha256: Some("0".repeat(64)),
            crc32c: Some(u32::MAX),
            idempotency_key: Some("i".repeat(MAX_IDEMPOTENCY_KEY_BYTES)),
        }
    }

    /// Every valid request of the image service's calls other than
    /// `UploadImage` fits twice in the bound, so headroom is left.
    #[test]
    fn the_largest_valid_requests_fit_the_bound_twice() {
        let id = uuid::Uuid::now_v7().urn().to_string();
        let largest = [
            pb::StartUploadRequest {
                spec: Some(largest_spec()),
                expected_size: Some(i64::MAX),
            }
            .encoded_len(),
            pb::GetUploadUrlsRequest {
                upload_id: id.clone(),
                parts: Some(pb::get_upload_urls_request::Parts::PartSizes(
                    pb::PartSizes {
                        sizes: vec![i64::MAX; 10_000],
                    },
                )),
                expires_in: None,
            }
            .encoded_len(),
            pb::UpdateImageRequest {
                image_id: id.clone(),
                title: wide(MAX_TITLE_CHARS),
                description: wide(MAX_DESCRIPTION_CHARS),
                tags: (0..MAX_TAGS).map(|_| wide(MAX_TAG_CHARS)).collect(),
                location: wide(MAX_LOCATION_CHARS),
                update_mask: Some(prost_types::FieldMask {
                    paths: ["title", "description", "tags", "location"]
                        .map(Into::into)
                        .into(),
                }),
                etag: "e".repeat(64),
            }
            .encoded_len(),
            pb::BatchGetImagesRequest {
                image_ids: vec![id; crate::domain::ports::MAX_BATCH_GET],
                url_variant: "original".into(),
                ..Default::default()
            }
            .encoded_len(),
        ];
        for size in largest {
            assert!(2 * size as u64 <= MAX_CALL_REQUEST_BYTES, "{size} bytes");
        }
        // The first message of an upload is the same spec.
        assert!(
            pb::UploadImageRequest {
                data: Some(pb::upload_image_request::Data::Spec(largest_spec())),
                ..Default::default()
            }
            .encoded_len() as u64
                <= MAX_CALL_REQUEST_BYTES
        );
    }

    #[test]
    fn only_uploads_take_large_messages() {
        assert_eq!(largest_message(UPLOAD), MAX_MESSAGE_BYTES);
        assert_eq!(
            largest_message("/imageservice.v1.ImageService/ListImages"),
            MAX_CALL_REQUEST_BYTES
        );
        assert_eq!(
            largest_message("/grpc.health.v1.Health/Check"),
            MAX_OTHER_REQUEST_BYTES
        );
    }
}
