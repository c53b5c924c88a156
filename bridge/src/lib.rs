//! The intent bridge: `quantum:stream:trade.intent` → gates → `quantum:stream:apply.plan`.
//!
//! Each batch costs one pipelined read of the replay markers and of the ledgers, reservation
//! totals, portfolio, mark prices and governor inputs it needs, then its commit (`commit`):
//! reserve, bump the BUY token, claim each replay marker, publish the plans and DLQ entries
//! once each, mark them done and acknowledge, each step one round trip for the whole batch and
//! one slot per command (so it runs on a Redis Cluster), each one repeatable, so neither a
//! crash nor a second bridge can lose or duplicate a plan.
//!
//! Per intent: parse → size (an intent waiting for its mark price stays pending and is retried
//! up to `INTENT_BRIDGE_MAX_INTENT_AGE_MS`) → freshness → gates (`gate`: allowlist, ledger,
//! exposure; a refusal publishes nothing) → governor (`governor`: EXECUTE or BLOCKED, both
//! published) → publish.
//!
//! Layout: `gate` (pure gates), `governor` (its settings and batch glue; the decision is
//! `quantum_model::governor`), `commit` (the batch's commit steps), this file
//! (the batch handler and `run`).

mod commit;
pub mod gate;
pub mod governor;

use std::collections::{HashMap, HashSet};

use clap::Parser;
use fred::prelude::*;
use fred::types::Value;
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;

use quantum_model::contract::{
    reservation_key, seen_key, BRIDGE_CONFIG_KEY, BUYS_VERSION_KEY, INTENT_DLQ_STREAM, INTENT_GROUP, INTENT_STREAM,
    MARK_PRICE_KEY, PLAN_STREAM, PORTFOLIO_KEY,
};
use quantum_model::governor::{GovernorConfig, ProposalView};
use quantum_model::intent::{Intent, IntentError, IntentLimits, SymbolCaps};
use quantum_model::outcome::{Marker, MarkerError, OutcomeRecord, PendingOutcome};
use quantum_model::plan::Plan;
use quantum_model::reservation::{next_token, InFlight, Reservation, Totals};
use quantum_model::shards::StreamShards;
use quantum_model::stream_entry::{truncate, StreamEntry};
use quantum_model::time::{entry_age_ms, now_ms, now_secs};
use quantum_model::types::{parse_decimal, Decision, Side, Symbol};
use quantum_runtime::config::{parse_flag, parse_non_negative, Allowlist, ConnectError, ConsumerArgs, RedisArgs};
use quantum_runtime::consumer::{self, BatchHandler, Connections, ConsumerSpec};
use quantum_runtime::failure::StageError;
use quantum_runtime::http::{self, HttpArgs};
use quantum_runtime::reply::{hash_pairs, opt_text};
use quantum_runtime::trace;

use commit::{commit_batch, queue_position_reads, CommitSettings, Committed, EntryCommit, ReservationCommit};
use gate::{exposure_pct, gate, GateConfig, GateInput, GateOutcome, LedgerView, SkipReason};
use governor::GovernorArgs;
use quantum_model::governor::SymbolRisk;

/// Deployment marker operators grep for to confirm the ledger-open fix is running.
pub const BUILD_TAG: &str = "intent-bridge-ledger-open-v1";

/// Command line and environment of `quantum-intent-bridge`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "quantum-intent-bridge",
    version,
    about = "Gates trade intents and publishes apply plans.",
    after_help = quantum_runtime::trace::HELP
)]
pub struct BridgeArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub governor: GovernorArgs,
    /// Port of /metrics, /healthz and /readyz (0: any free port, logged).
    #[arg(long, env = "INTENT_BRIDGE_METRICS_PORT", default_value_t = 9101)]
    pub metrics_port: u16,
    /// Symbols allowed to trade, comma separated: the one allowlist every service reads
    /// [default: BTCUSDT].
    #[arg(long, env = "SYMBOL_ALLOWLIST")]
    pub symbol_allowlist: Option<String>,
    /// Deprecated: use SYMBOL_ALLOWLIST (still read; an error when the two disagree).
    #[arg(long = "allowlist", env = "INTENT_BRIDGE_ALLOWLIST")]
    pub legacy_allowlist: Option<String>,
    /// Strict mode: refuse an opening BUY when the symbol has no ledger yet (the old behaviour).
    #[arg(long, env = "INTENT_BRIDGE_REQUIRE_LEDGER_FOR_OPEN", default_value = "false", value_parser = parse_flag, action = clap::ArgAction::Set)]
    pub require_ledger_for_open: bool,
    /// Refuse SELLs for symbols with no ledger or a flat one.
    #[arg(long, env = "INTENT_BRIDGE_SKIP_FLAT_SELL", default_value = "true", value_parser = parse_flag, action = clap::ArgAction::Set)]
    pub skip_flat_sell: bool,
    /// |position_amt| at or below this counts as flat.
    #[arg(long, env = "INTENT_BRIDGE_FLAT_EPS", default_value = "0", value_parser = parse_non_negative)]
    pub flat_eps: Decimal,
    /// BUYs are refused while portfolio exposure (ledger notional / equity) is at or above this percentage.
    #[arg(long, env = "MAX_EXPOSURE_PCT", default_value = "80", value_parser = parse_non_negative)]
    pub max_exposure_pct: Decimal,
    /// With no equity in quantum:state:portfolio, let BUYs through as if exposure were 0 (the
    /// old fail-open behaviour). Default: such BUYs are skipped, reason equity_unknown.
    #[arg(long, env = "INTENT_BRIDGE_ALLOW_UNKNOWN_EQUITY", default_value = "false", value_parser = parse_flag, action = clap::ArgAction::Set)]
    pub allow_unknown_equity: bool,
    /// In-flight reservations older than this (ms) are ignored and removed: their plan or fill
    /// was lost on the way (a plan deleted unread, a ledger down this long). Must exceed
    /// INTENT_EXECUTOR_MAX_PLAN_AGE_MS.
    #[arg(long, env = "INTENT_BRIDGE_RESERVATION_TTL_MS", default_value_t = 600_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub reservation_ttl_ms: u64,
    /// Highest leverage an intent may ask for; more goes to the DLQ.
    #[arg(long, env = "INTENT_BRIDGE_MAX_LEVERAGE", default_value = "125", value_parser = parse_non_negative)]
    pub max_leverage: Decimal,
    /// Largest order quantity: a default and per-symbol caps, e.g. `1000000,BTCUSDT=5`; more
    /// goes to the DLQ (quantity_out_of_range). Unset: only the pipeline's 10^12 bound.
    #[arg(long, env = "INTENT_BRIDGE_MAX_QTY", value_parser = SymbolCaps::parse)]
    pub max_qty: Option<SymbolCaps>,
    /// Largest order notional in USD, with per-symbol caps, e.g. `1000000,BTCUSDT=250000`; more
    /// goes to the DLQ (notional_out_of_range). A MARKET quantity is priced at the mark when one
    /// is published.
    #[arg(long, env = "INTENT_BRIDGE_MAX_NOTIONAL_USD", default_value = "1000000", value_parser = SymbolCaps::parse)]
    pub max_notional_usd: SymbolCaps,
    /// How long (seconds) a processed intent id is remembered, so a replayed intent (a group
    /// reset, a re-added entry) is never gated and published a second time.
    #[arg(long, env = "INTENT_BRIDGE_IDEMPOTENCY_TTL", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    pub idempotency_ttl: u64,
    /// Intents older than this (ms, by their entry id) are skipped as stale; an intent waiting
    /// for its mark price waits at most this long, then goes to the DLQ. Must exceed
    /// STREAM_CLAIM_IDLE_MS + STREAM_BLOCK_MS (entries reclaimed from a dead replica are that
    /// old). 0: no limit (and no waiting for marks).
    #[arg(long, env = "INTENT_BRIDGE_MAX_INTENT_AGE_MS", default_value_t = 300_000)]
    pub max_intent_age_ms: u64,
    /// Log level when RUST_LOG is unset (error, warn, info, debug, trace).
    #[arg(long, env = "INTENT_BRIDGE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl BridgeArgs {
    /// The allowlist: `SYMBOL_ALLOWLIST`, or the deprecated `INTENT_BRIDGE_ALLOWLIST`.
    ///
    /// # Errors
    /// An invalid symbol, or the two settings disagreeing.
    pub fn allowlist(&self) -> Result<Allowlist, String> {
        Allowlist::resolve(
            self.symbol_allowlist.as_deref(),
            "INTENT_BRIDGE_ALLOWLIST",
            self.legacy_allowlist.as_deref(),
        )
    }

    /// The gate settings these arguments describe.
    ///
    /// # Errors
    /// As [`Self::allowlist`].
    pub fn gate_config(&self) -> Result<GateConfig, String> {
        Ok(GateConfig {
            allowlist: self.allowlist()?.symbols.into_iter().collect(),
            require_ledger_for_open: self.require_ledger_for_open,
            skip_flat_sell: self.skip_flat_sell,
            flat_eps: self.flat_eps,
            max_exposure_pct: self.max_exposure_pct,
            allow_unknown_equity: self.allow_unknown_equity,
        })
    }
}

