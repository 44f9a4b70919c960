//! The upload pipeline (`domain::upload`) over the in-memory stores, made
//! to fail on chosen calls: whatever fails, and whenever the caller goes
//! away, nothing is left behind but what the repair pass removes. These
//! drive the domain directly, without a server: they run in milliseconds.
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use image_service::domain::VariantName;
use image_service::domain::event::ChangeKind;
use image_service::domain::image::NewImage;
use image_service::domain::image::Timestamp;
use image_service::domain::listing::ListFilter;
use image_service::domain::ports::{BlobStore, MetadataStore, ObjectKey};
use image_service::domain::signing::SigningKey;
use image_service::domain::upload::{FramePayload, UploadFrame};
use image_service::domain::{DomainError, ImageRecord, Images, UserId};
use image_service::storage::memory::{Call, Faults, MemoryBlobStore, MemoryMetadataStore};
use sha2::Digest;

struct Fixture {
    blobs: MemoryBlobStore,
    metadata: MemoryMetadataStore,
    faults: Faults,
    images: Images,
}

fn fixture() -> Fixture {
    fixture_with(image_service::fixtures::limits())
}

fn fixture_with(limits: image_service::domain::Limits) -> Fixture {
    let faults = Faults::default();
    let blobs = MemoryBlobStore::new(faults.clone());
    let metadata = MemoryMetadataStore::new(faults.clone());
    let images = Images::new(
        Arc::new(blobs.clone()),
        Arc::new(metadata.clone()),
        SigningKey::generate(),
        limits,
    );
    Fixture {
        blobs,
        metadata,
        faults,
        images,
    }
}

fn alice() -> UserId {
    UserId::parse("alice").unwrap()
}

/// A photo of 1200 x 800: an original and two variants.
fn photo() -> Vec<u8> {
    image_service::fixtures::jpeg(1200, 800)
}

/// The messages of an upload of `bytes` in chunks of 64 KiB.
fn frames(bytes: &[u8], idempotency_key: Option<&str>) -> Vec<Result<UploadFrame, DomainError>> {
    let spec = NewImage {
        filename: "photo.jpg".into(),
        content_type: Some("image/jpeg".into()),
        idempotency_key: idempotency_key.map(str::to_owned),
        ..NewImage::default()
    };
    let mut frames = vec![Ok(UploadFrame {
        payload: FramePayload::Spec(Box::new(spec)),
        finish: false,
    })];
    frames.extend(chunk_frames(bytes));
    frames
}

/// `bytes` in messages of 64 KiB, the last one finishing the upload.
fn chunk_frames(bytes: &[u8]) -> Vec<Result<UploadFrame, DomainError>> {
    let mut frames = Vec::new();
    let chunks: Vec<&[u8]> = bytes.chunks(64 * 1024).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        frames.push(Ok(UploadFrame {
            payload: FramePayload::Chunk {
                data: Bytes::copy_from_slice(chunk),
                crc32c: None,
            },
            finish: i + 1 == chunks.len(),
        }));
    }
    frames
}

async fn upload(fixture: &Fixture, bytes: &[u8]) -> Result<ImageRecord, DomainError> {
    let frames = futures::stream::iter(frames(bytes, None));
    fixture.images.upload(&alice(), frames).await
}

async fn journal(fixture: &Fixture) -> usize {
    fixture
        .metadata
        .pending_writes(Timestamp::from_micros(i64::MAX))
        .await
        .unwrap()
        .len()
}

async fn records(fixture: &Fixture) -> usize {
    let page = fixture
        .metadata
        .list(&ListFilter::default(), None, 100)
        .await
        .unwrap();
    page.records.len()
}

async fn assert_nothing_left(fixture: &Fixture, after: &str) {
    assert_eq!(
        fixture.blobs.keys(),
        Vec::<String>::new(),
        "no object is left after {after}"
    );
    assert_eq!(
        journal(fixture).await,
        0,
        "no journal entry is left after {after}"
    );
    assert_eq!(records(fixture).await, 0, "no record is left after {after}");
}

#[tokio::test]
async fn a_stored_upload_keeps_its_original_and_variants_and_clears_its_journal() {
    let fixture = fixture();
    let image = upload(&fixture, &photo()).await.unwrap();
    assert_eq!(image.variants.len(), 2, "small and medium");
    assert_eq!(
        fixture.blobs.keys().len(),
        3,
        "the original and two variants"
    );
    assert_eq!(journal(&fixture).await, 0);
    assert_eq!(records(&fixture).await, 1);
}

