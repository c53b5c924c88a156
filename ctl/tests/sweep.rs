//! No fill lost: an order the venue accepted reaches the ledger exactly once even when the
//! executor dies between the venue call and its finalize, and its plan is then deleted from the
//! stream, or is redelivered only after it went stale. An order that never reached the venue
//! is finalized REJECTED by the sweep, never placed late.

mod support;

use fred::prelude::*;

use quantum_model::contract::*;
use quantumctl::stack::Service;
use support::{paper_orders, wait_for, Stack};

/// Short reclaim and age limits so a stale plan and an expired claim take seconds, not minutes.
const FAST: [(&str, &str); 4] = [
    ("STREAM_CLAIM_IDLE_MS", "500"),
    ("STREAM_BLOCK_MS", "100"),
    ("INTENT_EXECUTOR_MAX_PLAN_AGE_MS", "1500"),
    ("INTENT_EXECUTOR_SWEEP_INTERVAL_MS", "200"),
];

/// Starts the executor with `FAST`, `extra`, and optionally a crash point.
fn start_executor(stack: &mut Stack, failpoint: Option<&str>, extra: &[(&str, &str)]) {
    let env: Vec<(&str, &str)> = FAST.iter().chain(extra).copied().collect();
    match failpoint {
        Some(point) => stack.start_with_failpoint(Service::Executor, &env, point),
        None => stack.start(Service::Executor, &env),
    }
}

/// Publishes one BTC BUY through the bridge and returns its plan's entry id and plan id.
async fn one_plan(stack: &mut Stack) -> (String, String) {
    stack.start(Service::Bridge, &[("SYMBOL_ALLOWLIST", "BTCUSDT")]);
    stack
        .xadd(
            INTENT_STREAM,
            &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "0.01")],
        )
        .await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    let plans = stack.entries(PLAN_STREAM).await;
    assert_eq!(plans.len(), 1);
    (plans[0].id.clone(), plans[0].get("plan_id").unwrap().to_string())
}

/// A redelivered plan is reclaimed within a fifth of a second; the sweep stays out of the way.
const FAST_RECLAIM: [(&str, &str); 2] = [
    ("INTENT_EXECUTOR_SWEEP_GRACE_MS", "600000"),
    ("STREAM_CLAIM_INTERVAL_MS", "200"),
];

/// One plan (see [`one_plan`]), a ledger, and an executor killed at `point`; the plan id.
async fn plan_with_executor_killed_at(stack: &mut Stack, point: &str) -> String {
    let (_, plan_id) = one_plan(stack).await;
    stack.start(Service::Ledger, &[]);
    start_executor(stack, Some(&format!("{point}=return")), &FAST_RECLAIM);
    wait_exited(stack).await;
    plan_id
}

/// Whether the order of `plan_id` is in the open-order index.
async fn is_open_order(stack: &Stack, plan_id: &str) -> bool {
    let score: Option<f64> = stack
        .client
        .zscore(OPEN_ORDERS_KEY, format!("qib-{plan_id}"))
        .await
        .unwrap();
    score.is_some()
}

/// Waits until the hash `key` holds `value` in `field`.
async fn wait_field(stack: &Stack, what: &str, key: &str, field: &str, value: &str) {
    wait_for(what, || async {
        stack.hash(key).await.get(field).map(String::as_str) == Some(value)
    })
    .await;
}

/// Waits until the executor process has exited (died at its crash point, or refused to start).
async fn wait_exited(stack: &mut Stack) {
    let deadline = std::time::Instant::now() + support::TIMEOUT;
    while stack.process(Service::Executor).exited().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the executor never reached its crash point"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stack.kill(Service::Executor);
}

