//! Reading, updating and deleting: who may, and what each change moves.
use super::*;

pub(super) async fn unknown_and_malformed_ids_are_told_apart(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_code(app.get("alice", &unknown).await, Code::NotFound);
    assert_code(app.download("alice", &unknown).await, Code::NotFound);
    assert_code(app.get("alice", "not-an-id").await, Code::InvalidArgument);
    assert_code(app.get("alice", "").await, Code::InvalidArgument);
    assert_code(
        app.delete("alice", "../../etc").await,
        Code::InvalidArgument,
    );
}

pub(super) async fn every_call_needs_an_identity(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let image = app.upload_png("alice", 1).await;
    let mut client = app.client();
    let get = tonic::Request::new(pb::GetImageRequest {
        image_id: image.image_id.clone(),
    });
    assert_code(client.get_image(get).await, Code::Unauthenticated);
    let list = tonic::Request::new(pb::ListImagesRequest::default());
    assert_code(client.list_images(list).await, Code::Unauthenticated);
    let upload = tonic::Request::new(tokio_stream::iter(upload_messages(
        spec("a.png"),
        &images::png(2, 2, 1),
        1024,
    )));
    assert_code(client.upload_image(upload).await, Code::Unauthenticated);
    let mut blank = tonic::Request::new(pb::DeleteImageRequest {
        image_id: image.image_id.clone(),
    });
    blank
        .metadata_mut()
        .insert("x-user-id", "".parse().unwrap());
    assert_code(client.delete_image(blank).await, Code::Unauthenticated);
    assert!(
        app.get("alice", &image.image_id).await.is_ok(),
        "nothing was deleted"
    );
}

pub(super) async fn only_the_owner_may_update_or_delete(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let image = app.upload_png("alice", 1).await;
    let update = pb::UpdateImageRequest {
        image_id: image.image_id.clone(),
        title: "pwned".into(),
        ..Default::default()
    };
    assert_code(
        app.update("bob", update.clone()).await,
        Code::PermissionDenied,
    );
    assert_code(
        app.delete("bob", &image.image_id).await,
        Code::PermissionDenied,
    );
    assert_eq!(
        app.get("alice", &image.image_id).await.unwrap(),
        image,
        "nothing changed"
    );
    assert_eq!(
        app.download("bob", &image.image_id).await.unwrap().len() as i64,
        image.size_bytes
    );

    let updated = app.update("alice", update).await.unwrap();
    assert_eq!(updated.title, "pwned");
    app.delete("alice", &image.image_id).await.unwrap();
}

pub(super) async fn updates_change_the_masked_fields_and_move_the_indexes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let bytes = images::png(5, 5, 5);
    let original = app
        .upload(
            "alice",
            pb::ImageSpec {
                title: "Old".into(),
                description: "Keep me".into(),
                tags: vec!["old".into()],
                location: "Lyon".into(),
                ..spec("u.png")
            },
            &bytes,
        )
        .await
        .unwrap();
    let id = original.image_id.clone();

    // Without a mask: every non-empty field changes, the others stay.
    let request = pb::UpdateImageRequest {
        image_id: id.clone(),
        title: "New".into(),
        tags: vec!["#Fresh".into()],
        ..Default::default()
    };
    let updated = app.update("alice", request).await.unwrap();
    assert_eq!(updated.title, "New");
    assert_eq!(updated.description, "Keep me");
    assert_eq!(updated.tags, vec!["fresh"]);
    assert_eq!(updated.location, "Lyon");
    assert_eq!(updated.sha256, original.sha256);
    assert_eq!(updated.create_time, original.create_time);
    assert!(updated.update_time.unwrap().seconds >= original.update_time.unwrap().seconds);
    assert_ne!(updated.etag, original.etag);

    // With a mask: exactly the named fields, empty values clear.
    let request = pb::UpdateImageRequest {
        image_id: id.clone(),
        location: String::new(),
        description: "ignored: not in the mask".into(),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["location".into()],
        }),
        ..Default::default()
    };
    let cleared = app.update("alice", request).await.unwrap();
    assert_eq!(cleared.location, "");
    assert_eq!(cleared.description, "Keep me");

    // Listings follow the change.
    let by_tag = |tag: &str| pb::ListImagesRequest {
        tag: tag.into(),
        ..Default::default()
    };
    assert!(app.list_all("bob", by_tag("old")).await.unwrap().is_empty());
    assert_eq!(
        ids(&app.list_all("bob", by_tag("fresh")).await.unwrap()),
        vec![id.clone()]
    );
    let by_location = pb::ListImagesRequest {
        location: "Lyon".into(),
        ..Default::default()
    };
    assert!(app.list_all("bob", by_location).await.unwrap().is_empty());

    // Bad updates change nothing.
    let bad_mask = pb::UpdateImageRequest {
        image_id: id.clone(),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["owner_id".into()],
        }),
        ..Default::default()
    };
    assert_code(app.update("alice", bad_mask).await, Code::InvalidArgument);
    let too_long = pb::UpdateImageRequest {
        image_id: id.clone(),
        title: "x".repeat(201),
        ..Default::default()
    };
    assert_code(app.update("alice", too_long).await, Code::InvalidArgument);
    let nothing = pb::UpdateImageRequest {
        image_id: id.clone(),
        ..Default::default()
    };
    assert_code(app.update("alice", nothing).await, Code::InvalidArgument);
    assert_eq!(app.get("alice", &id).await.unwrap(), cleared);
}

