//! The GraphQL API: query, mutation and subscription roots over a [`HoldStore`], the types
//! they return, and the one place where errors get their codes.

pub mod caller;
pub mod error;
mod mutation;
mod parsed;
mod query;
pub mod subscription;
pub mod types;

use std::str::FromStr;
use std::sync::Arc;

use async_graphql::{ID, Schema};
use tokio_util::sync::CancellationToken;

use crate::domain::{InvalidInput, Limits};
use crate::events::Bus;
use crate::metrics::Metrics;
use crate::rate::HoldRateLimits;
use crate::store::HoldStore;
use error::ApiError;

pub use mutation::MutationRoot;
pub use query::QueryRoot;
pub use subscription::SubscriptionRoot;

pub type AppSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// What resolvers reach through the GraphQL context.
#[derive(Clone)]
pub struct Services {
    pub store: Arc<dyn HoldStore>,
    pub bus: Bus,
    pub limits: Limits,
    pub metrics: Metrics,
    pub hold_rate: Arc<HoldRateLimits>,
    /// Cancelled at shutdown: subscriptions end so that connections can close.
    pub shutdown: CancellationToken,
}

/// Limits of the GraphQL engine itself.
#[derive(Clone, Debug)]
pub struct QueryLimits {
    /// Deepest selection accepted. GraphiQL's introspection query needs 13.
    pub query_depth_max: usize,
    pub query_complexity_max: usize,
    /// Serve the schema to introspection queries (GraphiQL needs it).
    pub introspection: bool,
}

pub fn build_schema(services: Services, limits: &QueryLimits) -> AppSchema {
    let builder = Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .data(services)
        .extension(error::ErrorCodes)
        .extension(parsed::ParsedQueries::default())
        .limit_depth(limits.query_depth_max)
        .limit_complexity(limits.query_complexity_max);
    let builder = if limits.introspection {
        builder
    } else {
        builder.disable_introspection()
    };
    builder.finish()
}

/// The SDL of the schema, as committed in `schema.graphql`.
pub fn sdl() -> String {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .finish()
        .sdl()
}

/// Parses a GraphQL `ID` into a domain id; a malformed one is `INVALID_INPUT`.
fn parse_id<T: FromStr<Err = InvalidInput>>(id: &ID) -> Result<T, ApiError> {
    id.as_str().parse().map_err(ApiError::from)
}
