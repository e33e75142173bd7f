//! The bench's subscriber: one WebSocket (`graphql-transport-ws`) subscribed to `holdExpired`
//! and `availabilityChanged` of the event while the load runs, recording when each expiry
//! arrived so that the report can measure the lag from `expiresAt`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;

use super::api::{now_ms, parse_time_ms};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One `holdExpired` event as it arrived.
#[derive(Clone, Debug)]
pub struct Expired {
    /// The bench's clock (ms since the epoch) when the event arrived.
    pub arrived_ms: i64,
    pub expires_at_ms: i64,
    pub expired_at_ms: i64,
}

/// What the subscriptions delivered so far.
#[derive(Default, Debug)]
pub struct Seen {
    pub expired: HashMap<String, Expired>,
    pub duplicate_expiries: u64,
    pub availability_updates: u64,
    pub errors: Vec<String>,
}

/// The running subscriber; `close` stops it.
pub struct Watch {
    pub seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

const EXPIRED_QUERY: &str =
    "subscription($e:ID!){holdExpired(eventId:$e){holdId expiresAt expiredAt}}";
const STOCK_QUERY: &str =
    "subscription($e:ID!){availabilityChanged(eventId:$e){ticketTypeId available}}";

impl Watch {
    /// Connects, subscribes to both streams, and returns once the first stock message arrived
    /// (so both subscriptions are live before the load starts).
    /// Subscribes with `authorization` (an admin's, who sees every hold's expiry).
    pub async fn open(
        base_url: &str,
        event_id: &str,
        authorization: &str,
    ) -> anyhow::Result<Watch> {
        let ws_url = base_url
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        let mut request = format!("{ws_url}/graphql")
            .into_client_request()
            .context("invalid WebSocket URL")?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("graphql-transport-ws"),
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .context("cannot open the WebSocket")?;
        send(
            &mut socket,
            json!({"type": "connection_init", "payload": {"Authorization": authorization}}),
        )
        .await?;
        let ack = next_json(&mut socket, Duration::from_secs(10)).await?;
        anyhow::ensure!(ack["type"] == "connection_ack", "no connection_ack: {ack}");
        for (id, query) in [("expired", EXPIRED_QUERY), ("stock", STOCK_QUERY)] {
            let message = json!({"id": id, "type": "subscribe",
                                 "payload": {"query": query, "variables": {"e": event_id}}});
            send(&mut socket, message).await?;
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        loop {
            let message = next_json(&mut socket, Duration::from_secs(10)).await?;
            handle(&seen, &message);
            if message["id"] == "stock" && message["type"] == "next" {
                break;
            }
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(read_until_stopped(socket, seen.clone(), stop.clone()));
        Ok(Watch { seen, stop, task })
    }

    /// Stops reading and closes the socket.
    pub async fn close(self) {
        self.stop.cancel();
        self.task.await.ok();
    }
}

async fn read_until_stopped(mut socket: Socket, seen: Arc<Mutex<Seen>>, stop: CancellationToken) {
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => break,
            message = socket.next() => message,
        };
        match message {
            Some(Ok(Message::Text(text))) => match serde_json::from_str::<Value>(&text) {
                Ok(value) if value["type"] == "ping" => {
                    send(&mut socket, json!({"type": "pong"})).await.ok();
                }
                Ok(value) => handle(&seen, &value),
                Err(error) => record_error(&seen, format!("bad message: {error}")),
            },
            Some(Ok(Message::Close(_))) | None => {
                record_error(&seen, "the server closed the WebSocket".to_owned());
                return;
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                record_error(&seen, format!("WebSocket failed: {error}"));
                return;
            }
        }
    }
    socket.close(None).await.ok();
}

/// Records one server message.
fn handle(seen: &Mutex<Seen>, message: &Value) {
    let arrived_ms = now_ms();
    let mut seen = seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match (message["type"].as_str(), message["id"].as_str()) {
        (Some("next"), Some("stock")) => seen.availability_updates += 1,
        (Some("next"), Some("expired")) => {
            let event = &message["payload"]["data"]["holdExpired"];
            let parsed = (
                event["holdId"].as_str(),
                parse_time_ms(&event["expiresAt"]),
                parse_time_ms(&event["expiredAt"]),
            );
            let (Some(id), Some(expires_at_ms), Some(expired_at_ms)) = parsed else {
                seen.errors
                    .push(format!("unexpected holdExpired: {message}"));
                return;
            };
            let expired = Expired {
                arrived_ms,
                expires_at_ms,
                expired_at_ms,
            };
            if seen.expired.insert(id.to_owned(), expired).is_some() {
                seen.duplicate_expiries += 1;
            }
        }
        (Some("error" | "complete"), _) => seen.errors.push(format!("subscription: {message}")),
        _ => {}
    }
}

fn record_error(seen: &Mutex<Seen>, error: String) {
    let mut seen = seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    seen.errors.push(error);
}

async fn send(socket: &mut Socket, message: Value) -> anyhow::Result<()> {
    socket
        .send(Message::text(message.to_string()))
        .await
        .context("cannot send on the WebSocket")
}

async fn next_json(socket: &mut Socket, timeout: Duration) -> anyhow::Result<Value> {
    loop {
        let message = tokio::time::timeout(timeout, socket.next())
            .await
            .context("the WebSocket stayed silent")?
            .context("the WebSocket closed")?
            .context("the WebSocket failed")?;
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).context("bad JSON on the WebSocket");
        }
    }
}
