//! tickethold: temporary ticket holds over GraphQL, with live countdowns.
//!
//! See `ARCHITECTURE.md` for the map of the modules and their invariants.

pub mod domain;
pub mod events;
pub mod expiry;
pub mod store;
