//! The live venue (`INTENT_EXECUTOR_MODE=live`) against the local fake Binance USD-M server
//! (`quantumctl fake-binance`): no order is ever placed twice for one plan, whatever the venue
//! does after accepting it (time out, 5xx, a duplicate-id refusal, 429 and 418 bursts, clock
//! skew, partial fills) and when the executor is SIGKILLed between the send and its record;
//! every fill reaches the ledger once under the venue's trade id; filters and position modes
//! are respected before anything is sent; an account the records cannot explain stops the
//! executor at start.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;

use quantum_model::contract::*;
use quantumctl::fake_binance::{FakeBinance, FakeConfig, Faults};
use quantumctl::stack::Service;
use support::{wait_for, Stack};

const KEY: &str = "test-api-key";
const SECRET: &str = "test-api-secret-never-logged";

/// A stack whose executor trades BTCUSDT and ETHUSDT on a fake Binance.
struct Live {
    stack: Stack,
    fake: FakeBinance,
    executor_env: Vec<(String, String)>,
}

impl Live {
    async fn new(configure: impl FnOnce(&mut FakeConfig)) -> Self {
        let mut stack = Stack::new().await;
        let marks: BTreeMap<String, Decimal> = [
            ("BTCUSDT".to_string(), Decimal::from(60_000)),
            ("ETHUSDT".to_string(), Decimal::from(3_000)),
        ]
        .into();
        let mut config = FakeConfig::new(KEY, SECRET, marks);
        configure(&mut config);
        let fake = FakeBinance::start(config, ([127, 0, 0, 1], 0).into())
            .await
            .expect("fake binance");
        let key_file = stack.dir.path().join("binance-api-key");
        let secret_file = stack.dir.path().join("binance-api-secret");
        std::fs::write(&key_file, KEY).unwrap();
        std::fs::write(&secret_file, SECRET).unwrap();
        stack.env.insert("SYMBOL_ALLOWLIST".into(), "BTCUSDT,ETHUSDT".into());
        stack.env.insert("STREAM_BLOCK_MS".into(), "100".into());
        let executor_env = [
            ("INTENT_EXECUTOR_MODE", "live".to_string()),
            ("BINANCE_FAPI_URL", fake.url()),
            ("BINANCE_API_KEY_FILE", key_file.display().to_string()),
            ("BINANCE_API_SECRET_FILE", secret_file.display().to_string()),
            // Short windows, so an unknown outcome is settled in about a second.
            ("BINANCE_RECV_WINDOW_MS", "1000".to_string()),
            ("BINANCE_UNKNOWN_MARGIN_MS", "500".to_string()),
            ("BINANCE_HTTP_TIMEOUT_MS", "500".to_string()),
            // 20 weight a pass: well inside the 2400 a minute.
            ("BINANCE_ACCOUNT_SYNC_MS", "1000".to_string()),
            ("STREAM_CLAIM_IDLE_MS", "500".to_string()),
            ("STREAM_CLAIM_INTERVAL_MS", "200".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Self {
            stack,
            fake,
            executor_env,
        }
    }

    fn start_executor(&mut self, failpoint: Option<&str>) {
        let env: Vec<(&str, &str)> = self
            .executor_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match failpoint {
            Some(point) => self.stack.start_with_failpoint(Service::Executor, &env, point),
            None => self.stack.start(Service::Executor, &env),
        }
    }

    /// Starts the executor with `failpoint` (a crash point), publishes one BTC BUY and waits
    /// until the executor died at the point, then clears its process.
    async fn crash_at(&mut self, failpoint: &str) {
        self.start_executor(Some(failpoint));
        self.stack
            .xadd(
                INTENT_STREAM,
                &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "0.01")],
            )
            .await;
        wait_for(&format!("the executor to crash at {failpoint}"), || {
            let exited = self.stack.process(Service::Executor).exited().is_some();
            async move { exited }
        })
        .await;
        self.stack.kill(Service::Executor);
    }

    async fn start_pipeline(&mut self) {
        self.stack.start(Service::Bridge, &[]);
        self.stack
            .start(Service::Ledger, &[("LEDGER_RECONCILE_INTERVAL_MS", "200")]);
        self.start_executor(None);
        self.stack.wait_log(Service::Executor, "Consumer ready").await;
    }

    /// Publishes an intent and waits for its plan's result; returns the result's fields.
    async fn trade(&self, symbol: &str, side: &str, qty: &str) -> BTreeMap<String, String> {
        let before = self.stack.xlen(RESULT_STREAM).await;
        self.stack
            .xadd(INTENT_STREAM, &[("symbol", symbol), ("side", side), ("qty", qty)])
            .await;
        wait_for(&format!("the result of {side} {qty} {symbol}"), || async {
            self.stack.xlen(RESULT_STREAM).await > before
        })
        .await;
        let results = self.stack.entries(RESULT_STREAM).await;
        results.last().unwrap().fields.iter().cloned().collect()
    }

