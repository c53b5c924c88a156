//! An order's life in Redis, from claim to finalize, and the sweep that finishes orders whose
//! plan can no longer do it.
//!
//! Invariants (each kept by one server-side step):
//! - an order record `quantum:order:<coid>` is created `state=NEW` only by the claim, which
//!   indexes it in `quantum:executor:open_orders` (score: claim time) in the same script, and
//!   names its owner with a lease (`INTENT_EXECUTOR_ORDER_LEASE_MS`): until the lease runs out
//!   no other executor calls the venue for it or finalizes it;
//! - a NEW record is finalized exactly once: the finalize script acts only while the record is
//!   NEW, and in that one step writes the final state, appends the fills to `ledger.commit` and
//!   the result to `apply.result`, swaps the plan's in-flight reservation for its fills', and
//!   removes the record from the index. Whoever finalizes (the batch, a second instance, the
//!   sweep), the others find it finished and add nothing;
//! - a finished record expires after [`ORDER_RECORD_TTL_SECS`], beyond the replay horizon: a plan
//!   replayed later is older than `INTENT_EXECUTOR_MAX_PLAN_AGE_MS` and refused before any claim;
//! - so every order the venue accepted reaches the ledger, even when its plan was trimmed or
//!   deleted after the venue call: the sweep asks the venue about every record left NEW past
//!   its grace period and finalizes it with what the venue says.

use fred::prelude::*;
use fred::types::Value;
use rust_decimal::Decimal;

use quantum_model::contract::{
    order_key, reservation_key, reservation_totals_key, LEDGER_COMMIT_STREAM, OPEN_ORDERS_KEY, RESULT_STREAM,
};
use quantum_model::execution_result::ExecutionResult;
use quantum_model::fields::Fields;
use quantum_model::fill::Fill;
use quantum_model::plan::Plan;
use quantum_model::reservation::Reservation;
use quantum_model::stream_entry::StreamEntry;
use quantum_model::time::now_ms;
use quantum_model::types::{OrderId, PlanId, Side, Symbol};
use quantum_runtime::cas::{owned, queue_eval};
use quantum_runtime::reply::hash_pairs;

use crate::venue::OrderOutcome;

/// How long a finished order record is kept (seconds): a week, beyond any replay horizon.
pub const ORDER_RECORD_TTL_SECS: u64 = 7 * 24 * 3600;

/// Claims each plan's order record unless it exists (answers the state found, or `CLAIMED`);
/// a `peek` creates nothing (`NONE` when there is no record). A NEW record is taken over (`NEW`)
/// when it is ours or its owner's lease ran out, and otherwise left to its owner (`LEASED`):
/// two executors never call the venue for one order at once. Leases run on Redis' clock. One
/// step for the whole batch: a script's fixed cost is paid once, not per plan.
/// KEYS: the open-order index, then each plan's order record. ARGV: now (ms), owner, lease
/// (ms), then per plan: mode, coid, plan id, symbol, side, qty.
const CLAIM_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = string.format('%.0f', now + tonumber(ARGV[3]))
local owner = ARGV[2]
local states = {}
for k = 2, #KEYS do
  local a = 4 + (k - 2) * 6
  local key = KEYS[k]
  local state = redis.call('HGET', key, 'state')
  if state == 'NEW' then
    local holder = redis.call('HGET', key, 'owner')
    local lease = tonumber(redis.call('HGET', key, 'lease_until') or '0')
    if holder and holder ~= owner and lease > now then
      state = 'LEASED'
    else
      redis.call('HSET', key, 'owner', owner, 'lease_until', until_ms)
    end
  elseif not state then
    if ARGV[a] == 'peek' then
      state = 'NONE'
    else
      redis.call('HSET', key, 'state', 'NEW', 'claimed_ts', ARGV[1], 'owner', owner, 'lease_until', until_ms,
        'plan_id', ARGV[a + 2], 'symbol', ARGV[a + 3], 'side', ARGV[a + 4], 'qty', ARGV[a + 5])
      redis.call('ZADD', KEYS[1], ARGV[1], ARGV[a + 1])
      state = 'CLAIMED'
    end
  end
  states[#states + 1] = state
end
return states
"#;

/// Finalizes a NEW order record (see the module doc) for its owner, or for anyone once the
/// owner's lease ran out; returns 1, or 0 when it was not NEW or is another's under lease.
/// ARGV: coid, plan id, record TTL, owner, then length-prefixed groups: the record's fields,
/// the number of fills and each fill's fields, the fills' reservations; the rest is the result.
static FINALIZE_SCRIPT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| quantum_runtime::inflight::with_totals("#!lua", FINALIZE_BODY));

