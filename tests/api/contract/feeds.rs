//! What a feed service needs: many images in one call, and download URLs
//! that stay the same long enough to be cached.
use super::*;

fn batch(ids: &[&str]) -> pb::BatchGetImagesRequest {
    pb::BatchGetImagesRequest {
        image_ids: ids.iter().map(|id| id.to_string()).collect(),
        ..Default::default()
    }
}

async fn batch_get(
    app: &TestApp,
    user: &str,
    request: pb::BatchGetImagesRequest,
) -> Result<pb::BatchGetImagesResponse, Status> {
    Ok(app
        .client()
        .batch_get_images(as_user(user, request))
        .await?
        .into_inner())
}

fn found_ids(response: &pb::BatchGetImagesResponse) -> Vec<String> {
    response
        .images
        .iter()
        .map(|found| found.image.as_ref().unwrap().image_id.clone())
        .collect()
}

pub(super) async fn a_batch_returns_each_image_once_in_order_and_names_the_missing(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let first = app.upload_png("alice", 1).await;
    let second = app.upload_png("alice", 2).await;
    let theirs = app.upload_png("bob", 3).await;
    let deleted = app.upload_png("alice", 4).await;
    app.delete("alice", &deleted.image_id).await.unwrap();
    let never = uuid::Uuid::now_v7().to_string();

    let response = batch_get(
        &app,
        "alice",
        batch(&[
            &second.image_id,
            &never,
            &first.image_id,
            &second.image_id,
            &theirs.image_id,
            &deleted.image_id,
        ]),
    )
    .await
    .unwrap();
    assert_eq!(
        found_ids(&response),
        [
            second.image_id.clone(),
            first.image_id.clone(),
            theirs.image_id.clone()
        ],
        "found images in the order asked, a repeated id once"
    );
    assert_eq!(
        response.missing_image_ids,
        [never.clone(), deleted.image_id.clone()]
    );
    assert!(response.unprocessed_image_ids.is_empty());
    for found in &response.images {
        let image = found.image.as_ref().unwrap();
        let single = app.get("alice", &image.image_id).await.unwrap();
        assert_eq!(image, &single, "each image as GetImage returns it");
        assert!(found.url.is_empty(), "no URL unless asked for");
    }
    let by_id = |id: &str| {
        response
            .images
            .iter()
            .map(|f| f.image.as_ref().unwrap())
            .find(|i| i.image_id == id)
            .unwrap()
            .clone()
    };
    assert!(!by_id(&first.image_id).uploaded_sha256.is_empty());
    assert!(
        by_id(&theirs.image_id).uploaded_sha256.is_empty(),
        "another user's upload hash stays hidden, as in GetImage"
    );

    // With a URL of a variant for each image that has it.
    let with_urls = batch_get(
        &app,
        "carol",
        pb::BatchGetImagesRequest {
            url_variant: "small".into(),
            ..batch(&[&first.image_id, &theirs.image_id, &never])
        },
    )
    .await
    .unwrap();
    assert_eq!(with_urls.missing_image_ids, std::slice::from_ref(&never));
    let http = reqwest::Client::new();
    for found in &with_urls.images {
        let image = found.image.as_ref().unwrap();
        let small = image.variants.iter().find(|v| v.name == "small").unwrap();
        let response = http.get(&found.url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{}", found.url);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            small.content_type
        );
        assert_eq!(
            response.bytes().await.unwrap().len() as i64,
            small.size_bytes,
            "the URL serves the small variant"
        );
        assert!(found.url_expire_time.is_some());
    }
    let no_such_variant = batch_get(
        &app,
        "carol",
        pb::BatchGetImagesRequest {
            url_variant: "poster".into(),
            ..batch(&[&first.image_id])
        },
    )
    .await
    .unwrap();
    assert_eq!(
        found_ids(&no_such_variant),
        std::slice::from_ref(&first.image_id)
    );
    assert!(
        no_such_variant.images[0].url.is_empty(),
        "an image without the variant has no URL"
    );
    let empty = batch_get(&app, "carol", batch(&[])).await.unwrap();
    assert!(empty.images.is_empty() && empty.missing_image_ids.is_empty());
}

