//! The subscription root: a live countdown of one hold, the holds of an event as they expire,
//! and the stock of an event's ticket types as it changes. All three read the [`Bus`]; they
//! subscribe before they read the store, so no change falls between the two, and they end at
//! shutdown so that connections can close.
//!
//! [`Bus`]: crate::events::Bus

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::{Context, ID, Subscription};
use futures::Stream;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::caller::{self, Access};
use super::error::{ApiError, Denial};
use super::types::{Availability, HoldCountdown, HoldExpired};
use super::{Services, parse_id};
use crate::domain::{EventId, HoldId, HoldStatus, Millis, Rejection, TicketTypeId};
use crate::events::{Change, Topic};

/// How long a countdown waits, past `expiresAt`, for the expiry to be announced before it
/// reads the store itself (which writes the expiry if nobody has).
const EXPIRY_GRACE: Duration = Duration::from_millis(1000);

pub struct SubscriptionRoot;

#[Subscription]
impl SubscriptionRoot {
    /// The hold now, then once a second (each time `secondsLeft` drops), and a last event with
    /// the terminal status (EXPIRED, RELEASED or CONFIRMED), after which the stream completes.
    /// An extension is pushed at once.
    async fn hold_countdown(
        &self,
        ctx: &Context<'_>,
        hold_id: ID,
    ) -> async_graphql::Result<impl Stream<Item = HoldCountdown> + use<>> {
        let services = ctx.data_unchecked::<Services>().clone();
        let id: HoldId = parse_id(&hold_id)?;
        caller::require_token(ctx)?; // nothing is subscribed to before a token is shown
        let slot = Slot::take(ctx, "holdCountdown")?;
        let mut changes = services.bus.subscribe(Topic::Hold(id));
        let mut hold = caller::hold_for(ctx, id, Access::Read).await?;
        Ok(async_stream::stream! {
            let _slot = slot;
            loop {
                let now = Millis::now();
                if hold.status.is_terminal() {
                    yield HoldCountdown::of(&hold, now);
                    break;
                }
                let overdue = now >= hold.expires_at;
                if !overdue {
                    yield HoldCountdown::of(&hold, now);
                }
                // Sleep until `secondsLeft` drops (1 ms past the whole second), or past the
                // expiry until the grace runs out; a change of the hold wakes us at once.
                let wait = if overdue {
                    EXPIRY_GRACE
                } else {
                    Duration::from_millis(((hold.expires_at - now).0 % 1000) as u64 + 1)
                };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {
                        if overdue {
                            match services.store.get_hold(id, Millis::now()).await {
                                Ok(Some(fresh)) => hold = fresh,
                                Ok(None) => break,
                                Err(error) => {
                                    tracing::warn!(error = %crate::error_chain(&error), hold_id = %id, "countdown cannot read its hold");
                                }
                            }
                        }
                    }
                    change = changes.recv() => match change {
                        Ok(Change::Hold(changed)) if changed.id == id => hold = (*changed).clone(),
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => {
                            if let Ok(Some(fresh)) = services.store.get_hold(id, Millis::now()).await {
                                hold = fresh;
                            }
                        }
                        Err(RecvError::Closed) => break,
                    },
                    () = services.shutdown.cancelled() => break,
                }
            }
        })
    }

    /// Every hold of the event that expires, once, when its stock is back on sale: a buyer's
    /// own holds only, every hold for an admin or a service.
    async fn hold_expired(
        &self,
        ctx: &Context<'_>,
        event_id: ID,
    ) -> async_graphql::Result<impl Stream<Item = HoldExpired> + use<>> {
        let services = ctx.data_unchecked::<Services>().clone();
        let id: EventId = parse_id(&event_id)?;
        let only = caller::only_own(ctx)?;
        let slot = Slot::take(ctx, "holdExpired")?;
        let mut changes = subscribe_event(&services, id, Topic::Expired(id)).await?;
        Ok(async_stream::stream! {
            let _slot = slot;
            loop {
                tokio::select! {
                    change = changes.recv() => match change {
                        Ok(Change::Hold(hold)) if hold.status == HoldStatus::Expired
                            && only.as_deref().is_none_or(|customer| hold.customer_id.as_str() == customer) => {
                            yield HoldExpired::of(&hold);
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(missed)) => {
                            tracing::warn!(event_id = %id, missed, "holdExpired subscriber lagged");
                        }
                        Err(RecvError::Closed) => break,
                    },
                    () = services.shutdown.cancelled() => break,
                }
            }
        })
    }

    /// The stock of each ticket type of the event: every ticket type at once, then each one
    /// after it changes. Bursts may be coalesced; the latest value always arrives.
    async fn availability_changed(
        &self,
        ctx: &Context<'_>,
        event_id: ID,
    ) -> async_graphql::Result<impl Stream<Item = Availability> + use<>> {
        let services = ctx.data_unchecked::<Services>().clone();
        let id: EventId = parse_id(&event_id)?;
        let slot = Slot::take(ctx, "availabilityChanged")?;
        let mut changes = subscribe_event(&services, id, Topic::Stock(id)).await?;
        let current = services.store.event_availability(id, Millis::now()).await;
        let current = current.map_err(ApiError::from)?;
        Ok(async_stream::stream! {
            let _slot = slot;
            // The newest version sent per ticket type: older snapshots arriving late are dropped.
            let mut sent: HashMap<TicketTypeId, i64> = HashMap::new();
            for availability in current {
                sent.insert(availability.ticket_type_id, availability.version);
                yield availability.into();
            }
            loop {
                tokio::select! {
                    change = changes.recv() => match change {
                        Ok(Change::Availability(availability)) => {
                            let last = sent.entry(availability.ticket_type_id).or_insert(-1);
                            if availability.version > *last {
                                *last = availability.version;
                                yield availability.into();
                            }
                        }
                        Ok(Change::Hold(_)) => {}
                        Err(RecvError::Lagged(_)) => {
                            // Fell behind: the store has the latest of everything missed.
                            let Ok(fresh) = services.store.event_availability(id, Millis::now()).await else {
                                continue;
                            };
                            for availability in fresh {
                                let last = sent.entry(availability.ticket_type_id).or_insert(-1);
                                if availability.version >= *last {
                                    *last = availability.version;
                                    yield availability.into();
                                }
                            }
                        }
                        Err(RecvError::Closed) => break,
                    },
                    () = services.shutdown.cancelled() => break,
                }
            }
        })
    }
}

