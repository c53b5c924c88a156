//! A batch's commit, in ordered steps of one slot each, so that it runs on a Redis Cluster as
//! on one server; every step is idempotent and the XACK comes last, so a crash anywhere
//! redelivers the entry and the steps already done are found done. Each step is one round
//! trip for the whole batch:
//!
//! 1. **reserve**: per symbol, one script in the symbol's slot `L(<SYM>)` takes each EXECUTE
//!    plan's reservation, in batch order, while the symbol's reservation token
//!    (`<count>:<plan id>` of its last reservation) is the one its gate decided on;
//! 2. **bump**: the BUYs reserved move the all-symbol BUY token, in order, from the one their
//!    exposure gate read;
//! 3. **claim**: each entry's replay marker is set (`SET NX GET`) to its outcome record and,
//!    when there is an outcome to publish, the outcome itself (`quantum_model::outcome::Marker`);
//! 4. **publish**: the claimed outcomes are appended once each (marker
//!    `{<stream>}:once:<entry id>`) to `apply.plan` or the intent DLQ;
//! 5. **done**: each published marker is rewritten to its record alone (`XX KEEPTTL`) and the
//!    entries are acknowledged, in one round trip (a marker left `publishing` only makes a replay
//!    publish its outcome again, which the append finds appended).
//!
//! Invariants the steps keep:
//! - a reservation is taken only on the symbol state its gate decided on: a second bridge that
//!   reserved meanwhile makes the step refuse that reservation and the batch's later ones for
//!   the symbol (each expects its predecessor's token), and they are decided again, so two
//!   bridges cannot both sell one position;
//! - reserve, then bump: a bridge that reads the BUY token a BUY wrote reads that BUY's
//!   reservation too, and a BUY whose bump is refused (another bridge's BUY came between) has
//!   its reservation released and is decided again, so two bridges cannot together pass the
//!   exposure limit;
//! - one decision per entry: the first claim wins. A bridge that finds a marker finishes that
//!   decision (publishes its outcome, once) rather than its own, and releases a reservation of
//!   its own that differs, so one intent is one plan even when two bridges sized it;
//! - a crash after the reservation and before the claim leaves a reservation without a plan,
//!   noted in the intent's set: the publication of the intent's plan releases it (or it expires;
//!   never an overshoot); after the claim, the redelivered entry publishes the marker's outcome;
//!   after the publication, it finds it appended already;
//! - a bridge gives back only the reservation value it wrote: another bridge that decided the
//!   same intent into the same plan id keeps its own;
//! - the scripts check key types before writing (a key of the wrong type fails its step with
//!   nothing written) and are flagged `#!lua` without `allow-oom`, so under `maxmemory` Redis
//!   refuses one before it starts rather than halfway;
//! - a step fails for its own entries only: a symbol's reservation script for that symbol's
//!   entries, a marker for its entry, a stream for the entries going to it. They stay pending;
//!   the others commit.

use std::collections::HashMap;

use fred::prelude::*;
use fred::types::{Expiration, SetOptions, Value};

use quantum_model::contract::{
    ledger_key, reservation_entry_key, reservation_key, reservation_totals_key, reservation_version_key, seen_key,
    BUYS_VERSION_KEY, INTENT_DLQ_STREAM, INTENT_GROUP, INTENT_STREAM, PLAN_STREAM,
};
use quantum_model::outcome::{Marker, OutcomeRecord, PendingOutcome};
use quantum_model::shards::StreamShards;
use quantum_model::types::Symbol;
use quantum_runtime::append_once::{queue_append_once, Once};
use quantum_runtime::cas::queue_eval;
use quantum_runtime::failure::StageError;
use quantum_runtime::replication::ReplicaWait;

