use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fred::prelude::ClientLike;
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;

use quantum_model::types::{Side, Symbol};
use quantum_runtime::config::RedisArgs;
use quantumctl::redis_server::RedisServer;
use quantumctl::sim::{intent_fields, publish, write_proposals, Format, ProposalKind, DEMO_SYMBOLS};
use quantumctl::{bench, demo, status, why};

#[derive(Parser, Debug)]
#[command(
    name = "quantumctl",
    version,
    about = "Operate the quantum trading pipeline: demo, simulate intents, inspect status."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the whole story end to end: strict mode first (only the symbol with a ledger
    /// trades), then the ledger fix under production's legacy governor (every fresh symbol
    /// publishes, but its entries are BLOCKED at K=0.7563), then entry/exit separation (all
    /// symbols trade). Starts a throwaway redis-server unless REDIS_URL or REDIS_HOST is set.
    /// Exits non-zero if any step of the story is not demonstrated.
    Demo(DemoArgs),
    /// Serve a local Binance USD-M futures test server (the endpoints the live executor uses,
    /// with signature, recvWindow, filter and position-mode checks, documented error codes and
    /// rate-limit headers). Point the executor at it with BINANCE_FAPI_URL. Faults are injected
    /// with `POST /fake/faults` (JSON), state is read with `GET /fake/state`. Runs until Ctrl-C.
    FakeBinance(FakeBinanceArgs),
    /// Publish simulated trade intents.
    Sim(SimArgs),
    /// Measure the pipeline on a throwaway redis-server (AOF on, as in production) or 3+3 cluster:
    /// Redis' own XADD ceiling, the bridge alone and end to end draining preloaded intents (with
    /// the CPU each process spent per intent and Redis' busiest commands), intent → ledger-commit
    /// latency percentiles at a steady rate, and each service's idle RSS. Uses the service
    /// binaries beside quantumctl: build with --release for meaningful numbers.
    Bench(BenchArgs),
    /// Show stream lengths, consumer-group lag and pending counts, what the bridge did with the
    /// last minutes' intents (by outcome and reason), and the ledgers.
    Status(StatusArgs),
    /// The fault suite: under a steady flow of intents, run several instances of every service
    /// on a throwaway redis-server (AOF, appendfsync always), SIGKILL them at random, pause a
    /// bridge past the reclaim age, restart Redis, inject one poison entry into each stream,
    /// then check the exactly-once invariants. Exits non-zero if one fails.
    Faults(FaultsArgs),
    /// Check the exactly-once invariants over a running stack's Redis, read-only (works as the
    /// quantum-ops ACL user): one plan per intent, one result per plan, one venue order per
    /// plan, each fill applied once in venue order with ledger = Σ fills = venue position, and
    /// the memory bound. Waits for the pipeline to be idle first. Exits non-zero if one fails.
    Check(CheckArgs),
    /// Explain what happened: `why --intent <entry id>` follows one intent through every stage
    /// (bridge, governor, plan, executor, venue order, fills, ledger) and names where it stopped;
    /// `why <SYMBOL>` says whether the symbol trades, and if not, why, in one verdict line.
    /// Read-only: works as the quantum-ops ACL user.
    Why(WhyArgs),
}

/// The arguments of `quantumctl demo`.
#[derive(clap::Args, Debug)]
struct DemoArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// Where the executor places orders: the paper venue, or the live Binance venue against
    /// a local fake Binance USD-M server started for the demo.
    #[arg(long, value_enum, default_value = "paper")]
    venue: demo::DemoVenue,
}

/// The arguments of `quantumctl fake-binance`.
#[derive(clap::Args, Debug)]
struct FakeBinanceArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9190")]
    listen: std::net::SocketAddr,
    /// File holding the API key clients must send (X-MBX-APIKEY).
    #[arg(long)]
    api_key_file: std::path::PathBuf,
    /// File holding the API secret requests are signed with.
    #[arg(long)]
    api_secret_file: std::path::PathBuf,
    /// Symbols and their mark prices, SYMBOL=price comma separated.
    #[arg(long, default_value = quantum_intent_executor::paper::DEFAULT_REFERENCE_PRICES)]
    marks: String,
    /// USDT in the account's wallet.
    #[arg(long, default_value = "100000")]
    wallet: Decimal,
    /// Start the account in hedge mode (dualSidePosition=true).
    #[arg(long)]
    hedge_mode: bool,
}

