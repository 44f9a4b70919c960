//! How both listeners accept connections: a cap on the connections open at
//! once, a deadline for the TLS handshake and the first request bytes,
//! TCP_NODELAY, and TLS when configured. A connection is handed to the
//! gRPC or HTTP server only once it has shown it is a real client, so
//! half-open connections that never send anything hold a slot for at most
//! `--handshake-timeout`.
//!
//! More rules keep one caller from holding slots for good (see
//! [`Shedding`]). When every slot is taken and a new connection waits, the
//! connection idle for the longest (at least [`SHED_AFTER_IDLE`]) is closed
//! to make room; busy ones are never shed. On the HTTP listener idle means
//! it moved no byte (between requests, or stalled on a response), and a
//! write the peer does not take for `--http-stall-timeout` ends the
//! connection (a presigned download whose response is never read); on
//! HTTP/2, where a connection moves other streams' bytes, each response
//! body whose next piece is not taken for that long is dropped on its own
//! ([`crate::response_stall`]). On the
//! gRPC listener idle means no call in flight (counted by [`CountCalls`]):
//! an HTTP/2 connection that only answers pings holds nothing worth
//! keeping, while one carrying a long upload stream is never cut; such
//! connections are also closed after `--grpc-idle-timeout` without a call.
//! A cap per remote address (`--http-max-connections-per-peer`) keeps one
//! address from taking every slot.
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, watch};
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;

use crate::response_stall::{HeldMemory, OnStall, Watched};
use crate::tls::{self, Tls};

/// What a listener allows each connection.
#[derive(Clone)]
pub struct AcceptSettings {
    /// `grpc` or `http`, in logs and metrics.
    pub listener: &'static str,
    /// Connections open at once; at the cap a new connection waits for one
    /// to close or to be shed.
    pub max_connections: usize,
    /// Connections one remote address (an IPv4 address, an IPv6 /64) may
    /// have open at once, those in their handshake included; more are
    /// closed as soon as they are accepted. 0: no cap.
    pub max_per_peer: usize,
    /// For the TLS handshake and the first bytes of the first request.
    pub handshake_timeout: Duration,
    pub tls: Option<Arc<Tls>>,
    pub shedding: Shedding,
}

/// How a listener keeps slots for callers who use them.
#[derive(Clone, Copy, Debug)]
pub struct Shedding {
    /// What makes a connection idle, and so the first to be closed when
    /// every slot is taken and a new connection waits.
    pub idleness: Idleness,
    /// A write that the peer does not take for this long ends the
    /// connection.
    pub stall_timeout: Option<Duration>,
    /// A connection idle this long is closed even when slots are free.
    pub idle_timeout: Option<Duration>,
}

/// What makes a connection idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idleness {
    /// It moved no byte: an HTTP/1 connection between requests, or one
    /// whose caller does not read the response.
    NoBytes,
    /// No call in flight (HTTP/2 pings and settings are not calls); the
    /// server must count calls with [`CountCalls`].
    NoCalls,
}

/// A connection that moved no byte for at least this long may be closed
/// when every slot is taken and a new connection waits. Long enough that a
/// connection in the middle of a request (a client between two writes) is
/// not cut; short enough that a waiting client barely notices.
pub const SHED_AFTER_IDLE: Duration = Duration::from_secs(1);

/// How often a connection waiting for a slot looks again for one to shed.
const SHED_RETRY: Duration = Duration::from_millis(250);

/// How often a listener with an idle timeout looks for connections past it.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// What the server knows of the peer of a connection; a request extension
/// of every call (see [`tonic::transport::server::Connected`]).
#[derive(Clone, Debug, Default)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// The DNS and URI names of the client certificate, verified against
    /// `--tls-client-ca` (empty without mutual TLS).
    pub certificate_names: Arc<[String]>,
    /// The connection the call came on: [`CountCalls`] counts its calls in
    /// flight there.
    pub connection: Option<ConnectionHandle>,
}

/// A handle on an open connection, as calls see it.
#[derive(Clone)]
pub struct ConnectionHandle(Arc<ConnWatch>);