/// Each symbol's ledger fields, reservation totals and token, read at one instant; and its
/// reservations themselves when asked (its ARGV is 'walk') or when the totals do not count every
/// one (values written before the totals existed, an operator's HDEL, a corrupt count). One
/// script for the symbols of one slot group: on one server, every symbol the batch reads, where
/// a script per symbol cost Redis a script's fixed cost per symbol (11 per batch on the demo
/// allowlist) and the bridge a quarter of a millisecond per batch.
/// KEYS: per symbol its ledger, reservations, token and totals. ARGV: per symbol 'walk' or ''.
const READ_POSITIONS_SCRIPT: &str = r#"#!lua flags=no-writes
local positions = {}
for s = 1, #ARGV do
  local k = 4 * s - 3
  local totals = redis.call('HMGET', KEYS[k + 3], 'sell_qty_whole', 'sell_qty_frac', 'buy_notional_whole',
    'buy_notional_frac', 'count')
  local walk = ARGV[s] == 'walk' or redis.call('HLEN', KEYS[k + 1]) ~= tonumber(totals[5] or '0')
  positions[s] = {redis.call('HMGET', KEYS[k], 'position_amt', 'notional_usd'), totals,
    walk and redis.call('HGETALL', KEYS[k + 1]) or false, redis.call('GET', KEYS[k + 2]) or ''}
end
return positions
"#;

/// Queues the reads of `symbols`' ledgers (`position_amt`, `notional_usd`), reservation totals,
/// reservations (when its flag says walk, or when the totals miss some) and reservation tokens,
/// one script per slot group of their ledgers; returns the groups, whose replies
/// `quantum_runtime::nodes::take_grouped` puts back in order: per symbol
/// `[[amt, notional], [totals...], [field, value, ...] or nil, token]`.
///
/// # Errors
/// A command could not be queued.
pub async fn queue_position_reads(
    pipeline: &fred::clients::Pipeline<Client>,
    client: &Client,
    symbols: &[(&Symbol, bool)],
) -> Result<Vec<Vec<usize>>, Error> {
    let ledgers: Vec<String> = symbols.iter().map(|(symbol, _)| ledger_key(symbol)).collect();
    let groups = quantum_runtime::nodes::slot_groups(client, &ledgers);
    for group in &groups {
        let mut keys = Vec::with_capacity(4 * group.len());
        let mut args = Vec::with_capacity(group.len());
        for &i in group {
            let (symbol, walk) = symbols[i];
            keys.extend([
                ledgers[i].clone(),
                reservation_key(symbol),
                reservation_version_key(symbol),
                reservation_totals_key(symbol),
            ]);
            args.push(if walk { "walk" } else { "" }.to_string());
        }
        // EVAL_RO: the bridge may only read ledgers.
        quantum_runtime::cas::queue_eval_ro(pipeline, READ_POSITIONS_SCRIPT, keys, args).await?;
    }
    Ok(groups)
}

static RESERVE_SCRIPT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| quantum_runtime::inflight::with_totals("#!lua", RESERVE_BODY));

const RESERVE_BODY: &str = r#"
-- KEYS: the symbol's reservations, its reservation token, its totals, then per reservation the
--       set of plan ids reserved for its intent.
-- ARGV: the sets' TTL (ms), then per reservation: field, value, expected token, new token.
-- Returns how many it took.
local function wrong(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    return 'WRONGTYPE ' .. key .. ' holds a ' .. t .. ', not a ' .. want .. '; nothing written'
  end
end
local bad = wrong(KEYS[1], 'hash') or wrong(KEYS[2], 'string') or inflight_totals_bad(KEYS[3])
for k = 4, #KEYS do bad = bad or wrong(KEYS[k], 'set') end
if bad then return redis.error_reply(bad) end
-- The token is read once and written once, the last reservation's: nothing sees it in between
-- (a script is atomic), and each write is a command Redis propagates to the AOF and replicas.
local token = redis.call('GET', KEYS[2]) or ''
local taken = 0
local ok, err = pcall(function()
  for i = 2, #ARGV, 4 do
    if token ~= ARGV[i + 2] then return end
    inflight_reserve(KEYS[1], KEYS[3], ARGV[i], ARGV[i + 1])
    taken = taken + 1
    token = ARGV[i + 3]
    redis.call('SADD', KEYS[3 + taken], ARGV[i])
    redis.call('PEXPIRE', KEYS[3 + taken], ARGV[1])
  end
end)
-- Written even when a command failed after a reservation was taken: a reservation is never
-- left under an older token, which another bridge's gate could have decided on.
if taken > 0 then redis.call('SET', KEYS[2], token) end
if not ok then error(err) end
return taken
"#;

static SETTLE_SCRIPT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| quantum_runtime::inflight::with_totals("#!lua", SETTLE_BODY));

