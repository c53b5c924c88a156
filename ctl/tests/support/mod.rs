//! Test harness: a real redis-server per test on a free loopback port, the real service
//! binaries as child processes, and waits on conditions with timeouts (no sleeps-and-hope).
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::Value;

use quantum_model::stream_entry::StreamEntry;
use quantum_runtime::config::RedisArgs;
use quantum_runtime::consumer::group_backlog;
use quantumctl::redis_server::{RedisCluster, RedisServer};
use std::collections::HashSet;

use quantum_model::contract::*;
use quantumctl::pipeline_facts::{entries_after, exactly_once_problems};
use quantumctl::sim::DEMO_SYMBOLS;
use quantumctl::stack::{base_env, Service, ServiceProcess};

pub const TIMEOUT: Duration = Duration::from_secs(90);

/// What a stack's services talk to.
pub enum Backend {
    Server(RedisServer),
    Cluster(RedisCluster),
}

pub struct Stack {
    backend: Backend,
    pub client: Client,
    pub dir: tempfile::TempDir,
    pub env: HashMap<String, String>,
    procs: HashMap<Service, ServiceProcess>,
    /// Further instances of the services (`start_replica`), beside the one in `procs`.
    replicas: Vec<ServiceProcess>,
}

impl Stack {
    pub async fn new() -> Self {
        Self::with_redis(RedisServer::start().expect("start redis-server")).await
    }

    /// A stack on `redis` whose account equity is already published, as a running paper
    /// executor would have left it (the bridge refuses BUYs while it is unknown, and tests that
    /// start the bridge before the executor would otherwise race the executor's first write).
    pub async fn with_redis(redis: RedisServer) -> Self {
        let url = redis.url();
        let stack = Self::with_redis_as(redis, &url).await;
        stack.hset(PORTFOLIO_KEY, &[("equity_usd", "100000")]).await;
        stack
    }

    /// A stack whose test client connects with `client_url` (e.g. with ACL credentials); the
    /// services get the plain URL and their own credentials through `env`.
    pub async fn with_redis_as(redis: RedisServer, client_url: &str) -> Self {
        let url = redis.url();
        Self::on(Backend::Server(redis), &url, client_url).await
    }

    /// A stack on a Redis Cluster (every service and the test client given its URL), with the
    /// account equity published.
    pub async fn on_cluster(cluster: RedisCluster) -> Self {
        let url = cluster.url();
        let stack = Self::on(Backend::Cluster(cluster), &url, &url).await;
        stack.hset(PORTFOLIO_KEY, &[("equity_usd", "100000")]).await;
        stack
    }

    async fn on(backend: Backend, service_url: &str, client_url: &str) -> Self {
        let client = RedisArgs::from_url(client_url)
            .connect(&tokio_util::sync::CancellationToken::new())
            .await
            .expect("connect to test redis");
        let env = base_env(service_url);
        Self {
            backend,
            client,
            dir: tempfile::tempdir().expect("temp dir"),
            env,
            procs: HashMap::new(),
            replicas: Vec::new(),
        }
    }

    /// The one Redis server of a stack that is not on a cluster.
    pub fn redis(&self) -> &RedisServer {
        match &self.backend {
            Backend::Server(redis) => redis,
            Backend::Cluster(_) => panic!("this stack runs on a cluster, not one server"),
        }
    }

    pub fn redis_mut(&mut self) -> &mut RedisServer {
        match &mut self.backend {
            Backend::Server(redis) => redis,
            Backend::Cluster(_) => panic!("this stack runs on a cluster, not one server"),
        }
    }

    /// The cluster of a stack started with [`Stack::on_cluster`].
    pub fn cluster_mut(&mut self) -> &mut RedisCluster {
        match &mut self.backend {
            Backend::Cluster(cluster) => cluster,
            Backend::Server(_) => panic!("this stack runs on one server"),
        }
    }

    /// The URL the services are given.
    pub fn url(&self) -> String {
        match &self.backend {
            Backend::Server(redis) => redis.url(),
            Backend::Cluster(cluster) => cluster.url(),
        }
    }

    pub fn log_path(&self, service: Service) -> std::path::PathBuf {
        self.dir.path().join(format!("{}.log", service.binary()))
    }

    /// Starts a service with the stack's env plus `extra`.
    pub fn start(&mut self, service: Service, extra: &[(&str, &str)]) {
        let mut env = self.env.clone();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let proc = ServiceProcess::start(service, &env, &self.log_path(service)).expect("start service");
        self.procs.insert(service, proc);
    }

    /// Starts `service` with `extra` and a crash or pause point armed (`FAILPOINTS`, the
    /// services' `failpoints` feature), e.g. `bridge::before_commit=1*sleep(2000)`.
    pub fn start_with_failpoint(&mut self, service: Service, extra: &[(&str, &str)], failpoint: &str) {
        let mut env: Vec<(&str, &str)> = extra.to_vec();
        env.push(("FAILPOINTS", failpoint));
        self.start(service, &env);
    }

