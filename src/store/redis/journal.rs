//! The hold journal of the Redis flow: every change of a hold is written to the database's
//! `holds` and `hold_items` tables, in batches (write-behind), so that the database keeps the
//! audit trail of the database flow without one write per hold, and so that the active holds can
//! be loaded back into Redis if Redis loses its data.
//!
//! An entry waits at most the journal interval. A row only moves forward: an upsert changes a row
//! only while it is `ACTIVE`, to an ending or to a newer revision of the hold (scripts raise it at
//! every change), so entries written late or by other instances never undo a later state (the
//! checkout writes its `CONFIRMED` row itself, in its own transaction).

use std::collections::HashMap;
use std::time::Duration;

use entity::{hold, hold_item};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{ActiveValue::Set, ConnectionTrait, DatabaseConnection, EntityTrait};
use tokio::sync::{mpsc, oneshot};

use crate::domain::{Hold, HoldStatus};
use crate::store::StoreResult;

/// Entries buffered before `record` waits for the writer.
const QUEUE_MAX: usize = 100_000;
/// Holds written in one statement.
const BATCH_MAX: usize = 1_000;

/// A hold as it stands and its revision (0 where it does not matter: an ending always wins
/// over an active state).
pub type Entry = (Hold, i64);

enum Command {
    Record(Entry),
    Flush(oneshot::Sender<()>),
}

/// The sending half; the writer task runs until every sender is gone.
#[derive(Clone)]
pub struct Journal {
    sender: mpsc::Sender<Command>,
}

impl Journal {
    pub fn start(db: DatabaseConnection, interval: Duration) -> Journal {
        let (sender, receiver) = mpsc::channel(QUEUE_MAX);
        tokio::spawn(write_behind(db, receiver, interval));
        Journal { sender }
    }

    /// Queues a hold as it now stands, at `revision`.
    pub async fn record(&self, hold: Hold, revision: i64) {
        if self
            .sender
            .send(Command::Record((hold, revision)))
            .await
            .is_err()
        {
            tracing::error!("the hold journal is stopped; an entry is lost");
        }
    }

    /// Waits until everything queued before this call is written.
    pub async fn flush(&self) {
        let (done, written) = oneshot::channel();
        if self.sender.send(Command::Flush(done)).await.is_ok() {
            written.await.ok();
        }
    }
}

async fn write_behind(
    db: DatabaseConnection,
    receiver: mpsc::Receiver<Command>,
    interval: Duration,
) {
    // After a panic the entries in hand are lost (the panic is logged); the queue is kept.
    let state = &mut (db, receiver);
    crate::supervise::restarting("the hold journal", state, |(db, receiver)| {
        Box::pin(write_entries(db, receiver, interval))
    })
    .await;
}

async fn write_entries(
    db: &DatabaseConnection,
    receiver: &mut mpsc::Receiver<Command>,
    interval: Duration,
) {
    let mut batch: Vec<Entry> = Vec::new();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let first = if batch.is_empty() && waiting.is_empty() {
            match receiver.recv().await {
                Some(command) => Some(command),
                None => return,
            }
        } else {
            None
        };
        let deadline = tokio::time::Instant::now() + interval;
        let mut next = first;
        loop {
            match next.take() {
                Some(Command::Record(hold)) => batch.push(hold),
                Some(Command::Flush(done)) => {
                    waiting.push(done);
                    break;
                }
                None => {}
            }
            if batch.len() >= BATCH_MAX {
                break;
            }
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(command)) => next = Some(command),
                Ok(None) | Err(_) => break,
            }
        }
        write_batch(db, &batch).await;
        batch.clear();
        for done in waiting.drain(..) {
            done.send(()).ok();
        }
    }
}

