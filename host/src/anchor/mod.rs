//! The anchor: the process the user (or systemd, Docker, a shell) started,
//! for the service's whole life. It never loads the plugin. It binds the
//! listening sockets and locks the pid file once, and every generation
//! inherits both; it is a child subreaper, so every orphan below it (an old
//! supervisor's successor, a dead supervisor's draining workers) is reaped
//! here, as PID 1 must; it forwards stop, reload and hang-up signals to the
//! supervisor in charge; it alone talks to systemd, so the service keeps one
//! MAINPID; and it starts a new generation when the one in charge dies
//! without having said it stops.
//!
//! Supervisors talk to it on one SEQPACKET channel whose generation end
//! every generation inherits. The anchor never writes to it: its exit is
//! the channel's hang-up, which every supervisor sees and answers with a
//! graceful stop.

mod children;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR2};

use crate::channel::{AnchorEnd, Received, ToAnchor, ToAnchorEnd};
use crate::control;
use crate::daemon::Readiness;
use crate::error::Error;
use crate::footprint;
use crate::listeners::Listeners;
use crate::logging::{self, Role};
use crate::notify;
use crate::pidfile::PidFile;
use crate::privileges;
use crate::process::{describe_exit, pidfd_open};
use crate::reload::{self, Handoff};
use crate::signals::{self, Signals};
use crate::supervisor::Config;

/// The longest wait before restarting a generation that keeps dying.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(5);
/// A generation that served this long before dying resets the backoff.
const STABLE: Duration = Duration::from_secs(10);

/// A supervisor the anchor knows of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Generation {
    pid: Pid,
    number: u64,
    since: Instant,
}

struct Anchor {
    config: Config,
    signals: Signals,
    listeners: Listeners,
    pid_file: Option<PidFile>,
    channel: AnchorEnd,
    /// The generations' end, handed to each one started.
    their_end: ToAnchorEnd,
    since: u64,
    /// The supervisor in charge (it said it serves).
    in_charge: Option<Generation>,
    /// A pidfd of the supervisor in charge: readable once it exits. It may
    /// be the anchor's child or a previous generation's, so `waitpid` alone
    /// does not see every exit.
    in_charge_fd: Option<OwnedFd>,
    /// A generation the anchor started that does not serve yet.
    starting: Option<Generation>,
    /// The generation the one in charge is reloading into.
    successor: Option<Pid>,
    last_generation: u64,
    /// Whether any generation ever served (a first start that fails ends
    /// the service).
    served: bool,
    /// The service is stopping: exit once every process below is gone.
    stopping: bool,
    exit_code: i32,
    restart_at: Option<Instant>,
    restarts: u32,
    last_failure: Option<String>,
    readiness: Option<Readiness>,
}

/// Runs the service until it stops; returns its exit code.
pub fn run(config: Config, readiness: Option<Readiness>) -> Result<i32, Error> {
    logging::set_identity(Role::Anchor, 0);
    // Lock first, so a second host is told who runs, not that the port is taken.
    let pid_file = match config.pid_file.as_deref().map(PidFile::acquire).transpose() {
        Err(Error::AlreadyRunning { path, .. }) if config.reload_if_running => {
            // Give the running host its whole reload timeout, and some.
            let timeout = config
                .reload_timeout
                .saturating_add(Duration::from_secs(30));
            return control::reload(&path, timeout).map(|()| 0);
        }
        other => other?,
    };
    let listeners = Listeners::bind(&config.listen)?;
    // Everything that needs root is done: the rest, and every process
    // below, runs as --user.
    privileges::drop_to(config.user.as_deref(), config.group.as_deref())?;
    let signals = Signals::install().map_err(Error::os("cannot install signal handlers"))?;
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| Error::os("cannot become a child subreaper")(e.into()))?;
    let (channel, their_end) =
        AnchorEnd::pair().map_err(Error::os("cannot create the anchor channel"))?;
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut anchor = Anchor {
        config,
        signals,
        listeners,
        pid_file,
        channel,
        their_end,
        since,
        in_charge: None,
        in_charge_fd: None,
        starting: None,
        successor: None,
        last_generation: 0,
        served: false,
        stopping: false,
        exit_code: 0,
        restart_at: None,
        restarts: 0,
        last_failure: None,
        readiness,
    };
    anchor.start_generation()?;
    footprint::trim();
    anchor.run()
}

impl Anchor {
    fn run(mut self) -> Result<i32, Error> {
        loop {
            if self.stopping && self.in_charge.is_none() && self.starting.is_none() {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Err(Errno::ECHILD) => break,
                    Ok(status) if status != WaitStatus::StillAlive => {
                        self.child_exited(status);
                        continue;
                    }
                    _ => {}
                }
            }
            let timeout = self.restart_at.map_or(PollTimeout::NONE, |at| {
                let wait = at.saturating_duration_since(Instant::now());
                PollTimeout::try_from(wait.saturating_add(Duration::from_micros(999)))
                    .unwrap_or(PollTimeout::MAX)
            });
            let mut fds = vec![
                PollFd::new(self.channel.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(fd) = &self.in_charge_fd {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    return Err(Error::Os {
                        what: "poll failed",
                        source: e.into(),
                    })
                }
            }
            let ready: Vec<bool> = fds.iter().map(|f| f.any().unwrap_or(false)).collect();
            drop(fds);
            // Messages first, even if they came after the poll: a signal is
            // forwarded to the supervisor that last said it is in charge.
            self.read_messages();
            if ready[1] {
                self.handle_signals();
            }
            self.reap();
            if ready.get(2) == Some(&true) {
                self.in_charge_exited();
            }
            if self.restart_at.is_some_and(|at| at <= Instant::now()) {
                self.restart_at = None;
                if let Err(e) = self.start_generation() {
                    tracing::error!("{e}");
                    self.schedule_restart();
                }
            }
        }
        tracing::info!(
            "every process is gone: exiting with status {}",
            self.exit_code
        );
        if let Some(readiness) = self.readiness.take() {
            let why = self.last_failure.take().unwrap_or_else(|| {
                format!(
                    "the host stopped before serving (status {})",
                    self.exit_code
                )
            });
            readiness.failed(&why);
        }
        Ok(self.exit_code)
    }

