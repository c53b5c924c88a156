//! Trade intents: every format production publishes, parsed into one typed [`Intent`].

use rust_decimal::{Decimal, RoundingStrategy};
use thiserror::Error;

use crate::fields::{truncate, StreamEntry};
use crate::types::{parse_bool, parse_decimal, OrderType, ParseError, Side, Symbol};

/// Decimal places kept when a quantity is derived from a USD size and a price.
pub const DERIVED_QTY_DP: u32 = 8;

/// Why an intent was rejected; each variant names the input that was wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IntentError {
    #[error("{0}")]
    Oversized(String),
    #[error("payload is not a JSON object: {0}")]
    InvalidPayload(String),
    #[error("field {0:?} in payload is not a scalar")]
    NonScalarField(String),
    #[error("missing symbol")]
    MissingSymbol,
    #[error("missing side (neither side nor action is set)")]
    MissingSide,
    #[error("side {side:?} and action {action:?} disagree")]
    ConflictingSide { side: String, action: String },
    #[error(
        "side {0:?} asks to open a short, which this pipeline does not do (BUY/LONG opens or adds to a long, SELL reduces or closes it)"
    )]
    ShortNotSupported(String),
    #[error(
        "missing quantity: none of quantity, qty, position_usd+leverage, size+price, position_size_usd (with or without entry_price)"
    )]
    MissingQuantity,
    #[error("{field} must be greater than zero, got {value}")]
    NotPositive { field: &'static str, value: Decimal },
    #[error("leverage {value} is outside 1..={max}")]
    AbsurdLeverage { value: Decimal, max: Decimal },
    #[error("LIMIT order without a price")]
    LimitWithoutPrice,
    #[error("no mark price known for {0} (needed to size position_usd / position_size_usd without entry_price)")]
    MarkPriceUnavailable(Symbol),
    #[error("quantity {0} rounds to zero at {DERIVED_QTY_DP} decimal places")]
    QuantityRoundsToZero(Decimal),
    #[error(transparent)]
    Field(#[from] ParseError),
}

impl IntentError {
    /// A short, stable reason code for DLQ entries, metrics and log lines.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Oversized(_) => "oversized_or_binary",
            Self::InvalidPayload(_) | Self::NonScalarField(_) => "invalid_payload",
            Self::MissingSymbol => "missing_symbol",
            Self::MissingSide => "missing_side",
            Self::ConflictingSide { .. } => "conflicting_side",
            Self::ShortNotSupported(_) => "short_not_supported",
            Self::MissingQuantity => "missing_quantity",
            Self::NotPositive { .. } | Self::QuantityRoundsToZero(_) => "non_positive_quantity",
            Self::AbsurdLeverage { .. } => "absurd_leverage",
            Self::LimitWithoutPrice => "limit_without_price",
            Self::MarkPriceUnavailable(_) => "mark_price_unavailable",
            Self::Field(ParseError::Symbol(_)) => "invalid_symbol",
            Self::Field(ParseError::Side(_)) => "unknown_side",
            Self::Field(ParseError::OrderType(_)) => "invalid_order_type",
            Self::Field(ParseError::NotFinite { .. }) => "non_finite_number",
            Self::Field(ParseError::Bool { .. }) => "invalid_bool",
            Self::Field(_) => "invalid_number",
        }
    }
}

/// How the intent sizes the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sizing {
    /// `quantity` or `qty`: base units.
    Quantity(Decimal),
    /// `size` (USD) with `price`, or `position_size_usd` with `entry_price`.
    Notional { usd: Decimal, price: Decimal },
    /// `position_usd` margin times `leverage`, priced at the venue's current mark.
    MarginAtMark { usd: Decimal, leverage: Decimal },
    /// `position_size_usd` without `entry_price`: a USD notional priced at the current mark.
    NotionalAtMark { usd: Decimal },
}

