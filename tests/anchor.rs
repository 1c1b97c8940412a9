//! The anchor (issue 8): the process the user starts (the test's
//! [`Host::pid`]) lives for the service's whole life. It holds the listening
//! sockets and the pid-file lock, reaps orphans, never loads the plugin,
//! starts generation 1's supervisor, forwards signals to the supervisor in
//! charge, starts a new generation when that one dies unasked, and takes
//! the service down with it when it is killed. These tests drive it as PID 1
//! of a pid namespace, kill every process of a reload at every step under
//! load, stop and kill it, daemonize it, and read its status.
//!
//! Each test has its own directory and hosts (port 0), waits for everything
//! with a deadline, and leaves no process behind (see `support`). The load
//! clients open a new connection per request, with long timeouts (a request
//! may wait in the backlog while no generation accepts: that is no
//! failure); a refused, reset, short or timed-out request is one. Figures
//! for the report are printed with `eprintln!` as `anchor-... key=value`
//! lines (run with `--nocapture` to see them).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
const STEADY: Duration = Duration::from_millis(500);
/// Connect, write and read timeout of one request of the load.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Load clients; each has at most one request in flight.
const CLIENTS: usize = 4;

// ---- load ----

/// One request of the load: when it ended, and how.
#[derive(Clone, Debug)]
struct Outcome {
    at: Instant,
    /// `(generation, worker pid)` of the reply, or why the request failed.
    result: Result<(u64, u32), String>,
}

/// [`CLIENTS`] threads, each sending `GET /` over a new connection, one
/// after the other, until dropped or finished; every outcome is kept.
struct Load {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    clients: Vec<JoinHandle<()>>,
}

/// What a load saw.
struct LoadReport {
    outcomes: Vec<Outcome>,
}

/// `(generation, pid)` from the last line of a hello-http or faulty `http`
/// body; `None` if it has none.
fn parse_identity(body: &str) -> Option<(u64, u32)> {
    let last = body.lines().last()?;
    let field = |key: &str| last.split_whitespace().find_map(|w| w.strip_prefix(key));
    Some((field("gen=")?.parse().ok()?, field("pid=")?.parse().ok()?))
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let clients = (0..CLIENTS)
            .map(|_| {
                let (stop, outcomes) = (Arc::clone(&stop), Arc::clone(&outcomes));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let result = match http_get_within(addr, CLIENT_TIMEOUT) {
                            Ok(body) => parse_identity(&body)
                                .ok_or_else(|| format!("no identity in {body:?}")),
                            Err(e) => Err(format!("{:?}: {e}", e.kind())),
                        };
                        outcomes.lock().unwrap().push(Outcome {
                            at: Instant::now(),
                            result,
                        });
                    }
                })
            })
            .collect();
        Load {
            stop,
            outcomes,
            clients,
        }
    }

    /// How many requests got a reply so far.
    fn replies(&self) -> usize {
        self.outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.result.is_ok())
            .count()
    }

    /// Waits until `n` more requests got a reply (the load is flowing).
    fn wait_for_replies(&self, n: usize) {
        let wanted = self.replies() + n;
        eventually(&format!("{n} more replies to the load"), LONG, || {
            (self.replies() >= wanted).then_some(())
        });
    }

    /// When the first reply from `generation` that ended at or after `since` came.
    fn first_reply_from(&self, generation: u64, since: Instant) -> Option<Instant> {
        first_reply_from(&self.outcomes.lock().unwrap(), generation, since)
    }

    /// Stops the clients (each finishes its request) and returns what they saw.
    fn finish(mut self) -> LoadReport {
        self.stop_clients();
        LoadReport {
            outcomes: std::mem::take(&mut *self.outcomes.lock().unwrap()),
        }
    }

    fn stop_clients(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients.drain(..) {
            let _ = client.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop_clients();
    }
}

/// When the first reply from `generation` that ended at or after `since` came.
fn first_reply_from(outcomes: &[Outcome], generation: u64, since: Instant) -> Option<Instant> {
    outcomes
        .iter()
        .find(|o| o.at >= since && matches!(o.result, Ok((g, _)) if g == generation))
        .map(|o| o.at)
}

impl LoadReport {
    fn requests(&self) -> usize {
        self.outcomes.len()
    }

    fn failures(&self) -> Vec<&str> {
        self.outcomes
            .iter()
            .filter_map(|o| o.result.as_ref().err().map(String::as_str))
            .collect()
    }

    /// The generations of the replies that ended at or after `since`.
    fn generations_since(&self, since: Instant) -> Vec<u64> {
        let mut generations: Vec<u64> = self
            .outcomes
            .iter()
            .filter(|o| o.at >= since)
            .filter_map(|o| o.result.as_ref().ok().map(|(g, _)| *g))
            .collect();
        generations.sort_unstable();
        generations.dedup();
        generations
    }

    /// "N of M requests failed, e.g. [...]".
    fn describe_failures(&self) -> String {
        let failures = self.failures();
        format!(
            "{} of {} requests failed, e.g. {:?}",
            failures.len(),
            self.requests(),
            &failures[..failures.len().min(5)]
        )
    }
}

