//! The handle a plugin uses to talk to its supervisor.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;

use crate::ffi::HostBox;

/// The plugin's view of the host: passed to
/// [`SupervisedProcess::supervised_process`](crate::SupervisedProcess::supervised_process).
pub struct Supervisor {
    host: Arc<HostBox>,
}

impl Supervisor {
    pub(crate) fn new(host: Arc<HostBox>) -> Self {
        Supervisor { host }
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

    /// Tells the supervisor this worker is initialised, then blocks until it
    /// may serve. In the first generation that is at once; during a hot
    /// reload, it returns when the old generation has stepped aside. Returns
    /// an error when this generation is abandoned instead (the reload failed
    /// elsewhere, or a stop was asked for): return from `supervised_process`.
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
    pub fn accept(&self, listeners: &[TcpListener]) -> io::Result<Option<(TcpStream, SocketAddr)>> {
        let stop = self.supervisor_pipe();
        loop {
            if !self.ping_supervisor() {
                return Ok(None);
            }
            let mut fds: Vec<libc::pollfd> = listeners
                .iter()
                .map(|l| l.as_raw_fd())
                .chain([stop])
                .map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd
            // whose length we pass alongside it.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            // A stop wins over a waiting connection: it stays queued in the
            // shared socket for the next generation to accept.
            if fds.last().is_some_and(|stop| stop.revents != 0) {
                return Ok(None);
            }
            for (listener, pfd) in listeners.iter().zip(&fds) {
                if pfd.revents == 0 {
                    continue;
                }
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
    }

    pub(crate) fn log(&self, level: u8, target: &str, message: &str) {
        self.host.log(level, target.into(), message.into());
    }
}
