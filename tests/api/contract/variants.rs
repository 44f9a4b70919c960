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

    assert_eq!(
        variant_rows(&image),
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

/// An iPhone-style HEIC is stored without its EXIF (GPS, serial number,
/// owner) and XMP, byte for byte otherwise, with its dimensions as viewed;
/// so is one whose metadata comes before its `meta` box. (The coded
/// image of these files is not real HEVC: a build that decodes HEIC
/// refuses it, and real files are tried in
/// [`real_heic_and_avif_get_upright_variants_and_lose_their_location`].)
pub(super) async fn a_heic_is_stored_without_its_location(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let photo = images::heic_photo(4032, 3024, images::HeifLayout::MetaFirst);
    if cfg!(feature = "heif") {
        let status = app
            .upload("alice", spec("fake.heic"), &photo)
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("cannot be decoded"), "{status:?}");
    } else {
        heic_is_stripped_without_variants(&app, &photo).await;
    }

    // `meta` after `mdat`, as Samsung phones write it: the same, through
    // a second pass (see `late_meta`).
    let late = images::heic_photo(640, 480, images::HeifLayout::MetaLast);
    let uploaded = app.upload("alice", spec("late.heic"), &late).await;
    if cfg!(feature = "heif") {
        let status = uploaded.unwrap_err();
        assert!(status.message().contains("cannot be decoded"), "{status:?}");
    } else {
        let image = uploaded.unwrap();
        assert_eq!((image.width, image.height), (480, 640), "turned by irot");
        let stored = app.download("bob", &image.image_id).await.unwrap();
        for secret in images::PHONE_SECRETS {
            let found = stored.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "{secret} stored");
        }
    }
    let listed = app
        .list_all("alice", pb::ListImagesRequest::default())
        .await
        .unwrap();
    let expected = 2 * usize::from(!cfg!(feature = "heif"));
    assert_eq!(listed.len(), expected, "the refused HEICs stored nothing");
}

/// Without a HEIC decoder: the original stripped, no variants.
async fn heic_is_stripped_without_variants(app: &TestApp, photo: &[u8]) {
    let image = app
        .upload("alice", spec("IMG_0002.HEIC"), photo)
        .await
        .unwrap();
    assert_eq!(image.content_type, "image/heic");
    assert_eq!((image.width, image.height), (3024, 4032), "turned by irot");
    assert!(image.metadata_stripped);
    assert_eq!(image.uploaded_sha256, sha256_hex(photo));
    assert_eq!(image.size_bytes as usize, photo.len(), "blanked in place");
    let stored = app.download("bob", &image.image_id).await.unwrap();
    assert_eq!(image.sha256, sha256_hex(&stored));
    for secret in images::PHONE_SECRETS {
        let found = stored.windows(secret.len()).any(|w| w == secret.as_bytes());
        assert!(!found, "{secret} left in the stored HEIC");
    }
    assert!(
        image.variants.is_empty() && image.blurhash.is_empty(),
        "this build does not decode HEIC"
    );
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

/// A real HEIC and a real AVIF with EXIF (GPS and the rest) and XMP: the
/// stored original has none of it (read back with exiftool) and decodes to
/// the same pixels as the upload, the variants are upright and the
/// placeholder is there; a truncated or damaged file is refused.
#[cfg(feature = "heif")]
pub(super) async fn real_heic_and_avif_get_upright_variants_and_lose_their_location(
    backend: Backend,
) {
    use images::HeifCodec;
    let app = TestApp::spawn(backend).await;
    for (codec, name, content_type) in [
        (HeifCodec::Hevc, "IMG_0003.HEIC", "image/heic"),
        (HeifCodec::Av1, "PXL_0004.avif", "image/avif"),
    ] {
        let photo = images::encoded_heif(640, 480, codec);
        let image = app.upload("alice", spec(name), &photo).await.unwrap();
        assert_eq!(image.content_type, content_type);
        assert_eq!((image.width, image.height), (480, 640), "as viewed");
        assert!(image.metadata_stripped);
        assert_eq!(image.size_bytes as usize, photo.len());
        let stored = app.download("bob", &image.image_id).await.unwrap();
        for secret in images::PHONE_SECRETS {
            let found = stored.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "{secret} left in the stored {name}");
        }
        assert_no_identifying_tags(&stored, name);
        assert_eq!(
            heif_pixels(&stored),
            heif_pixels(&photo),
            "pixels untouched"
        );

        let names: Vec<_> = image.variants.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["small", "medium"], "{name}");
        let small = download_variant(&app, &image.image_id, "small").await;
        assert_upright(&small, (240, 320));
        let medium = download_variant(&app, &image.image_id, "medium").await;
        assert_upright(&medium, (480, 640));
        assert!(!image.blurhash.is_empty());
        blurhash::decode(&image.blurhash, 4, 3, 1.0).expect("the placeholder decodes");
    }

    let photo = images::encoded_heif(640, 480, HeifCodec::Hevc);
    let before = app.stored_objects().await.len();
    let truncated = &photo[..photo.len() * 2 / 3];
    let status = app
        .upload("alice", spec("cut.heic"), truncated)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    // The decoder's configuration (the HEVC parameter sets) garbled.
    let mut damaged = photo.clone();
    let config = damaged.windows(4).position(|w| w == b"hvcC").unwrap() + 4;
    for byte in &mut damaged[config..config + 40] {
        *byte ^= 0x5A;
    }
    let status = app
        .upload("alice", spec("bad.heic"), &damaged)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(
        app.wait_for_stored_objects(before).await.len(),
        before,
        "nothing left"
    );
}

