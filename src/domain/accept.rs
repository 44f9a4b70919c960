//! What a viewer can show (the `accept` of download requests, read like an
//! HTTP `Accept` header), and which of an image's stored encodings of a
//! rendition it gets.
//!
//! Entries are media types in the viewer's order of preference, each with
//! an optional `;q=` weight (0 to 1, 0 excluding the type), and the
//! wildcards `image/*` and `*/*`; one entry may hold a whole
//! comma-separated header. Entries that cannot be read (no `/`, a bad
//! weight) are ignored, as HTTP servers ignore what they do not understand
//! in a header browsers and proxies write; only the size of the list is
//! refused, since the service holds and scans it.
use std::cmp::Reverse;

use super::DomainError;
use super::image::{Held, ImageRecord, ObjectName, Variant, VariantName};

/// Most media types an `accept` may hold, after splitting entries at
/// commas: a browser sends fewer than ten.
pub const MAX_ACCEPT_TYPES: usize = 32;
/// Longest media type with its parameters, in bytes.
pub const MAX_ACCEPT_TYPE_BYTES: usize = 256;
/// Types every browser decodes: an original in one of them may be served
/// to a viewer that accepts it through a wildcard. Others (HEIC, TIFF,
/// BMP) only to a viewer that names them.
const SHOWN_EVERYWHERE: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

/// A viewer's `accept`, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accept {
    ranges: Vec<MediaRange>,
}

/// One media range: `image/webp`, `image/*` or `*/*`, and its weight.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MediaRange {
    /// Lower case; `*` for any.
    kind: String,
    subtype: String,
    /// Thousandths: 1000 is `q=1`.
    quality: u16,
}

/// How a viewer ranks a media type: by the most specific of its ranges
/// that matches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rank {
    quality: u16,
    /// The range's place in the viewer's list.
    position: usize,
    /// Matched by `image/*` or `*/*` rather than named.
    wildcard: bool,
}

impl Accept {
    /// Parses the entries of a request; INVALID_ARGUMENT when there are
    /// more than [`MAX_ACCEPT_TYPES`] types or one is longer than
    /// [`MAX_ACCEPT_TYPE_BYTES`].
    pub fn parse(entries: &[String]) -> Result<Self, DomainError> {
        let mut ranges = Vec::new();
        let mut count = 0;
        for entry in entries {
            for text in entry.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                count += 1;
                if count > MAX_ACCEPT_TYPES {
                    return Err(DomainError::invalid(format!(
                        "accept holds more than {MAX_ACCEPT_TYPES} media types"
                    )));
                }
                if text.len() > MAX_ACCEPT_TYPE_BYTES {
                    return Err(DomainError::invalid(format!(
                        "an accept media type is longer than {MAX_ACCEPT_TYPE_BYTES} bytes"
                    )));
                }
                ranges.extend(MediaRange::parse(text));
            }
        }
        Ok(Self { ranges })
    }

    /// Whether the viewer stated no preference (no entry it could read).
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// How the viewer ranks `content_type`; `None` when it does not accept
    /// it (no range matches, or the most specific one has `q=0`).
    fn rank(&self, content_type: &str) -> Option<Rank> {
        let (kind, subtype) = content_type.split_once('/')?;
        let specificity = |range: &MediaRange| match (range.kind.as_str(), range.subtype.as_str()) {
            (k, s) if k == kind && s == subtype => Some(2),
            (k, "*") if k == kind => Some(1),
            ("*", "*") => Some(0),
            _ => None,
        };
        let (position, range, specificity) = self
            .ranges
            .iter()
            .enumerate()
            .filter_map(|(i, range)| specificity(range).map(|s| (i, range, s)))
            // The most specific; of equals, the first.
            .max_by_key(|&(i, _, s)| (s, Reverse(i)))?;
        (range.quality > 0).then_some(Rank {
            quality: range.quality,
            position,
            wildcard: specificity < 2,
        })
    }
}

impl MediaRange {
    /// `type/subtype` with parameters; `None` for text that is not one.
    fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split(';');
        let media = parts.next()?.trim().to_ascii_lowercase();
        let (kind, subtype) = media.split_once('/')?;
        let token = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+*".contains(&b))
        };
        if !token(kind) || !token(subtype) || (kind == "*" && subtype != "*") {
            return None;
        }
        let mut quality = 1000;
        for parameter in parts {
            let Some((name, value)) = parameter.split_once('=') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("q") {
                quality = parse_quality(value.trim())?;
            }
        }
        Some(Self {
            kind: kind.to_owned(),
            subtype: subtype.to_owned(),
            quality,
        })
    }
}

