//! The crash test: the real `tickethold` binary is started, acknowledges holds, and is killed
//! with SIGKILL right after the last acknowledgement. Restarted on the same database, it must
//! still have every acknowledged hold with its `expiresAt`, and the holds that lapsed while it
//! was down must be EXPIRED exactly once, their stock back on sale (`tickethold verify` finds
//! no drift). Run on SQLite and on PostgreSQL. A second story checks that SIGTERM stops the
//! server gracefully (exit status 0) and loses nothing; a third, in both flows, that PostgreSQL
//! dropping every connection of the service fails no request.

use std::path::Path;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use serde_json::{Value, json};
use tickethold::domain::{CustomerId, HoldRequest, Limits, Millis, NewTicketType, Rejection};
use tickethold::store::HoldStore;

use crate::support::process;
use crate::support::{self, Process, TestDb};

const CAPACITY: i64 = 50;
const LONG_HOLDS: usize = 20;
const SHORT_HOLDS: usize = 5;

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_holds_survive_kill_9_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
    acknowledged_holds_survive_kill_9(&url, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_holds_survive_kill_9_on_postgres() {
    // Declared first, so dropped last: the server is dead before its database is dropped.
    let db = TestDb::postgres().await;
    let dir = tempfile::tempdir().expect("temp dir");
    acknowledged_holds_survive_kill_9(db.url(), dir.path()).await;
}

/// The story of the issue, on the database at `url`; logs go to `dir`.
async fn acknowledged_holds_survive_kill_9(url: &str, dir: &Path) {
    let server = start(url, dir).await;
    let event_id = server.create_event("Crash Test Live").await;
    let ticket_type_id = server.create_ticket_type(&event_id, CAPACITY, None).await;

    // Twenty long holds at once, then five that lapse one second later.
    let hold = |customer: String, ttl: i64| {
        let (server, event_id, ticket_type_id) = (&server, &event_id, &ticket_type_id);
        async move { hold(server, event_id, ticket_type_id, &customer, ttl).await }
    };
    let long: Vec<Acked> = join_all((0..LONG_HOLDS).map(|i| hold(format!("long-{i}"), 600))).await;
    let short: Vec<Acked> = join_all((0..SHORT_HOLDS).map(|i| hold(format!("short-{i}"), 1))).await;

    // SIGKILL right after the last acknowledgement: no graceful anything.
    let killed_at = Utc::now();
    server.kill_9();

    // Wait out the short holds, so that they lapse while nothing runs.
    let last_short_expiry = short
        .iter()
        .map(|hold| hold.expires_at)
        .max()
        .expect("short holds");
    let first_short_expiry = short
        .iter()
        .map(|hold| hold.expires_at)
        .min()
        .expect("short holds");
    let lapsed_while_down = killed_at < first_short_expiry;
    sleep_until(last_short_expiry + chrono::Duration::milliseconds(50)).await;

    let restarted_at = Utc::now();
    let server = start(url, dir).await;

    for hold in &long {
        let found = hold_by_id(&server, &hold.id).await;
        assert_eq!(
            found["status"], "ACTIVE",
            "long hold after restart: {found}"
        );
        assert_eq!(
            found["expiresAt"], hold.expires_at_text,
            "long hold kept its expiresAt: {found}"
        );
        assert!(
            found["endedAt"].is_null(),
            "long hold has not ended: {found}"
        );
    }
    let mut ended = Vec::new();
    for hold in &short {
        let found = hold_by_id(&server, &hold.id).await;
        assert_eq!(
            found["status"], "EXPIRED",
            "short hold after restart: {found}"
        );
        ended.push(found["endedAt"].clone());
        assert_eq!(found["expiresAt"], hold.expires_at_text, "{found}");
        let ended_at = instant(&found["endedAt"]);
        assert!(
            ended_at >= hold.expires_at,
            "expired before its expiresAt: {found}"
        );
        if lapsed_while_down {
            // Nobody could expire it before the restart.
            assert!(
                ended_at >= restarted_at,
                "expired by a dead server at {ended_at}, restarted at {restarted_at}: {found}"
            );
        }
    }
    let availability = server.availability(&ticket_type_id).await;
    assert_eq!(
        availability,
        json!({
            "capacity": CAPACITY,
            "sold": 0,
            "held": LONG_HOLDS,
            "available": CAPACITY - LONG_HOLDS as i64,
        })
    );

    // Read again: an expiry happens once, its end time does not move.
    for (hold, ended_at) in short.iter().zip(&ended) {
        let again = hold_by_id(&server, &hold.id).await;
        assert_eq!(again["status"], "EXPIRED", "{again}");
        assert_eq!(&again["endedAt"], ended_at, "{again}");
    }
    drop(server);
    assert_verify_ok(url);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_server_gracefully_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
    let server = start(&url, dir.path()).await;
    let event_id = server.create_event("Graceful Night").await;
    let ticket_type_id = server.create_ticket_type(&event_id, 10, None).await;
    let hold = hold(&server, &event_id, &ticket_type_id, "c-term", 600).await;

    // The client keeps its keep-alive connection open while the server stops.
    let status = server.terminate().await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );

    let server = start(&url, dir.path()).await;
    let found = hold_by_id(&server, &hold.id).await;
    assert_eq!(found["status"], "ACTIVE", "{found}");
    assert_eq!(found["expiresAt"], hold.expires_at_text, "{found}");
    assert_eq!(server.availability(&ticket_type_id).await["held"], 1);
    drop(server);
    assert_verify_ok(&url);
}