// ---- the host ----

/// The children of `pid` that are zombies (exited, not reaped yet).
fn zombie_children(pid: u32) -> Vec<u32> {
    children(pid).into_iter().filter(|&c| zombie(c)).collect()
}

/// The live (non-zombie) children of `pid` but a standby, in pid order.
fn live_children(pid: u32) -> Vec<u32> {
    let mut live: Vec<u32> = children(pid)
        .into_iter()
        .filter(|&c| alive(c) && !standby(c))
        .collect();
    live.sort_unstable();
    live
}

/// Checks that nothing listens on `addr` (an IPv4 address) any more: no
/// socket in the LISTEN state has that port in `/proc/net/tcp`. (Binding
/// it is no proof: a connection of a test running beside may have that
/// port as its local one, and a bind then fails with the port free.)
fn check_port_free(addr: SocketAddr) -> Result<(), String> {
    let table = std::fs::read_to_string("/proc/net/tcp").map_err(|e| e.to_string())?;
    let port = format!(":{:04X}", addr.port());
    // Columns: sl, local_address (hex address:port), rem_address, st (0A: LISTEN), ...
    let listening = table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1).is_some_and(|local| local.ends_with(&port)) && fields.get(3) == Some(&"0A")
    });
    match listening {
        false => Ok(()),
        true => Err(format!("something still listens on port {}", addr.port())),
    }
}

/// Checks that no process of `host` is left.
fn check_no_process_left(host: &Host) -> Result<(), String> {
    match host.processes() {
        left if left.is_empty() => Ok(()),
        left => Err(format!("{left:?} remain")),
    }
}

/// Checks that the status file says a generation serves and the pid file
/// names its supervisor, which lives; returns `(supervisor, generation)`.
fn check_status_serving(pid_file: &Path) -> Result<(u32, u64), String> {
    let status = read_status(pid_file).ok_or("no status file")?;
    let named = pid_in(pid_file);
    if status.state != "serving" || named != Some(status.pid) || !alive(status.pid) {
        return Err(format!(
            "pid file names {named:?} (alive: {}), status file says {status:?}",
            named.is_some_and(alive)
        ));
    }
    Ok((status.pid, status.generation))
}

/// [`check_status_serving`], and the supervisor is a child of `anchor` (as
/// it is once the generation that started it, if any, is gone).
fn check_a_generation_serves(pid_file: &Path, anchor: u32) -> Result<(u32, u64), String> {
    let (sup, generation) = check_status_serving(pid_file)?;
    match parent(sup) {
        Some(p) if p == anchor => Ok((sup, generation)),
        p => Err(format!(
            "the supervisor named, pid {sup} (generation {generation}), has parent {p:?}, not the anchor (pid {anchor})"
        )),
    }
}

/// Waits until the pid and status files name `host`'s first supervisor,
/// serving (its "serving" log line comes just before it claims them).
fn wait_for_generation_1(host: &Host, pid_file: &Path) {
    let sup = host.supervisor();
    eventually_ok(
        "the pid file to name generation 1's supervisor",
        SOON,
        || match check_status_serving(pid_file)? {
            (pid, 1) if pid == sup => Ok(()),
            other => Err(format!("{other:?} serves, not generation 1's pid {sup}")),
        },
    );
}

/// Checks that the host's processes are the anchor, the supervisor `sup`
/// and its workers (at least one), with no zombie under either.
fn check_only_the_serving_generation_runs(
    host: &Host,
    anchor: u32,
    sup: u32,
) -> Result<(), String> {
    let workers = live_children(sup);
    let mut expected = workers.clone();
    expected.extend([anchor, sup]);
    expected.sort_unstable();
    let processes = host.serving_processes();
    let zombies = [zombie_children(anchor), zombie_children(sup)].concat();
    let standbys: Vec<u32> = host
        .processes()
        .into_iter()
        .filter(|&p| standby(p))
        .collect();
    if workers.is_empty() {
        Err(format!("supervisor {sup} has no live worker"))
    } else if processes != expected {
        Err(format!(
            "processes {processes:?}, wanted the anchor {anchor}, supervisor {sup} and its workers {workers:?}"
        ))
    } else if !zombies.is_empty() {
        Err(format!(
            "zombies {zombies:?} under the anchor or supervisor"
        ))
    } else if standbys.len() > 1 || standbys.iter().any(|&p| parent(p) != Some(sup)) {
        Err(format!(
            "standbys {standbys:?}: at most one, the child of supervisor {sup}"
        ))
    } else {
        Ok(())
    }
}

/// hello-http at port 0 with a pid file and the host flags `extra`, serving;
/// returns the host, its pid file and its address.
fn start_hello(dir: &Path, extra: &[&str]) -> (Host, PathBuf, SocketAddr) {
    let plugin = build_plugin("hello-http", None, &dir.join("libhello.so"));
    let Served {
        host,
        pid_file,
        addr,
    } = serve_plugin(dir, &plugin, extra, &[]);
    wait_for_generation_1(&host, &pid_file);
    (host, pid_file, addr)
}

