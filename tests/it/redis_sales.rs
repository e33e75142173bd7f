//! The database half of the Redis flow's checkouts: each sale is a transaction that journals
//! the hold as confirmed, writes its order and double-checks the stock; concurrent sales commit
//! together, and none commits after its pin's deadline.

use std::sync::Arc;
use std::time::Duration;

use entity::{hold, order, ticket_type};
use futures::future::join_all;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    DbBackend, EntityTrait, PaginatorTrait, QueryFilter, Statement, TransactionTrait,
};
use tickethold::domain::{
    CheckoutRequest, CustomerId, EventId, Hold, HoldId, HoldRequest, HoldStatus, Limits, Millis,
    NewTicketType, Order, Rejection, TicketTypeId,
};
use tickethold::store::redis::{RedisSettings, RedisStore};
use tickethold::store::{HoldStore, Outcome, StoreError, StoreResult};
use tokio::task::JoinHandle;

use crate::contention::{assert_paid_as_held, event_of_two_types, items_of};
use crate::support::db::redis_url;
use crate::support::{RedisNamespace, TestDb};

/// The database's own counters of a ticket type: (sold, version).
async fn sold_and_version(conn: &DatabaseConnection, id: TicketTypeId) -> (i32, i64) {
    let model = ticket_type::Entity::find_by_id(id.0)
        .one(conn)
        .await
        .unwrap()
        .unwrap();
    (model.sold, model.version)
}