    /// Ledger = the venue's position, every venue trade a fill once, no client id twice.
    async fn assert_venue_and_ledger_agree(&self) {
        for (coid, n) in self.fake.orders_per_client_id() {
            assert_eq!(n, 1, "the venue holds {n} orders under {coid}");
        }
        let trade_ids: BTreeSet<String> = self
            .fake
            .with_book(|b| b.trades.iter().map(|t| t.id.to_string()).collect());
        wait_for("every venue trade in ledger.commit", || async {
            let fills = self.stack.entries(LEDGER_COMMIT_STREAM).await;
            fills.len() == trade_ids.len()
        })
        .await;
        let fills = self.stack.entries(LEDGER_COMMIT_STREAM).await;
        let fill_ids: BTreeSet<String> = fills.iter().map(|f| f.get("fill_id").unwrap().to_string()).collect();
        assert_eq!(fill_ids, trade_ids, "each venue trade is one fill, under its trade id");
        assert!(fills.iter().all(|f| f.get("fee_asset") == Some("USDT")));
        for symbol in ["BTCUSDT", "ETHUSDT"] {
            let venue: Decimal = self.fake.with_book(|b| {
                b.legs
                    .iter()
                    .filter(|((s, _), _)| s == symbol)
                    .map(|(_, l)| l.amt)
                    .sum()
            });
            wait_for(&format!("the {symbol} ledger at the venue's {venue}"), || async {
                let ledger = self.stack.hash(&format!("quantum:position:ledger:{symbol}")).await;
                let amt = ledger.get("position_amt").map(|a| a.parse::<Decimal>().unwrap());
                amt.unwrap_or_default() == venue
            })
            .await;
        }
    }
}

#[tokio::test]
async fn no_order_twice_and_no_fill_lost_under_every_injected_fault() {
    let mut live = Live::new(|_| {}).await;
    live.start_pipeline().await;
    let faults = [
        Faults {
            accept_then_timeout: 1,
            reply_delay_ms: 1500,
            ..Faults::default()
        },
        Faults {
            accept_then_5xx: 1,
            ..Faults::default()
        },
        Faults {
            duplicate_client_id: 1,
            ..Faults::default()
        },
        Faults {
            throttle: 1,
            retry_after_secs: 1,
            ..Faults::default()
        },
        Faults {
            ban: 1,
            ban_secs: 1,
            ..Faults::default()
        },
        Faults {
            partial_fills: true,
            ..Faults::default()
        },
        Faults {
            clock_skew_ms: 3000,
            ..Faults::default()
        },
    ];
    for (i, fault) in faults.into_iter().enumerate() {
        live.fake.set_faults(fault.clone());
        let symbol = if i % 2 == 0 { "BTCUSDT" } else { "ETHUSDT" };
        let result = live.trade(symbol, "BUY", "0.01").await;
        assert_eq!(
            result.get("executed").map(String::as_str),
            Some("true"),
            "{fault:?}: {result:?}"
        );
    }
    // Closes go out reduce-only in one-way mode; the venue refuses one larger than the position.
    let result = live.trade("BTCUSDT", "SELL", "0.01").await;
    assert_eq!(result.get("executed").map(String::as_str), Some("true"), "{result:?}");
    live.assert_venue_and_ledger_agree().await;

    let counters = live.fake.counters();
    assert_eq!(counters.bad_signatures, 0);
    assert_eq!(
        counters.ignored_backoff, 0,
        "the executor honoured every Retry-After: {counters:?}"
    );
    assert!(counters.throttled >= 1 && counters.banned >= 1, "{counters:?}");
    assert!(counters.outside_recv_window >= 1, "the skew was met: {counters:?}");
    let log = live.stack.log(Service::Executor);
    for line in [
        "ORDER UNKNOWN",
        "ORDER RESOLVED",
        "outcome=NOT_PLACED",
        "BINANCE_CLOCK_SKEW",
        "BINANCE_THROTTLED",
        "BINANCE_BANNED",
    ] {
        assert!(log.contains(line), "{line} missing from the executor's log");
    }
    assert!(!log.contains(SECRET), "the API secret never reaches the log");
    // The account sync brings the snapshots up to the venue within its period.
    wait_for("the exactly-once invariants over the live stack", || async {
        quantumctl::invariants::check(&live.stack.client, None)
            .await
            .unwrap()
            .passed()
    })
    .await;
}

