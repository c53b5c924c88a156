//! `quantumctl bench`: bridge throughput end to end on a real redis-server. Preloads intents,
//! starts the real bridge binary and times until its group has consumed and acknowledged all.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use fred::prelude::*;
use rust_decimal::Decimal;

use quantum_model::contract::{INTENT_GROUP, INTENT_STREAM, MARK_PRICE_KEY, PLAN_STREAM, PORTFOLIO_KEY};
use quantum_model::types::{Side, Symbol};
use quantum_runtime::consumer::group_backlog;

use crate::sim::{approx_price, intent_fields, publish, Format, DEMO_SYMBOLS};
use crate::stack::{base_env, Service, ServiceProcess};

/// One measurement.
#[derive(Debug, Clone)]
pub struct BenchResult {
    pub intents: usize,
    pub plans: u64,
    pub seconds: f64,
}

impl BenchResult {
    /// Intents consumed, gated, published and acknowledged per second.
    pub fn rate(&self) -> f64 {
        self.intents as f64 / self.seconds.max(1e-9)
    }
}

/// Preloads `count` intents (BUY/SELL mix over the demo symbols, all formats), runs the bridge
/// with `batch_size` and returns how long it took to drain them.
///
/// # Errors
/// Redis unreachable, or the bridge not starting or not draining the intents.
pub async fn bridge_throughput(
    client: &Client,
    redis_url: &str,
    count: usize,
    batch_size: u64,
    log: &Path,
) -> Result<BenchResult, Box<dyn std::error::Error>> {
    let intents: Vec<_> = (0..count)
        .map(|n| {
            let symbol = Symbol::parse(DEMO_SYMBOLS[n % DEMO_SYMBOLS.len()]).unwrap_or_else(|_| unreachable!());
            let side = if n % 3 == 2 { Side::Sell } else { Side::Buy };
            intent_fields(&symbol, side, Decimal::from(100), Format::Mixed, n)
        })
        .collect();
    publish(client, &intents, 0).await?;
    // Marks as the venue publishes them, so intents sized at the mark are sized, not kept waiting.
    let marks: Vec<(String, String)> = DEMO_SYMBOLS
        .iter()
        .filter_map(|s| Symbol::parse(s).ok())
        .map(|s| (s.to_string(), approx_price(&s).to_string()))
        .collect();
    client.hset::<(), _, _>(MARK_PRICE_KEY, marks).await?;
    // And the account equity, without which every BUY would be refused (equity_unknown).
    client
        .hset::<(), _, _>(PORTFOLIO_KEY, ("equity_usd", "100000000"))
        .await?;
    let plans_before: u64 = client.xlen(PLAN_STREAM).await?;

    let mut env: HashMap<String, String> = base_env(redis_url);
    env.insert("SYMBOL_ALLOWLIST".into(), DEMO_SYMBOLS.join(","));
    env.insert("MAX_EXPOSURE_PCT".into(), "1000000000".into());
    env.insert("STREAM_BATCH_SIZE".into(), batch_size.to_string());
    let started = Instant::now();
    let bridge = ServiceProcess::start(Service::Bridge, &env, log)?;
    loop {
        if let Some(b) = group_backlog(client, INTENT_STREAM, INTENT_GROUP).await? {
            if b.is_idle() {
                break;
            }
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err("bridge did not drain within 600s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    bridge.stop(Duration::from_secs(10));
    let plans: u64 = client.xlen(PLAN_STREAM).await?;
    Ok(BenchResult {
        intents: count,
        plans: plans - plans_before,
        seconds,
    })
}
