//! The intent executor: `quantum:stream:apply.plan` → venue → `apply.result` + `ledger.commit`.
//!
//! Exactly once per plan: before the venue call the executor claims an order record keyed by
//! the client order id (derived from the plan id); the venue is idempotent by that id; after
//! the call one script per order, run only while the record is NEW, marks it finished, appends
//! its fills to ledger.commit and its result to apply.result, and the batch's scripts go in one
//! MULTI/EXEC with the plans' acknowledgement. A redelivered plan whose order is finished is
//! only acknowledged; a stale one is never placed, only looked up; orders whose plan vanished
//! are finished by the sweep.
//!
//! Layout: `lib.rs` holds the settings and the batch handler (triage → claim → venue →
//! commit → report); `order` the order record's scripts (claim, finalize); `sweep` the pass
//! that finishes orders left NEW; `venue` the venue boundary; `paper` the paper venue;
//! `binance` the live venue (Binance USD-M futures).

pub mod binance;
mod order;
pub mod paper;
mod sweep;
pub mod venue;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use fred::prelude::*;
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, Span};

use quantum_model::contract::{EXECUTOR_CONFIG_KEY, PLAN_DLQ_STREAM, PLAN_GROUP, PLAN_STREAM, RESULT_STREAM};
use quantum_model::execution_result::ExecutionResult;
use quantum_model::labels::symbol_label;
use quantum_model::plan::Plan;
use quantum_model::shards::StreamShards;
use quantum_model::stream_entry::StreamEntry;
use quantum_model::time::{entry_age_ms, now_ms};
use quantum_model::types::{Decision, PlanId, Symbol};
use quantum_runtime::append_once::{Once, MARKER_TTL_SECS};
use quantum_runtime::cas::owned;
use quantum_runtime::config::{parse_non_negative, parse_positive, Allowlist, ConnectError, ConsumerArgs, RedisArgs};
use quantum_runtime::consumer::{self, BatchHandler, Connections, ConsumerSpec};
use quantum_runtime::failure::StageError;
use quantum_runtime::http::{self, HttpArgs};
use quantum_runtime::trace;

use order::{ClaimState, OrderRef};
use paper::{parse_reference_prices, PaperConfig, PaperVenue, DEFAULT_REFERENCE_PRICES};
use venue::{OrderOutcome, OrderRequest, Venue, VenueError};

/// Where orders go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// The built-in paper venue (deterministic, state in Redis).
    Paper,
    /// Binance USD-M futures (BINANCE_ENV: testnet by default, or mainnet).
    Live,
}

/// Command line and environment of `quantum-intent-executor`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "quantum-intent-executor",
    version,
    about = "Executes apply plans exactly once and reports fills to the ledger.",
    after_help = quantum_runtime::trace::HELP
)]
pub struct ExecutorArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub binance: binance::BinanceArgs,
    /// Port of /metrics, /healthz and /readyz (0: any free port, logged).
    #[arg(long, env = "INTENT_EXECUTOR_METRICS_PORT", default_value_t = 9102)]
    pub metrics_port: u16,
    /// Symbols allowed to trade, comma separated: the one allowlist every service reads; a
    /// plan for another symbol is answered executed=false [default: BTCUSDT].
    #[arg(long, env = "SYMBOL_ALLOWLIST")]
    pub symbol_allowlist: Option<String>,
    /// Deprecated: use SYMBOL_ALLOWLIST (still read; an error when the two disagree).
    #[arg(long = "allowlist", env = "INTENT_EXECUTOR_ALLOWLIST")]
    pub legacy_allowlist: Option<String>,
    /// Plans older than this (ms, by their entry id) are answered executed=false, reason
    /// `stale`, instead of placing an order late. Must exceed STREAM_CLAIM_IDLE_MS +
    /// STREAM_BLOCK_MS (plans reclaimed from a dead replica are that old). 0: no limit.
    #[arg(long, env = "INTENT_EXECUTOR_MAX_PLAN_AGE_MS", default_value_t = 120_000)]
    pub max_plan_age_ms: u64,
    /// How long (ms) an executor's claim on an order keeps other executors from calling the
    /// venue for it or finalizing it (the claim is taken over once it runs out). Unset: the
    /// value of STREAM_CLAIM_IDLE_MS, after which a paused executor's plans are reclaimed anyway.
    #[arg(long, env = "INTENT_EXECUTOR_ORDER_LEASE_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub order_lease_ms: Option<u64>,
    /// How often (ms) the sweep looks for orders left NEW (their plan was trimmed or deleted
    /// after the venue call) and finalizes them from the venue's record.
    #[arg(long, env = "INTENT_EXECUTOR_SWEEP_INTERVAL_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub sweep_interval_ms: u64,
    /// Orders left NEW this long (ms) after their claim are swept. Must exceed
    /// INTENT_EXECUTOR_MAX_PLAN_AGE_MS: only then can no executor still place them.
    #[arg(long, env = "INTENT_EXECUTOR_SWEEP_GRACE_MS", default_value_t = 300_000)]
    pub sweep_grace_ms: u64,
    /// Venue: paper (default) or live.
    #[arg(
        long,
        env = "INTENT_EXECUTOR_MODE",
        value_enum,
        default_value = "paper",
        ignore_case = true
    )]
    pub mode: Mode,
    /// Seed of the paper venue's price walk.
    #[arg(long, env = "PAPER_SEED", default_value_t = 42)]
    pub paper_seed: u64,
    /// Paper starting prices, SYMBOL=price comma separated.
    #[arg(long, env = "PAPER_REFERENCE_PRICES", default_value = DEFAULT_REFERENCE_PRICES)]
    pub paper_reference_prices: String,
    /// Paper starting price of symbols not listed in PAPER_REFERENCE_PRICES.
    #[arg(long, env = "PAPER_DEFAULT_PRICE", default_value = "100", value_parser = parse_positive)]
    pub paper_default_price: Decimal,
    /// Paper slippage against the mark, in basis points.
    #[arg(long, env = "PAPER_SLIPPAGE_BPS", default_value = "2", value_parser = parse_non_negative)]
    pub paper_slippage_bps: Decimal,
    /// Paper taker fee, in basis points of notional.
    #[arg(long, env = "PAPER_FEE_BPS", default_value = "5", value_parser = parse_non_negative)]
    pub paper_fee_bps: Decimal,
    /// Paper quantity step: order quantities are rounded down to a multiple of it.
    #[arg(long, env = "PAPER_QTY_STEP", default_value = "0.001", value_parser = parse_positive)]
    pub paper_qty_step: Decimal,
    /// Paper price tick.
    #[arg(long, env = "PAPER_PRICE_TICK", default_value = "0.0001", value_parser = parse_positive)]
    pub paper_price_tick: Decimal,
    /// Paper account equity published to quantum:state:portfolio when none is set.
    #[arg(long, env = "PAPER_EQUITY_USD", default_value = "100000", value_parser = parse_positive)]
    pub paper_equity_usd: Decimal,
    /// Log level when RUST_LOG is unset.
    #[arg(long, env = "INTENT_EXECUTOR_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl ExecutorArgs {
    /// The allowlist: `SYMBOL_ALLOWLIST`, or the deprecated `INTENT_EXECUTOR_ALLOWLIST`.
    ///
    /// # Errors
    /// An invalid symbol, or the two settings disagreeing.
    pub fn allowlist(&self) -> Result<Allowlist, String> {
        Allowlist::resolve(
            self.symbol_allowlist.as_deref(),
            "INTENT_EXECUTOR_ALLOWLIST",
            self.legacy_allowlist.as_deref(),
        )
    }

    /// The paper venue settings.
    ///
    /// # Errors
    /// Unreadable `PAPER_REFERENCE_PRICES`.
    pub fn paper_config(&self) -> Result<PaperConfig, String> {
        Ok(PaperConfig {
            seed: self.paper_seed,
            reference_prices: parse_reference_prices(&self.paper_reference_prices)
                .map_err(|e| format!("PAPER_REFERENCE_PRICES: {e}"))?,
            default_price: self.paper_default_price,
            slippage_bps: self.paper_slippage_bps,
            fee_bps: self.paper_fee_bps,
            qty_step: self.paper_qty_step,
            price_tick: self.paper_price_tick,
            equity_usd: self.paper_equity_usd,
        })
    }
}

