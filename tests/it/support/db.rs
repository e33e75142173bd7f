//! Fresh databases for tests: a SQLite file in a temp folder, or a new PostgreSQL database on
//! the local server (`TICKETHOLD_TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/postgres`), dropped when the test ends.

use std::sync::Arc;

use sea_orm::{ConnectionTrait, Database};
use tickethold::domain::Limits;
use tickethold::events::Bus;
use tickethold::expiry::Wakeup;
use tickethold::store::db::{DbStore, connect};

pub fn postgres_admin_url() -> String {
    std::env::var("TICKETHOLD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
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

    /// A database store on this database, with its own bus, and the limits given.
    pub async fn store(&self, limits: Limits) -> (Arc<DbStore>, Bus) {
        let connection = connect(self.url(), 16).await.expect("connect");
        let bus = Bus::new(1024);
        let store = DbStore::new(connection, bus.clone(), Arc::new(Wakeup::default()), limits);
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
