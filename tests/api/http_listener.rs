//! The HTTP listener against callers who hold connections: responses that
//! are never read, bodies that trickle, and every slot taken. Also
//! `/metrics` on an address of its own.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::helpers::{Backend, TestApp, as_user, images, spec};
use image_service::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

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

/// A large image of alice's, and the path of its presigned download.
async fn large_download(app: &TestApp) -> (String, usize) {
    let big = images::png_of_size(6 * 1024 * 1024, 11);
    let image = app.upload("alice", spec("big.png"), &big).await.unwrap();
    let url = app
        .download_url(
            "alice",
            pb::GetDownloadUrlRequest {
                image_id: image.image_id,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    (url, big.len())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_upload_body_is_cut_at_the_body_timeout() {
    let app = TestApp::spawn_with(Backend::Embedded, &["--http-body-timeout", "2s"]).await;
    let session = app
        .client()
        .start_upload(as_user(
            "alice",
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
    let url = app
        .client()
        .get_upload_urls(as_user(
            "alice",
            pb::GetUploadUrlsRequest {
                upload_id: session.upload_id,
                parts: Some(pb::get_upload_urls_request::Parts::PartCount(1)),
                expires_in: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .urls
        .remove(0);
    let mut stream = TcpStream::connect(app.http_addr).await.unwrap();
    stream
        .write_all(
            format!(
                "PUT {} HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\n",
                path_of(&url)
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    // One byte every 200 ms: never idle for long, never done.
    let trickle = async {
        for _ in 0..100 {
            if stream.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(4), trickle).await;
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("the server answers")
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "after {:?}: {answer:?}",
        started.elapsed()
    );
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
