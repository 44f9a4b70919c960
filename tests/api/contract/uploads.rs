//! What an upload stores, and what a refused or cancelled one leaves: nothing.
use super::*;

pub(super) async fn an_upload_is_described_by_its_metadata(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let bytes = images::png(640, 480, 1);
    let image = app
        .upload(
            "alice",
            pb::ImageSpec {
                filename: "../holidays/beach.png".into(),
                content_type: Some("image/png".into()),
                title: "  Beach  ".into(),
                description: "Sand\nand sea".into(),
                tags: vec!["#Summer".into(), "sea".into(), "summer".into()],
                location: "Biarritz".into(),
                attributes: [("camera".to_owned(), "x100v".to_owned())].into(),
                expected_size: Some(bytes.len() as i64),
                sha256: Some(sha256_hex(&bytes)),
                crc32c: Some(crc32c::crc32c(&bytes)),
                idempotency_key: None,
            },
            &bytes,
        )
        .await
        .unwrap();
    assert_eq!(image.owner_id, "alice");
    assert_eq!(image.filename, "beach.png");
    assert_eq!(image.content_type, "image/png");
    assert_eq!(image.size_bytes, bytes.len() as i64);
    assert_eq!(image.sha256, sha256_hex(&bytes));
    assert_eq!(image.crc32c, crc32c::crc32c(&bytes));
    assert_eq!((image.width, image.height), (640, 480));
    assert_eq!(image.title, "Beach");
    assert_eq!(image.description, "Sand\nand sea");
    assert_eq!(image.tags, vec!["summer", "sea"]);
    assert_eq!(image.location, "Biarritz");
    assert_eq!(
        image.attributes.get("camera").map(String::as_str),
        Some("x100v")
    );
    assert!(image.create_time.is_some() && image.update_time == image.create_time);
    assert_eq!(
        uuid::Uuid::parse_str(&image.image_id)
            .unwrap()
            .get_version_num(),
        7
    );

    let fetched = app.get("bob", &image.image_id).await.unwrap();
    assert_eq!(
        fetched,
        pb::Image {
            uploaded_sha256: String::new(),
            pdq_hash: String::new(),
            pdq_quality: 0,
            ..image.clone()
        },
        "any identified caller reads the same metadata, but the hashes of the upload"
    );
    assert_eq!(image.pdq_hash.len(), 64, "its owner sees its PDQ hash");
    assert_eq!(app.get("alice", &image.image_id).await.unwrap(), image);
}

pub(super) async fn every_accepted_type_is_sniffed_from_the_bytes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let cases = [
        (images::png(3, 2, 7), "image/png", (3, 2)),
        (images::jpeg(1024, 768), "image/jpeg", (1024, 768)),
        (images::gif(10, 20), "image/gif", (10, 20)),
    ];
    for (bytes, content_type, (width, height)) in cases {
        // Named and declared wrongly on purpose: the bytes decide.
        let image = app.upload("alice", spec("file.bin"), &bytes).await.unwrap();
        assert_eq!(image.content_type, content_type);
        assert_eq!((image.width, image.height), (width, height));
    }
}

/// Uploads `messages` and asserts the status, and that nothing was stored.
async fn assert_rejected(
    app: &TestApp,
    messages: Vec<pb::UploadImageRequest>,
    code: Code,
) -> tonic::Status {
    let before = app.stored_objects().await;
    let listed_before = app
        .list_all("mallory", pb::ListImagesRequest::default())
        .await
        .unwrap()
        .len();
    let status = assert_code(app.upload_messages("mallory", messages).await, code);
    assert_eq!(
        app.wait_for_stored_objects(before.len()).await,
        before,
        "a rejected upload stored bytes"
    );
    let listed = app
        .list_all("mallory", pb::ListImagesRequest::default())
        .await
        .unwrap()
        .len();
    assert_eq!(listed, listed_before, "a rejected upload stored metadata");
    status
}

