use clap::Parser;
use image_service::config::{Command, Config};
use image_service::startup::{Application, shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let traces = image_service::telemetry::init(config.log_format);
    let result = match config.command {
        Some(Command::Init) => image_service::startup::init_backend(&config).await,
        Some(Command::Migrate {
            from,
            to,
            dry_run,
            ref checkpoint,
        }) => {
            image_service::startup::run_migrate(&config, from, to, dry_run, checkpoint.clone())
                .await
        }
        Some(Command::Repair {
            dry_run,
            grace,
            json,
        }) => image_service::startup::run_repair(&config, grace, dry_run, json).await,
        None => {
            let stop = shutdown_signal()?;
            let app = Application::build(config).await?;
            app.run_until_stopped(stop).await
        }
    };
    traces.shutdown().await;
    result
}
