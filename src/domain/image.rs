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

/// An encoding a rendition can be stored in: what it is served as, and the
/// extension of the objects of the encodings made beside a variant's first
/// one (`images/{id}/{name}.{ext}`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Jpeg,
    WebP,
    Avif,
}

impl Encoding {
    pub const ALL: [Encoding; 3] = [Encoding::Jpeg, Encoding::WebP, Encoding::Avif];

    /// The media type it is served as.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Jpeg => "image/jpeg",
            Encoding::WebP => "image/webp",
            Encoding::Avif => "image/avif",
        }
    }

    /// The extension of its objects' keys.
    pub fn extension(self) -> &'static str {
        match self {
            Encoding::Jpeg => "jpg",
            Encoding::WebP => "webp",
            Encoding::Avif => "avif",
        }
    }

    /// Whether it keeps an alpha channel (the encodings of transparent
    /// images must).
    pub fn alpha_capable(self) -> bool {
        match self {
            Encoding::Jpeg => false,
            Encoding::WebP | Encoding::Avif => true,
        }
    }

    pub fn from_content_type(content_type: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|e| e.content_type() == content_type)
    }

    pub fn from_extension(extension: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.extension() == extension)
    }
}

/// The name of a stored object under its image's key prefix: a rendition's
/// name (`original`, `small`: the objects every image had before added
/// encodings), or a variant's name and an encoding's extension
/// (`small.webp`). Variant names cannot hold a `.`, so the two never
/// collide.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectName {
    variant: VariantName,
    encoding: Option<Encoding>,
}

impl ObjectName {
    /// The object named like the rendition: `images/{id}/{name}`.
    pub fn plain(variant: VariantName) -> Self {
        Self {
            variant,
            encoding: None,
        }
    }

    /// The object of an added encoding: `images/{id}/{name}.{ext}`.
    pub fn encoded(variant: VariantName, encoding: Encoding) -> Self {
        Self {
            variant,
            encoding: Some(encoding),
        }
    }

    pub fn original() -> Self {
        Self::plain(VariantName::original())
    }

    /// The text form, as written by [`fmt::Display`]; `None` for anything
    /// else (an empty name, an unknown extension, a second dot).
    pub fn parse(text: &str) -> Option<Self> {
        let (name, encoding) = match text.split_once('.') {
            Some((name, extension)) => (name, Some(Encoding::from_extension(extension)?)),
            None => (text, None),
        };
        let variant = VariantName::parse(name)
            .ok()
            .filter(|v| !name.is_empty() && v.as_str() == name)?;
        Some(Self { variant, encoding })
    }

    /// The rendition the object holds bytes of.
    pub fn variant(&self) -> &VariantName {
        &self.variant
    }

    pub fn is_original(&self) -> bool {
        self.encoding.is_none() && self.variant.is_original()
    }

    /// The added encoding the object holds; `None` for an object named
    /// like its rendition (whose type its record says).
    pub fn encoding(&self) -> Option<Encoding> {
        self.encoding
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.encoding {
            None => write!(f, "{}", self.variant),
            Some(encoding) => write!(f, "{}.{}", self.variant, encoding.extension()),
        }
    }
}

impl serde::Serialize for ObjectName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ObjectName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("not an object name: {text:?}")))
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

/// A derived rendition in one encoding: an image lists one per (name,
/// content type), the first of each name the one made before the upload
/// was acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Variant {
    pub name: VariantName,
    pub content_type: String,
    pub size_bytes: u64,
    pub width: u32,
    pub height: u32,
    /// The stored object it reads, when not the one named like the
    /// variant (absent in records made before objects were shared or
    /// encodings added): another variant's of the same pixels, the
    /// original's, or an added encoding's (`small.webp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectName>,
}

/// An encoding of a variant that was made and not kept, because it came
/// out no smaller than the variant's first encoding: it is not made again
/// (by the background, the repair pass or a backfill).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeclinedEncoding {
    pub name: VariantName,
    pub content_type: String,
}

impl Variant {
    /// The stored object its bytes are read from.
    pub fn object_name(&self) -> ObjectName {
        self.object
            .clone()
            .unwrap_or_else(|| ObjectName::plain(self.name.clone()))
    }

