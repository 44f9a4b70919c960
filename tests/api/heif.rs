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

/// Files under `dir` whose name is `name`, at any depth.
fn files_named(dir: &std::path::Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_named(&path, name));
        } else if entry.file_name() == name {
            found.push(path);
        }
    }
    found
}

/// Whether a stored 12 MB fake holds any of the phone's metadata (its
/// EXIF and XMP items follow the coded image, in the last KiBs).
fn holds_secrets(path: &std::path::Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false; // renamed or removed meanwhile
    };
    let tail = &bytes[bytes.len().saturating_sub(64 * 1024)..];
    images::PHONE_SECRETS
        .iter()
        .any(|secret| contains(tail, secret.as_bytes()))
}

/// The service is killed (SIGKILL) while a 12 MB HEIC whose `meta` comes
/// after `mdat` sits staged between its two passes: at no moment does an
/// original with its metadata exist, and the repair pass removes the
/// staged copy the crash left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_killed_between_the_two_passes_leaves_nothing_readable() {
    use image_service::pb::image_service_client::ImageServiceClient;
    let dir = tempfile::tempdir().unwrap();
    let command = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_image-service"));
        command
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(["--log-format", "json", "--max-image-bytes", "64MiB"])
            .arg("--data-dir")
            .arg(dir.path());
        command
    };
    let (mut service, grpc) = crate::aws::spawn_service(&mut command());
    let photo = images::heic_photo_sized(4032, 3024, images::HeifLayout::MetaLast, 12 << 20);
    let mut client = ImageServiceClient::new(crate::helpers::connect(grpc).await);
    let messages = crate::helpers::upload_messages(spec("late.heic"), &photo, 1 << 20);
    let call = tokio::spawn(async move {
        let stream = tokio_stream::iter(messages);
        client
            .upload_image(crate::helpers::as_user("alice", stream))
            .await
    });

    let blobs = dir.path().join("blobs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        for original in files_named(&blobs, "original") {
            assert!(!holds_secrets(&original), "a readable original with GPS");
        }
        if !files_named(&blobs, "staged-original").is_empty() {
            break;
        }
        assert!(
            !call.is_finished() && std::time::Instant::now() < deadline,
            "no staged original was seen: {:?}",
            call.is_finished().then_some("the upload ended")
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    unsafe { libc::kill(service.id() as i32, libc::SIGKILL) };
    service.wait().unwrap();
    let _ = call.await;
    for original in files_named(&blobs, "original") {
        assert!(!holds_secrets(&original), "a readable original with GPS");
    }

    // The repair pass removes what has no record: the staged copy, and
    // an original the crash left unrecorded.
    let output = command()
        .args(["repair", "--grace", "0s", "--json"])
        .output()
        .unwrap();
    let report = crate::helpers::json(&output);
    assert!(
        files_named(&blobs, "staged-original").is_empty(),
        "the staged copy is removed: {report}"
    );
    let (mut service, grpc) = crate::aws::spawn_service(&mut command());
    let app = ImageServiceClient::new(crate::helpers::connect(grpc).await);
    let listed = app
        .clone()
        .list_images(crate::helpers::as_user(
            "alice",
            pb::ListImagesRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner()
        .images;
    // Killed before its record was stored, the image is gone; stored, it
    // was scrubbed.
    let originals = files_named(&blobs, "original");
    assert_eq!(originals.len(), listed.len(), "{report}");
    assert!(originals.iter().all(|o| !holds_secrets(o)));
    unsafe { libc::kill(service.id() as i32, libc::SIGTERM) };
    service.wait().unwrap();
}

/// A HEIF whose image item is JPEG-coded (`jpeg`), holding a real phone
/// photo with EXIF (GPS, maker, owner, serial number) and XMP: the
/// downloaded original holds none of it, with its `meta` box first or
/// after `mdat` (the second pass), and the item is still the same JPEG
/// pixels at the same offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jpeg_item_is_stored_without_its_exif_or_xmp() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let jpeg = include_bytes!("../../examples/images/phone-photo.jpg");
    for meta_last in [false, true] {
        let photo = images::heif_with_jpeg_item(jpeg, 480, 360, meta_last);
        for secret in images::PHONE_SECRETS {
            assert!(contains(&photo, secret.as_bytes()), "{secret} in fixture");
        }
        let image = match app.upload("alice", spec("jpeg-item.heif"), &photo).await {
            Ok(image) => image,
            // A build whose HEIF decoder cannot read JPEG items refuses it.
            Err(status) if cfg!(feature = "heif") => {
                assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
                continue;
            }
            Err(status) => panic!("{status:?}"),
        };
        assert_eq!(image.content_type, "image/heif");
        assert_eq!((image.width, image.height), (480, 360));
        assert!(image.metadata_stripped);
        let stored = app.download("alice", &image.image_id).await.unwrap();
        assert_eq!(stored.len(), photo.len(), "nothing moves");
        for secret in images::PHONE_SECRETS {
            assert!(!contains(&stored, secret.as_bytes()), "{secret} stored");
        }
        for tag in [&b"Exif\0\0"[..], b"http://ns.adobe.com/xap"] {
            assert!(
                !contains(&stored, tag),
                "{tag:?} stored (meta last: {meta_last})"
            );
        }
        let at = photo.windows(jpeg.len()).position(|w| w == jpeg).unwrap();
        let item = &stored[at..at + jpeg.len()];
        let decoded = image::load_from_memory(item).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (480, 360));
        for (name, bytes) in [("stored.heif", &stored[..]), ("item.jpg", item)] {
            if let Some(tags) = crate::helpers::exiftool_tags(name, bytes) {
                assert!(tags.contains("ImageSize"), "exiftool read {name}: {tags}");
                for tag in ["GPS", "Artist", "SerialNumber", "Make\"", "XMP"] {
                    assert!(
                        !tags.contains(tag),
                        "exiftool finds {tag} in {name}: {tags}"
                    );
                }
            }
        }
    }
}

