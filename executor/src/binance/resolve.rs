//! Pure rules that turn the venue's answers about an order into an outcome, or say why there
//! is none yet. Nothing here guesses: an order the venue may still hold is `Pending` until the
//! venue says what it is, or until no request could be accepted any more.

use rust_decimal::Decimal;

use quantum_model::fill::Fill;
use quantum_model::types::{FillId, OrderId, PlanId, Side, Symbol};

use super::api::{OrderReply, Trade};
use super::record::Sending;
use crate::venue::OrderOutcome;

/// What the venue's answers settle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The order is final at the venue: this is its outcome.
    Outcome(OrderOutcome),
    /// The venue never accepted the request, and no longer can: it may be sent again.
    NeverAccepted,
    /// Not settled yet (why): look again later, send nothing.
    Pending(String),
}

/// The order a resolution is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderContext {
    pub client_order_id: OrderId,
    pub plan_id: PlanId,
    pub symbol: Symbol,
    pub leverage: Decimal,
}

impl OrderContext {
    /// The context of an order known only by its client id (`qib-<plan_id>`), as the sweep
    /// knows it.
    ///
    /// # Errors
    /// The id does not carry a plan id.
    pub fn from_client_order_id(client_order_id: &OrderId, symbol: &Symbol, leverage: Decimal) -> Result<Self, String> {
        let plan = client_order_id
            .as_str()
            .strip_prefix("qib-")
            .ok_or_else(|| format!("client order id {client_order_id} is not qib-<plan_id>"))?;
        Ok(Self {
            client_order_id: client_order_id.clone(),
            plan_id: PlanId::parse(plan).map_err(|e| e.to_string())?,
            symbol: symbol.clone(),
            leverage,
        })
    }
}

/// The outcome of `reply` (the venue's order) given the account's `trades` of it. A final
/// order without a fill is a rejection; a final order with fills is filled once the trades
/// add up to its executed quantity (the trade list can lag the order by a moment).
pub fn judge(ctx: &OrderContext, reply: &OrderReply, trades: &[Trade]) -> Resolution {
    if reply.client_order_id != ctx.client_order_id.as_str() || reply.symbol != ctx.symbol.as_str() {
        return Resolution::Pending(format!(
            "the venue answered with order {} {} for {} {}",
            reply.symbol, reply.client_order_id, ctx.symbol, ctx.client_order_id
        ));
    }
    if !reply.is_final() {
        return Resolution::Pending(format!("order {} is {} at the venue", reply.order_id, reply.status));
    }
    if reply.executed_qty.is_zero() {
        return Resolution::Outcome(OrderOutcome::Rejected {
            reason: format!("binance order {} {} without a fill", reply.order_id, reply.status),
        });
    }
    let own: Vec<&Trade> = trades.iter().filter(|t| t.order_id == reply.order_id).collect();
    let traded: Decimal = own.iter().map(|t| t.qty).sum();
    if traded != reply.executed_qty {
        return Resolution::Pending(format!(
            "order {} executed {} but its trades add up to {traded} so far",
            reply.order_id, reply.executed_qty
        ));
    }
    match own.iter().map(|t| fill_of(ctx, t)).collect::<Result<Vec<_>, _>>() {
        Ok(fills) => Resolution::Outcome(OrderOutcome::Filled { fills }),
        Err(e) => Resolution::Pending(format!("unreadable trade of order {}: {e}", reply.order_id)),
    }
}

/// What "no such order" means for a send recorded as `sending`, at server time `server_now`:
/// proof it was never accepted only once the server's clock has passed the request's
/// `timestamp + recvWindow` plus `margin_ms`; before that the request may still be accepted.
pub fn judge_not_found(sending: &Sending, server_now: u64, margin_ms: u64) -> Resolution {
    let after = sending.definitive_after(margin_ms);
    if server_now > after {
        Resolution::NeverAccepted
    } else {
        Resolution::Pending(format!(
            "the venue does not know the order yet; definitive in {} ms (timestamp {} + recvWindow {} + margin {margin_ms})",
            after - server_now,
            sending.timestamp,
            sending.recv_window_ms
        ))
    }
}

