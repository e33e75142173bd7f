//! Keeps the service's background tasks (the writers, the key look-up, the journal, the expiry
//! timer and listeners) running through a panic. A panic is a bug, never something a client can
//! ask for; but without this one would stop its task for good, and with the hold writer every
//! later hold would fail until the process restarted. A task that panics is logged and started
//! again, keeping only what it was given to keep (its request queue): the requests of the batch
//! in hand fail (their askers learn that the outcome is unknown), the next batch is served.
//! Panics are counted at `/metrics` (`tickethold_task_panics_total{task}`).

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;

/// The pause before a task that panicked starts again, so that one that panics at once does not
/// spin.
const RESTART_PAUSE: Duration = Duration::from_millis(100);

/// Runs `task` on `state` until it returns; each time it panics, logs the panic and, after a
/// short pause, runs it again on the same `state`. (`task` boxes its future: the future of an
/// async closure over a borrow cannot be proven `Send` for `tokio::spawn` by today's compiler.)
pub async fn restarting<K>(
    name: &str,
    state: &mut K,
    mut task: impl FnMut(&mut K) -> BoxFuture<'_, ()>,
) {
    crate::metrics::watch_task(name);
    loop {
        match AssertUnwindSafe(task(state)).catch_unwind().await {
            Ok(()) => return,
            Err(panic) => {
                let panic = message_of(panic.as_ref());
                crate::metrics::count_task_panic(name);
                tracing::error!(
                    task = name,
                    panic,
                    "a background task panicked; starting it again"
                );
                tokio::time::sleep(RESTART_PAUSE).await;
            }
        }
    }
}

/// Spawns the task that `start` makes, and makes it again each time it panics (see
/// `restarting`); for a task that keeps nothing between runs but what `start` clones into it.
pub fn spawn<F, Fut>(name: &'static str, mut start: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        restarting(name, &mut start, |start| Box::pin(start())).await;
    })
}

/// What a panic said, when it said it with a string (as `panic!`, `unwrap` and `expect` do).
fn message_of(panic: &(dyn Any + Send)) -> &str {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(message), _) => message,
        (_, Some(message)) => message,
        _ => "(not a string)",
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::{mpsc, oneshot};

    use super::*;
    use crate::store::{StoreError, StoreResult, ask, next_batch};

    #[tokio::test(start_paused = true)]
    async fn a_task_that_panics_runs_again_until_it_returns() {
        let mut runs = 0;
        restarting("counter", &mut runs, |runs| {
            Box::pin(async move {
                *runs += 1;
                assert!(*runs >= 3, "run {runs} panics");
            })
        })
        .await;
        assert_eq!(runs, 3);
        let served = crate::metrics::Metrics::new().render();
        assert!(
            served.contains("tickethold_task_panics_total{task=\"counter\"} 2"),
            "{served}"
        );
    }

    struct Job {
        n: u32,
        reply: oneshot::Sender<StoreResult<u32>>,
    }

    /// A writer as the service's are: batches from a queue, one answer per job; job 13 panics.
    async fn writer(receiver: &mut mpsc::Receiver<Job>) {
        while let Some(jobs) = next_batch(receiver, 1).await {
            for job in jobs {
                assert_ne!(job.n, 13, "an unlucky job");
                job.reply.send(Ok(job.n * 2)).ok();
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_shows_at_zero_panics_once_it_runs() {
        restarting("calm", &mut (), |()| Box::pin(async {})).await;
        let served = crate::metrics::Metrics::new().render();
        assert!(
            served.contains("tickethold_task_panics_total{task=\"calm\"} 0"),
            "{served}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_panic_fails_the_requests_in_hand_and_serves_the_next() {
        let (sender, mut receiver) = mpsc::channel(16);
        let task = tokio::spawn(async move {
            restarting("the writer", &mut receiver, |receiver| {
                Box::pin(writer(receiver))
            })
            .await;
        });
        let asked = |n| ask(&sender, "the writer", move |reply| Job { n, reply });
        assert_eq!(asked(1).await.unwrap(), 2);
        match asked(13).await {
            Err(StoreError::Unavailable(message)) => assert_eq!(
                message,
                "the writer failed before answering: the outcome is unknown"
            ),
            other => panic!("expected UNAVAILABLE, got {other:?}"),
        }
        assert_eq!(asked(2).await.unwrap(), 4);
        drop(sender);
        task.await
            .expect("the writer returns once its queue is closed");
    }
}
