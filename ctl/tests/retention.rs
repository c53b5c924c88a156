//! Bounded streams: entries older than STREAM_RETENTION_MS are trimmed, never one a consumer
//! group still needs (pending, or not yet delivered).

mod support;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Value};

use quantum_model::contract::*;
use quantumctl::redis_server::RedisServer;
use quantumctl::stack::Service;
use support::{wait_for, Stack};

#[tokio::test]
async fn old_entries_are_trimmed_but_never_one_a_group_still_needs() {
    // One entry per stream node, so approximate trimming (`~`) is exact and the test can count.
    let redis = RedisServer::start_with(&["--stream-node-max-entries", "1"]).unwrap();
    let mut stack = Stack::with_redis(redis).await;
    let _: Value = stack
        .client
        .custom(
            CustomCommand::new_static("XGROUP", ClusterHash::FirstKey, false),
            vec!["CREATE", LEDGER_COMMIT_STREAM, LEDGER_GROUP, "0", "MKSTREAM"],
        )
        .await
        .unwrap();
    // A consumer (another ledger) handled the first fill and still holds the second.
    let read_one = || async {
        let reply: Value = stack
            .client
            .xreadgroup(
                LEDGER_GROUP,
                "ledger-other-1-0000",
                Some(1),
                None,
                false,
                LEDGER_COMMIT_STREAM,
                ">",
            )
            .await
            .unwrap();
        reply
    };
    let done = stack.xadd(LEDGER_COMMIT_STREAM, &[("fill_id", "done")]).await;
    read_one().await;
    let _: i64 = stack
        .client
        .xack(LEDGER_COMMIT_STREAM, LEDGER_GROUP, done.as_str())
        .await
        .unwrap();
    let held = stack.xadd(LEDGER_COMMIT_STREAM, &[("fill_id", "held")]).await;
    read_one().await;
    // Two the ledger will read (malformed: they go to its DLQ).
    let later = [
        stack.xadd(LEDGER_COMMIT_STREAM, &[("fill_id", "bad-1")]).await,
        stack.xadd(LEDGER_COMMIT_STREAM, &[("fill_id", "bad-2")]).await,
    ];
    stack.start(
        Service::Ledger,
        &[
            ("STREAM_RETENTION_MS", "1000"),
            ("STREAM_CLAIM_INTERVAL_MS", "200"),
            ("STREAM_CLAIM_IDLE_MS", "600000"),
        ],
    );
    let ids = || async {
        stack
            .entries(LEDGER_COMMIT_STREAM)
            .await
            .into_iter()
            .map(|e| e.id)
            .collect::<Vec<_>>()
    };
    wait_for("the handled fill to be trimmed", || async {
        !ids().await.contains(&done)
    })
    .await;
    assert_eq!(
        ids().await,
        [held.clone(), later[0].clone(), later[1].clone()],
        "the held fill, and what follows it, stay"
    );

    // Once acknowledged, everything is past the retention and nothing is needed: all of it
    // goes, the ledger's dead letters too.
    let _: i64 = stack
        .client
        .xack(LEDGER_COMMIT_STREAM, LEDGER_GROUP, held.as_str())
        .await
        .unwrap();
    wait_for("the stream to be trimmed to nothing", || async {
        stack.xlen(LEDGER_COMMIT_STREAM).await == 0
    })
    .await;
    wait_for("the dead letters to age out", || async {
        stack.xlen(LEDGER_COMMIT_DLQ_STREAM).await == 0
    })
    .await;
    assert_eq!(
        stack.log(Service::Ledger).matches("DLQ ledger.commit ").count(),
        2,
        "both read and dead-lettered before they were trimmed"
    );
}

#[tokio::test]
async fn a_bridge_whose_streams_would_outlive_its_replay_markers_refuses_to_start() {
    let mut stack = Stack::new().await;
    stack.start(
        Service::Bridge,
        &[("STREAM_RETENTION_MS", "0"), ("INTENT_BRIDGE_MAX_INTENT_AGE_MS", "0")],
    );
    stack
        .wait_log(Service::Bridge, "a replay would publish them again")
        .await;
    wait_for("the bridge to exit", || {
        let exited = stack.process(Service::Bridge).exited().is_some();
        async move { exited }
    })
    .await;
}

