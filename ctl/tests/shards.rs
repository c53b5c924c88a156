//! `STREAM_SHARDS`: apply.plan, apply.result and ledger.commit split by symbol. Each symbol's
//! plans, results and fills stay on one shard, the executor and the ledger read every shard,
//! the operator's tools add the shards up, and a service started with another count than the
//! pipeline's refuses to start.

mod support;

use quantum_model::contract::*;
use quantum_model::shards::{StreamShards, SHARDED_STREAMS};
use quantum_model::types::Symbol;
use quantumctl::pipeline_facts::wait_idle;
use quantumctl::sim::{publish, DEMO_SYMBOLS};
use quantumctl::stack::Service;
use support::{wait_for, Stack, TIMEOUT};

#[tokio::test]
async fn two_shards_keep_each_symbol_on_its_shard_and_the_whole_loop_runs_on_both() {
    let mut stack = Stack::new().await;
    let allow = DEMO_SYMBOLS.join(",");
    let env = [
        ("SYMBOL_ALLOWLIST", allow.as_str()),
        ("MAX_EXPOSURE_PCT", "1000000"),
        ("STREAM_SHARDS", "2"),
    ];
    for service in [Service::Ledger, Service::Executor, Service::Bridge] {
        stack.start(service, &env);
    }
    stack
        .wait_logs(
            Service::Executor,
            &[
                "Consumer ready: stream=quantum:stream:apply.plan group=",
                "Consumer ready: stream=quantum:stream:apply.plan:1 group=",
            ],
        )
        .await;
    stack
        .wait_logs(
            Service::Ledger,
            &[
                "Consumer ready: stream=quantum:stream:ledger.commit group=",
                "Consumer ready: stream=quantum:stream:ledger.commit:1 group=",
            ],
        )
        .await;
    stack
        .wait_log(
            Service::Bridge,
            "Plan stream: quantum:stream:apply.plan (STREAM_SHARDS=2, by symbol: quantum:stream:apply.plan, quantum:stream:apply.plan:1)",
        )
        .await;

    let intents = support::demo_buys(60);
    let ids = publish(&stack.client, &intents, 0).await.unwrap();
    assert!(wait_idle(&stack.client, TIMEOUT).await.unwrap());

    // Each shard of each stream holds entries, and only those of its own symbols.
    let shards = StreamShards::new(2).unwrap();
    for stream in SHARDED_STREAMS {
        for (index, shard) in shards.names(stream).iter().enumerate() {
            let entries = stack.entries(shard).await;
            assert!(!entries.is_empty(), "{shard} is empty");
            for e in &entries {
                let symbol = Symbol::parse(e.get("symbol").unwrap()).unwrap();
                assert_eq!(usize::from(shards.of(&symbol)), index, "{symbol} on {shard}");
            }
        }
    }
    let plans = stack.xlen(PLAN_STREAM).await + stack.xlen("quantum:stream:apply.plan:1").await;
    assert_eq!(plans, ids.len() as u64, "one plan per intent over both shards");
    let checked = quantumctl::invariants::check(&stack.client, None).await.unwrap();
    assert!(checked.passed(), "{}", checked.render());
    assert!(checked.fills > 0, "{}", checked.render());

    // The operator's view adds the shards up.
    let (code, status) = support::quantumctl(&["status", "--json"], Some(&stack.url()));
    assert_eq!(code, 0, "{status}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["stream_shards"], 2);
    assert_eq!(status["streams"][PLAN_STREAM], plans);
    let (code, text) = support::quantumctl(&["status"], Some(&stack.url()));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("STREAM_SHARDS=2: apply.plan, apply.result and ledger.commit are split by symbol"));
    assert!(text.contains("\nBY SHARD "), "{text}");
    for shard in [
        "quantum:stream:apply.plan ",
        "quantum:stream:apply.plan:1 ",
        "quantum:stream:ledger.commit:1 ",
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains(shard) && l.trim_end().ends_with(" 0        0")),
            "{shard}: {text}"
        );
    }
    assert_eq!(status["shard_groups"].as_array().map(Vec::len), Some(5), "{status}");
    // An intent of a symbol on shard 1 is followed to its fill there.
    let on_shard_one = ids
        .iter()
        .zip(&intents)
        .find(|(_, fields)| {
            let symbol = fields.iter().find(|(k, _)| k == "symbol").map(|(_, v)| v.as_str());
            symbol
                .and_then(|s| Symbol::parse(s).ok())
                .is_some_and(|s| shards.of(&s) == 1)
        })
        .map(|(id, _)| id.clone())
        .expect("an intent of a shard-1 symbol");
    let (code, why) = support::quantumctl(&["why", "--intent", &on_shard_one], Some(&stack.url()));
    assert_eq!(code, 0, "{why}");
    assert!(why.contains("done: filled"), "{why}");

    // The proof script reads every shard: all the symbols together are more than either
    // shard holds alone.
    let min_symbols = DEMO_SYMBOLS.len().to_string();
    let out = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../proofs/proof_intent_bridge_ledger_gate.sh"
        ))
        .args(["--min-symbols", &min_symbols, "--log-file"])
        .arg(stack.log_path(Service::Bridge))
        .env("REDIS_URL", stack.url())
        .output()
        .expect("run the proof script");
    let proof = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{proof}");
    assert!(
        proof.contains("plans: last 200 of each of the 2 shards of quantum:stream:apply.plan (STREAM_SHARDS=2)"),
        "{proof}"
    );
    assert!(
        proof.contains(&format!("{min_symbols} symbols in the last 200 plans")),
        "{proof}"
    );

    // Metrics carry the shard; readiness covers every shard.
    let port = support::port_of(&stack, Service::Executor);
    wait_for("the executor's shard-1 counter", || async {
        support::get(port, "/metrics")
            .1
            .contains(r#"quantum_consumer_entries_total{stream="quantum:stream:apply.plan",shard="1"}"#)
    })
    .await;
    let (code, ready) = support::get(port, "/readyz");
    assert_eq!(code, 200, "{ready}");
    assert!(
        ready.contains("ready: group intent_executor on quantum:stream:apply.plan\n")
            && ready.contains("ready: group intent_executor on quantum:stream:apply.plan:1\n"),
        "{ready}"
    );
    let recorded: Option<String> = fred::prelude::KeysInterface::get(&stack.client, STREAM_SHARDS_KEY)
        .await
        .unwrap();
    assert_eq!(recorded.as_deref(), Some("2"));
}

