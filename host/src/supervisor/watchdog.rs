//! `--watchdog`: reading each serving worker's heartbeat (see `heartbeat`)
//! on every wake-up, and calling silent ones hung.

use std::time::Instant;

use super::runtime::Runtime;
use crate::lifecycle::Event;

impl Runtime {
    /// With `--watchdog`: a worker that serves and has not pinged for the
    /// whole period is hung. The period counts from when it began to serve.
    pub(super) fn check_heartbeats(&mut self, events: &mut Vec<Event>) {
        let Some(period) = self.config.watchdog else {
            return;
        };
        let now = Instant::now();
        for w in &mut self.workers {
            let Some((heartbeat, seen, since)) = &mut w.heartbeat else {
                continue;
            };
            let count = heartbeat.count();
            if count != *seen || !self.machine.watched(w.pid) {
                (*seen, *since) = (count, now);
            } else if now.saturating_duration_since(*since) >= period {
                events.push(Event::WorkerHung {
                    pid: w.pid,
                    silent: now.saturating_duration_since(*since),
                });
                // Once: it is killed now.
                w.heartbeat = None;
            }
        }
    }
}
