//! One stored object per rendition, and the encoding a viewer gets by what
//! it accepts: the README's own PNG shows both.
use super::*;

/// The README's walkthrough image: a 320 x 200 PNG of 1751 bytes.
const SUNRISE: &[u8] = include_bytes!("../../../examples/images/sunrise.png");

/// `small` and `medium` of a 320 x 200 image are the same pixels: one
/// stored JPEG, listed twice with the same size, and gone with the image.
pub(super) async fn variants_of_the_same_size_share_one_object(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let image = app
        .upload("alice", spec("sunrise.png"), SUNRISE)
        .await
        .unwrap();
    assert_eq!(
        variant_rows(&image),
        [
            ("small", "image/jpeg", 320, 200),
            ("medium", "image/jpeg", 320, 200)
        ]
    );
    assert_eq!(image.variants[0].size_bytes, image.variants[1].size_bytes);
    let objects = app.stored_objects().await;
    assert_eq!(objects.len(), 2, "the original and one JPEG: {objects:?}");
    let small = download_accepting(&app, &image.image_id, "small", &[]).await;
    let medium = download_accepting(&app, &image.image_id, "medium", &[]).await;
    assert_eq!(small.1, medium.1, "the same bytes");
    assert_eq!(small.1.len() as i64, image.variants[0].size_bytes);

    app.delete("alice", &image.image_id).await.unwrap();
    let left = app.wait_for_stored_objects(0).await;
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A viewer that accepts PNG gets the 1751-byte original rather than the
/// 3.5 times larger JPEG, and is told so on every way of reading it; one
/// that states no preference gets the JPEG, as before.
pub(super) async fn a_viewer_gets_the_smaller_original_when_it_accepts_its_type(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let image = app
        .upload("alice", spec("sunrise.png"), SUNRISE)
        .await
        .unwrap();
    let id = image.image_id.as_str();
    let png = ["image/png".to_string()];

    let (first, bytes) = download_accepting(&app, id, "small", &png).await;
    assert_eq!(first.content_type, "image/png");
    assert_eq!(bytes, SUNRISE, "the original itself");
    let (first, bytes) = download_accepting(&app, id, "small", &[]).await;
    assert_eq!(first.content_type, "image/jpeg");
    assert_eq!(
        image::guess_format(&bytes).unwrap(),
        image::ImageFormat::Jpeg
    );

    for (accept, content_type) in [(&png[..], "image/png"), (&[], "image/jpeg")] {
        let url = app
            .client()
            .get_download_url(as_user(
                "bob",
                pb::GetDownloadUrlRequest {
                    image_id: id.into(),
                    variant: "small".into(),
                    accept: accept.to_vec(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(url.content_type, content_type);
        let fetched = reqwest::get(&url.url).await.unwrap();
        assert_eq!(fetched.headers()["content-type"], content_type);
        let fetched = fetched.bytes().await.unwrap();
        assert_eq!(
            fetched.len(),
            if accept.is_empty() {
                image.variants[0].size_bytes as usize
            } else {
                SUNRISE.len()
            }
        );

        let batch = app
            .client()
            .batch_get_images(as_user(
                "bob",
                pb::BatchGetImagesRequest {
                    image_ids: vec![id.into()],
                    url_variant: "small".into(),
                    accept: accept.to_vec(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(batch.images[0].content_type, content_type);
        assert_eq!(batch.images[0].url, url.url, "the same URL in the window");
    }
}

/// A transparent image's variants keep its alpha in WebP, which a viewer
/// preferring WebP over JPEG gets, told in one Accept header.
pub(super) async fn a_transparent_image_is_served_in_its_alpha_capable_encoding(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let pixels = image::RgbaImage::from_fn(400, 300, |x, y| {
        image::Rgba([x as u8, y as u8, 90, (x % 256) as u8])
    });
    let mut png = Vec::new();
    image::DynamicImage::ImageRgba8(pixels)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let image = app.upload("alice", spec("glass.png"), &png).await.unwrap();
    let accept = ["image/webp;q=0.9, image/jpeg;q=0.5".to_string()];
    let (first, bytes) = download_accepting(&app, &image.image_id, "small", &accept).await;
    assert_eq!(first.content_type, "image/webp");
    let decoded = image::load_from_memory_with_format(&bytes, image::ImageFormat::WebP).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (320, 240));
    assert!(decoded.color().has_alpha());
}

/// An `accept` longer than the service scans is refused by every RPC
/// that takes one, naming the limit.
pub(super) async fn an_overlong_accept_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let image = app.upload_png("alice", 1).await;
    let id = image.image_id.as_str();
    let too_many = vec!["image/webp, image/avif, image/png, image/gif".to_string(); 9];
    let too_long = vec![format!("image/webp;x={}", "y".repeat(300))];
    for (accept, limit) in [(too_many, "32"), (too_long, "256")] {
        let request = pb::DownloadImageRequest {
            image_id: id.into(),
            variant: "small".into(),
            accept: accept.clone(),
            ..Default::default()
        };
        let status = assert_code(
            app.download_range("bob", request).await,
            Code::InvalidArgument,
        );
        assert!(status.message().contains(limit), "{status:?}");
        let request = pb::GetDownloadUrlRequest {
            image_id: id.into(),
            variant: "small".into(),
            accept: accept.clone(),
            ..Default::default()
        };
        let status = assert_code(
            app.download_url("bob", request).await,
            Code::InvalidArgument,
        );
        assert!(status.message().contains(limit), "{status:?}");
        let request = pb::BatchGetImagesRequest {
            image_ids: vec![id.into()],
            url_variant: "small".into(),
            accept,
            ..Default::default()
        };
        let status = assert_code(
            app.client().batch_get_images(as_user("bob", request)).await,
            Code::InvalidArgument,
        );
        assert!(status.message().contains(limit), "{status:?}");
    }
}

/// The first message of a `DownloadImage` of `variant` for a viewer that
/// accepts `accept`, and the bytes.
pub(super) async fn download_accepting(
    app: &TestApp,
    image_id: &str,
    variant: &str,
    accept: &[String],
) -> (pb::DownloadImageResponse, Vec<u8>) {
    let request = pb::DownloadImageRequest {
        image_id: image_id.into(),
        variant: variant.into(),
        accept: accept.to_vec(),
        ..Default::default()
    };
    app.download_range("bob", request).await.unwrap()
}
