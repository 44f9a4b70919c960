//! Behaviour specific to the aws backend, against real S3- and
//! DynamoDB-compatible servers: multipart uploads and their abort paths,
//! bytes removed when the metadata cannot be written, `init`, and presigned
//! URLs for a public endpoint.

use std::time::Duration;

use crate::helpers::{Backend, TestApp, as_user, assert_code, images, spec, upload_messages};
use clap::Parser;
use image_service::pb;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// Servers with 5 MiB parts, two in flight, and room for large images.
async fn multipart_app() -> TestApp {
    TestApp::spawn_with(
        Backend::Aws,
        &[
            "--max-image-bytes",
            "64MiB",
            "--s3-part-size",
            "5MiB",
            "--s3-parts-in-flight",
            "2",
        ],
    )
    .await
}

/// Parts of unfinished multipart uploads in the S3 server's data.
fn multipart_parts(app: &TestApp) -> Vec<String> {
    app.stored_objects_now()
        .into_iter()
        .filter(|path| path.contains(".upload_id-"))
        .collect()
}

/// Starts an upload fed through a channel; returns the sender, the call,
/// and the messages not sent yet.
struct OpenUpload {
    tx: mpsc::Sender<pb::UploadImageRequest>,
    call: tokio::task::JoinHandle<Result<tonic::Response<pb::UploadImageResponse>, tonic::Status>>,
    rest: std::vec::IntoIter<pb::UploadImageRequest>,
}

