//! The governor, producers' real intent formats and the one allowlist, against a real
//! redis-server and the real service binaries.

mod support;

use std::collections::HashMap;

use fred::prelude::*;
use quantum_model::contract::*;
use quantum_model::time::now_secs;
use quantumctl::stack::Service;
use support::{wait_for, Stack};

/// The production proposal: components only (K = 0.7563 is computed), fresh.
async fn production_proposal(stack: &Stack, symbol: &str) {
    let epoch = now_secs().to_string();
    stack
        .hset(
            &format!("quantum:harvest:proposal:{symbol}"),
            &[
                ("k_regime_flip", "1.0"),
                ("k_sigma_spike", "0.0"),
                ("k_ts_drop", "0.2398"),
                ("k_age_penalty", "0.0417"),
                ("harvest_action", "UNKNOWN"),
                ("computed_at_utc", "2026-02-01T22:05:12Z"),
                ("last_update_epoch", epoch.as_str()),
            ],
        )
        .await;
}

async fn proposal(stack: &Stack, symbol: &str, kill_score: &str, epoch: u64) {
    let epoch = epoch.to_string();
    stack
        .hset(
            &format!("quantum:harvest:proposal:{symbol}"),
            &[("kill_score", kill_score), ("last_update_epoch", epoch.as_str())],
        )
        .await;
}

