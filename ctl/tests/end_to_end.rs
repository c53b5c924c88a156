//! The whole story through the operator's tools: `quantumctl demo`, the proof script on a
//! good and on broken live stacks, `quantumctl sim` and `quantumctl status`.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

use quantum_model::contract::*;
use quantumctl::pipeline_facts::wait_idle;
use quantumctl::stack::Service;
use support::{quantumctl, Stack, TIMEOUT};

const ALLOWLIST: &str = "BTCUSDT,ETHUSDT,SOLUSDT,ZECUSDT,DOGEUSDT";

fn proof_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proofs/proof_intent_bridge_ledger_gate.sh")
}

fn run_proof(stack: &Stack) -> (i32, String) {
    let out: Output = Command::new("bash")
        .arg(proof_script())
        .arg("--log-file")
        .arg(stack.log_path(Service::Bridge))
        .env("REDIS_URL", stack.url())
        .env("QUANTUMCTL", env!("CARGO_BIN_EXE_quantumctl"))
        .output()
        .expect("run proof script");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

async fn live_stack(strict: bool) -> Stack {
    let mut stack = Stack::new().await;
    stack.start(Service::Ledger, &[]);
    stack.start(Service::Executor, &[]);
    stack.start(
        Service::Bridge,
        &[
            ("SYMBOL_ALLOWLIST", ALLOWLIST),
            (
                "INTENT_BRIDGE_REQUIRE_LEDGER_FOR_OPEN",
                if strict { "true" } else { "false" },
            ),
        ],
    );
    for s in [Service::Ledger, Service::Executor, Service::Bridge] {
        stack.wait_log(s, "Consumer ready").await;
    }
    stack
        .hset(
            "quantum:position:ledger:ZECUSDT",
            &[("position_amt", "10"), ("version", "1")],
        )
        .await;
    // BUYs for every symbol (small: together about 14% of the paper equity, under the exposure
    // limit), then SELLs: ZEC and the freshly opened ones flow, DOGE's SELL
    // arrives before any DOGE fill and is blocked.
    stack
        .xadd(
            INTENT_STREAM,
            &[("symbol", "DOGEUSDT"), ("side", "SELL"), ("qty", "10")],
        )
        .await;
    for sym in ALLOWLIST.split(',') {
        stack
            .xadd(INTENT_STREAM, &[("symbol", sym), ("side", "BUY"), ("quantity", "0.2")])
            .await;
    }
    assert!(wait_idle(&stack.client, TIMEOUT).await.unwrap());
    for sym in ["BTCUSDT", "ZECUSDT"] {
        stack
            .xadd(INTENT_STREAM, &[("symbol", sym), ("side", "SELL"), ("quantity", "0.1")])
            .await;
    }
    assert!(wait_idle(&stack.client, TIMEOUT).await.unwrap());
    stack
}

#[tokio::test]
async fn proof_passes_on_the_fixed_stack() {
    let stack = live_stack(false).await;
    let (code, out) = run_proof(&stack);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PROOF PASSED: 7/7 checks"), "{out}");
    assert!(
        out.contains("SELL blocked without ledger: every SELL plan has a ledger; 1 SELLs skipped"),
        "{out}"
    );
    assert!(out.contains("symbol diversity: 5 symbols"), "{out}");
    assert!(out.contains("EXECUTE=7 BLOCKED=0"), "{out}");
}

#[tokio::test]
async fn proof_fails_on_a_strict_stack_naming_the_checks() {
    let stack = live_stack(true).await;
    let (code, out) = run_proof(&stack);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("[2/7] FAIL  require ledger for OPEN: last start logged 'true'"),
        "{out}"
    );
    assert!(out.contains("[3/7] FAIL  LEDGER_MISSING_OPEN"), "{out}");
    assert!(out.contains("[6/7] FAIL  symbol diversity: 1 symbols"), "{out}");
    // The proof explains, with quantumctl, what the checks found.
    assert!(out.contains("BRIDGE OUTCOMES (last 5 min)"), "{out}");
    assert!(out.contains("skipped:strict_ledger_missing_buy"), "{out}");
    assert!(
        out.contains("  BTCUSDT: entries skipped: no ledger (strict mode)"),
        "{out}"
    );
    assert!(
        out.contains("failed: 2 (require ledger for OPEN) 3 (LEDGER_MISSING_OPEN) 6 (symbol diversity)"),
        "{out}"
    );
}

