//! Netting position maths shared by the ledger and the paper venue, and the ledger hash codec.

use crate::fields::Fields;
use rust_decimal::{Decimal, RoundingStrategy};

use crate::types::Side;

/// Decimal places kept for average entry prices (quantities and PnL stay exact).
pub const AVG_PRICE_DP: u32 = 12;

/// Direction of a position as the ledger and snapshots spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionSide {
    Long,
    Short,
    Flat,
}

impl PositionSide {
    /// The side implied by a signed amount.
    pub fn of(amt: Decimal) -> Self {
        if amt > Decimal::ZERO {
            Self::Long
        } else if amt < Decimal::ZERO {
            Self::Short
        } else {
            Self::Flat
        }
    }

    /// LONG, SHORT or FLAT.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Long => "LONG",
            Self::Short => "SHORT",
            Self::Flat => "FLAT",
        }
    }
}

/// A netted position: signed amount, average entry price and realized PnL (after fees).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    pub amt: Decimal,
    pub avg_entry: Decimal,
    pub realized_pnl: Decimal,
}

impl Position {
    /// Applies one fill. Its four cases, by what the fill does to the position:
    ///
    /// - **increase** (from flat, or the same direction): the average entry is the
    ///   quantity-weighted average of the old entry and the fill's price;
    /// - **reduce** (the other direction, less than the position): the closed part realizes
    ///   `qty × (price − entry)` (sign by direction), the entry stays;
    /// - **close** (exactly the position): the closed part realizes, the entry goes to 0;
    /// - **flip** (more than the position): the whole position realizes, and the remainder
    ///   opens at the fill's price.
    ///
    /// The fee is taken off the realized PnL in every case.
    ///
    /// ```
    /// use quantum_model::position::Position;
    /// use quantum_model::types::Side;
    /// use rust_decimal::Decimal;
    ///
    /// let d = |v: i64| Decimal::from(v);
    /// let mut p = Position::default();
    /// p.apply(Side::Buy, d(1), d(100), d(0)); // increase from flat
    /// p.apply(Side::Buy, d(1), d(120), d(0)); // increase
    /// assert_eq!((p.amt, p.avg_entry), (d(2), d(110)));
    /// p.apply(Side::Sell, d(1), d(130), d(1)); // reduce: +20, less the fee
    /// assert_eq!((p.amt, p.avg_entry, p.realized_pnl), (d(1), d(110), d(19)));
    /// p.apply(Side::Sell, d(3), d(100), d(0)); // flip: -10, short 2 from 100
    /// assert_eq!((p.amt, p.avg_entry, p.realized_pnl), (d(-2), d(100), d(9)));
    /// p.apply(Side::Buy, d(2), d(90), d(0)); // close: +20
    /// assert_eq!((p.amt, p.avg_entry, p.realized_pnl), (d(0), d(0), d(29)));
    /// ```
    pub fn apply(&mut self, side: Side, qty: Decimal, price: Decimal, fee: Decimal) {
        let signed = side.sign() * qty;
        let increases = self.amt.is_zero() || self.amt.is_sign_positive() == signed.is_sign_positive();
        if increases {
            self.increase(signed, qty, price);
        } else {
            self.reduce_close_or_flip(signed, qty, price);
        }
        self.realized_pnl -= fee;
    }

    /// From flat or in the position's direction: the entry becomes the weighted average.
    fn increase(&mut self, signed: Decimal, qty: Decimal, price: Decimal) {
        let new_amt = self.amt + signed;
        let cost = self.amt.abs() * self.avg_entry + qty * price;
        self.avg_entry = round_price(cost / new_amt.abs());
        self.amt = new_amt;
    }

    /// Against the position: the closed part realizes; a close leaves no entry, a flip opens
    /// the remainder at the fill's price, a reduce keeps the entry.
    fn reduce_close_or_flip(&mut self, signed: Decimal, qty: Decimal, price: Decimal) {
        let new_amt = self.amt + signed;
        let closed = qty.min(self.amt.abs());
        let direction = if self.amt.is_sign_positive() {
            Decimal::ONE
        } else {
            Decimal::NEGATIVE_ONE
        };
        self.realized_pnl += closed * (price - self.avg_entry) * direction;
        if new_amt.is_zero() {
            self.avg_entry = Decimal::ZERO;
        } else if new_amt.is_sign_positive() != self.amt.is_sign_positive() {
            self.avg_entry = price;
        }
        self.amt = new_amt;
    }

    /// Unrealized PnL at a mark price.
    pub fn unrealized(&self, mark: Decimal) -> Decimal {
        self.amt * (mark - self.avg_entry)
    }

    /// LONG, SHORT or FLAT.
    pub fn side(&self) -> PositionSide {
        PositionSide::of(self.amt)
    }
}

fn round_price(value: Decimal) -> Decimal {
    value
        .round_dp_with_strategy(AVG_PRICE_DP, RoundingStrategy::MidpointNearestEven)
        .normalize()
}

