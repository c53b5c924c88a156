//! What the streams and ledgers say happened: the numbers the demo prints and the tests check.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::Value;
use rust_decimal::Decimal;

use quantum_model::contract::*;
use quantum_model::stream_entry::StreamEntry;
use quantum_model::types::parse_decimal;
use quantum_runtime::consumer::group_backlog;
use quantum_runtime::reply::decode_entries;

/// All entries of `stream` after `after` (exclusive; `-` for the beginning).
///
/// # Errors
/// Redis unreachable, or an unreadable reply.
pub async fn entries_after(client: &Client, stream: &str, after: &str) -> Result<Vec<StreamEntry>, Error> {
    let mut out = Vec::new();
    let mut start = if after == "-" {
        "-".to_string()
    } else {
        format!("({after}")
    };
    loop {
        let reply: Value = client.xrange(stream, start.as_str(), "+", Some(10_000)).await?;
        let batch = decode_entries(reply).map_err(|e| Error::new(ErrorKind::Parse, e))?;
        let Some((last, _)) = batch.last() else { break };
        start = format!("({last}");
        out.extend(batch.into_iter().filter_map(|(_, e)| e));
    }
    Ok(out)
}

/// The id of the newest entry of `stream` (`0-0` when empty), to mark where a phase starts.
///
/// # Errors
/// Redis unreachable.
pub async fn last_id(client: &Client, stream: &str) -> Result<String, Error> {
    let reply: Value = client.xrevrange(stream, "+", "-", Some(1)).await?;
    let entries = decode_entries(reply).map_err(|e| Error::new(ErrorKind::Parse, e))?;
    Ok(entries.first().map_or_else(|| "0-0".to_string(), |(id, _)| id.clone()))
}

/// Waits until the bridge, the executor and the ledger have nothing pending or undelivered.
///
/// # Errors
/// Redis unreachable.
pub async fn wait_idle(client: &Client, timeout: Duration) -> Result<bool, Error> {
    let deadline = Instant::now() + timeout;
    for (stream, group) in [
        (INTENT_STREAM, INTENT_GROUP),
        (PLAN_STREAM, PLAN_GROUP),
        (LEDGER_COMMIT_STREAM, LEDGER_GROUP),
    ] {
        loop {
            let idle = match group_backlog(client, stream, group).await? {
                Some(b) => b.is_idle(),
                None => client.xlen::<u64, _>(stream).await? == 0,
            };
            if idle {
                break;
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    Ok(true)
}

/// Counts over a span of the plan and result streams.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhaseFacts {
    pub plan_symbols: BTreeSet<String>,
    pub buy_published: u64,
    pub sell_published: u64,
    pub execute_plans: u64,
    pub blocked_plans: u64,
    pub executing_symbols: BTreeSet<String>,
    pub ledgers: u64,
}

/// Facts about plans and results written after the given ids.
///
/// # Errors
/// Redis unreachable.
pub async fn phase_facts(client: &Client, plans_after: &str, results_after: &str) -> Result<PhaseFacts, Error> {
    let mut facts = PhaseFacts::default();
    for plan in entries_after(client, PLAN_STREAM, plans_after).await? {
        facts
            .plan_symbols
            .insert(plan.get("symbol").unwrap_or_default().to_string());
        match plan.get("side") {
            Some("BUY") => facts.buy_published += 1,
            Some("SELL") => facts.sell_published += 1,
            _ => {}
        }
        match plan.get("decision") {
            Some("EXECUTE") => facts.execute_plans += 1,
            _ => facts.blocked_plans += 1,
        }
    }
    for result in entries_after(client, RESULT_STREAM, results_after).await? {
        if result.get("executed") == Some("true") {
            facts
                .executing_symbols
                .insert(result.get("symbol").unwrap_or_default().to_string());
        }
    }
    facts.ledgers = crate::status::ledgers(client).await?.len() as u64;
    Ok(facts)
}

/// Checks that every fill was counted exactly once: no fill id twice in ledger.commit, each
/// ledger's fill count equals its fills in the stream, and each ledger's position equals its
/// starting amount plus the signed sum of its fills. Returns the problems found.
///
/// # Errors
/// Redis unreachable.
pub async fn exactly_once_problems(client: &Client, starting: &HashMap<String, Decimal>) -> Result<Vec<String>, Error> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    let mut per_symbol: BTreeMap<String, (u64, Decimal)> = BTreeMap::new();
    for fill in entries_after(client, LEDGER_COMMIT_STREAM, "-").await? {
        let id = fill.get("fill_id").unwrap_or_default().to_string();
        if !seen.insert(id.clone()) {
            problems.push(format!("fill {id} appears twice in ledger.commit"));
        }
        let qty = fill
            .get("qty")
            .and_then(|q| parse_decimal("qty", q).ok())
            .unwrap_or_default();
        let signed = if fill.get("side") == Some("SELL") { -qty } else { qty };
        let slot = per_symbol
            .entry(fill.get("symbol").unwrap_or_default().to_string())
            .or_default();
        slot.0 += 1;
        slot.1 += signed;
    }
    for (symbol, entry) in crate::status::ledgers(client).await? {
        let Ok(entry) = entry else {
            problems.push(format!("ledger of {symbol} is unreadable"));
            continue;
        };
        let (count, sum) = per_symbol.get(symbol.as_str()).copied().unwrap_or_default();
        let expected = starting.get(symbol.as_str()).copied().unwrap_or_default() + sum;
        if entry.fills != count {
            problems.push(format!(
                "ledger of {symbol} counts {} fills, ledger.commit has {count}",
                entry.fills
            ));
        }
        if entry.position.amt != expected {
            problems.push(format!(
                "ledger of {symbol} holds {}, fills add up to {expected}",
                entry.position.amt
            ));
        }
    }
    Ok(problems)
}
