//! What the streams and ledgers say happened: the numbers the demo prints and the tests check.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::Value;
use rust_decimal::Decimal;

use quantum_model::contract::*;
use quantum_model::shards::StreamShards;
use quantum_model::stream_entry::StreamEntry;
use quantum_model::types::parse_decimal;
use quantum_runtime::consumer::{group_backlog, GroupBacklog};
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

/// The pipeline's `STREAM_SHARDS`, as its services recorded it (one shard before any started,
/// or when the record is unreadable: the services refuse to start on one).
///
/// # Errors
/// Redis unreachable.
pub async fn stream_shards(client: &Client) -> Result<StreamShards, Error> {
    let recorded: Option<String> = client.get(STREAM_SHARDS_KEY).await?;
    Ok(recorded
        .and_then(|r| r.parse::<u64>().ok())
        .and_then(|n| StreamShards::new(n).ok())
        .unwrap_or_default())
}

/// Every entry of every shard of `stream`, in entry-id order (shards interleaved by time).
///
/// # Errors
/// Redis unreachable, or an unreadable reply.
pub async fn all_entries(client: &Client, shards: StreamShards, stream: &str) -> Result<Vec<StreamEntry>, Error> {
    let mut out = Vec::new();
    for shard in shards.names(stream) {
        out.extend(entries_after(client, &shard, "-").await?);
    }
    if shards.count() > 1 {
        out.sort_by_key(|e| entry_id_order(&e.id));
    }
    Ok(out)
}

/// An entry id's (milliseconds, sequence), for ordering entries of several streams.
fn entry_id_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// The entries of every shard of `stream`, added up.
///
/// # Errors
/// Redis unreachable.
pub async fn total_len(client: &Client, shards: StreamShards, stream: &str) -> Result<u64, Error> {
    let mut total = 0;
    for shard in shards.names(stream) {
        total += client.xlen::<u64, _>(shard).await?;
    }
    Ok(total)
}

/// `group`'s backlog over every shard of `stream`: pending entries and lag added up (the lag
/// unknown when one shard's is), consumers the most any shard has; `None` when no shard has
/// the group yet.
///
/// # Errors
/// Redis unreachable.
pub async fn sharded_backlog(
    client: &Client,
    shards: StreamShards,
    stream: &str,
    group: &str,
) -> Result<Option<GroupBacklog>, Error> {
    Ok(sum_backlogs(&shard_backlogs(client, shards, stream, group).await?))
}

/// `group`'s backlog on each shard of `stream`, shard 0 first (`None`: no group there yet).
///
/// # Errors
/// Redis unreachable.
pub async fn shard_backlogs(
    client: &Client,
    shards: StreamShards,
    stream: &str,
    group: &str,
) -> Result<Vec<(String, Option<GroupBacklog>)>, Error> {
    let mut backlogs = Vec::new();
    for shard in shards.names(stream) {
        let backlog = group_backlog(client, &shard, group).await?;
        backlogs.push((shard, backlog));
    }
    Ok(backlogs)
}

/// Per-shard backlogs added up as [`sharded_backlog`] describes.
pub fn sum_backlogs(backlogs: &[(String, Option<GroupBacklog>)]) -> Option<GroupBacklog> {
    backlogs
        .iter()
        .filter_map(|(_, b)| b.clone())
        .reduce(|t, b| GroupBacklog {
            consumers: t.consumers.max(b.consumers),
            pending: t.pending + b.pending,
            lag: t.lag.zip(b.lag).map(|(x, y)| x + y),
            last_delivered_id: t.last_delivered_id,
        })
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
    let shards = stream_shards(client).await?;
    let every_shard = [
        (INTENT_STREAM, INTENT_GROUP),
        (PLAN_STREAM, PLAN_GROUP),
        (LEDGER_COMMIT_STREAM, LEDGER_GROUP),
    ]
    .into_iter()
    .flat_map(|(stream, group)| shards.names(stream).into_iter().map(move |s| (s, group)));
    for (stream, group) in every_shard {
        loop {
            let idle = match group_backlog(client, &stream, group).await? {
                Some(b) => b.is_idle(),
                None => client.xlen::<u64, _>(&stream).await? == 0,
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
    let shards = stream_shards(client).await?;
    for fill in all_entries(client, shards, LEDGER_COMMIT_STREAM).await? {
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
