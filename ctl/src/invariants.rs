//! The exactly-once invariants, checked read-only over what Redis holds (works as the
//! quantum-ops ACL user): one plan per intent, one result per plan, one venue order per plan,
//! each fill applied once and in venue order with ledger = Σ fills = venue position, and the
//! memory bound (nothing pending, in flight, open or parked; each symbol's ledger and dedup
//! state within 64 KiB). The fault suite and `quantumctl check` both use it.

use std::collections::{BTreeMap, HashMap, HashSet};

use fred::prelude::*;
use fred::types::{CustomCommand, Value};

use quantum_model::contract::*;
use quantum_model::shards::StreamShards;
use quantum_model::stream_entry::StreamEntry;
use quantum_model::types::Symbol;
use quantum_runtime::consumer::scan_keys;

use crate::pipeline_facts::{
    all_entries, entries_after, exactly_once_problems, sharded_backlog, stream_shards, total_len,
};
use crate::sim::DEMO_SYMBOLS;

/// The bound on one symbol's ledger and fill-dedup state, whatever the number of fills.
const MAX_DEDUP_BYTES_PER_SYMBOL: u64 = 64 * 1024;

/// What the check counted and found.
#[derive(Debug, Default)]
pub struct Checked {
    pub intents: usize,
    pub plans: usize,
    pub results: usize,
    pub venue_orders: usize,
    pub fills: usize,
    pub used_memory: String,
    /// With `STREAM_SHARDS` > 1: each shard of each sharded stream and its entries.
    pub shard_entries: Vec<(String, usize)>,
    /// (invariant, problems): an empty list passed.
    pub invariants: Vec<(&'static str, Vec<String>)>,
}

impl Checked {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.invariants.iter().all(|(_, problems)| problems.is_empty())
    }

    /// The flow line, then one line per invariant: PASS, or FAIL with up to ten problems.
    pub fn render(&self) -> String {
        let mut out = format!(
            "flow: {} intents → {} plans → {} results, {} venue orders, {} fills; Redis used_memory {}\n",
            self.intents, self.plans, self.results, self.venue_orders, self.fills, self.used_memory
        );
        if !self.shard_entries.is_empty() {
            let shards: Vec<String> = self.shard_entries.iter().map(|(s, n)| format!("{s} {n}")).collect();
            out.push_str(&format!("shards: {}\n", shards.join(", ")));
        }
        for (name, problems) in &self.invariants {
            let verdict = if problems.is_empty() { "PASS" } else { "FAIL" };
            out.push_str(&format!("{verdict}  {name}\n"));
            for p in problems.iter().take(10) {
                out.push_str(&format!("      {p}\n"));
            }
            if problems.len() > 10 {
                out.push_str(&format!("      ... and {} more\n", problems.len() - 10));
            }
        }
        out
    }
}

/// Checks every invariant over what `client`'s Redis holds, leaving out the intent
/// `poison_intent` (the fault suite's poison, dead-lettered on purpose). Meaningful once the
/// pipeline is idle ([`crate::pipeline_facts::wait_idle`]): work in flight shows as left over.
///
/// # Errors
/// A Redis failure while reading.
pub async fn check(client: &Client, poison_intent: Option<&str>) -> Result<Checked, Error> {
    let mut report = Checked::default();
    let shards = stream_shards(client).await?;
    let intents = entries_after(client, INTENT_STREAM, "-").await?;
    let plans = all_entries(client, shards, PLAN_STREAM).await?;
    let results = all_entries(client, shards, RESULT_STREAM).await?;
    report.intents = intents.len();
    report.plans = plans.len();
    report.results = results.len();
    report.fills = total_len(client, shards, LEDGER_COMMIT_STREAM).await? as usize;
    let problems = one_plan_per_intent(client, &intents, &plans, poison_intent).await?;
    report
        .invariants
        .push(("one plan per intent, every intent decided once", problems));
    report
        .invariants
        .push(("one result per plan", one_result_per_plan(&plans, &results)));
    let problems = one_order_per_plan(client, &plans, &results, &mut report).await?;
    report.invariants.push(("one venue order per plan", problems));
    let problems = fills_once_in_venue_order(client).await?;
    report.invariants.push((
        "each fill applied once, in venue order; ledger = Σ fills = venue position",
        problems,
    ));
    let problems = on_their_shards(client, shards, &mut report).await?;
    report.invariants.push((
        "per-symbol order: every plan, result and fill on its symbol's shard",
        problems,
    ));
    let problems = memory_bounded(client, shards, &mut report).await?;
    report.invariants.push((
        "memory bound held: nothing left pending, in flight, open or parked; ledger dedup ≤ 64 KiB per symbol",
        problems,
    ));
    Ok(report)
}