/// The pixels `heif-convert` (libheif's tool) decodes from `heic`, where
/// it is installed.
fn heif_convert(heic: &[u8]) -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.heic"), dir.path().join("out.y4m"));
    std::fs::write(&input, heic).unwrap();
    let status = std::process::Command::new("heif-convert")
        .arg(&input)
        .arg(&output)
        .output()
        .ok()?;
    assert!(status.status.success(), "heif-convert: {status:?}");
    Some(std::fs::read(output).unwrap())
}

/// A real HEIC (made with heif-enc, see `tests/api/fixtures/README.md`)
/// with a location hidden where no item's bytes lie: after the last item
/// in `mdat`, and in a `free` box. The downloaded original holds neither,
/// nothing moved, and it decodes to the same pixels: with its `meta` box
/// after `mdat` (the second pass zeros what no item covers) and, in a build
/// that encodes HEIC, first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_hidden_where_no_item_points_is_not_stored() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let hidden = b"GPS 43.4832 N 1.5586 W, Alice Example";
    #[cfg_attr(not(feature = "heif"), allow(unused_mut))]
    let mut photos = vec![include_bytes!("fixtures/meta-after-mdat.heic").to_vec()];
    #[cfg(feature = "heif")]
    photos.push(images::encoded_heif(64, 48, images::HeifCodec::Hevc));
    for real in photos {
        let photo = images::heif_with_text_outside_its_items(&real, hidden);
        assert!(contains(&photo, hidden), "hidden in the upload");
        let image = app
            .upload("alice", spec("hidden.heic"), &photo)
            .await
            .unwrap();
        assert!(image.metadata_stripped);
        assert_eq!(image.size_bytes as usize, photo.len(), "nothing moves");
        let stored = app.download("alice", &image.image_id).await.unwrap();
        assert_eq!(stored.len(), photo.len());
        assert!(!contains(&stored, hidden), "the hidden text is stored");
        assert!(!contains(&stored, &hidden[..8]), "part of it is stored");
        if cfg!(feature = "heif") {
            assert!(!image.variants.is_empty(), "rendered from the original");
        }
        if let Some(pixels) = heif_convert(&stored) {
            assert_eq!(Some(pixels), heif_convert(&real), "the same pixels");
        }
    }
}

/// A real HEIC with a phone's motion track appended (a `moov` with text in
/// every field it has room for, and the track's samples in an `mdat` no
/// item points into), and the same layout around a fake still: the stored
/// original holds none of that text and no `moov`, nothing moved, and the
/// still decodes to the same pixels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_motion_track_is_not_stored_and_the_still_is() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let marker = "MARKER-Alice-Example-48.8584N";
    let real = include_bytes!("fixtures/meta-after-mdat.heic").to_vec();
    let (moov, samples) = images::motion_track(marker);
    let photo = [&real[..], &moov, &samples].concat();
    let image = app
        .upload("alice", spec("motion.heic"), &photo)
        .await
        .unwrap();
    assert!(image.metadata_stripped);
    assert_eq!(image.content_type, "image/heic");
    let stored = app.download("alice", &image.image_id).await.unwrap();
    assert_eq!(stored.len(), photo.len(), "nothing moves");
    assert!(
        !contains(&stored, marker.as_bytes()),
        "the track's text is stored"
    );
    assert!(!contains(&stored, b"moov") && !contains(&stored, b"sample-frame-"));
    if cfg!(feature = "heif") {
        assert!(!image.variants.is_empty(), "rendered from the original");
    }
    if let Some(pixels) = heif_convert(&stored) {
        assert_eq!(Some(pixels), heif_convert(&real), "the same pixels");
    }
    let fake = images::heic_with_motion_track(marker, false);
    let Some(image) = upload_fake(&app, "fake-motion.heic", &fake).await else {
        return;
    };
    let stored = app.download("alice", &image.image_id).await.unwrap();
    assert_eq!(stored.len(), fake.len());
    assert!(!contains(&stored, marker.as_bytes()));
    assert!(contains(&stored, &b"hvc1-coded-image-data-".repeat(40)));
}
