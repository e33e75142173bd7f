//! The life of holds over real HTTP and WebSocket, against the whole server bound to port 0:
//! create, hold, extend, release, check out, and expire with short TTLs, watched by the three
//! subscriptions over both WebSocket protocols.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::ws::Next;
use crate::support::{Protocol, Subscription, TestServer, data, error_code};

const WAIT: Duration = Duration::from_secs(5);

const COUNTDOWN: &str =
    "subscription($h:ID!){holdCountdown(holdId:$h){holdId status secondsLeft expiresAt}}";
const EXPIRED: &str = "subscription($e:ID!){holdExpired(eventId:$e){holdId eventId customerId \
                       expiredAt expiresAt items{ticketTypeId quantity}}}";
const AVAILABILITY: &str = "subscription($e:ID!){availabilityChanged(eventId:$e){ticketTypeId \
                            capacity sold held available}}";

fn millis(rfc3339: &Value) -> i64 {
    let text = rfc3339.as_str().expect("a time");
    assert!(text.ends_with('Z'), "times are UTC: {text}");
    chrono::DateTime::parse_from_rfc3339(text)
        .expect("RFC 3339")
        .timestamp_millis()
}

/// Reads countdown ticks until the terminal one, which it returns.
async fn terminal(countdown: &mut Subscription) -> Value {
    loop {
        let tick = countdown.next_data(WAIT).await["holdCountdown"].clone();
        if tick["status"] != "ACTIVE" {
            return tick;
        }
    }
}

/// Reads availability updates until one shows `available`; fails if none does in time.
async fn until_available(subscription: &mut Subscription, available: u64) -> Value {
    loop {
        let update = subscription.next_data(WAIT).await["availabilityChanged"].clone();
        if update["available"] == available {
            return update;
        }
    }
}

crate::on_both_flows!(a_short_hold_counts_down_expires_once_and_its_tickets_come_back);
crate::on_both_flows!(holds_are_extended_released_and_checked_out_with_their_countdowns);
crate::on_both_flows!(graphiql_is_served_and_shutdown_ends_open_subscriptions);

async fn a_short_hold_counts_down_expires_once_and_its_tickets_come_back(server: TestServer) {
    let event = server.create_event("Concert").await;
    let ticket_type = server.create_ticket_type(&event, 10, None).await;

    let vars = json!({"e": event});
    let mut stock = Subscription::open(
        server.addr,
        Protocol::TransportWs,
        AVAILABILITY,
        vars.clone(),
    )
    .await;
    let first = stock.next_data(WAIT).await;
    assert_eq!(
        first["availabilityChanged"]["available"], 10,
        "the current stock comes first"
    );
    let mut expired_legacy =
        Subscription::open(server.addr, Protocol::LegacyWs, EXPIRED, vars.clone()).await;
    let mut expired = Subscription::open(server.addr, Protocol::TransportWs, EXPIRED, vars).await;

    let hold = server.hold(&event, "alice", &ticket_type, 2, Some(2)).await;
    let hold = data(&hold)["holdTickets"].clone();
    assert_eq!(hold["status"], "ACTIVE");
    let hold_id = hold["id"].as_str().unwrap().to_owned();
    let expires_at = millis(&hold["expiresAt"]);
    assert_eq!(until_available(&mut stock, 8).await["held"], 2);

    let mut countdown = Subscription::open(
        server.addr,
        Protocol::TransportWs,
        COUNTDOWN,
        json!({"h": hold_id}),
    )
    .await;
    let mut ticks = Vec::new();
    let last = loop {
        match countdown.next_within(WAIT).await {
            Some(Next::Data(tick)) => {
                let tick = tick["holdCountdown"].clone();
                if tick["status"] != "ACTIVE" {
                    break tick;
                }
                ticks.push(tick["secondsLeft"].as_u64().unwrap());
            }
            other => panic!("countdown ended without a terminal status: {other:?}"),
        }
    };
    assert!(
        !ticks.is_empty() && ticks.windows(2).all(|w| w[0] > w[1]),
        "ticks {ticks:?}"
    );
    assert_eq!(last["status"], "EXPIRED");
    assert_eq!(last["secondsLeft"], 0);
    assert!(matches!(
        countdown.next_within(WAIT).await,
        Some(Next::Complete)
    ));

    for subscription in [&mut expired, &mut expired_legacy] {
        let event_data = subscription.next_data(WAIT).await["holdExpired"].clone();
        assert_eq!(event_data["holdId"], hold_id.as_str());
        assert_eq!(event_data["customerId"], "alice");
        assert_eq!(
            event_data["items"],
            json!([{"ticketTypeId": ticket_type, "quantity": 2}])
        );
        assert!(
            millis(&event_data["expiredAt"]) >= expires_at,
            "expired before expiresAt"
        );
        assert!(
            millis(&event_data["expiredAt"]) - expires_at < 1000,
            "expired late: {event_data}"
        );
        assert!(
            subscription
                .next_within(Duration::from_millis(300))
                .await
                .is_none(),
            "announced once"
        );
    }
    assert_eq!(until_available(&mut stock, 10).await["held"], 0);
    assert_eq!(server.availability(&ticket_type).await["available"], 10);
    let read = server
        .gql(
            "query($h:ID!){hold(id:$h){status secondsLeft endedAt}}",
            json!({"h": hold_id}),
        )
        .await;
    assert_eq!(data(&read)["hold"]["status"], "EXPIRED");
    assert!(millis(&data(&read)["hold"]["endedAt"]) >= expires_at);
    server.stop().await;
}