/// exiftool, an independent reader, finds none of the identifying tags.
#[cfg(feature = "heif")]
fn assert_no_identifying_tags(stored: &[u8], name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, stored).unwrap();
    let output = std::process::Command::new("exiftool")
        .args(["-json", "-a", "-G1"])
        .arg(&path)
        .output()
        .expect("exiftool (Debian: libimage-exiftool-perl; scripts/test installs it)");
    let tags = String::from_utf8_lossy(&output.stdout);
    assert!(
        tags.contains("ImageWidth") || tags.contains("ImageSize"),
        "exiftool read it: {tags}"
    );
    for tag in ["GPS", "Artist", "SerialNumber", "Make\"", "Creator"] {
        assert!(
            !tags.contains(tag),
            "exiftool finds {tag} in the stored {name}: {tags}"
        );
    }
}

/// An image's pixels as libheif decodes them.
#[cfg(feature = "heif")]
fn heif_pixels(bytes: &[u8]) -> Vec<u8> {
    use libheif_rs::{ColorSpace, HeifContext, LibHeif, RgbChroma};
    let context = HeifContext::read_from_bytes(bytes).unwrap();
    let handle = context.primary_image_handle().unwrap();
    let image = LibHeif::new()
        .decode(&handle, ColorSpace::Rgb(RgbChroma::Rgb), None)
        .unwrap();
    image.planes().interleaved.unwrap().data.to_vec()
}

/// A HEIC stored as a grid of tiles, as iPhones write them: the image's
/// size is the grid's, not a tile's, the variants show the whole image
/// upright, and the pixel limit counts the whole grid.
#[cfg(feature = "heif")]
pub(super) async fn a_tiled_heic_is_one_image_of_its_full_size(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // 4 x 2 tiles of 256 x 192: 1024 x 384, red above, blue below.
    let grid = images::encoded_heif_grid((256, 192), 4, 2);
    let image = app
        .upload("alice", spec("IMG_0005.HEIC"), &grid)
        .await
        .unwrap();
    assert_eq!((image.width, image.height), (1024, 384));
    let stored = app.download("bob", &image.image_id).await.unwrap();
    assert_no_identifying_tags(&stored, "IMG_0005.HEIC");
    let medium = download_variant(&app, &image.image_id, "medium").await;
    let pixels = image::load_from_memory(&medium).unwrap().to_rgb8();
    assert_eq!(pixels.dimensions(), (1024, 384), "never upscaled");
    for x in [10, 300, 700, 1010] {
        let (top, bottom) = (pixels.get_pixel(x, 40).0, pixels.get_pixel(x, 340).0);
        assert!(
            top[0] > 150 && top[2] < 80,
            "tile column at {x}: top {top:?}"
        );
        assert!(
            bottom[2] > 150 && bottom[0] < 80,
            "tile column at {x}: bottom {bottom:?}"
        );
    }

    // Each tile is within the limit; the image is not.
    let app = TestApp::spawn_with(backend, &["--max-image-pixels", "200000"]).await;
    let status = app
        .upload("alice", spec("big.heic"), &grid)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("1024x384"), "{status:?}");
    app.assert_nothing_stored("alice").await;
}

