//! The axum router: the buyer's page at `/`, `/graphql` (GraphiQL on GET, queries on POST,
//! subscriptions over WebSocket with either the `graphql-transport-ws` or the older
//! `graphql-ws` protocol), the health checks, `/metrics`, and `/dev/token` in development mode.
//!
//! Here each request or connection learns who is calling: the `Authorization` header of a
//! POST, or the `Authorization` field of a WebSocket's `connection_init` payload (the header of
//! the upgrade request when the payload has none).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql_axum::rejection::GraphQLRejection;
use async_graphql_axum::{GraphQLProtocol, GraphQLRequest, GraphQLResponse, GraphQLWebSocket};
use axum::Router;
use axum::body::Body;
use axum::extract::ws::WebSocket;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State,
    WebSocketUpgrade,
};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio::sync::Semaphore;

use crate::auth::{Authenticator, Caller, Role};
use crate::graphql::caller::ClientAddress;
use crate::graphql::subscription::SubscriptionSlots;
use crate::graphql::{AppSchema, Services};

#[derive(Clone)]
struct AppState {
    schema: AppSchema,
    services: Services,
    web: Arc<WebSettings>,
}

/// What the HTTP layer needs beyond the schema.
pub struct WebSettings {
    pub authenticator: Authenticator,
    /// Development mode: `/dev/token` mints tokens for anyone.
    pub dev: bool,
    pub trust_forwarded_for: bool,
    pub graphiql: bool,
    pub subscriptions_per_connection_max: usize,
    pub connection_init_timeout: Duration,
}

/// Largest request body (or WebSocket message) accepted, in bytes.
pub const REQUEST_BODY_BYTES_MAX: usize = 64 * 1024;

/// Read buffer of a WebSocket: a client's messages are small (`subscribe`, `ping`).
const WEBSOCKET_READ_BUFFER_BYTES: usize = 4 * 1024;

pub fn router(schema: AppSchema, services: Services, web: WebSettings) -> Router {
    let router = Router::new()
        .route(
            "/",
            get(|state| asset(state, Path("index.html".to_owned()))),
        )
        .route("/assets/{*file}", get(asset))
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics));
    let router = if web.dev {
        router.route("/dev/token", get(dev_token))
    } else {
        router
    };
    router
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        // One reference count per request, not one per service and metric.
        .with_state(Arc::new(AppState {
            schema,
            services,
            web: Arc::new(web),
        }))
}

impl AppState {
    /// The caller of a request, from its `Authorization` header.
    fn caller(&self, headers: &HeaderMap) -> Caller {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        self.web.authenticator.caller(authorization)
    }

    /// The client's address: the connection's peer, or the last `X-Forwarded-For` entry when
    /// the load balancer in front is trusted to set it.
    fn client_address(&self, request: &Request) -> Option<ClientAddress> {
        if self.web.trust_forwarded_for {
            // The last entry, the one the trusted proxy appended: an earlier one is the
            // client's to write. One that does not parse is no address at all.
            let last = request
                .headers()
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .next_back();
            if let Some(address) = last.and_then(|entry| entry.trim().parse::<IpAddr>().ok()) {
                return Some(ClientAddress(address));
            }
        }
        let peer = request.extensions().get::<ConnectInfo<SocketAddr>>();
        peer.map(|ConnectInfo(address)| ClientAddress(address.ip()))
    }
}

async fn graphql_post(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let started = Instant::now();
    let caller = state.caller(request.headers());
    let address = state.client_address(&request);
    // The GraphQL extractor reads the raw body, which `DefaultBodyLimit` does not bound: read it
    // here, bounded, first.
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, REQUEST_BODY_BYTES_MAX).await else {
        let message = format!("the body is larger than {REQUEST_BODY_BYTES_MAX} bytes");
        return invalid(StatusCode::PAYLOAD_TOO_LARGE, message);
    };
    let request = Request::from_parts(parts, Body::from(bytes));
    match GraphQLRequest::<GraphQLRejection>::from_request(request, &()).await {
        Ok(request) => {
            let mut request = request.into_inner().data(caller);
            if let Some(address) = address {
                request = request.data(address);
            }
            let response = state.schema.execute(request).await;
            let elapsed = started.elapsed().as_secs_f64();
            state.services.metrics.request_duration.observe(elapsed);
            GraphQLResponse::from(response).into_response()
        }
        Err(rejection) => bad_request(&rejection),
    }
}

