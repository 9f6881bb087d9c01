//! `tollgate check` and `tollgate key-id`.

use std::process::ExitCode;

use super::{async_runtime, build, load_checked, report};
use crate::config::Config;

pub(super) fn check(path: &std::path::Path) -> ExitCode {
    let checked = load_checked(path).and_then(|config| {
        async_runtime()?
            .block_on(build(path, &config, true))
            .map(drop)
    });
    report(checked.map(|()| format!("{}: ok", path.display())))
}

pub(super) fn key_id(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let key = match super::admin_client::read_secret("Client key: ") {
        Ok(k) => k,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if config.auth.secret.expose() == crate::config::DEMO_SECRET
        && let Ok(Some(env_file)) = crate::config::env_file::load()
    {
        // On a host with a deployment's environment file, the development secret means
        // TOLLGATE_SECRET is missing there: this id would match no running gateway's.
        eprintln!(
            "auth.secret is the development default, so TOLLGATE_SECRET is set neither here nor in {}: the id would not be the deployed gateway's",
            env_file.display()
        );
        return ExitCode::FAILURE;
    }
    let ring = crate::pipeline::auth::KeyRing::standalone(&config.auth);
    println!(
        "{}",
        ring.id_of(key.trim_end_matches(['\r', '\n'])).to_hex()
    );
    ExitCode::SUCCESS
}
