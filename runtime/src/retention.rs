//! Bounded streams: each service trims the stream it consumes, and the streams it alone
//! writes that no group reads (results, dead letters), to `STREAM_RETENTION_MS`, never past an
//! entry a consumer group still needs.
//!
//! Invariant: an entry is removed only when it is older than the retention and, for every group
//! on its stream, it is neither pending nor still to be delivered, that is older than both the
//! group's oldest pending entry and the entry after its last-delivered id. The bound is computed
//! and applied in one script (`XINFO GROUPS`, `XPENDING`, `XTRIM MINID`), so a group cannot move
//! between the two. `~` lets Redis trim whole nodes only: it may keep a few more entries, never
//! fewer.

use fred::prelude::*;

use crate::cas::queue_eval;

/// Trims KEYS[1] to MINID = min(ARGV[1], each group's oldest pending id and the id after its
/// last delivered one); returns how many entries it removed.
const TRIM_SCRIPT: &str = r#"
-- Not a stream (none yet, or a key clobbered by hand): nothing to trim, and not this step's
-- to fail; the stage that writes it reports it.
if redis.call('TYPE', KEYS[1])['ok'] ~= 'stream' then return 0 end
local function split(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function older(a, b)
  local am, as = split(a)
  local bm, bs = split(b)
  return am < bm or (am == bm and as < bs)
end
local bound = ARGV[1]
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local ms, seq = split(info['last-delivered-id'])
  local next_undelivered = ms .. '-' .. (seq + 1)
  if older(next_undelivered, bound) then bound = next_undelivered end
  if info['pending'] > 0 then
    local oldest = redis.call('XPENDING', KEYS[1], info['name'])[2]
    if oldest and older(oldest, bound) then bound = oldest end
  end
end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', bound)
"#;

/// Trims each of `streams` to entries younger than `retention_ms` (0: keeps everything), never
/// past what a group still needs; returns how many entries went.
///
/// # Errors
/// A Redis failure; nothing is lost by a trim that did not happen.
pub async fn trim<S: AsRef<str>>(client: &Client, streams: &[S], retention_ms: u64, now_ms: u64) -> Result<u64, Error> {
    if retention_ms == 0 || streams.is_empty() {
        return Ok(0);
    }
    let bound = format!("{}-0", now_ms.saturating_sub(retention_ms));
    let pipeline = client.pipeline();
    for stream in streams {
        queue_eval(
            &pipeline,
            TRIM_SCRIPT,
            vec![stream.as_ref().to_string()],
            vec![bound.clone()],
        )
        .await?;
    }
    let removed: Vec<i64> = pipeline.all().await?;
    let total: u64 = removed.iter().map(|n| (*n).max(0) as u64).sum();
    for (stream, n) in streams.iter().zip(&removed) {
        if *n > 0 {
            metrics::counter!(quantum_model::metric_names::STREAM_TRIMMED_ENTRIES_TOTAL, "stream" => stream.as_ref().to_string())
                .increment(*n as u64);
        }
    }
    Ok(total)
}
