//! Limits and normalisation of the metadata callers send. Each function
//! either returns the value to store or an `INVALID_ARGUMENT` naming the field.
use std::collections::BTreeMap;

use super::DomainError;

pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_DESCRIPTION_CHARS: usize = 2_200;
pub const MAX_TAGS: usize = 30;
pub const MAX_TAG_CHARS: usize = 64;
pub const MAX_LOCATION_CHARS: usize = 200;
pub const MAX_ATTRIBUTES: usize = 32;
pub const MAX_ATTRIBUTE_BYTES: usize = 1024;
pub const MAX_FILENAME_CHARS: usize = 255;
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;

/// Bidirectional-text controls can make a name display as something else
/// (`gpj.exe` shown as `exe.jpg`): they are never kept in display fields.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn reject_controls(field: &str, value: &str, allow_newlines: bool) -> Result<(), DomainError> {
    let bad = value.chars().any(|c| {
        (c.is_control() && !(allow_newlines && matches!(c, '\n' | '\r' | '\t')))
            || is_bidi_control(c)
    });
    if bad {
        return Err(DomainError::invalid(format!(
            "{field} contains control characters"
        )));
    }
    Ok(())
}

fn limit_chars(field: &str, value: &str, max: usize) -> Result<(), DomainError> {
    if value.chars().count() > max {
        return Err(DomainError::invalid(format!(
            "{field} is longer than {max} characters"
        )));
    }
    Ok(())
}

/// A title: at most 200 characters, no control characters; trimmed.
pub fn title(value: &str) -> Result<String, DomainError> {
    let value = value.trim();
    limit_chars("title", value, MAX_TITLE_CHARS)?;
    reject_controls("title", value, false)?;
    Ok(value.to_owned())
}

/// A description: at most 2 200 characters; line breaks and tabs allowed.
pub fn description(value: &str) -> Result<String, DomainError> {
    let value = value.trim();
    limit_chars("description", value, MAX_DESCRIPTION_CHARS)?;
    reject_controls("description", value, true)?;
    Ok(value.to_owned())
}

/// A location: at most 200 characters, no control characters; trimmed.
pub fn location(value: &str) -> Result<String, DomainError> {
    let value = value.trim();
    limit_chars("location", value, MAX_LOCATION_CHARS)?;
    reject_controls("location", value, false)?;
    Ok(value.to_owned())
}

/// One tag, normalised: trimmed, leading `#`s dropped, lower-cased.
pub fn tag(value: &str) -> Result<String, DomainError> {
    let trimmed = value.trim();
    let normalised = trimmed
        .trim_start_matches(|c: char| c == '#' || c.is_whitespace())
        .trim()
        .to_lowercase();
    if normalised.is_empty() {
        return Err(DomainError::invalid("tags must not be empty"));
    }
    limit_chars("a tag", &normalised, MAX_TAG_CHARS)?;
    reject_controls("a tag", &normalised, false)?;
    Ok(normalised)
}