/// `host reload --pid-file FILE`: whether it succeeded, its stdout and stderr.
fn reload(pid_file: &Path) -> (bool, String, String) {
    let (status, out, err) =
        host_command(&["reload", "--pid-file", pid_file.to_str().unwrap()], LONG);
    (status.success(), out, err)
}

/// The old supervisor's "reload: generation G starting as pid P" line: P.
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

/// The last field of `NSpid:` in `/proc/PID/status`: the pid in the
/// innermost pid namespace of the process.
fn pid_in_its_namespace(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// The session id of `pid` (field 6 of `/proc/PID/stat`).
fn session_of(pid: &str) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name, which may hold spaces: state ppid pgrp session.
    let after_comm = stat.rsplit_once(')').unwrap().1;
    after_comm
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap()
}

/// Shows a log file in the output of a test that fails (a daemon's, which
/// [`Host`] does not know of).
struct ShowOnFailure(PathBuf);

impl Drop for ShowOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- {} ----\n{}----",
                self.0.display(),
                std::fs::read_to_string(&self.0).unwrap_or_default()
            );
        }
    }
}

// ---- 1. PID 1 of a pid namespace ----

/// As PID 1 of a pid namespace (as in a container), the anchor reloads 10
/// times on SIGUSR2 sent to it, under load, without a failed request, the
/// namespace survives every reload, and SIGTERM to it stops everything
/// with status 0.
#[test]
fn as_pid_1_of_a_pid_namespace_ten_reloads_under_load_lose_no_request_and_sigterm_stops_it() {
    let dir = temp_dir();
    let plugin = build_plugin("hello-http", None, &dir.path().join("libhello.so"));
    let pid_file = dir.path().join("hello.pid");
    let bin = std::fs::canonicalize(host_bin()).unwrap();
    let mut unshare = start_host_from(
        Path::new("unshare"),
        dir.path(),
        &[
            "--pid",
            "--fork",
            "--mount-proc",
            bin.to_str().unwrap(),
            "--plugin",
            plugin.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
        &[],
    );
    let anchor = eventually("unshare to start the anchor", LONG, || {
        let children = live_children(unshare.pid());
        match children[..] {
            [only] if std::fs::read_link(format!("/proc/{only}/exe")).ok()? == bin => Some(only),
            _ => None,
        }
    });
    assert_eq!(
        pid_in_its_namespace(anchor),
        Some(1),
        "the anchor is PID 1 of its namespace"
    );
    unshare.wait_for_log("serving, started in", LONG);
    let addr = unshare.listen_addr();
    eventually_ok("generation 1 to serve", LONG, || {
        match read_status(&pid_file) {
            Some(s) if s.generation == 1 && s.state == "serving" => Ok(()),
            other => Err(format!("status {other:?}")),
        }
    });

    let load = Load::start(addr);
    load.wait_for_replies(10);
    // Each reload as soon as the status file says the previous one serves.
    let mut asked = Vec::new();
    for generation in 2..=11u64 {
        asked.push((generation, Instant::now()));
        signal(anchor, Signal::SIGUSR2);
        eventually_ok(
            &format!("generation {generation} to serve after SIGUSR2 to the anchor"),
            LONG,
            || match read_status(&pid_file) {
                Some(s) if s.generation == generation && s.state == "serving" => Ok(()),
                other => Err(format!("status {other:?}")),
            },
        );
    }
    // One generation runs in the end: the anchor's only child, named (in
    // the namespace's numbering) by the pid file, and its workers.
    let only_generation_11 = || {
        let named = pid_in(&pid_file).ok_or("no pid in the pid file")?;
        let sup = match live_children(anchor)[..] {
            [sup] if pid_in_its_namespace(sup) == Some(named) => sup,
            ref children => {
                return Err(format!(
                    "the anchor's children are {children:?}; the pid file names pid {named}"
                ))
            }
        };
        let mut expected = live_children(sup);
        if expected.is_empty() {
            return Err(format!("supervisor {sup} has no worker"));
        }
        expected.extend([unshare.pid(), anchor, sup]);
        expected.sort_unstable();
        let mut processes = unshare.processes();
        processes.retain(|&p| !standby(p) && !prepared_worker(p));
        match processes {
            p if p == expected => Ok(()),
            p => Err(format!("processes {p:?}, wanted {expected:?}")),
        }
    };
    eventually_ok("generation 11 alone to run", SOON, only_generation_11);
    holds_for("generation 11 alone running", STEADY, only_generation_11);
    load.wait_for_replies(CLIENTS);
    let report = load.finish();
    for (generation, at) in asked {
        let first = first_reply_from(&report.outcomes, generation, at)
            .map_or("none".to_owned(), |t| (t - at).as_millis().to_string());
        eprintln!("anchor-pidns reload generation={generation} latency_ms={first}");
    }
    eprintln!(
        "anchor-pidns requests={} failed={}",
        report.requests(),
        report.failures().len()
    );
    assert!(
        report.failures().is_empty(),
        "{}",
        report.describe_failures()
    );
    assert!(
        report.requests() >= 50,
        "only {} requests",
        report.requests()
    );
    let log = unshare.log_text();
    assert!(
        !log.contains("died unasked"),
        "the anchor took an old generation's exit after a reload for a death:\n{log}"
    );
    assert!(
        unshare.child.try_wait().unwrap().is_none() && alive(anchor),
        "the namespace (unshare, pid {}) and its PID 1 live after the reloads",
        unshare.pid()
    );

    signal(anchor, Signal::SIGTERM);
    let status = unshare.wait_exit(LONG);
    assert_eq!(
        status.code(),
        Some(0),
        "unshare's exit (the anchor's status)"
    );
    check_no_process_left(&unshare).unwrap();
    check_port_free(addr).unwrap();
}

// ---- 2. kill -9 of the supervisor in charge ----

/// kill -9 of the serving supervisor, 5 times in a row under load: each time
/// the anchor starts the next generation at once, no request fails (they
/// wait in the backlog of the sockets the anchor keeps open), and the dead
/// supervisor's workers stop gracefully.
#[test]
fn kill_9_of_the_supervisor_in_charge_five_times_under_load_loses_no_request() {
    let dir = temp_dir();
    let (host, pid_file, addr) = start_hello(dir.path(), &["--workers", "2"]);
    let anchor = host.pid();
    let load = Load::start(addr);
    load.wait_for_replies(10);

    for kill in 1..=5 {
        let (sup, generation) = check_a_generation_serves(&pid_file, anchor).unwrap();
        let workers = live_children(sup);
        let killed_at = Instant::now();
        signal(sup, Signal::SIGKILL);
        let next = generation + 1;
        let new_sup = eventually_ok(
            &format!("generation {next} to serve after kill -9 of pid {sup}"),
            SOON,
            || match check_a_generation_serves(&pid_file, anchor)? {
                (pid, g) if g == next && pid != sup => Ok(pid),
                (pid, g) => Err(format!("pid {pid}, generation {g} serves")),
            },
        );
        let first = eventually(&format!("a reply from generation {next}"), SOON, || {
            load.first_reply_from(next, killed_at)
        });
        eprintln!(
            "anchor-restart kill={kill} generation={next} recovery_ms={}",
            (first - killed_at).as_millis()
        );
        for worker in workers {
            eventually(
                &format!("worker {worker} of the killed supervisor to stop"),
                SOON,
                || (!alive(worker)).then_some(()),
            );
            // Gracefully: it ran hello-http's shutdown, which logs.
            let graceful = format!("pid={worker}]: hello_http: shutting down");
            assert!(
                host.log_text().contains(&graceful),
                "worker {worker} of the killed supervisor shut down gracefully; log:\n{}",
                host.log_text()
            );
        }
        eventually_ok("only the new generation to run", SOON, || {
            check_only_the_serving_generation_runs(&host, anchor, new_sup)
        });
    }
    let report = load.finish();
    eprintln!(
        "anchor-restart requests={} failed={}",
        report.requests(),
        report.failures().len()
    );
    assert!(
        report.failures().is_empty(),
        "{}",
        report.describe_failures()
    );
}

// ---- 3. kill -9 at each step of a reload ----

/// The process of a reload that a row kills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    OldSupervisor,
    NewSupervisor,
    OldWorker,
    NewWorker,
}