/// When a sale ends its buyers pay at once. 100 checkouts of holds of two ticket types, with a
/// second checkout of ten of them, all at once: each hold is sold once, at its request's
/// instant, with its items and total; a second checkout gets the first's order; the database
/// sold what the orders say; and the hot row changed in batches, not once per sale. Then five
/// checkouts at once with a sixth whose hold the journal has ended already (Redis does not know
/// it): the database refuses that one (HOLD_EXPIRED, no order, its stock not sold), which
/// rolls a batch back; the five are sold all the same.
async fn buyers_pay_at_once(db: TestDb) {
    let limits = Limits::default();
    let (store, _namespace) = db.redis_store(limits.clone()).await;
    let conn = tickethold::store::db::connect(db.url(), 1).await.unwrap();
    let now = Millis::now();
    let (event, (a, b)) = event_of_two_types(&*store, "Paying", &limits, now).await;
    let hold = |buyer: usize| {
        let customer = CustomerId::new(format!("buyer-{buyer}"), &limits).unwrap();
        let items = items_of(buyer, (a, b));
        let request = HoldRequest::new(event, customer, items, Some(600), None, &limits);
        store.hold(request.unwrap(), now)
    };
    let holds: Vec<Hold> = join_all((0..106).map(hold))
        .await
        .into_iter()
        .map(|made| made.unwrap().unwrap())
        .collect();
    let before = (
        sold_and_version(&conn, a).await,
        sold_and_version(&conn, b).await,
    );

    let instant = |i: usize| Millis(now.0 + 1_000 + i as i64);
    let checkout = |(i, id): (usize, HoldId)| {
        let request = CheckoutRequest::new(id, format!("pay-{id}"), None, &limits).unwrap();
        store.checkout(request, instant(i))
    };
    let paying = holds[..100].iter().chain(&holds[..10]).map(|hold| hold.id);
    let checkouts = join_all(paying.enumerate().map(checkout)).await;
    let orders: Vec<_> = checkouts
        .iter()
        .map(|answer| answer.as_ref().unwrap().as_ref().unwrap())
        .collect();
    for (i, order) in orders[..100].iter().enumerate() {
        assert_eq!(order.hold_id, holds[i].id);
        assert_eq!(order.created_at, instant(i), "the order of hold {i}");
        assert_eq!(order.payment_reference, format!("pay-{}", holds[i].id));
        assert_paid_as_held(order, i, (a, b));
    }
    for i in 0..10 {
        assert_eq!(
            orders[100 + i].id,
            orders[i].id,
            "a second checkout of hold {i}"
        );
    }
    let after = (
        sold_and_version(&conn, a).await,
        sold_and_version(&conn, b).await,
    );
    assert_eq!(
        (after.0.0, after.1.0),
        (100, 100),
        "sold A and B on {}",
        db.kind()
    );
    let changes = (after.0.1 - before.0.1, after.1.1 - before.1.1);
    assert!(
        changes.0 < 100 && changes.1 < 50,
        "{changes:?} changes of the ticket types' rows on {}",
        db.kind()
    );

    // The journal has the holds; one of them ends there behind Redis's back.
    store.journal().flush().await;
    let ended = holds[105].id;
    let mut expired: hold::ActiveModel = hold::Entity::find_by_id(ended.0)
        .one(&conn)
        .await
        .unwrap()
        .expect("journaled")
        .into();
    expired.status = Set(HoldStatus::Expired.as_str().to_owned());
    expired.ended_at = Set(Some(instant(0).0));
    hold::Entity::update(expired).exec(&conn).await.unwrap();
    let paying = holds[100..].iter().map(|hold| hold.id);
    let checkouts = join_all(paying.enumerate().map(|(i, id)| checkout((i + 200, id)))).await;
    for (i, answer) in checkouts[..5].iter().enumerate() {
        let order = answer.as_ref().unwrap().as_ref().unwrap();
        assert_eq!(order.hold_id, holds[100 + i].id);
    }
    assert!(
        matches!(checkouts[5], Ok(Err(Rejection::HoldExpired))),
        "{:?}",
        checkouts[5]
    );
    let orders_of_ended = order::Entity::find()
        .filter(order::Column::HoldId.eq(ended.0))
        .count(&conn)
        .await
        .unwrap();
    assert_eq!(orders_of_ended, 0);
    // Buyers 100, 102 and 104 held two B each.
    let sold = (
        sold_and_version(&conn, a).await.0,
        sold_and_version(&conn, b).await.0,
    );
    assert_eq!(sold, (105, 106), "on {}", db.kind());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyers_pay_at_once_in_the_redis_flow_on_postgres() {
    buyers_pay_at_once(TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyers_pay_at_once_in_the_redis_flow_on_sqlite() {
    buyers_pay_at_once(TestDb::sqlite()).await;
}

/// The Redis flow on a fresh PostgreSQL database, with pins that time out after 1.5 s (the
/// sale's deadlines at a half and one second), a ticket type of 100 and two connections
/// of the test's own.
struct Slow {
    _db: TestDb,
    _namespace: RedisNamespace,
    store: Arc<RedisStore>,
    conn: DatabaseConnection,
    limits: Limits,
    event: EventId,
    ticket_type: TicketTypeId,
    now: Millis,
}

impl Slow {
    async fn new() -> Slow {
        let db = TestDb::postgres().await;
        let limits = Limits::default();
        let namespace = RedisNamespace::new();
        let settings = RedisSettings {
            url: redis_url(),
            namespace: namespace.0.clone(),
            // Deadlines of half a second and a second: short for a test, long for a sale.
            pin_timeout: Duration::from_millis(1500),
            journal_interval: Duration::from_millis(20),
            command_timeout: Duration::from_secs(5),
            cluster: false,
        };
        let store = db.redis_store_with(settings, limits.clone()).await;
        let conn = tickethold::store::db::connect(db.url(), 2).await.unwrap();
        let now = Millis::now();
        let event = store.create_event("Slow".into(), now).await.unwrap().id;
        let new = NewTicketType::new(event, "GA".into(), 100, 10, None, &limits).unwrap();
        let created = store.create_ticket_type(new, now).await.unwrap();
        Slow {
            _db: db,
            _namespace: namespace,
            store,
            conn,
            limits,
            event,
            ticket_type: created.unwrap().id,
            now,
        }
    }

    async fn hold(&self, customer: &str) -> Hold {
        let customer = CustomerId::new(customer.into(), &self.limits).unwrap();
        let items = [(self.ticket_type, 1)];
        let request = HoldRequest::new(self.event, customer, items, None, None, &self.limits);
        let held = self.store.hold(request.unwrap(), self.now).await.unwrap();
        held.unwrap()
    }

    /// The checkout of `hold`, as a task of its own.
    fn pay(&self, hold: HoldId, reference: &str) -> JoinHandle<StoreResult<Outcome<Order>>> {
        let request = CheckoutRequest::new(hold, reference.into(), None, &self.limits).unwrap();
        let (store, now) = (self.store.clone(), self.now);
        tokio::spawn(async move { store.checkout(request, now).await })
    }

    /// A transaction of the test's own that has run `sql` (with `values`).
    async fn locking(&self, sql: &str, values: Vec<sea_orm::Value>) -> DatabaseTransaction {
        let lock = self.conn.begin().await.unwrap();
        let statement = Statement::from_sql_and_values(DbBackend::Postgres, sql, values);
        lock.execute_raw(statement).await.unwrap();
        lock
    }

    async fn status(&self, hold: HoldId) -> HoldStatus {
        let hold = self.store.get_hold(hold, self.now).await.unwrap();
        hold.unwrap().status
    }

    /// The hold's status as Redis stores it (`PINNED` during a checkout).
    async fn stored_status(&self, hold: HoldId) -> String {
        let client = redis::Client::open(redis_url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let key = self.store.keys().hold(self.event, hold);
        redis::cmd("HGET")
            .arg(key)
            .arg("status")
            .query_async(&mut conn)
            .await
            .unwrap()
    }
}

/// A checkout whose sale the database does not commit before the pin's deadline (a third of
/// the pin timeout; here the ticket type's row is locked by another transaction) answers
/// UNAVAILABLE and gives the hold back in Redis, and that sale never commits: once the row is
/// free, the next checkout sells the hold with its own payment reference, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_not_committed_by_its_deadline_never_commits() {
    let slow = Slow::new().await;
    let held = slow.hold("buyer").await;

    let sql = "SELECT id FROM ticket_types WHERE id = $1 FOR UPDATE";
    let lock = slow.locking(sql, vec![slow.ticket_type.0.into()]).await;
    let late = slow.pay(held.id, "pay-1").await.unwrap();
    assert!(
        matches!(&late, Err(StoreError::Unavailable(message)) if message.contains("in time")),
        "{late:?}"
    );
    assert_eq!(slow.status(held.id).await, HoldStatus::Active);
    lock.rollback().await.unwrap();

    let order = slow.pay(held.id, "pay-2").await.unwrap().unwrap().unwrap();
    assert_eq!(order.payment_reference, "pay-2", "the late sale committed");
    assert_eq!(sold_and_version(&slow.conn, slow.ticket_type).await.0, 1);
    assert_eq!(slow.store.verify().await.unwrap(), vec![]);
}

/// A sale whose commit outlasts its deadlines (here a deferred trigger waits, at the commit,
/// for a lock the test holds) may still commit, so its hold stays pinned until the sale has
/// ended either way. A commit that ends while its checkout waits: the checkout answers its
/// order. One that outlasts the pin timeout too: the checkout answers UNAVAILABLE, and the hold
/// is neither expired nor given back by the sweep while the commit hangs; once it lands, the
/// sweep finishes the checkout (the hold confirmed, its ticket sold once); meanwhile the sweep
/// expires other holds as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_whose_commit_outlasts_its_deadlines_is_settled_before_its_hold_moves() {
    let slow = Slow::new().await;
    for sql in [
        "CREATE FUNCTION wait_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NULL; END $$",
        "CREATE CONSTRAINT TRIGGER wait_at_commit AFTER INSERT ON orders \
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION wait_at_commit()",
    ] {
        slow.conn.execute_unprepared(sql).await.unwrap();
    }
    let gate = "SELECT pg_advisory_xact_lock(4242)";

    let first = slow.hold("first").await;
    let lock = slow.locking(gate, vec![]).await;
    let paying = slow.pay(first.id, "pay-first");
    while slow.stored_status(first.id).await != "PINNED" {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Past the deadline for the commit's answer (a second from the pin), before the pin timeout.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!paying.is_finished(), "{:?}", paying.await);
    lock.rollback().await.unwrap();
    let order = paying.await.unwrap();
    assert_eq!(order.unwrap().unwrap().payment_reference, "pay-first");
    assert_eq!(slow.status(first.id).await, HoldStatus::Confirmed);

    let second = slow.hold("second").await;
    let abandoned = slow.hold("abandoned").await;
    let lock = slow.locking(gate, vec![]).await;
    let unknown = slow.pay(second.id, "pay-second").await.unwrap();
    assert!(
        matches!(unknown, Err(StoreError::Unavailable(_))),
        "{unknown:?}"
    );
    assert_eq!(slow.stored_status(second.id).await, "PINNED");
    let long_after = slow.now + Millis(3_600_000);
    let expired = slow.store.expire_due(long_after, 100).await.unwrap();
    let expired: Vec<HoldId> = expired.iter().map(|hold| hold.id).collect();
    assert_eq!(
        expired,
        vec![abandoned.id],
        "only the abandoned hold expires"
    );
    assert_eq!(slow.stored_status(second.id).await, "PINNED");
    lock.rollback().await.unwrap();
    let expired = slow.store.expire_due(long_after, 100).await.unwrap();
    assert_eq!(expired, vec![], "a sold hold expired");
    assert_eq!(slow.status(second.id).await, HoldStatus::Confirmed);
    let order = slow.store.order_of_hold(second.id).await.unwrap().unwrap();
    assert_eq!(order.payment_reference, "pay-second");
    assert_eq!(sold_and_version(&slow.conn, slow.ticket_type).await.0, 2);
    assert_eq!(slow.store.verify().await.unwrap(), vec![]);
}
