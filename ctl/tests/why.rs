//! `quantumctl why` and `quantumctl status` on a real stack: intents with every kind of fate,
//! each followed to the stage where it stopped, symbols explained in one verdict line.

mod support;

use quantum_model::contract::*;
use quantum_model::time::now_secs;
use quantumctl::pipeline_facts::wait_idle;
use quantumctl::stack::Service;
use support::{quantumctl, Stack, TIMEOUT};

/// The bridge allows these; the executor only the first four (DOGE plans are refused there).
const BRIDGE_ALLOWLIST: &str = "BTCUSDT,ETHUSDT,SOLUSDT,ZECUSDT,DOGEUSDT,NEARUSDT,ADAUSDT";
const EXECUTOR_ALLOWLIST: &str = "BTCUSDT,ETHUSDT,SOLUSDT,ZECUSDT";

fn why(stack: &Stack, args: &[&str]) -> String {
    let mut all = vec!["why"];
    all.extend_from_slice(args);
    let (code, out) = quantumctl(&all, Some(&stack.url()));
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains('\u{1b}'), "no colours off a terminal:\n{out}");
    out
}

fn why_intent(stack: &Stack, id: &str) -> String {
    why(stack, &["--intent", id])
}

#[tokio::test]
async fn why_names_the_stage_and_reason_of_every_fate() {
    let mut stack = Stack::new().await;
    // An intent added long ago (its id says so): skipped as stale once the bridge reads it.
    let stale: String = {
        use fred::prelude::*;
        stack
            .client
            .xadd(
                INTENT_STREAM,
                false,
                None,
                "1000-0",
                vec![("symbol", "SOLUSDT"), ("side", "BUY"), ("qty", "1")],
            )
            .await
            .unwrap()
    };
    let epoch = now_secs().to_string();
    stack
        .hset(
            "quantum:harvest:proposal:BTCUSDT",
            &[
                ("k_regime_flip", "1.0"),
                ("k_sigma_spike", "0.0"),
                ("k_ts_drop", "0.2398"),
                ("k_age_penalty", "0.0417"),
                ("last_update_epoch", epoch.as_str()),
            ],
        )
        .await;
    stack
        .hset("quantum:position:ledger:ZECUSDT", &[("position_amt", "0")])
        .await;
    // Small equity: ETH's BUY (320 USD) and BTC's (650) fit under 80% of 2000; once ETH's fill
    // lands, a 10-SOL BUY (1500) does not.
    stack.hset(PORTFOLIO_KEY, &[("equity_usd", "2000")]).await;
    stack
        .hset(
            MARK_PRICE_KEY,
            &[
                ("BTCUSDT", "65000"),
                ("ETHUSDT", "3200"),
                ("SOLUSDT", "150"),
                ("DOGEUSDT", "0.15"),
            ],
        )
        .await;
    stack.start(Service::Ledger, &[]);
    stack.start(Service::Executor, &[("SYMBOL_ALLOWLIST", EXECUTOR_ALLOWLIST)]);
    // Everything below reaches the bridge in its first batch, before ETH's fill moves exposure.
    let filled = stack
        .xadd(INTENT_STREAM, &[("symbol", "ETHUSDT"), ("side", "BUY"), ("qty", "0.1")])
        .await;
    let blocked = stack
        .xadd(
            INTENT_STREAM,
            &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "0.01")],
        )
        .await;
    let no_ledger = stack
        .xadd(
            INTENT_STREAM,
            &[("symbol", "BTCUSDT"), ("side", "SELL"), ("qty", "0.01")],
        )
        .await;
    let flat = stack
        .xadd(INTENT_STREAM, &[("symbol", "ZECUSDT"), ("side", "SELL"), ("qty", "1")])
        .await;
    let outside = stack
        .xadd(INTENT_STREAM, &[("symbol", "XRPUSDT"), ("side", "BUY"), ("qty", "1")])
        .await;
    let refused = stack
        .xadd(INTENT_STREAM, &[("symbol", "DOGEUSDT"), ("side", "BUY"), ("qty", "10")])
        .await;
    let malformed = stack
        .xadd(INTENT_STREAM, &[("symbol", "ETH/USDT"), ("side", "BUY"), ("qty", "1")])
        .await;
    let short = stack
        .xadd(INTENT_STREAM, &[("symbol", "ETHUSDT"), ("side", "SHORT"), ("qty", "1")])
        .await;
    // No mark for NEAR: it waits up to 3 s, then goes to the DLQ.
    let no_mark = stack
        .xadd(
            INTENT_STREAM,
            &[("symbol", "NEARUSDT"), ("side", "BUY"), ("position_size_usd", "50")],
        )
        .await;
    stack.start(
        Service::Bridge,
        &[
            ("SYMBOL_ALLOWLIST", BRIDGE_ALLOWLIST),
            ("GOVERNOR_MODE", "legacy"),
            ("INTENT_BRIDGE_MAX_INTENT_AGE_MS", "3000"),
            ("STREAM_CLAIM_IDLE_MS", "1000"),
        ],
    );
    assert!(wait_idle(&stack.client, TIMEOUT).await.unwrap());
    let exposure = stack
        .xadd(INTENT_STREAM, &[("symbol", "SOLUSDT"), ("side", "BUY"), ("qty", "10")])
        .await;
    assert!(wait_idle(&stack.client, TIMEOUT).await.unwrap());

    let cases: [(&str, &String, &[&str]); 11] = [
        (
            "filled",
            &filled,
            &[
                "done: filled 0.1 @",
                "applied to the ledger",
                "venue order",
                "applied to quantum:position:ledger:ETHUSDT",
            ],
        ),
        (
            "governor",
            &blocked,
            &[
                "stopped at the governor: BLOCKED, kill_score_warning_risk_increase",
                "kill_score 0.7563",
                "executed=false decision=BLOCKED reason=kill_score_warning_risk_increase",
            ],
        ),
        (
            "no ledger",
            &no_ledger,
            &[
                "stopped at the bridge's gates: skipped, ledger_missing_sell",
                "ledger=missing",
            ],
        ),
        ("flat", &flat, &["skipped, ledger_flat_sell", "ledger=0"]),
        ("not allowlisted", &outside, &["skipped, not_allowlisted"]),
        (
            "executor refusal",
            &refused,
            &["stopped at the executor: not executed, symbol_not_in_allowlist:DOGEUSDT"],
        ),
        (
            "malformed",
            &malformed,
            &["stopped at the bridge: dead-lettered, invalid_symbol", "ETH/USDT"],
        ),
        ("short", &short, &["dead-lettered, short_not_supported"]),
        (
            "no mark",
            &no_mark,
            &[
                "dead-lettered, mark_price_unavailable",
                "INTENT_BRIDGE_MAX_INTENT_AGE_MS=3000",
            ],
        ),
        ("stale", &stale, &["skipped, stale", "max_ms=3000"]),
        ("exposure", &exposure, &["skipped, exposure", "max_pct=80"]),
    ];
    for (fate, id, expected) in cases {
        let out = why_intent(&stack, id);
        for needle in expected {
            assert!(
                out.contains(needle),
                "{fate}: `why --intent {id}` lacks {needle:?}:\n{out}"
            );
        }
    }
    let unknown = why_intent(&stack, "1-1");
    assert!(unknown.contains("not in trade.intent"), "{unknown}");

    // Symbols, one verdict line each.
    let btc = why(&stack, &["BTCUSDT"]);
    assert!(
        btc.contains(
            "BTCUSDT: entries BLOCKED by the governor (kill_score 0.7563 ≥ 0.60, legacy mode); SELLs skipped: no ledger"
        ),
        "{btc}"
    );
    assert!(btc.contains("allowlisted: yes (bridge: SYMBOL_ALLOWLIST="), "{btc}");
    assert!(btc.contains("ledger: missing"), "{btc}");
    assert!(btc.contains("governor: mode=legacy; kill_score 0.7563"), "{btc}");
    assert!(
        btc.contains("an entry now: BLOCKED (kill_score_warning_risk_increase)"),
        "{btc}"
    );
    let eth = why(&stack, &["ETHUSDT"]);
    assert!(
        eth.contains("ETHUSDT: trading (1 plans, 1 fills in the last 5 min)"),
        "{eth}"
    );
    let doge = why(&stack, &["DOGEUSDT"]);
    assert!(
        doge.contains("1 plan(s) refused by the executor (symbol_not_in_allowlist:DOGEUSDT)"),
        "{doge}"
    );
    assert!(
        doge.contains("executor: NO (BTCUSDT,ETHUSDT,SOLUSDT,ZECUSDT)"),
        "{doge}"
    );
    let ada = why(&stack, &["ADAUSDT"]);
    assert!(
        ada.contains("ADAUSDT: no intents for this symbol in the last 5 minutes"),
        "{ada}"
    );
    let xrp = why(&stack, &["xrpusdt"]);
    assert!(xrp.contains("XRPUSDT: not allowlisted (SYMBOL_ALLOWLIST="), "{xrp}");

    // Status: 300 intents in and 81 plans out is explained on the same screen.
    let (code, status) = quantumctl(&["status"], Some(&stack.url()));
    assert_eq!(code, 0, "{status}");
    assert!(status.contains("BRIDGE OUTCOMES (last 5 min): 10 intents"), "{status}");
    assert!(status.contains("blocked:kill_score_warning_risk_increase"), "{status}");
    let (code, json) = quantumctl(&["status", "--json"], Some(&stack.url()));
    assert_eq!(code, 0, "{json}");
    let json: serde_json::Value = serde_json::from_str(&json).expect("status --json is JSON");
    let by = &json["bridge_outcomes"]["by_outcome"];
    for (label, n) in [
        ("published", 2),
        ("blocked:kill_score_warning_risk_increase", 1),
        ("skipped:ledger_missing_sell", 1),
        ("skipped:ledger_flat_sell", 1),
        ("skipped:not_allowlisted", 1),
        ("skipped:exposure", 1),
        ("dlq:invalid_symbol", 1),
        ("dlq:short_not_supported", 1),
        ("dlq:mark_price_unavailable", 1),
    ] {
        assert_eq!(by[label], n, "{label} in {by}");
    }
    assert_eq!(json["streams"][PLAN_STREAM], 3);
}

