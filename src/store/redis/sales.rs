//! Group commit of the Redis flow's sales. A checkout pins its hold in Redis, then sells it in
//! the database: journals the hold as confirmed, writes the order and raises the ticket type's
//! `sold` if `sold + held + quantity <= capacity` still holds there. When a flash sale ends, its
//! buyers pay at once, and one transaction each would lock the hot ticket type row from its sale
//! to its commit (a disk flush) while the others queue for it, as in the naive database flow.
//!
//! Concurrent sales queue here instead; one task takes every one waiting and sells them in one
//! transaction: the journal rows of their holds (ascending id), their orders, then each ticket
//! type once (ascending id), one commit. The batch sells every hold or none: when the database
//! disagrees about one of them (the journal ended the hold, an order exists already, Redis
//! allowed a hold the database cannot sell) it is rolled back, and each sale runs again in a
//! transaction of its own, which answers exactly as before batching.
//!
//! Each sale carries three instants from its pin. By the first, its transaction must have
//! reached its commit; if not, it is rolled back, the checkout answers UNAVAILABLE and gives the
//! hold back in Redis. A commit under way then is waited for until the second (so that the
//! checkout is not told "too late" about a sale that commits a moment later). A commit
//! unanswered by then may still land: the writer *settles* the batch (`settle`), waiting until
//! the third for its transaction to end either way, and answers each sale sold or not sold.
//! Only a sale still unsettled then is answered with an error: its hold stays pinned, and the
//! sweep settles it later, the same way, before the hold leaves its pin. A batch runs under the
//! earliest instants of its sales, and a sale taken after its first instant is not run at all.

use std::collections::BTreeMap;
use std::time::Duration;

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout_at};

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
    times: Deadlines,
    reply: oneshot::Sender<StoreResult<Sale>>,
}

/// What became of a sale. An error means that it may be committed, now or later: its commit
/// stayed unanswered until its last instant, or the writer failed (see `store::ask`).
#[derive(Debug)]
pub enum Sale {
    /// Committed: its order.
    Sold(Order),
    /// The database refuses it (rolled back): `SoldOut` if it disagrees with Redis,
    /// `HoldExpired` if the journal ended the hold already.
    Refused(Rejection),
    /// Not committed, and never will be (rolled back before its commit, or not run), for this
    /// reason.
    NotSold(StoreError),
}

/// When a sale must have reached its commit, when that commit must have answered, and until
/// when an unanswered commit is waited out.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    pub commit_sent: Instant,
    pub committed: Instant,
    pub settled: Instant,
}

impl Deadlines {
    /// The earliest of each, for a batch.
    fn earliest(jobs: &[Job]) -> Option<Deadlines> {
        Some(Deadlines {
            commit_sent: jobs.iter().map(|job| job.times.commit_sent).min()?,
            committed: jobs.iter().map(|job| job.times.committed).min()?,
            settled: jobs.iter().map(|job| job.times.settled).min()?,
        })
    }
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

