//! The supervisor: one thread, one poll loop. It forks the workers, respawns
//! the ones that end, starts the next generation on SIGUSR2, steps aside
//! when that generation is ready, and stops on SIGTERM/SIGINT.
//!
//! The hot-reload protocol it runs is described in the crate docs (`main.rs`),
//! step by step, in terms of the `Phase` states below.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, getpid, ForkResult, Pid};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR2};

use crate::channel::{Channel, Message, Received};
use crate::cli::RunArgs;
use crate::control;
use crate::error::Error;
use crate::listeners::Listeners;
use crate::logging::{self, Role};
use crate::notify;
use crate::pidfile::PidFile;
use crate::priority;
use crate::reload::{self, Handoff, Inherited, InheritedEnv, Predecessor, Successor};
use crate::signals::{self, Signals};
use crate::snapshot::Snapshot;
use crate::status::{self, State, Status};
use crate::worker;

/// How the supervisor was asked to run.
pub struct Config {
    pub plugin: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub listen: Vec<SocketAddr>,
    pub workers: usize,
    pub respawn_delay: Duration,
    pub shutdown_timeout: Duration,
    pub reload_timeout: Duration,
    /// Reload a host already running on the pid file instead of failing.
    pub reload_if_running: bool,
    pub plugin_args: Vec<String>,
    /// The host binary, resolved at start: a reload execs this path, so a
    /// rebuilt host is picked up too.
    pub exe: PathBuf,
    /// The original command line, for the next generation.
    pub args: Vec<OsString>,
}

impl Config {
    pub fn from_args(run: RunArgs) -> Result<Config, Error> {
        Ok(Config {
            plugin: run
                .plugin
                .ok_or_else(|| Error::Control("--plugin PATH is required".into()))?,
            pid_file: run.pid_file,
            listen: run.listen,
            workers: usize::from(run.workers),
            respawn_delay: run.respawn_delay,
            shutdown_timeout: run.shutdown_timeout,
            reload_timeout: run.reload_timeout,
            reload_if_running: run.reload_if_running,
            plugin_args: run.plugin_args,
            exe: std::env::current_exe()
                .map_err(Error::os("cannot find the host binary's path"))?,
            args: std::env::args_os().collect(),
        })
    }
}

/// Runs a supervisor until it stops: the first generation when `inherited`
/// is `None`, otherwise the generation the previous one started.
pub fn run(config: Config, inherited: Option<InheritedEnv>) -> Result<(), Error> {
    let supervisor = match inherited {
        None => {
            logging::set_identity(Role::Supervisor, 1);
            let (reload_if_running, timeout) = (config.reload_if_running, config.reload_timeout);
            match Supervisor::first(config) {
                Err(Error::AlreadyRunning { path, .. }) if reload_if_running => {
                    // Give the running host its whole reload timeout, and some.
                    return control::reload(&path, timeout + Duration::from_secs(30));
                }
                started => started?,
            }
        }
        Some(env) => {
            let inherited = Inherited::adopt(env)?;
            logging::set_identity(Role::Supervisor, inherited.generation);
            Supervisor::successor(config, inherited)?
        }
    };
    supervisor.run()
}

struct Worker {
    pid: Pid,
    channel: Channel,
    /// False once the worker closed its end: no more polling it.
    channel_open: bool,
    loaded: bool,
    /// What its plugin said when loaded.
    can_hot_reload: bool,
    ready: bool,
    /// The reason the worker gave for failing, if it did.
    failure: Option<String>,
    killed: bool,
}

#[derive(Default)]
struct Slot {
    worker: Option<Worker>,
    respawn_at: Option<Instant>,
}

enum Phase {
    /// Waiting for every first worker to call `ready_to_take_over` (in the
    /// first generation, just to build its plugin if it cannot hot-reload).
    Starting,
    /// A new generation: SIGQUIT sent, waiting for the old one's `Released`.
    TakingOver,
    Serving,
    Stopping {
        deadline: Instant,
        result: Result<(), Error>,
    },
}

