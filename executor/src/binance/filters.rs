//! The exchange's trading rules of a symbol (`GET /fapi/v1/exchangeInfo`) and the pure step that
//! fits an order to them before it is sent: quantities are rounded down to the step with exact
//! decimals, limit prices to the tick, and an order that still breaks a rule is refused with the
//! filter named, so the venue never has to reject it.
//!
//! Rules applied, as Binance documents them for USD-M futures:
//! - the symbol's `status` must be `TRADING`;
//! - `LOT_SIZE` (LIMIT orders) or `MARKET_LOT_SIZE` (MARKET orders): `minQty <= qty <= maxQty`,
//!   `qty` a multiple of `stepSize`;
//! - `PRICE_FILTER`: `minPrice <= price <= maxPrice` (a zero bound is no bound), a multiple of
//!   `tickSize`;
//! - `PERCENT_PRICE`: a limit price within `markPrice × [multiplierDown, multiplierUp]`;
//! - `MIN_NOTIONAL`: `qty × price >= notional` (limit price, else the mark), except for
//!   reduce-only orders, which Binance exempts.

use std::collections::HashMap;

use rust_decimal::Decimal;
use serde::Deserialize;
use thiserror::Error;

use quantum_model::types::{OrderType, Side, Symbol};

use crate::paper::floor_to_step;

/// Quantity bounds of one lot filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lot {
    #[serde(with = "rust_decimal::serde::str")]
    pub min_qty: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub max_qty: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub step_size: Decimal,
}

/// One entry of a symbol's `filters` array; filters this venue does not use are kept as `Other`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "filterType")]
pub enum Filter {
    #[serde(rename = "PRICE_FILTER", rename_all = "camelCase")]
    Price {
        #[serde(with = "rust_decimal::serde::str")]
        min_price: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        max_price: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        tick_size: Decimal,
    },
    #[serde(rename = "LOT_SIZE")]
    Lot(Lot),
    #[serde(rename = "MARKET_LOT_SIZE")]
    MarketLot(Lot),
    #[serde(rename = "MIN_NOTIONAL")]
    MinNotional {
        #[serde(with = "rust_decimal::serde::str")]
        notional: Decimal,
    },
    #[serde(rename = "PERCENT_PRICE", rename_all = "camelCase")]
    PercentPrice {
        #[serde(with = "rust_decimal::serde::str")]
        multiplier_up: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        multiplier_down: Decimal,
    },
    #[serde(other)]
    Other,
}

/// A symbol as `exchangeInfo` lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct SymbolInfo {
    pub symbol: String,
    pub status: String,
    pub filters: Vec<Filter>,
}

/// The `exchangeInfo` reply (the parts used).
#[derive(Debug, Clone, Deserialize)]
pub struct ExchangeInfo {
    pub symbols: Vec<SymbolInfo>,
}

/// The rules of one symbol, every filter resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolRules {
    pub status: String,
    pub lot: Lot,
    pub market_lot: Lot,
    pub min_price: Decimal,
    pub max_price: Decimal,
    pub tick_size: Decimal,
    pub min_notional: Decimal,
    /// (multiplierDown, multiplierUp), when the symbol has the filter.
    pub percent_price: Option<(Decimal, Decimal)>,
}

impl SymbolRules {
    /// The rules of `info`.
    ///
    /// # Errors
    /// A filter the venue needs (`PRICE_FILTER`, `LOT_SIZE`) is missing or has a zero step.
    pub fn from_info(info: &SymbolInfo) -> Result<Self, String> {
        let mut lot = None;
        let mut market_lot = None;
        let mut price = None;
        let mut min_notional = Decimal::ZERO;
        let mut percent_price = None;
        for filter in &info.filters {
            match filter {
                Filter::Lot(l) => lot = Some(*l),
                Filter::MarketLot(l) => market_lot = Some(*l),
                Filter::Price {
                    min_price,
                    max_price,
                    tick_size,
                } => price = Some((*min_price, *max_price, *tick_size)),
                Filter::MinNotional { notional } => min_notional = *notional,
                Filter::PercentPrice {
                    multiplier_up,
                    multiplier_down,
                } => percent_price = Some((*multiplier_down, *multiplier_up)),
                Filter::Other => {}
            }
        }
        let lot = lot.ok_or_else(|| format!("{}: exchangeInfo has no LOT_SIZE filter", info.symbol))?;
        let (min_price, max_price, tick_size) =
            price.ok_or_else(|| format!("{}: exchangeInfo has no PRICE_FILTER", info.symbol))?;
        let market_lot = market_lot.unwrap_or(lot);
        if lot.step_size <= Decimal::ZERO || market_lot.step_size <= Decimal::ZERO || tick_size <= Decimal::ZERO {
            return Err(format!("{}: exchangeInfo has a zero step or tick size", info.symbol));
        }
        Ok(Self {
            status: info.status.clone(),
            lot,
            market_lot,
            min_price,
            max_price,
            tick_size,
            min_notional,
            percent_price,
        })
    }
}

