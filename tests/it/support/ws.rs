//! A GraphQL subscription client over WebSocket, speaking either `graphql-transport-ws` (the
//! current protocol) or `graphql-ws` (the older subscriptions-transport-ws one).

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

#[derive(Clone, Copy, Debug)]
pub enum Protocol {
    TransportWs,
    LegacyWs,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::TransportWs => "graphql-transport-ws",
            Protocol::LegacyWs => "graphql-ws",
        }
    }
}

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket to the server's `/graphql` speaking `protocol`, before any message.
pub async fn connect(addr: SocketAddr, protocol: Protocol) -> Socket {
    let mut request = format!("ws://{addr}/graphql")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(protocol.name()),
    );
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    socket
}

/// One subscription on its own connection.
pub struct Subscription {
    socket: Socket,
    protocol: Protocol,
    done: bool,
}

/// What the server sent next.
#[derive(Debug)]
pub enum Next {
    Data(Value),
    #[allow(dead_code, reason = "read in the Debug output of failed assertions")]
    Errors(Value),
    Complete,
}

impl Subscription {
    /// Subscribes as an admin, who may watch every hold.
    pub async fn open(
        addr: SocketAddr,
        protocol: Protocol,
        query: &str,
        variables: Value,
    ) -> Subscription {
        let token = super::token(tickethold::auth::Role::Admin, "admin");
        let init = json!({"Authorization": format!("Bearer {token}")});
        Subscription::open_with(addr, protocol, init, query, variables).await
    }

    /// Subscribes with `init` as the `connection_init` payload.
    pub async fn open_with(
        addr: SocketAddr,
        protocol: Protocol,
        init: Value,
        query: &str,
        variables: Value,
    ) -> Subscription {
        let mut socket = connect(addr, protocol).await;
        let init = json!({"type": "connection_init", "payload": init});
        socket
            .send(Message::text(init.to_string()))
            .await
            .expect("init");
        let ack = read_json(&mut socket).await.expect("connection_ack");
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        let kind = match protocol {
            Protocol::TransportWs => "subscribe",
            Protocol::LegacyWs => "start",
        };
        let start = json!({"id": "1", "type": kind,
                           "payload": {"query": query, "variables": variables}});
        socket
            .send(Message::text(start.to_string()))
            .await
            .expect("subscribe");
        Subscription {
            socket,
            protocol,
            done: false,
        }
    }

    /// The next message, waiting at most `timeout`; `None` on timeout.
    pub async fn next_within(&mut self, timeout: Duration) -> Option<Next> {
        if self.done {
            return Some(Next::Complete);
        }
        loop {
            let message = tokio::time::timeout(timeout, read_json(&mut self.socket))
                .await
                .ok()?;
            let Some(message) = message else {
                self.done = true;
                return Some(Next::Complete);
            };
            match (self.protocol, message["type"].as_str().unwrap_or_default()) {
                (Protocol::TransportWs, "next") | (Protocol::LegacyWs, "data") => {
                    let payload = &message["payload"];
                    if payload.get("errors").is_some() {
                        return Some(Next::Errors(payload["errors"].clone()));
                    }
                    return Some(Next::Data(payload["data"].clone()));
                }
                (_, "error") => return Some(Next::Errors(message["payload"].clone())),
                (_, "complete") => {
                    self.done = true;
                    return Some(Next::Complete);
                }
                // Keep-alives and pings.
                (Protocol::TransportWs, "ping") => {
                    let pong = json!({"type": "pong"}).to_string();
                    self.socket.send(Message::text(pong)).await.ok();
                }
                _ => {}
            }
        }
    }

    /// The next data payload; panics on errors, completion or a timeout.
    pub async fn next_data(&mut self, timeout: Duration) -> Value {
        match self.next_within(timeout).await {
            Some(Next::Data(data)) => data,
            other => panic!("expected data, got {other:?}"),
        }
    }
}

async fn read_json(socket: &mut Socket) -> Option<Value> {
    while let Some(message) = socket.next().await {
        match message.ok()? {
            Message::Text(text) => return serde_json::from_str(&text).ok(),
            Message::Close(_) => return None,
            _ => {}
        }
    }
    None
}
