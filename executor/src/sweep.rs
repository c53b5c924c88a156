//! The sweep: no fill is lost when a plan cannot finish its own order.
//!
//! A plan finalizes its order in the batch that placed it, or when it is redelivered after a
//! crash. A plan trimmed or deleted from `apply.plan` after its order was placed is neither:
//! its entry is acknowledged unread and its order record stays NEW. At start and every
//! `INTENT_EXECUTOR_SWEEP_INTERVAL_MS` the sweep takes the order records left NEW for longer
//! than `INTENT_EXECUTOR_SWEEP_GRACE_MS` (from `quantum:executor:open_orders`), asks the venue
//! about each, and finalizes it with the venue's answer: its fills go to the ledger and its
//! result to `apply.result`, whether or not the plan still exists.
//!
//! "The venue never received it" is definitive only once no executor can still place it: a
//! plan is placed only while younger than `INTENT_EXECUTOR_MAX_PLAN_AGE_MS` (an older one is
//! only looked up), and the grace period must exceed that age. So such an order is finalized
//! REJECTED, never placed; with the age limit off (0) it is left NEW and logged instead.

use std::time::Duration;

use fred::prelude::*;
use fred::types::Value;
use tokio_util::sync::CancellationToken;

use quantum_common::failure::StageError;
use quantum_common::time::now_ms;

use crate::order::{self, OrderRef};
use crate::venue::{OrderOutcome, Venue};
use crate::{never_placed, report_order, ExecutorStats};

/// Most records one pass looks at; the rest wait for the next pass.
const SWEEP_LIMIT: usize = 256;

/// Finishes orders left NEW (see the module doc).
pub struct Sweeper<V: Venue> {
    /// Its name on the orders it finalizes.
    pub owner: String,
    pub writer: Client,
    pub venue: V,
    /// Records claimed longer ago than this (ms) are swept.
    pub grace_ms: u64,
    /// Plans older than this are never placed (0: no limit, so "not at the venue" is never
    /// definitive).
    pub max_plan_age_ms: u64,
    pub stats: ExecutorStats,
}

impl<V: Venue> Sweeper<V> {
    /// One pass; returns how many orders it finalized.
    ///
    /// # Errors
    /// Redis or the venue failing; the records stay NEW for the next pass.
    pub async fn sweep(&mut self) -> Result<usize, StageError> {
        let now = now_ms();
        let coids = order::open_orders_before(&self.writer, now.saturating_sub(self.grace_ms), SWEEP_LIMIT).await?;
        let mut finalized = 0;
        for coid in coids {
            let order = match order::read_open_order(&self.writer, &coid).await? {
                None => {
                    // Finished, or gone: only its index entry was left.
                    order::unindex(&self.writer, &coid).await?;
                    continue;
                }
                Some(Err(e)) => {
                    tracing::error!(
                        "Open order {coid} unreadable ({e}); left NEW for an operator: repair or finish quantum:order:{coid}"
                    );
                    metrics::counter!("quantum_executor_swept_orders_total", "outcome" => "unreadable").increment(1);
                    continue;
                }
                Some(Ok(order)) => order,
            };
            if self.finish(&order).await? {
                finalized += 1;
            }
        }
        Ok(finalized)
    }

    /// Asks the venue about one open order and finalizes it; returns whether this pass did.
    async fn finish(&mut self, order: &OrderRef) -> Result<bool, StageError> {
        let outcome = match self.venue.lookup(&order.client_order_id, &order.symbol).await? {
            Some(outcome) => outcome,
            None if self.max_plan_age_ms > 0 => never_placed(&format!(
                "swept: claimed more than INTENT_EXECUTOR_SWEEP_GRACE_MS={} ms ago and its plan was not executed",
                self.grace_ms
            )),
            None => {
                tracing::warn!(
                    "Open order {} of plan {} is not at the venue; left NEW (INTENT_EXECUTOR_MAX_PLAN_AGE_MS=0: it could still be placed)",
                    order.client_order_id,
                    order.plan_id
                );
                return Ok(false);
            }
        };
        let pipeline = self.writer.pipeline();
        order::queue_finalize(&pipeline, &self.owner, order, &outcome, |_| {}).await?;
        let replies: Vec<Value> = pipeline.all().await?;
        if replies.first().and_then(Value::as_i64) != Some(1) {
            // Finalized meanwhile by its plan.
            return Ok(false);
        }
        let found = match &outcome {
            OrderOutcome::Filled { .. } => "filled",
            OrderOutcome::Rejected { .. } => "rejected",
        };
        metrics::counter!("quantum_executor_swept_orders_total", "outcome" => found).increment(1);
        tracing::warn!(
            "Swept order {} of plan {} for {}: left NEW past the grace period, finalized {found} from the venue's record",
            order.client_order_id,
            order.plan_id,
            order.symbol
        );
        report_order(&mut self.stats, &tracing::Span::none(), order, &outcome);
        Ok(true)
    }

    /// Sweeps at once, then every `interval`, until `shutdown`.
    pub async fn run(mut self, interval: Duration, shutdown: CancellationToken) {
        loop {
            match self.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::info!("Sweep finalized {n} open orders"),
                Err(e) => tracing::warn!("Sweeping open orders failed ({}): {e}; next pass retries", e.class()),
            }
            // Lines are buffered; a pass's are written at its end, like a batch's.
            quantum_common::telemetry::flush_logs();
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}