/// The rules of every listed symbol; symbols with unusable rules are left out (and named).
pub fn rules_by_symbol(info: &ExchangeInfo) -> (HashMap<Symbol, SymbolRules>, Vec<String>) {
    let mut rules = HashMap::new();
    let mut unusable = Vec::new();
    for symbol in &info.symbols {
        let Ok(name) = Symbol::parse(&symbol.symbol) else {
            continue;
        };
        match SymbolRules::from_info(symbol) {
            Ok(r) => {
                rules.insert(name, r);
            }
            Err(e) => unusable.push(e),
        }
    }
    (rules, unusable)
}

/// An order as it will be sent: quantity on the step, price on the tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fitted {
    pub qty: Decimal,
    pub price: Option<Decimal>,
}

/// Why an order cannot be sent as it stands; the text names the filter.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FilterViolation {
    #[error("symbol status is {0}, not TRADING")]
    NotTrading(String),
    #[error("{filter}: quantity {qty} rounds down to {rounded} at stepSize {step}, below minQty {min}")]
    BelowMinQty {
        filter: &'static str,
        qty: Decimal,
        rounded: Decimal,
        step: Decimal,
        min: Decimal,
    },
    #[error("{filter}: quantity {qty} is above maxQty {max}")]
    AboveMaxQty {
        filter: &'static str,
        qty: Decimal,
        max: Decimal,
    },
    #[error("PRICE_FILTER: price {price} is outside [{min}, {max}]")]
    PriceOutOfRange { price: Decimal, min: Decimal, max: Decimal },
    #[error("PERCENT_PRICE: price {price} is outside [{low}, {high}] around mark {mark}")]
    PriceOutOfBand {
        price: Decimal,
        low: Decimal,
        high: Decimal,
        mark: Decimal,
    },
    #[error("MIN_NOTIONAL: notional {notional} is below {min}")]
    BelowMinNotional { notional: Decimal, min: Decimal },
    #[error("a LIMIT order needs a price")]
    LimitWithoutPrice,
    #[error("no mark price for {0}: MIN_NOTIONAL and PERCENT_PRICE cannot be checked")]
    NoMark(Symbol),
}

/// The order request's parts the filters look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitRequest<'a> {
    pub symbol: &'a Symbol,
    pub side: Side,
    pub order_type: OrderType,
    pub qty: Decimal,
    pub limit_price: Option<Decimal>,
    pub reduce_only: bool,
}

/// Fits an order to its symbol's rules at mark price `mark` (see the module doc). A limit
/// price is rounded toward the passive side (a BUY down, a SELL up), so rounding never makes
/// an order pay more than its plan allows. Pure.
///
/// # Errors
/// The first rule the order breaks after rounding.
pub fn fit(order: &FitRequest<'_>, rules: &SymbolRules, mark: Option<Decimal>) -> Result<Fitted, FilterViolation> {
    if rules.status != "TRADING" {
        return Err(FilterViolation::NotTrading(rules.status.clone()));
    }
    let qty = fit_quantity(order, rules)?;
    let price = match order.order_type {
        OrderType::Market => None,
        OrderType::Limit => Some(fit_limit_price(order, rules)?),
    };
    let needs_mark = rules.percent_price.is_some() && price.is_some()
        || (!order.reduce_only && rules.min_notional > Decimal::ZERO && price.is_none());
    let mark = match mark {
        Some(m) if m > Decimal::ZERO => Some(m),
        _ if needs_mark => return Err(FilterViolation::NoMark(order.symbol.clone())),
        _ => None,
    };
    if let (Some(price), Some((down, up)), Some(mark)) = (price, rules.percent_price, mark) {
        let (low, high) = (mark * down, mark * up);
        if price < low || price > high {
            return Err(FilterViolation::PriceOutOfBand {
                price,
                low: low.normalize(),
                high: high.normalize(),
                mark,
            });
        }
    }
    if !order.reduce_only && rules.min_notional > Decimal::ZERO {
        let at = price.or(mark).unwrap_or_default();
        let notional = (qty * at).normalize();
        if notional < rules.min_notional {
            return Err(FilterViolation::BelowMinNotional {
                notional,
                min: rules.min_notional,
            });
        }
    }
    Ok(Fitted { qty, price })
}

