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
        let dir = tempfile::Builder::new().prefix("quantum-redis-").tempdir()?;
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port()?;
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
