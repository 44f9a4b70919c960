//! The HTTP listener against callers who hold connections: responses that
//! are never read, bodies that trickle, every slot taken, and one address
//! opening connection after connection. Also `/metrics` on an address of
//! its own.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::helpers::{Backend, TestApp, as_user, images, spec};
use image_service::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tonic::codegen::http;

/// A connection that asks for `path` and then reads nothing: a receive
/// buffer of a few KiB, so the server's writes stall soon.
async fn unread_get(addr: SocketAddr, path: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    stream
}

/// The path and query of a URL the HTTP listener serves.
fn path_of(url: &str) -> String {
    let rest = url.split_once("://").expect("an absolute URL").1;
    rest[rest.find('/').expect("a path")..].to_owned()
}

/// A large image of alice's, and the URL of its presigned download.
async fn large_download(app: &TestApp) -> (String, usize) {
    let big = images::png_of_size(6 * 1024 * 1024, 11);
    (download_of(app, &big).await, big.len())
}

/// The URL of a presigned download of `png`, uploaded as alice's.
async fn download_of(app: &TestApp, png: &[u8]) -> String {
    let image = app.upload("alice", spec("image.png"), png).await.unwrap();
    app.download_url(
        "alice",
        pb::GetDownloadUrlRequest {
            image_id: image.image_id,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_that_are_never_read_do_not_lock_other_callers_out() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &["--max-connections", "4", "--max-image-bytes", "8MiB"],
    )
    .await;
    let (url, size) = large_download(&app).await;
    // More connections than slots, each holding a response it never reads.
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(unread_get(app.http_addr, &path_of(&url)).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(20), async {
        reqwest::get(&url).await?.error_for_status()?.bytes().await
    })
    .await
    .expect("a caller gets a slot while stalled connections hold every one")
    .expect("the download succeeds");
    assert_eq!(body.len(), size);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited {:?}",
        started.elapsed()
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_that_is_never_read_ends_its_connection() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &["--http-stall-timeout", "1s", "--max-image-bytes", "8MiB"],
    )
    .await;
    let (url, size) = large_download(&app).await;
    let mut stalled = unread_get(app.http_addr, &path_of(&url)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Reading now gets what sat in the buffers, then the end: the server
    // gave up on this response instead of holding it for good.
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut received))
        .await
        .expect("the connection ends");
    assert!(
        read.is_err() || received.len() < size,
        "the whole response ({} bytes) was still being held",
        received.len()
    );
    // Others are served as before.
    let body = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    assert_eq!(body.len(), size);
}

/// `count` presigned part upload URLs of a new session of alice's.
async fn part_urls(app: &TestApp, count: i32) -> Vec<String> {
    part_urls_of(app, "alice", count).await
}

