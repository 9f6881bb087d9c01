//! The command line as a client of a running gateway's admin API, for what only the running
//! process knows (upstream health, its status, a reload): `tollgate status`, `reload`,
//! `upstreams`. It finds the admin listener in the config (`admin.listen`; `--admin-url`
//! overrides) and signs in with `TOLLGATE_ADMIN_TOKEN`, or as `--user` (default
//! `TOLLGATE_ADMIN_USER`, else the config's first admin user) with `TOLLGATE_ADMIN_PASSWORD` or
//! a password typed at a prompt that does not echo it.

use std::io::IsTerminal;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use crate::config::Config;
use crate::upstream::UpstreamClient;

/// How a command reaches the admin API.
#[derive(clap::Args, Clone)]
pub(crate) struct AdminArgs {
    /// The admin API's base URL (default: `http://` + `admin.listen`, on loopback when it
    /// listens on every address).
    #[arg(long, env = "TOLLGATE_ADMIN_URL", global = true)]
    admin_url: Option<String>,
    /// The admin user to sign in as (default: the config's first `admin.users` entry).
    #[arg(long, env = "TOLLGATE_ADMIN_USER", global = true)]
    user: Option<String>,
}

pub(crate) struct AdminClient {
    base: String,
    token: String,
    http: UpstreamClient,
}

impl AdminClient {
    /// Signs in to the admin API of the gateway `config` describes (`--admin-url` and
    /// `--user` suffice when the config file cannot be read: a broken file is what a reload is
    /// then asked about).
    pub(crate) async fn connect(
        config: Result<&Config, &str>,
        args: &AdminArgs,
    ) -> Result<Self, String> {
        let base = match (&args.admin_url, config) {
            (Some(u), _) => u.trim_end_matches('/').to_owned(),
            (None, Err(e)) => return Err(e.to_owned()),
            (None, Ok(config)) => {
                let mut addr = config.admin.listen.0;
                if addr.ip().is_unspecified() {
                    addr.set_ip(if addr.is_ipv4() {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                format!("http://{addr}")
            }
        };
        let http = UpstreamClient::new(Duration::from_secs(5));
        let mut client = Self {
            base,
            token: String::new(),
            http,
        };
        if let Ok(token) = std::env::var("TOLLGATE_ADMIN_TOKEN") {
            client.token = token;
            return Ok(client);
        }
        let user = args
            .user
            .clone()
            .or_else(|| config.ok()?.admin.users.first().map(|u| u.username.clone()))
            .ok_or("no admin user: give --user, or set TOLLGATE_ADMIN_TOKEN\n")?;
        let password = match std::env::var("TOLLGATE_ADMIN_PASSWORD") {
            Ok(p) => p,
            Err(_) => read_secret(&format!("Password for {user}: "))?,
        };
        let answer = client
            .call(
                http::Method::POST,
                "/admin/api/login",
                Some(serde_json::json!({"username": user, "password": password})),
            )
            .await?;
        client.token = answer["token"]
            .as_str()
            .ok_or("the login answered no token\n")?
            .to_owned();
        Ok(client)
    }

    pub(crate) async fn get(&self, path: &str) -> Result<Value, String> {
        self.call(http::Method::GET, path, None).await
    }

    /// Calls the API; the answer as JSON (`null` for none), or the API's error message.
    pub(crate) async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let mut headers = Vec::new();
        if !self.token.is_empty() {
            headers.push((
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            ));
        }
        let body = body.map(|b| ("application/json", Bytes::from(b.to_string())));
        let (status, value) = self
            .http
            .exchange_json(method, &url, &headers, body, Duration::from_secs(30))
            .await
            .map_err(|e| {
                format!("{url}: {e} (is the gateway running, and admin.listen reachable?)\n")
            })?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(format!(
                "{url}: {status}: {}\n",
                value["error"]["message"]
                    .as_str()
                    .unwrap_or(&value.to_string())
            ))
        }
    }
}

/// A secret typed at a prompt that does not echo it; on a pipe, its first line.
pub(crate) fn read_secret(prompt: &str) -> Result<String, String> {
    if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt)
            .map_err(|e| format!("cannot read from the terminal: {e}\n"))
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read stdin: {e}\n"))?;
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }
}

/// Asks a yes/no question on the terminal; `false` when stdin is not one (a script must pass
/// `--yes`).
pub(crate) fn confirm(question: &str) -> bool {
    if !std::io::stdin().is_terminal() {
        return false;
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).is_ok()
        && matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}
