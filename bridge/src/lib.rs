//! The intent bridge: `quantum:stream:trade.intent` → gates → `quantum:stream:apply.plan`.
//!
//! Each batch costs two round trips: one pipelined read of the ledgers, portfolio and mark
//! prices it needs, and one MULTI/EXEC that publishes every plan and DLQ entry together with
//! the XACK of the whole batch, so a crash can neither lose nor duplicate a plan.

pub mod gate;

use std::collections::{HashMap, HashSet};

use clap::Parser;
use fred::prelude::*;
use fred::types::Value;
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;

use quantum_common::config::{parse_flag, parse_non_negative, ConnectError, ConsumerArgs, RedisArgs};
use quantum_common::consumer::{self, BatchHandler, Connections, ConsumerSpec};
use quantum_common::contract::{
    ledger_key, INTENT_DLQ_STREAM, INTENT_GROUP, INTENT_STREAM, MARK_PRICE_KEY, PLAN_STREAM, PORTFOLIO_KEY,
};
use quantum_common::fields::{opt_text, truncate, StreamEntry};
use quantum_common::http::{self, HttpArgs};
use quantum_common::intent::{Intent, IntentError, IntentLimits};
use quantum_common::plan::Plan;
use quantum_common::time::now_secs;
use quantum_common::trace;
use quantum_common::types::{parse_decimal, Side, Symbol};

use gate::{exposure_pct, gate, GateConfig, GateOutcome, LedgerView, SkipReason};

/// Deployment marker operators grep for to confirm the ledger-open fix is running.
pub const BUILD_TAG: &str = "intent-bridge-ledger-open-v1";

