//! `REDIS_WAIT_REPLICAS` on a real master and replica: every service warns at start when the
//! master has fewer replicas than asked, each committed batch waits for the replica, a replica
//! that stops answering is reported once per outage (`REDIS_WAIT_SHORT`, a counter) while the
//! pipeline goes on, and its return is logged.

mod support;

use quantum_model::contract::*;
use quantumctl::stack::Service;
use support::{get, port_of, wait_for, Stack};

const SERVICES: [Service; 3] = [Service::Bridge, Service::Executor, Service::Ledger];
const LEDGER: &str = "quantum:position:ledger:BTCUSDT";

async fn fills(stack: &Stack) -> u64 {
    stack
        .hash(LEDGER)
        .await
        .get("fills")
        .and_then(|f| f.parse().ok())
        .unwrap_or(0)
}

async fn buy_and_wait_for_fill(stack: &Stack, expected_fills: u64) {
    stack
        .xadd(
            INTENT_STREAM,
            &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "0.001")],
        )
        .await;
    wait_for(&format!("fill {expected_fills} in the ledger"), || async {
        fills(stack).await == expected_fills
    })
    .await;
}

fn wait_short_total(stack: &Stack, service: Service) -> f64 {
    let (_, body) = get(port_of(stack, service), "/metrics");
    body.lines()
        .find(|l| l.starts_with("quantum_redis_wait_short_total "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn committed_batches_wait_for_the_replica_and_a_silent_one_is_reported_not_fatal() {
    let mut stack = Stack::new().await;
    let wait = [
        ("SYMBOL_ALLOWLIST", "BTCUSDT"),
        ("REDIS_WAIT_REPLICAS", "1"),
        ("REDIS_WAIT_TIMEOUT_MS", "200"),
        ("STREAM_BLOCK_MS", "100"),
    ];
    // No replica yet: each service says what waiting will cost.
    for s in SERVICES {
        stack.start(s, &wait);
    }
    for s in SERVICES {
        stack
            .wait_log(
                s,
                "REDIS_SETTINGS REDIS_WAIT_REPLICAS=1 but Redis has 0 connected replicas",
            )
            .await;
        stack.wait_log(s, "Consumer ready").await;
    }

    let replica = stack.start_redis_replica().await;
    buy_and_wait_for_fill(&stack, 1).await;
    for s in SERVICES {
        assert!(!stack.log(s).contains("REDIS_WAIT_SHORT"), "{}", stack.log(s));
        assert_eq!(wait_short_total(&stack, s), 0.0, "{}", s.binary());
    }

    // The replica stops answering: every stage still commits, and each says so once.
    replica.pause();
    buy_and_wait_for_fill(&stack, 2).await;
    buy_and_wait_for_fill(&stack, 3).await;
    for s in SERVICES {
        let log = stack
            .wait_log(s, "REDIS_WAIT_SHORT replicas=0/1 timeout_ms=200 after ")
            .await;
        assert_eq!(
            log.matches("REDIS_WAIT_SHORT").count(),
            1,
            "logged once per outage:\n{log}"
        );
        // A stage's wait follows its commit, which the next stage may see first.
        wait_for(&format!("{} to count every short wait", s.binary()), || async {
            wait_short_total(&stack, s) >= 2.0
        })
        .await;
    }

    // Back: the next batch is on the replica again, and the return is logged.
    replica.resume();
    buy_and_wait_for_fill(&stack, 4).await;
    for s in SERVICES {
        stack.wait_log(s, "REDIS_WAIT restored: 1 replicas hold ").await;
    }
    // The replica holds what the master holds (it is in sync: WAIT answered in full).
    let replica_client = quantum_runtime::config::RedisArgs::from_url(&replica.url())
        .connect(&tokio_util::sync::CancellationToken::new())
        .await
        .expect("connect to the replica");
    let on_replica: std::collections::HashMap<String, String> = {
        use fred::prelude::*;
        replica_client.hgetall(LEDGER).await.expect("HGETALL on the replica")
    };
    assert_eq!(on_replica.get("fills").map(String::as_str), Some("4"), "{on_replica:?}");
    for s in SERVICES {
        assert!(stack.stop(s), "{} stops cleanly", s.binary());
    }
}
