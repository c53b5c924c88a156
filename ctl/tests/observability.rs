//! Each service serves /metrics, /healthz and /readyz; the counters match what happened.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use quantum_model::contract::*;
use quantumctl::pipeline_facts::wait_idle;
use quantumctl::stack::Service;
use support::{get, port_of, try_get, Stack, TIMEOUT};

const SERVICES: [Service; 3] = [Service::Bridge, Service::Executor, Service::Ledger];

fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{body}"))
}

#[tokio::test]
async fn endpoints_serve_health_readiness_and_true_counters() {
    let mut stack = Stack::new().await;
    for s in SERVICES {
        stack.start(
            s,
            &[
                ("SYMBOL_ALLOWLIST", "BTCUSDT,ETHUSDT"),
                ("LEDGER_RECONCILE_INTERVAL_MS", "200"),
            ],
        );
    }
    for s in SERVICES {
        stack.wait_log(s, "Consumer ready").await;
    }
    let ports: Vec<u16> = SERVICES.iter().map(|s| port_of(&stack, *s)).collect();
    for port in &ports {
        assert_eq!(get(*port, "/healthz"), (200, "ok\n".to_string()));
        let (status, body) = get(*port, "/readyz");
        assert_eq!(status, 200, "{body}");
    }

    for _ in 0..3 {
        stack
            .xadd(
                INTENT_STREAM,
                &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "0.01")],
            )
            .await;
    }
    stack
        .xadd(INTENT_STREAM, &[("symbol", "ETHUSDT"), ("side", "SELL"), ("qty", "1")])
        .await;
    stack
        .xadd(INTENT_STREAM, &[("symbol", "DOGEUSDT"), ("side", "BUY"), ("qty", "1")])
        .await;
    stack
        .xadd(INTENT_STREAM, &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "NaN")])
        .await;
    assert!(wait_idle(&stack.client, TIMEOUT).await.unwrap());

    let (_, bridge) = get(ports[0], "/metrics");
    assert_eq!(metric(&bridge, "quantum_bridge_intents_consumed_total"), 6.0);
    assert_eq!(
        metric(&bridge, r#"quantum_bridge_outcomes_total{reason="published"}"#),
        3.0
    );
    assert_eq!(
        metric(
            &bridge,
            r#"quantum_bridge_outcomes_total{reason="ledger_missing_sell"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(&bridge, r#"quantum_bridge_outcomes_total{reason="not_allowlisted"}"#),
        1.0
    );
    assert_eq!(
        metric(&bridge, r#"quantum_bridge_outcomes_total{reason="malformed"}"#),
        1.0
    );
    // One count per LEDGER_MISSING_OPEN line: how many BUYs beat the first fill varies with timing.
    let lines = stack
        .log(Service::Bridge)
        .matches("LEDGER_MISSING_OPEN allowed: symbol=BTCUSDT side=BUY")
        .count();
    assert!(lines >= 1);
    assert_eq!(
        metric(&bridge, r#"quantum_bridge_ledger_missing_open_total{symbol="BTCUSDT"}"#),
        lines as f64
    );
    assert_eq!(
        metric(
            &bridge,
            r#"quantum_bridge_plans_published_total{symbol="BTCUSDT",side="BUY",decision="EXECUTE"}"#
        ),
        3.0
    );
    // No risk kernel runs here: the governor counts each entry's missing proposal.
    assert_eq!(
        metric(
            &bridge,
            r#"quantum_governor_decisions_total{symbol="BTCUSDT",side="BUY",decision="EXECUTE",reason="proposal_missing"}"#
        ),
        3.0
    );
    assert!(bridge.contains("quantum_bridge_batch_seconds"), "{bridge}");
    assert_eq!(metric(&bridge, "quantum_bridge_allowlist_symbols"), 2.0);
    assert_eq!(
        metric(
            &bridge,
            r#"quantum_bridge_sell_blocked_total{symbol="ETHUSDT",reason="ledger_missing_sell"}"#
        ),
        1.0
    );
    let (_, executor) = get(ports[1], "/metrics");
    assert_eq!(
        metric(
            &executor,
            r#"quantum_executor_plans_total{decision="EXECUTE",outcome="filled"}"#
        ),
        3.0
    );
    assert_eq!(
        metric(
            &executor,
            r#"quantum_executor_orders_total{symbol="BTCUSDT",side="BUY",status="FILLED"}"#
        ),
        3.0
    );
    assert_eq!(metric(&bridge, r#"quantum_apply_plan_symbols{window="300s"}"#), 1.0);
    assert_eq!(metric(&executor, r#"quantum_executing_symbols{window="300s"}"#), 1.0);
    assert_eq!(metric(&executor, "quantum_executor_plan_to_fill_seconds_count"), 3.0);
    let (_, ledger) = get(ports[2], "/metrics");
    assert_eq!(
        metric(&ledger, r#"quantum_ledger_fills_applied_total{symbol="BTCUSDT"}"#),
        3.0
    );
    assert_eq!(
        metric(
            &ledger,
            r#"quantum_consumer_entries_total{stream="quantum:stream:ledger.commit",shard="0"}"#
        ),
        3.0
    );
    // The one ledger the fills created is counted on the next census (every 200 ms here).
    support::wait_for("quantum_ledger_entries 1", || async {
        let (_, ledger) = get(ports[2], "/metrics");
        ledger.lines().any(|l| l == "quantum_ledger_entries 1")
    })
    .await;
    // Sampled at start: the group exists, nothing is pending.
    assert_eq!(
        metric(
            &ledger,
            r#"quantum_consumer_pending{stream="quantum:stream:ledger.commit",shard="0",group="quantum:group:ledger"}"#
        ),
        0.0
    );

    // Redis gone: not ready, still alive.
    stack.redis_mut().kill();
    for port in &ports {
        let (status, body) = get(*port, "/readyz");
        assert_eq!(status, 503, "{body}");
        assert_eq!(get(*port, "/healthz").0, 200);
    }
}

#[tokio::test]
async fn a_taken_port_is_a_clear_startup_error() {
    let mut stack = Stack::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    stack.start(Service::Ledger, &[("LEDGER_METRICS_PORT", port.as_str())]);
    stack.wait_log(Service::Ledger, "cannot serve the HTTP endpoints").await;
}

#[tokio::test]
async fn json_logs_keep_the_contract_lines_greppable() {
    let mut stack = Stack::new().await;
    stack.start(
        Service::Bridge,
        &[("LOG_FORMAT", "json"), ("SYMBOL_ALLOWLIST", "BTCUSDT")],
    );
    stack
        .xadd(INTENT_STREAM, &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "1")])
        .await;
    stack
        .xadd(INTENT_STREAM, &[("symbol", "BTCUSDT"), ("side", "SELL"), ("qty", "1")])
        .await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    assert!(stack.stop(Service::Bridge));
    let log = stack.log(Service::Bridge);
    let messages: Vec<String> = log
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v["timestamp"].is_string() && v["level"].is_string(), "{l}");
            v["message"]
                .as_str()
                .unwrap_or_else(|| panic!("no message: {l}"))
                .to_string()
        })
        .collect();
    for expected in [
        "Intent Bridge - trade.intent → apply.plan [intent-bridge-ledger-open-v1]",
        "Require ledger for OPEN: false",
        "LEDGER_MISSING_OPEN allowed: symbol=BTCUSDT side=BUY",
        "Publishing plan for BTCUSDT BUY: leverage=1, sl=None, tp=None",
        "Skip publish: BTCUSDT SELL but ledger unknown",
    ] {
        assert!(
            messages.iter().any(|m| m.starts_with(expected)),
            "no {expected:?} in {messages:#?}"
        );
        assert!(
            log.contains(expected),
            "plain grep for {expected:?} fails on the JSON log"
        );
    }
}

/// Polls Prometheus' HTTP API until `query` returns `expected` as its single value.
async fn wait_for_query(port: u16, query: &str, expected: f64) {
    let path = format!("/api/v1/query?query={}", query.replace(':', "%3A").replace(' ', "%20"));
    let mut last = String::new();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::time::Instant::now() < deadline {
        let (status, body) = try_get(port, &path).unwrap_or_default();
        if status == 200 {
            // Chunked encoding: the JSON object is the line that starts with '{'.
            if let Some(json) = body.lines().find(|l| l.starts_with('{')) {
                let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
                let value = v["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|x| x.parse::<f64>().ok());
                if value == Some(expected) {
                    return;
                }
            }
        }
        last = body;
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    panic!("{query} never became {expected}; last answer: {last}");
}

#[tokio::test]
async fn real_prometheus_reads_the_diversity_rule_from_the_live_stack() {
    let mut stack = Stack::new().await;
    let symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"];
    for s in SERVICES {
        stack.start(s, &[("SYMBOL_ALLOWLIST", "BTCUSDT,ETHUSDT,SOLUSDT,ZECUSDT")]);
    }
    for s in SERVICES {
        stack.wait_log(s, "Consumer ready").await;
    }
    let targets: Vec<String> = SERVICES
        .iter()
        .map(|s| format!("127.0.0.1:{}", port_of(&stack, *s)))
        .collect();
    let rules =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/rules/quantum.rules.yml");
    let config = format!(
        "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: [{:?}]\nscrape_configs:\n  - job_name: quantum\n    static_configs: [{{ targets: {:?} }}]\n",
        rules.display().to_string(),
        targets
    );
    let dir = stack.dir.path().to_path_buf();
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let mut prometheus = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("prometheus (Debian package prometheus) must be installed");

    // Two rounds around a scrape, so every symbol's counter visibly increases inside the window.
    for round in 0..2 {
        for sym in symbols {
            stack
                .xadd(INTENT_STREAM, &[("symbol", sym), ("side", "BUY"), ("qty", "0.01")])
                .await;
        }
        assert!(wait_idle(&stack.client, TIMEOUT).await.unwrap());
        if round == 0 {
            // Both the bridge's and the ledger's counters must have a first sample before round 2.
            wait_for_query(port, r#"count(quantum_bridge_plans_published_total)"#, 3.0).await;
            wait_for_query(port, r#"count(quantum_ledger_fills_applied_total)"#, 3.0).await;
        }
    }
    wait_for_query(port, "quantum:plan_symbols:5m", 3.0).await;
    wait_for_query(port, "quantum:fill_symbols:15m", 3.0).await;
    wait_for_query(port, "max(quantum_bridge_allowlist_symbols)", 4.0).await;
    let _ = prometheus.kill();
    let _ = prometheus.wait();
}

/// One span as a stand-in OTLP collector received it.
#[derive(Debug, Clone)]
struct ExportedSpan {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: HashMap<String, String>,
}

/// A stand-in OTLP/HTTP collector: takes `POST /v1/traces` protobuf exports as the OTLP
/// specification describes (200 with an ExportTraceServiceResponse, 400 for an undecodable
/// body) and keeps every span with its resource's service.name.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ExportedSpan>>>,
    rejected: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    /// Serves on a free loopback port; returns the collector and its base URL.
    async fn start() -> (Self, String) {
        use axum::body::Bytes;
        use axum::extract::State;
        use axum::http::{header, StatusCode};
        use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
        use prost::Message as _;

        async fn export(
            State(collector): State<Collector>,
            body: Bytes,
        ) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
            let request = match ExportTraceServiceRequest::decode(body) {
                Ok(request) => request,
                Err(e) => {
                    collector.rejected.lock().unwrap().push(e.to_string());
                    return (
                        StatusCode::BAD_REQUEST,
                        [(header::CONTENT_TYPE, "text/plain")],
                        e.to_string().into_bytes(),
                    );
                }
            };
            let mut spans = collector.spans.lock().unwrap();
            for resource_spans in request.resource_spans {
                let resource = resource_spans
                    .resource
                    .map(|r| attributes(&r.attributes))
                    .unwrap_or_default();
                let service = resource.get("service.name").cloned().unwrap_or_default();
                for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                    spans.push(ExportedSpan {
                        service: service.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                        attributes: attributes(&span.attributes),
                    });
                }
            }
            let reply = ExportTraceServiceResponse::default().encode_to_vec();
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                reply,
            )
        }

        let collector = Collector::default();
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(export))
            .with_state(collector.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (collector, url)
    }

    fn spans(&self) -> Vec<ExportedSpan> {
        self.spans.lock().unwrap().clone()
    }
}

fn attributes(list: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> HashMap<String, String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    list.iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                Value::BoolValue(b) => b.to_string(),
                other => format!("{other:?}"),
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_export_carries_one_trace_per_intent_across_the_three_processes() {
    let (collector, endpoint) = Collector::start().await;
    let mut stack = Stack::new().await;
    // Export only at exit: what arrives proves the shutdown flush.
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
    ];
    let with =
        |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> { otel.iter().chain(extra).copied().collect() };
    stack.start(Service::Ledger, &with(&[("OTEL_SERVICE_NAME", "ledger-eu1")]));
    stack.start(Service::Executor, &with(&[]));
    stack.start(Service::Bridge, &with(&[("SYMBOL_ALLOWLIST", "BTCUSDT,ETHUSDT")]));
    let intents = [
        stack
            .xadd(INTENT_STREAM, &[("symbol", "ETHUSDT"), ("side", "BUY"), ("qty", "0.5")])
            .await,
        stack
            .xadd(
                INTENT_STREAM,
                &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "0.01")],
            )
            .await,
    ];
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    stack.wait_group_idle(PLAN_STREAM, PLAN_GROUP).await;
    stack.wait_group_idle(LEDGER_COMMIT_STREAM, LEDGER_GROUP).await;
    for service in [Service::Bridge, Service::Executor, Service::Ledger] {
        assert!(stack.stop(service), "{} exits cleanly", service.binary());
    }

    assert!(collector.rejected.lock().unwrap().is_empty(), "undecodable exports");
    let spans = collector.spans();
    let plans = stack.entries(PLAN_STREAM).await;
    let fills = stack.entries(LEDGER_COMMIT_STREAM).await;
    for intent in &intents {
        let start = spans
            .iter()
            .find(|s| s.name == "intent_bridge.intent" && s.attributes.get("messaging.message.id") == Some(intent))
            .unwrap_or_else(|| panic!("no bridge span for {intent} in {spans:#?}"));
        assert_eq!(start.service, "quantum-intent-bridge");
        assert!(start.parent_span_id.is_empty(), "the bridge starts the trace");
        let in_trace: Vec<&ExportedSpan> = spans.iter().filter(|s| s.trace_id == start.trace_id).collect();
        let named = |name: &str| -> &ExportedSpan {
            let found: Vec<&&ExportedSpan> = in_trace.iter().filter(|s| s.name == name).collect();
            assert_eq!(
                found.len(),
                1,
                "one {name} span in the trace of {intent}: {in_trace:#?}"
            );
            found[0]
        };
        let (plan_span, venue, fill_span) = (
            named("intent_executor.plan"),
            named("venue.order"),
            named("ledger.fill"),
        );
        assert_eq!(in_trace.len(), 4, "{in_trace:#?}");
        assert_eq!(plan_span.service, "quantum-intent-executor");
        assert_eq!(venue.service, "quantum-intent-executor");
        assert_eq!(fill_span.service, "ledger-eu1", "OTEL_SERVICE_NAME wins");
        assert_eq!(plan_span.parent_span_id, start.span_id);
        assert_eq!(venue.parent_span_id, plan_span.span_id);
        assert_eq!(fill_span.parent_span_id, plan_span.span_id);
        assert_eq!(
            fill_span.attributes.get("quantum.outcome").map(String::as_str),
            Some("applied")
        );

        let plan = plans
            .iter()
            .find(|p| p.get("intent_id") == Some(intent.as_str()))
            .expect("plan");
        let expected = format!("00-{}-{}-01", hex(&start.trace_id), hex(&start.span_id));
        assert_eq!(plan.get("traceparent"), Some(expected.as_str()));
        let fill = fills
            .iter()
            .find(|f| f.get("plan_id") == plan.get("plan_id"))
            .expect("fill");
        let expected = format!("00-{}-{}-01", hex(&plan_span.trace_id), hex(&plan_span.span_id));
        assert_eq!(fill.get("traceparent"), Some(expected.as_str()));
    }

    let log = stack.log(Service::Bridge);
    assert!(
        log.contains(&format!(
            "Trace export: OTLP http/protobuf to {endpoint} as service.name=quantum-intent-bridge"
        )),
        "{log}"
    );
    // The spans never show in log lines: the contract's lines read as with tracing off.
    let line = log
        .lines()
        .find(|l| l.contains("LEDGER_MISSING_OPEN allowed: symbol=ETHUSDT"))
        .expect("the LEDGER_MISSING_OPEN line");
    assert!(
        line.contains(" INFO LEDGER_MISSING_OPEN allowed: symbol=ETHUSDT side=BUY plan_id="),
        "{line}"
    );
    assert!(
        !log.contains("intent_bridge.intent") && !log.contains("process{"),
        "{log}"
    );
}

#[tokio::test]
async fn trace_export_settings_fail_fast_and_a_dead_collector_costs_no_intent() {
    let mut stack = Stack::new().await;
    stack.start(
        Service::Bridge,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    let bridge = stack.process(Service::Bridge);
    support::wait_for("the bridge to refuse OTLP over grpc", || {
        let exited = bridge.exited();
        async move { exited.is_some() }
    })
    .await;
    assert_eq!(bridge.exited(), Some(Some(1)));
    assert!(stack.log(Service::Bridge).contains(
        "quantum-intent-bridge: OTEL_EXPORTER_OTLP_PROTOCOL=grpc: this build exports OTLP over http/protobuf only"
    ));

    // Nothing listens on the collector's port: export fails, the pipeline does not care.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let endpoint = format!("http://{closed}");
    stack.start(
        Service::Bridge,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("SYMBOL_ALLOWLIST", "BTCUSDT"),
        ],
    );
    for _ in 0..3 {
        stack
            .xadd(
                INTENT_STREAM,
                &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "0.01")],
            )
            .await;
    }
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    assert_eq!(stack.xlen(PLAN_STREAM).await, 3);
    stack.wait_log(Service::Bridge, "BatchSpanProcessor.ExportError").await;
    assert!(stack.stop(Service::Bridge), "exits cleanly with the collector gone");
}
