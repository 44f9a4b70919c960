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

    /// Accepts 1 to 128 bytes with no control characters and no surrounding
    /// white space: ids are stored and compared verbatim.
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        if text.is_empty() {
            return Err(DomainError::invalid("user id is empty"));
        }
        if text.len() > Self::MAX_LEN {
            return Err(DomainError::invalid("user id is longer than 128 bytes"));
        }
        if text.trim() != text || text.chars().any(char::is_control) {
            return Err(DomainError::invalid(
                "user id has control characters or surrounding white space",
            ));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
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
}
