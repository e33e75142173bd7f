//! `tickethold bench`: a flash sale against a running server (`--url`) or against servers it
//! starts itself, one per flow (`--flow`, or `--compare` for all three with the same workload),
//! side by side with the raw engine references (`--references`). It speaks GraphQL over HTTP and
//! WebSocket like a real client, and exits non-zero when a run oversells, undersells or leaves an
//! expiry unannounced. `--crowd` runs another scenario instead: many active holds and one
//! countdown subscriber per WebSocket, measuring the ticks' lag and the server's memory.

mod api;
mod chart;
mod crowd;
mod load;
mod reference;
mod report;
mod target;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

/// The flows `tickethold bench` can start a server for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// The database flow on an embedded SQLite file in a temporary folder.
    Sqlite,
    /// The database flow on a fresh PostgreSQL database.
    Postgres,
    /// The Redis flow (holds in Redis, a fresh PostgreSQL database for the rest).
    Redis,
}

impl Flow {
    pub fn name(self) -> &'static str {
        match self {
            Flow::Sqlite => "sqlite",
            Flow::Postgres => "postgres",
            Flow::Redis => "redis",
        }
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// A running server to load (`http://host:port`); otherwise the bench starts its own.
    #[arg(long, conflicts_with_all = ["flow", "compare"])]
    pub url: Option<String>,

    /// The flow of the server the bench starts.
    #[arg(long, value_enum, default_value = "sqlite")]
    pub flow: Flow,

    /// Run every flow, then the references, with the same workload.
    #[arg(long)]
    pub compare: bool,

    /// Also measure the raw engine references (implied by --compare).
    #[arg(long)]
    pub references: bool,

    /// Measure it all this many times (each round: the flows, then the references) and add a
    /// summary: per flow the median, lowest and highest of each figure and of each multiple of
    /// a reference (taken within its round). On a shared machine one run's ratios move by a
    /// third; the chart is drawn from the median round.
    #[arg(long, default_value_t = 1, conflicts_with = "crowd")]
    pub rounds: u32,

    /// PostgreSQL to create the bench's databases through (they are dropped at the end).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub postgres_url: String,

    /// Redis for the Redis flow and its reference (keys in a namespace of the bench's own).
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,

    /// Hold attempts, one per buyer (each buyer is a distinct customer).
    #[arg(long, default_value_t = 5000)]
    pub buyers: u64,

    /// Hold attempts before the rush, at its concurrency, on an event of their own (a fifth of
    /// them can win, and the winners are released): the rush then meets a server whose
    /// connections are open and whose caches are filled, as a sale opening on a running
    /// service does. The references are warmed up the same way. 0 for a cold start.
    #[arg(long, default_value_t = 1000)]
    pub warmup: u64,

    /// Buyers in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,

    /// Ticket types of the event; buyers are spread over them round-robin.
    #[arg(long, default_value_t = 1)]
    pub ticket_types: u32,

    /// Tickets of each ticket type.
    #[arg(long, default_value_t = 1000)]
    pub capacity: u32,

    /// Tickets in each hold.
    #[arg(long, default_value_t = 1)]
    pub quantity: u32,

    /// Tickets one customer may have of each ticket type (`maxPerCustomer`); none by default.
    /// Each buyer holds once, so the limit refuses nobody, but the server counts what every
    /// buyer has, as it does in a sale with a limit.
    #[arg(long)]
    pub max_per_customer: Option<u32>,

    /// Share of the successful holds that check out.
    #[arg(long, default_value_t = 0.5)]
    pub checkout_share: f64,

    /// Share of the successful holds that are released; the rest are abandoned to expire.
    #[arg(long, default_value_t = 0.1)]
    pub release_share: f64,

    /// Shorten each hold's TTL by the time since the rush began (whole seconds), so that every
    /// hold expires within the same second: the expiry burst. Give a `--ttl-secs` longer than
    /// the rush.
    #[arg(long)]
    pub expire_together: bool,

    /// TTL of every hold, in seconds.
    #[arg(long, default_value_t = 2)]
    pub ttl_secs: u32,

    /// Send holds without an idempotency key (by default each carries one of its own, as the
    /// buyer's page sends): what a hold costs without the retry protection.
    #[arg(long)]
    pub no_idempotency_keys: bool,

    /// The JWT secret of the server at `--url`, to sign the buyers' tokens with (servers the
    /// bench starts get a random one). Give that server no rate limits, or the load from one
    /// address is refused.
    #[arg(long, env = "TICKETHOLD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<crate::app::Secret>,

    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Write an SVG chart of throughput and latency per flow to this path.
    #[arg(long)]
    pub chart: Option<PathBuf>,

    /// Instead of the flash sale, the crowd: `--crowd-holds` active holds, then
    /// `--crowd-subscribers` WebSockets each watching one hold's `holdCountdown`; measures the
    /// ticks' lag and the server's peak memory (`--concurrency` creates the holds).
    #[arg(long, conflicts_with_all = ["compare", "references", "chart"])]
    pub crowd: bool,

