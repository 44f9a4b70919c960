//! The encodings made after an upload is acknowledged (`--variant-formats`):
//! they appear in the image once stored, decode with another decoder to the
//! variant's upright size, are what a viewer accepting them gets, and are
//! never lost to a concurrent edit, a delete, a full queue or a replica
//! that dies: the repair pass makes what is left.
use super::*;

/// Variants kept in JPEG (made before the acknowledgement) and WebP.
const JPEG_AND_WEBP: [&str; 2] = ["--variant-formats", "jpeg,webp"];
/// With a `large` variant, the background work takes long enough (a
/// 12-megapixel encode) that an edit, a delete or a kill right after the
/// acknowledgement comes before it ends.
const LARGE: [&str; 2] = ["--variant", "large=4096"];

/// How long the background may take to add an image's encodings.
const BACKGROUND_DEADLINE: Duration = Duration::from_secs(90);

fn flags(groups: &[&[&'static str]]) -> Vec<&'static str> {
    groups.concat()
}

/// A phone photo taken sideways (EXIF orientation 6): 1600 x 1200 sensor
/// pixels, viewed as 1200 x 1600.
fn sideways_photo() -> Vec<u8> {
    images::phone_photo(1600, 1200)
}

/// Whether every variant of the image has an entry of `content_type`.
fn has_encoding(image: &pb::Image, content_type: &str) -> bool {
    let names: HashSet<&str> = image.variants.iter().map(|v| v.name.as_str()).collect();
    names.iter().all(|name| {
        image
            .variants
            .iter()
            .any(|v| v.name == *name && v.content_type == content_type)
    })
}

/// The image once every variant has an entry of `content_type`.
async fn wait_for_encoding(app: &TestApp, image_id: &str, content_type: &str) -> pb::Image {
    let deadline = tokio::time::Instant::now() + BACKGROUND_DEADLINE;
    loop {
        let image = app.get("bob", image_id).await.unwrap();
        if has_encoding(&image, content_type) {
            return image;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {content_type} encodings appeared: {:?}",
            variant_rows(&image)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A download of the variant by a viewer that accepts `types`.
async fn download(
    app: &TestApp,
    image_id: &str,
    variant: &str,
    types: &[&str],
) -> (pb::DownloadImageResponse, Vec<u8>) {
    let accept: Vec<String> = types.iter().map(|t| (*t).to_owned()).collect();
    super::negotiation::download_accepting(app, image_id, variant, &accept).await
}

/// Acknowledged with its JPEG variants only; then the WebP ones appear
/// (in `GetImage` and `ListImages`), each at its variant's upright size as
/// Pillow decodes it and smaller than the JPEG, and served to a viewer
/// that accepts WebP with its true type, while one without `accept` still
/// gets the JPEG.
pub(super) async fn encodings_made_after_the_acknowledgement_appear_and_decode_upright(
    backend: Backend,
) {
    let app = TestApp::spawn_with(backend, &JPEG_AND_WEBP).await;
    let acknowledged = app
        .upload("alice", spec("sideways.jpg"), &sideways_photo())
        .await
        .unwrap();
    assert_eq!(
        variant_rows(&acknowledged),
        [
            ("small", "image/jpeg", 240, 320),
            ("medium", "image/jpeg", 810, 1080)
        ],
        "the acknowledgement waits for the JPEG variants only"
    );
    let id = acknowledged.image_id.as_str();
    let image = wait_for_encoding(&app, id, "image/webp").await;
    assert_eq!(
        variant_rows(&image),
        [
            ("small", "image/jpeg", 240, 320),
            ("small", "image/webp", 240, 320),
            ("medium", "image/jpeg", 810, 1080),
            ("medium", "image/webp", 810, 1080),
        ]
    );
    let listed = app
        .list_all("alice", pb::ListImagesRequest::default())
        .await
        .unwrap();
    assert_eq!(variant_rows(&listed[0]), variant_rows(&image));

    for (name, width, height) in [("small", 240, 320), ("medium", 810, 1080)] {
        let entry = |content_type: &str| {
            image
                .variants
                .iter()
                .find(|v| v.name == name && v.content_type == content_type)
                .unwrap()
                .clone()
        };
        let (jpeg, webp) = (entry("image/jpeg"), entry("image/webp"));
        assert!(webp.size_bytes < jpeg.size_bytes, "{webp:?} vs {jpeg:?}");

        let (first, bytes) = download(&app, id, name, &["image/webp", "image/jpeg"]).await;
        assert_eq!(first.content_type, "image/webp");
        assert_eq!(bytes.len() as i64, webp.size_bytes);
        let decoded = crate::helpers::decoded_by_pillow(&bytes);
        assert_eq!(decoded, ("WEBP".into(), width, height, "RGB".into()));

        let (first, bytes) = download(&app, id, name, &[]).await;
        assert_eq!(first.content_type, "image/jpeg");
        let decoded = crate::helpers::decoded_by_pillow(&bytes);
        assert_eq!(decoded, ("JPEG".into(), width, height, "RGB".into()));

        // The object itself carries its type, as a browser fetches it.
        let url = app
            .client()
            .get_download_url(as_user(
                "bob",
                pb::GetDownloadUrlRequest {
                    image_id: id.into(),
                    variant: name.into(),
                    accept: vec!["image/webp".into()],
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(url.content_type, "image/webp");
        let fetched = reqwest::get(&url.url).await.unwrap();
        assert_eq!(fetched.headers()["content-type"], "image/webp");
    }

    app.delete("alice", id).await.unwrap();
    let left = app.wait_for_stored_objects(0).await;
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// An edit made while the background adds the encodings is kept: the
/// record update is conditional on the revision it read, and re-applied
/// on the edited record.
pub(super) async fn an_edit_racing_the_background_update_is_kept(backend: Backend) {
    let app = TestApp::spawn_with(backend, &flags(&[&JPEG_AND_WEBP, &LARGE])).await;
    let image = app
        .upload("alice", spec("race.jpg"), &images::phone_photo(4000, 3000))
        .await
        .unwrap();
    let edited = app
        .update(
            "alice",
            pb::UpdateImageRequest {
                image_id: image.image_id.clone(),
                title: "edited while encoding".into(),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["title".into()],
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(edited.title, "edited while encoding");
    let image = wait_for_encoding(&app, &image.image_id, "image/webp").await;
    assert_eq!(image.title, "edited while encoding", "the edit was kept");
}

/// An image deleted while its encodings are being made leaves nothing: the
/// background finds it gone and removes what it wrote. Stopping the
/// server waits for the background, so what is left afterwards is final.
pub(super) async fn a_delete_racing_the_background_leaves_nothing(backend: Backend) {
    // Long enough for a 12-megapixel encode on a busy machine.
    let drain = ["--shutdown-timeout", "120s"];
    let mut app = TestApp::spawn_with(backend, &flags(&[&JPEG_AND_WEBP, &LARGE, &drain])).await;
    let image = app
        .upload("alice", spec("gone.jpg"), &images::phone_photo(4000, 3000))
        .await
        .unwrap();
    app.delete("alice", &image.image_id).await.unwrap();
    app.stop().await.unwrap();
    let left = app.stored_objects_now();
    assert!(left.is_empty(), "left behind: {left:?}");
    let report = app.repair_pass(true).await;
    assert!(report.is_clean(), "{report:?}");
}

/// With no room in the queue the upload is still acknowledged, with its
/// JPEG variants; its encodings stay journaled, and the repair pass makes
/// them from the stored original.
pub(super) async fn work_the_queue_has_no_room_for_is_left_to_the_repair_pass(backend: Backend) {
    let queue = ["--max-queued-encodings", "0"];
    let mut app = TestApp::spawn_with(backend, &flags(&[&JPEG_AND_WEBP, &queue])).await;
    let image = app
        .upload("alice", spec("later.jpg"), &sideways_photo())
        .await
        .unwrap();
    let id = image.image_id.clone();
    assert!(!has_encoding(&image, "image/webp"));
    app.stop().await.unwrap();

    let report = app.repair_pass(true).await;
    assert_eq!(report.pending_encodings, [format!("{id} (webp)")]);
    let report = app.repair_pass(false).await;
    assert_eq!(report.pending_encodings, [format!("{id} (webp): added 2")]);
    let report = app.repair_pass(false).await;
    assert!(report.is_clean(), "done once: {report:?}");

    let app = app.successor(&JPEG_AND_WEBP).await;
    let image = app.get("bob", &id).await.unwrap();
    assert!(
        has_encoding(&image, "image/webp"),
        "{:?}",
        variant_rows(&image)
    );
    let (first, bytes) = download(&app, &id, "medium", &["image/webp"]).await;
    assert_eq!(first.content_type, "image/webp");
    let decoded = crate::helpers::decoded_by_pillow(&bytes);
    assert_eq!(decoded, ("WEBP".into(), 810, 1080, "RGB".into()));
}

/// A replica killed (SIGKILL) after acknowledging an upload, before its
/// background work has ended, leaves the work journaled; the periodic
/// repair pass of another replica makes the encodings.
pub(super) async fn a_killed_replicas_encodings_are_made_by_another_replicas_repair_pass(
    backend: Backend,
) {
    let mut app = TestApp::spawn_with(backend, &flags(&[&JPEG_AND_WEBP, &LARGE])).await;
    // The real binary on the same stores, killed as a crash would.
    let (mut replica, mut client) = spawn_killable(&mut app).await;
    let messages = upload_messages(
        spec("killed.jpg"),
        &images::phone_photo(4000, 3000),
        1 << 20,
    );
    let image = upload_through(&mut client, "alice", messages).await;
    unsafe { libc::kill(replica.id() as i32, libc::SIGKILL) };
    replica.wait().unwrap();
    let id = image.image_id;

    let report = app.repair_pass(true).await;
    assert_eq!(
        report.pending_encodings,
        [format!("{id} (webp)")],
        "the work is journaled"
    );
    let repairing = ["--repair-interval", "200ms", "--repair-grace", "0s"];
    let app = app
        .successor(&flags(&[&JPEG_AND_WEBP, &LARGE, &repairing]))
        .await;
    let image = wait_for_encoding(&app, &id, "image/webp").await;
    assert_eq!(
        variant_rows(&image)
            .into_iter()
            .filter(|row| row.1 == "image/webp")
            .collect::<Vec<_>>(),
        [
            ("small", "image/webp", 240, 320),
            ("medium", "image/webp", 810, 1080),
            ("large", "image/webp", 3000, 4000),
        ]
    );
    let (first, bytes) = download(&app, &id, "large", &["image/webp"]).await;
    assert_eq!(first.content_type, "image/webp");
    let decoded = crate::helpers::decoded_by_pillow(&bytes);
    assert_eq!(decoded, ("WEBP".into(), 3000, 4000, "RGB".into()));
}

/// A list of encodings without JPEG, or with AVIF in a build without its
/// encoder, stops the start with a message that says why.
#[tokio::test]
async fn a_format_list_that_would_be_ignored_stops_the_start() {
    let refusal = crate::helpers::start_refusal(&["--variant-formats", "webp"])
        .await
        .expect("refused");
    assert!(refusal.contains("must include jpeg"), "{refusal}");
    let refusal = crate::helpers::start_refusal(&["--variant-formats", "jpeg,gif"])
        .await
        .expect("refused");
    assert!(refusal.contains("not an encoding"), "{refusal}");
    let avif = crate::helpers::start_refusal(&["--variant-formats", "jpeg,avif"]).await;
    if cfg!(feature = "avif") {
        assert_eq!(avif, None);
    } else {
        let refusal = avif.expect("refused");
        assert!(refusal.contains("no AVIF encoder"), "{refusal}");
    }
}