impl std::fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionHandle")
            .field("calls", &self.0.calls.load(Ordering::Relaxed))
            .finish()
    }
}

impl ConnectionHandle {
    /// Counts one more reflection stream on the connection until the slot
    /// is dropped; `None` when it already has `max` open.
    pub fn open_reflection(&self, max: u64) -> Option<ReflectionSlot> {
        let open = &self.0.reflection;
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()?;
        Some(ReflectionSlot(self.0.clone()))
    }
}

/// One reflection stream of a connection, counted until dropped.
pub struct ReflectionSlot(Arc<ConnWatch>);

impl Drop for ReflectionSlot {
    fn drop(&mut self) {
        self.0.reflection.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An accepted connection, ready to serve.
pub struct Conn {
    io: Io,
    /// The first bytes, read to see that the peer speaks at all; served
    /// again to the first reads.
    prefix: Bytes,
    peer: PeerInfo,
    listener: &'static str,
    /// Progress and the shed signal, shared with the listener's registry.
    watch: Arc<ConnWatch>,
    /// The listener's registry, and this connection's id in it.
    registered: (Arc<Registry>, u64),
    stall_timeout: Option<Duration>,
    /// Armed while a write waits for the peer to take bytes.
    stall: Option<Pin<Box<Sleep>>>,
    _slot: OwnedSemaphorePermit,
    _peer_slot: PeerSlot,
}

/// What the listener knows of an open connection: when it last moved a
/// byte, its calls in flight, and whether it has been told to close.
struct ConnWatch {
    idleness: Idleness,
    /// Milliseconds since [`epoch`] at the last byte read or written.
    last_progress: AtomicU64,
    /// Calls in flight (with [`Idleness::NoCalls`]).
    calls: AtomicU64,
    /// Reflection streams open (see [`ConnectionHandle::open_reflection`]).
    reflection: AtomicU64,
    /// Milliseconds since [`epoch`] at the start of the connection or the
    /// end of its last call.
    last_call: AtomicU64,
    shed: AtomicBool,
    read_waker: AtomicWaker,
    write_waker: AtomicWaker,
}

impl ConnWatch {
    fn new(idleness: Idleness) -> Self {
        let now = now_ms();
        Self {
            idleness,
            last_progress: AtomicU64::new(now),
            calls: AtomicU64::new(0),
            reflection: AtomicU64::new(0),
            last_call: AtomicU64::new(now),
            shed: AtomicBool::new(false),
            read_waker: AtomicWaker::new(),
            write_waker: AtomicWaker::new(),
        }
    }

    fn touch(&self) {
        self.last_progress.store(now_ms(), Ordering::Relaxed);
    }

    /// How long the connection has been idle; `None` while a call is in
    /// flight on a listener that counts calls.
    fn idle_for(&self, now: u64) -> Option<Duration> {
        let since = match self.idleness {
            Idleness::NoBytes => self.last_progress.load(Ordering::Relaxed),
            Idleness::NoCalls => {
                if self.calls.load(Ordering::Acquire) > 0 {
                    return None;
                }
                self.last_call.load(Ordering::Relaxed)
            }
        };
        Some(Duration::from_millis(now.saturating_sub(since)))
    }

    /// Tells the connection to close: its next read or write fails.
    fn shed(&self) {
        self.shed.store(true, Ordering::Release);
        self.read_waker.wake();
        self.write_waker.wake();
    }

    fn is_shed(&self) -> bool {
        self.shed.load(Ordering::Acquire)
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Counts a call in flight on its connection until dropped.
struct CallInFlight(Arc<ConnWatch>);

impl CallInFlight {
    fn start(connection: &ConnectionHandle) -> Self {
        connection.0.calls.fetch_add(1, Ordering::AcqRel);
        Self(connection.0.clone())
    }
}

impl Drop for CallInFlight {
    fn drop(&mut self) {
        self.0.last_call.store(now_ms(), Ordering::Relaxed);
        self.0.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The open connections of a listener, and how many each remote address
/// holds.
#[derive(Default)]
struct Registry {
    open: Mutex<HashMap<u64, Arc<ConnWatch>>>,
    next_id: AtomicU64,
    per_peer: Mutex<HashMap<IpAddr, usize>>,
}

/// One of a remote address's connections, counted until dropped.
struct PeerSlot {
    registry: Arc<Registry>,
    /// `None` on a listener without a per-address cap.
    peer: Option<IpAddr>,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let Some(peer) = self.peer else { return };
        let mut per_peer = self.registry.lock_peers();
        if let Some(count) = per_peer.get_mut(&peer) {
            *count -= 1;
            if *count == 0 {
                per_peer.remove(&peer);
            }
        }
    }
}

/// The address a per-address cap counts: an IPv4 address (also when
/// mapped into IPv6), or the /64 network of an IPv6 address, which one
/// host usually holds whole.
pub(crate) fn peer_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

impl Registry {
    fn add(&self, watch: Arc<ConnWatch>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, watch);
        id
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnWatch>>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_peers(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_peer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one more connection of `remote`; `None` when it already has
    /// `max_per_peer` (0: no cap).
    fn claim_peer(self: &Arc<Self>, remote: IpAddr, max_per_peer: usize) -> Option<PeerSlot> {
        if max_per_peer == 0 {
            return Some(PeerSlot {
                registry: self.clone(),
                peer: None,
            });
        }
        let peer = peer_key(remote);
        let mut per_peer = self.lock_peers();
        let count = per_peer.entry(peer).or_default();
        if *count >= max_per_peer {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            registry: self.clone(),
            peer: Some(peer),
        })
    }

    /// Closes the connection idle for the longest, if that is at least
    /// [`SHED_AFTER_IDLE`]; whether one was found.
    fn shed_one(&self) -> bool {
        let now = now_ms();
        let mut open = self.lock();
        let victim = open
            .iter()
            .filter_map(|(id, watch)| Some((*id, watch.idle_for(now)?)))
            .filter(|(_, idle)| *idle >= SHED_AFTER_IDLE)
            .max_by_key(|(_, idle)| *idle)
            .map(|(id, _)| id);
        match victim.and_then(|id| open.remove(&id)) {
            Some(watch) => {
                watch.shed();
                true
            }
            None => false,
        }
    }

    /// Closes every connection idle for at least `timeout`; how many.
    fn shed_idle(&self, timeout: Duration) -> usize {
        let now = now_ms();
        let mut open = self.lock();
        let idle: Vec<u64> = open
            .iter()
            .filter(|(_, watch)| watch.idle_for(now).is_some_and(|idle| idle >= timeout))
            .map(|(id, _)| *id)
            .collect();
        for id in &idle {
            if let Some(watch) = open.remove(id) {
                watch.shed();
            }
        }
        idle.len()
    }
}

/// Closes the connections of `registry` idle for `timeout`, until the
/// listener and its connections are gone.
fn close_idle_periodically(registry: Weak<Registry>, timeout: Duration, listener: &'static str) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(IDLE_CHECK.min(timeout));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(registry) = registry.upgrade() else {
                return;
            };
            let closed = registry.shed_idle(timeout);
            if closed > 0 {
                metrics::counter!("imageservice_connections_idle_closed_total", "listener" => listener)
                    .increment(closed as u64);
                tracing::debug!(
                    listener,
                    closed,
                    "closed connections idle for the idle timeout"
                );
            }
        }
    });
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Accepts connections on `listener` until `stop` turns true, and yields
/// each once it is ready.
pub fn incoming(
    listener: TcpListener,
    settings: AcceptSettings,
    stop: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<Conn>> {
    let (ready, receiver) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, settings, ready, stop));
    ReceiverStream::new(receiver)
}

async fn accept_loop(
    listener: TcpListener,
    settings: AcceptSettings,
    ready: mpsc::Sender<io::Result<Conn>>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    let registry = Arc::new(Registry::default());
    if let Some(timeout) = settings.shedding.idle_timeout {
        close_idle_periodically(Arc::downgrade(&registry), timeout, settings.listener);
    }
    loop {
        // The connection is taken first, so that one is shed only when
        // somebody is actually waiting.
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut stop) => return,
            () = ready.closed() => return,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, or a connection reset before it
                // was accepted: wait a little instead of spinning.
                tracing::warn!(listener = settings.listener, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(peer_slot) = registry.claim_peer(remote.ip(), settings.max_per_peer) else {
            metrics::counter!("imageservice_connections_refused_total", "listener" => settings.listener, "reason" => "per_peer")
                .increment(1);
            tracing::debug!(listener = settings.listener, %remote, "connection refused: its address holds its share of the connections");
            continue;
        };
        let slot = tokio::select! {
            slot = slot_shedding(&slots, &registry, settings.listener) => match slot {
                Some(slot) => slot,
                None => return,
            },
            () = stopped(&mut stop) => return,
            () = ready.closed() => return,
        };
        if let Err(error) = tcp.set_nodelay(true) {
            // Without it a response written in two parts (data, then
            // trailers) waits for the client's delayed ACK: 40 ms added
            // to every small call.
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        let settings = settings.clone();
        let ready = ready.clone();
        let registry = registry.clone();
        tokio::spawn(async move {
            let listener = settings.listener;
            match tokio::time::timeout(
                settings.handshake_timeout,
                prepare(tcp, remote, settings.tls.as_deref()),
            )
            .await
            {
                Ok(Ok(Some((io, prefix, peer)))) => {
                    metrics::gauge!("imageservice_open_connections", "listener" => listener)
                        .increment(1.0);
                    let conn = Conn::new(
                        io,
                        prefix,
                        peer,
                        listener,
                        (slot, peer_slot),
                        registry,
                        settings.shedding,
                    );
                    let _ = ready.send(Ok(conn)).await;
                }
                Ok(Ok(None)) => {}
                Ok(Err(error)) => {
                    metrics::counter!("imageservice_handshake_failures_total", "listener" => listener, "reason" => "error")
                        .increment(1);
                    tracing::debug!(listener, %remote, %error, "connection refused at handshake");
                }
                Err(_) => {
                    metrics::counter!("imageservice_handshake_failures_total", "listener" => listener, "reason" => "timeout")
                        .increment(1);
                    tracing::debug!(listener, %remote, "connection closed: no handshake in time");
                }
            }
        });
    }
}

/// A slot for a connection that is waiting: a free one, or one made free
/// by shedding the connection idle for the longest. `None` when the
/// listener is closing.
async fn slot_shedding(
    slots: &Arc<Semaphore>,
    registry: &Registry,
    listener: &'static str,
) -> Option<OwnedSemaphorePermit> {
    loop {
        match slots.clone().try_acquire_owned() {
            Ok(slot) => return Some(slot),
            Err(TryAcquireError::Closed) => return None,
            Err(TryAcquireError::NoPermits) => {}
        }
        if registry.shed_one() {
            metrics::counter!("imageservice_connections_shed_total", "listener" => listener)
                .increment(1);
            tracing::debug!(
                listener,
                "every connection slot taken: closed the one idle longest"
            );
        }
        tokio::select! {
            slot = slots.clone().acquire_owned() => return slot.ok(),
            () = tokio::time::sleep(SHED_RETRY) => {}
        }
    }
}

/// Completes when `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// The TLS handshake (if configured), then the first bytes the client
/// sends. `None` when the peer closed without sending anything.
async fn prepare(
    tcp: TcpStream,
    remote: SocketAddr,
    tls: Option<&Tls>,
) -> io::Result<Option<(Io, Bytes, PeerInfo)>> {
    let mut peer = PeerInfo {
        remote: Some(remote),
        ..PeerInfo::default()
    };
    let mut io = match tls {
        None => Io::Plain(tcp),
        Some(tls) => {
            let stream = tls.acceptor().accept(tcp).await?;
            if let Some(certificate) = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
            {
                peer.certificate_names = tls::peer_names(certificate).into();
            }
            Io::Tls(Box::new(stream))
        }
    };
    let mut first = vec![0; 4096];
    let n = match &mut io {
        Io::Plain(stream) => stream.read(&mut first).await?,
        Io::Tls(stream) => stream.read(&mut first).await?,
    };
    if n == 0 {
        return Ok(None);
    }
    first.truncate(n);
    Ok(Some((io, Bytes::from(first), peer)))
}

impl Conn {
    fn new(
        io: Io,
        prefix: Bytes,
        mut peer: PeerInfo,
        listener: &'static str,
        (slot, peer_slot): (OwnedSemaphorePermit, PeerSlot),
        registry: Arc<Registry>,
        shedding: Shedding,
    ) -> Self {
        let watch = Arc::new(ConnWatch::new(shedding.idleness));
        peer.connection = Some(ConnectionHandle(watch.clone()));
        let id = registry.add(watch.clone());
        Self {
            io,
            prefix,
            peer,
            listener,
            watch,
            registered: (registry, id),
            stall_timeout: shedding.stall_timeout,
            stall: None,
            _slot: slot,
            _peer_slot: peer_slot,
        }
    }

    fn shed_error() -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "closed to make room: every connection slot was taken and this one was idle",
        )
    }

