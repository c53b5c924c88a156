//! The paper venue takes a symbol's run of orders in one step: the same fills as placing them
//! one at a time, each order on the position the one before left, an order placed before
//! answered from its record, and a run replayed moving nothing.

mod support;

use std::collections::HashMap;

use fred::prelude::*;
use rust_decimal::Decimal;

use quantum_intent_executor::paper::{PaperConfig, PaperVenue};
use quantum_intent_executor::venue::{OrderOutcome, OrderRequest, Venue, VenueError};
use quantum_model::types::{OrderType, PlanId, Side, Symbol};
use support::Stack;

fn config() -> PaperConfig {
    PaperConfig {
        seed: 7,
        reference_prices: HashMap::new(),
        default_price: Decimal::from(100),
        slippage_bps: Decimal::from(2),
        fee_bps: Decimal::from(5),
        qty_step: Decimal::new(1, 3),
        price_tick: Decimal::new(1, 4),
        equity_usd: Decimal::from(100_000),
    }
}

fn order(n: u64, side: Side, qty: &str, limit: Option<&str>) -> OrderRequest {
    let plan_id = PlanId::parse(&format!("{n:016x}")).unwrap();
    OrderRequest {
        client_order_id: plan_id.client_order_id(),
        plan_id,
        symbol: Symbol::parse("BTCUSDT").unwrap(),
        side,
        order_type: if limit.is_some() {
            OrderType::Limit
        } else {
            OrderType::Market
        },
        qty: qty.parse().unwrap(),
        limit_price: limit.map(|p| p.parse().unwrap()),
        reduce_only: side == Side::Sell,
        leverage: Decimal::ONE,
    }
}

/// BUY 1, BUY 0.5, a limit BUY far below the market (rejected), SELL 1.5 (reduce-only: it
/// closes what the two BUYs opened).
fn run() -> Vec<OrderRequest> {
    vec![
        order(1, Side::Buy, "1", None),
        order(2, Side::Buy, "0.5", None),
        order(3, Side::Buy, "1", Some("1")),
        order(4, Side::Sell, "1.5", None),
    ]
}

