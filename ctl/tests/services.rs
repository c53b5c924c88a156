//! Executor and ledger behaviour on a real redis-server: non-executed and malformed plans,
//! venue rejections, malformed fills, reconcile with exchange truth.

mod support;

use quantum_model::contract::*;
use quantumctl::stack::Service;
use support::Stack;

const PLAN_ID: &str = "00112233445566aa";

fn plan<'a>(
    plan_id: &'a str,
    decision: &'a str,
    side: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut fields = vec![
        ("plan_id", plan_id),
        ("decision", decision),
        ("symbol", "BTCUSDT"),
        ("side", side),
        ("type", "MARKET"),
        ("qty", "0.01"),
        ("reduceOnly", "false"),
        ("leverage", "1"),
    ];
    for (k, v) in extra {
        match fields.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v,
            None => fields.push((k, v)),
        }
    }
    fields
}

#[tokio::test]
async fn executor_reports_every_plan_once_whatever_its_fate() {
    let mut stack = Stack::new().await;
    stack.start(Service::Executor, &[]);
    stack.wait_log(Service::Executor, "Consumer ready").await;
    stack.xadd(PLAN_STREAM, &plan(PLAN_ID, "EXECUTE", "BUY", &[])).await;
    stack
        .xadd(
            PLAN_STREAM,
            &plan("00112233445566bb", "BLOCKED", "BUY", &[("reason", "risk_governor")]),
        )
        .await;
    stack
        .xadd(PLAN_STREAM, &plan("00112233445566cc", "SKIP", "SELL", &[]))
        .await;
    stack
        .xadd(
            PLAN_STREAM,
            &plan(
                "00112233445566dd",
                "EXECUTE",
                "SELL",
                &[("reduceOnly", "true"), ("qty", "5")],
            ),
        )
        .await;
    stack
        .xadd(
            PLAN_STREAM,
            &plan("00112233445566ee", "EXECUTE", "BUY", &[("qty", "0.0001")]),
        )
        .await;
    stack
        .xadd(
            PLAN_STREAM,
            &plan(
                "00112233445566ff",
                "EXECUTE",
                "BUY",
                &[("type", "LIMIT"), ("price", "1")],
            ),
        )
        .await;
    stack
        .xadd(
            PLAN_STREAM,
            &[("plan_id", "nothex"), ("decision", "EXECUTE"), ("symbol", "BTCUSDT")],
        )
        .await;
    stack.xadd(PLAN_STREAM, &plan(PLAN_ID, "EXECUTE", "BUY", &[])).await; // redelivered copy
    stack.wait_group_idle(PLAN_STREAM, PLAN_GROUP).await;

    let results = stack.entries(RESULT_STREAM).await;
    let by_plan = |id: &str| {
        results
            .iter()
            .filter(|r| r.get("plan_id") == Some(id))
            .collect::<Vec<_>>()
    };
    let filled = by_plan(PLAN_ID);
    assert_eq!(filled.len(), 1, "the duplicate plan gets no second result");
    assert_eq!(filled[0].get("executed"), Some("true"));
    assert_eq!(filled[0].get("order_id"), Some("qib-00112233445566aa"));
    assert_eq!(filled[0].get("filled_qty"), Some("0.01"));
    assert!(filled[0].get("avg_price").unwrap().parse::<f64>().unwrap() > 60_000.0);

    let blocked = by_plan("00112233445566bb");
    assert_eq!(
        (blocked[0].get("executed"), blocked[0].get("decision")),
        (Some("false"), Some("BLOCKED"))
    );
    assert_eq!(blocked[0].get("error"), Some("risk_governor"));
    assert_eq!(blocked[0].get("reason"), Some("risk_governor"));
    assert_eq!(by_plan("00112233445566cc")[0].get("error"), Some("decision SKIP"));
    let reduce_only = by_plan("00112233445566dd");
    assert_eq!(reduce_only[0].get("executed"), Some("false"));
    assert!(reduce_only[0]
        .get("error")
        .unwrap()
        .contains("ReduceOnly Order is rejected"));
    assert!(by_plan("00112233445566ee")[0]
        .get("error")
        .unwrap()
        .contains("below the step size"));
    assert!(by_plan("00112233445566ff")[0]
        .get("error")
        .unwrap()
        .contains("not marketable"));
    let malformed = by_plan("nothex");
    assert_eq!(malformed.len(), 1);
    assert!(malformed[0].get("error").unwrap().contains("malformed plan"));
    assert_eq!(results.len(), 7);

    // One fill, handed to the ledger; the order record tells the story.
    let fills = stack.entries(LEDGER_COMMIT_STREAM).await;
    assert_eq!(fills.len(), 1);
    assert_eq!(fills[0].get("fill_id"), Some("qib-00112233445566aa-1"));
    let order = stack.hash("quantum:order:qib-00112233445566aa").await;
    assert_eq!(order.get("state").map(String::as_str), Some("FILLED"));
    let rejected = stack.hash("quantum:order:qib-00112233445566dd").await;
    assert_eq!(rejected.get("state").map(String::as_str), Some("REJECTED"));
    let snapshot = stack.hash("quantum:position:snapshot:BTCUSDT").await;
    assert_eq!(snapshot.get("position_amt").map(String::as_str), Some("0.01"));
    assert_eq!(snapshot.get("side").map(String::as_str), Some("LONG"));

    let lines = [
        "ORDER FILLED symbol=BTCUSDT side=BUY qty=0.01 price=",
        "order_id=qib-00112233445566aa plan_id=00112233445566aa",
        "ORDER REJECTED symbol=BTCUSDT side=SELL",
        "Duplicate plan 00112233445566aa",
        "Malformed plan",
    ];
    stack.wait_logs(Service::Executor, &lines).await;
}

