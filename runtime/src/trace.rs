//! Distributed traces: one trace per intent, across bridge → executor → ledger.
//!
//! The bridge starts a trace for every intent (or continues the producer's, when the intent
//! entry carries a W3C `traceparent`). Its context travels in the `traceparent` field of the
//! plan; the executor continues it and writes its own context into the ledger.commit entries;
//! the ledger's span closes the trace.
//!
//! Spans use the [`TARGET`] target, which the log output never shows, so the contract's log
//! lines stay identical with tracing on. With OTLP export off no layer wants that target and
//! every span macro is a disabled-callsite check: no allocation, no clock read.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use thiserror::Error;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::{filter_fn, LevelFilter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use quantum_model::stream_entry::StreamEntry;

/// The `tracing` target of the pipeline's spans.
pub const TARGET: &str = "quantum::trace";
/// Stream field carrying the W3C trace context to the next stage.
pub const TRACEPARENT: &str = "traceparent";
/// Stream field carrying vendor trace state, when there is any.
pub const TRACESTATE: &str = "tracestate";
/// Instrumentation scope of the pipeline's spans.
pub const SCOPE: &str = "quantum-pipeline";

/// The services' `--help` note on trace export.
pub const HELP: &str = "Traces: set OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://127.0.0.1:4318) to export one trace per \
intent over OTLP http/protobuf; OTEL_SERVICE_NAME names the service (default: the binary's name). The other \
standard variables apply too: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS, \
OTEL_EXPORTER_OTLP_TIMEOUT, OTEL_TRACES_SAMPLER(_ARG), OTEL_BSP_*, OTEL_SDK_DISABLED.";

/// Why tracing could not be set up as the environment asks.
#[derive(Debug, Error)]
pub enum TraceSetupError {
    #[error("{var}={value}: this build exports OTLP over http/protobuf only (collector port 4318)")]
    Protocol { var: &'static str, value: String },
    #[error(
        "{var}={value}: the endpoint must be an http:// URL (this build has no TLS for OTLP; use a local collector)"
    )]
    Endpoint { var: &'static str, value: String },
    #[error("cannot build the OTLP span exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// OTLP export settings, read from the standard OpenTelemetry variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// `service.name` of the exported spans: `OTEL_SERVICE_NAME`, else the binary's name.
    pub service_name: String,
    /// Where spans go, as configured (for the startup log line).
    pub endpoint: String,
}

impl OtlpSettings {
    /// Reads the process environment; `None` means export is off.
    ///
    /// # Errors
    /// As [`OtlpSettings::from_vars`].
    pub fn from_env(default_service: &str) -> Result<Option<Self>, TraceSetupError> {
        Self::from_vars(|name| std::env::var(name).ok(), default_service)
    }

    /// Export is on when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// is set, unless `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
    ///
    /// # Errors
    /// An unsupported protocol or an invalid endpoint.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        default_service: &str,
    ) -> Result<Option<Self>, TraceSetupError> {
        let set = |name: &str| var(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return Ok(None);
        }
        let endpoint = match (
            set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            set("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(traces), _) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces),
            (None, Some(generic)) => ("OTEL_EXPORTER_OTLP_ENDPOINT", generic),
            (None, None) => return Ok(None),
        };
        if !endpoint.1.to_ascii_lowercase().starts_with("http://") {
            return Err(TraceSetupError::Endpoint {
                var: endpoint.0,
                value: endpoint.1,
            });
        }
        for protocol_var in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
            if let Some(protocol) = set(protocol_var) {
                if protocol != "http/protobuf" {
                    return Err(TraceSetupError::Protocol {
                        var: protocol_var,
                        value: protocol,
                    });
                }
                break;
            }
        }
        Ok(Some(Self {
            service_name: set("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service.to_string()),
            endpoint: endpoint.1,
        }))
    }

    /// A provider exporting in batches from a background thread (the OTel SDK also reads
    /// `OTEL_EXPORTER_OTLP_HEADERS`, `_TIMEOUT`, `OTEL_BSP_*` and `OTEL_TRACES_SAMPLER`).
    ///
    /// # Errors
    /// The exporter cannot be built.
    pub fn provider(&self) -> Result<SdkTracerProvider, TraceSetupError> {
        crate::config::install_crypto_provider();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()?;
        let resource = Resource::builder().with_service_name(self.service_name.clone()).build();
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build())
    }
}

