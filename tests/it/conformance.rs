//! The conformance suite of the hold store: short scripts, each a story of holds and time,
//! run through one `check()` against every store and database. Time is moved by hand (`tick`),
//! so no script waits.
//!
//! A script line is a command and, after `->`, what it must answer:
//!
//! ```text
//! type A cap=10 max=4            a ticket type A
//! hold h1 c1 A:2 B:1 ttl=5 key=k -> ok | SOLD_OUT available=3 | LIMIT_EXCEEDED | ...
//! extend h1 ttl=30               -> ok | HOLD_EXPIRED | HOLD_NOT_ACTIVE | NOT_FOUND
//! release h1 / checkout h1       -> ok | ...   (a second checkout must return the same order)
//! tick 6s | tick 500ms
//! expire                         -> 2          (holds expired now, as the timer would)
//! avail A                        -> sold=0 held=2 available=8
//! status h1                      -> ACTIVE
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use tickethold::domain::{
    CheckoutRequest, CustomerId, EventId, HoldId, HoldRequest, Limits, Millis, NewTicketType,
    OrderId, Rejection, TicketTypeId, TtlSeconds,
};
use tickethold::store::HoldStore;

use crate::support::TestDb;

const START: Millis = Millis(1_800_000_000_000);

struct Script {
    store: Arc<dyn HoldStore>,
    limits: Limits,
    now: Millis,
    event: EventId,
    types: HashMap<String, TicketTypeId>,
    holds: HashMap<String, HoldId>,
    orders: HashMap<String, OrderId>,
}

impl Script {
    async fn run(&mut self, name: &str, script: &str) {
        for (number, line) in script.lines().map(str::trim).enumerate() {
            if line.is_empty() {
                continue;
            }
            let (command, expected) = match line.split_once("->") {
                Some((command, expected)) => (command.trim(), expected.trim()),
                None => (line, ""),
            };
            let actual = self.exec(command).await;
            assert_eq!(actual, expected, "{name}, line {}: `{line}`", number + 1);
        }
    }

    async fn exec(&mut self, command: &str) -> String {
        let words: Vec<&str> = command.split_whitespace().collect();
        let arg = |key: &str| words.iter().find_map(|w| w.strip_prefix(key));
        match words[0] {
            "type" => {
                let capacity = arg("cap=").expect("cap=").parse().unwrap();
                let max = arg("max=").map(|m| m.parse().unwrap());
                let new = NewTicketType::new(
                    self.event,
                    words[1].into(),
                    1000,
                    capacity,
                    max,
                    &self.limits,
                )
                .unwrap();
                let created = self
                    .store
                    .create_ticket_type(new, self.now)
                    .await
                    .unwrap()
                    .unwrap();
                self.types.insert(words[1].into(), created.id);
                String::new()
            }
            "hold" => self.hold(&words).await,
            "extend" => {
                let ttl = arg("ttl=").map(|t| t.parse().unwrap());
                let ttl = TtlSeconds::new(ttl, &self.limits).unwrap();
                let outcome = self
                    .store
                    .extend(self.hold_id(words[1]), ttl, self.now)
                    .await;
                answer(outcome.unwrap().map(|_| ()))
            }
            "release" => {
                let outcome = self.store.release(self.hold_id(words[1]), self.now).await;
                answer(outcome.unwrap().map(|_| ()))
            }
            "checkout" => self.checkout(words[1]).await,
            "tick" => {
                let step = words[1];
                self.now = self.now
                    + match step.strip_suffix("ms") {
                        Some(ms) => Millis(ms.parse().unwrap()),
                        None => Millis(step.trim_end_matches('s').parse::<i64>().unwrap() * 1000),
                    };
                String::new()
            }
            "expire" => self
                .store
                .expire_due(self.now, 1000)
                .await
                .unwrap()
                .len()
                .to_string(),
            "avail" => {
                let a = self
                    .store
                    .availability(self.types[words[1]], self.now)
                    .await
                    .unwrap();
                let a = a.expect("ticket type");
                format!(
                    "sold={} held={} available={}",
                    a.sold,
                    a.held,
                    a.available()
                )
            }
            "status" => {
                let hold = self
                    .store
                    .get_hold(self.hold_id(words[1]), self.now)
                    .await
                    .unwrap();
                hold.map_or("none".into(), |h| h.status.as_str().to_owned())
            }
            "verify" => {
                let drifts = self.store.verify().await.unwrap();
                if drifts.is_empty() {
                    "clean".into()
                } else {
                    format!("{drifts:?}")
                }
            }
            other => panic!("unknown command {other}"),
        }
    }

