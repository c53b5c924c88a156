//! Gates that cannot be overshot: a SELL never exceeds the position minus the SELLs in flight,
//! exposure counts the BUYs in flight, unknown equity fails closed, and the in-flight
//! reservations behind all three are released by the executor and the ledger.

mod support;

use std::collections::HashMap;

use fred::prelude::*;
use rust_decimal::Decimal;

use quantum_model::contract::*;
use quantum_model::reservation::{Totals, TOTALS_FIELDS};
use quantumctl::stack::Service;
use support::{wait_for, Stack};

const ALLOWLIST: &str = "BTCUSDT,ETHUSDT,ZECUSDT";

async fn stack_with_marks() -> Stack {
    let stack = Stack::new().await;
    stack
        .hset(
            MARK_PRICE_KEY,
            &[("BTCUSDT", "65000"), ("ETHUSDT", "3000"), ("ZECUSDT", "40")],
        )
        .await;
    stack
}

/// Plans by intent id.
async fn plans(stack: &Stack) -> HashMap<String, HashMap<String, String>> {
    stack
        .entries(PLAN_STREAM)
        .await
        .into_iter()
        .map(|e| {
            (
                e.get("intent_id").unwrap_or_default().to_string(),
                e.fields.into_iter().collect(),
            )
        })
        .collect()
}

fn reservations_key(symbol: &str) -> String {
    format!("{{quantum:position:ledger:{symbol}}}:inflight")
}

#[tokio::test]
async fn sells_are_cut_to_the_position_minus_what_is_in_flight() {
    let mut stack = stack_with_marks().await;
    stack
        .hset(
            "quantum:position:ledger:ZECUSDT",
            &[("position_amt", "1"), ("notional_usd", "40")],
        )
        .await;
    stack
        .hset(
            "quantum:position:ledger:BTCUSDT",
            &[("position_amt", "1.5"), ("notional_usd", "97500")],
        )
        .await;
    stack
        .hset(
            "quantum:position:ledger:ETHUSDT",
            &[("position_amt", "-1"), ("notional_usd", "3000")],
        )
        .await;
    // One batch: two SELL 1 against LONG 1, a SELL 2 against LONG 1.5, a SELL against a short.
    let sell = |symbol: &'static str, qty: &'static str| [("symbol", symbol), ("side", "SELL"), ("qty", qty)];
    let zec_first = stack.xadd(INTENT_STREAM, &sell("ZECUSDT", "1")).await;
    let zec_second = stack.xadd(INTENT_STREAM, &sell("ZECUSDT", "1")).await;
    let btc_large = stack.xadd(INTENT_STREAM, &sell("BTCUSDT", "2")).await;
    let eth_short = stack.xadd(INTENT_STREAM, &sell("ETHUSDT", "1")).await;
    stack.start(Service::Bridge, &[("SYMBOL_ALLOWLIST", ALLOWLIST)]);
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;

    let published = plans(&stack).await;
    let zec = &published[&zec_first];
    assert_eq!(zec["qty"], "1");
    assert_eq!(zec["reduceOnly"], "true", "gated SELLs only reduce");
    assert!(
        !published.contains_key(&zec_second),
        "the position is taken by the first SELL"
    );
    assert_eq!(published[&btc_large]["qty"], "1.5", "cut to the position");
    assert!(!published.contains_key(&eth_short), "a SELL never adds to a short");
    // The group is idle once the commit acknowledged the batch; its log lines follow it.
    for line in [
        "Skip publish: ZECUSDT SELL but nothing available (position_amt=1 in_flight=1)",
        "SELL cut to available: symbol=BTCUSDT requested=2 available=1.5 position_amt=1.5 in_flight=0",
        "Skip publish: ETHUSDT SELL but nothing available (position_amt=-1 in_flight=0)",
    ] {
        stack.wait_log(Service::Bridge, line).await;
    }

    // The reservations outlive the batch: a later SELL finds nothing available either.
    let zec_reserved = stack.hash(&reservations_key("ZECUSDT")).await;
    assert_eq!(zec_reserved.len(), 1);
    assert_eq!(
        zec_reserved.values().next().map(|v| v.starts_with("side=SELL qty=1 ")),
        Some(true),
        "{zec_reserved:?}"
    );
    let later = stack.xadd(INTENT_STREAM, &sell("ZECUSDT", "0.5")).await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    assert!(!plans(&stack).await.contains_key(&later));
    let (code, why) = support::quantumctl(&["why", "--intent", &later], Some(&stack.url()));
    assert_eq!(code, 0, "{why}");
    assert!(why.contains("sell_nothing_available"), "{why}");
}

