//! Callers who do not read what they asked for: a raw HTTP/2 client opens
//! its calls with a flow-control window of 0, answers pings, and never
//! reads a byte. The responses and downloads it leaves waiting count
//! against the memory budget, one user holds at most its share of it, and
//! what is not read ends.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use image_service::pb;
use prost::Message;
use tonic::Code;
use tonic::codegen::http;

use crate::helpers::images;
use crate::helpers::{Backend, TestApp, spec};

const LIST: &str = "/imageservice.v1.ImageService/ListImages";
const DOWNLOAD: &str = "/imageservice.v1.ImageService/DownloadImage";

/// One connection of a caller that never reads: HTTP/2 answers its pings
/// (the connection task does), but its window for every response is 0.
struct NonReader {
    calls: h2::client::SendRequest<Bytes>,
    connection: tokio::task::JoinHandle<Result<(), h2::Error>>,
    /// The calls' streams, kept open (dropped, they would be reset).
    open: Vec<(http::Response<h2::RecvStream>, h2::SendStream<Bytes>)>,
}

impl NonReader {
    async fn connect(addr: SocketAddr) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (calls, connection) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake(tcp)
            .await
            .expect("an HTTP/2 connection");
        Self {
            calls,
            connection: tokio::spawn(connection),
            open: Vec::new(),
        }
    }

    /// Makes `count` calls of `path` as `user`, one after the other; their
    /// answers: the status of a refusal, or `None` for a response whose
    /// headers came and whose message waits, unread.
    async fn call(
        &mut self,
        path: &str,
        user: &str,
        message: &impl Message,
        count: usize,
    ) -> Vec<Option<(Code, String)>> {
        let encoded = message.encode_to_vec();
        let mut framed = vec![0];
        framed.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        framed.extend_from_slice(&encoded);
        let framed = Bytes::from(framed);
        let mut answers = Vec::new();
        for _ in 0..count {
            let request = http::Request::post(format!("http://localhost{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("x-user-id", user)
                .body(())
                .unwrap();
            let mut calls = self.calls.clone().ready().await.expect("room for a call");
            let (response, mut body) = calls.send_request(request, false).unwrap();
            // A refusal may come, and end the stream, before the message
            // is sent (the server answers at the headers): the send then
            // fails and the response below carries the refusal.
            let _ = body.send_data(framed.clone(), true);
            let response = tokio::time::timeout(Duration::from_secs(30), response)
                .await
                .expect("headers or a refusal")
                .expect("an HTTP/2 response");
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
            };
            answers.push(header("grpc-status").map(|code| {
                let code = Code::from(code.parse::<i32>().unwrap());
                let message = header("grpc-message").unwrap_or_default();
                (code, percent_decoded(&message))
            }));
            self.open.push((response, body));
        }
        answers
    }

    /// Whether the server closed the connection within `wait`.
    async fn closed_within(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, &mut self.connection)
            .await
            .is_ok()
    }
}

