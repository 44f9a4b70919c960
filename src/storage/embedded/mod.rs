//! The embedded backend: image bytes as files under the data directory and
//! metadata in an embedded database. No server to run; one process per
//! data directory.

mod blob;
pub mod downloads;
mod metadata;
pub mod urls;

use std::path::Path;

pub use blob::EmbeddedBlobStore;
pub use metadata::EmbeddedMetadataStore;

use crate::domain::ports::StorageError;
use crate::domain::signing::SigningKey;

/// The data directory's layout. Without `urls`, the blob store presigns
/// nothing (a command that serves no URL).
pub fn open(
    data_dir: &Path,
    urls: Option<urls::SignedUrls>,
) -> Result<(EmbeddedBlobStore, EmbeddedMetadataStore), StorageError> {
    std::fs::create_dir_all(data_dir).map_err(StorageError::internal)?;
    let blobs = EmbeddedBlobStore::open(&data_dir.join("blobs"), urls)?;
    let metadata = EmbeddedMetadataStore::open(&data_dir.join("metadata.redb"))?;
    Ok((blobs, metadata))
}

/// The signing key kept in the data directory, created on first use, so
/// page tokens and download URLs survive restarts.
pub fn load_or_create_signing_key(data_dir: &Path) -> Result<SigningKey, StorageError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    std::fs::create_dir_all(data_dir).map_err(StorageError::internal)?;
    let path = data_dir.join("signing.key");
    match std::fs::read(&path) {
        Ok(secret) => {
            SigningKey::from_secret(&secret).map_err(|e| StorageError::internal(e.to_string()))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let secret: [u8; 32] = rand::random();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(StorageError::internal)?;
            file.write_all(&secret).map_err(StorageError::internal)?;
            file.sync_all().map_err(StorageError::internal)?;
            SigningKey::from_secret(&secret).map_err(|e| StorageError::internal(e.to_string()))
        }
        Err(error) => Err(StorageError::internal(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::contract;

    fn stores() -> (tempfile::TempDir, EmbeddedBlobStore, EmbeddedMetadataStore) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let key = SigningKey::from_secret(&[7; 32]).expect("a key");
        let (blobs, metadata) = open(
            dir.path(),
            Some(urls::SignedUrls::new(key, "http://127.0.0.1:1")),
        )
        .expect("opened");
        (dir, blobs, metadata)
    }

    #[tokio::test]
    async fn the_embedded_blob_store_keeps_the_contract() {
        let (_dir, blobs, _) = stores();
        contract::blob_store(&blobs).await;
    }

    #[tokio::test]
    async fn the_embedded_metadata_store_keeps_the_contract() {
        let (_dir, _, metadata) = stores();
        contract::metadata_store(&metadata).await;
    }
}
