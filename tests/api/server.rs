//! The server around the API: health, reflection, identity modes,
//! configuration, restarts and graceful shutdown.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::helpers::binary::Service;
use crate::helpers::{
    Backend, TestApp, as_user, assert_code, connect, images, spec, upload_messages,
};
use image_service::pb;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const SERVICE: &str = "imageservice.v1.ImageService";

#[tokio::test]
async fn health_reports_the_server_and_the_image_service_as_serving() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let mut health = HealthClient::new(connect(app.grpc_addr).await);
    for service in ["", SERVICE] {
        let request = HealthCheckRequest {
            service: service.into(),
        };
        let response = health.check(request).await.unwrap().into_inner();
        assert_eq!(
            response.status(),
            ServingStatus::Serving,
            "service {service:?}"
        );
    }
    let unknown = HealthCheckRequest {
        service: "no.such.Service".into(),
    };
    assert_code(health.check(unknown).await, Code::NotFound);
}

#[tokio::test]
async fn reflection_lists_the_services_in_v1_and_v1alpha() {
    use tonic_reflection::pb::{v1, v1alpha};
    let app = TestApp::spawn(Backend::Embedded).await;
    let channel = connect(app.grpc_addr).await;

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&SERVICE.to_owned()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );

    // grpcurl releases speak v1alpha: the same listing must work there.
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                SERVICE.into(),
            ),
        ),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected the service's file descriptor");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

