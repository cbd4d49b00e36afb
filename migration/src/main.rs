#[tokio::main]
async fn main() -> std::process::ExitCode {
    migration::command::main().await
}