/// Fills without their timestamps (the only field that depends on when they were made).
fn timeless(outcomes: &[OrderOutcome]) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| match o {
            OrderOutcome::Filled { fills } => fills
                .iter()
                .map(|f| {
                    format!(
                        "{} {} {} @ {} fee {} seq {:?}",
                        f.fill_id, f.side, f.qty, f.price, f.fee, f.venue_seq
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
            OrderOutcome::Rejected { reason } => format!("rejected: {reason}"),
        })
        .collect()
}

#[tokio::test]
async fn a_run_of_orders_fills_as_one_at_a_time_would_and_a_replay_moves_nothing() {
    let one_by_one = Stack::new().await;
    let venue = PaperVenue::new(one_by_one.client.clone(), config());
    let mut single = Vec::new();
    for o in run() {
        single.push(venue.execute(&o).await.unwrap());
    }

    let together = Stack::new().await;
    let venue = PaperVenue::new(together.client.clone(), config());
    let (outcomes, error) = venue.execute_in_order(&run()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(timeless(&outcomes), timeless(&single));
    let sold = &timeless(&outcomes)[3];
    assert!(
        sold.contains("SELL 1.5 @"),
        "the reduce-only SELL sees both BUYs: {sold}"
    );
    assert!(timeless(&outcomes)[2].starts_with("rejected"), "{:?}", outcomes[2]);

    let position = together.hash("quantum:paper:position:BTCUSDT").await;
    assert_eq!(position, one_by_one.hash("quantum:paper:position:BTCUSDT").await);
    assert_eq!(position["position_amt"], "0");
    assert_eq!(position["fill_seq"], "3");
    let snapshot = together.hash("quantum:position:snapshot:BTCUSDT").await;
    assert_eq!(snapshot["venue_seq"], "3", "the snapshot after the run's last fill");

    // The run again (a redelivery), with a new order at its end: the first four are answered
    // from their records, only the new one moves the position.
    let mut again = run();
    again.push(order(5, Side::Buy, "0.25", None));
    let (replayed, error) = venue.execute_in_order(&again).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(timeless(&replayed[..4]), timeless(&outcomes));
    let position = together.hash("quantum:paper:position:BTCUSDT").await;
    assert_eq!(position["position_amt"], "0.25");
    assert_eq!(position["fill_seq"], "4");
}

#[tokio::test]
async fn the_truth_a_crash_kept_from_being_published_is_published_when_the_order_is_asked_again() {
    let stack = Stack::new().await;
    let venue = PaperVenue::new(stack.client.clone(), config());
    let first = order(1, Side::Buy, "1", None);
    venue.execute(&first).await.unwrap();
    let snapshot_key = "quantum:position:snapshot:BTCUSDT";
    let published = stack.hash(snapshot_key).await;
    assert_eq!(
        (published["position_amt"].as_str(), published["venue_seq"].as_str()),
        ("1", "1")
    );

    // As if the executor died between the fill and its truth: the snapshot and mark are gone.
    for (how, ask) in [("retried", true), ("settled", false)] {
        let _: i64 = stack
            .client
            .del(vec![snapshot_key, "quantum:market:mark_price"])
            .await
            .unwrap();
        let outcome = if ask {
            venue.execute(&first).await.unwrap()
        } else {
            venue
                .settle(&first.client_order_id, &first.symbol, "stale")
                .await
                .unwrap()
        };
        assert!(matches!(outcome, OrderOutcome::Filled { .. }), "{how}: {outcome:?}");
        let again = stack.hash(snapshot_key).await;
        assert_eq!(
            (again["position_amt"].as_str(), again["venue_seq"].as_str()),
            ("1", "1"),
            "{how}"
        );
        let mark = stack.hash("quantum:market:mark_price").await;
        assert_eq!(mark.get("BTCUSDT"), Some(&published["mark_price"]), "{how}");
    }
    let position = stack.hash("quantum:paper:position:BTCUSDT").await;
    assert_eq!(
        (position["position_amt"].as_str(), position["fill_seq"].as_str()),
        ("1", "1"),
        "one fill"
    );

    // A newer snapshot already there (another executor's, published first) is kept.
    stack
        .hset(snapshot_key, &[("venue_seq", "9"), ("position_amt", "7")])
        .await;
    venue.execute(&first).await.unwrap();
    let kept = stack.hash(snapshot_key).await;
    assert_eq!((kept["position_amt"].as_str(), kept["venue_seq"].as_str()), ("7", "9"));
}

#[tokio::test]
async fn a_run_of_orders_fills_on_a_redis_cluster_as_on_one_server() {
    let one_server = Stack::new().await;
    let venue = PaperVenue::new(one_server.client.clone(), config());
    let (expected, _) = venue.execute_in_order(&run()).await;

    let cluster = quantumctl::redis_server::RedisCluster::start(3).expect("start a redis cluster");
    let stack = Stack::on_cluster(cluster).await;
    let venue = PaperVenue::new(stack.client.clone(), config());
    let (outcomes, error) = venue.execute_in_order(&run()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(timeless(&outcomes), timeless(&expected));
    let records = quantum_runtime::consumer::scan_keys(&stack.client, "{quantum:paper:position:BTCUSDT}:order:*")
        .await
        .unwrap();
    assert_eq!(
        records.len(),
        4,
        "one record per order, in the position's slot: {records:?}"
    );
    let snapshot = stack.hash("quantum:position:snapshot:BTCUSDT").await;
    assert_eq!(snapshot["venue_seq"], "3");
}

#[tokio::test]
async fn two_venues_racing_on_one_symbol_leave_the_truth_of_its_last_commit() {
    let stack = Stack::new().await;
    // Two clients: two executors' connections, so their commits and truths interleave in Redis.
    let mut venues = Vec::new();
    for _ in 0..2 {
        let client = quantum_runtime::config::RedisArgs::from_url(&stack.url())
            .connect(&tokio_util::sync::CancellationToken::new())
            .await
            .unwrap();
        venues.push(PaperVenue::new(client, config()));
    }
    let orders =
        |first: u64| -> Vec<OrderRequest> { (first..first + 40).map(|n| order(n, Side::Buy, "0.01", None)).collect() };
    let (a, b) = (orders(100), orders(200));
    let race = |venue: &PaperVenue, orders: Vec<OrderRequest>| {
        let venue = venue.clone();
        async move {
            for o in orders {
                // Starved by the other: as the executor does, the order is asked again.
                while let Err(e) = venue.execute(&o).await {
                    assert!(matches!(e, VenueError::Contended(_)), "{e}");
                }
            }
        }
    };
    tokio::join!(race(&venues[0], a), race(&venues[1], b));

    let position = stack.hash("quantum:paper:position:BTCUSDT").await;
    assert_eq!(position["fill_seq"], "80", "every order filled once");
    // A truth of a commit another overtook would put an older mark back after the newer one.
    let marks = stack.hash("quantum:market:mark_price").await;
    assert_eq!(marks.get("BTCUSDT"), Some(&position["mark_price"]), "{position:?}");
    let snapshot = stack.hash("quantum:position:snapshot:BTCUSDT").await;
    assert_eq!(
        (snapshot["venue_seq"].as_str(), snapshot["position_amt"].as_str()),
        ("80", position["position_amt"].as_str()),
        "{snapshot:?}"
    );
}
