//! The Lua every script that adds or removes an in-flight reservation shares, so that a symbol's
//! totals (`quantum_model::reservation::Totals`, under `contract::reservation_totals_key`)
//! change in the same step as its reservation hash, and the gates can read the totals instead
//! of walking every reservation.
//!
//! Invariants the functions keep:
//! - a value is counted only when it ends in a well-formed `held=<whole>:<frac>` (canonical
//!   integers, at most 16 digits; `Reservation::is_counted` is the same test): one written
//!   before `held` existed, or mangled by hand, is
//!   left out of the totals, and the hash's length then differs from `count`, which makes the
//!   bridge sum that symbol value by value (and rebuild its totals) until the values agree;
//! - Redis does the arithmetic that can be large (HINCRBY on 64-bit integers): Lua's numbers
//!   are doubles. A script sums its own changes to each total in Lua while that is exact (each
//!   part below 10^15, each running sum below 2^52, else it hands the sum to HINCRBY at once)
//!   and writes them when its body returns, one HINCRBY per total changed instead of up to three
//!   per reservation (every `redis.call` costs Redis microseconds: argument objects, lookup,
//!   AOF propagation). [`with_totals`] runs the body in a `pcall`, so the sums are written even
//!   when a command fails halfway, as the per-reservation HINCRBYs were. The rebuild
//!   (`inflight_rebuild`) adds in Lua, exactly while each sum stays below 2^53;
//! - [`TOTALS_LUA`]'s `inflight_totals_bad` runs before a script's first write: a totals key of another
//!   type fails the step with nothing written; one holding a non-integer is dropped, so the
//!   next read finds the counts disagree and rebuilds it. It checks a key once per script (a
//!   batch's orders share their symbol's totals), as nothing else writes it meanwhile;
//! - a totals hash whose count ends a script at zero or below is removed: a drained symbol
//!   leaves no key.

use fred::prelude::*;

use quantum_model::contract::{reservation_key, reservation_totals_key};
use quantum_model::types::Symbol;

use crate::cas::queue_eval;

/// The Lua functions, to be placed right after a script's flags line:
/// - `inflight_totals_bad(totals)`: an error text (nothing may be written), or nil;
/// - `inflight_reserve(hash, totals, field, value)`: adds (or replaces) a reservation;
/// - `inflight_release(hash, totals, field)`: removes one, if it is there;
///
/// [`queue_rebuild`]'s script alone also has `inflight_rebuild(hash, totals)`: the totals summed
/// again from the hash's values.
pub const TOTALS_LUA: &str = r#"
local TOTALS = {'sell_qty_whole', 'sell_qty_frac', 'buy_notional_whole', 'buy_notional_frac', 'count'}
local function canonical(n)
  return #n <= 16 and (n == '0' or string.sub(n, 1, 1) ~= '0')
end
-- The side and held parts of a value, or nil when it is not counted.
local function held_of(value)
  local side, whole, frac = string.match(value, '^side=(%u+) .* held=(%d+):(%d+)$')
  if side and canonical(whole) and canonical(frac) and (side == 'SELL' or side == 'BUY') then
    return (side == 'SELL') and 'sell_qty' or 'buy_notional', whole, frac
  end
end
-- The script's changes to each totals key not written yet: pending[totals][field] = a sum in
-- Lua, exact (every part added is below 10^15 and every sum below 2^52).
local pending = {}
local EXACT = 4503599627370496
local function add_part(totals, field, part, sign)
  if part == '0' then return end
  if #part > 15 then
    redis.call('HINCRBY', totals, field, sign .. part)
    return
  end
  local sums = pending[totals]
  if not sums then
    sums = {}
    pending[totals] = sums
  end
  local sum = (sums[field] or 0) + (sign == '-' and -tonumber(part) or tonumber(part))
  if sum >= EXACT or sum <= -EXACT then
    redis.call('HINCRBY', totals, field, string.format('%.0f', sum))
    sum = 0
  end
  sums[field] = sum
end
local function add_held(totals, value, sign)
  local which, whole, frac = held_of(value)
  if not which then return end
  add_part(totals, which .. '_whole', whole, sign)
  add_part(totals, which .. '_frac', frac, sign)
  add_part(totals, 'count', '1', sign)
end
local function inflight_flush()
  for totals, sums in pairs(pending) do
    for field, sum in pairs(sums) do
      if sum ~= 0 and field ~= 'count' then redis.call('HINCRBY', totals, field, string.format('%.0f', sum)) end
    end
    if (sums.count or 0) ~= 0
      and redis.call('HINCRBY', totals, 'count', string.format('%.0f', sums.count)) <= 0 then
      redis.call('HDEL', totals, unpack(TOTALS))
    end
  end
  pending = {}
