//! What a failed batch means for the consumer loop, decided once at the I/O boundary and carried
//! as a type: retry it, stop the service, or treat the entry as poison.
//!
//! Redis tells its errors apart by the code that opens every error reply (`WRONGTYPE`,
//! `NOPERM`, `OOM`, ...; errors raised inside a Lua script keep the code of the command that
//! failed). [`StageError::from`] maps fred's error kinds and those codes, in one place, to the
//! three classes; handlers raise [`StageError::Poison`] themselves for input they find corrupt.

use fred::error::{Error, ErrorKind};
use thiserror::Error;

/// A failure of a stage's batch.
#[derive(Debug, Clone, Error)]
pub enum StageError {
    /// May pass by itself (Redis or the venue unreachable, loading, failing over, out of
    /// memory, a write conflict): the batch is retried as it is.
    #[error("{0}")]
    Retryable(String),
    /// Retrying cannot fix it (credentials, missing permissions): the service stops.
    #[error("{0}")]
    Fatal(String),
    /// The input fails every time (a key of the wrong type, a script error on its data,
    /// corrupt state): the entry is isolated from its batch, retried up to
    /// `STREAM_MAX_DELIVERIES`, then dead-lettered.
    #[error("{0}")]
    Poison(String),
}

/// Redis error codes after which retrying the same command can succeed.
const TRANSIENT_CODES: [&str; 8] = [
    "BUSY",
    "LOADING",
    "TRYAGAIN",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "READONLY",
    "OOM",
    "NOREPLICAS",
];

/// Redis error codes no retry fixes: the service lacks a right or a credential.
const FATAL_CODES: [&str; 3] = ["NOPERM", "NOAUTH", "WRONGPASS"];

impl StageError {
    /// The class's name, for logs and metric labels.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Retryable(_) => "retryable",
            Self::Fatal(_) => "fatal",
            Self::Poison(_) => "poison",
        }
    }
}

/// The code opening a Redis error reply (`WRONGTYPE Operation against ...` → `WRONGTYPE`).
fn redis_code(details: &str) -> &str {
    details.split_whitespace().next().unwrap_or_default()
}

/// Whether `word` has the form of a Redis error code (`ERR`, `WRONGTYPE`, `NOSCRIPT`, ...).
fn is_reply_code(word: &str) -> bool {
    !word.is_empty() && word.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
}

/// The error code of a reply Redis refused (`BUSYGROUP`, `NOGROUP`, `NOPERM`, ...): the
/// protocol's machine-readable part of an error, which callers compare instead of the message
/// text. An error raised by the client itself (I/O, timeout) carries none.
pub fn redis_error_code(e: &Error) -> Option<&str> {
    match e.kind() {
        ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled => None,
        _ => Some(redis_code(e.details())).filter(|code| !code.is_empty()),
    }
}

/// Whether Redis refused our credentials or rights: retrying cannot help.
pub fn is_auth_error(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::Auth) || redis_error_code(e).is_some_and(|code| FATAL_CODES.contains(&code))
}

impl From<Error> for StageError {
    fn from(e: Error) -> Self {
        let text = e.to_string();
        match e.kind() {
            ErrorKind::Auth => return Self::Fatal(text),
            ErrorKind::IO
            | ErrorKind::Timeout
            | ErrorKind::Canceled
            | ErrorKind::Cluster
            | ErrorKind::Backpressure
            | ErrorKind::Routing
            | ErrorKind::Sentinel => return Self::Retryable(text),
            _ => {}
        }
        let code = redis_code(e.details());
        if is_auth_error(&e) {
            Self::Fatal(text)
        } else if e.kind() == &ErrorKind::Unknown && !is_reply_code(code) {
            // Not a Redis error reply (those open with an upper-case code such as ERR or
            // WRONGTYPE) but the client's own failure, such as its attempts at a command used
            // up by a connection lost or a redirection while a cluster fails over.
            Self::Retryable(text)
        } else if TRANSIENT_CODES.contains(&code) {
            Self::Retryable(text)
        } else {
            Self::Poison(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(kind: ErrorKind, details: &str) -> &'static str {
        StageError::from(Error::new(kind, details.to_string())).class()
    }

    #[test]
    fn redis_errors_map_to_their_class() {
        let rows = [
            (ErrorKind::IO, "connection reset", "retryable"),
            (ErrorKind::Timeout, "no reply in 30s", "retryable"),
            (ErrorKind::Canceled, "connection closed", "retryable"),
            (ErrorKind::Auth, "WRONGPASS invalid username-password pair", "fatal"),
            (
                ErrorKind::Unknown,
                "NOPERM this user has no permissions to access the 'x' key",
                "fatal",
            ),
            (
                ErrorKind::Unknown,
                "OOM command not allowed when used memory > 'maxmemory'.",
                "retryable",
            ),
            (
                ErrorKind::Unknown,
                "LOADING Redis is loading the dataset in memory",
                "retryable",
            ),
            (
                ErrorKind::Unknown,
                "READONLY You can't write against a read only replica.",
                "retryable",
            ),
            (
                ErrorKind::InvalidArgument,
                "WRONGTYPE Operation against a key holding the wrong kind of value",
                "poison",
            ),
            (
                ErrorKind::Unknown,
                "ERR user_script:3: Script attempted to access nonexistent global variable",
                "poison",
            ),
            (ErrorKind::Parse, "unexpected reply", "poison"),
            // fred's own failure, not a reply: a command's attempts used up in a failover.
            (ErrorKind::Unknown, "Too many failed write attempts.", "retryable"),
            (
                ErrorKind::Unknown,
                "CROSSSLOT Keys in request don't hash to the same slot",
                "poison",
            ),
        ];
        for (kind, details, expected) in rows {
            assert_eq!(class(kind, details), expected, "{details}");
        }
    }

    #[test]
    fn error_codes_come_from_redis_replies_only() {
        let busy = Error::new(ErrorKind::Unknown, "BUSYGROUP Consumer Group name already exists");
        assert_eq!(redis_error_code(&busy), Some("BUSYGROUP"));
        let io = Error::new(ErrorKind::IO, "NOGROUP-looking text from a socket error");
        assert_eq!(redis_error_code(&io), None);
        assert!(is_auth_error(&Error::new(ErrorKind::Unknown, "NOPERM no permissions")));
        assert!(is_auth_error(&Error::new(
            ErrorKind::Auth,
            "WRONGPASS invalid username-password pair"
        )));
        assert!(!is_auth_error(&Error::new(
            ErrorKind::Unknown,
            "ERR wrong number of arguments"
        )));
    }
}
