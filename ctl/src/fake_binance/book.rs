//! The fake venue's account: orders, trades, positions and balance, and the rules a new order
//! must pass, in Binance's order and with its documented error codes. Pure: the HTTP layer
//! (`http`) verifies requests and injects faults around it.
//!
//! Every order is final when it is answered: MARKET orders fill at the mark (in two trades
//! when partial fills are injected), LIMIT orders are immediate-or-cancel or fill-or-kill
//! (what the executor sends) and expire when not marketable; GTC limits are refused, so no
//! order ever rests on the book.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{json, Value};

/// A documented error: HTTP status, Binance code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: i64,
    pub msg: String,
}

impl ApiError {
    pub fn new(status: u16, code: i64, msg: impl Into<String>) -> Self {
        Self {
            status,
            code,
            msg: msg.into(),
        }
    }

    fn bad(code: i64, msg: impl Into<String>) -> Self {
        Self::new(400, code, msg)
    }

    /// The reply body.
    pub fn body(&self) -> String {
        json!({"code": self.code, "msg": self.msg}).to_string()
    }
}

/// The trading rules of every symbol of the fake venue.
#[derive(Debug, Clone)]
pub struct Rules {
    pub step: Decimal,
    pub min_qty: Decimal,
    pub max_qty: Decimal,
    pub market_max_qty: Decimal,
    pub tick: Decimal,
    pub min_notional: Decimal,
    pub multiplier_up: Decimal,
    pub multiplier_down: Decimal,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            step: Decimal::new(1, 3),
            min_qty: Decimal::new(1, 3),
            max_qty: Decimal::from(1_000_000),
            market_max_qty: Decimal::from(100_000),
            tick: Decimal::new(1, 4),
            min_notional: Decimal::from(5),
            multiplier_up: Decimal::new(105, 2),
            multiplier_down: Decimal::new(95, 2),
        }
    }
}

/// One order, as the venue keeps it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub order_id: u64,
    pub client_order_id: String,
    pub symbol: String,
    pub side: String,
    pub position_side: String,
    #[serde(rename = "type")]
    pub order_type: String,
    pub time_in_force: String,
    pub orig_qty: Decimal,
    pub price: Decimal,
    pub executed_qty: Decimal,
    pub cum_quote: Decimal,
    pub avg_price: Decimal,
    pub reduce_only: bool,
    pub status: String,
    pub time: u64,
}

impl Order {
    /// The order as `POST /fapi/v1/order` (RESULT) and `GET /fapi/v1/order` answer it.
    pub fn to_json(&self) -> Value {
        json!({
            "orderId": self.order_id,
            "clientOrderId": self.client_order_id,
            "symbol": self.symbol,
            "status": self.status,
            "side": self.side,
            "positionSide": self.position_side,
            "type": self.order_type,
            "origType": self.order_type,
            "timeInForce": self.time_in_force,
            "origQty": self.orig_qty.normalize().to_string(),
            "price": self.price.normalize().to_string(),
            "executedQty": self.executed_qty.normalize().to_string(),
            "cumQty": self.executed_qty.normalize().to_string(),
            "cumQuote": self.cum_quote.normalize().to_string(),
            "avgPrice": self.avg_price.normalize().to_string(),
            "reduceOnly": self.reduce_only,
            "closePosition": false,
            "stopPrice": "0",
            "workingType": "CONTRACT_PRICE",
            "priceProtect": false,
            "selfTradePreventionMode": "NONE",
            "goodTillDate": 0,
            "time": self.time,
            "updateTime": self.time,
        })
    }
}

/// One execution.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Trade {
    pub id: u64,
    pub order_id: u64,
    pub symbol: String,
    pub side: String,
    pub position_side: String,
    pub price: Decimal,
    pub qty: Decimal,
    pub commission: Decimal,
    pub realized_pnl: Decimal,
    pub time: u64,
}

