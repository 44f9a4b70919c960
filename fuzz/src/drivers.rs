//! One driver per parser that a caller's bytes reach, each through the
//! library's public entry points, shared by the fuzz targets
//! (`fuzz/fuzz_targets/*.rs`) and by the replay of the corpus under
//! `cargo test` (`tests/parsers.rs`, which includes this file by path).
//!
//! A driver returns normally for input that is refused and panics only on
//! a bug: a panic in a parser, or a broken invariant asserted here (the
//! scrubbed output depends on where the chunks were cut, a refused upload
//! leaves something behind, a caller's bad file is called an internal
//! error). Drivers are deterministic: the same bytes take the same path.
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use image_service::config::Config;
use image_service::domain::image::NewImage;
use image_service::domain::listing::ListFilter;
use image_service::domain::page_token::PageTokens;
use image_service::domain::ports::MetadataStore;
use image_service::domain::signing::SigningKey;
use image_service::domain::upload::{FramePayload, UploadFrame};
use image_service::domain::{DomainError, Images, Limits, UserId};
use image_service::grpc::auth::Authenticator;
use image_service::media::MediaError;
use image_service::media::content::{ContentFacts, ContentInspector, ContentLimits, Declared};
use image_service::media::gif::GifFrames;
use image_service::media::scrub::{Scrubbed, Scrubber};
use image_service::media::variants::{self, DEFAULT_VARIANTS, Renderer};
use image_service::storage::memory::{Faults, MemoryBlobStore, MemoryMetadataStore};

/// A parser's driver: feeds it one input.
pub type Driver = fn(&[u8]);

/// Every fuzz target: its name (also the name of its directories under
/// `fuzz/corpus/` and `fuzz/regressions/`) and its driver.
pub const TARGETS: &[(&str, Driver)] = &[
    ("scrub", scrub),
    ("content", content),
    ("gif", gif),
    ("variants", render),
    ("page_token", page_token),
    ("authorization", authorization),
    ("upload", upload),
];

/// Pixels an image may have in these drivers: small, so that a header
/// that declares more is refused before anything is decoded.
pub const MAX_PIXELS: u64 = 4_000_000;
/// Bytes an upload may have in these drivers.
pub const MAX_BYTES: u64 = 1 << 20;
/// Bytes one render may hold (`--max-render-memory` of the drivers).
pub const RENDER_MEMORY: u64 = 64 << 20;
/// The HS256 secret of the `authorization` driver's authenticator.
pub const JWT_SECRET: &str = "fuzzing-secret-fuzzing-secret-0123456789";
/// The key that signs the `page_token` driver's tokens.
pub const PAGE_TOKEN_KEY: &[u8] = b"fuzzing-page-token-key-0123456789abcdef";

/// The size of the chunks an input is fed in, from its length: a small
/// input is fed whole, and as the fuzzer changes lengths every chunk
/// boundary is tried.
pub fn chunk_len(data: &[u8]) -> usize {
    1 + data.len() % 4099
}

/// The scrubbers (JPEG, PNG, WebP, HEIF/AVIF, EXIF orientation), stripping
/// and keeping metadata: the input fed whole and in chunks must give the
/// same result.
pub fn scrub(data: &[u8]) {
    let whole = scrub_in(data, data.len().max(1), false);
    let pieces = scrub_in(data, chunk_len(data), false);
    assert_eq!(
        whole, pieces,
        "the scrubbed bytes depend on where the upload's chunks were cut"
    );
    let _ = scrub_in(data, chunk_len(data), true);
}

/// The scrubbed bytes and what was found, or `None` when refused.
fn scrub_in(data: &[u8], chunk: usize, keep_metadata: bool) -> Option<(Vec<u8>, Scrubbed)> {
    let mut scrubber = Scrubber::new(keep_metadata);
    let mut out = Vec::new();
    for piece in data.chunks(chunk) {
        scrubber
            .push(Bytes::copy_from_slice(piece), &mut out)
            .ok()?;
    }
    let scrubbed = scrubber.finish(&mut out).ok()?;
    assert!((1..=8).contains(&scrubbed.orientation));
    Some((out.concat(), scrubbed))
}

