//! `--watchdog`: a counter in a page shared by a supervisor and one worker.
//! The worker's `ping_supervisor()` bumps it (one relaxed atomic add, a few
//! nanoseconds, no system call); the supervisor reads it now and then, and
//! a worker whose counter stands still for the watchdog's period is hung.

use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::mman::{mmap_anonymous, munmap, MapFlags, ProtFlags};

const PAGE: usize = 4096;

/// One worker's heartbeat page.
pub struct Heartbeat {
    page: NonNull<c_void>,
}

impl Heartbeat {
    /// Maps a fresh shared page (zeroed by the kernel). Create it before
    /// forking the worker, so both processes map the same page.
    pub fn new() -> std::io::Result<Heartbeat> {
        let length = NonZeroUsize::new(PAGE).expect("a page is not empty");
        // SAFETY: an anonymous mapping at an address the kernel chooses
        // aliases no existing memory; it is unmapped only in Drop, once.
        let page = unsafe {
            mmap_anonymous(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }?;
        Ok(Heartbeat { page })
    }

    fn counter(&self) -> &AtomicU64 {
        // SAFETY: the page is mapped for as long as `self` lives, is page
        // aligned (so aligned for u64), zero-initialised (a valid
        // AtomicU64), and only ever accessed through this atomic, in both
        // processes.
        unsafe { self.page.cast::<AtomicU64>().as_ref() }
    }

    /// In the worker: one beat.
    pub fn beat(&self) {
        self.counter().fetch_add(1, Ordering::Relaxed);
    }

    /// In the supervisor: the beats so far.
    pub fn count(&self) -> u64 {
        self.counter().load(Ordering::Relaxed)
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        // SAFETY: `page` came from mmap with this length and no reference
        // into it outlives `self`.
        let _ = unsafe { munmap(self.page, PAGE) };
    }
}

// SAFETY: the page is shared memory accessed only through an atomic; the
// handle may be used from any thread of the worker.
unsafe impl Send for Heartbeat {}
// SAFETY: as above: every access is an atomic operation.
unsafe impl Sync for Heartbeat {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_in_a_forked_child_are_seen_by_the_parent() {
        let heartbeat = Heartbeat::new().unwrap();
        // SAFETY: the child only bumps an atomic and exits with _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                for _ in 0..5 {
                    heartbeat.beat();
                }
                // SAFETY: _exit skips the test harness's handlers.
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(heartbeat.count(), 5);
            }
        }
    }
}