#[tokio::test]
async fn a_sigkill_between_the_send_and_its_record_places_nothing_twice() {
    let mut live = Live::new(|_| {}).await;
    live.stack.start(Service::Bridge, &[]);
    live.stack
        .start(Service::Ledger, &[("LEDGER_RECONCILE_INTERVAL_MS", "200")]);
    live.crash_at("executor::binance_after_send=return").await;
    assert_eq!(live.fake.counters().orders_placed, 1, "the venue took the order");
    let records = live.stack.client.clone();
    let keys = quantum_runtime::consumer::scan_keys(&records, "quantum:binance:order:qib-*")
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(
        live.stack.hash(&keys[0]).await.get("state").map(String::as_str),
        Some("SENDING")
    );

    // The restarted executor finds a trade of an order being sent (explained), reclaims the
    // plan and resolves the order from the venue: filled, never sent again.
    live.start_executor(None);
    wait_for("the plan's result", || async {
        live.stack.xlen(RESULT_STREAM).await == 1
    })
    .await;
    live.assert_venue_and_ledger_agree().await;
    assert_eq!(live.fake.counters().new_order_requests, 1, "sent once");
    assert_eq!(
        live.stack.hash(&keys[0]).await.get("state").map(String::as_str),
        Some("FILLED")
    );
    let log = live.stack.log(Service::Executor);
    assert!(
        log.contains("Start-up check: 0 open orders, 1 trades of 1 orders"),
        "{log}"
    );
}

#[tokio::test]
async fn an_order_recorded_but_never_sent_is_sent_once_its_window_has_passed() {
    let mut live = Live::new(|_| {}).await;
    live.stack.start(Service::Bridge, &[]);
    live.stack.start(Service::Ledger, &[]);
    live.crash_at("executor::binance_before_send=return").await;
    assert_eq!(live.fake.counters().new_order_requests, 0, "nothing reached the venue");
    // "Not found" is believed only after timestamp + recvWindow + margin; then the order is
    // sent, once, under the same client id.
    live.start_executor(None);
    wait_for("the plan's result", || async {
        live.stack.xlen(RESULT_STREAM).await == 1
    })
    .await;
    assert_eq!(live.stack.entries(RESULT_STREAM).await[0].get("executed"), Some("true"));
    assert_eq!(live.fake.counters().new_order_requests, 1);
    live.assert_venue_and_ledger_agree().await;
    let log = live.stack.log(Service::Executor);
    assert!(
        log.contains("the venue does not know the order yet; definitive in"),
        "{log}"
    );
    assert!(log.contains("outcome=NOT_PLACED"), "{log}");
}

