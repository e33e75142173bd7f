//! The hold rules: ids, quantities, statuses, rejections and limits.
//!
//! Nothing here does I/O or reads the clock. Functions that need the time take `now` as a
//! parameter, so that the stores, the seeded model test and the expiry machinery all move time by
//! hand. Inputs from the wire become these types at the edge (`TryFrom`), before anything runs.

mod ids;
mod limits;
mod rejection;
mod time;

pub use ids::{CustomerId, EventId, HoldId, OrderId, TicketTypeId};
pub use limits::Limits;
pub use rejection::{InvalidInput, Rejection};
pub use time::{Millis, seconds_left};

use std::collections::BTreeMap;

/// Where a hold is in its life. A hold is born `Active` and ends exactly once, in one of the
/// three other states; none of them is ever left again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HoldStatus {
    Active,
    Released,
    Expired,
    Confirmed,
}

impl HoldStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Active => "ACTIVE",
            HoldStatus::Released => "RELEASED",
            HoldStatus::Expired => "EXPIRED",
            HoldStatus::Confirmed => "CONFIRMED",
        }
    }

    pub fn parse(s: &str) -> Option<HoldStatus> {
        Some(match s {
            "ACTIVE" => HoldStatus::Active,
            "RELEASED" => HoldStatus::Released,
            "EXPIRED" => HoldStatus::Expired,
            "CONFIRMED" => HoldStatus::Confirmed,
            _ => return None,
        })
    }

    pub const fn is_terminal(self) -> bool {
        !matches!(self, HoldStatus::Active)
    }
}

/// A number of tickets of one type, always at least 1 and at most `Limits::quantity_max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(u32);

impl Quantity {
    pub fn new(n: i64, limits: &Limits) -> Result<Quantity, InvalidInput> {
        if n < 1 || n > i64::from(limits.quantity_max) {
            return Err(InvalidInput::new(format!(
                "quantity must be between 1 and {}, got {n}",
                limits.quantity_max
            )));
        }
        Ok(Quantity(n as u32))
    }

    pub const fn get(self) -> u32 {
        self.0
    }
}

/// A hold's time to live, in whole seconds, between 1 and `Limits::hold_ttl_secs_max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TtlSeconds(u32);

impl TtlSeconds {
    /// Parses an optional TTL; `None` means the configured default.
    pub fn new(secs: Option<i64>, limits: &Limits) -> Result<TtlSeconds, InvalidInput> {
        let secs = secs.unwrap_or(i64::from(limits.hold_ttl_secs_default));
        if secs < 1 || secs > i64::from(limits.hold_ttl_secs_max) {
            return Err(InvalidInput::new(format!(
                "ttlSeconds must be between 1 and {}, got {secs}",
                limits.hold_ttl_secs_max
            )));
        }
        Ok(TtlSeconds(secs as u32))
    }

    pub const fn get(self) -> u32 {
        self.0
    }

    pub const fn as_millis(self) -> Millis {
        Millis(self.0 as i64 * 1000)
    }
}

/// A request for tickets of several types, validated and merged: each ticket type appears once,
/// in ascending id order, which is also the order in which stores lock ticket types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldRequest {
    pub event_id: EventId,
    pub customer_id: CustomerId,
    pub items: BTreeMap<TicketTypeId, Quantity>,
    pub ttl: TtlSeconds,
    pub idempotency_key: Option<String>,
}

impl HoldRequest {
    /// Validates the parts of a hold request that need no data: item count, duplicate ticket
    /// types (merged by summing), quantities, the TTL and the idempotency key.
    pub fn new(
        event_id: EventId,
        customer_id: CustomerId,
        items: impl IntoIterator<Item = (TicketTypeId, i64)>,
        ttl_secs: Option<i64>,
        idempotency_key: Option<String>,
        limits: &Limits,
    ) -> Result<HoldRequest, InvalidInput> {
        let mut merged: BTreeMap<TicketTypeId, i64> = BTreeMap::new();
        let mut count = 0usize;
        for (ticket_type_id, quantity) in items {
            count += 1;
            if quantity < 1 {
                // Checked before merging so that `[{q: 3}, {q: -1}]` is not read as 2.
                Quantity::new(quantity, limits)?;
            }
            let total = merged.entry(ticket_type_id).or_insert(0);
            *total = total.saturating_add(quantity);
        }
        if count == 0 {
            return Err(InvalidInput::new("a hold needs at least one item"));
        }
        if count > limits.items_per_hold_max as usize {
            return Err(InvalidInput::new(format!(
                "a hold has at most {} items, got {count}",
                limits.items_per_hold_max
            )));
        }
        let items = merged
            .into_iter()
            .map(|(id, q)| Ok((id, Quantity::new(q, limits)?)))
            .collect::<Result<_, InvalidInput>>()?;
        let ttl = TtlSeconds::new(ttl_secs, limits)?;
        let idempotency_key = idempotency_key
            .map(|key| bounded_text("idempotencyKey", key, limits.idempotency_key_len_max))
            .transpose()?;
        Ok(HoldRequest {
            event_id,
            customer_id,
            items,
            ttl,
            idempotency_key,
        })
    }
}

