//! The supervisor's everyday behaviour, with real processes and signals:
//! workers run and serve, crashed workers come back, a dead supervisor takes
//! its workers with it, SIGTERM stops everything cleanly, the pid file keeps
//! one host per file.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::*;

const LONG: Duration = Duration::from_secs(20);

#[test]
fn worker_serves_http_with_its_identity() {
    let dir = temp_dir();
    let plugin = build_plugin("hello-http", None, &dir.path().join("libhello.so"));
    let host = start_host(
        dir.path(),
        &[
            "--plugin",
            plugin.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    host.wait_serving();
    let body = http_get(host.listen_addr()).expect("a reply");
    let last = body.lines().last().unwrap();
    assert!(
        last.starts_with(&format!(
            "hello-http {} gen=1 pid=",
            env!("CARGO_PKG_VERSION")
        )),
        "{body:?}"
    );
    let (_, worker) = identity(&body);
    assert_ne!(
        worker,
        host.supervisor(),
        "the plugin runs in a worker, not in the supervisor"
    );
    let status = std::fs::read_to_string(format!("/proc/{worker}/status")).unwrap();
    assert!(
        status.contains(&format!("PPid:\t{}", host.supervisor())),
        "the worker is the supervisor's child"
    );
    // The plugin's own tracing events come out of the host's log, tagged.
    host.wait_for_log(
        &format!("worker[gen=1 pid={worker}]: hello_http: serving on 1 listener(s)"),
        LONG,
    );
}

#[test]
fn three_workers_run() {
    let dir = temp_dir();
    let (host, ticks) = start_ticker(dir.path(), &["--workers", "3"]);
    let pids = eventually("ticks from 3 workers", LONG, || {
        Some(tick_pids(&ticks)).filter(|p| p.len() == 3)
    });
    assert!(!pids.contains(&host.pid()));
    for &pid in &pids {
        assert!(alive(pid), "worker {pid} runs");
    }
    // The host's processes (found by their tag, see support) are these,
    // the anchor and the supervisor (and the standby for the next reload,
    // once it is one: it is born a copy of the supervisor).
    let mut expected = pids;
    expected.extend([host.pid(), host.supervisor()]);
    expected.sort_unstable();
    eventually_ok(
        "the workers, the anchor and the supervisor",
        LONG,
        || match host.serving_processes() {
            p if p == expected => Ok(()),
            p => Err(format!("processes {p:?}, wanted {expected:?}")),
        },
    );
}

#[test]
fn killed_worker_is_respawned_after_the_delay() {
    let dir = temp_dir();
    let (host, ticks) = start_ticker(dir.path(), &["--respawn-delay", "0.5"]);
    let first = eventually("a first tick", LONG, || tick_pids(&ticks).first().copied());
    let killed_at = Instant::now();
    signal(first, Signal::SIGKILL);
    let second = eventually("a tick from a new worker", LONG, || {
        tick_pids(&ticks).get(1).copied()
    });
    let took = killed_at.elapsed();
    assert_ne!(first, second);
    assert!(
        took >= Duration::from_millis(500),
        "respawned after {took:?}, before the 0.5 s delay"
    );
    assert!(
        took < Duration::from_secs(3),
        "respawned after {took:?}, long after the 0.5 s delay"
    );
    host.wait_for_log(
        &format!("worker pid {first} was killed by SIGKILL; respawning in 500ms"),
        LONG,
    );
}

#[test]
fn killed_supervisor_makes_the_worker_shut_down_within_a_second() {
    let dir = temp_dir();
    let (host, ticks) = start_ticker(dir.path(), &[]);
    let worker = eventually("a first tick", LONG, || tick_pids(&ticks).first().copied());
    let killed_at = Instant::now();
    signal(host.supervisor(), Signal::SIGKILL);
    let shutdown = format!("shutdown pid={worker}");
    eventually("the worker's shutdown line", Duration::from_secs(1), || {
        lines(&ticks).contains(&shutdown).then_some(())
    });
    eventually("the worker to exit", Duration::from_secs(1), || {
        (!alive(worker)).then_some(())
    });
    assert!(killed_at.elapsed() < Duration::from_secs(1));
    assert_eq!(
        lines(&ticks)
            .iter()
            .filter(|l| l.starts_with("shutdown"))
            .count(),
        1
    );
}

#[test]
fn sigterm_shuts_down_each_worker_once_and_exits_0() {
    let dir = temp_dir();
    let (mut host, ticks) = start_ticker(dir.path(), &["--workers", "3"]);
    let workers: BTreeSet<u32> = eventually("ticks from 3 workers", LONG, || {
        Some(tick_pids(&ticks)).filter(|p| p.len() == 3)
    })
    .into_iter()
    .collect();
    signal(host.pid(), Signal::SIGTERM);
    let status = host.wait_exit(LONG);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status; log:\n{}",
        host.log_text()
    );
    let shutdowns: Vec<u32> = lines(&ticks)
        .iter()
        .filter_map(|l| l.strip_prefix("shutdown pid=")?.parse().ok())
        .collect();
    assert_eq!(
        shutdowns.len(),
        3,
        "one shutdown line per worker: {shutdowns:?}"
    );
    assert_eq!(shutdowns.into_iter().collect::<BTreeSet<_>>(), workers);
    for pid in workers {
        assert!(!alive(pid));
    }
}

#[test]
fn sigterm_to_one_worker_shuts_it_down_and_respawns_it() {
    let dir = temp_dir();
    let (host, ticks) = start_ticker(dir.path(), &["--respawn-delay", "0.1"]);
    let first = eventually("a first tick", LONG, || tick_pids(&ticks).first().copied());
    signal(first, Signal::SIGTERM);
    let second = eventually("a tick from a new worker", LONG, || {
        tick_pids(&ticks).get(1).copied()
    });
    assert_ne!(first, second);
    assert!(lines(&ticks).contains(&format!("shutdown pid={first}")));
    assert!(alive(host.supervisor()));
}

#[test]
fn panicking_worker_is_logged_with_its_message_and_respawned() {
    let dir = temp_dir();
    let Faulty { host, .. } =
        start_faulty(dir.path(), "panic-in-run", &["--respawn-delay", "0.1"], &[]);
    let line = host.wait_for_log("supervised_process panicked at", LONG);
    assert!(
        line.contains("told to panic (mode panic-in-run)") && line.contains("respawning in 100ms"),
        "{line}"
    );
    host.wait_for_nth_log("supervised_process panicked at", 2, LONG);
    assert!(
        !host.log_text().contains("RUST_BACKTRACE"),
        "no raw panic output"
    );
}

#[test]
fn second_instance_is_refused_naming_the_running_pid() {
    let dir = temp_dir();
    let pid_file = dir.path().join("ticker.pid");
    let (first, _ticks) = start_ticker(dir.path(), &["--pid-file", pid_file.to_str().unwrap()]);
    first.wait_serving();
    let plugin = dir.path().join("libticker.so");
    let (status, log) = run_host(
        &[
            "--plugin",
            plugin.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--",
            "other.log",
        ],
        &[],
        LONG,
    );
    assert!(!status.success());
    assert!(
        log.contains(&format!("already running as pid {}", first.supervisor())),
        "{log}"
    );
    assert!(alive(first.supervisor()));
}

#[test]
fn stale_pid_file_is_taken_over() {
    let dir = temp_dir();
    let pid_file = dir.path().join("ticker.pid");
    std::fs::write(&pid_file, "999999\n").unwrap();
    let (host, _ticks) = start_ticker(dir.path(), &["--pid-file", pid_file.to_str().unwrap()]);
    host.wait_serving();
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{}\n", host.supervisor())
    );
}