#[tokio::test]
async fn a_store_failing_at_any_step_leaves_nothing_behind() {
    // Each call, and how many of it succeed first: the original's write
    // (start, bytes, journal, finish), each variant's, then the record.
    let steps = [
        (Call::StartWrite, 0, "starting the original"),
        (Call::Write, 0, "writing the original's first bytes"),
        (Call::Write, 3, "writing the original's later bytes"),
        (
            Call::RecordPendingWrite,
            0,
            "journaling the original's write",
        ),
        (Call::Finish, 0, "finishing the original"),
        (Call::StartWrite, 1, "starting the first variant"),
        (Call::Finish, 1, "finishing the first variant"),
        (Call::StartWrite, 2, "starting the second variant"),
        (Call::Create, 0, "storing the record"),
    ];
    let photo = photo();
    for (call, successes, step) in steps {
        let fixture = fixture();
        fixture.faults.fail_after(call, successes);
        let result = upload(&fixture, &photo).await;
        assert!(
            matches!(result, Err(DomainError::Unavailable(_))),
            "a failure in {step} fails the upload as retryable: {result:?}"
        );
        fixture.faults.heal();
        assert_nothing_left(&fixture, step).await;
        upload(&fixture, &photo)
            .await
            .unwrap_or_else(|e| panic!("the retry after {step} succeeds: {e}"));
    }
}

#[tokio::test]
async fn a_journal_entry_that_cannot_be_cleared_does_not_fail_the_upload() {
    let fixture = fixture();
    fixture.faults.fail(Call::ClearPendingWrite);
    let image = upload(&fixture, &photo()).await.unwrap();
    assert_eq!(fixture.blobs.keys().len(), 3);
    assert_eq!(
        journal(&fixture).await,
        1,
        "the entry stays for the repair pass, which finds the write finished"
    );
    fixture.faults.heal();
    let report = fixture.images.repair(Duration::ZERO, false).await.unwrap();
    assert_eq!(journal(&fixture).await, 0, "repaired: {report:?}");
    assert!(
        fixture
            .images
            .get(&image.owner, &image.id.to_string())
            .await
            .is_ok()
    );
    assert_eq!(fixture.blobs.keys().len(), 3, "the image is untouched");
}

