//! The consumer-group loop every service runs: create the group, recover our own pending
//! entries, reclaim stale ones from dead consumers (XAUTOCLAIM), read in batches, and hand each
//! batch to a handler that acknowledges it together with its effect. Redis outages are retried
//! with backoff; SIGTERM stops the loop between batches.

use std::future::Future;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::{CustomCommand, Value};
use tokio_util::sync::CancellationToken;

use crate::config::is_auth_error;
use crate::fields::{decode_entries, decode_read_reply, StreamEntry};

/// Which stream and group a consumer reads, and how.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub stream: &'static str,
    pub group: &'static str,
    pub consumer: String,
    pub batch_size: u64,
    pub block: Duration,
    pub claim_idle: Duration,
    pub claim_interval: Duration,
}

impl ConsumerSpec {
    /// A spec from the shared consumer flags.
    pub fn new(stream: &'static str, group: &'static str, service: &str, args: &crate::config::ConsumerArgs) -> Self {
        Self {
            stream,
            group,
            consumer: args.consumer(service),
            batch_size: args.batch_size,
            block: Duration::from_millis(args.block_ms),
            claim_idle: Duration::from_millis(args.claim_idle_ms),
            claim_interval: Duration::from_millis(args.claim_interval_ms),
        }
    }
}

/// Processes batches of entries.
pub trait BatchHandler: Send {
    /// Handles a batch. The handler must XACK every entry it was given, in the same atomic
    /// step (or after) the step that makes the entry's effect durable. An error leaves the
    /// batch pending; the loop backs off and redelivers it.
    fn handle(&mut self, batch: Vec<StreamEntry>) -> impl Future<Output = Result<(), Error>> + Send;

    /// Asked after each successful batch: `Some(delay)` when the handler left entries pending
    /// on purpose (waiting on a condition that passes, such as a mark price not published yet).
    /// The loop then re-reads its own pending entries after `delay`, instead of waiting for
    /// the much slower reclaim of idle entries.
    fn retry_pending_after(&mut self) -> Option<Duration> {
        None
    }
}

