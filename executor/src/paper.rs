//! The paper venue: a deterministic exchange simulator whose state lives in Redis, so a
//! restart loses nothing and a retried order returns its first outcome.
//!
//! Prices follow a seeded walk per symbol that advances one step per order; fills happen at
//! mark ± slippage with a taker fee. After every fill the venue publishes exchange truth to
//! `quantum:position:snapshot:<SYMBOL>` and the mark to `quantum:market:mark_price`.
//!
//! Invariants, on one node and on a cluster alike:
//! - a symbol's venue state and its order records share one slot (the records are tagged with
//!   the position key, `{quantum:paper:position:<SYM>}:order:<id>`), so one compare-and-set
//!   commits a run of orders, and an order's record exists exactly when the position moved by it;
//! - the truth (snapshot and mark) is published after that commit, and only of a commit that
//!   applied: on one server in the commit's round trip, by a script that writes it only while
//!   the position is still at the commit's version; on a cluster (other slots) in a step of its
//!   own once the commit is known applied. A snapshot only replaces an older one (lower
//!   `venue_seq`), so two executors publishing out of order leave the newer, and an order
//!   retried after a crash before its truth was out publishes it again from the stored state.

use std::collections::HashMap;

use fred::prelude::*;
use fred::types::Value;
use rust_decimal::{Decimal, RoundingStrategy};
use sha2::{Digest, Sha256};

use quantum_model::contract::{snapshot_key, MARK_PRICE_KEY, PORTFOLIO_KEY};
use quantum_model::fields::Fields;
use quantum_model::fill::Fill;
use quantum_model::position::Position;
use quantum_model::snapshot::Snapshot;
use quantum_model::stream_entry::StreamEntry;
use quantum_model::time::now_ms;
use quantum_model::types::{parse_decimal, FillId, OrderId, OrderType, ParseError, Side, Symbol};
use quantum_runtime::cas::{owned, queue_eval, CasOp, CasOutcome, CasWrite};
use quantum_runtime::reply::hash_pairs;

use crate::venue::{OrderOutcome, OrderRequest, Venue, VenueError};

/// Paper venue settings.
#[derive(Debug, Clone)]
pub struct PaperConfig {
    pub seed: u64,
    /// Starting mark price per symbol.
    pub reference_prices: HashMap<Symbol, Decimal>,
    /// Starting mark for symbols without a reference price.
    pub default_price: Decimal,
    pub slippage_bps: Decimal,
    pub fee_bps: Decimal,
    /// Quantities are rounded down to a multiple of this.
    pub qty_step: Decimal,
    /// Prices are rounded to a multiple of this.
    pub price_tick: Decimal,
    /// Account equity published to `quantum:state:portfolio` when none is there yet.
    pub equity_usd: Decimal,
}

impl PaperConfig {
    /// Where a symbol's mark starts: its reference price, else the default price.
    pub fn reference_price(&self, symbol: &Symbol) -> Decimal {
        self.reference_prices.get(symbol).copied().unwrap_or(self.default_price)
    }
}

/// The default reference prices (USD) of the demo's symbols.
pub const DEFAULT_REFERENCE_PRICES: &str = "BTCUSDT=65000,ETHUSDT=3200,SOLUSDT=150,ZECUSDT=40,WAVESUSDT=1.5,\
BNBUSDT=580,XRPUSDT=0.6,ADAUSDT=0.45,DOGEUSDT=0.15,LINKUSDT=15,AVAXUSDT=30";

/// Parses `SYMBOL=price,SYMBOL=price`.
///
/// # Errors
/// An item that is not `SYMBOL=price` with a valid symbol and a positive price.
pub fn parse_reference_prices(raw: &str) -> Result<HashMap<Symbol, Decimal>, String> {
    let mut out = HashMap::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (sym, price) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not SYMBOL=price"))?;
        let symbol = Symbol::parse(sym).map_err(|e| e.to_string())?;
        let price = parse_decimal("price", price).map_err(|e| e.to_string())?;
        if price <= Decimal::ZERO {
            return Err(format!("reference price of {symbol} must be positive"));
        }
        out.insert(symbol, price);
    }
    Ok(out)
}

fn position_key(symbol: &Symbol) -> String {
    format!("quantum:paper:position:{symbol}")
}

