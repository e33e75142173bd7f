//! The database flow: holds are rows, changed in SeaORM transactions, on SQLite (the embedded
//! default) or PostgreSQL.
//!
//! Stock lives in two counters per ticket type, `sold` and `held`, moved by conditional
//! `UPDATE`s (`... WHERE capacity - sold - held >= q`) in the same transaction as the hold or
//! order rows, so there is no read-then-write race and the counters cannot drift; a CHECK
//! constraint refuses `sold + held > capacity` whatever happens.
//!
//! *Lock order*: a transaction locks hold rows first (in id order), then ticket type rows in
//! ascending id order. Every writer follows it, so concurrent holds, releases, checkouts and
//! expiries never deadlock.

mod batch;
mod connect;
pub(crate) mod convert;
mod endings;
pub(crate) mod queries;

pub use connect::{Kept, Written, connect};
#[doc(hidden)]
pub use queries::{
    Committed, batch_statements, committed, hold_and_take_unchanged, hold_ids_by_idempotency_keys,
    hold_ids_by_idempotency_keys_on, keys_probe, sift_read,
};

use std::collections::BTreeMap;
use std::sync::Arc;

use entity::{hold, ticket_type};
use sea_orm::sea_query::{Expr, LockBehavior, LockType};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, SqlErr, TransactionTrait,
};
use uuid::Uuid;

use self::batch::Answer;
use self::convert::{availability_of, hold_of};
use super::{Drift, HoldStore, Outcome, StoreError, StoreResult};
use crate::domain::{
    Availability, CheckoutRequest, Event, EventId, Hold, HoldId, HoldRequest, HoldStatus, Limits,
    Millis, NewTicketType, Order, OrderId, Rejection, TicketType, TicketTypeId, TtlSeconds,
};
use crate::events::Bus;
use crate::expiry::Wakeup;
use crate::expiry::timer::expire_all_due;

/// Holds expired in one transaction when a request finds overdue holds in its way.
const RECLAIM_BATCH_MAX: u32 = 1000;

/// Holds as database rows.
pub struct DbStore {
    db: DatabaseConnection,
    bus: Bus,
    wakeup: Arc<Wakeup>,
    limits: Limits,
    holds: batch::Batcher,
    endings: endings::Endings,
    events: queries::KnownEvents,
}

impl DbStore {
    /// A store over a connected and migrated database. Changes are published on `bus` after
    /// they commit; new expiries are scheduled on `wakeup`.
    pub fn new(db: DatabaseConnection, bus: Bus, wakeup: Arc<Wakeup>, limits: Limits) -> DbStore {
        let holds = batch::Batcher::start(db.clone(), bus.clone());
        let endings = endings::Endings::start(db.clone(), bus.clone());
        DbStore::with_writers(db, bus, wakeup, limits, holds, endings)
    }

    /// A store over the database at `url`, connected (`connections` to PostgreSQL, one to
    /// SQLite) and migrated. On PostgreSQL the holds are written by a thread of their own,
    /// with 3 more connections of its own (2 pooled, 1 kept for its reads), and checkouts and
    /// releases by another, with 1 more.
    pub async fn open(
        url: &str,
        connections: u32,
        bus: Bus,
        wakeup: Arc<Wakeup>,
        limits: Limits,
    ) -> Result<DbStore, DbErr> {
        let db = connect(url, connections).await?;
        if db.get_database_backend() != DbBackend::Postgres {
            return Ok(DbStore::new(db, bus, wakeup, limits));
        }
        let holds = batch::Batcher::start_on_own_thread(url, bus.clone()).await?;
        let endings = endings::Endings::start_on_own_thread(url, bus.clone()).await?;
        Ok(DbStore::with_writers(
            db, bus, wakeup, limits, holds, endings,
        ))
    }

