//! Poison isolation: an entry that fails the same way every time is retried alone, then
//! dead-lettered with its error and delivery count, while every other entry of its batch (and
//! every other symbol) goes on; a stage whose batches all fail reports itself stalled.

mod support;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Value};

use quantum_model::contract::*;
use quantumctl::stack::Service;
use support::{get, port_of, wait_for, Stack};

const ALLOWLIST: &str = "BTCUSDT,ETHUSDT,ZECUSDT";

#[tokio::test]
async fn a_poison_plan_is_dead_lettered_and_the_other_symbols_trade() {
    let mut stack = Stack::new().await;
    // ZEC's venue state is corrupt: every order for it fails, the same way, every time.
    stack
        .hset("quantum:paper:position:ZECUSDT", &[("position_amt", "garbage")])
        .await;
    stack.start(Service::Bridge, &[("SYMBOL_ALLOWLIST", ALLOWLIST)]);
    for symbol in ["ZECUSDT", "BTCUSDT", "ETHUSDT"] {
        stack
            .xadd(INTENT_STREAM, &[("symbol", symbol), ("side", "BUY"), ("qty", "0.01")])
            .await;
    }
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    // The three plans reach the executor in one batch.
    let env = [("SYMBOL_ALLOWLIST", ALLOWLIST), ("STREAM_MAX_DELIVERIES", "3")];
    stack.start(Service::Ledger, &env);
    stack.start(Service::Executor, &env);
    stack.wait_group_idle(PLAN_STREAM, PLAN_GROUP).await;
    stack.wait_group_idle(LEDGER_COMMIT_STREAM, LEDGER_GROUP).await;

    for symbol in ["BTCUSDT", "ETHUSDT"] {
        let ledger = stack.hash(&format!("quantum:position:ledger:{symbol}")).await;
        assert_eq!(
            ledger.get("position_amt").map(String::as_str),
            Some("0.01"),
            "{symbol} traded"
        );
    }
    let dlq = stack.entries(PLAN_DLQ_STREAM).await;
    assert_eq!(dlq.len(), 1, "only the poison plan: {dlq:?}");
    let dead = &dlq[0];
    assert_eq!(dead.get("reason"), Some("poison"));
    assert_eq!(dead.get("source_stream"), Some(PLAN_STREAM));
    assert!(
        dead.get("error").unwrap_or_default().contains("ZECUSDT is corrupt"),
        "{dead:?}"
    );
    let deliveries: u64 = dead.get("deliveries").unwrap_or_default().parse().unwrap();
    assert!(deliveries >= 3, "{deliveries}");
    assert!(dead.get("raw").unwrap_or_default().contains("ZECUSDT"));
    stack
        .wait_logs(Service::Executor, &["retrying them one by one", "DLQ poison entry"])
        .await;
    assert!(stack
        .entries(RESULT_STREAM)
        .await
        .iter()
        .all(|r| r.get("symbol") != Some("ZECUSDT")));
}

