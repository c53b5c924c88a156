//! Exchange truth from the account: positions, equity and marks written to the keys the paper
//! venue writes (so the bridge's gates and the ledger's reconcile work unchanged), and the
//! start-up check of the venue's open orders and recent trades against the order records.
//!
//! The start-up check follows Nautilus' reconciliation rule: the venue's report is
//! authoritative, and a report that cannot be read is not "nothing there". An order of ours the
//! venue holds, or traded, must have a record that explains it (SENDING: being resolved; FILLED
//! with that trade among its fills); otherwise the executor refuses to run, because placing more
//! orders on an account whose state it cannot explain risks doubling positions.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use fred::prelude::*;
use fred::types::Value;
use reqwest::Method;
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;

use quantum_model::contract::{snapshot_key, MARK_PRICE_KEY, PORTFOLIO_KEY};
use quantum_model::snapshot::Snapshot;
use quantum_model::time::now_ms;
use quantum_model::types::{OrderId, Symbol};
use quantum_runtime::cas::owned;

use super::api::{Account, OrderReply, PositionRisk, PremiumIndex, Trade};
use super::record::Record;
use super::resolve::OrderContext;
use super::{venue_error, BinanceVenue};
use crate::venue::{OrderOutcome, VenueError};

/// Writes the account's positions, equity and marks for the allowlisted symbols.
pub struct AccountSync {
    pub venue: BinanceVenue,
    pub symbols: Vec<Symbol>,
}

/// The net position of a symbol from its legs (one in one-way mode; LONG and SHORT in hedge
/// mode, SHORT amounts negative): amounts and unrealized PnL add up, the entry price is the
/// larger leg's.
pub fn net_snapshot(legs: &[&PositionRisk], ts: u64) -> Snapshot {
    let amt: Decimal = legs.iter().map(|l| l.position_amt).sum();
    let main = legs.iter().max_by_key(|l| l.position_amt.abs());
    Snapshot {
        position_amt: amt.normalize(),
        entry_price: if amt.is_zero() {
            Decimal::ZERO
        } else {
            main.map(|l| l.entry_price.normalize()).unwrap_or_default()
        },
        mark_price: main.map(|l| l.mark_price.normalize()).unwrap_or_default(),
        unrealized_pnl: legs.iter().map(|l| l.unrealized_profit).sum::<Decimal>().normalize(),
        leverage: main.map(|l| l.leverage).unwrap_or(Decimal::ONE),
        ts,
        venue_seq: None,
    }
}

impl AccountSync {
    /// One pass: `positionRisk`, `account` and `premiumIndex`, written in one pipeline.
    ///
    /// # Errors
    /// A call failed (nothing written) or Redis refused the writes.
    pub async fn sync_once(&self) -> Result<usize, VenueError> {
        let fapi = self.venue.fapi();
        let positions: Vec<PositionRisk> = fapi
            .signed(Method::GET, "/fapi/v2/positionRisk", &[])
            .await
            .map_err(venue_error)?;
        let account: Account = fapi
            .signed(Method::GET, "/fapi/v2/account", &[])
            .await
            .map_err(venue_error)?;
        let marks: Vec<PremiumIndex> = fapi.public("/fapi/v1/premiumIndex", &[]).await.map_err(venue_error)?;
        let now = now_ms();
        let mut legs: BTreeMap<Symbol, Vec<&PositionRisk>> = BTreeMap::new();
        for p in &positions {
            if let Ok(symbol) = Symbol::parse(&p.symbol) {
                if self.symbols.contains(&symbol) {
                    legs.entry(symbol).or_default().push(p);
                }
            }
        }
        let mark_of: HashMap<Symbol, Decimal> = marks
            .iter()
            .filter_map(|m| Symbol::parse(&m.symbol).ok().map(|s| (s, m.mark_price)))
            .filter(|(s, _)| self.symbols.contains(s))
            .collect();
        let leverage: HashMap<Symbol, Decimal> = legs
            .iter()
            .filter_map(|(s, l)| l.first().map(|p| (s.clone(), p.leverage)))
            .collect();
        self.venue.note_account(&mark_of, &leverage);
        let pipeline = self.venue.redis().pipeline();
        for (symbol, legs) in &legs {
            let snapshot = net_snapshot(legs, now);
            pipeline
                .hset::<(), _, _>(snapshot_key(symbol), owned(snapshot.to_fields()))
                .await?;
        }
        if !mark_of.is_empty() {
            let fields: Vec<(String, String)> = mark_of
                .iter()
                .map(|(s, m)| (s.to_string(), m.normalize().to_string()))
                .collect();
            pipeline.hset::<(), _, _>(MARK_PRICE_KEY, fields).await?;
        }
        pipeline
            .hset::<(), _, _>(
                PORTFOLIO_KEY,
                vec![
                    ("equity_usd", account.total_margin_balance.normalize().to_string()),
                    (
                        "wallet_balance_usd",
                        account.total_wallet_balance.normalize().to_string(),
                    ),
                    (
                        "available_balance_usd",
                        account.available_balance.normalize().to_string(),
                    ),
                ],
            )
            .await?;
        let _: Vec<Value> = pipeline.all().await?;
        Ok(legs.len())
    }