const SETTLE_BODY: &str = r#"
-- KEYS: the symbol's reservations, its totals, then per published intent the set of plan ids
--       reserved for it. ARGV: per intent, the plan id published.
-- Releases every other plan id reserved for the intent, and drops the set.
local bad = inflight_totals_bad(KEYS[2])
for k = 3, #KEYS do
  local t = redis.call('TYPE', KEYS[k])['ok']
  if t ~= 'none' and t ~= 'set' then bad = bad or ('WRONGTYPE ' .. KEYS[k] .. ' holds a ' .. t .. ', not a set') end
end
if bad then return redis.error_reply(bad) end
for k = 3, #KEYS do
  for _, field in ipairs(redis.call('SMEMBERS', KEYS[k])) do
    if field ~= ARGV[k - 2] then inflight_release(KEYS[1], KEYS[2], field) end
  end
  redis.call('DEL', KEYS[k])
end
return 1
"#;

/// KEYS: the BUY token. ARGV: the token the batch's exposure gates read, and the one its last
/// BUY reserved writes. Returns 1 when it moved, 0 when another bridge's BUY moved it first.
const BUMP_SCRIPT: &str = r#"#!lua
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'none' and t ~= 'string' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' holds a ' .. t .. ', not a string; nothing written')
end
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"#;

/// A plan's reservation.
pub struct ReservationCommit {
    pub symbol: Symbol,
    /// The plan id.
    pub field: String,
    pub value: String,
    /// The symbol's reservation token the gate decided on, and the one this commit writes.
    pub token: (String, String),
    /// For a BUY, the BUY token (all symbols) its exposure gate decided on, and the new one.
    pub buys_token: Option<(String, String)>,
}

/// What to commit for one entry.
pub enum EntryCommit {
    /// Processed before: acknowledged, its record counting the replay (`None`: left as it is).
    Replay { replay_record: Option<String> },
    /// Decided on this batch's view: its record, the outcome it publishes (none for a skip)
    /// and the reservation it takes.
    Decided {
        record: OutcomeRecord,
        outcome: Option<PendingOutcome>,
        reservation: Option<ReservationCommit>,
        /// The symbol whose reservations an earlier attempt at this intent left: released once
        /// this decision is claimed, whatever it is.
        settle: Option<Symbol>,
    },
    /// Decided before (a crash, a paused bridge) and not known to be published: its marker's
    /// outcome is published now.
    Finish {
        record: OutcomeRecord,
        outcome: PendingOutcome,
    },
    /// Its marker cannot be read back: the entry fails every time (poison).
    Unreadable(String),
}

/// What became of one entry's commit.
#[derive(Debug)]
pub enum Committed {
    /// Committed: its outcome published (its marker's, for a `Finish`) and acknowledged.
    Done,
    /// Acknowledged as a replay.
    Replayed,
    /// Another bridge decided it first: that decision was published (or found published) and
    /// the entry acknowledged; nothing of this bridge's decision was.
    DecidedElsewhere,
    /// Another bridge reserved for the symbol (or any BUY) meanwhile: nothing of this entry
    /// stayed written; it is decided again on fresh state.
    Again,
    /// A step failed: the entry stays pending.
    Failed(StageError),
}

