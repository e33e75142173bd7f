//! The servers the bench starts: the real `tickethold` binary (`serve`) on a free port, with a
//! SQLite file in a temporary folder, a fresh PostgreSQL database, or a Redis namespace of its
//! own; and the clean-up afterwards (kill the child, drop the database, delete the keys). Also
//! reads the child's CPU time and peak RSS from `/proc`.

use std::fs::File;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sea_orm::{ConnectionTrait, Database};

use super::{Args, Flow};

/// How long a starting server may take to answer `/readyz` (migrations included).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A server the bench started, and what must be removed when it stops.
pub struct Server {
    /// The JWT secret the server was given, to sign the buyers' tokens with.
    pub secret: String,
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
    database: Option<Database2>,
    redis: Option<(String, String)>,
}

/// A database created for the run, dropped at the end through `admin_url`.
struct Database2 {
    admin_url: String,
    name: String,
}

/// What the server used, read from `/proc` before it is stopped.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub cpu_secs: f64,
    pub peak_rss_bytes: u64,
}

impl Server {
    /// Creates the flow's storage, spawns `tickethold serve` and waits until it is ready.
    pub async fn start(flow: Flow, args: &Args) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let secret = crate::auth::random_secret();
        // The load comes from one address and the buyers are many: no rate limit applies.
        let mut env = vec![
            (
                "TICKETHOLD_REDIS_CONFIGURE_KEYSPACE_EVENTS",
                "true".to_owned(),
            ),
            ("TICKETHOLD_JWT_SECRET", secret.clone()),
            ("TICKETHOLD_HOLDS_PER_MINUTE_PER_ADDRESS", "0".to_owned()),
            ("TICKETHOLD_HOLDS_PER_MINUTE_PER_CUSTOMER", "0".to_owned()),
        ];
        let mut database = None;
        let mut redis = None;
        if flow == Flow::Sqlite {
            let path = dir.path().join("tickethold.db");
            env.push((
                "DATABASE_URL",
                format!("sqlite://{}?mode=rwc", path.display()),
            ));
        } else {
            let name = format!("tickethold_bench_{tag}");
            let url = create_database(&args.postgres_url, &name).await?;
            env.push(("DATABASE_URL", url));
            database = Some(Database2 {
                admin_url: args.postgres_url.clone(),
                name,
            });
        }
        if flow == Flow::Redis {
            let namespace = format!("tickethold-bench-{tag}");
            env.push(("REDIS_URL", args.redis_url.clone()));
            env.push(("TICKETHOLD_REDIS_NAMESPACE", namespace.clone()));
            redis = Some((args.redis_url.clone(), namespace));
        }
        let addr = free_addr()?;
        let log = dir.path().join("serve.log");
        let child = spawn_serve(&env, addr, &log)?;
        let mut server = Server {
            secret,
            child,
            addr,
            log,
            _dir: dir,
            database,
            redis,
        };
        if let Err(error) = server.wait_ready().await {
            let log = std::fs::read_to_string(&server.log).unwrap_or_default();
            server.stop().await.ok();
            return Err(error.context(format!("server log:\n{log}")));
        }
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// CPU time (user + system) and peak RSS of the server so far; `None` without `/proc`.
    pub fn usage(&self) -> Option<Usage> {
        let pid = self.child.id();
        let cpu_secs = cpu_secs(pid)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let peak_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()?;
        Some(Usage {
            cpu_secs,
            peak_rss_bytes: peak_kib * 1024,
        })
    }

    /// Kills the server, then drops its database and deletes its Redis keys.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.child.kill().ok();
        self.child.wait().context("cannot reap the server")?;
        if let Some(database) = self.database.take() {
            drop_database(&database.admin_url, &database.name).await?;
        }
        if let Some((url, namespace)) = self.redis.take() {
            delete_redis_keys(&url, &namespace).await?;
        }
        Ok(())
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = format!("{}/readyz", self.url());
        loop {
            if let Some(status) = self.child.try_wait().context("cannot poll the server")? {
                anyhow::bail!("the server exited before it was ready ({status})");
            }
            let ready = http.get(&url).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the server at {} was not ready within {READY_TIMEOUT:?}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// CPU time (utime + stime) of `pid`, in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks() as f64)
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|&ticks| ticks > 0)
        .unwrap_or(100)
}

fn spawn_serve(
    env: &[(&str, String)],
    addr: SocketAddr,
    log: &std::path::Path,
) -> anyhow::Result<Child> {
    let binary = std::env::current_exe().context("cannot find the tickethold binary")?;
    let out = File::create(log).context("cannot create the server log")?;
    let err = out.try_clone().context("cannot clone the log handle")?;
    Command::new(binary)
        .arg("serve")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("TICKETHOLD_LISTEN", addr.to_string())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("cannot spawn tickethold serve")
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind port 0")?;
    listener.local_addr().context("no local address")
}

/// Creates database `name` through `admin_url` and returns its URL.
pub async fn create_database(admin_url: &str, name: &str) -> anyhow::Result<String> {
    let admin = Database::connect(admin_url)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {admin_url}"))?;
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .with_context(|| format!("cannot create database {name}"))?;
    admin.close().await.ok();
    database_url(admin_url, name)
}

/// Drops database `name` (closing what still uses it) through `admin_url`.
pub async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let admin = Database::connect(admin_url)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {admin_url}"))?;
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .with_context(|| format!("cannot drop database {name}"))?;
    admin.close().await.ok();
    Ok(())
}

/// `admin_url` with its database name replaced by `name`, query string kept.
fn database_url(admin_url: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (admin_url, None),
    };
    let rest = base
        .strip_prefix("postgres://")
        .or_else(|| base.strip_prefix("postgresql://"))
        .context("--postgres-url must start with postgres://")?;
    let host = rest.split_once('/').map_or(rest, |(host, _)| host);
    let mut url = format!("postgres://{host}/{name}");
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    Ok(url)
}

/// Deletes every key of `namespace` (`KEYS ns:*` then `DEL`).
pub async fn delete_redis_keys(url: &str, namespace: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url).context("invalid Redis URL")?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("cannot connect to Redis at {url}"))?;
    // SCAN in steps, never KEYS: hundreds of thousands of keys would block the shared Redis.
    let mut cursor = 0_u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{namespace}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .context("SCAN failed")?;
        if !keys.is_empty() {
            let _: () = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .context("UNLINK failed")?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
