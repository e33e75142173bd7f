//! The mutation root: events and ticket types, then the life of a hold: hold, extend,
//! release, check out. Inputs become domain values first; nothing runs on bad input.

use async_graphql::{Context, ID, Object};

use super::caller::{self, Access};
use super::error::{ApiError, settle};
use super::types::{
    CheckoutInput, CreateEventInput, CreateTicketTypeInput, Event, Hold, HoldTicketsInput, Order,
    TicketType,
};
use super::{Services, parse_id};
use crate::domain::{
    CheckoutRequest, HoldRequest, Millis, NewTicketType, Rejection, TicketTypeId, TtlSeconds,
    bounded_text,
};

pub struct MutationRoot;

#[Object]
impl MutationRoot {
    async fn create_event(
        &self,
        ctx: &Context<'_>,
        input: CreateEventInput,
    ) -> async_graphql::Result<Event> {
        caller::require_admin(ctx)?;
        let services = ctx.data_unchecked::<Services>();
        let name = bounded_text("name", input.name, services.limits.text_len_max)
            .map_err(ApiError::from)?;
        let event = services
            .store
            .create_event(name, Millis::now())
            .await
            .map_err(ApiError::from)?;
        Ok(Event(event))
    }

    async fn create_ticket_type(
        &self,
        ctx: &Context<'_>,
        input: CreateTicketTypeInput,
    ) -> async_graphql::Result<TicketType> {
        caller::require_admin(ctx)?;
        let services = ctx.data_unchecked::<Services>();
        let new = NewTicketType::new(
            parse_id(&input.event_id)?,
            input.name,
            input.price_cents,
            input.capacity,
            input.max_per_customer,
            &services.limits,
        )
        .map_err(ApiError::from)?;
        let created = services.store.create_ticket_type(new, Millis::now()).await;
        Ok(TicketType(settle(created)?))
    }

    /// Sets tickets aside for a while: all the items or none. A retry with the same
    /// `idempotencyKey` returns the same hold.
    async fn hold_tickets(
        &self,
        ctx: &Context<'_>,
        input: HoldTicketsInput,
    ) -> async_graphql::Result<Hold> {
        let services = ctx.data_unchecked::<Services>();
        let customer_id = caller::customer_for_hold(ctx, input.customer_id.as_ref())?;
        caller::take_hold_rate(ctx, &customer_id)?;
        let items = input
            .items
            .iter()
            .map(|item| {
                Ok((
                    parse_id::<TicketTypeId>(&item.ticket_type_id)?,
                    item.quantity,
                ))
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let request = HoldRequest::new(
            parse_id(&input.event_id)?,
            customer_id,
            items,
            input.ttl_seconds,
            input.idempotency_key,
            &services.limits,
        )
        .map_err(ApiError::from)?;
        let started = Millis::now();
        let held = settle(services.store.hold(request, started).await);
        if let Err(ApiError::Rejected(Rejection::SoldOut { .. })) = &held {
            services.metrics.sold_out.inc();
        }
        let hold = held?;
        // A retry returns the hold made before it began: not a new one.
        if hold.created_at >= started {
            services.metrics.holds_created.inc();
        }
        Ok(Hold(hold))
    }

    /// Moves the end of an ACTIVE hold to now + `ttlSeconds` (the default TTL when omitted),
    /// but never past the hold's maximum lifetime from its creation.
    async fn extend_hold(
        &self,
        ctx: &Context<'_>,
        hold_id: ID,
        ttl_seconds: Option<i64>,
    ) -> async_graphql::Result<Hold> {
        let services = ctx.data_unchecked::<Services>();
        let id = parse_id(&hold_id)?;
        let ttl = TtlSeconds::new(ttl_seconds, &services.limits).map_err(ApiError::from)?;
        caller::hold_for(ctx, id, Access::Change).await?;
        let extended = settle(services.store.extend(id, ttl, Millis::now()).await)?;
        Ok(Hold(extended))
    }

    /// Gives the tickets of an ACTIVE hold back to sale.
    async fn release_hold(&self, ctx: &Context<'_>, hold_id: ID) -> async_graphql::Result<Hold> {
        let services = ctx.data_unchecked::<Services>();
        let id = parse_id(&hold_id)?;
        caller::hold_for(ctx, id, Access::Change).await?;
        let released = settle(services.store.release(id, Millis::now()).await)?;
        services.metrics.holds_released.inc();
        Ok(Hold(released))
    }

    /// Turns an ACTIVE hold into an order. Checking out the same hold again returns the same
    /// order; a hold past its `expiresAt` is `HOLD_EXPIRED`.
    async fn checkout(
        &self,
        ctx: &Context<'_>,
        input: CheckoutInput,
    ) -> async_graphql::Result<Order> {
        let services = ctx.data_unchecked::<Services>();
        let request = CheckoutRequest::new(
            parse_id(&input.hold_id)?,
            input.payment_reference,
            input.idempotency_key,
            &services.limits,
        )
        .map_err(ApiError::from)?;
        caller::hold_for(ctx, request.hold_id, Access::Checkout).await?;
        let started = Millis::now();
        let order = settle(services.store.checkout(request, started).await)?;
        // A retry returns the order made before it began: not a new one.
        if order.created_at >= started {
            services.metrics.holds_confirmed.inc();
        }
        Ok(Order(order))
    }
}
