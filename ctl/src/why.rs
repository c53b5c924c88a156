//! `quantumctl why`: what became of one intent, stage by stage, and why a symbol is (not)
//! trading, in one verdict line. Reads only (works as the `quantum-ops` ACL user).
//!
//! Sources: the intent entry; its replay marker, whose value is the bridge's outcome record
//! (`quantum_model::outcome`); the plan, result and fills found by scanning their streams
//! forward from the intent's time (bounded); the order record; the ledger's dedup set; the
//! settings the bridge and executor publish at start; the proposal and its history.
//! Gathering is I/O; [`IntentReport::stopped`] and [`SymbolReport::verdict`] are pure.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Value};

use quantum_model::contract::*;
use quantum_model::governor::{self, GovernorConfig, ProposalFields, ProposalView, SymbolRisk, PROPOSAL_FIELDS};
use quantum_model::intent::{Intent, IntentLimits};
use quantum_model::outcome::OutcomeRecord;
use quantum_model::position::LedgerEntry;
use quantum_model::stream_entry::StreamEntry;
use quantum_model::time::{entry_ms, now_ms};
use quantum_model::types::{OrderId, Side, Symbol};
use quantum_runtime::reply::{decode_entries, hash_pairs, opt_text};

/// Most entries one search reads from a stream (so a huge stream costs a bounded scan).
const MAX_SCAN: usize = 200_000;
/// Entries per XRANGE page.
const PAGE: usize = 2_000;

/// One stage an intent went through, with when it happened (unix ms) when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub name: &'static str,
    pub at_ms: Option<u64>,
    pub detail: String,
}

/// Where an intent stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntentReport {
    pub intent_id: String,
    pub stages: Vec<Stage>,
    /// The bridge's record (absent: not processed yet, or the marker expired).
    pub record: Option<OutcomeRecord>,
    /// Delivered to the bridge and not acknowledged (it waits, or is in flight).
    pub pending_deliveries: Option<u64>,
    /// The bridge has not read it yet.
    pub unread: bool,
    pub dlq_error: Option<String>,
    pub result: Option<BTreeMap<String, String>>,
    pub order_state: Option<String>,
    /// (fill id, applied to the ledger)
    pub fills: Vec<(String, bool)>,
}

/// Human words for the reason codes operators meet most.
pub fn explain(code: &str) -> &'static str {
    match code {
        "not_allowlisted" => "the symbol is not in SYMBOL_ALLOWLIST",
        "strict_ledger_missing_buy" => "strict mode: a BUY needs a ledger",
        "ledger_missing_sell" => "SELL without a ledger (no fill yet)",
        "ledger_flat_sell" => "SELL on a flat ledger",
        "ledger_unreadable" => "the symbol's ledger hash cannot be read (fails closed)",
        "exposure" => "portfolio exposure at or above MAX_EXPOSURE_PCT",
        "stale" => "older than INTENT_BRIDGE_MAX_INTENT_AGE_MS",
        "kill_score_warning_risk_increase" => "legacy governor: K at or above K_BLOCK_WARNING blocks entries",
        "kill_score_critical" => "legacy governor: K at or above K_BLOCK_CRITICAL blocks everything",
        "kill_score_entry_outlier" => "separated governor: K is an outlier against the symbol's history",
        "kill_score_entry_critical" => "separated governor: K at or above GOVERNOR_ENTRY_K_CRITICAL",
        "kill_score_entry_fallback_blocked" => {
            "separated governor, short history: K at or above GOVERNOR_ENTRY_K_FALLBACK"
        }
        "proposal_unreadable" => "the risk kernel's proposal cannot be read (fails closed for entries)",
        "proposal_missing" => "no proposal from the risk kernel",
        "proposal_stale" => "the risk kernel's proposal is older than GOVERNOR_PROPOSAL_MAX_AGE_S",
        "mark_price_unavailable" => "no mark price to size it",
        "short_not_supported" => "opening a short is not supported",
        _ => "",
    }
}

fn with_explanation(code: &str) -> String {
    match explain(code) {
        "" => code.to_string(),
        text => format!("{code} ({text})"),
    }
}

impl IntentReport {
    /// The stage where the intent stopped and why, or how far it got.
    pub fn stopped(&self) -> String {
        let Some(record) = &self.record else {
            if let Some(n) = self.pending_deliveries {
                return format!(
                    "waiting at the bridge: delivered {n} time(s), not acknowledged (in flight, or waiting for its mark price)"
                );
            }
            if self.unread {
                return "waiting at the bridge: not read yet (the bridge lags or is down)".into();
            }
            return "unknown: no outcome record (it expired after INTENT_BRIDGE_IDEMPOTENCY_TTL, or an older bridge processed it)".into();
        };
        let reason = record.reason().unwrap_or("none");
        match record.kind() {
            "skipped" => format!("stopped at the bridge's gates: skipped, {}", with_explanation(reason)),
            "dlq" => format!(
                "stopped at the bridge: dead-lettered, {}{}",
                with_explanation(reason),
                self.dlq_error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
            ),
            "blocked" => format!(
                "stopped at the governor: BLOCKED, {}{}",
                with_explanation(reason),
                record
                    .get("kill_score")
                    .map(|k| format!(", kill_score {k}"))
                    .unwrap_or_default()
            ),
            "published" => self.after_publish(),
            other => format!("processed by the bridge ({other}); no details recorded"),
        }
    }