pub(super) async fn a_stale_etag_aborts_the_update(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let image = app.upload_png("alice", 1).await;
    let update = |title: &str, etag: &str| pb::UpdateImageRequest {
        image_id: image.image_id.clone(),
        title: title.into(),
        etag: etag.into(),
        ..Default::default()
    };
    let first = app
        .update("alice", update("first", &image.etag))
        .await
        .unwrap();
    assert_code(
        app.update("alice", update("second", &image.etag)).await,
        Code::Aborted,
    );
    assert_eq!(
        app.get("alice", &image.image_id).await.unwrap().title,
        "first"
    );
    let second = app
        .update("alice", update("second", &first.etag))
        .await
        .unwrap();
    assert_eq!(second.title, "second");
}

pub(super) async fn a_deleted_image_is_gone_everywhere(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let keep = app.upload_png("alice", 1).await;
    let before = app.stored_objects().await;
    let image = app.upload_png("alice", 2).await;
    let url = app
        .download_url(
            "alice",
            pb::GetDownloadUrlRequest {
                image_id: image.image_id.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    app.delete("alice", &image.image_id).await.unwrap();
    assert_code(app.get("alice", &image.image_id).await, Code::NotFound);
    assert_code(app.download("alice", &image.image_id).await, Code::NotFound);
    assert_code(app.delete("alice", &image.image_id).await, Code::NotFound);
    let listed = app
        .list_all("alice", pb::ListImagesRequest::default())
        .await
        .unwrap();
    assert_eq!(ids(&listed), vec![keep.image_id]);
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 404);
    assert_eq!(app.stored_objects().await, before, "the bytes were removed");
}

pub(super) async fn concurrent_updates_are_never_lost(backend: Backend) {
    let app = std::sync::Arc::new(TestApp::spawn(backend).await);
    let image = app.upload_png("alice", 1).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (app, id) = (app.clone(), image.image_id.clone());
        tasks.push(tokio::spawn(async move {
            let request = if i % 2 == 0 {
                pb::UpdateImageRequest {
                    image_id: id,
                    title: format!("title {i}"),
                    ..Default::default()
                }
            } else {
                pb::UpdateImageRequest {
                    image_id: id,
                    location: format!("place {i}"),
                    ..Default::default()
                }
            };
            app.update("alice", request).await
        }));
    }
    let mut applied = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => applied += 1,
            // Allowed only after repeated conflicts; then nothing was written.
            Err(status) => assert_eq!(status.code(), Code::Aborted, "{status:?}"),
        }
    }
    let last = app.get("alice", &image.image_id).await.unwrap();
    assert_eq!(
        last.etag,
        format!("r{}", 1 + applied),
        "every successful update is counted once"
    );
    assert!(
        last.title.starts_with("title ") && last.location.starts_with("place "),
        "{last:?}"
    );
}

/// The owner's delete of an image that changes meanwhile (their own edits
/// here; an encoding stored in the background does the same) deletes it:
/// it is never refused as if they were not the owner.
pub(super) async fn an_owners_delete_racing_edits_of_the_image_succeeds(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for round in 0..10 {
        let image = app.upload_png("alice", 100 + round).await;
        let edits = async {
            for edit in 0..20 {
                let update = pb::UpdateImageRequest {
                    image_id: image.image_id.clone(),
                    title: format!("edit {edit}"),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["title".into()],
                    }),
                    ..Default::default()
                };
                if app.update("alice", update).await.is_err() {
                    break; // deleted
                }
            }
        };
        let delete = async {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            // Edits without a pause may outrun the store's retries: the
            // answer is then ABORTED (retry), never PERMISSION_DENIED.
            loop {
                match app.delete("alice", &image.image_id).await {
                    Ok(()) => break,
                    Err(status) if status.code() == Code::Aborted => continue,
                    Err(status) => panic!("round {round}: {status:?}"),
                }
            }
        };
        tokio::join!(edits, delete);
        assert_code(app.get("alice", &image.image_id).await, Code::NotFound);
    }
}
