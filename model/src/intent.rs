//! Trade intents: every format production publishes, parsed into one typed [`Intent`].

use rust_decimal::{Decimal, RoundingStrategy};
use thiserror::Error;

use crate::stream_entry::{truncate, StreamEntry};
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
    #[error("quantity {qty} is above the maximum {max} for {symbol} (INTENT_BRIDGE_MAX_QTY)")]
    QuantityAboveCap { symbol: Symbol, qty: Decimal, max: Decimal },
    #[error("notional {notional} USD is above the maximum {max} for {symbol} (INTENT_BRIDGE_MAX_NOTIONAL_USD)")]
    NotionalAboveCap {
        symbol: Symbol,
        notional: Decimal,
        max: Decimal,
    },
    #[error("the quantity derived from {0} overflows (an absurd size or a near-zero price)")]
    QuantityOverflow(&'static str),
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
            Self::QuantityAboveCap { .. } | Self::QuantityOverflow(_) => "quantity_out_of_range",
            Self::NotionalAboveCap { .. } => "notional_out_of_range",
            Self::Field(ParseError::OutOfRange { field, .. }) => match *field {
                "quantity" | "qty" => "quantity_out_of_range",
                "leverage" => "absurd_leverage",
                "size" | "position_usd" | "position_size_usd" => "notional_out_of_range",
                _ => "price_out_of_range",
            },
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
#[derive(Debug, Clone, Default)]
pub struct IntentLimits {
    /// Highest leverage accepted (Binance USD-M allows 125); `None`: 125.
    pub max_leverage: Option<Decimal>,
    /// Largest order quantity (base units), per symbol with a global default.
    pub max_qty: SymbolCaps,
    /// Largest order notional in USD, per symbol with a global default.
    pub max_notional_usd: SymbolCaps,
}

impl IntentLimits {
    fn leverage_cap(&self) -> Decimal {
        self.max_leverage.unwrap_or(Decimal::from(125))
    }
}

/// A cap with per-symbol overrides: `INTENT_BRIDGE_MAX_QTY=1000000,BTCUSDT=5,ETHUSDT=100`
/// (a bare number is the default for every other symbol; none: no cap but the pipeline's own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SymbolCaps {
    pub default: Option<Decimal>,
    pub per_symbol: std::collections::HashMap<Symbol, Decimal>,
}

impl SymbolCaps {
    /// Parses `<default>[,SYMBOL=<cap>...]` (either part optional).
    ///
    /// # Errors
    /// A value that is not a positive number, or a bad symbol.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut caps = Self::default();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (symbol, value) = match part.split_once('=') {
                Some((s, v)) => (Some(Symbol::parse(s).map_err(|e| e.to_string())?), v),
                None => (None, part),
            };
            let cap = parse_decimal("cap", value).map_err(|e| e.to_string())?;
            if cap <= Decimal::ZERO {
                return Err(format!("cap {value} must be greater than zero"));
            }
            match symbol {
                Some(s) => {
                    caps.per_symbol.insert(s, cap);
                }
                None => caps.default = Some(cap),
            }
        }
        Ok(caps)
    }

    /// The cap for `symbol`, if any.
    pub fn for_symbol(&self, symbol: &Symbol) -> Option<Decimal> {
        self.per_symbol.get(symbol).copied().or(self.default)
    }
}

/// The intent's fields, from flat stream fields or from a JSON `payload` field.
struct IntentFields(Vec<(String, String)>);