    /// Syncs every `every` until `shutdown`; a failed pass is logged and retried next period
    /// (the keys keep their last values and their `ts` tells how old they are).
    pub async fn run(self, every: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.sync_once().await {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("Account sync works again");
                }
                Ok(_) => {}
                Err(e) => {
                    metrics::counter!(quantum_model::metric_names::EXECUTOR_ACCOUNT_SYNC_FAILURES_TOTAL).increment(1);
                    if !failing {
                        tracing::warn!("Account sync failed: {e}; snapshots keep their last values");
                    }
                    failing = true;
                }
            }
        }
    }
}

/// Something the venue holds that the order records cannot explain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("{symbol}: open order {client_order_id} (venue order {order_id}) has no order being sent here")]
    OpenOrderUnexplained {
        symbol: String,
        client_order_id: String,
        order_id: u64,
    },
    #[error("{symbol}: trade {trade_id} of order {client_order_id} (venue order {order_id}), which was never recorded as sent")]
    TradeWithoutRecord {
        symbol: String,
        client_order_id: String,
        order_id: u64,
        trade_id: u64,
    },
    #[error("{symbol}: trade {trade_id} of order {client_order_id}, which is recorded {recorded}")]
    TradeNotRecorded {
        symbol: String,
        client_order_id: String,
        trade_id: u64,
        recorded: String,
    },
}

/// What a record says about one of the venue's trades of its order.
fn explain(record: &Record, trade: &Trade, symbol: &str, coid: &str) -> Option<Mismatch> {
    let not_recorded = |recorded: String| {
        Some(Mismatch::TradeNotRecorded {
            symbol: symbol.to_string(),
            client_order_id: coid.to_string(),
            trade_id: trade.id,
            recorded,
        })
    };
    match record {
        Record::Sending(_) => None,
        Record::Final(OrderOutcome::Filled { fills }) => {
            let id = trade.id.to_string();
            if fills.iter().any(|f| f.fill_id.as_str() == id) {
                None
            } else {
                not_recorded(format!("FILLED without this trade ({} fills)", fills.len()))
            }
        }
        Record::Final(OrderOutcome::Rejected { reason }) => not_recorded(format!("REJECTED ({reason})")),
        Record::Absent | Record::Idle { .. } => Some(Mismatch::TradeWithoutRecord {
            symbol: symbol.to_string(),
            client_order_id: coid.to_string(),
            order_id: trade.order_id,
            trade_id: trade.id,
        }),
    }
}

/// How many orders of recent trades the start-up check looks up at most (one request each).
const MAX_ORDER_LOOKUPS: usize = 500;

