//! systemd integration for `Type=notify` units: readiness, stopping and watchdog pings. Every
//! call is a no-op outside systemd (no `NOTIFY_SOCKET`).

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Tells systemd the service is ready (its consumer group is set up and it is reading).
pub fn notify_ready(status: &str) {
    if let Err(e) = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(status)]) {
        tracing::warn!("sd_notify READY failed: {e}");
    }
}

/// Tells systemd the service is shutting down.
pub fn notify_stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

/// Watchdog pings at half the interval systemd asks for (`WatchdogSec=`).
#[derive(Debug)]
pub struct Watchdog {
    every: Option<Duration>,
    last: Option<Instant>,
}

impl Watchdog {
    /// Reads `WATCHDOG_USEC` and `WATCHDOG_PID` the way sd_watchdog_enabled(3) does: the
    /// watchdog is on when WATCHDOG_USEC is set and WATCHDOG_PID is unset or is this process.
    pub fn from_env() -> Self {
        let usec = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|u| *u > 0);
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .is_none_or(|pid| pid.parse::<u32>().ok() == Some(std::process::id()));
        let every = usec.filter(|_| for_us).map(|u| Duration::from_micros(u / 2));
        Self { every, last: None }
    }

    /// Pings when due. Called from the consumer loop, so a stuck loop stops the pings.
    pub fn ping(&mut self) {
        let Some(every) = self.every else { return };
        if self.last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
    }
}
