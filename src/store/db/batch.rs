//! Group commit of holds. Concurrent hold requests queue here; one task takes every request
//! waiting and decides them all together: from the ticket types they touch, the customers'
//! counts and the holds already made under the requests' idempotency keys, read once, it
//! decides each request in arrival order in memory (a retry of a hold made, or all-or-nothing,
//! limits, stock), then raises each ticket type's `held` once and writes the new holds in one
//! commit. A flash sale of N buyers pays for a handful of round trips and commits (each a disk
//! flush holding the hot row's lock) instead of N transactions that would queue one by one on
//! the hot row's lock.
//!
//! On PostgreSQL a batch is decided from a read without a lock and written in one statement
//! that is its own transaction (`at_once`): two round trips on a connection the writer keeps
//! (the read takes the customers' counts too, where a ticket type has a limit per customer, in
//! the same snapshot as the stock), the hot row locked only by the write and its commit. The
//! write takes effect only if no ticket type that the batch takes stock of changed since the
//! read in what the decisions rested on (its tickets available; its version where a
//! customer's limit applies), so that its stock was, at the write, what the decisions counted.
//! Otherwise (another instance took stock, an expiry gave some back) PostgreSQL refuses the
//! write whole and the batch goes to a transaction that locks the ticket types (ascending id)
//! before it reads, as every batch on SQLite does (`together`). A batch with nothing to take, the
//! refusals of a sold-out sale, is answered from the read alone.
//!
//! On SQLite, while the last look found a ticket type of the batch with nothing available, the
//! batch is first *sifted* from committed rows without a transaction: requests are decided
//! against them in arrival order up to the first that could take stock. Those (refusals, and
//! retries of committed holds) are answered at once, as they would have been by a transaction
//! at that instant; the rest go on to the transaction.
//!
//! Answers are sent after the commit, so an acknowledged hold is a committed hold. A batch whose
//! transaction fails before its commit (a deadlock with another instance, an idempotency key
//! taken twice) is rolled back and run again request by request, each in a transaction of its
//! own. A batch whose commit fails, or whose write at once went unanswered, is not rerun, since
//! it may have committed: its requests answer UNAVAILABLE.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use entity::ticket_type;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::connect::{Kept, SERIALIZATION_FAILURE, UNIQUE_VIOLATION, Written};
use super::convert::availability_of;
use super::{queries, take_stock};
use crate::domain::{Hold, HoldId, HoldRequest, Millis, Rejection, TicketTypeId};
use crate::events::Bus;
use crate::store::{Outcome, StoreError, StoreResult};

/// Requests in one transaction at most.
const BATCH_MAX: usize = 256;

/// The task's name, in the errors its askers get and in the log when it panics.
const TASK: &str = "the hold writer";

/// Pooled connections of a hold writer on a thread of its own, for its transactions (two, so
/// that a transaction need not wait for the ping that gives the last one back); its reads and
/// its writes of batches at once go over a connection it keeps, one more.
const WRITER_CONNECTIONS: u32 = 2;

/// What a request came to.
pub enum Answer {
    /// A hold was made under the request's idempotency key already (committed before this
    /// batch, or earlier in it): the request is a retry of that hold.
    Retry(HoldId),
    Decided {
        outcome: Outcome<Hold>,
        /// Sold out while active holds past their `expires_at` still hold stock of the ticket
        /// type: worth expiring them and asking again.
        overdue_in_the_way: bool,
    },
}

struct Job {
    request: HoldRequest,
    now: Millis,
    reply: oneshot::Sender<StoreResult<Answer>>,
}

/// The queue of hold requests; its task runs until the queue is dropped.
pub struct Batcher {
    sender: mpsc::Sender<Job>,
}

impl Batcher {
    /// Starts the task on the current runtime, over `db`; the new stock of the ticket types a
    /// batch took is published on `bus` once per batch, after its commit.
    pub fn start(db: DatabaseConnection, bus: Bus) -> Batcher {
        let (sender, receiver) = mpsc::channel(BATCH_MAX * 16);
        tokio::spawn(run(db, bus, receiver));
        Batcher { sender }
    }

