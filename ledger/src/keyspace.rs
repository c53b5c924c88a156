//! The ledger's own keys: found by walking the keyspace now and then, and noted as the ledger
//! writes them in between.
//!
//! The housekeeping (the census gauge, pruning the applied-fill records, the parked fills'
//! sweep, reconcile) works on four families of keys. A SCAN walks the whole keyspace, which
//! holds a replay marker and an order record per intent, so its cost grows with the intents of
//! the last day, not with the symbols: one walk (its pattern keeps `quantum:position:*`, with and
//! without the `{…}` hash tag, and `quantum:ledger:*`) every `LEDGER_KEYSPACE_SCAN_MS`, not every
//! pass. Between walks a pass works on what the last walk found and what the ledger itself
//! wrote since ([`Written`]): every key of the families is written by the ledger except the
//! snapshots (the venue's) and keys made by hand, which the next walk finds.
//!
//! Invariant: a pass sees every key the ledger wrote before the pass began. The notes are taken
//! (and cleared) just before a walk starts, and SCAN returns every key that exists from its
//! start to its end (none of these is deleted by anyone but the ledger's own pruning, which
//! keeps the key); a commit noted after that stays noted until the walk after.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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

    /// Adds the keys of `other` this one lacks; each family stays sorted, without repeats.
    pub fn merge(&mut self, other: &Self) {
        fn union<T: Ord + Clone>(into: &mut Vec<T>, from: &[T]) {
            into.extend_from_slice(from);
            into.sort();
            into.dedup();
        }
        union(&mut self.ledgers, &other.ledgers);
        union(&mut self.snapshots, &other.snapshots);
        union(&mut self.parked, &other.parked);
        union(&mut self.applied, &other.applied);
    }

    /// Notes `keys`, written by a commit, sorted into their families as a walk would; and the
    /// snapshot of each ledger written, which the venue writes with the fills (a pass that
    /// finds none skips the symbol quietly).
    pub fn note_written(&mut self, keys: Vec<String>) {
        let mut written = Self::classify(keys);
        written.snapshots.clone_from(&written.ledgers);
        self.merge(&written);
    }
}

/// The keys the ledger's writers noted since the last walk, shared by every writer of the
/// process and its housekeeping.
pub type Written = Arc<Mutex<Keyspace>>;

/// Runs `f` on the notes, whatever a panicking writer left (a note too many costs a read).
fn with_notes<T>(written: &Written, f: impl FnOnce(&mut Keyspace) -> T) -> T {
    f(&mut written.lock().unwrap_or_else(PoisonError::into_inner))
}

/// Notes the keys a commit wrote (see [`Keyspace::note_written`]).
pub fn note_written(written: &Written, keys: Vec<String>) {
    with_notes(written, |notes| notes.note_written(keys));
}

/// What the housekeeping passes work on: the last walk's keys and the notes since.
#[derive(Debug)]
pub struct KeyspaceWalk {
    every: Duration,
    last: Option<Instant>,
    found: Keyspace,
    written: Written,
}

impl KeyspaceWalk {
    /// Walks at the first pass, then once `every` has passed since the last walk.
    pub fn new(every: Duration, written: Written) -> Self {
        Self {
            every,
            last: None,
            found: Keyspace::default(),
            written,
        }
    }

    /// Where the writers note their keys for this walk.
    pub fn notes(&self) -> Written {
        self.written.clone()
    }

    /// Whether this pass walks the keyspace.
    fn due(&self) -> bool {
        self.last.is_none_or(|t| t.elapsed() >= self.every)
    }

    /// The keys of this pass, walking the keyspace when due.
    ///
    /// # Errors
    /// Redis unreachable or refusing SCAN: the notes stay for the next pass, and [`Self::known`]
    /// still says what is known.
    pub async fn keys(&mut self, client: &Client) -> Result<Keyspace, Error> {
        if self.due() {
            let before = with_notes(&self.written, std::mem::take);
            match Keyspace::scan(client).await {
                Ok(found) => {
                    self.found = found;
                    self.last = Some(Instant::now());
                }
                Err(e) => {
                    with_notes(&self.written, |notes| notes.merge(&before));
                    return Err(e);
                }
            }
        }
        Ok(self.known())
    }

    /// The last walk's keys and the notes since.
    pub fn known(&self) -> Keyspace {
        let mut keys = self.found.clone();
        with_notes(&self.written, |notes| keys.merge(notes));
        keys
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

    #[test]
    fn a_merge_keeps_each_family_sorted_and_without_repeats() {
        let mut walked = Keyspace {
            ledgers: vec![sym("BTCUSDT"), sym("SOLUSDT")],
            snapshots: vec![sym("BTCUSDT")],
            parked: Vec::new(),
            applied: vec!["{quantum:position:ledger:BTCUSDT}:applied".into()],
        };
        let noted = Keyspace {
            ledgers: vec![sym("ETHUSDT"), sym("BTCUSDT")],
            snapshots: vec![sym("ETHUSDT")],
            parked: vec![sym("ETHUSDT")],
            applied: vec!["{quantum:position:ledger:BTCUSDT}:applied".into()],
        };
        walked.merge(&noted);
        assert_eq!(walked.ledgers, vec![sym("BTCUSDT"), sym("ETHUSDT"), sym("SOLUSDT")]);
        assert_eq!(walked.snapshots, vec![sym("BTCUSDT"), sym("ETHUSDT")]);
        assert_eq!(walked.parked, vec![sym("ETHUSDT")]);
        assert_eq!(walked.applied.len(), 1);
    }

    #[test]
    fn the_known_keys_are_the_walk_s_and_the_notes_since() {
        let notes = Written::default();
        let walk = KeyspaceWalk::new(Duration::from_secs(60), notes.clone());
        assert!(walk.due(), "the first pass walks");
        assert_eq!(walk.known(), Keyspace::default());
        note_written(
            &notes,
            vec![
                "quantum:position:ledger:ETHUSDT".into(),
                "{quantum:position:ledger:ETHUSDT}:inflight".into(),
                "{quantum:position:ledger:ETHUSDT}:parked".into(),
            ],
        );
        let known = walk.known();
        assert_eq!(known.ledgers, vec![sym("ETHUSDT")]);
        assert_eq!(
            known.snapshots,
            vec![sym("ETHUSDT")],
            "the venue writes a ledger's snapshot"
        );
        assert_eq!(known.parked, vec![sym("ETHUSDT")]);
        assert!(known.applied.is_empty());
    }
}
