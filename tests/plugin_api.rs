//! The plugin API as plugin authors use it (issue 9): the stop as a value
//! (reason, deadline, worker index), failing from any thread, panics on
//! plugin threads, listeners that stay non-blocking, logs that keep their
//! target, fields and spans, a plugin built against the frozen plugin-api
//! 0.1.0, an axum plugin that loses no request across hot reloads, a
//! `panic = "abort"` plugin whose panic reaches the log before the abort,
//! and a plugin written outside the workspace as README.md tells.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;

const LONG: Duration = Duration::from_secs(30);

/// A host running the `api-probe` test plugin in `mode`.
struct Probe {
    host: Host,
    events: PathBuf,
    pid_file: PathBuf,
}

fn start_probe(dir: &Path, mode: &str, extra: &[&str], env: &[(&str, &str)]) -> Probe {
    let plugin = build_plugin("api-probe", None, &dir.join("libprobe.so"));
    let mode_file = dir.join("mode");
    std::fs::write(&mode_file, mode).unwrap();
    let pid_file = dir.join("probe.pid");
    let mut args = vec![
        "--plugin",
        plugin.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--pid-file",
        pid_file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut env = env.to_vec();
    env.push(("API_PROBE_MODE_FILE", mode_file.to_str().unwrap()));
    let host = start_host(dir, &args, &env);
    host.wait_serving();
    Probe {
        host,
        events: dir.join("mode.events"),
        pid_file,
    }
}

/// The value of `key=` in an event line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn events_of(events: &Path, what: &str) -> Vec<String> {
    lines(events)
        .into_iter()
        .filter(|l| l.starts_with(&format!("{what} ")))
        .collect()
}

fn reload(pid_file: &Path) {
    let (status, out, err) =
        host_command(&["reload", "--pid-file", pid_file.to_str().unwrap()], LONG);
    assert!(status.success(), "reload failed: {out} {err}");
}

#[test]
fn stop_token_says_why_and_when_and_workers_know_their_slot() {
    let dir = temp_dir();
    let mut probe = start_probe(
        dir.path(),
        "serve",
        &["--workers", "2", "--shutdown-timeout", "7"],
        &[],
    );
    let starts = eventually("two starts", LONG, || {
        let s = events_of(&probe.events, "start");
        (s.len() == 2).then_some(s)
    });
    let mut slots: Vec<&str> = starts.iter().filter_map(|l| field(l, "index")).collect();
    slots.sort_unstable();
    assert_eq!(slots, ["0", "1"], "{starts:?}");

    // A hot reload: the old workers stop for Reload, with the deadline.
    reload(&probe.pid_file);
    let stops = eventually("two stops", LONG, || {
        let s = events_of(&probe.events, "stopped");
        (s.len() == 2).then_some(s)
    });
    for stop in &stops {
        assert_eq!(field(stop, "reason"), Some("Reload"), "{stop}");
        let ms: u64 = field(stop, "deadline_ms").unwrap().parse().unwrap();
        assert!((5_000..=7_000).contains(&ms), "deadline {ms} ms: {stop}");
    }

    // An operator's stop: Shutdown.
    signal(probe.host.pid(), Signal::SIGTERM);
    probe.host.wait_exit(LONG);
    let stops = events_of(&probe.events, "stopped");
    assert_eq!(stops.len(), 4, "{stops:?}");
    for stop in &stops[2..] {
        assert_eq!(field(stop, "reason"), Some("Shutdown"), "{stop}");
    }
}

#[test]
fn fail_from_another_thread_ends_the_worker_with_its_reason() {
    let dir = temp_dir();
    let probe = start_probe(dir.path(), "fail", &["--respawn-delay", "0.2"], &[]);
    let line = probe
        .host
        .wait_for_log("exited with status 1: told to fail", LONG);
    assert!(line.contains("respawning"), "{line}");
    eventually("a respawned worker", LONG, || {
        (events_of(&probe.events, "start").len() >= 2).then_some(())
    });
    let stop = &events_of(&probe.events, "stopped")[0];
    assert_eq!(field(stop, "reason"), Some("Failed"), "{stop}");
}

