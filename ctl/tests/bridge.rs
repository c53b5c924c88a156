//! The bridge against a real redis-server: every gate and its log line, every intent format,
//! every malformed case, strict mode and clean shutdown.

mod support;

use std::collections::HashMap;

use fred::prelude::*;
use fred::types::Value;
use quantum_model::contract::*;
use quantumctl::stack::Service;
use support::Stack;

const ALLOWLIST: &str = "BTCUSDT,ETHUSDT,SOLUSDT,ZECUSDT";

async fn seeded_stack() -> Stack {
    let stack = Stack::new().await;
    stack
        .hset(
            "quantum:position:ledger:ZECUSDT",
            &[("position_amt", "5"), ("notional_usd", "200")],
        )
        .await;
    stack
        .hset(
            "quantum:position:ledger:SOLUSDT",
            &[("position_amt", "0"), ("notional_usd", "0")],
        )
        .await;
    stack.hset(MARK_PRICE_KEY, &[("ETHUSDT", "3000")]).await;
    stack
}

/// Plans by intent id, DLQ entries by source id.
async fn outputs(
    stack: &Stack,
) -> (
    HashMap<String, HashMap<String, String>>,
    HashMap<String, HashMap<String, String>>,
) {
    let plans = stack
        .entries(PLAN_STREAM)
        .await
        .into_iter()
        .map(|e| {
            (
                e.get("intent_id").unwrap_or_default().to_string(),
                e.fields.into_iter().collect(),
            )
        })
        .collect();
    let dlq = stack
        .entries(INTENT_DLQ_STREAM)
        .await
        .into_iter()
        .map(|e| {
            (
                e.get("source_id").unwrap_or_default().to_string(),
                e.fields.into_iter().collect(),
            )
        })
        .collect();
    (plans, dlq)
}