    fn after_publish(&self) -> String {
        let Some(result) = &self.result else {
            return "waiting at the executor: plan published, no result yet".into();
        };
        let get = |k: &str| result.get(k).map(String::as_str).unwrap_or_default();
        if get("executed") != "true" {
            let reason = if get("reason").is_empty() {
                get("error")
            } else {
                get("reason")
            };
            let stage = if self.order_state.as_deref() == Some("REJECTED") {
                "the venue: REJECTED"
            } else {
                "the executor: not executed"
            };
            return format!("stopped at {stage}, {}", with_explanation(reason));
        }
        let pending: Vec<&str> = self
            .fills
            .iter()
            .filter(|(_, applied)| !applied)
            .map(|(id, _)| id.as_str())
            .collect();
        if !pending.is_empty() {
            return format!("waiting at the ledger: fill(s) {} not applied yet", pending.join(","));
        }
        format!(
            "done: filled {} @ {} and applied to the ledger ({} fill(s))",
            get("filled_qty"),
            get("avg_price"),
            self.fills.len()
        )
    }

    /// The report as text.
    pub fn render(&self, color: bool) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "intent {}", self.intent_id);
        let mut previous: Option<u64> = None;
        for stage in &self.stages {
            let when = stage.at_ms.map(|ms| {
                let delta = previous
                    .map(|p| format!(" (+{} ms)", ms.saturating_sub(p)))
                    .unwrap_or_default();
                previous = Some(ms);
                format!("{ms}{delta}")
            });
            let _ = writeln!(
                out,
                "  {:<12} {:<26} {}",
                stage.name,
                when.unwrap_or_else(|| "-".into()),
                stage.detail
            );
        }
        let _ = writeln!(out, "{}", paint(&self.stopped(), verdict_style(&self.stopped()), color));
        out
    }
}

/// Colours only on a terminal: green done/trading, red stopped/BLOCKED, yellow waiting.
fn verdict_style(text: &str) -> anstyle::Style {
    let color = if text.starts_with("done") || text.contains(": trading") {
        anstyle::AnsiColor::Green
    } else if text.starts_with("waiting") {
        anstyle::AnsiColor::Yellow
    } else {
        anstyle::AnsiColor::Red
    };
    anstyle::Style::new().fg_color(Some(color.into())).bold()
}

fn paint(text: &str, style: anstyle::Style, color: bool) -> String {
    if color {
        format!("{}{text}{}", style.render(), style.render_reset())
    } else {
        text.to_string()
    }
}

/// Whether stdout is a terminal (colours only then).
pub fn stdout_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal()
}

fn parse_err(e: String) -> Error {
    Error::new(ErrorKind::Parse, e)
}

async fn entry_by_id(client: &Client, stream: &str, id: &str) -> Result<Option<StreamEntry>, Error> {
    let reply: Value = client.xrange(stream, id, id, Some(1)).await?;
    let mut entries = decode_entries(reply).map_err(parse_err)?;
    Ok(entries.pop().and_then(|(_, e)| e))
}

/// Entries of `stream` from `start` (inclusive), oldest first, passed to `visit` until it
/// returns false or [`MAX_SCAN`] entries were read.
async fn scan_forward(
    client: &Client,
    stream: &str,
    start: &str,
    mut visit: impl FnMut(&StreamEntry) -> bool,
) -> Result<(), Error> {
    let mut from = start.to_string();
    let mut read = 0;
    while read < MAX_SCAN {
        let reply: Value = client.xrange(stream, from.as_str(), "+", Some(PAGE as u64)).await?;
        let page = decode_entries(reply).map_err(parse_err)?;
        let Some((last, _)) = page.last() else { break };
        from = format!("({last}");
        read += page.len();
        for entry in page.iter().filter_map(|(_, e)| e.as_ref()) {
            if !visit(entry) {
                return Ok(());
            }
        }
        if page.len() < PAGE {
            break;
        }
    }
    Ok(())
}

/// Entries of `stream` newer than `since_ms`, newest first, at most [`MAX_SCAN`].
async fn scan_recent(client: &Client, stream: &str, since_ms: u64) -> Result<Vec<StreamEntry>, Error> {
    let mut out = Vec::new();
    let mut to = "+".to_string();
    let start = format!("{since_ms}-0");
    while out.len() < MAX_SCAN {
        let reply: Value = client
            .xrevrange(stream, to.as_str(), start.as_str(), Some(PAGE as u64))
            .await?;
        let page = decode_entries(reply).map_err(parse_err)?;
        let Some((last, _)) = page.last() else { break };
        to = format!("({last}");
        let full = page.len() == PAGE;
        out.extend(page.into_iter().filter_map(|(_, e)| e));
        if !full {
            break;
        }
    }
    Ok(out)
}

