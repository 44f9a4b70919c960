//! Property tests: random upload streams (message orders, sizes, hostile
//! strings, random bytes behind real image magic numbers) and random
//! metadata never panic, are rejected only with documented statuses, and
//! store nothing when rejected. `PROPTEST_CASES` sets the number of cases.
use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use image_service::domain::image::NewImage;
use image_service::domain::signing::SigningKey;
use image_service::domain::upload::{FramePayload, UploadFrame};
use image_service::domain::{DomainError, Images, UserId, validation};
use image_service::storage::embedded::{self, urls::SignedUrls};
use proptest::prelude::*;

/// Strings that stress validation: control and bidi characters, path
/// separators, emoji, and (rarely) very long ones.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9 #._-]{0,20}",
        2 => "\\PC{0,40}",
        1 => proptest::collection::vec(
            prop_oneof![
                Just('\u{0}'), Just('\u{7}'), Just('\n'), Just('\u{202E}'), Just('\u{2066}'),
                Just('/'), Just('\\'), Just('.'), Just('#'), Just('😀'), Just(' '), Just('é'),
            ],
            0..40,
        ).prop_map(|chars| chars.into_iter().collect()),
        1 => (1usize..3).prop_map(|n| "x".repeat(n * 700_000)),
    ]
}

const MAGIC: &[&[u8]] = &[
    b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR",
    b"\xff\xd8\xff\xe0",
    b"GIF89a",
    b"RIFF\0\0\0\0WEBPVP8 ",
    b"BM",
    b"II*\0",
    b"\0\0\0\x1cftypavif",
];

/// Random bytes, often behind the magic number of an accepted format.
fn chunk_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::option::weighted(0.6, proptest::sample::select(MAGIC)),
        proptest::collection::vec(any::<u8>(), 0..3000),
    )
        .prop_map(|(magic, rest)| {
            magic
                .map(|m| m.to_vec())
                .unwrap_or_default()
                .into_iter()
                .chain(rest)
                .collect()
        })
}

fn spec() -> impl Strategy<Value = NewImage> {
    (
        hostile_string(),
        proptest::option::of(prop_oneof![
            Just("image/png".to_owned()),
            Just("text/html".to_owned()),
            hostile_string()
        ]),
        hostile_string(),
        hostile_string(),
        proptest::collection::vec(hostile_string(), 0..35),
        hostile_string(),
        proptest::collection::btree_map(hostile_string(), hostile_string(), 0..4),
        proptest::option::of(-5i64..5000),
        proptest::option::of(prop_oneof!["[0-9a-f]{64}", hostile_string()]),
        proptest::option::of(any::<u32>()),
        proptest::option::of(hostile_string()),
    )
        .prop_map(
            |(
                filename,
                content_type,
                title,
                description,
                tags,
                location,
                attributes,
                expected_size,
                sha256,
                crc32c,
                key,
            )| {
                NewImage {
                    filename,
                    content_type,
                    title,
                    description,
                    tags,
                    location,
                    attributes: attributes.into_iter().collect::<BTreeMap<_, _>>(),
                    expected_size,
                    sha256,
                    crc32c,
                    idempotency_key: key,
                }
            },
        )
}

fn frame() -> impl Strategy<Value = UploadFrame> {
    let payload = prop_oneof![
        1 => spec().prop_map(|s| FramePayload::Spec(Box::new(s))),
        6 => (chunk_bytes(), proptest::option::weighted(0.2, any::<u32>()))
            .prop_map(|(data, crc32c)| FramePayload::Chunk { data: Bytes::from(data), crc32c }),
        1 => Just(FramePayload::Nothing),
    ];
    (payload, proptest::bool::weighted(0.2))
        .prop_map(|(payload, finish)| UploadFrame { payload, finish })
}

/// A stream that usually starts with a spec, like real callers.
fn stream() -> impl Strategy<Value = Vec<UploadFrame>> {
    (
        proptest::option::weighted(0.8, spec()),
        proptest::collection::vec(frame(), 0..8),
    )
        .prop_map(|(first, rest)| {
            first
                .map(|s| UploadFrame {
                    payload: FramePayload::Spec(Box::new(s)),
                    finish: false,
                })
                .into_iter()
                .chain(rest)
                .collect()
        })
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    images: Images,
    dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate();
        let (blobs, metadata) = embedded::open(
            dir.path(),
            Some(SignedUrls::new(key.clone(), "http://localhost")),
        )
        .unwrap();
        let mut limits = image_service::fixtures::limits();
        limits.content.max_bytes = 16 * 1024;
        limits.content.max_pixels = 1_000_000;
        limits.max_concurrent_uploads = 4;
        limits.max_uploads_per_user = 4;
        limits.render.max_memory = 64 * 1024 * 1024;
        let images = Images::new(Arc::new(blobs), Arc::new(metadata), key, limits);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Self {
            runtime,
            images,
            dir,
        }
    }

    fn stored_files(&self) -> usize {
        walk(&self.dir.path().join("blobs"))
    }
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                walk(&e.path())
            } else {
                1
            }
        })
        .sum()
}