async fn open_upload(
    app: &TestApp,
    spec: pb::ImageSpec,
    bytes: &[u8],
    send_first: usize,
) -> OpenUpload {
    let (tx, rx) = mpsc::channel(2);
    let mut client = app.client();
    let call = tokio::spawn(async move {
        client
            .upload_image(as_user("alice", ReceiverStream::new(rx)))
            .await
    });
    let mut rest = upload_messages(spec, bytes, 1024 * 1024).into_iter();
    for message in rest.by_ref().take(send_first) {
        tx.send(message).await.expect("the server reads the stream");
    }
    OpenUpload { tx, call, rest }
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_image_goes_multipart_and_reads_back_identical() {
    let app = multipart_app().await;
    let bytes = images::png_of_size(40 * 1024 * 1024, 1);
    let upload = open_upload(&app, spec("big.png"), &bytes, 13).await;
    // 12 MiB in: at least two 5 MiB parts are being (or have been) stored.
    wait_for("multipart parts in the S3 server's data", || {
        !multipart_parts(&app).is_empty()
    })
    .await;
    for message in upload.rest {
        upload.tx.send(message).await.unwrap();
    }
    drop(upload.tx);
    let image = upload
        .call
        .await
        .unwrap()
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(image.size_bytes, bytes.len() as i64);
    assert_eq!(image.sha256, hex::encode(Sha256::digest(&bytes)));

    let downloaded = app.download("bob", &image.image_id).await.unwrap();
    assert!(downloaded == bytes, "the object differs from the upload");
    let objects = app.stored_objects().await;
    assert_eq!(
        objects.len(),
        3,
        "the original and its two variants, no leftover parts: {objects:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_multipart_upload_leaves_no_parts_and_no_object() {
    let app = multipart_app().await;
    let bytes = images::png_of_size(30 * 1024 * 1024, 2);
    let upload = open_upload(&app, spec("cancelled.png"), &bytes, 13).await;
    wait_for("multipart parts in the S3 server's data", || {
        !multipart_parts(&app).is_empty()
    })
    .await;
    upload.call.abort();
    let _ = upload.call.await;
    drop(upload.tx);
    let left = app.wait_for_stored_objects(0).await;
    let log = std::fs::read_to_string(app.s3.as_ref().unwrap().dir.path().join("server.log"))
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "the aborted upload left {left:?}\nS3 server log:\n{log}"
    );
    assert!(
        app.list_all("alice", pb::ListImagesRequest::default())
            .await
            .unwrap()
            .is_empty(),
        "alice has no image"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_failing_validation_is_aborted() {
    let app = multipart_app().await;
    let bytes = images::png_of_size(12 * 1024 * 1024, 3);
    let wrong_sha = pb::ImageSpec {
        sha256: Some(hex::encode(Sha256::digest(b"other"))),
        ..spec("x.png")
    };
    let result = app
        .upload_messages("alice", upload_messages(wrong_sha, &bytes, 1024 * 1024))
        .await;
    assert_code(result, Code::DataLoss);
    let too_long = pb::ImageSpec {
        expected_size: Some(11 * 1024 * 1024),
        ..spec("x.png")
    };
    let result = app
        .upload_messages("alice", upload_messages(too_long, &bytes, 1024 * 1024))
        .await;
    assert_code(result, Code::OutOfRange);
    let left = app.wait_for_stored_objects(0).await;
    assert!(left.is_empty(), "the rejected uploads left {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_are_removed_when_the_metadata_cannot_be_written() {
    let mut app = TestApp::spawn(Backend::Aws).await;
    let kept = app.upload_png("alice", 1).await;
    app.dynamodb.as_mut().unwrap().kill();
    let bytes = images::png(16, 16, 2);
    let status = assert_code(
        app.upload("alice", spec("lost.png"), &bytes).await,
        Code::Unavailable,
    );
    assert!(
        !status.message().contains("127.0.0.1"),
        "no backend detail reaches the caller: {status:?}"
    );
    // The first image's original and its variants' one object (an 8 x 8
    // image's `small` and `medium` are the same); nothing of the second.
    let objects = app.wait_for_stored_objects(2).await;
    assert_eq!(
        objects.len(),
        2,
        "only the first image's bytes remain: {objects:?}"
    );
    assert!(objects.iter().all(|o| o.contains(&kept.image_id)));
    // Reads fail as retryable too, rather than as "not found".
    assert_code(app.get("alice", &kept.image_id).await, Code::Unavailable);
}

/// A configuration for `app`'s S3 and DynamoDB servers, then `extra`.
fn config_for(app: &TestApp, extra: &[&str]) -> image_service::config::Config {
    let (s3, dynamodb) = (
        app.s3.as_ref().unwrap().endpoint(),
        app.dynamodb.as_ref().unwrap().endpoint(),
    );
    let mut args = vec![
        "image-service",
        "--backend",
        "aws",
        "--s3-endpoint",
        &s3,
        "--dynamodb-endpoint",
        &dynamodb,
    ];
    args.extend_from_slice(extra);
    image_service::config::Config::try_parse_from(args).unwrap()
}

/// The storage contract (`image_service::storage::contract`) on the aws
/// adapters, against the stores a running server uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_stores_keep_the_storage_contract() {
    let app = TestApp::spawn(Backend::Aws).await;
    app.upload_png("alice", 1).await;
    let config = config_for(&app, &[]);
    let settings = config.aws_settings();
    let (blobs, metadata) = image_service::storage::aws::connect(&settings).await;
    image_service::storage::contract::blob_store(&blobs).await;
    image_service::storage::contract::metadata_store(&metadata).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_can_run_again_on_existing_storage() {
    let app = TestApp::spawn(Backend::Aws).await;
    let image = app.upload_png("alice", 1).await;
    let config = config_for(&app, &["init"]);
    image_service::commands::init_backend(&config)
        .await
        .expect("a second init succeeds");
    image_service::commands::init_backend(&config)
        .await
        .expect("and a third");
    assert_eq!(
        app.get("alice", &image.image_id).await.unwrap(),
        image,
        "nothing was reset"
    );
    assert!(app.download("bob", &image.image_id).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_urls_can_name_a_public_endpoint() {
    let app = TestApp::spawn_with(
        Backend::Aws,
        &["--s3-public-endpoint", "https://images.example.test"],
    )
    .await;
    let image = app.upload_png("alice", 1).await;
    let request = pb::GetDownloadUrlRequest {
        image_id: image.image_id.clone(),
        ..Default::default()
    };
    let url = app.download_url("bob", request).await.unwrap();
    assert!(
        url.starts_with("https://images.example.test/images/images/"),
        "{url}"
    );
    assert!(
        url.contains("X-Amz-Expires=1500"),
        "default validity of 10 minutes from the start of the 15-minute window: {url}"
    );

    // The same URL on the internal endpoint fails: the host is signed.
    let internal = url.replace(
        "https://images.example.test",
        &app.s3.as_ref().unwrap().endpoint(),
    );
    assert_eq!(reqwest::get(&internal).await.unwrap().status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_urls_are_capped_by_the_configured_maximum() {
    let app = TestApp::spawn_with(
        Backend::Aws,
        &[
            "--download-url-max-expiry",
            "2m",
            "--download-url-window",
            "0s",
        ],
    )
    .await;
    let image = app.upload_png("alice", 1).await;
    let request = pb::GetDownloadUrlRequest {
        image_id: image.image_id.clone(),
        expires_in: Some(prost_types::Duration {
            seconds: 86_400,
            nanos: 0,
        }),
        ..Default::default()
    };
    let url = app.download_url("bob", request).await.unwrap();
    assert!(url.contains("X-Amz-Expires=120"), "{url}");
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.bytes().await.unwrap().len() as i64,
        image.size_bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_reachability_of_the_stores() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let mut app = TestApp::spawn_with(Backend::Aws, &["--health-check-interval", "200ms"]).await;
    let health = HealthClient::new(crate::helpers::connect(app.grpc_addr).await);
    let status = || {
        let mut health = health.clone();
        async move {
            let request = HealthCheckRequest {
                service: "imageservice.v1.ImageService".into(),
            };
            health.check(request).await.unwrap().into_inner().status()
        }
    };
    assert_eq!(status().await, ServingStatus::Serving);

    app.dynamodb.as_mut().unwrap().kill();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while status().await != ServingStatus::NotServing {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still SERVING with DynamoDB down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The process itself stays live: only the image service is not ready.
    let overall = health
        .clone()
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(overall.into_inner().status(), ServingStatus::Serving);

    app.dynamodb.as_mut().unwrap().restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while status().await != ServingStatus::Serving {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not SERVING again after DynamoDB came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And it works again without a restart of the service.
    app.upload_png("alice", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_mid_upload_is_unavailable_and_the_service_recovers() {
    let mut app = multipart_app().await;
    let bytes = images::png_of_size(20 * 1024 * 1024, 4);
    let upload = open_upload(&app, spec("outage.png"), &bytes, 8).await;
    wait_for("multipart parts in the S3 server's data", || {
        !multipart_parts(&app).is_empty()
    })
    .await;
    app.s3.as_mut().unwrap().kill();
    for message in upload.rest {
        if upload.tx.send(message).await.is_err() {
            break;
        }
    }
    drop(upload.tx);
    let status = upload.call.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        app.list_all("alice", pb::ListImagesRequest::default())
            .await
            .unwrap()
            .is_empty(),
        "no metadata"
    );

    // S3 comes back: uploads work again without restarting the service.
    app.s3.as_mut().unwrap().restart();
    let image = app
        .upload("alice", spec("after.png"), &images::png(32, 32, 5))
        .await
        .unwrap();
    assert!(app.download("bob", &image.image_id).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repair_pass_removes_what_a_lost_call_left_behind() {
    let mut app = TestApp::spawn_with(
        Backend::Aws,
        &["--repair-interval", "300ms", "--repair-grace", "0s"],
    )
    .await;
    let kept = app
        .upload(
            "alice",
            pb::ImageSpec {
                tags: vec!["kept".into()],
                ..spec("k.png")
            },
            &images::png(4, 4, 1),
        )
        .await
        .unwrap();

    // A delete whose S3 call is lost: the metadata is gone, the bytes stay.
    let lost = app.upload_png("alice", 2).await;
    app.s3.as_mut().unwrap().kill();
    app.delete("alice", &lost.image_id)
        .await
        .expect("the delete succeeds once the metadata is gone");
    app.s3.as_mut().unwrap().restart();

    // A crash after the tag index items, before the image item.
    let half = app
        .upload(
            "alice",
            pb::ImageSpec {
                tags: vec!["half".into()],
                ..spec("h.png")
            },
            &images::png(4, 4, 3),
        )
        .await
        .unwrap();
    let dynamodb = raw_dynamodb(&app).await;
    dynamodb
        .delete_item()
        .table_name("images")
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("image#{}", half.image_id)),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S("image".into()),
        )
        .send()
        .await
        .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let objects = app.stored_objects().await;
        let tag_items = dynamodb
            .scan()
            .table_name("images")
            .filter_expression("begins_with(pk, :t)")
            .expression_attribute_values(
                ":t",
                aws_sdk_dynamodb::types::AttributeValue::S("tag#".into()),
            )
            .send()
            .await
            .unwrap()
            .count;
        // The kept image: its original and its variants' one object (a
        // 4 x 4 image's `small` and `medium` are the same).
        if objects.len() == 2 && tag_items == 1 {
            assert!(objects.iter().all(|o| o.contains(&kept.image_id)));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "left: {objects:?}, {tag_items} tag items"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = app
        .list_all("bob", pb::ListImagesRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].image_id, kept.image_id);
}

/// Each object reaches the store with the CRC32C of its bytes, which the
/// store checks before it keeps them. Over plain HTTP the bytes are also
/// covered by the request signature (the test server verifies it), unless
/// the operator turns that off for a trusted network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_reach_the_store_with_a_checksum_it_verifies() {
    use aws_sdk_s3::types::ChecksumMode;
    use base64::Engine as _;
    for signing in ["auto", "unsigned"] {
        let app = TestApp::spawn_with(Backend::Aws, &["--s3-payload-signing", signing]).await;
        let bytes = images::png_of_size(300 * 1024, 7);
        let image = app.upload("alice", spec("a.png"), &bytes).await.unwrap();
        assert_eq!(image.crc32c, crc32c::crc32c(&bytes));

        let head = raw_s3(&app)
            .await
            .head_object()
            .bucket(&app.bucket)
            .key(format!("images/{}/original", image.image_id))
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .unwrap();
        let expected = base64::engine::general_purpose::STANDARD.encode(image.crc32c.to_be_bytes());
        assert_eq!(
            head.checksum_crc32_c(),
            Some(expected.as_str()),
            "{signing}"
        );
        assert_eq!(app.download("bob", &image.image_id).await.unwrap(), bytes);
    }
}

/// Objects never change under their keys, and say so to caches that read
/// them straight from the bucket, whether stored in one call or in parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_objects_tell_caches_they_are_immutable() {
    let app = multipart_app().await;
    let small = app.upload_png("alice", 1).await;
    let large = images::png_of_size(6 * 1024 * 1024, 2);
    let large = app
        .upload("alice", spec("large.png"), &large)
        .await
        .unwrap();
    let s3 = raw_s3(&app).await;
    for key in [
        format!("images/{}/original", small.image_id),
        format!("images/{}/small", small.image_id),
        format!("images/{}/original", large.image_id),
    ] {
        let head = s3
            .head_object()
            .bucket(&app.bucket)
            .key(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.cache_control(),
            Some("public, max-age=31536000, immutable"),
            "{key}"
        );
    }
}

/// The `all` values (time shards) of the image items in the table.
async fn time_shards_in_use(app: &TestApp) -> std::collections::BTreeSet<String> {
    let scan = raw_dynamodb(app)
        .await
        .scan()
        .table_name("images")
        .filter_expression("sk = :sk")
        .expression_attribute_values(
            ":sk",
            aws_sdk_dynamodb::types::AttributeValue::S("image".into()),
        )
        .send()
        .await
        .unwrap();
    scan.items()
        .iter()
        .filter_map(|item| item.get("all")?.as_s().ok().cloned())
        .collect()
}

/// Runs `image-service init` on the test's stores with `extra` flags.
async fn init_again(app: &TestApp, extra: &[&str]) {
    image_service::commands::init_backend(&config_for(app, extra))
        .await
        .unwrap();
}

fn newest_first(images: &[pb::Image]) -> Vec<String> {
    images.iter().rev().map(|i| i.image_id.clone()).collect()
}

/// The ids of every image an unfiltered listing returns, walked in pages.
async fn listed_ids(app: &TestApp, page_size: i32, page_token: String) -> Vec<String> {
    let request = pb::ListImagesRequest {
        page_size,
        page_token,
        ..Default::default()
    };
    let all = app.list_all("viewer", request).await.unwrap();
    all.iter().map(|i| i.image_id.clone()).collect()
}

/// New images spread over the time shards, and the unfiltered listing
/// merges them: every image once, newest first, page after page, with
/// time ranges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_index_is_sharded_and_listed_as_one() {
    let app = TestApp::spawn_with(Backend::Aws, &["--dynamodb-time-shards", "4"]).await;
    let mut uploaded = Vec::new();
    for i in 0..24 {
        uploaded.push(app.upload_png(&format!("user-{}", i % 3), i).await);
    }
    let shards = time_shards_in_use(&app).await;
    assert!(shards.len() >= 3, "spread over the shards: {shards:?}");
    assert!(shards.iter().all(|s| s.starts_with("image")), "{shards:?}");
    for page_size in [1, 5, 24, 50] {
        let ids = listed_ids(&app, page_size, String::new()).await;
        assert_eq!(ids, newest_first(&uploaded), "page size {page_size}");
    }
    let window = pb::ListImagesRequest {
        created_after: uploaded[5].create_time,
        created_before: uploaded[17].create_time,
        page_size: 4,
        ..Default::default()
    };
    let ids: Vec<String> = app
        .list_all("viewer", window)
        .await
        .unwrap()
        .iter()
        .map(|i| i.image_id.clone())
        .collect();
    assert_eq!(ids, newest_first(&uploaded[5..17]));
    // Filters with their own index are unchanged.
    let mine = app
        .list_all(
            "viewer",
            pb::ListImagesRequest {
                owner_id: "user-1".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(mine.len(), 8);
}

/// A table from before the index was sharded keeps working: `init` raises
/// the shard count without rewriting anything, a page walk begun before
/// continues, and old and new images are listed together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_from_before_time_shards_lists_everything_after_init_raises_them() {
    let app = TestApp::spawn_with(Backend::Aws, &["--dynamodb-time-shards", "1"]).await;
    let mut old = Vec::new();
    for i in 0..10 {
        old.push(app.upload_png("alice", i).await);
    }
    assert_eq!(
        time_shards_in_use(&app).await,
        ["image".to_owned()].into(),
        "one partition, as before shards"
    );
    let first_page = app
        .list(
            "viewer",
            pb::ListImagesRequest {
                page_size: 4,
                ..Default::default()
            },
        )
        .await
        .unwrap();

    init_again(&app, &["--dynamodb-time-shards", "4"]).await;
    let app = app.successor(&[]).await;
    let mut new = Vec::new();
    for i in 10..22 {
        new.push(app.upload_png("bob", i).await);
    }
    assert!(time_shards_in_use(&app).await.len() >= 3);

    // The walk begun on one shard goes on over four.
    let rest = listed_ids(&app, 4, first_page.next_page_token.clone()).await;
    let walked: Vec<String> = first_page
        .images
        .iter()
        .map(|i| i.image_id.clone())
        .chain(rest)
        .collect();
    assert_eq!(walked, newest_first(&old));

    let everything: Vec<pb::Image> = old.iter().chain(&new).cloned().collect();
    let ids = listed_ids(&app, 7, String::new()).await;
    assert_eq!(ids, newest_first(&everything));

    // Lowering is not possible: images keep their shards.
    init_again(&app, &["--dynamodb-time-shards", "2"]).await;
    let app = app.successor(&[]).await;
    let again = app
        .list_all("viewer", pb::ListImagesRequest::default())
        .await;
    assert_eq!(again.unwrap().len(), 22);
}

/// An S3 client of the test's own, to look at what the service stored.
pub(crate) async fn raw_s3(app: &TestApp) -> aws_sdk_s3::Client {
    let config = raw_config(app.s3.as_ref().unwrap()).await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    )
}

/// A DynamoDB client of the test's own, to break things on purpose.
async fn raw_dynamodb(app: &TestApp) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&raw_config(app.dynamodb.as_ref().unwrap()).await)
}

async fn raw_config(server: &crate::helpers::servers::ServerProcess) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(server.endpoint())
        .load()
        .await
}

/// Starts the service process `command` and returns it with its gRPC
/// address, read from its "ready" log line.
pub(crate) fn spawn_service(
    command: &mut std::process::Command,
) -> (std::process::Child, std::net::SocketAddr) {
    try_spawn_service(command).expect("the service reports ready")
}

/// Like [`spawn_service`], `None` when the service exits before it is
/// ready (an embedded data directory still held by a server stopping).
pub(crate) fn try_spawn_service(
    command: &mut std::process::Command,
) -> Option<(std::process::Child, std::net::SocketAddr)> {
    use std::io::{BufRead, BufReader};
    let mut service = command
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(service.stderr.take().unwrap()).lines();
    let Some(ready) = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("image-service ready"))
    else {
        service.wait().unwrap();
        return None;
    };
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    let grpc = ready["fields"]["grpc"].as_str().unwrap().parse().unwrap();
    std::thread::spawn(move || lines.for_each(drop));
    Some((service, grpc))
}

/// Runs the image-service binary against the test servers.
pub(crate) fn service_command(
    s3: &crate::helpers::servers::ServerProcess,
    dynamodb: &crate::helpers::servers::ServerProcess,
) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_image-service"));
    command
        .args([
            "--backend",
            "aws",
            "--s3-endpoint",
            &s3.endpoint(),
            "--dynamodb-endpoint",
            &dynamodb.endpoint(),
        ])
        .args([
            "--s3-part-size",
            "5MiB",
            "--max-image-bytes",
            "64MiB",
            "--log-format",
            "json",
        ])
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]);
    command
}

/// Fresh S3 and DynamoDB test servers, with the service's bucket and
/// tables made by `image-service init`.
pub(crate) fn initialized_servers() -> (
    crate::helpers::servers::ServerProcess,
    crate::helpers::servers::ServerProcess,
) {
    let (s3, dynamodb) = (
        crate::helpers::servers::start_s3(),
        crate::helpers::servers::start_dynamodb(),
    );
    let init = service_command(&s3, &dynamodb)
        .arg("init")
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    (s3, dynamodb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkill_mid_upload_the_repair_pass_aborts_the_journaled_upload() {
    let (s3, dynamodb) = initialized_servers();

    let (mut service, grpc) = spawn_service(&mut service_command(&s3, &dynamodb));

    // An upload of 20 MiB, killed with the service after its first parts.
    let (tx, rx) = mpsc::channel(2);
    let mut client = image_service::pb::image_service_client::ImageServiceClient::new(
        crate::helpers::connect(grpc).await,
    );
    let call = tokio::spawn(async move {
        client
            .upload_image(as_user("alice", ReceiverStream::new(rx)))
            .await
    });
    let bytes = images::png_of_size(20 * 1024 * 1024, 9);
    for message in upload_messages(spec("killed.png"), &bytes, 1024 * 1024)
        .into_iter()
        .take(12)
    {
        tx.send(message).await.unwrap();
    }
    let data = s3.dir.path().join("data");
    let parts = || {
        std::fs::read_dir(&data)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".upload"))
            .count()
    };
    let part_files = || {
        std::fs::read_dir(&data)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".upload_id-"))
    };
    wait_for("multipart parts in the S3 server's data", part_files).await;
    // The journal entry is written right after the upload id exists.
    tokio::time::sleep(Duration::from_millis(500)).await;
    unsafe { libc::kill(service.id() as i32, libc::SIGKILL) };
    service.wait().unwrap();
    let _ = call.await;
    assert!(
        parts() > 0,
        "the killed upload left its parts (nothing could abort them)"
    );

    // A dry run reports the journaled upload; the real pass aborts it.
    let repair = |dry_run: bool| {
        let mut command = service_command(&s3, &dynamodb);
        command.args(["repair", "--grace", "0s", "--json"]);
        if dry_run {
            command.arg("--dry-run");
        }
        crate::helpers::json(&command.output().unwrap())
    };
    let report = repair(true);
    let unfinished = report["unfinished_writes"]
        .as_array()
        .expect("the journal lists it");
    assert_eq!(unfinished.len(), 1, "{report}");
    assert!(parts() > 0);
    repair(false);
    assert_eq!(parts(), 0, "the repair pass aborted the multipart upload");
    let report = repair(false);
    assert!(
        report["unfinished_writes"]
            .as_array()
            .is_none_or(|w| w.is_empty()),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_session_loses_only_what_it_had_not_stored() {
    let (s3, dynamodb) = initialized_servers();
    let session_flags = [
        "--upload-session-segment-size",
        "64KiB",
        "--upload-idle-timeout",
        "2s",
    ];
    let replica = || {
        let mut command = service_command(&s3, &dynamodb);
        command.args(session_flags);
        spawn_service(&mut command)
    };
    let client = |grpc| async move {
        pb::image_service_client::ImageServiceClient::new(crate::helpers::connect(grpc).await)
    };
    let held = |mut client: pb::image_service_client::ImageServiceClient<_>, id: String| async move {
        client
            .query_upload_status(as_user(
                "alice",
                pb::QueryUploadStatusRequest { upload_id: id },
            ))
            .await
            .unwrap()
            .into_inner()
            .persisted_size
    };
    let photo = images::photo_jpeg(1200, 900);
    let (mut first, grpc) = replica();
    let mut a = client(grpc).await;
    let id = a
        .start_upload(as_user(
            "alice",
            pb::StartUploadRequest {
                spec: Some(spec("killed.jpg")),
                expected_size: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
        .upload_id;

    // Three segments and a bit: the segments are stored, the bit is not.
    let (tx, rx) = mpsc::channel(64);
    let mut streaming = a.clone();
    let call = tokio::spawn(async move {
        streaming
            .upload_image(as_user("alice", ReceiverStream::new(rx)))
            .await
    });
    let sent = 3 * 65536 + 8000;
    tx.send(pb::UploadImageRequest {
        data: Some(pb::upload_image_request::Data::Resume(pb::ResumeUpload {
            upload_id: id.clone(),
            write_offset: 0,
        })),
        ..Default::default()
    })
    .await
    .unwrap();
    for chunk in photo[..sent].chunks(10_000) {
        tx.send(pb::UploadImageRequest {
            data: Some(pb::upload_image_request::Data::Chunk(
                bytes::Bytes::copy_from_slice(chunk),
            )),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while held(a.clone(), id.clone()).await < 3 * 65536 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "segments are stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unsafe { libc::kill(first.id() as i32, libc::SIGKILL) };
    first.wait().unwrap();
    let _ = call.await;

    // Another replica sees the stored segments; the dead one's lease runs
    // out, then the resume goes through.
    let (mut second, grpc) = replica();
    let b = client(grpc).await;
    let persisted = held(b.clone(), id.clone()).await as usize;
    assert_eq!(persisted, 3 * 65536, "exactly the stored segments survive");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let image = loop {
        let mut messages = vec![pb::UploadImageRequest {
            data: Some(pb::upload_image_request::Data::Resume(pb::ResumeUpload {
                upload_id: id.clone(),
                write_offset: persisted as i64,
            })),
            ..Default::default()
        }];
        messages.extend(
            photo[persisted..]
                .chunks(65536)
                .map(|chunk| pb::UploadImageRequest {
                    data: Some(pb::upload_image_request::Data::Chunk(
                        bytes::Bytes::copy_from_slice(chunk),
                    )),
                    ..Default::default()
                }),
        );
        messages.last_mut().unwrap().finish_write = true;
        let result = b
            .clone()
            .upload_image(as_user("alice", tokio_stream::iter(messages)))
            .await;
        match result {
            Ok(response) => break response.into_inner().image.unwrap(),
            Err(status) if status.code() == Code::Aborted => {
                assert!(tokio::time::Instant::now() < deadline, "the lease runs out");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(status) => panic!("the resume failed: {status:?}"),
        }
    };
    assert_eq!(image.uploaded_sha256, hex::encode(Sha256::digest(&photo)));
    let _ = second.kill();
    let _ = second.wait();
}

/// Every event of the log, from the oldest, until none comes for a second.
async fn every_event(grpc: std::net::SocketAddr, watcher: &str) -> Vec<pb::ImageEvent> {
    let mut client =
        pb::image_service_client::ImageServiceClient::new(crate::helpers::connect(grpc).await);
    let request = pb::WatchImageEventsRequest {
        cursor: "oldest".into(),
        ..Default::default()
    };
    let mut stream = client
        .watch_image_events(as_user(watcher, request))
        .await
        .expect("a watch")
        .into_inner();
    let mut events = Vec::new();
    while let Ok(message) = tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
        events.push(
            message
                .expect("the stream goes on")
                .expect("open")
                .event
                .unwrap(),
        );
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkill_mid_change_every_change_made_has_its_event_after_the_repair_pass() {
    let (s3, dynamodb) = initialized_servers();
    let watchers = ["--event-watchers", "feed"];
    let (mut service, grpc) = spawn_service(service_command(&s3, &dynamodb).args(watchers));
    let mut client =
        pb::image_service_client::ImageServiceClient::new(crate::helpers::connect(grpc).await);
    let mut ids = Vec::new();
    for seed in 0..4 {
        let image = client
            .upload_image(as_user(
                "alice",
                tokio_stream::iter(upload_messages(
                    spec("a.png"),
                    &images::png(8, 8, seed),
                    1 << 16,
                )),
            ))
            .await
            .unwrap()
            .into_inner()
            .image
            .unwrap();
        ids.push(image.image_id);
    }
    // Edits and deletes in flight on every image when the replica dies.
    let mut calls = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let (mut client, id) = (client.clone(), id.clone());
        calls.push(tokio::spawn(async move {
            for i in 0.. {
                let request = pb::UpdateImageRequest {
                    image_id: id.clone(),
                    title: format!("edit {i}"),
                    ..Default::default()
                };
                if client
                    .update_image(as_user("alice", request))
                    .await
                    .is_err()
                {
                    break;
                }
                if n == 0 && i == 5 {
                    let request = pb::DeleteImageRequest {
                        image_id: id.clone(),
                    };
                    let _ = client.delete_image(as_user("alice", request)).await;
                    break;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    unsafe { libc::kill(service.id() as i32, libc::SIGKILL) };
    service.wait().unwrap();
    for call in calls {
        let _ = call.await;
    }

    let report = crate::helpers::json(
        &service_command(&s3, &dynamodb)
            .args(["repair", "--grace", "0s", "--json"])
            .output()
            .unwrap(),
    );
    assert!(report["unannounced_changes"].is_u64(), "{report}");
    let (mut service, grpc) = spawn_service(service_command(&s3, &dynamodb).args(watchers));
    let events = every_event(grpc, "feed").await;
    let mut client =
        pb::image_service_client::ImageServiceClient::new(crate::helpers::connect(grpc).await);
    for id in &ids {
        let request = pb::GetImageRequest {
            image_id: id.clone(),
        };
        match client.get_image(as_user("alice", request)).await {
            Ok(image) => {
                let etag = image.into_inner().image.unwrap().etag;
                assert!(
                    events.iter().any(|e| e.image_id == *id && e.etag == etag),
                    "the change to {etag} of {id} has its event"
                );
                assert!(
                    !events
                        .iter()
                        .any(|e| e.image_id == *id && e.r#type() == pb::ImageEventType::Deleted),
                    "an image still there has no delete event"
                );
            }
            Err(status) => {
                assert_eq!(status.code(), Code::NotFound);
                assert!(
                    events
                        .iter()
                        .any(|e| e.image_id == *id && e.r#type() == pb::ImageEventType::Deleted),
                    "a deleted image has its delete event"
                );
            }
        }
    }
    let again = crate::helpers::json(
        &service_command(&s3, &dynamodb)
            .args(["repair", "--grace", "0s", "--json"])
            .output()
            .unwrap(),
    );
    assert_eq!(again["unannounced_changes"], 0, "{again}");
    unsafe { libc::kill(service.id() as i32, libc::SIGTERM) };
    service.wait().unwrap();
}