/// The ThumbHash keeps what the BlurHash drops: a sideways phone photo's
/// hash paints a portrait placeholder (as the photo is viewed, red above
/// blue), and a PNG with transparency one with its transparent half.
pub(super) async fn a_thumbhash_keeps_the_aspect_ratio_and_the_alpha(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // The sensor's 1600 x 1200, viewed turned a quarter: 1200 x 1600.
    let photo = app
        .upload(
            "alice",
            spec("IMG_0005.jpg"),
            &images::phone_photo(1600, 1200),
        )
        .await
        .unwrap();
    let (hash, painted) = thumbhash_of(&photo, 1200.0 / 1600.0);
    assert!(!has_alpha(&hash), "an opaque photo");
    let (w, h, rgba) = painted;
    let pixel = |x: usize, y: usize| &rgba[(y * w + x) * 4..(y * w + x) * 4 + 4];
    let (top, bottom) = (pixel(w / 2, h / 8), pixel(w / 2, h * 7 / 8));
    assert!(
        top[0] > top[2] && bottom[2] > bottom[0],
        "upright: {top:?} above {bottom:?}"
    );

    // 400 x 300, its left half opaque red and its right half transparent.
    let png = {
        let pixels = image::RgbaImage::from_fn(400, 300, |x, _| {
            if x < 200 {
                image::Rgba([220, 20, 20, 255])
            } else {
                image::Rgba([0, 0, 0, 0])
            }
        });
        let mut out = std::io::Cursor::new(Vec::new());
        pixels.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    let sticker = app
        .upload("alice", spec("sticker.png"), &png)
        .await
        .unwrap();
    let (hash, (w, h, rgba)) = thumbhash_of(&sticker, 400.0 / 300.0);
    assert!(has_alpha(&hash), "the transparency is kept");
    let alpha = |x: usize, y: usize| rgba[(y * w + x) * 4 + 3];
    let (left, right) = (alpha(w / 8, h / 2), alpha(w * 7 / 8, h / 2));
    assert!(
        left > 200 && right < 60,
        "opaque left ({left}), transparent right ({right})"
    );

    // Get, List and BatchGet return the same hash as the upload did.
    let got = app.get("bob", &photo.image_id).await.unwrap();
    assert_eq!(got.thumbhash, photo.thumbhash);
    let listed = app
        .list(
            "alice",
            pb::ListImagesRequest {
                owner_id: "alice".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let hashes: Vec<_> = listed.images.iter().map(|i| i.thumbhash.as_str()).collect();
    assert_eq!(hashes, [&sticker.thumbhash, &photo.thumbhash]);
    let request = pb::BatchGetImagesRequest {
        image_ids: vec![photo.image_id.clone(), sticker.image_id.clone()],
        ..Default::default()
    };
    let batch = app
        .client()
        .batch_get_images(as_user("bob", request))
        .await
        .unwrap()
        .into_inner();
    let hashes: Vec<_> = batch
        .images
        .iter()
        .map(|found| found.image.as_ref().unwrap().thumbhash.as_str())
        .collect();
    assert_eq!(hashes, [&photo.thumbhash, &sticker.thumbhash]);
}

/// The image's ThumbHash, base64-decoded, and painted; its aspect ratio is
/// checked against `upright` (width / height as viewed) within 10 %, the
/// precision of a hash with 5 to 7 components along the longer side.
fn thumbhash_of(image: &pb::Image, upright: f32) -> (Vec<u8>, (usize, usize, Vec<u8>)) {
    use base64::Engine as _;
    let hash = base64::engine::general_purpose::STANDARD
        .decode(&image.thumbhash)
        .unwrap_or_else(|e| panic!("{:?} is not base64: {e}", image.thumbhash));
    let ratio = thumbhash::thumb_hash_to_approximate_aspect_ratio(&hash).unwrap();
    let painted = thumbhash::thumb_hash_to_rgba(&hash).expect("the ThumbHash decodes");
    let (w, h, _) = &painted;
    for (what, got) in [("hash", ratio), ("painted", *w as f32 / *h as f32)] {
        assert!(
            (got / upright - 1.0).abs() < 0.1,
            "{what} aspect ratio {got} for an image of {upright}"
        );
    }
    (hash, painted)
}

/// The ThumbHash's has-alpha flag, the top bit of its third byte, which is
/// what tells a client to paint transparency.
fn has_alpha(hash: &[u8]) -> bool {
    let (.., a) = thumbhash::thumb_hash_to_average_rgba(hash).unwrap();
    let flag = hash[2] & 0x80 != 0;
    assert_eq!(flag, a < 1.0, "the flag agrees with the average alpha");
    flag
}

/// Every decodable photo gets a PDQ perceptual hash of the image as
/// viewed, which block lists and similar-image searches compare: a copy
/// resized and re-encoded at another quality, or sent as a PNG, is within
/// Meta's matching distance (31 bits); another photo is not. Only the
/// owner sees it: to anyone else it would tell which of the owner's
/// images look alike.
pub(super) async fn a_photo_gets_a_pdq_hash_only_its_owner_sees(backend: Backend) {
    use image_service::media::pdq::{PdqHash, RECOMMENDED_MAX_DISTANCE};
    let app = TestApp::spawn(backend).await;
    let shot = images::PhoneShot::upright;
    let photo = images::phone_shot(&shot(1600, 1200, 92, 7));
    let resized = images::phone_shot(&shot(800, 600, 60, 7));
    let png = {
        let mut out = std::io::Cursor::new(Vec::new());
        images::scene(1000, 750, 7)
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    };
    let other = images::phone_shot(&shot(1600, 1200, 92, 8));
    let mut hashes = Vec::new();
    for (name, file) in [
        ("IMG_0007.jpg", &photo),
        ("small.jpg", &resized),
        ("copy.png", &png),
        ("IMG_0008.jpg", &other),
    ] {
        let image = app.upload("alice", spec(name), file).await.unwrap();
        let got = app.get("alice", &image.image_id).await.unwrap();
        assert_eq!(got.pdq_hash, image.pdq_hash, "{name}");
        assert!(image.pdq_quality >= 50, "{name}: {}", image.pdq_quality);
        let hash = PdqHash::from_hex(&image.pdq_hash)
            .unwrap_or_else(|| panic!("{name}: {:?} is not 64 hex digits", image.pdq_hash));
        assert_eq!(hash.to_hex(), image.pdq_hash, "{name}: lower case");

        let seen_by_bob = app.get("bob", &image.image_id).await.unwrap();
        assert_eq!(
            (seen_by_bob.pdq_hash.as_str(), seen_by_bob.pdq_quality),
            ("", 0),
            "{name}"
        );
        hashes.push(hash);
    }
    for (copy, name) in [(1, "resized"), (2, "PNG")] {
        let distance = hashes[0].distance(&hashes[copy]);
        assert!(
            distance <= RECOMMENDED_MAX_DISTANCE,
            "the {name} copy is {distance} bits away"
        );
    }
    let distance = hashes[0].distance(&hashes[3]);
    assert!(
        distance > RECOMMENDED_MAX_DISTANCE,
        "another photo is only {distance} bits away"
    );

    // An image too small to hash (under 5 pixels on a side) has none.
    let tiny = app
        .upload("alice", spec("tiny.png"), &images::png(4, 4, 1))
        .await
        .unwrap();
    assert_eq!((tiny.pdq_hash.as_str(), tiny.pdq_quality), ("", 0));
}
