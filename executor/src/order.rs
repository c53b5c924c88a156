//! An order's life in Redis, from claim to finalize, and the sweep that finishes orders whose
//! plan can no longer do it.
//!
//! Invariants (each kept by one server-side step):
//! - an order record `quantum:order:<coid>` is created `state=NEW` only by the claim, and only
//!   once it is indexed in `quantum:executor:open_orders` (score: claim time), so the sweep can
//!   find every record that may exist: on one server the claim script indexes the orders before
//!   it creates their records, in the same atomic step; on a cluster, where the index lives in
//!   another slot than most records, the index is written first, in its own step (an entry whose
//!   record never came is removed as stale); the claim names the record's owner with
//!   a lease (`INTENT_EXECUTOR_ORDER_LEASE_MS`): until the lease runs out no other executor calls
//!   the venue for it or finalizes it;
//! - a NEW record is finalized exactly once: the finalize script acts only while the record is
//!   NEW, and writes the final state together with its outbox (the fills, their reservations
//!   and the result) and `published=0`: the record is the order's write-ahead record. Whoever
//!   finalizes (the batch, a second instance, the sweep), the others find it finished;
//! - a finished record's outbox is published in ordered steps of one slot each, every one
//!   idempotent, so whoever finds the record unpublished (the batch, the plan redelivered after
//!   a crash, the sweep) publishes it again without doubling anything: the plan's reservation is
//!   swapped for the fills' once (a note in the reservations' slot says it was done), the fills and the result are appended once each (`append_once`, keyed by fill id
//!   and plan id), then the record is marked `published=1` and leaves the index (on one server
//!   in the appends' round trip, by a script that first finds each of them out). A record leaves
//!   the open-order index only once its fills and result are out;
//! - a finished record expires after [`ORDER_RECORD_TTL_SECS`], beyond the replay horizon: a plan
//!   replayed later is older than `INTENT_EXECUTOR_MAX_PLAN_AGE_MS` and refused before any claim;
//! - so every order the venue accepted reaches the ledger, even when its plan was trimmed or
//!   deleted after the venue call: the sweep asks the venue about every record left NEW past
//!   its grace period and finalizes it with what the venue says, and publishes every record
//!   left unpublished.

use fred::prelude::*;
use fred::types::Value;
use rust_decimal::Decimal;

use quantum_model::contract::{
    order_key, reservation_key, reservation_swapped_key, reservation_totals_key, LEDGER_COMMIT_STREAM, OPEN_ORDERS_KEY,
    PLAN_GROUP, PLAN_STREAM, RESULT_STREAM,
};
use quantum_model::execution_result::ExecutionResult;
use quantum_model::fields::Fields;
use quantum_model::fill::Fill;
use quantum_model::plan::Plan;
use quantum_model::reservation::Reservation;
use quantum_model::shards::StreamShards;
use quantum_model::stream_entry::StreamEntry;
use quantum_model::time::now_ms;
use quantum_model::types::{OrderId, PlanId, Side, Symbol};
use quantum_runtime::append_once::{marker_key, queue_append_once, Once};
use quantum_runtime::cas::{owned, queue_eval};
use quantum_runtime::reply::hash_pairs;

use crate::venue::OrderOutcome;

/// The streams of one shard (`STREAM_SHARDS`): where its plans come from and where their
/// results and fills go. A symbol's plans, results and fills share a shard index, so each
/// symbol's order is kept on every stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streams {
    pub plans: String,
    pub results: String,
    pub fills: String,
}

impl Streams {
    /// Shard `shard`'s streams.
    pub fn shard(shards: StreamShards, shard: u16) -> Self {
        Self {
            plans: shards.name(PLAN_STREAM, shard),
            results: shards.name(RESULT_STREAM, shard),
            fills: shards.name(LEDGER_COMMIT_STREAM, shard),
        }
    }

    /// The streams of `symbol`'s shard.
    pub fn of(shards: StreamShards, symbol: &Symbol) -> Self {
        Self::shard(shards, shards.of(symbol))
    }
}

impl Default for Streams {
    /// The contract streams themselves (one shard).
    fn default() -> Self {
        Self::shard(StreamShards::ONE, 0)
    }
}

