//! The replies of the USD-M futures endpoints this venue calls, as Binance documents them
//! (numbers as strings, parsed exactly into decimals), and the request parameters of an order.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use quantum_model::types::{OrderId, OrderType, Side, Symbol};

/// `GET /fapi/v1/time`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerTime {
    pub server_time: u64,
}

/// `GET /fapi/v1/positionSide/dual`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PositionMode {
    pub dual_side_position: bool,
}

/// An error body: `{"code": -2022, "msg": "ReduceOnly Order is rejected."}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ApiErrorBody {
    pub code: i64,
    pub msg: String,
}

/// An order as `POST /fapi/v1/order` (newOrderRespType=RESULT) and `GET /fapi/v1/order` return it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderReply {
    pub order_id: u64,
    pub client_order_id: String,
    pub symbol: String,
    pub status: String,
    pub side: String,
    #[serde(rename = "type")]
    pub order_type: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub orig_qty: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub executed_qty: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub avg_price: Decimal,
    #[serde(default)]
    pub reduce_only: bool,
    #[serde(default)]
    pub position_side: String,
    #[serde(default)]
    pub update_time: u64,
}

impl OrderReply {
    /// Whether the order can no longer fill: FILLED, CANCELED, EXPIRED, REJECTED,
    /// EXPIRED_IN_MATCH (NEW and PARTIALLY_FILLED still can).
    pub fn is_final(&self) -> bool {
        matches!(
            self.status.as_str(),
            "FILLED" | "CANCELED" | "EXPIRED" | "REJECTED" | "EXPIRED_IN_MATCH"
        )
    }
}

/// One execution, from `GET /fapi/v1/userTrades`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Trade {
    pub id: u64,
    pub order_id: u64,
    pub symbol: String,
    pub side: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub price: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub qty: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub commission: Decimal,
    pub commission_asset: String,
    #[serde(with = "rust_decimal::serde::str", default)]
    pub realized_pnl: Decimal,
    pub time: u64,
    #[serde(default)]
    pub position_side: String,
}

/// One position, from `GET /fapi/v2/positionRisk`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PositionRisk {
    pub symbol: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub position_amt: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub entry_price: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub mark_price: Decimal,
    #[serde(rename = "unRealizedProfit", with = "rust_decimal::serde::str")]
    pub unrealized_profit: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub leverage: Decimal,
    #[serde(default)]
    pub position_side: String,
    #[serde(default)]
    pub update_time: u64,
}

/// `GET /fapi/v2/account` (the parts used).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    #[serde(with = "rust_decimal::serde::str")]
    pub total_margin_balance: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total_wallet_balance: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub available_balance: Decimal,
}

/// One symbol of `GET /fapi/v1/premiumIndex`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PremiumIndex {
    pub symbol: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub mark_price: Decimal,
}

/// The account's position mode, as orders must follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One-way: one net position per symbol; a closing order says `reduceOnly=true`.
    OneWay,
    /// Hedge: a LONG and a SHORT position per symbol; orders name `positionSide` and never
    /// send `reduceOnly` (Binance rejects the pair).
    Hedge,
}

/// A new order's parameters, in the order they are signed and sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub symbol: Symbol,
    pub side: Side,
    pub order_type: OrderType,
    pub qty: Decimal,
    pub price: Option<Decimal>,
    pub reduce_only: bool,
    pub client_order_id: OrderId,
}