impl Trade {
    /// The trade as `GET /fapi/v1/userTrades` lists it.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "orderId": self.order_id,
            "symbol": self.symbol,
            "side": self.side,
            "positionSide": self.position_side,
            "price": self.price.normalize().to_string(),
            "qty": self.qty.normalize().to_string(),
            "quoteQty": (self.price * self.qty).normalize().to_string(),
            "commission": self.commission.normalize().to_string(),
            "commissionAsset": "USDT",
            "realizedPnl": self.realized_pnl.normalize().to_string(),
            "buyer": self.side == "BUY",
            "maker": false,
            "time": self.time,
        })
    }
}

/// One position leg: `BOTH` in one-way mode, `LONG` / `SHORT` in hedge mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Leg {
    /// Signed amount (SHORT legs are negative).
    pub amt: Decimal,
    pub entry: Decimal,
}

/// The account.
#[derive(Debug, Clone)]
pub struct Book {
    pub rules: Rules,
    pub marks: BTreeMap<String, Decimal>,
    pub orders: Vec<Order>,
    pub trades: Vec<Trade>,
    pub legs: BTreeMap<(String, String), Leg>,
    pub leverage: BTreeMap<String, u32>,
    pub dual_side: bool,
    pub wallet: Decimal,
    pub taker_fee: Decimal,
    /// Fill MARKET orders in two trades, LIMIT IOC orders by half.
    pub partial_fills: bool,
    next_order_id: u64,
    next_trade_id: u64,
}

/// A new order's parameters, as sent.
pub type Params = BTreeMap<String, String>;

fn decimal(params: &Params, name: &str) -> Result<Option<Decimal>, ApiError> {
    params
        .get(name)
        .map(|v| {
            v.parse::<Decimal>().map_err(|_| {
                ApiError::bad(
                    -1102,
                    format!("Mandatory parameter '{name}' was not sent, was empty/null, or malformed."),
                )
            })
        })
        .transpose()
}

/// A parameter that must be there, or `-1102` naming it.
pub(crate) fn mandatory<'a>(params: &'a Params, name: &str) -> Result<&'a str, ApiError> {
    params
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            ApiError::bad(
                -1102,
                format!("Mandatory parameter '{name}' was not sent, was empty/null, or malformed."),
            )
        })
}

/// Client order ids Binance accepts: `^[\.A-Z\:/a-z0-9_-]{1,36}$`.
fn valid_client_order_id(id: &str) -> bool {
    (1..=36).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'/' | b'_' | b'-'))
}

impl Book {
    /// An account with `wallet` USDT, trading `marks` (symbol → mark price).
    pub fn new(marks: BTreeMap<String, Decimal>, wallet: Decimal) -> Self {
        Self {
            rules: Rules::default(),
            marks,
            orders: Vec::new(),
            trades: Vec::new(),
            legs: BTreeMap::new(),
            leverage: BTreeMap::new(),
            dual_side: false,
            wallet,
            taker_fee: Decimal::new(5, 4),
            partial_fills: false,
            next_order_id: 1000,
            next_trade_id: 5000,
        }
    }

    /// Seeds a position (an account that already holds one), as if it had been bought at
    /// `entry` before the test.
    pub fn seed(&mut self, symbol: &str, amt: Decimal, entry: Decimal) {
        let side = if self.dual_side {
            if amt >= Decimal::ZERO {
                "LONG"
            } else {
                "SHORT"
            }
        } else {
            "BOTH"
        };
        self.legs
            .insert((symbol.to_string(), side.to_string()), Leg { amt, entry });
    }

    fn mark(&self, symbol: &str) -> Result<Decimal, ApiError> {
        self.marks
            .get(symbol)
            .copied()
            .ok_or_else(|| ApiError::bad(-1121, "Invalid symbol."))
    }

