//! The `tickethold` command: `serve` runs the service, `verify` checks the stock counters
//! against the holds and orders, `schema` prints the GraphQL SDL, `bench` runs a flash sale
//! and reports throughput, latency and the stock checks.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tickethold::app::{self, Config};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "Temporary ticket holds over GraphQL, with live countdowns"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// `text` for people, `json` (one object per line) for log collectors.
    #[arg(
        long,
        global = true,
        env = "TICKETHOLD_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the GraphQL API (GraphiQL at /graphql).
    Serve(Box<Config>),
    /// Recompute sold and held of every ticket type from the holds and orders and report any
    /// drift; exits with 1 when there is one.
    Verify {
        #[arg(long, env = "DATABASE_URL", default_value = app::DATABASE_URL_DEFAULT, hide_env_values = true)]
        database_url: String,
        /// Also check the Redis flow's counters against the holds in Redis.
        #[arg(long, env = "REDIS_URL", hide_env_values = true)]
        redis_url: Option<String>,
        #[arg(long, env = "TICKETHOLD_REDIS_NAMESPACE", default_value = "tickethold")]
        redis_namespace: String,
    },
    /// Print the GraphQL schema (SDL), as committed in schema.graphql.
    Schema,
    /// Run a flash sale against a server (or servers it starts) and report throughput,
    /// latency, stock and expiry checks; exits with 1 when an invariant broke.
    Bench(Box<tickethold::bench::Args>),
}

/// The server allocates and frees many small objects per request (GraphQL documents, JSON,
/// rows): mimalloc does that with less contention than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,sea_orm=warn".into()),
        )
        // Colours for a terminal only: a log file or collector gets plain text.
        .with_ansi(std::io::stdout().is_terminal());
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(config) => {
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            app::serve(listener, *config, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            database_url,
            redis_url,
            redis_namespace,
        } => {
            let store = app::open_store(&database_url, redis_url, &redis_namespace).await?;
            let drifts = store.verify().await?;
            if drifts.is_empty() {
                println!("ok: every counter matches the holds and orders");
                return Ok(ExitCode::SUCCESS);
            }
            for drift in &drifts {
                println!("DRIFT {drift}");
            }
            Ok(ExitCode::FAILURE)
        }
        Command::Bench(args) => tickethold::bench::run(*args).await,
        Command::Schema => {
            print!("{}", tickethold::graphql::sdl());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
    shutdown.cancel();
}
