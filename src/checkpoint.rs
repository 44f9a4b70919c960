//! The checkpoint of a run over every image (`migrate`, `backfill`): the
//! listing's cursor after the last image finished and the run's totals so
//! far, kept in a file between runs so that the next run after a crash or
//! Ctrl-C goes on from there. A finished run removes it.
use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The file's content: the cursor, beside the totals' own fields.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved<T> {
    /// The listing's cursor (hex) after the last image finished.
    cursor: String,
    #[serde(flatten)]
    totals: T,
}

/// The cursor and totals kept at `path`: none and the defaults when there
/// is no checkpoint (or it cannot be read). A checkpoint that is not one
/// is an error.
pub fn load<T: DeserializeOwned + Default>(path: &Path) -> anyhow::Result<(Option<Vec<u8>>, T)> {
    let Ok(bytes) = std::fs::read(path) else {
        return Ok((None, T::default()));
    };
    let saved: Saved<T> = serde_json::from_slice(&bytes)
        .with_context(|| format!("reading the checkpoint {}", path.display()))?;
    let cursor = if saved.cursor.is_empty() {
        None
    } else {
        Some(hex::decode(&saved.cursor).context("the checkpoint's cursor")?)
    };
    Ok((cursor, saved.totals))
}

/// Keeps `cursor` and `totals` at `path`, atomically (a new file renamed
/// over the old), creating its directory if needed.
pub fn save<T: Serialize>(path: &Path, cursor: &[u8], totals: &T) -> anyhow::Result<()> {
    let saved = Saved {
        cursor: hex::encode(cursor),
        totals,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the directory {}", parent.display()))?;
    }
    let partial = path.with_extension("checkpoint.partial");
    std::fs::write(&partial, serde_json::to_vec(&saved)?)
        .with_context(|| format!("writing the checkpoint {}", partial.display()))?;
    std::fs::rename(&partial, path)
        .with_context(|| format!("writing the checkpoint {}", path.display()))?;
    Ok(())
}

/// Removes the checkpoint at `path`, if there is one.
pub fn remove(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).context("removing the checkpoint"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Totals {
        seen: u64,
    }

    #[test]
    fn a_saved_checkpoint_loads_back_and_a_removed_one_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("more/run.checkpoint");
        assert_eq!(load::<Totals>(&path).unwrap(), (None, Totals::default()));
        save(&path, &[1, 2, 255], &Totals { seen: 7 }).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, r#"{"cursor":"0102ff","seen":7}"#);
        assert_eq!(
            load::<Totals>(&path).unwrap(),
            (Some(vec![1, 2, 255]), Totals { seen: 7 })
        );
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert_eq!(load::<Totals>(&path).unwrap(), (None, Totals::default()));
    }
}