/// Why the bridge stopped.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("Redis refused an operation the bridge needs: {0}")]
    Redis(#[from] Error),
    #[error("stopped: {0}")]
    Stage(#[from] quantum_runtime::failure::StageError),
    #[error("cannot serve the HTTP endpoints: {0}")]
    Http(#[from] std::io::Error),
}

/// Counts of what the bridge did, by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeStats {
    pub consumed: u64,
    /// Intents seen before (replays), acknowledged without processing.
    pub replayed: u64,
    /// Plans published, EXECUTE and BLOCKED.
    pub published: u64,
    /// Of those, BLOCKED by the governor.
    pub blocked: u64,
    pub ledger_missing_open: u64,
    pub skipped: HashMap<&'static str, u64>,
    pub malformed: u64,
}

/// The batch handler.
pub struct IntentBridge {
    writer: Client,
    gates: GateConfig,
    governor: GovernorConfig,
    limits: IntentLimits,
    idempotency_ttl: u64,
    /// 0: no limit.
    max_intent_age_ms: u64,
    /// Reservations older than this (ms) are ignored and removed.
    reservation_ttl_ms: u64,
    /// Entries left pending while they wait for a mark price (logged and counted once each).
    waiting: HashSet<String>,
    /// Whether the last batch left entries waiting.
    deferred: bool,
    last_summary: std::time::Instant,
    /// Distinct symbols with published plans over the last 5 minutes (a live gauge).
    plan_symbols: Option<quantum_runtime::window::SymbolWindow>,
    /// Allowlisted symbols in a fixed order, for the per-batch ledger read.
    allowlist: Vec<Symbol>,
    /// When each symbol's reservations were last walked one by one (for expired ones): between
    /// walks the gates read the symbol's totals.
    walks: HashMap<Symbol, std::time::Instant>,
    /// `REDIS_WAIT_REPLICAS`: the claims wait for it before their outcomes are published.
    replica_wait: std::sync::Arc<quantum_runtime::replication::ReplicaWait>,
    /// `STREAM_SHARDS`: each plan goes to its symbol's shard of apply.plan.
    pub shards: StreamShards,
    pub stats: BridgeStats,
}

/// What the bridge reads from Redis once per batch.
#[derive(Debug, Default)]
struct BatchView {
    ledgers: HashMap<Symbol, LedgerView>,
    /// Σ|notional_usd| of the allowlisted ledgers (read when the batch has a BUY).
    ledger_notional: Decimal,
    equity: Option<Decimal>,
    /// What each read symbol has in flight: its reservations, plus the plans this batch
    /// already published (so one batch cannot overshoot either).
    in_flight: HashMap<Symbol, InFlight>,
    /// Σ notional of every BUY in flight (all allowlisted symbols, when the batch has a BUY).
    buys_in_flight: Decimal,
    /// The BUY token (all symbols) this view was read at, or the one this batch's last BUY writes.
    buys_token: String,
    marks: HashMap<Symbol, Decimal>,
    risk: HashMap<Symbol, SymbolRisk>,
    /// Symbols whose reservations were walked one by one (expired ones found), this batch.
    walked: Vec<Symbol>,
    /// Symbols whose totals disagree with their reservations: rebuilt after the commits.
    rebuild: Vec<Symbol>,
    /// Per intent (entry id), what an earlier attempt at it reserved and never claimed.
    earlier: HashMap<String, (Symbol, EarlierReservations)>,
}

/// What an earlier attempt at one intent reserved.
#[derive(Debug, Default, Clone, Copy)]
struct EarlierReservations {
    sell_qty: Decimal,
    buy_notional: Decimal,
}

/// A batch as [`IntentBridge::read_batch`] read it.
struct BatchRead {
    /// Each entry's replay marker, when it was decided before.
    seen: Vec<Option<Result<Marker, MarkerError>>>,
    /// Each entry's intent, parsed; `None` for a replay.
    intents: Vec<Option<Result<Intent, IntentError>>>,
    view: BatchView,
}

/// The symbols one batch's view reads.
struct ViewScope<'a> {
    /// The batch has an allowlisted BUY: exposure is read across every allowlisted ledger.
    any_buy: bool,
    /// The batch's allowlisted symbols: their ledgers, marks and governor inputs are read.
    gated_symbols: Vec<Symbol>,
    allowlist: &'a [Symbol],
}

impl ViewScope<'_> {
    /// Exposure spans every allowlisted ledger; without a BUY only the batch's symbols matter.
    fn ledger_symbols(&self) -> &[Symbol] {
        if self.any_buy {
            self.allowlist
        } else {
            &self.gated_symbols
        }
    }
}

/// A plan's reservation, with the reservation tokens its gates decided on and the ones it writes.
struct Reserved {
    reservation: Reservation,
    token: (String, String),
    buys_token: Option<(String, String)>,
}

enum Outcome {
    /// Publish the plan; an EXECUTE plan reserves what it will take until the ledger has it.
    Publish(Box<Plan>, Option<Reserved>),
    Dlq {
        reason: &'static str,
        error: String,
    },
    /// Refused by a gate: the reason code and the record of what decided it.
    Skip(&'static str, OutcomeRecord),
    /// Not decidable yet (no mark price): left pending, retried.
    Wait,
}

impl Outcome {
    /// Ends the intent's span with what became of it.
    fn record(&self, span: &tracing::Span) {
        match self {
            Self::Publish(plan, _) => {
                span.record("quantum.plan_id", plan.plan_id.as_str());
                trace::record_outcome(span, "published", false);
            }
            Self::Dlq { reason, .. } => trace::record_outcome(span, reason, true),
            Self::Skip(reason, _) => trace::record_outcome(span, reason, false),
            Self::Wait => trace::record_outcome(span, "waiting_mark_price", false),
        }
    }
}

impl IntentBridge {
    /// A bridge writing through `writer`, with the governor's default settings and no age limit.
    pub fn new(writer: Client, gates: GateConfig, limits: IntentLimits, idempotency_ttl: u64) -> Self {
        let mut allowlist: Vec<Symbol> = gates.allowlist.iter().cloned().collect();
        allowlist.sort();
        Self {
            writer,
            gates,
            governor: GovernorConfig::default(),
            limits,
            idempotency_ttl,
            max_intent_age_ms: 0,
            reservation_ttl_ms: 600_000,
            waiting: HashSet::new(),
            deferred: false,
            last_summary: std::time::Instant::now(),
            plan_symbols: None,
            allowlist,
            walks: HashMap::new(),
            replica_wait: Default::default(),
            shards: StreamShards::ONE,
            stats: BridgeStats::default(),
        }
    }

