//! The wait inside [`Supervisor::accept`](crate::Supervisor::accept): for a
//! connection on one of the shared listeners, or for the stop.
//!
//! Every worker of every generation waits on the same listening sockets. A
//! `poll` on them wakes every waiting worker for each connection; all but
//! one find nothing to accept and sleep again. With 16 workers that
//! thundering herd made each connection wake about nine processes, and it
//! is CPU a starting generation waits for. Here each wait registers the
//! listeners with `EPOLLEXCLUSIVE`, so the kernel wakes one waiting worker
//! per connection.
//!
//! The epoll instance is made afresh for each wait, not kept: a
//! registration joins the tail of the socket's wait queue, and the kernel
//! wakes the first waiter in it. Registered once, the oldest workers would
//! be first for ever, and the new generation's workers would get no
//! connection while any old worker is idle. Registered per wait, workers
//! take turns: the one that has waited longest (since it last registered)
//! gets the next connection. The price is a few system calls per wait; on
//! kernels before 6.4, closing an epoll instance also takes a global lock.
//!
//! What a wake-one design costs: a worker the kernel woke for a connection
//! and that then accepts nothing (its `accept` failed with EMFILE, say, or
//! the stop was seen first) spent that connection's wake-up. The connection
//! waits in the backlog for the next connection to wake someone, or for the
//! next timeout of any waiting worker (`WAKE_MS`: at most 250 ms later),
//! whose new registration finds it at once. With `poll`, every waiter
//! woke, so this could not happen; the herd cost more.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// What ended a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    /// The stop came, before any connection this wait was woken for.
    Stop,
    /// A connection waits on the listener at this index.
    Connection(usize),
    /// Nothing within the timeout (or a signal interrupted the wait).
    Nothing,
}

/// The event key of the stop descriptor (listeners are keyed by index).
const STOP: u64 = u64::MAX;

/// Waits up to `timeout_ms` for a connection on `listeners` or for `stop`
/// to become readable.
///
/// When both are ready, the one that came first wins: epoll reports events
/// in the order they arrived (and, for descriptors ready when added, in the
/// order they were added). A connection that came before the stop is
/// accepted, not declined: usually the kernel woke only this worker for it,
/// and declining would leave it queued until the next connection (or a
/// worker's timeout) wakes someone. A stop that came first wins, and
/// a connection after it wakes another waiter (this one was no longer
/// waiting), which is also why the stop is registered first: one that came
/// before this wait began is reported ahead of a connection already queued.
pub(crate) fn wait(
    listeners: &[BorrowedFd<'_>],
    stop: BorrowedFd<'_>,
    timeout_ms: i32,
) -> io::Result<Woken> {
    // SAFETY: epoll_create1 takes no pointers and only returns a number.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is the new descriptor epoll_create1 just returned; no
    // other owner exists, so OwnedFd closes it exactly once.
    let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
    add(&epoll, stop, libc::EPOLLIN as u32, STOP)?;
    for (index, fd) in listeners.iter().enumerate() {
        add(
            &epoll,
            *fd,
            (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32,
            index as u64,
        )?;
    }
    // Only the first event counts; the kernel hands them out in order.
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 1];
    // SAFETY: `events` is a valid, exclusively borrowed array, and its
    // length is what we pass; the kernel writes at most that many entries.
    let n = unsafe {
        libc::epoll_wait(
            epoll.as_raw_fd(),
            events.as_mut_ptr(),
            events.len() as i32,
            timeout_ms,
        )
    };
    if n < 0 {
        let err = io::Error::last_os_error();
        return match err.kind() {
            io::ErrorKind::Interrupted => Ok(Woken::Nothing),
            _ => Err(err),
        };
    }
    Ok(match events[..n as usize].first().map(|e| e.u64) {
        None => Woken::Nothing,
        Some(STOP) => Woken::Stop,
        Some(index) => Woken::Connection(index as usize),
    })
}

fn add(epoll: &OwnedFd, fd: BorrowedFd<'_>, events: u32, key: u64) -> io::Result<()> {
    let mut event = libc::epoll_event { events, u64: key };
    // SAFETY: `event` is a valid epoll_event the call only reads, during the
    // call; `epoll` and `fd` are open descriptors (owned and borrowed).
    match unsafe {
        libc::epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            fd.as_raw_fd(),
            &mut event,
        )
    } {
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    /// A listener on port 0, and a stop descriptor: (listener, stop's
    /// writing end, stop's reading end).
    fn setup() -> (TcpListener, UnixStream, UnixStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let (stop_tx, stop_rx) = UnixStream::pair().unwrap();
        (listener, stop_tx, stop_rx)
    }

    #[test]
    fn nothing_ready_is_nothing_after_the_timeout() {
        let (listener, _tx, rx) = setup();
        let woken = wait(&[listener.as_fd()], rx.as_fd(), 0).unwrap();
        assert_eq!(woken, Woken::Nothing);
    }

    #[test]
    fn a_queued_connection_is_reported_with_its_listener() {
        let (listener, _tx, rx) = setup();
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let woken = wait(&[other.as_fd(), listener.as_fd()], rx.as_fd(), 1000).unwrap();
        assert_eq!(woken, Woken::Connection(1));
    }

    #[test]
    fn a_stop_that_came_first_wins_over_a_queued_connection() {
        let (listener, mut tx, rx) = setup();
        tx.write_all(b"x").unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let woken = wait(&[listener.as_fd()], rx.as_fd(), 1000).unwrap();
        assert_eq!(woken, Woken::Stop);
    }

    #[test]
    fn a_stop_that_comes_during_the_wait_ends_it() {
        let (listener, mut tx, rx) = setup();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            tx.write_all(b"x").unwrap();
        });
        let woken = wait(&[listener.as_fd()], rx.as_fd(), 10_000).unwrap();
        stopper.join().unwrap();
        assert_eq!(woken, Woken::Stop);
    }
}
