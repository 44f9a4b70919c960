//! Storage adapters: each implements the domain's ports
//! ([`crate::domain::ports`]) for one kind of backend.

pub mod aws;
#[cfg(any(test, feature = "testkit"))]
pub mod contract;
pub mod embedded;
pub mod instrumented;
#[cfg(any(test, feature = "testkit"))]
pub mod memory;
pub mod multipart;
