//! Test support: fresh databases, a server bound to port 0, a GraphQL client over HTTP and a
//! subscription client over WebSocket.

pub mod client;
pub mod db;
pub mod process;
pub mod redis;
pub mod server;
pub mod ws;

pub use db::{RedisNamespace, TestDb};
pub use process::Process;
pub use redis::{RedisCluster, RedisServer};
pub use server::TestServer;
pub use ws::{Protocol, Subscription};

use std::time::Duration;

use serde_json::Value;
use tickethold::auth::{Authenticator, Role};

/// The JWT secret of every server the tests start.
pub const TEST_SECRET: &str = "tickethold-tests-secret-of-32-bytes-or-more";

/// A token signed with [`TEST_SECRET`], valid for an hour.
pub fn token(role: Role, subject: &str) -> String {
    Authenticator::hs256(TEST_SECRET.as_bytes())
        .mint(role, subject, Duration::from_secs(3600))
        .expect("a token")
}

/// The environment that gives a real `tickethold serve` the tests' secret and no rate limits
/// (tests that check the limits set their own).
pub fn auth_env() -> Vec<(&'static str, String)> {
    vec![
        ("TICKETHOLD_JWT_SECRET", TEST_SECRET.to_owned()),
        ("TICKETHOLD_HOLDS_PER_MINUTE_PER_CUSTOMER", "0".to_owned()),
        ("TICKETHOLD_HOLDS_PER_MINUTE_PER_ADDRESS", "0".to_owned()),
    ]
}

/// `extensions.code` of the first error of a GraphQL response, if any.
pub fn error_code(response: &Value) -> Option<String> {
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .map(str::to_owned)
}

/// The `data` of a response that must have no error.
#[track_caller]
pub fn data(response: &Value) -> &Value {
    assert!(
        response.get("errors").is_none(),
        "unexpected errors: {response}"
    );
    &response["data"]
}

/// Runs a story (an `async fn(TestServer)`) on the database flow (SQLite) and on the Redis flow
/// (a private Redis with keyspace notifications, and a Redis Cluster of three primaries; with
/// PostgreSQL), as three tests in a module named after the story.
#[macro_export]
macro_rules! on_both_flows {
    ($story:ident) => {
        mod $story {
            use $crate::support::{RedisServer, TestDb, TestServer};

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_the_database_flow() {
                let db = TestDb::sqlite();
                super::$story(TestServer::start(db.url()).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_the_redis_flow() {
                let db = TestDb::postgres().await;
                let redis = RedisServer::start();
                super::$story(TestServer::start_redis(db.url(), &redis.url(), "th").await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_the_redis_flow_on_a_cluster() {
                let db = TestDb::postgres().await;
                let cluster = $crate::support::RedisCluster::start();
                super::$story(TestServer::start_redis(db.url(), &cluster.url(), "th").await).await;
            }
        }
    };
}
