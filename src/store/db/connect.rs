//! Connecting to the database and bringing its schema up to date.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection};
use sea_orm::sqlx::query::Query;
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::sqlx::{Connection, Postgres};
use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DbBackend, DbErr, QueryResult, RuntimeErr,
};

use crate::store::StoreError;

/// How long opening a connection, or waiting for one from a pool, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects to `url` (`sqlite://path?mode=rwc` or `postgres://...`) and runs the migrations
/// (on PostgreSQL under an advisory lock, so that instances starting at once take turns).
///
/// SQLite runs in WAL mode with `synchronous=NORMAL`: a committed transaction survives a crash
/// of the process (what "acknowledged" promises here); only a power loss can take the last
/// commits. The pool has one connection, since SQLite has one writer at a time anyway: requests
/// queue in the pool instead of failing with `SQLITE_BUSY`.
///
/// The PostgreSQL pool opens all its connections up front and keeps them: a flash sale starts
/// with a burst, and a pool that grew lazily would fork a dozen PostgreSQL backends in its first
/// milliseconds, stalling the first buyers (the bench saw p99 hold latency near 100 ms on a fresh
/// server, under 50 ms with the pool warm).
pub async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    let db = pool(url, max_connections).await?;
    if db.get_database_backend() != DbBackend::Postgres {
        Migrator::up(&db, None).await?;
        return Ok(db);
    }
    // Instances started at once (a deployment scaled out, or rolled to a new version) would
    // each see the same migrations pending and race to apply them: one at a time instead.
    let mut lock = session(&db.get_postgres_connection_pool().connect_options()).await?;
    let migrated = match take_migration_lock(&mut lock).await {
        Ok(()) => Migrator::up(&db, None).await,
        Err(error) => Err(error),
    };
    // Closing the session releases the lock.
    lock.close().await.ok();
    migrated?;
    Ok(db)
}

/// The advisory lock that PostgreSQL migrations run under ("ticketho" in ASCII).
const MIGRATION_LOCK: i64 = 0x7469_636b_6574_686f;

/// How often an instance asks again for the migration lock that another holds.
const MIGRATION_LOCK_RETRY: Duration = Duration::from_millis(50);

/// Takes the migration lock on `session`, waiting while another instance migrates. It asks
/// again and again rather than wait in `pg_advisory_lock`: a statement waiting there holds a
/// snapshot, which a `CREATE INDEX CONCURRENTLY` of the migrations in progress would wait for
/// in turn, for ever (the test of instances starting at once hung so).
async fn take_migration_lock(session: &mut PgConnection) -> Result<(), DbErr> {
    let mut waiting = false;
    loop {
        let taken: bool = sea_orm::sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .fetch_one(&mut *session)
            .await
            .map_err(|e| DbErr::Conn(RuntimeErr::SqlxError(e.into())))?;
        if taken {
            return Ok(());
        }
        if !waiting {
            tracing::info!("another instance is migrating the database; waiting for it");
            waiting = true;
        }
        tokio::time::sleep(MIGRATION_LOCK_RETRY).await;
    }
}

/// A PostgreSQL connection of its own, outside any pool.
async fn session(options: &PgConnectOptions) -> Result<PgConnection, DbErr> {
    let connecting = PgConnection::connect_with(options);
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| DbErr::Custom("connecting to PostgreSQL timed out".into()))?;
    connected.map_err(|e| DbErr::Conn(RuntimeErr::SqlxError(e.into())))
}

/// Connections to the database at `url` (`max_connections` of PostgreSQL, one of SQLite),
/// without migrating it.
pub(super) async fn pool(url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url);
    options
        .sqlx_logging(false)
        .connect_timeout(CONNECT_TIMEOUT)
        // Bounded, so that an unreachable database is a quick UNAVAILABLE, not a hang.
        .acquire_timeout(CONNECT_TIMEOUT)
        // No reaper: SQLx 0.9.0's can spin a core forever once its count of idle connections
        // has wrapped below zero (sqlx#3645; seen here as a test that never ended, a worker
        // spinning while its runtime shut down). The pools keep every connection open anyway
        // (at least as many as at most), and a dead one is replaced when lent (SQLx's ping).
        .idle_timeout(None::<Duration>)
        .max_lifetime(None::<Duration>);
    if url.starts_with("sqlite:") {
        create_parent_dir(url)?;
        options
            .max_connections(1)
            .min_connections(1)
            // In the process, its one connection cannot be lost on the way as a server's can:
            // no ping (a round trip to SQLx's SQLite thread) before every statement.
            .test_before_acquire(false)
            .map_sqlx_sqlite_opts(|options| {
                options
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
                    .create_if_missing(true)
            });
    } else {
        let connections = max_connections.max(1);
        options
            .max_connections(connections)
            .min_connections(connections);
    }
    Database::connect(options).await
}

/// Runs `task` on a thread named `name`, with a current-thread runtime of its own and
/// `connections` connections to the database server at `url` opened on it, so that the
/// server's answers wake that thread at once instead of waiting for a worker of a busy shared
/// runtime. Returns once connected; the thread ends with the task.
pub async fn run_on_own_thread<F, Fut>(
    name: &str,
    url: &str,
    connections: u32,
    task: F,
) -> Result<(), DbErr>
where
    F: FnOnce(DatabaseConnection) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let cannot_start = |e: std::io::Error| DbErr::Custom(format!("cannot start {name}: {e}"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(cannot_start)?;
    let (connected, connecting) = tokio::sync::oneshot::channel();
    let url = url.to_owned();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                match pool(&url, connections).await {
                    Ok(db) => {
                        connected.send(Ok(())).ok();
                        task(db).await;
                    }
                    Err(error) => {
                        connected.send(Err(error)).ok();
                    }
                }
            })
        })
        .map_err(cannot_start)?;
    connecting
        .await
        .map_err(|_| DbErr::Custom(format!("{name} stopped")))?
}

