//! The bus that subscriptions read: every committed change of a hold or of a ticket type's
//! stock, published by the store after its transaction commits.
//!
//! Topics are per hold (what `holdCountdown` reads) and per event (holds of the event and the
//! availability of its ticket types: what `holdExpired` and `availabilityChanged` read), so a
//! subscriber only ever sees messages it may want. A topic exists while it has receivers; a
//! change nobody watches costs one map look-up.
//!
//! Delivery is best effort per receiver (a slow one can lag); readers that must never miss the
//! last value re-read the store when they lag (see `graphql::subscription`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::domain::{Availability, EventId, Hold, HoldId};

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
    Hold(HoldId),
    Event(EventId),
}

/// An in-process publish/subscribe bus, cheap to clone.
#[derive(Clone)]
pub struct Bus {
    topics: Arc<Mutex<HashMap<Topic, broadcast::Sender<Change>>>>,
    capacity: usize,
}

impl Bus {
    /// `capacity` is how many changes a receiver may fall behind before it lags.
    pub fn new(capacity: usize) -> Bus {
        Bus {
            topics: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    pub fn subscribe(&self, topic: Topic) -> broadcast::Receiver<Change> {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        topics
            .entry(topic)
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .subscribe()
    }

    pub fn publish_hold(&self, hold: Hold) {
        let hold = Arc::new(hold);
        self.send(Topic::Hold(hold.id), Change::Hold(hold.clone()));
        self.send(Topic::Event(hold.event_id), Change::Hold(hold));
    }

    pub fn publish_availability(&self, availability: Availability) {
        self.send(
            Topic::Event(availability.event_id),
            Change::Availability(availability),
        );
    }

    fn send(&self, topic: Topic, change: Change) {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = topics.get(&topic) {
            // An error means no receiver is left: drop the topic.
            if sender.send(change).is_err() {
                topics.remove(&topic);
            }
        }
    }

    /// Topics with a live sender (for tests and metrics).
    pub fn topic_count(&self) -> usize {
        self.topics.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
