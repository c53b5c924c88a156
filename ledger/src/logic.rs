//! Pure ledger logic: applying fills with deduplication, and the reconcile rule.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;

use quantum_common::fill::Fill;
use quantum_common::position::LedgerEntry;
use quantum_common::snapshot::Snapshot;
use quantum_common::types::Symbol;

/// One fill applied, with the position right after it (for the LEDGER_COMMIT line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedFill {
    pub fill: Fill,
    pub position_amt: Decimal,
    pub realized_pnl: Decimal,
}

/// The result of applying a symbol's fills to its ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    /// The new ledger state (version bumped) when anything was applied.
    pub entry: Option<LedgerEntry>,
    pub applied: Vec<AppliedFill>,
    /// Fills skipped because their fill_id was applied before (or twice in the input).
    pub duplicates: Vec<Fill>,
}

/// Applies `fills` (in order) to `current`, skipping fill ids in `already_applied` and repeats.
pub fn apply_fills(
    current: Option<&LedgerEntry>,
    fills: &[Fill],
    already_applied: &HashSet<String>,
    now_ms: u64,
) -> Application {
    let mut entry = current.cloned().unwrap_or_else(|| LedgerEntry {
        leverage: Decimal::ONE,
        ..LedgerEntry::default()
    });
    let mut seen: HashSet<&str> = HashSet::new();
    let mut applied = Vec::new();
    let mut duplicates = Vec::new();
    for fill in fills {
        let id = fill.fill_id.as_str();
        if already_applied.contains(id) || !seen.insert(id) {
            duplicates.push(fill.clone());
            continue;
        }
        entry.position.apply(fill.side, fill.qty, fill.price, fill.fee);
        entry.leverage = fill.leverage;
        entry.last_order_id = fill.order_id.to_string();
        entry.last_fill_id = fill.fill_id.to_string();
        entry.fills += 1;
        applied.push(AppliedFill {
            fill: fill.clone(),
            position_amt: entry.position.amt,
            realized_pnl: entry.position.realized_pnl,
        });
    }
    if applied.is_empty() {
        return Application {
            entry: None,
            applied,
            duplicates,
        };
    }
    entry.last_update_ts = now_ms.max(entry.last_update_ts);
    entry.source = "fill".into();
    entry.version += 1;
    Application {
        entry: Some(entry),
        applied,
        duplicates,
    }
}

/// A disagreement between the ledger and the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drift {
    /// The ledger's amount (`None`: no ledger yet).
    pub ledger_amt: Option<Decimal>,
    pub exchange_amt: Decimal,
}

impl Drift {
    /// Exchange minus ledger.
    pub fn size(&self) -> Decimal {
        self.exchange_amt - self.ledger_amt.unwrap_or_default()
    }
}

/// Whether the snapshot disagrees with the ledger by more than `eps`. A snapshot older than
/// the ledger's last change says nothing about the current ledger and is ignored.
pub fn detect_drift(ledger: Option<&LedgerEntry>, snapshot: &Snapshot, eps: Decimal) -> Option<Drift> {
    if let Some(entry) = ledger {
        if snapshot.ts < entry.last_update_ts {
            return None;
        }
    }
    let ledger_amt = ledger.map(|e| e.position.amt);
    let drift = Drift {
        ledger_amt,
        exchange_amt: snapshot.position_amt,
    };
    (drift.size().abs() > eps).then_some(drift)
}

/// The ledger after exchange truth wins: amount, entry price and leverage from the snapshot;
/// realized PnL and fill history kept.
pub fn reconciled(ledger: Option<&LedgerEntry>, snapshot: &Snapshot, now_ms: u64) -> LedgerEntry {
    let mut entry = ledger.cloned().unwrap_or_default();
    entry.position.amt = snapshot.position_amt;
    entry.position.avg_entry = if snapshot.position_amt.is_zero() {
        Decimal::ZERO
    } else {
        snapshot.entry_price
    };
    entry.leverage = snapshot.leverage;
    entry.last_update_ts = now_ms.max(entry.last_update_ts);
    entry.source = "reconcile".into();
    entry.version += 1;
    entry
}

/// Remembers since when each symbol's drift has been seen at the same ledger version, so a
/// drift is only acted on once it has persisted for the grace period with no fill applied.
#[derive(Debug, Default)]
pub struct DriftTracker {
    first_seen: HashMap<Symbol, (u64, Instant)>,
}

impl DriftTracker {
    /// Records a drift observation; returns true when it has persisted at least `grace`.
    pub fn observe(&mut self, symbol: &Symbol, version: u64, now: Instant, grace: Duration) -> bool {
        let seen = self.first_seen.entry(symbol.clone()).or_insert((version, now));
        if seen.0 != version {
            *seen = (version, now);
        }
        now.duration_since(seen.1) >= grace
    }

    /// Whether this is the first observation of the current drift (for logging once).
    pub fn is_new(&self, symbol: &Symbol) -> bool {
        !self.first_seen.contains_key(symbol)
    }