impl HoldRequest {
    /// The items as a hold keeps them.
    pub fn hold_items(&self) -> Vec<HoldItem> {
        self.items
            .iter()
            .map(|(id, quantity)| HoldItem {
                ticket_type_id: *id,
                quantity: quantity.get(),
            })
            .collect()
    }

    /// The hold this request makes at `now`, with a new random id.
    pub fn hold_at(&self, now: Millis) -> Hold {
        Hold {
            id: HoldId::random(),
            event_id: self.event_id,
            customer_id: self.customer_id.clone(),
            status: HoldStatus::Active,
            items: self.hold_items(),
            created_at: now,
            expires_at: now + self.ttl.as_millis(),
            ended_at: None,
            idempotency_key: self.idempotency_key.clone(),
        }
    }

    /// Whether `hold` is what this request asks for (the test of an idempotent retry).
    pub fn same_as(&self, hold: &Hold) -> bool {
        hold.event_id == self.event_id
            && hold.customer_id == self.customer_id
            && hold.items.len() == self.items.len()
            && hold.items.iter().all(|item| {
                self.items.get(&item.ticket_type_id).map(|q| q.get()) == Some(item.quantity)
            })
    }

    /// The answer to a retry that found `hold` under this request's idempotency key.
    pub fn retry_of(&self, hold: Hold) -> Result<Hold, Rejection> {
        if self.same_as(&hold) {
            Ok(hold)
        } else {
            Err(Rejection::Invalid(InvalidInput::new(
                "idempotencyKey was already used for a different hold",
            )))
        }
    }
}

/// One line of a hold: how many tickets of which type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldItem {
    pub ticket_type_id: TicketTypeId,
    pub quantity: u32,
}

/// A hold as stored, with its items in ascending ticket type order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub id: HoldId,
    pub event_id: EventId,
    pub customer_id: CustomerId,
    pub status: HoldStatus,
    pub items: Vec<HoldItem>,
    pub created_at: Millis,
    pub expires_at: Millis,
    /// When the hold left `Active`; for an expired hold, when it was actually expired, which is
    /// never before `expires_at`.
    pub ended_at: Option<Millis>,
    pub idempotency_key: Option<String>,
}

impl Hold {
    /// The status a reader should see at `now`: an `Active` hold past its `expires_at` is
    /// already `Expired` for every purpose, even before its expiry has been written.
    pub fn status_at(&self, now: Millis) -> HoldStatus {
        match self.status {
            HoldStatus::Active if now >= self.expires_at => HoldStatus::Expired,
            status => status,
        }
    }

    /// Whole seconds left at `now`, rounded down; 0 once the hold is not active.
    pub fn seconds_left(&self, now: Millis) -> u64 {
        match self.status_at(now) {
            HoldStatus::Active => seconds_left(now, self.expires_at),
            _ => 0,
        }
    }

    /// Why this hold cannot be extended, released or checked out at `now`, if it cannot.
    pub fn check_active(&self, now: Millis) -> Result<(), Rejection> {
        match self.status_at(now) {
            HoldStatus::Active => Ok(()),
            HoldStatus::Expired => Err(Rejection::HoldExpired),
            HoldStatus::Released | HoldStatus::Confirmed => Err(Rejection::HoldNotActive {
                status: self.status,
            }),
        }
    }

    /// The new `expires_at` of an extension by `ttl` at `now`: `now + ttl`, but never past the
    /// hold's maximum lifetime, counted from its creation.
    pub fn extended_expiry(&self, now: Millis, ttl: TtlSeconds, limits: &Limits) -> Millis {
        let cap = self.created_at + Millis::from_secs(limits.hold_lifetime_secs_max);
        (now + ttl.as_millis()).min(cap)
    }
}

