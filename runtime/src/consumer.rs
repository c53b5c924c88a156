//! The consumer-group loop every service runs: create the group, recover our own pending
//! entries, reclaim stale ones from dead consumers (XAUTOCLAIM), read in batches, and hand each
//! batch to a handler that acknowledges it together with its effect. SIGTERM stops the loop
//! between batches.
//!
//! Failures are typed ([`StageError`]): a retryable one (Redis unreachable) backs off and
//! redelivers the batch; a fatal one (a missing permission) stops the service; a poison one is
//! isolated: the batch is retried entry by entry, so every good entry commits and only the
//! failing one stays pending, and once its delivery count (XPENDING) reaches
//! `STREAM_MAX_DELIVERIES` it goes to the stage's dead-letter stream with the error and the
//! count, acknowledged in the same step. One bad entry never stops the others. While batches
//! keep failing for `STREAM_STALL_MS`, the stage reports itself stalled (`/readyz`, a gauge).

use std::future::Future;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::{CustomCommand, Value};
use tokio_util::sync::CancellationToken;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::failure::StageError;
use crate::reply::{decode_entries, decode_read_reply};
use quantum_model::fields::Fields;
use quantum_model::shards::{StreamShards, SHARDED_STREAMS};
use quantum_model::stream_entry::{truncate, StreamEntry};
use quantum_model::time::{now_ms, now_secs};

/// Which stream and group a consumer reads, and how.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// The stream read: the stage's contract stream, or one of its shards (`STREAM_SHARDS`).
    pub stream: String,
    /// The contract name of the stage's stream: the `stream` label of the metrics, which
    /// add a `shard` label so that dashboards add shards up.
    pub label: &'static str,
    /// Which shard of `label` `stream` is (0 when unsharded).
    pub shard: u16,
    pub group: &'static str,
    pub consumer: String,
    pub batch_size: u64,
    pub block: Duration,
    pub claim_idle: Duration,
    pub claim_interval: Duration,
    /// Other consumers with nothing pending and idle this long are removed.
    pub prune_idle: Duration,
    /// The streams this stage trims to `retention_ms` (its own, plus any it alone writes).
    pub trim_streams: Vec<String>,
    pub retention_ms: u64,
    /// Where entries that fail as poison `max_deliveries` times go.
    pub dlq_stream: &'static str,
    pub max_deliveries: u64,
    /// How long batches may keep failing before the stage counts as stalled.
    pub stall_after: Duration,
    /// Shared with `/readyz`.
    pub progress: Arc<Progress>,
    /// The replicas each committed batch waits for (shared with the live venue).
    pub replica_wait: Arc<crate::replication::ReplicaWait>,
}

/// Whether a stage is making progress: set by the consumer loop, read by `/readyz`.
#[derive(Debug, Default)]
pub struct Progress {
    /// Unix ms of the first failure of the current run of failed batches; 0 while batches succeed.
    failing_since_ms: AtomicU64,
    stall_after_ms: AtomicU64,
}

impl Progress {
    /// `labels` only once a run of failures ends (the usual batch builds none).
    fn succeeded(&self, labels: impl FnOnce() -> Vec<metrics::Label>) {
        if self.failing_since_ms.swap(0, Ordering::Relaxed) != 0 {
            metrics::gauge!(quantum_model::metric_names::CONSUMER_STALLED, labels()).set(0.0);
        }
    }

    fn failed(&self, labels: Vec<metrics::Label>) {
        let now = now_ms();
        let since = match self
            .failing_since_ms
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => now,
            Err(since) => since,
        };
        let stalled = now.saturating_sub(since) >= self.stall_after_ms.load(Ordering::Relaxed);
        metrics::gauge!(quantum_model::metric_names::CONSUMER_STALLED, labels).set(if stalled { 1.0 } else { 0.0 });
    }

    /// `Some(ms)` while batches have kept failing for at least the stall limit: for how long.
    pub fn stalled_for_ms(&self) -> Option<u64> {
        let since = self.failing_since_ms.load(Ordering::Relaxed);
        let failing = now_ms().saturating_sub(since);
        (since != 0 && failing >= self.stall_after_ms.load(Ordering::Relaxed)).then_some(failing)
    }
}

