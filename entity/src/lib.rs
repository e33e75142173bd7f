//! SeaORM entities of tickethold, one module per table (see `migration` for the schema and its
//! constraints). Instants are `i64` milliseconds since the Unix epoch.

pub mod event;
pub mod hold;
pub mod hold_item;
pub mod order;
pub mod order_item;
pub mod ticket_type;
