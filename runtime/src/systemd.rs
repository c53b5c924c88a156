//! systemd integration for `Type=notify` units: readiness, stopping and watchdog pings. Every
//! call is a no-op outside systemd (no `NOTIFY_SOCKET`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Tells systemd the service is ready (its consumer group is set up and it is reading).
fn notify_ready(status: &str) {
    if let Err(e) = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(status)]) {
        tracing::warn!("sd_notify READY failed: {e}");
    }
}

/// Tells systemd the service is shutting down.
pub fn notify_stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

/// Readiness and watchdog pings for a process running `loops` consumer loops (one per
/// shard): READY once every loop has joined its group, and a watchdog ping (at half the
/// interval systemd asks for, `WatchdogSec=`) only once every loop has beaten since the last
/// one, so a single hung loop stops the pings and systemd restarts the service.
#[derive(Debug)]
pub struct Watchdog {
    every: Option<Duration>,
    state: Mutex<Beats>,
}

#[derive(Debug)]
struct Beats {
    last_ping: Option<Instant>,
    /// Per loop: beaten since the last ping.
    beaten: Vec<bool>,
    /// Per loop: joined its group.
    joined: Vec<bool>,
}

impl Watchdog {
    /// Reads `WATCHDOG_USEC` and `WATCHDOG_PID` the way sd_watchdog_enabled(3) does: the
    /// watchdog is on when WATCHDOG_USEC is set and WATCHDOG_PID is unset or is this process.
    pub fn from_env(loops: usize) -> Self {
        let usec = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|u| *u > 0);
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .is_none_or(|pid| pid.parse::<u32>().ok() == Some(std::process::id()));
        Self::pinging_every(loops, usec.filter(|_| for_us).map(|u| Duration::from_micros(u / 2)))
    }

    /// A watchdog of `loops` loops pinging at most every `every` (`None`: off).
    fn pinging_every(loops: usize, every: Option<Duration>) -> Self {
        let loops = loops.max(1);
        Self {
            every,
            state: Mutex::new(Beats {
                last_ping: None,
                beaten: vec![false; loops],
                joined: vec![false; loops],
            }),
        }
    }

    /// Loop `index` joined its group; READY (with `status`) once every loop has.
    pub fn joined(&self, index: usize, status: &str) {
        let mut beats = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(joined) = beats.joined.get_mut(index) {
            *joined = true;
        }
        if beats.joined.iter().all(|j| *j) {
            notify_ready(status);
        }
    }

    /// Loop `index` is alive; pings when every loop has been since the last ping and the
    /// ping is due (returns whether it pinged). Called from the consumer loops, so a stuck
    /// loop stops the pings.
    pub fn beat(&self, index: usize) -> bool {
        let Some(every) = self.every else { return false };
        let mut beats = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(beaten) = beats.beaten.get_mut(index) {
            *beaten = true;
        }
        if !beats.beaten.iter().all(|b| *b) || beats.last_ping.is_some_and(|t| t.elapsed() < every) {
            return false;
        }
        beats.beaten.fill(false);
        beats.last_ping = Some(Instant::now());
        let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_loop_that_stops_beating_stops_the_pings() {
        let watchdog = Watchdog::pinging_every(2, Some(Duration::ZERO));
        assert!(!watchdog.beat(0), "loop 1 has not beaten yet");
        assert!(!watchdog.beat(0));
        assert!(watchdog.beat(1), "both loops alive");
        // Loop 1 hangs: however often loop 0 beats, no ping.
        for _ in 0..5 {
            assert!(!watchdog.beat(0));
        }
        assert!(watchdog.beat(1));
        let off = Watchdog::pinging_every(1, None);
        assert!(!off.beat(0));
    }
}