    /// Reads the batch in one round trip: each entry's replay marker (its recorded outcome when
    /// it was processed before) and what the gates decide on, the BUY token, the ledgers and
    /// reservations, the equity, the marks and the governor's inputs. The view covers every
    /// parsed intent, replays too: they are rare, and reading their symbols as well saves the
    /// round trip a view read after the markers would cost. A replay's intent is `None`.
    async fn read_batch(&self, batch: &[StreamEntry]) -> Result<BatchRead, Error> {
        let parsed: Vec<Result<Intent, IntentError>> = batch.iter().map(|e| Intent::parse(e, &self.limits)).collect();
        let scope = self.view_scope(&parsed);
        let has_view = !(scope.ledger_symbols().is_empty() && scope.gated_symbols.is_empty());
        let pipeline = self.writer.pipeline();
        let keys: Vec<String> = batch.iter().map(|e| seen_key(&e.id)).collect();
        let groups = quantum_runtime::nodes::queue_mget(&pipeline, &self.writer, &keys).await?;
        let positions = if has_view {
            self.queue_view_reads(&pipeline, &scope).await?
        } else {
            Vec::new()
        };
        // The plan ids reserved for each gated intent by an attempt that never claimed it.
        let gated: Vec<(&str, &Symbol)> = batch
            .iter()
            .zip(&parsed)
            .filter_map(|(e, i)| i.as_ref().ok().map(|i| (e.id.as_str(), &i.symbol)))
            .filter(|(_, symbol)| self.gates.allowlist.contains(*symbol))
            .collect();
        for (id, symbol) in &gated {
            pipeline
                .smembers::<(), _>(quantum_model::contract::reservation_entry_key(symbol, id))
                .await?;
        }
        // Per-reply results: a governor key of the wrong type fails its own symbol, not the batch.
        let mut replies = pipeline.try_all::<Value>().await.into_iter();
        let seen: Vec<Option<Result<Marker, MarkerError>>> =
            quantum_runtime::nodes::take_mget(&groups, batch.len(), &mut replies)?
                .into_iter()
                .map(|marker| marker.map(|text| Marker::parse(&text)))
                .collect();
        let mut view = if has_view {
            self.view_from(&scope, &positions, replies.by_ref())?
        } else {
            BatchView::default()
        };
        let earlier: Vec<(&str, &Symbol, Vec<String>)> = gated
            .into_iter()
            .zip(replies)
            .filter_map(|((id, symbol), plans)| {
                let plans: Vec<String> = plans.ok()?.into_array().iter().filter_map(opt_text).collect();
                (!plans.is_empty()).then_some((id, symbol, plans))
            })
            .collect();
        if !earlier.is_empty() {
            self.read_earlier_reservations(&mut view, earlier).await?;
        }
        let intents = parsed
            .into_iter()
            .zip(&seen)
            .map(|(i, s)| s.is_none().then_some(i))
            .collect();
        Ok(BatchRead { seen, intents, view })
    }

    /// What the reservations an earlier attempt at an intent left (it died, or another bridge is
    /// at it, before its claim) hold, for that intent's own gates only: no more than one of those
    /// plans and this one is ever published. Every other intent still counts them.
    async fn read_earlier_reservations(
        &self,
        view: &mut BatchView,
        earlier: Vec<(&str, &Symbol, Vec<String>)>,
    ) -> Result<(), Error> {
        let pipeline = self.writer.pipeline();
        for (_, symbol, plans) in &earlier {
            pipeline
                .hmget::<(), _, _>(reservation_key(symbol), plans.clone())
                .await?;
        }
        let replies: Vec<Value> = pipeline.all().await?;
        for ((id, symbol, plans), values) in earlier.into_iter().zip(replies) {
            let mut held = EarlierReservations::default();
            for (plan, value) in plans.iter().zip(values.into_array()) {
                let Some(value) = opt_text(&value) else { continue };
                if let Ok(r) = Reservation::parse(plan, &value) {
                    match r.side {
                        Side::Sell => held.sell_qty += r.qty,
                        Side::Buy => held.buy_notional += r.notional_usd,
                    }
                }
            }
            view.earlier.insert(id.to_string(), (symbol.clone(), held));
        }
        Ok(())
    }

    /// The view, from the replies [`Self::queue_view_reads`] queued.
    fn view_from(
        &self,
        scope: &ViewScope<'_>,
        position_groups: &[Vec<usize>],
        mut replies: impl Iterator<Item = Result<Value, Error>>,
    ) -> Result<BatchView, Error> {
        let buys_token = replies.next().unwrap_or(Ok(Value::Null))?;
        let mut view = BatchView {
            buys_token: opt_text(&buys_token).unwrap_or_default(),
            ..BatchView::default()
        };
        let symbols = scope.ledger_symbols();
        let positions = quantum_runtime::nodes::take_grouped(position_groups, symbols.len(), &mut replies)?;
        let mut next = || replies.next().unwrap_or(Ok(Value::Null));
        let now_ms = now_ms();
        let mut total_notional = Decimal::ZERO;
        for (symbol, position) in symbols.iter().zip(positions) {
            let notional = self.read_position(&mut view, symbol, position, now_ms);
            total_notional = total_notional.saturating_add(notional.unwrap_or_default().abs());
        }
        view.equity = opt_text(&next()?).and_then(|v| parse_decimal("equity_usd", &v).ok());
        if scope.any_buy {
            view.ledger_notional = total_notional;
        } else {
            view.buys_in_flight = Decimal::ZERO;
        }
        if !scope.gated_symbols.is_empty() {
            for (symbol, mark) in scope.gated_symbols.iter().zip(next()?.into_array()) {
                if let Some(mark) = opt_text(&mark).and_then(|v| parse_decimal("mark", &v).ok()) {
                    view.marks.insert(symbol.clone(), mark);
                }
            }
        }
        let now = now_secs();
        for symbol in &scope.gated_symbols {
            let (proposal, history) = (next(), next());
            let risk = governor::read_replies(&self.governor, proposal, history, now);
            if let quantum_model::governor::ProposalView::Unreadable(e) = &risk.view {
                tracing::warn!("Proposal of {symbol} unreadable ({e}); entries are BLOCKED until it is fixed");
            }
            view.risk.insert(symbol.clone(), risk);
        }
        Ok(view)
    }

