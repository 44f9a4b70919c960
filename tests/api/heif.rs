//! HEIC, HEIF and AVIF uploads that try what the `meta` box parser and the
//! scrubber must withstand: a bomb of `iloc` extents, a motion photo with
//! its video and `uuid` boxes, brands the sniffer accepts, grids of tiles.
//! (The coded images here are not real HEVC: a build that decodes HEIC
//! refuses them as undecodable once their container has been read.)

use crate::helpers::{Backend, TestApp, images, spec};
use image_service::pb;
use tonic::Code;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// An upload of one of these fakes: stored in a build without a HEIC
/// decoder, refused as undecodable in one with it.
async fn upload_fake(app: &TestApp, name: &str, bytes: &[u8]) -> Option<pb::Image> {
    let result = app.upload("alice", spec(name), bytes).await;
    if cfg!(feature = "heif") {
        let status = result.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("cannot be decoded"), "{status:?}");
        None
    } else {
        Some(result.unwrap())
    }
}

/// A 12 KB `iloc` listing 2 000 items of 65 535 extents each, with fields
/// of no width (16 bytes of memory per extent before the bound: 2 GB), and
/// a 393 KB one of 65 535 x 65 535 (which aborted the process): both are
/// refused at once, nothing is stored, and the server goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iloc_bomb_is_refused_and_the_server_goes_on() {
    let app = TestApp::spawn(Backend::Embedded).await;
    for (items, extents) in [(2000u16, 0xFFFFu16), (0xFFFF, 0xFFFF)] {
        let bomb = images::heif_iloc_bomb(items.into(), extents);
        let started = std::time::Instant::now();
        let status = app
            .upload("alice", spec("bomb.heic"), &bomb)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("iloc"), "{status:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
    app.assert_nothing_stored("alice").await;
    app.upload_png("alice", 1).await;
}

/// A Samsung motion photo keeps its still and loses its video (`mpvd`,
/// with a GPS track) and its `uuid` XMP boxes: they are stored as `free`
/// boxes of zeros, so every item offset stays valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_motion_photo_is_stored_without_its_video_or_location() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let photo = images::heic_motion_photo(4032, 3024);
    let Some(image) = upload_fake(&app, "motion.heic", &photo).await else {
        return;
    };
    assert_eq!(image.content_type, "image/heic");
    assert_eq!((image.width, image.height), (4032, 3024));
    assert!(image.metadata_stripped);
    assert_eq!(image.size_bytes as usize, photo.len(), "nothing moves");
    let stored = app.download("alice", &image.image_id).await.unwrap();
    for secret in images::PHONE_SECRETS {
        assert!(!contains(&stored, secret.as_bytes()), "{secret} stored");
    }
    for kind in [&b"mpvd"[..], b"uuid", b"moov"] {
        assert!(!contains(&stored, kind), "{kind:?} stored");
    }
    assert!(contains(&stored, &b"hvc1-coded-image-data-".repeat(40)));
}

/// A HEIC whose major brand is `miaf`, or unknown with HEIF compatible
/// brands, is accepted as HEIF and so stripped like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_heif_brand_accepted_is_stripped() {
    let app = TestApp::spawn(Backend::Embedded).await;
    for ftyp in [
        &b"miaf\0\0\0\0miafmif1heic"[..],
        b"isom\0\0\0\0isommif1heic",
    ] {
        let parts = images::HeifParts {
            ftyp: ftyp.to_vec(),
            ..images::HeifParts::default()
        };
        let photo = images::heif_file(&images::phone_heif_items(640, 480), &parts);
        let Some(image) = upload_fake(&app, "brand.heic", &photo).await else {
            continue;
        };
        assert_eq!(image.content_type, "image/heic");
        assert!(image.metadata_stripped);
        let stored = app.download("alice", &image.image_id).await.unwrap();
        for secret in images::PHONE_SECRETS {
            assert!(!contains(&stored, secret.as_bytes()), "{secret} stored");
        }
    }
    // An MP4 is not an image.
    let mut video = images::iso_box(b"ftyp", b"isom\0\0\0\0isommp42");
    video.extend(images::iso_box(b"mdat", b"frames"));
    let status = app
        .upload("alice", spec("clip.heic"), &video)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

/// A grid of 512-px tiles is recorded at the grid's size, not a tile's,
/// and as viewed (turned by the grid's `irot`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grid_is_recorded_at_its_whole_size() {
    let app = TestApp::spawn(Backend::Embedded).await;
    for (turns, expected) in [(0, (4000, 1848)), (1, (1848, 4000))] {
        let grid = images::heic_grid(4000, 1848, 512, turns);
        let Some(image) = upload_fake(&app, "grid.heic", &grid).await else {
            return;
        };
        assert_eq!((image.width, image.height), expected, "irot {turns}");
    }
}
