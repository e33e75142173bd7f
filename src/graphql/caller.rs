//! Who may do what. The caller (a verified token, or nobody) is put in the request's data by
//! the HTTP layer and in the connection's data at a WebSocket's `connection_init`; this is the
//! one place that reads it.
//!
//! | operation                                  | anonymous | buyer      | admin | service |
//! |--------------------------------------------|-----------|------------|-------|---------|
//! | catalog reads, `availabilityChanged`       | yes       | yes        | yes   | yes     |
//! | `createEvent`, `createTicketType`          | no        | no         | yes   | no      |
//! | `holdTickets`                              | no        | for self   | no    | no      |
//! | `extendHold`, `releaseHold`                | no        | own holds  | no    | no      |
//! | `checkout`                                 | no        | own holds  | no    | any     |
//! | `hold`, `order`, `holdCountdown`           | no        | own        | any   | any     |
//! | `holdExpired`                              | no        | own holds  | all   | all     |
//!
//! A buyer asking for somebody else's hold or order is told it does not exist.

use std::net::IpAddr;

use async_graphql::{Context, ID};

use super::Services;
use super::error::{ApiError, Denial};
use crate::auth::{self, Caller, Role};
use crate::domain::{CustomerId, Hold, HoldId, Millis, Rejection};

/// The address of the client, as the HTTP layer saw it.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddress(pub IpAddr);

fn caller<'c>(ctx: &'c Context<'_>) -> &'c Caller {
    ctx.data_opt::<Caller>().unwrap_or(&Caller::Anonymous)
}

/// The caller's role and subject; `UNAUTHENTICATED` without a valid token.
fn authenticated<'c>(ctx: &'c Context<'_>) -> Result<(Role, &'c str), ApiError> {
    match caller(ctx) {
        // A WebSocket outlives its token: its `exp` holds for every operation on it.
        Caller::Token { expires_at, .. } if auth::expired(*expires_at) => {
            Err(Denial::Unauthenticated("the token has expired").into())
        }
        Caller::Token { role, subject, .. } => Ok((*role, subject)),
        Caller::Anonymous => Err(Denial::Unauthenticated("this needs a token").into()),
        Caller::Refused(why) => Err(Denial::Unauthenticated(why).into()),
    }
}

/// The caller must have a valid token, whatever its role.
pub fn require_token(ctx: &Context<'_>) -> Result<(), ApiError> {
    authenticated(ctx).map(|_| ())
}

/// The caller must be an admin.
pub fn require_admin(ctx: &Context<'_>) -> Result<(), ApiError> {
    match authenticated(ctx)? {
        (Role::Admin, _) => Ok(()),
        _ => Err(Denial::Forbidden("only an admin may change the catalog").into()),
    }
}

/// The customer on whose behalf a hold is taken: the buyer's own token subject. An input
/// `customerId` (kept for older clients) must name the same customer.
pub fn customer_for_hold(ctx: &Context<'_>, input: Option<&ID>) -> Result<CustomerId, ApiError> {
    let services = ctx.data_unchecked::<Services>();
    let subject = match authenticated(ctx)? {
        (Role::Buyer, subject) => subject,
        _ => return Err(Denial::Forbidden("only a buyer may hold tickets").into()),
    };
    if input.is_some_and(|id| id.as_str() != subject) {
        return Err(Denial::Forbidden("customerId must be the token's subject").into());
    }
    Ok(CustomerId::new(subject.to_owned(), &services.limits)?)
}

/// What the caller wants to do with a hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read it, watch its countdown.
    Read,
    /// Extend or release it.
    Change,
    Checkout,
}

/// Whether the caller may do `access` to `hold`; a buyer's look at another buyer's hold is
/// `NOT_FOUND`, as if it did not exist.
pub fn check_hold(ctx: &Context<'_>, hold: &Hold, access: Access) -> Result<(), ApiError> {
    let (role, subject) = authenticated(ctx)?;
    let allowed = match role {
        Role::Buyer if hold.customer_id.as_str() != subject => {
            return Err(Rejection::NotFound { what: "hold" }.into());
        }
        Role::Buyer => true,
        Role::Admin => access == Access::Read,
        Role::Service => access != Access::Change,
    };
    if allowed {
        Ok(())
    } else {
        Err(Denial::Forbidden("this role may not do that to a hold").into())
    }
}

/// Reads a hold the caller may `access`: `NOT_FOUND` if there is none or it is not theirs.
pub async fn hold_for(ctx: &Context<'_>, id: HoldId, access: Access) -> Result<Hold, ApiError> {
    authenticated(ctx)?;
    let services = ctx.data_unchecked::<Services>();
    match services.store.get_hold(id, Millis::now()).await? {
        Some(hold) => check_hold(ctx, &hold, access).map(|()| hold),
        None => Err(Rejection::NotFound { what: "hold" }.into()),
    }
}

/// Whether the caller may see an order (or a hold) of `customer`: their own, or any for an
/// admin or a service.
pub fn may_see(ctx: &Context<'_>, customer: &CustomerId) -> Result<bool, ApiError> {
    Ok(match authenticated(ctx)? {
        (Role::Buyer, subject) => customer.as_str() == subject,
        (Role::Admin | Role::Service, _) => true,
    })
}

/// Whose holds the caller may watch expire: `Some(customer)` for a buyer (their own), `None`
/// for an admin or a service (all).
pub fn only_own(ctx: &Context<'_>) -> Result<Option<String>, ApiError> {
    Ok(match authenticated(ctx)? {
        (Role::Buyer, subject) => Some(subject.to_owned()),
        (Role::Admin | Role::Service, _) => None,
    })
}

/// Takes one `holdTickets` from the caller's rate limits (`RATE_LIMITED` when spent).
pub fn take_hold_rate(ctx: &Context<'_>, customer: &CustomerId) -> Result<(), ApiError> {
    let services = ctx.data_unchecked::<Services>();
    let address = ctx.data_opt::<ClientAddress>().map(|a| a.0);
    services
        .hold_rate
        .check(customer.as_str(), address)
        .map_err(|limited| {
            services
                .metrics
                .rate_limited
                .with_label_values(&[limited.scope.as_str()])
                .inc();
            Denial::RateLimited(limited).into()
        })
}
