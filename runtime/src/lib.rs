//! What every quantum service runs on: the Redis connection and its settings, the
//! consumer-group loop, the atomic compare-and-set writes, stream retention, logging, traces,
//! metrics, the HTTP endpoints and systemd integration. The domain it carries lives in
//! `quantum_model`; this crate is the I/O around it.
//!
//! The loop's guarantee: an entry is acknowledged only together with (or after) the step that
//! makes its effect durable, a poison entry is isolated from its batch and dead-lettered after
//! `STREAM_MAX_DELIVERIES`, and failures are typed once at the boundary ([`failure`]):
//! retryable, fatal or poison.
//!
//! # Layout
//! Public modules are the API the services use; `durability`, `retention` and `systemd` are the
//! loop's and the connection's own and stay private.
//! - [`config`]: the shared flags (Redis URL, TLS, ACL user, consumer settings) and connecting.
//! - [`consumer`]: the consumer-group loop (recover, reclaim, read, dispatch, isolate poison),
//!   one per shard of the stream read ([`consumer::run_shards`]).
//! - [`sharding`]: every service of a pipeline runs with the same `STREAM_SHARDS`.
//! - [`append_once`]: stream entries appended once each (a marker in the stream's slot), and
//!   dead-lettering as two steps a cluster can take.
//! - [`failure`]: `StageError` (retryable / fatal / poison) from Redis error kinds and codes.
//! - [`reply`]: Redis replies decoded into stream entries and text.
//! - [`replication`]: `WAIT` for replicas after money-path commits (`REDIS_WAIT_REPLICAS`).
//! - [`cas`]: versioned multi-key writes in one Lua script.
//! - [`inflight`]: the Lua that keeps a symbol's reservation totals with its reservations.
//! - [`nodes`]: the primaries of a Redis Cluster, for commands about one node (SCAN, INFO, WAIT).
//! - `retention`: bounded streams (trimming by age).
//! - `durability`: the Redis persistence settings the exactly-once records depend on.
//! - [`telemetry`], [`trace`]: log lines (text or JSON) and OTLP traces across the stages.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`; [`window`]: live symbol-window gauges.
//! - `systemd`: readiness, stopping and watchdog notifications.

pub mod append_once;
pub mod cas;
pub mod config;
pub mod consumer;
mod durability;
pub mod failure;
pub mod http;
pub mod inflight;
pub mod nodes;
pub mod replication;
pub mod reply;
mod retention;
pub mod sharding;
mod systemd;
pub mod telemetry;
pub mod trace;
pub mod window;
