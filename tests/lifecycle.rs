//! A hot reload that something interrupts (issue 7): a stop signal to the
//! old generation while the new one starts or while the old one drains, a
//! new worker or a new supervisor killed at the worst moment, readers of the
//! pid file during reloads, a new plugin that cannot hot-reload. Whatever
//! happens, exactly one generation ends up serving (or none, after a stop),
//! the pid and status files say which, and no process is left behind.
//!
//! Each test has its own directory and hosts (port 0), waits for everything
//! with a deadline, and leaves no process behind (see `support`).

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::*;

const LONG: Duration = Duration::from_secs(30);
/// "Within a few seconds".
const SOON: Duration = Duration::from_secs(5);
/// How long a state must last to count as the outcome, not a passing one.
const STEADY: Duration = Duration::from_secs(1);

/// `host reload --pid-file FILE [--timeout SECS]`: whether it succeeded, its
/// stdout and stderr.
fn reload(pid_file: &Path, timeout: Option<&str>) -> (bool, String, String) {
    let mut args = vec!["reload", "--pid-file", pid_file.to_str().unwrap()];
    if let Some(t) = timeout {
        args.extend(["--timeout", t]);
    }
    let (status, out, err) = host_command(&args, Duration::from_secs(120));
    (status.success(), out, err)
}

/// [`reload`] on a thread, for a reload the test interferes with.
fn reload_in_background(pid_file: &Path) -> JoinHandle<(bool, String, String)> {
    let pid_file = pid_file.to_owned();
    std::thread::spawn(move || reload(&pid_file, Some("60")))
}

/// Joins `thread`, waiting at most `timeout` for it to finish.
fn join_within<T>(what: &str, thread: JoinHandle<T>, timeout: Duration) -> T {
    eventually(what, timeout, || thread.is_finished().then_some(()));
    thread.join().expect("the thread panicked")
}

/// Waits for the old supervisor's "reload: generation G starting as pid P"
/// line; returns P.
fn new_supervisor_pid(host: &Host, generation: u64) -> u32 {
    let line = host.wait_for_log(
        &format!("reload: generation {generation} starting as pid "),
        LONG,
    );
    line.rsplit(' ').next().unwrap().trim().parse().unwrap()
}

/// The first `faulty` worker of `generation` that recorded `what`.
fn faulty_worker(events: &Path, what: &str, generation: u64) -> u32 {
    eventually(
        &format!("a {what} event from a generation {generation} worker"),
        LONG,
        || faulty_event_pids(events, what, generation).first().copied(),
    )
}

/// The `faulty` workers of `generation` that started, have not shut down,
/// and live.
fn live_faulty_workers(events: &Path, generation: u64) -> Vec<u32> {
    let gone = faulty_event_pids(events, "shutdown", generation);
    faulty_event_pids(events, "start", generation)
        .into_iter()
        .filter(|pid| !gone.contains(pid) && alive(*pid))
        .collect()
}

/// Checks that `pid` serves as generation `generation`: the pid file names
/// it and its status file says it serves. Err says what it saw instead.
fn check_serving(pid_file: &Path, pid: u32, generation: u64) -> Result<(), String> {
    let named = pid_in(pid_file);
    let status = read_status(pid_file);
    if named == Some(pid) && status.as_ref().is_some_and(|s| s.serving(pid, generation)) {
        Ok(())
    } else {
        Err(format!(
            "pid file names {named:?}, status file says {status:?} (wanted pid {pid}, generation {generation}, serving)"
        ))
    }
}

/// Samples a status file on a thread, about every millisecond, and keeps
/// every distinct content seen, until dropped.
struct StatusWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<StatusFile>>>,
    thread: Option<JoinHandle<()>>,
}

