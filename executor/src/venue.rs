//! The venue boundary: where orders go and fills come from (the paper venue, Binance USD-M).

use std::future::Future;

use rust_decimal::Decimal;
use thiserror::Error;

use quantum_model::fill::Fill;
use quantum_model::types::{OrderId, OrderType, PlanId, Side, Symbol};

/// One order as the executor asks a venue to place it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRequest {
    /// Derived from the plan id; the venue deduplicates on it.
    pub client_order_id: OrderId,
    pub plan_id: PlanId,
    pub symbol: Symbol,
    pub side: Side,
    pub order_type: OrderType,
    pub qty: Decimal,
    pub limit_price: Option<Decimal>,
    pub reduce_only: bool,
    pub leverage: Decimal,
}

impl From<&quantum_model::plan::Plan> for OrderRequest {
    /// The order a plan asks for, under its client order id.
    fn from(plan: &quantum_model::plan::Plan) -> Self {
        Self {
            client_order_id: plan.plan_id.client_order_id(),
            plan_id: plan.plan_id.clone(),
            symbol: plan.symbol.clone(),
            side: plan.side,
            order_type: plan.order_type,
            qty: plan.qty,
            limit_price: plan.price,
            reduce_only: plan.reduce_only,
            leverage: plan.leverage,
        }
    }
}

/// What became of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderOutcome {
    /// Executed, in one or more fills.
    Filled { fills: Vec<Fill> },
    /// Refused by the venue, with its reason.
    Rejected { reason: String },
}

impl OrderOutcome {
    /// Total filled quantity, volume-weighted average price and total fee.
    pub fn totals(&self) -> (Decimal, Decimal, Decimal) {
        match self {
            Self::Rejected { .. } => (Decimal::ZERO, Decimal::ZERO, Decimal::ZERO),
            Self::Filled { fills } => {
                let qty: Decimal = fills.iter().map(|f| f.qty).sum();
                let notional: Decimal = fills.iter().map(|f| f.qty * f.price).sum();
                let fee: Decimal = fills.iter().map(|f| f.fee).sum();
                let avg = if qty.is_zero() {
                    Decimal::ZERO
                } else {
                    (notional / qty).round_dp(8).normalize()
                };
                (qty, avg, fee)
            }
        }
    }
}

/// A failure that may pass (the venue or its storage unreachable); the plan is retried.
#[derive(Debug, Error)]
pub enum VenueError {
    #[error("venue storage unavailable: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("venue state for {symbol} is corrupt: {detail}")]
    Corrupt { symbol: Symbol, detail: String },
    #[error("venue kept conflicting on {0}; will retry")]
    Contended(Symbol),
    /// The venue may hold the order but has not said what became of it: the plan stays
    /// claimed and is looked at again, and nothing is sent until it is resolved.
    #[error("outcome of order {client_order_id} unknown: {detail}")]
    Unresolved { client_order_id: OrderId, detail: String },
    /// The venue cannot be reached or holds requests off (rate limit, ban, overload);
    /// nothing was placed.
    #[error("venue unavailable: {0}")]
    Unavailable(String),
    /// The venue refuses this executor's credentials: no retry fixes it.
    #[error("venue refused the credentials: {0}")]
    Credentials(String),
}

impl VenueError {
    /// Short kind for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Redis(_) => "storage",
            Self::Corrupt { .. } => "corrupt_state",
            Self::Contended(_) => "contended",
            Self::Unresolved { .. } => "unknown_outcome",
            Self::Unavailable(_) => "unavailable",
            Self::Credentials(_) => "credentials",
        }
    }
}

impl From<VenueError> for quantum_runtime::failure::StageError {
    /// Corrupt venue state fails the same way every time (poison: isolated, then dead-lettered);
    /// storage errors are classified like any Redis error; contention passes.
    fn from(e: VenueError) -> Self {
        match e {
            VenueError::Redis(e) => e.into(),
            VenueError::Corrupt { .. } => Self::Poison(e.to_string()),
            VenueError::Contended(_) | VenueError::Unresolved { .. } | VenueError::Unavailable(_) => {
                Self::Retryable(e.to_string())
            }
            VenueError::Credentials(_) => Self::Fatal(e.to_string()),
        }
    }
}

/// A place to execute orders. Implementations must be idempotent by client order id:
/// executing the same request again returns the first outcome and places nothing new.
pub trait Venue: Send + Sync {
    /// Short name for logs and metric labels (`paper`, `binance`).
    fn name(&self) -> &'static str;
    /// Places the order, or returns the outcome of the order already placed under its id.
    fn execute(&self, order: &OrderRequest) -> impl Future<Output = Result<OrderOutcome, VenueError>> + Send;
    /// Places one symbol's orders in sequence, each on the position the one before left; stops
    /// at the first error and returns the outcomes before it, with it. One at a time unless the
    /// venue can commit them together (the paper venue: one step per run of orders).
    fn execute_in_order(
        &self,
        orders: &[OrderRequest],
    ) -> impl Future<Output = (Vec<OrderOutcome>, Option<VenueError>)> + Send {
        async move {
            let mut outcomes = Vec::with_capacity(orders.len());
            for order in orders {
                match self.execute(order).await {
                    Ok(outcome) => outcomes.push(outcome),
                    Err(e) => return (outcomes, Some(e)),
                }
            }
            (outcomes, None)
        }
    }
    /// The outcome of the order placed under `client_order_id`, placing nothing; or, when the
    /// venue never received it, `Rejected` with `reason` after making sure it never will: a
    /// late `execute` of the same id (an executor that stalled past its lease) then gets that
    /// rejection instead of a fill nobody would finalize.
    fn settle(
        &self,
        client_order_id: &OrderId,
        symbol: &Symbol,
        reason: &str,
    ) -> impl Future<Output = Result<OrderOutcome, VenueError>> + Send;
}
