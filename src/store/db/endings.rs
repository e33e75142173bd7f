//! Group commit of checkouts and releases. When a sale ends, its buyers pay (or give up) at
//! once, and each of them changes the same hot ticket type row: one transaction each would lock
//! that row from its change to its commit (a disk flush) while the others queue for it.
//! Concurrent checkouts and releases queue here instead; one task takes every one waiting and
//! ends in one transaction the holds that are active, each at its request's instant: it locks
//! them (ascending id), ends them, writes the orders of the checkouts, changes each ticket type's
//! counters once (ascending id) and commits once; then it publishes the holds ended and the new
//! stock, and answers.
//!
//! Everything else (a hold not found, no longer active or due, one asked for twice in a batch)
//! is left to the caller, which runs it alone, after the batch: a retry of a confirmed hold
//! then finds its order, a due hold is expired on the way. A batch that fails before its commit
//! leaves every request to the caller; one whose commit fails answers UNAVAILABLE to the
//! requests it would have ended (it may have committed) and leaves the others to the caller.

use std::collections::{BTreeMap, HashSet};

use entity::ticket_type;
use sea_orm::{DatabaseConnection, DatabaseTransaction, TransactionTrait};
use tokio::sync::{mpsc, oneshot};

use super::convert::availability_of;
use super::queries;
use crate::domain::{CheckoutRequest, Hold, HoldId, HoldStatus, Millis, Order, TicketTypeId};
use crate::events::Bus;
use crate::store::{StoreError, StoreResult};

/// Requests in one transaction at most: the largest statement, the items of 128 orders of 20
/// items, binds 10,240 parameters, within SQLite's 32,766 and PostgreSQL's 65,535.
const BATCH_MAX: usize = 128;

/// The task's name, in the errors its askers get and in the log when it panics.
const TASK: &str = "the checkout and release writer";

/// How a request would end its hold.
enum Ending {
    Checkout(CheckoutRequest),
    Release,
}

/// A hold a batch ended: as it ended, and the order of a checkout.
struct Ended {
    hold: Hold,
    order: Option<Order>,
}

struct Job {
    hold_id: HoldId,
    ending: Ending,
    now: Millis,
    /// `None`: not ended by the batch; the caller runs the request alone.
    reply: oneshot::Sender<StoreResult<Option<Ended>>>,
}

/// The queue of checkouts and releases; its task runs until the queue is dropped.
pub struct Endings {
    sender: mpsc::Sender<Job>,
}

impl Endings {
    /// Starts the task on the current runtime, over `db`; the holds a batch ended and the new
    /// stock of the ticket types it changed are published on `bus` after its commit.
    pub fn start(db: DatabaseConnection, bus: Bus) -> Endings {
        let (sender, receiver) = mpsc::channel(BATCH_MAX * 16);
        tokio::spawn(run(db, bus, receiver));
        Endings { sender }
    }

    /// Starts the task on a thread of its own, with a runtime and a connection (to the
    /// database server at `url`) of its own, as the hold writer's (see `batch`).
    pub async fn start_on_own_thread(url: &str, bus: Bus) -> Result<Endings, sea_orm::DbErr> {
        let (sender, receiver) = mpsc::channel(BATCH_MAX * 16);
        let task = move |db| run(db, bus, receiver);
        super::connect::run_on_own_thread("endings-writer", url, 1, task).await?;
        Ok(Endings { sender })
    }

    /// Confirms the hold of `request` with whatever else is queued, if it is active at `now`:
    /// its order; `None` when the batch left it to the caller.
    pub async fn checkout(
        &self,
        request: CheckoutRequest,
        now: Millis,
    ) -> StoreResult<Option<Order>> {
        let hold_id = request.hold_id;
        let ended = self.end(hold_id, Ending::Checkout(request), now).await?;
        ended
            .map(|ended| {
                ended
                    .order
                    .ok_or_else(|| StoreError::Invariant(format!("hold {hold_id} has no order")))
            })
            .transpose()
    }

    /// Releases the hold `id` with whatever else is queued, if it is active at `now`: the hold
    /// as it ended; `None` when the batch left it to the caller.
    pub async fn release(&self, id: HoldId, now: Millis) -> StoreResult<Option<Hold>> {
        let ended = self.end(id, Ending::Release, now).await?;
        Ok(ended.map(|ended| ended.hold))
    }

    async fn end(
        &self,
        hold_id: HoldId,
        ending: Ending,
        now: Millis,
    ) -> StoreResult<Option<Ended>> {
        let job = |reply| Job {
            hold_id,
            ending,
            now,
            reply,
        };
        crate::store::ask(&self.sender, TASK, job).await
    }
}

async fn run(db: DatabaseConnection, bus: Bus, receiver: mpsc::Receiver<Job>) {
    let state = &mut (db, bus, receiver);
    crate::supervise::restarting(TASK, state, |(db, bus, receiver)| {
        Box::pin(write(db, bus, receiver))
    })
    .await;
}