#[tokio::test]
async fn objects_that_cannot_be_deleted_are_left_to_the_repair_pass() {
    let fixture = fixture();
    fixture.faults.fail(Call::Create);
    fixture.faults.fail(Call::DeleteObject);
    assert!(upload(&fixture, &photo()).await.is_err());
    assert_eq!(fixture.blobs.keys().len(), 3, "orphans, logged");
    fixture.faults.heal();
    fixture.images.repair(Duration::ZERO, false).await.unwrap();
    assert_nothing_left(&fixture, "the repair pass").await;
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_stores_nothing_more() {
    let fixture = fixture();
    let photo = photo();
    let send = |key| futures::stream::iter(frames(&photo, Some(key)));
    let first = fixture.images.upload(&alice(), send("k")).await.unwrap();
    let again = fixture.images.upload(&alice(), send("k")).await.unwrap();
    assert_eq!(again.id, first.id, "the first image is returned");
    assert_eq!(
        fixture.blobs.keys().len(),
        3,
        "the retry's objects are gone"
    );
    let other = image_service::fixtures::jpeg(900, 600);
    let other = futures::stream::iter(frames(&other, Some("k")));
    let refused = fixture.images.upload(&alice(), other).await;
    assert!(matches!(refused, Err(DomainError::AlreadyExists(_))));
    assert_eq!(
        fixture.blobs.keys().len(),
        3,
        "the refused upload's objects are gone"
    );
    assert_eq!(journal(&fixture).await, 0);
}

#[tokio::test]
async fn an_upload_cancelled_half_way_leaves_nothing_behind() {
    let fixture = fixture();
    let photo = image_service::fixtures::phone_photo(4000, 3000);
    let mut frames = frames(&photo, None);
    assert!(frames.len() > 4, "a photo of more than three chunks");
    frames.truncate(4);
    // The stream sends a spec and three chunks, then waits for ever, like
    // a caller that went quiet before the call was cancelled.
    let stream = futures::stream::iter(frames).chain(futures::stream::pending());
    let images = fixture.images.clone();
    let call = tokio::spawn(async move { images.upload(&alice(), Box::pin(stream)).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while journal(&fixture).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the write was journaled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    call.abort();
    let _ = call.await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while journal(&fixture).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped session undoes itself"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_nothing_left(&fixture, "a cancelled call").await;
}

/// The frames of a stream that resumes `upload_id` from its start with
/// all of `bytes` and finishes.
fn resume_frames(upload_id: &str, bytes: &[u8]) -> Vec<Result<UploadFrame, DomainError>> {
    let mut frames = vec![Ok(UploadFrame {
        payload: FramePayload::Resume {
            upload_id: upload_id.to_owned(),
            write_offset: 0,
        },
        finish: false,
    })];
    frames.extend(chunk_frames(bytes));
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_that_outlived_its_lease_leaves_the_stored_image_whole() {
    // A finish's lease lasts the upload deadline.
    let mut limits = image_service::fixtures::limits();
    limits.pace.deadline = Duration::from_secs(1);
    let fixture = fixture_with(limits);
    let uploads = fixture.images.uploads();
    let spec = NewImage {
        filename: "photo.jpg".into(),
        ..NewImage::default()
    };
    let session = uploads.start_session(&alice(), spec, None).await.unwrap();
    let id = session.id.to_string();
    let photo = photo();

    // The first finish stalls once its original is written, at its first
    // variant, until its lease has run out.
    let stall = fixture.faults.hold_after(Call::StartWrite, 1);
    let late = {
        let images = fixture.images.clone();
        let frames = futures::stream::iter(resume_frames(&id, &photo));
        tokio::spawn(async move { images.upload(&alice(), frames).await })
    };
    stall.reached().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // Another finish of the session stores the image meanwhile.
    let frames = futures::stream::iter(resume_frames(&id, &photo));
    let stored = fixture.images.upload(&alice(), frames).await.unwrap();
    let objects = fixture.blobs.keys();
    assert_eq!(objects.len(), 3, "{objects:?}");

    // The late finish goes on, and fails where it would write next.
    fixture.faults.fail(Call::StartWrite);
    stall.release();
    let late = late.await.unwrap();
    fixture.faults.heal();
    if let Ok(image) = &late {
        assert_eq!(image.id, stored.id, "the one image of the session");
    }
    assert_eq!(fixture.blobs.keys(), objects, "nothing removed: {late:?}");
    let original = ObjectKey::new(&stored.id, &VariantName::original());
    let bytes: Vec<Bytes> = fixture
        .blobs
        .read(&original, 0, stored.size_bytes)
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    let digest = sha2::Sha256::digest(bytes.concat());
    assert_eq!(hex::encode(digest), stored.sha256, "the stored bytes");
    assert_eq!(records(&fixture).await, 1);
}

/// Writes `bytes` as the object `key`.
async fn put(fixture: &Fixture, key: &ObjectKey, bytes: &'static [u8]) {
    let mut writer = fixture.blobs.start_write(key, None).await.unwrap();
    writer.write(Bytes::from_static(bytes)).await.unwrap();
    writer.finish().await.unwrap();
}

/// An added encoding's object (`small.webp`) is an image's object like
/// the others: kept by the repair pass while an entry names it, removed
/// as an orphan when none does, and deleted with its image; an object
/// several entries share is deleted once.
#[tokio::test]
async fn encodings_keyed_by_extension_are_kept_while_named_and_deleted_with_the_image() {
    use image_service::domain::image::{Encoding, ObjectName, Variant};
    let fixture = fixture();
    let spec = NewImage {
        filename: "sunrise.png".into(),
        ..NewImage::default()
    };
    let mut frames = vec![Ok(UploadFrame {
        payload: FramePayload::Spec(Box::new(spec)),
        finish: false,
    })];
    frames.extend(chunk_frames(include_bytes!(
        "../../examples/images/sunrise.png"
    )));
    let frames = futures::stream::iter(frames);
    let record = fixture.images.upload(&alice(), frames).await.unwrap();
    assert_eq!(fixture.blobs.keys().len(), 2, "small and medium share one");
    let small = VariantName::parse("small").unwrap();
    let named = ObjectName::encoded(small.clone(), Encoding::WebP);
    let unnamed = ObjectName::encoded(VariantName::parse("medium").unwrap(), Encoding::Avif);
    put(&fixture, &ObjectKey::of(&record.id, &named), b"RIFF webp").await;
    put(&fixture, &ObjectKey::of(&record.id, &unnamed), b"avif").await;
    let mut with_webp = record.clone();
    with_webp.variants.push(Variant {
        name: small,
        content_type: "image/webp".into(),
        size_bytes: 9,
        width: 320,
        height: 200,
        object: Some(named.clone()),
    });
    with_webp.revision += 1;
    fixture
        .metadata
        .replace(&with_webp, record.revision, ChangeKind::VariantsAdded)
        .await
        .unwrap();

    let report = fixture.images.repair(Duration::ZERO, false).await.unwrap();
    assert_eq!(
        report.orphan_objects,
        [ObjectKey::of(&record.id, &unnamed).as_str()],
        "only the object no entry names"
    );
    assert_eq!(fixture.blobs.keys().len(), 3, "{:?}", fixture.blobs.keys());

    fixture
        .images
        .delete(&alice(), &record.id.to_string())
        .await
        .unwrap();
    assert!(
        fixture.blobs.keys().is_empty(),
        "{:?}",
        fixture.blobs.keys()
    );
}
