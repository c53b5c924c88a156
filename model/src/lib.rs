//! The quantum pipeline's domain, with no I/O: what an intent, a plan, a fill, a result and a
//! position snapshot are; how each is written to and read from the flat fields of the stream
//! contract; the contract's stream, group and key names; and the pure decisions every stage
//! shares (the governor, netting position maths). Nothing here talks to Redis, reads a socket
//! or spawns a task, so everything here is tested as plain functions (tables and proptest).
//!
//! Values are parsed once at the edge ([`intent`], [`plan`], [`fill`], ...) and carried typed
//! ([`types`]) afterwards; malformed input is an error value naming the field, never a panic.
//!
//! # Layout
//! - [`types`]: newtypes and enums (`Symbol`, `Side`, `Decision`, `PlanId`, `OrderId`, `FillId`).
//! - [`contract`]: stream, group and key names, the operator-facing contract (keep exact).
//! - [`stream_entry`]: an entry as read off a stream (id and text fields) and its size limits.
//! - [`fields`]: the one typed reader of flat text fields (stream entries and hashes alike).
//! - [`intent`]: every intent format production publishes, parsed into one typed `Intent`.
//! - [`plan`], [`execution_result`], [`fill`], [`snapshot`]: the records on `apply.plan`,
//!   `apply.result`, `ledger.commit` and the exchange snapshot hashes, both directions.
//! - [`position`]: netting position maths (increase; reduce, close or flip) and the ledger hash.
//! - [`governor`]: the risk kernel's kill score turned into EXECUTE or BLOCKED (legacy and
//!   entry/exit-separated modes) and its z-score history.
//! - [`reservation`]: in-flight exposure the bridge reserves until the ledger catches up.
//! - [`outcome`]: the bridge's per-intent replay marker.
//! - [`shards`]: `STREAM_SHARDS`, the per-symbol streams split by symbol, and shard names.
//! - [`labels`]: bounded metric labels; [`metric_names`]: every exported metric's name.
//! - [`time`]: the wall-clock helpers stream timestamps use.

pub mod contract;
pub mod execution_result;
pub mod fields;
pub mod fill;
pub mod governor;
pub mod intent;
pub mod labels;
pub mod metric_names;
pub mod outcome;
pub mod plan;
pub mod position;
pub mod reservation;
pub mod shards;
pub mod snapshot;
pub mod stream_entry;
pub mod time;
pub mod types;
