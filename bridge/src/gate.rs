//! The bridge's gates, in order: allowlist, ledger (split by side, counting what is in flight),
//! exposure. Pure functions. (Freshness is checked before them and shares their skip reasons.)
//!
//! Invariants the gates keep (with the reservations of `quantum_model::reservation`):
//! - a published SELL never exceeds what is available: the ledger's long position minus the
//!   SELLs in flight; a larger one is cut to it, and with nothing available it is skipped;
//! - a BUY is refused when the exposure after it (ledgers, BUYs in flight, the order itself)
//!   would reach the limit, and when the equity to measure it against is unknown (unless the
//!   operator restored the old fail-open behaviour).

use std::collections::HashSet;

use rust_decimal::Decimal;

use quantum_model::types::{Side, Symbol};

/// Gate settings.
#[derive(Debug, Clone)]
pub struct GateConfig {
    pub allowlist: HashSet<Symbol>,
    /// Strict mode: refuse an opening BUY when the symbol has no ledger (the old deadlock).
    pub require_ledger_for_open: bool,
    /// Gate SELLs on the ledger: refuse them without a ledger or on a flat one, and cap them
    /// at what is available. Off: SELLs pass unchecked (the old behaviour).
    pub skip_flat_sell: bool,
    /// |position_amt| at or below this counts as flat.
    pub flat_eps: Decimal,
    /// BUYs are refused while portfolio exposure is at or above this percentage.
    pub max_exposure_pct: Decimal,
    /// With no equity known, let BUYs through as if exposure were 0 (the old fail-open).
    pub allow_unknown_equity: bool,
}

/// What the bridge knows of a symbol's ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerView {
    /// No ledger entry (or no readable position_amt).
    Missing,
    /// The ledger's signed position_amt.
    Known(Decimal),
    /// A ledger hash (or its reservations) that cannot be read: the gate fails closed.
    Unreadable,
}

/// One order as the gates see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateInput {
    pub side: Side,
    /// The quantity asked for.
    pub qty: Decimal,
    pub ledger: LedgerView,
    /// Σ qty of this symbol's SELLs in flight (published, or filled and not yet applied).
    pub sells_in_flight: Decimal,
    /// Exposure after this order, in percent; `None` when the equity is unknown.
    pub exposure_pct: Option<Decimal>,
}

/// Why an intent was not published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    NotAllowlisted,
    StrictLedgerMissingBuy,
    LedgerMissingSell,
    LedgerFlatSell {
        last_known_amt: Decimal,
    },
    /// The position is short, or fully taken by SELLs in flight.
    SellNothingAvailable {
        position_amt: Decimal,
        in_flight: Decimal,
    },
    Exposure {
        exposure_pct: Decimal,
        max_pct: Decimal,
    },
    /// No equity to measure exposure against: BUYs fail closed.
    EquityUnknown,
    /// Older than INTENT_BRIDGE_MAX_INTENT_AGE_MS (checked before the gates proper).
    Stale {
        age_ms: u64,
        max_ms: u64,
    },
    /// The symbol's ledger exists but cannot be read: neither side may rely on it.
    LedgerUnreadable,
}

impl SkipReason {
    /// Stable reason code (metrics labels, counters).
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotAllowlisted => "not_allowlisted",
            Self::StrictLedgerMissingBuy => "strict_ledger_missing_buy",
            Self::LedgerMissingSell => "ledger_missing_sell",
            Self::LedgerFlatSell { .. } => "ledger_flat_sell",
            Self::SellNothingAvailable { .. } => "sell_nothing_available",
            Self::Exposure { .. } => "exposure",
            Self::EquityUnknown => "equity_unknown",
            Self::Stale { .. } => "stale",
            Self::LedgerUnreadable => "ledger_unreadable",
        }
    }
}

/// The gate's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateOutcome {
    /// Publish `qty` (a SELL's may be cut to what is available); `ledger_missing_open` marks a
    /// BUY let through without a ledger (the fix).
    Publish {
        ledger_missing_open: bool,
        qty: Decimal,
    },
    Skip(SkipReason),
}

/// Decides whether an order for `symbol` is published, and for how much.
pub fn gate(cfg: &GateConfig, symbol: &Symbol, order: &GateInput) -> GateOutcome {
    if !cfg.allowlist.contains(symbol) {
        return GateOutcome::Skip(SkipReason::NotAllowlisted);
    }
    // A corrupt ledger is not a missing one: a BUY must not open as LEDGER_MISSING_OPEN, a SELL
    // must not trust an amount it cannot read.
    if order.ledger == LedgerView::Unreadable {
        return GateOutcome::Skip(SkipReason::LedgerUnreadable);
    }
    match order.side {
        Side::Buy => gate_buy(cfg, order),
        Side::Sell => gate_sell(cfg, order),
    }
}

