//! The ledger service: the only writer of `quantum:position:ledger:<SYMBOL>`.
//!
//! Fills from `quantum:stream:ledger.commit` are applied exactly once: the new ledger state and
//! the fill ids' dedup record are written by one Lua script that first checks the ledger's
//! `version` is the one the state was computed from. A crash at any point leaves either both
//! or neither; a redelivered or replayed fill finds its id recorded and changes nothing.
//!
//! Reconcile rule (exchange truth wins): a symbol whose snapshot disagrees with its ledger is
//! overwritten from the snapshot only when (1) the snapshot is not older than the ledger's last
//! change, (2) the drift has persisted at the same ledger version for the grace period, (3) the
//! symbol is quiescent (none of its plans or fills in flight, by its reservations, and no order
//! at a venue call), and (4) the ledger's
//! version is still the one observed (CAS). In-flight fills therefore always land first.
//!
//! Layout: `decisions` (the pure fill application and reconcile rule), `dedup` (the applied-fill records: their
//! conversion from an earlier version and their pruning), this file (the batch handler,
//! reconcile and `run`).

pub mod decisions;
mod dedup;
pub mod keyspace;
mod parked;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use clap::Parser;
use fred::prelude::*;
use fred::types::Value;
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;

use quantum_model::contract::{
    ledger_applied_key, ledger_key, ledger_parked_key, reservation_key, reservation_totals_key, snapshot_key,
    LEDGER_COMMIT_DLQ_STREAM, LEDGER_COMMIT_STREAM, LEDGER_GROUP, OPEN_ORDERS_KEY,
};
use quantum_model::fill::Fill;
use quantum_model::labels::symbol_label;
use quantum_model::position::LedgerEntry;
use quantum_model::snapshot::Snapshot;
use quantum_model::stream_entry::{truncate, StreamEntry};
use quantum_model::time::{now_ms, now_secs};
use quantum_model::types::{FillId, Symbol};

use crate::keyspace::KeyspaceWalk;
use quantum_runtime::append_once::{dead_letter_id, dead_letter_then_ack, Once, MARKER_TTL_SECS};
use quantum_runtime::cas::{owned, CasOp, CasOutcome, CasWrite};
use quantum_runtime::config::{parse_flag, parse_non_negative, ConnectError, ConsumerArgs, RedisArgs};
use quantum_runtime::consumer::{self, BatchHandler, Connections, ConsumerSpec};
use quantum_runtime::failure::StageError;
use quantum_runtime::http::{self, HttpArgs};
use quantum_runtime::replication::ReplicaWait;
use quantum_runtime::reply::hash_pairs;
use quantum_runtime::trace;
use tracing::Span;

use decisions::{apply_fills, detect_drift, reconciled, DriftTracker, LedgerState, Parked};

