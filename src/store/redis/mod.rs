//! The Redis flow: holds are Redis keys with a TTL, changed only by atomic Lua scripts (one per
//! operation, run by EVALSHA); the database keeps events, ticket types, orders and the hold
//! journal, and stays the source of truth for capacity and sold.
//!
//! - *Hold*: `hold.lua` reclaims the event's overdue holds, checks `capacity - sold - held` of
//!   every item and the customer's limit, then writes the hold, raises `held`, sets the hold's
//!   TTL'd shadow key and adds it to the event's expiry index. No read-then-write from Rust, no
//!   lock.
//! - *Expiry*: an active hold past its `expires_at` ends once, whoever gets there first:
//!   `change.lua` with `expire` (from the keyspace notification of its shadow key, see
//!   `expiry::keyspace`, or from a read that finds it overdue), or `lib.lua`'s `expire_due`, run
//!   by `sweep.lua` (the timer's sweep of every event's expiry index) and by `hold.lua` and
//!   `stock.lua` before they read the stock.
//! - *Checkout*: pin the hold (it can no longer expire), sell in one database transaction that
//!   double-checks `sold + quantity <= capacity` and writes the order (unique per hold), then
//!   finalize in Redis. Concurrent sales commit together (`sales`), none after its pin's
//!   deadline. A checkout that died between the steps is reconciled by the sweep.
//! - *Durability*: holds are journaled to the database in batches (`journal`). When Redis has
//!   lost an event's state (its `loaded` marker is gone), scripts answer `NOLOAD` and the event is
//!   rebuilt from the database: sold from the counters kept with the orders, active holds from the
//!   journal.
//! - *Events*: every script appends exactly one entry per state change to the event's stream;
//!   `log` reads the streams on every instance and feeds its bus.

mod conn;
pub mod journal;
mod keys_lookup;
pub mod log;
mod sales;
mod scripts;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use entity::{hold, order, order_item, ticket_type};
use futures::StreamExt;
use redis::Value;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect,
    TransactionTrait,
};
use uuid::Uuid;

pub use self::conn::{Conn, Topology};
pub use self::journal::Journal;
use self::keys_lookup::KeysLookup;
use self::sales::{Sale, Sales};
pub use self::scripts::Keys;
use self::scripts::{Scripts, array, hold_of, items_text, pin_of, revision_of, string, strings};
use super::db::{convert, queries};
use super::{Drift, HoldStore, Outcome, StoreError, StoreResult};
use crate::domain::{
    Availability, CheckoutRequest, Event, EventId, Hold, HoldId, HoldRequest, HoldStatus, Limits,
    Millis, NewTicketType, Order, OrderId, Rejection, TicketType, TicketTypeId, TtlSeconds,
};
use crate::expiry::Wakeup;

/// How the Redis flow is set up.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    pub url: String,
    /// Prefix of every key, so that several deployments (or tests) can share one Redis.
    pub namespace: String,
    /// Longest a checkout may keep a hold pinned before the sweep reconciles it.
    pub pin_timeout: Duration,
    /// Longest a journal entry waits before it is written to the database.
    pub journal_interval: Duration,
    /// Bound on every Redis command (connecting included), so that an unreachable Redis gives a
    /// clear error instead of a hang.
    pub command_timeout: Duration,
    /// `url` names a Redis Cluster (implied when it lists several nodes).
    pub cluster: bool,
}

/// How long ended holds, idempotency keys and hold-to-event links stay in Redis (the journal
/// keeps them for ever); the same number as `RETENTION_MS` in `lua/lib.lua`.
const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How often the list of events is read again from the database.
const EVENTS_REFRESH: Duration = Duration::from_secs(1);
/// How long a checkout waits for another checkout of the same hold to finish.
const PINNED_WAIT: Duration = Duration::from_secs(10);
/// Stale pins of one event that the sweep reconciles at once.
const RECONCILED_AT_ONCE: usize = 4;
/// How long the sweep waits for a stale pin's sale to end: a sale still unsettled then is left
/// pinned to the next sweep, so that a commit that hangs never holds up the expiries.
const SETTLE_IN_SWEEP: Duration = Duration::from_millis(100);

pub struct RedisStore {
    db: DatabaseConnection,
    redis: Conn,
    topology: Topology,
    keys: Keys,
    scripts: Scripts,
    wakeup: Arc<Wakeup>,
    limits: Limits,
    journal: Journal,
    settings: RedisSettings,
    /// Every event, for the sweep and the stream reader (refreshed every second).
    events: Mutex<(Option<Instant>, Vec<EventId>)>,
    /// Events seen to exist, for the checks of the hot path.
    known: queries::KnownEvents,
    /// The journal's holds by idempotency key, asked for many holds at once.
    journaled_keys: KeysLookup,
    /// The database half of checkouts, committed together.
    sales: Sales,
}

/// What a change script answered.
enum Changed {
    /// The action applied: the hold after it, and its revision.
    Done(Hold, i64),
    /// The action does not apply to the hold as it stands (`status` as stored, PINNED included).
    Refused {
        status: String,
        hold: Hold,
    },
    NotFound,
}

