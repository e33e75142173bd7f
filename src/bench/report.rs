//! What a bench run reports: per flow and per reference, the figures and the verdict (oversell,
//! undersell, unannounced expiries, failed requests), as a table for people or a JSON document
//! for machines.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::Args;
use super::load::LoadResult;
use super::reference::ReferenceResult;
use super::target::Usage;

#[derive(Serialize)]
pub struct Report {
    pub workload: Workload,
    pub flows: Vec<FlowReport>,
    pub references: Vec<ReferenceReport>,
}

#[derive(Serialize)]
pub struct Workload {
    pub buyers: u64,
    pub concurrency: usize,
    pub ticket_types: u32,
    pub capacity: u32,
    pub quantity: u32,
    /// `maxPerCustomer` of every ticket type, if any.
    pub max_per_customer: Option<u32>,
    pub checkout_share: f64,
    pub release_share: f64,
    pub ttl_secs: u32,
    pub idempotency_keys: bool,
    /// Hold attempts of the warm-up, before the measured rush.
    pub warmup: u64,
}

#[derive(Serialize, Clone, Copy, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Serialize)]
pub struct FlowReport {
    pub flow: String,
    /// Hold attempts answered per second during the rush (won or sold out).
    pub holds_per_sec: f64,
    pub checkouts_per_sec: f64,
    pub hold_latency_ms: Percentiles,
    pub attempts: u64,
    pub succeeded: u64,
    pub sold_out: u64,
    /// Holds the capacity allows: per ticket type, min(buyers, capacity / quantity).
    pub capacity_holds: u64,
    /// Winners whose stock came back (expired) before the rush ended, so others could win it.
    pub returned_in_rush: u64,
    pub checkouts: u64,
    pub releases: u64,
    pub expired_before_action: u64,
    pub expiry_expected: u64,
    pub expiry_lag_ms: Percentiles,
    pub unannounced: u64,
    pub availability_updates: u64,
    pub server_cpu_secs: Option<f64>,
    pub server_peak_rss_mb: Option<f64>,
    pub failures: Vec<String>,
    /// Holds the warm-up won (and released) before the rush.
    pub warmup_released: u64,
}

#[derive(Serialize)]
pub struct ReferenceReport {
    pub name: String,
    pub holds_per_sec: f64,
    pub succeeded: u64,
    pub failed_requests: u64,
    pub hold_latency_ms: Percentiles,
}

impl FlowReport {
    pub fn new(flow: &str, load: LoadResult, usage: Option<Usage>) -> FlowReport {
        let mut report = FlowReport {
            flow: flow.to_owned(),
            holds_per_sec: rate(load.attempts, load.rush_secs),
            checkouts_per_sec: rate(load.checkouts, load.actions_secs),
            hold_latency_ms: percentiles(&load.hold_latency_us, 1000.0),
            attempts: load.attempts,
            succeeded: load.winners.len() as u64,
            sold_out: load.sold_out,
            capacity_holds: 0,
            returned_in_rush: load.returned_in_rush.iter().sum(),
            warmup_released: load.warmup_released,
            checkouts: load.checkouts,
            releases: load.releases,
            expired_before_action: load.actions_refused,
            expiry_expected: load.expiry_expected,
            expiry_lag_ms: percentiles(&load.expiry_lag_ms, 1.0),
            unannounced: load.unannounced,
            availability_updates: load.availability_updates,
            server_cpu_secs: usage
                .zip(load.cpu_secs_at_start)
                .map(|(usage, start)| usage.cpu_secs - start),
            server_peak_rss_mb: usage.map(|u| u.peak_rss_bytes as f64 / (1024.0 * 1024.0)),
            failures: Vec::new(),
        };
        report.judge(&load);
        report
    }

