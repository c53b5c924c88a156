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

/// A plain HTTP/1.1 GET: (status, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP endpoint");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
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
    // All three BUYs arrived before the first fill created the ledger.
    assert_eq!(
        metric(&bridge, r#"quantum_bridge_ledger_missing_open_total{symbol="BTCUSDT"}"#),
        3.0
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
