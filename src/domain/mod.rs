//! The rules of the service, independent of transport and storage: what an
//! image is, what a valid request is, how an upload is checked as its bytes
//! arrive, and the use cases the transports call.

pub mod admission;
pub mod budget;
pub mod chunks;
pub mod error;
pub mod identity;
pub mod image;
pub mod images;
pub mod limits;
pub mod listing;
pub mod page_token;
pub mod ports;
pub mod repair;
pub mod session;
pub mod signing;
pub mod upload;
pub mod validation;

pub use error::DomainError;
pub use identity::UserId;
pub use image::{ImageId, ImageRecord, VariantName};
pub use images::Images;
pub use limits::Limits;