    /// Waits until one consumer of `group` holds exactly one entry of `stream` (it has read it
    /// and not acknowledged it yet).
    pub async fn wait_held(&self, stream: &str, group: &str, what: &str) {
        wait_for(what, || async {
            consumers(self, stream, group)
                .await
                .iter()
                .any(|(_, pending)| *pending == 1)
        })
        .await;
    }

    /// Waits until the executor's open-order index holds `n` orders.
    pub async fn wait_open_orders(&self, n: u64, what: &str) {
        wait_for(what, || async {
            self.client.zcard::<u64, _>(OPEN_ORDERS_KEY).await.unwrap() == n
        })
        .await;
    }

    /// Starts one more instance of `service` (its own process and log); returns its index.
    pub fn start_replica(&mut self, service: Service, extra: &[(&str, &str)]) -> usize {
        let mut env = self.env.clone();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let index = self.replicas.len();
        let log = self.dir.path().join(format!("{}-replica{index}.log", service.binary()));
        let proc = ServiceProcess::start(service, &env, &log).expect("start replica");
        self.replicas.push(proc);
        index
    }

    /// The log of replica `index`.
    pub fn replica_log(&self, index: usize) -> String {
        self.replicas[index].log_text()
    }

    /// SIGTERM and wait; returns whether it exited cleanly with status 0.
    pub fn stop(&mut self, service: Service) -> bool {
        self.procs
            .remove(&service)
            .map(|p| p.stop(Duration::from_secs(20)))
            .unwrap_or(false)
    }

    /// SIGKILL.
    pub fn kill(&mut self, service: Service) {
        if let Some(p) = self.procs.remove(&service) {
            p.kill();
        }
    }

    pub fn process(&mut self, service: Service) -> &mut ServiceProcess {
        self.procs.get_mut(&service).expect("service running")
    }

    pub fn log(&self, service: Service) -> String {
        std::fs::read_to_string(self.log_path(service)).unwrap_or_default()
    }

    pub async fn entries(&self, stream: &str) -> Vec<StreamEntry> {
        entries_after(&self.client, stream, "-").await.expect("read stream")
    }

    pub async fn xadd(&self, stream: &str, fields: &[(&str, &str)]) -> String {
        let pairs: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.client
            .xadd::<String, _, _, _, _>(stream, false, None, "*", pairs)
            .await
            .expect("xadd")
    }

    pub async fn hash(&self, key: &str) -> HashMap<String, String> {
        let v: Value = self.client.hgetall(key).await.expect("hgetall");
        quantum_runtime::reply::hash_pairs(v).into_iter().collect()
    }

    pub async fn hset(&self, key: &str, fields: &[(&str, &str)]) {
        let pairs: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.client.hset::<(), _, _>(key, pairs).await.expect("hset");
    }

    pub async fn xlen(&self, stream: &str) -> u64 {
        self.client.xlen(stream).await.expect("xlen")
    }

    /// Waits until `group` on `stream` has consumed and acknowledged everything.
    pub async fn wait_group_idle(&self, stream: &str, group: &str) {
        let client = self.client.clone();
        wait_for(&format!("{group} idle on {stream}"), || {
            let client = client.clone();
            async move { matches!(group_backlog(&client, stream, group).await, Ok(Some(b)) if b.is_idle()) }
        })
        .await;
    }

    /// Starts a replica of the stack's Redis and waits until the master counts it in sync.
    pub async fn start_redis_replica(&self) -> RedisServer {
        let port = self.redis().port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).expect("start the replica");
        let field = |info: &str, name: &str| {
            info.lines()
                .filter_map(|l| l.trim().split_once(':'))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
                .unwrap_or_default()
        };
        wait_for("the replica to be in sync", || async {
            let info: String = self
                .client
                .info(Some(fred::types::InfoKind::Replication))
                .await
                .unwrap_or_default();
            field(&info, "connected_slaves") == "1" && field(&info, "slave0").contains("state=online")
        })
        .await;
        replica
    }

    /// Waits until the log of `service` contains `needle`; returns the log.
    pub async fn wait_log(&self, service: Service, needle: &str) -> String {
        self.wait_logs(service, &[needle]).await
    }

    /// Waits until the log of `service` contains every one of `needles`; returns the log.
    ///
    /// A service writes a batch's log lines after its commit (read, decide, commit, report),
    /// so a group seen idle does not yet mean its lines are written: tests wait for them.
    pub async fn wait_logs(&self, service: Service, needles: &[&str]) -> String {
        let path = self.log_path(service);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            match needles.iter().find(|n| !log.contains(**n)) {
                None => return log,
                Some(missing) if Instant::now() >= deadline => panic!(
                    "timed out after {TIMEOUT:?} waiting for {missing:?} in the {} log:\n{log}",
                    service.binary()
                ),
                Some(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }
}

/// Polls `condition` every 25 ms until it holds; panics after [`TIMEOUT`] naming `what`.
pub async fn wait_for<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out after {TIMEOUT:?} waiting for {what}");
}

