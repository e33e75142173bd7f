//! A private `redis-server` for tests that restart, flush or kill Redis, or need keyspace
//! notifications, and a private Redis Cluster: on free ports, in temp folders, never the
//! machine's shared Redis.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    append_only: bool,
    cluster: bool,
}

impl RedisServer {
    /// Without persistence (`save ""`, no AOF), notifications of expired keys on.
    pub fn start() -> RedisServer {
        RedisServer::launch(false)
    }

    /// With AOF and `appendfsync everysec`, the production setting.
    pub fn start_with_aof() -> RedisServer {
        RedisServer::launch(true)
    }

    fn launch(append_only: bool) -> RedisServer {
        RedisServer::launch_node(append_only, false)
    }

    /// On a port free a moment ago, which another process (a test's client connecting out, say)
    /// may take before `redis-server` binds it: then again on another.
    fn launch_node(append_only: bool, cluster: bool) -> RedisServer {
        for _ in 0..5 {
            // A folder of its own for each attempt: a cluster node writes its config at start.
            let mut server = RedisServer {
                child: None,
                port: if cluster {
                    free_cluster_port()
                } else {
                    free_port()
                },
                dir: tempfile::tempdir().expect("temp dir"),
                append_only,
                cluster,
            };
            if server.try_spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any of five free ports");
    }

    fn spawn(&mut self) {
        assert!(
            self.try_spawn(),
            "redis-server on port {} did not start",
            self.port
        );
    }

    /// Starts `redis-server` on `self.port`; false if it exits or does not answer within 10 s.
    fn try_spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", if self.append_only { "yes" } else { "no" }])
            .args([
                "--appendfsync",
                "everysec",
                "--notify-keyspace-events",
                "Ex",
            ])
            .args(if self.cluster {
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ][..]
            } else {
                &[][..]
            })
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut conn) = self.client().get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return true;
            }
            let exited = self.child.as_mut().map(|child| child.try_wait());
            if let Some(Ok(Some(_))) = exited {
                self.child = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("client")
    }

    /// `kill -9`: whatever was not persisted is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// Kills the server and starts it again on the same port and folder.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Stops the server cleanly (SHUTDOWN: the AOF is written) and starts it again.
    pub fn shutdown_and_restart(&mut self) {
        if let Ok(mut conn) = self.client().get_connection() {
            let _: Result<(), _> = redis::cmd("SHUTDOWN").query(&mut conn);
        }
        if let Some(mut child) = self.child.take() {
            child.wait().ok();
        }
        self.spawn();
    }

    /// Runs one command on this server.
    pub fn command(&self, args: &[&str]) -> redis::Value {
        let mut conn = self.client().get_connection().expect("connect");
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query(&mut conn).expect("command")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A free port whose cluster bus port (10,000 above it) is free too and exists.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        let bus_free = port
            .checked_add(10_000)
            .is_some_and(|bus| std::net::TcpListener::bind(("127.0.0.1", bus)).is_ok());
        if bus_free {
            return port;
        }
    }
}

/// A Redis Cluster of three primaries (no replicas), each a private `redis-server`.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::launch_node(false, true))
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli is installed");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info = node.command(&["CLUSTER", "INFO"]);
                let text = match info {
                    redis::Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                    redis::Value::VerbatimString { text, .. } => text,
                    other => format!("{other:?}"),
                };
                if text.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster never became ready: {text}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    /// The seed nodes, comma-separated, as `--redis-url` takes them.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}
