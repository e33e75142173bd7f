//! The real `tickethold` binary, serving on a port of its own with the environment given; killed
//! when dropped, whatever happens. A GraphQL client through `Deref`.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::client::Client;

pub const BINARY: &str = env!("CARGO_BIN_EXE_tickethold");

/// How long a starting server may take to answer `/readyz` (migrations included).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Process {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    client: Client,
}

impl Process {
    /// Starts `tickethold serve` with the tests' JWT secret, no rate limits and `env`
    /// (DATABASE_URL, REDIS_URL, ...; it overrides the former), logging to a file in `dir`, and
    /// waits until it is ready.
    pub async fn start(env: &[(&str, String)], dir: &Path) -> Process {
        // A free port can be taken by someone else before the server binds it: try another.
        for _ in 0..3 {
            let addr = free_addr();
            let log = dir.join(format!("serve-{}.log", addr.port()));
            let mut process = Process {
                child: spawn_serve(env, addr, &log),
                addr,
                log,
                client: Client::new(format!("http://{addr}")),
            };
            match process.wait_ready().await {
                Ok(()) => return process,
                Err(status) if process.log_text().contains("cannot listen") => {
                    eprintln!("port {addr} was taken ({status}); trying another");
                }
                Err(status) => panic!(
                    "the server exited before it was ready ({status}):\n{}",
                    process.log_text()
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
            if self.client.ready().await {
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

    pub fn clone_client(&self) -> Client {
        self.client.clone()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and reap the process.
    pub fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }

    /// SIGTERM, then waits for the process to exit, at most `EXIT_TIMEOUT`.
    pub async fn terminate(mut self) -> ExitStatus {
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
}

impl std::ops::Deref for Process {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_serve(env: &[(&str, String)], addr: SocketAddr, log: &Path) -> Child {
    let out = File::create(log).expect("create the server log");
    let err: File = out.try_clone().expect("clone the log handle");
    Command::new(BINARY)
        .arg("serve")
        .envs(super::auth_env())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("TICKETHOLD_LISTEN", addr.to_string())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("spawn tickethold serve")
}

/// An address nobody listens on right now.
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr")
}

/// `tickethold verify` with `env` finds every counter right.
pub fn assert_verify_ok(env: &[(&str, String)]) {
    let output = Command::new(BINARY)
        .arg("verify")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
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