/// An order's record, in its symbol's slot.
fn paper_order_key(symbol: &Symbol, client_order_id: &OrderId) -> String {
    format!("{{{}}}:order:{client_order_id}", position_key(symbol))
}

/// The venue's truth about a symbol: writes the snapshot under KEYS[1] (ARGV[4]: its
/// venue_seq, '' for no snapshot; ARGV[5..]: its field/value pairs) unless the stored one is
/// newer (a higher `venue_seq` already there wins). On one server it is also given the marks
/// (KEYS[2]: ARGV[3] as the mark of symbol ARGV[2]) and the position it is the truth of
/// (KEYS[3]), and writes nothing unless the position's `version` is still ARGV[1]: the truth of
/// a commit goes in the commit's round trip, and is never the truth of a commit that lost or
/// was overtaken. On a cluster those keys are in other slots: it is given KEYS[1] alone, after
/// the commit is known applied, and the mark is an `HSET` of its own.
const TRUTH_SCRIPT: &str = r#"
if KEYS[3] and (redis.call('HGET', KEYS[3], 'version') or '0') ~= ARGV[1] then return 0 end
if KEYS[2] then redis.call('HSET', KEYS[2], ARGV[2], ARGV[3]) end
if ARGV[4] ~= '' then
  local stored = tonumber(redis.call('HGET', KEYS[1], 'venue_seq') or '')
  if not (stored and stored > tonumber(ARGV[4])) then redis.call('HSET', KEYS[1], unpack(ARGV, 5)) end
end
return 1
"#;

/// Rounds `value` down to a multiple of `step` (exact decimal arithmetic).
pub fn floor_to_step(value: Decimal, step: Decimal) -> Decimal {
    ((value / step).floor() * step).normalize()
}

/// Rounds `value` to the nearest multiple of `tick`, never below one tick.
pub fn round_to_tick(value: Decimal, tick: Decimal) -> Decimal {
    let ticks = (value / tick).round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
    (ticks.max(Decimal::ONE) * tick).normalize()
}

/// The next mark of the seeded walk: a step of -20..=20 bps chosen by sha256(seed|symbol|tick).
pub fn walk(seed: u64, symbol: &Symbol, tick: u64, previous: Decimal, price_tick: Decimal) -> Decimal {
    let digest = Sha256::digest(format!("{seed}|{symbol}|{tick}").as_bytes());
    let mut word = [0u8; 8];
    word.copy_from_slice(&digest[..8]);
    let bps = (u64::from_le_bytes(word) % 41) as i64 - 20;
    round_to_tick(previous * (Decimal::ONE + Decimal::new(bps, 4)), price_tick)
}

/// Seeds the venue with an existing position (operators migrating an account, the demo).
/// Refuses to overwrite a position that has already traded.
///
/// # Errors
/// Redis refused the write, or the symbol's paper position exists already.
pub async fn seed_position(client: &Client, symbol: &Symbol, amt: Decimal, entry_price: Decimal) -> Result<(), Error> {
    let state = PaperPosition {
        position: Position {
            amt,
            avg_entry: entry_price,
            realized_pnl: Decimal::ZERO,
        },
        mark: Some(entry_price),
        tick: 0,
        leverage: Decimal::ONE,
        version: 1,
        fill_seq: 0,
    };
    let write = CasWrite {
        expected_version: 0,
        guards: Vec::new(),
        writes: vec![(position_key(symbol), CasOp::Hash(state.to_fields()))],
    };
    match write.apply(client).await? {
        CasOutcome::Applied => publish_truth(client, symbol, &state, true).await,
        _ => Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("paper position of {symbol} exists already"),
        )),
    }
}

/// Publishes the venue's truth about `symbol` from its committed state: the mark and, with
/// `with_snapshot`, the position snapshot (kept when a newer one is there already).
async fn publish_truth(
    client: &Client,
    symbol: &Symbol,
    state: &PaperPosition,
    with_snapshot: bool,
) -> Result<(), Error> {
    let pipeline = client.pipeline();
    queue_truth(&pipeline, symbol, state, with_snapshot, None).await?;
    let _: Vec<Value> = pipeline.all().await?;
    Ok(())
}

