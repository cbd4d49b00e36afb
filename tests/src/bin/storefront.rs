//! The service's own entry point, built inside this package so that the process-level tests
//! (start-up failure, signals) can find it through `CARGO_BIN_EXE_storefront`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    api::cli::main().await
}