fn gate_buy(cfg: &GateConfig, order: &GateInput) -> GateOutcome {
    if order.ledger == LedgerView::Missing && cfg.require_ledger_for_open {
        return GateOutcome::Skip(SkipReason::StrictLedgerMissingBuy);
    }
    let exposure_pct = match order.exposure_pct {
        Some(pct) => pct,
        None if cfg.allow_unknown_equity => Decimal::ZERO,
        None => return GateOutcome::Skip(SkipReason::EquityUnknown),
    };
    if exposure_pct >= cfg.max_exposure_pct {
        return GateOutcome::Skip(SkipReason::Exposure {
            exposure_pct,
            max_pct: cfg.max_exposure_pct,
        });
    }
    GateOutcome::Publish {
        ledger_missing_open: order.ledger == LedgerView::Missing,
        qty: order.qty,
    }
}

fn gate_sell(cfg: &GateConfig, order: &GateInput) -> GateOutcome {
    let publish = |qty| GateOutcome::Publish {
        ledger_missing_open: false,
        qty,
    };
    if !cfg.skip_flat_sell {
        return publish(order.qty);
    }
    let amt = match order.ledger {
        LedgerView::Missing | LedgerView::Unreadable => return GateOutcome::Skip(SkipReason::LedgerMissingSell),
        LedgerView::Known(amt) if amt.abs() <= cfg.flat_eps => {
            return GateOutcome::Skip(SkipReason::LedgerFlatSell { last_known_amt: amt })
        }
        LedgerView::Known(amt) => amt,
    };
    // A SELL only reduces a long: a short has nothing to sell, and what SELLs in flight will
    // take is not available twice.
    let available = amt - order.sells_in_flight;
    if available <= Decimal::ZERO {
        return GateOutcome::Skip(SkipReason::SellNothingAvailable {
            position_amt: amt,
            in_flight: order.sells_in_flight,
        });
    }
    publish(order.qty.min(available))
}

