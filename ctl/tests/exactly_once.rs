//! Exactly once across redelivery, crashes and outages: no plan lost or doubled, no second
//! order, no fill counted twice.

mod support;

use std::collections::HashMap;

use fred::prelude::*;
use fred::types::Value;

use quantum_model::contract::*;
use quantumctl::pipeline_facts::wait_idle;
use quantumctl::redis_server::RedisServer;
use quantumctl::sim::{publish, DEMO_SYMBOLS};
use quantumctl::stack::Service;
use support::{assert_exactly_once, paper_orders, wait_for, Stack, TIMEOUT};

const ALL_SERVICES: [Service; 3] = [Service::Ledger, Service::Executor, Service::Bridge];

fn env_for(service: Service) -> Vec<(&'static str, String)> {
    match service {
        Service::Bridge => vec![
            ("SYMBOL_ALLOWLIST", DEMO_SYMBOLS.join(",")),
            ("MAX_EXPOSURE_PCT", "1000000".into()),
        ],
        // Small batches so kills land mid-batch; quick reclaim of a dead consumer's entries.
        _ => vec![],
    }
}

fn start(stack: &mut Stack, service: Service) {
    let mut env = env_for(service);
    env.push(("STREAM_BATCH_SIZE", "25".into()));
    env.push(("STREAM_CLAIM_IDLE_MS", "2000".into()));
    env.push(("STREAM_CLAIM_INTERVAL_MS", "1000".into()));
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    stack.start(service, &pairs);
}

/// Starts all three services and waits until each is consuming (the executor has published
/// the mark prices `position_usd` intents are sized with).
async fn start_all(stack: &mut Stack) {
    for s in ALL_SERVICES {
        start(stack, s);
    }
    for s in ALL_SERVICES {
        stack.wait_log(s, "Consumer ready").await;
    }
}

#[tokio::test]
async fn replaying_every_group_from_zero_changes_nothing() {
    let mut stack = Stack::new().await;
    start_all(&mut stack).await;
    let ids = publish(&stack.client, &support::demo_buys(120), 0).await.unwrap();
    assert!(wait_idle(&stack.client, TIMEOUT).await.unwrap());
    assert_exactly_once(&stack, &ids).await;
    let ledgers_before: Vec<_> = futures_ledgers(&stack).await;
    let (results_before, fills_before) = (stack.xlen(RESULT_STREAM).await, stack.xlen(LEDGER_COMMIT_STREAM).await);
    let paper_orders_before = paper_orders(&stack).await;

    // Replay the executor's and the ledger's streams from the start.
    for (stream, group) in [(PLAN_STREAM, PLAN_GROUP), (LEDGER_COMMIT_STREAM, LEDGER_GROUP)] {
        let _: Value = stack.client.xgroup_setid(stream, group, "0").await.unwrap();
    }
    stack.wait_log(Service::Executor, "Duplicate plan").await;
    assert!(wait_idle(&stack.client, TIMEOUT).await.unwrap());
    assert_eq!(stack.xlen(RESULT_STREAM).await, results_before, "no second result");
    assert_eq!(stack.xlen(LEDGER_COMMIT_STREAM).await, fills_before, "no second fill");
    assert_eq!(paper_orders(&stack).await, paper_orders_before, "no second order");
    assert_eq!(futures_ledgers(&stack).await, ledgers_before, "no ledger change");
    stack.wait_log(Service::Ledger, "LEDGER_DUPLICATE").await;

    // Replay the bridge too: every intent is recognised as processed and nothing is published
    // again (a mark-priced intent would otherwise be re-sized into a different plan).
    let _: Value = stack
        .client
        .xgroup_setid(INTENT_STREAM, INTENT_GROUP, "0")
        .await
        .unwrap();
    let plans_before = stack.xlen(PLAN_STREAM).await;
    stack
        .wait_log(Service::Bridge, "(a replay); acknowledged without publishing")
        .await;
    assert!(wait_idle(&stack.client, TIMEOUT).await.unwrap());
    assert_eq!(stack.xlen(PLAN_STREAM).await, plans_before, "no plan published twice");
    assert_eq!(stack.xlen(RESULT_STREAM).await, results_before);
    assert_eq!(stack.xlen(LEDGER_COMMIT_STREAM).await, fills_before);
    assert_eq!(paper_orders(&stack).await, paper_orders_before);
    assert_eq!(futures_ledgers(&stack).await, ledgers_before);
}

