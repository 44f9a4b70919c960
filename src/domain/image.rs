//! What an image is, as the service stores it.
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use super::{DomainError, UserId};

/// An image's id: a UUIDv7, so ids sort by creation time.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct ImageId(Uuid);

impl ImageId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Parses the canonical hyphenated form a caller got from the service.
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        if text.is_empty() {
            return Err(DomainError::invalid("image_id is required"));
        }
        Uuid::try_parse(text)
            .map(Self)
            .map_err(|_| DomainError::invalid("image_id is not a valid image id"))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }
}

impl Default for ImageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// The name of a stored rendition: `original`, or a derived variant such as
/// `small`. Restricted to `[a-z0-9_-]{1,32}` because it is part of object keys
/// and URLs.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct VariantName(String);

impl VariantName {
    pub const ORIGINAL: &'static str = "original";

    pub fn original() -> Self {
        Self(Self::ORIGINAL.to_owned())
    }

    /// An empty name means the original.
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        if text.is_empty() {
            return Ok(Self::original());
        }
        let valid = text.len() <= 32
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(DomainError::invalid("variant is not a valid variant name"))
        }
    }

    pub fn is_original(&self) -> bool {
        self.0 == Self::ORIGINAL
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VariantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A point in time, in microseconds since the Unix epoch.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    pub fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    pub fn as_micros(&self) -> i64 {
        self.0
    }

    pub fn saturating_add(&self, duration: Duration) -> Self {
        let micros = i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
        Self(self.0.saturating_add(micros))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(time: SystemTime) -> Self {
        let micros = match time.duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
            Err(before) => -i64::try_from(before.duration().as_micros()).unwrap_or(i64::MAX),
        };
        Self(micros)
    }
}

impl From<Timestamp> for SystemTime {
    fn from(time: Timestamp) -> Self {
        let micros = Duration::from_micros(time.0.unsigned_abs());
        if time.0 >= 0 {
            UNIX_EPOCH + micros
        } else {
            UNIX_EPOCH - micros
        }
    }
}

/// A derived rendition stored beside the original.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Variant {
    pub name: VariantName,
    pub content_type: String,
    pub size_bytes: u64,
    pub width: u32,
    pub height: u32,
}

/// One image: the single source of truth for its metadata.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageRecord {
    pub id: ImageId,
    pub owner: UserId,
    pub filename: String,
    pub content_type: String,
    pub size_bytes: u64,
    /// Lower-case hex SHA-256 of the stored original.
    pub sha256: String,
    pub crc32c: u32,
    pub width: u32,
    pub height: u32,
    pub title: String,
    pub description: String,
    pub tags: Vec<String>,
    pub location: String,
    pub attributes: BTreeMap<String, String>,
    pub create_time: Timestamp,
    pub update_time: Timestamp,
    #[serde(default)]
    pub variants: Vec<Variant>,
    /// Incremented by every update; the caller-visible etag is derived from it.
    pub revision: u64,
    /// The caller's idempotency key, scoped to `owner`.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Lower-case hex SHA-256 of the bytes as uploaded (they differ from
    /// the stored ones when metadata was stripped); empty in records made
    /// before it was kept, where the two are the same.
    #[serde(default)]
    pub uploaded_sha256: String,
    /// Identifying metadata was removed from the stored original.
    #[serde(default)]
    pub metadata_stripped: bool,
    /// A BlurHash of the image as viewed; empty when it was not decoded.
    #[serde(default)]
    pub blurhash: String,
    /// A ThumbHash of the image as viewed, base64; empty when it was not
    /// decoded, and in records made before it was kept.
    #[serde(default)]
    pub thumbhash: String,
}

impl ImageRecord {
    /// The etag callers pass back for conditional updates.
    pub fn etag(&self) -> String {
        format!("r{}", self.revision)
    }

    /// SHA-256 of the bytes as uploaded.
    pub fn uploaded_sha256(&self) -> &str {
        if self.uploaded_sha256.is_empty() {
            &self.sha256
        } else {
            &self.uploaded_sha256
        }
    }

    /// Size, type of the named rendition, or `None` when it does not exist.
    pub fn rendition(&self, name: &VariantName) -> Option<(u64, &str)> {
        if name.is_original() {
            return Some((self.size_bytes, &self.content_type));
        }
        self.variants
            .iter()
            .find(|v| &v.name == name)
            .map(|v| (v.size_bytes, v.content_type.as_str()))
    }

    /// About how many bytes the record takes in a response: its text
    /// fields, plus a generous allowance for field tags, lengths, numbers
    /// and timestamps (each string costs at most a few bytes of framing).
    pub fn approximate_encoded_len(&self) -> usize {
        const FIXED: usize = 512;
        const PER_STRING: usize = 8;
        let strings = [
            &self.filename,
            &self.content_type,
            &self.sha256,
            &self.title,
            &self.description,
            &self.location,
            &self.uploaded_sha256,
            &self.blurhash,
            &self.thumbhash,
        ];
        FIXED
            + strings.iter().map(|s| s.len() + PER_STRING).sum::<usize>()
            + self.owner.as_str().len()
            + self
                .tags
                .iter()
                .map(|t| t.len() + PER_STRING)
                .sum::<usize>()
            + self
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len() + 3 * PER_STRING)
                .sum::<usize>()
            + self.variants.len() * 96
    }

    /// Every stored rendition: the original first, then the variants.
    pub fn rendition_names(&self) -> Vec<VariantName> {
        std::iter::once(VariantName::original())
            .chain(self.variants.iter().map(|v| v.name.clone()))
            .collect()
    }
}

/// What the caller declares about an image before its bytes, as sent.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NewImage {
    pub filename: String,
    pub content_type: Option<String>,
    pub title: String,
    pub description: String,
    pub tags: Vec<String>,
    pub location: String,
    pub attributes: BTreeMap<String, String>,
    pub expected_size: Option<i64>,
    pub sha256: Option<String>,
    pub crc32c: Option<u32>,
    pub idempotency_key: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_ids_round_trip_through_their_text_form() {
        let id = ImageId::new();
        assert_eq!(ImageId::parse(&id.to_string()).unwrap(), id);
    }

    #[test]
    fn malformed_image_ids_are_invalid_arguments() {
        for text in [
            "",
            "42",
            "../../etc/passwd",
            "0190b7a0-0000-7000-8000-00000000000g",
        ] {
            assert!(
                matches!(ImageId::parse(text), Err(DomainError::InvalidArgument(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn later_ids_sort_after_earlier_ones() {
        let first = ImageId::new();
        std::thread::sleep(Duration::from_millis(2));
        assert!(ImageId::new() > first);
    }

    #[test]
    fn variant_names_cannot_escape_object_keys() {
        assert!(VariantName::parse("").unwrap().is_original());
        assert!(VariantName::parse("small").is_ok());
        for text in ["../x", "Small", "a/b", "a b", &"x".repeat(33)] {
            assert!(VariantName::parse(text).is_err(), "{text}");
        }
    }
}
