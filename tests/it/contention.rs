//! Contention: a flash sale in miniature. 500 buyers ask for 1 ticket each, all at once, of a
//! ticket type with 100: exactly 100 holds, 400 `SOLD_OUT`, and the counters still add up.

use std::sync::Arc;

use futures::future::join_all;
use tickethold::store::db::connect;

use crate::support::{TestDb, TestServer, error_code};

async fn five_hundred_buyers_for_one_hundred_tickets(db: TestDb) {
    let server = Arc::new(TestServer::start(db.url()).await);
    let event = server.create_event("Flash sale").await;
    let ticket_type = server.create_ticket_type(&event, 100, Some(2)).await;
    let buyers = (0..500).map(|i| {
        let server = server.clone();
        let (event, ticket_type) = (event.clone(), ticket_type.clone());
        async move {
            server
                .hold(&event, &format!("buyer-{i}"), &ticket_type, 1, Some(600))
                .await
        }
    });
    let responses = join_all(buyers).await;
    let held = responses
        .iter()
        .filter(|r| r.get("errors").is_none())
        .count();
    let sold_out = responses
        .iter()
        .filter(|r| error_code(r).as_deref() == Some("SOLD_OUT"))
        .count();
    assert_eq!((held, sold_out), (100, 400), "on {}", db.kind());
    let availability = server.availability(&ticket_type).await;
    assert_eq!(availability["held"], 100);
    assert_eq!(availability["available"], 0);

    let connection = connect(db.url(), 2).await.unwrap();
    let store = tickethold::store::db::DbStore::new(
        connection,
        tickethold::events::Bus::new(1),
        Arc::default(),
        tickethold::domain::Limits::default(),
    );
    use tickethold::store::HoldStore;
    assert_eq!(store.verify().await.unwrap(), vec![], "on {}", db.kind());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_buyers_for_one_hundred_tickets_on_sqlite() {
    five_hundred_buyers_for_one_hundred_tickets(TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_buyers_for_one_hundred_tickets_on_postgres() {
    five_hundred_buyers_for_one_hundred_tickets(TestDb::postgres().await).await;
}