/// The arguments of `quantumctl sim`.
#[derive(clap::Args, Debug)]
struct SimArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// How many intents.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Intents per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Symbols to rotate through, comma separated.
    #[arg(long, default_value_t = DEMO_SYMBOLS.join(","))]
    symbols: String,
    /// Intent format.
    #[arg(long, value_enum, default_value = "mixed")]
    format: Format,
    /// Publish a SELL every N intents (0 = only BUYs).
    #[arg(long, default_value_t = 0)]
    sell_every: usize,
    /// USD value of each intent.
    #[arg(long, default_value = "200")]
    usd: Decimal,
    /// First write a risk-kernel proposal (quantum:harvest:proposal:<SYMBOL>) of this kind
    /// for every symbol; with --count 0 only the proposals are written.
    #[arg(long, value_enum)]
    proposal: Option<ProposalKind>,
}

/// The arguments of `quantumctl bench`.
#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Intents preloaded for the throughput phases (bridge alone, then end to end).
    #[arg(long, default_value_t = 200_000)]
    count: usize,
    /// The services' STREAM_BATCH_SIZE.
    #[arg(long, default_value_t = 512)]
    batch_size: u64,
    /// Intents per second in the latency phase (published one at a time).
    #[arg(long, default_value_t = 1_000)]
    latency_rate: u64,
    /// How long the latency phase publishes, in seconds.
    #[arg(long, default_value_t = 10)]
    latency_seconds: u64,
    /// XADDs redis-benchmark sends for Redis' own ceiling (pipelined; a tenth one at a time).
    #[arg(long, default_value_t = 1_000_000)]
    xadd_requests: u32,
    /// Print the figures as JSON, for tracking over time.
    #[arg(long)]
    json: bool,
    /// The services' STREAM_SHARDS (1 to 64).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    shards: u64,
    /// On a throwaway 3-primary, 3-replica Redis Cluster, every commit waiting for one
    /// replica, instead of one redis-server.
    #[arg(long)]
    cluster: bool,
}

/// The arguments of `quantumctl status`.
#[derive(clap::Args, Debug)]
struct StatusArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// The window of the bridge's outcomes, in minutes.
    #[arg(long, default_value_t = 5)]
    minutes: u64,
    /// Print JSON, for scripts.
    #[arg(long)]
    json: bool,
}

/// The arguments of `quantumctl faults`.
#[derive(clap::Args, Debug)]
struct FaultsArgs {
    /// SIGKILLs over the run (each killed process is restarted at once).
    #[arg(long, default_value_t = 120)]
    kills: usize,
    /// Intents published.
    #[arg(long, default_value_t = 3000)]
    intents: usize,
    /// Intents per second.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Instances of each service.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Seed of the choice of victims (the same seed kills in the same order).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// The executors' venue: paper, or the live venue against a fake Binance that also
    /// injects venue faults between the kills (accept then time out, 5xx after accepting, a
    /// duplicate client id, 429, 418, clock skew, partial fills).
    #[arg(long, value_enum, default_value = "paper")]
    venue: demo::DemoVenue,
    /// Run on a throwaway 3-primary, 3-replica Redis Cluster (every service waiting for one
    /// replica); the Redis restart becomes the death of the primary holding apply.plan (its
    /// replica is promoted) and its return as a replica.
    #[arg(long)]
    cluster: bool,
    /// STREAM_SHARDS of every service: apply.plan, apply.result and ledger.commit split by
    /// symbol into this many streams each (1 to 64).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    shards: u64,
}

/// The arguments of `quantumctl check`.
#[derive(clap::Args, Debug)]
struct CheckArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// How long to wait for the pipeline to be idle (nothing pending or lagging), in seconds;
    /// work still in flight after that is reported as left over.
    #[arg(long, default_value_t = 60)]
    wait: u64,
}

/// The arguments of `quantumctl why`.
#[derive(clap::Args, Debug)]
struct WhyArgs {
    #[command(flatten)]
    redis: RedisArgs,
    /// The symbol to explain.
    #[arg(required_unless_present = "intent", conflicts_with = "intent")]
    symbol: Option<String>,
    /// A trade.intent entry id (as XADD returned it) to follow.
    #[arg(long)]
    intent: Option<String>,
    /// How far back `why <SYMBOL>` looks, in minutes.
    #[arg(long, default_value_t = 5)]
    minutes: u64,
}

/// A new directory under the system temp dir, kept after the run (it holds the run's logs).
fn kept_dir(prefix: &str) -> Result<std::path::PathBuf, String> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map(tempfile::TempDir::keep)
        .map_err(|e| e.to_string())
}

