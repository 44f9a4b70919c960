//! Image states and the moderators' tools: only moderators use them; an
//! image not active is its owner's and the moderators' alone, for every
//! read and for URLs issued before; a removed image's bytes are gone and
//! its record stays; the review pages in time order; every action is in the
//! audit trail and on the event stream.
use std::time::Duration;

use image_service::pb::moderation_service_client::ModerationServiceClient;
use tonic::transport::Channel;

use super::events::{next_events, watch};
use super::*;

const MODERATOR: &str = "trust-and-safety";
const WATCHER: &str = "cdn-purger";
const FLAGS: &[&str] = &[
    "--moderators",
    "trust-and-safety",
    "--event-watchers",
    "cdn-purger",
];

async fn moderation(app: &TestApp) -> ModerationServiceClient<Channel> {
    ModerationServiceClient::new(crate::helpers::connect(app.grpc_addr).await)
}

async fn set_state(
    app: &TestApp,
    user: &str,
    image_id: &str,
    state: pb::ImageState,
    reason: &str,
    etag: &str,
) -> Result<pb::Image, Status> {
    let request = pb::SetImageStateRequest {
        image_id: image_id.into(),
        state: state as i32,
        reason: reason.into(),
        etag: etag.into(),
    };
    let response = moderation(app)
        .await
        .set_image_state(as_user(user, request))
        .await?;
    Ok(response.into_inner().image.expect("an image"))
}

/// Quarantines an image as the moderator, with `reason`.
async fn quarantine(app: &TestApp, image_id: &str, reason: &str) -> pb::Image {
    set_state(
        app,
        MODERATOR,
        image_id,
        pb::ImageState::Quarantined,
        reason,
        "",
    )
    .await
    .expect("quarantined")
}

async fn review_page(
    app: &TestApp,
    user: &str,
    state: pb::ImageState,
    page_size: i32,
    page_token: &str,
) -> Result<pb::ListImagesForReviewResponse, Status> {
    let request = pb::ListImagesForReviewRequest {
        state: state as i32,
        page_size,
        page_token: page_token.into(),
    };
    Ok(moderation(app)
        .await
        .list_images_for_review(as_user(user, request))
        .await?
        .into_inner())
}

async fn actions(app: &TestApp, user: &str) -> Result<Vec<pb::ModerationAction>, Status> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListModerationActionsRequest {
            page_size: 2,
            page_token,
        };
        let page = moderation(app)
            .await
            .list_moderation_actions(as_user(user, request))
            .await?
            .into_inner();
        all.extend(page.actions);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

/// A search for the images like `image_id`.
fn similar_to_image(image_id: &str) -> pb::FindSimilarImagesRequest {
    pb::FindSimilarImagesRequest {
        query: Some(pb::find_similar_images_request::Query::ImageId(
            image_id.into(),
        )),
        ..Default::default()
    }
}

/// A search for the images whose hash is near `hash`.
fn similar_to_hash(hash: &str) -> pb::FindSimilarImagesRequest {
    pb::FindSimilarImagesRequest {
        query: Some(pb::find_similar_images_request::Query::PdqHash(hash.into())),
        ..Default::default()
    }
}

fn get_url(image_id: &str) -> pb::GetDownloadUrlRequest {
    pb::GetDownloadUrlRequest {
        image_id: image_id.into(),
        ..Default::default()
    }
}

/// What `user` holds, as they see it.
async fn usage_of(app: &TestApp, user: &str) -> pb::Usage {
    let request = as_user(user, pb::GetUsageRequest::default());
    let response = app.client().get_usage(request).await.unwrap();
    response.into_inner().usage.expect("a usage")
}

/// The stored objects of one image.
async fn objects_of(app: &TestApp, image_id: &str) -> Vec<String> {
    let mut objects = app.stored_objects().await;
    objects.retain(|key| key.contains(image_id));
    objects
}

#[track_caller]
fn denied<T>(result: Result<tonic::Response<T>, Status>) {
    let status = assert_code(result.map(|_| ()), Code::PermissionDenied);
    assert!(status.message().contains("--moderators"), "{status:?}");
}

