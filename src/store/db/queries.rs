//! The statements of the database flow, each a small function over a connection or a
//! transaction. Stock counters only move through `take_held`, `return_held`, `sell_held`,
//! (batches of holds) `hold_and_take` and `hold_and_take_unchanged`, and (Redis flow)
//! `sell_double_checked`, each a conditional `UPDATE ... RETURNING` that locks the ticket type
//! row.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use entity::{event, hold, hold_item, order, order_item, ticket_type};
use sea_orm::sea_query::{CaseStatement, Expr, ExprTrait, Func, LockType, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    DbBackend, EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QueryResult, QuerySelect,
    QueryTrait, Select, Statement,
};
use uuid::Uuid;

use super::connect::{Kept, Written};
use super::convert;
use crate::domain::{
    CheckoutRequest, CustomerId, Event, EventId, Hold, HoldId, HoldStatus, Millis, NewTicketType,
    Order, OrderId, Rejection, TicketType, TicketTypeId,
};
use crate::store::{Drift, Outcome, StoreError, StoreResult};

pub async fn events<C: ConnectionTrait>(conn: &C) -> StoreResult<Vec<Event>> {
    let models = event::Entity::find()
        .order_by_asc(event::Column::CreatedAt)
        .order_by_asc(event::Column::Id)
        .all(conn)
        .await?;
    Ok(models.into_iter().map(convert::event_of).collect())
}

pub async fn event<C: ConnectionTrait>(conn: &C, id: EventId) -> StoreResult<Option<Event>> {
    Ok(event::Entity::find_by_id(id.0)
        .one(conn)
        .await?
        .map(convert::event_of))
}

/// Events known to exist. Events are never deleted, so a hit never goes stale; it spares a
/// round trip to the database on every hold of a flash sale.
#[derive(Default)]
pub struct KnownEvents(std::sync::RwLock<std::collections::HashSet<EventId>>);

impl KnownEvents {
    pub async fn exists<C: ConnectionTrait>(&self, conn: &C, id: EventId) -> StoreResult<bool> {
        if self
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
        {
            return Ok(true);
        }
        let found = event(conn, id).await?.is_some();
        if found {
            self.0.write().unwrap_or_else(|e| e.into_inner()).insert(id);
        }
        Ok(found)
    }
}

pub async fn create_event<C: ConnectionTrait>(
    conn: &C,
    name: String,
    now: Millis,
) -> StoreResult<Event> {
    let model = event::ActiveModel {
        id: Set(EventId::random().0),
        name: Set(name),
        created_at: Set(now.0),
    };
    Ok(convert::event_of(
        event::Entity::insert(model)
            .exec_with_returning(conn)
            .await?,
    ))
}

/// Rejects with `NotFound` when the event does not exist.
pub async fn create_ticket_type<C: ConnectionTrait>(
    conn: &C,
    new: NewTicketType,
    now: Millis,
) -> StoreResult<Outcome<TicketType>> {
    if event(conn, new.event_id).await?.is_none() {
        return Ok(Err(Rejection::NotFound { what: "event" }));
    }
    let model = ticket_type::ActiveModel {
        id: Set(TicketTypeId::random().0),
        event_id: Set(new.event_id.0),
        name: Set(new.name),
        price_cents: Set(new.price_cents),
        capacity: Set(new.capacity as i32),
        max_per_customer: Set(new.max_per_customer.map(|n| n as i32)),
        sold: Set(0),
        held: Set(0),
        version: Set(0),
        created_at: Set(now.0),
    };
    let model = ticket_type::Entity::insert(model)
        .exec_with_returning(conn)
        .await?;
    Ok(Ok(convert::ticket_type_of(model)))
}

pub async fn ticket_types_of_event<C: ConnectionTrait>(
    conn: &C,
    event_id: EventId,
) -> StoreResult<Vec<TicketType>> {
    let models = ticket_type::Entity::find()
        .filter(ticket_type::Column::EventId.eq(event_id.0))
        .order_by_asc(ticket_type::Column::CreatedAt)
        .order_by_asc(ticket_type::Column::Id)
        .all(conn)
        .await?;
    Ok(models.into_iter().map(convert::ticket_type_of).collect())
}

pub async fn ticket_type<C: ConnectionTrait>(
    conn: &C,
    id: TicketTypeId,
) -> StoreResult<Option<TicketType>> {
    Ok(ticket_type::Entity::find_by_id(id.0)
        .one(conn)
        .await?
        .map(convert::ticket_type_of))
}

pub async fn ticket_types<'a, C: ConnectionTrait>(
    conn: &C,
    ids: impl IntoIterator<Item = &'a TicketTypeId>,
) -> StoreResult<BTreeMap<TicketTypeId, ticket_type::Model>> {
    let ids: Vec<Uuid> = ids.into_iter().map(|id| id.0).collect();
    let models = ticket_type::Entity::find()
        .filter(ticket_type::Column::Id.is_in(ids))
        .all(conn)
        .await?;
    Ok(models
        .into_iter()
        .map(|m| (TicketTypeId(m.id), m))
        .collect())
}

/// Moves `quantity` tickets from available to held if that many are available; `None` if not.
pub async fn take_held(
    txn: &DatabaseTransaction,
    id: TicketTypeId,
    quantity: i32,
) -> StoreResult<Option<ticket_type::Model>> {
    use ticket_type::Column::{Capacity, Held, Id, Sold, Version};
    let mut updated = ticket_type::Entity::update_many()
        .col_expr(Held, Expr::col(Held).add(quantity))
        .col_expr(Version, Expr::col(Version).add(1))
        .filter(Id.eq(id.0))
        .filter(
            Expr::col(Capacity)
                .sub(Expr::col(Sold))
                .sub(Expr::col(Held))
                .gte(quantity),
        )
        .exec_with_returning(txn)
        .await?;
    Ok(updated.pop())
}

/// Gives `quantity` held tickets back to sale.
pub async fn return_held(
    txn: &DatabaseTransaction,
    id: TicketTypeId,
    quantity: i32,
) -> StoreResult<ticket_type::Model> {
    use ticket_type::Column::{Held, Id, Version};
    let mut updated = ticket_type::Entity::update_many()
        .col_expr(Held, Expr::col(Held).sub(quantity))
        .col_expr(Version, Expr::col(Version).add(1))
        .filter(Id.eq(id.0))
        .filter(Expr::col(Held).gte(quantity))
        .exec_with_returning(txn)
        .await?;
    updated.pop().ok_or_else(|| {
        StoreError::Invariant(format!(
            "ticket type {id} holds fewer than {quantity} tickets"
        ))
    })
}

/// Turns `quantity` held tickets into sold ones, checking again that the ticket type is not
/// oversold (the double-check at payment).
pub async fn sell_held(
    txn: &DatabaseTransaction,
    id: TicketTypeId,
    quantity: i32,
) -> StoreResult<ticket_type::Model> {
    use ticket_type::Column::{Capacity, Held, Id, Sold, Version};
    let mut updated = ticket_type::Entity::update_many()
        .col_expr(Held, Expr::col(Held).sub(quantity))
        .col_expr(Sold, Expr::col(Sold).add(quantity))
        .col_expr(Version, Expr::col(Version).add(1))
        .filter(Id.eq(id.0))
        .filter(Expr::col(Held).gte(quantity))
        .filter(Expr::col(Sold).add(quantity).lte(Expr::col(Capacity)))
        .exec_with_returning(txn)
        .await?;
    updated.pop().ok_or_else(|| {
        StoreError::Invariant(format!(
            "ticket type {id} cannot sell {quantity} held tickets"
        ))
    })
}