    /// Fills `capacity_holds` and `failures`: the invariants the run must keep.
    fn judge(&mut self, load: &LoadResult) {
        let (capacity, quantity) = (load.capacity, load.quantity);
        for (index, &demand) in load.demand.iter().enumerate() {
            let allowed = u64::from(capacity / quantity);
            let floor = demand.min(allowed);
            let ceiling = demand.min(allowed + load.returned_in_rush[index]);
            let won = load
                .winners
                .iter()
                .filter(|w| w.type_index == index)
                .count() as u64;
            self.capacity_holds += floor;
            if won > ceiling {
                self.failures.push(format!(
                    "OVERSOLD ticket type {index}: {won} holds won, at most {ceiling} possible"
                ));
            } else if won < floor {
                self.failures.push(format!(
                    "UNDERSOLD ticket type {index}: {won} holds won, at least {floor} expected"
                ));
            }
        }
        if self.unannounced > 0 {
            self.failures.push(format!(
                "{} expired holds never announced within their expiresAt + 10 s",
                self.unannounced
            ));
        }
        if load.failures > 0 {
            let first = load.first_failure.clone().unwrap_or_default();
            self.failures
                .push(format!("{} requests failed; first: {first}", load.failures));
        }
        self.failures
            .extend(load.stock_drift.iter().map(|d| format!("STOCK DRIFT {d}")));
        if load.duplicate_expiries > 0 {
            let n = load.duplicate_expiries;
            self.failures
                .push(format!("{n} holds announced expired twice"));
        }
        for error in &load.subscription_errors {
            self.failures.push(format!("subscription: {error}"));
        }
    }
}

impl Report {
    pub fn new(
        args: &Args,
        flows: Vec<FlowReport>,
        references: Option<Vec<ReferenceResult>>,
    ) -> Report {
        let references = references
            .unwrap_or_default()
            .into_iter()
            .map(|r| ReferenceReport {
                name: r.name.to_owned(),
                holds_per_sec: rate(r.attempts, r.secs),
                succeeded: r.succeeded,
                failed_requests: r.failures,
                hold_latency_ms: percentiles(&r.latency_us, 1000.0),
            })
            .collect();
        let workload = Workload {
            buyers: args.buyers,
            concurrency: args.concurrency,
            ticket_types: args.ticket_types,
            capacity: args.capacity,
            quantity: args.quantity,
            max_per_customer: args.max_per_customer,
            checkout_share: args.checkout_share,
            release_share: args.release_share,
            ttl_secs: args.ttl_secs,
            idempotency_keys: !args.no_idempotency_keys,
            warmup: args.warmup,
        };
        Report {
            workload,
            flows,
            references,
        }
    }

    pub fn failed(&self) -> bool {
        self.flows.iter().any(|f| !f.failures.is_empty())
    }