    /// Starts the task on a thread of its own, with a runtime and connections (to the
    /// database server at `url`) of its own. A batch makes several round trips while it holds
    /// the hot row's lock; on the service's runtime each of them would wait for a worker behind
    /// the HTTP requests of the sale (the bench measured a fifth fewer holds per second so), on
    /// its own thread the operating system wakes it as soon as the database answers.
    pub async fn start_on_own_thread(url: &str, bus: Bus) -> Result<Batcher, sea_orm::DbErr> {
        let (sender, receiver) = mpsc::channel(BATCH_MAX * 16);
        let task = move |db| run(db, bus, receiver);
        super::connect::run_on_own_thread("hold-writer", url, WRITER_CONNECTIONS, task).await?;
        Ok(Batcher { sender })
    }

    /// Takes the stock of `request` and writes its hold, committed with whatever else is queued.
    pub async fn hold(&self, request: HoldRequest, now: Millis) -> StoreResult<Answer> {
        let job = |reply| Job {
            request,
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
    // Ticket types that the last batch to touch them left with nothing available.
    let mut sold_out: BTreeSet<TicketTypeId> = BTreeSet::new();
    let mut kept = Kept::of(db);
    while let Some(mut jobs) = crate::store::next_batch(receiver, BATCH_MAX).await {
        if let Some(kept) = kept.as_mut() {
            match at_once(db, kept, &jobs).await {
                Ok(Some(decided)) => {
                    let how = if decided.stock.is_empty() {
                        "read"
                    } else {
                        "at_once"
                    };
                    crate::metrics::count_hold_batch(how);
                    answer(bus, jobs, decided);
                    continue;
                }
                // The write was refused (the stock changed since the read, a key was taken
                // meanwhile): decided again under the lock.
                Ok(None) => {}
                // The read failed, nothing was written: the transaction decides every request.
                Err(Failed::BeforeCommit(error)) => {
                    tracing::warn!(error = %crate::error_chain(&error), "reading a batch of holds failed; deciding it under the lock");
                }
                Err(Failed::AtCommit(error)) => {
                    unknown(jobs, &error);
                    continue;
                }
            }
        } else if jobs
            .iter()
            .any(|job| job.request.items.keys().any(|id| sold_out.contains(id)))
        {
            match sift(db, &jobs).await {
                Ok(sifted) => {
                    note_stock(&mut sold_out, &sifted.available);
                    let rest = jobs.split_off(sifted.answers.len());
                    for (job, answer) in jobs.into_iter().zip(sifted.answers) {
                        job.reply.send(Ok(answer)).ok();
                    }
                    jobs = rest;
                }
                // Nothing was changed: the transaction decides every request.
                Err(error) => {
                    tracing::warn!(error = %crate::error_chain(&error), "sifting a batch of holds failed");
                }
            }
            if jobs.is_empty() {
                crate::metrics::count_hold_batch("read");
                continue;
            }
        }
        match together(db, &jobs).await {
            Ok(decided) => {
                crate::metrics::count_hold_batch("locked");
                note_stock(&mut sold_out, &decided.available);
                answer(bus, jobs, decided);
            }
            // Nothing was committed: each request again, in a transaction of its own.
            Err(Failed::BeforeCommit(error)) => {
                if jobs.len() > 1 {
                    tracing::warn!(error = %crate::error_chain(&error), jobs = jobs.len(), "a batch of holds failed; running them one by one");
                }
                crate::metrics::count_hold_batch("one_by_one");
                for job in jobs {
                    let answer = alone(db, bus, &job.request, job.now).await;
                    job.reply.send(answer).ok();
                }
            }
            Err(Failed::AtCommit(error)) => unknown(jobs, &error),
        }
    }
}

/// Publishes the stock a committed batch took and answers its jobs.
fn answer(bus: &Bus, jobs: Vec<Job>, decided: Decided) {
    publish(bus, decided.stock);
    for (job, answer) in jobs.into_iter().zip(decided.answers) {
        job.reply.send(Ok(answer)).ok();
    }
}

/// Fails the jobs of a batch whose commit may or may not have happened: running them again
/// could make second holds (a hold that was made expires as any other).
fn unknown(jobs: Vec<Job>, error: &StoreError) {
    tracing::error!(error = %crate::error_chain(error), jobs = jobs.len(), "committing a batch of holds failed");
    let message = "the outcome of the hold is unknown; ask again with an idempotency key";
    for job in jobs {
        job.reply
            .send(Err(StoreError::Unavailable(message.into())))
            .ok();
    }
}

/// Remembers which of the ticket types just read have nothing available.
fn note_stock(sold_out: &mut BTreeSet<TicketTypeId>, available: &BTreeMap<TicketTypeId, i64>) {
    for (id, available) in available {
        if *available > 0 {
            sold_out.remove(id);
        } else {
            sold_out.insert(*id);
        }
    }
}

/// The first requests of a batch, decided without a transaction.
struct Sifted {
    /// Answers of the first `answers.len()` jobs, each a refusal or a retry of a committed hold.
    answers: Vec<Answer>,
    /// Tickets available of each ticket type read.
    available: BTreeMap<TicketTypeId, i64>,
}

/// Decides, from committed rows read without locks, the jobs of the batch up to the first that
/// could take stock (on SQLite: PostgreSQL decides every job from such a read, `at_once`).
/// Each answer is the one a transaction of its own would have given at the instant of the
/// read: a refusal (no stock was taken before it in the batch, so the counters read are the
/// whole story) or a retry of a hold that is committed.
async fn sift(db: &DatabaseConnection, jobs: &[Job]) -> StoreResult<Sifted> {
    let ids: Vec<TicketTypeId> = requested_types(jobs).into_iter().collect();
    let keys = keys_of(jobs);
    let now = latest(jobs);
    let customers = customers_of(jobs);
    let queries::Committed {
        types,
        made,
        overdue,
        owned,
    } = queries::committed_sqlite(db, &ids, &keys, &customers, now).await?;
    let mut ledger = Ledger::new(&types, owned, made);
    let mut decisions = Vec::new();
    for job in jobs {
        match ledger.decide(job) {
            Decision::Made(Ok(_)) => break,
            decision => decisions.push(decision),
        }
    }
    Ok(Sifted {
        answers: answers_of(decisions, &with_some(overdue)),
        available: ledger.available(),
    })
}

/// On PostgreSQL, every job decided from committed rows read without a lock and what they take
/// written in one statement, on the condition that what the decisions rest on did not change
/// since the read (`queries::hold_and_take_unchanged`): two round trips on the writer's kept
/// connection, the hot row locked only by the write and its commit. The holds are made on the
/// stock as it stood at the write; refusals and retries are answered as of the read, as a
/// sift's are. `None` if the condition failed
/// (another instance took stock, an expiry gave some back, an idempotency key was taken
/// meanwhile): nothing was written, and the batch is for the transaction. A batch with
/// nothing to take (the refusals of a sold-out sale, retries) is answered from the read alone.
async fn at_once(
    db: &DatabaseConnection,
    kept: &mut Kept,
    jobs: &[Job],
) -> Result<Option<Decided>, Failed> {
    let ids: Vec<TicketTypeId> = requested_types(jobs).into_iter().collect();
    let keys = keys_of(jobs);
    let now = latest(jobs);
    let customers = customers_of(jobs);
    let read = queries::committed(db, kept, &ids, &keys, &customers, now).await;
    let queries::Committed {
        types,
        made,
        overdue,
        owned,
    } = read.map_err(Failed::BeforeCommit)?;
    let mut ledger = Ledger::new(&types, owned, made);
    let decisions: Vec<Decision> = jobs.iter().map(|job| ledger.decide(job)).collect();
    let holds = made_holds(&decisions);
    let stock = if holds.is_empty() {
        Vec::new()
    } else {
        match queries::hold_and_take_unchanged(kept, &holds, &ledger.taken, &types).await {
            Written::Done(stock) => stock,
            Written::Refused(error) => {
                // Expected: the stock changed since the read, or another instance took an
                // idempotency key of the batch; anything else is worth a look.
                let code = error.sqlstate();
                if ![Some(SERIALIZATION_FAILURE), Some(UNIQUE_VIOLATION)].contains(&code.as_deref())
                {
                    tracing::warn!(error = %crate::error_chain(&error), "writing a batch of holds at once failed; deciding it under the lock");
                }
                return Ok(None);
            }
            Written::Unknown(error) => return Err(Failed::AtCommit(error)),
        }
    };
    Ok(Some(Decided {
        answers: answers_of(decisions, &with_some(overdue)),
        stock,
        available: ledger.available(),
    }))
}

/// The holds that `decisions` made.
fn made_holds(decisions: &[Decision]) -> Vec<&Hold> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Made(Ok(hold)) => Some(hold),
            _ => None,
        })
        .collect()
}