impl std::fmt::Display for Sizing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Quantity(qty) => write!(f, "qty={qty}"),
            Self::Notional { usd, price } => write!(f, "usd={usd} price={price}"),
            Self::MarginAtMark { usd, leverage } => write!(f, "position_usd={usd} leverage={leverage} (at the mark)"),
            Self::NotionalAtMark { usd } => write!(f, "position_size_usd={usd} (at the mark)"),
        }
    }
}

/// Optional fields producers send that plans carry through unchanged when present (the later
/// Python bridge did the same); never required, never interpreted.
pub const CARRIED_FIELDS: [&str; 8] = [
    "confidence",
    "atr_value",
    "volatility_factor",
    "regime",
    "funding_rate",
    "strategy",
    "model",
    "timeframe",
];

/// Longest carried value; a longer one is cut (the field is informational).
pub const MAX_CARRIED_LEN: usize = 128;

/// A validated trade intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// The trade.intent entry id.
    pub intent_id: String,
    pub symbol: Symbol,
    pub side: Side,
    pub sizing: Sizing,
    pub order_type: OrderType,
    /// The limit price of LIMIT orders.
    pub limit_price: Option<Decimal>,
    pub reduce_only: bool,
    pub leverage: Decimal,
    pub stop_loss: Option<Decimal>,
    pub take_profit: Option<Decimal>,
    /// The [`CARRIED_FIELDS`] present on the intent, in that order.
    pub carried: Vec<(&'static str, String)>,
}

/// Bounds an intent must respect.
#[derive(Debug, Clone, Copy)]
pub struct IntentLimits {
    /// Highest leverage accepted (Binance USD-M allows 125).
    pub max_leverage: Decimal,
}

impl Default for IntentLimits {
    fn default() -> Self {
        Self {
            max_leverage: Decimal::from(125),
        }
    }
}

/// The intent's fields, from flat stream fields or from a JSON `payload` field.
struct IntentFields(Vec<(String, String)>);

impl IntentFields {
    fn from_entry(entry: &StreamEntry) -> Result<Self, IntentError> {
        let Some(payload) = entry.get("payload") else {
            return Ok(Self(entry.fields.clone()));
        };
        let json: serde_json::Value =
            serde_json::from_str(payload).map_err(|e| IntentError::InvalidPayload(e.to_string()))?;
        let serde_json::Value::Object(map) = json else {
            return Err(IntentError::InvalidPayload(format!("found {}", json_kind(&json))));
        };
        let mut fields = Vec::with_capacity(map.len());
        for (key, value) in map {
            let text = match value {
                serde_json::Value::Null => continue,
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => return Err(IntentError::NonScalarField(key)),
            };
            fields.push((key, text));
        }
        Ok(Self(fields))
    }