#[tokio::test]
async fn an_order_placed_before_a_crash_reaches_the_ledger_after_its_plan_was_deleted() {
    let mut stack = Stack::new().await;
    let (entry, plan_id) = one_plan(&mut stack).await;
    stack.start(Service::Ledger, &[]);
    start_executor(&mut stack, Some("executor::before_finalize=return"), &[]);
    wait_exited(&mut stack).await;
    assert_eq!(paper_orders(&stack).await, 1, "the venue took the order");
    assert!(stack.entries(LEDGER_COMMIT_STREAM).await.is_empty());
    // The plan is trimmed away before anyone finalizes it.
    let _: i64 = stack.client.xdel(PLAN_STREAM, &entry).await.unwrap();

    start_executor(&mut stack, None, &[("INTENT_EXECUTOR_SWEEP_GRACE_MS", "2000")]);
    wait_field(
        &stack,
        "the swept fill to reach the ledger",
        "quantum:position:ledger:BTCUSDT",
        "position_amt",
        "0.01",
    )
    .await;
    let record = stack.hash(&format!("quantum:order:qib-{plan_id}")).await;
    assert_eq!(record.get("state").map(String::as_str), Some("FILLED"));
    let ttl: i64 = stack.client.ttl(format!("quantum:order:qib-{plan_id}")).await.unwrap();
    assert!(ttl > 0, "a finished record expires");
    let results = stack.entries(RESULT_STREAM).await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].get("executed"), Some("true"));
    assert_eq!(stack.entries(LEDGER_COMMIT_STREAM).await.len(), 1);
    assert_eq!(paper_orders(&stack).await, 1, "nothing placed again");
    let open: i64 = stack.client.zcard(OPEN_ORDERS_KEY).await.unwrap();
    assert_eq!(open, 0);
    stack.wait_log(Service::Executor, "Swept order qib-").await;
    stack.wait_group_idle(LEDGER_COMMIT_STREAM, LEDGER_GROUP).await;
    let inflight = stack.hash("{quantum:position:ledger:BTCUSDT}:inflight").await;
    assert!(inflight.is_empty(), "reservations released: {inflight:?}");
}

#[tokio::test]
async fn a_plan_redelivered_stale_after_its_order_was_placed_is_finalized_not_refused() {
    let mut stack = Stack::new().await;
    let (entry, plan_id) = one_plan(&mut stack).await;
    start_executor(&mut stack, Some("executor::before_finalize=return"), &[]);
    wait_exited(&mut stack).await;
    // Restarted only once the plan is older than INTENT_EXECUTOR_MAX_PLAN_AGE_MS; the sweep
    // is kept out of the way, so the redelivered plan recovers its own order.
    wait_for("the plan to go stale", || async {
        quantum_model::time::entry_age_ms(&entry, quantum_model::time::now_ms()) > 1600
    })
    .await;
    start_executor(&mut stack, None, &[("INTENT_EXECUTOR_SWEEP_GRACE_MS", "600000")]);
    stack.wait_group_idle(PLAN_STREAM, PLAN_GROUP).await;
    let results = stack.entries(RESULT_STREAM).await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].get("executed"), Some("true"), "{results:?}");
    assert_eq!(stack.entries(LEDGER_COMMIT_STREAM).await.len(), 1);
    assert_eq!(paper_orders(&stack).await, 1);
    stack
        .wait_log(
            Service::Executor,
            &format!("Recovering order qib-{plan_id} of stale plan"),
        )
        .await;
}

#[tokio::test]
async fn a_claim_that_never_reached_the_venue_is_swept_rejected_and_never_placed() {
    let mut stack = Stack::new().await;
    let (entry, plan_id) = one_plan(&mut stack).await;
    // Dies after the claim, before the venue call.
    start_executor(&mut stack, Some("executor::after_claim=return"), &[]);
    wait_exited(&mut stack).await;
    assert_eq!(paper_orders(&stack).await, 0);
    // The claim indexed the order and created its record (on one server, in one script).
    assert!(is_open_order(&stack, &plan_id).await, "indexed by the claim");
    let claimed = stack.hash(&format!("quantum:order:qib-{plan_id}")).await;
    assert_eq!(claimed.get("state").map(String::as_str), Some("NEW"), "{claimed:?}");
    let _: i64 = stack.client.xdel(PLAN_STREAM, &entry).await.unwrap();
    start_executor(&mut stack, None, &[("INTENT_EXECUTOR_SWEEP_GRACE_MS", "2000")]);
    wait_for("the sweep to finalize the claim", || async {
        !stack.entries(RESULT_STREAM).await.is_empty()
    })
    .await;
    let results = stack.entries(RESULT_STREAM).await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].get("executed"), Some("false"));
    assert!(
        results[0]
            .get("error")
            .unwrap_or_default()
            .contains("never reached the venue"),
        "{results:?}"
    );
    let record = stack.hash(&format!("quantum:order:qib-{plan_id}")).await;
    assert_eq!(record.get("state").map(String::as_str), Some("REJECTED"));
    // Never placed, and never will be: the venue holds the id refused, and no position.
    let at_venue = stack
        .hash(&format!("{{quantum:paper:position:BTCUSDT}}:order:qib-{plan_id}"))
        .await;
    assert_eq!(
        at_venue.get("status").map(String::as_str),
        Some("REJECTED"),
        "{at_venue:?}"
    );
    assert!(stack.hash("quantum:paper:position:BTCUSDT").await.is_empty());
    let inflight = stack.hash("{quantum:position:ledger:BTCUSDT}:inflight").await;
    assert!(inflight.is_empty(), "the plan's reservation is released: {inflight:?}");
}

