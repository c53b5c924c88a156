//! The live venue's own record of an order, `quantum:binance:order:<coid>` (a hash, readable
//! with `redis-cli`), and the pure rules that read it.
//!
//! Invariants:
//! - `state=SENDING` with the request's `timestamp` and `recvWindow` is written (and
//!   acknowledged by Redis) before every send; so an order the venue may hold always has a
//!   SENDING record, through any crash;
//! - a SENDING record is left only for a definitive answer: the venue's final order (FILLED or
//!   REJECTED, the outcome stored with its fills), or proof the request was not accepted
//!   (`IDLE`: a refusal that created nothing, or "not found" once the server's clock has passed
//!   `timestamp + recvWindow` plus the margin, when no request can be accepted any more);
//! - FILLED and REJECTED are final: no later write changes them, and an order with a final
//!   record is never sent again;
//! - every write names the `sends` count it read, and is refused when another writer moved the
//!   record since (the sweep racing a stalled executor), so no two writers act on one read.

use std::collections::BTreeMap;

use quantum_model::fields::Fields;
use quantum_model::fill::Fill;
use quantum_model::stream_entry::StreamEntry;

use crate::venue::OrderOutcome;

/// What the record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Never sent.
    Absent,
    /// The last send provably created nothing; `sends` so far.
    Idle { sends: u64 },
    /// Sent (or about to be): the venue may hold the order.
    Sending(Sending),
    /// The venue's final word.
    Final(OrderOutcome),
}

/// A send whose answer is not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sending {
    pub sends: u64,
    /// The request's `timestamp` (server clock).
    pub timestamp: u64,
    pub recv_window_ms: u64,
    /// The venue's order id, once a reply named it.
    pub venue_order_id: Option<u64>,
}

impl Sending {
    /// The server time after which the request can no longer be accepted, plus `margin_ms`
    /// for the offset's error and the venue's internal queueing.
    pub fn definitive_after(&self, margin_ms: u64) -> u64 {
        self.timestamp + self.recv_window_ms + margin_ms
    }
}

impl Record {
    /// The `sends` count a write must name.
    pub fn sends(&self) -> u64 {
        match self {
            Self::Absent | Self::Final(_) => 0,
            Self::Idle { sends } => *sends,
            Self::Sending(s) => s.sends,
        }
    }

    /// Reads the record's hash.
    ///
    /// # Errors
    /// A field that does not parse (the text says which).
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, String> {
        let get = |name: &str| pairs.field(name);
        let int = |name: &'static str| pairs.integer(name).map_err(|e| e.to_string());
        let sends = int("sends")?.unwrap_or_default();
        match get("state") {
            None if pairs.is_empty() => Ok(Self::Absent),
            Some("IDLE") => Ok(Self::Idle { sends }),
            Some("SENDING") => Ok(Self::Sending(Sending {
                sends,
                timestamp: int("timestamp")?.ok_or("SENDING without timestamp")?,
                recv_window_ms: int("recv_window")?.ok_or("SENDING without recv_window")?,
                venue_order_id: int("venue_order_id")?,
            })),
            Some("FILLED") => {
                let fills = decode_fills(get("fills").unwrap_or("[]"))?;
                Ok(Self::Final(OrderOutcome::Filled { fills }))
            }
            Some("REJECTED") => Ok(Self::Final(OrderOutcome::Rejected {
                reason: get("reason").unwrap_or("rejected").to_string(),
            })),
            other => Err(format!("unknown state {other:?}")),
        }
    }
}

/// The fields that record `outcome` as final.
pub fn final_fields(outcome: &OrderOutcome) -> Vec<(String, String)> {
    match outcome {
        OrderOutcome::Filled { fills } => {
            vec![("state".into(), "FILLED".into()), ("fills".into(), encode_fills(fills))]
        }
        OrderOutcome::Rejected { reason } => {
            vec![("state".into(), "REJECTED".into()), ("reason".into(), reason.clone())]
        }
    }
}

/// Fills as a JSON array of their flat fields (one object per fill).
fn encode_fills(fills: &[Fill]) -> String {
    let objects: Vec<BTreeMap<&str, String>> = fills.iter().map(|f| f.to_fields().into_iter().collect()).collect();
    serde_json::to_string(&objects).unwrap_or_else(|_| "[]".into())
}