pub(super) async fn only_moderators_use_the_moderation_service(backend: Backend) {
    let app = TestApp::spawn_with(backend, FLAGS).await;
    let image = app.upload_png("alice", 1).await;
    let mut client = moderation(&app).await;
    for user in ["alice", "bob", WATCHER] {
        let review = pb::ListImagesForReviewRequest {
            state: pb::ImageState::Quarantined as i32,
            ..Default::default()
        };
        denied(client.list_images_for_review(as_user(user, review)).await);
        let quarantine = pb::SetImageStateRequest {
            image_id: image.image_id.clone(),
            state: pb::ImageState::Quarantined as i32,
            reason: "spam".into(),
            etag: String::new(),
        };
        denied(client.set_image_state(as_user(user, quarantine)).await);
        let purge = pb::PurgeImageRequest {
            image_id: image.image_id.clone(),
            reason: "spam".into(),
        };
        denied(client.purge_image(as_user(user, purge)).await);
        let trail = pb::ListModerationActionsRequest::default();
        denied(client.list_moderation_actions(as_user(user, trail)).await);
        let similar = similar_to_image(&image.image_id);
        denied(client.find_similar_images(as_user(user, similar)).await);
    }
    // Nothing changed, and nothing was recorded.
    let seen = app.get("bob", &image.image_id).await.unwrap();
    assert_eq!(seen.state(), pb::ImageState::Active);
    assert_eq!(seen.etag, image.etag);
    assert!(actions(&app, MODERATOR).await.unwrap().is_empty());
    // A request the moderator gets wrong is refused with its reason.
    let status = assert_code(
        set_state(
            &app,
            MODERATOR,
            &image.image_id,
            pb::ImageState::Quarantined,
            "Not A Category",
            "",
        )
        .await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("reason"), "{status:?}");
    assert_code(
        review_page(&app, MODERATOR, pb::ImageState::Active, 10, "").await,
        Code::InvalidArgument,
    );
    // A search past the distance the band index guarantees, by a hash
    // that is not one, or by nothing, is refused; an unknown image is not
    // found; a hash nothing is near finds nothing.
    let hash = "0123456789abcdef".repeat(4);
    for (request, code, named) in [
        (
            pb::FindSimilarImagesRequest {
                max_distance: Some(32),
                ..similar_to_hash(&hash)
            },
            Code::InvalidArgument,
            "max_distance",
        ),
        (similar_to_hash("0123"), Code::InvalidArgument, "pdq_hash"),
        (
            pb::FindSimilarImagesRequest::default(),
            Code::InvalidArgument,
            "pdq_hash",
        ),
        (
            similar_to_image("00000000-0000-4000-8000-000000000000"),
            Code::NotFound,
            "",
        ),
    ] {
        let refused = client
            .find_similar_images(as_user(MODERATOR, request.clone()))
            .await;
        let status = assert_code(refused.map(|_| ()), code);
        assert!(status.message().contains(named), "{request:?}: {status:?}");
    }
    let request = pb::FindSimilarImagesRequest {
        max_distance: Some(0),
        ..similar_to_hash(&hash)
    };
    let found = client
        .find_similar_images(as_user(MODERATOR, request))
        .await
        .expect("a search")
        .into_inner();
    assert!(found.images.is_empty(), "{found:?}");
}