/// A confirmed purchase: the order a checkout made of a hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    pub id: OrderId,
    pub hold_id: HoldId,
    pub customer_id: CustomerId,
    pub payment_reference: String,
    pub items: Vec<OrderItem>,
    pub total_cents: i64,
    pub created_at: Millis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrderItem {
    pub ticket_type_id: TicketTypeId,
    pub quantity: u32,
    pub unit_price_cents: i64,
}

/// A checkout request, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckoutRequest {
    pub hold_id: HoldId,
    pub payment_reference: String,
    pub idempotency_key: Option<String>,
}

impl CheckoutRequest {
    pub fn new(
        hold_id: HoldId,
        payment_reference: String,
        idempotency_key: Option<String>,
        limits: &Limits,
    ) -> Result<CheckoutRequest, InvalidInput> {
        let payment_reference =
            bounded_text("paymentReference", payment_reference, limits.text_len_max)?;
        let idempotency_key = idempotency_key
            .map(|key| bounded_text("idempotencyKey", key, limits.idempotency_key_len_max))
            .transpose()?;
        Ok(CheckoutRequest {
            hold_id,
            payment_reference,
            idempotency_key,
        })
    }
}

/// The stock of one ticket type as buyers see it at some instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Availability {
    pub ticket_type_id: TicketTypeId,
    pub event_id: EventId,
    pub capacity: u32,
    pub sold: u32,
    /// Tickets in active holds.
    pub held: u32,
    /// Raised by every change of this ticket type's stock: of two snapshots, the one with the
    /// higher version is the newer, whatever order they arrive in.
    pub version: i64,
}

impl Availability {
    pub fn available(&self) -> u32 {
        self.capacity
            .saturating_sub(self.sold)
            .saturating_sub(self.held)
    }
}

/// An event (a concert, a match) whose tickets are on sale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: EventId,
    pub name: String,
    pub created_at: Millis,
}

/// A kind of ticket of an event, with its price and how many exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketType {
    pub id: TicketTypeId,
    pub event_id: EventId,
    pub name: String,
    pub price_cents: i64,
    pub capacity: u32,
    /// Tickets one customer may have at once (in active holds plus orders); `None` for no limit.
    pub max_per_customer: Option<u32>,
    pub created_at: Millis,
}

/// A new ticket type, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTicketType {
    pub event_id: EventId,
    pub name: String,
    pub price_cents: i64,
    pub capacity: u32,
    pub max_per_customer: Option<u32>,
}

impl NewTicketType {
    pub fn new(
        event_id: EventId,
        name: String,
        price_cents: i64,
        capacity: i64,
        max_per_customer: Option<i64>,
        limits: &Limits,
    ) -> Result<NewTicketType, InvalidInput> {
        let name = bounded_text("name", name, limits.text_len_max)?;
        if !(0..=limits.price_cents_max).contains(&price_cents) {
            return Err(InvalidInput::new(format!(
                "priceCents must be between 0 and {}, got {price_cents}",
                limits.price_cents_max
            )));
        }
        if !(0..=i64::from(limits.capacity_max)).contains(&capacity) {
            return Err(InvalidInput::new(format!(
                "capacity must be between 0 and {}, got {capacity}",
                limits.capacity_max
            )));
        }
        let max_per_customer = match max_per_customer {
            None => None,
            Some(n) if (1..=i64::from(limits.capacity_max)).contains(&n) => Some(n as u32),
            Some(n) => {
                return Err(InvalidInput::new(format!(
                    "maxPerCustomer must be between 1 and {}, got {n}",
                    limits.capacity_max
                )));
            }
        };
        Ok(NewTicketType {
            event_id,
            name,
            price_cents,
            capacity: capacity as u32,
            max_per_customer,
        })
    }
}

/// Checks a free-text input: trimmed, not empty, at most `max` bytes.
pub fn bounded_text(field: &str, text: String, max: u32) -> Result<String, InvalidInput> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(InvalidInput::new(format!("{field} must not be empty")));
    }
    if trimmed.len() > max as usize {
        return Err(InvalidInput::new(format!(
            "{field} is longer than {max} bytes"
        )));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests;
