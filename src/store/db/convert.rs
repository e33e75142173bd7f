//! Rows to domain values. Stored values were validated when written; a row that does not
//! parse (an unknown status) is reported as an invariant violation, never a panic.

use entity::{event, hold, hold_item, order, order_item, ticket_type};

use crate::domain::{
    Availability, CustomerId, Event, EventId, Hold, HoldId, HoldItem, HoldStatus, Millis, Order,
    OrderId, OrderItem, TicketType, TicketTypeId,
};
use crate::store::{StoreError, StoreResult};

pub fn event_of(model: event::Model) -> Event {
    Event {
        id: EventId(model.id),
        name: model.name,
        created_at: Millis(model.created_at),
    }
}

pub fn ticket_type_of(model: ticket_type::Model) -> TicketType {
    TicketType {
        id: TicketTypeId(model.id),
        event_id: EventId(model.event_id),
        name: model.name,
        price_cents: model.price_cents,
        capacity: model.capacity.max(0) as u32,
        max_per_customer: model.max_per_customer.map(|n| n.max(0) as u32),
        created_at: Millis(model.created_at),
    }
}

/// The stock of a ticket type from its counters, not counting `overdue` tickets: those of
/// active holds past their `expires_at` whose expiry is not written yet.
pub fn availability_of(model: &ticket_type::Model, overdue: i64) -> Availability {
    let held = (i64::from(model.held) - overdue).max(0);
    Availability {
        ticket_type_id: TicketTypeId(model.id),
        event_id: EventId(model.event_id),
        capacity: model.capacity.max(0) as u32,
        sold: model.sold.max(0) as u32,
        held: held as u32,
        version: model.version,
    }
}

pub fn hold_of(model: hold::Model, items: Vec<hold_item::Model>) -> StoreResult<Hold> {
    let status = HoldStatus::parse(&model.status).ok_or_else(|| {
        StoreError::Invariant(format!(
            "hold {} has unknown status {:?}",
            model.id, model.status
        ))
    })?;
    let mut items: Vec<HoldItem> = items
        .into_iter()
        .map(|item| HoldItem {
            ticket_type_id: TicketTypeId(item.ticket_type_id),
            quantity: item.quantity.max(0) as u32,
        })
        .collect();
    items.sort_by_key(|item| item.ticket_type_id);
    Ok(Hold {
        id: HoldId(model.id),
        event_id: EventId(model.event_id),
        customer_id: CustomerId::from_stored(model.customer_id),
        status,
        items,
        created_at: Millis(model.created_at),
        expires_at: Millis(model.expires_at),
        ended_at: model.ended_at.map(Millis),
        idempotency_key: model.idempotency_key,
    })
}

pub fn order_of(model: order::Model, items: Vec<order_item::Model>) -> Order {
    Order {
        id: OrderId(model.id),
        hold_id: HoldId(model.hold_id),
        customer_id: CustomerId::from_stored(model.customer_id),
        payment_reference: model.payment_reference,
        items: items
            .into_iter()
            .map(|item| OrderItem {
                ticket_type_id: TicketTypeId(item.ticket_type_id),
                quantity: item.quantity.max(0) as u32,
                unit_price_cents: item.unit_price_cents,
            })
            .collect(),
        total_cents: model.total_cents,
        created_at: Millis(model.created_at),
    }
}