#[tokio::test]
async fn a_stage_whose_batches_all_fail_is_stalled_until_they_pass_again() {
    let mut stack = Stack::new().await;
    stack.start(
        Service::Bridge,
        &[
            ("SYMBOL_ALLOWLIST", ALLOWLIST),
            ("INTENT_BRIDGE_METRICS_PORT", "0"),
            ("STREAM_STALL_MS", "1000"),
        ],
    );
    stack.wait_log(Service::Bridge, "Consumer ready").await;
    let port = port_of(&stack, Service::Bridge);
    assert_eq!(get(port, "/readyz").0, 200);

    // Redis refuses every write (out of memory): retryable, so nothing is dead-lettered. The
    // intent and the limit land in one transaction, before the bridge can read the intent.
    let config_set = |bytes: &'static str| {
        (
            CustomCommand::new_static("CONFIG", ClusterHash::Random, false),
            vec!["SET", "maxmemory", bytes],
        )
    };
    let trx = stack.client.multi();
    let intent: String = trx
        .xadd(
            INTENT_STREAM,
            false,
            None,
            "*",
            vec![("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "0.01")],
        )
        .await
        .unwrap();
    let (cmd, args) = config_set("1");
    trx.custom::<(), _>(cmd, args).await.unwrap();
    let replies: Vec<Value> = trx.exec(true).await.unwrap();
    let intent = replies[0].as_string().unwrap_or(intent);
    wait_for("/readyz to report the stall", || async {
        let (status, body) = get(port, "/readyz");
        status == 503 && body.contains("stalled: batches on quantum:stream:trade.intent have failed")
    })
    .await;
    // The gauge follows at the next failed attempt (backoff: at most 5 s later).
    wait_for("quantum_consumer_stalled to be 1", || async {
        get(port, "/metrics")
            .1
            .contains("quantum_consumer_stalled{stream=\"quantum:stream:trade.intent\",shard=\"0\"} 1")
    })
    .await;
    stack.wait_log(Service::Bridge, "(retryable)").await;

    let (cmd, args) = config_set("0");
    let _: Value = stack.client.custom(cmd, args).await.unwrap();
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    wait_for("/readyz to recover", || async { get(port, "/readyz").0 == 200 }).await;
    let plans = stack.entries(PLAN_STREAM).await;
    assert_eq!(plans.len(), 1);
    assert_eq!(plans[0].get("intent_id"), Some(intent.as_str()));
    assert!(
        stack.entries(INTENT_DLQ_STREAM).await.is_empty(),
        "an outage is not poison"
    );
}

/// Starts the bridge (BTCUSDT only, retrying without dead-lettering) on a batch holding `good`
/// and `bad`; returns its log once `good`'s plan is out and `bad`'s commit has failed.
async fn bridge_commits_good_and_fails_bad(stack: &mut Stack, good: &str, bad: &str) -> String {
    stack.start(
        Service::Bridge,
        &[("SYMBOL_ALLOWLIST", "BTCUSDT"), ("STREAM_MAX_DELIVERIES", "1000")],
    );
    wait_for("the good intent's plan", || async {
        stack
            .entries(PLAN_STREAM)
            .await
            .iter()
            .any(|p| p.get("intent_id") == Some(good))
    })
    .await;
    stack
        .wait_log(Service::Bridge, &format!("Commit of intent {bad} failed"))
        .await
}

#[tokio::test]
async fn a_commit_that_fails_inside_redis_loses_no_intent() {
    let mut stack = Stack::new().await;
    // The DLQ key holds a string: writing the malformed intent's DLQ entry fails (WRONGTYPE)
    // while the good intent of the same batch commits.
    let _: () = stack
        .client
        .set(INTENT_DLQ_STREAM, "not a stream", None, None, false)
        .await
        .unwrap();
    let bad = stack
        .xadd(
            INTENT_STREAM,
            &[("symbol", "NOT A SYMBOL"), ("side", "BUY"), ("qty", "1")],
        )
        .await;
    let good = stack
        .xadd(
            INTENT_STREAM,
            &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "0.01")],
        )
        .await;
    bridge_commits_good_and_fails_bad(&mut stack, &good, &bad).await;
    let marker_key = format!("quantum:intent_bridge:seen:{bad}");
    let marker: String = stack.client.get(&marker_key).await.unwrap();
    assert!(
        marker.starts_with("outcome=dlq") && marker.contains("state=publishing\n"),
        "decided, not published: {marker}"
    );
    assert!(stack.log(Service::Bridge).contains("nothing written"));

    // Repaired, the intent takes its course: one DLQ entry, no loss.
    let _: i64 = stack.client.del(INTENT_DLQ_STREAM).await.unwrap();
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    let dlq = stack.entries(INTENT_DLQ_STREAM).await;
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].get("source_id"), Some(bad.as_str()));
    assert_eq!(stack.entries(PLAN_STREAM).await.len(), 1);
    let marker: String = stack.client.get(&marker_key).await.unwrap();
    assert!(
        marker.starts_with("outcome=dlq") && !marker.contains("state="),
        "{marker}"
    );
}

