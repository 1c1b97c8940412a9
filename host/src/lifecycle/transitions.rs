//! [`Machine::handle`]: every transition of a generation's life.

use std::time::Instant;

use nix::unistd::Pid;

use super::{
    later, Draining, Effect, Event, Exit, Life, Machine, Notice, Slot, StopCause, Worker,
    WorkerState,
};
use crate::channel::{FromWorker, NewToOld, StopReason, ToWorker};

impl Machine {
    /// Applies one event at `now` and returns what to do, in order.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        match event {
            Event::StopSignal { name } => self.on_stop_signal(name, now, &mut fx),
            Event::ReloadSignal => self.on_reload_signal(&mut fx),
            Event::Forked { slot, result } => self.on_forked(slot, result, now, &mut fx),
            Event::Worker { pid, message } => self.on_worker_message(pid, message, now, &mut fx),
            Event::WorkerExited { pid, exit } => self.on_worker_exit(pid, exit, now, &mut fx),
            Event::WorkerHung { pid, silent } => {
                if let Some(w) = self.running_mut(pid) {
                    let why = format!("hung: no ping_supervisor() for {silent:.1?}");
                    tracing::warn!("worker pid {pid} is {why}: killing it");
                    w.failure = Some(why);
                    fx.push(Effect::Kill { pid });
                }
            }
            Event::Spawned(result) => self.on_spawned(result, now, &mut fx),
            Event::Successor(message) => self.on_successor(message, now, &mut fx),
            Event::SuccessorGone { reason } => {
                if self.reload().is_some() {
                    self.reload_failed(reason, now, &mut fx);
                }
            }
            Event::Released => self.on_released(now, &mut fx),
            Event::PredecessorGone => self.on_predecessor_gone(now, &mut fx),
            Event::InheritedState { slot, state } => match self.slots.get(slot) {
                Some(Slot::Running(w)) => fx.push(Effect::Send {
                    pid: w.pid,
                    message: ToWorker::State(state),
                }),
                _ => tracing::debug!("state for slot {slot} dropped: no worker there"),
            },
            Event::AnchorGone => {
                tracing::warn!("the anchor is gone: stopping");
                if !matches!(self.life, Life::Stopping { .. }) {
                    self.on_stop_signal("the anchor's exit", now, &mut fx);
                }
            }
            Event::Tick => self.on_tick(now, &mut fx),
        }
        self.check_exit(&mut fx);
        fx
    }

    // ---- signals ----

    fn on_stop_signal(&mut self, name: &'static str, now: Instant, fx: &mut Vec<Effect>) {
        if let Life::Stopping { cause, .. } = &mut self.life {
            if matches!(cause, StopCause::Signal { .. }) {
                tracing::warn!("{name} again: killing the workers now");
                return self.kill_draining(fx);
            }
            // The first stop asked by the operator: the drain already under
            // way keeps its deadline; a second one cuts it short.
            tracing::info!(
                "{name}: already stopping; workers finish within the shutdown timeout (send it again to kill them now)"
            );
            *cause = StopCause::Signal { name };
            return;
        }
        tracing::info!("{name}: stopping");
        if let Some(predecessor) = self.predecessor() {
            let why = format!("the new generation got {name} before taking over");
            fx.push(Effect::ToPredecessor(NewToOld::Failed(why)));
            tracing::debug!("told pid {predecessor} to carry on");
        }
        if let Some(reload) = self.reload().copied() {
            tracing::info!(
                "abandoning the reload to generation {} (pid {})",
                reload.generation,
                reload.successor
            );
            fx.push(Effect::KillSuccessor {
                pid: reload.successor,
            });
        }
        self.begin_stop(StopCause::Signal { name }, now, fx);
    }

    // ---- workers ----

    fn on_forked(
        &mut self,
        slot: usize,
        result: Result<Pid, String>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        match result {
            Ok(pid) if matches!(self.life, Life::Stopping { .. }) => {
                // Forked just before the stop: it stops with its siblings.
                let reason = match &self.life {
                    Life::Stopping { cause, .. } => StopReason::for_cause(cause),
                    _ => StopReason::Shutdown,
                };
                fx.push(Effect::Send {
                    pid,
                    message: ToWorker::Stop(reason),
                });
                self.draining.push(Draining {
                    pid,
                    slot,
                    failure: None,
                    killed: false,
                    stop_taken: false,
                });
            }
            Ok(pid) => {
                tracing::debug!("worker pid {pid} started in slot {slot}");
                self.slots[slot] = Slot::Running(Worker {
                    pid,
                    started: now,
                    crashes: self.crashes(slot),
                    state: WorkerState::Forked,
                    failure: None,
                });
            }
            Err(e) => match self.life {
                Life::Starting { .. } | Life::TakingOver { .. } => self.fail_start(e, now, fx),
                Life::Serving { .. } => {
                    let crashes = self.crashes(slot).saturating_add(1);
                    let delay = self.timing.respawn_delay(crashes);
                    tracing::error!("{e}; trying again in {delay:?}");
                    self.slots[slot] = Slot::Empty {
                        respawn_at: Some(later(now, delay)),
                        crashes,
                    };
                }
                Life::Stopping { .. } => tracing::debug!("{e}"),
            },
        }
    }

    fn on_worker_message(
        &mut self,
        pid: Pid,
        message: FromWorker,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let successor = self.successor();
        if let Some(d) = self.draining.iter_mut().find(|d| d.pid == pid) {
            match message {
                FromWorker::Failed(reason) => d.failure = Some(reason),
                FromWorker::StopTaken => {
                    d.stop_taken = true;
                    return self.check_released(now, fx);
                }
                // For the next generation's worker of the same slot.
                FromWorker::State(state) => match successor {
                    Some(_) => fx.push(Effect::HandState {
                        slot: d.slot,
                        state,
                    }),
                    None => tracing::debug!("worker pid {pid}: no next generation for its state"),
                },
                _ => {}
            }
            return;
        }
        let Some(w) = self.running_mut(pid) else {
            return;
        };
        match message {
            FromWorker::Loaded { can_hot_reload } => {
                w.state = WorkerState::Loaded { can_hot_reload };
                if self
                    .can_hot_reload
                    .is_some_and(|known| known != can_hot_reload)
                {
                    tracing::warn!("workers disagree on can_do_hot_reload(); using the latest: {can_hot_reload}");
                }
                self.can_hot_reload = Some(can_hot_reload);
                if self.inherited && !can_hot_reload && matches!(self.life, Life::Starting { .. }) {
                    let why = "the new plugin cannot be hot-reloaded into: its can_do_hot_reload() is false (restart the host to run it)";
                    return self.fail_start(why.into(), now, fx);
                }
            }
            FromWorker::Serving => w.state = WorkerState::Serving,
            FromWorker::Failed(reason) => w.failure = Some(reason),
            FromWorker::State(_) => {
                tracing::debug!("worker pid {pid}: state ignored: it was not asked to hand over")
            }
            FromWorker::StopTaken => {
                tracing::debug!("worker pid {pid}: stop confirmed, but it was not asked to stop")
            }
        }
        self.check_started(now, fx);
        self.start_more(fx);
    }

    fn on_worker_exit(&mut self, pid: Pid, exit: Exit, now: Instant, fx: &mut Vec<Effect>) {
        if let Some(i) = self.draining.iter().position(|d| d.pid == pid) {
            let d = self.draining.remove(i);
            let because = d.failure.map(|r| format!(": {r}")).unwrap_or_default();
            tracing::info!("worker pid {pid} stopped ({}){because}", exit.how);
            return self.check_released(now, fx);
        }
        let Some(slot) = self.slot_of(pid) else {
            return tracing::debug!("reaped pid {pid} ({})", exit.how);
        };
        let Slot::Running(w) = std::mem::replace(
            &mut self.slots[slot],
            Slot::Empty {
                respawn_at: None,
                crashes: 0,
            },
        ) else {
            unreachable!("slot_of found a running worker")
        };
        let how = &exit.how;
        let because = w
            .failure
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        match self.life {
            Life::Starting { .. } | Life::TakingOver { .. } => {
                tracing::debug!("worker pid {pid} {how}{because}");
                let problem = w
                    .failure
                    .unwrap_or_else(|| format!("worker pid {pid} {how} before it was ready"));
                self.fail_start(problem, now, fx);
            }
            Life::Serving { .. } => {
                let young = now.saturating_duration_since(w.started) < super::YOUNG;
                let crashes = if young {
                    w.crashes.saturating_add(1)
                } else {
                    0
                };
                let delay = self.timing.respawn_delay(crashes);
                let looping = match crashes {
                    0 | 1 => String::new(),
                    n => format!(" (crash-looping: {n} workers in a row died young)"),
                };
                if w.failure.is_none() && exit.clean {
                    tracing::info!("worker pid {pid} {how}; respawning in {delay:?}{looping}");
                } else {
                    tracing::warn!(
                        "worker pid {pid} {how}{because}; respawning in {delay:?}{looping}"
                    );
                }
                self.slots[slot] = Slot::Empty {
                    respawn_at: Some(later(now, delay)),
                    crashes,
                };
                if crashes >= 2 || w.crashes >= 2 {
                    // The status file says which slots crash-loop.
                    fx.push(Effect::WriteStatus);
                }
                self.on_tick(now, fx);
            }
            // Unreachable: a stopping generation's workers are all draining.
            Life::Stopping { .. } => tracing::debug!("worker pid {pid} {how}{because}"),
        }
    }

    // ---- stopping ----

    pub(super) fn begin_stop(&mut self, cause: StopCause, now: Instant, fx: &mut Vec<Effect>) {
        let in_charge = self.in_charge();
        let reason = StopReason::for_cause(&cause);
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let empty = Slot::Empty {
                respawn_at: None,
                crashes: 0,
            };
            if let Slot::Running(w) = std::mem::replace(slot, empty) {
                fx.push(Effect::Send {
                    pid: w.pid,
                    message: ToWorker::Stop(reason),
                });
                self.draining.push(Draining {
                    pid: w.pid,
                    slot: index,
                    failure: w.failure,
                    killed: false,
                    stop_taken: false,
                });
            }
        }
        let deadline = later(now, self.timing.shutdown_timeout);
        tracing::debug!(
            "workers told to stop; killing any still alive in {:?}",
            self.timing.shutdown_timeout
        );
        self.life = Life::Stopping {
            cause,
            deadline,
            in_charge,
        };
        if in_charge {
            fx.extend([Effect::Notify(Notice::Stopping), Effect::WriteStatus]);
        }
    }

    pub(super) fn kill_draining(&mut self, fx: &mut Vec<Effect>) {
        for d in self.draining.iter_mut().filter(|d| !d.killed) {
            d.killed = true;
            fx.push(Effect::Kill { pid: d.pid });
        }
    }

    fn check_exit(&mut self, fx: &mut Vec<Effect>) {
        let Life::Stopping { cause, .. } = &self.life else {
            return;
        };
        if !self.draining.is_empty() || fx.iter().any(|e| matches!(e, Effect::Exit(_))) {
            return;
        }
        let result = match cause {
            StopCause::StartFailed(problem) => {
                tracing::debug!("all workers gone: exiting");
                Err(problem.clone())
            }
            _ => {
                tracing::info!("all workers gone: exiting");
                Ok(())
            }
        };
        fx.push(Effect::Exit(result));
    }

    // ---- lookups ----

    fn running_mut(&mut self, pid: Pid) -> Option<&mut Worker> {
        self.slots.iter_mut().find_map(|s| match s {
            Slot::Running(w) if w.pid == pid => Some(w),
            _ => None,
        })
    }

    /// The young deaths in a row of `slot`.
    fn crashes(&self, slot: usize) -> u32 {
        match &self.slots[slot] {
            Slot::Empty { crashes, .. } => *crashes,
            Slot::Running(w) => w.crashes,
        }
    }

    fn slot_of(&self, pid: Pid) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| matches!(s, Slot::Running(w) if w.pid == pid))
    }
}