/// A ledger hash (`quantum:position:ledger:<SYMBOL>`), as the ledger service writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerEntry {
    pub position: Position,
    pub leverage: Decimal,
    pub last_order_id: String,
    pub last_fill_id: String,
    /// Number of fills applied.
    pub fills: u64,
    /// Unix milliseconds of the last change.
    pub last_update_ts: u64,
    /// What made the last change: `fill`, `reconcile` or `seed`.
    pub source: String,
    /// Bumped on every write; writers compare-and-set on it.
    pub version: u64,
    /// The venue sequence number up to which every fill is applied or given up as missing
    /// (0 before the first numbered fill).
    pub venue_seq: u64,
    /// Numbers at or below `venue_seq` whose fills never came before the ledger moved on
    /// (oldest first, at most [`MAX_MISSING_SEQS`]): such a fill is still applied if it comes.
    pub venue_seq_missing: Vec<u64>,
}

/// How many given-up sequence numbers a ledger remembers. A fill older than all of them that
/// comes after all is taken for a duplicate (reconcile repairs the position then).
pub const MAX_MISSING_SEQS: usize = 64;

impl LedgerEntry {
    /// Hash fields; `notional_usd` is |amount| at the average entry, as the exposure gate reads it.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let p = &self.position;
        vec![
            ("position_amt", p.amt.normalize().to_string()),
            ("side", p.side().as_str().to_string()),
            ("avg_entry_price", p.avg_entry.normalize().to_string()),
            ("realized_pnl", p.realized_pnl.normalize().to_string()),
            ("notional_usd", (p.amt.abs() * p.avg_entry).normalize().to_string()),
            ("leverage", self.leverage.normalize().to_string()),
            ("last_order_id", self.last_order_id.clone()),
            ("last_fill_id", self.last_fill_id.clone()),
            ("fills", self.fills.to_string()),
            ("last_update_ts", self.last_update_ts.to_string()),
            ("source", self.source.clone()),
            ("version", self.version.to_string()),
            ("venue_seq", self.venue_seq.to_string()),
            (
                "venue_seq_missing",
                self.venue_seq_missing
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ]
    }

    /// Whether the fill numbered `venue_seq` is in this ledger: at or below its sequence and
    /// not given up as missing.
    pub fn has_applied(&self, venue_seq: u64) -> bool {
        venue_seq <= self.venue_seq && !self.venue_seq_missing.contains(&venue_seq)
    }

