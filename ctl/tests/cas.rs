//! The compare-and-set write (`quantum_runtime::cas`) on a real redis-server: its writes, and
//! on one server the acknowledgement of the entries they came from, happen together or not at
//! all.

mod support;

use fred::prelude::*;
use fred::types::Value;

use quantum_runtime::cas::{CasOp, CasOutcome, CasWrite};
use support::Stack;

const STREAM: &str = "test:cas:stream";
const GROUP: &str = "test:cas:group";
const HASH: &str = "test:cas:hash";

/// One entry of `STREAM` read by a consumer of `GROUP`, so pending; its id.
async fn pending_entry(stack: &Stack) -> String {
    let id = stack.xadd(STREAM, &[("n", "1")]).await;
    let _: () = stack.client.xgroup_create(STREAM, GROUP, "0", false).await.unwrap();
    let _: Value = stack
        .client
        .xreadgroup(GROUP, "test", None, None, false, STREAM, ">")
        .await
        .unwrap();
    id
}

async fn pending(stack: &Stack) -> u64 {
    let summary: Value = stack.client.xpending(STREAM, GROUP, ()).await.unwrap();
    summary.into_array().first().and_then(Value::as_u64).unwrap_or(0)
}

fn write(expected_version: u64, id: &str) -> CasWrite {
    CasWrite {
        expected_version,
        guards: Vec::new(),
        writes: vec![
            (
                HASH.to_string(),
                CasOp::Hash(vec![("version".into(), (expected_version + 1).to_string())]),
            ),
            (
                STREAM.to_string(),
                CasOp::Acknowledge {
                    group: GROUP.to_string(),
                    ids: vec![id.to_string()],
                },
            ),
        ],
    }
}

#[tokio::test]
async fn a_write_acknowledges_its_entries_only_when_it_applies() {
    let stack = Stack::new().await;
    let id = pending_entry(&stack).await;

    // Computed from a version the hash no longer has: nothing written, nothing acknowledged.
    stack.hset(HASH, &[("version", "3")]).await;
    assert_eq!(
        write(2, &id).apply(&stack.client).await.unwrap(),
        CasOutcome::VersionConflict
    );
    assert_eq!(pending(&stack).await, 1, "still pending");
    assert_eq!(stack.hash(HASH).await["version"], "3");

    assert_eq!(write(3, &id).apply(&stack.client).await.unwrap(), CasOutcome::Applied);
    assert_eq!(pending(&stack).await, 0, "acknowledged with the write");
    assert_eq!(stack.hash(HASH).await["version"], "4");
}

#[tokio::test]
async fn a_stream_key_of_another_type_fails_the_write_with_nothing_written() {
    let stack = Stack::new().await;
    let _: () = stack
        .client
        .set(STREAM, "not a stream", None, None, false)
        .await
        .unwrap();
    let e = write(0, "1-0").apply(&stack.client).await.unwrap_err();
    assert!(e.to_string().contains("WRONGTYPE"), "{e}");
    assert!(stack.hash(HASH).await.is_empty(), "nothing written");
}