pub(super) async fn rejected_uploads_store_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.upload_png("mallory", 0).await; // something to compare against
    let png = images::png(32, 32, 9);
    let chunk = |data: &[u8]| pb::UploadImageRequest {
        data: Some(Data::Chunk(bytes::Bytes::copy_from_slice(data))),
        ..Default::default()
    };
    let with_spec = |spec: pb::ImageSpec| upload_messages(spec, &png, 1000);

    // Not an image, whatever it is called.
    let text = b"<html><script>alert(1)</script></html>".repeat(10);
    assert_rejected(
        &app,
        upload_messages(spec("x.png"), &text, 100),
        Code::InvalidArgument,
    )
    .await;
    // A declared type that disagrees with the bytes.
    let jpeg_claim = pb::ImageSpec {
        content_type: Some("image/jpeg".into()),
        ..spec("x.jpg")
    };
    assert_rejected(&app, with_spec(jpeg_claim), Code::InvalidArgument).await;
    let not_image_type = pb::ImageSpec {
        content_type: Some("text/html".into()),
        ..spec("x")
    };
    assert_rejected(&app, with_spec(not_image_type), Code::InvalidArgument).await;
    // Sizes.
    let short = pb::ImageSpec {
        expected_size: Some(png.len() as i64 + 1),
        ..spec("x")
    };
    assert_rejected(&app, with_spec(short), Code::OutOfRange).await;
    let long = pb::ImageSpec {
        expected_size: Some(png.len() as i64 - 1),
        ..spec("x")
    };
    assert_rejected(&app, with_spec(long), Code::OutOfRange).await;
    let huge_claim = pb::ImageSpec {
        expected_size: Some(1 << 40),
        ..spec("x")
    };
    assert_rejected(&app, with_spec(huge_claim), Code::ResourceExhausted).await;
    let too_big = images::png_of_size(crate::helpers::TEST_MAX_IMAGE_BYTES + 1, 1);
    let status = assert_rejected(
        &app,
        upload_messages(spec("x"), &too_big, 256 * 1024),
        Code::ResourceExhausted,
    )
    .await;
    assert!(status.message().contains("limit"), "{status:?}");
    // Checksums.
    let bad_sha = pb::ImageSpec {
        sha256: Some(sha256_hex(b"other")),
        ..spec("x")
    };
    assert_rejected(&app, with_spec(bad_sha), Code::DataLoss).await;
    let bad_crc = pb::ImageSpec {
        crc32c: Some(crc32c::crc32c(&png) ^ 1),
        ..spec("x")
    };
    assert_rejected(&app, with_spec(bad_crc), Code::DataLoss).await;
    let mut bad_chunk_crc = with_spec(spec("x"));
    bad_chunk_crc[2].chunk_crc32c = Some(12345);
    assert_rejected(&app, bad_chunk_crc, Code::DataLoss).await;
    let malformed_sha = pb::ImageSpec {
        sha256: Some("xyz".into()),
        ..spec("x")
    };
    assert_rejected(&app, with_spec(malformed_sha), Code::InvalidArgument).await;
    // Pixels: a header claiming 40 000 x 40 000 is refused from the header.
    let bomb = images::png_header_only(40_000, 40_000);
    assert_rejected(
        &app,
        upload_messages(spec("bomb.png"), &bomb, 1000),
        Code::ResourceExhausted,
    )
    .await;
    // Stream shape.
    let mut chunk_first = vec![chunk(&png)];
    chunk_first.extend(with_spec(spec("x")));
    assert_rejected(&app, chunk_first, Code::InvalidArgument).await;
    let mut spec_twice = with_spec(spec("x"));
    spec_twice.insert(
        2,
        pb::UploadImageRequest {
            data: Some(Data::Spec(spec("y"))),
            ..Default::default()
        },
    );
    assert_rejected(&app, spec_twice, Code::InvalidArgument).await;
    let mut unfinished = with_spec(spec("x"));
    unfinished.last_mut().unwrap().finish_write = false;
    let status = assert_rejected(&app, unfinished, Code::InvalidArgument).await;
    assert!(status.message().contains("finish_write"), "{status:?}");
    assert_rejected(
        &app,
        upload_messages(spec("empty"), &[], 10),
        Code::InvalidArgument,
    )
    .await;
    assert_rejected(&app, vec![], Code::InvalidArgument).await;
    // Metadata limits.
    let long_title = pb::ImageSpec {
        title: "t".repeat(201),
        ..spec("x")
    };
    assert_rejected(&app, with_spec(long_title), Code::InvalidArgument).await;
    let long_description = pb::ImageSpec {
        description: "d".repeat(2201),
        ..spec("x")
    };
    assert_rejected(&app, with_spec(long_description), Code::InvalidArgument).await;
    let many_tags = pb::ImageSpec {
        tags: (0..31).map(|i| format!("t{i}")).collect(),
        ..spec("x")
    };
    assert_rejected(&app, with_spec(many_tags), Code::InvalidArgument).await;
    let long_tag = pb::ImageSpec {
        tags: vec!["x".repeat(65)],
        ..spec("x")
    };
    assert_rejected(&app, with_spec(long_tag), Code::InvalidArgument).await;
    let long_location = pb::ImageSpec {
        location: "l".repeat(201),
        ..spec("x")
    };
    assert_rejected(&app, with_spec(long_location), Code::InvalidArgument).await;
    let control = pb::ImageSpec {
        title: "bell\u{7}".into(),
        ..spec("x")
    };
    assert_rejected(&app, with_spec(control), Code::InvalidArgument).await;
    let many_attributes = pb::ImageSpec {
        attributes: (0..33).map(|i| (format!("k{i}"), "v".into())).collect(),
        ..spec("x")
    };
    assert_rejected(&app, with_spec(many_attributes), Code::InvalidArgument).await;
    let big_attribute = pb::ImageSpec {
        attributes: [("k".into(), "v".repeat(1025))].into(),
        ..spec("x")
    };
    assert_rejected(&app, with_spec(big_attribute), Code::InvalidArgument).await;
}