#[tokio::test]
async fn proof_fails_when_a_sell_was_published_without_a_ledger() {
    let stack = live_stack(false).await;
    stack
        .xadd(
            PLAN_STREAM,
            &[
                ("plan_id", "ffffffffffffffff"),
                ("decision", "BLOCKED"),
                ("symbol", "XRPUSDT"),
                ("side", "SELL"),
                ("qty", "1"),
            ],
        )
        .await;
    let (code, out) = run_proof(&stack);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "[5/7] FAIL  SELL blocked without ledger: SELL plans published for symbols with no ledger: XRPUSDT"
        ),
        "{out}"
    );
    assert!(out.contains("EXECUTE=7 BLOCKED=1"), "{out}");
}

#[test]
fn proof_refuses_to_run_without_a_log_source() {
    let out = Command::new("bash")
        .arg(proof_script())
        .args(["--log-file", "/nonexistent/bridge.log"])
        .output()
        .expect("run proof");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read log file"));
}

/// Runs `quantumctl demo` with `args` and checks the table of the story; returns its output.
fn demo_tells_the_story(args: &[&str]) -> String {
    let (code, out) = quantumctl(args, None);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("started a throwaway redis-server"), "{out}");
    // Each row: the label, then one cell per phase (strict, legacy governor, separated).
    let row = |label: &str| -> Vec<String> {
        let line = out
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label} row in:\n{out}"));
        line[label.len()..]
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    assert_eq!(row("symbols in apply.plan"), ["1", "11", "11"]);
    assert_eq!(row("symbols executing"), ["1", "1", "11"]);
    assert_eq!(row("ledger entries (end of phase)"), ["1", "1", "11"]);
    assert_eq!(row("BUY published / skipped"), ["1 / 10", "11 / 0", "11 / 0"]);
    assert_eq!(row("SELL published / skipped"), ["1 / 10", "1 / 10", "11 / 0"]);
    assert_eq!(row("EXECUTE / BLOCKED plans"), ["2 / 0", "1 / 11", "22 / 0"]);
    assert_eq!(row("LEDGER_MISSING_OPEN lines"), ["0", "10", "10"]);
    assert!(out.contains("PASS: strict mode reproduces the deadlock"), "{out}");
    out
}

#[test]
fn demo_shows_the_deadlock_then_the_governor_then_both_fixes() {
    demo_tells_the_story(&["demo"]);
}

#[test]
fn demo_tells_the_same_story_on_the_live_venue_against_a_fake_binance() {
    let out = demo_tells_the_story(&["demo", "--venue", "live"]);
    let logs = out
        .lines()
        .find_map(|l| l.strip_prefix("service logs: "))
        .unwrap_or_else(|| panic!("no log dir in:\n{out}"));
    let executor = std::fs::read_to_string(std::path::Path::new(logs).join("executor.log")).unwrap();
    assert!(executor.contains("Config: mode=live"), "{executor}");
    assert!(executor.contains("Start-up check: 0 open orders"), "{executor}");
    // Fills carry the venue's trade ids (numbers), not the paper venue's `<coid>-1`.
    let fill = executor.lines().find(|l| l.contains("ORDER FILLED")).expect("a fill");
    let fill_id = fill.split("fill_id=").nth(1).and_then(|r| r.split(' ').next()).unwrap();
    assert!(fill_id.parse::<u64>().is_ok(), "{fill}");
}

