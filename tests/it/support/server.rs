//! The whole service, in process, bound to port 0, with a GraphQL client.

use std::net::SocketAddr;

use serde_json::{Value, json};
use tickethold::app::{self, Config};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    http: reqwest::Client,
}

impl TestServer {
    pub async fn start(database_url: &str) -> TestServer {
        TestServer::start_with(Config::with_database(database_url)).await
    }

    /// The Redis flow over `database_url` and the Redis at `redis_url`, in `namespace`.
    pub async fn start_redis(database_url: &str, redis_url: &str, namespace: &str) -> TestServer {
        TestServer::start_with(redis_config(database_url, redis_url, namespace)).await
    }

    pub async fn start_with(config: Config) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app::serve(listener, config, shutdown.clone()));
        let server = TestServer {
            addr,
            shutdown,
            task: Some(task),
            http: reqwest::Client::new(),
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            let ready = self.http.get(self.url("/readyz")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("server at {} never became ready", self.addr);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Runs a query or mutation and returns the whole response (data and errors).
    pub async fn gql(&self, query: &str, variables: Value) -> Value {
        let response = self
            .http
            .post(self.url("/graphql"))
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .expect("POST /graphql");
        assert!(response.status().is_success(), "HTTP {}", response.status());
        response.json().await.expect("JSON response")
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

    // Shorthands for the calls most tests make.

    pub async fn create_event(&self, name: &str) -> String {
        let r = self
            .gql(
                "mutation($n:String!){createEvent(input:{name:$n}){id}}",
                json!({"n": name}),
            )
            .await;
        super::data(&r)["createEvent"]["id"]
            .as_str()
            .expect("event id")
            .to_owned()
    }

    pub async fn create_ticket_type(
        &self,
        event_id: &str,
        capacity: i64,
        max_per_customer: Option<i64>,
    ) -> String {
        let r = self
            .gql(
                "mutation($e:ID!,$c:Int!,$m:Int){createTicketType(input:{eventId:$e,name:\"GA\",\
                 priceCents:4500,capacity:$c,maxPerCustomer:$m}){id}}",
                json!({"e": event_id, "c": capacity, "m": max_per_customer}),
            )
            .await;
        super::data(&r)["createTicketType"]["id"]
            .as_str()
            .expect("ticket type id")
            .to_owned()
    }

    /// `holdTickets` of one item; returns the whole response.
    pub async fn hold(
        &self,
        event_id: &str,
        customer_id: &str,
        ticket_type_id: &str,
        quantity: i64,
        ttl_seconds: Option<i64>,
    ) -> Value {
        self.gql(
            "mutation($e:ID!,$c:ID!,$t:ID!,$q:Int!,$ttl:Int){holdTickets(input:{eventId:$e,\
             customerId:$c,items:[{ticketTypeId:$t,quantity:$q}],ttlSeconds:$ttl})\
             {id status expiresAt secondsLeft items{ticketTypeId quantity}}}",
            json!({"e": event_id, "c": customer_id, "t": ticket_type_id, "q": quantity,
                   "ttl": ttl_seconds}),
        )
        .await
    }

    pub async fn availability(&self, ticket_type_id: &str) -> Value {
        let r = self
            .gql(
                "query($t:ID!){availability(ticketTypeId:$t){capacity sold held available}}",
                json!({"t": ticket_type_id}),
            )
            .await;
        super::data(&r)["availability"].clone()
    }
}

/// A configuration of the Redis flow, with short timeouts for tests.
pub fn redis_config(database_url: &str, redis_url: &str, namespace: &str) -> Config {
    let mut config = Config::with_database(database_url);
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