impl StatusWatch {
    fn start(pid_file: &Path) -> StatusWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, seen, pid_file) =
                (Arc::clone(&stop), Arc::clone(&seen), pid_file.to_owned());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(status) = read_status(&pid_file) {
                        let mut seen = seen.lock().unwrap();
                        if seen.last() != Some(&status) {
                            seen.push(status);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        StatusWatch {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<StatusFile> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for StatusWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sets a flag when dropped, so that helper threads end even when the test
/// fails.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// a) SIGQUIT means "step aside" only from the generation being started; from
/// anyone else it is a graceful stop, which abandons the reload in flight.
#[test]
fn sigquit_from_a_stranger_during_a_reload_stops_everything_gracefully() {
    let dir = temp_dir();
    let pid_file = dir.path().join("faulty.pid");
    let Faulty {
        mut host,
        mode,
        events,
    } = start_faulty(
        dir.path(),
        "serve",
        &[
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--reload-timeout",
            "30",
        ],
        &[],
    );
    let old = host.supervisor();
    let old_worker = faulty_worker(&events, "start", 1);
    let watch = StatusWatch::start(&pid_file);

    std::fs::write(&mode, "hang-before-ready").unwrap();
    signal(old, Signal::SIGUSR2);
    let new_supervisor = new_supervisor_pid(&host, 2);
    let new_worker = faulty_worker(&events, "start", 2);

    // From the test, not from the new generation.
    signal(old, Signal::SIGQUIT);
    let status = host.wait_exit(LONG);
    assert_eq!(
        status.code(),
        Some(0),
        "the old supervisor's exit; log:\n{}",
        host.log_text()
    );
    assert!(
        faulty_event_pids(&events, "shutdown", 1).contains(&old_worker),
        "the old worker (pid {old_worker}) did not run its shutdown; events: {:?}",
        lines(&events)
    );
    eventually_ok("generation 2 to be stopped too", SOON, || {
        match (alive(new_worker), alive(new_supervisor)) {
            (false, false) => Ok(()),
            (w, s) => Err(format!(
                "worker pid {new_worker} alive: {w}, supervisor pid {new_supervisor} alive: {s}; status file: {:?}",
                read_status(&pid_file)
            )),
        }
    });
    eventually_ok("no process of the host to remain", SOON, || {
        let left = host.processes();
        match left.is_empty() {
            true => Ok(()),
            false => Err(format!("{left:?} remain")),
        }
    });
    eventually("the pid file to be unlocked", SOON, || {
        (!host_runs_on(&pid_file)).then_some(())
    });
    let seen = watch.seen();
    assert!(
        !seen
            .iter()
            .any(|s| s.generation == 2 && s.state == "serving"),
        "generation 2 was said to serve: {seen:?}"
    );
}

/// b) Once a reload succeeded, the old supervisor only drains; a SIGTERM to
/// it then must not cut its draining workers short, nor touch the new
/// generation.
#[test]
fn sigterm_to_the_old_supervisor_while_it_drains_lets_its_worker_finish() {
    let dir = temp_dir();
    let pid_file = dir.path().join("faulty.pid");
    let Faulty { host, events, .. } = start_faulty(
        dir.path(),
        "slow-shutdown",
        &[
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--shutdown-timeout",
            "20",
        ],
        &[],
    );
    let old = host.supervisor();
    let old_worker = faulty_worker(&events, "start", 1);

    let (ok, out, err) = reload(&pid_file, None);
    assert!(ok, "the reload failed: {out}{err}");
    let new_supervisor = pid_in(&pid_file).unwrap();
    assert_ne!(new_supervisor, old);
    let new_worker = faulty_worker(&events, "start", 2);
    // The old worker is in its 1.5 s shutdown: its supervisor is draining.
    faulty_worker(&events, "stopping", 1);
    assert!(
        alive(old) && faulty_event_pids(&events, "shutdown", 1).is_empty(),
        "precondition: the old generation is still draining"
    );

    signal(old, Signal::SIGTERM);
    // Not the anchor's child: its exit status is the anchor's to read.
    wait_gone("the old supervisor", old, LONG);
    assert!(
        faulty_event_pids(&events, "shutdown", 1).contains(&old_worker),
        "the old worker (pid {old_worker}) was killed before it finished its shutdown; events: {:?}\nlog:\n{}",
        lines(&events),
        host.log_text()
    );
    assert!(alive(new_worker), "generation 2's worker runs");
    assert!(
        faulty_event_pids(&events, "stopping", 2).is_empty(),
        "generation 2's worker was not told to stop: {:?}",
        lines(&events)
    );
    check_serving(&pid_file, new_supervisor, 2).unwrap();
}

/// A faulty host for the tests of a new worker killed between ready and
/// go: `--respawn-delay 30`, so that a delayed respawn would take longer
/// than the tests wait.
fn start_faulty_for_kill_tests(dir: &Path, pid_file: &Path) -> Faulty {
    start_faulty(
        dir,
        "serve",
        &[
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--respawn-delay",
            "30",
            "--reload-timeout",
            "30",
        ],
        &[],
    )
}

/// Starts a reload to `slow-ready` (300 ms from a new worker's start to its
/// `ready_to_take_over`) with `host reload` in the background, and stops the
/// old supervisor (SIGSTOP) before the new generation asks it to step
/// aside. Returns the reload, the new supervisor and the new worker, once
/// the new generation has asked (its SIGQUIT waits in the stopped old one).
fn reload_until_the_new_generation_asks(
    faulty: &Faulty,
    pid_file: &Path,
) -> (JoinHandle<(bool, String, String)>, u32, u32) {
    let old = faulty.host.supervisor();
    std::fs::write(&faulty.mode, "slow-ready").unwrap();
    let reloading = reload_in_background(pid_file);
    let new_supervisor = new_supervisor_pid(&faulty.host, 2);
    let new_worker = faulty_worker(&faulty.events, "start", 2);
    signal(old, Signal::SIGSTOP);
    assert!(
        faulty_event_pids(&faulty.events, "ready", 2).is_empty(),
        "precondition: the old supervisor stopped before the new worker was ready (machine too slow?)"
    );
    faulty
        .host
        .wait_for_log(&format!("asking pid {old} to step aside"), LONG);
    (reloading, new_supervisor, new_worker)
}

/// Checks the outcome of a reload whose new worker was killed before the
/// takeover:
/// generation 1 serves (within a few seconds, with a live worker) and goes
/// on serving, the interrupted `host reload` reported a failure, nothing of
/// generation 2 is left, and the next reload works.
fn assert_generation_1_serves_after_the_failed_takeover(
    faulty: &Faulty,
    pid_file: &Path,
    reloading: JoinHandle<(bool, String, String)>,
    new_supervisor: u32,
) {
    let Faulty {
        host, mode, events, ..
    } = faulty;
    let old = host.supervisor();
    let gen1_serves = || {
        check_serving(pid_file, old, 1)?;
        match live_faulty_workers(events, 1).is_empty() {
            true => Err(format!(
                "no live generation 1 worker; events: {:?}",
                lines(events)
            )),
            false => Ok(()),
        }
    };
    eventually_ok("generation 1 to serve (again)", SOON, gen1_serves);
    holds_for("generation 1 serving", STEADY, gen1_serves);
    let (ok, out, err) = join_within("the interrupted `host reload`", reloading, LONG);
    assert!(!ok, "the interrupted reload reported success: {out}{err}");
    eventually_ok("generation 2 to be gone", SOON, || {
        let gen1 = faulty_event_pids(events, "start", 1);
        let others: Vec<u32> = host
            .serving_processes()
            .into_iter()
            .filter(|p| *p != host.pid() && *p != old && !gen1.contains(p))
            .collect();
        match (alive(new_supervisor), others.is_empty()) {
            (false, true) => Ok(()),
            (s, _) => Err(format!(
                "supervisor pid {new_supervisor} alive: {s}; other processes: {others:?}"
            )),
        }
    });

    // The host can reload again.
    std::fs::write(mode, "serve").unwrap();
    let (ok, out, err) = reload(pid_file, None);
    assert!(ok, "a later reload failed: {out}{err}");
    let now = pid_in(pid_file).unwrap();
    assert!(now != old && now != new_supervisor, "{out}");
    check_serving(pid_file, now, 2).unwrap();
}

/// c) A new worker killed after it said it was ready, and before the old
/// generation handled the request to step aside: the new generation must
/// not take over without it.
#[test]
fn new_worker_killed_after_ready_before_the_takeover_leaves_the_old_generation_serving() {
    let dir = temp_dir();
    let pid_file = dir.path().join("faulty.pid");
    let faulty = start_faulty_for_kill_tests(dir.path(), &pid_file);
    faulty_worker(&faulty.events, "start", 1);
    let (reloading, new_supervisor, new_worker) =
        reload_until_the_new_generation_asks(&faulty, &pid_file);

    signal(new_worker, Signal::SIGKILL);
    // Reaped: the new supervisor has seen it die before the old one goes on.
    eventually("the new worker to be dead and reaped", LONG, || {
        (!Path::new(&format!("/proc/{new_worker}")).exists()).then_some(())
    });
    signal(faulty.host.supervisor(), Signal::SIGCONT);

    assert_generation_1_serves_after_the_failed_takeover(
        &faulty,
        &pid_file,
        reloading,
        new_supervisor,
    );
}

/// c, the other order) The old generation already stepped aside (its
/// workers stop) when the new one finds its worker dead: it must not take
/// over, and the old generation resumes at once (not after the respawn
/// delay).
#[test]
fn new_worker_killed_after_the_old_stepped_aside_lets_the_old_resume() {
    let dir = temp_dir();
    let pid_file = dir.path().join("faulty.pid");
    let faulty = start_faulty_for_kill_tests(dir.path(), &pid_file);
    let old_worker = faulty_worker(&faulty.events, "start", 1);
    let (reloading, new_supervisor, new_worker) =
        reload_until_the_new_generation_asks(&faulty, &pid_file);

    // The new supervisor does not hear of its worker's death until the old
    // one has stepped aside (told its worker to stop, which shuts down).
    signal(new_supervisor, Signal::SIGSTOP);
    signal(new_worker, Signal::SIGKILL);
    eventually("the new worker to die", LONG, || {
        (!alive(new_worker)).then_some(())
    });
    signal(faulty.host.supervisor(), Signal::SIGCONT);
    eventually(
        "the old generation to step aside (its worker shuts down)",
        LONG,
        || {
            faulty_event_pids(&faulty.events, "shutdown", 1)
                .contains(&old_worker)
                .then_some(())
        },
    );
    signal(new_supervisor, Signal::SIGCONT);

    assert_generation_1_serves_after_the_failed_takeover(
        &faulty,
        &pid_file,
        reloading,
        new_supervisor,
    );
}

/// d) The new supervisor killed after it asked the old one to step aside but
/// before the takeover completed: the old generation must carry on.
#[test]
fn new_supervisor_killed_while_taking_over_leaves_the_old_generation_serving() {
    let dir = temp_dir();
    let pid_file = dir.path().join("faulty.pid");
    let faulty = start_faulty(
        dir.path(),
        "http",
        &[
            "--listen",
            "127.0.0.1:0",
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--respawn-delay",
            "30",
        ],
        &[],
    );
    let host = &faulty.host;
    let old = host.supervisor();
    let addr = host.listen_addr();
    assert_eq!(identity(&http_get(addr).unwrap()).0, 1);

    // Generation 2's worker takes 300 ms to be ready: time to stop the old
    // supervisor before it hears that, so the takeover cannot complete.
    std::fs::write(&faulty.mode, "http-slow-ready").unwrap();
    signal(old, Signal::SIGUSR2);
    let new_supervisor = new_supervisor_pid(host, 2);
    signal(old, Signal::SIGSTOP);
    host.wait_for_log(&format!("asking pid {old} to step aside"), LONG);
    assert!(
        !host.log_text().contains("took over from pid"),
        "precondition: the takeover had not completed"
    );
    signal(new_supervisor, Signal::SIGKILL);
    // Dead (a zombie of the stopped old one) before the old one goes on.
    eventually("the new supervisor to die", LONG, || {
        (!alive(new_supervisor)).then_some(())
    });
    signal(old, Signal::SIGCONT);

    let gen1_serves = || {
        let body = http_get(addr).map_err(|e| format!("GET: {e}"))?;
        match identity(&body).0 {
            1 => check_serving(&pid_file, old, 1),
            g => Err(format!("served by generation {g}")),
        }
    };
    eventually_ok("generation 1 to serve (again)", SOON, gen1_serves);
    holds_for("generation 1 serving", STEADY, gen1_serves);
    eventually("the killed supervisor to be reaped", SOON, || {
        (!alive(new_supervisor)).then_some(())
    });

    let (ok, out, err) = reload(&pid_file, None);
    assert!(ok, "a later reload failed: {out}{err}");
    let now = pid_in(&pid_file).unwrap();
    check_serving(&pid_file, now, 2).unwrap();
    eventually("a reply from generation 2", LONG, || {
        (identity(&http_get(addr).ok()?).0 == 2).then_some(())
    });
}

/// f) The pid file names the live supervisor at every instant, reloads
/// included: never empty, never half-written.
#[test]
fn pid_file_always_holds_a_pid_during_reloads() {
    let dir = temp_dir();
    let plugin = build_plugin("hello-http", None, &dir.path().join("libhello.so"));
    let Served { host, pid_file, .. } = serve_plugin(dir.path(), &plugin, &[], &[]);

    let stop = Arc::new(AtomicBool::new(false));
    let _stop_helpers = StopOnDrop(Arc::clone(&stop));
    // Every distinct pid read, and the reads that were not a pid.
    let reader: JoinHandle<(u64, Vec<u32>, Vec<String>)> = {
        let (stop, pid_file) = (Arc::clone(&stop), pid_file.clone());
        std::thread::spawn(move || {
            let (mut reads, mut pids, mut bad) = (0, Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                reads += 1;
                match std::fs::read_to_string(&pid_file) {
                    Ok(text) => match text.trim().parse::<u32>() {
                        Ok(pid) if !pids.contains(&pid) => pids.push(pid),
                        Ok(_) => {}
                        Err(_) => bad.push(format!("{text:?}")),
                    },
                    Err(e) => bad.push(e.to_string()),
                }
            }
            (reads, pids, bad)
        })
    };
    let status_calls: JoinHandle<(u64, Vec<String>)> = {
        let (stop, pid_file) = (Arc::clone(&stop), pid_file.clone());
        std::thread::spawn(move || {
            let (mut calls, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                calls += 1;
                let (status, _, err) = host_command(
                    &["status", "--pid-file", pid_file.to_str().unwrap()],
                    Duration::from_secs(10),
                );
                if !status.success() {
                    failed.push(err.trim().to_owned());
                }
            }
            (calls, failed)
        })
    };

    let mut supervisors = vec![host.supervisor()];
    for i in 0..20 {
        let (ok, out, err) = reload(&pid_file, None);
        assert!(ok, "reload {i} failed: {out}{err}");
        supervisors.push(pid_in(&pid_file).unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let (reads, pids, bad) = join_within("the pid file reader", reader, LONG);
    let (calls, failed) = join_within("the status caller", status_calls, LONG);
    let strangers: Vec<u32> = pids
        .into_iter()
        .filter(|p| !supervisors.contains(p))
        .collect();
    assert!(
        bad.is_empty() && strangers.is_empty() && failed.is_empty(),
        "{} of {reads} reads of the pid file were not a pid, e.g. {:?}; \
         pids read that were no supervisor (half-written?): {strangers:?}; \
         {} of {calls} `host status` calls failed, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(3)],
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(reads >= 100 && calls >= 10, "{reads} reads, {calls} calls");
}

/// g) A new generation whose plugin cannot hot-reload (`mode`) must not take
/// over: the reload fails as soon as its plugin says so, not at the reload
/// timeout, and generation 1 carries on.
fn assert_reload_to_a_plugin_that_cannot_hot_reload_fails_at_once(mode: &str) {
    let dir = temp_dir();
    let pid_file = dir.path().join("faulty.pid");
    let Faulty {
        host,
        mode: mode_file,
        events,
    } = start_faulty(
        dir.path(),
        "serve",
        &[
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--reload-timeout",
            "60",
        ],
        &[],
    );
    let old = host.supervisor();
    let worker = faulty_worker(&events, "start", 1);

    std::fs::write(&mode_file, mode).unwrap();
    let started = Instant::now();
    let (ok, out, err) = reload(&pid_file, Some("20"));
    let took = started.elapsed();
    assert!(!ok, "the reload succeeded: {out}");
    assert!(
        took < Duration::from_secs(10),
        "the reload took {took:?} to fail: {err}"
    );
    assert!(
        err.contains("can_do_hot_reload") || err.contains("cannot hot-reload"),
        "{err}"
    );
    eventually_ok("generation 1 to serve", SOON, || {
        check_serving(&pid_file, old, 1)
    });
    assert!(alive(worker), "generation 1's worker runs");
    eventually_ok("generation 2 to be gone", SOON, || {
        let others: Vec<u32> = host
            .serving_processes()
            .into_iter()
            .filter(|p| ![host.pid(), old, worker].contains(p))
            .collect();
        match others.is_empty() {
            true => Ok(()),
            false => Err(format!("{others:?} remain")),
        }
    });
}

#[test]
fn reload_to_a_plugin_that_cannot_hot_reload_fails_at_once() {
    assert_reload_to_a_plugin_that_cannot_hot_reload_fails_at_once("no-hot-reload");
}

#[test]
fn reload_to_a_plugin_that_cannot_hot_reload_nor_says_ready_fails_at_once() {
    assert_reload_to_a_plugin_that_cannot_hot_reload_fails_at_once("no-hot-reload-no-ready");
}
