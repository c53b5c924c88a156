//! Waiting for replicas after money-path commits (`REDIS_WAIT_REPLICAS`).
//!
//! Redis replicates asynchronously: a commit the master acknowledged is lost when the master
//! dies before a replica has it, and the promoted replica then knows nothing of it. `WAIT n
//! timeout` after a commit blocks until `n` replicas hold every write this connection made; a
//! replication stream is one ordered log, so they then hold every write the master took before
//! it too, whoever made it.
//!
//! What is waited for, and what a short answer does:
//! - every consumer loop waits after each committed batch, before it reads the next one, so at
//!   most the batch in hand is on the master alone and no stage builds on writes a failover
//!   could take back. A short answer is counted and logged, not an error: the batch is
//!   committed on the master, and the pipeline goes on (availability over durability, as
//!   Redis' replication itself);
//! - the live venue waits after writing an order's `SENDING` record and before the request
//!   leaves: a record a failover could lose would let the order be sent twice. A short answer
//!   there sends nothing (see `executor::binance`).
//!
//! Invariant kept: with `REDIS_WAIT_REPLICAS=0` (the default) nothing is sent and nothing waits.

use std::sync::atomic::{AtomicBool, Ordering};

use fred::prelude::*;
use fred::types::{CustomCommand, Value};

/// What one `WAIT` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicated {
    /// Enough replicas hold the writes, or waiting is off.
    Yes,
    /// Fewer than asked acknowledged within the timeout.
    Short { acked: u64 },
}

/// `REDIS_WAIT_REPLICAS` and `REDIS_WAIT_TIMEOUT_MS`, and whether the last wait fell short
/// (so a replica that stays away is logged once, and its return once).
#[derive(Debug, Default)]
pub struct ReplicaWait {
    replicas: u64,
    timeout_ms: u64,
    short: AtomicBool,
}

impl ReplicaWait {
    pub fn new(replicas: u64, timeout_ms: u64) -> Self {
        Self {
            replicas,
            timeout_ms,
            short: AtomicBool::new(false),
        }
    }

    /// Whether any waiting is asked for.
    pub fn enabled(&self) -> bool {
        self.replicas > 0
    }

    pub fn replicas(&self) -> u64 {
        self.replicas
    }

    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    /// Waits until the writes `client` made, `what` in the log lines, are on enough replicas
    /// (of each primary of a cluster, all waited for at once; the fewest acknowledged counts).
    /// A short answer increments `quantum_redis_wait_short_total` and, when the previous one
    /// was not short, logs `REDIS_WAIT_SHORT` (WARN); the first full answer after it logs
    /// `REDIS_WAIT restored`.
    ///
    /// # Errors
    /// Redis did not answer the `WAIT`.
    pub async fn after_write(&self, client: &Client, what: &str) -> Result<Replicated, Error> {
        if !self.enabled() {
            return Ok(Replicated::Yes);
        }
        // On each node's connection of this client: WAIT counts the replicas holding the
        // writes this connection made there.
        let pipeline = client.pipeline();
        for node in crate::nodes::primaries(client) {
            let wait = CustomCommand::new_static("WAIT", node.route, false);
            let args = vec![self.replicas.to_string(), self.timeout_ms.to_string()];
            pipeline.custom::<(), _>(wait, args).await?;
        }
        let replies: Vec<Value> = pipeline.all().await?;
        let acked = replies
            .iter()
            .map(|r| r.as_u64().unwrap_or_default())
            .min()
            .unwrap_or_default();
        Ok(self.record(acked, what))
    }

    fn record(&self, acked: u64, what: &str) -> Replicated {
        if acked >= self.replicas {
            if self.short.swap(false, Ordering::Relaxed) {
                tracing::info!(
                    "REDIS_WAIT restored: {acked} replicas hold {what} (REDIS_WAIT_REPLICAS={})",
                    self.replicas
                );
            }
            return Replicated::Yes;
        }
        metrics::counter!(quantum_model::metric_names::REDIS_WAIT_SHORT_TOTAL).increment(1);
        if !self.short.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "REDIS_WAIT_SHORT replicas={acked}/{} timeout_ms={} after {what}: a failover now could lose \
                 these writes; logged again only after replicas have caught up",
                self.replicas,
                self.timeout_ms
            );
        }
        Replicated::Short { acked }
    }
}

/// At start: warns when the server has fewer connected replicas than `REDIS_WAIT_REPLICAS`
/// (every commit would then wait the whole timeout and fall short). A server that refuses
/// `INFO` is noted, not fatal.
pub async fn check_replicas(client: &Client, wait: &ReplicaWait) {
    if !wait.enabled() {
        return;
    }
    for node in crate::nodes::primaries(client) {
        match crate::durability::info(client, &node, "replication").await {
            Ok(info) => {
                let connected = connected_replicas(&info);
                if connected < wait.replicas() {
                    tracing::warn!(
                        "REDIS_SETTINGS REDIS_WAIT_REPLICAS={} but Redis{} has {connected} connected replicas: \
                         every commit will wait REDIS_WAIT_TIMEOUT_MS={} and fall short until they connect",
                        wait.replicas(),
                        node.suffix(),
                        wait.timeout_ms()
                    );
                }
            }
            Err(e) => tracing::info!(
                "Cannot read Redis' replication settings{} ({e}); not checked",
                node.suffix()
            ),
        }
    }
}

/// `connected_slaves` of an `INFO replication` reply (0 when absent).
fn connected_replicas(info: &str) -> u64 {
    info.lines()
        .filter_map(|l| l.trim().split_once(':'))
        .find(|(k, _)| *k == "connected_slaves")
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connected_replicas_come_from_info_replication() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\nslave0:ip=127.0.0.1,port=7001\r\n";
        assert_eq!(connected_replicas(info), 2);
        assert_eq!(connected_replicas("role:master\r\n"), 0);
        assert_eq!(connected_replicas("connected_slaves:lots\r\n"), 0);
    }

    #[test]
    fn a_short_answer_is_reported_once_until_replicas_catch_up() {
        let wait = ReplicaWait::new(1, 50);
        assert_eq!(wait.record(1, "a batch"), Replicated::Yes);
        assert!(!wait.short.load(Ordering::Relaxed));
        assert_eq!(wait.record(0, "a batch"), Replicated::Short { acked: 0 });
        assert!(wait.short.load(Ordering::Relaxed));
        assert_eq!(wait.record(0, "a batch"), Replicated::Short { acked: 0 });
        assert_eq!(wait.record(2, "a batch"), Replicated::Yes);
        assert!(!wait.short.load(Ordering::Relaxed));
    }

    #[test]
    fn off_by_default() {
        assert!(!ReplicaWait::default().enabled());
        assert!(ReplicaWait::new(1, 100).enabled());
    }
}
