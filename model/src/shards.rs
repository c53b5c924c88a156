//! Stream sharding (`STREAM_SHARDS`): a stream lives on one Redis node, so one stream per stage
//! caps the pipeline at one node. The per-symbol streams, [`SHARDED_STREAMS`] (`apply.plan`,
//! `apply.result`, `ledger.commit`), are split into `STREAM_SHARDS` streams each, and a symbol
//! always goes to the same shard of each of them.
//!
//! Invariants:
//! - Shard 0 keeps the contract name (`quantum:stream:apply.plan`); shard `i > 0` is the name
//!   followed by `:<i>` (`quantum:stream:apply.plan:1`). `STREAM_SHARDS=1`, the default, is
//!   today's single stream under its contract name.
//! - [`StreamShards::of`] depends only on the symbol and the shard count (FNV-1a of the
//!   symbol's bytes, pinned by a table test), so every replica of every service, of any
//!   version, routes a symbol to the same shard: per-symbol order is kept inside one shard.
//! - A shard's companion keys use the shard's own name as their hash tag
//!   (`{quantum:stream:apply.plan:1}:once:<id>`), so each shard and its keys share one slot.

use crate::contract::{LEDGER_COMMIT_STREAM, PLAN_STREAM, RESULT_STREAM};
use crate::types::Symbol;

/// The streams split by symbol when `STREAM_SHARDS` > 1.
pub const SHARDED_STREAMS: [&str; 3] = [PLAN_STREAM, RESULT_STREAM, LEDGER_COMMIT_STREAM];

/// The most shards a stream may have: far more than nodes a desk runs, few enough that a
/// consumer's one reader connection per shard stays cheap.
pub const MAX_SHARDS: u16 = 64;

/// A shard count out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("STREAM_SHARDS must be between 1 and {MAX_SHARDS}, got {0}")]
pub struct ShardCountError(pub u64);

/// How many shards each of [`SHARDED_STREAMS`] has (1 ..= [`MAX_SHARDS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamShards(u16);

impl Default for StreamShards {
    fn default() -> Self {
        Self::ONE
    }
}

impl StreamShards {
    /// One shard per stream: the contract names alone.
    pub const ONE: Self = Self(1);

    /// # Errors
    /// `count` is 0 or above [`MAX_SHARDS`].
    pub fn new(count: u64) -> Result<Self, ShardCountError> {
        match u16::try_from(count) {
            Ok(n) if (1..=MAX_SHARDS).contains(&n) => Ok(Self(n)),
            _ => Err(ShardCountError(count)),
        }
    }

    pub fn count(self) -> u16 {
        self.0
    }

    /// The shard `symbol` belongs to.
    pub fn of(self, symbol: &Symbol) -> u16 {
        (fnv1a(symbol.as_str().as_bytes()) % u64::from(self.0)) as u16
    }

    /// The name of `shard` of `stream` (shard 0 is the contract name itself).
    pub fn name(self, stream: &str, shard: u16) -> String {
        if shard == 0 {
            stream.to_string()
        } else {
            format!("{stream}:{shard}")
        }
    }

    /// The shard of `stream` that `symbol`'s entries go to.
    pub fn stream_for(self, stream: &str, symbol: &Symbol) -> String {
        self.name(stream, self.of(symbol))
    }

    /// Every shard of `stream`, shard 0 first; a stream that is never sharded (trade.intent,
    /// the DLQs) is its one name.
    pub fn names(self, stream: &str) -> Vec<String> {
        let count = if SHARDED_STREAMS.contains(&stream) { self.0 } else { 1 };
        (0..count).map(|shard| self.name(stream, shard)).collect()
    }

    /// The shard index when `name` is one of `stream`'s shards under this count.
    pub fn index_of(self, stream: &str, name: &str) -> Option<u16> {
        if name == stream {
            return Some(0);
        }
        let index: u16 = name.strip_prefix(stream)?.strip_prefix(':')?.parse().ok()?;
        // `:01` is not shard 1's name: only the canonical spelling is a shard.
        (index > 0 && index < self.0 && self.name(stream, index) == name).then_some(index)
    }
}

/// FNV-1a, 64-bit: stable across versions and platforms (unlike `std`'s hasher), cheap for a
/// symbol's few bytes.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn symbol(s: &str) -> Symbol {
        Symbol::parse(s).expect("valid symbol")
    }

    #[test]
    fn shard_zero_keeps_the_contract_name_and_the_others_are_numbered() {
        let shards = StreamShards::new(3).unwrap();
        assert_eq!(
            shards.names(PLAN_STREAM),
            [
                "quantum:stream:apply.plan",
                "quantum:stream:apply.plan:1",
                "quantum:stream:apply.plan:2"
            ]
        );
        assert_eq!(StreamShards::ONE.names(LEDGER_COMMIT_STREAM), [LEDGER_COMMIT_STREAM]);
        assert_eq!(
            shards.names(crate::contract::INTENT_STREAM),
            [crate::contract::INTENT_STREAM]
        );
    }

    #[test]
    fn counts_outside_one_to_the_maximum_are_refused() {
        for bad in [0, u64::from(MAX_SHARDS) + 1, 1 << 20] {
            assert_eq!(StreamShards::new(bad), Err(ShardCountError(bad)));
        }
        assert_eq!(StreamShards::new(64).map(StreamShards::count), Ok(64));
    }

    /// Pinned: a change here moves symbols between shards, which breaks per-symbol order for
    /// a pipeline upgraded without draining. Never change these values.
    #[test]
    fn routing_is_pinned() {
        let cases = [
            ("BTCUSDT", 2, 0),
            ("ETHUSDT", 2, 0),
            ("SOLUSDT", 2, 1),
            ("AVAXUSDT", 2, 1),
            ("BTCUSDT", 3, 0),
            ("SOLUSDT", 3, 2),
            ("LINKUSDT", 3, 1),
        ];
        let got: Vec<_> = cases
            .iter()
            .map(|(s, n, _)| (*s, *n, StreamShards::new(*n).unwrap().of(&symbol(s))))
            .collect();
        assert_eq!(got, cases.to_vec());
    }

    #[test]
    fn index_of_knows_only_the_canonical_names_under_the_count() {
        let shards = StreamShards::new(2).unwrap();
        assert_eq!(shards.index_of(PLAN_STREAM, PLAN_STREAM), Some(0));
        assert_eq!(shards.index_of(PLAN_STREAM, "quantum:stream:apply.plan:1"), Some(1));
        for other in [
            "quantum:stream:apply.plan:2",
            "quantum:stream:apply.plan:01",
            "quantum:stream:apply.plan:0",
            "quantum:stream:apply.plan.dlq",
            "quantum:stream:apply.plan:",
            RESULT_STREAM,
        ] {
            assert_eq!(shards.index_of(PLAN_STREAM, other), None, "{other}");
        }
    }

    proptest! {
        #[test]
        fn every_symbol_lands_on_a_shard_in_range_whose_name_maps_back(s in "[A-Z0-9]{2,16}", n in 1u64..=64) {
            let shards = StreamShards::new(n).unwrap();
            let sym = symbol(&s);
            let shard = shards.of(&sym);
            prop_assert!(u64::from(shard) < n);
            prop_assert_eq!(shards.index_of(PLAN_STREAM, &shards.stream_for(PLAN_STREAM, &sym)), Some(shard));
        }
    }
}
