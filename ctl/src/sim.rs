//! Simulated trade intents in every format production publishes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use fred::prelude::*;
use fred::types::Value;
use rust_decimal::Decimal;

use quantum_model::contract::{proposal_key, INTENT_STREAM};
use quantum_model::governor::{Components, KillWeights};
use quantum_model::time::now_secs;
use quantum_model::types::{Side, Symbol};

/// The demo's eleven symbols.
pub const DEMO_SYMBOLS: [&str; 11] = [
    "BTCUSDT",
    "ETHUSDT",
    "SOLUSDT",
    "ZECUSDT",
    "WAVESUSDT",
    "BNBUSDT",
    "XRPUSDT",
    "ADAUSDT",
    "DOGEUSDT",
    "LINKUSDT",
    "AVAXUSDT",
];

/// Approximate USD prices used to size simulated intents (the paper venue's defaults).
pub fn approx_price(symbol: &Symbol) -> Decimal {
    let table: HashMap<&str, Decimal> = [
        ("BTCUSDT", 65000),
        ("ETHUSDT", 3200),
        ("SOLUSDT", 150),
        ("ZECUSDT", 40),
        ("BNBUSDT", 580),
        ("LINKUSDT", 15),
        ("AVAXUSDT", 30),
    ]
    .into_iter()
    .map(|(s, p)| (s, Decimal::from(p)))
    .chain([
        ("WAVESUSDT", Decimal::new(15, 1)),
        ("XRPUSDT", Decimal::new(6, 1)),
        ("ADAUSDT", Decimal::new(45, 2)),
        ("DOGEUSDT", Decimal::new(15, 2)),
    ])
    .collect();
    table.get(symbol.as_str()).copied().unwrap_or(Decimal::ONE_HUNDRED)
}

/// Which intent format to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Flat fields with `quantity`.
    Flat,
    /// Flat fields with `action` and `qty`.
    Action,
    /// JSON in a single `payload` field.
    Payload,
    /// `size` (USD) with `price`.
    Size,
    /// `position_size_usd` with `entry_price`.
    PositionSizeUsd,
    /// `position_usd` with `leverage` (priced at the venue's mark).
    PositionUsd,
    /// Rotate through all of the above.
    Mixed,
}

const ROTATION: [Format; 6] = [
    Format::Flat,
    Format::Action,
    Format::Payload,
    Format::Size,
    Format::PositionSizeUsd,
    Format::PositionUsd,
];

/// The fields of one simulated intent worth `usd` of `symbol`.
pub fn intent_fields(symbol: &Symbol, side: Side, usd: Decimal, format: Format, n: usize) -> Vec<(String, String)> {
    let format = if format == Format::Mixed {
        ROTATION[n % ROTATION.len()]
    } else {
        format
    };
    let price = approx_price(symbol);
    let qty = (usd / price).round_dp(3).max(Decimal::new(1, 3)).normalize();
    let s = |k: &str, v: String| (k.to_string(), v);
    match format {
        Format::Flat | Format::Mixed => vec![
            s("symbol", symbol.to_string()),
            s("side", side.to_string()),
            s("quantity", qty.to_string()),
        ],
        Format::Action => vec![
            s("symbol", symbol.to_string()),
            s("action", side.as_str().to_ascii_lowercase()),
            s("qty", qty.to_string()),
        ],
        Format::Payload => {
            let json = serde_json::json!({
                "symbol": symbol.as_str(), "side": side.as_str(), "qty": qty.to_string(),
                "leverage": 2, "stop_loss": (price * Decimal::new(95, 2)).round_dp(4).to_string(),
                "take_profit": (price * Decimal::new(105, 2)).round_dp(4).to_string(), "confidence": 0.7,
            });
            vec![s("payload", json.to_string())]
        }
        Format::Size => vec![
            s("symbol", symbol.to_string()),
            s("side", side.to_string()),
            s("size", usd.to_string()),
            s("price", price.to_string()),
        ],
        Format::PositionSizeUsd => vec![
            s("symbol", symbol.to_string()),
            s("side", side.to_string()),
            s("position_size_usd", usd.to_string()),
            s("entry_price", price.to_string()),
        ],
        Format::PositionUsd => vec![
            s("symbol", symbol.to_string()),
            s("side", side.to_string()),
            s("position_usd", (usd / Decimal::TWO).to_string()),
            s("leverage", "2".to_string()),
        ],
    }
}

