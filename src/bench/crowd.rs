//! `tickethold bench --crowd`: the crowd of a big on-sale, standing still. It creates
//! `--crowd-holds` active holds (one ticket each, each by its own buyer, for 15 minutes), then
//! opens `--crowd-subscribers` WebSockets, one per buyer like one browser tab each, every one
//! watching its own hold's `holdCountdown`; for `--crowd-seconds` it measures how late each tick
//! arrives after the instant it is due (in server time), how many ticks go missing, and what the
//! server costs in CPU and peak memory. It judges the crowd's two targets: a peak RSS under
//! 250 MB with 100,000 holds and 10,000 subscribers, and ticks within 200 ms at p99.
//!
//! Reading 10,000 sockets must not be what is measured: each subscriber is one task that owns
//! its socket, parses only the fields it needs, and keeps its own lags (4 bytes a tick), merged
//! into one histogram at the end; nothing is shared per message but two read-only atomics.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures::{SinkExt, StreamExt};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use super::Args;
use super::api::{Api, Outcome, now_ms};
use super::load::{new_histogram, progress_bar};
use super::report::{Percentiles, percentiles, render};
use super::target::{self, Server};

/// TTL of the crowd's holds: longer than any run, so that every hold stays active.
const HOLD_TTL_SECS: u32 = 900;
/// WebSockets being opened at once (connect, `connection_init`, `subscribe`, first message).
const OPEN_CONCURRENCY: usize = 200;
/// How long one subscriber may take to open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// From the moment every subscriber is open to the start of the measured window.
const WINDOW_LEAD_MS: i64 = 1000;
/// How long past the window a tick due in it may still arrive; later, it counts as missing.
const TICK_GRACE_MS: i64 = 2000;
/// Share of the expected ticks that may go missing before the run fails.
const MISSING_SHARE_MAX: f64 = 0.001;
/// Read buffer of each of the bench's sockets. tungstenite's default, 128 KiB, is allocated
/// and zeroed per socket (1.3 GB for 10,000); a countdown message is ~200 bytes.
const READ_BUFFER_BYTES: usize = 4096;
/// File descriptors needed beyond one per subscriber (HTTP connections, runtime, database).
const FD_MARGIN: u64 = 256;

/// The crowd's targets, and the workload they are stated for.
const TARGET_PEAK_RSS_MB: f64 = 250.0;
const TARGET_LAG_P99_MS: f64 = 200.0;
const TARGET_HOLDS: u64 = 100_000;
const TARGET_SUBSCRIBERS: u64 = 10_000;