    /// A write is waiting for the peer: arms the stall timer, and fails
    /// the write once the peer has taken nothing for the stall timeout.
    fn poll_stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let Some(timeout) = self.stall_timeout else {
            return Poll::Pending;
        };
        let timer = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                metrics::counter!("imageservice_connections_stalled_total", "listener" => self.listener)
                    .increment(1);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer took no bytes for the stall timeout",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// After a write or flush: progress disarms the stall timer; waiting
    /// arms it.
    fn after_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => self.poll_stall(cx),
            ready => {
                self.stall = None;
                self.watch.touch();
                ready
            }
        }
    }

    /// Registers for the shed signal; `Err` when the connection was shed.
    fn check_shed(&self, waker: &AtomicWaker, cx: &Context<'_>) -> io::Result<()> {
        waker.register(cx.waker());
        if self.watch.is_shed() {
            return Err(Self::shed_error());
        }
        Ok(())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let (registry, id) = &self.registered;
        registry.remove(*id);
        metrics::gauge!("imageservice_open_connections", "listener" => self.listener)
            .decrement(1.0);
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

/// A layer on the gRPC server that counts each connection's calls in
/// flight, so that [`Idleness::NoCalls`] sheds only connections without
/// one. A call counts from the moment its request has arrived whole (its
/// end of stream) until its response body (a stream's last message and
/// trailers) has been sent or dropped: a call whose caller sends the
/// headers and never the message is not work, and keeps nothing busy (it
/// is closed with its connection, when shed or at `--grpc-idle-timeout`).
/// Calls whose request is a stream ([`STREAMING_REQUESTS`]) count from
/// their start, as their request rightly takes long; their own pacing ends
/// one that sends nothing. Streams that wait for news rather than work
/// ([`WAITING_CALLS`]) are not counted: any peer may open them, for as
/// long as it likes, at no cost.
#[derive(Clone, Copy, Debug, Default)]
pub struct CountCalls;

/// Methods (or method prefixes) whose calls do not keep a connection busy:
/// the health service's `Watch`, open until the client ends it, and the
/// reflection streams, which grpcurl holds only while it resolves names.
/// Anyone may open these without identity, so they must not keep a
/// connection from being shed or closed when idle; what a reflection
/// stream holds is reserved and capped per connection instead (see
/// [`crate::grpc::response_memory`]).
const WAITING_CALLS: &[&str] = &[
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Methods whose request is a stream of messages (client streaming): an
/// upload counts as in flight from its start, while its bytes arrive.
const STREAMING_REQUESTS: &[&str] = &["/imageservice.v1.ImageService/UploadImage"];

impl<S> tower_layer::Layer<S> for CountCalls {
    type Service = CountedCalls<S>;

    fn layer(&self, inner: S) -> CountedCalls<S> {
        CountedCalls { inner }
    }
}

/// See [`CountCalls`].
#[derive(Clone, Debug)]
pub struct CountedCalls<S> {
    inner: S,
}

type Request<B> = tonic::codegen::http::Request<B>;
type Response<B> = tonic::codegen::http::Response<B>;

impl<S, ResBody> tower_service::Service<Request<tonic::body::Body>> for CountedCalls<S>
where
    S: tower_service::Service<Request<tonic::body::Body>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        let path = request.uri().path();
        let waits = WAITING_CALLS.iter().any(|method| path.starts_with(method));
        let streams = STREAMING_REQUESTS.contains(&path);
        let call = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|peer| peer.connection.clone())
            .filter(|_| !waits)
            .map(|connection| CallEnds(Arc::new(CallSlot::new(connection))));
        let request = match &call {
            Some(CallEnds(slot)) if !streams && !http_body::Body::is_end_stream(request.body()) => {
                let slot = slot.clone();
                request.map(|body| tonic::body::Body::new(RequestBody { body, slot }))
            }
            Some(CallEnds(slot)) => {
                slot.start();
                request
            }
            None => request,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| CountedBody { body, _call: call }))
        })
    }
}

