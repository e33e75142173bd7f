//! Group commit of the Redis flow's sales. A checkout pins its hold in Redis, then sells it in
//! the database: journals the hold as confirmed, writes the order and raises the ticket type's
//! `sold` if `sold + held + quantity <= capacity` still holds there. When a sale ends, its buyers
//! pay at once, and one transaction each would lock the hot ticket type row from its sale to its
//! commit (a disk flush) while the others queue for it, as in the naive database flow.
//!
//! Concurrent sales queue here instead; one task takes every one waiting and sells them in one
//! transaction: the journal rows of their holds (ascending id), their orders, then each ticket
//! type once (ascending id), one commit. The batch sells every hold or none: when the database
//! disagrees about one of them (the journal ended the hold, an order exists already, Redis
//! allowed a hold the database cannot sell) it is rolled back, and each sale runs again in a
//! transaction of its own, which answers exactly as before batching.
//!
//! Each sale carries the deadline of its pin: after it the checkout gives the hold back in
//! Redis, so no transaction may commit it later. A batch runs under the earliest deadline of
//! its sales (dropped at it, so rolled back), and a sale taken late is not run at all.

use std::collections::BTreeMap;

use sea_orm::{DatabaseConnection, DatabaseTransaction, TransactionTrait};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::journal;
use crate::domain::{CheckoutRequest, Hold, HoldStatus, Millis, Order, Rejection, TicketTypeId};
use crate::store::db::queries;
use crate::store::{Outcome, StoreError, StoreResult};

/// Sales in one transaction at most: the largest statement, the items of 128 orders of 20
/// items, binds 10,240 parameters, within SQLite's 32,766 and PostgreSQL's 65,535.
const BATCH_MAX: usize = 128;

/// The task's name, in the errors its askers get and in the log when it panics.
const TASK: &str = "the sale writer";

struct Job {
    /// Pinned in Redis.
    hold: Hold,
    request: CheckoutRequest,
    now: Millis,
    /// The sale is not committed after it.
    deadline: Instant,
    reply: oneshot::Sender<StoreResult<Outcome<Order>>>,
}

/// The queue of sales; its task runs until the queue is dropped.
pub struct Sales {
    sender: mpsc::Sender<Job>,
}

impl Sales {
    /// Starts the task on the current runtime, over `db`.
    pub fn start(db: DatabaseConnection) -> Sales {
        let (sender, receiver) = mpsc::channel(BATCH_MAX * 16);
        tokio::spawn(run(db, receiver));
        Sales { sender }
    }

    /// Sells the pinned `hold` with whatever else is queued: its order, or `SoldOut` if the
    /// database disagrees with Redis, `HoldExpired` if the journal ended the hold already.
    /// UNAVAILABLE when `deadline` came first: nothing of this sale is committed then (unless
    /// its commit had been sent: the caller looks for the order).
    pub async fn sell(
        &self,
        hold: Hold,
        request: CheckoutRequest,
        now: Millis,
        deadline: Instant,
    ) -> StoreResult<Outcome<Order>> {
        let job = |reply| Job {
            hold,
            request,
            now,
            deadline,
            reply,
        };
        crate::store::ask(&self.sender, TASK, job).await
    }
}

async fn run(db: DatabaseConnection, receiver: mpsc::Receiver<Job>) {
    let state = &mut (db, receiver);
    crate::supervise::restarting(TASK, state, |(db, receiver)| Box::pin(write(db, receiver))).await;
}

async fn write(db: &DatabaseConnection, receiver: &mut mpsc::Receiver<Job>) {
    while let Some(jobs) = crate::store::next_batch(receiver, BATCH_MAX).await {
        let taken = Instant::now();
        let (jobs, late): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| j.deadline > taken);
        for job in late {
            job.reply.send(Err(too_late())).ok();
        }
        let Some(deadline) = jobs.iter().map(|job| job.deadline).min() else {
            continue;
        };
        match tokio::time::timeout_at(deadline, together(db, &jobs)).await {
            Ok(Ok(orders)) => {
                for (job, order) in jobs.into_iter().zip(orders) {
                    job.reply.send(Ok(Ok(order))).ok();
                }
            }
            // Nothing was committed: each sale in a transaction of its own.
            Ok(Err(Failed::BeforeCommit(why))) => {
                if jobs.len() > 1 {
                    tracing::info!(%why, jobs = jobs.len(), "a batch of sales was rolled back; selling them one by one");
                }
                for job in jobs {
                    let sold = tokio::time::timeout_at(job.deadline, alone(db, &job)).await;
                    job.reply
                        .send(sold.unwrap_or_else(|_| Err(too_late())))
                        .ok();
                }
            }
            // The commit may or may not have happened: the askers look for their orders.
            Ok(Err(Failed::AtCommit(error))) => {
                tracing::error!(error = %crate::error_chain(&error), jobs = jobs.len(), "committing a batch of sales failed");
                for job in jobs {
                    let message = "the outcome of the sale is unknown";
                    job.reply
                        .send(Err(StoreError::Unavailable(message.into())))
                        .ok();
                }
            }
            Err(_) => {
                for job in jobs {
                    job.reply.send(Err(too_late())).ok();
                }
            }
        }
    }
}