/// Queues [`publish_truth`]'s writes; with `if_current` (one server only), in one script that
/// writes them only while `symbol`'s position is still at that version ([`TRUTH_SCRIPT`]).
async fn queue_truth(
    pipeline: &fred::clients::Pipeline<Client>,
    symbol: &Symbol,
    state: &PaperPosition,
    with_snapshot: bool,
    if_current: Option<u64>,
) -> Result<(), Error> {
    let mark = state.mark.unwrap_or_default();
    let mut args = vec![
        if_current.map(|v| v.to_string()).unwrap_or_default(),
        symbol.to_string(),
        mark.to_string(),
    ];
    if with_snapshot {
        let snapshot = Snapshot {
            position_amt: state.position.amt,
            entry_price: state.position.avg_entry,
            mark_price: mark,
            unrealized_pnl: state.position.unrealized(mark).round_dp(8).normalize(),
            leverage: state.leverage,
            ts: now_ms(),
            venue_seq: Some(state.fill_seq),
        };
        args.push(state.fill_seq.to_string());
        for (field, value) in snapshot.to_fields() {
            args.extend([field.to_string(), value]);
        }
    } else {
        args.push(String::new());
    }
    if if_current.is_some() {
        let keys = vec![snapshot_key(symbol), MARK_PRICE_KEY.to_string(), position_key(symbol)];
        return queue_eval(pipeline, TRUTH_SCRIPT, keys, args).await;
    }
    if with_snapshot {
        queue_eval(pipeline, TRUTH_SCRIPT, vec![snapshot_key(symbol)], args).await?;
    }
    pipeline
        .hset::<(), _, _>(MARK_PRICE_KEY, (symbol.as_str(), mark.to_string()))
        .await
}

/// The venue's state for one symbol.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaperPosition {
    pub position: Position,
    /// The last mark (none before the first order).
    pub mark: Option<Decimal>,
    /// Orders seen: the price walk's step.
    pub tick: u64,
    pub leverage: Decimal,
    /// Bumped by every order: the compare-and-set guard.
    pub version: u64,
    /// Fills made so far: the last fill's venue sequence number.
    pub fill_seq: u64,
}

impl PaperPosition {
    fn from_hash(symbol: &Symbol, pairs: &[(String, String)]) -> Result<Self, VenueError> {
        let corrupt = |e: ParseError| VenueError::Corrupt {
            symbol: symbol.clone(),
            detail: e.to_string(),
        };
        let dec = |name: &'static str| pairs.decimal(name).map_err(corrupt);
        let int = |name: &'static str| pairs.integer(name).map(Option::unwrap_or_default).map_err(corrupt);
        Ok(Self {
            position: Position {
                amt: dec("position_amt")?.unwrap_or_default(),
                avg_entry: dec("entry_price")?.unwrap_or_default(),
                realized_pnl: dec("realized_pnl")?.unwrap_or_default(),
            },
            mark: dec("mark_price")?,
            tick: int("tick")?,
            leverage: dec("leverage")?.unwrap_or(Decimal::ONE),
            version: int("version")?,
            fill_seq: int("fill_seq")?,
        })
    }

    fn to_fields(&self) -> Vec<(String, String)> {
        owned(vec![
            ("position_amt", self.position.amt.normalize().to_string()),
            ("entry_price", self.position.avg_entry.normalize().to_string()),
            ("realized_pnl", self.position.realized_pnl.normalize().to_string()),
            ("mark_price", self.mark.unwrap_or_default().to_string()),
            ("tick", self.tick.to_string()),
            ("leverage", self.leverage.to_string()),
            ("version", self.version.to_string()),
            ("fill_seq", self.fill_seq.to_string()),
        ])
    }
}

