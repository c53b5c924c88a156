//! What became of an intent at the bridge, as recorded in its replay marker
//! (`quantum:intent_bridge:seen:<entry id>`), in the same MULTI/EXEC as the outcome itself, so
//! `quantumctl why` can read it back. The value is one line of `key=value` pairs, the first being
//! `outcome` (published, blocked, skipped, dlq), readable as is with `redis-cli GET`:
//!
//! ```text
//! outcome=blocked plan_id=5f0c... symbol=BTCUSDT side=BUY qty=0.01 reason=kill_score_warning_risk_increase kill_score=0.7563 ts=1764000000000
//! outcome=skipped symbol=ETHUSDT side=SELL reason=ledger_missing_sell ledger=missing ts=...
//! ```
//!
//! Values are codes, symbols, sides and numbers (never free text), so they hold no spaces; a
//! replay adds `replays=<n> last_replay_ts=<ms>`. A marker written by an older bridge holds `1`.
//!
//! The marker is written before the outcome is published (the bridge's commit is a series of
//! one-slot steps, so that it runs on a Redis Cluster): until the outcome is out, the record
//! carries `state=publishing` and a second line holds the outcome itself as JSON, so whoever
//! finds the marker (the redelivered entry, another bridge) publishes that same outcome
//! ([`Marker`]).

use std::fmt;

use crate::fields::Fields;

/// Longest value kept in a record (values are codes and numbers; this only bounds bad input).
const MAX_VALUE_LEN: usize = 64;

/// One intent's recorded outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutcomeRecord {
    pairs: Vec<(String, String)>,
}

impl OutcomeRecord {
    /// A record whose `outcome` is `kind`.
    pub fn new(kind: &str) -> Self {
        Self::default().with("outcome", kind)
    }

    /// Adds (or replaces) `key`; whitespace in the value is replaced so the line stays parseable.
    pub fn with(mut self, key: &str, value: impl fmt::Display) -> Self {
        self.set(key, value);
        self
    }

    /// Sets `key` to `value`, in place.
    pub fn set(&mut self, key: &str, value: impl fmt::Display) {
        let value: String = value
            .to_string()
            .chars()
            .take(MAX_VALUE_LEN)
            .map(|c| if c.is_whitespace() || c == '=' { '_' } else { c })
            .collect();
        match self.pairs.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.pairs.push((key.to_string(), value)),
        }
    }

    /// Reads a marker's value (its first line: a second one is the outcome still being
    /// published, [`Marker`]). `1` (an older bridge's marker) reads as `outcome=processed`.
    pub fn parse(raw: &str) -> Self {
        let pairs: Vec<(String, String)> = raw
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if pairs.is_empty() {
            return Self::new("processed");
        }
        Self { pairs }
    }

    /// A field's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.field(key)
    }

    /// The outcome: published, blocked, skipped, dlq (or processed, for an old marker).
    pub fn kind(&self) -> &str {
        self.get("outcome").unwrap_or("processed")
    }

    /// The reason code, when the outcome has one.
    pub fn reason(&self) -> Option<&str> {
        self.get("reason")
    }

    /// Every pair, in order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// The record after one more replay at `now_ms`.
    pub fn replayed(mut self, now_ms: u64) -> Self {
        let replays = self.get("replays").and_then(|n| n.parse::<u64>().ok()).unwrap_or(0) + 1;
        self.set("replays", replays);
        self.set("last_replay_ts", now_ms);
        self
    }
}

/// What a replay marker holds: the intent's outcome record, and, while that outcome is still
/// being published, the outcome itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// The outcome is out (or there was none to publish: a skip).
    Done(OutcomeRecord),
    /// Decided, not yet known to be out: publishing `outcome` finishes it.
    Publishing(OutcomeRecord, PendingOutcome),
}

/// An outcome decided and not yet published: the stream entry it makes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PendingOutcome {
    pub stream: String,
    pub fields: Vec<(String, String)>,
}

/// A marker whose outcome cannot be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replay marker holds an unreadable pending outcome ({0})")]
pub struct MarkerError(String);

