//! The seeded model test: random sequences of holds, extensions, releases, checkouts, reads,
//! expiry sweeps and clock ticks drive the database store directly (no HTTP) and, side by side,
//! `Model`, a plain in-memory statement of the hold rules, over one event whose ticket types
//! are few and small (a new round of them every `RESTOCK_EVERY` steps, once the last is sold).
//! Time is moved by hand (every store method takes `now`), so nothing sleeps. After every step
//! the outcome (which rejection, with its numbers) must be the model's, `verify` must find no
//! drift, every ticket type's availability must be the model's (`sold + held <= capacity`), and
//! every hold must read back with the model's status, expiry and end time. An active hold past
//! its `expires_at` is read with `get_hold` (which expires it, and every other due hold, on the
//! way) on one step in eight; on the others its row is read directly, so that overdue holds
//! whose expiry is not written yet survive into later steps, where holds (which reclaim them
//! when sold out), extensions, checkouts and sweeps meet them. At the end every hold must be in
//! exactly one state and every confirmed hold must have exactly one order.
//!
//! The seed comes from `TICKETHOLD_SEED` or is random; a failing run prints it with its last
//! steps. A rerun with it replays the same operations, up to choices that hang on the store's
//! random ids (which of two ticket types a hold checks first, which of several holds expiring
//! at the same instant a partial sweep takes).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use entity::{hold, order};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use tickethold::domain::{
    CheckoutRequest, CustomerId, EventId, Hold, HoldId, HoldRequest, HoldStatus, Limits, Millis,
    NewTicketType, Order, OrderId, Rejection, TicketTypeId, TtlSeconds,
};
use tickethold::store::HoldStore;
use tickethold::store::db::DbStore;

use crate::support::TestDb;

const START: Millis = Millis(1_700_000_000_000);
const STEPS: usize = 300;
const SQLITE_SEEDS: u64 = 4;
const CUSTOMERS: usize = 4;
/// Capacity, `max_per_customer` and price in cents of each ticket type.
const TYPES: [(u32, Option<u32>, i64); 3] =
    [(5, None, 1_000), (8, Some(3), 2_500), (3, None, 4_000)];
/// Steps between two rounds of new ticket types (the earlier ones are mostly sold by then).
const RESTOCK_EVERY: usize = 50;
/// Trace lines printed when a run fails.
const TRACE_SHOWN: usize = 60;

fn limits() -> Limits {
    Limits {
        hold_ttl_secs_default: 10,
        hold_ttl_secs_max: 30,
        hold_lifetime_secs_max: 40,
        quantity_max: 4,
        ..Limits::default()
    }
}

fn base_seed() -> u64 {
    match std::env::var("TICKETHOLD_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("TICKETHOLD_SEED={s} is not a u64")),
        Err(_) => rand::rng().random(),
    }
}

fn customer_name(customer: usize) -> String {
    format!("customer-{customer}")
}

#[tokio::test(flavor = "multi_thread")]
async fn model_sqlite() {
    let base = base_seed();
    let tasks: Vec<_> = (0..SQLITE_SEEDS)
        .map(|i| {
            let seed = base.wrapping_add(i);
            let task = tokio::spawn(async move {
                let db = TestDb::sqlite();
                run(&db, seed).await;
            });
            (seed, task)
        })
        .collect();
    let mut failed = Vec::new();
    for (seed, task) in tasks {
        if task.await.is_err() {
            failed.push(seed);
        }
    }
    assert!(
        failed.is_empty(),
        "the model test failed on SQLite for seeds {failed:?} (rerun with TICKETHOLD_SEED=N)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn model_postgres() {
    let db = TestDb::postgres().await;
    run(&db, base_seed()).await;
}

async fn run(db: &TestDb, seed: u64) {
    let (store, _bus) = db.store(limits()).await;
    let mut run = Run::setup(store, db.kind(), seed).await;
    let mut rng = StdRng::seed_from_u64(seed);
    for n in 0..STEPS {
        let op = match n > 0 && n % RESTOCK_EVERY == 0 {
            true => Op::Restock,
            false => Op::random(&mut rng, &run.model, run.now),
        };
        let full = rng.random_ratio(1, 8);
        run.step(n, op, full).await;
    }
    run.finish().await;
}

/// Ticket type index (in creation order: `TYPES`, then a new round every `RESTOCK_EVERY`
/// steps) to quantity.
type Items = BTreeMap<usize, u32>;

/// What a store call may answer, with the numbers a rejection carries.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Ok,
    Invalid,
    NotFound,
    HoldExpired,
    HoldNotActive(HoldStatus),
    LimitExceeded { ticket_type: usize, already: u32 },
    SoldOut { ticket_type: usize, available: u32 },
}

