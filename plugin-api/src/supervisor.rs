//! The handle a plugin uses to talk to its supervisor, and the stop as a
//! value ([`StopToken`]).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::OnceLock;

use crate::ffi::{self, HostBox, HostExtrasRef};
use crate::stop::{StopReason, StopToken};
use crate::wake::{self, Woken};

/// The longest a blocking wait here ([`StopToken::wait`],
/// [`Supervisor::accept`]) sleeps before it looks at the stop again, which
/// also beats the host's `--watchdog` heartbeat: an idle worker waiting here
/// is not taken for a hung one.
pub(crate) const WAKE_MS: i32 = 250;

/// The host's extras (`ffi::HostExtras`), looked up once, when the plugin
/// is built; `None` from a host older than plugin-api 0.1.1.
static EXTRAS: OnceLock<Option<HostExtrasRef>> = OnceLock::new();

pub(crate) fn init_extras() {
    EXTRAS.get_or_init(ffi::host_extras);
}

pub(crate) fn extras() -> Option<HostExtrasRef> {
    *EXTRAS.get_or_init(ffi::host_extras)
}

/// The plugin's view of the host: passed to
/// [`SupervisedProcess::supervised_process`](crate::SupervisedProcess::supervised_process).
///
/// Cheap to clone and `'static`: clone it into the threads and tasks that
/// need it (or hand them a [`StopToken`], which is all most of them need).
#[derive(Clone)]
pub struct Supervisor {
    host: Arc<HostBox>,
}

impl Supervisor {
    pub(crate) fn new(host: Arc<HostBox>) -> Self {
        Supervisor { host }
    }

    /// The stop as a value that threads and tasks can hold: see [`StopToken`].
    pub fn stop_token(&self) -> StopToken {
        StopToken {
            host: Arc::clone(&self.host),
        }
    }

