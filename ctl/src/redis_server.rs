//! A throwaway `redis-server` on a free loopback port with its own temporary directory,
//! used by `quantumctl demo` and by the test suites.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

/// Why the server could not be started.
#[derive(Debug, Error)]
pub enum RedisServerError {
    #[error("redis-server is not installed (apt-get install redis-server): {0}")]
    NotInstalled(std::io::Error),
    #[error("cannot prepare a directory for redis-server: {0}")]
    Io(#[from] std::io::Error),
    #[error("redis-server did not answer PING on port {port} within {secs}s; its log: {log}")]
    NotReady { port: u16, secs: u64, log: String },
}

/// A running redis-server, killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts a server with no persistence.
    ///
    /// # Errors
    /// As [`RedisServer::start_with`].
    pub fn start() -> Result<Self, RedisServerError> {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (e.g. `--appendonly yes`).
    ///
    /// # Errors
    /// No `redis-server` binary, no free port or temp dir, or the server not answering in time.
    pub fn start_with(extra_args: &[&str]) -> Result<Self, RedisServerError> {
        Self::start_on_free_port(extra_args, free_port)
    }

    fn start_on_free_port(
        extra_args: &[&str],
        pick_port: fn() -> std::io::Result<u16>,
    ) -> Result<Self, RedisServerError> {
        let dir = tempfile::Builder::new().prefix("quantum-redis-").tempdir()?;
        let mut last_error = None;
        for _ in 0..5 {
            let port = pick_port()?;
            let mut server = Self {
                child: None,
                port,
                dir: tempfile::Builder::new().prefix("quantum-redis-").tempdir()?,
                extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e @ RedisServerError::NotInstalled(_)) => return Err(e),
                Err(e) => last_error = Some(e),
            }
        }
        drop(dir);
        Err(last_error.unwrap_or_else(|| RedisServerError::Io(std::io::Error::other("no free port"))))
    }

    fn spawn(&mut self) -> Result<(), RedisServerError> {
        let log = self.dir.path().join("redis.log");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(["--daemonize", "no"])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(RedisServerError::NotInstalled)?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ping(self.port) {
                return Ok(());
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(RedisServerError::NotReady {
            port: self.port,
            secs: 10,
            log: std::fs::read_to_string(&log).unwrap_or_default(),
        })
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's working directory (AOF/RDB files live here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Whether the process is running (not killed, not exited).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL), simulating an outage.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process in place (SIGSTOP): connected, answering nothing, as a server stuck
    /// or cut off by the network; [`RedisServer::resume`] lets it go on.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            // The process is our child and alive until `kill`; a failure would only mean it
            // died already, which the caller's next command shows.
            let _ = nix::sys::signal::kill(pid, signal);
        }
    }