/// One plan per intent, and every intent decided (marked) exactly once.
async fn one_plan_per_intent(
    client: &Client,
    intents: &[StreamEntry],
    plans: &[StreamEntry],
    poison_intent: Option<&str>,
) -> Result<Vec<String>, Error> {
    let mut problems = Vec::new();
    let mut plans_of: HashMap<&str, usize> = HashMap::new();
    for p in plans {
        *plans_of.entry(p.get("intent_id").unwrap_or_default()).or_default() += 1;
    }
    let ids: Vec<String> = intents
        .iter()
        .filter(|e| Some(e.id.as_str()) != poison_intent)
        .map(|e| seen_key(&e.id))
        .collect();
    let markers = quantum_runtime::nodes::mget(client, &ids).await?;
    for (intent, marker) in intents
        .iter()
        .filter(|e| Some(e.id.as_str()) != poison_intent)
        .zip(markers)
    {
        let count = plans_of.get(intent.id.as_str()).copied().unwrap_or_default();
        let published = marker
            .as_deref()
            .is_some_and(|m| m.starts_with("outcome=published") || m.starts_with("outcome=blocked"));
        match marker {
            None => problems.push(format!("intent {} was never decided", intent.id)),
            Some(_) if count > 1 => problems.push(format!("intent {} has {count} plans", intent.id)),
            Some(_) if published != (count == 1) => problems.push(format!(
                "intent {}: its marker says published={published}, the stream holds {count} plans",
                intent.id
            )),
            Some(_) => {}
        }
    }
    Ok(problems)
}

/// One result per plan.
fn one_result_per_plan(plans: &[StreamEntry], results: &[StreamEntry]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut results_of: HashMap<&str, usize> = HashMap::new();
    for r in results {
        *results_of.entry(r.get("plan_id").unwrap_or_default()).or_default() += 1;
    }
    for p in plans {
        let id = p.get("plan_id").unwrap_or_default();
        match results_of.get(id).copied().unwrap_or_default() {
            1 => {}
            n => problems.push(format!("plan {id} has {n} results")),
        }
    }
    problems
}

/// One venue order per plan: the venues' own order records (the paper venue's, the live
/// venue's) each belong to a plan, and cover every executed result.
async fn one_order_per_plan(
    client: &Client,
    plans: &[StreamEntry],
    results: &[StreamEntry],
    report: &mut Checked,
) -> Result<Vec<String>, Error> {
    let mut problems = Vec::new();
    let mut orders = scan_keys(client, "{quantum:paper:position:*}:order:qib-*").await?;
    orders.extend(scan_keys(client, "quantum:binance:order:qib-*").await?);
    report.venue_orders = orders.len();
    let plan_ids: HashSet<&str> = plans.iter().filter_map(|p| p.get("plan_id")).collect();
    for key in &orders {
        let id = key.rsplit_once(":qib-").map_or(key.as_str(), |(_, id)| id);
        if !plan_ids.contains(id) {
            problems.push(format!("venue order {key} belongs to no plan"));
        }
    }
    let executed = results.iter().filter(|r| r.get("executed") == Some("true")).count();
    if executed > orders.len() {
        problems.push(format!("{executed} executed results but {} venue orders", orders.len()));
    }
    Ok(problems)
}

/// Each fill applied once; ledger = Σ fills = venue position, at the venue's last fill.
async fn fills_once_in_venue_order(client: &Client) -> Result<Vec<String>, Error> {
    let mut problems = exactly_once_problems(client, &HashMap::new()).await?;
    for symbol in DEMO_SYMBOLS.iter().filter_map(|s| Symbol::parse(s).ok()) {
        let ledger: HashMap<String, String> = client.hgetall(ledger_key(&symbol)).await?;
        let snapshot: HashMap<String, String> = client.hgetall(snapshot_key(&symbol)).await?;
        if ledger.get("position_amt") != snapshot.get("position_amt") {
            problems.push(format!(
                "{symbol}: ledger {:?} vs venue {:?}",
                ledger.get("position_amt"),
                snapshot.get("position_amt")
            ));
        }
        // Applied in the venue's order: the same last fill, so the same average entry price.
        if snapshot.contains_key("venue_seq")
            && (ledger.get("venue_seq") != snapshot.get("venue_seq")
                || ledger.get("avg_entry_price") != snapshot.get("entry_price"))
        {
            problems.push(format!(
                "{symbol}: ledger at venue_seq {:?} avg {:?}, venue at {:?} avg {:?}",
                ledger.get("venue_seq"),
                ledger.get("avg_entry_price"),
                snapshot.get("venue_seq"),
                snapshot.get("entry_price")
            ));
        }
    }
    Ok(problems)
}

