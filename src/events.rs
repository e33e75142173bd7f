//! The bus that subscriptions read: every committed change of a hold or of a ticket type's
//! stock, published by the store after its transaction commits.
//!
//! Topics are per hold (what `holdCountdown` reads), per event for its expired holds (what
//! `holdExpired` reads) and per event for the stock of its ticket types (what
//! `availabilityChanged` reads), so a subscriber only ever sees messages it wants: a flood of
//! new holds never crowds out an expiry. A topic exists while it has receivers; a
//! change nobody watches costs one map look-up.
//!
//! Delivery is best effort per receiver (a slow one can lag); readers that must never miss the
//! last value re-read the store when they lag (see `graphql::subscription`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::domain::{Availability, EventId, Hold, HoldId, HoldStatus};
use crate::metrics::Metrics;

/// How many changes of one hold a reader may fall behind. A hold changes a handful of times in
/// its life, and a countdown that lags re-reads the store; a broadcast channel allocates all its
/// slots up front, so 10,000 countdowns at the bus's capacity would take gigabytes.
const HOLD_TOPIC_CAPACITY: usize = 8;

/// One committed change.
#[derive(Clone, Debug)]
pub enum Change {
    /// A hold was created or changed: the hold as it is after the change.
    Hold(Arc<Hold>),
    /// The stock of a ticket type changed.
    Availability(Availability),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Every change of one hold.
    Hold(HoldId),
    /// The holds of an event that expire.
    Expired(EventId),
    /// The stock of the ticket types of an event.
    Stock(EventId),
}

/// The open topics, and the size at which the next subscription drops those nobody reads any
/// more (a topic is also dropped by the first send that finds no receiver, but a countdown's
/// topic gets no send after its last, nor does a subscription that failed after subscribing).
#[derive(Default)]
struct Topics {
    senders: HashMap<Topic, broadcast::Sender<Change>>,
    prune_at: usize,
}

/// Fewest topics before the bus looks for abandoned ones.
const PRUNE_AT_MIN: usize = 1024;

/// An in-process publish/subscribe bus, cheap to clone.
#[derive(Clone)]
pub struct Bus {
    topics: Arc<Mutex<Topics>>,
    capacity: usize,
    /// Counts the expiries that pass (see `metrics` for what that counts).
    metrics: Option<Metrics>,
}

impl Bus {
    /// `capacity` is how many changes a receiver may fall behind before it lags.
    pub fn new(capacity: usize) -> Bus {
        Bus {
            topics: Arc::default(),
            capacity: capacity.max(1),
            metrics: None,
        }
    }

    /// A bus that counts every expiry it carries in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Bus {
        self.metrics = Some(metrics);
        self
    }

    pub fn subscribe(&self, topic: Topic) -> broadcast::Receiver<Change> {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        if topics.senders.len() >= topics.prune_at.max(PRUNE_AT_MIN) {
            // Amortised: the map at least doubles between two passes.
            topics
                .senders
                .retain(|_, sender| sender.receiver_count() > 0);
            topics.prune_at = topics.senders.len() * 2;
        }
        let capacity = match topic {
            Topic::Hold(_) => HOLD_TOPIC_CAPACITY.min(self.capacity),
            Topic::Expired(_) | Topic::Stock(_) => self.capacity,
        };
        topics
            .senders
            .entry(topic)
            .or_insert_with(|| broadcast::channel(capacity).0)
            .subscribe()
    }

    pub fn publish_hold(&self, hold: Hold) {
        let hold = Arc::new(hold);
        self.send(Topic::Hold(hold.id), Change::Hold(hold.clone()));
        if hold.status == HoldStatus::Expired {
            if let Some(metrics) = &self.metrics {
                metrics.observe_expired(&hold);
            }
            self.send(Topic::Expired(hold.event_id), Change::Hold(hold));
        }
    }

    pub fn publish_availability(&self, availability: Availability) {
        self.send(
            Topic::Stock(availability.event_id),
            Change::Availability(availability),
        );
    }

    fn send(&self, topic: Topic, change: Change) {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = topics.senders.get(&topic) {
            // An error means no receiver is left: drop the topic.
            if sender.send(change).is_err() {
                topics.senders.remove(&topic);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_nobody_reads_any_more_are_dropped() {
        let bus = Bus::new(16);
        // Countdowns that ended, or subscriptions that failed after subscribing: no send comes.
        for _ in 0..PRUNE_AT_MIN {
            drop(bus.subscribe(Topic::Hold(HoldId(uuid::Uuid::new_v4()))));
        }
        let kept = bus.subscribe(Topic::Hold(HoldId(uuid::Uuid::new_v4())));
        let topics = bus.topics.lock().unwrap();
        assert_eq!(topics.senders.len(), 1, "only the topic still read is left");
        drop(topics);
        drop(kept);
    }
}