fn percent_decoded(text: &str) -> String {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(Ok(byte)) = text
                .get(i + 1..i + 3)
                .map(|hex| u8::from_str_radix(hex, 16))
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn refusals(answers: &[Option<(Code, String)>]) -> Vec<&(Code, String)> {
    answers.iter().flatten().collect()
}

/// Uploads `count` images of `owner`'s with the most metadata allowed
/// (about 70 KiB each in a listing).
async fn upload_fat_images(app: &TestApp, owner: &str, count: u32) {
    for n in 0..count {
        let spec = pb::ImageSpec {
            title: "t".repeat(200),
            description: "d".repeat(2200),
            tags: (0..30)
                .map(|j| format!("{j:02}{}", "g".repeat(62)))
                .collect(),
            attributes: (0..32)
                .map(|j| (format!("k{j:02}{}", "k".repeat(1021)), "v".repeat(1024)))
                .collect(),
            ..spec(&format!("fat-{n}.png"))
        };
        app.upload(owner, spec, &images::png(8, 8, n))
            .await
            .expect("a fat upload");
    }
}

fn fat_listing(owner: &str) -> pb::ListImagesRequest {
    pb::ListImagesRequest {
        owner_id: owner.into(),
        page_size: 1000,
        ..Default::default()
    }
}

/// A server with 8 MiB of memory budget, all of which one user may hold,
/// and `fatuser`'s 16 images with the most metadata (listed: over 1 MiB).
async fn fat_images_in_a_small_budget(extra: &[&str]) -> TestApp {
    let mut flags = vec![
        "--variants",
        "false",
        "--memory-budget",
        "8MiB",
        "--max-memory-per-user",
        "8MiB",
        "--memory-wait",
        "300ms",
    ];
    flags.extend_from_slice(extra);
    let app = TestApp::spawn_with(Backend::Embedded, &flags).await;
    upload_fat_images(&app, "fatuser", 16).await;
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_listings_hold_the_memory_budget_until_they_are_dropped() {
    let app = fat_images_in_a_small_budget(&[]).await;
    let size = app
        .list("alice", fat_listing("fatuser"))
        .await
        .unwrap()
        .encoded_len();
    assert!(size > 1024 * 1024, "a listing of {size} bytes");

    // Listings of more than 1 MiB each, never read: each reserves twice
    // --max-page-bytes while it is made, then its encoded size until it is
    // sent, so a few fit in the 8 MiB and the rest are refused.
    let mut mallory = NonReader::connect(app.grpc_addr).await;
    let answers = mallory
        .call(LIST, "mallory", &fat_listing("fatuser"), 12)
        .await;
    let refused = refusals(&answers);
    let held = answers.len() - refused.len();
    assert!((3..=6).contains(&held), "{held} of 12 unread listings held");
    for (code, message) in refused {
        assert_eq!(*code, Code::ResourceExhausted, "{message}");
        assert!(message.contains("--max-memory-per-user"), "{message}");
    }
    // What they hold is the budget's: too little is left for another
    // user's listing.
    let status = app
        .list("alice", fat_listing("fatuser"))
        .await
        .expect_err("the budget is held by unread listings");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("--memory-budget"), "{status:?}");

    // The caller goes away: what it held goes back.
    mallory.connection.abort();
    drop(mallory);
    let mut listed = None;
    for _ in 0..50 {
        listed = app.list("alice", fat_listing("fatuser")).await.ok();
        if listed.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(listed.is_some(), "the listings' memory was given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_unread_downloads_and_listings_leave_the_rest_of_the_budget_to_others() {
    // 32 MiB, of which one user holds at most a quarter (8 MiB): two
    // downloads of 3 MiB, and no listing (4 MiB while it is made) more.
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            "--variants",
            "false",
            "--memory-budget",
            "32MiB",
            "--max-memory-per-user",
            "8MiB",
            "--memory-wait",
            "500ms",
        ],
    )
    .await;
    let big = images::png_of_size(3 * 1024 * 1024 + 512 * 1024, 3);
    let image = app
        .upload("alice", spec("big.png"), &big)
        .await
        .expect("the large image");
    upload_fat_images(&app, "fatuser", 16).await;

    let download = pb::DownloadImageRequest {
        image_id: image.image_id.clone(),
        ..Default::default()
    };
    let mut mallory = NonReader::connect(app.grpc_addr).await;
    let mut other = NonReader::connect(app.grpc_addr).await;
    let mut answers = mallory.call(DOWNLOAD, "mallory", &download, 20).await;
    answers.extend(other.call(DOWNLOAD, "mallory", &download, 20).await);
    answers.extend(
        mallory
            .call(LIST, "mallory", &fat_listing("fatuser"), 10)
            .await,
    );
    let refused = refusals(&answers);
    let held = answers.len() - refused.len();
    assert_eq!(held, 2, "unread calls of one user let in");
    for (code, message) in refused {
        assert_eq!(*code, Code::ResourceExhausted, "{message}");
        assert!(message.contains("--max-memory-per-user"), "{message}");
    }

    // Meanwhile other users' uploads and downloads go through.
    for n in 0..3 {
        let uploaded = app
            .upload("victor", spec("mine.png"), &images::png_of_size(2 << 20, n))
            .await;
        assert!(uploaded.is_ok(), "victor's upload {n}: {uploaded:?}");
        let downloaded = app
            .download("victor", &image.image_id)
            .await
            .map(|bytes| bytes.len() as i64);
        assert!(
            matches!(downloaded, Ok(n) if n == image.size_bytes),
            "victor's download {n}: {downloaded:?}"
        );
        assert!(app.list("victor", fat_listing("fatuser")).await.is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_nobody_reads_ends_and_its_connection_is_closed_when_idle() {
    let app = fat_images_in_a_small_budget(&[
        "--download-stall-timeout",
        "1s",
        "--grpc-idle-timeout",
        "2s",
    ])
    .await;
    let image = app.upload_png("alice", 1).await;
    let download = pb::DownloadImageRequest {
        image_id: image.image_id,
        ..Default::default()
    };
    let mut mallory = NonReader::connect(app.grpc_addr).await;
    let mut answers = mallory
        .call(LIST, "mallory", &fat_listing("fatuser"), 3)
        .await;
    answers.extend(mallory.call(DOWNLOAD, "mallory", &download, 1).await);
    assert!(refusals(&answers).is_empty(), "{answers:?}");

    // Unread for the stall timeout, the listings and the download are
    // dropped: their memory goes back, and with no call left, the idle
    // timeout closes the connection.
    assert!(
        mallory.closed_within(Duration::from_secs(15)).await,
        "the connection of unread listings stays open"
    );
    let listed = app.list("alice", fat_listing("fatuser")).await;
    assert!(listed.is_ok(), "{listed:?}");
    let answers = NonReader::connect(app.grpc_addr)
        .await
        .call(LIST, "mallory", &fat_listing("fatuser"), 3)
        .await;
    assert!(
        refusals(&answers).is_empty(),
        "memory given back: {answers:?}"
    );
}

const REFLECTION: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";

/// A reflection request for the file of the image service, whose answer is
/// about 30 KiB.
fn reflection_request() -> tonic_reflection::pb::v1::ServerReflectionRequest {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "imageservice.v1.ImageService".into(),
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_reflection_streams_hold_their_memory_and_end_at_the_stall_timeout() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            "--variants",
            "false",
            "--grpc-reflection-memory",
            "2304KiB",
            "--download-stall-timeout",
            "5s",
        ],
    )
    .await;
    // Without identity, many connections, each opening streams it never
    // reads: a few per connection, and no more than the reflection pool
    // holds.
    let mut peers = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..6 {
        let mut peer = NonReader::connect(app.grpc_addr).await;
        let mine = peer
            .call(REFLECTION, "anyone", &reflection_request(), 6)
            .await;
        let per_connection = mine.iter().filter(|answer| answer.is_none()).count();
        assert!(
            per_connection <= 4,
            "{per_connection} streams on one connection"
        );
        answers.extend(mine);
        peers.push(peer);
    }
    let held = answers.iter().filter(|answer| answer.is_none()).count();
    // 2.25 MiB holds 5 streams of some 430 KiB (4 responses of the
    // descriptor set, 50 KiB with both services' files, and a stream window
    // of requests sent ahead).
    assert!(
        (4..=5).contains(&held),
        "{held} unread reflection streams held"
    );
    let refused = refusals(&answers);
    assert!(
        refused
            .iter()
            .any(|(_, message)| message.contains("reflection streams open")),
        "{refused:?}"
    );
    assert!(
        refused
            .iter()
            .any(|(_, message)| message.contains("--grpc-reflection-memory")),
        "{refused:?}"
    );
    for (code, message) in refused {
        assert_eq!(*code, Code::ResourceExhausted, "{message}");
    }

    // Unread for the stall timeout, they end: their memory and their
    // places on the connections go back, though the connections stay open.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let again = peers[0]
        .call(REFLECTION, "anyone", &reflection_request(), 4)
        .await;
    assert!(refusals(&again).is_empty(), "{again:?}");
    let mut other = NonReader::connect(app.grpc_addr).await;
    let others = other
        .call(REFLECTION, "anyone", &reflection_request(), 4)
        .await;
    // The pool's places beyond the four just taken again (one of some 430
    // KiB each: how many follows the descriptor set's size), and no more.
    assert_eq!(
        refusals(&others).len(),
        4 - (held - 4),
        "the pool was given back: {others:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_watch_that_is_read_but_quiet_is_not_cut() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let app = TestApp::spawn_with(Backend::Embedded, &["--download-stall-timeout", "1s"]).await;
    let mut health = HealthClient::new(crate::helpers::connect(app.grpc_addr).await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: pb::image_service_server::SERVICE_NAME.into(),
        })
        .await
        .expect("a watch")
        .into_inner();
    let first = watch.message().await.expect("a status").expect("a status");
    assert_eq!(first.status(), ServingStatus::Serving);
    // Nothing changes for three stall timeouts: the watch waits for news,
    // it is not a response left unread.
    let quiet = tokio::time::timeout(Duration::from_secs(3), watch.message()).await;
    assert!(quiet.is_err(), "the quiet watch ended: {quiet:?}");
}
