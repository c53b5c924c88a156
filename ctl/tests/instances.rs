//! Several instances of every service at once: each process is its own consumer (unique names
//! by default), every intent still becomes one plan, one order and one ledger fill, and the
//! names of long-gone consumers are pruned.

mod support;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Value};

use quantum_model::contract::*;
use quantumctl::pipeline_facts::wait_idle;
use quantumctl::sim::{publish, DEMO_SYMBOLS};
use quantumctl::stack::Service;
use support::{assert_exactly_once, consumers, wait_for, Stack, TIMEOUT};

const GROUPS: [(&str, &str); 3] = [
    (INTENT_STREAM, INTENT_GROUP),
    (PLAN_STREAM, PLAN_GROUP),
    (LEDGER_COMMIT_STREAM, LEDGER_GROUP),
];

#[tokio::test]
async fn two_of_every_service_handle_each_intent_exactly_once() {
    let mut stack = Stack::new().await;
    let allow = DEMO_SYMBOLS.join(",");
    let env = [
        ("SYMBOL_ALLOWLIST", allow.as_str()),
        ("MAX_EXPOSURE_PCT", "1000000"),
        ("STREAM_BATCH_SIZE", "16"),
    ];
    let mut replicas = Vec::new();
    for service in [Service::Ledger, Service::Executor, Service::Bridge] {
        stack.start(service, &env);
        replicas.push((service, stack.start_replica(service, &env)));
    }
    for (service, replica) in &replicas {
        stack.wait_log(*service, "Consumer ready").await;
        wait_for("the replica to consume", || async {
            stack.replica_log(*replica).contains("Consumer ready")
        })
        .await;
    }
    let intents = support::demo_buys(240);
    let ids = publish(&stack.client, &intents, 0).await.unwrap();
    assert!(wait_idle(&stack.client, TIMEOUT).await.unwrap());
    assert_exactly_once(&stack, &ids).await;

    let hostname = quantum_runtime::config::hostname();
    for (stream, group) in GROUPS {
        let names: Vec<String> = consumers(&stack, stream, group)
            .await
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names.len(), 2, "{group}: one consumer per process: {names:?}");
        assert_ne!(names[0], names[1]);
        for name in &names {
            assert!(name.contains(&format!("-{hostname}-")), "{name}");
        }
    }
}

#[tokio::test]
async fn idle_consumers_with_nothing_pending_are_pruned() {
    let mut stack = Stack::new().await;
    // Before the ledger starts: a consumer that left nothing behind, and one that holds an
    // entry it never acknowledged.
    let xgroup = |args: Vec<&str>| {
        let client = stack.client.clone();
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        async move {
            let _: Value = client
                .custom(CustomCommand::new_static("XGROUP", ClusterHash::FirstKey, false), args)
                .await
                .unwrap();
        }
    };
    xgroup(vec!["CREATE", LEDGER_COMMIT_STREAM, LEDGER_GROUP, "0", "MKSTREAM"]).await;
    xgroup(vec![
        "CREATECONSUMER",
        LEDGER_COMMIT_STREAM,
        LEDGER_GROUP,
        "ledger-gone-1-0000",
    ])
    .await;
    stack.xadd(LEDGER_COMMIT_STREAM, &[("fill_id", "held")]).await;
    let _: Value = stack
        .client
        .xreadgroup(
            LEDGER_GROUP,
            "ledger-busy-2-0000",
            Some(1),
            None,
            false,
            LEDGER_COMMIT_STREAM,
            ">",
        )
        .await
        .unwrap();
    stack.start(
        Service::Ledger,
        &[
            ("STREAM_CONSUMER_PRUNE_IDLE_MS", "300"),
            ("STREAM_CLAIM_INTERVAL_MS", "200"),
            ("STREAM_CLAIM_IDLE_MS", "600000"),
        ],
    );
    stack.wait_log(Service::Ledger, "Consumer ready").await;

    wait_for("the gone consumer to be pruned", || async {
        consumers(&stack, LEDGER_COMMIT_STREAM, LEDGER_GROUP)
            .await
            .iter()
            .all(|(name, _)| name != "ledger-gone-1-0000")
    })
    .await;
    let left = consumers(&stack, LEDGER_COMMIT_STREAM, LEDGER_GROUP).await;
    assert!(
        left.contains(&("ledger-busy-2-0000".to_string(), 1)),
        "a consumer holding entries is kept: {left:?}"
    );
    assert_eq!(left.len(), 2, "the ledger itself stays: {left:?}");
    stack
        .wait_log(Service::Ledger, "Pruned consumer ledger-gone-1-0000")
        .await;
}