/// SQLite creates the file but not its folder (`./data/` by default).
fn create_parent_dir(url: &str) -> Result<(), DbErr> {
    let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    match std::path::Path::new(path).parent() {
        Some(parent) if !parent.as_os_str().is_empty() => std::fs::create_dir_all(parent)
            .map_err(|e| DbErr::Custom(format!("cannot create {}: {e}", parent.display()))),
        _ => Ok(()),
    }
}

/// A PostgreSQL connection of a task's own, outside any pool, for the statements it runs all
/// the time. SQLx pings a pooled connection (a round trip) before lending it and again when it
/// comes back, so a statement run on a pool outside a transaction costs three round trips; on
/// a kept connection it costs one. A read that fails on the kept connection closes it and runs
/// once more on a new one: a connection lost under a busy task (PostgreSQL restarted, a
/// failover) fails no read. A write (`write`) runs once.
pub struct Kept {
    options: Arc<PgConnectOptions>,
    connection: Option<PgConnection>,
}

impl Kept {
    /// A connection to the server of `db`'s pool, opened at the first read; `None` on
    /// SQLite, whose one connection is lent without a round trip to a server.
    pub fn of(db: &DatabaseConnection) -> Option<Kept> {
        (db.get_database_backend() == DbBackend::Postgres).then(|| Kept {
            options: db.get_postgres_connection_pool().connect_options(),
            connection: None,
        })
    }

    /// The rows of the read that `query` makes (called again for the second attempt).
    pub async fn fetch_all<'q>(
        &mut self,
        query: impl Fn() -> Query<'q, Postgres, PgArguments>,
    ) -> Result<Vec<QueryResult>, DbErr> {
        if let Some(connection) = &mut self.connection {
            match query().fetch_all(&mut *connection).await {
                Ok(rows) => return Ok(rows.into_iter().map(Into::into).collect()),
                Err(error) => {
                    tracing::info!(%error, "a read on a kept connection failed; once more on a new one");
                    if let Some(connection) = self.connection.take() {
                        connection.close_hard().await.ok();
                    }
                }
            }
        }
        let connection = self.connection.insert(session(&self.options).await?);
        match query().fetch_all(&mut *connection).await {
            Ok(rows) => Ok(rows.into_iter().map(Into::into).collect()),
            Err(error) => {
                self.connection = None;
                Err(sqlx_error(error))
            }
        }
    }

    /// Runs `query`, a statement that changes rows and is its own transaction (no `BEGIN`:
    /// PostgreSQL commits it, or undoes all of it, before it answers), once. One that the
    /// server refused wrote nothing; one whose answer was lost with the connection may have
    /// committed, and is not run again.
    pub async fn write<'q>(&mut self, query: Query<'q, Postgres, PgArguments>) -> Written {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            None => match session(&self.options).await {
                Ok(opened) => self.connection.insert(opened),
                Err(error) => return Written::Refused(error.into()),
            },
        };
        match query.fetch_all(&mut *connection).await {
            Ok(rows) => Written::Done(rows.into_iter().map(Into::into).collect()),
            Err(error) if refused_before_commit(&error) => {
                Written::Refused(sqlx_error(error).into())
            }
            Err(error) => {
                if let Some(connection) = self.connection.take() {
                    connection.close_hard().await.ok();
                }
                Written::Unknown(sqlx_error(error).into())
            }
        }
    }
}

/// Whether `error` is PostgreSQL refusing a statement that it then undid: a broken rule
/// (class 23: a unique key, a foreign key, a check), a transaction to run again (class 40: a
/// serialization failure, a deadlock), a statement that could not run (class 42), a lock not
/// available or a statement cancelled. Any other error, a server shutting down (57P01) say,
/// may come after the commit, or without an answer at all: the outcome is unknown.
fn refused_before_commit(error: &sea_orm::sqlx::Error) -> bool {
    let Some(code) = error.as_database_error().and_then(|error| error.code()) else {
        return false;
    };
    ["23", "40", "42"]
        .iter()
        .any(|class| code.starts_with(class))
        || ["55P03", "57014"].contains(&code.as_ref())
}

/// What a statement run by `Kept::write` came to: its rows, or what they were read into.
pub enum Written<T = Vec<QueryResult>> {
    /// Committed.
    Done(T),
    /// Refused by the server (or never sent): nothing of it was written.
    Refused(StoreError),
    /// No answer, or an error that does not say that the statement was undone: it may have
    /// committed or not.
    Unknown(StoreError),
}

impl<T> Written<T> {
    /// Whether the server refused the statement because rows it was to write changed since they
    /// were read (`serialization_failure`, as `tickethold_changed_since_read` raises it).
    pub fn changed_since_read(&self) -> bool {
        let Written::Refused(error) = self else {
            return false;
        };
        error.sqlstate().as_deref() == Some(SERIALIZATION_FAILURE)
    }
}

/// The SQLSTATE of `serialization_failure`.
pub const SERIALIZATION_FAILURE: &str = "40001";

/// The SQLSTATE of `unique_violation`.
pub const UNIQUE_VIOLATION: &str = "23505";

/// An error of a statement run through SQLx directly, as SeaORM reports one.
fn sqlx_error(error: sea_orm::sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(error.into()))
}