#[test]
fn status_and_stop_commands_control_a_running_host() {
    let dir = temp_dir();
    let pid_file = dir.path().join("ticker.pid");
    let (mut host, _ticks) = start_ticker(dir.path(), &["--pid-file", pid_file.to_str().unwrap()]);
    host.wait_serving();
    let status = std::process::Command::new(host_bin())
        .args(["status", "--pid-file", pid_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(status.status.success());
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&format!(
            "running: pid {}, generation 1, serving",
            host.supervisor()
        )),
        "{text}"
    );
    let stop = std::process::Command::new(host_bin())
        .args(["stop", "--pid-file", pid_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    assert_eq!(host.wait_exit(LONG).code(), Some(0));
    let after = std::process::Command::new(host_bin())
        .args(["status", "--pid-file", pid_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!after.status.success());
    assert!(String::from_utf8_lossy(&after.stderr).contains("no host is running"));
}

#[test]
fn worker_that_ignores_the_stop_is_killed_after_the_shutdown_timeout() {
    let dir = temp_dir();
    let Faulty {
        mut host, events, ..
    } = start_faulty(
        dir.path(),
        "ignore-stop",
        &["--shutdown-timeout", "0.5"],
        &[],
    );
    let worker = eventually("the worker to start", LONG, || {
        faulty_pids(&events, "start").first().copied()
    });
    let stopped_at = Instant::now();
    signal(host.pid(), Signal::SIGTERM);
    assert_eq!(host.wait_exit(LONG).code(), Some(0));
    let took = stopped_at.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "exited after {took:?}, before the timeout"
    );
    assert!(!alive(worker));
    assert!(host
        .log_text()
        .contains("workers did not stop within 500ms: killing them"));
    assert!(host.log_text().contains(&format!(
        "worker pid {worker} stopped (was killed by SIGKILL)"
    )));
}

/// A worker that dies right after it starts, with no respawn delay: the
/// slot backs off (0, 0, 0.2, 0.4, 0.8, 1.6 s...), so a few respawns in
/// three seconds, not thousands, and the log says it is crash-looping.
#[test]
fn worker_that_keeps_crashing_is_respawned_with_backoff() {
    let dir = temp_dir();
    let pid_file = dir.path().join("crash.pid");
    let faulty = start_faulty(
        dir.path(),
        "exit-in-run",
        &[
            "--respawn-delay",
            "0",
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
        &[],
    );
    let started = Instant::now();
    faulty
        .host
        .wait_for_log("crash-looping: 3 workers in a row died young", LONG);
    std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
    let starts = faulty_pids(&faulty.events, "start").len();
    assert!(
        (3..=12).contains(&starts),
        "{starts} workers started in 3 s: no backoff"
    );
    let (_, out, _) = host_command(&["status", "--pid-file", pid_file.to_str().unwrap()], LONG);
    assert!(out.contains("1 worker slot(s) crash-looping"), "{out}");
}

/// A worker that forks a child and exits, respawned again and again: each
/// child dies with its worker, and after `host stop` no process of the host
/// remains and the port is free.
#[test]
fn nothing_a_worker_forks_outlives_it() {
    assert_nothing_a_worker_forks_outlives_it("fork-and-exit");
}

/// The same, for children that leave the worker's session and process
/// group with `setsid`: the supervisor, their subreaper, kills them.
#[test]
fn nothing_a_worker_forks_outlives_it_even_after_setsid() {
    assert_nothing_a_worker_forks_outlives_it("setsid-fork-and-exit");
}

fn assert_nothing_a_worker_forks_outlives_it(mode: &str) {
    let dir = temp_dir();
    let pid_file = dir.path().join("fork.pid");
    let faulty = start_faulty(
        dir.path(),
        mode,
        &[
            "--respawn-delay",
            "0.05",
            "--listen",
            "127.0.0.1:0",
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
        &[],
    );
    let addr = faulty.host.listen_addr();
    let children = eventually("7 workers to fork a child", LONG, || {
        let found: Vec<u32> = lines(&faulty.events)
            .iter()
            .filter_map(|l| {
                l.strip_prefix("child pid=")?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        (found.len() >= 7).then_some(found)
    });
    eventually_ok("the children of exited workers to be gone", LONG, || {
        // The newest may belong to a worker still alive.
        let left: Vec<u32> = children[..6]
            .iter()
            .copied()
            .filter(|&c| alive(c))
            .collect();
        match left.is_empty() {
            true => Ok(()),
            false => Err(format!("{left:?} still alive")),
        }
    });
    let (status, out, err) =
        host_command(&["stop", "--pid-file", pid_file.to_str().unwrap()], LONG);
    assert!(status.success(), "{out}{err}");
    eventually_ok("no process of the host to remain", LONG, || {
        match faulty.host.processes() {
            left if left.is_empty() => Ok(()),
            left => Err(format!("{left:?} remain")),
        }
    });
    std::net::TcpListener::bind(addr).expect("the port is free again");
}

/// The uid of `pid`, from /proc (the real one, the first of the four).
fn uid_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Started as root with `--user nobody`: the listener and pid file are set
/// up as root, then the anchor, the supervisor and the workers all run as
/// nobody, and the service serves.
#[test]
fn user_flag_drops_every_process_below_the_bind_to_that_user() {
    use std::os::unix::fs::PermissionsExt;
    let nobody = 65534;
    let dir = temp_dir();
    // nobody writes the status file beside the pid file, and reads the plugin.
    std::os::unix::fs::chown(dir.path(), Some(nobody), Some(nobody)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let plugin = build_plugin("hello-http", None, &dir.path().join("libhello.so"));
    let pid_file = dir.path().join("hello.pid");
    let args = [
        "--plugin",
        plugin.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--user",
        "nobody",
    ];
    let host = start_host(dir.path(), &args, &[]);
    host.wait_serving();
    let (_, worker) = identity(&http_get(host.listen_addr()).unwrap());
    for (what, pid) in [
        ("anchor", host.pid()),
        ("supervisor", host.supervisor()),
        ("worker", worker),
    ] {
        assert_eq!(uid_of(pid), Some(nobody), "the {what}'s uid");
    }
}

#[test]
fn user_flag_is_refused_without_root_and_for_an_unknown_user() {
    let dir = temp_dir();
    let plugin = dir.path().join("libnothing.so");
    let (status, log) = run_host(
        &[
            "--plugin",
            plugin.to_str().unwrap(),
            "--user",
            "no-such-user-here",
        ],
        &[],
        LONG,
    );
    assert!(!status.success());
    assert!(
        log.contains("--user no-such-user-here: no such user"),
        "{log}"
    );

    // Not root: refused, naming the fix.
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(host_bin())
        .args(["--plugin", plugin.to_str().unwrap(), "--user", "nobody"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("only a host started as root can change user"),
        "{err}"
    );
}

/// A worker that writes garbage on its channel is killed with a logged
/// reason; the supervisor carries on and respawns it.
#[test]
fn worker_that_sends_garbage_is_killed_and_the_supervisor_carries_on() {
    let dir = temp_dir();
    let pid_file = dir.path().join("garbage.pid");
    let faulty = start_faulty(
        dir.path(),
        "garbage-to-supervisor",
        &[
            "--respawn-delay",
            "0.1",
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
        &[],
    );
    let line = faulty
        .host
        .wait_for_log("channel error: unknown channel message", LONG);
    assert!(line.contains("killing it"), "{line}");
    eventually("a respawned worker", LONG, || {
        (faulty_pids(&faulty.events, "start").len() >= 2).then_some(())
    });
    let status = read_status(&pid_file).expect("a status file");
    assert!(status.serving(faulty.host.supervisor(), 1), "{status:?}");
}

/// `--watchdog`: a worker stopped with SIGSTOP (or one that never pings)
/// is killed as hung and respawned; a worker that pings is left alone.
#[test]
fn watchdog_kills_and_respawns_a_hung_worker() {
    let dir = temp_dir();
    let faulty = start_faulty(
        dir.path(),
        "serve",
        &["--watchdog", "0.5", "--respawn-delay", "0.1"],
        &[],
    );
    let first = eventually("a worker", LONG, || {
        faulty_pids(&faulty.events, "start").first().copied()
    });
    // It pings every few milliseconds: it outlives several periods.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(alive(first), "a worker that pings was killed");

    signal(first, Signal::SIGSTOP);
    let line = faulty
        .host
        .wait_for_log("is hung: no ping_supervisor() for", LONG);
    assert!(line.contains(&format!("worker pid {first}")), "{line}");
    let second = eventually("a respawned worker", LONG, || {
        faulty_pids(&faulty.events, "start").get(1).copied()
    });
    assert!(!alive(first) && alive(second));
}
