//! `quantumctl bench`: the pipeline's speed, measured in one run on its own redis-server (AOF
//! on, `appendfsync everysec`, as in production), against the service binaries beside
//! quantumctl (build them with `--release` first):
//!
//! 1. **Redis' own ceiling**: redis-benchmark's XADD rate from one client, pipelined (`-P 64`)
//!    and one at a time, so every figure below reads as a share of what Redis itself takes.
//! 2. **Bridge**: `count` intents preloaded (BUY/SELL mix, every format), the bridge alone
//!    drains them (consume, gate, publish, mark, ack).
//! 3. **End to end**: the same intents through bridge → paper executor → ledger, timed from the
//!    bridge's start until every group is idle.
//!
//!    Each drain also says where its time went: the CPU (user + system) Redis and each service
//!    spent per intent over it (`INFO cpu`, `/proc/<pid>/stat`), and Redis' busiest commands
//!    (`INFO commandstats`; a script's row includes the commands it calls).
//! 4. **Latency** (the services' idle RSS is read first): BUY intents published one at a time
//!    at a steady `latency_rate` for `latency_seconds`; each intent's latency runs from just
//!    before its XADD to the ledger's commit of its fill: on the keyspace notifications of the
//!    ledger hashes, the bench reads the notified ledgers' fill counts (one round trip for all
//!    waiting notifications) and dates each new fill when they come back, an upper bound by one
//!    Redis round trip.
//!    Percentiles from an HdrHistogram (µs, 3 significant digits).
//!
//! `--shards N` runs the services with `STREAM_SHARDS=N`; `--cluster` runs everything on a
//! 3-primary, 3-replica cluster (commits waiting for one replica; the XADD ceiling is then one
//! node's, the one holding the benchmark's stream).
//!
//! Redis is flushed between phases. These are measurements, not pass/fail tests: the targets
//! live in docs/performance.md, and `--json` gives the figures to track over time.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::*;
use hdrhistogram::Histogram;
use rust_decimal::Decimal;
use serde::Serialize;

use quantum_model::contract::{
    INTENT_GROUP, INTENT_STREAM, LEDGER_COMMIT_STREAM, LEDGER_GROUP, LEDGER_KEY_PREFIX, MARK_PRICE_KEY, PLAN_GROUP,
    PLAN_STREAM, PORTFOLIO_KEY,
};
use quantum_model::shards::StreamShards;
use quantum_model::types::{Side, Symbol};
use quantum_runtime::consumer::group_backlog;

use crate::pipeline_facts::{total_len, wait_idle};
use crate::redis_server::ThrowawayRedis;
use crate::sim::{approx_price, intent_fields, publish, Format, DEMO_SYMBOLS};
use crate::stack::{base_env, Service, ServiceProcess};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    /// Intents preloaded for the throughput phases.
    pub count: usize,
    /// The services' STREAM_BATCH_SIZE.
    pub batch_size: u64,
    /// Intents per second in the latency phase.
    pub latency_rate: u64,
    /// How long the latency phase publishes.
    pub latency_seconds: u64,
    /// XADDs redis-benchmark sends pipelined (a tenth of them one at a time).
    pub xadd_requests: u32,
    /// The services' STREAM_SHARDS.
    pub shards: StreamShards,
    /// On a 3-primary, 3-replica Redis Cluster (commits waiting for one replica) instead of
    /// one redis-server.
    pub cluster: bool,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub redis_version: String,
    /// `one node`, or `cluster 3+3` (with `REDIS_WAIT_REPLICAS=1`).
    pub redis: String,
    pub stream_shards: u16,
    pub xadd_ceiling: XaddCeiling,
    pub bridge: Throughput,
    pub end_to_end: Throughput,
    pub latency: Latency,
    /// Resident memory of each service, idle after start (KiB).
    pub idle_rss_kib: Vec<(String, u64)>,
}

/// redis-benchmark's XADD rates on the bench's Redis, from one client.
#[derive(Debug, Clone, Serialize)]
pub struct XaddCeiling {
    pub pipelined_per_s: f64,
    pub pipeline_depth: u32,
    pub one_at_a_time_per_s: f64,
}