/// Creates the group (and the stream) if missing; an existing group is left as it is.
pub async fn ensure_group(client: &Client, stream: &str, group: &str) -> Result<(), Error> {
    let created: Result<Value, Error> = client.xgroup_create(stream, group, "0", true).await;
    match created {
        Ok(_) => {
            tracing::info!("Consumer group created: {group} on {stream}");
            Ok(())
        }
        Err(e) if e.to_string().contains("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Queues an XACK of `ids` on anything that can send commands (a pipeline or a transaction).
pub async fn queue_ack<C: StreamsInterface + Sync>(
    c: &C,
    stream: &str,
    group: &str,
    ids: &[String],
) -> Result<(), Error> {
    if ids.is_empty() {
        return Ok(());
    }
    c.xack::<Value, _, _, _>(stream, group, ids.to_vec()).await.map(|_| ())
}

fn xreadgroup_cmd(blocking: bool) -> CustomCommand {
    CustomCommand::new("XREADGROUP", fred::types::ClusterHash::Custom(0), blocking)
}

/// Runs the loop until `shutdown` fires. Returns an error only for failures retrying cannot
/// fix (bad credentials, missing permissions).
pub async fn run<H: BatchHandler>(
    reader: &Client,
    writer: &Client,
    spec: &ConsumerSpec,
    handler: &mut H,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let mut backoff = Backoff::default();
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        match ensure_group(writer, spec.stream, spec.group).await {
            Ok(()) => break,
            Err(e) if is_auth_error(&e) => return Err(e),
            Err(e) => {
                tracing::warn!("Cannot create group {} on {}: {e}; retrying", spec.group, spec.stream);
                if backoff.wait(shutdown).await {
                    return Ok(());
                }
            }
        }
    }
    tracing::info!(
        "Consumer ready: stream={} group={} consumer={} batch={}",
        spec.stream,
        spec.group,
        spec.consumer,
        spec.batch_size
    );

    crate::systemd::notify_ready(&format!("consuming {} as {}", spec.stream, spec.consumer));
    let mut watchdog = crate::systemd::Watchdog::from_env();

    // Start by draining our own pending entries (a previous run of ours died mid-batch).
    let mut recover_from: Option<String> = Some("0".to_string());
    let mut last_claim: Option<Instant> = None;
    let mut last_backlog: Option<Instant> = None;
    // When to re-read the entries the handler left pending on purpose, and whether the
    // current pass over our pending list is such a retry (not a recovery after a restart).
    let mut retry_at: Option<Instant> = None;
    let mut retrying = false;
    loop {
        watchdog.ping();
        if recover_from.is_none() && retry_at.is_some_and(|t| Instant::now() >= t) {
            retry_at = None;
            retrying = true;
            recover_from = Some("0".to_string());
        }
        if last_backlog.is_none_or(|t| t.elapsed() >= BACKLOG_SAMPLE_EVERY) {
            last_backlog = Some(Instant::now());
            record_backlog(writer, spec).await;
        }
        if shutdown.is_cancelled() {
            tracing::info!("Shutdown requested: consumer {} stopped between batches", spec.consumer);
            crate::systemd::notify_stopping();
            crate::telemetry::flush_logs();
            return Ok(());
        }
        if recover_from.is_none() && last_claim.is_none_or(|t| t.elapsed() >= spec.claim_interval) {
            match reclaim_stale(writer, spec, handler, shutdown).await {
                Ok(()) => {
                    last_claim = Some(Instant::now());
                    // Reclaimed entries may be left waiting too.
                    if let Some(delay) = handler.retry_pending_after() {
                        retry_at = Some(Instant::now() + delay);
                    }
                }
                Err(e) if is_auth_error(&e) => return Err(e),
                Err(e) => {
                    tracing::warn!("XAUTOCLAIM on {} failed: {e}", spec.stream);
                    recover_from = Some("0".to_string());
                    if backoff.wait(shutdown).await {
                        return Ok(());
                    }
                    continue;
                }
            }
        }

        let start_id = recover_from.clone().unwrap_or_else(|| ">".to_string());
        crate::telemetry::flush_logs();
        let read = read_batch(reader, spec, &start_id, shutdown).await;
        let entries = match read {
            ReadOutcome::Shutdown => continue,
            ReadOutcome::Entries(entries) => entries,
            ReadOutcome::Failed(e) => {
                if is_auth_error(&e) {
                    return Err(e);
                }
                if e.to_string().contains("NOGROUP") {
                    tracing::warn!(
                        "Group {} vanished from {} (Redis restarted or stream deleted): recreating",
                        spec.group,
                        spec.stream
                    );
                    if let Err(e) = ensure_group(writer, spec.stream, spec.group).await {
                        tracing::warn!("Cannot recreate group {}: {e}", spec.group);
                    }
                } else {
                    tracing::warn!("Reading {} failed: {e}; backing off", spec.stream);
                }
                recover_from = Some("0".to_string());
                if backoff.wait(shutdown).await {
                    return Ok(());
                }
                continue;
            }
        };

        if let Some(cursor) = recover_from.as_mut() {
            match entries.last() {
                None => {
                    recover_from = None;
                    retrying = false;
                    continue;
                }
                Some((last_id, _)) => {
                    if retrying {
                        tracing::debug!("Retrying {} entries left pending on purpose", entries.len());
                    } else {
                        tracing::info!(
                            "Recovering {} pending entries of {} from before a restart",
                            entries.len(),
                            spec.consumer
                        );
                    }
                    *cursor = last_id.clone();
                }
            }
        }
        if entries.is_empty() {
            continue;
        }
        let count = entries.len() as u64;
        if recover_from.is_some() {
            let counter = if retrying {
                "quantum_consumer_retries_total"
            } else {
                "quantum_consumer_redeliveries_total"
            };
            metrics::counter!(counter, "stream" => spec.stream).increment(count);
        }
        match dispatch(writer, spec, handler, entries).await {
            Ok(()) => {
                // The batch is committed: its log lines go out now, before anything else can
                // stall or kill the process.
                crate::telemetry::flush_logs();
                backoff.reset();
                metrics::counter!("quantum_consumer_entries_total", "stream" => spec.stream).increment(count);
                if let Some(delay) = handler.retry_pending_after() {
                    retry_at = Some(Instant::now() + delay);
                }
            }
            Err(e) if is_auth_error(&e) => return Err(e),
            Err(e) => {
                tracing::warn!(
                    "Batch on {} failed: {e}; it stays pending and is redelivered",
                    spec.stream
                );
                metrics::counter!("quantum_consumer_errors_total", "stream" => spec.stream).increment(1);
                recover_from = Some("0".to_string());
                if backoff.wait(shutdown).await {
                    return Ok(());
                }
            }
        }
    }
}

/// How often the group's lag and pending count are sampled into gauges.
const BACKLOG_SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Publishes the group's lag and pending count as gauges (best effort: a failed sample is skipped).
async fn record_backlog(writer: &Client, spec: &ConsumerSpec) {
    if let Ok(Some(backlog)) = group_backlog(writer, spec.stream, spec.group).await {
        let labels = [("stream", spec.stream), ("group", spec.group)];
        metrics::gauge!("quantum_consumer_pending", &labels).set(backlog.pending as f64);
        if let Some(lag) = backlog.lag {
            metrics::gauge!("quantum_consumer_lag", &labels).set(lag as f64);
        }
    }
}

enum ReadOutcome {
    Entries(Vec<(String, Option<StreamEntry>)>),
    Failed(Error),
    Shutdown,
}

async fn read_batch(reader: &Client, spec: &ConsumerSpec, start_id: &str, shutdown: &CancellationToken) -> ReadOutcome {
    let blocking = start_id == ">";
    let mut args: Vec<Value> = vec![
        "GROUP".into(),
        spec.group.into(),
        spec.consumer.as_str().into(),
        "COUNT".into(),
        (spec.batch_size as i64).into(),
    ];
    if blocking {
        args.push("BLOCK".into());
        args.push((spec.block.as_millis() as i64).into());
    }
    args.extend(["STREAMS".into(), spec.stream.into(), start_id.into()]);
    // Stop waiting on shutdown: entries delivered by an abandoned read stay in our pending
    // list and are recovered at the next start, so nothing is lost.
    let reply = tokio::select! {
        _ = shutdown.cancelled() => return ReadOutcome::Shutdown,
        r = reader.custom::<Value, Value>(xreadgroup_cmd(blocking), args) => r,
    };
    match reply {
        Ok(value) => match decode_read_reply(value) {
            Ok(entries) => ReadOutcome::Entries(entries),
            Err(e) => ReadOutcome::Failed(Error::new(ErrorKind::Parse, e)),
        },
        Err(e) => ReadOutcome::Failed(e),
    }
}

/// Acknowledges entries deleted while pending and hands the rest to the handler.
async fn dispatch<H: BatchHandler>(
    writer: &Client,
    spec: &ConsumerSpec,
    handler: &mut H,
    entries: Vec<(String, Option<StreamEntry>)>,
) -> Result<(), Error> {
    let mut deleted = Vec::new();
    let mut batch = Vec::with_capacity(entries.len());
    for (id, entry) in entries {
        match entry {
            Some(entry) => batch.push(entry),
            None => deleted.push(id),
        }
    }
    if !deleted.is_empty() {
        tracing::warn!(
            "{} pending entries of {} were deleted before processing; acknowledging them",
            deleted.len(),
            spec.stream
        );
        queue_ack(writer, spec.stream, spec.group, &deleted).await?;
    }
    if batch.is_empty() {
        return Ok(());
    }
    handler.handle(batch).await
}

/// Claims entries other consumers left pending for longer than `claim_idle` and processes them.
async fn reclaim_stale<H: BatchHandler>(
    writer: &Client,
    spec: &ConsumerSpec,
    handler: &mut H,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let mut cursor = "0-0".to_string();
    let mut claimed_total = 0usize;
    // Bounded: a full sweep of a huge PEL is spread over several intervals.
    for _ in 0..64 {
        if shutdown.is_cancelled() {
            break;
        }
        let args: Vec<Value> = vec![
            spec.stream.into(),
            spec.group.into(),
            spec.consumer.as_str().into(),
            (spec.claim_idle.as_millis() as i64).into(),
            cursor.as_str().into(),
            "COUNT".into(),
            (spec.batch_size as i64).into(),
        ];
        let reply: Value = writer
            .custom(
                CustomCommand::new("XAUTOCLAIM", fred::types::ClusterHash::Custom(0), false),
                args,
            )
            .await?;
        let mut parts = reply.into_array().into_iter();
        let next = parts.next().and_then(|v| v.as_string()).unwrap_or_else(|| "0-0".into());
        let entries =
            decode_entries(parts.next().unwrap_or(Value::Null)).map_err(|e| Error::new(ErrorKind::Parse, e))?;
        claimed_total += entries.len();
        metrics::counter!("quantum_consumer_redeliveries_total", "stream" => spec.stream)
            .increment(entries.len() as u64);
        if !entries.is_empty() {
            dispatch(writer, spec, handler, entries).await?;
        }
        if next == "0-0" {
            break;
        }
        cursor = next;
    }
    if claimed_total > 0 {
        tracing::info!(
            "XAUTOCLAIM reclaimed {claimed_total} stale entries on {} for {}",
            spec.stream,
            spec.consumer
        );
    }
    Ok(())
}

/// Exponential backoff between 100 ms and 5 s.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }

    /// Sleeps; returns true when shutdown fired meanwhile.
    async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        crate::telemetry::flush_logs();
        let delay = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tokio::time::sleep(delay) => false,
        }
    }
}

