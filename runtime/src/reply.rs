//! Redis replies decoded into the model's values, once, at the edge: stream entries from
//! XREADGROUP/XRANGE/XAUTOCLAIM replies, and hashes and optional values as text.

use fred::types::Value;

use quantum_model::stream_entry::StreamEntry;

fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.to_string()),
        Value::Bytes(b) => std::str::from_utf8(b).ok().map(str::to_string),
        Value::Integer(i) => Some(i.to_string()),
        Value::Double(d) => Some(d.to_string()),
        Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn value_lossy(value: &Value) -> String {
    match value {
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        other => value_text(other).unwrap_or_default(),
    }
}

/// Decodes one `[id, [k, v, ...]]` pair. A nil field list (an entry deleted while pending)
/// yields `Ok(None)` for the id so the caller can acknowledge it.
///
/// # Errors
/// A reply that is not an entry.
pub fn decode_entry(value: Value) -> Result<(String, Option<StreamEntry>), String> {
    let mut parts = match value {
        Value::Array(parts) if parts.len() == 2 => parts,
        other => return Err(format!("unexpected stream entry shape: {:?}", other.kind())),
    };
    let raw_fields = parts.pop().unwrap_or(Value::Null);
    let id = value_text(&parts[0]).ok_or("stream entry id is not text")?;
    let raw_fields = match raw_fields {
        Value::Null => return Ok((id, None)),
        Value::Array(items) => items,
        Value::Map(map) => map.inner().into_iter().flat_map(|(k, v)| [Value::from(k), v]).collect(),
        other => return Err(format!("unexpected field list shape: {:?}", other.kind())),
    };
    let mut fields = Vec::with_capacity(raw_fields.len() / 2);
    let mut binary_field = None;
    let mut iter = raw_fields.into_iter();
    while let (Some(k), Some(v)) = (iter.next(), iter.next()) {
        let name = value_lossy(&k);
        if binary_field.is_none() && (value_text(&k).is_none() || value_text(&v).is_none()) {
            binary_field = Some(name.clone());
        }
        fields.push((name, value_lossy(&v)));
    }
    Ok((
        id.clone(),
        Some(StreamEntry {
            id,
            fields,
            binary_field,
        }),
    ))
}

/// Decodes an array of entries (XRANGE, XAUTOCLAIM, one stream of XREADGROUP).
///
/// # Errors
/// A reply that is not an array of entries.
pub fn decode_entries(value: Value) -> Result<Vec<(String, Option<StreamEntry>)>, String> {
    match value {
        Value::Array(items) => items.into_iter().map(decode_entry).collect(),
        Value::Null => Ok(Vec::new()),
        other => Err(format!("unexpected entry list shape: {:?}", other.kind())),
    }
}

/// Decodes an XREADGROUP/XREAD reply for a single stream.
///
/// # Errors
/// A reply that is not a read reply for one stream.
pub fn decode_read_reply(value: Value) -> Result<Vec<(String, Option<StreamEntry>)>, String> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(streams) => {
            let mut out = Vec::new();
            for stream in streams {
                match stream {
                    Value::Array(mut pair) if pair.len() == 2 => {
                        out.extend(decode_entries(pair.pop().unwrap_or(Value::Null))?);
                    }
                    other => return Err(format!("unexpected stream reply shape: {:?}", other.kind())),
                }
            }
            Ok(out)
        }
        Value::Map(map) => {
            let mut out = Vec::new();
            for (_, entries) in map.inner() {
                out.extend(decode_entries(entries)?);
            }
            Ok(out)
        }
        other => Err(format!("unexpected read reply shape: {:?}", other.kind())),
    }
}

/// Converts a reply of HGETALL into pairs of text, skipping binary values.
pub fn hash_pairs(value: Value) -> Vec<(String, String)> {
    match value {
        Value::Map(map) => map
            .inner()
            .into_iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), value_text(&v)?)))
            .collect(),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len() / 2);
            let mut iter = items.into_iter();
            while let (Some(k), Some(v)) = (iter.next(), iter.next()) {
                if let (Some(k), Some(v)) = (value_text(&k), value_text(&v)) {
                    out.push((k, v));
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

/// Reads a reply value as optional text (HGET, HMGET items).
pub fn opt_text(value: &Value) -> Option<String> {
    value_text(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value {
        Value::String(text.into())
    }

    #[test]
    fn decodes_text_and_flags_binary_values() {
        let entry = Value::Array(vec![
            s("1-0"),
            Value::Array(vec![
                s("symbol"),
                s("BTCUSDT"),
                s("side"),
                Value::Bytes(vec![0xff, 0xfe].into()),
            ]),
        ]);
        let (id, entry) = decode_entry(entry).unwrap();
        let entry = entry.unwrap();
        assert_eq!(id, "1-0");
        assert_eq!(entry.get("symbol"), Some("BTCUSDT"));
        assert_eq!(entry.binary_field.as_deref(), Some("side"));
        assert!(entry.check_limits().unwrap_err().contains("not valid UTF-8"));
    }

    #[test]
    fn deleted_pending_entries_decode_as_none() {
        let (id, entry) = decode_entry(Value::Array(vec![s("5-0"), Value::Null])).unwrap();
        assert_eq!(id, "5-0");
        assert!(entry.is_none());
    }
}
