//! Request signing and the API credentials, as Binance documents them for SIGNED endpoints:
//! the signature is the hex HMAC-SHA256 of the exact parameter string sent (query string, or
//! body for a POST), keyed by the API secret; the key goes in the `X-MBX-APIKEY` header.
//!
//! The secret never leaves this module: [`Credentials`] prints as `<redacted>` and is read
//! from files (systemd `LoadCredential=` puts them in `$CREDENTIALS_DIRECTORY`), never from
//! flags or the environment, so it cannot show up in `--help`, `ps` or a crash report.

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// API key and secret of one Binance account.
#[derive(Clone)]
pub struct Credentials {
    api_key: String,
    secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

/// The systemd credential names read when no file is configured.
pub const KEY_CREDENTIAL: &str = "binance-api-key";
pub const SECRET_CREDENTIAL: &str = "binance-api-secret";

impl Credentials {
    /// Credentials from their values (tests, the fake server).
    pub fn new(api_key: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            secret: secret.into(),
        }
    }

    /// Reads the key and the secret from `key_file` and `secret_file`, or, when a file is not
    /// configured, from the systemd credentials `binance-api-key` / `binance-api-secret` in
    /// `credentials_dir` (`$CREDENTIALS_DIRECTORY`). Surrounding whitespace is dropped.
    ///
    /// # Errors
    /// A file not configured and no credential, an unreadable or empty file; the message
    /// names the file, never its content.
    pub fn load(
        key_file: Option<&Path>,
        secret_file: Option<&Path>,
        credentials_dir: Option<&Path>,
    ) -> Result<Self, String> {
        let read = |file: Option<&Path>, setting: &str, credential: &str| -> Result<String, String> {
            let path: PathBuf = match (file, credentials_dir) {
                (Some(path), _) => path.to_path_buf(),
                (None, Some(dir)) => dir.join(credential),
                (None, None) => {
                    return Err(format!(
                        "{setting} is not set and there is no systemd credential {credential} \
                         (LoadCredential={credential}:/path)"
                    ))
                }
            };
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("{setting}: cannot read {}: {e}", path.display()))?;
            let value = text.trim();
            if value.is_empty() || value.contains(char::is_whitespace) {
                return Err(format!(
                    "{setting}: {} must hold one token, without spaces",
                    path.display()
                ));
            }
            Ok(value.to_string())
        };
        Ok(Self {
            api_key: read(key_file, "BINANCE_API_KEY_FILE", KEY_CREDENTIAL)?,
            secret: read(secret_file, "BINANCE_API_SECRET_FILE", SECRET_CREDENTIAL)?,
        })
    }

    /// The value of the `X-MBX-APIKEY` header.
    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// The signature of `payload`: lowercase hex HMAC-SHA256 keyed by the secret.
    pub fn sign(&self, payload: &str) -> String {
        signature(&self.secret, payload)
    }
}

/// Lowercase hex HMAC-SHA256 of `payload` keyed by `secret`.
///
/// # Panics
/// Never: HMAC takes a key of any length.
pub fn signature(secret: &str, payload: &str) -> String {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(payload.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `signature_hex` is the signature of `payload` under `secret` (constant time).
///
/// # Panics
/// Never: HMAC takes a key of any length.
pub fn verify(secret: &str, payload: &str, signature_hex: &str) -> bool {
    let Ok(given) = hex::decode(signature_hex) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(payload.as_bytes());
    mac.verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of Binance's USD-M futures API documentation ("SIGNED Endpoint
    /// Examples for POST /fapi/v1/order", HMAC keys).
    const DOC_SECRET: &str = "2b5eb11e18796d12d88f13dc27dbbd02c2cc51ff7059765ed9821957d82bb4d9";
    const DOC_PAYLOAD: &str = "symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=9000&timeInForce=GTC&recvWindow=5000&timestamp=1591702613943";
    const DOC_SIGNATURE: &str = "3c661234138461fcc7a7d8746c6558c9842d4e10870d2ecbedf7777cad694af9";

    #[test]
    fn signs_binance_documented_example() {
        assert_eq!(signature(DOC_SECRET, DOC_PAYLOAD), DOC_SIGNATURE);
        assert!(verify(DOC_SECRET, DOC_PAYLOAD, DOC_SIGNATURE));
        assert!(!verify(
            DOC_SECRET,
            &DOC_PAYLOAD.replace("quantity=1", "quantity=2"),
            DOC_SIGNATURE
        ));
        assert!(!verify(DOC_SECRET, DOC_PAYLOAD, "not hex"));
    }

    #[test]
    fn credentials_never_print_and_load_from_files_or_systemd() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_CREDENTIAL), "key123\n").unwrap();
        std::fs::write(dir.path().join(SECRET_CREDENTIAL), "s3cret\n").unwrap();
        let creds = Credentials::load(None, None, Some(dir.path())).unwrap();
        assert_eq!(creds.api_key(), "key123");
        assert_eq!(creds.sign("a=1"), signature("s3cret", "a=1"));
        assert!(!format!("{creds:?}").contains("s3cret"));

        let err = Credentials::load(None, None, None).unwrap_err();
        assert!(err.contains("BINANCE_API_KEY_FILE is not set"), "{err}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "  \n").unwrap();
        let err = Credentials::load(Some(&empty), None, Some(dir.path())).unwrap_err();
        assert!(err.contains("must hold one token"), "{err}");
        assert!(!err.contains("s3cret"));
    }
}
