//! The parsers a caller's bytes reach, under a counting allocator: every
//! file of the fuzz corpus (`fuzz/corpus/<target>/`) and every input a
//! fuzzer once failed on (`fuzz/regressions/<target>/`) is replayed through
//! the fuzz targets' own drivers (`fuzz/src/drivers.rs`), and so are inputs
//! crafted here to attack each parser's counts, sizes and nesting. Each must
//! be refused or processed without a panic and with its peak allocation
//! under its target's bound (see [`bound`]).
//!
//! Its own test binary, so that the counting `#[global_allocator]` touches
//! no other test. An allocation that would take the process over
//! [`CEILING`] fails (the process aborts, naming the input), so crafted
//! inputs and regressions each run in a child process: one that aborts is
//! reported as a failure of that input, and the others still run.
//!
//! `cargo test --test parsers -- --ignored write_seeds` writes the seed
//! corpus (BENCHMARKS.md: Fuzzing).
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

#[path = "../fuzz/src/drivers.rs"]
#[allow(dead_code)]
mod drivers;

use drivers::{Driver, RENDER_MEMORY, TARGETS};

/// Bytes the whole test process may hold: far above every bound, far
/// below what the machine has.
const CEILING: usize = 1 << 30;

/// Counts the bytes held and the most held since the last reset.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// What is being measured, for the message of an allocation over
/// [`CEILING`] (set outside allocations, read without allocating).
static RUNNING: Mutex<[u8; 160]> = Mutex::new([0; 160]);

impl Counting {
    /// Counts `size` more bytes held; false (nothing counted) when that
    /// would go over [`CEILING`].
    fn grow(size: usize) -> bool {
        let held = HELD.fetch_add(size, Ordering::Relaxed) + size;
        if held > CEILING {
            HELD.fetch_sub(size, Ordering::Relaxed);
            let mut message = *b"parsers: an allocation would take the test over its 1 GiB ceiling while running: ";
            // SAFETY: writes of initialised buffers to the standard error.
            unsafe {
                libc::write(2, message.as_mut_ptr().cast(), message.len());
                if let Ok(running) = RUNNING.try_lock() {
                    let len = running
                        .iter()
                        .position(|&b| b == 0)
                        .unwrap_or(running.len());
                    libc::write(2, running.as_ptr().cast(), len);
                }
                libc::write(2, b"\n".as_ptr().cast(), 1);
            }
            return false;
        }
        PEAK.fetch_max(held, Ordering::Relaxed);
        true
    }
}