/// What the bridge must make of an intent.
enum Expect {
    /// A plan with these fields.
    Plan(&'static [(&'static str, &'static str)]),
    /// Skipped by a gate: no plan, no dead letter.
    Skipped,
    /// Dead-lettered with this reason.
    Dlq(&'static str),
}

#[tokio::test]
async fn default_mode_gates_formats_and_log_lines() {
    let mut stack = seeded_stack().await;
    // No age limit: an intent without a mark price is dead-lettered at once instead of waiting.
    stack.start(
        Service::Bridge,
        &[
            ("SYMBOL_ALLOWLIST", ALLOWLIST),
            ("INTENT_BRIDGE_MAX_INTENT_AGE_MS", "0"),
        ],
    );

    // Each intent, in every accepted format, and what the bridge must make of it.
    let big = "9".repeat(20_000);
    let json = r#"{"symbol":"ETHUSDT","side":"BUY","qty":0.25,"leverage":3,"stop_loss":2800,"take_profit":3300,"reduceOnly":false}"#;
    let cases: Vec<(Vec<(&str, &str)>, Expect)> = vec![
        (
            vec![("symbol", "BTCUSDT"), ("side", "BUY"), ("quantity", "0.5")],
            Expect::Plan(&[
                ("decision", "EXECUTE"),
                ("symbol", "BTCUSDT"),
                ("side", "BUY"),
                ("qty", "0.5"),
                ("type", "MARKET"),
                ("reduceOnly", "false"),
                ("leverage", "1"),
                ("source", "intent_bridge"),
            ]),
        ),
        (
            vec![("symbol", "ETHUSDT"), ("action", "sell"), ("qty", "1")],
            Expect::Skipped,
        ),
        (
            vec![("symbol", "SOLUSDT"), ("side", "SELL"), ("qty", "1")],
            Expect::Skipped,
        ),
        (
            vec![("symbol", "zecusdt"), ("side", "Sell"), ("qty", "1")],
            Expect::Plan(&[("side", "SELL"), ("symbol", "ZECUSDT")]),
        ),
        (
            vec![("symbol", "DOGEUSDT"), ("side", "BUY"), ("qty", "10")],
            Expect::Skipped,
        ),
        (
            vec![("payload", json)],
            Expect::Plan(&[
                ("qty", "0.25"),
                ("leverage", "3"),
                ("stop_loss", "2800"),
                ("take_profit", "3300"),
            ]),
        ),
        (
            vec![
                ("symbol", "BTCUSDT"),
                ("side", "BUY"),
                ("size", "100"),
                ("price", "40000"),
            ],
            Expect::Plan(&[("qty", "0.0025")]),
        ),
        (
            vec![
                ("symbol", "ETHUSDT"),
                ("side", "BUY"),
                ("position_size_usd", "300"),
                ("entry_price", "3000"),
            ],
            Expect::Plan(&[("qty", "0.1")]),
        ),
        // (300 * 2) / mark 3000.
        (
            vec![
                ("symbol", "ETHUSDT"),
                ("side", "BUY"),
                ("position_usd", "300"),
                ("leverage", "2"),
            ],
            Expect::Plan(&[("qty", "0.2")]),
        ),
        (
            vec![
                ("symbol", "SOLUSDT"),
                ("side", "BUY"),
                ("position_usd", "300"),
                ("leverage", "2"),
            ],
            Expect::Dlq("mark_price_unavailable"),
        ),
        (
            vec![
                ("symbol", "BTCUSDT"),
                ("side", "BUY"),
                ("qty", "0.1"),
                ("type", "limit"),
                ("price", "64000"),
            ],
            Expect::Plan(&[("type", "LIMIT"), ("price", "64000")]),
        ),
        (vec![("side", "BUY"), ("qty", "1")], Expect::Dlq("missing_symbol")),
        (
            vec![("symbol", "BTC/USDT"), ("side", "BUY"), ("qty", "1")],
            Expect::Dlq("invalid_symbol"),
        ),
        (vec![("symbol", "BTCUSDT"), ("qty", "1")], Expect::Dlq("missing_side")),
        (
            vec![("symbol", "BTCUSDT"), ("side", "HOLD"), ("qty", "1")],
            Expect::Dlq("unknown_side"),
        ),
        (
            vec![("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "0")],
            Expect::Dlq("non_positive_quantity"),
        ),
        (
            vec![("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "-2")],
            Expect::Dlq("non_positive_quantity"),
        ),
        (
            vec![("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "NaN")],
            Expect::Dlq("non_finite_number"),
        ),
        (
            vec![("symbol", "BTCUSDT"), ("side", "BUY"), ("quantity", "inf")],
            Expect::Dlq("non_finite_number"),
        ),
        (
            vec![("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "1,5")],
            Expect::Dlq("invalid_number"),
        ),
        (
            vec![("symbol", "BTCUSDT"), ("side", "BUY")],
            Expect::Dlq("missing_quantity"),
        ),
        (
            vec![
                ("symbol", "BTCUSDT"),
                ("side", "BUY"),
                ("qty", "1"),
                ("leverage", "1000"),
            ],
            Expect::Dlq("absurd_leverage"),
        ),
        (vec![("payload", "{\"symbol\": ")], Expect::Dlq("invalid_payload")),
        (
            vec![("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", big.as_str())],
            Expect::Dlq("oversized_or_binary"),
        ),
    ];
    let mut ids = Vec::new();
    for (fields, expect) in &cases {
        ids.push((stack.xadd(INTENT_STREAM, fields).await, expect));
    }
    // Binary garbage in a field value.
    let binary: String = stack
        .client
        .xadd(
            INTENT_STREAM,
            false,
            None,
            "*",
            vec![
                ("symbol", Value::from("BTCUSDT")),
                ("side", Value::Bytes(vec![0xff, 0xfe, 0x00].into())),
            ],
        )
        .await
        .expect("xadd binary");
    let binary_case = Expect::Dlq("oversized_or_binary");
    ids.push((binary, &binary_case));

    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    let (plans, dlq) = outputs(&stack).await;
    for (id, expect) in &ids {
        match expect {
            Expect::Plan(fields) => {
                let plan = plans.get(id).unwrap_or_else(|| panic!("intent {id} has no plan"));
                for (k, v) in fields.iter() {
                    assert_eq!(plan[*k], *v, "intent {id}: plan field {k}");
                }
                assert_eq!(plan["plan_id"].len(), 16);
                assert!(plan["plan_id"]
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
                assert!(plan["timestamp"].parse::<u64>().is_ok());
            }
            Expect::Skipped => assert!(
                !plans.contains_key(id) && !dlq.contains_key(id),
                "{id} should be skipped"
            ),
            // DLQ with the specific reason, the error text and the raw fields.
            Expect::Dlq(reason) => {
                let entry = dlq
                    .get(id)
                    .unwrap_or_else(|| panic!("{reason} intent {id} missing from the DLQ"));
                assert_eq!(entry["reason"], *reason, "intent {id}");
                assert!(!entry["error"].is_empty());
                assert!(serde_json::from_str::<serde_json::Value>(&entry["raw"]).is_ok());
            }
        }
    }
    assert_eq!(plans.len(), 7);

    let lines = [
        "Intent Bridge - trade.intent → apply.plan [intent-bridge-ledger-open-v1]",
        "Require ledger for OPEN: false",
        "Skip flat SELL: true",
        "Config: allowlist=BTCUSDT,ETHUSDT,SOLUSDT,ZECUSDT",
        "LEDGER_MISSING_OPEN allowed: symbol=BTCUSDT side=BUY",
        "LEDGER_MISSING_OPEN allowed: symbol=ETHUSDT side=BUY",
        "Skip publish: ETHUSDT SELL but ledger unknown",
        "Skip publish: SOLUSDT SELL but ledger flat",
        "SKIP_INTENT_SYMBOL_NOT_IN_ALLOWLIST symbol=DOGEUSDT",
        "Publishing plan for BTCUSDT BUY: leverage=1, sl=None, tp=None",
        "Publishing plan for ETHUSDT BUY: leverage=3, sl=2800, tp=3300",
        "Publishing plan for ZECUSDT SELL: leverage=1, sl=None, tp=None",
        "DLQ intent",
    ];
    let log = stack.wait_logs(Service::Bridge, &lines).await;
    assert!(
        !log.contains("LEDGER_MISSING_OPEN allowed: symbol=ZECUSDT"),
        "ZEC has a ledger"
    );

    assert!(stack.stop(Service::Bridge), "bridge exits 0 on SIGTERM");
    assert!(
        stack.log(Service::Bridge).contains(
            "Intent Bridge stopped: consumed=25 published=7 blocked=0 ledger_missing_open=6 malformed=15 replayed=0 \
             skipped=[ledger_flat_sell=1,ledger_missing_sell=1,not_allowlisted=1]"
        ),
        "{}",
        stack.log(Service::Bridge)
    );
}

#[tokio::test]
async fn a_corrupt_ledger_fails_closed() {
    let mut stack = seeded_stack().await;
    stack
        .hset("quantum:position:ledger:BTCUSDT", &[("position_amt", "garbage")])
        .await;
    stack.start(Service::Bridge, &[("SYMBOL_ALLOWLIST", ALLOWLIST)]);
    let buy = stack
        .xadd(INTENT_STREAM, &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "1")])
        .await;
    let sell = stack
        .xadd(INTENT_STREAM, &[("symbol", "BTCUSDT"), ("side", "SELL"), ("qty", "1")])
        .await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    let (plans, dlq) = outputs(&stack).await;
    for id in [&buy, &sell] {
        assert!(!plans.contains_key(id) && !dlq.contains_key(id), "{id} must be skipped");
    }
    let log = stack
        .wait_logs(
            Service::Bridge,
            &[
                "Ledger of BTCUSDT unreadable",
                "Skip publish: BTCUSDT BUY but ledger unreadable",
                "Skip publish: BTCUSDT SELL but ledger unreadable",
            ],
        )
        .await;
    assert!(
        !log.contains("LEDGER_MISSING_OPEN allowed: symbol=BTCUSDT"),
        "a corrupt ledger is not a missing one"
    );
}

#[tokio::test]
async fn strict_mode_restores_the_old_gate() {
    let mut stack = seeded_stack().await;
    stack.start(
        Service::Bridge,
        &[
            ("SYMBOL_ALLOWLIST", ALLOWLIST),
            ("INTENT_BRIDGE_REQUIRE_LEDGER_FOR_OPEN", "true"),
        ],
    );
    let btc = stack
        .xadd(INTENT_STREAM, &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "1")])
        .await;
    let zec = stack
        .xadd(INTENT_STREAM, &[("symbol", "ZECUSDT"), ("side", "BUY"), ("qty", "1")])
        .await;
    let sol = stack
        .xadd(INTENT_STREAM, &[("symbol", "SOLUSDT"), ("side", "BUY"), ("qty", "1")])
        .await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    let (plans, _) = outputs(&stack).await;
    assert!(!plans.contains_key(&btc), "no ledger, strict: skipped");
    assert!(
        plans.contains_key(&zec) && plans.contains_key(&sol),
        "ledgers exist (a flat one counts)"
    );
    let log = stack
        .wait_logs(
            Service::Bridge,
            &[
                "Require ledger for OPEN: true",
                "Skip publish: BTCUSDT BUY but ledger unknown (strict mode)",
            ],
        )
        .await;
    assert!(!log.contains("LEDGER_MISSING_OPEN"));
}

#[tokio::test]
async fn exposure_gate_refuses_buys_but_not_sells() {
    let mut stack = seeded_stack().await;
    stack
        .hset("quantum:position:ledger:ZECUSDT", &[("notional_usd", "85000")])
        .await;
    stack.start(Service::Bridge, &[("SYMBOL_ALLOWLIST", ALLOWLIST)]);
    let buy = stack
        .xadd(INTENT_STREAM, &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "1")])
        .await;
    let sell = stack
        .xadd(INTENT_STREAM, &[("symbol", "ZECUSDT"), ("side", "SELL"), ("qty", "1")])
        .await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    let (plans, _) = outputs(&stack).await;
    assert!(!plans.contains_key(&buy));
    assert!(plans.contains_key(&sell));
    stack
        .wait_log(
            Service::Bridge,
            "Skip publish: BTCUSDT BUY rejected (exposure=85.0% >= MAX=80.0%)",
        )
        .await;
}

#[tokio::test]
async fn exposure_counts_the_order_itself_and_the_batch_before_it() {
    let mut stack = seeded_stack().await;
    stack.hset(MARK_PRICE_KEY, &[("BTCUSDT", "65000")]).await;
    // Five 1-BTC BUYs in one batch against 100,000 of equity and an 80% limit: the first
    // (65.2% with ZEC's 200) passes, the second would make 130.2%.
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            stack
                .xadd(INTENT_STREAM, &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "1")])
                .await,
        );
    }
    stack.start(Service::Bridge, &[("SYMBOL_ALLOWLIST", ALLOWLIST)]);
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    let (plans, _) = outputs(&stack).await;
    assert!(plans.contains_key(&ids[0]));
    assert_eq!(plans.len(), 1, "one BUY fits under the limit");
    stack
        .wait_log(
            Service::Bridge,
            "Skip publish: BTCUSDT BUY rejected (exposure=130.2% >= MAX=80.0%)",
        )
        .await;
}

#[tokio::test]
async fn flat_sell_skipping_can_be_switched_off_and_eps_widens_flat() {
    let mut stack = seeded_stack().await;
    stack
        .hset("quantum:position:ledger:ZECUSDT", &[("position_amt", "0.0005")])
        .await;
    stack.start(
        Service::Bridge,
        &[("SYMBOL_ALLOWLIST", ALLOWLIST), ("INTENT_BRIDGE_FLAT_EPS", "0.001")],
    );
    let zec = stack
        .xadd(INTENT_STREAM, &[("symbol", "ZECUSDT"), ("side", "SELL"), ("qty", "1")])
        .await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    assert!(
        !outputs(&stack).await.0.contains_key(&zec),
        "|0.0005| <= eps 0.001 is flat"
    );
    assert!(stack.stop(Service::Bridge));

    stack.start(
        Service::Bridge,
        &[
            ("SYMBOL_ALLOWLIST", ALLOWLIST),
            ("INTENT_BRIDGE_SKIP_FLAT_SELL", "false"),
        ],
    );
    let eth = stack
        .xadd(INTENT_STREAM, &[("symbol", "ETHUSDT"), ("side", "SELL"), ("qty", "1")])
        .await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    assert!(
        outputs(&stack).await.0.contains_key(&eth),
        "SELL without ledger passes when skipping is off"
    );
}

#[tokio::test]
async fn bad_configuration_fails_fast_with_a_clear_message() {
    let mut stack = Stack::new().await;
    stack.start(Service::Bridge, &[("INTENT_BRIDGE_ALLOWLIST", "BTCUSDT,BAD/SYM")]);
    let proc = stack.process(Service::Bridge);
    support::wait_for("bridge exit", || {
        let exited = proc.exited().is_some();
        async move { exited }
    })
    .await;
    assert!(stack
        .log(Service::Bridge)
        .contains("INTENT_BRIDGE_ALLOWLIST: symbol \"BAD/SYM\""));

    // An age limit below the reclaim age would refuse every reclaimed entry as stale.
    stack.start(Service::Bridge, &[("INTENT_BRIDGE_MAX_INTENT_AGE_MS", "30000")]);
    let proc = stack.process(Service::Bridge);
    support::wait_for("bridge exit", || {
        let exited = proc.exited().is_some();
        async move { exited }
    })
    .await;
    assert!(stack.log(Service::Bridge).contains(
        "INTENT_BRIDGE_MAX_INTENT_AGE_MS (30000) must exceed STREAM_CLAIM_IDLE_MS + STREAM_BLOCK_MS (60200)"
    ));

    stack.start(Service::Bridge, &[("INTENT_BRIDGE_REQUIRE_LEDGER_FOR_OPEN", "maybe")]);
    let proc = stack.process(Service::Bridge);
    support::wait_for("bridge exit", || {
        let code = proc.exited();
        async move { code == Some(Some(2)) }
    })
    .await;
    assert!(stack.log(Service::Bridge).contains("\"maybe\" is not true/false"));
}

#[tokio::test]
async fn a_missing_group_is_created_and_a_deleted_pending_entry_is_acknowledged() {
    let mut stack = Stack::new().await;
    // An entry delivered to the bridge's consumer, then deleted before it was processed.
    let id = stack
        .xadd(INTENT_STREAM, &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "1")])
        .await;
    let _: Value = stack
        .client
        .xgroup_create(INTENT_STREAM, INTENT_GROUP, "0", true)
        .await
        .unwrap();
    // Under a stable name (as the systemd units set it), so the restart finds it as its own.
    let consumer = format!("intent_bridge-{}", quantum_runtime::config::hostname());
    let _: Value = stack
        .client
        .xreadgroup(
            INTENT_GROUP,
            consumer.as_str(),
            Some(10),
            None,
            false,
            INTENT_STREAM,
            ">",
        )
        .await
        .unwrap();
    let _: u64 = stack.client.xdel(INTENT_STREAM, id.as_str()).await.unwrap();
    stack.start(Service::Bridge, &[("CONSUMER_NAME", consumer.as_str())]);
    stack
        .wait_log(Service::Bridge, "were deleted before processing; acknowledging them")
        .await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
}