    async fn hold(&mut self, words: &[&str]) -> String {
        let label = words[1];
        let customer = CustomerId::new(words[2].into(), &self.limits).unwrap();
        let mut items = Vec::new();
        let (mut ttl, mut key) = (None, None);
        for word in &words[3..] {
            if let Some(t) = word.strip_prefix("ttl=") {
                ttl = Some(t.parse().unwrap());
            } else if let Some(k) = word.strip_prefix("key=") {
                key = Some(k.to_owned());
            } else {
                let (name, quantity) = word.split_once(':').expect("TYPE:QUANTITY");
                items.push((self.types[name], quantity.parse().unwrap()));
            }
        }
        let request =
            HoldRequest::new(self.event, customer, items, ttl, key, &self.limits).unwrap();
        match self.store.hold(request, self.now).await.unwrap() {
            Ok(hold) => {
                let known = self.holds.insert(label.into(), hold.id);
                match known {
                    Some(id) if id != hold.id => format!("ok, but a new hold {}", hold.id),
                    _ => "ok".into(),
                }
            }
            Err(rejection) => rejected(&rejection),
        }
    }

    async fn checkout(&mut self, label: &str) -> String {
        let request = CheckoutRequest::new(self.hold_id(label), "pay-1".into(), None, &self.limits);
        match self
            .store
            .checkout(request.unwrap(), self.now)
            .await
            .unwrap()
        {
            Ok(order) => match self.orders.insert(label.into(), order.id) {
                Some(first) if first != order.id => "ok, but a second order".into(),
                _ => "ok".into(),
            },
            Err(rejection) => rejected(&rejection),
        }
    }

    fn hold_id(&self, label: &str) -> HoldId {
        self.holds
            .get(label)
            .copied()
            .unwrap_or_else(HoldId::random)
    }
}

fn answer(outcome: Result<(), Rejection>) -> String {
    match outcome {
        Ok(()) => "ok".into(),
        Err(rejection) => rejected(&rejection),
    }
}

fn rejected(rejection: &Rejection) -> String {
    match rejection {
        Rejection::SoldOut { available, .. } => format!("SOLD_OUT available={available}"),
        other => other.code().to_owned(),
    }
}

/// What must live as long as a store (its databases, its Redis namespace).
type Guard = Box<dyn std::any::Any>;

/// A fresh store of each flow, with its name: the database flow on SQLite and on PostgreSQL,
/// and the Redis flow (with PostgreSQL for orders and the journal).
async fn every_store(limits: &Limits) -> Vec<(String, Arc<dyn HoldStore>, Guard)> {
    let mut stores: Vec<(String, Arc<dyn HoldStore>, Guard)> = Vec::new();
    for db in TestDb::both().await {
        let (store, _bus) = db.store(limits.clone()).await;
        stores.push((db.kind().to_owned(), store, Box::new(db)));
    }
    let db = TestDb::postgres().await;
    let (store, namespace) = db.redis_store(limits.clone()).await;
    stores.push(("redis".to_owned(), store, Box::new((namespace, db))));
    stores
}

fn script_limits() -> Limits {
    Limits {
        hold_ttl_secs_default: 300,
        hold_ttl_secs_max: 600,
        hold_lifetime_secs_max: 900,
        ..Limits::default()
    }
}

/// Runs `script` against a fresh store of each flow.
async fn check(name: &str, script: &str) {
    let limits = script_limits();
    for (kind, store, _guard) in every_store(&limits).await {
        let event = store.create_event("Concert".into(), START).await.unwrap();
        let mut state = Script {
            store,
            limits: limits.clone(),
            now: START,
            event: event.id,
            types: HashMap::new(),
            holds: HashMap::new(),
            orders: HashMap::new(),
        };
        state.run(&format!("{name} on {kind}"), script).await;
        assert_eq!(state.exec("verify").await, "clean", "{name} on {kind}");
    }
}

#[tokio::test]
async fn an_expired_hold_cannot_be_checked_out_even_before_its_expiry_runs() {
    check(
        "expired checkout",
        "
        type A cap=10
        hold h1 c1 A:2 ttl=5 -> ok
        tick 4999ms
        avail A -> sold=0 held=2 available=8
        tick 1ms
        avail A -> sold=0 held=0 available=10
        checkout h1 -> HOLD_EXPIRED
        status h1 -> EXPIRED
        expire -> 0
        extend h1 ttl=60 -> HOLD_EXPIRED
        release h1 -> HOLD_EXPIRED
        checkout h1 -> HOLD_EXPIRED
        avail A -> sold=0 held=0 available=10
    ",
    )
    .await;
}