/// The quantity on the lot filter's step (`MARKET_LOT_SIZE` for MARKET, `LOT_SIZE` for
/// LIMIT), within its bounds.
fn fit_quantity(order: &FitRequest<'_>, rules: &SymbolRules) -> Result<Decimal, FilterViolation> {
    let (filter, lot) = match order.order_type {
        OrderType::Market => ("MARKET_LOT_SIZE", rules.market_lot),
        OrderType::Limit => ("LOT_SIZE", rules.lot),
    };
    let qty = floor_to_step(order.qty, lot.step_size);
    if qty < lot.min_qty || qty.is_zero() {
        return Err(FilterViolation::BelowMinQty {
            filter,
            qty: order.qty,
            rounded: qty,
            step: lot.step_size,
            min: lot.min_qty,
        });
    }
    if lot.max_qty > Decimal::ZERO && qty > lot.max_qty {
        return Err(FilterViolation::AboveMaxQty {
            filter,
            qty,
            max: lot.max_qty,
        });
    }
    Ok(qty)
}

/// The limit price on the tick, rounded toward the passive side, within `PRICE_FILTER`.
fn fit_limit_price(order: &FitRequest<'_>, rules: &SymbolRules) -> Result<Decimal, FilterViolation> {
    let raw = order.limit_price.ok_or(FilterViolation::LimitWithoutPrice)?;
    let ticks = raw / rules.tick_size;
    let ticks = match order.side {
        Side::Buy => ticks.floor(),
        Side::Sell => ticks.ceil(),
    };
    let price = (ticks * rules.tick_size).normalize();
    let below = price < rules.min_price || price.is_zero();
    let above = rules.max_price > Decimal::ZERO && price > rules.max_price;
    if below || above {
        return Err(FilterViolation::PriceOutOfRange {
            price,
            min: rules.min_price,
            max: rules.max_price,
        });
    }
    Ok(price)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    /// BTCUSDT's rules as Binance's exchangeInfo listed them.
    const BTC_INFO: &str = r#"{"symbols":[{"symbol":"BTCUSDT","status":"TRADING","filters":[
        {"filterType":"PRICE_FILTER","minPrice":"556.80","maxPrice":"4529764","tickSize":"0.10"},
        {"filterType":"LOT_SIZE","minQty":"0.001","maxQty":"1000","stepSize":"0.001"},
        {"filterType":"MARKET_LOT_SIZE","minQty":"0.001","maxQty":"120","stepSize":"0.001"},
        {"filterType":"MAX_NUM_ORDERS","limit":200},
        {"filterType":"MAX_NUM_ALGO_ORDERS","limit":10},
        {"filterType":"MIN_NOTIONAL","notional":"100"},
        {"filterType":"PERCENT_PRICE","multiplierUp":"1.0500","multiplierDown":"0.9500","multiplierDecimal":"4"}]}]}"#;

    fn btc() -> SymbolRules {
        let info: ExchangeInfo = serde_json::from_str(BTC_INFO).unwrap();
        let (rules, unusable) = rules_by_symbol(&info);
        assert!(unusable.is_empty());
        rules[&Symbol::parse("BTCUSDT").unwrap()].clone()
    }

    fn request<'a>(
        symbol: &'a Symbol,
        side: Side,
        qty: &str,
        limit: Option<&str>,
        reduce_only: bool,
    ) -> FitRequest<'a> {
        FitRequest {
            symbol,
            side,
            order_type: if limit.is_some() {
                OrderType::Limit
            } else {
                OrderType::Market
            },
            qty: d(qty),
            limit_price: limit.map(d),
            reduce_only,
        }
    }

    #[test]
    fn exchange_info_parses_into_rules() {
        let rules = btc();
        assert_eq!(rules.market_lot.max_qty, d("120"));
        assert_eq!(rules.lot.max_qty, d("1000"));
        assert_eq!(rules.tick_size, d("0.10"));
        assert_eq!(rules.min_notional, d("100"));
        assert_eq!(rules.percent_price, Some((d("0.95"), d("1.05"))));
    }

    #[test]
    fn fit_decision_table() {
        use Side::{Buy, Sell};
        let sym = Symbol::parse("BTCUSDT").unwrap();
        let mark = Some(d("60000"));
        // (request, mark) → fitted (qty, price) or the start of the refusal.
        type Expected = Result<(&'static str, Option<&'static str>), &'static str>;
        let rows: Vec<(FitRequest<'_>, Option<Decimal>, Expected)> = vec![
            (request(&sym, Buy, "0.0129", None, false), mark, Ok(("0.012", None))),
            (
                request(&sym, Buy, "0.0009", None, false),
                mark,
                Err("MARKET_LOT_SIZE: quantity 0.0009 rounds down to 0"),
            ),
            (
                request(&sym, Buy, "121", None, false),
                mark,
                Err("MARKET_LOT_SIZE: quantity 121 is above maxQty 120"),
            ),
            (
                request(&sym, Buy, "121", Some("60000"), false),
                mark,
                Ok(("121", Some("60000"))),
            ),
            (
                request(&sym, Buy, "0.001", None, false),
                mark,
                Err("MIN_NOTIONAL: notional 60 is below 100"),
            ),
            (request(&sym, Sell, "0.001", None, true), mark, Ok(("0.001", None))),
            (
                request(&sym, Buy, "0.01", Some("60000.19"), false),
                mark,
                Ok(("0.01", Some("60000.1"))),
            ),
            (
                request(&sym, Sell, "0.01", Some("60000.11"), false),
                mark,
                Ok(("0.01", Some("60000.2"))),
            ),
            (
                request(&sym, Buy, "0.01", Some("64000"), false),
                mark,
                Err("PERCENT_PRICE: price 64000 is outside [57000, 63000]"),
            ),
            (
                request(&sym, Buy, "0.01", Some("500"), false),
                mark,
                Err("PRICE_FILTER: price 500 is outside"),
            ),
            (
                request(&sym, Buy, "0.01", None, false),
                None,
                Err("no mark price for BTCUSDT"),
            ),
            (request(&sym, Sell, "0.01", None, true), None, Ok(("0.01", None))),
        ];
        for (req, mark, expected) in rows {
            let got = fit(&req, &btc(), mark);
            match (got, expected) {
                (Ok(fitted), Ok((qty, price))) => {
                    assert_eq!(fitted.qty, d(qty), "{req:?}");
                    assert_eq!(fitted.price, price.map(d), "{req:?}");
                }
                (Err(e), Err(start)) => assert!(e.to_string().starts_with(start), "{req:?}: {e}"),
                (got, expected) => panic!("{req:?}: {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn a_halted_symbol_and_missing_filters_are_named() {
        let sym = Symbol::parse("BTCUSDT").unwrap();
        let mut rules = btc();
        rules.status = "SETTLING".into();
        let err = fit(&request(&sym, Side::Buy, "1", None, false), &rules, Some(d("1"))).unwrap_err();
        assert_eq!(err.to_string(), "symbol status is SETTLING, not TRADING");
        let info: ExchangeInfo =
            serde_json::from_str(r#"{"symbols":[{"symbol":"XUSDT","status":"TRADING","filters":[]}]}"#).unwrap();
        let (rules, unusable) = rules_by_symbol(&info);
        assert!(rules.is_empty());
        assert_eq!(unusable, vec!["XUSDT: exchangeInfo has no LOT_SIZE filter".to_string()]);
    }

    proptest! {
        /// Whatever the quantity and step, a fitted quantity is a multiple of the step, never
        /// above the plan's, and less than one step below it.
        #[test]
        fn fitted_quantity_is_on_the_step_and_never_above_the_plan(q in 1u64..100_000_000, step_exp in 0u32..6) {
            let sym = Symbol::parse("BTCUSDT").unwrap();
            let step = Decimal::new(1, step_exp);
            let mut rules = btc();
            rules.market_lot = Lot { min_qty: step, max_qty: Decimal::ZERO, step_size: step };
            rules.min_notional = Decimal::ZERO;
            let qty = Decimal::new(q as i64, 4);
            if let Ok(fitted) = fit(&request(&sym, Side::Buy, &qty.to_string(), None, false), &rules, None) {
                prop_assert!(fitted.qty <= qty);
                prop_assert!(qty - fitted.qty < step);
                prop_assert!((fitted.qty % step).is_zero());
            } else {
                prop_assert!(qty < step);
            }
        }
    }
}