/// Command line and environment of `quantum-intent-bridge`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "quantum-intent-bridge",
    version,
    about = "Gates trade intents and publishes apply plans.",
    after_help = quantum_common::trace::HELP
)]
pub struct BridgeArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    /// Port of /metrics, /healthz and /readyz (0: any free port, logged).
    #[arg(long, env = "INTENT_BRIDGE_METRICS_PORT", default_value_t = 9101)]
    pub metrics_port: u16,
    /// Symbols allowed to trade, comma separated.
    #[arg(long, env = "INTENT_BRIDGE_ALLOWLIST", default_value = "BTCUSDT")]
    pub allowlist: String,
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
    /// Highest leverage an intent may ask for; more goes to the DLQ.
    #[arg(long, env = "INTENT_BRIDGE_MAX_LEVERAGE", default_value = "125", value_parser = parse_non_negative)]
    pub max_leverage: Decimal,
    /// How long (seconds) a processed intent id is remembered, so a replayed intent (a group
    /// reset, a re-added entry) is never gated and published a second time.
    #[arg(long, env = "INTENT_BRIDGE_IDEMPOTENCY_TTL", default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(1..))]
    pub idempotency_ttl: u64,
    /// Log level when RUST_LOG is unset (error, warn, info, debug, trace).
    #[arg(long, env = "INTENT_BRIDGE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl BridgeArgs {
    /// The gate settings these arguments describe; invalid allowlist entries are reported.
    pub fn gate_config(&self) -> Result<GateConfig, String> {
        let mut allowlist = HashSet::new();
        for raw in self.allowlist.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            allowlist.insert(Symbol::parse(raw).map_err(|e| format!("INTENT_BRIDGE_ALLOWLIST: {e}"))?);
        }
        Ok(GateConfig {
            allowlist,
            require_ledger_for_open: self.require_ledger_for_open,
            skip_flat_sell: self.skip_flat_sell,
            flat_eps: self.flat_eps,
            max_exposure_pct: self.max_exposure_pct,
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
    #[error("cannot serve the HTTP endpoints: {0}")]
    Http(#[from] std::io::Error),
}

/// Counts of what the bridge did, by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeStats {
    pub consumed: u64,
    /// Intents seen before (replays), acknowledged without processing.
    pub replayed: u64,
    pub published: u64,
    pub ledger_missing_open: u64,
    pub skipped: HashMap<&'static str, u64>,
    pub malformed: u64,
}

/// The batch handler.
pub struct IntentBridge {
    writer: Client,
    gates: GateConfig,
    limits: IntentLimits,
    idempotency_ttl: u64,
    last_summary: std::time::Instant,
    /// Distinct symbols with published plans over the last 5 minutes (a live gauge).
    plan_symbols: Option<quantum_common::window::SymbolWindow>,
    /// Allowlisted symbols in a fixed order, for the per-batch ledger read.
    allowlist: Vec<Symbol>,
    pub stats: BridgeStats,
}

/// What the bridge reads from Redis once per batch.
#[derive(Debug, Default)]
struct BatchView {
    ledgers: HashMap<Symbol, LedgerView>,
    exposure_pct: Decimal,
    marks: HashMap<Symbol, Decimal>,
}

enum Outcome {
    Publish(Box<Plan>),
    Dlq {
        reason: &'static str,
        error: String,
    },
    /// Refused by a gate, with the reason code.
    Skip(&'static str),
}

impl Outcome {
    /// Ends the intent's span with what became of it.
    fn record(&self, span: &tracing::Span) {
        match self {
            Self::Publish(plan) => {
                span.record("quantum.plan_id", plan.plan_id.as_str());
                trace::record_outcome(span, "published", false);
            }
            Self::Dlq { reason, .. } => trace::record_outcome(span, reason, true),
            Self::Skip(reason) => trace::record_outcome(span, reason, false),
        }
    }
}

impl IntentBridge {
    /// A bridge writing through `writer`.
    pub fn new(writer: Client, gates: GateConfig, limits: IntentLimits, idempotency_ttl: u64) -> Self {
        let mut allowlist: Vec<Symbol> = gates.allowlist.iter().cloned().collect();
        allowlist.sort();
        Self {
            writer,
            gates,
            limits,
            idempotency_ttl,
            last_summary: std::time::Instant::now(),
            plan_symbols: None,
            allowlist,
            stats: BridgeStats::default(),
        }
    }

    /// Which entries of the batch were processed before (one MGET).
    async fn already_processed(&self, batch: &[StreamEntry]) -> Result<Vec<bool>, Error> {
        let keys: Vec<String> = batch.iter().map(|e| seen_key(&e.id)).collect();
        let values: Vec<Value> = self.writer.mget(keys).await?;
        Ok(values.iter().map(|v| !v.is_null()).collect())
    }

    async fn read_view(&self, intents: &[Result<Intent, IntentError>]) -> Result<BatchView, Error> {
        let parsed = || intents.iter().filter_map(|i| i.as_ref().ok());
        let any_buy = parsed().any(|i| i.side == Side::Buy && self.gates.allowlist.contains(&i.symbol));
        // Exposure spans every allowlisted ledger; without a BUY only the batch's symbols matter.
        let ledger_symbols: Vec<Symbol> = if any_buy {
            self.allowlist.clone()
        } else {
            let set: HashSet<&Symbol> = parsed()
                .map(|i| &i.symbol)
                .filter(|s| self.gates.allowlist.contains(*s))
                .collect();
            set.into_iter().cloned().collect()
        };
        let mark_symbols: Vec<Symbol> = {
            let set: HashSet<&Symbol> = parsed().filter(|i| i.needs_mark_price()).map(|i| &i.symbol).collect();
            set.into_iter().cloned().collect()
        };
        if ledger_symbols.is_empty() && mark_symbols.is_empty() {
            return Ok(BatchView::default());
        }

        let pipeline = self.writer.pipeline();
        for symbol in &ledger_symbols {
            pipeline
                .hmget::<(), _, _>(ledger_key(symbol), vec!["position_amt", "notional_usd"])
                .await?;
        }
        pipeline.hget::<(), _, _>(PORTFOLIO_KEY, "equity_usd").await?;
        for symbol in &mark_symbols {
            pipeline.hget::<(), _, _>(MARK_PRICE_KEY, symbol.as_str()).await?;
        }
        let replies: Vec<Value> = pipeline.all().await?;
        let mut replies = replies.into_iter();

        let mut view = BatchView::default();
        let mut total_notional = Decimal::ZERO;
        for symbol in ledger_symbols {
            let pair = replies.next().map(Value::into_array).unwrap_or_default();
            let amt = pair.first().and_then(opt_text);
            let ledger = match amt.as_deref().map(|v| parse_decimal("position_amt", v)) {
                None => LedgerView::Missing,
                Some(Ok(amt)) => LedgerView::Known(amt),
                Some(Err(e)) => {
                    tracing::warn!("Ledger of {symbol} unreadable ({e}); treating it as unknown");
                    LedgerView::Missing
                }
            };
            if let Some(notional) = pair
                .get(1)
                .and_then(opt_text)
                .and_then(|v| parse_decimal("notional_usd", &v).ok())
            {
                total_notional += notional.abs();
            }
            view.ledgers.insert(symbol, ledger);
        }
        let equity = replies
            .next()
            .and_then(|v| opt_text(&v))
            .and_then(|v| parse_decimal("equity_usd", &v).ok());
        view.exposure_pct = if any_buy {
            exposure_pct(total_notional, equity)
        } else {
            Decimal::ZERO
        };
        for symbol in mark_symbols {
            if let Some(mark) = replies
                .next()
                .and_then(|v| opt_text(&v))
                .and_then(|v| parse_decimal("mark", &v).ok())
            {
                view.marks.insert(symbol, mark);
            }
        }
        Ok(view)
    }

    fn decide(
        &mut self,
        intent: Result<Intent, IntentError>,
        view: &BatchView,
        now: u64,
        span: &tracing::Span,
    ) -> Outcome {
        let intent = match intent {
            Ok(intent) => intent,
            Err(e) => {
                return Outcome::Dlq {
                    reason: e.reason(),
                    error: e.to_string(),
                }
            }
        };
        let qty = match intent.quantity(view.marks.get(&intent.symbol).copied()) {
            Ok(qty) => qty,
            Err(e) => {
                return Outcome::Dlq {
                    reason: e.reason(),
                    error: e.to_string(),
                }
            }
        };
        let plan = Plan::from_intent(&intent, qty, now);
        let (sym, side, short) = (&intent.symbol, intent.side, plan.plan_id.short());
        span.record("quantum.symbol", sym.as_str());
        span.record("quantum.side", side.as_str());
        let ledger = view.ledgers.get(sym).copied().unwrap_or(LedgerView::Missing);
        match gate(&self.gates, sym, side, ledger, view.exposure_pct) {
            GateOutcome::Publish { ledger_missing_open } => {
                metrics::counter!("quantum_bridge_outcomes_total", "reason" => "published").increment(1);
                if let Some(window) = &self.plan_symbols {
                    window.saw(sym);
                }
                metrics::counter!("quantum_bridge_plans_published_total", "symbol" => sym.to_string(), "side" => side.as_str(), "decision" => "EXECUTE")
                    .increment(1);
                if ledger_missing_open {
                    metrics::counter!("quantum_bridge_ledger_missing_open_total", "symbol" => sym.to_string())
                        .increment(1);
                    self.stats.ledger_missing_open += 1;
                    tracing::info!("LEDGER_MISSING_OPEN allowed: symbol={sym} side=BUY plan_id={short}");
                }
                tracing::info!(
                    "Publishing plan for {sym} {side}: leverage={}, sl={}, tp={} plan_id={short} qty={qty}",
                    plan.leverage,
                    display_opt(plan.stop_loss),
                    display_opt(plan.take_profit)
                );
                Outcome::Publish(Box::new(plan))
            }
            GateOutcome::Skip(reason) => {
                metrics::counter!("quantum_bridge_outcomes_total", "reason" => reason.code()).increment(1);
                if side == Side::Sell && reason != SkipReason::NotAllowlisted {
                    metrics::counter!("quantum_bridge_sell_blocked_total", "symbol" => sym.to_string(), "reason" => reason.code())
                        .increment(1);
                }
                *self.stats.skipped.entry(reason.code()).or_default() += 1;
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
                }
                Outcome::Skip(reason.code())
            }
        }
    }
}

fn display_opt(value: Option<Decimal>) -> String {
    value.map_or_else(|| "None".to_string(), |v| v.to_string())
}

impl BatchHandler for IntentBridge {
    async fn handle(&mut self, batch: Vec<StreamEntry>) -> Result<(), Error> {
        let started = std::time::Instant::now();
        let seen = self.already_processed(&batch).await?;
        let intents: Vec<Option<Result<Intent, IntentError>>> = batch
            .iter()
            .zip(&seen)
            .map(|(e, seen)| (!seen).then(|| Intent::parse(e, &self.limits)))
            .collect();
        let fresh: Vec<Result<Intent, IntentError>> = intents.iter().flatten().cloned().collect();
        let view = self.read_view(&fresh).await?;
        let now = now_secs();
        let stats_before = self.stats.clone();

        let trx = self.writer.multi();
        let mut ids = Vec::with_capacity(batch.len());
        // Each intent's span ends once its plan is committed (only kept while tracing is on).
        let mut spans = Vec::new();
        for (entry, intent) in batch.iter().zip(intents) {
            ids.push(entry.id.clone());
            let span = trace::entry_span("intent_bridge.intent", INTENT_STREAM, entry);
            let Some(intent) = intent else {
                trace::record_outcome(&span, "replayed", false);
                self.stats.replayed += 1;
                tracing::info!(
                    "Already processed: intent {} (a replay); acknowledged without publishing",
                    entry.id
                );
                continue;
            };
            trx.set::<(), _, _>(
                seen_key(&entry.id),
                "1",
                Some(Expiration::EX(self.idempotency_ttl as i64)),
                None,
                false,
            )
            .await?;
            let outcome = span.in_scope(|| self.decide(intent, &view, now, &span));
            outcome.record(&span);
            match outcome {
                Outcome::Publish(plan) => {
                    let mut fields = plan.to_fields();
                    trace::propagate(&span, Some(entry), &mut fields);
                    trx.xadd::<(), _, _, _, _>(PLAN_STREAM, false, None, "*", fields)
                        .await?;
                    self.stats.published += 1;
                }
                Outcome::Dlq { reason, error } => {
                    tracing::warn!(
                        "DLQ intent {}: {reason}: {error} raw={}",
                        entry.id,
                        truncate(&entry.raw_text(), 512)
                    );
                    trx.xadd::<(), _, _, _, _>(
                        INTENT_DLQ_STREAM,
                        false,
                        None,
                        "*",
                        dlq_fields(entry, reason, &error, now),
                    )
                    .await?;
                    self.stats.malformed += 1;
                    metrics::counter!("quantum_bridge_outcomes_total", "reason" => "malformed").increment(1);
                    metrics::counter!("quantum_dlq_entries_total", "stream" => INTENT_DLQ_STREAM, "reason" => reason)
                        .increment(1);
                }
                Outcome::Skip(_) => {}
            }
            if !span.is_disabled() {
                spans.push(span);
            }
        }
        consumer::queue_ack(&trx, INTENT_STREAM, INTENT_GROUP, &ids).await?;
        if let Err(e) = trx.exec::<Value>(true).await {
            // Nothing was published or acked: the whole batch is redelivered, so undo the counts.
            self.stats = stats_before;
            trace::record_batch_failed(&spans);
            return Err(e);
        }
        self.stats.consumed += batch.len() as u64;
        metrics::counter!("quantum_bridge_intents_consumed_total").increment(batch.len() as u64);
        metrics::histogram!("quantum_bridge_batch_size").record(batch.len() as f64);
        metrics::histogram!("quantum_bridge_batch_seconds").record(started.elapsed().as_secs_f64());
        if let Some(window) = &self.plan_symbols {
            window.publish();
        }
        if self.last_summary.elapsed() >= STATS_INTERVAL {
            self.last_summary = std::time::Instant::now();
            log_stats("Intent Bridge stats", &self.stats);
        }
        Ok(())
    }
}

/// How often the running totals are logged.
const STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Logs the running totals, skips counted by reason.
fn log_stats(prefix: &str, s: &BridgeStats) {
    let mut skipped: Vec<_> = s.skipped.iter().collect();
    skipped.sort();
    let skipped: Vec<String> = skipped.iter().map(|(k, v)| format!("{k}={v}")).collect();
    tracing::info!(
        "{prefix}: consumed={} published={} ledger_missing_open={} malformed={} replayed={} skipped=[{}]",
        s.consumed,
        s.published,
        s.ledger_missing_open,
        s.malformed,
        s.replayed,
        skipped.join(",")
    );
}

/// The marker that an intent entry was processed (kept for INTENT_BRIDGE_IDEMPOTENCY_TTL).
pub fn seen_key(entry_id: &str) -> String {
    format!("quantum:intent_bridge:seen:{entry_id}")
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
pub fn log_startup(args: &BridgeArgs, spec: &ConsumerSpec) {
    tracing::info!("{}", "=".repeat(80));
    tracing::info!("Intent Bridge - trade.intent → apply.plan [{BUILD_TAG}]");
    tracing::info!("{}", "=".repeat(80));
    tracing::info!("Redis: {}", args.redis.display());
    tracing::info!("Consumer: {} / {}", spec.group, spec.consumer);
    tracing::info!("Intent stream: {INTENT_STREAM}");
    tracing::info!("Plan stream: {PLAN_STREAM}");
    tracing::info!("Require ledger for OPEN: {}", args.require_ledger_for_open);
    tracing::info!("Skip flat SELL: {}", args.skip_flat_sell);
    tracing::info!(
        "Config: allowlist={} flat_eps={} max_exposure_pct={} max_leverage={} idempotency_ttl={} batch_size={} block_ms={} claim_idle_ms={} claim_interval_ms={}",
        args.allowlist,
        args.flat_eps,
        args.max_exposure_pct,
        args.max_leverage,
        args.idempotency_ttl,
        spec.batch_size,
        spec.block.as_millis(),
        spec.claim_idle.as_millis(),
        spec.claim_interval.as_millis()
    );
    tracing::info!("{}", "=".repeat(80));
}

/// Runs the bridge until `shutdown` fires.
pub async fn run(args: BridgeArgs, shutdown: CancellationToken) -> Result<BridgeStats, BridgeError> {
    let gates = args.gate_config().map_err(BridgeError::Config)?;
    if gates.allowlist.is_empty() {
        tracing::warn!("INTENT_BRIDGE_ALLOWLIST is empty: every intent will be skipped as not allowlisted");
    }
    let spec = ConsumerSpec::new(INTENT_STREAM, INTENT_GROUP, "intent_bridge", &args.consumer);
    log_startup(&args, &spec);
    let readiness = http::serve(args.http.metrics_bind, args.metrics_port, shutdown.clone()).await?;
    let conns = Connections::connect(&args.redis, &shutdown).await?;
    readiness.watch(conns.writer.clone(), INTENT_STREAM, INTENT_GROUP);
    let limits = IntentLimits {
        max_leverage: args.max_leverage,
    };
    metrics::gauge!("quantum_bridge_allowlist_symbols")
        .set(args.gate_config().map(|g| g.allowlist.len()).unwrap_or(0) as f64);
    let mut bridge = IntentBridge::new(conns.writer.clone(), gates, limits, args.idempotency_ttl);
    bridge.plan_symbols = Some(quantum_common::window::SymbolWindow::spawn(
        "quantum_apply_plan_symbols",
        std::time::Duration::from_secs(300),
        shutdown.clone(),
    ));
    consumer::run(&conns.reader, &conns.writer, &spec, &mut bridge, &shutdown).await?;
    log_stats("Intent Bridge stopped", &bridge.stats);
    Ok(bridge.stats)
}
