//! The ledger's own keys, found with one SCAN per periodic pass.
//!
//! The housekeeping (the census gauge, pruning the applied-fill records, the parked fills'
//! sweep, reconcile) works on four families of keys. A SCAN walks the whole keyspace, which
//! holds a replay marker and an order record per intent, so one SCAN for all four families
//! replaces the four it took before: its pattern keeps `quantum:position:*` (with and without
//! the `{…}` hash tag) and `quantum:ledger:*`, and leaves the markers and order records, most
//! of the keyspace, on the server.

use fred::prelude::*;

use quantum_model::contract::{LEDGER_KEY_PREFIX, SNAPSHOT_KEY_PREFIX};
use quantum_model::types::Symbol;
use quantum_runtime::consumer::scan_keys;

/// `quantum:` then `led…` or `pos…`, anywhere in the key (`{quantum:position:ledger:X}:parked`).
pub const LEDGER_FAMILIES: &str = "*quantum:[lp][eo][ds]*";

/// The ledger's keys as one SCAN found them, each family sorted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Keyspace {
    /// Symbols with a ledger hash.
    pub ledgers: Vec<Symbol>,
    /// Symbols with an exchange snapshot.
    pub snapshots: Vec<Symbol>,
    /// Symbols with parked fills.
    pub parked: Vec<Symbol>,
    /// The applied-fill record keys.
    pub applied: Vec<String>,
}

impl Keyspace {
    /// Scans the keyspace once.
    ///
    /// # Errors
    /// Redis unreachable or refusing SCAN.
    pub async fn scan(client: &Client) -> Result<Self, Error> {
        Ok(Self::classify(scan_keys(client, LEDGER_FAMILIES).await?))
    }

    /// Sorts keys into the families; anything else (reservations, foreign keys) is left out.
    pub fn classify(keys: Vec<String>) -> Self {
        let parked_prefix = format!("{{{LEDGER_KEY_PREFIX}");
        let mut found = Self::default();
        for key in keys {
            let symbol = |name: &str| Symbol::parse(name).ok();
            if let Some(s) = key.strip_prefix(LEDGER_KEY_PREFIX).and_then(symbol) {
                found.ledgers.push(s);
            } else if let Some(s) = key.strip_prefix(SNAPSHOT_KEY_PREFIX).and_then(symbol) {
                found.snapshots.push(s);
            } else if let Some(s) = key
                .strip_prefix(&parked_prefix)
                .and_then(|k| k.strip_suffix("}:parked"))
                .and_then(symbol)
            {
                found.parked.push(s);
            } else if key
                .strip_prefix(&parked_prefix)
                .and_then(|k| k.strip_suffix("}:applied"))
                .and_then(symbol)
                .is_some()
            {
                found.applied.push(key);
            }
        }
        found.ledgers.sort();
        found.snapshots.sort();
        found.parked.sort();
        found.applied.sort();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(s: &str) -> Symbol {
        Symbol::parse(s).unwrap()
    }

    #[test]
    fn keys_sort_into_their_families() {
        let keys = [
            "quantum:position:ledger:ETHUSDT",
            "quantum:position:ledger:BTCUSDT",
            "quantum:position:snapshot:BTCUSDT",
            "{quantum:position:ledger:SOLUSDT}:parked",
            "{quantum:position:ledger:SOLUSDT}:inflight",
            "{quantum:position:ledger:SOLUSDT}:inflight:version",
            "{quantum:position:ledger:BTCUSDT}:applied",
            "quantum:ledger:applied:ETHUSDT",
            "quantum:position:ledger:not a symbol",
            "quantum:intent_bridge:seen:1-0",
        ];
        let found = Keyspace::classify(keys.iter().map(|k| k.to_string()).collect());
        assert_eq!(found.ledgers, vec![sym("BTCUSDT"), sym("ETHUSDT")]);
        assert_eq!(found.snapshots, vec![sym("BTCUSDT")]);
        assert_eq!(found.parked, vec![sym("SOLUSDT")]);
        assert_eq!(
            found.applied,
            vec!["{quantum:position:ledger:BTCUSDT}:applied".to_string()]
        );
    }
}
