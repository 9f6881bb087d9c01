//! IP binding: the first request with a key binds the key to the client's network (the address
//! widened to `/prefix_v4` or `/prefix_v6`); later requests from outside it are refused with 403.
//! The binding table is the host's (atomic first use); this plugin only decides.
//! Config: `{"prefix_v4": 32, "prefix_v6": 64}` (the defaults).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use tollgate_sdk::host::{self, BindingMatch, BindingStatus, Level};
use tollgate_sdk::{BindingDecision, Denial, IpBinding, Plugin, Request};

#[derive(Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub prefix_v4: u8,
    pub prefix_v6: u8,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            prefix_v4: 32,
            prefix_v6: 64,
        }
    }
}

/// The network a first request from `ip` binds its key to.
pub fn network_of(ip: IpAddr, c: Config) -> Result<IpNet, String> {
    let prefix = if ip.is_ipv4() {
        c.prefix_v4
    } else {
        c.prefix_v6
    };
    IpNet::new(ip, prefix)
        .map(|n| n.trunc())
        .map_err(|e| e.to_string())
}

/// Whether `ip` is inside the bound `cidr`.
pub fn allowed(cidr: &str, ip: IpAddr) -> bool {
    cidr.parse::<IpNet>().is_ok_and(|net| net.contains(&ip))
}

fn deny(code: &str, message: &str) -> BindingDecision {
    BindingDecision::Deny(Denial {
        status: 403,
        code: code.into(),
        message: message.into(),
    })
}

static CONFIG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();

struct Binder;

impl Plugin for Binder {
    fn configure(config: String) -> Result<(), String> {
        let c: Config = tollgate_sdk::parse_config(&config)?;
        if c.prefix_v4 > 32 || c.prefix_v6 > 128 {
            return Err("prefix_v4 must be at most 32 and prefix_v6 at most 128".into());
        }
        let _ = CONFIG.set(c);
        Ok(())
    }
}

impl IpBinding for Binder {
    fn check(request: &Request) -> BindingDecision {
        // The host compares the address with the binding: nothing crosses on the usual path.
        match host::bindings::match_for(request) {
            BindingMatch::Inside => BindingDecision::Allow,
            BindingMatch::Banned => banned(),
            BindingMatch::Outside | BindingMatch::Unbound => first_use_or_elsewhere(request),
        }
    }
}

fn banned() -> BindingDecision {
    deny("key_banned", "this API key has been banned")
}

/// The rare paths, with the strings: a first use binds the key to the client's network (or finds
/// the binding a racing first request made), and a request from elsewhere is logged and refused.
fn first_use_or_elsewhere(request: &Request) -> BindingDecision {
    let Ok(ip) = request.client_ip().parse::<IpAddr>() else {
        return deny("ip_not_allowed", "client address not recognised");
    };
    let config = CONFIG.get().copied().unwrap_or_default();
    let binding = match host::bindings::get_for(request) {
        Some(b) => b,
        None => {
            let key_id = request.key_id();
            let net = match network_of(ip, config) {
                Ok(n) => n,
                Err(e) => return deny("ip_not_allowed", &e),
            };
            match host::bindings::bind_first(&key_id, &net.to_string()) {
                Ok(b) => b,
                Err(e) => {
                    host::log(Level::Error, &format!("binding failed: {e}"));
                    return deny(
                        "binding_unavailable",
                        "the key binding could not be recorded",
                    );
                }
            }
        }
    };
    if binding.status == BindingStatus::Banned {
        return banned();
    }
    if allowed(&binding.cidr, ip) {
        BindingDecision::Allow
    } else {
        let key_id = request.key_id();
        host::log(
            Level::Warn,
            &format!(
                "key {} used from {ip}, bound to {}",
                &key_id[..8.min(key_id.len())],
                binding.cidr
            ),
        );
        deny("ip_not_allowed", "this API key is bound to another network")
    }
}

tollgate_sdk::export!(Binder);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_use_widens_to_the_configured_prefix() {
        let c = Config {
            prefix_v4: 24,
            prefix_v6: 64,
        };
        assert_eq!(
            network_of("203.0.113.7".parse().unwrap(), c)
                .unwrap()
                .to_string(),
            "203.0.113.0/24"
        );
        assert_eq!(
            network_of("2001:db8::1:2".parse().unwrap(), c)
                .unwrap()
                .to_string(),
            "2001:db8::/64"
        );
    }

    #[test]
    fn only_addresses_inside_the_binding_are_allowed() {
        assert!(allowed("203.0.113.0/24", "203.0.113.200".parse().unwrap()));
        assert!(!allowed("203.0.113.0/24", "203.0.114.1".parse().unwrap()));
        assert!(!allowed("garbage", "203.0.113.1".parse().unwrap()));
    }
}