/// A body that is not a GraphQL request (malformed JSON, not a GraphQL request): a 4xx with a
/// GraphQL-shaped error, never a 5xx. (A well-formed body without a query is a GraphQL error
/// with `INVALID_INPUT`, answered by the schema.)
fn bad_request(rejection: &GraphQLRejection) -> Response {
    invalid(
        StatusCode::BAD_REQUEST,
        format!("not a GraphQL request: {}", rejection.0),
    )
}

fn invalid(status: StatusCode, message: String) -> Response {
    let body = serde_json::json!({
        "errors": [{ "message": message, "extensions": { "code": "INVALID_INPUT" } }]
    });
    (status, axum::Json(body)).into_response()
}

/// GraphiQL for a browser, a subscription for a WebSocket upgrade.
async fn graphql_get(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case("websocket"));
    if !upgrade {
        if !state.web.graphiql {
            return (StatusCode::NOT_FOUND, "GraphiQL is switched off").into_response();
        }
        return graphiql_page();
    }
    let (mut parts, _body) = request.into_parts();
    let protocol = match GraphQLProtocol::from_request_parts(&mut parts, &()).await {
        Ok(protocol) => protocol,
        Err(status) => return (status, "unknown GraphQL WebSocket protocol").into_response(),
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let header_caller = state.caller(&parts.headers);
    let address = state.client_address(&Request::from_parts(parts, Body::empty()));
    // tungstenite's default 128 KiB read buffer, per socket, would be most of the memory of
    // 10,000 subscribers; no client message needs more than a request body.
    upgrade
        .read_buffer_size(WEBSOCKET_READ_BUFFER_BYTES)
        .max_message_size(REQUEST_BODY_BYTES_MAX)
        .max_frame_size(REQUEST_BODY_BYTES_MAX)
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| serve_socket(socket, state, protocol, header_caller, address))
}

/// GraphiQL (`web/graphiql/`), booted against `/graphql`. It loads nothing but this server's
/// own assets (GraphiQL and React are vendored in `web/vendor/`): no CDN, so it works offline,
/// and its Content-Security-Policy lets it reach nothing else.
fn graphiql_page() -> Response {
    let Some(page) = Assets::get("graphiql/index.html") else {
        let status = StatusCode::INTERNAL_SERVER_ERROR;
        return (status, "GraphiQL is not embedded in this build").into_response();
    };
    let headers = [
        (header::CACHE_CONTROL, "no-cache"),
        (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
    ];
    (headers, Html(page.data)).into_response()
}

/// The pages (the buyer's page, GraphiQL) may load and reach this server only: scripts and
/// styles from its files, fonts and icons inlined as `data:` URLs. (`'self'` covers the
/// WebSocket to this host.)
const PAGE_CSP: &str = "default-src 'self'; img-src 'self' data:; font-src 'self' data:; \
    object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'";

/// Serves one GraphQL WebSocket: who is calling comes from `connection_init`, which must
/// arrive within the configured timeout; the subscriptions it may open are counted.
async fn serve_socket(
    socket: WebSocket,
    state: Arc<AppState>,
    protocol: GraphQLProtocol,
    header_caller: Caller,
    address: Option<ClientAddress>,
) {
    let initialized = Arc::new(AtomicBool::new(false));
    let web = state.web.clone();
    let on_init = {
        let initialized = initialized.clone();
        let web = web.clone();
        move |payload: serde_json::Value| async move {
            let caller = match init_authorization(&payload) {
                Some(authorization) => web.authenticator.caller(Some(authorization)),
                None => header_caller,
            };
            if let Caller::Refused(why) = caller {
                // The client is told why: async-graphql closes the socket with 1002 and this
                // message, which graphql-ws clients take as final (no reconnection loop).
                return Err(async_graphql::Error::new(format!(
                    "not authenticated: {why}"
                )));
            }
            let mut data = async_graphql::Data::default();
            data.insert(caller);
            data.insert(SubscriptionSlots {
                permits: Arc::new(Semaphore::new(web.subscriptions_per_connection_max)),
                max: web.subscriptions_per_connection_max,
            });
            if let Some(address) = address {
                data.insert(address);
            }
            initialized.store(true, Ordering::Release);
            Ok(data)
        }
    };
    let serve = GraphQLWebSocket::new(socket, state.schema.clone(), protocol)
        .on_connection_init(on_init)
        .serve();
    tokio::pin!(serve);
    tokio::select! {
        () = &mut serve => return,
        () = tokio::time::sleep(web.connection_init_timeout) => {}
    }
    if initialized.load(Ordering::Acquire) {
        serve.await;
    } else {
        // Dropping the connection closes it: no subscription without a `connection_init`.
        tracing::debug!("closed a WebSocket that sent no connection_init in time");
    }
}

/// The `Authorization` of a `connection_init` payload (`authorization` is accepted too).
fn init_authorization(payload: &serde_json::Value) -> Option<&str> {
    ["Authorization", "authorization"]
        .iter()
        .find_map(|key| payload.get(key).and_then(serde_json::Value::as_str))
}

/// Prometheus's text format.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let headers = [(header::CONTENT_TYPE, "text/plain; version=0.0.4")];
    (headers, state.services.metrics.render()).into_response()
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    role: Option<String>,
    sub: Option<String>,
}