/// Writes a batch, whatever it takes: while the database is unreachable it waits and tries
/// again; an entry the database refuses for good (a broken invariant) is logged and dropped, so
/// that it never blocks the entries after it.
async fn write_batch(db: &DatabaseConnection, batch: &[Entry]) {
    loop {
        match upsert(db, batch).await {
            Ok(_) => return,
            Err(error) if unreachable(&error) => {
                tracing::warn!(error = %crate::error_chain(&error), entries = batch.len(), "journal write failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(_) => break,
        }
    }
    for entry in batch {
        let hold = &entry.0;
        loop {
            match upsert(db, std::slice::from_ref(entry)).await {
                Ok(_) => break,
                Err(error) if unreachable(&error) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => {
                    tracing::error!(error = %crate::error_chain(&error), hold_id = %hold.id, status = hold.status.as_str(), "the journal refused an entry; dropped");
                    break;
                }
            }
        }
    }
}

fn unreachable(error: &crate::store::StoreError) -> bool {
    matches!(
        error,
        crate::store::StoreError::Db(
            sea_orm::DbErr::ConnectionAcquire(_) | sea_orm::DbErr::Conn(_)
        )
    )
}

/// Writes holds as they stand; a row already ended keeps its ending. Returns how many rows were
/// written (an ended row that an entry would change is not).
pub async fn upsert<C: ConnectionTrait>(conn: &C, entries: &[Entry]) -> StoreResult<u64> {
    // One row per hold per statement (PostgreSQL refuses to update a row twice in one
    // upsert): keep the newest state, an ending over anything else.
    let mut latest: HashMap<_, &Entry> = HashMap::new();
    for entry in entries {
        let (hold, revision) = entry;
        let keep = latest.get(&hold.id).is_none_or(|(known, known_revision)| {
            !known.status.is_terminal() && (hold.status.is_terminal() || revision > known_revision)
        });
        if keep {
            latest.insert(hold.id, entry);
        }
    }
    if latest.is_empty() {
        return Ok(0);
    }
    // In id order, the order in which every writer of the journal locks its rows, so that
    // two batches (of the journal, of checkouts, of two instances) never deadlock.
    let mut latest: Vec<&Entry> = latest.into_values().collect();
    latest.sort_unstable_by_key(|(hold, _)| hold.id);
    // Chunks keep each statement under the databases' bind-parameter limits.
    let mut written = 0;
    for chunk in latest.chunks(ROWS_PER_STATEMENT) {
        written += upsert_chunk(conn, chunk).await?;
    }
    Ok(written)
}

const ROWS_PER_STATEMENT: usize = 200;

async fn upsert_chunk<C: ConnectionTrait>(conn: &C, latest: &[&Entry]) -> StoreResult<u64> {
    let rows = latest.iter().map(|(hold, revision)| hold::ActiveModel {
        id: Set(hold.id.0),
        event_id: Set(hold.event_id.0),
        customer_id: Set(hold.customer_id.to_string()),
        status: Set(hold.status.as_str().to_owned()),
        created_at: Set(hold.created_at.0),
        expires_at: Set(hold.expires_at.0),
        ended_at: Set(hold.ended_at.map(|t| t.0)),
        idempotency_key: Set(hold.idempotency_key.clone()),
        revision: Set(*revision),
    });
    let advance = OnConflict::column(hold::Column::Id)
        .update_columns([
            hold::Column::Status,
            hold::Column::ExpiresAt,
            hold::Column::EndedAt,
            hold::Column::Revision,
        ])
        // Only an active row moves, and only forward: to an ending, or to a newer revision.
        .action_and_where(
            Expr::col((hold::Entity, hold::Column::Status))
                .eq(HoldStatus::Active.as_str())
                .and(Expr::cust(
                    "(excluded.status <> 'ACTIVE' OR excluded.revision > holds.revision)",
                )),
        )
        .to_owned();
    let written = hold::Entity::insert_many(rows)
        .on_conflict(advance)
        .exec_without_returning(conn)
        .await?;
    let items = latest.iter().flat_map(|(hold, _)| {
        hold.items.iter().map(|item| hold_item::ActiveModel {
            hold_id: Set(hold.id.0),
            ticket_type_id: Set(item.ticket_type_id.0),
            quantity: Set(item.quantity as i32),
        })
    });
    let keep = OnConflict::columns([hold_item::Column::HoldId, hold_item::Column::TicketTypeId])
        .do_nothing()
        .to_owned();
    hold_item::Entity::insert_many(items)
        .on_conflict(keep)
        .exec_without_returning(conn)
        .await?;
    Ok(written)
}