/// Where a poll event came from.
#[derive(Clone, Copy)]
enum Source {
    Worker(usize),
    Successor,
    Predecessor,
    Signals,
}

struct Supervisor {
    config: Config,
    generation: u64,
    started: Instant,
    signals: Signals,
    listeners: Listeners,
    snapshot: Snapshot,
    pid_file: Option<PidFile>,
    slots: Vec<Slot>,
    phase: Phase,
    can_hot_reload: Option<bool>,
    /// Whether this generation was started by a previous one.
    inherited: bool,
    /// While a new generation: the one we replace, until it released.
    predecessor: Option<Predecessor>,
    /// While boosted (a new generation starting, or an old one reloading,
    /// see `priority`): the nice value to return to.
    base_nice: Option<i32>,
    /// While reloading: the generation we started.
    successor: Option<Successor>,
    reloads: u64,
    last_reload: String,
    /// Whether this supervisor writes the status file (it is the live one).
    owns_status: bool,
}

impl Supervisor {
    fn first(config: Config) -> Result<Supervisor, Error> {
        let started = Instant::now();
        // Lock first, so a second host is told who runs, not that the port is taken.
        let pid_file = config
            .pid_file
            .as_deref()
            .map(PidFile::acquire)
            .transpose()?;
        let snapshot = Snapshot::take(&config.plugin)?;
        tracing::debug!("plugin snapshot taken at {:?}", started.elapsed());
        let listeners = Listeners::bind(&config.listen)?;
        Supervisor::new(config, 1, started, snapshot, listeners, pid_file)
    }

    /// On error, tells the previous generation why before returning it.
    fn successor(config: Config, inherited: Inherited) -> Result<Supervisor, Error> {
        let started = Instant::now();
        let Inherited {
            generation,
            base_nice,
            listeners,
            pid_file,
            predecessor,
        } = inherited;
        let setup = || {
            let snapshot = Snapshot::take(&config.plugin)?;
            tracing::debug!("plugin snapshot taken at {:?}", started.elapsed());
            let listeners = Listeners::inherit(listeners)?;
            if listeners.len() != config.listen.len() {
                return Err(Error::Inherit(format!(
                    "inherited {} listening sockets for {} --listen addresses",
                    listeners.len(),
                    config.listen.len()
                )));
            }
            let pid_file = match (&config.pid_file, pid_file) {
                (Some(path), Some(fd)) => Some(PidFile::inherit(path, fd)?),
                (None, None) => None,
                _ => {
                    return Err(Error::Inherit(
                        "the pid file and its inherited lock do not match".into(),
                    ))
                }
            };
            Ok((snapshot, listeners, pid_file))
        };
        match setup().and_then(|(snapshot, listeners, pid_file)| {
            Supervisor::new(config, generation, started, snapshot, listeners, pid_file)
        }) {
            Ok(mut supervisor) => {
                // The previous generation exec'd us with every signal
                // blocked; our handlers are installed now.
                if let Err(e) = signals::restore(&nix::sys::signal::SigSet::empty()) {
                    tracing::warn!("cannot unblock signals: {e}");
                }
                supervisor.predecessor = Some(predecessor);
                supervisor.base_nice = Some(base_nice);
                supervisor.inherited = true;
                supervisor.owns_status = false;
                Ok(supervisor)
            }
            Err(e) => {
                let _ = predecessor.channel.send(&Message::Failed(e.to_string()));
                Err(e)
            }
        }
    }

