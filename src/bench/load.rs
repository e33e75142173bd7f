//! The flash sale itself, in three phases against one server: the rush (every buyer tries one
//! hold at once, `--concurrency` in flight), the winners' choices (check out, release, or
//! abandon), then the wait for every abandoned hold's `holdExpired`. Measures throughput and
//! latency, and checks the stock: the winners must match the capacity exactly.

use anyhow::Context as _;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use super::Args;
use super::api::{Api, Outcome, now_ms, parse_time_ms};
use super::target::Server;
use super::watch::Watch;

/// How long after its `expiresAt` an abandoned hold may take to be announced.
const ANNOUNCE_GRACE_MS: i64 = 10_000;

/// A hold the rush won.
#[derive(Clone, Debug)]
pub struct Won {
    pub id: String,
    /// The buyer's `Bearer` token, which checks out or releases the hold.
    pub buyer: String,
    pub type_index: usize,
    pub expires_at_ms: i64,
}

/// Everything one flow's run measured.
pub struct LoadResult {
    pub attempts: u64,
    pub sold_out: u64,
    pub winners: Vec<Won>,
    pub capacity: u32,
    pub quantity: u32,
    pub failures: u64,
    pub first_failure: Option<String>,
    pub rush_secs: f64,
    /// holdTickets latency, in microseconds.
    pub hold_latency_us: Histogram<u64>,
    /// Per ticket type: buyers who tried it.
    pub demand: Vec<u64>,
    /// Per ticket type: winners whose stock was back on sale before the rush ended.
    pub returned_in_rush: Vec<u64>,
    pub checkouts: u64,
    pub checkouts_per_type: Vec<u64>,
    pub releases: u64,
    pub actions_refused: u64,
    pub actions_secs: f64,
    /// Holds that should be announced as expired (winners neither checked out nor released).
    pub expiry_expected: u64,
    /// From `expiresAt` to the arrival of `holdExpired`, in milliseconds.
    pub expiry_lag_ms: Histogram<u64>,
    pub unannounced: u64,
    pub duplicate_expiries: u64,
    pub availability_updates: u64,
    pub subscription_errors: Vec<String>,
    /// Stock left wrong at the end (held not 0, or sold not the checkouts).
    pub stock_drift: Vec<String>,
    pub cpu_secs_at_start: Option<f64>,
    /// Holds the warm-up won, each released before the rush.
    pub warmup_released: u64,
}

/// Runs the flash sale against the server at `url`.
pub async fn run(url: &str, args: &Args, server: Option<&Server>) -> anyhow::Result<LoadResult> {
    let secret = match server {
        Some(server) => server.secret.clone(),
        None => args.jwt_secret.as_ref().map(|s| s.0.clone()).context(
            "--url needs --jwt-secret (the server's TICKETHOLD_JWT_SECRET) to sign the buyers' tokens",
        )?,
    };
    let api = Api::new(url, args.concurrency, &secret)?;
    let offset_ms = api.clock_offset_ms().await?;
    let (event_id, type_ids) = api
        .setup(args.ticket_types, args.capacity, args.max_per_customer)
        .await?;
    let warmup_released = match args.warm_up() {
        Some(warm) => warm_up(&api, &warm).await?,
        None => 0,
    };
    let watch = Watch::open(url, &event_id, api.admin()).await?;
    let cpu_secs_at_start = server.and_then(|s| s.usage()).map(|u| u.cpu_secs);
    let rush = rush(&api, args, &event_id, &type_ids, Buyers::Rush).await;
    let rush_end_ms = now_ms() + offset_ms;
    let actions = act(&api, args, &rush.winners).await;
    let mut result = rush.into_result(args, actions, cpu_secs_at_start);
    result.warmup_released = warmup_released;
    await_expiries(&watch, &mut result, offset_ms, rush_end_ms).await;
    watch.close().await;
    for (index, type_id) in type_ids.iter().enumerate() {
        check_stock(&api, args, &mut result, index, type_id).await?;
    }
    Ok(result)
}

/// The warm-up's rush, on an event of its own, then a release of every hold it won (so that
/// none expires during the measured rush); the number released.
async fn warm_up(api: &Api, warm: &Args) -> anyhow::Result<u64> {
    let (event_id, type_ids) = api
        .setup(warm.ticket_types, warm.capacity, warm.max_per_customer)
        .await?;
    let rush = rush(api, warm, &event_id, &type_ids, Buyers::WarmUp).await;
    if let Some(failure) = rush.first_failure {
        anyhow::bail!("the warm-up failed: {failure}");
    }
    let actions = act(api, warm, &rush.winners).await;
    if let Some(failure) = actions.first_failure {
        anyhow::bail!("a release of the warm-up failed: {failure}");
    }
    Ok(actions.released.len() as u64)
}