#[tokio::test]
async fn a_replay_marker_of_another_type_fails_its_own_intent_only() {
    let mut stack = Stack::new().await;
    // Both intents are in the bridge's first batch, so their markers are claimed in one round
    // trip: the one whose marker key holds a hash is refused there, with nothing written for
    // it, and the other commits.
    let bad = stack
        .xadd(
            INTENT_STREAM,
            &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "0.01")],
        )
        .await;
    let good = stack
        .xadd(
            INTENT_STREAM,
            &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "0.02")],
        )
        .await;
    let marker_key = format!("quantum:intent_bridge:seen:{bad}");
    stack.hset(&marker_key, &[("clobbered", "by hand")]).await;
    let log = bridge_commits_good_and_fails_bad(&mut stack, &good, &bad).await;
    assert!(log.contains("WRONGTYPE"), "{log}");
    assert_eq!(
        stack.entries(PLAN_STREAM).await.len(),
        1,
        "nothing published for the bad one"
    );
    assert_eq!(
        stack.hash(&marker_key).await.get("clobbered").map(String::as_str),
        Some("by hand")
    );
    let good_marker: String = stack
        .client
        .get(format!("quantum:intent_bridge:seen:{good}"))
        .await
        .unwrap();
    assert!(
        good_marker.starts_with("outcome=published") && !good_marker.contains("state="),
        "{good_marker}"
    );

    // Repaired, the intent takes its course: one plan for it, none lost.
    let _: i64 = stack.client.del(&marker_key).await.unwrap();
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    let plans = stack.entries(PLAN_STREAM).await;
    assert_eq!(plans.len(), 2, "{plans:?}");
    assert!(plans.iter().any(|p| p.get("intent_id") == Some(bad.as_str())));
}

#[tokio::test]
async fn an_entry_dead_lettered_again_after_a_crash_before_its_ack_is_in_the_dlq_once() {
    use quantum_runtime::append_once::{dead_letter_then_ack, marker_key, Once};
    let stack = Stack::new().await;
    quantum_runtime::consumer::ensure_group(&stack.client, LEDGER_COMMIT_STREAM, LEDGER_GROUP)
        .await
        .unwrap();
    let id = stack.xadd(LEDGER_COMMIT_STREAM, &[("symbol", "BTCUSDT")]).await;
    let letter = Once {
        id: id.clone(),
        fields: vec![
            ("source_id".to_string(), id.clone()),
            ("reason".to_string(), "malformed_fill".to_string()),
        ],
        ttl_secs: quantum_runtime::append_once::MARKER_TTL_SECS,
    };
    // The first attempt's XACK is lost (nothing acknowledged: an empty list), the retry's is not.
    let first = dead_letter_then_ack(
        &stack.client,
        LEDGER_COMMIT_DLQ_STREAM,
        std::slice::from_ref(&letter),
        LEDGER_COMMIT_STREAM,
        LEDGER_GROUP,
        &[],
    )
    .await
    .unwrap();
    let again = dead_letter_then_ack(
        &stack.client,
        LEDGER_COMMIT_DLQ_STREAM,
        &[letter],
        LEDGER_COMMIT_STREAM,
        LEDGER_GROUP,
        std::slice::from_ref(&id),
    )
    .await
    .unwrap();
    assert_eq!((first, again), (1, 0));
    let dlq = stack.entries(LEDGER_COMMIT_DLQ_STREAM).await;
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].get("source_id"), Some(id.as_str()));
    let ttl: i64 = stack
        .client
        .ttl(marker_key(LEDGER_COMMIT_DLQ_STREAM, &id))
        .await
        .unwrap();
    assert!(ttl > 6 * 24 * 3600, "the marker expires: {ttl}");
}