#[tokio::test]
async fn a_hold_ends_exactly_once_and_returns_its_stock_once() {
    check(
        "ends once",
        "
        type A cap=10
        hold h1 c1 A:3 ttl=5 -> ok
        hold h2 c2 A:3 ttl=5 -> ok
        release h1 -> ok
        release h1 -> HOLD_NOT_ACTIVE
        extend h1 ttl=60 -> HOLD_NOT_ACTIVE
        checkout h1 -> HOLD_NOT_ACTIVE
        avail A -> sold=0 held=3 available=7
        tick 5s
        expire -> 1
        expire -> 0
        release h2 -> HOLD_EXPIRED
        hold h3 c3 A:1 ttl=5 -> ok
        tick 5s
        release h3 -> HOLD_EXPIRED
        expire -> 0
        avail A -> sold=0 held=0 available=10
    ",
    )
    .await;
}

#[tokio::test]
async fn checkout_converts_the_stock_and_a_retry_returns_the_same_order() {
    check(
        "checkout",
        "
        type A cap=10
        type B cap=5
        hold h1 c1 A:2 B:1 ttl=60 -> ok
        checkout h1 -> ok
        checkout h1 -> ok
        status h1 -> CONFIRMED
        release h1 -> HOLD_NOT_ACTIVE
        extend h1 -> HOLD_NOT_ACTIVE
        tick 120s
        expire -> 0
        checkout h1 -> ok
        avail A -> sold=2 held=0 available=8
        avail B -> sold=1 held=0 available=4
    ",
    )
    .await;
}

#[tokio::test]
async fn a_hold_takes_every_item_or_none() {
    check(
        "all or nothing",
        "
        type A cap=10
        type B cap=2
        hold h1 c1 A:5 B:3 -> SOLD_OUT available=2
        avail A -> sold=0 held=0 available=10
        hold h2 c1 A:5 B:2 -> ok
        hold h3 c2 A:6 -> SOLD_OUT available=5
        hold h4 c2 A:5 -> ok
        avail A -> sold=0 held=10 available=0
        avail B -> sold=0 held=2 available=0
    ",
    )
    .await;
}

#[tokio::test]
async fn the_customer_limit_counts_active_holds_and_orders_only() {
    check(
        "limit",
        "
        type A cap=100 max=4
        hold h1 c1 A:3 ttl=10 -> ok
        hold h2 c1 A:2 -> LIMIT_EXCEEDED
        hold h3 c2 A:4 -> ok
        tick 10s
        hold h4 c1 A:4 ttl=60 -> ok
        checkout h4 -> ok
        hold h5 c1 A:1 -> LIMIT_EXCEEDED
        hold h6 c2 A:1 -> LIMIT_EXCEEDED
        release h3 -> ok
        hold h7 c2 A:4 -> ok
        hold h8 c3 A:5 -> LIMIT_EXCEEDED
    ",
    )
    .await;
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_returns_the_same_hold() {
    check(
        "idempotency",
        "
        type A cap=5
        hold h1 c1 A:2 key=k1 -> ok
        hold h1 c1 A:2 key=k1 -> ok
        avail A -> sold=0 held=2 available=3
        hold h2 c1 A:3 key=k1 -> INVALID_INPUT
        hold h3 c2 A:2 key=k1 -> ok
        avail A -> sold=0 held=4 available=1
        release h1 -> ok
        hold h1 c1 A:2 key=k1 -> ok
        status h1 -> RELEASED
    ",
    )
    .await;
}

/// Requests decided together (the database flow commits concurrent holds in one batch) keep
/// the rules of requests decided one by one: every retry of a hold gets that hold, even once
/// its ticket type is sold out; concurrent requests with one new key make one hold; another
/// customer's same key is another customer's hold.
#[tokio::test]
async fn concurrent_requests_make_one_hold_per_customer_and_idempotency_key() {
    let limits = script_limits();
    for (kind, store, _guard) in every_store(&limits).await {
        let event = store.create_event("Keys".into(), START).await.unwrap();
        let new = NewTicketType::new(event.id, "A".into(), 100, 3, None, &limits).unwrap();
        let ticket_type = store.create_ticket_type(new, START).await.unwrap().unwrap();
        let request = |customer: &str, key: &str| {
            let customer = CustomerId::new(customer.into(), &limits).unwrap();
            let items = [(ticket_type.id, 1)];
            HoldRequest::new(event.id, customer, items, None, Some(key.into()), &limits).unwrap()
        };
        let first = store
            .hold(request("c1", "k"), START)
            .await
            .unwrap()
            .unwrap();

        let asked = [("c1", "k"), ("c2", "k"), ("c3", "j")].repeat(3);
        let answers = futures::future::join_all(
            asked
                .iter()
                .map(|(customer, key)| store.hold(request(customer, key), START)),
        )
        .await;
        let mut ids: HashMap<&str, Vec<HoldId>> = HashMap::new();
        for ((customer, _), answer) in asked.iter().zip(answers) {
            let hold = answer.unwrap().unwrap_or_else(|r| panic!("{kind}: {r:?}"));
            ids.entry(customer).or_default().push(hold.id);
        }
        assert!(
            ids["c1"].iter().all(|id| *id == first.id),
            "{kind}: {ids:?}"
        );
        for customer in ["c2", "c3"] {
            let made = &ids[customer];
            assert!(made.iter().all(|id| *id == made[0]), "{kind}: {ids:?}");
            assert_ne!(made[0], first.id, "{kind}: {ids:?}");
        }
        assert_ne!(ids["c2"][0], ids["c3"][0], "{kind}: {ids:?}");
        let availability = store
            .availability(ticket_type.id, START)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (availability.held, availability.available()),
            (3, 0),
            "{kind}"
        );

        // Sold out now: a retry still gets its hold, a new key gets SOLD_OUT.
        let again = store.hold(request("c2", "k"), START).await.unwrap();
        assert_eq!(again.map(|hold| hold.id), Ok(ids["c2"][0]), "{kind}");
        let refused = store.hold(request("c2", "other"), START).await.unwrap();
        assert!(
            matches!(refused, Err(Rejection::SoldOut { .. })),
            "{kind}: {refused:?}"
        );
        assert!(store.verify().await.unwrap().is_empty(), "{kind}");
    }
}