/// Command line and environment of `quantum-ledger`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "quantum-ledger",
    version,
    about = "Applies fills to per-symbol ledgers exactly once and reconciles with exchange snapshots.",
    after_help = quantum_runtime::trace::HELP
)]
pub struct LedgerArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    /// Port of /metrics, /healthz and /readyz (0: any free port, logged).
    #[arg(long, env = "LEDGER_METRICS_PORT", default_value_t = 9103)]
    pub metrics_port: u16,
    /// Reconcile ledgers against exchange snapshots (true/false).
    #[arg(long, env = "LEDGER_RECONCILE", default_value = "true", value_parser = parse_flag, action = clap::ArgAction::Set)]
    pub reconcile: bool,
    /// How often to compare ledgers with snapshots and count the ledger entries (ms).
    #[arg(long, env = "LEDGER_RECONCILE_INTERVAL_MS", default_value_t = 5_000)]
    pub reconcile_interval_ms: u64,
    /// How long a drift must persist, with no fill applied, before exchange truth is written (ms).
    #[arg(long, env = "LEDGER_RECONCILE_GRACE_MS", default_value_t = 15_000)]
    pub reconcile_grace_ms: u64,
    /// Differences in position_amt up to this are not drift.
    #[arg(long, env = "LEDGER_RECONCILE_EPS", default_value = "0", value_parser = parse_non_negative)]
    pub reconcile_eps: Decimal,
    /// How long a fill that came ahead of its turn in the venue's sequence waits for the fills
    /// before it (ms); then the ledger moves past the gap and a missing fill that still comes is
    /// applied late. Keep it above the executor's sweep grace plus interval, so that an order
    /// left by a crashed executor is finalized first, and below the bridge's
    /// INTENT_BRIDGE_RESERVATION_TTL_MS, so that a parked fill's reservation outlives its wait.
    #[arg(long, env = "LEDGER_GAP_TIMEOUT_MS", default_value_t = 400_000)]
    pub gap_timeout_ms: u64,
    /// How often the housekeeping walks the whole keyspace (SCAN) for the keys it did not write
    /// itself: exchange snapshots of symbols it has no fill for, keys made by hand (ms). A walk
    /// costs Redis time in proportion to every key (a replay marker and an order record per
    /// intent of the last day); between walks the passes work on the keys the ledger wrote.
    #[arg(long, env = "LEDGER_KEYSPACE_SCAN_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keyspace_scan_ms: u64,
    /// Log level when RUST_LOG is unset.
    #[arg(long, env = "LEDGER_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Why the ledger service stopped.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("Redis refused an operation the ledger needs: {0}")]
    Redis(#[from] Error),
    #[error("stopped: {0}")]
    Stage(#[from] quantum_runtime::failure::StageError),
    #[error("cannot serve the HTTP endpoints: {0}")]
    Http(#[from] std::io::Error),
}

/// Counts of what the ledger did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerStats {
    pub applied: u64,
    pub duplicates: u64,
    pub malformed: u64,
    pub reconciled: u64,
}

impl LedgerStats {
    /// The counts of two writers together (the shards of one process).
    fn add(self, other: &Self) -> Self {
        Self {
            applied: self.applied + other.applied,
            duplicates: self.duplicates + other.duplicates,
            malformed: self.malformed + other.malformed,
            reconciled: self.reconciled + other.reconciled,
        }
    }
}

/// The ledger.commit batch handler.
pub struct LedgerWriter {
    writer: Client,
    gap_timeout_ms: u64,
    /// `REDIS_WAIT_REPLICAS`: the applied fills are on the replicas before their entries are
    /// acknowledged (on a cluster the ledgers and `ledger.commit` live on different nodes, and
    /// an acknowledged fill whose apply a failover took back would be lost).
    replica_wait: std::sync::Arc<ReplicaWait>,
    pub stats: LedgerStats,
    /// The current batch's fill spans by fill id (only while tracing is on).
    spans: HashMap<String, Span>,
    /// The shard of ledger.commit this writer reads.
    pub stream: String,
    /// Where the keys its commits write are noted for the housekeeping (`keyspace`).
    pub written: keyspace::Written,
}

/// How many times a batch retries symbols whose ledger moved under it before giving up.
const MAX_CAS_ATTEMPTS: usize = 16;

impl LedgerWriter {
    /// A writer using `writer`, waiting `gap_timeout_ms` for a fill missing from the sequence.
    pub fn new(writer: Client, gap_timeout_ms: u64, replica_wait: std::sync::Arc<ReplicaWait>) -> Self {
        Self {
            writer,
            gap_timeout_ms,
            replica_wait,
            stats: LedgerStats::default(),
            spans: HashMap::new(),
            stream: LEDGER_COMMIT_STREAM.to_string(),
            written: keyspace::Written::default(),
        }
    }

    /// Applies fills grouped by symbol (a symbol with no fills: its parked fills only).
    /// Returns the ids of entries it could not apply (a corrupt ledger or parked fill; they
    /// stay pending and are retried later) and of those its commits acknowledged: on one server
    /// without `REDIS_WAIT_REPLICAS` a symbol's commit acknowledges its entries itself, a round
    /// trip saved per batch (on a cluster `ledger.commit` lives in another slot, and with
    /// replicas to wait for the acknowledgement comes after the wait).
    async fn apply(
        &mut self,
        mut by_symbol: HashMap<Symbol, Vec<(String, Fill)>>,
    ) -> Result<(HashSet<String>, HashSet<String>), StageError> {
        let mut stuck = HashSet::new();
        let mut acked = HashSet::new();
        let ack_with_commit = !self.writer.is_clustered() && !self.replica_wait.enabled();
        for _ in 0..MAX_CAS_ATTEMPTS {
            if by_symbol.is_empty() {
                return Ok((stuck, acked));
            }
            let symbols: Vec<Symbol> = by_symbol.keys().cloned().collect();
            let states = self.read_states(&symbols, &by_symbol).await?;
            let now = now_ms();
            let write = self.writer.pipeline();
            let mut pending_writes = Vec::new();
            for (symbol, state) in symbols.into_iter().zip(states) {
                let fills = &by_symbol[&symbol];
                let state = match state {
                    Ok(state) => state,
                    Err(e) => {
                        tracing::error!(
                            "Ledger of {symbol} is corrupt ({e}); its {} fills stay pending until it is repaired",
                            fills.len()
                        );
                        for (id, fill) in fills {
                            stuck.insert(id.clone());
                            self.record(&fill.fill_id, "pending_corrupt_ledger", true);
                        }
                        by_symbol.remove(&symbol);
                        continue;
                    }
                };
                let list: Vec<Fill> = fills.iter().map(|(_, f)| f.clone()).collect();
                let app = apply_fills(state.view(), &list, now, self.gap_timeout_ms);
                if !app.writes_anything() {
                    self.report(&symbol, &app);
                    by_symbol.remove(&symbol);
                    continue;
                }
                let mut cas = commit_write(&symbol, &state, &app, fills, now);
                let ids: Vec<String> = fills.iter().map(|(id, _)| id.clone()).collect();
                if ack_with_commit && !ids.is_empty() {
                    let ack = CasOp::Acknowledge {
                        group: LEDGER_GROUP.to_string(),
                        ids: ids.clone(),
                    };
                    cas.writes.push((self.stream.clone(), ack));
                }
                cas.queue(&write).await?;
                pending_writes.push((symbol, app, cas.written_keys(), ids));
            }
            if pending_writes.is_empty() {
                continue;
            }
            let outcomes: Vec<Value> = write.all().await?;
            for ((symbol, app, written, ids), reply) in pending_writes.into_iter().zip(outcomes) {
                match CasOutcome::from_reply(&reply)? {
                    CasOutcome::Applied => {
                        if ack_with_commit {
                            acked.extend(ids);
                        }
                        keyspace::note_written(&self.written, written);
                        self.report(&symbol, &app);
                        by_symbol.remove(&symbol);
                    }
                    // Another writer (reconcile, a second instance) moved the ledger: recompute.
                    _ => tracing::debug!("Ledger of {symbol} changed while applying; retrying"),
                }
            }
        }
        Err(StageError::Retryable(format!(
            "ledgers kept changing under {} symbols; batch left pending",
            by_symbol.len()
        )))
    }

    /// Reads each symbol's ledger, parked fills and (for unnumbered fills) applied-fill
    /// records in one round trip. `Err` for a symbol whose ledger or parked fills are corrupt.
    async fn read_states(
        &self,
        symbols: &[Symbol],
        by_symbol: &HashMap<Symbol, Vec<(String, Fill)>>,
    ) -> Result<Vec<Result<SymbolState, String>>, Error> {
        let read = self.writer.pipeline();
        let mut unnumbered = Vec::with_capacity(symbols.len());
        for symbol in symbols {
            read.hgetall::<(), _>(ledger_key(symbol)).await?;
            read.hgetall::<(), _>(ledger_parked_key(symbol)).await?;
            let ids: Vec<String> = by_symbol[symbol]
                .iter()
                .filter(|(_, f)| f.venue_seq.is_none())
                .map(|(_, f)| f.fill_id.to_string())
                .collect();
            if !ids.is_empty() {
                read.zmscore::<(), _, _>(ledger_applied_key(symbol), ids.clone())
                    .await?;
            }
            unnumbered.push(ids);
        }
        let replies: Vec<Value> = read.all().await?;
        let mut replies = replies.into_iter();
        let mut states = Vec::with_capacity(symbols.len());
        for ids in unnumbered {
            let ledger = hash_pairs(replies.next().unwrap_or(Value::Null));
            let parked = hash_pairs(replies.next().unwrap_or(Value::Null));
            let applied_ids: HashSet<String> = if ids.is_empty() {
                HashSet::new()
            } else {
                let scores = replies.next().map(Value::into_array).unwrap_or_default();
                ids.into_iter()
                    .zip(scores)
                    .filter(|(_, score)| !score.is_null())
                    .map(|(id, _)| id)
                    .collect()
            };
            states.push(SymbolState::read(&ledger, &parked, applied_ids));
        }
        Ok(states)
    }
    /// Applies the parked fills whose turn has come (a writer parked one while another applied
    /// the fill before it) or whose gap timed out, and publishes how many still wait as
    /// `quantum_ledger_parked_fills`; returns that count.
    ///
    /// # Errors
    /// A Redis failure or a symbol whose ledger kept changing; the next pass retries.
    pub async fn sweep_parked(&mut self, symbols: &[Symbol]) -> Result<u64, StageError> {
        let mut waiting = 0;
        if !symbols.is_empty() {
            let (stuck, acked) = self
                .apply(symbols.iter().map(|s| (s.clone(), Vec::new())).collect())
                .await?;
            debug_assert!(
                stuck.is_empty() && acked.is_empty(),
                "no entries, none stuck or acknowledged"
            );
            let pipeline = self.writer.pipeline();
            for symbol in symbols {
                pipeline.hlen::<(), _>(ledger_parked_key(symbol)).await?;
            }
            let counts: Vec<u64> = pipeline.all().await?;
            waiting = counts.iter().sum();
        }
        metrics::gauge!(quantum_model::metric_names::LEDGER_PARKED_FILLS).set(waiting as f64);
        Ok(waiting)
    }

    fn record(&self, fill_id: &FillId, outcome: &str, error: bool) {
        if let Some(span) = self.spans.get(fill_id.as_str()) {
            trace::record_outcome(span, outcome, error);
        }
    }

    fn report(&mut self, symbol: &Symbol, app: &decisions::Application) {
        for a in &app.applied {
            let f = &a.fill;
            self.record(&f.fill_id, "applied", false);
            tracing::info!(
                "LEDGER_COMMIT symbol={symbol} fill_id={} order_id={} plan_id={} side={} qty={} price={} fee={} position_amt={} realized_pnl={}",
                f.fill_id,
                f.order_id,
                f.plan_id,
                f.side,
                f.qty,
                f.price,
                f.fee,
                a.position_amt,
                a.realized_pnl
            );
        }
        for f in &app.duplicates {
            self.record(&f.fill_id, "duplicate", false);
            tracing::info!(
                "LEDGER_DUPLICATE symbol={symbol} fill_id={} order_id={} already applied: skipped",
                f.fill_id,
                f.order_id
            );
        }
        for p in &app.parked {
            let f = &p.fill;
            self.record(&f.fill_id, "parked", false);
            tracing::info!(
                "LEDGER_PARKED symbol={symbol} fill_id={} order_id={} venue_seq={} waiting_for_earlier_fills=true",
                f.fill_id,
                f.order_id,
                p.seq()
            );
        }
        for gap in &app.gaps {
            tracing::warn!(
                "LEDGER_GAP symbol={symbol} missing_venue_seq={}..={} action=skipped (a missing fill that still comes is applied late; reconcile repairs the rest)",
                gap.start(),
                gap.end()
            );
            metrics::counter!(quantum_model::metric_names::LEDGER_FILL_GAPS_TOTAL)
                .increment(gap.end() - gap.start() + 1);
        }
        metrics::counter!(quantum_model::metric_names::LEDGER_FILLS_PARKED_TOTAL).increment(app.parked.len() as u64);
        self.stats.applied += app.applied.len() as u64;
        self.stats.duplicates += app.duplicates.len() as u64;
        let label = symbol_label(symbol);
        metrics::counter!(quantum_model::metric_names::LEDGER_FILLS_APPLIED_TOTAL, "symbol" => label.clone())
            .increment(app.applied.len() as u64);
        if let Some(entry) = &app.entry {
            metrics::gauge!(quantum_model::metric_names::LEDGER_POSITION, "symbol" => label)
                .set(entry.position.amt.try_into().unwrap_or(0.0));
        }
        metrics::counter!(quantum_model::metric_names::LEDGER_DUPLICATES_SUPPRESSED_TOTAL)
            .increment(app.duplicates.len() as u64);
    }
}

/// What one symbol's ledger holds, as read before deciding.
struct SymbolState {
    entry: Option<LedgerEntry>,
    applied_ids: HashSet<String>,
    parked: Vec<Parked>,
}

impl SymbolState {
    fn read(
        ledger: &[(String, String)],
        parked: &[(String, String)],
        applied_ids: HashSet<String>,
    ) -> Result<Self, String> {
        let entry = LedgerEntry::from_hash(ledger).transpose()?;
        let parked = parked
            .iter()
            .map(|(field, value)| parked::decode(field, value))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            entry,
            applied_ids,
            parked,
        })
    }

    fn view(&self) -> LedgerState<'_> {
        LedgerState {
            entry: self.entry.as_ref(),
            applied_ids: &self.applied_ids,
            parked: &self.parked,
        }
    }
}