/// How a batch failed.
enum Failed {
    BeforeCommit(StoreError),
    AtCommit(StoreError),
}

/// What a batch's transaction decided.
struct Decided {
    answers: Vec<Answer>,
    /// The new stock of the ticket types taken.
    stock: Vec<ticket_type::Model>,
    /// Tickets available of each ticket type locked, after the batch.
    available: BTreeMap<TicketTypeId, i64>,
}

/// Every job in one transaction, committed, or rolled back as a whole.
async fn together(db: &DatabaseConnection, jobs: &[Job]) -> Result<Decided, Failed> {
    let txn = db
        .begin()
        .await
        .map_err(|e| Failed::BeforeCommit(e.into()))?;
    match decide_all(&txn, jobs).await {
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

/// Decides every job inside `txn` and writes what they take (not committed).
async fn decide_all(txn: &DatabaseTransaction, jobs: &[Job]) -> StoreResult<Decided> {
    let now = latest(jobs);
    // On SQLite, one writer at a time: what the transaction reads stays so until it commits,
    // and the sift's one statement reads it all (the customers' counts and the overdue
    // tickets too). On PostgreSQL the counts are read after the lock, so that concurrent holds
    // of one customer are counted.
    let (types, made, owned, overdue) = if txn.get_database_backend() == DbBackend::Sqlite {
        let ids: Vec<TicketTypeId> = requested_types(jobs).into_iter().collect();
        let customers = customers_of(jobs);
        let read = queries::committed_sqlite(txn, &ids, &keys_of(jobs), &customers, now).await?;
        (read.types, read.made, read.owned, Some(read.overdue))
    } else {
        let types = queries::lock_ticket_types(txn, requested_types(jobs)).await?;
        let made = queries::hold_ids_by_idempotency_keys(txn, &keys_of(jobs)).await?;
        let owned = owned_of(txn, &types, jobs, now).await?;
        (types, made, owned, None)
    };
    let mut ledger = Ledger::new(&types, owned, made);
    let decisions: Vec<Decision> = jobs.iter().map(|job| ledger.decide(job)).collect();
    let holds = made_holds(&decisions);
    let stock = queries::hold_and_take(txn, &holds, &ledger.taken).await?;
    let available = ledger.available();
    let outcomes = decisions.iter().filter_map(|d| match d {
        Decision::Made(outcome) => Some(outcome),
        Decision::Retry(_) => None,
    });
    let overdue = match overdue {
        Some(overdue) => with_some(overdue),
        None => overdue_in_the_way(txn, outcomes, now).await?,
    };
    Ok(Decided {
        answers: answers_of(decisions, &overdue),
        stock,
        available,
    })
}

/// The ticket types the jobs ask for.
fn requested_types(jobs: &[Job]) -> BTreeSet<TicketTypeId> {
    jobs.iter()
        .flat_map(|job| job.request.items.keys().copied())
        .collect()
}

/// The latest instant of the batch: a hold past its expiry then counts for nobody.
fn latest(jobs: &[Job]) -> Millis {
    jobs.iter().map(|job| job.now).max().unwrap_or_default()
}

/// The answers to `decisions`, given the ticket types on which overdue holds still count.
fn answers_of(decisions: Vec<Decision>, overdue: &BTreeSet<TicketTypeId>) -> Vec<Answer> {
    decisions
        .into_iter()
        .map(|decision| match decision {
            Decision::Retry(id) => Answer::Retry(id),
            Decision::Made(outcome) => Answer::Decided {
                overdue_in_the_way: blocked_by(&outcome).is_some_and(|id| overdue.contains(&id)),
                outcome,
            },
        })
        .collect()
}

/// What each customer of the jobs owns of each limited ticket type among `types` (one
/// statement, none when no ticket type is limited), for a transaction on PostgreSQL that has
/// locked them.
async fn owned_of<C: ConnectionTrait>(
    conn: &C,
    types: &BTreeMap<TicketTypeId, ticket_type::Model>,
    jobs: &[Job],
    now: Millis,
) -> StoreResult<HashMap<(String, TicketTypeId), i64>> {
    let limited: Vec<&ticket_type::Model> = types
        .values()
        .filter(|tt| tt.max_per_customer.is_some())
        .collect();
    queries::customer_quantities(conn, &customers_of(jobs), &limited, now).await
}

/// The customer of every job.
fn customers_of(jobs: &[Job]) -> Vec<&str> {
    jobs.iter()
        .map(|job| job.request.customer_id.as_str())
        .collect()
}

/// The (customer, idempotency key) of every job that has a key.
fn keys_of(jobs: &[Job]) -> Vec<(&str, &str)> {
    jobs.iter().filter_map(|job| key_of(&job.request)).collect()
}

/// The (customer, idempotency key) of a request that has a key.
fn key_of(request: &HoldRequest) -> Option<(&str, &str)> {
    let key = request.idempotency_key.as_deref()?;
    Some((request.customer_id.as_str(), key))
}

fn publish(bus: &Bus, stock: Vec<ticket_type::Model>) {
    for model in stock {
        bus.publish_availability(availability_of(&model, 0));
    }
}

/// The ticket type a refusal was sold out of.
fn blocked_by<T>(decision: &Outcome<T>) -> Option<TicketTypeId> {
    match decision {
        Err(Rejection::SoldOut { ticket_type_id, .. }) => Some(*ticket_type_id),
        _ => None,
    }
}

/// The ticket types that some decisions were sold out of and on which overdue holds still
/// count (one query for the batch, none when nothing was sold out).
async fn overdue_in_the_way<'a, T: 'a>(
    txn: &DatabaseTransaction,
    decisions: impl IntoIterator<Item = &'a Outcome<T>>,
    now: Millis,
) -> StoreResult<BTreeSet<TicketTypeId>> {
    let blocked: BTreeSet<TicketTypeId> = decisions.into_iter().filter_map(blocked_by).collect();
    if blocked.is_empty() {
        return Ok(BTreeSet::new());
    }
    let blocked: Vec<TicketTypeId> = blocked.into_iter().collect();
    Ok(with_some(queries::overdue_held(txn, &blocked, now).await?))
}

/// The ticket types of `quantities` with more than none.
fn with_some(quantities: BTreeMap<TicketTypeId, i64>) -> BTreeSet<TicketTypeId> {
    quantities
        .into_iter()
        .filter(|(_, quantity)| *quantity > 0)
        .map(|(id, _)| id)
        .collect()
}

/// What a batch decided for one request.
enum Decision {
    Retry(HoldId),
    Made(Outcome<Hold>),
}

/// What a batch has decided so far: the stock it took per ticket type, what each customer
/// owns of each limited ticket type, and the holds made under each idempotency key.
struct Ledger<'a> {
    types: &'a BTreeMap<TicketTypeId, ticket_type::Model>,
    taken: BTreeMap<TicketTypeId, i32>,
    owned: HashMap<(String, TicketTypeId), i64>,
    made: HashMap<(String, String), Uuid>,
}

impl<'a> Ledger<'a> {
    /// A ledger over `types` (read, or locked, by the caller) with nothing taken yet.
    fn new(
        types: &'a BTreeMap<TicketTypeId, ticket_type::Model>,
        owned: HashMap<(String, TicketTypeId), i64>,
        made: HashMap<(String, String), Uuid>,
    ) -> Ledger<'a> {
        Ledger {
            types,
            taken: BTreeMap::new(),
            owned,
            made,
        }
    }

    /// Tickets available of each ticket type, after what the ledger took.
    fn available(&self) -> BTreeMap<TicketTypeId, i64> {
        self.types
            .iter()
            .map(|(id, tt)| (*id, self.available_of(tt)))
            .collect()
    }

    /// Tickets available of `tt`, after what the ledger took.
    fn available_of(&self, tt: &ticket_type::Model) -> i64 {
        let taken = self.taken.get(&TicketTypeId(tt.id)).copied().unwrap_or(0);
        i64::from(tt.capacity) - i64::from(tt.sold) - i64::from(tt.held) - i64::from(taken)
    }

    /// Decides one request with the same rules, in the same order, as a transaction of its own
    /// would (see `alone`), and books what it takes.
    fn decide(&mut self, job: &Job) -> Decision {
        let key = key_of(&job.request).map(|(customer, key)| (customer.to_owned(), key.to_owned()));
        if let Some(id) = key.as_ref().and_then(|key| self.made.get(key)) {
            return Decision::Retry(HoldId(*id));
        }
        let outcome = self.take(job);
        if let (Ok(hold), Some(key)) = (&outcome, key) {
            self.made.insert(key, hold.id.0);
        }
        Decision::Made(outcome)
    }

    /// The stock rules of `take_stock`, against the ledger.
    fn take(&mut self, job: &Job) -> Outcome<Hold> {
        let request = &job.request;
        let customer = request.customer_id.as_str();
        let of_event = |id| {
            self.types
                .get(id)
                .is_some_and(|tt| tt.event_id == request.event_id.0)
        };
        if !request.items.keys().all(of_event) {
            return Err(Rejection::NotFound {
                what: "ticket type",
            });
        }
        for (id, quantity) in &request.items {
            let tt = &self.types[id];
            let quantity = i64::from(quantity.get());
            let available = self.available_of(tt);
            let already = self
                .owned
                .get(&(customer.to_owned(), *id))
                .copied()
                .unwrap_or(0);
            if let Some(max) = tt
                .max_per_customer
                .filter(|max| already + quantity > i64::from(*max))
            {
                return Err(Rejection::LimitExceeded {
                    ticket_type_id: *id,
                    max_per_customer: Ord::max(max, 0) as u32,
                    already: Ord::max(already, 0) as u32,
                });
            }
            if available < quantity {
                return Err(Rejection::SoldOut {
                    ticket_type_id: *id,
                    available: Ord::max(available, 0) as u32,
                });
            }
        }
        for (id, quantity) in &request.items {
            *self.taken.entry(*id).or_default() += quantity.get() as i32;
            *self.owned.entry((customer.to_owned(), *id)).or_default() += i64::from(quantity.get());
        }
        Ok(request.hold_at(job.now))
    }
}

