//! Callers who do not behave: what one of them can make a replica hold is
//! bounded, and the answer is a clear status (and nothing stored), while
//! well-behaved callers go on being served. Also TLS and mutual TLS.

use std::time::Duration;

use crate::helpers::images;
use crate::helpers::pki::{Pki, https_get, tls_channel};
use crate::helpers::{Backend, TestApp, as_user, assert_code, spec, upload_messages};
use image_service::pb;
use image_service::pb::image_service_client::ImageServiceClient;
use image_service::pb::upload_image_request::Data;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn chunk(bytes: &[u8]) -> pb::UploadImageRequest {
    pb::UploadImageRequest {
        data: Some(Data::Chunk(bytes::Bytes::copy_from_slice(bytes))),
        ..Default::default()
    }
}

type UploadCall =
    tokio::task::JoinHandle<Result<tonic::Response<pb::UploadImageResponse>, tonic::Status>>;

/// Starts an upload whose messages the test sends one by one.
fn start_upload(
    client: &ImageServiceClient<tonic::transport::Channel>,
    user: &str,
) -> (
    tokio::sync::mpsc::Sender<pb::UploadImageRequest>,
    UploadCall,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut client = client.clone();
    let request = as_user(user, ReceiverStream::new(rx));
    (
        tx,
        tokio::spawn(async move { client.upload_image(request).await }),
    )
}