/// Sells `quantity` tickets that were held elsewhere (in Redis) if the database agrees that
/// they exist: the double-check at payment of the Redis flow. `SoldOut` if it does not.
pub async fn sell_double_checked(
    txn: &DatabaseTransaction,
    id: TicketTypeId,
    quantity: i32,
) -> StoreResult<Outcome<ticket_type::Model>> {
    use ticket_type::Column::{Capacity, Held, Id, Sold, Version};
    let mut updated = ticket_type::Entity::update_many()
        .col_expr(Sold, Expr::col(Sold).add(quantity))
        .col_expr(Version, Expr::col(Version).add(1))
        .filter(Id.eq(id.0))
        .filter(
            Expr::col(Sold)
                .add(Expr::col(Held))
                .add(quantity)
                .lte(Expr::col(Capacity)),
        )
        .exec_with_returning(txn)
        .await?;
    if let Some(model) = updated.pop() {
        return Ok(Ok(model));
    }
    let current = ticket_type::Entity::find_by_id(id.0).one(txn).await?;
    let available = current.map_or(0, |tt| Ord::max(tt.capacity - tt.sold - tt.held, 0));
    tracing::error!(ticket_type_id = %id, "Redis allowed a hold the database cannot sell: drift");
    Ok(Err(Rejection::SoldOut {
        ticket_type_id: id,
        available: available as u32,
    }))
}

/// The tickets of a ticket type that a customer has in active holds (not past their
/// `expires_at`) and in orders.
pub async fn customer_quantity<C: ConnectionTrait>(
    conn: &C,
    customer_id: &CustomerId,
    ticket_type: &ticket_type::Model,
    now: Millis,
) -> StoreResult<i64> {
    let customer = customer_id.as_str();
    let owned = customer_quantities(conn, &[customer], &[ticket_type], now).await?;
    Ok(owned
        .get(&(customer.to_owned(), TicketTypeId(ticket_type.id)))
        .copied()
        .unwrap_or(0))
}

/// Reads and locks ticket types in ascending id order (`FOR UPDATE` on PostgreSQL; SQLite has
/// one writer at a time).
pub async fn lock_ticket_types(
    txn: &DatabaseTransaction,
    ids: impl IntoIterator<Item = TicketTypeId>,
) -> StoreResult<BTreeMap<TicketTypeId, ticket_type::Model>> {
    let ids: Vec<Uuid> = ids.into_iter().map(|id| id.0).collect();
    let models = ticket_type::Entity::find()
        .filter(ticket_type::Column::Id.is_in(ids))
        .order_by_asc(ticket_type::Column::Id)
        .lock(sea_orm::sea_query::LockType::Update)
        .all(txn)
        .await?;
    Ok(models
        .into_iter()
        .map(|m| (TicketTypeId(m.id), m))
        .collect())
}

/// `customer_quantity` of several customers and ticket types in one statement: the tickets each
/// has of each, in active holds (not past their `expires_at` at `now`) and orders.
pub async fn customer_quantities<C: ConnectionTrait>(
    conn: &C,
    customers: &[&str],
    ticket_types: &[&ticket_type::Model],
    now: Millis,
) -> StoreResult<HashMap<(String, TicketTypeId), i64>> {
    if customers.is_empty() || ticket_types.is_empty() {
        return Ok(HashMap::new());
    }
    let events: BTreeSet<Uuid> = ticket_types.iter().map(|tt| tt.event_id).collect();
    let events: Vec<Uuid> = events.into_iter().collect();
    let rows: Vec<(String, Uuid, Option<i64>)> =
        customer_quantities_select(customers, &events, now)
            .into_tuple()
            .all(conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(c, t, q)| ((c, TicketTypeId(t)), q.unwrap_or(0)))
        .filter(|((_, t), _)| ticket_types.iter().any(|tt| tt.id == t.0))
        .collect())
}

/// The statement of `customer_quantities`, over every ticket type of `events`: it is found
/// through the customers and the events alone (the index on `(customer_id, event_id)`, so
/// that a customer's holds of other sales are never read). Given the ticket type, or the
/// statuses, the planners may start from that ticket type's items, or from the active holds:
/// every hold of the sale, where the statistics, taken before it, expect none (a batch of 30
/// limited holds took 440 ms on PostgreSQL with 2,000 holds of the ticket type). What is
/// counted is decided in the sum, which no index serves; the ticket types are kept after.
fn customer_quantities_select(
    customers: &[&str],
    events: &[Uuid],
    now: Millis,
) -> Select<hold_item::Entity> {
    let status = || Expr::col((hold::Entity, hold::Column::Status));
    let counted = status().eq(HoldStatus::Confirmed.as_str()).or(status()
        .eq(HoldStatus::Active.as_str())
        .and(Expr::col((hold::Entity, hold::Column::ExpiresAt)).gt(now.0)));
    let quantity = Expr::col((hold_item::Entity, hold_item::Column::Quantity));
    hold_item::Entity::find()
        .select_only()
        .column(hold::Column::CustomerId)
        .column(hold_item::Column::TicketTypeId)
        .expr_as(Func::sum(Expr::case(counted, quantity).finally(0)), "total")
        .inner_join(hold::Entity)
        .filter(hold::Column::CustomerId.is_in(customers.iter().copied()))
        .filter(hold::Column::EventId.is_in(events.iter().copied()))
        .group_by(hold::Column::CustomerId)
        .group_by(hold_item::Column::TicketTypeId)
}

/// Writes new holds and their items, a few hundred rows per statement.
pub async fn insert_holds(txn: &DatabaseTransaction, holds: &[&Hold]) -> StoreResult<()> {
    for chunk in holds.chunks(200) {
        hold::Entity::insert_many(chunk.iter().map(|hold| hold::ActiveModel {
            id: Set(hold.id.0),
            event_id: Set(hold.event_id.0),
            customer_id: Set(hold.customer_id.as_str().to_owned()),
            status: Set(hold.status.as_str().to_owned()),
            created_at: Set(hold.created_at.0),
            expires_at: Set(hold.expires_at.0),
            ended_at: Set(None),
            idempotency_key: Set(hold.idempotency_key.clone()),
            revision: Set(0),
        }))
        .exec_without_returning(txn)
        .await?;
    }
    let items: Vec<hold_item::ActiveModel> = holds
        .iter()
        .flat_map(|hold| {
            hold.items.iter().map(|item| hold_item::ActiveModel {
                hold_id: Set(hold.id.0),
                ticket_type_id: Set(item.ticket_type_id.0),
                quantity: Set(item.quantity as i32),
            })
        })
        .collect();
    for chunk in items.chunks(300) {
        hold_item::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}

/// Writes the holds a batch made and takes their stock, `taken` tickets of each ticket type
/// (locked by the caller): the new stock of each, in ticket type order. On PostgreSQL one
/// statement (`HOLD_AND_TAKE`) does it all; elsewhere `insert_holds` and a `take_held` per type.
pub async fn hold_and_take(
    txn: &DatabaseTransaction,
    holds: &[&Hold],
    taken: &BTreeMap<TicketTypeId, i32>,
) -> StoreResult<Vec<ticket_type::Model>> {
    let changed_under_lock = |id: &TicketTypeId| {
        StoreError::Invariant(format!("ticket type {id} changed under its lock"))
    };
    if holds.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(statement) = hold_and_take_sqlite(txn.get_database_backend(), holds, taken) {
        let mut stock = Vec::with_capacity(taken.len());
        for row in txn.query_all_raw(statement).await? {
            stock.push(ticket_type::Model::from_query_result(&row, "")?);
        }
        stock.sort_by_key(|tt| tt.id);
        if let Some(id) = taken
            .keys()
            .find(|id| !stock.iter().any(|tt| tt.id == id.0))
        {
            return Err(changed_under_lock(id));
        }
        return Ok(stock);
    }
    if txn.get_database_backend() != DbBackend::Postgres {
        insert_holds(txn, holds).await?;
        let mut stock = Vec::with_capacity(taken.len());
        for (id, quantity) in taken {
            let model = take_held(txn, *id, *quantity).await?;
            stock.push(model.ok_or_else(|| changed_under_lock(id))?);
        }
        return Ok(stock);
    }
    let rows = txn
        .query_all_raw(hold_and_take_statement(holds, taken))
        .await?;
    let mut stock: BTreeMap<TicketTypeId, ticket_type::Model> = BTreeMap::new();
    for row in &rows {
        let model = ticket_type::Model::from_query_result(row, "")?;
        stock.insert(TicketTypeId(model.id), model);
    }
    if let Some(id) = taken.keys().find(|id| !stock.contains_key(id)) {
        return Err(changed_under_lock(id));
    }
    Ok(stock.into_values().collect())
}

/// Variables that one SQLite statement may bind at most (`SQLITE_MAX_VARIABLE_NUMBER`).
const SQLITE_VARIABLES_MAX: usize = 32_766;

/// `hold_and_take` on SQLite as one script of statements (SQLx runs them one after the other in
/// one round trip to its SQLite thread, binding the values in order): the holds, their items,
/// and an `UPDATE` of each ticket type taken with the condition of `take_held`, whose rows it
/// returns. `None` elsewhere, and for a batch with more values than SQLite binds at once
/// (thousands of items), which takes the statements one by one.
fn hold_and_take_sqlite(
    backend: DbBackend,
    holds: &[&Hold],
    taken: &BTreeMap<TicketTypeId, i32>,
) -> Option<Statement> {
    let items: Vec<(&Hold, &crate::domain::HoldItem)> = holds
        .iter()
        .flat_map(|hold| hold.items.iter().map(move |item| (*hold, item)))
        .collect();
    let variables = holds.len() * 7 + items.len() * 3 + taken.len() * 3;
    if backend != DbBackend::Sqlite || variables > SQLITE_VARIABLES_MAX {
        return None;
    }
    let rows = |n: usize, row: &str| vec![row; n].join(", ");
    let mut sql = format!(
        "INSERT INTO holds (id, event_id, customer_id, status, created_at, expires_at, ended_at,
                            idempotency_key, revision)
         VALUES {};
         INSERT INTO hold_items (hold_id, ticket_type_id, quantity) VALUES {};",
        rows(holds.len(), "(?, ?, ?, ?, ?, ?, NULL, ?, 0)"),
        rows(items.len(), "(?, ?, ?)"),
    );
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(variables);
    for hold in holds {
        values.push(hold.id.0.into());
        values.push(hold.event_id.0.into());
        values.push(hold.customer_id.as_str().into());
        values.push(hold.status.as_str().into());
        values.push(hold.created_at.0.into());
        values.push(hold.expires_at.0.into());
        values.push(hold.idempotency_key.clone().into());
    }
    for (hold, item) in &items {
        values.push(hold.id.0.into());
        values.push(item.ticket_type_id.0.into());
        values.push((item.quantity as i32).into());
    }
    for (id, quantity) in taken {
        sql.push_str(
            "
         UPDATE ticket_types SET held = held + ?, version = version + 1
         WHERE id = ? AND capacity - sold - held >= ? RETURNING *;",
        );
        values.extend([(*quantity).into(), id.0.into(), (*quantity).into()]);
    }
    Some(Statement::from_sql_and_values(
        DbBackend::Sqlite,
        sql,
        values,
    ))
}