/// One step of a run.
#[derive(Clone, Debug)]
enum Op {
    Hold {
        customer: usize,
        items: Items,
        ttl: u32,
        key: Option<String>,
    },
    Extend {
        hold: HoldId,
        ttl: u32,
    },
    Release {
        hold: HoldId,
    },
    Checkout {
        hold: HoldId,
        twice: bool,
    },
    Get {
        hold: HoldId,
    },
    Tick {
        to: Millis,
    },
    ExpireDue {
        batch: u32,
    },
    /// A new round of ticket types (`TYPES`), which later holds ask for.
    Restock,
}

impl Op {
    fn random(rng: &mut StdRng, model: &Model, now: Millis) -> Op {
        match rng.random_range(0..100) {
            0..32 => Op::random_hold(rng, model),
            32..46 => Op::Extend {
                hold: pick_hold(rng, model),
                ttl: rng.random_range(1..=30),
            },
            46..53 => Op::Release {
                hold: pick_hold(rng, model),
            },
            53..63 => Op::Checkout {
                hold: pick_hold(rng, model),
                twice: rng.random_ratio(1, 3),
            },
            63..67 => Op::Get {
                hold: pick_hold(rng, model),
            },
            67..87 => Op::Tick {
                to: tick_target(rng, model, now),
            },
            _ => Op::ExpireDue {
                batch: rng.random_range(1..=3),
            },
        }
    }

    /// A new request, or (one time in four) a customer's earlier keyed request again: mostly a
    /// true retry, sometimes the same key with other items.
    fn random_hold(rng: &mut StdRng, model: &Model) -> Op {
        let customer = rng.random_range(0..CUSTOMERS);
        let ttl = rng.random_range(1..=30);
        let asked = &model.asked[customer];
        if !asked.is_empty() && rng.random_ratio(1, 4) {
            let (items, key) = asked[rng.random_range(0..asked.len())].clone();
            let items = if rng.random_ratio(4, 5) {
                items
            } else {
                random_items(rng, model)
            };
            return Op::Hold {
                customer,
                items,
                ttl,
                key: Some(key),
            };
        }
        let items = random_items(rng, model);
        let key = rng
            .random_bool(0.5)
            .then(|| format!("key-{}", rng.random::<u32>()));
        Op::Hold {
            customer,
            items,
            ttl,
            key,
        }
    }
}

/// One or two distinct ticket types of the current round, 1 to 4 tickets of each.
fn random_items(rng: &mut StdRng, model: &Model) -> Items {
    let count = rng.random_range(1..=2);
    let round = model.types.len() - TYPES.len()..model.types.len();
    let mut items = Items::new();
    while items.len() < count {
        items.insert(rng.random_range(round.clone()), rng.random_range(1..=4));
    }
    items
}

/// Mostly an active hold, else any known hold, sometimes an id that names nothing.
fn pick_hold(rng: &mut StdRng, model: &Model) -> HoldId {
    if model.holds.is_empty() || rng.random_ratio(1, 20) {
        return HoldId::random();
    }
    let active: Vec<HoldId> = model
        .holds
        .iter()
        .filter(|h| h.status == HoldStatus::Active)
        .map(|h| h.id)
        .collect();
    if !active.is_empty() && rng.random_ratio(3, 4) {
        return active[rng.random_range(0..active.len())];
    }
    model.holds[rng.random_range(0..model.holds.len())].id
}

/// Up to 10 s ahead, or exactly to an active hold's `expires_at`, or 1 ms before it.
fn tick_target(rng: &mut StdRng, model: &Model, now: Millis) -> Millis {
    let ahead: Vec<Millis> = model
        .holds
        .iter()
        .filter(|h| h.status == HoldStatus::Active && h.expires_at > now)
        .map(|h| h.expires_at)
        .collect();
    if !ahead.is_empty() && rng.random_ratio(1, 3) {
        let at = ahead[rng.random_range(0..ahead.len())];
        return if rng.random_bool(0.5) {
            at
        } else {
            at - Millis(1)
        };
    }
    now + Millis(rng.random_range(0..=10_000))
}