async fn holds_are_extended_released_and_checked_out_with_their_countdowns(server: TestServer) {
    let event = server.create_event("Match").await;
    let ticket_type = server.create_ticket_type(&event, 5, Some(4)).await;
    let bob = server.as_buyer("bob");

    // Extend, then release: the countdown follows and ends RELEASED.
    let first = server.hold(&event, "bob", &ticket_type, 2, Some(30)).await;
    let first_id = data(&first)["holdTickets"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut countdown = Subscription::open(
        server.addr,
        Protocol::LegacyWs,
        COUNTDOWN,
        json!({"h": first_id}),
    )
    .await;
    let tick = countdown.next_data(WAIT).await["holdCountdown"].clone();
    assert_eq!(tick["status"], "ACTIVE");
    assert!(
        (28..=30).contains(&tick["secondsLeft"].as_u64().unwrap()),
        "{tick}"
    );
    let extended = bob
        .gql(
            "mutation($h:ID!){extendHold(holdId:$h,ttlSeconds:600){secondsLeft}}",
            json!({"h": first_id}),
        )
        .await;
    assert!(
        data(&extended)["extendHold"]["secondsLeft"]
            .as_u64()
            .unwrap()
            >= 598
    );
    // The extension is pushed (in the Redis flow through the event stream, so a regular tick
    // may come first).
    loop {
        let tick = countdown.next_data(WAIT).await["holdCountdown"].clone();
        let seconds_left = tick["secondsLeft"].as_u64().unwrap();
        if seconds_left >= 598 {
            break;
        }
        assert!(seconds_left <= 30, "{tick}");
    }
    let released = bob
        .gql(
            "mutation($h:ID!){releaseHold(holdId:$h){status secondsLeft}}",
            json!({"h": first_id}),
        )
        .await;
    assert_eq!(
        data(&released)["releaseHold"],
        json!({"status": "RELEASED", "secondsLeft": 0})
    );
    assert_eq!(terminal(&mut countdown).await["status"], "RELEASED");
    assert!(matches!(
        countdown.next_within(WAIT).await,
        Some(Next::Complete)
    ));
    let again = bob
        .gql(
            "mutation($h:ID!){releaseHold(holdId:$h){id}}",
            json!({"h": first_id}),
        )
        .await;
    assert_eq!(error_code(&again).as_deref(), Some("HOLD_NOT_ACTIVE"));

    // Check out: an order with the prices of the day, once, whatever the retries.
    let second = server.hold(&event, "bob", &ticket_type, 3, Some(30)).await;
    let second_id = data(&second)["holdTickets"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut countdown = Subscription::open(
        server.addr,
        Protocol::TransportWs,
        COUNTDOWN,
        json!({"h": second_id}),
    )
    .await;
    countdown.next_data(WAIT).await;
    let checkout = "mutation($h:ID!){checkout(input:{holdId:$h,paymentReference:\"pay-42\"})\
                    {id holdId customerId paymentReference totalCents createdAt \
                    items{ticketTypeId quantity unitPriceCents}}}";
    let order = bob.gql(checkout, json!({"h": second_id})).await;
    let order = data(&order)["checkout"].clone();
    assert_eq!(order["holdId"], second_id.as_str());
    assert_eq!(order["customerId"], "bob");
    assert_eq!(order["paymentReference"], "pay-42");
    assert_eq!(order["totalCents"], 3 * 4500);
    assert_eq!(
        order["items"],
        json!([{"ticketTypeId": ticket_type, "quantity": 3, "unitPriceCents": 4500}])
    );
    let retry = bob.gql(checkout, json!({"h": second_id})).await;
    assert_eq!(
        data(&retry)["checkout"]["id"],
        order["id"],
        "a retry returns the same order"
    );
    // Regular ticks may come before the change is pushed (through the event stream in the
    // Redis flow); the last event is the terminal one.
    assert_eq!(terminal(&mut countdown).await["status"], "CONFIRMED");
    assert!(matches!(
        countdown.next_within(WAIT).await,
        Some(Next::Complete)
    ));

    let read = bob
        .gql(
            "query($h:ID!,$o:ID!){hold(id:$h){status order{id}} order(id:$o){holdId} serverTime}",
            json!({"h": second_id, "o": order["id"]}),
        )
        .await;
    assert_eq!(data(&read)["hold"]["status"], "CONFIRMED");
    assert_eq!(data(&read)["hold"]["order"]["id"], order["id"]);
    assert_eq!(data(&read)["order"]["holdId"], second_id.as_str());
    let availability = server.availability(&ticket_type).await;
    assert_eq!(
        availability,
        json!({"capacity": 5, "sold": 3, "held": 0, "available": 2})
    );
    let over_limit = server.hold(&event, "bob", &ticket_type, 2, None).await;
    assert_eq!(error_code(&over_limit).as_deref(), Some("LIMIT_EXCEEDED"));
    server.stop().await;
}

async fn graphiql_is_served_and_shutdown_ends_open_subscriptions(server: TestServer) {
    let page = reqwest::get(server.url("/graphql")).await.unwrap();
    assert!(page.status().is_success());
    assert!(
        page.text()
            .await
            .unwrap()
            .to_lowercase()
            .contains("graphiql")
    );

    let event = server.create_event("Play").await;
    let mut open = Subscription::open(
        server.addr,
        Protocol::TransportWs,
        EXPIRED,
        json!({"e": event}),
    )
    .await;
    tokio::time::timeout(WAIT, server.stop())
        .await
        .expect("shutdown does not wait on subscribers");
    assert!(matches!(open.next_within(WAIT).await, Some(Next::Complete)));
}
