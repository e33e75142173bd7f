//! One connection type for a single Redis (with Sentinel or a replica in front, or alone) and
//! for Redis Cluster, so that every command and script is written once. A cluster routes each
//! command by its key's slot; every key of an event shares the hash tag `{event-id}`, so a
//! script of one event runs on the node that holds all its keys.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::store::{StoreError, StoreResult};

/// Where the Redis flow's data lives.
#[derive(Clone)]
pub enum Topology {
    Single(redis::Client),
    /// The seed nodes of a cluster.
    Cluster(Vec<redis::Client>),
}

impl Topology {
    /// A comma-separated list of URLs is a cluster; one URL is a single Redis, or a cluster
    /// with `cluster` set.
    pub fn parse(urls: &str, cluster: bool) -> StoreResult<Topology> {
        let clients = urls
            .split(',')
            .map(|url| redis::Client::open(url.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        match clients.len() {
            0 => Err(StoreError::Unavailable("no Redis URL".into())),
            1 if !cluster => Ok(Topology::Single(
                clients.into_iter().next().expect("one client"),
            )),
            _ => Ok(Topology::Cluster(clients)),
        }
    }

    /// A client of one node, for what a cluster cannot route (pub/sub of one node, blocking
    /// reads): the single Redis, or the first seed node.
    pub fn first_node(&self) -> &redis::Client {
        match self {
            Topology::Single(client) => client,
            Topology::Cluster(seeds) => &seeds[0],
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Topology::Cluster(_))
    }

    /// A shared, reconnecting connection, every command bounded by `timeout`.
    pub async fn connect(&self, timeout: Duration) -> StoreResult<Conn> {
        let connect = async {
            match self {
                Topology::Single(client) => {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(timeout))
                        .set_response_timeout(Some(timeout))
                        .set_number_of_retries(2);
                    Ok(Conn::Single(
                        client.get_connection_manager_with_config(config).await?,
                    ))
                }
                Topology::Cluster(seeds) => {
                    let infos = seeds.iter().map(|c| c.get_connection_info().clone());
                    let cluster = ClusterClient::builder(infos)
                        .connection_timeout(timeout)
                        .response_timeout(timeout)
                        .retries(2)
                        .build()?;
                    Ok(Conn::Cluster(cluster.get_async_connection().await?))
                }
            }
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| StoreError::Unavailable("Redis did not answer in time".into()))?
    }

    /// The primaries of the cluster (each announces only its own keys' expiries), or the
    /// single Redis.
    pub async fn primaries(&self, conn: &mut Conn) -> StoreResult<Vec<redis::Client>> {
        let Topology::Cluster(_) = self else {
            return Ok(vec![self.first_node().clone()]);
        };
        let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await?;
        let mut primaries = Vec::new();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(address), Some(flags)) = (fields.get(1), fields.get(2)) else {
                continue;
            };
            if flags.contains("master") && !flags.contains("fail") {
                // `ip:port@cport[,hostname]`; the seed's credentials and settings carry over.
                let host_port = address.split('@').next().unwrap_or_default();
                let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "6379"));
                let Ok(port) = port.parse::<u16>() else {
                    continue;
                };
                let info = self.first_node().get_connection_info().clone();
                let addr = match info.addr() {
                    redis::ConnectionAddr::TcpTls {
                        insecure,
                        tls_params,
                        ..
                    } => redis::ConnectionAddr::TcpTls {
                        host: host.to_owned(),
                        port,
                        insecure: *insecure,
                        tls_params: tls_params.clone(),
                    },
                    _ => redis::ConnectionAddr::Tcp(host.to_owned(), port),
                };
                primaries.push(redis::Client::open(info.set_addr(addr))?);
            }
        }
        Ok(primaries)
    }
}

/// A connection to a single Redis or to a cluster, cheap to clone.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}