/// Decides the outcome of a new order against the venue's state of its symbol, at `now_ms`:
/// the mark takes one step of its walk, the quantity is rounded down to the step, a
/// reduce-only order that would open or increase a position is rejected, as is a LIMIT order
/// not marketable at the slipped mark (immediate-or-cancel); otherwise it fills at once, in
/// full, at the slipped mark rounded to the tick, less the fee, as the symbol's next fill in the
/// venue's sequence. Pure: same inputs, same outcome.
pub fn simulate(
    cfg: &PaperConfig,
    order: &OrderRequest,
    state: &PaperPosition,
    now_ms: u64,
) -> (OrderOutcome, PaperPosition) {
    let mut next = state.clone();
    next.tick += 1;
    let previous = state.mark.unwrap_or_else(|| cfg.reference_price(&order.symbol));
    let mark = walk(cfg.seed, &order.symbol, next.tick, previous, cfg.price_tick);
    next.mark = Some(mark);
    next.version += 1;

    let qty = floor_to_step(order.qty, cfg.qty_step);
    if qty.is_zero() {
        let reason = format!("quantity {} is below the step size {}", order.qty, cfg.qty_step);
        return (OrderOutcome::Rejected { reason }, next);
    }
    let amt = state.position.amt;
    let reduces = (order.side == Side::Sell && amt > Decimal::ZERO) || (order.side == Side::Buy && amt < Decimal::ZERO);
    if order.reduce_only && (!reduces || qty > amt.abs()) {
        return (
            OrderOutcome::Rejected {
                reason: "ReduceOnly Order is rejected: it would open or increase a position".into(),
            },
            next,
        );
    }
    let slip = Decimal::ONE + order.side.sign() * cfg.slippage_bps / Decimal::from(10_000);
    let price = round_to_tick(mark * slip, cfg.price_tick);
    if order.order_type == OrderType::Limit {
        let limit = order.limit_price.unwrap_or_default();
        let marketable = match order.side {
            Side::Buy => limit >= price,
            Side::Sell => limit <= price,
        };
        if !marketable {
            let reason = format!("limit {limit} not marketable at {price} (immediate-or-cancel)");
            return (OrderOutcome::Rejected { reason }, next);
        }
    }
    let fee = (qty * price * cfg.fee_bps / Decimal::from(10_000))
        .round_dp(8)
        .normalize();
    next.position.apply(order.side, qty, price, fee);
    next.leverage = order.leverage;
    next.fill_seq += 1;
    let fill = Fill {
        fill_id: FillId::new(format!("{}-1", order.client_order_id)),
        order_id: order.client_order_id.clone(),
        plan_id: order.plan_id.clone(),
        symbol: order.symbol.clone(),
        side: order.side,
        qty,
        price,
        fee,
        fee_asset: None,
        leverage: order.leverage,
        ts: now_ms,
        venue_seq: Some(next.fill_seq),
    };
    (OrderOutcome::Filled { fills: vec![fill] }, next)
}

/// The stored order under KEYS[1]; when there is none, stores it refused with reason ARGV[1]
/// (the order's `execute` then returns that refusal) and returns that.
const SETTLE_SCRIPT: &str = r#"
local stored = redis.call('HGETALL', KEYS[1])
if #stored > 0 then return stored end
redis.call('HSET', KEYS[1], 'status', 'REJECTED', 'reason', ARGV[1])
return {'status', 'REJECTED', 'reason', ARGV[1]}
"#;

/// The paper venue.
#[derive(Clone)]
pub struct PaperVenue {
    client: Client,
    config: PaperConfig,
}

impl PaperVenue {
    /// A venue storing its state through `client`.
    pub fn new(client: Client, config: PaperConfig) -> Self {
        Self { client, config }
    }

    /// Publishes the current marks of the reference symbols (so the bridge can size
    /// `position_usd` intents before any fill) and the account equity if none is set.
    ///
    /// # Errors
    /// Redis refused a read or a write.
    pub async fn publish_market(&self) -> Result<(), Error> {
        let symbols: Vec<&Symbol> = self.config.reference_prices.keys().collect();
        let pipeline = self.client.pipeline();
        for symbol in &symbols {
            pipeline.hget::<(), _, _>(position_key(symbol), "mark_price").await?;
        }
        let marks: Vec<Value> = if symbols.is_empty() {
            Vec::new()
        } else {
            pipeline.all().await?
        };
        let trx = self.client.pipeline();
        for (symbol, mark) in symbols.iter().zip(marks) {
            if mark.is_null() {
                trx.hset::<(), _, _>(
                    MARK_PRICE_KEY,
                    (symbol.as_str(), self.config.reference_price(symbol).to_string()),
                )
                .await?;
            }
        }
        trx.hsetnx::<(), _, _, _>(PORTFOLIO_KEY, "equity_usd", self.config.equity_usd.to_string())
            .await?;
        let _: Vec<Value> = trx.all().await?;
        Ok(())
    }