pub(super) async fn a_quarantined_image_is_its_owners_alone_until_approved(backend: Backend) {
    let app = TestApp::spawn_with(backend, FLAGS).await;
    let image = app.upload_png("alice", 1).await;
    let other = app.upload_png("alice", 2).await;
    let id = image.image_id.clone();
    let url = app.download_url("bob", get_url(&id)).await.unwrap();
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);

    let quarantined = quarantine(&app, &id, "spam").await;
    assert_eq!(quarantined.state(), pb::ImageState::Quarantined);
    assert_eq!(quarantined.state_reason, "spam");
    assert!(quarantined.state_time.is_some());

    // Its owner and the moderators see it, state and reason included.
    for user in ["alice", MODERATOR] {
        let seen = app.get(user, &id).await.unwrap();
        assert_eq!(
            (seen.state(), seen.state_reason.as_str()),
            (pb::ImageState::Quarantined, "spam"),
            "{user}"
        );
        assert_eq!(
            app.download(user, &id).await.unwrap().len() as i64,
            image.size_bytes
        );
    }
    let mine = app
        .list_all("alice", pb::ListImagesRequest::default())
        .await
        .unwrap();
    assert_eq!(ids(&mine), [other.image_id.clone(), id.clone()]);

    // For anyone else it does not exist, by every read.
    let status = assert_code(app.get("bob", &id).await, Code::NotFound);
    let unknown = assert_code(
        app.get("bob", &uuid::Uuid::now_v7().to_string()).await,
        Code::NotFound,
    );
    assert_eq!(
        status.message(),
        unknown.message(),
        "told apart from no image"
    );
    assert_code(app.download("bob", &id).await, Code::NotFound);
    assert_code(app.download_url("bob", get_url(&id)).await, Code::NotFound);
    // Nor by a change, which would be refused if it were seen.
    let edit = pb::UpdateImageRequest {
        image_id: id.clone(),
        title: "mine now".into(),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["title".into()],
        }),
        ..Default::default()
    };
    assert_code(app.update("bob", edit).await, Code::NotFound);
    assert_code(app.delete("bob", &id).await, Code::NotFound);
    let listed = app
        .list_all(
            "bob",
            pb::ListImagesRequest {
                owner_id: "alice".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&listed), [other.image_id.as_str()]);
    let batch = app
        .client()
        .batch_get_images(as_user(
            "bob",
            pb::BatchGetImagesRequest {
                image_ids: vec![id.clone(), other.image_id.clone()],
                url_variant: "original".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.missing_image_ids, [id.as_str()]);
    assert_eq!(batch.images.len(), 1);
    // No URL is handed out for it, even to its owner: a URL is anyone's.
    assert_code(
        app.download_url("alice", get_url(&id)).await,
        Code::FailedPrecondition,
    );
    // A URL issued before stops working where the service serves it; S3
    // presigned URLs last until they expire.
    if backend == Backend::Embedded {
        assert_eq!(reqwest::get(&url).await.unwrap().status(), 404);
    }

    // Approved, it is everyone's again.
    let approved = set_state(&app, MODERATOR, &id, pb::ImageState::Active, "", "")
        .await
        .unwrap();
    assert_eq!(approved.state(), pb::ImageState::Active);
    assert_eq!(approved.state_reason, "");
    assert_eq!(
        app.get("bob", &id).await.unwrap().state(),
        pb::ImageState::Active
    );
    assert_eq!(
        app.download("bob", &id).await.unwrap().len() as i64,
        image.size_bytes
    );
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
}

pub(super) async fn a_removed_image_loses_its_bytes_and_keeps_its_record(backend: Backend) {
    let app = TestApp::spawn_with(backend, FLAGS).await;
    let image = app.upload_png("alice", 1).await;
    let id = image.image_id.clone();
    assert!(!objects_of(&app, &id).await.is_empty());
    let before = usage_of(&app, "alice").await;
    assert!(before.bytes_held > 0);

    let removed = set_state(
        &app,
        MODERATOR,
        &id,
        pb::ImageState::Removed,
        "copyright",
        "",
    )
    .await
    .unwrap();
    assert_eq!(removed.state(), pb::ImageState::Removed);
    assert!(removed.variants.is_empty(), "{removed:?}");

    // Every object is gone (encodings still being made in the background
    // are removed by their writer).
    let mut left = objects_of(&app, &id).await;
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = objects_of(&app, &id).await;
    }
    assert!(left.is_empty(), "{left:?}");
    // The record stays, for its owner and the moderators.
    let seen = app.get("alice", &id).await.unwrap();
    assert_eq!(
        (
            seen.state(),
            seen.state_reason.as_str(),
            seen.sha256.as_str()
        ),
        (pb::ImageState::Removed, "copyright", image.sha256.as_str())
    );
    let status = assert_code(app.download("alice", &id).await, Code::FailedPrecondition);
    assert!(status.message().contains("removed"), "{status:?}");
    assert_code(app.get("bob", &id).await, Code::NotFound);
    // Its bytes are given back; the image still counts.
    let after = usage_of(&app, "alice").await;
    assert_eq!((after.bytes_held, after.images_held), (0, 1));
    // Removal is final.
    let status = assert_code(
        set_state(&app, MODERATOR, &id, pb::ImageState::Active, "", "").await,
        Code::FailedPrecondition,
    );
    assert!(status.message().contains("final"), "{status:?}");
    // Nor does its owner put text back on it: the record is a tombstone.
    let edit = pb::UpdateImageRequest {
        image_id: id.clone(),
        title: "back again".into(),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["title".into()],
        }),
        ..Default::default()
    };
    let status = assert_code(app.update("alice", edit).await, Code::FailedPrecondition);
    assert!(status.message().contains("removed"), "{status:?}");
    // Its owner may still delete the record.
    app.delete("alice", &id).await.unwrap();
    assert_code(app.get("alice", &id).await, Code::NotFound);
}