/// Whose rush: the buyers' names (each a customer of its own) and the progress bar's label.
#[derive(Clone, Copy)]
enum Buyers {
    WarmUp,
    Rush,
}

impl Buyers {
    fn name(self, buyer: u64) -> String {
        match self {
            Buyers::WarmUp => format!("warm-up-{buyer}"),
            Buyers::Rush => format!("buyer-{buyer}"),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Buyers::WarmUp => "warm-up holds",
            Buyers::Rush => "holds",
        }
    }
}

/// What the rush collected.
struct Rush {
    attempts: u64,
    sold_out: u64,
    winners: Vec<Won>,
    failures: u64,
    first_failure: Option<String>,
    secs: f64,
    latency_us: Histogram<u64>,
    demand: Vec<u64>,
}

/// What the winners did: the ids checked out and released, and refusals.
struct Actions {
    checked_out: Vec<String>,
    released: Vec<String>,
    refused: u64,
    failures: u64,
    first_failure: Option<String>,
    secs: f64,
}

/// One worker's tally during the rush.
#[derive(Default)]
struct Tally {
    attempts: u64,
    sold_out: u64,
    winners: Vec<Won>,
    failures: u64,
    first_failure: Option<String>,
    latency_us: Option<Histogram<u64>>,
}

async fn rush(api: &Api, args: &Args, event_id: &str, type_ids: &[String], buyers: Buyers) -> Rush {
    let progress = progress_bar(args.buyers, buyers.label());
    let next = Arc::new(AtomicU64::new(0));
    let type_ids = Arc::new(type_ids.to_vec());
    let tokens = api.buyers((0..args.buyers).map(|buyer| buyers.name(buyer)));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (api, next, type_ids, tokens, progress) = (
            api.clone(),
            next.clone(),
            type_ids.clone(),
            tokens.clone(),
            progress.clone(),
        );
        let (event_id, args) = (event_id.to_owned(), args.clone());
        let shared = Shared {
            started,
            api,
            next,
            type_ids,
            tokens,
            progress,
            event_id,
            args,
        };
        workers.push(tokio::spawn(rush_worker(shared)));
    }
    let mut total = Rush {
        attempts: 0,
        sold_out: 0,
        winners: Vec::new(),
        failures: 0,
        first_failure: None,
        secs: 0.0,
        latency_us: new_histogram(),
        demand: demand(args),
    };
    for worker in workers {
        match worker.await {
            Ok(tally) => total.add(tally),
            Err(error) => fail(
                &mut total.failures,
                &mut total.first_failure,
                format!("worker: {error}"),
            ),
        }
    }
    total.secs = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    total
}

/// The TTL of the next hold: `--ttl-secs`, or with `--expire-together` what is left of it since
/// the rush began, rounded up, so that every hold expires in the same second.
fn ttl_secs(s: &Shared) -> u32 {
    if !s.args.expire_together {
        return s.args.ttl_secs;
    }
    let elapsed_ms = s.started.elapsed().as_millis() as u64;
    let left_ms = (u64::from(s.args.ttl_secs) * 1000).saturating_sub(elapsed_ms);
    left_ms.div_ceil(1000).max(1) as u32
}

/// What every rush worker shares.
struct Shared {
    api: Api,
    /// When the rush began: with `--expire-together`, every hold expires in the second that
    /// starts `--ttl-secs` after it.
    started: Instant,
    next: Arc<AtomicU64>,
    type_ids: Arc<Vec<String>>,
    /// Each buyer's `Bearer <token>`, by buyer number.
    tokens: Arc<Vec<String>>,
    progress: ProgressBar,
    event_id: String,
    args: Args,
}