/// `count` presigned part upload URLs of a new session of `user`'s.
async fn part_urls_of(app: &TestApp, user: &str, count: i32) -> Vec<String> {
    let session = app
        .client()
        .start_upload(as_user(
            user,
            pb::StartUploadRequest {
                spec: Some(spec("slow.png")),
                expected_size: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .session
        .expect("a session");
    app.client()
        .get_upload_urls(as_user(
            user,
            pb::GetUploadUrlsRequest {
                upload_id: session.upload_id,
                parts: Some(pb::get_upload_urls_request::Parts::PartCount(count)),
                expires_in: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .urls
}

/// A connection from `source` that starts a `PUT` of `url`'s part with a
/// large body.
async fn start_put(addr: SocketAddr, source: IpAddr, url: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(
            format!(
                "PUT {} HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\n",
                path_of(url)
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    stream
}

/// Sends `stream`'s body a few bytes every 200 ms (never idle for long,
/// never done) until the server answers or closes, or `within` passes;
/// what the server answered, if anything.
async fn trickle(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut answer = vec![0u8; 512];
    let (mut reader, mut writer) = stream.split();
    let send = async {
        loop {
            if writer.write_all(&[b'x'; 16]).await.is_err() {
                // Closed: wait for the answer the reader may still get.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let n = tokio::time::timeout(within, async {
        tokio::select! {
            read = reader.read(&mut answer) => read.unwrap_or(0),
            () = send => unreachable!(),
        }
    })
    .await
    .ok()?;
    Some(String::from_utf8_lossy(&answer[..n]).into_owned())
}

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// A second address of this machine (all of 127/8 is loopback), to connect
/// from as another caller.
const OTHER_LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_upload_body_is_cut_at_the_body_timeout() {
    let app = TestApp::spawn_with(Backend::Embedded, &["--http-body-timeout", "2s"]).await;
    let url = part_urls(&app, 1).await.remove(0);
    let mut stream = start_put(app.http_addr, LOCALHOST, &url).await;
    let started = Instant::now();
    let answer = trickle(&mut stream, Duration::from_secs(14))
        .await
        .expect("the server answers");
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "after {:?}: {answer:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_bodies_are_cut_at_the_minimum_rate_and_others_get_through() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            "--max-connections",
            "4",
            "--http-min-body-rate",
            "500",
            "--http-min-body-rate-grace",
            "2s",
        ],
    )
    .await;
    let download = download_of(&app, &images::png(8, 8, 5)).await;
    // Every slot holds a body trickling at 80 bytes/s, and as soon as one
    // ends its caller starts another.
    let urls = part_urls(&app, 4).await;
    let http_addr = app.http_addr;
    let tricklers: Vec<_> = urls
        .into_iter()
        .map(|url| {
            tokio::spawn(async move {
                let mut answers = Vec::new();
                loop {
                    let mut stream = start_put(http_addr, LOCALHOST, &url).await;
                    let started = Instant::now();
                    let answer = trickle(&mut stream, Duration::from_secs(60)).await;
                    answers.push((answer, started.elapsed()));
                    if answers.len() == 3 {
                        return answers;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(15), async {
        reqwest::get(&download)
            .await?
            .error_for_status()?
            .bytes()
            .await
    })
    .await
    .expect("a download gets a slot while trickled bodies hold every one")
    .expect("the download succeeds");
    assert!(!body.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "waited {:?}",
        started.elapsed()
    );
    // The first body of each trickler was cut with 408 once the grace
    // had passed.
    for trickler in tricklers {
        let answers = tokio::time::timeout(Duration::from_secs(60), trickler)
            .await
            .expect("the trickled bodies are cut")
            .unwrap();
        let (answer, after) = &answers[0];
        let answer = answer.as_deref().unwrap_or("nothing");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        assert!(
            *after >= Duration::from_secs(2) && *after < Duration::from_secs(8),
            "cut after {after:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            "--max-connections",
            "4",
            "--http-max-connections-per-peer",
            "2",
        ],
    )
    .await;
    let download = download_of(&app, &images::png(8, 8, 6)).await;
    // One address opens a busy connection for every slot: only its share
    // is kept, the rest are closed unanswered.
    let urls = part_urls(&app, 4).await;
    let mut streams = Vec::new();
    for url in &urls {
        streams.push(start_put(app.http_addr, LOCALHOST, url).await);
    }
    let outcomes = futures::future::join_all(
        streams
            .iter_mut()
            .map(|stream| trickle(stream, Duration::from_secs(4))),
    )
    .await;
    let closed = outcomes
        .iter()
        .filter(|outcome| outcome.as_deref() == Some(""))
        .count();
    let still_sending = outcomes.iter().filter(|outcome| outcome.is_none()).count();
    assert_eq!((closed, still_sending), (2, 2), "{outcomes:?}");
    // Another address gets a slot at once.
    let other = reqwest::Client::builder()
        .local_address(OTHER_LOCALHOST)
        .build()
        .unwrap();
    let body = tokio::time::timeout(Duration::from_secs(5), async {
        other
            .get(&download)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await
    })
    .await
    .expect("another address gets a slot while one address holds its share")
    .expect("the download succeeds");
    assert!(!body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_have_an_address_of_their_own() {
    let app = TestApp::spawn_with(Backend::Embedded, &["--metrics-addr", "127.0.0.1:0"]).await;
    app.upload_png("alice", 1).await;
    let metrics_addr = app.metrics_addr.expect("a metrics listener");
    let metrics = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap();
    assert!(metrics.status().is_success());
    assert!(metrics.text().await.unwrap().contains("imageservice_"));
    let public = reqwest::get(format!("http://{}/metrics", app.http_addr))
        .await
        .unwrap();
    assert_eq!(public.status(), reqwest::StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_after_a_fast_start_is_cut_within_a_window() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            "--http-min-body-rate",
            "1000",
            "--http-min-body-rate-grace",
            "2s",
        ],
    )
    .await;
    let url = part_urls(&app, 1).await.remove(0);
    let mut stream = TcpStream::connect(app.http_addr).await.unwrap();
    stream
        .write_all(
            format!(
                "PUT {} HTTP/1.1\r\nHost: test\r\nContent-Length: 1000000\r\n\r\n",
                path_of(&url)
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // 600 kB at once: on average from the start, enough for ten minutes
    // at 1000 bytes/s.
    stream.write_all(&vec![b'x'; 600_000]).await.unwrap();
    let started = Instant::now();
    let answer = trickle(&mut stream, Duration::from_secs(10))
        .await
        .expect("the server answers within a few windows");
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "after {:?}: {answer:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut after {:?}",
        started.elapsed()
    );
}

/// The partial files of bodies being received.
fn bodies_arriving(app: &TestApp) -> usize {
    std::fs::read_dir(app.data_dir.join("blobs/.partial"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_http2_connection_carries_only_so_many_bodies_at_once() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &["--http-max-streams-per-connection", "2"],
    )
    .await;
    let urls = part_urls(&app, 6).await;
    // One connection (HTTP/2 without TLS, as the listener accepts it),
    // six bodies that start and never end.
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let puts: Vec<_> = urls
        .into_iter()
        .map(|url| {
            let client = client.clone();
            tokio::spawn(async move {
                let first = futures::stream::once(async {
                    Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 10_000]))
                });
                let body = futures::StreamExt::chain(first, futures::stream::pending());
                client
                    .put(url)
                    .header("content-length", "100000")
                    .body(reqwest::Body::wrap_stream(body))
                    .send()
                    .await
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut most = 0;
    while Instant::now() < deadline {
        most = most.max(bodies_arriving(&app));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(most, 2, "bodies received at once over one connection");
    for put in puts {
        put.abort();
    }
}

/// A `PUT` of `url`'s part whose body has started (1000 of its 100 000
/// bytes sent) and goes on no further unless the caller sends more.
async fn started_body(addr: SocketAddr, url: &str) -> TcpStream {
    let mut stream = start_put(addr, LOCALHOST, url).await;
    stream.write_all(&[b'x'; 1000]).await.unwrap();
    stream
}

/// A `PUT` of a small body to `url`, as a plain HTTP client sends it.
async fn put_small(url: &str) -> reqwest::Response {
    reqwest::Client::new()
        .put(url)
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap()
}

/// Waits until `count` part bodies are being received.
async fn until_bodies_arriving(app: &TestApp, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while bodies_arriving(app) != count {
        assert!(
            Instant::now() < deadline,
            "{} bodies arriving, not {count}",
            bodies_arriving(app)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `url` a small part again and again, each refused with 503,
/// until one is accepted; fails if none is within `within`.
async fn until_accepted(url: &str, within: Duration) {
    let started = Instant::now();
    loop {
        let status = put_small(url).await.status();
        if status.is_success() {
            return;
        }
        assert_eq!(status.as_u16(), 503);
        assert!(
            started.elapsed() < within,
            "no slot freed within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_on_part_bodies_a_part_upload_is_told_to_retry() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &["--http-max-concurrent-part-uploads", "2"],
    )
    .await;
    let urls = part_urls(&app, 3).await;
    let mut held = Vec::new();
    for url in &urls[..2] {
        held.push(started_body(app.http_addr, url).await);
    }
    until_bodies_arriving(&app, 2).await;
    let refused = put_small(&urls[2]).await;
    assert_eq!(refused.status().as_u16(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    // A slot frees when a body ends.
    drop(held.pop());
    until_accepted(&urls[2], Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_take_every_part_upload_slot() {
    // The replica receives as many bodies at once as four users may send.
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            "--http-max-concurrent-part-uploads",
            "8",
            "--http-max-part-uploads-per-user",
            "2",
        ],
    )
    .await;
    let alices = part_urls(&app, 4).await;
    let alices_other_session = part_urls(&app, 1).await;
    let bobs = part_urls_of(&app, "bob", 1).await;
    // Two slow bodies of alice's, faster than the minimum rate, never done.
    let mut held = Vec::new();
    for url in &alices[..2] {
        held.push(started_body(app.http_addr, url).await);
    }
    until_bodies_arriving(&app, 2).await;
    // Any more of hers, in this session or another, are told to retry
    // while the replica has room.
    for url in [&alices[2], &alices[3], &alices_other_session[0]] {
        let refused = put_small(url).await;
        assert_eq!(refused.status().as_u16(), 503, "{url}");
        assert!(refused.headers().contains_key("retry-after"));
    }
    assert_eq!(bodies_arriving(&app), 2, "refused bodies hold no file");
    // Another user's part goes through.
    assert!(put_small(&bobs[0]).await.status().is_success());
    // Hers too once one of her bodies ends.
    drop(held.pop());
    until_accepted(&alices[2], Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_whose_body_has_not_started_hold_no_part_upload_slot() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &["--http-max-concurrent-part-uploads", "2"],
    )
    .await;
    let urls = part_urls(&app, 4).await;
    // More requests than the replica has slots, each sending its headers
    // and no byte of its body.
    let mut held = Vec::new();
    for url in &urls[..3] {
        held.push(start_put(app.http_addr, OTHER_LOCALHOST, url).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(bodies_arriving(&app), 0, "a body not started holds no file");
    let status = put_small(&urls[3]).await.status();
    assert!(status.is_success(), "{status}");
    // They were not refused either: each may still send its body.
    for stream in &mut held {
        let mut answer = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut answer)).await;
        assert!(read.is_err(), "answered before its body");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_cut_gives_its_slot_back_at_once() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            "--http-max-part-uploads-per-user",
            "1",
            "--http-min-body-rate-grace",
            "3s",
        ],
    )
    .await;
    let urls = part_urls(&app, 2).await;
    // A body that starts, then stops: cut at the minimum rate.
    let mut stalled = started_body(app.http_addr, &urls[0]).await;
    until_bodies_arriving(&app, 1).await;
    assert_eq!(put_small(&urls[1]).await.status().as_u16(), 503);
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut answer))
        .await
        .expect("the stalled body is cut")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    // Its slot was given back before the answer was sent.
    assert!(put_small(&urls[1]).await.status().is_success());

    // A body whose caller goes away.
    let gone = started_body(app.http_addr, &urls[0]).await;
    until_bodies_arriving(&app, 1).await;
    drop(gone);
    until_accepted(&urls[1], Duration::from_secs(1)).await;
}

/// Files under `dir` this process has open (the server runs in it).
fn open_files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let dir = std::fs::canonicalize(dir).unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.starts_with(&dir))
        .collect()
}

/// An HTTP/2 connection (prior knowledge, as the listener accepts it
/// without TLS) whose streams open with a window of `window` bytes.
async fn h2_client(
    addr: SocketAddr,
    window: u32,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    h2_client_from(IpAddr::V4(Ipv4Addr::LOCALHOST), addr, window).await
}

/// [`h2_client`], connecting from `source`.
async fn h2_client_from(
    source: IpAddr,
    addr: SocketAddr,
    window: u32,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake(tcp)
        .await
        .expect("an HTTP/2 connection");
    (client, tokio::spawn(connection))
}

/// Asks for `path` on `client`; the response's headers.
async fn h2_get(
    client: &h2::client::SendRequest<bytes::Bytes>,
    path: &str,
) -> http::Response<h2::RecvStream> {
    let request = http::Request::get(format!("http://test{path}"))
        .body(())
        .unwrap();
    let mut client = client.clone().ready().await.expect("room for a request");
    let (response, _) = client.send_request(request, true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("the response's headers")
        .expect("an HTTP/2 response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_download_over_http2_ends_at_the_stall_timeout_and_closes_its_file() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            "--http-stall-timeout",
            "1s",
            "--max-image-bytes",
            "8MiB",
            // No renders writing files of their own.
            "--variants",
            "false",
        ],
    )
    .await;
    let (url, _) = large_download(&app).await;
    let blobs = app.data_dir.join("blobs");
    // Streams opened with a window of 0 on a live connection, never read.
    let (client, connection) = h2_client(app.http_addr, 0).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let response = h2_get(&client, &path_of(&url)).await;
        assert_eq!(response.status(), 200);
        held.push(response);
    }
    assert!(
        open_files_under(&blobs).len() >= 4,
        "the downloads' files are open"
    );
    // Not read for the stall timeout, each download is dropped and its file
    // closed, while the connection stays open.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !open_files_under(&blobs).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open = open_files_under(&blobs);
    assert!(open.is_empty(), "files of unread downloads: {open:?}");
    assert!(!connection.is_finished(), "the connection was closed");
    // The connection still serves.
    let response = h2_get(&client, "/metrics").await;
    assert_eq!(response.status(), 200);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_http2_reader_gets_the_whole_download() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &["--http-stall-timeout", "1s", "--max-image-bytes", "8MiB"],
    )
    .await;
    let png = images::png_of_size(512 * 1024, 5);
    let url = download_of(&app, &png).await;
    let (client, _connection) = h2_client(app.http_addr, 64 * 1024).await;
    let response = h2_get(&client, &path_of(&url)).await;
    assert_eq!(response.status(), 200);
    // 64 KiB at a time, a pause of half the stall timeout after each: the
    // whole takes several stall timeouts, yet the peer always takes what
    // it is offered in time.
    let mut body = response.into_body();
    let mut received = Vec::new();
    let started = Instant::now();
    let mut since_pause = 0;
    while let Some(data) = body.data().await {
        let data = data.expect("the download goes on");
        received.extend_from_slice(&data);
        since_pause += data.len();
        if since_pause >= 64 * 1024 {
            since_pause = 0;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        body.flow_control().release_capacity(data.len()).unwrap();
    }
    assert_eq!(received, png);
    assert!(
        started.elapsed() > Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// Opens `count` downloads of `path` on `client`, never read: those
/// answered 200, and how many were refused with 503 and `Retry-After`.
async fn unread_downloads(
    client: &h2::client::SendRequest<bytes::Bytes>,
    path: &str,
    count: usize,
) -> (Vec<http::Response<h2::RecvStream>>, usize) {
    let (mut held, mut refused) = (Vec::new(), 0);
    for _ in 0..count {
        let response = h2_get(client, path).await;
        match response.status() {
            http::StatusCode::OK => held.push(response),
            http::StatusCode::SERVICE_UNAVAILABLE => {
                assert!(
                    response.headers().contains_key(http::header::RETRY_AFTER),
                    "a refusal without Retry-After"
                );
                refused += 1;
            }
            other => panic!("{other}"),
        }
    }
    (held, refused)
}

/// The refusal a download of `url` from this address gets now.
async fn refusal_of(url: &str) -> String {
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_downloads_of_a_users_image_do_not_lock_its_owner_out() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            "--memory-budget",
            "16MiB",
            "--max-memory-per-user",
            "2MiB",
            "--memory-wait",
            "300ms",
            // 16 downloads of 512 KiB read-ahead each: half the budget.
            "--http-max-downloads",
            "16",
            // No renders: the budget is the downloads' and the owner's.
            "--variants",
            "false",
        ],
    )
    .await;
    // Anyone holding the URL of alice's image opens download after
    // download and reads none: each reads ahead 512 KiB, so four of them
    // would fill alice's share if it were charged for them.
    let url = download_of(&app, &images::png_of_size(600 * 1024, 12)).await;
    let mut clients = Vec::new();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..4 {
        let (client, connection) = h2_client(app.http_addr, 0).await;
        let (more_held, more_refused) = unread_downloads(&client, &path_of(&url), 16).await;
        held.extend(more_held);
        refused += more_refused;
        clients.push((client, connection));
    }
    assert_eq!(held.len(), 16, "the replica's --http-max-downloads");
    assert_eq!(refused, 48);
    let refusal = refusal_of(&url).await;
    assert!(
        refusal.contains("(--http-max-downloads)"),
        "the refusal names the flag: {refusal}"
    );
    // Each download holds one open file: the cap bounds them.
    let open = open_files_under(&app.data_dir.join("blobs")).len();
    assert!(open <= 16, "{open} files open for 16 downloads");
    // The owner, who has no call open, uploads and lists as before.
    let image = app
        .upload("alice", spec("mine.png"), &images::png(64, 64, 3))
        .await
        .expect("alice's upload while downloads of her image stay unread");
    assert_eq!(image.owner_id, "alice");
    let listed = app
        .list("alice", pb::ListImagesRequest::default())
        .await
        .expect("alice's listing while downloads of her image stay unread");
    assert_eq!(listed.images.len(), 2);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_download_slot() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &["--http-max-downloads-per-peer", "3", "--variants", "false"],
    )
    .await;
    let url = download_of(&app, &images::png_of_size(600 * 1024, 13)).await;
    let path = path_of(&url);
    let (client, _connection) = h2_client(app.http_addr, 0).await;
    let (held, refused) = unread_downloads(&client, &path, 5).await;
    assert_eq!((held.len(), refused), (3, 2));
    let refusal = refusal_of(&url).await;
    assert!(
        refusal.contains("--http-max-downloads-per-peer"),
        "the refusal names the flag: {refusal}"
    );
    // Another address is served meanwhile.
    let (other, _other_connection) =
        h2_client_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), app.http_addr, 0).await;
    let (other_held, other_refused) = unread_downloads(&other, &path, 1).await;
    assert_eq!((other_held.len(), other_refused), (1, 0));
    // Once its downloads end, the address is served again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = reqwest::get(&url).await.unwrap();
        if response.status() == 200 {
            assert_eq!(
                response.bytes().await.unwrap().len(),
                images::png_of_size(600 * 1024, 13).len()
            );
            break;
        }
        assert_eq!(response.status(), 503);
        assert!(Instant::now() < deadline, "no slot came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
