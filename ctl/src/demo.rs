//! `quantumctl demo`: the whole story on one machine: the deadlock in strict mode, the ledger
//! fix with production's governor blocking the fresh symbols' entries, then entry/exit separation.

use std::collections::HashMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fred::prelude::*;
use rust_decimal::Decimal;

use quantum_intent_executor::paper::seed_position;
use quantum_model::contract::{ledger_key, PLAN_STREAM, PORTFOLIO_KEY, RESULT_STREAM};
use quantum_model::position::{LedgerEntry, Position};
use quantum_model::time::now_ms;
use quantum_model::types::{Side, Symbol};
use quantum_runtime::cas::owned;

use crate::fake_binance::{FakeBinance, FakeConfig};
use crate::pipeline_facts::{exactly_once_problems, last_id, phase_facts, wait_idle, PhaseFacts};
use crate::sim::{intent_fields, publish, write_proposals, Format, ProposalKind, DEMO_SYMBOLS};
use crate::stack::{base_env, Service, ServiceProcess};

/// The symbol that already has a ledger before the demo starts.
pub const SEEDED_SYMBOL: &str = "ZECUSDT";
const SEEDED_AMT: i64 = 25;
const SEEDED_PRICE: i64 = 40;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One phase of the story: its bridge settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `INTENT_BRIDGE_REQUIRE_LEDGER_FOR_OPEN=true`: the deadlock.
    Strict,
    /// The ledger fix, with the governor as production ran it (`GOVERNOR_MODE=legacy`) and a
    /// regime flip in every proposal: the fresh symbols' entries are published BLOCKED.
    LegacyGovernor,
    /// The ledger fix and entry/exit separation (`GOVERNOR_MODE=separated`, the default).
    Separated,
}

impl Phase {
    /// The table's column heading.
    pub fn heading(self) -> &'static str {
        match self {
            Self::Strict => "STRICT (deadlock)",
            Self::LegacyGovernor => "FIX+LEGACY GOV",
            Self::Separated => "FIX+SEPARATED",
        }
    }

    fn log_name(self) -> &'static str {
        match self {
            Self::Strict => "bridge-strict.log",
            Self::LegacyGovernor => "bridge-legacy-governor.log",
            // The fixed bridge's log, as the proof script reads it.
            Self::Separated => "bridge-default.log",
        }
    }

    fn env(self) -> [(&'static str, &'static str); 2] {
        match self {
            Self::Strict => [
                ("INTENT_BRIDGE_REQUIRE_LEDGER_FOR_OPEN", "true"),
                ("GOVERNOR_MODE", "separated"),
            ],
            Self::LegacyGovernor => [
                ("INTENT_BRIDGE_REQUIRE_LEDGER_FOR_OPEN", "false"),
                ("GOVERNOR_MODE", "legacy"),
            ],
            Self::Separated => [
                ("INTENT_BRIDGE_REQUIRE_LEDGER_FOR_OPEN", "false"),
                ("GOVERNOR_MODE", "separated"),
            ],
        }
    }
}

/// The phases, in the order the story runs them.
pub const PHASES: [Phase; 3] = [Phase::Strict, Phase::LegacyGovernor, Phase::Separated];

/// What one phase showed.
#[derive(Debug, Clone)]
pub struct PhaseReport {
    pub phase: Phase,
    pub facts: PhaseFacts,
    /// BUYs and SELLs skipped by the bridge's gates (no plan at all).
    pub skipped: (u64, u64),
    pub ledger_missing_open_lines: usize,
}

/// Demo results.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub phases: Vec<PhaseReport>,
    pub problems: Vec<String>,
    pub log_dir: PathBuf,
}

