//! The life of one generation, as a pure state machine: [`Machine::handle`]
//! takes an [`Event`] (a signal, a worker's message or exit, a word from the
//! previous or next generation, a timer) and returns the [`Effect`]s the
//! supervisor must perform (fork, send, kill, exec, write, exit). It makes no
//! system call, so the table tests in `tests/` drive every transition
//! without a process.
//!
//! The states, and the numbered steps of the reload protocol in the crate
//! docs (`main.rs`) they carry out:
//!
//! - [`Life::Starting`]: workers forked, waiting until each is ready (1, 2).
//! - [`Life::TakingOver`]: a new generation whose workers are all ready has
//!   asked the previous one to step aside (3).
//! - [`Life::Serving`], with a [`Reload`] in flight or not (1, 3, 4, 5).
//! - [`Life::Stopping`], with its [`StopCause`] and deadline.

mod handover;
mod start;
#[cfg(test)]
mod tests;
mod timers;
mod transitions;

use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::channel::{FromWorker, NewToOld, StopReason, ToWorker};

pub use timers::{later, Timing, STOP_TAKEN_WAIT, YOUNG};

/// Where a generation is in its life.
#[derive(Debug, PartialEq, Eq)]
pub enum Life {
    /// Waiting for every worker to be ready. `predecessor`: the generation
    /// this one replaces, while it lives (none for the first generation).
    Starting { predecessor: Option<Pid> },
    /// Every worker is ready and the predecessor was asked to step aside;
    /// waiting for its `Released`.
    TakingOver { predecessor: Pid },
    /// In charge; a reload may be in flight.
    Serving { reload: Option<Reload> },
    /// Workers told to stop; exits once all are gone.
    Stopping {
        cause: StopCause,
        /// When the workers still alive get SIGKILL.
        deadline: Instant,
        /// Whether this generation writes the status file while it stops.
        in_charge: bool,
    },
}

/// A reload this generation started, not yet over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reload {
    pub successor: Pid,
    pub generation: u64,
    pub started: Instant,
    pub stage: ReloadStage,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadStage {
    /// The next generation starts its workers; ours serve.
    Starting,
    /// It is ready and asked us to step aside: our workers were told to stop
    /// accepting. Until each says it took the stop (or `until`), one of them
    /// may still accept, so the next generation does not take charge yet.
    Releasing { until: Instant },
    /// We answered `Released`: our workers took the stop (or the wait ran
    /// out) and drain; we wait for it to confirm that it took over.
    Released,
}

/// Why a generation stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// An operator's signal. A second one kills the workers at once.
    Signal { name: &'static str },
    /// The next generation took over; our workers finish what they hold.
    HandedOver { successor: Pid },
    /// This generation could not start (the host exits non-zero).
    StartFailed(String),
}

/// A worker slot: `--workers` of them, each running one worker or waiting
/// to respawn one.
#[derive(Debug, PartialEq, Eq)]
pub enum Slot {
    /// `crashes`: how many workers in a row died young in this slot.
    Empty {
        respawn_at: Option<Instant>,
        crashes: u32,
    },
    Running(Worker),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Worker {
    pub pid: Pid,
    pub started: Instant,
    /// How many workers before it in this slot died young in a row.
    pub crashes: u32,
    pub state: WorkerState,
    /// The reason it gave for failing, if it did.
    pub failure: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    Forked,
    Loaded {
        can_hot_reload: bool,
    },
    /// It called `ready_to_take_over`: it is initialised and accepts.
    Serving,
}

impl WorkerState {
    /// Whether its plugin is initialised: serving, or built if it cannot
    /// hot-reload (and so never calls `ready_to_take_over`).
    pub fn initialised(self) -> bool {
        matches!(
            self,
            WorkerState::Serving
                | WorkerState::Loaded {
                    can_hot_reload: false
                }
        )
    }
}

/// A worker told to stop, finishing what it holds.
#[derive(Debug, PartialEq, Eq)]
pub struct Draining {
    pub pid: Pid,
    /// The slot it served, whose next worker may get its state.
    pub slot: usize,
    pub failure: Option<String>,
    pub killed: bool,
    /// It said it took the stop (`FromWorker::StopTaken`).
    pub stop_taken: bool,
}

/// How a child process ended, as `waitpid` said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    /// "exited with status 1", "was killed by SIGKILL".
    pub how: String,
    /// Exited with status 0.
    pub clean: bool,
}

/// Something that happened, for [`Machine::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// SIGTERM, SIGINT or SIGQUIT: a graceful stop (whoever sent it).
    StopSignal {
        name: &'static str,
    },
    /// SIGUSR2.
    ReloadSignal,
    /// A worker was forked for `slot`, or could not be.
    Forked {
        slot: usize,
        result: Result<Pid, String>,
    },
    Worker {
        pid: Pid,
        message: FromWorker,
    },
    WorkerExited {
        pid: Pid,
        exit: Exit,
    },
    /// With `--watchdog`: a serving worker did not ping for `silent`.
    WorkerHung {
        pid: Pid,
        silent: Duration,
    },
    /// The next generation was started, or could not be.
    Spawned(Result<Pid, String>),
    Successor(NewToOld),
    /// The next generation's channel closed or its process ended.
    SuccessorGone {
        reason: String,
    },
    /// The previous generation answered our request: its workers took the
    /// stop (or did not within `STOP_TAKEN_WAIT`).
    Released,
    /// The previous generation's channel closed: it is gone.
    PredecessorGone,
    /// The anchor's channel closed: the service is over.
    AnchorGone,
    /// The previous generation forwarded what its worker in `slot` handed over.
    InheritedState {
        slot: usize,
        state: Vec<u8>,
    },
    /// Time passed: deadlines are checked.
    Tick,
}

