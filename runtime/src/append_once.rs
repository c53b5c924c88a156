//! Appending entries to a stream once each, and moving entries to a dead-letter stream, in
//! steps Redis Cluster can take.
//!
//! A stream and the keys that say what was appended to it must share a slot to be written in
//! one step, so the marker of entry `<id>` appended to `<stream>` is `{<stream>}:once:<id>`,
//! expiring after the entry's `ttl_secs`: as long as a repeat of the step can come (a replay of
//! a source entry: [`MARKER_TTL_SECS`]; a publication repeated after a crash: much less). One script per stream sets each marker with NX and
//! appends only the entries whose marker is new ([`queue_append_once`]): whoever repeats the
//! step (a redelivery, a second instance, the sweep) adds nothing.
//!
//! A DLQ and the stream its entries come from hash to different slots, so dead-lettering is two
//! ordered steps: the entries appended once to the DLQ, then (only once that succeeded) the
//! `XACK` on the source stream ([`dead_letter_then_ack`]).
//!
//! Invariant: an entry is acknowledged only after its DLQ entry exists, and a crash between the
//! steps adds no second DLQ entry while the marker lives. Nothing is lost; an entry is appended
//! at most once per marker lifetime.

use fred::prelude::*;
use fred::types::Value;

use crate::cas::queue_eval;

/// How long a marker keeps out a second entry for a replayed source entry (7 days): far beyond
/// any redelivery or replay horizon.
pub const MARKER_TTL_SECS: u64 = 7 * 24 * 3600;

/// The id a dead letter's marker is keyed by. An entry id is unique only within its stream, and
/// two shards of one stream (`STREAM_SHARDS`) often hand out the same one, while their poison
/// shares the stage's one DLQ: so the id is the source entry's own for the contract stream
/// (`contract_stream`, as before shards) and `<source stream>/<entry id>` for another shard.
pub fn dead_letter_id(source_stream: &str, contract_stream: &str, entry_id: &str) -> String {
    if source_stream == contract_stream {
        entry_id.to_string()
    } else {
        format!("{source_stream}/{entry_id}")
    }
}

/// KEYS: the stream, then one marker per entry. ARGV: per entry its marker's TTL, the number of
/// field/value items and the items. Replies one 1 (appended) or 0 (there already) per entry.
const APPEND_ONCE_SCRIPT: &str = r#"
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' and t ~= 'stream' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' holds a ' .. t .. ', not a stream; nothing written')
end
local i = 1
local added = {}
for k = 2, #KEYS do
  local n = tonumber(ARGV[i + 1])
  if redis.call('SET', KEYS[k], '1', 'NX', 'EX', ARGV[i]) then
    redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 2, i + 1 + n))
    added[#added + 1] = 1
  else
    added[#added + 1] = 0
  end
  i = i + 2 + n
end
return added
"#;

/// One entry to append once: `id` names it (its marker), `fields` are the entry's, and its
/// marker lives `ttl_secs`.
#[derive(Debug, Clone)]
pub struct Once {
    pub id: String,
    pub fields: Vec<(String, String)>,
    pub ttl_secs: u64,
}

/// The marker saying entry `id` was appended to `stream`.
pub fn marker_key(stream: &str, id: &str) -> String {
    format!("{{{stream}}}:once:{id}")
}

/// Queues on `pipeline` the step appending each of `entries` to `stream` unless it was
/// appended before; its reply is an array with one 1 (appended now) or 0 per entry.
///
/// # Errors
/// The command could not be queued.
pub async fn queue_append_once<C: ClientLike>(pipeline: &C, stream: &str, entries: &[Once]) -> Result<(), Error> {
    let mut keys = Vec::with_capacity(1 + entries.len());
    keys.push(stream.to_string());
    let mut args = Vec::new();
    for entry in entries {
        keys.push(marker_key(stream, &entry.id));
        args.push(entry.ttl_secs.to_string());
        args.push((entry.fields.len() * 2).to_string());
        for (field, value) in &entry.fields {
            args.push(field.clone());
            args.push(value.clone());
        }
    }
    queue_eval(pipeline, APPEND_ONCE_SCRIPT, keys, args).await
}

/// Which entries an append-once reply says were appended now.
pub fn appended(reply: &Value) -> Vec<bool> {
    match reply {
        Value::Array(items) => items.iter().map(|v| v.as_i64() == Some(1)).collect(),
        _ => Vec::new(),
    }
}

/// Dead-letters `letters` (keyed by their source entry ids) to `dlq`, each once, then
/// acknowledges `ack_ids` on `stream` for `group` (the letters' ids and any others the caller
/// has settled). Returns how many DLQ entries were added (fewer than `letters` when a previous
/// attempt added some).
///
/// # Errors
/// Redis refused a step; when the first fails nothing is acknowledged.
pub async fn dead_letter_then_ack(
    writer: &Client,
    dlq: &str,
    letters: &[Once],
    stream: &str,
    group: &str,
    ack_ids: &[String],
) -> Result<u64, Error> {
    let mut added = 0;
    if !letters.is_empty() {
        let pipeline = writer.pipeline();
        queue_append_once(&pipeline, dlq, letters).await?;
        let reply: Value = pipeline.last().await?;
        added = appended(&reply).into_iter().filter(|a| *a).count() as u64;
    }
    crate::consumer::queue_ack(writer, stream, group, ack_ids).await?;
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_share_the_stream_slot() {
        let dlq = "quantum:stream:ledger.commit.dlq";
        let marker = marker_key(dlq, "1700000000000-0");
        assert_eq!(marker, "{quantum:stream:ledger.commit.dlq}:once:1700000000000-0");
        assert_eq!(
            fred::util::redis_keyslot(marker.as_bytes()),
            fred::util::redis_keyslot(dlq.as_bytes())
        );
    }

    #[test]
    fn replies_say_which_were_appended() {
        let reply = Value::Array(vec![Value::Integer(1), Value::Integer(0)]);
        assert_eq!(appended(&reply), [true, false]);
        assert!(appended(&Value::Null).is_empty());
    }
}
