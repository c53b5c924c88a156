//! Optimistic, atomic multi-key writes: one Lua script checks the `version` field of a hash
//! (and optionally that a guard key does not exist yet) and only then applies every write.
//! The ledger commits fills with it (update + dedup record in one step; on one server with the
//! fills' `XACK`) and the paper venue commits orders with it (position + order records in one
//! step).

use fred::clients::Pipeline;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Value};

static SCRIPT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| crate::inflight::with_totals("#!lua", BODY));

/// After `inflight::TOTALS_LUA`: an `R` op releases reservations from its hash, with the totals
/// under the next key (whose own op is `-`).
const BODY: &str = r#"
local current = redis.call('HGET', KEYS[1], 'version') or '0'
if current ~= ARGV[1] then return 0 end
local guards = tonumber(ARGV[2])
for j = 3, 2 + guards do
  if redis.call('EXISTS', KEYS[tonumber(ARGV[j])]) == 1 then return -1 end
end
local start = 3 + guards
local commands = { H = 'HSET', D = 'HDEL', Z = 'ZADD' }
local types = { H = 'hash', D = 'hash', Z = 'zset', R = 'hash', A = 'stream' }
-- Every key's type before the first write: a step that fails writes nothing.
local i = start
for k = 1, #KEYS do
  local want = types[ARGV[i]]
  local t = redis.call('TYPE', KEYS[k])['ok']
  if want and t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k] .. ' holds a ' .. t .. ', not a ' .. want .. '; nothing written')
  end
  if ARGV[i] == 'R' then
    local bad = inflight_totals_bad(KEYS[k + 1])
    if bad then return redis.error_reply(bad) end
  end
  i = i + 2 + tonumber(ARGV[i + 1])
end
i = start
for k = 1, #KEYS do
  local kind, n = ARGV[i], tonumber(ARGV[i + 1])
  if kind == 'R' then
    for j = i + 2, i + 1 + n do inflight_release(KEYS[k], KEYS[k + 1], ARGV[j]) end
  elseif kind == 'A' then
    -- ARGV[i + 2] is the group, the entry ids follow.
    for from = i + 3, i + 1 + n, 1000 do
      redis.call('XACK', KEYS[k], ARGV[i + 2], unpack(ARGV, from, math.min(from + 999, i + 1 + n)))
    end
  elseif commands[kind] then
    -- In chunks of 1000 (an even count keeps pairs together): unpack fails past ~8000 values.
    for from = i + 2, i + 1 + n, 1000 do
      redis.call(commands[kind], KEYS[k], unpack(ARGV, from, math.min(from + 999, i + 1 + n)))
    end
  end
  i = i + 2 + n
end
return 1
"#;

/// What to write to one key.
#[derive(Debug, Clone)]
pub enum CasOp {
    /// HSET these field/value pairs.
    Hash(Vec<(String, String)>),
    /// ZADD these (score, member) pairs.
    SortedSetAdd(Vec<(u64, String)>),
    /// HDEL these fields.
    HashDelete(Vec<String>),
    /// Release these in-flight reservations from the hash, and from its totals under
    /// `totals` (`inflight`).
    ReleaseReservations { totals: String, fields: Vec<String> },
    /// Acknowledge these entries of the stream for `group` (`XACK`), with the writes they
    /// caused: only where the stream may share a script with them (one server; on a cluster
    /// it lives in another slot).
    Acknowledge { group: String, ids: Vec<String> },
    /// Leave the key alone (it is only a guard).
    None,
}

/// How a CAS write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    Applied,
    /// The versioned hash changed since it was read.
    VersionConflict,
    /// A guard key exists already.
    GuardExists,
}

/// A versioned write: `writes[0]` is the versioned hash.
#[derive(Debug, Clone)]
pub struct CasWrite {
    pub expected_version: u64,
    /// Indexes into `writes` of keys that must not exist yet.
    pub guards: Vec<usize>,
    pub writes: Vec<(String, CasOp)>,
}