    /// Reads a ledger hash; `None` for an empty hash (no ledger). Unreadable numbers read as
    /// `Err` naming the field, so a corrupted ledger is reported rather than silently zeroed.
    pub fn from_hash(pairs: &[(String, String)]) -> Option<Result<Self, String>> {
        if pairs.is_empty() {
            return None;
        }
        let get = |name: &str| pairs.field(name);
        let dec = |name: &'static str| -> Result<Decimal, String> {
            Ok(pairs.decimal(name).map_err(|e| e.to_string())?.unwrap_or_default())
        };
        let int = |name: &'static str| -> Result<u64, String> {
            Ok(pairs.integer(name).map_err(|e| e.to_string())?.unwrap_or_default())
        };
        Some((|| {
            Ok(Self {
                position: Position {
                    amt: dec("position_amt")?,
                    avg_entry: dec("avg_entry_price")?,
                    realized_pnl: dec("realized_pnl")?,
                },
                leverage: pairs
                    .decimal("leverage")
                    .map_err(|e| e.to_string())?
                    .unwrap_or(Decimal::ONE),
                last_order_id: get("last_order_id").unwrap_or_default().to_string(),
                last_fill_id: get("last_fill_id").unwrap_or_default().to_string(),
                fills: int("fills")?,
                last_update_ts: int("last_update_ts")?,
                source: get("source").unwrap_or_default().to_string(),
                version: int("version")?,
                venue_seq: match int("venue_seq")? {
                    seq if seq <= crate::fill::MAX_VENUE_SEQ => seq,
                    seq => return Err(format!("venue_seq {seq} is beyond 10^15")),
                },
                venue_seq_missing: get("venue_seq_missing")
                    .unwrap_or_default()
                    .split(',')
                    .filter(|v| !v.is_empty())
                    .map(|v| {
                        v.parse::<u64>()
                            .map_err(|_| format!("venue_seq_missing {v:?} is not an integer"))
                    })
                    .collect::<Result<_, _>>()?,
            })
        })())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn open_add_reduce_close() {
        let mut p = Position::default();
        p.apply(Side::Buy, d("1"), d("100"), d("0"));
        p.apply(Side::Buy, d("1"), d("110"), d("0"));
        assert_eq!((p.amt, p.avg_entry), (d("2"), d("105")));
        p.apply(Side::Sell, d("1.5"), d("115"), d("0.5"));
        assert_eq!(p.amt, d("0.5"));
        assert_eq!(p.avg_entry, d("105"));
        assert_eq!(p.realized_pnl, d("14.5")); // 1.5 * 10 - 0.5
        p.apply(Side::Sell, d("0.5"), d("95"), d("0"));
        assert_eq!(p.side(), PositionSide::Flat);
        assert_eq!(p.avg_entry, Decimal::ZERO);
        assert_eq!(p.realized_pnl, d("9.5"));
    }

    #[test]
    fn flip_opens_remainder_at_fill_price() {
        let mut p = Position::default();
        p.apply(Side::Buy, d("1"), d("100"), d("0"));
        p.apply(Side::Sell, d("3"), d("90"), d("0"));
        assert_eq!(p.amt, d("-2"));
        assert_eq!(p.avg_entry, d("90"));
        assert_eq!(p.realized_pnl, d("-10"));
        assert_eq!(p.side(), PositionSide::Short);
        assert_eq!(p.unrealized(d("80")), d("20"));
    }

    #[test]
    fn ledger_hash_round_trips_and_reports_corruption() {
        let entry = LedgerEntry {
            position: Position {
                amt: d("-1.5"),
                avg_entry: d("64000.5"),
                realized_pnl: d("-3.25"),
            },
            leverage: d("5"),
            last_order_id: "qib-x".into(),
            last_fill_id: "qib-x-1".into(),
            fills: 4,
            last_update_ts: 1_700_000_000_000,
            source: "fill".into(),
            version: 7,
            venue_seq: 12,
            venue_seq_missing: vec![3, 9],
        };
        assert!(entry.has_applied(12) && entry.has_applied(4));
        assert!(!entry.has_applied(3) && !entry.has_applied(13), "missing, or not yet");
        let pairs: Vec<(String, String)> = entry.to_fields().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert!(pairs.contains(&("side".to_string(), "SHORT".to_string())));
        assert_eq!(LedgerEntry::from_hash(&pairs).unwrap().unwrap(), entry);
        assert!(LedgerEntry::from_hash(&[]).is_none());
        let bad = vec![("position_amt".to_string(), "abc".to_string())];
        assert!(LedgerEntry::from_hash(&bad)
            .unwrap()
            .unwrap_err()
            .contains("position_amt"));
        let bad = vec![("venue_seq".to_string(), "18446744073709551615".to_string())];
        assert!(LedgerEntry::from_hash(&bad).unwrap().unwrap_err().contains("10^15"));
        let bad = vec![("venue_seq_missing".to_string(), "3,x".to_string())];
        assert!(LedgerEntry::from_hash(&bad)
            .unwrap()
            .unwrap_err()
            .contains("venue_seq_missing"));
    }

    fn fill_strategy() -> impl Strategy<Value = (bool, u32, u32, u32)> {
        (any::<bool>(), 1u32..10_000, 1u32..1_000_000, 0u32..100)
    }

    proptest! {
        /// The position amount is exactly the signed sum of fill quantities, whatever the order.
        #[test]
        fn amount_is_exact_signed_sum(fills in proptest::collection::vec(fill_strategy(), 0..40)) {
            let mut p = Position::default();
            let mut sum = Decimal::ZERO;
            for (buy, q, px, fee) in &fills {
                let side = if *buy { Side::Buy } else { Side::Sell };
                let qty = Decimal::new(*q as i64, 3);
                p.apply(side, qty, Decimal::new(*px as i64, 2), Decimal::new(*fee as i64, 2));
                sum += side.sign() * qty;
            }
            prop_assert_eq!(p.amt, sum);
            prop_assert_eq!(p.side(), PositionSide::of(sum));
            if p.amt.is_zero() { prop_assert_eq!(p.avg_entry, Decimal::ZERO); }
            else { prop_assert!(p.avg_entry > Decimal::ZERO); }
        }

        /// Realized plus unrealized PnL equals the cash flows of all fills marked at any price,
        /// up to the rounding of the average entry price.
        #[test]
        fn pnl_conserves_cash(fills in proptest::collection::vec(fill_strategy(), 1..30), mark in 1u32..1_000_000) {
            let mark = Decimal::new(mark as i64, 2);
            let mut p = Position::default();
            let mut cash = Decimal::ZERO;
            for (buy, q, px, fee) in &fills {
                let side = if *buy { Side::Buy } else { Side::Sell };
                let (qty, price, fee) = (Decimal::new(*q as i64, 3), Decimal::new(*px as i64, 2), Decimal::new(*fee as i64, 2));
                p.apply(side, qty, price, fee);
                cash += side.sign() * qty * (mark - price) - fee;
            }
            let total = p.realized_pnl + p.unrealized(mark);
            let tolerance = Decimal::new(1, 6) * Decimal::from(fills.len() as u64) * Decimal::from(1_000u64);
            prop_assert!((total - cash).abs() <= tolerance, "total {} cash {}", total, cash);
        }
    }
}
