//! The query root: events, availability, holds, orders and the server's clock.

use async_graphql::{Context, ID, Object};

use super::caller::{self, Access};
use super::error::ApiError;
use super::types::{Availability, DateTime, Event, Hold, Order, TicketType};
use super::{Services, parse_id};
use crate::domain::{Millis, Rejection};

pub struct QueryRoot;

#[Object]
impl QueryRoot {
    /// Every event, oldest first.
    async fn events(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Event>> {
        let services = ctx.data_unchecked::<Services>();
        let events = services.store.events().await.map_err(ApiError::from)?;
        Ok(events.into_iter().map(Event).collect())
    }

    /// An event, or null if there is none with this id.
    async fn event(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Event>> {
        let services = ctx.data_unchecked::<Services>();
        let found = services
            .store
            .event(parse_id(&id)?)
            .await
            .map_err(ApiError::from)?;
        Ok(found.map(Event))
    }

    /// A ticket type, or null if there is none with this id.
    async fn ticket_type(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<Option<TicketType>> {
        let services = ctx.data_unchecked::<Services>();
        let found = services
            .store
            .ticket_type(parse_id(&id)?)
            .await
            .map_err(ApiError::from)?;
        Ok(found.map(TicketType))
    }

    /// The stock of a ticket type now; `NOT_FOUND` for an unknown id.
    async fn availability(
        &self,
        ctx: &Context<'_>,
        ticket_type_id: ID,
    ) -> async_graphql::Result<Availability> {
        let services = ctx.data_unchecked::<Services>();
        let id = parse_id(&ticket_type_id)?;
        match services
            .store
            .availability(id, Millis::now())
            .await
            .map_err(ApiError::from)?
        {
            Some(availability) => Ok(availability.into()),
            None => Err(ApiError::from(Rejection::NotFound {
                what: "ticket type",
            })
            .into()),
        }
    }

    /// A hold in any status, or null if there is none with this id (or it is another
    /// buyer's).
    async fn hold(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Hold>> {
        let id = parse_id(&id)?;
        match caller::hold_for(ctx, id, Access::Read).await {
            Ok(hold) => Ok(Some(Hold(hold))),
            Err(ApiError::Rejected(Rejection::NotFound { .. })) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// An order, or null if there is none with this id (or it is another buyer's).
    async fn order(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<Order>> {
        let services = ctx.data_unchecked::<Services>();
        let id = parse_id(&id)?;
        // Anonymous callers learn nothing, not even whether the order exists.
        caller::require_token(ctx)?;
        let found = services.store.get_order(id).await.map_err(ApiError::from)?;
        match found {
            Some(order) if caller::may_see(ctx, &order.customer_id)? => Ok(Some(Order(order))),
            _ => {
                // Whether it exists or is somebody else's, the answer is the same.
                Ok(None)
            }
        }
    }

    /// The server's clock, so that clients can correct their own before counting down.
    async fn server_time(&self) -> DateTime {
        DateTime(Millis::now())
    }
}
