//! How both listeners accept connections: a cap on the connections open at
//! once, a deadline for the TLS handshake and the first request bytes,
//! TCP_NODELAY, and TLS when configured. A connection is handed to the
//! gRPC or HTTP server only once it has shown it is a real client, so
//! half-open connections that never send anything hold a slot for at most
//! `--handshake-timeout`.
//!
//! On the HTTP listener two more rules keep one caller from holding slots
//! for good (see [`Shedding`]): a write the peer does not take for
//! `--http-stall-timeout` ends the connection (a presigned download whose
//! response is never read), and when every slot is taken and a new
//! connection waits, the connection that has moved no byte for the longest
//! (at least [`SHED_AFTER_IDLE`]) is closed to make room: idle and stalled
//! connections go first, busy ones are never shed.
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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

use crate::tls::{self, Tls};

/// What a listener allows each connection.
#[derive(Clone)]
pub struct AcceptSettings {
    /// `grpc` or `http`, in logs and metrics.
    pub listener: &'static str,
    /// Connections open at once; the next accept waits for one to close.
    pub max_connections: usize,
    /// For the TLS handshake and the first bytes of the first request.
    pub handshake_timeout: Duration,
    pub tls: Option<Arc<Tls>>,
    /// Stall timeout and shedding at the cap (the HTTP listener); `None`:
    /// a connection at the cap waits for one to close (the gRPC listener,
    /// whose HTTP/2 keepalive pings reap dead peers and whose calls have
    /// deadlines of their own).
    pub shedding: Option<Shedding>,
}

/// How the HTTP listener keeps slots for callers who use them.
#[derive(Clone, Copy, Debug)]
pub struct Shedding {
    /// A write that the peer does not take for this long ends the
    /// connection.
    pub stall_timeout: Duration,
}

/// A connection that moved no byte for at least this long may be closed
/// when every slot is taken and a new connection waits. Long enough that a
/// connection in the middle of a request (a client between two writes) is
/// not cut; short enough that a waiting client barely notices.
pub const SHED_AFTER_IDLE: Duration = Duration::from_secs(1);

/// How often a connection waiting for a slot looks again for one to shed.
const SHED_RETRY: Duration = Duration::from_millis(250);

/// What the server knows of the peer of a connection; a request extension
/// of every call (see [`tonic::transport::server::Connected`]).
#[derive(Clone, Debug, Default)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// The DNS and URI names of the client certificate, verified against
    /// `--tls-client-ca` (empty without mutual TLS).
    pub certificate_names: Arc<[String]>,
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
    /// The registry of a listener that sheds, and this connection's id in it.
    registered: Option<(Arc<Registry>, u64)>,
    stall_timeout: Option<Duration>,
    /// Armed while a write waits for the peer to take bytes.
    stall: Option<Pin<Box<Sleep>>>,
    _slot: OwnedSemaphorePermit,
}

/// What the listener knows of an open connection: when it last moved a
/// byte, and whether it has been told to close.
#[derive(Default)]
struct ConnWatch {
    /// Milliseconds since [`epoch`] at the last byte read or written.
    last_progress: AtomicU64,
    shed: AtomicBool,
    read_waker: AtomicWaker,
    write_waker: AtomicWaker,
}

impl ConnWatch {
    fn touch(&self) {
        self.last_progress.store(now_ms(), Ordering::Relaxed);
    }

    fn idle_for(&self, now: u64) -> Duration {
        Duration::from_millis(now.saturating_sub(self.last_progress.load(Ordering::Relaxed)))
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

/// The open connections of a listener that sheds.
#[derive(Default)]
struct Registry {
    open: Mutex<HashMap<u64, Arc<ConnWatch>>>,
    next_id: AtomicU64,
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

    /// Closes the connection that moved no byte for the longest, if that
    /// is at least [`SHED_AFTER_IDLE`]; whether one was found.
    fn shed_one(&self) -> bool {
        let now = now_ms();
        let mut open = self.lock();
        let victim = open
            .iter()
            .map(|(id, watch)| (*id, watch.idle_for(now)))
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
    let registry = settings.shedding.map(|_| Arc::new(Registry::default()));
    loop {
        // Without shedding, a connection over the cap waits in the kernel's
        // backlog; with it, the connection is taken first so that one is
        // shed only when somebody is actually waiting.
        let early_slot = match &registry {
            None => tokio::select! {
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => Some(slot),
                    Err(_) => return,
                },
                () = stopped(&mut stop) => return,
                () = ready.closed() => return,
            },
            Some(_) => None,
        };
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
        let slot = match (early_slot, &registry) {
            (Some(slot), _) => slot,
            (None, Some(registry)) => {
                tokio::select! {
                    slot = slot_shedding(&slots, registry, settings.listener) => match slot {
                        Some(slot) => slot,
                        None => return,
                    },
                    () = stopped(&mut stop) => return,
                    () = ready.closed() => return,
                }
            }
            (None, None) => unreachable!("a listener without shedding takes its slot first"),
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
                        slot,
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
        certificate_names: Arc::new([]),
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
        peer: PeerInfo,
        listener: &'static str,
        slot: OwnedSemaphorePermit,
        registry: Option<Arc<Registry>>,
        shedding: Option<Shedding>,
    ) -> Self {
        let watch = Arc::new(ConnWatch::default());
        watch.touch();
        let registered = registry.map(|registry| {
            let id = registry.add(watch.clone());
            (registry, id)
        });
        Self {
            io,
            prefix,
            peer,
            listener,
            watch,
            registered,
            stall_timeout: shedding.map(|shedding| shedding.stall_timeout),
            stall: None,
            _slot: slot,
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
        if self.registered.is_none() {
            return Ok(());
        }
        waker.register(cx.waker());
        if self.watch.is_shed() {
            return Err(Self::shed_error());
        }
        Ok(())
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some((registry, id)) = &self.registered {
            registry.remove(*id);
        }
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
/// request's headers within `header_timeout`.
pub async fn serve_http(
    mut incoming: ReceiverStream<io::Result<Conn>>,
    router: axum::Router,
    header_timeout: Duration,
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
    builder.http2().timer(TokioTimer::new());
    loop {
        let conn = tokio::select! {
            conn = incoming.next() => match conn {
                Some(Ok(conn)) => conn,
                Some(Err(_)) => continue,
                None => break,
            },
            () = stopped(&mut stop) => break,
        };
        let service = TowerToHyperService::new(router.clone());
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
