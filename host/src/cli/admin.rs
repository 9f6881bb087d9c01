//! `tollgate admin …`: admin plane helpers.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Subcommand;

use super::admin_client::read_secret;

#[derive(Subcommand)]
pub(super) enum AdminCommand {
    /// Print the argon2 hash of a password, for `admin.users[].password_hash`. On a terminal it
    /// asks twice without echoing; from a pipe it reads the first line.
    HashPassword,
}

pub(super) fn hash_password() -> ExitCode {
    let password = match read_secret("Password (12 characters or more): ") {
        Ok(p) => p,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if password.chars().count() < 12 {
        eprintln!("the password must be at least 12 characters");
        return ExitCode::FAILURE;
    }
    if std::io::stdin().is_terminal() {
        match read_secret("The same again: ") {
            Ok(again) if again == password => {}
            Ok(_) => {
                eprintln!("the two passwords differ; nothing printed");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprint!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
    match crate::admin::auth::hash_password(&password) {
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
