//! The journal's holds by idempotency key, for keys Redis does not know (new ones, or ones it
//! forgot). Every keyed hold asks, so concurrent questions wait here and one task answers them
//! all with one statement: a flash sale of keyed holds costs the database a look-up per batch,
//! not one per hold, on a connection the task keeps (one round trip where a pooled connection,
//! pinged when lent and when given back, made three).

use sea_orm::DatabaseConnection;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::domain::CustomerId;
use crate::store::db::{Kept, queries};
use crate::store::{StoreError, StoreResult};

/// Questions in one statement at most.
const BATCH_MAX: usize = 256;

/// The task's name, in the errors its askers get and in the log when it panics.
const TASK: &str = "the journal look-up";

struct Question {
    customer: String,
    key: String,
    reply: oneshot::Sender<StoreResult<Option<Uuid>>>,
}

/// The queue of questions; its task runs until the queue is dropped.
pub struct KeysLookup {
    sender: mpsc::Sender<Question>,
}

impl KeysLookup {
    pub fn start(db: DatabaseConnection) -> KeysLookup {
        let (sender, receiver) = mpsc::channel(BATCH_MAX * 16);
        tokio::spawn(run(db, receiver));
        KeysLookup { sender }
    }

    /// The id of the journaled hold that `customer` made with `key`, if any.
    pub async fn find(&self, customer: &CustomerId, key: &str) -> StoreResult<Option<Uuid>> {
        let question = |reply| Question {
            customer: customer.as_str().to_owned(),
            key: key.to_owned(),
            reply,
        };
        crate::store::ask(&self.sender, TASK, question).await
    }
}

async fn run(db: DatabaseConnection, receiver: mpsc::Receiver<Question>) {
    let state = &mut (db, receiver);
    crate::supervise::restarting(TASK, state, |(db, receiver)| Box::pin(answer(db, receiver)))
        .await;
}

async fn answer(db: &DatabaseConnection, receiver: &mut mpsc::Receiver<Question>) {
    let mut kept = Kept::of(db);
    while let Some(questions) = crate::store::next_batch(receiver, BATCH_MAX).await {
        let pairs: Vec<(&str, &str)> = questions
            .iter()
            .map(|q| (q.customer.as_str(), q.key.as_str()))
            .collect();
        let found = match kept.as_mut() {
            Some(kept) => queries::hold_ids_by_idempotency_keys_on(kept, &pairs).await,
            None => queries::hold_ids_by_idempotency_keys(db, &pairs).await,
        };
        match found {
            Ok(found) => {
                for Question {
                    customer,
                    key,
                    reply,
                } in questions
                {
                    reply.send(Ok(found.get(&(customer, key)).copied())).ok();
                }
            }
            Err(error) => {
                // Each asker gets the failure; the detail goes to the log, not to clients.
                let message = format!(
                    "looking up idempotency keys in the journal: {}",
                    crate::error_chain(&error)
                );
                for question in questions {
                    let failure = StoreError::Unavailable(message.clone());
                    question.reply.send(Err(failure)).ok();
                }
            }
        }
    }
}