#[tokio::test]
async fn live_mode_without_credentials_is_refused_with_a_clear_message() {
    let mut stack = Stack::new().await;
    stack.start(Service::Executor, &[("INTENT_EXECUTOR_MODE", "live")]);
    stack
        .wait_log(
            Service::Executor,
            "BINANCE_API_KEY_FILE is not set and there is no systemd credential binance-api-key",
        )
        .await;
}

#[tokio::test]
async fn ledger_applies_fills_once_and_dead_letters_malformed_ones() {
    let mut stack = Stack::new().await;
    stack.start(Service::Ledger, &[("LEDGER_RECONCILE", "false")]);
    let fill = |id: &'static str, side: &'static str, qty: &'static str, price: &'static str| {
        vec![
            ("fill_id", id),
            ("order_id", "qib-1"),
            ("plan_id", PLAN_ID),
            ("symbol", "ETHUSDT"),
            ("side", side),
            ("qty", qty),
            ("price", price),
            ("fee", "0.1"),
            ("leverage", "2"),
            ("ts", "1"),
        ]
    };
    stack.xadd(LEDGER_COMMIT_STREAM, &fill("f1", "BUY", "2", "3000")).await;
    stack.xadd(LEDGER_COMMIT_STREAM, &fill("f2", "BUY", "1", "3300")).await;
    stack.xadd(LEDGER_COMMIT_STREAM, &fill("f1", "BUY", "2", "3000")).await; // duplicate
    stack
        .xadd(LEDGER_COMMIT_STREAM, &fill("f3", "SELL", "1.5", "3200"))
        .await;
    let bad = stack
        .xadd(
            LEDGER_COMMIT_STREAM,
            &[("fill_id", "f4"), ("symbol", "ETHUSDT"), ("qty", "x")],
        )
        .await;
    stack.wait_group_idle(LEDGER_COMMIT_STREAM, LEDGER_GROUP).await;

    let ledger = stack.hash("quantum:position:ledger:ETHUSDT").await;
    let get = |k: &str| ledger.get(k).map(String::as_str);
    assert_eq!(get("position_amt"), Some("1.5"));
    assert_eq!(get("side"), Some("LONG"));
    assert_eq!(get("avg_entry_price"), Some("3100"));
    // 1.5 * (3200 - 3100) - 3 fees of 0.1
    assert_eq!(get("realized_pnl"), Some("149.7"));
    assert_eq!(
        (get("fills"), get("last_fill_id"), get("source")),
        (Some("3"), Some("f3"), Some("fill"))
    );
    assert_eq!(get("leverage"), Some("2"));
    let dlq = stack.entries(LEDGER_COMMIT_DLQ_STREAM).await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].get("source_id"), Some(bad.as_str()));
    assert!(dlq[0].get("error").unwrap().contains("order_id"));
    let lines = [
        "LEDGER_COMMIT symbol=ETHUSDT fill_id=f1",
        "LEDGER_DUPLICATE symbol=ETHUSDT fill_id=f1",
        "DLQ ledger.commit",
    ];
    stack.wait_logs(Service::Ledger, &lines).await;
}