/// A drain of preloaded intents.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub intents: usize,
    pub plans: u64,
    pub fills: u64,
    pub seconds: f64,
    pub intents_per_s: f64,
    /// `intents_per_s` over the pipelined XADD ceiling.
    pub share_of_xadd_ceiling: f64,
    /// CPU time (user + system) per intent over the drain, in µs: Redis (every node), then
    /// each service that ran. Where the time goes, in every run.
    pub cpu_us_per_intent: Vec<(String, f64)>,
    /// Redis' busiest commands over the drain (`INFO commandstats`, every node), by time; a
    /// script's row includes the commands it calls.
    pub redis_commands: Vec<CommandCost>,
}

/// One command's share of Redis' time over a drain.
#[derive(Debug, Clone, Serialize)]
pub struct CommandCost {
    pub command: String,
    pub calls: u64,
    pub us_per_call: f64,
    pub us_per_intent: f64,
}

/// Intent → ledger-commit latency at a steady rate (milliseconds).
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub rate_per_s: u64,
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

type BenchError = Box<dyn std::error::Error + Send + Sync>;

/// Runs every phase; the services log into `log_dir`.
///
/// # Errors
/// redis-server or redis-benchmark missing, a service not starting, or a phase not finishing
/// within its time limit.
pub async fn run(plan: &BenchPlan, log_dir: &Path) -> Result<BenchReport, BenchError> {
    let server = ThrowawayRedis::start(plan.cluster, &["--appendonly", "yes", "--appendfsync", "everysec"])?;
    let url = server.url();
    let client = quantum_runtime::config::RedisArgs::from_url(&url)
        .connect(&tokio_util::sync::CancellationToken::new())
        .await?;
    let info: String = client.info(Some(fred::types::InfoKind::Server)).await?;
    let redis_version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    let xadd_ceiling = xadd_ceiling(benchmark_port(&server)?, plan.xadd_requests)?;
    flush(&client).await?;
    let node_urls = server.node_urls();
    let mut bridge = bridge_throughput(&client, &url, &node_urls, plan, &log_dir.join("bridge-throughput.log")).await?;
    bridge.share_of_xadd_ceiling = bridge.intents_per_s / xadd_ceiling.pipelined_per_s;
    flush(&client).await?;
    let mut end_to_end = end_to_end(&client, &url, &node_urls, plan, log_dir).await?;
    end_to_end.share_of_xadd_ceiling = end_to_end.intents_per_s / xadd_ceiling.pipelined_per_s;
    flush(&client).await?;
    let (latency, idle_rss_kib) = latency(&client, &server, plan, log_dir).await?;
    let _ = client.quit().await;
    Ok(BenchReport {
        redis_version,
        redis: if plan.cluster {
            "cluster 3+3".into()
        } else {
            "one node".into()
        },
        stream_shards: plan.shards.count(),
        xadd_ceiling,
        bridge,
        end_to_end,
        latency,
        idle_rss_kib,
    })
}

impl BenchReport {
    /// The report as a table.
    pub fn render(&self) -> String {
        let c = &self.xadd_ceiling;
        let throughput = |name: &str, t: &Throughput| {
            let cpu: Vec<String> = t
                .cpu_us_per_intent
                .iter()
                .map(|(process, us)| format!("{process} {us:.1}"))
                .collect();
            let commands: Vec<String> = t
                .redis_commands
                .iter()
                .map(|c| {
                    format!(
                        "{} {:.1} ({} calls, {:.1} µs each)",
                        c.command, c.us_per_intent, c.calls, c.us_per_call
                    )
                })
                .collect();
            format!(
                "{name:<12} {:>8} intents {:>8} plans {:>8} fills {:>7.3} s {:>9.0} intents/s  {:>5.1}% of XADD ceiling\n\
                 {:<12} CPU µs per intent: {}\n\
                 {:<12} Redis µs per intent: {}\n",
                t.intents,
                t.plans,
                t.fills,
                t.seconds,
                t.intents_per_s,
                t.share_of_xadd_ceiling * 100.0,
                "",
                cpu.join(", "),
                "",
                commands.join(", ")
            )
        };
        let l = &self.latency;
        let rss: Vec<String> = self
            .idle_rss_kib
            .iter()
            .map(|(service, kib)| format!("{service} {:.1} MB", *kib as f64 / 1024.0))
            .collect();
        format!(
            "redis {} ({}, STREAM_SHARDS={}): XADD {:.0}/s pipelined (-P {}), {:.0}/s one at a time (redis-benchmark, one client)\n{}{}\
             latency      {} intents at {}/s, intent → ledger commit: p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms\n\
             idle RSS     {}\n",
            self.redis_version,
            self.redis,
            self.stream_shards,
            c.pipelined_per_s,
            c.pipeline_depth,
            c.one_at_a_time_per_s,
            throughput("bridge", &self.bridge),
            throughput("end to end", &self.end_to_end),
            l.samples,
            l.rate_per_s,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.max_ms,
            rss.join(", ")
        )
    }
}

