//! One trace per intent across the three stages: the bridge, the executor and the ledger run
//! in this process against a real redis-server, with the OpenTelemetry SDK's in-memory
//! exporter behind the same trace layer the services install for OTLP.

mod support;

use std::collections::HashMap;

use clap::Parser;
use opentelemetry::trace::{SpanId, Status, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;

use quantum_intent_bridge::BridgeArgs;
use quantum_intent_executor::ExecutorArgs;
use quantum_ledger::LedgerArgs;
use quantum_model::contract::*;
use quantum_runtime::trace;
use support::{wait_for, Stack};

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

fn spans_named(spans: &[SpanData], name: &str) -> Vec<SpanData> {
    spans.iter().filter(|s| s.name == name).cloned().collect()
}

/// The `00-<trace>-<span>-<flags>` value a stage must have written for `span`.
fn traceparent_of(span: &SpanData) -> String {
    format!("00-{}-{}-01", span.span_context.trace_id(), span.span_context.span_id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intents_spans_in_the_three_stages_share_one_trace_id() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry().with(trace::layer(trace::tracer(&provider), LevelFilter::INFO));
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber of this test binary");

    let stack = Stack::new().await;
    let url = stack.url();
    let common = |name: &str| {
        vec![
            name.to_string(),
            format!("--redis-url={url}"),
            "--metrics-port=0".to_string(),
            "--block-ms=100".to_string(),
        ]
    };
    let mut bridge = common("quantum-intent-bridge");
    bridge.push("--symbol-allowlist=BTCUSDT,ETHUSDT,SOLUSDT".into());
    let mut executor = common("quantum-intent-executor");
    executor.push("--symbol-allowlist=BTCUSDT,ETHUSDT,SOLUSDT".into());
    let shutdown = CancellationToken::new();
    let services = [
        tokio::spawn(quantum_intent_bridge::run(
            BridgeArgs::parse_from(bridge),
            shutdown.clone(),
        ))
        .abort_handle(),
        tokio::spawn(quantum_intent_executor::run(
            ExecutorArgs::parse_from(executor),
            shutdown.clone(),
        ))
        .abort_handle(),
        tokio::spawn(quantum_ledger::run(
            LedgerArgs::parse_from(common("quantum-ledger")),
            shutdown.clone(),
        ))
        .abort_handle(),
    ];

    // Two opening BUYs (no ledger yet), a SELL blocked for want of a ledger, bad input.
    let eth_buy = stack
        .xadd(INTENT_STREAM, &[("symbol", "ETHUSDT"), ("side", "BUY"), ("qty", "0.5")])
        .await;
    let btc_buy = stack
        .xadd(
            INTENT_STREAM,
            &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "0.01")],
        )
        .await;
    let sol_sell = stack
        .xadd(INTENT_STREAM, &[("symbol", "SOLUSDT"), ("side", "SELL"), ("qty", "1")])
        .await;
    let garbage = stack.xadd(INTENT_STREAM, &[("symbol", "ETHUSDT")]).await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    stack.wait_group_idle(PLAN_STREAM, PLAN_GROUP).await;
    stack.wait_group_idle(LEDGER_COMMIT_STREAM, LEDGER_GROUP).await;
    // Once the ETH ledger exists, a closing SELL flows through all three stages too.
    let eth_sell = stack
        .xadd(
            INTENT_STREAM,
            &[("symbol", "ETHUSDT"), ("side", "SELL"), ("qty", "0.5")],
        )
        .await;
    // Each stage's span ends after its commit, so the next stage may finish first: wait for all.
    let finished = |name: &str| spans_named(&exporter.get_finished_spans().unwrap_or_default(), name).len();
    wait_for("the SELL's spans in every stage", || async {
        finished("intent_bridge.intent") >= 5 && finished("intent_executor.plan") >= 3 && finished("ledger.fill") >= 3
    })
    .await;
    shutdown.cancel();
    for service in services {
        service.abort();
    }

    let spans = exporter.get_finished_spans().expect("finished spans");
    let bridge_spans = spans_named(&spans, "intent_bridge.intent");
    let by_intent: HashMap<String, &SpanData> = bridge_spans
        .iter()
        .map(|s| (attribute(s, "messaging.message.id").unwrap_or_default(), s))
        .collect();
    assert_eq!(by_intent.len(), 5, "one bridge span per intent: {bridge_spans:#?}");
    let trace_ids: std::collections::HashSet<TraceId> =
        bridge_spans.iter().map(|s| s.span_context.trace_id()).collect();
    assert_eq!(trace_ids.len(), 5, "the bridge starts a trace per intent");

    let plans = stack.entries(PLAN_STREAM).await;
    let fills = stack.entries(LEDGER_COMMIT_STREAM).await;
    let executor_spans = spans_named(&spans, "intent_executor.plan");
    let venue_spans = spans_named(&spans, "venue.order");
    let fill_spans = spans_named(&spans, "ledger.fill");
    // The log lines of a stage become events of its span.
    let events: Vec<String> = by_intent[eth_buy.as_str()]
        .events
        .iter()
        .map(|e| e.name.to_string())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("LEDGER_MISSING_OPEN allowed: symbol=ETHUSDT side=BUY")),
        "{events:?}"
    );
    for intent in [&eth_buy, &btc_buy, &eth_sell] {
        let start = by_intent[intent.as_str()];
        let trace_id = start.span_context.trace_id();
        assert_eq!(start.parent_span_id, SpanId::INVALID, "the bridge starts the trace");
        assert_eq!(attribute(start, "quantum.outcome").as_deref(), Some("published"));

        let plan = plans
            .iter()
            .find(|p| p.get("intent_id") == Some(intent.as_str()))
            .expect("a plan for the intent");
        assert_eq!(plan.get("traceparent"), Some(traceparent_of(start).as_str()));

        let executed: Vec<&SpanData> = executor_spans
            .iter()
            .filter(|s| s.span_context.trace_id() == trace_id)
            .collect();
        assert_eq!(executed.len(), 1, "one executor span in the intent's trace");
        let executed = executed[0];
        assert_eq!(executed.parent_span_id, start.span_context.span_id());
        assert_eq!(
            attribute(executed, "messaging.message.id").as_deref(),
            Some(plan.id.as_str())
        );
        assert_eq!(attribute(executed, "quantum.outcome").as_deref(), Some("filled"));
        let venue = venue_spans
            .iter()
            .find(|s| s.span_context.trace_id() == trace_id)
            .expect("the venue call in the intent's trace");
        assert_eq!(venue.parent_span_id, executed.span_context.span_id());

        let fill = fills
            .iter()
            .find(|f| f.get("plan_id") == plan.get("plan_id"))
            .expect("a fill for the plan");
        assert_eq!(fill.get("traceparent"), Some(traceparent_of(executed).as_str()));
        let applied: Vec<&SpanData> = fill_spans
            .iter()
            .filter(|s| s.span_context.trace_id() == trace_id)
            .collect();
        assert_eq!(applied.len(), 1, "one ledger span in the intent's trace");
        assert_eq!(applied[0].parent_span_id, executed.span_context.span_id());
        assert_eq!(attribute(applied[0], "quantum.outcome").as_deref(), Some("applied"));
        assert_eq!(
            attribute(applied[0], "messaging.message.id").as_deref(),
            Some(fill.id.as_str())
        );
    }

    // Intents that stop at the bridge end their trace there, with the reason on the span.
    for (intent, outcome) in [(&sol_sell, "ledger_missing_sell"), (&garbage, "missing_side")] {
        let start = by_intent[intent.as_str()];
        assert_eq!(attribute(start, "quantum.outcome").as_deref(), Some(outcome));
        let trace_id = start.span_context.trace_id();
        assert!(
            !spans
                .iter()
                .any(|s| s.span_context.trace_id() == trace_id && s.name != "intent_bridge.intent"),
            "{outcome}: nothing downstream"
        );
    }
    assert!(matches!(by_intent[garbage.as_str()].status, Status::Error { .. }));
    assert_eq!(by_intent[sol_sell.as_str()].status, Status::Unset);
}