    /// Which symbols the batch reads: its allowlisted symbols (ledgers, marks, governor), and,
    /// when it has a BUY, every allowlisted ledger (exposure spans them all).
    fn view_scope<'a>(&'a self, intents: &[Result<Intent, IntentError>]) -> ViewScope<'a> {
        let parsed = || intents.iter().filter_map(|i| i.as_ref().ok());
        let any_buy = parsed().any(|i| i.side == Side::Buy && self.gates.allowlist.contains(&i.symbol));
        let set: HashSet<&Symbol> = parsed()
            .map(|i| &i.symbol)
            .filter(|s| self.gates.allowlist.contains(*s))
            .collect();
        ViewScope {
            any_buy,
            gated_symbols: set.into_iter().cloned().collect(),
            allowlist: &self.allowlist,
        }
    }

    /// Queues the view's reads; returns the groups of the position reads (`nodes::take_grouped`).
    async fn queue_view_reads(
        &self,
        pipeline: &fred::clients::Pipeline<Client>,
        scope: &ViewScope<'_>,
    ) -> Result<Vec<Vec<usize>>, Error> {
        // The BUY token first: a BUY another bridge commits after this read changes it, so
        // this batch's BUYs cannot commit on positions read without it.
        pipeline.get::<(), _>(BUYS_VERSION_KEY).await?;
        let symbols: Vec<(&Symbol, bool)> = scope
            .ledger_symbols()
            .iter()
            .map(|symbol| (symbol, self.walk_due(symbol)))
            .collect();
        let positions = queue_position_reads(pipeline, &self.writer, &symbols).await?;
        pipeline.hget::<(), _, _>(PORTFOLIO_KEY, "equity_usd").await?;
        if !scope.gated_symbols.is_empty() {
            let fields: Vec<&str> = scope.gated_symbols.iter().map(Symbol::as_str).collect();
            pipeline.hmget::<(), _, _>(MARK_PRICE_KEY, fields).await?;
        }
        for symbol in &scope.gated_symbols {
            governor::queue_reads(pipeline, &self.governor, symbol).await?;
        }
        Ok(positions)
    }

    /// Whether `symbol`'s reservations are due to be walked one by one: expired ones are
    /// found that way, ten times per reservation TTL.
    fn walk_due(&self, symbol: &Symbol) -> bool {
        let every = std::time::Duration::from_millis(self.reservation_ttl_ms / 10);
        self.walks.get(symbol).is_none_or(|at| at.elapsed() >= every)
    }

    /// Puts one symbol's ledger and reservations into the view (an unreadable one makes the
    /// symbol's gates fail closed); returns its ledger's notional.
    fn read_position(&self, view: &mut BatchView, symbol: &Symbol, reply: Value, now_ms: u64) -> Option<Decimal> {
        let mut position = reply.into_array().into_iter();
        let pair = position.next().unwrap_or(Value::Null).into_array();
        let totals: Vec<Option<String>> = position
            .next()
            .unwrap_or(Value::Null)
            .into_array()
            .iter()
            .map(opt_text)
            .collect();
        let reservations = position.next().unwrap_or(Value::Null);
        let token = position.next().as_ref().and_then(opt_text).unwrap_or_default();
        let amt = pair.first().and_then(opt_text);
        let mut ledger = match amt.as_deref().map(|v| parse_decimal("position_amt", v)) {
            None => LedgerView::Missing,
            Some(Ok(amt)) => LedgerView::Known(amt),
            Some(Err(e)) => {
                tracing::warn!("Ledger of {symbol} unreadable ({e}); its intents are skipped until it is fixed");
                LedgerView::Unreadable
            }
        };
        match self.in_flight(view, symbol, &totals, reservations, now_ms) {
            Ok(mut in_flight) => {
                in_flight.token = token;
                view.buys_in_flight = view.buys_in_flight.saturating_add(in_flight.buy_notional);
                view.in_flight.insert(symbol.clone(), in_flight);
            }
            Err(e) => {
                // What is in flight is unknown: the symbol's gates fail closed.
                tracing::warn!(
                    "Reservations of {symbol} unreadable ({e}) in {}; its intents are skipped until it is fixed",
                    reservation_key(symbol)
                );
                ledger = LedgerView::Unreadable;
            }
        }
        view.ledgers.insert(symbol.clone(), ledger);
        pair.get(1)
            .and_then(opt_text)
            .and_then(|v| parse_decimal("notional_usd", &v).ok())
    }

    /// What `symbol` has in flight: its totals, or, when its reservations were read too, their
    /// sum (expired ones left out and listed), noting the symbol for a rebuild when its totals
    /// disagree with them.
    fn in_flight(
        &self,
        view: &mut BatchView,
        symbol: &Symbol,
        totals: &[Option<String>],
        reservations: Value,
        now_ms: u64,
    ) -> Result<InFlight, quantum_model::reservation::ReservationError> {
        let kept = Totals::parse(totals);
        if reservations.is_null() {
            if kept.is_err() {
                view.rebuild.push(symbol.clone());
            }
            return kept.map(|t| InFlight::from_totals(&t));
        }
        view.walked.push(symbol.clone());
        let pairs = hash_pairs(reservations);
        let in_flight = InFlight::summarize(&pairs, now_ms, self.reservation_ttl_ms)?;
        let counted = Totals::of_values(&pairs)?;
        if kept.as_ref() != Ok(&counted) {
            tracing::warn!(
                "RESERVATION_TOTALS_REBUILT symbol={symbol} kept={} counted={counted:?}; the gates counted every reservation this batch",
                kept.map_or_else(|e| e.to_string(), |t| format!("{t:?}"))
            );
            view.rebuild.push(symbol.clone());
        }
        Ok(in_flight)
    }

    /// Whether an intent this old may still wait for its mark price.
    fn can_wait(&self, age_ms: u64) -> bool {
        self.max_intent_age_ms > 0 && age_ms <= self.max_intent_age_ms
    }

    /// size → freshness → gates → governor, for one intent.
    fn decide(
        &mut self,
        entry: &StreamEntry,
        intent: Result<Intent, IntentError>,
        view: &mut BatchView,
        now_ms: u64,
        span: &tracing::Span,
    ) -> Outcome {
        let intent = match intent {
            Ok(intent) => intent,
            Err(e) => return Outcome::dlq(&e, String::new()),
        };
        span.record("quantum.symbol", intent.symbol.as_str());
        span.record("quantum.side", intent.side.as_str());
        let age_ms = entry_age_ms(&entry.id, now_ms);
        let qty = match self.size(entry, &intent, view, age_ms) {
            Ok(qty) => qty,
            Err(outcome) => return outcome,
        };
        let plan = Plan::from_intent(&intent, qty, now_ms / 1000);
        let max_ms = self.max_intent_age_ms;
        if max_ms > 0 && age_ms > max_ms {
            return self.skip(&Subject::of(&plan), SkipReason::Stale { age_ms, max_ms });
        }
        self.gate_and_publish(&entry.id, &intent, plan, view, now_ms)
    }

    /// The intent's quantity at the batch's mark, within the caps; or what becomes of it
    /// instead: DLQ, skipped, or left waiting for its mark price.
    #[expect(clippy::result_large_err, reason = "moved once per intent, and never a Publish")]
    fn size(
        &mut self,
        entry: &StreamEntry,
        intent: &Intent,
        view: &BatchView,
        age_ms: u64,
    ) -> Result<Decimal, Outcome> {
        let mark = view.marks.get(&intent.symbol).copied();
        let qty = match intent.quantity(mark) {
            Ok(qty) => qty,
            Err(e @ IntentError::MarkPriceUnavailable(_)) => return Err(self.without_mark(entry, intent, &e, age_ms)),
            Err(e) => return Err(Outcome::dlq(&e, String::new())),
        };
        intent
            .check_caps(qty, mark, &self.limits)
            .map_err(|e| Outcome::dlq(&e, String::new()))?;
        Ok(qty)
    }

    /// An intent sized at a mark price not published yet. What needs no quantity is decided
    /// first (an intent that could never trade does not wait for a price); then it waits while
    /// young enough, and is skipped as stale or dead-lettered once it cannot.
    fn without_mark(&mut self, entry: &StreamEntry, intent: &Intent, e: &IntentError, age_ms: u64) -> Outcome {
        if !self.gates.allowlist.contains(&intent.symbol) {
            return self.skip(&Subject::without_qty(intent), SkipReason::NotAllowlisted);
        }
        if self.can_wait(age_ms) {
            return self.wait_for_mark(entry, intent, age_ms);
        }
        let max_ms = self.max_intent_age_ms;
        if max_ms > 0 && !self.waiting.contains(&entry.id) {
            return self.skip(&Subject::without_qty(intent), SkipReason::Stale { age_ms, max_ms });
        }
        let waited = if max_ms > 0 {
            format!("; waited {age_ms} ms (INTENT_BRIDGE_MAX_INTENT_AGE_MS={max_ms})")
        } else {
            String::new()
        };
        Outcome::dlq(e, waited)
    }

    /// The gates (allowlist, ledger by side, exposure) on the plan, then the governor and
    /// publication; a published EXECUTE plan is counted against the rest of the batch.
    fn gate_and_publish(
        &mut self,
        entry_id: &str,
        intent: &Intent,
        plan: Plan,
        view: &mut BatchView,
        now_ms: u64,
    ) -> Outcome {
        let qty = plan.qty;
        let ledger = view.ledgers.get(&plan.symbol).copied().unwrap_or(LedgerView::Missing);
        let mark = view.marks.get(&intent.symbol).copied();
        // The order's notional at its limit price or the mark (0 while no price is known).
        let own = intent.notional_usd(qty, mark).unwrap_or_default();
        // An earlier attempt at this very intent is not counted against it: at most one of its
        // plans and this one is published, and the publication releases the other.
        let earlier = view.earlier.get(entry_id).map(|(_, held)| *held).unwrap_or_default();
        let sells_in_flight = view
            .in_flight
            .get(&plan.symbol)
            .map_or(Decimal::ZERO, |f| (f.sell_qty - earlier.sell_qty).max(Decimal::ZERO));
        // Exposure after this order: the ledgers, every BUY in flight and the order itself.
        let buys_in_flight = (view.buys_in_flight - earlier.buy_notional).max(Decimal::ZERO);
        let exposure_pct = match plan.side {
            Side::Buy => exposure_pct(
                view.ledger_notional.saturating_add(buys_in_flight).saturating_add(own),
                view.equity,
            ),
            Side::Sell => Some(Decimal::ZERO),
        };
        let input = GateInput {
            side: plan.side,
            qty,
            ledger,
            sells_in_flight,
            exposure_pct,
        };
        let (ledger_missing_open, gated) = match gate(&self.gates, &plan.symbol, &input) {
            GateOutcome::Publish {
                ledger_missing_open,
                qty,
            } => (ledger_missing_open, qty),
            GateOutcome::Skip(reason) => return self.skip(&Subject::of(&plan), reason),
        };
        let (mut plan, notional) = if gated == qty {
            (plan, own)
        } else {
            let cut = Plan::from_intent(intent, gated, now_ms / 1000);
            self.report_cut(&cut, qty, ledger, sells_in_flight);
            (cut, intent.notional_usd(gated, mark).unwrap_or_default())
        };
        if plan.side == Side::Sell && self.gates.skip_flat_sell {
            // Gated SELLs only reduce: the venue refuses one that would open a short.
            plan.reduce_only = true;
        }
        let mut outcome = self.publish(plan, ledger_missing_open, view, notional, now_ms);
        if let Outcome::Publish(plan, Some(reserved)) = &mut outcome {
            (reserved.token, reserved.buys_token) =
                view.reserve(&plan.symbol, plan.plan_id.as_str(), &reserved.reservation);
        }
        outcome
    }

    /// Logs and counts a SELL cut to what is available.
    fn report_cut(&self, plan: &Plan, requested: Decimal, ledger: LedgerView, in_flight: Decimal) {
        let position_amt = match ledger {
            LedgerView::Known(amt) => amt.to_string(),
            _ => "unknown".to_string(),
        };
        metrics::counter!(quantum_model::metric_names::BRIDGE_SELL_CUT_TOTAL, "symbol" => plan.symbol.to_string())
            .increment(1);
        tracing::info!(
            "SELL cut to available: symbol={} requested={requested} available={} position_amt={position_amt} in_flight={in_flight} plan_id={}",
            plan.symbol,
            plan.qty,
            plan.plan_id.short()
        );
    }

    fn wait_for_mark(&mut self, entry: &StreamEntry, intent: &Intent, age_ms: u64) -> Outcome {
        if self.waiting.insert(entry.id.clone()) {
            metrics::counter!(quantum_model::metric_names::BRIDGE_MARK_WAITS_TOTAL).increment(1);
            tracing::info!(
                "Waiting for mark price: {} {} intent {} (age={age_ms}ms, max={}ms); left pending and retried",
                intent.symbol,
                intent.side,
                entry.id,
                self.max_intent_age_ms
            );
        }
        Outcome::Wait
    }

    /// The governor's verdict, put on the plan, then the plan published.
    fn publish(
        &mut self,
        mut plan: Plan,
        ledger_missing_open: bool,
        view: &BatchView,
        notional: Decimal,
        now_ms: u64,
    ) -> Outcome {
        let (sym, side, short) = (plan.symbol.clone(), plan.side, plan.plan_id.short().to_string());
        if ledger_missing_open {
            metrics::counter!(quantum_model::metric_names::BRIDGE_LEDGER_MISSING_OPEN_TOTAL, "symbol" => sym.to_string()).increment(1);
            self.stats.ledger_missing_open += 1;
            tracing::info!("LEDGER_MISSING_OPEN allowed: symbol={sym} side=BUY plan_id={short}");
        }
        static NO_PROPOSAL: ProposalView = ProposalView::Missing;
        let (proposal, history) = view
            .risk
            .get(&sym)
            .map_or((&NO_PROPOSAL, &[][..]), |r| (&r.view, &r.history[..]));
        let verdict = quantum_model::governor::decide(&self.governor, side, proposal, history);
        governor::annotate(&mut plan, &verdict, proposal);
        governor::report(&self.governor, &plan, &verdict);
        let outcome = if verdict.decision == Decision::Blocked {
            self.stats.blocked += 1;
            "blocked"
        } else {
            "published"
        };
        metrics::counter!(quantum_model::metric_names::BRIDGE_OUTCOMES_TOTAL, "reason" => outcome).increment(1);
        if let Some(window) = &self.plan_symbols {
            window.saw(&sym);
        }
        metrics::counter!(quantum_model::metric_names::BRIDGE_PLANS_PUBLISHED_TOTAL, "symbol" => sym.to_string(), "side" => side.as_str(), "decision" => verdict.decision.as_str())
            .increment(1);
        // The kill score only when there is one: this line is the bridge's hottest.
        let kill_score = verdict.kill_score.map(|k| format!(" kill_score={k:.4}"));
        tracing::info!(
            "Publishing plan for {sym} {side}: leverage={}, sl={}, tp={} plan_id={short} qty={} decision={} governor={}{}",
            plan.leverage,
            display_opt(plan.stop_loss),
            display_opt(plan.take_profit),
            plan.qty,
            plan.decision,
            verdict.reason,
            kill_score.as_deref().unwrap_or_default()
        );
        let reserved = (verdict.decision == Decision::Execute).then_some(Reserved {
            reservation: Reservation {
                side,
                qty: plan.qty,
                notional_usd: notional,
                ts_ms: now_ms,
            },
            token: Default::default(),
            buys_token: None,
        });
        Outcome::Publish(Box::new(plan), reserved)
    }

    fn skip(&mut self, subject: &Subject, reason: SkipReason) -> Outcome {
        let (sym, side, short) = (&subject.symbol, subject.side, subject.plan_id.as_str());
        metrics::counter!(quantum_model::metric_names::BRIDGE_OUTCOMES_TOTAL, "reason" => reason.code()).increment(1);
        if side == Side::Sell && reason != SkipReason::NotAllowlisted {
            metrics::counter!(quantum_model::metric_names::BRIDGE_SELL_BLOCKED_TOTAL, "symbol" => sym.to_string(), "reason" => reason.code())
                .increment(1);
        }
        *self.stats.skipped.entry(reason.code()).or_default() += 1;
        let record = skip_record(subject, reason);
        match reason {
            SkipReason::NotAllowlisted => tracing::info!(
                "SKIP_INTENT_SYMBOL_NOT_IN_ALLOWLIST symbol={sym} side={side} allowlist_count={} plan_id={short}",
                self.gates.allowlist.len()
            ),
            SkipReason::StrictLedgerMissingBuy => {
                tracing::info!("Skip publish: {sym} BUY but ledger unknown (strict mode) plan_id={short}")
            }
            SkipReason::LedgerMissingSell => {
                tracing::info!("Skip publish: {sym} SELL but ledger unknown plan_id={short}")
            }
            SkipReason::LedgerFlatSell { last_known_amt } => tracing::info!(
                "Skip publish: {sym} SELL but ledger flat last_known_amt={last_known_amt} plan_id={short}"
            ),
            SkipReason::Exposure { exposure_pct, max_pct } => tracing::info!(
                "Skip publish: {sym} BUY rejected (exposure={exposure_pct:.1}% >= MAX={max_pct:.1}%) plan_id={short}"
            ),
            SkipReason::EquityUnknown => tracing::warn!(
                "Skip publish: {sym} BUY rejected (equity unknown: no equity_usd in {PORTFOLIO_KEY}; INTENT_BRIDGE_ALLOW_UNKNOWN_EQUITY=true restores fail-open) plan_id={short}"
            ),
            SkipReason::SellNothingAvailable { position_amt, in_flight } => tracing::info!(
                "Skip publish: {sym} SELL but nothing available (position_amt={position_amt} in_flight={in_flight}) plan_id={short}"
            ),
            SkipReason::LedgerUnreadable => {
                tracing::warn!("Skip publish: {sym} {side} but ledger unreadable plan_id={short}")
            }
            SkipReason::Stale { age_ms, max_ms } => tracing::info!(
                "Skip publish: {sym} {side} stale intent (age={age_ms}ms > max={max_ms}ms) plan_id={short}"
            ),
        }
        Outcome::Skip(reason.code(), record)
    }

    /// Forgets waiting entries long past the age limit: an entry still pending is decided at
    /// its first retry past the limit, so one kept longer was deleted from the stream meanwhile.
    fn prune_waiting(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let (now, keep) = (now_ms(), self.max_intent_age_ms.saturating_mul(2) + 60_000);
        self.waiting.retain(|id| entry_age_ms(id, now) <= keep);
    }
}