/// Checks the venue's open orders and its trades of the last `lookback_ms` on `symbols`
/// against the order records; returns what they cannot explain (empty: all explained).
/// Orders not named `qib-...` are someone else's: counted and logged, never refused.
///
/// # Errors
/// A report could not be read: the check cannot conclude, and the executor does not start.
pub async fn reconcile_on_start(
    venue: &BinanceVenue,
    symbols: &[Symbol],
    lookback_ms: u64,
) -> Result<Vec<Mismatch>, VenueError> {
    let mut tally = Tally::default();
    let open = check_open_orders(venue, &mut tally).await?;
    let since = venue.fapi().server_now_ms().saturating_sub(lookback_ms);
    for symbol in symbols {
        check_trades(venue, symbol, since, &mut tally).await?;
    }
    let line = format!(
        "Start-up check: {open} open orders, {} trades of {} orders in the last {} s; {} orders not ours",
        tally.trades,
        tally.lookups,
        lookback_ms / 1000,
        tally.foreign
    );
    if tally.foreign > 0 {
        tracing::warn!("{line} (someone else trades on this account: the ledger's reconcile will see it)");
    } else {
        tracing::info!("{line}");
    }
    Ok(tally.mismatches)
}

/// What the start-up check found so far.
#[derive(Default)]
struct Tally {
    mismatches: Vec<Mismatch>,
    /// Orders not named `qib-...`.
    foreign: usize,
    /// Orders looked up for their client id.
    lookups: usize,
    trades: usize,
}

/// Each open order of ours must be one being sent (SENDING). Returns how many are open.
async fn check_open_orders(venue: &BinanceVenue, tally: &mut Tally) -> Result<usize, VenueError> {
    let open: Vec<OrderReply> = venue
        .fapi()
        .signed(Method::GET, "/fapi/v1/openOrders", &[])
        .await
        .map_err(venue_error)?;
    for order in &open {
        let Some(ctx) = context(&order.client_order_id, &order.symbol) else {
            tally.foreign += 1;
            continue;
        };
        if !matches!(venue.read_record(&ctx).await?, Record::Sending(_)) {
            tally.mismatches.push(Mismatch::OpenOrderUnexplained {
                symbol: order.symbol.clone(),
                client_order_id: order.client_order_id.clone(),
                order_id: order.order_id,
            });
        }
    }
    Ok(open.len())
}

/// Each trade of `symbol` since `since` of an order of ours must be explained by its record.
async fn check_trades(venue: &BinanceVenue, symbol: &Symbol, since: u64, tally: &mut Tally) -> Result<(), VenueError> {
    let trades = trades_since(venue, symbol, since).await?;
    tally.trades += trades.len();
    let mut by_order: BTreeMap<u64, Vec<&Trade>> = BTreeMap::new();
    for t in &trades {
        by_order.entry(t.order_id).or_default().push(t);
    }
    // The newest orders first: they are the ones a crash may have left unexplained.
    for (order_id, trades) in by_order.iter().rev() {
        if tally.lookups == MAX_ORDER_LOOKUPS {
            tracing::warn!("Start-up check stopped after {MAX_ORDER_LOOKUPS} orders; older trades not checked");
            break;
        }
        tally.lookups += 1;
        let params = [("symbol", symbol.to_string()), ("orderId", order_id.to_string())];
        let order: OrderReply = venue
            .fapi()
            .signed(Method::GET, "/fapi/v1/order", &params)
            .await
            .map_err(venue_error)?;
        let Some(ctx) = context(&order.client_order_id, &order.symbol) else {
            tally.foreign += 1;
            continue;
        };
        let record = venue.read_record(&ctx).await?;
        tally.mismatches.extend(
            trades
                .iter()
                .filter_map(|t| explain(&record, t, symbol.as_str(), &order.client_order_id)),
        );
    }
    Ok(())
}

/// Pages of the account's trades a start-up check reads per symbol, at most.
const MAX_TRADE_PAGES: usize = 10;

