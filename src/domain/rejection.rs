//! Expected refusals. A `Rejection` is an answer, not a failure: `Err` elsewhere means the
//! database or Redis failed, never that tickets ran out.

use std::fmt;

use super::{HoldStatus, TicketTypeId};

/// Why a request was refused, listed in the order the checks run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The input does not make sense on its own (parsed at the edge, before any data is read).
    Invalid(InvalidInput),
    /// An id names nothing: an event, a ticket type (or one of another event), a hold.
    NotFound { what: &'static str },
    /// The hold is past its `expires_at` (whether or not its expiry has been written yet).
    HoldExpired,
    /// The hold was released or confirmed.
    HoldNotActive { status: HoldStatus },
    /// The customer would have more tickets of this type than `max_per_customer` allows,
    /// counting their active holds and orders.
    LimitExceeded {
        ticket_type_id: TicketTypeId,
        max_per_customer: u32,
        already: u32,
    },
    /// Fewer tickets are available than asked for.
    SoldOut {
        ticket_type_id: TicketTypeId,
        available: u32,
    },
}

impl Rejection {
    /// The machine-readable code of the GraphQL error (`extensions.code`).
    pub const fn code(&self) -> &'static str {
        match self {
            Rejection::Invalid(_) => "INVALID_INPUT",
            Rejection::NotFound { .. } => "NOT_FOUND",
            Rejection::HoldExpired => "HOLD_EXPIRED",
            Rejection::HoldNotActive { .. } => "HOLD_NOT_ACTIVE",
            Rejection::LimitExceeded { .. } => "LIMIT_EXCEEDED",
            Rejection::SoldOut { .. } => "SOLD_OUT",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Invalid(invalid) => invalid.fmt(f),
            Rejection::NotFound { what } => write!(f, "{what} not found"),
            Rejection::HoldExpired => f.write_str("the hold has expired"),
            Rejection::HoldNotActive { status } => {
                write!(
                    f,
                    "the hold is no longer active (it is {})",
                    status.as_str()
                )
            }
            Rejection::LimitExceeded {
                ticket_type_id,
                max_per_customer,
                already,
            } => write!(
                f,
                "at most {max_per_customer} tickets of type {ticket_type_id} per customer \
                 ({already} already held or bought)"
            ),
            Rejection::SoldOut {
                ticket_type_id,
                available,
            } => {
                write!(
                    f,
                    "not enough tickets of type {ticket_type_id}: {available} available"
                )
            }
        }
    }
}

impl From<InvalidInput> for Rejection {
    fn from(invalid: InvalidInput) -> Rejection {
        Rejection::Invalid(invalid)
    }
}

/// An input that fails validation, with a message meant for the developer of the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidInput(String);

impl InvalidInput {
    pub fn new(message: impl Into<String>) -> InvalidInput {
        InvalidInput(message.into())
    }
}

impl fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
