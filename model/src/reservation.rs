//! In-flight reservations: orders the bridge has published, or the executor has filled, that
//! the ledger has not applied yet. The bridge's gates count them, so neither a SELL nor the
//! exposure limit can be overshot by work still in flight, within a batch or across batches
//! and restarts.
//!
//! A symbol's reservations live in one hash (`contract::reservation_key`). Its life cycle:
//!
//! 1. the bridge publishes an EXECUTE plan and, in the same transaction, adds the field
//!    `<plan id>`;
//! 2. the executor finishes the order and, in the same transaction as its result, removes the
//!    plan's field and adds one field `<fill id>` per fill (nothing when nothing filled);
//! 3. the ledger applies a fill and, in the same script as the ledger update, removes its field.
//!
//! So at every moment Σ reservations + ledger = what the venue will hold once the pipeline
//! drains. A reservation whose holder vanished (a plan deleted from the stream, a ledger down
//! for long) is ignored after `INTENT_BRIDGE_RESERVATION_TTL_MS` and removed by the bridge.
//!
//! Each value is one greppable line, like the replay markers:
//! `side=SELL qty=0.5 notional_usd=32500 ts=1764000000000`.

use rust_decimal::Decimal;
use thiserror::Error;

use crate::types::{parse_decimal, Side};

/// One reserved order or fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub side: Side,
    pub qty: Decimal,
    /// The order's notional at its price or the mark (0 when none was known).
    pub notional_usd: Decimal,
    /// When it was made (ms).
    pub ts_ms: u64,
}

/// A reservation value that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("reservation {field:?} unreadable: {detail}")]
pub struct ReservationError {
    pub field: String,
    pub detail: String,
}

impl Reservation {
    /// The hash value.
    pub fn to_value(&self) -> String {
        format!(
            "side={} qty={} notional_usd={} ts={}",
            self.side,
            self.qty.normalize(),
            self.notional_usd.normalize(),
            self.ts_ms
        )
    }

    /// Reads a hash value written by [`Self::to_value`].
    ///
    /// # Errors
    /// A value without one of the four parts, or with an unreadable one.
    pub fn parse(field: &str, raw: &str) -> Result<Self, ReservationError> {
        let err = |detail: String| ReservationError {
            field: field.chars().take(64).collect(),
            detail,
        };
        let get = |key: &str| {
            raw.split_whitespace()
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v)
                .ok_or_else(|| err(format!("no {key}")))
        };
        let decimal = |key: &'static str| {
            let value = parse_decimal(key, get(key)?).map_err(|e| err(e.to_string()))?;
            if value < Decimal::ZERO {
                return Err(err(format!("{key} is negative")));
            }
            Ok(value)
        };
        Ok(Self {
            side: Side::parse(get("side")?).map_err(|e| err(e.to_string()))?,
            qty: decimal("qty")?,
            notional_usd: decimal("notional_usd")?,
            ts_ms: get("ts")?.parse().map_err(|_| err("ts is not an integer".into()))?,
        })
    }
}

/// The token a reservation writes after `previous`: the count one higher, and its own plan id,
/// so that only that very commit can have written it.
pub fn next_token(previous: &str, plan_id: &str) -> String {
    let count: u64 = previous.split(':').next().and_then(|n| n.parse().ok()).unwrap_or(0);
    format!("{}:{plan_id}", count + 1)
}

/// What a symbol has in flight, summed from its reservations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InFlight {
    /// Σ qty of reserved SELLs: not available to another SELL.
    pub sell_qty: Decimal,
    /// Σ notional of reserved BUYs: counted in the exposure.
    pub buy_notional: Decimal,
    /// Fields older than the TTL: ignored, and removed by the next commit.
    pub expired: Vec<String>,
    /// The symbol's reservation token (`contract::reservation_version_key`: `<count>:<plan id>`
    /// of the last reservation, empty before the first) this view was read at, or the one this
    /// batch's last reservation writes: what the next commit must find.
    pub token: String,
}

impl InFlight {
    /// Sums a symbol's reservation hash at `now_ms`, ignoring those older than `ttl_ms`.
    ///
    /// # Errors
    /// The first unreadable value: the symbol's in-flight state is unknown, so its gates fail
    /// closed until the value is repaired or removed.
    pub fn summarize(pairs: &[(String, String)], now_ms: u64, ttl_ms: u64) -> Result<Self, ReservationError> {
        let mut sum = Self::default();
        for (field, value) in pairs {
            let r = Reservation::parse(field, value)?;
            if now_ms.saturating_sub(r.ts_ms) > ttl_ms {
                sum.expired.push(field.clone());
                continue;
            }
            sum.add(&r);
        }
        Ok(sum)
    }

    /// Counts one more reservation.
    pub fn add(&mut self, r: &Reservation) {
        match r.side {
            Side::Sell => self.sell_qty += r.qty,
            Side::Buy => self.buy_notional += r.notional_usd,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair(field: &str, value: &str) -> (String, String) {
        (field.to_string(), value.to_string())
    }

    #[test]
    fn values_round_trip_and_read_as_operators_see_them() {
        let r = Reservation {
            side: Side::Sell,
            qty: Decimal::new(5, 1),
            notional_usd: Decimal::new(325_000, 1),
            ts_ms: 1_764_000_000_000,
        };
        let value = r.to_value();
        assert_eq!(value, "side=SELL qty=0.5 notional_usd=32500 ts=1764000000000");
        assert_eq!(Reservation::parse("p", &value), Ok(r));
    }

    #[test]
    fn sums_by_side_and_skips_expired() {
        let pairs = [
            pair("a", "side=SELL qty=1 notional_usd=10 ts=1000"),
            pair("b", "side=SELL qty=0.5 notional_usd=5 ts=9000"),
            pair("c", "side=BUY qty=2 notional_usd=200 ts=9500"),
        ];
        let sum = InFlight::summarize(&pairs, 10_000, 5_000).unwrap();
        assert_eq!(sum.sell_qty, Decimal::new(5, 1));
        assert_eq!(sum.buy_notional, Decimal::from(200));
        assert_eq!(sum.expired, vec!["a".to_string()]);
    }

    #[test]
    fn unreadable_values_are_errors_not_zero() {
        for bad in [
            "",
            "side=SELL qty=1 notional_usd=1",
            "side=HOLD qty=1 notional_usd=1 ts=1",
            "side=SELL qty=-1 notional_usd=1 ts=1",
            "side=SELL qty=NaN notional_usd=1 ts=1",
            "side=SELL qty=1 notional_usd=1 ts=soon",
        ] {
            assert!(InFlight::summarize(&[pair("x", bad)], 0, 1).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tokens_count_and_name_their_reservation() {
        assert_eq!(next_token("", "aa"), "1:aa");
        assert_eq!(next_token("7:aa", "bb"), "8:bb");
        assert_eq!(next_token("garbage", "bb"), "1:bb");
    }

    proptest! {
        #[test]
        fn arbitrary_values_never_panic(field in ".{0,80}", value in ".{0,200}") {
            let _ = Reservation::parse(&field, &value);
        }
    }
}
