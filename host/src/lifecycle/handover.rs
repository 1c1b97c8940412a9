//! The reload's transitions: as the new generation (starting, asking the
//! old one to step aside, taking over) and as the old one (starting the
//! next, stepping aside, carrying on when the reload fails).

use std::time::Instant;

use nix::unistd::Pid;

use super::{
    later, Draining, Effect, Life, Machine, Notice, Reload, ReloadStage, Slot, StopCause,
    WorkerState, STOP_TAKEN_WAIT,
};
use crate::channel::{NewToOld, StopReason, ToWorker};

impl Machine {
    // ---- starting the next generation (as the old one) ----

    pub(super) fn on_reload_signal(&mut self, fx: &mut Vec<Effect>) {
        match &self.life {
            Life::Serving { reload: Some(r) } => {
                return tracing::info!(
                    "SIGUSR2 ignored: generation {} (pid {}) is already taking over",
                    r.generation,
                    r.successor
                );
            }
            Life::Serving { reload: None } => {}
            _ => return tracing::info!("SIGUSR2 ignored: this generation is not serving"),
        }
        self.reloads += 1;
        if self.can_hot_reload != Some(true) {
            self.last_reload =
                "ignored: the plugin cannot hot-reload (its can_do_hot_reload() is false)".into();
            tracing::info!("SIGUSR2 {}", self.last_reload);
            fx.push(Effect::WriteStatus);
            return;
        }
        fx.push(Effect::SpawnSuccessor {
            generation: self.generation + 1,
        });
    }

    pub(super) fn on_spawned(
        &mut self,
        result: Result<Pid, String>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let Life::Serving {
            reload: reload @ None,
        } = &mut self.life
        else {
            return;
        };
        match result {
            Ok(successor) => {
                let generation = self.generation + 1;
                tracing::info!("reload: generation {generation} starting as pid {successor}");
                *reload = Some(Reload {
                    successor,
                    generation,
                    started: now,
                    stage: ReloadStage::Starting,
                });
                fx.push(Effect::Notify(Notice::Reloading {
                    generation,
                    successor,
                }));
                fx.push(Effect::WriteStatus);
            }
            Err(reason) => self.reload_failed(reason, now, fx),
        }
    }

    // ---- starting and taking over (as the new generation) ----

    pub(super) fn check_started(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let Life::Starting { predecessor } = self.life else {
            return;
        };
        let states = |slots: &[Slot]| -> Vec<Option<WorkerState>> {
            slots
                .iter()
                .map(|s| match s {
                    Slot::Running(w) => Some(w.state),
                    Slot::Empty { .. } => None,
                })
                .collect()
        };
        if !self.inherited {
            // Started once every plugin is built and, if it can hot-reload
            // (and so calls ready_to_take_over), initialised.
            let started = states(&self.slots)
                .into_iter()
                .all(|s| s.is_some_and(WorkerState::initialised));
            if started {
                self.life = Life::Serving { reload: None };
                // The anchor wrote its own pid until a generation serves.
                // The anchor hears first: by the time a reader sees the
                // files, the anchor forwards signals to this supervisor.
                fx.extend([
                    Effect::Notify(Notice::Serving),
                    Effect::ClaimPidFile,
                    Effect::WriteStatus,
                ]);
                tracing::info!("serving, started in {:?}", now - self.started);
            }
            return;
        }
        // Each worker accepts as soon as it is ready, beside the old ones
        // (and beside the new ones still starting), so that the new code
        // serves as soon as one worker can, and no moment passes with
        // nobody accepting. The old workers are asked to stop only once
        // every new one says it accepts. Until the takeover is confirmed
        // the old generation stays in charge, and if this one fails, its
        // workers finish what they accepted.
        let serving = states(&self.slots);
        if !serving.iter().all(|s| *s == Some(WorkerState::Serving)) {
            return;
        }
        match predecessor {
            Some(predecessor) => {
                tracing::info!(
                    "all workers accept in {:?}: asking pid {predecessor} to step aside",
                    now - self.started
                );
                fx.push(Effect::ToPredecessor(NewToOld::ReadyToTakeOver));
                self.life = Life::TakingOver { predecessor };
            }
            None => self.take_over(now, fx),
        }
    }

    pub(super) fn on_released(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if !matches!(self.life, Life::TakingOver { .. }) {
            return tracing::warn!("unexpected Released from the previous generation");
        }
        let every_slot_ready = self
            .slots
            .iter()
            .all(|s| matches!(s, Slot::Running(w) if w.state == WorkerState::Serving));
        if every_slot_ready {
            self.take_over(now, fx);
        } else {
            self.fail_start("a worker of the new generation is gone".into(), now, fx);
        }
    }

    pub(super) fn on_predecessor_gone(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        match self.life {
            Life::Starting {
                predecessor: Some(pid),
            } => {
                tracing::info!("the previous generation (pid {pid}) is gone");
                self.life = Life::Starting { predecessor: None };
                self.check_started(now, fx);
            }
            Life::TakingOver { predecessor } => {
                // Its workers already serve (each since it was ready).
                tracing::info!("the previous generation (pid {predecessor}) is gone");
                self.life = Life::Starting { predecessor: None };
                self.take_over(now, fx);
            }
            _ => {}
        }
    }