impl IntentFields {
    fn from_entry(entry: &StreamEntry) -> Result<Self, IntentError> {
        let Some(payload) = entry.get("payload") else {
            return Ok(Self(entry.fields.clone()));
        };
        // Raw values keep a number's exact text: through f64, 0.123456789012345678 would change.
        let map: std::collections::BTreeMap<String, Box<serde_json::value::RawValue>> =
            serde_json::from_str(payload).map_err(|e| match serde_json::from_str::<serde_json::Value>(payload) {
                Ok(other) => IntentError::InvalidPayload(format!("found {}", json_kind(&other))),
                Err(_) => IntentError::InvalidPayload(e.to_string()),
            })?;
        let mut fields = Vec::with_capacity(map.len());
        for (key, raw) in map {
            let text = raw.get();
            let value = match text.as_bytes().first() {
                Some(b'n') => continue,
                Some(b'"') => {
                    serde_json::from_str::<String>(text).map_err(|e| IntentError::InvalidPayload(e.to_string()))?
                }
                Some(b'{' | b'[') => return Err(IntentError::NonScalarField(key)),
                _ => text.to_string(),
            };
            fields.push((key, value));
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

/// BUY or SELL, from `side` or `action` (both present: they must agree).
fn side_of(f: &IntentFields) -> Result<Side, IntentError> {
    Ok(match (f.get("side"), f.get("action")) {
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
    })
}

/// How the intent is sized. Precedence follows the Python bridge: explicit quantity first,
/// then the USD forms.
fn sizing_of(f: &IntentFields, leverage: Decimal) -> Result<Sizing, IntentError> {
    Ok(if let Some(qty) = f.positive("quantity")? {
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
    })
}

impl Intent {
    /// Parses a trade.intent entry in any of the accepted formats.
    ///
    /// # Errors
    /// The first field that is missing, oversized or invalid, named.
    pub fn parse(entry: &StreamEntry, limits: &IntentLimits) -> Result<Self, IntentError> {
        entry.check_limits().map_err(IntentError::Oversized)?;
        let f = IntentFields::from_entry(entry)?;

        let symbol = Symbol::parse(f.get("symbol").ok_or(IntentError::MissingSymbol)?)?;
        let side = side_of(&f)?;

        let leverage = f.decimal("leverage")?.unwrap_or(Decimal::ONE);
        if leverage < Decimal::ONE || leverage > limits.leverage_cap() {
            return Err(IntentError::AbsurdLeverage {
                value: leverage,
                max: limits.leverage_cap(),
            });
        }

        let sizing = sizing_of(&f, leverage)?;
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
    ///
    /// # Errors
    /// No mark for a mark-sized intent, a quantity that rounds to zero or overflows.
    pub fn quantity(&self, mark: Option<Decimal>) -> Result<Decimal, IntentError> {
        let (notional, price) = match self.sizing {
            Sizing::Quantity(qty) => return Ok(qty),
            Sizing::Notional { usd, price } => (usd, price),
            // Both factors are at most 10^12 and the leverage at most 125: no overflow.
            Sizing::MarginAtMark { usd, leverage } => (usd * leverage, self.mark(mark)?),
            Sizing::NotionalAtMark { usd } => (usd, self.mark(mark)?),
        };
        // A near-zero price can blow the quotient past the decimal range.
        let exact = notional
            .checked_div(price)
            .filter(|q| q.abs() <= crate::types::MAX_MAGNITUDE)
            .ok_or(IntentError::QuantityOverflow("the USD size and the price"))?;
        let qty = exact
            .round_dp_with_strategy(DERIVED_QTY_DP, RoundingStrategy::ToZero)
            .normalize();
        if qty.is_zero() {
            return Err(IntentError::QuantityRoundsToZero(exact));
        }
        Ok(qty)
    }

    /// The order's notional in USD, when a price is known: the USD size it was given, or the
    /// quantity at its limit price or at `mark`.
    pub fn notional_usd(&self, qty: Decimal, mark: Option<Decimal>) -> Option<Decimal> {
        match self.sizing {
            Sizing::Notional { usd, .. } | Sizing::NotionalAtMark { usd } => Some(usd),
            Sizing::MarginAtMark { usd, leverage } => Some(usd * leverage),
            // qty and price are both at most 10^12: the product fits.
            Sizing::Quantity(_) => self.limit_price.or(mark).map(|p| qty * p),
        }
    }

    /// Refuses an order above the caps for its symbol (fat fingers).
    ///
    /// # Errors
    /// [`IntentError::QuantityAboveCap`] or [`IntentError::NotionalAboveCap`].
    pub fn check_caps(&self, qty: Decimal, mark: Option<Decimal>, limits: &IntentLimits) -> Result<(), IntentError> {
        if let Some(max) = limits.max_qty.for_symbol(&self.symbol).filter(|max| qty > *max) {
            return Err(IntentError::QuantityAboveCap {
                symbol: self.symbol.clone(),
                qty,
                max,
            });
        }
        let cap = limits.max_notional_usd.for_symbol(&self.symbol);
        if let (Some(max), Some(notional)) = (cap, self.notional_usd(qty, mark)) {
            if notional > max {
                return Err(IntentError::NotionalAboveCap {
                    symbol: self.symbol.clone(),
                    notional: notional.round_dp(2),
                    max,
                });
            }
        }
        Ok(())
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
    fn json_numbers_keep_their_exact_text() {
        let i = parse(&[(
            "payload",
            r#"{"symbol":"BTCUSDT","side":"BUY","qty":0.123456789012345678,"stop_loss":null,"take_profit":1e3}"#,
        )])
        .unwrap();
        assert_eq!(i.quantity(None).unwrap(), d("0.123456789012345678"));
        assert_eq!(i.stop_loss, None);
        assert_eq!(i.take_profit, Some(d("1000")));
        assert_eq!(
            reason(&[("payload", r#"{"symbol":"BTCUSDT","side":["BUY"]}"#)]),
            "invalid_payload"
        );
        assert!(parse(&[("payload", "[1]")])
            .unwrap_err()
            .to_string()
            .contains("found an array"));
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
    fn absurd_numbers_get_a_reason_instead_of_overflowing() {
        // Each of these panicked the executor or the bridge before.
        assert_eq!(
            reason(&[("symbol", "BTCUSDT"), ("side", "BUY"), ("quantity", "1e25")]),
            "quantity_out_of_range"
        );
        assert_eq!(
            reason(&[
                ("symbol", "BTCUSDT"),
                ("side", "BUY"),
                ("position_usd", "1e27"),
                ("leverage", "125")
            ]),
            "notional_out_of_range"
        );
        let tiny_price = parse(&[
            ("symbol", "BTCUSDT"),
            ("side", "BUY"),
            ("size", "1e11"),
            ("price", "1e-20"),
        ])
        .unwrap();
        assert_eq!(tiny_price.quantity(None).unwrap_err().reason(), "quantity_out_of_range");
        assert_eq!(
            reason(&[
                ("symbol", "BTCUSDT"),
                ("side", "BUY"),
                ("qty", "1"),
                ("stop_loss", "1e20")
            ]),
            "price_out_of_range"
        );
        assert_eq!(
            reason(&[
                ("symbol", "BTCUSDT"),
                ("side", "BUY"),
                ("qty", "1"),
                ("leverage", "1e20")
            ]),
            "absurd_leverage"
        );
    }

    #[test]
    fn caps_refuse_fat_fingers_per_symbol() {
        let limits = IntentLimits {
            max_qty: SymbolCaps::parse("1000,BTCUSDT=5").unwrap(),
            max_notional_usd: SymbolCaps::parse("1000000").unwrap(),
            ..IntentLimits::default()
        };
        let i = parse(&[("symbol", "BTCUSDT"), ("side", "BUY"), ("qty", "6")]).unwrap();
        let err = i.check_caps(d("6"), None, &limits).unwrap_err();
        assert_eq!(err.reason(), "quantity_out_of_range");
        assert!(err.to_string().contains("maximum 5 for BTCUSDT"), "{err}");
        assert!(i.check_caps(d("5"), Some(d("65000")), &limits).is_ok());
        // 20 at the mark is 1.3M USD: above the notional cap.
        let eth = parse(&[("symbol", "ETHUSDT"), ("side", "BUY"), ("qty", "20")]).unwrap();
        assert!(
            eth.check_caps(d("20"), None, &limits).is_ok(),
            "no price known: qty caps only"
        );
        assert_eq!(
            eth.check_caps(d("500"), Some(d("2600")), &limits).unwrap_err().reason(),
            "notional_out_of_range"
        );
        let usd = parse(&[("symbol", "ETHUSDT"), ("side", "BUY"), ("position_size_usd", "2000000")]).unwrap();
        assert_eq!(
            usd.check_caps(d("1"), None, &limits).unwrap_err().reason(),
            "notional_out_of_range"
        );
        assert!(SymbolCaps::parse("0").is_err());
        assert!(SymbolCaps::parse("BTC/USDT=1").is_err());
        assert_eq!(SymbolCaps::parse("").unwrap(), SymbolCaps::default());
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

/// Arbitrary field maps through every step that does arithmetic on input-derived values:
/// parse → size → caps → plan → plan fields → the executor's re-read → a fill's fee and the
/// position it leaves. Nothing panics, and each intent ends in a plan or a reason.
#[cfg(test)]
mod pipeline_props {
    use super::*;
    use crate::plan::Plan;
    use crate::position::Position;
    use proptest::prelude::*;

    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("NaN".to_string()),
            Just("-inf".to_string()),
            Just("0".to_string()),
            Just("-1".to_string()),
            Just("1e-28".to_string()),
            Just("1e12".to_string()),
            Just("1e25".to_string()),
            Just("79228162514264337593543950335".to_string()),
            (1u64..u64::MAX).prop_map(|n| n.to_string()),
            (-30i32..30, 1u32..999).prop_map(|(e, m)| format!("{m}e{e}")),
            "[0-9]{1,3}\\.[0-9]{1,30}",
            ".{0,6}",
        ]
    }

    fn fields() -> impl Strategy<Value = Vec<(String, String)>> {
        let key = prop_oneof![
            Just("quantity"),
            Just("qty"),
            Just("size"),
            Just("price"),
            Just("position_usd"),
            Just("position_size_usd"),
            Just("entry_price"),
            Just("leverage"),
            Just("stop_loss"),
            Just("take_profit"),
            Just("type"),
        ];
        (
            prop_oneof![Just("BUY"), Just("SELL"), Just("LONG"), Just("SHORT"), Just("x")],
            proptest::collection::vec((key, number()), 1..6),
        )
            .prop_map(|(side, pairs)| {
                let mut out = vec![
                    ("symbol".to_string(), "BTCUSDT".to_string()),
                    ("side".into(), side.into()),
                ];
                out.extend(pairs.into_iter().map(|(k, v)| (k.to_string(), v)));
                out
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn no_input_panics_any_stage(fields in fields(), mark in number(), fill_price in 1u64..10_000_000) {
            let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let limits = IntentLimits {
                max_notional_usd: SymbolCaps::parse("1000000").unwrap(),
                ..IntentLimits::default()
            };
            let mark = crate::types::parse_decimal("mark", &mark).ok().filter(|m| *m > Decimal::ZERO);
            let outcome = Intent::parse(&StreamEntry::new("1-0", &pairs), &limits).and_then(|intent| {
                let qty = intent.quantity(mark)?;
                intent.check_caps(qty, mark, &limits)?;
                Ok((intent, qty))
            });
            let (intent, qty) = match outcome {
                Err(e) => {
                    prop_assert!(!e.reason().is_empty());
                    return Ok(());
                }
                Ok(ok) => ok,
            };
            let plan = Plan::from_intent(&intent, qty, 1);
            let fields = plan.to_fields();
            let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let back = Plan::parse(&StreamEntry::new("2-0", &pairs));
            prop_assert_eq!(back.as_ref().ok(), Some(&plan), "the executor reads what the bridge wrote");
            // The executor's arithmetic on a fill: fee at 5 bps, twice, into a position.
            let price = Decimal::from(fill_price);
            let fee = (qty * price * Decimal::from(5) / Decimal::from(10_000)).round_dp(8);
            let mut position = Position::default();
            position.apply(plan.side, qty, price, fee);
            position.apply(plan.side, qty, price, fee);
            prop_assert!(position.amt.abs() <= crate::types::MAX_MAGNITUDE * Decimal::TWO);
        }
    }
}