/// Why the executor stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("Redis refused an operation the executor needs: {0}")]
    Redis(#[from] Error),
    #[error("stopped: {0}")]
    Stage(#[from] quantum_runtime::failure::StageError),
    #[error("cannot serve the HTTP endpoints: {0}")]
    Http(#[from] std::io::Error),
    #[error("venue: {0}")]
    Venue(#[from] venue::VenueError),
    #[error(
        "the venue holds {0} order(s) or trade(s) the order records cannot explain (RECONCILE_MISMATCH lines); \
         refusing to trade until an operator has looked (docs/venues.md)"
    )]
    Reconcile(usize),
}

/// Counts of what the executor did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutorStats {
    pub filled: u64,
    pub rejected: u64,
    pub not_executed: u64,
    pub duplicates: u64,
    pub malformed: u64,
}

impl ExecutorStats {
    /// The counts of two executors together (the shards of one process).
    fn add(self, other: &Self) -> Self {
        Self {
            filled: self.filled + other.filled,
            rejected: self.rejected + other.rejected,
            not_executed: self.not_executed + other.not_executed,
            duplicates: self.duplicates + other.duplicates,
            malformed: self.malformed + other.malformed,
        }
    }
}

/// Why a plan is answered without an order (which counter it went to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Malformed,
    NotExecuted,
}

/// The batch handler.
pub struct Executor<V: Venue> {
    writer: Client,
    venue: V,
    /// Plans for other symbols are refused (other producers write apply.plan too).
    allowlist: Allowlist,
    /// Plans older than this (ms, by their entry id) are refused as stale; 0: no limit.
    pub max_plan_age_ms: u64,
    pub stats: ExecutorStats,
    /// Distinct symbols with fills over the last 5 minutes (a live gauge).
    executing_symbols: Option<quantum_runtime::window::SymbolWindow>,
    /// This executor's name on its order claims, and their lease.
    pub claimant: order::Claimant,
    /// Whether the last batch left plans pending because another executor holds their orders.
    deferred: bool,
    /// The shard this executor reads, and where its results and fills go.
    pub streams: order::Streams,
}

enum Step {
    /// Record a result (no order involved) and acknowledge.
    Result(ExecutionResult, Answer),
    /// Triage's verdict, resolved by the claim: an order to claim; `stale` holds the reason
    /// when the plan is too old to place.
    Claim(Box<Plan>, Option<String>),
    /// Claimed: place the order (the venue returns the first outcome if it has it already).
    Place(Box<Plan>),
    /// Stale, but claimed before a crash: take the venue's outcome, never place it late.
    Recover(Box<Plan>, String),
    /// Already handled earlier: acknowledge only.
    Ack,
    /// Finished earlier, its outbox not yet published (a crash after the finalize): publish
    /// it, then acknowledge.
    Publish(Box<order::Outbox>),
    /// Another executor holds its order under a lease: leave the plan pending, look again later.
    Leased,
}