const COUNTDOWN: &str =
    "subscription($h:ID!){holdCountdown(holdId:$h){status secondsLeft expiresAt}}";

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Runs the crowd against `--url` or a server of `--flow` it starts, prints the report, and
/// fails when holds or subscribers could not be created or ticks went missing.
pub async fn run(args: &Args) -> anyhow::Result<ExitCode> {
    check_open_files(args)?;
    let (name, crowd, stopped) = match &args.url {
        Some(url) => {
            let secret = args.jwt_secret.as_ref().map(|s| s.0.clone()).context(
                "--url needs --jwt-secret (the server's TICKETHOLD_JWT_SECRET) to sign the buyers' tokens",
            )?;
            let crowd = measure(url, &secret, args, None).await?;
            ("url".to_owned(), crowd, Ok(()))
        }
        None => {
            eprintln!("== {}: starting the server", args.flow.name());
            let mut server = Server::start(args.flow, args).await?;
            let crowd = measure(&server.url(), &server.secret.clone(), args, Some(&server)).await;
            let stopped = server.stop().await;
            (args.flow.name().to_owned(), crowd?, stopped)
        }
    };
    let mut report = CrowdReport::new(name, args, crowd);
    // A run measured in full is reported even if its clean-up failed, as a failure.
    if let Err(error) = stopped {
        report.failures.push(format!("clean-up failed: {error:#}"));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Everything one crowd run measured.
struct Crowd {
    holds: Holds,
    opened: Opened,
    ticks: Ticks,
    clock_offset_ms: i64,
    /// Server CPU seconds at: the first hold, every hold created, every subscriber open, the
    /// window's start and end (`None` for `--url`).
    server_cpu: [Option<f64>; 5],
    bench_cpu_window_secs: Option<f64>,
    server_peak_rss_bytes: Option<u64>,
}

/// The three phases against the server at `url`, whose tokens `secret` signs.
async fn measure(
    url: &str,
    secret: &str,
    args: &Args,
    server: Option<&Server>,
) -> anyhow::Result<Crowd> {
    let server_cpu = || server.and_then(Server::usage).map(|u| u.cpu_secs);
    let api = Api::new(url, args.concurrency, secret)?;
    let clock_offset_ms = clock_offset_ms(&api).await?;
    let capacity = u32::try_from(args.crowd_holds).context("--crowd-holds is too large")?;
    let (event_id, type_ids) = api.setup(1, capacity, None).await?;
    let cpu_start = server_cpu();
    let holds = create_holds(&api, args, &event_id, &type_ids[0]).await;
    let cpu_holds = server_cpu();
    let shared = Arc::new(Shared {
        window: Window::closed(),
        stop: CancellationToken::new(),
        offset_us: clock_offset_ms * 1000,
        progress: progress_bar(holds.watched.len() as u64, "subscribers open"),
    });
    let opened = open_subscribers(url, &holds.watched, &shared).await;
    let cpu_open = server_cpu();
    let (ticks, window_cpu) = watch(opened.tasks, args, &shared, clock_offset_ms, server).await;
    let server_peak_rss_bytes = server.and_then(Server::usage).map(|u| u.peak_rss_bytes);
    Ok(Crowd {
        holds,
        opened: Opened {
            tasks: Vec::new(),
            ..opened
        },
        ticks,
        clock_offset_ms,
        server_cpu: [
            cpu_start,
            cpu_holds,
            cpu_open,
            window_cpu.server[0],
            window_cpu.server[1],
        ],
        bench_cpu_window_secs: window_cpu.bench,
        server_peak_rss_bytes,
    })
}

/// `server clock - bench clock`, the median of a few `serverTime` round trips.
async fn clock_offset_ms(api: &Api) -> anyhow::Result<i64> {
    let mut offsets = Vec::new();
    for _ in 0..5 {
        offsets.push(api.clock_offset_ms().await?);
    }
    offsets.sort_unstable();
    Ok(offsets[offsets.len() / 2])
}

/// The servers started here inherit this process's open-file limit, and both ends need one
/// descriptor per subscriber: refuse to start rather than fail 10,000 sockets in.
fn check_open_files(args: &Args) -> anyhow::Result<()> {
    let needed = args.crowd_subscribers as u64 + args.concurrency as u64 + FD_MARGIN;
    let Some(limit) = open_files_limit() else {
        return Ok(());
    };
    let server = if args.url.is_none() {
        " (and as many in the server it starts, which inherits the limit)"
    } else {
        ""
    };
    anyhow::ensure!(
        limit >= needed,
        "the open-file limit (ulimit -n) is {limit}, but {} subscribers need about {needed} file \
         descriptors in the bench{server}: raise it (ulimit -n {needed}) or lower \
         --crowd-subscribers",
        args.crowd_subscribers
    );
    Ok(())
}

/// The soft limit on open files, from `/proc/self/limits`; `None` where there is no `/proc`.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .strip_prefix("Max open files")?
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

/// A hold a subscriber will watch, and its buyer's `Bearer` token.
#[derive(Clone)]
struct Watched {
    hold_id: String,
    buyer: String,
}

/// What creating the holds did.
#[derive(Default)]
struct Holds {
    created: u64,
    failures: u64,
    first_failure: Option<String>,
    secs: f64,
    /// The first `--crowd-subscribers` holds, with their buyers.
    watched: Vec<Watched>,
}

impl Holds {
    fn add(&mut self, other: Holds) {
        self.created += other.created;
        self.failures += other.failures;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
        self.watched.extend(other.watched);
    }
}

/// Creates `--crowd-holds` holds of one ticket, each by a distinct buyer, `--concurrency` at
/// once.
async fn create_holds(api: &Api, args: &Args, event_id: &str, type_id: &str) -> Holds {
    let progress = progress_bar(args.crowd_holds, "holds created");
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<JoinHandle<Holds>> = (0..args.concurrency)
        .map(|_| {
            let (api, next, progress) = (api.clone(), next.clone(), progress.clone());
            let (event_id, type_id) = (event_id.to_owned(), type_id.to_owned());
            let (holds, subscribers) = (args.crowd_holds, args.crowd_subscribers as u64);
            let keyed = !args.no_idempotency_keys;
            tokio::spawn(async move {
                let mut tally = Holds::default();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= holds {
                        return tally;
                    }
                    let buyer = api.buyer(&format!("crowd-{index}"));
                    let outcome = api
                        .hold(&buyer, &event_id, &type_id, 1, HOLD_TTL_SECS, keyed)
                        .await;
                    match outcome {
                        Outcome::Done(hold) => match hold["id"].as_str() {
                            Some(id) => {
                                tally.created += 1;
                                if index < subscribers {
                                    let hold_id = id.to_owned();
                                    tally.watched.push(Watched { hold_id, buyer });
                                }
                            }
                            None => fail(&mut tally, format!("no hold id in {hold}")),
                        },
                        Outcome::Rejected(code) => fail(&mut tally, code),
                        Outcome::Failed(error) => fail(&mut tally, error),
                    }
                    progress.inc(1);
                }
            })
        })
        .collect();
    let mut total = Holds::default();
    for worker in workers {
        match worker.await {
            Ok(tally) => total.add(tally),
            Err(error) => fail(&mut total, format!("worker: {error}")),
        }
    }
    total.secs = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    total
}

fn fail(holds: &mut Holds, error: String) {
    holds.failures += 1;
    if holds.first_failure.is_none() {
        holds.first_failure = Some(error);
    }
}

/// What every subscriber task shares: read once per tick, written once per run.
struct Shared {
    window: Window,
    stop: CancellationToken,
    /// `server clock - bench clock`, in microseconds.
    offset_us: i64,
    progress: ProgressBar,
}

/// The measured window, in server milliseconds: ticks due in `[start, end)` count. Closed
/// (empty) until it is set, once every subscriber is open.
struct Window {
    start_ms: AtomicI64,
    end_ms: AtomicI64,
}

impl Window {
    fn closed() -> Window {
        Window {
            start_ms: AtomicI64::new(i64::MAX),
            end_ms: AtomicI64::new(i64::MAX),
        }
    }

    fn set(&self, start_ms: i64, end_ms: i64) {
        self.end_ms.store(end_ms, Ordering::Relaxed);
        self.start_ms.store(start_ms, Ordering::Release);
    }

    fn contains(&self, due_ms: i64) -> bool {
        due_ms >= self.start_ms.load(Ordering::Acquire)
            && due_ms < self.end_ms.load(Ordering::Relaxed)
    }

    fn bounds(&self) -> (i64, i64) {
        let start = self.start_ms.load(Ordering::Acquire);
        (start, self.end_ms.load(Ordering::Relaxed))
    }
}

/// What opening the subscribers did; the tasks keep reading their sockets.
struct Opened {
    tasks: Vec<JoinHandle<Tally>>,
    open: u64,
    failures: u64,
    first_failure: Option<String>,
    secs: f64,
}

/// Opens one WebSocket per watched hold, `OPEN_CONCURRENCY` at a time; returns once every one
/// is subscribed (its first message arrived) or failed.
async fn open_subscribers(url: &str, watched: &[Watched], shared: &Arc<Shared>) -> Opened {
    let ws_url = format!(
        "{}/graphql",
        url.trim_end_matches('/')
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1)
    );
    let permits = Arc::new(Semaphore::new(OPEN_CONCURRENCY));
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(watched.len());
    for target in watched {
        let permit = permits.clone().acquire_owned().await;
        let permit = permit.unwrap_or_else(|_| unreachable!("the semaphore is never closed"));
        let (ws_url, target, shared) = (ws_url.clone(), target.clone(), shared.clone());
        let opened = opened_tx.clone();
        tasks.push(tokio::spawn(subscriber(
            ws_url, target, permit, shared, opened,
        )));
    }
    drop(opened_tx);
    let mut result = Opened {
        tasks,
        open: 0,
        failures: 0,
        first_failure: None,
        secs: 0.0,
    };
    while let Some(outcome) = opened_rx.recv().await {
        match outcome {
            Ok(()) => result.open += 1,
            Err(error) => {
                result.failures += 1;
                result.first_failure.get_or_insert(error);
            }
        }
    }
    result.secs = started.elapsed().as_secs_f64();
    shared.progress.finish_and_clear();
    result
}

