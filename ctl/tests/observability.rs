//! Each service serves /metrics, /healthz and /readyz; the counters match what happened.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

use quantum_common::contract::*;
use quantumctl::facts::wait_idle;
use quantumctl::stack::Service;
use support::{Stack, TIMEOUT};

const SERVICES: [Service; 3] = [Service::Bridge, Service::Executor, Service::Ledger];

fn port_of(stack: &Stack, service: Service) -> u16 {
    let log = stack.log(service);
    let line = log
        .lines()
        .find(|l| l.contains("HTTP endpoints on http://"))
        .expect("endpoint line");
    let addr = line.split("http://").nth(1).unwrap().split(':').nth(1).unwrap();
    addr.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// A plain HTTP/1.1 GET: (status, body), `None` when nothing answers properly.
fn try_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

fn get(port: u16, path: &str) -> (u16, String) {
    try_get(port, path).unwrap_or_else(|| panic!("no HTTP answer on port {port} for {path}"))
}

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
        stack.start(s, &[("INTENT_BRIDGE_ALLOWLIST", "BTCUSDT,ETHUSDT")]);
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
            r#"quantum_consumer_entries_total{stream="quantum:stream:ledger.commit"}"#
        ),
        3.0
    );
    // Sampled at start: the group exists, nothing is pending.
    assert_eq!(
        metric(
            &ledger,
            r#"quantum_consumer_pending{stream="quantum:stream:ledger.commit",group="quantum:group:ledger"}"#
        ),
        0.0
    );

    // Redis gone: not ready, still alive.
    stack.redis.kill();
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
        &[("LOG_FORMAT", "json"), ("INTENT_BRIDGE_ALLOWLIST", "BTCUSDT")],
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
        stack.start(s, &[("INTENT_BRIDGE_ALLOWLIST", "BTCUSDT,ETHUSDT,SOLUSDT,ZECUSDT")]);
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
