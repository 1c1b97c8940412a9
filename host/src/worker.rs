//! The worker: a forked child of the supervisor that loads the plugin
//! snapshot and runs its `supervised_process`.
//!
//! Right after fork it puts signal handling back to defaults, asks the
//! kernel for SIGTERM when the supervisor dies, and closes every descriptor
//! it must not hold (the pid-file lock above all). A link thread then
//! watches the supervisor channel and the worker's own SIGTERM/SIGINT, and
//! turns any of Stop, hang-up or signal into one atomic flag, which is all
//! `ping_supervisor` reads.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;

use abi_stable::library::{LibraryError, RootModule};
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RStr, RString, RVec};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::{getppid, Pid};
use plugin_api::ffi::{HostServices, HostServices_TO, PluginModuleRef, API_VERSION};

use crate::channel::{FromWorker, Received, StopReason, ToWorker, WorkerEnd};
use crate::heartbeat::Heartbeat;
use crate::logging::{self, Role};
use crate::snapshot::Snapshot;
use crate::{priority, signals};

/// Exit codes, for the supervisor's log.
const EXIT_OK: i32 = 0;
const EXIT_PLUGIN_FAILED: i32 = 1;
const EXIT_NOT_STARTED: i32 = 2;
const EXIT_SETUP_FAILED: i32 = 3;

/// What a new worker needs to know, copied from the supervisor at fork.
pub struct Spec<'a> {
    pub generation: u64,
    pub supervisor: Pid,
    pub snapshot: &'a Snapshot,
    pub listener_fds: Vec<RawFd>,
    pub plugin_args: &'a [String],
    /// Whether `ready_to_take_over` may return at once.
    pub go: bool,
    /// The nice value to serve at, if the supervisor is boosted (see
    /// `priority`): taken at `Go`, or at once if `go` is already true.
    pub base_nice: Option<i32>,
    /// With `--watchdog`: the page `ping_supervisor` beats in.
    pub heartbeat: Option<&'static Heartbeat>,
}

/// The worker's whole life, in the forked child. Never returns.
pub fn run(channel: WorkerEnd, spec: Spec<'_>) -> ! {
    // Nothing may unwind out of here into the supervisor code we were forked from.
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| live(channel, spec)))
        .unwrap_or(EXIT_SETUP_FAILED);
    std::process::exit(code)
}

fn live(channel: WorkerEnd, spec: Spec<'_>) -> i32 {
    logging::set_identity(Role::Worker, spec.generation);
    let signal_fd = match prepare(&channel, &spec) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = channel.send(&FromWorker::Failed(format!("worker setup failed: {e}")));
            return EXIT_SETUP_FAILED;
        }
    };
    if let Some(nice) = spec.base_nice.filter(|_| spec.go) {
        let _ = priority::set(0, nice);
    }
    let link = match Link::new(channel, spec.go, spec.base_nice) {
        Ok(link) => Arc::new(link),
        Err((channel, e)) => {
            let _ = channel.send(&FromWorker::Failed(format!("worker setup failed: {e}")));
            return EXIT_SETUP_FAILED;
        }
    };
    if let Err(e) = link.watch(signal_fd) {
        return link.fail(EXIT_SETUP_FAILED, format!("worker setup failed: {e}"));
    }

    let started = Instant::now();
    let module = match PluginModuleRef::load_from_file(&spec.snapshot.load_path()) {
        Ok(module) => module,
        Err(e) => return link.fail(EXIT_NOT_STARTED, describe_load_error(&e, spec.snapshot)),
    };
    tracing::debug!(
        "plugin {} loaded in {:?}",
        spec.snapshot.source().display(),
        started.elapsed()
    );
    let services = WorkerServices {
        link: Arc::clone(&link),
        heartbeat: spec.heartbeat,
        generation: spec.generation,
        listener_fds: spec.listener_fds.clone(),
        max_log_level: logging::max_level(),
    };
    let args: RVec<RString> = spec
        .plugin_args
        .iter()
        .map(|a| RString::from(a.as_str()))
        .collect();
    let mut plugin =
        match module.new_plugin()(args, HostServices_TO::from_value(services, TD_Opaque)) {
            RResult::ROk(plugin) => plugin,
            RResult::RErr(e) => return link.fail(EXIT_NOT_STARTED, e.into()),
        };
    let can_hot_reload = plugin.can_do_hot_reload();
    if link
        .channel
        .send(&FromWorker::Loaded { can_hot_reload })
        .is_err()
    {
        tracing::debug!("the supervisor is gone before the plugin ran");
    }
    tracing::debug!(can_hot_reload, "plugin built in {:?}", started.elapsed());

    let outcome = plugin.run().into_result();
    if let RResult::RErr(e) = plugin.shutdown() {
        tracing::error!("{e}");
    }
    match outcome {
        Ok(()) => EXIT_OK,
        Err(e) => link.fail(EXIT_PLUGIN_FAILED, e.into()),
    }
}