async fn futures_ledgers(stack: &Stack) -> Vec<HashMap<String, String>> {
    let mut out = Vec::new();
    for symbol in DEMO_SYMBOLS {
        out.push(stack.hash(&format!("quantum:position:ledger:{symbol}")).await);
    }
    out
}

#[tokio::test]
async fn sigkill_mid_batch_loses_and_doubles_nothing() {
    let mut stack = Stack::new().await;
    start_all(&mut stack).await;
    let intents = support::demo_buys(1500);
    let client = stack.client.clone();
    let feeder = tokio::spawn(async move { publish(&client, &intents, 600).await.unwrap() });

    // Kill each service several times while work is flowing, each time as soon as its output
    // has grown, so the kill lands inside a batch; then restart it.
    let watched = [
        (Service::Executor, RESULT_STREAM),
        (Service::Ledger, LEDGER_COMMIT_STREAM),
        (Service::Bridge, PLAN_STREAM),
    ];
    for round in 0..3 {
        for (service, stream) in watched {
            let before = stack.xlen(stream).await;
            let c = stack.client.clone();
            wait_for(
                &format!("{} to make progress (round {round})", service.binary()),
                || {
                    let c = c.clone();
                    async move { c.xlen::<u64, _>(stream).await.unwrap() > before + 20 }
                },
            )
            .await;
            stack.kill(service);
            start(&mut stack, service);
        }
    }
    // The ledger's progress is its acks, not its stream: kill it again right after a batch read.
    stack.kill(Service::Ledger);
    start(&mut stack, Service::Ledger);

    let ids = feeder.await.unwrap();
    assert!(
        wait_idle(&stack.client, TIMEOUT).await.unwrap(),
        "pipeline drains after the crashes"
    );
    assert_exactly_once(&stack, &ids).await;
    for s in ALL_SERVICES {
        assert!(stack.log(s).contains("Consumer ready"), "{} restarted", s.binary());
    }
}

#[tokio::test]
async fn a_redis_outage_is_retried_and_nothing_is_lost() {
    let redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).unwrap();
    let mut stack = Stack::with_redis(redis).await;
    start_all(&mut stack).await;
    let first = publish(&stack.client, &support::demo_buys(100), 0).await.unwrap();
    assert!(wait_idle(&stack.client, TIMEOUT).await.unwrap());

    stack.redis_mut().kill();
    stack.wait_log(Service::Bridge, "backing off").await;
    stack.redis_mut().restart().unwrap();

    let c = stack.client.clone();
    wait_for("test client reconnect", || {
        let c = c.clone();
        async move { c.ping::<String>(None).await.is_ok() }
    })
    .await;
    let intents: Vec<_> = support::demo_buys(200).into_iter().skip(100).collect();
    let second = publish(&stack.client, &intents, 0).await.unwrap();
    assert!(
        wait_idle(&stack.client, TIMEOUT).await.unwrap(),
        "services resume after the outage"
    );
    let all: Vec<String> = first.into_iter().chain(second).collect();
    assert_exactly_once(&stack, &all).await;
}

#[tokio::test]
async fn sigterm_finishes_the_batch_and_exits_cleanly() {
    let mut stack = Stack::new().await;
    start_all(&mut stack).await;
    let ids = publish(&stack.client, &support::demo_buys(60), 0).await.unwrap();
    assert!(wait_idle(&stack.client, TIMEOUT).await.unwrap());
    for s in ALL_SERVICES {
        assert!(stack.stop(s), "{} exits 0 on SIGTERM", s.binary());
        let log = stack.log(s);
        assert!(log.contains("SIGTERM received: finishing the batch in hand"), "{log}");
        assert!(log.contains("stopped"), "{log}");
    }
    assert_exactly_once(&stack, &ids).await;
}