/// Portfolio exposure in percent: total notional over equity; `None` when the equity is
/// unknown or not positive.
pub fn exposure_pct(total_notional_usd: Decimal, equity_usd: Option<Decimal>) -> Option<Decimal> {
    match equity_usd {
        Some(equity) if equity > Decimal::ZERO => {
            total_notional_usd
                .checked_div(equity)
                .and_then(|ratio| ratio.checked_mul(Decimal::ONE_HUNDRED))
                .map(|pct| pct.round_dp(4))
                // Beyond Decimal's range is beyond any limit.
                .or(Some(Decimal::MAX))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sym(s: &str) -> Symbol {
        Symbol::parse(s).unwrap()
    }

    fn d(v: &str) -> Decimal {
        v.parse().unwrap()
    }

    fn cfg() -> GateConfig {
        GateConfig {
            allowlist: ["BTCUSDT", "ZECUSDT"].iter().map(|s| sym(s)).collect(),
            require_ledger_for_open: false,
            skip_flat_sell: true,
            flat_eps: Decimal::ZERO,
            max_exposure_pct: Decimal::from(80),
            allow_unknown_equity: false,
        }
    }

    fn order(side: Side, qty: &str, ledger: LedgerView, in_flight: &str, exposure: Option<&str>) -> GateInput {
        GateInput {
            side,
            qty: d(qty),
            ledger,
            sells_in_flight: d(in_flight),
            exposure_pct: exposure.map(d),
        }
    }

    fn publish(qty: &str, ledger_missing_open: bool) -> GateOutcome {
        GateOutcome::Publish {
            ledger_missing_open,
            qty: d(qty),
        }
    }

    fn known(v: &str) -> LedgerView {
        LedgerView::Known(d(v))
    }

    #[test]
    fn decision_table() {
        use LedgerView::{Missing, Unreadable};
        use Side::{Buy, Sell};
        let strict = GateConfig {
            require_ledger_for_open: true,
            ..cfg()
        };
        let unchecked_sells = GateConfig {
            skip_flat_sell: false,
            ..cfg()
        };
        let fail_open = GateConfig {
            allow_unknown_equity: true,
            ..cfg()
        };
        let wide_flat = GateConfig {
            flat_eps: d("0.001"),
            ..cfg()
        };
        let default = cfg();
        let skip = GateOutcome::Skip;
        #[rustfmt::skip]
        let rows: Vec<(&str, &GateConfig, &str, GateInput, GateOutcome)> = vec![
            ("not allowlisted first", &default, "DOGEUSDT", order(Buy, "1", known("1"), "0", Some("0")), skip(SkipReason::NotAllowlisted)),
            ("BUY without ledger opens (the fix)", &default, "BTCUSDT", order(Buy, "1", Missing, "0", Some("0")), publish("1", true)),
            ("strict: BUY without ledger refused", &strict, "BTCUSDT", order(Buy, "1", Missing, "0", Some("0")), skip(SkipReason::StrictLedgerMissingBuy)),
            ("strict: BUY with flat ledger passes", &strict, "BTCUSDT", order(Buy, "1", known("0"), "0", Some("0")), publish("1", false)),
            ("SELL without ledger refused", &default, "BTCUSDT", order(Sell, "1", Missing, "0", Some("0")), skip(SkipReason::LedgerMissingSell)),
            ("SELL on flat ledger refused", &default, "BTCUSDT", order(Sell, "1", known("0"), "0", None), skip(SkipReason::LedgerFlatSell { last_known_amt: d("0") })),
            ("eps widens flat", &wide_flat, "BTCUSDT", order(Sell, "1", known("-0.001"), "0", None), skip(SkipReason::LedgerFlatSell { last_known_amt: d("-0.001") })),
            ("SELL within the position", &default, "BTCUSDT", order(Sell, "0.4", known("1"), "0", None), publish("0.4", false)),
            ("SELL above the position is cut", &default, "BTCUSDT", order(Sell, "2", known("1"), "0", None), publish("1", false)),
            ("SELL cut by SELLs in flight", &default, "BTCUSDT", order(Sell, "1", known("1"), "0.7", None), publish("0.3", false)),
            ("SELL with everything in flight", &default, "BTCUSDT", order(Sell, "1", known("1"), "1", None), skip(SkipReason::SellNothingAvailable { position_amt: d("1"), in_flight: d("1") })),
            ("SELL against a short adds nothing", &default, "BTCUSDT", order(Sell, "1", known("-2"), "0", None), skip(SkipReason::SellNothingAvailable { position_amt: d("-2"), in_flight: d("0") })),
            ("unchecked SELLs pass uncut", &unchecked_sells, "BTCUSDT", order(Sell, "5", Missing, "9", None), publish("5", false)),
            ("exposure at the limit refuses BUY", &default, "BTCUSDT", order(Buy, "1", known("1"), "0", Some("80")), skip(SkipReason::Exposure { exposure_pct: d("80"), max_pct: d("80") })),
            ("exposure never refuses SELL", &default, "BTCUSDT", order(Sell, "1", known("1"), "0", Some("500")), publish("1", false)),
            ("unknown equity refuses BUY", &default, "BTCUSDT", order(Buy, "1", known("0"), "0", None), skip(SkipReason::EquityUnknown)),
            ("unknown equity, fail-open flag", &fail_open, "BTCUSDT", order(Buy, "1", known("0"), "0", None), publish("1", false)),
            ("unreadable ledger refuses BUY", &default, "BTCUSDT", order(Buy, "1", Unreadable, "0", Some("0")), skip(SkipReason::LedgerUnreadable)),
            ("unreadable ledger refuses SELL", &default, "BTCUSDT", order(Sell, "1", Unreadable, "0", None), skip(SkipReason::LedgerUnreadable)),
        ];
        for (name, cfg, symbol, input, expected) in rows {
            assert_eq!(gate(cfg, &sym(symbol), &input), expected, "{name}");
        }
    }

    #[test]
    fn exposure_is_notional_over_equity() {
        assert_eq!(exposure_pct(d("8000"), Some(d("10000"))), Some(d("80")));
        assert_eq!(exposure_pct(d("8000"), None), None);
        assert_eq!(exposure_pct(d("8000"), Some(Decimal::ZERO)), None);
        assert_eq!(exposure_pct(Decimal::MAX, Some(d("0.0001"))), Some(Decimal::MAX));
    }

    proptest! {
        /// Default mode never blocks a BUY on a missing ledger; strict mode always does.
        #[test]
        fn side_split_holds(strict in any::<bool>(), exposure in 0u32..79) {
            let c = GateConfig { require_ledger_for_open: strict, ..cfg() };
            let exposure = exposure.to_string();
            let out = gate(&c, &sym("BTCUSDT"), &order(Side::Buy, "1", LedgerView::Missing, "0", Some(&exposure)));
            if strict {
                prop_assert_eq!(out, GateOutcome::Skip(SkipReason::StrictLedgerMissingBuy));
            } else {
                prop_assert_eq!(out, publish("1", true));
            }
            let sell = gate(&c, &sym("BTCUSDT"), &order(Side::Sell, "1", LedgerView::Missing, "0", Some(&exposure)));
            prop_assert_eq!(sell, GateOutcome::Skip(SkipReason::LedgerMissingSell));
        }

        /// Whatever the position, the SELLs in flight and the asked quantity, a published SELL
        /// never takes the position below zero.
        #[test]
        fn sells_never_overshoot(amt in -1_000_000i64..1_000_000, in_flight in 0i64..1_000_000, qty in 1i64..2_000_000) {
            let (amt, in_flight, qty) = (Decimal::new(amt, 3), Decimal::new(in_flight, 3), Decimal::new(qty, 3));
            let input = GateInput { side: Side::Sell, qty, ledger: LedgerView::Known(amt), sells_in_flight: in_flight, exposure_pct: None };
            if let GateOutcome::Publish { qty: published, .. } = gate(&cfg(), &sym("BTCUSDT"), &input) {
                prop_assert!(published > Decimal::ZERO && published <= qty);
                prop_assert!(amt - in_flight - published >= Decimal::ZERO);
            }
        }
    }
}
