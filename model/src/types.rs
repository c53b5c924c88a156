//! Domain newtypes and enums. Values are parsed once at the edge and carried typed afterwards.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Why a domain value could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    #[error("symbol {0:?} is not 2-20 characters of A-Z and 0-9")]
    Symbol(String),
    #[error("side {0:?} is not BUY or SELL")]
    Side(String),
    #[error("decision {0:?} is not EXECUTE, BLOCKED or SKIP")]
    Decision(String),
    #[error("order type {0:?} is not MARKET or LIMIT")]
    OrderType(String),
    #[error("plan_id {0:?} is not 16 lowercase hex characters")]
    PlanId(String),
    #[error("{field} {value:?} is not a number")]
    Number { field: &'static str, value: String },
    #[error("{field} {value:?} is not a finite number")]
    NotFinite { field: &'static str, value: String },
    #[error("{field} {value:?} is not an integer")]
    Integer { field: &'static str, value: String },
    #[error("{field} {value:?} is not a boolean")]
    Bool { field: &'static str, value: String },
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} {value} is beyond ±10^12, the largest amount the pipeline accepts")]
    OutOfRange { field: &'static str, value: String },
}

/// The largest magnitude (10^12) of any decimal the pipeline reads: quantities, prices, USD
/// amounts, ledger values. Far above any real order, and small enough that the product of two
/// such values (a notional, a fee) can never overflow `Decimal` (about 7.9·10^28), so no input
/// can make the arithmetic downstream panic.
pub const MAX_MAGNITUDE: Decimal = Decimal::from_parts(3_567_587_328, 232, 0, false, 0);

/// An exchange symbol such as `BTCUSDT`, always upper case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Symbol(String);

impl Symbol {
    /// Parses a symbol, accepting any case; rejects anything that is not 2-20 ASCII alphanumerics.
    ///
    /// # Errors
    /// Anything else.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let trimmed = raw.trim();
        let valid = (2..=20).contains(&trimmed.len()) && trimmed.bytes().all(|b| b.is_ascii_alphanumeric());
        if valid {
            Ok(Self(trimmed.to_ascii_uppercase()))
        } else {
            Err(ParseError::Symbol(raw.to_string()))
        }
    }

    /// The symbol as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Symbol {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Order side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    /// Parses BUY/SELL in any case.
    ///
    /// # Errors
    /// Anything else.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match raw.trim().to_ascii_uppercase().as_str() {
            "BUY" => Ok(Self::Buy),
            "SELL" => Ok(Self::Sell),
            _ => Err(ParseError::Side(raw.to_string())),
        }
    }

    /// The contract spelling: `BUY` or `SELL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Buy => "BUY",
            Self::Sell => "SELL",
        }
    }

    /// +1 for BUY, -1 for SELL, to sign quantities.
    pub fn sign(self) -> Decimal {
        match self {
            Self::Buy => Decimal::ONE,
            Self::Sell => Decimal::NEGATIVE_ONE,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a plan asks the executor to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Execute,
    Blocked,
    Skip,
}

impl Decision {
    /// Parses EXECUTE/BLOCKED/SKIP in any case.
    ///
    /// # Errors
    /// Anything else.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match raw.trim().to_ascii_uppercase().as_str() {
            "EXECUTE" => Ok(Self::Execute),
            "BLOCKED" => Ok(Self::Blocked),
            "SKIP" => Ok(Self::Skip),
            _ => Err(ParseError::Decision(raw.to_string())),
        }
    }

    /// The contract spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Execute => "EXECUTE",
            Self::Blocked => "BLOCKED",
            Self::Skip => "SKIP",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Order type; LIMIT orders carry a limit price and fill immediately or not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderType {
    Market,
    Limit,
}

impl OrderType {
    /// Parses MARKET/LIMIT in any case.
    ///
    /// # Errors
    /// Anything else.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match raw.trim().to_ascii_uppercase().as_str() {
            "MARKET" => Ok(Self::Market),
            "LIMIT" => Ok(Self::Limit),
            _ => Err(ParseError::OrderType(raw.to_string())),
        }
    }

    /// The contract spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Market => "MARKET",
            Self::Limit => "LIMIT",
        }
    }
}

impl fmt::Display for OrderType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Deterministic plan identifier: the first 16 hex digits of
/// sha256(`<intent entry id>|<symbol>|<side>|<qty>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PlanId(String);

impl PlanId {
    /// Derives the plan id for an intent, so a redelivered intent maps to the same plan.
    pub fn derive(intent_id: &str, symbol: &Symbol, side: Side, qty: Decimal) -> Self {
        let digest = Sha256::digest(format!("{intent_id}|{symbol}|{side}|{qty}").as_bytes());
        let mut hex = String::with_capacity(16);
        for byte in &digest[..8] {
            hex.push_str(&format!("{byte:02x}"));
        }
        Self(hex)
    }