#[tokio::test]
async fn exposure_counts_buys_in_flight_across_batches() {
    let mut stack = stack_with_marks().await;
    stack.start(Service::Bridge, &[("SYMBOL_ALLOWLIST", ALLOWLIST)]);
    // 1 BTC at 65,000 against 100,000 of equity: 65%, under the 80% limit.
    let first = stack
        .xadd(INTENT_STREAM, &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "1")])
        .await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    // No executor runs: the ledger is still empty, but the first BUY is in flight.
    let second = stack
        .xadd(INTENT_STREAM, &[("symbol", "ETHUSDT"), ("side", "BUY"), ("qty", "5")])
        .await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    let published = plans(&stack).await;
    assert!(published.contains_key(&first));
    assert!(!published.contains_key(&second), "65% in flight + 15% is the limit");
    stack
        .wait_log(
            Service::Bridge,
            "Skip publish: ETHUSDT BUY rejected (exposure=80.0% >= MAX=80.0%)",
        )
        .await;
}

#[tokio::test]
async fn unknown_equity_refuses_buys_unless_the_operator_restores_fail_open() {
    let mut stack = Stack::new().await;
    let _: i64 = stack.client.del(PORTFOLIO_KEY).await.unwrap();
    stack.hset(MARK_PRICE_KEY, &[("BTCUSDT", "65000")]).await;
    stack.start(Service::Bridge, &[("SYMBOL_ALLOWLIST", ALLOWLIST)]);
    let refused = stack
        .xadd(
            INTENT_STREAM,
            &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "0.01")],
        )
        .await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    assert!(plans(&stack).await.is_empty());
    stack
        .wait_log(Service::Bridge, "Skip publish: BTCUSDT BUY rejected (equity unknown")
        .await;
    let (_, why) = support::quantumctl(&["why", "--intent", &refused], Some(&stack.url()));
    assert!(why.contains("equity_unknown"), "{why}");
    assert!(stack.stop(Service::Bridge));

    stack.start(
        Service::Bridge,
        &[
            ("SYMBOL_ALLOWLIST", ALLOWLIST),
            ("INTENT_BRIDGE_ALLOW_UNKNOWN_EQUITY", "true"),
        ],
    );
    let allowed = stack
        .xadd(
            INTENT_STREAM,
            &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "0.01")],
        )
        .await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    assert!(plans(&stack).await.contains_key(&allowed));
}