/// The statement of `hold_and_take` on PostgreSQL.
fn hold_and_take_statement(holds: &[&Hold], taken: &BTreeMap<TicketTypeId, i32>) -> Statement {
    let columns = NewHolds::of(holds);
    let values = [
        columns.ids.into(),
        columns.events.into(),
        columns.customers.into(),
        HoldStatus::Active.as_str().into(),
        columns.created_at.into(),
        columns.expires_at.into(),
        columns.keys.into(),
        columns.keyed.into(),
        columns.item_holds.into(),
        columns.item_types.into(),
        columns.item_quantities.into(),
        array(taken.keys().map(|id| id.0)),
        array(taken.values().copied()),
    ];
    Statement::from_sql_and_values(DbBackend::Postgres, HOLD_AND_TAKE, values)
}

/// A PostgreSQL array of `values`.
fn array<T>(values: impl Iterator<Item = T>) -> sea_orm::Value
where
    Vec<T>: Into<sea_orm::Value>,
{
    values.collect::<Vec<T>>().into()
}

/// New holds and their items as the arrays that `new_holds!` unnests ($1 to $3, $5 to $11).
struct NewHolds {
    ids: Vec<Uuid>,
    events: Vec<Uuid>,
    customers: Vec<String>,
    created_at: Vec<i64>,
    expires_at: Vec<i64>,
    /// Without a key: an empty text and false (the binding takes no NULL in an array).
    keys: Vec<String>,
    keyed: Vec<bool>,
    item_holds: Vec<Uuid>,
    item_types: Vec<Uuid>,
    item_quantities: Vec<i32>,
}

impl NewHolds {
    fn of(holds: &[&Hold]) -> NewHolds {
        let items = || {
            holds
                .iter()
                .flat_map(|hold| hold.items.iter().map(move |item| (hold, item)))
        };
        NewHolds {
            ids: holds.iter().map(|h| h.id.0).collect(),
            events: holds.iter().map(|h| h.event_id.0).collect(),
            customers: holds
                .iter()
                .map(|h| h.customer_id.as_str().to_owned())
                .collect(),
            created_at: holds.iter().map(|h| h.created_at.0).collect(),
            expires_at: holds.iter().map(|h| h.expires_at.0).collect(),
            keys: holds
                .iter()
                .map(|h| h.idempotency_key.clone().unwrap_or_default())
                .collect(),
            keyed: holds.iter().map(|h| h.idempotency_key.is_some()).collect(),
            item_holds: items().map(|(hold, _)| hold.id.0).collect(),
            item_types: items().map(|(_, item)| item.ticket_type_id.0).collect(),
            item_quantities: items().map(|(_, item)| item.quantity as i32).collect(),
        }
    }
}

/// The holds of a batch ($1 to $8: ids, events, customers, the active status, created_at,
/// expires_at, idempotency keys and whether each has one) and their items ($9 to $11: holds,
/// ticket types, quantities), inserted by data-modifying `WITH` clauses (their foreign keys are
/// checked at the statement's end), before the `UPDATE` of the stock they take.
macro_rules! new_holds {
    () => {
        r#"
    new_holds AS (
        INSERT INTO holds (id, event_id, customer_id, status, created_at, expires_at,
                           idempotency_key)
        SELECT h.id, h.event_id, h.customer_id, $4, h.created_at, h.expires_at,
               CASE WHEN h.keyed THEN h.idempotency_key END
        FROM unnest($1::uuid[], $2::uuid[], $3::text[], $5::bigint[], $6::bigint[],
                    $7::text[], $8::bool[])
            AS h (id, event_id, customer_id, created_at, expires_at, idempotency_key, keyed)
    ), new_items AS (
        INSERT INTO hold_items (hold_id, ticket_type_id, quantity)
        SELECT * FROM unnest($9::uuid[], $10::uuid[], $11::int4[])
    )"#
    };
}

/// The holds of a batch (`new_holds`) and the stock they take ($12, $13: ticket types,
/// quantities), in one round trip where they took three. The `UPDATE` keeps the condition of
/// `take_held`; a ticket type it leaves out fails the batch, and its transaction is rolled back
/// with the holds.
const HOLD_AND_TAKE: &str = concat!(
    "WITH",
    new_holds!(),
    r#"
    UPDATE ticket_types
    SET held = held + taken.quantity, version = version + 1
    FROM unnest($12::uuid[], $13::int4[]) AS taken (id, quantity)
    WHERE ticket_types.id = taken.id
      AND ticket_types.capacity - ticket_types.sold - ticket_types.held >= taken.quantity
    RETURNING ticket_types.*"#
);

