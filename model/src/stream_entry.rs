//! Stream entries as read off Redis: an id and flat fields, decoded once at the edge
//! (`quantum_runtime::reply` turns Redis replies into these), and the size limits every
//! service applies before looking at content.

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

#[cfg(test)]
mod tests {
    use super::*;

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
