//! The service's own binary, run as an operator runs it: flags, the
//! environment, JSON log lines on stderr, SIGTERM to stop.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use image_service::testkit::service;

/// The binary on the embedded backend, serving on loopback; its log lines
/// are collected as they come. The test kit's service, started from this
/// test build's binary.
pub struct Service(service::Service);

impl std::ops::Deref for Service {
    type Target = service::Service;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Service {
    /// Starts the binary on the embedded backend with `env` added to its
    /// environment and waits until it says it is ready.
    pub fn start(env: &[(&str, String)]) -> Self {
        let binary = Path::new(env!("CARGO_BIN_EXE_image-service"));
        let (mut command, dir) =
            service::Service::command(binary, &["--log-format".into(), "json".into()]);
        command.envs(env.iter().map(|(k, v)| (k, v)));
        Self::spawn(command, dir)
    }

    /// Starts `command`, a service with `--log-format json` on loopback
    /// ports, and waits until it says it is ready; `dir` is kept until the
    /// service is gone.
    pub fn spawn(command: Command, dir: tempfile::TempDir) -> Self {
        Self(service::Service::spawn(command, dir))
    }

    /// [`Service::spawn`] at `RUST_LOG=filter`, and for a service that
    /// logs text lines too (whose `ready` is then null).
    pub fn spawn_logging(command: Command, dir: tempfile::TempDir, filter: &str) -> Self {
        Self(service::Service::spawn_logging(command, dir, filter))
    }

    /// Sends SIGTERM and waits up to 30 s for a clean exit; returns the
    /// log lines.
    pub async fn stop(self) -> Vec<String> {
        self.0.stop().await
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
