//! The worker: a forked child of the supervisor that loads the plugin
//! snapshot and runs its `supervised_process`.
//!
//! Right after fork it puts signal handling back to defaults, asks the
//! kernel for SIGTERM when the supervisor dies, and closes every descriptor
//! it must not hold (the pid-file lock above all). A link thread then
//! watches the supervisor channel and the worker's own SIGTERM/SIGINT, and
//! turns any of Stop, hang-up or signal into one atomic flag, which is all
//! `ping_supervisor` reads.

mod link;
mod load_error;
mod services;

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
use crate::thread_time::ThreadTime;
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
    /// A reload's new worker loads this many nice levels above the serving
    /// ones (a head start, see `priority`) until its `ready_to_take_over`;
    /// any other worker: 0.
    pub head_start: i32,
    /// The nice value to serve at, when priorities may change (see
    /// `priority`): taken at once, or by a worker with a head start when it
    /// is ready.
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
    exit_after(|| live(channel, spec))
}

/// Runs `life` and exits with its code. Nothing may unwind out of here
/// into the supervisor code we were forked from.
fn exit_after(life: impl FnOnce() -> i32) -> ! {
    let code =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(life)).unwrap_or(EXIT_SETUP_FAILED);
    std::process::exit(code)
}

/// A standby's first worker (see `supervisor::pool::PreparedWorker`), in
/// the forked child: it prepares now, sleeps until the supervisor sends
/// `Go` (or hangs up: then it exits), and lives as generation `Go` names
/// (`spec.generation` is replaced). Never returns.
pub fn run_prepared(channel: WorkerEnd, spec: Spec<'_>) -> ! {
    exit_after(|| {
        let signal_fd = match prepare_or_report(&channel, &spec) {
            Ok(fd) => fd,
            Err(code) => return code,
        };
        let generation = loop {
            match channel.recv() {
                Ok(Received::Message(ToWorker::Go { generation })) => break generation,
                Ok(Received::Empty) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // Stopped before it started, or the standby is gone.
                _ => return EXIT_NOT_STARTED,
            }
        };
        // Normally the supervisor did this before `Go` (see `PreparedWorker::go`).
        if !priority::is_usual() {
            let _ = priority::set_batch(0, false);
        }
        logging::set_identity(Role::Worker, generation);
        serve(channel, Spec { generation, ..spec }, signal_fd)
    })
}

fn live(channel: WorkerEnd, spec: Spec<'_>) -> i32 {
    logging::set_identity(Role::Worker, spec.generation);
    match prepare_or_report(&channel, &spec) {
        Ok(signal_fd) => serve(channel, spec, signal_fd),
        Err(code) => code,
    }
}

/// `prepare`, or the exit code once the supervisor was told why not.
fn prepare_or_report(channel: &WorkerEnd, spec: &Spec<'_>) -> Result<SignalFd, i32> {
    prepare(channel, spec).map_err(|e| {
        let _ = channel.send(&FromWorker::Failed(format!("worker setup failed: {e}")));
        EXIT_SETUP_FAILED
    })
}

/// After `prepare`: loads the plugin and runs it.
fn serve(channel: WorkerEnd, spec: Spec<'_>, signal_fd: SignalFd) -> i32 {
    // A new generation's worker loads with a head start when allowed,
    // until it is ready (see `priority`); any other serves at the usual
    // level. A worker with a head start is normally born with it (see
    // `fork_worker`); one without may be born from a supervisor that is
    // itself raised until it takes over, and comes down here.
    if let Some(nice) = spec.base_nice {
        let _ = priority::set(0, nice - spec.head_start);
    }
    let link = match Link::new(
        channel,
        spec.head_start > 0,
        spec.base_nice,
        spec.shutdown_timeout,
    ) {
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
        "plugin {} loaded in {:?}{}",
        spec.snapshot.source().display(),
        started.elapsed(),
        since_fork()
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
    tracing::debug!(
        can_hot_reload,
        "plugin built in {:?}{}",
        started.elapsed(),
        since_fork()
    );

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

/// For a debug line: what this (the main) thread spent since the fork, on
/// a CPU and waiting for one (see `thread_time`); nothing unless logged.
fn since_fork() -> String {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return String::new();
    }
    match ThreadTime::now() {
        Some(spent) => format!(" (since the fork: {spent})"),
        None => String::new(),
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

use link::*;
use load_error::*;
use services::*;