struct MType {
    id: TicketTypeId,
    capacity: u32,
    max_per_customer: Option<u32>,
    price_cents: i64,
    sold: u32,
}

struct MHold {
    id: HoldId,
    customer: usize,
    items: Items,
    /// As stored: an `Active` hold past `expires_at` stays `Active` until an expiry is written.
    status: HoldStatus,
    created_at: Millis,
    expires_at: Millis,
    ended_at: Option<Millis>,
    order: Option<OrderId>,
}

/// The hold rules over plain collections.
struct Model {
    limits: Limits,
    types: Vec<MType>,
    holds: Vec<MHold>,
    index: HashMap<HoldId, usize>,
    /// (customer, idempotency key) of a hold created with a key.
    keys: HashMap<(usize, String), usize>,
    /// Every keyed request of each customer, for retries.
    asked: Vec<Vec<(Items, String)>>,
    /// How often the rarer paths ran (printed when a run fails).
    seen: BTreeMap<&'static str, usize>,
}

impl Model {
    fn new(limits: Limits, types: Vec<MType>) -> Model {
        Model {
            limits,
            types,
            holds: Vec::new(),
            index: HashMap::new(),
            keys: HashMap::new(),
            asked: vec![Vec::new(); CUSTOMERS],
            seen: BTreeMap::new(),
        }
    }

    fn saw(&mut self, what: &'static str) {
        *self.seen.entry(what).or_default() += 1;
    }

    fn find(&self, id: HoldId) -> Option<usize> {
        self.index.get(&id).copied()
    }

    fn type_index(&self, id: TicketTypeId) -> usize {
        self.types
            .iter()
            .position(|t| t.id == id)
            .unwrap_or_else(|| panic!("unknown ticket type {id}"))
    }

    /// Tickets of type `t` in active holds; with `count_overdue`, also those of holds past
    /// their `expires_at` whose expiry is not written yet (what the stored counter says).
    fn held(&self, t: usize, now: Millis, count_overdue: bool) -> u32 {
        self.holds
            .iter()
            .filter(|h| h.status == HoldStatus::Active && (count_overdue || now < h.expires_at))
            .filter_map(|h| h.items.get(&t))
            .sum()
    }

    /// Tickets of type `t` that a customer has in active, not overdue holds and in orders.
    fn owned(&self, customer: usize, t: usize, now: Millis) -> u32 {
        self.holds
            .iter()
            .filter(|h| h.customer == customer)
            .filter(|h| match h.status {
                HoldStatus::Confirmed => true,
                HoldStatus::Active => now < h.expires_at,
                _ => false,
            })
            .filter_map(|h| h.items.get(&t))
            .sum()
    }

    /// The answer to a hold request: per item, in ticket type id order (the store's lock
    /// order), the customer limit first, then the stock.
    fn evaluate(&self, customer: usize, items: &Items, now: Millis, count_overdue: bool) -> Kind {
        let mut ordered: Vec<(usize, u32)> = items.iter().map(|(&t, &q)| (t, q)).collect();
        ordered.sort_by_key(|&(t, _)| self.types[t].id);
        for (t, q) in ordered {
            let tt = &self.types[t];
            if let Some(max) = tt.max_per_customer {
                let already = self.owned(customer, t, now);
                if already + q > max {
                    return Kind::LimitExceeded {
                        ticket_type: t,
                        already,
                    };
                }
            }
            let available = tt.capacity - tt.sold - self.held(t, now, count_overdue);
            if available < q {
                return Kind::SoldOut {
                    ticket_type: t,
                    available,
                };
            }
        }
        Kind::Ok
    }

    /// Active holds due at `now`, earliest `expires_at` first.
    fn due(&self, now: Millis) -> Vec<usize> {
        let mut due: Vec<usize> = (0..self.holds.len())
            .filter(|&i| self.holds[i].status == HoldStatus::Active)
            .filter(|&i| self.holds[i].expires_at <= now)
            .collect();
        due.sort_by_key(|&i| self.holds[i].expires_at);
        due
    }

    fn expire_all_due(&mut self, now: Millis) {
        for i in self.due(now) {
            self.end(i, HoldStatus::Expired, now);
        }
    }