    fn with_writers(
        db: DatabaseConnection,
        bus: Bus,
        wakeup: Arc<Wakeup>,
        limits: Limits,
        holds: batch::Batcher,
        endings: endings::Endings,
    ) -> DbStore {
        DbStore {
            endings,
            db,
            bus,
            wakeup,
            limits,
            holds,
            events: queries::KnownEvents::default(),
        }
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Begins a transaction and reads and locks the hold `id` in it (see `queries::lock_holds`)
    /// if it is active at `now`; otherwise, rolled back, why not (a due hold is expired on the
    /// way, see `refuse`).
    async fn lock_active(
        &self,
        id: HoldId,
        now: Millis,
    ) -> StoreResult<Outcome<(DatabaseTransaction, Hold)>> {
        let txn = self.db.begin().await?;
        let Some(hold) = queries::lock_holds(&txn, &[id]).await?.pop() else {
            txn.rollback().await?;
            return Ok(Err(Rejection::NotFound { what: "hold" }));
        };
        if let Err(rejection) = hold.check_active(now) {
            txn.rollback().await?;
            return self.refuse(&hold, rejection, now).await;
        }
        Ok(Ok((txn, hold)))
    }

    /// Publishes a committed hold change and the new stock of the ticket types it touched.
    fn publish(&self, hold: &Hold, stock: Vec<ticket_type::Model>) {
        self.bus.publish_hold(hold.clone());
        for model in stock {
            self.bus.publish_availability(availability_of(&model, 0));
        }
    }

    async fn find_by_idempotency_key(
        &self,
        request: &HoldRequest,
        now: Millis,
    ) -> StoreResult<Option<Outcome<Hold>>> {
        let Some(key) = &request.idempotency_key else {
            return Ok(None);
        };
        let found = queries::hold_by_idempotency_key(&self.db, &request.customer_id, key).await?;
        let Some(found) = found else { return Ok(None) };
        Ok(Some(self.retry(request, HoldId(found.id), now).await?))
    }

    /// The answer to `request`, a retry of the hold `id` made under its idempotency key.
    async fn retry(
        &self,
        request: &HoldRequest,
        id: HoldId,
        now: Millis,
    ) -> StoreResult<Outcome<Hold>> {
        let hold = self
            .get_hold(id, now)
            .await?
            .ok_or_else(|| StoreError::Invariant(format!("hold {id} vanished")))?;
        Ok(request.retry_of(hold))
    }

    /// One attempt at a hold, committed (with the other holds of its batch) before it returns;
    /// also whether overdue holds stood in the way of a sold-out answer.
    async fn try_hold(
        &self,
        request: &HoldRequest,
        now: Millis,
    ) -> StoreResult<(Outcome<Hold>, bool)> {
        let (outcome, overdue_in_the_way) = match self.holds.hold(request.clone(), now).await? {
            Answer::Retry(id) => return Ok((self.retry(request, id, now).await?, false)),
            Answer::Decided {
                outcome,
                overdue_in_the_way,
            } => (outcome, overdue_in_the_way),
        };
        let hold = match outcome {
            Ok(hold) => hold,
            Err(rejection) => return Ok((Err(rejection), overdue_in_the_way)),
        };
        // The batch published the new stock once, after its commit.
        self.wakeup.schedule(hold.expires_at);
        self.bus.publish_hold(hold.clone());
        tracing::info!(hold_id = %hold.id, event_id = %hold.event_id, "hold created");
        Ok((Ok(hold), false))
    }

    /// A release in a transaction of its own: what a batch of endings leaves to its caller (a
    /// hold not found, not active or due, one asked for twice in a batch, every request of a
    /// batch that failed before its commit).
    async fn release_alone(&self, id: HoldId, now: Millis) -> StoreResult<Outcome<Hold>> {
        let (txn, mut hold) = match self.lock_active(id, now).await? {
            Ok(locked) => locked,
            Err(rejection) => return Ok(Err(rejection)),
        };
        queries::end_hold(&txn, &mut hold, HoldStatus::Released, now).await?;
        let mut stock = Vec::with_capacity(hold.items.len());
        for item in &hold.items {
            stock
                .push(queries::return_held(&txn, item.ticket_type_id, item.quantity as i32).await?);
        }
        txn.commit().await?;
        self.publish(&hold, stock);
        tracing::info!(hold_id = %id, "hold released");
        Ok(Ok(hold))
    }

    /// A checkout in a transaction of its own: what a batch of endings leaves to its caller (a
    /// hold not found, not active or due, a retry, one asked for twice in a batch, every
    /// request of a batch that failed before its commit).
    async fn checkout_alone(
        &self,
        request: CheckoutRequest,
        now: Millis,
    ) -> StoreResult<Outcome<Order>> {
        let id = request.hold_id;
        let (txn, mut hold) = match self.lock_active(id, now).await? {
            Ok(locked) => locked,
            // A retry of a checkout that was made: its order.
            Err(Rejection::HoldNotActive {
                status: HoldStatus::Confirmed,
            }) => {
                return match self.order_of_hold(id).await? {
                    Some(order) => Ok(Ok(order)),
                    None => Err(StoreError::Invariant(format!("hold {id} has no order"))),
                };
            }
            Err(rejection) => return Ok(Err(rejection)),
        };
        queries::end_hold(&txn, &mut hold, HoldStatus::Confirmed, now).await?;
        let order = queries::insert_order(&txn, &hold, &request, now).await?;
        let mut stock = Vec::with_capacity(hold.items.len());
        for item in &hold.items {
            stock.push(queries::sell_held(&txn, item.ticket_type_id, item.quantity as i32).await?);
        }
        txn.commit().await?;
        self.publish(&hold, stock);
        tracing::info!(hold_id = %hold.id, order_id = %order.id, "hold confirmed");
        Ok(Ok(order))
    }

    /// Answers `rejection` for `hold`; one that is due is expired on the way, so that its stock
    /// is back at once (and both flows agree on when an expiry is written).
    async fn refuse<T>(
        &self,
        hold: &Hold,
        rejection: Rejection,
        now: Millis,
    ) -> StoreResult<Outcome<T>> {
        if hold.status == HoldStatus::Active && rejection == Rejection::HoldExpired {
            expire_all_due(self, now, RECLAIM_BATCH_MAX).await?;
        }
        Ok(Err(rejection))
    }
}

/// Takes the stock of every item of `request` (ticket types in ascending id order), checking that
/// they belong to its event and the customer's limits; the new stock of each.
pub(super) async fn take_stock(
    txn: &DatabaseTransaction,
    request: &HoldRequest,
    now: Millis,
) -> StoreResult<Outcome<Vec<ticket_type::Model>>> {
    let types = queries::ticket_types(txn, request.items.keys()).await?;
    if !request.items.keys().all(|id| {
        types
            .get(id)
            .is_some_and(|tt| tt.event_id == request.event_id.0)
    }) {
        return Ok(Err(Rejection::NotFound {
            what: "ticket type",
        }));
    }
    let mut stock = Vec::with_capacity(request.items.len());
    for (id, quantity) in &request.items {
        let quantity = quantity.get() as i32;
        let customer = &request.customer_id;
        let Some(model) = queries::take_held(txn, *id, quantity).await? else {
            if let Some(rejection) =
                queries::limit_rejection(txn, &types[id], customer, quantity, now).await?
            {
                return Ok(Err(rejection));
            }
            let fresh = queries::ticket_types(txn, [id]).await?;
            let available = fresh
                .get(id)
                .map_or(0, |tt| tt.capacity - tt.sold - tt.held);
            return Ok(Err(Rejection::SoldOut {
                ticket_type_id: *id,
                available: Ord::max(available, 0) as u32,
            }));
        };
        // Checked after the row lock, so that concurrent holds of one customer are counted.
        if let Some(rejection) =
            queries::limit_rejection(txn, &model, customer, quantity, now).await?
        {
            return Ok(Err(rejection));
        }
        stock.push(model);
    }
    Ok(Ok(stock))
}

fn is_unique_violation(error: &DbErr) -> bool {
    matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

#[async_trait::async_trait]
impl HoldStore for DbStore {
    async fn ping(&self) -> StoreResult<()> {
        Ok(self.db.ping().await?)
    }

    async fn create_event(&self, name: String, now: Millis) -> StoreResult<Event> {
        queries::create_event(&self.db, name, now).await
    }

    async fn events(&self) -> StoreResult<Vec<Event>> {
        queries::events(&self.db).await
    }

    async fn event(&self, id: EventId) -> StoreResult<Option<Event>> {
        queries::event(&self.db, id).await
    }

    async fn create_ticket_type(
        &self,
        new: NewTicketType,
        now: Millis,
    ) -> StoreResult<Outcome<TicketType>> {
        let created = queries::create_ticket_type(&self.db, new, now).await?;
        if let Ok(tt) = &created {
            self.bus.publish_availability(Availability {
                ticket_type_id: tt.id,
                event_id: tt.event_id,
                capacity: tt.capacity,
                sold: 0,
                held: 0,
                version: 0,
            });
        }
        Ok(created)
    }

    async fn ticket_types(&self, event_id: EventId) -> StoreResult<Vec<TicketType>> {
        queries::ticket_types_of_event(&self.db, event_id).await
    }

    async fn ticket_type(&self, id: TicketTypeId) -> StoreResult<Option<TicketType>> {
        queries::ticket_type(&self.db, id).await
    }

    async fn availability(
        &self,
        id: TicketTypeId,
        now: Millis,
    ) -> StoreResult<Option<Availability>> {
        let Some(model) = ticket_type::Entity::find_by_id(id.0).one(&self.db).await? else {
            return Ok(None);
        };
        let overdue = queries::overdue_held(&self.db, &[id], now).await?;
        Ok(Some(availability_of(
            &model,
            overdue.get(&id).copied().unwrap_or(0),
        )))
    }

    async fn event_availability(
        &self,
        event_id: EventId,
        now: Millis,
    ) -> StoreResult<Vec<Availability>> {
        let models = ticket_type::Entity::find()
            .filter(ticket_type::Column::EventId.eq(event_id.0))
            .order_by_asc(ticket_type::Column::CreatedAt)
            .order_by_asc(ticket_type::Column::Id)
            .all(&self.db)
            .await?;
        let ids: Vec<TicketTypeId> = models.iter().map(|m| TicketTypeId(m.id)).collect();
        let overdue = queries::overdue_held(&self.db, &ids, now).await?;
        Ok(models
            .iter()
            .map(|m| availability_of(m, overdue.get(&TicketTypeId(m.id)).copied().unwrap_or(0)))
            .collect())
    }

    async fn hold(&self, request: HoldRequest, now: Millis) -> StoreResult<Outcome<Hold>> {
        // A retry is found by its idempotency key inside the batch, which looks up the keys of
        // every request it decides in one statement.
        if !self.events.exists(&self.db, request.event_id).await? {
            return Ok(Err(Rejection::NotFound { what: "event" }));
        }
        // Availability never waits for the expiry timer: when holds past their `expires_at`
        // stand in the way, expire them now and try once more.
        let mut reclaimed = false;
        loop {
            match self.try_hold(&request, now).await {
                Ok((Err(Rejection::SoldOut { .. }), true)) if !reclaimed => {
                    reclaimed = true;
                    expire_all_due(self, now, RECLAIM_BATCH_MAX).await?;
                }
                Ok((outcome, _)) => return Ok(outcome),
                // Two retries with one idempotency key raced: the loser returns the winner's.
                Err(StoreError::Db(error)) if is_unique_violation(&error) => {
                    return match self.find_by_idempotency_key(&request, now).await? {
                        Some(found) => Ok(found),
                        None => Err(StoreError::Db(error)),
                    };
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn extend(&self, id: HoldId, ttl: TtlSeconds, now: Millis) -> StoreResult<Outcome<Hold>> {
        let (txn, mut hold) = match self.lock_active(id, now).await? {
            Ok(locked) => locked,
            Err(rejection) => return Ok(Err(rejection)),
        };
        hold.expires_at = hold.extended_expiry(now, ttl, &self.limits);
        let updated = hold::Entity::update_many()
            .col_expr(hold::Column::ExpiresAt, Expr::value(hold.expires_at.0))
            .filter(hold::Column::Id.eq(id.0))
            .filter(hold::Column::Status.eq(HoldStatus::Active.as_str()))
            .filter(hold::Column::ExpiresAt.gt(now.0))
            .exec(&txn)
            .await?;
        if updated.rows_affected != 1 {
            return Err(StoreError::Invariant(format!(
                "hold {id} changed while locked"
            )));
        }
        txn.commit().await?;
        self.wakeup.schedule(hold.expires_at);
        self.publish(&hold, Vec::new());
        tracing::info!(hold_id = %id, expires_at = hold.expires_at.0, "hold extended");
        Ok(Ok(hold))
    }

    async fn release(&self, id: HoldId, now: Millis) -> StoreResult<Outcome<Hold>> {
        let Some(hold) = self.endings.release(id, now).await? else {
            return self.release_alone(id, now).await;
        };
        // The batch published the hold and the new stock, after its commit.
        tracing::info!(hold_id = %id, "hold released");
        Ok(Ok(hold))
    }

    async fn checkout(&self, request: CheckoutRequest, now: Millis) -> StoreResult<Outcome<Order>> {
        let Some(order) = self.endings.checkout(request.clone(), now).await? else {
            return self.checkout_alone(request, now).await;
        };
        // The batch published the hold and the new stock, after its commit.
        tracing::info!(hold_id = %order.hold_id, order_id = %order.id, "hold confirmed");
        Ok(Ok(order))
    }

    async fn get_hold(&self, id: HoldId, now: Millis) -> StoreResult<Option<Hold>> {
        let Some(mut model) = hold::Entity::find_by_id(id.0).one(&self.db).await? else {
            return Ok(None);
        };
        if model.status == HoldStatus::Active.as_str() && now.0 >= model.expires_at {
            // Its expiry is due and not yet written: write it now rather than show a hold whose
            // end time is unknown, and read it again (once: a transaction holding its row, a
            // checkout about to fail, may keep it active a moment longer).
            expire_all_due(self, now, RECLAIM_BATCH_MAX).await?;
            match hold::Entity::find_by_id(id.0).one(&self.db).await? {
                Some(fresh) => model = fresh,
                None => return Ok(None),
            }
        }
        let mut items = queries::hold_items(&self.db, &[model.id]).await?;
        let items = items.remove(&model.id).unwrap_or_default();
        Ok(Some(hold_of(model, items)?))
    }

    async fn get_order(&self, id: OrderId) -> StoreResult<Option<Order>> {
        queries::order(&self.db, id).await
    }

    async fn order_of_hold(&self, hold_id: HoldId) -> StoreResult<Option<Order>> {
        queries::order_of_hold(&self.db, hold_id).await
    }

    async fn expire_due(&self, now: Millis, batch_max: u32) -> StoreResult<Vec<Hold>> {
        let txn = self.db.begin().await?;
        // Other instances expiring the same holds skip the rows this one has locked.
        let due: Vec<Uuid> = hold::Entity::find()
            .select_only()
            .column(hold::Column::Id)
            .filter(hold::Column::Status.eq(HoldStatus::Active.as_str()))
            .filter(hold::Column::ExpiresAt.lte(now.0))
            .order_by_asc(hold::Column::ExpiresAt)
            .order_by_asc(hold::Column::Id)
            .limit(u64::from(batch_max.min(10_000)))
            .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
            .into_tuple()
            .all(&txn)
            .await?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        // Only rows still active and due change: stock comes back once per hold.
        let expired = hold::Entity::update_many()
            .col_expr(
                hold::Column::Status,
                Expr::value(HoldStatus::Expired.as_str()),
            )
            .col_expr(hold::Column::EndedAt, Expr::value(now.0))
            .filter(hold::Column::Id.is_in(due))
            .filter(hold::Column::Status.eq(HoldStatus::Active.as_str()))
            .filter(hold::Column::ExpiresAt.lte(now.0))
            .exec_with_returning(&txn)
            .await?;
        let ids: Vec<Uuid> = expired.iter().map(|m| m.id).collect();
        let mut items = queries::hold_items(&txn, &ids).await?;
        let mut returned: BTreeMap<Uuid, i32> = BTreeMap::new();
        for item in items.values().flatten() {
            *returned.entry(item.ticket_type_id).or_default() += item.quantity;
        }
        let mut stock = Vec::with_capacity(returned.len());
        for (id, quantity) in returned {
            stock.push(queries::return_held(&txn, TicketTypeId(id), quantity).await?);
        }
        txn.commit().await?;
        let mut holds = Vec::with_capacity(expired.len());
        for model in expired {
            let hold_items = items.remove(&model.id).unwrap_or_default();
            let hold = hold_of(model, hold_items)?;
            tracing::info!(hold_id = %hold.id, lag_ms = (now - hold.expires_at).0, "hold expired");
            self.bus.publish_hold(hold.clone());
            holds.push(hold);
        }
        for model in stock {
            self.bus.publish_availability(availability_of(&model, 0));
        }
        Ok(holds)
    }

    async fn next_expiry(&self) -> StoreResult<Option<Millis>> {
        let next: Option<Option<i64>> = hold::Entity::find()
            .select_only()
            .column_as(hold::Column::ExpiresAt.min(), "next")
            .filter(hold::Column::Status.eq(HoldStatus::Active.as_str()))
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(next.flatten().map(Millis))
    }

    async fn verify(&self) -> StoreResult<Vec<Drift>> {
        queries::verify(&self.db, true).await
    }
}
