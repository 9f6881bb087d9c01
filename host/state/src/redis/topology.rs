//! How the cache reaches Redis: one server, the primary that Sentinels elect, or a Cluster
//! (`tollgate_config::redis_url`). Everything above this module sees one connection type, [`Conn`],
//! that runs commands and scripts against whichever it is.
//!
//! - **One server**: a self-reconnecting multiplexed connection.
//! - **Sentinel**: the Sentinels are asked for the primary's address on every (re)connect. A
//!   connection that fails is dropped (see [`Backend::follows_primary`]), so after a failover the
//!   next attempt asks the Sentinels again and reaches the promoted replica instead of the old
//!   address.
//! - **Cluster**: the client keeps the slot map and follows `MOVED`/`ASK` itself. Every key the
//!   gateway uses is a single key per command or script, so any key can live in any slot.
//!   Pub/sub uses a plain connection to one seed node at a time: a `PUBLISH` on any node of a
//!   cluster reaches subscribers on every node.

use std::path::Path;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisConnectionInfo,
    RedisFuture, RedisResult, TlsCertificates, Value,
};
use tollgate_config::RedisTls;
use tollgate_config::redis_url::{RedisTopology, RedisUrl};

use crate::{StoreError, StoreResult};

/// One connection of whichever kind.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

pub(super) enum Backend {
    Single(redis::Client),
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
    Cluster {
        client: ClusterClient,
        /// One client per seed node, for pub/sub.
        seeds: Vec<redis::Client>,
    },
}

/// The certificates `storage.redis_tls` names, read once.
fn certificates(tls: &RedisTls, base_dir: &Path) -> StoreResult<Option<TlsCertificates>> {
    let read = |p: &Path| {
        let path = base_dir.join(p);
        std::fs::read(&path)
            .map_err(|e| StoreError::new("redis", format!("{}: {e}", path.display())))
    };
    if tls.ca.is_none() && tls.cert.is_none() {
        return Ok(None);
    }
    let client_tls = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        (None, None) => None,
        _ => {
            return Err(StoreError::new(
                "redis",
                "storage.redis_tls: set both cert and key, or neither",
            ));
        }
    };
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert: tls.ca.as_deref().map(read).transpose()?,
    }))
}

fn addr(host: &str, port: u16, tls: bool) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host: host.to_owned(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host.to_owned(), port)
    }
}

fn info(url: &RedisUrl, host: &str, port: u16) -> ConnectionInfo {
    ConnectionInfo {
        addr: addr(host, port, url.tls),
        redis: RedisConnectionInfo {
            db: url.db,
            username: url.username.clone(),
            password: url.password.clone(),
            ..RedisConnectionInfo::default()
        },
    }
}

fn client(
    info: impl IntoConnectionInfo,
    certs: Option<&TlsCertificates>,
) -> RedisResult<redis::Client> {
    match certs {
        Some(c) => redis::Client::build_with_tls(info, c.clone()),
        None => redis::Client::open(info),
    }
}

impl Backend {
    pub(super) fn new(url: &str, tls: &RedisTls, base_dir: &Path) -> StoreResult<Self> {
        let parsed = RedisUrl::parse(url).map_err(|e| StoreError::new("redis", e))?;
        let certs = certificates(tls, base_dir)?;
        let err = |e: redis::RedisError| StoreError::new("redis", e);
        Ok(match &parsed.topology {
            RedisTopology::Single => Self::Single(client(url, certs.as_ref()).map_err(err)?),
            RedisTopology::Sentinel {
                sentinels,
                primary,
                sentinel_username,
                sentinel_password,
            } => {
                let tls_mode = parsed.tls.then_some(redis::TlsMode::Secure);
                let mut b = SentinelClientBuilder::new(
                    sentinels.iter().map(|(h, p)| addr(h, *p, parsed.tls)),
                    primary.clone(),
                    SentinelServerType::Master,
                )
                .map_err(err)?
                .set_client_to_redis_db(parsed.db);
                if let Some(mode) = tls_mode {
                    b = b
                        .set_client_to_redis_tls_mode(mode)
                        .set_client_to_sentinel_tls_mode(mode);
                }
                if let Some(c) = &certs {
                    b = b
                        .set_client_to_redis_certificates(c.clone())
                        .set_client_to_sentinel_certificates(c.clone());
                }
                if let Some(u) = &parsed.username {
                    b = b.set_client_to_redis_username(u.clone());
                }
                if let Some(p) = &parsed.password {
                    b = b.set_client_to_redis_password(p.clone());
                }
                if let Some(u) = sentinel_username {
                    b = b.set_client_to_sentinel_username(u.clone());
                }
                if let Some(p) = sentinel_password {
                    b = b.set_client_to_sentinel_password(p.clone());
                }
                Self::Sentinel(tokio::sync::Mutex::new(b.build().map_err(err)?))
            }
            RedisTopology::Cluster { nodes } => {
                let infos: Vec<ConnectionInfo> =
                    nodes.iter().map(|(h, p)| info(&parsed, h, *p)).collect();
                let mut b = ClusterClientBuilder::new(infos.clone());
                if let Some(c) = &certs {
                    b = b.certs(c.clone());
                }
                let seeds = infos
                    .into_iter()
                    .map(|i| client(i, certs.as_ref()))
                    .collect::<RedisResult<_>>()
                    .map_err(err)?;
                Self::Cluster {
                    client: b.build().map_err(err)?,
                    seeds,
                }
            }
        })
    }

    /// A fresh connection, each attempt and response bounded by `timeout`.
    pub(super) async fn connect(&self, timeout: Duration) -> RedisResult<Conn> {
        let manager = async |client: &redis::Client| {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout)
                .set_number_of_retries(1);
            client.get_connection_manager_with_config(config).await
        };
        match self {
            Self::Single(client) => manager(client).await.map(Conn::Single),
            Self::Sentinel(sentinel) => {
                // Asks the Sentinels where the primary is now.
                let primary = sentinel.lock().await.async_get_client().await?;
                manager(&primary).await.map(Conn::Single)
            }
            Self::Cluster { client, .. } => {
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout);
                client
                    .get_async_connection_with_config(config)
                    .await
                    .map(Conn::Cluster)
            }
        }
    }

    /// Whether a failed connection must be dropped and made again (Sentinel: the primary may
    /// have moved), rather than left to reconnect to the same address.
    pub(super) fn follows_primary(&self) -> bool {
        matches!(self, Self::Sentinel(_))
    }

    /// A client for a pub/sub connection; `attempt` rotates through a cluster's seed nodes.
    pub(super) async fn pubsub_client(&self, attempt: usize) -> RedisResult<redis::Client> {
        match self {
            Self::Single(client) => Ok(client.clone()),
            Self::Sentinel(sentinel) => sentinel.lock().await.async_get_client().await,
            Self::Cluster { seeds, .. } => Ok(seeds[attempt % seeds.len()].clone()),
        }
    }
}
