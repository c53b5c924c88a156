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

/// The millisecond time in a stream entry id (Redis' clock when the entry was added).
pub fn entry_ms(entry_id: &str) -> Option<u64> {
    entry_id.split('-').next()?.parse().ok()
}

/// How old an entry is at `now_ms`, by its id (0 for an unreadable id or a clock behind Redis').
pub fn entry_age_ms(entry_id: &str, now_ms: u64) -> u64 {
    entry_ms(entry_id).map_or(0, |added| now_ms.saturating_sub(added))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_as_old_as_its_id_says() {
        assert_eq!(entry_age_ms("1000-0", 4000), 3000);
        assert_eq!(
            entry_age_ms("5000-7", 4000),
            0,
            "a clock behind Redis' is not negative age"
        );
        assert_eq!(entry_age_ms("garbage", 4000), 0);
        assert_eq!(entry_ms("17-3"), Some(17));
    }
}
