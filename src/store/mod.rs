//! Where holds live. Both flows implement one small trait, [`HoldStore`], with just the
//! operations the API needs; one conformance suite (`tests/it/conformance.rs`) runs against
//! every implementation and database.
//!
//! Every method takes `now` from the caller: a store never reads the clock. Outcomes are
//! `Ok(Ok(value))`, `Ok(Err(rejection))` for an expected refusal (sold out, expired, ...), and
//! `Err(StoreError)` only when the database or Redis failed.

pub mod db;
pub mod redis;

use crate::domain::{
    Availability, CheckoutRequest, Event, EventId, Hold, HoldId, HoldRequest, Millis,
    NewTicketType, Order, OrderId, Rejection, TicketType, TicketTypeId, TtlSeconds,
};

/// A failure of the storage underneath (database, Redis), never an expected refusal.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Db(#[from] sea_orm::DbErr),
    #[error("Redis error")]
    Redis(#[from] ::redis::RedisError),
    /// A server could not be reached in time.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Stored data breaks an invariant; the operation was rolled back and nothing changed.
    #[error("invariant violated: {0}")]
    Invariant(String),
}

impl StoreError {
    /// The SQLSTATE of the database's refusal, if this is one.
    pub fn sqlstate(&self) -> Option<String> {
        let StoreError::Db(sea_orm::DbErr::Query(sea_orm::RuntimeErr::SqlxError(error))) = self
        else {
            return None;
        };
        let code = error.as_database_error()?.code()?;
        Some(code.into_owned())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// An answer that may be an expected refusal.
pub type Outcome<T> = Result<T, Rejection>;

/// Something `verify` found that breaks an invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    /// A ticket type's counters differ from what its holds and orders say.
    Counters {
        ticket_type_id: TicketTypeId,
        /// The counters as stored (the database's, or Redis's in the Redis flow).
        counted_sold: i64,
        counted_held: i64,
        /// What they should be: recomputed from the holds and orders (for Redis's `sold`, the
        /// database's counter, which the orders keep).
        actual_sold: i64,
        actual_held: i64,
    },
    /// More tickets sold and held than exist.
    OverCapacity {
        ticket_type_id: TicketTypeId,
        capacity: i64,
        sold: i64,
        held: i64,
    },
    /// A confirmed hold without its order.
    ConfirmedWithoutOrder { hold_id: HoldId },
    /// An order whose hold is not confirmed.
    OrderOfUnconfirmedHold { order_id: OrderId, hold_id: HoldId },
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::Counters {
                ticket_type_id,
                counted_sold,
                counted_held,
                actual_sold,
                actual_held,
            } => {
                write!(
                    f,
                    "ticket type {ticket_type_id}: counters say sold={counted_sold} \
                     held={counted_held}, holds and orders say sold={actual_sold} \
                     held={actual_held}"
                )
            }
            Drift::OverCapacity {
                ticket_type_id,
                capacity,
                sold,
                held,
            } => write!(
                f,
                "ticket type {ticket_type_id}: sold={sold} + held={held} exceeds capacity \
                 {capacity}"
            ),
            Drift::ConfirmedWithoutOrder { hold_id } => {
                write!(f, "hold {hold_id} is CONFIRMED but has no order")
            }
            Drift::OrderOfUnconfirmedHold { order_id, hold_id } => {
                write!(
                    f,
                    "order {order_id} belongs to hold {hold_id}, which is not CONFIRMED"
                )
            }
        }
    }
}