    fn end(&mut self, i: usize, status: HoldStatus, now: Millis) {
        let hold = &mut self.holds[i];
        assert_eq!(hold.status, HoldStatus::Active, "model: h{i} ended twice");
        hold.status = status;
        hold.ended_at = Some(now);
        if status == HoldStatus::Confirmed {
            for (&t, &q) in &hold.items {
                self.types[t].sold += q;
            }
        }
    }

    /// `get_hold`: reading a due hold writes the expiry of every due hold first.
    fn read(&mut self, i: usize, now: Millis) {
        let hold = &self.holds[i];
        if hold.status == HoldStatus::Active && now >= hold.expires_at {
            self.saw("read expires due holds");
            self.expire_all_due(now);
        }
    }

    /// Why hold `i` cannot be extended, released or checked out, if it cannot. Refused for
    /// being due, an active hold is expired on the way, with every other due hold.
    fn check_active(&mut self, i: usize, now: Millis) -> Result<(), Kind> {
        let hold = &self.holds[i];
        match hold.status {
            HoldStatus::Active if now >= hold.expires_at => {
                self.saw("refusal expires due holds");
                self.expire_all_due(now);
                Err(Kind::HoldExpired)
            }
            HoldStatus::Active => Ok(()),
            HoldStatus::Expired => Err(Kind::HoldExpired),
            status => Err(Kind::HoldNotActive(status)),
        }
    }

    /// `Ok(Some(i))`: a retry, answered with hold `i`; `Ok(None)`: a new hold is due.
    fn hold(
        &mut self,
        customer: usize,
        items: &Items,
        key: Option<&str>,
        now: Millis,
    ) -> Result<Option<usize>, Kind> {
        let retried = key.and_then(|key| self.keys.get(&(customer, key.to_owned())));
        if let Some(&i) = retried {
            self.saw("idempotent retry");
            self.read(i, now);
            return match self.holds[i].items == *items {
                true => Ok(Some(i)),
                false => Err(Kind::Invalid),
            };
        }
        // The store first tries with its counters, which still count overdue holds; sold out
        // with overdue holds on one of these ticket types, it expires every due hold first.
        let first = self.evaluate(customer, items, now, true);
        let overdue = items
            .keys()
            .any(|&t| self.held(t, now, true) > self.held(t, now, false));
        if matches!(first, Kind::SoldOut { .. }) && overdue {
            self.saw("hold reclaims overdue stock");
            self.expire_all_due(now);
        }
        match self.evaluate(customer, items, now, false) {
            Kind::Ok => Ok(None),
            kind => Err(kind),
        }
    }

    fn remember(&mut self, customer: usize, items: &Items, key: &str) {
        let asked = &mut self.asked[customer];
        if !asked.iter().any(|(_, k)| k == key) {
            asked.push((items.clone(), key.to_owned()));
        }
    }

    fn add_hold(&mut self, op: (usize, &Items, Option<&str>), id: HoldId, ttl: u32, now: Millis) {
        let (customer, items, key) = op;
        let i = self.holds.len();
        self.holds.push(MHold {
            id,
            customer,
            items: items.clone(),
            status: HoldStatus::Active,
            created_at: now,
            expires_at: now + Millis::from_secs(ttl),
            ended_at: None,
            order: None,
        });
        self.index.insert(id, i);
        if let Some(key) = key {
            self.keys.insert((customer, key.to_owned()), i);
        }
    }

    fn extend(&mut self, id: HoldId, ttl: u32, now: Millis) -> Result<(), Kind> {
        let i = self.find(id).ok_or(Kind::NotFound)?;
        self.check_active(i, now)?;
        let hold = &mut self.holds[i];
        let cap = hold.created_at + Millis::from_secs(self.limits.hold_lifetime_secs_max);
        hold.expires_at = (now + Millis::from_secs(ttl)).min(cap);
        if hold.expires_at == cap {
            self.saw("extension capped by the lifetime");
        }
        Ok(())
    }

    fn release(&mut self, id: HoldId, now: Millis) -> Result<(), Kind> {
        let i = self.find(id).ok_or(Kind::NotFound)?;
        self.check_active(i, now)?;
        self.end(i, HoldStatus::Released, now);
        Ok(())
    }