/// The step of the reload (generation 1 to 2) at which a row kills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// The new worker started, not ready yet (`http-slow-ready`).
    BeforeReady,
    /// The new generation asked the old one to step aside; the old
    /// supervisor, stopped (SIGSTOP), has not handled it (SIGCONT after
    /// the kill).
    AskedToStepAside,
    /// The new generation took over; the old worker is still shutting down
    /// (`http-slow-shutdown`).
    Draining,
    /// The moment the status file says the new generation serves.
    JustAfterTakeover,
}

/// One row of the matrix: what to kill when, and which generation serves
/// in the end.
struct Row {
    name: &'static str,
    victim: Victim,
    step: Step,
    survivor: u64,
}

/// `--shutdown-timeout` of the matrix: a draining worker lives at most this long.
const MATRIX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// Starts faulty `http` (one worker, so a killed worker holds at most one
/// request per client), reloads it under load, kills `row.victim` at
/// `row.step`, and checks that generation `row.survivor` alone serves
/// within a few seconds: the pid file names its supervisor, a child of the
/// anchor; the host's processes are the anchor, that supervisor and its
/// workers (once the draining ones ended); no zombie; and no request failed
/// but those a killed worker held.
fn kill_during_a_reload(row: Row) {
    let dir = temp_dir();
    let plugin = build_plugin("faulty", None, &dir.path().join("libfaulty.so"));
    let (mode, events) = (dir.path().join("mode"), dir.path().join("mode.events"));
    let pid_file = dir.path().join("faulty.pid");
    let first_mode = match row.step {
        Step::Draining => "http-slow-shutdown",
        _ => "http",
    };
    std::fs::write(&mode, first_mode).unwrap();
    let host = start_host(
        dir.path(),
        &[
            "--plugin",
            plugin.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--workers",
            "1",
            "--respawn-delay",
            "0.5",
            "--shutdown-timeout",
            &MATRIX_SHUTDOWN_TIMEOUT.as_secs().to_string(),
            "--reload-timeout",
            "20",
        ],
        &[("FAULTY_MODE_FILE", mode.to_str().unwrap())],
    );
    host.wait_serving();
    let anchor = host.pid();
    let old_sup = host.supervisor();
    wait_for_generation_1(&host, &pid_file);
    let old_worker = faulty_worker(&events, "start", 1);
    let addr = host.listen_addr();
    let load = Load::start(addr);
    load.wait_for_replies(10);

    let next_mode = match row.step {
        Step::BeforeReady | Step::AskedToStepAside => "http-slow-ready",
        Step::Draining | Step::JustAfterTakeover => "http",
    };
    std::fs::write(&mode, next_mode).unwrap();
    // To the anchor, which forwards it to the supervisor in charge.
    signal(anchor, Signal::SIGUSR2);
    let new_sup = new_supervisor_pid(&host, 2);
    let new_worker = faulty_worker(&events, "start", 2);
    let not_ready_yet = || {
        assert!(
            faulty_event_pids(&events, "ready", 2).is_empty(),
            "precondition: the new worker is not ready yet (machine too slow?)"
        );
    };
    match row.step {
        Step::BeforeReady => not_ready_yet(),
        Step::AskedToStepAside => {
            signal(old_sup, Signal::SIGSTOP);
            not_ready_yet();
            host.wait_for_log(&format!("asking pid {old_sup} to step aside"), LONG);
            assert!(
                !host.log_text().contains("took over from pid"),
                "precondition: the takeover had not completed"
            );
        }
        Step::Draining => {
            eventually_ok(
                "generation 2 to serve",
                LONG,
                || match check_status_serving(&pid_file)? {
                    (pid, 2) if pid == new_sup => Ok(()),
                    other => Err(format!("{other:?} serves")),
                },
            );
            faulty_worker(&events, "stopping", 1);
            assert!(
                faulty_event_pids(&events, "shutdown", 1).is_empty(),
                "precondition: the old worker is still draining"
            );
        }
        Step::JustAfterTakeover => {
            eventually_ok("generation 2 to serve", LONG, || {
                match read_status(&pid_file) {
                    Some(s) if s.serving(new_sup, 2) => Ok(()),
                    other => Err(format!("status {other:?}")),
                }
            })
        }
    }
    let victim = match row.victim {
        Victim::OldSupervisor => old_sup,
        Victim::NewSupervisor => new_sup,
        Victim::OldWorker => old_worker,
        Victim::NewWorker => new_worker,
    };
    let victim_parent = parent(victim);
    let killed_at = Instant::now();
    signal(victim, Signal::SIGKILL);
    if row.step == Step::AskedToStepAside {
        // Its death is known before the old supervisor goes on: reaped,
        // unless by the stopped old supervisor itself (then a zombie).
        // Otherwise the new supervisor could take the old one's answer
        // before it sees its worker die, and take over with a dead worker
        // (a race of the test, not a fault of the host).
        eventually(&format!("pid {victim} to die"), LONG, || {
            let gone = match victim_parent == Some(old_sup) {
                true => !alive(victim),
                false => !Path::new(&format!("/proc/{victim}")).exists(),
            };
            gone.then_some(())
        });
        signal(old_sup, Signal::SIGCONT);
    }
    // A reply the victim sent between the signal and its death is no sign
    // of recovery: replies count from its death on.
    eventually(&format!("pid {victim} to die"), LONG, || {
        (!alive(victim)).then_some(())
    });
    let died_at = Instant::now();

    let survivor = row.survivor;
    let (sup, first) = eventually_ok(&format!("generation {survivor} to serve"), SOON, || {
        let (sup, generation) = check_a_generation_serves(&pid_file, anchor)?;
        if generation != survivor {
            return Err(format!("generation {generation} (pid {sup}) serves"));
        }
        let first = load
            .first_reply_from(survivor, died_at)
            .ok_or(format!("no reply from generation {survivor} yet"))?;
        Ok((sup, first))
    });
    match survivor {
        1 => assert_eq!(sup, old_sup, "generation 1's supervisor serves"),
        2 => assert_eq!(sup, new_sup, "generation 2's supervisor serves"),
        _ => assert!(
            ![old_sup, new_sup].contains(&sup),
            "a new supervisor serves"
        ),
    }
    // A worker of a generation that lost outlives its killed supervisor
    // until it notices, re-parented to the nearest child subreaper: the
    // survivor's supervisor, or the anchor. The survivor's children are
    // its workers once those are gone.
    let only_the_survivor_runs = || {
        let foreign: Vec<u32> = faulty_events(&events)
            .into_iter()
            .filter(|e| e.what == "start" && e.generation != survivor && alive(e.pid))
            .map(|e| e.pid)
            .collect();
        match foreign.is_empty() {
            true => check_only_the_serving_generation_runs(&host, anchor, sup),
            false => Err(format!("workers {foreign:?} of another generation live")),
        }
    };
    eventually_ok(
        "the host's processes to be the anchor and the serving generation",
        MATRIX_SHUTDOWN_TIMEOUT + SOON,
        only_the_survivor_runs,
    );
    let settled = Instant::now();
    holds_for("the outcome", STEADY, || {
        match check_a_generation_serves(&pid_file, anchor)? {
            (pid, g) if (pid, g) == (sup, survivor) => only_the_survivor_runs(),
            other => Err(format!("{other:?} serves")),
        }
    });
    load.wait_for_replies(CLIENTS);
    let report = load.finish();
    let failed = report.failures().len();
    eprintln!(
        "anchor-matrix row={} requests={} failed={failed} recovery_ms={} survivor_generation={survivor}",
        row.name,
        report.requests(),
        (first - killed_at).as_millis()
    );
    assert_eq!(
        report.generations_since(settled),
        vec![survivor],
        "generations that replied once it settled"
    );
    let allowed = match row.victim {
        Victim::OldWorker | Victim::NewWorker => CLIENTS,
        Victim::OldSupervisor | Victim::NewSupervisor => 0,
    };
    assert!(
        failed <= allowed,
        "at most {allowed} may fail (the requests a killed worker held): {}",
        report.describe_failures()
    );
}