    /// A field's value, treating empty strings and Python's `None`/`null` spellings as absent.
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("none") && !v.eq_ignore_ascii_case("null"))
    }

    fn decimal(&self, name: &'static str) -> Result<Option<Decimal>, IntentError> {
        self.get(name)
            .map(|raw| parse_decimal(name, raw))
            .transpose()
            .map_err(Into::into)
    }

    fn positive(&self, name: &'static str) -> Result<Option<Decimal>, IntentError> {
        match self.decimal(name)? {
            Some(value) if value <= Decimal::ZERO => Err(IntentError::NotPositive { field: name, value }),
            other => Ok(other),
        }
    }

    fn pair(&self, a: &'static str, b: &'static str) -> Result<Option<(Decimal, Decimal)>, IntentError> {
        if self.get(a).is_none() || self.get(b).is_none() {
            return Ok(None);
        }
        Ok(self.positive(a)?.zip(self.positive(b)?))
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

impl Intent {
    /// Parses a trade.intent entry in any of the accepted formats.
    pub fn parse(entry: &StreamEntry, limits: &IntentLimits) -> Result<Self, IntentError> {
        entry.check_limits().map_err(IntentError::Oversized)?;
        let f = IntentFields::from_entry(entry)?;

        let symbol = Symbol::parse(f.get("symbol").ok_or(IntentError::MissingSymbol)?)?;
        let side = match (f.get("side"), f.get("action")) {
            (None, None) => return Err(IntentError::MissingSide),
            (Some(s), None) | (None, Some(s)) => parse_side(s)?,
            (Some(side), Some(action)) => {
                let (a, b) = (parse_side(side)?, parse_side(action)?);
                if a != b {
                    return Err(IntentError::ConflictingSide {
                        side: side.to_string(),
                        action: action.to_string(),
                    });
                }
                a
            }
        };

        let leverage = f.decimal("leverage")?.unwrap_or(Decimal::ONE);
        if leverage < Decimal::ONE || leverage > limits.max_leverage {
            return Err(IntentError::AbsurdLeverage {
                value: leverage,
                max: limits.max_leverage,
            });
        }

        // Precedence follows the Python bridge: explicit quantity first, then the USD forms.
        let sizing = if let Some(qty) = f.positive("quantity")? {
            Sizing::Quantity(qty)
        } else if let Some(qty) = f.positive("qty")? {
            Sizing::Quantity(qty)
        } else if let (Some(usd), true) = (f.positive("position_usd")?, f.get("leverage").is_some()) {
            Sizing::MarginAtMark { usd, leverage }
        } else if let Some((usd, price)) = f.pair("size", "price")? {
            Sizing::Notional { usd, price }
        } else if let Some((usd, price)) = f.pair("position_size_usd", "entry_price")? {
            Sizing::Notional { usd, price }
        } else if let Some(usd) = f.positive("position_size_usd")? {
            Sizing::NotionalAtMark { usd }
        } else {
            return Err(IntentError::MissingQuantity);
        };

        let order_type = f
            .get("type")
            .map(OrderType::parse)
            .transpose()?
            .unwrap_or(OrderType::Market);
        let limit_price = match order_type {
            OrderType::Market => None,
            OrderType::Limit => Some(f.positive("price")?.ok_or(IntentError::LimitWithoutPrice)?),
        };
        let reduce_only = f
            .get("reduceOnly")
            .or_else(|| f.get("reduce_only"))
            .map(|raw| parse_bool("reduceOnly", raw))
            .transpose()?
            .unwrap_or(false);

        Ok(Self {
            intent_id: entry.id.clone(),
            symbol,
            side,
            sizing,
            order_type,
            limit_price,
            reduce_only,
            leverage,
            stop_loss: f.positive("stop_loss")?,
            take_profit: f.positive("take_profit")?,
            carried: CARRIED_FIELDS
                .iter()
                .filter_map(|name| f.get(name).map(|v| (*name, truncate(v, MAX_CARRIED_LEN).to_string())))
                .collect(),
        })
    }

    /// Whether sizing this intent needs the venue's current mark price.
    pub fn needs_mark_price(&self) -> bool {
        matches!(self.sizing, Sizing::MarginAtMark { .. } | Sizing::NotionalAtMark { .. })
    }

    /// The order quantity in base units; `mark` is the current mark price when known.
    pub fn quantity(&self, mark: Option<Decimal>) -> Result<Decimal, IntentError> {
        let (notional, price) = match self.sizing {
            Sizing::Quantity(qty) => return Ok(qty),
            Sizing::Notional { usd, price } => (usd, price),
            Sizing::MarginAtMark { usd, leverage } => (usd * leverage, self.mark(mark)?),
            Sizing::NotionalAtMark { usd } => (usd, self.mark(mark)?),
        };
        let exact = notional / price;
        let qty = exact
            .round_dp_with_strategy(DERIVED_QTY_DP, RoundingStrategy::ToZero)
            .normalize();
        if qty.is_zero() {
            return Err(IntentError::QuantityRoundsToZero(exact));
        }
        Ok(qty)
    }

    fn mark(&self, mark: Option<Decimal>) -> Result<Decimal, IntentError> {
        mark.filter(|m| *m > Decimal::ZERO)
            .ok_or_else(|| IntentError::MarkPriceUnavailable(self.symbol.clone()))
    }
}

/// An intent's side: BUY/SELL as the contract spells them, plus producers' `LONG` (an entry,
/// i.e. BUY). `SHORT` would open a short, which this pipeline does not do.
fn parse_side(raw: &str) -> Result<Side, IntentError> {
    match raw.trim().to_ascii_uppercase().as_str() {
        "LONG" => Ok(Side::Buy),
        "SHORT" => Err(IntentError::ShortNotSupported(raw.trim().to_string())),
        _ => Ok(Side::parse(raw)?),
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

    fn parse(fields: &[(&str, &str)]) -> Result<Intent, IntentError> {
        Intent::parse(&StreamEntry::new("1-0", fields), &IntentLimits::default())
    }

    fn reason(fields: &[(&str, &str)]) -> &'static str {
        parse(fields).unwrap_err().reason()
    }

    #[test]
    fn flat_quantity_intent() {
        let i = parse(&[("symbol", "btcusdt"), ("side", "buy"), ("quantity", "0.5")]).unwrap();
        assert_eq!(i.symbol.as_str(), "BTCUSDT");
        assert_eq!(i.side, Side::Buy);
        assert_eq!(i.quantity(None).unwrap(), d("0.5"));
        assert_eq!(i.order_type, OrderType::Market);
        assert_eq!(i.leverage, Decimal::ONE);
        assert!(!i.reduce_only);
        assert_eq!((i.stop_loss, i.take_profit), (None, None));
    }

    #[test]
    fn action_and_qty_aliases() {
        let i = parse(&[("symbol", "ETHUSDT"), ("action", "Sell"), ("qty", "2")]).unwrap();
        assert_eq!(i.side, Side::Sell);
        assert_eq!(i.quantity(None).unwrap(), d("2"));
    }

    #[test]
    fn json_payload_with_numbers_and_options() {
        let payload = r#"{"symbol":"SOLUSDT","side":"BUY","qty":1.25,"type":"limit","price":150.5,
            "reduceOnly":true,"leverage":5,"stop_loss":140,"take_profit":"170.5","confidence":0.7}"#;
        let i = parse(&[("payload", payload)]).unwrap();
        assert_eq!(i.order_type, OrderType::Limit);
        assert_eq!(i.limit_price, Some(d("150.5")));
        assert!(i.reduce_only);
        assert_eq!(i.leverage, d("5"));
        assert_eq!(i.stop_loss, Some(d("140")));
        assert_eq!(i.take_profit, Some(d("170.5")));
        assert_eq!(i.quantity(None).unwrap(), d("1.25"));
    }

    #[test]
    fn size_with_price_is_usd_notional() {
        let i = parse(&[
            ("symbol", "BTCUSDT"),
            ("side", "BUY"),
            ("size", "100"),
            ("price", "40000"),
        ])
        .unwrap();
        assert_eq!(i.quantity(None).unwrap(), d("0.0025"));
    }

    #[test]
    fn position_size_usd_with_entry_price() {
        let i = parse(&[
            ("symbol", "ETHUSDT"),
            ("side", "BUY"),
            ("position_size_usd", "300"),
            ("entry_price", "3000"),
        ])
        .unwrap();
        assert_eq!(i.quantity(None).unwrap(), d("0.1"));
    }

    #[test]
    fn position_usd_with_leverage_uses_mark_price() {
        let i = parse(&[
            ("symbol", "BTCUSDT"),
            ("side", "BUY"),
            ("position_usd", "300"),
            ("leverage", "2"),
        ])
        .unwrap();
        assert!(i.needs_mark_price());
        assert_eq!(i.leverage, d("2"));
        // (300 * 2) / 60000 = 0.01
        assert_eq!(i.quantity(Some(d("60000"))).unwrap(), d("0.01"));
        assert_eq!(i.quantity(None).unwrap_err().reason(), "mark_price_unavailable");
    }

    #[test]
    fn producers_long_is_a_buy_and_short_is_refused() {
        for long in ["LONG", "long", " Long "] {
            let i = parse(&[("symbol", "BTCUSDT"), ("side", long), ("qty", "1")]).unwrap();
            assert_eq!(i.side, Side::Buy);
        }
        let agree = parse(&[("symbol", "BTCUSDT"), ("side", "long"), ("action", "BUY"), ("qty", "1")]).unwrap();
        assert_eq!(agree.side, Side::Buy);
        for short in ["SHORT", "short"] {
            let err = parse(&[("symbol", "BTCUSDT"), ("side", short), ("qty", "1")]).unwrap_err();
            assert_eq!(err.reason(), "short_not_supported");
            assert!(err.to_string().contains("does not do"), "{err}");
        }
        assert_eq!(
            reason(&[
                ("symbol", "BTCUSDT"),
                ("side", "LONG"),
                ("action", "SELL"),
                ("qty", "1")
            ]),
            "conflicting_side"
        );
    }

    #[test]
    fn position_size_usd_without_entry_price_is_sized_at_the_mark() {
        let i = parse(&[("symbol", "ETHUSDT"), ("side", "LONG"), ("position_size_usd", "100")]).unwrap();
        assert_eq!(i.sizing, Sizing::NotionalAtMark { usd: d("100") });
        assert!(i.needs_mark_price());
        // No leverage factor: 100 / 3000, rounded down at 8 dp.
        assert_eq!(i.quantity(Some(d("3000"))).unwrap(), d("0.03333333"));
        assert_eq!(i.quantity(None).unwrap_err().reason(), "mark_price_unavailable");
        assert_eq!(
            i.quantity(Some(Decimal::ZERO)).unwrap_err().reason(),
            "mark_price_unavailable"
        );
    }

    #[test]
    fn producer_extras_are_carried_when_present() {
        let payload = r#"{"symbol":"SOLUSDT","side":"LONG","qty":1,"confidence":0.72,"atr_value":3.1,
            "volatility_factor":1.2,"regime":"trend_up","funding_rate":-0.0001,"unknown_field":"x"}"#;
        let i = parse(&[("payload", payload)]).unwrap();
        assert_eq!(
            i.carried,
            vec![
                ("confidence", "0.72".to_string()),
                ("atr_value", "3.1".to_string()),
                ("volatility_factor", "1.2".to_string()),
                ("regime", "trend_up".to_string()),
                ("funding_rate", "-0.0001".to_string()),
            ]
        );
        let plain = parse(&[("symbol", "SOLUSDT"), ("side", "BUY"), ("qty", "1"), ("regime", "None")]).unwrap();
        assert!(
            plain.carried.is_empty(),
            "absent and None-valued extras are not carried"
        );
    }

    #[test]
    fn derived_quantities_round_toward_zero() {
        let i = parse(&[("symbol", "BTCUSDT"), ("side", "BUY"), ("size", "100"), ("price", "3")]).unwrap();
        assert_eq!(i.quantity(None).unwrap(), d("33.33333333"));
        let tiny = parse(&[
            ("symbol", "BTCUSDT"),
            ("side", "BUY"),
            ("size", "0.000000001"),
            ("price", "3"),
        ])
        .unwrap();
        assert_eq!(tiny.quantity(None).unwrap_err().reason(), "non_positive_quantity");
    }

    #[test]
    fn python_none_spellings_are_absent() {
        let i = parse(&[
            ("symbol", "BTCUSDT"),
            ("side", "BUY"),
            ("qty", "1"),
            ("stop_loss", "None"),
            ("take_profit", ""),
        ])
        .unwrap();
        assert_eq!((i.stop_loss, i.take_profit), (None, None));
    }

    #[test]
    fn every_malformed_case_has_a_specific_reason() {
        assert_eq!(reason(&[("side", "BUY"), ("qty", "1")]), "missing_symbol");
        assert_eq!(
            reason(&[("symbol", "BTC/USDT"), ("side", "BUY"), ("qty", "1")]),
            "invalid_symbol"
        );
        assert_eq!(reason(&[("symbol", "BTCUSDT"), ("qty", "1")]), "missing_side");
        assert_eq!(
            reason(&[("symbol", "BTCUSDT"), ("side", "HOLD"), ("qty", "1")]),
            "unknown_side"
        );
        assert_eq!(
            reason(&[("symbol", "BTCUSDT"), ("side", "BUY"), ("action", "SELL"), ("qty", "1")]),
            "conflicting_side"
        );
        assert_eq!(reason(&[("symbol", "BTCUSDT"), ("side", "BUY")]), "missing_quantity");
        assert_eq!(
            reason(&[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "0")]),
            "non_positive_quantity"
        );
        assert_eq!(
            reason(&[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "-1")]),
            "non_positive_quantity"
        );
        assert_eq!(
            reason(&[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "NaN")]),
            "non_finite_number"
        );
        assert_eq!(
            reason(&[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "inf")]),
            "non_finite_number"
        );
        assert_eq!(
            reason(&[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "1.2.3")]),
            "invalid_number"
        );
        assert_eq!(
            reason(&[("symbol", "BTCUSDT"), ("side", "BUY"), ("size", "abc"), ("price", "1")]),
            "invalid_number"
        );
        assert_eq!(
            reason(&[("symbol", "BTCUSDT"), ("side", "BUY"), ("size", "100"), ("price", "0")]),
            "non_positive_quantity"
        );
        assert_eq!(
            reason(&[
                ("symbol", "BTCUSDT"),
                ("side", "BUY"),
                ("qty", "1"),
                ("leverage", "500")
            ]),
            "absurd_leverage"
        );
        assert_eq!(
            reason(&[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "1"), ("leverage", "0")]),
            "absurd_leverage"
        );
        assert_eq!(
            reason(&[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "1"), ("type", "STOP")]),
            "invalid_order_type"
        );
        assert_eq!(
            reason(&[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "1"), ("type", "LIMIT")]),
            "limit_without_price"
        );
        assert_eq!(
            reason(&[
                ("symbol", "BTCUSDT"),
                ("side", "BUY"),
                ("qty", "1"),
                ("reduceOnly", "maybe")
            ]),
            "invalid_bool"
        );
        assert_eq!(reason(&[("payload", "{not json")]), "invalid_payload");
        assert_eq!(reason(&[("payload", "[1,2]")]), "invalid_payload");
        assert_eq!(reason(&[("payload", r#"{"symbol":{"a":1}}"#)]), "invalid_payload");
        let big = "9".repeat(20_000);
        assert_eq!(
            reason(&[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", big.as_str())]),
            "oversized_or_binary"
        );
    }

    proptest! {
        /// Arbitrary field soup never panics: it parses or yields a reason.
        #[test]
        fn arbitrary_fields_never_panic(fields in proptest::collection::vec(
            (prop_oneof![Just("symbol".to_string()), Just("side".to_string()), Just("qty".to_string()),
                         Just("size".to_string()), Just("price".to_string()), Just("leverage".to_string()),
                         Just("payload".to_string()), Just("type".to_string()), ".{0,8}"],
             ".{0,24}"), 0..8)) {
            let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            match parse(&pairs) {
                Ok(intent) => { let _ = intent.quantity(Some(Decimal::ONE)); }
                Err(e) => prop_assert!(!e.reason().is_empty()),
            }
        }

        /// A parsed quantity is always strictly positive.
        #[test]
        fn quantities_are_positive(usd in 1u64..10_000_000, price in 1u64..10_000_000) {
            let (usd, price) = (usd.to_string(), price.to_string());
            if let Ok(i) = parse(&[("symbol", "BTCUSDT"), ("side", "BUY"), ("size", &usd), ("price", &price)]) {
                if let Ok(q) = i.quantity(None) { prop_assert!(q > Decimal::ZERO); }
            }
        }
    }
}
