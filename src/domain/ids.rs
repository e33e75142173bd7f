//! Identifiers. Holds, orders, events and ticket types are UUIDs (v4 for holds and orders, so
//! that they cannot be guessed); a customer id is the shop's own opaque string.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

use super::{InvalidInput, Limits, bounded_text};

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn random() -> $name {
                $name(Uuid::new_v4())
            }
        }

        impl FromStr for $name {
            type Err = InvalidInput;

            fn from_str(s: &str) -> Result<$name, InvalidInput> {
                Uuid::parse_str(s.trim())
                    .map($name)
                    .map_err(|_| InvalidInput::new(format!("{} is not a valid {} id", s, $what)))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

uuid_id!(
    /// An event's id.
    EventId, "event"
);
uuid_id!(
    /// A ticket type's id. Ordered, because stores lock ticket types in ascending id order.
    TicketTypeId, "ticket type"
);
uuid_id!(
    /// A hold's id: random (v4), so that knowing one hold tells nothing of another.
    HoldId, "hold"
);
uuid_id!(
    /// An order's id: random (v4).
    OrderId, "order"
);

/// The shop's own id for a buyer: any non-empty string up to `Limits::customer_id_len_max`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CustomerId(String);

impl CustomerId {
    pub fn new(id: String, limits: &Limits) -> Result<CustomerId, InvalidInput> {
        bounded_text("customerId", id, limits.customer_id_len_max).map(CustomerId)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// For values read back from storage, which were validated when written.
    pub fn from_stored(id: String) -> CustomerId {
        CustomerId(id)
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