/// Seeds `n` earlier kill-score samples of `symbol` at `k` (what the bridge would have observed).
async fn history(stack: &Stack, symbol: &str, k: f64, n: u64) {
    let key = format!("{{quantum:harvest:proposal:{symbol}}}:kill_history");
    let start = now_secs() - 10_000;
    for i in 0..n {
        let epoch = start + i;
        let member = format!("{epoch}:{k:.6}");
        stack
            .client
            .zadd::<(), _, _>(&key, None, None, false, false, (epoch as f64, member))
            .await
            .expect("zadd");
    }
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

async fn results(stack: &Stack) -> HashMap<String, HashMap<String, String>> {
    stack
        .entries(RESULT_STREAM)
        .await
        .into_iter()
        .map(|e| {
            (
                e.get("plan_id").unwrap_or_default().to_string(),
                e.fields.into_iter().collect(),
            )
        })
        .collect()
}

async fn buy(stack: &Stack, symbol: &str) -> String {
    stack
        .xadd(INTENT_STREAM, &[("symbol", symbol), ("side", "BUY"), ("qty", "1")])
        .await
}

async fn sell(stack: &Stack, symbol: &str) -> String {
    stack
        .xadd(INTENT_STREAM, &[("symbol", symbol), ("side", "SELL"), ("qty", "1")])
        .await
}

#[tokio::test]
async fn legacy_governor_blocks_entries_and_lets_closes_through_and_the_executor_answers() {
    let mut stack = Stack::new().await;
    stack
        .hset("quantum:position:ledger:ZECUSDT", &[("position_amt", "5")])
        .await;
    // The venue holds the position the ledger shows: the close is reduce-only.
    let zec = quantum_model::types::Symbol::parse("ZECUSDT").unwrap();
    quantum_intent_executor::paper::seed_position(&stack.client, &zec, 5.into(), 40.into())
        .await
        .unwrap();
    for symbol in ["BTCUSDT", "ZECUSDT"] {
        production_proposal(&stack, symbol).await;
    }
    stack.start(Service::Bridge, &[("GOVERNOR_MODE", "legacy")]);
    stack.start(Service::Executor, &[]);
    let entry = buy(&stack, "BTCUSDT").await;
    let close = sell(&stack, "ZECUSDT").await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    stack.wait_group_idle(PLAN_STREAM, PLAN_GROUP).await;

    let plans = plans(&stack).await;
    let blocked = &plans[&entry];
    assert_eq!(blocked["decision"], "BLOCKED");
    assert_eq!(blocked["reason"], "kill_score_warning_risk_increase");
    assert_eq!(blocked["reason_codes"], "kill_score_warning_risk_increase");
    assert_eq!(blocked["kill_score"], "0.7563");
    for (field, value) in [
        ("k_regime_flip", "1.0"),
        ("k_sigma_spike", "0.0"),
        ("k_ts_drop", "0.2398"),
        ("k_age_penalty", "0.0417"),
        ("harvest_action", "UNKNOWN"),
    ] {
        assert_eq!(blocked[field], value, "{field}");
    }
    let closed = &plans[&close];
    assert_eq!(closed["decision"], "EXECUTE");
    assert_eq!(closed["reason_codes"], "kill_score_warning_close_ok");

    let results = results(&stack).await;
    let r = &results[&blocked["plan_id"]];
    assert_eq!(
        (r["executed"].as_str(), r["decision"].as_str(), r["reason"].as_str()),
        ("false", "BLOCKED", "kill_score_warning_risk_increase")
    );
    assert_eq!(results[&closed["plan_id"]]["executed"], "true");

    // A replay of the plan stream answers nothing twice: the BLOCKED plan keeps its one result.
    {
        use fred::prelude::*;
        let _: () = stack.client.xgroup_setid(PLAN_STREAM, PLAN_GROUP, "0").await.unwrap();
    }
    stack.wait_log(Service::Executor, "Duplicate plan").await;
    stack.wait_group_idle(PLAN_STREAM, PLAN_GROUP).await;
    let answers = stack
        .entries(RESULT_STREAM)
        .await
        .iter()
        .filter(|r| r.get("plan_id") == Some(blocked["plan_id"].as_str()))
        .count();
    assert_eq!(answers, 1, "one result per BLOCKED plan, replays included");
    assert_eq!(stack.xlen(RESULT_STREAM).await, 2);

    let lines = [
        "Governor: mode=legacy k_block_critical=0.8 k_block_warning=0.6",
        "GOVERNOR decision=BLOCKED symbol=BTCUSDT side=BUY mode=legacy kill_score=0.7563 z=none threshold=0.6 reason=kill_score_warning_risk_increase plan_id=",
        "Publishing plan for ZECUSDT SELL: leverage=1, sl=None, tp=None",
        "decision=EXECUTE governor=kill_score_warning_close_ok kill_score=0.7563",
        "Publishing plan for BTCUSDT BUY: leverage=1, sl=None, tp=None",
        "decision=BLOCKED governor=kill_score_warning_risk_increase kill_score=0.7563",
    ];
    stack.wait_logs(Service::Bridge, &lines).await;
    assert!(stack.stop(Service::Bridge));
    assert!(stack.log(Service::Bridge).contains("published=2 blocked=1"));
}

#[tokio::test]
async fn separated_governor_judges_entries_on_their_z_score_and_never_blocks_exits() {
    let mut stack = Stack::new().await;
    let now = now_secs();
    for symbol in ["BTCUSDT", "ETHUSDT", "SOLUSDT"] {
        stack
            .hset(&format!("quantum:position:ledger:{symbol}"), &[("position_amt", "3")])
            .await;
    }
    // BTC lives at K≈0.76 (regime flipped for hours): 0.7563 is normal for it.
    history(&stack, "BTCUSDT", 0.76, 30).await;
    production_proposal(&stack, "BTCUSDT").await;
    // ETH has been calm at 0.5: K=0.9 is a genuine outlier (z = 4).
    history(&stack, "ETHUSDT", 0.5, 30).await;
    proposal(&stack, "ETHUSDT", "0.9", now).await;
    // SOL has no history yet: the fallback threshold (0.85) applies.
    proposal(&stack, "SOLUSDT", "0.7563", now).await;
    stack.start(Service::Bridge, &[]);

    let btc = buy(&stack, "BTCUSDT").await;
    let eth = buy(&stack, "ETHUSDT").await;
    let eth_exit = sell(&stack, "ETHUSDT").await;
    let sol = buy(&stack, "SOLUSDT").await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    let plans = plans(&stack).await;
    let decided = |id: &String| (plans[id]["decision"].clone(), plans[id]["reason_codes"].clone());
    assert_eq!(decided(&btc), ("EXECUTE".into(), "kill_score_entry_ok".into()));
    assert_eq!(plans[&btc]["kill_score_z"], "-0.0372");
    assert_eq!(decided(&eth), ("BLOCKED".into(), "kill_score_entry_outlier".into()));
    assert_eq!(plans[&eth]["kill_score_z"], "4.0000");
    assert_eq!(decided(&eth_exit), ("EXECUTE".into(), "kill_score_exit_ok".into()));
    assert_eq!(decided(&sol), ("EXECUTE".into(), "kill_score_entry_fallback_ok".into()));
    assert!(!plans[&sol].contains_key("kill_score_z"));

    // Each fresh proposal became one history sample, however often it was judged.
    let sol_history: Vec<String> = stack
        .client
        .zrange(
            "{quantum:harvest:proposal:SOLUSDT}:kill_history",
            0,
            -1,
            None,
            false,
            None,
            false,
        )
        .await
        .unwrap();
    assert_eq!(sol_history, vec![format!("{now}:0.756300")]);
    buy(&stack, "SOLUSDT").await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    let again: u64 = stack
        .client
        .zcard("{quantum:harvest:proposal:SOLUSDT}:kill_history")
        .await
        .unwrap();
    assert_eq!(again, 1);

    stack
        .wait_logs(
            Service::Bridge,
            &[
                "Governor: mode=separated",
                "GOVERNOR decision=BLOCKED symbol=ETHUSDT side=BUY mode=separated kill_score=0.9000 z=4.0000 threshold=3 reason=kill_score_entry_outlier",
            ],
        )
        .await;
}

#[tokio::test]
async fn missing_stale_and_unreadable_proposals_have_their_outcomes() {
    let mut stack = Stack::new().await;
    stack
        .hset("quantum:position:ledger:ETHUSDT", &[("position_amt", "3")])
        .await;
    proposal(&stack, "BTCUSDT", "0.99", now_secs() - 3600).await;
    stack
        .hset("quantum:harvest:proposal:ETHUSDT", &[("kill_score", "lots")])
        .await;
    stack.start(Service::Bridge, &[]);
    let stale = buy(&stack, "BTCUSDT").await;
    let missing = buy(&stack, "SOLUSDT").await;
    let unreadable = buy(&stack, "ETHUSDT").await;
    let unreadable_exit = sell(&stack, "ETHUSDT").await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    let p = plans(&stack).await;
    let decided = |id: &String| (p[id]["decision"].as_str(), p[id]["reason_codes"].as_str());
    assert_eq!(decided(&stale), ("EXECUTE", "proposal_stale"));
    assert_eq!(p[&stale]["kill_score"], "0.9900", "a stale K is shown, not used");
    assert_eq!(decided(&missing), ("EXECUTE", "proposal_missing"));
    assert_eq!(decided(&unreadable), ("BLOCKED", "proposal_unreadable"));
    assert_eq!(decided(&unreadable_exit), ("EXECUTE", "proposal_unreadable"));
    stack
        .wait_log(
            Service::Bridge,
            "Proposal of ETHUSDT unreadable (kill_score \"lots\" is not a finite number)",
        )
        .await;
    assert!(stack.stop(Service::Bridge));

    // An operator who wants no entries without a fresh risk judgement says so.
    stack.start(Service::Bridge, &[("GOVERNOR_MISSING_PROPOSAL", "block-entries")]);
    let blocked = buy(&stack, "SOLUSDT").await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    let p = plans(&stack).await;
    assert_eq!(
        (p[&blocked]["decision"].as_str(), p[&blocked]["reason"].as_str()),
        ("BLOCKED", "proposal_missing")
    );
}

#[tokio::test]
async fn producers_formats_long_short_usd_at_mark_and_extras() {
    let mut stack = Stack::new().await;
    stack.hset(MARK_PRICE_KEY, &[("BTCUSDT", "50000")]).await;
    stack.start(Service::Bridge, &[]);
    let long = stack
        .xadd(
            INTENT_STREAM,
            &[
                ("symbol", "BTCUSDT"),
                ("side", "LONG"),
                ("position_size_usd", "100"),
                ("confidence", "0.72"),
                ("atr_value", "812.5"),
                ("volatility_factor", "1.3"),
                ("regime", "trend_up"),
                ("funding_rate", "0.0001"),
            ],
        )
        .await;
    let lower_long = stack
        .xadd(
            INTENT_STREAM,
            &[("symbol", "BTCUSDT"), ("side", "long"), ("qty", "0.001")],
        )
        .await;
    let short = stack
        .xadd(INTENT_STREAM, &[("symbol", "BTCUSDT"), ("side", "SHORT"), ("qty", "1")])
        .await;
    // No ETH mark yet: the intent waits (pending) instead of going to the DLQ.
    let waits = stack
        .xadd(
            INTENT_STREAM,
            &[("symbol", "ETHUSDT"), ("side", "BUY"), ("position_size_usd", "300")],
        )
        .await;
    // Sized at the mark but outside the allowlist: skipped at once, it does not wait for a price.
    let outside = stack
        .xadd(
            INTENT_STREAM,
            &[("symbol", "NEARUSDT"), ("side", "BUY"), ("position_size_usd", "50")],
        )
        .await;
    stack
        .wait_log(
            Service::Bridge,
            &format!("Waiting for mark price: ETHUSDT BUY intent {waits}"),
        )
        .await;
    stack
        .wait_log(
            Service::Bridge,
            "SKIP_INTENT_SYMBOL_NOT_IN_ALLOWLIST symbol=NEARUSDT side=BUY allowlist_count=11 plan_id=none",
        )
        .await;
    assert!(!stack.log(Service::Bridge).contains(&format!("intent {outside} (age=")));
    let p = plans(&stack).await;
    let l = &p[&long];
    assert_eq!(
        (l["side"].as_str(), l["qty"].as_str()),
        ("BUY", "0.002"),
        "100 USD / 50000"
    );
    for (field, value) in [
        ("confidence", "0.72"),
        ("atr_value", "812.5"),
        ("volatility_factor", "1.3"),
        ("regime", "trend_up"),
        ("funding_rate", "0.0001"),
    ] {
        assert_eq!(l[field], value, "{field} carried");
    }
    assert_eq!(p[&lower_long]["side"], "BUY");
    assert!(!p.contains_key(&waits));
    let dlq = stack.entries(INTENT_DLQ_STREAM).await;
    let short_dlq = dlq
        .iter()
        .find(|e| e.get("source_id") == Some(short.as_str()))
        .expect("SHORT dead-lettered");
    assert_eq!(short_dlq.get("reason"), Some("short_not_supported"));
    assert!(short_dlq.get("error").unwrap().contains("does not do"));
    assert_eq!(dlq.len(), 1, "the waiting intent is not dead-lettered");

    stack.hset(MARK_PRICE_KEY, &[("ETHUSDT", "3000")]).await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    let p = plans(&stack).await;
    assert_eq!(p[&waits]["qty"], "0.1", "300 USD / 3000, once the mark appeared");
    assert_eq!(stack.xlen(INTENT_DLQ_STREAM).await, 1);
}

#[tokio::test]
async fn a_mark_that_never_comes_dead_letters_after_the_max_age_and_stale_intents_are_skipped() {
    let mut stack = Stack::new().await;
    // An intent added long ago (its id carries the time): stale.
    let old = stack
        .client
        .xadd::<String, _, _, _, _>(
            INTENT_STREAM,
            false,
            None,
            "1000-0",
            vec![("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "1")],
        )
        .await
        .unwrap();
    stack.start(
        Service::Bridge,
        &[
            ("INTENT_BRIDGE_MAX_INTENT_AGE_MS", "1500"),
            ("STREAM_CLAIM_IDLE_MS", "1000"),
        ],
    );
    let waits = stack
        .xadd(
            INTENT_STREAM,
            &[
                ("symbol", "SOLUSDT"),
                ("side", "BUY"),
                ("position_usd", "100"),
                ("leverage", "2"),
            ],
        )
        .await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    let dlq = stack.entries(INTENT_DLQ_STREAM).await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].get("source_id"), Some(waits.as_str()));
    assert_eq!(dlq[0].get("reason"), Some("mark_price_unavailable"));
    assert!(dlq[0]
        .get("error")
        .unwrap()
        .contains("INTENT_BRIDGE_MAX_INTENT_AGE_MS=1500"));
    assert!(plans(&stack).await.is_empty());
    stack
        .wait_logs(
            Service::Bridge,
            &["Skip publish: BTCUSDT BUY stale intent (age=", "> max=1500ms)"],
        )
        .await;
    assert!(stack.stop(Service::Bridge));
    assert!(stack.log(Service::Bridge).contains("skipped=[stale=1]"), "{old}");
}

#[tokio::test]
async fn one_allowlist_the_executor_refuses_other_symbols_and_old_variables_still_work() {
    let mut stack = Stack::new().await;
    stack.start(Service::Executor, &[("SYMBOL_ALLOWLIST", "BTCUSDT")]);
    // Another producer writes a plan for a symbol outside the allowlist.
    let plan = [
        ("plan_id", "00000000000000aa"),
        ("decision", "EXECUTE"),
        ("symbol", "ETHUSDT"),
        ("side", "BUY"),
        ("qty", "1"),
    ];
    stack.xadd(PLAN_STREAM, &plan).await;
    stack.wait_group_idle(PLAN_STREAM, PLAN_GROUP).await;
    let r = &results(&stack).await["00000000000000aa"];
    assert_eq!(
        (r["executed"].as_str(), r["reason"].as_str()),
        ("false", "symbol_not_in_allowlist:ETHUSDT")
    );
    assert_eq!(stack.xlen(LEDGER_COMMIT_STREAM).await, 0, "nothing was executed");
    assert!(stack.stop(Service::Executor));

    // The deprecated per-service variables still work, with a deprecation line...
    stack.env.remove("SYMBOL_ALLOWLIST");
    stack.start(Service::Executor, &[("INTENT_EXECUTOR_ALLOWLIST", "ETHUSDT")]);
    stack.start(Service::Bridge, &[("INTENT_BRIDGE_ALLOWLIST", "ETHUSDT")]);
    let intent = buy(&stack, "ETHUSDT").await;
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    stack.wait_group_idle(PLAN_STREAM, PLAN_GROUP).await;
    assert_eq!(plans(&stack).await[&intent]["decision"], "EXECUTE");
    for service in [Service::Bridge, Service::Executor] {
        stack
            .wait_log(service, "is deprecated (used, since SYMBOL_ALLOWLIST is unset)")
            .await;
    }
    assert!(stack.stop(Service::Bridge) && stack.stop(Service::Executor));

    // ...and disagreeing with SYMBOL_ALLOWLIST stops the service with a clear error.
    for (service, legacy) in [
        (Service::Bridge, "INTENT_BRIDGE_ALLOWLIST"),
        (Service::Executor, "INTENT_EXECUTOR_ALLOWLIST"),
    ] {
        stack.start(service, &[("SYMBOL_ALLOWLIST", "BTCUSDT,ETHUSDT"), (legacy, "ETHUSDT")]);
        let proc = stack.process(service);
        wait_for("exit on conflicting allowlists", || {
            let exited = proc.exited().is_some();
            async move { exited }
        })
        .await;
        let expected = format!(
            "SYMBOL_ALLOWLIST (BTCUSDT,ETHUSDT) and the deprecated {legacy} (ETHUSDT) disagree; remove {legacy}"
        );
        assert!(stack.log(service).contains(&expected), "{}", stack.log(service));
    }
}
