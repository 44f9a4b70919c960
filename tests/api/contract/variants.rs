//! Variants and placeholders: upright, never upscaled, without GPS.
use super::*;

/// Instantiates every case above for each backend.
/// The done-condition of variants: a sideways phone photo with GPS comes
/// back upright in `small` and `medium`, with no identifying metadata in
/// the stored original and a placeholder in its metadata.
pub(super) async fn a_sideways_phone_photo_comes_back_upright_and_without_gps(backend: Backend) {
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

pub(super) async fn small_and_animated_images_get_variants_never_upscaled(backend: Backend) {
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