    /// The `exchangeInfo` reply.
    pub fn exchange_info(&self, server_time: u64) -> Value {
        let r = &self.rules;
        let symbols: Vec<Value> = self
            .marks
            .keys()
            .map(|s| {
                json!({
                    "symbol": s, "pair": s, "contractType": "PERPETUAL", "status": "TRADING",
                    "baseAsset": s.trim_end_matches("USDT"), "quoteAsset": "USDT", "marginAsset": "USDT",
                    "pricePrecision": 4, "quantityPrecision": 3,
                    "orderTypes": ["LIMIT", "MARKET"], "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
                    "filters": [
                        {"filterType": "PRICE_FILTER", "minPrice": r.tick.to_string(), "maxPrice": "1000000", "tickSize": r.tick.to_string()},
                        {"filterType": "LOT_SIZE", "minQty": r.min_qty.to_string(), "maxQty": r.max_qty.to_string(), "stepSize": r.step.to_string()},
                        {"filterType": "MARKET_LOT_SIZE", "minQty": r.min_qty.to_string(), "maxQty": r.market_max_qty.to_string(), "stepSize": r.step.to_string()},
                        {"filterType": "MAX_NUM_ORDERS", "limit": 200},
                        {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
                        {"filterType": "MIN_NOTIONAL", "notional": r.min_notional.to_string()},
                        {"filterType": "PERCENT_PRICE", "multiplierUp": r.multiplier_up.to_string(), "multiplierDown": r.multiplier_down.to_string(), "multiplierDecimal": "4"}
                    ]
                })
            })
            .collect();
        json!({
            "timezone": "UTC", "serverTime": server_time, "futuresType": "U_MARGINED",
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
                {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300}
            ],
            "exchangeFilters": [], "assets": [], "symbols": symbols
        })
    }

    /// The order's quantity: positive, on the step, within the lot bounds of its type.
    fn check_quantity(&self, p: &Params, order_type: &str) -> Result<Decimal, ApiError> {
        let qty = decimal(p, "quantity")?.ok_or_else(|| {
            ApiError::bad(
                -1102,
                "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed.",
            )
        })?;
        let r = &self.rules;
        if qty <= Decimal::ZERO {
            return Err(ApiError::bad(-4003, "Quantity less than or equal to zero."));
        }
        if !(qty % r.step).is_zero() {
            return Err(ApiError::bad(
                -1111,
                "Precision is over the maximum defined for this asset.",
            ));
        }
        if qty < r.min_qty {
            return Err(ApiError::bad(-4004, "Quantity less than min quantity."));
        }
        let max = if order_type == "MARKET" {
            r.market_max_qty
        } else {
            r.max_qty
        };
        if qty > max {
            return Err(ApiError::bad(-4005, "Quantity greater than max quantity."));
        }
        Ok(qty)
    }

    /// A LIMIT order's price (IOC or FOK, on the tick, within the mark's band) and time in
    /// force; MARKET orders have neither.
    fn check_price(&self, p: &Params, order_type: &str, mark: Decimal) -> Result<(Decimal, String), ApiError> {
        let r = &self.rules;
        if order_type == "LIMIT" {
            let price = decimal(p, "price")?.ok_or_else(|| {
                ApiError::bad(
                    -1102,
                    "Mandatory parameter 'price' was not sent, was empty/null, or malformed.",
                )
            })?;
            let tif = mandatory(p, "timeInForce")?.to_string();
            if tif != "IOC" && tif != "FOK" {
                // The fake keeps no resting orders.
                return Err(ApiError::bad(
                    -1128,
                    "Combination of optional parameters invalid. (fake venue: LIMIT orders must be IOC or FOK)",
                ));
            }
            if price < r.tick {
                return Err(ApiError::bad(-4013, "Price less than min price."));
            }
            if !(price % r.tick).is_zero() {
                return Err(ApiError::bad(-4014, "Price not increased by tick size."));
            }
            if price > mark * r.multiplier_up {
                return Err(ApiError::bad(-4016, "Price is higher than mark price multiplier cap."));
            }
            if price < mark * r.multiplier_down {
                return Err(ApiError::bad(-4024, "Price is lower than mark price multiplier floor."));
            }
            Ok((price, tif))
        } else {
            if p.contains_key("price") {
                return Err(ApiError::bad(-1106, "Parameter 'price' sent when not required."));
            }
            Ok((Decimal::ZERO, "GTC".to_string()))
        }
    }