/// `hold_and_take` without a transaction, for holds decided from ticket types read without a
/// lock (`read`): one statement, its own transaction, on the writer's kept connection (one
/// round trip, where a transaction over a pooled connection makes seven). It writes only if
/// no ticket type of `taken` changed since its read in what the decisions rested on: its
/// tickets available (any change of stock of another instance, an expiry, a release; a
/// checkout turns held tickets into sold ones and changes nothing available) and, where a
/// customer's limit applies, its `version` too (a hold of the same customer on another
/// instance could be all that changed, balanced by an expiry). Otherwise PostgreSQL refuses it
/// whole (`Written::changed_since_read`), holds included, and the batch is decided again
/// under the ticket types' lock.
pub async fn hold_and_take_unchanged(
    kept: &mut Kept,
    holds: &[&Hold],
    taken: &BTreeMap<TicketTypeId, i32>,
    read: &BTreeMap<TicketTypeId, ticket_type::Model>,
) -> Written<Vec<ticket_type::Model>> {
    let mut expected_available = Vec::with_capacity(taken.len());
    let mut expected_version = Vec::with_capacity(taken.len());
    for id in taken.keys() {
        let Some(tt) = read.get(id) else {
            let error = StoreError::Invariant(format!("ticket type {id} taken but not read"));
            return Written::Refused(error);
        };
        expected_available.push(tt.capacity - tt.sold - tt.held);
        // -1: any version (versions start at 0).
        expected_version.push(tt.max_per_customer.map_or(-1, |_| tt.version));
    }
    let columns = NewHolds::of(holds);
    let query = sea_orm::sqlx::query(HOLD_AND_TAKE_UNCHANGED)
        .bind(columns.ids)
        .bind(columns.events)
        .bind(columns.customers)
        .bind(HoldStatus::Active.as_str())
        .bind(columns.created_at)
        .bind(columns.expires_at)
        .bind(columns.keys)
        .bind(columns.keyed)
        .bind(columns.item_holds)
        .bind(columns.item_types)
        .bind(columns.item_quantities)
        .bind(taken.keys().map(|id| id.0).collect::<Vec<Uuid>>())
        .bind(taken.values().copied().collect::<Vec<i32>>())
        .bind(expected_available)
        .bind(expected_version);
    let rows = match kept.write(query).await {
        Written::Done(rows) => rows,
        Written::Refused(error) => return Written::Refused(error),
        Written::Unknown(error) => return Written::Unknown(error),
    };
    let stock: Result<Vec<ticket_type::Model>, sea_orm::DbErr> = rows
        .iter()
        .map(|row| ticket_type::Model::from_query_result(row, ""))
        .collect();
    match stock {
        Ok(mut stock) if stock.len() == taken.len() => {
            stock.sort_by_key(|tt| tt.id);
            Written::Done(stock)
        }
        // Committed, yet not as asked: nothing to answer the holds by.
        Ok(_) => Written::Unknown(StoreError::Invariant(
            "a ticket type taken was not written".into(),
        )),
        Err(error) => Written::Unknown(error.into()),
    }
}

/// The statement of `hold_and_take_unchanged`: `new_holds`, then the stock taken ($12, $13:
/// ticket types, quantities) where each ticket type has as many tickets available as read
/// ($14) and, unless that is -1, the version read ($15); `tickethold_changed_since_read` fails
/// the statement for the first that has not (a `CASE`, so that it is called only then, and only
/// for the row of the ticket type, whatever order the plan checks the conditions in). The
/// ticket types are locked first, in ascending id order (`locked`), as every writer locks them,
/// since an `UPDATE` locks its rows in whatever order its plan meets them.
const HOLD_AND_TAKE_UNCHANGED: &str = concat!(
    r#"
    WITH locked AS MATERIALIZED (
        SELECT id FROM ticket_types WHERE id = ANY($12::uuid[]) ORDER BY id FOR UPDATE
    ),"#,
    new_holds!(),
    r#"
    UPDATE ticket_types
    SET held = held + taken.quantity, version = version + 1
    FROM unnest($12::uuid[], $13::int4[], $14::int4[], $15::int8[])
        AS taken (id, quantity, available_read, version_read)
        JOIN locked ON locked.id = taken.id
    WHERE ticket_types.id = taken.id
      AND CASE
          WHEN ticket_types.id <> taken.id THEN false
          WHEN ticket_types.capacity - ticket_types.sold - ticket_types.held = taken.available_read
               AND (taken.version_read = -1 OR ticket_types.version = taken.version_read)
          THEN true
          ELSE tickethold_changed_since_read(ticket_types.id)
      END
    RETURNING ticket_types.*"#
);

/// `LimitExceeded` if `quantity` more tickets would take the customer past the ticket type's
/// `max_per_customer`.
pub async fn limit_rejection(
    txn: &DatabaseTransaction,
    tt: &ticket_type::Model,
    customer_id: &CustomerId,
    quantity: i32,
    now: Millis,
) -> StoreResult<Option<Rejection>> {
    let Some(max) = tt.max_per_customer else {
        return Ok(None);
    };
    let already = customer_quantity(txn, customer_id, tt, now).await?;
    if already + i64::from(quantity) <= i64::from(max) {
        return Ok(None);
    }
    // The hold may include the quantity just taken in this transaction: it is not counted
    // here, since its hold row is not written yet.
    Ok(Some(Rejection::LimitExceeded {
        ticket_type_id: TicketTypeId(tt.id),
        max_per_customer: Ord::max(max, 0) as u32,
        already: Ord::max(already, 0) as u32,
    }))
}

pub async fn insert_hold(txn: &DatabaseTransaction, hold: &Hold) -> StoreResult<()> {
    hold::Entity::insert(hold::ActiveModel {
        id: Set(hold.id.0),
        event_id: Set(hold.event_id.0),
        customer_id: Set(hold.customer_id.as_str().to_owned()),
        status: Set(hold.status.as_str().to_owned()),
        created_at: Set(hold.created_at.0),
        expires_at: Set(hold.expires_at.0),
        ended_at: Set(None),
        idempotency_key: Set(hold.idempotency_key.clone()),
        revision: Set(0),
    })
    .exec_without_returning(txn)
    .await?;
    hold_item::Entity::insert_many(hold.items.iter().map(|item| hold_item::ActiveModel {
        hold_id: Set(hold.id.0),
        ticket_type_id: Set(item.ticket_type_id.0),
        quantity: Set(item.quantity as i32),
    }))
    .exec_without_returning(txn)
    .await?;
    Ok(())
}

/// Reads and locks holds, in ascending id order (the lock order; `SELECT ... FOR UPDATE` on
/// PostgreSQL, SQLite has one writer at a time and needs no row lock), with their items. Ids
/// of no hold are left out.
pub async fn lock_holds(txn: &DatabaseTransaction, ids: &[HoldId]) -> StoreResult<Vec<Hold>> {
    let models = hold::Entity::find()
        .filter(hold::Column::Id.is_in(ids.iter().map(|id| id.0)))
        .order_by_asc(hold::Column::Id)
        .lock(LockType::Update)
        .all(txn)
        .await?;
    let ids: Vec<Uuid> = models.iter().map(|model| model.id).collect();
    let mut items = hold_items(txn, &ids).await?;
    models
        .into_iter()
        .map(|model| {
            let items = items.remove(&model.id).unwrap_or_default();
            convert::hold_of(model, items)
        })
        .collect()
}

/// Ends an active hold that the transaction has locked and checked.
pub async fn end_hold(
    txn: &DatabaseTransaction,
    hold: &mut Hold,
    status: HoldStatus,
    now: Millis,
) -> StoreResult<()> {
    end_holds(txn, &[(hold.id, now)], status).await?;
    hold.status = status;
    hold.ended_at = Some(now);
    Ok(())
}

/// Ends active holds that the transaction has locked and checked, each at its instant (before
/// which it is not due), in one statement.
pub async fn end_holds(
    txn: &DatabaseTransaction,
    ended: &[(HoldId, Millis)],
    status: HoldStatus,
) -> StoreResult<()> {
    let Some(earliest) = ended.iter().map(|(_, now)| *now).min() else {
        return Ok(());
    };
    let ended_at = ended
        .iter()
        .fold(CaseStatement::new(), |case, (id, now)| {
            case.case(hold::Column::Id.eq(id.0), now.0)
        })
        .finally(Expr::col(hold::Column::EndedAt));
    let updated = hold::Entity::update_many()
        .col_expr(hold::Column::Status, Expr::value(status.as_str()))
        .col_expr(hold::Column::EndedAt, ended_at.into())
        .filter(hold::Column::Id.is_in(ended.iter().map(|(id, _)| id.0)))
        .filter(hold::Column::Status.eq(HoldStatus::Active.as_str()))
        .filter(hold::Column::ExpiresAt.gt(earliest.0))
        .exec(txn)
        .await?;
    if updated.rows_affected != ended.len() as u64 {
        return Err(StoreError::Invariant(format!(
            "{} of {} holds changed while locked",
            ended.len() as u64 - updated.rows_affected,
            ended.len()
        )));
    }
    Ok(())
}

