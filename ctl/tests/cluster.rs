//! The services on a real Redis Cluster (3 primaries, 3 replicas, on loopback): they connect
//! with a `redis-cluster://` URL, route each command to the node of its key, wait for replicas
//! on every primary, and go on through a primary's death (its replica promoted).

mod support;

use std::collections::HashMap;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Value};

use quantum_model::contract::*;
use quantum_model::shards::StreamShards;
use quantumctl::redis_server::RedisCluster;
use quantumctl::stack::Service;
use support::{wait_for, Stack};

const SYMBOLS: [&str; 6] = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "ZECUSDT", "XRPUSDT", "DOGEUSDT"];
const ROUNDS: u64 = 30;

/// Fill number `seq` of `symbol` at the venue: a BUY of 1.
fn fill(symbol: &str, seq: u64) -> Vec<(String, String)> {
    let plan = format!(
        "{:08x}{seq:08x}",
        symbol.len() as u64 * 7919 + symbol.as_bytes()[0] as u64
    );
    [
        ("fill_id", format!("qib-{plan}-1")),
        ("order_id", format!("qib-{plan}")),
        ("plan_id", plan),
        ("symbol", symbol.to_string()),
        ("side", "BUY".into()),
        ("qty", "1".into()),
        ("price", "100".into()),
        ("fee", "0".into()),
        ("leverage", "1".into()),
        ("ts", "1".into()),
        ("venue_seq", seq.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Adds `fields` to `ledger.commit` until it is there (and, with `replicated`, on the
/// replica of its primary too): an XADD whose reply was lost in a failover is sent again, so
/// the ledger sees some fills twice, as it would from an executor retrying. Returns the
/// attempts it took.
async fn publish(client: &Client, fields: Vec<(String, String)>, replicated: bool) -> u64 {
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(attempts < 600, "ledger.commit never became writable again");
        let added: Result<String, Error> = client
            .xadd(LEDGER_COMMIT_STREAM, false, None, "*", fields.clone())
            .await;
        if added.is_ok() {
            if !replicated {
                return attempts;
            }
            let slot = fred::util::redis_keyslot(LEDGER_COMMIT_STREAM.as_bytes());
            let wait = CustomCommand::new_static("WAIT", ClusterHash::Custom(slot), false);
            let acked: Result<Value, Error> = client.custom(wait, vec!["1", "1000"]).await;
            if acked.ok().and_then(|v| v.as_u64()) == Some(1) {
                return attempts;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn ledger_of(stack: &Stack, symbol: &str) -> HashMap<String, String> {
    let key = format!("quantum:position:ledger:{symbol}");
    let fields: Result<HashMap<String, String>, Error> = stack.client.hgetall(key).await;
    fields.unwrap_or_default()
}

#[tokio::test]
async fn two_ledgers_apply_every_fill_once_on_a_cluster_through_a_primary_s_death() {
    let cluster = RedisCluster::start(3).expect("start a 3+3 cluster");
    let mut stack = Stack::on_cluster(cluster).await;
    let env = [
        ("REDIS_WAIT_REPLICAS", "1"),
        ("REDIS_WAIT_TIMEOUT_MS", "500"),
        ("STREAM_BLOCK_MS", "100"),
        ("STREAM_CLAIM_IDLE_MS", "1000"),
        ("STREAM_CLAIM_INTERVAL_MS", "300"),
        ("LEDGER_RECONCILE", "false"),
    ];
    stack.start(Service::Ledger, &env);
    let second = stack.start_replica(Service::Ledger, &env);
    stack.wait_log(Service::Ledger, "Consumer ready").await;
    wait_for("the second ledger to be ready", || {
        let ready = stack.replica_log(second).contains("Consumer ready");
        async move { ready }
    })
    .await;
    // The ledgers live on more than one primary, or the test proves little.
    let homes: std::collections::BTreeSet<usize> = SYMBOLS
        .iter()
        .filter_map(|s| stack.cluster_mut().primary_of(&format!("quantum:position:ledger:{s}")))
        .collect();
    assert!(homes.len() >= 2, "ledgers spread over primaries: {homes:?}");

    // A third of the fills with every primary replicated; then the primary holding
    // ledger.commit (and its group's state) dies under flow and its replica takes over, alone;
    // then the dead node comes back as the new primary's replica.
    let mut retried = 0;
    let mut victim = None;
    for seq in 1..=ROUNDS {
        if seq == ROUNDS / 3 {
            let node = stack
                .cluster_mut()
                .primary_of(LEDGER_COMMIT_STREAM)
                .expect("a primary serves ledger.commit");
            stack.cluster_mut().kill(node);
            victim = Some(node);
            let malformed = vec![
                ("fill_id".to_string(), "broken".to_string()),
                ("symbol".to_string(), "BTCUSDT".to_string()),
            ];
            publish(&stack.client, malformed, false).await;
        }
        if seq == 2 * ROUNDS / 3 {
            let node = victim.expect("killed");
            stack.cluster_mut().restart(node).expect("restart the dead node");
            stack
                .cluster_mut()
                .wait_until_settled(3, std::time::Duration::from_secs(60))
                .expect("the cluster heals");
        }
        let replicated = !(ROUNDS / 3..2 * ROUNDS / 3).contains(&seq);
        for symbol in SYMBOLS {
            retried += publish(&stack.client, fill(symbol, seq), replicated).await - 1;
        }
    }
    wait_for("every fill applied on every ledger", || async {
        let mut all = true;
        for symbol in SYMBOLS {
            let ledger = ledger_of(&stack, symbol).await;
            all &= ledger.get("venue_seq").map(String::as_str) == Some(&ROUNDS.to_string());
        }
        all
    })
    .await;
    for symbol in SYMBOLS {
        let ledger = ledger_of(&stack, symbol).await;
        assert_eq!(
            (ledger["position_amt"].as_str(), ledger["fills"].as_str()),
            (ROUNDS.to_string().as_str(), ROUNDS.to_string().as_str()),
            "{symbol}: every fill once ({retried} publishes were retried): {ledger:?}"
        );
    }
    wait_for("the malformed fill in the DLQ", || async {
        !stack.entries(LEDGER_COMMIT_DLQ_STREAM).await.is_empty()
    })
    .await;
    let dlq = stack.entries(LEDGER_COMMIT_DLQ_STREAM).await;
    assert_eq!(dlq.len(), 1, "the malformed fill dead-lettered once: {dlq:?}");
    assert_eq!(dlq[0].get("reason"), Some("malformed_fill"));
    assert_eq!(
        stack.process(Service::Ledger).exited(),
        None,
        "the ledger rode the failover out"
    );
    // Unnumbered fills (the live venue's) are deduplicated by id, in the ledger's slot too.
    for _ in 0..2 {
        let mut unnumbered = fill("BTCUSDT", 1);
        unnumbered.retain(|(k, _)| k != "venue_seq");
        for (k, v) in &mut unnumbered {
            if k == "fill_id" {
                *v = "live-trade-1".to_string();
            }
        }
        publish(&stack.client, unnumbered, true).await;
    }
    wait_for("the unnumbered fill applied", || async {
        ledger_of(&stack, "BTCUSDT").await.get("fills").map(String::as_str) == Some(&(ROUNDS + 1).to_string())
    })
    .await;
    stack.wait_group_idle(LEDGER_COMMIT_STREAM, LEDGER_GROUP).await;
    let btc = ledger_of(&stack, "BTCUSDT").await;
    assert_eq!(
        (btc["position_amt"].as_str(), btc["fills"].as_str()),
        ((ROUNDS + 1).to_string().as_str(), (ROUNDS + 1).to_string().as_str()),
        "applied once though published twice: {btc:?}"
    );
    let logs = format!("{}{}", stack.log(Service::Ledger), stack.replica_log(second));
    assert!(!logs.contains("panicked"));
    assert!(!logs.contains("CROSSSLOT"), "{logs}");
    // While the promoted primary was alone, commits fell short of a replica, and said so.
    assert!(logs.contains("REDIS_WAIT_SHORT replicas=0/1"), "{logs}");
    assert!(logs.contains("REDIS_WAIT restored"), "{logs}");
}

/// The whole pipeline on a 3+3 cluster: two instances of every service, every commit waiting
/// for a replica, SIGKILLs at random, a bridge paused past the reclaim age, the primary of
/// `apply.plan` killed under flow (its replica promoted, the node back as a replica) and a
/// poison entry per stream; then every invariant of the fault suite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_keeps_every_invariant_on_a_cluster_through_kills_and_a_primary_s_death() {
    use quantumctl::demo::DemoVenue;
    use quantumctl::faults::{run, FaultPlan};
    let dir = tempfile::tempdir().unwrap();
    let plan = FaultPlan {
        kills: 8,
        intents: 400,
        rate: 100,
        replicas: 2,
        seed: 17,
        venue: DemoVenue::Paper,
        cluster: true,
        shards: StreamShards::new(2).expect("two shards"),
    };
    let report = run(&plan, dir.path()).await.expect("the suite runs");
    let text = report.render();
    assert_eq!(
        (report.kills, report.pauses, report.redis_restarts),
        (8, 1, 1),
        "{text}"
    );
    assert!(report.checked.intents >= 400, "{text}");
    assert!(report.checked.fills > 0, "{text}");
    assert_eq!(report.checked.invariants.len(), 7, "{text}");
    // Both shards of every sharded stream carried entries (the invariants check each is on its
    // symbol's shard).
    let shard_names: Vec<&str> = report.checked.shard_entries.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        shard_names,
        [
            "quantum:stream:apply.plan",
            "quantum:stream:apply.plan:1",
            "quantum:stream:apply.result",
            "quantum:stream:apply.result:1",
            "quantum:stream:ledger.commit",
            "quantum:stream:ledger.commit:1"
        ],
        "{text}"
    );
    assert!(report.checked.shard_entries.iter().all(|(_, n)| *n > 0), "{text}");
    assert!(report.passed(), "{text}\nlogs in {}", dir.keep().display());
}
