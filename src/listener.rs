//! How both listeners accept connections: a cap on the connections open at
//! once, a deadline for the TLS handshake and the first request bytes,
//! TCP_NODELAY, and TLS when configured. A connection is handed to the
//! gRPC or HTTP server only once it has shown it is a real client, so
//! half-open connections that never send anything hold a slot for at most
//! `--handshake-timeout`.
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
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
}

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
    _slot: OwnedSemaphorePermit,
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
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
            () = stopped(&mut stop) => return,
            () = ready.closed() => return,
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
        if let Err(error) = tcp.set_nodelay(true) {
            // Without it a response written in two parts (data, then
            // trailers) waits for the client's delayed ACK: 40 ms added
            // to every small call.
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        let settings = settings.clone();
        let ready = ready.clone();
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
                    let conn = Conn {
                        io,
                        prefix,
                        peer,
                        listener,
                        _slot: slot,
                    };
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

impl Drop for Conn {
    fn drop(&mut self) {
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
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        match &mut this.io {
            Io::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(stream) => stream.is_write_vectored(),
            Io::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
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