const PIPELINE_DEPTH: u32 = 64;

/// Where redis-benchmark connects: the node holding its stream.
fn benchmark_port(redis: &ThrowawayRedis) -> Result<u16, BenchError> {
    match redis {
        ThrowawayRedis::Server(s) => Ok(s.port()),
        ThrowawayRedis::Cluster(c) => {
            let primary = c
                .primary_of(XADD_KEY)
                .ok_or("no primary serves the benchmark's stream")?;
            Ok(c.nodes()[primary].port())
        }
    }
}

/// The stream redis-benchmark appends to.
const XADD_KEY: &str = "quantum:bench:xadd";

/// redis-benchmark's XADD rate to one stream (so one node's), pipelined and not, from one
/// client.
fn xadd_ceiling(port: u16, requests: u32) -> Result<XaddCeiling, BenchError> {
    let rate = |pipeline: u32, requests: u32| -> Result<f64, BenchError> {
        let output = Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-c", "1"])
            .args(["-n", &requests.to_string(), "-P", &pipeline.to_string(), "--csv"])
            .args(["XADD", XADD_KEY, "*", "field", "value"])
            .output()
            .map_err(|e| format!("cannot run redis-benchmark ({e}); install redis-tools"))?;
        if !output.status.success() {
            return Err(format!("redis-benchmark failed: {}", String::from_utf8_lossy(&output.stderr)).into());
        }
        parse_benchmark_csv(&String::from_utf8_lossy(&output.stdout))
    };
    Ok(XaddCeiling {
        pipelined_per_s: rate(PIPELINE_DEPTH, requests)?,
        pipeline_depth: PIPELINE_DEPTH,
        one_at_a_time_per_s: rate(1, (requests / 10).max(1))?,
    })
}

/// The requests per second of the one test in redis-benchmark's `--csv` output
/// (`"test","rps",...` then `"XADD ...","612745.12",...`).
fn parse_benchmark_csv(csv: &str) -> Result<f64, BenchError> {
    csv.lines()
        .filter(|l| !l.starts_with("\"test\""))
        .find_map(|l| l.split(',').nth(1))
        .and_then(|rps| rps.trim_matches('"').parse::<f64>().ok())
        .ok_or_else(|| format!("unreadable redis-benchmark output: {csv:?}").into())
}

/// Empties the bench's Redis (every primary of a cluster).
async fn flush(client: &Client) -> Result<(), Error> {
    if client.is_clustered() {
        client.flushall_cluster().await
    } else {
        client.flushall::<()>(false).await
    }
}

/// The environment of every bench service: the demo's symbols, no exposure limit, the batch
/// size asked for.
fn bench_env(redis_url: &str, plan: &BenchPlan) -> HashMap<String, String> {
    let mut env = base_env(redis_url);
    env.insert("MAX_EXPOSURE_PCT".into(), "1000000000".into());
    env.insert("STREAM_BATCH_SIZE".into(), plan.batch_size.to_string());
    env.insert("STREAM_SHARDS".into(), plan.shards.count().to_string());
    if plan.cluster {
        // As a cluster deployment runs: every commit on a replica before it counts.
        env.insert("REDIS_WAIT_REPLICAS".into(), "1".into());
    }
    env
}

