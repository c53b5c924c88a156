//! The names of every metric the services export: one list, used by the code that records
//! them and by the tests that hold the Prometheus rules, the dashboard and docs/observability.md
//! to it (a renamed metric cannot leave a rule or a panel reading nothing).

/// Live gauge: distinct symbols with plans published by this bridge over the last 5 minutes.
pub const APPLY_PLAN_SYMBOLS: &str = "quantum_apply_plan_symbols";
/// Size of `SYMBOL_ALLOWLIST` (the diversity alert's denominator)
pub const BRIDGE_ALLOWLIST_SYMBOLS: &str = "quantum_bridge_allowlist_symbols";
/// Histograms per batch.
pub const BRIDGE_BATCH_SECONDS: &str = "quantum_bridge_batch_seconds";
/// Histograms per batch.
pub const BRIDGE_BATCH_SIZE: &str = "quantum_bridge_batch_size";
/// Intents another bridge committed first, or whose reservation lost a race with another bridge (decided again)
pub const BRIDGE_COMMIT_CONFLICTS_TOTAL: &str = "quantum_bridge_commit_conflicts_total";
/// Intents read and acknowledged.
pub const BRIDGE_INTENTS_CONSUMED_TOTAL: &str = "quantum_bridge_intents_consumed_total";
/// BUYs let through without a ledger: the fix at work.
pub const BRIDGE_LEDGER_MISSING_OPEN_TOTAL: &str = "quantum_bridge_ledger_missing_open_total";
/// Intents that had to wait for their mark price (once each)
pub const BRIDGE_MARK_WAITS_TOTAL: &str = "quantum_bridge_mark_waits_total";
/// What became of each intent.
pub const BRIDGE_OUTCOMES_TOTAL: &str = "quantum_bridge_outcomes_total";
/// Plans written (symbols are allowlisted by construction)
pub const BRIDGE_PLANS_PUBLISHED_TOTAL: &str = "quantum_bridge_plans_published_total";
/// In-flight reservations older than `INTENT_BRIDGE_RESERVATION_TTL_MS`, removed.
pub const BRIDGE_RESERVATIONS_EXPIRED_TOTAL: &str = "quantum_bridge_reservations_expired_total";
/// Allowlisted SELLs the bridge refused.
pub const BRIDGE_SELL_BLOCKED_TOTAL: &str = "quantum_bridge_sell_blocked_total";
/// SELLs cut to what was available (position minus SELLs in flight)
pub const BRIDGE_SELL_CUT_TOTAL: &str = "quantum_bridge_sell_cut_total";
/// Intents left pending while they wait for their mark price.
pub const BRIDGE_WAITING_INTENTS: &str = "quantum_bridge_waiting_intents";
/// The consumer loop.
pub const CONSUMER_ENTRIES_TOTAL: &str = "quantum_consumer_entries_total";
/// Failed batches (a fatal failure stops the service)
pub const CONSUMER_ERRORS_TOTAL: &str = "quantum_consumer_errors_total";
/// Sampled every 5 s.
pub const CONSUMER_LAG: &str = "quantum_consumer_lag";
/// Sampled every 5 s.
pub const CONSUMER_PENDING: &str = "quantum_consumer_pending";
/// Consumers of long-gone processes removed (idle `STREAM_CONSUMER_PRUNE_IDLE_MS`, nothing pending)
pub const CONSUMER_PRUNED_TOTAL: &str = "quantum_consumer_pruned_total";
/// The consumer loop.
pub const CONSUMER_REDELIVERIES_TOTAL: &str = "quantum_consumer_redeliveries_total";
/// Entries re-read because the handler left them pending on purpose (an intent waiting for its mark)
pub const CONSUMER_RETRIES_TOTAL: &str = "quantum_consumer_retries_total";
/// 1 while every batch has failed for `STREAM_STALL_MS`; `/readyz` answers 503 meanwhile.
pub const CONSUMER_STALLED: &str = "quantum_consumer_stalled";
/// Dead-lettered entries (`reason="poison"`: failed `STREAM_MAX_DELIVERIES` times)
pub const DLQ_ENTRIES_TOTAL: &str = "quantum_dlq_entries_total";
/// Live gauge: distinct symbols with fills over the last 5 minutes.
pub const EXECUTING_SYMBOLS: &str = "quantum_executing_symbols";
/// Live venue: account syncs (positions, equity, marks) that failed; the keys keep their last values.
pub const EXECUTOR_ACCOUNT_SYNC_FAILURES_TOTAL: &str = "quantum_executor_account_sync_failures_total";
/// Live venue: 1 while Binance bans the IP (HTTP 418; nothing is sent); QuantumExecutorBinanceBanned.
pub const EXECUTOR_BINANCE_BANNED: &str = "quantum_executor_binance_banned";
/// Live venue: server clock minus local clock, measured at start and after every `-1021`.
pub const EXECUTOR_BINANCE_CLOCK_OFFSET_MS: &str = "quantum_executor_binance_clock_offset_ms";
/// Live venue: orders counted against the account's order limits (`X-MBX-ORDER-COUNT-*`)
pub const EXECUTOR_BINANCE_ORDER_COUNT: &str = "quantum_executor_binance_order_count";
/// Live venue: Binance replies by endpoint and what they meant.
pub const EXECUTOR_BINANCE_REPLIES_TOTAL: &str = "quantum_executor_binance_replies_total";
/// Live venue: request weight used, as Binance's `X-MBX-USED-WEIGHT-*` headers report it.
pub const EXECUTOR_BINANCE_USED_WEIGHT: &str = "quantum_executor_binance_used_weight";
/// Orders placed.
pub const EXECUTOR_ORDERS_TOTAL: &str = "quantum_executor_orders_total";
/// Histogram: plan published (its entry id's millisecond) to fill committed.
pub const EXECUTOR_PLAN_TO_FILL_SECONDS: &str = "quantum_executor_plan_to_fill_seconds";
/// Plans by fate.
pub const EXECUTOR_PLANS_TOTAL: &str = "quantum_executor_plans_total";
/// Order records left NEW past the grace period that the sweep finalized from the venue's record.
pub const EXECUTOR_SWEPT_ORDERS_TOTAL: &str = "quantum_executor_swept_orders_total";
/// Live venue: orders whose outcome the venue has not told yet (their plans stay claimed, nothing is sent for them); QuantumExecutorOrderUnknown.
pub const EXECUTOR_UNKNOWN_ORDERS: &str = "quantum_executor_unknown_orders";
/// Live venue: orders that went unknown (a timeout, a 5xx, a crash between send and record), each counted once.
pub const EXECUTOR_UNKNOWN_OUTCOMES_TOTAL: &str = "quantum_executor_unknown_outcomes_total";
/// Venue calls that failed and will be retried.
pub const EXECUTOR_VENUE_ERRORS_TOTAL: &str = "quantum_executor_venue_errors_total";
/// One per published plan: why it is EXECUTE or BLOCKED.
pub const GOVERNOR_DECISIONS_TOTAL: &str = "quantum_governor_decisions_total";
/// The last K judged, and its z-score when the separated rule used one.
pub const GOVERNOR_KILL_SCORE: &str = "quantum_governor_kill_score";
/// The last K judged, and its z-score when the separated rule used one.
pub const GOVERNOR_KILL_SCORE_Z: &str = "quantum_governor_kill_score_z";
/// Applied-fill records (of fills without `venue_seq`) removed because their `ledger.commit` entries can no longer be delivered.
pub const LEDGER_DEDUP_PRUNED_TOTAL: &str = "quantum_ledger_dedup_pruned_total";
/// Fills refused as already applied.
pub const LEDGER_DUPLICATES_SUPPRESSED_TOTAL: &str = "quantum_ledger_duplicates_suppressed_total";
/// Ledger hashes present in Redis (counted every `LEDGER_RECONCILE_INTERVAL_MS`)
pub const LEDGER_ENTRIES: &str = "quantum_ledger_entries";
/// Venue sequence numbers the ledger stopped waiting for (`LEDGER_GAP`)
pub const LEDGER_FILL_GAPS_TOTAL: &str = "quantum_ledger_fill_gaps_total";
/// Fills applied to the ledgers.
pub const LEDGER_FILLS_APPLIED_TOTAL: &str = "quantum_ledger_fills_applied_total";
/// Fills parked because they came before their turn in the venue's sequence.
pub const LEDGER_FILLS_PARKED_TOTAL: &str = "quantum_ledger_fills_parked_total";
/// Fills parked now, all symbols (set by the periodic pass)
pub const LEDGER_PARKED_FILLS: &str = "quantum_ledger_parked_fills";
/// Position after the last fill applied by this process.
pub const LEDGER_POSITION: &str = "quantum_ledger_position";
/// Drift seen, written, and its size.
pub const LEDGER_RECONCILE_APPLIED_TOTAL: &str = "quantum_ledger_reconcile_applied_total";
/// Drift seen, written, and its size.
pub const LEDGER_RECONCILE_DRIFT_EVENTS_TOTAL: &str = "quantum_ledger_reconcile_drift_events_total";
/// Drift seen, written, and its size.
pub const LEDGER_RECONCILE_DRIFT_SIZE: &str = "quantum_ledger_reconcile_drift_size";
/// Counter: `WAIT`s after a commit that fewer than `REDIS_WAIT_REPLICAS` replicas answered in time.
pub const REDIS_WAIT_SHORT_TOTAL: &str = "quantum_redis_wait_short_total";
/// Entries trimmed past `STREAM_RETENTION_MS` (none a group still needed)
pub const STREAM_TRIMMED_ENTRIES_TOTAL: &str = "quantum_stream_trimmed_entries_total";