/// One job in a transaction of its own.
async fn alone(
    db: &DatabaseConnection,
    bus: &Bus,
    request: &HoldRequest,
    now: Millis,
) -> StoreResult<Answer> {
    let txn = db.begin().await?;
    if let Some(key) = &request.idempotency_key
        && let Some(found) =
            queries::hold_by_idempotency_key(&txn, &request.customer_id, key).await?
    {
        txn.rollback().await.ok();
        return Ok(Answer::Retry(HoldId(found.id)));
    }
    let outcome = attempt(&txn, request, now).await;
    let outcome = match outcome {
        Ok(Ok((hold, stock))) => {
            txn.commit().await?;
            publish(bus, stock);
            return Ok(Answer::Decided {
                outcome: Ok(hold),
                overdue_in_the_way: false,
            });
        }
        Ok(Err(rejection)) => Err(rejection),
        Err(error) => {
            txn.rollback().await.ok();
            return Err(error);
        }
    };
    let overdue = overdue_in_the_way(&txn, [&outcome], now).await;
    txn.rollback().await.ok();
    let overdue_in_the_way = !overdue?.is_empty();
    Ok(Answer::Decided {
        outcome,
        overdue_in_the_way,
    })
}

/// Takes the stock and writes the hold, inside `txn`.
async fn attempt(
    txn: &DatabaseTransaction,
    request: &HoldRequest,
    now: Millis,
) -> StoreResult<Outcome<(Hold, Vec<ticket_type::Model>)>> {
    let stock = match take_stock(txn, request, now).await? {
        Ok(stock) => stock,
        Err(rejection) => return Ok(Err(rejection)),
    };
    let hold = request.hold_at(now);
    queries::insert_hold(txn, &hold).await?;
    Ok(Ok((hold, stock)))
}
