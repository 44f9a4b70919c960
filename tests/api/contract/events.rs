//! The event stream (`WatchImageEvents`): every change is an event, a
//! watcher resumes from its cursor without a gap (on another server too),
//! slow watchers are cut with their cursor, and only named services watch.
use std::time::Duration;

use tonic::Streaming;

use super::sessions::{complete, exact_parts, put, start, upload_urls};
use super::*;

/// The service identity the tests' servers let watch.
const WATCHER: &str = "feed-builder";
const FLAGS: &[&str] = &["--event-watchers", "feed-builder,cdn-purger"];

/// How long a test waits for an event before it calls it missing.
const EVENT_WAIT: Duration = Duration::from_secs(10);

pub(super) async fn watch(
    app: &TestApp,
    user: &str,
    cursor: &str,
) -> Result<Streaming<pb::WatchImageEventsResponse>, Status> {
    watch_with(
        app,
        user,
        pb::WatchImageEventsRequest {
            cursor: cursor.into(),
            ..Default::default()
        },
    )
    .await
}

async fn watch_with(
    app: &TestApp,
    user: &str,
    request: pb::WatchImageEventsRequest,
) -> Result<Streaming<pb::WatchImageEventsResponse>, Status> {
    Ok(app
        .client()
        .watch_image_events(as_user(user, request))
        .await?
        .into_inner())
}

/// The next `count` events of `stream`.
pub(super) async fn next_events(
    stream: &mut Streaming<pb::WatchImageEventsResponse>,
    count: usize,
) -> Vec<pb::ImageEvent> {
    let mut events = Vec::with_capacity(count);
    while events.len() < count {
        let message = tokio::time::timeout(EVENT_WAIT, stream.message())
            .await
            .unwrap_or_else(|_| panic!("event {} of {count} did not come", events.len() + 1))
            .expect("the stream goes on")
            .expect("the stream is open");
        events.push(message.event.expect("an event"));
    }
    events
}

/// The next `count` events of `stream` not in `seen` (by image and etag),
/// added to it: delivery is at least once, and on the aws backend a watch
/// from a cursor repeats the events of the last seconds before it.
pub(super) async fn next_new_events(
    stream: &mut Streaming<pb::WatchImageEventsResponse>,
    count: usize,
    seen: &mut HashSet<(String, String)>,
) -> Vec<pb::ImageEvent> {
    let mut events = Vec::with_capacity(count);
    while events.len() < count {
        let event = next_events(stream, 1).await.remove(0);
        if seen.insert((event.image_id.clone(), event.etag.clone())) {
            events.push(event);
        }
    }
    events
}

