//! One intent's commit: its outcome (plan or DLQ entry), its reservation (with the symbol's
//! reservation totals), its replay marker and its XACK, as one server-side step that refuses an entry already processed; and the
//! consistent read of a symbol's position its gates decide on.
//!
//! Invariants the scripts keep:
//! - the gates see a symbol's ledger and reservations at one instant (one read script): the
//!   ledger applies a fill and releases its reservation in one step, so a read of the one before
//!   and the other after would count the fill twice or not at all;
//! - a reservation commits only while the symbol's reservation token (`<count>:<plan id>` of
//!   its last reservation) is the one its gate decided on: a second bridge that reserved
//!   meanwhile makes the step refuse (-1), and the intent is decided again on fresh state, so two
//!   bridges cannot both sell one position; and since the token names the plan that wrote it, a
//!   batch's next reservation, which expects its predecessor's token, is refused too when that
//!   predecessor was. A BUY also needs the all-symbol BUY token it read, so two bridges cannot
//!   together pass the exposure limit either;
//! - an entry whose marker exists is only acknowledged (a replay's record counts it), whoever
//!   processed it first: a second bridge that decided the same entry (reclaimed from a paused
//!   one) publishes nothing, so one intent is one plan even when two bridges sized it;
//! - the key types are checked before any write, so a key of the wrong type fails the step with
//!   nothing written (a MULTI/EXEC would still have committed the rest, the marker and the ack
//!   with it, losing the intent); and the script is flagged `#!lua` without `allow-oom`, so under
//!   `maxmemory` Redis refuses it before it starts rather than halfway;
//! - each entry commits alone: one failing step leaves that entry pending and commits the rest.

use fred::prelude::*;

use quantum_runtime::cas::queue_eval;

/// A symbol's ledger fields, reservation totals and token, read at one instant; and its
/// reservations themselves when asked (ARGV[1] = 'walk') or when the totals do not count every
/// one (values written before the totals existed, an operator's HDEL, a corrupt count).
const READ_POSITION_SCRIPT: &str = r#"#!lua flags=no-writes
local totals = redis.call('HMGET', KEYS[4], 'sell_qty_whole', 'sell_qty_frac', 'buy_notional_whole',
  'buy_notional_frac', 'count')
local walk = ARGV[1] == 'walk' or redis.call('HLEN', KEYS[2]) ~= tonumber(totals[5] or '0')
return {redis.call('HMGET', KEYS[1], 'position_amt', 'notional_usd'), totals,
  walk and redis.call('HGETALL', KEYS[2]) or false, redis.call('GET', KEYS[3]) or ''}
"#;

/// Queues the read of `symbol`'s ledger (`position_amt`, `notional_usd`), reservation totals,
/// reservations (with `walk`, or when the totals miss some) and reservation token; the reply
/// is `[[amt, notional], [totals...], [field, value, ...] or nil, token]`.
pub async fn queue_position_read(
    pipeline: &fred::clients::Pipeline<Client>,
    symbol: &quantum_model::types::Symbol,
    walk: bool,
) -> Result<(), Error> {
    use quantum_model::contract::{ledger_key, reservation_key, reservation_totals_key, reservation_version_key};
    let keys = vec![
        ledger_key(symbol),
        reservation_key(symbol),
        reservation_version_key(symbol),
        reservation_totals_key(symbol),
    ];
    let args = vec![if walk { "walk" } else { "" }.to_string()];
    // EVAL_RO: the bridge may only read ledgers.
    quantum_runtime::cas::queue_eval_ro(pipeline, READ_POSITION_SCRIPT, keys, args).await
}

static COMMIT_SCRIPT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| quantum_runtime::inflight::with_totals("#!lua", COMMIT_BODY));

