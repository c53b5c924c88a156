//! Entries on `quantum:stream:apply.result`: one per plan the executor finishes.

use rust_decimal::Decimal;

use crate::time::now_secs;

/// The outcome of one plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionResult {
    /// The plan's id as received (kept as text: a malformed plan still gets a result).
    pub plan_id: String,
    pub symbol: String,
    pub side: String,
    pub executed: bool,
    pub decision: String,
    /// Why the plan was not executed, or what went wrong.
    pub error: Option<String>,
    pub order_id: Option<String>,
    pub filled_qty: Decimal,
    pub avg_price: Decimal,
    pub fee: Decimal,
}

impl ExecutionResult {
    /// A result for a plan that was not executed.
    pub fn not_executed(plan_id: &str, symbol: &str, side: &str, decision: &str, reason: impl Into<String>) -> Self {
        Self {
            plan_id: plan_id.to_string(),
            symbol: symbol.to_string(),
            side: side.to_string(),
            executed: false,
            decision: decision.to_string(),
            error: Some(reason.into()),
            order_id: None,
            filled_qty: Decimal::ZERO,
            avg_price: Decimal::ZERO,
            fee: Decimal::ZERO,
        }
    }

    /// Flat stream fields.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("plan_id", self.plan_id.clone()),
            ("symbol", self.symbol.clone()),
            ("side", self.side.clone()),
            ("executed", self.executed.to_string()),
            ("decision", self.decision.clone()),
            ("error", self.error.clone().unwrap_or_default()),
            // The Python apply layer called it `reason`; both names carry the same text.
            ("reason", self.error.clone().unwrap_or_default()),
            ("order_id", self.order_id.clone().unwrap_or_default()),
            ("filled_qty", self.filled_qty.to_string()),
            ("avg_price", self.avg_price.to_string()),
            ("fee", self.fee.to_string()),
            ("timestamp", now_secs().to_string()),
        ]
    }
}