    fn stored_outcome(pairs: Vec<(String, String)>, symbol: &Symbol) -> Result<OrderOutcome, VenueError> {
        let entry = StreamEntry {
            id: String::new(),
            fields: pairs,
            binary_field: None,
        };
        match entry.get("status") {
            Some("FILLED") => Fill::parse(&entry)
                .map(|fill| OrderOutcome::Filled { fills: vec![fill] })
                .map_err(|e| VenueError::Corrupt {
                    symbol: symbol.clone(),
                    detail: format!("stored order: {e}"),
                }),
            _ => Ok(OrderOutcome::Rejected {
                reason: entry.get("reason").unwrap_or("rejected").to_string(),
            }),
        }
    }
}

impl Venue for PaperVenue {
    fn name(&self) -> &'static str {
        "paper"
    }

    async fn settle(
        &self,
        client_order_id: &OrderId,
        symbol: &Symbol,
        reason: &str,
    ) -> Result<OrderOutcome, VenueError> {
        let pipeline = self.client.pipeline();
        queue_eval(
            &pipeline,
            SETTLE_SCRIPT,
            vec![paper_order_key(symbol, client_order_id)],
            vec![reason.to_string()],
        )
        .await?;
        pipeline.hgetall::<(), _>(position_key(symbol)).await?;
        let mut replies = pipeline.all::<Vec<Value>>().await?.into_iter();
        let stored = Self::stored_outcome(hash_pairs(replies.next().unwrap_or(Value::Null)), symbol)?;
        if matches!(stored, OrderOutcome::Filled { .. }) {
            // Placed before a crash that may have come before its truth was published.
            let state = PaperPosition::from_hash(symbol, &hash_pairs(replies.next().unwrap_or(Value::Null)))?;
            publish_truth(&self.client, symbol, &state, true).await?;
        }
        Ok(stored)
    }

    async fn execute(&self, order: &OrderRequest) -> Result<OrderOutcome, VenueError> {
        let (mut outcomes, error) = self.execute_in_order(std::slice::from_ref(order)).await;
        match (outcomes.pop(), error) {
            (Some(outcome), None) => Ok(outcome),
            (_, Some(e)) => Err(e),
            (None, None) => Err(VenueError::Contended(order.symbol.clone())),
        }
    }

    /// The symbol's orders simulated in sequence from one read of its state, and committed in
    /// one compare-and-set: on its version, and on none of the new order records existing yet
    /// (another executor that moved the symbol or placed one of these orders meanwhile makes
    /// it read again). An order placed before returns its stored outcome and moves nothing.
    async fn execute_in_order(&self, orders: &[OrderRequest]) -> (Vec<OrderOutcome>, Option<VenueError>) {
        let Some(first) = orders.first() else {
            return (Vec::new(), None);
        };
        for _ in 0..32 {
            match self.try_in_order(&first.symbol, orders).await {
                Ok(Some(done)) => return done,
                Ok(None) => continue,
                Err(e) => return (Vec::new(), Some(e)),
            }
        }
        (Vec::new(), Some(VenueError::Contended(first.symbol.clone())))
    }
}

/// What [`PaperVenue::try_in_order`] ends with: the outcomes, in order, up to the first order
/// whose stored record is unreadable (that error), or all of them.
type InOrder = (Vec<OrderOutcome>, Option<VenueError>);

