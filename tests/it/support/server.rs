//! The whole service, in process, bound to port 0; a GraphQL client through `Deref`.

use std::net::SocketAddr;

use tickethold::app::{self, Config};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::client::Client;

pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    client: Client,
}

impl TestServer {
    pub async fn start(database_url: &str) -> TestServer {
        TestServer::start_with(test_config(database_url)).await
    }

    /// The Redis flow over `database_url` and the Redis at `redis_url`, in `namespace`.
    pub async fn start_redis(database_url: &str, redis_url: &str, namespace: &str) -> TestServer {
        TestServer::start_with(redis_config(database_url, redis_url, namespace)).await
    }

    /// Serves with `config`, given the tests' JWT secret unless it names a key of its own (rate
    /// limits stay as `config` says: see [`test_config`]).
    pub async fn start_with(mut config: Config) -> TestServer {
        if config.jwt_secret.is_none() && config.jwt_public_key_file.is_none() {
            config.jwt_secret = Some(app::Secret(super::TEST_SECRET.to_owned()));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app::serve(listener, config, shutdown.clone()));
        let client = Client::new(format!("http://{addr}"));
        let mut server = TestServer {
            addr,
            shutdown,
            task: Some(task),
            client,
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&mut self) {
        for _ in 0..400 {
            if self.client.ready().await {
                return;
            }
            if self.task.as_ref().is_some_and(JoinHandle::is_finished) {
                let result = self.task.take().expect("task").await;
                panic!("the server stopped before it was ready: {result:?}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("server at {} never became ready", self.addr);
    }

    /// Stops the server gracefully and waits until it has.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server stopped cleanly");
        }
    }
}

impl std::ops::Deref for TestServer {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

/// The configuration of most tests: the defaults, without rate limits (which the contention
/// tests would hit at once; the tests of the limits set them).
pub fn test_config(database_url: &str) -> Config {
    let mut config = Config::with_database(database_url);
    config.holds_per_minute_per_customer = 0;
    config.holds_per_minute_per_address = 0;
    config
}

/// A configuration of the Redis flow, with short intervals for tests.
pub fn redis_config(database_url: &str, redis_url: &str, namespace: &str) -> Config {
    let mut config = test_config(database_url);
    config.redis_url = Some(redis_url.to_owned());
    config.redis_namespace = namespace.to_owned();
    config.redis_journal_interval_ms = 20;
    config.sweep_interval_ms = 200;
    config
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