impl NewOrder {
    /// The parameters for `mode`. LIMIT orders are immediate-or-cancel, as on the paper venue:
    /// an order is final in its reply and never rests on the book.
    pub fn params(&self, mode: Mode) -> Vec<(&'static str, String)> {
        let mut params = vec![
            ("symbol", self.symbol.to_string()),
            ("side", self.side.to_string()),
            ("type", self.order_type.as_str().to_string()),
            ("quantity", self.qty.normalize().to_string()),
        ];
        if let (OrderType::Limit, Some(price)) = (self.order_type, self.price) {
            params.push(("price", price.normalize().to_string()));
            params.push(("timeInForce", "IOC".to_string()));
        }
        match mode {
            Mode::OneWay => {
                if self.reduce_only {
                    params.push(("reduceOnly", "true".to_string()));
                }
            }
            Mode::Hedge => {
                // A BUY opens a LONG or closes a SHORT; a SELL the other way round.
                let long = (self.side == Side::Buy) != self.reduce_only;
                params.push(("positionSide", if long { "LONG" } else { "SHORT" }.to_string()));
            }
        }
        params.push(("newClientOrderId", self.client_order_id.to_string()));
        params.push(("newOrderRespType", "RESULT".to_string()));
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(side: Side, reduce_only: bool, limit: Option<Decimal>) -> NewOrder {
        NewOrder {
            symbol: Symbol::parse("BTCUSDT").unwrap(),
            side,
            order_type: if limit.is_some() {
                OrderType::Limit
            } else {
                OrderType::Market
            },
            qty: Decimal::new(1500, 3),
            price: limit,
            reduce_only,
            client_order_id: OrderId::new("qib-00000000000000aa"),
        }
    }

    fn query(params: &[(&str, String)]) -> String {
        params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    #[test]
    fn position_mode_decides_reduce_only_or_position_side() {
        let close = order(Side::Sell, true, None);
        assert_eq!(
            query(&close.params(Mode::OneWay)),
            "symbol=BTCUSDT&side=SELL&type=MARKET&quantity=1.5&reduceOnly=true&newClientOrderId=qib-00000000000000aa&newOrderRespType=RESULT"
        );
        let hedge = query(&close.params(Mode::Hedge));
        assert!(hedge.contains("positionSide=LONG"), "{hedge}");
        assert!(!hedge.contains("reduceOnly"), "never reduceOnly in hedge mode: {hedge}");
        assert!(query(&order(Side::Buy, false, None).params(Mode::Hedge)).contains("positionSide=LONG"));
        assert!(query(&order(Side::Sell, false, None).params(Mode::Hedge)).contains("positionSide=SHORT"));
        assert!(query(&order(Side::Buy, true, None).params(Mode::Hedge)).contains("positionSide=SHORT"));
        let limit = query(&order(Side::Buy, false, Some(Decimal::new(600001, 1))).params(Mode::OneWay));
        assert!(
            limit.contains("type=LIMIT&quantity=1.5&price=60000.1&timeInForce=IOC"),
            "{limit}"
        );
    }

    #[test]
    fn replies_parse_as_documented() {
        let reply: OrderReply = serde_json::from_str(
            r#"{"clientOrderId":"qib-00000000000000aa","cumQty":"0","cumQuote":"0","executedQty":"0.002",
            "orderId":22542179,"avgPrice":"60000.10","origQty":"0.002","price":"0","reduceOnly":false,"side":"BUY",
            "positionSide":"BOTH","status":"FILLED","stopPrice":"0","closePosition":false,"symbol":"BTCUSDT",
            "timeInForce":"GTC","type":"MARKET","origType":"MARKET","updateTime":1566818724722,"workingType":"CONTRACT_PRICE",
            "priceProtect":false,"priceMatch":"NONE","selfTradePreventionMode":"NONE","goodTillDate":0}"#,
        )
        .unwrap();
        assert!(reply.is_final());
        assert_eq!(reply.executed_qty, Decimal::new(2, 3));
        let trade: Trade = serde_json::from_str(
            r#"{"buyer":false,"commission":"-0.07819010","commissionAsset":"USDT","id":698759,"maker":false,
            "orderId":25851813,"price":"7819.01","qty":"0.002","quoteQty":"15.63802","realizedPnl":"-0.91539999",
            "side":"SELL","positionSide":"SHORT","symbol":"BTCUSDT","time":1569514978020}"#,
        )
        .unwrap();
        assert_eq!(trade.commission, Decimal::new(-7819010, 8));
        let risk: PositionRisk = serde_json::from_str(
            r#"{"entryPrice":"0.00000","breakEvenPrice":"0.0","marginType":"isolated","isAutoAddMargin":"false",
            "isolatedMargin":"0.00000000","leverage":"10","liquidationPrice":"0","markPrice":"6679.50671178",
            "maxNotionalValue":"20000000","positionAmt":"0.000","notional":"0","isolatedWallet":"0","symbol":"BTCUSDT",
            "unRealizedProfit":"0.00000000","positionSide":"BOTH","updateTime":0}"#,
        )
        .unwrap();
        assert_eq!(risk.leverage, Decimal::from(10));
    }
}
