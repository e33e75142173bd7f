//! The bench's GraphQL client over HTTP: the few mutations a flash sale makes, each answer
//! sorted into an outcome (a hold, a rejection with its `extensions.code`, or a failure). It
//! signs its own tokens with the server's secret: an admin's for the setup, and one per buyer,
//! who then holds, checks out and releases as themselves, like a real client.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::auth::{Authenticator, Role};

/// A client of one server.
#[derive(Clone)]
pub struct Api {
    /// Parsed once: a URL given as text is parsed again by every request.
    endpoint: reqwest::Url,
    http: reqwest::Client,
    tokens: Authenticator,
    /// `Bearer <admin token>`.
    admin: String,
}

/// How long the bench's tokens last: longer than any run.
const TOKEN_TTL: Duration = Duration::from_secs(6 * 3600);

/// How one mutation ended.
#[derive(Debug)]
pub enum Outcome {
    Done(Value),
    /// An expected refusal, by `extensions.code` (`SOLD_OUT`, `HOLD_EXPIRED`, ...).
    Rejected(String),
    /// Anything else: transport failures, `INTERNAL`, `UNAVAILABLE`, malformed answers.
    Failed(String),
}

const HOLD: &str = "mutation($e:ID!,$t:ID!,$q:Int!,$ttl:Int,$k:String){holdTickets(input:{\
    eventId:$e,items:[{ticketTypeId:$t,quantity:$q}],ttlSeconds:$ttl,idempotencyKey:$k})\
    {id expiresAt}}";
const CHECKOUT: &str =
    "mutation($h:ID!,$p:String!){checkout(input:{holdId:$h,paymentReference:$p}){id}}";
const RELEASE: &str = "mutation($h:ID!){releaseHold(holdId:$h){id status}}";

impl Api {
    /// A client of the server at `base_url`, whose tokens `secret` signs.
    pub fn new(base_url: &str, connections_max: usize, secret: &str) -> anyhow::Result<Api> {
        // The server never redirects: no redirect policy or `Referer` to run on every request.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(connections_max)
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .build()
            .context("cannot build the HTTP client")?;
        let endpoint = format!("{}/graphql", base_url.trim_end_matches('/'));
        let endpoint =
            reqwest::Url::parse(&endpoint).with_context(|| format!("bad URL {endpoint}"))?;
        let tokens = Authenticator::hs256(secret.as_bytes());
        let admin = tokens
            .mint(Role::Admin, "bench-admin", TOKEN_TTL)
            .context("cannot sign a token")?;
        Ok(Api {
            endpoint,
            http,
            tokens,
            admin: format!("Bearer {admin}"),
        })
    }

    /// `Bearer <token>` of the buyer `customer`. Buyers sign in before a sale opens: the bench
    /// signs its buyers' tokens before it starts the clock (see `buyers`).
    pub fn buyer(&self, customer: &str) -> String {
        let token = self.tokens.mint(Role::Buyer, customer, TOKEN_TTL);
        format!("Bearer {}", token.unwrap_or_default())
    }

    /// The `Bearer <token>` of every buyer named, in order.
    pub fn buyers(&self, names: impl Iterator<Item = String>) -> Arc<Vec<String>> {
        Arc::new(names.map(|name| self.buyer(&name)).collect())
    }

    /// The admin's `Bearer <token>`.
    pub fn admin(&self) -> &str {
        &self.admin
    }

    /// Runs a query or mutation as an admin and sorts its answer.
    pub async fn call(&self, query: &str, variables: Value, field: &str) -> Outcome {
        self.call_as(&self.admin, query, variables, field).await
    }

