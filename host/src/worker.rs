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
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use abi_stable::library::{LibraryError, RootModule};
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROption, RResult, RStr, RString, RVec};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::{getppid, Pid};
use plugin_api::ffi::{
    self as api, HostExtras, HostExtrasHeader, HostExtrasRef, HostServices, HostServices_TO,
    PluginModuleRef, API_VERSION,
};

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
    /// The worker's slot (`Supervisor::worker_index`).
    pub slot: usize,
    /// `--shutdown-timeout`: a stopping worker is killed this long after
    /// the stop (`Supervisor::shutdown_deadline`).
    pub shutdown_timeout: Duration,
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
    let link = match Link::new(channel, spec.go, spec.base_nice, spec.shutdown_timeout) {
        Ok(link) => Arc::new(link),
        Err((channel, e)) => {
            let _ = channel.send(&FromWorker::Failed(format!("worker setup failed: {e}")));
            return EXIT_SETUP_FAILED;
        }
    };
    // Before the first thread: see `publish_extras`.
    publish_extras(&link, &spec);
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
    if link.failed() {
        // `StopToken::fail` told the supervisor why already: what the
        // plugin returned after it is a consequence, not the reason.
        if let Err(e) = outcome {
            tracing::debug!("after failing: {e}");
        }
        return EXIT_PLUGIN_FAILED;
    }
    match outcome {
        Ok(()) => EXIT_OK,
        Err(e) => {
            let e = String::from(e);
            let hint = would_block_hint(&e, !spec.listener_fds.is_empty());
            link.fail(EXIT_PLUGIN_FAILED, format!("{e}{hint}"))
        }
    }
}

/// A hint for a worker that ended with EAGAIN/EWOULDBLOCK while the host
/// gave it listeners: most likely an accept on a shared, non-blocking
/// socket that another worker emptied first.
fn would_block_hint(reason: &str, has_listeners: bool) -> &'static str {
    let would_block = [
        "os error 11",
        "WouldBlock",
        "Resource temporarily unavailable",
    ]
    .iter()
    .any(|needle| reason.contains(needle));
    if has_listeners && would_block {
        " (hint: the --listen sockets are non-blocking and shared by every worker, so an accept finds nothing (EAGAIN) when another worker took the connection first: accept with plugin_api::Supervisor::accept, or poll the listener and the stop (StopToken::as_fd) before accept and retry on WouldBlock; never make the listeners blocking)"
    } else {
        ""
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
    // The listeners are shared by every worker of every generation, and
    // O_NONBLOCK belongs to the socket: a plugin that turned it off on its
    // copy turned it off for all. Each worker starts by putting it back.
    for &fd in &spec.listener_fds {
        set_nonblocking(fd)?;
    }

    // SIGTERM and SIGINT are read from a signalfd by the link thread, so they
    // stay blocked in every thread (threads inherit the mask); all others
    // are unblocked again (the supervisor forked with all blocked).
    let mut stop_signals = SigSet::empty();
    stop_signals.add(Signal::SIGTERM);
    stop_signals.add(Signal::SIGINT);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&stop_signals), None)?;
    Ok(SignalFd::with_flags(&stop_signals, SfdFlags::SFD_CLOEXEC)?)
}

