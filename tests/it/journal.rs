//! The hold journal of the Redis flow only ever moves a row forward, whatever order entries
//! arrive in from several instances: to a newer revision while active, to an ending once, and
//! never back.

use tickethold::domain::{
    CustomerId, Hold, HoldId, HoldItem, HoldStatus, Limits, Millis, NewTicketType,
};
use tickethold::store::HoldStore;
use tickethold::store::db::connect;
use tickethold::store::redis::journal::upsert;

use crate::support::TestDb;

#[tokio::test]
async fn late_and_reordered_entries_never_move_a_hold_back() {
    for db in TestDb::both().await {
        let (store, _bus) = db.store(Limits::default()).await;
        let event = store
            .create_event("Journal".into(), Millis(0))
            .await
            .unwrap();
        let new = NewTicketType::new(event.id, "GA".into(), 100, 10, None, &Limits::default());
        let tt = store
            .create_ticket_type(new.unwrap(), Millis(0))
            .await
            .unwrap()
            .unwrap();
        let conn = connect(db.url(), 2).await.unwrap();
        let hold = |status: HoldStatus, expires_at: i64| Hold {
            id: HoldId(uuid::Uuid::nil()),
            event_id: event.id,
            customer_id: CustomerId::new("c".into(), &Limits::default()).unwrap(),
            status,
            items: vec![HoldItem {
                ticket_type_id: tt.id,
                quantity: 2,
            }],
            created_at: Millis(0),
            expires_at: Millis(expires_at),
            ended_at: status.is_terminal().then_some(Millis(expires_at)),
            idempotency_key: None,
        };
        let read = || async {
            let found = store
                .get_hold(HoldId(uuid::Uuid::nil()), Millis(0))
                .await
                .unwrap();
            let found = found.expect("journaled");
            (found.status, found.expires_at.0)
        };
        // An extension (revision 2) written before the creation (revision 1) that preceded it.
        upsert(&conn, &[(hold(HoldStatus::Active, 5_000), 2)])
            .await
            .unwrap();
        assert_eq!(
            upsert(&conn, &[(hold(HoldStatus::Active, 1_000), 1)])
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            read().await,
            (HoldStatus::Active, 5_000),
            "on {}",
            db.kind()
        );
        // In one batch the newest revision wins, and an ending wins over both.
        let batch = [
            (hold(HoldStatus::Active, 7_000), 4),
            (hold(HoldStatus::Active, 6_000), 3),
        ];
        upsert(&conn, &batch).await.unwrap();
        assert_eq!(
            read().await,
            (HoldStatus::Active, 7_000),
            "on {}",
            db.kind()
        );
        upsert(&conn, &[(hold(HoldStatus::Expired, 7_000), 0)])
            .await
            .unwrap();
        // Once ended, nothing moves it again.
        assert_eq!(
            upsert(&conn, &[(hold(HoldStatus::Active, 9_000), 9)])
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            upsert(&conn, &[(hold(HoldStatus::Released, 7_000), 0)])
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            read().await,
            (HoldStatus::Expired, 7_000),
            "on {}",
            db.kind()
        );
    }
}
