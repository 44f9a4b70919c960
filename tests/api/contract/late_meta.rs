//! HEICs whose `meta` box comes after `mdat`, as Samsung phones write them:
//! their EXIF has gone by before the `meta` box says where it is, so the
//! original is staged where no caller can read it and written once more
//! with its metadata overwritten. Through every upload path, on every
//! backend.
use super::*;

/// A real 320x240 HEIC made with heif-enc, tagged with exiftool (camera
/// make and model, serial number, artist, GPS), its `meta` box moved after
/// `mdat` (see `tests/api/fixtures/README.md`).
const LATE_META_HEIC: &[u8] = include_bytes!("../fixtures/meta-after-mdat.heic");

/// Text the fixture's EXIF holds.
const SECRETS: [&str; 4] = ["PhoneMaker", "Model X", "SN-4411-2093-77", "Alice Example"];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The stored original holds none of the fixture's metadata: the bytes
/// that differ from the upload are one run (the EXIF item) that is now an
/// empty TIFF structure and zeros; exiftool, where installed, finds no
/// identifying tag in it.
fn assert_scrubbed(stored: &[u8], uploaded: &[u8]) {
    assert_eq!(stored.len(), uploaded.len(), "blanked in place");
    for secret in SECRETS {
        assert!(
            contains(uploaded, secret.as_bytes()),
            "{secret} in the fixture"
        );
        assert!(!contains(stored, secret.as_bytes()), "{secret} stored");
    }
    let differ: Vec<usize> = (0..stored.len())
        .filter(|&i| stored[i] != uploaded[i])
        .collect();
    let (first, last) = (differ[0], differ[differ.len() - 1]);
    let item = &stored[first..=last];
    let tiff = item
        .windows(4)
        .position(|w| w == b"MM\0\x2A")
        .expect("an empty TIFF structure");
    assert!(
        item[tiff + 8..].iter().all(|&b| b == 0),
        "the EXIF item holds nothing but an empty IFD"
    );
    if let Some(tags) = crate::helpers::exiftool_tags("stored.heic", stored) {
        assert!(tags.contains("ImageSize"), "exiftool read it: {tags}");
        for tag in ["GPS", "Artist", "SerialNumber", "Make\"", "Model\""] {
            assert!(!tags.contains(tag), "exiftool finds {tag}: {tags}");
        }
    }
}

/// What every path must give: the image as a meta-first file's, its
/// original scrubbed, variants where HEIC is decoded, and no staged copy
/// left.
async fn assert_stored_like_a_meta_first_file(app: &TestApp, image: &pb::Image) {
    assert_eq!(image.content_type, "image/heic");
    assert_eq!((image.width, image.height), (320, 240));
    assert!(image.metadata_stripped);
    assert_eq!(image.uploaded_sha256, sha256_hex(LATE_META_HEIC));
    assert_eq!(image.size_bytes as usize, LATE_META_HEIC.len());
    let stored = app.download("bob", &image.image_id).await.unwrap();
    assert_eq!(image.sha256, sha256_hex(&stored));
    assert_scrubbed(&stored, LATE_META_HEIC);
    if cfg!(feature = "heif") {
        assert!(!image.variants.is_empty(), "rendered from the original");
        assert!(!image.blurhash.is_empty());
    } else {
        assert!(image.variants.is_empty());
    }
    let staged: Vec<_> = app
        .stored_objects()
        .await
        .into_iter()
        .filter(|o| o.contains("staged-original"))
        .collect();
    assert!(
        staged.is_empty(),
        "the staged original is deleted: {staged:?}"
    );
}

/// Streamed (`UploadImage`), through a resumable session cut and resumed,
/// and sent straight to the store (`CompleteUpload`): the same pipeline.
pub async fn a_heic_with_meta_after_mdat_is_stored_scrubbed_by_every_path(backend: Backend) {
    let app = TestApp::spawn_with(backend, &["--upload-session-segment-size", "64KiB"]).await;
    let streamed = app
        .upload("alice", spec("20240601_120000.heic"), LATE_META_HEIC)
        .await
        .unwrap();
    assert_stored_like_a_meta_first_file(&app, &streamed).await;

    // A session: half the bytes, then the rest on a second stream.
    let id = sessions::start(&app, "alice", spec("session.heic"))
        .await
        .unwrap()
        .upload_id;
    let half = LATE_META_HEIC.len() / 2;
    let first = sessions::resume_messages(&id, 0, &LATE_META_HEIC[..half], 4096, false);
    let cut = app.upload_messages("alice", first).await;
    assert!(cut.is_err(), "no finish_write: {cut:?}");
    let rest = sessions::resume_messages(&id, half, &LATE_META_HEIC[half..], 4096, true);
    let resumed = app.upload_messages("alice", rest).await.unwrap();
    assert_stored_like_a_meta_first_file(&app, &resumed).await;

    // Direct: PUT to a presigned URL, then CompleteUpload.
    let id = sessions::start(&app, "alice", spec("direct.heic"))
        .await
        .unwrap()
        .upload_id;
    let parts = sessions::exact_parts(&[LATE_META_HEIC.len()]);
    let urls = sessions::upload_urls(&app, "alice", &id, parts)
        .await
        .unwrap();
    let put = sessions::put(&urls[0], LATE_META_HEIC.to_vec()).await;
    assert!(put.is_success(), "{put:?}");
    let direct = sessions::complete(&app, "alice", &id).await.unwrap();
    assert_stored_like_a_meta_first_file(&app, &direct).await;
    let listed = app
        .list_all("alice", pb::ListImagesRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);
}

/// A stream cut once its `mdat` (with the EXIF) has arrived, and a file
/// whose `meta` box never comes: nothing is stored, nothing is left.
pub async fn a_heic_cut_before_its_late_meta_box_leaves_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // A first upload, stored, shows the layout is accepted.
    let image = app
        .upload("alice", spec("first.heic"), LATE_META_HEIC)
        .await
        .unwrap();
    let before = app.stored_objects().await.len();
    let meta_at = LATE_META_HEIC.len() - 387;
    assert_eq!(&LATE_META_HEIC[meta_at + 4..meta_at + 8], b"meta");
    let mut messages = upload_messages(spec("cut.heic"), &LATE_META_HEIC[..meta_at], 4096);
    messages.last_mut().unwrap().finish_write = false;
    assert!(app.upload_messages("alice", messages).await.is_err());
    let status = app
        .upload("alice", spec("no-meta.heic"), &LATE_META_HEIC[..meta_at])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("meta"), "{status:?}");
    let left = app.wait_for_stored_objects(before).await;
    assert_eq!(left.len(), before, "nothing left: {left:?}");
    let listed = app
        .list_all("alice", pb::ListImagesRequest::default())
        .await
        .unwrap();
    assert_eq!(ids(&listed), [image.image_id]);
}