/// Delivery count of `id` in `group`'s pending list, if it is pending.
async fn pending_deliveries(client: &Client, stream: &str, group: &str, id: &str) -> Result<Option<u64>, Error> {
    let args: Vec<Value> = vec![stream.into(), group.into(), id.into(), id.into(), 1.into()];
    let reply: Result<Value, Error> = client
        .custom(CustomCommand::new("XPENDING", ClusterHash::FirstKey, false), args)
        .await;
    let Ok(reply) = reply else { return Ok(None) };
    Ok(reply
        .into_array()
        .into_iter()
        .next()
        .and_then(|e| e.into_array().get(3).and_then(|n| n.as_u64())))
}

/// Follows one intent through every stage.
///
/// # Errors
/// Redis errors only; missing pieces are reported in the result.
pub async fn intent(client: &Client, intent_id: &str) -> Result<IntentReport, Error> {
    let mut report = IntentReport {
        intent_id: intent_id.to_string(),
        ..IntentReport::default()
    };
    let intent_ms = entry_ms(intent_id);
    let entry = entry_by_id(client, INTENT_STREAM, intent_id).await?;
    report.stages.push(Stage {
        name: "intent",
        at_ms: intent_ms,
        detail: match &entry {
            Some(e) => summarize(e),
            None => "not in trade.intent (trimmed, deleted, or a wrong id)".into(),
        },
    });
    let marker: Option<String> = client.get(seen_key(intent_id)).await?;
    report.record = marker.map(|m| OutcomeRecord::parse(&m));
    let Some(record) = report.record.clone() else {
        report.pending_deliveries = pending_deliveries(client, INTENT_STREAM, INTENT_GROUP, intent_id).await?;
        let backlog = quantum_runtime::consumer::group_backlog(client, INTENT_STREAM, INTENT_GROUP).await?;
        report.unread =
            report.pending_deliveries.is_none() && backlog.is_none_or(|b| id_after(intent_id, &b.last_delivered_id));
        return Ok(report);
    };
    report.stages.push(Stage {
        name: "bridge",
        at_ms: record.get("ts").and_then(|t| t.parse().ok()),
        detail: record.to_string(),
    });
    let start = intent_id.to_string();
    match record.kind() {
        "dlq" => {
            scan_forward(client, INTENT_DLQ_STREAM, &start, |e| {
                if e.get("source_id") == Some(intent_id) {
                    report.dlq_error = e.get("error").map(str::to_string);
                    return false;
                }
                true
            })
            .await?;
        }
        "published" | "blocked" => {
            if let Some(plan_id) = record.get("plan_id").map(str::to_string) {
                follow_plan(client, &mut report, &plan_id, &start).await?;
            }
        }
        _ => {}
    }
    Ok(report)
}

/// Whether entry id `a` is after `b` (ms, then sequence).
fn id_after(a: &str, b: &str) -> bool {
    let split = |id: &str| {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse::<u64>().unwrap_or(0), seq.parse::<u64>().unwrap_or(0))
    };
    split(a) > split(b)
}

async fn follow_plan(client: &Client, report: &mut IntentReport, plan_id: &str, start: &str) -> Result<(), Error> {
    // The plan is on its symbol's shard (STREAM_SHARDS), and its result and fills on the
    // same shard of theirs.
    let shards = crate::pipeline_facts::stream_shards(client).await?;
    let mut plan: Option<(String, StreamEntry)> = None;
    let mut shard = 0;
    for (index, stream) in shards.names(PLAN_STREAM).iter().enumerate() {
        scan_forward(client, stream, start, |e| {
            if e.get("plan_id") == Some(plan_id) {
                plan = Some((e.id.clone(), e.clone()));
                return false;
            }
            true
        })
        .await?;
        if plan.is_some() {
            shard = index as u16;
            break;
        }
    }
    let Some((plan_entry_id, plan)) = plan else {
        report.stages.push(Stage {
            name: "plan",
            at_ms: None,
            detail: format!("plan {plan_id} not found in apply.plan (trimmed?)"),
        });
        return Ok(());
    };
    let field = |k: &str| plan.get(k).unwrap_or("-").to_string();
    report.stages.push(Stage {
        name: "plan",
        at_ms: entry_ms(&plan_entry_id),
        detail: format!(
            "plan_id={plan_id} decision={} reason_codes={} kill_score={} qty={}",
            field("decision"),
            field("reason_codes"),
            field("kill_score"),
            field("qty")
        ),
    });
    let mut result: Option<StreamEntry> = None;
    scan_forward(client, &shards.name(RESULT_STREAM, shard), &plan_entry_id, |e| {
        if e.get("plan_id") == Some(plan_id) {
            result = Some(e.clone());
            return false;
        }
        true
    })
    .await?;
    let Some(result) = result else { return Ok(()) };
    let fields: BTreeMap<String, String> = result.fields.iter().cloned().collect();
    let g = |k: &str| fields.get(k).map(String::as_str).unwrap_or("-").to_string();
    let order_id = fields.get("order_id").cloned().unwrap_or_default();
    // The venue call comes before the result that reports it.
    if !order_id.is_empty() {
        follow_order(client, report, &order_id).await?;
    }
    report.stages.push(Stage {
        name: "executor",
        at_ms: entry_ms(&result.id),
        detail: format!(
            "executed={} decision={} reason={} order_id={}",
            g("executed"),
            g("decision"),
            if g("reason").is_empty() {
                "-".into()
            } else {
                g("reason")
            },
            g("order_id")
        ),
    });
    report.result = Some(fields);
    if order_id.is_empty() {
        return Ok(());
    }
    let fills = shards.name(LEDGER_COMMIT_STREAM, shard);
    follow_fills(client, report, &fills, plan_id, &plan_entry_id, entry_ms(&result.id)).await
}