/// Writes the order of a hold being confirmed, at its ticket types' prices (a price never changes
/// once its ticket type exists). Called before the sale: the sale locks the ticket types' rows,
/// the hot rows of a flash sale, and they then stay locked only until the commit.
pub async fn insert_order(
    txn: &DatabaseTransaction,
    hold: &Hold,
    request: &CheckoutRequest,
    now: Millis,
) -> StoreResult<Order> {
    let mut orders = insert_orders(txn, &[(hold, request, now)]).await?;
    orders
        .pop()
        .ok_or_else(|| StoreError::Invariant(format!("no order written for hold {}", hold.id)))
}

/// `insert_order` for several holds, each confirmed at its instant, in three statements (the
/// prices, the orders, their items): the orders, in the order of `confirmed`.
pub async fn insert_orders(
    txn: &DatabaseTransaction,
    confirmed: &[(&Hold, &CheckoutRequest, Millis)],
) -> StoreResult<Vec<Order>> {
    if confirmed.is_empty() {
        return Ok(Vec::new());
    }
    let held: BTreeSet<TicketTypeId> = confirmed
        .iter()
        .flat_map(|(hold, _, _)| hold.items.iter().map(|item| item.ticket_type_id))
        .collect();
    let types = ticket_types(txn, &held).await?;
    let price = |id: TicketTypeId| types.get(&id).map(|m| m.price_cents).unwrap_or_default();
    let orders: Vec<Order> = confirmed
        .iter()
        .map(|(hold, request, now)| {
            let items: Vec<crate::domain::OrderItem> = hold
                .items
                .iter()
                .map(|item| crate::domain::OrderItem {
                    ticket_type_id: item.ticket_type_id,
                    quantity: item.quantity,
                    unit_price_cents: price(item.ticket_type_id),
                })
                .collect();
            Order {
                id: OrderId::random(),
                hold_id: hold.id,
                customer_id: hold.customer_id.clone(),
                payment_reference: request.payment_reference.clone(),
                total_cents: items
                    .iter()
                    .map(|i| i64::from(i.quantity) * i.unit_price_cents)
                    .sum(),
                items,
                created_at: *now,
            }
        })
        .collect();
    order::Entity::insert_many(
        orders
            .iter()
            .zip(confirmed)
            .map(|(order, (_, request, _))| order::ActiveModel {
                id: Set(order.id.0),
                hold_id: Set(order.hold_id.0),
                customer_id: Set(order.customer_id.as_str().to_owned()),
                payment_reference: Set(order.payment_reference.clone()),
                idempotency_key: Set(request.idempotency_key.clone()),
                total_cents: Set(order.total_cents),
                created_at: Set(order.created_at.0),
            }),
    )
    .exec_without_returning(txn)
    .await?;
    // In ascending ticket type order: each row's foreign key check share-locks its ticket type,
    // and ticket types are locked in ascending id order (the lock order, in `super`).
    let mut rows: Vec<(&Order, &crate::domain::OrderItem)> = orders
        .iter()
        .flat_map(|order| order.items.iter().map(move |item| (order, item)))
        .collect();
    rows.sort_by_key(|(_, item)| item.ticket_type_id);
    if !rows.is_empty() {
        order_item::Entity::insert_many(rows.into_iter().map(|(order, item)| {
            order_item::ActiveModel {
                order_id: Set(order.id.0),
                ticket_type_id: Set(item.ticket_type_id.0),
                quantity: Set(item.quantity as i32),
                unit_price_cents: Set(item.unit_price_cents),
            }
        }))
        .exec_without_returning(txn)
        .await?;
    }
    Ok(orders)
}

/// The hold row a customer made with an idempotency key, if any.
pub async fn hold_by_idempotency_key<C: ConnectionTrait>(
    conn: &C,
    customer: &CustomerId,
    key: &str,
) -> StoreResult<Option<hold::Model>> {
    Ok(hold::Entity::find()
        .filter(hold::Column::CustomerId.eq(customer.as_str()))
        .filter(hold::Column::IdempotencyKey.eq(key))
        .one(conn)
        .await?)
}

/// `hold_by_idempotency_key` for several (customer, key) pairs in one statement: the id of the
/// hold made under each pair that has one.
pub async fn hold_ids_by_idempotency_keys<C: ConnectionTrait>(
    conn: &C,
    pairs: &[(&str, &str)],
) -> StoreResult<HashMap<(String, String), Uuid>> {
    if pairs.is_empty() {
        return Ok(HashMap::new());
    }
    if conn.get_database_backend() == DbBackend::Postgres {
        return made_of(&conn.query_all_raw(keys_probe(pairs)).await?);
    }
    // Both columns filtered by their sets (the unique index serves it), exact pairs kept here.
    let wanted: HashSet<&(&str, &str)> = pairs.iter().collect();
    let rows: Vec<(Uuid, String, Option<String>)> = hold::Entity::find()
        .select_only()
        .column(hold::Column::Id)
        .column(hold::Column::CustomerId)
        .column(hold::Column::IdempotencyKey)
        .filter(hold::Column::CustomerId.is_in(pairs.iter().map(|(customer, _)| *customer)))
        .filter(hold::Column::IdempotencyKey.is_in(pairs.iter().map(|(_, key)| *key)))
        .into_tuple()
        .all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, customer, key)| Some(((customer, key?), id)))
        .filter(|((customer, key), _)| wanted.contains(&(customer.as_str(), key.as_str())))
        .collect())
}

/// `hold_ids_by_idempotency_keys` on PostgreSQL: one probe of the unique index per pair, the
/// pairs as two arrays. Every sift and every keyed hold of the Redis flow asks it. The sets of
/// customers and keys (as on SQLite) are a new statement text for every batch length, planned
/// anew at every execution from the values in its lists, and PostgreSQL answers them with a
/// scan of every hold while the table is small or new to its statistics (a sale on a fresh
/// database). This one text is prepared once per connection; after five runs PostgreSQL settles
/// on its generic plan when that costs no more than the custom ones (it does here, and the
/// test reads both plans), executed without planning. The `LIMIT` keeps the planner from
/// flattening the probes into a join over every hold. Measured: a batch of 16 pairs against 1,200 holds, 0.05
/// ms and no planning against 0.11 ms and 0.08 ms of planning; the bench's sale of 20,000
/// buyers, 13,771 against 11,901 holds/s on PostgreSQL and 10,235 against 8,679 on Redis.
pub fn keys_probe(pairs: &[(&str, &str)]) -> Statement {
    let (customers, keys) = unzip_pairs(pairs);
    Statement::from_sql_and_values(
        DbBackend::Postgres,
        KEYS_PROBE,
        [customers.into(), keys.into()],
    )
}

/// `hold_ids_by_idempotency_keys` on PostgreSQL, on a connection the caller keeps.
pub async fn hold_ids_by_idempotency_keys_on(
    kept: &mut Kept,
    pairs: &[(&str, &str)],
) -> StoreResult<HashMap<(String, String), Uuid>> {
    if pairs.is_empty() {
        return Ok(HashMap::new());
    }
    let (customers, keys) = unzip_pairs(pairs);
    let query = || {
        sea_orm::sqlx::query(KEYS_PROBE)
            .bind(customers.as_slice())
            .bind(keys.as_slice())
    };
    made_of(&kept.fetch_all(query).await?)
}