/// An acknowledged hold: its id and `expiresAt`, as sent and parsed.
struct Acked {
    id: String,
    expires_at_text: Value,
    expires_at: DateTime<Utc>,
}

/// One ticket for `customer_id`, which must be acknowledged.
async fn hold(
    server: &Process,
    event_id: &str,
    ticket_type_id: &str,
    customer_id: &str,
    ttl: i64,
) -> Acked {
    let r = server
        .hold(event_id, customer_id, ticket_type_id, 1, Some(ttl))
        .await;
    let hold = &support::data(&r)["holdTickets"];
    assert_eq!(hold["status"], "ACTIVE", "{r}");
    Acked {
        id: hold["id"].as_str().expect("hold id").to_owned(),
        expires_at_text: hold["expiresAt"].clone(),
        expires_at: instant(&hold["expiresAt"]),
    }
}

/// `tickethold serve` on the database at `url`, logging into `dir`.
async fn start(url: &str, dir: &Path) -> Process {
    Process::start(&[("DATABASE_URL", url.to_owned())], dir).await
}

/// A hold read back by id, which must exist.
async fn hold_by_id(server: &Process, id: &str) -> Value {
    let hold = server.hold_by_id(id).await;
    assert!(hold.is_object(), "hold {id} is missing after the restart");
    hold
}

fn assert_verify_ok(url: &str) {
    process::assert_verify_ok(&[("DATABASE_URL", url.to_owned())]);
}

fn instant(value: &Value) -> DateTime<Utc> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a DateTime: {value}"));
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

/// Sleeps until the wall clock reaches `at` (at once if it already has).
async fn sleep_until(at: DateTime<Utc>) {
    if let Ok(left) = (at - Utc::now()).to_std() {
        tokio::time::sleep(left).await;
    }
}

/// PostgreSQL drops every connection of the service (a restart, a failover, an administrator's
/// `pg_terminate_backend`) between two requests of a sale: no request fails for it. Pooled
/// connections are pinged before they are lent; the connections that the hold writer and the
/// Redis flow's key look-up keep between reads (no ping) run a failed read once more on a
/// fresh one. After the drop: a hold of a sold-out ticket type (the hold writer's sift of
/// refusals, on its kept connection), a retry of a keyed hold (the same hold back), new keyed
/// holds (the key look-up of the Redis flow, on its kept connection); every hold counted.
async fn no_request_fails_when_postgres_drops_every_connection(db: &TestDb, store: &dyn HoldStore) {
    let limits = Limits::default();
    let now = Millis::now();
    let event = store.create_event("Failover".into(), now).await.unwrap();
    let ticket_type = async |name: &str, capacity| {
        let new = NewTicketType::new(event.id, name.into(), 1000, capacity, None, &limits);
        let made = store.create_ticket_type(new.unwrap(), now).await;
        made.unwrap().unwrap().id
    };
    let (open, scarce) = (
        ticket_type("open", 100).await,
        ticket_type("scarce", 2).await,
    );
    let hold = async |buyer: usize, ticket_type| {
        let customer = CustomerId::new(format!("buyer-{buyer}"), &limits).unwrap();
        let key = Some(format!("cart-{buyer}"));
        let items = vec![(ticket_type, 1)];
        let request = HoldRequest::new(event.id, customer, items, None, key, &limits);
        store.hold(request.unwrap(), Millis::now()).await.unwrap()
    };
    for buyer in 0..2 {
        hold(buyer, scarce).await.unwrap();
    }
    assert!(matches!(
        hold(2, scarce).await,
        Err(Rejection::SoldOut { .. })
    ));
    let first = hold(3, open).await.unwrap();
    for buyer in 4..8 {
        hold(buyer, open).await.unwrap();
    }

    let admin = Database::connect(support::db::postgres_admin_url())
        .await
        .unwrap();
    let database = db.url().rsplit('/').next().unwrap();
    let terminate = format!(
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
         WHERE datname = '{database}' AND pid <> pg_backend_pid()"
    );
    let terminated: i64 = admin
        .query_one_raw(Statement::from_string(DbBackend::Postgres, terminate))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "n")
        .unwrap();
    assert!(terminated >= 4, "{terminated} connections terminated");

    assert!(matches!(
        hold(8, scarce).await,
        Err(Rejection::SoldOut { .. })
    ));
    assert_eq!(hold(3, open).await.unwrap().id, first.id);
    for buyer in 9..40 {
        hold(buyer, open).await.unwrap();
    }
    let held = async |id| {
        store
            .availability(id, Millis::now())
            .await
            .unwrap()
            .unwrap()
            .held
    };
    assert_eq!((held(open).await, held(scarce).await), (36, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_when_postgres_drops_every_connection_in_the_database_flow() {
    let db = TestDb::postgres().await;
    let (store, _bus) = db.store(Limits::default()).await;
    no_request_fails_when_postgres_drops_every_connection(&db, store.as_ref()).await;
    assert_eq!(store.verify().await.unwrap(), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_when_postgres_drops_every_connection_in_the_redis_flow() {
    let db = TestDb::postgres().await;
    let (store, _namespace) = db.redis_store(Limits::default()).await;
    no_request_fails_when_postgres_drops_every_connection(&db, store.as_ref()).await;
    assert_eq!(store.verify().await.unwrap(), vec![]);
}