impl Step {
    fn order(&self) -> Option<&Plan> {
        match self {
            Self::Place(plan) | Self::Recover(plan, _) => Some(plan),
            _ => None,
        }
    }
}

impl<V: Venue> Executor<V> {
    /// An executor placing orders on `venue` for the symbols of `allowlist`.
    pub fn new(writer: Client, venue: V, allowlist: Allowlist) -> Self {
        Self {
            writer,
            venue,
            allowlist,
            max_plan_age_ms: 0,
            stats: ExecutorStats::default(),
            executing_symbols: None,
            claimant: order::Claimant {
                owner: "intent_executor".to_string(),
                lease_ms: 60_000,
            },
            deferred: false,
            streams: order::Streams::default(),
        }
    }

    fn triage(&mut self, entry: &StreamEntry, seen: &mut HashSet<String>, span: &Span) -> Step {
        let plan = match Plan::parse(entry) {
            Ok(plan) => plan,
            Err(e) => {
                trace::record_outcome(span, "malformed", true);
                self.stats.malformed += 1;
                metrics::counter!(quantum_model::metric_names::EXECUTOR_PLANS_TOTAL, "decision" => "INVALID", "outcome" => "malformed")
                    .increment(1);
                tracing::warn!("Malformed plan {}: {e}", entry.id);
                let get = |k: &str| entry.get(k).unwrap_or_default().to_string();
                return Step::Result(
                    ExecutionResult::not_executed(
                        &get("plan_id"),
                        &get("symbol"),
                        &get("side"),
                        entry.get("decision").unwrap_or("INVALID"),
                        format!("malformed plan (entry {}): {e}", entry.id),
                    ),
                    Answer::Malformed,
                );
            }
        };
        span.record("quantum.symbol", plan.symbol.as_str());
        span.record("quantum.side", plan.side.as_str());
        span.record("quantum.plan_id", plan.plan_id.as_str());
        if !seen.insert(plan.plan_id.to_string()) {
            trace::record_outcome(span, "duplicate", false);
            self.stats.duplicates += 1;
            metrics::counter!(quantum_model::metric_names::EXECUTOR_PLANS_TOTAL, "decision" => plan.decision.as_str(), "outcome" => "duplicate").increment(1);
            tracing::info!(
                "Duplicate plan {} for {} skipped: twice in one batch",
                plan.plan_id,
                plan.symbol
            );
            return Step::Ack;
        }
        if plan.decision != Decision::Execute {
            let reason = plan
                .reason
                .clone()
                .unwrap_or_else(|| format!("decision {}", plan.decision));
            return self.refuse(&plan, span, "not_executed", reason);
        }
        if !self.allowlist.contains(&plan.symbol) {
            let reason = format!("symbol_not_in_allowlist:{}", plan.symbol);
            return self.refuse(&plan, span, "not_allowlisted", reason);
        }
        let age_ms = entry_age_ms(&entry.id, now_ms());
        if self.max_plan_age_ms > 0 && age_ms > self.max_plan_age_ms {
            // After an outage the backlog is not fired at the market hours late.
            let reason = format!(
                "stale: plan age {age_ms} ms > INTENT_EXECUTOR_MAX_PLAN_AGE_MS={}",
                self.max_plan_age_ms
            );
            // Its order may still have been placed before a crash: the claim tells.
            return Step::Claim(Box::new(plan), Some(reason));
        }
        Step::Claim(Box::new(plan), None)
    }

    /// A not-executed plan whose answer the append-once step found there before was a replay:
    /// it is counted as a duplicate, not a second answer. `appended` has one flag per answer,
    /// in step order.
    fn count_replayed_answers(&mut self, steps: &[Step], appended: &[bool]) {
        let answers = steps.iter().filter(|s| matches!(s, Step::Result(..)));
        for (step, appended) in answers.zip(appended) {
            if let (Step::Result(result, answer), false) = (step, appended) {
                let counter = match answer {
                    Answer::Malformed => &mut self.stats.malformed,
                    Answer::NotExecuted => &mut self.stats.not_executed,
                };
                *counter = counter.saturating_sub(1);
                self.stats.duplicates += 1;
                tracing::info!(
                    "Duplicate plan {} for {} skipped: already answered ({})",
                    result.plan_id,
                    result.symbol,
                    result.error.as_deref().unwrap_or_default()
                );
            }
        }
    }

    /// Answers a plan `executed=false` with `reason`, counted under `outcome`. A plan its
    /// publisher did not mean to execute (BLOCKED, SKIP) is routine; a refusal is a warning.
    fn refuse(&mut self, plan: &Plan, span: &Span, outcome: &'static str, reason: String) -> Step {
        trace::record_outcome(span, outcome, false);
        self.stats.not_executed += 1;
        metrics::counter!(quantum_model::metric_names::EXECUTOR_PLANS_TOTAL, "decision" => plan.decision.as_str(), "outcome" => outcome)
            .increment(1);
        let line = format!(
            "Plan not executed: symbol={} side={} decision={} reason={reason} plan_id={}",
            plan.symbol, plan.side, plan.decision, plan.plan_id
        );
        if plan.decision == Decision::Execute {
            tracing::warn!("{line}");
        } else {
            tracing::info!("{line}");
        }
        Step::Result(
            ExecutionResult::not_executed(
                plan.plan_id.as_str(),
                plan.symbol.as_str(),
                plan.side.as_str(),
                plan.decision.as_str(),
                reason,
            ),
            Answer::NotExecuted,
        )
    }