#[tokio::test]
async fn reconcile_lets_exchange_truth_win_after_the_grace_period() {
    let mut stack = Stack::new().await;
    stack
        .hset(
            "quantum:position:ledger:SOLUSDT",
            &[
                ("position_amt", "3"),
                ("avg_entry_price", "150"),
                ("fills", "2"),
                ("last_update_ts", "1000"),
                ("version", "4"),
            ],
        )
        .await;
    let now = quantum_model::time::now_ms().to_string();
    stack
        .hset(
            "quantum:position:snapshot:SOLUSDT",
            &[
                ("position_amt", "2"),
                ("entry_price", "151"),
                ("mark_price", "152"),
                ("leverage", "3"),
                ("ts", now.as_str()),
            ],
        )
        .await;
    // Exchange truth for a symbol the ledger never saw, and a stale snapshot that must be ignored.
    stack
        .hset(
            "quantum:position:snapshot:AVAXUSDT",
            &[("position_amt", "-4"), ("entry_price", "30"), ("ts", now.as_str())],
        )
        .await;
    stack
        .hset(
            "quantum:position:ledger:LINKUSDT",
            &[
                ("position_amt", "1"),
                ("last_update_ts", now.as_str()),
                ("version", "1"),
            ],
        )
        .await;
    stack
        .hset(
            "quantum:position:snapshot:LINKUSDT",
            &[("position_amt", "9"), ("ts", "5")],
        )
        .await;

    stack.start(
        Service::Ledger,
        &[
            ("LEDGER_RECONCILE_INTERVAL_MS", "100"),
            ("LEDGER_RECONCILE_GRACE_MS", "300"),
        ],
    );
    stack
        .wait_log(
            Service::Ledger,
            "LEDGER_RECONCILE symbol=SOLUSDT ledger_amt=3 exchange_amt=2 drift=-1 action=observed",
        )
        .await;
    stack
        .wait_log(
            Service::Ledger,
            "LEDGER_RECONCILE symbol=SOLUSDT ledger_amt=3 exchange_amt=2 drift=-1 action=applied",
        )
        .await;
    stack
        .wait_log(
            Service::Ledger,
            "LEDGER_RECONCILE symbol=AVAXUSDT ledger_amt=none exchange_amt=-4 drift=-4 action=applied",
        )
        .await;

    let sol = stack.hash("quantum:position:ledger:SOLUSDT").await;
    let get = |k: &str| sol.get(k).map(String::as_str);
    assert_eq!(
        (get("position_amt"), get("avg_entry_price"), get("leverage")),
        (Some("2"), Some("151"), Some("3"))
    );
    assert_eq!(
        (get("source"), get("fills"), get("version")),
        (Some("reconcile"), Some("2"), Some("5"))
    );
    let avax = stack.hash("quantum:position:ledger:AVAXUSDT").await;
    assert_eq!(avax.get("side").map(String::as_str), Some("SHORT"));
    let link = stack.hash("quantum:position:ledger:LINKUSDT").await;
    assert_eq!(
        link.get("position_amt").map(String::as_str),
        Some("1"),
        "a stale snapshot never wins"
    );
    assert!(!stack.log(Service::Ledger).contains("symbol=LINKUSDT"));
}

#[tokio::test]
async fn a_symbol_first_filled_between_keyspace_walks_is_reconciled_without_one() {
    let mut stack = Stack::new().await;
    // One walk, at start, on an empty keyspace: ETH's ledger and snapshot come after it.
    stack.start(
        Service::Ledger,
        &[
            ("LEDGER_RECONCILE_INTERVAL_MS", "100"),
            ("LEDGER_RECONCILE_GRACE_MS", "300"),
            ("LEDGER_KEYSPACE_SCAN_MS", "3600000"),
        ],
    );
    stack.wait_log(Service::Ledger, "Consumer ready").await;
    let fill = [
        ("fill_id", "qib-00000000000000e1-1"),
        ("order_id", "qib-00000000000000e1"),
        ("plan_id", "00000000000000e1"),
        ("symbol", "ETHUSDT"),
        ("side", "BUY"),
        ("qty", "1"),
        ("price", "3000"),
        ("fee", "0"),
        ("leverage", "1"),
        ("ts", "1"),
        ("venue_seq", "1"),
    ];
    stack.xadd(LEDGER_COMMIT_STREAM, &fill).await;
    stack
        .wait_log(
            Service::Ledger,
            "LEDGER_COMMIT symbol=ETHUSDT fill_id=qib-00000000000000e1-1",
        )
        .await;
    // The venue says 3, the ledger (from the one fill) 1: the ledger noted ETH's keys as it
    // wrote them, so the next passes compare them without walking the keyspace again.
    let now = quantum_model::time::now_ms().to_string();
    stack
        .hset(
            "quantum:position:snapshot:ETHUSDT",
            &[("position_amt", "3"), ("entry_price", "3000"), ("ts", now.as_str())],
        )
        .await;
    stack
        .wait_log(
            Service::Ledger,
            "LEDGER_RECONCILE symbol=ETHUSDT ledger_amt=1 exchange_amt=3 drift=2 action=applied",
        )
        .await;
    let eth = stack.hash("quantum:position:ledger:ETHUSDT").await;
    assert_eq!(eth.get("position_amt").map(String::as_str), Some("3"));
    assert_eq!(eth.get("source").map(String::as_str), Some("reconcile"));
    // Observed, then applied past the 300 ms grace: passes 100 ms apart, one walk among them
    // (one SCAN of this small keyspace) beside the start-up's conversion of old records (one).
    let stats: String = fred::prelude::ClientLike::custom(
        &stack.client,
        fred::types::CustomCommand::new_static("INFO", fred::types::ClusterHash::FirstKey, false),
        vec!["commandstats"],
    )
    .await
    .unwrap();
    let scans: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_scan:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(scans <= 2, "the passes walked the keyspace {scans} times: {stats}");
}

