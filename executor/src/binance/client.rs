//! The HTTP client of the USD-M futures API: signs requests, keeps the server clock's offset,
//! follows the rate limits the venue announces (`X-MBX-USED-WEIGHT-*`, `X-MBX-ORDER-COUNT-*`,
//! `429` + `Retry-After`, `418` bans) and classifies every failure once, as a
//! [`Disposition`](super::errors::Disposition).
//!
//! A signed request is prepared (its `timestamp` fixed) before it is sent, so the caller can
//! record that timestamp first: it bounds when the venue could still accept the request.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use quantum_model::time::now_ms;

use super::api::{ApiErrorBody, ServerTime};
use super::errors::{classify, Disposition};
use super::sign::Credentials;

/// A failed call, classified.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct CallError {
    pub disposition: Disposition,
    /// Binance's error code, when the reply had one.
    pub code: Option<i64>,
    pub detail: String,
}

impl CallError {
    fn new(disposition: Disposition, code: Option<i64>, detail: impl Into<String>) -> Self {
        Self {
            disposition,
            code,
            detail: detail.into(),
        }
    }
}

/// A signed request, ready to send (and to record before sending).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub method: Method,
    pub path: &'static str,
    /// The signed parameter string, `...&timestamp=..&signature=..`.
    query: String,
    /// The request's `timestamp` (server clock, as estimated when prepared).
    pub timestamp: u64,
    pub recv_window_ms: u64,
}

/// The client. Cheap to share behind an `Arc`.
pub struct Fapi {
    http: reqwest::Client,
    base: String,
    credentials: Credentials,
    recv_window_ms: u64,
    /// Server time minus local time (ms), measured at start and after every `-1021`.
    offset_ms: AtomicI64,
    /// Local time (ms) before which nothing is sent: a `429` back-off.
    throttled_until_ms: AtomicU64,
    /// Local time (ms) before which nothing is sent: a `418` ban.
    banned_until_ms: AtomicU64,
}

/// How long to hold off after a 429/418 without a `Retry-After` header.
const DEFAULT_THROTTLE_MS: u64 = 10_000;
const DEFAULT_BAN_MS: u64 = 120_000;

