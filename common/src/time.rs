//! Wall-clock helpers for the timestamps stream entries carry.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (the `ts` fields).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Whole seconds since the Unix epoch (the `timestamp` fields, as the Python services wrote them).
pub fn now_secs() -> u64 {
    now_ms() / 1000
}
