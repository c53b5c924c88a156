//! The bridge's gates, in order: allowlist, ledger (split by side), exposure. Pure functions.
//! (Freshness is checked before them and shares their skip reasons.)

use std::collections::HashSet;

use rust_decimal::Decimal;

use quantum_common::types::{Side, Symbol};

/// Gate settings.
#[derive(Debug, Clone)]
pub struct GateConfig {
    pub allowlist: HashSet<Symbol>,
    /// Strict mode: refuse an opening BUY when the symbol has no ledger (the old deadlock).
    pub require_ledger_for_open: bool,
    /// Refuse SELLs without a ledger or on a flat ledger.
    pub skip_flat_sell: bool,
    /// |position_amt| at or below this counts as flat.
    pub flat_eps: Decimal,
    /// BUYs are refused while portfolio exposure is at or above this percentage.
    pub max_exposure_pct: Decimal,
}

/// What the bridge knows of a symbol's ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerView {
    /// No ledger entry (or no readable position_amt).
    Missing,
    /// The ledger's signed position_amt.
    Known(Decimal),
    /// A ledger hash whose position_amt cannot be read: the gate fails closed.
    Unreadable,
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
    Exposure {
        exposure_pct: Decimal,
        max_pct: Decimal,
    },
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
            Self::Exposure { .. } => "exposure",
            Self::Stale { .. } => "stale",
            Self::LedgerUnreadable => "ledger_unreadable",
        }
    }
}

/// The gate's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateOutcome {
    /// Publish; `ledger_missing_open` marks a BUY let through without a ledger (the fix).
    Publish {
        ledger_missing_open: bool,
    },
    Skip(SkipReason),
}

/// Decides whether an intent for `symbol`/`side` is published.
pub fn gate(cfg: &GateConfig, symbol: &Symbol, side: Side, ledger: LedgerView, exposure_pct: Decimal) -> GateOutcome {
    if !cfg.allowlist.contains(symbol) {
        return GateOutcome::Skip(SkipReason::NotAllowlisted);
    }
    // A corrupt ledger is not a missing one: a BUY must not open as LEDGER_MISSING_OPEN, a SELL
    // must not trust an amount it cannot read.
    if ledger == LedgerView::Unreadable {
        return GateOutcome::Skip(SkipReason::LedgerUnreadable);
    }
    match side {
        Side::Buy => {
            if ledger == LedgerView::Missing && cfg.require_ledger_for_open {
                return GateOutcome::Skip(SkipReason::StrictLedgerMissingBuy);
            }
            if exposure_pct >= cfg.max_exposure_pct {
                return GateOutcome::Skip(SkipReason::Exposure {
                    exposure_pct,
                    max_pct: cfg.max_exposure_pct,
                });
            }
            GateOutcome::Publish {
                ledger_missing_open: ledger == LedgerView::Missing,
            }
        }
        Side::Sell => {
            if cfg.skip_flat_sell {
                match ledger {
                    LedgerView::Missing | LedgerView::Unreadable => {
                        return GateOutcome::Skip(SkipReason::LedgerMissingSell)
                    }
                    LedgerView::Known(amt) if amt.abs() <= cfg.flat_eps => {
                        return GateOutcome::Skip(SkipReason::LedgerFlatSell { last_known_amt: amt })
                    }
                    LedgerView::Known(_) => {}
                }
            }
            GateOutcome::Publish {
                ledger_missing_open: false,
            }
        }
    }
}

