//! Redis ACLs enforce who may write what: the whole pipeline runs under deploy/redis/users.acl
//! with one user per service, the denials are proven, bad credentials fail fast, and no secret
//! ever reaches a log.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::Value;
use rust_decimal::Decimal;

use quantum_model::contract::{PLAN_STREAM, RESULT_STREAM};
use quantum_model::types::{Side, Symbol};
use quantum_runtime::config::RedisArgs;
use quantumctl::pipeline_facts::wait_idle;
use quantumctl::redis_server::RedisServer;
use quantumctl::sim::{intent_fields, publish, write_proposals, Format, ProposalKind, DEMO_SYMBOLS};
use quantumctl::stack::Service;
use support::{assert_exactly_once, Stack, TIMEOUT};

const BRIDGE_PW: &str = "quantum-bridge-dev-password";
const EXECUTOR_PW: &str = "quantum-executor-dev-password";
const LEDGER_PW: &str = "quantum-ledger-dev-password";
const OPS_PW: &str = "quantum-ops-dev-password";
const KERNEL_PW: &str = "quantum-kernel-dev-password";

fn acl_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/redis/users.acl")
}

fn url_as(redis: &RedisServer, user: &str, password: &str) -> String {
    format!("redis://{user}:{password}@127.0.0.1:{}/0", redis.port())
}

async fn acl_stack() -> Stack {
    let acl = acl_file();
    let redis = RedisServer::start_with(&["--aclfile", acl.to_str().unwrap()]).expect("redis with ACL file");
    let ops = url_as(&redis, "quantum-ops", OPS_PW);
    Stack::with_redis_as(redis, &ops).await
}

async fn client_as(stack: &Stack, user: &str, password: &str) -> Client {
    RedisArgs::from_url(&url_as(stack.redis(), user, password))
        .connect(&tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
}

fn start_services(stack: &mut Stack) {
    // Three ways to pass credentials: variables, a password file, and the URL.
    let pw_file = stack.dir.path().join("executor-redis-password");
    std::fs::write(&pw_file, format!("{EXECUTOR_PW}\n")).unwrap();
    let allow = DEMO_SYMBOLS.join(",");
    stack.start(
        Service::Bridge,
        &[
            ("REDIS_USERNAME", "quantum-bridge"),
            ("REDIS_PASSWORD", BRIDGE_PW),
            ("SYMBOL_ALLOWLIST", allow.as_str()),
        ],
    );
    stack.start(
        Service::Executor,
        &[
            ("REDIS_USERNAME", "quantum-executor"),
            ("REDIS_PASSWORD_FILE", pw_file.to_str().unwrap()),
        ],
    );
    let ledger_url = url_as(stack.redis(), "quantum-ledger", LEDGER_PW);
    stack.start(
        Service::Ledger,
        &[
            ("REDIS_URL", ledger_url.as_str()),
            ("LEDGER_RECONCILE_INTERVAL_MS", "200"),
        ],
    );
}

#[tokio::test]
async fn the_pipeline_runs_under_least_privilege_acls() {
    let mut stack = acl_stack().await;
    start_services(&mut stack);
    for s in [Service::Bridge, Service::Executor, Service::Ledger] {
        stack.wait_log(s, "Consumer ready").await;
    }
    let intents = support::demo_buys(110);
    // The risk kernel publishes proposals under its own user; the bridge reads them and records
    // the governor's history under its own.
    let kernel = client_as(&stack, "quantum-kernel", KERNEL_PW).await;
    let symbols: Vec<Symbol> = DEMO_SYMBOLS.iter().map(|s| Symbol::parse(s).unwrap()).collect();
    write_proposals(&kernel, &symbols, ProposalKind::Production)
        .await
        .unwrap();
    let ids = publish(&stack.client, &intents, 0).await.unwrap();
    assert!(wait_idle(&stack.client, TIMEOUT).await.unwrap());
    assert_exactly_once(&stack, &ids).await;
    // A BLOCKED plan (as another publisher would write it) is answered under the executor's user.
    let bridge = client_as(&stack, "quantum-bridge", BRIDGE_PW).await;
    let _: String = bridge
        .xadd(
            PLAN_STREAM,
            false,
            None,
            "*",
            vec![
                ("plan_id", "00000000000000bb"),
                ("decision", "BLOCKED"),
                ("symbol", "BTCUSDT"),
                ("side", "BUY"),
                ("qty", "1"),
                ("reason", "kill_score_critical"),
            ],
        )
        .await
        .unwrap();
    assert!(wait_idle(&stack.client, TIMEOUT).await.unwrap());
    let blocked = stack
        .entries(RESULT_STREAM)
        .await
        .into_iter()
        .filter(|r| r.get("plan_id") == Some("00000000000000bb"))
        .count();
    assert_eq!(blocked, 1, "the BLOCKED plan is answered once");
    let recorded: u64 = stack
        .client
        .zcard("{quantum:harvest:proposal:BTCUSDT}:kill_history")
        .await
        .unwrap();
    assert_eq!(recorded, 1, "the bridge recorded the proposal's sample");
    // Operators explain the pipeline with the read-only quantum-ops user.
    let ops = url_as(stack.redis(), "quantum-ops", OPS_PW);
    let (code, why) = support::quantumctl(&["why", "BTCUSDT"], Some(&ops));
    assert_eq!(code, 0, "{why}");
    assert!(why.contains("\nBTCUSDT: trading ("), "{why}");
    assert!(why.contains("governor: mode=separated; kill_score 0.7563"), "{why}");
    let (code, intent) = support::quantumctl(&["why", "--intent", &ids[0]], Some(&ops));
    assert_eq!(code, 0, "{intent}");
    assert!(intent.contains("done: filled"), "{intent}");
    let (code, checked) = support::quantumctl(&["check", "--wait", "30"], Some(&ops));
    assert_eq!(code, 0, "{checked}");
    assert_eq!(checked.matches("PASS").count(), 6, "{checked}");
    let (code, status) = support::quantumctl(&["status", "--json"], Some(&ops));
    assert_eq!(code, 0, "{status}");
    assert!(status.contains("\"published\":110"), "{status}");
    // The reconcile loop ran under the ledger's user without a permission error.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for s in [Service::Bridge, Service::Executor, Service::Ledger] {
        let log = stack.log(s);
        assert!(!log.contains("NOPERM"), "{} hit a permission error:\n{log}", s.binary());
        for secret in [BRIDGE_PW, EXECUTOR_PW, LEDGER_PW, OPS_PW] {
            assert!(!log.contains(secret), "{} logged a password", s.binary());
        }
    }
    assert!(stack
        .log(Service::Ledger)
        .contains("redis://quantum-ledger:***@127.0.0.1"));
}