/// The venue order's stage, from its record.
async fn follow_order(client: &Client, report: &mut IntentReport, order_id: &str) -> Result<(), Error> {
    let order: Value = client.hgetall(order_key(&OrderId::new(order_id))).await?;
    let order: BTreeMap<String, String> = hash_pairs(order).into_iter().collect();
    report.order_state = order.get("state").cloned();
    let o = |k: &str| order.get(k).map(String::as_str).unwrap_or("-");
    report.stages.push(Stage {
        name: "venue order",
        at_ms: order.get("finished_ts").and_then(|t| t.parse().ok()),
        detail: format!(
            "{order_id} state={} filled_qty={} avg_price={} fee={}",
            o("state"),
            o("filled_qty"),
            o("avg_price"),
            o("fee")
        ),
    });
    Ok(())
}

async fn follow_fills(
    client: &Client,
    report: &mut IntentReport,
    stream: &str,
    plan_id: &str,
    from: &str,
    result_ms: Option<u64>,
) -> Result<(), Error> {
    // Fills are written in the result's MULTI/EXEC: none can be later than the result.
    let until = result_ms.unwrap_or(u64::MAX);
    let mut fills: Vec<StreamEntry> = Vec::new();
    scan_forward(client, stream, from, |e| {
        if entry_ms(&e.id).is_some_and(|ms| ms > until) {
            return false;
        }
        if e.get("plan_id") == Some(plan_id) {
            fills.push(e.clone());
        }
        true
    })
    .await?;
    for fill in fills {
        let (Some(fill_id), Some(symbol)) = (fill.get("fill_id"), fill.get("symbol")) else {
            continue;
        };
        let Ok(symbol) = Symbol::parse(symbol) else { continue };
        let (applied, parked) = fill_applied(client, &symbol, fill_id, fill.get("venue_seq")).await?;
        report.stages.push(Stage {
            name: "fill",
            at_ms: entry_ms(&fill.id),
            detail: format!(
                "{fill_id} {} {} @ {} fee={}",
                fill.get("side").unwrap_or("-"),
                fill.get("qty").unwrap_or("-"),
                fill.get("price").unwrap_or("-"),
                fill.get("fee").unwrap_or("-")
            ),
        });
        report.stages.push(Stage {
            name: "ledger",
            at_ms: None,
            detail: if applied {
                format!("{fill_id} applied to quantum:position:ledger:{symbol}")
            } else if parked {
                format!("{fill_id} parked: waiting for the venue's earlier fills of {symbol} (LEDGER_PARKED)")
            } else {
                format!("{fill_id} not applied yet (ledger lag?)")
            },
        });
        report.fills.push((fill_id.to_string(), applied));
    }
    Ok(())
}

/// Whether a fill is in its symbol's ledger, and if not whether it is parked. A numbered fill
/// is applied once the ledger's venue sequence covers it; an unnumbered one (older executors)
/// by its applied-fill record.
async fn fill_applied(
    client: &Client,
    symbol: &Symbol,
    fill_id: &str,
    venue_seq: Option<&str>,
) -> Result<(bool, bool), Error> {
    let Some(seq) = venue_seq.and_then(|s| s.parse::<u64>().ok()) else {
        let applied = client
            .zscore::<Option<f64>, _, _>(ledger_applied_key(symbol), fill_id)
            .await?
            .is_some();
        return Ok((applied, false));
    };
    let ledger: HashMap<String, String> = client.hgetall(ledger_key(symbol)).await?;
    let pairs: Vec<(String, String)> = ledger.into_iter().collect();
    let applied = LedgerEntry::from_hash(&pairs)
        .and_then(Result::ok)
        .is_some_and(|entry| entry.has_applied(seq));
    let parked = !applied && client.hexists::<bool, _, _>(ledger_parked_key(symbol), seq).await?;
    Ok((applied, parked))
}

fn summarize(entry: &StreamEntry) -> String {
    match Intent::parse(entry, &IntentLimits::default()) {
        Ok(i) => format!("{} {} {}", i.symbol, i.side, i.sizing),
        Err(e) => format!("unparseable ({}): {e}", e.reason()),
    }
}

/// The symbol an intent entry names, also for intents the bridge could not parse.
fn intent_symbol(entry: &StreamEntry) -> Option<(Symbol, Option<Side>)> {
    if let Ok(i) = Intent::parse(entry, &IntentLimits::default()) {
        return Some((i.symbol, Some(i.side)));
    }
    let raw = entry.get("symbol").map(str::to_string).or_else(|| {
        let payload: serde_json::Value = serde_json::from_str(entry.get("payload")?).ok()?;
        payload.get("symbol")?.as_str().map(str::to_string)
    })?;
    Symbol::parse(&raw).ok().map(|s| (s, None))
}