/// One subscriber: opens its socket under `permit`, says how that went on `opened`, then
/// reads ticks until the run stops.
async fn subscriber(
    url: String,
    target: Watched,
    permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    opened: mpsc::UnboundedSender<Result<(), String>>,
) -> Tally {
    let open = tokio::time::timeout(OPEN_TIMEOUT, open(&url, &target.buyer, &target.hold_id));
    let result = match open.await {
        Ok(result) => result,
        Err(_) => Err(anyhow::anyhow!("not subscribed within {OPEN_TIMEOUT:?}")),
    };
    drop(permit);
    shared.progress.inc(1);
    let (socket, first) = match result {
        Ok(open) => open,
        Err(error) => {
            opened.send(Err(format!("{error:#}"))).ok();
            return Tally::default();
        }
    };
    opened.send(Ok(())).ok();
    drop(opened);
    let mut tally = Tally {
        expires_at_ms: Some(first.expires_at_ms),
        seconds_left: first.seconds_left,
        ..Tally::default()
    };
    tally.read(socket, &shared).await;
    tally
}

/// The first message of a countdown, sent at once (not a tick).
struct First {
    expires_at_ms: i64,
    seconds_left: u64,
}

/// Connects, authenticates as the buyer and subscribes to the hold's countdown; returns once
/// its first message arrived.
async fn open(url: &str, buyer: &str, hold_id: &str) -> anyhow::Result<(Socket, First)> {
    let mut request = url.into_client_request().context("invalid WebSocket URL")?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .context("cannot open the WebSocket")?;
    let init = json!({"type": "connection_init", "payload": {"Authorization": buyer}});
    send(&mut socket, init.to_string()).await?;
    let ack = next_text(&mut socket).await?;
    let kind = serde_json::from_str::<ServerMessage>(&ack).map(|m| m.kind == "connection_ack");
    anyhow::ensure!(kind.unwrap_or(false), "no connection_ack: {ack}");
    let subscribe = json!({"id": "1", "type": "subscribe",
                           "payload": {"query": COUNTDOWN, "variables": {"h": hold_id}}});
    send(&mut socket, subscribe.to_string()).await?;
    loop {
        let text = next_text(&mut socket).await?;
        let message = serde_json::from_str::<ServerMessage>(&text).ok();
        let first = match message {
            Some(ServerMessage { kind: "ping", .. }) => {
                send(&mut socket, PONG.to_owned()).await?;
                continue;
            }
            Some(ServerMessage {
                kind: "next",
                payload: Some(payload),
            }) => payload
                .data
                .and_then(|d| parse_time_ms(d.hold_countdown.expires_at).map(|e| (e, d)))
                .map(|(expires_at_ms, data)| First {
                    expires_at_ms,
                    seconds_left: data.hold_countdown.seconds_left,
                }),
            _ => None,
        };
        let first = first.with_context(|| format!("the subscription was refused: {text}"))?;
        return Ok((socket, first));
    }
}