const COMMIT_BODY: &str = r#"
-- KEYS: marker, intent stream, outcome stream, reservations, reservation token, BUY token,
--       reservation totals
-- ARGV: group, entry id, marker ttl, record ('' for a replay), replay record ('' for none),
--       reserve field ('' for none), reserve value, expected reservation token, new one,
--       'BUY' or '', expected BUY token, new one, then the outcome's fields (none: a skip)
local function wrong(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    return 'WRONGTYPE ' .. key .. ' holds a ' .. t .. ', not a ' .. want .. '; nothing written'
  end
end
-- A marker of another type is corrupt, not a record that the intent was processed.
local bad = wrong(KEYS[1], 'string')
if bad then return redis.error_reply(bad) end
if ARGV[4] == '' or redis.call('EXISTS', KEYS[1]) == 1 then
  if ARGV[5] ~= '' then redis.call('SET', KEYS[1], ARGV[5], 'KEEPTTL', 'XX') end
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  return 0
end
local reserve, buy = ARGV[6] ~= '', ARGV[10] == 'BUY'
bad = (#ARGV > 12 and wrong(KEYS[3], 'stream')) or (reserve and wrong(KEYS[4], 'hash'))
  or (reserve and wrong(KEYS[5], 'string')) or (buy and wrong(KEYS[6], 'string'))
if bad then return redis.error_reply(bad) end
if reserve and (redis.call('GET', KEYS[5]) or '') ~= ARGV[8] then return -1 end
bad = reserve and inflight_totals_bad(KEYS[7])
if bad then return redis.error_reply(bad) end
if buy and (redis.call('GET', KEYS[6]) or '') ~= ARGV[11] then return -1 end
-- The reservation before the outcome: should a write fail halfway, what is left is a
-- reservation without its plan (counted until it expires), never a plan without its marker.
if reserve then
  inflight_reserve(KEYS[4], KEYS[7], ARGV[6], ARGV[7])
  redis.call('SET', KEYS[5], ARGV[9])
end
if buy then redis.call('SET', KEYS[6], ARGV[12]) end
if #ARGV > 12 then redis.call('XADD', KEYS[3], '*', unpack(ARGV, 13)) end
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
    /// The reservation, for this symbol.
    pub reservation: Option<ReservationCommit>,
    /// The new outcome record; `None` for a replay found at read time.
    pub record: Option<String>,
    /// The replay's record (the first outcome plus its count), written only over a marker.
    pub replay_record: Option<String>,
}

/// A reservation to add with a plan.
pub struct ReservationCommit {
    pub symbol: quantum_model::types::Symbol,
    /// The plan id.
    pub field: String,
    pub value: String,
    /// The symbol's reservation token the gate decided on, and the one this commit writes.
    pub token: (String, String),
    /// For a BUY, the BUY token (all symbols) its exposure gate decided on, and the new one.
    pub buys_token: Option<(String, String)>,
}

/// Queues one entry's commit on `pipeline`. Its reply is 1 when it committed, 0 when the entry
/// was already processed (only acknowledged), -1 when another bridge reserved for the symbol
/// meanwhile (nothing written: decide again), an error when nothing was written.
pub async fn queue_commit(
    pipeline: &fred::clients::Pipeline<Client>,
    stream: &str,
    group: &str,
    marker_ttl_secs: u64,
    commit: EntryCommit<'_>,
) -> Result<(), Error> {
    // Without an outcome the stream slot is never written; any stream name fills it.
    let (outcome_stream, fields) = commit.outcome.unwrap_or((stream, Vec::new()));
    // Without a reservation the hash and counter slots are never touched; the marker fills them.
    let none = || (String::new(), String::new());
    let (reservations, version, totals, field, value, token, buy, buys_token) = match commit.reservation {
        Some(r) => (
            quantum_model::contract::reservation_key(&r.symbol),
            quantum_model::contract::reservation_version_key(&r.symbol),
            quantum_model::contract::reservation_totals_key(&r.symbol),
            r.field,
            r.value,
            r.token,
            if r.buys_token.is_some() { "BUY" } else { "" },
            r.buys_token.unwrap_or_else(none),
        ),
        None => (
            commit.marker_key.clone(),
            commit.marker_key.clone(),
            commit.marker_key.clone(),
            String::new(),
            String::new(),
            none(),
            "",
            none(),
        ),
    };
    let mut args = Vec::with_capacity(12 + 2 * fields.len());
    args.extend([
        group.to_string(),
        commit.entry_id.to_string(),
        marker_ttl_secs.to_string(),
        commit.record.unwrap_or_default(),
        commit.replay_record.unwrap_or_default(),
        field,
        value,
        token.0,
        token.1,
        buy.to_string(),
        buys_token.0,
        buys_token.1,
    ]);
    for (k, v) in fields {
        args.push(k.to_string());
        args.push(v);
    }
    let keys = vec![
        commit.marker_key,
        stream.to_string(),
        outcome_stream.to_string(),
        reservations,
        version,
        quantum_model::contract::BUYS_VERSION_KEY.to_string(),
        totals,
    ];
    queue_eval(pipeline, &COMMIT_SCRIPT, keys, args).await
}