/// Everything `why <SYMBOL>` looks at.
#[derive(Debug, Clone, Default)]
pub struct SymbolReport {
    pub symbol: Option<Symbol>,
    pub minutes: u64,
    pub bridge_config: BTreeMap<String, String>,
    pub executor_config: BTreeMap<String, String>,
    /// position_amt, or None without a ledger; Err for an unreadable one.
    pub ledger: Option<BTreeMap<String, String>>,
    pub governor: GovernorConfig,
    /// The proposal and the history, assessed as the bridge does.
    pub risk: Option<SymbolRisk>,
    /// (intent id, side, outcome) of the symbol's intents in the window, newest first.
    pub intents: Vec<(String, Option<Side>, Option<OutcomeRecord>)>,
    pub plans: u64,
    pub fills: u64,
    /// Plans published in the window without a result yet.
    pub in_flight: u64,
    /// Executor refusals in the window (executed=false, not BLOCKED), by reason.
    pub refusals: BTreeMap<String, u64>,
}

impl SymbolReport {
    fn sym(&self) -> &str {
        self.symbol.as_ref().map_or("?", |s| s.as_str())
    }

    fn allowlisted(&self) -> Option<bool> {
        let list = self.bridge_config.get("allowlist")?;
        Some(list.split(',').any(|s| s == self.sym()))
    }

