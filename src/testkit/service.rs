//! The service's own binary, run as an operator runs it: flags, the
//! environment, log lines on stderr, SIGTERM to stop. The binary's path is
//! the caller's (`env!("CARGO_BIN_EXE_image-service")` exists only in tests
//! and benchmarks).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::pb::image_service_client::ImageServiceClient;

/// A `RUST_LOG` filter that lets through warnings and the line saying
/// the service is ready, and nothing logged per request.
pub const QUIET: &str = "warn,image_service::startup=info";

/// A running service, killed when dropped; its log lines are collected as
/// they come.
pub struct Service {
    child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// The `image-service ready` line (null when it logs text lines).
    pub ready: serde_json::Value,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Service {
    /// `binary` set to serve on loopback ports the system picks, with a
    /// fresh data directory (unless `args` names one), and `args` after;
    /// the directory must be kept while the service runs.
    pub fn command(binary: &Path, args: &[String]) -> (Command, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut command = Command::new(binary);
        command.args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]);
        if !args.iter().any(|a| a == "--data-dir") {
            command.arg("--data-dir").arg(dir.path());
        }
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        (command, dir)
    }

    /// Runs `binary init` with `args`: the bucket and table of the aws
    /// backend the service is given.
    pub fn init(binary: &Path, args: &[String]) {
        let status = Command::new(binary)
            .args(args)
            .arg("init")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("image-service init runs");
        assert!(status.success(), "image-service init failed");
    }

    /// Starts `command`, a service with `--log-format json` on loopback
    /// ports, at `RUST_LOG=info`, and waits until it says it is ready;
    /// `dir` is kept until the service is gone.
    pub fn spawn(command: Command, dir: tempfile::TempDir) -> Self {
        let service = Self::spawn_logging(command, dir, "info");
        assert!(service.ready.is_object(), "JSON log lines");
        service
    }

    /// [`Service::spawn`] at `RUST_LOG=filter`, and for a service that
    /// logs text lines too (whose `ready` is then null).
    pub fn spawn_logging(mut command: Command, dir: tempfile::TempDir, filter: &str) -> Self {
        let mut child = command
            .env("RUST_LOG", filter)
            .stderr(Stdio::piped())
            .spawn()
            .expect("the service binary runs");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let Some(line) = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|line| line.contains("image-service ready"))
        else {
            let status = child.wait().ok();
            panic!("the service exited ({status:?}) without saying it is ready");
        };
        let ready = serde_json::from_str::<serde_json::Value>(&line).unwrap_or_default();
        let address = |name: &str| -> SocketAddr {
            let text = match ready["fields"][name].as_str() {
                Some(address) => address.to_owned(),
                None => line
                    .split_whitespace()
                    .find_map(|field| field.strip_prefix(&format!("{name}=")))
                    .unwrap_or_else(|| panic!("the ready line names the {name} address"))
                    .to_owned(),
            };
            text.parse().expect("an address")
        };
        let (grpc, http) = (address("grpc"), address("http"));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        Self {
            child,
            grpc,
            http,
            ready,
            logs,
            _dir: dir,
        }
    }

    /// A client on its own connection, with tonic's default settings.
    pub async fn client(&self) -> ImageServiceClient<Channel> {
        let channel = self.endpoint().connect().await.expect("connects");
        ImageServiceClient::new(channel)
    }

    /// A client on its own connection with flow-control windows that let
    /// large uploads run at full speed, and that takes messages up to
    /// 8 MiB.
    pub async fn wide_client(&self) -> ImageServiceClient<Channel> {
        let channel = self
            .endpoint()
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .connect()
            .await
            .expect("connects");
        ImageServiceClient::new(channel).max_decoding_message_size(8 << 20)
    }

    /// A client on its own connection whose flow-control windows hold
    /// 16 KiB: what it does not read stays with the service.
    pub async fn narrow_client(&self) -> ImageServiceClient<Channel> {
        let channel = self
            .endpoint()
            .initial_stream_window_size(Some(16 << 10))
            .initial_connection_window_size(Some(16 << 10))
            .connect()
            .await
            .expect("connects");
        ImageServiceClient::new(channel)
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::from_shared(format!("http://{}", self.grpc)).expect("uri")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log lines written since it was ready.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sends SIGTERM and waits up to 30 s for a clean exit, without
    /// blocking the runtime (which may serve what the service talks to
    /// while it stops). Returns the log lines.
    pub async fn stop(mut self) -> Vec<String> {
        // SAFETY: a signal to the child this process started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "exit status {status:?}");
                // The reader thread has seen the end of stderr by now, or
                // does within moments.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return self.logs();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the service did not stop within 30 s of SIGTERM");
    }

    /// User + system CPU time of the process so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        super::process::cpu_seconds(self.pid()).expect("the service runs")
    }

    /// Resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    /// Peak resident memory since start or [`Service::reset_peak`], in KiB.
    pub fn peak_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        super::process::status_kib(&self.pid().to_string(), field).expect("a memory figure")
    }

    /// Resets the peak resident memory to the current resident memory.
    pub fn reset_peak(&self) {
        super::process::reset_peak(&self.pid().to_string()).expect("clear_refs");
    }

    /// The sum of the `/metrics` series whose line starts with `name`.
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The `/metrics` page.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.http))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }
}

impl Drop for Service {
    /// A failed test or benchmark leaves no server behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
