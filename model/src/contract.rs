//! Stream, group and key names: the operator-facing contract. Keep these exact.

use crate::types::{OrderId, PlanId, Symbol};

/// Intents published by the trading bot / AI engine.
pub const INTENT_STREAM: &str = "quantum:stream:trade.intent";
/// Consumer group of the bridge on [`INTENT_STREAM`].
pub const INTENT_GROUP: &str = "quantum:group:intent_bridge";
/// Malformed intents, with the source entry id, the reason and the raw fields.
pub const INTENT_DLQ_STREAM: &str = "quantum:stream:trade.intent.dlq";
/// Plans published by the bridge.
pub const PLAN_STREAM: &str = "quantum:stream:apply.plan";
/// Consumer group of the executor on [`PLAN_STREAM`].
pub const PLAN_GROUP: &str = "intent_executor";
/// Plans that failed as poison `STREAM_MAX_DELIVERIES` times, with the source entry id, the
/// error and the delivery count (the executor writes it; other stages' poison goes to their DLQ).
pub const PLAN_DLQ_STREAM: &str = "quantum:stream:apply.plan.dlq";
/// One entry per plan the executor finishes.
pub const RESULT_STREAM: &str = "quantum:stream:apply.result";
/// One entry per fill, written by the executor, applied by the ledger service.
pub const LEDGER_COMMIT_STREAM: &str = "quantum:stream:ledger.commit";
/// Consumer group of the ledger service on [`LEDGER_COMMIT_STREAM`].
pub const LEDGER_GROUP: &str = "quantum:group:ledger";
/// Ledger commits that cannot be parsed.
pub const LEDGER_COMMIT_DLQ_STREAM: &str = "quantum:stream:ledger.commit.dlq";
/// The pipeline's `STREAM_SHARDS`, recorded by the first service to start; every other
/// service must run with the same count (see `shards`).
pub const STREAM_SHARDS_KEY: &str = "quantum:config:stream_shards";
/// Portfolio state (`equity_usd`), read by the bridge's exposure gate.
pub const PORTFOLIO_KEY: &str = "quantum:state:portfolio";
/// Current mark price per symbol (hash field = symbol), written by the venue.
pub const MARK_PRICE_KEY: &str = "quantum:market:mark_price";

/// Prefix of the ledger hashes, followed by the symbol.
pub const LEDGER_KEY_PREFIX: &str = "quantum:position:ledger:";
/// Prefix of the exchange position snapshots, followed by the symbol.
pub const SNAPSHOT_KEY_PREFIX: &str = "quantum:position:snapshot:";

/// The ledger hash of a symbol; only the ledger service writes it.
pub fn ledger_key(symbol: &Symbol) -> String {
    format!("{LEDGER_KEY_PREFIX}{symbol}")
}

/// The fill ids already applied to a symbol's ledger, for fills without a venue sequence
/// number (the live venue's, and those of executors older than `venue_seq`): in the ledger's
/// slot, so one step updates both on a Redis Cluster.
pub fn ledger_applied_key(symbol: &Symbol) -> String {
    format!("{{{LEDGER_KEY_PREFIX}{symbol}}}:applied")
}

/// Where versions before the cluster-safe ledger kept [`ledger_applied_key`]'s records
/// (`quantum:ledger:applied:<SYMBOL>`); the ledger moves them at its start.
pub const LEGACY_LEDGER_APPLIED_PREFIX: &str = "quantum:ledger:applied:";

/// A symbol's fills that came ahead of their turn in the venue's sequence, waiting for the
/// ones before them: field = venue sequence number, value = the fill as JSON (with `parked_ms`).
/// Same hash slot as the ledger.
pub fn ledger_parked_key(symbol: &Symbol) -> String {
    format!("{{{LEDGER_KEY_PREFIX}{symbol}}}:parked")
}

/// The exchange-truth position snapshot of a symbol.
pub fn snapshot_key(symbol: &Symbol) -> String {
    format!("{SNAPSHOT_KEY_PREFIX}{symbol}")
}

/// The bridge's replay marker of an intent entry; its value is the intent's outcome record
/// (`outcome::OutcomeRecord`), kept for `INTENT_BRIDGE_IDEMPOTENCY_TTL`.
pub fn seen_key(entry_id: &str) -> String {
    format!("quantum:intent_bridge:seen:{entry_id}")
}