impl BatchView {
    /// Counts a plan just published against the rest of the batch; returns the tokens its
    /// commit must find and write: the symbol's and, for a BUY, all BUYs' (the batch's next
    /// reservation expects the ones this one writes).
    #[allow(clippy::type_complexity)]
    fn reserve(
        &mut self,
        symbol: &Symbol,
        plan_id: &str,
        reservation: &Reservation,
    ) -> ((String, String), Option<(String, String)>) {
        let in_flight = self.in_flight.entry(symbol.clone()).or_default();
        in_flight.add(reservation);
        let next = next_token(&in_flight.token, plan_id);
        let token = (std::mem::replace(&mut in_flight.token, next.clone()), next);
        let buys_token = (reservation.side == Side::Buy).then(|| {
            self.buys_in_flight = self.buys_in_flight.saturating_add(reservation.notional_usd);
            let next = next_token(&self.buys_token, plan_id);
            (std::mem::replace(&mut self.buys_token, next.clone()), next)
        });
        (token, buys_token)
    }
}

impl Outcome {
    fn dlq(e: &IntentError, detail: String) -> Self {
        Self::Dlq {
            reason: e.reason(),
            error: format!("{e}{detail}"),
        }
    }
}

fn display_opt(value: Option<Decimal>) -> String {
    value.map_or_else(|| "None".to_string(), |v| v.to_string())
}

