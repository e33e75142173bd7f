//! Configuration and start-up: one clap struct (flags that also read environment variables)
//! and [`serve`], which runs the whole service on a listener until told to stop, so that tests
//! can bind port 0 and shut the server down cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::builder::BoolishValueParser;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::{self, Authenticator, KeyConfig, Role};
use crate::domain::{Limits, Millis};
use crate::events::Bus;
use crate::expiry::Wakeup;
use crate::expiry::keyspace;
use crate::expiry::timer::{self, TimerConfig};
use crate::graphql::{self, QueryLimits, Services};
use crate::http::WebSettings;
use crate::metrics::Metrics;
use crate::rate::HoldRateLimits;
use crate::store::HoldStore;
use crate::store::db::{self, DbStore};
use crate::store::redis::{Journal, RedisSettings, RedisStore, log};
use crate::supervise;

/// The embedded default: a SQLite file under `./data/`, created if missing.
pub const DATABASE_URL_DEFAULT: &str = "sqlite://data/tickethold.db?mode=rwc";

#[derive(clap::Args, Clone, Debug)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "TICKETHOLD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// `sqlite://path?mode=rwc` (the embedded default) or `postgres://user@host/db`.
    #[arg(long, env = "DATABASE_URL", default_value = DATABASE_URL_DEFAULT, hide_env_values = true)]
    pub database_url: String,

    /// Connections in the PostgreSQL pool, opened at start and kept (SQLite always uses one).
    /// The database flow's hold writer keeps 3 more of its own, its checkout and release writer
    /// 1 more; the Redis flow's idempotency key look-up 1 more.
    #[arg(
        long,
        env = "TICKETHOLD_DATABASE_CONNECTIONS_MAX",
        default_value_t = 16
    )]
    pub database_connections_max: u32,

    /// TTL of a hold when the client sends none, in seconds.
    #[arg(long, env = "TICKETHOLD_HOLD_TTL_SECS_DEFAULT", default_value_t = 900)]
    pub hold_ttl_secs_default: u32,

    /// Largest TTL a client may ask for, in seconds.
    #[arg(long, env = "TICKETHOLD_HOLD_TTL_SECS_MAX", default_value_t = 3600)]
    pub hold_ttl_secs_max: u32,

    /// Longest a hold may live from its creation, extensions included, in seconds.
    #[arg(
        long,
        env = "TICKETHOLD_HOLD_LIFETIME_SECS_MAX",
        default_value_t = 3600
    )]
    pub hold_lifetime_secs_max: u32,

    /// Items (ticket types) in one hold.
    #[arg(long, env = "TICKETHOLD_ITEMS_PER_HOLD_MAX", default_value_t = 20)]
    pub items_per_hold_max: u32,

    /// Tickets of one type in one hold.
    #[arg(long, env = "TICKETHOLD_QUANTITY_MAX", default_value_t = 100)]
    pub quantity_max: u32,

    /// Deepest GraphQL selection accepted (GraphiQL's introspection needs 13).
    #[arg(long, env = "TICKETHOLD_QUERY_DEPTH_MAX", default_value_t = 16)]
    pub query_depth_max: usize,

    /// Largest GraphQL query complexity accepted.
    #[arg(long, env = "TICKETHOLD_QUERY_COMPLEXITY_MAX", default_value_t = 5000)]
    pub query_complexity_max: usize,

    /// Longest the expiry timer sleeps between two sweeps of the expiry index, in
    /// milliseconds. It wakes at the `expires_at` of every hold this instance wrote anyway; the
    /// sweep catches holds written by other instances and notifications Redis did not send.
    #[arg(long, env = "TICKETHOLD_SWEEP_INTERVAL_MS", default_value_t = 1000)]
    pub sweep_interval_ms: u32,

    /// Holds expired in one transaction.
    #[arg(long, env = "TICKETHOLD_SWEEP_BATCH_MAX", default_value_t = 1000)]
    pub sweep_batch_max: u32,

    /// Changes a `holdExpired` or `availabilityChanged` subscriber may fall behind before it lags
    /// (it then re-reads the store); a countdown may fall 8 behind.
    #[arg(long, env = "TICKETHOLD_BUS_CAPACITY", default_value_t = 4096)]
    pub bus_capacity: usize,

    /// Selects the Redis flow: holds live in Redis (`redis://host:6379/0`); the database keeps
    /// events, ticket types, orders and the hold journal. Several comma-separated URLs are the
    /// seed nodes of a Redis Cluster.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// The Redis URL is a node of a Redis Cluster (implied by several URLs).
    #[arg(long, env = "TICKETHOLD_REDIS_CLUSTER", value_parser = BoolishValueParser::new())]
    pub redis_cluster: bool,

    /// Prefix of every Redis key, so that deployments can share one Redis.
    #[arg(long, env = "TICKETHOLD_REDIS_NAMESPACE", default_value = "tickethold")]
    pub redis_namespace: String,

    /// Set `notify-keyspace-events` to include `Ex` when it does not (needs CONFIG, which
    /// managed Redis services forbid; without notifications holds expire through the sweep).
    #[arg(long, env = "TICKETHOLD_REDIS_CONFIGURE_KEYSPACE_EVENTS", value_parser = BoolishValueParser::new())]
    pub redis_configure_keyspace_events: bool,

    /// Longest a hold change waits before it is journaled to the database, in milliseconds
    /// (the loss window if Redis loses its data).
    #[arg(
        long,
        env = "TICKETHOLD_REDIS_JOURNAL_INTERVAL_MS",
        default_value_t = 100
    )]
    pub redis_journal_interval_ms: u32,

    /// Longest a checkout may keep a hold pinned before the sweep reconciles it, in seconds.
    #[arg(long, env = "TICKETHOLD_REDIS_PIN_TIMEOUT_SECS", default_value_t = 30)]
    pub redis_pin_timeout_secs: u32,

    /// Bound on every Redis command, connecting included, in milliseconds.
    #[arg(long, env = "TICKETHOLD_REDIS_TIMEOUT_MS", default_value_t = 2000)]
    pub redis_timeout_ms: u32,

    /// HS256 secret that signs the callers' JWTs (at least 32 bytes).
    #[arg(long, env = "TICKETHOLD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// PEM file of the public key that verifies the callers' JWTs (instead of a secret), for
    /// tokens signed by an identity provider.
    #[arg(long, env = "TICKETHOLD_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<std::path::PathBuf>,

    /// Algorithm of the public key's tokens: RS256 (default), RS384, RS512, PS256, ES256,
    /// ES384 or EdDSA.
    #[arg(long, env = "TICKETHOLD_JWT_ALGORITHM")]
    pub jwt_algorithm: Option<String>,

    /// Required `iss` of every token, when set.
    #[arg(long, env = "TICKETHOLD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` of every token, when set.
    #[arg(long, env = "TICKETHOLD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Development mode: mints tokens for anyone at `/dev/token` and prints an admin token
    /// (with a random secret unless one is given). Never in production.
    #[arg(long, env = "TICKETHOLD_DEV", value_parser = BoolishValueParser::new())]
    pub dev: bool,

    /// `holdTickets` one customer may call per minute (a burst may use them all); 0 for no
    /// limit.
    #[arg(
        long,
        env = "TICKETHOLD_HOLDS_PER_MINUTE_PER_CUSTOMER",
        default_value_t = 20
    )]
    pub holds_per_minute_per_customer: u32,

    /// `holdTickets` one client address may call per minute; 0 for no limit.
    #[arg(
        long,
        env = "TICKETHOLD_HOLDS_PER_MINUTE_PER_ADDRESS",
        default_value_t = 300
    )]
    pub holds_per_minute_per_address: u32,

    /// Take the client's address from the last `X-Forwarded-For` entry (behind a load
    /// balancer that sets it) rather than from the connection.
    #[arg(long, env = "TICKETHOLD_TRUST_FORWARDED_FOR", value_parser = BoolishValueParser::new())]
    pub trust_forwarded_for: bool,

    /// Subscriptions one WebSocket connection may have open at once.
    #[arg(
        long,
        env = "TICKETHOLD_SUBSCRIPTIONS_PER_CONNECTION_MAX",
        default_value_t = 32
    )]
    pub subscriptions_per_connection_max: usize,

    /// Longest a WebSocket may wait before its `connection_init`, in milliseconds; it is then
    /// closed.
    #[arg(
        long,
        env = "TICKETHOLD_CONNECTION_INIT_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub connection_init_timeout_ms: u32,

    /// Refuse introspection queries (GraphiQL then cannot show the schema).
    #[arg(long, env = "TICKETHOLD_DISABLE_INTROSPECTION", value_parser = BoolishValueParser::new())]
    pub disable_introspection: bool,

    /// Do not serve the GraphiQL page at `/graphql`.
    #[arg(long, env = "TICKETHOLD_DISABLE_GRAPHIQL", value_parser = BoolishValueParser::new())]
    pub disable_graphiql: bool,
}

