//! `image-service backfill`: the command line around the backfill
//! ([`crate::backfill`]): the set of renditions wanted, checked as the
//! service checks its own; progress; a clean stop on Ctrl-C or SIGTERM;
//! the summary.
use std::path::PathBuf;

use crate::backend::{OpenedBackend, open_images};
use crate::backfill::Summary;
use crate::config::Config;
use crate::domain::image::Encoding;
use crate::media::variants::VariantSize;

/// The command's own flags.
pub struct Flags<'a> {
    /// The encodings wanted; empty for `--variant-formats`.
    pub formats: &'a [Encoding],
    /// The variants wanted besides the defaults; empty for `--variant`.
    pub variants: &'a [VariantSize],
    pub dry_run: bool,
    pub checkpoint: Option<PathBuf>,
    pub max_rate: u32,
}

/// Adds what every image lacks of the wanted renditions (see
/// [`crate::backfill`]), with a progress line, resumable from the
/// checkpoint.
pub async fn run_backfill(config: &Config, flags: &Flags<'_>) -> anyhow::Result<()> {
    // The service's own settings, with the wanted set in place of its
    // configured one: the same checks, the same renderer and limits.
    let mut config = config.clone();
    if !flags.formats.is_empty() {
        config.limits.variant_formats = flags.formats.to_vec();
    }
    if !flags.variants.is_empty() {
        config.limits.variant = flags.variants.to_vec();
    }
    let named = |error: String| {
        let error = if flags.formats.is_empty() {
            error
        } else {
            error.replace(
                "--variant-formats (IMAGE_SERVICE_VARIANT_FORMATS)",
                "--formats",
            )
        };
        let error = if flags.variants.is_empty() {
            error
        } else {
            error
                .replace("--variant names", "--variants names")
                .replace("--variant makes", "--variants makes")
                .replace(" (IMAGE_SERVICE_VARIANT)", "")
        };
        anyhow::anyhow!(error)
    };
    let encodings = config.limits.encodings().map_err(named)?;
    let sizes = config.limits.variant_sizes().map_err(named)?;
    if !config.limits.variants {
        anyhow::bail!(
            "--variants false (IMAGE_SERVICE_VARIANTS): this service makes no variants, so there is nothing to backfill"
        );
    }
    let mut wanted: Vec<&str> = vec!["jpeg"];
    wanted.extend(encodings.background.iter().map(|e| e.extension()));
    let sizes: Vec<String> = sizes
        .iter()
        .map(|s| format!("{}={}", s.name, s.longest_side))
        .collect();
    let wanted = format!("{}; {}", wanted.join(","), sizes.join(","));

    let OpenedBackend { images, .. } = open_images(&config, None).await?;
    let checkpoint = flags
        .checkpoint
        .clone()
        .unwrap_or_else(|| crate::backfill::default_checkpoint(&config.storage.data_dir));
    if checkpoint.exists() && !flags.dry_run {
        eprintln!("resuming from {}", checkpoint.display());
    }
    let (stop, stopper) = super::walk::stop_on_signal()?;
    let bar = super::walk::progress_line();
    let dry_run = flags.dry_run;
    let describe = |s: &Summary| {
        if dry_run {
            format!(
                "{} images: {} lack something ({} variants, {} encodings, {} ThumbHashes, {} PDQ hashes to make), {} complete",
                s.seen,
                s.lacking,
                s.variants,
                s.encodings,
                s.thumbhashes,
                s.pdq_hashes,
                s.seen - s.lacking
            )
        } else {
            format!(
                "{} images: {} changed ({} entries, {} ThumbHashes, {} PDQ hashes, {:.1} MiB added; {} encodings no smaller, not kept; {} over their owner's quota, not kept), {} complete, {} gone, {} failed",
                s.seen,
                s.changed,
                s.entries,
                s.thumbhashes_set,
                s.pdq_hashes_set,
                s.bytes as f64 / 1048576.0,
                s.declined,
                s.over_quota,
                s.seen - s.lacking,
                s.gone,
                s.failed.len()
            )
        }
    };
    let options = crate::backfill::Options {
        checkpoint: &checkpoint,
        wanted: wanted.clone(),
        dry_run,
        max_rate: flags.max_rate,
        stop: &stop,
    };
    let started = std::time::Instant::now();
    let result = crate::backfill::backfill(images.uploads(), &options, &|summary| {
        bar.set_message(describe(summary));
        bar.tick();
    })
    .await;
    bar.finish_and_clear();
    stopper.abort();
    let summary = result?;
    let elapsed = started.elapsed().as_secs_f64().max(1e-3);
    println!(
        "{} ({wanted}): {}",
        if dry_run { "dry run" } else { "backfill" },
        describe(&summary)
    );
    if !dry_run {
        println!(
            "this run: {} images in {elapsed:.1} s ({:.1} images/s), {} changed",
            summary.run_seen,
            summary.run_seen as f64 / elapsed,
            summary.run_changed
        );
    }
    super::walk::finish_walk(
        &summary.failed,
        summary.interrupted,
        &checkpoint,
        "backfilled",
    )
}
