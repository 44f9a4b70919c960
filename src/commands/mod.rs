//! The subcommands besides serving, one module each. They open the
//! configured backend as the server does ([`crate::backend`]), without its
//! listeners.
mod backfill;
mod init;
mod migrate;
mod repair;

pub use backfill::run_backfill;
pub use init::init_backend;
pub use migrate::run_migrate;
pub use repair::run_repair;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{Command, Config};

/// Runs `command` with the configuration it was given with.
pub async fn run(command: &Command, config: &Config) -> anyhow::Result<()> {
    match command {
        Command::Init => init_backend(config).await,
        Command::Migrate {
            from,
            to,
            dry_run,
            checkpoint,
        } => run_migrate(config, *from, *to, *dry_run, checkpoint.clone()).await,
        Command::Repair {
            dry_run,
            grace,
            json,
        } => run_repair(config, *grace, *dry_run, *json).await,
        Command::Backfill {
            formats,
            variants,
            dry_run,
            checkpoint,
            max_rate,
        } => {
            let options = backfill::Flags {
                formats,
                variants,
                dry_run: *dry_run,
                checkpoint: checkpoint.clone(),
                max_rate: *max_rate,
            };
            run_backfill(config, &options).await
        }
    }
}

/// A flag set on Ctrl-C or SIGTERM, for a command that walks every image
/// to finish the images in progress and keep its checkpoint; and the task
/// that sets it, to abort once the walk is over.
fn stop_on_signal() -> anyhow::Result<(Arc<AtomicBool>, tokio::task::JoinHandle<()>)> {
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
fn progress_line() -> indicatif::ProgressBar {
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
fn finish_walk(
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
