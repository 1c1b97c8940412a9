//! Signals, for the supervisor's single poll loop: signal-hook sets a flag
//! per signal and writes to a self-pipe, whose read end sits in the poll set.
//! Nothing else runs in a signal handler.
//!
//! Workers are forked from the supervisor and so inherit its handlers;
//! [`reset_to_default`] undoes that in the child.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR2};

/// The signals the supervisor handles, in the order they are reported.
const HANDLED: [i32; 6] = [SIGCHLD, SIGQUIT, SIGTERM, SIGINT, SIGUSR2, SIGHUP];

/// The supervisor's signal inbox.
pub struct Signals {
    wake: UnixStream,
    flags: Vec<(i32, Arc<AtomicBool>)>,
}

impl Signals {
    pub fn install() -> io::Result<Signals> {
        let (wake, writer) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        let mut flags = Vec::with_capacity(HANDLED.len());
        for sig in HANDLED {
            let flag = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(sig, Arc::clone(&flag))?;
            signal_hook::low_level::pipe::register(sig, writer.try_clone()?)?;
            flags.push((sig, flag));
        }
        Ok(Signals { wake, flags })
    }

    /// The signals that arrived since the last call (each at most once).
    pub fn take(&self) -> Vec<i32> {
        let mut buf = [0u8; 64];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        self.flags
            .iter()
            .filter(|(_, flag)| flag.swap(false, Ordering::SeqCst))
            .map(|(sig, _)| *sig)
            .collect()
    }
}

impl AsFd for Signals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }
}

/// The signal's name, for logs.
pub fn name(sig: i32) -> &'static str {
    signal_hook::low_level::signal_name(sig).unwrap_or("unknown signal")
}

/// Blocks every signal in this thread and returns the previous mask. The
/// supervisor forks with all signals blocked, so that a signal sent to a new
/// child before it has reset its handlers waits instead of running the
/// supervisor's handler in the child.
pub fn block_all() -> io::Result<SigSet> {
    let mut old = SigSet::empty();
    nix::sys::signal::pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    )?;
    Ok(old)
}

/// Restores a mask returned by [`block_all`].
pub fn restore(mask: &SigSet) -> io::Result<()> {
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(mask), None)?;
    Ok(())
}

/// In a forked child: puts every handled signal back to its default action.
pub fn reset_to_default() -> io::Result<()> {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in HANDLED {
        let sig = Signal::try_from(sig)?;
        // SAFETY: installing SIG_DFL runs no code of ours in a handler; this
        // is called in a single-threaded child with every signal blocked.
        unsafe { sigaction(sig, &default) }?;
    }
    Ok(())
}
