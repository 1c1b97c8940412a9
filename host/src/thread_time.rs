//! How long the calling thread has run, and how long it has waited for a
//! CPU, for the debug log of a reload's steps. A step that takes long on a
//! busy machine mostly waits: on 2 CPUs serving 16 workers and 8 clients,
//! a new worker loaded the plugin in 4 ms of which it ran 0.5 ms. Which of
//! the two grew tells more work from too little CPU (which a CPU head
//! start, see `priority`, answers).

use std::fmt;
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// Since the thread began (for a forked worker's main thread: since the
/// fork).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadTime {
    /// On a CPU (`CLOCK_THREAD_CPUTIME_ID`).
    pub running: Duration,
    /// Runnable, waiting for a CPU (the run delay in
    /// `/proc/thread-self/schedstat`).
    pub waiting: Duration,
}

impl ThreadTime {
    /// The calling thread's times; `None` where the kernel does not keep
    /// them (without CONFIG_SCHED_INFO, say).
    pub fn now() -> Option<ThreadTime> {
        let cpu = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).ok()?;
        let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
        Some(ThreadTime {
            running: Duration::from(cpu),
            waiting: run_delay(&schedstat)?,
        })
    }

    /// What the thread spent between `earlier` and `self`.
    pub fn since(self, earlier: ThreadTime) -> ThreadTime {
        ThreadTime {
            running: self.running.saturating_sub(earlier.running),
            waiting: self.waiting.saturating_sub(earlier.waiting),
        }
    }
}

impl fmt::Display for ThreadTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.2} ms on a CPU, {:.2} ms waiting for one",
            self.running.as_secs_f64() * 1e3,
            self.waiting.as_secs_f64() * 1e3
        )
    }
}

/// The second field of a schedstat line ("on-CPU ns, run-delay ns,
/// time slices").
fn run_delay(schedstat: &str) -> Option<Duration> {
    let ns = schedstat.split_whitespace().nth(1)?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_delay_is_the_second_field() {
        assert_eq!(
            run_delay("1523000 48000 7\n"),
            Some(Duration::from_micros(48))
        );
        assert_eq!(run_delay("1523000\n"), None);
        assert_eq!(run_delay("1523000 x 7\n"), None);
    }

    #[test]
    fn a_thread_that_spins_runs_for_it() {
        let start = ThreadTime::now().expect("this kernel keeps schedstat");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut spent = ThreadTime::now().unwrap().since(start);
        while spent.running < Duration::from_millis(5) {
            assert!(std::time::Instant::now() < deadline, "only {spent} in 10 s");
            std::hint::spin_loop();
            spent = ThreadTime::now().unwrap().since(start);
        }
    }

    #[test]
    fn it_reads_as_milliseconds() {
        let t = ThreadTime {
            running: Duration::from_micros(470),
            waiting: Duration::from_micros(3610),
        };
        assert_eq!(t.to_string(), "0.47 ms on a CPU, 3.61 ms waiting for one");
    }
}