    /// Active holds the crowd creates (one ticket each, each by its own buyer).
    #[arg(long, default_value_t = 100_000, requires = "crowd")]
    pub crowd_holds: u64,

    /// WebSockets of the crowd, one `holdCountdown` subscription each, on distinct holds.
    #[arg(long, default_value_t = 10_000, requires = "crowd")]
    pub crowd_subscribers: usize,

    /// How long the crowd's ticks are measured, in seconds, once every subscriber is open.
    #[arg(long, default_value_t = 10, requires = "crowd")]
    pub crowd_seconds: u64,
}

impl Args {
    /// The workload of the warm-up (`--warmup` buyers, one ticket type with a fifth as many
    /// tickets, every winner released), or none.
    fn warm_up(&self) -> Option<Args> {
        (self.warmup > 0).then(|| Args {
            buyers: self.warmup,
            ticket_types: 1,
            capacity: u32::try_from(self.warmup.div_ceil(5)).unwrap_or(u32::MAX),
            checkout_share: 0.0,
            release_share: 1.0,
            expire_together: false,
            ..self.clone()
        })
    }
}

/// Runs the benchmark; the exit code is a failure when any run broke an invariant.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    validate(&args)?;
    if args.crowd {
        return crowd::run(&args).await;
    }
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        if args.rounds > 1 {
            eprintln!("== round {round} of {}", args.rounds);
        }
        rounds.push(measure(&args).await?);
    }
    let failed = rounds.iter().any(report::Report::failed);
    let chart_of = if let [report] = rounds.as_slice() {
        if args.json {
            println!("{}", serde_json::to_string_pretty(report)?);
        } else {
            print!("{}", report.table());
        }
        report
    } else {
        let summary = report::Summary::new(&rounds);
        if args.json {
            let all = report::Rounds {
                rounds: &rounds,
                summary: &summary,
            };
            println!("{}", serde_json::to_string_pretty(&all)?);
        } else {
            for (round, report) in rounds.iter().enumerate() {
                println!("\n== round {} of {}", round + 1, rounds.len());
                print!("{}", report.table());
            }
            print!("{}", summary.table());
        }
        &rounds[summary.median_round]
    };
    if let Some(path) = &args.chart {
        chart::write(path, chart_of).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One round: the flows, then the references.
async fn measure(args: &Args) -> anyhow::Result<report::Report> {
    let mut flows = Vec::new();
    if let Some(url) = &args.url {
        let result = load::run(url, args, None).await?;
        flows.push(report::FlowReport::new("url", result, None));
    } else {
        let selected = if args.compare {
            vec![Flow::Sqlite, Flow::Postgres, Flow::Redis]
        } else {
            vec![args.flow]
        };
        for flow in selected {
            flows.push(run_flow(flow, args).await?);
        }
    }
    let references = if args.compare || args.references {
        Some(reference::run_all(args).await?)
    } else {
        None
    };
    Ok(report::Report::new(args, flows, references))
}

/// Starts the flow's server, loads it, and stops it (and removes its data) whatever happened.
async fn run_flow(flow: Flow, args: &Args) -> anyhow::Result<report::FlowReport> {
    eprintln!("== {}: starting the server", flow.name());
    let mut server = target::Server::start(flow, args).await?;
    let result = load::run(&server.url(), args, Some(&server)).await;
    let usage = server.usage();
    let stopped = server.stop().await;
    let result = result?;
    stopped?;
    Ok(report::FlowReport::new(flow.name(), result, usage))
}

fn validate(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.buyers > 0, "--buyers must be positive");
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be positive");
    anyhow::ensure!(args.ticket_types > 0, "--ticket-types must be positive");
    anyhow::ensure!(args.quantity > 0, "--quantity must be positive");
    anyhow::ensure!(
        args.max_per_customer.is_none_or(|max| max >= args.quantity),
        "--max-per-customer must be at least --quantity (each buyer holds once)"
    );
    anyhow::ensure!(args.ttl_secs > 0, "--ttl-secs must be positive");
    anyhow::ensure!(args.rounds > 0, "--rounds must be positive");
    let shares = [args.checkout_share, args.release_share];
    anyhow::ensure!(
        shares.iter().all(|s| (0.0..=1.0).contains(s)) && shares.iter().sum::<f64>() <= 1.0,
        "--checkout-share and --release-share must be in [0, 1] and add up to at most 1"
    );
    if args.crowd {
        anyhow::ensure!(
            (1..=i32::MAX as u64).contains(&args.crowd_holds),
            "--crowd-holds must be in [1, {}]",
            i32::MAX
        );
        anyhow::ensure!(
            args.crowd_subscribers as u64 <= args.crowd_holds,
            "--crowd-subscribers must be at most --crowd-holds (one hold per subscriber)"
        );
        anyhow::ensure!(args.crowd_seconds > 0, "--crowd-seconds must be positive");
    }
    Ok(())
}
