//! The contract suite: every behaviour of the API that callers rely on,
//! driven over a real socket with the generated client. It runs against
//! every storage backend (see the `contract_suite!` list at the bottom).
mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::images;
use common::{Backend, TestApp, as_user, assert_code, upload_messages};
use image_service::pb;
use image_service::pb::upload_image_request::Data;
use sha2::{Digest, Sha256};
use tonic::Code;

fn spec(filename: &str) -> pb::ImageSpec {
    pb::ImageSpec {
        filename: filename.into(),
        ..Default::default()
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn an_upload_is_described_by_its_metadata(backend: Backend) {
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
            ..image.clone()
        },
        "any identified caller reads the same metadata, but the hash of the upload"
    );
    assert_eq!(app.get("alice", &image.image_id).await.unwrap(), image);
}

async fn every_accepted_type_is_sniffed_from_the_bytes(backend: Backend) {
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

async fn downloads_return_the_stored_bytes_in_chunks_of_at_most_one_mib(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let bytes = images::png_of_size(3 * 1024 * 1024 + 123, 2);
    let image = app.upload("alice", spec("big.png"), &bytes).await.unwrap();
    let request = pb::DownloadImageRequest {
        image_id: image.image_id.clone(),
        ..Default::default()
    };
    let (first, body) = app.download_range("bob", request).await.unwrap();
    assert_eq!(first.image.unwrap().image_id, image.image_id);
    let range = first.content_range.unwrap();
    assert_eq!(
        (range.offset, range.length, range.total_size),
        (0, bytes.len() as i64, bytes.len() as i64)
    );
    assert!(
        body == bytes,
        "downloaded bytes differ from the uploaded ones"
    );
}

async fn ranged_downloads_return_exactly_the_range(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let bytes = images::png(64, 64, 3);
    let image = app.upload("alice", spec("r.png"), &bytes).await.unwrap();
    let id = image.image_id.clone();
    let read = |offset, limit| pb::DownloadImageRequest {
        image_id: id.clone(),
        read_offset: offset,
        read_limit: limit,
        ..Default::default()
    };
    let (first, body) = app.download_range("bob", read(100, 50)).await.unwrap();
    assert_eq!(body, &bytes[100..150]);
    let range = first.content_range.unwrap();
    assert_eq!((range.offset, range.length), (100, 50));

    let (_, tail) = app
        .download_range("bob", read(bytes.len() as i64 - 10, 0))
        .await
        .unwrap();
    assert_eq!(tail, &bytes[bytes.len() - 10..]);
    let (_, clipped) = app
        .download_range("bob", read(bytes.len() as i64 - 5, 1000))
        .await
        .unwrap();
    assert_eq!(clipped, &bytes[bytes.len() - 5..]);
    let (_, empty) = app
        .download_range("bob", read(bytes.len() as i64, 0))
        .await
        .unwrap();
    assert!(empty.is_empty());

    assert_code(
        app.download_range("bob", read(bytes.len() as i64 + 1, 0))
            .await,
        Code::OutOfRange,
    );
    assert_code(
        app.download_range("bob", read(-1, 0)).await,
        Code::InvalidArgument,
    );
    let mut other_variant = read(0, 0);
    other_variant.variant = "huge".into();
    assert_code(
        app.download_range("bob", other_variant).await,
        Code::NotFound,
    );
}

async fn unknown_and_malformed_ids_are_told_apart(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_code(app.get("alice", &unknown).await, Code::NotFound);
    assert_code(app.download("alice", &unknown).await, Code::NotFound);
    assert_code(app.get("alice", "not-an-id").await, Code::InvalidArgument);
    assert_code(app.get("alice", "").await, Code::InvalidArgument);
    assert_code(
        app.delete("alice", "../../etc").await,
        Code::InvalidArgument,
    );
}

async fn every_call_needs_an_identity(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let image = app.upload_png("alice", 1).await;
    let mut client = app.client();
    let get = tonic::Request::new(pb::GetImageRequest {
        image_id: image.image_id.clone(),
    });
    assert_code(client.get_image(get).await, Code::Unauthenticated);
    let list = tonic::Request::new(pb::ListImagesRequest::default());
    assert_code(client.list_images(list).await, Code::Unauthenticated);
    let upload = tonic::Request::new(tokio_stream::iter(upload_messages(
        spec("a.png"),
        &images::png(2, 2, 1),
        1024,
    )));
    assert_code(client.upload_image(upload).await, Code::Unauthenticated);
    let mut blank = tonic::Request::new(pb::DeleteImageRequest {
        image_id: image.image_id.clone(),
    });
    blank
        .metadata_mut()
        .insert("x-user-id", "".parse().unwrap());
    assert_code(client.delete_image(blank).await, Code::Unauthenticated);
    assert!(
        app.get("alice", &image.image_id).await.is_ok(),
        "nothing was deleted"
    );
}

/// Uploads images with varied metadata; returns them oldest first.
async fn seed_catalogue(app: &TestApp) -> Vec<pb::Image> {
    let mut uploaded = Vec::new();
    let cases: [(&str, &[&str], &str, bool); 8] = [
        ("alice", &["sea", "summer"], "Biarritz", true),
        ("alice", &["sea"], "Paris", false),
        ("bob", &["summer"], "Biarritz", true),
        ("bob", &["sea", "winter"], "", false),
        ("carol", &[], "Paris", true),
        ("alice", &["winter"], "Biarritz", false),
        ("bob", &["sea"], "Biarritz", true),
        ("carol", &["sea", "summer"], "Biarritz", false),
    ];
    for (i, (owner, tags, location, png)) in cases.into_iter().enumerate() {
        let bytes = if png {
            images::png(4, 4, i as u32)
        } else {
            images::jpeg(40 + i as u16, 30)
        };
        let spec = pb::ImageSpec {
            filename: format!("{i}"),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            location: location.into(),
            ..Default::default()
        };
        uploaded.push(app.upload(owner, spec, &bytes).await.unwrap());
        // Distinct creation times, so "newest first" is well defined.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    uploaded
}

fn ids(images: &[pb::Image]) -> Vec<String> {
    images.iter().map(|i| i.image_id.clone()).collect()
}

async fn each_filter_alone_and_combined_returns_matches_newest_first(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let all = seed_catalogue(&app).await;
    let expect = |keep: &dyn Fn(&pb::Image) -> bool| -> Vec<String> {
        ids(&all
            .iter()
            .rev()
            .filter(|i| keep(i))
            .cloned()
            .collect::<Vec<_>>())
    };
    let query = |f: &dyn Fn(&mut pb::ListImagesRequest)| {
        let mut request = pb::ListImagesRequest::default();
        f(&mut request);
        request
    };
    let cases: Vec<(pb::ListImagesRequest, Vec<String>)> = vec![
        (query(&|_| {}), expect(&|_| true)),
        (
            query(&|r| r.owner_id = "alice".into()),
            expect(&|i| i.owner_id == "alice"),
        ),
        (
            query(&|r| r.tag = "#SEA".into()),
            expect(&|i| i.tags.contains(&"sea".into())),
        ),
        (
            query(&|r| r.location = "Biarritz".into()),
            expect(&|i| i.location == "Biarritz"),
        ),
        (
            query(&|r| r.content_type = "image/jpeg".into()),
            expect(&|i| i.content_type == "image/jpeg"),
        ),
        (
            query(&|r| {
                r.owner_id = "bob".into();
                r.tag = "sea".into();
            }),
            expect(&|i| i.owner_id == "bob" && i.tags.contains(&"sea".into())),
        ),
        (
            query(&|r| {
                r.tag = "summer".into();
                r.location = "Biarritz".into();
                r.content_type = "image/png".into();
            }),
            expect(&|i| {
                i.tags.contains(&"summer".into())
                    && i.location == "Biarritz"
                    && i.content_type == "image/png"
            }),
        ),
        (
            query(&|r| {
                r.owner_id = "carol".into();
                r.tag = "summer".into();
                r.location = "Biarritz".into();
                r.content_type = "image/jpeg".into();
            }),
            expect(&|i| i.owner_id == "carol" && i.tags.contains(&"summer".into())),
        ),
        (query(&|r| r.owner_id = "nobody".into()), vec![]),
        (query(&|r| r.tag = "autumn".into()), vec![]),
    ];
    for (request, expected) in cases {
        let listed = app.list_all("dave", request.clone()).await.unwrap();
        assert_eq!(ids(&listed), expected, "filter {request:?}");
        assert!(!expected.is_empty() || listed.is_empty());
    }
}

async fn time_ranges_bound_the_listing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let all = seed_catalogue(&app).await;
    let after = all[2].create_time.unwrap();
    let before = all[6].create_time.unwrap();
    let request = pb::ListImagesRequest {
        created_after: Some(after),
        created_before: Some(before),
        ..Default::default()
    };
    let listed = app.list_all("dave", request).await.unwrap();
    assert_eq!(
        ids(&listed),
        ids(&all[2..6].iter().rev().cloned().collect::<Vec<_>>())
    );

    let request = pb::ListImagesRequest {
        owner_id: "bob".into(),
        created_after: Some(after),
        ..Default::default()
    };
    let listed = app.list_all("dave", request).await.unwrap();
    let expected: Vec<_> = all[2..]
        .iter()
        .rev()
        .filter(|i| i.owner_id == "bob")
        .cloned()
        .collect();
    assert_eq!(ids(&listed), ids(&expected));

    let inverted = pb::ListImagesRequest {
        created_after: Some(before),
        created_before: Some(after),
        ..Default::default()
    };
    assert_code(app.list("dave", inverted).await, Code::InvalidArgument);
}

async fn a_page_walk_returns_every_image_exactly_once_in_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut uploaded = Vec::new();
    for i in 0..23 {
        uploaded.push(
            app.upload_png(if i % 3 == 0 { "bob" } else { "alice" }, i)
                .await
                .image_id,
        );
    }
    for (filter, page_size) in [
        (String::new(), 5),
        ("alice".to_owned(), 4),
        (String::new(), 1000),
    ] {
        let request = pb::ListImagesRequest {
            owner_id: filter.clone(),
            page_size,
            ..Default::default()
        };
        let mut pages = 0;
        let mut seen = Vec::new();
        let mut next = request.clone();
        loop {
            let page = app.list("dave", next.clone()).await.unwrap();
            assert!(page.images.len() <= page_size as usize);
            pages += 1;
            seen.extend(ids(&page.images));
            if page.next_page_token.is_empty() {
                break;
            }
            next.page_token = page.next_page_token;
        }
        let mut expected: Vec<_> = uploaded
            .iter()
            .enumerate()
            .filter(|(i, _)| filter.is_empty() || i % 3 != 0)
            .map(|(_, id)| id.clone())
            .collect();
        expected.reverse();
        assert_eq!(
            seen, expected,
            "walk with owner {filter:?} page size {page_size}"
        );
        assert_eq!(pages, expected.len().div_ceil(page_size as usize).max(1));
        assert_eq!(
            seen.iter().collect::<HashSet<_>>().len(),
            seen.len(),
            "no duplicates"
        );
    }
}

