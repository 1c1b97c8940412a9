//! Time in a generation's life: the user's timing settings, the backoff of
//! a crashing slot, the fixed waits, and what a [`Event::Tick`] does.
//!
//! [`Event::Tick`]: super::Event::Tick

use std::time::{Duration, Instant};

use super::{Effect, Life, Machine, ReloadStage, Slot};

/// The user's timing settings, all bounded at parse time.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub respawn_delay: Duration,
    /// The longest a crash-looping slot waits between respawns.
    pub respawn_delay_max: Duration,
    pub shutdown_timeout: Duration,
    pub reload_timeout: Duration,
}

/// A worker that dies sooner than this after its start died young: its
/// slot backs off.
pub const YOUNG: Duration = Duration::from_secs(10);

/// How long stepping aside waits for each of our workers to say it took the
/// stop. A worker's link thread answers within milliseconds even under
/// load; one that does not (stopped, or starved) no longer holds up the
/// next generation once this passes.
pub const STOP_TAKEN_WAIT: Duration = Duration::from_secs(1);

/// The smallest step of the backoff, so that even `--respawn-delay 0` never
/// makes a crashing plugin a busy loop.
const MIN_BACKOFF_STEP: Duration = Duration::from_millis(100);

impl Timing {
    /// The wait before respawning a slot whose workers died young `crashes`
    /// times in a row: the base delay, then doubling up to the maximum.
    pub fn respawn_delay(&self, crashes: u32) -> Duration {
        if crashes <= 1 {
            return self.respawn_delay;
        }
        let step = self.respawn_delay.max(MIN_BACKOFF_STEP);
        let doubled = step.saturating_mul(2u32.saturating_pow((crashes - 1).min(31)));
        doubled.min(self.respawn_delay_max.max(self.respawn_delay))
    }
}

/// `now + d`, saturating far in the future instead of overflowing.
pub fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
}

impl Machine {
    /// The earliest moment a `Tick` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let stop = match &self.life {
            Life::Stopping { deadline, .. } if self.draining.iter().any(|d| !d.killed) => {
                Some(*deadline)
            }
            _ => None,
        };
        let reload = self.reload().and_then(|r| {
            let timeout = r.started.checked_add(self.timing.reload_timeout);
            match r.stage {
                ReloadStage::Releasing { until } => timeout.map(|t| t.min(until)),
                _ => timeout,
            }
        });
        let respawn = self.slots.iter().filter_map(|s| match s {
            Slot::Empty { respawn_at, .. } => *respawn_at,
            Slot::Running(_) => None,
        });
        stop.into_iter().chain(reload).chain(respawn).min()
    }

    pub(super) fn on_tick(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        match &self.life {
            Life::Stopping { deadline, .. } => {
                if now >= *deadline && self.draining.iter().any(|d| !d.killed) {
                    tracing::warn!(
                        "workers did not stop within {:?}: killing them",
                        self.timing.shutdown_timeout
                    );
                    self.kill_draining(fx);
                }
            }
            Life::Serving { reload } => {
                if let Some(r) = reload {
                    if r.started
                        .checked_add(self.timing.reload_timeout)
                        .is_some_and(|t| now >= t)
                    {
                        let timeout = self.timing.reload_timeout;
                        let why =
                            format!("the new generation did not take over within {timeout:?}");
                        return self.reload_failed(why, now, fx);
                    }
                }
                self.check_released(now, fx);
                for (slot, s) in self.slots.iter_mut().enumerate() {
                    if let Slot::Empty {
                        respawn_at: Some(at),
                        crashes,
                    } = s
                    {
                        if *at <= now {
                            *s = Slot::Empty {
                                respawn_at: None,
                                crashes: *crashes,
                            };
                            fx.push(Effect::ForkWorker {
                                slot,
                                head_start: false,
                            });
                        }
                    }
                }
            }
            Life::Starting { .. } | Life::TakingOver { .. } => {}
        }
    }
}