/// The type and header dimensions of `data`, fed in chunks, as an upload
/// is inspected; `None` when refused.
pub fn inspect(data: &[u8]) -> Option<ContentFacts> {
    let limits = ContentLimits {
        max_bytes: MAX_BYTES,
        max_pixels: MAX_PIXELS,
        max_jpeg_decode_passes: image_service::media::limits::DEFAULT_MAX_JPEG_DECODE_PASSES,
    };
    let mut inspector = ContentInspector::new(limits, Declared::default()).ok()?;
    for piece in data.chunks(chunk_len(data)) {
        inspector.feed(piece, None).ok()?;
    }
    inspector.finish().ok()
}

/// Sniffing and header dimensions (`media::content`).
pub fn content(data: &[u8]) {
    let sniffed = image_service::media::content::sniff(data);
    if let Some(facts) = inspect(data) {
        assert_eq!(facts.size_bytes, data.len() as u64);
        assert!(facts.width > 0 && facts.height > 0);
        assert!(u64::from(facts.width) * u64::from(facts.height) <= MAX_PIXELS);
        if data.len() >= 64 {
            assert_eq!(sniffed, Some(facts.content_type));
        }
    }
}

/// The walk over a GIF's frames (`media::gif`).
pub fn gif(data: &[u8]) {
    let mut frames = GifFrames::new(MAX_PIXELS);
    for piece in data.chunks(chunk_len(data)) {
        if frames.feed(piece).is_err() {
            return;
        }
    }
    let (width, height) = frames.dimensions();
    assert!(u64::from(width) * u64::from(height) <= MAX_PIXELS);
}

/// Decoding, resizing and encoding (`media::variants`), as an upload is
/// rendered: only what the inspector accepts, within the memory the header
/// says the render needs.
pub fn render(data: &[u8]) {
    let Some(facts) = inspect(data) else { return };
    if !Renderer::can_render(facts.content_type) {
        return;
    }
    let Some(format) = image::ImageFormat::from_mime_type(facts.content_type) else {
        return;
    };
    let largest = variants::largest_side(&variants::default_sizes());
    let needed =
        variants::memory_needed(data, facts.content_type, facts.width, facts.height, largest);
    if needed > RENDER_MEMORY {
        return;
    }
    let orientation = 1 + (data.len() % 8) as u8;
    match variants::render(data, format, orientation, RENDER_MEMORY) {
        Ok(rendered) => {
            assert_eq!(rendered.variants.len(), DEFAULT_VARIANTS.len());
            for (variant, (name, side)) in rendered.variants.iter().zip(DEFAULT_VARIANTS) {
                assert_eq!(variant.name, name);
                assert!(variant.width.max(variant.height) <= side);
                assert!(!variant.bytes.is_empty());
            }
        }
        Err(MediaError::Internal(error)) => {
            panic!("a caller's file was called an internal error: {error:?}")
        }
        Err(_) => {}
    }
}

/// Page tokens (`domain::page_token`): the input as a token, and as a
/// cursor sealed and opened again.
pub fn page_token(data: &[u8]) {
    static TOKENS: OnceLock<PageTokens> = OnceLock::new();
    let tokens = TOKENS.get_or_init(|| {
        PageTokens::new(SigningKey::from_secret(PAGE_TOKEN_KEY).expect("a long enough key"))
    });
    let fingerprint = b"owner=alice";
    if let Ok(cursor) = tokens.open(fingerprint, &String::from_utf8_lossy(data)) {
        let again = tokens.seal(fingerprint, &cursor);
        assert_eq!(tokens.open(fingerprint, &again).ok(), Some(cursor));
    }
    let token = tokens.seal(fingerprint, data);
    assert_eq!(tokens.open(fingerprint, &token).ok().as_deref(), Some(data));
    assert!(tokens.open(b"owner=bob", &token).is_err());
}

