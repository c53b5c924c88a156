//! Runs the three service binaries as child processes with their own log files: the demo's
//! and the system tests' way of standing up a real local stack.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// One of the pipeline's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Bridge,
    Executor,
    Ledger,
}

impl Service {
    /// The binary's file name.
    pub fn binary(self) -> &'static str {
        match self {
            Self::Bridge => "quantum-intent-bridge",
            Self::Executor => "quantum-intent-executor",
            Self::Ledger => "quantum-ledger",
        }
    }
}

/// Where the service binaries are: `QUANTUM_BIN_DIR`, else beside the running executable
/// (tests run from `target/<profile>/deps`, so its parent is tried too).
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("QUANTUM_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let here = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if here.join(Service::Bridge.binary()).exists() {
        return here;
    }
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

/// A running service process.
pub struct ServiceProcess {
    pub service: Service,
    pub log: PathBuf,
    child: Child,
}

impl ServiceProcess {
    /// Starts `service` with `env` added to this process's environment, logging to `log`
    /// (appended, so a restarted service keeps one log).
    ///
    /// # Errors
    /// The binary or the log file cannot be opened.
    pub fn start(service: Service, env: &HashMap<String, String>, log: &Path) -> std::io::Result<Self> {
        let path = bin_dir().join(service.binary());
        if !path.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{} not found; build the workspace first (cargo build --workspace)",
                    path.display()
                ),
            ));
        }
        let out = File::options().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let child = Command::new(&path)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()?;
        Ok(Self {
            service,
            log: log.to_path_buf(),
            child,
        })
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait up to `timeout` for a clean exit (SIGKILL after that). Returns whether
    /// it exited by itself with status 0.
    pub fn stop(mut self, timeout: Duration) -> bool {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }

    /// SIGKILL: the process dies wherever it is.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it has exited, and with which code.
    pub fn exited(&mut self) -> Option<Option<i32>> {
        self.child.try_wait().ok().flatten().map(|s| s.code())
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The environment every service of a local stack gets: the Redis URL, the demo's symbols as
/// the allowlist, and snappy timings.
pub fn base_env(redis_url: &str) -> HashMap<String, String> {
    let mut env = HashMap::new();
    env.insert("REDIS_URL".to_string(), redis_url.to_string());
    env.insert("SYMBOL_ALLOWLIST".to_string(), crate::sim::DEMO_SYMBOLS.join(","));
    env.insert("STREAM_BLOCK_MS".to_string(), "200".to_string());
    // Not inherited from the caller's environment: a stack's services agree on one count.
    env.insert("STREAM_SHARDS".to_string(), "1".to_string());
    // Any free port, so several local stacks (tests, the demo) never collide on 9101-9103.
    for port in [
        "INTENT_BRIDGE_METRICS_PORT",
        "INTENT_EXECUTOR_METRICS_PORT",
        "LEDGER_METRICS_PORT",
    ] {
        env.insert(port.to_string(), "0".to_string());
    }
    env
}