    fn new(
        config: Config,
        generation: u64,
        started: Instant,
        snapshot: Snapshot,
        listeners: Listeners,
        pid_file: Option<PidFile>,
    ) -> Result<Supervisor, Error> {
        let signals = Signals::install().map_err(Error::os("cannot install signal handlers"))?;
        // Orphans of a failed new generation are re-parented to us and reaped.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::debug!("cannot become a child subreaper: {e}");
        }
        let slots = (0..config.workers).map(|_| Slot::default()).collect();
        Ok(Supervisor {
            generation,
            started,
            signals,
            listeners,
            snapshot,
            pid_file,
            slots,
            phase: Phase::Starting,
            can_hot_reload: None,
            inherited: false,
            predecessor: None,
            base_nice: None,
            successor: None,
            reloads: 0,
            last_reload: String::new(),
            owns_status: true,
            config,
        })
    }

    fn run(mut self) -> Result<(), Error> {
        tracing::info!(
            "starting {} worker(s) of plugin {}{}",
            self.slots.len(),
            self.config.plugin.display(),
            match self.listeners.len() {
                0 => String::new(),
                _ => format!(", listening on {}", self.listeners.local_addrs().join(" ")),
            }
        );
        self.write_status();
        for slot in 0..self.slots.len() {
            if let Err(e) = self.spawn_worker(slot) {
                self.fail_start(e.to_string());
                break;
            }
        }
        loop {
            if matches!(self.phase, Phase::Stopping { .. })
                && self.slots.iter().all(|s| s.worker.is_none())
            {
                let Phase::Stopping { result, .. } =
                    std::mem::replace(&mut self.phase, Phase::Serving)
                else {
                    unreachable!("checked just above")
                };
                match &result {
                    Ok(()) => tracing::info!("all workers gone: exiting"),
                    Err(_) => tracing::debug!("all workers gone: exiting"),
                }
                return result;
            }
            self.wait_and_dispatch();
            self.reap();
            self.run_timers();
        }
    }

    fn wait_and_dispatch(&mut self) {
        let mut sources = Vec::with_capacity(self.slots.len() + 3);
        let mut fds = Vec::with_capacity(self.slots.len() + 3);
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(w) = slot.worker.as_ref().filter(|w| w.channel_open) {
                sources.push(Source::Worker(i));
                fds.push(PollFd::new(w.channel.as_fd(), PollFlags::POLLIN));
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
        // Last, so that a worker's final words are read before its exit is handled.
        sources.push(Source::Signals);
        fds.push(PollFd::new(self.signals.as_fd(), PollFlags::POLLIN));

        let timeout = self.next_deadline().map_or(PollTimeout::NONE, |deadline| {
            let wait = deadline.saturating_duration_since(Instant::now());
            // Round up, so a deadline is never polled for just before it is due.
            PollTimeout::try_from(wait + Duration::from_micros(999)).unwrap_or(PollTimeout::MAX)
        });
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => tracing::error!("poll failed: {e}"),
        }
        let ready: Vec<Source> = sources
            .iter()
            .zip(&fds)
            .filter(|(_, fd)| fd.any().unwrap_or(false))
            .map(|(source, _)| *source)
            .collect();
        drop(fds);
        for source in ready {
            match source {
                Source::Worker(i) => self.read_worker(i),
                Source::Successor => self.read_successor(),
                Source::Predecessor => self.read_predecessor(),
                Source::Signals => self.handle_signals(),
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let stopping = match &self.phase {
            Phase::Stopping { deadline, .. } => Some(*deadline),
            _ => None,
        };
        let reload = self
            .successor
            .as_ref()
            .map(|s| s.started + self.config.reload_timeout);
        let respawn = self.slots.iter().filter_map(|s| s.respawn_at).min();
        [stopping, reload, respawn].into_iter().flatten().min()
    }

    // ---- workers ----

    fn spawn_worker(&mut self, slot: usize) -> Result<(), Error> {
        let (ours, theirs) =
            Channel::pair().map_err(Error::os("cannot create a worker channel"))?;
        let spec = worker::Spec {
            generation: self.generation,
            supervisor: getpid(),
            snapshot: &self.snapshot,
            listener_fds: self.listeners.raw_fds(),
            plugin_args: &self.config.plugin_args,
            // A new generation lets its workers go only once it has taken over.
            go: !self.inherited || matches!(self.phase, Phase::Serving),
            base_nice: self.base_nice,
        };
        let mask = signals::block_all().map_err(Error::os("cannot block signals"))?;
        // SAFETY: the supervisor is single-threaded, so the child is a
        // faithful copy with no lock held by a vanished thread.
        let forked = unsafe { fork() };
        match forked {
            Ok(ForkResult::Child) => {
                drop(ours);
                worker::run(theirs, spec)
            }
            Ok(ForkResult::Parent { child }) => {
                let _ = signals::restore(&mask);
                tracing::debug!("worker pid {child} started in slot {slot}");
                self.slots[slot].worker = Some(Worker {
                    pid: child,
                    channel: ours,
                    channel_open: true,
                    loaded: false,
                    can_hot_reload: false,
                    ready: false,
                    failure: None,
                    killed: false,
                });
                Ok(())
            }
            Err(e) => {
                let _ = signals::restore(&mask);
                Err(Error::Os {
                    what: "cannot fork a worker",
                    source: e.into(),
                })
            }
        }
    }

    fn read_worker(&mut self, slot: usize) {
        while let Some(w) = self.slots[slot].worker.as_mut().filter(|w| w.channel_open) {
            match w.channel.try_recv() {
                Ok(Received::Message(message)) => self.on_worker_message(slot, message),
                Ok(Received::Empty) => break,
                Ok(Received::Closed) => w.channel_open = false,
                Err(e) => {
                    tracing::warn!("worker pid {}: channel error: {e}", w.pid);
                    w.channel_open = false;
                }
            }
        }
    }

    fn on_worker_message(&mut self, slot: usize, message: Message) {
        let Some(w) = self.slots[slot].worker.as_mut() else {
            return;
        };
        match message {
            Message::Loaded { can_hot_reload } => {
                w.loaded = true;
                w.can_hot_reload = can_hot_reload;
                if self
                    .can_hot_reload
                    .is_some_and(|known| known != can_hot_reload)
                {
                    tracing::warn!("workers disagree on can_do_hot_reload(); using the latest: {can_hot_reload}");
                }
                self.can_hot_reload = Some(can_hot_reload);
                self.check_started();
            }
            Message::Ready => {
                w.ready = true;
                self.check_started();
            }
            Message::Failed(reason) => w.failure = Some(reason),
            other => tracing::warn!("worker pid {}: unexpected message {other:?}", w.pid),
        }
    }

    fn worker_exited(&mut self, slot: usize, status: WaitStatus) {
        let Some(mut w) = self.slots[slot].worker.take() else {
            return;
        };
        // Its last words may still be unread.
        if w.channel_open {
            w.failure = last_failure(&w.channel).or(w.failure);
        }
        let how = describe(status);
        let because = w
            .failure
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        match self.phase {
            Phase::Stopping { .. } => {
                tracing::info!("worker pid {} stopped ({how}){because}", w.pid)
            }
            Phase::Starting => {
                tracing::debug!("worker pid {} {how}{because}", w.pid);
                let problem = w
                    .failure
                    .unwrap_or_else(|| format!("worker pid {} {how} before it was ready", w.pid));
                self.fail_start(problem);
            }
            Phase::TakingOver | Phase::Serving => {
                let delay = self.config.respawn_delay;
                if w.failure.is_none() && matches!(status, WaitStatus::Exited(_, 0)) {
                    tracing::info!("worker pid {} {how}; respawning in {delay:?}", w.pid);
                } else {
                    tracing::warn!(
                        "worker pid {} {how}{because}; respawning in {delay:?}",
                        w.pid
                    );
                }
                self.slots[slot].respawn_at = Some(Instant::now() + delay);
            }
        }
    }

    // ---- starting and taking over ----

    fn check_started(&mut self) {
        if !matches!(self.phase, Phase::Starting) {
            return;
        }
        let all =
            |f: fn(&Worker) -> bool| self.slots.iter().all(|s| s.worker.as_ref().is_some_and(f));
        if !self.inherited {
            // Started once every plugin is built and, if it can hot-reload
            // (and so calls ready_to_take_over), initialised.
            if all(|w| w.loaded && (w.ready || !w.can_hot_reload)) {
                self.phase = Phase::Serving;
                self.write_status();
                notify::serving(self.generation);
                tracing::info!("serving, started in {:?}", self.started.elapsed());
            }
            return;
        }
        if !all(|w| w.ready) {
            return;
        }
        let Some(predecessor) = self.predecessor.as_ref().map(|p| p.pid) else {
            return self.take_over();
        };
        tracing::info!(
            "all workers ready in {:?}: asking pid {predecessor} to step aside",
            self.started.elapsed()
        );
        match kill(predecessor, Signal::SIGQUIT) {
            Ok(()) => self.phase = Phase::TakingOver,
            Err(e) => {
                tracing::warn!("cannot signal pid {predecessor}: {e}; taking over");
                self.take_over();
            }
        }
    }

    /// The start failed: stop, and tell the previous generation if there is one.
    fn fail_start(&mut self, problem: String) {
        if let Some(p) = self.predecessor.take() {
            let _ = p.channel.send(&Message::Failed(problem.clone()));
        }
        self.begin_stop(Err(Error::Start(problem)));
    }

    fn read_predecessor(&mut self) {
        let Some(p) = &self.predecessor else { return };
        match p.channel.try_recv() {
            Ok(Received::Message(Message::Released)) => self.take_over(),
            Ok(Received::Empty) => {}
            Ok(Received::Message(other)) => {
                tracing::warn!("unexpected message from the previous generation: {other:?}")
            }
            Ok(Received::Closed) | Err(_) => {
                tracing::info!("the previous generation (pid {}) is gone", p.pid);
                self.predecessor = None;
                match self.phase {
                    Phase::TakingOver => self.take_over(),
                    // Takes over as soon as every worker is ready.
                    Phase::Starting => self.check_started(),
                    _ => {}
                }
            }
        }
    }

    fn take_over(&mut self) {
        let predecessor = self.predecessor.take();
        self.phase = Phase::Serving;
        self.owns_status = true;
        self.unboost();
        if let Some(pid_file) = &self.pid_file {
            if let Err(e) = pid_file.take_over() {
                tracing::error!("{e}");
            }
        }
        for w in self.slots.iter().filter_map(|s| s.worker.as_ref()) {
            if let Err(e) = w.channel.send(&Message::Go) {
                tracing::warn!("worker pid {}: cannot send Go: {e}", w.pid);
            }
        }
        // After Go: nothing the workers wait for should come first.
        self.write_status();
        notify::serving(self.generation);
        match predecessor {
            Some(p) => tracing::info!(
                "took over from pid {} in {:?}",
                p.pid,
                self.started.elapsed()
            ),
            None => tracing::info!("took over in {:?}", self.started.elapsed()),
        }
    }

    // ---- reloading (as the old generation) ----

    fn start_reload(&mut self) {
        if let Some(s) = &self.successor {
            tracing::info!(
                "SIGUSR2 ignored: generation {} (pid {}) is already taking over",
                s.generation,
                s.pid
            );
            return;
        }
        if !matches!(self.phase, Phase::Serving) || !self.owns_status {
            tracing::info!("SIGUSR2 ignored: this generation is not serving");
            return;
        }
        self.reloads += 1;
        if self.can_hot_reload != Some(true) {
            self.last_reload =
                "ignored: the plugin cannot hot-reload (its can_do_hot_reload() is false)".into();
            tracing::info!("SIGUSR2 {}", self.last_reload);
            self.write_status();
            return;
        }
        // The whole takeover runs with a head start, when allowed: our part
        // of it too (handling SIGQUIT), and the new generation's start-up.
        let base_nice = priority::current().unwrap_or(0);
        if priority::set(0, base_nice - priority::BOOST).is_ok() {
            self.base_nice = Some(base_nice);
        }
        let handoff = Handoff {
            exe: &self.config.exe,
            args: &self.config.args,
            generation: self.generation + 1,
            listener_fds: self.listeners.raw_fds(),
            pid_file_fd: self.pid_file.as_ref().map(|p| p.as_fd().as_raw_fd()),
            base_nice,
        };
        match reload::spawn(&handoff) {
            Ok(successor) => {
                tracing::info!(
                    "reload: generation {} starting as pid {}",
                    successor.generation,
                    successor.pid
                );
                notify::reloading(successor.generation);
                self.successor = Some(successor);
                self.write_status();
            }
            Err(e) => self.reload_failed(e.to_string()),
        }
    }

    fn read_successor(&mut self) {
        let Some(s) = &self.successor else { return };
        match s.channel.try_recv() {
            Ok(Received::Message(Message::Failed(reason))) => self.reload_failed(reason),
            Ok(Received::Empty) => {}
            Ok(Received::Message(other)) => {
                tracing::warn!("unexpected message from the new generation: {other:?}")
            }
            Ok(Received::Closed) | Err(_) => {
                self.kill_successor();
                self.reload_failed("the new generation exited before taking over".into());
            }
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

    /// Kills the whole new generation (its own process group).
    fn kill_successor(&self) {
        if let Some(s) = &self.successor {
            let _ = killpg(s.pid, Signal::SIGKILL);
        }
    }

    fn reload_failed(&mut self, reason: String) {
        self.successor = None;
        self.unboost();
        tracing::error!("reload failed: {reason}");
        notify::reload_failed(&reason);
        self.last_reload = format!("failed: {reason}");
        self.write_status();
    }

    /// SIGQUIT: the new generation is ready; stop our workers and let it go.
    fn step_aside(&mut self) {
        let Some(successor) = self.successor.take() else {
            return self.on_stop_signal(SIGQUIT);
        };
        tracing::info!(
            "generation {} (pid {}) is ready: stepping aside",
            successor.generation,
            successor.pid
        );
        // The status file is the new generation's from now on.
        self.owns_status = false;
        notify::handed_over(successor.pid.as_raw() as u32, successor.generation);
        self.begin_stop(Ok(()));
        if let Err(e) = successor.channel.send(&Message::Released) {
            tracing::warn!("cannot tell the new generation it may go: {e}");
        }
    }

    // ---- stopping ----

    fn on_stop_signal(&mut self, sig: i32) {
        if matches!(self.phase, Phase::Stopping { .. }) {
            tracing::warn!("{} again: killing the workers now", signals::name(sig));
            return self.kill_workers();
        }
        tracing::info!("{}: stopping", signals::name(sig));
        if let Some(s) = self.successor.take() {
            tracing::info!(
                "abandoning the reload to generation {} (pid {})",
                s.generation,
                s.pid
            );
            let _ = kill(s.pid, Signal::SIGTERM);
        }
        if let Some(p) = self.predecessor.take() {
            let why = format!(
                "the new generation got {} before taking over",
                signals::name(sig)
            );
            let _ = p.channel.send(&Message::Failed(why));
        }
        self.begin_stop(Ok(()));
    }

    fn begin_stop(&mut self, result: Result<(), Error>) {
        if matches!(self.phase, Phase::Stopping { .. }) {
            return;
        }
        let timeout = self.config.shutdown_timeout;
        for slot in &mut self.slots {
            slot.respawn_at = None;
            if let Some(w) = &slot.worker {
                if let Err(e) = w.channel.send(&Message::Stop) {
                    tracing::debug!("worker pid {}: cannot send Stop: {e}", w.pid);
                }
            }
        }
        tracing::debug!("workers told to stop; killing any still alive in {timeout:?}");
        if self.owns_status {
            notify::stopping();
        }
        self.phase = Phase::Stopping {
            deadline: Instant::now() + timeout,
            result,
        };
        self.write_status();
    }

    fn kill_workers(&mut self) {
        for w in self.slots.iter_mut().filter_map(|s| s.worker.as_mut()) {
            if !w.killed {
                let _ = kill(w.pid, Signal::SIGKILL);
                w.killed = true;
            }
        }
    }

    // ---- signals, children, timers ----

    fn handle_signals(&mut self) {
        for sig in self.signals.take() {
            match sig {
                SIGCHLD => {} // reaped after every wake-up
                SIGTERM | SIGINT => self.on_stop_signal(sig),
                SIGQUIT => self.step_aside(),
                SIGUSR2 => self.start_reload(),
                SIGHUP => tracing::info!("SIGHUP ignored: send SIGUSR2 to reload, SIGTERM to stop"),
                other => tracing::debug!("{} ignored", signals::name(other)),
            }
        }
    }

    fn reap(&mut self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => status,
                Err(Errno::EINTR) => continue,
                Err(e) => return tracing::warn!("waitpid failed: {e}"),
            };
            let Some(pid) = status.pid() else { continue };
            if let Some(slot) = self
                .slots
                .iter()
                .position(|s| s.worker.as_ref().is_some_and(|w| w.pid == pid))
            {
                self.worker_exited(slot, status);
            } else if let Some(successor) = self.successor.as_ref().filter(|s| s.pid == pid) {
                // It may have said why before exiting (a failed exec does).
                let reason = last_failure(&successor.channel).unwrap_or_else(|| {
                    format!("the new generation (pid {pid}) {}", describe(status))
                });
                self.kill_successor();
                self.reload_failed(reason);
            } else {
                tracing::debug!("reaped pid {pid} ({})", describe(status));
            }
        }
    }

    fn run_timers(&mut self) {
        let now = Instant::now();
        if let Phase::Stopping { deadline, .. } = self.phase {
            if now >= deadline
                && self
                    .slots
                    .iter()
                    .any(|s| s.worker.as_ref().is_some_and(|w| !w.killed))
            {
                tracing::warn!(
                    "workers did not stop within {:?}: killing them",
                    self.config.shutdown_timeout
                );
                self.kill_workers();
            }
        }
        if let Some(s) = &self.successor {
            if now >= s.started + self.config.reload_timeout {
                self.kill_successor();
                let timeout = self.config.reload_timeout;
                self.reload_failed(format!(
                    "the new generation did not take over within {timeout:?}"
                ));
            }
        }
        if matches!(self.phase, Phase::Serving | Phase::TakingOver) {
            for slot in 0..self.slots.len() {
                if self.slots[slot].respawn_at.is_some_and(|at| at <= now) {
                    self.slots[slot].respawn_at = None;
                    if let Err(e) = self.spawn_worker(slot) {
                        tracing::error!("{e}; trying again in {:?}", self.config.respawn_delay);
                        self.slots[slot].respawn_at = Some(now + self.config.respawn_delay);
                    }
                }
            }
        }
    }

    fn write_status(&self) {
        let Some(pid_file) = self.pid_file.as_ref().filter(|_| self.owns_status) else {
            return;
        };
        let state = match self.phase {
            Phase::Starting | Phase::TakingOver => State::Starting,
            Phase::Serving if self.successor.is_some() => State::Reloading,
            Phase::Serving => State::Serving,
            Phase::Stopping { .. } => State::Stopping,
        };
        let status = Status {
            pid: std::process::id(),
            generation: self.generation,
            state,
            reloads: self.reloads,
            last_reload: self.last_reload.clone(),
            listen: self.listeners.local_addrs(),
        };
        if let Err(e) = status::write(&status::path_for(pid_file.path()), &status) {
            tracing::warn!("cannot write the status file: {e}");
        }
    }
}

/// The reason in the last `Failed` message still unread on `channel`, if any.
fn last_failure(channel: &Channel) -> Option<String> {
    let mut reason = None;
    while let Ok(Received::Message(message)) = channel.try_recv() {
        if let Message::Failed(why) = message {
            reason = Some(why);
        }
    }
    reason
}

/// "exited with status 1", "was killed by SIGKILL".
fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, sig, core) => {
            format!(
                "was killed by {}{}",
                sig.as_str(),
                if core { " (core dumped)" } else { "" }
            )
        }
        other => format!("changed state: {other:?}"),
    }
}
