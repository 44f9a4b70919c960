//! The rules of the service, independent of transport and storage: what an
//! image is, what a valid request is, how an upload is checked as its bytes
//! arrive, and the use cases the transports call.
//!
//! Its modules import only the layers below their own (`tests/layering.rs`
//! fails on a loop):
//! 1. What the ports speak: ids and records ([`identity`], [`image`],
//!    [`session`], a user's [`usage`], the [`event`]s of their changes, the
//!    moderation [`audit`] trail, the PDQ hashes of [`similar`] images),
//!    [`error`]s, [`validation`], [`listing`] filters, the
//!    [`signing`] of [`page_token`]s, and what a viewer [`accept`]s.
//! 2. The [`ports`]: the storage traits.
//! 3. What the use cases share: their [`limits`], the [`chunks`] bytes are
//!    gathered into, the memory [`budget`] and its [`admission`] queue, the
//!    per-user [`quota`], the one path of an image's [`state_change`]s and
//!    the content [`scan`] hook and the [`block`] lists.
//! 4. The use cases: [`upload`] (its sessions in [`upload::resumable`]),
//!    then [`images`], then [`moderation`], [`repair`] and the [`erasure`]
//!    of a user's data; [`watch`] (the event stream) beside them.

pub mod accept;
pub mod audit;
pub mod error;
pub mod event;
pub mod identity;
pub mod image;
pub mod listing;
pub mod page_token;
pub mod session;
pub mod signing;
pub mod similar;
pub mod usage;
pub mod validation;

pub mod ports;

pub mod admission;
pub mod block;
pub mod budget;
pub mod chunks;
pub mod limits;
pub mod quota;
pub mod scan;
pub mod state_change;

pub mod erasure;
pub mod images;
pub mod moderation;
pub mod repair;
pub mod upload;
pub mod watch;

pub use error::DomainError;
pub use identity::UserId;
pub use image::{ImageId, ImageRecord, VariantName};
pub use images::Images;
pub use limits::Limits;