impl DemoReport {
    /// Whether the run showed the deadlock, the governor's block and both fixes, with every
    /// fill counted once.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// The phase-by-phase table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let row = |out: &mut String, label: &str, cells: Vec<String>| {
            let _ = write!(out, "{label:<32}");
            for cell in cells {
                let _ = write!(out, " {cell:>18}");
            }
            let _ = writeln!(out);
        };
        let cells = |f: &dyn Fn(&PhaseReport) -> String| self.phases.iter().map(f).collect::<Vec<_>>();
        row(&mut out, "", cells(&|p| p.phase.heading().to_string()));
        row(
            &mut out,
            "symbols in apply.plan",
            cells(&|p| p.facts.plan_symbols.len().to_string()),
        );
        row(
            &mut out,
            "symbols executing",
            cells(&|p| p.facts.executing_symbols.len().to_string()),
        );
        row(
            &mut out,
            "ledger entries (end of phase)",
            cells(&|p| p.facts.ledgers.to_string()),
        );
        row(
            &mut out,
            "BUY published / skipped",
            cells(&|p| format!("{} / {}", p.facts.buy_published, p.skipped.0)),
        );
        row(
            &mut out,
            "SELL published / skipped",
            cells(&|p| format!("{} / {}", p.facts.sell_published, p.skipped.1)),
        );
        row(
            &mut out,
            "EXECUTE / BLOCKED plans",
            cells(&|p| format!("{} / {}", p.facts.execute_plans, p.facts.blocked_plans)),
        );
        row(
            &mut out,
            "LEDGER_MISSING_OPEN lines",
            cells(&|p| p.ledger_missing_open_lines.to_string()),
        );
        let _ = writeln!(out);
        for p in &self.phases {
            let _ = writeln!(
                out,
                "symbols in apply.plan ({}): {}",
                p.phase.heading(),
                join(&p.facts.plan_symbols)
            );
        }
        out
    }
}

fn join(set: &std::collections::BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(",")
}

/// Where the demo's executor places its orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoVenue {
    /// The built-in paper venue.
    Paper,
    /// The live Binance venue, against a local fake Binance USD-M server (`quantumctl fake-binance`).
    Live,
}

/// The demo's API key and secret at the fake Binance.
const DEMO_API_KEY: &str = "demo-key";
const DEMO_API_SECRET: &str = "demo-secret";

/// Starts a fake Binance for a local run (the live demo, the live fault suite): the demo symbols
/// at their reference prices, a request-weight limit of `weight_limit` a minute; the key files
/// go into `log_dir`. Returns the server and the executor's settings for it.
///
/// # Errors
/// The port cannot be bound or the key files cannot be written.
pub async fn start_fake_binance(
    log_dir: &Path,
    weight_limit: u64,
) -> Result<(FakeBinance, Vec<(String, String)>), Box<dyn std::error::Error>> {
    let prices = quantum_intent_executor::paper::parse_reference_prices(
        quantum_intent_executor::paper::DEFAULT_REFERENCE_PRICES,
    )?;
    let marks = prices.into_iter().map(|(s, p)| (s.to_string(), p)).collect();
    let mut config = FakeConfig::new(DEMO_API_KEY, DEMO_API_SECRET, marks);
    config.weight_limit = weight_limit;
    let fake = FakeBinance::start(config, ([127, 0, 0, 1], 0).into()).await?;
    let key_file = log_dir.join("binance-api-key");
    let secret_file = log_dir.join("binance-api-secret");
    std::fs::write(&key_file, DEMO_API_KEY)?;
    std::fs::write(&secret_file, DEMO_API_SECRET)?;
    let env = vec![
        ("INTENT_EXECUTOR_MODE".to_string(), "live".to_string()),
        ("BINANCE_FAPI_URL".to_string(), fake.url()),
        ("BINANCE_API_KEY_FILE".to_string(), key_file.display().to_string()),
        ("BINANCE_API_SECRET_FILE".to_string(), secret_file.display().to_string()),
        ("BINANCE_ACCOUNT_SYNC_MS".to_string(), "1000".to_string()),
    ];
    Ok((fake, env))
}

