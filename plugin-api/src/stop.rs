//! The stop, as plugin code sees it: why a worker stops ([`StopReason`]),
//! and a handle any thread or task can hold ([`StopToken`]).

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ffi::{self, HostBox};
use crate::supervisor::{extras, WAKE_MS};

/// Why a worker stops: see [`Supervisor::stop_reason`](crate::Supervisor::stop_reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// A newer generation took over (hot reload): what waits in the
    /// listeners is left for it; finish what you hold.
    Reload,
    /// The host stops (an operator's SIGTERM, SIGINT or SIGQUIT, or a
    /// failed start), or this worker alone got SIGTERM or SIGINT (it is
    /// then respawned).
    Shutdown,
    /// The supervisor is gone (killed, even by `kill -9`): no one will kill
    /// this worker, nor respawn it. Finish what you hold, and return.
    SupervisorGone,
    /// The plugin ended the worker with [`StopToken::fail`] (or a plugin
    /// thread panicked, see [`crate::on_thread_panic`]).
    Failed,
}

impl StopReason {
    pub(crate) fn from_code(code: u8) -> Option<StopReason> {
        match code {
            ffi::STOP_NONE => None,
            ffi::STOP_RELOAD => Some(StopReason::Reload),
            ffi::STOP_SUPERVISOR_GONE => Some(StopReason::SupervisorGone),
            ffi::STOP_FAILED => Some(StopReason::Failed),
            _ => Some(StopReason::Shutdown),
        }
    }
}

/// The stop as a value: a cheap, cloneable, `'static` handle that any thread
/// or task can hold, from [`Supervisor::stop_token`](crate::Supervisor::stop_token). It turns "stopped"
/// once, and stays so; it never turns back.
#[derive(Clone)]
pub struct StopToken {
    pub(crate) host: Arc<HostBox>,
}

impl StopToken {
    /// Whether this worker should stop: the opposite of
    /// [`Supervisor::ping_supervisor`](crate::Supervisor::ping_supervisor). Never blocks (an atomic load).
    pub fn is_stopped(&self) -> bool {
        !self.host.ping()
    }

    /// Blocks until the stop, or until `timeout` has passed; returns whether
    /// the worker should stop. `wait(Duration::MAX)` waits for the stop only.
    /// A loop that works every period and stops at once:
    ///
    /// ```no_run
    /// # fn tick() {}
    /// # fn demo(stop: plugin_api::StopToken) {
    /// use std::time::Duration;
    /// while !stop.wait(Duration::from_millis(100)) {
    ///     tick();
    /// }
    /// # }
    /// ```
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if self.is_stopped() {
                return true;
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_millis(i32::MAX as u64),
            };
            if left.is_zero() {
                return false;
            }
            // Round up, so a wait never ends a little early and spins.
            let ms = left.as_nanos().div_ceil(1_000_000).min(WAKE_MS as u128) as i32;
            let mut fd = libc::pollfd {
                fd: self.host.stop_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `fd` is one valid, exclusively borrowed pollfd, and we
            // pass 1 as the length; the descriptor stays open for the life of
            // the worker (the host owns it).
            unsafe { libc::poll(&mut fd, 1, ms) };
        }
    }

    /// The descriptor that becomes readable, and stays readable, once the
    /// worker should stop (the same as [`Supervisor::supervisor_pipe`](crate::Supervisor::supervisor_pipe)): for
    /// your own `poll`/`epoll` set. Never read from it.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the host keeps the stop descriptor open for the whole life
        // of the worker process, longer than any borrow of `self`.
        unsafe { BorrowedFd::borrow_raw(self.host.stop_fd()) }
    }

    /// Why the worker stops, once it should; `None` before.
    pub fn reason(&self) -> Option<StopReason> {
        let code = match extras() {
            Some(extras) => extras.stop_reason()(),
            None if self.is_stopped() => ffi::STOP_SHUTDOWN,
            None => ffi::STOP_NONE,
        };
        StopReason::from_code(code)
    }

    /// When the host will kill this stopping worker (SIGKILL) if it has not
    /// exited: the time the stop arrived plus `--shutdown-timeout` (during a
    /// hot reload the host may wait a little longer, never less). `None`
    /// before the stop, and when no one will kill it
    /// ([`StopReason::SupervisorGone`]).
    pub fn deadline(&self) -> Option<Instant> {
        let left = (extras()?.shutdown_time_left_ns())().into_option()?;
        Some(Instant::now() + Duration::from_nanos(left))
    }

    /// Ends this worker with `reason`, from any thread: the supervisor logs
    /// `reason` at once and respawns the slot after its respawn delay. The
    /// stop is signalled ([`StopReason::Failed`]), so `supervised_process`
    /// should return (its result is then ignored) and
    /// `supervised_shutdown` runs; the worker exits when it has, or at the
    /// [`deadline`](StopToken::deadline) if it does not. The first reason
    /// wins.
    pub fn fail(&self, reason: impl std::fmt::Display) {
        let reason = reason.to_string();
        match extras() {
            Some(extras) => extras.fail()(reason.as_str().into()),
            None => {
                // A host older than plugin-api 0.1.1: log, and exit (it
                // respawns the worker).
                self.host.log(1, "plugin".into(), reason.as_str().into());
                std::process::exit(1)
            }
        }
    }
}

impl AsFd for StopToken {
    fn as_fd(&self) -> BorrowedFd<'_> {
        StopToken::as_fd(self)
    }
}

impl std::fmt::Debug for StopToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopToken")
            .field("reason", &self.reason())
            .finish()
    }
}
