//! What a listing asks for.
use super::image::Timestamp;
use super::{DomainError, UserId, validation};

pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 1000;

/// Filters of a listing, normalised; every one optional, all combined.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ListFilter {
    pub owner: Option<UserId>,
    /// Normalised like stored tags.
    pub tag: Option<String>,
    pub location: Option<String>,
    /// Canonical media type.
    pub content_type: Option<String>,
    /// Inclusive.
    pub created_after: Option<Timestamp>,
    /// Exclusive.
    pub created_before: Option<Timestamp>,
}

/// A listing request as a caller sends it; empty strings mean "no filter".
#[derive(Clone, Debug, Default)]
pub struct ListRequest {
    pub owner: String,
    pub tag: String,
    pub location: String,
    pub content_type: String,
    pub created_after: Option<Timestamp>,
    pub created_before: Option<Timestamp>,
    pub page_size: i32,
    pub page_token: String,
}

impl ListFilter {
    pub fn parse(request: &ListRequest) -> Result<Self, DomainError> {
        let non_empty = |s: &str| (!s.trim().is_empty()).then(|| s.to_owned());
        let filter = Self {
            owner: non_empty(&request.owner)
                .map(|o| UserId::parse(&o))
                .transpose()?,
            tag: non_empty(&request.tag)
                .map(|t| validation::tag(&t))
                .transpose()?,
            location: non_empty(&request.location)
                .map(|l| validation::location(&l))
                .transpose()?,
            content_type: non_empty(&request.content_type).map(|t| t.trim().to_ascii_lowercase()),
            created_after: request.created_after,
            created_before: request.created_before,
        };
        if let (Some(after), Some(before)) = (filter.created_after, filter.created_before)
            && after >= before
        {
            return Err(DomainError::invalid(
                "created_after must be before created_before",
            ));
        }
        Ok(filter)
    }

    /// A stable encoding of the filter, which page tokens are bound to.
    pub fn fingerprint(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Whether `record` passes every filter. Stores that serve part of a
    /// filter from an index check the rest with this.
    pub fn matches(&self, record: &super::ImageRecord) -> bool {
        self.owner.as_ref().is_none_or(|o| *o == record.owner)
            && self.tag.as_ref().is_none_or(|t| record.tags.contains(t))
            && self.location.as_ref().is_none_or(|l| *l == record.location)
            && self
                .content_type
                .as_ref()
                .is_none_or(|c| *c == record.content_type)
            && self.created_after.is_none_or(|a| record.create_time >= a)
            && self.created_before.is_none_or(|b| record.create_time < b)
    }
}

/// The page size to use: 0 means the default; larger than the maximum is
/// reduced to it; negative is an error.
pub fn page_size(requested: i32) -> Result<usize, DomainError> {
    match requested {
        n if n < 0 => Err(DomainError::invalid("page_size must not be negative")),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok((n as usize).min(MAX_PAGE_SIZE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(page_size(0).unwrap(), 50);
        assert_eq!(page_size(10).unwrap(), 10);
        assert_eq!(page_size(5000).unwrap(), 1000);
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn filters_are_normalised_like_stored_values() {
        let request = ListRequest {
            tag: " #Beach".into(),
            content_type: "IMAGE/PNG".into(),
            ..ListRequest::default()
        };
        let filter = ListFilter::parse(&request).unwrap();
        assert_eq!(filter.tag.as_deref(), Some("beach"));
        assert_eq!(filter.content_type.as_deref(), Some("image/png"));
        assert_eq!(filter.owner, None);
    }

    #[test]
    fn an_empty_time_range_is_rejected() {
        let at = Timestamp::from_micros(1_000);
        let request = ListRequest {
            created_after: Some(at),
            created_before: Some(at),
            ..ListRequest::default()
        };
        assert!(ListFilter::parse(&request).is_err());
    }

    #[test]
    fn different_filters_have_different_fingerprints() {
        let a = ListFilter {
            tag: Some("a".into()),
            ..ListFilter::default()
        };
        let b = ListFilter {
            location: Some("a".into()),
            ..ListFilter::default()
        };
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
