//! Logging setup: human-readable lines by default, JSON lines with `LOG_FORMAT=json`.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. The level comes from `RUST_LOG`, else from the service's
/// own level variable (e.g. `INTENT_BRIDGE_LOG_LEVEL`), else `info`. Keep the guard alive:
/// dropping it flushes buffered lines.
pub fn init_logging(service_level: Option<&str>) -> WorkerGuard {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| service_level.map(|l| l.to_ascii_lowercase()))
        .unwrap_or_else(|| "info".to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // Blocking (not lossy) so that no contract log line is ever dropped under load.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(false);
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    if json {
        let _ = builder.json().flatten_event(true).try_init();
    } else {
        let _ = builder.try_init();
    }
    guard
}
