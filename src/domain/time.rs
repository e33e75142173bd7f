//! Instants as milliseconds since the Unix epoch. Every timestamp is assigned by the server;
//! clients only ever send durations.

use std::ops::{Add, Sub};

/// Milliseconds since the Unix epoch (an instant), or a duration in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub i64);

impl Millis {
    pub const fn from_secs(secs: u32) -> Millis {
        Millis(secs as i64 * 1000)
    }

    /// The current wall-clock time. Only the edges of the program call this (request handlers,
    /// timers); the rules take `now` as a parameter.
    pub fn now() -> Millis {
        Millis(chrono::Utc::now().timestamp_millis())
    }

    pub fn to_chrono(self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_millis(self.0).unwrap_or_default()
    }
}

impl Add for Millis {
    type Output = Millis;
    fn add(self, rhs: Millis) -> Millis {
        Millis(self.0.saturating_add(rhs.0))
    }
}

impl Sub for Millis {
    type Output = Millis;
    fn sub(self, rhs: Millis) -> Millis {
        Millis(self.0.saturating_sub(rhs.0))
    }
}

/// Whole seconds from `now` until `expires_at`, rounded down, never negative.
pub fn seconds_left(now: Millis, expires_at: Millis) -> u64 {
    (expires_at.0 - now.0).max(0) as u64 / 1000
}
