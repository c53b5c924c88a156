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
//! "The venue never received it" is made definitive at the venue itself: `Venue::settle`
//! records the id refused there, so an executor that stalled past its lease and calls the venue
//! late gets that refusal, not a fill nobody would finalize. The grace period exceeds the plan
//! age limit and the order lease, so normally no executor is still about to place it.

use std::time::Duration;

use fred::prelude::*;
use tokio_util::sync::CancellationToken;

use quantum_model::shards::StreamShards;
use quantum_model::time::now_ms;
use quantum_runtime::failure::StageError;

use crate::order::{self, OpenOrder, OrderRef, Outbox, Streams};
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
    /// An order's fills and result go to its symbol's shard.
    pub shards: StreamShards,
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
                Ok(OpenOrder::Stale) => {
                    order::unindex(&self.writer, &coid).await?;
                    continue;
                }
                Err(e) => {
                    tracing::error!(
                        "Open order {coid} unreadable ({e}); left for an operator: repair or finish quantum:order:{coid}"
                    );
                    metrics::counter!(quantum_model::metric_names::EXECUTOR_SWEPT_ORDERS_TOTAL, "outcome" => "unreadable").increment(1);
                    continue;
                }
                Ok(OpenOrder::Unpublished(outbox)) => {
                    // Finished by an executor that died before its fills and result were out.
                    let streams = Streams::of(self.shards, &outbox.order.symbol);
                    order::publish(&self.writer, &streams, std::slice::from_ref(&outbox), &[], &[], &[]).await?;
                    tracing::warn!(
                        "Swept order {coid} of plan {} for {}: finished but not published, its fills and result published",
                        outbox.order.plan_id,
                        outbox.order.symbol
                    );
                    metrics::counter!(quantum_model::metric_names::EXECUTOR_SWEPT_ORDERS_TOTAL, "outcome" => "published").increment(1);
                    finalized += 1;
                    continue;
                }
                Ok(OpenOrder::New(order)) => order,
            };
            // One order the venue cannot answer for does not hold up the others.
            match self.finish(&order).await {
                Ok(true) => finalized += 1,
                Ok(false) => {}
                Err(e @ StageError::Fatal(_)) => return Err(e),
                Err(e) => tracing::warn!(
                    "Sweeping order {} of plan {} failed ({}): {e}; the next pass retries it",
                    order.client_order_id,
                    order.plan_id,
                    e.class()
                ),
            }
        }
        Ok(finalized)
    }

    /// Asks the venue about one open order and finalizes it; returns whether this pass did.
    async fn finish(&mut self, order: &OrderRef) -> Result<bool, StageError> {
        let why = never_placed(&format!(
            "swept: claimed more than INTENT_EXECUTOR_SWEEP_GRACE_MS={} ms ago and its plan was not executed",
            self.grace_ms
        ));
        let outcome = self.venue.settle(&order.client_order_id, &order.symbol, &why).await?;
        let outbox = Outbox::new(order, &outcome, |_| {});
        let finalized = order::finalize(&self.writer, &self.owner, &[(&outbox, &outcome)]).await?;
        if finalized.first() != Some(&true) {
            // Finalized meanwhile by its plan, which publishes it.
            return Ok(false);
        }
        let streams = Streams::of(self.shards, &order.symbol);
        order::publish(&self.writer, &streams, std::slice::from_ref(&outbox), &[], &[], &[]).await?;
        let found = match &outcome {
            OrderOutcome::Filled { .. } => "filled",
            OrderOutcome::Rejected { .. } => "rejected",
        };
        metrics::counter!(quantum_model::metric_names::EXECUTOR_SWEPT_ORDERS_TOTAL, "outcome" => found).increment(1);
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
            quantum_runtime::telemetry::flush_logs();
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}
