//! `image-service init`: creates what the configured backend needs.
use crate::backend::{create_aws, open_stores};
use crate::config::{Backend, Config};
use crate::storage::embedded;

/// Creates the bucket and the table with its indexes, or the data
/// directory with its signing key and database. Idempotent.
pub async fn init_backend(config: &Config) -> anyhow::Result<()> {
    match config.storage.backend {
        Backend::Embedded => {
            embedded::load_or_create_signing_key(&config.storage.data_dir)?;
            open_stores(config, Backend::Embedded, None).await?;
            println!(
                "embedded backend ready in {}",
                config.storage.data_dir.display()
            );
        }
        Backend::Aws => {
            let shards = create_aws(config).await?;
            println!(
                "aws backend ready: bucket {}, table {} (by_time index in {shards} shards)",
                config.storage.s3_bucket, config.storage.dynamodb_table
            );
        }
    }
    Ok(())
}
