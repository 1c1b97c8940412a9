//! CPU priority for a new generation's start-up.
//!
//! On a busy machine, a new generation competes for CPU with the old one,
//! which is serving at full tilt, so the few milliseconds its workers take
//! to load the plugin stretch to tens. When the host is allowed to (root,
//! or CAP_SYS_NICE, or RLIMIT_NICE), each new worker loads [`BOOST`] nice
//! levels above the old ones and drops back when it is ready (but the one a
//! standby prepared, which wakes from a long sleep: see `PreparedWorker`,
//! as much as the supervisor). The old
//! supervisor keeps its level, and so does the new one under a single
//! serving worker: a boosted one (the old, or the new one copying the
//! plugin) was measured to take the CPU from the serving worker for up to
//! 1.5 ms, the pause its clients felt. Under several serving workers the
//! new supervisor is raised (see [`supervisor_head_start`]) until it takes
//! over. Without the privilege everything starts at the same level.
//! Linux keeps the nice value per thread, so a worker resets every one of
//! its threads. A standby (see `reload::Standby`) waits as a batch job
//! (SCHED_BATCH), so that its exec never preempts a worker that serves,
//! and is scheduled as usual again when it is started.

use std::io;

/// How many nice levels a starting generation's workers are raised by.
pub const BOOST: i32 = 10;

/// How many nice levels a starting supervisor is raised by, under a
/// generation of `workers` serving workers: enough (each level weighs
/// about 1.25 times the one below) for it to weigh about as much as they
/// do together, up to [`BOOST`]. With one worker, none: a raised supervisor
/// copying the plugin was measured to take the CPU from the one worker
/// that serves (see the module docs). With sixteen, a supervisor at the
/// usual level waited up to 9 ms for the CPU to copy a plugin it copies in
/// 0.5 ms, and as long again to fork each worker.
pub fn supervisor_head_start(workers: usize) -> i32 {
    let levels = (workers.max(1) as f64).ln() / 1.25f64.ln();
    (levels.round() as i32).clamp(0, BOOST)
}

/// This thread's nice value.
pub fn current() -> io::Result<i32> {
    // getpriority can return -1 as a value: errno tells an error apart.
    // SAFETY: errno is thread-local; writing it is how the C API is used.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: plain system call on this thread; no memory is passed.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    match io::Error::last_os_error() {
        e if e.raw_os_error() != Some(0) && nice == -1 => Err(e),
        _ => Ok(nice),
    }
}

/// Sets the nice value of thread `tid` (0: the calling thread).
pub fn set(tid: i32, nice: i32) -> io::Result<()> {
    let who =
        libc::id_t::try_from(tid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain system call; no memory is passed.
    match unsafe { libc::setpriority(libc::PRIO_PROCESS, who, nice) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Returns the calling thread to `nice` after a head start. Lowering is
/// always allowed; if raising was not, this changes nothing.
pub fn return_to(nice: i32) {
    if let Err(e) = set(0, nice) {
        tracing::warn!("cannot return to nice {nice}: {e}");
    }
}

/// Sets the nice value of every thread of this process.
pub fn set_all_threads(nice: i32) -> io::Result<()> {
    for task in std::fs::read_dir("/proc/self/task")? {
        if let Some(tid) = task?.file_name().to_str().and_then(|t| t.parse().ok()) {
            set(tid, nice)?;
        }
    }
    Ok(())
}

/// Switches thread `tid` (0: the calling thread) between SCHED_BATCH
/// (`true`) and SCHED_OTHER at the same nice value: a batch thread never
/// preempts another on waking, and either switch is allowed without
/// privilege (for a thread of the same user).
pub fn set_batch(tid: i32, batch: bool) -> io::Result<()> {
    let policy = match batch {
        true => libc::SCHED_BATCH,
        false => libc::SCHED_OTHER,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain system call; `param` is a valid, initialised struct
    // that outlives the call, which only reads it.
    match unsafe { libc::sched_setscheduler(tid, policy, &param) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Whether this thread runs with the usual policy, SCHED_OTHER.
pub fn is_usual() -> bool {
    // SAFETY: plain system call about this thread; no memory is passed.
    unsafe { libc::sched_getscheduler(0) == libc::SCHED_OTHER }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_supervisor_is_raised_by_as_much_as_the_workers_it_joins_weigh() {
        let levels: Vec<i32> = [0, 1, 2, 4, 8, 16, 1000]
            .into_iter()
            .map(supervisor_head_start)
            .collect();
        assert_eq!(levels, [0, 0, 3, 6, 9, 10, 10]);
    }
}