    /// The entry as a download reads it.
    pub fn held(&self) -> Held {
        Held {
            object: self.object_name(),
            content_type: self.content_type.clone(),
            size_bytes: self.size_bytes,
        }
    }
}

/// A stored object an image's rendition is read from, as a download sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub object: ObjectName,
    pub content_type: String,
    pub size_bytes: u64,
}

/// Where an image stands with moderation. Only `Active` images are seen by
/// anyone but their owner and the moderators; records stored before states
/// existed read as `Active`.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ImageState {
    /// Visible to every caller.
    #[default]
    Active,
    /// Waiting for a check before it is shown (set by a scan hook).
    Pending,
    /// Hidden while moderators look at it; its bytes are kept.
    Quarantined,
    /// Taken down: its bytes are gone, its record stays.
    Removed,
}

impl ImageState {
    pub const ALL: [ImageState; 4] = [
        ImageState::Active,
        ImageState::Pending,
        ImageState::Quarantined,
        ImageState::Removed,
    ];

    /// The name used in keys, logs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageState::Active => "active",
            ImageState::Pending => "pending",
            ImageState::Quarantined => "quarantined",
            ImageState::Removed => "removed",
        }
    }

    /// The state named by [`ImageState::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_active(&self) -> bool {
        *self == ImageState::Active
    }
}

impl fmt::Display for ImageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// Where the image stands with moderation (absent in records stored
    /// before states: `Active`).
    #[serde(default, skip_serializing_if = "ImageState::is_active")]
    pub state: ImageState,
    /// Why the image is in its state: a short category its owner sees
    /// (`spam`, `nudity`, ...); empty for `Active` images.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state_reason: String,
    /// When the image entered its state; `None` for an image that never
    /// left `Active`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_time: Option<Timestamp>,
    /// Its bytes were removed by moderation (every object, the original
    /// included): the record is kept, holding no bytes. The names of the
    /// objects that were removed, for a CDN purge; empty while the bytes
    /// are held.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_objects: Vec<String>,
    /// The PDQ perceptual hash of the image as viewed: 64 lower-case hex
    /// digits; empty when it was not decoded, and in records made before
    /// it was kept. Kept in a purged tombstone, for the hash lists.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pdq_hash: String,
    /// The PDQ hash's quality, 0-100 (0 when there is no hash).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pdq_quality: u32,
    /// Encodings of variants made and not kept (no smaller than the
    /// variant's first encoding), so that they are not made again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub declined_encodings: Vec<DeclinedEncoding>,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

impl ImageRecord {
    #[cfg(any(test, feature = "testkit"))]
    /// A record of `owner`, created at `micros`, with every field a backend
    /// must keep filled in (an empty field would read back the same if it
    /// were dropped).
    pub fn sample(owner: &UserId, micros: i64) -> Self {
        Self {
            id: ImageId::new(),
            owner: owner.clone(),
            filename: "photo.png".into(),
            content_type: "image/png".into(),
            size_bytes: 10,
            sha256: "0".repeat(64),
            crc32c: 7,
            width: 4,
            height: 3,
            title: "a title".into(),
            description: String::new(),
            tags: Vec::new(),
            location: String::new(),
            attributes: Default::default(),
            create_time: Timestamp::from_micros(micros),
            update_time: Timestamp::from_micros(micros),
            variants: Vec::new(),
            revision: 1,
            idempotency_key: None,
            uploaded_sha256: "0".repeat(64),
            metadata_stripped: false,
            blurhash: String::new(),
            // A ThumbHash, base64.
            thumbhash: "1QcSHQRnh493V4dIh4eXh1h4kJUI".into(),
            state: ImageState::Active,
            state_reason: String::new(),
            state_time: None,
            removed_objects: Vec::new(),
            pdq_hash: "f".repeat(64),
            pdq_quality: 100,
            declined_encodings: vec![DeclinedEncoding {
                name: VariantName::parse("small").expect("a variant name"),
                content_type: "image/avif".into(),
            }],
        }
    }

    /// Whether the encoding `content_type` of one of the variants `names`
    /// was made and not kept.
    pub fn declined(&self, names: &[VariantName], content_type: &str) -> bool {
        self.declined_encodings
            .iter()
            .any(|d| names.contains(&d.name) && d.content_type == content_type)
    }