pub(super) async fn the_review_pages_in_time_order_and_the_trail_keeps_every_action(
    backend: Backend,
) {
    let app = TestApp::spawn_with(backend, FLAGS).await;
    let mut quarantined = Vec::new();
    for seed in 0..5 {
        let image = app
            .upload_png(if seed % 2 == 0 { "alice" } else { "bob" }, seed)
            .await;
        quarantined.push(image.image_id);
    }
    // Quarantined newest first: the review lists them in that order.
    quarantined.reverse();
    for id in &quarantined {
        set_state(
            &app,
            MODERATOR,
            id,
            pb::ImageState::Quarantined,
            "nudity",
            "",
        )
        .await
        .unwrap();
    }
    let untouched = app.upload_png("alice", 9).await;

    let mut listed = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = review_page(&app, MODERATOR, pb::ImageState::Quarantined, 2, &token)
            .await
            .unwrap();
        assert!(page.images.len() <= 2);
        assert!(
            page.images
                .iter()
                .all(|i| i.state() == pb::ImageState::Quarantined)
        );
        listed.extend(ids(&page.images));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(listed, quarantined);
    assert!(pages >= 3, "{pages} pages");
    assert!(!listed.contains(&untouched.image_id));
    // A token of another state is refused.
    let first = review_page(&app, MODERATOR, pb::ImageState::Quarantined, 2, "")
        .await
        .unwrap();
    assert_code(
        review_page(
            &app,
            MODERATOR,
            pb::ImageState::Removed,
            2,
            &first.next_page_token,
        )
        .await,
        Code::InvalidArgument,
    );

    // Approved or removed, an image leaves the quarantine's review.
    let approved = &quarantined[0];
    set_state(&app, MODERATOR, approved, pb::ImageState::Active, "", "")
        .await
        .unwrap();
    let removed = &quarantined[1];
    set_state(
        &app,
        MODERATOR,
        removed,
        pb::ImageState::Removed,
        "nudity",
        "",
    )
    .await
    .unwrap();
    let left = review_page(&app, MODERATOR, pb::ImageState::Quarantined, 100, "")
        .await
        .unwrap();
    assert_eq!(ids(&left.images), quarantined[2..].to_vec());
    let gone = review_page(&app, MODERATOR, pb::ImageState::Removed, 100, "")
        .await
        .unwrap();
    assert_eq!(ids(&gone.images), [removed.as_str()]);

    // Every action, oldest first, with who, when, from, to and why.
    let trail = actions(&app, MODERATOR).await.unwrap();
    let rows: Vec<_> = trail
        .iter()
        .map(|a| {
            (
                a.image_id.clone(),
                a.from_state(),
                a.to_state(),
                a.reason.clone(),
                a.moderator_id.clone(),
                a.r#type(),
            )
        })
        .collect();
    let mut expected: Vec<_> = quarantined
        .iter()
        .map(|id| {
            (
                id.clone(),
                pb::ImageState::Active,
                pb::ImageState::Quarantined,
                "nudity".to_owned(),
                MODERATOR.to_owned(),
                pb::ModerationActionType::SetState,
            )
        })
        .collect();
    expected.push((
        approved.clone(),
        pb::ImageState::Quarantined,
        pb::ImageState::Active,
        String::new(),
        MODERATOR.to_owned(),
        pb::ModerationActionType::SetState,
    ));
    expected.push((
        removed.clone(),
        pb::ImageState::Quarantined,
        pb::ImageState::Removed,
        "nudity".to_owned(),
        MODERATOR.to_owned(),
        pb::ModerationActionType::SetState,
    ));
    assert_eq!(rows, expected);
    let times: Vec<_> = trail
        .iter()
        .map(|a| a.time.expect("a time").seconds)
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
}

