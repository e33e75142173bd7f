//! The expiry timer of both flows: sleeps until the next `expires_at` (the database's index, or
//! the Redis expiry indexes), then expires every hold that is due, in batches of
//! `sweep_batch_max`.
//!
//! It also wakes at least every `sweep_interval`, to pick up holds written by other instances
//! sharing the database; at start-up its first look expires whatever lapsed while the server
//! was down.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Wakeup;
use crate::domain::Millis;
use crate::error_chain;
use crate::store::HoldStore;

#[derive(Clone, Debug)]
pub struct TimerConfig {
    /// Longest sleep between two looks at the index.
    pub sweep_interval: Duration,
    /// Holds expired in one transaction.
    pub sweep_batch_max: u32,
}

/// Runs until `shutdown` is cancelled.
pub async fn run(
    store: Arc<dyn HoldStore>,
    wakeup: Arc<Wakeup>,
    config: TimerConfig,
    shutdown: CancellationToken,
) {
    let retry_after_error = Duration::from_millis(500);
    // A hold can stay due a moment after a pass (its row locked by a checkout about to end): look
    // again after this pause rather than spin.
    let pause_when_stuck = Duration::from_millis(20);
    while !shutdown.is_cancelled() {
        let pass = Millis::now();
        let expired = expire_all_due(store.as_ref(), pass, config.sweep_batch_max).await;
        if let Err(error) = expired {
            tracing::error!(error = %error_chain(&error), "expiring due holds failed");
            tokio::select! {
                () = tokio::time::sleep(retry_after_error) => continue,
                () = shutdown.cancelled() => return,
            }
        }
        wakeup.forget();
        let next = match store.next_expiry().await {
            Ok(next) => next.unwrap_or(Millis(i64::MAX)),
            Err(error) => {
                tracing::error!(error = %error_chain(&error), "reading the next expiry failed");
                Millis::now() + Millis(retry_after_error.as_millis() as i64)
            }
        };
        let interval_ms = i64::try_from(config.sweep_interval.as_millis()).unwrap_or(i64::MAX);
        let floor = pass + Millis(pause_when_stuck.as_millis() as i64);
        wakeup.lower_to(next.max(floor).min(Millis::now() + Millis(interval_ms)));
        // Sleep until the deadline; a store lowering it wakes us to sleep less.
        loop {
            let wait = (wakeup.deadline() - Millis::now()).0.max(0) as u64;
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(wait)) => break,
                () = wakeup.notify.notified() => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}

/// Expires every hold due at `now`, batch after batch; returns how many.
pub async fn expire_all_due(
    store: &dyn HoldStore,
    now: Millis,
    batch_max: u32,
) -> Result<usize, crate::store::StoreError> {
    let mut total = 0;
    loop {
        let expired = store.expire_due(now, batch_max).await?;
        total += expired.len();
        if expired.len() < batch_max as usize {
            return Ok(total);
        }
    }
}
