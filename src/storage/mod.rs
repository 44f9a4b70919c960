//! Storage adapters: each implements the domain's ports
//! ([`crate::domain::ports`]) for one kind of backend.

pub mod aws;
pub mod contract;
pub mod embedded;
pub mod instrumented;
pub mod memory;
pub mod multipart;
