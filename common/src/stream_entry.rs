//! Stream entries as read off Redis: an id and flat fields, decoded once at the edge.

use fred::types::Value;

/// Largest field value (bytes) the services accept; anything larger is bad input.
pub const MAX_FIELD_BYTES: usize = 16 * 1024;
/// Most fields one entry may carry.
pub const MAX_FIELDS: usize = 64;

/// One stream entry with its fields decoded to text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The entry id, e.g. `1700000000000-0`.
    pub id: String,
    /// Field/value pairs in stream order; non-UTF-8 bytes are replaced (see `binary_field`).
    pub fields: Vec<(String, String)>,
    /// The first field whose name or value was not valid UTF-8, if any.
    pub binary_field: Option<String>,
}

impl StreamEntry {
    /// Builds an entry from text pairs (tests and tools).
    pub fn new(id: impl Into<String>, fields: &[(&str, &str)]) -> Self {
        Self {
            id: id.into(),
            fields: fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            binary_field: None,
        }
    }

    /// The value of the first field with this name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The fields flattened as `k=v` pairs joined by spaces, for DLQ records and logs.
    pub fn raw_text(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.fields {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(k);
            out.push('=');
            out.push_str(v);
        }
        out
    }

    /// Checks the generic size limits every service applies before looking at content.
    ///
    /// # Errors
    /// The name of the first field that is binary or above [`MAX_FIELD_BYTES`].
    pub fn check_limits(&self) -> Result<(), String> {
        if let Some(name) = &self.binary_field {
            return Err(format!("field {name:?} is not valid UTF-8"));
        }
        if self.fields.len() > MAX_FIELDS {
            return Err(format!(
                "entry has {} fields, at most {MAX_FIELDS} allowed",
                self.fields.len()
            ));
        }
        if let Some((k, v)) = self.fields.iter().find(|(k, v)| k.len() + v.len() > MAX_FIELD_BYTES) {
            return Err(format!(
                "field {:?} is {} bytes, at most {MAX_FIELD_BYTES} allowed",
                truncate(k, 64),
                k.len() + v.len()
            ));
        }
        Ok(())
    }
}

/// Shortens text for log lines and DLQ records without splitting a character.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

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
    use fred::types::Value;

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

    #[test]
    fn limits_reject_oversized_entries() {
        let big = "x".repeat(MAX_FIELD_BYTES + 1);
        let entry = StreamEntry::new("1-0", &[("symbol", big.as_str())]);
        assert!(entry.check_limits().unwrap_err().contains("bytes"));
        let many: Vec<(String, String)> = (0..=MAX_FIELDS).map(|i| (format!("f{i}"), "v".into())).collect();
        let entry = StreamEntry {
            id: "1-0".into(),
            fields: many,
            binary_field: None,
        };
        assert!(entry.check_limits().unwrap_err().contains("fields"));
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
