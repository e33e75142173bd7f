//! The raw engine references, measured in the same run against the same PostgreSQL and Redis,
//! so that tickethold's throughput reads as a ratio: (a) the naive database flow, one
//! transaction per hold with a conditional `UPDATE` of one hot row and an `INSERT`; (b) the raw
//! Redis flow, one `EVALSHA` of a minimal hold script per hold; and (c) the request floor, the
//! cheapest GraphQL request (`{ serverTime }`, a buyer's token verified, no storage) through a
//! tickethold server with the bench's own client: what any hold pays before it holds anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
    TransactionTrait,
};
use serde_json::Value;

use super::Args;
use super::api::{Api, Outcome};
use super::load::new_histogram;
use super::target;

/// One reference's measurements.
pub struct ReferenceResult {
    pub name: &'static str,
    pub attempts: u64,
    pub succeeded: u64,
    pub failures: u64,
    pub secs: f64,
    pub latency_us: Histogram<u64>,
}

const HOLD_SCRIPT: &str = "if tonumber(redis.call('GET', KEYS[1])) > 0 then \
    redis.call('DECR', KEYS[1]); redis.call('SET', KEYS[2], '1', 'PX', ARGV[1]); \
    return 1 end return 0";

/// Runs the references with the bench's workload (one hot row of `--capacity`).
pub async fn run_all(args: &Args) -> anyhow::Result<Vec<ReferenceResult>> {
    eprintln!("== references: naive PostgreSQL, raw Redis, request floor");
    Ok(vec![
        naive_postgres(args).await?,
        raw_redis(args).await?,
        request_floor(args).await?,
    ])
}

async fn naive_postgres(args: &Args) -> anyhow::Result<ReferenceResult> {
    let name = format!("tickethold_bench_ref_{}", uuid::Uuid::new_v4().simple());
    let url = target::create_database(&args.postgres_url, &name).await?;
    let result = naive_postgres_in(&url, args).await;
    target::drop_database(&args.postgres_url, &name).await?;
    result
}

async fn naive_postgres_in(url: &str, args: &Args) -> anyhow::Result<ReferenceResult> {
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(args.concurrency as u32)
        .min_connections(args.concurrency as u32)
        // No reaper, as in the service's pools (see `store::db::connect`).
        .idle_timeout(None::<std::time::Duration>)
        .max_lifetime(None::<std::time::Duration>)
        .sqlx_logging(false);
    let db = Database::connect(options)
        .await
        .context("cannot connect to the reference database")?;
    db.execute_unprepared(
        "CREATE TABLE ticket (id int PRIMARY KEY, capacity int NOT NULL, held int NOT NULL);
         CREATE TABLE hold (id uuid PRIMARY KEY, ticket int NOT NULL, created_at bigint NOT NULL);",
    )
    .await
    .context("cannot create the reference tables")?;
    // The warm-up on a hot ticket of its own (2), then the sale on ticket 1.
    if let Some(warm) = args.warm_up() {
        naive_sale(&db, 2, &warm).await?;
    }
    naive_sale(&db, 1, args).await
}

/// `workload`'s buyers, each a naive hold of ticket `ticket` (inserted with its capacity).
async fn naive_sale(
    db: &DatabaseConnection,
    ticket: i32,
    workload: &Args,
) -> anyhow::Result<ReferenceResult> {
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO ticket (id, capacity, held) VALUES ($1, $2, 0)",
        [
            ticket.into(),
            i32::try_from(workload.capacity)
                .context("capacity too large")?
                .into(),
        ],
    ))
    .await
    .context("cannot insert the hot ticket")?;
    let db = db.clone();
    Ok(drive(workload, "naive PostgreSQL", move |_| {
        let db = db.clone();
        async move { naive_hold(&db, ticket).await }
    })
    .await)
}

/// One naive hold: a conditional update of the hot row, then the hold row, in a transaction.
async fn naive_hold(db: &DatabaseConnection, ticket: i32) -> anyhow::Result<bool> {
    let txn = db.begin().await?;
    let updated = txn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE ticket SET held = held + 1 WHERE id = $1 AND held < capacity",
            [ticket.into()],
        ))
        .await?;
    let held = updated.rows_affected() == 1;
    if held {
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO hold (id, ticket, created_at) VALUES ($1, $2, $3)",
            [
                uuid::Uuid::new_v4().into(),
                ticket.into(),
                chrono::Utc::now().timestamp_millis().into(),
            ],
        ))
        .await?;
    }
    txn.commit().await?;
    Ok(held)
}

async fn raw_redis(args: &Args) -> anyhow::Result<ReferenceResult> {
    let namespace = format!("tickethold-bench-ref-{}", uuid::Uuid::new_v4().simple());
    let result = raw_redis_in(&namespace, args).await;
    target::delete_redis_keys(&args.redis_url, &namespace).await?;
    result
}

