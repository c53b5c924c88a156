//! `quantumctl faults`: the fault suite. Under a steady flow of intents it runs several
//! instances of every service on a throwaway redis-server (AOF, `appendfsync always`), or on a
//! throwaway 3-primary, 3-replica Redis Cluster, kills them with SIGKILL at random, pauses a
//! bridge past the reclaim age, restarts Redis (on a cluster: kills the primary of
//! `apply.plan`, whose replica is promoted, and brings it back as a replica), and injects one
//! poison entry into each stream; once the pipeline drains it checks the exactly-once
//! invariants and says which one failed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::Value;
use rust_decimal::Decimal;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::redis_server::ThrowawayRedis;
use quantum_model::contract::*;
use quantum_model::shards::StreamShards;
use quantum_model::stream_entry::StreamEntry;
use quantum_model::types::{Side, Symbol};

use crate::demo::{start_fake_binance, DemoVenue};
use crate::fake_binance::{FakeBinance, Faults};
use crate::invariants::Checked;
use crate::pipeline_facts::{entries_after, wait_idle};
use crate::sim::{intent_fields, Format, DEMO_SYMBOLS};
use crate::stack::{base_env, Service, ServiceProcess};

/// A symbol no intent uses, whose venue, ledger and marker state is made corrupt on purpose.
const POISON_SYMBOL: &str = "POISONUSDT";
/// The poison intent's entry id: older than any real one, with a marker of the wrong type.
const POISON_INTENT_ID: &str = "1-1";
const POISON_PLAN_ID: &str = "00000000000000ff";
const POISON_FILL_ID: &str = "poison-fill-1";

/// How hard to push.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// SIGKILLs, spread over the run (each killed process is restarted at once).
    pub kills: usize,
    /// Intents published, at `rate` per second.
    pub intents: usize,
    pub rate: u64,
    /// Instances of each service.
    pub replicas: usize,
    /// Seed of the choice of victims and pauses.
    pub seed: u64,
    /// The executors' venue: paper, or the live venue against a fake Binance that also
    /// injects venue faults (accept then time out, 5xx, duplicate id, 429, 418, skew, partial
    /// fills) at random between the kills.
    pub venue: DemoVenue,
    /// Run on a 3-primary, 3-replica Redis Cluster (services waiting for one replica) instead
    /// of one redis-server.
    pub cluster: bool,
    /// `STREAM_SHARDS` of every service.
    pub shards: StreamShards,
}

