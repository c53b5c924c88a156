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
    #[error("cannot load the Redis password for {target}: {message}")]
    Credentials { target: String, message: String },
    #[error("TLS settings for {target}: {message}")]
    Tls { target: String, message: String },
    #[error("Redis connection settings ({target}): {message}")]
    Settings { target: String, message: String },
    #[error("shut down while waiting for Redis at {0}")]
    Cancelled(String),
}

/// How to reach Redis.
#[derive(clap::Args, Debug, Clone)]
pub struct RedisArgs {
    /// Full connection URL, redis://[user:pass@]host:port/db (or rediss:// for TLS); wins over the parts below.
    /// A Redis Cluster: redis-cluster://[user:pass@]host:port[?node=host:port&node=...] (rediss-cluster:// for TLS).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// A Redis Cluster's seed nodes, host:port,host:port,... (any one is enough; the others are
    /// found with CLUSTER SLOTS); used when REDIS_URL is unset. A cluster has database 0 only.
    #[arg(long, env = "REDIS_CLUSTER_NODES")]
    pub redis_cluster_nodes: Option<String>,
    /// Redis host, used when REDIS_URL is unset.
    #[arg(long, env = "REDIS_HOST", default_value = "127.0.0.1")]
    pub redis_host: String,
    /// Redis port, used when REDIS_URL is unset.
    #[arg(long, env = "REDIS_PORT", default_value_t = 6379)]
    pub redis_port: u16,
    /// Redis database number, used when REDIS_URL is unset.
    #[arg(long, env = "REDIS_DB", default_value_t = 0)]
    pub redis_db: u8,
    /// ACL user name (overrides one given in REDIS_URL).
    #[arg(long, env = "REDIS_USERNAME")]
    pub redis_username: Option<String>,
    /// Password (overrides one given in REDIS_URL). Prefer REDIS_PASSWORD_FILE or a systemd
    /// credential named redis-password, which keep it out of the environment.
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,
    /// File holding the password (first line). Without it, $CREDENTIALS_DIRECTORY/redis-password
    /// is used when systemd provides one (LoadCredential=redis-password:...).
    #[arg(long, env = "REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<std::path::PathBuf>,
    /// PEM file of the CA that signed the Redis server's certificate, for rediss:// URLs
    /// (default: the system's trusted roots).
    #[arg(long, env = "REDIS_TLS_CA_FILE")]
    pub redis_tls_ca_file: Option<std::path::PathBuf>,
}

impl RedisArgs {
    /// Settings for a given URL (tools and tests).
    pub fn from_url(url: &str) -> Self {
        Self {
            redis_url: Some(url.to_string()),
            redis_cluster_nodes: None,
            redis_host: String::new(),
            redis_port: 0,
            redis_db: 0,
            redis_username: None,
            redis_password: None,
            redis_password_file: None,
            redis_tls_ca_file: None,
        }
    }

