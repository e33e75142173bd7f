//! The one place where outcomes become GraphQL errors.
//!
//! Every error carries `extensions.code`: a rejection's own code (`SOLD_OUT`, `HOLD_EXPIRED`,
//! ...), a denial's (`UNAUTHENTICATED`, `FORBIDDEN`, `RATE_LIMITED`, `TOO_MANY_SUBSCRIPTIONS`),
//! `UNAVAILABLE` when the database or Redis cannot be reached in time (or a checkout of
//! the same hold is in flight), `INTERNAL` for any other failure.
//! Failures are logged here with their whole cause chain and answered with a generic message,
//! so no SQL or driver text ever reaches a client. Errors that the GraphQL engine raises itself
//! (syntax, validation, depth) get `INVALID_INPUT` from the [`ErrorCodes`] extension.

use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextRequest, NextSubscribe,
};
use async_graphql::{ErrorExtensionValues, Response};
use futures::StreamExt;
use futures::stream::BoxStream;
use sea_orm::DbErr;

use crate::domain::{InvalidInput, Rejection};
use crate::store::StoreError;

/// What a resolver can fail with. Deliberately not `Display`, so that `?` goes through the
/// mapping below and never through async-graphql's generic conversion.
#[derive(Debug)]
pub enum ApiError {
    Rejected(Rejection),
    Denied(Denial),
    Failed(StoreError),
}

/// A call refused for who made it or how often, before anything was done.
#[derive(Debug)]
pub enum Denial {
    /// No token, or one that failed verification (why, in words safe to show).
    Unauthenticated(&'static str),
    /// A valid token whose role or subject may not do this.
    Forbidden(&'static str),
    RateLimited(crate::rate::Limited),
    /// The connection already has `--subscriptions-per-connection-max` subscriptions.
    TooManySubscriptions {
        max: usize,
    },
}

impl From<Denial> for ApiError {
    fn from(denial: Denial) -> ApiError {
        ApiError::Denied(denial)
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> ApiError {
        ApiError::Rejected(rejection)
    }
}

impl From<InvalidInput> for ApiError {
    fn from(invalid: InvalidInput) -> ApiError {
        ApiError::Rejected(Rejection::Invalid(invalid))
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        ApiError::Failed(error)
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(error: ApiError) -> async_graphql::Error {
        match error {
            ApiError::Rejected(rejection) => rejected(&rejection),
            ApiError::Denied(denial) => denied(&denial),
            ApiError::Failed(failure) => failed(&failure),
        }
    }
}

fn rejected(rejection: &Rejection) -> async_graphql::Error {
    let mut extensions = ErrorExtensionValues::default();
    extensions.set("code", rejection.code());
    match rejection {
        Rejection::SoldOut {
            ticket_type_id,
            available,
        } => {
            extensions.set("ticketTypeId", ticket_type_id.to_string());
            extensions.set("available", *available);
        }
        Rejection::LimitExceeded {
            ticket_type_id,
            max_per_customer,
            already,
        } => {
            extensions.set("ticketTypeId", ticket_type_id.to_string());
            extensions.set("maxPerCustomer", *max_per_customer);
            extensions.set("already", *already);
        }
        Rejection::HoldNotActive { status } => extensions.set("status", status.as_str()),
        Rejection::Invalid(_) | Rejection::NotFound { .. } | Rejection::HoldExpired => {}
    }
    error_with(rejection.to_string(), extensions)
}

fn denied(denial: &Denial) -> async_graphql::Error {
    let mut extensions = ErrorExtensionValues::default();
    let message = match denial {
        Denial::Unauthenticated(why) => {
            extensions.set("code", "UNAUTHENTICATED");
            format!("not authenticated: {why}")
        }
        Denial::Forbidden(why) => {
            extensions.set("code", "FORBIDDEN");
            format!("forbidden: {why}")
        }
        Denial::RateLimited(limited) => {
            extensions.set("code", "RATE_LIMITED");
            extensions.set("scope", limited.scope.as_str());
            // Whole seconds, rounded up: retrying after this many seconds passes.
            let seconds = limited.retry_after.as_millis().div_ceil(1000).max(1);
            extensions.set("retryAfterSeconds", seconds as u64);
            format!(
                "too many holds from this {}; retry in {seconds} s",
                limited.scope.as_str()
            )
        }
        Denial::TooManySubscriptions { max } => {
            extensions.set("code", "TOO_MANY_SUBSCRIPTIONS");
            extensions.set("max", *max as u64);
            format!("a connection may have at most {max} subscriptions")
        }
    };
    error_with(message, extensions)
}

fn failed(failure: &StoreError) -> async_graphql::Error {
    let unavailable = match failure {
        StoreError::Db(error) => matches!(error, DbErr::ConnectionAcquire(_) | DbErr::Conn(_)),
        StoreError::Redis(error) => {
            error.is_io_error()
                || error.is_timeout()
                || error.is_connection_refusal()
                || error.is_connection_dropped()
        }
        StoreError::Unavailable(_) => true,
        StoreError::Invariant(_) => false,
    };
    tracing::error!(error = %crate::error_chain(failure), "request failed");
    let mut extensions = ErrorExtensionValues::default();
    let message = if unavailable {
        extensions.set("code", "UNAVAILABLE");
        "the service is temporarily unavailable; try again"
    } else {
        extensions.set("code", "INTERNAL");
        "internal error"
    };
    error_with(message.to_owned(), extensions)
}

fn error_with(message: String, extensions: ErrorExtensionValues) -> async_graphql::Error {
    async_graphql::Error {
        message,
        source: None,
        extensions: Some(extensions),
    }
}

/// Gives every error without a code (raised by the GraphQL engine: a syntax error, an unknown
/// field, a value of the wrong type, a query too deep) the code `INVALID_INPUT`.
pub struct ErrorCodes;

impl ExtensionFactory for ErrorCodes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ErrorCodes)
    }
}

#[async_trait::async_trait]
impl Extension for ErrorCodes {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        with_codes(next.run(ctx).await)
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        next.run(ctx, stream).map(with_codes).boxed()
    }
}

fn with_codes(mut response: Response) -> Response {
    for error in &mut response.errors {
        let extensions = error
            .extensions
            .get_or_insert_with(ErrorExtensionValues::default);
        if extensions.get("code").is_none() {
            extensions.set("code", "INVALID_INPUT");
        }
    }
    response
}

/// Flattens a store answer: a failure or a rejection becomes an `ApiError`.
pub fn settle<T>(
    answer: crate::store::StoreResult<crate::store::Outcome<T>>,
) -> Result<T, ApiError> {
    Ok(answer??)
}
