//! The applied-fill records (`{quantum:position:ledger:<SYMBOL>}:applied`), bounded.
//!
//! Each is a sorted set: member = fill id, score = the millisecond of the `ledger.commit` entry
//! that carried the fill. A fill can only come back through an entry still in that stream (a
//! redelivery, a group reset): the executor finalizes an order once, so nothing appends the same
//! fill again. So a record is needed exactly as long as its entry may still be read.
//!
//! Invariant: a record is removed only when its entry is older than both the stream's first
//! entry (older ones were trimmed: never deliverable again) and the group's oldest pending entry
//! (one applied but not yet acknowledged when a ledger died). The records thus shrink with the
//! stream's retention (`STREAM_RETENTION_MS`): about 70 bytes per fill of the last hour, whatever
//! the number of fills before.
//!
//! Records an earlier version kept under `quantum:ledger:applied:<SYMBOL>` (a sorted set, or an
//! older plain SET) are moved at start into the ledger's slot, plain members scored "now" so
//! they are kept until every entry of today's stream is gone.

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Value};

use fred::types::sorted_sets::Ordering;

use quantum_model::contract::{ledger_applied_key, LEDGER_GROUP, LEGACY_LEDGER_APPLIED_PREFIX};
use quantum_model::time::entry_ms;
use quantum_model::types::Symbol;
use quantum_runtime::consumer::scan_keys;

/// Moves every applied-fill record an earlier version left under its old name into the
/// ledger's slot; returns how many it moved. In steps a cluster takes (the two names hash to
/// different slots), each repeatable: the records are added to the new set (a member there
/// already keeps the later score), then the old key is deleted. Run before the ledger consumes,
/// so no fill is deduplicated against a half-moved record; upgrade every ledger at once (an older
/// ledger still running would keep recording under the old name).
///
/// # Errors
/// A Redis failure; the ledger must not start on records it cannot read.
pub async fn migrate(client: &Client, now_ms: u64) -> Result<usize, Error> {
    let mut moved = 0;
    let pattern = format!("{LEGACY_LEDGER_APPLIED_PREFIX}*");
    for old in scan_keys(client, &pattern).await? {
        let Some(symbol) = old
            .strip_prefix(LEGACY_LEDGER_APPLIED_PREFIX)
            .and_then(|s| Symbol::parse(s).ok())
        else {
            tracing::warn!("{old} names no symbol; left as it is");
            continue;
        };
        let records: Vec<(f64, String)> = match client.r#type::<String, _>(&old).await?.as_str() {
            "zset" => {
                let scored: Vec<(String, f64)> = client.zrange(&old, 0, -1, None, false, None, true).await?;
                scored.into_iter().map(|(id, ms)| (ms, id)).collect()
            }
            "set" => {
                let ids: Vec<String> = client.smembers(&old).await?;
                ids.into_iter().map(|id| (now_ms as f64, id)).collect()
            }
            other => {
                tracing::warn!("{old} holds a {other}, not applied-fill records; left as it is");
                continue;
            }
        };
        let new = ledger_applied_key(&symbol);
        for chunk in records.chunks(1000) {
            let _: Value = client
                .zadd(&new, None, Some(Ordering::GreaterThan), false, false, chunk.to_vec())
                .await?;
        }
        let _: i64 = client.del(&old).await?;
        moved += 1;
        tracing::info!(
            "Moved {old} to {new} ({} fill ids; plain ones kept until today's ledger.commit entries are gone)",
            records.len()
        );
    }
    Ok(moved)
}

/// The millisecond before which no `ledger.commit` entry can be delivered again, on any of
/// `streams` (its shards): the oldest of each shard's first entry and the ledger group's oldest
/// pending one; for a shard empty with nothing pending, the group's last delivered entry (every
/// later entry of that shard gets a higher id from that shard's own node, whatever the other
/// nodes' clocks say). `None` when no shard tells: nothing is pruned then.
async fn deliverable_from_ms(client: &Client, streams: &[String]) -> Result<Option<u64>, Error> {
    let mut oldest: Option<u64> = None;
    for stream in streams {
        if let Some(ms) = shard_deliverable_from_ms(client, stream).await? {
            oldest = Some(oldest.map_or(ms, |o| o.min(ms)));
        }
    }
    Ok(oldest)
}

/// [`deliverable_from_ms`] for one shard.
async fn shard_deliverable_from_ms(client: &Client, stream: &str) -> Result<Option<u64>, Error> {
    let first: Value = client.xrange(stream, "-", "+", Some(1)).await?;
    let first_ms = first
        .into_array()
        .into_iter()
        .next()
        .and_then(|e| e.into_array().into_iter().next())
        .and_then(|id| id.as_string())
        .and_then(|id| entry_ms(&id));
    let summary: Value = client
        .custom(
            CustomCommand::new_static("XPENDING", ClusterHash::FirstKey, false),
            vec![stream, LEDGER_GROUP],
        )
        .await?;
    let pending_ms = summary
        .into_array()
        .get(1)
        .and_then(Value::as_string)
        .and_then(|id| entry_ms(&id));
    Ok(match (first_ms, pending_ms) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (None, None) => quantum_runtime::consumer::group_backlog(client, stream, LEDGER_GROUP)
            .await?
            .and_then(|b| entry_ms(&b.last_delivered_id))
            .filter(|ms| *ms > 0),
        (a, b) => a.or(b),
    })
}

/// Removes the records whose entries can no longer be delivered from any of `streams` (the
/// shards of `ledger.commit`); returns how many went.
///
/// # Errors
/// A Redis failure; the records are pruned at the next pass.
pub async fn prune(client: &Client, keys: &[String], streams: &[String]) -> Result<u64, Error> {
    if keys.is_empty() {
        return Ok(0);
    }
    let Some(from_ms) = deliverable_from_ms(client, streams).await? else {
        return Ok(0);
    };
    let pipeline = client.pipeline();
    for key in keys {
        // Scores are whole milliseconds: records of the first entry's own millisecond stay.
        pipeline
            .zremrangebyscore::<(), _, _, _>(key, f64::NEG_INFINITY, from_ms.saturating_sub(1) as f64)
            .await?;
    }
    let removed: Vec<Result<Value, Error>> = pipeline.try_all().await;
    Ok(removed
        .into_iter()
        .filter_map(|r| r.ok().and_then(|v| v.as_u64()))
        .sum())
}