/// An HTTP weight (`0`, `0.5`, `1.000`) in thousandths; `None` for
/// anything else.
fn parse_quality(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths: u16 = format!("{fraction:0<3}").parse().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

impl ImageRecord {
    /// The stored object `name` as a download reads it; `None` when the
    /// image holds no such object (its original, or an object one of its
    /// variant entries reads).
    pub fn held_object(&self, name: &ObjectName) -> Option<Held> {
        if name.is_original() {
            return Some(self.original());
        }
        self.variants
            .iter()
            .find(|v| &v.object_name() == name)
            .map(Variant::held)
    }

    /// What a viewer with `accept` gets of the named rendition; `None`
    /// when the image has no such rendition.
    ///
    /// The original is always itself. Of a variant, among the encodings
    /// held, the one the viewer ranks highest (by weight, then its order,
    /// then, between types a wildcard matched, the smaller object). A
    /// viewer that states no preference, or accepts none of them, gets
    /// JPEG, which every viewer decodes (a transparent image's first,
    /// alpha-capable encoding when it has no JPEG). A viewer that accepts
    /// the original's type gets the original instead when it is no larger
    /// than the variant in either dimension and smaller in bytes (through
    /// a wildcard, only a type every browser shows), and only when its
    /// metadata was stripped: a variant never carries what the original
    /// was stored with (a GIF's comment, a TIFF's tags, anything kept by
    /// `--keep-metadata`).
    pub fn negotiate(&self, name: &VariantName, accept: &Accept) -> Option<Held> {
        if name.is_original() {
            return Some(self.original());
        }
        let fallback = self
            .entries(name)
            .find(|v| v.content_type == "image/jpeg")
            .or_else(|| self.entries(name).next())?;
        if accept.is_empty() {
            return Some(fallback.held());
        }
        let chosen = self
            .entries(name)
            .filter_map(|v| accept.rank(&v.content_type).map(|rank| (v, rank)))
            .max_by_key(|(v, rank)| {
                let size = if rank.wildcard { v.size_bytes } else { 0 };
                (rank.quality, Reverse(rank.position), Reverse(size))
            })
            .map_or(fallback, |(v, _)| v);
        let original_shown = accept.rank(&self.content_type).is_some_and(|rank| {
            !rank.wildcard || SHOWN_EVERYWHERE.contains(&self.content_type.as_str())
        });
        if original_shown
            && self.metadata_stripped
            && self.width <= chosen.width
            && self.height <= chosen.height
            && self.size_bytes < chosen.size_bytes
        {
            return Some(self.original());
        }
        Some(chosen.held())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UserId;
    use crate::domain::image::{ObjectName, Timestamp, Variant};

    fn accept(entries: &[&str]) -> Accept {
        Accept::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn entry(content_type: &str, size_bytes: u64, object: &str) -> Variant {
        Variant {
            name: VariantName::parse("small").unwrap(),
            content_type: content_type.into(),
            size_bytes,
            width: 320,
            height: 200,
            object: ObjectName::parse(object),
        }
    }

    /// A 640×400 PNG of 9000 bytes with `variants`.
    fn image(variants: Vec<Variant>) -> ImageRecord {
        let owner = UserId::parse("alice").unwrap();
        ImageRecord {
            size_bytes: 9000,
            width: 640,
            height: 400,
            variants,
            metadata_stripped: true,
            ..ImageRecord::sample(&owner, Timestamp::now().as_micros())
        }
    }

    fn three() -> ImageRecord {
        image(vec![
            entry("image/jpeg", 6000, "small"),
            entry("image/webp", 4000, "small.webp"),
            entry("image/avif", 3000, "small.avif"),
        ])
    }

    fn chosen(record: &ImageRecord, entries: &[&str]) -> String {
        let small = VariantName::parse("small").unwrap();
        record
            .negotiate(&small, &accept(entries))
            .unwrap()
            .content_type
    }

    #[test]
    fn a_viewer_without_preferences_gets_jpeg() {
        assert_eq!(chosen(&three(), &[]), "image/jpeg");
        assert_eq!(chosen(&three(), &["", " , "]), "image/jpeg");
    }

    #[test]
    fn the_highest_weight_wins_then_the_viewers_order() {
        assert_eq!(
            chosen(&three(), &["image/webp;q=0.9, image/avif;q=0.8"]),
            "image/webp"
        );
        assert_eq!(
            chosen(&three(), &["image/webp", "image/avif"]),
            "image/webp"
        );
        assert_eq!(
            chosen(&three(), &["image/avif", "image/webp"]),
            "image/avif"
        );
        assert_eq!(
            chosen(&three(), &["image/jpeg;q=0.5", "image/webp;q=0.6"]),
            "image/webp"
        );
    }

    #[test]
    fn between_types_a_wildcard_matched_the_smaller_object_wins() {
        assert_eq!(chosen(&three(), &["image/*"]), "image/avif");
        assert_eq!(chosen(&three(), &["*/*"]), "image/avif");
        // A named type outranks the wildcard at the same weight only by
        // the viewer's order.
        assert_eq!(chosen(&three(), &["image/jpeg", "image/*"]), "image/jpeg");
    }

    #[test]
    fn q_zero_excludes_a_type_even_under_a_wildcard() {
        assert_eq!(
            chosen(&three(), &["image/*", "image/avif;q=0"]),
            "image/webp"
        );
        assert_eq!(chosen(&three(), &["image/avif;q=0"]), "image/jpeg");
    }

    #[test]
    fn a_viewer_that_accepts_nothing_held_gets_jpeg() {
        assert_eq!(chosen(&three(), &["image/jxl", "text/html"]), "image/jpeg");
        let transparent = image(vec![entry("image/webp", 4000, "small")]);
        assert_eq!(chosen(&transparent, &["image/jxl"]), "image/webp");
    }

    #[test]
    fn malformed_types_and_weights_are_ignored() {
        assert_eq!(
            chosen(
                &three(),
                &[
                    "webp",
                    "image/avif;q=2",
                    "image/avif;q=0.1234",
                    "*/avif",
                    "image/webp"
                ]
            ),
            "image/webp"
        );
        assert_eq!(chosen(&three(), &["IMAGE/WEBP ; Q=1.0"]), "image/webp");
    }

    #[test]
    fn a_smaller_original_of_the_variants_size_is_served_when_accepted() {
        let mut small_png = three();
        (small_png.width, small_png.height, small_png.size_bytes) = (320, 200, 1751);
        let png = |entries: &[&str]| {
            let small = VariantName::parse("small").unwrap();
            small_png.negotiate(&small, &accept(entries)).unwrap()
        };
        assert!(png(&["image/png"]).object.is_original());
        assert!(png(&["image/*"]).object.is_original());
        assert_eq!(
            png(&[]).content_type,
            "image/jpeg",
            "no preference: as before"
        );
        assert_eq!(png(&["image/webp"]).content_type, "image/webp");
        assert_eq!(png(&["image/png;q=0"]).content_type, "image/jpeg");
        // Larger than the variant: never the original.
        assert_eq!(chosen(&three(), &["image/png"]), "image/jpeg");
    }

    #[test]
    fn an_original_stored_with_its_metadata_is_never_sent_for_a_variant() {
        let mut gif = three();
        (gif.content_type, gif.width, gif.height, gif.size_bytes) =
            ("image/gif".into(), 320, 200, 469);
        gif.metadata_stripped = false;
        let small = VariantName::parse("small").unwrap();
        let named = gif.negotiate(&small, &accept(&["image/gif"])).unwrap();
        assert_eq!(named.content_type, "image/jpeg");
        let wildcard = gif.negotiate(&small, &accept(&["image/*"])).unwrap();
        assert!(!wildcard.object.is_original());
        gif.metadata_stripped = true;
        let named = gif.negotiate(&small, &accept(&["image/gif"])).unwrap();
        assert!(named.object.is_original(), "a scrubbed one still is");
    }

    #[test]
    fn an_original_only_named_types_get_is_never_sent_through_a_wildcard() {
        let mut heic = three();
        (heic.content_type, heic.width, heic.height, heic.size_bytes) =
            ("image/heic".into(), 320, 200, 100);
        let small = VariantName::parse("small").unwrap();
        let through_wildcard = heic.negotiate(&small, &accept(&["*/*"])).unwrap();
        assert_eq!(through_wildcard.content_type, "image/avif");
        let named = heic.negotiate(&small, &accept(&["image/heic"])).unwrap();
        assert!(named.object.is_original());
    }

    #[test]
    fn long_lists_and_long_types_are_refused() {
        let many = vec!["image/webp".to_string(); MAX_ACCEPT_TYPES];
        assert!(Accept::parse(&many).is_ok());
        let one_more = [many.join(","), "image/png".into()];
        let error = Accept::parse(&one_more).unwrap_err();
        assert!(error.to_string().contains("32"), "{error}");
        let long = format!("image/webp;x={}", "a".repeat(MAX_ACCEPT_TYPE_BYTES));
        let error = Accept::parse(&[long]).unwrap_err();
        assert!(error.to_string().contains("256"), "{error}");
    }

    #[test]
    fn the_original_is_always_itself() {
        let original = VariantName::original();
        let held = three()
            .negotiate(&original, &accept(&["image/webp"]))
            .unwrap();
        assert!(held.object.is_original());
        assert_eq!(held.content_type, "image/png");
    }
}
