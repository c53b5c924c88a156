//! Moving entries to a dead-letter stream and acknowledging them, in steps Redis Cluster can take.
//!
//! A DLQ (`quantum:stream:<stage>.dlq`) and the stream its entries come from hash to different
//! slots, so the two writes cannot be one MULTI on a cluster. They are two ordered steps:
//! 1. one script on the DLQ's slot adds each entry once: a marker per source entry,
//!    `{<dlq>}:source:<entry id>` (same slot as the DLQ, expiring after [`MARKER_TTL_SECS`]),
//!    is set with NX, and only a new marker adds the entry;
//! 2. XACK on the source stream, sent only once step 1 has succeeded.
//!
//! Invariant: an entry is acknowledged only after its DLQ entry exists, and a crash between the
//! steps (the entry delivered again, dead-lettered again) adds no second DLQ entry while the
//! marker lives. Nothing is lost; a DLQ entry is written at most once per marker lifetime.

use fred::prelude::*;
use fred::types::Value;

use crate::cas::queue_eval;

/// How long a source entry's marker keeps a second DLQ entry out (7 days, the other markers'
/// lifetime): far beyond any redelivery of an entry whose XACK did not follow.
pub const MARKER_TTL_SECS: u64 = 7 * 24 * 3600;

/// KEYS: the DLQ, then one marker per entry. ARGV: the TTL, then per entry the number of
/// field/value items and the items.
const DEAD_LETTER_SCRIPT: &str = r#"
local i = 2
local added = 0
for k = 2, #KEYS do
  local n = tonumber(ARGV[i])
  if redis.call('SET', KEYS[k], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + n))
    added = added + 1
  end
  i = i + 1 + n
end
return added
"#;

/// One entry on its way to a DLQ.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The source entry's id (also the DLQ entry's `source_id` field).
    pub source_id: String,
    /// The DLQ entry's fields, `source_id` first.
    pub fields: Vec<(&'static str, String)>,
}

/// The marker that keeps `source_id` from being dead-lettered to `dlq` twice.
pub fn marker_key(dlq: &str, source_id: &str) -> String {
    format!("{{{dlq}}}:source:{source_id}")
}

/// Dead-letters `letters` to `dlq` (each once), then acknowledges `ack_ids` on `stream` for
/// `group` (the letters' ids and any others the caller has settled). Returns how many DLQ
/// entries were added (fewer than `letters` when a previous attempt added some).
///
/// # Errors
/// Redis refused a step; when the first fails nothing is acknowledged.
pub async fn dead_letter_then_ack(
    writer: &Client,
    dlq: &str,
    letters: &[DeadLetter],
    stream: &str,
    group: &str,
    ack_ids: &[String],
) -> Result<u64, Error> {
    let mut added = 0;
    if !letters.is_empty() {
        let mut keys = Vec::with_capacity(1 + letters.len());
        keys.push(dlq.to_string());
        let mut args = vec![MARKER_TTL_SECS.to_string()];
        for letter in letters {
            keys.push(marker_key(dlq, &letter.source_id));
            args.push((letter.fields.len() * 2).to_string());
            for (field, value) in &letter.fields {
                args.push((*field).to_string());
                args.push(value.clone());
            }
        }
        let pipeline = writer.pipeline();
        queue_eval(&pipeline, DEAD_LETTER_SCRIPT, keys, args).await?;
        let reply: Value = pipeline.last().await?;
        added = reply.as_u64().unwrap_or_default();
    }
    crate::consumer::queue_ack(writer, stream, group, ack_ids).await?;
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_share_the_dlq_slot() {
        let dlq = "quantum:stream:ledger.commit.dlq";
        let marker = marker_key(dlq, "1700000000000-0");
        assert_eq!(marker, "{quantum:stream:ledger.commit.dlq}:source:1700000000000-0");
        assert_eq!(
            fred::util::redis_keyslot(marker.as_bytes()),
            fred::util::redis_keyslot(dlq.as_bytes())
        );
    }
}