// SAFETY: every call goes to the system allocator; only counting is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::grow(layout.size()) {
            return std::ptr::null_mut();
        }
        let ptr = unsafe { System.alloc(layout) };
        if ptr.is_null() {
            HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Self::grow(layout.size()) {
            return std::ptr::null_mut();
        }
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if ptr.is_null() {
            HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Old and new blocks may both be held while the bytes are copied.
        if !Self::grow(new_size) {
            return std::ptr::null_mut();
        }
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        let freed = if new.is_null() {
            new_size
        } else {
            layout.size()
        };
        HELD.fetch_sub(freed, Ordering::Relaxed);
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One measurement at a time: the counters are the process's.
static MEASURING: Mutex<()> = Mutex::new(());

/// Runs `driver` on `data`; the most bytes it held at once beyond what was
/// held before, or the panic's message.
fn peak_of(label: &str, driver: Driver, data: &[u8]) -> Result<usize, String> {
    let _turn = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    {
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        *running = [0; 160];
        let len = label.len().min(running.len());
        running[..len].copy_from_slice(&label.as_bytes()[..len]);
    }
    let before = HELD.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let outcome = std::panic::catch_unwind(|| driver(data));
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    match outcome {
        Ok(()) => Ok(peak),
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic".into())),
    }
}

/// The most bytes one input of `len` bytes may make its target hold at
/// once. Measured over the corpus and the crafted inputs (BENCHMARKS.md:
/// Fuzzing), with room for allocator and codec changes:
/// - scrub: three passes (whole, chunked, keeping metadata), each holding
///   the input's chunks, the output and at most one structure (a HEIF `meta`
///   box of up to 4 MiB, a JPEG EXIF block of 64 KiB).
/// - content: the header kept for sniffing and dimensions (at most 1 MiB)
///   and the chunks.
/// - gif: 13 bytes held, plus the chunks.
/// - variants: the render's memory cap (`RENDER_MEMORY`, which the drivers
///   pass as `--max-render-memory` does) plus the encoded variants.
/// - page_token, authorization: a few copies of the token.
/// - upload: the stored original and variants in the memory store, the
///   render's cap and the pipeline's buffers.
fn bound(target: &str, len: usize) -> usize {
    const MIB: usize = 1 << 20;
    let render = RENDER_MEMORY as usize;
    match target {
        "scrub" => 64 * len + 8 * MIB,
        "content" => 8 * len + 4 * MIB,
        "gif" => 4 * len + MIB,
        "variants" => 16 * len + render + 16 * MIB,
        "page_token" => 16 * len + MIB,
        "authorization" => 64 * len + MIB,
        "upload" => 16 * len + render + 32 * MIB,
        other => panic!("no bound for the target {other}"),
    }
}

fn driver(target: &str) -> Driver {
    TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no fuzz target is named {target}"))
        .1
}

/// Runs `data` through `target`'s driver and checks its bound.
fn check(target: &str, label: &str, data: &[u8]) -> Result<usize, String> {
    let peak = peak_of(label, driver(target), data)
        .map_err(|panic| format!("{label}: the {target} target panicked: {panic}"))?;
    let limit = bound(target, data.len());
    if peak > limit {
        return Err(format!(
            "{label}: the {target} target held {peak} bytes at once for {} bytes of input; \
             the bound is {limit}",
            data.len()
        ));
    }
    Ok(peak)
}

fn fuzz_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
}

/// Every `(target, file)` under `fuzz/<kind>/<target>/`, in order.
fn inputs(kind: &str) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let Ok(targets) = std::fs::read_dir(fuzz_dir(kind)) else {
        return found;
    };
    for target in targets {
        let target = target.unwrap().path();
        let name = target.file_name().unwrap().to_string_lossy().into_owned();
        driver(&name); // every directory is a target's
        for file in std::fs::read_dir(&target).unwrap() {
            let file = file.unwrap().path();
            if file.is_file() && file.extension().is_none_or(|e| e != "md") {
                found.push((name.clone(), file));
            }
        }
    }
    found.sort();
    found
}

/// The environment variable that makes [`one_case`] run one input: the
/// parent tests start this binary again for each.
const CASE: &str = "PARSERS_CASE";

/// Runs `case` (see [`run_case`]) in a child process.
fn in_child(case: &str) -> Result<(), String> {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "one_case", "--nocapture", "--test-threads=1"])
        .env(CASE, case)
        .output()
        .unwrap();
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let said: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|line| line.starts_with("parsers:") || line.contains("memory allocation"))
        .collect();
    Err(format!("{case}: {} {}", output.status, said.join(" | ")))
}