/// One entry's way through the steps.
struct Progress<'a> {
    id: &'a str,
    commit: EntryCommit,
    /// Set once the entry's fate is known.
    fate: Option<Committed>,
    /// The reservation this bridge took for it and does not need after all.
    release: bool,
    /// The outcome to publish: its record (without `state`), the outcome, and whether it is
    /// this bridge's own decision.
    publish: Option<(OutcomeRecord, PendingOutcome, bool)>,
    /// Acknowledged at the end, with this fate.
    ack: Option<Committed>,
}

impl Progress<'_> {
    fn reservation(&self) -> Option<&ReservationCommit> {
        match &self.commit {
            EntryCommit::Decided { reservation, .. } => reservation.as_ref(),
            _ => None,
        }
    }

    fn fail(&mut self, error: StageError) {
        self.release |= self.reserved();
        self.fate = Some(Committed::Failed(error));
    }

    /// Whether this bridge's reservation was taken (it holds one and its steps got past bump).
    fn reserved(&self) -> bool {
        self.reservation().is_some() && !matches!(self.fate, Some(Committed::Again))
    }
}

/// How the commit runs.
pub struct CommitSettings<'a> {
    /// How long a replay marker (and an append-once marker) lives.
    pub marker_ttl_secs: u64,
    /// How long the set of plan ids reserved for an intent lives when its commit never ends.
    pub reservation_ttl_ms: u64,
    /// With waiting on, the claims wait for replicas before anything is published: a failover
    /// that lost a claim whose outcome was already out would let the intent be decided twice.
    pub replica_wait: &'a ReplicaWait,
    /// Which streams a recorded outcome may name: the shards of apply.plan, or the DLQ.
    pub shards: StreamShards,
}

/// Commits `entries` (each with its entry id) in the steps above; returns each one's fate, in
/// order.
pub async fn commit_batch(
    client: &Client,
    settings: &CommitSettings<'_>,
    entries: Vec<(&str, EntryCommit)>,
) -> Vec<Committed> {
    let mut progress: Vec<Progress<'_>> = entries
        .into_iter()
        .map(|(id, commit)| Progress {
            id,
            commit,
            fate: None,
            release: false,
            publish: None,
            ack: None,
        })
        .collect();
    for p in &mut progress {
        match &p.commit {
            EntryCommit::Unreadable(e) => p.fate = Some(Committed::Failed(StageError::Poison(e.clone()))),
            EntryCommit::Finish { record, outcome } => p.publish = Some((record.clone(), outcome.clone(), false)),
            _ => {}
        }
    }
    let steps = async {
        reserve(client, settings.reservation_ttl_ms, &mut progress).await?;
        bump(client, &mut progress).await?;
        fail::fail_point!("bridge::after_reserve", |_| std::process::abort());
        claim(client, settings.marker_ttl_secs, &mut progress).await?;
        if progress.iter().any(|p| p.publish.is_some()) {
            settings
                .replica_wait
                .after_write(client, "the intents' replay markers")
                .await?;
        }
        fail::fail_point!("bridge::after_claim", |_| std::process::abort());
        publish(client, settings, &mut progress).await?;
        fail::fail_point!("bridge::after_publish", |_| std::process::abort());
        done(client, &mut progress).await
    };
    if let Err(e) = steps.await {
        // The connection failed under a step: what the unsettled entries committed is unknown;
        // their markers tell on the retry.
        let error = StageError::from(e);
        for p in progress.iter_mut().filter(|p| p.fate.is_none()) {
            p.fate = Some(Committed::Failed(error.clone()));
        }
    }
    progress
        .into_iter()
        .map(|p| {
            p.fate
                .unwrap_or(Committed::Failed(StageError::Retryable("commit step lost".into())))
        })
        .collect()
}

/// Entries still on their way.
fn open<'p, 'a>(progress: &'p mut [Progress<'a>]) -> impl Iterator<Item = (usize, &'p mut Progress<'a>)> {
    progress.iter_mut().enumerate().filter(|(_, p)| p.fate.is_none())
}