/// Once a ticket type is sold out, the database flow refuses from committed rows read without a
/// lock (until one shows stock again): the refusals keep the rules and the order they are
/// checked in (limit before stock, every item), and stock given back sells again at once.
#[tokio::test]
async fn requests_after_a_sell_out_keep_the_rules_until_stock_comes_back() {
    check(
        "after the sell-out",
        "
        type A cap=4 max=2
        type B cap=10
        hold h1 c1 A:2 -> ok
        hold h2 c2 A:2 -> ok
        hold h3 c3 A:1 -> SOLD_OUT available=0
        hold h4 c1 A:1 -> LIMIT_EXCEEDED
        hold h5 c3 A:1 B:1 -> SOLD_OUT available=0
        avail B -> sold=0 held=0 available=10
        release h1 -> ok
        hold h6 c3 A:1 -> ok
        hold h7 c4 A:2 -> SOLD_OUT available=1
        hold h8 c4 A:1 B:3 -> ok
        hold h9 c5 A:1 -> SOLD_OUT available=0
        checkout h2 -> ok
        hold h10 c2 A:1 -> LIMIT_EXCEEDED
        avail A -> sold=2 held=2 available=0
        avail B -> sold=0 held=3 available=7
    ",
    )
    .await;
}

#[tokio::test]
async fn overdue_holds_never_block_a_sale_even_before_their_expiry_runs() {
    check(
        "reclaim",
        "
        type A cap=4
        hold h1 c1 A:4 ttl=5 -> ok
        hold h2 c2 A:1 -> SOLD_OUT available=0
        tick 5s
        avail A -> sold=0 held=0 available=4
        hold h3 c2 A:4 ttl=60 -> ok
        status h1 -> EXPIRED
        expire -> 0
        avail A -> sold=0 held=4 available=0
    ",
    )
    .await;
}

#[tokio::test]
async fn extending_moves_the_expiry_but_never_past_the_hold_lifetime() {
    check(
        "extend",
        "
        type A cap=4
        hold h1 c1 A:1 ttl=60 -> ok
        tick 50s
        extend h1 ttl=600 -> ok
        tick 500s
        status h1 -> ACTIVE
        expire -> 0
        tick 99s
        checkout h1 -> ok
        hold h2 c1 A:1 ttl=600 -> ok
        tick 599s
        extend h2 ttl=600 -> ok
        tick 300s
        status h2 -> ACTIVE
        tick 1s
        status h2 -> EXPIRED
        hold h3 c2 A:1 ttl=10 -> ok
        extend h3 ttl=1 -> ok
        tick 1s
        checkout h3 -> HOLD_EXPIRED
        extend nope ttl=5 -> NOT_FOUND
        checkout nope -> NOT_FOUND
        release nope -> NOT_FOUND
    ",
    )
    .await;
}
