//! Fuzz-style test: generated garbage (field soup, binary bytes, oversized values, non-finite
//! numbers, broken JSON, unexpected types) on every stream the services read. Nothing crashes,
//! every entry is acknowledged, and every entry is accounted for (result, DLQ, skip or dedup).

mod support;

use fred::prelude::*;
use fred::types::Value;

use quantum_model::contract::*;
use quantumctl::stack::Service;
use support::Stack;

/// A small deterministic generator (xorshift64*), so a failure reproduces exactly.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }

    fn value(&mut self) -> Value {
        match self.next() % 12 {
            0 => Value::Bytes(
                (0..(self.next() % 40))
                    .map(|_| self.next() as u8)
                    .collect::<Vec<u8>>()
                    .into(),
            ),
            1 => Value::from("x".repeat(17_000 + (self.next() % 5_000) as usize)),
            2 => Value::from(self.pick(&[
                "NaN",
                "inf",
                "-inf",
                "1e400",
                "-0",
                "0",
                "1e-30",
                "99999999999999999999999999999999",
            ])),
            3 => Value::from(self.pick(&["{", "[]", "{\"symbol\":[1]}", "null", "{\"qty\":{}}", "\"str\""])),
            4 => Value::from(self.pick(&[
                "BUY", "SELL", "buy", "hold", "", " ", "EXECUTE", "BLOCKED", "true", "maybe",
            ])),
            5 => Value::from(self.pick(&["BTCUSDT", "ethusdt", "ZECUSDT", "BTC/USDT", "", "🚀", "A"])),
            6 => Value::from(format!("{}", self.next() % 1000)),
            7 => Value::from(format!("{}.{}", self.next() % 100, self.next() % 1000)),
            8 => Value::from(format!("-{}", self.next() % 100)),
            9 => Value::from("0123456789abcdef"),
            10 => Value::from(r#"{"symbol":"BTCUSDT","side":"BUY","qty":"0.01"}"#),
            _ => Value::from(format!("{:x}", self.next())),
        }
    }

    fn entry(&mut self, names: &[&str]) -> Vec<(String, Value)> {
        let n = 1 + self.next() % (names.len() as u64 + 3);
        (0..n)
            .map(|_| {
                let name = if self.next() % 6 == 0 {
                    format!("f{}", self.next() % 50)
                } else {
                    self.pick(names).to_string()
                };
                (name, self.value())
            })
            .collect()
    }
}

const INTENT_FIELDS: &[&str] = &[
    "symbol",
    "side",
    "action",
    "qty",
    "quantity",
    "size",
    "price",
    "position_usd",
    "position_size_usd",
    "entry_price",
    "leverage",
    "type",
    "reduceOnly",
    "stop_loss",
    "take_profit",
    "payload",
];
const PLAN_FIELDS: &[&str] = &[
    "plan_id",
    "decision",
    "symbol",
    "side",
    "type",
    "qty",
    "price",
    "reduceOnly",
    "leverage",
    "stop_loss",
    "take_profit",
    "reason",
];
const FILL_FIELDS: &[&str] = &[
    "fill_id", "order_id", "plan_id", "symbol", "side", "qty", "price", "fee", "leverage", "ts",
];

const PER_STREAM: usize = 300;

fn stat(log: &str, prefix: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line"));
    let value = line
        .split(&format!("{name}="))
        .nth(1)
        .unwrap_or_else(|| panic!("no {name} in {line}"));
    value
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn generated_garbage_on_every_stream_is_handled_as_bad_input() {
    let mut stack = Stack::new().await;
    for s in [Service::Bridge, Service::Executor, Service::Ledger] {
        stack.start(
            s,
            &[
                ("SYMBOL_ALLOWLIST", "BTCUSDT,ETHUSDT,ZECUSDT"),
                ("STREAM_BATCH_SIZE", "37"),
            ],
        );
    }
    let mut gen = Gen(0x9E37_79B9_7F4A_7C15);
    for (stream, names) in [
        (INTENT_STREAM, INTENT_FIELDS),
        (PLAN_STREAM, PLAN_FIELDS),
        (LEDGER_COMMIT_STREAM, FILL_FIELDS),
    ] {
        let pipeline = stack.client.pipeline();
        for _ in 0..PER_STREAM {
            pipeline
                .xadd::<(), _, _, _, _>(stream, false, None, "*", gen.entry(names))
                .await
                .unwrap();
        }
        let _: Vec<Value> = pipeline.all().await.unwrap();
    }
    stack.wait_group_idle(INTENT_STREAM, INTENT_GROUP).await;
    stack.wait_group_idle(PLAN_STREAM, PLAN_GROUP).await;
    stack.wait_group_idle(LEDGER_COMMIT_STREAM, LEDGER_GROUP).await;

    for s in [Service::Bridge, Service::Executor, Service::Ledger] {
        assert_eq!(stack.process(s).exited(), None, "{} is still running", s.binary());
        assert!(stack.stop(s), "{} exits cleanly", s.binary());
        assert!(!stack.log(s).contains("panicked"), "{} panicked", s.binary());
    }

    // Bridge: every intent consumed; malformed ones are in the DLQ with a reason.
    let bridge = stack.log(Service::Bridge);
    assert_eq!(stat(&bridge, "Intent Bridge stopped", "consumed"), PER_STREAM as u64);
    let dlq = stack.entries(INTENT_DLQ_STREAM).await;
    assert_eq!(dlq.len() as u64, stat(&bridge, "Intent Bridge stopped", "malformed"));
    assert!(
        dlq.len() > PER_STREAM / 2,
        "most garbage is malformed ({} of {PER_STREAM})",
        dlq.len()
    );
    assert!(dlq
        .iter()
        .all(|e| !e.get("reason").unwrap_or_default().is_empty() && e.get("source_id").is_some()));
    assert!(dlq.iter().any(|e| e.get("reason") == Some("oversized_or_binary")));

    // Executor: every plan it read ends as exactly one result, or was a duplicate of one.
    let executor = stack.log(Service::Executor);
    let accounted: u64 = ["filled", "rejected", "not_executed", "duplicates", "malformed"]
        .iter()
        .map(|k| stat(&executor, "Intent Executor stopped", k))
        .sum();
    // Plans published by the bridge from valid intents are in the stream too.
    let plans = stack.xlen(PLAN_STREAM).await;
    assert_eq!(accounted, plans);
    let results = stack.xlen(RESULT_STREAM).await;
    assert_eq!(
        results,
        plans - stat(&executor, "Intent Executor stopped", "duplicates")
    );

    // Ledger: every fill applied, deduplicated or dead-lettered.
    let ledger = stack.log(Service::Ledger);
    let fills = stack.xlen(LEDGER_COMMIT_STREAM).await;
    let ledger_accounted: u64 = ["applied", "duplicates", "malformed"]
        .iter()
        .map(|k| stat(&ledger, "Quantum Ledger stopped", k))
        .sum();
    assert_eq!(ledger_accounted, fills);
    assert_eq!(
        stack.xlen(LEDGER_COMMIT_DLQ_STREAM).await,
        stat(&ledger, "Quantum Ledger stopped", "malformed")
    );
}
