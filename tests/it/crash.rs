//! The crash test: the real `tickethold` binary is started, acknowledges holds, and is killed
//! with SIGKILL right after the last acknowledgement. Restarted on the same database, it must
//! still have every acknowledged hold with its `expiresAt`, and the holds that lapsed while it
//! was down must be EXPIRED exactly once, their stock back on sale (`tickethold verify` finds
//! no drift). Run on SQLite and on PostgreSQL. A second story checks that SIGTERM stops the
//! server gracefully (exit status 0) and loses nothing.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::join_all;
use serde_json::{Value, json};

use crate::support::{self, TestDb};

const BINARY: &str = env!("CARGO_BIN_EXE_tickethold");

/// How long a starting server may take to answer `/readyz` (migrations included).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a server may take to exit after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

const CAPACITY: i64 = 50;
const LONG_HOLDS: usize = 20;
const SHORT_HOLDS: usize = 5;

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_holds_survive_kill_9_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
    acknowledged_holds_survive_kill_9(&url, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_holds_survive_kill_9_on_postgres() {
    // Declared first, so dropped last: the server is dead before its database is dropped.
    let db = TestDb::postgres().await;
    let dir = tempfile::tempdir().expect("temp dir");
    acknowledged_holds_survive_kill_9(db.url(), dir.path()).await;
}

/// The story of the issue, on the database at `url`; logs go to `dir`.
async fn acknowledged_holds_survive_kill_9(url: &str, dir: &Path) {
    let server = Server::start(url, dir).await;
    let event_id = server.create_event("Crash Test Live").await;
    let ticket_type_id = server.create_ticket_type(&event_id, CAPACITY).await;

    // Twenty long holds at once, then five that lapse one second later.
    let hold = |customer: String, ttl: i64| {
        let (server, event_id, ticket_type_id) = (&server, &event_id, &ticket_type_id);
        async move { server.hold(event_id, ticket_type_id, &customer, ttl).await }
    };
    let long: Vec<Acked> = join_all((0..LONG_HOLDS).map(|i| hold(format!("long-{i}"), 600))).await;
    let short: Vec<Acked> = join_all((0..SHORT_HOLDS).map(|i| hold(format!("short-{i}"), 1))).await;

    // SIGKILL right after the last acknowledgement: no graceful anything.
    let killed_at = Utc::now();
    server.kill_9();

    // Wait out the short holds, so that they lapse while nothing runs.
    let last_short_expiry = short
        .iter()
        .map(|hold| hold.expires_at)
        .max()
        .expect("short holds");
    let first_short_expiry = short
        .iter()
        .map(|hold| hold.expires_at)
        .min()
        .expect("short holds");
    let lapsed_while_down = killed_at < first_short_expiry;
    sleep_until(last_short_expiry + chrono::Duration::milliseconds(50)).await;

    let restarted_at = Utc::now();
    let server = Server::start(url, dir).await;

    for hold in &long {
        let found = server.hold_by_id(&hold.id).await;
        assert_eq!(
            found["status"], "ACTIVE",
            "long hold after restart: {found}"
        );
        assert_eq!(
            found["expiresAt"], hold.expires_at_text,
            "long hold kept its expiresAt: {found}"
        );
        assert!(
            found["endedAt"].is_null(),
            "long hold has not ended: {found}"
        );
    }
    let mut ended = Vec::new();
    for hold in &short {
        let found = server.hold_by_id(&hold.id).await;
        assert_eq!(
            found["status"], "EXPIRED",
            "short hold after restart: {found}"
        );
        ended.push(found["endedAt"].clone());
        assert_eq!(found["expiresAt"], hold.expires_at_text, "{found}");
        let ended_at = instant(&found["endedAt"]);
        assert!(
            ended_at >= hold.expires_at,
            "expired before its expiresAt: {found}"
        );
        if lapsed_while_down {
            // Nobody could expire it before the restart.
            assert!(
                ended_at >= restarted_at,
                "expired by a dead server at {ended_at}, restarted at {restarted_at}: {found}"
            );
        }
    }
    let availability = server.availability(&ticket_type_id).await;
    assert_eq!(
        availability,
        json!({
            "capacity": CAPACITY,
            "sold": 0,
            "held": LONG_HOLDS,
            "available": CAPACITY - LONG_HOLDS as i64,
        })
    );

    // Read again: an expiry happens once, its end time does not move.
    for (hold, ended_at) in short.iter().zip(&ended) {
        let again = server.hold_by_id(&hold.id).await;
        assert_eq!(again["status"], "EXPIRED", "{again}");
        assert_eq!(&again["endedAt"], ended_at, "{again}");
    }
    drop(server);
    assert_verify_ok(url);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_server_gracefully_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
    let server = Server::start(&url, dir.path()).await;
    let event_id = server.create_event("Graceful Night").await;
    let ticket_type_id = server.create_ticket_type(&event_id, 10).await;
    let hold = server.hold(&event_id, &ticket_type_id, "c-term", 600).await;

    // The client keeps its keep-alive connection open while the server stops.
    let status = server.terminate().await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );

    let server = Server::start(&url, dir.path()).await;
    let found = server.hold_by_id(&hold.id).await;
    assert_eq!(found["status"], "ACTIVE", "{found}");
    assert_eq!(found["expiresAt"], hold.expires_at_text, "{found}");
    assert_eq!(server.availability(&ticket_type_id).await["held"], 1);
    drop(server);
    assert_verify_ok(&url);
}

/// An acknowledged hold: its id and `expiresAt`, as sent and parsed.
struct Acked {
    id: String,
    expires_at_text: Value,
    expires_at: DateTime<Utc>,
}