/// How long a finished order record is kept (seconds): a week, beyond any replay horizon.
pub const ORDER_RECORD_TTL_SECS: u64 = 7 * 24 * 3600;

/// How long the notes of an order's publication (its reservation swap, its fills' and result's
/// append-once markers) live: a publication is repeated only by whoever read the record
/// unpublished, within seconds (the batch after a crash, a sweep pass), and they must outlive
/// every such repeat, including one that read the record just before the first publisher
/// finished. One hour; past it a repeat would at worst append a fill the ledger skips by
/// `venue_seq`, a second result line, and a reservation already expired by its time stamp.
const PUBLICATION_TTL_SECS: u64 = 3600;

/// Claims each plan's order record unless it exists (answers the state found, or `CLAIMED`);
/// a `peek` creates nothing (`NONE` when there is no record). A NEW record is taken over (`NEW`)
/// when it is ours or its owner's lease ran out, and otherwise left to its owner (`LEASED`):
/// two executors never call the venue for one order at once. Leases run on Redis' clock. One
/// step for all the batch's records of one slot (on one server: the whole batch), so a
/// script's fixed cost is paid once, not per plan.
/// Each record is read with one `HMGET` (every `redis.call` costs Redis microseconds).
/// KEYS: the plans' order records, then, when ARGV[4] > 0, the open-order index. ARGV: now
/// (ms), owner, lease (ms), the number m of orders to index first (at score now), their m
/// client order ids, then per plan: mode, plan id, symbol, side, qty.
const CLAIM_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = string.format('%.0f', now + tonumber(ARGV[3]))
local owner = ARGV[2]
local indexed = tonumber(ARGV[4])
local records = #KEYS
if indexed > 0 then
  records = records - 1
  local entries = {}
  for j = 5, 4 + indexed do
    entries[#entries + 1] = ARGV[1]
    entries[#entries + 1] = ARGV[j]
  end
  redis.call('ZADD', KEYS[#KEYS], 'NX', unpack(entries))
end
local states = {}
for k = 1, records do
  local a = 5 + indexed + (k - 1) * 5
  local key = KEYS[k]
  local record = redis.call('HMGET', key, 'state', 'owner', 'lease_until', 'published')
  local state = record[1]
  if state == 'NEW' then
    local holder = record[2]
    local lease = tonumber(record[3] or '0')
    if holder and holder ~= owner and lease > now then
      state = 'LEASED'
    else
      redis.call('HSET', key, 'owner', owner, 'lease_until', until_ms)
    end
  elseif state ~= false and record[4] == '0' then
    state = 'UNPUBLISHED'
  elseif not state then
    if ARGV[a] == 'peek' then
      state = 'NONE'
    else
      redis.call('HSET', key, 'state', 'NEW', 'claimed_ts', ARGV[1], 'owner', owner, 'lease_until', until_ms,
        'plan_id', ARGV[a + 1], 'symbol', ARGV[a + 2], 'side', ARGV[a + 3], 'qty', ARGV[a + 4])
      state = 'CLAIMED'
    end
  end
  states[#states + 1] = state
end
return states
"#;

/// Finalizes each NEW order record for its owner, or for anyone once the owner's lease ran
/// out: writes the final fields, the outbox and `published=0`. Replies 1 per record finalized,
/// 0 per record no longer NEW (or another's under lease). KEYS: the records (of one slot, or
/// any on one server). ARGV: owner, record TTL, then per record the number of field/value
/// items and the items.
const FINALIZE_SCRIPT: &str = r#"#!lua
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local done = {}
local i = 3
for k = 1, #KEYS do
  local n = tonumber(ARGV[i])
  local ok = 0
  local record = redis.call('HMGET', KEYS[k], 'state', 'owner', 'lease_until')
  if record[1] == 'NEW' then
    local owner = record[2]
    if not owner or owner == ARGV[1] or tonumber(record[3] or '0') <= now then
      redis.call('HSET', KEYS[k], unpack(ARGV, i + 1, i + n))
      redis.call('EXPIRE', KEYS[k], ARGV[2])
      ok = 1
    end
  end
  done[#done + 1] = ok
  i = i + 1 + n
end
return done
"#;

/// Swaps each finished order's plan reservation for its fills' once (see the module doc),
/// skipping those whose swapped note shows it done; replies how many it swapped. KEYS: per
/// order its reservations, their totals and its swapped note (the orders of one symbol's slot,
/// or any on one server). ARGV: the notes' TTL, then per order: plan id, the number of fills,
/// and per fill its id and reservation value.
static SWAP_SCRIPT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| quantum_runtime::inflight::with_totals("#!lua", SWAP_BODY));

const SWAP_BODY: &str = r#"
-- Every key's type before the first write: a step that fails writes nothing. A batch's orders
-- share their symbol's keys: each is checked once.
local hashes = {}
for j = 1, #KEYS, 3 do
  if not hashes[KEYS[j]] then
    hashes[KEYS[j]] = true
    local t = redis.call('TYPE', KEYS[j])['ok']
    if t ~= 'none' and t ~= 'hash' then
      return redis.error_reply('WRONGTYPE ' .. KEYS[j] .. ' holds a ' .. t .. ', not a hash; nothing written')
    end
  end
  local bad = inflight_totals_bad(KEYS[j + 1])
  if bad then return redis.error_reply(bad) end
end
local i = 2
local swapped = 0
for j = 1, #KEYS, 3 do
  local m = tonumber(ARGV[i + 1])
  if redis.call('EXISTS', KEYS[j + 2]) == 0 then
    inflight_release(KEYS[j], KEYS[j + 1], ARGV[i])
    for f = i + 2, i + 1 + 2 * m, 2 do inflight_reserve(KEYS[j], KEYS[j + 1], ARGV[f], ARGV[f + 1]) end
    redis.call('SET', KEYS[j + 2], '1', 'EX', ARGV[1])
    swapped = swapped + 1
  end
  i = i + 2 + 2 * m
end
return swapped
"#;

/// Marks records published and drops their outboxes (a record gone meanwhile is not
/// re-created). On one server it is the publication's whole last step, in the appends' round
/// trip: it first checks that every fill and result of the publication is out (each one's
/// append-once marker is there: appended now, or before) and writes nothing, replying 0, unless
/// they all are; then it also takes the orders off the open-order index and acknowledges the
/// plans. On a cluster it is given the records of one slot alone, and the index and the
/// acknowledgement are commands of their own.
/// KEYS: the m markers, the r records, then (with a group) the open-order index and the plan
/// stream. ARGV: m, r, the plans' group ('' for none), the number c of orders to unindex, their
/// c client order ids, then the plan entry ids to acknowledge.
const PUBLISHED_SCRIPT: &str = r#"
local m, r = tonumber(ARGV[1]), tonumber(ARGV[2])
-- In chunks of 1000: unpack fails past ~8000 values.
for from = 1, m, 1000 do
  local to = math.min(from + 999, m)
  if redis.call('EXISTS', unpack(KEYS, from, to)) ~= to - from + 1 then return 0 end
end
for k = m + 1, m + r do
  if redis.call('EXISTS', KEYS[k]) == 1 then
    redis.call('HSET', KEYS[k], 'published', '1')
    redis.call('HDEL', KEYS[k], 'outbox')
  end
end
if ARGV[3] ~= '' then
  local c = tonumber(ARGV[4])
  for from = 5, 4 + c, 1000 do
    redis.call('ZREM', KEYS[m + r + 1], unpack(ARGV, from, math.min(from + 999, 4 + c)))
  end
  for from = 5 + c, #ARGV, 1000 do
    redis.call('XACK', KEYS[m + r + 2], ARGV[3], unpack(ARGV, from, math.min(from + 999, #ARGV)))
  end
end
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
    /// Finished, but its fills and result may not be out (a crash after the finalize):
    /// publish its outbox, then acknowledge.
    Unpublished,
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

/// Claims the order records of `plans` (a peek for those whose flag is set) and returns the
/// state found for each, in order: the plans to claim indexed first (`ZADD NX`: inside the
/// claim script on one server, its own step on a cluster), then one claim script per slot of
/// their records. A plan whose record turned out finished and published loses the index entry
/// it just got.
///
/// # Errors
/// Redis failing; an index entry written before a failure is stale and removed by the sweep.
pub async fn claim(client: &Client, plans: &[(&Plan, bool)], who: &Claimant) -> Result<Vec<ClaimState>, Error> {
    let now = now_ms();
    let indexed: Vec<String> = plans
        .iter()
        .filter(|(_, peek)| !peek)
        .map(|(plan, _)| plan.plan_id.client_order_id().to_string())
        .collect();
    // One server: the claim's one script indexes its orders too, a round trip saved per batch.
    let index_in_claim = !client.is_clustered() && !indexed.is_empty();
    if !index_in_claim && !indexed.is_empty() {
        let entries: Vec<(f64, &String)> = indexed.iter().map(|coid| (now as f64, coid)).collect();
        client
            .zadd::<(), _, _>(OPEN_ORDERS_KEY, Some(SetOptions::NX), None, false, false, entries)
            .await?;
        fail::fail_point!("executor::after_index", |_| std::process::abort());
    }
    let keys: Vec<String> = plans
        .iter()
        .map(|(plan, _)| order_key(&plan.plan_id.client_order_id()))
        .collect();
    let groups = quantum_runtime::nodes::slot_groups(client, &keys);
    let pipeline = client.pipeline();
    for group in &groups {
        // On one server there is one group: the whole batch.
        let index: &[String] = if index_in_claim { &indexed } else { &[] };
        let mut args = Vec::with_capacity(4 + index.len() + 5 * group.len());
        args.extend([
            now.to_string(),
            who.owner.clone(),
            who.lease_ms.to_string(),
            index.len().to_string(),
        ]);
        args.extend(index.iter().cloned());
        for &i in group {
            let (plan, peek) = plans[i];
            args.extend([
                if peek { "peek" } else { "claim" }.to_string(),
                plan.plan_id.to_string(),
                plan.symbol.to_string(),
                plan.side.to_string(),
                plan.qty.to_string(),
            ]);
        }
        let mut group_keys: Vec<String> = group.iter().map(|&i| keys[i].clone()).collect();
        if !index.is_empty() {
            group_keys.push(OPEN_ORDERS_KEY.to_string());
        }
        queue_eval(&pipeline, CLAIM_SCRIPT, group_keys, args).await?;
    }
    let replies: Vec<Vec<String>> = pipeline.all().await?;
    let mut states = vec![ClaimState::None; plans.len()];
    for (group, reply) in groups.iter().zip(replies) {
        for (&i, state) in group.iter().zip(reply) {
            states[i] = claim_state(&state);
        }
    }
    let done: Vec<String> = plans
        .iter()
        .zip(&states)
        .filter(|((_, peek), state)| !peek && matches!(state, ClaimState::Finished(_)))
        .map(|((plan, _), _)| plan.plan_id.client_order_id().to_string())
        .collect();
    if !done.is_empty() {
        client.zrem::<(), _, _>(OPEN_ORDERS_KEY, done).await?;
    }
    Ok(states)
}

/// Reads a claim script's reply.
pub fn claim_state(reply: &str) -> ClaimState {
    match reply {
        "CLAIMED" => ClaimState::Claimed,
        "NEW" => ClaimState::New,
        "NONE" => ClaimState::None,
        "LEASED" => ClaimState::Leased,
        "UNPUBLISHED" => ClaimState::Unpublished,
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

/// What a finished order has to publish, kept in its record (`outbox`) until it is out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbox {
    pub order: OrderRef,
    pub payload: OutboxPayload,
}

/// The outbox as the record stores it (JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutboxPayload {
    /// Each fill's `ledger.commit` fields, keyed by fill id.
    pub fills: Vec<(String, Vec<(String, String)>)>,
    /// Per fill: its id and its reservation value.
    pub reserve: Vec<(String, String)>,
    /// The `apply.result` fields.
    pub result: Vec<(String, String)>,
}

impl Outbox {
    /// The outbox of `order` with `outcome`; `fill_fields` adds fields (the trace context) to
    /// each ledger.commit entry.
    pub fn new(
        order: &OrderRef,
        outcome: &OrderOutcome,
        fill_fields: impl Fn(&mut Vec<(&'static str, String)>),
    ) -> Self {
        let fills: &[Fill] = match outcome {
            OrderOutcome::Filled { fills } => fills,
            OrderOutcome::Rejected { .. } => &[],
        };
        let payload = OutboxPayload {
            fills: fills
                .iter()
                .map(|fill| {
                    let mut fields = fill.to_fields();
                    fill_fields(&mut fields);
                    (fill.fill_id.to_string(), owned(fields))
                })
                .collect(),
            reserve: fills
                .iter()
                .map(|f| (f.fill_id.to_string(), fill_reservation(f).to_value()))
                .collect(),
            result: owned(order.result(outcome).to_fields()),
        };
        Self {
            order: order.clone(),
            payload,
        }
    }

    /// The outbox kept in a record (`None` when the record has none, or an unreadable one).
    ///
    /// # Errors
    /// A record without a readable order, or an outbox that is not valid JSON.
    pub fn from_record(pairs: Vec<(String, String)>) -> Result<Self, String> {
        let outbox = pairs
            .iter()
            .find(|(k, _)| k == "outbox")
            .map(|(_, v)| v.clone())
            .ok_or_else(|| "no outbox".to_string())?;
        let payload = serde_json::from_str(&outbox).map_err(|e| format!("outbox: {e}"))?;
        Ok(Self {
            order: OrderRef::from_record(pairs)?,
            payload,
        })
    }
}

/// Finalizes the records of `orders` (each outbox with its outcome), one script per slot group
/// of the records (one on a single server); returns, per order, whether this call finalized it
/// (false: no longer NEW, or another's under lease).
///
/// # Errors
/// Redis failing; records finalized before the failure stay finalized (and unpublished).
pub async fn finalize(client: &Client, owner: &str, orders: &[(&Outbox, &OrderOutcome)]) -> Result<Vec<bool>, Error> {
    let pipeline = client.pipeline();
    let groups = queue_finalize(&pipeline, client, owner, orders).await?;
    let replies: Vec<Value> = if groups.is_empty() {
        Vec::new()
    } else {
        pipeline.all().await?
    };
    take_finalized(&groups, orders.len(), replies)
}

/// Queues [`finalize`]'s scripts; returns their groups for [`take_finalized`].
async fn queue_finalize(
    pipeline: &fred::clients::Pipeline<Client>,
    client: &Client,
    owner: &str,
    orders: &[(&Outbox, &OrderOutcome)],
) -> Result<Vec<Vec<usize>>, Error> {
    let keys: Vec<String> = orders
        .iter()
        .map(|(o, _)| order_key(&o.order.client_order_id))
        .collect();
    let groups = quantum_runtime::nodes::slot_groups(client, &keys);
    for group in &groups {
        let mut args = vec![owner.to_string(), ORDER_RECORD_TTL_SECS.to_string()];
        for &i in group {
            let fields = final_fields(orders[i].0, orders[i].1);
            args.push((fields.len() * 2).to_string());
            for (k, v) in fields {
                args.push(k.to_string());
                args.push(v);
            }
        }
        queue_eval(
            pipeline,
            FINALIZE_SCRIPT,
            group.iter().map(|&i| keys[i].clone()).collect(),
            args,
        )
        .await?;
    }
    Ok(groups)
}

/// Per order (`len`), whether the finalize scripts' replies (the first of `replies`, one per
/// group) say it was finalized.
fn take_finalized(groups: &[Vec<usize>], len: usize, replies: Vec<Value>) -> Result<Vec<bool>, Error> {
    let mut replies = replies.into_iter().map(Ok);
    let done = quantum_runtime::nodes::take_grouped(groups, len, &mut replies)?;
    Ok(done.iter().map(|d| d.as_i64() == Some(1)).collect())
}

/// Finalizes the records of `finished` and publishes them with `unpublished` (outboxes a
/// claim found finished but not out), as [`finalize`] then [`publish`] would, but with the
/// reservation swaps in the finalize's round trip: a swap needs the venue's outcome, not the
/// record's (the venue is idempotent by client order id, so whoever finalizes an order has
/// its fills), and is done once whoever publishes (its note). The orders another finalized
/// are swapped, not published: theirs to publish. Returns, per finished order, whether this
/// call finalized it, and per answer whether it was appended now.
///
/// # Errors
/// Redis failing at a step: the steps before it stay done, and a retry repeats none of them.
#[allow(clippy::too_many_arguments)]
pub async fn finalize_and_publish(
    client: &Client,
    owner: &str,
    streams: &Streams,
    finished: &[(&Outbox, &OrderOutcome)],
    unpublished: &[Outbox],
    answers: &[Once],
    released: &[(Symbol, String)],
    acked: &[String],
) -> Result<(Vec<bool>, Vec<bool>), Error> {
    let pipeline = client.pipeline();
    let groups = queue_finalize(&pipeline, client, owner, finished).await?;
    let swapped: Vec<&Outbox> = finished.iter().map(|(o, _)| *o).chain(unpublished).collect();
    let swaps = queue_swaps(&pipeline, client, &swapped, released).await?;
    let replies: Vec<Value> = if groups.is_empty() && !swaps {
        Vec::new()
    } else {
        pipeline.all().await?
    };
    let finalized = take_finalized(&groups, finished.len(), replies)?;
    fail::fail_point!("executor::after_swap", |_| std::process::abort());
    let to_publish: Vec<Outbox> = finished
        .iter()
        .zip(&finalized)
        .filter(|(_, here)| **here)
        .map(|((outbox, _), _)| (*outbox).clone())
        .chain(unpublished.iter().cloned())
        .collect();
    let answered = publish_swapped(client, streams, &to_publish, answers, acked).await?;
    Ok((finalized, answered))
}

/// The record's fields once `outbox`'s order finished with `outcome`.
fn final_fields(outbox: &Outbox, outcome: &OrderOutcome) -> Vec<(&'static str, String)> {
    let (qty, avg, fee) = outcome.totals();
    let (state, error) = match outcome {
        OrderOutcome::Filled { .. } => ("FILLED", ""),
        OrderOutcome::Rejected { reason } => ("REJECTED", reason.as_str()),
    };
    vec![
        ("state", state.to_string()),
        ("filled_qty", qty.to_string()),
        ("avg_price", avg.to_string()),
        ("fee", fee.to_string()),
        ("error", error.to_string()),
        ("finished_ts", now_ms().to_string()),
        ("outbox", serde_json::to_string(&outbox.payload).unwrap_or_default()),
        ("published", "0".to_string()),
    ]
}

/// Publishes finished orders' outboxes, in ordered steps of one slot each (see the module doc);
/// `answers` (results of plans answered without an order) are appended once with the orders'
/// results, `released` (plan ids by symbol) have their reservations released with the swaps,
/// and the plan entries `acked` are acknowledged (`PLAN_GROUP` on `streams.plans`) in the last
/// step, once every fill and result is out: on one server that step is a script in the
/// appends' round trip that checks they are. Returns, per answer, whether it was appended now
/// (false: a replay answered before).
///
/// # Errors
/// Redis failing at a step: the steps before it stay done, and a retry repeats none of them.
pub async fn publish(
    client: &Client,
    streams: &Streams,
    outboxes: &[Outbox],
    answers: &[Once],
    released: &[(Symbol, String)],
    acked: &[String],
) -> Result<Vec<bool>, Error> {
    // 1. Reservations: the plans' swapped for the fills', the not-executed plans' released.
    let swaps = client.pipeline();
    let outboxes_ref: Vec<&Outbox> = outboxes.iter().collect();
    if queue_swaps(&swaps, client, &outboxes_ref, released).await? {
        let _: Vec<Value> = swaps.all().await?;
    }
    fail::fail_point!("executor::after_swap", |_| std::process::abort());
    publish_swapped(client, streams, outboxes, answers, acked).await
}

/// Queues step 1 of [`publish`]: each order's reservation swap (one script per symbol slot
/// group) and one release per symbol of the plans not executed; whether it queued any.
async fn queue_swaps(
    pipeline: &fred::clients::Pipeline<Client>,
    client: &Client,
    outboxes: &[&Outbox],
    released: &[(Symbol, String)],
) -> Result<bool, Error> {
    let mut queued = false;
    let slots: Vec<String> = outboxes.iter().map(|o| reservation_key(&o.order.symbol)).collect();
    for group in quantum_runtime::nodes::slot_groups(client, &slots) {
        let mut keys = Vec::with_capacity(3 * group.len());
        let mut args = vec![PUBLICATION_TTL_SECS.to_string()];
        for &i in &group {
            let order = &outboxes[i].order;
            keys.extend([
                reservation_key(&order.symbol),
                reservation_totals_key(&order.symbol),
                reservation_swapped_key(&order.symbol, &order.plan_id),
            ]);
            args.push(order.plan_id.to_string());
            args.push(outboxes[i].payload.reserve.len().to_string());
            for (fill_id, value) in &outboxes[i].payload.reserve {
                args.extend([fill_id.clone(), value.clone()]);
            }
        }
        queue_eval(pipeline, &SWAP_SCRIPT, keys, args).await?;
        queued = true;
    }
    // One release per symbol, however many of its plans were not executed.
    let mut by_symbol: Vec<(&Symbol, Vec<String>)> = Vec::new();
    for (symbol, plan_id) in released {
        match by_symbol.iter_mut().find(|(s, _)| *s == symbol) {
            Some((_, plans)) => plans.push(plan_id.clone()),
            None => by_symbol.push((symbol, vec![plan_id.clone()])),
        }
    }
    for (symbol, plans) in by_symbol {
        quantum_runtime::inflight::queue_release(pipeline, symbol, plans).await?;
        queued = true;
    }
    Ok(queued)
}

/// Steps 2 and 3 of [`publish`], once the reservations are swapped.
async fn publish_swapped(
    client: &Client,
    streams: &Streams,
    outboxes: &[Outbox],
    answers: &[Once],
    acked: &[String],
) -> Result<Vec<bool>, Error> {
    // 2. The fills and the results, once each.
    let fills: Vec<Once> = outboxes
        .iter()
        .flat_map(|o| o.payload.fills.iter())
        .map(|(id, fields)| Once {
            id: id.clone(),
            fields: fields.clone(),
            ttl_secs: PUBLICATION_TTL_SECS,
        })
        .collect();
    let mut results: Vec<Once> = answers.to_vec();
    results.extend(outboxes.iter().map(|o| Once {
        id: o.order.plan_id.to_string(),
        fields: o.payload.result.clone(),
        ttl_secs: PUBLICATION_TTL_SECS,
    }));
    let appends = client.pipeline();
    let mut queued = 0;
    if !fills.is_empty() {
        queue_append_once(&appends, &streams.fills, &fills).await?;
        queued += 1;
    }
    let results_reply = (!results.is_empty()).then_some(queued);
    if !results.is_empty() {
        queue_append_once(&appends, &streams.results, &results).await?;
        queued += 1;
    }
    let records: Vec<String> = outboxes.iter().map(|o| order_key(&o.order.client_order_id)).collect();
    let coids: Vec<String> = outboxes.iter().map(|o| o.order.client_order_id.to_string()).collect();
    let any_done = !outboxes.is_empty() || !acked.is_empty();
    // 3. on one server, in the appends' round trip: a script that finds every fill and result
    //    out before it marks, unindexes and acknowledges anything.
    let done_with_appends = !client.is_clustered() && any_done;
    if done_with_appends {
        let mut keys: Vec<String> = fills.iter().map(|f| marker_key(&streams.fills, &f.id)).collect();
        keys.extend(results.iter().map(|r| marker_key(&streams.results, &r.id)));
        let mut args = vec![
            keys.len().to_string(),
            records.len().to_string(),
            PLAN_GROUP.to_string(),
        ];
        keys.extend(records.iter().cloned());
        keys.extend([OPEN_ORDERS_KEY.to_string(), streams.plans.clone()]);
        args.push(coids.len().to_string());
        args.extend(coids.iter().cloned());
        args.extend(acked.iter().cloned());
        queue_eval(&appends, PUBLISHED_SCRIPT, keys, args).await?;
        queued += 1;
    }
    let mut answered = Vec::new();
    if queued > 0 {
        let replies: Vec<Value> = appends.all().await?;
        if let Some(reply) = results_reply.and_then(|i| replies.get(i)) {
            answered = quantum_runtime::append_once::appended(reply);
            answered.truncate(answers.len());
        }
        if done_with_appends && replies.last().and_then(Value::as_i64) != Some(1) {
            return Err(Error::new(
                ErrorKind::Unknown,
                "a fill or result of the publication is not out: nothing marked or acknowledged",
            ));
        }
    }
    if done_with_appends || !any_done {
        return Ok(answered);
    }
    fail::fail_point!("executor::after_append", |_| std::process::abort());
    // 3. on a cluster, done: the records say so and leave the index, and the plans are
    //    acknowledged, in one round trip. Everything the plans caused is out by now, so the XACK
    //    may land even where a mark fails: that record only keeps a stale `published=0` until it
    //    expires.
    let done = client.pipeline();
    for group in quantum_runtime::nodes::slot_groups(client, &records) {
        let keys: Vec<String> = group.iter().map(|&i| records[i].clone()).collect();
        let args = vec!["0".to_string(), keys.len().to_string(), String::new()];
        queue_eval(&done, PUBLISHED_SCRIPT, keys, args).await?;
    }
    if !coids.is_empty() {
        done.zrem::<(), _, _>(OPEN_ORDERS_KEY, coids).await?;
    }
    quantum_runtime::consumer::queue_ack(&done, &streams.plans, PLAN_GROUP, acked).await?;
    let _: Vec<Value> = done.all().await?;
    Ok(answered)
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

/// What an open-order index entry points at.
#[derive(Debug)]
pub enum OpenOrder {
    /// NEW: ask the venue and finalize it.
    New(OrderRef),
    /// Finished with its outbox not yet published.
    Unpublished(Outbox),
    /// Gone or done: only its index entry was left.
    Stale,
}

/// An open order's record, or `Err` (with why) when it cannot be read; `Err` from Redis when
/// Redis fails.
pub async fn read_open_order(client: &Client, coid: &str) -> Result<Result<OpenOrder, String>, Error> {
    let pairs = hash_pairs(client.hgetall::<Value, _>(order_key(&OrderId::new(coid))).await?);
    Ok(match (pairs.field("state"), pairs.field("published")) {
        (Some("NEW"), _) => OrderRef::from_record(pairs).map(OpenOrder::New),
        (Some(_), Some("0")) => Outbox::from_record(pairs).map(OpenOrder::Unpublished),
        _ => Ok(OpenOrder::Stale),
    })
}

/// The outbox of a record the claim found unpublished (`Err` with why when unreadable).
pub async fn read_outbox(client: &Client, coid: &OrderId) -> Result<Result<Outbox, String>, Error> {
    let pairs = hash_pairs(client.hgetall::<Value, _>(order_key(coid)).await?);
    Ok(Outbox::from_record(pairs))
}

/// Removes a stale index entry.
pub async fn unindex(client: &Client, coid: &str) -> Result<(), Error> {
    client.zrem(OPEN_ORDERS_KEY, coid).await
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn an_outbox_reads_back_from_its_record() {
        let payload = OutboxPayload {
            fills: vec![("qib-00000000000000ab-1".into(), vec![("qty".into(), "0.5".into())])],
            reserve: vec![("qib-00000000000000ab-1".into(), "side=BUY qty=0.5".into())],
            result: vec![("executed".into(), "true".into())],
        };
        let json = serde_json::to_string(&payload).unwrap();
        let record = |outbox: &str| {
            [
                ("state", "FILLED"),
                ("plan_id", "00000000000000ab"),
                ("symbol", "BTCUSDT"),
                ("side", "BUY"),
                ("qty", "0.5"),
                ("published", "0"),
                ("outbox", outbox),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
        };
        let outbox = Outbox::from_record(record(&json)).unwrap();
        assert_eq!(outbox.payload, payload);
        assert_eq!(outbox.order.symbol.as_str(), "BTCUSDT");
        assert!(Outbox::from_record(record("{not json"))
            .unwrap_err()
            .starts_with("outbox: "));
    }
}