    /// `Ok(Some(order))` for a hold already confirmed, `Ok(None)` for a new order.
    fn checkout(&mut self, id: HoldId, now: Millis) -> Result<Option<OrderId>, Kind> {
        let i = self.find(id).ok_or(Kind::NotFound)?;
        if self.holds[i].status == HoldStatus::Confirmed {
            return Ok(self.holds[i].order);
        }
        self.check_active(i, now)?;
        self.end(i, HoldStatus::Confirmed, now);
        Ok(None)
    }

    fn kind<T>(&self, outcome: &Result<T, Rejection>) -> Kind {
        match outcome {
            Ok(_) => Kind::Ok,
            Err(Rejection::Invalid(_)) => Kind::Invalid,
            Err(Rejection::NotFound { .. }) => Kind::NotFound,
            Err(Rejection::HoldExpired) => Kind::HoldExpired,
            Err(Rejection::HoldNotActive { status }) => Kind::HoldNotActive(*status),
            Err(Rejection::LimitExceeded {
                ticket_type_id,
                already,
                ..
            }) => Kind::LimitExceeded {
                ticket_type: self.type_index(*ticket_type_id),
                already: *already,
            },
            Err(Rejection::SoldOut {
                ticket_type_id,
                available,
            }) => Kind::SoldOut {
                ticket_type: self.type_index(*ticket_type_id),
                available: *available,
            },
        }
    }
}

/// One run: the store, the model, the clock and a trace of the steps, printed with the seed
/// when the run fails.
struct Run {
    store: Arc<DbStore>,
    db: &'static str,
    seed: u64,
    event: EventId,
    model: Model,
    now: Millis,
    trace: Vec<String>,
}

impl Drop for Run {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let from = self.trace.len().saturating_sub(TRACE_SHOWN);
        let mut text = format!("model test on {} failed; steps {from}..:\n", self.db);
        for line in &self.trace[from..] {
            text.push_str(&format!("  {line}\n"));
        }
        text.push_str(&format!("paths seen: {:?}\n", self.model.seen));
        eprintln!(
            "{text}seed = {seed} (rerun with TICKETHOLD_SEED={seed})",
            seed = self.seed
        );
    }
}

impl Run {
    async fn setup(store: Arc<DbStore>, db: &'static str, seed: u64) -> Run {
        let event = store.create_event("model".into(), START).await;
        let mut run = Run {
            store,
            db,
            seed,
            event: event.expect("event").id,
            model: Model::new(limits(), Vec::new()),
            now: START,
            trace: Vec::new(),
        };
        run.restock().await;
        run
    }

    /// A new round of ticket types, as `TYPES` says.
    async fn restock(&mut self) {
        let round = self.model.types.len() / TYPES.len();
        for (n, (capacity, max_per_customer, price_cents)) in TYPES.into_iter().enumerate() {
            let new = NewTicketType::new(
                self.event,
                format!("round {round} type {n}"),
                price_cents,
                capacity.into(),
                max_per_customer.map(i64::from),
                &self.model.limits,
            )
            .expect("a valid ticket type");
            let tt = self.store.create_ticket_type(new, self.now).await;
            self.model.types.push(MType {
                id: tt.expect("store").expect("ticket type created").id,
                capacity,
                max_per_customer,
                price_cents,
                sold: 0,
            });
        }
    }

    /// Applies `op` to the store and the model, compares, then checks every invariant.
    async fn step(&mut self, n: usize, op: Op, full: bool) {
        let line = format!("#{n} t+{}ms {}", (self.now - START).0, self.describe(&op));
        self.trace.push(line);
        match op {
            Op::Hold {
                customer,
                items,
                ttl,
                key,
            } => self.hold(customer, items, ttl, key).await,
            Op::Extend { hold, ttl } => self.extend(hold, ttl).await,
            Op::Release { hold } => self.release(hold).await,
            Op::Checkout { hold, twice } => self.checkout(hold, twice).await,
            Op::Get { hold } => self.get(hold).await,
            Op::Tick { to } => self.tick(to),
            Op::ExpireDue { batch } => self.expire_due(batch).await,
            Op::Restock => self.restock().await,
        }
        self.check(full).await;
    }

    fn tick(&mut self, to: Millis) {
        for (at, what) in [
            (to, "tick to an expires_at"),
            (to + Millis(1), "tick to 1 ms before"),
        ] {
            let active = |h: &&MHold| h.status == HoldStatus::Active;
            if self
                .model
                .holds
                .iter()
                .filter(active)
                .any(|h| h.expires_at == at)
            {
                self.model.saw(what);
            }
        }
        self.now = to;
    }