    /// Outcomes grouped as `kind[:reason]` → count, for one side (None: both).
    pub fn outcomes(&self, side: Option<Side>) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (_, s, record) in &self.intents {
            if side.is_some() && *s != side {
                continue;
            }
            *out.entry(outcome_label(record.as_ref())).or_default() += 1;
        }
        out
    }

    /// The one-line answer.
    pub fn verdict(&self) -> String {
        let sym = self.sym();
        if self.allowlisted() == Some(false) {
            return format!(
                "{sym}: not allowlisted ({}={}): every intent is skipped",
                self.bridge_config
                    .get("allowlist_source")
                    .map_or("SYMBOL_ALLOWLIST", String::as_str),
                self.bridge_config.get("allowlist").map_or("", String::as_str)
            );
        }
        if self.intents.is_empty() {
            return format!(
                "{sym}: no intents for this symbol in the last {} minutes (look at the producer)",
                self.minutes
            );
        }
        let mut parts = Vec::new();
        if let Some(entries) = self.side_problem(Side::Buy) {
            parts.push(format!("entries {entries}"));
        }
        if let Some(exits) = self.side_problem(Side::Sell) {
            parts.push(format!("SELLs {exits}"));
        }
        if let Some((reason, n)) = self.refusals.iter().max_by_key(|(_, n)| **n) {
            parts.push(format!("{n} plan(s) refused by the executor ({reason})"));
        }
        let dlq = self
            .intents
            .iter()
            .filter(|(_, _, r)| r.as_ref().is_some_and(|r| r.kind() == "dlq"))
            .count();
        if dlq > 0 {
            parts.push(format!("{dlq} intent(s) dead-lettered"));
        }
        if self.fills > 0 {
            let trading = format!(
                "trading ({} plans, {} fills in the last {} min)",
                self.plans, self.fills, self.minutes
            );
            parts.insert(0, trading);
        }
        if parts.is_empty() {
            return format!(
                "{sym}: plans published ({}), no fills yet in the last {} min ({} in flight)",
                self.plans, self.minutes, self.in_flight
            );
        }
        format!("{sym}: {}", parts.join("; "))
    }

    /// What stops one side, when none of its intents went through.
    fn side_problem(&self, side: Side) -> Option<String> {
        let records: Vec<&OutcomeRecord> = self
            .intents
            .iter()
            .filter(|(_, s, _)| *s == Some(side))
            .filter_map(|(_, _, r)| r.as_ref())
            .collect();
        if records.is_empty() || records.iter().any(|r| r.kind() == "published") {
            return None;
        }
        let newest = records[0];
        let reason = newest.reason().unwrap_or("unknown");
        Some(match newest.kind() {
            "blocked" => format!("BLOCKED by the governor ({})", self.governor_detail(newest)),
            "skipped" => format!("skipped: {}", short_reason(reason)),
            "dlq" => format!("dead-lettered: {reason}"),
            other => format!("{other}: {reason}"),
        })
    }

    fn governor_detail(&self, record: &OutcomeRecord) -> String {
        let reason = record.reason().unwrap_or("unknown");
        let k = record.get("kill_score").unwrap_or("none");
        let g = &self.governor;
        let mode = format!("{} mode", g.mode.as_str());
        match reason {
            "kill_score_warning_risk_increase" => format!("kill_score {k} ≥ {:.2}, {mode}", g.k_block_warning),
            "kill_score_critical" => format!("kill_score {k} ≥ {:.2}, {mode}", g.k_block_critical),
            "kill_score_entry_critical" => format!("kill_score {k} ≥ {:.2}, {mode}", g.entry_k_critical),
            "kill_score_entry_fallback_blocked" => format!(
                "kill_score {k} ≥ {:.2} while the history is short, {mode}",
                g.entry_k_fallback
            ),
            "kill_score_entry_outlier" => format!(
                "kill_score {k}, z {} ≥ {:.1}, {mode}",
                record.get("kill_score_z").unwrap_or("?"),
                g.entry_z_block
            ),
            other => format!("{other}, {mode}"),
        }
    }

    /// The report as text.
    pub fn render(&self, color: bool) -> String {
        let mut out = String::new();
        let sym = self.sym();
        let _ = writeln!(out, "{sym}");
        let allow = match self.allowlisted() {
            None => "unknown (no bridge settings published: is the bridge running this build?)".to_string(),
            Some(yes) => format!(
                "{} (bridge: {}={}; executor: {})",
                if yes { "yes" } else { "NO" },
                self.bridge_config.get("allowlist_source").map_or("?", String::as_str),
                self.bridge_config.get("allowlist").map_or("", String::as_str),
                self.executor_config
                    .get("allowlist")
                    .map_or("unknown".to_string(), |a| if a.split(',').any(|s| s == sym) {
                        "yes".into()
                    } else {
                        format!("NO ({a})")
                    })
            ),
        };
        let _ = writeln!(out, "  allowlisted: {allow}");
        let ledger = match &self.ledger {
            None => "missing (no fill yet)".to_string(),
            Some(l) => {
                let amt = l.get("position_amt").map_or("?", String::as_str);
                let flat = amt.parse::<f64>().map(|a| a == 0.0).unwrap_or(false);
                format!(
                    "{}{amt} (last fill {}, {} fills)",
                    if flat { "flat " } else { "" },
                    l.get("last_fill_id").map_or("-", String::as_str),
                    l.get("fills").map_or("0", String::as_str)
                )
            }
        };
        let _ = writeln!(out, "  ledger: {ledger}");
        let _ = writeln!(
            out,
            "  in flight: {} plan(s) published in the window without a result",
            self.in_flight
        );
        let _ = writeln!(out, "  governor: {}", self.governor_line());
        let _ = writeln!(out, "  last {} minutes: {} intent(s)", self.minutes, self.intents.len());
        for (side, label) in [(Some(Side::Buy), "BUY"), (Some(Side::Sell), "SELL"), (None, "all")] {
            let counts = self.outcomes(side);
            if counts.is_empty() || (side.is_none() && self.intents.iter().all(|(_, s, _)| s.is_some())) {
                continue;
            }
            let text: Vec<String> = counts.iter().map(|(k, n)| format!("{k}={n}")).collect();
            let _ = writeln!(out, "    {label:<4} {}", text.join(" "));
        }
        for (id, side, record) in self.intents.iter().take(10) {
            let _ = writeln!(
                out,
                "    {id} {} {}",
                side.map_or("?", |s| s.as_str()),
                record.as_ref().map_or("(no record)".to_string(), |r| r.to_string())
            );
        }
        let verdict = self.verdict();
        let _ = writeln!(out, "{}", paint(&verdict, verdict_style(&verdict), color));
        out
    }

    fn governor_line(&self) -> String {
        let g = &self.governor;
        let mode = g.mode.as_str();
        match self.risk.as_ref().map(|r| &r.view) {
            None | Some(ProposalView::Missing) => {
                format!("mode={mode}; no proposal (quantum:harvest:proposal:{})", self.sym())
            }
            Some(ProposalView::Unreadable(e)) => format!("mode={mode}; proposal unreadable: {e}"),
            Some(ProposalView::Stale { proposal, age_secs }) => format!(
                "mode={mode}; proposal stale (kill_score {:.4}, {} s old)",
                proposal.kill_score,
                age_secs.map_or("?".into(), |a| a.to_string())
            ),
            Some(ProposalView::Fresh(p)) => format!(
                "mode={mode}; kill_score {:.4}, z {} over {} sample(s); an entry now: {}",
                p.kill_score,
                self.risk
                    .as_ref()
                    .and_then(|r| r.zscore(g))
                    .map_or("n/a".into(), |z| format!("{z:.2}")),
                self.risk.as_ref().map_or(0, |r| r.history.len()),
                self.entry_now()
            ),
        }
    }

    fn entry_now(&self) -> String {
        let Some(risk) = &self.risk else { return "-".into() };
        let v = governor::decide(&self.governor, Side::Buy, &risk.view, &risk.history);
        format!("{} ({})", v.decision, v.reason)
    }
}

fn short_reason(code: &str) -> String {
    match code {
        "ledger_missing_sell" => "no ledger".into(),
        "ledger_flat_sell" => "ledger flat".into(),
        "ledger_unreadable" => "ledger unreadable".into(),
        "strict_ledger_missing_buy" => "no ledger (strict mode)".into(),
        "not_allowlisted" => "not allowlisted".into(),
        "exposure" => "exposure at or above MAX_EXPOSURE_PCT".into(),
        "stale" => "stale (older than INTENT_BRIDGE_MAX_INTENT_AGE_MS)".into(),
        other => other.into(),
    }
}