/// The executor's record of one order (state before and after the venue call).
/// The executor's index of order records still NEW (sorted set: client order id, scored by claim
/// time in ms): the claim adds, the finalize removes, the sweep reads the old ones.
pub const OPEN_ORDERS_KEY: &str = "quantum:executor:open_orders";

pub fn order_key(order_id: &OrderId) -> String {
    format!("quantum:order:{order_id}")
}

/// The live venue's record of an order sent to Binance (`quantum:binance:order:<coid>`): the
/// request's `timestamp` and `recvWindow` written before each send, the outcome after.
pub fn binance_order_key(order_id: &OrderId) -> String {
    format!("quantum:binance:order:{order_id}")
}

/// Prefix of the risk kernel's per-symbol proposal hashes (kill score and its components),
/// followed by the symbol; read by the bridge's governor.
pub const PROPOSAL_KEY_PREFIX: &str = "quantum:harvest:proposal:";

/// The risk kernel's proposal for a symbol.
pub fn proposal_key(symbol: &Symbol) -> String {
    format!("{PROPOSAL_KEY_PREFIX}{symbol}")
}

/// The kill scores the governor observed for a symbol (a sorted set, bounded), from which
/// entries get their z-score. Hash-tagged with the proposal key so both share a cluster slot.
pub fn kill_history_key(symbol: &Symbol) -> String {
    format!("{{{PROPOSAL_KEY_PREFIX}{symbol}}}:kill_history")
}

/// The bridge's effective settings (allowlist and its source, gates, governor), written at
/// each start so `quantumctl why` can explain a symbol with the settings actually running.
pub const BRIDGE_CONFIG_KEY: &str = "quantum:config:intent_bridge";

/// The executor's effective settings (allowlist and its source, venue), written at each start.
pub const EXECUTOR_CONFIG_KEY: &str = "quantum:config:intent_executor";

/// The in-flight reservations of a symbol (`reservation::Reservation`), a hash: the bridge adds
/// one per EXECUTE plan as it publishes it (field = plan id), the executor swaps it for one per
/// fill (field = fill id) or removes it when the plan ends without a fill, and the ledger
/// removes a fill's as it applies it. Hash-tagged with the ledger key: same cluster slot.
pub fn reservation_key(symbol: &Symbol) -> String {
    format!("{{{LEDGER_KEY_PREFIX}{symbol}}}:inflight")
}

/// A symbol's reservation totals (`reservation::Totals`), a hash kept by the same scripts that
/// add and remove its reservations, in the same slot: what the gates read instead of walking
/// every reservation.
pub fn reservation_totals_key(symbol: &Symbol) -> String {
    format!("{{{LEDGER_KEY_PREFIX}{symbol}}}:inflight:total")
}

/// The executor's note that a finished order's plan reservation was swapped for its fills',
/// in the reservations' slot: a repeated publication (after a crash) swaps nothing again.
/// Removed once the order is published.
pub fn reservation_swapped_key(symbol: &Symbol, plan_id: &PlanId) -> String {
    format!("{{{LEDGER_KEY_PREFIX}{symbol}}}:inflight:swapped:{plan_id}")
}

/// The token of the last BUY reservation, all symbols together (`<count>:<plan id>`): the
/// exposure gate sums every symbol, so a BUY commits only while the token is the one its gate
/// read (or the one the batch's previous BUY wrote).
pub const BUYS_VERSION_KEY: &str = "quantum:intent_bridge:buys_version";

/// The token of a symbol's last reservation (`<count>:<plan id>`): a bridge commits a
/// reservation only if the token is still the one it decided on (or the one its batch's previous
/// reservation wrote), so two bridges gating the same symbol at once cannot both spend what is
/// available, and a commit that lost the race cannot let the next one of its batch through.
pub fn reservation_version_key(symbol: &Symbol) -> String {
    format!("{{{LEDGER_KEY_PREFIX}{symbol}}}:inflight:version")
}

/// The plan ids the bridge reserved for intent `entry_id` of `symbol` while its commit runs (a
/// set, in the symbol's slot): the commit that publishes the intent's plan releases every other
/// one (a reservation a crash left before a different decision, a second bridge's).
pub fn reservation_entry_key(symbol: &Symbol, entry_id: &str) -> String {
    format!("{{{LEDGER_KEY_PREFIX}{symbol}}}:inflight:entry:{entry_id}")
}
