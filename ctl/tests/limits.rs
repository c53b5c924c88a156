//! Absurd numbers and fat fingers on a live stack: each gets a DLQ reason or a refusal, no
//! service panics, and the next good intent still trades.

mod support;

use quantum_model::contract::*;
use quantumctl::pipeline_facts::wait_idle;
use quantumctl::stack::Service;
use support::{Stack, TIMEOUT};

#[tokio::test]
async fn absurd_intents_and_plans_are_refused_and_trading_goes_on() {
    let mut stack = Stack::new().await;
    // The mark that prices the ETH fat finger (the venue publishes it too, but maybe later).
    stack.hset(MARK_PRICE_KEY, &[("ETHUSDT", "3200")]).await;
    for service in [Service::Ledger, Service::Executor] {
        stack.start(service, &[]);
    }
    stack.start(
        Service::Bridge,
        &[
            ("INTENT_BRIDGE_MAX_QTY", "1000000,BTCUSDT=5"),
            ("INTENT_BRIDGE_MAX_NOTIONAL_USD", "1000000"),
        ],
    );
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "quantity_out_of_range",
            vec![("symbol", "BTCUSDT"), ("side", "BUY"), ("quantity", "1e25")],
        ),
        (
            "notional_out_of_range",
            vec![
                ("symbol", "BTCUSDT"),
                ("side", "BUY"),
                ("position_usd", "1e27"),
                ("leverage", "125"),
            ],
        ),
        (
            "quantity_out_of_range",
            vec![
                ("symbol", "BTCUSDT"),
                ("side", "BUY"),
                ("size", "1e11"),
                ("price", "1e-20"),
            ],
        ),
        // Fat fingers: above the BTC quantity cap, and 1000 ETH (about 3.2M USD at the mark).
        (
            "quantity_out_of_range",
            vec![("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "6")],
        ),
        (
            "notional_out_of_range",
            vec![("symbol", "ETHUSDT"), ("side", "BUY"), ("qty", "1000")],
        ),
    ];
    let mut ids = Vec::new();
    for (reason, fields) in &cases {
        ids.push((*reason, stack.xadd(INTENT_STREAM, fields).await));
    }
    // Another producer writes an absurd plan straight to apply.plan.
    stack
        .xadd(
            PLAN_STREAM,
            &[
                ("plan_id", "00000000000000ab"),
                ("decision", "EXECUTE"),
                ("symbol", "BTCUSDT"),
                ("side", "BUY"),
                ("qty", "1e25"),
            ],
        )
        .await;
    let good = stack
        .xadd(
            INTENT_STREAM,
            &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "0.01")],
        )
        .await;
    // Five dead-lettered intents, and two results (the absurd plan's and the good one's).
    let client = stack.client.clone();
    support::wait_for("5 DLQ entries and 2 results", || {
        let client = client.clone();
        async move {
            use fred::prelude::*;
            let dlq: u64 = client.xlen(INTENT_DLQ_STREAM).await.unwrap_or(0);
            let results: u64 = client.xlen(RESULT_STREAM).await.unwrap_or(0);
            dlq == 5 && results == 2
        }
    })
    .await;
    assert!(wait_idle(&stack.client, TIMEOUT).await.unwrap());

    let dlq = stack.entries(INTENT_DLQ_STREAM).await;
    for (reason, id) in &ids {
        let entry = dlq
            .iter()
            .find(|e| e.get("source_id") == Some(id.as_str()))
            .unwrap_or_else(|| panic!("{id} not dead-lettered: {dlq:?}"));
        assert_eq!(entry.get("reason"), Some(*reason), "{id}: {:?}", entry.get("error"));
    }
    let results = stack.entries(RESULT_STREAM).await;
    let absurd = results
        .iter()
        .find(|r| r.get("plan_id") == Some("00000000000000ab"))
        .expect("the absurd plan is answered");
    assert_eq!(absurd.get("executed"), Some("false"));
    assert!(absurd.get("reason").unwrap().contains("beyond ±10^12"), "{absurd:?}");
    let plans = stack.entries(PLAN_STREAM).await;
    let good_plan = plans
        .iter()
        .find(|p| p.get("intent_id") == Some(good.as_str()))
        .expect("the good intent is planned");
    let filled = results
        .iter()
        .find(|r| r.get("plan_id") == good_plan.get("plan_id"))
        .expect("and executed");
    assert_eq!(filled.get("executed"), Some("true"));
    for service in [Service::Bridge, Service::Executor, Service::Ledger] {
        assert_eq!(
            stack.process(service).exited(),
            None,
            "{} must still run",
            service.binary()
        );
        assert!(!stack.log(service).contains("panicked"), "{}", stack.log(service));
    }
}

#[tokio::test]
async fn the_executor_refuses_stale_plans_instead_of_trading_late() {
    let mut stack = Stack::new().await;
    // A plan published long ago (its id says so), as found in a backlog after an outage.
    {
        use fred::prelude::*;
        let _: String = stack
            .client
            .xadd(
                PLAN_STREAM,
                false,
                None,
                "1000-0",
                vec![
                    ("plan_id", "00000000000000cc"),
                    ("decision", "EXECUTE"),
                    ("symbol", "BTCUSDT"),
                    ("side", "BUY"),
                    ("qty", "0.01"),
                ],
            )
            .await
            .unwrap();
    }
    // A limit below the reclaim age is refused at start.
    stack.start(Service::Executor, &[("INTENT_EXECUTOR_MAX_PLAN_AGE_MS", "30000")]);
    let proc = stack.process(Service::Executor);
    support::wait_for("executor exit", || {
        let exited = proc.exited().is_some();
        async move { exited }
    })
    .await;
    assert!(stack.log(Service::Executor).contains(
        "INTENT_EXECUTOR_MAX_PLAN_AGE_MS (30000) must exceed STREAM_CLAIM_IDLE_MS + STREAM_BLOCK_MS (60200)"
    ));
    stack.start(Service::Executor, &[]);
    stack.wait_group_idle(PLAN_STREAM, PLAN_GROUP).await;
    let results = stack.entries(RESULT_STREAM).await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].get("executed"), Some("false"));
    assert!(
        results[0]
            .get("reason")
            .unwrap()
            .contains("> INTENT_EXECUTOR_MAX_PLAN_AGE_MS=120000"),
        "{:?}",
        results[0]
    );
    assert_eq!(stack.xlen(LEDGER_COMMIT_STREAM).await, 0, "no order, no fill");
}
