//! The axum router: `/graphql` (GraphiQL on GET, queries on POST, subscriptions over
//! WebSocket with either the `graphql-transport-ws` or the older `graphql-ws` protocol) and
//! the health checks.

use async_graphql::http::{ALL_WEBSOCKET_PROTOCOLS, GraphiQLSource};
use async_graphql_axum::rejection::GraphQLRejection;
use async_graphql_axum::{GraphQLProtocol, GraphQLRequest, GraphQLResponse, GraphQLWebSocket};
use axum::Router;
use axum::body::Body;
use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, Request, State, WebSocketUpgrade,
};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::graphql::{AppSchema, Services};

#[derive(Clone)]
struct AppState {
    schema: AppSchema,
    services: Services,
}

/// Largest request body accepted, in bytes.
pub const REQUEST_BODY_BYTES_MAX: usize = 64 * 1024;

pub fn router(schema: AppSchema, services: Services) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/graphql") }))
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .with_state(AppState { schema, services })
}

async fn graphql_post(State(state): State<AppState>, request: Request) -> Response {
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
            GraphQLResponse::from(state.schema.execute(request.into_inner()).await).into_response()
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
async fn graphql_get(State(state): State<AppState>, request: Request) -> Response {
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case("websocket"));
    if !upgrade {
        let page = GraphiQLSource::build()
            .title("tickethold")
            .endpoint("/graphql")
            .subscription_endpoint("/graphql")
            .finish();
        return Html(page).into_response();
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
    let schema = state.schema.clone();
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| GraphQLWebSocket::new(socket, schema, protocol).serve())
}

/// Ready when the store answers.
async fn ready(State(state): State<AppState>) -> Response {
    match state.services.store.next_expiry().await {
        Ok(_) => "ready".into_response(),
        Err(error) => {
            tracing::warn!(error = %crate::error_chain(&error), "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "store unreachable").into_response()
        }
    }
}
