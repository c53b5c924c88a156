//! Logging setup: human-readable lines by default, JSON lines with `LOG_FORMAT=json`.
//!
//! Lines go to an in-process buffer that the consumer loop flushes after every batch and
//! before every blocking read, so a busy service writes its log in a few large writes instead
//! of one syscall (or one cross-thread wakeup) per line, and an idle one never holds a line back.

use std::io::{BufWriter, Stdout, Write};
use std::sync::{Mutex, MutexGuard, OnceLock};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

const BUFFER_BYTES: usize = 256 * 1024;

fn buffer() -> MutexGuard<'static, BufWriter<Stdout>> {
    static BUFFER: OnceLock<Mutex<BufWriter<Stdout>>> = OnceLock::new();
    let lock = BUFFER.get_or_init(|| Mutex::new(BufWriter::with_capacity(BUFFER_BYTES, std::io::stdout())));
    // A panic while holding the lock leaves whole lines in the buffer: still safe to write.
    lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Writes buffered log lines to stdout.
pub fn flush_logs() {
    let _ = buffer().flush();
}

/// The writer tracing formats into.
#[derive(Debug, Clone, Copy, Default)]
pub struct BufferedStdout;

impl Write for BufferedStdout {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        buffer().write(bytes)
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        buffer().write_all(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        buffer().flush()
    }
}

impl<'a> MakeWriter<'a> for BufferedStdout {
    type Writer = BufferedStdout;

    fn make_writer(&'a self) -> Self::Writer {
        BufferedStdout
    }
}

/// Flushes the log buffer when dropped (keep it alive for the life of `main`).
#[must_use = "dropping the guard flushes the logs; keep it until main returns"]
pub struct LogGuard;

impl Drop for LogGuard {
    fn drop(&mut self) {
        flush_logs();
    }
}

/// Installs the global subscriber. The level comes from `RUST_LOG`, else from the service's
/// own level variable (e.g. `INTENT_BRIDGE_LOG_LEVEL`), else `info`.
pub fn init_logging(service_level: Option<&str>) -> LogGuard {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| service_level.map(|l| l.to_ascii_lowercase()))
        .unwrap_or_else(|| "info".to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(BufferedStdout)
        .with_target(false)
        .with_ansi(false);
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    if json {
        let _ = builder.json().flatten_event(true).try_init();
    } else {
        let _ = builder.try_init();
    }
    LogGuard
}