pub(super) async fn a_batch_of_too_many_or_malformed_ids_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let image = app.upload_png("alice", 1).await;
    let ids: Vec<String> = (0..101).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let too_many = pb::BatchGetImagesRequest {
        image_ids: ids,
        ..Default::default()
    };
    let status = assert_code(
        batch_get(&app, "alice", too_many).await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("100"), "{}", status.message());
    let hundred: Vec<String> = (0..99)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .chain([image.image_id.clone()])
        .collect();
    let full = batch_get(
        &app,
        "alice",
        pb::BatchGetImagesRequest {
            image_ids: hundred,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(found_ids(&full), std::slice::from_ref(&image.image_id));
    assert_eq!(full.missing_image_ids.len(), 99);

    let status = assert_code(
        batch_get(&app, "alice", batch(&[&image.image_id, "../../etc"])).await,
        Code::InvalidArgument,
    );
    assert!(
        status.message().contains("image_ids[1]"),
        "{}",
        status.message()
    );
    let bad_variant = pb::BatchGetImagesRequest {
        url_variant: "../x".into(),
        ..batch(&[&image.image_id])
    };
    assert_code(
        batch_get(&app, "alice", bad_variant).await,
        Code::InvalidArgument,
    );
    let anonymous = tonic::Request::new(batch(&[&image.image_id]));
    assert_code(
        app.client().batch_get_images(anonymous).await,
        Code::Unauthenticated,
    );
}

/// Sleeps until just after the next multiple of `window` seconds since the
/// Unix epoch, so that what follows runs inside one window.
async fn start_of_next_window(window: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let next = (now.as_secs() / window + 1) * window;
    let wait = Duration::from_secs(next) - now + Duration::from_millis(50);
    tokio::time::sleep(wait).await;
}

pub(super) async fn download_urls_stay_the_same_for_a_window_and_revalidate(backend: Backend) {
    const WINDOW: u64 = 4;
    let app = TestApp::spawn_with(backend, &["--download-url-window", "4s"]).await;
    let image = app.upload_png("alice", 1).await;
    let ask = || pb::GetDownloadUrlRequest {
        image_id: image.image_id.clone(),
        variant: "small".into(),
        expires_in: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
        ..Default::default()
    };
    start_of_next_window(WINDOW).await;
    let url = app.download_url("bob", ask()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = app.download_url("carol", ask()).await.unwrap();
    assert_eq!(url, again, "the same URL for everyone within the window");
    let batched = batch_get(
        &app,
        "dave",
        pb::BatchGetImagesRequest {
            url_variant: "small".into(),
            expires_in: ask().expires_in,
            ..batch(&[&image.image_id])
        },
    )
    .await
    .unwrap();
    assert_eq!(batched.images[0].url, url, "BatchGetImages signs alike");
    let expire = batched.images[0].url_expire_time.unwrap().seconds;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now + 60..=now + 60 + WINDOW as i64).contains(&expire),
        "valid for at least the 60 s asked for, at most a window more: {expire} at {now}"
    );
    let inline = app
        .download_url(
            "bob",
            pb::GetDownloadUrlRequest {
                disposition: pb::Disposition::Attachment as i32,
                ..ask()
            },
        )
        .await
        .unwrap();
    assert_ne!(inline, url, "another disposition is another URL");

    let http = reqwest::Client::new();
    let first = http.get(&url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let cache_control = header(&first, "cache-control");
    assert!(cache_control.contains("public"), "{cache_control}");
    let expires = httpdate::parse_http_date(&header(&first, "expires")).unwrap();
    assert_eq!(
        expires
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
        expire,
        "a cache keeps the response until the URL expires"
    );
    let etag = header(&first, "etag");
    assert!(!etag.is_empty(), "the response names its version");
    let body = first.bytes().await.unwrap();
    // S3 answers `If-None-Match` itself (the service is not in the path of
    // a presigned S3 GET); s3s-fs, the test's S3 server, does not implement
    // conditional GETs, so only the embedded listener's answer is checked.
    if backend == Backend::Embedded {
        let revalidated = http
            .get(&url)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(revalidated.status(), 304, "a cached copy is still good");
        assert_eq!(header(&revalidated, "etag"), etag);
        assert!(revalidated.bytes().await.unwrap().is_empty());
    }
    let other = http
        .get(&url)
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert_eq!(other.bytes().await.unwrap(), body);

    start_of_next_window(WINDOW).await;
    let next = app.download_url("bob", ask()).await.unwrap();
    assert_ne!(next, url, "a new window, a new URL");
    assert_eq!(
        http.get(&url).send().await.unwrap().status(),
        200,
        "the old one still works"
    );
}