#[test]
fn a_panic_on_a_plugin_thread_ends_the_worker() {
    let dir = temp_dir();
    let probe = start_probe(dir.path(), "thread-panic", &["--respawn-delay", "0.2"], &[]);
    let line = probe.host.wait_for_log("exited with status 1", LONG);
    assert!(
        line.contains("plugin thread 'pool-1' panicked at")
            && line.contains("pool thread told to panic"),
        "{line}"
    );
    eventually("a respawned worker", LONG, || {
        (events_of(&probe.events, "start").len() >= 2).then_some(())
    });
}

#[test]
fn logs_keep_their_target_fields_spans_and_log_records() {
    let dir = temp_dir();
    let probe = start_probe(
        dir.path(),
        "logs",
        &[],
        &[("HOST_LOG", "info,probe_target=debug,probe_log=info")],
    );
    let host = &probe.host;
    host.wait_for_log("probe_target: a debug event for the probe target", LONG);
    let span = host.wait_for_log("inside the span", LONG);
    assert!(
        span.contains("probe_target: in_a_span{request=7 answer=42}: inside the span user=\"ann\""),
        "{span}"
    );
    let record = host.wait_for_log("a log record", LONG);
    assert!(record.contains("probe_log: a log record n=5"), "{record}");
    let two = host.wait_for_log("probe_target: two", LONG);
    assert!(two.contains("two\\nlines"), "{two}");
    assert!(
        !host.log_text().contains("another target"),
        "other_target is at info: {}",
        host.log_text()
    );
}

#[test]
fn listeners_are_non_blocking_again_for_each_new_worker() {
    let dir = temp_dir();
    let probe = start_probe(
        dir.path(),
        "make-blocking",
        &["--respawn-delay", "0.1"],
        &[],
    );
    let starts = eventually("three starts", LONG, || {
        let s = events_of(&probe.events, "start");
        (s.len() >= 3).then_some(s)
    });
    for start in &starts {
        assert_eq!(field(start, "nonblocking"), Some("true"), "{starts:?}");
    }
}

#[test]
fn a_textbook_accept_that_would_block_gets_a_hint() {
    let dir = temp_dir();
    let probe = start_probe(dir.path(), "raw-accept", &["--respawn-delay", "5"], &[]);
    let line = probe.host.wait_for_log("accept failed", LONG);
    assert!(
        line.contains("Supervisor::accept") && line.contains("non-blocking"),
        "{line}"
    );
}

/// Builds the plugin of the frozen plugin-api 0.1.0 workspace (a workspace
/// of its own), in the tests' target directory, and copies it to `dest`.
fn build_old_api_plugin(dest: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let profile = host_bin().parent().unwrap().to_owned();
    let target_dir = profile.parent().unwrap().join("plugin-api-0.1");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(root.join("tests/plugins/plugin-api-0.1"))
        .args(["build", "--quiet", "--lib", "--target-dir"])
        .arg(&target_dir);
    if profile.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "cargo build of the 0.1.0 plugin failed");
    let built = target_dir
        .join(profile.file_name().unwrap())
        .join("libold_api_plugin.so");
    copy_atomically(&built, dest);
    dest.to_owned()
}

#[test]
fn a_plugin_built_against_plugin_api_0_1_0_loads_serves_and_reloads() {
    let dir = temp_dir();
    let plugin = build_old_api_plugin(&dir.path().join("libold.so"));
    let Served {
        host: _host,
        pid_file,
        addr,
    } = serve_plugin(dir.path(), &plugin, &[], &[]);
    let body = http_get(addr).unwrap();
    assert!(body.contains("old-api-plugin 0.1.0 gen=1"), "{body}");
    reload(&pid_file);
    let body = http_get(addr).unwrap();
    assert_eq!(identity(&body).0, 2, "{body}");
}

/// `GET /` over a new connection, for any HTTP/1.1 server (header names in
/// any case); the body of a `200 OK` reply.
fn get(addr: SocketAddr) -> std::io::Result<String> {
    let timeout = Duration::from_secs(10);
    let mut conn = TcpStream::connect_timeout(&addr, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad(format!("short reply: {reply:?}")))?;
    if !head.starts_with("HTTP/1.1 200 OK") {
        return Err(bad(format!("not 200: {head:?}")));
    }
    let length: Option<usize> = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    });
    if length != Some(body.len()) {
        return Err(bad(format!("short body: {body:?} for {head:?}")));
    }
    Ok(body.to_owned())
}