/// The operations of the API on holds and their stock.
///
/// *Architecture invariant*: after every method, for every ticket type,
/// `sold + held <= capacity`, and every hold that left `Active` did so exactly once, returning
/// or converting its stock exactly once.
#[async_trait::async_trait]
pub trait HoldStore: Send + Sync + 'static {
    async fn create_event(&self, name: String, now: Millis) -> StoreResult<Event>;
    async fn events(&self) -> StoreResult<Vec<Event>>;
    async fn event(&self, id: EventId) -> StoreResult<Option<Event>>;

    /// Rejects with `NotFound` when the event does not exist.
    async fn create_ticket_type(
        &self,
        new: NewTicketType,
        now: Millis,
    ) -> StoreResult<Outcome<TicketType>>;
    async fn ticket_types(&self, event_id: EventId) -> StoreResult<Vec<TicketType>>;
    async fn ticket_type(&self, id: TicketTypeId) -> StoreResult<Option<TicketType>>;

    /// The stock of a ticket type at `now`. Holds past their `expires_at` are never counted as
    /// held, even before their expiry is written.
    async fn availability(
        &self,
        id: TicketTypeId,
        now: Millis,
    ) -> StoreResult<Option<Availability>>;
    /// `availability` of every ticket type of an event.
    async fn event_availability(
        &self,
        event_id: EventId,
        now: Millis,
    ) -> StoreResult<Vec<Availability>>;

    /// Takes the stock of every item or of none. A retry with the same customer and
    /// idempotency key returns the first hold.
    async fn hold(&self, request: HoldRequest, now: Millis) -> StoreResult<Outcome<Hold>>;
    /// Moves `expires_at` of an active hold to `now + ttl`, within its maximum lifetime.
    async fn extend(&self, id: HoldId, ttl: TtlSeconds, now: Millis) -> StoreResult<Outcome<Hold>>;
    /// Ends an active hold as `Released` and returns its stock.
    async fn release(&self, id: HoldId, now: Millis) -> StoreResult<Outcome<Hold>>;
    /// Turns an active hold into an order; a second checkout returns the same order.
    async fn checkout(&self, request: CheckoutRequest, now: Millis) -> StoreResult<Outcome<Order>>;

    /// A hold as it stands at `now`; one past its `expires_at` is expired on the way.
    async fn get_hold(&self, id: HoldId, now: Millis) -> StoreResult<Option<Hold>>;
    async fn get_order(&self, id: OrderId) -> StoreResult<Option<Order>>;
    async fn order_of_hold(&self, hold_id: HoldId) -> StoreResult<Option<Order>>;

    /// Expires up to `batch_max` active holds whose `expires_at` is at or before `now`, each
    /// exactly once however many callers race, and returns them.
    async fn expire_due(&self, now: Millis, batch_max: u32) -> StoreResult<Vec<Hold>>;
    /// The earliest `expires_at` of an active hold, if any (what the expiry timer waits for).
    async fn next_expiry(&self) -> StoreResult<Option<Millis>>;
    /// Whether every server the store needs answers now (the database, and Redis).
    async fn ping(&self) -> StoreResult<()>;

    /// Recomputes `sold` and `held` of every ticket type from the holds and orders and returns
    /// every difference with the stored counters; empty when all is well.
    async fn verify(&self) -> StoreResult<Vec<Drift>>;
}

/// Queues the request that `job` makes around its reply channel for the task behind `sender`
/// and waits for the answer. UNAVAILABLE when that task has gone (`{task} stopped`: the request
/// was not taken) or dropped the request unanswered (a panic, see `crate::supervise`: it may
/// have been carried out).
pub(crate) async fn ask<J, T>(
    sender: &tokio::sync::mpsc::Sender<J>,
    task: &str,
    job: impl FnOnce(tokio::sync::oneshot::Sender<StoreResult<T>>) -> J,
) -> StoreResult<T> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let stopped = || StoreError::Unavailable(format!("{task} stopped"));
    sender.send(job(reply)).await.map_err(|_| stopped())?;
    answer.await.map_err(|_| {
        StoreError::Unavailable(format!(
            "{task} failed before answering: the outcome is unknown"
        ))
    })?
}

/// The next batch from a queue of requests: waits for one, then takes those already waiting,
/// `max` at most; `None` once the queue is closed and empty.
pub(crate) async fn next_batch<T>(
    receiver: &mut tokio::sync::mpsc::Receiver<T>,
    max: usize,
) -> Option<Vec<T>> {
    let mut batch = Vec::new();
    let taken = receiver.recv_many(&mut batch, max).await;
    (taken > 0).then_some(batch)
}