impl BatchHandler for IntentBridge {
    /// read (markers and the batch's view, one pipeline) → decide and queue each entry's
    /// commit step → commit (one pipeline) → report.
    async fn handle(&mut self, batch: &[StreamEntry]) -> Result<(), StageError> {
        let started = std::time::Instant::now();
        self.deferred = false;
        self.prune_waiting();
        let BatchRead {
            seen,
            intents,
            mut view,
        } = self.read_batch(batch).await?;
        let walked_at = std::time::Instant::now();
        for symbol in &view.walked {
            self.walks.insert(symbol.clone(), walked_at);
        }
        let stats_before = self.stats.clone();

        let mut queued = self.decide_batch(batch, intents, seen, &mut view);
        fail::fail_point!("bridge::before_commit");
        let commits = std::mem::take(&mut queued.commits);
        let ids = queued.committing.iter().map(|(entry, _)| entry.id.as_str());
        let settings = CommitSettings {
            marker_ttl_secs: self.idempotency_ttl,
            reservation_ttl_ms: self.reservation_ttl_ms,
            replica_wait: &self.replica_wait,
            shards: self.shards,
        };
        let fates = commit_batch(&self.writer, &settings, ids.zip(commits).collect()).await;
        self.housekeeping(&view).await;
        let again = match self.check_commits(&queued.committing, fates) {
            Ok(again) => again,
            Err(e) => {
                // The failed entries stay pending; their counts are undone with the batch's
                // (the others are acknowledged and count as replays if they come back).
                self.stats = stats_before;
                trace::record_batch_failed(&queued.spans);
                return Err(e);
            }
        };
        self.report_batch(batch.len(), queued.committing.len() as u64 - again, started);
        Ok(())
    }

    fn retry_pending_after(&mut self) -> Option<std::time::Duration> {
        self.deferred.then_some(MARK_RETRY_DELAY)
    }
}

/// How soon an intent waiting for its mark price is looked at again.
const MARK_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

/// The commit steps queued for a batch.
struct QueuedBatch<'a> {
    /// The entries committed, in the order of their steps; whether each was decided here
    /// (false: a replay, only acknowledged, or an outcome decided before, only published).
    committing: Vec<(&'a StreamEntry, bool)>,
    /// Their commits, in the same order.
    commits: Vec<EntryCommit>,
    /// Each intent's span, ended once its plan is committed (only kept while tracing is on).
    spans: Vec<tracing::Span>,
}

impl IntentBridge {
    /// Decides every entry of the batch against `view` and says what to commit for it; an
    /// intent waiting for its mark price is neither marked nor acknowledged (it is read again).
    fn decide_batch<'a>(
        &mut self,
        batch: &'a [StreamEntry],
        intents: Vec<Option<Result<Intent, IntentError>>>,
        seen: Vec<Option<Result<Marker, MarkerError>>>,
        view: &mut BatchView,
    ) -> QueuedBatch<'a> {
        let now_ms = now_ms();
        let mut queued = QueuedBatch {
            committing: Vec::with_capacity(batch.len()),
            commits: Vec::with_capacity(batch.len()),
            spans: Vec::new(),
        };
        for ((entry, intent), seen) in batch.iter().zip(intents).zip(seen) {
            let span = trace::entry_span("intent_bridge.intent", INTENT_STREAM, entry);
            let (Some(intent), None) = (intent, &seen) else {
                queued.commits.push(self.decided_before(entry, seen, now_ms, &span));
                queued.committing.push((entry, false));
                continue;
            };
            let outcome = span.in_scope(|| self.decide(entry, intent, view, now_ms, &span));
            outcome.record(&span);
            if !span.is_disabled() {
                queued.spans.push(span.clone());
            }
            if matches!(outcome, Outcome::Wait) {
                self.deferred = true;
                continue;
            }
            self.waiting.remove(&entry.id);
            let settle = view.earlier.get(&entry.id).map(|(symbol, _)| symbol.clone());
            queued
                .commits
                .push(self.outcome_commit(entry, outcome, settle, &span, now_ms));
            queued.committing.push((entry, true));
        }
        queued
    }

    /// The commit of an entry whose marker was found: a replay is only acknowledged (the first
    /// outcome stays; the record counts the replay), an outcome decided before a crash or by a
    /// paused bridge is published as it was decided, an unreadable marker fails the entry.
    fn decided_before(
        &mut self,
        entry: &StreamEntry,
        seen: Option<Result<Marker, MarkerError>>,
        now_ms: u64,
        span: &tracing::Span,
    ) -> EntryCommit {
        match seen {
            Some(Ok(Marker::Publishing(record, outcome))) => {
                trace::record_outcome(span, "finished", false);
                tracing::info!(
                    "Finishing intent {}: decided before ({}) and not known to be published; publishing that outcome",
                    entry.id,
                    record.kind()
                );
                EntryCommit::Finish { record, outcome }
            }
            Some(Err(e)) => {
                let error = format!("{e} in {}", seen_key(&entry.id));
                tracing::warn!("Intent {}: {error}", entry.id);
                EntryCommit::Unreadable(error)
            }
            done => {
                trace::record_outcome(span, "replayed", false);
                self.stats.replayed += 1;
                tracing::info!(
                    "Already processed: intent {} (a replay); acknowledged without publishing",
                    entry.id
                );
                let first = done.and_then(Result::ok).map(|m| m.record().clone());
                EntryCommit::Replay {
                    replay_record: first.map(|first| first.replayed(now_ms).to_string()),
                }
            }
        }
    }

    /// Tidies, after the commit steps, what the batch's view found: expired reservations,
    /// totals that disagree with their reservations, and the governor's history samples. A
    /// failure is logged; the next batch finds the same and tries again.
    async fn housekeeping(&self, view: &BatchView) {
        let pipeline = self.writer.pipeline();
        let queued = async {
            let mut any = queue_expired_reservations(&pipeline, view).await?;
            for symbol in &view.rebuild {
                quantum_runtime::inflight::queue_rebuild(&pipeline, symbol).await?;
                any = true;
            }
            for (symbol, risk) in &view.risk {
                if let Some(sample) = risk.unrecorded {
                    governor::queue_record(&pipeline, &self.governor, symbol, sample).await?;
                    any = true;
                }
            }
            Ok::<bool, Error>(any)
        };
        let result = match queued.await {
            Ok(true) => pipeline.try_all::<Value>().await.into_iter().find_map(Result::err),
            Ok(false) => None,
            Err(e) => Some(e),
        };
        if let Some(e) = result {
            tracing::warn!("Housekeeping after the batch failed ({e}); tried again with the next batch");
        }
    }

    /// Counts a committed batch and, every `STATS_INTERVAL`, logs the stats line.
    fn report_batch(&mut self, size: usize, acked: u64, started: std::time::Instant) {
        self.stats.consumed += acked;
        metrics::counter!(quantum_model::metric_names::BRIDGE_INTENTS_CONSUMED_TOTAL).increment(acked);
        metrics::gauge!(quantum_model::metric_names::BRIDGE_WAITING_INTENTS).set(self.waiting.len() as f64);
        metrics::histogram!(quantum_model::metric_names::BRIDGE_BATCH_SIZE).record(size as f64);
        metrics::histogram!(quantum_model::metric_names::BRIDGE_BATCH_SECONDS).record(started.elapsed().as_secs_f64());
        if let Some(window) = &self.plan_symbols {
            window.publish();
        }
        if self.last_summary.elapsed() >= STATS_INTERVAL {
            self.last_summary = std::time::Instant::now();
            log_stats("Intent Bridge stats", &self.stats);
        }
    }

    /// An intent's commit: its record, its plan or DLQ entry, its reservation.
    fn outcome_commit(
        &mut self,
        entry: &StreamEntry,
        outcome: Outcome,
        settle: Option<Symbol>,
        span: &tracing::Span,
        now_ms: u64,
    ) -> EntryCommit {
        let now = now_ms / 1000;
        let record = outcome_record(&outcome, now_ms);
        let (mut published, mut reserved) = (None, None);
        match outcome {
            Outcome::Publish(plan, reservation) => {
                let mut fields = plan.to_fields();
                trace::propagate(span, Some(entry), &mut fields);
                published = Some(PendingOutcome {
                    stream: self.shards.stream_for(PLAN_STREAM, &plan.symbol),
                    fields: quantum_runtime::cas::owned(fields),
                });
                reserved = reservation.map(|r| ReservationCommit {
                    symbol: plan.symbol.clone(),
                    field: plan.plan_id.to_string(),
                    value: r.reservation.to_value(),
                    token: r.token,
                    buys_token: r.buys_token,
                });
                self.stats.published += 1;
            }
            Outcome::Dlq { reason, error } => {
                tracing::warn!(
                    "DLQ intent {}: {reason}: {error} raw={}",
                    entry.id,
                    truncate(&entry.raw_text(), 512)
                );
                published = Some(PendingOutcome {
                    stream: INTENT_DLQ_STREAM.to_string(),
                    fields: quantum_runtime::cas::owned(dlq_fields(entry, reason, &error, now)),
                });
                self.stats.malformed += 1;
                metrics::counter!(quantum_model::metric_names::BRIDGE_OUTCOMES_TOTAL, "reason" => "malformed")
                    .increment(1);
                metrics::counter!(quantum_model::metric_names::DLQ_ENTRIES_TOTAL, "stream" => INTENT_DLQ_STREAM, "reason" => reason)
                    .increment(1);
            }
            Outcome::Skip(..) | Outcome::Wait => {}
        }
        EntryCommit::Decided {
            record,
            outcome: published,
            reservation: reserved,
            settle,
        }
    }

    /// Reads each entry's fate: one decided by another bridge first published nothing here;
    /// one whose reservation lost a race with another bridge stays pending and is decided again
    /// after the retry delay; a failed step left its entry pending. Returns how many were left
    /// to be decided again.
    ///
    /// # Errors
    /// The first failed step's error, typed: the loop retries, isolates or stops on it.
    fn check_commits(&mut self, committing: &[(&StreamEntry, bool)], fates: Vec<Committed>) -> Result<u64, StageError> {
        let mut failed = None;
        let mut again = 0;
        for ((entry, decided), fate) in committing.iter().zip(fates) {
            match fate {
                Committed::Again => {
                    // Another bridge reserved for the symbol after this one read it: nothing was
                    // written; the intent stays pending and is decided again on fresh state.
                    metrics::counter!(quantum_model::metric_names::BRIDGE_COMMIT_CONFLICTS_TOTAL).increment(1);
                    self.deferred = true;
                    again += 1;
                    self.stats.published = self.stats.published.saturating_sub(1);
                    tracing::info!(
                        "Reservations changed under this bridge (another bridge reserved meanwhile): intent {} is decided again",
                        entry.id
                    );
                }
                Committed::DecidedElsewhere if *decided => {
                    metrics::counter!(quantum_model::metric_names::BRIDGE_COMMIT_CONFLICTS_TOTAL).increment(1);
                    tracing::info!(
                        "Already processed: intent {} was committed by another bridge meanwhile; this one published nothing",
                        entry.id
                    );
                }
                Committed::Done | Committed::Replayed | Committed::DecidedElsewhere => {}
                Committed::Failed(e) => {
                    tracing::warn!("Commit of intent {} failed ({e}); it stays pending", entry.id);
                    failed.get_or_insert(e);
                }
            }
        }
        failed.map_or(Ok(again), Err)
    }
}