#[tokio::test]
async fn sim_publishes_every_format_and_status_shows_the_pipeline() {
    let mut stack = Stack::new().await;
    for s in [Service::Ledger, Service::Executor, Service::Bridge] {
        stack.start(s, &[("SYMBOL_ALLOWLIST", "BTCUSDT,ETHUSDT,SOLUSDT")]);
    }
    for s in [Service::Ledger, Service::Executor, Service::Bridge] {
        stack.wait_log(s, "Consumer ready").await;
    }
    let url = stack.url();
    let (code, out) = quantumctl(
        &[
            "sim",
            "--count",
            "54",
            "--rate",
            "600",
            "--symbols",
            "BTCUSDT,ETHUSDT,SOLUSDT",
            "--format",
            "mixed",
        ],
        Some(&url),
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("published 54 intents"), "{out}");
    assert!(wait_idle(&stack.client, TIMEOUT).await.unwrap());
    // Now that ledgers exist, SELLs (every intent a SELL) go through.
    let (code, out) = quantumctl(
        &[
            "sim",
            "--count",
            "6",
            "--symbols",
            "BTCUSDT,ETHUSDT,SOLUSDT",
            "--sell-every",
            "1",
            "--usd",
            "20",
        ],
        Some(&url),
    );
    assert_eq!(code, 0, "{out}");
    assert!(wait_idle(&stack.client, TIMEOUT).await.unwrap());
    assert_eq!(stack.xlen(INTENT_DLQ_STREAM).await, 0, "every simulated format parses");
    let plans = stack.entries(PLAN_STREAM).await;
    assert_eq!(
        plans.iter().filter(|p| p.get("side") == Some("SELL")).count(),
        6,
        "SELLs flow once ledgers exist"
    );

    let (code, out) = quantumctl(&["status"], Some(&url));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("quantum:stream:trade.intent                  60"), "{out}");
    assert!(out.contains("quantum:group:intent_bridge"), "{out}");
    for sym in ["BTCUSDT", "ETHUSDT", "SOLUSDT"] {
        assert!(
            out.lines().any(|l| l.starts_with(sym) && l.contains("LONG")),
            "{sym} ledger row in:\n{out}"
        );
    }

    let (code, out) = quantumctl(&["sim", "--symbols", "BAD/SYM"], Some(&url));
    assert_eq!(code, 2);
    assert!(out.contains("--symbols: symbol \"BAD/SYM\""), "{out}");
}

#[test]
fn help_never_prints_the_redis_password() {
    for bin in ["quantum-intent-bridge", "quantum-intent-executor", "quantum-ledger"] {
        let out = Command::new(quantumctl::stack::bin_dir().join(bin))
            .arg("--help")
            .env("REDIS_URL", "redis://svc:hunter2-secret@127.0.0.1:1/0")
            .output()
            .expect("run --help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        assert!(
            text.contains("REDIS_URL") && text.contains("INTENT_") || bin == "quantum-ledger",
            "{text}"
        );
        assert!(
            !text.contains("hunter2-secret"),
            "{bin} --help leaks the password:\n{text}"
        );
    }
}

#[tokio::test]
async fn demo_runs_against_a_given_redis() {
    let stack = Stack::new().await;
    let (code, out) = quantumctl(&["demo"], Some(&stack.url()));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("using the Redis at redis://127.0.0.1"), "{out}");
    assert!(!out.contains("started a throwaway"), "{out}");
    assert!(out.contains("PASS: strict mode reproduces the deadlock"), "{out}");
    assert_eq!(
        stack
            .hash("quantum:position:ledger:BTCUSDT")
            .await
            .get("side")
            .map(String::as_str),
        Some("LONG")
    );
}