#[tokio::test]
async fn expired_reservations_are_removed_and_unreadable_ones_fail_closed() {
    let mut stack = stack_with_marks().await;
    stack
        .hset(
            "quantum:position:ledger:ZECUSDT",
            &[("position_amt", "1"), ("notional_usd", "40")],
        )
        .await;
    stack
        .hset(
            "quantum:position:ledger:BTCUSDT",
            &[("position_amt", "1"), ("notional_usd", "65000")],
        )
        .await;
    // A SELL reservation from long ago (its plan never reached the executor) and a corrupt one.
    stack
        .hset(
            &reservations_key("ZECUSDT"),
            &[("lost-plan", "side=SELL qty=1 notional_usd=40 ts=1000")],
        )
        .await;
    stack
        .hset(&reservations_key("BTCUSDT"), &[("garbage", "side=SELL qty=lots")])
        .await;
    stack.start(Service::Bridge, &[("SYMBOL_ALLOWLIST", ALLOWLIST)]);
    let zec = stack
        .xadd(INTENT_STREAM, &[("symbol", "ZECUSDT"), ("side", "SELL"), ("qty", "1")])
        .await;
    let btc = stack
        .xadd(INTENT_STREAM, &[("symbol", "BTCUSDT"), ("side", "SELL"), ("qty", "1")])
        .await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    let published = plans(&stack).await;
    assert!(published.contains_key(&zec), "the expired reservation no longer counts");
    assert!(!published.contains_key(&btc), "unknown in-flight state fails closed");
    // Removed by the housekeeping that follows the batch's commit (and its acknowledgement).
    wait_for("the expired reservation removed", || async {
        !stack.hash(&reservations_key("ZECUSDT")).await.contains_key("lost-plan")
    })
    .await;
    for line in [
        "Reservations expired: symbol=ZECUSDT count=1 fields=lost-plan",
        "Reservations of BTCUSDT unreadable",
        "Skip publish: BTCUSDT SELL but ledger unreadable",
    ] {
        stack.wait_log(Service::Bridge, line).await;
    }
}

#[tokio::test]
async fn executor_and_ledger_release_reservations_and_the_position_never_goes_short() {
    let mut stack = Stack::new().await;
    for service in [Service::Ledger, Service::Executor] {
        stack.start(service, &[("SYMBOL_ALLOWLIST", ALLOWLIST)]);
        stack.wait_log(service, "Consumer ready").await;
    }
    stack.start(Service::Bridge, &[("SYMBOL_ALLOWLIST", ALLOWLIST)]);
    let ledger = "quantum:position:ledger:ZECUSDT";
    stack
        .xadd(INTENT_STREAM, &[("symbol", "ZECUSDT"), ("side", "BUY"), ("qty", "1")])
        .await;
    // A BUY the venue rejects (a limit far below the market): its reservation is released too.
    stack
        .xadd(
            INTENT_STREAM,
            &[
                ("symbol", "ETHUSDT"),
                ("side", "BUY"),
                ("qty", "0.1"),
                ("type", "LIMIT"),
                ("price", "1"),
            ],
        )
        .await;
    wait_for("the first fill in the ZEC ledger", || {
        let stack = &stack;
        async move { stack.hash(ledger).await.get("position_amt").map(String::as_str) == Some("1") }
    })
    .await;
    // Three SELLs of 0.6 against LONG 1, back to back: 0.6, then 0.4 (cut), then nothing.
    for _ in 0..3 {
        stack
            .xadd(
                INTENT_STREAM,
                &[("symbol", "ZECUSDT"), ("side", "SELL"), ("qty", "0.6")],
            )
            .await;
    }
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    stack.wait_group_idle(PLAN_STREAM, PLAN_GROUP).await;
    stack.wait_group_idle(LEDGER_COMMIT_STREAM, LEDGER_GROUP).await;

    let sells: Vec<Decimal> = stack
        .entries(PLAN_STREAM)
        .await
        .iter()
        .filter(|p| p.get("side") == Some("SELL"))
        .map(|p| p.get("qty").unwrap_or_default().parse().unwrap())
        .collect();
    assert_eq!(sells.iter().sum::<Decimal>(), Decimal::ONE, "{sells:?}");
    assert_eq!(
        stack.hash(ledger).await.get("position_amt").map(String::as_str),
        Some("0")
    );
    let results = stack.entries(RESULT_STREAM).await;
    assert!(
        results
            .iter()
            .any(|r| r.get("symbol") == Some("ETHUSDT") && r.get("executed") == Some("false")),
        "the ETH limit is rejected"
    );
    for symbol in ["ZECUSDT", "ETHUSDT"] {
        let left = stack.hash(&reservations_key(symbol)).await;
        assert!(left.is_empty(), "{symbol} reservations left behind: {left:?}");
        let totals = stack.hash(&totals_key(symbol)).await;
        assert!(totals.is_empty(), "{symbol} totals left behind: {totals:?}");
    }
}

