//! The one test binary of tickethold: black-box tests over HTTP and WebSocket, the store
//! conformance suite, the seeded model test and the crash test.

mod auth;
mod bad_input;
mod bench;
mod browser;
mod conformance;
mod contention;
mod crash;
mod journal;
mod lifecycle;
mod limits;
mod model;
mod redis_flow;
mod redis_sales;
mod schema;
mod startup;
mod support;