/// Development mode only: a token for anyone who asks (valid 24 hours).
async fn dev_token(
    State(state): State<Arc<AppState>>,
    Query(query): Query<TokenQuery>,
) -> Response {
    let Some(role) = Role::parse(query.role.as_deref().unwrap_or("buyer")) else {
        let message = "role: buyer, admin or service".to_owned();
        return invalid(StatusCode::BAD_REQUEST, message);
    };
    let sub = query
        .sub
        .unwrap_or_else(|| format!("dev-{}", role.as_str()));
    if sub.is_empty() || sub.len() > 64 {
        return invalid(StatusCode::BAD_REQUEST, "sub: 1 to 64 characters".into());
    }
    let day = Duration::from_secs(24 * 3600);
    let Some(token) = state.web.authenticator.mint(role, &sub, day) else {
        return invalid(
            StatusCode::NOT_FOUND,
            "no secret to mint tokens with".into(),
        );
    };
    axum::Json(serde_json::json!({ "token": token, "role": role.as_str(), "sub": sub }))
        .into_response()
}

/// Ready when the database (and Redis, in the Redis flow) answers.
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    match state.services.store.ping().await {
        Ok(()) => "ready".into_response(),
        Err(error) => {
            tracing::warn!(error = %crate::error_chain(&error), "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "store unreachable").into_response()
        }
    }
}

/// The buyer's page (`web/`), embedded in the binary: no build step, no files to deploy.
#[derive(rust_embed::Embed)]
#[folder = "web/"]
struct Assets;

async fn asset(State(state): State<Arc<AppState>>, Path(file): Path<String>) -> Response {
    // GraphiQL switched off is off everywhere, its assets included.
    let graphiql = [
        "graphiql/",
        "vendor/graphiql/",
        "vendor/react/",
        "vendor/react-dom/",
    ];
    if !state.web.graphiql && graphiql.iter().any(|prefix| file.starts_with(prefix)) {
        return (StatusCode::NOT_FOUND, "GraphiQL is switched off").into_response();
    }
    let Some(asset) = Assets::get(&file) else {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    };
    let mut response = (
        [
            (header::CONTENT_TYPE, asset.metadata.mimetype().to_owned()),
            (header::CACHE_CONTROL, "no-cache".to_owned()),
        ],
        asset.data,
    )
        .into_response();
    if file.ends_with(".html") {
        // The pages load nothing but this server's own assets and talk to nothing else.
        let policy = header::HeaderValue::from_static(PAGE_CSP);
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    response
}