const PONG: &str = r#"{"type":"pong"}"#;

/// The fields of a server message the bench reads; the rest is skipped unparsed.
#[derive(Deserialize)]
struct ServerMessage<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow, default)]
    payload: Option<NextPayload<'a>>,
}

#[derive(Deserialize)]
struct NextPayload<'a> {
    #[serde(borrow, default)]
    data: Option<CountdownData<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CountdownData<'a> {
    #[serde(borrow)]
    hold_countdown: Countdown<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Countdown<'a> {
    status: &'a str,
    seconds_left: u64,
    expires_at: &'a str,
}

/// One subscriber's ticks.
#[derive(Default)]
struct Tally {
    /// `expiresAt` of the first message; `None` when the subscriber never opened.
    expires_at_ms: Option<i64>,
    /// The last `secondsLeft` received.
    seconds_left: u64,
    /// Ticks due in the window that arrived (each `secondsLeft` once).
    received: u64,
    /// Messages whose `secondsLeft` did not drop (not a tick).
    repeated: u64,
    /// Ticks that arrived before they were due (clock offset error), recorded as 0.
    early: u64,
    /// Lag of each tick received, in microseconds.
    lags_us: Vec<u32>,
    /// Why the countdown stopped before the run did: socket closed, error, hold ended.
    ended: Option<String>,
}

impl Tally {
    /// Reads the socket until the run stops or the socket ends.
    async fn read(&mut self, mut socket: Socket, shared: &Shared) {
        loop {
            let message = tokio::select! {
                biased;
                () = shared.stop.cancelled() => break,
                message = socket.next() => message,
            };
            // Read the clock first: what follows is the bench's own cost, not the server's.
            let arrived_us = now_us();
            match message {
                Some(Ok(Message::Text(text))) => {
                    if self.on_text(text.as_str(), arrived_us, shared) {
                        send(&mut socket, PONG.to_owned()).await.ok();
                    }
                }
                Some(Ok(Message::Close(_))) | None => {
                    self.end("the server closed the WebSocket".to_owned());
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    self.end(format!("the WebSocket failed: {error}"));
                    return;
                }
            }
        }
        tokio::time::timeout(Duration::from_secs(1), socket.close(None))
            .await
            .ok();
    }

