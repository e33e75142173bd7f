//! tickethold: temporary ticket holds over GraphQL, with live countdowns.
//!
//! See `ARCHITECTURE.md` for the map of the modules and their invariants.

pub mod app;
pub mod auth;
pub mod bench;
pub mod domain;
pub mod events;
pub mod expiry;
pub mod graphql;
pub mod http;
pub mod metrics;
pub mod rate;
pub mod store;
pub mod supervise;

/// An error and all its causes on one line, for logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
