//! Distinct symbols seen over a sliding window, published as a gauge that decays when idle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use quantum_model::labels::symbol_label;
use quantum_model::types::Symbol;

/// How often the gauge is refreshed even without new activity.
const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// Symbols seen recently; the gauge `name{window}` holds how many were seen within `window`.
#[derive(Clone)]
pub struct SymbolWindow {
    name: &'static str,
    window: Duration,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
}

impl SymbolWindow {
    /// A window whose gauge is refreshed every few seconds until `shutdown`.
    pub fn spawn(name: &'static str, window: Duration, shutdown: CancellationToken) -> Self {
        let this = Self {
            name,
            window,
            seen: Arc::default(),
        };
        let ticker = this.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(REFRESH_EVERY) => { ticker.publish(); }
                }
            }
        });
        this
    }

    /// Records activity for `symbol` now.
    pub fn saw(&self, symbol: &Symbol) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(symbol_label(symbol), Instant::now());
    }

    /// Drops expired symbols and sets the gauge; returns the count.
    pub fn publish(&self) -> usize {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, t| t.elapsed() < self.window);
        let window = format!("{}s", self.window.as_secs());
        metrics::gauge!(self.name, "window" => window).set(seen.len() as f64);
        seen.len()
    }
}