impl Marker {
    /// Reads a marker's value: a record line, and a JSON outcome on a second line while it is
    /// being published.
    ///
    /// # Errors
    /// A second line that is not a pending outcome.
    pub fn parse(raw: &str) -> Result<Self, MarkerError> {
        match raw.split_once('\n') {
            None => Ok(Self::Done(OutcomeRecord::parse(raw))),
            Some((record, outcome)) => {
                let outcome = serde_json::from_str(outcome).map_err(|e| MarkerError(e.to_string()))?;
                let mut record = OutcomeRecord::parse(record);
                record.pairs.retain(|(k, _)| k != "state");
                Ok(Self::Publishing(record, outcome))
            }
        }
    }

    /// The value of a marker for `record` whose `outcome` is still to be published.
    pub fn publishing(record: &OutcomeRecord, outcome: &PendingOutcome) -> String {
        let record = record.clone().with("state", "publishing");
        // A pending outcome is plain strings: serialising it cannot fail.
        let json = serde_json::to_string(outcome).unwrap_or_default();
        format!("{record}\n{json}")
    }

    /// The record, whichever the state.
    pub fn record(&self) -> &OutcomeRecord {
        match self {
            Self::Done(record) | Self::Publishing(record, _) => record,
        }
    }
}

impl fmt::Display for OutcomeRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.pairs.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn records_round_trip_and_count_replays() {
        let r = OutcomeRecord::new("skipped")
            .with("symbol", "ETHUSDT")
            .with("reason", "ledger_missing_sell")
            .with("ts", 17);
        assert_eq!(
            r.to_string(),
            "outcome=skipped symbol=ETHUSDT reason=ledger_missing_sell ts=17"
        );
        let back = OutcomeRecord::parse(&r.to_string());
        assert_eq!(back, r);
        assert_eq!((back.kind(), back.reason()), ("skipped", Some("ledger_missing_sell")));
        let twice = back.replayed(20).replayed(30);
        assert_eq!(twice.get("replays"), Some("2"));
        assert_eq!(twice.get("last_replay_ts"), Some("30"));
        assert_eq!(OutcomeRecord::parse("1").kind(), "processed");
        let odd = OutcomeRecord::new("dlq").with("reason", "a b=c");
        assert_eq!(OutcomeRecord::parse(&odd.to_string()).reason(), Some("a_b_c"));
    }

    #[test]
    fn a_publishing_marker_carries_its_outcome_and_reads_back() {
        let record = OutcomeRecord::new("published").with("plan_id", "ab").with("ts", 5);
        let outcome = PendingOutcome {
            stream: "quantum:stream:apply.plan".into(),
            fields: vec![("plan_id".into(), "ab".into()), ("note".into(), "a=b\nc".into())],
        };
        let raw = Marker::publishing(&record, &outcome);
        assert!(
            raw.starts_with("outcome=published plan_id=ab ts=5 state=publishing\n"),
            "{raw}"
        );
        let back = Marker::parse(&raw).unwrap();
        assert_eq!(back.record().kind(), "published");
        assert_eq!(
            back,
            Marker::Publishing(record, outcome),
            "the record as it was decided"
        );
        assert_eq!(
            Marker::parse("outcome=skipped ts=1").unwrap(),
            Marker::Done(OutcomeRecord::new("skipped").with("ts", 1))
        );
        assert!(Marker::parse("outcome=published\n{not json").is_err());
        let first_line = OutcomeRecord::parse(&raw);
        assert_eq!(
            (first_line.kind(), first_line.get("state")),
            ("published", Some("publishing"))
        );
        assert_eq!(
            first_line.pairs().len(),
            4,
            "nothing of the outcome's JSON: {first_line:?}"
        );
    }

    proptest! {
        /// Any value survives a round trip as a single parseable pair.
        #[test]
        fn any_value_round_trips(key in "[a-z_]{1,12}", value in ".{0,80}") {
            let r = OutcomeRecord::new("published").with(&key, &value);
            let back = OutcomeRecord::parse(&r.to_string());
            prop_assert_eq!(back.kind(), if key == "outcome" { r.kind() } else { "published" });
            prop_assert!(back.pairs().len() <= 2);
        }
    }
}