    /// In charge (the workers serve already): tells the anchor, then the
    /// predecessor, then claims the files.
    pub(super) fn take_over(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let predecessor = self.predecessor();
        // The anchor hears before the predecessor may exit, so it never
        // takes the predecessor's exit for a crash of the one in charge.
        fx.push(Effect::Notify(Notice::Serving));
        if predecessor.is_some() {
            fx.push(Effect::ToPredecessor(NewToOld::TookOver));
        }
        self.life = Life::Serving { reload: None };
        fx.extend([Effect::Unboost, Effect::ClaimPidFile, Effect::WriteStatus]);
        match predecessor {
            Some(pid) => tracing::info!("took over from pid {pid} in {:?}", now - self.started),
            None => tracing::info!("took over in {:?}", now - self.started),
        }
    }

    /// The start failed: tell the predecessor (it carries on), and stop.
    pub(super) fn fail_start(&mut self, problem: String, now: Instant, fx: &mut Vec<Effect>) {
        if self.predecessor().is_some() {
            fx.push(Effect::ToPredecessor(NewToOld::Failed(problem.clone())));
        }
        self.begin_stop(StopCause::StartFailed(problem), now, fx);
    }

    // ---- reloading (as the old generation) ----

    pub(super) fn on_successor(&mut self, message: NewToOld, now: Instant, fx: &mut Vec<Effect>) {
        let Some(reload) = self.reload().copied() else {
            return tracing::debug!("message from a past successor ignored: {message:?}");
        };
        match (message, reload.stage) {
            (NewToOld::ReadyToTakeOver, ReloadStage::Starting) => {
                tracing::info!(
                    "generation {} (pid {}) is ready: stepping aside",
                    reload.generation,
                    reload.successor
                );
                // Workers still draining from an earlier reload were told
                // to stop then: only the ones stopped now are waited for.
                for d in &mut self.draining {
                    d.stop_taken = true;
                }
                // Our workers stop accepting; what waits stays queued in the
                // shared sockets for the new workers.
                for (index, slot) in self.slots.iter_mut().enumerate() {
                    let empty = Slot::Empty {
                        respawn_at: None,
                        crashes: 0,
                    };
                    match std::mem::replace(slot, empty) {
                        Slot::Running(w) => {
                            fx.push(Effect::Send {
                                pid: w.pid,
                                message: ToWorker::Stop(StopReason::Reload),
                            });
                            self.draining.push(Draining {
                                pid: w.pid,
                                slot: index,
                                failure: w.failure,
                                killed: false,
                                stop_taken: false,
                            });
                        }
                        Slot::Empty { .. } => {}
                    }
                }
                self.life = Life::Serving {
                    reload: Some(Reload {
                        stage: ReloadStage::Releasing {
                            until: later(now, STOP_TAKEN_WAIT),
                        },
                        ..reload
                    }),
                };
                self.check_released(now, fx);
            }
            (NewToOld::TookOver, ReloadStage::Released) => {
                tracing::info!(
                    "generation {} (pid {}) took over: finishing",
                    reload.generation,
                    reload.successor
                );
                fx.push(Effect::Unboost);
                let cause = StopCause::HandedOver {
                    successor: reload.successor,
                };
                self.life = Life::Stopping {
                    cause,
                    deadline: later(now, self.timing.shutdown_timeout),
                    in_charge: false,
                };
            }
            (NewToOld::Failed(reason), _) => self.reload_failed(reason, now, fx),
            (other, stage) => {
                tracing::warn!("unexpected {other:?} from the new generation while {stage:?}")
            }
        }
    }

    /// Stepping aside: answers `Released` once every worker we told to stop
    /// took the stop or is gone, or once the wait for them is over.
    pub(super) fn check_released(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let Life::Serving {
            reload: Some(reload),
        } = &mut self.life
        else {
            return;
        };
        let ReloadStage::Releasing { until } = reload.stage else {
            return;
        };
        let waiting: Vec<Pid> = self
            .draining
            .iter()
            .filter(|d| !d.stop_taken)
            .map(|d| d.pid)
            .collect();
        if !waiting.is_empty() {
            if now < until {
                return;
            }
            for pid in waiting {
                tracing::warn!(
                    "worker pid {pid} did not confirm that it stopped accepting within {STOP_TAKEN_WAIT:?}: handing over anyway"
                );
            }
        }
        reload.stage = ReloadStage::Released;
        fx.push(Effect::Release);
    }

    /// The reload is over and we are still in charge: if our workers were
    /// already released, they are replaced at once.
    pub(super) fn reload_failed(&mut self, reason: String, now: Instant, fx: &mut Vec<Effect>) {
        let Life::Serving { reload } = &mut self.life else {
            return;
        };
        let released = reload.is_some_and(|r| r.stage != ReloadStage::Starting);
        if let Some(r) = reload.take() {
            fx.push(Effect::KillSuccessor { pid: r.successor });
        }
        tracing::error!("reload failed: {reason}");
        self.last_reload = format!("failed: {reason}");
        fx.push(Effect::Unboost);
        if released {
            tracing::info!("resuming: respawning every worker now");
            fx.push(Effect::ClaimPidFile);
            for slot in &mut self.slots {
                *slot = Slot::Empty {
                    respawn_at: Some(now),
                    crashes: 0,
                };
            }
            self.on_tick(now, fx);
        }
        fx.extend([
            Effect::Notify(Notice::ReloadFailed(reason)),
            Effect::WriteStatus,
        ]);
    }
}