async fn sparse_combined_filters_still_fill_their_pages(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut uploaded = Vec::new();
    for i in 0..30u32 {
        let spec = pb::ImageSpec {
            filename: format!("{i}.png"),
            tags: vec![if i % 5 == 0 { "rare" } else { "common" }.into()],
            location: if i % 2 == 0 { "Paris" } else { "Lyon" }.into(),
            ..Default::default()
        };
        let owner = if i % 2 == 0 { "alice" } else { "bob" };
        let image = app
            .upload(owner, spec, &images::png(2, 2, i))
            .await
            .unwrap();
        uploaded.push((i, image.image_id));
    }
    type Matches = fn(u32) -> bool;
    let cases: [(pb::ListImagesRequest, Matches); 3] = [
        (
            pb::ListImagesRequest {
                owner_id: "alice".into(),
                tag: "rare".into(),
                ..Default::default()
            },
            |i| i % 2 == 0 && i % 5 == 0,
        ),
        (
            pb::ListImagesRequest {
                tag: "rare".into(),
                location: "Lyon".into(),
                ..Default::default()
            },
            |i| i % 2 == 1 && i % 5 == 0,
        ),
        (
            pb::ListImagesRequest {
                location: "Paris".into(),
                content_type: "image/png".into(),
                ..Default::default()
            },
            |i| i % 2 == 0,
        ),
    ];
    for (mut request, keep) in cases {
        let expected: Vec<String> = uploaded
            .iter()
            .rev()
            .filter(|(i, _)| keep(*i))
            .map(|(_, id)| id.clone())
            .collect();
        request.page_size = 2;
        let mut seen = Vec::new();
        loop {
            let page = app.list("dave", request.clone()).await.unwrap();
            seen.extend(ids(&page.images));
            if page.next_page_token.is_empty() {
                break;
            }
            // Pages are full until the last, however sparse the matches.
            assert_eq!(page.images.len(), 2, "{request:?}");
            request.page_token = page.next_page_token;
        }
        assert_eq!(seen, expected, "{request:?}");
    }
}