/// A token cancelled on SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            tracing::error!("Cannot install signal handlers; SIGTERM will not shut down cleanly");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received: finishing the batch in hand"),
            _ = int.recv() => tracing::info!("SIGINT received: finishing the batch in hand"),
        }
        trigger.cancel();
    });
    token
}

/// The two connections a consumer service uses: `reader` for blocking XREADGROUP calls (which
/// would stall anything else sharing its connection) and `writer` for everything else.
pub struct Connections {
    pub reader: Client,
    pub writer: Client,
}

impl Connections {
    /// Connects both, retrying while Redis is unreachable.
    pub async fn connect(
        redis: &crate::config::RedisArgs,
        shutdown: &CancellationToken,
    ) -> Result<Self, crate::config::ConnectError> {
        let writer = redis.connect(shutdown).await?;
        let reader = redis.connect(shutdown).await?;
        Ok(Self { reader, writer })
    }
}

/// A consumer group's backlog, from XINFO GROUPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupBacklog {
    pub consumers: u64,
    /// Delivered but not acknowledged.
    pub pending: u64,
    /// Not yet delivered (`None` when Redis cannot tell, e.g. after XGROUP SETID).
    pub lag: Option<u64>,
    pub last_delivered_id: String,
}

impl GroupBacklog {
    /// Nothing pending and nothing left to deliver.
    pub fn is_idle(&self) -> bool {
        self.pending == 0 && self.lag == Some(0)
    }
}

