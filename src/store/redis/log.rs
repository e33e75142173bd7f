//! Every instance follows the event streams of Redis (one entry per state change, written by the
//! scripts themselves) and feeds its own bus, so `holdCountdown`, `holdExpired` and
//! `availabilityChanged` behave on every instance as in the database flow, once per change.
//!
//! The reader remembers where it stopped in each stream: after a disconnect it resumes there
//! and misses nothing the stream still holds (each keeps its last ~10,000 entries).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use redis::aio::ConnectionLike;
use tokio_util::sync::CancellationToken;

use super::RedisStore;
use super::scripts::{array, hold_of, string, strings};
use crate::domain::{Availability, EventId, Millis, TicketTypeId};
use crate::events::Bus;
use crate::store::{HoldStore, StoreResult};

/// Entries read at once, and how long one read blocks.
const READ_COUNT: usize = 1000;
const READ_BLOCK: Duration = Duration::from_millis(500);

pub async fn run(store: Arc<RedisStore>, bus: Bus, shutdown: CancellationToken) {
    // Where each stream was when this instance started: the past is not replayed.
    let mut positions: HashMap<EventId, String> = HashMap::new();
    let mut started = false;
    loop {
        let step = follow(&store, &bus, &mut positions, &mut started);
        tokio::select! {
            result = step => {
                if let Err(error) = result {
                    tracing::warn!(error = %crate::error_chain(&error), "reading the event streams failed; reconnecting");
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                    () = shutdown.cancelled() => return,
                }
            }
            () = shutdown.cancelled() => return,
        }
    }
}

/// Follows the streams until a read fails. A single Redis is read with one blocking XREAD over
/// every stream, on a connection of its own; a cluster cannot read streams of several slots at
/// once, so each stream is read on its own, without blocking, and the reader naps when all were
/// quiet.
async fn follow(
    store: &RedisStore,
    bus: &Bus,
    positions: &mut HashMap<EventId, String>,
    started: &mut bool,
) -> StoreResult<()> {
    let timeout = READ_BLOCK + Duration::from_secs(2);
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(timeout));
    let mut blocking = if store.topology().is_cluster() {
        None
    } else {
        let node = store.topology().first_node();
        Some(
            node.get_multiplexed_async_connection_with_config(&config)
                .await?,
        )
    };
    loop {
        for event in store.known_events().await? {
            if let std::collections::hash_map::Entry::Vacant(e) = positions.entry(event) {
                let from = if *started {
                    "0-0".to_owned()
                } else {
                    last_id(store, &mut store.conn(), event).await?
                };
                e.insert(from);
            }
        }
        *started = true;
        let read = match &mut blocking {
            Some(conn) if !positions.is_empty() => {
                let events: Vec<EventId> = positions.keys().copied().collect();
                read(store, bus, conn, &events, positions, Some(READ_BLOCK)).await?
            }
            _ => {
                let mut read_any = 0;
                let events: Vec<EventId> = positions.keys().copied().collect();
                for event in events {
                    read_any +=
                        read(store, bus, &mut store.conn(), &[event], positions, None).await?;
                }
                read_any
            }
        };
        if read == 0 && (blocking.is_none() || positions.is_empty()) {
            tokio::time::sleep(POLL_PAUSE).await;
        }
    }
}

/// Pause between two rounds of non-blocking reads that found nothing.
const POLL_PAUSE: Duration = Duration::from_millis(20);

async fn last_id<C: ConnectionLike>(
    store: &RedisStore,
    conn: &mut C,
    event: EventId,
) -> StoreResult<String> {
    let last: Value = redis::cmd("XREVRANGE")
        .arg(store.keys().log(event))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(array(&last)
        .first()
        .and_then(|entry| array(entry).first())
        .and_then(string)
        .unwrap_or_else(|| "0-0".to_owned()))
}

/// One XREAD over the streams of `events`; publishes what it read and returns how many entries.
async fn read<C: ConnectionLike>(
    store: &RedisStore,
    bus: &Bus,
    conn: &mut C,
    events: &[EventId],
    positions: &mut HashMap<EventId, String>,
    block: Option<Duration>,
) -> StoreResult<usize> {
    let mut command = redis::cmd("XREAD");
    command.arg("COUNT").arg(READ_COUNT);
    if let Some(block) = block {
        command.arg("BLOCK").arg(block.as_millis() as u64);
    }
    command.arg("STREAMS");
    for event in events {
        command.arg(store.keys().log(*event));
    }
    for event in events {
        command.arg(&positions[event]);
    }
    let reply: Value = command.query_async(conn).await?;
    let mut count = 0;
    // The stock of each ticket type is published once per read, at its newest version: a burst
    // of a thousand expiries is one message to each subscriber, not a thousand.
    let mut stock: HashMap<TicketTypeId, Availability> = HashMap::new();
    for stream in array(&reply) {
        let parts = array(stream);
        let Some(key) = parts.first().and_then(string) else {
            continue;
        };
        let Some(event) = events.iter().copied().find(|e| store.keys().log(*e) == key) else {
            continue;
        };
        for entry in parts.get(1).map(array).unwrap_or_default() {
            let entry = array(entry);
            let Some(id) = entry.first().and_then(string) else {
                continue;
            };
            let fields = entry.get(1).map(strings).unwrap_or_default();
            publish(store, bus, event, &fields, &mut stock).await?;
            positions.insert(event, id);
            count += 1;
        }
    }
    for availability in stock.into_values() {
        bus.publish_availability(availability);
    }
    Ok(count)
}

/// Publishes the hold of one entry and keeps the stock it carries in `stock`, unless `stock`
/// has a newer version of it.
async fn publish(
    store: &RedisStore,
    bus: &Bus,
    event: EventId,
    fields: &[String],
    stock: &mut HashMap<TicketTypeId, Availability>,
) -> StoreResult<()> {
    let get = |name: &str| {
        fields
            .chunks(2)
            .find(|p| p[0] == name)
            .and_then(|p| p.get(1))
            .cloned()
    };
    if get("loaded").is_some() {
        // The event was (re)loaded from the database: announce its whole stock.
        for availability in store.event_availability(event, Millis::now()).await? {
            bus.publish_availability(availability);
        }
        return Ok(());
    }
    if let Ok((hold, _)) = hold_of(fields) {
        bus.publish_hold(hold);
    }
    for part in get("stock")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
    {
        let values: Vec<&str> = part.split(':').collect();
        let [id, capacity, sold, held, version] = values[..] else {
            continue;
        };
        let (Ok(ticket_type_id), Ok(capacity), Ok(sold), Ok(held), Ok(version)) = (
            id.parse::<TicketTypeId>(),
            capacity.parse::<i64>(),
            sold.parse::<i64>(),
            held.parse::<i64>(),
            version.parse::<i64>(),
        ) else {
            continue;
        };
        let availability = Availability {
            ticket_type_id,
            event_id: event,
            capacity: capacity.max(0) as u32,
            sold: sold.max(0) as u32,
            held: held.max(0) as u32,
            version,
        };
        match stock.get(&ticket_type_id) {
            Some(newer) if newer.version >= version => {}
            _ => {
                stock.insert(ticket_type_id, availability);
            }
        }
    }
    Ok(())
}