async fn answer(call: UploadCall) -> Result<pb::Image, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the upload is answered")
        .expect("the call task ends")
        .map(|response| response.into_inner().image.expect("an image"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_heartbeats_without_bytes_times_out_and_stores_nothing() {
    let app = TestApp::spawn_with(Backend::Embedded, &["--upload-idle-timeout", "1s"]).await;
    let png = images::png(64, 64, 1);
    let (tx, call) = start_upload(&app.client(), "mallory");
    tx.send(pb::UploadImageRequest {
        data: Some(Data::Spec(spec("slow.png"))),
        ..Default::default()
    })
    .await
    .unwrap();
    tx.send(chunk(&png[..100])).await.unwrap();
    // Empty messages every 300 ms: each used to reset the idle timer.
    let heartbeats = tokio::spawn(async move {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if tx.send(chunk(&[])).await.is_err() {
                break;
            }
        }
    });
    let status = assert_code(answer(call).await, Code::DeadlineExceeded);
    assert!(status.message().contains("no image bytes"), "{status:?}");
    heartbeats.abort();
    assert!(app.wait_for_stored_objects(0).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_cannot_hold_every_upload_slot() {
    let app = TestApp::spawn_with(Backend::Embedded, &["--max-uploads-per-user", "2"]).await;
    let png = images::png(32, 32, 2);
    let mut open = Vec::new();
    for _ in 0..2 {
        let (tx, call) = start_upload(&app.client(), "mallory");
        tx.send(pb::UploadImageRequest {
            data: Some(Data::Spec(spec("held.png"))),
            ..Default::default()
        })
        .await
        .unwrap();
        tx.send(chunk(&png[..64])).await.unwrap();
        open.push((tx, call));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = assert_code(
        app.upload("mallory", spec("third.png"), &png).await,
        Code::ResourceExhausted,
    );
    assert!(
        status.message().contains("--max-uploads-per-user"),
        "{status:?}"
    );
    app.upload("alice", spec("fine.png"), &png)
        .await
        .expect("other users are served");
    // Finishing one gives mallory a slot back.
    let (tx, call) = open.pop().unwrap();
    tx.send(pb::UploadImageRequest {
        data: Some(Data::Chunk(bytes::Bytes::copy_from_slice(&png[64..]))),
        finish_write: true,
        ..Default::default()
    })
    .await
    .unwrap();
    drop(tx);
    answer(call).await.expect("the held upload completes");
    app.upload("mallory", spec("third.png"), &png)
        .await
        .expect("a slot is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_into_tiny_messages_is_refused() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let png = images::png(64, 64, 3);
    assert!(png.len() > 4096);
    // One byte per message: 1 024 messages are free, then each must bring
    // 16 KiB on average.
    let status = assert_code(
        app.upload_messages("mallory", upload_messages(spec("dust.png"), &png, 1))
            .await,
        Code::ResourceExhausted,
    );
    assert!(
        status.message().contains("too many small messages"),
        "{status:?}"
    );
    assert!(app.wait_for_stored_objects(0).await.is_empty());
    // The same image in sensible chunks is fine.
    app.upload("mallory", spec("fine.png"), &png)
        .await
        .expect("ordinary chunks are accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gif_frame_larger_than_its_screen_counts_against_the_pixel_limit() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let bomb = images::gif_with_frame((1, 1), (11_000, 11_000));
    let status = assert_code(
        app.upload("mallory", spec("tiny.gif"), &bomb).await,
        Code::ResourceExhausted,
    );
    assert!(status.message().contains("11000x11000"), "{status:?}");
    assert!(app.wait_for_stored_objects(0).await.is_empty());

    // Within the limit, the image reports the size its frames cover.
    let gif = images::gif_with_tiny_screen(300, 200);
    let image = app.upload("alice", spec("honest.gif"), &gif).await.unwrap();
    assert_eq!((image.width, image.height), (300, 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_empty_jpeg_markers_is_refused_quickly() {
    let app = TestApp::spawn(Backend::Embedded).await;
    // 1.5 M markers, 3 MiB: each used to become a piece of its own.
    let flood = images::jpeg_with_marker_flood(1_500_000);
    let status = assert_code(
        app.upload("mallory", spec("flood.jpg"), &flood).await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("marker"), "{status:?}");
    assert!(app.wait_for_stored_objects(0).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_icc_profile_is_no_internal_error() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let png = images::png_with_icc_profile(64, 48, 3 * 1024 * 1024);
    let image = app
        .upload("alice", spec("profiled.png"), &png)
        .await
        .expect("an image with an oversized profile is still an image");
    assert_eq!(image.variants.len(), 2, "variants are made without it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_wait_for_memory_then_are_refused_naming_the_budget() {
    // 20 MiB. An upload reserves what it holds as its bytes arrive (the
    // bytes kept for the renders, 2 MiB of inspection overhead): the first
    // holds 11 MiB after 8 MiB, so a second of 10 MiB cannot finish.
    // Without variants, nothing else draws from the budget.
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            "--variants",
            "false",
            "--memory-budget",
            "20MiB",
            "--memory-wait",
            "500ms",
            "--max-image-bytes",
            "20MiB",
        ],
    )
    .await;
    let png = images::png_of_size(10 * 1024 * 1024, 4);
    let declared = |name: &str| pb::ImageSpec {
        expected_size: Some(png.len() as i64),
        ..spec(name)
    };
    let (tx, call) = start_upload(&app.client(), "alice");
    tx.send(pb::UploadImageRequest {
        data: Some(Data::Spec(declared("first.png"))),
        ..Default::default()
    })
    .await
    .unwrap();
    for piece in png[..8 * 1024 * 1024].chunks(1024 * 1024) {
        tx.send(chunk(piece)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = assert_code(
        app.upload("bob", declared("second.png"), &png).await,
        Code::ResourceExhausted,
    );
    assert!(status.message().contains("--memory-budget"), "{status:?}");

    for piece in png[8 * 1024 * 1024..].chunks(1024 * 1024) {
        tx.send(chunk(piece)).await.unwrap();
    }
    tx.send(pb::UploadImageRequest {
        finish_write: true,
        ..Default::default()
    })
    .await
    .unwrap();
    drop(tx);
    answer(call).await.expect("the first upload completes");
    app.upload("bob", declared("second.png"), &png)
        .await
        .expect("its memory was given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_connection_cap_wait_and_calls_past_the_global_cap_are_shed() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            "--max-concurrent-streams",
            "3",
            "--max-in-flight-calls",
            "5",
            "--max-image-bytes",
            "8MiB",
        ],
    )
    .await;
    let big = images::png_of_size(4 * 1024 * 1024, 6);
    let image = app.upload("alice", spec("big.png"), &big).await.unwrap();
    let download = |client: &mut ImageServiceClient<tonic::transport::Channel>| {
        let mut client = client.clone();
        let request = as_user(
            "mallory",
            pb::DownloadImageRequest {
                image_id: image.image_id.clone(),
                ..Default::default()
            },
        );
        async move { client.download_image(request).await.map(|r| r.into_inner()) }
    };

    // Three downloads, never read, fill one connection's streams: a fourth
    // call on it waits for one of them.
    let channel = crate::helpers::connect(app.grpc_addr).await;
    let mut client = ImageServiceClient::new(channel);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(download(&mut client).await.expect("a download starts"));
    }
    let mut waiting_client = client.clone();
    let waiting = tokio::spawn(async move {
        waiting_client
            .get_image(as_user(
                "mallory",
                pb::GetImageRequest {
                    image_id: String::new(),
                },
            ))
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a 4th stream on the connection waits"
    );
    // Another connection is served meanwhile.
    app.get("alice", &image.image_id)
        .await
        .expect("a well-behaved caller is served");

    // Two more held downloads on another connection reach the global cap
    // of five: the next call anywhere is shed at once.
    let mut other = ImageServiceClient::new(crate::helpers::connect(app.grpc_addr).await);
    let held_elsewhere = [
        download(&mut other).await.expect("a download starts"),
        download(&mut other).await.expect("a download starts"),
    ];
    let status = assert_code(app.get("alice", &image.image_id).await, Code::Unavailable);
    assert!(
        status.message().contains("--max-in-flight-calls"),
        "{status:?}"
    );

    // Closed streams give their places back.
    drop(held_elsewhere);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(held);
    let answered = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting stream is served once others close")
        .unwrap();
    assert_code(answered, Code::InvalidArgument);
    app.get("alice", &image.image_id)
        .await
        .expect("served again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_is_never_read_is_ended() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            "--download-stall-timeout",
            "1s",
            "--max-image-bytes",
            "8MiB",
        ],
    )
    .await;
    let big = images::png_of_size(6 * 1024 * 1024, 7);
    let image = app.upload("alice", spec("big.png"), &big).await.unwrap();
    let mut stream = app
        .client()
        .download_image(as_user(
            "mallory",
            pb::DownloadImageRequest {
                image_id: image.image_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().expect("the header");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut received = 0;
    let ended = loop {
        match stream.message().await {
            Ok(Some(message)) => received += message.chunk.len(),
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    let status = ended.expect("the stalled download ends with an error, not complete");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(received < big.len(), "received {received} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_nothing_are_closed_on_both_listeners() {
    let app = TestApp::spawn_with(Backend::Embedded, &["--handshake-timeout", "500ms"]).await;
    for addr in [app.grpc_addr, app.http_addr] {
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
            .await
            .expect("the server closes the connection");
        assert!(matches!(read, Ok(0) | Err(_)), "{addr}: {read:?}");
    }
    // HTTP/1 headers that never finish.
    let mut slow = tokio::net::TcpStream::connect(app.http_addr).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf))
        .await
        .expect("the server gives up on unfinished headers");
    assert!(read.is_ok() || buf.is_empty());
    // The server still serves.
    app.upload_png("alice", 1).await;
}

/// A TLS server; mutual when `client_ca`, with `--trusted-peers`.
async fn tls_app(pki: &Pki, mutual: bool, trusted: Option<&str>) -> TestApp {
    let (cert, key) = pki.write_server("server.pem", "server-key.pem");
    let ca = pki.path("tests-ca.pem");
    let (cert, key, ca) = (
        cert.to_str().unwrap().to_owned(),
        key.to_str().unwrap().to_owned(),
        ca.to_str().unwrap().to_owned(),
    );
    let mut args = vec!["--tls-cert", &cert, "--tls-key", &key];
    if mutual {
        args.extend(["--tls-client-ca", &ca]);
    }
    if let Some(trusted) = trusted {
        args.extend(["--trusted-peers", trusted]);
    }
    TestApp::spawn_with(Backend::Embedded, &args).await
}

async fn upload_over(
    channel: tonic::transport::Channel,
    user: &str,
) -> Result<pb::Image, tonic::Status> {
    let mut client = ImageServiceClient::new(channel);
    let messages = upload_messages(spec("tls.png"), &images::png(8, 8, 9), 64 * 1024);
    Ok(client
        .upload_image(as_user(user, tokio_stream::iter(messages)))
        .await?
        .into_inner()
        .image
        .expect("an image"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_both_listeners_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "tests");
    let app = tls_app(&pki, false, None).await;
    let channel = tls_channel(app.grpc_addr, &pki.ca_pem, None).await.unwrap();
    let image = upload_over(channel.clone(), "alice").await.unwrap();

    // Plaintext gRPC gets nowhere.
    let plain = crate::helpers::connect(app.grpc_addr).await;
    let refused = ImageServiceClient::new(plain)
        .get_image(as_user(
            "alice",
            pb::GetImageRequest {
                image_id: image.image_id.clone(),
            },
        ))
        .await;
    assert!(refused.is_err(), "plaintext was served");

    // The presigned URL is https, and served over TLS.
    let mut client = ImageServiceClient::new(channel);
    let url = client
        .get_download_url(as_user(
            "alice",
            pb::GetDownloadUrlRequest {
                image_id: image.image_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .url;
    assert!(url.starts_with("https://"), "{url}");
    let (status, length) = https_get(&url, &pki.ca_pem).await;
    assert_eq!(status, 200);
    assert_eq!(length as i64, image.size_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_the_ca_signed_and_x_user_id_only_from_trusted_peers() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "tests");
    let app = tls_app(&pki, true, Some("gateway.internal,spiffe://mesh/gateway")).await;
    let gateway = pki.issue(&["gateway.internal"]);
    let mesh_gateway = pki.issue(&["spiffe://mesh/gateway"]);
    let intruder = pki.issue(&["intruder.internal"]);
    let stranger_pki = Pki::new(dir.path(), "stranger");
    let stranger = stranger_pki.issue(&["gateway.internal"]);

    // No certificate, or one another CA signed: no connection.
    let no_cert = match tls_channel(app.grpc_addr, &pki.ca_pem, None).await {
        Ok(channel) => upload_over(channel, "alice").await.is_err(),
        Err(_) => true,
    };
    assert!(no_cert, "a client without a certificate was served");
    let foreign = match tls_channel(app.grpc_addr, &pki.ca_pem, Some(&stranger)).await {
        Ok(channel) => upload_over(channel, "alice").await.is_err(),
        Err(_) => true,
    };
    assert!(foreign, "a certificate from another CA was accepted");

    // The gateway (by DNS name or SPIFFE URI) may assert users.
    let channel = tls_channel(app.grpc_addr, &pki.ca_pem, Some(&gateway))
        .await
        .unwrap();
    let image = upload_over(channel, "alice").await.unwrap();
    assert_eq!(image.owner_id, "alice");
    let channel = tls_channel(app.grpc_addr, &pki.ca_pem, Some(&mesh_gateway))
        .await
        .unwrap();
    upload_over(channel, "bob").await.unwrap();

    // A valid client that is not on the list cannot spoof x-user-id.
    let channel = tls_channel(app.grpc_addr, &pki.ca_pem, Some(&intruder))
        .await
        .unwrap();
    let status = assert_code(upload_over(channel, "alice").await, Code::Unauthenticated);
    assert!(status.message().contains("trusted"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_used_without_a_restart_or_dropped_connections() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "tests");
    let app = tls_app(&pki, false, None).await;
    let before = tls_channel(app.grpc_addr, &pki.ca_pem, None).await.unwrap();
    upload_over(before.clone(), "alice").await.unwrap();

    // cert-manager writes a certificate from a new CA into the same files.
    let next = Pki::new(dir.path(), "next");
    let issued = next.issue(&["localhost", "127.0.0.1"]);
    std::fs::write(pki.path("server-key.pem"), &issued.key_pem).unwrap();
    std::fs::write(pki.path("server.pem"), &issued.cert_pem).unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(channel) = tls_channel(app.grpc_addr, &next.ca_pem, None).await
            && upload_over(channel, "alice").await.is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The connection made before the rotation still works.
    upload_over(before, "alice").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_and_imagectl_work_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "tests");
    let app = tls_app(&pki, true, Some("gateway.internal")).await;
    let gateway = pki.issue(&["gateway.internal"]);
    let (cert, key) = (pki.path("gateway.pem"), pki.path("gateway-key.pem"));
    std::fs::write(&cert, &gateway.cert_pem).unwrap();
    std::fs::write(&key, &gateway.key_pem).unwrap();
    let ca = pki.path("tests-ca.pem");
    let photo = dir.path().join("photo.png");
    std::fs::write(&photo, images::png(16, 16, 3)).unwrap();

    let uploaded = tokio::process::Command::new(env!("CARGO_BIN_EXE_imagectl"))
        .args(["--json", "--addr", &format!("https://{}", app.grpc_addr)])
        .args(["--tls-name", "localhost", "--user", "alice"])
        .arg("--tls-ca")
        .arg(&ca)
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("upload")
        .arg(&photo)
        .output()
        .await
        .unwrap();
    assert!(
        uploaded.status.success(),
        "{}",
        String::from_utf8_lossy(&uploaded.stderr)
    );
    let text = String::from_utf8_lossy(&uploaded.stdout);
    let image_id = text
        .split('"')
        .skip_while(|field| *field != "image_id")
        .nth(2)
        .unwrap_or_else(|| panic!("no image_id in {text}"))
        .to_owned();

    let grpcurl = |flags: &[&str], verb: &str| {
        let mut command = std::process::Command::new(crate::helpers::servers::grpcurl());
        command
            .arg("-cacert")
            .arg(&ca)
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .args(["-servername", "localhost"])
            .args(flags)
            .arg(app.grpc_addr.to_string())
            .arg(verb);
        command
    };
    let listed = grpcurl(&[], "list").output().unwrap();
    assert!(listed.status.success(), "{listed:?}");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("imageservice.v1.ImageService"));
    let request = format!("{{\"image_id\": \"{image_id}\"}}");
    let got = grpcurl(
        &["-H", "x-user-id: bob", "-d", &request],
        "imageservice.v1.ImageService/GetImage",
    )
    .output()
    .unwrap();
    assert!(got.status.success(), "{got:?}");
    assert!(String::from_utf8_lossy(&got.stdout).contains(&image_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_large_uploads_is_admitted_whole_and_completes() {
    // Each upload's working set on S3 is 2 MiB + one part buffer and two
    // parts in flight (15 MiB) + one message: 21 MiB, so two fit in the
    // 48 MiB budget at once. Admitted as their bytes arrived, eight such
    // uploads would together grow past the budget half-way and be refused
    // after sending most of their bytes; admitted whole, they wait their
    // turn before sending and all complete.
    let app = TestApp::spawn_with(
        Backend::Aws,
        &[
            "--variants",
            "false",
            "--memory-budget",
            "48MiB",
            "--memory-wait",
            "200ms",
            "--upload-slot-wait",
            "120s",
            "--max-image-bytes",
            "16MiB",
            "--s3-part-size",
            "5MiB",
            "--s3-parts-in-flight",
            "2",
        ],
    )
    .await;
    let png = std::sync::Arc::new(images::png_of_size(12 * 1024 * 1024, 9));
    let uploads: Vec<_> = (0..8)
        .map(|n| {
            let client = app.client();
            let png = png.clone();
            tokio::spawn(async move {
                let messages = upload_messages(spec(&format!("burst-{n}.png")), &png, 1024 * 1024);
                let request = as_user(&format!("user-{n}"), tokio_stream::iter(messages));
                client
                    .clone()
                    .upload_image(request)
                    .await
                    .map(|response| response.into_inner().image.expect("an image"))
            })
        })
        .collect();
    let mut refused = Vec::new();
    for upload in uploads {
        if let Err(status) = upload.await.unwrap() {
            refused.push(status);
        }
    }
    assert!(refused.is_empty(), "refused: {refused:?}");
}