    /// Handles one message; true when it is a `ping` to answer.
    fn on_text(&mut self, text: &str, arrived_us: i64, shared: &Shared) -> bool {
        match serde_json::from_str::<ServerMessage>(text) {
            Ok(ServerMessage {
                kind: "next",
                payload: Some(NextPayload { data: Some(data) }),
            }) => {
                self.on_countdown(&data.hold_countdown, arrived_us, shared);
                false
            }
            Ok(ServerMessage { kind: "ping", .. }) => true,
            Ok(ServerMessage { kind: "pong", .. }) => false,
            // `error` (whose payload is a list), `complete`, or anything unexpected.
            _ => {
                self.end(format!("unexpected message: {}", truncate(text)));
                false
            }
        }
    }

    fn on_countdown(&mut self, countdown: &Countdown<'_>, arrived_us: i64, shared: &Shared) {
        if countdown.status != "ACTIVE" {
            self.end(format!("the hold became {}", countdown.status));
            return;
        }
        if countdown.seconds_left >= self.seconds_left {
            self.repeated += 1;
            return;
        }
        let Some(expires_at_ms) = parse_time_ms(countdown.expires_at) else {
            self.end(format!("bad expiresAt {}", countdown.expires_at));
            return;
        };
        self.seconds_left = countdown.seconds_left;
        let due_ms = tick_due_ms(expires_at_ms, countdown.seconds_left);
        if !shared.window.contains(due_ms) {
            return;
        }
        self.received += 1;
        let lag_us = arrived_us + shared.offset_us - due_ms * 1000;
        if lag_us < 0 {
            self.early += 1;
        }
        self.lags_us
            .push(lag_us.clamp(0, i64::from(u32::MAX)) as u32);
    }

    fn end(&mut self, why: String) {
        self.ended.get_or_insert(why);
    }
}

/// When the tick carrying `seconds_left` is due: `secondsLeft` is `expiresAt - now` in whole
/// seconds rounded down, so it drops to `s` as `expiresAt - now` falls below `(s + 1)` seconds.
/// (The server sends it 1 ms past that instant.)
fn tick_due_ms(expires_at_ms: i64, seconds_left: u64) -> i64 {
    expires_at_ms - (seconds_left as i64 + 1) * 1000
}

/// Ticks due in `[start_ms, end_ms)` for a hold expiring at `expires_at_ms`: one at
/// `expiresAt - k s` for every whole `k >= 1` (`secondsLeft` dropping to `k - 1`).
fn ticks_due(expires_at_ms: i64, start_ms: i64, end_ms: i64) -> u64 {
    let k_max = (expires_at_ms - start_ms).div_euclid(1000);
    let k_min = ((expires_at_ms - end_ms).div_euclid(1000) + 1).max(1);
    (k_max - k_min + 1).max(0) as u64
}

/// The ticks of every subscriber over the window.
struct Ticks {
    expected: u64,
    received: u64,
    repeated: u64,
    early: u64,
    /// Subscribers whose countdown stopped during the run, and the first reason.
    ended: u64,
    first_end: Option<String>,
    lag_ms: Percentiles,
}

/// CPU seconds at the window's start and end.
struct WindowCpu {
    server: [Option<f64>; 2],
    bench: Option<f64>,
}

/// Opens the window, waits it out (and the grace), stops every subscriber and merges.
async fn watch(
    tasks: Vec<JoinHandle<Tally>>,
    args: &Args,
    shared: &Shared,
    offset_ms: i64,
    server: Option<&Server>,
) -> (Ticks, WindowCpu) {
    let server_cpu = || server.and_then(Server::usage).map(|u| u.cpu_secs);
    let bench_cpu = || target::cpu_secs(std::process::id());
    let start_ms = now_ms() + offset_ms + WINDOW_LEAD_MS;
    let end_ms = start_ms + args.crowd_seconds as i64 * 1000;
    shared.window.set(start_ms, end_ms);
    sleep_until(start_ms, offset_ms).await;
    let cpu_start = (server_cpu(), bench_cpu());
    let progress = progress_bar(args.crowd_seconds, "seconds watched");
    for second in 1..=args.crowd_seconds {
        sleep_until(start_ms + second as i64 * 1000, offset_ms).await;
        progress.set_position(second);
    }
    let cpu_end = (server_cpu(), bench_cpu());
    progress.finish_and_clear();
    sleep_until(end_ms + TICK_GRACE_MS, offset_ms).await;
    shared.stop.cancel();
    let mut tallies = Vec::with_capacity(tasks.len());
    for task in tasks {
        tallies.push(task.await.unwrap_or_default());
    }
    let cpu = WindowCpu {
        server: [cpu_start.0, cpu_end.0],
        bench: cpu_start.1.zip(cpu_end.1).map(|(start, end)| end - start),
    };
    (merge(&tallies, shared.window.bounds()), cpu)
}