macro_rules! matrix {
    ($($name:ident: $victim:ident at $step:ident => generation $survivor:literal serves;)*) => {
        $(
            #[test]
            fn $name() {
                kill_during_a_reload(Row {
                    name: stringify!($name),
                    victim: Victim::$victim,
                    step: Step::$step,
                    survivor: $survivor,
                });
            }
        )*
    };
}

matrix! {
    kill_old_supervisor_before_new_ready: OldSupervisor at BeforeReady => generation 2 serves;
    kill_new_supervisor_before_new_ready: NewSupervisor at BeforeReady => generation 1 serves;
    kill_old_worker_before_new_ready: OldWorker at BeforeReady => generation 2 serves;
    kill_new_worker_before_new_ready: NewWorker at BeforeReady => generation 1 serves;
    kill_old_supervisor_asked_to_step_aside: OldSupervisor at AskedToStepAside => generation 2 serves;
    kill_new_supervisor_after_asking_to_step_aside: NewSupervisor at AskedToStepAside => generation 1 serves;
    kill_old_worker_asked_to_step_aside: OldWorker at AskedToStepAside => generation 2 serves;
    kill_new_worker_after_asking_to_step_aside: NewWorker at AskedToStepAside => generation 1 serves;
    kill_old_supervisor_while_it_drains: OldSupervisor at Draining => generation 2 serves;
    kill_old_worker_while_it_drains: OldWorker at Draining => generation 2 serves;
    kill_new_supervisor_while_the_old_drains: NewSupervisor at Draining => generation 3 serves;
    kill_new_worker_while_the_old_drains: NewWorker at Draining => generation 2 serves;
    kill_new_supervisor_just_after_takeover: NewSupervisor at JustAfterTakeover => generation 3 serves;
    kill_new_worker_just_after_takeover: NewWorker at JustAfterTakeover => generation 2 serves;
}

