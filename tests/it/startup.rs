//! Start-up of several instances at once on one fresh PostgreSQL database, as a deployment
//! scaled out or rolled to a new version starts them: each runs the migrations, one at a time.

use futures::future::join_all;
use migration::MigratorTrait;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::support::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_at_once_migrate_the_database_once() {
    let db = TestDb::postgres().await;
    let starting = (0..8).map(|_| tickethold::store::db::connect(db.url(), 1));
    let started: Vec<_> = join_all(starting)
        .await
        .into_iter()
        .map(|started| started.expect("every instance starts"))
        .collect();
    let conn = &started[0];
    let sql =
        "SELECT version, count(*) AS n FROM seaql_migrations GROUP BY version HAVING count(*) > 1";
    let twice = conn
        .query_all_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap();
    assert!(twice.is_empty(), "a migration recorded twice");
    let sql = "SELECT count(*) AS n FROM seaql_migrations";
    let row = conn
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap()
        .unwrap();
    let applied: i64 = row.try_get("", "n").unwrap();
    assert_eq!(applied as usize, migration::Migrator::migrations().len());
}