    fn label(&self, id: HoldId) -> String {
        match self.model.find(id) {
            Some(i) => {
                let h = &self.model.holds[i];
                let expires = (h.expires_at - START).0;
                format!("h{i}({:?} exp=t+{expires}ms)", h.status)
            }
            None => "h?".to_owned(),
        }
    }

    fn describe(&self, op: &Op) -> String {
        match op {
            Op::Hold {
                customer,
                items,
                ttl,
                key,
            } => format!("hold c{customer} {items:?} ttl={ttl}s key={key:?}"),
            Op::Extend { hold, ttl } => format!("extend {} ttl={ttl}s", self.label(*hold)),
            Op::Release { hold } => format!("release {}", self.label(*hold)),
            Op::Checkout { hold, twice } => {
                format!("checkout {} twice={twice}", self.label(*hold))
            }
            Op::Get { hold } => format!("get {}", self.label(*hold)),
            Op::Tick { to } => format!("tick to t+{}ms", (*to - START).0),
            Op::ExpireDue { batch } => format!("expire_due batch={batch}"),
            Op::Restock => format!("restock: types {}..", self.model.types.len()),
        }
    }

    fn note(&mut self, text: impl std::fmt::Display) {
        if let Some(line) = self.trace.last_mut() {
            line.push_str(&format!(" -> {text}"));
        }
    }

    fn expect_outcome<T, U>(
        &mut self,
        what: &str,
        outcome: &Result<T, Rejection>,
        expected: &Result<U, Kind>,
    ) {
        let got = self.model.kind(outcome);
        let want = match expected {
            Ok(_) => Kind::Ok,
            Err(kind) => kind.clone(),
        };
        self.note(format!("{got:?}"));
        assert_eq!(
            got, want,
            "{what}: the store (left) differs from the model (right)"
        );
    }

    async fn hold(&mut self, customer: usize, items: Items, ttl: u32, key: Option<String>) {
        let now = self.now;
        if let Some(key) = &key {
            self.model.remember(customer, &items, key);
        }
        let expected = self.model.hold(customer, &items, key.as_deref(), now);
        let request = HoldRequest::new(
            self.event,
            CustomerId::new(customer_name(customer), &self.model.limits).expect("customer"),
            items
                .iter()
                .map(|(&t, &q)| (self.model.types[t].id, i64::from(q))),
            Some(i64::from(ttl)),
            key.clone(),
            &self.model.limits,
        )
        .expect("a valid hold request");
        let outcome = self
            .store
            .hold(request, now)
            .await
            .expect("hold: store error");
        self.expect_outcome("hold", &outcome, &expected);
        let (Ok(hold), Ok(retry)) = (outcome, expected) else {
            return;
        };
        let i = match retry {
            Some(i) => {
                let first = self.model.holds[i].id;
                assert_eq!(
                    hold.id, first,
                    "a retry with the same key returns the first hold"
                );
                i
            }
            None => {
                let op = (customer, &items, key.as_deref());
                self.model.add_hold(op, hold.id, ttl, now);
                self.model.holds.len() - 1
            }
        };
        self.note(format!("h{i}"));
        self.assert_hold(&hold, i, "hold");
    }

    async fn extend(&mut self, id: HoldId, ttl: u32) {
        let now = self.now;
        let expected = self.model.extend(id, ttl, now);
        let ttl = TtlSeconds::new(Some(i64::from(ttl)), &self.model.limits).expect("a valid TTL");
        let outcome = self
            .store
            .extend(id, ttl, now)
            .await
            .expect("extend: store error");
        self.expect_outcome("extend", &outcome, &expected);
        if let Ok(hold) = &outcome {
            self.assert_hold(hold, self.model.find(id).expect("known"), "extend");
        }
    }

    async fn release(&mut self, id: HoldId) {
        let now = self.now;
        let expected = self.model.release(id, now);
        let outcome = self
            .store
            .release(id, now)
            .await
            .expect("release: store error");
        self.expect_outcome("release", &outcome, &expected);
        if let Ok(hold) = &outcome {
            self.assert_hold(hold, self.model.find(id).expect("known"), "release");
        }
    }