#[tokio::test]
async fn a_sweep_grace_within_the_plan_age_is_refused_at_start() {
    let mut stack = Stack::new().await;
    start_executor(&mut stack, None, &[("INTENT_EXECUTOR_SWEEP_GRACE_MS", "1000")]);
    wait_exited(&mut stack).await;
    assert!(stack
        .log(Service::Executor)
        .contains("INTENT_EXECUTOR_SWEEP_GRACE_MS (1000) must exceed INTENT_EXECUTOR_MAX_PLAN_AGE_MS (1500)"));
}

#[tokio::test]
async fn an_executor_waking_after_the_sweep_settled_its_order_places_nothing() {
    let mut stack = Stack::new().await;
    let (entry, plan_id) = one_plan(&mut stack).await;
    let timings = [
        ("STREAM_CLAIM_IDLE_MS", "300"),
        ("STREAM_BLOCK_MS", "100"),
        ("INTENT_EXECUTOR_MAX_PLAN_AGE_MS", "1000"),
        ("INTENT_EXECUTOR_SWEEP_GRACE_MS", "1500"),
        ("INTENT_EXECUTOR_SWEEP_INTERVAL_MS", "200"),
    ];
    // The first executor claims the order and stalls for 4 s before its venue call, far past
    // its lease and the sweep's grace; its plan is trimmed away meanwhile.
    stack.start_with_failpoint(Service::Executor, &timings, "executor::after_claim=1*sleep(4000)");
    stack.wait_open_orders(1, "the claim").await;
    let _: i64 = stack.client.xdel(PLAN_STREAM, &entry).await.unwrap();
    let sweeper = stack.start_replica(Service::Executor, &timings);
    wait_for("the sweep to settle the order", || async {
        stack.replica_log(sweeper).contains("Swept order qib-")
    })
    .await;
    // The first executor wakes up and calls the venue: the venue answers with the refusal.
    wait_for("the first executor to find it finalized", || async {
        stack.log(Service::Executor).contains(&format!(
            "Duplicate plan {plan_id} for BTCUSDT: order qib-{plan_id} was finalized elsewhere"
        ))
    })
    .await;
    assert!(stack.hash("quantum:paper:position:BTCUSDT").await.is_empty(), "no fill");
    let results = stack.entries(RESULT_STREAM).await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].get("executed"), Some("false"));
    assert!(stack.entries(LEDGER_COMMIT_STREAM).await.is_empty());
}