impl CasWrite {
    fn keys_and_args(&self) -> (Vec<String>, Vec<String>) {
        let mut keys = Vec::with_capacity(self.writes.len() + 1);
        let mut guards = Vec::with_capacity(self.guards.len());
        let mut args = Vec::new();
        for (index, (key, op)) in self.writes.iter().enumerate() {
            keys.push(key.clone());
            if self.guards.contains(&index) {
                guards.push(keys.len().to_string());
            }
            match op {
                CasOp::Hash(pairs) => {
                    args.push("H".into());
                    args.push((pairs.len() * 2).to_string());
                    for (k, v) in pairs {
                        args.push(k.clone());
                        args.push(v.clone());
                    }
                }
                CasOp::SortedSetAdd(members) => {
                    args.push("Z".into());
                    args.push((members.len() * 2).to_string());
                    for (score, member) in members {
                        args.push(score.to_string());
                        args.push(member.clone());
                    }
                }
                CasOp::HashDelete(fields) => {
                    args.push("D".into());
                    args.push(fields.len().to_string());
                    args.extend(fields.iter().cloned());
                }
                CasOp::ReleaseReservations { totals, fields } => {
                    args.push("R".into());
                    args.push(fields.len().to_string());
                    args.extend(fields.iter().cloned());
                    keys.push(totals.clone());
                    args.push("-".into());
                    args.push("0".into());
                }
                CasOp::Acknowledge { group, ids } => {
                    args.push("A".into());
                    args.push((1 + ids.len()).to_string());
                    args.push(group.clone());
                    args.extend(ids.iter().cloned());
                }
                CasOp::None => {
                    args.push("-".into());
                    args.push("0".into());
                }
            }
        }
        let mut all = Vec::with_capacity(2 + guards.len() + args.len());
        all.extend([self.expected_version.to_string(), guards.len().to_string()]);
        all.extend(guards);
        all.extend(args);
        (keys, all)
    }

    /// Queues the write on a pipeline; read its reply with [`CasOutcome::from_reply`].
    ///
    /// # Errors
    /// The command could not be queued.
    pub async fn queue(&self, pipeline: &Pipeline<Client>) -> Result<(), Error> {
        let (keys, args) = self.keys_and_args();
        queue_eval(pipeline, &SCRIPT, keys, args).await
    }

    /// The keys the write changes when it applies (not those it only guards).
    pub fn written_keys(&self) -> Vec<String> {
        self.writes
            .iter()
            .filter(|(_, op)| !matches!(op, CasOp::None))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Runs the write now.
    ///
    /// # Errors
    /// Redis unreachable, or the script failed (a key of the wrong type).
    pub async fn apply(&self, client: &Client) -> Result<CasOutcome, Error> {
        let (keys, args) = self.keys_and_args();
        let reply: Value = client.eval(SCRIPT.as_str(), keys, args).await?;
        CasOutcome::from_reply(&reply)
    }
}

impl CasOutcome {
    /// Reads the script's reply.
    ///
    /// # Errors
    /// A reply the script never gives.
    pub fn from_reply(reply: &Value) -> Result<Self, Error> {
        match reply.as_i64() {
            Some(1) => Ok(Self::Applied),
            Some(0) => Ok(Self::VersionConflict),
            Some(-1) => Ok(Self::GuardExists),
            _ => Err(Error::new(ErrorKind::Parse, format!("unexpected CAS reply {reply:?}"))),
        }
    }
}

/// Queues an EVAL on a pipeline or a transaction (fred's have no Lua interface of their own).
///
/// # Errors
/// Only a failure to queue the command.
pub async fn queue_eval<C: ClientLike>(
    pipeline: &C,
    script: &str,
    keys: Vec<String>,
    args: Vec<String>,
) -> Result<(), Error> {
    queue_script(pipeline, "EVAL", script, keys, args).await
}

/// Queues an EVAL_RO: a read-only script, whose keys need only read access under ACLs (an
/// EVAL's declared keys need read and write).
///
/// # Errors
/// Only a failure to queue the command.
pub async fn queue_eval_ro<C: ClientLike>(
    pipeline: &C,
    script: &str,
    keys: Vec<String>,
    args: Vec<String>,
) -> Result<(), Error> {
    queue_script(pipeline, "EVAL_RO", script, keys, args).await
}

async fn queue_script<C: ClientLike>(
    pipeline: &C,
    command: &'static str,
    script: &str,
    keys: Vec<String>,
    args: Vec<String>,
) -> Result<(), Error> {
    // Routed (on a cluster) by the first key: fred honours only an explicit slot for a custom
    // command, and would otherwise hash its first string, the script text.
    let hasher = keys.first().map_or(ClusterHash::FirstKey, |key| {
        ClusterHash::Custom(fred::util::redis_keyslot(key.as_bytes()))
    });
    let mut all: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
    all.push(script.into());
    all.push((keys.len() as i64).into());
    all.extend(keys.into_iter().map(Value::from));
    all.extend(args.into_iter().map(Value::from));
    let eval = CustomCommand::new_static(command, hasher, false);
    pipeline.custom::<(), _>(eval, all).await
}

/// Converts `(&'static str, String)` field lists into owned pairs.
pub fn owned(fields: Vec<(&'static str, String)>) -> Vec<(String, String)> {
    fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}