    /// Claims the order records of the batch's orders in one step (a peek for stale plans:
    /// they claim nothing new) and resolves each [`Step::Claim`] by what it found.
    async fn claim(&mut self, steps: Vec<Step>, spans: &[Span]) -> Result<Vec<Step>, StageError> {
        let claims: Vec<(&Plan, bool)> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Claim(plan, stale) => Some((plan.as_ref(), stale.is_some())),
                _ => None,
            })
            .collect();
        if claims.is_empty() {
            return Ok(steps);
        }
        let mut states = order::claim(&self.writer, &claims, &self.claimant).await?.into_iter();
        let mut resolved = Vec::with_capacity(steps.len());
        for (step, span) in steps.into_iter().zip(spans) {
            resolved.push(match step {
                Step::Claim(plan, stale) => match states.next().unwrap_or(ClaimState::None) {
                    ClaimState::Unpublished => self.unpublished(plan, span).await?,
                    state => self.resolve_claim(plan, stale, state, span),
                },
                other => other,
            });
        }
        Ok(resolved)
    }

    /// A plan whose order finished before a crash but whose fills and result may not be out:
    /// its outbox is published with the batch (a rare path: one read each).
    async fn unpublished(&mut self, plan: Box<Plan>, span: &Span) -> Result<Step, StageError> {
        let coid = plan.plan_id.client_order_id();
        match order::read_outbox(&self.writer, &coid).await? {
            Ok(outbox) => {
                trace::record_outcome(span, "duplicate", false);
                self.stats.duplicates += 1;
                tracing::info!(
                    "Publishing order {coid} of plan {}: finished before a restart, its fills and result maybe not out",
                    plan.plan_id
                );
                Ok(Step::Publish(Box::new(outbox)))
            }
            Err(e) => Err(StageError::Poison(format!(
                "order record quantum:order:{coid} is finished but its outbox is unreadable ({e}); repair it"
            ))),
        }
    }

    fn resolve_claim(&mut self, plan: Box<Plan>, stale: Option<String>, state: ClaimState, span: &Span) -> Step {
        let coid = plan.plan_id.client_order_id();
        match (state, stale) {
            (ClaimState::Claimed, None) => Step::Place(plan),
            (ClaimState::New, None) => {
                tracing::info!(
                    "Recovering order {coid} of plan {}: claimed before a restart",
                    plan.plan_id
                );
                Step::Place(plan)
            }
            (ClaimState::New, Some(reason)) => {
                tracing::info!(
                    "Recovering order {coid} of stale plan {}: claimed before a restart; asking the venue, placing nothing",
                    plan.plan_id
                );
                Step::Recover(plan, reason)
            }
            // A peek claims nothing: a stale plan without an order record never reached the
            // venue and is refused.
            (ClaimState::None | ClaimState::Claimed, Some(reason)) => self.refuse(&plan, span, "stale", reason),
            (ClaimState::None, None) => self.refuse(
                &plan,
                span,
                "unclaimed",
                "internal: the claim created no order record".to_string(),
            ),
            // Taken care of before resolving (`unpublished`).
            (ClaimState::Unpublished, _) => Step::Ack,
            (ClaimState::Leased, _) => {
                self.deferred = true;
                tracing::info!(
                    "Order {coid} of plan {} is held by another executor under its lease; left pending",
                    plan.plan_id
                );
                Step::Leased
            }
            (ClaimState::Finished(finished), _) => {
                trace::record_outcome(span, "duplicate", false);
                self.stats.duplicates += 1;
                metrics::counter!(quantum_model::metric_names::EXECUTOR_PLANS_TOTAL, "decision" => "EXECUTE", "outcome" => "duplicate")
                    .increment(1);
                tracing::info!(
                    "Duplicate plan {} for {} skipped: order {coid} already {finished}",
                    plan.plan_id,
                    plan.symbol
                );
                Step::Ack
            }
        }
    }
}

impl<V: Venue> Executor<V> {
    /// Calls the venue for the batch's orders: one symbol's orders in plan order, different
    /// symbols concurrently (their venue state is independent), so a batch costs a few round
    /// trips per symbol rather than per order. Outcomes come back as (batch position,
    /// outcome) in batch order, each venue call traced as a step of the plan's span. An order
    /// whose outcome the venue leaves unknown waits, claimed, with the symbol's later orders
    /// of the batch (their positions are returned apart): other symbols go on.
    async fn execute_all(&self, steps: &[Step], spans: &[Span]) -> Result<Executed, StageError> {
        let mut by_symbol: HashMap<&str, Vec<(usize, &Step)>> = HashMap::new();
        for (i, step) in steps.iter().enumerate() {
            if let Some(plan) = step.order() {
                by_symbol.entry(plan.symbol.as_str()).or_default().push((i, step));
            }
        }
        let venue = &self.venue;
        let per_symbol = by_symbol
            .into_values()
            .map(|orders| async move { execute_symbol(venue, &orders, spans).await });
        let mut all = Executed::default();
        for result in futures_util::future::join_all(per_symbol).await {
            let done = result?;
            all.finished.extend(done.finished);
            all.waiting.extend(done.waiting);
        }
        all.finished.sort_by_key(|(i, _)| *i);
        Ok(all)
    }
}