/// The subscriptions a WebSocket connection may still open: `--subscriptions-per-connection-max`
/// permits, put in the connection's data at `connection_init`.
#[derive(Clone)]
pub struct SubscriptionSlots {
    pub permits: Arc<Semaphore>,
    pub max: usize,
}

/// One open subscription: holds a permit of its connection and counts in the gauge of its
/// field until the stream is dropped.
struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
    gauge: IntGauge,
}

impl Slot {
    fn take(ctx: &Context<'_>, field: &str) -> Result<Slot, ApiError> {
        let services = ctx.data_unchecked::<Services>();
        let permit = match ctx.data_opt::<SubscriptionSlots>() {
            Some(slots) => Some(
                slots
                    .permits
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| Denial::TooManySubscriptions { max: slots.max })?,
            ),
            None => None,
        };
        let gauge = services
            .metrics
            .subscriptions_active
            .with_label_values(&[field]);
        gauge.inc();
        Ok(Slot {
            _permit: permit,
            gauge,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Subscribes to a topic of an event, first, then checks that the event exists (`NOT_FOUND`).
async fn subscribe_event(
    services: &Services,
    id: EventId,
    topic: Topic,
) -> Result<broadcast::Receiver<Change>, ApiError> {
    let changes = services.bus.subscribe(topic);
    match services.store.event(id).await? {
        Some(_) => Ok(changes),
        None => Err(Rejection::NotFound { what: "event" }.into()),
    }
}
