//! Test harness: starts the real server on loopback ports chosen by the OS
//! and talks to it with the generated gRPC client.

pub use image_service::fixtures as images;
pub use image_service::testkit::{as_user, servers};
pub mod binary;
pub mod pki;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use image_service::config::Config;
use image_service::pb;
use image_service::pb::image_service_client::ImageServiceClient;
use image_service::startup::Application;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Upload limit of test servers: small, so the limit is quick to cross.
pub const TEST_MAX_IMAGE_BYTES: usize = 4 * 1024 * 1024;

/// A storage backend the suite runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    /// S3 and DynamoDB, against real compatible servers started per test.
    Aws,
}

/// A running server and a client connected to it.
pub struct TestApp {
    pub backend: Backend,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// `/metrics` apart, with `--metrics-addr`.
    pub metrics_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    client: ImageServiceClient<Channel>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
    /// The aws backend's S3 and DynamoDB servers, and the bucket.
    pub s3: Option<servers::ServerProcess>,
    pub dynamodb: Option<servers::ServerProcess>,
    pub bucket: String,
    /// The command line it was started with (the program's name first):
    /// another replica of it, or a command on its stores, takes the same.
    pub args: Vec<String>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, &[]).await
    }

    /// A server with extra command-line flags.
    pub async fn spawn_with(backend: Backend, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut app = Self::spawn_in(backend, dir.path(), extra).await;
        app._dir = Some(dir);
        app
    }

    /// A server on an existing data directory (to restart on the same data).
    pub async fn spawn_in(backend: Backend, data_dir: &Path, extra: &[&str]) -> Self {
        Self::spawn_on(backend, data_dir, extra, None).await
    }

    /// Another server instance on this one's stores, which takes them over:
    /// on the aws backend a second replica starts while this one still
    /// runs, then this one stops; the embedded backend allows one process
    /// per data directory, so this one stops first.
    pub async fn successor(mut self, extra: &[&str]) -> Self {
        match self.backend {
            Backend::Embedded => {
                self.stop().await.expect("the server stops");
                let mut next = Self::spawn_in(Backend::Embedded, &self.data_dir, extra).await;
                next._dir = self._dir.take();
                next
            }
            Backend::Aws => {
                let endpoints = [
                    self.s3.as_ref().expect("s3").endpoint(),
                    self.dynamodb.as_ref().expect("dynamodb").endpoint(),
                ];
                let mut next =
                    Self::spawn_on(Backend::Aws, &self.data_dir, extra, Some(endpoints)).await;
                self.stop().await.expect("the server stops");
                next.s3 = self.s3.take();
                next.dynamodb = self.dynamodb.take();
                next._dir = self._dir.take();
                next
            }
        }
    }

    /// Another replica on this one's stores, both serving (the aws
    /// backend: the embedded store allows one process per directory).
    pub async fn replica(&self, extra: &[&str]) -> Self {
        assert_eq!(
            self.backend,
            Backend::Aws,
            "replicas share the aws backend's stores"
        );
        let endpoints = [
            self.s3.as_ref().expect("s3").endpoint(),
            self.dynamodb.as_ref().expect("dynamodb").endpoint(),
        ];
        Self::spawn_on(Backend::Aws, &self.data_dir, extra, Some(endpoints)).await
    }

    /// The use cases over this server's stores, opened beside it as a
    /// command does (on the embedded backend, stop the server first).
    pub async fn images_beside(&self) -> image_service::domain::Images {
        let config = Config::try_parse_from(&self.args).expect("the server's configuration");
        image_service::backend::open_images(&config, None)
            .await
            .expect("the stores open")
            .images
    }

    /// This server's metadata store, opened beside it (on the embedded
    /// backend, stop the server first).
    pub async fn metadata_beside(
        &self,
    ) -> std::sync::Arc<dyn image_service::domain::ports::MetadataStore> {
        let config = Config::try_parse_from(&self.args).expect("the server's configuration");
        image_service::backend::open_stores(&config, config.storage.backend, None)
            .await
            .expect("the stores open")
            .metadata
    }

    async fn spawn_on(
        backend: Backend,
        data_dir: &Path,
        extra: &[&str],
        shared: Option<[String; 2]>,
    ) -> Self {
        if std::env::var_os("RUST_LOG").is_some() {
            image_service::telemetry::init(image_service::telemetry::LogFormat::Text);
        }
        let max = TEST_MAX_IMAGE_BYTES.to_string();
        let mut args = service_args(data_dir);
        if !extra.contains(&"--shutdown-timeout") {
            args.extend(["--shutdown-timeout", "5s"]);
        }
        // Encodings made after the acknowledgement change an image's record
        // once it is stored: only the tests of them ask for them.
        if !extra.contains(&"--variant-formats") {
            args.extend(["--variant-formats", "jpeg"]);
        }
        if !extra.contains(&"--max-image-bytes") {
            args.extend(["--max-image-bytes", &max]);
        }
        let (mut s3, mut dynamodb) = (None, None);
        let bucket = "images".to_owned();
        let endpoints;
        match backend {
            Backend::Embedded => args.extend(["--backend", "embedded"]),
            Backend::Aws => {
                endpoints = match shared {
                    Some(endpoints) => endpoints,
                    None => {
                        let (s3_server, dynamodb_server) =
                            (servers::start_s3(), servers::start_dynamodb());
                        let endpoints = [s3_server.endpoint(), dynamodb_server.endpoint()];
                        s3 = Some(s3_server);
                        dynamodb = Some(dynamodb_server);
                        endpoints
                    }
                };
                args.extend([
                    "--backend",
                    "aws",
                    "--s3-bucket",
                    &bucket,
                    "--dynamodb-table",
                    "images",
                ]);
                args.extend([
                    "--s3-endpoint",
                    &endpoints[0],
                    "--dynamodb-endpoint",
                    &endpoints[1],
                ]);
                args.extend(["--signing-key", "a-signing-key-for-tests-only-0123456789"]);
            }
        }
        args.extend_from_slice(extra);
        let command_line: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let config = Config::try_parse_from(args).expect("valid test configuration");
        if backend == Backend::Aws && s3.is_some() {
            image_service::commands::init_backend(&config)
                .await
                .expect("init creates the bucket and table");
        }
        let app = Application::build(config).await.expect("server starts");
        let (grpc_addr, http_addr, metrics_addr) =
            (app.grpc_addr(), app.http_addr(), app.metrics_addr());
        let (tx, rx) = oneshot::channel();
        let server = tokio::spawn(app.run_until_stopped(async {
            let _ = rx.await;
        }));
        // A TLS server is reached through the tests' own TLS channels.
        let channel = if extra.contains(&"--tls-cert") {
            Channel::from_shared(format!("http://{grpc_addr}"))
                .expect("valid uri")
                .connect_lazy()
        } else {
            connect(grpc_addr).await
        };
        let client = ImageServiceClient::new(channel).max_decoding_message_size(8 * 1024 * 1024);
        Self {
            backend,
            grpc_addr,
            http_addr,
            metrics_addr,
            data_dir: data_dir.to_owned(),
            client,
            shutdown: Some(tx),
            server: Some(server),
            _dir: None,
            s3,
            dynamodb,
            bucket,
            args: command_line,
        }
    }

    /// One repair pass over this server's stores, with no grace, from
    /// another process's point of view (the embedded backend's only after
    /// [`TestApp::stop`]: one process opens its data directory at a time).
    pub async fn repair_pass(&self, dry_run: bool) -> image_service::domain::repair::RepairReport {
        let config = Config::try_parse_from(&self.args).expect("valid test configuration");
        let opened = image_service::backend::open_images(&config, None)
            .await
            .expect("the stores open");
        opened
            .images
            .repair(Duration::ZERO, dry_run)
            .await
            .expect("the repair pass runs")
    }

    /// Asks the server to stop and waits until it has.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.server.take() {
            Some(server) => server.await?,
            None => Ok(()),
        }
    }

    pub fn client(&self) -> ImageServiceClient<Channel> {
        self.client.clone()
    }

    pub fn channel_addr(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// Uploads `bytes` in chunks of 64 KiB with `spec`, as `user`.
    pub async fn upload(
        &self,
        user: &str,
        spec: pb::ImageSpec,
        bytes: &[u8],
    ) -> Result<pb::Image, Status> {
        self.upload_messages(user, upload_messages(spec, bytes, 64 * 1024))
            .await
    }

    /// Sends exactly these messages as one upload stream.
    pub async fn upload_messages(
        &self,
        user: &str,
        messages: Vec<pb::UploadImageRequest>,
    ) -> Result<pb::Image, Status> {
        let request = as_user(user, tokio_stream::iter(messages));
        let response = self.client().upload_image(request).await?;
        Ok(response.into_inner().image.expect("an uploaded image"))
    }

    /// A fresh image of `user`'s, with a title; returns its metadata.
    pub async fn upload_png(&self, user: &str, seed: u32) -> pb::Image {
        let spec = pb::ImageSpec {
            filename: format!("img-{seed}.png"),
            ..Default::default()
        };
        self.upload(user, spec, &images::png(8, 8, seed))
            .await
            .expect("upload succeeds")
    }

    pub async fn get(&self, user: &str, image_id: &str) -> Result<pb::Image, Status> {
        let request = as_user(
            user,
            pb::GetImageRequest {
                image_id: image_id.into(),
            },
        );
        Ok(self
            .client()
            .get_image(request)
            .await?
            .into_inner()
            .image
            .expect("image"))
    }

    pub async fn list(
        &self,
        user: &str,
        request: pb::ListImagesRequest,
    ) -> Result<pb::ListImagesResponse, Status> {
        Ok(self
            .client()
            .list_images(as_user(user, request))
            .await?
            .into_inner())
    }

    /// What the server's `/metrics` shows now.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.http_addr))
            .await
            .expect("/metrics answers")
            .text()
            .await
            .expect("/metrics is text")
    }

    /// Every image the request matches, page by page.
    pub async fn list_all(
        &self,
        user: &str,
        mut request: pb::ListImagesRequest,
    ) -> Result<Vec<pb::Image>, Status> {
        let mut all = Vec::new();
        loop {
            let page = self.list(user, request.clone()).await?;
            all.extend(page.images);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            request.page_token = page.next_page_token;
        }
    }

    /// Downloads a range through `DownloadImage`; returns the first message
    /// and the bytes.
    pub async fn download_range(
        &self,
        user: &str,
        request: pb::DownloadImageRequest,
    ) -> Result<(pb::DownloadImageResponse, Vec<u8>), Status> {
        let mut stream = self
            .client()
            .download_image(as_user(user, request))
            .await?
            .into_inner();
        let first = stream.message().await?.expect("a first message");
        let mut bytes = Vec::new();
        while let Some(message) = stream.message().await? {
            assert!(message.image.is_none() && message.content_range.is_none());
            assert!(
                message.chunk.len() <= 1024 * 1024,
                "chunks are at most 1 MiB"
            );
            bytes.extend_from_slice(&message.chunk);
        }
        Ok((first, bytes))
    }

    pub async fn download(&self, user: &str, image_id: &str) -> Result<Vec<u8>, Status> {
        let request = pb::DownloadImageRequest {
            image_id: image_id.into(),
            ..Default::default()
        };
        Ok(self.download_range(user, request).await?.1)
    }

    pub async fn update(
        &self,
        user: &str,
        request: pb::UpdateImageRequest,
    ) -> Result<pb::Image, Status> {
        let response = self.client().update_image(as_user(user, request)).await?;
        Ok(response.into_inner().image.expect("image"))
    }

    pub async fn delete(&self, user: &str, image_id: &str) -> Result<(), Status> {
        let request = as_user(
            user,
            pb::DeleteImageRequest {
                image_id: image_id.into(),
            },
        );
        self.client().delete_image(request).await.map(|_| ())
    }

    pub async fn download_url(
        &self,
        user: &str,
        request: pb::GetDownloadUrlRequest,
    ) -> Result<String, Status> {
        Ok(self
            .client()
            .get_download_url(as_user(user, request))
            .await?
            .into_inner()
            .url)
    }

    /// Objects the backend holds, finished or partial. A rejected upload
    /// must leave this unchanged.
    pub async fn stored_objects(&self) -> Vec<String> {
        self.stored_objects_now()
    }

    /// [`TestApp::stored_objects`], for use where no await is possible.
    pub fn stored_objects_now(&self) -> Vec<String> {
        match self.backend {
            Backend::Embedded => {
                let mut found = files_under(&self.data_dir.join("blobs"));
                found.sort();
                found
            }
            Backend::Aws => {
                // Objects live under the bucket's directory; parts of
                // unfinished multipart uploads as `.upload*` files at the root.
                let data = self.s3.as_ref().expect("s3 server").dir.path().join("data");
                let mut found = files_under(&data.join(&self.bucket));
                let root = std::fs::read_dir(&data).into_iter().flatten().flatten();
                found.extend(
                    root.filter(|e| e.file_name().to_string_lossy().starts_with(".upload"))
                        .map(|e| e.path().display().to_string()),
                );
                found.sort();
                found
            }
        }
    }

    /// Waits up to five seconds for the backend to hold exactly `expected`
    /// objects (cleanup after a cancelled call runs in the background).
    pub async fn wait_for_stored_objects(&self, expected: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let objects = self.stored_objects().await;
            if objects.len() == expected || tokio::time::Instant::now() > deadline {
                return objects;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Nothing is stored at all (once background clean-ups have run), and
    /// `user` lists no image.
    pub async fn assert_nothing_stored(&self, user: &str) {
        let left = self.wait_for_stored_objects(0).await;
        assert!(left.is_empty(), "objects left behind: {left:?}");
        let listed = self
            .list_all(user, pb::ListImagesRequest::default())
            .await
            .unwrap();
        assert!(listed.is_empty(), "{user} still lists {listed:?}");
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Connects to a server that is already listening.
/// The service's command line on free local ports and `data_dir`.
fn service_args(data_dir: &Path) -> Vec<&str> {
    vec![
        "image-service",
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().expect("utf-8 path"),
    ]
}

/// What starting the service on a fresh data directory with `flags` says
/// when it refuses (at parsing or when it builds); `None` when it starts.
pub async fn start_refusal(flags: &[&str]) -> Option<String> {
    use clap::Parser;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = service_args(dir.path());
    args.extend(flags);
    let config = match image_service::config::Config::try_parse_from(args) {
        Ok(config) => config,
        Err(error) => return Some(error.to_string()),
    };
    image_service::startup::Application::build(config)
        .await
        .err()
        .map(|error| error.to_string())
}

pub async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect()
        .await
        .expect("connects to the test server")
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}

/// The messages of an upload: the spec, the chunks, `finish_write` on the last.
pub fn upload_messages(
    spec: pb::ImageSpec,
    bytes: &[u8],
    chunk_size: usize,
) -> Vec<pb::UploadImageRequest> {
    let bytes = bytes::Bytes::copy_from_slice(bytes);
    image_service::testkit::upload_messages(spec, bytes, chunk_size)
}

/// Asserts the status code, showing the message when it differs.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Ok(value) => panic!("expected {code:?}, got success: {value:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "unexpected status: {status:?}");
            status
        }
    }
}