impl ConsumerSpec {
    /// A spec from the shared consumer flags; poison entries go to `dlq_stream`.
    pub fn new(
        stream: &'static str,
        group: &'static str,
        dlq_stream: &'static str,
        service: &str,
        args: &crate::config::ConsumerArgs,
    ) -> Self {
        let progress = Arc::new(Progress::default());
        progress.stall_after_ms.store(args.stall_ms, Ordering::Relaxed);
        Self {
            stream: stream.to_string(),
            label: stream,
            shard: 0,
            group,
            consumer: args.consumer(service),
            batch_size: args.batch_size,
            block: Duration::from_millis(args.block_ms),
            claim_idle: Duration::from_millis(args.claim_idle_ms),
            claim_interval: Duration::from_millis(args.claim_interval_ms),
            prune_idle: Duration::from_millis(args.consumer_prune_idle_ms),
            trim_streams: vec![stream.to_string(), dlq_stream.to_string()],
            retention_ms: args.retention_ms,
            dlq_stream,
            max_deliveries: args.max_deliveries,
            stall_after: Duration::from_millis(args.stall_ms),
            progress,
            replica_wait: Arc::new(crate::replication::ReplicaWait::new(
                args.redis_wait_replicas,
                args.redis_wait_timeout_ms,
            )),
        }
    }

    /// One spec per shard of this (shard 0's) spec's stream: each reads its shard, trims its
    /// shard of every sharded stream in `trim_streams` (the others, such as the DLQ, are
    /// trimmed by shard 0 alone) and reports its own progress. One shard: this spec alone.
    pub fn per_shard(&self, shards: StreamShards) -> Vec<Self> {
        (0..shards.count())
            .map(|shard| {
                let mut spec = self.clone();
                spec.shard = shard;
                spec.stream = shards.name(self.label, shard);
                spec.trim_streams = self
                    .trim_streams
                    .iter()
                    .filter_map(|name| match SHARDED_STREAMS.iter().find(|s| **s == name.as_str()) {
                        Some(sharded) => Some(shards.name(sharded, shard)),
                        None => (shard == 0).then(|| name.clone()),
                    })
                    .collect();
                if shard > 0 {
                    let progress = Arc::new(Progress::default());
                    progress
                        .stall_after_ms
                        .store(self.progress.stall_after_ms.load(Ordering::Relaxed), Ordering::Relaxed);
                    spec.progress = progress;
                }
                spec
            })
            .collect()
    }

    /// The labels of this consumer's metrics: the contract stream and the shard.
    pub fn labels(&self) -> Vec<metrics::Label> {
        vec![
            metrics::Label::new("stream", self.label),
            metrics::Label::new("shard", self.shard.to_string()),
        ]
    }
}

/// Processes batches of entries.
pub trait BatchHandler: Send {
    /// Handles a batch. The handler must XACK every entry it was given, in the same atomic
    /// step (or after) the step that makes the entry's effect durable. An error must leave
    /// the batch uncommitted: a retryable one is redelivered after a backoff, a poison one is
    /// retried entry by entry (see the module doc), a fatal one stops the service.
    fn handle(&mut self, batch: &[StreamEntry]) -> impl Future<Output = Result<(), StageError>> + Send;

    /// Asked after each successful batch: `Some(delay)` when the handler left entries pending
    /// on purpose (waiting on a condition that passes, such as a mark price not published yet).
    /// The loop then re-reads its own pending entries after `delay`, instead of waiting for
    /// the much slower reclaim of idle entries.
    fn retry_pending_after(&mut self) -> Option<Duration> {
        None
    }
}