/// The `FROM` clause of the key probe, the pairs as the arrays `$customers` and `$keys`: one
/// probe of the unique index per pair (`keys_probe` says why it is written so). Shared by
/// `KEYS_PROBE` and `SIFT_READ`.
macro_rules! keys_probe_from {
    ($customers:literal, $keys:literal) => {
        concat!(
            "FROM unnest(",
            $customers,
            "::text[], ",
            $keys,
            "::text[])
                 AS wanted (customer_id, idempotency_key)
             CROSS JOIN LATERAL (
                 SELECT holds.id FROM holds
                 WHERE holds.customer_id = wanted.customer_id
                   AND holds.idempotency_key = wanted.idempotency_key
                 LIMIT 1
             ) AS found"
        )
    };
}

/// The statement of `keys_probe`: $1 the customers, $2 the keys of the pairs.
const KEYS_PROBE: &str = concat!(
    "SELECT found.id, wanted.customer_id, wanted.idempotency_key ",
    keys_probe_from!("$1", "$2")
);

/// The holds found by `KEYS_PROBE`, by (customer, idempotency key).
fn made_of(rows: &[QueryResult]) -> StoreResult<HashMap<(String, String), Uuid>> {
    rows.iter()
        .map(|row| {
            let id: Uuid = row.try_get("", "id")?;
            let customer: String = row.try_get("", "customer_id")?;
            let key: String = row.try_get("", "idempotency_key")?;
            Ok(((customer, key), id))
        })
        .collect::<Result<_, sea_orm::DbErr>>()
        .map_err(Into::into)
}

/// The customers and the keys of `pairs`, as two arrays.
fn unzip_pairs(pairs: &[(&str, &str)]) -> (Vec<String>, Vec<String>) {
    pairs
        .iter()
        .map(|(customer, key)| ((*customer).to_owned(), (*key).to_owned()))
        .unzip()
}

/// What the sift of a batch of holds reads, committed and without locks.
pub struct Committed {
    pub types: BTreeMap<TicketTypeId, ticket_type::Model>,
    /// The hold made under each (customer, idempotency key) pair asked that has one.
    pub made: HashMap<(String, String), Uuid>,
    /// Tickets of each ticket type in active holds past their `expires_at` at `now`.
    pub overdue: BTreeMap<TicketTypeId, i64>,
    /// What each customer asked owns of each ticket type read that has a limit per customer
    /// (`customer_quantities`), read in the same snapshot as the stock.
    pub owned: HashMap<(String, TicketTypeId), i64>,
}

/// The ticket types `ids`, the holds made under `pairs`, what `customers` own of the limited
/// ones among `ids` and the overdue tickets of `ids` at `now`, on PostgreSQL (`kept` a
/// connection of the caller's to the server of `db`): one statement, `SIFT_READ`, reads the
/// first three and whether any hold is overdue at all, and a second counts the overdue tickets
/// only when one is (holds that the expiry timer has not reached yet: seldom).
/// `committed_sqlite` reads the same on SQLite.
pub async fn committed(
    db: &DatabaseConnection,
    kept: &mut Kept,
    ids: &[TicketTypeId],
    pairs: &[(&str, &str)],
    customers: &[&str],
    now: Millis,
) -> StoreResult<Committed> {
    let arguments = SiftArguments::of(ids, pairs, customers);
    let query = || {
        sea_orm::sqlx::query(SIFT_READ)
            .bind(arguments.ids.as_slice())
            .bind(arguments.pair_customers.as_slice())
            .bind(arguments.pair_keys.as_slice())
            .bind(now.0)
            .bind(arguments.customers.as_slice())
    };
    let rows = kept.fetch_all(query).await?;
    // The pairs found, the customers' counts and the overdue check are on every row, and
    // there is one at least.
    let Some(first) = rows.first() else {
        return Err(StoreError::Invariant("the sift read no row".into()));
    };
    let made_ids: Vec<Uuid> = first.try_get("", "made_ids")?;
    let made_customers: Vec<String> = first.try_get("", "made_customers")?;
    let made_keys: Vec<String> = first.try_get("", "made_keys")?;
    let made = made_customers.into_iter().zip(made_keys).zip(made_ids);
    let owned_customers: Vec<String> = first.try_get("", "owned_customers")?;
    let owned_types: Vec<Uuid> = first.try_get("", "owned_types")?;
    let owned_totals: Vec<i64> = first.try_get("", "owned_totals")?;
    let owned = owned_customers
        .into_iter()
        .zip(owned_types.into_iter().map(TicketTypeId))
        .zip(owned_totals);
    committed_of(db, &rows, made.collect(), owned.collect(), ids, now).await
}

/// What a sift's read found: the ticket types on its `rows` (none where no ticket type was
/// found), the holds `made`, what the customers own of the limited ticket types read, and the
/// overdue tickets of `ids`, counted only when the read found some hold overdue
/// (`any_overdue`, on every row).
async fn committed_of<C: ConnectionTrait>(
    conn: &C,
    rows: &[QueryResult],
    made: HashMap<(String, String), Uuid>,
    mut owned: HashMap<(String, TicketTypeId), i64>,
    ids: &[TicketTypeId],
    now: Millis,
) -> StoreResult<Committed> {
    let mut types = BTreeMap::new();
    for row in rows {
        if row.try_get::<Option<Uuid>>("", "id")?.is_some() {
            let model = ticket_type::Model::from_query_result(row, "")?;
            types.insert(TicketTypeId(model.id), model);
        }
    }
    // Counted over the limited ticket types' events: other ticket types of those events too.
    owned.retain(|(_, id), _| {
        types
            .get(id)
            .is_some_and(|tt| tt.max_per_customer.is_some())
    });
    let mut committed = Committed {
        types,
        made,
        overdue: BTreeMap::new(),
        owned,
    };
    if let Some(first) = rows.first()
        && first.try_get::<bool>("", "any_overdue")?
    {
        committed.overdue = overdue_held(conn, ids, now).await?;
    }
    Ok(committed)
}

/// The statement of `committed` on PostgreSQL, with its arguments (for the tests that read
/// its plan).
pub fn sift_read(
    ids: &[TicketTypeId],
    pairs: &[(&str, &str)],
    customers: &[&str],
    now: Millis,
) -> Statement {
    let arguments = SiftArguments::of(ids, pairs, customers);
    let values = [
        arguments.ids.into(),
        arguments.pair_customers.into(),
        arguments.pair_keys.into(),
        now.0.into(),
        arguments.customers.into(),
    ];
    Statement::from_sql_and_values(DbBackend::Postgres, SIFT_READ, values)
}

/// The arrays that `SIFT_READ` binds.
struct SiftArguments {
    ids: Vec<Uuid>,
    /// The customers and the keys of the (customer, idempotency key) pairs.
    pair_customers: Vec<String>,
    pair_keys: Vec<String>,
    /// The customers whose counts are read, each once.
    customers: Vec<String>,
}

impl SiftArguments {
    fn of(ids: &[TicketTypeId], pairs: &[(&str, &str)], customers: &[&str]) -> SiftArguments {
        let (pair_customers, pair_keys) = unzip_pairs(pairs);
        let customers: BTreeSet<&str> = customers.iter().copied().collect();
        SiftArguments {
            ids: ids.iter().map(|id| id.0).collect(),
            pair_customers,
            pair_keys,
            customers: customers.into_iter().map(str::to_owned).collect(),
        }
    }
}

