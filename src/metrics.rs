//! Prometheus metrics, served at `/metrics` in the text format.
//!
//! Holds created, released and confirmed, sold-out and rate-limited refusals and request
//! latency are counted where this instance answered the request. Expiries (and their lag, from
//! `expires_at` to the stock being back on sale) are counted from the change bus: with the
//! database flow that is this instance's own expiries; with the Redis flow every instance
//! follows every change of the deployment, so aggregate `tickethold_holds_expired_total`
//! across instances with `max`, not `sum`.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::domain::{Hold, HoldStatus};

/// Panics of background tasks (see `crate::supervise`), by task. Process-wide, since the tasks
/// are not one server's; every server's registry serves it.
static TASK_PANICS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let opts = Opts::new(
        "task_panics_total",
        "Background tasks that panicked and were started again.",
    );
    IntCounterVec::new(opts, &["task"]).expect("a valid counter")
});

/// Shows the background task `task` at 0 panics (once it runs, so that every task has its
/// series before its first panic: dashboards list it, and alerts on `absent` work).
pub fn watch_task(task: &str) {
    TASK_PANICS.with_label_values(&[task]);
}

/// Counts a panic of the background task `task`.
pub fn count_task_panic(task: &str) {
    TASK_PANICS.with_label_values(&[task]).inc();
}

/// Batches of hold requests by how the hold writer decided them (see `store::db::batch`):
/// `read` (answered from a read, nothing to take), `at_once` (written in one statement),
/// `locked` (in a transaction under the ticket types' lock: SQLite, or on PostgreSQL after the
/// stock changed between the read and the write), `one_by_one` (after a batch failed).
/// Process-wide, like `TASK_PANICS`.
static HOLD_BATCHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let opts = Opts::new(
        "hold_batches_total",
        "Batches of hold requests of the database flow, by how they were decided.",
    );
    IntCounterVec::new(opts, &["how"]).expect("a valid counter")
});

/// Counts a batch of hold requests decided `how`.
pub fn count_hold_batch(how: &str) {
    HOLD_BATCHES.with_label_values(&[how]).inc();
}

/// The service's metrics, in a registry of their own (tests run several servers in one
/// process). Cheap to clone: one reference count (each metric is one of its own).
#[derive(Clone)]
pub struct Metrics(Arc<Registered>);

/// The metrics themselves, shared by every clone of `Metrics`.
pub struct Registered {
    registry: Registry,
    pub holds_created: IntCounter,
    pub holds_released: IntCounter,
    pub holds_expired: IntCounter,
    pub holds_confirmed: IntCounter,
    pub sold_out: IntCounter,
    pub rate_limited: IntCounterVec,
    pub expiry_lag: Histogram,
    pub subscriptions_active: IntGaugeVec,
    pub request_duration: Histogram,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("tickethold".to_owned()), None)
            .expect("a valid metrics prefix");
        let counter = |name: &str, help: &str| {
            let counter = IntCounter::new(name, help).expect("a valid counter");
            registry
                .register(Box::new(counter.clone()))
                .expect("a metric registered once");
            counter
        };
        let holds_created = counter("holds_created_total", "Holds created.");
        let holds_released = counter("holds_released_total", "Holds released by their buyer.");
        let holds_expired = counter(
            "holds_expired_total",
            "Holds expired (Redis flow: every instance counts the whole deployment's).",
        );
        let holds_confirmed = counter("holds_confirmed_total", "Holds checked out into orders.");
        let sold_out = counter("sold_out_total", "holdTickets refused with SOLD_OUT.");
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "rate_limited_total",
                "holdTickets refused with RATE_LIMITED.",
            ),
            &["scope"],
        )
        .expect("a valid counter");
        let expiry_lag = Histogram::with_opts(
            HistogramOpts::new(
                "expiry_lag_seconds",
                "From a hold's expires_at to its stock being back on sale.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("a valid histogram");
        let subscriptions_active = IntGaugeVec::new(
            Opts::new("subscriptions_active", "Open GraphQL subscriptions."),
            &["field"],
        )
        .expect("a valid gauge");
        let request_duration = Histogram::with_opts(
            HistogramOpts::new(
                "graphql_request_duration_seconds",
                "Time to answer a GraphQL query or mutation over HTTP.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .expect("a valid histogram");
        for collector in [
            Box::new(rate_limited.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(expiry_lag.clone()),
            Box::new(subscriptions_active.clone()),
            Box::new(request_duration.clone()),
            Box::new(TASK_PANICS.clone()),
            Box::new(HOLD_BATCHES.clone()),
        ] {
            registry
                .register(collector)
                .expect("a metric registered once");
        }
        Metrics(Arc::new(Registered {
            registry,
            holds_created,
            holds_released,
            holds_expired,
            holds_confirmed,
            sold_out,
            rate_limited,
            expiry_lag,
            subscriptions_active,
            request_duration,
        }))
    }

    /// A hold that just expired, as the bus carries it.
    pub fn observe_expired(&self, hold: &Hold) {
        if hold.status != HoldStatus::Expired {
            return;
        }
        self.holds_expired.inc();
        if let Some(ended_at) = hold.ended_at {
            let lag_ms = (ended_at - hold.expires_at).0.max(0);
            self.expiry_lag
                .observe(Duration::from_millis(lag_ms as u64).as_secs_f64());
        }
    }

    /// Every metric in Prometheus's text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(%error, "cannot encode the metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl std::ops::Deref for Metrics {
    type Target = Registered;

    fn deref(&self) -> &Registered {
        &self.0
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}