/// The pipeline's tracer from `provider`.
pub fn tracer(provider: &SdkTracerProvider) -> SdkTracer {
    provider.tracer(SCOPE)
}

/// The layer turning the pipeline's spans into OpenTelemetry spans; log events at or above
/// `events` that happen inside them become span events.
pub fn layer<S>(tracer: SdkTracer, events: LevelFilter) -> impl Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(filter_fn(move |meta| {
            if meta.is_span() {
                meta.target() == TARGET
            } else {
                // The SDK's own diagnostics must not feed back into it.
                !meta.target().starts_with("opentelemetry") && events >= *meta.level()
            }
        }))
}

/// Whether `meta` is one of the pipeline's spans (the log output leaves them out).
pub fn is_pipeline_span(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span() && meta.target() == TARGET
}

/// The span of one stream entry at one stage, continuing the trace the entry carries. The
/// `quantum.*` fields are recorded as the stage learns them.
pub fn entry_span(stage: &'static str, stream: &str, entry: &StreamEntry) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "process",
        otel.name = stage,
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "redis",
        messaging.destination.name = stream,
        messaging.message.id = %entry.id,
        quantum.symbol = tracing::field::Empty,
        quantum.side = tracing::field::Empty,
        quantum.plan_id = tracing::field::Empty,
        quantum.fill_id = tracing::field::Empty,
        quantum.outcome = tracing::field::Empty,
        quantum.error = tracing::field::Empty,
    );
    if !span.is_disabled() && entry.get(TRACEPARENT).is_some() {
        let parent = TraceContextPropagator::new().extract(&EntryContext(entry));
        // Fails only for a span that was already started, which this one is not.
        let _ = span.set_parent(parent);
    }
    span
}

/// A child span of `parent` for one step of the stage (e.g. the venue call).
pub fn step_span(parent: &Span, step: &'static str) -> Span {
    tracing::info_span!(target: TARGET, parent: parent, "step", otel.name = step)
}

/// Records how the stage ended for the entry; `error` marks the span as failed.
pub fn record_outcome(span: &Span, outcome: &str, error: bool) {
    span.record("quantum.outcome", outcome);
    if error {
        span.record("otel.status_code", "ERROR");
    }
}

/// Marks the spans of a batch that failed as a whole: what the stage decided (the outcome)
/// was not committed, and the batch is redelivered and traced again.
pub fn record_batch_failed<'a>(spans: impl IntoIterator<Item = &'a Span>) {
    for span in spans {
        span.record("quantum.error", "batch_failed");
        span.record("otel.status_code", "ERROR");
    }
}

/// Adds the trace context for the next stage to `fields`: `span`'s own when it is traced
/// here, else the context `incoming` carried, so a stage with export off keeps the chain.
pub fn propagate(span: &Span, incoming: Option<&StreamEntry>, fields: &mut Vec<(&'static str, String)>) {
    if !span.is_disabled() {
        TraceContextPropagator::new().inject_context(&span.context(), &mut FieldsContext(fields));
        return;
    }
    if let Some(entry) = incoming {
        for name in [TRACEPARENT, TRACESTATE] {
            if let Some(value) = entry.get(name).filter(|v| !v.is_empty()) {
                fields.push((name, value.to_string()));
            }
        }
    }
}

struct EntryContext<'a>(&'a StreamEntry);

impl Extractor for EntryContext<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.fields.iter().map(|(k, _)| k.as_str()).collect()
    }
}

