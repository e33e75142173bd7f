//! Expiry pushed by Redis: the service subscribes to the `expired` keyspace events, and the
//! expiry of a hold's shadow key (`<ns>:{<event>}:ttl:<hold>`) expires the due holds of its event
//! (every notification already waiting is taken first, so a burst of 10,000 expiries is a few
//! sweep scripts, not 10,000 scripts). The hold's data lives in another key, still readable
//! when the notification arrives.
//!
//! Notifications are fire-and-forget: they are lost while the subscriber reconnects and can come
//! late (Redis expires keys lazily). So the subscription reconnects by itself and sweeps every
//! event after each (re)connection, and the timer's regular sweep catches whatever is left; with
//! notifications off entirely, holds still expire on time through the timer and the sweep.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt, stream};
use tokio_util::sync::CancellationToken;

use crate::domain::{EventId, Millis};
use crate::store::redis::RedisStore;

/// The notification classes tickethold needs: `E` (keyevent) and `x` (expired).
const NEEDED: [char; 2] = ['E', 'x'];

/// Runs until `shutdown` is cancelled. With `configure`, sets `notify-keyspace-events` when it
/// lacks what is needed (managed Redis services forbid CONFIG: leave it off there).
pub async fn run(
    store: Arc<RedisStore>,
    configure: bool,
    sweep_batch_max: u32,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let listened = listen(&store, configure, sweep_batch_max, &shutdown).await;
        if shutdown.is_cancelled() {
            return;
        }
        match listened {
            Ok(()) => {
                tracing::warn!("the keyspace subscription was closed; reconnecting");
                backoff = Duration::from_millis(100);
            }
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "keyspace subscription failed; reconnecting");
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// One subscription (to every primary of a cluster: each node announces only its own keys),
/// from connecting to the end of any of its connections.
async fn listen(
    store: &RedisStore,
    configure: bool,
    sweep_batch_max: u32,
    shutdown: &CancellationToken,
) -> Result<(), crate::store::StoreError> {
    let primaries = store.topology().primaries(&mut store.conn()).await?;
    let mut streams = Vec::with_capacity(primaries.len());
    for primary in &primaries {
        check_settings(primary, configure).await;
        let mut pubsub = primary.get_async_pubsub().await?;
        pubsub.psubscribe("__keyevent@*__:expired").await?;
        // A `None` after the last message says that this node's connection ended.
        streams.push(
            pubsub
                .into_on_message()
                .map(Some)
                .chain(stream::once(async { None }))
                .boxed(),
        );
    }
    // Whatever expired while nobody listened (should this fail, the timer's sweep catches up).
    match crate::expiry::timer::expire_all_due(store, Millis::now(), sweep_batch_max).await {
        Ok(0) => {}
        Ok(caught_up) => tracing::info!(caught_up, "expired holds whose notifications were missed"),
        Err(error) => {
            tracing::warn!(error = %crate::error_chain(&error), "catching up on missed expiries failed");
        }
    }
    let mut messages = stream::select_all(streams);
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(Some(message)) = message else { return Ok(()) };
                // Expiries come in bursts (a flash sale's holds run out together): take every
                // notification already waiting, then expire each event's due holds in one
                // script rather than one script per hold.
                let mut events = HashSet::new();
                events.extend(notified_event(store, &message));
                for _ in 0..NOTIFICATIONS_PER_ROUND_MAX {
                    match messages.next().now_or_never() {
                        Some(Some(Some(message))) => events.extend(notified_event(store, &message)),
                        Some(Some(None) | None) => return Ok(()),
                        None => break,
                    }
                }
                for event in events {
                    if let Err(error) = store.expire_event_due(event, Millis::now(), sweep_batch_max).await {
                        tracing::warn!(error = %crate::error_chain(&error), event_id = %event, "expiring notified holds failed; the sweep will");
                    }
                }
            }
            () = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Notifications taken at once before expiring what they name.
const NOTIFICATIONS_PER_ROUND_MAX: usize = 10_000;

/// The event of a hold whose shadow key expired, if the message is about one of ours.
fn notified_event(store: &RedisStore, message: &redis::Msg) -> Option<EventId> {
    let key = message.get_payload::<String>().ok()?;
    store.keys().parse_shadow(&key).map(|(event, _)| event)
}

/// Reads `notify-keyspace-events` and says clearly when expiry notifications are off, and warns
/// when Redis may evict keys (an evicted key would corrupt the counters silently).
async fn check_settings(node: &redis::Client, configure: bool) {
    let Ok(mut conn) = node.get_multiplexed_async_connection().await else {
        return;
    };
    let policy: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(&mut conn)
        .await;
    if let Some(policy) = policy.ok().and_then(|reply| reply.get(1).cloned())
        && policy != "noeviction"
    {
        tracing::warn!(policy = %policy, "Redis may evict keys (maxmemory-policy is not \
                noeviction): an evicted hold or counter corrupts the stock; set noeviction");
    }
    let current: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(&mut conn)
        .await;
    let flags = match current {
        Ok(reply) => reply.get(1).cloned().unwrap_or_default(),
        Err(error) => {
            tracing::info!(error = %error, "cannot read notify-keyspace-events (CONFIG is not allowed?); \
                if expiry notifications are off, holds still expire through the sweep");
            return;
        }
    };
    let enabled = |flag: char| flags.contains(flag) || (flag == 'x' && flags.contains('A'));
    if NEEDED.iter().all(|flag| enabled(*flag)) {
        return;
    }
    if configure {
        let mut wanted = flags.clone();
        wanted.extend(NEEDED.iter().filter(|flag| !enabled(**flag)));
        let set: Result<(), _> = redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg(&wanted)
            .query_async(&mut conn)
            .await;
        match set {
            Ok(()) => tracing::info!(flags = %wanted, "set notify-keyspace-events"),
            Err(error) => tracing::warn!(error = %error, "cannot set notify-keyspace-events"),
        }
    } else {
        tracing::warn!(flags = %flags, "Redis keyspace notifications for expired keys are OFF \
            (notify-keyspace-events lacks Ex): holds expire through the timer and the sweep only; \
            set it with `CONFIG SET notify-keyspace-events Ex` or pass --redis-configure-keyspace-events");
    }
}