/// After a crash during an order's publication, everything about the order is there once:
/// one fill in the ledger, one result, no reservation, no index entry, and the notes expiring.
async fn assert_published_once(stack: &Stack, plan_id: &str) {
    stack.wait_group_idle(LEDGER_COMMIT_STREAM, LEDGER_GROUP).await;
    assert_eq!(stack.entries(LEDGER_COMMIT_STREAM).await.len(), 1, "one fill appended");
    let results = stack.entries(RESULT_STREAM).await;
    assert_eq!(results.len(), 1, "one result: {results:?}");
    assert_eq!(results[0].get("executed"), Some("true"));
    let ledger = stack.hash("quantum:position:ledger:BTCUSDT").await;
    assert_eq!(
        (ledger["position_amt"].as_str(), ledger["fills"].as_str()),
        ("0.01", "1")
    );
    let record = stack.hash(&format!("quantum:order:qib-{plan_id}")).await;
    assert_eq!(record.get("published").map(String::as_str), Some("1"));
    assert!(!record.contains_key("outbox"), "the outbox is dropped once out");
    let open: i64 = stack.client.zcard(OPEN_ORDERS_KEY).await.unwrap();
    assert_eq!(open, 0);
    for key in [
        "{quantum:position:ledger:BTCUSDT}:inflight",
        "{quantum:position:ledger:BTCUSDT}:inflight:total",
    ] {
        let exists: i64 = stack.client.exists(key).await.unwrap();
        assert_eq!(exists, 0, "{key} is gone");
    }
    // The publication's notes outlive any repeat of it, for an hour, not a week.
    for key in [
        format!("{{quantum:position:ledger:BTCUSDT}}:inflight:swapped:{plan_id}"),
        format!("{{quantum:stream:apply.result}}:once:{plan_id}"),
        format!("{{quantum:stream:ledger.commit}}:once:qib-{plan_id}-1"),
    ] {
        let ttl: i64 = stack.client.ttl(&key).await.unwrap();
        assert!((1..=3600).contains(&ttl), "{key}: ttl {ttl}");
    }
}

#[tokio::test]
async fn a_crash_at_any_step_of_an_order_s_publication_is_finished_by_the_redelivered_plan() {
    // The publication's one step between round trips on one server: the swaps go in the
    // finalize's, and one script checks the fills and results out and marks them in the
    // appends' (the cluster's steps between are tested below).
    for point in ["executor::after_swap"] {
        let mut stack = Stack::new().await;
        let plan_id = plan_with_executor_killed_at(&mut stack, point).await;
        let record = stack.hash(&format!("quantum:order:qib-{plan_id}")).await;
        assert_eq!(record.get("published").map(String::as_str), Some("0"), "{point}");

        start_executor(&mut stack, None, &FAST_RECLAIM);
        stack
            .wait_log(
                Service::Executor,
                &format!("Publishing order qib-{plan_id} of plan {plan_id}"),
            )
            .await;
        stack.wait_group_idle(PLAN_STREAM, PLAN_GROUP).await;
        assert_published_once(&stack, &plan_id).await;
    }
}

#[tokio::test]
async fn an_order_left_unpublished_by_a_crash_is_published_by_the_sweep_when_its_plan_is_gone() {
    let mut stack = Stack::new().await;
    let (entry, plan_id) = one_plan(&mut stack).await;
    stack.start(Service::Ledger, &[]);
    start_executor(&mut stack, Some("executor::after_swap=return"), &[]);
    wait_exited(&mut stack).await;
    let _: i64 = stack.client.xdel(PLAN_STREAM, &entry).await.unwrap();

    start_executor(&mut stack, None, &[("INTENT_EXECUTOR_SWEEP_GRACE_MS", "2000")]);
    stack
        .wait_log(
            Service::Executor,
            &format!("Swept order qib-{plan_id} of plan {plan_id} for BTCUSDT: finished but not published"),
        )
        .await;
    assert_published_once(&stack, &plan_id).await;
}

#[tokio::test]
async fn an_index_entry_whose_claim_never_came_serves_the_plan_which_fills_once() {
    let mut stack = Stack::new().await;
    let (_, plan_id) = one_plan(&mut stack).await;
    stack.start(Service::Ledger, &[]);
    // What an executor killed between indexing the order and claiming its record leaves on a
    // cluster (where the index is a step of its own; on one server the claim script writes
    // both): an index entry, no record.
    let _: i64 = stack
        .client
        .zadd(
            OPEN_ORDERS_KEY,
            None,
            None,
            false,
            false,
            (quantum_model::time::now_ms() as f64, format!("qib-{plan_id}")),
        )
        .await
        .unwrap();
    assert!(stack.hash(&format!("quantum:order:qib-{plan_id}")).await.is_empty());

    start_executor(
        &mut stack,
        None,
        &[
            ("INTENT_EXECUTOR_SWEEP_GRACE_MS", "2000"),
            ("STREAM_CLAIM_INTERVAL_MS", "200"),
        ],
    );
    stack.wait_group_idle(PLAN_STREAM, PLAN_GROUP).await;
    assert_published_once(&stack, &plan_id).await;
    assert_eq!(paper_orders(&stack).await, 1, "placed once");
}