/// One input, in this process: `file:<target>:<path>`, or `crafted:<name>`
/// (run through every target that reads image bytes).
fn run_case(case: &str) -> Result<(), String> {
    if let Some(rest) = case.strip_prefix("file:") {
        let (target, path) = rest.split_once(':').unwrap();
        let data = std::fs::read(path).unwrap();
        check(target, case, &data).map(|_| ())
    } else {
        let name = case.strip_prefix("crafted:").unwrap();
        let (_, targets, make) = crafted()
            .into_iter()
            .find(|(n, _, _)| *n == name)
            .unwrap_or_else(|| panic!("no crafted input is named {name}"));
        let data = make();
        let mut failures = Vec::new();
        for target in targets {
            if let Err(failure) = check(target, &format!("{case} ({target})"), &data) {
                failures.push(failure);
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }
}

#[test]
fn one_case() {
    let Ok(case) = std::env::var(CASE) else {
        return;
    };
    if let Err(failure) = run_case(&case) {
        println!("parsers: {failure}");
        panic!("{failure}");
    }
}

#[test]
fn the_corpus_replays_without_panics_within_each_targets_bound() {
    let corpus = inputs("corpus");
    assert!(!corpus.is_empty(), "the corpus is in fuzz/corpus/");
    let mut failures = Vec::new();
    let mut peaks: Vec<(String, usize, usize, String)> = Vec::new();
    for (target, file) in &corpus {
        let data = std::fs::read(file).unwrap();
        let label = file.display().to_string();
        match check(target, &label, &data) {
            Ok(peak) => match peaks.iter_mut().find(|(t, ..)| t == target) {
                Some(entry) if entry.1 >= peak => {}
                Some(entry) => *entry = (target.clone(), peak, data.len(), label),
                None => peaks.push((target.clone(), peak, data.len(), label)),
            },
            Err(failure) => failures.push(failure),
        }
    }
    for (target, peak, len, file) in &peaks {
        println!("{target}: peak {peak} bytes for {len} bytes of input ({file})");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn past_fuzzer_findings_stay_fixed() {
    let failures: Vec<String> = inputs("regressions")
        .iter()
        .filter_map(|(target, file)| in_child(&format!("file:{target}:{}", file.display())).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn crafted_inputs_are_refused_or_processed_within_each_targets_bound() {
    let failures: Vec<String> = crafted()
        .iter()
        .filter_map(|(name, _, _)| in_child(&format!("crafted:{name}")).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The targets that read an upload's bytes.
const IMAGE: &[&str] = &["scrub", "content", "gif", "variants", "upload"];

type Crafted = (
    &'static str,
    &'static [&'static str],
    Box<dyn Fn() -> Vec<u8>>,
);

/// Inputs made to attack one structure each.
fn crafted() -> Vec<Crafted> {
    use image_service::fixtures;
    let jpeg = || fixtures::jpeg(16, 16);
    let png = || fixtures::png(16, 16, 1);
    let webp = simple_webp;
    let heif = || fixtures::heic_photo(64, 48, fixtures::HeifLayout::MetaFirst);
    let gif = || fixtures::gif(16, 16);
    let half = |bytes: Vec<u8>| bytes[..bytes.len() / 2].to_vec();
    let image = IMAGE;
    vec![
        // HEIF: an iloc of version 2 with zero-width offsets and lengths
        // declaring 65 535 items of 65 535 extents each (655 KB).
        (
            "heif_iloc_bomb_v2",
            image,
            Box::new(|| heif_with_iloc(2, 65_535)),
        ),
        // HEIF: the same in version 0 (6 bytes an item: 393 KB).
        (
            "heif_iloc_bomb_v0",
            image,
            Box::new(|| heif_with_iloc(0, 65_535)),
        ),
        // HEIF: the 12 KB version, 2 000 items of 65 535 extents.
        (
            "heif_iloc_bomb_12k",
            image,
            Box::new(|| heif_with_iloc(0, 2_000)),
        ),
        // HEIF: a meta box that declares 4 GiB and holds a few bytes.
        (
            "heif_meta_huge_declared",
            image,
            Box::new(|| heif_top(&sized(0xFFFF_FFF0, b"meta", &[0; 32]))),
        ),
        // HEIF: a meta box with a 64-bit size of 2^63.
        (
            "heif_meta_64bit_size",
            image,
            Box::new(|| {
                let mut meta = 1u32.to_be_bytes().to_vec();
                meta.extend_from_slice(b"meta");
                meta.extend_from_slice(&(1u64 << 63).to_be_bytes());
                meta.extend_from_slice(&[0; 32]);
                heif_top(&meta)
            }),
        ),
        // HEIF: a child box larger than the meta box that holds it.
        (
            "heif_child_overlaps_parent",
            image,
            Box::new(|| {
                let child = sized(4096, b"iloc", &[0; 16]);
                heif_top(&full(b"meta", 0, &child))
            }),
        ),
        // HEIF: boxes nested 2 000 deep inside meta.
        (
            "heif_nested_deep",
            image,
            Box::new(|| {
                let mut inner = bmff(b"free", &[]);
                for _ in 0..2_000 {
                    inner = bmff(b"dinf", &inner);
                }
                heif_top(&full(b"meta", 0, &inner))
            }),
        ),
        // HEIF: an iinf declaring 2^32-1 entries and holding none.
        (
            "heif_iinf_count_huge",
            image,
            Box::new(|| {
                heif_top(&full(
                    b"meta",
                    0,
                    &full(b"iinf", 1, &u32::MAX.to_be_bytes()),
                ))
            }),
        ),
        // HEIF: 5 000 Exif items and an iloc naming each: every lookup
        // walks every item.
        (
            "heif_many_items",
            image,
            Box::new(|| heif_many_items(5_000)),
        ),
        // HEIF: cut in half, inside its boxes.
        ("heif_truncated", image, Box::new(move || half(heif()))),
        // PNG: a chunk after IHDR declaring 0x7fffffff bytes.
        (
            "png_chunk_length_huge",
            image,
            Box::new(move || {
                let mut bytes = png()[..33].to_vec();
                bytes.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
                bytes.extend_from_slice(b"tEXt");
                bytes.extend_from_slice(&[b'a'; 64]);
                bytes
            }),
        ),
        // PNG: an IHDR of 2^31-1 x 2^31-1 pixels.
        (
            "png_dimensions_huge",
            image,
            Box::new(|| fixtures::png_header_only(0x7fff_ffff, 0x7fff_ffff)),
        ),
        // PNG: 2000 x 2000 pixels of zeros deflated to a few KB.
        (
            "png_deflate_bomb",
            image,
            Box::new(|| {
                let mut bytes = Vec::new();
                image::RgbaImage::new(2000, 2000)
                    .write_to(
                        &mut std::io::Cursor::new(&mut bytes),
                        image::ImageFormat::Png,
                    )
                    .unwrap();
                bytes
            }),
        ),
        // PNG: an iCCP chunk of 8 MiB.
        (
            "png_icc_huge",
            image,
            Box::new(|| fixtures::png_with_icc_profile(16, 16, 8 << 20)),
        ),
        // PNG: cut in half.
        ("png_truncated", image, Box::new(move || half(png()))),
        // JPEG: an APP1 segment declaring 65 535 bytes and ending the file.
        (
            "jpeg_segment_length_past_end",
            image,
            Box::new(|| vec![0xFF, 0xD8, 0xFF, 0xE1, 0xFF, 0xFF, b'E', b'x']),
        ),
        // JPEG: segment lengths of 0 and 1, shorter than their own field.
        (
            "jpeg_segment_length_short",
            image,
            Box::new(move || {
                let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x00, 0xFF, 0xE1, 0x00, 0x01];
                bytes.extend_from_slice(&jpeg()[2..]);
                bytes
            }),
        ),
        // JPEG: 200 000 empty segments before the image.
        (
            "jpeg_marker_flood",
            image,
            Box::new(|| fixtures::jpeg_with_marker_flood(200_000)),
        ),
        // JPEG: an EXIF IFD declaring 65 535 entries, each pointing past the end.
        (
            "exif_ifd_count_huge",
            image,
            Box::new(move || jpeg_with_exif(&exif_ifd(0xFFFF, 0xFFFF_FFF0))),
        ),
        // JPEG: an EXIF IFD whose entry declares 2^32-1 values and whose next
        // IFD is itself.
        (
            "exif_ifd_cycle",
            image,
            Box::new(move || jpeg_with_exif(&exif_ifd(1, 8))),
        ),
        // JPEG: a frame header of 65 535 x 65 535 pixels.
        (
            "jpeg_dimensions_huge",
            image,
            Box::new(move || {
                let mut bytes = jpeg();
                let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
                bytes[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
                bytes
            }),
        ),
        // JPEG: cut in half.
        ("jpeg_truncated", image, Box::new(move || half(jpeg()))),
        // WebP: a RIFF size of 4 GiB around a small image.
        (
            "webp_riff_size_huge",
            image,
            Box::new(move || {
                let mut bytes = webp();
                bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
                bytes
            }),
        ),
        // WebP: a chunk declaring 4 GiB inside a small RIFF.
        (
            "webp_chunk_size_huge",
            image,
            Box::new(move || {
                let mut bytes = webp();
                bytes[16..20].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
                bytes
            }),
        ),
        // WebP: a VP8X canvas of 2^24 x 2^24 over a 30 x 20 image.
        (
            "webp_canvas_huge",
            image,
            Box::new(move || {
                let simple = webp();
                let mut body = b"WEBP".to_vec();
                body.extend_from_slice(b"VP8X");
                body.extend_from_slice(&10u32.to_le_bytes());
                body.extend_from_slice(&[0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
                body.extend_from_slice(&simple[12..]);
                riff(&body)
            }),
        ),
        // WebP: cut in half.
        ("webp_truncated", image, Box::new(move || half(webp()))),
        // GIF: a logical screen of 65 535 x 65 535.
        (
            "gif_screen_huge",
            image,
            Box::new(|| {
                let mut bytes = gif_frames(1);
                bytes[6..10].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
                bytes
            }),
        ),
        // GIF: a 65 535 x 65 535 frame on a 1 x 1 screen.
        (
            "gif_frame_huge",
            image,
            Box::new(|| fixtures::gif_with_frame((1, 1), (65_535, 65_535))),
        ),
        // GIF: 50 000 frames of one pixel.
        ("gif_many_frames", image, Box::new(|| gif_frames(50_000))),
        // GIF: cut in half.
        ("gif_truncated", image, Box::new(move || half(gif()))),
        // Page tokens: 1 MiB of base64.
        (
            "page_token_huge",
            &["page_token"],
            Box::new(|| vec![b'A'; 1 << 20]),
        ),
        // JWT: a 16 KiB bearer token of nested JSON arrays.
        (
            "jwt_nested_json",
            &["authorization"],
            Box::new(|| {
                use base64::Engine;
                let encode =
                    |part: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(part);
                let nested = format!("{}{}", "[".repeat(6000), "]".repeat(6000));
                format!(
                    "Bearer {}.{}.sig",
                    encode(br#"{"alg":"HS256"}"#),
                    encode(nested.as_bytes())
                )
                .into_bytes()
            }),
        ),
        // JWT: an authorization header of 1 MiB.
        (
            "jwt_huge_header",
            &["authorization"],
            Box::new(|| {
                let mut bytes = b"Bearer ".to_vec();
                bytes.extend(std::iter::repeat_n(b'a', 1 << 20));
                bytes
            }),
        ),
    ]
}

/// An ISO BMFF box.
fn bmff(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    sized((payload.len() + 8) as u32, kind, payload)
}

/// A box whose header declares `size`, whatever it holds.
fn sized(size: u32, kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = size.to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(payload);
    out
}

/// A full box (version and flags first).
fn full(kind: &[u8; 4], version: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![version, 0, 0, 0];
    body.extend_from_slice(payload);
    bmff(kind, &body)
}

/// A HEIC's `ftyp`, then `top`, then a small `mdat`.
fn heif_top(top: &[u8]) -> Vec<u8> {
    let mut out = bmff(b"ftyp", b"heic\0\0\0\0mif1heic");
    out.extend_from_slice(top);
    out.extend(bmff(b"mdat", &[0; 64]));
    out
}

/// A HEIC whose `iloc` (of `version`) has zero-width offsets, lengths and
/// base offsets and declares `items` items of 65 535 extents each: no
/// extent takes a byte of the file.
fn heif_with_iloc(version: u8, items: u32) -> Vec<u8> {
    let mut iloc = vec![0x00, 0x00];
    if version < 2 {
        iloc.extend_from_slice(&(items as u16).to_be_bytes());
    } else {
        iloc.extend_from_slice(&items.to_be_bytes());
    }
    for id in 1..=items {
        if version < 2 {
            iloc.extend_from_slice(&(id as u16).to_be_bytes());
        } else {
            iloc.extend_from_slice(&id.to_be_bytes());
        }
        if version >= 1 {
            iloc.extend_from_slice(&[0, 0]); // construction method
        }
        iloc.extend_from_slice(&[0, 0]); // data reference: this file
        iloc.extend_from_slice(&0xFFFFu16.to_be_bytes()); // extents
    }
    heif_top(&full(b"meta", 0, &full(b"iloc", version, &iloc)))
}

/// A HEIC with `items` Exif items in `iinf`, each located by `iloc`.
fn heif_many_items(items: u16) -> Vec<u8> {
    let mut entries = items.to_be_bytes().to_vec();
    let mut iloc = vec![0x44, 0x00];
    iloc.extend_from_slice(&items.to_be_bytes());
    for id in 1..=items {
        let mut infe = id.to_be_bytes().to_vec();
        infe.extend_from_slice(&[0, 0]);
        infe.extend_from_slice(b"Exif\0");
        entries.extend(full(b"infe", 2, &infe));
        iloc.extend_from_slice(&id.to_be_bytes());
        iloc.extend_from_slice(&[0, 0, 0, 1]); // this file, one extent
        iloc.extend_from_slice(&0u32.to_be_bytes());
        iloc.extend_from_slice(&1u32.to_be_bytes());
    }
    let mut meta = full(b"iinf", 0, &entries);
    meta.extend(full(b"iloc", 0, &iloc));
    heif_top(&full(b"meta", 0, &meta))
}

/// A RIFF WebP around `body` (which starts with `WEBP`).
fn riff(body: &[u8]) -> Vec<u8> {
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// A lossless WebP of 30 x 20 pixels: RIFF, WEBP, one VP8L chunk.
fn simple_webp() -> Vec<u8> {
    let image = image::RgbaImage::from_fn(30, 20, |x, y| {
        image::Rgba([x as u8 * 8, y as u8 * 12, 90, 255])
    });
    let mut bytes = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut bytes)
        .encode(image.as_raw(), 30, 20, image::ExtendedColorType::Rgba8)
        .unwrap();
    bytes
}

/// A big-endian TIFF whose first IFD declares `count` entries (only one
/// present: an orientation); that entry declares `values` LONG values
/// at offset 0xFFFFFFF0, and the next IFD is at offset 8 (itself).
fn exif_ifd(count: u16, values: u32) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
    tiff.extend_from_slice(&count.to_be_bytes());
    tiff.extend_from_slice(&0x0112u16.to_be_bytes());
    tiff.extend_from_slice(&4u16.to_be_bytes());
    tiff.extend_from_slice(&values.to_be_bytes());
    tiff.extend_from_slice(&0xFFFF_FFF0u32.to_be_bytes());
    tiff.extend_from_slice(&8u32.to_be_bytes());
    tiff
}

/// A small JPEG with an APP1 EXIF segment holding `tiff`.
fn jpeg_with_exif(tiff: &[u8]) -> Vec<u8> {
    let jpeg = image_service::fixtures::jpeg(16, 16);
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend_from_slice(tiff);
    let mut out = vec![0xFF, 0xD8, 0xFF, 0xE1];
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend(payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A GIF of 1 x 1 with `frames` frames.
fn gif_frames(frames: usize) -> Vec<u8> {
    let mut out = b"GIF89a\x01\x00\x01\x00\x00\x00\x00".to_vec();
    for _ in 0..frames {
        out.extend_from_slice(&[0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0]);
        out.extend_from_slice(&[0x02, 0x02, 0x44, 0x01, 0x00]);
    }
    out.push(0x3B);
    out
}

/// A big-endian TIFF holding only the orientation `value`.
fn orientation_tiff(value: u16) -> Vec<u8> {
    let mut tiff = b"MM\0\x2a\0\0\0\x08\0\x01".to_vec();
    tiff.extend_from_slice(&[0x01, 0x12, 0x00, 0x03, 0, 0, 0, 1]);
    tiff.extend_from_slice(&value.to_be_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    tiff
}

/// A WebP as cameras write it: VP8X announcing EXIF and XMP, the image,
/// then both metadata chunks.
fn camera_webp() -> Vec<u8> {
    let chunk = image_service::fixtures::riff_chunk;
    let mut vp8x = vec![0x08 | 0x04 | 0x10, 0, 0, 0];
    vp8x.extend_from_slice(&29u32.to_le_bytes()[..3]);
    vp8x.extend_from_slice(&19u32.to_le_bytes()[..3]);
    let mut body = b"WEBP".to_vec();
    body.extend(chunk(b"VP8X", &vp8x));
    body.extend_from_slice(&simple_webp()[12..]);
    body.extend(chunk(b"EXIF", &orientation_tiff(6)));
    body.extend(chunk(b"XMP ", b"<x:xmpmeta>GPS 48.85</x:xmpmeta>"));
    riff(&body)
}

/// An image of 8 x 8 in `format`, encoded by the image crate.
fn encoded(format: image::ImageFormat) -> Vec<u8> {
    let image =
        image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([x as u8 * 30, y as u8 * 30, 120]));
    let mut bytes = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

/// Writes the seed corpus: small real images (the examples, the fixtures'
/// camera files, hand-made WebP, HEIF and GIF headers) for the targets
/// that read image bytes, and tokens for the others. Seeds stay under
/// 64 KiB each.
#[test]
#[ignore = "writes fuzz/corpus/: run by hand when the seeds change"]
fn write_seeds() {
    use image_service::domain::page_token::PageTokens;
    use image_service::domain::signing::SigningKey;
    use image_service::fixtures::{self, HeifLayout};
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/images");
    let images: Vec<(&str, Vec<u8>)> = vec![
        (
            "sunrise.png",
            std::fs::read(examples.join("sunrise.png")).unwrap(),
        ),
        // `examples/images/phone-photo.jpg` is this at 480 x 360 (68 KB).
        ("camera-photo.jpg", fixtures::camera_photo(120, 90)),
        ("phone-photo.jpg", fixtures::phone_photo(32, 24)),
        ("plain.jpg", fixtures::jpeg(24, 16)),
        ("exif.jpg", jpeg_with_exif(&orientation_tiff(8))),
        ("plain.png", fixtures::png(16, 16, 1)),
        ("icc.png", fixtures::png_with_icc_profile(8, 8, 600)),
        (
            "meta-first.heic",
            fixtures::heic_photo(64, 48, HeifLayout::MetaFirst),
        ),
        (
            "exif-in-idat.heic",
            fixtures::heic_photo(64, 48, HeifLayout::ExifInIdat),
        ),
        (
            "meta-last.heic",
            fixtures::heic_photo(64, 48, HeifLayout::MetaLast),
        ),
        ("simple.webp", simple_webp()),
        ("camera.webp", camera_webp()),
        ("still.gif", fixtures::gif(8, 8)),
        ("animated.gif", fixtures::animated_gif(8, 8)),
        ("plain.bmp", encoded(image::ImageFormat::Bmp)),
        ("plain.tiff", encoded(image::ImageFormat::Tiff)),
    ];
    let write = |target: &str, name: &str, bytes: &[u8]| {
        assert!(bytes.len() < 64 * 1024, "{name} is a small seed");
        let dir = fuzz_dir("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    };
    for (name, bytes) in &images {
        for target in ["scrub", "content", "variants", "upload"] {
            write(target, name, bytes);
        }
        if name.ends_with(".gif") {
            write("gif", name, bytes);
        }
    }
    let tokens = PageTokens::new(SigningKey::from_secret(drivers::PAGE_TOKEN_KEY).unwrap());
    write(
        "page_token",
        "valid",
        tokens.seal(b"owner=alice", b"cursor-bytes").as_bytes(),
    );
    write(
        "page_token",
        "other-filters",
        tokens.seal(b"owner=bob", b"c").as_bytes(),
    );
    write("page_token", "empty", b"");
    let key = jsonwebtoken::EncodingKey::from_secret(drivers::JWT_SECRET.as_bytes());
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    let token = |claims: serde_json::Value| jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let far = 4_102_444_800u64; // 2100-01-01
    write(
        "authorization",
        "valid",
        format!(
            "Bearer {}",
            token(serde_json::json!({"sub": "alice", "exp": far}))
        )
        .as_bytes(),
    );
    write(
        "authorization",
        "expired",
        format!(
            "Bearer {}",
            token(serde_json::json!({"sub": "alice", "exp": 1}))
        )
        .as_bytes(),
    );
    write(
        "authorization",
        "no-sub",
        format!(
            "bearer {}",
            token(serde_json::json!({"exp": far, "nbf": far}))
        )
        .as_bytes(),
    );
    write(
        "authorization",
        "numeric-sub",
        format!(
            "Bearer {}",
            token(serde_json::json!({"sub": 42, "exp": far}))
        )
        .as_bytes(),
    );
    write("authorization", "basic", b"Basic YWxpY2U6c2VjcmV0");
}