/// Sleeps until the server's clock reads `server_ms`.
async fn sleep_until(server_ms: i64, offset_ms: i64) {
    let wait_ms = server_ms - (now_ms() + offset_ms);
    if wait_ms > 0 {
        tokio::time::sleep(Duration::from_millis(wait_ms as u64)).await;
    }
}

fn merge(tallies: &[Tally], (start_ms, end_ms): (i64, i64)) -> Ticks {
    let mut lag_us = new_histogram();
    let mut ticks = Ticks {
        expected: 0,
        received: 0,
        repeated: 0,
        early: 0,
        ended: 0,
        first_end: None,
        lag_ms: Percentiles::default(),
    };
    for tally in tallies {
        let Some(expires_at_ms) = tally.expires_at_ms else {
            continue;
        };
        ticks.expected += ticks_due(expires_at_ms, start_ms, end_ms);
        ticks.received += tally.received;
        ticks.repeated += tally.repeated;
        ticks.early += tally.early;
        if let Some(why) = &tally.ended {
            ticks.ended += 1;
            ticks.first_end.get_or_insert_with(|| why.clone());
        }
        for &lag in &tally.lags_us {
            lag_us.saturating_record(u64::from(lag));
        }
    }
    ticks.lag_ms = percentiles(&lag_us, 1000.0);
    ticks
}

/// A target's verdict: `unknown` when the figure is missing (RSS of a server at `--url`),
/// `not_applicable` when the run was smaller than the target's workload.
#[derive(Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Met,
    Missed,
    Unknown,
    NotApplicable,
}

#[derive(Serialize)]
pub struct Targets {
    /// Peak server RSS under 250 MB with 100,000 active holds and 10,000 subscribers.
    pub peak_rss_under_250_mb: Verdict,
    /// 10,000 subscribers' ticks within 200 ms of their second, at p99.
    pub tick_lag_p99_under_200_ms: Verdict,
}

#[derive(Serialize)]
pub struct CrowdWorkload {
    pub holds: u64,
    pub subscribers: usize,
    pub seconds: u64,
    pub concurrency: usize,
    pub hold_ttl_secs: u32,
}

/// The crowd's report: the table for people, or the JSON document.
#[derive(Serialize)]
pub struct CrowdReport {
    pub target: String,
    pub workload: CrowdWorkload,
    pub holds_created: u64,
    pub hold_failures: u64,
    pub holds_per_sec: f64,
    pub subscribers_open: u64,
    pub subscribe_failures: u64,
    pub subscribers_per_sec: f64,
    /// Subscribers whose countdown stopped during the run (socket closed, error, hold ended).
    pub subscribers_ended: u64,
    pub ticks_expected: u64,
    pub ticks_received: u64,
    pub ticks_missing: u64,
    /// Messages whose `secondsLeft` did not drop.
    pub ticks_repeated: u64,
    /// Ticks that arrived before they were due by the corrected clock (recorded as 0 ms).
    pub ticks_early: u64,
    /// From the instant a tick is due (server time) to its arrival at the bench.
    pub tick_lag_ms: Percentiles,
    pub clock_offset_ms: i64,
    pub server_peak_rss_mb: Option<f64>,
    /// Server CPU from the first hold to the end of the window, and per phase.
    pub server_cpu_secs: Option<f64>,
    pub server_cpu_secs_holds: Option<f64>,
    pub server_cpu_secs_subscribe: Option<f64>,
    pub server_cpu_secs_window: Option<f64>,
    /// Server CPU during the window per tick received.
    pub server_cpu_us_per_tick: Option<f64>,
    pub bench_cpu_secs_window: Option<f64>,
    pub targets: Targets,
    pub failures: Vec<String>,
}