fn redis_given(redis: &RedisArgs) -> bool {
    redis.redis_url.is_some() || std::env::var_os("REDIS_HOST").is_some()
}

/// The Redis a command works on: the one given (with all its credentials and TLS settings), or
/// a throwaway redis-server started for the command's lifetime.
async fn given_or_throwaway(redis: &RedisArgs) -> Result<(Option<RedisServer>, String, fred::prelude::Client), String> {
    if redis_given(redis) {
        println!("using the Redis at {} (REDIS_URL/REDIS_HOST given)", redis.display());
        return Ok((None, redis.url(), connect(redis).await?));
    }
    let server = RedisServer::start().map_err(|e| e.to_string())?;
    println!("started a throwaway redis-server on 127.0.0.1:{}", server.port());
    let url = server.url();
    let client = connect(&RedisArgs::from_url(&url)).await?;
    Ok((Some(server), url, client))
}

async fn connect(redis: &RedisArgs) -> Result<fred::prelude::Client, String> {
    redis
        .connect(&CancellationToken::new())
        .await
        .map_err(|e| e.to_string())
}

async fn run(cli: Cli) -> Result<bool, String> {
    match cli.command {
        Command::Faults(args) => args.run().await,
        Command::Check(args) => args.run().await,
        Command::Status(args) => args.run().await,
        Command::Why(args) => args.run().await,
        Command::Sim(args) => args.run().await,
        Command::Bench(args) => args.run().await,
        Command::FakeBinance(args) => args.run().await,
        Command::Demo(args) => args.run().await,
    }
}

impl FaultsArgs {
    async fn run(self) -> Result<bool, String> {
        let Self {
            kills,
            intents,
            rate,
            replicas,
            seed,
            venue,
            cluster,
            shards,
        } = self;
        let shards = quantum_model::shards::StreamShards::new(shards).map_err(|e| e.to_string())?;
        let plan = quantumctl::faults::FaultPlan {
            kills,
            intents,
            rate,
            replicas,
            seed,
            venue,
            cluster,
            shards,
        };
        let dir = kept_dir("quantumctl-faults-")?;
        println!(
            "fault suite: {intents} intents at {rate}/s, {replicas} instances of each service, {kills} SIGKILLs (seed {seed}){}{}",
            if cluster { ", on a 3+3 Redis Cluster" } else { "" },
            if shards.count() > 1 {
                format!(", {} stream shards", shards.count())
            } else {
                String::new()
            }
        );
        let report = quantumctl::faults::run(&plan, &dir).await.map_err(|e| e.to_string())?;
        print!("{}", report.render());
        Ok(report.passed())
    }
}

impl CheckArgs {
    async fn run(self) -> Result<bool, String> {
        let Self { redis, wait } = self;
        let client = connect(&redis).await?;
        let idle = quantumctl::pipeline_facts::wait_idle(&client, std::time::Duration::from_secs(wait))
            .await
            .map_err(|e| e.to_string())?;
        if !idle {
            println!("not idle after {wait} s: work in flight is reported as left over");
        }
        let checked = quantumctl::invariants::check(&client, None)
            .await
            .map_err(|e| e.to_string())?;
        print!("{}", checked.render());
        Ok(checked.passed())
    }
}

impl StatusArgs {
    async fn run(self) -> Result<bool, String> {
        let Self { redis, minutes, json } = self;
        let client = connect(&redis).await?;
        let status = status::gather(&client, minutes).await.map_err(|e| e.to_string())?;
        if json {
            println!("{}", status.to_json());
        } else {
            print!("{}", status.render(why::stdout_is_terminal()));
        }
        Ok(true)
    }
}

impl WhyArgs {
    async fn run(self) -> Result<bool, String> {
        let Self {
            redis,
            symbol,
            intent,
            minutes,
        } = self;
        let client = connect(&redis).await?;
        let color = why::stdout_is_terminal();
        if let Some(id) = intent {
            let report = why::intent(&client, id.trim()).await.map_err(|e| e.to_string())?;
            print!("{}", report.render(color));
            return Ok(true);
        }
        let raw = symbol.unwrap_or_default();
        let symbol = Symbol::parse(&raw).map_err(|e| format!("SYMBOL: {e}"))?;
        let report = why::symbol(&client, &symbol, minutes)
            .await
            .map_err(|e| e.to_string())?;
        print!("{}", report.render(color));
        Ok(true)
    }
}

