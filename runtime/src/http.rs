//! Each service's HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process is
//! alive) and `/readyz` (Redis answers, the service's consumer group exists, and its batches
//! are not stalled).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use fred::prelude::Client;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::consumer::{group_backlog, ConsumerSpec, Progress};

/// Where the endpoints listen.
#[derive(clap::Args, Debug, Clone)]
pub struct HttpArgs {
    /// Address the HTTP endpoints bind to (0.0.0.0 to expose them beyond this host).
    #[arg(long, env = "METRICS_BIND", default_value = "127.0.0.1")]
    pub metrics_bind: std::net::IpAddr,
}

/// What `/readyz` checks, known once the service has connected.
#[derive(Default)]
pub struct Readiness {
    target: OnceLock<(Client, Vec<Watched>)>,
}

/// One consumer `/readyz` checks: a stream (or shard), its group and its progress.
struct Watched {
    stream: String,
    group: &'static str,
    progress: Arc<Progress>,
}

impl Readiness {
    /// Sets the client and the consumers (one per shard) whose groups must exist and whose
    /// batches must not be stalled for the service to be ready.
    pub fn watch(&self, client: Client, specs: &[ConsumerSpec]) {
        let watched = specs
            .iter()
            .map(|spec| Watched {
                stream: spec.stream.clone(),
                group: spec.group,
                progress: spec.progress.clone(),
            })
            .collect();
        let _ = self.target.set((client, watched));
    }

    async fn check(&self) -> (StatusCode, String) {
        let Some((client, watched)) = self.target.get() else {
            return (StatusCode::SERVICE_UNAVAILABLE, "not connected to Redis yet\n".into());
        };
        let mut ready = String::new();
        for w in watched {
            match Self::check_one(client, w).await {
                Ok(line) => ready.push_str(&line),
                Err(not_ready) => return (StatusCode::SERVICE_UNAVAILABLE, not_ready),
            }
        }
        (StatusCode::OK, ready)
    }

    async fn check_one(client: &Client, w: &Watched) -> Result<String, String> {
        let (stream, group) = (&w.stream, w.group);
        if let Some(ms) = w.progress.stalled_for_ms() {
            return Err(format!("stalled: batches on {stream} have failed for {ms} ms\n"));
        }
        match tokio::time::timeout(Duration::from_secs(2), group_backlog(client, stream, group)).await {
            Ok(Ok(Some(_))) => Ok(format!("ready: group {group} on {stream}\n")),
            Ok(Ok(None)) => Err(format!("group {group} missing on {stream}\n")),
            Ok(Err(e)) => Err(format!("redis error: {e}\n")),
            Err(_) => Err("redis did not answer within 2s\n".into()),
        }
    }
}

struct AppState {
    metrics: PrometheusHandle,
    readiness: Arc<Readiness>,
}

/// The process's Prometheus recorder, installed on first use; services run in one process
/// (the in-process tests) share it.
fn recorder() -> std::io::Result<PrometheusHandle> {
    static RECORDER: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
    let mut installed = RECORDER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| std::io::Error::other(format!("cannot install the metrics recorder: {e}")))?;
    *installed = Some(handle.clone());
    Ok(handle)
}

/// Installs the Prometheus recorder and serves the endpoints on `bind:port` (port 0: any free
/// port, logged) until `shutdown`. Returns the readiness handle to fill in once connected.
///
/// # Errors
/// The port cannot be bound, or the recorder cannot be installed.
pub async fn serve(bind: std::net::IpAddr, port: u16, shutdown: CancellationToken) -> std::io::Result<Arc<Readiness>> {
    let metrics = recorder()?;
    let upkeep = metrics.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => upkeep.run_upkeep(),
            }
        }
    });
    let readiness = Arc::new(Readiness::default());
    let state = Arc::new(AppState {
        metrics,
        readiness: readiness.clone(),
    });
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<Arc<AppState>>| async move { s.metrics.render() }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(s): State<Arc<AppState>>| async move { s.readiness.check().await }),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(bind, port)).await?;
    let addr = listener.local_addr()?;
    tracing::info!("HTTP endpoints on http://{addr}: /metrics /healthz /readyz");
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!("HTTP endpoints stopped: {e}");
        }
    });
    Ok(readiness)
}
