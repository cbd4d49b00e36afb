//! Logging: `tracing` with the filter from `RUST_LOG` (default `info`), written to stdout by a
//! background thread so that a slow terminal or pipe never holds up a request.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::FmtSpan;

/// Installs the subscriber. Keep the guard until exit: dropping it flushes what is queued.
pub fn init() -> Option<WorkerGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    // At debug, every store operation (`users.get`, …) and each step of placing an order is a
    // span whose closing line gives its time, so a slow request's log says which step was slow.
    // At the default level those spans are off and cost nothing.
    let spans = if filter.max_level_hint() >= Some(LevelFilter::DEBUG) {
        FmtSpan::CLOSE
    } else {
        FmtSpan::NONE
    };
    // A second call (tests start several servers in one process) keeps the first subscriber.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_span_events(spans)
        .with_ansi(false)
        .with_writer(writer)
        .try_init()
        .ok()
        .map(|()| guard)
}