/// The one atomic write of a symbol's application, valid only while the ledger's version is
/// the one decided on: the ledger, the applied-fill records of unnumbered fills, the released
/// reservations and the parked fills (unparked, newly parked).
fn commit_write(
    symbol: &Symbol,
    state: &SymbolState,
    app: &decisions::Application,
    fills: &[(String, Fill)],
    now: u64,
) -> CasWrite {
    let ledger = match &app.entry {
        Some(entry) => CasOp::Hash(owned(entry.to_fields())),
        None => CasOp::None,
    };
    let mut writes = vec![(ledger_key(symbol), ledger)];
    // Each record is scored by its ledger.commit entry's millisecond (`dedup`).
    let scores: HashMap<&FillId, u64> = fills
        .iter()
        .map(|(id, f)| (&f.fill_id, quantum_model::time::entry_ms(id).unwrap_or(now)))
        .collect();
    let unnumbered: Vec<(u64, String)> = app
        .applied
        .iter()
        .filter(|a| a.fill.venue_seq.is_none())
        .map(|a| {
            let score = scores.get(&a.fill.fill_id).copied().unwrap_or(now);
            (score, a.fill.fill_id.to_string())
        })
        .collect();
    if !unnumbered.is_empty() {
        writes.push((ledger_applied_key(symbol), CasOp::SortedSetAdd(unnumbered)));
    }
    if !app.applied.is_empty() || !app.duplicates.is_empty() {
        // Applied, or counted already (by an earlier application or a reconcile): what the
        // fills held in flight is in the ledger now.
        let ids = app
            .applied
            .iter()
            .map(|a| &a.fill)
            .chain(&app.duplicates)
            .map(|f| f.fill_id.to_string())
            .collect();
        writes.push((
            reservation_key(symbol),
            CasOp::ReleaseReservations {
                totals: reservation_totals_key(symbol),
                fields: ids,
            },
        ));
    }
    if !app.unparked.is_empty() {
        let seqs = app.unparked.iter().map(u64::to_string).collect();
        writes.push((ledger_parked_key(symbol), CasOp::HashDelete(seqs)));
    }
    if !app.parked.is_empty() {
        writes.push((
            ledger_parked_key(symbol),
            CasOp::Hash(app.parked.iter().map(parked::encode).collect()),
        ));
    }
    CasWrite {
        expected_version: state.entry.as_ref().map_or(0, |e| e.version),
        guards: Vec::new(),
        writes,
    }
}