/// Waits until `service` has died at its crash point, then reaps it.
async fn wait_crashed(stack: &mut Stack, service: Service) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while stack.process(service).exited().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "{service:?} never reached its crash point"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stack.kill(service);
}

/// A BTC bridge that reclaims a dead one's entries within a second.
const FAST_BTC_BRIDGE: [(&str, &str); 3] = [
    ("SYMBOL_ALLOWLIST", "BTCUSDT"),
    ("STREAM_CLAIM_IDLE_MS", "500"),
    ("STREAM_CLAIM_INTERVAL_MS", "200"),
];

/// Starts a bridge that dies at `point`, gives it a BUY of 1,000 USD of BTC at 50,000 and waits
/// for its death; returns the intent's entry id.
async fn crash_on_a_sized_buy(stack: &mut Stack, point: &str) -> String {
    stack.hset(MARK_PRICE_KEY, &[("BTCUSDT", "50000")]).await;
    stack.start_with_failpoint(Service::Bridge, &FAST_BTC_BRIDGE, &format!("{point}=return"));
    let intent = stack
        .xadd(
            INTENT_STREAM,
            &[
                ("symbol", "BTCUSDT"),
                ("side", "BUY"),
                ("position_usd", "1000"),
                ("leverage", "1"),
            ],
        )
        .await;
    wait_crashed(stack, Service::Bridge).await;
    intent
}

#[tokio::test]
async fn a_bridge_killed_at_any_step_of_its_commit_publishes_each_plan_once() {
    // (crash point, whether the plan is out when it dies, whether the marker is)
    for (point, plan_out, marker_out) in [
        ("bridge::after_reserve", false, false),
        ("bridge::after_claim", false, true),
        ("bridge::after_publish", true, true),
    ] {
        let mut stack = Stack::new().await;
        let intent = crash_on_a_sized_buy(&mut stack, point).await;
        let marker_key = seen_key(&intent);
        let marker: Option<String> = stack.client.get(&marker_key).await.unwrap();
        assert_eq!(stack.entries(PLAN_STREAM).await.len(), usize::from(plan_out), "{point}");
        assert_eq!(marker.is_some(), marker_out, "{point}: {marker:?}");
        if let Some(marker) = &marker {
            assert!(
                marker.contains("state=publishing\n{"),
                "{point}: the outcome rides along: {marker}"
            );
        }
        let reservations = stack.hash("{quantum:position:ledger:BTCUSDT}:inflight").await;
        assert_eq!(reservations.len(), 1, "{point}: reserved before it died");
        // The market moves: decided again, the intent would be another plan (another id).
        stack.hset(MARK_PRICE_KEY, &[("BTCUSDT", "40000")]).await;

        stack.start(Service::Bridge, &FAST_BTC_BRIDGE);
        stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
        let plans = stack.entries(PLAN_STREAM).await;
        assert_eq!(plans.len(), 1, "{point}: one plan: {plans:?}");
        assert_eq!(plans[0].get("intent_id"), Some(intent.as_str()));
        let marker: String = stack.client.get(&marker_key).await.unwrap();
        assert!(
            marker.starts_with("outcome=published") && !marker.contains('\n') && !marker.contains("state="),
            "{point}: the marker is the record alone once published: {marker}"
        );
        let ttl: i64 = stack.client.ttl(&marker_key).await.unwrap();
        assert!(ttl > 86_000, "{point}: the marker keeps its TTL: {ttl}");
        let reservations = stack.hash("{quantum:position:ledger:BTCUSDT}:inflight").await;
        assert_eq!(
            reservations.keys().collect::<Vec<_>>(),
            [plans[0].get("plan_id").unwrap()],
            "{point}: one reservation, the plan's (one left before the crash is released)"
        );
        let totals = stack.hash("{quantum:position:ledger:BTCUSDT}:inflight:total").await;
        assert_eq!(
            totals.get("count").map(String::as_str),
            Some("1"),
            "{point}: {totals:?}"
        );
        // Decided again only when the crash came before the claim; otherwise the claim's plan.
        let expected_qty = if marker_out { "0.02" } else { "0.025" };
        assert_eq!(plans[0].get("qty"), Some(expected_qty), "{point}");
        let sets = quantum_runtime::consumer::scan_keys(&stack.client, "{quantum:position:ledger:*}:inflight:entry:*")
            .await
            .unwrap();
        assert!(
            sets.is_empty(),
            "{point}: the intent's set is dropped once published: {sets:?}"
        );
        if marker_out {
            stack
                .wait_log(
                    Service::Bridge,
                    &format!("Finishing intent {intent}: decided before (published)"),
                )
                .await;
        }
    }
}