/// Something the supervisor must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Fork a worker for `slot`; `head_start`: a reload's new worker, which
    /// loads ahead of the serving ones until it is ready (see `priority`).
    /// Answer with `Event::Forked`.
    ForkWorker {
        slot: usize,
        head_start: bool,
    },
    Send {
        pid: Pid,
        message: ToWorker,
    },
    Kill {
        pid: Pid,
    },
    /// Start generation `generation`. Answer with `Event::Spawned`.
    SpawnSuccessor {
        generation: u64,
    },
    /// Tell the next generation our workers took the stop (or the wait for
    /// them is over): it may take over.
    Release,
    /// Forward a draining worker's state to the next generation.
    HandState {
        slot: usize,
        state: Vec<u8>,
    },
    /// Kill the next generation's whole process group.
    KillSuccessor {
        pid: Pid,
    },
    ToPredecessor(NewToOld),
    /// Lock the pid file (again) and write our pid in it.
    ClaimPidFile,
    WriteStatus,
    Notify(Notice),
    /// The reload's CPU head start is over: workers forked from now on
    /// start at the usual level (see `priority`).
    Unboost,
    Exit(Result<(), String>),
}

/// What the anchor hears (and passes on to systemd).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// This generation is in charge and serves.
    Serving,
    Reloading {
        generation: u64,
        successor: Pid,
    },
    ReloadFailed(String),
    /// The generation in charge stops the service.
    Stopping,
}

/// One generation's supervisor state.
#[derive(Debug)]
pub struct Machine {
    pub generation: u64,
    pub timing: Timing,
    pub life: Life,
    pub slots: Vec<Slot>,
    pub draining: Vec<Draining>,
    /// What the plugin said when loaded (the latest worker's answer).
    pub can_hot_reload: Option<bool>,
    /// Whether this generation started under a predecessor.
    pub inherited: bool,
    pub started: Instant,
    /// Reloads asked of this generation, and why the last did not happen.
    pub reloads: u64,
    pub last_reload: String,
    /// How many workers may load the plugin at once while the generation
    /// starts (the CPUs it may take from the generation that serves): a
    /// few workers ready soon serve sooner than all of them ready late,
    /// and the rest follow.
    pub start_at_once: usize,
    /// The first slot not forked yet while the generation starts.
    next_start: usize,
}

impl Machine {
    /// A generation about to fork its workers; `predecessor` is the one it
    /// replaces. Call [`Machine::start`] next.
    pub fn new(
        generation: u64,
        workers: usize,
        timing: Timing,
        predecessor: Option<Pid>,
        now: Instant,
    ) -> Machine {
        Machine {
            generation,
            timing,
            life: Life::Starting { predecessor },
            slots: (0..workers)
                .map(|_| Slot::Empty {
                    respawn_at: None,
                    crashes: 0,
                })
                .collect(),
            draining: Vec::new(),
            can_hot_reload: None,
            inherited: predecessor.is_some(),
            started: now,
            start_at_once: usize::MAX,
            next_start: 0,
            reloads: 0,
            last_reload: String::new(),
        }
    }

    /// Whether this generation writes the pid and status files now.
    pub fn in_charge(&self) -> bool {
        match &self.life {
            Life::Starting { .. } => !self.inherited,
            Life::TakingOver { .. } => false,
            Life::Serving { .. } => true,
            Life::Stopping { in_charge, .. } => *in_charge,
        }
    }

    pub fn predecessor(&self) -> Option<Pid> {
        match self.life {
            Life::Starting { predecessor } => predecessor,
            Life::TakingOver { predecessor } => Some(predecessor),
            _ => None,
        }
    }

    /// Whether the watchdog watches worker `pid`: it serves (ready, or built
    /// if it cannot hot-reload) in a generation in charge.
    pub fn watched(&self, pid: Pid) -> bool {
        matches!(self.life, Life::Serving { .. })
            && self
                .slots
                .iter()
                .any(|s| matches!(s, Slot::Running(w) if w.pid == pid && w.state.initialised()))
    }

    /// How many slots back off because their workers keep dying young.
    pub fn crash_looping(&self) -> usize {
        let crashes = |s: &Slot| match s {
            Slot::Empty { crashes, .. } => *crashes,
            Slot::Running(w) => w.crashes,
        };
        self.slots.iter().filter(|s| crashes(s) >= 2).count()
    }

    /// Whether a standby for the next reload is worth keeping: in charge,
    /// no reload in flight, and a plugin that says it can hot-reload.
    pub fn wants_standby(&self) -> bool {
        matches!(self.life, Life::Serving { reload: None }) && self.can_hot_reload == Some(true)
    }

    /// The next generation, while it starts or once it took over from us:
    /// our child, and the one our workers' state goes to.
    pub fn successor(&self) -> Option<Pid> {
        match &self.life {
            Life::Serving { reload } => reload.map(|r| r.successor),
            Life::Stopping {
                cause: StopCause::HandedOver { successor },
                ..
            } => Some(*successor),
            _ => None,
        }
    }

    pub fn reload(&self) -> Option<&Reload> {
        match &self.life {
            Life::Serving { reload } => reload.as_ref(),
            _ => None,
        }
    }
}

impl StopReason {
    fn for_cause(cause: &StopCause) -> StopReason {
        match cause {
            StopCause::HandedOver { .. } => StopReason::Reload,
            StopCause::Signal { .. } | StopCause::StartFailed(_) => StopReason::Shutdown,
        }
    }
}
