//! Group commit of checkouts. When a sale ends, its buyers pay at once, and each checkout sells
//! from the same hot ticket type row: one transaction per checkout would lock that row from its
//! sale to its commit (a disk flush) while the others queue for it. Concurrent checkouts queue
//! here instead; one task takes every checkout waiting and confirms in one transaction those
//! whose hold is active: it locks their holds (ascending id), ends them, writes their orders,
//! sells each ticket type's tickets once and commits once, answering each with its order after
//! the commit.
//!
//! Everything else (a hold not found, no longer active or due, one asked for twice in a batch)
//! is left to the caller, which runs it alone as before, after the batch: a retry of a confirmed
//! hold then finds its order, a due hold is expired on the way. A batch that fails before its
//! commit leaves every checkout to the caller; one whose commit fails answers UNAVAILABLE, since
//! it may have committed.

use std::collections::{BTreeMap, HashSet};

use sea_orm::{DatabaseConnection, DatabaseTransaction, TransactionTrait};
use tokio::sync::{mpsc, oneshot};

use super::convert::availability_of;
use super::queries;
use crate::domain::{CheckoutRequest, Hold, HoldStatus, Millis, Order, TicketTypeId};
use crate::events::Bus;
use crate::store::{StoreError, StoreResult};

/// Checkouts in one transaction at most (an order has a few statement parameters per item).
const BATCH_MAX: usize = 128;

/// A checkout confirmed by a batch: its order, and its hold as it ended.
pub struct Confirmed {
    pub order: Order,
    pub hold: Hold,
}

struct Job {
    request: CheckoutRequest,
    now: Millis,
    /// `None`: not confirmed by the batch; the caller runs the checkout alone.
    reply: oneshot::Sender<StoreResult<Option<Confirmed>>>,
}

/// The queue of checkouts; its task runs until the queue is dropped.
pub struct Checkouts {
    sender: mpsc::Sender<Job>,
}

impl Checkouts {
    /// Starts the task on the current runtime, over `db`; the new stock of the ticket types a
    /// batch sold is published on `bus` once per batch, after its commit.
    pub fn start(db: DatabaseConnection, bus: Bus) -> Checkouts {
        let (sender, receiver) = mpsc::channel(BATCH_MAX * 16);
        tokio::spawn(run(db, bus, receiver));
        Checkouts { sender }
    }

    /// Confirms the hold of `request` with whatever else is queued, if it is active at `now`;
    /// `None` when the batch left it to the caller.
    pub async fn checkout(
        &self,
        request: CheckoutRequest,
        now: Millis,
    ) -> StoreResult<Option<Confirmed>> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the checkout writer stopped".into());
        let job = Job {
            request,
            now,
            reply,
        };
        self.sender.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(db: DatabaseConnection, bus: Bus, mut receiver: mpsc::Receiver<Job>) {
    while let Some(jobs) = crate::store::next_batch(&mut receiver, BATCH_MAX).await {
        match together(&db, &jobs).await {
            Ok(decided) => {
                for model in decided.stock {
                    bus.publish_availability(availability_of(&model, 0));
                }
                for (job, confirmed) in jobs.into_iter().zip(decided.confirmed) {
                    job.reply.send(Ok(confirmed)).ok();
                }
            }
            // Nothing was committed: each checkout runs alone.
            Err(Failed::BeforeCommit(error)) => {
                tracing::warn!(error = %crate::error_chain(&error), jobs = jobs.len(), "a batch of checkouts failed; running them one by one");
                for job in jobs {
                    job.reply.send(Ok(None)).ok();
                }
            }
            Err(Failed::AtCommit(error)) => {
                tracing::error!(error = %crate::error_chain(&error), jobs = jobs.len(), "committing a batch of checkouts failed");
                let message = "the outcome of the checkout is unknown; ask again";
                for job in jobs {
                    let failure = StoreError::Unavailable(message.into());
                    job.reply.send(Err(failure)).ok();
                }
            }
        }
    }
}

/// How a batch failed.
enum Failed {
    BeforeCommit(StoreError),
    AtCommit(StoreError),
}

/// What a batch's transaction decided.
struct Decided {
    /// Per job, in order.
    confirmed: Vec<Option<Confirmed>>,
    /// The new stock of the ticket types sold.
    stock: Vec<entity::ticket_type::Model>,
}

/// Every job in one transaction, committed, or rolled back as a whole.
async fn together(db: &DatabaseConnection, jobs: &[Job]) -> Result<Decided, Failed> {
    let txn = db
        .begin()
        .await
        .map_err(|e| Failed::BeforeCommit(e.into()))?;
    match confirm_all(&txn, jobs).await {
        Ok(decided) => match txn.commit().await {
            Ok(()) => Ok(decided),
            Err(error) => Err(Failed::AtCommit(error.into())),
        },
        Err(error) => {
            txn.rollback().await.ok();
            Err(Failed::BeforeCommit(error))
        }
    }
}

/// Confirms, inside `txn`, the jobs whose hold is active at the batch's instant and asked for
/// once in the batch (not committed).
async fn confirm_all(txn: &DatabaseTransaction, jobs: &[Job]) -> StoreResult<Decided> {
    // The batch's instant: a hold due by then is left to a checkout of its own.
    let now = jobs.iter().map(|job| job.now).max().unwrap_or_default();
    let ids: Vec<_> = jobs.iter().map(|job| job.request.hold_id).collect();
    let mut holds: BTreeMap<_, Hold> = queries::lock_holds(txn, &ids)
        .await?
        .into_iter()
        .map(|hold| (hold.id, hold))
        .collect();
    let mut seen = HashSet::new();
    let chosen: Vec<Option<Hold>> = jobs
        .iter()
        .map(|job| {
            let id = job.request.hold_id;
            let first = seen.insert(id);
            let active = holds.get(&id).is_some_and(|h| h.check_active(now).is_ok());
            (first && active).then(|| holds.remove(&id)).flatten()
        })
        .collect();
    let confirming: Vec<(&Hold, &CheckoutRequest)> = chosen
        .iter()
        .zip(jobs)
        .filter_map(|(hold, job)| Some((hold.as_ref()?, &job.request)))
        .collect();
    if confirming.is_empty() {
        return Ok(Decided {
            confirmed: chosen.into_iter().map(|_| None).collect(),
            stock: Vec::new(),
        });
    }
    let ended: Vec<_> = confirming.iter().map(|(hold, _)| hold.id).collect();
    queries::end_holds(txn, &ended, HoldStatus::Confirmed, now).await?;
    let mut orders = queries::insert_orders(txn, &confirming, now)
        .await?
        .into_iter();
    // Each ticket type sold once, in ascending id order (the lock order).
    let mut sold: BTreeMap<TicketTypeId, i32> = BTreeMap::new();
    for (hold, _) in &confirming {
        for item in &hold.items {
            *sold.entry(item.ticket_type_id).or_default() += item.quantity as i32;
        }
    }
    let mut stock = Vec::with_capacity(sold.len());
    for (id, quantity) in sold {
        stock.push(queries::sell_held(txn, id, quantity).await?);
    }
    let confirmed = chosen
        .into_iter()
        .map(|hold| {
            let mut hold = hold?;
            hold.status = HoldStatus::Confirmed;
            hold.ended_at = Some(now);
            let order = orders.next()?;
            Some(Confirmed { order, hold })
        })
        .collect();
    Ok(Decided { confirmed, stock })
}