struct FieldsContext<'a>(&'a mut Vec<(&'static str, String)>);

impl Injector for FieldsContext<'_> {
    fn set(&mut self, key: &str, value: String) {
        let name = match key {
            TRACEPARENT => TRACEPARENT,
            TRACESTATE if !value.is_empty() => TRACESTATE,
            _ => return,
        };
        self.0.push((name, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn export_is_off_without_an_endpoint_or_when_disabled() {
        assert_eq!(OtlpSettings::from_vars(vars(&[]), "svc").unwrap(), None);
        assert_eq!(
            OtlpSettings::from_vars(vars(&[("OTEL_SERVICE_NAME", "x")]), "svc").unwrap(),
            None
        );
        let disabled = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ];
        assert_eq!(OtlpSettings::from_vars(vars(&disabled), "svc").unwrap(), None);
        let none = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ];
        assert_eq!(OtlpSettings::from_vars(vars(&none), "svc").unwrap(), None);
    }

    #[test]
    fn endpoint_and_service_name_come_from_the_standard_variables() {
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")];
        let settings = OtlpSettings::from_vars(vars(&on), "quantum-ledger").unwrap().unwrap();
        assert_eq!(settings.service_name, "quantum-ledger");
        assert_eq!(settings.endpoint, "http://collector:4318");
        let named = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318/v1/traces"),
            ("OTEL_SERVICE_NAME", "ledger-eu1"),
        ];
        let settings = OtlpSettings::from_vars(vars(&named), "quantum-ledger")
            .unwrap()
            .unwrap();
        assert_eq!(settings.service_name, "ledger-eu1");
        assert_eq!(settings.endpoint, "http://traces:4318/v1/traces");
    }

    #[test]
    fn unsupported_transports_are_refused_by_name() {
        let grpc = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        let err = OtlpSettings::from_vars(vars(&grpc), "svc").unwrap_err();
        assert!(
            err.to_string().starts_with("OTEL_EXPORTER_OTLP_PROTOCOL=grpc:"),
            "{err}"
        );
        let tls = [("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318")];
        let err = OtlpSettings::from_vars(vars(&tls), "svc").unwrap_err();
        assert!(err.to_string().contains("http:// URL"), "{err}");
        let specific_wins = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ];
        assert!(OtlpSettings::from_vars(vars(&specific_wins), "svc").unwrap().is_some());
    }

    #[test]
    fn an_untraced_stage_passes_the_incoming_context_on() {
        let entry = StreamEntry::new(
            "1-0",
            &[(TRACEPARENT, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")],
        );
        let span = Span::none();
        let mut fields = Vec::new();
        propagate(&span, Some(&entry), &mut fields);
        assert_eq!(
            fields,
            vec![(
                TRACEPARENT,
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string()
            )]
        );
        let mut fields = Vec::new();
        propagate(&span, None, &mut fields);
        assert!(fields.is_empty());
    }

    #[test]
    fn a_failed_batch_marks_its_spans_as_errors() {
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry().with(layer(tracer(&provider), LevelFilter::INFO));
        tracing::subscriber::with_default(subscriber, || {
            let spans = vec![
                entry_span("test", "s", &StreamEntry::new("1-0", &[])),
                entry_span("test", "s", &StreamEntry::new("2-0", &[])),
            ];
            record_outcome(&spans[0], "applied", false);
            record_batch_failed(&spans);
        });
        let exported = exporter.get_finished_spans().unwrap();
        assert_eq!(exported.len(), 2);
        for span in &exported {
            let values = |key: &str| -> Vec<String> {
                span.attributes
                    .iter()
                    .filter(|kv| kv.key.as_str() == key)
                    .map(|kv| kv.value.as_str().into_owned())
                    .collect()
            };
            assert_eq!(values("quantum.error"), vec!["batch_failed"]);
            assert!(
                matches!(span.status, opentelemetry::trace::Status::Error { .. }),
                "{span:?}"
            );
        }
        let outcomes: Vec<usize> = exported
            .iter()
            .map(|s| {
                s.attributes
                    .iter()
                    .filter(|kv| kv.key.as_str() == "quantum.outcome")
                    .count()
            })
            .collect();
        assert_eq!(outcomes.iter().sum::<usize>(), 1, "the decided outcome stays, once");
    }

    #[test]
    fn a_traced_span_continues_the_incoming_trace_and_hands_on_its_own_context() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry().with(layer(tracer(&provider), LevelFilter::INFO));
        tracing::subscriber::with_default(subscriber, || {
            let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
            let entry = StreamEntry::new("1-0", &[("symbol", "BTCUSDT"), (TRACEPARENT, incoming)]);
            let span = entry_span("test", "s", &entry);
            assert!(!span.is_disabled());
            let cx = span.context();
            let ours = cx.span().span_context().clone();
            assert_eq!(ours.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
            assert_ne!(ours.span_id().to_string(), "b7ad6b7169203331");
            let mut fields = Vec::new();
            propagate(&span, Some(&entry), &mut fields);
            assert_eq!(
                fields,
                vec![(TRACEPARENT, format!("00-{}-{}-01", ours.trace_id(), ours.span_id()))]
            );

            let fresh = entry_span("test", "s", &StreamEntry::new("2-0", &[(TRACEPARENT, "garbage")]));
            let fresh_id = fresh.context().span().span_context().trace_id();
            assert!(fresh.context().span().span_context().is_valid());
            assert_ne!(
                fresh_id,
                ours.trace_id(),
                "an unreadable traceparent starts a new trace"
            );
        });
    }
}