/// `n` BUYs of 50 USD over the demo's symbols in turn, every intent format.
pub fn demo_buys(n: usize) -> Vec<Vec<(String, String)>> {
    use quantum_model::types::{Side, Symbol};
    use quantumctl::sim::{intent_fields, Format};
    (0..n)
        .map(|i| {
            let symbol = Symbol::parse(DEMO_SYMBOLS[i % DEMO_SYMBOLS.len()]).unwrap();
            intent_fields(&symbol, Side::Buy, rust_decimal::Decimal::from(50), Format::Mixed, i)
        })
        .collect()
}

/// Every intent became exactly one plan, every plan exactly one result and at most one order,
/// every fill was applied once, and each ledger equals the venue's position.
pub async fn assert_exactly_once(stack: &Stack, intent_ids: &[String]) {
    // A fill one ledger parked behind the fill another was applying at that moment is applied
    // by the next pass of the ledgers' sweep (every LEDGER_RECONCILE_INTERVAL_MS): only once
    // none is left does the pipeline hold its final state.
    wait_for("the ledgers' parked fills to be applied", || async {
        for symbol in DEMO_SYMBOLS {
            let key = format!("{{quantum:position:ledger:{symbol}}}:parked");
            let parked: u64 = stack.client.hlen(key).await.unwrap_or(1);
            if parked > 0 {
                return false;
            }
        }
        true
    })
    .await;
    let plans = stack.entries(PLAN_STREAM).await;
    let by_intent: HashMap<String, usize> = plans.iter().fold(HashMap::new(), |mut m, p| {
        *m.entry(p.get("intent_id").unwrap_or_default().to_string()).or_default() += 1;
        m
    });
    for id in intent_ids {
        assert_eq!(by_intent.get(id), Some(&1), "intent {id} must produce exactly one plan");
    }
    assert_eq!(plans.len(), intent_ids.len());

    let results = stack.entries(RESULT_STREAM).await;
    let mut seen = HashSet::new();
    for r in &results {
        assert!(
            seen.insert(r.get("plan_id").unwrap_or_default().to_string()),
            "second result for {:?}",
            r.get("plan_id")
        );
    }
    assert_eq!(results.len(), plans.len(), "one result per plan");
    let fills = stack.xlen(LEDGER_COMMIT_STREAM).await;
    let filled = results.iter().filter(|r| r.get("executed") == Some("true")).count() as u64;
    assert_eq!(fills, filled, "one fill per executed order");

    let problems = exactly_once_problems(&stack.client, &HashMap::new()).await.unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
    for symbol in DEMO_SYMBOLS {
        let ledger = stack.hash(&format!("quantum:position:ledger:{symbol}")).await;
        let snapshot = stack.hash(&format!("quantum:position:snapshot:{symbol}")).await;
        assert_eq!(
            ledger.get("position_amt"),
            snapshot.get("position_amt"),
            "{symbol}: ledger vs venue"
        );
    }
}

/// Runs the `quantumctl` binary against `redis_url` (none: it starts its own Redis where it
/// can); returns its exit code and its stdout and stderr together.
pub fn quantumctl(args: &[&str], redis_url: Option<&str>) -> (i32, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_quantumctl"));
    cmd.args(args).env_remove("REDIS_URL").env_remove("REDIS_HOST");
    if let Some(url) = redis_url {
        cmd.env("REDIS_URL", url);
    }
    let out = cmd.output().expect("run quantumctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The consumers of `group` on `stream`: (name, entries pending).
pub async fn consumers(stack: &Stack, stream: &str, group: &str) -> Vec<(String, u64)> {
    let reply: fred::types::Value = stack
        .client
        .custom(
            fred::types::CustomCommand::new_static("XINFO", fred::types::ClusterHash::FirstKey, false),
            vec!["CONSUMERS", stream, group],
        )
        .await
        .expect("XINFO CONSUMERS");
    reply
        .into_array()
        .into_iter()
        .map(|c| {
            let pairs = quantum_runtime::reply::hash_pairs(c);
            let get = |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            (get("name"), get("pending").parse().unwrap_or_default())
        })
        .collect()
}

/// How many orders the paper venue holds (one record per order it accepted).
pub async fn paper_orders(stack: &Stack) -> usize {
    quantum_runtime::consumer::scan_keys(&stack.client, "{quantum:paper:position:*}:order:*")
        .await
        .unwrap()
        .len()
}

/// The HTTP port a service logged at start.
pub fn port_of(stack: &Stack, service: Service) -> u16 {
    let log = stack.log(service);
    let line = log
        .lines()
        .find(|l| l.contains("HTTP endpoints on http://"))
        .expect("endpoint line");
    let addr = line.split("http://").nth(1).unwrap().split(':').nth(1).unwrap();
    addr.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// A plain HTTP/1.1 GET: (status, body), `None` when nothing answers properly.
pub fn try_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// [`try_get`], panicking when nothing answers.
pub fn get(port: u16, path: &str) -> (u16, String) {
    try_get(port, path).unwrap_or_else(|| panic!("no HTTP answer on port {port} for {path}"))
}
