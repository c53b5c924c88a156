//! Fills on `quantum:stream:ledger.commit`: one entry per execution at the venue.

use crate::fields::Fields;
use rust_decimal::Decimal;
use thiserror::Error;

use crate::stream_entry::StreamEntry;
use crate::types::{parse_decimal, FillId, OrderId, ParseError, PlanId, Side, Symbol};

/// Why a ledger.commit entry could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FillError {
    #[error("{0}")]
    Oversized(String),
    #[error("fill is missing field {0}")]
    Missing(&'static str),
    #[error(transparent)]
    Field(#[from] ParseError),
    #[error("{field} must be greater than zero, got {value}")]
    NotPositive { field: &'static str, value: Decimal },
    #[error("fee_asset must be an asset name (letters and digits), got {0:?}")]
    BadAsset(String),
    #[error("venue_seq must be a whole number from 1 to 10^15, got {0:?}")]
    BadSequence(String),
}

/// The largest venue sequence number taken for real (a venue numbering its fills past this
/// is corrupt); keeps the ledger's sequence arithmetic far from overflow.
pub const MAX_VENUE_SEQ: u64 = 1_000_000_000_000_000;

/// At most 32 characters of a rejected value, for its error message.
fn truncate_value(value: &str) -> String {
    value.chars().take(32).collect()
}

/// One execution of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fill {
    pub fill_id: FillId,
    pub order_id: OrderId,
    pub plan_id: PlanId,
    pub symbol: Symbol,
    pub side: Side,
    pub qty: Decimal,
    pub price: Decimal,
    /// Fee paid, in `fee_asset`.
    pub fee: Decimal,
    /// The fee's asset when the venue names one (Binance: `commissionAsset`, USDT or BNB
    /// ...); `None`: the quote asset.
    pub fee_asset: Option<String>,
    pub leverage: Decimal,
    /// Unix milliseconds of the execution.
    pub ts: u64,
    /// The fill's place in the venue's sequence of fills of its symbol (1, 2, 3, ... with no
    /// gaps): the ledger applies fills in this order and deduplicates on it. `None` for fills
    /// written by an executor older than the field (deduplicated by fill id instead).
    pub venue_seq: Option<u64>,
}

impl Fill {
    /// The fee in the symbol's quote asset, the part that counts in its PnL: all of it when
    /// paid in the quote asset (or no asset named), none when paid in another (BNB).
    pub fn quote_fee(&self) -> Decimal {
        match &self.fee_asset {
            Some(asset) if !self.symbol.as_str().ends_with(asset.as_str()) => Decimal::ZERO,
            _ => self.fee,
        }
    }

    /// Flat stream fields.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("fill_id", self.fill_id.to_string()),
            ("order_id", self.order_id.to_string()),
            ("plan_id", self.plan_id.to_string()),
            ("symbol", self.symbol.to_string()),
            ("side", self.side.to_string()),
            ("qty", self.qty.to_string()),
            ("price", self.price.to_string()),
            ("fee", self.fee.to_string()),
            ("leverage", self.leverage.to_string()),
            ("ts", self.ts.to_string()),
        ];
        if let Some(asset) = &self.fee_asset {
            fields.push(("fee_asset", asset.clone()));
        }
        if let Some(seq) = self.venue_seq {
            fields.push(("venue_seq", seq.to_string()));
        }
        fields
    }

    /// Reads a fill from stream fields or a stored hash.
    ///
    /// # Errors
    /// The first field that is missing, oversized or invalid.
    pub fn parse(entry: &StreamEntry) -> Result<Self, FillError> {
        entry.check_limits().map_err(FillError::Oversized)?;
        let req = |name: &'static str| entry.text(name).ok_or(FillError::Missing(name));
        let positive = |name: &'static str| -> Result<Decimal, FillError> {
            let value = parse_decimal(name, req(name)?)?;
            if value <= Decimal::ZERO {
                return Err(FillError::NotPositive { field: name, value });
            }
            Ok(value)
        };
        Ok(Self {
            fill_id: FillId::new(req("fill_id")?),
            order_id: OrderId::new(req("order_id")?),
            plan_id: PlanId::parse(req("plan_id")?)?,
            symbol: Symbol::parse(req("symbol")?)?,
            side: Side::parse(req("side")?)?,
            qty: positive("qty")?,
            price: positive("price")?,
            fee: entry.decimal("fee")?.unwrap_or_default(),
            fee_asset: match entry.get("fee_asset") {
                None | Some("") => None,
                Some(asset) if asset.len() <= 16 && asset.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                    Some(asset.to_ascii_uppercase())
                }
                Some(other) => return Err(FillError::BadAsset(truncate_value(other))),
            },
            leverage: entry.decimal("leverage")?.unwrap_or(Decimal::ONE),
            // Informational: an unreadable time reads as 0, it decides nothing.
            ts: entry.integer("ts").ok().flatten().unwrap_or_default(),
            venue_seq: entry
                .get("venue_seq")
                .map(|v| match v.parse::<u64>() {
                    Ok(seq) if (1..=MAX_VENUE_SEQ).contains(&seq) => Ok(seq),
                    _ => Err(FillError::BadSequence(truncate_value(v))),
                })
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_round_trips() {
        let fill = Fill {
            fill_id: FillId::new("qib-0123456789abcdef-1"),
            order_id: OrderId::new("qib-0123456789abcdef"),
            plan_id: PlanId::parse("0123456789abcdef").unwrap(),
            symbol: Symbol::parse("BTCUSDT").unwrap(),
            side: Side::Sell,
            qty: Decimal::new(15, 1),
            price: Decimal::new(6500012, 2),
            fee: Decimal::new(39, 1),
            fee_asset: Some("USDT".into()),
            leverage: Decimal::from(3),
            ts: 1_700_000_000_123,
            venue_seq: Some(42),
        };
        let fields = fill.to_fields();
        let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(Fill::parse(&StreamEntry::new("1-0", &pairs)).unwrap(), fill);
    }

    /// The fields every fill must have.
    const REQUIRED: [(&str, &str); 7] = [
        ("fill_id", "f"),
        ("order_id", "o"),
        ("plan_id", "0123456789abcdef"),
        ("symbol", "BTCUSDT"),
        ("side", "BUY"),
        ("qty", "1"),
        ("price", "1"),
    ];

    #[test]
    fn bad_fills_are_specific() {
        let err = Fill::parse(&StreamEntry::new("1-0", &[("fill_id", "f")])).unwrap_err();
        assert_eq!(err, FillError::Missing("order_id"));
        let mut fields = REQUIRED.to_vec();
        for bad in ["0", "-1", "1.5", "x", "1000000000000001"] {
            fields.push(("venue_seq", bad));
            let err = Fill::parse(&StreamEntry::new("1-0", &fields)).unwrap_err();
            assert_eq!(err, FillError::BadSequence(bad.to_string()));
            fields.pop();
        }
        assert_eq!(Fill::parse(&StreamEntry::new("1-0", &fields)).unwrap().venue_seq, None);
        fields.push(("fee_asset", "BN B"));
        let err = Fill::parse(&StreamEntry::new("1-0", &fields)).unwrap_err();
        assert_eq!(err, FillError::BadAsset("BN B".into()));
    }

    #[test]
    fn only_a_fee_in_the_quote_asset_counts_in_pnl() {
        let mut fields = REQUIRED.to_vec();
        fields.push(("fee", "0.5"));
        let mut fill = Fill::parse(&StreamEntry::new("1-0", &fields)).unwrap();
        assert_eq!(fill.quote_fee(), Decimal::new(5, 1), "no asset: the quote asset");
        fill.fee_asset = Some("USDT".into());
        assert_eq!(fill.quote_fee(), Decimal::new(5, 1));
        fill.fee_asset = Some("BNB".into());
        assert_eq!(fill.quote_fee(), Decimal::ZERO);
    }
}
