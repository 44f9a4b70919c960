//! The erasure of a user's data (`DeleteUserData`): nothing of the user is
//! left in either store, other users are untouched, uploads are refused
//! while it runs, the user's earlier events keep only ids, types and
//! times, and an erasure cut by a crash is finished by the next replica.
use std::time::Duration;

use super::events::{next_events, watch};
use super::sessions::{OpenStream, resume_messages, start};
use super::*;

/// The identity allowed to erase anyone's data, and the event watcher.
const ADMIN: &str = "ops";
const WATCHER: &str = "cdn-purger";
const FLAGS: [&str; 10] = [
    "--admins",
    "ops",
    "--event-watchers",
    "cdn-purger",
    "--variants",
    "false",
    "--max-uploads-per-user",
    "16",
    "--upload-session-segment-size",
    "64KiB",
];
/// Longest an erasure may take in these tests.
const ERASURE_WAIT: Duration = Duration::from_secs(120);

async fn delete_user_data(
    app: &TestApp,
    caller: &str,
    user: &str,
) -> Result<pb::UserDataDeletion, Status> {
    let request = pb::DeleteUserDataRequest {
        user_id: user.into(),
    };
    Ok(app
        .client()
        .delete_user_data(as_user(caller, request))
        .await?
        .into_inner()
        .deletion
        .expect("a deletion"))
}

async fn deletion(app: &TestApp, caller: &str, user: &str) -> Result<pb::UserDataDeletion, Status> {
    let request = pb::GetUserDataDeletionRequest {
        user_id: user.into(),
    };
    Ok(app
        .client()
        .get_user_data_deletion(as_user(caller, request))
        .await?
        .into_inner()
        .deletion
        .expect("a deletion"))
}

fn is_done(deletion: &pb::UserDataDeletion) -> bool {
    deletion.state() == pb::user_data_deletion::State::Done
}