impl CrowdReport {
    fn new(target: String, args: &Args, crowd: Crowd) -> CrowdReport {
        let Crowd {
            holds,
            opened,
            ticks,
            server_cpu,
            ..
        } = &crowd;
        let between = |a: usize, b: usize| server_cpu[a].zip(server_cpu[b]).map(|(a, b)| b - a);
        let window_cpu = between(3, 4);
        let mut report = CrowdReport {
            target,
            workload: CrowdWorkload {
                holds: args.crowd_holds,
                subscribers: args.crowd_subscribers,
                seconds: args.crowd_seconds,
                concurrency: args.concurrency,
                hold_ttl_secs: HOLD_TTL_SECS,
            },
            holds_created: holds.created,
            hold_failures: holds.failures,
            holds_per_sec: rate(holds.created, holds.secs),
            subscribers_open: opened.open,
            subscribe_failures: opened.failures,
            subscribers_per_sec: rate(opened.open, opened.secs),
            subscribers_ended: ticks.ended,
            ticks_expected: ticks.expected,
            ticks_received: ticks.received,
            ticks_missing: ticks.expected.saturating_sub(ticks.received),
            ticks_repeated: ticks.repeated,
            ticks_early: ticks.early,
            tick_lag_ms: ticks.lag_ms,
            clock_offset_ms: crowd.clock_offset_ms,
            server_peak_rss_mb: crowd
                .server_peak_rss_bytes
                .map(|b| b as f64 / (1024.0 * 1024.0)),
            server_cpu_secs: between(0, 4),
            server_cpu_secs_holds: between(0, 1),
            server_cpu_secs_subscribe: between(1, 2),
            server_cpu_secs_window: window_cpu,
            server_cpu_us_per_tick: window_cpu
                .filter(|_| ticks.received > 0)
                .map(|secs| secs * 1e6 / ticks.received as f64),
            bench_cpu_secs_window: crowd.bench_cpu_window_secs,
            targets: Targets {
                peak_rss_under_250_mb: Verdict::Unknown,
                tick_lag_p99_under_200_ms: Verdict::Unknown,
            },
            failures: Vec::new(),
        };
        report.judge(&crowd);
        report
    }

    /// Fills `targets` and `failures`.
    fn judge(&mut self, crowd: &Crowd) {
        let full =
            self.holds_created >= TARGET_HOLDS && self.subscribers_open >= TARGET_SUBSCRIBERS;
        self.targets.peak_rss_under_250_mb = match self.server_peak_rss_mb {
            None => Verdict::Unknown,
            Some(_) if !full => Verdict::NotApplicable,
            Some(mb) => verdict(mb < TARGET_PEAK_RSS_MB),
        };
        self.targets.tick_lag_p99_under_200_ms = if self.subscribers_open < TARGET_SUBSCRIBERS {
            Verdict::NotApplicable
        } else {
            verdict(self.ticks_received > 0 && self.tick_lag_ms.p99 < TARGET_LAG_P99_MS)
        };
        let (holds, opened) = (&crowd.holds, &crowd.opened);
        if holds.failures > 0 {
            let first = holds.first_failure.as_deref().unwrap_or_default();
            let n = holds.failures;
            self.failures
                .push(format!("{n} holds failed; first: {first}"));
        }
        if opened.failures > 0 {
            let first = opened.first_failure.as_deref().unwrap_or_default();
            let n = opened.failures;
            self.failures
                .push(format!("{n} subscribers failed to open; first: {first}"));
        }
        let missing_max = (self.ticks_expected as f64 * MISSING_SHARE_MAX).floor() as u64;
        if self.ticks_missing > missing_max || self.ticks_expected == 0 {
            self.failures.push(format!(
                "{} of {} ticks missing (at most {missing_max} allowed)",
                self.ticks_missing, self.ticks_expected
            ));
        }
        if let Some(why) = &crowd.ticks.first_end {
            let n = self.subscribers_ended;
            self.failures
                .push(format!("{n} countdowns stopped early; first: {why}"));
        }
    }

