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
        let step = async {
            let mut conn = store
                .client()
                .get_multiplexed_async_connection_with_config(
                    &redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(Duration::from_secs(2)))
                        .set_response_timeout(Some(READ_BLOCK + Duration::from_secs(2))),
                )
                .await?;
            loop {
                let events = store.known_events().await?;
                for event in &events {
                    if !positions.contains_key(event) {
                        let from = if started {
                            "0-0".to_owned()
                        } else {
                            last_id(&store, &mut conn, *event).await?
                        };
                        positions.insert(*event, from);
                    }
                }
                started = true;
                if positions.is_empty() {
                    tokio::time::sleep(READ_BLOCK).await;
                    continue;
                }
                read_once(&store, &bus, &mut conn, &mut positions).await?;
            }
            #[allow(unreachable_code)]
            StoreResult::Ok(())
        };
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

async fn last_id(
    store: &RedisStore,
    conn: &mut redis::aio::MultiplexedConnection,
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

/// One blocking XREAD over every stream; publishes what it read.
async fn read_once(
    store: &RedisStore,
    bus: &Bus,
    conn: &mut redis::aio::MultiplexedConnection,
    positions: &mut HashMap<EventId, String>,
) -> StoreResult<()> {
    let events: Vec<EventId> = positions.keys().copied().collect();
    let mut command = redis::cmd("XREAD");
    command
        .arg("COUNT")
        .arg(READ_COUNT)
        .arg("BLOCK")
        .arg(READ_BLOCK.as_millis() as u64)
        .arg("STREAMS");
    for event in &events {
        command.arg(store.keys().log(*event));
    }
    for event in &events {
        command.arg(&positions[event]);
    }
    let reply: Value = command.query_async(conn).await?;
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
            publish(store, bus, event, &fields).await?;
            positions.insert(event, id);
        }
    }
    Ok(())
}

async fn publish(
    store: &RedisStore,
    bus: &Bus,
    event: EventId,
    fields: &[String],
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
        bus.publish_availability(Availability {
            ticket_type_id,
            event_id: event,
            capacity: capacity.max(0) as u32,
            sold: sold.max(0) as u32,
            held: held.max(0) as u32,
            version,
        });
    }
    Ok(())
}