/// The first steps after fork: signals, parent-death signal, descriptors.
/// Returns the signalfd that reports this worker's own SIGTERM and SIGINT.
fn prepare(channel: &WorkerEnd, spec: &Spec<'_>) -> std::io::Result<SignalFd> {
    signals::reset_to_default()?;
    // Only the supervisor talks to systemd. This process has one thread yet.
    std::env::remove_var("NOTIFY_SOCKET");
    // SIGTERM is a graceful stop; it backs up the channel hang-up.
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
    // Its own process group: whatever it forks is killed with the group
    // when it ends (the supervisor kills the group), and a terminal's
    // Ctrl-C reaches only the anchor.
    nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
    if getppid() != spec.supervisor {
        return Err(std::io::Error::other(
            "the supervisor exited before the worker started",
        ));
    }
    let mut keep = vec![0, 1, 2, channel.as_raw_fd(), spec.snapshot.raw_fd()];
    keep.extend(&spec.listener_fds);
    close_all_but(&keep)?;

    // SIGTERM and SIGINT are read from a signalfd by the link thread, so they
    // stay blocked in every thread (threads inherit the mask); all others
    // are unblocked again (the supervisor forked with all blocked).
    let mut stop_signals = SigSet::empty();
    stop_signals.add(Signal::SIGTERM);
    stop_signals.add(Signal::SIGINT);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&stop_signals), None)?;
    Ok(SignalFd::with_flags(&stop_signals, SfdFlags::SFD_CLOEXEC)?)
}

/// Closes every descriptor of this process not listed in `keep`.
fn close_all_but(keep: &[RawFd]) -> std::io::Result<()> {
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open.into_iter().filter(|fd| !keep.contains(fd)) {
        // SAFETY: the worker owns no Rust handle to these descriptors: they
        // are the supervisor's, inherited across fork, and nothing in this
        // process uses them after this point. EBADF (the read_dir handle,
        // already closed) is harmless.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// One line for why the plugin could not be loaded.
fn describe_load_error(err: &LibraryError, snapshot: &Snapshot) -> String {
    let source = snapshot.source().display();
    let rebuild = format!("rebuild it against plugin-api {API_VERSION}");
    match err {
        LibraryError::OpenError { err, .. } => {
            let detail = err.to_string().replace(&snapshot.load_path().display().to_string(), &source.to_string());
            format!("plugin {source}: cannot be loaded: {detail}")
        }
        LibraryError::GetSymbolError { .. } => {
            format!("plugin {source}: has no plugin root module (does the crate call plugin_api::export_plugin!?)")
        }
        LibraryError::IncompatibleVersionNumber { actual_version, .. } => format!(
            "plugin {source}: was built against plugin-api {actual_version}, incompatible with this host's {API_VERSION}; {rebuild}"
        ),
        LibraryError::AbiInstability(_) => {
            // abi_stable checks the layout before the version: ask the
            // library which version it was built with, to name it.
            match abi_stable::library::lib_header_from_path(&snapshot.load_path()) {
                Ok(header) => format!(
                    "plugin {source}: was built against plugin-api {}, incompatible with this host's {API_VERSION} (their types differ); {rebuild}",
                    header.version_strings()
                ),
                Err(_) => format!("plugin {source}: was built against an incompatible plugin-api (its types differ from this host's); {rebuild}"),
            }
        }
        LibraryError::InvalidAbiHeader(_) | LibraryError::InvalidCAbi { .. } => {
            format!("plugin {source}: was built with an incompatible abi_stable; {rebuild}")
        }
        LibraryError::RootModule { err, .. } => format!("plugin {source}: its root module failed: {err}"),
        LibraryError::ParseVersionError(e) => format!("plugin {source}: has an unreadable plugin-api version: {e}"),
        LibraryError::Many(errors) => match errors.first() {
            Some(first) => describe_load_error(first, snapshot),
            None => format!("plugin {source}: cannot be loaded"),
        },
    }
}

/// The worker's side of the supervisor channel, shared by the plugin's
/// thread and the link thread.
struct Link {
    channel: WorkerEnd,
    stop: AtomicBool,
    state: Mutex<LinkState>,
    changed: Condvar,
    stop_read: OwnedFd,
    stop_write: OwnedFd,
    /// See `Spec::base_nice`.
    base_nice: Option<i32>,
}

#[derive(Default)]
struct LinkState {
    go: bool,
    stop: bool,
    ready_sent: bool,
}

impl Link {
    fn new(
        channel: WorkerEnd,
        go: bool,
        base_nice: Option<i32>,
    ) -> Result<Link, (WorkerEnd, nix::Error)> {
        let (stop_read, stop_write) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(pipe) => pipe,
            Err(e) => return Err((channel, e)),
        };
        Ok(Link {
            channel,
            stop: AtomicBool::new(false),
            state: Mutex::new(LinkState {
                go,
                ..LinkState::default()
            }),
            changed: Condvar::new(),
            stop_read,
            stop_write,
            base_nice,
        })
    }

    /// Starts the link thread.
    fn watch(self: &Arc<Self>, signal_fd: SignalFd) -> std::io::Result<()> {
        let link = Arc::clone(self);
        std::thread::Builder::new()
            .name("host-link".into())
            .spawn(move || link.watch_loop(signal_fd))?;
        Ok(())
    }

    fn watch_loop(&self, signal_fd: SignalFd) {
        loop {
            let mut fds = [
                PollFd::new(self.channel.as_fd(), PollFlags::POLLIN),
                PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    return self.request_stop(&format!("cannot watch the supervisor channel: {e}"))
                }
            }
            if fds[1].any().unwrap_or(false) {
                let name = match signal_fd.read_signal() {
                    Ok(Some(info)) => signals::name(info.ssi_signo as i32),
                    _ => "a signal",
                };
                self.exit_if_never_served(name);
                return self.request_stop(&format!("{name} received"));
            }
            if fds[0].any().unwrap_or(false) {
                match self.channel.try_recv() {
                    Ok(Received::Message(ToWorker::Go)) => {
                        if let Some(nice) = self.base_nice {
                            if let Err(e) = priority::set_all_threads(nice) {
                                tracing::warn!("cannot return to nice {nice}: {e}");
                            }
                        }
                        self.update(|s| s.go = true);
                    }
                    Ok(Received::Message(ToWorker::Stop(reason))) => {
                        return self.request_stop(match reason {
                            StopReason::Reload => "a new generation took over",
                            StopReason::Shutdown => "the host is stopping",
                        })
                    }
                    Ok(Received::Closed) => {
                        self.exit_if_never_served("the supervisor is gone");
                        return self.request_stop("the supervisor is gone");
                    }
                    Ok(Received::Empty) => {}
                    Err(e) => {
                        return self.request_stop(&format!("the supervisor channel failed: {e}"))
                    }
                }
            }
        }
    }

    /// A worker of a generation abandoned before it served (its supervisor
    /// was killed, or a signal came before `Go`) has nothing to finish, and
    /// a plugin stuck in its start-up must not linger: it exits at once.
    fn exit_if_never_served(&self, why: &str) {
        if self.state.lock().unwrap_or_else(PoisonError::into_inner).go {
            return;
        }
        tracing::debug!("{why} before this worker could serve: exiting");
        // SAFETY: _exit ends the process at once without running
        // destructors or atexit handlers, which plugin threads may be using
        // concurrently; nothing of this worker needs flushing.
        unsafe { libc::_exit(EXIT_NOT_STARTED) }
    }

    fn update(&self, change: impl FnOnce(&mut LinkState)) {
        change(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
        self.changed.notify_all();
    }

    fn request_stop(&self, why: &str) {
        tracing::debug!("stopping: {why}");
        self.stop.store(true, Ordering::SeqCst);
        self.update(|s| s.stop = true);
        // The pipe stays readable from now on: a plugin polling it wakes up.
        let _ = nix::unistd::write(&self.stop_write, b"s");
    }

    fn ready_to_take_over(&self) -> Result<(), String> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.ready_sent {
            state.ready_sent = true;
            self.channel
                .send(&FromWorker::Ready)
                .map_err(|e| format!("cannot tell the supervisor: {e}"))?;
        }
        let state = self
            .changed
            .wait_while(state, |s| !s.go && !s.stop)
            .unwrap_or_else(PoisonError::into_inner);
        if state.stop {
            Err("this worker was asked to stop before it could take over".to_owned())
        } else {
            Ok(())
        }
    }

    /// Reports a failure to the supervisor and returns the exit code.
    fn fail(&self, code: i32, reason: String) -> i32 {
        if self
            .channel
            .send(&FromWorker::Failed(reason.clone()))
            .is_err()
        {
            tracing::error!("{reason}");
        }
        code
    }
}

