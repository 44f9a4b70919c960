//! Block lists (`--block-list`): PDQ hashes and SHA-256s of images no one
//! may upload. Every new image, from an upload stream or an upload session
//! alike, is checked where both commit their record, before the content
//! scan hook: one whose PDQ hash is within `--block-distance` bits of a
//! listed one (when its quality is at least
//! [`RECOMMENDED_MIN_QUALITY`]: a hash of less says little about the
//! image), or whose SHA-256 (of the bytes as uploaded, or as stored) is a
//! listed one, is rejected or quarantined (`--block-action`).
//!
//! The list's text, one entry a line:
//!
//! ```text
//! # a comment; blank lines are ignored
//! pdq:<64 hex digits> [label]
//! sha256:<64 hex digits> [label]
//! ```
//!
//! The label (the rest of the line, at most [`MAX_LABEL_LEN`] printable
//! characters) is what logs name a match by; without one, its line number.
//! Anything else is refused with its line number: at the start, the
//! service does not start; on a reload, the list in use is kept.
//!
//! Matching is a linear scan of the PDQ hashes, four 64-bit XORs and
//! `popcount`s each: about 0.4 ms for 100 000 hashes (see BENCHMARKS.md),
//! a small part of an upload's render.
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::image::ImageRecord;
use crate::media::pdq::{PdqHash, RECOMMENDED_MIN_QUALITY};

/// The reason of an image a block list quarantined.
pub const BLOCKED_REASON: &str = "blocked";
/// The actor of a block list's quarantines in the audit trail.
pub const BLOCK_LIST_ACTOR: &str = "block-list";
/// How the error of an upload a block list rejected reads.
pub const BLOCK_REJECTED: &str =
    "the image matches an entry of the service's block list; nothing was stored";
/// The longest label of an entry.
pub const MAX_LABEL_LEN: usize = 200;
/// The bytes a list's text may take per entry it may hold: the longest
/// entry line is `sha256:`, 64 digits, a space and a label of
/// [`MAX_LABEL_LEN`] characters of up to 4 bytes (872 bytes and its line
/// end), and comments share the room. A longer text is refused unread.
pub const MAX_BYTES_PER_ENTRY: u64 = 1024;

/// What becomes of an image a block list matches (`--block-action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockAction {
    /// Not stored: the upload fails with `FAILED_PRECONDITION`.
    Reject,
    /// Stored `Quarantined` with reason [`BLOCKED_REASON`] and an audit
    /// entry.
    Quarantine,
}

/// How a block list matches and what follows.
#[derive(Clone, Copy, Debug)]
pub struct BlockPolicy {
    /// Most bits a PDQ hash may differ from a listed one and match.
    pub distance: u32,
    pub action: BlockAction,
}

/// A parsed block list.
#[derive(Debug, Default)]
pub struct BlockList {
    /// The PDQ hashes, as words, and their entry's name.
    pdq: Vec<([u64; 4], u32)>,
    /// SHA-256s, lower-case hex, and their entry's name.
    sha256: HashMap<String, u32>,
    /// Each entry's name: its label, else `line N`.
    names: Vec<String>,
}

/// Which of an image's hashes matched an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockMatch {
    /// `pdq` or `sha256`.
    pub kind: &'static str,
    /// The entry's label, else its line.
    pub entry: String,
    /// The PDQ distance (0 for a SHA-256).
    pub distance: u32,
}