/// `quantumctl bench --json` at smoke sizes, with `extra` arguments: its report.
fn run_bench(extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_quantumctl"))
        .args([
            "bench",
            "--json",
            "--count",
            "2000",
            "--latency-rate",
            "200",
            "--latency-seconds",
            "2",
        ])
        .args(["--xadd-requests", "20000"])
        .args(extra)
        .output()
        .expect("run quantumctl bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).expect("bench prints JSON")
}

/// `quantumctl bench --json` runs every phase and reports figures that hang together (a smoke
/// run with debug binaries; the speed targets are read off release runs, docs/performance.md).
#[test]
fn bench_reports_every_phase_as_json() {
    let report = run_bench(&[]);
    assert_eq!(report["redis"], "one node");
    assert_eq!(report["stream_shards"], 1);
    assert_figures_hang_together(&report);
}

/// The same on a 3+3 cluster with two stream shards: the XADD ceiling is the benchmark
/// stream's node's, every phase drains through both shards.
#[test]
fn bench_runs_on_a_cluster_with_two_shards() {
    let report = run_bench(&["--cluster", "--shards", "2"]);
    assert_eq!(report["redis"], "cluster 3+3");
    assert_eq!(report["stream_shards"], 2);
    assert_figures_hang_together(&report);
}

fn assert_figures_hang_together(report: &serde_json::Value) {
    let number = |path: &str| {
        report
            .pointer(path)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_else(|| panic!("{path} missing in {report}"))
    };
    assert!(number("/xadd_ceiling/pipelined_per_s") > number("/xadd_ceiling/one_at_a_time_per_s"));
    for phase in ["bridge", "end_to_end"] {
        assert_eq!(number(&format!("/{phase}/intents")), 2000.0);
        // One SELL in three, of symbols with no position yet at first: some are skipped.
        let plans = number(&format!("/{phase}/plans"));
        assert!((1000.0..=2000.0).contains(&plans), "{phase}: {plans} plans");
        assert!(number(&format!("/{phase}/intents_per_s")) > 0.0);
        // Where the drain's time went: Redis, then each service that ran, each having worked.
        let cpu = report[phase]["cpu_us_per_intent"]
            .as_array()
            .expect("cpu_us_per_intent");
        let processes: Vec<&str> = cpu.iter().filter_map(|pair| pair[0].as_str()).collect();
        let expected: &[&str] = if phase == "bridge" {
            &["redis", "quantum-intent-bridge"]
        } else {
            &[
                "redis",
                "quantum-ledger",
                "quantum-intent-executor",
                "quantum-intent-bridge",
            ]
        };
        assert_eq!(processes, expected, "{phase}");
        assert!(
            cpu.iter().all(|pair| pair[1].as_f64().unwrap_or(0.0) > 0.0),
            "{phase}: {cpu:?}"
        );
        let commands = report[phase]["redis_commands"].as_array().expect("redis_commands");
        assert!(!commands.is_empty(), "{phase}");
        let cost = |c: &serde_json::Value| c["us_per_intent"].as_f64().unwrap_or(-1.0);
        assert!(
            commands.windows(2).all(|w| cost(&w[0]) >= cost(&w[1])),
            "{phase}: by time: {commands:?}"
        );
        assert!(
            commands.iter().all(|c| c["calls"].as_u64().unwrap_or(0) > 0),
            "{phase}: {commands:?}"
        );
        assert!(
            commands.iter().any(|c| c["command"] == "EVAL"),
            "{phase}: the services' scripts are among Redis' busiest commands: {commands:?}"
        );
    }
    assert!(number("/end_to_end/fills") >= number("/end_to_end/plans") * 0.5);
    assert_eq!(number("/latency/samples"), 400.0);
    let (p50, p90, p99, max) = (
        number("/latency/p50_ms"),
        number("/latency/p90_ms"),
        number("/latency/p99_ms"),
        number("/latency/max_ms"),
    );
    assert!(
        0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max,
        "{p50} {p90} {p99} {max}"
    );
    let rss = report["idle_rss_kib"].as_array().expect("idle_rss_kib");
    assert_eq!(rss.len(), 3);
    assert!(rss.iter().all(|pair| pair[1].as_u64().unwrap_or(0) > 1000), "{rss:?}");
}
