//! Tests of the hold rules: request validation and merging, status at an instant, extension
//! caps, limits.

use super::*;

fn ids() -> (EventId, CustomerId, TicketTypeId, TicketTypeId) {
    let limits = Limits::default();
    let mut a = TicketTypeId::random();
    let mut b = TicketTypeId::random();
    if b < a {
        std::mem::swap(&mut a, &mut b);
    }
    (
        EventId::random(),
        CustomerId::new("c1".into(), &limits).unwrap(),
        a,
        b,
    )
}

#[test]
fn hold_request_merges_duplicates_in_ticket_type_order() {
    let limits = Limits::default();
    let (event, customer, a, b) = ids();
    let request = HoldRequest::new(
        event,
        customer,
        [(b, 1), (a, 2), (b, 3)],
        None,
        None,
        &limits,
    )
    .unwrap();
    let items: Vec<_> = request.items.iter().map(|(id, q)| (*id, q.get())).collect();
    assert_eq!(items, vec![(a, 2), (b, 4)]);
    assert_eq!(request.ttl.get(), 900);
}

#[test]
fn hold_request_rejects_bad_quantities_ttls_and_empty_items() {
    let limits = Limits::default();
    let (event, customer, a, _) = ids();
    type Items = Vec<(TicketTypeId, i64)>;
    let bad: Vec<(Items, Option<i64>)> = vec![
        (vec![], None),
        (vec![(a, 0)], None),
        (vec![(a, -1)], None),
        (vec![(a, 3), (a, -1)], None),
        (vec![(a, 1_000_000)], None),
        (vec![(a, 60), (a, 60)], None),
        (vec![(a, 1)], Some(0)),
        (vec![(a, 1)], Some(-5)),
        (vec![(a, 1)], Some(3601)),
        ((0..21).map(|_| (TicketTypeId::random(), 1)).collect(), None),
    ];
    for (items, ttl) in bad {
        let result = HoldRequest::new(event, customer.clone(), items.clone(), ttl, None, &limits);
        assert!(result.is_err(), "accepted items={items:?} ttl={ttl:?}");
    }
}

#[test]
fn seconds_left_rounds_down_and_stops_at_zero() {
    assert_eq!(seconds_left(Millis(0), Millis(1999)), 1);
    assert_eq!(seconds_left(Millis(0), Millis(2000)), 2);
    assert_eq!(seconds_left(Millis(5000), Millis(2000)), 0);
}

#[test]
fn an_active_hold_past_its_expiry_reads_as_expired() {
    let (event, customer, a, _) = ids();
    let hold = Hold {
        id: HoldId::random(),
        event_id: event,
        customer_id: customer,
        status: HoldStatus::Active,
        items: vec![HoldItem {
            ticket_type_id: a,
            quantity: 1,
        }],
        created_at: Millis(0),
        expires_at: Millis(10_000),
        ended_at: None,
        idempotency_key: None,
    };
    assert_eq!(hold.status_at(Millis(9_999)), HoldStatus::Active);
    assert_eq!(hold.seconds_left(Millis(8_500)), 1);
    assert_eq!(hold.status_at(Millis(10_000)), HoldStatus::Expired);
    assert_eq!(hold.seconds_left(Millis(10_000)), 0);
    assert_eq!(
        hold.check_active(Millis(10_000)),
        Err(Rejection::HoldExpired)
    );
}

#[test]
fn extension_never_outlives_the_hold_lifetime() {
    let limits = Limits {
        hold_lifetime_secs_max: 100,
        hold_ttl_secs_max: 60,
        ..Limits::default()
    };
    let (event, customer, a, _) = ids();
    let hold = Hold {
        id: HoldId::random(),
        event_id: event,
        customer_id: customer,
        status: HoldStatus::Active,
        items: vec![HoldItem {
            ticket_type_id: a,
            quantity: 1,
        }],
        created_at: Millis(0),
        expires_at: Millis(60_000),
        ended_at: None,
        idempotency_key: None,
    };
    let ttl = TtlSeconds::new(Some(60), &limits).unwrap();
    assert_eq!(
        hold.extended_expiry(Millis(10_000), ttl, &limits),
        Millis(70_000)
    );
    assert_eq!(
        hold.extended_expiry(Millis(50_000), ttl, &limits),
        Millis(100_000)
    );
}

#[test]
fn limits_must_be_consistent() {
    assert!(Limits::default().validate().is_ok());
    let bad = Limits {
        hold_ttl_secs_default: 4000,
        ..Limits::default()
    };
    assert!(bad.validate().is_err());
    let bad = Limits {
        hold_lifetime_secs_max: 10,
        ..Limits::default()
    };
    assert!(bad.validate().is_err());
}