/// Publishes intents in pipelined chunks; `rate` intents per second (0 = as fast as possible).
/// Returns the ids written, in order.
///
/// # Errors
/// Redis refused an XADD.
pub async fn publish(client: &Client, intents: &[Vec<(String, String)>], rate: u64) -> Result<Vec<String>, Error> {
    let chunk = if rate == 0 {
        1000
    } else {
        (rate as usize / 10).clamp(1, 1000)
    };
    let started = Instant::now();
    let mut ids = Vec::with_capacity(intents.len());
    for (i, group) in intents.chunks(chunk).enumerate() {
        if rate > 0 {
            let due = started + Duration::from_secs_f64((i * chunk) as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let pipeline = client.pipeline();
        for fields in group {
            pipeline
                .xadd::<(), _, _, _, _>(INTENT_STREAM, false, None, "*", fields.clone())
                .await?;
        }
        let written: Vec<Value> = pipeline.all().await?;
        ids.extend(written.iter().filter_map(|v| v.as_string()));
    }
    Ok(ids)
}

/// A risk-kernel proposal `quantumctl sim --proposal` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProposalKind {
    /// Every component 0: K = 0.5.
    Calm,
    /// A regime flip alone: K = 0.7311, above the legacy 0.60 warning by construction.
    RegimeFlip,
    /// Production's BTC proposal (1.0 / 0.0 / 0.2398 / 0.0417): K = 0.7563.
    Production,
    /// Regime flip with a sigma spike and a time-series drop: K = 0.8808.
    SigmaSpike,
}

impl ProposalKind {
    /// The kill-score components of this kind.
    pub fn components(self) -> Components {
        let c = |regime_flip, sigma_spike, ts_drop, age_penalty| Components {
            regime_flip,
            sigma_spike,
            ts_drop,
            age_penalty,
        };
        match self {
            Self::Calm => c(0.0, 0.0, 0.0, 0.0),
            Self::RegimeFlip => c(1.0, 0.0, 0.0, 0.0),
            Self::Production => c(1.0, 0.0, 0.2398, 0.0417),
            Self::SigmaSpike => c(1.0, 1.0, 1.0, 0.0),
        }
    }
}

/// Writes `quantum:harvest:proposal:<SYMBOL>` for each symbol as the risk kernel does: the
/// components, K computed with the kernel's weights, and a fresh `last_update_epoch`.
///
/// # Errors
/// Redis refused a write.
pub async fn write_proposals(client: &Client, symbols: &[Symbol], kind: ProposalKind) -> Result<(), Error> {
    let c = kind.components();
    let k = KillWeights::default().kill_score(&c);
    let fields = vec![
        ("kill_score", format!("{k:.4}")),
        ("k_regime_flip", format!("{:.4}", c.regime_flip)),
        ("k_sigma_spike", format!("{:.4}", c.sigma_spike)),
        ("k_ts_drop", format!("{:.4}", c.ts_drop)),
        ("k_age_penalty", format!("{:.4}", c.age_penalty)),
        ("harvest_action", "UNKNOWN".to_string()),
        ("last_update_epoch", now_secs().to_string()),
    ];
    let pipeline = client.pipeline();
    for symbol in symbols {
        pipeline.hset::<(), _, _>(proposal_key(symbol), fields.clone()).await?;
    }
    pipeline.all::<Vec<Value>>().await.map(|_| ())
}