/// The count of one call, shared by its request body (which starts it
/// once the request has arrived whole) and its response (which ends it).
struct CallSlot {
    connection: ConnectionHandle,
    state: Mutex<CallState>,
}

enum CallState {
    /// The request is still arriving.
    Waiting,
    /// The request has arrived whole; the response is not done.
    Counting { _call: CallInFlight },
    /// The response is done, or the call was dropped before it.
    Done,
}

impl CallSlot {
    fn new(connection: ConnectionHandle) -> Self {
        Self {
            connection,
            state: Mutex::new(CallState::Waiting),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CallState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The request has arrived whole: the call counts, unless it is over.
    fn start(&self) {
        let mut state = self.lock();
        if matches!(*state, CallState::Waiting) {
            *state = CallState::Counting {
                _call: CallInFlight::start(&self.connection),
            };
        }
    }

    fn end(&self) {
        let ended = std::mem::replace(&mut *self.lock(), CallState::Done);
        drop(ended);
    }
}

/// Ends the count of its call when dropped: with the response body, or
/// with the call's future if it never got to a response.
struct CallEnds(Arc<CallSlot>);

impl Drop for CallEnds {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A request body that starts its call's count when it reaches its end.
struct RequestBody {
    body: tonic::body::Body,
    slot: Arc<CallSlot>,
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.body.is_end_stream(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => false,
        };
        if ended {
            this.slot.start();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A response body that keeps its call counted until it is done.
pub struct CountedBody<B> {
    body: B,
    _call: Option<CallEnds>,
}

impl<B: http_body::Body + Unpin> http_body::Body for CountedBody<B> {
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

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check_shed(&this.watch.read_waker, cx)?;
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = match &mut this.io {
            Io::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        };
        if buf.filled().len() > before {
            this.watch.touch();
        }
        polled
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_shed(&this.watch.write_waker, cx)?;
        let polled = match &mut this.io {
            Io::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        };
        this.after_write(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check_shed(&this.watch.write_waker, cx)?;
        let polled = match &mut this.io {
            Io::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        };
        this.after_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(stream) => stream.is_write_vectored(),
            Io::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check_shed(&this.watch.write_waker, cx)?;
        let polled = match &mut this.io {
            Io::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        };
        this.after_write(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = match &mut this.io {
            Io::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        };
        this.after_write(cx, polled)
    }
}

/// Serves HTTP/1 and HTTP/2 on the connections of `incoming` until `stop`
/// turns true, then lets open requests finish. A client must send a
/// request's headers within `header_timeout`; an HTTP/2 connection has at
/// most `max_streams` requests open at once.
pub async fn serve_http(
    mut incoming: ReceiverStream<io::Result<Conn>>,
    router: axum::Router,
    header_timeout: Duration,
    max_streams: u32,
    mut stop: watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    // Without it hyper allows 200 streams per connection: one connection
    // could hold that many request bodies (and their files) at once.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(max_streams.max(1));
    loop {
        let conn = tokio::select! {
            conn = incoming.next() => match conn {
                Some(Ok(conn)) => conn,
                Some(Err(_)) => continue,
                None => break,
            },
            () = stopped(&mut stop) => break,
        };
        // Every response's body is watched: one its peer does not take for
        // the stall timeout is dropped, even on an HTTP/2 connection that
        // moves other bytes.
        let service = TowerToHyperService::new(WatchResponses {
            router: router.clone(),
            stall_timeout: conn.stall_timeout.unwrap_or(UNWATCHED_STALL),
            peer: conn.peer.clone(),
        });
        let connection = builder
            .serve_connection(TokioIo::new(conn), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}

/// The stall timeout of a listener configured without one.
const UNWATCHED_STALL: Duration = Duration::from_secs(24 * 3600);

/// The HTTP listener's routes, each response's body watched by
/// [`Watched`], holding its [`HeldMemory`] if it has one; each request
/// carries its connection's [`PeerInfo`] as an extension.
#[derive(Clone)]
struct WatchResponses {
    router: axum::Router,
    stall_timeout: Duration,
    peer: PeerInfo,
}

impl<B> tower_service::Service<Request<B>> for WatchResponses
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Watched<axum::body::Body>>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::<Request<B>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        request.extensions_mut().insert(self.peer.clone());
        let response = self.router.call(request);
        let stall_timeout = self.stall_timeout;
        Box::pin(async move {
            let mut response = response.await?;
            let memory = HeldMemory::take_from(&mut response);
            Ok(response
                .map(|body| Watched::new(body, memory, stall_timeout, OnStall::Reset, "http")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_counts_as_itself_and_an_ipv6_host_as_its_network() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(peer_key(v4), v4);
        assert_eq!(peer_key(mapped), v4);
        let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(peer_key(one), peer_key(other));
        assert_ne!(peer_key(one), peer_key(elsewhere));
    }

    #[test]
    fn an_address_holds_at_most_its_share_until_it_closes_one() {
        let registry = Arc::new(Registry::default());
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let first = registry.claim_peer(ip, 2).expect("a first connection");
        let _second = registry.claim_peer(ip, 2).expect("a second connection");
        assert!(registry.claim_peer(ip, 2).is_none());
        assert!(
            registry
                .claim_peer("192.0.2.8".parse().unwrap(), 2)
                .is_some()
        );
        drop(first);
        assert!(registry.claim_peer(ip, 2).is_some());
    }

    #[test]
    fn a_connection_with_a_call_in_flight_is_never_idle() {
        let watch = Arc::new(ConnWatch::new(Idleness::NoCalls));
        let handle = ConnectionHandle(watch.clone());
        let later = now_ms() + 5_000;
        assert!(watch.idle_for(later).unwrap() >= Duration::from_secs(4));
        let call = CallInFlight::start(&handle);
        assert_eq!(watch.idle_for(later), None);
        drop(call);
        assert!(watch.idle_for(later).unwrap() >= Duration::from_secs(4));
    }

    #[test]
    fn a_call_counts_once_its_request_has_arrived_and_not_after_its_end() {
        let watch = Arc::new(ConnWatch::new(Idleness::NoCalls));
        let later = now_ms() + 5_000;
        let slot = Arc::new(CallSlot::new(ConnectionHandle(watch.clone())));
        let call = CallEnds(slot.clone());
        assert!(
            watch.idle_for(later).is_some(),
            "counted before its request"
        );
        slot.start();
        assert_eq!(watch.idle_for(later), None);
        drop(call);
        assert!(watch.idle_for(later).is_some());
        // A request that ends after its call was dropped starts nothing.
        slot.start();
        assert!(watch.idle_for(later).is_some());
    }

    #[test]
    fn the_upload_is_the_method_whose_request_streams() {
        let service = crate::pb::image_service_server::SERVICE_NAME;
        assert_eq!(STREAMING_REQUESTS, [format!("/{service}/UploadImage")]);
    }
}