#[tokio::test]
async fn a_sell_retried_after_a_crash_is_not_refused_by_its_own_earlier_reservation() {
    let mut stack = Stack::new().await;
    stack
        .hset(
            "quantum:position:ledger:ZECUSDT",
            &[("position_amt", "1"), ("notional_usd", "40")],
        )
        .await;
    let env = [
        ("SYMBOL_ALLOWLIST", "ZECUSDT"),
        ("STREAM_CLAIM_IDLE_MS", "500"),
        ("STREAM_CLAIM_INTERVAL_MS", "200"),
    ];
    // Killed after reserving the whole position for its SELL, before claiming the intent.
    stack.start_with_failpoint(Service::Bridge, &env, "bridge::after_reserve=return");
    let intent = stack
        .xadd(INTENT_STREAM, &[("symbol", "ZECUSDT"), ("side", "SELL"), ("qty", "1")])
        .await;
    wait_crashed(&mut stack, Service::Bridge).await;
    let reservations = stack.hash("{quantum:position:ledger:ZECUSDT}:inflight").await;
    assert_eq!(reservations.len(), 1, "the SELL's reservation is left");

    stack.start(Service::Bridge, &env);
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    let plans = stack.entries(PLAN_STREAM).await;
    assert_eq!(plans.len(), 1, "{}", stack.log(Service::Bridge));
    assert_eq!(
        (plans[0].get("intent_id"), plans[0].get("side"), plans[0].get("qty")),
        (Some(intent.as_str()), Some("SELL"), Some("1")),
        "the whole position, as decided the first time"
    );
    let reservations = stack.hash("{quantum:position:ledger:ZECUSDT}:inflight").await;
    assert_eq!(
        reservations.keys().collect::<Vec<_>>(),
        [plans[0].get("plan_id").unwrap()]
    );
    let sets = quantum_runtime::consumer::scan_keys(&stack.client, "{quantum:position:ledger:*}:inflight:entry:*")
        .await
        .unwrap();
    assert!(sets.is_empty(), "{sets:?}");
}

#[tokio::test]
async fn a_retried_intent_decided_into_a_skip_gives_back_what_its_crashed_attempt_reserved() {
    let mut stack = Stack::new().await;
    crash_on_a_sized_buy(&mut stack, "bridge::after_reserve").await;
    assert_eq!(stack.hash("{quantum:position:ledger:BTCUSDT}:inflight").await.len(), 1);
    // The equity is gone meanwhile: decided again, the BUY is refused.
    let _: i64 = stack.client.hdel(PORTFOLIO_KEY, "equity_usd").await.unwrap();

    stack.start(Service::Bridge, &FAST_BTC_BRIDGE);
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    assert!(stack.entries(PLAN_STREAM).await.is_empty());
    stack
        .wait_log(Service::Bridge, "Skip publish: BTCUSDT BUY rejected (equity unknown")
        .await;
    for key in [
        "{quantum:position:ledger:BTCUSDT}:inflight",
        "{quantum:position:ledger:BTCUSDT}:inflight:total",
    ] {
        let exists: i64 = stack.client.exists(key).await.unwrap();
        assert_eq!(exists, 0, "{key}: nothing left in flight");
    }
}
