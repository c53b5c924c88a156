//! The applied-fill records (`quantum:ledger:applied:<SYMBOL>`), bounded.
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
//! A set from an earlier version (a plain SET) is converted at start, its members scored "now"
//! so they are kept until every entry of today's stream is gone.

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Value};

use quantum_model::contract::{LEDGER_COMMIT_STREAM, LEDGER_GROUP};
use quantum_model::time::entry_ms;
use quantum_runtime::cas::queue_eval;
use quantum_runtime::consumer::scan_keys;

/// The pattern of every applied-fill record.
const APPLIED_PATTERN: &str = "quantum:ledger:applied:*";

/// Converts a plain SET of fill ids into the sorted set, in one step (members scored ARGV[1]).
const MIGRATE_SCRIPT: &str = r#"
if redis.call('TYPE', KEYS[1])['ok'] ~= 'set' then return 0 end
local members = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1])
for i = 1, #members, 2000 do
  local args = {}
  for j = i, math.min(i + 1999, #members) do
    args[#args + 1] = ARGV[1]
    args[#args + 1] = members[j]
  end
  redis.call('ZADD', KEYS[1], unpack(args))
end
return #members
"#;

/// Converts every applied-fill SET left by an earlier version; returns how many it converted.
///
/// # Errors
/// A Redis failure; the ledger must not start on records it cannot read.
pub async fn migrate(client: &Client, now_ms: u64) -> Result<usize, Error> {
    let mut converted = 0;
    for key in scan_keys(client, APPLIED_PATTERN).await? {
        let pipeline = client.pipeline();
        queue_eval(&pipeline, MIGRATE_SCRIPT, vec![key.clone()], vec![now_ms.to_string()]).await?;
        let members: Vec<i64> = pipeline.all().await?;
        if members.first().copied().unwrap_or_default() > 0 {
            converted += 1;
            tracing::info!(
                "Converted {key} from a set to a sorted set ({} fill ids, kept until today's ledger.commit entries are gone)",
                members[0]
            );
        }
    }
    Ok(converted)
}

/// The millisecond before which no `ledger.commit` entry can be delivered again: the first
/// entry's and the ledger group's oldest pending one's, whichever is older. `None` while the
/// stream is empty and nothing is pending: nothing is pruned then (the records of the last
/// retention window stay until new entries arrive, which keeps them bounded all the same).
async fn deliverable_from_ms(client: &Client) -> Result<Option<u64>, Error> {
    let first: Value = client.xrange(LEDGER_COMMIT_STREAM, "-", "+", Some(1)).await?;
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
            vec![LEDGER_COMMIT_STREAM, LEDGER_GROUP],
        )
        .await?;
    let pending_ms = summary
        .into_array()
        .get(1)
        .and_then(Value::as_string)
        .and_then(|id| entry_ms(&id));
    Ok(match (first_ms, pending_ms) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// Removes the records whose entries can no longer be delivered; returns how many went.
///
/// # Errors
/// A Redis failure; the records are pruned at the next pass.
pub async fn prune(client: &Client, keys: &[String]) -> Result<u64, Error> {
    if keys.is_empty() {
        return Ok(0);
    }
    let Some(from_ms) = deliverable_from_ms(client).await? else {
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