/// Redis dies under the flow and comes back: one server is killed and restarted from its AOF;
/// on a cluster the primary of `apply.plan` is killed, its replica promoted, and the dead node
/// restarted (it rejoins as the new primary's replica).
async fn fail_redis(redis: &mut ThrowawayRedis) -> Result<(), Box<dyn std::error::Error>> {
    match redis {
        ThrowawayRedis::Server(server) => {
            server.kill();
            tokio::time::sleep(Duration::from_millis(300)).await;
            server.restart()?;
        }
        ThrowawayRedis::Cluster(cluster) => {
            let victim = cluster.primary_of(PLAN_STREAM).ok_or("no primary serves apply.plan")?;
            cluster.kill(victim);
            let deadline = Instant::now() + Duration::from_secs(30);
            while cluster.primary_of(PLAN_STREAM).is_none() {
                if Instant::now() >= deadline {
                    return Err("no replica took over apply.plan within 30 s".into());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            cluster.restart(victim)?;
        }
    }
    Ok(())
}

/// What the run did and found.
#[derive(Debug, Default)]
pub struct FaultReport {
    pub kills: usize,
    pub pauses: usize,
    pub redis_restarts: usize,
    pub seconds: f64,
    /// The flow (less the poison entries) and the invariants.
    pub checked: Checked,
    pub log_dir: PathBuf,
}

impl FaultReport {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.checked.passed()
    }

    /// The report as operators read it: figures, then one line per invariant.
    pub fn render(&self) -> String {
        let mut out = format!(
            "faults: {} SIGKILLs, {} bridge pauses past the reclaim age, {} Redis restarts in {:.1} s\n",
            self.kills, self.pauses, self.redis_restarts, self.seconds
        );
        out.push_str(&self.checked.render());
        out
    }
}

/// SplitMix64: a seeded, reproducible choice of victims (no cryptographic use).
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The services' settings for the run: quick reclaim, so kills and pauses resolve in seconds.
fn fault_env(redis_url: &str, cluster: bool, shards: StreamShards) -> HashMap<String, String> {
    let mut env = base_env(redis_url);
    env.insert("STREAM_SHARDS".into(), shards.count().to_string());
    if cluster {
        // Commits wait for a replica, as a cluster deployment should run.
        env.insert("REDIS_WAIT_REPLICAS".into(), "1".into());
        env.insert("REDIS_WAIT_TIMEOUT_MS".into(), "200".into());
    }
    let allow = format!("{},{POISON_SYMBOL}", DEMO_SYMBOLS.join(","));
    for (k, v) in [
        ("SYMBOL_ALLOWLIST", allow.as_str()),
        ("MAX_EXPOSURE_PCT", "1000000"),
        ("STREAM_BATCH_SIZE", "32"),
        ("STREAM_BLOCK_MS", "200"),
        ("STREAM_CLAIM_IDLE_MS", "2000"),
        ("STREAM_CLAIM_INTERVAL_MS", "500"),
        ("STREAM_MAX_DELIVERIES", "3"),
        ("INTENT_EXECUTOR_MAX_PLAN_AGE_MS", "15000"),
        ("INTENT_EXECUTOR_SWEEP_GRACE_MS", "16000"),
        ("INTENT_EXECUTOR_SWEEP_INTERVAL_MS", "500"),
        ("LEDGER_RECONCILE_INTERVAL_MS", "500"),
    ] {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

/// The live venue's settings for the run: short windows, so unknown outcomes settle in seconds.
const LIVE_ENV: [(&str, &str); 4] = [
    ("BINANCE_RECV_WINDOW_MS", "1000"),
    ("BINANCE_UNKNOWN_MARGIN_MS", "500"),
    ("BINANCE_HTTP_TIMEOUT_MS", "500"),
    ("BINANCE_ACCOUNT_SYNC_MS", "1000"),
];

/// A venue fault chosen by `dice` (a fifth of the time none).
fn venue_fault(dice: &mut Dice) -> Faults {
    let mut faults = Faults {
        retry_after_secs: 1,
        ban_secs: 1,
        reply_delay_ms: 1500,
        ..Faults::default()
    };
    match dice.below(10) {
        0 => faults.accept_then_timeout = 1,
        1 => faults.accept_then_5xx = 1,
        2 => faults.duplicate_client_id = 1,
        3 => faults.throttle = 1,
        4 => faults.ban = 1,
        5 => faults.clock_skew_ms = 3000,
        6 | 7 => faults.partial_fills = true,
        _ => {}
    }
    faults
}

/// Corrupts one key per stage and adds the entry that trips over it.
async fn inject_poison(client: &Client, venue: DemoVenue, shards: StreamShards) -> Result<(), Error> {
    let poison_symbol =
        Symbol::parse(POISON_SYMBOL).map_err(|e| Error::new(ErrorKind::InvalidArgument, e.to_string()))?;
    // Bridge: the intent's replay marker is a hash, so its commit step fails every time.
    client
        .hset::<(), _, _>(seen_key(POISON_INTENT_ID), ("poison", "1"))
        .await?;
    client
        .xadd::<(), _, _, _, _>(
            INTENT_STREAM,
            false,
            None,
            POISON_INTENT_ID,
            vec![("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "0.001")],
        )
        .await?;
    // Executor: the venue's state of the poison plan is unreadable (the paper venue's position
    // of its symbol, the live venue's record of its order).
    let (key, field) = match venue {
        DemoVenue::Paper => (format!("quantum:paper:position:{POISON_SYMBOL}"), "position_amt"),
        DemoVenue::Live => (format!("quantum:binance:order:qib-{POISON_PLAN_ID}"), "state"),
    };
    client.hset::<(), _, _>(key, (field, "garbage")).await?;
    client
        .xadd::<(), _, _, _, _>(
            shards.stream_for(PLAN_STREAM, &poison_symbol),
            false,
            None,
            "*",
            vec![
                ("plan_id", POISON_PLAN_ID),
                ("decision", "EXECUTE"),
                ("symbol", POISON_SYMBOL),
                ("side", "BUY"),
                ("type", "MARKET"),
                ("qty", "1"),
                ("reduceOnly", "false"),
                ("leverage", "1"),
            ],
        )
        .await?;
    // Ledger: the poison symbol's dedup set is a string.
    client
        .set::<(), _, _>(
            format!("{{quantum:position:ledger:{POISON_SYMBOL}}}:applied"),
            "garbage",
            None,
            None,
            false,
        )
        .await?;
    client
        .xadd::<(), _, _, _, _>(
            shards.stream_for(LEDGER_COMMIT_STREAM, &poison_symbol),
            false,
            None,
            "*",
            vec![
                ("fill_id", POISON_FILL_ID),
                ("order_id", "qib-poison"),
                ("plan_id", POISON_PLAN_ID),
                ("symbol", POISON_SYMBOL),
                ("side", "BUY"),
                ("qty", "1"),
                ("price", "1"),
                ("fee", "0"),
                ("leverage", "1"),
                ("ts", "1"),
            ],
        )
        .await
}

/// One running instance, with what it needs to be restarted.
struct Instance {
    service: Service,
    log: PathBuf,
    process: Option<ServiceProcess>,
}

impl Instance {
    fn restart(&mut self, env: &HashMap<String, String>) -> std::io::Result<()> {
        if let Some(p) = self.process.take() {
            p.kill();
        }
        self.process = Some(ServiceProcess::start(self.service, env, &self.log)?);
        Ok(())
    }

    fn signal(&self, signal: Signal) {
        if let Some(p) = &self.process {
            let _ = kill(Pid::from_raw(p.pid() as i32), signal);
        }
    }
}

/// Publishes `intents` at `rate`, retrying a chunk while Redis is away (a chunk whose reply was
/// lost may land twice: two distinct intents, each checked like any other).
async fn publish_through_outages(client: Client, intents: Vec<Vec<(String, String)>>, rate: u64) -> Result<(), Error> {
    let chunk = (rate as usize / 10).clamp(1, 200);
    let started = Instant::now();
    for (i, group) in intents.chunks(chunk).enumerate() {
        let due = started + Duration::from_secs_f64((i * chunk) as f64 / rate.max(1) as f64);
        tokio::time::sleep_until(due.into()).await;
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            let pipeline = client.pipeline();
            for fields in group {
                pipeline
                    .xadd::<(), _, _, _, _>(INTENT_STREAM, false, None, "*", fields.clone())
                    .await?;
            }
            match pipeline.all::<Vec<Value>>().await {
                Ok(_) => break,
                Err(e) if Instant::now() < give_up => {
                    tracing::debug!("publishing paused: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Runs the suite; its logs go to `log_dir`.
///
/// # Errors
/// The stack could not be started or Redis could not be read; a broken invariant is not an
/// error but a failed line of the report.
pub async fn run(plan: &FaultPlan, log_dir: &Path) -> Result<FaultReport, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut redis = ThrowawayRedis::start(plan.cluster, &["--appendonly", "yes", "--appendfsync", "always"])
        .map_err(|e| e.to_string())?;
    let client = quantum_runtime::config::RedisArgs::from_url(&redis.url())
        .connect(&tokio_util::sync::CancellationToken::new())
        .await?;
    inject_poison(&client, plan.venue, plan.shards).await?;
    let mut env = fault_env(&redis.url(), plan.cluster, plan.shards);
    let fake = match plan.venue {
        DemoVenue::Paper => None,
        DemoVenue::Live => {
            // The weight limit is the fake's own; the suite injects 429s and 418s itself.
            let (fake, live) = start_fake_binance(log_dir, u64::MAX).await?;
            env.extend(live);
            env.extend(LIVE_ENV.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            Some(fake)
        }
    };
    let mut instances = start_instances(plan, &env, log_dir)?;
    let publisher = tokio::spawn(publish_through_outages(client.clone(), fault_intents(plan), plan.rate));
    let mut report = FaultReport {
        log_dir: log_dir.to_path_buf(),
        ..FaultReport::default()
    };
    let mut faults = Inflicting {
        instances: &mut instances,
        redis: &mut redis,
        fake: fake.as_ref(),
        env: &env,
        report: &mut report,
    };
    faults.inflict(plan).await?;
    publisher.await??;
    drain(&client, fake.as_ref()).await?;
    for instance in &mut instances {
        if let Some(p) = instance.process.take() {
            p.stop(Duration::from_secs(10));
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    check_invariants(&client, &mut report).await?;
    if let Some(fake) = &fake {
        let problems = venue_problems(&client, fake).await?;
        report.checked.invariants.insert(
            3,
            (
                "the venue holds each client order id once; each of its trades is one fill",
                problems,
            ),
        );
    }
    Ok(report)
}

/// Every service, `plan.replicas` times, each logging to its own file.
fn start_instances(
    plan: &FaultPlan,
    env: &HashMap<String, String>,
    log_dir: &Path,
) -> Result<Vec<Instance>, Box<dyn std::error::Error>> {
    let mut instances = Vec::new();
    for service in [Service::Ledger, Service::Executor, Service::Bridge] {
        for n in 0..plan.replicas.max(1) {
            let log = log_dir.join(format!("{}-{n}.log", service.binary()));
            let mut instance = Instance {
                service,
                log,
                process: None,
            };
            instance.restart(env)?;
            instances.push(instance);
        }
    }
    Ok(instances)
}

/// The intents published: the demo symbols in turn, one SELL in four, every format.
fn fault_intents(plan: &FaultPlan) -> Vec<Vec<(String, String)>> {
    (0..plan.intents)
        .map(|n| {
            let symbol = Symbol::parse(DEMO_SYMBOLS[n % DEMO_SYMBOLS.len()]).unwrap_or_else(|_| unreachable!());
            let side = if n % 4 == 3 { Side::Sell } else { Side::Buy };
            intent_fields(&symbol, side, Decimal::from(50), Format::Mixed, n)
        })
        .collect()
}

/// What the fault schedule acts on.
struct Inflicting<'a> {
    instances: &'a mut Vec<Instance>,
    redis: &'a mut ThrowawayRedis,
    fake: Option<&'a FakeBinance>,
    env: &'a HashMap<String, String>,
    report: &'a mut FaultReport,
}

impl Inflicting<'_> {
    /// The kills, spread over the publishing time; a third of the way a bridge stalls past the
    /// reclaim age, half way Redis is killed and restarted, and on the live venue every kill
    /// comes with a random venue fault.
    async fn inflict(&mut self, plan: &FaultPlan) -> Result<(), Box<dyn std::error::Error>> {
        let mut dice = Dice(plan.seed);
        let publishing = Duration::from_secs_f64(plan.intents as f64 / plan.rate.max(1) as f64);
        let gap = publishing / (plan.kills.max(1) as u32 + 1);
        let bridges: Vec<usize> = (0..self.instances.len())
            .filter(|i| self.instances[*i].service == Service::Bridge)
            .collect();
        for k in 0..plan.kills {
            tokio::time::sleep(gap.mul_f64(0.5 + dice.below(100) as f64 / 100.0)).await;
            if k == plan.kills / 3 {
                // The other bridge takes the stalled one's entries, and when it wakes up its
                // commits find them done.
                let victim = bridges[dice.below(bridges.len() as u64) as usize];
                self.instances[victim].signal(Signal::SIGSTOP);
                tokio::time::sleep(Duration::from_millis(2_600)).await;
                self.instances[victim].signal(Signal::SIGCONT);
                self.report.pauses += 1;
            }
            if k == plan.kills / 2 {
                fail_redis(self.redis).await?;
                self.report.redis_restarts += 1;
            }
            if let Some(fake) = self.fake {
                fake.set_faults(venue_fault(&mut dice));
            }
            let victim = dice.below(self.instances.len() as u64) as usize;
            self.instances[victim].restart(self.env)?;
            self.report.kills += 1;
        }
        if let Some(fake) = self.fake {
            fake.set_faults(Faults::default());
        }
        Ok(())
    }
}

/// Waits (at most 180 s) until the pipeline has drained: every group idle, the poison
/// dead-lettered, no order left open; then, on the live venue, for the account sync.
async fn drain(client: &Client, fake: Option<&FakeBinance>) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut repaired = false;
    loop {
        let open: u64 = client.zcard(OPEN_ORDERS_KEY).await?;
        let dead: u64 = client.xlen(PLAN_DLQ_STREAM).await?;
        if fake.is_some() && dead > 0 && !repaired {
            // The live venue never guesses past a corrupt order record: its order stays open
            // until an operator repairs it, as here (nothing was sent), and the sweep settles it.
            client
                .del::<(), _>(format!("quantum:binance:order:qib-{POISON_PLAN_ID}"))
                .await?;
            repaired = true;
        }
        if open == 0 && dead > 0 && wait_idle(client, Duration::from_secs(1)).await? {
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if fake.is_some() {
        wait_for_account_sync(client).await?;
    }
    Ok(())
}

/// Waits (at most 15 s) until the live executors' account sync has written every symbol's
/// snapshot after the pipeline drained, so the snapshots hold the venue's final positions.
async fn wait_for_account_sync(client: &Client) -> Result<(), Error> {
    let drained_at = quantum_model::time::now_ms();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let mut synced = true;
        for symbol in DEMO_SYMBOLS.iter().filter_map(|s| Symbol::parse(s).ok()) {
            let ts: Option<u64> = client.hget(snapshot_key(&symbol), "ts").await?;
            synced &= ts.is_some_and(|ts| ts > drained_at);
        }
        if synced {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The venue's side of exactly once: no client order id twice, and its trades are the fills in
/// `ledger.commit`, one each.
async fn venue_problems(client: &Client, fake: &FakeBinance) -> Result<Vec<String>, Error> {
    let mut problems = fake.doubled_orders();
    let trades: std::collections::BTreeSet<String> =
        fake.with_book(|b| b.trades.iter().map(|t| t.id.to_string()).collect());
    let shards = crate::pipeline_facts::stream_shards(client).await?;
    let fills: std::collections::BTreeSet<String> =
        crate::pipeline_facts::all_entries(client, shards, LEDGER_COMMIT_STREAM)
            .await?
            .iter()
            .filter_map(|f| f.get("fill_id").map(str::to_string))
            .filter(|id| id != POISON_FILL_ID)
            .collect();
    for id in trades.difference(&fills).take(10) {
        problems.push(format!("venue trade {id} never reached ledger.commit"));
    }
    for id in fills.difference(&trades).take(10) {
        problems.push(format!("fill {id} is no venue trade"));
    }
    Ok(problems)
}

async fn check_invariants(client: &Client, report: &mut FaultReport) -> Result<(), Error> {
    let mut checked = crate::invariants::check(client, Some(POISON_INTENT_ID)).await?;
    // Less the poison intent, plan and fill.
    checked.intents = checked.intents.saturating_sub(1);
    checked.plans = checked.plans.saturating_sub(1);
    checked.fills = checked.fills.saturating_sub(1);
    report.checked = checked;

    // The dead letters are exactly the poison.
    let mut problems = Vec::new();
    for (stream, source) in [
        (INTENT_DLQ_STREAM, Some(POISON_INTENT_ID)),
        (PLAN_DLQ_STREAM, None),
        (LEDGER_COMMIT_DLQ_STREAM, None),
    ] {
        let dead = entries_after(client, stream, "-").await?;
        let poison: Vec<&StreamEntry> = dead.iter().filter(|d| d.get("reason") == Some("poison")).collect();
        if dead.len() != 1 || poison.len() != 1 {
            problems.push(format!(
                "{stream} holds {} entries ({} poison), expected the one poison entry",
                dead.len(),
                poison.len()
            ));
        } else if let Some(source) = source {
            if poison[0].get("source_id") != Some(source) {
                problems.push(format!(
                    "{stream} holds {:?}, not the poison intent",
                    poison[0].get("source_id")
                ));
            }
        }
    }
    report
        .checked
        .invariants
        .insert(4, ("the dead letters hold exactly the poison", problems));

    Ok(())
}