/// Every name above.
pub const ALL: &[&str] = &[
    APPLY_PLAN_SYMBOLS,
    BRIDGE_ALLOWLIST_SYMBOLS,
    BRIDGE_BATCH_SECONDS,
    BRIDGE_BATCH_SIZE,
    BRIDGE_COMMIT_CONFLICTS_TOTAL,
    BRIDGE_INTENTS_CONSUMED_TOTAL,
    BRIDGE_LEDGER_MISSING_OPEN_TOTAL,
    BRIDGE_MARK_WAITS_TOTAL,
    BRIDGE_OUTCOMES_TOTAL,
    BRIDGE_PLANS_PUBLISHED_TOTAL,
    BRIDGE_RESERVATIONS_EXPIRED_TOTAL,
    BRIDGE_SELL_BLOCKED_TOTAL,
    BRIDGE_SELL_CUT_TOTAL,
    BRIDGE_WAITING_INTENTS,
    CONSUMER_ENTRIES_TOTAL,
    CONSUMER_ERRORS_TOTAL,
    CONSUMER_LAG,
    CONSUMER_PENDING,
    CONSUMER_PRUNED_TOTAL,
    CONSUMER_REDELIVERIES_TOTAL,
    CONSUMER_RETRIES_TOTAL,
    CONSUMER_STALLED,
    DLQ_ENTRIES_TOTAL,
    EXECUTING_SYMBOLS,
    EXECUTOR_ACCOUNT_SYNC_FAILURES_TOTAL,
    EXECUTOR_BINANCE_BANNED,
    EXECUTOR_BINANCE_CLOCK_OFFSET_MS,
    EXECUTOR_BINANCE_ORDER_COUNT,
    EXECUTOR_BINANCE_REPLIES_TOTAL,
    EXECUTOR_BINANCE_USED_WEIGHT,
    EXECUTOR_ORDERS_TOTAL,
    EXECUTOR_PLAN_TO_FILL_SECONDS,
    EXECUTOR_PLANS_TOTAL,
    EXECUTOR_SWEPT_ORDERS_TOTAL,
    EXECUTOR_UNKNOWN_ORDERS,
    EXECUTOR_UNKNOWN_OUTCOMES_TOTAL,
    EXECUTOR_VENUE_ERRORS_TOTAL,
    GOVERNOR_DECISIONS_TOTAL,
    GOVERNOR_KILL_SCORE,
    GOVERNOR_KILL_SCORE_Z,
    LEDGER_DEDUP_PRUNED_TOTAL,
    LEDGER_DUPLICATES_SUPPRESSED_TOTAL,
    LEDGER_ENTRIES,
    LEDGER_FILL_GAPS_TOTAL,
    LEDGER_FILLS_APPLIED_TOTAL,
    LEDGER_FILLS_PARKED_TOTAL,
    LEDGER_PARKED_FILLS,
    LEDGER_POSITION,
    LEDGER_RECONCILE_APPLIED_TOTAL,
    LEDGER_RECONCILE_DRIFT_EVENTS_TOTAL,
    LEDGER_RECONCILE_DRIFT_SIZE,
    REDIS_WAIT_SHORT_TOTAL,
    STREAM_TRIMMED_ENTRIES_TOTAL,
];