/// The host services handed to the plugin.
struct WorkerServices {
    link: Arc<Link>,
    /// The supervisor's heartbeat page, mapped in this process until it
    /// exits (the worker never returns to the code that would unmap it).
    heartbeat: Option<&'static Heartbeat>,
    generation: u64,
    listener_fds: Vec<RawFd>,
    max_log_level: u8,
}

impl HostServices for WorkerServices {
    fn ping(&self) -> bool {
        if let Some(heartbeat) = self.heartbeat {
            heartbeat.beat();
        }
        !self.link.stop.load(Ordering::Relaxed)
    }

    fn ready_to_take_over(&self) -> RResult<(), RString> {
        self.link.ready_to_take_over().map_err(RString::from).into()
    }

    fn generation(&self) -> u64 {
        self.generation
    }

    fn stop_fd(&self) -> i32 {
        self.link.stop_read.as_raw_fd()
    }

    fn listener_fds(&self) -> RVec<i32> {
        self.listener_fds.iter().copied().collect()
    }

    fn max_log_level(&self) -> u8 {
        self.max_log_level
    }

    fn log(&self, level: u8, target: RStr<'_>, message: RStr<'_>) {
        match level {
            1 => tracing::error!(target: "plugin", "{target}: {message}"),
            2 => tracing::warn!(target: "plugin", "{target}: {message}"),
            3 => tracing::info!(target: "plugin", "{target}: {message}"),
            4 => tracing::debug!(target: "plugin", "{target}: {message}"),
            _ => tracing::trace!(target: "plugin", "{target}: {message}"),
        }
    }
}
