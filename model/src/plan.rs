//! Plans on `quantum:stream:apply.plan`: the bridge writes them, the executor reads them.

use crate::fields::Fields;
use rust_decimal::Decimal;
use thiserror::Error;

use crate::governor::PROPOSAL_FIELDS;
use crate::intent::{Intent, CARRIED_FIELDS, MAX_CARRIED_LEN};
use crate::stream_entry::StreamEntry;
use crate::types::{parse_bool, parse_decimal, Decision, OrderType, ParseError, PlanId, Side, Symbol};

/// Why a plan entry could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    #[error("{0}")]
    Oversized(String),
    #[error("plan is missing field {0}")]
    Missing(&'static str),
    #[error(transparent)]
    Field(#[from] ParseError),
    #[error("qty must be greater than zero, got {0}")]
    NotPositive(Decimal),
}

/// A plan to place one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub plan_id: PlanId,
    pub decision: Decision,
    pub symbol: Symbol,
    pub side: Side,
    pub order_type: OrderType,
    pub qty: Decimal,
    /// Limit price of LIMIT plans.
    pub price: Option<Decimal>,
    pub reduce_only: bool,
    pub leverage: Decimal,
    pub stop_loss: Option<Decimal>,
    pub take_profit: Option<Decimal>,
    /// The trade.intent entry the plan came from.
    pub intent_id: String,
    /// Why a BLOCKED/SKIP plan is not to be executed.
    pub reason: Option<String>,
    /// The codes of every rule that decided the plan (the governor's, today).
    pub reason_codes: Vec<String>,
    /// The governor's inputs: the kill score and its z-score ([`SCORE_FIELDS`]), then the
    /// proposal's components and action, as the operator should see them beside the decision.
    pub risk: Vec<(&'static str, String)>,
    /// The producer's extras ([`CARRIED_FIELDS`]), in that order.
    pub carried: Vec<(&'static str, String)>,
    /// Unix seconds when the plan was made.
    pub timestamp: u64,
}

/// The governor's scores a plan may carry, written first; the proposal's own fields follow
/// (`governor::PROPOSAL_FIELDS` without K and the epoch, in that order).
pub const SCORE_FIELDS: [&str; 2] = ["kill_score", "kill_score_z"];

/// Value of the `source` field on plans the bridge writes.
pub const PLAN_SOURCE: &str = "intent_bridge";

impl Plan {
    /// Builds the EXECUTE plan for a gated intent with its resolved quantity.
    pub fn from_intent(intent: &Intent, qty: Decimal, timestamp: u64) -> Self {
        Self {
            plan_id: PlanId::derive(&intent.intent_id, &intent.symbol, intent.side, qty),
            decision: Decision::Execute,
            symbol: intent.symbol.clone(),
            side: intent.side,
            order_type: intent.order_type,
            qty,
            price: intent.limit_price,
            reduce_only: intent.reduce_only,
            leverage: intent.leverage,
            stop_loss: intent.stop_loss,
            take_profit: intent.take_profit,
            intent_id: intent.intent_id.clone(),
            reason: None,
            reason_codes: Vec::new(),
            risk: Vec::new(),
            carried: intent.carried.clone(),
            timestamp,
        }
    }

    /// Flat, human-readable stream fields; optional values are left out when unset,
    /// as the Python bridge did.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("plan_id", self.plan_id.to_string()),
            ("decision", self.decision.to_string()),
            ("symbol", self.symbol.to_string()),
            ("side", self.side.to_string()),
            ("type", self.order_type.to_string()),
            ("qty", self.qty.to_string()),
        ];
        if let Some(price) = self.price {
            fields.push(("price", price.to_string()));
        }
        fields.push(("reduceOnly", self.reduce_only.to_string()));
        fields.push(("leverage", self.leverage.to_string()));
        if let Some(sl) = self.stop_loss {
            fields.push(("stop_loss", sl.to_string()));
        }
        if let Some(tp) = self.take_profit {
            fields.push(("take_profit", tp.to_string()));
        }
        if let Some(reason) = &self.reason {
            fields.push(("reason", reason.clone()));
        }
        if !self.reason_codes.is_empty() {
            fields.push(("reason_codes", self.reason_codes.join(",")));
        }
        fields.extend(self.risk.iter().cloned());
        fields.extend(self.carried.iter().cloned());
        fields.push(("source", PLAN_SOURCE.to_string()));
        fields.push(("signature", PLAN_SOURCE.to_string()));
        fields.push(("intent_id", self.intent_id.clone()));
        fields.push(("timestamp", self.timestamp.to_string()));
        fields
    }

    /// Reads a plan entry.
    ///
    /// # Errors
    /// The first field that is missing, oversized or invalid.
    pub fn parse(entry: &StreamEntry) -> Result<Self, PlanError> {
        entry.check_limits().map_err(PlanError::Oversized)?;
        let req = |name: &'static str| entry.text(name).ok_or(PlanError::Missing(name));
        // The Python services wrote an absent price as "None".
        let opt = |name: &'static str| -> Result<Option<Decimal>, PlanError> {
            entry
                .text(name)
                .filter(|v| !v.eq_ignore_ascii_case("none"))
                .map(|v| parse_decimal(name, v))
                .transpose()
                .map_err(Into::into)
        };
        let qty = parse_decimal("qty", req("qty")?)?;
        if qty <= Decimal::ZERO {
            return Err(PlanError::NotPositive(qty));
        }
        Ok(Self {
            plan_id: PlanId::parse(req("plan_id")?)?,
            decision: Decision::parse(req("decision")?)?,
            symbol: Symbol::parse(req("symbol")?)?,
            side: Side::parse(req("side")?)?,
            order_type: entry
                .get("type")
                .map(OrderType::parse)
                .transpose()?
                .unwrap_or(OrderType::Market),
            qty,
            price: opt("price")?,
            reduce_only: entry
                .get("reduceOnly")
                .map(|v| parse_bool("reduceOnly", v))
                .transpose()?
                .unwrap_or(false),
            leverage: opt("leverage")?.unwrap_or(Decimal::ONE),
            stop_loss: opt("stop_loss")?,
            take_profit: opt("take_profit")?,
            intent_id: entry.get("intent_id").unwrap_or_default().to_string(),
            reason: entry.get("reason").map(str::to_string),
            reason_codes: entry
                .get("reason_codes")
                .map(|codes| {
                    codes
                        .split(',')
                        .map(str::trim)
                        .filter(|c| !c.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            risk: {
                let mut risk = present(entry, &SCORE_FIELDS);
                risk.extend(present(entry, &PROPOSAL_FIELDS[1..7]));
                risk
            },
            carried: present(entry, &CARRIED_FIELDS),
            // Informational: an unreadable time reads as 0, it decides nothing.
            timestamp: entry.integer("timestamp").ok().flatten().unwrap_or_default(),
        })
    }
}

/// The `names` present on `entry`, in `names` order (informational text, length-capped).
fn present(entry: &StreamEntry, names: &[&'static str]) -> Vec<(&'static str, String)> {
    names
        .iter()
        .filter_map(|name| {
            entry
                .text(name)
                .map(|v| (*name, crate::stream_entry::truncate(v, MAX_CARRIED_LEN).to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intent::IntentLimits;

    #[test]
    fn plan_round_trips_through_fields() {
        let entry = StreamEntry::new(
            "9-0",
            &[
                ("symbol", "ETHUSDT"),
                ("side", "BUY"),
                ("qty", "0.25"),
                ("stop_loss", "2900"),
                ("leverage", "3"),
                ("confidence", "0.8"),
                ("regime", "range"),
            ],
        );
        let intent = Intent::parse(&entry, &IntentLimits::default()).unwrap();
        let mut plan = Plan::from_intent(&intent, intent.quantity(None).unwrap(), 1_700_000_000);
        plan.decision = Decision::Blocked;
        plan.reason = Some("kill_score_warning_risk_increase".into());
        plan.reason_codes = vec!["kill_score_warning_risk_increase".into()];
        plan.risk = vec![("kill_score", "0.7563".into()), ("k_regime_flip", "1.0".into())];
        let fields = plan.to_fields();
        let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert!(pairs.contains(&("reduceOnly", "false")));
        assert!(pairs.contains(&("source", "intent_bridge")));
        assert!(!pairs.iter().any(|(k, _)| *k == "take_profit"));
        assert!(pairs.contains(&("reason_codes", "kill_score_warning_risk_increase")));
        assert!(pairs.contains(&("confidence", "0.8")));
        let back = Plan::parse(&StreamEntry::new("10-0", &pairs)).unwrap();
        assert_eq!(back, plan);
    }

    #[test]
    fn malformed_plans_name_the_field() {
        let err = Plan::parse(&StreamEntry::new("1-0", &[("plan_id", "abc")])).unwrap_err();
        assert_eq!(err, PlanError::Missing("qty"));
        let err = Plan::parse(&StreamEntry::new(
            "1-0",
            &[
                ("plan_id", "zz"),
                ("decision", "EXECUTE"),
                ("symbol", "BTCUSDT"),
                ("side", "BUY"),
                ("qty", "1"),
            ],
        ))
        .unwrap_err();
        assert!(err.to_string().contains("plan_id"));
    }
}