impl RedisStore {
    /// Connects to Redis (the database is already connected and migrated) and starts the
    /// journal writer.
    pub async fn connect(
        db: DatabaseConnection,
        settings: RedisSettings,
        wakeup: Arc<Wakeup>,
        limits: Limits,
    ) -> StoreResult<RedisStore> {
        let topology = Topology::parse(&settings.url, settings.cluster)?;
        let redis = topology.connect(settings.command_timeout).await?;
        let journal = Journal::start(db.clone(), settings.journal_interval);
        let journaled_keys = KeysLookup::start(db.clone());
        let sales = Sales::start(db.clone());
        Ok(RedisStore {
            db,
            redis,
            topology,
            keys: Keys::new(&settings.namespace),
            scripts: Scripts::new(),
            wakeup,
            limits,
            journal,
            settings,
            events: Mutex::new((None, Vec::new())),
            known: queries::KnownEvents::default(),
            journaled_keys,
            sales,
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn conn(&self) -> Conn {
        self.redis.clone()
    }

    /// Runs a script of `event`; loads the event from the database first if Redis lost it.
    async fn run(
        &self,
        script: &redis::Script,
        event: EventId,
        now: Millis,
        args: &[String],
    ) -> StoreResult<Value> {
        self.run_with_keys(script, event, now, &[], args).await
    }

    /// [`run`](Self::run), with keys beyond the event's `loaded` marker (`KEYS[2]` on).
    async fn run_with_keys(
        &self,
        script: &redis::Script,
        event: EventId,
        now: Millis,
        keys: &[String],
        args: &[String],
    ) -> StoreResult<Value> {
        for _ in 0..3 {
            let mut invocation = script.key(self.keys.loaded(event));
            for key in keys {
                invocation.key(key);
            }
            invocation.arg(self.keys.event(event)).arg(now.0);
            for arg in args {
                invocation.arg(arg);
            }
            let reply: Value = invocation.invoke_async(&mut self.conn()).await?;
            if tag(&reply) != "NOLOAD" {
                return Ok(reply);
            }
            self.load_event(event, now).await?;
        }
        Err(StoreError::Invariant(format!(
            "event {event} cannot be loaded into Redis"
        )))
    }

    /// Loads an event's stock and active holds from the database into Redis, unless another
    /// instance did it first.
    async fn load_event(&self, event: EventId, now: Millis) -> StoreResult<()> {
        // One snapshot for every read, so that a checkout committing meanwhile is counted in
        // all of them or in none.
        let snapshot = if self.db.get_database_backend() == sea_orm::DbBackend::Postgres {
            let level = Some(sea_orm::IsolationLevel::RepeatableRead);
            self.db
                .begin_with_config(level, Some(sea_orm::AccessMode::ReadOnly))
                .await?
        } else {
            self.db.begin().await?
        };
        let args = self.load_args(&snapshot, event, now).await;
        snapshot.rollback().await?;
        let (args, live, lapsed) = args?;
        self.run_load(event, now, args, live, lapsed).await
    }

    /// The arguments of `load.lua` for an event, read from the database at `now`: the script's
    /// arguments, the live holds and the lapsed ones.
    async fn load_args(
        &self,
        snapshot: &sea_orm::DatabaseTransaction,
        event: EventId,
        now: Millis,
    ) -> StoreResult<(Vec<String>, usize, Vec<Hold>)> {
        let types = ticket_type::Entity::find()
            .filter(ticket_type::Column::EventId.eq(event.0))
            .all(snapshot)
            .await?;
        let journaled = hold::Entity::find()
            .filter(hold::Column::EventId.eq(event.0))
            .filter(hold::Column::Status.eq(HoldStatus::Active.as_str()))
            .all(snapshot)
            .await?;
        let ids: Vec<Uuid> = journaled.iter().map(|h| h.id).collect();
        let mut items = queries::hold_items(snapshot, &ids).await?;
        let mut holds = Vec::with_capacity(journaled.len());
        for model in journaled {
            let hold_items = items.remove(&model.id).unwrap_or_default();
            let revision = model.revision;
            holds.push((convert::hold_of(model, hold_items)?, revision));
        }
        // Holds that lapsed while Redis was away are expired now (and announced), not loaded.
        let (live, lapsed): (Vec<journal::Entry>, Vec<journal::Entry>) = holds
            .into_iter()
            .partition(|(hold, _)| hold.expires_at > now);
        let bought = bought_per_customer(snapshot, &types).await?;
        // Versions restart above any version written before (see `Availability::version`).
        let version = now.0.saturating_mul(1000);
        let mut args = vec!["event".to_owned(), types.len().to_string()];
        for tt in &types {
            args.extend([
                tt.id.to_string(),
                tt.capacity.to_string(),
                tt.sold.to_string(),
                tt.max_per_customer.unwrap_or(0).to_string(),
                version.to_string(),
            ]);
        }
        for group in [&live, &lapsed] {
            args.push(group.len().to_string());
            for (hold, revision) in group {
                args.extend([
                    hold.id.to_string(),
                    hold.customer_id.to_string(),
                    hold.created_at.0.to_string(),
                    hold.expires_at.0.to_string(),
                    items_text(&hold.items),
                    hold.idempotency_key.clone().unwrap_or_default(),
                    revision.to_string(),
                ]);
            }
        }
        args.push(bought.len().to_string());
        for (customer, tt, quantity) in bought {
            args.extend([customer, tt.to_string(), quantity.to_string()]);
        }
        let lapsed = lapsed.into_iter().map(|(hold, _)| hold).collect();
        Ok((args, live.len(), lapsed))
    }

    /// Runs `load.lua` with `args`; announces and journals the lapsed holds if it loaded.
    async fn run_load(
        &self,
        event: EventId,
        now: Millis,
        args: Vec<String>,
        live: usize,
        lapsed: Vec<Hold>,
    ) -> StoreResult<()> {
        let mut invocation = self.scripts.load.key(self.keys.loaded(event));
        invocation.arg(self.keys.event(event)).arg(now.0);
        for arg in &args {
            invocation.arg(arg);
        }
        let loaded: i64 = invocation.invoke_async(&mut self.conn()).await?;
        if loaded == 1 {
            tracing::warn!(
                event_id = %event,
                active = live,
                lapsed = lapsed.len(),
                "loaded the event into Redis from the database"
            );
            for mut hold in lapsed {
                hold.status = HoldStatus::Expired;
                hold.ended_at = Some(now);
                // Terminal entries win over any active one whatever their revision.
                self.journal.record(hold, 0).await;
            }
        }
        Ok(())
    }

    /// Adds one ticket type to an event already in Redis (one created after the event loaded).
    async fn load_type(&self, event: EventId, id: TicketTypeId, now: Millis) -> StoreResult<bool> {
        let Some(tt) = ticket_type::Entity::find_by_id(id.0).one(&self.db).await? else {
            return Ok(false);
        };
        if tt.event_id != event.0 {
            return Ok(false);
        }
        let args = [
            "type".to_owned(),
            "1".to_owned(),
            tt.id.to_string(),
            tt.capacity.to_string(),
            tt.sold.to_string(),
            tt.max_per_customer.unwrap_or(0).to_string(),
            now.0.saturating_mul(1000).to_string(),
        ];
        self.run(&self.scripts.load, event, now, &args).await?;
        Ok(true)
    }

    /// Writes the event of a hold, which `event_of` reads.
    async fn remember_event(&self, hold: HoldId, event: EventId) -> StoreResult<()> {
        let _: () = redis::cmd("SET")
            .arg(self.keys.hold_event(hold))
            .arg(event.to_string())
            .arg("PX")
            .arg(RETENTION.as_millis() as u64)
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// The event of a hold: from Redis, or from the journal once Redis forgot it.
    async fn event_of(&self, hold: HoldId) -> StoreResult<Option<EventId>> {
        let found: Option<String> = redis::cmd("GET")
            .arg(self.keys.hold_event(hold))
            .query_async(&mut self.conn())
            .await?;
        if let Some(event) = found.and_then(|e| e.parse().ok()) {
            return Ok(Some(event));
        }
        let journaled = hold::Entity::find_by_id(hold.0).one(&self.db).await?;
        Ok(journaled.map(|h| EventId(h.event_id)))
    }

    /// Runs `action` on a hold through `change.lua`.
    async fn change(
        &self,
        event: EventId,
        id: HoldId,
        action: &str,
        now: Millis,
        extra: Option<String>,
    ) -> StoreResult<Changed> {
        let mut args = vec![id.to_string(), action.to_owned()];
        args.extend(extra);
        let reply = self.run(&self.scripts.change, event, now, &args).await?;
        let values = strings(&reply);
        match values.first().map(String::as_str) {
            Some("OK") => {
                let (hold, _) = hold_of(&values[1..])?;
                Ok(Changed::Done(hold, revision_of(&values[1..])))
            }
            Some("STATUS") => {
                let status = values.get(1).cloned().unwrap_or_default();
                let (hold, _) = hold_of(&values[2..])?;
                Ok(Changed::Refused { status, hold })
            }
            Some("NOT_FOUND") => Ok(Changed::NotFound),
            _ => Err(StoreError::Invariant(format!("unexpected reply {reply:?}"))),
        }
    }

    /// Runs `action` on an active hold (extend, release), waiting out a checkout in flight.
    /// An extension (`extend_by`) needs the hold's creation time for its lifetime cap, so only
    /// then is the hold read first.
    async fn change_active(
        &self,
        id: HoldId,
        action: &str,
        now: Millis,
        extend_by: Option<TtlSeconds>,
    ) -> StoreResult<Outcome<Hold>> {
        let Some(event) = self.event_of(id).await? else {
            return Ok(Err(Rejection::NotFound { what: "hold" }));
        };
        let deadline = Instant::now() + PINNED_WAIT;
        loop {
            let extra = match extend_by {
                None => None,
                Some(ttl) => match self.read_hold(event, id).await? {
                    Some((hold, _)) => {
                        Some(hold.extended_expiry(now, ttl, &self.limits).0.to_string())
                    }
                    None => return Ok(Err(self.journaled_refusal(id, now).await?)),
                },
            };
            match self.change(event, id, action, now, extra).await? {
                Changed::Done(hold, revision) => {
                    self.journal.record(hold.clone(), revision).await;
                    if action == "extend" {
                        self.wakeup.schedule(hold.expires_at);
                    }
                    return Ok(Ok(hold));
                }
                Changed::Refused { status, .. } if status == "PINNED" => {
                    if Instant::now() >= deadline {
                        return Err(busy());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Changed::Refused { hold, .. } => return Ok(Err(refusal(&hold, now))),
                Changed::NotFound => return Ok(Err(self.journaled_refusal(id, now).await?)),
            }
        }
    }

    /// The refusal for a hold that Redis no longer has: what the journal says of it.
    async fn journaled_refusal(&self, id: HoldId, now: Millis) -> StoreResult<Rejection> {
        Ok(match self.journaled_hold(id).await? {
            Some(hold) if hold.status.is_terminal() => refusal(&hold, now),
            // Journaled as active but gone from Redis: it was lost with Redis's data after its
            // expiry (a live one would have been loaded back).
            Some(_) => Rejection::HoldExpired,
            None => Rejection::NotFound { what: "hold" },
        })
    }

    async fn journaled_hold(&self, id: HoldId) -> StoreResult<Option<Hold>> {
        let Some(model) = hold::Entity::find_by_id(id.0).one(&self.db).await? else {
            return Ok(None);
        };
        let mut items = queries::hold_items(&self.db, &[model.id]).await?;
        let items = items.remove(&model.id).unwrap_or_default();
        Ok(Some(convert::hold_of(model, items)?))
    }

    /// A hold as Redis has it, and whether it is pinned.
    async fn read_hold(&self, event: EventId, id: HoldId) -> StoreResult<Option<(Hold, bool)>> {
        let fields = self.hold_fields(event, id).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(hold_of(&fields)?))
    }

    /// A pinned hold as Redis has it, with its pin's stamp; `None` unless it is pinned.
    async fn read_pin(&self, event: EventId, id: HoldId) -> StoreResult<Option<(Hold, String)>> {
        let fields = self.hold_fields(event, id).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let (hold, pinned) = hold_of(&fields)?;
        Ok(pin_of(&fields).filter(|_| pinned).map(|pin| (hold, pin)))
    }

    async fn hold_fields(&self, event: EventId, id: HoldId) -> StoreResult<Vec<String>> {
        let fields = redis::cmd("HGETALL")
            .arg(self.keys.hold(event, id))
            .query_async(&mut self.conn())
            .await?;
        Ok(fields)
    }

    /// The events to sweep and read, from the database, refreshed every second.
    pub async fn known_events(&self) -> StoreResult<Vec<EventId>> {
        {
            let cache = self.events.lock().unwrap_or_else(|e| e.into_inner());
            if cache.0.is_some_and(|at| at.elapsed() < EVENTS_REFRESH) {
                return Ok(cache.1.clone());
            }
        }
        let ids: Vec<Uuid> = entity::event::Entity::find()
            .select_only()
            .column(entity::event::Column::Id)
            .into_tuple()
            .all(&self.db)
            .await?;
        let ids: Vec<EventId> = ids.into_iter().map(EventId).collect();
        *self.events.lock().unwrap_or_else(|e| e.into_inner()) =
            (Some(Instant::now()), ids.clone());
        Ok(ids)
    }

    fn forget_events(&self) {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).0 = None;
    }

    /// Expires one hold if it is due (`get_hold` finding it overdue).
    pub async fn expire_one(&self, event: EventId, id: HoldId, now: Millis) -> StoreResult<bool> {
        match self.change(event, id, "expire", now, None).await? {
            Changed::Done(hold, revision) => {
                tracing::info!(hold_id = %id, lag_ms = (now - hold.expires_at).0, "hold expired");
                self.journal.record(hold, revision).await;
                Ok(true)
            }
            Changed::Refused { .. } | Changed::NotFound => Ok(false),
        }
    }

    /// Expires every due hold of one event (what a burst of keyspace notifications names), in
    /// batches of `batch_max`; how many.
    pub async fn expire_event_due(
        &self,
        event: EventId,
        now: Millis,
        batch_max: u32,
    ) -> StoreResult<usize> {
        let mut total = 0;
        loop {
            let expired = self.sweep(event, now, batch_max).await?.len();
            total += expired;
            if expired < batch_max as usize {
                return Ok(total);
            }
        }
    }

    /// Sweeps one event: expires its overdue holds, reconciles stale pins, and returns the
    /// expired holds.
    async fn sweep(&self, event: EventId, now: Millis, batch_max: u32) -> StoreResult<Vec<Hold>> {
        let stale_before = now - Millis(self.settings.pin_timeout.as_millis() as i64);
        let args = [batch_max.to_string(), stale_before.0.to_string()];
        let reply = self.run(&self.scripts.sweep, event, now, &args).await?;
        let parts = array(&reply);
        let mut expired = Vec::new();
        for fields in parts.iter().skip(2) {
            let fields = strings(fields);
            let (hold, _) = hold_of(&fields)?;
            tracing::info!(hold_id = %hold.id, lag_ms = (now - hold.expires_at).0, "hold expired");
            self.journal
                .record(hold.clone(), revision_of(&fields))
                .await;
            expired.push(hold);
        }
        // A few at a time, each waiting briefly for its sale to end; logged, not returned, so
        // that the holds expired above are still announced.
        let stale = parts.get(1).map(strings).unwrap_or_default();
        let stale = stale.iter().filter_map(|id| id.parse::<HoldId>().ok());
        futures::stream::iter(stale)
            .for_each_concurrent(RECONCILED_AT_ONCE, |id| async move {
                if let Err(error) = self.reconcile_pin(event, id, now).await {
                    tracing::warn!(error = %crate::error_chain(&error), hold_id = %id, "a pinned hold stays pinned: whether its sale committed is unknown");
                }
            })
            .await;
        Ok(expired)
    }

    /// A checkout died between pinning a hold and finalizing it, or did not learn whether its
    /// sale committed: finish it if its order was committed, give the hold back (that pin only)
    /// once no sale of it can commit any more (see `sales::settle`), and leave it pinned while
    /// that is still unknown, to the next sweep.
    async fn reconcile_pin(&self, event: EventId, id: HoldId, now: Millis) -> StoreResult<()> {
        let Some((hold, pin)) = self.read_pin(event, id).await? else {
            return Ok(());
        };
        let by = tokio::time::Instant::now() + SETTLE_IN_SWEEP;
        let ordered = sales::settle(&self.db, &[&hold], by).await?;
        let (action, extra) = match ordered.first() {
            Some(Some(_)) => ("finalize", None),
            _ => ("unpin", Some(pin)),
        };
        tracing::warn!(hold_id = %id, action, "reconciling a checkout that did not finish");
        if let Changed::Done(hold, revision) = self.change(event, id, action, now, extra).await? {
            self.journal.record(hold, revision).await;
        }
        Ok(())
    }

    /// The Redis half of a committed checkout. Its failure is logged, not answered: the order
    /// exists, and the sweep finalizes a hold left pinned.
    async fn finalize(&self, event: EventId, id: HoldId, now: Millis) {
        match self.change(event, id, "finalize", now, None).await {
            Ok(Changed::Done(hold, revision)) => self.journal.record(hold, revision).await,
            // Redis ended the hold otherwise (it lost a pin with its data, and the hold was
            // reloaded and then expired or released): its tickets count as free there while the
            // database sold them. The double check at each sale still refuses any oversell.
            Ok(Changed::Refused { status, .. }) if status != "CONFIRMED" => tracing::error!(
                hold_id = %id,
                status,
                "a sold hold ended otherwise in Redis; `tickethold verify` reports the drift"
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(
                error = %crate::error_chain(&error),
                hold_id = %id,
                "finalizing a confirmed hold failed; the sweep will"
            ),
        }
    }

    /// Every Redis-side difference of one event: counters against the holds Redis has.
    async fn verify_event(&self, event: EventId) -> StoreResult<Vec<Drift>> {
        let mut conn = self.conn();
        let loaded: bool = redis::cmd("EXISTS")
            .arg(self.keys.loaded(event))
            .query_async(&mut conn)
            .await?;
        if !loaded {
            return Ok(Vec::new());
        }
        let mut ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.keys.expiry(event))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        let pinned: Vec<String> = redis::cmd("ZRANGE")
            .arg(self.keys.pinned(event))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        ids.extend(pinned);
        let mut held: BTreeMap<TicketTypeId, i64> = BTreeMap::new();
        for id in ids.iter().filter_map(|id| id.parse::<HoldId>().ok()) {
            if let Some((hold, _)) = self.read_hold(event, id).await?
                && hold.status == HoldStatus::Active
            {
                for item in &hold.items {
                    *held.entry(item.ticket_type_id).or_default() += i64::from(item.quantity);
                }
            }
        }
        let types = ticket_type::Entity::find()
            .filter(ticket_type::Column::EventId.eq(event.0))
            .all(&self.db)
            .await?;
        let mut drifts = Vec::new();
        for tt in types {
            let fields: Vec<Option<i64>> = redis::cmd("HMGET")
                .arg(self.keys.ticket_type(event, TicketTypeId(tt.id)))
                .arg("capacity")
                .arg("sold")
                .arg("held")
                .query_async(&mut conn)
                .await?;
            let [Some(capacity), Some(sold), Some(counted_held)] = fields[..] else {
                continue;
            };
            let id = TicketTypeId(tt.id);
            let actual_held = held.get(&id).copied().unwrap_or(0);
            if sold != i64::from(tt.sold) || counted_held != actual_held {
                drifts.push(Drift::Counters {
                    ticket_type_id: id,
                    counted_sold: sold,
                    counted_held,
                    actual_sold: tt.sold.into(),
                    actual_held,
                });
            }
            if sold + counted_held > capacity {
                drifts.push(Drift::OverCapacity {
                    ticket_type_id: id,
                    capacity,
                    sold,
                    held: counted_held,
                });
            }
        }
        Ok(drifts)
    }
}

fn is_unique_violation(error: &sea_orm::DbErr) -> bool {
    matches!(
        error.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

/// The first string of a script's reply.
fn tag(reply: &Value) -> String {
    array(reply).first().and_then(string).unwrap_or_default()
}

/// The refusal of an idempotency key that a hold of another event has.
fn key_of_another_event() -> Rejection {
    Rejection::Invalid(crate::domain::InvalidInput::new(
        "idempotencyKey was already used for a different hold",
    ))
}

/// Why an action does not apply to `hold` at `now`.
fn refusal(hold: &Hold, now: Millis) -> Rejection {
    match hold.check_active(now) {
        Err(rejection) => rejection,
        Ok(()) => Rejection::HoldNotActive {
            status: hold.status,
        },
    }
}

#[async_trait::async_trait]
impl HoldStore for RedisStore {
    async fn ping(&self) -> StoreResult<()> {
        self.db.ping().await?;
        let _: String = redis::cmd("PING").query_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn create_event(&self, name: String, now: Millis) -> StoreResult<Event> {
        let model = entity::event::ActiveModel {
            id: Set(EventId::random().0),
            name: Set(name),
            created_at: Set(now.0),
        };
        let model = entity::event::Entity::insert(model)
            .exec_with_returning(&self.db)
            .await?;
        self.forget_events();
        Ok(convert::event_of(model))
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
            // Into Redis now if the event is there already (else when it loads).
            let loaded: bool = redis::cmd("EXISTS")
                .arg(self.keys.loaded(tt.event_id))
                .query_async(&mut self.conn())
                .await?;
            if loaded {
                self.load_type(tt.event_id, tt.id, now).await?;
            }
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
        let Some(tt) = queries::ticket_type(&self.db, id).await? else {
            return Ok(None);
        };
        let stock = self.stock(tt.event_id, &[id], now).await?;
        Ok(stock.into_iter().next())
    }

    async fn event_availability(
        &self,
        event_id: EventId,
        now: Millis,
    ) -> StoreResult<Vec<Availability>> {
        let types = queries::ticket_types_of_event(&self.db, event_id).await?;
        let ids: Vec<TicketTypeId> = types.iter().map(|t| t.id).collect();
        self.stock(event_id, &ids, now).await
    }

    async fn hold(&self, request: HoldRequest, now: Millis) -> StoreResult<Outcome<Hold>> {
        if !self.known.exists(&self.db, request.event_id).await? {
            return Ok(Err(Rejection::NotFound { what: "event" }));
        }
        let id = HoldId::random();
        let expires_at = now + request.ttl.as_millis();
        let mut args = vec![
            id.to_string(),
            request.customer_id.to_string(),
            expires_at.0.to_string(),
            request.idempotency_key.clone().unwrap_or_default(),
            request.event_id.to_string(),
        ];
        for (ticket_type, quantity) in &request.items {
            args.extend([ticket_type.to_string(), quantity.get().to_string()]);
        }
        if !self.topology.is_cluster() {
            return self.hold_on_one_node(&request, id, now, &args).await;
        }
        let claimed = match self.claim_idempotency_key(&request).await? {
            Ok(claimed) => claimed,
            Err(rejection) => return Ok(Err(rejection)),
        };
        if claimed {
            // New to Redis, but perhaps not to the journal (a retry after Redis forgot the key:
            // its retention ran out, or it lost its data).
            if let Some(found) = self.journaled_by_key(&request).await? {
                return Ok(request.retry_of(found));
            }
        }
        let held = self.run_hold(&request, now, &[], &args).await;
        if let Ok(Ok(hold)) = &held {
            // Written once the hold exists, so that a refused hold (most of a flash sale)
            // costs no round trip for it; nobody knows the id before the answer.
            self.remember_event(hold.id, hold.event_id).await?;
        }
        if claimed && matches!(held, Ok(Err(_))) {
            // No hold was made under the key: free it, as the database flow would.
            let key = request.idempotency_key.as_deref().unwrap_or_default();
            let _: Result<(), _> = redis::cmd("DEL")
                .arg(self.keys.idempotency(request.customer_id.as_str(), key))
                .query_async(&mut self.conn())
                .await;
        }
        held
    }

    async fn extend(&self, id: HoldId, ttl: TtlSeconds, now: Millis) -> StoreResult<Outcome<Hold>> {
        let extended = self.change_active(id, "extend", now, Some(ttl)).await?;
        if let Ok(hold) = &extended {
            tracing::info!(hold_id = %hold.id, expires_at = hold.expires_at.0, "hold extended");
        }
        Ok(extended)
    }

    async fn release(&self, id: HoldId, now: Millis) -> StoreResult<Outcome<Hold>> {
        let released = self.change_active(id, "release", now, None).await?;
        if let Ok(hold) = &released {
            tracing::info!(hold_id = %hold.id, "hold released");
        }
        Ok(released)
    }

    async fn checkout(&self, request: CheckoutRequest, now: Millis) -> StoreResult<Outcome<Order>> {
        let id = request.hold_id;
        let Some(event) = self.event_of(id).await? else {
            return Ok(Err(Rejection::NotFound { what: "hold" }));
        };
        let started = Instant::now();
        let deadline = started + PINNED_WAIT;
        loop {
            // A pin is stamped with when it is made, not with the request's instant (it may
            // have waited for another checkout): the sweep counts the pin timeout from it.
            let pin = now + Millis(started.elapsed().as_millis() as i64);
            let pinned = match self.change(event, id, "pin", pin, None).await? {
                Changed::Done(hold, _) => hold,
                Changed::Refused { status, hold } => match status.as_str() {
                    "CONFIRMED" => {
                        let order = queries::order_of_hold(&self.db, id).await?;
                        return order.map(|o| Ok(Ok(o))).unwrap_or_else(|| {
                            Err(StoreError::Invariant(format!("hold {id} has no order")))
                        });
                    }
                    // Another checkout of this hold is in flight: wait for its outcome.
                    "PINNED" if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    "PINNED" => return Err(busy()),
                    _ => return Ok(Err(refusal(&hold, now))),
                },
                Changed::NotFound => {
                    if let Some(order) = queries::order_of_hold(&self.db, id).await? {
                        return Ok(Ok(order));
                    }
                    return Ok(Err(self.journaled_refusal(id, now).await?));
                }
            };
            // The sale reaches its commit within a third of the pin timeout, and the commit
            // answers within two; one unanswered then is waited out until the pin timeout (see
            // `sales`). A sale that can still commit is then one whose hold stays pinned.
            let third = self.settings.pin_timeout / 3;
            let pinned_at = tokio::time::Instant::now();
            let times = sales::Deadlines {
                commit_sent: pinned_at + third,
                committed: pinned_at + 2 * third,
                settled: pinned_at + self.settings.pin_timeout,
            };
            let unpin = Some(pin.0.to_string());
            let order = match self.sales.sell(pinned, request, now, times).await {
                Ok(Sale::Sold(order)) => order,
                Ok(Sale::Refused(rejection)) => {
                    self.change(event, id, "unpin", now, unpin).await?;
                    return Ok(Err(rejection));
                }
                Ok(Sale::NotSold(error)) => {
                    self.change(event, id, "unpin", now, unpin).await.ok();
                    return Err(error);
                }
                // It may yet commit: the hold stays pinned, until the sweep settles it.
                Err(error) => return Err(error),
            };
            self.finalize(event, id, now).await;
            tracing::info!(hold_id = %id, order_id = %order.id, "hold confirmed");
            return Ok(Ok(order));
        }
    }

    async fn get_hold(&self, id: HoldId, now: Millis) -> StoreResult<Option<Hold>> {
        let Some(event) = self.event_of(id).await? else {
            return Ok(None);
        };
        let Some((hold, pinned)) = self.read_hold(event, id).await? else {
            return self.journaled_hold(id).await;
        };
        if hold.status == HoldStatus::Active && !pinned && now >= hold.expires_at {
            self.expire_one(event, id, now).await?;
            return Ok(self.read_hold(event, id).await?.map(|(hold, _)| hold));
        }
        Ok(Some(hold))
    }

    async fn get_order(&self, id: OrderId) -> StoreResult<Option<Order>> {
        queries::order(&self.db, id).await
    }

    async fn order_of_hold(&self, hold_id: HoldId) -> StoreResult<Option<Order>> {
        queries::order_of_hold(&self.db, hold_id).await
    }

    async fn expire_due(&self, now: Millis, batch_max: u32) -> StoreResult<Vec<Hold>> {
        let mut expired = Vec::new();
        for event in self.known_events().await? {
            // One event failing does not keep the others from expiring.
            let holds = match self.sweep(event, now, batch_max).await {
                Ok(holds) => holds,
                Err(error) => {
                    tracing::warn!(error = %crate::error_chain(&error), event_id = %event, "sweeping an event failed");
                    continue;
                }
            };
            expired.extend(holds);
            if expired.len() >= batch_max as usize {
                break;
            }
        }
        Ok(expired)
    }

    async fn next_expiry(&self) -> StoreResult<Option<Millis>> {
        let events = self.known_events().await?;
        if events.is_empty() {
            return Ok(None);
        }
        let key = |event: &EventId| self.keys.expiry(*event);
        let firsts: Vec<Vec<(String, f64)>> = if self.topology.is_cluster() {
            // A cluster pipeline cannot span slots: one read per event.
            let reads = events.iter().map(|event| async move {
                let mut conn = self.conn();
                redis::cmd("ZRANGE")
                    .arg(key(event))
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES")
                    .query_async(&mut conn)
                    .await
            });
            futures::future::try_join_all(reads).await?
        } else {
            let mut pipe = redis::pipe();
            for event in &events {
                pipe.cmd("ZRANGE")
                    .arg(key(event))
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES");
            }
            pipe.query_async(&mut self.conn()).await?
        };
        Ok(firsts
            .into_iter()
            .flatten()
            .map(|(_, at)| Millis(at as i64))
            .min())
    }

    async fn verify(&self) -> StoreResult<Vec<Drift>> {
        let mut drifts = queries::verify(&self.db, false).await?;
        for event in self.known_events().await? {
            drifts.extend(self.verify_event(event).await?);
        }
        Ok(drifts)
    }
}

impl RedisStore {
    /// Runs the hold script until it answers (loading a ticket type that is missing from
    /// Redis at most once).
    async fn run_hold(
        &self,
        request: &HoldRequest,
        now: Millis,
        keys: &[String],
        args: &[String],
    ) -> StoreResult<Outcome<Hold>> {
        let mut loaded_types = HashSet::new();
        loop {
            let reply = self
                .run_with_keys(&self.scripts.hold, request.event_id, now, keys, args)
                .await?;
            let values = strings(&reply);
            let field = |i: usize| values.get(i).cloned().unwrap_or_default();
            let number = |i: usize| field(i).parse::<i64>().unwrap_or(0).max(0) as u32;
            let ticket_type_id = || field(1).parse::<TicketTypeId>();
            return match values.first().map(String::as_str) {
                Some("OK") => {
                    let (hold, _) = hold_of(&values[1..])?;
                    self.journal
                        .record(hold.clone(), revision_of(&values[1..]))
                        .await;
                    self.wakeup.schedule(hold.expires_at);
                    tracing::info!(hold_id = %hold.id, event_id = %hold.event_id, "hold created");
                    Ok(Ok(hold))
                }
                Some("EXISTS") => {
                    let existing: HoldId = field(1).parse().map_err(|_| {
                        StoreError::Invariant("bad idempotency entry in Redis".into())
                    })?;
                    // Its event is this request's; written again in case the first answer
                    // never went out (the hold made, its event not yet written).
                    self.remember_event(existing, request.event_id).await?;
                    match self.get_hold(existing, now).await? {
                        Some(hold) => Ok(request.retry_of(hold)),
                        None => Err(StoreError::Invariant(format!("hold {existing} vanished"))),
                    }
                }
                Some("OTHER_EVENT") => Ok(Err(key_of_another_event())),
                Some("LIMIT") => Ok(Err(Rejection::LimitExceeded {
                    ticket_type_id: ticket_type_id().map_err(|_| bad_reply(&values))?,
                    max_per_customer: number(2),
                    already: number(3),
                })),
                Some("SOLD_OUT") => Ok(Err(Rejection::SoldOut {
                    ticket_type_id: ticket_type_id().map_err(|_| bad_reply(&values))?,
                    available: number(2),
                })),
                Some("NOTYPE") => {
                    let missing = ticket_type_id().map_err(|_| bad_reply(&values))?;
                    if loaded_types.insert(missing)
                        && self.load_type(request.event_id, missing, now).await?
                    {
                        continue;
                    }
                    Ok(Err(Rejection::NotFound {
                        what: "ticket type",
                    }))
                }
                _ => Err(bad_reply(&values)),
            };
        }
    }

    /// The journaled hold of this request's customer and idempotency key, if any.
    async fn journaled_by_key(&self, request: &HoldRequest) -> StoreResult<Option<Hold>> {
        let Some(key) = &request.idempotency_key else {
            return Ok(None);
        };
        match self.journaled_keys.find(&request.customer_id, key).await? {
            Some(id) => self.journaled_hold(HoldId(id)).await,
            None => Ok(None),
        }
    }

    /// Claims the customer's idempotency key for this request's event, across events: `Ok(true)`
    /// if this call claimed it, `Ok(false)` if it was this event's already (or there is no key),
    /// a rejection if another event's hold has it.
    async fn claim_idempotency_key(&self, request: &HoldRequest) -> StoreResult<Outcome<bool>> {
        let Some(key) = &request.idempotency_key else {
            return Ok(Ok(false));
        };
        let global = self.keys.idempotency(request.customer_id.as_str(), key);
        let event = request.event_id.to_string();
        let claimed: Option<String> = redis::cmd("SET")
            .arg(&global)
            .arg(&event)
            .arg("NX")
            .arg("PX")
            .arg(RETENTION.as_millis() as u64)
            .query_async(&mut self.conn())
            .await?;
        if claimed.is_some() {
            return Ok(Ok(true));
        }
        let owner: Option<String> = redis::cmd("GET")
            .arg(&global)
            .query_async(&mut self.conn())
            .await?;
        if owner.is_none_or(|owner| owner == event) {
            return Ok(Ok(false));
        }
        Ok(Err(key_of_another_event()))
    }

    /// A hold on a single Redis: the script claims the idempotency key across events and links
    /// the hold to its event itself, so that a hold, made or refused, costs one round trip to
    /// Redis (a cluster keeps those keys in other slots: see `claim_idempotency_key`). A key
    /// new to Redis may still be in the journal (a retry after Redis forgot it: its retention
    /// ran out, or it lost its data), so the journal is asked first; concurrent requests with
    /// one new key then meet in the script, which lets the first make the hold.
    async fn hold_on_one_node(
        &self,
        request: &HoldRequest,
        id: HoldId,
        now: Millis,
        args: &[String],
    ) -> StoreResult<Outcome<Hold>> {
        let mut keys = vec![self.keys.hold_event(id)];
        if let Some(key) = &request.idempotency_key {
            if let Some(found) = self.journaled_by_key(request).await? {
                return Ok(request.retry_of(found));
            }
            keys.push(self.keys.idempotency(request.customer_id.as_str(), key));
        }
        self.run_hold(request, now, &keys, args).await
    }

    /// The stock of some ticket types of an event, after reclaiming its overdue holds.
    async fn stock(
        &self,
        event: EventId,
        ids: &[TicketTypeId],
        now: Millis,
    ) -> StoreResult<Vec<Availability>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let args: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let mut reply = self.run(&self.scripts.stock, event, now, &args).await?;
        if array(&reply)
            .iter()
            .skip(1)
            .any(|v| array(v).iter().all(|f| matches!(f, Value::Nil)))
        {
            // A ticket type created after its event was loaded: add it and read again.
            for id in ids {
                self.load_type(event, *id, now).await?;
            }
            reply = self.run(&self.scripts.stock, event, now, &args).await?;
        }
        let mut stock = Vec::with_capacity(ids.len());
        for (id, counters) in ids.iter().zip(array(&reply).iter().skip(1)) {
            let numbers: Vec<i64> = array(counters)
                .iter()
                .map(|v| string(v).and_then(|s| s.parse().ok()).unwrap_or(0))
                .collect();
            let [capacity, sold, held, version] = numbers[..] else {
                continue;
            };
            stock.push(Availability {
                ticket_type_id: *id,
                event_id: event,
                capacity: capacity.max(0) as u32,
                sold: sold.max(0) as u32,
                held: held.max(0) as u32,
                version,
            });
        }
        Ok(stock)
    }
}

/// Tickets each customer bought of these ticket types: (customer, ticket type, quantity).
async fn bought_per_customer<C: sea_orm::ConnectionTrait>(
    conn: &C,
    types: &[ticket_type::Model],
) -> StoreResult<Vec<(String, Uuid, i64)>> {
    let rows: Vec<(String, Uuid, Option<i64>)> = order_item::Entity::find()
        .select_only()
        .column(order::Column::CustomerId)
        .column(order_item::Column::TicketTypeId)
        .column_as(order_item::Column::Quantity.sum(), "total")
        .inner_join(order::Entity)
        .filter(order_item::Column::TicketTypeId.is_in(types.iter().map(|t| t.id)))
        .group_by(order::Column::CustomerId)
        .group_by(order_item::Column::TicketTypeId)
        .into_tuple()
        .all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(c, t, q)| (c, t, q.unwrap_or(0)))
        .collect())
}

/// A checkout of the hold is still in flight: the client should try again shortly.
fn busy() -> StoreError {
    StoreError::Unavailable("a checkout of this hold is still in progress".into())
}

fn bad_reply(values: &[String]) -> StoreError {
    StoreError::Invariant(format!("unexpected reply from Redis: {values:?}"))
}