    /// The password to use, if any: REDIS_PASSWORD, else the password file, else the systemd
    /// credential; `None` leaves whatever the URL says.
    fn password(&self) -> Result<Option<String>, String> {
        if let Some(password) = &self.redis_password {
            return Ok(Some(password.clone()));
        }
        let file = self.redis_password_file.clone().or_else(|| {
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
            let path = std::path::Path::new(&dir).join("redis-password");
            path.exists().then_some(path)
        });
        let Some(file) = file else { return Ok(None) };
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("cannot read password file {}: {e}", file.display()))?;
        let password = text.lines().next().unwrap_or_default().trim_end().to_string();
        if password.is_empty() {
            return Err(format!("password file {} is empty", file.display()));
        }
        Ok(Some(password))
    }

    /// The client configuration: the URL, then the explicit user name and password on top.
    ///
    /// # Errors
    /// An invalid URL, an unreadable password file, a CA file that cannot be read, or a CA
    /// file with a URL that is not `rediss://`.
    pub fn client_config(&self) -> Result<Config, ConnectError> {
        let target = self.display();
        if self.redis_url.as_deref().is_some_and(|u| !u.is_empty()) && self.cluster_nodes().is_some() {
            return Err(ConnectError::Settings {
                target,
                message: "REDIS_URL and REDIS_CLUSTER_NODES are both set: set one".into(),
            });
        }
        if self.is_cluster() && self.redis_db != 0 && self.redis_url.is_none() {
            return Err(ConnectError::Settings {
                target,
                message: format!("REDIS_DB={}: a Redis Cluster has database 0 only", self.redis_db),
            });
        }
        let mut config = Config::from_url(&self.url()).map_err(|source| ConnectError::Config {
            target: target.clone(),
            source,
        })?;
        if let Some(user) = &self.redis_username {
            config.username = Some(user.clone());
        }
        if let Some(password) = self.password().map_err(|message| ConnectError::Credentials {
            target: target.clone(),
            message,
        })? {
            config.password = Some(password);
        }
        if let Some(ca) = &self.redis_tls_ca_file {
            let url = self.url();
            if !url.starts_with("rediss://") && !url.starts_with("rediss-cluster://") {
                return Err(ConnectError::Tls {
                    target,
                    message: "REDIS_TLS_CA_FILE is set but the URL is not rediss:// (or rediss-cluster://)".into(),
                });
            }
            let connector = tls_with_ca(ca).map_err(|message| ConnectError::Tls { target, message })?;
            config.tls = Some(connector.into());
        }
        Ok(config)
    }

    /// The URL to connect to: `REDIS_URL`, else a `redis-cluster://` URL of
    /// `REDIS_CLUSTER_NODES`, else one made of the host, port and database.
    pub fn url(&self) -> String {
        match (&self.redis_url, self.cluster_nodes()) {
            (Some(url), _) if !url.is_empty() => url.clone(),
            (_, Some(nodes)) => {
                let mut url = format!("redis-cluster://{}", nodes[0]);
                for (i, node) in nodes[1..].iter().enumerate() {
                    url.push(if i == 0 { '?' } else { '&' });
                    url.push_str("node=");
                    url.push_str(node);
                }
                url
            }
            _ => format!("redis://{}:{}/{}", self.redis_host, self.redis_port, self.redis_db),
        }
    }

    /// `REDIS_CLUSTER_NODES` split, without empty items; `None` when unset or empty.
    fn cluster_nodes(&self) -> Option<Vec<&str>> {
        let nodes: Vec<&str> = self
            .redis_cluster_nodes
            .as_deref()?
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        (!nodes.is_empty()).then_some(nodes)
    }

    /// Whether the services talk to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        let url = self.url();
        url.starts_with("redis-cluster://") || url.starts_with("rediss-cluster://")
    }

    /// The target with any password masked, and the ACL user when one is set apart from the
    /// URL, for log lines (`redis://redis:6379/0 as quantum-bridge`).
    pub fn display(&self) -> String {
        match self.redis_username.as_deref().filter(|u| !u.is_empty()) {
            Some(user) => format!("{} as {user}", redact_url(&self.url())),
            None => redact_url(&self.url()),
        }
    }

    /// Connects, retrying with backoff while Redis is unreachable; fails fast on bad
    /// credentials or settings, and gives up when `shutdown` fires.
    ///
    /// # Errors
    /// Refused credentials, an untrusted certificate, invalid settings, or `shutdown` fired first.
    pub async fn connect(&self, shutdown: &CancellationToken) -> Result<Client, ConnectError> {
        let target = self.display();
        let config = self.client_config()?;
        let mut delay = Duration::from_millis(100);
        loop {
            let client = Builder::from_config(config.clone())
                .with_connection_config(|c: &mut ConnectionConfig| {
                    c.connection_timeout = Duration::from_secs(5);
                    c.internal_command_timeout = Duration::from_secs(5);
                    // Never re-send a command whose connection dropped: its outcome is unknown,
                    // and the stages retry through their own idempotent steps (markers, NEW
                    // records, versions) instead of the client repeating a write blindly.
                    c.max_command_attempts = 1;
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
            let failure = match attempt {
                Ok(Ok(_)) => match client.ping::<String>(None).await {
                    Ok(_) => return Ok(client),
                    Err(e) => Some(e),
                },
                Ok(Err(e)) => Some(e),
                Err(_) => None,
            };
            match failure {
                Some(e) => {
                    if let Some(fatal) = unrecoverable(&target, &e) {
                        let _ = client.quit().await;
                        return Err(fatal);
                    }
                    tracing::warn!("Redis at {target} unreachable ({e}), retrying in {delay:?}");
                }
                None => tracing::warn!("Redis at {target} did not answer in 10s, retrying in {delay:?}"),
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

/// Makes ring, the provider the Redis TLS connections use, the process's rustls crypto provider,
/// for the HTTP clients that take the process default (the OTLP exporter, the Binance client):
/// without one they panic when built. Idempotent.
pub fn install_crypto_provider() {
    // Err only when a provider is installed already, which is all that is needed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A TLS connector trusting only the CA in `ca_file`.
fn tls_with_ca(ca_file: &std::path::Path) -> Result<fred::types::config::TlsConnector, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(ca_file).map_err(|e| format!("cannot read {}: {e}", ca_file.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: {e}", ca_file.display()))?;
        roots.add(cert).map_err(|e| format!("{}: {e}", ca_file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no certificate", ca_file.display()));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config.into())
}

/// Connection failures retrying cannot fix: refused credentials, an untrusted certificate.
fn unrecoverable(target: &str, e: &fred::error::Error) -> Option<ConnectError> {
    if crate::failure::is_auth_error(e) {
        return Some(ConnectError::Auth {
            target: target.to_string(),
            message: e.details().to_string(),
        });
    }
    // fred hands a failed TLS handshake over as text (the rustls error's Debug form inside an
    // I/O error), so the certificate verdict can only be read from that text.
    e.to_string().contains("InvalidCertificate").then(|| ConnectError::Tls {
        target: target.to_string(),
        message: format!("the server's certificate is not trusted ({e}); set REDIS_TLS_CA_FILE"),
    })
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
///
/// # Errors
/// Text that is not an on/off value.
pub fn parse_flag(raw: &str) -> Result<bool, String> {
    quantum_model::types::parse_bool("flag", raw).map_err(|_| format!("{raw:?} is not true/false"))
}

/// Parses a decimal setting that must be zero or more.
///
/// # Errors
/// Text that is not a decimal, or a negative one.
pub fn parse_non_negative(raw: &str) -> Result<rust_decimal::Decimal, String> {
    let value = quantum_model::types::parse_decimal("value", raw).map_err(|e| e.to_string())?;
    if value.is_sign_negative() && !value.is_zero() {
        return Err(format!("{raw} must not be negative"));
    }
    Ok(value)
}

/// Parses a decimal setting that must be greater than zero.
///
/// # Errors
/// Text that is not a decimal, or not above zero.
pub fn parse_positive(raw: &str) -> Result<rust_decimal::Decimal, String> {
    let value = parse_non_negative(raw)?;
    if value.is_zero() {
        return Err(format!("{raw} must be greater than zero"));
    }
    Ok(value)
}

/// The allowlist when neither `SYMBOL_ALLOWLIST` nor a deprecated per-service variable is set.
pub const DEFAULT_ALLOWLIST: &str = "BTCUSDT";

/// The one symbol allowlist every service reads (`SYMBOL_ALLOWLIST`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist {
    pub symbols: std::collections::BTreeSet<quantum_model::types::Symbol>,
    /// The setting it came from: `SYMBOL_ALLOWLIST`, a deprecated variable, or `default`.
    pub source: &'static str,
    /// What to log at start when a deprecated variable was used.
    pub deprecation: Option<String>,
}

impl Allowlist {
    /// Resolves `SYMBOL_ALLOWLIST` (`primary`) against a service's deprecated variable: either
    /// alone is used (the deprecated one with a notice); both set must name the same symbols.
    ///
    /// # Errors
    /// An invalid symbol (naming the variable), or the two settings disagreeing.
    pub fn resolve(primary: Option<&str>, legacy_name: &'static str, legacy: Option<&str>) -> Result<Self, String> {
        let notice = |how: &str| {
            format!("{legacy_name} is deprecated{how}: set SYMBOL_ALLOWLIST, the one allowlist every service reads")
        };
        match (primary, legacy) {
            (None, None) => Ok(Self {
                symbols: Self::parse_list("SYMBOL_ALLOWLIST", DEFAULT_ALLOWLIST)?,
                source: "default",
                deprecation: None,
            }),
            (Some(raw), None) => Ok(Self {
                symbols: Self::parse_list("SYMBOL_ALLOWLIST", raw)?,
                source: "SYMBOL_ALLOWLIST",
                deprecation: None,
            }),
            (None, Some(raw)) => Ok(Self {
                symbols: Self::parse_list(legacy_name, raw)?,
                source: legacy_name,
                deprecation: Some(notice(" (used, since SYMBOL_ALLOWLIST is unset)")),
            }),
            (Some(raw), Some(old)) => {
                let symbols = Self::parse_list("SYMBOL_ALLOWLIST", raw)?;
                let legacy_symbols = Self::parse_list(legacy_name, old)?;
                if symbols != legacy_symbols {
                    return Err(format!(
                        "SYMBOL_ALLOWLIST ({}) and the deprecated {legacy_name} ({}) disagree; remove {legacy_name}",
                        join_symbols(&symbols),
                        join_symbols(&legacy_symbols)
                    ));
                }
                Ok(Self {
                    symbols,
                    source: "SYMBOL_ALLOWLIST",
                    deprecation: Some(notice(" (it names the same symbols, so it is ignored)")),
                })
            }
        }
    }

    /// Parses a comma-separated list of symbols, naming `variable` in the error.
    ///
    /// # Errors
    /// The first entry that is not a symbol.
    pub fn parse_list(
        variable: &str,
        raw: &str,
    ) -> Result<std::collections::BTreeSet<quantum_model::types::Symbol>, String> {
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| quantum_model::types::Symbol::parse(s).map_err(|e| format!("{variable}: {e}")))
            .collect()
    }

    /// Whether `symbol` may trade.
    pub fn contains(&self, symbol: &quantum_model::types::Symbol) -> bool {
        self.symbols.contains(symbol)
    }

    /// The symbols, comma separated.
    pub fn display(&self) -> String {
        join_symbols(&self.symbols)
    }

    /// Logs, at start, a deprecated variable in use or an allowlist left at its default.
    pub fn log_notices(&self) {
        if let Some(notice) = &self.deprecation {
            tracing::warn!("{notice}");
        }
        if self.source == "default" {
            tracing::warn!(
                "SYMBOL_ALLOWLIST is unset: only {} may trade; set it (for every service) in /etc/quantum/quantum.env",
                self.display()
            );
        }
    }
}

fn join_symbols(symbols: &std::collections::BTreeSet<quantum_model::types::Symbol>) -> String {
    symbols.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
}

/// Consumer-group settings shared by every service.
#[derive(clap::Args, Debug, Clone)]
pub struct ConsumerArgs {
    /// Consumer name within the group. Default: <service>-<hostname>-<pid>-<4 hex>, unique
    /// per process, so two processes never share a pending list; a dead process's entries are
    /// reclaimed after STREAM_CLAIM_IDLE_MS. A stable name makes a restart recover its own
    /// entries at once, but must never be given to two running processes.
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
    /// Entries older than this (ms) are trimmed from the streams the service consumes or alone
    /// writes, never one a consumer group still needs (0: keep everything, unbounded).
    #[arg(long, env = "STREAM_RETENTION_MS", default_value_t = 3_600_000)]
    pub retention_ms: u64,
    /// Consumers of the group with nothing pending and idle this long (ms) are removed (each
    /// restart adds a consumer name; the dead ones would pile up).
    #[arg(long, env = "STREAM_CONSUMER_PRUNE_IDLE_MS", default_value_t = 3_600_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub consumer_prune_idle_ms: u64,
    /// An entry that fails as poison (the same error every time) goes to the stage's DLQ once
    /// Redis has delivered it this many times (XPENDING's count); the others go on meanwhile.
    #[arg(long, env = "STREAM_MAX_DELIVERIES", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_deliveries: u64,
    /// Batches failing for this long (ms) mark the stage stalled: /readyz answers 503 and
    /// quantum_consumer_stalled is 1.
    #[arg(long, env = "STREAM_STALL_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub stall_ms: u64,
    /// Replicas that must hold each committed batch (Redis WAIT) before the next is read, and
    /// an order's SENDING record before the live venue sends it; 0: no waiting. A replica that
    /// does not answer in REDIS_WAIT_TIMEOUT_MS is logged (REDIS_WAIT_SHORT) and counted; the
    /// live venue then sends nothing.
    #[arg(long, env = "REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u64,
    /// How long one WAIT for replicas may block (ms).
    #[arg(long, env = "REDIS_WAIT_TIMEOUT_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub redis_wait_timeout_ms: u64,
    /// Shards of each per-symbol stream (apply.plan, apply.result, ledger.commit), 1 to 64: a
    /// symbol's entries always go to the same shard, `<stream>` for shard 0 and
    /// `<stream>:<i>` for the others, so each shard can live on its own cluster node. Every
    /// service of the pipeline must use the same count (checked at start against
    /// quantum:config:stream_shards).
    #[arg(long, env = "STREAM_SHARDS", default_value = "1", value_parser = parse_stream_shards)]
    pub stream_shards: quantum_model::shards::StreamShards,
}

fn parse_stream_shards(raw: &str) -> Result<quantum_model::shards::StreamShards, String> {
    let count: u64 = raw
        .trim()
        .parse()
        .map_err(|_| format!("{raw:?} is not a whole number of shards"))?;
    quantum_model::shards::StreamShards::new(count).map_err(|e| e.to_string())
}

impl ConsumerArgs {
    /// Checks an age limit (`variable` = `limit_ms`, 0: off) against the reclaim age: an entry
    /// reclaimed from a dead replica is at least `STREAM_CLAIM_IDLE_MS + STREAM_BLOCK_MS` old,
    /// so a lower limit would refuse every reclaimed entry as stale.
    ///
    /// # Errors
    /// The limit is at or below the reclaim age.
    pub fn check_age_limit(&self, variable: &str, limit_ms: u64) -> Result<(), String> {
        let reclaim_age = self.claim_idle_ms + self.block_ms;
        if limit_ms > 0 && limit_ms <= reclaim_age {
            return Err(format!(
                "{variable} ({limit_ms}) must exceed STREAM_CLAIM_IDLE_MS + STREAM_BLOCK_MS ({reclaim_age}): \
                 every entry reclaimed from a dead replica would be refused as stale"
            ));
        }
        Ok(())
    }

    /// The consumer name to use for a service: `CONSUMER_NAME`, else one unique to this
    /// process (the pid tells processes apart on one host; the suffix, from the start time,
    /// tells apart containers that share a host name and all run as pid 1).
    pub fn consumer(&self, service: &str) -> String {
        self.consumer_name.clone().unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or_default();
            format!(
                "{service}-{}-{}-{:04x}",
                hostname(),
                std::process::id(),
                (nanos >> 10) & 0xffff
            )
        })
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
    fn one_allowlist_with_deprecated_fallbacks() {
        let legacy = "INTENT_BRIDGE_ALLOWLIST";
        let default = Allowlist::resolve(None, legacy, None).unwrap();
        assert_eq!((default.display().as_str(), default.source), ("BTCUSDT", "default"));
        let primary = Allowlist::resolve(Some("ethusdt, BTCUSDT"), legacy, None).unwrap();
        assert_eq!(primary.display(), "BTCUSDT,ETHUSDT");
        assert_eq!(primary.deprecation, None);
        let old = Allowlist::resolve(None, legacy, Some("SOLUSDT")).unwrap();
        assert_eq!((old.display().as_str(), old.source), ("SOLUSDT", legacy));
        assert!(old
            .deprecation
            .unwrap()
            .contains("INTENT_BRIDGE_ALLOWLIST is deprecated"));
        let same = Allowlist::resolve(Some("BTCUSDT,ETHUSDT"), legacy, Some("ETHUSDT,BTCUSDT")).unwrap();
        assert_eq!(same.source, "SYMBOL_ALLOWLIST");
        assert!(same.deprecation.is_some());
        let clash = Allowlist::resolve(Some("BTCUSDT,ETHUSDT"), legacy, Some("BTCUSDT")).unwrap_err();
        assert_eq!(
            clash,
            "SYMBOL_ALLOWLIST (BTCUSDT,ETHUSDT) and the deprecated INTENT_BRIDGE_ALLOWLIST (BTCUSDT) disagree; remove INTENT_BRIDGE_ALLOWLIST"
        );
        let bad = Allowlist::resolve(None, legacy, Some("BTCUSDT,BAD/SYM")).unwrap_err();
        assert!(bad.starts_with("INTENT_BRIDGE_ALLOWLIST: symbol \"BAD/SYM\""), "{bad}");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact_url("redis://secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
    }

    #[test]
    fn explicit_credentials_override_the_url() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\nignored\n").unwrap();
        let mut args = RedisArgs::from_url("redis://u:url-pass@127.0.0.1:6379/0");
        let config = args.client_config().unwrap();
        assert_eq!(
            (config.username.as_deref(), config.password.as_deref()),
            (Some("u"), Some("url-pass"))
        );
        args.redis_username = Some("quantum-bridge".into());
        assert_eq!(args.display(), "redis://u:***@127.0.0.1:6379/0 as quantum-bridge");
        args.redis_password_file = Some(file);
        let config = args.client_config().unwrap();
        assert_eq!(config.username.as_deref(), Some("quantum-bridge"));
        assert_eq!(config.password.as_deref(), Some("from-file"));
        args.redis_password = Some("from-env".into());
        assert_eq!(args.client_config().unwrap().password.as_deref(), Some("from-env"));
        args.redis_password = None;
        args.redis_password_file = Some(dir.path().join("missing"));
        assert!(args
            .client_config()
            .unwrap_err()
            .to_string()
            .contains("cannot read password file"));
    }

    #[test]
    fn url_falls_back_to_parts() {
        let mut args = RedisArgs::from_url("");
        args.redis_url = None;
        args.redis_host = "10.0.0.1".into();
        args.redis_port = 6380;
        args.redis_db = 2;
        assert_eq!(args.url(), "redis://10.0.0.1:6380/2");
    }

    #[test]
    fn cluster_nodes_make_a_cluster_url_and_refuse_what_a_cluster_cannot_do() {
        use fred::types::config::ServerConfig;
        let mut args = RedisArgs::from_url("");
        args.redis_url = None;
        args.redis_cluster_nodes = Some(" 10.0.0.1:7000, ,10.0.0.2:7001,10.0.0.3:7002".into());
        assert_eq!(
            args.url(),
            "redis-cluster://10.0.0.1:7000?node=10.0.0.2:7001&node=10.0.0.3:7002"
        );
        assert!(args.is_cluster());
        let config = args.client_config().unwrap();
        match config.server {
            ServerConfig::Clustered { hosts, .. } => assert_eq!(hosts.len(), 3),
            other => panic!("not clustered: {other:?}"),
        }

        args.redis_db = 1;
        let refused = args.client_config().unwrap_err().to_string();
        assert!(
            refused.contains("REDIS_DB=1: a Redis Cluster has database 0 only"),
            "{refused}"
        );
        args.redis_db = 0;

        args.redis_url = Some("redis://127.0.0.1:6379/0".into());
        let refused = args.client_config().unwrap_err().to_string();
        assert!(
            refused.contains("REDIS_URL and REDIS_CLUSTER_NODES are both set"),
            "{refused}"
        );

        let url = RedisArgs::from_url("redis-cluster://u:pw@10.0.0.1:7000?node=10.0.0.2:7001");
        assert!(url.is_cluster());
        assert_eq!(url.display(), "redis-cluster://u:***@10.0.0.1:7000?node=10.0.0.2:7001");
        assert!(!RedisArgs::from_url("redis://127.0.0.1:6379/0").is_cluster());
    }
}