/// A secret from the configuration: never printed, not even by `Debug`.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(text.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Config {
    /// A configuration for `database_url` with every other setting at its default.
    pub fn with_database(database_url: impl Into<String>) -> Config {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        let mut config = Wrapper::parse_from(["tickethold"]).config;
        config.database_url = database_url.into();
        config
    }

    pub fn limits(&self) -> Limits {
        Limits {
            hold_ttl_secs_default: self.hold_ttl_secs_default,
            hold_ttl_secs_max: self.hold_ttl_secs_max,
            hold_lifetime_secs_max: self.hold_lifetime_secs_max,
            items_per_hold_max: self.items_per_hold_max,
            quantity_max: self.quantity_max,
            ..Limits::default()
        }
    }
}

/// Serves the API on `listener` until `shutdown` is cancelled, then finishes the requests in
/// flight and returns. Every acknowledged change was committed before it was acknowledged, so
/// stopping loses nothing.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let limits = config.limits();
    limits
        .validate()
        .map_err(anyhow::Error::msg)
        .context("invalid limits")?;
    let metrics = Metrics::new();
    let bus = Bus::new(config.bus_capacity).with_metrics(metrics.clone());
    let wakeup = Arc::new(Wakeup::default());
    let timer_config = TimerConfig {
        sweep_interval: Duration::from_millis(u64::from(config.sweep_interval_ms.max(1))),
        sweep_batch_max: config.sweep_batch_max.max(1),
    };
    let mut running = start_store(&config, &limits, &bus, &wakeup, &shutdown).await?;
    let store = running.store.clone();

    // Holds that lapsed while the server was down expire before the first request.
    let lapsed =
        timer::expire_all_due(store.as_ref(), Millis::now(), timer_config.sweep_batch_max).await?;
    if lapsed > 0 {
        tracing::info!(
            lapsed,
            "expired holds that lapsed while the server was down"
        );
    }
    running.tasks.push(supervise::spawn("the expiry timer", {
        let (store, shutdown) = (store.clone(), shutdown.clone());
        move || {
            timer::run(
                store.clone(),
                wakeup.clone(),
                timer_config.clone(),
                shutdown.clone(),
            )
        }
    }));

    let hold_rate = Arc::new(HoldRateLimits::new(
        config.holds_per_minute_per_customer,
        config.holds_per_minute_per_address,
    ));
    running.tasks.push(tokio::spawn(forget_idle_rates(
        hold_rate.clone(),
        shutdown.clone(),
    )));
    let services = Services {
        store,
        bus,
        limits,
        metrics,
        hold_rate,
        shutdown: shutdown.clone(),
    };
    let query_limits = QueryLimits {
        query_depth_max: config.query_depth_max,
        query_complexity_max: config.query_complexity_max,
        introspection: !config.disable_introspection,
    };
    let schema = graphql::build_schema(services.clone(), &query_limits);
    let web = web_settings(&config, listener.local_addr()?)?;
    let router = crate::http::router(schema, services, web);
    tracing::info!(address = %listener.local_addr()?, "serving the buyer's page at / and GraphQL at /graphql");
    let router = router.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await
        .context("server failed")?;
    shutdown.cancel();
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// The HTTP layer's settings: who is calling, and the limits of WebSocket connections.
fn web_settings(config: &Config, address: SocketAddr) -> anyhow::Result<WebSettings> {
    let public_key_pem = match &config.jwt_public_key_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None => None,
    };
    // An empty secret (a variable set to nothing) is no secret.
    let mut secret = config
        .jwt_secret
        .as_ref()
        .map(|s| s.0.clone())
        .filter(|s| !s.is_empty());
    let mut public_key_pem = public_key_pem;
    if config.dev {
        // Tokens for anyone must never be tokens that anything else trusts.
        if secret.is_some() || public_key_pem.is_some() {
            tracing::warn!("--dev ignores the configured JWT key and mints with a random secret");
        }
        secret = Some(auth::random_secret());
        public_key_pem = None;
    }
    let keys = KeyConfig {
        secret,
        public_key_pem,
        algorithm: config.jwt_algorithm.clone(),
        issuer: config.jwt_issuer.clone(),
        audience: config.jwt_audience.clone(),
    };
    let authenticator = Authenticator::from_config(&keys).context("invalid JWT settings")?;
    if config.dev {
        let admin = authenticator
            .mint(Role::Admin, "dev-admin", Duration::from_secs(24 * 3600))
            .context("--dev needs a secret to mint tokens, not a public key")?;
        tracing::warn!(
            "DEVELOPMENT MODE: anyone can get a token at /dev/token; never run this in production"
        );
        // Printed on stdout, not in the log: a token in a log line is a leak.
        println!(
            "Development mode. The buyer's page: http://{address}/\n\
             Admin token (24 h), for GraphiQL's headers as {{\"Authorization\": \"Bearer <token>\"}}:\n{admin}\n\
             More tokens: http://{address}/dev/token?role=buyer|admin|service&sub=<name>"
        );
    } else if keys.secret.is_none() && keys.public_key_pem.is_none() {
        tracing::warn!(
            "no JWT secret or public key is configured: only the catalog can be read; \
             set TICKETHOLD_JWT_SECRET, or run with --dev for a demo"
        );
    }
    Ok(WebSettings {
        authenticator,
        dev: config.dev,
        trust_forwarded_for: config.trust_forwarded_for,
        graphiql: !config.disable_graphiql,
        subscriptions_per_connection_max: config.subscriptions_per_connection_max.max(1),
        connection_init_timeout: Duration::from_millis(u64::from(
            config.connection_init_timeout_ms.max(1),
        )),
    })
}