/// Seeds the pre-existing ZECUSDT position in the ledger (and, for the paper venue, at the
/// venue; the fake Binance holds it from its start).
///
/// # Errors
/// Redis refused a write, or the paper position exists already.
pub async fn seed(client: &Client, venue: DemoVenue) -> Result<(), Error> {
    let symbol = Symbol::parse(SEEDED_SYMBOL).map_err(|e| Error::new(ErrorKind::InvalidArgument, e.to_string()))?;
    let (amt, price) = (Decimal::from(SEEDED_AMT), Decimal::from(SEEDED_PRICE));
    let entry = LedgerEntry {
        position: Position {
            amt,
            avg_entry: price,
            realized_pnl: Decimal::ZERO,
        },
        leverage: Decimal::ONE,
        last_update_ts: now_ms(),
        source: "seed".into(),
        version: 1,
        ..LedgerEntry::default()
    };
    client
        .hset::<(), _, _>(ledger_key(&symbol), owned(entry.to_fields()))
        .await?;
    match venue {
        DemoVenue::Paper => seed_position(client, &symbol, amt, price).await,
        DemoVenue::Live => Ok(()),
    }
}

fn intents(side: Side, n0: usize) -> Vec<Vec<(String, String)>> {
    DEMO_SYMBOLS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let symbol = Symbol::parse(s).unwrap_or_else(|_| unreachable!("demo symbols are valid"));
            // SELLs close half of what the BUYs opened.
            let usd = if side == Side::Buy {
                Decimal::from(400)
            } else {
                Decimal::from(200)
            };
            intent_fields(&symbol, side, usd, Format::Mixed, n0 + i)
        })
        .collect()
}

async fn run_phase(
    client: &Client,
    redis_url: &str,
    phase: Phase,
    log_dir: &Path,
) -> Result<PhaseReport, Box<dyn std::error::Error>> {
    let plans_mark = last_id(client, PLAN_STREAM).await?;
    let results_mark = last_id(client, RESULT_STREAM).await?;
    let mut env = base_env(redis_url);
    env.extend(phase.env().iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let log = log_dir.join(phase.log_name());
    let bridge = ServiceProcess::start(Service::Bridge, &env, &log)?;
    let fed = DEMO_SYMBOLS.len() as u64;
    for side in [Side::Buy, Side::Sell] {
        publish(client, &intents(side, if side == Side::Buy { 0 } else { 3 }), 0).await?;
        if !wait_idle(client, IDLE_TIMEOUT).await? {
            return Err(format!(
                "pipeline did not drain within {IDLE_TIMEOUT:?}; see the logs in {}",
                log.display()
            )
            .into());
        }
    }
    bridge.stop(Duration::from_secs(10));
    let facts = phase_facts(client, &plans_mark, &results_mark).await?;
    let ledger_missing_open_lines = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("LEDGER_MISSING_OPEN allowed"))
        .count();
    Ok(PhaseReport {
        phase,
        skipped: (fed - facts.buy_published, fed - facts.sell_published),
        facts,
        ledger_missing_open_lines,
    })
}

