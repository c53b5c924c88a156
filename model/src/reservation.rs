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
//! `side=SELL qty=0.5 notional_usd=32500 ts=1764000000000 held=0:50000000`.
//!
//! The gates need only each symbol's sums, so the scripts that add or remove a reservation
//! keep them beside the hash (`contract::reservation_totals_key`) in the same step: reading a
//! symbol's in-flight state is then O(1), not a walk over every reservation (with the
//! executor behind, a symbol holds thousands). `held` is what the reservation adds to its
//! side's sum (a SELL's qty, a BUY's notional) as whole units and 10^-8 units, each an
//! integer, so Redis adds and subtracts it exactly with HINCRBY (Lua's numbers are doubles).
//! Invariants: a totals hash counts (`count`) exactly the values that carry `held` and sums
//! their `held`; a hash whose length differs from `count` (values written before `held`
//! existed, an operator's HDEL) is summed value by value, and its totals rebuilt.

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

/// What one reservation adds to its side's total, rounded up at [`HELD_DP`] decimal places (the
/// gates may count a hair more than is in flight, never less): whole units and 10^-8 units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub whole: u64,
    /// Below 10^8.
    pub frac: u64,
}

/// The decimal places the totals keep exactly.
pub const HELD_DP: u32 = 8;

/// The largest whole part one reservation adds (10^13: beyond any quantity the pipeline reads,
/// 10^12, and any order the caps let through), so that 900 of them still sum exactly in a Lua
/// double (2^53, the rebuild) and 900,000 inside Redis' 64-bit integers. An amount above it
/// is held at it.
pub const HELD_WHOLE_MAX: u64 = 10_000_000_000_000;

impl Held {
    /// `amount` (not negative) rounded up at [`HELD_DP`] places, the whole part capped at
    /// [`HELD_WHOLE_MAX`].
    pub fn of(amount: Decimal) -> Self {
        let up = amount
            .max(Decimal::ZERO)
            .round_dp_with_strategy(HELD_DP, rust_decimal::RoundingStrategy::AwayFromZero);
        if up > Decimal::from(HELD_WHOLE_MAX) {
            return Self {
                whole: HELD_WHOLE_MAX,
                frac: 0,
            };
        }
        let whole = up.trunc();
        let frac = ((up - whole) * Decimal::from(100_000_000u64)).trunc();
        Self {
            whole: u64::try_from(whole).unwrap_or(HELD_WHOLE_MAX),
            frac: u64::try_from(frac).unwrap_or(0),
        }
    }

    /// The amount it stands for.
    pub fn amount(&self) -> Decimal {
        Decimal::from(self.whole) + Decimal::new(self.frac as i64, HELD_DP)
    }
}

/// A symbol's reservation totals as the scripts keep them (`contract::reservation_totals_key`),
/// in the order [`TOTALS_FIELDS`] names them.
pub const TOTALS_FIELDS: [&str; 5] = [
    "sell_qty_whole",
    "sell_qty_frac",
    "buy_notional_whole",
    "buy_notional_frac",
    "count",
];

impl Reservation {
    /// The hash value.
    pub fn to_value(&self) -> String {
        let held = self.held();
        format!(
            "side={} qty={} notional_usd={} ts={} held={}:{}",
            self.side,
            self.qty.normalize(),
            self.notional_usd.normalize(),
            self.ts_ms,
            held.whole,
            held.frac
        )
    }

    /// What it adds to its side's total: a SELL its quantity, a BUY its notional.
    pub fn held(&self) -> Held {
        Held::of(match self.side {
            Side::Sell => self.qty,
            Side::Buy => self.notional_usd,
        })
    }

    /// Whether a stored value is counted in the totals, by the scripts' own test (`inflight`'s
    /// `held_of`): it starts with `side=BUY ` or `side=SELL ` and ends in `held=<whole>:<frac>`,
    /// both canonical integers of at most 16 digits.
    pub fn is_counted(raw: &str) -> bool {
        let canonical = |n: &str| {
            !n.is_empty() && n.len() <= 16 && n.bytes().all(|b| b.is_ascii_digit()) && (n == "0" || !n.starts_with('0'))
        };
        let sided = raw.starts_with("side=BUY ") || raw.starts_with("side=SELL ");
        let held = raw
            .rsplit_once(" held=")
            .and_then(|(_, held)| held.split_once(':'))
            .is_some_and(|(whole, frac)| canonical(whole) && canonical(frac));
        sided && held
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

/// A symbol's totals, read from the totals hash: the sums, and how many values they count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub sell_qty: Decimal,
    pub buy_notional: Decimal,
    pub count: u64,
}

impl Totals {
    /// Reads the [`TOTALS_FIELDS`] values (absent: 0).
    ///
    /// # Errors
    /// A value that is not an integer, or a negative sum or count: the totals are corrupt.
    pub fn parse(values: &[Option<String>]) -> Result<Self, ReservationError> {
        let err = |detail: String| ReservationError {
            field: "totals".to_string(),
            detail,
        };
        let int = |i: usize| -> Result<i64, ReservationError> {
            match values.get(i).and_then(Option::as_deref) {
                None | Some("") => Ok(0),
                Some(v) => v
                    .parse::<i64>()
                    .map_err(|_| err(format!("{} is not an integer: {v:?}", TOTALS_FIELDS[i]))),
            }
        };
        let sum = |w: usize, f: usize| -> Result<Decimal, ReservationError> {
            let total = (Decimal::from(int(w)?) + Decimal::new(int(f)?, HELD_DP)).normalize();
            if total < Decimal::ZERO {
                return Err(err(format!(
                    "{} is negative: {total}",
                    &TOTALS_FIELDS[w][..TOTALS_FIELDS[w].len() - 6]
                )));
            }
            Ok(total)
        };
        let count = int(4)?;
        Ok(Self {
            sell_qty: sum(0, 1)?,
            buy_notional: sum(2, 3)?,
            count: u64::try_from(count).map_err(|_| err(format!("count is negative: {count}")))?,
        })
    }

