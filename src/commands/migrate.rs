//! `image-service migrate`: the command line around the migration engine
//! ([`crate::migrate`]): opens both sides, shows progress, stops cleanly on
//! Ctrl-C or SIGTERM and prints the summary.
use std::path::PathBuf;

use crate::backend::{create_aws, open_stores};
use crate::config::{Backend, Config};
use crate::migrate::{Side, Summary};

/// Copies every image from `from` to `to` (see [`crate::migrate`]), with a
/// progress line, resumable from `checkpoint`.
pub async fn run_migrate(
    config: &Config,
    from: Backend,
    to: Backend,
    dry_run: bool,
    checkpoint: Option<PathBuf>,
) -> anyhow::Result<()> {
    let name = |backend: Backend| match backend {
        Backend::Embedded => "embedded",
        Backend::Aws => "aws",
    };
    if from == to {
        anyhow::bail!(
            "--from and --to are both {}: nothing to migrate",
            name(from)
        );
    }
    let open = |backend: Backend, destination: bool| async move {
        if backend == Backend::Aws && destination && !dry_run {
            create_aws(config).await?;
        }
        let stores = open_stores(config, backend, None).await?;
        anyhow::Ok(Side {
            blobs: stores.blobs,
            metadata: stores.metadata,
        })
    };
    let source = open(from, false).await?;
    let destination = open(to, true).await?;
    let checkpoint = checkpoint.unwrap_or_else(|| {
        crate::migrate::default_checkpoint(&config.storage.data_dir, name(from), name(to))
    });
    if checkpoint.exists() && !dry_run {
        eprintln!("resuming from {}", checkpoint.display());
    }

    let (stop, stopper) = super::walk::stop_on_signal()?;
    let bar = super::walk::progress_line();
    let verb = if dry_run { "to copy" } else { "copied" };
    let describe = |s: &Summary| {
        format!(
            "{} images: {} {verb} ({:.1} MiB), {} already there, {} failed",
            s.seen,
            s.copied,
            s.bytes as f64 / 1048576.0,
            s.present,
            s.failed.len()
        )
    };
    let started = std::time::Instant::now();
    let result = crate::migrate::migrate(
        &source,
        &destination,
        &checkpoint,
        dry_run,
        &stop,
        &|summary| {
            bar.set_message(describe(summary));
            bar.tick();
        },
    )
    .await;
    bar.finish_and_clear();
    stopper.abort();
    let summary = result?;
    let elapsed = started.elapsed().as_secs_f64().max(1e-3);
    println!(
        "{} {} → {}: {}",
        if dry_run { "dry run" } else { "migration" },
        name(from),
        name(to),
        describe(&summary)
    );
    if !dry_run {
        println!(
            "this run: {} images in {elapsed:.1} s ({:.1} images/s, {:.1} MiB/s)",
            summary.run_copied,
            summary.run_copied as f64 / elapsed,
            summary.run_bytes as f64 / 1048576.0 / elapsed
        );
    }
    if !summary.interrupted {
        println!(
            "{} users' quota overrides and erasure records, {} audit trail entries {verb}",
            summary.users, summary.actions
        );
    }
    if summary.erased > 0 {
        println!(
            "{} images not copied: their owners' data was erased in the destination after they were made",
            summary.erased
        );
    }
    for user in &summary.erasures_not_copied {
        eprintln!(
            "the erasure of user {user}'s data in the source was not copied: the destination holds data of theirs; call DeleteUserData for them on the destination"
        );
    }
    for user in &summary.erasures_running {
        eprintln!(
            "the erasure of user {user}'s data was still running in the source: call DeleteUserData for them on the destination to finish it"
        );
    }
    super::walk::finish_walk(&summary.failed, summary.interrupted, &checkpoint, "copied")
}
