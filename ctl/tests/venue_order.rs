//! The ledger applies numbered fills (`venue_seq`) in the venue's order, whatever order they
//! arrive in: one ahead of its turn is parked until the ones before it come, a gap is waited
//! for (`LEDGER_GAP_TIMEOUT_MS`) and then skipped, a missing fill that still comes is applied
//! late, and the dedup state stays a few hundred bytes per symbol however many fills it saw.

mod support;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Value};

use quantum_model::contract::*;
use quantumctl::stack::Service;
use support::{wait_for, Stack};

const LEDGER: &str = "quantum:position:ledger:BTCUSDT";
const PARKED: &str = "{quantum:position:ledger:BTCUSDT}:parked";

/// Fill number `seq` of BTCUSDT at the venue.
fn fill(seq: u64, side: &str, price: &str) -> Vec<(String, String)> {
    let plan = format!("{seq:016x}");
    [
        ("fill_id", format!("qib-{plan}-1")),
        ("order_id", format!("qib-{plan}")),
        ("plan_id", plan),
        ("symbol", "BTCUSDT".into()),
        ("side", side.into()),
        ("qty", "1".into()),
        ("price", price.into()),
        ("fee", "0".into()),
        ("leverage", "1".into()),
        ("ts", "1".into()),
        ("venue_seq", seq.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

async fn publish(stack: &Stack, fields: Vec<(String, String)>) {
    let _: String = stack
        .client
        .xadd(LEDGER_COMMIT_STREAM, false, None, "*", fields)
        .await
        .expect("xadd");
}

async fn field(stack: &Stack, key: &str, name: &str) -> Option<String> {
    stack.hash(key).await.get(name).cloned()
}

#[tokio::test]
async fn fills_are_applied_in_venue_order_and_a_gap_is_waited_for_then_skipped() {
    let mut stack = Stack::new().await;
    stack.start(
        Service::Ledger,
        &[
            ("LEDGER_GAP_TIMEOUT_MS", "1500"),
            ("LEDGER_RECONCILE_INTERVAL_MS", "200"),
            ("LEDGER_RECONCILE", "false"),
        ],
    );
    // The venue's order: BUY @100, SELL @110, BUY @120. Applied as they arrive (3, 2, 1) the
    // ledger would end long at 100 with 10 lost; in venue order it is long at 120 with 10 won.
    publish(&stack, fill(3, "BUY", "120")).await;
    stack.wait_log(Service::Ledger, "LEDGER_PARKED symbol=BTCUSDT").await;
    publish(&stack, fill(2, "SELL", "110")).await;
    wait_for("two fills parked", || async { stack.hash(PARKED).await.len() == 2 }).await;
    assert!(stack.hash(LEDGER).await.is_empty(), "nothing applied ahead of fill 1");
    publish(&stack, fill(1, "BUY", "100")).await;
    wait_for("all three applied", || async {
        field(&stack, LEDGER, "fills").await.as_deref() == Some("3")
    })
    .await;
    let ledger = stack.hash(LEDGER).await;
    assert_eq!(ledger["position_amt"], "1");
    assert_eq!(ledger["avg_entry_price"], "120");
    assert_eq!(ledger["realized_pnl"], "10");
    assert_eq!(ledger["venue_seq"], "3");
    assert!(stack.hash(PARKED).await.is_empty(), "unparked once applied");

    // Redelivered fills change nothing.
    publish(&stack, fill(2, "SELL", "110")).await;
    stack
        .wait_log(
            Service::Ledger,
            "LEDGER_DUPLICATE symbol=BTCUSDT fill_id=qib-0000000000000002-1",
        )
        .await;

    // Fill 4 never comes in time: fill 5 waits the gap timeout, then the ledger moves on.
    publish(&stack, fill(5, "BUY", "130")).await;
    stack
        .wait_log(
            Service::Ledger,
            "LEDGER_GAP symbol=BTCUSDT missing_venue_seq=4..=4 action=skipped",
        )
        .await;
    let ledger = stack.hash(LEDGER).await;
    assert_eq!(
        (ledger["position_amt"].as_str(), ledger["venue_seq"].as_str()),
        ("2", "5")
    );
    assert_eq!(ledger["venue_seq_missing"], "4");
    // It still comes: applied late, once.
    publish(&stack, fill(4, "BUY", "125")).await;
    publish(&stack, fill(4, "BUY", "125")).await;
    wait_for("the late fill applied", || async {
        field(&stack, LEDGER, "fills").await.as_deref() == Some("5")
    })
    .await;
    stack.wait_group_idle(LEDGER_COMMIT_STREAM, LEDGER_GROUP).await;
    let ledger = stack.hash(LEDGER).await;
    assert_eq!(
        (
            ledger["position_amt"].as_str(),
            ledger["venue_seq_missing"].as_str(),
            ledger["fills"].as_str()
        ),
        ("3", "", "5")
    );
    // The lines follow the commits that the fill count shows.
    wait_for("five LEDGER_COMMIT lines", || async {
        stack
            .log(Service::Ledger)
            .matches("LEDGER_COMMIT symbol=BTCUSDT")
            .count()
            >= 5
    })
    .await;
    let log = stack.log(Service::Ledger);
    assert_eq!(log.matches("LEDGER_COMMIT symbol=BTCUSDT").count(), 5, "{log}");
    let applied: i64 = stack
        .client
        .exists("{quantum:position:ledger:BTCUSDT}:applied")
        .await
        .unwrap();
    assert_eq!(applied, 0, "numbered fills keep no per-fill record");
}

#[tokio::test]
async fn dedup_state_stays_within_64_kib_per_symbol_whatever_the_number_of_fills() {
    let mut stack = Stack::new().await;
    stack.start(Service::Ledger, &[("LEDGER_RECONCILE", "false")]);
    const FILLS: u64 = 5_000;
    // Out of order in blocks of ten (as several executors would finalize them), each block
    // written in one pipeline.
    for block in (1..=FILLS).step_by(10) {
        let pipeline = stack.client.pipeline();
        for seq in (block..block + 10).rev() {
            let side = if seq % 2 == 0 { "SELL" } else { "BUY" };
            let _: () = pipeline
                .xadd(LEDGER_COMMIT_STREAM, false, None, "*", fill(seq, side, "100"))
                .await
                .unwrap();
        }
        let _: Vec<Value> = pipeline.all().await.unwrap();
    }
    wait_for("every fill applied", || async {
        field(&stack, LEDGER, "fills").await == Some(FILLS.to_string())
    })
    .await;
    let ledger = stack.hash(LEDGER).await;
    assert_eq!(
        (ledger["position_amt"].as_str(), ledger["venue_seq"].as_str()),
        ("0", "5000")
    );
    let mut bytes = 0;
    for key in [LEDGER, PARKED, "{quantum:position:ledger:BTCUSDT}:applied"] {
        let usage: Value = stack
            .client
            .custom(
                CustomCommand::new_static("MEMORY", ClusterHash::Random, false),
                vec!["USAGE", key],
            )
            .await
            .unwrap();
        bytes += usage.as_u64().unwrap_or(0);
    }
    assert!(bytes > 0, "the ledger itself is counted");
    assert!(
        bytes <= 64 * 1024,
        "{bytes} bytes of ledger and dedup state for {FILLS} fills"
    );
}