impl BatchHandler for LedgerWriter {
    async fn handle(&mut self, batch: &[StreamEntry]) -> Result<(), StageError> {
        let result = self.process(batch).await;
        if result.is_err() {
            trace::record_batch_failed(self.spans.values());
        }
        // The fills' spans end here, once their effect is durable (or the batch failed).
        self.spans.clear();
        result
    }
}

impl LedgerWriter {
    async fn process(&mut self, batch: &[StreamEntry]) -> Result<(), StageError> {
        let mut by_symbol: HashMap<Symbol, Vec<(String, Fill)>> = HashMap::new();
        let mut dlq = Vec::new();
        for entry in batch {
            let span = trace::entry_span("ledger.fill", &self.stream, entry);
            let parsed = Fill::parse(entry);
            if !span.is_disabled() {
                match &parsed {
                    Ok(fill) => {
                        span.record("quantum.symbol", fill.symbol.as_str());
                        span.record("quantum.side", fill.side.as_str());
                        span.record("quantum.plan_id", fill.plan_id.as_str());
                        span.record("quantum.fill_id", fill.fill_id.as_str());
                        self.spans.insert(fill.fill_id.to_string(), span);
                    }
                    Err(_) => trace::record_outcome(&span, "malformed", true),
                }
            }
            match parsed {
                Ok(fill) => by_symbol
                    .entry(fill.symbol.clone())
                    .or_default()
                    .push((entry.id.clone(), fill)),
                Err(e) => {
                    tracing::warn!(
                        "DLQ ledger.commit {}: {e} raw={}",
                        entry.id,
                        truncate(&entry.raw_text(), 512)
                    );
                    dlq.push((entry, e.to_string()));
                }
            }
        }
        let (stuck, acked) = self.apply(by_symbol).await?;
        self.replica_wait.after_write(&self.writer, "the fills applied").await?;
        let letters: Vec<Once> = dlq
            .iter()
            .map(|(entry, error)| Once {
                id: dead_letter_id(&self.stream, LEDGER_COMMIT_STREAM, &entry.id),
                fields: owned(vec![
                    ("source_id", entry.id.clone()),
                    ("source_stream", self.stream.clone()),
                    ("reason", "malformed_fill".to_string()),
                    ("error", truncate(error, 1024).to_string()),
                    ("raw", truncate(&entry.raw_text(), 8192).to_string()),
                    ("timestamp", now_secs().to_string()),
                ]),
                ttl_secs: MARKER_TTL_SECS,
            })
            .collect();
        let ids: Vec<String> = batch
            .iter()
            .map(|e| e.id.clone())
            .filter(|id| !stuck.contains(id) && !acked.contains(id))
            .collect();
        dead_letter_then_ack(
            &self.writer,
            LEDGER_COMMIT_DLQ_STREAM,
            &letters,
            &self.stream,
            LEDGER_GROUP,
            &ids,
        )
        .await?;
        self.stats.malformed += dlq.len() as u64;
        metrics::counter!(quantum_model::metric_names::DLQ_ENTRIES_TOTAL, "stream" => LEDGER_COMMIT_DLQ_STREAM, "reason" => "malformed_fill")
            .increment(dlq.len() as u64);
        Ok(())
    }
}