    /// Starts the next generation, with no predecessor.
    fn start_generation(&mut self) -> Result<(), Error> {
        let number = self.last_generation + 1;
        let handoff = Handoff {
            exe: &self.config.exe,
            args: &self.config.args,
            generation: number,
            listener_fds: self.listeners.raw_fds(),
            pid_file_fd: self.pid_file.as_ref().map(|p| p.as_fd().as_raw_fd()),
            anchor_fd: self.their_end.as_raw_fd(),
            anchor_pid: std::process::id(),
            anchor_since: self.since,
            base_nice: None,
        };
        let pid = reload::start(&handoff)?;
        self.last_generation = number;
        tracing::info!("generation {number} starting as pid {pid}");
        self.starting = Some(Generation {
            pid,
            number,
            since: Instant::now(),
        });
        Ok(())
    }

    fn read_messages(&mut self) {
        loop {
            match self.channel.try_recv() {
                Ok(Received::Message(message)) => self.on_message(message),
                Ok(Received::Empty) | Ok(Received::Closed) => return,
                Err(e) => return tracing::warn!("anchor channel: {e}"),
            }
        }
    }

    fn on_message(&mut self, message: ToAnchor) {
        match message {
            ToAnchor::Serving { pid, generation } => {
                let pid = Pid::from_raw(pid as i32);
                let since = match self.in_charge {
                    Some(g) if g.pid == pid => g.since,
                    _ => Instant::now(),
                };
                if self.in_charge.is_none_or(|g| g.pid != pid) {
                    self.in_charge_fd = pidfd_open(pid)
                        .map_err(|e| tracing::warn!("cannot watch pid {pid}: {e}"))
                        .ok();
                }
                self.in_charge = Some(Generation {
                    pid,
                    number: generation,
                    since,
                });
                self.last_generation = self.last_generation.max(generation);
                if self.starting.is_some_and(|g| g.pid == pid) {
                    self.starting = None;
                }
                if self.successor == Some(pid) {
                    self.successor = None;
                }
                self.served = true;
                // Started: the pid file stays (a failed start removes it).
                if let Some(pid_file) = &mut self.pid_file {
                    pid_file.commit();
                }
                notify::serving(generation);
                if let Some(readiness) = self.readiness.take() {
                    readiness.serving();
                }
            }
            ToAnchor::Reloading {
                successor,
                generation,
            } => {
                self.successor = Some(Pid::from_raw(successor as i32));
                self.last_generation = self.last_generation.max(generation);
                notify::reloading(generation);
            }
            ToAnchor::ReloadFailed(reason) => {
                self.successor = None;
                notify::reload_failed(&reason);
            }
            ToAnchor::Stopping { pid } => {
                if self.in_charge.is_some_and(|g| g.pid.as_raw() as u32 == pid) {
                    self.stopping = true;
                    notify::stopping();
                }
            }
            ToAnchor::Failed(reason) => self.last_failure = Some(reason),
        }
    }

    fn handle_signals(&mut self) {
        for sig in self.signals.take() {
            match sig {
                SIGCHLD => {} // reaped after every wake-up
                SIGTERM | SIGINT | SIGQUIT => {
                    if !self.stopping {
                        tracing::info!("{}: stopping the service", signals::name(sig));
                        notify::stopping();
                    }
                    self.stopping = true;
                    self.restart_at = None;
                    self.forward(sig);
                }
                SIGUSR2 | SIGHUP => self.forward(sig),
                other => tracing::debug!("{} ignored", signals::name(other)),
            }
        }
    }

    /// Passes a signal on to the supervisor in charge (or starting).
    fn forward(&self, sig: i32) {
        let successor = self.successor.map(|pid| Generation {
            pid,
            number: self.last_generation,
            since: Instant::now(),
        });
        // The one in charge; else one that starts (a first generation, or
        // a successor whose predecessor died: it takes charge shortly).
        let Some(target) = self.in_charge.or(self.starting).or(successor) else {
            return tracing::info!("{} not forwarded: no supervisor runs", signals::name(sig));
        };
        let Ok(signal) = Signal::try_from(sig) else {
            return;
        };
        tracing::debug!("forwarding {} to pid {}", signals::name(sig), target.pid);
        if let Err(e) = kill(target.pid, signal) {
            tracing::warn!(
                "cannot forward {} to pid {}: {e}",
                signals::name(sig),
                target.pid
            );
        }
    }
}