impl PaperVenue {
    /// One attempt at [`Venue::execute_in_order`]; `None` when the compare-and-set lost.
    async fn try_in_order(&self, symbol: &Symbol, orders: &[OrderRequest]) -> Result<Option<InOrder>, VenueError> {
        let pipeline = self.client.pipeline();
        for order in orders {
            pipeline
                .hgetall::<(), _>(paper_order_key(symbol, &order.client_order_id))
                .await?;
        }
        pipeline.hgetall::<(), _>(position_key(symbol)).await?;
        let mut replies: Vec<Value> = pipeline.all().await?;
        let initial = PaperPosition::from_hash(symbol, &hash_pairs(replies.pop().unwrap_or(Value::Null)))?;

        let mut state = initial.clone();
        let (mut outcomes, mut records, mut stopped) = (Vec::with_capacity(orders.len()), Vec::new(), None);
        // Whether an order of this attempt filled: only then is there a new snapshot to write.
        let mut filled = false;
        for (order, stored) in orders.iter().zip(replies) {
            let stored = hash_pairs(stored);
            if !stored.is_empty() {
                match Self::stored_outcome(stored, symbol) {
                    Ok(outcome) => outcomes.push(outcome),
                    Err(e) => {
                        stopped = Some(e);
                        break;
                    }
                }
                continue;
            }
            let (outcome, next) = simulate(&self.config, order, &state, now_ms());
            records.push((paper_order_key(symbol, &order.client_order_id), order_record(&outcome)));
            filled |= matches!(outcome, OrderOutcome::Filled { .. });
            state = next;
            outcomes.push(outcome);
        }
        if records.is_empty() {
            // Every order was placed before: a crash may have come between that commit and its
            // truth, which is published again from the stored state.
            if initial.version > 0 {
                publish_truth(&self.client, symbol, &initial, initial.fill_seq > 0).await?;
            }
            return Ok(Some((outcomes, stopped)));
        }
        // On one server the truth goes in the commit's round trip, written only if the commit
        // applied and is still the symbol's state; on a cluster it is a step of its own, after.
        let truth_with_commit = !self.client.is_clustered();
        let pipeline = self.client.pipeline();
        commit_write(symbol, &initial, &state, records).queue(&pipeline).await?;
        if truth_with_commit {
            queue_truth(&pipeline, symbol, &state, filled, Some(state.version)).await?;
        }
        let replies: Vec<Value> = pipeline.all().await?;
        match CasOutcome::from_reply(replies.first().unwrap_or(&Value::Null))? {
            CasOutcome::Applied => {
                if !truth_with_commit {
                    fail::fail_point!("executor::paper_before_truth", |_| std::process::abort());
                    publish_truth(&self.client, symbol, &state, filled).await?;
                }
                Ok(Some((outcomes, stopped)))
            }
            CasOutcome::VersionConflict | CasOutcome::GuardExists => Ok(None),
        }
    }
}

/// The venue's state after a run of orders, in one slot: the position and each new order's
/// record, which must not exist yet.
fn commit_write(
    symbol: &Symbol,
    initial: &PaperPosition,
    next: &PaperPosition,
    records: Vec<(String, Vec<(String, String)>)>,
) -> CasWrite {
    let mut writes = vec![(position_key(symbol), CasOp::Hash(next.to_fields()))];
    writes.extend(records.into_iter().map(|(key, record)| (key, CasOp::Hash(record))));
    CasWrite {
        expected_version: initial.version,
        guards: (1..writes.len()).collect(),
        writes,
    }
}