/// Settings of the reconcile loop.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    pub interval: Duration,
    pub grace: Duration,
    pub eps: Decimal,
}

/// Compares every snapshot with its ledger once; returns how many ledgers were overwritten.
///
/// # Errors
/// Redis unreachable or refusing a read or a write.
pub async fn reconcile_once(
    client: &Client,
    symbols: &[Symbol],
    cfg: &ReconcileConfig,
    tracker: &mut DriftTracker,
) -> Result<u64, Error> {
    if symbols.is_empty() {
        return Ok(0);
    }
    let pipeline = client.pipeline();
    for symbol in symbols {
        pipeline.hgetall::<(), _>(snapshot_key(symbol)).await?;
        pipeline.hgetall::<(), _>(ledger_key(symbol)).await?;
    }
    let replies: Vec<Value> = pipeline.all().await?;
    let mut replies = replies.into_iter();
    let mut written = 0;
    for symbol in symbols {
        let snapshot = hash_pairs(replies.next().unwrap_or(Value::Null));
        let absent = snapshot.is_empty();
        let snapshot = Snapshot::from_hash(&snapshot);
        let ledger = match LedgerEntry::from_hash(&hash_pairs(replies.next().unwrap_or(Value::Null))) {
            Some(Err(e)) => {
                tracing::warn!("LEDGER_RECONCILE symbol={symbol} skipped: ledger unreadable ({e})");
                continue;
            }
            other => other.and_then(Result::ok),
        };
        let Some(snapshot) = snapshot else {
            if absent {
                // A symbol the ledger wrote whose venue has published no snapshot (yet).
                continue;
            }
            tracing::warn!("LEDGER_RECONCILE symbol={symbol} skipped: snapshot lacks position_amt or ts");
            continue;
        };
        let Some(drift) = detect_drift(ledger.as_ref(), &snapshot, cfg.eps) else {
            tracker.clear(symbol);
            continue;
        };
        let version = ledger.as_ref().map_or(0, |l| l.version);
        let ledger_amt = drift.ledger_amt.map_or_else(|| "none".to_string(), |a| a.to_string());
        if tracker.is_new(symbol) {
            metrics::counter!(quantum_model::metric_names::LEDGER_RECONCILE_DRIFT_EVENTS_TOTAL).increment(1);
            tracing::info!(
                "LEDGER_RECONCILE symbol={symbol} ledger_amt={ledger_amt} exchange_amt={} drift={} action=observed",
                drift.exchange_amt,
                drift.size()
            );
        }
        if !tracker.observe(symbol, version, Instant::now(), cfg.grace) {
            continue;
        }
        if !symbol_quiescent(client, symbol).await? {
            tracing::debug!("LEDGER_RECONCILE symbol={symbol} deferred: its fills or plans are in flight");
            continue;
        }
        let entry = reconciled(ledger.as_ref(), &snapshot, now_ms());
        let cas = CasWrite {
            expected_version: version,
            guards: Vec::new(),
            writes: vec![(ledger_key(symbol), CasOp::Hash(owned(entry.to_fields())))],
        };
        if cas.apply(client).await? == CasOutcome::Applied {
            written += 1;
            metrics::counter!(quantum_model::metric_names::LEDGER_RECONCILE_APPLIED_TOTAL).increment(1);
            metrics::histogram!(quantum_model::metric_names::LEDGER_RECONCILE_DRIFT_SIZE)
                .record(drift.size().abs().try_into().unwrap_or(f64::MAX));
            tracker.clear(symbol);
            tracing::warn!(
                "LEDGER_RECONCILE symbol={symbol} ledger_amt={ledger_amt} exchange_amt={} drift={} action=applied version={}",
                drift.exchange_amt,
                drift.size(),
                entry.version
            );
        }
    }
    Ok(written)
}