/// One buyer after another until every buyer has tried once.
async fn rush_worker(s: Shared) -> Tally {
    let mut tally = Tally {
        latency_us: Some(new_histogram()),
        ..Tally::default()
    };
    loop {
        let buyer = s.next.fetch_add(1, Ordering::Relaxed);
        if buyer >= s.args.buyers {
            return tally;
        }
        let type_index = (buyer % s.type_ids.len() as u64) as usize;
        let token = s.tokens[buyer as usize].clone();
        let sent = Instant::now();
        let outcome = s
            .api
            .hold(
                &token,
                &s.event_id,
                &s.type_ids[type_index],
                s.args.quantity,
                ttl_secs(&s),
                !s.args.no_idempotency_keys,
            )
            .await;
        record_latency(tally.latency_us.as_mut(), sent.elapsed());
        tally.attempts += 1;
        match outcome {
            Outcome::Done(hold) => match won(&hold, type_index, token) {
                Some(won) => tally.winners.push(won),
                None => fail(
                    &mut tally.failures,
                    &mut tally.first_failure,
                    format!("bad hold {hold}"),
                ),
            },
            Outcome::Rejected(code) if code == "SOLD_OUT" => tally.sold_out += 1,
            Outcome::Rejected(code) => fail(&mut tally.failures, &mut tally.first_failure, code),
            Outcome::Failed(error) => fail(&mut tally.failures, &mut tally.first_failure, error),
        }
        s.progress.inc(1);
    }
}

impl Rush {
    fn add(&mut self, tally: Tally) {
        self.attempts += tally.attempts;
        self.sold_out += tally.sold_out;
        self.winners.extend(tally.winners);
        self.failures += tally.failures;
        if self.first_failure.is_none() {
            self.first_failure = tally.first_failure;
        }
        if let Some(latency) = tally.latency_us {
            self.latency_us.add(latency).ok();
        }
    }

    fn into_result(self, args: &Args, actions: Actions, cpu: Option<f64>) -> LoadResult {
        let types = args.ticket_types as usize;
        let done = actions.checked_out.len() + actions.released.len();
        let type_of: HashMap<&str, usize> = self
            .winners
            .iter()
            .map(|won| (won.id.as_str(), won.type_index))
            .collect();
        let mut checkouts_per_type = vec![0; types];
        for id in &actions.checked_out {
            if let Some(&index) = type_of.get(id.as_str()) {
                checkouts_per_type[index] += 1;
            }
        }
        LoadResult {
            attempts: self.attempts,
            sold_out: self.sold_out,
            expiry_expected: (self.winners.len() - done) as u64,
            winners: self.winners,
            capacity: args.capacity,
            quantity: args.quantity,
            failures: self.failures + actions.failures,
            first_failure: self.first_failure.or(actions.first_failure),
            rush_secs: self.secs,
            hold_latency_us: self.latency_us,
            demand: self.demand,
            returned_in_rush: vec![0; types],
            checkouts: actions.checked_out.len() as u64,
            checkouts_per_type,
            releases: actions.released.len() as u64,
            actions_refused: actions.refused,
            actions_secs: actions.secs,
            expiry_lag_ms: new_histogram(),
            unannounced: 0,
            duplicate_expiries: 0,
            availability_updates: 0,
            subscription_errors: Vec::new(),
            stock_drift: Vec::new(),
            cpu_secs_at_start: cpu,
            warmup_released: 0,
        }
    }
}

/// Buyers per ticket type (round-robin).
fn demand(args: &Args) -> Vec<u64> {
    let types = u64::from(args.ticket_types);
    (0..types)
        .map(|t| args.buyers / types + u64::from(t < args.buyers % types))
        .collect()
}

fn won(hold: &serde_json::Value, type_index: usize, buyer: String) -> Option<Won> {
    Some(Won {
        id: hold["id"].as_str()?.to_owned(),
        buyer,
        type_index,
        expires_at_ms: parse_time_ms(&hold["expiresAt"])?,
    })
}

/// What winner `k` does: the shares are met within a few holds, interleaved.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Checkout,
    Release,
    Abandon,
}

fn fate(k: usize, args: &Args) -> Fate {
    // The golden-ratio sequence spreads the fates evenly over the winners, in any prefix.
    let x = (k as f64 * 0.618_033_988_749_895).fract();
    if x < args.checkout_share {
        Fate::Checkout
    } else if x < args.checkout_share + args.release_share {
        Fate::Release
    } else {
        Fate::Abandon
    }
}