/// Removes the reservations found expired, with a warning: each is an order or fill that never
/// reached the executor or the ledger in time.
/// Returns whether it queued any.
async fn queue_expired_reservations(
    pipeline: &fred::clients::Pipeline<Client>,
    view: &BatchView,
) -> Result<bool, Error> {
    let mut any = false;
    for (symbol, in_flight) in &view.in_flight {
        if in_flight.expired.is_empty() {
            continue;
        }
        tracing::warn!(
            "Reservations expired: symbol={symbol} count={} fields={}; removed (their plans or fills never landed)",
            in_flight.expired.len(),
            truncate(&in_flight.expired.join(","), 512)
        );
        metrics::counter!(quantum_model::metric_names::BRIDGE_RESERVATIONS_EXPIRED_TOTAL, "symbol" => symbol.to_string())
            .increment(in_flight.expired.len() as u64);
        quantum_runtime::inflight::queue_release(pipeline, symbol, in_flight.expired.clone()).await?;
        any = true;
    }
    Ok(any)
}

/// How often the running totals are logged.
const STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Logs the running totals, skips counted by reason.
fn log_stats(prefix: &str, s: &BridgeStats) {
    let mut skipped: Vec<_> = s.skipped.iter().collect();
    skipped.sort();
    let skipped: Vec<String> = skipped.iter().map(|(k, v)| format!("{k}={v}")).collect();
    tracing::info!(
        "{prefix}: consumed={} published={} blocked={} ledger_missing_open={} malformed={} replayed={} skipped=[{}]",
        s.consumed,
        s.published,
        s.blocked,
        s.ledger_missing_open,
        s.malformed,
        s.replayed,
        skipped.join(",")
    );
}

/// The record of an outcome, as the replay marker keeps it (see `quantum_model::outcome`).
fn outcome_record(outcome: &Outcome, now_ms: u64) -> OutcomeRecord {
    let record = match outcome {
        Outcome::Publish(plan, _) => {
            let kind = if plan.decision == Decision::Blocked {
                "blocked"
            } else {
                "published"
            };
            let mut r = OutcomeRecord::new(kind)
                .with("plan_id", &plan.plan_id)
                .with("symbol", &plan.symbol)
                .with("side", plan.side)
                .with("qty", plan.qty)
                .with("decision", plan.decision)
                .with("reason", plan.reason_codes.join(","));
            for (name, value) in plan.risk.iter().filter(|(n, _)| n.starts_with("kill_score")) {
                r.set(name, value);
            }
            r
        }
        Outcome::Skip(_, record) => record.clone(),
        Outcome::Dlq { reason, .. } => OutcomeRecord::new("dlq").with("reason", reason),
        Outcome::Wait => OutcomeRecord::new("waiting"),
    };
    record.with("ts", now_ms)
}

/// What a skip is about: the plan it would have been, or an intent that could not be sized.
struct Subject {
    symbol: Symbol,
    side: Side,
    qty: Option<Decimal>,
    /// The plan id's short form, `none` without a quantity.
    plan_id: String,
}

impl Subject {
    fn of(plan: &Plan) -> Self {
        Self {
            symbol: plan.symbol.clone(),
            side: plan.side,
            qty: Some(plan.qty),
            plan_id: plan.plan_id.short().to_string(),
        }
    }

    fn without_qty(intent: &Intent) -> Self {
        Self {
            symbol: intent.symbol.clone(),
            side: intent.side,
            qty: None,
            plan_id: "none".to_string(),
        }
    }
}

/// A skip's record: the reason and the values that decided it.
fn skip_record(subject: &Subject, reason: SkipReason) -> OutcomeRecord {
    let mut r = OutcomeRecord::new("skipped")
        .with("symbol", &subject.symbol)
        .with("side", subject.side);
    if let Some(qty) = subject.qty {
        r.set("qty", qty);
    }
    let r = r.with("reason", reason.code());
    match reason {
        SkipReason::NotAllowlisted => r,
        SkipReason::StrictLedgerMissingBuy | SkipReason::LedgerMissingSell => r.with("ledger", "missing"),
        SkipReason::LedgerUnreadable => r.with("ledger", "unreadable"),
        SkipReason::LedgerFlatSell { last_known_amt } => r.with("ledger", last_known_amt),
        SkipReason::Exposure { exposure_pct, max_pct } => r.with("exposure_pct", exposure_pct).with("max_pct", max_pct),
        SkipReason::EquityUnknown => r.with("equity", "unknown"),
        SkipReason::SellNothingAvailable {
            position_amt,
            in_flight,
        } => r.with("ledger", position_amt).with("in_flight", in_flight),
        SkipReason::Stale { age_ms, max_ms } => r.with("age_ms", age_ms).with("max_ms", max_ms),
    }
}