    /// Forgets a symbol (its drift is gone or was reconciled).
    pub fn clear(&mut self, symbol: &Symbol) {
        self.first_seen.remove(symbol);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use quantum_common::types::{FillId, OrderId, PlanId, Side};

    fn fill(id: &str, side: Side, qty: i64, price: i64) -> Fill {
        Fill {
            fill_id: FillId::new(id),
            order_id: OrderId::new(format!("o-{id}")),
            plan_id: PlanId::parse("0123456789abcdef").unwrap(),
            symbol: Symbol::parse("BTCUSDT").unwrap(),
            side,
            qty: Decimal::from(qty),
            price: Decimal::from(price),
            fee: Decimal::ZERO,
            leverage: Decimal::from(2),
            ts: 1,
        }
    }

    fn snapshot(amt: i64, ts: u64) -> Snapshot {
        Snapshot {
            position_amt: Decimal::from(amt),
            entry_price: Decimal::from(100),
            mark_price: Decimal::from(101),
            unrealized_pnl: Decimal::ZERO,
            leverage: Decimal::from(3),
            ts,
        }
    }

    #[test]
    fn first_fill_creates_the_ledger() {
        let app = apply_fills(None, &[fill("a", Side::Buy, 2, 100)], &HashSet::new(), 10);
        let entry = app.entry.unwrap();
        assert_eq!(entry.position.amt, Decimal::from(2));
        assert_eq!((entry.fills, entry.version, entry.last_fill_id.as_str()), (1, 1, "a"));
        assert_eq!(entry.source, "fill");
    }

    #[test]
    fn duplicates_are_skipped_in_input_and_history() {
        let applied: HashSet<String> = ["a".to_string()].into();
        let fills = [
            fill("a", Side::Buy, 1, 100),
            fill("b", Side::Buy, 1, 100),
            fill("b", Side::Buy, 1, 100),
        ];
        let app = apply_fills(None, &fills, &applied, 10);
        assert_eq!(app.applied.len(), 1);
        assert_eq!(app.duplicates.len(), 2);
        assert_eq!(app.entry.unwrap().position.amt, Decimal::ONE);
    }

    #[test]
    fn nothing_new_means_no_write() {
        let applied: HashSet<String> = ["a".to_string()].into();
        let app = apply_fills(None, &[fill("a", Side::Buy, 1, 100)], &applied, 10);
        assert!(app.entry.is_none());
    }

    #[test]
    fn drift_rules() {
        let ledger = apply_fills(None, &[fill("a", Side::Buy, 2, 100)], &HashSet::new(), 50)
            .entry
            .unwrap();
        assert_eq!(detect_drift(Some(&ledger), &snapshot(2, 60), Decimal::ZERO), None);
        let d = detect_drift(Some(&ledger), &snapshot(3, 60), Decimal::ZERO).unwrap();
        assert_eq!(d.size(), Decimal::ONE);
        // A snapshot older than the ledger's last change is ignored.
        assert_eq!(detect_drift(Some(&ledger), &snapshot(3, 40), Decimal::ZERO), None);
        // Exchange has a position the ledger never saw: drift, and reconcile creates the ledger.
        let d = detect_drift(None, &snapshot(5, 1), Decimal::ZERO).unwrap();
        assert_eq!(d.ledger_amt, None);
        let r = reconciled(None, &snapshot(5, 1), 70);
        assert_eq!(
            (r.position.amt, r.leverage, r.version, r.source.as_str()),
            (Decimal::from(5), Decimal::from(3), 1, "reconcile")
        );
        assert_eq!(detect_drift(None, &snapshot(0, 1), Decimal::ZERO), None);
    }

    #[test]
    fn reconcile_keeps_history_and_bumps_version() {
        let ledger = apply_fills(None, &[fill("a", Side::Buy, 2, 100)], &HashSet::new(), 50)
            .entry
            .unwrap();
        let r = reconciled(Some(&ledger), &snapshot(0, 60), 70);
        assert_eq!(r.position.amt, Decimal::ZERO);
        assert_eq!(r.position.avg_entry, Decimal::ZERO);
        assert_eq!((r.fills, r.version), (1, 2));
    }

    #[test]
    fn drift_must_persist_at_one_version() {
        let sym = Symbol::parse("BTCUSDT").unwrap();
        let mut t = DriftTracker::default();
        let t0 = Instant::now();
        let grace = Duration::from_secs(5);
        assert!(!t.observe(&sym, 1, t0, grace));
        assert!(!t.observe(&sym, 1, t0 + Duration::from_secs(4), grace));
        // A fill landed (version moved): the clock restarts.
        assert!(!t.observe(&sym, 2, t0 + Duration::from_secs(6), grace));
        assert!(t.observe(&sym, 2, t0 + Duration::from_secs(11), grace));
    }

    proptest! {
        /// Replaying any prefix of the fills again changes nothing: exactly-once by fill id.
        #[test]
        fn replay_is_idempotent(sides in proptest::collection::vec((any::<bool>(), 1i64..100, 1i64..1000), 1..30), cut in 0usize..30) {
            let fills: Vec<Fill> = sides.iter().enumerate()
                .map(|(i, (buy, q, p))| fill(&format!("f{i}"), if *buy { Side::Buy } else { Side::Sell }, *q, *p))
                .collect();
            let once = apply_fills(None, &fills, &HashSet::new(), 5).entry.unwrap();
            let cut = cut.min(fills.len());
            let applied: HashSet<String> = fills.iter().map(|f| f.fill_id.to_string()).collect();
            let replay = apply_fills(Some(&once), &fills[..cut], &applied, 9);
            prop_assert!(replay.entry.is_none());
            prop_assert_eq!(replay.duplicates.len(), cut);
            // Applying in two halves equals applying at once.
            let mid = fills.len() / 2;
            let first = apply_fills(None, &fills[..mid], &HashSet::new(), 5).entry;
            let first_ids: HashSet<String> = fills[..mid].iter().map(|f| f.fill_id.to_string()).collect();
            let second = apply_fills(first.as_ref(), &fills, &first_ids, 5).entry.unwrap();
            prop_assert_eq!(second.position, once.position);
            prop_assert_eq!(second.fills, once.fills);
        }
    }
}
