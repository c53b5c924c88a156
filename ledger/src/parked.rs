//! The parked fills of a symbol (`{quantum:position:ledger:<SYMBOL>}:parked`): numbered fills
//! that came before their turn, kept until the fills ahead of them are applied (`decisions`).
//!
//! A parked fill's `ledger.commit` entry is acknowledged once the fill is parked: the hash is
//! then the fill's only copy, so a value that cannot be read stops the symbol (like a corrupt
//! ledger) rather than being dropped. Each value is the fill's stream fields as a JSON object
//! plus `parked_ms`, readable with `redis-cli HGETALL`.

use std::collections::BTreeMap;

use quantum_model::fill::Fill;
use quantum_model::stream_entry::StreamEntry;

use crate::decisions::Parked;

/// The hash field and value of a parked fill.
pub fn encode(parked: &Parked) -> (String, String) {
    let mut object: BTreeMap<&str, String> = parked.fill.to_fields().into_iter().collect();
    object.insert("parked_ms", parked.since_ms.to_string());
    let json = serde_json::to_string(&object).unwrap_or_default();
    (parked.seq().to_string(), json)
}

/// Reads a parked fill back.
///
/// # Errors
/// A description naming the field when the value is not a parked fill of number `field`.
pub fn decode(field: &str, value: &str) -> Result<Parked, String> {
    let object: BTreeMap<String, String> =
        serde_json::from_str(value).map_err(|e| format!("parked fill {field} is not a JSON object of strings: {e}"))?;
    let since_ms = object
        .get("parked_ms")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("parked fill {field} lacks parked_ms"))?;
    let fields: Vec<(String, String)> = object.into_iter().filter(|(k, _)| k != "parked_ms").collect();
    let entry = StreamEntry {
        id: String::new(),
        fields,
        binary_field: None,
    };
    let fill = Fill::parse(&entry).map_err(|e| format!("parked fill {field}: {e}"))?;
    if fill.venue_seq.map(|s| s.to_string()).as_deref() != Some(field) {
        return Err(format!("parked fill {field} carries venue_seq {:?}", fill.venue_seq));
    }
    Ok(Parked { fill, since_ms })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quantum_model::types::{FillId, OrderId, PlanId, Side, Symbol};
    use rust_decimal::Decimal;

    #[test]
    fn round_trips_and_refuses_what_is_not_a_parked_fill() {
        let parked = Parked {
            fill: Fill {
                fill_id: FillId::new("qib-0123456789abcdef-1"),
                order_id: OrderId::new("qib-0123456789abcdef"),
                plan_id: PlanId::parse("0123456789abcdef").unwrap(),
                symbol: Symbol::parse("BTCUSDT").unwrap(),
                side: Side::Buy,
                qty: Decimal::new(123456789012345678, 18),
                price: Decimal::from(65000),
                fee: Decimal::ZERO,
                fee_asset: None,
                leverage: Decimal::ONE,
                ts: 5,
                venue_seq: Some(7),
            },
            since_ms: 99,
        };
        let (field, value) = encode(&parked);
        assert_eq!(field, "7");
        assert_eq!(decode(&field, &value).unwrap(), parked, "decimals exact");
        assert!(decode("8", &value).unwrap_err().contains("venue_seq"));
        assert!(decode("7", "{").unwrap_err().contains("JSON"));
        assert!(decode("7", r#"{"venue_seq":"7"}"#).unwrap_err().contains("parked_ms"));
        assert!(decode("7", r#"{"venue_seq":"7","parked_ms":"1"}"#)
            .unwrap_err()
            .contains("fill_id"));
    }
}