    /// The table: one column per flow, one row per figure, then the references and verdicts.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, Vec<String>)> = Vec::new();
        let mut row = |label: &str, f: &dyn Fn(&FlowReport) -> String| {
            rows.push((label.to_owned(), self.flows.iter().map(f).collect()));
        };
        row("holds/s (attempts answered)", &|f| {
            format!("{:.0}", f.holds_per_sec)
        });
        row("checkouts/s", &|f| format!("{:.0}", f.checkouts_per_sec));
        row("hold p50 / p90 ms", &|f| {
            format!(
                "{:.1} / {:.1}",
                f.hold_latency_ms.p50, f.hold_latency_ms.p90
            )
        });
        row("hold p99 / max ms", &|f| {
            format!(
                "{:.1} / {:.1}",
                f.hold_latency_ms.p99, f.hold_latency_ms.max
            )
        });
        row("holds won / capacity", &|f| {
            format!("{} / {}", f.succeeded, f.capacity_holds)
        });
        row("  of which re-sold in rush", &|f| {
            f.returned_in_rush.to_string()
        });
        row("sold out", &|f| f.sold_out.to_string());
        row("checkouts / releases", &|f| {
            format!("{} / {}", f.checkouts, f.releases)
        });
        row("expired before checkout", &|f| {
            f.expired_before_action.to_string()
        });
        row("expiries expected", &|f| f.expiry_expected.to_string());
        row("expiry lag p50/p99/max ms", &|f| {
            let l = f.expiry_lag_ms;
            format!("{:.0} / {:.0} / {:.0}", l.p50, l.p99, l.max)
        });
        row("expiries unannounced", &|f| f.unannounced.to_string());
        row("availabilityChanged msgs", &|f| {
            f.availability_updates.to_string()
        });
        row("server CPU s", &|f| optional(f.server_cpu_secs, 2));
        row("server peak RSS MB", &|f| optional(f.server_peak_rss_mb, 1));
        for reference in &self.references {
            let label = format!("x {}", reference.name);
            row(&label, &|f| {
                format!("{:.2}x", f.holds_per_sec / reference.holds_per_sec)
            });
        }
        row("verdict", &|f| {
            if f.failures.is_empty() {
                "ok".into()
            } else {
                "FAILED".into()
            }
        });
        let header: Vec<String> = self.flows.iter().map(|f| f.flow.clone()).collect();
        let mut out = self.workload_line();
        out.push_str(&render(&header, &rows));
        self.append_references(&mut out);
        self.append_failures(&mut out);
        out
    }

    fn workload_line(&self) -> String {
        let w = &self.workload;
        format!(
            "\nflash sale: {} buyers, {} at once, {} ticket type(s) of {} tickets{}, {} per hold, \
             {:.0}% check out, {:.0}% release, TTL {} s, {}, after {} warm-up holds\n\n",
            w.buyers,
            w.concurrency,
            w.ticket_types,
            w.capacity,
            match w.max_per_customer {
                Some(max) => format!(" (at most {max} per customer)"),
                None => String::new(),
            },
            w.quantity,
            w.checkout_share * 100.0,
            w.release_share * 100.0,
            w.ttl_secs,
            if w.idempotency_keys {
                "an idempotency key per hold"
            } else {
                "no idempotency keys"
            },
            w.warmup
        )
    }

    fn append_references(&self, out: &mut String) {
        if self.references.is_empty() {
            return;
        }
        out.push_str(
            "\nreferences (same buyers and concurrency; the first two on one hot row of the same \
             capacity; the floor's \"won\" is every answer):\n",
        );
        for r in &self.references {
            let l = r.hold_latency_ms;
            let _ = writeln!(
                out,
                "  {:<18} {:>8.0} holds/s  p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms  \
                 won {}  failed {}",
                r.name, r.holds_per_sec, l.p50, l.p90, l.p99, l.max, r.succeeded, r.failed_requests
            );
        }
    }

    fn append_failures(&self, out: &mut String) {
        for flow in &self.flows {
            for failure in &flow.failures {
                let _ = writeln!(out, "FAILED [{}] {failure}", flow.flow);
            }
        }
    }
}

pub(super) fn render(header: &[String], rows: &[(String, Vec<String>)]) -> String {
    let label_width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            let cells = rows.iter().map(|(_, cells)| cells[c].len());
            cells.chain([header[c].len()]).max().unwrap_or(0)
        })
        .collect();
    let mut out = format!("{:<label_width$}", "");
    for (cell, width) in header.iter().zip(&widths) {
        let _ = write!(out, " | {cell:>width$}");
    }
    out.push('\n');
    out.push_str(&"-".repeat(out.len().saturating_sub(1)));
    out.push('\n');
    for (label, cells) in rows {
        let _ = write!(out, "{label:<label_width$}");
        for (cell, width) in cells.iter().zip(&widths) {
            let _ = write!(out, " | {cell:>width$}");
        }
        out.push('\n');
    }
    out
}

fn optional(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

fn rate(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// Percentiles of `histogram`, divided by `divisor` (1000 to turn microseconds into ms).
pub(super) fn percentiles(histogram: &Histogram<u64>, divisor: f64) -> Percentiles {
    if histogram.is_empty() {
        return Percentiles::default();
    }
    let at = |q: f64| histogram.value_at_quantile(q) as f64 / divisor;
    Percentiles {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        max: histogram.max() as f64 / divisor,
    }
}