async fn page_sizes_default_to_fifty_and_are_capped(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for i in 0..51 {
        app.upload_png("alice", i).await;
    }
    let page = app
        .list("alice", pb::ListImagesRequest::default())
        .await
        .unwrap();
    assert_eq!(page.images.len(), 50);
    assert!(!page.next_page_token.is_empty());
    let page = app
        .list(
            "alice",
            pb::ListImagesRequest {
                page_size: 100_000,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.images.len(), 51);
    assert!(page.next_page_token.is_empty());
    let negative = pb::ListImagesRequest {
        page_size: -1,
        ..Default::default()
    };
    assert_code(app.list("alice", negative).await, Code::InvalidArgument);
}

async fn altered_or_foreign_page_tokens_are_rejected(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for i in 0..4 {
        app.upload_png("alice", i).await;
    }
    let first = app
        .list(
            "alice",
            pb::ListImagesRequest {
                page_size: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let token = first.next_page_token;
    assert!(!token.is_empty());

    let mut altered = token.clone().into_bytes();
    let i = altered.len() / 2;
    altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
    let request = |token: String, owner: &str| pb::ListImagesRequest {
        page_size: 2,
        page_token: token,
        owner_id: owner.into(),
        ..Default::default()
    };
    assert_code(
        app.list("alice", request(String::from_utf8(altered).unwrap(), ""))
            .await,
        Code::InvalidArgument,
    );
    assert_code(
        app.list("alice", request("garbage".into(), "")).await,
        Code::InvalidArgument,
    );
    assert_code(
        app.list("alice", request(token.clone(), "bob")).await,
        Code::InvalidArgument,
    );
    assert_eq!(
        app.list("alice", request(token, ""))
            .await
            .unwrap()
            .images
            .len(),
        2
    );
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

async fn rejected_uploads_store_nothing(backend: Backend) {
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
    let too_big = images::png_of_size(common::TEST_MAX_IMAGE_BYTES + 1, 1);
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

async fn a_cancelled_upload_stores_nothing(backend: Backend) {
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

async fn only_the_owner_may_update_or_delete(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let image = app.upload_png("alice", 1).await;
    let update = pb::UpdateImageRequest {
        image_id: image.image_id.clone(),
        title: "pwned".into(),
        ..Default::default()
    };
    assert_code(
        app.update("bob", update.clone()).await,
        Code::PermissionDenied,
    );
    assert_code(
        app.delete("bob", &image.image_id).await,
        Code::PermissionDenied,
    );
    assert_eq!(
        app.get("alice", &image.image_id).await.unwrap(),
        image,
        "nothing changed"
    );
    assert_eq!(
        app.download("bob", &image.image_id).await.unwrap().len() as i64,
        image.size_bytes
    );

    let updated = app.update("alice", update).await.unwrap();
    assert_eq!(updated.title, "pwned");
    app.delete("alice", &image.image_id).await.unwrap();
}

async fn updates_change_the_masked_fields_and_move_the_indexes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let bytes = images::png(5, 5, 5);
    let original = app
        .upload(
            "alice",
            pb::ImageSpec {
                title: "Old".into(),
                description: "Keep me".into(),
                tags: vec!["old".into()],
                location: "Lyon".into(),
                ..spec("u.png")
            },
            &bytes,
        )
        .await
        .unwrap();
    let id = original.image_id.clone();

    // Without a mask: every non-empty field changes, the others stay.
    let request = pb::UpdateImageRequest {
        image_id: id.clone(),
        title: "New".into(),
        tags: vec!["#Fresh".into()],
        ..Default::default()
    };
    let updated = app.update("alice", request).await.unwrap();
    assert_eq!(updated.title, "New");
    assert_eq!(updated.description, "Keep me");
    assert_eq!(updated.tags, vec!["fresh"]);
    assert_eq!(updated.location, "Lyon");
    assert_eq!(updated.sha256, original.sha256);
    assert_eq!(updated.create_time, original.create_time);
    assert!(updated.update_time.unwrap().seconds >= original.update_time.unwrap().seconds);
    assert_ne!(updated.etag, original.etag);

    // With a mask: exactly the named fields, empty values clear.
    let request = pb::UpdateImageRequest {
        image_id: id.clone(),
        location: String::new(),
        description: "ignored: not in the mask".into(),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["location".into()],
        }),
        ..Default::default()
    };
    let cleared = app.update("alice", request).await.unwrap();
    assert_eq!(cleared.location, "");
    assert_eq!(cleared.description, "Keep me");

    // Listings follow the change.
    let by_tag = |tag: &str| pb::ListImagesRequest {
        tag: tag.into(),
        ..Default::default()
    };
    assert!(app.list_all("bob", by_tag("old")).await.unwrap().is_empty());
    assert_eq!(
        ids(&app.list_all("bob", by_tag("fresh")).await.unwrap()),
        vec![id.clone()]
    );
    let by_location = pb::ListImagesRequest {
        location: "Lyon".into(),
        ..Default::default()
    };
    assert!(app.list_all("bob", by_location).await.unwrap().is_empty());

    // Bad updates change nothing.
    let bad_mask = pb::UpdateImageRequest {
        image_id: id.clone(),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["owner_id".into()],
        }),
        ..Default::default()
    };
    assert_code(app.update("alice", bad_mask).await, Code::InvalidArgument);
    let too_long = pb::UpdateImageRequest {
        image_id: id.clone(),
        title: "x".repeat(201),
        ..Default::default()
    };
    assert_code(app.update("alice", too_long).await, Code::InvalidArgument);
    let nothing = pb::UpdateImageRequest {
        image_id: id.clone(),
        ..Default::default()
    };
    assert_code(app.update("alice", nothing).await, Code::InvalidArgument);
    assert_eq!(app.get("alice", &id).await.unwrap(), cleared);
}

async fn a_stale_etag_aborts_the_update(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let image = app.upload_png("alice", 1).await;
    let update = |title: &str, etag: &str| pb::UpdateImageRequest {
        image_id: image.image_id.clone(),
        title: title.into(),
        etag: etag.into(),
        ..Default::default()
    };
    let first = app
        .update("alice", update("first", &image.etag))
        .await
        .unwrap();
    assert_code(
        app.update("alice", update("second", &image.etag)).await,
        Code::Aborted,
    );
    assert_eq!(
        app.get("alice", &image.image_id).await.unwrap().title,
        "first"
    );
    let second = app
        .update("alice", update("second", &first.etag))
        .await
        .unwrap();
    assert_eq!(second.title, "second");
}

async fn a_deleted_image_is_gone_everywhere(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let keep = app.upload_png("alice", 1).await;
    let before = app.stored_objects().await;
    let image = app.upload_png("alice", 2).await;
    let url = app
        .download_url(
            "alice",
            pb::GetDownloadUrlRequest {
                image_id: image.image_id.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    app.delete("alice", &image.image_id).await.unwrap();
    assert_code(app.get("alice", &image.image_id).await, Code::NotFound);
    assert_code(app.download("alice", &image.image_id).await, Code::NotFound);
    assert_code(app.delete("alice", &image.image_id).await, Code::NotFound);
    let listed = app
        .list_all("alice", pb::ListImagesRequest::default())
        .await
        .unwrap();
    assert_eq!(ids(&listed), vec![keep.image_id]);
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 404);
    assert_eq!(app.stored_objects().await, before, "the bytes were removed");
}

async fn presigned_urls_serve_the_bytes_with_ranges(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let bytes = images::png(50, 50, 8);
    let image = app.upload("alice", spec("café.png"), &bytes).await.unwrap();
    let response = app
        .client()
        .get_download_url(as_user(
            "bob",
            pb::GetDownloadUrlRequest {
                image_id: image.image_id.clone(),
                disposition: pb::Disposition::Attachment as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let expire = response.expire_time.unwrap().seconds;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now + 590..=now + 600).contains(&expire),
        "default validity is 10 minutes"
    );

    let http = reqwest::Client::new();
    let full = http.get(&response.url).send().await.unwrap();
    assert_eq!(full.status(), 200);
    let header = |r: &reqwest::Response, name: &str| {
        r.headers().get(name).unwrap().to_str().unwrap().to_owned()
    };
    assert_eq!(header(&full, "content-type"), "image/png");
    assert_eq!(header(&full, "content-length"), bytes.len().to_string());
    assert!(header(&full, "content-disposition").starts_with("attachment"));
    assert!(header(&full, "content-disposition").contains("caf%C3%A9.png"));
    assert_eq!(full.bytes().await.unwrap(), bytes);

    let part = http
        .get(&response.url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        header(&part, "content-range"),
        format!("bytes 10-19/{}", bytes.len())
    );
    assert_eq!(part.bytes().await.unwrap(), &bytes[10..20]);
    let beyond = http
        .get(&response.url)
        .header("range", "bytes=999999-")
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), 416);
}

async fn presigned_urls_expire_and_resist_tampering(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let image = app.upload_png("alice", 1).await;
    let other = app.upload_png("bob", 2).await;
    let url = app
        .download_url(
            "alice",
            pb::GetDownloadUrlRequest {
                image_id: image.image_id.clone(),
                expires_in: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
    let swapped = url.replace(&image.image_id, &other.image_id);
    assert_eq!(
        reqwest::get(&swapped).await.unwrap().status(),
        403,
        "another object"
    );
    let retyped = url.replace("image%2Fpng", "text%2Fhtml");
    assert_ne!(retyped, url);
    assert_eq!(
        reqwest::get(&retyped).await.unwrap().status(),
        403,
        "another content type"
    );
    // Both backends put the signature last in the query.
    let (unsigned, signature) = url.rsplit_once('&').unwrap();
    assert!(
        signature.to_ascii_lowercase().contains("signature="),
        "{signature}"
    );
    assert_eq!(
        reqwest::get(unsigned).await.unwrap().status(),
        403,
        "no signature"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 403, "expired");

    let negative = pb::GetDownloadUrlRequest {
        image_id: image.image_id.clone(),
        expires_in: Some(prost_types::Duration {
            seconds: -5,
            nanos: 0,
        }),
        ..Default::default()
    };
    assert_code(
        app.client()
            .get_download_url(as_user("alice", negative))
            .await,
        Code::InvalidArgument,
    );
    let unknown = pb::GetDownloadUrlRequest {
        image_id: uuid::Uuid::now_v7().to_string(),
        ..Default::default()
    };
    assert_code(
        app.client()
            .get_download_url(as_user("alice", unknown))
            .await,
        Code::NotFound,
    );
}

async fn an_idempotency_key_returns_the_first_image(backend: Backend) {
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
    // Two images, each an original and two variants: no duplicates.
    assert_eq!(app.stored_objects().await.len(), 6, "no duplicate bytes");
}

async fn many_users_upload_at_once(backend: Backend) {
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

async fn an_upload_deleted_at_once_is_gone(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for i in 0..5 {
        let image = app.upload_png("alice", i).await;
        app.delete("alice", &image.image_id).await.unwrap();
        assert_code(app.get("alice", &image.image_id).await, Code::NotFound);
    }
    assert!(app.wait_for_stored_objects(0).await.is_empty());
    assert!(
        app.list_all("alice", pb::ListImagesRequest::default())
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_download_racing_a_delete_is_whole_or_not_found(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let bytes = images::png_of_size(3 * 1024 * 1024, 6);
    let image = app.upload("alice", spec("race.png"), &bytes).await.unwrap();
    let request = pb::DownloadImageRequest {
        image_id: image.image_id.clone(),
        ..Default::default()
    };
    let mut stream = app
        .client()
        .download_image(as_user("bob", request))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().expect("the header");
    app.delete("alice", &image.image_id).await.unwrap();
    let mut received = Vec::new();
    let outcome = loop {
        match stream.message().await {
            Ok(Some(message)) => received.extend_from_slice(&message.chunk),
            Ok(None) => break Ok(()),
            Err(status) => break Err(status),
        }
    };
    match outcome {
        Ok(()) => assert!(
            received == bytes,
            "a stream that ends cleanly carries the whole image"
        ),
        Err(status) => assert_eq!(status.code(), Code::NotFound, "{status:?}"),
    }
    assert_code(app.download("bob", &image.image_id).await, Code::NotFound);
}

async fn concurrent_updates_are_never_lost(backend: Backend) {
    let app = std::sync::Arc::new(TestApp::spawn(backend).await);
    let image = app.upload_png("alice", 1).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (app, id) = (app.clone(), image.image_id.clone());
        tasks.push(tokio::spawn(async move {
            let request = if i % 2 == 0 {
                pb::UpdateImageRequest {
                    image_id: id,
                    title: format!("title {i}"),
                    ..Default::default()
                }
            } else {
                pb::UpdateImageRequest {
                    image_id: id,
                    location: format!("place {i}"),
                    ..Default::default()
                }
            };
            app.update("alice", request).await
        }));
    }
    let mut applied = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => applied += 1,
            // Allowed only after repeated conflicts; then nothing was written.
            Err(status) => assert_eq!(status.code(), Code::Aborted, "{status:?}"),
        }
    }
    let last = app.get("alice", &image.image_id).await.unwrap();
    assert_eq!(
        last.etag,
        format!("r{}", 1 + applied),
        "every successful update is counted once"
    );
    assert!(
        last.title.starts_with("title ") && last.location.starts_with("place "),
        "{last:?}"
    );
}

/// Instantiates every case above for each backend.
/// The done-condition of variants: a sideways phone photo with GPS comes
/// back upright in `small` and `medium`, with no identifying metadata in
/// the stored original and a placeholder in its metadata.
async fn a_sideways_phone_photo_comes_back_upright_and_without_gps(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // The sensor's 1600 x 1200, to be turned 90° clockwise: 1200 x 1600.
    let photo = images::phone_photo(1600, 1200);
    let image = app
        .upload("alice", spec("IMG_0001.jpg"), &photo)
        .await
        .unwrap();
    assert_eq!(
        (image.width, image.height),
        (1200, 1600),
        "dimensions as viewed"
    );
    assert!(image.metadata_stripped);
    assert_eq!(image.uploaded_sha256, sha256_hex(&photo));
    // Only the owner sees the hash of the original with its GPS: anyone
    // else could confirm a guessed original with it.
    let seen_by_bob = app.get("bob", &image.image_id).await.unwrap();
    assert_eq!(seen_by_bob.uploaded_sha256, "");
    assert_eq!(seen_by_bob.sha256, image.sha256);
    assert_eq!(
        app.get("alice", &image.image_id)
            .await
            .unwrap()
            .uploaded_sha256,
        sha256_hex(&photo)
    );

    let stored = app.download("bob", &image.image_id).await.unwrap();
    assert_eq!(
        image.sha256,
        sha256_hex(&stored),
        "sha256 is of what is stored"
    );
    assert_eq!(image.size_bytes, stored.len() as i64);
    for secret in images::PHONE_SECRETS {
        assert!(
            !stored.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret:?} is still in the stored original"
        );
    }
    // Not re-encoded: the very same pixels, still marked for rotation.
    let uploaded_pixels = image::load_from_memory(&photo).unwrap().to_rgb8();
    let stored_pixels = image::load_from_memory(&stored).unwrap().to_rgb8();
    assert!(
        uploaded_pixels == stored_pixels,
        "the original's pixels changed"
    );
    let exif_at = stored
        .windows(6)
        .position(|w| w == b"Exif\0\0")
        .expect("an EXIF block")
        + 6;
    let orientation = image::metadata::Orientation::from_exif_chunk(&stored[exif_at..]);
    assert_eq!(orientation.map(|o| o.to_exif()), Some(6));

    let variants: Vec<_> = image
        .variants
        .iter()
        .map(|v| (v.name.as_str(), v.content_type.as_str(), v.width, v.height))
        .collect();
    assert_eq!(
        variants,
        [
            ("small", "image/jpeg", 240, 320),
            ("medium", "image/jpeg", 810, 1080)
        ]
    );
    let small = download_variant(&app, &image.image_id, "small").await;
    assert_eq!(small.len() as i64, image.variants[0].size_bytes);
    assert_upright(&small, (240, 320));
    // The medium one through a download URL, as a browser would fetch it.
    let url = app
        .download_url(
            "bob",
            pb::GetDownloadUrlRequest {
                image_id: image.image_id.clone(),
                variant: "medium".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let medium = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    assert_upright(&medium, (810, 1080));

    // The placeholder: a BlurHash of 3 x 4 components (portrait), red above
    // blue like the photo as viewed.
    let hash = &image.blurhash;
    assert_eq!(hash.len(), 28, "{hash}");
    let painted = blurhash::decode(hash, 30, 40, 1.0).unwrap();
    let pixel = |x: usize, y: usize| &painted[(y * 30 + x) * 4..(y * 30 + x) * 4 + 3];
    let (top, bottom) = (pixel(15, 5), pixel(15, 35));
    assert!(
        top[0] > top[2] && bottom[2] > bottom[0],
        "{top:?} {bottom:?}"
    );

    // Get and List say the same; delete removes every rendition.
    assert_eq!(app.get("alice", &image.image_id).await.unwrap(), image);
    app.delete("alice", &image.image_id).await.unwrap();
    let left = app.wait_for_stored_objects(0).await;
    assert!(left.is_empty(), "left behind: {left:?}");
}

async fn download_variant(app: &TestApp, image_id: &str, variant: &str) -> Vec<u8> {
    let request = pb::DownloadImageRequest {
        image_id: image_id.into(),
        variant: variant.into(),
        ..Default::default()
    };
    app.download_range("bob", request).await.unwrap().1
}

/// A rendition of [`images::phone_photo`] as a viewer sees it: red on top,
/// blue below.
fn assert_upright(bytes: &[u8], size: (u32, u32)) {
    let pixels = image::load_from_memory(bytes).unwrap().to_rgb8();
    assert_eq!(pixels.dimensions(), size);
    let (w, h) = size;
    let top = pixels.get_pixel(w / 2, h / 8).0;
    let bottom = pixels.get_pixel(w / 2, h * 7 / 8).0;
    assert!(top[0] > 150 && top[2] < 80, "top should be red: {top:?}");
    assert!(
        bottom[2] > 150 && bottom[0] < 80,
        "bottom should be blue: {bottom:?}"
    );
}

async fn small_and_animated_images_get_variants_never_upscaled(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // An animated GIF: variants are a still of the first (green) frame.
    let gif = app
        .upload("alice", spec("loop.gif"), &images::animated_gif(400, 300))
        .await
        .unwrap();
    assert!(!gif.metadata_stripped, "GIFs are stored as uploaded");
    let sizes: Vec<_> = gif.variants.iter().map(|v| (v.width, v.height)).collect();
    assert_eq!(sizes, [(320, 240), (400, 300)], "medium is not upscaled");
    let still = image::load_from_memory(&download_variant(&app, &gif.image_id, "small").await)
        .unwrap()
        .to_rgb8();
    let [r, g, b] = still.get_pixel(160, 120).0;
    assert!(
        g > 120 && r < 80 && b < 130,
        "first frame is green: {:?}",
        [r, g, b]
    );

    let tiny = app
        .upload("alice", spec("icon.png"), &images::png(40, 30, 3))
        .await
        .unwrap();
    let sizes: Vec<_> = tiny.variants.iter().map(|v| (v.width, v.height)).collect();
    assert_eq!(sizes, [(40, 30), (40, 30)]);
    assert!(!tiny.blurhash.is_empty());
    let missing = pb::DownloadImageRequest {
        image_id: tiny.image_id.clone(),
        variant: "large".into(),
        ..Default::default()
    };
    assert_code(app.download_range("bob", missing).await, Code::NotFound);
}

async fn images_that_cannot_be_decoded_are_refused_and_leave_nothing(backend: Backend) {
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
    // sniffing and the header checks, and fails only when decoded.
    let corrupt = images::png_with_corrupt_pixels(64, 64);
    let status = assert_code(
        app.upload("alice", spec("noise.png"), &corrupt).await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("decode"), "{status:?}");
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
async fn a_pixel_bomb_is_refused_before_its_pixels_arrive(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let header = images::png_header_only(40_000, 40_000);
    let mut messages = upload_messages(spec("bomb.png"), &header[..64], 64);
    messages.last_mut().unwrap().finish_write = false;
    for message in messages {
        tx.send(message).await.unwrap();
    }
    // The stream stays open: the rest of the "image" never comes.
    let mut client = app.client();
    let call = client.upload_image(as_user(
        "alice",
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    let result = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("answered without the rest of the stream");
    let status = assert_code(result, Code::ResourceExhausted);
    assert!(status.message().contains("40000x40000"), "{status:?}");
    drop(tx);
    assert!(app.wait_for_stored_objects(0).await.is_empty());
}

/// Records with the most metadata allowed are large: a page of them is cut
/// by bytes, not only by count, and its token continues where it stopped.
async fn pages_of_large_records_are_cut_by_bytes_and_continue(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--max-page-bytes", "200KiB"]).await;
    let attributes: std::collections::HashMap<String, String> = (0..32)
        .map(|i| (format!("{i:0>1000}"), "v".repeat(1024)))
        .collect();
    let mut uploaded = Vec::new();
    for i in 0..8 {
        let spec = pb::ImageSpec {
            filename: format!("big-{i}.png"),
            description: "d".repeat(2000),
            tags: (0..30).map(|t| format!("{t:0>64}")).collect(),
            attributes: attributes.clone(),
            ..Default::default()
        };
        let image = app
            .upload("alice", spec, &images::png(4, 4, i))
            .await
            .unwrap();
        uploaded.push(image.image_id);
    }
    uploaded.reverse();
    let mut seen = Vec::new();
    let mut request = pb::ListImagesRequest {
        page_size: 1000,
        ..Default::default()
    };
    let mut pages = 0;
    loop {
        let page = app.list("bob", request.clone()).await.unwrap();
        let encoded = prost::Message::encoded_len(&page);
        assert!(encoded <= 200 * 1024, "a page of {encoded} bytes");
        assert!(!page.images.is_empty(), "every page makes progress");
        pages += 1;
        seen.extend(ids(&page.images));
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    assert!(
        pages >= 3,
        "8 records of ~70 KiB fit no page of 200 KiB: {pages} pages"
    );
    assert_eq!(seen, uploaded, "every image once, newest first");
}

macro_rules! contract_suite {
    ($backend:ident: $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                super::$case(super::Backend::$backend).await;
            }
        )*
    };
}

macro_rules! all_cases {
    ($backend:ident) => {
        contract_suite!($backend:
            an_upload_is_described_by_its_metadata,
            every_accepted_type_is_sniffed_from_the_bytes,
            downloads_return_the_stored_bytes_in_chunks_of_at_most_one_mib,
            ranged_downloads_return_exactly_the_range,
            unknown_and_malformed_ids_are_told_apart,
            every_call_needs_an_identity,
            each_filter_alone_and_combined_returns_matches_newest_first,
            time_ranges_bound_the_listing,
            a_page_walk_returns_every_image_exactly_once_in_order,
            sparse_combined_filters_still_fill_their_pages,
            page_sizes_default_to_fifty_and_are_capped,
            altered_or_foreign_page_tokens_are_rejected,
            rejected_uploads_store_nothing,
            a_cancelled_upload_stores_nothing,
            only_the_owner_may_update_or_delete,
            updates_change_the_masked_fields_and_move_the_indexes,
            a_stale_etag_aborts_the_update,
            a_deleted_image_is_gone_everywhere,
            presigned_urls_serve_the_bytes_with_ranges,
            presigned_urls_expire_and_resist_tampering,
            an_idempotency_key_returns_the_first_image,
            many_users_upload_at_once,
            an_upload_deleted_at_once_is_gone,
            a_download_racing_a_delete_is_whole_or_not_found,
            concurrent_updates_are_never_lost,
            a_sideways_phone_photo_comes_back_upright_and_without_gps,
            small_and_animated_images_get_variants_never_upscaled,
            images_that_cannot_be_decoded_are_refused_and_leave_nothing,
            a_pixel_bomb_is_refused_before_its_pixels_arrive,
            pages_of_large_records_are_cut_by_bytes_and_continue,
        );
    };
}

mod embedded {
    all_cases!(Embedded);
}

mod aws {
    all_cases!(Aws);
}
