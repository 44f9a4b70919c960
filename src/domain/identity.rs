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
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Characters that change how text around them is shown without being seen
/// themselves: the format characters (Unicode category Cf: bidirectional
/// overrides and isolates, zero-width spaces and joiners, the byte order
/// mark, tags) and the line and paragraph separators.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
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
        assert!(UserId::parse("José").is_ok());
        assert!(UserId::parse("山田").is_ok());
    }
}