// ---- 4. stop signals to the anchor ----

/// `sig` to the anchor (after a reload, if `after_reload`) stops the
/// service: the anchor exits 0 once every process below it is gone, and
/// the port and the pid file are free.
fn assert_signal_to_the_anchor_stops_everything(sig: Signal, after_reload: bool) {
    let dir = temp_dir();
    let (mut host, pid_file, addr) = start_hello(dir.path(), &["--workers", "2"]);
    let anchor = host.pid();
    let mut sup = host.supervisor();
    if after_reload {
        let (ok, out, err) = reload(&pid_file);
        assert!(ok, "the reload failed: {out}{err}");
        sup = pid_in(&pid_file).unwrap();
        assert_eq!(
            identity(&http_get(addr).unwrap()).0,
            2,
            "generation 2 serves"
        );
        // SIGHUP is forwarded too: the supervisor in charge logs that it ignores it.
        signal(anchor, Signal::SIGHUP);
        host.wait_for_log(
            &format!("supervisor[gen=2 pid={sup}]: SIGHUP ignored"),
            LONG,
        );
    }
    // The standby comes once the generation serves: listed in the moment
    // between its fork and its switch to SCHED_BATCH, it would pass for a
    // worker, and it logs no shutdown.
    eventually("the standby for the next reload", LONG, || {
        (!standbys(sup).is_empty()).then_some(())
    });
    let workers = live_children(sup);
    assert!(!workers.is_empty());

    signal(anchor, sig);
    let status = host.wait_exit(LONG);
    assert_eq!(status.code(), Some(0), "the anchor's exit after {sig:?}");
    // It exits once every process below it is gone.
    check_no_process_left(&host).unwrap();
    let log = host.log_text();
    for worker in workers {
        assert!(
            log.contains(&format!(
                "worker[gen={} pid={worker}]: hello_http: shutting down",
                if after_reload { 2 } else { 1 }
            )),
            "worker {worker} shut down gracefully; log:\n{log}"
        );
    }
    check_port_free(addr).unwrap();
    assert!(!host_runs_on(&pid_file), "the pid file is unlocked");
}