/// Sets O_NONBLOCK on `fd` (a listening socket this process holds).
fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL take and return integers (no pointers), on a
    // descriptor this process holds open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK == 0 {
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        tracing::debug!("listener fd {fd} was blocking: made non-blocking again");
    }
    Ok(())
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
    tracing::debug!("abi_stable's error, in full: {err}");
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
            "plugin {source}: was built against plugin-api {actual_version}, incompatible with this host's {API_VERSION} (the versions differ; {accepts}); {rebuild}",
            accepts = accepted_versions()
        ),
        LibraryError::AbiInstability(_) => {
            // abi_stable checks the layout before the version: ask the
            // library which version it was built with, to name it.
            match abi_stable::library::lib_header_from_path(&snapshot.load_path()) {
                Ok(header) => {
                    let theirs = header.version_strings();
                    let what = if same_series(&theirs.to_string()) {
                        "a version this host accepts, but their types differ: a modified plugin-api?"
                    } else {
                        "both the versions and the types differ"
                    };
                    format!(
                        "plugin {source}: was built against plugin-api {theirs}, incompatible with this host's {API_VERSION} ({what}; {accepts}); {rebuild}",
                        accepts = accepted_versions()
                    )
                }
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

/// The plugin-api versions this host loads plugins of, in words: abi_stable
/// takes 0.y.z as compatible with every 0.y.*, and x.y.z (x >= 1) with
/// every x.*.
fn accepted_versions() -> String {
    let mut parts = API_VERSION.split('.');
    let (major, minor) = (parts.next().unwrap_or("0"), parts.next().unwrap_or("0"));
    if major == "0" {
        format!("this host loads plugins built against plugin-api {major}.{minor}.0 or any later {major}.{minor}.x")
    } else {
        format!(
            "this host loads plugins built against plugin-api {major}.0.0 or any later {major}.x"
        )
    }
}

/// Whether `version` is in the series this host accepts (see `accepted_versions`).
fn same_series(version: &str) -> bool {
    let series = |v: &str| {
        let mut parts = v.split('.');
        let major = parts.next().unwrap_or("").to_owned();
        let minor = parts.next().unwrap_or("").to_owned();
        if major == "0" {
            (major, minor)
        } else {
            (major, String::new())
        }
    };
    series(version) == series(API_VERSION)
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
    /// See `Spec::shutdown_timeout`.
    shutdown_timeout: Duration,
    /// Set by `plugin_failed`, once: the worker ends with this reason.
    failure: Mutex<Option<String>>,
}

#[derive(Default)]
struct LinkState {
    go: bool,
    stop: bool,
    ready_sent: bool,
    /// Why it stops (`plugin_api::ffi::STOP_*`), from the first stop.
    reason: u8,
    /// When it will be killed, if anyone will.
    deadline: Option<Instant>,
}

impl Link {
    fn new(
        channel: WorkerEnd,
        go: bool,
        base_nice: Option<i32>,
        shutdown_timeout: Duration,
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
            shutdown_timeout,
            failure: Mutex::new(None),
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
                    return self.request_stop(
                        &format!("cannot watch the supervisor channel: {e}"),
                        api::STOP_SUPERVISOR_GONE,
                    )
                }
            }
            if fds[1].any().unwrap_or(false) {
                let name = match signal_fd.read_signal() {
                    Ok(Some(info)) => signals::name(info.ssi_signo as i32),
                    _ => "a signal",
                };
                self.exit_if_never_served(name);
                return self.request_stop(&format!("{name} received"), api::STOP_SHUTDOWN);
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
                        return match reason {
                            StopReason::Reload => {
                                self.request_stop("a new generation took over", api::STOP_RELOAD)
                            }
                            StopReason::Shutdown => {
                                self.request_stop("the host is stopping", api::STOP_SHUTDOWN)
                            }
                        };
                    }
                    Ok(Received::Closed) => {
                        self.exit_if_never_served("the supervisor is gone");
                        return self
                            .request_stop("the supervisor is gone", api::STOP_SUPERVISOR_GONE);
                    }
                    Ok(Received::Empty) => {}
                    Err(e) => {
                        return self.request_stop(
                            &format!("the supervisor channel failed: {e}"),
                            api::STOP_SUPERVISOR_GONE,
                        )
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
        exit_now(EXIT_NOT_STARTED)
    }

    fn update(&self, change: impl FnOnce(&mut LinkState)) {
        change(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
        self.changed.notify_all();
    }

    /// Signals the stop, for `reason` (`plugin_api::ffi::STOP_*`); the
    /// first stop's reason and deadline stay.
    fn request_stop(&self, why: &str, reason: u8) {
        tracing::debug!("stopping: {why}");
        let timeout = self.shutdown_timeout;
        self.update(|s| {
            if !s.stop {
                s.stop = true;
                s.reason = reason;
                // Nobody kills the worker of a supervisor that is gone.
                s.deadline = (reason != api::STOP_SUPERVISOR_GONE)
                    .then(|| Instant::now().checked_add(timeout))
                    .flatten();
            }
        });
        self.stop.store(true, Ordering::SeqCst);
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

    /// The plugin ends the worker (`StopToken::fail`, or a panic on one of
    /// its threads): the supervisor hears the reason at once, the plugin
    /// gets the stop, and the worker exits when `supervised_process` and
    /// `supervised_shutdown` have returned, or at `--shutdown-timeout`.
    fn plugin_failed(&self, reason: String) {
        {
            let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
            if failure.is_some() {
                return;
            }
            *failure = Some(reason.clone());
        }
        if self
            .channel
            .send(&FromWorker::Failed(reason.clone()))
            .is_err()
        {
            tracing::error!("{reason}");
        }
        self.request_stop(&format!("the plugin failed: {reason}"), api::STOP_FAILED);
        let timeout = self.shutdown_timeout;
        let enforce = std::thread::Builder::new()
            .name("host-fail".into())
            .spawn(move || {
                std::thread::sleep(timeout);
                tracing::error!("the plugin did not return within --shutdown-timeout ({timeout:?}) after failing: exiting");
                exit_now(EXIT_PLUGIN_FAILED)
            });
        if enforce.is_err() {
            exit_now(EXIT_PLUGIN_FAILED);
        }
    }

    fn failed(&self) -> bool {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
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

/// Ends the process at once, from any thread.
fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process at once without running destructors or
    // atexit handlers, which plugin threads may be using concurrently;
    // nothing of this worker needs flushing (the log writes unbuffered).
    unsafe { libc::_exit(code) }
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
        plugin_log::log(level, target.as_str(), message.as_str());
    }
}

/// What the `HostExtras` functions (plain functions: the table is static)
/// act on: this process's one worker.
struct ExtrasState {
    link: Arc<Link>,
    slot: usize,
    max_log_level: u8,
}

static EXTRAS: OnceLock<ExtrasState> = OnceLock::new();

/// Publishes the `HostExtras` table for the plugin (see
/// `plugin_api::ffi::HostExtras`): in `HOST_PLUGIN_EXTRAS`, which must be
/// set while this process has one thread (setenv races with getenv).
fn publish_extras(link: &Arc<Link>, spec: &Spec<'_>) {
    let state = ExtrasState {
        link: Arc::clone(link),
        slot: spec.slot,
        max_log_level: logging::max_level(),
    };
    if EXTRAS.set(state).is_err() {
        return;
    }
    let extras = HostExtras {
        stop_reason: extras_stop_reason,
        shutdown_time_left_ns: extras_shutdown_time_left_ns,
        worker_index: extras_worker_index,
        fail: extras_fail,
        log_enabled: extras_log_enabled,
    }
    .leak_into_prefix();
    let header: &'static HostExtrasHeader = Box::leak(Box::new(HostExtrasHeader {
        magic: api::HOST_EXTRAS_MAGIC,
        layout: <HostExtrasRef as abi_stable::StableAbi>::LAYOUT,
        extras,
    }));
    let value = format!(
        "{}:{:#x}",
        std::process::id(),
        header as *const HostExtrasHeader as usize
    );
    std::env::set_var(api::HOST_EXTRAS_VAR, value);
}