    /// Sells the pinned `hold` with whatever else is queued. Not sold when the sale did not
    /// reach its commit by `times.commit_sent`, or its commit failed; an error when whether it
    /// committed is still unknown at `times.settled` (the hold must then stay pinned).
    pub async fn sell(
        &self,
        hold: Hold,
        request: CheckoutRequest,
        now: Millis,
        times: Deadlines,
    ) -> StoreResult<Sale> {
        let job = |reply| Job {
            hold,
            request,
            now,
            times,
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
        let (jobs, late): (Vec<Job>, Vec<Job>) = jobs
            .into_iter()
            .partition(|job| job.times.commit_sent > taken);
        for job in late {
            job.reply.send(Ok(Sale::NotSold(too_late()))).ok();
        }
        let Some(times) = Deadlines::earliest(&jobs) else {
            continue;
        };
        match together(db, &jobs, times).await {
            Ok(orders) => {
                for (job, order) in jobs.into_iter().zip(orders) {
                    job.reply.send(Ok(Sale::Sold(order))).ok();
                }
            }
            // Nothing was committed: each sale in a transaction of its own.
            Err(Failed::BeforeCommit(why)) => {
                if jobs.len() > 1 {
                    tracing::info!(%why, jobs = jobs.len(), "a batch of sales was rolled back; selling them one by one");
                }
                for job in jobs {
                    let sold = alone(db, &job).await;
                    job.reply.send(sold).ok();
                }
            }
            Err(Failed::Late) => {
                for job in jobs {
                    job.reply.send(Ok(Sale::NotSold(too_late()))).ok();
                }
            }
            // The commit may or may not have happened, or happen yet.
            Err(Failed::AtCommit(error)) => {
                tracing::error!(error = %crate::error_chain(&error), jobs = jobs.len(), "committing a batch of sales failed; settling it");
                match settled(db, &jobs, times.settled).await {
                    Ok(sales) => {
                        for (job, sale) in jobs.into_iter().zip(sales) {
                            job.reply.send(Ok(sale)).ok();
                        }
                    }
                    Err(error) => {
                        tracing::error!(error = %crate::error_chain(&error), jobs = jobs.len(), "whether a batch of sales committed is unknown; their holds stay pinned");
                        for job in jobs {
                            job.reply.send(Err(unknown())).ok();
                        }
                    }
                }
            }
        }
    }
}

fn too_late() -> StoreError {
    StoreError::Unavailable("the database did not answer in time".into())
}

fn unknown() -> StoreError {
    StoreError::Unavailable("the outcome of the sale is unknown".into())
}

/// How long a settlement may outlast its deadline before it is given up (a database gone
/// silent, rather than one refusing to wait any longer).
const SILENT_MARGIN: Duration = Duration::from_millis(500);

/// Waits, until `by`, until no transaction selling `holds` can commit any more, and returns the
/// order each has then (`None`: not sold, and never will be by a sale begun before).
///
/// Every sale writes its holds' journal rows first and keeps them locked until it ends, so
/// writing those rows again waits for such a transaction, a commit that hangs included; only
/// then is a missing order final. The rows are written as the active holds they were, which
/// changes no row (a row moves only forward), or writes a row the journal had not written yet.
/// On PostgreSQL the server stops the wait at `by` (`lock_timeout`), leaving the connection
/// usable; on SQLite the one connection is lent only once the commit has ended.
pub async fn settle(
    db: &DatabaseConnection,
    holds: &[&Hold],
    by: Instant,
) -> StoreResult<Vec<Option<Order>>> {
    let rows: Vec<journal::Entry> = holds
        .iter()
        .map(|hold| {
            let mut active = (*hold).clone();
            active.status = HoldStatus::Active;
            active.ended_at = None;
            (active, 0)
        })
        .collect();
    let fence = async {
        let txn = db.begin().await?;
        if txn.get_database_backend() == DbBackend::Postgres {
            let wait = by.saturating_duration_since(Instant::now());
            let sql = format!("SET LOCAL lock_timeout = {}", wait.as_millis().max(1));
            txn.execute_unprepared(&sql).await?;
        }
        journal::upsert(&txn, &rows).await?;
        txn.commit().await?;
        let mut orders = Vec::with_capacity(holds.len());
        for hold in holds {
            orders.push(queries::order_of_hold(db, hold.id).await?);
        }
        Ok(orders)
    };
    match timeout_at(by + SILENT_MARGIN, fence).await {
        Ok(settled) => settled,
        Err(_) => Err(StoreError::Unavailable(
            "the database did not say whether the sale committed".into(),
        )),
    }
}

/// The sales of `jobs`, whose commit was sent and not answered, once settled (see `settle`).
async fn settled(db: &DatabaseConnection, jobs: &[Job], by: Instant) -> StoreResult<Vec<Sale>> {
    let holds: Vec<&Hold> = jobs.iter().map(|job| &job.hold).collect();
    let orders = settle(db, &holds, by).await?;
    let sale = |order: Option<Order>| match order {
        Some(order) => Sale::Sold(order),
        None => Sale::NotSold(StoreError::Unavailable(
            "the database did not commit the sale".into(),
        )),
    };
    Ok(orders.into_iter().map(sale).collect())
}

/// How a batch failed.
enum Failed {
    /// Rolled back, for the reason given (an error, or the database disagreeing about a sale).
    BeforeCommit(String),
    /// Rolled back: the commit was not reached in time.
    Late,
    AtCommit(StoreError),
}

impl From<StoreError> for Failed {
    fn from(error: StoreError) -> Failed {
        Failed::BeforeCommit(crate::error_chain(&error).to_string())
    }
}

/// Every sale in one transaction, committed, or rolled back as a whole: the orders, in the
/// order of `jobs`.
async fn together(
    db: &DatabaseConnection,
    jobs: &[Job],
    times: Deadlines,
) -> Result<Vec<Order>, Failed> {
    let txn = timeout_at(times.commit_sent, db.begin())
        .await
        .map_err(|_| Failed::Late)?
        .map_err(StoreError::from)?;
    // Dropped unfinished when late, the transaction is rolled back.
    let sold = timeout_at(times.commit_sent, sell_all(&txn, jobs)).await;
    let why = match sold.map_err(|_| Failed::Late)? {
        Ok(Ok(orders)) => {
            let committed = commit(txn, times.committed).await;
            return committed.map(|()| orders).map_err(Failed::AtCommit);
        }
        Ok(Err(rejection)) => format!("the database refuses a sale of the batch: {rejection:?}"),
        Err(error) => crate::error_chain(&error).to_string(),
    };
    txn.rollback().await.ok();
    Err(Failed::BeforeCommit(why))
}

/// Commits `txn`, waiting for the answer until `by`.
async fn commit(txn: DatabaseTransaction, by: Instant) -> StoreResult<()> {
    match timeout_at(by, txn.commit()).await {
        Ok(committed) => Ok(committed?),
        Err(_) => Err(StoreError::Unavailable(
            "the database did not answer the commit in time".into(),
        )),
    }
}

/// Every sale of `jobs` inside `txn` (not committed): the orders, in the order of `jobs`, or
/// why the database refuses one of them (`HoldExpired`: the journal ended a hold already, a pin
/// reconciled away and then an expiry; `SoldOut`: Redis allowed what the database cannot sell).
async fn sell_all(txn: &DatabaseTransaction, jobs: &[Job]) -> StoreResult<Outcome<Vec<Order>>> {
    let confirmed: Vec<journal::Entry> = jobs
        .iter()
        .map(|job| (confirmed(&job.hold, job.now), 0))
        .collect();
    if journal::upsert(txn, &confirmed).await? != jobs.len() as u64 {
        return Ok(Err(Rejection::HoldExpired));
    }
    let sales: Vec<(&Hold, &CheckoutRequest, Millis)> = jobs
        .iter()
        .map(|job| (&job.hold, &job.request, job.now))
        .collect();
    // A second order of a hold breaks the unique index: a batch is rolled back, and the sale
    // alone finds the first order.
    let orders = queries::insert_orders(txn, &sales).await?;
    // The ticket types last, since their rows (hot in a flash sale) stay locked until the
    // commit; ascending, as every writer locks them.
    let mut sold: BTreeMap<TicketTypeId, i32> = BTreeMap::new();
    for item in jobs.iter().flat_map(|job| &job.hold.items) {
        *sold.entry(item.ticket_type_id).or_default() += item.quantity as i32;
    }
    for (id, quantity) in sold {
        if let Err(rejection) = queries::sell_double_checked(txn, id, quantity).await? {
            return Ok(Err(rejection));
        }
    }
    Ok(Ok(orders))
}

/// One sale in a transaction of its own; an error only when whether it committed is unknown
/// even after settling it.
async fn alone(db: &DatabaseConnection, job: &Job) -> StoreResult<Sale> {
    let by = job.times.commit_sent;
    let txn = match timeout_at(by, db.begin()).await {
        Ok(Ok(txn)) => txn,
        Ok(Err(error)) => return Ok(Sale::NotSold(error.into())),
        Err(_) => return Ok(Sale::NotSold(too_late())),
    };
    // Dropped unfinished when late, the transaction is rolled back.
    let Ok(sold) = timeout_at(by, sell_all(&txn, std::slice::from_ref(job))).await else {
        return Ok(Sale::NotSold(too_late()));
    };
    let refused = match sold {
        // One order per sale (an error drops the transaction, which rolls it back).
        Ok(Ok(orders)) => match <[Order; 1]>::try_from(orders) {
            Ok([order]) => {
                if let Err(error) = commit(txn, job.times.committed).await {
                    tracing::error!(error = %crate::error_chain(&error), hold_id = %job.hold.id, "committing a sale failed; settling it");
                    let job = std::slice::from_ref(job);
                    let sales = settled(db, job, job[0].times.settled).await?;
                    return sales.into_iter().next().ok_or_else(unknown);
                }
                return Ok(Sale::Sold(order));
            }
            Err(_) => Sale::NotSold(StoreError::Invariant(format!(
                "no order written for hold {}",
                job.hold.id
            ))),
        },
        Ok(Err(rejection)) => Sale::Refused(rejection),
        Err(StoreError::Db(error)) if super::is_unique_violation(&error) => {
            // Another checkout of this hold committed its order first: that is the order.
            txn.rollback().await.ok();
            return Ok(match queries::order_of_hold(db, job.hold.id).await {
                Ok(Some(order)) => Sale::Sold(order),
                Ok(None) => Sale::NotSold(StoreError::Db(error)),
                Err(looking) => Sale::NotSold(looking),
            });
        }
        Err(error) => Sale::NotSold(error),
    };
    txn.rollback().await.ok();
    Ok(refused)
}

/// `hold` as its sale ends it, at `now`.
fn confirmed(hold: &Hold, now: Millis) -> Hold {
    let mut confirmed = hold.clone();
    confirmed.status = HoldStatus::Confirmed;
    confirmed.ended_at = Some(now);
    confirmed
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use entity::hold as journal_row;
    use sea_orm::EntityTrait;

    use super::*;
    use crate::domain::{CustomerId, HoldId, HoldItem, Limits, NewTicketType};

    /// A fresh SQLite database with an event, a ticket type of 10, and a hold of one ticket
    /// that only Redis would know (the journal has no row of it).
    async fn a_hold() -> (DatabaseConnection, Hold) {
        let db = crate::store::db::connect("sqlite::memory:", 1)
            .await
            .unwrap();
        let now = Millis(1_000_000);
        let event = queries::create_event(&db, "Settle".into(), now)
            .await
            .unwrap();
        let limits = Limits::default();
        let new = NewTicketType::new(event.id, "GA".into(), 500, 10, None, &limits).unwrap();
        let created = queries::create_ticket_type(&db, new, now).await.unwrap();
        let hold = Hold {
            id: HoldId::random(),
            event_id: event.id,
            customer_id: CustomerId::new("buyer".into(), &limits).unwrap(),
            status: HoldStatus::Active,
            items: vec![HoldItem {
                ticket_type_id: created.unwrap().id,
                quantity: 1,
            }],
            created_at: now,
            expires_at: now + Millis(60_000),
            ended_at: None,
            idempotency_key: None,
        };
        (db, hold)
    }

    async fn journaled(db: &DatabaseConnection, id: HoldId) -> (String, i64) {
        let row = journal_row::Entity::find_by_id(id.0).one(db).await.unwrap();
        let row = row.expect("a journal row");
        (row.status, row.revision)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn settling_an_unsold_hold_journals_it_active_and_later_entries_move_it_on() {
        let (db, hold) = a_hold().await;
        assert_eq!(settle(&db, &[&hold], soon()).await.unwrap(), vec![None]);
        assert_eq!(journaled(&db, hold.id).await, ("ACTIVE".to_owned(), 0));
        let mut expired = hold.clone();
        expired.status = HoldStatus::Expired;
        expired.ended_at = Some(hold.expires_at);
        journal::upsert(&db, &[(expired, 2)]).await.unwrap();
        assert_eq!(journaled(&db, hold.id).await, ("EXPIRED".to_owned(), 2));
    }

    #[tokio::test]
    async fn settling_a_sold_hold_finds_its_order_and_changes_nothing() {
        let (db, hold) = a_hold().await;
        let sales = Sales::start(db.clone());
        let limits = Limits::default();
        let request = CheckoutRequest::new(hold.id, "pay".into(), None, &limits).unwrap();
        let times = Deadlines {
            commit_sent: soon(),
            committed: soon(),
            settled: soon(),
        };
        let sold = sales
            .sell(hold.clone(), request, hold.created_at, times)
            .await;
        let Ok(Sale::Sold(order)) = sold else {
            panic!("not sold: {sold:?}");
        };
        let settled = settle(&db, &[&hold], soon()).await.unwrap();
        assert_eq!(settled, vec![Some(order)]);
        assert_eq!(journaled(&db, hold.id).await, ("CONFIRMED".to_owned(), 0));
    }
}