fn totals_key(symbol: &str) -> String {
    format!("{{quantum:position:ledger:{symbol}}}:inflight:total")
}

/// The totals the scripts keep, and what the reservations themselves add up to.
async fn totals_and_values(stack: &Stack, symbol: &str) -> (Totals, Totals) {
    let kept = stack.hash(&totals_key(symbol)).await;
    let kept: Vec<Option<String>> = TOTALS_FIELDS.iter().map(|f| kept.get(*f).cloned()).collect();
    let pairs: Vec<(String, String)> = stack.hash(&reservations_key(symbol)).await.into_iter().collect();
    (Totals::parse(&kept).unwrap(), Totals::of_values(&pairs).unwrap())
}

async fn wait_for_rebuilt(stack: &Stack) {
    wait_for("ZECUSDT's totals to agree with its reservations", || async {
        let (kept, counted) = totals_and_values(stack, "ZECUSDT").await;
        kept == counted
    })
    .await;
}

async fn sell(stack: &Stack, qty: &str) -> String {
    stack
        .xadd(INTENT_STREAM, &[("symbol", "ZECUSDT"), ("side", "SELL"), ("qty", qty)])
        .await
}

#[tokio::test]
async fn the_gates_read_totals_kept_with_the_reservations_and_rebuilt_when_they_disagree() {
    let mut stack = stack_with_marks().await;
    stack
        .hset(
            "quantum:position:ledger:ZECUSDT",
            &[("position_amt", "10"), ("notional_usd", "400")],
        )
        .await;
    stack.hset(PORTFOLIO_KEY, &[("equity_usd", "1000000")]).await;
    stack.start(Service::Bridge, &[("SYMBOL_ALLOWLIST", ALLOWLIST)]);
    for qty in ["1", "1", "1.25"] {
        sell(&stack, qty).await;
    }
    stack
        .xadd(INTENT_STREAM, &[("symbol", "ZECUSDT"), ("side", "BUY"), ("qty", "0.5")])
        .await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    let (kept, counted) = totals_and_values(&stack, "ZECUSDT").await;
    assert_eq!(kept, counted, "the commits keep the totals");
    assert_eq!(kept.sell_qty, Decimal::new(325, 2));
    assert_eq!(kept.buy_notional, Decimal::from(20), "BUY 0.5 at 40");
    assert_eq!(kept.count, 4);

    // Between walks the gates read the totals, not the reservations: totals inflated by hand
    // (the count still agreeing) leave nothing to SELL.
    stack.hset(&totals_key("ZECUSDT"), &[("sell_qty_whole", "10")]).await;
    let held_back = sell(&stack, "1").await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    assert!(!plans(&stack).await.contains_key(&held_back));
    stack
        .wait_log(
            Service::Bridge,
            "Skip publish: ZECUSDT SELL but nothing available (position_amt=10 in_flight=10.25)",
        )
        .await;

    // An operator removes a reservation by hand: the counts disagree, the gate sums the
    // reservations (3.25 - 1.25 = 2 in flight, so a SELL of 10 is cut to 8) and the totals are
    // rebuilt.
    let field = stack
        .hash(&reservations_key("ZECUSDT"))
        .await
        .into_iter()
        .find(|(_, v)| v.starts_with("side=SELL qty=1.25 "))
        .map(|(f, _)| f)
        .unwrap();
    let _: i64 = stack.client.hdel(reservations_key("ZECUSDT"), &field).await.unwrap();
    let cut = sell(&stack, "10").await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    assert_eq!(plans(&stack).await[&cut]["qty"], "8");
    // The rebuild runs after the commits (and their acknowledgements) of its batch.
    wait_for_rebuilt(&stack).await;
    assert_eq!(totals_and_values(&stack, "ZECUSDT").await.0.sell_qty, Decimal::TEN);

    // A corrupt total: the symbol is summed value by value (nothing is left to SELL) and the
    // totals are rebuilt again.
    stack.hset(&totals_key("ZECUSDT"), &[("count", "many")]).await;
    let refused = sell(&stack, "1").await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    assert!(!plans(&stack).await.contains_key(&refused), "nothing available to SELL");
    wait_for_rebuilt(&stack).await;
    stack
        .wait_log(
            Service::Bridge,
            "Skip publish: ZECUSDT SELL but nothing available (position_amt=10 in_flight=10)",
        )
        .await;
    let log = stack.log(Service::Bridge);
    assert_eq!(
        log.matches("RESERVATION_TOTALS_REBUILT symbol=ZECUSDT").count(),
        2,
        "{log}"
    );

    // The executor and the ledger take every reservation, and the totals, down to nothing.
    for service in [Service::Ledger, Service::Executor] {
        stack.start(service, &[("SYMBOL_ALLOWLIST", ALLOWLIST)]);
    }
    stack.wait_group_idle(PLAN_STREAM, PLAN_GROUP).await;
    stack.wait_group_idle(LEDGER_COMMIT_STREAM, LEDGER_GROUP).await;
    wait_for("every reservation and total released", || {
        let stack = &stack;
        async move {
            stack.hash(&reservations_key("ZECUSDT")).await.is_empty()
                && stack.hash(&totals_key("ZECUSDT")).await.is_empty()
        }
    })
    .await;
}