end
-- The totals keys checked by this script: only the script writes them meanwhile.
local checked = {}
local function inflight_totals_bad(totals)
  if checked[totals] then return nil end
  checked[totals] = true
  local t = redis.call('TYPE', totals)['ok']
  if t ~= 'none' and t ~= 'hash' then
    return 'WRONGTYPE ' .. totals .. ' holds a ' .. t .. ', not a hash; nothing written'
  end
  local all = redis.call('HGETALL', totals)
  for i = 2, #all, 2 do
    -- What HINCRBY takes: a canonical integer ("0", no leading zero, no "-0").
    local v = all[i]
    if not ((v == '0' or string.match(v, '^%-?[1-9]%d*$')) and #v <= 18) then
      redis.call('HDEL', totals, unpack(TOTALS))
      return nil
    end
  end
end
local function inflight_reserve(hash, totals, field, value)
  local old = redis.call('HGET', hash, field)
  if old then add_held(totals, old, '-') end
  redis.call('HSET', hash, field, value)
  add_held(totals, value, '')
end
local function inflight_release(hash, totals, field)
  local old = redis.call('HGET', hash, field)
  if old then
    add_held(totals, old, '-')
    redis.call('HDEL', hash, field)
  end
end
"#;

/// The rebuild, apart: only the rebuild script carries it (every byte of a script's body costs
/// Redis a SHA1 on every call).
const REBUILD_LUA: &str = r#"
local function inflight_rebuild(hash, totals)
  local sums = {sell_qty_whole = 0, sell_qty_frac = 0, buy_notional_whole = 0, buy_notional_frac = 0, count = 0}
  local all = redis.call('HGETALL', hash)
  for i = 2, #all, 2 do
    local which, whole, frac = held_of(all[i])
    if which then
      sums[which .. '_whole'] = sums[which .. '_whole'] + tonumber(whole)
      sums[which .. '_frac'] = sums[which .. '_frac'] + tonumber(frac)
      sums.count = sums.count + 1
    end
  end
  redis.call('HDEL', totals, unpack(TOTALS))
  if sums.count > 0 then
    local args = {}
    for _, name in ipairs(TOTALS) do
      args[#args + 1] = name
      args[#args + 1] = string.format('%.0f', sums[name])
    end
    redis.call('HSET', totals, unpack(args))
  end
  return sums.count
end
"#;

/// The end of every script [`with_totals`] makes: the body has run (in a `pcall`, so that the
/// totals it changed are written even when one of its commands failed), then its pending sums
/// are written, then its reply (or the error) is returned.
const RUN_BODY_LUA: &str = r#"
local ok, reply = pcall(body)
inflight_flush()
if ok then return reply end
if type(reply) == 'table' and reply.err then return redis.error_reply(reply.err) end
return redis.error_reply(tostring(reply))
"#;

/// A script made of `flags` (its `#!lua` line, or empty), [`TOTALS_LUA`] and `body` run as a
/// function whose in-flight sums are written when it returns ([`RUN_BODY_LUA`]), without its
/// comment lines and indentation: Redis hashes a script's whole body on every `EVAL`.
pub fn with_totals(flags: &str, body: &str) -> String {
    let code = format!("{TOTALS_LUA}\nlocal function body()\n{body}\nend\n{RUN_BODY_LUA}");
    let lines = code
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("--"));
    std::iter::once(flags).chain(lines).collect::<Vec<_>>().join("\n")
}

static RELEASE_SCRIPT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    with_totals(
        "#!lua",
        r#"local bad = inflight_totals_bad(KEYS[2])
if bad then return redis.error_reply(bad) end
for _, field in ipairs(ARGV) do inflight_release(KEYS[1], KEYS[2], field) end
return #ARGV
"#,
    )
});

/// ARGV: field, value pairs; releases each field that still holds that value.
static RELEASE_IF_SCRIPT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    with_totals(
        "#!lua",
        r#"local bad = inflight_totals_bad(KEYS[2])
if bad then return redis.error_reply(bad) end
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then inflight_release(KEYS[1], KEYS[2], ARGV[i]) end
end
return 1
"#,
    )
});

static REBUILD_SCRIPT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    with_totals(
        "#!lua",
        &format!(
            "{REBUILD_LUA}\n{}",
            r#"local t = redis.call('TYPE', KEYS[2])['ok']
if t ~= 'none' and t ~= 'hash' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2] .. ' holds a ' .. t .. ', not a hash; nothing written')
end
return inflight_rebuild(KEYS[1], KEYS[2])
"#
        ),
    )
});

/// Queues the release of `fields` from `symbol`'s reservations, totals with them.
///
/// # Errors
/// Only a failure to queue the command.
pub async fn queue_release<C: ClientLike>(pipeline: &C, symbol: &Symbol, fields: Vec<String>) -> Result<(), Error> {
    let keys = vec![reservation_key(symbol), reservation_totals_key(symbol)];
    queue_eval(pipeline, &RELEASE_SCRIPT, keys, fields).await
}

/// Queues the release of each `(field, value)` of `symbol`'s reservations whose field still
/// holds that value (the one the caller wrote: another writer's value for the same field stays).
///
/// # Errors
/// Only a failure to queue the command.
pub async fn queue_release_if_unchanged<C: ClientLike>(
    pipeline: &C,
    symbol: &Symbol,
    pairs: Vec<(String, String)>,
) -> Result<(), Error> {
    let keys = vec![reservation_key(symbol), reservation_totals_key(symbol)];
    let args = pairs.into_iter().flat_map(|(field, value)| [field, value]).collect();
    queue_eval(pipeline, &RELEASE_IF_SCRIPT, keys, args).await
}

/// Queues the rebuild of `symbol`'s totals from its reservation hash; the reply is the count.
///
/// # Errors
/// Only a failure to queue the command.
pub async fn queue_rebuild<C: ClientLike>(pipeline: &C, symbol: &Symbol) -> Result<(), Error> {
    let keys = vec![reservation_key(symbol), reservation_totals_key(symbol)];
    queue_eval(pipeline, &REBUILD_SCRIPT, keys, Vec::new()).await
}