#[tokio::test]
async fn applied_fill_records_go_with_their_entries_and_an_upgraded_set_still_deduplicates() {
    let redis = RedisServer::start_with(&["--stream-node-max-entries", "1"]).unwrap();
    let mut stack = Stack::with_redis(redis).await;
    // Left by an earlier version: a plain set, and a fill it holds coming back.
    let _: i64 = stack
        .client
        .sadd("quantum:ledger:applied:BTCUSDT", "qib-00000000000000aa-1")
        .await
        .unwrap();
    stack
        .xadd(
            LEDGER_COMMIT_STREAM,
            &[
                ("fill_id", "qib-00000000000000aa-1"),
                ("order_id", "qib-00000000000000aa"),
                ("plan_id", "00000000000000aa"),
                ("symbol", "BTCUSDT"),
                ("side", "BUY"),
                ("qty", "1"),
                ("price", "65000"),
                ("fee", "0"),
                ("leverage", "1"),
                ("ts", "1"),
            ],
        )
        .await;
    let fast = [
        ("STREAM_RETENTION_MS", "1000"),
        ("STREAM_CLAIM_INTERVAL_MS", "200"),
        ("LEDGER_RECONCILE_INTERVAL_MS", "200"),
        ("SYMBOL_ALLOWLIST", "BTCUSDT"),
    ];
    stack.start(Service::Ledger, &fast);
    stack
        .wait_log(
            Service::Ledger,
            "LEDGER_DUPLICATE symbol=BTCUSDT fill_id=qib-00000000000000aa-1",
        )
        .await;
    assert!(stack
        .log(Service::Ledger)
        .contains("Moved quantum:ledger:applied:BTCUSDT to {quantum:position:ledger:BTCUSDT}:applied (1 fill ids"));
    assert!(
        stack.hash("quantum:position:ledger:BTCUSDT").await.is_empty(),
        "nothing applied twice"
    );

    // Fills from an executor older than venue_seq (unnumbered) keep being recorded by id.
    let unnumbered = |n: u32| {
        let plan = format!("{n:016x}");
        vec![
            ("fill_id".to_string(), format!("qib-{plan}-1")),
            ("order_id".to_string(), format!("qib-{plan}")),
            ("plan_id".to_string(), plan),
            ("symbol".to_string(), "BTCUSDT".to_string()),
            ("side".to_string(), "BUY".to_string()),
            ("qty".to_string(), "0.01".to_string()),
            ("price".to_string(), "65000".to_string()),
        ]
    };
    let publish = |n: u32| {
        stack
            .client
            .xadd::<String, _, _, _, _>(LEDGER_COMMIT_STREAM, false, None, "*", unnumbered(n))
    };
    for n in 1..=3 {
        publish(n).await.unwrap();
    }
    let records = || async {
        let members: Vec<String> = stack
            .client
            .zrange(
                "{quantum:position:ledger:BTCUSDT}:applied",
                0,
                -1,
                None,
                false,
                None,
                false,
            )
            .await
            .unwrap();
        members
    };
    wait_for("three fills applied", || async { records().await.len() == 4 }).await;
    wait_for("their entries to be trimmed", || async {
        stack.xlen(LEDGER_COMMIT_STREAM).await == 0
    })
    .await;
    // A new fill: the older records can never be delivered again and go; its own stays.
    publish(4).await.unwrap();
    wait_for("the old records to be pruned", || async { records().await.len() == 1 }).await;
    assert_eq!(records().await, ["qib-0000000000000004-1".to_string()]);
    let ledger = stack.hash("quantum:position:ledger:BTCUSDT").await;
    assert_eq!(ledger.get("position_amt").map(String::as_str), Some("0.04"));
    assert_eq!(
        ledger.get("venue_seq").map(String::as_str),
        Some("0"),
        "no numbered fill"
    );
}

/// The ledger's one housekeeping SCAN finds every family of its keys on a real Redis (the
/// `SCAN MATCH` glob applied by the server) and none of the replay markers and order records
/// that make up most of the keyspace.
#[tokio::test]
async fn the_ledger_scans_its_own_keys_once_and_only_those() {
    let redis = RedisServer::start().unwrap();
    let client = quantum_runtime::config::RedisArgs::from_url(&redis.url())
        .connect(&tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    let ours = [
        "quantum:position:ledger:BTCUSDT",
        "quantum:position:snapshot:ETHUSDT",
        "{quantum:position:ledger:SOLUSDT}:parked",
        "{quantum:position:ledger:BTCUSDT}:applied",
    ];
    for key in ours {
        let _: () = client.hset(key, ("f", "v")).await.unwrap();
    }
    for n in 0..3000 {
        let _: () = client
            .set(
                format!("quantum:intent_bridge:seen:{n}-0"),
                "outcome=published",
                None,
                None,
                false,
            )
            .await
            .unwrap();
        let _: () = client
            .hset(format!("quantum:order:qib-{n:016x}"), ("state", "FILLED"))
            .await
            .unwrap();
    }
    // The server's glob keeps exactly our four keys: nothing else crosses the wire.
    let mut matched = quantum_runtime::consumer::scan_keys(&client, quantum_ledger::keyspace::LEDGER_FAMILIES)
        .await
        .unwrap();
    matched.sort();
    let mut expected: Vec<String> = ours.iter().map(|k| k.to_string()).collect();
    expected.sort();
    assert_eq!(matched, expected);
    let found = quantum_ledger::keyspace::Keyspace::scan(&client).await.unwrap();
    let symbol = |s: &str| quantum_model::types::Symbol::parse(s).unwrap();
    assert_eq!(found.ledgers, vec![symbol("BTCUSDT")]);
    assert_eq!(found.snapshots, vec![symbol("ETHUSDT")]);
    assert_eq!(found.parked, vec![symbol("SOLUSDT")]);
    assert_eq!(
        found.applied,
        vec!["{quantum:position:ledger:BTCUSDT}:applied".to_string()]
    );
}