/// Nothing of `symbol`'s that the venue may already count is still on its way to the ledger:
/// no reservation (a published EXECUTE plan holds one until its order is finished, each fill
/// one until the ledger applies it, whoever published the plan) and no order at a venue call
/// (the executor's open-order index; it holds no symbol, so any open order defers every symbol,
/// for the milliseconds of a venue call). A plan not yet executed has not moved the venue.
async fn symbol_quiescent(client: &Client, symbol: &Symbol) -> Result<bool, Error> {
    let pipeline = client.pipeline();
    pipeline.hlen::<(), _>(reservation_key(symbol)).await?;
    pipeline.zcard::<(), _>(OPEN_ORDERS_KEY).await?;
    let (reserved, open): (u64, u64) = pipeline.all().await?;
    Ok(reserved == 0 && open == 0)
}

/// The ledger's housekeeping every reconcile interval, until `stop` fires: the ledger census,
/// pruning the applied-fill records, the parked fills' sweep, and (`reconcile_on`) a
/// reconcile pass, on the keys `walk` knows. A failed step is logged and retried on the next
/// pass.
async fn periodic(
    client: Client,
    reconcile: ReconcileConfig,
    reconcile_on: bool,
    gap_timeout_ms: u64,
    streams: Vec<String>,
    mut walk: KeyspaceWalk,
    stop: CancellationToken,
) {
    // The sweep acknowledges no entry, so it has nothing to wait for replicas before.
    let mut sweeper = LedgerWriter::new(client.clone(), gap_timeout_ms, Default::default());
    sweeper.written = walk.notes();
    let mut tracker = DriftTracker::default();
    loop {
        // After a failed walk the pass works on what is known and the census gauge keeps its
        // last count.
        let keys = match walk.keys(&client).await {
            Ok(keys) => {
                metrics::gauge!(quantum_model::metric_names::LEDGER_ENTRIES).set(keys.ledgers.len() as f64);
                keys
            }
            Err(e) => {
                tracing::warn!("Scanning the ledger's keys failed: {e}; next pass retries");
                walk.known()
            }
        };
        match dedup::prune(&client, &keys.applied, &streams).await {
            Ok(0) => {}
            Ok(n) => {
                metrics::counter!(quantum_model::metric_names::LEDGER_DEDUP_PRUNED_TOTAL).increment(n);
                tracing::debug!("Pruned {n} applied-fill records no entry can deliver again");
            }
            Err(e) => tracing::warn!("Pruning the applied-fill records failed: {e}; next pass retries"),
        }
        if let Err(e) = sweeper.sweep_parked(&keys.parked).await {
            tracing::warn!("Applying parked fills failed: {e}; next pass retries");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(reconcile.interval) => {}
        }
        if reconcile_on {
            if let Err(e) = reconcile_once(&client, &keys.snapshots, &reconcile, &mut tracker).await {
                tracing::warn!("Reconcile pass failed: {e}");
            }
        }
        quantum_runtime::telemetry::flush_logs();
    }
}

