//! The subcommands besides serving, one module each. They open the
//! configured backend as the server does ([`crate::backend`]), without its
//! listeners.
mod backfill;
mod init;
mod migrate;
mod repair;
mod walk;

pub use backfill::run_backfill;
pub use init::init_backend;
pub use migrate::run_migrate;
pub use repair::run_repair;

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
