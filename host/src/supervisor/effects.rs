//! Performing the lifecycle's effects: the only place the supervisor acts
//! on processes, channels, files and systemd.

use std::os::fd::{AsFd, AsRawFd};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

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
                Effect::ForkWorker { slot, head_start } => Some(Event::Forked {
                    slot,
                    result: self.fork_worker(slot, head_start)?,
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

    /// Starts the next generation, whose workers get a CPU head start when
    /// allowed (see `priority`). The standby is that generation if it is
    /// still the host binary on disk.
    fn spawn_successor(&mut self, generation: u64) -> Event {
        let base_nice = priority::current().unwrap_or(0);
        let raise = |pid: Pid| {
            let levels = priority::supervisor_head_start(self.config.workers);
            if levels > 0 {
                // Fails without the privilege: it then starts at our level.
                let _ = priority::set(pid.as_raw(), base_nice - levels);
            }
        };
        // A reload began: the next time we are in charge and idle, a new
        // standby is due.
        self.standby_started = false;
        if let Some(standby) = self.standby.take() {
            raise(standby.pid());
            match standby.start(&self.config.exe, generation) {
                Ok(successor) => {
                    let pid = successor.pid;
                    tracing::debug!("generation {generation} starts from the standby, pid {pid}");
                    self.successor = Some(successor);
                    return Event::Spawned(Ok(pid));
                }
                Err((standby, why)) => {
                    tracing::info!("not using the standby (pid {}): {why}", standby.pid());
                    standby.kill();
                }
            }
        }
        match reload::spawn(&self.handoff(generation, Some(base_nice))) {
            Ok(successor) => {
                let pid = successor.pid;
                raise(pid);
                self.successor = Some(successor);
                Event::Spawned(Ok(pid))
            }
            Err(e) => Event::Spawned(Err(e.to_string())),
        }
    }

    /// What the next generation inherits.
    fn handoff(&self, generation: u64, base_nice: Option<i32>) -> Handoff<'_> {
        Handoff {
            exe: &self.config.exe,
            args: &self.config.args,
            generation,
            listener_fds: self.listeners.raw_fds(),
            pid_file_fd: self.pid_file.as_ref().map(|p| p.as_fd().as_raw_fd()),
            anchor_fd: self.anchor.channel.as_raw_fd(),
            anchor_pid: self.anchor.pid,
            anchor_since: self.anchor.since,
            base_nice,
        }
    }

    /// Keeps a standby ready while in charge and idle, with a plugin that
    /// can hot-reload, and none once stopping (see `reload::Standby`).
    pub(super) fn tend_standby(&mut self) {
        if self.machine.wants_standby() {
            if self.standby.is_none() && !self.standby_started {
                self.standby_started = true;
                let base_nice = priority::current().ok();
                let next = self.machine.generation + 1;
                match reload::spawn_standby(&self.handoff(next, base_nice)) {
                    Ok(standby) => {
                        tracing::debug!("standby for the next reload: pid {}", standby.pid());
                        self.standby = Some(standby);
                    }
                    Err(e) => tracing::warn!("cannot start a standby for the next reload: {e}"),
                }
            }
        } else if let Some(standby) = self.standby.take() {
            // Stopping, or the plugin says it can no longer hot-reload.
            standby.kill();
        }
    }

    /// The head start is over: this supervisor, if it was raised, and the
    /// workers it forks from now on (respawns) are at the usual level.
    fn unboost(&mut self) {
        if let Some(base) = self.base_nice.take() {
            priority::return_to(base);
        }
    }
}
