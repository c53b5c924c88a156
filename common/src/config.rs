//! Configuration shared by every binary: the Redis connection and the consumer settings.
//! Every environment variable is also a `--flag`.

use std::time::Duration;

use fred::prelude::*;
use fred::types::config::{ConnectionConfig, PerformanceConfig, ReconnectPolicy};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Why connecting to Redis failed for good.
#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("invalid Redis connection settings ({target}): {source}")]
    Config { target: String, source: fred::error::Error },
    #[error(
        "Redis at {target} refused our credentials: {message} (check REDIS_URL / REDIS_USERNAME / REDIS_PASSWORD)"
    )]
    Auth { target: String, message: String },
    #[error("shut down while waiting for Redis at {0}")]
    Cancelled(String),
}

/// How to reach Redis.
#[derive(clap::Args, Debug, Clone)]
pub struct RedisArgs {
    /// Full connection URL, redis://[user:pass@]host:port/db (or rediss:// for TLS); wins over the parts below.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Redis host, used when REDIS_URL is unset.
    #[arg(long, env = "REDIS_HOST", default_value = "127.0.0.1")]
    pub redis_host: String,
    /// Redis port, used when REDIS_URL is unset.
    #[arg(long, env = "REDIS_PORT", default_value_t = 6379)]
    pub redis_port: u16,
    /// Redis database number, used when REDIS_URL is unset.
    #[arg(long, env = "REDIS_DB", default_value_t = 0)]
    pub redis_db: u8,
}

impl RedisArgs {
    /// Settings for a given URL (tools and tests).
    pub fn from_url(url: &str) -> Self {
        Self {
            redis_url: Some(url.to_string()),
            redis_host: String::new(),
            redis_port: 0,
            redis_db: 0,
        }
    }

    /// The URL to connect to.
    pub fn url(&self) -> String {
        match &self.redis_url {
            Some(url) if !url.is_empty() => url.clone(),
            _ => format!("redis://{}:{}/{}", self.redis_host, self.redis_port, self.redis_db),
        }
    }

    /// The target with any password masked, for log lines.
    pub fn display(&self) -> String {
        redact_url(&self.url())
    }

    /// Connects, retrying with backoff while Redis is unreachable; fails fast on bad
    /// credentials or settings, and gives up when `shutdown` fires.
    pub async fn connect(&self, shutdown: &CancellationToken) -> Result<Client, ConnectError> {
        let target = self.display();
        let config = Config::from_url(&self.url()).map_err(|source| ConnectError::Config {
            target: target.clone(),
            source,
        })?;
        let mut delay = Duration::from_millis(100);
        loop {
            let client = Builder::from_config(config.clone())
                .with_connection_config(|c: &mut ConnectionConfig| {
                    c.connection_timeout = Duration::from_secs(5);
                    c.internal_command_timeout = Duration::from_secs(5);
                })
                .with_performance_config(|p: &mut PerformanceConfig| {
                    p.default_command_timeout = Duration::from_secs(30);
                })
                .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
                .build()
                .map_err(|source| ConnectError::Config {
                    target: target.clone(),
                    source,
                })?;
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return Err(ConnectError::Cancelled(target)),
                r = tokio::time::timeout(Duration::from_secs(10), client.init()) => r,
            };
            match attempt {
                Ok(Ok(_)) => match client.ping::<String>(None).await {
                    Ok(_) => return Ok(client),
                    Err(e) if is_auth_error(&e) => return Err(auth(target, &e, client).await),
                    Err(e) => tracing::warn!("Redis at {target} not ready ({e}), retrying in {delay:?}"),
                },
                Ok(Err(e)) if is_auth_error(&e) => return Err(auth(target, &e, client).await),
                Ok(Err(e)) => tracing::warn!("Redis at {target} unreachable ({e}), retrying in {delay:?}"),
                Err(_) => tracing::warn!("Redis at {target} did not answer in 10s, retrying in {delay:?}"),
            }
            let _ = client.quit().await;
            crate::telemetry::flush_logs();
            tokio::select! {
                _ = shutdown.cancelled() => return Err(ConnectError::Cancelled(target)),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

async fn auth(target: String, e: &fred::error::Error, client: Client) -> ConnectError {
    let _ = client.quit().await;
    ConnectError::Auth {
        target,
        message: e.details().to_string(),
    }
}

/// Whether an error means our credentials or permissions are wrong (retrying cannot help).
pub fn is_auth_error(e: &fred::error::Error) -> bool {
    let text = e.to_string();
    matches!(e.kind(), ErrorKind::Auth)
        || ["WRONGPASS", "NOAUTH", "NOPERM", "invalid username-password"]
            .iter()
            .any(|needle| text.contains(needle))
}

/// Masks the password in a redis:// URL.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map(|(u, _)| u).unwrap_or(userinfo);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}")
            } else {
                format!("{scheme}://***@{host}")
            }
        }
        None => url.to_string(),
    }
}