/// One symbol's orders, in batch order: a stale order claimed before a crash is settled alone,
/// each run of orders to place goes to the venue in one call. An order whose outcome stays
/// unknown leaves it and every later order of the symbol waiting.
async fn execute_symbol<V: Venue>(
    venue: &V,
    orders: &[(usize, &Step)],
    spans: &[Span],
) -> Result<Executed, StageError> {
    let mut done = Executed::default();
    let mut rest = orders;
    while let Some(&(_, step)) = rest.first() {
        let run = match step {
            Step::Recover(..) => 1,
            _ => rest.iter().take_while(|(_, s)| matches!(s, Step::Place(_))).count(),
        };
        let (now, after) = rest.split_at(run);
        // Each order's trace gets its venue step, all of them spanning the one call.
        let calls: Vec<Span> = now
            .iter()
            .map(|(i, _)| trace::step_span(&spans[*i], "venue.order"))
            .collect();
        let (outcomes, error) = match step {
            Step::Recover(plan, reason) => {
                let settled = venue
                    .settle(&plan.plan_id.client_order_id(), &plan.symbol, &never_placed(reason))
                    .instrument(calls[0].clone())
                    .await;
                match settled {
                    Ok(outcome) => (vec![outcome], None),
                    Err(e) => (Vec::new(), Some(e)),
                }
            }
            _ => {
                let requests: Vec<OrderRequest> = now
                    .iter()
                    .filter_map(|(_, s)| s.order().map(OrderRequest::from))
                    .collect();
                venue.execute_in_order(&requests).instrument(calls[0].clone()).await
            }
        };
        drop(calls);
        let finished = outcomes.len();
        done.finished.extend(now.iter().map(|(i, _)| *i).zip(outcomes));
        match error {
            None => {}
            Some(e @ VenueError::Unresolved { .. }) => {
                count_venue_error(venue.name(), &e);
                done.waiting.extend(rest[finished..].iter().map(|(later, _)| *later));
                break;
            }
            Some(e) => {
                count_venue_error(venue.name(), &e);
                return Err(StageError::from(e));
            }
        }
        rest = after;
    }
    Ok(done)
}

/// What the venue did with a batch's orders.
#[derive(Default)]
struct Executed {
    /// (batch position, outcome), in batch order.
    finished: Vec<(usize, OrderOutcome)>,
    /// Batch positions of orders left waiting on an unknown outcome: their plans stay pending.
    waiting: Vec<usize>,
}

fn count_venue_error(venue: &'static str, e: &VenueError) {
    metrics::counter!(quantum_model::metric_names::EXECUTOR_VENUE_ERRORS_TOTAL, "venue" => venue, "kind" => e.kind())
        .increment(1);
}

/// How soon a plan left to another executor's lease is looked at again.
const LEASED_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Why an order the venue never received is finalized without placing it.
fn never_placed(why: &str) -> String {
    format!("{why}; the order never reached the venue and is not placed")
}

impl<V: Venue> BatchHandler for Executor<V> {
    fn retry_pending_after(&mut self) -> Option<Duration> {
        std::mem::take(&mut self.deferred).then_some(LEASED_RETRY_DELAY)
    }

    async fn handle(&mut self, batch: &[StreamEntry]) -> Result<(), StageError> {
        let spans: Vec<Span> = batch
            .iter()
            .map(|e| trace::entry_span("intent_executor.plan", &self.streams.plans, e))
            .collect();
        let result = self.process(batch, &spans).await;
        if result.is_err() {
            trace::record_batch_failed(&spans);
        }
        result
    }
}

impl<V: Venue> Executor<V> {
    /// Read (triage) → claim → venue → commit → report.
    async fn process(&mut self, batch: &[StreamEntry], spans: &[Span]) -> Result<(), StageError> {
        let mut seen = HashSet::new();
        let steps: Vec<Step> = batch
            .iter()
            .zip(spans)
            .map(|(e, span)| self.triage(e, &mut seen, span))
            .collect();
        let steps = self.claim(steps, spans).await?;
        fail::fail_point!("executor::after_claim", |_| std::process::abort());
        let Executed { finished, waiting } = self.execute_all(&steps, spans).await?;
        fail::fail_point!("executor::before_finalize", |_| std::process::abort());
        for &i in &waiting {
            if let Some(plan) = steps[i].order() {
                tracing::info!(
                    "Plan {} for {} left pending: an order of {} has an unknown outcome at the venue",
                    plan.plan_id,
                    plan.symbol,
                    plan.symbol
                );
            }
        }
        self.deferred |= !waiting.is_empty();
        let finalized = self.commit(batch, spans, &steps, &finished, &waiting).await?;
        for ((i, outcome), finalized_here) in finished.iter().zip(finalized) {
            let Some(plan) = steps[*i].order() else { continue };
            let _in_span = spans[*i].enter();
            if !finalized_here {
                self.stats.duplicates += 1;
                tracing::info!(
                    "Duplicate plan {} for {}: order {} was finalized elsewhere (another instance or the sweep)",
                    plan.plan_id,
                    plan.symbol,
                    plan.plan_id.client_order_id()
                );
                continue;
            }
            if matches!(outcome, OrderOutcome::Filled { .. }) {
                if let Some(window) = &self.executing_symbols {
                    window.saw(&plan.symbol);
                }
                // A plan's entry id starts with the millisecond the bridge published it.
                if quantum_model::time::entry_ms(&batch[*i].id).is_some() {
                    let latency = entry_age_ms(&batch[*i].id, now_ms()) as f64 / 1000.0;
                    metrics::histogram!(quantum_model::metric_names::EXECUTOR_PLAN_TO_FILL_SECONDS).record(latency);
                }
            }
            report_order(&mut self.stats, &spans[*i], &OrderRef::from(plan), outcome);
        }
        if let Some(window) = &self.executing_symbols {
            window.publish();
        }
        Ok(())
    }