/// KEYS: order record, open orders, reservations, ledger.commit, apply.result, reservation totals.
const FINALIZE_BODY: &str = r#"
if redis.call('HGET', KEYS[1], 'state') ~= 'NEW' then return 0 end
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[4] then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0') > now then return 0 end
end
-- Every key's type before the first write, and the record's state last: a step that fails
-- writes nothing, so the record stays NEW and the sweep finishes it (#!lua: under maxmemory
-- Redis refuses the step before it starts).
for k, want in pairs({[2] = 'zset', [3] = 'hash', [4] = 'stream', [5] = 'stream'}) do
  local t = redis.call('TYPE', KEYS[k])['ok']
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k] .. ' holds a ' .. t .. ', not a ' .. want .. '; nothing written')
  end
end
local bad = inflight_totals_bad(KEYS[6])
if bad then return redis.error_reply(bad) end
local record = 5
local i = record + 1 + tonumber(ARGV[record])
local fills = tonumber(ARGV[i])
i = i + 1
for _ = 1, fills do
  local n = tonumber(ARGV[i])
  redis.call('XADD', KEYS[4], '*', unpack(ARGV, i + 1, i + n))
  i = i + 1 + n
end
inflight_release(KEYS[3], KEYS[6], ARGV[2])
local n = tonumber(ARGV[i])
for j = i + 1, i + n, 2 do inflight_reserve(KEYS[3], KEYS[6], ARGV[j], ARGV[j + 1]) end
i = i + 1 + n
redis.call('XADD', KEYS[5], '*', unpack(ARGV, i))
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, record + 1, record + tonumber(ARGV[record])))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"#;

/// What the claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimState {
    /// Claimed now: place the order.
    Claimed,
    /// Claimed before a crash or by another instance: the venue may have the order.
    New,
    /// Finished earlier (FILLED/REJECTED): acknowledge only.
    Finished(String),
    /// No record, and none created (a peek).
    None,
    /// Another executor holds it under a lease: leave the plan pending for now.
    Leased,
}

/// The order of a plan, as the order record keeps it: enough to finalize it without the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRef {
    pub client_order_id: OrderId,
    pub plan_id: PlanId,
    pub symbol: Symbol,
    pub side: Side,
    pub qty: Decimal,
}

impl From<&Plan> for OrderRef {
    fn from(plan: &Plan) -> Self {
        Self {
            client_order_id: plan.plan_id.client_order_id(),
            plan_id: plan.plan_id.clone(),
            symbol: plan.symbol.clone(),
            side: plan.side,
            qty: plan.qty,
        }
    }
}

impl OrderRef {
    /// Reads an order record written by the claim.
    ///
    /// # Errors
    /// A record without a readable plan id, symbol, side or quantity.
    pub fn from_record(pairs: Vec<(String, String)>) -> Result<Self, String> {
        let entry = StreamEntry {
            id: String::new(),
            fields: pairs,
            binary_field: None,
        };
        let field = |name: &str| entry.get(name).ok_or_else(|| format!("no {name}"));
        let plan_id = PlanId::parse(field("plan_id")?).map_err(|e| e.to_string())?;
        Ok(Self {
            client_order_id: plan_id.client_order_id(),
            symbol: Symbol::parse(field("symbol")?).map_err(|e| e.to_string())?,
            side: Side::parse(field("side")?).map_err(|e| e.to_string())?,
            qty: quantum_model::types::parse_decimal("qty", field("qty")?).map_err(|e| e.to_string())?,
            plan_id,
        })
    }

