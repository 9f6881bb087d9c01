//! A header-rewrite policy: changes the headers of the request sent upstream and of the
//! response sent to the client.
use tollgate_sdk::{Header, HeaderOp, HeaderRewrite, Phases, Plugin, Request, Response};

/// The plugin's config (the `config:` of its entry in the gateway's YAML), read once.
#[derive(tollgate_sdk::Deserialize, Default)]
#[serde(crate = "tollgate_sdk::serde", default, deny_unknown_fields)]
struct Config {
    /// Header set on every request sent upstream to the key's name, e.g. "x-team".
    key_header: String,
}

static CONFIG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();

struct Policy;

impl Plugin for Policy {
    /// Called once per loaded instance with the JSON config; an error refuses the plugin and the
    /// running version keeps serving.
    fn configure(config: String) -> Result<(), String> {
        let _ = CONFIG.set(tollgate_sdk::parse_config(&config)?);
        Ok(())
    }
}

impl HeaderRewrite for Policy {
    /// Asked once at load: the phases this plugin rewrites; the others are never called.
    fn rewrites() -> Phases {
        Phases::REQUEST
    }

    /// Called before each upstream attempt: operations on the headers sent upstream, in order.
    fn on_request(request: &Request) -> Vec<HeaderOp> {
        let name = &CONFIG.get_or_init(Config::default).key_header;
        if name.is_empty() {
            return Vec::new();
        }
        vec![HeaderOp::Set(Header {
            name: name.clone(),
            value: request.key_name(),
        })]
    }

    /// Called with the response head before it goes to the client (not called here: `rewrites`
    /// names only the request phase).
    fn on_response(_request: &Request, _response: &Response) -> Vec<HeaderOp> {
        Vec::new()
    }
}

tollgate_sdk::export!(Policy);
