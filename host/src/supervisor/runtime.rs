//! The poll loop: turns descriptors, signals, child exits and timers into
//! lifecycle events, in an order that keeps a child's last words ahead of
//! its exit, and hands each to [`Runtime::apply`].

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR2};

use super::pool::{self, PreparedWorker};
use super::{Config, Parts};
use crate::channel::{NewToOld, OldToNew, Received, ToAnchor, ToWorkerEnd};
use crate::error::Error;
use crate::footprint;
use crate::heartbeat::Heartbeat;
use crate::lifecycle::{Event, Exit, Life, Machine};
use crate::listeners::Listeners;
use crate::pidfile::PidFile;
use crate::process::describe_exit;
use crate::reload::{Anchor, Predecessor, Standby, Successor};
use crate::signals::{self, Signals};
use crate::snapshot::Snapshot;

/// A live worker's channel, until the worker closes it.
pub(super) struct WorkerLink {
    pub pid: Pid,
    pub channel: Option<ToWorkerEnd>,
    /// With `--watchdog`: its heartbeat, the count last seen, and since when.
    pub heartbeat: Option<(Heartbeat, u64, Instant)>,
}

/// One generation's supervisor: the lifecycle plus everything it acts on.
pub struct Runtime {
    pub(super) config: Config,
    pub(super) machine: Machine,
    pub(super) signals: Signals,
    pub(super) listeners: Listeners,
    pub(super) snapshot: Snapshot,
    pub(super) pid_file: Option<PidFile>,
    pub(super) anchor: Anchor,
    pub(super) workers: Vec<WorkerLink>,
    /// Started from a standby, until slot 0 starts: the worker it forked
    /// ahead (see `PreparedWorker`).
    pub(super) prepared: Option<PreparedWorker>,
    /// While a reload is in flight: the generation we started.
    pub(super) successor: Option<Successor>,
    /// While in charge with no reload in flight: the next generation,
    /// exec'd and waiting (see `reload::Standby`).
    pub(super) standby: Option<Standby>,
    /// Whether a standby was started since the last reload began: one that
    /// died is not replaced until then.
    pub(super) standby_started: bool,
    /// While starting under a previous generation: that generation.
    pub(super) predecessor: Option<Predecessor>,
    /// While this generation starts under another: the nice value its
    /// workers serve at, after loading with a head start (see `priority`).
    pub(super) base_nice: Option<i32>,
    /// Whether the resident set was trimmed (see `footprint`).
    pub(super) trimmed: bool,
}

/// Where a poll event came from.
#[derive(Clone, Copy)]
enum Source {
    Worker(Pid),
    Successor,
    Predecessor,
    Anchor,
    Signals,
}

/// What ends the loop: the generation's own result (`Ok` or a failed start).
pub(super) type Outcome = Option<Result<(), String>>;

