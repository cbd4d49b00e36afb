//! The migration command, built inside this package so that the tests can run two at once
//! through `CARGO_BIN_EXE_migrate`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    migration::command::main().await
}