/// Waits until the paper executor has published the account equity: until then the bridge
/// refuses BUYs (`equity_unknown`), which is not the story the demo tells.
async fn wait_for_equity(client: &Client, log_dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = std::time::Instant::now() + IDLE_TIMEOUT;
    loop {
        let equity: Option<String> = client.hget(PORTFOLIO_KEY, "equity_usd").await?;
        if equity.is_some() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "the executor published no account equity within {IDLE_TIMEOUT:?}; see {}",
                log_dir.join("executor.log").display()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the whole story against `redis_url` on `venue`, logging into `log_dir`.
///
/// # Errors
/// A service that does not start, a phase that does not drain in time, or Redis unreachable; a story not shown is not an error but the report's problems.
pub async fn run(
    client: &Client,
    redis_url: &str,
    log_dir: &Path,
    venue: DemoVenue,
) -> Result<DemoReport, Box<dyn std::error::Error>> {
    seed(client, venue).await?;
    let env = base_env(redis_url);
    let fake = match venue {
        DemoVenue::Paper => None,
        DemoVenue::Live => {
            let (fake, env) = start_fake_binance(log_dir, 2400).await?;
            // The account already holds the seeded position, as the ledger says.
            fake.with_book(|b| b.seed(SEEDED_SYMBOL, Decimal::from(SEEDED_AMT), Decimal::from(SEEDED_PRICE)));
            Some((fake, env))
        }
    };
    let mut executor_env = env.clone();
    if let Some((_, live)) = &fake {
        executor_env.extend(live.iter().cloned());
    }
    let ledger = ServiceProcess::start(Service::Ledger, &env, &log_dir.join("ledger.log"))?;
    let executor = ServiceProcess::start(Service::Executor, &executor_env, &log_dir.join("executor.log"))?;
    wait_for_equity(client, log_dir).await?;

    let mut phases = Vec::new();
    for phase in PHASES {
        let intro = match phase {
            Phase::Strict => "strict mode (INTENT_BRIDGE_REQUIRE_LEDGER_FOR_OPEN=true)",
            Phase::LegacyGovernor => {
                let symbols: Vec<Symbol> = DEMO_SYMBOLS.iter().filter_map(|s| Symbol::parse(s).ok()).collect();
                write_proposals(client, &symbols, ProposalKind::Production).await?;
                "the ledger fix, governor as in production (GOVERNOR_MODE=legacy), every proposal at K=0.7563"
            }
            Phase::Separated => "the ledger fix and entry/exit separation (GOVERNOR_MODE=separated, the default)",
        };
        println!("phase {}: {intro}, 11 BUYs then 11 SELLs ...", phases.len() + 1);
        phases.push(run_phase(client, redis_url, phase, log_dir).await?);
    }

    executor.stop(Duration::from_secs(10));
    ledger.stop(Duration::from_secs(10));

    let starting: HashMap<String, Decimal> = [(SEEDED_SYMBOL.to_string(), Decimal::from(SEEDED_AMT))].into();
    let mut problems = exactly_once_problems(client, &starting).await?;
    if let Some((fake, _)) = &fake {
        problems.extend(fake.doubled_orders());
    }
    for p in &phases {
        problems.extend(phase_problems(p));
    }
    Ok(DemoReport {
        phases,
        problems,
        log_dir: log_dir.to_path_buf(),
    })
}

/// What each phase must show for the story to hold.
fn phase_problems(p: &PhaseReport) -> Vec<String> {
    let all = DEMO_SYMBOLS.len();
    let f = &p.facts;
    let mut problems = Vec::new();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            problems.push(format!("{}: {what}", p.phase.heading()));
        }
    };
    match p.phase {
        Phase::Strict => expect(
            f.plan_symbols.len() == 1 && f.plan_symbols.contains(SEEDED_SYMBOL),
            format!(
                "only {SEEDED_SYMBOL} should publish plans, saw {}",
                join(&f.plan_symbols)
            ),
        ),
        Phase::LegacyGovernor => {
            expect(
                f.plan_symbols.len() == all,
                format!("plans for all {all} symbols expected, saw {}", f.plan_symbols.len()),
            );
            expect(
                f.blocked_plans == all as u64,
                format!(
                    "every entry should be BLOCKED by the kill score, {} were",
                    f.blocked_plans
                ),
            );
            expect(
                f.executing_symbols.len() == 1 && f.executing_symbols.contains(SEEDED_SYMBOL),
                format!(
                    "only {SEEDED_SYMBOL}'s close should execute, saw {}",
                    join(&f.executing_symbols)
                ),
            );
        }
        Phase::Separated => {
            expect(
                f.plan_symbols.len() == all && f.executing_symbols.len() == all,
                format!(
                    "all {all} symbols should publish and execute, saw {} and {}",
                    f.plan_symbols.len(),
                    f.executing_symbols.len()
                ),
            );
            expect(f.blocked_plans == 0, format!("{} plans BLOCKED", f.blocked_plans));
            expect(
                f.ledgers == all as u64,
                format!("expected {all} ledgers, found {}", f.ledgers),
            );
            expect(
                f.sell_published == all as u64,
                format!("SELLs should flow for all {all} symbols, {} did", f.sell_published),
            );
            expect(
                p.ledger_missing_open_lines == all - 1,
                format!(
                    "expected {} LEDGER_MISSING_OPEN lines, found {}",
                    all - 1,
                    p.ledger_missing_open_lines
                ),
            );
        }
    }
    problems
}
