//! Logging: `tracing` with the filter from `RUST_LOG` (default `info`), written to stdout by a
//! background thread so that a slow terminal or pipe never holds up a request.

use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Installs the subscriber. Keep the guard until exit: dropping it flushes what is queued.
pub fn init() -> Option<WorkerGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour for a person at a terminal; plain text for files, pipes and log collectors.
    let ansi = std::io::stdout().is_terminal();
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    // A second call (tests start several servers in one process) keeps the first subscriber.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(writer)
        .try_init()
        .ok()
        .map(|()| guard)
}
