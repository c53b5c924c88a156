//! `quantumctl demo`: the deadlock in strict mode, then the fix, on one machine.

use std::collections::HashMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fred::prelude::*;
use rust_decimal::Decimal;

use quantum_common::cas::owned;
use quantum_common::contract::{ledger_key, PLAN_STREAM, RESULT_STREAM};
use quantum_common::position::{LedgerEntry, Position};
use quantum_common::time::now_ms;
use quantum_common::types::{Side, Symbol};
use quantum_intent_executor::paper::seed_position;

use crate::facts::{exactly_once_problems, last_id, phase_facts, wait_idle, PhaseFacts};
use crate::sim::{intent_fields, publish, Format, DEMO_SYMBOLS};
use crate::stack::{base_env, Service, ServiceProcess};

/// The symbol that already has a ledger before the demo starts.
pub const SEEDED_SYMBOL: &str = "ZECUSDT";
const SEEDED_AMT: i64 = 25;
const SEEDED_PRICE: i64 = 40;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Demo results.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub strict: PhaseFacts,
    pub fixed: PhaseFacts,
    pub strict_skipped: (u64, u64),
    pub fixed_skipped: (u64, u64),
    pub ledger_missing_open_lines: usize,
    pub problems: Vec<String>,
    pub log_dir: PathBuf,
}

impl DemoReport {
    /// Whether the run showed the deadlock, then the fix, with every fill counted once.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// The before/after table.
    pub fn table(&self) -> String {
        let (s, f) = (&self.strict, &self.fixed);
        let mut out = String::new();
        let row = |out: &mut String, label: &str, a: String, b: String| {
            let _ = writeln!(out, "{label:<32} {a:>18} {b:>18}");
        };
        row(&mut out, "", "STRICT (deadlock)".into(), "DEFAULT (fix)".into());
        row(
            &mut out,
            "symbols in apply.plan",
            s.plan_symbols.len().to_string(),
            f.plan_symbols.len().to_string(),
        );
        row(
            &mut out,
            "symbols executing",
            s.executing_symbols.len().to_string(),
            f.executing_symbols.len().to_string(),
        );
        row(
            &mut out,
            "ledger entries (end of phase)",
            s.ledgers.to_string(),
            f.ledgers.to_string(),
        );
        row(
            &mut out,
            "BUY published / skipped",
            format!("{} / {}", s.buy_published, self.strict_skipped.0),
            format!("{} / {}", f.buy_published, self.fixed_skipped.0),
        );
        row(
            &mut out,
            "SELL published / skipped",
            format!("{} / {}", s.sell_published, self.strict_skipped.1),
            format!("{} / {}", f.sell_published, self.fixed_skipped.1),
        );
        row(
            &mut out,
            "EXECUTE / BLOCKED plans",
            format!("{} / {}", s.execute_plans, s.blocked_plans),
            format!("{} / {}", f.execute_plans, f.blocked_plans),
        );
        row(
            &mut out,
            "LEDGER_MISSING_OPEN lines",
            "0".into(),
            self.ledger_missing_open_lines.to_string(),
        );
        let _ = writeln!(out, "\nsymbols in apply.plan (strict):  {}", join(&s.plan_symbols));
        let _ = writeln!(out, "symbols in apply.plan (default): {}", join(&f.plan_symbols));
        out
    }
}

fn join(set: &std::collections::BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(",")
}

/// Seeds the pre-existing ZECUSDT position: the ledger and the paper venue agree on it.
pub async fn seed(client: &Client) -> Result<(), Error> {
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
    seed_position(client, &symbol, amt, price).await
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
    strict: bool,
    log: &Path,
) -> Result<(PhaseFacts, (u64, u64)), Box<dyn std::error::Error>> {
    let plans_mark = last_id(client, PLAN_STREAM).await?;
    let results_mark = last_id(client, RESULT_STREAM).await?;
    let mut env = base_env(redis_url);
    env.insert("INTENT_BRIDGE_ALLOWLIST".into(), DEMO_SYMBOLS.join(","));
    env.insert("INTENT_BRIDGE_REQUIRE_LEDGER_FOR_OPEN".into(), strict.to_string());
    let bridge = ServiceProcess::start(Service::Bridge, &env, log)?;
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
    let skipped = (fed - facts.buy_published, fed - facts.sell_published);
    Ok((facts, skipped))
}

/// Runs the whole story against `redis_url`, logging into `log_dir`.
pub async fn run(client: &Client, redis_url: &str, log_dir: &Path) -> Result<DemoReport, Box<dyn std::error::Error>> {
    seed(client).await?;
    let env = base_env(redis_url);
    let ledger = ServiceProcess::start(Service::Ledger, &env, &log_dir.join("ledger.log"))?;
    let executor = ServiceProcess::start(Service::Executor, &env, &log_dir.join("executor.log"))?;

    println!("phase 1: strict mode (INTENT_BRIDGE_REQUIRE_LEDGER_FOR_OPEN=true), 11 BUYs then 11 SELLs ...");
    let (strict, strict_skipped) = run_phase(client, redis_url, true, &log_dir.join("bridge-strict.log")).await?;
    println!("phase 2: default mode (the fix), 11 BUYs then 11 SELLs ...");
    let fixed_log = log_dir.join("bridge-default.log");
    let (fixed, fixed_skipped) = run_phase(client, redis_url, false, &fixed_log).await?;

    executor.stop(Duration::from_secs(10));
    ledger.stop(Duration::from_secs(10));

    let fixed_text = std::fs::read_to_string(&fixed_log).unwrap_or_default();
    let ledger_missing_open_lines = fixed_text
        .lines()
        .filter(|l| l.contains("LEDGER_MISSING_OPEN allowed"))
        .count();
    let starting: HashMap<String, Decimal> = [(SEEDED_SYMBOL.to_string(), Decimal::from(SEEDED_AMT))].into();
    let mut problems = exactly_once_problems(client, &starting).await?;
    let all = DEMO_SYMBOLS.len();
    if strict.plan_symbols.len() != 1 || !strict.plan_symbols.contains(SEEDED_SYMBOL) {
        problems.push(format!(
            "strict mode should let only {SEEDED_SYMBOL} through, saw {}",
            join(&strict.plan_symbols)
        ));
    }
    if fixed.plan_symbols.len() != all {
        problems.push(format!(
            "default mode should publish plans for all {all} symbols, saw {}",
            fixed.plan_symbols.len()
        ));
    }
    if fixed.executing_symbols.len() != all {
        problems.push(format!(
            "default mode should execute all {all} symbols, saw {}",
            fixed.executing_symbols.len()
        ));
    }
    if fixed.ledgers != all as u64 {
        problems.push(format!("expected {all} ledgers after the fix, found {}", fixed.ledgers));
    }
    if fixed.sell_published != all as u64 {
        problems.push(format!(
            "SELLs should flow for all {all} symbols once ledgers exist, {} did",
            fixed.sell_published
        ));
    }
    if ledger_missing_open_lines != all - 1 {
        problems.push(format!(
            "expected {} LEDGER_MISSING_OPEN lines, found {ledger_missing_open_lines}",
            all - 1
        ));
    }
    Ok(DemoReport {
        strict,
        fixed,
        strict_skipped,
        fixed_skipped,
        ledger_missing_open_lines,
        problems,
        log_dir: log_dir.to_path_buf(),
    })
}