async fn denied(client: &Client, cmd: &str, args: Vec<&str>) -> String {
    let args: Vec<Value> = args.into_iter().map(Value::from).collect();
    let reply: Result<Value, Error> = client
        .custom(
            fred::types::CustomCommand::new(cmd.to_string(), fred::types::ClusterHash::FirstKey, false),
            args,
        )
        .await;
    match reply {
        Ok(v) => panic!("{cmd} was allowed: {v:?}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn acls_deny_writes_outside_each_service_s_role() {
    let stack = acl_stack().await;
    let ledger_key = "quantum:position:ledger:BTCUSDT";
    let bridge = client_as(&stack, "quantum-bridge", BRIDGE_PW).await;
    let executor = client_as(&stack, "quantum-executor", EXECUTOR_PW).await;
    let ledger = client_as(&stack, "quantum-ledger", LEDGER_PW).await;

    assert!(denied(&bridge, "HSET", vec![ledger_key, "position_amt", "1"])
        .await
        .contains("NOPERM"));
    assert!(
        denied(&bridge, "XADD", vec!["quantum:stream:ledger.commit", "*", "f", "v"])
            .await
            .contains("NOPERM")
    );
    // The executor may HSET its own keys but not a ledger.
    let _: Value = executor.hset("quantum:order:qib-x", ("state", "NEW")).await.unwrap();
    assert!(denied(&executor, "HSET", vec![ledger_key, "position_amt", "1"])
        .await
        .contains("NOPERM"));
    assert!(denied(&executor, "DEL", vec![ledger_key]).await.contains("NOPERM"));
    // Even through a script, the executor cannot touch a ledger.
    let script = "return redis.call('HSET', KEYS[1], 'position_amt', '1')";
    assert!(denied(&executor, "EVAL", vec![script, "1", ledger_key])
        .await
        .contains("NOPERM"));
    // The ledger may write ledgers but not plans or snapshots.
    let _: Value = ledger.hset(ledger_key, ("position_amt", "1")).await.unwrap();
    assert!(
        denied(&ledger, "XADD", vec!["quantum:stream:apply.plan", "*", "f", "v"])
            .await
            .contains("NOPERM")
    );
    assert!(denied(
        &ledger,
        "HSET",
        vec!["quantum:position:snapshot:BTCUSDT", "position_amt", "1"]
    )
    .await
    .contains("NOPERM"));
    // Operators read everything and may only publish intents.
    let _: Value = stack.client.hgetall(ledger_key).await.unwrap();
    assert!(denied(&stack.client, "HSET", vec![ledger_key, "position_amt", "2"])
        .await
        .contains("NOPERM"));
    assert!(denied(&stack.client, "FLUSHALL", vec![]).await.contains("NOPERM"));

    // The default user is off.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", stack.redis().port())).unwrap();
    use std::io::{Read, Write};
    raw.write_all(b"GET x\r\n").unwrap();
    let mut buf = [0u8; 64];
    let n = raw.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("-NOAUTH"));
}

#[tokio::test]
async fn wrong_credentials_fail_fast_with_a_clear_message() {
    let mut stack = acl_stack().await;
    for (service, user) in [(Service::Bridge, "quantum-bridge"), (Service::Ledger, "quantum-ledger")] {
        stack.start(
            service,
            &[("REDIS_USERNAME", user), ("REDIS_PASSWORD", "not-the-password-123")],
        );
    }
    stack.start(Service::Executor, &[]); // no credentials at all: the default user is off
    let started = Instant::now();
    for service in [Service::Bridge, Service::Ledger, Service::Executor] {
        let proc = stack.process(service);
        support::wait_for(&format!("{} to exit", service.binary()), || {
            let code = proc.exited();
            async move { code == Some(Some(1)) }
        })
        .await;
        let log = stack.log(service);
        assert!(log.contains("refused our credentials"), "{log}");
        assert!(
            !log.contains("not-the-password-123"),
            "{} logged the password",
            service.binary()
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "fails fast, does not retry forever"
    );
}

/// A CA and a server certificate for 127.0.0.1, made with openssl.
fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=quantum-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

#[tokio::test]
async fn the_pipeline_runs_over_tls_when_configured() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = |f: &str| certs.path().join(f).to_str().unwrap().to_string();
    let (cert, key, ca, port) = (
        path("server.crt"),
        path("server.key"),
        path("ca.crt"),
        tls_port.to_string(),
    );
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ])
    .expect("redis-server with TLS");
    let mut stack = Stack::with_redis(redis).await;
    let tls_url = format!("rediss://127.0.0.1:{tls_port}/0");
    for s in [Service::Bridge, Service::Executor, Service::Ledger] {
        stack.start(
            s,
            &[
                ("REDIS_URL", tls_url.as_str()),
                ("REDIS_TLS_CA_FILE", ca.as_str()),
                ("SYMBOL_ALLOWLIST", "BTCUSDT,ETHUSDT"),
            ],
        );
    }
    for s in [Service::Bridge, Service::Executor, Service::Ledger] {
        stack.wait_log(s, "Consumer ready").await;
    }
    let intents: Vec<_> = (0..20)
        .map(|i| {
            let symbol = Symbol::parse(["BTCUSDT", "ETHUSDT"][i % 2]).unwrap();
            intent_fields(&symbol, Side::Buy, Decimal::from(100), Format::Flat, i)
        })
        .collect();
    publish(&stack.client, &intents, 0).await.unwrap();
    assert!(wait_idle(&stack.client, TIMEOUT).await.unwrap());
    assert_eq!(stack.xlen("quantum:stream:ledger.commit").await, 20);
    // The services only knew the TLS port, which speaks nothing but TLS: the whole pipeline ran over it.

    // Without the private CA the certificate is refused, with a clear error.
    stack.start(
        Service::Bridge,
        &[("REDIS_URL", tls_url.as_str()), ("STREAM_BLOCK_MS", "200")],
    );
    stack
        .wait_log(Service::Bridge, "the server's certificate is not trusted")
        .await;
    let proc = stack.process(Service::Bridge);
    support::wait_for("the bridge to exit", || {
        let code = proc.exited();
        async move { code == Some(Some(1)) }
    })
    .await;
    // A CA file with a plain redis:// URL is a configuration error.
    let plain = stack.url();
    stack.start(
        Service::Ledger,
        &[("REDIS_URL", plain.as_str()), ("REDIS_TLS_CA_FILE", ca.as_str())],
    );
    stack
        .wait_log(Service::Ledger, "REDIS_TLS_CA_FILE is set but the URL is not rediss://")
        .await;
}