/// The `authorization` header of a call, verified as a bearer JWT
/// (`grpc::auth`, with an HS256 secret).
pub fn authorization(data: &[u8]) {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    let auth = AUTH.get_or_init(|| {
        let config = Config::try_parse_from([
            "image-service",
            "--auth",
            "jwt",
            "--jwt-hs256-secret",
            JWT_SECRET,
        ])
        .expect("a valid configuration");
        futures::executor::block_on(Authenticator::from_settings(&config.identity))
            .expect("an HS256 authenticator")
    });
    let Ok(value) = tonic::metadata::MetadataValue::try_from(data) else {
        return;
    };
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert("authorization", value);
    let result = futures::executor::block_on(auth.authenticate(&metadata, None));
    if let Err(status) = result {
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }
}

/// The limits of the `upload` driver: small, so that each input is quick.
pub fn upload_limits() -> Limits {
    let mut limits = image_service::fixtures::limits();
    limits.content = ContentLimits {
        max_bytes: MAX_BYTES,
        max_pixels: MAX_PIXELS,
        max_jpeg_decode_passes: image_service::media::limits::DEFAULT_MAX_JPEG_DECODE_PASSES,
    };
    limits.memory_budget = 256 << 20;
    limits.memory_wait = Duration::ZERO;
    limits.render.max_memory = RENDER_MEMORY;
    limits
}

/// The whole upload pipeline (inspection, scrubbing, storing, variants)
/// over the in-memory stores: a refused upload leaves nothing behind and
/// is never an internal error; a stored one has its original and variants.
pub fn upload(data: &[u8]) {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
    }
    RUNTIME.with(|runtime| runtime.block_on(upload_on_runtime(data)));
}

async fn upload_on_runtime(data: &[u8]) {
    let faults = Faults::default();
    let blobs = MemoryBlobStore::new(faults.clone());
    let metadata = MemoryMetadataStore::new(faults);
    let images = Images::new(
        Arc::new(blobs.clone()),
        Arc::new(metadata.clone()),
        SigningKey::from_secret(PAGE_TOKEN_KEY).expect("a long enough key"),
        upload_limits(),
    );
    let spec = NewImage {
        filename: "upload".into(),
        ..NewImage::default()
    };
    let mut frames = vec![Ok(UploadFrame {
        payload: FramePayload::Spec(Box::new(spec)),
        finish: data.is_empty(),
    })];
    let pieces: Vec<&[u8]> = data.chunks(chunk_len(data)).collect();
    for (i, piece) in pieces.iter().enumerate() {
        frames.push(Ok(UploadFrame {
            payload: FramePayload::Chunk {
                data: Bytes::copy_from_slice(piece),
                crc32c: None,
            },
            finish: i + 1 == pieces.len(),
        }));
    }
    let alice = UserId::parse("alice").expect("a valid user id");
    let result = images.upload(&alice, futures::stream::iter(frames)).await;
    let records = metadata
        .list(&ListFilter::default(), None, 10)
        .await
        .expect("the memory store lists")
        .records;
    match result {
        Ok(record) => {
            assert_eq!(records.len(), 1);
            // One object per distinct object the record names: entries of
            // the same pixels share one.
            assert_eq!(blobs.keys().len(), record.objects().len());
            assert!(u64::from(record.width) * u64::from(record.height) <= MAX_PIXELS);
        }
        Err(DomainError::Internal(error)) => {
            panic!("a caller's file was called an internal error: {error:?}")
        }
        Err(_) => {
            assert!(records.is_empty(), "a refused upload left a record");
            assert_eq!(
                blobs.keys(),
                Vec::<String>::new(),
                "a refused upload left objects"
            );
        }
    }
}