#[test]
fn sigterm_to_the_anchor_after_a_reload_stops_everything_with_status_0() {
    assert_signal_to_the_anchor_stops_everything(Signal::SIGTERM, true);
}

#[test]
fn sigint_to_the_anchor_stops_everything_with_status_0() {
    assert_signal_to_the_anchor_stops_everything(Signal::SIGINT, false);
}

#[test]
fn sigquit_to_the_anchor_stops_everything_with_status_0() {
    assert_signal_to_the_anchor_stops_everything(Signal::SIGQUIT, false);
}

// ---- 5. kill -9 of the anchor ----

/// kill -9 of the anchor after a reload: every supervisor and worker below
/// it stops gracefully (each worker runs its shutdown) within
/// `--shutdown-timeout` and a margin, and nothing keeps the port.
#[test]
fn kill_9_of_the_anchor_stops_everything_gracefully_within_the_shutdown_timeout() {
    const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
    let dir = temp_dir();
    let plugin = build_plugin("faulty", None, &dir.path().join("libfaulty.so"));
    let (mode, events) = (dir.path().join("mode"), dir.path().join("mode.events"));
    std::fs::write(&mode, "http").unwrap();
    let pid_file = dir.path().join("faulty.pid");
    let mut host = start_host(
        dir.path(),
        &[
            "--plugin",
            plugin.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--workers",
            "2",
            "--shutdown-timeout",
            &SHUTDOWN_TIMEOUT.as_secs().to_string(),
        ],
        &[("FAULTY_MODE_FILE", mode.to_str().unwrap())],
    );
    host.wait_serving();
    wait_for_generation_1(&host, &pid_file);
    let anchor = host.pid();
    let addr = host.listen_addr();
    let (ok, out, err) = reload(&pid_file);
    assert!(ok, "the reload failed: {out}{err}");
    // Generation 2's supervisor was started by generation 1's, which is
    // gone: it is the anchor's now (a subreaper's orphan).
    let sup = eventually_ok("generation 2 to serve alone", SOON, || {
        let (sup, _) = check_a_generation_serves(&pid_file, anchor)?;
        check_only_the_serving_generation_runs(&host, anchor, sup)?;
        Ok(sup)
    });
    assert_eq!(identity(&http_get(addr).unwrap()).0, 2);
    let workers = live_children(sup);

    let killed_at = Instant::now();
    signal(anchor, Signal::SIGKILL);
    host.wait_exit(LONG);
    eventually_ok(
        "every process of the host to stop",
        SHUTDOWN_TIMEOUT + SOON,
        || check_no_process_left(&host),
    );
    eprintln!(
        "anchor-killed all_gone_ms={}",
        killed_at.elapsed().as_millis()
    );
    let shut_down = faulty_event_pids(&events, "shutdown", 2);
    assert!(
        workers.iter().all(|w| shut_down.contains(w)),
        "every worker of generation 2 ({workers:?}) ran its shutdown: {:?}",
        lines(&events)
    );
    check_port_free(addr).unwrap();
    assert!(!host_runs_on(&pid_file), "the pid file is unlocked");
}

// ---- 6. --daemonize ----

