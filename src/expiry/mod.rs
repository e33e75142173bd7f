//! What fires an expiry.
//!
//! In the database flow ([`timer`]) a single delayed task sleeps until the earliest
//! `expires_at` of an active hold (read from the `expires_at` index), expires every hold that is
//! due in batches, and sleeps again: no cron scan, no task per hold. New holds and extensions
//! that expire earlier than the current deadline wake it through [`Wakeup`]. In the Redis flow
//! the same timer sweeps every event's expiry index, and [`keyspace`] expires a hold the moment
//! Redis announces that its shadow key expired.

pub mod keyspace;
pub mod timer;

use std::sync::Mutex;

use tokio::sync::Notify;

use crate::domain::Millis;

/// The deadline of the expiry timer, which stores lower when they write an earlier
/// `expires_at`.
#[derive(Debug)]
pub struct Wakeup {
    deadline: Mutex<Millis>,
    notify: Notify,
}

impl Default for Wakeup {
    fn default() -> Wakeup {
        Wakeup {
            deadline: Mutex::new(Millis(i64::MAX)),
            notify: Notify::new(),
        }
    }
}

impl Wakeup {
    /// Makes sure the timer wakes up at `at` at the latest.
    pub fn schedule(&self, at: Millis) {
        let mut deadline = self.deadline.lock().unwrap_or_else(|e| e.into_inner());
        if at < *deadline {
            *deadline = at;
            self.notify.notify_one();
        }
    }

    /// Forgets the deadline before the timer looks up the next one, so that a hold written
    /// during the look-up lowers it again (see [`Wakeup::lower_to`]).
    fn forget(&self) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = Millis(i64::MAX);
    }

    /// Sets the deadline to `at` unless a store scheduled an earlier one meanwhile; returns
    /// the deadline in force.
    fn lower_to(&self, at: Millis) -> Millis {
        let mut deadline = self.deadline.lock().unwrap_or_else(|e| e.into_inner());
        *deadline = (*deadline).min(at);
        *deadline
    }

    fn deadline(&self) -> Millis {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }
}
