//! What the commands that walk every image (`migrate`, `backfill`) share:
//! the flag Ctrl-C sets, the progress line, the end of their output.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A flag set on Ctrl-C or SIGTERM, for a command that walks every image
/// to finish the images in progress and keep its checkpoint; and the task
/// that sets it, to abort once the walk is over.
pub(super) fn stop_on_signal() -> anyhow::Result<(Arc<AtomicBool>, tokio::task::JoinHandle<()>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let signal = crate::startup::shutdown_signal()?;
    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            signal.await;
            eprintln!("stopping after the images in progress…");
            stop.store(true, Ordering::Relaxed);
        })
    };
    Ok((stop, stopper))
}

/// The progress line of a command that walks every image: elapsed time
/// and its message, on a terminal only (stderr).
pub(super) fn progress_line() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar
}

/// The end of a command that walks every image: a line for each image it
/// could not handle (`not {verb}: {id}: {why}`), and an error when it was
/// interrupted (its checkpoint remains) or some could not be handled.
pub(super) fn finish_walk(
    failed: &[(String, String)],
    interrupted: bool,
    checkpoint: &std::path::Path,
    verb: &str,
) -> anyhow::Result<()> {
    for (id, why) in failed {
        println!("  not {verb}: {id}: {why}");
    }
    if interrupted {
        anyhow::bail!(
            "interrupted; run the same command again to go on from {}",
            checkpoint.display()
        );
    }
    if !failed.is_empty() {
        anyhow::bail!("{} image(s) could not be {verb}", failed.len());
    }
    Ok(())
}
