//! Downloads over gRPC and through presigned URLs: the stored bytes, whole or by range.
use super::*;

pub(super) async fn downloads_return_the_stored_bytes_in_chunks_of_at_most_one_mib(
    backend: Backend,
) {
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

pub(super) async fn ranged_downloads_return_exactly_the_range(backend: Backend) {
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

pub(super) async fn presigned_urls_serve_the_bytes_with_ranges(backend: Backend) {
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
        (now + 590..=now + 600 + 15 * 60).contains(&expire),
        "default validity is 10 minutes, plus up to the 15 minutes of the URL window"
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

pub(super) async fn presigned_urls_expire_and_resist_tampering(backend: Backend) {
    // Signed from the moment asked, so that the URL expires a second later.
    let app = TestApp::spawn_with(backend, &["--download-url-window", "0s"]).await;
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

pub(super) async fn a_resumed_download_reads_the_object_it_began_with(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let photo = app
        .upload("alice", spec("p.jpg"), &images::phone_photo(1600, 1200))
        .await
        .unwrap();
    let id = photo.image_id.clone();
    let read = |variant: &str, accept: &[&str], object: &str, offset| pb::DownloadImageRequest {
        image_id: id.clone(),
        variant: variant.into(),
        accept: accept.iter().map(|a| a.to_string()).collect(),
        object: object.into(),
        read_offset: offset,
        ..Default::default()
    };
    let (first, whole) = app
        .download_range("bob", read("medium", &["image/jpeg"], "", 0))
        .await
        .unwrap();
    assert_eq!(
        first.object, "medium",
        "the first message names what it read"
    );
    // Resumed naming the object, whatever the variant and accept now say.
    let (again, tail) = app
        .download_range("bob", read("small", &["image/png"], &first.object, 1000))
        .await
        .unwrap();
    assert_eq!(
        (again.object.as_str(), again.content_type.as_str()),
        ("medium", "image/jpeg")
    );
    assert_eq!(
        tail,
        whole[1000..],
        "the bytes from the offset are the same object's"
    );
    let (original, bytes) = app
        .download_range("bob", read("", &[], "original", 0))
        .await
        .unwrap();
    assert_eq!(original.object, "original");
    assert_eq!(bytes, app.download("bob", &photo.image_id).await.unwrap());

    // A variant whose rendition is held by another object (an icon smaller
    // than both sizes: `medium` is `small`, or the original) names that one.
    let icon = app
        .upload("alice", spec("s.png"), &images::png(40, 30, 3))
        .await
        .unwrap();
    let request = pb::DownloadImageRequest {
        image_id: icon.image_id.clone(),
        variant: "medium".into(),
        ..Default::default()
    };
    let (first, bytes) = app.download_range("bob", request.clone()).await.unwrap();
    assert!(
        ["small", "original"].contains(&first.object.as_str()),
        "{}",
        first.object
    );
    let pinned = pb::DownloadImageRequest {
        object: first.object.clone(),
        variant: String::new(),
        ..request
    };
    assert_eq!(app.download_range("bob", pinned).await.unwrap().1, bytes);

    for (object, code) in [
        ("large", Code::NotFound),
        ("medium.avif", Code::NotFound),
        ("medium.gif", Code::InvalidArgument),
        ("../original", Code::InvalidArgument),
        ("a.b.c", Code::InvalidArgument),
    ] {
        let status = assert_code(
            app.download_range("bob", read("medium", &[], object, 0))
                .await,
            code,
        );
        assert!(status.message().contains("object"), "{object}: {status:?}");
    }
}

pub(super) async fn a_download_racing_a_delete_is_whole_or_not_found(backend: Backend) {
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