/// Creates the group (and the stream) if missing; an existing group is left as it is.
///
/// # Errors
/// Redis refused the command (other than the group existing already).
pub async fn ensure_group(client: &Client, stream: &str, group: &str) -> Result<(), Error> {
    let created: Result<Value, Error> = client.xgroup_create(stream, group, "0", true).await;
    match created {
        Ok(_) => {
            tracing::info!("Consumer group created: {group} on {stream}");
            Ok(())
        }
        Err(e) if crate::failure::redis_error_code(&e) == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Queues an XACK of `ids` on anything that can send commands (a pipeline or a transaction).
///
/// # Errors
/// The command could not be queued.
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

/// XREADGROUP, routed (on a cluster) to the node holding `stream`: its key comes after
/// GROUP, COUNT, BLOCK and STREAMS, where no fixed offset finds it.
fn xreadgroup_cmd(stream: &str, blocking: bool) -> CustomCommand {
    CustomCommand::new("XREADGROUP", slot_of(stream), blocking)
}

/// Routes a custom command to the node of `key` on a cluster (fred honours only an explicit
/// slot for custom commands; otherwise it hashes their first string argument).
pub fn slot_of(key: &str) -> fred::types::ClusterHash {
    fred::types::ClusterHash::Custom(fred::util::redis_keyslot(key.as_bytes()))
}

/// Runs the loop until `shutdown` fires: join the group, then, batch after batch, keep the
/// housekeeping due (backlog gauges, reclaiming stale entries), read, dispatch, and back off
/// after a failure. Starts by draining this consumer's own pending entries (a previous run of
/// ours died mid-batch).
///
/// # Errors
/// Only [`StageError::Fatal`]: failures retrying cannot fix (bad credentials, missing
/// permissions).
pub async fn run<H: BatchHandler>(
    reader: &Client,
    writer: &Client,
    spec: &ConsumerSpec,
    handler: &mut H,
    shutdown: &CancellationToken,
) -> Result<(), StageError> {
    let watchdog = crate::systemd::Watchdog::from_env(1);
    run_loop(reader, writer, spec, handler, shutdown, (&watchdog, 0)).await
}

/// [`run`] as loop `index` of the process's `watchdog`.
async fn run_loop<H: BatchHandler>(
    reader: &Client,
    writer: &Client,
    spec: &ConsumerSpec,
    handler: &mut H,
    shutdown: &CancellationToken,
    watchdog: (&crate::systemd::Watchdog, usize),
) -> Result<(), StageError> {
    let mut backoff = Backoff::default();
    if join_group(writer, spec, &mut backoff, shutdown).await? == Flow::Stop {
        return Ok(());
    }
    crate::replication::check_replicas(writer, &spec.replica_wait).await;
    announce_ready(spec, watchdog);
    let mut consumer = Consumer {
        reader,
        writer,
        spec,
        handler,
        shutdown,
        backoff,
        pass: Pass::recovery(),
        watchdog,
        last_claim: None,
        last_backlog: None,
        retry_at: None,
    };
    consumer.run().await
}

/// Runs one loop per spec (the shards of a stage's stream, from [`ConsumerSpec::per_shard`])
/// side by side in this task, each with its own reader connection and handler, until
/// `shutdown`. A fatal failure of one loop stops the others and is returned.
///
/// # Errors
/// [`StageError::Fatal`], from any loop; also when the specs, readers and handlers are not
/// as many each.
pub async fn run_shards<H: BatchHandler>(
    readers: &[Client],
    writer: &Client,
    specs: &[ConsumerSpec],
    handlers: &mut [H],
    shutdown: &CancellationToken,
) -> Result<(), StageError> {
    if readers.len() != specs.len() || handlers.len() != specs.len() {
        return Err(StageError::Fatal(format!(
            "{} shard specs, {} reader connections and {} handlers: one of each per shard is needed",
            specs.len(),
            readers.len(),
            handlers.len()
        )));
    }
    let stop = shutdown.child_token();
    // One watchdog for every loop: a hung shard stops the pings, and READY waits for all.
    let watchdog = crate::systemd::Watchdog::from_env(specs.len());
    let loops =
        specs
            .iter()
            .zip(readers)
            .zip(handlers.iter_mut())
            .enumerate()
            .map(|(index, ((spec, reader), handler))| {
                let (stop, watchdog) = (&stop, &watchdog);
                async move {
                    let result = run_loop(reader, writer, spec, handler, stop, (watchdog, index)).await;
                    if result.is_err() {
                        stop.cancel();
                    }
                    result
                }
            });
    futures_util::future::join_all(loops).await.into_iter().collect()
}

/// Whether the loop goes on after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// Creates the group, retrying while Redis is unreachable.
async fn join_group(
    writer: &Client,
    spec: &ConsumerSpec,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> Result<Flow, StageError> {
    loop {
        if shutdown.is_cancelled() {
            return Ok(Flow::Stop);
        }
        match ensure_group(writer, &spec.stream, spec.group)
            .await
            .map_err(StageError::from)
        {
            Ok(()) => return Ok(Flow::Continue),
            Err(e @ StageError::Fatal(_)) => return Err(e),
            Err(e) => {
                tracing::warn!("Cannot create group {} on {}: {e}; retrying", spec.group, spec.stream);
                if backoff.wait(shutdown).await {
                    return Ok(Flow::Stop);
                }
            }
        }
    }
}

fn announce_ready(spec: &ConsumerSpec, (watchdog, index): (&crate::systemd::Watchdog, usize)) {
    tracing::info!(
        "Consumer ready: stream={} group={} consumer={} batch={} max_deliveries={} dlq={}",
        spec.stream,
        spec.group,
        spec.consumer,
        spec.batch_size,
        spec.max_deliveries,
        spec.dlq_stream
    );
    watchdog.joined(index, &format!("consuming {} as {}", spec.label, spec.consumer));
}

/// Which entries the next read asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pass {
    /// New entries (`>`), blocking up to the spec's `block`.
    New,
    /// Our own pending entries after `from`: a recovery after a restart or a failure, or a
    /// retry of the entries the handler left pending on purpose.
    Pending { from: String, retrying: bool },
}

impl Pass {
    fn recovery() -> Self {
        Self::Pending {
            from: "0".into(),
            retrying: false,
        }
    }

    fn start_id(&self) -> &str {
        match self {
            Self::New => ">",
            Self::Pending { from, .. } => from,
        }
    }
}

/// The loop's state between batches.
struct Consumer<'a, H> {
    reader: &'a Client,
    writer: &'a Client,
    spec: &'a ConsumerSpec,
    handler: &'a mut H,
    shutdown: &'a CancellationToken,
    backoff: Backoff,
    pass: Pass,
    /// The process's watchdog, and this loop's index in it.
    watchdog: (&'a crate::systemd::Watchdog, usize),
    last_claim: Option<Instant>,
    last_backlog: Option<Instant>,
    /// When to re-read the entries the handler left pending on purpose.
    retry_at: Option<Instant>,
}

impl<H: BatchHandler> Consumer<'_, H> {
    async fn run(&mut self) -> Result<(), StageError> {
        loop {
            self.watchdog.0.beat(self.watchdog.1);
            self.start_retry_if_due();
            self.sample_backlog_if_due().await;
            if self.shutdown.is_cancelled() {
                tracing::info!(
                    "Shutdown requested: consumer {} stopped between batches",
                    self.spec.consumer
                );
                crate::systemd::notify_stopping();
                crate::telemetry::flush_logs();
                return Ok(());
            }
            let flow = match self.reclaim_if_due().await {
                Ok(()) => self.read_and_dispatch().await?,
                Err(e) => self.failed(e, "Reclaiming stale entries").await?,
            };
            if flow == Flow::Stop {
                return Ok(());
            }
        }
    }

    fn start_retry_if_due(&mut self) {
        if self.pass == Pass::New && self.retry_at.is_some_and(|t| Instant::now() >= t) {
            self.retry_at = None;
            self.pass = Pass::Pending {
                from: "0".into(),
                retrying: true,
            };
        }
    }

    async fn sample_backlog_if_due(&mut self) {
        if self.last_backlog.is_none_or(|t| t.elapsed() >= BACKLOG_SAMPLE_EVERY) {
            self.last_backlog = Some(Instant::now());
            record_backlog(self.writer, self.spec).await;
        }
    }

    /// Between passes over our own pending list, claims what dead consumers left behind.
    async fn reclaim_if_due(&mut self) -> Result<(), StageError> {
        if self.pass != Pass::New || self.last_claim.is_some_and(|t| t.elapsed() < self.spec.claim_interval) {
            return Ok(());
        }
        reclaim_stale(self.writer, self.spec, self.handler, self.shutdown).await?;
        self.last_claim = Some(Instant::now());
        // Reclaimed entries may be left waiting too.
        self.schedule_retry();
        Ok(())
    }

    async fn read_and_dispatch(&mut self) -> Result<Flow, StageError> {
        crate::telemetry::flush_logs();
        let entries = match read_batch(self.reader, self.spec, self.pass.start_id(), self.shutdown).await {
            ReadOutcome::Shutdown => return Ok(Flow::Continue),
            ReadOutcome::Failed(e) => return self.read_failed(e).await,
            ReadOutcome::Entries(entries) => entries,
        };
        if !self.advance_pass(&entries) {
            return Ok(Flow::Continue);
        }
        if entries.is_empty() {
            self.spec.progress.succeeded(|| self.spec.labels());
            return Ok(Flow::Continue);
        }
        let count = entries.len() as u64;
        self.count_redeliveries(count);
        match dispatch(self.writer, self.spec, self.handler, entries).await {
            Ok(()) => {
                self.committed(count);
                self.wait_for_replicas().await;
                Ok(Flow::Continue)
            }
            Err(e) => {
                if !matches!(e, StageError::Fatal(_)) {
                    let mut labels = self.spec.labels();
                    labels.push(metrics::Label::new("class", e.class()));
                    metrics::counter!(quantum_model::metric_names::CONSUMER_ERRORS_TOTAL, labels).increment(1);
                }
                self.failed(e, "Batch").await
            }
        }
    }

    /// Moves a pass over our pending list past what it read; false once the list is drained
    /// (the next read asks for new entries).
    fn advance_pass(&mut self, entries: &[(String, Option<StreamEntry>)]) -> bool {
        let Pass::Pending { from, retrying } = &mut self.pass else {
            return true;
        };
        let Some((last_id, _)) = entries.last() else {
            self.pass = Pass::New;
            return false;
        };
        if *retrying {
            tracing::debug!("Retrying {} entries left pending on purpose", entries.len());
        } else {
            tracing::info!(
                "Recovering {} pending entries of {} from before a restart",
                entries.len(),
                self.spec.consumer
            );
        }
        from.clone_from(last_id);
        true
    }

    fn count_redeliveries(&self, count: u64) {
        if let Pass::Pending { retrying, .. } = self.pass {
            let counter = if retrying {
                quantum_model::metric_names::CONSUMER_RETRIES_TOTAL
            } else {
                quantum_model::metric_names::CONSUMER_REDELIVERIES_TOTAL
            };
            metrics::counter!(counter, self.spec.labels()).increment(count);
        }
    }

    fn committed(&mut self, count: u64) {
        // The batch is committed: its log lines go out now, before anything else can stall or
        // kill the process.
        crate::telemetry::flush_logs();
        self.backoff.reset();
        self.spec.progress.succeeded(|| self.spec.labels());
        metrics::counter!(quantum_model::metric_names::CONSUMER_ENTRIES_TOTAL, self.spec.labels()).increment(count);
        self.schedule_retry();
    }

    /// `REDIS_WAIT_REPLICAS`: the batch is on enough replicas before the next one is read. A
    /// short or failed wait does not undo the commit; it is reported and the loop goes on.
    async fn wait_for_replicas(&self) {
        let what = format!("a batch of {}", self.spec.stream);
        if let Err(e) = self.spec.replica_wait.after_write(self.writer, &what).await {
            tracing::warn!("WAIT for replicas after {what} failed: {e}");
        }
    }

    fn schedule_retry(&mut self) {
        if let Some(delay) = self.handler.retry_pending_after() {
            self.retry_at = Some(Instant::now() + delay);
        }
    }

    async fn read_failed(&mut self, e: Error) -> Result<Flow, StageError> {
        if crate::failure::redis_error_code(&e) != Some("NOGROUP") {
            return self.failed(StageError::from(e), "Reading").await;
        }
        tracing::warn!(
            "Group {} vanished from {} (Redis restarted or stream deleted): recreating",
            self.spec.group,
            self.spec.stream
        );
        if let Err(e) = ensure_group(self.writer, &self.spec.stream, self.spec.group).await {
            tracing::warn!("Cannot recreate group {}: {e}", self.spec.group);
        }
        Ok(self.back_off().await)
    }

    /// A fatal failure stops the service; any other is logged, and the loop backs off and
    /// starts over from its own pending entries (the failed batch's uncommitted entries stay
    /// pending and are redelivered).
    async fn failed(&mut self, e: StageError, what: &str) -> Result<Flow, StageError> {
        if let StageError::Fatal(_) = e {
            return Err(e);
        }
        tracing::warn!(
            "{what} on {} failed ({}): {e}; backing off, its uncommitted entries stay pending and are redelivered",
            self.spec.stream,
            e.class()
        );
        Ok(self.back_off().await)
    }

    async fn back_off(&mut self) -> Flow {
        self.spec.progress.failed(self.spec.labels());
        // Start over from our own pending entries; a retry pass stays a retry (its entries were
        // left pending on purpose, not lost to a restart).
        let retrying = matches!(self.pass, Pass::Pending { retrying: true, .. });
        self.pass = Pass::Pending {
            from: "0".into(),
            retrying,
        };
        if self.backoff.wait(self.shutdown).await {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }
}

/// How often the group's lag and pending count are sampled into gauges.
const BACKLOG_SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Publishes the group's lag and pending count as gauges (best effort: a failed sample is skipped).
async fn record_backlog(writer: &Client, spec: &ConsumerSpec) {
    if let Ok(Some(backlog)) = group_backlog(writer, &spec.stream, spec.group).await {
        let mut labels = spec.labels();
        labels.push(metrics::Label::new("group", spec.group));
        metrics::gauge!(quantum_model::metric_names::CONSUMER_PENDING, labels.clone()).set(backlog.pending as f64);
        if let Some(lag) = backlog.lag {
            metrics::gauge!(quantum_model::metric_names::CONSUMER_LAG, labels).set(lag as f64);
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
    args.extend(["STREAMS".into(), spec.stream.as_str().into(), start_id.into()]);
    // Stop waiting on shutdown: entries delivered by an abandoned read stay in our pending
    // list and are recovered at the next start, so nothing is lost.
    let reply = tokio::select! {
        _ = shutdown.cancelled() => return ReadOutcome::Shutdown,
        r = reader.custom::<Value, Value>(xreadgroup_cmd(&spec.stream, blocking), args) => r,
    };
    match reply {
        Ok(value) => match decode_read_reply(value) {
            Ok(entries) => ReadOutcome::Entries(entries),
            Err(e) => ReadOutcome::Failed(Error::new(ErrorKind::Parse, e)),
        },
        Err(e) => ReadOutcome::Failed(e),
    }
}

/// Acknowledges entries deleted while pending and hands the rest to the handler; a batch that
/// fails as poison is retried entry by entry ([`isolate`]).
async fn dispatch<H: BatchHandler>(
    writer: &Client,
    spec: &ConsumerSpec,
    handler: &mut H,
    entries: Vec<(String, Option<StreamEntry>)>,
) -> Result<(), StageError> {
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
        queue_ack(writer, &spec.stream, spec.group, &deleted).await?;
    }
    if batch.is_empty() {
        return Ok(());
    }
    match handler.handle(&batch).await {
        Err(StageError::Poison(error)) => isolate(writer, spec, handler, &batch, error).await,
        other => other,
    }
}

/// Retries a poisoned batch one entry at a time: the good entries commit, each failing one is
/// dead-lettered once its delivery count reaches the limit and otherwise stays pending.
/// Returns the last poison error while some entry is left pending.
async fn isolate<H: BatchHandler>(
    writer: &Client,
    spec: &ConsumerSpec,
    handler: &mut H,
    batch: &[StreamEntry],
    error: String,
) -> Result<(), StageError> {
    if batch.len() > 1 {
        tracing::warn!(
            "Batch of {} entries on {} failed as poison ({error}); retrying them one by one",
            batch.len(),
            spec.stream
        );
    }
    let mut left: Option<String> = None;
    for entry in batch {
        let outcome = if batch.len() == 1 {
            Err(StageError::Poison(error.clone()))
        } else if deliveries(writer, spec, &entry.id).await? == 0 {
            // Committed by the failed batch already (stages that commit entry by entry).
            continue;
        } else {
            handler.handle(std::slice::from_ref(entry)).await
        };
        match outcome {
            Ok(()) => {}
            Err(StageError::Poison(e)) => {
                if !dead_letter_if_exhausted(writer, spec, entry, &e).await? {
                    left = Some(e);
                }
            }
            Err(other) => return Err(other),
        }
    }
    left.map_or(Ok(()), |e| Err(StageError::Poison(e)))
}

/// How many times Redis delivered `id` to this group (XPENDING); 0 when it is not pending.
async fn deliveries(writer: &Client, spec: &ConsumerSpec, id: &str) -> Result<u64, Error> {
    let args: Vec<Value> = vec![
        spec.stream.as_str().into(),
        spec.group.into(),
        id.into(),
        id.into(),
        1.into(),
    ];
    let reply: Value = writer
        .custom(
            CustomCommand::new("XPENDING", fred::types::ClusterHash::FirstKey, false),
            args,
        )
        .await?;
    Ok(reply
        .into_array()
        .into_iter()
        .next()
        .and_then(|e| e.into_array().get(3).and_then(Value::as_u64))
        .unwrap_or(0))
}

/// Dead-letters a poison entry delivered `max_deliveries` times or more: its DLQ entry (the
/// source id, reason `poison`, the error, the delivery count, the raw fields) and its XACK in
/// one MULTI/EXEC. Returns whether it did.
async fn dead_letter_if_exhausted(
    writer: &Client,
    spec: &ConsumerSpec,
    entry: &StreamEntry,
    error: &str,
) -> Result<bool, StageError> {
    let delivered = deliveries(writer, spec, &entry.id).await?;
    if delivered < spec.max_deliveries {
        tracing::warn!(
            "Poison entry {} on {} ({error}): delivery {delivered} of {}; left pending",
            entry.id,
            spec.stream,
            spec.max_deliveries
        );
        return Ok(false);
    }
    let fields = vec![
        ("source_id", entry.id.clone()),
        ("source_stream", spec.stream.clone()),
        ("reason", "poison".to_string()),
        ("error", truncate(error, 1024).to_string()),
        ("deliveries", delivered.to_string()),
        ("raw", truncate(&entry.raw_text(), 8192).to_string()),
        ("timestamp", now_secs().to_string()),
    ];
    let letter = crate::append_once::Once {
        id: crate::append_once::dead_letter_id(&spec.stream, spec.label, &entry.id),
        fields: crate::cas::owned(fields),
        ttl_secs: crate::append_once::MARKER_TTL_SECS,
    };
    crate::append_once::dead_letter_then_ack(
        writer,
        spec.dlq_stream,
        std::slice::from_ref(&letter),
        &spec.stream,
        spec.group,
        std::slice::from_ref(&entry.id),
    )
    .await?;
    metrics::counter!(quantum_model::metric_names::DLQ_ENTRIES_TOTAL, "stream" => spec.dlq_stream, "reason" => "poison")
        .increment(1);
    tracing::error!(
        "DLQ poison entry {} of {} after {delivered} deliveries: {error} (moved to {}; other entries go on)",
        entry.id,
        spec.stream,
        spec.dlq_stream
    );
    Ok(true)
}

/// Claims entries other consumers left pending for longer than `claim_idle` and processes them,
/// then prunes consumers long gone and trims the streams.
async fn reclaim_stale<H: BatchHandler>(
    writer: &Client,
    spec: &ConsumerSpec,
    handler: &mut H,
    shutdown: &CancellationToken,
) -> Result<(), StageError> {
    let mut cursor = "0-0".to_string();
    let mut claimed_total = 0usize;
    // Bounded: a full sweep of a huge PEL is spread over several intervals.
    for _ in 0..64 {
        if shutdown.is_cancelled() {
            break;
        }
        let args: Vec<Value> = vec![
            spec.stream.as_str().into(),
            spec.group.into(),
            spec.consumer.as_str().into(),
            (spec.claim_idle.as_millis() as i64).into(),
            cursor.as_str().into(),
            "COUNT".into(),
            (spec.batch_size as i64).into(),
        ];
        let reply: Value = writer
            .custom(
                CustomCommand::new("XAUTOCLAIM", fred::types::ClusterHash::FirstKey, false),
                args,
            )
            .await?;
        let mut parts = reply.into_array().into_iter();
        let next = parts.next().and_then(|v| v.as_string()).unwrap_or_else(|| "0-0".into());
        let entries = decode_entries(parts.next().unwrap_or(Value::Null))
            .map_err(|e| StageError::Retryable(format!("unreadable XAUTOCLAIM reply: {e}")))?;
        claimed_total += entries.len();
        metrics::counter!(quantum_model::metric_names::CONSUMER_REDELIVERIES_TOTAL, spec.labels())
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
    prune_consumers(writer, spec).await?;
    trim_streams(writer, spec).await
}

/// Trims the stage's streams to their retention. Trimming is housekeeping: a failure is
/// reported and retried next pass, never allowed to hold up the entries (only a missing
/// permission stops the service, as everywhere).
async fn trim_streams(writer: &Client, spec: &ConsumerSpec) -> Result<(), StageError> {
    match crate::retention::trim(
        writer,
        &spec.trim_streams,
        spec.retention_ms,
        quantum_model::time::now_ms(),
    )
    .await
    .map_err(StageError::from)
    {
        Ok(0) => {}
        Ok(trimmed) => tracing::debug!(
            "Trimmed {trimmed} entries older than {} ms from {}",
            spec.retention_ms,
            spec.trim_streams.join(", ")
        ),
        Err(e @ StageError::Fatal(_)) => return Err(e),
        Err(e) => tracing::warn!(
            "Trimming {} failed: {e}; retried next pass",
            spec.trim_streams.join(", ")
        ),
    }
    // Its lines are written now, not with the next batch (there may be none for a while).
    crate::telemetry::flush_logs();
    Ok(())
}

/// Deletes a consumer only if it holds nothing pending, in one step: XGROUP DELCONSUMER drops a
/// consumer's pending entries, which would then never be delivered again. Returns 1 when it
/// deleted, 0 when the consumer is gone, -1 when it holds entries.
const DELETE_IDLE_CONSUMER_SCRIPT: &str = r#"
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return -1 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2]) >= 0 and 1 or 0
"#;

/// Removes the group's consumers that hold nothing pending and have been idle for
/// `prune_idle`: the names of processes long gone. One with entries pending is never removed
/// (XGROUP DELCONSUMER would drop its entries); XAUTOCLAIM empties it first.
async fn prune_consumers(writer: &Client, spec: &ConsumerSpec) -> Result<(), StageError> {
    let reply: Value = writer
        .custom(
            // The key follows the subcommand, where FirstKey would not find it.
            CustomCommand::new_static("XINFO", slot_of(&spec.stream), false),
            vec![Value::from("CONSUMERS"), spec.stream.as_str().into(), spec.group.into()],
        )
        .await?;
    let prune_after = spec.prune_idle.as_millis() as u64;
    for consumer in reply.into_array() {
        let pairs = crate::reply::hash_pairs(consumer);
        let get = |k: &str| pairs.field(k);
        let (Some(name), Some(pending), Some(idle)) = (get("name"), get("pending"), get("idle")) else {
            continue;
        };
        let idle: u64 = idle.parse().unwrap_or(0);
        if name == spec.consumer || pending != "0" || idle < prune_after {
            continue;
        }
        let pipeline = writer.pipeline();
        crate::cas::queue_eval(
            &pipeline,
            DELETE_IDLE_CONSUMER_SCRIPT,
            vec![spec.stream.clone()],
            vec![spec.group.to_string(), name.to_string()],
        )
        .await?;
        let deleted: Vec<i64> = pipeline.all().await?;
        if deleted.first() != Some(&1) {
            // It read something meanwhile: it lives.
            continue;
        }
        tracing::info!(
            "Pruned consumer {name} of {} on {}: idle {idle} ms with nothing pending",
            spec.group,
            spec.stream
        );
        metrics::counter!(quantum_model::metric_names::CONSUMER_PRUNED_TOTAL, spec.labels()).increment(1);
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

/// The connections a consumer service uses: `readers`, one per stream it reads (a shard
/// each), for blocking XREADGROUP calls (which would stall anything else sharing their
/// connection), and `writer` for everything else.
pub struct Connections {
    pub readers: Vec<Client>,
    pub writer: Client,
}

impl Connections {
    /// Connects the writer and `readers` readers, retrying while Redis is unreachable, and
    /// warns about Redis settings that endanger the dedup records (`durability`).
    ///
    /// # Errors
    /// Failures retrying cannot fix (bad credentials, TLS).
    pub async fn connect(
        redis: &crate::config::RedisArgs,
        readers: u16,
        shutdown: &CancellationToken,
    ) -> Result<Self, crate::config::ConnectError> {
        let writer = redis.connect(shutdown).await?;
        let mut connected = Vec::with_capacity(usize::from(readers));
        for _ in 0..readers.max(1) {
            connected.push(redis.connect(shutdown).await?);
        }
        crate::durability::check(&writer).await;
        Ok(Self {
            readers: connected,
            writer,
        })
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
///
/// # Errors
/// Redis unreachable, or an unreadable XINFO reply.
pub async fn group_backlog(client: &Client, stream: &str, group: &str) -> Result<Option<GroupBacklog>, Error> {
    let mut created_meanwhile = false;
    let groups = loop {
        let reply: Result<Value, Error> = client.xinfo_groups(stream).await;
        match reply {
            Ok(v) => break v.into_array(),
            // XINFO on a missing stream is a plain `ERR`: the stream's type tells (TYPE, which
            // every service's ACL user may run). A stream created between the two (a service
            // starting) is read again, once; otherwise the XINFO error stands.
            Err(e) if crate::failure::redis_error_code(&e) == Some("ERR") => {
                match client.custom::<String, _>(type_cmd(), vec![stream]).await {
                    Ok(kind) if kind == "none" => return Ok(None),
                    Ok(kind) if kind == "stream" && !created_meanwhile => created_meanwhile = true,
                    _ => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    };
    for g in groups {
        let pairs = crate::reply::hash_pairs(g);
        let get = |k: &str| pairs.field(k);
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

fn type_cmd() -> CustomCommand {
    CustomCommand::new_static("TYPE", fred::types::ClusterHash::FirstKey, false)
}

/// All keys matching `pattern`, via SCAN (never KEYS on a production server), on every
/// primary of a cluster.
///
/// # Errors
/// Redis unreachable or refusing SCAN.
pub async fn scan_keys(client: &Client, pattern: &str) -> Result<Vec<String>, Error> {
    let mut keys = Vec::new();
    for node in crate::nodes::primaries(client) {
        scan_node(client, &node, pattern, &mut keys).await?;
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

async fn scan_node(
    client: &Client,
    node: &crate::nodes::Node,
    pattern: &str,
    keys: &mut Vec<String>,
) -> Result<(), Error> {
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
            .custom(CustomCommand::new("SCAN", node.route.clone(), false), args)
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
            return Ok(());
        }
    }
}