    /// Starts it again on the same port and directory.
    ///
    /// # Errors
    /// As [`RedisServer::start_with`].
    pub fn restart(&mut self) -> Result<(), RedisServerError> {
        self.kill();
        self.spawn()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A free port whose cluster bus port (port + 10000) is free too.
fn free_cluster_port() -> std::io::Result<u16> {
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        if port <= 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::other("no free port with a free cluster bus port"))
}

/// Why a cluster could not be formed.
#[derive(Debug, Error)]
pub enum ClusterError {
    #[error(transparent)]
    Server(#[from] RedisServerError),
    #[error("redis-cli --cluster create failed: {0}")]
    Create(String),
    #[error("the cluster did not settle within {secs}s: {state}")]
    NotReady { secs: u64, state: String },
}

/// A throwaway Redis Cluster on loopback: `masters` primaries with one replica each, every
/// node with its own directory (AOF on, so a restarted node keeps its data), formed with
/// `redis-cli --cluster create`. Killed when dropped.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` primaries and as many replicas and waits until every node reports
    /// `cluster_state:ok` and every primary has its replica in sync.
    ///
    /// # Errors
    /// No redis-server, no free ports, or a cluster that does not form in time.
    pub fn start(masters: usize) -> Result<Self, ClusterError> {
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
            "--appendonly",
            "yes",
        ];
        let mut nodes = Vec::with_capacity(masters * 2);
        for _ in 0..masters * 2 {
            nodes.push(RedisServer::start_on_free_port(&args, free_cluster_port)?);
        }
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .map_err(|e| ClusterError::Create(e.to_string()))?;
        if !out.status.success() {
            return Err(ClusterError::Create(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let cluster = Self { nodes };
        cluster.wait_until_settled(masters, Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// Waits until every live node says `cluster_state:ok`, `masters` primaries serve all slots
    /// and each has a replica online.
    ///
    /// # Errors
    /// Not settled within `timeout`; the error holds the last state seen.
    pub fn wait_until_settled(&self, masters: usize, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        let mut state = String::new();
        while Instant::now() < deadline {
            match self.settled_state(masters) {
                Ok(()) => return Ok(()),
                Err(s) => state = s,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(ClusterError::NotReady {
            secs: timeout.as_secs(),
            state,
        })
    }

    fn settled_state(&self, masters: usize) -> Result<(), String> {
        let mut online_primaries = 0;
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let info = redis_cli(node.port(), &["cluster", "info"]);
            if !info.contains("cluster_state:ok") {
                return Err(format!("127.0.0.1:{}: {info}", node.port()));
            }
            let replication = redis_cli(node.port(), &["info", "replication"]);
            if replication.contains("role:master") {
                if !replication.contains("state=online") {
                    return Err(format!("127.0.0.1:{} has no replica online", node.port()));
                }
                online_primaries += 1;
            }
        }
        if online_primaries == masters {
            Ok(())
        } else {
            Err(format!(
                "{online_primaries} primaries with a replica, {masters} expected"
            ))
        }
    }

    /// `host:port,host:port,...` of every node (`REDIS_CLUSTER_NODES`).
    pub fn seeds(&self) -> String {
        let nodes: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        nodes.join(",")
    }

    /// `redis-cluster://127.0.0.1:<port>?node=...` of every node.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port());
        for (i, node) in self.nodes[1..].iter().enumerate() {
            url.push_str(if i == 0 { "?" } else { "&" });
            url.push_str(&format!("node=127.0.0.1:{}", node.port()));
        }
        url
    }

    /// Index (into the nodes) of the primary serving `key` now.
    pub fn primary_of(&self, key: &str) -> Option<usize> {
        let slot = redis_cli(
            self.nodes.iter().find(|n| n.is_running())?.port(),
            &["cluster", "keyslot", key],
        );
        let slot: u16 = slot.trim().parse().ok()?;
        self.nodes
            .iter()
            .position(|n| n.is_running() && serves_slot(n.port(), slot))
    }

    /// Kills node `index` (SIGKILL): its replica takes over after the node timeout.
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].kill();
    }

    /// Starts killed node `index` again on its port and directory: it rejoins the cluster,
    /// as a replica of the primary that took its place.
    ///
    /// # Errors
    /// As [`RedisServer::restart`].
    pub fn restart(&mut self, index: usize) -> Result<(), RedisServerError> {
        self.nodes[index].restart()
    }

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }
}

/// Whether the node on `port` serves `slot` as a primary (its own line of CLUSTER NODES).
fn serves_slot(port: u16, slot: u16) -> bool {
    let nodes = redis_cli(port, &["cluster", "nodes"]);
    let Some(myself) = nodes.lines().find(|l| l.contains("myself")) else {
        return false;
    };
    myself.split_whitespace().skip(8).any(|range| {
        let (start, end) = range.split_once('-').unwrap_or((range, range));
        matches!((start.parse::<u16>(), end.parse::<u16>()), (Ok(s), Ok(e)) if s <= slot && slot <= e)
    })
}

/// What `redis-cli -p <port> <args>` prints (empty when it cannot run).
fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    // With the default user disabled (an ACL file) the server answers NOAUTH: it is up.
    matches!(stream.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
}

/// The Redis a run of the fault suite or the bench uses: one throwaway server (with
/// `server_args`), or a throwaway cluster of three primaries with a replica each.
pub enum ThrowawayRedis {
    Server(RedisServer),
    Cluster(RedisCluster),
}

impl ThrowawayRedis {
    /// # Errors
    /// No redis-server, no free ports, or a cluster that does not form in time.
    pub fn start(cluster: bool, server_args: &[&str]) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(if cluster {
            Self::Cluster(RedisCluster::start(3)?)
        } else {
            Self::Server(RedisServer::start_with(server_args)?)
        })
    }

    /// The URL the services and clients connect with.
    pub fn url(&self) -> String {
        match self {
            Self::Server(server) => server.url(),
            Self::Cluster(cluster) => cluster.url(),
        }
    }

    /// Each node by its own URL (for what a node keeps to itself, such as keyspace events).
    pub fn node_urls(&self) -> Vec<String> {
        match self {
            Self::Server(server) => vec![server.url()],
            Self::Cluster(cluster) => cluster.nodes().iter().map(RedisServer::url).collect(),
        }
    }
}
