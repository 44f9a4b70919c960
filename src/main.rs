use clap::Parser;
use image_service::config::Config;
use image_service::startup::{Application, shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let traces = image_service::telemetry::init(config.telemetry.log_format);
    let result = match &config.command {
        Some(command) => image_service::commands::run(command, &config).await,
        None => {
            let stop = shutdown_signal()?;
            let app = Application::build(config).await?;
            app.run_until_stopped(stop).await
        }
    };
    traces.shutdown().await;
    result
}