    /// The totals the counted values of a symbol's hash add up to.
    ///
    /// # Errors
    /// The first unreadable value.
    pub fn of_values(pairs: &[(String, String)]) -> Result<Self, ReservationError> {
        let mut totals = Self::default();
        for (field, value) in pairs.iter().filter(|(_, v)| Reservation::is_counted(v)) {
            let r = Reservation::parse(field, value)?;
            let held = r.held().amount();
            match r.side {
                Side::Sell => totals.sell_qty += held,
                Side::Buy => totals.buy_notional += held,
            }
            totals.count += 1;
        }
        totals.sell_qty = totals.sell_qty.normalize();
        totals.buy_notional = totals.buy_notional.normalize();
        Ok(totals)
    }
}

impl InFlight {
    /// What the totals say is in flight (what the gates count between walks of the hash).
    pub fn from_totals(totals: &Totals) -> Self {
        Self {
            sell_qty: totals.sell_qty,
            buy_notional: totals.buy_notional,
            ..Self::default()
        }
    }

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
        assert_eq!(
            value,
            "side=SELL qty=0.5 notional_usd=32500 ts=1764000000000 held=0:50000000"
        );
        assert_eq!(Reservation::parse("p", &value), Ok(r));
        assert!(Reservation::is_counted(&value));
        for uncounted in [
            "side=SELL qty=0.5 notional_usd=32500 ts=1764000000000",
            "side=SELL qty=0.5 notional_usd=32500 ts=1 held=01:0",
            "side=SELL qty=0.5 notional_usd=32500 ts=1 held=1:2 extra=3",
            "side=HOLD qty=0.5 notional_usd=32500 ts=1 held=1:2",
            "side=BUY qty=1 held=1:",
        ] {
            assert!(!Reservation::is_counted(uncounted), "{uncounted}");
        }
    }

    #[test]
    fn held_rounds_up_at_eight_places_and_caps_the_absurd() {
        let rows = [
            ("0", 0, 0),
            ("0.5", 0, 50_000_000),
            ("12.34567891", 12, 34_567_891),
            ("0.000000001", 0, 1),
            ("1.000000000000001", 1, 1),
            ("65000", 65_000, 0),
            ("1000000000000", 1_000_000_000_000, 0),
            ("10000000000000.5", HELD_WHOLE_MAX, 0),
            ("-3", 0, 0),
        ];
        for (amount, whole, frac) in rows {
            let amount: Decimal = amount.parse().unwrap();
            assert_eq!(Held::of(amount), Held { whole, frac }, "{amount}");
        }
        let absurd = Decimal::from(HELD_WHOLE_MAX) * Decimal::TEN;
        assert_eq!(Held::of(Decimal::from(HELD_WHOLE_MAX)).whole, HELD_WHOLE_MAX);
        assert_eq!(
            Held::of(absurd),
            Held {
                whole: HELD_WHOLE_MAX,
                frac: 0
            }
        );
        let buy = Reservation {
            side: Side::Buy,
            qty: Decimal::TWO,
            notional_usd: Decimal::new(2001, 1),
            ts_ms: 0,
        };
        assert_eq!(
            buy.held(),
            Held {
                whole: 200,
                frac: 10_000_000
            }
        );
    }

    #[test]
    fn totals_read_what_the_scripts_keep_and_refuse_corruption() {
        let some = |v: &str| Some(v.to_string());
        let values = [some("3"), some("25000000"), some("100"), None, some("4")];
        let totals = Totals::parse(&values).unwrap();
        assert_eq!(totals.sell_qty, Decimal::new(325, 2));
        assert_eq!(totals.buy_notional, Decimal::from(100));
        assert_eq!(totals.count, 4);
        assert_eq!(Totals::parse(&[]).unwrap(), Totals::default());
        for bad in [
            [some("x"), None, None, None, None],
            [some("-1"), None, None, None, some("1")],
            [None, None, None, None, some("-2")],
            [some("1.5"), None, None, None, some("1")],
        ] {
            assert!(Totals::parse(&bad).is_err(), "{bad:?}");
        }
        let pairs = [
            pair("a", "side=SELL qty=1 notional_usd=10 ts=1 held=1:0"),
            pair("b", "side=BUY qty=2 notional_usd=0.123456789 ts=1 held=0:12345679"),
            pair("legacy", "side=SELL qty=7 notional_usd=70 ts=1"),
        ];
        let of = Totals::of_values(&pairs).unwrap();
        assert_eq!(of.sell_qty, Decimal::ONE);
        assert_eq!(of.buy_notional, Decimal::new(12_345_679, 8));
        assert_eq!(of.count, 2);
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

        /// `held` is never less than the amount and over by less than 10^-8; its parts add up.
        #[test]
        fn held_bounds_the_amount_from_above(units in 0u64..u64::MAX, scale in 0u32..16) {
            let amount = Decimal::from(units) / Decimal::from(10u64.pow(scale % 12));
            let amount = amount.round_dp(scale);
            let held = Held::of(amount);
            prop_assert!(held.frac < 100_000_000);
            if amount <= Decimal::from(HELD_WHOLE_MAX) {
                prop_assert!(held.amount() >= amount);
                prop_assert!(held.amount() - amount < Decimal::new(1, HELD_DP));
            }
        }
    }
}