/// The key probe of `keys_probe` (the pairs found folded into three arrays, so that there is a row
/// even when no ticket type is found), the customers' counts of `customer_quantities` over the
/// events of the limited ticket types (folded likewise), the `EXISTS` check of
/// `overdue_held_select` and the ticket types, in one round trip and one snapshot: $1 the ticket
/// type ids, $2 and $3 the customers and keys of the pairs, $4 now, $5 the customers whose
/// counts are read; the statuses are written in (see `is_active`). The counts probe the
/// `(customer_id, event_id)` index once per customer and limited event
/// (`customer_quantities_select` says why no other way), and read nothing when no ticket type
/// asked is limited. One text, prepared once per connection; with a batch of more than a few
/// pairs PostgreSQL settles on its generic plan, executed without planning (a statement that also summed the overdue tickets did
/// not, and was planned anew at every execution, 0.27 ms). A sift that ran the three statements
/// at once, each on a pooled connection of its own, made nine round trips and woke three
/// PostgreSQL backends for every batch of refusals of a sold-out sale; with the counts on a
/// statement of their own, a sale with a limit per customer ran a fifth slower.
const SIFT_READ: &str = concat!(
    "WITH made AS (
         SELECT coalesce(array_agg(found.id), '{}') AS made_ids,
                coalesce(array_agg(wanted.customer_id), '{}') AS made_customers,
                coalesce(array_agg(wanted.idempotency_key), '{}') AS made_keys ",
    keys_probe_from!("$2", "$3"),
    "),
     limited AS (
         SELECT DISTINCT event_id FROM ticket_types
         WHERE id = ANY($1::uuid[]) AND max_per_customer IS NOT NULL
     ),
     owned AS (
         SELECT coalesce(array_agg(asker.customer_id), '{}') AS owned_customers,
                coalesce(array_agg(counted.ticket_type_id), '{}') AS owned_types,
                coalesce(array_agg(counted.total), '{}') AS owned_totals
         FROM limited
         CROSS JOIN unnest($5::text[]) AS asker (customer_id)
         CROSS JOIN LATERAL (
             SELECT hold_items.ticket_type_id,
                    sum(CASE WHEN holds.status = 'CONFIRMED'
                               OR (holds.status = 'ACTIVE' AND holds.expires_at > $4)
                             THEN hold_items.quantity ELSE 0 END)::bigint AS total
             FROM holds
             JOIN hold_items ON hold_items.hold_id = holds.id
             WHERE holds.customer_id = asker.customer_id AND holds.event_id = limited.event_id
             GROUP BY hold_items.ticket_type_id
         ) AS counted
     )
     SELECT made.made_ids, made.made_customers, made.made_keys,
            owned.owned_customers, owned.owned_types, owned.owned_totals,
            EXISTS (SELECT 1 FROM holds WHERE status = 'ACTIVE' AND expires_at <= $4)
                AS any_overdue,
            ticket_types.*
     FROM made
     CROSS JOIN owned
     LEFT JOIN ticket_types ON ticket_types.id = ANY($1::uuid[])"
);

/// The items of some holds, by hold id.
pub async fn hold_items<C: ConnectionTrait>(
    conn: &C,
    hold_ids: &[Uuid],
) -> StoreResult<BTreeMap<Uuid, Vec<hold_item::Model>>> {
    let mut by_hold: BTreeMap<Uuid, Vec<hold_item::Model>> = BTreeMap::new();
    // Bounded chunks keep every statement under the databases' bind-parameter limits.
    for chunk in hold_ids.chunks(500) {
        let items = hold_item::Entity::find()
            .filter(hold_item::Column::HoldId.is_in(chunk.iter().copied()))
            .all(conn)
            .await?;
        for item in items {
            by_hold.entry(item.hold_id).or_default().push(item);
        }
    }
    Ok(by_hold)
}

/// Tickets per ticket type in active holds already past their `expires_at`: held on the
/// counters, but no longer for buyers.
pub async fn overdue_held<C: ConnectionTrait>(
    conn: &C,
    ids: &[TicketTypeId],
    now: Millis,
) -> StoreResult<BTreeMap<TicketTypeId, i64>> {
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let rows: Vec<(Uuid, Option<i64>)> = overdue_held_select(now).into_tuple().all(conn).await?;
    Ok(rows
        .into_iter()
        .map(|(id, total)| (TicketTypeId(id), total.unwrap_or(0)))
        .filter(|(id, _)| ids.contains(id))
        .collect())
}

/// The statement of `overdue_held`, over every ticket type. A sold-out sale asks it for every
/// batch of refusals; given the ticket type, the planners join from its items (every hold of the
/// sale, thousands, where the statistics taken before the sale expect none) rather than from the
/// few overdue holds (with 10,000 holds of the hot ticket type on an analyzed PostgreSQL, the
/// bench measured 784 holds/s so, 8,469 with the check below). So the ticket types are kept
/// after, and the statement first asks the `(status, expires_at)` index whether any active hold is overdue at
/// all (an uncorrelated `EXISTS`, evaluated once) and joins nothing when none is.
fn overdue_held_select(now: Millis) -> Select<hold_item::Entity> {
    hold_item::Entity::find()
        .select_only()
        .column(hold_item::Column::TicketTypeId)
        .column_as(hold_item::Column::Quantity.sum(), "total")
        .inner_join(hold::Entity)
        .filter(any_overdue(now))
        .filter(overdue(now))
        .group_by(hold_item::Column::TicketTypeId)
}

/// Active holds past their `expires_at` at `now`.
fn overdue(now: Millis) -> Expr {
    is_active().and(hold::Column::ExpiresAt.lte(now.0))
}

/// Whether any active hold is overdue at `now`: one probe of the `(status, expires_at)` index.
fn any_overdue(now: Millis) -> Expr {
    let first = Query::select()
        .expr(Expr::val(1))
        .from(hold::Entity)
        .and_where(overdue(now))
        .limit(1)
        .to_owned();
    Expr::exists(first)
}

/// `committed` on SQLite, on `conn` (the pool, or a transaction that is to write what it
/// decides: SQLite has one writer at a time, so that a read in it is as good as a lock).
pub async fn committed_sqlite<C: ConnectionTrait>(
    conn: &C,
    ids: &[TicketTypeId],
    pairs: &[(&str, &str)],
    customers: &[&str],
    now: Millis,
) -> StoreResult<Committed> {
    let rows = conn
        .query_all_raw(sift_read_sqlite(ids, pairs, customers, now))
        .await?;
    // The pairs found, the customers' counts and the overdue check are on every row, and
    // there is one at least.
    let Some(first) = rows.first() else {
        return Err(StoreError::Invariant("the sift read no row".into()));
    };
    let wanted: HashSet<&(&str, &str)> = pairs.iter().collect();
    let found: Vec<(String, String, String)> = json_column(first, "made")?;
    let mut made = HashMap::new();
    for (id, customer, key) in found {
        if wanted.contains(&(customer.as_str(), key.as_str())) {
            made.insert((customer, key), uuid_of_hex(&id)?);
        }
    }
    let counted: Vec<(String, String, i64)> = json_column(first, "owned")?;
    let mut owned = HashMap::new();
    for (customer, id, total) in counted {
        owned.insert((customer, TicketTypeId(uuid_of_hex(&id)?)), total);
    }
    committed_of(conn, &rows, made, owned, ids, now).await
}

/// The JSON array in `column` of `row`, as `T`.
fn json_column<T: serde::de::DeserializeOwned>(row: &QueryResult, column: &str) -> StoreResult<T> {
    serde_json::from_str(&row.try_get::<String>("", column)?)
        .map_err(|e| StoreError::Invariant(format!("the sift's column {column}: {e}")))
}

/// An id that SQLite gave in hex.
fn uuid_of_hex(hex: &str) -> StoreResult<Uuid> {
    Uuid::parse_str(hex).map_err(|e| StoreError::Invariant(format!("the sift's id {hex}: {e}")))
}