proptest! {
    // About half a minute in CI; PROPTEST_CASES runs more (or fewer).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(1000),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_upload_streams_are_stored_whole_or_not_at_all(frames in stream()) {
        let harness = Harness::new();
        let owner = UserId::parse("fuzzer").unwrap();
        let before = harness.stored_files();
        let result = harness.runtime.block_on(async {
            let stream = futures::stream::iter(frames.into_iter().map(Ok));
            harness.images.upload(&owner, stream).await
        });
        let listed = harness.runtime.block_on(harness.images.list(&owner, &Default::default())).unwrap().images;
        match result {
            Ok(record) => {
                prop_assert_eq!(harness.stored_files(), before + 1);
                prop_assert_eq!(listed.len(), 1);
                prop_assert_eq!(&listed[0], &record);
                prop_assert!(record.width > 0 && record.height > 0);
                prop_assert!(!record.filename.contains('/') && !record.filename.contains('\\'));
            }
            Err(error) => {
                prop_assert!(
                    matches!(
                        error,
                        DomainError::InvalidArgument(_)
                            | DomainError::OutOfRange(_)
                            | DomainError::DataLoss(_)
                            | DomainError::ResourceExhausted(_)
                            | DomainError::TooLarge(_)
                    ),
                    "undocumented rejection: {:?}", error
                );
                prop_assert_eq!(harness.stored_files(), before, "a rejected upload left bytes");
                prop_assert!(listed.is_empty(), "a rejected upload left metadata");
            }
        }
    }

    #[test]
    fn metadata_validation_never_panics_and_keeps_display_names_safe(text in hostile_string(), tags in proptest::collection::vec(hostile_string(), 0..40)) {
        let _ = validation::title(&text);
        let _ = validation::description(&text);
        let _ = validation::location(&text);
        let _ = validation::idempotency_key(&text);
        let _ = validation::sha256_hex(&text);
        if let Ok(tags) = validation::tags(&tags) {
            prop_assert!(tags.len() <= 30);
            prop_assert!(tags.iter().all(|t| !t.is_empty() && t.chars().count() <= 64 && !t.starts_with('#')));
        }
        let name = validation::filename(&text);
        prop_assert!(!name.is_empty() && name.chars().count() <= 255);
        prop_assert!(!name.contains('/') && !name.contains('\\') && !name.starts_with('.'));
        let unsafe_char = |c: char| c.is_control() || ('\u{202A}'..='\u{202E}').contains(&c);
        prop_assert!(!name.chars().any(unsafe_char), "unsafe display name {:?}", name);
    }
}

proptest! {
    // Each case is a render through the build's JPEG decoder, which in the
    // default build (jpeg-decoder, unoptimised in tests) takes a good part
    // of a second: fewer cases than above, PROPTEST_CASES for more.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(250),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Damaged phone JPEGs (bytes changed, the file cut short), baseline
    /// and progressive, through whichever JPEG decoder the build uses: a
    /// render or a refusal, never a panic, a crash or an internal error.
    #[test]
    fn damaged_jpegs_render_or_are_refused(
        progressive in any::<bool>(),
        changes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        use image_service::media::{MediaError, variants};
        let mut jpeg = damaged_jpeg_source(progressive).to_vec();
        for (at, value) in changes {
            let at = at.index(jpeg.len());
            jpeg[at] = value;
        }
        if let Some(cut) = cut {
            jpeg.truncate(cut.index(jpeg.len()).max(2));
        }
        match variants::render(&jpeg, image::ImageFormat::Jpeg, 6, 64 * 1024 * 1024) {
            Ok(rendered) => prop_assert!(!rendered.variants.is_empty()),
            Err(MediaError::Invalid(_) | MediaError::TooLarge(_)) => {}
            Err(other) => prop_assert!(false, "undocumented rejection: {:?}", other),
        }
    }
}

/// The photos `damaged_jpegs_render_or_are_refused` damages, made once.
fn damaged_jpeg_source(progressive: bool) -> &'static [u8] {
    use std::sync::OnceLock;
    static PHOTOS: OnceLock<[Vec<u8>; 2]> = OnceLock::new();
    let photos = PHOTOS.get_or_init(|| {
        [false, true].map(|progressive| {
            image_service::fixtures::phone_shot(&image_service::fixtures::PhoneShot {
                width: 480,
                height: 360,
                progressive,
                ..image_service::fixtures::PHONE_SHOTS[1]
            })
        })
    });
    &photos[usize::from(progressive)]
}
