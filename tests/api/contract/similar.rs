//! Copies of a photo found by their PDQ hashes: `FindSimilarImages` finds
//! a photo's resized, re-encoded, cropped and brightened copies, whoever
//! uploaded them, and not unrelated photos; a removed original leaves the
//! index but its copies are still found from it, a deleted copy no more;
//! only moderators search. A
//! search reads at most its share of a bucket crowded with copies of one
//! photo, says so, and other photos' searches are unaffected.
use image::{RgbImage, imageops};
use image_service::pb::find_similar_images_request::Query;
use image_service::pb::moderation_service_client::ModerationServiceClient;

use super::*;

const MODERATOR: &str = "trust-and-safety";

fn jpeg(pixels: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(pixels)
        .expect("a JPEG");
    out
}

async fn upload_jpeg(app: &TestApp, user: &str, name: &str, bytes: &[u8]) -> pb::Image {
    let spec = pb::ImageSpec {
        filename: name.into(),
        ..Default::default()
    };
    let image = app.upload(user, spec, bytes).await.expect("uploaded");
    assert_eq!(image.pdq_hash.len(), 64, "{name} has a PDQ hash");
    image
}

/// The bits in which two hex hashes differ.
fn hamming(a: &str, b: &str) -> u32 {
    let (a, b) = (hex::decode(a).expect("hex"), hex::decode(b).expect("hex"));
    a.iter().zip(&b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// What a search finds, as `user`: (image id, distance), nearest first,
/// and whether it was cut short.
async fn search(
    app: &TestApp,
    user: &str,
    query: Query,
    max_distance: Option<u32>,
) -> Result<(Vec<(String, u32)>, bool), Status> {
    let request = pb::FindSimilarImagesRequest {
        query: Some(query),
        max_distance,
        page_size: 0,
    };
    let mut client = ModerationServiceClient::new(crate::helpers::connect(app.grpc_addr).await);
    let response = client
        .find_similar_images(as_user(user, request))
        .await?
        .into_inner();
    let found = response
        .images
        .into_iter()
        .map(|f| (f.image.expect("an image").image_id, f.distance))
        .collect();
    Ok((found, response.candidates_truncated))
}

/// What a search finds, as `user`: (image id, distance), nearest first. It
/// was not cut short.
async fn similar(
    app: &TestApp,
    user: &str,
    query: Query,
    max_distance: Option<u32>,
) -> Result<Vec<(String, u32)>, Status> {
    let (found, truncated) = search(app, user, query, max_distance).await?;
    assert!(!truncated, "no bucket is crowded: {found:?}");
    Ok(found)
}

pub(super) async fn edited_copies_of_a_photo_are_found_and_unrelated_photos_are_not(
    backend: Backend,
) {
    let app = TestApp::spawn_with(backend, &["--moderators", MODERATOR]).await;
    let photo = images::scene(640, 480, 7);
    let original = upload_jpeg(&app, "alice", "original.jpg", &jpeg(&photo, 90)).await;
    let resized = imageops::resize(&photo, 320, 240, imageops::FilterType::Triangle);
    // About 1% off each side.
    let cropped = imageops::crop_imm(&photo, 6, 5, 628, 470).to_image();
    let mut brightened = photo.clone();
    for pixel in brightened.pixels_mut() {
        pixel.0 = pixel.0.map(|c| c.saturating_add(24));
    }
    let mut copies = Vec::new();
    for (name, bytes) in [
        ("resized.jpg", jpeg(&resized, 85)),
        ("reencoded.jpg", jpeg(&photo, 35)),
        ("cropped.jpg", jpeg(&cropped, 90)),
        ("brightened.jpg", jpeg(&brightened, 90)),
    ] {
        let copy = upload_jpeg(&app, "bob", name, &bytes).await;
        let bits = hamming(&copy.pdq_hash, &original.pdq_hash);
        eprintln!("{name}: {bits} bits from the original");
        copies.push(copy.image_id);
    }
    let mut unrelated = Vec::new();
    for seed in [8, 9, 10] {
        let other = jpeg(&images::scene(640, 480, seed), 90);
        let name = format!("other-{seed}.jpg");
        let other = upload_jpeg(&app, "carol", &name, &other).await;
        let bits = hamming(&other.pdq_hash, &original.pdq_hash);
        eprintln!("{name}: {bits} bits from the original");
        unrelated.push(other.image_id);
    }

    let by_image = Query::ImageId(original.image_id.clone());
    let found = similar(&app, MODERATOR, by_image.clone(), None)
        .await
        .expect("a search");
    let ids: HashSet<&String> = found.iter().map(|(id, _)| id).collect();
    for copy in &copies {
        assert!(ids.contains(copy), "the copy {copy} is found: {found:?}");
    }
    for other in &unrelated {
        assert!(!ids.contains(other), "{other} is not a copy: {found:?}");
    }
    assert!(
        !ids.contains(&original.image_id),
        "the query's image is left out"
    );
    assert!(found.windows(2).all(|w| w[0].1 <= w[1].1), "nearest first");
    assert!(found.iter().all(|(_, d)| *d <= 31));

    // Only the moderators search.
    for user in ["alice", "bob"] {
        let refused = similar(&app, user, by_image.clone(), None).await;
        assert_code(refused, Code::PermissionDenied);
    }

    // A removed original leaves the index, but its tombstone keeps its
    // hash: a search from it (by id or by hash) still finds its copies; a
    // deleted copy is found no more.
    let removal = pb::SetImageStateRequest {
        image_id: original.image_id.clone(),
        state: pb::ImageState::Removed as i32,
        reason: "copyright".into(),
        etag: String::new(),
    };
    ModerationServiceClient::new(crate::helpers::connect(app.grpc_addr).await)
        .set_image_state(as_user(MODERATOR, removal))
        .await
        .expect("removed");
    let deleted = &copies[0];
    app.client()
        .delete_image(as_user(
            "bob",
            pb::DeleteImageRequest {
                image_id: deleted.clone(),
            },
        ))
        .await
        .expect("deleted");
    let by_hash = Query::PdqHash(original.pdq_hash.clone());
    for query in [by_image, by_hash] {
        let found = similar(&app, MODERATOR, query, None)
            .await
            .expect("a search");
        let ids: HashSet<&String> = found.iter().map(|(id, _)| id).collect();
        assert!(!ids.contains(&original.image_id), "{found:?}");
        assert!(!ids.contains(deleted), "{found:?}");
        for copy in &copies[1..] {
            assert!(ids.contains(copy), "{found:?}");
        }
    }
}

pub(super) async fn a_crowded_hash_cuts_the_search_short_and_other_searches_are_whole(
    backend: Backend,
) {
    // 64 entries a search: each of the 32 buckets is read up to 2.
    let app = TestApp::spawn_with(
        backend,
        &["--moderators", MODERATOR, "--max-similar-candidates", "64"],
    )
    .await;
    // Ten copies of one photo: each bucket of its hash holds ten entries.
    let flood = jpeg(&images::scene(640, 480, 7), 90);
    let mut copies = Vec::new();
    for i in 0..10 {
        let copy = upload_jpeg(&app, "mallory", &format!("copy-{i}.jpg"), &flood).await;
        copies.push(copy);
    }
    let hash = copies[0].pdq_hash.clone();
    assert!(copies.iter().all(|c| c.pdq_hash == hash), "one hash");
    // Another photo and a resized copy of it.
    let other = images::scene(640, 480, 9);
    let original = upload_jpeg(&app, "carol", "other.jpg", &jpeg(&other, 90)).await;
    let resized = imageops::resize(&other, 320, 240, imageops::FilterType::Triangle);
    let resized = upload_jpeg(&app, "carol", "resized.jpg", &jpeg(&resized, 85)).await;
    eprintln!(
        "the other photo is {} bits from the copies",
        hamming(&original.pdq_hash, &hash)
    );

    let (found, truncated) = search(&app, MODERATOR, Query::PdqHash(hash.clone()), None)
        .await
        .expect("a search");
    assert!(truncated, "the search says it was cut short: {found:?}");
    // Every bucket holds the same ten copies, and a share of two of each
    // is read: some copies are found, never all (the uncapped search
    // below finds all ten).
    assert!(
        !found.is_empty() && found.len() < copies.len(),
        "{} of {} copies found",
        found.len(),
        copies.len()
    );
    assert!(found.len() <= 64, "at most the cap's worth");
    assert!(found.iter().all(|(_, d)| *d == 0), "{found:?}");
    // The other photo's buckets are not crowded: its search is whole.
    let by_other = Query::ImageId(original.image_id.clone());
    let found = similar(&app, MODERATOR, by_other.clone(), None)
        .await
        .expect("a search");
    assert!(
        found.iter().any(|(id, _)| *id == resized.image_id),
        "{found:?}"
    );

    // With the default cap the same search is whole.
    let app = app.successor(&["--moderators", MODERATOR]).await;
    let found = similar(&app, MODERATOR, Query::PdqHash(hash.clone()), None)
        .await
        .expect("a search");
    let ids: HashSet<&String> = found.iter().map(|(id, _)| id).collect();
    for copy in &copies {
        assert!(ids.contains(&copy.image_id), "{found:?}");
    }
    let found = similar(&app, MODERATOR, by_other.clone(), None)
        .await
        .expect("a search");
    assert!(
        found.iter().any(|(id, _)| *id == resized.image_id),
        "{found:?}"
    );

    // Purged, the flood leaves the buckets: under the small cap again, the
    // search by the purged copies' hash (or by a purged copy) is whole and
    // finds the one copy left.
    let app = app
        .successor(&["--moderators", MODERATOR, "--max-similar-candidates", "64"])
        .await;
    let mut client = ModerationServiceClient::new(crate::helpers::connect(app.grpc_addr).await);
    for copy in &copies[1..] {
        let purge = pb::PurgeImageRequest {
            image_id: copy.image_id.clone(),
            reason: "spam".into(),
        };
        client
            .purge_image(as_user(MODERATOR, purge))
            .await
            .expect("purged");
    }
    for query in [
        Query::PdqHash(hash),
        Query::ImageId(copies[1].image_id.clone()),
    ] {
        let found = similar(&app, MODERATOR, query, None)
            .await
            .expect("a search");
        let ids: Vec<&String> = found.iter().map(|(id, _)| id).collect();
        assert_eq!(ids, [&copies[0].image_id], "{found:?}");
    }
}
