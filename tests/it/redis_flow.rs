//! The Redis flow across several real `tickethold` processes sharing one Redis and one
//! PostgreSQL: a sale split over three instances, then faults under load (an instance killed,
//! Redis restarted with and without persistence, the notification connection killed,
//! notifications switched off) after which nothing is oversold, no hold stays active past its
//! `expiresAt`, no expiry goes unannounced and the counters equal the holds and orders.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::join_all;
use serde_json::{Value, json};
use tickethold::domain::Limits;
use tickethold::store::HoldStore;

use crate::support::client::Client;
use crate::support::server::redis_config;
use crate::support::ws::Next;
use crate::support::{
    Process, Protocol, RedisServer, Subscription, TestDb, TestServer, data, error_code, process,
};

const EXPIRED: &str = "subscription($e:ID!){holdExpired(eventId:$e){holdId expiredAt expiresAt}}";

/// A sale: a private Redis, a fresh PostgreSQL database, instances of the real binary.
struct Sale {
    instances: Vec<Option<Process>>,
    event: String,
    ticket_type: String,
    redis: RedisServer,
    db: TestDb,
    dir: tempfile::TempDir,
}

impl Sale {
    async fn open(redis: RedisServer, instances: usize, capacity: i64) -> Sale {
        let db = TestDb::postgres().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let mut sale = Sale {
            instances: Vec::new(),
            event: String::new(),
            ticket_type: String::new(),
            redis,
            db,
            dir,
        };
        for _ in 0..instances {
            let process = Process::start(&sale.env(), sale.dir.path()).await;
            sale.instances.push(Some(process));
        }
        sale.event = sale.instance(0).create_event("Flash sale").await;
        sale.ticket_type = sale
            .instance(0)
            .create_ticket_type(&sale.event, capacity, None)
            .await;
        sale
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DATABASE_URL", self.db.url().to_owned()),
            ("REDIS_URL", self.redis.url()),
            ("TICKETHOLD_REDIS_NAMESPACE", "th".to_owned()),
            ("TICKETHOLD_SWEEP_INTERVAL_MS", "200".to_owned()),
            ("TICKETHOLD_REDIS_JOURNAL_INTERVAL_MS", "20".to_owned()),
            ("TICKETHOLD_REDIS_TIMEOUT_MS", "1000".to_owned()),
        ]
    }

    fn instance(&self, i: usize) -> &Process {
        self.instances[i].as_ref().expect("a live instance")
    }

    fn live(&self) -> Vec<&Process> {
        self.instances.iter().flatten().collect()
    }

    async fn subscribe_expired(&self, i: usize) -> Listener {
        let vars = json!({"e": self.event});
        let subscription =
            Subscription::open(self.instance(i).addr, Protocol::TransportWs, EXPIRED, vars).await;
        Listener::start(subscription)
    }

    /// Every counter equals the holds and orders, in Redis and in the database.
    async fn assert_verified(&self) {
        let store = self
            .db
            .redis_store_in(&self.redis.url(), "th", Limits::default())
            .await;
        assert_eq!(store.verify().await.expect("verify"), vec![], "drift");
        process::assert_verify_ok(&self.env());
    }
}

/// Collects the holds a `holdExpired` subscription announces, in the background.
struct Listener {
    heard: Arc<Mutex<Vec<String>>>,
}

impl Listener {
    fn start(mut subscription: Subscription) -> Listener {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let sink = heard.clone();
        tokio::spawn(async move {
            while let Some(Next::Data(data)) =
                subscription.next_within(Duration::from_secs(60)).await
            {
                let event = &data["holdExpired"];
                assert!(
                    instant(&event["expiredAt"]) >= instant(&event["expiresAt"]),
                    "{event}"
                );
                let id = event["holdId"].as_str().expect("hold id").to_owned();
                sink.lock().unwrap().push(id);
            }
        });
        Listener { heard }
    }

    fn heard(&self) -> Vec<String> {
        self.heard.lock().unwrap().clone()
    }