/// Polls until the erasure of `user` is DONE.
async fn wait_until_done(app: &TestApp, user: &str) -> pb::UserDataDeletion {
    let deadline = tokio::time::Instant::now() + ERASURE_WAIT;
    loop {
        let now = deletion(app, user, "").await.unwrap();
        if is_done(&now) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the erasure did not end: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A user's image with a title, tags and a filename an erasure must not
/// leave anywhere.
fn personal_spec(user: &str, index: usize) -> pb::ImageSpec {
    pb::ImageSpec {
        title: format!("{user} private title {index}"),
        tags: vec![format!("{user}-tag")],
        ..spec(&format!("{user}-holiday-{index}.png"))
    }
}

/// Uploads `count` small images of `user`, 16 at a time.
async fn upload_many(app: &TestApp, user: &str, count: usize) -> Vec<pb::Image> {
    let mut stored = Vec::with_capacity(count);
    for batch in (0..count).collect::<Vec<_>>().chunks(16) {
        let uploads = batch.iter().map(|&i| {
            let png = images::png(4, 4, i as u32);
            async move { app.upload(user, personal_spec(user, i), &png).await }
        });
        for result in futures::future::join_all(uploads).await {
            stored.push(result.expect("stored"));
        }
    }
    stored
}

/// Starts `count` upload sessions of `user`, each with parts staged in the
/// blob store; returns their ids.
async fn stage_sessions(app: &TestApp, user: &str, count: usize) -> Vec<String> {
    let photo = images::photo_jpeg(1200, 900);
    let mut ids = Vec::new();
    for i in 0..count {
        let session = start(app, user, personal_spec(user, 10_000 + i))
            .await
            .unwrap();
        let ended = app
            .upload_messages(
                user,
                resume_messages(&session.upload_id, 0, &photo[..200_000], 8192, false),
            )
            .await;
        assert_code(ended, Code::InvalidArgument);
        ids.push(session.upload_id);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ids.iter().all(|id| {
        app.stored_objects_now()
            .iter()
            .any(|o| o.contains(&format!("uploads/{id}/")))
    }) {
        assert!(tokio::time::Instant::now() < deadline, "parts never staged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ids
}

/// What the stores hold of `user`, read beside the server: objects whose
/// key names one of `image_ids` or `upload_ids`, records listed by owner,
/// session records, and events still carrying an image.
async fn held_of(
    app: &TestApp,
    user: &str,
    image_ids: &[String],
    upload_ids: &[String],
) -> Vec<String> {
    let mut held: Vec<String> = app
        .stored_objects_now()
        .into_iter()
        .filter(|object| {
            image_ids.iter().any(|id| object.contains(id))
                || upload_ids.iter().any(|id| object.contains(id))
        })
        .collect();
    let metadata = app.metadata_beside().await;
    let owner = image_service::domain::UserId::parse(user).unwrap();
    let filter = image_service::domain::listing::ListFilter {
        owner: Some(owner.clone()),
        ..Default::default()
    };
    let page = metadata.list(&filter, None, 10).await.unwrap();
    held.extend(page.records.iter().map(|r| format!("record {}", r.id)));
    let sessions = metadata.upload_sessions_of(&owner).await.unwrap();
    held.extend(sessions.iter().map(|s| format!("session {}", s.id)));
    let usage = metadata.get_usage(&owner).await.unwrap();
    if usage.held_images + usage.held_bytes > 0 || !usage.reservations.is_empty() {
        held.push(format!("usage {usage:?}"));
    }
    held
}

pub(super) async fn an_erased_user_leaves_nothing_and_others_are_untouched(backend: Backend) {
    let app = TestApp::spawn_with(backend, &FLAGS).await;
    // 1 000 images on the embedded backend; the aws test servers store
    // one image in tens of milliseconds, so 200 keep this test near 30 s.
    let count = match backend {
        Backend::Embedded => 1000,
        Backend::Aws => 200,
    };
    let victim = upload_many(&app, "victim", count).await;
    let bystander = upload_many(&app, "bystander", 5).await;
    let sessions = stage_sessions(&app, "victim", 3).await;
    let bystander_objects: Vec<String> = app
        .stored_objects_now()
        .into_iter()
        .filter(|o| bystander.iter().any(|i| o.contains(&i.image_id)))
        .collect();
    assert_eq!(bystander_objects.len(), 5);

    // An upload in progress holds its reservation from before the mark:
    // the erasure waits for it, what it stores goes, and meanwhile
    // every new upload is refused.
    let late_png = images::png(4, 4, 99_999);
    let mut late = upload_messages(personal_spec("victim", 99_999), &late_png, 16);
    let last = late.split_off(1);
    let reserved_images = || async {
        app.client()
            .get_usage(as_user("victim", pb::GetUsageRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .usage
            .unwrap()
            .images_reserved
    };
    // The open sessions hold their reservations already.
    let before = reserved_images().await;
    let in_flight = OpenStream::open(&app, "victim").await;
    in_flight.send(late).await;
    let reserved_deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if reserved_images().await == before + 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < reserved_deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let started = delete_user_data(&app, "victim", "").await.unwrap();
    assert_eq!(started.state(), pb::user_data_deletion::State::Running);
    assert_eq!(
        (started.user_id.as_str(), started.requested_by.as_str()),
        ("victim", "victim")
    );
    let refused = app.upload("victim", spec("new.png"), &late_png).await;
    let status = assert_code(refused, Code::FailedPrecondition);
    assert!(status.message().contains("erased"), "{status:?}");
    let refused = start(&app, "victim", spec("new.png")).await;
    assert_code(refused, Code::FailedPrecondition);
    let again = delete_user_data(&app, ADMIN, "victim").await.unwrap();
    assert_eq!(
        (again.state(), again.request_time),
        (pb::user_data_deletion::State::Running, started.request_time),
        "a second call returns the erasure that runs"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !is_done(&deletion(&app, "victim", "").await.unwrap()),
        "the erasure waits for the upload that reserved before it"
    );
    in_flight.send(last).await;
    // It reserved before the mark, and stores its image as the erasure
    // runs: it withdraws the image and says why.
    let withdrawn = in_flight.close().await;
    let status = assert_code(withdrawn, Code::FailedPrecondition);
    assert!(status.message().contains("erased"), "{status:?}");

    let done = wait_until_done(&app, "victim").await;
    // The erasure may have listed the image before it was withdrawn.
    assert!(
        (count as u64..=count as u64 + 1).contains(&done.images_deleted),
        "{done:?}"
    );
    assert_eq!(done.sessions_deleted, 3, "{done:?}");
    assert_eq!(done.images_left, 0);
    assert!(done.finish_time.is_some());

    let victim_ids: Vec<String> = victim.iter().map(|i| i.image_id.clone()).collect();
    // Deletes remove their objects right after the record.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app
        .stored_objects_now()
        .iter()
        .any(|o| victim_ids.iter().any(|id| o.contains(id)))
    {
        assert!(tokio::time::Instant::now() < deadline, "objects left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listed = app.list_all("victim", owned_by("victim")).await.unwrap();
    assert!(listed.is_empty());

    // Every event stays, the victim's without their image.
    let mut stream = watch(&app, WATCHER, "oldest").await.unwrap();
    // Delivery is at least once: each event once, by image, etag and type
    // (a DELETED event has the etag of the revision it deleted).
    let mut seen = HashSet::new();
    let mut events = Vec::new();
    while events.len() < 2 * (count + 1) + 5 {
        let event = next_events(&mut stream, 1).await.remove(0);
        if seen.insert((event.image_id.clone(), event.etag.clone(), event.r#type)) {
            events.push(event);
        }
    }
    for event in &events {
        if event.owner_id == "victim" {
            assert!(event.image.is_none(), "redacted: {event:?}");
        } else {
            let image = event.image.as_ref().expect("the bystander's image stays");
            assert!(image.title.contains("bystander"));
        }
    }
    let purges = events
        .iter()
        .filter(|e| e.r#type() == pb::ImageEventType::Deleted)
        .filter(|e| e.owner_id == "victim" && !e.object_keys.is_empty())
        .count();
    assert_eq!(purges, count + 1, "a DELETED event with keys per image");
    drop(stream);

    // The bystander keeps everything.
    let kept = app
        .list_all("bystander", owned_by("bystander"))
        .await
        .unwrap();
    assert_eq!(kept.len(), 5);
    for image in &bystander {
        app.download("bystander", &image.image_id).await.unwrap();
    }
    let still: Vec<String> = app
        .stored_objects_now()
        .into_iter()
        .filter(|o| bystander.iter().any(|i| o.contains(&i.image_id)))
        .collect();
    assert_eq!(still, bystander_objects);

    // The audit stays, readable by the user and an admin only.
    let audit = deletion(&app, ADMIN, "victim").await.unwrap();
    assert_eq!(audit, done);
    let denied = deletion(&app, "bystander", "victim").await;
    assert_code(denied, Code::PermissionDenied);
    let denied = delete_user_data(&app, "bystander", "victim").await;
    assert_code(denied, Code::PermissionDenied);
    let unknown = deletion(&app, "bystander", "").await;
    assert_code(unknown, Code::NotFound);

    // The stores, read directly, hold nothing of the victim (the
    // embedded store opens in one process at a time).
    let mut app = app;
    if backend == Backend::Embedded {
        app.stop().await.unwrap();
    }
    let held = held_of(&app, "victim", &victim_ids, &sessions).await;
    assert!(held.is_empty(), "left of the victim: {held:?}");
    let app = app.successor(&FLAGS).await;

    // After DONE the id is a new, empty account that may upload again.
    let fresh = app
        .upload("victim", spec("again.png"), &late_png)
        .await
        .expect("uploads are allowed after the erasure");
    let listed = app.list_all("victim", owned_by("victim")).await.unwrap();
    assert_eq!(ids(&listed), [fresh.image_id]);
}

pub(super) async fn an_erasure_cut_by_a_crash_is_finished_by_the_next_replica(backend: Backend) {
    let mut app = TestApp::spawn_with(backend, &FLAGS).await;
    // Enough that the erasure is still running when the first progress
    // (after 100 images) shows.
    let count = match backend {
        Backend::Embedded => 400,
        Backend::Aws => 250,
    };
    let victim = upload_many(&app, "victim", count).await;
    upload_many(&app, "bystander", 3).await;

    // The real binary on the same stores, killed as a crash would.
    let (mut replica, mut client) = spawn_killable(&mut app).await;
    let request = pb::DeleteUserDataRequest::default();
    client
        .delete_user_data(as_user("victim", request))
        .await
        .unwrap();
    loop {
        let request = pb::GetUserDataDeletionRequest::default();
        let now = client
            .get_user_data_deletion(as_user("victim", request))
            .await
            .unwrap()
            .into_inner()
            .deletion
            .unwrap();
        assert!(!is_done(&now), "the erasure ended before the crash");
        if now.images_deleted > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    unsafe { libc::kill(replica.id() as i32, libc::SIGKILL) };
    replica.wait().unwrap();

    // Cut half-way: the mark stays, and so do some of the images.
    let metadata = app.metadata_beside().await;
    let owner = image_service::domain::UserId::parse("victim").unwrap();
    let usage = metadata.get_usage(&owner).await.unwrap();
    assert!(usage.is_being_erased(), "{usage:?}");
    let filter = image_service::domain::listing::ListFilter {
        owner: Some(owner),
        ..Default::default()
    };
    let left = metadata.list(&filter, None, 10).await.unwrap().records;
    assert!(!left.is_empty(), "the crash came before the end");
    drop(metadata);

    // The next replica resumes it with its first repair round.
    let mut flags = FLAGS.to_vec();
    flags.extend(["--repair-interval", "1h"]);
    let app = app.successor(&flags).await;
    let done = wait_until_done(&app, "victim").await;
    assert!(done.images_deleted > 0, "{done:?}");
    let listed = app.list_all("victim", owned_by("victim")).await.unwrap();
    assert!(listed.is_empty());
    let left: Vec<String> = app
        .stored_objects_now()
        .into_iter()
        .filter(|o| victim.iter().any(|i| o.contains(&i.image_id)))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let kept = app
        .list_all("bystander", owned_by("bystander"))
        .await
        .unwrap();
    assert_eq!(kept.len(), 3);
}

/// The value of the metric `name` (with its labels, if any) on the
/// server's `/metrics`; 0 when absent.
pub(super) async fn metric(app: &TestApp, name: &str) -> f64 {
    let body = app.metrics().await;
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// Erasures one replica holds in memory in the flood test.
const HELD: usize = 6;
/// Users who each erase their own (empty) data at once.
const FLOOD: usize = 60;

pub(super) async fn a_flood_of_erasures_stays_within_the_bound_and_each_completes(
    backend: Backend,
) {
    let bound = HELD.to_string();
    let flags = [&FLAGS[..], &["--max-queued-erasures", bound.as_str()][..]].concat();
    let app = TestApp::spawn_with(backend, &flags).await;
    let victim = upload_many(&app, "victim", 20).await;

    // Every identity erases itself, 12 at a time, with the real user's
    // erasure in the middle of the flood; the replica's hold is sampled
    // throughout.
    let flooding = std::sync::atomic::AtomicBool::new(true);
    let sampled = async {
        let mut most: f64 = 0.0;
        while flooding.load(std::sync::atomic::Ordering::SeqCst) {
            most = most.max(metric(&app, "imageservice_erasures_held").await);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        most
    };
    let started = tokio::time::Instant::now();
    let flood = async {
        let users: Vec<String> = (0..FLOOD).map(|i| format!("flood-{i:03}")).collect();
        for (batch, names) in users.chunks(12).enumerate() {
            let calls = names.iter().map(|user| delete_user_data(&app, user, ""));
            for marked in futures::future::join_all(calls).await {
                let marked = marked.expect("every erasure is accepted");
                assert_eq!(marked.state(), pb::user_data_deletion::State::Running);
            }
            if batch == 2 {
                let marked = delete_user_data(&app, "victim", "").await.unwrap();
                assert_eq!(marked.state(), pb::user_data_deletion::State::Running);
            }
        }
        // Marked durably, even those the replica did not keep: their
        // uploads are refused at once.
        let refused = app
            .upload(&users[FLOOD - 1], spec("late.png"), &images::png(4, 4, 1))
            .await;
        assert_code(refused, Code::FailedPrecondition);
        for user in &users {
            let done = wait_until_done(&app, user).await;
            assert_eq!(done.images_deleted, 0, "{done:?}");
        }
        flooding.store(false, std::sync::atomic::Ordering::SeqCst);
        users
    };
    let (most, users) = tokio::join!(sampled, flood);
    let took = started.elapsed();
    assert!(
        most <= HELD as f64,
        "the replica held {most} erasures, over --max-queued-erasures {HELD}"
    );
    assert!(most > 0.0, "the gauge was never seen");

    // The real user's erasure ended too, with everything of theirs gone.
    let done = wait_until_done(&app, "victim").await;
    assert_eq!(done.images_deleted, victim.len() as u64, "{done:?}");
    assert!(
        app.list_all("victim", owned_by("victim"))
            .await
            .unwrap()
            .is_empty()
    );
    // Empty users' erasures neither wait out the index nor hold a slot
    // while they wait: a second each would take FLOOD / 2 seconds. (On
    // the aws test servers a loaded machine makes each erasure's scans
    // take about as long as that wait: the time tells nothing there.)
    if backend == Backend::Embedded {
        assert!(
            took < Duration::from_secs((FLOOD / 4) as u64),
            "{FLOOD} empty erasures took {took:?}"
        );
    }
    assert_eq!(users.len(), FLOOD);
}

pub(super) async fn a_trickling_upload_does_not_hold_back_another_users_erasure(backend: Backend) {
    // One slot: an erasure that held it while it waited would stop every
    // other one for --upload-deadline.
    let flags = [&FLAGS[..], &["--max-running-erasures", "1"][..]].concat();
    let app = TestApp::spawn_with(backend, &flags).await;
    let victim = upload_many(&app, "victim", 10).await;

    // Two users each hold an upload open, sending nothing after its first
    // message, and erase their data: their erasures wait for those uploads.
    let mut trickles = Vec::new();
    for (i, user) in ["slow-1", "slow-2"].into_iter().enumerate() {
        let png = images::png(4, 4, 50_000 + i as u32);
        let mut messages = upload_messages(personal_spec(user, i), &png, 16);
        let rest = messages.split_off(1);
        let stream = OpenStream::open(&app, user).await;
        stream.send(messages).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let usage = app
                .client()
                .get_usage(as_user(user, pb::GetUsageRequest::default()))
                .await
                .unwrap()
                .into_inner()
                .usage
                .unwrap();
            if usage.images_reserved == 1 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "never reserved");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        delete_user_data(&app, user, "").await.unwrap();
        trickles.push((user, stream, rest));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Another user's erasure completes promptly meanwhile.
    let started = tokio::time::Instant::now();
    delete_user_data(&app, "victim", "").await.unwrap();
    let done = wait_until_done(&app, "victim").await;
    assert_eq!(done.images_deleted, victim.len() as u64, "{done:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the erasure waited {:?} behind the trickling uploads",
        started.elapsed()
    );
    for (user, _, _) in &trickles {
        let waiting = deletion(&app, user, "").await.unwrap();
        assert!(!is_done(&waiting), "{user}'s erasure waits for its upload");
    }

    // Once the uploads end, their erasures delete what they stored.
    for (user, stream, rest) in trickles {
        stream.send(rest).await;
        // Reserved before the mark, stored as the erasure runs: withdrawn.
        assert_code(stream.close().await, Code::FailedPrecondition);
        let done = wait_until_done(&app, user).await;
        assert!(done.images_deleted <= 1, "{done:?}");
        let left = app.list_all(ADMIN, owned_by(user)).await.unwrap();
        assert!(left.is_empty(), "{left:?}");
    }
}

/// A session's final upload that is committing when the erasure is asked
/// for: the erasure removes the session under it and may end first, so
/// the commit withdraws the image it stored and says why. Whatever the
/// timing, once both have ended nothing of the user is left.
pub(super) async fn a_session_committing_as_the_erasure_starts_leaves_nothing(backend: Backend) {
    // Variants on, so that the commit (a render) takes a while.
    let flags: Vec<&str> = FLAGS
        .chunks(2)
        .filter(|pair| pair[0] != "--variants")
        .flatten()
        .copied()
        .collect();
    let app = TestApp::spawn_with(backend, &flags).await;
    // A 7.7-megapixel photo: its commit (read back, scrubbed, rendered)
    // takes long enough for the erasure to start and end within it.
    let photo = images::photo_jpeg(3200, 2400);
    for (round, delay) in [0u64, 200, 500, 900, 1300, 1800, 2500]
        .into_iter()
        .enumerate()
    {
        let user = format!("committer-{round}");
        let session = start(&app, &user, personal_spec(&user, round))
            .await
            .unwrap();
        let messages = resume_messages(&session.upload_id, 0, &photo, 64 * 1024, true);
        let erase = async {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            delete_user_data(&app, &user, "").await.unwrap();
            wait_until_done(&app, &user).await
        };
        let (committed, _) = tokio::join!(app.upload_messages(&user, messages), erase);
        if let Err(status) = &committed {
            // Refused before it stored (the session was gone), or after
            // (the image withdrawn): either way not kept.
            assert!(
                matches!(
                    status.code(),
                    Code::FailedPrecondition | Code::NotFound | Code::Aborted
                ),
                "round {round}: {status:?}"
            );
        }
        let image_ids: Vec<String> = committed.iter().map(|i| i.image_id.clone()).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let held = held_through_the_api(&app, &user, &image_ids, &session.upload_id).await;
            if held.is_empty() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round} (erasure {delay} ms into the commit, commit {:?}): {held:?}",
                committed.as_ref().map(|i| &i.image_id)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Uploads whose commit (their variants, behind one render slot) lasts
/// longer than the erasure waits for them (`--upload-deadline`): each is
/// refused or withdrawn, and once the erasure is DONE nothing of the user
/// is left, however late their records were stored.
pub(super) async fn uploads_committing_past_the_erasure_leave_nothing(backend: Backend) {
    let mut flags: Vec<&str> = FLAGS
        .chunks(2)
        .filter(|pair| pair[0] != "--variants")
        .flatten()
        .copied()
        .collect();
    flags.extend(["--upload-deadline", "3s", "--max-concurrent-renders", "1"]);
    let app = TestApp::spawn_with(backend, &flags).await;
    let photo = images::photo_jpeg(2400, 1800);
    let uploads = (0..6).map(|i| {
        let photo = &photo;
        let app = &app;
        async move { app.upload("late", personal_spec("late", i), photo).await }
    });
    let erase = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        delete_user_data(&app, "late", "").await.unwrap();
        wait_until_done(&app, "late").await
    };
    let (results, _) = tokio::join!(futures::future::join_all(uploads), erase);
    for result in &results {
        if let Err(status) = result {
            // Refused by the erasure, or (on a loaded machine) not sent
            // within the deadline: stored nothing either way.
            assert!(
                matches!(
                    status.code(),
                    Code::FailedPrecondition | Code::Aborted | Code::DeadlineExceeded
                ),
                "{status:?}"
            );
        }
    }
    let image_ids: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|i| i.image_id.clone())
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let held = held_through_the_api(&app, "late", &image_ids, "none").await;
        if held.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after DONE: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A session's idempotency key used again after an erasure starts another
/// session, under another id: what was sent to the session the erasure
/// removed (or to its upload URLs) never reaches the new one.
pub(super) async fn a_key_used_again_after_an_erasure_starts_another_session(backend: Backend) {
    let app = TestApp::spawn_with(backend, &FLAGS).await;
    let keyed = || pb::ImageSpec {
        idempotency_key: Some("profile-photo".into()),
        ..personal_spec("leaver", 0)
    };
    let photo = images::photo_jpeg(1200, 900);
    let before = start(&app, "leaver", keyed()).await.unwrap();
    assert_eq!(
        start(&app, "leaver", keyed()).await.unwrap().upload_id,
        before.upload_id,
        "the key names its open session"
    );
    let staged = app
        .upload_messages(
            "leaver",
            resume_messages(&before.upload_id, 0, &photo[..100_000], 8192, false),
        )
        .await;
    assert_code(staged, Code::InvalidArgument);
    delete_user_data(&app, "leaver", "").await.unwrap();
    wait_until_done(&app, "leaver").await;

    let after = start(&app, "leaver", keyed()).await.unwrap();
    assert_ne!(after.upload_id, before.upload_id, "another session");
    // The old session's id reaches nothing; the new one starts empty and
    // takes the whole photo.
    let old = app
        .upload_messages(
            "leaver",
            resume_messages(&before.upload_id, 100_000, &photo[100_000..], 8192, true),
        )
        .await;
    assert_code(old, Code::NotFound);
    let ahead = app
        .upload_messages(
            "leaver",
            resume_messages(&after.upload_id, 100_000, &photo[100_000..], 8192, true),
        )
        .await;
    assert!(ahead.is_err(), "nothing was staged in the new session");
    let image = app
        .upload_messages(
            "leaver",
            resume_messages(&after.upload_id, 0, &photo, 8192, true),
        )
        .await
        .unwrap();
    assert_eq!(image.size_bytes as usize, photo.len());
}

/// What a running server shows of `user`: objects naming one of
/// `image_ids` or the upload session, images listed, and usage.
async fn held_through_the_api(
    app: &TestApp,
    user: &str,
    image_ids: &[String],
    upload_id: &str,
) -> Vec<String> {
    let mut held: Vec<String> = app
        .stored_objects_now()
        .into_iter()
        .filter(|o| o.contains(upload_id) || image_ids.iter().any(|id| o.contains(id)))
        .collect();
    let listed = app.list_all(ADMIN, owned_by(user)).await.unwrap();
    held.extend(listed.iter().map(|i| format!("image {}", i.image_id)));
    let usage = super::quotas::usage(app, ADMIN, user).await.unwrap();
    if usage.images_held + usage.bytes_held > 0 {
        held.push(format!("usage {usage:?}"));
    }
    held
}