    /// The result of this order, as `apply.result` carries it.
    pub fn result(&self, outcome: &OrderOutcome) -> ExecutionResult {
        let (qty, avg, fee) = outcome.totals();
        let error = match outcome {
            OrderOutcome::Filled { .. } => None,
            OrderOutcome::Rejected { reason } => Some(reason.clone()),
        };
        ExecutionResult {
            plan_id: self.plan_id.to_string(),
            symbol: self.symbol.to_string(),
            side: self.side.to_string(),
            executed: error.is_none(),
            decision: "EXECUTE".to_string(),
            error,
            order_id: Some(self.client_order_id.to_string()),
            filled_qty: qty,
            avg_price: avg,
            fee,
        }
    }
}

/// Who claims, and for how long the claim keeps other executors off its orders.
#[derive(Debug, Clone)]
pub struct Claimant {
    pub owner: String,
    pub lease_ms: u64,
}

/// Queues the claims of `plans` (a peek for those whose flag is set) on `pipeline`, as one
/// script whose reply is the state found for each plan, in order.
pub async fn queue_claims<C: ClientLike>(pipeline: &C, plans: &[(&Plan, bool)], who: &Claimant) -> Result<(), Error> {
    let mut keys = Vec::with_capacity(1 + plans.len());
    keys.push(OPEN_ORDERS_KEY.to_string());
    let mut args = Vec::with_capacity(3 + 6 * plans.len());
    args.extend([now_ms().to_string(), who.owner.clone(), who.lease_ms.to_string()]);
    for (plan, peek) in plans {
        let coid = plan.plan_id.client_order_id();
        keys.push(order_key(&coid));
        args.extend([
            if *peek { "peek" } else { "claim" }.to_string(),
            coid.to_string(),
            plan.plan_id.to_string(),
            plan.symbol.to_string(),
            plan.side.to_string(),
            plan.qty.to_string(),
        ]);
    }
    queue_eval(pipeline, CLAIM_SCRIPT, keys, args).await
}

/// Reads a claim script's reply.
pub fn claim_state(reply: &str) -> ClaimState {
    match reply {
        "CLAIMED" => ClaimState::Claimed,
        "NEW" => ClaimState::New,
        "NONE" => ClaimState::None,
        "LEASED" => ClaimState::Leased,
        finished => ClaimState::Finished(finished.to_string()),
    }
}

/// What a fill holds in flight until the ledger applies it.
fn fill_reservation(fill: &Fill) -> Reservation {
    Reservation {
        side: fill.side,
        qty: fill.qty,
        notional_usd: fill.qty.saturating_mul(fill.price),
        ts_ms: now_ms(),
    }
}