fn too_late() -> StoreError {
    StoreError::Unavailable("the database did not answer in time".into())
}

/// How a batch failed.
enum Failed {
    /// Rolled back, for the reason given (an error, or the database disagreeing about a sale).
    BeforeCommit(String),
    AtCommit(StoreError),
}

impl From<StoreError> for Failed {
    fn from(error: StoreError) -> Failed {
        Failed::BeforeCommit(crate::error_chain(&error).to_string())
    }
}

/// Every sale in one transaction, committed, or rolled back as a whole: the orders, in the
/// order of `jobs`.
async fn together(db: &DatabaseConnection, jobs: &[Job]) -> Result<Vec<Order>, Failed> {
    let txn = db.begin().await.map_err(StoreError::from)?;
    match sell_all(&txn, jobs).await {
        Ok(orders) => match txn.commit().await {
            Ok(()) => Ok(orders),
            Err(error) => Err(Failed::AtCommit(error.into())),
        },
        Err(failed) => {
            txn.rollback().await.ok();
            Err(failed)
        }
    }
}

/// Every sale of `jobs` inside `txn` (not committed), or the reason why not all of them.
async fn sell_all(txn: &DatabaseTransaction, jobs: &[Job]) -> Result<Vec<Order>, Failed> {
    let confirmed: Vec<journal::Entry> = jobs
        .iter()
        .map(|job| (confirmed(&job.hold, job.now), 0))
        .collect();
    let written = journal::upsert(txn, &confirmed).await?;
    if written != jobs.len() as u64 {
        return Err(Failed::BeforeCommit(
            "the journal has ended a hold of the batch already".into(),
        ));
    }
    let sales: Vec<(&Hold, &CheckoutRequest, Millis)> = jobs
        .iter()
        .map(|job| (&job.hold, &job.request, job.now))
        .collect();
    // A second order of a hold breaks the unique index: the batch is rolled back, and the
    // sale alone finds the first order.
    let orders = queries::insert_orders(txn, &sales).await?;
    // The ticket types last, since their rows (hot in a flash sale) stay locked until the
    // commit; ascending, as every writer locks them.
    let mut sold: BTreeMap<TicketTypeId, i32> = BTreeMap::new();
    for item in jobs.iter().flat_map(|job| &job.hold.items) {
        *sold.entry(item.ticket_type_id).or_default() += item.quantity as i32;
    }
    for (id, quantity) in sold {
        if let Err(rejection) = queries::sell_double_checked(txn, id, quantity).await? {
            return Err(Failed::BeforeCommit(format!(
                "the database cannot sell what Redis held: {rejection:?}"
            )));
        }
    }
    Ok(orders)
}

/// One sale in a transaction of its own: its order, or why the database refuses it.
async fn alone(db: &DatabaseConnection, job: &Job) -> StoreResult<Outcome<Order>> {
    let txn = db.begin().await?;
    match sell_in(&txn, job).await {
        Ok(Ok(order)) => {
            txn.commit().await?;
            Ok(Ok(order))
        }
        Ok(Err(rejection)) => {
            txn.rollback().await?;
            Ok(Err(rejection))
        }
        Err(StoreError::Db(error)) if super::is_unique_violation(&error) => {
            // Another checkout of this hold committed its order first: that is the order.
            txn.rollback().await?;
            let existing = queries::order_of_hold(db, job.hold.id).await?;
            existing.map(Ok).ok_or(StoreError::Db(error))
        }
        Err(error) => {
            txn.rollback().await.ok();
            Err(error)
        }
    }
}

/// Inside a sale's own transaction: journals the hold as confirmed, writes the order, and sells
/// its stock if the database agrees it exists; the sale last, since it locks the ticket types'
/// rows until the commit.
async fn sell_in(txn: &DatabaseTransaction, job: &Job) -> StoreResult<Outcome<Order>> {
    if journal::upsert(txn, &[(confirmed(&job.hold, job.now), 0)]).await? != 1 {
        // The journal already ended this hold (a pin reconciled away, then an expiry): no sale.
        return Ok(Err(Rejection::HoldExpired));
    }
    let order = queries::insert_order(txn, &job.hold, &job.request, job.now).await?;
    for item in &job.hold.items {
        if let Err(rejection) =
            queries::sell_double_checked(txn, item.ticket_type_id, item.quantity as i32).await?
        {
            return Ok(Err(rejection));
        }
    }
    Ok(Ok(order))
}

/// `hold` as its sale ends it, at `now`.
fn confirmed(hold: &Hold, now: Millis) -> Hold {
    let mut confirmed = hold.clone();
    confirmed.status = HoldStatus::Confirmed;
    confirmed.ended_at = Some(now);
    confirmed
}
