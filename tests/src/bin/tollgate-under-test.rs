//! The gateway binary, built in this crate too so CLI tests can run it (`CARGO_BIN_EXE_tollgate`).

fn main() -> std::process::ExitCode {
    tollgate::cli::main()
}
