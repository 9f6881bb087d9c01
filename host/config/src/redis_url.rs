//! `storage.cache` URLs for Redis: one server, a Sentinel-managed primary, or a Cluster.
//!
//! | form | meaning |
//! |---|---|
//! | `redis://[[user]:pass@]host[:6379][/db]` | one server (`rediss://`: TLS) |
//! | `redis+sentinel://[[user]:pass@]s1[:26379],s2,…/PRIMARY[/db][?sentinel_password=…&sentinel_username=…]` | the primary named `PRIMARY` that these Sentinels elect; found again after a failover |
//! | `redis+cluster://[[user]:pass@]n1[:6379],n2,…` | a Redis Cluster, from any of these seed nodes |
//!
//! `rediss+sentinel://` and `rediss+cluster://` use TLS to every node (and, for Sentinel, to the
//! Sentinels). The credentials are the data nodes'; Sentinels take their own in the query.

use std::fmt;

/// What kind of deployment the URL names.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One server (or a proxy in front of several).
    Single,
    /// Sentinels (`host:port`) and the primary's name.
    Sentinel {
        sentinels: Vec<(String, u16)>,
        primary: String,
        sentinel_username: Option<String>,
        sentinel_password: Option<String>,
    },
    /// Seed nodes (`host:port`) of a Redis Cluster.
    Cluster { nodes: Vec<(String, u16)> },
}

impl fmt::Debug for RedisTopology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single => f.write_str("Single"),
            Self::Sentinel {
                sentinels, primary, ..
            } => write!(f, "Sentinel({primary} via {sentinels:?})"),
            Self::Cluster { nodes } => write!(f, "Cluster({nodes:?})"),
        }
    }
}

/// A parsed Redis URL. `Debug` hides the passwords.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub topology: RedisTopology,
    pub tls: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: i64,
    /// The URL as written (for a single server, handed to the client as is).
    pub raw: String,
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.topology {
            RedisTopology::Single => "single".to_owned(),
            RedisTopology::Sentinel {
                sentinels, primary, ..
            } => {
                format!("sentinel {primary} via {} sentinels", sentinels.len())
            }
            RedisTopology::Cluster { nodes } => format!("cluster of {} seeds", nodes.len()),
        };
        write!(f, "RedisUrl({kind}, tls: {})", self.tls)
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a malformed %-escape")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a %-escape that is not UTF-8".to_owned())
}

/// `host[:port]` (IPv6 in brackets) with `default_port`.
fn host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or("an unclosed `[` in a host")?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(format!("unexpected {after:?} after [{h}]")),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err("an empty host".into());
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("invalid port {p:?}"))?,
        None => default_port,
    };
    Ok((host.to_owned(), port))
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or("must start with redis://, rediss://, redis+sentinel:// or redis+cluster://")?;
        let (tls, kind) = match scheme {
            "redis" => (false, "single"),
            "rediss" => (true, "single"),
            "redis+sentinel" => (false, "sentinel"),
            "rediss+sentinel" => (true, "sentinel"),
            "redis+cluster" => (false, "cluster"),
            "rediss+cluster" => (true, "cluster"),
            other => {
                return Err(format!(
                    "unknown scheme {other:?} (redis, rediss, redis+sentinel, rediss+sentinel, redis+cluster or rediss+cluster)"
                ));
            }
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((u, r)) => (Some(u), r),
            None => (None, rest),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                let user = percent_decode(user)?;
                let pass = percent_decode(pass)?;
                (
                    (!user.is_empty()).then_some(user),
                    (!pass.is_empty()).then_some(pass),
                )
            }
        };
        let (hosts, path) = match rest.split_once('/') {
            Some((h, p)) => (h, p),
            None => (rest, ""),
        };
        let mut params = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            params.push((k.to_owned(), percent_decode(v)?));
        }
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let db_of = |s: &str| -> Result<i64, String> {
            if s.is_empty() {
                Ok(0)
            } else {
                s.parse()
                    .map_err(|_| format!("invalid database number {s:?}"))
            }
        };
        let list = |default_port: u16| -> Result<Vec<(String, u16)>, String> {
            let list: Vec<(String, u16)> = hosts
                .split(',')
                .map(|h| host_port(h.trim(), default_port))
                .collect::<Result<_, _>>()?;
            Ok(list)
        };
        let (topology, db) = match kind {
            "single" => {
                if hosts.contains(',') {
                    return Err("several hosts need redis+sentinel:// or redis+cluster://".into());
                }
                host_port(hosts, 6379)?;
                (RedisTopology::Single, db_of(path)?)
            }
            "sentinel" => {
                let (primary, db) = path.split_once('/').unwrap_or((path, ""));
                if primary.is_empty() {
                    return Err("a Sentinel URL names the primary: redis+sentinel://s1:26379,s2:26379/mymaster".into());
                }
                (
                    RedisTopology::Sentinel {
                        sentinels: list(26379)?,
                        primary: percent_decode(primary)?,
                        sentinel_username: param("sentinel_username"),
                        sentinel_password: param("sentinel_password"),
                    },
                    db_of(db)?,
                )
            }
            _ => {
                if !path.is_empty() {
                    return Err("a Cluster has only database 0: no /path".into());
                }
                (RedisTopology::Cluster { nodes: list(6379)? }, 0)
            }
        };
        // A single server's URL goes to the client as is, so its own parameters apply; the
        // other forms know only the Sentinels' credentials.
        if kind != "single" {
            for (k, _) in &params {
                let known = kind == "sentinel"
                    && matches!(k.as_str(), "sentinel_password" | "sentinel_username");
                if !known {
                    return Err(format!("unknown parameter {k:?}"));
                }
            }
        }
        Ok(Self {
            topology,
            tls,
            username,
            password,
            db,
            raw: url.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_form() {
        let u = RedisUrl::parse("rediss://:p%40ss@cache:6380/2").unwrap();
        assert_eq!(
            (u.topology, u.tls, u.password.as_deref(), u.db),
            (RedisTopology::Single, true, Some("p@ss"), 2)
        );
        let u = RedisUrl::parse(
            "redis+sentinel://app:pw@s1,s2:26380,[::1]:26381/main/3?sentinel_password=sp",
        )
        .unwrap();
        assert_eq!(u.username.as_deref(), Some("app"));
        assert_eq!(u.db, 3);
        assert_eq!(
            u.topology,
            RedisTopology::Sentinel {
                sentinels: vec![
                    ("s1".into(), 26379),
                    ("s2".into(), 26380),
                    ("::1".into(), 26381)
                ],
                primary: "main".into(),
                sentinel_username: None,
                sentinel_password: Some("sp".into()),
            }
        );
        let u = RedisUrl::parse("rediss+cluster://n1:7000,n2:7001").unwrap();
        assert!(u.tls);
        assert_eq!(
            u.topology,
            RedisTopology::Cluster {
                nodes: vec![("n1".into(), 7000), ("n2".into(), 7001)]
            }
        );
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for (url, why) in [
            ("redis+sentinel://s1:26379", "names the primary"),
            ("redis+cluster://n1/2", "only database 0"),
            ("redis://a,b", "several hosts"),
            ("redis+cluster://n1:x", "invalid port"),
            ("memcached://x", "unknown scheme"),
            ("redis+sentinel://s1/m?password=x", "unknown parameter"),
        ] {
            let e = RedisUrl::parse(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
    }
}