impl BlockList {
    /// Reads the list's text; a malformed line, or more than `max_entries`
    /// entries, is an error naming its line.
    pub fn parse(text: &str, max_entries: usize) -> Result<Self, String> {
        let mut list = BlockList::default();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (entry, label) = match line.split_once(char::is_whitespace) {
                Some((entry, label)) => (entry, label.trim()),
                None => (line, ""),
            };
            if label.chars().count() > MAX_LABEL_LEN || label.chars().any(char::is_control) {
                return Err(format!(
                    "line {number}: a label is at most {MAX_LABEL_LEN} printable characters"
                ));
            }
            let name = if label.is_empty() {
                format!("line {number}")
            } else {
                label.to_owned()
            };
            if list.names.len() >= max_entries {
                return Err(format!(
                    "line {number}: more than {max_entries} entries (--block-list-max-entries)"
                ));
            }
            let id = list.names.len() as u32;
            if let Some(hex) = entry.strip_prefix("pdq:") {
                let hash = PdqHash::from_hex(hex).ok_or_else(|| {
                    format!("line {number}: a PDQ hash is 64 hexadecimal digits after `pdq:`")
                })?;
                list.pdq.push((hash.words(), id));
            } else if let Some(hex) = entry.strip_prefix("sha256:") {
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!(
                        "line {number}: a SHA-256 is 64 hexadecimal digits after `sha256:`"
                    ));
                }
                list.sha256.insert(hex.to_ascii_lowercase(), id);
            } else {
                return Err(format!(
                    "line {number}: an entry is `pdq:<hex> [label]` or `sha256:<hex> [label]`"
                ));
            }
            list.names.push(name);
        }
        Ok(list)
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The entry `record` matches, if any: a SHA-256 of its bytes as
    /// uploaded or as stored, else the nearest PDQ hash within `distance`
    /// (only for a hash of quality [`RECOMMENDED_MIN_QUALITY`] or more).
    pub fn matching(&self, record: &ImageRecord, distance: u32) -> Option<BlockMatch> {
        for sha256 in [&record.uploaded_sha256, &record.sha256] {
            if let Some(&id) = self.sha256.get(&sha256.to_ascii_lowercase()) {
                return Some(BlockMatch {
                    kind: "sha256",
                    entry: self.names[id as usize].clone(),
                    distance: 0,
                });
            }
        }
        if record.pdq_quality < RECOMMENDED_MIN_QUALITY {
            return None;
        }
        let words = PdqHash::from_hex(&record.pdq_hash)?.words();
        self.nearest(&words, distance).map(|(id, bits)| BlockMatch {
            kind: "pdq",
            entry: self.names[id as usize].clone(),
            distance: bits,
        })
    }

    /// The nearest listed PDQ hash within `distance` bits of `words`.
    pub fn nearest(&self, words: &[u64; 4], distance: u32) -> Option<(u32, u32)> {
        self.pdq
            .iter()
            .map(|(listed, id)| {
                let bits: u32 = listed
                    .iter()
                    .zip(words)
                    .map(|(a, b)| (a ^ b).count_ones())
                    .sum();
                (*id, bits)
            })
            .filter(|&(_, bits)| bits <= distance)
            .min_by_key(|&(_, bits)| bits)
    }
}

/// The block list in use and its policy, shared by a replica's uploads;
/// the list is replaced whole when it is reloaded.
#[derive(Clone)]
pub struct BlockHook {
    list: Arc<RwLock<Arc<BlockList>>>,
    policy: BlockPolicy,
}

impl BlockHook {
    pub fn new(list: BlockList, policy: BlockPolicy) -> Self {
        Self {
            list: Arc::new(RwLock::new(Arc::new(list))),
            policy,
        }
    }

    pub fn policy(&self) -> BlockPolicy {
        self.policy
    }

    /// Puts `list` in use from now on.
    pub fn replace(&self, list: BlockList) {
        let list = Arc::new(list);
        match self.list.write() {
            Ok(mut current) => *current = list,
            Err(poisoned) => *poisoned.into_inner() = list,
        }
    }

    /// The list in use.
    pub fn current(&self) -> Arc<BlockList> {
        match self.list.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The entry `record` matches in the list in use, if any.
    pub fn check(&self, record: &ImageRecord) -> Option<BlockMatch> {
        self.current().matching(record, self.policy.distance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "00000000000000000000000000000000000000000000000000000000000000ff";

    #[test]
    fn a_list_reads_entries_and_comments_and_names_bad_lines() {
        let text = format!(
            "# known\n\npdq:{A} first photo\nsha256:{}\n",
            "AB".repeat(32)
        );
        let list = BlockList::parse(&text, 10).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list.names, ["first photo", "line 4"]);
        assert_eq!(list.sha256.get(&"ab".repeat(32)), Some(&1));

        for (bad, line) in [
            (format!("pdq:{A}\n{A}\n"), "line 2:"),
            (format!("\npdq:{}\n", &A[1..]), "line 2:"),
            ("sha256:xyz\n".to_owned(), "line 1:"),
            (format!("pdq:{A} a\u{7}bell\n"), "line 1:"),
        ] {
            let error = BlockList::parse(&bad, 10).unwrap_err();
            assert!(error.starts_with(line), "{bad:?}: {error}");
        }
        let error = BlockList::parse(&format!("pdq:{A}\npdq:{A}\n"), 1).unwrap_err();
        assert!(error.contains("--block-list-max-entries"), "{error}");
    }

    #[test]
    fn the_nearest_hash_within_the_distance_matches() {
        let near = "00000000000000000000000000000000000000000000000000000000000000f0";
        let list = BlockList::parse(&format!("pdq:{A} a\npdq:{near} b\n"), 10).unwrap();
        let words = PdqHash::from_hex(near).unwrap().words();
        assert_eq!(list.nearest(&words, 31), Some((1, 0)));
        let far = PdqHash::from_hex(&"f".repeat(64)).unwrap().words();
        assert_eq!(list.nearest(&far, 31), None);
        assert_eq!(list.nearest(&far, 256).map(|(id, _)| id), Some(0));
    }
}