    /// Whether `viewer` may see the image at all: an `Active` image is
    /// anyone's to see; any other only its owner's and the moderators'
    /// (`moderator`), for everyone else it does not exist.
    pub fn visible_to(&self, viewer: &UserId, moderator: bool) -> bool {
        self.state.is_active() || moderator || self.owner == *viewer
    }

    /// Whether moderation removed the image's bytes (see
    /// [`ImageRecord::removed_objects`]).
    pub fn bytes_removed(&self) -> bool {
        !self.removed_objects.is_empty()
    }

    /// The etag callers pass back for conditional updates.
    pub fn etag(&self) -> String {
        Self::etag_of(self.revision)
    }

    /// The etag of a record at `revision`.
    pub fn etag_of(revision: u64) -> String {
        format!("r{revision}")
    }

    /// SHA-256 of the bytes as uploaded.
    pub fn uploaded_sha256(&self) -> &str {
        if self.uploaded_sha256.is_empty() {
            &self.sha256
        } else {
            &self.uploaded_sha256
        }
    }

    /// Whether the named rendition exists.
    pub fn has_rendition(&self, name: &VariantName) -> bool {
        name.is_original() || self.variants.iter().any(|v| &v.name == name)
    }

    /// The original, as stored.
    pub fn original(&self) -> Held {
        Held {
            object: ObjectName::original(),
            content_type: self.content_type.clone(),
            size_bytes: self.size_bytes,
        }
    }

    /// The entries of the named variant, the one made first first.
    pub fn entries<'a>(&'a self, name: &'a VariantName) -> impl Iterator<Item = &'a Variant> {
        self.variants.iter().filter(move |v| &v.name == name)
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
            &self.state_reason,
            &self.pdq_hash,
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
            + self
                .removed_objects
                .iter()
                .map(|o| o.len() + PER_STRING)
                .sum::<usize>()
    }

    /// Every stored object of the image, each once (entries may share
    /// one), with its size: the original first, then the variants'.
    /// None once moderation removed them.
    pub fn objects(&self) -> Vec<(ObjectName, u64)> {
        if self.bytes_removed() {
            return Vec::new();
        }
        let mut objects = vec![(ObjectName::original(), self.size_bytes)];
        for variant in &self.variants {
            let name = variant.object_name();
            if !objects.iter().any(|(seen, _)| *seen == name) {
                objects.push((name, variant.size_bytes));
            }
        }
        objects
    }

    /// Whether an entry of the image reads the object.
    pub fn names_object(&self, object: &ObjectName) -> bool {
        if self.bytes_removed() {
            return false;
        }
        object.is_original() || self.variants.iter().any(|v| v.object_name() == *object)
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
    fn object_names_round_trip_and_refuse_what_no_key_holds() {
        for text in [
            "original",
            "small",
            "small.webp",
            "medium.avif",
            "large.jpg",
        ] {
            assert_eq!(ObjectName::parse(text).unwrap().to_string(), text);
        }
        for text in [
            "",
            ".webp",
            "small.",
            "small.png",
            "small.webp.webp",
            "Small.webp",
        ] {
            assert!(ObjectName::parse(text).is_none(), "{text}");
        }
    }

    #[test]
    fn records_made_before_shared_objects_read_the_object_named_like_the_variant() {
        let variant: Variant = serde_json::from_str(
            r#"{"name":"small","content_type":"image/jpeg","size_bytes":10,"width":3,"height":2}"#,
        )
        .unwrap();
        assert_eq!(variant.object_name().to_string(), "small");
        let shared = Variant {
            object: Some(ObjectName::original()),
            ..variant
        };
        let json = serde_json::to_string(&shared).unwrap();
        assert!(json.contains(r#""object":"original""#), "{json}");
        assert_eq!(serde_json::from_str::<Variant>(&json).unwrap(), shared);
    }

    #[test]
    fn variant_names_cannot_escape_object_keys() {
        assert!(VariantName::parse("").unwrap().is_original());
        assert!(VariantName::parse("small").is_ok());
        // No `.` either: `small.webp` is the key of an encoding of `small`.
        for text in ["../x", "Small", "a/b", "a b", "a.webp", &"x".repeat(33)] {
            assert!(VariantName::parse(text).is_err(), "{text}");
        }
    }
}
