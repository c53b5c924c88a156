//! Bounded metric labels: a process labels at most [`MAX_SYMBOL_LABELS`] distinct symbols by
//! name; the rest share the label `other`, so bad input can never explode Prometheus series.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use crate::types::Symbol;

/// Most distinct symbol label values one process emits.
pub const MAX_SYMBOL_LABELS: usize = 256;

/// The label value for `symbol`.
pub fn symbol_label(symbol: &Symbol) -> String {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if seen.contains(symbol.as_str()) {
        return symbol.to_string();
    }
    if seen.len() < MAX_SYMBOL_LABELS {
        seen.insert(symbol.to_string());
        return symbol.to_string();
    }
    "other".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_capped() {
        let names: Vec<String> = (0..MAX_SYMBOL_LABELS + 10)
            .map(|i| symbol_label(&Symbol::parse(&format!("S{i}USDT")).unwrap()))
            .collect();
        assert!(names.iter().filter(|n| *n == "other").count() >= 10);
        assert_eq!(symbol_label(&Symbol::parse("S0USDT").unwrap()), "S0USDT");
    }
}