    /// Waits until every hold of `expected` is heard (or the deadline passes).
    async fn wait_for(&self, expected: &HashSet<String>, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let heard: HashSet<String> = self.heard().into_iter().collect();
            if expected.is_subset(&heard) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn instant(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().expect("a time"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_sell_exactly_the_capacity_and_every_subscriber_hears_each_expiry_once() {
    let sale = Sale::open(RedisServer::start(), 3, 200).await;
    let mut listeners = Vec::new();
    for i in 0..3 {
        for _ in 0..2 {
            listeners.push(sale.subscribe_expired(i).await);
        }
    }
    let buyers = (0..1000).map(|i| {
        let instance = sale.instance(i % 3);
        let (event, ticket_type) = (&sale.event, &sale.ticket_type);
        async move {
            instance
                .hold(event, &format!("buyer-{i}"), ticket_type, 1, Some(2))
                .await
        }
    });
    let responses = join_all(buyers).await;
    let held: HashSet<String> = responses
        .iter()
        .filter(|r| r.get("errors").is_none())
        .map(|r| {
            data(r)["holdTickets"]["id"]
                .as_str()
                .expect("id")
                .to_owned()
        })
        .collect();
    let sold_out = responses
        .iter()
        .filter(|r| error_code(r).as_deref() == Some("SOLD_OUT"))
        .count();
    assert_eq!((held.len(), sold_out), (200, 800));

    for listener in &listeners {
        listener.wait_for(&held, Duration::from_secs(15)).await;
    }
    // A little longer, so that a duplicate would have arrived.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, listener) in listeners.iter().enumerate() {
        let heard = listener.heard();
        let distinct: HashSet<String> = heard.iter().cloned().collect();
        assert_eq!(
            distinct,
            held,
            "subscriber {i} (instance {}) missed expiries",
            i / 2
        );
        assert_eq!(
            heard.len(),
            held.len(),
            "subscriber {i} heard an expiry twice"
        );
    }
    for instance in sale.live() {
        assert_eq!(
            instance.availability(&sale.ticket_type).await["available"],
            200
        );
    }
    sale.assert_verified().await;
}

/// The faults of the issue, each injected while buyers hold, check out and release.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    KillAnInstance,
    RestartRedisWithoutPersistence,
    RestartRedisWithAof,
    KillThePubSubConnection,
    SwitchNotificationsOff,
}

/// What the buyers did: each acknowledged hold and its expiry, and the holds they ended.
#[derive(Default)]
struct Ledger {
    holds: HashMap<String, DateTime<Utc>>,
    ended: HashSet<String>,
}

async fn sale_under(fault: Fault) {
    let redis = if fault == Fault::RestartRedisWithAof {
        RedisServer::start_with_aof()
    } else {
        RedisServer::start()
    };
    let mut sale = Sale::open(redis, 2, 40).await;
    let listener = sale.subscribe_expired(0).await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let load_for = Duration::from_millis(2500);
    let clients: Vec<_> = sale.live().iter().map(|p| p.clone_client()).collect();
    let buyers: Vec<_> = (0..8)
        .map(|b| {
            let mut clients = clients.clone();
            let first = b % clients.len();
            clients.rotate_left(first);
            let buying = buy(
                clients,
                sale.event.clone(),
                sale.ticket_type.clone(),
                b,
                load_for,
                ledger.clone(),
            );
            tokio::spawn(buying)
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(800)).await;
    match fault {
        Fault::KillAnInstance => sale.instances[1].take().expect("instance").kill_9(),
        Fault::RestartRedisWithoutPersistence => sale.redis.restart(),
        Fault::RestartRedisWithAof => {
            // A clean restart: SHUTDOWN writes the AOF, then a new server reads it back.
            sale.redis.shutdown_and_restart();
        }
        Fault::KillThePubSubConnection => {
            sale.redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        }
        Fault::SwitchNotificationsOff => {
            sale.redis
                .command(&["CONFIG", "SET", "notify-keyspace-events", ""]);
        }
    }
    for buyer in buyers {
        buyer.await.expect("buyer");
    }

    // Let every hold run out, then look at what happened to each.
    let latest = ledger
        .lock()
        .unwrap()
        .holds
        .values()
        .max()
        .copied()
        .expect("some holds");
    if let Ok(left) = (latest - Utc::now()).to_std() {
        tokio::time::sleep(left).await;
    }
    let survivor = sale.instance(0);
    let holds: Vec<(String, DateTime<Utc>)> = ledger
        .lock()
        .unwrap()
        .holds
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let mut expired = HashSet::new();
    let mut lost = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    for (id, _) in &holds {
        loop {
            let hold = survivor.hold_by_id(id).await;
            if hold.is_null() {
                lost += 1;
                break;
            }
            match hold["status"].as_str() {
                Some("EXPIRED") => {
                    expired.insert(id.clone());
                    break;
                }
                Some("ACTIVE") => {
                    assert!(
                        Instant::now() < deadline,
                        "{fault:?}: hold {id} stays ACTIVE past its expiresAt: {hold}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ => break,
            }
        }
    }
    // Only a Redis that lost its data may lose a hold: one acknowledged within the journal's
    // last interval before the loss.
    if fault != Fault::RestartRedisWithoutPersistence {
        assert_eq!(lost, 0, "{fault:?}: holds lost");
    }
    assert!(
        lost <= 8,
        "{fault:?}: {lost} holds lost, more than one journal interval's worth"
    );
    listener.wait_for(&expired, Duration::from_secs(10)).await;
    let heard = listener.heard();
    let distinct: HashSet<String> = heard.iter().cloned().collect();
    let unannounced: Vec<_> = expired.difference(&distinct).collect();
    assert!(
        unannounced.is_empty(),
        "{fault:?}: expiries never announced: {unannounced:?}"
    );
    if fault != Fault::RestartRedisWithoutPersistence {
        assert_eq!(
            heard.len(),
            distinct.len(),
            "{fault:?}: an expiry was announced twice"
        );
    }
    assert!(!expired.is_empty(), "{fault:?}: the load expired nothing");
    let ended = ledger.lock().unwrap().ended.len();
    eprintln!(
        "{fault:?}: {} holds, {} expired, {ended} ended by buyers, {lost} lost",
        holds.len(),
        expired.len()
    );
    // The fault really took the path it is meant to test.
    let logs: String = sale.live().iter().map(|p| p.log_text()).collect();
    // The event is loaded once when the sale opens, and once more after a loss of data.
    let loads = logs
        .matches("loaded the event into Redis from the database")
        .count();
    match fault {
        Fault::RestartRedisWithoutPersistence => {
            assert_eq!(loads, 2, "Redis's loss went unnoticed")
        }
        Fault::RestartRedisWithAof => assert_eq!(loads, 1, "the AOF did not keep Redis's state"),
        Fault::KillThePubSubConnection => {
            assert!(
                logs.contains("keyspace subscription was closed"),
                "no reconnection"
            )
        }
        Fault::KillAnInstance | Fault::SwitchNotificationsOff => {}
    }
    sale.assert_verified().await;
}

/// One buyer: holds one ticket (TTL 1 s) again and again for `duration`; checks out one hold in
/// four and releases one in four; the rest are left to expire. Like a client behind a load
/// balancer, it moves to the next instance when one cannot be reached.
async fn buy(
    clients: Vec<Client>,
    event: String,
    ticket_type: String,
    buyer: usize,
    duration: Duration,
    ledger: Arc<Mutex<Ledger>>,
) {
    let end = Instant::now() + duration;
    let mut client = clients.iter().cycle();
    let mut current = client.next().expect("a client");
    let mut n = 0;
    while Instant::now() < end {
        n += 1;
        let hold = "mutation($e:ID!,$t:ID!){holdTickets(input:{eventId:$e,\
                    items:[{ticketTypeId:$t,quantity:1}],ttlSeconds:1}){id expiresAt}}";
        let vars = json!({"e": event, "t": ticket_type});
        // A customer per hold, so that no per-customer limit gets in the way.
        let as_buyer = current.as_buyer(&format!("b{buyer}-{n}"));
        let Ok(response) = as_buyer.try_gql(hold, vars).await else {
            current = client.next().expect("a client");
            continue;
        };
        let Some(hold) = response["data"]["holdTickets"].as_object() else {
            // Sold out, or Redis away for a moment (UNAVAILABLE): try again shortly.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let id = hold["id"].as_str().expect("id").to_owned();
        ledger
            .lock()
            .unwrap()
            .holds
            .insert(id.clone(), instant(&hold["expiresAt"]));
        let end_it = match n % 4 {
            0 => "mutation($h:ID!){checkout(input:{holdId:$h,paymentReference:\"p\"}){id}}",
            1 => "mutation($h:ID!){releaseHold(holdId:$h){id}}",
            _ => continue,
        };
        if let Ok(ended) = as_buyer.try_gql(end_it, json!({"h": id})).await
            && ended.get("errors").is_none()
        {
            ledger.lock().unwrap().ended.insert(id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_killed_mid_sale_loses_nothing() {
    sale_under(Fault::KillAnInstance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_without_persistence_mid_sale_is_rebuilt_from_the_database() {
    sale_under(Fault::RestartRedisWithoutPersistence).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_with_aof_mid_sale_keeps_every_hold() {
    sale_under(Fault::RestartRedisWithAof).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_notification_connection_reconnects_and_catches_up() {
    sale_under(Fault::KillThePubSubConnection).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_expire_on_time_with_notifications_switched_off() {
    sale_under(Fault::SwitchNotificationsOff).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_or_database_answers_unavailable_quickly() {
    let db = TestDb::postgres().await;
    let mut redis = RedisServer::start();
    let mut config = redis_config(db.url(), &redis.url(), "th");
    config.redis_timeout_ms = 500;
    let server = TestServer::start_with(config).await;
    let event = server.create_event("Outage").await;
    let ticket_type = server.create_ticket_type(&event, 10, None).await;
    data(&server.hold(&event, "before", &ticket_type, 1, None).await);

    assert!(server.ready().await, "/readyz with everything up");
    redis.kill();
    assert!(!server.ready().await, "/readyz with Redis down");
    for _ in 0..3 {
        let asked = Instant::now();
        let refused = server.hold(&event, "during", &ticket_type, 1, None).await;
        assert_eq!(
            error_code(&refused).as_deref(),
            Some("UNAVAILABLE"),
            "{refused}"
        );
        assert!(
            !refused.to_string().contains("Connection refused"),
            "the cause leaks: {refused}"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "took {:?}",
            asked.elapsed()
        );
    }
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = server.hold(&event, "after", &ticket_type, 1, None).await;
        if held.get("errors").is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery after Redis came back: {held}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Rebuilt from the journal: both holds are there.
    assert_eq!(server.availability(&ticket_type).await["held"], 2);
    assert!(server.ready().await, "/readyz once Redis is back");

    // The database goes away.
    let admin = sea_orm::Database::connect(crate::support::db::postgres_admin_url())
        .await
        .unwrap();
    let name = db.url().rsplit('/').next().unwrap().to_owned();
    sea_orm::ConnectionTrait::execute_unprepared(
        &admin,
        &format!("DROP DATABASE {name} WITH (FORCE)"),
    )
    .await
    .unwrap();
    assert!(!server.ready().await, "/readyz with the database gone");
    let asked = Instant::now();
    let refused = server.gql("{events{id}}", json!({})).await;
    assert_eq!(
        error_code(&refused).as_deref(),
        Some("UNAVAILABLE"),
        "{refused}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "took {:?}",
        asked.elapsed()
    );
}

/// A keyed hold of two tickets made through `store` and written by its journal: the request
/// (to retry) and the hold.
async fn journaled_keyed_hold(
    store: &tickethold::store::redis::RedisStore,
    db: &TestDb,
    limits: &Limits,
) -> (tickethold::domain::HoldRequest, tickethold::domain::Hold) {
    use sea_orm::EntityTrait;
    use tickethold::domain::{CustomerId, HoldRequest, Millis, NewTicketType};

    let now = Millis::now();
    let event = store.create_event("Retry".into(), now).await.unwrap();
    let new = NewTicketType::new(event.id, "GA".into(), 100, 10, None, limits).unwrap();
    let ticket_type = store.create_ticket_type(new, now).await.unwrap().unwrap();
    let customer = CustomerId::new("buyer".into(), limits).unwrap();
    let items = [(ticket_type.id, 2)];
    let request = HoldRequest::new(
        event.id,
        customer,
        items,
        Some(60),
        Some("k".into()),
        limits,
    )
    .unwrap();
    let hold = store.hold(request.clone(), now).await.unwrap().unwrap();
    let conn = tickethold::store::db::connect(db.url(), 1).await.unwrap();
    let started = Instant::now();
    while entity::hold::Entity::find_by_id(hold.id.0)
        .one(&conn)
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never journaled"
        );
        tokio::task::yield_now().await;
    }
    (request, hold)
}

async fn delete_redis_keys(keys: &[String]) {
    let mut redis = redis::Client::open(crate::support::db::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let removed: usize = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(removed, keys.len(), "every key was there: {keys:?}");
}

/// A hold's event is written after its script made it. An instance that died in between never
/// answered, and its journal entry may be lost with it; the client's retry with the same
/// idempotency key must still get that hold, readable by id.
#[tokio::test]
async fn a_retry_finds_a_hold_whose_first_answer_never_went_out() {
    use entity::{hold, hold_item};
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

    let db = TestDb::sqlite();
    let limits = Limits::default();
    let (store, _namespace) = db.redis_store(limits.clone()).await;
    let (request, first) = journaled_keyed_hold(&store, &db, &limits).await;
    let now = tickethold::domain::Millis::now();

    // The instance dies after the script: no event key, no journal entry (the journal wrote
    // it, so it is taken away again).
    let conn = tickethold::store::db::connect(db.url(), 1).await.unwrap();
    hold_item::Entity::delete_many()
        .filter(hold_item::Column::HoldId.eq(first.id.0))
        .exec(&conn)
        .await
        .unwrap();
    hold::Entity::delete_by_id(first.id.0)
        .exec(&conn)
        .await
        .unwrap();
    delete_redis_keys(&[store.keys().hold_event(first.id)]).await;

    let retried = store.hold(request, now).await.unwrap().unwrap();
    assert_eq!(retried.id, first.id, "the retry gets the hold it made");
    let read = store.get_hold(first.id, now).await.unwrap();
    assert_eq!(
        read.map(|hold| hold.id),
        Some(first.id),
        "readable by id again"
    );
}

/// Redis forgot a customer's idempotency key (its retention ran out, or it lost its data):
/// the retry finds the hold in the journal rather than make a second one.
#[tokio::test]
async fn a_retry_that_redis_forgot_finds_its_hold_in_the_journal() {
    let db = TestDb::sqlite();
    let limits = Limits::default();
    let (store, _namespace) = db.redis_store(limits.clone()).await;
    let (request, first) = journaled_keyed_hold(&store, &db, &limits).await;
    let customer = request.customer_id.as_str();
    let in_event = format!(
        "{}idem:{}:{customer}:k",
        store.keys().event(first.event_id),
        customer.len()
    );
    delete_redis_keys(&[store.keys().idempotency(customer, "k"), in_event]).await;

    let now = tickethold::domain::Millis::now();
    let retried = store.hold(request, now).await.unwrap().unwrap();
    assert_eq!(retried.id, first.id, "the retry gets the journaled hold");
    let availability = store
        .availability(first.items[0].ticket_type_id, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(availability.held, 2, "no second hold took stock");
}

/// On a single Redis the hold script claims the customer's idempotency key across events: a
/// key whose hold was refused stays free (for a hold of another event too); a key that made a
/// hold is its event's, so another event's request with it is refused as INVALID_INPUT and
/// takes nothing; and the hold is linked to its event, readable by id.
#[tokio::test]
async fn the_hold_script_claims_the_key_across_events_only_for_a_hold_it_makes() {
    use tickethold::domain::{CustomerId, HoldRequest, Millis, NewTicketType, Rejection};

    let db = TestDb::sqlite();
    let limits = Limits::default();
    let (store, _namespace) = db.redis_store(limits.clone()).await;
    let now = Millis::now();
    let mut types = Vec::new();
    for (name, capacity) in [("Sold out", 1), ("Open", 5)] {
        let event = store.create_event(name.into(), now).await.unwrap();
        let new = NewTicketType::new(event.id, "GA".into(), 100, capacity, None, &limits).unwrap();
        types.push(store.create_ticket_type(new, now).await.unwrap().unwrap());
    }
    let request = |index: usize, customer: &str, quantity: i64| {
        let customer = CustomerId::new(customer.into(), &limits).unwrap();
        let tt = &types[index];
        let items = [(tt.id, quantity)];
        HoldRequest::new(
            tt.event_id,
            customer,
            items,
            None,
            Some("k".into()),
            &limits,
        )
        .unwrap()
    };

    let refused = store.hold(request(0, "buyer", 2), now).await.unwrap();
    assert!(
        matches!(refused, Err(Rejection::SoldOut { .. })),
        "{refused:?}"
    );
    let made = store
        .hold(request(1, "buyer", 1), now)
        .await
        .unwrap()
        .unwrap();
    let again = store.hold(request(1, "buyer", 1), now).await.unwrap();
    assert_eq!(
        again.map(|hold| hold.id),
        Ok(made.id),
        "a retry gets the hold"
    );

    let elsewhere = store.hold(request(0, "buyer", 1), now).await.unwrap();
    assert!(
        matches!(&elsewhere, Err(Rejection::Invalid(_))),
        "the key is the other event's now: {elsewhere:?}"
    );
    let untouched = store.availability(types[0].id, now).await.unwrap().unwrap();
    assert_eq!(untouched.held, 0, "the refused request took nothing");
    let other_buyer = store.hold(request(0, "another", 1), now).await.unwrap();
    assert!(
        other_buyer.is_ok(),
        "another customer's key k is theirs: {other_buyer:?}"
    );

    let read = store.get_hold(made.id, now).await.unwrap();
    assert_eq!(read.map(|hold| hold.event_id), Some(made.event_id));
    assert!(store.verify().await.unwrap().is_empty());
}