impl Fapi {
    /// A client of the API at `base` (`https://fapi.binance.com`).
    ///
    /// # Errors
    /// The HTTP client cannot be built (no TLS roots).
    pub fn new(base: &str, credentials: Credentials, recv_window_ms: u64, timeout: Duration) -> Result<Self, String> {
        quantum_runtime::config::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("quantum-intent-executor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            credentials,
            recv_window_ms,
            offset_ms: AtomicI64::new(0),
            throttled_until_ms: AtomicU64::new(0),
            banned_until_ms: AtomicU64::new(0),
        })
    }

    /// The server's clock now, as estimated from the measured offset.
    pub fn server_now_ms(&self) -> u64 {
        now_ms().saturating_add_signed(self.offset_ms.load(Ordering::Relaxed))
    }

    /// The last measured offset (server minus local, ms).
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// Measures the server clock's offset (`GET /fapi/v1/time`, half the round trip assumed
    /// each way) and keeps it.
    ///
    /// # Errors
    /// The call failed.
    pub async fn sync_clock(&self) -> Result<i64, CallError> {
        let sent = now_ms();
        let time: ServerTime = self.public("/fapi/v1/time", &[]).await?;
        let received = now_ms();
        let offset = time.server_time as i64 - (sent + received).div_ceil(2) as i64;
        self.offset_ms.store(offset, Ordering::Relaxed);
        metrics::gauge!(quantum_model::metric_names::EXECUTOR_BINANCE_CLOCK_OFFSET_MS).set(offset as f64);
        Ok(offset)
    }

    /// Signs `params` with `recvWindow` and a `timestamp` on the server's clock.
    pub fn prepare(&self, method: Method, path: &'static str, params: &[(&str, String)]) -> Prepared {
        let timestamp = self.server_now_ms();
        let mut query = String::with_capacity(128);
        for (k, v) in params {
            query.push_str(k);
            query.push('=');
            query.push_str(&form_encode(v));
            query.push('&');
        }
        query.push_str(&format!("recvWindow={}&timestamp={timestamp}", self.recv_window_ms));
        let signature = self.credentials.sign(&query);
        query.push_str("&signature=");
        query.push_str(&signature);
        Prepared {
            method,
            path,
            query,
            timestamp,
            recv_window_ms: self.recv_window_ms,
        }
    }

    /// Sends a prepared request.
    ///
    /// # Errors
    /// Classified: a refusal, a failure before sending, or an unknown outcome.
    pub async fn send<T: DeserializeOwned>(&self, request: &Prepared) -> Result<T, CallError> {
        let url = format!("{}{}?{}", self.base, request.path, request.query);
        self.call(request.method.clone(), request.path, &url, true).await
    }

    /// Prepares and sends a signed request; a `-1021` re-measures the clock and sends once more
    /// (the first request was not accepted).
    ///
    /// # Errors
    /// As [`Self::send`].
    pub async fn signed<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &'static str,
        params: &[(&str, String)],
    ) -> Result<T, CallError> {
        match self.send(&self.prepare(method.clone(), path, params)).await {
            Err(e) if e.disposition == Disposition::ClockSkew => {
                self.resync_after_skew(&e).await;
                self.send(&self.prepare(method, path, params)).await
            }
            other => other,
        }
    }

    /// Re-measures the clock after a `-1021`, logging the contract line.
    pub async fn resync_after_skew(&self, error: &CallError) {
        let before = self.offset_ms();
        match self.sync_clock().await {
            Ok(after) => tracing::warn!(
                "BINANCE_CLOCK_SKEW offset_ms={after} previous_offset_ms={before}: {} (recvWindow={})",
                error.detail,
                self.recv_window_ms
            ),
            Err(e) => tracing::warn!("BINANCE_CLOCK_SKEW: cannot re-measure the server clock: {e}"),
        }
    }

    /// An unsigned GET.
    ///
    /// # Errors
    /// As [`Self::send`].
    pub async fn public<T: DeserializeOwned>(
        &self,
        path: &'static str,
        params: &[(&str, String)],
    ) -> Result<T, CallError> {
        let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", form_encode(v))).collect();
        let url = format!("{}{}?{}", self.base, path, query.join("&"));
        self.call(Method::GET, path, &url, false).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &'static str,
        url: &str,
        signed: bool,
    ) -> Result<T, CallError> {
        self.check_gate()?;
        let mut request = self.http.request(method, url);
        if signed {
            request = request.header("X-MBX-APIKEY", self.credentials.api_key());
        }
        let reply = match request.send().await {
            Ok(reply) => reply,
            Err(e) => {
                // A connection never made carries nothing; any later failure may have. The
                // URL is left out: its query holds the signature.
                let disposition = if e.is_connect() {
                    Disposition::NotAccepted
                } else {
                    Disposition::Unknown
                };
                count(path, disposition);
                let e = e.without_url();
                return Err(CallError::new(
                    disposition,
                    None,
                    format!("{path}: {}", error_chain(&e)),
                ));
            }
        };
        self.note_limits(&reply);
        self.read_reply(path, reply).await
    }

    /// The reply's value, or its failure classified (and a 429/418 held off).
    async fn read_reply<T: DeserializeOwned>(
        &self,
        path: &'static str,
        reply: reqwest::Response,
    ) -> Result<T, CallError> {
        let status = reply.status();
        let retry_after_ms = reply
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| s.saturating_mul(1000));
        let body = match reply.bytes().await {
            Ok(body) => body,
            Err(e) => {
                let e = e.without_url();
                count(path, Disposition::Unknown);
                return Err(CallError::new(
                    Disposition::Unknown,
                    None,
                    format!("{path}: reply lost: {}", error_chain(&e)),
                ));
            }
        };
        if status.is_success() {
            if let Ok(value) = serde_json::from_slice::<T>(&body) {
                metrics::counter!(quantum_model::metric_names::EXECUTOR_BINANCE_REPLIES_TOTAL, "path" => path, "disposition" => "ok")
                    .increment(1);
                return Ok(value);
            }
        }
        let error = serde_json::from_slice::<ApiErrorBody>(&body).ok();
        let code = error.as_ref().map(|e| e.code);
        let disposition = if status.is_success() && error.is_none() {
            Disposition::Unknown
        } else {
            classify(status.as_u16(), code)
        };
        self.hold_off(status, disposition, retry_after_ms);
        count(path, disposition);
        let detail = match error {
            Some(e) => format!("binance {}: {}", e.code, e.msg),
            None => format!(
                "{path}: HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        };
        Err(CallError::new(disposition, code, detail))
    }

    /// Refuses to send during a back-off or a ban: Binance answers requests sent during a
    /// back-off with longer bans.
    ///
    /// # Errors
    /// A back-off or a ban is in force (nothing was sent).
    pub fn check_gate(&self) -> Result<(), CallError> {
        let now = now_ms();
        let banned = self.banned_until_ms.load(Ordering::Relaxed);
        if banned > now {
            return Err(CallError::new(
                Disposition::Banned,
                None,
                format!(
                    "banned by Binance (HTTP 418) for {} s more; nothing sent",
                    (banned - now).div_ceil(1000)
                ),
            ));
        }
        metrics::gauge!(quantum_model::metric_names::EXECUTOR_BINANCE_BANNED).set(0.0);
        let throttled = self.throttled_until_ms.load(Ordering::Relaxed);
        if throttled > now {
            return Err(CallError::new(
                Disposition::Throttled,
                None,
                format!(
                    "backing off after HTTP 429 for {} ms more; nothing sent",
                    throttled - now
                ),
            ));
        }
        Ok(())
    }

    fn hold_off(&self, status: StatusCode, disposition: Disposition, retry_after_ms: Option<u64>) {
        match disposition {
            Disposition::Banned => {
                let until = now_ms().saturating_add(retry_after_ms.unwrap_or(DEFAULT_BAN_MS));
                self.banned_until_ms.store(until, Ordering::Relaxed);
                metrics::gauge!(quantum_model::metric_names::EXECUTOR_BINANCE_BANNED).set(1.0);
                tracing::error!(
                    "BINANCE_BANNED until_ms={until} retry_after_ms={}: HTTP {status}; nothing is sent until the ban ends",
                    retry_after_ms.unwrap_or(DEFAULT_BAN_MS)
                );
            }
            Disposition::Throttled => {
                let wait = retry_after_ms.unwrap_or(DEFAULT_THROTTLE_MS);
                self.throttled_until_ms
                    .store(now_ms().saturating_add(wait), Ordering::Relaxed);
                tracing::warn!("BINANCE_THROTTLED retry_after_ms={wait}: HTTP {status}; backing off");
            }
            _ => {}
        }
    }

    /// Publishes the request weight and order counts the venue reports for each interval.
    fn note_limits(&self, reply: &reqwest::Response) {
        for (name, value) in reply.headers() {
            let name = name.as_str();
            let Some(used) = value.to_str().ok().and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            if let Some(interval) = name.strip_prefix("x-mbx-used-weight-") {
                metrics::gauge!(quantum_model::metric_names::EXECUTOR_BINANCE_USED_WEIGHT, "interval" => interval.to_ascii_lowercase())
                    .set(used);
            } else if let Some(interval) = name.strip_prefix("x-mbx-order-count-") {
                metrics::gauge!(quantum_model::metric_names::EXECUTOR_BINANCE_ORDER_COUNT, "interval" => interval.to_ascii_lowercase())
                    .set(used);
            }
        }
    }
}

/// Counts a failed reply by endpoint and disposition.
fn count(path: &'static str, disposition: Disposition) {
    metrics::counter!(
        quantum_model::metric_names::EXECUTOR_BINANCE_REPLIES_TOTAL,
        "path" => path,
        "disposition" => disposition.as_str()
    )
    .increment(1);
}

/// The error and its sources, `a: b: c` (reqwest hides the cause behind `source()`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Percent-encodes a parameter value as `application/x-www-form-urlencoded` does; the
/// signature covers the encoded string, exactly as sent.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