#[test]
fn hello_axum_loses_no_request_across_twenty_reloads_under_load() {
    let dir = temp_dir();
    let plugin = build_plugin("hello-axum", None, &dir.path().join("libhello_axum.so"));
    let pid_file = dir.path().join("axum.pid");
    let host = start_host(
        dir.path(),
        &[
            "--plugin",
            plugin.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
        &[],
    );
    host.wait_serving();
    let addr = host.listen_addr();
    let body = get(addr).unwrap();
    assert!(
        body.lines().last().unwrap().starts_with(&format!(
            "hello-axum {} gen=1 pid=",
            env!("CARGO_PKG_VERSION")
        )),
        "{body}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new((0u64, Vec::<u64>::new(), Vec::<String>::new())));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, results) = (Arc::clone(&stop), Arc::clone(&results));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let outcome = get(addr);
                    let mut r = results.lock().unwrap();
                    r.0 += 1;
                    match outcome {
                        Ok(body) => r.1.push(identity(&body).0),
                        Err(e) => r.2.push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    for i in 0..20u64 {
        reload(&pid_file);
        let generation = i + 2;
        eventually(
            &format!("a reply from generation {generation}"),
            LONG,
            || {
                let body = get(addr).ok()?;
                (identity(&body).0 == generation).then_some(())
            },
        );
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let (total, generations, failures) = &*results.lock().unwrap();
    eprintln!(
        "hello-axum under load: {total} requests across 20 reloads, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(*total >= 200, "only {total} requests made");
    assert!(generations.contains(&21), "generation 21 never answered");
}

/// Takes the tests' build lock (the file [`build_plugin`] locks), so that
/// this test's cargo build does not compete with the others'.
fn with_build_lock<T>(f: impl FnOnce() -> T) -> T {
    let lock_path = host_bin().parent().unwrap().join("host-tests-build.lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap();
    let mut lock = fd_lock::RwLock::new(lock_file);
    let _guard = lock.write().expect("build lock");
    f()
}

/// `cargo build --lib` of the workspace (or lone crate) in `dir`, into
/// `target/<target_name>` beside the tests' own profile directory, in the
/// tests' profile; returns the directory the libraries land in.
fn build_lib_in(dir: &Path, target_name: &str) -> PathBuf {
    let profile = host_bin().parent().unwrap().to_owned();
    let target_dir = profile.parent().unwrap().join(target_name);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(dir)
        .args(["build", "--quiet", "--lib", "--target-dir"])
        .arg(&target_dir);
    if profile.ends_with("release") {
        build.arg("--release");
    }
    let status = with_build_lock(|| build.status().expect("run cargo build"));
    assert!(status.success(), "cargo build in {} failed", dir.display());
    target_dir.join(profile.file_name().unwrap())
}

#[test]
fn a_panic_abort_plugin_logs_its_panic_before_the_abort_and_is_respawned() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let crate_dir = root.join("tests/plugins/panic-abort");
    // Where the plugin panics: the line marked in its source.
    let source = std::fs::read_to_string(crate_dir.join("src/lib.rs")).unwrap();
    let panic_line = 1 + source
        .lines()
        .position(|l| l.contains("// PANIC-HERE"))
        .expect("the marked panic in the plugin's source");
    let location = format!("src/lib.rs:{panic_line}:");
    let message = "panic-abort plugin: deliberate panic number 42";

    let dir = temp_dir();
    let plugin = dir.path().join("libpanic_abort.so");
    let built = build_lib_in(&crate_dir, "panic-abort").join("libpanic_abort_plugin.so");
    copy_atomically(&built, &plugin);
    let host = start_host(
        dir.path(),
        &[
            "--plugin",
            plugin.to_str().unwrap(),
            "--respawn-delay",
            "0.5",
        ],
        &[],
    );
    host.wait_serving();

    // The worker dies by SIGABRT, and the supervisor knows why: the panic,
    // with its message and location, sent through the host before the abort.
    let death = host.wait_for_log("was killed by SIGABRT", LONG);
    assert!(
        death.contains(message) && death.contains(&location) && death.contains("respawning"),
        "{death}"
    );
    // The plugin's own log line, through the host's logger, before the death.
    let log = host.log_text();
    let logged = log
        .lines()
        .position(|l| l.contains("supervised_process panicked at") && l.contains(message))
        .unwrap_or_else(|| panic!("no panic logged through the host:\n{log}"));
    let panic_line_text = log.lines().nth(logged).unwrap();
    assert!(panic_line_text.contains(&location), "{panic_line_text}");
    assert!(
        panic_line_text.contains("ERROR") && panic_line_text.contains("worker["),
        "{panic_line_text}"
    );
    let died = log
        .lines()
        .position(|l| l.contains("was killed by SIGABRT"))
        .unwrap();
    assert!(
        logged < died,
        "the panic was logged after the death:\n{log}"
    );

    // And the slot gets a new worker.
    let first = host.wait_for_nth_log("panic-abort plugin serving", 1, LONG);
    let second = host.wait_for_nth_log("panic-abort plugin serving", 2, LONG);
    assert_ne!(
        field(&first, "pid"),
        field(&second, "pid"),
        "{first}\n{second}"
    );
}

/// The plugin a plugin author writes, following README.md ("Writing a
/// plugin"), with `REPLY` for the text of its replies.
const OUTSIDE_PLUGIN: &str = r#"use std::io::{Read, Write};
use std::time::Duration;

use plugin_api::{export_plugin, tracing, SupervisedProcess, Supervisor};

struct Worker;

impl SupervisedProcess for Worker {
    fn supervised_process(&mut self, sup: &Supervisor) -> Result<(), String> {
        let listeners = sup.listeners().map_err(|e| e.to_string())?;
        sup.ready_to_take_over()?;
        while sup.ping_supervisor() {
            let Some((mut conn, _peer)) = sup.accept(&listeners).map_err(|e| e.to_string())? else {
                break;
            };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let body = format!("REPLY\nmy-plugin gen={} pid={}\n", sup.generation(), std::process::id());
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        tracing::info!(reason = ?sup.stop_token().reason(), "stopping");
        Ok(())
    }
    fn can_do_hot_reload(&self) -> bool { true }
}

export_plugin!(|_args: Vec<String>| Ok::<_, String>(Worker));
"#;

#[test]
fn a_plugin_written_outside_the_workspace_as_the_readme_says_serves_and_reloads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = temp_dir();
    // `cargo new --lib my-plugin`, as a plugin author would, by hand.
    let crate_dir = dir.path().join("my-plugin");
    std::fs::create_dir_all(crate_dir.join("src")).unwrap();
    std::fs::write(
        crate_dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"my-plugin\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
             [lib]\ncrate-type = [\"cdylib\"]\n\n\
             [dependencies]\nplugin-api = {{ path = {:?} }}\n",
            root.join("plugin-api").to_str().unwrap()
        ),
    )
    .unwrap();
    // The workspace's versions of every dependency: built offline, and fast
    // in a target directory kept across runs.
    std::fs::copy(root.join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    let write_source = |reply: &str| {
        let source = OUTSIDE_PLUGIN.replace("REPLY", reply);
        std::fs::write(crate_dir.join("src/lib.rs"), source).unwrap();
    };
    let plugin = dir.path().join("libmy_plugin.so");
    let build = || {
        let built = build_lib_in(&crate_dir, "outside-plugin").join("libmy_plugin.so");
        copy_atomically(&built, &plugin);
    };
    write_source("first build");
    build();

    let pid_file = dir.path().join("my.pid");
    let host = start_host(
        dir.path(),
        &[
            "--plugin",
            plugin.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
        &[],
    );
    host.wait_serving();
    let addr = host.listen_addr();
    let body = eventually_ok("a reply from the first build", LONG, || {
        http_get(addr).map_err(|e| e.to_string())
    });
    assert!(
        body.starts_with("first build\nmy-plugin gen=1 pid="),
        "{body}"
    );

    // Edit, rebuild in place, `host reload`.
    write_source("second build");
    build();
    reload(&pid_file);
    let body = eventually_ok("a reply from the second build", LONG, || {
        let body = http_get(addr).map_err(|e| e.to_string())?;
        body.starts_with("second build\n")
            .then_some(body.clone())
            .ok_or(body)
    });
    assert_eq!(identity(&body).0, 2, "{body}");
}

/// State hand-over: a worker stopped for a reload hands bytes to the
/// worker of the same slot in the next generation, which reads them with
/// `inherited_state`; reload after reload.
#[test]
fn a_worker_hands_its_state_to_the_next_generations_worker_of_its_slot() {
    let dir = temp_dir();
    let pid_file = dir.path().join("state.pid");
    let faulty = start_faulty(
        dir.path(),
        "state",
        &["--pid-file", pid_file.to_str().unwrap(), "--workers", "2"],
        &[],
    );
    for generation in 2..=3u64 {
        let (status, out, err) = host_command(
            &["reload", "--pid-file", pid_file.to_str().unwrap()],
            Duration::from_secs(30),
        );
        assert!(status.success(), "{out}{err}");
        let old: Vec<u32> = lines(&faulty.events)
            .iter()
            .filter(|l| l.starts_with("start ") && l.contains(&format!("gen={}", generation - 1)))
            .filter_map(|l| l.split("pid=").nth(1)?.split(' ').next()?.parse().ok())
            .collect();
        let inherited = eventually(
            &format!("both workers of generation {generation} to inherit"),
            Duration::from_secs(20),
            || {
                let got: Vec<String> = lines(&faulty.events)
                    .into_iter()
                    .filter(|l| {
                        l.starts_with("inherited ") && l.ends_with(&format!("gen={generation}"))
                    })
                    .collect();
                (got.len() == 2).then_some(got)
            },
        );
        for pid in &old {
            assert!(
                inherited
                    .iter()
                    .any(|l| l.contains(&format!("state-of-pid-{pid} "))),
                "the state of generation {} worker {pid} reached nobody: {inherited:?}",
                generation - 1
            );
        }
    }
}

/// The voluntary context switches of every thread of `pids`: each time a
/// thread went to sleep, so each time it had been woken.
fn wakeups(pids: &[u32]) -> u64 {
    pids.iter()
        .flat_map(|&pid| thread_files(pid, "status"))
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

#[test]
fn a_connection_wakes_one_waiting_worker_not_all_of_them() {
    const WORKERS: usize = 8;
    const REQUESTS: u64 = 200;
    let dir = temp_dir();
    let plugin = build_plugin("hello-http", None, &dir.path().join("libhello.so"));
    let served = serve_plugin(dir.path(), &plugin, &["--workers", "8"], &[]);
    let workers = eventually("8 workers", LONG, || {
        let w = children(served.host.supervisor());
        let w: Vec<u32> = w.into_iter().filter(|&p| !standby(p)).collect();
        (w.len() == WORKERS).then_some(w)
    });
    // What the workers wake for with no connection (ping timers, link
    // threads), per second: measured, as a loaded machine stretches the run.
    let idle_window = Duration::from_millis(500);
    let idle_start = wakeups(&workers);
    std::thread::sleep(idle_window);
    let idle_per_sec = (wakeups(&workers) - idle_start) as f64 / idle_window.as_secs_f64();

    let started = std::time::Instant::now();
    let before = wakeups(&workers);
    for _ in 0..REQUESTS {
        http_get(served.addr).unwrap();
    }
    let woken = wakeups(&workers) - before;
    let idle = (idle_per_sec * started.elapsed().as_secs_f64()).ceil() as u64;
    // About one wake-up per connection beyond the idle ones (two when the
    // worker reads before the request arrives); a thundering herd makes it
    // about one per waiting worker (8).
    assert!(
        woken.saturating_sub(idle) < 4 * REQUESTS,
        "{REQUESTS} connections woke the {WORKERS} workers' threads {woken} times \
         ({idle} of them expected without connections)"
    );
}

#[test]
fn waiting_workers_take_turns_at_connections() {
    const WORKERS: usize = 4;
    let dir = temp_dir();
    let plugin = build_plugin("hello-http", None, &dir.path().join("libhello.so"));
    let served = serve_plugin(dir.path(), &plugin, &["--workers", "4"], &[]);
    eventually("4 workers", LONG, || {
        (children(served.host.supervisor()).len() >= WORKERS).then_some(())
    });
    let mut pids = std::collections::BTreeSet::new();
    for _ in 0..10 * WORKERS {
        pids.insert(identity(&http_get(served.addr).unwrap()).1);
    }
    // A worker that has waited longest gets the next connection: one that
    // came back to `accept` first does not keep getting them all (a new
    // generation's workers must get connections while the old one's wait).
    assert_eq!(pids.len(), WORKERS, "40 connections went to {pids:?}");
}
