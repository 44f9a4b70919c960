//! Who is calling.
use std::fmt;

use super::DomainError;

/// An authenticated user's id, as the identity provider names it.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    /// Longest accepted id, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Accepts 1 to 128 bytes with no control or invisible formatting
    /// characters and no surrounding white space: ids are stored and
    /// compared verbatim, and shown to other users as an image's owner, so
    /// a right-to-left override or a zero-width space could make one id
    /// look like another.
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        if text.is_empty() {
            return Err(DomainError::invalid("user id is empty"));
        }
        if text.len() > Self::MAX_LEN {
            return Err(DomainError::invalid("user id is longer than 128 bytes"));
        }
        if text.trim() != text || text.chars().any(|c| c.is_control() || is_invisible(c)) {
            return Err(DomainError::invalid(
                "user id has control or invisible formatting characters, or surrounding white space",
            ));
        }
        // One spelling per id: "josé" with a combining accent (NFD) would
        // otherwise be another user than "josé" (NFC) that looks the same.
        if !unicode_normalization::is_nfc(text) {
            return Err(DomainError::invalid(
                "user id is not in Unicode normalization form C",
            ));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Characters that are not seen, or not text: the default-ignorable code
/// points (Unicode's `Default_Ignorable_Code_Point`: bidirectional
/// overrides and isolates, zero-width spaces and joiners, variation
/// selectors, Hangul fillers, tags, the byte order mark), the other format
/// characters, the line and paragraph separators, the blank Braille
/// pattern, private-use characters and noncharacters. Any of them would let
/// one id be shown as another.
fn is_invisible(c: char) -> bool {
    let code = u32::from(c);
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{E000}'..='\u{F8FF}'
            | '\u{FDD0}'..='\u{FDEF}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
            | '\u{F0000}'..
    ) || code & 0xFFFE == 0xFFFE
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_ids_are_accepted() {
        assert_eq!(UserId::parse("alice").unwrap().as_str(), "alice");
        assert!(UserId::parse("auth0|5f7c8ec7c33c6c004bbafe82").is_ok());
    }

    #[test]
    fn empty_padded_control_and_overlong_ids_are_rejected() {
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse(" alice").is_err());
        assert!(UserId::parse("al\nice").is_err());
        assert!(UserId::parse(&"a".repeat(129)).is_err());
    }

    #[test]
    fn ids_that_would_display_as_another_are_rejected() {
        assert!(UserId::parse("alice\u{202E}ecila").is_err());
        assert!(UserId::parse("ali\u{200B}ce").is_err());
        assert!(UserId::parse("\u{FEFF}alice").is_err());
        assert!(UserId::parse("alice\u{2066}").is_err());
        assert!(UserId::parse("alice\u{3164}").is_err(), "a Hangul filler");
        assert!(
            UserId::parse("alice\u{FE0F}").is_err(),
            "a variation selector"
        );
        assert!(
            UserId::parse("a\u{2800}b").is_err(),
            "a blank Braille pattern"
        );
        assert!(
            UserId::parse("a\u{E000}").is_err(),
            "a private-use character"
        );
        assert!(UserId::parse("a\u{FFFF}").is_err(), "a noncharacter");
        assert!(UserId::parse("a\u{10FFFF}").is_err(), "a noncharacter");
        assert!(
            UserId::parse("jose\u{301}").is_err(),
            "NFD: the accent apart"
        );
        assert!(UserId::parse("José").is_ok());
        assert!(
            UserId::parse("नमस्ते").is_ok(),
            "combining marks of a script, in NFC"
        );
        assert!(UserId::parse("山田").is_ok());
    }
}