pub(super) async fn a_cancelled_upload_stores_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let before = app.stored_objects().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut client = app.client();
    let call = tokio::spawn(async move { client.upload_image(as_user("alice", stream)).await });
    let png = images::png_of_size(1024 * 1024, 4);
    let messages = upload_messages(spec("c.png"), &png, 64 * 1024);
    let count = messages.len();
    for message in messages.into_iter().take(count - 2) {
        tx.send(message).await.unwrap();
    }
    // Give the server time to write the chunks, then cancel the call.
    tokio::time::sleep(Duration::from_millis(200)).await;
    call.abort();
    let _ = call.await;
    drop(tx);
    assert_eq!(app.wait_for_stored_objects(before.len()).await, before);
    let listed = app
        .list_all("alice", pb::ListImagesRequest::default())
        .await
        .unwrap();
    assert!(listed.is_empty());
}

pub(super) async fn an_idempotency_key_returns_the_first_image(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let bytes = images::png(6, 6, 6);
    let keyed = |key: &str| pb::ImageSpec {
        idempotency_key: Some(key.into()),
        ..spec("k.png")
    };
    let first = app
        .upload("alice", keyed("upload-1"), &bytes)
        .await
        .unwrap();
    let again = app
        .upload("alice", keyed("upload-1"), &bytes)
        .await
        .unwrap();
    assert_eq!(again.image_id, first.image_id);
    let status = assert_code(
        app.upload("alice", keyed("upload-1"), &images::png(6, 6, 7))
            .await,
        Code::AlreadyExists,
    );
    assert!(status.message().contains("idempotency_key"));
    // Keys are per owner.
    let bobs = app.upload("bob", keyed("upload-1"), &bytes).await.unwrap();
    assert_ne!(bobs.image_id, first.image_id);
    let listed = app.list_all(
        "alice",
        pb::ListImagesRequest {
            owner_id: "alice".into(),
            ..Default::default()
        },
    );
    assert_eq!(listed.await.unwrap().len(), 1);
    // Two images, each an original and its variants' one object (a 6 x 6
    // image's `small` and `medium` are the same): no duplicates.
    assert_eq!(app.stored_objects().await.len(), 4, "no duplicate bytes");
}