/// `SIFT_READ` on SQLite, one round trip to SQLx's SQLite thread where four statements made
/// eight (each also pinged the connection as it went back to the pool): the holds made under
/// `pairs` (both columns by their sets, as the unique index serves them; the exact pairs are
/// kept by the caller), what `customers` own of the ticket types of the events of the limited
/// ticket types among `ids` (`customer_quantities`; the caller keeps the limited ones), whether
/// any hold is overdue at `now` and the ticket types `ids`. Ids are blobs in SQLite, and JSON
/// holds no blob: they are given in hex.
pub fn sift_read_sqlite(
    ids: &[TicketTypeId],
    pairs: &[(&str, &str)],
    customers: &[&str],
    now: Millis,
) -> Statement {
    let marks = |n: usize| vec!["?"; n].join(", ");
    let customers: BTreeSet<&str> = customers.iter().copied().collect();
    let sql = format!(
        "SELECT ticket_types.*,
                EXISTS (SELECT 1 FROM holds WHERE status = '{active}' AND expires_at <= ? LIMIT 1)
                    AS any_overdue,
                (SELECT json_group_array(json_array(hex(id), customer_id, idempotency_key))
                 FROM holds
                 WHERE customer_id IN ({pair_customers}) AND idempotency_key IN ({keys})) AS made,
                (SELECT json_group_array(
                            json_array(counted.customer_id, hex(counted.ticket_type_id), counted.total))
                 FROM (SELECT holds.customer_id, hold_items.ticket_type_id,
                              sum(CASE WHEN holds.status = '{confirmed}'
                                         OR (holds.status = '{active}' AND holds.expires_at > ?)
                                       THEN hold_items.quantity ELSE 0 END) AS total
                       FROM holds
                       JOIN hold_items ON hold_items.hold_id = holds.id
                       WHERE holds.customer_id IN ({customers})
                         AND holds.event_id IN (SELECT event_id FROM ticket_types
                                                WHERE id IN ({ids}) AND max_per_customer IS NOT NULL)
                       GROUP BY holds.customer_id, hold_items.ticket_type_id) AS counted) AS owned
         FROM (SELECT 1) AS one
         LEFT JOIN ticket_types ON ticket_types.id IN ({ids})",
        pair_customers = marks(pairs.len()),
        keys = marks(pairs.len()),
        customers = marks(customers.len()),
        ids = marks(ids.len()),
        active = HoldStatus::Active.as_str(),
        confirmed = HoldStatus::Confirmed.as_str(),
    );
    // In the order of the marks in the text.
    let mut values: Vec<sea_orm::Value> = vec![now.0.into()];
    values.extend(pairs.iter().map(|(customer, _)| (*customer).into()));
    values.extend(pairs.iter().map(|(_, key)| (*key).into()));
    values.push(now.0.into());
    values.extend(customers.iter().map(|customer| (*customer).into()));
    for _ in 0..2 {
        values.extend(ids.iter().map(|id| id.0.into()));
    }
    Statement::from_sql_and_values(DbBackend::Sqlite, sql, values)
}

/// `holds.status = 'ACTIVE'`, with the status written into the statement, not bound. Given a
/// bound status, the generic plan that PostgreSQL settles on for a prepared statement takes it
/// for as common as the average status; an `EXISTS` over the active holds then looks cheapest
/// as a scan of the whole table, expected to meet one early. On a database with history
/// (ended holds by the million) and no hold overdue, that scan read every row at every sift of
/// a sold-out sale: 121 ms, against 0.05 ms through the `(status, expires_at)` index.
fn is_active() -> Expr {
    let active = format!("'{}'", HoldStatus::Active.as_str());
    Expr::col((hold::Entity, hold::Column::Status)).eq(Expr::cust(active))
}

/// The statements of a batch of holds that join holds to their items, for the tests that read
/// their plans: `overdue_held` and `customer_quantities` (of `customers` in `event`).
pub fn batch_statements(
    backend: DbBackend,
    customers: &[&str],
    event: Uuid,
    now: Millis,
) -> [Statement; 2] {
    [
        overdue_held_select(now).build(backend),
        customer_quantities_select(customers, &[event], now).build(backend),
    ]
}

pub async fn order<C: ConnectionTrait>(conn: &C, id: OrderId) -> StoreResult<Option<Order>> {
    let Some(model) = order::Entity::find_by_id(id.0).one(conn).await? else {
        return Ok(None);
    };
    let items = order_item::Entity::find()
        .filter(order_item::Column::OrderId.eq(model.id))
        .order_by_asc(order_item::Column::TicketTypeId)
        .all(conn)
        .await?;
    Ok(Some(convert::order_of(model, items)))
}

pub async fn order_of_hold<C: ConnectionTrait>(
    conn: &C,
    hold_id: HoldId,
) -> StoreResult<Option<Order>> {
    let found = order::Entity::find()
        .filter(order::Column::HoldId.eq(hold_id.0))
        .one(conn)
        .await?;
    match found {
        Some(model) => order(conn, OrderId(model.id)).await,
        None => Ok(None),
    }
}

/// Recomputes the counters of every ticket type from holds and orders, and checks that every
/// confirmed hold has its order and every order a confirmed hold. With `held_in_db` false (the
/// Redis flow, where held stock lives in Redis) the `held` counters must stay 0.
pub async fn verify<C: ConnectionTrait>(conn: &C, held_in_db: bool) -> StoreResult<Vec<Drift>> {
    let held: BTreeMap<Uuid, i64> = if !held_in_db {
        BTreeMap::new()
    } else {
        hold_item::Entity::find()
            .select_only()
            .column(hold_item::Column::TicketTypeId)
            .column_as(hold_item::Column::Quantity.sum(), "total")
            .inner_join(hold::Entity)
            .filter(hold::Column::Status.eq(HoldStatus::Active.as_str()))
            .group_by(hold_item::Column::TicketTypeId)
            .into_tuple::<(Uuid, Option<i64>)>()
            .all(conn)
            .await?
            .into_iter()
            .map(|(id, total)| (id, total.unwrap_or(0)))
            .collect()
    };
    let sold: BTreeMap<Uuid, i64> = order_item::Entity::find()
        .select_only()
        .column(order_item::Column::TicketTypeId)
        .column_as(order_item::Column::Quantity.sum(), "total")
        .group_by(order_item::Column::TicketTypeId)
        .into_tuple::<(Uuid, Option<i64>)>()
        .all(conn)
        .await?
        .into_iter()
        .map(|(id, total)| (id, total.unwrap_or(0)))
        .collect();
    let mut drifts = Vec::new();
    for tt in ticket_type::Entity::find().all(conn).await? {
        let ticket_type_id = TicketTypeId(tt.id);
        let actual_held = held.get(&tt.id).copied().unwrap_or(0);
        let actual_sold = sold.get(&tt.id).copied().unwrap_or(0);
        if actual_held != i64::from(tt.held) || actual_sold != i64::from(tt.sold) {
            drifts.push(Drift::Counters {
                ticket_type_id,
                counted_sold: tt.sold.into(),
                counted_held: tt.held.into(),
                actual_sold,
                actual_held,
            });
        }
        if i64::from(tt.sold) + i64::from(tt.held) > i64::from(tt.capacity) {
            drifts.push(Drift::OverCapacity {
                ticket_type_id,
                capacity: tt.capacity.into(),
                sold: tt.sold.into(),
                held: tt.held.into(),
            });
        }
    }
    let orphans: Vec<Uuid> = hold::Entity::find()
        .select_only()
        .column(hold::Column::Id)
        .filter(hold::Column::Status.eq(HoldStatus::Confirmed.as_str()))
        .filter(
            hold::Column::Id.not_in_subquery(
                Query::select()
                    .column(order::Column::HoldId)
                    .from(order::Entity)
                    .to_owned(),
            ),
        )
        .into_tuple()
        .all(conn)
        .await?;
    drifts.extend(orphans.into_iter().map(|id| Drift::ConfirmedWithoutOrder {
        hold_id: HoldId(id),
    }));
    let strays: Vec<(Uuid, Uuid)> = order::Entity::find()
        .select_only()
        .column(order::Column::Id)
        .column(order::Column::HoldId)
        .filter(
            order::Column::HoldId.in_subquery(
                Query::select()
                    .column(hold::Column::Id)
                    .from(hold::Entity)
                    .and_where(hold::Column::Status.ne(HoldStatus::Confirmed.as_str()))
                    .to_owned(),
            ),
        )
        .into_tuple()
        .all(conn)
        .await?;
    drifts.extend(
        strays
            .into_iter()
            .map(|(order_id, hold_id)| Drift::OrderOfUnconfirmedHold {
                order_id: OrderId(order_id),
                hold_id: HoldId(hold_id),
            }),
    );
    Ok(drifts)
}