impl SimArgs {
    async fn run(self) -> Result<bool, String> {
        let Self {
            redis,
            count,
            rate,
            symbols,
            format,
            sell_every,
            usd,
            proposal,
        } = self;
        let symbols: Vec<Symbol> = symbols
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(Symbol::parse)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("--symbols: {e}"))?;
        if symbols.is_empty() {
            return Err("--symbols: give at least one symbol".into());
        }
        let intents: Vec<_> = (0..count)
            .map(|n| {
                let side = if sell_every > 0 && (n + 1) % sell_every == 0 {
                    Side::Sell
                } else {
                    Side::Buy
                };
                intent_fields(&symbols[n % symbols.len()], side, usd, format, n)
            })
            .collect();
        let client = connect(&redis).await?;
        if let Some(kind) = proposal {
            write_proposals(&client, &symbols, kind)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "wrote {kind:?} proposals (K={:.4}) for {} symbols",
                quantum_model::governor::KillWeights::default().kill_score(&kind.components()),
                symbols.len()
            );
        }
        let started = std::time::Instant::now();
        let ids = publish(&client, &intents, rate).await.map_err(|e| e.to_string())?;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "published {} intents to quantum:stream:trade.intent in {secs:.3}s ({:.0}/s)",
            ids.len(),
            ids.len() as f64 / secs.max(1e-9)
        );
        Ok(true)
    }
}

impl BenchArgs {
    async fn run(self) -> Result<bool, String> {
        let plan = bench::BenchPlan {
            count: self.count,
            batch_size: self.batch_size,
            latency_rate: self.latency_rate,
            latency_seconds: self.latency_seconds,
            xadd_requests: self.xadd_requests,
            shards: quantum_model::shards::StreamShards::new(self.shards).map_err(|e| e.to_string())?,
            cluster: self.cluster,
        };
        let log_dir = kept_dir("quantumctl-bench-")?;
        if !self.json {
            println!(
                "benchmarking on a throwaway {}: {} intents, batch {}, {} stream shards, latency at {}/s for {} s (logs in {})",
                if plan.cluster { "3+3 Redis Cluster" } else { "redis-server" },
                plan.count,
                plan.batch_size,
                plan.shards.count(),
                plan.latency_rate,
                plan.latency_seconds,
                log_dir.display()
            );
        }
        let report = bench::run(&plan, &log_dir).await.map_err(|e| e.to_string())?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
        } else {
            print!("{}", report.render());
        }
        Ok(true)
    }
}

impl FakeBinanceArgs {
    async fn run(self) -> Result<bool, String> {
        let Self {
            listen,
            api_key_file,
            api_secret_file,
            marks,
            wallet,
            hedge_mode,
        } = self;
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let marks = quantum_intent_executor::paper::parse_reference_prices(&marks)
            .map_err(|e| format!("--marks: {e}"))?
            .into_iter()
            .map(|(s, p)| (s.to_string(), p))
            .collect();
        let mut config =
            quantumctl::fake_binance::FakeConfig::new(&read(&api_key_file)?, &read(&api_secret_file)?, marks);
        config.wallet_usdt = wallet;
        config.dual_side = hedge_mode;
        let fake = quantumctl::fake_binance::FakeBinance::start(config, listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        println!("fake-binance listening on {} (BINANCE_FAPI_URL)", fake.url());
        tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
        Ok(true)
    }
}

impl DemoArgs {
    async fn run(self) -> Result<bool, String> {
        let Self { redis, venue } = self;
        let log_dir = kept_dir("quantumctl-demo-")?;
        let (_server, url, client) = given_or_throwaway(&redis).await?;
        let report = demo::run(&client, &url, &log_dir, venue)
            .await
            .map_err(|e| e.to_string());
        let _ = client.quit().await;
        let report = report?;
        println!("\n{}", report.table());
        println!("service logs: {}", report.log_dir.display());
        println!(
            "operators' proof on the fixed bridge's log: proofs/proof_intent_bridge_ledger_gate.sh --log-file {}",
            report.log_dir.join("bridge-default.log").display()
        );
        if report.passed() {
            println!(
                "\nPASS: strict mode reproduces the deadlock; the legacy governor blocks the fresh symbols' entries; \
             separated mode trades all {} symbols; no fill counted twice",
                DEMO_SYMBOLS.len()
            );
        } else {
            println!("\nFAIL: the story was not demonstrated:");
            for p in &report.problems {
                println!("  - {p}");
            }
        }
        Ok(report.passed())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let _logs = quantum_runtime::telemetry::init_logging(Some("warn"));
    match run(Cli::parse()).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("quantumctl: {e}");
            ExitCode::from(2)
        }
    }
}