/// A script sums its changes to the totals in Lua and writes them once: exactly, past 2^53 and
/// with parts of 16 digits, and a count that ends at zero removes the totals.
#[tokio::test]
async fn totals_stay_exact_when_a_script_sums_many_large_reservations() {
    let stack = Stack::new().await;
    let symbol = quantum_model::types::Symbol::parse("ZECUSDT").unwrap();
    let large = "999999999999999"; // 15 digits: summed in Lua
    let huge = "9999999999999999"; // 16 digits: handed to HINCRBY at once
    let mut pairs: Vec<(String, String)> = (0..600)
        .map(|n| {
            (
                format!("plan{n:04}"),
                format!("side=SELL qty=1 notional_usd=1 ts=1 held={large}:99999999"),
            )
        })
        .collect();
    pairs.push((
        "plan_huge".into(),
        format!("side=SELL qty=1 notional_usd=1 ts=1 held={huge}:1"),
    ));
    let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(f, v)| (f.as_str(), v.as_str())).collect();
    stack.hset(&reservations_key("ZECUSDT"), &borrowed).await;
    // 600 × 999999999999999 + 9999999999999999, and 600 × 99999999 + 1.
    stack
        .hset(
            &totals_key("ZECUSDT"),
            &[
                ("sell_qty_whole", "609999999999999399"),
                ("sell_qty_frac", "59999999401"),
                ("count", "601"),
            ],
        )
        .await;

    // One script releases all but one of them.
    let release = |fields: Vec<String>| {
        let client = stack.client.clone();
        let symbol = symbol.clone();
        async move {
            let pipeline = client.pipeline();
            quantum_runtime::inflight::queue_release(&pipeline, &symbol, fields)
                .await
                .unwrap();
            let _: Vec<Value> = pipeline.all().await.unwrap();
        }
    };
    let mut fields: Vec<String> = (1..600).map(|n| format!("plan{n:04}")).collect();
    fields.push("plan_huge".into());
    release(fields).await;
    let (kept, _) = totals_and_values(&stack, "ZECUSDT").await;
    assert_eq!(
        kept.sell_qty,
        "999999999999999.99999999".parse::<Decimal>().unwrap(),
        "the totals are the one reservation left, exactly"
    );
    assert_eq!(kept.count, 1);
    let totals = stack.hash(&totals_key("ZECUSDT")).await;
    assert_eq!(totals["sell_qty_whole"], large);
    assert_eq!(totals["sell_qty_frac"], "99999999");

    release(vec!["plan0000".into()]).await;
    assert!(stack.hash(&reservations_key("ZECUSDT")).await.is_empty());
    assert!(
        stack.hash(&totals_key("ZECUSDT")).await.is_empty(),
        "a count that ends at zero removes the totals"
    );
}