/// DLQ fields: the source entry id, a reason code, the error text and the raw fields as JSON.
fn dlq_fields(entry: &StreamEntry, reason: &str, error: &str, now: u64) -> Vec<(&'static str, String)> {
    let raw: serde_json::Map<String, serde_json::Value> = entry
        .fields
        .iter()
        .map(|(k, v)| {
            (
                truncate(k, 256).to_string(),
                serde_json::Value::String(truncate(v, 4096).to_string()),
            )
        })
        .collect();
    vec![
        ("source_id", entry.id.clone()),
        ("reason", reason.to_string()),
        ("error", truncate(error, 1024).to_string()),
        ("raw", serde_json::Value::Object(raw).to_string()),
        ("timestamp", now.to_string()),
    ]
}

/// Logs the startup banner and the effective configuration (no secrets).
pub fn log_startup(args: &BridgeArgs, spec: &ConsumerSpec, allowlist: &Allowlist, governor: &GovernorConfig) {
    tracing::info!("{}", "=".repeat(80));
    tracing::info!("Intent Bridge - trade.intent → apply.plan [{BUILD_TAG}]");
    tracing::info!("{}", "=".repeat(80));
    tracing::info!("Redis: {}", args.redis.display());
    tracing::info!("Consumer: {} / {}", spec.group, spec.consumer);
    tracing::info!("Intent stream: {INTENT_STREAM}");
    let shards = args.consumer.stream_shards;
    if shards == StreamShards::ONE {
        tracing::info!("Plan stream: {PLAN_STREAM}");
    } else {
        tracing::info!(
            "Plan stream: {PLAN_STREAM} (STREAM_SHARDS={}, by symbol: {})",
            shards.count(),
            shards.names(PLAN_STREAM).join(", ")
        );
    }
    tracing::info!("Require ledger for OPEN: {}", args.require_ledger_for_open);
    tracing::info!("Skip flat SELL: {}", args.skip_flat_sell);
    tracing::info!("Allowlist: {} (from {})", allowlist.display(), allowlist.source);
    tracing::info!(
        "Governor: mode={} k_block_critical={} k_block_warning={} entry_k_critical={} entry_z_block={} entry_k_fallback={} z_window={} z_min_samples={} z_min_std={} proposal_max_age_s={} missing_proposal={:?}",
        governor.mode.as_str(),
        governor.k_block_critical,
        governor.k_block_warning,
        governor.entry_k_critical,
        governor.entry_z_block,
        governor.entry_k_fallback,
        governor.history_window,
        governor.min_samples,
        governor.z_min_std,
        governor.max_age_secs,
        governor.missing
    );
    tracing::info!(
        "Config: allowlist={} flat_eps={} max_exposure_pct={} allow_unknown_equity={} reservation_ttl_ms={} max_leverage={} idempotency_ttl={} max_intent_age_ms={} batch_size={} block_ms={} claim_idle_ms={} claim_interval_ms={}",
        allowlist.display(),
        args.flat_eps,
        args.max_exposure_pct,
        args.allow_unknown_equity,
        args.reservation_ttl_ms,
        args.max_leverage,
        args.idempotency_ttl,
        args.max_intent_age_ms,
        spec.batch_size,
        spec.block.as_millis(),
        spec.claim_idle.as_millis(),
        spec.claim_interval.as_millis()
    );
    tracing::info!("{}", "=".repeat(80));
}

/// Writes the effective settings to [`BRIDGE_CONFIG_KEY`] for `quantumctl why`. Best effort: a
/// refusal (an ACL without the key) is logged and the bridge runs on.
async fn publish_config(
    writer: &Client,
    args: &BridgeArgs,
    spec: &ConsumerSpec,
    allowlist: &Allowlist,
    governor: &GovernorConfig,
) {
    let mut fields = vec![
        ("allowlist", allowlist.display()),
        ("allowlist_source", allowlist.source.to_string()),
        ("require_ledger_for_open", args.require_ledger_for_open.to_string()),
        ("skip_flat_sell", args.skip_flat_sell.to_string()),
        ("max_exposure_pct", args.max_exposure_pct.to_string()),
        ("allow_unknown_equity", args.allow_unknown_equity.to_string()),
        ("max_intent_age_ms", args.max_intent_age_ms.to_string()),
        ("consumer", spec.consumer.clone()),
        ("build", BUILD_TAG.to_string()),
        ("started_ts", now_ms().to_string()),
    ];
    fields.extend(governor.to_fields());
    let written: Result<(), Error> = writer
        .hset(BRIDGE_CONFIG_KEY, quantum_runtime::cas::owned(fields))
        .await;
    if let Err(e) = written {
        tracing::warn!("Cannot publish the settings to {BRIDGE_CONFIG_KEY} ({e}); quantumctl why will not see them");
    }
}

/// Runs the bridge until `shutdown` fires.
///
/// # Errors
/// Invalid settings, Redis unreachable or refusing the bridge's credentials or rights, the HTTP port taken, or a fatal stage error.
pub async fn run(args: BridgeArgs, shutdown: CancellationToken) -> Result<BridgeStats, BridgeError> {
    let allowlist = args.allowlist().map_err(BridgeError::Config)?;
    let gates = args.gate_config().map_err(BridgeError::Config)?;
    let governor = args.governor.config().map_err(BridgeError::Config)?;
    args.consumer
        .check_age_limit("INTENT_BRIDGE_MAX_INTENT_AGE_MS", args.max_intent_age_ms)
        .map_err(BridgeError::Config)?;
    // A replay (a group reset) re-reads every entry the stream holds: each must still have its
    // marker, or be refused as stale before it is sized, or it would be published again.
    let retention = args.consumer.retention_ms;
    let unbounded = retention == 0 || retention / 1000 > args.idempotency_ttl;
    if unbounded && args.max_intent_age_ms == 0 {
        return Err(BridgeError::Config(format!(
            "STREAM_RETENTION_MS ({retention}) keeps intents longer than INTENT_BRIDGE_IDEMPOTENCY_TTL ({} s) \
             remembers them, and INTENT_BRIDGE_MAX_INTENT_AGE_MS=0 lets old ones through: a replay would \
             publish them again; set a retention of at most the TTL, or an age limit",
            args.idempotency_ttl
        )));
    }
    let spec = ConsumerSpec::new(
        INTENT_STREAM,
        INTENT_GROUP,
        INTENT_DLQ_STREAM,
        "intent_bridge",
        &args.consumer,
    );
    log_startup(&args, &spec, &allowlist, &governor);
    allowlist.log_notices();
    if gates.allowlist.is_empty() {
        tracing::warn!(
            "{} is empty: every intent will be skipped as not allowlisted",
            allowlist.source
        );
    }
    let readiness = http::serve(args.http.metrics_bind, args.metrics_port, shutdown.clone()).await?;
    let conns = Connections::connect(&args.redis, 1, &shutdown).await?;
    quantum_runtime::sharding::agree(&conns.writer, args.consumer.stream_shards, &shutdown).await?;
    readiness.watch(conns.writer.clone(), std::slice::from_ref(&spec));
    let limits = IntentLimits {
        max_leverage: Some(args.max_leverage),
        max_qty: args.max_qty.clone().unwrap_or_default(),
        max_notional_usd: args.max_notional_usd.clone(),
    };
    metrics::gauge!(quantum_model::metric_names::BRIDGE_ALLOWLIST_SYMBOLS).set(gates.allowlist.len() as f64);
    publish_config(&conns.writer, &args, &spec, &allowlist, &governor).await;
    let mut bridge = IntentBridge::new(conns.writer.clone(), gates, limits, args.idempotency_ttl);
    bridge.governor = governor;
    bridge.max_intent_age_ms = args.max_intent_age_ms;
    bridge.reservation_ttl_ms = args.reservation_ttl_ms;
    bridge.replica_wait = spec.replica_wait.clone();
    bridge.shards = args.consumer.stream_shards;
    bridge.plan_symbols = Some(quantum_runtime::window::SymbolWindow::spawn(
        quantum_model::metric_names::APPLY_PLAN_SYMBOLS,
        std::time::Duration::from_secs(300),
        shutdown.clone(),
    ));
    consumer::run(&conns.readers[0], &conns.writer, &spec, &mut bridge, &shutdown).await?;
    log_stats("Intent Bridge stopped", &bridge.stats);
    Ok(bridge.stats)
}