#[tokio::test]
async fn two_bridges_deciding_one_intent_publish_one_plan() {
    let mut stack = Stack::new().await;
    stack.hset(MARK_PRICE_KEY, &[("BTCUSDT", "65000")]).await;
    let fast = [
        ("SYMBOL_ALLOWLIST", "BTCUSDT"),
        ("STREAM_CLAIM_IDLE_MS", "500"),
        ("STREAM_CLAIM_INTERVAL_MS", "200"),
        ("STREAM_BLOCK_MS", "100"),
    ];
    // The first bridge decides the intent, then stalls for 3 s before its commit (a GC pause, a
    // SIGSTOP): long enough for the second to reclaim the entry and decide it again.
    stack.start_with_failpoint(Service::Bridge, &fast, "bridge::before_commit=1*sleep(3000)");
    stack.wait_log(Service::Bridge, "Consumer ready").await;
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
    stack
        .wait_held(INTENT_STREAM, INTENT_GROUP, "the first bridge to hold the intent")
        .await;
    // The market moves: sized again, the intent gets another quantity, hence another plan id.
    stack.hset(MARK_PRICE_KEY, &[("BTCUSDT", "50000")]).await;
    let second = stack.start_replica(Service::Bridge, &fast);
    // Its reservation is refused: the second bridge reserved (and committed) first.
    stack
        .wait_log(
            Service::Bridge,
            &format!("another bridge reserved meanwhile): intent {intent} is decided again"),
        )
        .await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    let plans = stack.entries(PLAN_STREAM).await;
    assert_eq!(
        plans.len(),
        1,
        "one plan for one intent: {plans:?}\n{}\n{}",
        stack.log(Service::Bridge),
        stack.replica_log(second)
    );
    assert_eq!(plans[0].get("qty"), Some("0.02"), "sized by the bridge that committed");
    assert!(stack
        .replica_log(second)
        .contains("XAUTOCLAIM reclaimed 1 stale entries"));
    let reservations = stack.hash("{quantum:position:ledger:BTCUSDT}:inflight").await;
    assert_eq!(reservations.len(), 1, "one reservation: {reservations:?}");
}

#[tokio::test]
async fn a_bridge_finding_its_intent_decided_by_another_gives_its_reservation_back() {
    let mut stack = Stack::new().await;
    stack.hset(MARK_PRICE_KEY, &[("BTCUSDT", "65000")]).await;
    let fast = [
        ("SYMBOL_ALLOWLIST", "BTCUSDT"),
        ("STREAM_CLAIM_IDLE_MS", "500"),
        ("STREAM_CLAIM_INTERVAL_MS", "200"),
        ("STREAM_BLOCK_MS", "100"),
    ];
    // The first bridge reserves for its plan, then stalls before claiming the intent's marker.
    stack.start_with_failpoint(Service::Bridge, &fast, "bridge::after_reserve=1*sleep(3000)");
    stack.wait_log(Service::Bridge, "Consumer ready").await;
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
    wait_for("the first bridge's reservation", || async {
        !stack
            .hash("{quantum:position:ledger:BTCUSDT}:inflight")
            .await
            .is_empty()
    })
    .await;
    // Sized again at another mark by the second bridge: another plan id, its own reservation.
    stack.hset(MARK_PRICE_KEY, &[("BTCUSDT", "50000")]).await;
    let second = stack.start_replica(Service::Bridge, &fast);
    stack
        .wait_log(
            Service::Bridge,
            &format!("intent {intent} was committed by another bridge meanwhile"),
        )
        .await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    let plans = stack.entries(PLAN_STREAM).await;
    assert_eq!(plans.len(), 1, "one plan: {plans:?}\n{}", stack.replica_log(second));
    assert_eq!(plans[0].get("qty"), Some("0.02"), "the second bridge's");
    let reservations = stack.hash("{quantum:position:ledger:BTCUSDT}:inflight").await;
    assert_eq!(
        reservations.keys().collect::<Vec<_>>(),
        [plans[0].get("plan_id").unwrap()],
        "the first bridge's reservation is given back"
    );
    let totals = stack.hash("{quantum:position:ledger:BTCUSDT}:inflight:total").await;
    assert_eq!(totals.get("count").map(String::as_str), Some("1"), "{totals:?}");
}