    /// `reduceOnly` and `positionSide` as the account's position mode allows them.
    fn check_position_mode(&self, p: &Params) -> Result<(bool, String), ApiError> {
        let reduce_only = match p.get("reduceOnly").map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => {
                return Err(ApiError::bad(
                    -1102,
                    "Mandatory parameter 'reduceOnly' was not sent, was empty/null, or malformed.",
                ))
            }
        };
        let position_side = p.get("positionSide").cloned().unwrap_or_else(|| "BOTH".into());
        if self.dual_side {
            if p.contains_key("reduceOnly") {
                return Err(ApiError::bad(-1106, "Parameter 'reduceonly' sent when not required."));
            }
            if position_side != "LONG" && position_side != "SHORT" {
                return Err(ApiError::bad(
                    -4061,
                    "Order's position side does not match user's setting.",
                ));
            }
        } else if position_side != "BOTH" {
            return Err(ApiError::bad(
                -4061,
                "Order's position side does not match user's setting.",
            ));
        }
        Ok((reduce_only, position_side))
    }

    /// Checks a new order against the rules, in the order Binance checks them, without
    /// placing it: symbol, side, type, quantity, price, position mode, reduce-only, notional.
    fn check(&self, p: &Params) -> Result<Checked, ApiError> {
        let symbol = mandatory(p, "symbol")?.to_string();
        let mark = self.mark(&symbol)?;
        let side = mandatory(p, "side")?.to_string();
        if side != "BUY" && side != "SELL" {
            return Err(ApiError::bad(-1117, "Invalid side."));
        }
        let order_type = mandatory(p, "type")?.to_string();
        if order_type != "MARKET" && order_type != "LIMIT" {
            return Err(ApiError::bad(-1116, "Invalid orderType."));
        }
        let client_order_id = match p.get("newClientOrderId") {
            Some(id) if !valid_client_order_id(id) => {
                return Err(ApiError::bad(-1100, "Illegal characters found in parameter 'newClientOrderId'; legal range is '^[\\.A-Z\\:/a-z0-9_-]{1,36}$'."))
            }
            Some(id) => id.clone(),
            None => format!("web_{}", self.next_order_id),
        };
        let qty = self.check_quantity(p, &order_type)?;
        let (price, time_in_force) = self.check_price(p, &order_type, mark)?;
        let (reduce_only, position_side) = self.check_position_mode(p)?;
        let r = &self.rules;
        let leg = self
            .legs
            .get(&(symbol.clone(), position_side.clone()))
            .cloned()
            .unwrap_or_default();
        // In hedge mode a SELL on LONG (a BUY on SHORT) closes: it may not exceed the leg, and
        // like a reduce-only order it is exempt from MIN_NOTIONAL.
        let closes = match position_side.as_str() {
            "LONG" => side == "SELL",
            "SHORT" => side == "BUY",
            _ => (side == "SELL" && leg.amt > Decimal::ZERO) || (side == "BUY" && leg.amt < Decimal::ZERO),
        };
        let reducing = reduce_only || (self.dual_side && closes);
        if reducing && (!closes || qty > leg.amt.abs()) {
            return Err(ApiError::bad(-2022, "ReduceOnly Order is rejected."));
        }
        let at = if order_type == "LIMIT" { price } else { mark };
        if !reducing && qty * at < r.min_notional {
            return Err(ApiError::bad(
                -4164,
                format!(
                    "Order's notional must be no smaller than {} (unless you choose reduce only)",
                    r.min_notional
                ),
            ));
        }
        let leverage = Decimal::from(self.leverage.get(&symbol).copied().unwrap_or(20));
        if !closes && qty * mark / leverage > self.available() {
            return Err(ApiError::bad(-2019, "Margin is insufficient."));
        }
        Ok(Checked {
            symbol,
            side,
            order_type,
            client_order_id,
            qty,
            price,
            time_in_force,
            reduce_only,
            position_side,
            mark,
        })
    }

    /// Places a new order (rules, then matching) and returns it, final.
    ///
    /// # Errors
    /// The documented error of the first rule it breaks.
    pub fn place(&mut self, params: &Params, now: u64) -> Result<Order, ApiError> {
        let c = self.check(params)?;
        self.next_order_id += 1;
        let mut order = Order {
            order_id: self.next_order_id,
            client_order_id: c.client_order_id,
            symbol: c.symbol,
            side: c.side,
            position_side: c.position_side,
            order_type: c.order_type,
            time_in_force: c.time_in_force,
            orig_qty: c.qty,
            price: c.price,
            executed_qty: Decimal::ZERO,
            cum_quote: Decimal::ZERO,
            avg_price: Decimal::ZERO,
            reduce_only: c.reduce_only,
            status: "NEW".into(),
            time: now,
        };
        let buy = order.side == "BUY";
        let marketable =
            order.order_type == "MARKET" || (buy && order.price >= c.mark) || (!buy && order.price <= c.mark);
        let fok = order.time_in_force == "FOK";
        let pieces: Vec<(Decimal, Decimal)> = if !marketable {
            Vec::new()
        } else if self.partial_fills && order.order_type == "MARKET" {
            // Two trades: half at the mark, the rest one tick worse.
            let half = ((c.qty / Decimal::TWO) / self.rules.step).floor() * self.rules.step;
            let worse = if buy {
                c.mark + self.rules.tick
            } else {
                c.mark - self.rules.tick
            };
            [(half, c.mark), (c.qty - half, worse)]
                .into_iter()
                .filter(|(q, _)| !q.is_zero())
                .collect()
        } else if self.partial_fills && !fok {
            let half = ((c.qty / Decimal::TWO) / self.rules.step).floor() * self.rules.step;
            if half.is_zero() {
                Vec::new()
            } else {
                vec![(half, c.mark)]
            }
        } else {
            vec![(c.qty, c.mark)]
        };
        for (qty, price) in pieces {
            self.execute(&mut order, qty, price, now);
        }
        order.status = if order.executed_qty == order.orig_qty {
            "FILLED".into()
        } else {
            "EXPIRED".into()
        };
        if !order.executed_qty.is_zero() {
            order.avg_price = (order.cum_quote / order.executed_qty).round_dp(8).normalize();
        }
        self.orders.push(order.clone());
        Ok(order)
    }

    fn execute(&mut self, order: &mut Order, qty: Decimal, price: Decimal, now: u64) {
        let sign = if order.side == "BUY" {
            Decimal::ONE
        } else {
            -Decimal::ONE
        };
        let leg = self
            .legs
            .entry((order.symbol.clone(), order.position_side.clone()))
            .or_default();
        let mut realized = Decimal::ZERO;
        let delta = sign * qty;
        if leg.amt.is_zero() || leg.amt.is_sign_positive() == delta.is_sign_positive() {
            let amt = leg.amt + delta;
            leg.entry = ((leg.entry * leg.amt.abs() + price * qty) / amt.abs())
                .round_dp(8)
                .normalize();
            leg.amt = amt;
        } else {
            let closed = qty.min(leg.amt.abs());
            realized = (price - leg.entry)
                * closed
                * if leg.amt.is_sign_positive() {
                    Decimal::ONE
                } else {
                    -Decimal::ONE
                };
            let amt = leg.amt + delta;
            if amt.is_zero() {
                leg.entry = Decimal::ZERO;
            } else if amt.is_sign_positive() != leg.amt.is_sign_positive() {
                leg.entry = price;
            }
            leg.amt = amt;
        }
        let commission = (qty * price * self.taker_fee).round_dp(8).normalize();
        self.wallet += realized - commission;
        self.next_trade_id += 1;
        self.trades.push(Trade {
            id: self.next_trade_id,
            order_id: order.order_id,
            symbol: order.symbol.clone(),
            side: order.side.clone(),
            position_side: order.position_side.clone(),
            price,
            qty,
            commission,
            realized_pnl: realized.normalize(),
            time: now,
        });
        order.executed_qty += qty;
        order.cum_quote += qty * price;
    }

    /// The newest order with this client id, or the order with this id.
    pub fn find(&self, symbol: &str, order_id: Option<u64>, client_order_id: Option<&str>) -> Option<&Order> {
        self.orders.iter().rev().find(|o| {
            o.symbol == symbol
                && order_id.is_none_or(|id| o.order_id == id)
                && client_order_id.is_none_or(|id| o.client_order_id == id)
        })
    }

    /// Unrealized PnL of a leg at the mark.
    fn unrealized(&self, symbol: &str, leg: &Leg) -> Decimal {
        let mark = self.marks.get(symbol).copied().unwrap_or_default();
        (mark - leg.entry) * leg.amt
    }

    fn available(&self) -> Decimal {
        let upnl: Decimal = self.legs.iter().map(|((s, _), l)| self.unrealized(s, l)).sum();
        let margin: Decimal = self
            .legs
            .iter()
            .map(|((s, _), l)| {
                let lev = Decimal::from(self.leverage.get(s).copied().unwrap_or(20));
                l.amt.abs() * self.marks.get(s).copied().unwrap_or_default() / lev
            })
            .sum();
        self.wallet + upnl - margin
    }

    /// `GET /fapi/v2/positionRisk`: every symbol, one leg (one-way) or two (hedge).
    pub fn position_risk(&self) -> Value {
        let sides: &[&str] = if self.dual_side { &["LONG", "SHORT"] } else { &["BOTH"] };
        let mut out = Vec::new();
        for (symbol, mark) in &self.marks {
            for side in sides {
                let leg = self
                    .legs
                    .get(&(symbol.clone(), side.to_string()))
                    .cloned()
                    .unwrap_or_default();
                out.push(json!({
                    "symbol": symbol,
                    "positionAmt": leg.amt.normalize().to_string(),
                    "entryPrice": leg.entry.normalize().to_string(),
                    "breakEvenPrice": leg.entry.normalize().to_string(),
                    "markPrice": mark.normalize().to_string(),
                    "unRealizedProfit": self.unrealized(symbol, &leg).round_dp(8).normalize().to_string(),
                    "liquidationPrice": "0",
                    "leverage": self.leverage.get(symbol).copied().unwrap_or(20).to_string(),
                    "maxNotionalValue": "1000000",
                    "marginType": "cross",
                    "isolatedMargin": "0",
                    "isAutoAddMargin": "false",
                    "positionSide": side,
                    "notional": (leg.amt * mark).normalize().to_string(),
                    "isolatedWallet": "0",
                    "updateTime": 0,
                }));
            }
        }
        Value::Array(out)
    }

    /// `GET /fapi/v2/account` (the totals).
    pub fn account(&self) -> Value {
        let upnl: Decimal = self.legs.iter().map(|((s, _), l)| self.unrealized(s, l)).sum();
        json!({
            "totalWalletBalance": self.wallet.round_dp(8).normalize().to_string(),
            "totalUnrealizedProfit": upnl.round_dp(8).normalize().to_string(),
            "totalMarginBalance": (self.wallet + upnl).round_dp(8).normalize().to_string(),
            "availableBalance": self.available().round_dp(8).normalize().to_string(),
            "maxWithdrawAmount": self.available().round_dp(8).normalize().to_string(),
            "canTrade": true,
            "assets": [],
            "positions": [],
        })
    }
}

