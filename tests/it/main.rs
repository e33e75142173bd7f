//! The one test binary of tickethold: black-box tests over HTTP and WebSocket, the store
//! conformance suite, the seeded model test and the crash test.

mod bad_input;
mod bench;
mod conformance;
mod contention;
mod crash;
mod journal;
mod lifecycle;
mod model;
mod redis_flow;
mod schema;
mod support;