/// Runs the ledger service until `shutdown` fires.
///
/// # Errors
/// Invalid settings, Redis unreachable or refusing the ledger's credentials or rights, the HTTP port taken, or a fatal stage error.
pub async fn run(args: LedgerArgs, shutdown: CancellationToken) -> Result<LedgerStats, LedgerError> {
    let spec = ConsumerSpec::new(
        LEDGER_COMMIT_STREAM,
        LEDGER_GROUP,
        LEDGER_COMMIT_DLQ_STREAM,
        "ledger",
        &args.consumer,
    );
    let reconcile = ReconcileConfig {
        interval: Duration::from_millis(args.reconcile_interval_ms.max(100)),
        grace: Duration::from_millis(args.reconcile_grace_ms),
        eps: args.reconcile_eps,
    };
    tracing::info!("Quantum Ledger - ledger.commit → quantum:position:ledger:<SYMBOL>");
    tracing::info!("Redis: {}", args.redis.display());
    tracing::info!("Consumer: {} / {}", spec.group, spec.consumer);
    tracing::info!(
        "Config: reconcile={} reconcile_interval_ms={} reconcile_grace_ms={} reconcile_eps={} batch_size={}",
        args.reconcile,
        reconcile.interval.as_millis(),
        reconcile.grace.as_millis(),
        reconcile.eps,
        spec.batch_size
    );
    let readiness = http::serve(args.http.metrics_bind, args.metrics_port, shutdown.clone()).await?;
    let shards = args.consumer.stream_shards;
    let conns = Connections::connect(&args.redis, shards.count(), &shutdown).await?;
    quantum_runtime::sharding::agree(&conns.writer, shards, &shutdown).await?;
    dedup::migrate(&conns.writer, now_ms()).await?;
    let specs = spec.per_shard(shards);
    readiness.watch(conns.writer.clone(), &specs);
    let written = keyspace::Written::default();
    let periodic = tokio::spawn(periodic(
        conns.writer.clone(),
        reconcile,
        args.reconcile,
        args.gap_timeout_ms,
        shards.names(LEDGER_COMMIT_STREAM),
        KeyspaceWalk::new(Duration::from_millis(args.keyspace_scan_ms), written.clone()),
        shutdown.clone(),
    ));
    // One writer per shard, each with its own reader.
    let mut writers: Vec<LedgerWriter> = specs
        .iter()
        .map(|spec| {
            let mut writer = LedgerWriter::new(conns.writer.clone(), args.gap_timeout_ms, spec.replica_wait.clone());
            writer.stream = spec.stream.clone();
            writer.written = written.clone();
            writer
        })
        .collect();
    let result = consumer::run_shards(&conns.readers, &conns.writer, &specs, &mut writers, &shutdown).await;
    shutdown.cancel();
    let _ = periodic.await;
    result?;
    let stats = writers.iter().fold(LedgerStats::default(), |sum, w| sum.add(&w.stats));
    let s = &stats;
    tracing::info!(
        "Quantum Ledger stopped: applied={} duplicates={} malformed={}",
        s.applied,
        s.duplicates,
        s.malformed
    );
    Ok(stats)
}