/// The real binary, serving on a port of its own; killed when dropped, whatever happens.
struct Server {
    child: Child,
    addr: SocketAddr,
    http: reqwest::Client,
    log: PathBuf,
}

impl Server {
    /// Starts `tickethold serve` on the database at `url` and waits until it is ready.
    async fn start(url: &str, dir: &Path) -> Server {
        // A free port can be taken by someone else before the server binds it: try another.
        for _ in 0..3 {
            let addr = free_port();
            let log = dir.join(format!("serve-{}.log", addr.port()));
            let mut server = Server {
                child: spawn_serve(url, addr, &log),
                addr,
                http: reqwest::Client::new(),
                log,
            };
            match server.wait_ready().await {
                Ok(()) => return server,
                Err(status) if server.log_text().contains("cannot listen") => {
                    eprintln!("port {addr} was taken ({status}); trying another");
                }
                Err(status) => panic!(
                    "the server exited before it was ready ({status}):\n{}",
                    server.log_text()
                ),
            }
        }
        panic!("no free port found in three tries");
    }

    /// Polls `/readyz` until it answers 200; `Err` when the process exits first.
    async fn wait_ready(&mut self) -> Result<(), ExitStatus> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(status);
            }
            let ready = self.http.get(self.url("/readyz")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "the server at {} was not ready within {READY_TIMEOUT:?}:\n{}",
                self.addr,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and reap the process.
    fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }

    /// SIGTERM, then waits for the process to exit, at most `EXIT_TIMEOUT`.
    async fn terminate(mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed: {sent}");
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit within {EXIT_TIMEOUT:?} of SIGTERM:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A query or mutation over HTTP; the whole response.
    async fn gql(&self, query: &str, variables: Value) -> Value {
        let response = self
            .http
            .post(self.url("/graphql"))
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .expect("POST /graphql");
        assert!(response.status().is_success(), "HTTP {}", response.status());
        response.json().await.expect("JSON response")
    }

    async fn create_event(&self, name: &str) -> String {
        let r = self
            .gql(
                "mutation($n:String!){createEvent(input:{name:$n}){id}}",
                json!({"n": name}),
            )
            .await;
        support::data(&r)["createEvent"]["id"]
            .as_str()
            .expect("event id")
            .to_owned()
    }

    async fn create_ticket_type(&self, event_id: &str, capacity: i64) -> String {
        let r = self
            .gql(
                "mutation($e:ID!,$c:Int!){createTicketType(input:{eventId:$e,name:\"GA\",\
                 priceCents:4500,capacity:$c}){id}}",
                json!({"e": event_id, "c": capacity}),
            )
            .await;
        support::data(&r)["createTicketType"]["id"]
            .as_str()
            .expect("ticket type id")
            .to_owned()
    }

    /// One ticket for `customer_id`, which must be acknowledged.
    async fn hold(
        &self,
        event_id: &str,
        ticket_type_id: &str,
        customer_id: &str,
        ttl: i64,
    ) -> Acked {
        let r = self
            .gql(
                "mutation($e:ID!,$c:ID!,$t:ID!,$ttl:Int){holdTickets(input:{eventId:$e,\
                 customerId:$c,items:[{ticketTypeId:$t,quantity:1}],ttlSeconds:$ttl})\
                 {id status expiresAt}}",
                json!({"e": event_id, "c": customer_id, "t": ticket_type_id, "ttl": ttl}),
            )
            .await;
        let hold = &support::data(&r)["holdTickets"];
        assert_eq!(hold["status"], "ACTIVE", "{r}");
        Acked {
            id: hold["id"].as_str().expect("hold id").to_owned(),
            expires_at_text: hold["expiresAt"].clone(),
            expires_at: instant(&hold["expiresAt"]),
        }
    }

    async fn hold_by_id(&self, id: &str) -> Value {
        let r = self
            .gql(
                "query($id:ID!){hold(id:$id){id status expiresAt endedAt}}",
                json!({"id": id}),
            )
            .await;
        let hold = support::data(&r)["hold"].clone();
        assert!(hold.is_object(), "hold {id} is missing after the restart");
        hold
    }

    async fn availability(&self, ticket_type_id: &str) -> Value {
        let r = self
            .gql(
                "query($t:ID!){availability(ticketTypeId:$t){capacity sold held available}}",
                json!({"t": ticket_type_id}),
            )
            .await;
        support::data(&r)["availability"].clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_serve(url: &str, addr: SocketAddr, log: &Path) -> Child {
    let out = File::create(log).expect("create the server log");
    let err: File = out.try_clone().expect("clone the log handle");
    Command::new(BINARY)
        .arg("serve")
        .env("DATABASE_URL", url)
        .env("TICKETHOLD_LISTEN", addr.to_string())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn tickethold serve")
}

/// A port nobody listens on right now.
fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr")
}

/// `tickethold verify` on the database at `url` finds every counter right.
fn assert_verify_ok(url: &str) {
    let output = Command::new(BINARY)
        .arg("verify")
        .env("DATABASE_URL", url)
        .output()
        .expect("run tickethold verify");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "verify failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.starts_with("ok"), "verify printed: {stdout}");
}

fn instant(value: &Value) -> DateTime<Utc> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a DateTime: {value}"));
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

/// Sleeps until the wall clock reaches `at` (at once if it already has).
async fn sleep_until(at: DateTime<Utc>) {
    if let Ok(left) = (at - Utc::now()).to_std() {
        tokio::time::sleep(left).await;
    }
}