#[tokio::test]
async fn shutdown_reports_not_serving_and_lets_an_upload_in_flight_finish() {
    let mut app = TestApp::spawn(Backend::Embedded).await;
    let mut health = HealthClient::new(connect(app.grpc_addr).await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    // An upload is half-way through when the shutdown begins.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut client = app.client();
    let upload = tokio::spawn(async move {
        client
            .upload_image(as_user(
                "alice",
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
            .await
    });
    let bytes = images::png(100, 100, 1);
    let mut messages = upload_messages(spec("drain.png"), &bytes, 4096).into_iter();
    for message in messages.by_ref().take(3) {
        tx.send(message).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    let stopping = tokio::spawn(async move { app.stop().await });
    let status = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(status.status(), ServingStatus::NotServing);

    for message in messages {
        tx.send(message).await.unwrap();
    }
    drop(tx);
    let image = upload
        .await
        .unwrap()
        .expect("the in-flight upload completes during the drain");
    assert_eq!(
        image.into_inner().image.unwrap().size_bytes,
        bytes.len() as i64
    );
    drop(watch);
    drop(health);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn page_tokens_and_download_urls_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = TestApp::spawn_in(Backend::Embedded, dir.path(), &[]).await;
    for i in 0..3 {
        app.upload_png("alice", i).await;
    }
    let page = app
        .list(
            "alice",
            pb::ListImagesRequest {
                page_size: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let request = pb::GetDownloadUrlRequest {
        image_id: page.images[0].image_id.clone(),
        ..Default::default()
    };
    let url = app.download_url("alice", request).await.unwrap();
    app.stop().await.unwrap();
    drop(app);

    let app = TestApp::spawn_in(Backend::Embedded, dir.path(), &[]).await;
    let next = pb::ListImagesRequest {
        page_size: 2,
        page_token: page.next_page_token,
        ..Default::default()
    };
    assert_eq!(app.list("alice", next).await.unwrap().images.len(), 1);
    // The URL names the old HTTP port; the path and query are what count.
    let path = &url[url.find("/blobs/").unwrap()..];
    let response = reqwest::get(format!("http://{}{path}", app.http_addr))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
}

fn bearer<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test]
async fn jwt_mode_accepts_valid_hs256_tokens_only() {
    let secret = "a-test-secret-that-is-long-enough-for-hs256";
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            "--auth",
            "jwt",
            "--jwt-hs256-secret",
            secret,
            "--jwt-issuer",
            "https://id.example",
            "--jwt-allow-any-audience",
        ],
    )
    .await;
    let key = EncodingKey::from_secret(secret.as_bytes());
    let claims = |sub, exp, nbf, iss| Claims { sub, exp, nbf, iss };
    let sign = |c: &Claims| jsonwebtoken::encode(&Header::new(Algorithm::HS256), c, &key).unwrap();
    let good = sign(&claims(
        "alice",
        now() + 300,
        None,
        Some("https://id.example"),
    ));

    let bytes = images::png(4, 4, 1);
    let upload = |token: &str| {
        bearer(
            token,
            tokio_stream::iter(upload_messages(spec("j.png"), &bytes, 1024)),
        )
    };
    let image = app
        .client()
        .upload_image(upload(&good))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(
        image.owner_id, "alice",
        "the token's subject owns the image"
    );

    let get = |token: &str| {
        bearer(
            token,
            pb::GetImageRequest {
                image_id: image.image_id.clone(),
            },
        )
    };
    assert!(app.client().get_image(get(&good)).await.is_ok());

    let expired = sign(&claims(
        "alice",
        now() - 600,
        None,
        Some("https://id.example"),
    ));
    let not_yet = sign(&claims(
        "alice",
        now() + 900,
        Some(now() + 600),
        Some("https://id.example"),
    ));
    let wrong_issuer = sign(&claims(
        "alice",
        now() + 300,
        None,
        Some("https://evil.example"),
    ));
    let other_key = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("alice", now() + 300, None, Some("https://id.example")),
        &EncodingKey::from_secret(b"another-secret-that-is-long-enough-too"),
    )
    .unwrap();
    let payload = good.split('.').nth(1).unwrap();
    let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    for (name, token) in [
        ("expired", expired),
        ("not yet valid", not_yet),
        ("wrong issuer", wrong_issuer),
        ("no issuer", sign(&claims("alice", now() + 300, None, None))),
        ("other key", other_key),
        ("alg none", unsigned),
        ("garbage", "abc.def.ghi".to_owned()),
    ] {
        let status = assert_code(
            app.client().get_image(get(&token)).await,
            Code::Unauthenticated,
        );
        assert_eq!(
            status.message(),
            "missing or invalid bearer token",
            "{name}: says no more than that"
        );
    }
    // The trusted header means nothing in jwt mode.
    let header_only = as_user(
        "alice",
        pb::GetImageRequest {
            image_id: image.image_id.clone(),
        },
    );
    assert_code(
        app.client().get_image(header_only).await,
        Code::Unauthenticated,
    );
    // Another user's valid token may read but not delete.
    let bob = sign(&claims(
        "bob",
        now() + 300,
        None,
        Some("https://id.example"),
    ));
    let delete = bearer(
        &bob,
        pb::DeleteImageRequest {
            image_id: image.image_id.clone(),
        },
    );
    assert_code(
        app.client().delete_image(delete).await,
        Code::PermissionDenied,
    );
}

#[tokio::test]
async fn jwt_mode_verifies_rs256_with_the_public_key_and_refuses_hs256_confusion() {
    let public = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/api/fixtures/jwt-rs256-public.pem"
    );
    let private = include_bytes!("fixtures/jwt-rs256-private.pem");
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            "--auth",
            "jwt",
            "--jwt-rs256-public-key-file",
            public,
            "--jwt-allow-any-audience",
        ],
    )
    .await;
    let claims = Claims {
        sub: "carol",
        exp: now() + 300,
        nbf: None,
        iss: None,
    };
    let good = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(private).unwrap(),
    )
    .unwrap();
    let list = |token: &str| bearer(token, pb::ListImagesRequest::default());
    assert!(app.client().list_images(list(&good)).await.is_ok());
    // The classic attack: HS256 signed with the public key as the secret.
    let public_bytes = std::fs::read(public).unwrap();
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&public_bytes),
    )
    .unwrap();
    assert_code(
        app.client().list_images(list(&confused)).await,
        Code::Unauthenticated,
    );
}