/// Every minute, forgets the rate limits of callers who stopped calling.
async fn forget_idle_rates(limits: Arc<HoldRateLimits>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(60)) => limits.forget_idle(),
            () = shutdown.cancelled() => return,
        }
    }
}

/// The store of the flow the configuration selects, with the tasks it runs beside the timer.
struct Running {
    store: Arc<dyn HoldStore>,
    /// The Redis flow's journal, flushed at the end.
    journal: Option<Journal>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Waits for the tasks (already told to stop) and flushes the journal.
    async fn stop(self) {
        for task in self.tasks {
            task.await.ok();
        }
        if let Some(journal) = self.journal {
            // Bounded: with the database gone, the last entries are lost rather than the exit.
            let flush_max = Duration::from_secs(5);
            if tokio::time::timeout(flush_max, journal.flush())
                .await
                .is_err()
            {
                tracing::warn!("the hold journal could not be written before stopping");
            }
        }
    }
}

/// Opens the database (running the migrations) and, for the Redis flow, connects to Redis and
/// starts the stream reader and the keyspace listener.
async fn start_store(
    config: &Config,
    limits: &Limits,
    bus: &Bus,
    wakeup: &Arc<Wakeup>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Running> {
    let Some(url) = &config.redis_url else {
        let store = DbStore::open(
            &config.database_url,
            config.database_connections_max,
            bus.clone(),
            wakeup.clone(),
            limits.clone(),
        )
        .await
        .context("cannot open the database")?;
        return Ok(Running {
            store: Arc::new(store),
            journal: None,
            tasks: Vec::new(),
        });
    };
    let connection = db::connect(&config.database_url, config.database_connections_max)
        .await
        .context("cannot open the database")?;
    let settings = RedisSettings {
        url: url.clone(),
        namespace: config.redis_namespace.clone(),
        pin_timeout: Duration::from_secs(u64::from(config.redis_pin_timeout_secs.max(1))),
        journal_interval: Duration::from_millis(u64::from(config.redis_journal_interval_ms)),
        command_timeout: Duration::from_millis(u64::from(config.redis_timeout_ms.max(1))),
        cluster: config.redis_cluster,
    };
    let store = RedisStore::connect(connection, settings, wakeup.clone(), limits.clone())
        .await
        .context("cannot connect to Redis")?;
    let store = Arc::new(store);
    let (configure, sweep_batch_max) = (
        config.redis_configure_keyspace_events,
        config.sweep_batch_max.max(1),
    );
    let tasks = vec![
        supervise::spawn("the event stream reader", {
            let (store, bus, shutdown) = (store.clone(), bus.clone(), shutdown.clone());
            move || log::run(store.clone(), bus.clone(), shutdown.clone())
        }),
        supervise::spawn("the keyspace listener", {
            let (store, shutdown) = (store.clone(), shutdown.clone());
            move || keyspace::run(store.clone(), configure, sweep_batch_max, shutdown.clone())
        }),
    ];
    tracing::info!(namespace = %config.redis_namespace, "holds live in Redis");
    let journal = Some(store.journal().clone());
    Ok(Running {
        store,
        journal,
        tasks,
    })
}

/// A store over `database_url` (and Redis, for the Redis flow) with default limits, for
/// `verify` and other one-off commands; it starts no timer and serves nothing.
pub async fn open_store(
    database_url: &str,
    redis_url: Option<String>,
    redis_namespace: &str,
) -> anyhow::Result<Arc<dyn HoldStore>> {
    let connection = db::connect(database_url, 4)
        .await
        .context("cannot open the database")?;
    let wakeup = Arc::new(Wakeup::default());
    let Some(url) = redis_url else {
        return Ok(Arc::new(DbStore::new(
            connection,
            Bus::new(1),
            wakeup,
            Limits::default(),
        )));
    };
    let settings = RedisSettings {
        url,
        namespace: redis_namespace.to_owned(),
        pin_timeout: Duration::from_secs(30),
        journal_interval: Duration::from_millis(100),
        command_timeout: Duration::from_secs(5),
        cluster: false,
    };
    let store = RedisStore::connect(connection, settings, wakeup, Limits::default()).await?;
    Ok(Arc::new(store))
}
