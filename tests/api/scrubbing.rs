//! Metadata scrubbing over the real server: what a camera, an editor or a
//! provenance tool adds that the scrubber does not know is gone from the
//! stored original, and the original still decodes.
use crate::helpers::{Backend, TestApp, images, spec};
use image_service::fixtures::riff_chunk;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Uploads `bytes`, downloads the stored original, checks that no
/// `secret` survived and that it decodes to the pixels of `bytes`.
async fn stored_without(app: &TestApp, name: &str, bytes: &[u8], secrets: &[&str]) -> Vec<u8> {
    for secret in secrets {
        assert!(contains(bytes, secret.as_bytes()), "{secret} in the upload");
    }
    let image = app.upload("alice", spec(name), bytes).await.unwrap();
    assert!(image.metadata_stripped, "{name}");
    let stored = app.download("bob", &image.image_id).await.unwrap();
    for secret in secrets {
        assert!(
            !contains(&stored, secret.as_bytes()),
            "{secret:?} is still in the stored {name}"
        );
    }
    let uploaded = image::load_from_memory(bytes).unwrap().to_rgba8();
    let decoded = image::load_from_memory(&stored).unwrap().to_rgba8();
    assert!(decoded == uploaded, "the stored {name} decodes differently");
    stored
}

/// A lossless WebP with `VP8X`, a `C2PA` manifest before the image data, and
/// an `EXIF` chunk after it.
fn webp_with_c2pa() -> Vec<u8> {
    let pixels = image::RgbaImage::from_fn(64, 48, |x, y| {
        image::Rgba([x as u8 * 4, y as u8 * 5, 77, 255])
    });
    let mut simple = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut simple)
        .encode(pixels.as_raw(), 64, 48, image::ExtendedColorType::Rgba8)
        .unwrap();
    let mut vp8x = vec![0x08, 0, 0, 0];
    vp8x.extend_from_slice(&63u32.to_le_bytes()[..3]);
    vp8x.extend_from_slice(&47u32.to_le_bytes()[..3]);
    let mut body = b"WEBP".to_vec();
    body.extend(riff_chunk(b"VP8X", &vp8x));
    body.extend(riff_chunk(
        b"C2PA",
        b"c2pa.claim: signed by Alice Example, Leica SN-4411",
    ));
    body.extend_from_slice(&simple[12..]);
    body.extend(riff_chunk(b"EXIF", b"MM\0*\0\0\0\x08\0\0 GPS-N-48.8584"));
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend(body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_identifying_chunks_and_segments_are_not_stored() {
    let app = TestApp::spawn_with(Backend::Embedded, &[]).await;

    let webp = webp_with_c2pa();
    let stored = stored_without(
        &app,
        "c2pa.webp",
        &webp,
        &["C2PA", "Alice Example", "SN-4411", "GPS-N-48.8584"],
    )
    .await;
    assert_eq!(stored.len(), webp.len(), "blanked in place");

    let plain = images::png(40, 30, 7);
    let mut png = plain[..33].to_vec();
    png.extend(images::png_text_chunk("Author", "Alice Example"));
    png.extend(images::png_chunk_bytes(
        b"eXIf",
        b"MM\0*\0\0\0\x08\0\0 SN-4411",
    ));
    png.extend(images::png_chunk_bytes(b"caBX", b"c2pa GPS-N-48.8584"));
    png.extend_from_slice(&plain[33..]);
    let stored = stored_without(
        &app,
        "text.png",
        &png,
        &[
            "tEXt",
            "eXIf",
            "caBX",
            "Alice Example",
            "SN-4411",
            "GPS-N-48.8584",
        ],
    )
    .await;
    assert!(stored == plain, "exactly the three chunks were removed");

    let plain = images::jpeg(64, 48);
    let app_segment = |marker: u8, payload: &[u8]| {
        let mut out = vec![0xFF, marker];
        out.extend_from_slice(&(payload.len() as u16 + 2).to_be_bytes());
        out.extend_from_slice(payload);
        out
    };
    let mut jpeg = plain[..2].to_vec();
    jpeg.extend(app_segment(0xE7, b"Vendor notes: owner Alice Example"));
    jpeg.extend(app_segment(
        0xED,
        b"Photoshop 3.0\08BIM\x04\x04\0\0\0\0\0\x12\x1c\x02\x50\0\x0dSN-4411 GPS-N-48.8584",
    ));
    jpeg.extend_from_slice(&plain[2..]);
    stored_without(
        &app,
        "vendor.jpg",
        &jpeg,
        &["Photoshop 3.0", "Alice Example", "SN-4411", "GPS-N-48.8584"],
    )
    .await;
}

/// A camera photo with a corrupted block: 16 KiB of `0xFF` in the middle of
/// its scan data, as a failing card or transfer leaves it.
fn damaged_camera_photo() -> Vec<u8> {
    let mut photo = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/images/phone-photo.jpg"
    ))
    .unwrap();
    let scan = photo
        .windows(2)
        .position(|w| w == [0xFF, 0xDA])
        .expect("a scan");
    let length = usize::from(u16::from_be_bytes([photo[scan + 2], photo[scan + 3]]));
    let data = scan + 2 + length;
    // Where the run ends before a byte that is plain scan data.
    let mut end = data + (photo.len() - data) / 2;
    while photo[end] >= 0xC0 {
        end += 1;
    }
    photo[end - 16 * 1024..end].fill(0xFF);
    photo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_camera_photo_is_stored_with_its_variants() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let photo = damaged_camera_photo();
    let image = app
        .upload("alice", spec("damaged.jpg"), &photo)
        .await
        .expect("a photo that browsers show is accepted");
    assert!(image.width > 0 && image.height > 0, "{image:?}");
    assert!(!image.variants.is_empty(), "{image:?}");
    for variant in &image.variants {
        assert!(variant.width > 0 && variant.height > 0, "{variant:?}");
    }
    let stored = app.download("bob", &image.image_id).await.unwrap();
    assert!(
        contains(&stored, &[0xFF; 16 * 1024]),
        "the damaged scan data is kept as it was"
    );
}

/// A PNG of 400 `iCCP` chunks, each inflating to a 1 MB profile: the
/// first is kept (rewritten), the others are dropped unread, so the
/// upload is quick and the stored original holds one profile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_png_icc_profiles_is_stored_as_one_quickly() {
    let app = TestApp::spawn_with(Backend::Embedded, &[]).await;
    let plain = images::png(40, 30, 8);
    let iccp = |name: &str, text: &str| {
        let mut data = name.as_bytes().to_vec();
        data.extend_from_slice(&[0, 0]);
        let profile = image_service::fixtures::icc_profile_with_text(text);
        data.extend(miniz_oxide::deflate::compress_to_vec_zlib(&profile, 9));
        images::png_chunk_bytes(b"iCCP", &data)
    };
    let mut png = plain[..33].to_vec();
    png.extend(iccp("Alice Example", "GPS-N-48.8584"));
    let flood = iccp("SN-4411", &"A".repeat(1_000_000));
    for _ in 0..400 {
        png.extend_from_slice(&flood);
    }
    png.extend_from_slice(&plain[33..]);
    let started = std::time::Instant::now();
    let stored = stored_without(&app, "flood.png", &png, &["Alice Example", "SN-4411"]).await;
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    let profiles = stored.windows(4).filter(|w| *w == b"iCCP").count();
    assert_eq!(profiles, 1, "one profile is stored");
    assert!(stored.len() < 4096, "{} bytes stored", stored.len());
}