/// A fill from one of the account's trades: the venue's trade id is the fill id, so the
/// ledger deduplicates on the exchange's identity; the commission is kept with its asset.
/// Binance trade ids are not a gap-free sequence of the account's fills, so the fill carries
/// no `venue_seq` (the ledger deduplicates it by id).
pub fn fill_of(ctx: &OrderContext, trade: &Trade) -> Result<Fill, String> {
    Ok(Fill {
        fill_id: FillId::new(trade.id.to_string()),
        order_id: ctx.client_order_id.clone(),
        plan_id: ctx.plan_id.clone(),
        symbol: ctx.symbol.clone(),
        side: Side::parse(&trade.side).map_err(|e| e.to_string())?,
        qty: trade.qty,
        price: trade.price,
        fee: trade.commission.abs(),
        fee_asset: Some(trade.commission_asset.clone()),
        leverage: ctx.leverage,
        ts: trade.time,
        venue_seq: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn ctx() -> OrderContext {
        OrderContext::from_client_order_id(
            &OrderId::new("qib-00000000000000aa"),
            &Symbol::parse("BTCUSDT").unwrap(),
            Decimal::ONE,
        )
        .unwrap()
    }

    fn reply(status: &str, executed: &str) -> OrderReply {
        OrderReply {
            order_id: 7,
            client_order_id: "qib-00000000000000aa".into(),
            symbol: "BTCUSDT".into(),
            status: status.into(),
            side: "BUY".into(),
            order_type: "MARKET".into(),
            orig_qty: d("1"),
            executed_qty: d(executed),
            avg_price: d("100"),
            reduce_only: false,
            position_side: "BOTH".into(),
            update_time: 1,
        }
    }

    fn trade(id: u64, order_id: u64, qty: &str) -> Trade {
        Trade {
            id,
            order_id,
            symbol: "BTCUSDT".into(),
            side: "BUY".into(),
            price: d("100"),
            qty: d(qty),
            commission: d("0.02"),
            commission_asset: "USDT".into(),
            realized_pnl: Decimal::ZERO,
            time: 9,
            position_side: "BOTH".into(),
        }
    }

    #[test]
    fn judge_decision_table() {
        let trades = [trade(1, 7, "0.4"), trade(2, 7, "0.6"), trade(3, 8, "5")];
        // (order status, executed, trades seen) → outcome: filled with n fills, rejected, or pending.
        let rows: [(&str, &str, &[Trade], &str); 7] = [
            ("FILLED", "1", &trades, "filled 2"),
            ("FILLED", "1", &trades[..1], "pending"),
            ("EXPIRED", "0.4", &trades[..1], "filled 1"),
            ("EXPIRED", "0", &[], "rejected"),
            ("CANCELED", "0", &[], "rejected"),
            ("NEW", "0", &[], "pending"),
            ("PARTIALLY_FILLED", "0.4", &trades[..1], "pending"),
        ];
        for (status, executed, seen, expected) in rows {
            let got = match judge(&ctx(), &reply(status, executed), seen) {
                Resolution::Outcome(OrderOutcome::Filled { fills }) => {
                    assert!(fills
                        .iter()
                        .all(|f| f.order_id.as_str() == "qib-00000000000000aa" && f.venue_seq.is_none()));
                    assert_eq!(fills[0].fill_id.as_str(), "1", "the venue's trade id");
                    format!("filled {}", fills.len())
                }
                Resolution::Outcome(OrderOutcome::Rejected { reason }) => {
                    assert!(
                        reason.contains(&format!("binance order 7 {status} without a fill")),
                        "{reason}"
                    );
                    "rejected".into()
                }
                Resolution::Pending(_) => "pending".into(),
                Resolution::NeverAccepted => "never".into(),
            };
            assert_eq!(got, expected, "{status} {executed}");
        }
        let mut other = reply("FILLED", "1");
        other.client_order_id = "qib-00000000000000bb".into();
        assert!(matches!(judge(&ctx(), &other, &trades), Resolution::Pending(_)));
    }

    #[test]
    fn not_found_is_definitive_only_after_the_receive_window_and_margin() {
        let sending = Sending {
            sends: 1,
            timestamp: 1_000,
            recv_window_ms: 5_000,
            venue_order_id: None,
        };
        assert!(matches!(
            judge_not_found(&sending, 6_000, 1_000),
            Resolution::Pending(_)
        ));
        assert!(matches!(
            judge_not_found(&sending, 7_000, 1_000),
            Resolution::Pending(_)
        ));
        assert_eq!(judge_not_found(&sending, 7_001, 1_000), Resolution::NeverAccepted);
    }

    #[test]
    fn fills_keep_the_commission_and_its_asset() {
        let mut t = trade(5, 7, "1");
        t.commission = d("-0.0001");
        t.commission_asset = "BNB".into();
        let fill = fill_of(&ctx(), &t).unwrap();
        assert_eq!((fill.fee, fill.fee_asset.as_deref()), (d("0.0001"), Some("BNB")));
        assert_eq!(fill.quote_fee(), Decimal::ZERO, "a BNB fee is not USDT PnL");
    }
}