impl Runtime {
    pub(super) fn new(config: Config, machine: Machine, parts: Parts) -> Result<Runtime, Error> {
        let signals = Signals::install().map_err(Error::os("cannot install signal handlers"))?;
        // Orphans of a failed new generation are re-parented to us and reaped.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::debug!("cannot become a child subreaper: {e}");
        }
        let Parts {
            snapshot,
            listeners,
            pid_file,
            anchor,
            predecessor,
            base_nice,
            prepared,
        } = parts;
        Ok(Runtime {
            config,
            machine,
            signals,
            listeners,
            snapshot,
            pid_file,
            anchor,
            workers: Vec::new(),
            prepared,
            successor: None,
            standby: None,
            standby_started: false,
            predecessor,
            base_nice,
            trimmed: false,
        })
    }

    pub fn run(mut self) -> Result<(), Error> {
        tracing::info!(
            "starting {} worker(s) of plugin {}{}",
            self.machine.slots.len(),
            self.config.plugin.display(),
            match self.listeners.len() {
                0 => String::new(),
                _ => format!(", listening on {}", self.listeners.local_addrs().join(" ")),
            }
        );
        let start = self.machine.start();
        let mut outcome = self.perform(start)?;
        while outcome.is_none() {
            for event in self.wait()? {
                outcome = self.apply(event)?;
                if outcome.is_some() {
                    break;
                }
            }
        }
        match outcome {
            Some(Err(problem)) => {
                let error = Error::Start(problem);
                // A predecessor heard it already; the anchor hears it here.
                if !self.machine.inherited {
                    let _ = self
                        .anchor
                        .channel
                        .send(&ToAnchor::Failed(error.to_string()));
                }
                Err(error)
            }
            _ => Ok(()),
        }
    }

    /// Hands one event to the lifecycle and performs what it returns.
    pub(super) fn apply(&mut self, event: Event) -> Result<Outcome, Error> {
        let effects = self.machine.handle(event, Instant::now());
        let outcome = self.perform(effects)?;
        // A link the lifecycle no longer speaks of is closed: the peer sees
        // the hang-up. Once in charge, the previous generation's link stays
        // open until it closes it: its draining workers' state comes on it.
        if self.machine.predecessor().is_none()
            && !matches!(self.machine.life, Life::Serving { .. })
        {
            self.predecessor = None;
        }
        let successor = self.machine.successor();
        if self
            .successor
            .as_ref()
            .is_some_and(|s| Some(s.pid) != successor)
        {
            self.successor = None;
        }
        self.tend_standby();
        // Once in charge, off the reload's critical path: only the code the
        // supervisor runs stays resident (see `footprint`).
        if !self.trimmed && matches!(self.machine.life, Life::Serving { .. }) {
            self.trimmed = true;
            footprint::trim();
        }
        Ok(outcome)
    }

    /// Waits for something to happen and returns it as events, ending with a `Tick`.
    fn wait(&mut self) -> Result<Vec<Event>, Error> {
        let mut sources = Vec::with_capacity(self.workers.len() + 3);
        let mut fds = Vec::with_capacity(self.workers.len() + 3);
        for w in &self.workers {
            if let Some(channel) = &w.channel {
                sources.push(Source::Worker(w.pid));
                fds.push(PollFd::new(channel.as_fd(), PollFlags::POLLIN));
            }
        }
        if let Some(s) = &self.successor {
            sources.push(Source::Successor);
            fds.push(PollFd::new(s.channel.as_fd(), PollFlags::POLLIN));
        }
        if let Some(p) = &self.predecessor {
            sources.push(Source::Predecessor);
            fds.push(PollFd::new(p.channel.as_fd(), PollFlags::POLLIN));
        }
        // Readable only when it closes: the anchor never writes.
        sources.push(Source::Anchor);
        fds.push(PollFd::new(self.anchor.channel.as_fd(), PollFlags::POLLIN));
        // Last, so that a worker's final words are read before its exit is handled.
        sources.push(Source::Signals);
        fds.push(PollFd::new(self.signals.as_fd(), PollFlags::POLLIN));

        let watch = self.config.watchdog.filter(|_| !self.workers.is_empty());
        let check = watch.map(|period| {
            Instant::now() + (period / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
        });
        let next = [self.machine.next_deadline(), check]
            .into_iter()
            .flatten()
            .min();
        let timeout = next.map_or(PollTimeout::NONE, |deadline| {
            let wait = deadline.saturating_duration_since(Instant::now());
            // Round up, so a deadline is never polled for just before it is due.
            PollTimeout::try_from(wait.saturating_add(Duration::from_micros(999)))
                .unwrap_or(PollTimeout::MAX)
        });
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                return Err(Error::Os {
                    what: "poll failed",
                    source: e.into(),
                })
            }
        }
        let ready: Vec<Source> = sources
            .iter()
            .zip(&fds)
            .filter(|(_, fd)| fd.any().unwrap_or(false))
            .map(|(source, _)| *source)
            .collect();
        drop(fds);
        let mut events = Vec::new();
        for source in ready {
            match source {
                Source::Worker(pid) => self.read_worker(pid, &mut events),
                Source::Successor => self.read_successor(&mut events),
                Source::Predecessor => self.read_predecessor(&mut events),
                Source::Anchor => events.push(Event::AnchorGone),
                Source::Signals => self.read_signals(&mut events),
            }
        }
        self.reap(&mut events);
        self.check_heartbeats(&mut events);
        events.push(Event::Tick);
        Ok(events)
    }

    fn read_worker(&mut self, pid: Pid, events: &mut Vec<Event>) {
        let Some(link) = self.workers.iter_mut().find(|w| w.pid == pid) else {
            return;
        };
        while let Some(channel) = &link.channel {
            match channel.try_recv() {
                Ok(Received::Message(message)) => events.push(Event::Worker { pid, message }),
                Ok(Received::Empty) => break,
                Ok(Received::Closed) => link.channel = None,
                Err(e) => {
                    // A worker that speaks garbage is not to be trusted with
                    // its slot; its exit is handled like any other.
                    tracing::warn!("worker pid {pid}: channel error: {e}; killing it");
                    let _ = kill(pid, Signal::SIGKILL);
                    link.channel = None;
                }
            }
        }
    }

    fn read_successor(&mut self, events: &mut Vec<Event>) {
        if self.successor_messages(events) {
            // Closed for good: no more polling it.
            self.successor = None;
            let reason = "the new generation exited before taking over".to_owned();
            events.push(Event::SuccessorGone { reason });
        }
    }

    /// Reads what the successor said; true if its channel is closed. A
    /// request to step aside that its own failure (or death) follows in the
    /// same read is dropped: stopping our workers for a generation already
    /// known to be gone would only make us respawn them.
    fn successor_messages(&self, events: &mut Vec<Event>) -> bool {
        let Some(s) = &self.successor else {
            return false;
        };
        let mut said = Vec::new();
        let closed = loop {
            match s.channel.try_recv() {
                Ok(Received::Message(message)) => said.push(message),
                Ok(Received::Empty) => break false,
                Ok(Received::Closed) | Err(_) => break true,
            }
        };
        if closed || said.iter().any(|m| matches!(m, NewToOld::Failed(_))) {
            said.retain(|m| *m != NewToOld::ReadyToTakeOver);
        }
        events.extend(said.into_iter().map(Event::Successor));
        closed
    }

    fn read_predecessor(&mut self, events: &mut Vec<Event>) {
        while let Some(p) = &self.predecessor {
            match p.channel.try_recv() {
                Ok(Received::Message(OldToNew::Released)) => events.push(Event::Released),
                Ok(Received::Message(OldToNew::Start { .. })) => {
                    tracing::warn!(
                        "ignored: Start from pid {}, which did not start us as a standby",
                        p.pid
                    )
                }
                Ok(Received::Message(OldToNew::State { slot, state })) => {
                    events.push(Event::InheritedState {
                        slot: slot as usize,
                        state,
                    })
                }
                Ok(Received::Empty) => return,
                Ok(Received::Closed) | Err(_) => {
                    // Closed for good: no more polling it.
                    self.predecessor = None;
                    return events.push(Event::PredecessorGone);
                }
            }
        }
    }

    fn read_signals(&mut self, events: &mut Vec<Event>) {
        for sig in self.signals.take() {
            match sig {
                SIGCHLD => {} // reaped after every wake-up
                SIGTERM | SIGINT | SIGQUIT => events.push(Event::StopSignal {
                    name: signals::name(sig),
                }),
                SIGUSR2 => events.push(Event::ReloadSignal),
                SIGHUP => tracing::info!("SIGHUP ignored: send SIGUSR2 to reload, SIGTERM to stop"),
                other => tracing::debug!("{} ignored", signals::name(other)),
            }
        }
    }

    /// Every child that ended, after what it still had to say.
    fn reap(&mut self, events: &mut Vec<Event>) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => status,
                Err(Errno::EINTR) => continue,
                Err(e) => return tracing::warn!("waitpid failed: {e}"),
            };
            let Some(pid) = status.pid() else { continue };
            let exit = Exit {
                how: describe_exit(status),
                clean: matches!(status, WaitStatus::Exited(_, 0)),
            };
            if let Some(i) = self.workers.iter().position(|w| w.pid == pid) {
                self.read_worker(pid, events);
                self.workers.remove(i);
                // What it started ends with it: it led its own process
                // group, and the group outlives it while a member lives...
                let _ = killpg(pid, Signal::SIGKILL);
                // ...and what left the group for a session of its own, now
                // orphaned to us (the child subreaper).
                pool::kill_escaped_orphans();
                events.push(Event::WorkerExited { pid, exit });
            } else if self.standby.as_ref().is_some_and(|s| s.pid() == pid) {
                let why = self.standby.take().and_then(|s| s.last_words());
                let why = why.map(|w| format!(": {w}")).unwrap_or_default();
                tracing::warn!(
                    "the standby for the next reload (pid {pid}) {}{why}",
                    exit.how
                );
            } else if self.successor.as_ref().is_some_and(|s| s.pid == pid) {
                // It may have said why before exiting.
                self.successor_messages(events);
                let reason = format!("the new generation (pid {pid}) {}", exit.how);
                events.push(Event::SuccessorGone { reason });
            } else {
                tracing::debug!("reaped pid {pid} ({})", exit.how);
            }
        }
    }
}