    /// Runs a query or mutation with `authorization` and sorts its answer.
    pub async fn call_as(
        &self,
        authorization: &str,
        query: &str,
        variables: Value,
        field: &str,
    ) -> Outcome {
        let body = json!({"query": query, "variables": variables});
        let request = self.http.post(self.endpoint.clone()).json(&body);
        let request = request.header("Authorization", authorization);
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => return Outcome::Failed(format!("POST /graphql: {error}")),
        };
        let status = response.status();
        let value: Value = match response.json().await {
            Ok(value) => value,
            Err(error) => return Outcome::Failed(format!("HTTP {status}: {error}")),
        };
        if let Some(error) = value["errors"].get(0) {
            return match error["extensions"]["code"].as_str() {
                Some(
                    code @ ("SOLD_OUT" | "LIMIT_EXCEEDED" | "HOLD_EXPIRED" | "HOLD_NOT_ACTIVE"),
                ) => Outcome::Rejected(code.to_owned()),
                _ => Outcome::Failed(error.to_string()),
            };
        }
        match value["data"].get(field) {
            Some(data) if !data.is_null() => Outcome::Done(data.clone()),
            _ => Outcome::Failed(format!("no {field} in {value}")),
        }
    }

    /// A mutation or query that must succeed (setup); returns `data.<field>`.
    pub async fn must(&self, query: &str, variables: Value, field: &str) -> anyhow::Result<Value> {
        match self.call(query, variables, field).await {
            Outcome::Done(value) => Ok(value),
            Outcome::Rejected(code) => anyhow::bail!("{field} was refused: {code}"),
            Outcome::Failed(error) => anyhow::bail!("{field} failed: {error}"),
        }
    }

    /// Creates the event and its ticket types (each with `capacity` tickets and the limit per
    /// customer given); returns their ids.
    pub async fn setup(
        &self,
        types: u32,
        capacity: u32,
        max_per_customer: Option<u32>,
    ) -> anyhow::Result<(String, Vec<String>)> {
        let event = self
            .must(
                "mutation($n:String!){createEvent(input:{name:$n}){id}}",
                json!({"n": "Flash sale"}),
                "createEvent",
            )
            .await?;
        let event_id = id_of(&event)?;
        let mut type_ids = Vec::new();
        for index in 0..types {
            let ticket_type = self
                .must(
                    "mutation($e:ID!,$n:String!,$c:Int!,$m:Int){createTicketType(input:{\
                     eventId:$e,name:$n,priceCents:4500,capacity:$c,maxPerCustomer:$m}){id}}",
                    json!({
                        "e": event_id,
                        "n": format!("Type {index}"),
                        "c": capacity,
                        "m": max_per_customer,
                    }),
                    "createTicketType",
                )
                .await?;
            type_ids.push(id_of(&ticket_type)?);
        }
        Ok((event_id, type_ids))
    }

    /// `server clock - bench clock`, in milliseconds, from `serverTime`.
    pub async fn clock_offset_ms(&self) -> anyhow::Result<i64> {
        let before = now_ms();
        let time = self.must("{serverTime}", json!({}), "serverTime").await?;
        let after = now_ms();
        let server = parse_time_ms(&time).context("bad serverTime")?;
        Ok(server - (before + after) / 2)
    }

    /// A hold by the buyer whose `Bearer` token is `buyer`; with `keyed`, it carries an
    /// idempotency key of its own, as the buyer's page sends (so that a retry could never make
    /// a second hold).
    pub async fn hold(
        &self,
        buyer: &str,
        event: &str,
        ticket_type: &str,
        quantity: u32,
        ttl_secs: u32,
        keyed: bool,
    ) -> Outcome {
        let key = keyed.then(|| uuid::Uuid::new_v4().to_string());
        let variables =
            json!({"e": event, "t": ticket_type, "q": quantity, "ttl": ttl_secs, "k": key});
        self.call_as(buyer, HOLD, variables, "holdTickets").await
    }

    pub async fn checkout(&self, buyer: &str, hold: &str) -> Outcome {
        let variables = json!({"h": hold, "p": format!("bench-{hold}")});
        self.call_as(buyer, CHECKOUT, variables, "checkout").await
    }

    pub async fn release(&self, buyer: &str, hold: &str) -> Outcome {
        self.call_as(buyer, RELEASE, json!({"h": hold}), "releaseHold")
            .await
    }

    /// `(sold, held)` of a ticket type now.
    pub async fn stock(&self, ticket_type: &str) -> anyhow::Result<(i64, i64)> {
        let stock = self
            .must(
                "query($t:ID!){availability(ticketTypeId:$t){sold held}}",
                json!({"t": ticket_type}),
                "availability",
            )
            .await?;
        let sold = stock["sold"].as_i64().context("no sold")?;
        let held = stock["held"].as_i64().context("no held")?;
        Ok((sold, held))
    }
}

fn id_of(value: &Value) -> anyhow::Result<String> {
    value["id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no id in {value}"))
}

/// The bench's clock, in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// An RFC 3339 time, in milliseconds since the epoch.
pub fn parse_time_ms(value: &Value) -> Option<i64> {
    let text = value.as_str()?;
    let time = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    Some(time.timestamp_millis())
}
