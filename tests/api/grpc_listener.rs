//! The gRPC listener against callers who hold connections without using
//! them: HTTP/2 connections that only answer pings must give way to real
//! calls, while a connection carrying an upload stream is never cut. A
//! call whose request never arrives whole is no call at all.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::helpers::{Backend, TestApp, as_user, connect, images, spec, upload_messages};
use image_service::pb;
use image_service::pb::image_service_client::ImageServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const ACK: u8 = 1;
const END_HEADERS: u8 = 4;

fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags, 0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// The HEADERS frame that opens a unary gRPC call to `path` on stream 1,
/// without ending the stream: the request message is still to come.
fn call_headers(path: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        // HPACK: a literal header field without indexing, with a literal
        // name; both strings short and not Huffman-coded.
        block.push(0);
        for text in [name, value] {
            block.push(u8::try_from(text.len()).unwrap());
            block.extend_from_slice(text.as_bytes());
        }
    }
    let mut headers = frame(HEADERS, END_HEADERS, &block);
    headers[8] = 1;
    headers
}

/// A connection that speaks just enough HTTP/2 to look alive (the
/// preface, its settings, acknowledgements of the server's settings and
/// pings) and opens no call; ends when the server closes it.
async fn idle_http2(addr: SocketAddr) -> JoinHandle<()> {
    http2_sending(addr, &[]).await
}

/// Like [`idle_http2`], but sends `opening` after its settings.
async fn http2_sending(addr: SocketAddr, opening: &[u8]) -> JoinHandle<()> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, &[]));
    hello.extend_from_slice(opening);
    stream.write_all(&hello).await.unwrap();
    tokio::spawn(async move {
        let mut header = [0u8; 9];
        while stream.read_exact(&mut header).await.is_ok() {
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; len];
            if stream.read_exact(&mut payload).await.is_err() {
                return;
            }
            let answer = match (header[3], header[4] & ACK) {
                (SETTINGS, 0) => frame(SETTINGS, ACK, &[]),
                (PING, 0) => frame(PING, ACK, &payload),
                (GOAWAY, _) => return,
                _ => continue,
            };
            if stream.write_all(&answer).await.is_err() {
                return;
            }
        }
    })
}

/// A new caller, while `holders` hold every slot: it gets a connection
/// and its call succeeds within `limit`.
async fn a_new_caller_is_served_within(addr: SocketAddr, limit: Duration, holders: &str) {
    let started = Instant::now();
    let listed = tokio::time::timeout(Duration::from_secs(15), async {
        let mut client = ImageServiceClient::new(connect(addr).await);
        client
            .list_images(as_user("bob", pb::ListImagesRequest::default()))
            .await
    })
    .await
    .unwrap_or_else(|_| panic!("a new caller gets a connection while {holders} hold every slot"))
    .expect("the call succeeds");
    assert!(listed.into_inner().images.is_empty());
    assert!(started.elapsed() < limit, "waited {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_give_way_to_calls_but_an_upload_in_flight_is_kept() {
    let app = TestApp::spawn_with(Backend::Embedded, &["--max-connections", "6"]).await;
    // An upload on a connection of its own that pauses longer than a
    // connection may sit idle: its call stays open all along.
    let png = images::png(64, 64, 3);
    let mut messages = upload_messages(spec("slow.png"), &png, png.len() / 4 + 1).into_iter();
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    sender.send(messages.next().unwrap()).await.unwrap();
    let mut uploader = ImageServiceClient::new(connect(app.grpc_addr).await);
    let upload = tokio::spawn(async move {
        uploader
            .upload_image(as_user(
                "alice",
                tokio_stream::wrappers::ReceiverStream::new(receiver),
            ))
            .await
    });
    let feed = tokio::spawn(async move {
        for message in messages {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            if sender.send(message).await.is_err() {
                // The call is gone: the upload below says how.
                break;
            }
        }
    });

    // As many idle connections as there are slots, and more waiting.
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(idle_http2(app.grpc_addr).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    a_new_caller_is_served_within(app.grpc_addr, Duration::from_secs(8), "idle ones").await;

    feed.await.unwrap();
    let image = tokio::time::timeout(Duration::from_secs(20), upload)
        .await
        .expect("the upload ends")
        .unwrap()
        .expect("the upload in flight was not cut")
        .into_inner()
        .image
        .expect("an image");
    assert!(!image.image_id.is_empty());
    for connection in idle {
        connection.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_calls_is_closed_at_the_idle_timeout() {
    let app = TestApp::spawn_with(Backend::Embedded, &["--grpc-idle-timeout", "2s"]).await;
    let started = Instant::now();
    let connection = idle_http2(app.grpc_addr).await;
    tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the server closes an idle connection")
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "closed after {:?}",
        started.elapsed()
    );
    // Calls on a new connection are served as before.
    ImageServiceClient::new(connect(app.grpc_addr).await)
        .list_images(as_user("bob", pb::ListImagesRequest::default()))
        .await
        .expect("the call succeeds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_watches_do_not_keep_connections_busy() {
    let app = TestApp::spawn_with(Backend::Embedded, &["--max-connections", "3"]).await;
    // Anyone may watch the health service for as long as they like: a
    // connection with nothing but a watch open gives way like an idle one.
    let mut watches = Vec::new();
    for _ in 0..3 {
        let mut health = HealthClient::new(connect(app.grpc_addr).await);
        let mut watch = health
            .watch(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner();
        watch.message().await.unwrap().expect("the current status");
        watches.push(watch);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    let mut client = tokio::time::timeout(Duration::from_secs(10), async {
        ImageServiceClient::new(connect(app.grpc_addr).await)
    })
    .await
    .expect("a new caller gets a connection while watches hold every slot");
    client
        .list_images(as_user("bob", pb::ListImagesRequest::default()))
        .await
        .expect("the call succeeds");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "waited {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_whose_request_never_arrives_do_not_keep_connections_busy() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            "--max-connections",
            "4",
            "--grpc-max-connections-per-peer",
            "0",
        ],
    )
    .await;
    // Every slot holds a unary call whose headers were sent but never its
    // message: the server has no work for them.
    let mut stalled = Vec::new();
    for path in [
        "/grpc.health.v1.Health/Check",
        "/imageservice.v1.ImageService/ListImages",
        "/grpc.health.v1.Health/Check",
        "/imageservice.v1.ImageService/GetImage",
    ] {
        stalled.push(http2_sending(app.grpc_addr, &call_headers(path)).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    a_new_caller_is_served_within(app.grpc_addr, Duration::from_secs(5), "stalled calls").await;
    // The connection shed to make room was closed with its stalled call.
    let closed = stalled.iter().filter(|peer| peer.is_finished()).count();
    assert!(closed >= 1, "no stalled connection was closed");
    for connection in stalled {
        connection.abort();
    }
}