extern "C" fn extras_stop_reason() -> u8 {
    let Some(x) = EXTRAS.get() else {
        return api::STOP_NONE;
    };
    let state = x.link.state.lock().unwrap_or_else(PoisonError::into_inner);
    if state.stop {
        state.reason
    } else {
        api::STOP_NONE
    }
}

extern "C" fn extras_shutdown_time_left_ns() -> ROption<u64> {
    let Some(x) = EXTRAS.get() else {
        return ROption::RNone;
    };
    let state = x.link.state.lock().unwrap_or_else(PoisonError::into_inner);
    match state.deadline {
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            ROption::RSome(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX))
        }
        None => ROption::RNone,
    }
}

extern "C" fn extras_worker_index() -> u64 {
    EXTRAS.get().map_or(0, |x| x.slot as u64)
}

extern "C" fn extras_fail(reason: RStr<'_>) {
    let reason = reason.as_str().to_owned();
    // Nothing may unwind into the plugin's frames.
    let failed = std::panic::catch_unwind(|| {
        if let Some(x) = EXTRAS.get() {
            x.link.plugin_failed(reason);
        }
    });
    if failed.is_err() {
        exit_now(EXIT_PLUGIN_FAILED);
    }
}

extern "C" fn extras_log_enabled(level: u8, target: RStr<'_>) -> bool {
    let Some(x) = EXTRAS.get() else {
        return false;
    };
    level <= x.max_log_level
        && std::panic::catch_unwind(|| plugin_log::enabled(level, target.as_str())).unwrap_or(false)
}

