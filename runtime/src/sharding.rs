//! Every service of one pipeline must split the per-symbol streams the same way: a bridge
//! routing to two shards while the executors read one would leave half the plans unread. The
//! first service to start records its `STREAM_SHARDS` in [`STREAM_SHARDS_KEY`]; every later
//! one, of any service, must match it or refuses to start (a fatal error naming both counts).
//! Changing the count is an operator's step (drain, then rewrite the key; operations.md).

use std::time::Duration;

use fred::prelude::*;
use fred::types::SetOptions;
use tokio_util::sync::CancellationToken;

use crate::failure::StageError;
use quantum_model::contract::STREAM_SHARDS_KEY;
use quantum_model::shards::StreamShards;

/// Records `shards` as the pipeline's shard count, or checks it against the one recorded
/// (`SET NX GET`: one step, so two services starting together cannot record two counts).
/// Retries while Redis is unreachable.
///
/// # Errors
/// [`StageError::Fatal`]: the pipeline runs with another count, the key holds something that
/// is not a count, or a permission is missing. `Ok` also when `shutdown` fired meanwhile.
pub async fn agree(client: &Client, shards: StreamShards, shutdown: &CancellationToken) -> Result<(), StageError> {
    let mine = shards.count().to_string();
    let mut pause = Duration::from_millis(100);
    loop {
        let recorded: Result<Option<String>, Error> = client
            .set(STREAM_SHARDS_KEY, mine.as_str(), None, Some(SetOptions::NX), true)
            .await;
        match recorded.map_err(StageError::from) {
            Ok(None) => {
                tracing::info!("Stream shards: {mine} (recorded in {STREAM_SHARDS_KEY})");
                return Ok(());
            }
            Ok(Some(theirs)) => return check(shards, &theirs),
            Err(e @ StageError::Retryable(_)) => {
                tracing::warn!("Cannot read {STREAM_SHARDS_KEY} ({e}); retrying in {pause:?}");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(StageError::Fatal(format!(
                    "cannot record STREAM_SHARDS in {STREAM_SHARDS_KEY}: {e}"
                )))
            }
        }
    }
}

/// Whether `recorded` (the key's value) is the count this service runs with.
fn check(shards: StreamShards, recorded: &str) -> Result<(), StageError> {
    let count = shards.count();
    match recorded.parse::<u64>().map(StreamShards::new) {
        Ok(Ok(theirs)) if theirs == shards => {
            tracing::info!("Stream shards: {count} (as recorded in {STREAM_SHARDS_KEY})");
            Ok(())
        }
        Ok(Ok(theirs)) => Err(StageError::Fatal(format!(
            "STREAM_SHARDS={count}, but this pipeline runs with {} shards ({STREAM_SHARDS_KEY}): every \
             service must split the streams alike. Set STREAM_SHARDS={} here, or change the count for the \
             whole pipeline (docs/operations.md, \"Changing STREAM_SHARDS\")",
            theirs.count(),
            theirs.count()
        ))),
        _ => Err(StageError::Fatal(format!(
            "{STREAM_SHARDS_KEY} holds {recorded:?}, not a shard count from 1 to {}; set it to the \
             pipeline's STREAM_SHARDS",
            quantum_model::shards::MAX_SHARDS
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_count_must_match() {
        let two = StreamShards::new(2).unwrap();
        assert!(check(two, "2").is_ok());
        for (recorded, says) in [
            ("1", "runs with 1 shards"),
            ("3", "Set STREAM_SHARDS=3"),
            ("two", "not a shard count"),
            ("0", "not a shard count"),
        ] {
            match check(two, recorded) {
                Err(StageError::Fatal(e)) => assert!(e.contains(says), "{recorded}: {e}"),
                other => panic!("{recorded}: {other:?}"),
            }
        }
    }
}
