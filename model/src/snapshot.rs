//! Exchange-truth position snapshots (`quantum:position:snapshot:<SYMBOL>`).

use crate::fields::Fields;
use rust_decimal::Decimal;

use crate::position::PositionSide;

/// The venue's view of one symbol's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Signed position size (negative = short).
    pub position_amt: Decimal,
    pub entry_price: Decimal,
    pub mark_price: Decimal,
    pub unrealized_pnl: Decimal,
    pub leverage: Decimal,
    /// Unix milliseconds when the venue reported it.
    pub ts: u64,
    /// The venue sequence number of the last fill the position includes (see
    /// [`crate::fill::Fill::venue_seq`]); `None` where the venue does not number its fills.
    pub venue_seq: Option<u64>,
}

impl Snapshot {
    /// Hash fields as written to Redis.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("position_amt", self.position_amt.normalize().to_string()),
            ("side", PositionSide::of(self.position_amt).as_str().to_string()),
            ("entry_price", self.entry_price.normalize().to_string()),
            ("mark_price", self.mark_price.normalize().to_string()),
            ("unrealized_pnl", self.unrealized_pnl.normalize().to_string()),
            ("leverage", self.leverage.normalize().to_string()),
            ("ts", self.ts.to_string()),
        ];
        if let Some(seq) = self.venue_seq {
            fields.push(("venue_seq", seq.to_string()));
        }
        fields
    }

    /// Reads a snapshot hash; `None` when it lacks a readable position_amt or ts, or holds an
    /// unreadable venue_seq.
    pub fn from_hash(fields: &(impl Fields + ?Sized)) -> Option<Self> {
        let get = |name: &str| fields.field(name);
        let dec = |name: &'static str| fields.decimal(name).ok().flatten();
        Some(Self {
            position_amt: dec("position_amt")?,
            entry_price: dec("entry_price").unwrap_or_default(),
            mark_price: dec("mark_price").unwrap_or_default(),
            unrealized_pnl: dec("unrealized_pnl").unwrap_or_default(),
            leverage: dec("leverage").unwrap_or(Decimal::ONE),
            ts: get("ts")?.parse().ok()?,
            // Present but unreadable or absurd: the whole snapshot is, rather than a reconcile
            // that would leave the ledger's sequence behind what it includes.
            venue_seq: match get("venue_seq") {
                None => None,
                Some(v) => Some(v.parse().ok().filter(|seq| *seq <= crate::fill::MAX_VENUE_SEQ)?),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(venue_seq: &str) -> Vec<(String, String)> {
        [("position_amt", "1"), ("ts", "5"), ("venue_seq", venue_seq)]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_unreadable_venue_seq_makes_the_snapshot_unreadable() {
        assert_eq!(Snapshot::from_hash(&pairs("7")).unwrap().venue_seq, Some(7));
        assert!(Snapshot::from_hash(&pairs("x")).is_none());
        assert!(Snapshot::from_hash(&pairs("18446744073709551615")).is_none());
        let mut without = pairs("1");
        without.pop();
        assert_eq!(Snapshot::from_hash(&without).unwrap().venue_seq, None);
    }
}