/// An order's stored record: its status and its fill, or its refusal.
fn order_record(outcome: &OrderOutcome) -> Vec<(String, String)> {
    match outcome {
        OrderOutcome::Filled { fills } => {
            let mut record = vec![("status".to_string(), "FILLED".to_string())];
            record.extend(fills.first().map(|f| owned(f.to_fields())).unwrap_or_default());
            record
        }
        OrderOutcome::Rejected { reason } => vec![
            ("status".to_string(), "REJECTED".to_string()),
            ("reason".to_string(), reason.clone()),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn config() -> PaperConfig {
        PaperConfig {
            seed: 42,
            reference_prices: HashMap::new(),
            default_price: d("100"),
            slippage_bps: d("0"),
            fee_bps: d("10"),
            qty_step: d("0.001"),
            price_tick: d("0.01"),
            equity_usd: d("100000"),
        }
    }

    fn order(side: Side, qty: &str, reduce_only: bool, limit: Option<&str>) -> OrderRequest {
        let plan_id = quantum_model::types::PlanId::parse("00000000000000aa").unwrap();
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
            qty: d(qty),
            limit_price: limit.map(d),
            reduce_only,
            leverage: Decimal::ONE,
        }
    }

    fn holding(amt: &str) -> PaperPosition {
        PaperPosition {
            position: Position {
                amt: d(amt),
                ..Position::default()
            },
            mark: Some(d("100")),
            fill_seq: 5,
            ..PaperPosition::default()
        }
    }

    #[test]
    fn simulate_decision_table() {
        use Side::{Buy, Sell};
        // (order, venue position) → filled quantity, or the start of the rejection.
        let rows: [(OrderRequest, &str, Result<&str, &str>); 7] = [
            (order(Buy, "0.5", false, None), "0", Ok("0.5")),
            (order(Buy, "0.0129", false, None), "0", Ok("0.012")),
            (
                order(Buy, "0.0004", false, None),
                "0",
                Err("quantity 0.0004 is below the step size"),
            ),
            (order(Sell, "1", true, None), "1", Ok("1")),
            (order(Sell, "2", true, None), "1", Err("ReduceOnly Order is rejected")),
            (order(Sell, "1", true, None), "-1", Err("ReduceOnly Order is rejected")),
            (order(Buy, "1", false, Some("1")), "0", Err("limit 1 not marketable")),
        ];
        for (request, amt, expected) in rows {
            let state = holding(amt);
            let (outcome, next) = simulate(&config(), &request, &state, 7);
            assert_eq!(next.version, state.version + 1, "every order bumps the version");
            match (outcome, expected) {
                (OrderOutcome::Filled { fills }, Ok(qty)) => {
                    assert_eq!(fills.len(), 1);
                    assert_eq!(fills[0].qty, d(qty), "{request:?}");
                    assert_eq!(fills[0].ts, 7, "the fill carries the given time");
                    assert_eq!(fills[0].venue_seq, Some(state.fill_seq + 1), "the next in sequence");
                    assert_eq!(next.fill_seq, state.fill_seq + 1);
                    assert_eq!(
                        fills[0].fee,
                        (fills[0].qty * fills[0].price * d("0.001")).round_dp(8).normalize()
                    );
                }
                (OrderOutcome::Rejected { reason }, Err(start)) => {
                    assert!(reason.starts_with(start), "{reason}");
                    assert_eq!(next.position, state.position, "a rejection moves nothing");
                    assert_eq!(next.fill_seq, state.fill_seq, "a rejection is no fill");
                }
                (other, expected) => panic!("{request:?} on {amt}: {other:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn simulate_is_deterministic() {
        let request = order(Side::Buy, "0.5", false, None);
        let state = holding("0");
        assert_eq!(
            simulate(&config(), &request, &state, 1),
            simulate(&config(), &request, &state, 1)
        );
    }

    #[test]
    fn step_and_tick_rounding_is_exact() {
        assert_eq!(floor_to_step(d("1.23456"), d("0.001")), d("1.234"));
        assert_eq!(floor_to_step(d("0.0009"), d("0.001")), Decimal::ZERO);
        assert_eq!(floor_to_step(d("7"), d("5")), d("5"));
        assert_eq!(round_to_tick(d("65000.123456"), d("0.01")), d("65000.12"));
        assert_eq!(round_to_tick(d("0.00001"), d("0.01")), d("0.01"));
    }

    #[test]
    fn walk_is_deterministic_and_bounded() {
        let sym = Symbol::parse("BTCUSDT").unwrap();
        let a = walk(7, &sym, 1, d("65000"), d("0.01"));
        assert_eq!(a, walk(7, &sym, 1, d("65000"), d("0.01")));
        assert!((a - d("65000")).abs() <= d("130"));
    }

    #[test]
    fn reference_prices_parse_and_reject_garbage() {
        let prices = parse_reference_prices(DEFAULT_REFERENCE_PRICES).unwrap();
        assert_eq!(prices.len(), 11);
        assert!(parse_reference_prices("BTCUSDT").is_err());
        assert!(parse_reference_prices("BTCUSDT=-1").is_err());
    }

    proptest! {
        #[test]
        fn floor_to_step_never_exceeds_and_is_a_multiple(q in 1u64..10_000_000, step_exp in 0u32..6) {
            let qty = Decimal::new(q as i64, 4);
            let step = Decimal::new(1, step_exp);
            let floored = floor_to_step(qty, step);
            prop_assert!(floored <= qty);
            prop_assert!(qty - floored < step);
            prop_assert!((floored % step).is_zero());
        }
    }
}