    /// A checkout, and with `twice` the same request again, which must answer the same order.
    async fn checkout(&mut self, id: HoldId, twice: bool) {
        let now = self.now;
        let request = CheckoutRequest::new(id, "payment".into(), None, &self.model.limits)
            .expect("a valid checkout request");
        for _ in 0..1 + usize::from(twice) {
            let expected = self.model.checkout(id, now);
            let outcome = self.store.checkout(request.clone(), now).await;
            let outcome = outcome.expect("checkout: store error");
            self.expect_outcome("checkout", &outcome, &expected);
            let (Ok(order), Ok(known)) = (&outcome, expected) else {
                continue;
            };
            let i = self.model.find(id).expect("known");
            match known {
                Some(first) => assert_eq!(order.id, first, "a second checkout, same order"),
                None => self.model.holds[i].order = Some(order.id),
            }
            self.assert_order(order, i);
        }
    }

    async fn get(&mut self, id: HoldId) {
        let now = self.now;
        let expected = self.model.find(id);
        if let Some(i) = expected {
            self.model.read(i, now);
        }
        let hold = self
            .store
            .get_hold(id, now)
            .await
            .expect("get_hold: store error");
        match (hold, expected) {
            (None, None) => self.note("none"),
            (Some(hold), Some(i)) => {
                self.note(hold.status.as_str());
                self.assert_hold(&hold, i, "get_hold");
            }
            (hold, _) => panic!("get_hold answered {hold:?} for {}", self.label(id)),
        }
    }

    /// A sweep as the timer makes it: `min(batch, due)` due holds, earliest first.
    async fn expire_due(&mut self, batch: u32) {
        let now = self.now;
        let due = self.model.due(now);
        let expired = self.store.expire_due(now, batch).await.expect("expire_due");
        let labels: Vec<String> = expired.iter().map(|h| self.label(h.id)).collect();
        self.note(format!("expired {labels:?}"));
        let want = due.len().min(batch as usize);
        if want < due.len() {
            self.model.saw("partial sweep");
        }
        assert_eq!(
            expired.len(),
            want,
            "expire_due: holds expired (due: {due:?})"
        );
        for hold in &expired {
            let i = self
                .model
                .find(hold.id)
                .expect("expire_due: an unknown hold");
            assert!(due.contains(&i), "expire_due: h{i} is not due");
            assert_eq!(
                self.model.holds[i].status,
                HoldStatus::Active,
                "h{i} expired twice"
            );
            self.model.end(i, HoldStatus::Expired, now);
            self.assert_hold(hold, i, "expire_due");
        }
        let latest = expired.iter().map(|h| h.expires_at).max();
        for i in due {
            let h = &self.model.holds[i];
            let skipped = h.status == HoldStatus::Active;
            assert!(
                !skipped || Some(h.expires_at) >= latest,
                "h{i} skipped for a later hold"
            );
        }
    }

    fn assert_hold(&self, hold: &Hold, i: usize, what: &str) {
        let m = &self.model.holds[i];
        let mut items: Vec<(TicketTypeId, u32)> = m
            .items
            .iter()
            .map(|(&t, &q)| (self.model.types[t].id, q))
            .collect();
        items.sort();
        let got: Vec<(TicketTypeId, u32)> = hold
            .items
            .iter()
            .map(|item| (item.ticket_type_id, item.quantity))
            .collect();
        let customer = customer_name(m.customer);
        assert_eq!(
            (hold.id, hold.event_id, hold.customer_id.as_str(), got),
            (m.id, self.event, customer.as_str(), items),
            "{what}: h{i}'s owner or items"
        );
        let at = |t: Millis| (t - START).0;
        assert_eq!(
            (hold.status, at(hold.created_at), at(hold.expires_at)),
            (m.status, at(m.created_at), at(m.expires_at)),
            "{what}: h{i}'s status, created_at, expires_at (t+ms; store left, model right)"
        );
        assert_eq!(
            hold.ended_at.map(at),
            m.ended_at.map(at),
            "{what}: h{i}'s ended_at (t+ms; store left, model right)"
        );
    }