/// `cursor` with the 8 bytes after its version (an event's number, or its
/// time in microseconds on a log read by time) moved `ahead`, saturating.
fn future_cursor(cursor: &str, ahead: u64) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut bytes = URL_SAFE_NO_PAD.decode(cursor).expect("a cursor is base64");
    let at: [u8; 8] = bytes[1..9].try_into().expect("8 bytes after the version");
    let moved = u64::from_be_bytes(at).saturating_add(ahead);
    bytes[1..9].copy_from_slice(&moved.to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

fn keys_of(events: &[pb::ImageEvent]) -> HashSet<(String, String)> {
    events
        .iter()
        .map(|e| (e.image_id.clone(), e.etag.clone()))
        .collect()
}

fn kinds(events: &[pb::ImageEvent]) -> Vec<(pb::ImageEventType, String)> {
    events
        .iter()
        .map(|e| (e.r#type(), e.image_id.clone()))
        .collect()
}

pub(super) async fn every_change_is_one_event_in_order(backend: Backend) {
    let app = TestApp::spawn_with(backend, FLAGS).await;
    let mut stream = watch(&app, WATCHER, "").await.expect("a watch");

    // Every way an image is stored, then changed, then deleted.
    let streamed = app.upload_png("alice", 1).await;
    let png = images::png(16, 16, 2);
    let session = start(&app, "bob", spec("direct.png")).await.unwrap();
    let urls = upload_urls(&app, "bob", &session.upload_id, exact_parts(&[png.len()]))
        .await
        .unwrap();
    assert!(put(&urls[0], png).await.is_success());
    let direct = complete(&app, "bob", &session.upload_id).await.unwrap();
    let updated = app
        .update(
            "alice",
            pb::UpdateImageRequest {
                image_id: streamed.image_id.clone(),
                title: "a new title".into(),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["title".into()],
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // The keys of the objects it has, as the store names them.
    let mut expected: Vec<String> = app
        .stored_objects()
        .await
        .iter()
        .filter(|path| path.contains(&direct.image_id))
        .filter_map(|path| path.rfind("images/").map(|at| path[at..].to_owned()))
        .collect();
    expected.sort();
    app.delete("bob", &direct.image_id).await.unwrap();
    // Refused changes make no event.
    assert_code(
        app.delete("bob", &streamed.image_id).await,
        Code::PermissionDenied,
    );

    let events = next_events(&mut stream, 4).await;
    assert_eq!(
        kinds(&events),
        [
            (pb::ImageEventType::Created, streamed.image_id.clone()),
            (pb::ImageEventType::Created, direct.image_id.clone()),
            (pb::ImageEventType::Updated, streamed.image_id.clone()),
            (pb::ImageEventType::Deleted, direct.image_id.clone()),
        ]
    );
    let created = events[0].image.as_ref().expect("the image");
    assert_eq!(created.filename, streamed.filename);
    assert_eq!(events[0].owner_id, "alice");
    let edited = &events[2];
    assert_eq!(edited.image.as_ref().unwrap().title, "a new title");
    assert_eq!(edited.etag, updated.etag, "the etag after the change");
    let deleted = &events[3];
    assert_eq!(deleted.image, None, "a deleted image is not in its event");
    assert_eq!(deleted.owner_id, "bob");
    let mut keys = deleted.object_keys.clone();
    keys.sort();
    assert!(keys.len() >= 2, "the original and a variant: {keys:?}");
    assert_eq!(keys, expected, "the keys a CDN purge needs");
    let cursors: HashSet<&str> = events.iter().map(|e| e.cursor.as_str()).collect();
    assert_eq!(cursors.len(), 4, "every event has its own cursor");
    assert!(events.iter().all(|e| e.time.is_some()));
}

pub(super) async fn a_watcher_resumes_from_its_cursor_without_a_gap(backend: Backend) {
    let app = TestApp::spawn_with(backend, FLAGS).await;
    let mut uploaded = Vec::new();
    for seed in 0..6 {
        uploaded.push(app.upload_png("alice", seed).await.image_id);
    }
    let mut first = watch(&app, WATCHER, "oldest").await.unwrap();
    let seen = next_events(&mut first, 2).await;
    drop(first);
    // More changes while nobody watches.
    for seed in 6..8 {
        uploaded.push(app.upload_png("alice", seed).await.image_id);
    }
    let mut again = watch(&app, WATCHER, &seen[1].cursor).await.unwrap();
    let rest = next_new_events(&mut again, 6, &mut keys_of(&seen)).await;
    let ids: Vec<String> = seen
        .iter()
        .chain(&rest)
        .map(|e| e.image_id.clone())
        .collect();
    assert_eq!(
        ids, uploaded,
        "every event after the cursor, once, in order"
    );

    // Filters: one owner's images, one type.
    let other = app.upload_png("bob", 99).await;
    app.delete("alice", &uploaded[0]).await.unwrap();
    let mut bobs = watch_with(
        &app,
        WATCHER,
        pb::WatchImageEventsRequest {
            cursor: "oldest".into(),
            owner_id: "bob".into(),
            types: vec![],
        },
    )
    .await
    .unwrap();
    assert_eq!(next_events(&mut bobs, 1).await[0].image_id, other.image_id);
    let mut deletes = watch_with(
        &app,
        WATCHER,
        pb::WatchImageEventsRequest {
            cursor: "oldest".into(),
            owner_id: String::new(),
            types: vec![pb::ImageEventType::Deleted as i32],
        },
    )
    .await
    .unwrap();
    let deleted = next_events(&mut deletes, 1).await;
    assert_eq!(
        kinds(&deleted),
        [(pb::ImageEventType::Deleted, uploaded[0].clone())]
    );
}

pub(super) async fn only_named_services_watch_and_requests_are_checked(backend: Backend) {
    let nobody = TestApp::spawn(backend).await;
    let refused = assert_code(watch(&nobody, WATCHER, "").await, Code::PermissionDenied);
    assert!(
        refused.message().contains("--event-watchers"),
        "{refused:?}"
    );

    let app = TestApp::spawn_with(backend, &[FLAGS, &["--max-event-watchers", "2"]].concat()).await;
    assert_code(watch(&app, "alice", "").await, Code::PermissionDenied);
    for cursor in ["garbage!", "AQ", "bmV3ZXN0", &"A".repeat(300)] {
        assert_code(watch(&app, WATCHER, cursor).await, Code::InvalidArgument);
    }
    // A cursor the service gave, moved past the log's end: read from, it
    // would skip every event until then, so it is refused too.
    app.upload_png("alice", 1).await;
    let mut oldest = watch(&app, WATCHER, "oldest").await.unwrap();
    let given = next_events(&mut oldest, 1).await.remove(0).cursor;
    drop(oldest);
    for forged in [
        future_cursor(&given, 3_600_000_000),
        future_cursor(&given, u64::MAX),
    ] {
        let refused = assert_code(watch(&app, WATCHER, &forged).await, Code::InvalidArgument);
        assert!(refused.message().contains("cursor"), "{refused:?}");
    }
    for request in [
        pb::WatchImageEventsRequest {
            types: vec![0],
            ..Default::default()
        },
        pb::WatchImageEventsRequest {
            types: vec![42],
            ..Default::default()
        },
        pb::WatchImageEventsRequest {
            owner_id: "a\nb".into(),
            ..Default::default()
        },
    ] {
        assert_code(
            watch_with(&app, WATCHER, request).await,
            Code::InvalidArgument,
        );
    }
    // The replica's cap on watchers; a watcher that goes frees its place.
    let first = watch(&app, "cdn-purger", "").await.unwrap();
    let _second = watch(&app, WATCHER, "").await.unwrap();
    let capped = assert_code(watch(&app, WATCHER, "").await, Code::ResourceExhausted);
    assert!(
        capped.message().contains("--max-event-watchers"),
        "{capped:?}"
    );
    drop(first);
    let mut freed = None;
    for _ in 0..100 {
        if let Ok(stream) = watch(&app, WATCHER, "").await {
            freed = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(freed.is_some(), "a gone watcher's place is taken again");
}

pub(super) async fn a_cursor_past_the_retention_is_out_of_range(backend: Backend) {
    // The aws backend's readers look 5 s back: its retention is longer.
    let retention = match backend {
        Backend::Embedded => Duration::from_secs(2),
        Backend::Aws => Duration::from_secs(10),
    };
    let flag = format!("{}s", retention.as_secs());
    let app = TestApp::spawn_with(backend, &[FLAGS, &["--event-retention", &flag]].concat()).await;
    let old = app.upload_png("alice", 1).await;
    let mut stream = watch(&app, WATCHER, "oldest").await.unwrap();
    let event = next_events(&mut stream, 1).await.remove(0);
    assert_eq!(event.image_id, old.image_id);
    drop(stream);
    app.upload_png("alice", 2).await;
    tokio::time::sleep(retention + Duration::from_millis(500)).await;
    let fresh = app.upload_png("alice", 3).await;

    // The first event is gone, and so may be those after its cursor.
    let mut expired = None;
    for _ in 0..100 {
        match watch(&app, WATCHER, &event.cursor).await {
            Err(status) => {
                expired = Some(status);
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let status = expired.expect("the old cursor is refused once its events are swept");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let oldest = status
        .message()
        .rsplit(' ')
        .next()
        .expect("the oldest cursor ends the message");
    let mut resumed = watch(&app, WATCHER, oldest)
        .await
        .expect("the oldest cursor works");
    // The second upload's event may or may not have been swept yet.
    let events = next_events(&mut resumed, 1).await;
    let events = if events[0].image_id == fresh.image_id {
        events
    } else {
        next_events(&mut resumed, 1).await
    };
    assert_eq!(events[0].image_id, fresh.image_id, "the retained events");
    assert_ne!(events[0].image_id, old.image_id);
}

pub(super) async fn a_slow_watcher_is_cut_with_a_cursor_that_misses_nothing(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[FLAGS, &["--event-watcher-stall-timeout", "1s"]].concat(),
    )
    .await;
    let image = app.upload_png("alice", 1).await;
    // A reader whose HTTP/2 windows hold 16 KiB: what it does not read
    // stays with the server.
    let narrow = tonic::transport::Endpoint::from_shared(app.channel_addr())
        .unwrap()
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024)
        .connect()
        .await
        .unwrap();
    let request = as_user(WATCHER, pb::WatchImageEventsRequest::default());
    let mut slow = pb::image_service_client::ImageServiceClient::new(narrow)
        .watch_image_events(request)
        .await
        .unwrap()
        .into_inner();
    // Far more events than a watcher's two pages and the HTTP/2 windows
    // (each event carries the image: about a kilobyte).
    const EDITS: usize = 400;
    let long = "x".repeat(1000);
    for i in 0..EDITS {
        app.update(
            "alice",
            pb::UpdateImageRequest {
                image_id: image.image_id.clone(),
                description: format!("{i} {long}"),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["description".into()],
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The slow watcher reads what was handed to it, then its end.
    let mut received = Vec::new();
    let end = loop {
        match tokio::time::timeout(EVENT_WAIT, slow.message()).await {
            Ok(Ok(Some(message))) => received.push(message.event.unwrap()),
            Ok(Ok(None)) => panic!("a cut stream ends with a status"),
            Ok(Err(status)) => break status,
            Err(_) => panic!("the slow watcher was not cut"),
        }
    };
    assert_eq!(end.code(), Code::ResourceExhausted, "{end:?}");
    assert!(
        received.len() < EDITS,
        "cut before the end: {}",
        received.len()
    );
    let resume = end
        .metadata()
        .get("x-resume-cursor")
        .expect("the resume cursor trailer")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(end.message().contains(&resume));
    if let Some(last) = received.last() {
        assert_eq!(
            resume, last.cursor,
            "it resumes after the last event it got"
        );
    }

    // From the cursor: every later edit, in order, none skipped.
    let mut again = watch(&app, WATCHER, &resume).await.unwrap();
    let rest = next_new_events(&mut again, EDITS - received.len(), &mut keys_of(&received)).await;
    let etags: Vec<String> = received
        .iter()
        .chain(&rest)
        .map(|e| e.etag.clone())
        .collect();
    let expected: Vec<String> = (0..EDITS).map(|i| format!("r{}", i + 2)).collect();
    assert_eq!(etags, expected);
}

pub(super) async fn a_watch_ends_with_its_cursor_when_the_server_stops(backend: Backend) {
    let app = TestApp::spawn_with(backend, FLAGS).await;
    let mut stream = watch(&app, WATCHER, "").await.unwrap();
    let first = app.upload_png("alice", 1).await;
    let seen = next_events(&mut stream, 1).await;
    assert_eq!(seen[0].image_id, first.image_id);
    let app = app.successor(FLAGS).await;
    let end = loop {
        match tokio::time::timeout(EVENT_WAIT, stream.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => panic!("a watch ends with a status"),
            Ok(Err(status)) => break status,
            Err(_) => panic!("the watch did not end with the server"),
        }
    };
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    let resume = end
        .metadata()
        .get("x-resume-cursor")
        .expect("the resume cursor")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(resume, seen[0].cursor);
    // Changes while the watcher is away; it resumes on the other server.
    let second = app.upload_png("alice", 2).await;
    let mut resumed = watch(&app, WATCHER, &resume).await.unwrap();
    let events = next_new_events(&mut resumed, 1, &mut keys_of(&seen)).await;
    assert_eq!(events[0].image_id, second.image_id);
}

pub(super) async fn a_watcher_cut_on_one_replica_resumes_on_another_missing_nothing(
    backend: Backend,
) {
    let one = TestApp::spawn_with(backend, FLAGS).await;
    let other = one.replica(FLAGS).await;
    let mut stream = watch(&one, WATCHER, "").await.unwrap();
    let mut changed = Vec::new();
    // Changes on the other replica reach the watcher on this one.
    for seed in 0..4 {
        changed.push(other.upload_png("alice", seed).await.image_id);
    }
    let seen = next_events(&mut stream, 2).await;
    drop(stream);
    for seed in 4..6 {
        changed.push(one.upload_png("alice", seed).await.image_id);
    }
    let mut resumed = watch(&other, WATCHER, &seen[1].cursor).await.unwrap();
    let rest = next_new_events(&mut resumed, changed.len() - 2, &mut keys_of(&seen)).await;
    let ids: Vec<String> = seen
        .iter()
        .chain(&rest)
        .map(|e| e.image_id.clone())
        .collect();
    assert_eq!(
        ids, changed,
        "every change once (deduplicated by image and etag), in order"
    );
}
