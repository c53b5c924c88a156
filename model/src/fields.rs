//! One typed reader for flat text fields, however they were read off Redis: a stream entry's
//! fields, a hash's pairs (HGETALL), a map built by a tool. Every record codec reads through
//! [`Fields`], so "absent", "empty" and "unreadable" mean the same everywhere, and an
//! unreadable value is an error naming its field, never a silent zero.

use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;

use crate::stream_entry::StreamEntry;
use crate::types::{parse_decimal, ParseError};

/// Named text fields.
pub trait Fields {
    /// The value of the first field called `name`, as stored.
    fn field(&self, name: &str) -> Option<&str>;

    /// The value of `name` when present and not empty.
    fn text(&self, name: &str) -> Option<&str> {
        self.field(name).filter(|v| !v.is_empty())
    }

    /// A decimal field: `None` when absent.
    ///
    /// # Errors
    /// Present but empty, not a finite number, or beyond the pipeline's range.
    fn decimal(&self, name: &'static str) -> Result<Option<Decimal>, ParseError> {
        self.field(name).map(|v| parse_decimal(name, v)).transpose()
    }

    /// A whole-number field: `None` when absent.
    ///
    /// # Errors
    /// Present but not a non-negative integer.
    fn integer(&self, name: &'static str) -> Result<Option<u64>, ParseError> {
        self.field(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| ParseError::Integer {
                    field: name,
                    value: v.to_string(),
                })
            })
            .transpose()
    }
}

impl Fields for StreamEntry {
    fn field(&self, name: &str) -> Option<&str> {
        self.get(name)
    }
}

impl Fields for [(String, String)] {
    fn field(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

impl Fields for Vec<(String, String)> {
    fn field(&self, name: &str) -> Option<&str> {
        self.as_slice().field(name)
    }
}

impl Fields for HashMap<String, String> {
    fn field(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl Fields for BTreeMap<String, String> {
    fn field(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_empty_and_unreadable_read_the_same_from_every_source() {
        let pairs: Vec<(String, String)> = [("qty", "1.5"), ("empty", ""), ("seq", "x7")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let entry = StreamEntry::new("1-0", &[("qty", "1.5"), ("empty", ""), ("seq", "x7")]);
        let map: HashMap<String, String> = pairs.iter().cloned().collect();
        let sources: [&dyn Fields; 3] = [&pairs, &entry, &map];
        for fields in sources {
            assert_eq!(fields.decimal("qty").unwrap(), Some(Decimal::new(15, 1)));
            assert_eq!(fields.decimal("absent").unwrap(), None);
            assert_eq!(fields.text("empty"), None);
            assert_eq!(fields.field("empty"), Some(""));
            assert!(matches!(
                fields.decimal("empty"),
                Err(ParseError::Empty { field: "empty" })
            ));
            let err = fields.integer("seq").unwrap_err();
            assert_eq!(err.to_string(), "seq \"x7\" is not an integer");
        }
    }
}
