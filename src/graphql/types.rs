//! The GraphQL types: thin views over the domain values, named as the API contract fixes.

use async_graphql::{
    Context, Enum, ID, InputObject, InputValueError, InputValueResult, Object, Scalar, ScalarType,
    SimpleObject, Value,
};

use super::Services;
use super::error::ApiError;
use crate::domain::{self, Millis};

/// An instant, written as RFC 3339 in UTC with milliseconds (`2026-11-26T11:04:30.123Z`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime(pub Millis);

#[Scalar(name = "DateTime")]
impl ScalarType for DateTime {
    fn parse(value: Value) -> InputValueResult<DateTime> {
        match &value {
            Value::String(text) => chrono::DateTime::parse_from_rfc3339(text)
                .map(|t| DateTime(Millis(t.timestamp_millis())))
                .map_err(|_| InputValueError::custom("expected an RFC 3339 date and time")),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(
            self.0
                .to_chrono()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        )
    }
}

/// Where a hold is in its life: born ACTIVE, it ends exactly once in one of the others.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(name = "HoldStatus")]
pub enum HoldStatus {
    Active,
    Released,
    Expired,
    Confirmed,
}

impl From<domain::HoldStatus> for HoldStatus {
    fn from(status: domain::HoldStatus) -> HoldStatus {
        match status {
            domain::HoldStatus::Active => HoldStatus::Active,
            domain::HoldStatus::Released => HoldStatus::Released,
            domain::HoldStatus::Expired => HoldStatus::Expired,
            domain::HoldStatus::Confirmed => HoldStatus::Confirmed,
        }
    }
}

pub struct Event(pub domain::Event);

#[Object]
impl Event {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn name(&self) -> &str {
        &self.0.name
    }

    async fn created_at(&self) -> DateTime {
        DateTime(self.0.created_at)
    }

    /// The ticket types of this event, oldest first.
    async fn ticket_types(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<TicketType>> {
        let services = ctx.data_unchecked::<Services>();
        let types = services
            .store
            .ticket_types(self.0.id)
            .await
            .map_err(ApiError::from)?;
        Ok(types.into_iter().map(TicketType).collect())
    }
}

pub struct TicketType(pub domain::TicketType);

#[Object]
impl TicketType {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn event_id(&self) -> ID {
        ID(self.0.event_id.to_string())
    }

    async fn name(&self) -> &str {
        &self.0.name
    }

    async fn price_cents(&self) -> i64 {
        self.0.price_cents
    }

    async fn capacity(&self) -> u32 {
        self.0.capacity
    }

    /// Tickets one customer may have at once, in active holds and orders; null for no limit.
    async fn max_per_customer(&self) -> Option<u32> {
        self.0.max_per_customer
    }

    async fn created_at(&self) -> DateTime {
        DateTime(self.0.created_at)
    }

    /// The stock of this ticket type now.
    async fn availability(&self, ctx: &Context<'_>) -> async_graphql::Result<Availability> {
        let services = ctx.data_unchecked::<Services>();
        let found = services.store.availability(self.0.id, Millis::now()).await;
        match found.map_err(ApiError::from)? {
            Some(availability) => Ok(Availability::from(availability)),
            None => Err(ApiError::from(domain::Rejection::NotFound {
                what: "ticket type",
            })
            .into()),
        }
    }
}

/// The stock of a ticket type: `available = capacity - sold - held`. Holds past their
/// `expiresAt` are never counted as held.
#[derive(SimpleObject, Clone, Debug)]
pub struct Availability {
    pub ticket_type_id: ID,
    pub event_id: ID,
    pub capacity: u32,
    pub sold: u32,
    pub held: u32,
    pub available: u32,
}

impl From<domain::Availability> for Availability {
    fn from(a: domain::Availability) -> Availability {
        Availability {
            ticket_type_id: ID(a.ticket_type_id.to_string()),
            event_id: ID(a.event_id.to_string()),
            capacity: a.capacity,
            sold: a.sold,
            held: a.held,
            available: a.available(),
        }
    }
}

#[derive(SimpleObject, Clone, Debug)]
pub struct HoldItem {
    pub ticket_type_id: ID,
    pub quantity: u32,
}

pub fn hold_items(items: &[domain::HoldItem]) -> Vec<HoldItem> {
    items
        .iter()
        .map(|item| HoldItem {
            ticket_type_id: ID(item.ticket_type_id.to_string()),
            quantity: item.quantity,
        })
        .collect()
}

pub struct Hold(pub domain::Hold);

#[Object]
impl Hold {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn event_id(&self) -> ID {
        ID(self.0.event_id.to_string())
    }

    async fn customer_id(&self) -> ID {
        ID(self.0.customer_id.to_string())
    }

    async fn status(&self) -> HoldStatus {
        self.0.status.into()
    }

    async fn items(&self) -> Vec<HoldItem> {
        hold_items(&self.0.items)
    }

    async fn created_at(&self) -> DateTime {
        DateTime(self.0.created_at)
    }