fn decode_fills(json: &str) -> Result<Vec<Fill>, String> {
    let objects: Vec<BTreeMap<String, String>> =
        serde_json::from_str(json).map_err(|e| format!("fills are not a JSON array of objects: {e}"))?;
    objects
        .iter()
        .map(|o| {
            let pairs: Vec<(&str, &str)> = o.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Fill::parse(&StreamEntry::new("", &pairs)).map_err(|e| format!("stored fill: {e}"))
        })
        .collect()
}

/// Starts a send: SENDING with the request's timestamp, unless the record is final or moved.
/// KEYS: the record. ARGV: expected sends, symbol, timestamp, recvWindow, TTL (s).
/// Returns OK, FINAL or MOVED.
pub const MARK_SENDING_SCRIPT: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'FILLED' or state == 'REJECTED' then return 'FINAL' end
local sends = tonumber(redis.call('HGET', KEYS[1], 'sends') or '0')
if sends ~= tonumber(ARGV[1]) then return 'MOVED' end
redis.call('HDEL', KEYS[1], 'venue_order_id')
redis.call('HSET', KEYS[1], 'state', 'SENDING', 'symbol', ARGV[2], 'sends', sends + 1,
  'timestamp', ARGV[3], 'recv_window', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 'OK'
"#;

/// Records what became of the last send (the fields given: a final outcome, IDLE, or the
/// venue's order id), unless the record is final or moved.
/// KEYS: the record. ARGV: expected sends, TTL (s), then field/value pairs.
/// Returns OK, FINAL or MOVED.
pub const UPDATE_SCRIPT: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'FILLED' or state == 'REJECTED' then return 'FINAL' end
if tonumber(redis.call('HGET', KEYS[1], 'sends') or '0') ~= tonumber(ARGV[1]) then return 'MOVED' end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 'OK'
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use quantum_model::types::{FillId, OrderId, PlanId, Side, Symbol};
    use rust_decimal::Decimal;

    fn pairs(fields: &[(&str, &str)]) -> Vec<(String, String)> {
        fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn records_read_back_as_written() {
        let fill = Fill {
            fill_id: FillId::new("698759"),
            order_id: OrderId::new("qib-00000000000000aa"),
            plan_id: PlanId::parse("00000000000000aa").unwrap(),
            symbol: Symbol::parse("BTCUSDT").unwrap(),
            side: Side::Buy,
            qty: Decimal::new(2, 3),
            price: Decimal::new(781901, 2),
            fee: Decimal::new(781901, 8),
            fee_asset: Some("BNB".into()),
            leverage: Decimal::ONE,
            ts: 5,
            venue_seq: None,
        };
        let filled = OrderOutcome::Filled { fills: vec![fill] };
        assert_eq!(Record::parse(&final_fields(&filled)).unwrap(), Record::Final(filled));
        let rejected = OrderOutcome::Rejected {
            reason: "binance -2019: Margin is insufficient.".into(),
        };
        assert_eq!(
            Record::parse(&final_fields(&rejected)).unwrap(),
            Record::Final(rejected)
        );
        assert_eq!(Record::parse(&[]).unwrap(), Record::Absent);
        let sending = Record::parse(&pairs(&[
            ("state", "SENDING"),
            ("sends", "2"),
            ("timestamp", "1000"),
            ("recv_window", "5000"),
        ]))
        .unwrap();
        let Record::Sending(s) = sending else {
            panic!("{sending:?}")
        };
        assert_eq!(
            (s.sends, s.definitive_after(10_000), s.venue_order_id),
            (2, 16_000, None)
        );
        assert_eq!(
            Record::parse(&pairs(&[("state", "IDLE"), ("sends", "3")])).unwrap(),
            Record::Idle { sends: 3 }
        );
    }

    #[test]
    fn corrupt_records_are_named() {
        let err = Record::parse(&pairs(&[("state", "SENDING"), ("timestamp", "x")])).unwrap_err();
        assert_eq!(err, "timestamp \"x\" is not an integer");
        assert_eq!(
            Record::parse(&pairs(&[("state", "WHAT")])).unwrap_err(),
            "unknown state Some(\"WHAT\")"
        );
        assert!(Record::parse(&pairs(&[("state", "FILLED"), ("fills", "{")]))
            .unwrap_err()
            .starts_with("fills are not a JSON array"));
    }
}