#[tokio::test]
async fn two_bridges_cannot_both_sell_one_position() {
    let mut stack = Stack::new().await;
    stack
        .hset(
            "quantum:position:ledger:ZECUSDT",
            &[("position_amt", "1"), ("notional_usd", "40")],
        )
        .await;
    let env = [("SYMBOL_ALLOWLIST", "ZECUSDT"), ("STREAM_BATCH_SIZE", "1")];
    // The first bridge gates a SELL of the whole position, then stalls before its commit.
    stack.start_with_failpoint(Service::Bridge, &env, "bridge::before_commit=1*sleep(2000)");
    stack.wait_log(Service::Bridge, "Consumer ready").await;
    let sell = [("symbol", "ZECUSDT"), ("side", "SELL"), ("qty", "1")];
    let first = stack.xadd(INTENT_STREAM, &sell).await;
    stack
        .wait_held(INTENT_STREAM, INTENT_GROUP, "the first bridge to hold its SELL")
        .await;
    // Meanwhile the second bridge gates and commits another SELL of the same position.
    let second_bridge = stack.start_replica(Service::Bridge, &env);
    let second = stack.xadd(INTENT_STREAM, &sell).await;
    wait_for("the second bridge to publish", || async {
        stack
            .replica_log(second_bridge)
            .contains("Publishing plan for ZECUSDT SELL")
    })
    .await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;

    let plans = stack.entries(PLAN_STREAM).await;
    assert_eq!(plans.len(), 1, "one SELL of the one position: {plans:?}");
    assert_eq!(plans[0].get("intent_id"), Some(second.as_str()));
    stack
        .wait_log(
            Service::Bridge,
            &format!("Reservations changed under this bridge (another bridge reserved meanwhile): intent {first}"),
        )
        .await;
    let marker: String = stack
        .client
        .get(format!("quantum:intent_bridge:seen:{first}"))
        .await
        .unwrap();
    assert!(marker.contains("reason=sell_nothing_available"), "{marker}");
}

#[tokio::test]
async fn an_executor_leaves_an_order_another_holds_under_lease() {
    let mut stack = Stack::new().await;
    stack.start(Service::Bridge, &[("SYMBOL_ALLOWLIST", "BTCUSDT")]);
    stack
        .xadd(
            INTENT_STREAM,
            &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "0.01")],
        )
        .await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    let fast = [
        ("SYMBOL_ALLOWLIST", "BTCUSDT"),
        ("STREAM_CLAIM_IDLE_MS", "300"),
        ("STREAM_CLAIM_INTERVAL_MS", "200"),
        ("STREAM_BLOCK_MS", "100"),
        ("INTENT_EXECUTOR_ORDER_LEASE_MS", "10000"),
        ("INTENT_EXECUTOR_SWEEP_GRACE_MS", "200000"),
    ];
    // The first executor claims the order, then stalls for 3 s before its venue call; the
    // second reclaims the plan meanwhile but finds the order under the first one's lease.
    stack.start_with_failpoint(Service::Executor, &fast, "executor::after_claim=1*sleep(3000)");
    stack.wait_open_orders(1, "the first executor to claim the order").await;
    let second = stack.start_replica(Service::Executor, &fast);
    wait_for("the second executor to find the order leased", || async {
        stack
            .replica_log(second)
            .contains("is held by another executor under its lease; left pending")
    })
    .await;
    stack.wait_group_idle(PLAN_STREAM, PLAN_GROUP).await;
    let results = stack.entries(RESULT_STREAM).await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].get("executed"), Some("true"));
    assert_eq!(support::paper_orders(&stack).await, 1);
    assert!(
        !stack.replica_log(second).contains("Recovering order"),
        "the second executor never called the venue for it"
    );
}

#[tokio::test]
async fn two_bridges_cannot_together_pass_the_exposure_limit() {
    let mut stack = Stack::new().await;
    // 100,000 of equity, 80% limit: one 65,000 BUY fits, two do not, whatever their symbols.
    stack
        .hset(MARK_PRICE_KEY, &[("BTCUSDT", "65000"), ("ZECUSDT", "40")])
        .await;
    let env = [("SYMBOL_ALLOWLIST", "BTCUSDT,ZECUSDT"), ("STREAM_BATCH_SIZE", "1")];
    stack.start_with_failpoint(Service::Bridge, &env, "bridge::before_commit=1*sleep(2000)");
    stack.wait_log(Service::Bridge, "Consumer ready").await;
    let btc = stack
        .xadd(INTENT_STREAM, &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "1")])
        .await;
    stack
        .wait_held(INTENT_STREAM, INTENT_GROUP, "the first bridge to hold its BUY")
        .await;
    let second_bridge = stack.start_replica(Service::Bridge, &env);
    let zec = stack
        .xadd(
            INTENT_STREAM,
            &[("symbol", "ZECUSDT"), ("side", "BUY"), ("qty", "1625")],
        )
        .await;
    wait_for("the second bridge to publish", || async {
        stack
            .replica_log(second_bridge)
            .contains("Publishing plan for ZECUSDT BUY")
    })
    .await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;

    let plans = stack.entries(PLAN_STREAM).await;
    assert_eq!(plans.len(), 1, "one BUY under the limit: {plans:?}");
    assert_eq!(plans[0].get("intent_id"), Some(zec.as_str()));
    let marker: String = stack
        .client
        .get(format!("quantum:intent_bridge:seen:{btc}"))
        .await
        .unwrap();
    assert!(marker.contains("reason=exposure"), "{marker}");
}