pub(super) async fn a_stale_etag_changes_nothing(backend: Backend) {
    let app = TestApp::spawn_with(backend, FLAGS).await;
    let image = app.upload_png("alice", 1).await;
    let id = image.image_id.clone();
    let edited = app
        .update(
            "alice",
            pb::UpdateImageRequest {
                image_id: id.clone(),
                title: "edited".into(),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["title".into()],
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_ne!(edited.etag, image.etag);
    let status = assert_code(
        set_state(
            &app,
            MODERATOR,
            &id,
            pb::ImageState::Quarantined,
            "spam",
            &image.etag,
        )
        .await,
        Code::Aborted,
    );
    assert!(status.message().contains("etag"), "{status:?}");
    let seen = app.get("bob", &id).await.unwrap();
    assert_eq!(
        (seen.state(), seen.etag.as_str()),
        (pb::ImageState::Active, edited.etag.as_str())
    );
    assert!(actions(&app, MODERATOR).await.unwrap().is_empty());
    // With the current etag it applies.
    let quarantined = set_state(
        &app,
        MODERATOR,
        &id,
        pb::ImageState::Quarantined,
        "spam",
        &edited.etag,
    )
    .await
    .unwrap();
    assert_eq!(quarantined.state(), pb::ImageState::Quarantined);
    assert_eq!(actions(&app, MODERATOR).await.unwrap().len(), 1);
}

pub(super) async fn state_changes_and_purges_are_events(backend: Backend) {
    let app = TestApp::spawn_with(backend, &[FLAGS, &["--variants", "false"]].concat()).await;
    let image = app.upload_png("alice", 1).await;
    let id = image.image_id.clone();
    let mut stream = watch(&app, WATCHER, "").await.expect("a watch");

    let quarantined = quarantine(&app, &id, "spam").await;
    let purge = pb::PurgeImageRequest {
        image_id: id.clone(),
        reason: "csam".into(),
    };
    let purged = moderation(&app)
        .await
        .purge_image(as_user(MODERATOR, purge))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(purged.state(), pb::ImageState::Removed);
    assert_eq!(
        purged.sha256, image.sha256,
        "the tombstone keeps the hashes"
    );
    assert!(purged.filename.is_empty() && purged.title.is_empty());
    assert!(objects_of(&app, &id).await.is_empty());

    let events = next_events(&mut stream, 2).await;
    assert_eq!(
        events
            .iter()
            .map(|e| (e.r#type(), e.image_id.as_str(), e.etag.as_str()))
            .collect::<Vec<_>>(),
        [
            (
                pb::ImageEventType::StateChanged,
                id.as_str(),
                quarantined.etag.as_str()
            ),
            (
                pb::ImageEventType::Purged,
                id.as_str(),
                purged.etag.as_str()
            ),
        ]
    );
    let changed = events[0]
        .image
        .as_ref()
        .expect("the image after the change");
    assert_eq!(
        (changed.state(), changed.state_reason.as_str()),
        (pb::ImageState::Quarantined, "spam")
    );
    assert!(events[0].object_keys.is_empty(), "the bytes are kept");
    assert_eq!(
        events[1].object_keys,
        [format!("images/{id}/original")],
        "what a CDN purge needs"
    );
    let trail = actions(&app, MODERATOR).await.unwrap();
    assert_eq!(
        trail.iter().map(|a| a.r#type()).collect::<Vec<_>>(),
        [
            pb::ModerationActionType::SetState,
            pb::ModerationActionType::Purge
        ]
    );
    assert_eq!(trail[1].reason, "csam");
}