/// A tag list: at most 30, each normalised by [`tag`], duplicates dropped
/// (first occurrence kept).
pub fn tags(values: &[String]) -> Result<Vec<String>, DomainError> {
    if values.len() > MAX_TAGS {
        return Err(DomainError::invalid(format!(
            "at most {MAX_TAGS} tags are allowed"
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(values.len());
    for value in values {
        let tag = tag(value)?;
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
    Ok(out)
}

/// Attributes: at most 32 entries; keys non-empty; keys and values at most
/// 1 KiB each; keys without control characters.
pub fn attributes(
    values: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, DomainError> {
    if values.len() > MAX_ATTRIBUTES {
        return Err(DomainError::invalid(format!(
            "at most {MAX_ATTRIBUTES} attributes are allowed"
        )));
    }
    for (key, value) in values {
        if key.is_empty() {
            return Err(DomainError::invalid("attribute keys must not be empty"));
        }
        if key.len() > MAX_ATTRIBUTE_BYTES || value.len() > MAX_ATTRIBUTE_BYTES {
            return Err(DomainError::invalid(format!(
                "attribute keys and values are limited to {MAX_ATTRIBUTE_BYTES} bytes"
            )));
        }
        reject_controls("attribute key", key, false)?;
        // Values are shown by terminals and UIs too: an escape sequence or
        // a right-to-left override there rewrites what a person sees.
        reject_controls("attribute value", value, false)?;
    }
    Ok(values.clone())
}

/// The display name of an uploaded file: the last path component, without
/// control or bidi characters, at most 255 characters; `image` when nothing
/// is left. It is never used to name anything stored.
pub fn filename(value: &str) -> String {
    let last = value.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control() && !is_bidi_control(*c))
        .take(MAX_FILENAME_CHARS)
        .collect();
    let cleaned = cleaned
        .trim()
        .trim_start_matches(|c: char| c == '.' || c.is_whitespace());
    if cleaned.is_empty() {
        "image".to_owned()
    } else {
        cleaned.to_owned()
    }
}

/// An idempotency key: 1 to 128 printable bytes.
pub fn idempotency_key(value: &str) -> Result<String, DomainError> {
    if value.is_empty() || value.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(DomainError::invalid(
            "idempotency_key must have 1 to 128 bytes",
        ));
    }
    reject_controls("idempotency_key", value, false)?;
    Ok(value.to_owned())
}

/// A whole-object SHA-256 given as hex: 64 hex digits, either case.
pub fn sha256_hex(value: &str) -> Result<String, DomainError> {
    if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DomainError::invalid("sha256 must be 64 hexadecimal digits"));
    }
    Ok(value.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_trimmed_lowercased_and_lose_a_leading_hash() {
        assert_eq!(tag("  #Sunset ").unwrap(), "sunset");
        assert_eq!(tag("##Sunset").unwrap(), "sunset");
        assert!(tag("##").is_err(), "nothing but hashes is an empty tag");
        assert!(tag("# #").is_err());
        assert_eq!(tag("ÉTÉ").unwrap(), "été");
    }

    #[test]
    fn duplicate_tags_collapse_to_the_first() {
        let input = vec!["Beach".to_owned(), "#beach".to_owned(), "sea".to_owned()];
        assert_eq!(tags(&input).unwrap(), vec!["beach", "sea"]);
    }

    #[test]
    fn empty_and_overlong_tags_are_rejected() {
        assert!(tag(" # ").is_err());
        assert!(tag(&"x".repeat(65)).is_err());
        assert!(tag(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn more_than_thirty_tags_are_rejected() {
        let many: Vec<String> = (0..31).map(|i| format!("t{i}")).collect();
        assert!(tags(&many).is_err());
        assert!(tags(&many[..30]).is_ok());
    }

    #[test]
    fn titles_count_characters_not_bytes() {
        assert!(title(&"é".repeat(200)).is_ok());
        assert!(title(&"é".repeat(201)).is_err());
    }

    #[test]
    fn control_and_bidi_characters_are_rejected_in_titles() {
        assert!(title("a\u{0007}b").is_err());
        assert!(title("photo\u{202E}gpj.exe").is_err());
        assert!(
            location("Paris\n").is_ok(),
            "trailing white space is trimmed"
        );
        assert!(location("Pa\nris").is_err());
    }

    #[test]
    fn descriptions_may_span_lines() {
        assert_eq!(
            description("line one\nline two").unwrap(),
            "line one\nline two"
        );
        assert!(description(&"d".repeat(2_201)).is_err());
    }

    #[test]
    fn attributes_are_limited_in_count_and_size() {
        let mut map = BTreeMap::new();
        map.insert("camera".to_owned(), "x100v".to_owned());
        assert!(attributes(&map).is_ok());
        map.insert(String::new(), "v".to_owned());
        assert!(attributes(&map).is_err());
        let big: BTreeMap<_, _> = [("k".to_owned(), "v".repeat(1025))].into();
        assert!(attributes(&big).is_err());
        let many: BTreeMap<_, _> = (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(attributes(&many).is_err());
    }

    #[test]
    fn attribute_values_with_terminal_escapes_or_bidi_overrides_are_refused() {
        for value in ["\x1b[31mred", "bell\x07", "abc\u{202E}fed", "tab\there"] {
            let map: BTreeMap<_, _> = [("k".to_owned(), value.to_owned())].into();
            assert!(attributes(&map).is_err(), "{value:?} was accepted");
        }
        let fine: BTreeMap<_, _> = [("k".to_owned(), "Ünïcödé 😀 ok".to_owned())].into();
        assert!(attributes(&fine).is_ok());
    }

    #[test]
    fn filenames_lose_paths_controls_and_leading_dots() {
        assert_eq!(filename("../../etc/passwd"), "passwd");
        assert_eq!(filename("C:\\Users\\me\\cat.jpg"), "cat.jpg");
        assert_eq!(filename("a\u{202E}gpj.exe"), "agpj.exe");
        assert_eq!(filename(".hidden.png"), "hidden.png");
        assert_eq!(filename(". .x"), "x");
        assert_eq!(filename("/"), "image");
        assert_eq!(filename(&"n".repeat(300)).chars().count(), 255);
    }

    #[test]
    fn sha256_must_be_64_hex_digits() {
        let hex = "A".repeat(64);
        assert_eq!(sha256_hex(&hex).unwrap(), "a".repeat(64));
        assert!(sha256_hex("abc").is_err());
        assert!(sha256_hex(&"g".repeat(64)).is_err());
    }
}