/// Uploads sent at once with one idempotency key (a client retrying
/// before the first answer came, on two replicas where there are) store
/// one image, which each of them returns, and count it once.
pub(super) async fn concurrent_uploads_with_one_key_store_one_image(backend: Backend) {
    let first = TestApp::spawn_with(backend, &["--max-uploads-per-user", "16"]).await;
    let second = match backend {
        Backend::Aws => Some(first.replica(&["--max-uploads-per-user", "16"]).await),
        Backend::Embedded => None,
    };
    for round in 0..3u32 {
        let bytes = images::png(32, 32, 100 + round);
        let key = format!("retry-{round}");
        let uploads = (0..6).map(|i| {
            let app = match (&second, i % 2) {
                (Some(second), 1) => second,
                _ => &first,
            };
            let spec = pb::ImageSpec {
                idempotency_key: Some(key.clone()),
                ..spec("k.png")
            };
            let bytes = &bytes;
            async move { app.upload("alice", spec, bytes).await }
        });
        let results = futures::future::join_all(uploads).await;
        let ids: std::collections::HashSet<String> = results
            .into_iter()
            .map(|r| r.expect("each returns the image").image_id)
            .collect();
        assert_eq!(ids.len(), 1, "round {round}: {ids:?}");
    }
    let listed = first.list_all("alice", owned_by("alice")).await.unwrap();
    assert_eq!(listed.len(), 3, "one image per key");
    let usage = super::quotas::usage(&first, "alice", "").await.unwrap();
    assert_eq!(usage.images_held, 3, "counted once each");
}

pub(super) async fn many_users_upload_at_once(backend: Backend) {
    let app = std::sync::Arc::new(TestApp::spawn(backend).await);
    let mut tasks = Vec::new();
    for user in 0..12 {
        for n in 0..4u32 {
            let app = app.clone();
            tasks.push(tokio::spawn(async move {
                let owner = format!("user-{user}");
                let bytes = images::png(64, 64 + n, user * 10 + n);
                let image = app.upload(&owner, spec("c.png"), &bytes).await.unwrap();
                assert_eq!(image.sha256, sha256_hex(&bytes));
                (owner, image.image_id, bytes)
            }));
        }
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    for user in 0..12 {
        let owner = format!("user-{user}");
        let request = pb::ListImagesRequest {
            owner_id: owner.clone(),
            ..Default::default()
        };
        assert_eq!(app.list_all("x", request).await.unwrap().len(), 4);
    }
    for (_, id, bytes) in results {
        assert!(app.download("x", &id).await.unwrap() == bytes);
    }
}

pub(super) async fn an_upload_deleted_at_once_is_gone(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for i in 0..5 {
        let image = app.upload_png("alice", i).await;
        app.delete("alice", &image.image_id).await.unwrap();
        assert_code(app.get("alice", &image.image_id).await, Code::NotFound);
    }
    app.assert_nothing_stored("alice").await;
}

pub(super) async fn images_that_cannot_be_decoded_are_refused_and_leave_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let kept = app.upload_png("alice", 1).await;
    let before = app.stored_objects().await;
    // Cut off in the middle of its scan data.
    let jpeg = images::jpeg(800, 600);
    let truncated = &jpeg[..jpeg.len() * 2 / 3];
    let status = assert_code(
        app.upload("alice", spec("cut.jpg"), truncated).await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("truncated"), "{status:?}");
    // Whole and well-formed, but its compressed pixels are noise: it passes
    // sniffing and the header checks, and fails when its image data is
    // inflated (by the scrubber, which follows the zlib stream, or else by
    // the decoder).
    let corrupt = images::png_with_corrupt_pixels(64, 64);
    let status = assert_code(
        app.upload("alice", spec("noise.png"), &corrupt).await,
        Code::InvalidArgument,
    );
    assert!(
        status.message().contains("corrupt") || status.message().contains("decode"),
        "{status:?}"
    );
    assert_eq!(app.wait_for_stored_objects(before.len()).await, before);
    let listed = app
        .list_all("alice", pb::ListImagesRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].image_id, kept.image_id);
}