    /// The table: one column, one row per figure, then the targets and the failures.
    pub fn table(&self) -> String {
        let w = &self.workload;
        let mut out = format!(
            "\ncrowd: {} holds (TTL {} s, {} at once), {} subscribers (one WebSocket each), \
             {} s watched\n\n",
            w.holds, w.hold_ttl_secs, w.concurrency, w.subscribers, w.seconds
        );
        let lag = self.tick_lag_ms;
        let rows = [
            (
                "holds created",
                format!("{} / {}", self.holds_created, w.holds),
            ),
            ("holds/s (creating)", format!("{:.0}", self.holds_per_sec)),
            (
                "subscribers open",
                format!("{} / {}", self.subscribers_open, w.subscribers),
            ),
            (
                "subscribers/s (opening)",
                format!("{:.0}", self.subscribers_per_sec),
            ),
            (
                "countdowns stopped early",
                self.subscribers_ended.to_string(),
            ),
            (
                "ticks received / expected",
                format!("{} / {}", self.ticks_received, self.ticks_expected),
            ),
            ("ticks missing", self.ticks_missing.to_string()),
            (
                "tick lag p50 / p90 ms",
                format!("{:.1} / {:.1}", lag.p50, lag.p90),
            ),
            (
                "tick lag p99 / max ms",
                format!("{:.1} / {:.1}", lag.p99, lag.max),
            ),
            (
                "server peak RSS MB",
                optional(self.server_peak_rss_mb, 1, "unknown (--url)"),
            ),
            (
                "server CPU s (total)",
                optional(self.server_cpu_secs, 2, "-"),
            ),
            (
                "  creating holds",
                optional(self.server_cpu_secs_holds, 2, "-"),
            ),
            (
                "  opening subscribers",
                optional(self.server_cpu_secs_subscribe, 2, "-"),
            ),
            (
                "  watched window",
                optional(self.server_cpu_secs_window, 2, "-"),
            ),
            (
                "server CPU us per tick",
                optional(self.server_cpu_us_per_tick, 1, "-"),
            ),
            (
                "bench CPU s (window)",
                optional(self.bench_cpu_secs_window, 2, "-"),
            ),
            (
                "target: peak RSS < 250 MB",
                verdict_text(self.targets.peak_rss_under_250_mb),
            ),
            (
                "target: tick p99 < 200 ms",
                verdict_text(self.targets.tick_lag_p99_under_200_ms),
            ),
            (
                "verdict",
                if self.failures.is_empty() {
                    "ok"
                } else {
                    "FAILED"
                }
                .to_owned(),
            ),
        ];
        let rows: Vec<(String, Vec<String>)> = rows
            .into_iter()
            .map(|(label, cell)| (label.to_owned(), vec![cell]))
            .collect();
        out.push_str(&render(std::slice::from_ref(&self.target), &rows));
        for failure in &self.failures {
            out.push_str(&format!("FAILED [{}] {failure}\n", self.target));
        }
        out
    }
}

fn verdict(met: bool) -> Verdict {
    if met { Verdict::Met } else { Verdict::Missed }
}

fn verdict_text(verdict: Verdict) -> String {
    match verdict {
        Verdict::Met => "met",
        Verdict::Missed => "MISSED",
        Verdict::Unknown => "unknown",
        Verdict::NotApplicable => "n/a (smaller run)",
    }
    .to_owned()
}

fn optional(value: Option<f64>, decimals: usize, none: &str) -> String {
    value.map_or_else(|| none.to_owned(), |v| format!("{v:.decimals$}"))
}

fn rate(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// An RFC 3339 time, in milliseconds since the epoch.
fn parse_time_ms(text: &str) -> Option<i64> {
    let time = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    Some(time.timestamp_millis())
}

/// The bench's clock, in microseconds since the epoch.
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn truncate(text: &str) -> &str {
    match text.char_indices().nth(300) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

async fn send(socket: &mut Socket, text: String) -> anyhow::Result<()> {
    socket
        .send(Message::text(text))
        .await
        .context("cannot send on the WebSocket")
}

/// The next text message; a close or failure is an error.
async fn next_text(socket: &mut Socket) -> anyhow::Result<String> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => {
                let why = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                anyhow::bail!("the server closed the WebSocket: {why}");
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error).context("the WebSocket failed"),
            None => anyhow::bail!("the WebSocket closed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{tick_due_ms, ticks_due};

    #[test]
    fn a_tick_is_due_when_seconds_left_drops() {
        // 5.3 s left reads 5; it reads 4 from 4.999 s left, i.e. 5 s before expiresAt.
        assert_eq!(tick_due_ms(10_000, 4), 5_000);
        assert_eq!(tick_due_ms(10_000, 0), 9_000);
    }

    #[test]
    fn ticks_due_counts_each_second_of_the_window_once() {
        assert_eq!(ticks_due(10_500, 0, 1_000), 1);
        assert_eq!(ticks_due(10_500, 0, 10_000), 10);
        assert_eq!(ticks_due(900_123, 1_000, 11_000), 10);
        // No tick at expiresAt itself (the last one is due a second before).
        assert_eq!(ticks_due(1_000, 0, 5_000), 1);
        assert_eq!(ticks_due(1_000, 2_000, 5_000), 0);
    }
}