    /// Finalizes the finished orders (each record, with its outbox) with their reservation
    /// swaps in the same round trip, publishes every outbox (the finalized ones and those the
    /// claim found unpublished) with the answers of the plans not executed, then acknowledges
    /// the batch: ordered steps of one slot each, every one idempotent (order.rs), so a crash
    /// between two redelivers the batch and repeats nothing. Returns, per finished order,
    /// whether this batch finalized it.
    async fn commit(
        &mut self,
        batch: &[StreamEntry],
        spans: &[Span],
        steps: &[Step],
        finished: &[(usize, OrderOutcome)],
        waiting: &[usize],
    ) -> Result<Vec<bool>, StageError> {
        let outboxes: Vec<(usize, order::Outbox)> = finished
            .iter()
            .filter_map(|(i, outcome)| {
                let plan = steps[*i].order()?;
                let outbox = order::Outbox::new(&OrderRef::from(plan), outcome, |fields| {
                    trace::propagate(&spans[*i], Some(&batch[*i]), fields)
                });
                Some((*i, outbox))
            })
            .collect();
        // Orders found finished but not out (at the claim) are published with them.
        let unpublished: Vec<order::Outbox> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Publish(outbox) => Some(outbox.as_ref().clone()),
                _ => None,
            })
            .collect();
        // Each answer once, whoever repeats it: keyed by its plan id (the entry id when the plan
        // has no valid one).
        let mut answers = Vec::new();
        let mut released = Vec::new();
        for (step, entry) in steps.iter().zip(batch) {
            if let Step::Result(result, _) = step {
                answers.push(Once {
                    id: PlanId::parse(&result.plan_id).map_or_else(|_| entry.id.clone(), |p| p.to_string()),
                    fields: owned(result.to_fields()),
                    ttl_secs: MARKER_TTL_SECS,
                });
                if let Ok(symbol) = Symbol::parse(&result.symbol) {
                    released.push((symbol, result.plan_id.to_string()));
                }
            }
        }
        // Every entry but those left to the executor that holds their order, and those
        // waiting on an unknown outcome: acknowledged with the publication's last step.
        let ids: Vec<String> = batch
            .iter()
            .zip(steps)
            .enumerate()
            .filter(|(i, (_, step))| !matches!(step, Step::Leased) && !waiting.contains(i))
            .map(|(_, (e, _))| e.id.clone())
            .collect();
        let orders: Vec<(&order::Outbox, &OrderOutcome)> = finished
            .iter()
            .zip(&outboxes)
            .map(|((_, outcome), (_, outbox))| (outbox, outcome))
            .collect();
        let (finalized, appended) = order::finalize_and_publish(
            &self.writer,
            &self.claimant.owner,
            &self.streams,
            &orders,
            &unpublished,
            &answers,
            &released,
            &ids,
        )
        .await?;
        self.count_replayed_answers(steps, &appended);
        Ok(finalized)
    }
}

/// Logs and counts a finalized order: the contract's `ORDER FILLED` / `ORDER REJECTED` lines.
fn report_order(stats: &mut ExecutorStats, span: &Span, order: &OrderRef, outcome: &OrderOutcome) {
    let coid = &order.client_order_id;
    match outcome {
        OrderOutcome::Filled { fills } => {
            trace::record_outcome(span, "filled", false);
            stats.filled += 1;
            metrics::counter!(quantum_model::metric_names::EXECUTOR_PLANS_TOTAL, "decision" => "EXECUTE", "outcome" => "filled")
                .increment(1);
            metrics::counter!(quantum_model::metric_names::EXECUTOR_ORDERS_TOTAL, "symbol" => symbol_label(&order.symbol), "side" => order.side.as_str(), "status" => "FILLED").increment(1);
            for f in fills {
                tracing::info!(
                    "ORDER FILLED symbol={} side={} qty={} price={} order_id={coid} plan_id={} fill_id={} fee={}",
                    f.symbol,
                    f.side,
                    f.qty,
                    f.price,
                    order.plan_id,
                    f.fill_id,
                    f.fee
                );
            }
        }
        OrderOutcome::Rejected { reason } => {
            trace::record_outcome(span, "rejected", false);
            stats.rejected += 1;
            metrics::counter!(quantum_model::metric_names::EXECUTOR_PLANS_TOTAL, "decision" => "EXECUTE", "outcome" => "rejected")
                .increment(1);
            metrics::counter!(quantum_model::metric_names::EXECUTOR_ORDERS_TOTAL, "symbol" => symbol_label(&order.symbol), "side" => order.side.as_str(), "status" => "REJECTED").increment(1);
            tracing::warn!(
                "ORDER REJECTED symbol={} side={} qty={} order_id={coid} plan_id={} reason={reason}",
                order.symbol,
                order.side,
                order.qty,
                order.plan_id
            );
        }
    }
}

