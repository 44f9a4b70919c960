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
    pub fn spawn(mut command: Command, dir: tempfile::TempDir) -> Self {
        let mut child = command
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|line| line.contains("image-service ready"))
            .expect("the service starts");
        let ready: serde_json::Value = serde_json::from_str(&ready).expect("JSON log lines");
        let grpc = ready["fields"]["grpc"].as_str().unwrap().parse().unwrap();
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