/// The plugin's events in the host's log, under the plugin's own target, so
/// that `HOST_LOG=warn,my_plugin=debug` filters them. `tracing`'s macros
/// need a target known at compile time: as `tracing-log` does for `log`
/// records, the filter is asked with metadata naming the plugin's target,
/// and the event is then dispatched through one fixed callsite per level
/// (whose target, `plugin`, no one filters on: the line names the real one).
mod plugin_log {
    use tracing::callsite::{Callsite, Identifier};
    use tracing::field::{FieldSet, Value};
    use tracing::metadata::Kind;
    use tracing::subscriber::Interest;
    use tracing::{Event, Level, Metadata};

    struct PluginCallsite(fn() -> &'static Metadata<'static>);

    impl Callsite for PluginCallsite {
        fn set_interest(&self, _: Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            (self.0)()
        }
    }

    macro_rules! callsite {
        ($cs:ident, $meta:ident, $level:expr) => {
            static $cs: PluginCallsite = PluginCallsite(|| &$meta);
            static $meta: Metadata<'static> = Metadata::new(
                "plugin event",
                "plugin",
                $level,
                None,
                None,
                None,
                FieldSet::new(&["message"], Identifier(&$cs)),
                Kind::EVENT,
            );
        };
    }
    callsite!(ERROR_CS, ERROR_META, Level::ERROR);
    callsite!(WARN_CS, WARN_META, Level::WARN);
    callsite!(INFO_CS, INFO_META, Level::INFO);
    callsite!(DEBUG_CS, DEBUG_META, Level::DEBUG);
    callsite!(TRACE_CS, TRACE_META, Level::TRACE);

    fn fixed(level: u8) -> &'static Metadata<'static> {
        match level {
            0 | 1 => &ERROR_META,
            2 => &WARN_META,
            3 => &INFO_META,
            4 => &DEBUG_META,
            _ => &TRACE_META,
        }
    }

    /// Whether the host's filter lets an event at `level` for `target` through.
    pub fn enabled(level: u8, target: &str) -> bool {
        let fixed = fixed(level);
        let asked = Metadata::new(
            "plugin event",
            target,
            *fixed.level(),
            None,
            None,
            None,
            FieldSet::new(&["message"], fixed.callsite()),
            Kind::EVENT,
        );
        tracing::dispatcher::get_default(|d| d.enabled(&asked))
    }

    pub fn log(level: u8, target: &str, message: &str) {
        if !enabled(level, target) {
            return;
        }
        let meta = fixed(level);
        let Some(field) = meta.fields().field("message") else {
            return;
        };
        let text = format!("{target}: {message}");
        let values = [(&field, Some(&format_args!("{text}") as &dyn Value))];
        Event::dispatch(meta, &meta.fields().value_set(&values));
    }
}