#[tokio::test]
async fn the_sweep_settles_an_order_whose_plan_is_gone_without_sending_it() {
    let mut live = Live::new(|_| {}).await;
    live.stack.start(Service::Bridge, &[]);
    live.crash_at("executor::binance_before_send=return").await;
    let plan = live.stack.entries(PLAN_STREAM).await.remove(0);
    let _: i64 = fred::prelude::StreamsInterface::xdel(&live.stack.client, PLAN_STREAM, &plan.id)
        .await
        .unwrap();
    live.executor_env.extend(
        [
            ("INTENT_EXECUTOR_MAX_PLAN_AGE_MS", "1500"),
            ("INTENT_EXECUTOR_SWEEP_GRACE_MS", "2000"),
            ("INTENT_EXECUTOR_SWEEP_INTERVAL_MS", "200"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    live.start_executor(None);
    wait_for("the swept order's result", || async {
        live.stack.xlen(RESULT_STREAM).await == 1
    })
    .await;
    let result = live.stack.entries(RESULT_STREAM).await.remove(0);
    assert_eq!(result.get("executed"), Some("false"), "{result:?}");
    assert!(
        result
            .get("error")
            .unwrap_or_default()
            .contains("never reached the venue"),
        "{result:?}"
    );
    let coid = format!("qib-{}", plan.get("plan_id").unwrap());
    let record = live.stack.hash(&format!("quantum:binance:order:{coid}")).await;
    assert_eq!(
        record.get("state").map(String::as_str),
        Some("REJECTED"),
        "final: a late send finds it refused"
    );
    assert_eq!(live.fake.counters().new_order_requests, 0, "never sent");
}

#[tokio::test]
async fn filters_are_applied_before_sending_and_hedge_mode_uses_position_side() {
    let mut live = Live::new(|c| c.dual_side = true).await;
    live.start_pipeline().await;
    // Below the step after rounding: refused here, with the filter named, nothing sent.
    let result = live.trade("BTCUSDT", "BUY", "0.0004").await;
    assert_eq!(result.get("executed").map(String::as_str), Some("false"));
    assert!(result["error"].contains("MARKET_LOT_SIZE"), "{result:?}");
    assert_eq!(live.fake.counters().new_order_requests, 0);
    // Hedge mode: the BUY opens LONG, the SELL closes it, neither says reduceOnly.
    assert_eq!(live.trade("BTCUSDT", "BUY", "0.0129").await["executed"], "true");
    assert_eq!(live.trade("BTCUSDT", "SELL", "0.012").await["executed"], "true");
    let orders = live.fake.with_book(|b| b.orders.clone());
    assert_eq!(orders.len(), 2);
    assert_eq!(orders[0].orig_qty, Decimal::new(12, 3), "rounded down to the step");
    assert!(
        orders.iter().all(|o| o.position_side == "LONG" && !o.reduce_only),
        "{orders:?}"
    );
    live.assert_venue_and_ledger_agree().await;
}

#[tokio::test]
async fn an_account_the_records_cannot_explain_stops_the_executor() {
    let mut live = Live::new(|_| {}).await;
    // A trade of one of our client ids that no order record knows (say Redis lost it).
    live.fake.with_book(|b| {
        let params = [
            ("symbol", "BTCUSDT"),
            ("side", "BUY"),
            ("type", "MARKET"),
            ("quantity", "0.01"),
            ("newClientOrderId", "qib-00000000000000ff"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        b.place(&params, quantum_model::time::now_ms()).unwrap();
    });
    live.start_executor(None);
    wait_for("the executor to refuse to start", || {
        let exited = live.stack.process(Service::Executor).exited().is_some();
        async move { exited }
    })
    .await;
    let log = live.stack.log(Service::Executor);
    assert!(
        log.contains("RECONCILE_MISMATCH BTCUSDT: trade") && log.contains("qib-00000000000000ff"),
        "{log}"
    );
    assert!(log.contains("refusing to trade"), "{log}");
    assert_eq!(live.fake.counters().new_order_requests, 0);
}

#[tokio::test]
async fn bad_credentials_stop_the_executor_with_a_clear_error() {
    let mut live = Live::new(|c| c.api_key = "another-key".into()).await;
    live.executor_env.push(("BINANCE_ENV".into(), "mainnet".into()));
    live.start_executor(None);
    wait_for("the executor to stop", || {
        let exited = live.stack.process(Service::Executor).exited().is_some();
        async move { exited }
    })
    .await;
    let log = live.stack.log(Service::Executor);
    assert!(log.contains("venue refused the credentials: binance -2015"), "{log}");
    assert!(
        log.contains("!!! BINANCE MAINNET: this executor places REAL orders"),
        "{log}"
    );
    assert!(!log.contains(SECRET));

    // No key file and no systemd credential: named before anything is sent.
    live.executor_env.retain(|(k, _)| k != "BINANCE_API_KEY_FILE");
    live.start_executor(None);
    wait_for("the executor to stop", || {
        let exited = live.stack.process(Service::Executor).exited().is_some();
        async move { exited }
    })
    .await;
    assert!(live
        .stack
        .log(Service::Executor)
        .contains("BINANCE_API_KEY_FILE is not set"));
}

#[tokio::test]
async fn an_order_whose_sending_record_is_on_no_replica_is_not_sent() {
    let mut live = Live::new(|_| {}).await;
    let replica = live.stack.start_redis_replica().await;
    for (k, v) in [("REDIS_WAIT_REPLICAS", "1"), ("REDIS_WAIT_TIMEOUT_MS", "200")] {
        live.stack.env.insert(k.into(), v.into());
    }
    live.start_pipeline().await;
    // A failover that lost the SENDING record would forget the send: with the replica silent
    // nothing leaves, and the record says so (IDLE).
    replica.pause();
    live.stack
        .xadd(
            INTENT_STREAM,
            &[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "0.01")],
        )
        .await;
    let log = live
        .stack
        .wait_log(Service::Executor, "is on 0 of 1 replicas after 200 ms")
        .await;
    assert!(log.contains("not sent"), "{log}");
    assert_eq!(live.fake.counters().new_order_requests, 0, "nothing reached the venue");
    assert_eq!(live.stack.xlen(RESULT_STREAM).await, 0);
    let records = quantum_runtime::consumer::scan_keys(&live.stack.client, "quantum:binance:order:qib-*")
        .await
        .unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        live.stack.hash(&records[0]).await.get("state").map(String::as_str),
        Some("IDLE")
    );

    // The replica answers again: the order goes out once.
    replica.resume();
    wait_for("the plan's result", || async {
        live.stack.xlen(RESULT_STREAM).await == 1
    })
    .await;
    assert_eq!(live.stack.entries(RESULT_STREAM).await[0].get("executed"), Some("true"));
    assert_eq!(live.fake.counters().new_order_requests, 1, "sent once");
    live.assert_venue_and_ledger_agree().await;
}
