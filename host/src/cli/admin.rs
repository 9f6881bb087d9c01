//! `tollgate admin …`: admin plane helpers.

use std::io::Read;
use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub(super) enum AdminCommand {
    /// Print the argon2 hash of the password read from stdin, for `admin.users[].password_hash`.
    HashPassword,
}

pub(super) fn hash_password() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("cannot read the password from stdin: {e}");
        return ExitCode::FAILURE;
    }
    let password = input.trim_end_matches(['\r', '\n']);
    if password.len() < 12 {
        eprintln!("the password must be at least 12 characters");
        return ExitCode::FAILURE;
    }
    match crate::admin::auth::hash_password(password) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
