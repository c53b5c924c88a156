//! The consumer-group loop itself (`quantum_runtime::consumer`), driven with a handler of the
//! test's own on a real redis-server: batches are handed over in stream order, each entry is
//! committed once, and a batch whose commit fails is handed over again, before the entries
//! after it, until it commits.

mod support;

use std::sync::{Arc, Mutex};

use clap::Parser;
use fred::prelude::*;
use tokio_util::sync::CancellationToken;

use quantum_model::stream_entry::StreamEntry;
use quantum_runtime::config::{ConsumerArgs, RedisArgs};
use quantum_runtime::consumer::{self, group_backlog, BatchHandler, ConsumerSpec};
use quantum_runtime::failure::StageError;
use support::{wait_for, Stack};

const STREAM: &str = "test:consumer:stream";
const GROUP: &str = "test-group";
const DLQ: &str = "test:consumer:dlq";

#[derive(Parser)]
struct Settings {
    #[command(flatten)]
    consumer: ConsumerArgs,
    #[command(flatten)]
    redis: RedisArgs,
}

/// Commits (acknowledges) every batch, except that the first `failures` batches handed over
/// fail (retryably) without committing anything.
struct Recorder {
    writer: Client,
    committed: Arc<Mutex<Vec<String>>>,
    failures: usize,
}

impl BatchHandler for Recorder {
    async fn handle(&mut self, batch: &[StreamEntry]) -> Result<(), StageError> {
        if self.failures > 0 {
            self.failures -= 1;
            return Err(StageError::Retryable("the test fails this batch".into()));
        }
        let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
        consumer::queue_ack(&self.writer, STREAM, GROUP, &ids)
            .await
            .map_err(StageError::from)?;
        self.committed.lock().unwrap().extend(ids);
        Ok(())
    }
}

/// Runs the loop over `entries` preloaded entries in batches of `batch` (the first `failures`
/// failing), until the group is idle; returns the preloaded ids and the ids committed, in commit order.
async fn run_loop(entries: usize, batch: u64, failures: usize) -> (Vec<String>, Vec<String>) {
    let stack = Stack::new().await;
    let mut ids = Vec::new();
    for n in 0..entries {
        ids.push(stack.xadd(STREAM, &[("n", &n.to_string())]).await);
    }
    let url = stack.url();
    let settings = Settings::parse_from([
        "test",
        "--redis-url",
        &url,
        "--batch-size",
        &batch.to_string(),
        "--block-ms",
        "200",
        "--consumer-name",
        "test-consumer",
    ]);
    let spec = ConsumerSpec::new(STREAM, GROUP, DLQ, "test", &settings.consumer);
    let shutdown = CancellationToken::new();
    let reader = settings.redis.connect(&shutdown).await.expect("connect the reader");
    let committed = Arc::new(Mutex::new(Vec::new()));
    let mut handler = Recorder {
        writer: stack.client.clone(),
        committed: committed.clone(),
        failures,
    };
    let writer = stack.client.clone();
    let stop = shutdown.clone();
    let running = tokio::spawn(async move { consumer::run(&reader, &writer, &spec, &mut handler, &stop).await });
    let client = stack.client.clone();
    wait_for("every entry to be committed and the group idle", || async {
        committed.lock().unwrap().len() >= entries
            && group_backlog(&client, STREAM, GROUP)
                .await
                .ok()
                .flatten()
                .is_some_and(|b| b.is_idle())
    })
    .await;
    shutdown.cancel();
    running
        .await
        .expect("the loop task")
        .expect("the loop ends without error");
    let committed = committed.lock().unwrap().clone();
    (ids, committed)
}

#[tokio::test]
async fn batches_are_committed_once_each_in_stream_order() {
    let (ids, committed) = run_loop(21, 4, 0).await;
    assert_eq!(committed, ids, "each entry committed once, in stream order");
}

#[tokio::test]
async fn a_failed_batch_is_handed_over_again_before_the_entries_after_it() {
    // The first batch fails twice: the loop backs off, reads its pending entries again and
    // commits each entry once, in order.
    let (ids, committed) = run_loop(12, 4, 2).await;
    assert_eq!(
        committed, ids,
        "each entry committed once, in stream order, after the failure"
    );
}
