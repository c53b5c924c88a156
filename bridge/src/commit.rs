//! One intent's commit: its outcome (plan or DLQ entry), its reservation, its replay marker and
//! its XACK, as one server-side step that refuses an entry already processed.
//!
//! Invariants the script keeps:
//! - an entry whose marker exists is only acknowledged (a replay's record counts it), whoever
//!   processed it first: a second bridge that decided the same entry (reclaimed from a paused
//!   one) publishes nothing, so one intent is one plan even when two bridges sized it;
//! - the key types are checked before any write, so a key of the wrong type fails the step with
//!   nothing written (a MULTI/EXEC would still have committed the rest, the marker and the ack
//!   with it, losing the intent); and the script is flagged `#!lua` without `allow-oom`, so under
//!   `maxmemory` Redis refuses it before it starts rather than halfway;
//! - each entry commits alone: one failing step leaves that entry pending and commits the rest.

use fred::prelude::*;

use quantum_common::cas::queue_eval;

const COMMIT_SCRIPT: &str = r#"#!lua
-- KEYS: marker, intent stream, outcome stream, reservations
-- ARGV: group, entry id, marker ttl, record ('' for a replay), replay record ('' for none),
--       reserve field ('' for none), reserve value, then the outcome's fields (none: a skip)
if ARGV[4] == '' or redis.call('EXISTS', KEYS[1]) == 1 then
  if ARGV[5] ~= '' then redis.call('SET', KEYS[1], ARGV[5], 'KEEPTTL', 'XX') end
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  return 0
end
local function wrong(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    return 'WRONGTYPE ' .. key .. ' holds a ' .. t .. ', not a ' .. want .. '; nothing written'
  end
end
local bad = wrong(KEYS[1], 'string') or (#ARGV > 7 and wrong(KEYS[3], 'stream'))
  or (ARGV[6] ~= '' and wrong(KEYS[4], 'hash'))
if bad then return redis.error_reply(bad) end
if #ARGV > 7 then redis.call('XADD', KEYS[3], '*', unpack(ARGV, 8)) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[4], ARGV[6], ARGV[7]) end
redis.call('SET', KEYS[1], ARGV[4], 'EX', ARGV[3])
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
return 1
"#;

/// What to commit for one entry.
pub struct EntryCommit<'a> {
    pub marker_key: String,
    pub entry_id: &'a str,
    /// The stream the outcome goes to, and its fields (empty: nothing is published).
    pub outcome: Option<(&'static str, Vec<(&'static str, String)>)>,
    /// The reservation: its hash, field and value.
    pub reservation: Option<(String, String, String)>,
    /// The new outcome record; `None` for a replay found at read time.
    pub record: Option<String>,
    /// The replay's record (the first outcome plus its count), written only over a marker.
    pub replay_record: Option<String>,
}

/// Queues one entry's commit on `pipeline`. Its reply is 1 when it committed, 0 when the entry
/// was already processed (only acknowledged), an error when nothing was written.
pub async fn queue_commit(
    pipeline: &fred::clients::Pipeline<Client>,
    stream: &str,
    group: &str,
    marker_ttl_secs: u64,
    commit: EntryCommit<'_>,
) -> Result<(), Error> {
    // Without an outcome the stream slot is never written; any stream name fills it.
    let (outcome_stream, fields) = commit.outcome.unwrap_or((stream, Vec::new()));
    let (reservations, field, value) = commit.reservation.unwrap_or_default();
    let mut args = Vec::with_capacity(7 + 2 * fields.len());
    args.extend([
        group.to_string(),
        commit.entry_id.to_string(),
        marker_ttl_secs.to_string(),
        commit.record.unwrap_or_default(),
        commit.replay_record.unwrap_or_default(),
        field,
        value,
    ]);
    for (k, v) in fields {
        args.push(k.to_string());
        args.push(v);
    }
    // Without a reservation the hash slot is never touched; the marker fills it.
    let reservations = if reservations.is_empty() {
        commit.marker_key.clone()
    } else {
        reservations
    };
    let keys = vec![
        commit.marker_key,
        stream.to_string(),
        outcome_stream.to_string(),
        reservations,
    ];
    queue_eval(pipeline, COMMIT_SCRIPT, keys, args).await
}