async fn act(api: &Api, args: &Args, winners: &[Won]) -> Actions {
    let progress = progress_bar(winners.len() as u64, "checkouts and releases");
    let jobs: Vec<(&Won, Fate)> = winners
        .iter()
        .enumerate()
        .map(|(k, won)| (won, fate(k, args)))
        .filter(|(_, fate)| *fate != Fate::Abandon)
        .collect();
    progress.inc((winners.len() - jobs.len()) as u64);
    let started = Instant::now();
    let outcomes: Vec<(String, Fate, Outcome)> =
        futures::StreamExt::collect(futures::StreamExt::buffer_unordered(
            futures::stream::iter(jobs.into_iter().map(|(won, fate)| {
                let (api, progress) = (api.clone(), progress.clone());
                async move {
                    let outcome = match fate {
                        Fate::Checkout => api.checkout(&won.buyer, &won.id).await,
                        _ => api.release(&won.buyer, &won.id).await,
                    };
                    progress.inc(1);
                    (won.id.clone(), fate, outcome)
                }
            })),
            args.concurrency,
        ))
        .await;
    let mut actions = Actions {
        checked_out: Vec::new(),
        released: Vec::new(),
        refused: 0,
        failures: 0,
        first_failure: None,
        secs: started.elapsed().as_secs_f64(),
    };
    for (id, fate, outcome) in outcomes {
        match (outcome, fate) {
            (Outcome::Done(_), Fate::Checkout) => actions.checked_out.push(id),
            (Outcome::Done(_), _) => actions.released.push(id),
            // A hold that ran out before its buyer came back: it must be announced expired.
            (Outcome::Rejected(code), _) if code == "HOLD_EXPIRED" => actions.refused += 1,
            (Outcome::Rejected(code) | Outcome::Failed(code), _) => {
                fail(&mut actions.failures, &mut actions.first_failure, code)
            }
        }
    }
    progress.finish_and_clear();
    actions
}

/// Waits until every winner that was neither checked out nor released is announced expired,
/// or until the last `expiresAt` + the grace; then measures lags and returns during the rush.
async fn await_expiries(watch: &Watch, result: &mut LoadResult, offset_ms: i64, rush_end_ms: i64) {
    let last_expiry = result
        .winners
        .iter()
        .map(|w| w.expires_at_ms)
        .max()
        .unwrap_or(0);
    let deadline_ms = last_expiry + ANNOUNCE_GRACE_MS;
    let progress = progress_bar(result.expiry_expected, "expiries announced");
    loop {
        let announced = {
            let seen = watch.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.expired.len() as u64
        };
        progress.set_position(announced.min(result.expiry_expected));
        if announced >= result.expiry_expected || now_ms() + offset_ms > deadline_ms {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    progress.finish_and_clear();
    let seen = watch.seen.lock().unwrap_or_else(|p| p.into_inner());
    let mut announced = 0;
    for won in &result.winners {
        let Some(expired) = seen.expired.get(&won.id) else {
            continue;
        };
        announced += 1;
        let lag = expired.arrived_ms + offset_ms - expired.expires_at_ms;
        result.expiry_lag_ms.saturating_record(lag.max(0) as u64);
        if expired.expired_at_ms <= rush_end_ms {
            result.returned_in_rush[won.type_index] += 1;
        }
    }
    result.unannounced = result.expiry_expected.saturating_sub(announced);
    result.duplicate_expiries = seen.duplicate_expiries;
    result.availability_updates = seen.availability_updates;
    result.subscription_errors = seen.errors.clone();
}

/// The stock a ticket type is left with: nothing held, and sold exactly what was checked out.
async fn check_stock(
    api: &Api,
    args: &Args,
    result: &mut LoadResult,
    index: usize,
    type_id: &str,
) -> anyhow::Result<()> {
    let (sold, held) = api.stock(type_id).await?;
    let expected_sold = result.checkouts_per_type[index] as i64 * i64::from(args.quantity);
    if held != 0 || sold != expected_sold {
        result.stock_drift.push(format!(
            "ticket type {index}: sold {sold} held {held}, expected sold {expected_sold} held 0"
        ));
    }
    Ok(())
}

fn fail(failures: &mut u64, first: &mut Option<String>, error: String) {
    *failures += 1;
    if first.is_none() {
        *first = Some(error);
    }
}

fn record_latency(histogram: Option<&mut Histogram<u64>>, elapsed: Duration) {
    if let Some(histogram) = histogram {
        histogram.saturating_record(elapsed.as_micros() as u64);
    }
}

pub fn new_histogram() -> Histogram<u64> {
    // From 1 to an hour in microseconds, three significant figures; fixed bounds so that
    // workers' histograms always add up (values past the bounds are clamped when recorded).
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .unwrap_or_else(|_| unreachable!("the bounds are valid"))
}

/// The bench's progress bar: what it counts, how far, how fast.
pub(super) fn progress_bar(length: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(length);
    let style =
        ProgressStyle::with_template("{spinner} {msg:>24} [{bar:40}] {pos}/{len} ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar
}