    /// Why this worker stops, once it should ([`StopToken::reason`]).
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop_token().reason()
    }

    /// When the host will kill this stopping worker ([`StopToken::deadline`]).
    pub fn shutdown_deadline(&self) -> Option<Instant> {
        self.stop_token().deadline()
    }

    /// This worker's slot, `0..N` for `--workers N`: a respawned worker gets
    /// the slot of the one it replaces, and each generation has the same
    /// slots (so two workers, of two generations, may share an index for
    /// the moment of a hot reload). 0 in a host older than plugin-api 0.1.1.
    pub fn worker_index(&self) -> usize {
        extras().map_or(0, |extras| extras.worker_index()() as usize)
    }

    /// Ends this worker with `reason` ([`StopToken::fail`]).
    pub fn fail(&self, reason: impl std::fmt::Display) {
        self.stop_token().fail(reason)
    }

    /// Hands `state` (caches, counters: at most
    /// [`MAX_STATE`](crate::ffi::MAX_STATE) bytes) to the worker of the same
    /// slot in the next generation, which reads it with
    /// [`Supervisor::inherited_state`]. Call it once the stop's reason is
    /// [`StopReason::Reload`], before returning from `supervised_process`.
    ///
    /// Ordering: the new worker already serves when the old one is asked to
    /// stop (the generations overlap), so the state arrives after its
    /// `ready_to_take_over` returned. Best effort: if the reload fails, or
    /// the new worker is gone, the state is dropped.
    pub fn hand_over_state(&self, state: &[u8]) -> Result<(), String> {
        if state.len() > crate::ffi::MAX_STATE {
            return Err(format!(
                "state of {} bytes is more than the {} a hand-over takes",
                state.len(),
                crate::ffi::MAX_STATE
            ));
        }
        match extras().and_then(|extras| extras.hand_over_state()) {
            Some(hand_over) if hand_over(state.into()) => Ok(()),
            Some(_) => Err("the state could not be handed over (the supervisor is gone?)".into()),
            None => Err("this host is older than plugin-api 0.1.2: no state hand-over".into()),
        }
    }

    /// The state the previous generation's worker of this slot handed over
    /// ([`Supervisor::hand_over_state`]), waiting up to `timeout` for it;
    /// `None` if none came (a first start, a respawn, an old worker that
    /// handed nothing over).
    pub fn inherited_state(&self, timeout: Duration) -> Option<Vec<u8>> {
        let inherited = extras()?.inherited_state()?;
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        inherited(ms).into_option().map(Vec::from)
    }

    /// Whether this worker should keep going. Never blocks and costs a few
    /// nanoseconds (an atomic load): the host watches the supervisor link on
    /// its own thread. Returns false, from the first call after it happens,
    /// once the supervisor is gone (even by `kill -9`), a stop was asked for
    /// (SIGTERM to the host or this worker, or a newer generation took over).
    /// When it returns false, return from `supervised_process`.
    pub fn ping_supervisor(&self) -> bool {
        self.host.ping()
    }

    /// Tells the supervisor this worker is initialised and serves from now
    /// on; it returns at once. During a hot reload the old generation's
    /// workers serve beside it until every new worker has called this, and
    /// then stop accepting. Returns an error when this generation is
    /// abandoned instead (the reload failed elsewhere, or a stop was asked
    /// for): return from `supervised_process`.
    ///
    /// Plugins that can hot-reload must call it once, after initialising and
    /// before serving: a generation counts as started only when every worker
    /// has called it, and an error returned before that (a missing listener,
    /// say) makes the first generation's host exit with that error, or a new
    /// generation's reload fail with it.
    pub fn ready_to_take_over(&self) -> Result<(), String> {
        self.host
            .ready_to_take_over()
            .into_result()
            .map_err(String::from)
    }

    /// Always false: plugin code runs in workers, never in the supervisor.
    pub fn is_supervisor(&self) -> bool {
        false
    }

    /// The host generation of this worker: 1 for the host the user started,
    /// one more for each hot reload.
    pub fn generation(&self) -> u64 {
        self.host.generation()
    }

    /// A raw descriptor that becomes readable, and stays readable, as soon as
    /// this worker should stop. Put it in your `poll` set to wake a blocking
    /// wait; never read from it or close it.
    pub fn supervisor_pipe(&self) -> RawFd {
        self.host.stop_fd()
    }

    /// The host's `--listen` sockets, in command-line order. They are shared
    /// with every worker and every generation, and are non-blocking: wait
    /// with [`Supervisor::accept`] or your own `poll`. Each call returns new
    /// descriptors for the same sockets.
    pub fn listeners(&self) -> io::Result<Vec<TcpListener>> {
        self.host
            .listener_fds()
            .iter()
            .map(|&fd| {
                // SAFETY: the host keeps these descriptors open for the whole
                // life of the worker; we only borrow them long enough to dup.
                let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                fd.try_clone_to_owned().map(TcpListener::from)
            })
            .collect()
    }

    /// Waits until one of `listeners` has a connection, and accepts it.
    /// Returns `Ok(None)` when the worker should stop instead. The stream
    /// returned is blocking.
    ///
    /// A connection wakes one waiting worker, not all of them, and waiting
    /// workers take turns (see `wake.rs`). A connection this worker was
    /// woken for before the stop came is still accepted and returned.
    pub fn accept(&self, listeners: &[TcpListener]) -> io::Result<Option<(TcpStream, SocketAddr)>> {
        // SAFETY: the host keeps the stop descriptor open for the whole
        // life of the worker, so the borrow cannot outlive it.
        let stop = unsafe { BorrowedFd::borrow_raw(self.supervisor_pipe()) };
        let fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|l| l.as_fd()).collect();
        loop {
            if !self.ping_supervisor() {
                return Ok(None);
            }
            let listener = match wake::wait(&fds, stop, WAKE_MS)? {
                Woken::Stop => return Ok(None),
                Woken::Nothing => continue,
                Woken::Connection(index) => &listeners[index],
            };
            ensure_nonblocking(listener);
            match listener.accept() {
                Ok(conn) => {
                    conn.0.set_nonblocking(false)?;
                    return Ok(Some(conn));
                }
                // Another worker took it first.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) fn log(&self, level: u8, target: &str, message: &str) {
        self.host.log(level, target.into(), message.into());
    }

    pub(crate) fn log_enabled(&self, level: u8, target: &str) -> bool {
        match extras() {
            Some(extras) => extras.log_enabled()(level, target.into()),
            None => level <= self.host.max_log_level(),
        }
    }
}

/// The listeners are shared by every worker of every generation, and
/// `O_NONBLOCK` belongs to the socket, not to a descriptor: a
/// `set_nonblocking(false)` on any copy, in any worker, makes them blocking
/// for all, and an accept that loses the race for a connection would then
/// block past the stop. Put it back (once per accept: one `fcntl`).
fn ensure_nonblocking(listener: &TcpListener) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let fd = listener.as_raw_fd();
    // SAFETY: F_GETFL on a descriptor `listener` keeps open; no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags >= 0 && flags & libc::O_NONBLOCK == 0 {
        // SAFETY: F_SETFL with an integer argument, on the same descriptor.
        unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "a host listener was made blocking (set_nonblocking(false) on a copy changes it for every worker): made non-blocking again; never change it"
            );
        }
    }
}