/// `--daemonize --log-file L` returns 0 only once the service serves; the
/// daemon (the anchor) runs in a session of its own, in `/`, logging to L;
/// `host stop` ends it.
#[test]
fn daemonize_returns_once_serving_and_the_daemon_runs_detached() {
    let dir = temp_dir();
    let plugin = build_plugin("hello-http", None, &dir.path().join("libhello.so"));
    let pid_file = dir.path().join("hello.pid");
    let log_file = dir.path().join("daemon.log");
    let _show = ShowOnFailure(log_file.clone());
    // Its Drop kills the daemon's processes too: they carry its tag.
    let mut starter = start_host(
        dir.path(),
        &[
            "--daemonize",
            "--log-file",
            log_file.to_str().unwrap(),
            "--plugin",
            plugin.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
        &[],
    );
    let status = starter.wait_exit(LONG);
    // At once: no waiting for it to serve.
    let addr: SocketAddr = status_field(&pid_file, "listen")
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .expect("the status file names the address");
    let served = http_get(addr);
    assert!(
        status.success(),
        "the starting command's exit: {status}; stderr:\n{}",
        starter.log_text()
    );
    assert_eq!(
        served
            .map(|body| identity(&body).0)
            .map_err(|e| e.to_string()),
        Ok(1),
        "a request right after it returned"
    );

    let anchor = status_field(&pid_file, "anchor").expect("anchor= in the status file");
    let anchor_pid: u32 = anchor.parse().unwrap();
    assert!(alive(anchor_pid));
    assert_ne!(anchor_pid, starter.pid());
    assert!(
        starter.processes().contains(&anchor_pid),
        "the daemon carries the test's tag"
    );
    assert_ne!(
        session_of(&anchor),
        session_of("self"),
        "the daemon runs in a session of its own"
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{anchor}/cwd")).unwrap(),
        Path::new("/"),
        "the daemon's working directory"
    );
    let sup = pid_in(&pid_file).unwrap();
    assert_eq!(
        parent(sup),
        Some(anchor_pid),
        "the supervisor is the daemon's child"
    );
    let log = std::fs::read_to_string(&log_file).unwrap_or_default();
    assert!(
        log.contains(&format!("anchor[pid={anchor}]")) && log.contains("serving, started in"),
        "the daemon logs to --log-file:\n{log}"
    );
    assert!(
        !starter.log_text().contains("error"),
        "{}",
        starter.log_text()
    );

    let (stopped, out, err) =
        host_command(&["stop", "--pid-file", pid_file.to_str().unwrap()], LONG);
    assert!(stopped.success(), "host stop: {out}{err}");
    eventually_ok("the daemon's processes to exit", LONG, || {
        check_no_process_left(&starter)
    });
    check_port_free(addr).unwrap();
}

/// `--daemonize` of a service that cannot start (hello-http without
/// `--listen` fails before it is ready) returns non-zero, with one
/// `host: error:` line, and leaves no process behind.
#[test]
fn daemonize_that_cannot_start_fails_with_one_error_line_and_leaves_nothing() {
    let dir = temp_dir();
    let plugin = build_plugin("hello-http", None, &dir.path().join("libhello.so"));
    let pid_file = dir.path().join("hello.pid");
    let log_file = dir.path().join("daemon.log");
    let _show = ShowOnFailure(log_file.clone());
    let mut starter = start_host(
        dir.path(),
        &[
            "--daemonize",
            "--log-file",
            log_file.to_str().unwrap(),
            "--plugin",
            plugin.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
        &[],
    );
    let status = starter.wait_exit(LONG);
    let stderr = starter.log_text();
    eprintln!("anchor-daemonize failed start: {}", stderr.trim());
    assert!(!status.success(), "the starting command's exit: {status}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("host: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line on stderr:\n{stderr}");
    eventually_ok("the daemon's processes to exit", LONG, || {
        check_no_process_left(&starter)
    });
    assert!(!host_runs_on(&pid_file), "the pid file is unlocked");
}

// ---- 7. host status ----

/// The pid file names the supervisor in charge, not the anchor; the status
/// file and `host status` name the anchor, which stays the same across a
/// reload and never loads the plugin.
#[test]
fn status_names_the_anchor_and_the_pid_file_the_supervisor_in_charge() {
    let dir = temp_dir();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (host, pid_file, _) = start_hello(dir.path(), &[]);
    let anchor = host.pid();
    let sup = host.supervisor();
    assert_ne!(sup, anchor);
    assert_eq!(
        pid_in(&pid_file),
        Some(sup),
        "the pid file names the supervisor"
    );
    assert_eq!(
        status_field(&pid_file, "anchor"),
        Some(anchor.to_string()),
        "anchor= in the status file"
    );
    let since: u64 = status_field(&pid_file, "anchor_since")
        .and_then(|s| s.parse().ok())
        .expect("anchor_since= in the status file");
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (before..=after).contains(&since),
        "anchor_since={since}, not between {before} and {after}"
    );
    let status = |pid_file: &Path| {
        let (status, out, err) =
            host_command(&["status", "--pid-file", pid_file.to_str().unwrap()], LONG);
        assert!(status.success(), "host status: {out}{err}");
        out
    };
    let out = status(&pid_file);
    assert!(
        out.contains(&format!("running: pid {sup}, generation 1, serving"))
            && out.contains(&format!("anchor pid {anchor}")),
        "{out}"
    );

    let (ok, out, err) = reload(&pid_file);
    assert!(ok, "the reload failed: {out}{err}");
    let new_sup = pid_in(&pid_file).unwrap();
    let out = status(&pid_file);
    assert!(
        out.contains(&format!("running: pid {new_sup}, generation 2, serving"))
            && out.contains(&format!("anchor pid {anchor}")),
        "{out}"
    );
    assert_eq!(
        status_field(&pid_file, "anchor_since"),
        Some(since.to_string())
    );
    let only_generation_2 = || match check_a_generation_serves(&pid_file, anchor)? {
        (pid, 2) if pid == new_sup => check_only_the_serving_generation_runs(&host, anchor, pid),
        other => Err(format!("{other:?} serves")),
    };
    eventually_ok("generation 2 alone to run", SOON, only_generation_2);
    holds_for("generation 2 alone running", STEADY, only_generation_2);
    assert!(
        !host.log_text().contains("died unasked"),
        "the anchor took generation 1's exit after the reload for a death:\n{}",
        host.log_text()
    );

    // The anchor never loads the plugin, nor its snapshot.
    let maps = std::fs::read_to_string(format!("/proc/{anchor}/maps")).unwrap();
    assert!(
        !maps.contains("libhello") && !maps.contains("host-plugin"),
        "the anchor maps the plugin:\n{maps}"
    );
}
