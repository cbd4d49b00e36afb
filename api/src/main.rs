/// The service allocates and frees small buffers on every request (headers, JSON, driver
/// messages); mimalloc's thread-local free lists serve those with less work than glibc's malloc.
/// BENCHMARKS.md's CPU tables show the difference per request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    api::cli::main().await
}
