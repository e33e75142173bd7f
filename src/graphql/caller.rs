//! Who is asking. For now the customer id is an input of `holdTickets`; this is the one place
//! that decides it, so that moving it into a signed token changes only this file.

use async_graphql::{Context, ID};

use super::Services;
use super::error::ApiError;
use crate::domain::CustomerId;

/// The customer on whose behalf a hold is taken.
pub fn customer_for_hold(ctx: &Context<'_>, input: &ID) -> Result<CustomerId, ApiError> {
    let services = ctx.data_unchecked::<Services>();
    Ok(CustomerId::new(input.to_string(), &services.limits)?)
}