/// Step 1: each symbol's reservations, one script per symbol; each plan id is also noted in the
/// set of its intent, which lives `ttl_ms` unless the publication drops it first.
async fn reserve(client: &Client, ttl_ms: u64, progress: &mut [Progress<'_>]) -> Result<(), Error> {
    let mut by_symbol: Vec<(Symbol, Vec<usize>)> = Vec::new();
    for (i, p) in open(progress) {
        if let Some(r) = p.reservation() {
            match by_symbol.iter_mut().find(|(s, _)| *s == r.symbol) {
                Some((_, group)) => group.push(i),
                None => by_symbol.push((r.symbol.clone(), vec![i])),
            }
        }
    }
    if by_symbol.is_empty() {
        return Ok(());
    }
    let pipeline = client.pipeline();
    for (symbol, group) in &by_symbol {
        let mut args = Vec::with_capacity(1 + 4 * group.len());
        args.push(ttl_ms.to_string());
        let mut keys = vec![
            reservation_key(symbol),
            reservation_version_key(symbol),
            reservation_totals_key(symbol),
        ];
        for &i in group {
            if let Some(r) = progress[i].reservation() {
                args.extend([r.field.clone(), r.value.clone(), r.token.0.clone(), r.token.1.clone()]);
                keys.push(reservation_entry_key(symbol, progress[i].id));
            }
        }
        queue_eval(&pipeline, &RESERVE_SCRIPT, keys, args).await?;
    }
    let replies = pipeline.try_all::<Value>().await;
    for ((_, group), reply) in by_symbol.iter().zip(replies) {
        match reply {
            Ok(taken) => {
                let taken = usize::try_from(taken.as_i64().unwrap_or(0)).unwrap_or(0);
                for &i in group.iter().skip(taken) {
                    progress[i].fate = Some(Committed::Again);
                }
            }
            Err(e) => {
                let error = StageError::from(e);
                for &i in group {
                    progress[i].fate = Some(Committed::Failed(error.clone()));
                }
            }
        }
    }
    Ok(())
}

/// Step 2: the BUY token moved once for the batch, from the token its exposure gates read (the
/// first BUY's) to the one its last BUY still reserved writes; when another bridge moved it
/// first, every BUY reserved gives its reservation back and is decided again. A BUY refused at
/// step 1 does not hold the others back: each was decided counting it, which only errs safe.
async fn bump(client: &Client, progress: &mut [Progress<'_>]) -> Result<(), Error> {
    let read_token = progress
        .iter()
        .find_map(|p| p.reservation().and_then(|r| r.buys_token.as_ref()))
        .map(|(read, _)| read.clone());
    let buys: Vec<usize> = open(progress)
        .filter(|(_, p)| p.reservation().is_some_and(|r| r.buys_token.is_some()))
        .map(|(i, _)| i)
        .collect();
    let (Some(read_token), Some(&last)) = (read_token, buys.last()) else {
        return Ok(());
    };
    let written = progress[last]
        .reservation()
        .and_then(|r| r.buys_token.as_ref())
        .map(|(_, new)| new.clone())
        .unwrap_or_default();
    let pipeline = client.pipeline();
    queue_eval(
        &pipeline,
        BUMP_SCRIPT,
        vec![BUYS_VERSION_KEY.to_string()],
        vec![read_token, written],
    )
    .await?;
    let reply = pipeline.try_all::<Value>().await.pop();
    let refused = match reply {
        Some(Ok(moved)) if moved.as_i64() == Some(1) => return Ok(()),
        Some(Ok(_)) => Committed::Again,
        Some(Err(e)) => Committed::Failed(StageError::from(e)),
        None => Committed::Failed(StageError::Retryable("no reply to the BUY token step".into())),
    };
    for &i in &buys {
        let p = &mut progress[i];
        p.release = true;
        p.fate = Some(match &refused {
            Committed::Failed(e) => Committed::Failed(e.clone()),
            _ => Committed::Again,
        });
    }
    Ok(())
}

/// Step 3: each entry's marker claimed (a replay's record updated); reservations refused at
/// the bump given back.
async fn claim(client: &Client, marker_ttl_secs: u64, progress: &mut [Progress<'_>]) -> Result<(), Error> {
    let pipeline = client.pipeline();
    let mut claims = Vec::new();
    for (i, p) in open(progress) {
        let key = seen_key(p.id);
        match &p.commit {
            EntryCommit::Replay { replay_record } => {
                if let Some(record) = replay_record {
                    let _: () = pipeline
                        .set(
                            key,
                            record.as_str(),
                            Some(Expiration::KEEPTTL),
                            Some(SetOptions::XX),
                            false,
                        )
                        .await?;
                    claims.push((i, false));
                }
            }
            EntryCommit::Decided { record, outcome, .. } => {
                let value = match outcome {
                    Some(outcome) => Marker::publishing(record, outcome),
                    None => record.to_string(),
                };
                let ex = Some(Expiration::EX(marker_ttl_secs as i64));
                let _: () = pipeline.set(key, value, ex, Some(SetOptions::NX), true).await?;
                claims.push((i, true));
            }
            EntryCommit::Finish { .. } | EntryCommit::Unreadable(_) => {}
        }
    }
    let releases = queue_releases(&pipeline, progress).await?;
    if claims.is_empty() && !releases {
        settle_replays(progress);
        return Ok(());
    }
    let mut replies = pipeline.try_all::<Value>().await.into_iter();
    for ((i, decided), reply) in claims.into_iter().zip(replies.by_ref()) {
        if decided {
            on_claim(&mut progress[i], reply);
        } else if let Err(e) = reply {
            tracing::warn!(
                "Counting the replay in {} failed ({e}); the intent is acknowledged all the same",
                seen_key(progress[i].id)
            );
        }
    }
    warn_failed_releases(replies);
    settle_replays(progress);
    Ok(())
}

/// Replays are acknowledged whatever their record's update made of it.
fn settle_replays(progress: &mut [Progress<'_>]) {
    for (_, p) in open(progress) {
        if matches!(p.commit, EntryCommit::Replay { .. }) {
            p.ack = Some(Committed::Replayed);
        }
    }
}

/// What a claim's reply (`SET NX GET`: nil when claimed, else the marker found) makes of its
/// entry.
fn on_claim(p: &mut Progress<'_>, reply: Result<Value, Error>) {
    let EntryCommit::Decided { record, outcome, .. } = &p.commit else {
        return;
    };
    let found = match reply {
        // Refused by Redis (a marker of another type): the claim was not made. Lost on the way
        // (a timeout, a dropped connection): it may have been, and its plan may be published by
        // the redelivery, so the reservation stays (released by that publication or expiry).
        Err(e) => {
            let error = StageError::from(e);
            if matches!(error, StageError::Retryable(_)) {
                p.fate = Some(Committed::Failed(error));
            } else {
                p.fail(error);
            }
            return;
        }
        Ok(Value::Null) => {
            match outcome {
                Some(outcome) => p.publish = Some((record.clone(), outcome.clone(), true)),
                None => p.ack = Some(Committed::Done),
            }
            return;
        }
        Ok(found) => found.as_string().unwrap_or_default(),
    };
    // Another bridge (or this one, before a crash) decided the entry first: its decision stands.
    let own_plan = record.get("plan_id");
    match Marker::parse(&found) {
        Ok(Marker::Done(first)) => {
            p.release = p.reserved() && first.get("plan_id") != own_plan;
            p.ack = Some(Committed::DecidedElsewhere);
        }
        Ok(Marker::Publishing(first, outcome)) => {
            p.release = p.reserved() && first.get("plan_id") != own_plan;
            p.publish = Some((first, outcome, false));
        }
        Err(e) => p.fail(StageError::Poison(format!("{e} in {}", seen_key(p.id)))),
    }
}

/// Queues the release of every reservation marked for it, if it still holds what this bridge
/// wrote (one script per symbol); returns whether it queued any.
async fn queue_releases(
    pipeline: &fred::clients::Pipeline<Client>,
    progress: &mut [Progress<'_>],
) -> Result<bool, Error> {
    // Only the value this bridge wrote: another bridge that decided the same intent into the
    // same plan id wrote its own (its time differs), and keeps it.
    let mut by_symbol: HashMap<Symbol, Vec<(String, String)>> = HashMap::new();
    for p in progress.iter_mut().filter(|p| p.release) {
        p.release = false;
        if let Some(r) = p.reservation() {
            by_symbol
                .entry(r.symbol.clone())
                .or_default()
                .push((r.field.clone(), r.value.clone()));
        }
    }
    let any = !by_symbol.is_empty();
    for (symbol, pairs) in by_symbol {
        quantum_runtime::inflight::queue_release_if_unchanged(pipeline, &symbol, pairs).await?;
    }
    Ok(any)
}

/// Step 4: the claimed outcomes, appended once each (one script per stream); reservations
/// another bridge's decision made needless given back.
async fn publish(client: &Client, settings: &CommitSettings<'_>, progress: &mut [Progress<'_>]) -> Result<(), Error> {
    let marker_ttl_secs = settings.marker_ttl_secs;
    let pipeline = client.pipeline();
    let mut by_stream: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, p) in open(progress) {
        let Some((_, outcome, _)) = &p.publish else { continue };
        let stream = outcome.stream.as_str();
        if stream != INTENT_DLQ_STREAM && settings.shards.index_of(PLAN_STREAM, stream).is_none() {
            let e = format!(
                "replay marker {} names stream {stream:?}, not a shard of the plan stream (STREAM_SHARDS={}) or the DLQ",
                seen_key(p.id),
                settings.shards.count()
            );
            p.fail(StageError::Poison(e));
            continue;
        }
        match by_stream.iter_mut().find(|(s, _)| s == stream) {
            Some((_, group)) => group.push(i),
            None => by_stream.push((stream.to_string(), vec![i])),
        }
    }
    for (stream, group) in &by_stream {
        let entries: Vec<Once> = group
            .iter()
            .filter_map(|&i| {
                let p = &progress[i];
                p.publish.as_ref().map(|(_, outcome, _)| Once {
                    id: p.id.to_string(),
                    fields: outcome.fields.clone(),
                    ttl_secs: marker_ttl_secs,
                })
            })
            .collect();
        queue_append_once(&pipeline, stream, &entries).await?;
    }
    let settles = queue_settles(&pipeline, progress).await?;
    let releases = queue_releases(&pipeline, progress).await? || settles;
    if by_stream.is_empty() && !releases {
        return Ok(());
    }
    let mut replies = pipeline.try_all::<Value>().await.into_iter();
    for ((_, group), reply) in by_stream.iter().zip(replies.by_ref()) {
        match reply {
            Ok(_) => {
                for &i in group {
                    let own = progress[i].publish.as_ref().is_some_and(|(_, _, own)| *own);
                    let finish = matches!(progress[i].commit, EntryCommit::Finish { .. });
                    progress[i].ack = Some(if own || finish {
                        Committed::Done
                    } else {
                        Committed::DecidedElsewhere
                    });
                }
            }
            Err(e) => {
                let error = StageError::from(e);
                for &i in group {
                    progress[i].fate = Some(Committed::Failed(error.clone()));
                }
            }
        }
    }
    warn_failed_releases(replies);
    Ok(())
}

/// Queues, for each EXECUTE plan about to be published, the release of every other plan id
/// reserved for its intent (a reservation a crash left before a different decision, another
/// bridge's) and the drop of the intent's set: one script per symbol. Returns whether it
/// queued any.
async fn queue_settles(pipeline: &fred::clients::Pipeline<Client>, progress: &[Progress<'_>]) -> Result<bool, Error> {
    let mut by_symbol: Vec<(Symbol, Vec<String>, Vec<String>)> = Vec::new();
    for p in progress.iter().filter(|p| p.fate.is_none()) {
        let published = p.publish.as_ref().and_then(|(record, _, _)| {
            let (Some(plan_id), Some(symbol), "published") =
                (record.get("plan_id"), record.get("symbol"), record.kind())
            else {
                return None;
            };
            Some((Symbol::parse(symbol).ok()?, plan_id.to_string()))
        });
        // An intent claimed into no EXECUTE plan keeps none of the earlier attempts' plans.
        let claimed = p.publish.is_some() || matches!(p.ack, Some(Committed::Done));
        let earlier = match &p.commit {
            EntryCommit::Decided {
                settle: Some(symbol), ..
            } if claimed => Some((symbol.clone(), String::new())),
            _ => None,
        };
        let Some((symbol, plan_id)) = published.or(earlier) else {
            continue;
        };
        let key = reservation_entry_key(&symbol, p.id);
        match by_symbol.iter_mut().find(|(s, _, _)| *s == symbol) {
            Some((_, keys, plans)) => {
                keys.push(key);
                plans.push(plan_id);
            }
            None => by_symbol.push((symbol, vec![key], vec![plan_id])),
        }
    }
    let any = !by_symbol.is_empty();
    for (symbol, entry_keys, plans) in by_symbol {
        let mut keys = vec![reservation_key(&symbol), reservation_totals_key(&symbol)];
        keys.extend(entry_keys);
        queue_eval(pipeline, &SETTLE_SCRIPT, keys, plans).await?;
    }
    Ok(any)
}

/// Logs a release that failed: its reservation is counted until it expires (never an overshoot).
fn warn_failed_releases(replies: impl Iterator<Item = Result<Value, Error>>) {
    for e in replies.filter_map(Result::err) {
        tracing::warn!("Releasing an unused reservation failed ({e}); it is counted until it expires");
    }
}

/// Step 5: the published markers set to their records, then every settled entry acknowledged.
async fn done(client: &Client, progress: &mut [Progress<'_>]) -> Result<(), Error> {
    let pipeline = client.pipeline();
    let mut ids = Vec::new();
    let mut marked = Vec::new();
    for (_, p) in open(progress) {
        if p.ack.is_none() {
            continue;
        }
        if let Some((record, _, _)) = &p.publish {
            marked.push(p.id);
            let _: () = pipeline
                .set(
                    seen_key(p.id),
                    record.to_string(),
                    Some(Expiration::KEEPTTL),
                    Some(SetOptions::XX),
                    false,
                )
                .await?;
        }
        ids.push(p.id.to_string());
    }
    if ids.is_empty() {
        return Ok(());
    }
    let _: () = pipeline.xack(INTENT_STREAM, INTENT_GROUP, ids).await?;
    let mut replies = pipeline.try_all::<Value>().await;
    let acked = replies.pop();
    for (id, reply) in marked.iter().zip(replies) {
        if let Err(e) = reply {
            // Harmless to what was published: a replay finds the outcome appended already.
            tracing::warn!(
                "Marking intent {id} done failed ({e}); {} says publishing until it expires",
                seen_key(id)
            );
        }
    }
    match acked {
        Some(Ok(_)) => {
            for (_, p) in open(progress) {
                if let Some(fate) = p.ack.take() {
                    p.fate = Some(fate);
                }
            }
        }
        Some(Err(e)) => {
            let error = StageError::from(e);
            for (_, p) in open(progress) {
                if p.ack.take().is_some() {
                    p.fate = Some(Committed::Failed(error.clone()));
                }
            }
        }
        None => {}
    }
    Ok(())
}
