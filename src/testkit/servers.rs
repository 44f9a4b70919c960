//! Real S3- and DynamoDB-compatible servers for the aws backend's tests and
//! the benchmarks: s3s-fs and dynalite, installed by `scripts/test` into
//! `.tools/`, started fresh for each test on free loopback ports and killed
//! with it.
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Credentials the test S3 server checks (SigV4); the service gets them
/// from the standard AWS chain, which `scripts/test` sets up.
pub const ACCESS_KEY: &str = "test-access-key";
pub const SECRET_KEY: &str = "test-secret-key";

/// A server process, killed when dropped.
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    name: &'static str,
}

impl ServerProcess {
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the server (as a crash would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The grpcurl binary scripts/test installs.
pub fn grpcurl() -> PathBuf {
    require(tools_dir().join("venv/bin/grpcurl"), "grpcurl")
}

/// Where `scripts/tools.sh` installs the tools: `$TOOLS_DIR`, or `.tools/`.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Panics with what to do when the environment lacks the test servers'
/// tools or credentials: the aws tests never skip.
fn require(path: PathBuf, what: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{what} is not installed at {}: run scripts/test (it installs the test servers into .tools/)",
        path.display()
    );
    assert_eq!(
        std::env::var("AWS_ACCESS_KEY_ID").as_deref(),
        Ok(ACCESS_KEY),
        "the aws tests need AWS_ACCESS_KEY_ID={ACCESS_KEY} and AWS_SECRET_ACCESS_KEY={SECRET_KEY}: run them through scripts/test"
    );
    path
}

fn spawn(
    name: &'static str,
    mut command: Command,
    dir: tempfile::TempDir,
    port: u16,
) -> ServerProcess {
    let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
    command
        .stdout(Stdio::from(log.try_clone().expect("log")))
        .stderr(Stdio::from(log));
    // Die with the test even if it is killed before it can clean up.
    // SAFETY: prctl is async-signal-safe, as a pre_exec hook must be.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut server = ServerProcess {
        child,
        addr,
        dir,
        name,
    };
    server.wait_until_listening();
    server
}

impl ServerProcess {
    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log =
                    std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
                panic!("{} exited with {status}:\n{log}", self.name);
            }
            assert!(
                Instant::now() < deadline,
                "{} did not start listening on {}",
                self.name,
                self.addr
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// The command that runs s3s-fs on `port` over `data`.
pub fn s3_command(port: u16, data: &std::path::Path) -> Command {
    let binary = require(tools_dir().join("bin/s3s-fs"), "s3s-fs");
    let mut command = Command::new(binary);
    command
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(data);
    command
}

/// An S3-compatible server with an empty data directory (`dir/data`).
pub fn start_s3() -> ServerProcess {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let port = free_port();
    spawn("s3s-fs", s3_command(port, &data), dir, port)
}

/// The command that runs dynalite on `port`, keeping its tables in `data`.
fn dynamodb_command(port: u16, data: &std::path::Path) -> Command {
    let cli = require(tools_dir().join("node_modules/dynalite/cli.js"), "dynalite");
    let mut command = Command::new("node");
    command
        .arg(cli)
        .args(["--port", &port.to_string()])
        .arg("--path")
        .arg(data);
    command
}

/// A DynamoDB-compatible server with its tables on disk (`dir/data`), so
/// that it can be killed and restarted with its data.
pub fn start_dynamodb() -> ServerProcess {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    spawn(
        "dynalite",
        dynamodb_command(port, &dir.path().join("data")),
        dir,
        port,
    )
}

impl ServerProcess {
    /// Starts a killed server again on the same port and data.
    pub fn restart(&mut self) {
        let data = self.dir.path().join("data");
        let command = match self.name {
            "dynalite" => dynamodb_command(self.addr.port(), &data),
            _ => s3_command(self.addr.port(), &data),
        };
        let log = std::fs::File::create(self.dir.path().join("server.log")).expect("log file");
        let mut command = command;
        command
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log));
        self.child = command
            .spawn()
            .unwrap_or_else(|e| panic!("restarting {}: {e}", self.name));
        self.wait_until_listening();
    }
}

/// A TCP proxy in front of a server whose connections can all be dropped
/// at once, as a lost mobile network drops them: both sockets close, with
/// no HTTP/2 goodbye from the client. [`CutProxy::tampering`] also changes
/// bytes on their way to the server, as a faulty link would.
pub struct CutProxy {
    pub addr: SocketAddr,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
    /// How many times the tampering proxy replaced its pattern.
    pub tampered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Bytes a tampering proxy replaces, and their replacement (as long).
type Tamper = std::sync::Arc<(Vec<u8>, Vec<u8>)>;

impl CutProxy {
    pub async fn start(target: SocketAddr) -> Self {
        Self::with(target, None).await
    }

    /// A proxy that replaces every `from` the client sends with `to`.
    pub async fn tampering(target: SocketAddr, from: &[u8], to: &[u8]) -> Self {
        assert_eq!(from.len(), to.len(), "framing stays intact");
        Self::with(
            target,
            Some(std::sync::Arc::new((from.to_vec(), to.to_vec()))),
        )
        .await
    }

    async fn with(target: SocketAddr, tamper: Option<Tamper>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a proxy port");
        let addr = listener.local_addr().expect("the proxy's address");
        let links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            Default::default();
        let tampered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (accepted, count) = (links.clone(), tampered.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let (tamper, count) = (tamper.clone(), count.clone());
                let link = tokio::spawn(async move {
                    match tamper {
                        None => {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                        Some(tamper) => {
                            let (mut from_client, mut to_client) = inbound.split();
                            let (mut from_server, mut to_server) = outbound.split();
                            let upstream =
                                copy_tampering(&mut from_client, &mut to_server, &tamper, &count);
                            let downstream = tokio::io::copy(&mut from_server, &mut to_client);
                            let _ = tokio::join!(upstream, downstream);
                        }
                    }
                });
                accepted
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(link);
            }
        });
        Self {
            addr,
            links,
            accept,
            tampered,
        }
    }

    /// Drops every connection made through the proxy so far.
    pub fn cut(&self) {
        for link in self
            .links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            link.abort();
        }
    }
}

/// Copies `reader` to `writer`, replacing the tamper's pattern. Bytes at
/// the end of a read that could begin the pattern are held back for the
/// next read (for a moment at most), so a pattern split across reads is
/// still found.
async fn copy_tampering(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    tamper: &(Vec<u8>, Vec<u8>),
    count: &std::sync::atomic::AtomicUsize,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (from, to) = tamper;
    let mut pending: Vec<u8> = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = reader.read(&mut buffer);
        let n = if pending.is_empty() {
            read.await?
        } else {
            match tokio::time::timeout(Duration::from_millis(20), read).await {
                Ok(n) => n?,
                Err(_quiet) => {
                    writer.write_all(&pending).await?;
                    pending.clear();
                    continue;
                }
            }
        };
        pending.extend_from_slice(&buffer[..n]);
        let mut at = 0;
        while let Some(found) = pending[at..]
            .windows(from.len())
            .position(|w| w == from.as_slice())
        {
            let start = at + found;
            pending[start..start + from.len()].copy_from_slice(to);
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            at = start + from.len();
        }
        let keep = if n == 0 {
            0
        } else {
            (1..from.len().min(pending.len() - at + 1))
                .rev()
                .find(|&k| pending.ends_with(&from[..k]))
                .unwrap_or(0)
        };
        let ready = pending.len() - keep;
        writer.write_all(&pending[..ready]).await?;
        pending.drain(..ready);
        if n == 0 {
            return writer.shutdown().await;
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