async fn write(db: &DatabaseConnection, bus: &Bus, receiver: &mut mpsc::Receiver<Job>) {
    while let Some(jobs) = crate::store::next_batch(receiver, BATCH_MAX).await {
        match together(db, &jobs).await {
            Ok(decided) => {
                // Published here, not by the askers: a change committed is announced even when
                // its asker has gone.
                for ended in decided.ended.iter().flatten() {
                    bus.publish_hold(ended.hold.clone());
                }
                for model in decided.stock {
                    bus.publish_availability(availability_of(&model, 0));
                }
                for (job, ended) in jobs.into_iter().zip(decided.ended) {
                    job.reply.send(Ok(ended)).ok();
                }
            }
            // Nothing was committed: each request runs alone.
            Err(Failed::BeforeCommit(error)) => {
                tracing::warn!(error = %crate::error_chain(&error), jobs = jobs.len(), "a batch of checkouts and releases failed; running them one by one");
                for job in jobs {
                    job.reply.send(Ok(None)).ok();
                }
            }
            // The commit may or may not have happened: running the requests it would have
            // ended again could end a hold twice, so they fail; the others run alone.
            Err(Failed::AtCommit { error, ending }) => {
                tracing::error!(error = %crate::error_chain(&error), jobs = jobs.len(), "committing a batch of checkouts and releases failed");
                for (job, ending) in jobs.into_iter().zip(ending) {
                    let answer = if ending {
                        Err(StoreError::Unavailable(
                            "the outcome is unknown; ask again".into(),
                        ))
                    } else {
                        Ok(None)
                    };
                    job.reply.send(answer).ok();
                }
            }
        }
    }
}

/// How a batch failed.
enum Failed {
    BeforeCommit(StoreError),
    AtCommit {
        error: StoreError,
        /// Per job: whether the batch would have ended its hold.
        ending: Vec<bool>,
    },
}

/// What a batch's transaction decided.
struct Decided {
    /// Per job, in order.
    ended: Vec<Option<Ended>>,
    /// The new stock of the ticket types changed.
    stock: Vec<ticket_type::Model>,
}

/// Every job in one transaction, committed, or rolled back as a whole.
async fn together(db: &DatabaseConnection, jobs: &[Job]) -> Result<Decided, Failed> {
    let txn = db
        .begin()
        .await
        .map_err(|e| Failed::BeforeCommit(e.into()))?;
    let decided = match end_all(&txn, jobs).await {
        Ok(decided) => decided,
        Err(error) => {
            txn.rollback().await.ok();
            return Err(Failed::BeforeCommit(error));
        }
    };
    match txn.commit().await {
        Ok(()) => Ok(decided),
        Err(error) => Err(Failed::AtCommit {
            error: error.into(),
            ending: decided.ended.iter().map(Option::is_some).collect(),
        }),
    }
}

/// Ends, inside `txn`, the holds of the jobs that are active at their job's instant and asked
/// for once in the batch (not committed).
async fn end_all(txn: &DatabaseTransaction, jobs: &[Job]) -> StoreResult<Decided> {
    let ids: Vec<HoldId> = jobs.iter().map(|job| job.hold_id).collect();
    let mut holds: BTreeMap<HoldId, Hold> = queries::lock_holds(txn, &ids)
        .await?
        .into_iter()
        .map(|hold| (hold.id, hold))
        .collect();
    let mut seen = HashSet::new();
    let chosen: Vec<Option<Hold>> = jobs
        .iter()
        .map(|job| {
            let first = seen.insert(job.hold_id);
            let active = holds
                .get(&job.hold_id)
                .is_some_and(|hold| hold.check_active(job.now).is_ok());
            if first && active {
                holds.remove(&job.hold_id)
            } else {
                None
            }
        })
        .collect();

    let mut confirming: Vec<(&Hold, &CheckoutRequest, Millis)> = Vec::new();
    let mut releasing: Vec<(&Hold, Millis)> = Vec::new();
    for (hold, job) in chosen.iter().zip(jobs) {
        match (hold, &job.ending) {
            (Some(hold), Ending::Checkout(request)) => confirming.push((hold, request, job.now)),
            (Some(hold), Ending::Release) => releasing.push((hold, job.now)),
            (None, _) => {}
        }
    }
    let confirmed: Vec<_> = confirming.iter().map(|(h, _, now)| (h.id, *now)).collect();
    let released: Vec<_> = releasing.iter().map(|(h, now)| (h.id, *now)).collect();
    queries::end_holds(txn, &confirmed, HoldStatus::Confirmed).await?;
    queries::end_holds(txn, &released, HoldStatus::Released).await?;
    let mut orders = queries::insert_orders(txn, &confirming).await?.into_iter();
    let stock = change_counters(txn, &confirming, &releasing).await?;

    let ended = chosen
        .into_iter()
        .zip(jobs)
        .map(|(hold, job)| {
            let mut hold = hold?;
            let order = match job.ending {
                Ending::Checkout(_) => {
                    hold.status = HoldStatus::Confirmed;
                    orders.next()
                }
                Ending::Release => {
                    hold.status = HoldStatus::Released;
                    None
                }
            };
            hold.ended_at = Some(job.now);
            Some(Ended { hold, order })
        })
        .collect();
    Ok(Decided { ended, stock })
}

/// Sells the tickets of the holds confirmed and gives back those of the holds released, each
/// ticket type once (ascending id, the lock order); the new stock of each.
async fn change_counters(
    txn: &DatabaseTransaction,
    confirming: &[(&Hold, &CheckoutRequest, Millis)],
    releasing: &[(&Hold, Millis)],
) -> StoreResult<Vec<ticket_type::Model>> {
    // Per ticket type: tickets sold, tickets given back.
    let mut changes: BTreeMap<TicketTypeId, (i32, i32)> = BTreeMap::new();
    for (hold, _, _) in confirming {
        for item in &hold.items {
            changes.entry(item.ticket_type_id).or_default().0 += item.quantity as i32;
        }
    }
    for (hold, _) in releasing {
        for item in &hold.items {
            changes.entry(item.ticket_type_id).or_default().1 += item.quantity as i32;
        }
    }
    let mut stock = Vec::with_capacity(changes.len());
    for (id, (sold, returned)) in changes {
        let mut model = None;
        if sold > 0 {
            model = Some(queries::sell_held(txn, id, sold).await?);
        }
        if returned > 0 {
            model = Some(queries::return_held(txn, id, returned).await?);
        }
        stock.extend(model);
    }
    Ok(stock)
}