    /// When the hold runs out, unless it is extended, released or checked out first.
    async fn expires_at(&self) -> DateTime {
        DateTime(self.0.expires_at)
    }

    /// When the hold left ACTIVE; null while it is active.
    async fn ended_at(&self) -> Option<DateTime> {
        self.0.ended_at.map(DateTime)
    }

    /// Whole seconds until `expiresAt`, rounded down; 0 once the hold is not ACTIVE.
    async fn seconds_left(&self) -> u64 {
        self.0.seconds_left(Millis::now())
    }

    /// The order this hold became, once CONFIRMED.
    async fn order(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Order>> {
        if self.0.status != domain::HoldStatus::Confirmed {
            return Ok(None);
        }
        let services = ctx.data_unchecked::<Services>();
        let order = services
            .store
            .order_of_hold(self.0.id)
            .await
            .map_err(ApiError::from)?;
        Ok(order.map(Order))
    }
}

#[derive(SimpleObject, Clone, Debug)]
pub struct OrderItem {
    pub ticket_type_id: ID,
    pub quantity: u32,
    /// The ticket type's price when the order was made.
    pub unit_price_cents: i64,
}

pub struct Order(pub domain::Order);

#[Object]
impl Order {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    async fn hold_id(&self) -> ID {
        ID(self.0.hold_id.to_string())
    }

    async fn customer_id(&self) -> ID {
        ID(self.0.customer_id.to_string())
    }

    async fn payment_reference(&self) -> &str {
        &self.0.payment_reference
    }

    async fn items(&self) -> Vec<OrderItem> {
        self.0
            .items
            .iter()
            .map(|item| OrderItem {
                ticket_type_id: ID(item.ticket_type_id.to_string()),
                quantity: item.quantity,
                unit_price_cents: item.unit_price_cents,
            })
            .collect()
    }

    async fn total_cents(&self) -> i64 {
        self.0.total_cents
    }

    async fn created_at(&self) -> DateTime {
        DateTime(self.0.created_at)
    }
}

/// One tick of `holdCountdown`.
#[derive(SimpleObject, Clone, Debug)]
pub struct HoldCountdown {
    pub hold_id: ID,
    pub status: HoldStatus,
    /// Whole seconds until `expiresAt`, rounded down; 0 once the hold is not ACTIVE.
    pub seconds_left: u64,
    pub expires_at: DateTime,
}

impl HoldCountdown {
    pub fn of(hold: &domain::Hold, now: Millis) -> HoldCountdown {
        HoldCountdown {
            hold_id: ID(hold.id.to_string()),
            status: hold.status.into(),
            seconds_left: hold.seconds_left(now),
            expires_at: DateTime(hold.expires_at),
        }
    }
}

/// A hold that expired, pushed by `holdExpired`.
#[derive(SimpleObject, Clone, Debug)]
pub struct HoldExpired {
    pub hold_id: ID,
    pub event_id: ID,
    pub customer_id: ID,
    /// When the hold was actually expired (its stock back on sale); never before `expiresAt`.
    pub expired_at: DateTime,
    pub expires_at: DateTime,
    pub items: Vec<HoldItem>,
}

impl HoldExpired {
    pub fn of(hold: &domain::Hold) -> HoldExpired {
        HoldExpired {
            hold_id: ID(hold.id.to_string()),
            event_id: ID(hold.event_id.to_string()),
            customer_id: ID(hold.customer_id.to_string()),
            expired_at: DateTime(hold.ended_at.unwrap_or(hold.expires_at)),
            expires_at: DateTime(hold.expires_at),
            items: hold_items(&hold.items),
        }
    }
}

#[derive(InputObject)]
pub struct CreateEventInput {
    pub name: String,
}

#[derive(InputObject)]
pub struct CreateTicketTypeInput {
    pub event_id: ID,
    pub name: String,
    pub price_cents: i64,
    pub capacity: i64,
    /// Tickets one customer may have at once (active holds plus orders); omit for no limit.
    pub max_per_customer: Option<i64>,
}

#[derive(InputObject)]
pub struct HoldItemInput {
    pub ticket_type_id: ID,
    pub quantity: i64,
}

#[derive(InputObject)]
pub struct HoldTicketsInput {
    pub event_id: ID,
    /// Deprecated: the customer is the subject of the buyer's token. When given, it must be
    /// that subject (`FORBIDDEN` otherwise).
    pub customer_id: Option<ID>,
    pub items: Vec<HoldItemInput>,
    /// Seconds until the hold expires; the server's default (`--hold-ttl-secs-default`, 900
    /// unless configured) when omitted.
    pub ttl_seconds: Option<i64>,
    /// A retry with the same key (per customer) returns the same hold.
    pub idempotency_key: Option<String>,
}

#[derive(InputObject)]
pub struct CheckoutInput {
    pub hold_id: ID,
    pub payment_reference: String,
    /// Kept with the order for the shop's records; a second checkout of the same hold returns
    /// the same order whatever the key.
    pub idempotency_key: Option<String>,
}