/// `kind[:reason]` of a record (`pending` without one).
pub fn outcome_label(record: Option<&OutcomeRecord>) -> String {
    match record {
        None => "pending".into(),
        Some(r) => match (r.kind(), r.reason()) {
            ("published", _) => "published".into(),
            (kind, Some(reason)) if !reason.is_empty() => format!("{kind}:{reason}"),
            (kind, _) => kind.into(),
        },
    }
}

/// Gathers everything about `symbol` over the last `minutes`.
///
/// # Errors
/// Redis errors only.
pub async fn symbol(client: &Client, symbol: &Symbol, minutes: u64) -> Result<SymbolReport, Error> {
    let since = now_ms().saturating_sub(minutes * 60_000);
    let mut report = SymbolReport {
        symbol: Some(symbol.clone()),
        minutes,
        ..SymbolReport::default()
    };
    let pipeline = client.pipeline();
    pipeline.hgetall::<(), _>(BRIDGE_CONFIG_KEY).await?;
    pipeline.hgetall::<(), _>(EXECUTOR_CONFIG_KEY).await?;
    pipeline.hgetall::<(), _>(ledger_key(symbol)).await?;
    pipeline
        .hmget::<(), _, _>(proposal_key(symbol), PROPOSAL_FIELDS.to_vec())
        .await?;
    // The newest samples (the window cannot exceed 10,000; SymbolRisk keeps the configured one).
    pipeline
        .zrange::<(), _, _, _>(kill_history_key(symbol), -10_001, -1, None, false, None, false)
        .await?;
    let mut replies = pipeline.all::<Vec<Value>>().await?.into_iter();
    let mut next_hash =
        || -> BTreeMap<String, String> { hash_pairs(replies.next().unwrap_or(Value::Null)).into_iter().collect() };
    report.bridge_config = next_hash();
    report.executor_config = next_hash();
    let ledger = next_hash();
    report.ledger = (!ledger.is_empty()).then_some(ledger);
    let cfg = &report.bridge_config;
    report.governor = GovernorConfig::from_fields(cfg);
    let mut fields = ProposalFields::default();
    for (slot, v) in fields
        .0
        .iter_mut()
        .zip(replies.next().unwrap_or(Value::Null).into_array())
    {
        *slot = opt_text(&v);
    }
    let members: Vec<String> = replies
        .next()
        .unwrap_or(Value::Null)
        .into_array()
        .iter()
        .filter_map(opt_text)
        .collect();
    report.risk = Some(SymbolRisk::assess(&report.governor, &fields, &members, now_ms() / 1000));
    recent_intents(client, &mut report, since).await?;
    recent_flow(client, &mut report, since).await?;
    Ok(report)
}

async fn recent_intents(client: &Client, report: &mut SymbolReport, since: u64) -> Result<(), Error> {
    let Some(symbol) = report.symbol.clone() else {
        return Ok(());
    };
    let mine: Vec<(String, Option<Side>)> = scan_recent(client, INTENT_STREAM, since)
        .await?
        .iter()
        .filter_map(|e| {
            intent_symbol(e)
                .filter(|(s, _)| *s == symbol)
                .map(|(_, side)| (e.id.clone(), side))
        })
        .collect();
    for chunk in mine.chunks(1000) {
        let keys: Vec<String> = chunk.iter().map(|(id, _)| seen_key(id)).collect();
        let values = quantum_runtime::nodes::mget(client, &keys).await?;
        for ((id, side), value) in chunk.iter().zip(values) {
            let record = value.map(|v| OutcomeRecord::parse(&v));
            report.intents.push((id.clone(), *side, record));
        }
    }
    Ok(())
}

async fn recent_flow(client: &Client, report: &mut SymbolReport, since: u64) -> Result<(), Error> {
    let sym = report.sym().to_string();
    let mine = |e: &StreamEntry| e.get("symbol") == Some(sym.as_str());
    // The symbol's shard of each stream (STREAM_SHARDS), or shard 0 for an unparsable symbol.
    let shards = crate::pipeline_facts::stream_shards(client).await?;
    let shard = report.symbol.as_ref().map_or(0, |s| shards.of(s));
    let plans: Vec<String> = scan_recent(client, &shards.name(PLAN_STREAM, shard), since)
        .await?
        .into_iter()
        .filter(|e| mine(e))
        .filter_map(|e| e.get("plan_id").map(str::to_string))
        .collect();
    report.plans = plans.len() as u64;
    let results: Vec<StreamEntry> = scan_recent(client, &shards.name(RESULT_STREAM, shard), since)
        .await?
        .into_iter()
        .filter(|e| mine(e))
        .collect();
    let answered: std::collections::HashSet<&str> = results.iter().filter_map(|r| r.get("plan_id")).collect();
    report.in_flight = plans.iter().filter(|p| !answered.contains(p.as_str())).count() as u64;
    for r in &results {
        if r.get("executed") == Some("false") && r.get("decision") != Some("BLOCKED") {
            let reason = r.get("reason").unwrap_or("unknown").to_string();
            *report.refusals.entry(reason).or_default() += 1;
        }
    }
    report.fills = scan_recent(client, &shards.name(LEDGER_COMMIT_STREAM, shard), since)
        .await?
        .iter()
        .filter(|e| mine(e))
        .count() as u64;
    Ok(())
}