/// A new order that passed the rules.
struct Checked {
    symbol: String,
    side: String,
    order_type: String,
    client_order_id: String,
    qty: Decimal,
    price: Decimal,
    time_in_force: String,
    reduce_only: bool,
    position_side: String,
    mark: Decimal,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> Book {
        Book::new(
            [("BTCUSDT".to_string(), Decimal::from(100))].into(),
            Decimal::from(10_000),
        )
    }

    fn params(pairs: &[(&str, &str)]) -> Params {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn orders_follow_binance_rules_and_codes() {
        let base = [("symbol", "BTCUSDT"), ("side", "BUY"), ("type", "MARKET")];
        let mut b = book();
        type Row<'a> = (&'a [(&'a str, &'a str)], Result<&'a str, i64>);
        let rows: [Row<'_>; 9] = [
            (&[("quantity", "1")], Ok("FILLED")),
            (&[("quantity", "0.0001")], Err(-1111)),
            (&[("quantity", "0.01")], Err(-4164)),
            (&[("quantity", "-1")], Err(-4003)),
            (&[("quantity", "1"), ("positionSide", "LONG")], Err(-4061)),
            (&[("quantity", "1"), ("price", "100")], Err(-1106)),
            (&[("quantity", "5000")], Err(-2019)),
            (&[], Err(-1102)),
            (&[("quantity", "1"), ("newClientOrderId", "bad id!")], Err(-1100)),
        ];
        for (extra, expected) in rows {
            let mut p = params(&base);
            p.extend(params(extra));
            match (b.place(&p, 1), expected) {
                (Ok(o), Ok(status)) => assert_eq!(o.status, status),
                (Err(e), Err(code)) => assert_eq!(e.code, code, "{extra:?}: {e:?}"),
                (got, expected) => panic!("{extra:?}: {got:?}, expected {expected:?}"),
            }
        }
        let close = params(&[
            ("symbol", "BTCUSDT"),
            ("side", "SELL"),
            ("type", "MARKET"),
            ("quantity", "2"),
            ("reduceOnly", "true"),
        ]);
        assert_eq!(b.place(&close, 2).unwrap_err().code, -2022, "more than the position");
        let close = params(&[
            ("symbol", "BTCUSDT"),
            ("side", "SELL"),
            ("type", "MARKET"),
            ("quantity", "1"),
            ("reduceOnly", "true"),
        ]);
        assert_eq!(b.place(&close, 2).unwrap().status, "FILLED");
        assert_eq!(b.legs[&("BTCUSDT".to_string(), "BOTH".to_string())].amt, Decimal::ZERO);
    }

    #[test]
    fn hedge_mode_refuses_reduce_only_and_needs_position_side() {
        let mut b = book();
        b.dual_side = true;
        let p = params(&[
            ("symbol", "BTCUSDT"),
            ("side", "BUY"),
            ("type", "MARKET"),
            ("quantity", "1"),
        ]);
        assert_eq!(b.place(&p, 1).unwrap_err().code, -4061);
        let mut long = p.clone();
        long.insert("positionSide".into(), "LONG".into());
        assert_eq!(b.place(&long, 1).unwrap().status, "FILLED");
        let mut ro = long.clone();
        ro.insert("reduceOnly".into(), "true".into());
        assert_eq!(b.place(&ro, 1).unwrap_err().code, -1106);
    }

    #[test]
    fn partial_fills_split_market_orders_and_expire_ioc_limits() {
        let mut b = book();
        b.partial_fills = true;
        let p = params(&[
            ("symbol", "BTCUSDT"),
            ("side", "BUY"),
            ("type", "MARKET"),
            ("quantity", "1"),
        ]);
        let o = b.place(&p, 1).unwrap();
        assert_eq!((o.status.as_str(), b.trades.len()), ("FILLED", 2));
        let l = params(&[
            ("symbol", "BTCUSDT"),
            ("side", "BUY"),
            ("type", "LIMIT"),
            ("quantity", "1"),
            ("price", "101"),
            ("timeInForce", "IOC"),
        ]);
        let o = b.place(&l, 1).unwrap();
        assert_eq!((o.status.as_str(), o.executed_qty), ("EXPIRED", Decimal::new(5, 1)));
        let far = params(&[
            ("symbol", "BTCUSDT"),
            ("side", "BUY"),
            ("type", "LIMIT"),
            ("quantity", "1"),
            ("price", "99"),
            ("timeInForce", "IOC"),
        ]);
        let o = b.place(&far, 1).unwrap();
        assert_eq!((o.status.as_str(), o.executed_qty), ("EXPIRED", Decimal::ZERO));
    }
}