#[tokio::test]
async fn a_service_with_another_shard_count_than_the_pipeline_refuses_to_start() {
    let mut stack = Stack::new().await;
    stack.start(Service::Ledger, &[("STREAM_SHARDS", "2")]);
    stack
        .wait_log(
            Service::Ledger,
            "Stream shards: 2 (recorded in quantum:config:stream_shards)",
        )
        .await;
    for service in [Service::Executor, Service::Bridge] {
        stack.start(service, &[]);
        let proc = stack.process(service);
        wait_for("the service to exit", || {
            let exited = proc.exited().is_some();
            async move { exited }
        })
        .await;
        assert_eq!(stack.process(service).exited(), Some(Some(1)));
        let log = stack.log(service);
        assert!(
            log.contains(
                "STREAM_SHARDS=1, but this pipeline runs with 2 shards (quantum:config:stream_shards): every service must split the streams alike"
            ),
            "{log}"
        );
    }
    // A count out of range is refused by the flag itself.
    stack.start(Service::Executor, &[("STREAM_SHARDS", "0")]);
    let proc = stack.process(Service::Executor);
    wait_for("the executor to exit", || {
        let code = proc.exited();
        async move { code == Some(Some(2)) }
    })
    .await;
    assert!(stack
        .log(Service::Executor)
        .contains("STREAM_SHARDS must be between 1 and 64, got 0"));
}

/// Entry ids are unique only within a stream: two shards' poison with one id is dead-lettered
/// twice (once per shard), each naming its source stream, never taken for a repeat.
#[tokio::test]
async fn poison_of_two_shards_with_one_entry_id_is_dead_lettered_once_each() {
    let mut stack = Stack::new().await;
    let shard_one = "quantum:stream:ledger.commit:1";
    for stream in [LEDGER_COMMIT_STREAM, shard_one] {
        let _: String = fred::prelude::StreamsInterface::xadd(
            &stack.client,
            stream,
            false,
            None,
            "1-1",
            vec![("fill_id", "f-1"), ("symbol", "BTCUSDT"), ("qty", "not-a-number")],
        )
        .await
        .unwrap();
    }
    stack.start(Service::Ledger, &[("STREAM_SHARDS", "2")]);
    wait_for("both malformed fills in the DLQ", || async {
        stack.xlen(LEDGER_COMMIT_DLQ_STREAM).await >= 2
    })
    .await;
    let letters = stack.entries(LEDGER_COMMIT_DLQ_STREAM).await;
    let mut sources: Vec<(&str, &str)> = letters
        .iter()
        .map(|e| (e.get("source_stream").unwrap_or("-"), e.get("source_id").unwrap_or("-")))
        .collect();
    sources.sort();
    assert_eq!(sources, [(LEDGER_COMMIT_STREAM, "1-1"), (shard_one, "1-1")]);
}
