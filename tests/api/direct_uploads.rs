//! Direct uploads to the embedded store's own listener under load: the
//! parts of one session, finished or still arriving, never hold more on
//! disk than the session is charged for.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::helpers::{Backend, TestApp, as_user, images, spec};
use image_service::pb;
use image_service::pb::get_upload_urls_request::Parts;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A session of alice's for `expected_size` bytes and the URLs of `parts`.
async fn session(
    app: &TestApp,
    expected_size: usize,
    parts: pb::get_upload_urls_request::Parts,
) -> (String, Vec<String>) {
    let session = app
        .client()
        .start_upload(as_user(
            "alice",
            pb::StartUploadRequest {
                spec: Some(spec("held.png")),
                expected_size: Some(expected_size as i64),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .session
        .expect("a session");
    let urls = app
        .client()
        .get_upload_urls(as_user(
            "alice",
            pb::GetUploadUrlsRequest {
                upload_id: session.upload_id.clone(),
                parts: Some(parts),
                expires_in: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .urls;
    (session.upload_id, urls)
}

/// Bytes held by the files under `dir`, however deep.
fn bytes_under(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => bytes_under(&entry.path()),
            _ => entry.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// A `PUT` of `url` declaring `size` bytes that sends all but the last
/// and then waits; the server's answer, if one comes within a few seconds
/// (the connection stays open until then).
async fn put_all_but_the_last_byte(addr: SocketAddr, url: String, size: usize) -> Option<String> {
    let rest = url.split_once("://").expect("an absolute URL").1;
    let path = &rest[rest.find('/').expect("a path")..];
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!("PUT {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {size}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 32 * 1024];
    let mut sent = 0;
    while sent < size - 1 {
        let n = chunk.len().min(size - 1 - sent);
        if stream.write_all(&chunk[..n]).await.is_err() {
            break;
        }
        sent += n;
    }
    answer(&mut stream, Duration::from_secs(3)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_still_arriving_count_against_their_session() {
    let app = TestApp::spawn(Backend::Embedded).await;
    const SIZE: usize = 1024 * 1024;
    const PARTS: usize = 6;
    let (_, urls) = session(&app, SIZE, Parts::PartCount(PARTS as i32)).await;

    // Every part at once, each with all but the last byte of the session.
    hold_no_more_than(&app, urls, SIZE).await;

    // A direct upload sent as it should be still goes through, a part
    // sent again included.
    let png = images::png_of_size(300 * 1024, 9);
    let (id, urls) = session(&app, png.len(), Parts::PartCount(2)).await;
    let half = png.len() / 2;
    assert!(put(&urls[0], png.clone()).await.is_success());
    assert!(put(&urls[0], png[..half].to_vec()).await.is_success());
    assert!(put(&urls[1], png[half..].to_vec()).await.is_success());
    let image = app
        .client()
        .complete_upload(as_user(
            "alice",
            pb::CompleteUploadRequest { upload_id: id },
        ))
        .await
        .unwrap()
        .into_inner()
        .image
        .expect("an image");
    assert_eq!(image.uploaded_sha256, hex::encode(Sha256::digest(&png)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_sent_to_the_same_part_at_once_share_its_size() {
    let app = TestApp::spawn(Backend::Embedded).await;
    const SIZE: usize = 1024 * 1024;
    let sizes = Parts::PartSizes(pb::PartSizes {
        sizes: vec![SIZE as i64],
    });
    let (_, urls) = session(&app, SIZE, sizes).await;
    hold_no_more_than(&app, vec![urls[0].clone(); 6], SIZE).await;
    // The part can still be sent whole.
    assert!(put(&urls[0], vec![0; SIZE]).await.is_success());
}

/// PUTs of `urls` at once, each of all but the last of `size` bytes:
/// asserts that the store never held more than `size` meanwhile, that all
/// but one were refused, and that what they held is gone once they end.
async fn hold_no_more_than(app: &TestApp, urls: Vec<String>, size: usize) {
    let blobs = app.data_dir.join("blobs");
    let count = urls.len();
    let puts: Vec<_> = urls
        .into_iter()
        .map(|url| tokio::spawn(put_all_but_the_last_byte(app.http_addr, url, size)))
        .collect();
    let mut most = 0;
    while !puts.iter().all(|put| put.is_finished()) {
        most = most.max(bytes_under(&blobs));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut answers = Vec::new();
    for put in puts {
        answers.push(put.await.unwrap());
    }
    assert!(
        most <= size as u64,
        "the parts held {most} bytes for a session of {size}"
    );
    let refused = answers
        .iter()
        .flatten()
        .filter(|answer| answer.starts_with("HTTP/1.1 413"))
        .count();
    assert!(refused >= count - 1, "{answers:?}");

    // What the refused and abandoned bodies held is gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bytes_under(&blobs) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still held: {:?}",
            app.stored_objects_now()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// PUTs `body` to a presigned URL with a plain HTTP client; the status.
async fn put(url: &str, body: Vec<u8>) -> reqwest::StatusCode {
    reqwest::Client::new()
        .put(url)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
}

/// A `PUT` of `url` declaring `size` bytes that sends all but the last
/// `kept` of them and leaves the connection open; once the store holds
/// what was sent.
async fn hold_part(app: &TestApp, url: &str, size: usize, kept: usize) -> TcpStream {
    let rest = url.split_once("://").expect("an absolute URL").1;
    let path = &rest[rest.find('/').expect("a path")..];
    let mut stream = TcpStream::connect(app.http_addr).await.unwrap();
    let head = format!("PUT {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {size}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b'x'; size - kept]).await.unwrap();
    let blobs = app.data_dir.join("blobs");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while bytes_under(&blobs) < (size - kept) as u64 {
        assert!(tokio::time::Instant::now() < deadline, "the part arrives");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stream
}

/// What the server answers on `stream` within `within`, if anything.
async fn answer(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(within, stream.read(&mut answer))
        .await
        .ok()?
        .unwrap_or(0);
    Some(String::from_utf8_lossy(&answer[..n]).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_the_part_bodies_of_its_session_at_once() {
    let app = TestApp::spawn(Backend::Embedded).await;
    const SIZE: usize = 4 * 1024 * 1024;
    let blobs = app.data_dir.join("blobs");
    // Again and again, as a caller would to stage more than its cap: the
    // body of each cancelled session must not outlive the cancel.
    for _ in 0..3 {
        let (id, urls) = session(&app, SIZE, Parts::PartCount(1)).await;
        let mut held = hold_part(&app, &urls[0], SIZE, 200).await;
        app.client()
            .cancel_upload(as_user("alice", pb::CancelUploadRequest { upload_id: id }))
            .await
            .unwrap();
        // Gone by the time the cancel returns: the session's charge is
        // free for another, so its bytes must be too.
        assert_eq!(bytes_under(&blobs), 0, "{:?}", app.stored_objects_now());
        let answer = answer(&mut held, Duration::from_secs(2)).await;
        let answer = answer.as_deref().unwrap_or("nothing");
        assert!(answer.starts_with("HTTP/1.1 410"), "{answer:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_part_body_of_a_session_that_expires_stops_within_a_second_or_two() {
    let app = TestApp::spawn_with(Backend::Embedded, &["--upload-session-ttl", "3s"]).await;
    const SIZE: usize = 1024 * 1024;
    let (_, urls) = session(&app, SIZE, Parts::PartCount(1)).await;
    let started = tokio::time::Instant::now();
    let mut held = hold_part(&app, &urls[0], SIZE, 100_000).await;
    // Faster than the minimum rate, never done.
    let (mut reader, mut writer) = held.split();
    let send = async {
        loop {
            if writer.write_all(&[b'x'; 64]).await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(8), async {
        tokio::select! {
            read = reader.read(&mut answer) => read.unwrap_or(0),
            () = send => unreachable!(),
        }
    })
    .await
    .expect("the body is stopped once its session expires");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 410"), "{answer:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        bytes_under(&app.data_dir.join("blobs")),
        0,
        "{:?}",
        app.stored_objects_now()
    );
}
