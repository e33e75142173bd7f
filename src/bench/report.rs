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

/// Several rounds of the same measurement, and their summary (`--rounds`).
#[derive(Serialize)]
pub struct Rounds<'a> {
    pub rounds: &'a [Report],
    pub summary: &'a Summary,
}

/// What several rounds measured, per flow (in the order of the first round).
#[derive(Serialize)]
pub struct Summary {
    pub rounds: usize,
    pub flows: Vec<FlowSummary>,
    /// The round (from 0) whose first flow's multiple of the first reference (or, without
    /// references, whose first flow's holds/s) is the median: the one to chart.
    pub median_round: usize,
}

#[derive(Serialize)]
pub struct FlowSummary {
    pub flow: String,
    pub holds_per_sec: Spread,
    pub checkouts_per_sec: Spread,
    pub hold_p99_ms: Spread,
    /// The flow's multiple of each reference, taken within each round.
    pub multiples: Vec<Multiple>,
}

#[derive(Serialize)]
pub struct Multiple {
    pub reference: String,
    pub times: Spread,
}

/// The median, lowest and highest of one figure over the rounds (all 0 for none).
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for no values. An even count's median is the mean of the middle two.
    pub fn of(mut values: Vec<f64>) -> Option<Spread> {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => values[n / 2],
            _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        };
        Some(Spread {
            median,
            min: values[0],
            max: values[n - 1],
        })
    }
}

impl Summary {
    pub fn new(rounds: &[Report]) -> Summary {
        let names: Vec<&str> = rounds
            .first()
            .map(|first| first.flows.iter().map(|f| f.flow.as_str()).collect())
            .unwrap_or_default();
        let flows = names
            .iter()
            .map(|name| flow_summary(rounds, name))
            .collect();
        Summary {
            rounds: rounds.len(),
            flows,
            median_round: median_round(rounds),
        }
    }

    /// The summary's table: `median [lowest - highest]` per flow and figure.
    pub fn table(&self) -> String {
        let cell = |spread: &Spread, decimals: usize, unit: &str| {
            format!(
                "{:.decimals$}{unit} [{:.decimals$} - {:.decimals$}]",
                spread.median, spread.min, spread.max
            )
        };
        let mut rows: Vec<(String, Vec<String>)> = vec![
            (
                "holds/s".into(),
                self.flows
                    .iter()
                    .map(|f| cell(&f.holds_per_sec, 0, ""))
                    .collect(),
            ),
            (
                "checkouts/s".into(),
                self.flows
                    .iter()
                    .map(|f| cell(&f.checkouts_per_sec, 0, ""))
                    .collect(),
            ),
            (
                "hold p99 ms".into(),
                self.flows
                    .iter()
                    .map(|f| cell(&f.hold_p99_ms, 1, ""))
                    .collect(),
            ),
        ];
        let references = self.flows.first().map_or(0, |f| f.multiples.len());
        for r in 0..references {
            let label = format!("x {}", self.flows[0].multiples[r].reference);
            let cells = self
                .flows
                .iter()
                .map(|f| cell(&f.multiples[r].times, 2, "x"));
            rows.push((label, cells.collect()));
        }
        let header: Vec<String> = self.flows.iter().map(|f| f.flow.clone()).collect();
        let mut out = format!(
            "\nsummary of {} rounds: median [lowest - highest]; the median round (by the first \
             flow's first multiple, the one --chart draws) is round {}\n\n",
            self.rounds,
            self.median_round + 1
        );
        out.push_str(&render(&header, &rows));
        out
    }
}

fn flow_summary(rounds: &[Report], name: &str) -> FlowSummary {
    let of_flow: Vec<(&Report, &FlowReport)> = rounds
        .iter()
        .filter_map(|round| Some((round, round.flows.iter().find(|f| f.flow == name)?)))
        .collect();
    let spread = |figure: &dyn Fn(&Report, &FlowReport) -> f64| {
        let values = of_flow.iter().map(|(round, flow)| figure(round, flow));
        Spread::of(values.collect()).unwrap_or_default()
    };
    let references: Vec<&str> = rounds
        .first()
        .map(|first| first.references.iter().map(|r| r.name.as_str()).collect())
        .unwrap_or_default();
    let multiples = references
        .iter()
        .map(|reference| Multiple {
            reference: (*reference).to_owned(),
            times: spread(&|round, flow| multiple(round, flow, reference)),
        })
        .collect();
    FlowSummary {
        flow: name.to_owned(),
        holds_per_sec: spread(&|_, flow| flow.holds_per_sec),
        checkouts_per_sec: spread(&|_, flow| flow.checkouts_per_sec),
        hold_p99_ms: spread(&|_, flow| flow.hold_latency_ms.p99),
        multiples,
    }
}

/// `flow`'s holds/s as a multiple of `reference`'s in the same round (0 without it).
fn multiple(round: &Report, flow: &FlowReport, reference: &str) -> f64 {
    let found = round.references.iter().find(|r| r.name == reference);
    match found {
        Some(r) if r.holds_per_sec > 0.0 => flow.holds_per_sec / r.holds_per_sec,
        _ => 0.0,
    }
}

/// The round whose first flow's multiple of the first reference (or holds/s) is the median (the
/// lower middle one of an even count).
fn median_round(rounds: &[Report]) -> usize {
    let key = |round: &Report| {
        let Some(flow) = round.flows.first() else {
            return 0.0;
        };
        match round.references.first() {
            Some(reference) => multiple(round, flow, &reference.name),
            None => flow.holds_per_sec,
        }
    };
    let mut order: Vec<usize> = (0..rounds.len()).collect();
    order.sort_by(|&a, &b| key(&rounds[a]).total_cmp(&key(&rounds[b])));
    order
        .get(rounds.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_is_the_median_and_the_extremes() {
        let spread = |values: &[f64]| Spread::of(values.to_vec());
        assert_eq!(spread(&[]), None);
        let one = Spread {
            median: 2.0,
            min: 2.0,
            max: 2.0,
        };
        assert_eq!(spread(&[2.0]), Some(one));
        let odd = Spread {
            median: 4.6,
            min: 4.4,
            max: 5.0,
        };
        assert_eq!(spread(&[5.0, 4.4, 4.6]), Some(odd));
        let even = Spread {
            median: 3.0,
            min: 1.0,
            max: 9.0,
        };
        assert_eq!(spread(&[9.0, 1.0, 4.0, 2.0]), Some(even));
    }
}