/// A spec that names only the file.
pub fn spec(filename: &str) -> pb::ImageSpec {
    pb::ImageSpec {
        filename: filename.into(),
        ..Default::default()
    }
}

/// Interrupts (SIGINT, as Ctrl-C) a command that walks every image once
/// `ready` says it is part of the way through, and returns its output,
/// which must say it can be run again to go on.
pub async fn interrupt_when(
    mut child: tokio::process::Child,
    ready: impl Fn() -> bool,
) -> std::process::Output {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(tokio::time::Instant::now() < deadline, "no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the command ended before it could be interrupted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGINT) };
    let interrupted = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&interrupted.stderr);
    assert!(!interrupted.status.success(), "{stderr}");
    assert!(stderr.contains("run the same command again"), "{stderr}");
    interrupted
}

/// The standard output of a command that must have succeeded.
pub fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// The JSON printed by a command that must have succeeded.
pub fn json(output: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(&stdout(output)).expect("JSON output")
}

/// What exiftool reads in `bytes` written to a file named `name`
/// (`-json -a -G1`), or `None` where exiftool is not installed.
pub fn exiftool_tags(name: &str, bytes: &[u8]) -> Option<String> {
    let version = std::process::Command::new("exiftool").arg("-ver").output();
    if !version.is_ok_and(|o| o.status.success()) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let output = std::process::Command::new("exiftool")
        .args(["-json", "-a", "-G1"])
        .arg(&path)
        .output()
        .unwrap();
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// What Pillow, a decoder independent of the service's, makes of an
/// image's bytes, decoded whole: its format (`WEBP`, `JPEG`, `AVIF`), width,
/// height and mode (`RGB`, `RGBA`). `python3` is the tools' (scripts/tools.sh
/// installs Pillow there).
pub fn decoded_by_pillow(bytes: &[u8]) -> (String, u32, u32, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    const SCRIPT: &str = "import io, sys\n\
        from PIL import Image\n\
        image = Image.open(io.BytesIO(sys.stdin.buffer.read()))\n\
        image.load()\n\
        print(image.format, image.width, image.height, image.mode)\n";
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with Pillow (scripts/tools.sh installs it)");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().expect("python3 ran");
    writer
        .join()
        .expect("the writer ends")
        .expect("the bytes were sent");
    assert!(
        output.status.success(),
        "Pillow could not decode the bytes: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [format, width, height, mode] = fields[..] else {
        panic!("unexpected output from Pillow: {text}");
    };
    (
        format.to_owned(),
        width.parse().expect("a width"),
        height.parse().expect("a height"),
        mode.to_owned(),
    )
}
