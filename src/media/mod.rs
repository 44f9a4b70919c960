//! Bytes to facts: what an upload's bytes are (sniffing, dimensions,
//! checksums), what they carry that must go (metadata scrubbing per format),
//! and what is made from them (variants and the placeholder). Pure functions
//! and streaming transforms that know nothing of users, records or stores;
//! the domain's upload pipeline drives them.

pub mod content;
mod error;
pub mod gif;
pub mod limits;
pub mod pdq;
pub mod scrub;
pub mod variants;

pub use error::MediaError;