/// A decompression bomb is refused from its header, while the caller is
/// still sending: the server never waits for (or decodes) its pixels.
pub(super) async fn a_pixel_bomb_is_refused_before_its_pixels_arrive(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let header = images::png_header_only(40_000, 40_000);
    // The rest of the "image" never comes.
    let result = answer_with_the_stream_open(&app, "alice", "bomb.png", &header[..64], 64).await;
    let status = assert_code(result, Code::ResourceExhausted);
    assert!(status.message().contains("40000x40000"), "{status:?}");
    assert!(app.wait_for_stored_objects(0).await.is_empty());
}

/// Sends `bytes` as `user`'s upload of `name`, in messages of `chunk`
/// bytes, and keeps the stream open (no `finish_write`): an answer can only
/// come from what was sent.
async fn answer_with_the_stream_open(
    app: &TestApp,
    user: &str,
    name: &str,
    bytes: &[u8],
    chunk: usize,
) -> Result<tonic::Response<pb::UploadImageResponse>, Status> {
    let mut messages = upload_messages(spec(name), bytes, chunk);
    messages.last_mut().unwrap().finish_write = false;
    let (tx, rx) = tokio::sync::mpsc::channel(messages.len());
    for message in messages {
        tx.send(message).await.unwrap();
    }
    let mut client = app.client();
    let call = client.upload_image(as_user(
        user,
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    let result = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("answered without the rest of the stream");
    drop(tx);
    result
}

/// A progressive JPEG built to spend a decoder's CPU (499 scans each
/// coding the whole AC band again, 64 megapixels in a few hundred
/// kilobytes; it took 40 s of CPU to render) is refused from its scan
/// headers while the stream is still open, before any decode, naming the
/// flag; a progressive phone photo and mozjpeg's own progressive file are
/// still accepted with their variants, and the flag is what decides.
pub(super) async fn a_jpeg_built_to_spend_cpu_is_refused_from_its_scan_headers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let crafted = images::repeated_scans_jpeg(8000, 8000, 499);
    // Only the headers can have refused it: the stream stays open.
    let result = answer_with_the_stream_open(&app, "mallory", "scans.jpg", &crafted, 64 * 1024);
    let status = assert_code(result.await, Code::ResourceExhausted);
    assert!(
        status.message().contains("--max-jpeg-decode-passes"),
        "{status:?}"
    );
    app.assert_nothing_stored("mallory").await;

    let shot = images::PhoneShot {
        width: 1600,
        height: 1200,
        progressive: true,
        subsampled: true,
        orientation: 1,
        quality: 90,
        seed: 4,
    };
    let photo = images::phone_shot(&shot);
    let settings = image_service::media::variants::encode::Jpeg {
        coder: image_service::media::variants::encode::JpegCoder::MozjpegTrellis,
        ..image_service::media::variants::encode::JPEG_BASELINE
    };
    let mozjpeg =
        image_service::media::variants::encode::jpeg(&images::scene(1600, 1200, 5), None, settings)
            .unwrap();
    for (name, file) in [("photo.jpg", &photo), ("mozjpeg.jpg", &mozjpeg)] {
        let image = app.upload("alice", spec(name), file).await.unwrap();
        assert_eq!(image.variants.len(), 2, "{name}: {image:?}");
    }

    // One pass is what a baseline file takes; a progressive photo more.
    let strict = TestApp::spawn_with(backend, &["--max-jpeg-decode-passes", "1"]).await;
    let status = assert_code(
        strict.upload("alice", spec("photo.jpg"), &photo).await,
        Code::ResourceExhausted,
    );
    assert!(
        status.message().contains("more than 1 passes"),
        "{status:?}"
    );
}