#[tokio::test]
async fn reconcile_waits_while_the_symbol_has_work_in_flight_and_only_that_symbol() {
    let mut stack = Stack::new().await;
    let now = quantum_model::time::now_ms().to_string();
    for symbol in ["SOLUSDT", "ZECUSDT"] {
        stack
            .hset(
                &format!("quantum:position:snapshot:{symbol}"),
                &[("position_amt", "2"), ("ts", now.as_str())],
            )
            .await;
    }
    // SOL has a fill in flight (its reservation, as the executor leaves it until the ledger has
    // the fill); a plan for BTC waits for an executor nobody runs.
    stack
        .hset(
            "{quantum:position:ledger:SOLUSDT}:inflight",
            &[("qib-00000000000000aa-1", "side=BUY qty=2 notional_usd=300 ts=1")],
        )
        .await;
    stack.xadd(PLAN_STREAM, &plan(PLAN_ID, "EXECUTE", "BUY", &[])).await;
    let _: fred::types::Value =
        fred::prelude::StreamsInterface::xgroup_create(&stack.client, PLAN_STREAM, PLAN_GROUP, "0", true)
            .await
            .unwrap();
    stack.start(
        Service::Ledger,
        &[
            ("LEDGER_RECONCILE_INTERVAL_MS", "50"),
            ("LEDGER_RECONCILE_GRACE_MS", "100"),
            ("LEDGER_LOG_LEVEL", "debug"),
        ],
    );
    // ZEC has nothing in flight: the BTC plan does not hold it up.
    stack
        .wait_log(
            Service::Ledger,
            "LEDGER_RECONCILE symbol=ZECUSDT ledger_amt=none exchange_amt=2 drift=2 action=applied",
        )
        .await;
    stack
        .wait_log(
            Service::Ledger,
            "LEDGER_RECONCILE symbol=SOLUSDT deferred: its fills or plans are in flight",
        )
        .await;
    assert!(stack.hash("quantum:position:ledger:SOLUSDT").await.is_empty());

    // Once SOL's fill has landed (its reservation released), truth wins for SOL too.
    let _: i64 = fred::prelude::KeysInterface::del(&stack.client, "{quantum:position:ledger:SOLUSDT}:inflight")
        .await
        .unwrap();
    stack
        .wait_log(
            Service::Ledger,
            "LEDGER_RECONCILE symbol=SOLUSDT ledger_amt=none exchange_amt=2 drift=2 action=applied",
        )
        .await;
}

#[tokio::test]
async fn redis_settings_that_endanger_the_dedup_records_are_reported_at_start() {
    use quantumctl::redis_server::RedisServer;
    let evicting = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]).unwrap();
    let mut stack = Stack::with_redis(evicting).await;
    stack.start(Service::Ledger, &[]);
    stack.wait_log(Service::Ledger, "Consumer ready").await;
    let log = stack.log(Service::Ledger);
    assert!(
        log.contains("REDIS_SETTINGS Redis maxmemory-policy is allkeys-lru"),
        "{log}"
    );
    assert!(log.contains("REDIS_SETTINGS Redis AOF is off"), "{log}");

    let durable = RedisServer::start_with(&["--appendonly", "yes"]).unwrap();
    let mut stack = Stack::with_redis(durable).await;
    stack.start(Service::Ledger, &[]);
    stack.wait_log(Service::Ledger, "Consumer ready").await;
    assert!(!stack.log(Service::Ledger).contains("REDIS_SETTINGS"));
}