#[tokio::test]
async fn why_sees_a_waiting_intent_and_a_replay() {
    let mut stack = Stack::new().await;
    stack.start(Service::Bridge, &[("SYMBOL_ALLOWLIST", "NEARUSDT,BTCUSDT")]);
    let waits = stack
        .xadd(
            INTENT_STREAM,
            &[("symbol", "NEARUSDT"), ("side", "BUY"), ("position_size_usd", "50")],
        )
        .await;
    stack
        .wait_log(
            Service::Bridge,
            &format!("Waiting for mark price: NEARUSDT BUY intent {waits}"),
        )
        .await;
    let out = why_intent(&stack, &waits);
    assert!(out.contains("waiting at the bridge: delivered"), "{out}");
    let (code, json) = quantumctl(&["status", "--json"], Some(&stack.url()));
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["bridge_outcomes"]["by_outcome"]["pending"], 1);

    // A replay keeps the first outcome and counts itself.
    let id = stack
        .xadd(
            INTENT_STREAM,
            &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "0.01")],
        )
        .await;
    stack.wait_log(Service::Bridge, "Publishing plan for BTCUSDT BUY").await;
    {
        use fred::prelude::*;
        let _: () = stack
            .client
            .xgroup_setid(INTENT_STREAM, INTENT_GROUP, "0")
            .await
            .unwrap();
    }
    stack
        .wait_log(Service::Bridge, &format!("Already processed: intent {id}"))
        .await;
    let out = why_intent(&stack, &id);
    assert!(out.contains("outcome=published"), "{out}");
    assert!(out.contains("replays=1"), "{out}");
}