/// Parses an on/off setting the way the Python services did, plus yes/no/1/0.
pub fn parse_flag(raw: &str) -> Result<bool, String> {
    crate::types::parse_bool("flag", raw).map_err(|_| format!("{raw:?} is not true/false"))
}

/// Parses a decimal setting that must be zero or more.
pub fn parse_non_negative(raw: &str) -> Result<rust_decimal::Decimal, String> {
    let value = crate::types::parse_decimal("value", raw).map_err(|e| e.to_string())?;
    if value.is_sign_negative() && !value.is_zero() {
        return Err(format!("{raw} must not be negative"));
    }
    Ok(value)
}

/// Parses a decimal setting that must be greater than zero.
pub fn parse_positive(raw: &str) -> Result<rust_decimal::Decimal, String> {
    let value = parse_non_negative(raw)?;
    if value.is_zero() {
        return Err(format!("{raw} must be greater than zero"));
    }
    Ok(value)
}

/// Consumer-group settings shared by every service.
#[derive(clap::Args, Debug, Clone)]
pub struct ConsumerArgs {
    /// Consumer name within the group; keep it stable across restarts so the service
    /// reclaims its own pending entries (default: <service>-<hostname>).
    #[arg(long, env = "CONSUMER_NAME")]
    pub consumer_name: Option<String>,
    /// Most entries read per batch.
    #[arg(long, env = "STREAM_BATCH_SIZE", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch_size: u64,
    /// How long one read blocks waiting for new entries (ms); also bounds shutdown latency.
    #[arg(long, env = "STREAM_BLOCK_MS", default_value_t = 1000)]
    pub block_ms: u64,
    /// Pending entries idle this long (ms) are reclaimed from other, presumably dead, consumers.
    #[arg(long, env = "STREAM_CLAIM_IDLE_MS", default_value_t = 60_000)]
    pub claim_idle_ms: u64,
    /// How often (ms) to look for stale pending entries to reclaim.
    #[arg(long, env = "STREAM_CLAIM_INTERVAL_MS", default_value_t = 30_000)]
    pub claim_interval_ms: u64,
}

impl ConsumerArgs {
    /// The consumer name to use for a service.
    pub fn consumer(&self, service: &str) -> String {
        self.consumer_name
            .clone()
            .unwrap_or_else(|| format!("{service}-{}", hostname()))
    }
}

/// The machine's host name (for default consumer names).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_parsers_explain_rejections() {
        assert_eq!(parse_flag("TRUE"), Ok(true));
        assert_eq!(parse_flag("0"), Ok(false));
        assert!(parse_flag("maybe").unwrap_err().contains("not true/false"));
        assert!(parse_non_negative("-1").unwrap_err().contains("negative"));
        assert!(parse_positive("0").unwrap_err().contains("greater than zero"));
        assert_eq!(parse_positive("2.5").unwrap().to_string(), "2.5");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("redis://secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
    }

    #[test]
    fn url_falls_back_to_parts() {
        let args = RedisArgs {
            redis_url: None,
            redis_host: "10.0.0.1".into(),
            redis_port: 6380,
            redis_db: 2,
        };
        assert_eq!(args.url(), "redis://10.0.0.1:6380/2");
    }
}