    /// Parses a plan id as found in a stream entry.
    ///
    /// # Errors
    /// Anything but 16 hex digits.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let ok = raw.len() == 16 && raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if ok {
            Ok(Self(raw.to_string()))
        } else {
            Err(ParseError::PlanId(raw.to_string()))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first eight characters, as the operators' log lines show them.
    pub fn short(&self) -> &str {
        &self.0[..8]
    }

    /// The client order id sent to the venue: stable per plan, so a retried plan can never
    /// become a second order (Binance allows 36 characters of `[.A-Z:/a-z0-9_-]`).
    pub fn client_order_id(&self) -> OrderId {
        OrderId(format!("qib-{}", self.0))
    }
}

impl fmt::Display for PlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An order identifier (the client order id the executor derives from the plan id).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrderId(String);

impl OrderId {
    /// Wraps an order id read back from storage or a venue.
    pub fn new(raw: impl Into<String>) -> Self {
        Self(raw.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A fill identifier, unique per execution at the venue; the ledger deduplicates on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FillId(String);

impl FillId {
    /// Wraps a fill id.
    pub fn new(raw: impl Into<String>) -> Self {
        Self(raw.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FillId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a decimal from text, rejecting NaN/inf spellings with a specific error.
///
/// # Errors
/// Text that is not a finite decimal, or one beyond ±10^12.
pub fn parse_decimal(field: &'static str, raw: &str) -> Result<Decimal, ParseError> {
    let text = raw.trim();
    if text.is_empty() {
        return Err(ParseError::Empty { field });
    }
    let lower = text.to_ascii_lowercase();
    let unsigned = lower.trim_start_matches(['+', '-']);
    if matches!(unsigned, "nan" | "inf" | "infinity") {
        return Err(ParseError::NotFinite {
            field,
            value: raw.to_string(),
        });
    }
    let value = Decimal::from_str_exact(text)
        .or_else(|_| Decimal::from_scientific(text))
        .map(|d| d.normalize())
        .map_err(|_| ParseError::Number {
            field,
            value: raw.to_string(),
        })?;
    if value.abs() > MAX_MAGNITUDE {
        return Err(ParseError::OutOfRange {
            field,
            value: crate::stream_entry::truncate(text, 64).to_string(),
        });
    }
    Ok(value)
}

/// Parses a boolean the way the Python services did: true/1/yes and false/0/no, any case.
///
/// # Errors
/// Anything else.
pub fn parse_bool(field: &'static str, raw: &str) -> Result<bool, ParseError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        _ => Err(ParseError::Bool {
            field,
            value: raw.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbol_is_upper_cased_and_validated() {
        assert_eq!(Symbol::parse("btcusdt").unwrap().as_str(), "BTCUSDT");
        assert!(Symbol::parse("").is_err());
        assert!(Symbol::parse("BTC-USDT").is_err());
        assert!(Symbol::parse(&"A".repeat(21)).is_err());
    }

    #[test]
    fn plan_id_matches_the_python_derivation() {
        // sha256("1700000000000-0|BTCUSDT|BUY|0.5")[:16], computed with Python's hashlib.
        let id = PlanId::derive(
            "1700000000000-0",
            &Symbol::parse("BTCUSDT").unwrap(),
            Side::Buy,
            Decimal::new(5, 1),
        );
        let expected = {
            let d = Sha256::digest(b"1700000000000-0|BTCUSDT|BUY|0.5");
            d[..8].iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        assert_eq!(id.as_str(), expected);
        assert_eq!(id.as_str().len(), 16);
        assert!(PlanId::parse(id.as_str()).is_ok());
        assert_eq!(id.client_order_id().as_str().len(), 20);
    }

    #[test]
    fn decimals_reject_non_finite_and_garbage() {
        assert_eq!(parse_decimal("qty", " 1.50 ").unwrap(), Decimal::new(15, 1));
        assert_eq!(parse_decimal("qty", "1e-3").unwrap(), Decimal::new(1, 3));
        for bad in ["NaN", "nan", "inf", "-Infinity", "+inf"] {
            assert!(
                matches!(parse_decimal("qty", bad), Err(ParseError::NotFinite { .. })),
                "{bad}"
            );
        }
        assert!(matches!(parse_decimal("qty", "abc"), Err(ParseError::Number { .. })));
        assert_eq!(MAX_MAGNITUDE, Decimal::from(1_000_000_000_000u64));
        assert_eq!(parse_decimal("qty", "1e12").unwrap(), MAX_MAGNITUDE);
        for absurd in ["1e25", "-1000000000001", "79228162514264337593543950335"] {
            assert!(
                matches!(parse_decimal("qty", absurd), Err(ParseError::OutOfRange { .. })),
                "{absurd}"
            );
        }
        assert!(matches!(parse_decimal("qty", ""), Err(ParseError::Empty { .. })));
    }
}