/// The account's trades of `symbol` since `since` (ms), oldest first: the first page by
/// `startTime`, the next ones from the id after the last one seen (Binance returns the oldest
/// 1000 of a range), up to [`MAX_TRADE_PAGES`].
async fn trades_since(venue: &BinanceVenue, symbol: &Symbol, since: u64) -> Result<Vec<Trade>, VenueError> {
    let mut all: Vec<Trade> = Vec::new();
    for _ in 0..MAX_TRADE_PAGES {
        let from = match all.last() {
            None => ("startTime", since.to_string()),
            Some(last) => ("fromId", (last.id + 1).to_string()),
        };
        let params = [("symbol", symbol.to_string()), from, ("limit", "1000".to_string())];
        let page: Vec<Trade> = venue
            .fapi()
            .signed(Method::GET, "/fapi/v1/userTrades", &params)
            .await
            .map_err(venue_error)?;
        let full = page.len() == 1000;
        all.extend(page);
        if !full {
            return Ok(all);
        }
    }
    tracing::warn!(
        "Start-up check: more than {} trades of {symbol} in the lookback; the newest are not checked",
        MAX_TRADE_PAGES * 1000
    );
    Ok(all)
}

/// The context of one of our orders (`qib-<plan_id>`), or `None` for someone else's.
fn context(client_order_id: &str, symbol: &str) -> Option<OrderContext> {
    let symbol = Symbol::parse(symbol).ok()?;
    OrderContext::from_client_order_id(&OrderId::new(client_order_id), &symbol, Decimal::ONE).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn leg(side: &str, amt: &str, entry: &str, upnl: &str) -> PositionRisk {
        PositionRisk {
            symbol: "BTCUSDT".into(),
            position_amt: d(amt),
            entry_price: d(entry),
            mark_price: d("100"),
            unrealized_profit: d(upnl),
            leverage: d("3"),
            position_side: side.into(),
            update_time: 0,
        }
    }

    #[test]
    fn hedge_legs_net_into_one_snapshot() {
        let long = leg("LONG", "2", "90", "20");
        let short = leg("SHORT", "-0.5", "110", "5");
        let s = net_snapshot(&[&long, &short], 7);
        assert_eq!(
            (s.position_amt, s.entry_price, s.unrealized_pnl),
            (d("1.5"), d("90"), d("25"))
        );
        let flat = leg("BOTH", "0", "0", "0");
        let s = net_snapshot(&[&flat], 7);
        assert_eq!(
            (s.position_amt, s.entry_price, s.leverage),
            (Decimal::ZERO, Decimal::ZERO, d("3"))
        );
    }

    #[test]
    fn trades_are_explained_only_by_a_sending_or_filled_record() {
        let trade = Trade {
            id: 11,
            order_id: 3,
            symbol: "BTCUSDT".into(),
            side: "BUY".into(),
            price: d("1"),
            qty: d("1"),
            commission: d("0"),
            commission_asset: "USDT".into(),
            realized_pnl: d("0"),
            time: 1,
            position_side: "BOTH".into(),
        };
        let ctx = context("qib-00000000000000aa", "BTCUSDT").unwrap();
        let fill = super::super::resolve::fill_of(&ctx, &trade).unwrap();
        let sending = Record::Sending(super::super::record::Sending {
            sends: 1,
            timestamp: 1,
            recv_window_ms: 1,
            venue_order_id: None,
        });
        assert_eq!(explain(&sending, &trade, "BTCUSDT", "qib-00000000000000aa"), None);
        let filled = Record::Final(OrderOutcome::Filled { fills: vec![fill] });
        assert_eq!(explain(&filled, &trade, "BTCUSDT", "qib-00000000000000aa"), None);
        let other = Trade {
            id: 12,
            ..trade.clone()
        };
        assert!(matches!(
            explain(&filled, &other, "BTCUSDT", "qib-00000000000000aa"),
            Some(Mismatch::TradeNotRecorded { .. })
        ));
        let rejected = Record::Final(OrderOutcome::Rejected { reason: "x".into() });
        assert!(explain(&rejected, &trade, "BTCUSDT", "q")
            .unwrap()
            .to_string()
            .contains("recorded REJECTED"));
        assert!(matches!(
            explain(&Record::Absent, &trade, "BTCUSDT", "q"),
            Some(Mismatch::TradeWithoutRecord { .. })
        ));
        assert!(context("web_123", "BTCUSDT").is_none(), "not ours");
    }
}