/// The bridge's outcomes over the last `minutes`, as `kind[:reason]` → count (for `status`).
///
/// # Errors
/// Redis errors only.
pub async fn bridge_outcomes(client: &Client, minutes: u64) -> Result<(u64, BTreeMap<String, u64>), Error> {
    let since = now_ms().saturating_sub(minutes * 60_000);
    let ids: Vec<String> = scan_recent(client, INTENT_STREAM, since)
        .await?
        .into_iter()
        .map(|e| e.id)
        .collect();
    let mut counts = BTreeMap::new();
    for chunk in ids.chunks(1000) {
        let keys: Vec<String> = chunk.iter().map(|id| seen_key(id)).collect();
        let values = quantum_runtime::nodes::mget(client, &keys).await?;
        for value in values {
            let record = value.map(|v| OutcomeRecord::parse(&v));
            *counts.entry(outcome_label(record.as_ref())).or_default() += 1;
        }
    }
    Ok((ids.len() as u64, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(text: &str) -> Option<OutcomeRecord> {
        Some(OutcomeRecord::parse(text))
    }

    fn legacy() -> GovernorConfig {
        GovernorConfig {
            mode: governor::Mode::Legacy,
            ..GovernorConfig::default()
        }
    }

    fn report(intents: Vec<(Option<Side>, Option<OutcomeRecord>)>) -> SymbolReport {
        SymbolReport {
            symbol: Some(Symbol::parse("BTCUSDT").unwrap()),
            minutes: 5,
            bridge_config: [("allowlist".to_string(), "BTCUSDT,ETHUSDT".to_string())].into(),
            governor: legacy(),
            intents: intents
                .into_iter()
                .enumerate()
                .map(|(i, (s, r))| (format!("{i}-0"), s, r))
                .collect(),
            ..SymbolReport::default()
        }
    }

    #[test]
    fn the_production_verdict() {
        let r = report(vec![
            (
                Some(Side::Buy),
                rec("outcome=blocked reason=kill_score_warning_risk_increase kill_score=0.7563"),
            ),
            (
                Some(Side::Sell),
                rec("outcome=skipped reason=ledger_missing_sell ledger=missing"),
            ),
        ]);
        assert_eq!(
            r.verdict(),
            "BTCUSDT: entries BLOCKED by the governor (kill_score 0.7563 ≥ 0.60, legacy mode); SELLs skipped: no ledger"
        );
    }

    #[test]
    fn trading_no_intents_and_not_allowlisted() {
        let mut r = report(vec![(Some(Side::Buy), rec("outcome=published plan_id=ab"))]);
        r.plans = 12;
        r.fills = 12;
        assert_eq!(r.verdict(), "BTCUSDT: trading (12 plans, 12 fills in the last 5 min)");
        let quiet = report(vec![]);
        assert_eq!(
            quiet.verdict(),
            "BTCUSDT: no intents for this symbol in the last 5 minutes (look at the producer)"
        );
        let mut outside = report(vec![]);
        outside.bridge_config.insert("allowlist".into(), "ETHUSDT".into());
        outside
            .bridge_config
            .insert("allowlist_source".into(), "SYMBOL_ALLOWLIST".into());
        assert_eq!(
            outside.verdict(),
            "BTCUSDT: not allowlisted (SYMBOL_ALLOWLIST=ETHUSDT): every intent is skipped"
        );
    }

    #[test]
    fn an_intent_names_where_it_stopped() {
        let mut r = IntentReport {
            record: rec("outcome=skipped reason=exposure exposure_pct=85 max_pct=80"),
            ..IntentReport::default()
        };
        assert!(r
            .stopped()
            .starts_with("stopped at the bridge's gates: skipped, exposure"));
        r.record = rec("outcome=blocked reason=kill_score_entry_outlier kill_score=0.9000");
        assert_eq!(
            r.stopped(),
            "stopped at the governor: BLOCKED, kill_score_entry_outlier (separated governor: K is an outlier against the symbol's history), kill_score 0.9000"
        );
        r.record = rec("outcome=published plan_id=ab");
        assert_eq!(r.stopped(), "waiting at the executor: plan published, no result yet");
        r.result = Some(
            [
                ("executed".to_string(), "false".to_string()),
                ("reason".to_string(), "symbol_not_in_allowlist:ETHUSDT".to_string()),
            ]
            .into(),
        );
        assert_eq!(
            r.stopped(),
            "stopped at the executor: not executed, symbol_not_in_allowlist:ETHUSDT"
        );
        r.record = None;
        r.pending_deliveries = Some(3);
        assert!(r.stopped().starts_with("waiting at the bridge: delivered 3 time(s)"));
        assert!(id_after("10-1", "10-0") && !id_after("9-5", "10-0"));
    }
}
