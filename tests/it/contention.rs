//! Contention: a flash sale in miniature. 500 buyers ask for 1 ticket each, all at once, of a
//! ticket type with 100: exactly 100 holds, 400 `SOLD_OUT`, and the counters still add up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use sea_orm::{ConnectionTrait, Database, DbBackend, EntityTrait, Statement, TransactionTrait};
use tickethold::domain::{
    CheckoutRequest, CustomerId, EventId, Hold, HoldId, HoldRequest, HoldStatus, Limits, Millis,
    NewTicketType, Order, Rejection, TicketTypeId,
};
use tickethold::events::{Change, Topic};
use tickethold::store::db::DbStore;
use tickethold::store::db::{
    Kept, Written, batch_statements, committed, connect, hold_and_take_unchanged,
    hold_ids_by_idempotency_keys, hold_ids_by_idempotency_keys_on, keys_probe, sift_read,
};
use tickethold::store::{HoldStore, StoreError};

use crate::support::db::redis_url;
use crate::support::{RedisCluster, RedisNamespace, TestDb, TestServer, error_code};

async fn five_hundred_buyers_for_one_hundred_tickets(
    db: &TestDb,
    server: TestServer,
) -> Arc<TestServer> {
    let server = Arc::new(server);
    let event = server.create_event("Flash sale").await;
    let ticket_type = server.create_ticket_type(&event, 100, Some(2)).await;
    let buyers = (0..500).map(|i| {
        let server = server.clone();
        let (event, ticket_type) = (event.clone(), ticket_type.clone());
        async move {
            server
                .hold(&event, &format!("buyer-{i}"), &ticket_type, 1, Some(600))
                .await
        }
    });
    let responses = join_all(buyers).await;
    let held = responses
        .iter()
        .filter(|r| r.get("errors").is_none())
        .count();
    let sold_out = responses
        .iter()
        .filter(|r| error_code(r).as_deref() == Some("SOLD_OUT"))
        .count();
    assert_eq!((held, sold_out), (100, 400), "on {}", db.kind());
    let availability = server.availability(&ticket_type).await;
    assert_eq!(availability["held"], 100);
    assert_eq!(availability["available"], 0);
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_buyers_for_one_hundred_tickets_on_sqlite() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.url()).await;
    five_hundred_buyers_for_one_hundred_tickets(&db, server).await;
    let (store, _) = db.store(Limits::default()).await;
    assert_eq!(store.verify().await.unwrap(), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_buyers_for_one_hundred_tickets_on_postgres() {
    let db = TestDb::postgres().await;
    let server = TestServer::start(db.url()).await;
    five_hundred_buyers_for_one_hundred_tickets(&db, server).await;
    let (store, _) = db.store(Limits::default()).await;
    assert_eq!(store.verify().await.unwrap(), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_buyers_for_one_hundred_tickets_on_redis() {
    let db = TestDb::postgres().await;
    let namespace = RedisNamespace::new();
    let server = TestServer::start_redis(db.url(), &redis_url(), &namespace.0).await;
    five_hundred_buyers_for_one_hundred_tickets(&db, server).await;
    let store = db
        .redis_store_in(&redis_url(), &namespace.0, Limits::default())
        .await;
    assert_eq!(store.verify().await.unwrap(), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_buyers_for_one_hundred_tickets_on_a_redis_cluster() {
    let db = TestDb::postgres().await;
    let cluster = RedisCluster::start();
    let server = TestServer::start_redis(db.url(), &cluster.url(), "th").await;
    five_hundred_buyers_for_one_hundred_tickets(&db, server).await;
    let store = db
        .redis_store_in(&cluster.url(), "th", Limits::default())
        .await;
    assert_eq!(store.verify().await.unwrap(), vec![]);
}

/// Checkout racing expiry: fifty holds run out at the same instant while their checkouts arrive
/// around it. Each hold ends exactly once: CONFIRMED with its order (the checkout won) or
/// EXPIRED with `HOLD_EXPIRED` answered (the expiry won), never both; the counters add up.
async fn checkout_racing_expiry(server: TestServer) -> TestServer {
    let event = server.create_event("Race").await;
    let ticket_type = server.create_ticket_type(&event, 100, None).await;
    let mut holds = Vec::new();
    for i in 0..50 {
        let held = server
            .hold(&event, &format!("racer-{i}"), &ticket_type, 1, Some(1))
            .await;
        let hold = crate::support::data(&held)["holdTickets"].clone();
        holds.push((
            hold["id"].as_str().unwrap().to_owned(),
            hold["expiresAt"].clone(),
        ));
    }
    let last = chrono::DateTime::parse_from_rfc3339(holds[49].1.as_str().unwrap()).unwrap();
    // Arrive from a few milliseconds before the last expiry to a few after.
    if let Ok(wait) = (last.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std() {
        tokio::time::sleep(wait.saturating_sub(std::time::Duration::from_millis(15))).await;
    }
    // The shop's payment webhook checks out, as the service role may for any hold.
    let payments = server.as_role(tickethold::auth::Role::Service, "payments");
    let checkout = "mutation($h:ID!){checkout(input:{holdId:$h,paymentReference:\"p\"}){id}}";
    let answers = join_all(
        holds
            .iter()
            .map(|(id, _)| payments.gql(checkout, serde_json::json!({"h": id}))),
    )
    .await;
    let mut confirmed = 0;
    for ((id, _), answer) in holds.iter().zip(&answers) {
        let hold = server.hold_by_id(id).await;
        match error_code(answer).as_deref() {
            None => {
                assert_eq!(hold["status"], "CONFIRMED", "{id}: {answer} {hold}");
                confirmed += 1;
            }
            Some("HOLD_EXPIRED") => assert_eq!(hold["status"], "EXPIRED", "{id}: {hold}"),
            other => panic!("{id}: unexpected {other:?}: {answer}"),
        }
    }
    let availability = server.availability(&ticket_type).await;
    assert_eq!(availability["sold"], confirmed);
    assert_eq!(availability["held"], 0);
    server
}

crate::on_both_flows!(checkout_racing_expiry_story);

async fn checkout_racing_expiry_story(server: TestServer) {
    checkout_racing_expiry(server).await;
}

/// Twenty retries of one request, all at once, with one idempotency key: one hold.
async fn concurrent_retries_make_one_hold(server: TestServer) {
    let event = server.create_event("Retries").await;
    let ticket_type = server.create_ticket_type(&event, 10, None).await;
    let hold = "mutation($e:ID!,$t:ID!){holdTickets(input:{eventId:$e,customerId:\"same\",\
                items:[{ticketTypeId:$t,quantity:2}],idempotencyKey:\"cart-1\"}){id}}";
    let vars = serde_json::json!({"e": event, "t": ticket_type});
    let buyer = server.as_buyer("same");
    let answers = join_all((0..20).map(|_| buyer.gql(hold, vars.clone()))).await;
    let ids: std::collections::HashSet<String> = answers
        .iter()
        .map(|answer| {
            crate::support::data(answer)["holdTickets"]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert_eq!(server.availability(&ticket_type).await["held"], 2);
}

crate::on_both_flows!(concurrent_retries_make_one_hold);

/// After a sell-out, the database flow refuses from committed rows without taking the hot
/// row's lock: refusals, and retries of holds already made, are answered while another
/// transaction holds that lock (a checkout's sale, another instance's batch), where a locking
/// refusal would queue behind it. Stock given back sells again.
#[tokio::test]
async fn refusals_after_a_sell_out_do_not_queue_for_the_hot_row_on_postgres() {
    let db = TestDb::postgres().await;
    let limits = Limits::default();
    let (store, _bus) = db.store(limits.clone()).await;
    let now = Millis::now();
    let event = store.create_event("Hot".into(), now).await.unwrap();
    let new = NewTicketType::new(event.id, "A".into(), 100, 1, None, &limits).unwrap();
    let ticket_type = store.create_ticket_type(new, now).await.unwrap().unwrap();
    let request = |customer: &str, key: &str| {
        let customer = CustomerId::new(customer.into(), &limits).unwrap();
        let items = [(ticket_type.id, 1)];
        HoldRequest::new(event.id, customer, items, None, Some(key.into()), &limits).unwrap()
    };
    let made = store.hold(request("c1", "k"), now).await.unwrap().unwrap();
    let refused = store.hold(request("c2", "k"), now).await.unwrap();
    assert!(
        matches!(refused, Err(Rejection::SoldOut { .. })),
        "{refused:?}"
    );

    let other = Database::connect(db.url()).await.unwrap();
    let blocker = other.begin().await.unwrap();
    blocker
        .execute_unprepared(&format!(
            "SELECT id FROM ticket_types WHERE id = '{}' FOR UPDATE",
            ticket_type.id
        ))
        .await
        .unwrap();
    let answers = tokio::time::timeout(
        Duration::from_secs(30),
        join_all([
            store.hold(request("c3", "k"), now),
            store.hold(request("c1", "k"), now),
        ]),
    )
    .await
    .expect("answered while the row was locked");
    let [refused, retried] = <[_; 2]>::try_from(answers).unwrap();
    assert!(
        matches!(
            refused.unwrap(),
            Err(Rejection::SoldOut { available: 0, .. })
        ),
        "c3"
    );
    assert_eq!(retried.unwrap().map(|hold| hold.id), Ok(made.id));
    blocker.rollback().await.unwrap();

    store.release(made.id, now).await.unwrap().unwrap();
    let sold_again = store.hold(request("c3", "k"), now).await.unwrap();
    assert!(sold_again.is_ok(), "{sold_again:?}");
    assert_eq!(store.verify().await.unwrap(), vec![]);
}

/// The lines of PostgreSQL's `EXPLAIN ANALYZE` of `statement`, run on `conn`.
async fn plan_of(conn: &impl ConnectionTrait, statement: Statement) -> Vec<String> {
    conn.query_all_raw(Statement {
        sql: format!("EXPLAIN (ANALYZE, COSTS OFF) {}", statement.sql),
        ..statement
    })
    .await
    .unwrap()
    .iter()
    .map(|row| row.try_get::<String>("", "QUERY PLAN").unwrap())
    .collect()
}

/// The lines of `EXPLAIN ANALYZE` of the generic plan that PostgreSQL settles on for `sql` as a
/// prepared statement (its parameters' types inferred), executed with `arguments` (SQL
/// literals). (`EXPLAIN` of a statement with bound parameters plans it for their values,
/// whatever `plan_cache_mode` says.)
async fn generic_plan_of(conn: &impl ConnectionTrait, sql: &str, arguments: &str) -> Vec<String> {
    conn.execute_unprepared(&format!(
        "SET plan_cache_mode = force_generic_plan; PREPARE generic AS {sql}"
    ))
    .await
    .unwrap();
    let explain = format!("EXPLAIN (ANALYZE, COSTS OFF) EXECUTE generic ({arguments})");
    let plan = conn
        .query_all_raw(Statement::from_string(DbBackend::Postgres, explain))
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get::<String>("", "QUERY PLAN").unwrap())
        .collect();
    conn.execute_unprepared("DEALLOCATE generic; RESET plan_cache_mode")
        .await
        .unwrap();
    plan
}

/// A batch of holds asks which holds are overdue (for every batch of refusals once sold out)
/// and, for a ticket type with a limit per customer, what its customers already have (of this
/// sale: their history is not read). On a PostgreSQL whose statistics were taken before the
/// sale, the planner would start from the hot ticket type's items, every hold of the sale, once
/// per batch (the bench measured a tenth of the holds per second with 10,000 of them); the
/// statements (and the sift's one read, which counts on PostgreSQL) read items only by their
/// holds.
#[tokio::test]
async fn a_batch_reads_hold_items_only_by_their_holds_on_postgres() {
    let db = TestDb::postgres().await;
    let conn = connect(db.url(), 1).await.unwrap();
    let now = Millis::now().0;
    // Twenty past events of 1,000 holds each, analyzed: the sale's buyers' history, a paid
    // hold of each in each; then 2,000 active holds of a hot ticket type that the statistics
    // have not seen, as during a sale, one per buyer.
    let holds_of = |event: &str, status: &str, expires_at: i64, count: u32| {
        format!(
            "WITH made AS (
                 INSERT INTO holds (id, event_id, customer_id, status, created_at, expires_at)
                 SELECT gen_random_uuid(), e.id, 'hot/' || i, '{status}', 0, {expires_at}
                 FROM events e, generate_series(1, {count}) i WHERE e.name LIKE '{event}'
                 RETURNING id, event_id)
             INSERT INTO hold_items (hold_id, ticket_type_id, quantity)
             SELECT made.id, t.id, 1 FROM made JOIN ticket_types t USING (event_id);"
        )
    };
    conn.execute_unprepared(&format!(
        "INSERT INTO events SELECT gen_random_uuid(), 'past ' || i, 0 FROM generate_series(1, 20) i;
         INSERT INTO events VALUES (gen_random_uuid(), 'hot', 0);
         INSERT INTO ticket_types (id, event_id, name, price_cents, capacity, max_per_customer,
             created_at)
         SELECT gen_random_uuid(), id, 'A', 0, 100000, 4, 0 FROM events;
         {past}
         ANALYZE;
         {hot}",
        past = holds_of("past %", "CONFIRMED", now - 60_000, 1000),
        hot = holds_of("hot", "ACTIVE", now + 600_000, 2000),
    ))
    .await
    .unwrap();
    let customers: Vec<String> = (1..=64).map(|i| format!("hot/{i}")).collect();
    let customers: Vec<&str> = customers.iter().map(String::as_str).collect();
    let hot = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT id FROM events WHERE name = 'hot'",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<uuid::Uuid>("", "id")
        .unwrap();
    let statements = |now| batch_statements(DbBackend::Postgres, &customers, hot, Millis(now));
    let hot_type = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT id FROM ticket_types WHERE event_id = '{hot}'"),
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<uuid::Uuid>("", "id")
        .unwrap();
    // The sift's one read counts the customers' tickets too: planned for its values, and
    // generic.
    let sift = sift_read(&[TicketTypeId(hot_type)], &[], &customers, Millis(now));
    let quoted: Vec<String> = customers.iter().map(|c| format!("'{c}'")).collect();
    let sift_arguments = format!(
        "ARRAY['{hot_type}']::uuid[], '{{}}'::text[], '{{}}'::text[], {now}, ARRAY[{}]::text[]",
        quoted.join(",")
    );
    let mut plans = Vec::new();
    for statement in statements(now) {
        plans.push(plan_of(&conn, statement).await);
    }
    plans.push(plan_of(&conn, sift.clone()).await);
    plans.push(generic_plan_of(&conn, &sift.sql, &sift_arguments).await);
    for plan in &plans {
        let reads_items_otherwise = plan.iter().any(|line| {
            line.contains(" on hold_items")
                && !line.contains("never executed")
                && !line.contains("using hold_items_pkey")
        });
        assert!(!reads_items_otherwise, "{}", plan.join("\n"));
    }
    for plan in &plans[2..] {
        let scans_holds = plan.iter().any(|line| line.contains("Seq Scan on holds"));
        assert!(!scans_holds, "{}", plan.join("\n"));
        let by_customer_and_event = plan
            .iter()
            .any(|line| line.contains("idx_holds_customer_id_event_id on holds"));
        assert!(by_customer_and_event, "{}", plan.join("\n"));
    }
    // The generic plan of the overdue check as well: through the `(status, expires_at)` index,
    // never a scan of the holds.
    let [overdue, _] = statements(now);
    let arguments: Vec<String> = overdue
        .values
        .iter()
        .flat_map(|values| values.0.iter())
        .map(|value| match value {
            sea_orm::Value::Int(Some(n)) => n.to_string(),
            sea_orm::Value::BigInt(Some(n)) => n.to_string(),
            sea_orm::Value::BigUnsigned(Some(n)) => n.to_string(),
            sea_orm::Value::String(Some(text)) => format!("'{text}'"),
            other => panic!("unexpected argument {other:?}"),
        })
        .collect();
    let plan = generic_plan_of(&conn, &overdue.sql, &arguments.join(", ")).await;
    let scans_holds = plan.iter().any(|line| line.contains("Seq Scan on holds"));
    assert!(!scans_holds, "{}", plan.join("\n"));
    // The buyers' holds of this sale alone, never their history.
    let plan = plan_of(&conn, statements(now)[1].clone()).await;
    let by_customer_and_event = plan
        .iter()
        .any(|line| line.contains("idx_holds_customer_id_event_id on holds"));
    assert!(by_customer_and_event, "{}", plan.join("\n"));

    // What they count: each buyer's hot hold (not the paid ones of past sales); nothing overdue
    // now, every hot hold ten minutes later.
    let [overdue, owned] = statements(now);
    assert!(conn.query_all_raw(overdue).await.unwrap().is_empty());
    let owned: Vec<i64> = conn
        .query_all_raw(owned)
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get("", "total").unwrap())
        .collect();
    assert_eq!(owned, vec![1; 64]);
    let mut kept = Kept::of(&conn).unwrap();
    let hot_type = TicketTypeId(hot_type);
    let read = committed(&conn, &mut kept, &[hot_type], &[], &customers, Millis(now))
        .await
        .unwrap();
    let expected: HashMap<(String, TicketTypeId), i64> = customers
        .iter()
        .map(|customer| (((*customer).to_owned(), hot_type), 1))
        .collect();
    assert_eq!(read.owned, expected);
    let [overdue, _] = statements(now + 600_000);
    let overdue = conn.query_all_raw(overdue).await.unwrap();
    let total: i64 = overdue[0].try_get("", "total").unwrap();
    assert_eq!((overdue.len(), total), (1, 2000));
}

/// Every sift of a sold-out sale, and every keyed hold of the Redis flow, asks which of its
/// (customer, idempotency key) pairs made a hold already. On PostgreSQL each pair is one probe of
/// the unique index, also on a holds table whose sale the planner's statistics have not seen (only
/// the history: 5,000 past events, 50,000 ended holds), and only exact pairs are found: by the
/// probe alone (the Redis flow's, on a pooled or a kept connection) and by the sift's one
/// statement, which also reads the ticket types, what the customers own of a limited one (each
/// through the `(customer_id, event_id)` index) and whether any hold is overdue (and then, only
/// then, how many tickets).
#[tokio::test]
async fn idempotency_keys_are_probed_pair_by_pair_on_postgres() {
    let db = TestDb::postgres().await;
    let conn = connect(db.url(), 1).await.unwrap();
    conn.execute_unprepared(
        "INSERT INTO events SELECT gen_random_uuid(), 'past ' || i, 0
         FROM generate_series(1, 5000) i;
         INSERT INTO ticket_types (id, event_id, name, price_cents, capacity, created_at)
         SELECT gen_random_uuid(), id, 'A', 0, 100000, 0 FROM events;
         INSERT INTO holds (id, event_id, customer_id, status, created_at, expires_at)
         SELECT gen_random_uuid(), e.id, 'past-' || i, 'EXPIRED', 0, 0
         FROM events e, generate_series(1, 10) i;
         ANALYZE;
         INSERT INTO events VALUES (gen_random_uuid(), 'sale', 0);
         INSERT INTO ticket_types (id, event_id, name, price_cents, capacity, max_per_customer,
             created_at)
         SELECT gen_random_uuid(), id, 'A', 0, 100000, 10, 0 FROM events WHERE name = 'sale';
         INSERT INTO holds (id, event_id, customer_id, status, created_at, expires_at,
             idempotency_key)
         SELECT gen_random_uuid(), e.id, 'buyer-' || i, 'ACTIVE', 0, 1000, 'cart-' || i
         FROM events e, generate_series(1, 5000) i WHERE e.name = 'sale';
         INSERT INTO holds (id, event_id, customer_id, status, created_at, expires_at,
             idempotency_key)
         SELECT gen_random_uuid(), id, 'buyer-1', 'ACTIVE', 0, 1000, 'cart-x' FROM events
         WHERE name = 'sale';
         INSERT INTO hold_items (hold_id, ticket_type_id, quantity)
         SELECT holds.id, ticket_types.id, 2 FROM holds
         JOIN ticket_types USING (event_id)
         WHERE holds.customer_id IN ('buyer-1', 'buyer-2');
         UPDATE holds SET status = 'CONFIRMED' WHERE customer_id = 'buyer-2';",
    )
    .await
    .unwrap();
    let ticket_type = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT ticket_types.id FROM ticket_types JOIN events ON events.id = event_id \
             WHERE events.name = 'sale'",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<uuid::Uuid>("", "id")
        .unwrap();
    let ticket_types = [
        TicketTypeId(ticket_type),
        TicketTypeId(uuid::Uuid::new_v4()),
    ];
    // A batch's worth: six pairs that tell exact pairs from sets, and new keys.
    let new_keys: Vec<(String, String)> = (10..68)
        .map(|i| (format!("buyer-{i}"), format!("cart-new-{i}")))
        .collect();
    let asked: Vec<(&str, &str)> = [
        ("buyer-1", "cart-1"),
        ("buyer-2", "cart-1"),
        ("buyer-1", "cart-x"),
        ("buyer-3", "cart-3"),
        ("buyer-9999", "cart-3"),
        ("buyer-4", "cart-5"),
    ]
    .into_iter()
    .chain(new_keys.iter().map(|(c, k)| (c.as_str(), k.as_str())))
    .collect();

    // The plan for these values, and the generic plan that the prepared statement settles on
    // (with a bound status, an `EXISTS` over the active holds was a scan of the whole table).
    let literal = |items: Vec<String>, kind: &str| {
        let quoted: Vec<String> = items.iter().map(|item| format!("'{item}'")).collect();
        format!("ARRAY[{}]::{kind}[]", quoted.join(","))
    };
    let customers = literal(asked.iter().map(|(c, _)| c.to_string()).collect(), "text");
    let keys = literal(asked.iter().map(|(_, k)| k.to_string()).collect(), "text");
    let ids = literal(
        ticket_types.iter().map(|t| t.0.to_string()).collect(),
        "uuid",
    );
    let probe = keys_probe(&asked);
    let askers: Vec<&str> = asked.iter().map(|(customer, _)| *customer).collect();
    let sift = sift_read(&ticket_types, &asked, &askers, Millis(500));
    let plans = [
        plan_of(&conn, probe.clone()).await,
        plan_of(&conn, sift.clone()).await,
        generic_plan_of(&conn, &probe.sql, &format!("{customers}, {keys}")).await,
        generic_plan_of(
            &conn,
            &sift.sql,
            &format!("{ids}, {customers}, {keys}, 500, {customers}"),
        )
        .await,
    ];
    for (n, plan) in plans.iter().enumerate() {
        let reads_otherwise = plan.iter().any(|line| {
            (line.contains(" on holds")
                && !line.contains("using uq_holds_customer_idempotency_key")
                && !line.contains("using idx_holds_status_expires_at")
                && !line.contains("using idx_holds_customer_id_event_id"))
                || line.contains("Seq Scan on ticket_types")
        });
        assert!(!reads_otherwise, "{}", plan.join("\n"));
        // The sift's plans count the customers' tickets through their holds of the sale.
        let counts_by_customer = plan
            .iter()
            .any(|line| line.contains("using idx_holds_customer_id_event_id"));
        assert_eq!(counts_by_customer, n % 2 == 1, "{}", plan.join("\n"));
    }

    let exact_pairs = |found: &HashMap<(String, String), uuid::Uuid>| {
        let mut pairs: Vec<(String, String)> = found.keys().cloned().collect();
        pairs.sort();
        let ids: HashSet<_> = found.values().collect();
        assert_eq!(ids.len(), pairs.len());
        pairs
    };
    let expected: Vec<(String, String)> = [
        ("buyer-1", "cart-1"),
        ("buyer-1", "cart-x"),
        ("buyer-3", "cart-3"),
    ]
    .map(|(customer, key)| (customer.to_owned(), key.to_owned()))
    .to_vec();
    let found = hold_ids_by_idempotency_keys(&conn, &asked).await.unwrap();
    assert_eq!(exact_pairs(&found), expected);
    let mut kept = Kept::of(&conn).unwrap();
    for _ in 0..2 {
        let on_kept = hold_ids_by_idempotency_keys_on(&mut kept, &asked).await;
        assert_eq!(on_kept.unwrap(), found);
    }
    // Nothing overdue before the holds expire at 1000; after, buyer-1's two holds, two
    // tickets each (buyer-2's is confirmed). Of the limited ticket type buyer-1 owns those
    // until they expire, buyer-2 its two for good; the other askers' holds have no items.
    let hot = TicketTypeId(ticket_type);
    for (now, overdue, buyer_1) in [(500, None, 4), (1000, Some(4), 0)] {
        let read = committed(
            &conn,
            &mut kept,
            &ticket_types,
            &asked,
            &askers,
            Millis(now),
        );
        let read = read.await.unwrap();
        let owned = HashMap::from([
            (("buyer-1".to_owned(), hot), buyer_1),
            (("buyer-2".to_owned(), hot), 2),
        ]);
        assert_eq!(read.owned, owned);
        assert_eq!(read.made, found);
        assert_eq!(
            read.types.keys().copied().collect::<Vec<_>>(),
            [TicketTypeId(ticket_type)]
        );
        assert_eq!(
            read.overdue.get(&TicketTypeId(ticket_type)).copied(),
            overdue
        );
    }
    let none_asked = committed(&conn, &mut kept, &ticket_types[1..], &[], &[], Millis(500));
    let none_asked = none_asked.await.unwrap();
    assert!(none_asked.types.is_empty() && none_asked.made.is_empty());
    assert!(none_asked.owned.is_empty());
}

/// When a sale ends its buyers pay or give up at once: 100 checkouts and 100 releases of holds
/// of two ticket types (made at once, in batches, every third with an idempotency key, and each
/// read back as it was asked), all at once, with a second checkout of ten of the holds, a second
/// release of five, a checkout and a release of one hold, a checkout of a hold that is due and
/// one of no hold. Each hold ends once, at its request's instant, and is announced; a second
/// checkout gets the first's order; orders carry their items and totals; the counters add up;
/// and the checkouts and releases changed the hot row in batches, not once each.
async fn buyers_pay_and_give_up_at_once(db: TestDb) {
    let limits = Limits::default();
    let (store, bus) = db.store(limits.clone()).await;
    let now = Millis::now();
    let (event, (a, b)) = event_of_two_types(&*store, "Ending", &limits, now).await;
    // Every third buyer has an idempotency key.
    let hold = |buyer: usize, ttl_secs: i64| {
        let customer = CustomerId::new(format!("buyer-{buyer}"), &limits).unwrap();
        let items = items_of(buyer, (a, b));
        let key = buyer.is_multiple_of(3).then(|| format!("cart-{buyer}"));
        let request =
            HoldRequest::new(event, customer, items, Some(ttl_secs), key, &limits).unwrap();
        store.hold(request, now)
    };
    let made: Vec<Hold> = join_all((0..201).map(|i| hold(i, 600)))
        .await
        .into_iter()
        .map(|made| made.unwrap().unwrap())
        .collect();
    // Written as asked, in batches: the hold of each buyer with its key or none, its items.
    for (buyer, hold) in made.iter().enumerate() {
        let read = store.get_hold(hold.id, now).await.unwrap().unwrap();
        let key = buyer.is_multiple_of(3).then(|| format!("cart-{buyer}"));
        assert_eq!((&read.idempotency_key, &read.items), (&key, &hold.items));
        assert_eq!(
            (read.created_at, read.expires_at),
            (now, Millis(now.0 + 600_000))
        );
    }
    let holds: Vec<HoldId> = made.iter().map(|hold| hold.id).collect();
    let (holds, raced) = (&holds[..200], holds[200]);
    let due = hold(201, 1).await.unwrap().unwrap().id;
    let version = async |id| store.availability(id, now).await.unwrap().unwrap().version;
    let versions_before = (version(a).await, version(b).await);
    let mut announced: Vec<_> = holds
        .iter()
        .map(|id| bus.subscribe(Topic::Hold(*id)))
        .collect();

    // Two seconds later, each request a millisecond after the one before: the late buyer's hold
    // is due, every other hold is active.
    let instant = |i: usize| Millis(now.0 + 2_000 + i as i64);
    let checkout = |(i, id): (usize, HoldId)| {
        let request = CheckoutRequest::new(id, format!("pay-{id}"), None, &limits).unwrap();
        store.checkout(request, instant(i))
    };
    let paying = holds[..100].iter().chain(&holds[..10]).copied();
    let paying = paying.chain([raced, due, HoldId(uuid::Uuid::new_v4())]);
    let checkouts = join_all(paying.enumerate().map(checkout));
    let giving_up = holds[100..].iter().chain(&holds[100..105]).chain([&raced]);
    let releases = join_all(
        giving_up
            .enumerate()
            .map(|(i, id)| store.release(*id, instant(i))),
    );
    let (checkouts, releases) = tokio::join!(checkouts, releases);

    let orders: Vec<_> = checkouts[..110]
        .iter()
        .map(|answer| answer.as_ref().unwrap().as_ref().unwrap())
        .collect();
    for (i, order) in orders[..100].iter().enumerate() {
        assert_eq!(order.hold_id, holds[i]);
        assert_eq!(order.created_at, instant(i), "the order of hold {i}");
        assert_paid_as_held(order, i, (a, b));
    }
    for i in 0..10 {
        assert_eq!(
            orders[100 + i].id,
            orders[i].id,
            "a second checkout of hold {i}"
        );
    }
    let race = [
        checkouts[110].as_ref().unwrap().is_ok(),
        releases[105].as_ref().unwrap().is_ok(),
    ];
    assert_eq!(race.iter().filter(|won| **won).count(), 1, "{race:?}");
    assert!(
        matches!(&checkouts[111], Ok(Err(Rejection::HoldExpired))),
        "{:?}",
        checkouts[111]
    );
    let unknown = &checkouts[112];
    assert!(
        matches!(unknown, Ok(Err(Rejection::NotFound { .. }))),
        "{unknown:?}"
    );
    for (i, id) in holds[100..105].iter().enumerate() {
        let answers = [&releases[i], &releases[100 + i]];
        let released = answers.iter().filter(|a| matches!(a, Ok(Ok(_)))).count();
        let refused = answers
            .iter()
            .filter(|a| {
                let not_active = Rejection::HoldNotActive {
                    status: HoldStatus::Released,
                };
                matches!(a, Ok(Err(rejection)) if *rejection == not_active)
            })
            .count();
        assert_eq!((released, refused), (1, 1), "hold {id}: {answers:?}");
    }
    for (i, answer) in releases[5..100].iter().enumerate() {
        let hold = answer.as_ref().unwrap().as_ref().unwrap();
        assert_eq!(
            (hold.status, hold.ended_at),
            (HoldStatus::Released, Some(instant(i + 5)))
        );
    }
    for (i, receiver) in announced.iter_mut().enumerate() {
        let Ok(Change::Hold(hold)) = receiver.try_recv() else {
            panic!("hold {i} ended unannounced");
        };
        let status = if i < 100 {
            HoldStatus::Confirmed
        } else {
            HoldStatus::Released
        };
        assert_eq!(hold.status, status, "hold {i}");
    }

    // Sold: one A per checkout, two B per even one (with the raced hold's, buyer 200's, if it
    // was checked out).
    let raced_sold = u32::from(race[0]);
    let after = |id| store.availability(id, instant(200));
    let (after_a, after_b) = (
        after(a).await.unwrap().unwrap(),
        after(b).await.unwrap().unwrap(),
    );
    assert_eq!(
        (after_a.sold, after_a.held),
        (100 + raced_sold, 0),
        "on {}",
        db.kind()
    );
    assert_eq!(
        (after_b.sold, after_b.held),
        (100 + 2 * raced_sold, 0),
        "on {}",
        db.kind()
    );
    assert_eq!(store.verify().await.unwrap(), vec![], "on {}", db.kind());
    // 200 holds ended (and one expired): alone, each would have changed A's row.
    let changes = (
        after_a.version - versions_before.0,
        after_b.version - versions_before.1,
    );
    assert!(
        changes.0 < 100 && changes.1 < 100,
        "{changes:?} changes on {}",
        db.kind()
    );
}

/// An event named `name` with two ticket types of 300, A at 15.00 and B at 7.00, for buyers
/// who pay at once.
pub(crate) async fn event_of_two_types(
    store: &impl HoldStore,
    name: &str,
    limits: &Limits,
    now: Millis,
) -> (EventId, (TicketTypeId, TicketTypeId)) {
    let event = store.create_event(name.into(), now).await.unwrap().id;
    let mut types = Vec::new();
    for (name, price_cents) in [("A", 1500), ("B", 700)] {
        let new = NewTicketType::new(event, name.into(), price_cents, 300, None, limits);
        let created = store.create_ticket_type(new.unwrap(), now).await;
        types.push(created.unwrap().unwrap().id);
    }
    (event, (types[0], types[1]))
}

/// What buyer `buyer` holds of the ticket types of `event_of_two_types`: even buyers one A and
/// two B, odd buyers one A.
pub(crate) fn items_of(
    buyer: usize,
    (a, b): (TicketTypeId, TicketTypeId),
) -> Vec<(TicketTypeId, i64)> {
    if buyer.is_multiple_of(2) {
        vec![(a, 1), (b, 2)]
    } else {
        vec![(a, 1)]
    }
}

/// The items and total of buyer `buyer`'s order (see `items_of`).
pub(crate) fn assert_paid_as_held(
    order: &Order,
    buyer: usize,
    types: (TicketTypeId, TicketTypeId),
) {
    let mut items = items_of(buyer, types);
    items.sort();
    let total = if buyer.is_multiple_of(2) { 2900 } else { 1500 };
    let got: Vec<_> = order
        .items
        .iter()
        .map(|it| (it.ticket_type_id, i64::from(it.quantity)))
        .collect();
    assert_eq!(
        (got, order.total_cents),
        (items, total),
        "the order of buyer {buyer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyers_pay_and_give_up_at_once_on_sqlite() {
    buyers_pay_and_give_up_at_once(TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyers_pay_and_give_up_at_once_on_postgres() {
    buyers_pay_and_give_up_at_once(TestDb::postgres().await).await;
}

/// On PostgreSQL a batch of holds is decided from a read without a lock and written in one
/// statement, on the condition that its ticket types did not change since the read. Here
/// another instance's batch takes 2 of 3 tickets between the read and the write of a hold of 2
/// (it has the row locked when the write comes): the write is refused whole and the hold decided
/// again under the lock, against the one ticket left; nothing of the first decision remains.
#[tokio::test]
async fn a_hold_whose_stock_changed_between_its_read_and_its_write_is_decided_again_on_postgres() {
    let sale = OneType::open(3).await;
    let other = Database::connect(sale.db.url()).await.unwrap();
    let theirs = other.begin().await.unwrap();
    let their_hold = uuid::Uuid::new_v4();
    let their_hold_sql = sale.their_hold(their_hold, "theirs", 2, None);
    theirs.execute_unprepared(&their_hold_sql).await.unwrap();
    let mine = tokio::spawn({
        let store = sale.store.clone();
        let (request, now) = (sale.request("mine", 2, None), sale.now);
        async move { store.hold(request, now).await }
    });
    wait_for_a_lock_wait(&other).await;
    theirs.commit().await.unwrap();

    let mine = mine.await.unwrap().unwrap();
    assert!(
        matches!(mine, Err(Rejection::SoldOut { available: 1, .. })),
        "{mine:?}"
    );
    let last = sale
        .store
        .hold(sale.request("last", 1, None), sale.now)
        .await
        .unwrap();
    assert!(last.is_ok(), "{last:?}");
    let mine_written = other
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) AS n FROM holds WHERE customer_id = 'mine'",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(mine_written.try_get::<i64>("", "n").unwrap(), 0);
    assert_eq!(sale.store.verify().await.unwrap(), vec![]);
}

/// A PostgreSQL database with a store, an event and one ticket type, for the tests of a batch
/// of holds written at once.
struct OneType {
    db: TestDb,
    limits: Limits,
    store: Arc<DbStore>,
    event: EventId,
    ticket_type: TicketTypeId,
    now: Millis,
}

impl OneType {
    /// A ticket type of `capacity` tickets.
    async fn open(capacity: i64) -> OneType {
        let db = TestDb::postgres().await;
        let limits = Limits::default();
        let (store, _bus) = db.store(limits.clone()).await;
        let now = Millis::now();
        let event = store.create_event("Hot".into(), now).await.unwrap().id;
        let new = NewTicketType::new(event, "A".into(), 100, capacity, None, &limits).unwrap();
        let ticket_type = store
            .create_ticket_type(new, now)
            .await
            .unwrap()
            .unwrap()
            .id;
        OneType {
            db,
            limits,
            store,
            event,
            ticket_type,
            now,
        }
    }

    /// `customer` asks for `quantity` tickets.
    fn request(&self, customer: &str, quantity: i64, key: Option<&str>) -> HoldRequest {
        let customer = CustomerId::new(customer.into(), &self.limits).unwrap();
        let items = [(self.ticket_type, quantity)];
        let key = key.map(str::to_owned);
        HoldRequest::new(self.event, customer, items, None, key, &self.limits).unwrap()
    }

    /// The statements with which another instance's batch makes hold `id` of `quantity`
    /// tickets for `customer` and takes its stock.
    fn their_hold(
        &self,
        id: uuid::Uuid,
        customer: &str,
        quantity: i64,
        key: Option<&str>,
    ) -> String {
        let key = key.map_or("NULL".to_owned(), |key| format!("'{key}'"));
        format!(
            "INSERT INTO holds (id, event_id, customer_id, status, created_at, expires_at,
                                idempotency_key)
             VALUES ('{id}', '{event}', '{customer}', 'ACTIVE', {now}, {later}, {key});
             INSERT INTO hold_items (hold_id, ticket_type_id, quantity)
             VALUES ('{id}', '{tt}', {quantity});
             UPDATE ticket_types SET held = held + {quantity}, version = version + 1
             WHERE id = '{tt}'",
            event = self.event,
            tt = self.ticket_type,
            now = self.now.0,
            later = self.now.0 + 600_000,
        )
    }
}

/// Waits until a statement of the database of `conn` waits for a lock.
async fn wait_for_a_lock_wait(conn: &impl ConnectionTrait) {
    let waiting = Statement::from_string(
        DbBackend::Postgres,
        "SELECT count(*) AS n FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    );
    let started = std::time::Instant::now();
    loop {
        let row = conn.query_one_raw(waiting.clone()).await.unwrap().unwrap();
        if row.try_get::<i64>("", "n").unwrap() > 0 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no statement waited for a lock"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `hold_and_take_unchanged` writes the holds of a batch decided from a read, and takes their
/// stock, only if what the decisions rested on did not change since the read: each ticket
/// type's tickets available and, where a customer's limit applies, its version. Otherwise
/// PostgreSQL refuses the statement whole (the stock of the ticket type that did not change,
/// and the holds, are not written either).
#[tokio::test]
async fn a_batch_written_at_once_is_refused_whole_when_its_stock_changed_since_its_read_on_postgres()
 {
    let db = TestDb::postgres().await;
    let limits = Limits::default();
    let (store, _bus) = db.store(limits.clone()).await;
    let now = Millis::now();
    let event = store.create_event("Two".into(), now).await.unwrap();
    let new =
        |name: &str, max| NewTicketType::new(event.id, name.into(), 100, 10, max, &limits).unwrap();
    let a = store
        .create_ticket_type(new("A", None), now)
        .await
        .unwrap()
        .unwrap();
    let b = store
        .create_ticket_type(new("B", Some(4)), now)
        .await
        .unwrap()
        .unwrap();
    let conn = connect(db.url(), 1).await.unwrap();
    let mut kept = Kept::of(&conn).unwrap();
    let read = || async {
        let types = entity::ticket_type::Entity::find()
            .all(&conn)
            .await
            .unwrap();
        types
            .into_iter()
            .map(|tt| (TicketTypeId(tt.id), tt))
            .collect::<BTreeMap<_, _>>()
    };
    let customer = CustomerId::new("buyer".into(), &limits).unwrap();
    let items = [(a.id, 1), (b.id, 1)];
    let request = HoldRequest::new(event.id, customer, items, None, None, &limits).unwrap();
    let hold = request.hold_at(now);
    let taken = BTreeMap::from([(a.id, 1), (b.id, 1)]);
    let change = |sql: &str, id: TicketTypeId| {
        let sql = format!("UPDATE ticket_types SET {sql} WHERE id = '{id}'");
        let conn = &conn;
        async move { conn.execute_unprepared(&sql).await.unwrap() }
    };
    let written = |stock: &[(TicketTypeId, i32)]| {
        let stock = stock.to_vec();
        let conn = &conn;
        async move {
            let holds = conn
                .query_one_raw(Statement::from_string(
                    DbBackend::Postgres,
                    "SELECT count(*) AS n FROM holds",
                ))
                .await
                .unwrap()
                .unwrap()
                .try_get::<i64>("", "n")
                .unwrap();
            let types = entity::ticket_type::Entity::find().all(conn).await.unwrap();
            let held: Vec<(TicketTypeId, i32)> = types
                .iter()
                .map(|tt| (TicketTypeId(tt.id), tt.held))
                .collect();
            let mut expected = stock;
            expected.sort();
            let mut held = held;
            held.sort();
            (holds, held == expected)
        }
    };

    // B has a limit per customer: its version moving is enough (a hold of the same customer
    // on another instance, balanced by an expiry, changes nothing available).
    let stale = read().await;
    change("version = version + 1", b.id).await;
    let refused = hold_and_take_unchanged(&mut kept, &[&hold], &taken, &stale).await;
    assert!(refused.changed_since_read(), "B's version");
    assert_eq!(written(&[(a.id, 0), (b.id, 0)]).await, (0, true));

    // A's tickets available moved.
    let stale = read().await;
    change("held = held + 1", a.id).await;
    let refused = hold_and_take_unchanged(&mut kept, &[&hold], &taken, &stale).await;
    assert!(refused.changed_since_read(), "A's stock");
    assert_eq!(written(&[(a.id, 1), (b.id, 0)]).await, (0, true));
    change("held = held - 1", a.id).await;

    // A has no limit: its version alone moving (a checkout, say) changes nothing decided.
    let fresh = read().await;
    change("version = version + 1", a.id).await;
    let Written::Done(stock) = hold_and_take_unchanged(&mut kept, &[&hold], &taken, &fresh).await
    else {
        panic!("not written");
    };
    let stock: Vec<(TicketTypeId, i32)> = stock
        .iter()
        .map(|tt| (TicketTypeId(tt.id), tt.held))
        .collect();
    let mut expected = vec![(a.id, 1), (b.id, 1)];
    expected.sort();
    assert_eq!(stock, expected);
    assert_eq!(written(&[(a.id, 1), (b.id, 1)]).await, (1, true));
    assert_eq!(store.verify().await.unwrap(), vec![]);
}

/// A batch written at once meets an idempotency key of its own that another instance committed
/// (with its hold of the same tickets) since the read: PostgreSQL refuses the write whole (the
/// unique key, or the stock that changed, whichever the statement meets first), and the batch
/// decided again under the lock answers the request as a retry of that instance's hold.
#[tokio::test]
async fn a_key_taken_between_the_read_and_the_write_answers_a_retry_on_postgres() {
    let sale = OneType::open(3).await;
    let other = Database::connect(sale.db.url()).await.unwrap();
    let theirs = other.begin().await.unwrap();
    let their_hold = uuid::Uuid::new_v4();
    let their_hold_sql = sale.their_hold(their_hold, "buyer", 1, Some("cart"));
    theirs.execute_unprepared(&their_hold_sql).await.unwrap();
    let mine = tokio::spawn({
        let store = sale.store.clone();
        let (request, now) = (sale.request("buyer", 1, Some("cart")), sale.now);
        async move { store.hold(request, now).await }
    });
    wait_for_a_lock_wait(&other).await;
    theirs.commit().await.unwrap();

    let mine = mine.await.unwrap().unwrap().unwrap();
    assert_eq!(mine.id, HoldId(their_hold));
    let stock = sale.store.availability(sale.ticket_type, sale.now).await;
    assert_eq!(stock.unwrap().map(|a| a.available()), Some(2));
    assert_eq!(sale.store.verify().await.unwrap(), vec![]);
}

/// A batch written at once whose connection is lost while its statement waits (here its
/// PostgreSQL backend is terminated): the statement may have committed as far as the writer
/// can tell, so the batch is not run again (a rerun could make a second hold): UNAVAILABLE.
/// The next hold is written on a new connection.
#[tokio::test]
async fn a_write_at_once_that_goes_unanswered_is_not_run_again_on_postgres() {
    let sale = OneType::open(3).await;
    let other = Database::connect(sale.db.url()).await.unwrap();
    let blocker = other.begin().await.unwrap();
    blocker
        .execute_unprepared(&format!(
            "SELECT id FROM ticket_types WHERE id = '{}' FOR UPDATE",
            sale.ticket_type
        ))
        .await
        .unwrap();
    let lost = tokio::spawn({
        let store = sale.store.clone();
        let (request, now) = (sale.request("lost", 1, None), sale.now);
        async move { store.hold(request, now).await }
    });
    wait_for_a_lock_wait(&other).await;
    other
        .execute_unprepared(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await
        .unwrap();
    // A rerun would wait for the lock that this test holds.
    let lost = tokio::time::timeout(Duration::from_secs(30), lost)
        .await
        .expect("answered without being run again")
        .unwrap();
    assert!(matches!(lost, Err(StoreError::Unavailable(_))), "{lost:?}");
    blocker.rollback().await.unwrap();

    let next = sale
        .store
        .hold(sale.request("next", 1, None), sale.now)
        .await;
    assert!(next.as_ref().is_ok_and(Result::is_ok), "{next:?}");
    let stock = sale.store.availability(sale.ticket_type, sale.now).await;
    assert_eq!(stock.unwrap().map(|a| a.available()), Some(2));
    assert_eq!(sale.store.verify().await.unwrap(), vec![]);
}