/// Runs the executor until `shutdown` fires.
///
/// # Errors
/// Invalid settings, Redis or the venue refusing the executor's credentials, the HTTP port taken, an account the start-up check cannot explain, or a fatal stage error.
pub async fn run(args: ExecutorArgs, shutdown: CancellationToken) -> Result<ExecutorStats, ExecutorError> {
    let settings = Settings::check(&args)?;
    let credentials = match args.mode {
        Mode::Live => Some(args.binance.credentials().map_err(ExecutorError::Config)?),
        Mode::Paper => None,
    };
    let mut spec = ConsumerSpec::new(
        PLAN_STREAM,
        PLAN_GROUP,
        PLAN_DLQ_STREAM,
        "intent_executor",
        &args.consumer,
    );
    // apply.result is the executor's alone, and no group reads it.
    spec.trim_streams.push(RESULT_STREAM.to_string());
    let mode = log_settings(&args, &spec, &settings);
    let readiness = http::serve(args.http.metrics_bind, args.metrics_port, shutdown.clone()).await?;
    let shards = args.consumer.stream_shards;
    let conns = Connections::connect(&args.redis, shards.count(), &shutdown).await?;
    quantum_runtime::sharding::agree(&conns.writer, shards, &shutdown).await?;
    let specs = spec.per_shard(shards);
    readiness.watch(conns.writer.clone(), &specs);
    publish_settings(&conns.writer, &settings.allowlist, mode, &spec).await;
    let service = Service {
        args: &args,
        spec,
        specs,
        shards,
        conns,
        allowlist: settings.allowlist,
        order_lease_ms: settings.order_lease_ms,
    };
    match credentials {
        None => {
            let venue = PaperVenue::new(service.conns.writer.clone(), settings.paper);
            venue.publish_market().await?;
            service.serve(venue, shutdown).await
        }
        Some(credentials) => {
            let venue = start_live(&service, credentials, &shutdown).await?;
            service.serve(venue, shutdown).await
        }
    }
}

/// The executor's settings, checked together before anything starts.
struct Settings {
    paper: PaperConfig,
    allowlist: Allowlist,
    order_lease_ms: u64,
}

impl Settings {
    fn check(args: &ExecutorArgs) -> Result<Self, ExecutorError> {
        let paper = args.paper_config().map_err(ExecutorError::Config)?;
        let allowlist = args.allowlist().map_err(ExecutorError::Config)?;
        args.consumer
            .check_age_limit("INTENT_EXECUTOR_MAX_PLAN_AGE_MS", args.max_plan_age_ms)
            .map_err(ExecutorError::Config)?;
        let order_lease_ms = args.order_lease_ms.unwrap_or(args.consumer.claim_idle_ms);
        if args.sweep_grace_ms <= args.max_plan_age_ms.max(order_lease_ms) {
            return Err(ExecutorError::Config(format!(
                "INTENT_EXECUTOR_SWEEP_GRACE_MS ({}) must exceed INTENT_EXECUTOR_MAX_PLAN_AGE_MS ({}) and \
                 INTENT_EXECUTOR_ORDER_LEASE_MS ({}): the sweep would finalize orders an executor may still place",
                args.sweep_grace_ms, args.max_plan_age_ms, order_lease_ms
            )));
        }
        Ok(Self {
            paper,
            allowlist,
            order_lease_ms,
        })
    }
}

/// The start-up lines operators read; returns the mode's name.
fn log_settings(args: &ExecutorArgs, spec: &ConsumerSpec, settings: &Settings) -> &'static str {
    tracing::info!("Intent Executor - apply.plan → venue → apply.result + ledger.commit");
    tracing::info!("Redis: {}", args.redis.display());
    tracing::info!("Consumer: {} / {}", spec.group, spec.consumer);
    let allowlist = &settings.allowlist;
    tracing::info!("Allowlist: {} (from {})", allowlist.display(), allowlist.source);
    allowlist.log_notices();
    match args.mode {
        Mode::Paper => {
            let paper = &settings.paper;
            tracing::info!(
                "Config: mode=paper seed={} slippage_bps={} fee_bps={} qty_step={} price_tick={} equity_usd={} default_price={} reference_prices={} batch_size={}",
                paper.seed,
                paper.slippage_bps,
                paper.fee_bps,
                paper.qty_step,
                paper.price_tick,
                paper.equity_usd,
                paper.default_price,
                args.paper_reference_prices,
                spec.batch_size
            );
            "paper"
        }
        Mode::Live => {
            log_live_config(&args.binance, spec.batch_size);
            "live"
        }
    }
}

/// The settings `quantumctl why` shows (best effort: a failure is only logged).
async fn publish_settings(writer: &Client, allowlist: &Allowlist, mode: &str, spec: &ConsumerSpec) {
    let config = vec![
        ("allowlist", allowlist.display()),
        ("allowlist_source", allowlist.source.to_string()),
        ("mode", mode.to_string()),
        ("consumer", spec.consumer.clone()),
        ("started_ts", now_ms().to_string()),
    ];
    let written: Result<(), Error> = writer
        .hset(EXECUTOR_CONFIG_KEY, quantum_runtime::cas::owned(config))
        .await;
    if let Err(e) = written {
        tracing::warn!("Cannot publish the settings to {EXECUTOR_CONFIG_KEY} ({e}); quantumctl why will not see them");
    }
}

/// The settings line of the live venue; mainnet gets a banner no operator can miss.
fn log_live_config(args: &binance::BinanceArgs, batch_size: u64) {
    let config = args.config();
    if args.binance_env == binance::BinanceEnv::Mainnet {
        for _ in 0..3 {
            tracing::warn!(
                "!!! BINANCE MAINNET: this executor places REAL orders with REAL money at {} !!!",
                config.base_url
            );
        }
    }
    tracing::info!(
        "Config: mode=live binance_env={:?} fapi_url={} recv_window_ms={} unknown_margin_ms={} http_timeout_ms={} account_sync_ms={} batch_size={batch_size}",
        args.binance_env,
        config.base_url,
        config.recv_window_ms,
        config.unknown_margin_ms,
        args.binance_http_timeout_ms,
        args.binance_account_sync_ms
    );
}