/// Queues the finalize script for `order` with `outcome`; `fill_fields` adds fields (the trace
/// context) to each ledger.commit entry. Its reply is 1 when it finalized, 0 when the record
/// was no longer NEW.
pub async fn queue_finalize<C: ClientLike>(
    pipeline: &C,
    owner: &str,
    order: &OrderRef,
    outcome: &OrderOutcome,
    fill_fields: impl Fn(&mut Vec<(&'static str, String)>),
) -> Result<(), Error> {
    let (qty, avg, fee) = outcome.totals();
    let (state, error, fills): (&str, &str, &[Fill]) = match outcome {
        OrderOutcome::Filled { fills } => ("FILLED", "", fills),
        OrderOutcome::Rejected { reason } => ("REJECTED", reason, &[]),
    };
    let record = [
        ("state", state.to_string()),
        ("filled_qty", qty.to_string()),
        ("avg_price", avg.to_string()),
        ("fee", fee.to_string()),
        ("error", error.to_string()),
        ("finished_ts", now_ms().to_string()),
    ];
    let mut args = vec![
        order.client_order_id.to_string(),
        order.plan_id.to_string(),
        ORDER_RECORD_TTL_SECS.to_string(),
        owner.to_string(),
    ];
    push_group(&mut args, record.iter().map(|(k, v)| (k.to_string(), v.clone())));
    args.push(fills.len().to_string());
    for fill in fills {
        let mut fields = fill.to_fields();
        fill_fields(&mut fields);
        push_group(&mut args, owned(fields).into_iter());
    }
    push_group(
        &mut args,
        fills
            .iter()
            .map(|f| (f.fill_id.to_string(), fill_reservation(f).to_value())),
    );
    for (k, v) in order.result(outcome).to_fields() {
        args.push(k.to_string());
        args.push(v);
    }
    let keys = vec![
        order_key(&order.client_order_id),
        OPEN_ORDERS_KEY.to_string(),
        reservation_key(&order.symbol),
        LEDGER_COMMIT_STREAM.to_string(),
        RESULT_STREAM.to_string(),
        reservation_totals_key(&order.symbol),
    ];
    queue_eval(pipeline, &FINALIZE_SCRIPT, keys, args).await
}

/// Appends field/value pairs as one length-prefixed group of script arguments.
fn push_group(args: &mut Vec<String>, pairs: impl Iterator<Item = (String, String)>) {
    let at = args.len();
    args.push(String::new());
    for (k, v) in pairs {
        args.push(k);
        args.push(v);
    }
    args[at] = (args.len() - at - 1).to_string();
}

/// The open orders claimed before `claimed_before_ms`, oldest first, at most `limit`.
pub async fn open_orders_before(client: &Client, claimed_before_ms: u64, limit: usize) -> Result<Vec<String>, Error> {
    client
        .zrangebyscore(
            OPEN_ORDERS_KEY,
            "-inf",
            claimed_before_ms as f64,
            false,
            Some((0, limit as i64)),
        )
        .await
}

/// An open order's record: `Ok(None)` when it is gone or no longer NEW (its index entry is
/// stale), `Err` when it cannot be read.
pub async fn read_open_order(client: &Client, coid: &str) -> Result<Option<Result<OrderRef, String>>, Error> {
    let pairs = hash_pairs(client.hgetall::<Value, _>(order_key(&OrderId::new(coid))).await?);
    let state = pairs.field("state");
    if state != Some("NEW") {
        return Ok(None);
    }
    Ok(Some(OrderRef::from_record(pairs)))
}

/// Removes a stale index entry.
pub async fn unindex(client: &Client, coid: &str) -> Result<(), Error> {
    client.zrem(OPEN_ORDERS_KEY, coid).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_length_prefixed() {
        let mut args = vec!["x".to_string()];
        push_group(&mut args, [("a".to_string(), "1".to_string())].into_iter());
        push_group(&mut args, std::iter::empty());
        assert_eq!(args, ["x", "2", "a", "1", "0"]);
    }

    #[test]
    fn records_read_back_or_say_what_is_missing() {
        let pairs = |v: &[(&str, &str)]| v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let order = OrderRef::from_record(pairs(&[
            ("state", "NEW"),
            ("plan_id", "00000000000000ab"),
            ("symbol", "BTCUSDT"),
            ("side", "BUY"),
            ("qty", "0.5"),
        ]))
        .unwrap();
        assert_eq!(order.client_order_id.as_str(), "qib-00000000000000ab");
        assert_eq!(order.qty, Decimal::new(5, 1));
        let missing = OrderRef::from_record(pairs(&[("state", "NEW"), ("plan_id", "00000000000000ab")]));
        assert_eq!(missing, Err("no symbol".to_string()));
    }
}