/// Reads the backlog of `group` on `stream`; `None` when the stream or group does not exist.
pub async fn group_backlog(client: &Client, stream: &str, group: &str) -> Result<Option<GroupBacklog>, Error> {
    let reply: Result<Value, Error> = client.xinfo_groups(stream).await;
    let groups = match reply {
        Ok(v) => v.into_array(),
        Err(e) if e.to_string().contains("no such key") => return Ok(None),
        Err(e) => return Err(e),
    };
    for g in groups {
        let pairs = crate::fields::hash_pairs(g);
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if get("name") != Some(group) {
            continue;
        }
        let num = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok());
        return Ok(Some(GroupBacklog {
            consumers: num("consumers").unwrap_or_default(),
            pending: num("pending").unwrap_or_default(),
            lag: num("lag"),
            last_delivered_id: get("last-delivered-id").unwrap_or_default().to_string(),
        }));
    }
    Ok(None)
}

/// All keys matching `pattern`, via SCAN (never KEYS on a production server).
pub async fn scan_keys(client: &Client, pattern: &str) -> Result<Vec<String>, Error> {
    let mut keys = Vec::new();
    let mut cursor = "0".to_string();
    loop {
        let args: Vec<Value> = vec![
            cursor.as_str().into(),
            "MATCH".into(),
            pattern.into(),
            "COUNT".into(),
            1000.into(),
        ];
        let reply: Value = client
            .custom(
                CustomCommand::new("SCAN", fred::types::ClusterHash::Random, false),
                args,
            )
            .await?;
        let mut parts = reply.into_array().into_iter();
        cursor = parts.next().and_then(|v| v.as_string()).unwrap_or_else(|| "0".into());
        keys.extend(
            parts
                .next()
                .map(Value::into_array)
                .unwrap_or_default()
                .iter()
                .filter_map(|v| v.as_string()),
        );
        if cursor == "0" {
            break;
        }
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}