/// Connects the live venue, refuses to go on when the venue holds orders or trades the order
/// records cannot explain, writes a first account snapshot and starts the account sync.
async fn start_live(
    service: &Service<'_>,
    credentials: binance::sign::Credentials,
    shutdown: &CancellationToken,
) -> Result<binance::BinanceVenue, ExecutorError> {
    let args = &service.args.binance;
    let config = args.config();
    let fapi = binance::Fapi::new(
        &config.base_url,
        credentials,
        config.recv_window_ms,
        config.http_timeout,
    )
    .map_err(ExecutorError::Config)?;
    let fapi = std::sync::Arc::new(fapi);
    let venue = until_available("connect", shutdown, || {
        binance::BinanceVenue::connect(
            fapi.clone(),
            service.conns.writer.clone(),
            service.spec.replica_wait.clone(),
            config.clone(),
        )
    })
    .await?;
    let symbols: Vec<Symbol> = service.allowlist.symbols.iter().cloned().collect();
    let lookback = args.binance_reconcile_lookback_ms;
    let mismatches = until_available("check the account", shutdown, || {
        binance::reconcile_on_start(&venue, &symbols, lookback)
    })
    .await?;
    for m in &mismatches {
        tracing::error!("RECONCILE_MISMATCH {m}");
    }
    if !mismatches.is_empty() {
        return Err(ExecutorError::Reconcile(mismatches.len()));
    }
    let sync = binance::AccountSync {
        venue: venue.clone(),
        symbols,
    };
    let positions = until_available("sync the account", shutdown, || sync.sync_once()).await?;
    tracing::info!("Account synced: {positions} allowlisted positions written to quantum:position:snapshot:*");
    tokio::spawn(sync.run(Duration::from_millis(args.binance_account_sync_ms), shutdown.clone()));
    Ok(venue)
}

/// Runs a start-up step of the live venue until it gets through: a venue that is unreachable,
/// throttling or banning at start is waited for (with a growing pause, logged), not a reason to
/// exit; refused credentials and everything else stop the executor.
async fn until_available<T, F, Fut>(what: &str, shutdown: &CancellationToken, mut step: F) -> Result<T, ExecutorError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, VenueError>>,
{
    let mut pause = Duration::from_millis(500);
    loop {
        match step().await {
            Err(VenueError::Unavailable(e)) => {
                tracing::warn!("Binance unavailable at start ({what}): {e}; trying again in {pause:?}");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(ExecutorError::Venue(VenueError::Unavailable(e))),
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(30));
            }
            other => return other.map_err(ExecutorError::Venue),
        }
    }
}

/// What every venue's executor runs on.
struct Service<'a> {
    args: &'a ExecutorArgs,
    spec: ConsumerSpec,
    /// One per shard of apply.plan (`spec` alone when unsharded).
    specs: Vec<ConsumerSpec>,
    shards: StreamShards,
    conns: Connections,
    allowlist: Allowlist,
    order_lease_ms: u64,
}

impl Service<'_> {
    /// The sweep in the background, the consumer loop until `shutdown`.
    async fn serve<V: Venue + Clone + 'static>(
        self,
        venue: V,
        shutdown: CancellationToken,
    ) -> Result<ExecutorStats, ExecutorError> {
        let sweeper = sweep::Sweeper {
            // The sweep takes only orders whose leases ran out (its grace exceeds the lease).
            owner: format!("{}:sweep", self.spec.consumer),
            writer: self.conns.writer.clone(),
            venue: venue.clone(),
            grace_ms: self.args.sweep_grace_ms,
            shards: self.shards,
            stats: ExecutorStats::default(),
        };
        tokio::spawn(sweeper.run(Duration::from_millis(self.args.sweep_interval_ms), shutdown.clone()));
        let executing_symbols = quantum_runtime::window::SymbolWindow::spawn(
            quantum_model::metric_names::EXECUTING_SYMBOLS,
            std::time::Duration::from_secs(300),
            shutdown.clone(),
        );
        // One executor per shard, each with its own reader; they share the venue.
        let mut executors: Vec<Executor<V>> = self
            .specs
            .iter()
            .map(|spec| {
                let mut executor = Executor::new(self.conns.writer.clone(), venue.clone(), self.allowlist.clone());
                executor.max_plan_age_ms = self.args.max_plan_age_ms;
                executor.claimant = order::Claimant {
                    owner: self.spec.consumer.clone(),
                    lease_ms: self.order_lease_ms,
                };
                executor.executing_symbols = Some(executing_symbols.clone());
                executor.streams = order::Streams::shard(self.shards, spec.shard);
                executor
            })
            .collect();
        consumer::run_shards(
            &self.conns.readers,
            &self.conns.writer,
            &self.specs,
            &mut executors,
            &shutdown,
        )
        .await?;
        let stats = executors
            .iter()
            .fold(ExecutorStats::default(), |sum, e| sum.add(&e.stats));
        let s = &stats;
        tracing::info!(
            "Intent Executor stopped: filled={} rejected={} not_executed={} duplicates={} malformed={}",
            s.filled,
            s.rejected,
            s.not_executed,
            s.duplicates,
            s.malformed
        );
        Ok(stats)
    }
}