#[tokio::test]
async fn a_paper_fill_whose_snapshot_was_lost_publishes_it_when_the_plan_returns() {
    let mut stack = Stack::new().await;
    // Killed after the venue's commit, before the finalize.
    let plan_id = plan_with_executor_killed_at(&mut stack, "executor::before_finalize").await;
    let position = stack.hash("quantum:paper:position:BTCUSDT").await;
    assert_eq!(
        position.get("fill_seq").map(String::as_str),
        Some("1"),
        "filled at the venue"
    );
    // On one server the truth came in the commit's round trip.
    let snapshot = stack.hash("quantum:position:snapshot:BTCUSDT").await;
    assert_eq!(snapshot.get("venue_seq").map(String::as_str), Some("1"), "{snapshot:?}");
    // What a crash between the commit and its truth leaves on a cluster (where the truth is a
    // step of its own, `executor::paper_before_truth`): no snapshot.
    let _: i64 = stack.client.del("quantum:position:snapshot:BTCUSDT").await.unwrap();

    start_executor(&mut stack, None, &FAST_RECLAIM);
    stack.wait_group_idle(PLAN_STREAM, PLAN_GROUP).await;
    assert_published_once(&stack, &plan_id).await;
    let snapshot = stack.hash("quantum:position:snapshot:BTCUSDT").await;
    assert_eq!(
        (snapshot["position_amt"].as_str(), snapshot["venue_seq"].as_str()),
        ("0.01", "1"),
        "{snapshot:?}"
    );
    assert_eq!(paper_orders(&stack).await, 1, "placed once");
}

#[tokio::test]
async fn on_a_cluster_a_crash_between_steps_one_server_joins_is_finished_by_the_redelivered_plan() {
    // On a cluster the index, the venue's truth and the publication's marks are steps of their
    // own (their keys live in other slots); one server takes each with the step before it.
    for point in [
        "executor::after_index",
        "executor::paper_before_truth",
        "executor::after_append",
    ] {
        let cluster = quantumctl::redis_server::RedisCluster::start(3).expect("start a redis cluster");
        let mut stack = Stack::on_cluster(cluster).await;
        let plan_id = plan_with_executor_killed_at(&mut stack, point).await;

        start_executor(&mut stack, None, &FAST_RECLAIM);
        stack.wait_group_idle(PLAN_STREAM, PLAN_GROUP).await;
        assert_published_once(&stack, &plan_id).await;
        assert_eq!(paper_orders(&stack).await, 1, "{point}: placed once");
        let snapshot = stack.hash("quantum:position:snapshot:BTCUSDT").await;
        assert_eq!(
            (snapshot["position_amt"].as_str(), snapshot["venue_seq"].as_str()),
            ("0.01", "1"),
            "{point}: {snapshot:?}"
        );
    }
}

#[tokio::test]
async fn a_publication_whose_result_cannot_be_appended_marks_and_acknowledges_nothing_until_it_is() {
    let mut stack = Stack::new().await;
    let (_, plan_id) = one_plan(&mut stack).await;
    stack.start(Service::Ledger, &[]);
    // apply.result is a string: the fill goes out, the result's append fails.
    let _: () = stack
        .client
        .set(RESULT_STREAM, "corrupt", None, None, false)
        .await
        .unwrap();
    start_executor(&mut stack, None, &[("INTENT_EXECUTOR_SWEEP_GRACE_MS", "2000")]);
    wait_field(
        &stack,
        "the fill applied",
        "quantum:position:ledger:BTCUSDT",
        "fills",
        "1",
    )
    .await;
    stack.wait_log(Service::Executor, "WRONGTYPE").await;
    let record = stack.hash(&format!("quantum:order:qib-{plan_id}")).await;
    assert_eq!(record.get("published").map(String::as_str), Some("0"), "{record:?}");
    assert!(record.contains_key("outbox"), "the outbox is kept until it is out");
    assert!(is_open_order(&stack, &plan_id).await, "still an open order");

    let _: i64 = stack.client.del(RESULT_STREAM).await.unwrap();
    let record = format!("quantum:order:qib-{plan_id}");
    wait_field(&stack, "the publication finished", &record, "published", "1").await;
    assert_published_once(&stack, &plan_id).await;
}