    fn assert_order(&self, order: &Order, i: usize) {
        let m = &self.model.holds[i];
        let mut items: Vec<(TicketTypeId, u32, i64)> = m
            .items
            .iter()
            .map(|(&t, &q)| {
                let tt = &self.model.types[t];
                (tt.id, q, tt.price_cents)
            })
            .collect();
        items.sort();
        let got: Vec<(TicketTypeId, u32, i64)> = order
            .items
            .iter()
            .map(|item| (item.ticket_type_id, item.quantity, item.unit_price_cents))
            .collect();
        let total: i64 = items.iter().map(|&(_, q, p)| i64::from(q) * p).sum();
        assert_eq!(
            (
                order.hold_id,
                order.customer_id.as_str(),
                got,
                order.total_cents
            ),
            (m.id, customer_name(m.customer).as_str(), items, total),
            "checkout: order of h{i}"
        );
    }

    /// The invariants after a step. With `full`, every hold is read with `get_hold`; without,
    /// active holds past their `expires_at` are read from their row, to leave them unexpired.
    async fn check(&mut self, full: bool) {
        let now = self.now;
        let drift = self.store.verify().await.expect("verify");
        assert!(drift.is_empty(), "verify found drift: {drift:?}");
        for t in 0..self.model.types.len() {
            let id = self.model.types[t].id;
            let a = self
                .store
                .availability(id, now)
                .await
                .expect("availability");
            let a = a.expect("a known ticket type");
            let m = &self.model.types[t];
            let want = (m.capacity, m.sold, self.model.held(t, now, false));
            assert_eq!(
                (a.capacity, a.sold, a.held),
                want,
                "availability of type {t}"
            );
            assert!(a.sold + a.held <= a.capacity, "type {t} oversold: {a:?}");
        }
        if full {
            self.model.expire_all_due(now);
        }
        for i in 0..self.model.holds.len() {
            let m = &self.model.holds[i];
            if m.status == HoldStatus::Active && now >= m.expires_at {
                self.assert_overdue_row(i).await;
                continue;
            }
            let hold = self.store.get_hold(m.id, now).await.expect("get_hold");
            self.assert_hold(&hold.expect("a known hold"), i, "get_hold after the step");
        }
    }

    async fn assert_overdue_row(&self, i: usize) {
        let m = &self.model.holds[i];
        let row = hold::Entity::find_by_id(m.id.0)
            .one(self.store.connection())
            .await
            .expect("hold row")
            .expect("a known hold");
        assert_eq!(
            (row.status.as_str(), row.expires_at - START.0),
            ("ACTIVE", m.expires_at.0 - START.0),
            "h{i}: overdue and not yet expired (t+ms)"
        );
    }

    /// Every hold ended at most once and is in exactly one state; every confirmed hold has
    /// exactly one order; past every hold's lifetime, one sweep leaves nothing held.
    async fn finish(&mut self) {
        self.trace.push("finish".to_owned());
        let conn = self.store.connection();
        let rows = hold::Entity::find()
            .filter(hold::Column::EventId.eq(self.event.0))
            .all(conn)
            .await
            .expect("hold rows");
        assert_eq!(rows.len(), self.model.holds.len(), "holds created");
        let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
        for row in &rows {
            *by_status.entry(row.status.as_str()).or_default() += 1;
        }
        let mut want: BTreeMap<&str, usize> = BTreeMap::new();
        for m in &self.model.holds {
            *want.entry(m.status.as_str()).or_default() += 1;
        }
        assert_eq!(by_status, want, "holds by status (store left, model right)");
        for (i, m) in self.model.holds.iter().enumerate() {
            let orders = order::Entity::find()
                .filter(order::Column::HoldId.eq(m.id.0))
                .count(conn)
                .await
                .expect("orders");
            let confirmed = m.status == HoldStatus::Confirmed;
            assert_eq!(
                orders,
                u64::from(confirmed),
                "orders of h{i} ({:?})",
                m.status
            );
            if confirmed {
                let order = self.store.order_of_hold(m.id).await.expect("order_of_hold");
                assert_eq!(order.map(|o| o.id), m.order, "order of h{i}");
            }
        }
        let lifetime = Millis::from_secs(self.model.limits.hold_lifetime_secs_max);
        self.now = self.now + lifetime + Millis(1);
        self.expire_due(u32::MAX).await;
        self.check(true).await;
        for (t, tt) in self.model.types.iter().enumerate() {
            let a = self
                .store
                .availability(tt.id, self.now)
                .await
                .expect("availability");
            assert_eq!(a.expect("known").held, 0, "type {t} still held at the end");
        }
    }
}
