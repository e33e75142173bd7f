//! Fresh databases for tests: a SQLite file in a temp folder, or a new PostgreSQL database on
//! the local server (`TICKETHOLD_TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/postgres`), dropped when the test ends.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::{ConnectionTrait, Database};
use tickethold::domain::Limits;
use tickethold::events::Bus;
use tickethold::expiry::Wakeup;
use tickethold::store::db::{DbStore, connect};
use tickethold::store::redis::{RedisSettings, RedisStore};

pub fn postgres_admin_url() -> String {
    std::env::var("TICKETHOLD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The shared Redis of the machine (`TICKETHOLD_TEST_REDIS_URL`, by default
/// `redis://127.0.0.1:6379/`); tests isolate themselves by key namespace.
pub fn redis_url() -> String {
    std::env::var("TICKETHOLD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// A key namespace of its own on the shared Redis, deleted on drop.
pub struct RedisNamespace(pub String);

impl RedisNamespace {
    pub fn new() -> RedisNamespace {
        RedisNamespace(format!("th-test-{}", uuid::Uuid::new_v4().simple()))
    }
}

impl Drop for RedisNamespace {
    fn drop(&mut self) {
        let pattern = format!("{}:*", self.0);
        let _ = std::thread::spawn(move || {
            let Ok(client) = redis::Client::open(redis_url()) else {
                return;
            };
            let Ok(mut conn) = client.get_connection() else {
                return;
            };
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query(&mut conn)
                .unwrap_or_default();
            for chunk in keys.chunks(500) {
                let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query(&mut conn);
            }
        })
        .join();
    }
}

pub enum TestDb {
    Sqlite {
        _dir: tempfile::TempDir,
        url: String,
    },
    Postgres {
        name: String,
        url: String,
    },
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/tickethold.db?mode=rwc", dir.path().display());
        TestDb::Sqlite { _dir: dir, url }
    }

    /// A new, empty PostgreSQL database. Fails (never skips) when PostgreSQL is unreachable:
    /// `.ci/run` starts it.
    pub async fn postgres() -> TestDb {
        let admin_url = postgres_admin_url();
        let admin = Database::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin_url} is needed: {e}"));
        let name = format!("tickethold_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create db");
        admin.close().await.ok();
        let (base, _) = admin_url
            .rsplit_once('/')
            .expect("URL with a database name");
        TestDb::Postgres {
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub async fn both() -> Vec<TestDb> {
        vec![TestDb::sqlite(), TestDb::postgres().await]
    }

    pub fn url(&self) -> &str {
        match self {
            TestDb::Sqlite { url, .. } | TestDb::Postgres { url, .. } => url,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            TestDb::Sqlite { .. } => "sqlite",
            TestDb::Postgres { .. } => "postgres",
        }
    }

    /// A Redis-flow store over this database and the local Redis, in a namespace of its own
    /// that is deleted when the guard drops.
    pub async fn redis_store(&self, limits: Limits) -> (Arc<RedisStore>, RedisNamespace) {
        let namespace = RedisNamespace::new();
        let store = self
            .redis_store_in(&redis_url(), &namespace.0, limits)
            .await;
        (store, namespace)
    }

    /// A Redis-flow store over this database and the Redis at `url`, in `namespace` (to look at
    /// what a server wrote there).
    pub async fn redis_store_in(
        &self,
        url: &str,
        namespace: &str,
        limits: Limits,
    ) -> Arc<RedisStore> {
        let settings = RedisSettings {
            url: url.to_owned(),
            namespace: namespace.to_owned(),
            pin_timeout: Duration::from_secs(30),
            journal_interval: Duration::from_millis(20),
            command_timeout: Duration::from_secs(5),
            cluster: url.contains(','),
        };
        self.redis_store_with(settings, limits).await
    }

    /// A Redis-flow store over this database with `settings`.
    pub async fn redis_store_with(
        &self,
        settings: RedisSettings,
        limits: Limits,
    ) -> Arc<RedisStore> {
        let url = settings.url.clone();
        let connection = connect(self.url(), 4).await.expect("connect");
        let store = RedisStore::connect(connection, settings, Arc::new(Wakeup::default()), limits)
            .await
            .unwrap_or_else(|e| panic!("Redis at {url} is needed: {e}"));
        Arc::new(store)
    }

    /// A database store on this database, with its own bus, and the limits given.
    pub async fn store(&self, limits: Limits) -> (Arc<DbStore>, Bus) {
        let bus = Bus::new(1024);
        let wakeup = Arc::new(Wakeup::default());
        let store = DbStore::open(self.url(), 16, bus.clone(), wakeup, limits)
            .await
            .expect("connect");
        (Arc::new(store), bus)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let TestDb::Postgres { name, .. } = self else {
            return;
        };
        let name = name.clone();
        // Drop runs outside any runtime guarantee: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async {
                    if let Ok(admin) = Database::connect(&postgres_admin_url()).await {
                        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        let _ = admin.execute_unprepared(&sql).await;
                    }
                });
            }
        })
        .join();
    }
}