#[test]
fn help_documents_every_setting_with_its_environment_variable() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_image-service"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for name in [
        "IMAGE_SERVICE_GRPC_ADDR",
        "IMAGE_SERVICE_HTTP_ADDR",
        "IMAGE_SERVICE_BACKEND",
        "IMAGE_SERVICE_DATA_DIR",
        "IMAGE_SERVICE_AUTH",
        "IMAGE_SERVICE_MAX_IMAGE_BYTES",
        "IMAGE_SERVICE_S3_BUCKET",
        "IMAGE_SERVICE_S3_ENDPOINT",
        "IMAGE_SERVICE_S3_PUBLIC_ENDPOINT",
        "IMAGE_SERVICE_DYNAMODB_TABLE",
        "IMAGE_SERVICE_DYNAMODB_ENDPOINT",
        "--grpc-addr",
        "--max-image-bytes",
        "init",
    ] {
        assert!(help.contains(name), "--help does not mention {name}");
    }
}

#[tokio::test]
async fn a_bad_configuration_fails_at_start_with_a_clear_message() {
    let error = crate::helpers::start_refusal(&["--auth", "jwt"])
        .await
        .expect("refused");
    assert!(error.contains("--jwt-hs256-secret"), "{error}");
}

#[tokio::test]
async fn the_binary_serves_then_exits_cleanly_on_sigterm() {
    let service = Service::start(&[]);
    assert_eq!(service.ready["fields"]["backend"], "Embedded");

    // It serves: a health check answers.
    let mut health = HealthClient::new(connect(service.grpc).await);
    let response = health
        .check(HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await
        .unwrap();
    assert_eq!(response.into_inner().status(), ServingStatus::Serving);
    drop(health);

    let logs = service.stop().await;
    assert!(
        logs.iter().any(|line| line.contains("stopped")),
        "logs its stop"
    );
}

#[tokio::test]
async fn calls_carry_a_request_id_and_show_in_the_metrics() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let image = app.upload_png("alice", 1).await;

    let mut request = as_user(
        "bob",
        pb::GetImageRequest {
            image_id: image.image_id.clone(),
        },
    );
    request
        .metadata_mut()
        .insert("x-request-id", "trace-abc-123".parse().unwrap());
    let response = app.client().get_image(request).await.unwrap();
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "trace-abc-123"
    );

    let missing = as_user(
        "bob",
        pb::GetImageRequest {
            image_id: uuid::Uuid::now_v7().to_string(),
        },
    );
    let status = app.client().get_image(missing).await.unwrap_err();
    let generated = status
        .metadata()
        .get("x-request-id")
        .expect("a generated request id on errors too");
    assert!(uuid::Uuid::parse_str(generated.to_str().unwrap()).is_ok());

    let body = app.metrics().await;
    for expected in [
        r#"imageservice_grpc_requests_total{method="UploadImage",code="OK"}"#,
        r#"imageservice_grpc_requests_total{method="GetImage",code="NOT_FOUND"}"#,
        r#"imageservice_grpc_request_duration_seconds_bucket{method="GetImage",le="0.005"}"#,
        "imageservice_upload_bytes_total",
        "imageservice_uploads_in_progress",
        r#"imageservice_backend_request_duration_seconds_count{store="metadata",operation="create"}"#,
    ] {
        assert!(
            body.contains(expected),
            "/metrics lacks {expected}:\n{body}"
        );
    }
    let uploaded: f64 = body
        .lines()
        .find_map(|line| line.strip_prefix("imageservice_upload_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(uploaded >= image.size_bytes as f64);
}

/// Opens an upload and sends its spec and a first chunk, keeping it open.
async fn open_upload(
    app: &TestApp,
    user: &str,
) -> (
    tokio::sync::mpsc::Sender<pb::UploadImageRequest>,
    tokio::task::JoinHandle<Result<tonic::Response<pb::UploadImageResponse>, tonic::Status>>,
    Vec<pb::UploadImageRequest>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut client = app.client();
    let request = as_user(user, tokio_stream::wrappers::ReceiverStream::new(rx));
    let call = tokio::spawn(async move { client.upload_image(request).await });
    let mut messages = upload_messages(spec("open.png"), &images::png(64, 64, 3), 4096);
    let rest = messages.split_off(2);
    for message in messages {
        tx.send(message).await.unwrap();
    }
    (tx, call, rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_waits_for_a_busy_slot_then_is_refused_naming_the_wait() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &[
            "--max-concurrent-uploads",
            "2",
            "--upload-slot-wait",
            // Long enough that, on a loaded machine, the first upload
            // finishes within the wait in the second half of the test.
            "2s",
        ],
    )
    .await;
    let (tx1, call1, rest1) = open_upload(&app, "alice").await;
    let (_tx2, _call2, _) = open_upload(&app, "bob").await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let bytes = images::png(4, 4, 9);
    let before = app.stored_objects().await.len();
    let started = std::time::Instant::now();
    let status = assert_code(
        app.upload("carol", spec("third.png"), &bytes).await,
        Code::ResourceExhausted,
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(
        status.message().contains("--upload-slot-wait"),
        "{status:?}"
    );
    assert!(
        status.metadata().get("grpc-retry-pushback-ms").is_none(),
        "a busy replica is worth retrying: {status:?}"
    );
    assert_eq!(
        app.stored_objects().await.len(),
        before,
        "the refused upload stored nothing"
    );

    // A slot that frees up during the wait is taken.
    let waiting = {
        let client = app.client();
        let bytes = bytes.clone();
        tokio::spawn(async move {
            let mut client = client;
            let messages = upload_messages(spec("third.png"), &bytes, 4096);
            client
                .upload_image(as_user("carol", tokio_stream::iter(messages)))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    for message in rest1 {
        tx1.send(message).await.unwrap();
    }
    drop(tx1);
    call1.await.unwrap().expect("the first upload completes");
    waiting
        .await
        .unwrap()
        .expect("the waiting upload got the freed slot");
}

/// Sends `bytes` as an upload on a connection of its own, and its last
/// chunk `pause` after the service took the ones before: more than the
/// service's 4 MiB stream window must be sent first, so the pause falls
/// while the upload holds its slot.
async fn slow_upload(
    app: &TestApp,
    user: &str,
    bytes: &[u8],
    pause: Duration,
) -> Result<pb::Image, tonic::Status> {
    let mut messages = upload_messages(spec("burst.png"), bytes, 256 * 1024);
    let last = messages.pop().expect("a last chunk");
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        for message in messages {
            let _ = tx.send(message).await;
        }
        // The channel holds one message: this send waits until the client
        // took the one before, which it does as the service reads.
        let _ = tx.reserve().await;
        tokio::time::sleep(pause).await;
        let _ = tx.send(last).await;
    });
    let mut client =
        pb::image_service_client::ImageServiceClient::new(connect(app.grpc_addr).await);
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let response = client.upload_image(as_user(user, stream)).await?;
    Ok(response.into_inner().image.expect("an image"))
}

/// A burst of four times the upload slots from as many users, each upload
/// of 6 MiB holding its slot for at least 400 ms.
async fn burst(app: &TestApp) -> Vec<Result<pb::Image, tonic::Status>> {
    let bytes = images::png_of_size(6 * 1024 * 1024, 5);
    let uploads = (0..8).map(|n| {
        let bytes = bytes.clone();
        async move {
            slow_upload(
                app,
                &format!("user-{n}"),
                &bytes,
                Duration::from_millis(400),
            )
            .await
        }
    });
    futures::future::join_all(uploads).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_above_the_upload_slots_is_slowed_down_not_refused() {
    // 8 uploads on 2 slots: four rounds of 400 ms, well within the wait.
    let flags = |wait| {
        [
            "--max-concurrent-uploads",
            "2",
            "--upload-slot-wait",
            wait,
            "--variants",
            "false",
            "--max-image-bytes",
            "16MiB",
        ]
    };
    let app = TestApp::spawn_with(Backend::Embedded, &flags("20s")).await;
    let started = std::time::Instant::now();
    for result in burst(&app).await {
        result.expect("every upload of the burst completes");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1600),
        "the uploads took turns: {took:?}"
    );
    assert_eq!(app.stored_objects().await.len(), 8);

    // With a wait shorter than a turn, those that found the slots busy (six,
    // unless a connection came up late) are refused, and stored nothing.
    let app = TestApp::spawn_with(Backend::Embedded, &flags("100ms")).await;
    let results = burst(&app).await;
    let refused: Vec<_> = results
        .iter()
        .filter_map(|result| result.as_ref().err())
        .collect();
    assert!(refused.len() >= 4, "{results:?}");
    for status in &refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("--upload-slot-wait"),
            "{status:?}"
        );
    }
    assert_eq!(app.stored_objects().await.len(), 8 - refused.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_upload_stream_times_out_and_stores_nothing() {
    let app = TestApp::spawn_with(Backend::Embedded, &["--upload-idle-timeout", "300ms"]).await;
    let (tx, call, _rest) = open_upload(&app, "alice").await;
    let status = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    drop(tx);
    app.assert_nothing_stored("alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_grpc_port_never_takes_the_server_down() {
    use rand::{Rng, SeedableRng};
    let app = TestApp::spawn(Backend::Embedded).await;
    let before = app.stored_objects().await;
    let http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let methods = [
        "UploadImage",
        "GetImage",
        "ListImages",
        "DownloadImage",
        "GetDownloadUrl",
        "UpdateImage",
        "DeleteImage",
    ];
    for round in 0..40 {
        for method in methods {
            // Random protobuf-ish payloads in proper gRPC framing, and random
            // bytes with no framing at all.
            let payload: Vec<u8> = (0..rng.random_range(0..2000))
                .map(|_| rng.random())
                .collect();
            let body = if round % 2 == 0 {
                let mut framed = vec![0u8];
                framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                framed.extend_from_slice(&payload);
                framed
            } else {
                payload
            };
            let response = http
                .post(format!(
                    "http://{}/imageservice.v1.ImageService/{method}",
                    app.grpc_addr
                ))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("x-user-id", "mallory")
                .body(body)
                .send()
                .await
                .expect("the server answers");
            let _ = response.bytes().await;
        }
    }
    // Not even HTTP/2.
    for _ in 0..20 {
        use tokio::io::AsyncWriteExt;
        let mut socket = tokio::net::TcpStream::connect(app.grpc_addr).await.unwrap();
        let junk: Vec<u8> = (0..rng.random_range(1..5000))
            .map(|_| rng.random())
            .collect();
        let _ = socket.write_all(&junk).await;
    }

    let mut health = HealthClient::new(connect(app.grpc_addr).await);
    let status = health
        .check(HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await
        .unwrap();
    assert_eq!(status.into_inner().status(), ServingStatus::Serving);
    app.upload_png("alice", 1).await;
    let after = app.stored_objects().await;
    // One image: its original and its variants' one object (an 8 x 8
    // image's `small` and `medium` are the same).
    assert_eq!(after.len(), before.len() + 2, "garbage stored nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_past_its_deadline_stores_nothing() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut request = as_user("alice", tokio_stream::wrappers::ReceiverStream::new(rx));
    request.set_timeout(Duration::from_millis(300));
    let mut client = app.client();
    let call = tokio::spawn(async move { client.upload_image(request).await });
    let mut messages = upload_messages(spec("late.png"), &images::png(64, 64, 1), 1024).into_iter();
    for message in messages.by_ref().take(3) {
        tx.send(message).await.unwrap();
    }
    let status = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    // tonic's client reports its own deadline as CANCELLED ("Timeout
    // expired"); the server drops the call at the deadline either way.
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    app.assert_nothing_stored("alice").await;
}

/// Puts bytes where an image's would be, as a crash between the bytes and
/// the metadata would leave them.
fn plant_orphan(app: &TestApp) -> std::path::PathBuf {
    let id = uuid::Uuid::now_v7();
    let dir = app.data_dir.join(format!("blobs/images/{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("original");
    std::fs::write(&path, images::png(2, 2, 1)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_periodic_repair_pass_removes_bytes_without_metadata() {
    let app = TestApp::spawn_with(
        Backend::Embedded,
        &["--repair-interval", "200ms", "--repair-grace", "0s"],
    )
    .await;
    let kept = app.upload_png("alice", 1).await;
    let orphan = plant_orphan(&app);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while orphan.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the orphan is still there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Err(status) = app.download("bob", &kept.image_id).await {
        panic!("real images are left alone: {status:?}");
    }
    // The pass counts its findings once it has acted on them: the count
    // may trail the removal by a moment.
    loop {
        let metrics = app.metrics().await;
        if metrics.contains(r#"imageservice_repair_findings_total{kind="orphan_object"}"#) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no orphan counted: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_service_repair_reports_then_fixes() {
    let mut app = TestApp::spawn(Backend::Embedded).await;
    let kept = app.upload_png("alice", 1).await;
    let orphan = plant_orphan(&app);
    app.stop().await.unwrap();
    let repair = |dry_run: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_image-service"));
        command.args([
            "--data-dir",
            app.data_dir.to_str().unwrap(),
            "repair",
            "--grace",
            "0s",
            "--json",
        ]);
        if dry_run {
            command.arg("--dry-run");
        }
        crate::helpers::json(&command.output().unwrap())
    };
    let report = repair(true);
    let found = report["orphan_objects"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{report}");
    assert!(
        found[0].as_str().unwrap().contains(
            orphan
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
        )
    );
    assert!(orphan.exists(), "a dry run changes nothing");

    let report = repair(false);
    assert_eq!(report["orphan_objects"].as_array().unwrap().len(), 1);
    assert!(!orphan.exists());
    assert_eq!(
        repair(false)["orphan_objects"].as_array().unwrap().len(),
        0,
        "nothing left"
    );

    let app = TestApp::spawn_in(Backend::Embedded, &app.data_dir.clone(), &[]).await;
    assert!(
        app.download("bob", &kept.image_id).await.is_ok(),
        "real images are left alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keep_metadata_originals_are_stored_as_uploaded() {
    let app = TestApp::spawn_with(Backend::Embedded, &["--keep-metadata"]).await;
    let photo = images::phone_photo(800, 600);
    let image = app
        .upload("alice", spec("IMG_0002.jpg"), &photo)
        .await
        .unwrap();
    assert!(!image.metadata_stripped);
    assert_eq!(image.sha256, image.uploaded_sha256);
    assert!(app.download("bob", &image.image_id).await.unwrap() == photo);
    // Orientation is still applied to what viewers get.
    assert_eq!((image.width, image.height), (600, 800));
    let sizes: Vec<_> = image.variants.iter().map(|v| (v.width, v.height)).collect();
    assert_eq!(sizes, [(240, 320), (600, 800)]);
}

/// An original too large to keep in memory whose metadata is stripped: its
/// stored checksums are computed from the store, and match what downloads
/// return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_stripped_original_has_the_checksums_of_what_is_stored() {
    use sha2::{Digest, Sha256};
    let app = TestApp::spawn_with(Backend::Embedded, &["--max-image-bytes", "64MiB"]).await;
    let plain = images::png_of_size(17 * 1024 * 1024, 4);
    let mut png = plain[..33].to_vec();
    png.extend(images::png_text_chunk("Author", "Alice Example"));
    png.extend_from_slice(&plain[33..]);
    let image = app.upload("alice", spec("big.png"), &png).await.unwrap();
    let stored = app.download("bob", &image.image_id).await.unwrap();
    assert!(stored == plain, "the text chunk, and only it, was removed");
    assert!(image.metadata_stripped);
    assert_eq!(image.sha256, hex::encode(Sha256::digest(&stored)));
    assert_eq!(image.crc32c, crc32c::crc32c(&stored));
    assert_eq!(image.size_bytes, stored.len() as i64);
    assert_eq!(image.uploaded_sha256, hex::encode(Sha256::digest(&png)));
}

/// A request asserting two users (a gateway that appends `x-user-id`
/// rather than replacing the caller's) is refused, not read as the first.
#[tokio::test]
async fn a_request_with_two_user_ids_is_refused() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let list = |users: &[&str]| {
        let mut request = tonic::Request::new(pb::ListImagesRequest::default());
        for user in users {
            request
                .metadata_mut()
                .append("x-user-id", user.parse().unwrap());
        }
        let mut client = app.client();
        async move { client.list_images(request).await }
    };
    list(&["bob"]).await.unwrap();
    let refused = list(&["admin", "bob"]).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("more than one x-user-id"),
        "{refused:?}"
    );
}
