//! Shared building blocks of the quantum trading pipeline: domain types, the stream contract,
//! codecs between typed values and flat stream fields, configuration, telemetry and the
//! consumer-group loop every service runs.

pub mod cas;
pub mod config;
pub mod consumer;
pub mod contract;
pub mod durability;
pub mod execution_result;
pub mod failure;
pub mod fill;
pub mod governor;
pub mod http;
pub mod intent;
pub mod labels;
pub mod metric_names;
pub mod outcome;
pub mod plan;
pub mod position;
pub mod redis_server;
pub mod reservation;
pub mod retention;
pub mod snapshot;
pub mod stream_entry;
pub mod systemd;
pub mod telemetry;
pub mod time;
pub mod trace;
pub mod types;
pub mod window;

pub use rust_decimal::Decimal;