/// `STREAM_SHARDS`: each entry of a sharded stream is on its symbol's shard (one shard keeps a
/// symbol's entries in order; a symbol on two shards could be executed or applied out of order).
async fn on_their_shards(client: &Client, shards: StreamShards, report: &mut Checked) -> Result<Vec<String>, Error> {
    let mut problems = Vec::new();
    for stream in quantum_model::shards::SHARDED_STREAMS {
        for (index, shard) in shards.names(stream).iter().enumerate() {
            let entries = entries_after(client, shard, "-").await?;
            if shards.count() > 1 {
                report.shard_entries.push((shard.clone(), entries.len()));
            }
            for entry in entries {
                let Some(symbol) = entry.get("symbol").and_then(|s| Symbol::parse(s).ok()) else {
                    continue;
                };
                let home = shards.of(&symbol);
                if usize::from(home) != index {
                    problems.push(format!(
                        "{} of {symbol} is on {shard}, its symbol's shard is {}",
                        entry.id,
                        shards.name(stream, home)
                    ));
                }
            }
        }
    }
    Ok(problems)
}

/// Memory: nothing left in flight, pending, open or parked, and each symbol's dedup bounded.
async fn memory_bounded(client: &Client, shards: StreamShards, report: &mut Checked) -> Result<Vec<String>, Error> {
    let mut problems = Vec::new();
    for key in scan_keys(client, "{quantum:position:ledger:*}:inflight").await? {
        let left: BTreeMap<String, String> = client.hgetall(&key).await?;
        if let Some((field, value)) = left.iter().next() {
            problems.push(format!(
                "{key} still holds {} reservations (e.g. {field}: {value})",
                left.len()
            ));
        }
    }
    // The totals go with the reservations: a drained symbol keeps neither.
    for key in scan_keys(client, "{quantum:position:ledger:*}:inflight:total").await? {
        let left: BTreeMap<String, String> = client.hgetall(&key).await?;
        if !left.is_empty() {
            problems.push(format!("{key} still holds reservation totals {left:?}"));
        }
    }
    let open: u64 = client.zcard(OPEN_ORDERS_KEY).await?;
    if open > 0 {
        problems.push(format!("{open} orders still open"));
    }
    for symbol in DEMO_SYMBOLS.iter().filter_map(|s| Symbol::parse(s).ok()) {
        let parked: u64 = client.hlen(ledger_parked_key(&symbol)).await?;
        if parked > 0 {
            problems.push(format!("{symbol}: {parked} fills still parked"));
        }
        let mut bytes = 0;
        for key in [
            ledger_key(&symbol),
            ledger_parked_key(&symbol),
            ledger_applied_key(&symbol),
        ] {
            let route = quantum_runtime::consumer::slot_of(&key);
            let usage: Value = client
                .custom(
                    CustomCommand::new_static("MEMORY", route, false),
                    vec!["USAGE".to_string(), key],
                )
                .await?;
            bytes += usage.as_u64().unwrap_or(0);
        }
        if bytes > MAX_DEDUP_BYTES_PER_SYMBOL {
            problems.push(format!(
                "{symbol}: ledger and dedup state take {bytes} bytes (> {MAX_DEDUP_BYTES_PER_SYMBOL})"
            ));
        }
    }
    for (stream, group) in [
        (INTENT_STREAM, INTENT_GROUP),
        (PLAN_STREAM, PLAN_GROUP),
        (LEDGER_COMMIT_STREAM, LEDGER_GROUP),
    ] {
        if let Some(b) = sharded_backlog(client, shards, stream, group).await? {
            if !b.is_idle() {
                problems.push(format!("{group} on {stream}: {} pending, lag {:?}", b.pending, b.lag));
            }
        }
    }
    let info: String = client.info(Some(fred::types::InfoKind::Memory)).await?;
    report.used_memory = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory_human:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    Ok(problems)
}
