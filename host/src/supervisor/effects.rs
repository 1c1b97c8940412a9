//! Performing the lifecycle's effects: the only place the supervisor acts
//! on processes, channels, files and systemd.

use std::os::fd::{AsFd, AsRawFd};

use nix::sys::signal::{kill, killpg, Signal};

use super::runtime::{Outcome, Runtime};
use crate::channel::OldToNew;
use crate::error::Error;
use crate::lifecycle::{Effect, Event};
use crate::priority;
use crate::reload::{self, Handoff};

impl Runtime {
    /// Performs `effects` in order. An effect that answers with an event
    /// (a fork, a spawn) has that event applied before the next effect.
    pub(super) fn perform(&mut self, effects: Vec<Effect>) -> Result<Outcome, Error> {
        for effect in effects {
            let answer = match effect {
                Effect::ForkWorker { slot, go } => Some(Event::Forked {
                    slot,
                    result: self.fork_worker(slot, go)?,
                }),
                Effect::SpawnSuccessor { generation } => Some(self.spawn_successor(generation)),
                Effect::Send { pid, message } => {
                    let link = self.workers.iter().find(|w| w.pid == pid);
                    if let Some(channel) = link.and_then(|w| w.channel.as_ref()) {
                        if let Err(e) = channel.send(&message) {
                            tracing::debug!("worker pid {pid}: cannot send {message:?}: {e}");
                        }
                    }
                    None
                }
                Effect::Kill { pid } => {
                    let _ = kill(pid, Signal::SIGKILL);
                    None
                }
                Effect::Release => {
                    if let Some(s) = &self.successor {
                        if let Err(e) = s.channel.send(&OldToNew::Released) {
                            tracing::warn!("cannot tell the new generation it may go: {e}");
                        }
                    }
                    None
                }
                Effect::HandState { slot, state } => {
                    if let Some(s) = &self.successor {
                        let message = OldToNew::State {
                            slot: slot as u32,
                            state,
                        };
                        if let Err(e) = s.channel.send(&message) {
                            tracing::debug!("cannot hand over slot {slot}'s state: {e}");
                        }
                    }
                    None
                }
                Effect::KillSuccessor { pid } => {
                    // Its own process group: the new supervisor and its workers.
                    let _ = killpg(pid, Signal::SIGKILL);
                    None
                }
                Effect::ToPredecessor(message) => {
                    if let Some(p) = &self.predecessor {
                        if let Err(e) = p.channel.send(&message) {
                            tracing::debug!("cannot tell pid {}: {message:?}: {e}", p.pid);
                        }
                    }
                    None
                }
                Effect::ClaimPidFile => {
                    if let Some(pid_file) = &self.pid_file {
                        if let Err(e) = pid_file.take_over() {
                            tracing::error!("{e}");
                        }
                    }
                    None
                }
                Effect::WriteStatus => {
                    self.write_status();
                    None
                }
                Effect::Notify(notice) => {
                    self.notify(notice);
                    None
                }
                Effect::Unboost => {
                    self.unboost();
                    None
                }
                Effect::Exit(result) => return Ok(Some(result)),
            };
            if let Some(event) = answer {
                if let Some(outcome) = self.apply(event)? {
                    return Ok(Some(outcome));
                }
            }
        }
        Ok(None)
    }

    /// Starts the next generation with a CPU head start, when allowed: the
    /// whole takeover runs boosted, our part of it (stepping aside) too.
    fn spawn_successor(&mut self, generation: u64) -> Event {
        let base_nice = priority::current().unwrap_or(0);
        if priority::set(0, base_nice - priority::BOOST).is_ok() {
            self.base_nice = Some(base_nice);
        }
        let handoff = Handoff {
            exe: &self.config.exe,
            args: &self.config.args,
            generation,
            listener_fds: self.listeners.raw_fds(),
            pid_file_fd: self.pid_file.as_ref().map(|p| p.as_fd().as_raw_fd()),
            anchor_fd: self.anchor.channel.as_raw_fd(),
            anchor_pid: self.anchor.pid,
            anchor_since: self.anchor.since,
            base_nice: Some(base_nice),
        };
        match reload::spawn(&handoff) {
            Ok(successor) => {
                let pid = successor.pid;
                self.successor = Some(successor);
                Event::Spawned(Ok(pid))
            }
            Err(e) => Event::Spawned(Err(e.to_string())),
        }
    }

    /// Returns to the nice value from before a boost.
    fn unboost(&mut self) {
        if let Some(nice) = self.base_nice.take() {
            if let Err(e) = priority::set(0, nice) {
                tracing::warn!("cannot return to nice {nice}: {e}");
            }
        }
    }
}
