//! Logging setup: human-readable lines by default, JSON lines with `LOG_FORMAT=json`; and
//! OTLP trace export when the standard OpenTelemetry variables ask for it (see [`crate::trace`]).
//!
//! Lines go to an in-process buffer that the consumer loop flushes after every batch and
//! before every blocking read, so a busy service writes its log in a few large writes instead
//! of one syscall (or one cross-thread wakeup) per line, and an idle one never holds a line back.

use std::io::{BufWriter, Stdout, Write};
use std::sync::{Mutex, MutexGuard, OnceLock};

use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing::{Dispatch, Subscriber};
use tracing_subscriber::filter::{filter_fn, FilterExt as _, LevelFilter};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

use crate::trace::{self, OtlpSettings, TraceSetupError};

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

/// Flushes buffered spans and log lines when dropped (keep it alive for the life of `main`).
#[must_use = "dropping the guard flushes spans and logs; keep it until main returns"]
pub struct TelemetryGuard {
    traces: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.traces.take() {
            if let Err(e) = provider.shutdown() {
                tracing::warn!("Trace export did not flush on exit: {e}");
            }
        }
        flush_logs();
    }
}

/// The level directive: `RUST_LOG`, else the service's own level variable (e.g.
/// `INTENT_BRIDGE_LOG_LEVEL`), else `info`.
fn level_filter(service_level: Option<&str>) -> EnvFilter {
    let directive = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| service_level.map(|l| l.to_ascii_lowercase()))
        .unwrap_or_else(|| "info".to_string());
    EnvFilter::try_new(&directive).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs log output only (for tools such as `quantumctl`).
pub fn init_logging(service_level: Option<&str>) -> TelemetryGuard {
    install(level_filter(service_level), None);
    TelemetryGuard { traces: None }
}

/// Installs log output and, when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, OTLP trace export as `service`
/// (`OTEL_SERVICE_NAME` overrides it).
///
/// # Errors
/// OTLP settings that are invalid, or an exporter that cannot be built.
pub fn init(service: &str, service_level: Option<&str>) -> Result<TelemetryGuard, TraceSetupError> {
    let Some(settings) = OtlpSettings::from_env(service)? else {
        install(level_filter(service_level), None);
        tracing::info!("Trace export: off (set OTEL_EXPORTER_OTLP_ENDPOINT to export OTLP traces)");
        return Ok(TelemetryGuard { traces: None });
    };
    let provider = settings.provider()?;
    let filter = level_filter(service_level);
    let events = filter.max_level_hint().unwrap_or(LevelFilter::INFO);
    install(filter, Some((trace::tracer(&provider), events)));
    tracing::info!(
        "Trace export: OTLP http/protobuf to {} as service.name={}",
        settings.endpoint,
        settings.service_name
    );
    Ok(TelemetryGuard { traces: Some(provider) })
}

fn install(filter: EnvFilter, traces: Option<(SdkTracer, LevelFilter)>) {
    let _ = subscriber(filter, traces).try_init();
}

/// Log lines through `filter`, plus the trace layer when there is a tracer.
fn subscriber(filter: EnvFilter, traces: Option<(SdkTracer, LevelFilter)>) -> Dispatch {
    match traces {
        None => {
            // Nothing wants the pipeline's spans: turning their target off in the one global
            // filter makes their callsites never-enabled, and log events take the plain path.
            let filter = match format!("{}=off", trace::TARGET).parse() {
                Ok(directive) => filter.add_directive(directive),
                Err(_) => filter,
            };
            Dispatch::new(tracing_subscriber::registry().with(filter).with(log_lines()))
        }
        Some((tracer, events)) => {
            // The pipeline's spans are for traces only: log lines look the same with tracing on.
            let lines = log_lines().with_filter(filter.and(filter_fn(|meta| !trace::is_pipeline_span(meta))));
            Dispatch::new(
                tracing_subscriber::registry()
                    .with(lines)
                    .with(trace::layer(tracer, events)),
            )
        }
    }
}

/// The log line formatter: text, or JSON with `LOG_FORMAT=json`.
fn log_lines<S>() -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(BufferedStdout)
        .with_target(false)
        .with_ansi(false);
    if json {
        lines.json().flatten_event(true).boxed()
    } else {
        lines.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quantum_model::stream_entry::StreamEntry;

    #[test]
    fn with_export_off_the_pipeline_spans_are_never_built() {
        tracing::dispatcher::with_default(&subscriber(EnvFilter::new("trace"), None), || {
            let span = trace::entry_span("test", "s", &StreamEntry::new("1-0", &[]));
            assert!(span.is_disabled());
            assert!(tracing::enabled!(tracing::Level::INFO), "log lines stay on");
        });
    }

    #[test]
    fn with_export_on_the_pipeline_spans_are_built() {
        let provider = SdkTracerProvider::builder().build();
        let traces = Some((trace::tracer(&provider), LevelFilter::INFO));
        tracing::dispatcher::with_default(&subscriber(EnvFilter::new("warn"), traces), || {
            let span = trace::entry_span("test", "s", &StreamEntry::new("1-0", &[]));
            assert!(!span.is_disabled());
        });
    }
}
