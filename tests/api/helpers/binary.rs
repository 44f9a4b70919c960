//! The service's own binary, run as an operator runs it: flags, the
//! environment, JSON log lines on stderr, SIGTERM to stop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use image_service::pb::image_service_client::ImageServiceClient;

use super::connect;

/// The binary on the embedded backend, serving on loopback; its log lines
/// are collected as they come.
pub struct Service {
    child: Child,
    pub grpc: SocketAddr,
    /// The `image-service ready` line.
    pub ready: serde_json::Value,
    logs: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Service {
    /// Starts the binary on the embedded backend with `env` added to its
    /// environment and waits until it says it is ready.
    pub fn start(env: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_image-service"));
        command
            .args([
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .envs(env.iter().map(|(k, v)| (k, v)));
        Self::spawn(command, dir)
    }

    /// Starts `command`, a service with `--log-format json` on loopback
    /// ports, and waits until it says it is ready; `dir` is kept until the
    /// service is gone.
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
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let line = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|line| line.contains("image-service ready"))
            .expect("the service starts");
        let (ready, grpc) = match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(ready) => {
                let grpc = ready["fields"]["grpc"].as_str().unwrap().parse().unwrap();
                (ready, grpc)
            }
            Err(_) => {
                let grpc = line
                    .split_whitespace()
                    .find_map(|field| field.strip_prefix("grpc="))
                    .expect("the ready line names the gRPC address");
                (serde_json::Value::Null, grpc.parse().unwrap())
            }
        };
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            grpc,
            ready,
            logs,
            _dir: dir,
        }
    }

    pub async fn client(&self) -> ImageServiceClient<tonic::transport::Channel> {
        ImageServiceClient::new(connect(self.grpc).await)
    }

    /// The log lines written since it was ready.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits up to 30 s for a clean exit, without
    /// blocking the test's runtime (which may serve what the service talks
    /// to while it stops). Returns the log lines.
    pub async fn stop(mut self) -> Vec<String> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
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
}

impl Drop for Service {
    /// A failed test leaves no server behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to serve with `args` and `env` added (on loopback
/// ports and a fresh data directory, nothing else from the environment
/// that configures it), expecting it to refuse to start: it must exit
/// non-zero within ten seconds. Returns what it wrote to stderr.
pub fn refused_start(args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_image-service"));
    for (name, _) in std::env::vars() {
        if name.starts_with("IMAGE_SERVICE_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("started with {args:?} {env:?} instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        !status.success(),
        "{args:?} {env:?}: exited successfully; stderr: {stderr}"
    );
    stderr
}