/// Marks as the venue publishes them (so intents sized at the mark are sized, not kept
/// waiting), and an account equity (without which every BUY would be refused).
async fn seed_market(client: &Client) -> Result<(), Error> {
    let marks: Vec<(String, String)> = DEMO_SYMBOLS
        .iter()
        .filter_map(|s| Symbol::parse(s).ok())
        .map(|s| (s.to_string(), approx_price(&s).to_string()))
        .collect();
    client.hset::<(), _, _>(MARK_PRICE_KEY, marks).await?;
    client
        .hset::<(), _, _>(PORTFOLIO_KEY, ("equity_usd", "100000000"))
        .await
}

/// `count` intents over the demo symbols: one SELL in three, every format.
fn preload_intents(count: usize) -> Vec<Vec<(String, String)>> {
    (0..count)
        .map(|n| {
            let symbol = Symbol::parse(DEMO_SYMBOLS[n % DEMO_SYMBOLS.len()]).unwrap_or_else(|_| unreachable!());
            let side = if n % 3 == 2 { Side::Sell } else { Side::Buy };
            intent_fields(&symbol, side, Decimal::from(100), Format::Mixed, n)
        })
        .collect()
}

/// Waits until `done` holds, polling every 5 ms, at most `limit`.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut done: F) -> Result<(), BenchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, Error>>,
{
    let deadline = Instant::now() + limit;
    while !done().await? {
        if Instant::now() >= deadline {
            return Err(format!("{what} did not finish within {} s", limit.as_secs()).into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// The bridge alone draining `plan.count` preloaded intents.
async fn bridge_throughput(
    client: &Client,
    redis_url: &str,
    node_urls: &[String],
    plan: &BenchPlan,
    log: &Path,
) -> Result<Throughput, BenchError> {
    publish(client, &preload_intents(plan.count), 0).await?;
    seed_market(client).await?;
    let redis_before = RedisCounters::read(node_urls).await?;
    let started = Instant::now();
    let bridge = ServiceProcess::start(Service::Bridge, &bench_env(redis_url, plan), log)?;
    let drained = wait_until(Duration::from_secs(600), "the bridge", || async {
        Ok(group_backlog(client, INTENT_STREAM, INTENT_GROUP)
            .await?
            .is_some_and(|b| b.is_idle()))
    })
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let cost = drain_cost(node_urls, &redis_before, &[(&bridge, 0.0)], plan.count).await;
    bridge.stop(Duration::from_secs(10));
    drained?;
    let cost = cost?;
    Ok(Throughput {
        intents: plan.count,
        plans: total_len(client, plan.shards, PLAN_STREAM).await?,
        fills: 0,
        seconds,
        intents_per_s: plan.count as f64 / seconds.max(1e-9),
        share_of_xadd_ceiling: 0.0,
        cpu_us_per_intent: cost.cpu_us_per_intent,
        redis_commands: cost.redis_commands,
    })
}

/// Bridge → executor → ledger draining `plan.count` intents preloaded while the executor and
/// the ledger wait, timed from the bridge's start.
async fn end_to_end(
    client: &Client,
    redis_url: &str,
    node_urls: &[String],
    plan: &BenchPlan,
    log_dir: &Path,
) -> Result<Throughput, BenchError> {
    let env = bench_env(redis_url, plan);
    let log = |service: Service| log_dir.join(format!("{}-end-to-end.log", service.binary()));
    let mut services = Vec::new();
    for service in [Service::Ledger, Service::Executor] {
        services.push(ServiceProcess::start(service, &env, &log(service))?);
    }
    let mut drain = async || -> Result<(f64, DrainCost), BenchError> {
        wait_for_groups(
            client,
            plan.shards,
            &[(PLAN_STREAM, PLAN_GROUP), (LEDGER_COMMIT_STREAM, LEDGER_GROUP)],
        )
        .await?;
        publish(client, &preload_intents(plan.count), 0).await?;
        seed_market(client).await?;
        // The waiting executor and ledger were idle until now: their start is not the drain's.
        let cpu_before: Vec<f64> = services.iter().map(|s| process_cpu_seconds(s.pid())).collect();
        let redis_before = RedisCounters::read(node_urls).await?;
        let started = Instant::now();
        services.push(ServiceProcess::start(Service::Bridge, &env, &log(Service::Bridge))?);
        wait_until(Duration::from_secs(600), "the pipeline", || async {
            wait_idle(client, Duration::ZERO).await
        })
        .await?;
        let seconds = started.elapsed().as_secs_f64();
        // The bridge started with the drain.
        let running: Vec<(&ServiceProcess, f64)> = services.iter().zip(cpu_before.into_iter().chain([0.0])).collect();
        Ok((
            seconds,
            drain_cost(node_urls, &redis_before, &running, plan.count).await?,
        ))
    };
    let drained = drain().await;
    for service in services {
        service.stop(Duration::from_secs(10));
    }
    let (seconds, cost) = drained?;
    Ok(Throughput {
        intents: plan.count,
        plans: total_len(client, plan.shards, PLAN_STREAM).await?,
        fills: total_len(client, plan.shards, LEDGER_COMMIT_STREAM).await?,
        seconds,
        intents_per_s: plan.count as f64 / seconds.max(1e-9),
        share_of_xadd_ceiling: 0.0,
        cpu_us_per_intent: cost.cpu_us_per_intent,
        redis_commands: cost.redis_commands,
    })
}

/// Waits until every one of `groups` exists on every shard (the services create them at start).
async fn wait_for_groups(client: &Client, shards: StreamShards, groups: &[(&str, &str)]) -> Result<(), BenchError> {
    wait_until(Duration::from_secs(30), "the services' start", || async {
        for (stream, group) in groups {
            for shard in shards.names(stream) {
                if group_backlog(client, &shard, group).await?.is_none() {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    })
    .await
}

/// A process's resident memory (VmRSS, KiB).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A process's CPU time so far, user + system over all its threads (`/proc/<pid>/stat`); 0
/// when it cannot be read.
fn process_cpu_seconds(pid: u32) -> f64 {
    let ticks_per_s = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name, field 2, may hold spaces: the fields counted are after its `)`.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let mut fields = after_name.split_whitespace().skip(11);
    let mut next = || fields.next().and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    let (utime, stime) = (next(), next());
    (utime + stime) as f64 / ticks_per_s
}

/// Redis' counters so far, summed over every node: its CPU time (`INFO cpu`: `used_cpu_user`
/// + `used_cpu_sys`) and each command's calls and µs (`INFO commandstats`).
#[derive(Debug, Default)]
struct RedisCounters {
    cpu_seconds: f64,
    commands: HashMap<String, (u64, u64)>,
}

impl RedisCounters {
    async fn read(nodes: &[String]) -> Result<Self, BenchError> {
        let mut counters = Self::default();
        for url in nodes {
            let node = quantum_runtime::config::RedisArgs::from_url(url)
                .connect(&tokio_util::sync::CancellationToken::new())
                .await?;
            let cpu: Result<String, Error> = node.info(Some(fred::types::InfoKind::Cpu)).await;
            let commands: Result<String, Error> = node.info(Some(fred::types::InfoKind::CommandStats)).await;
            let _ = node.quit().await;
            counters.add_info(&cpu?, &commands?);
        }
        Ok(counters)
    }

    /// Adds one node's `INFO cpu` and `INFO commandstats`
    /// (`cmdstat_xadd:calls=54546,usec=201000,usec_per_call=3.69,...`).
    fn add_info(&mut self, cpu: &str, commands: &str) {
        self.cpu_seconds += cpu
            .lines()
            .filter_map(|l| {
                l.strip_prefix("used_cpu_user:")
                    .or_else(|| l.strip_prefix("used_cpu_sys:"))
            })
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .sum::<f64>();
        for line in commands.lines() {
            let Some((name, stats)) = line.trim().strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else {
                continue;
            };
            let stat = |key: &str| {
                stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let entry = self.commands.entry(name.to_uppercase()).or_default();
            entry.0 += stat("calls");
            entry.1 += stat("usec");
        }
    }

    /// What Redis spent since `before`, per intent: its CPU, and its busiest commands.
    fn since(&self, before: &Self, intents: usize) -> (f64, Vec<CommandCost>) {
        let intents = intents.max(1) as f64;
        let mut commands: Vec<CommandCost> = self
            .commands
            .iter()
            .filter_map(|(command, &(calls, usec))| {
                let (calls_before, usec_before) = before.commands.get(command).copied().unwrap_or_default();
                let (calls, usec) = (calls.saturating_sub(calls_before), usec.saturating_sub(usec_before));
                (calls > 0).then(|| CommandCost {
                    command: command.clone(),
                    calls,
                    us_per_call: usec as f64 / calls as f64,
                    us_per_intent: usec as f64 / intents,
                })
            })
            .collect();
        commands.sort_by(|a, b| b.us_per_intent.total_cmp(&a.us_per_intent));
        commands.truncate(BUSIEST_COMMANDS);
        ((self.cpu_seconds - before.cpu_seconds) * 1e6 / intents, commands)
    }
}

/// How many of Redis' commands a drain reports.
const BUSIEST_COMMANDS: usize = 6;

/// What a drain cost (the fields of [`Throughput`] of the same names).
struct DrainCost {
    cpu_us_per_intent: Vec<(String, f64)>,
    redis_commands: Vec<CommandCost>,
}

/// What a drain cost: CPU µs per intent for Redis since `redis_before` and for each service
/// since the CPU seconds it is paired with, and Redis' busiest commands.
async fn drain_cost(
    nodes: &[String],
    redis_before: &RedisCounters,
    services: &[(&ServiceProcess, f64)],
    intents: usize,
) -> Result<DrainCost, BenchError> {
    let (redis_cpu, commands) = RedisCounters::read(nodes).await?.since(redis_before, intents);
    let per_intent = |seconds: f64| seconds * 1e6 / intents.max(1) as f64;
    let mut cpu = vec![("redis".to_string(), redis_cpu)];
    cpu.extend(services.iter().map(|(s, before)| {
        (
            s.service.binary().to_string(),
            per_intent(process_cpu_seconds(s.pid()) - before),
        )
    }));
    Ok(DrainCost {
        cpu_us_per_intent: cpu,
        redis_commands: commands,
    })
}

/// When each symbol's intents were published, oldest first, until their fills are committed.
type InFlight = Arc<Mutex<HashMap<String, VecDeque<Instant>>>>;

/// Intent → ledger-commit latency at a steady rate; and the idle RSS of each service, read
/// before the first intent.
async fn latency(
    client: &Client,
    redis: &ThrowawayRedis,
    plan: &BenchPlan,
    log_dir: &Path,
) -> Result<(Latency, Vec<(String, u64)>), BenchError> {
    let env = bench_env(&redis.url(), plan);
    seed_market(client).await?;
    let mut services = Vec::new();
    for service in [Service::Ledger, Service::Executor, Service::Bridge] {
        let log = log_dir.join(format!("{}-latency.log", service.binary()));
        services.push(ServiceProcess::start(service, &env, &log)?);
    }
    let measured = async {
        wait_for_groups(
            client,
            plan.shards,
            &[
                (INTENT_STREAM, INTENT_GROUP),
                (PLAN_STREAM, PLAN_GROUP),
                (LEDGER_COMMIT_STREAM, LEDGER_GROUP),
            ],
        )
        .await?;
        // Idle: started, connected, nothing to do yet.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss: Vec<(String, u64)> = services
            .iter()
            .map(|s| (s.service.binary().to_string(), rss_kib(s.pid()).unwrap_or(0)))
            .collect();
        Ok::<_, BenchError>((measure_latency(client, &redis.node_urls(), plan).await?, rss))
    }
    .await;
    for service in services {
        service.stop(Duration::from_secs(10));
    }
    measured
}

async fn measure_latency(client: &Client, node_urls: &[String], plan: &BenchPlan) -> Result<Latency, BenchError> {
    // One subscriber per node: each node notifies of its own keys only.
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let mut subscribers = Vec::new();
    for url in node_urls {
        let subscriber = quantum_runtime::config::RedisArgs::from_url(url)
            .connect(&tokio_util::sync::CancellationToken::new())
            .await?;
        notify_keyspace_events(&subscriber, "Kh").await?;
        forward(subscriber.keyspace_event_rx(), tx.clone());
        subscriber
            .psubscribe("__keyspace@0__:quantum:position:ledger:*")
            .await?;
        subscribers.push(subscriber);
    }
    drop(tx);
    let in_flight: InFlight = Arc::default();
    let total = (plan.latency_rate * plan.latency_seconds) as usize;
    let publisher = tokio::spawn(publish_steadily(
        client.clone(),
        in_flight.clone(),
        plan.latency_rate,
        total,
    ));

    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut committed: HashMap<String, u64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(plan.latency_seconds + 60);
    while (histogram.len() as usize) < total {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let symbols = match tokio::time::timeout(remaining, notified_symbols(&mut events)).await {
            Ok(Some(symbols)) => symbols?,
            Ok(None) | Err(_) => break,
        };
        let counts = fill_counts(client, &symbols).await?;
        // Stamped when the counts are read, not when the first notification came: every fill
        // counted was committed by then (an upper bound by one round trip), and a reader that
        // falls behind cannot date a later commit by an earlier notification.
        let seen = Instant::now();
        let mut queues = in_flight.lock().map_err(|_| "latency bookkeeping poisoned")?;
        for (symbol, fills) in symbols.into_iter().zip(counts) {
            let before = committed.insert(symbol.clone(), fills).unwrap_or(0);
            let queue = queues.entry(symbol).or_default();
            for _ in before..fills {
                let Some(published) = queue.pop_front() else {
                    return Err("a ledger committed more fills than intents were published".into());
                };
                histogram.record(seen.duration_since(published).as_micros().max(1) as u64)?;
            }
        }
    }
    publisher.await??;
    for subscriber in subscribers {
        let _ = subscriber.quit().await;
    }
    for url in node_urls {
        let node = quantum_runtime::config::RedisArgs::from_url(url)
            .connect(&tokio_util::sync::CancellationToken::new())
            .await?;
        notify_keyspace_events(&node, "").await?;
        let _ = node.quit().await;
    }
    if (histogram.len() as usize) < total {
        return Err(format!(
            "only {} of {total} intents reached the ledger within the time limit",
            histogram.len()
        )
        .into());
    }
    let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    Ok(Latency {
        rate_per_s: plan.latency_rate,
        samples: histogram.len(),
        p50_ms: ms(0.50),
        p90_ms: ms(0.90),
        p99_ms: ms(0.99),
        max_ms: histogram.max() as f64 / 1000.0,
    })
}

/// The symbols of every ledger-hash notification waiting (at least one), each once; `None`
/// when the notifications ended.
async fn notified_symbols(events: &mut Notifications) -> Option<Result<Vec<String>, BenchError>> {
    let mut symbols = Vec::new();
    let mut next = Some(events.recv().await?);
    while let Some(event) = next {
        match event {
            Err(lost) => return Some(Err(format!("{lost} keyspace notifications lost").into())),
            Ok(event) => {
                let symbol = event
                    .key
                    .as_str()
                    .and_then(|k| k.rsplit(':').next())
                    .map(str::to_string);
                if let Some(symbol) = symbol.filter(|s| !symbols.contains(s)) {
                    symbols.push(symbol);
                }
            }
        }
        next = events.try_recv().ok();
    }
    Some(Ok(symbols))
}

/// Each symbol's ledger `fills`, in one round trip.
async fn fill_counts(client: &Client, symbols: &[String]) -> Result<Vec<u64>, Error> {
    let pipeline = client.pipeline();
    for symbol in symbols {
        pipeline
            .hget::<(), _, _>(format!("{LEDGER_KEY_PREFIX}{symbol}"), "fills")
            .await?;
    }
    let counts: Vec<Option<u64>> = pipeline.all().await?;
    Ok(counts.into_iter().map(Option::unwrap_or_default).collect())
}

/// Keyspace notifications as [`forward`] hands them on.
type Notifications = tokio::sync::mpsc::UnboundedReceiver<Result<fred::types::KeyspaceEvent, u64>>;

/// Hands one subscriber's keyspace events on to `tx`, taken off the client's small broadcast
/// buffer by a task that does nothing else, so it never overflows while the bench reads fill
/// counts; `Err(n)` when `n` were lost all the same.
fn forward(
    mut events: tokio::sync::broadcast::Receiver<fred::types::KeyspaceEvent>,
    tx: tokio::sync::mpsc::UnboundedSender<Result<fred::types::KeyspaceEvent, u64>>,
) {
    tokio::spawn(async move {
        loop {
            let item = match events.recv().await {
                Ok(event) => Ok(event),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => Err(n),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(item).is_err() {
                return;
            }
        }
    });
}

/// CONFIG SET notify-keyspace-events (only the latency phase pays for notifications).
async fn notify_keyspace_events(client: &Client, classes: &str) -> Result<(), Error> {
    let args: Vec<fred::types::Value> = vec!["SET".into(), "notify-keyspace-events".into(), classes.into()];
    client
        .custom::<(), _>(
            fred::types::CustomCommand::new_static("CONFIG", fred::types::ClusterHash::Random, false),
            args,
        )
        .await
}

/// Publishes `total` BUY intents (by quantity, so none waits for a mark), one XADD each at
/// `rate` per second, noting each one's time just before it is sent.
async fn publish_steadily(client: Client, in_flight: InFlight, rate: u64, total: usize) -> Result<(), BenchError> {
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let started = tokio::time::Instant::now();
    for n in 0..total {
        tokio::time::sleep_until(started + period * n as u32).await;
        let symbol = Symbol::parse(DEMO_SYMBOLS[n % DEMO_SYMBOLS.len()]).unwrap_or_else(|_| unreachable!());
        let fields = intent_fields(&symbol, Side::Buy, Decimal::from(100), Format::Flat, n);
        in_flight
            .lock()
            .map_err(|_| "latency bookkeeping poisoned")?
            .entry(symbol.to_string())
            .or_default()
            .push_back(Instant::now());
        client
            .xadd::<(), _, _, _, _>(INTENT_STREAM, false, None, "*", fields)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_rate_off_redis_benchmark_csv() {
        let csv =
            "\"test\",\"rps\",\"avg_latency_ms\"\n\"XADD quantum:bench:xadd * field value\",\"612745.12\",\"0.1\"\n";
        assert!((parse_benchmark_csv(csv).unwrap() - 612_745.12).abs() < 1e-6);
        assert!(parse_benchmark_csv("garbage").is_err());
    }

    #[test]
    fn redis_costs_are_the_difference_over_the_drain_summed_over_nodes() {
        let node = |cpu_user: f64, xadd: (u64, u64), eval: (u64, u64)| {
            format!(
                "# CPU\r\nused_cpu_sys:{:.6}\r\nused_cpu_user:{cpu_user:.6}\r\n",
                cpu_user / 2.0
            ) + &format!(
                "# Commandstats\r\ncmdstat_xadd:calls={},usec={},usec_per_call=1.00,rejected_calls=0,failed_calls=0\r\n\
                 cmdstat_eval:calls={},usec={},usec_per_call=2.00\r\n",
                xadd.0, xadd.1, eval.0, eval.1
            )
        };
        let counters = |nodes: &[String]| {
            let mut c = RedisCounters::default();
            for info in nodes {
                c.add_info(info, info);
            }
            c
        };
        let before = counters(&[node(1.0, (10, 100), (0, 0)), node(2.0, (0, 0), (5, 50))]);
        let after = counters(&[node(2.0, (110, 400), (0, 0)), node(3.0, (0, 0), (105, 2_050))]);
        let (cpu, commands) = after.since(&before, 100);
        // 1 s user + 0.5 s system on each of two nodes, over 100 intents.
        assert!((cpu - 30_000.0).abs() < 1e-6, "{cpu}");
        assert_eq!(commands.len(), 2);
        assert_eq!(commands[0].command, "EVAL");
        assert_eq!(commands[0].calls, 100);
        assert!((commands[0].us_per_call - 20.0).abs() < 1e-9);
        assert!((commands[0].us_per_intent - 20.0).abs() < 1e-9);
        assert_eq!((commands[1].command.as_str(), commands[1].calls), ("XADD", 100));
        assert!((commands[1].us_per_intent - 3.0).abs() < 1e-9);
    }
}