/// Portfolio exposure in percent: total ledger notional over equity (0 when equity is unknown).
pub fn exposure_pct(total_notional_usd: Decimal, equity_usd: Option<Decimal>) -> Decimal {
    match equity_usd {
        Some(equity) if equity > Decimal::ZERO => (total_notional_usd / equity * Decimal::ONE_HUNDRED).round_dp(4),
        _ => Decimal::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sym(s: &str) -> Symbol {
        Symbol::parse(s).unwrap()
    }

    fn cfg(strict: bool) -> GateConfig {
        GateConfig {
            allowlist: ["BTCUSDT", "ZECUSDT"].iter().map(|s| sym(s)).collect(),
            require_ledger_for_open: strict,
            skip_flat_sell: true,
            flat_eps: Decimal::ZERO,
            max_exposure_pct: Decimal::from(80),
        }
    }

    const NO_EXPOSURE: Decimal = Decimal::ZERO;

    #[test]
    fn not_allowlisted_is_skipped_first() {
        let out = gate(
            &cfg(false),
            &sym("DOGEUSDT"),
            Side::Buy,
            LedgerView::Known(Decimal::ONE),
            NO_EXPOSURE,
        );
        assert_eq!(out, GateOutcome::Skip(SkipReason::NotAllowlisted));
    }

    #[test]
    fn buy_without_ledger_is_published_by_default() {
        let out = gate(
            &cfg(false),
            &sym("BTCUSDT"),
            Side::Buy,
            LedgerView::Missing,
            NO_EXPOSURE,
        );
        assert_eq!(
            out,
            GateOutcome::Publish {
                ledger_missing_open: true
            }
        );
    }

    #[test]
    fn buy_without_ledger_is_skipped_in_strict_mode() {
        let out = gate(&cfg(true), &sym("BTCUSDT"), Side::Buy, LedgerView::Missing, NO_EXPOSURE);
        assert_eq!(out, GateOutcome::Skip(SkipReason::StrictLedgerMissingBuy));
        let with_ledger = gate(
            &cfg(true),
            &sym("BTCUSDT"),
            Side::Buy,
            LedgerView::Known(Decimal::ZERO),
            NO_EXPOSURE,
        );
        assert_eq!(
            with_ledger,
            GateOutcome::Publish {
                ledger_missing_open: false
            }
        );
    }

    #[test]
    fn sell_needs_a_non_flat_ledger() {
        let c = cfg(false);
        assert_eq!(
            gate(&c, &sym("BTCUSDT"), Side::Sell, LedgerView::Missing, NO_EXPOSURE),
            GateOutcome::Skip(SkipReason::LedgerMissingSell)
        );
        assert_eq!(
            gate(
                &c,
                &sym("BTCUSDT"),
                Side::Sell,
                LedgerView::Known(Decimal::ZERO),
                NO_EXPOSURE
            ),
            GateOutcome::Skip(SkipReason::LedgerFlatSell {
                last_known_amt: Decimal::ZERO
            })
        );
        assert_eq!(
            gate(
                &c,
                &sym("BTCUSDT"),
                Side::Sell,
                LedgerView::Known(Decimal::ONE),
                NO_EXPOSURE
            ),
            GateOutcome::Publish {
                ledger_missing_open: false
            }
        );
    }

    #[test]
    fn flat_eps_widens_flat() {
        let mut c = cfg(false);
        c.flat_eps = Decimal::new(1, 3);
        let out = gate(
            &c,
            &sym("BTCUSDT"),
            Side::Sell,
            LedgerView::Known(Decimal::new(-1, 3)),
            NO_EXPOSURE,
        );
        assert!(matches!(out, GateOutcome::Skip(SkipReason::LedgerFlatSell { .. })));
    }

    #[test]
    fn sells_pass_without_ledger_when_flat_sell_skipping_is_off() {
        let mut c = cfg(false);
        c.skip_flat_sell = false;
        let out = gate(&c, &sym("BTCUSDT"), Side::Sell, LedgerView::Missing, NO_EXPOSURE);
        assert_eq!(
            out,
            GateOutcome::Publish {
                ledger_missing_open: false
            }
        );
    }

    #[test]
    fn exposure_blocks_buys_only() {
        let c = cfg(false);
        let high = Decimal::from(80);
        assert!(matches!(
            gate(&c, &sym("BTCUSDT"), Side::Buy, LedgerView::Known(Decimal::ONE), high),
            GateOutcome::Skip(SkipReason::Exposure { .. })
        ));
        assert_eq!(
            gate(&c, &sym("BTCUSDT"), Side::Sell, LedgerView::Known(Decimal::ONE), high),
            GateOutcome::Publish {
                ledger_missing_open: false
            }
        );
    }

    #[test]
    fn an_unreadable_ledger_fails_closed_for_both_sides() {
        for side in [Side::Buy, Side::Sell] {
            assert_eq!(
                gate(&cfg(false), &sym("BTCUSDT"), side, LedgerView::Unreadable, NO_EXPOSURE),
                GateOutcome::Skip(SkipReason::LedgerUnreadable)
            );
        }
    }

    #[test]
    fn exposure_is_notional_over_equity() {
        assert_eq!(
            exposure_pct(Decimal::from(8000), Some(Decimal::from(10000))),
            Decimal::from(80)
        );
        assert_eq!(exposure_pct(Decimal::from(8000), None), Decimal::ZERO);
        assert_eq!(exposure_pct(Decimal::from(8000), Some(Decimal::ZERO)), Decimal::ZERO);
    }

    proptest! {
        /// Default mode never blocks a BUY on a missing ledger; strict mode always does.
        #[test]
        fn side_split_holds(strict in any::<bool>(), exposure in 0u32..79) {
            let out = gate(&cfg(strict), &sym("BTCUSDT"), Side::Buy, LedgerView::Missing, Decimal::from(exposure));
            if strict {
                prop_assert_eq!(out, GateOutcome::Skip(SkipReason::StrictLedgerMissingBuy));
            } else {
                prop_assert_eq!(out, GateOutcome::Publish { ledger_missing_open: true });
            }
            let sell = gate(&cfg(strict), &sym("BTCUSDT"), Side::Sell, LedgerView::Missing, Decimal::from(exposure));
            prop_assert_eq!(sell, GateOutcome::Skip(SkipReason::LedgerMissingSell));
        }
    }
}