async fn raw_redis_in(namespace: &str, args: &Args) -> anyhow::Result<ReferenceResult> {
    let client = redis::Client::open(args.redis_url.as_str()).context("invalid Redis URL")?;
    // One connection per concurrent buyer, as redis-benchmark's clients.
    let mut connections = Vec::new();
    for _ in 0..args.concurrency {
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .context("cannot connect to Redis")?;
        connections.push(conn);
    }
    let mut first = connections[0].clone();
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(HOLD_SCRIPT)
        .query_async(&mut first)
        .await
        .context("SCRIPT LOAD failed")?;
    let connections = Arc::new(connections);
    // The warm-up under a prefix of its own, then the sale.
    if let Some(warm) = args.warm_up() {
        let prefix = format!("{namespace}:warm-up");
        raw_redis_sale(&connections, &sha, &prefix, &warm).await?;
    }
    raw_redis_sale(&connections, &sha, namespace, args).await
}

/// `workload`'s buyers, each an `EVALSHA` of the hold script on the stock under `prefix` (set
/// to its capacity), on the connection of its worker.
async fn raw_redis_sale(
    connections: &Arc<Vec<redis::aio::MultiplexedConnection>>,
    sha: &str,
    prefix: &str,
    workload: &Args,
) -> anyhow::Result<ReferenceResult> {
    let stock_key = format!("{prefix}:stock");
    let _: () = redis::cmd("SET")
        .arg(&stock_key)
        .arg(workload.capacity)
        .query_async(&mut connections[0].clone())
        .await
        .context("SET failed")?;
    let ttl_ms = u64::from(workload.ttl_secs) * 1000;
    let (connections, sha, prefix) = (connections.clone(), sha.to_owned(), prefix.to_owned());
    Ok(drive(workload, "raw Redis", move |(worker, buyer)| {
        let mut conn = connections[worker].clone();
        let (sha, stock_key) = (sha.clone(), stock_key.clone());
        let hold_key = format!("{prefix}:hold:{buyer}");
        async move {
            let held: i64 = redis::cmd("EVALSHA")
                .arg(&sha)
                .arg(2)
                .arg(&stock_key)
                .arg(&hold_key)
                .arg(ttl_ms)
                .query_async(&mut conn)
                .await?;
            Ok(held == 1)
        }
    })
    .await)
}

/// `{ serverTime }` as `--buyers` distinct buyers against a server of the embedded flow (the
/// query touches no storage, so the flow does not matter): HTTP, JSON, the token, and GraphQL's
/// parsing, validation and execution, at the same concurrency as the holds.
async fn request_floor(args: &Args) -> anyhow::Result<ReferenceResult> {
    let mut server = target::Server::start(super::Flow::Sqlite, args).await?;
    let api = Api::new(&server.url(), args.concurrency, &server.secret)?;
    // Signed before the clock starts, as the flash sale's buyers' tokens are.
    let buyers = args
        .buyers
        .max(args.warm_up().map_or(0, |warm| warm.buyers));
    let tokens = api.buyers((0..buyers).map(|buyer| format!("buyer-{buyer}")));
    let floor = move |(_, buyer): (usize, u64)| {
        let (api, tokens) = (api.clone(), tokens.clone());
        async move {
            let token = &tokens[buyer as usize];
            match api
                .call_as(token, "{serverTime}", Value::Null, "serverTime")
                .await
            {
                Outcome::Done(_) => Ok(true),
                other => anyhow::bail!("serverTime failed: {other:?}"),
            }
        }
    };
    if let Some(warm) = args.warm_up() {
        drive(&warm, "request floor", floor.clone()).await;
    }
    let result = drive(args, "request floor", floor).await;
    server.stop().await?;
    Ok(result)
}

/// Runs `--buyers` holds through `hold((worker, buyer))`, `--concurrency` at once.
async fn drive<F, Fut>(args: &Args, name: &'static str, hold: F) -> ReferenceResult
where
    F: Fn((usize, u64)) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<bool>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..args.concurrency {
        let (next, hold, buyers) = (next.clone(), hold.clone(), args.buyers);
        workers.push(tokio::spawn(async move {
            let mut latency = new_histogram();
            let (mut attempts, mut succeeded, mut failures) = (0, 0, 0);
            loop {
                let buyer = next.fetch_add(1, Ordering::Relaxed);
                if buyer >= buyers {
                    return (attempts, succeeded, failures, latency);
                }
                let sent = Instant::now();
                let outcome = hold((worker, buyer)).await;
                latency.saturating_record(micros(sent.elapsed()));
                attempts += 1;
                match outcome {
                    Ok(true) => succeeded += 1,
                    Ok(false) => {}
                    Err(_) => failures += 1,
                }
            }
        }));
    }
    let mut result = ReferenceResult {
        name,
        attempts: 0,
        succeeded: 0,
        failures: 0,
        secs: 0.0,
        latency_us: new_histogram(),
    };
    for worker in workers {
        match worker.await {
            Ok((attempts, succeeded, failures, latency)) => {
                result.attempts += attempts;
                result.succeeded += succeeded;
                result.failures += failures;
                result.latency_us.add(latency).ok();
            }
            Err(_) => result.failures += 1,
        }
    }
    result.secs = started.elapsed().as_secs_f64();
    result
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}
