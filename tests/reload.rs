//! Hot reload with real processes: under load no request is lost, a failed
//! new generation leaves the old one serving (and `host reload` says why),
//! SIGUSR2 storms and plugins that cannot reload are handled.

mod support;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::socket::{setsockopt, sockopt};
use support::*;

const LONG: Duration = Duration::from_secs(30);

/// A hello-http host with a pid file, running a copy of the plugin at
/// `dir/libhello.so` that tests may replace.
struct Service {
    host: Host,
    plugin: PathBuf,
    pid_file: PathBuf,
}

fn start_service(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Service {
    let plugin = build_plugin("hello-http", None, &dir.join("libhello.so"));
    let pid_file = dir.join("hello.pid");
    let mut args = vec![
        "--plugin",
        plugin.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend(["--pid-file", pid_file.to_str().unwrap()]);
    args.extend_from_slice(extra);
    let host = start_host(dir, &args, env);
    host.wait_serving();
    Service {
        host,
        plugin,
        pid_file,
    }
}

fn reload(pid_file: &Path) -> (bool, String, String) {
    let (status, out, err) =
        host_command(&["reload", "--pid-file", pid_file.to_str().unwrap()], LONG);
    (status.success(), out, err)
}

#[test]
fn twenty_reloads_between_two_builds_under_load_lose_no_request() {
    let dir = temp_dir();
    let build_a = build_plugin("hello-http", Some("build-a"), &dir.path().join("a.so"));
    let build_b = build_plugin("hello-http", Some("build-b"), &dir.path().join("b.so"));
    let service = start_service(dir.path(), &["--workers", "2"], &[]);
    copy_atomically(&build_a, &service.plugin);
    let addr = service.host.listen_addr();

    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new((
        0u64,
        Vec::<String>::new(),
        Vec::<String>::new(),
    )));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, results) = (Arc::clone(&stop), Arc::clone(&results));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let outcome = http_get(addr);
                    let mut r = results.lock().unwrap();
                    r.0 += 1;
                    match outcome {
                        Ok(body) => r.1.push(body.lines().next().unwrap_or_default().to_owned()),
                        Err(e) => r.2.push(e.to_string()),
                    }
                }
            })
        })
        .collect();

    for i in 0..20u64 {
        let (build, banner) = if i % 2 == 0 {
            (&build_b, "build-b")
        } else {
            (&build_a, "build-a")
        };
        copy_atomically(build, &service.plugin);
        let (ok, out, err) = reload(&service.pid_file);
        let generation = i + 2;
        assert!(ok, "reload {i} failed: {err}");
        assert!(
            out.contains(&format!("generation {generation} is serving as pid")),
            "{out}"
        );
        eventually(
            &format!("a reply from generation {generation}"),
            LONG,
            || {
                let body = http_get(addr).ok()?;
                (identity(&body).0 == generation && body.starts_with(banner)).then_some(())
            },
        );
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let (total, banners, failures) = &*results.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(*total >= 100, "only {total} requests made");
    for banner in ["build-a", "build-b"] {
        assert!(banners.iter().any(|b| b == banner), "{banner} never served");
    }
}

#[test]
fn ticker_reloads_and_the_command_names_the_new_supervisor() {
    let dir = temp_dir();
    let pid_file = dir.path().join("ticker.pid");
    let (host, ticks) = start_ticker(dir.path(), &["--pid-file", pid_file.to_str().unwrap()]);
    host.wait_serving();
    let old_worker = eventually("a tick", LONG, || tick_pids(&ticks).first().copied());
    let (ok, out, err) = reload(&pid_file);
    assert!(ok, "{err}");
    let new_pid = pid_in(&pid_file).unwrap();
    assert_ne!(new_pid, host.supervisor());
    assert_eq!(
        out.trim(),
        format!(
            "reloaded: generation 2 is serving as pid {new_pid} (was pid {})",
            host.supervisor()
        )
    );
    eventually("a tick from generation 2", LONG, || {
        lines(&ticks)
            .iter()
            .any(|l| l.ends_with("gen=2"))
            .then_some(())
    });
    let shutdown = format!("shutdown pid={old_worker}");
    eventually("the old worker's shutdown line", LONG, || {
        lines(&ticks).contains(&shutdown).then_some(())
    });
    wait_gone("the old supervisor", host.supervisor(), LONG);
    assert!(alive(host.pid()), "the anchor stays");
    let (status, out, _) =
        host_command(&["status", "--pid-file", pid_file.to_str().unwrap()], LONG);
    assert!(
        status.success() && out.contains(&format!("pid {new_pid}, generation 2, serving")),
        "{out}"
    );
}

/// At debug level, the new generation's steps say how long they ran and
/// how long they waited for a CPU: what tells a slow reload on a busy
/// machine from slow work.
#[test]
fn the_debug_log_says_how_long_a_reload_step_ran_and_waited_for_a_cpu() {
    let dir = temp_dir();
    let service = start_service(dir.path(), &[], &[("HOST_LOG", "debug")]);
    let (ok, _, err) = reload(&service.pid_file);
    assert!(ok, "{err}");
    let log = service.host.log_text();
    for (who, step, before_times) in [
        ("supervisor", "plugin snapshot taken at", "("),
        ("worker", "loaded in", "(since the fork: "),
        ("worker", "plugin built in", "(since the fork: "),
    ] {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("{who}[gen=2 ")) && l.contains(step))
            .unwrap_or_else(|| panic!("no {who} line '{step}' in:\n{log}"));
        // "(... 0.73 ms on a CPU, 0.05 ms waiting for one)"
        let figures = line
            .split_once(before_times)
            .and_then(|(_, rest)| rest.split_once(" ms on a CPU, "))
            .and_then(|(running, rest)| Some((running, rest.split_once(" ms waiting for one)")?.0)))
            .and_then(|(running, waiting)| {
                Some((running.parse::<f64>().ok()?, waiting.parse::<f64>().ok()?))
            });
        assert!(figures.is_some(), "no CPU and wait times in: {line}");
    }
}

#[test]
fn new_generation_sees_no_inherit_variables_and_its_workers_hold_no_lock() {
    let dir = temp_dir();
    let pid_file = dir.path().join("faulty.pid");
    let faulty = start_faulty(
        dir.path(),
        "serve",
        &["--pid-file", pid_file.to_str().unwrap()],
        &[],
    );
    let (ok, _, err) = reload(&pid_file);
    assert!(ok, "{err}");
    let worker = eventually("generation 2 to start", LONG, || {
        faulty_pids(&faulty.events, "gen=2 leaked_vars=0")
            .first()
            .copied()
    });
    let events = lines(&faulty.events);
    assert!(
        events.iter().all(|l| l.ends_with("leaked_vars=0")),
        "a worker sees HOST_INHERIT_*: {events:?}"
    );
    let pid_path = std::fs::canonicalize(&pid_file).unwrap();
    for fd in std::fs::read_dir(format!("/proc/{worker}/fd")).unwrap() {
        let target = std::fs::read_link(fd.unwrap().path()).unwrap_or_default();
        assert_ne!(target, pid_path, "worker {worker} holds the pid file open");
    }
}

/// Starts hello-http, replaces the plugin with what `break_it` makes, and
/// checks that the reload fails with `reason` while generation 1 keeps
/// serving, and that the next reload (of a good plugin) works at once.
fn assert_reload_fails(
    extra: &[&str],
    env: &[(&str, &str)],
    break_it: impl FnOnce(&Path),
    reason: &str,
) {
    let dir = temp_dir();
    let service = start_service(dir.path(), extra, env);
    let good = dir.path().join("good.so");
    std::fs::copy(&service.plugin, &good).unwrap();
    let addr = service.host.listen_addr();
    let (_, worker) = identity(&http_get(addr).unwrap());

    break_it(&service.plugin);
    let (ok, out, err) = reload(&service.pid_file);
    assert!(!ok, "the reload succeeded: {out}");
    assert!(
        err.contains("reload failed: ") && err.contains(reason),
        "{reason:?} not in: {err}"
    );
    service.host.wait_for_log("reload failed: ", LONG);

    assert_eq!(pid_in(&service.pid_file), Some(service.host.supervisor()));
    assert_eq!(
        identity(&http_get(addr).unwrap()),
        (1, worker),
        "generation 1 still serves"
    );
    // The failed generation leaves nothing behind: not its supervisor, not
    // the worker it prepared. (The next standby, named once it waits, and
    // the worker it prepared may be there.)
    let sup = service.host.supervisor();
    eventually_ok("only generation 1 to run", LONG, || {
        let mut expected = vec![service.host.pid(), sup, worker];
        for standby in children(sup) {
            if comm(standby).as_deref() == Some("host-standby") {
                expected.push(standby);
                expected.extend(children(standby));
            }
        }
        expected.sort_unstable();
        match service.host.processes() {
            p if p == expected => Ok(()),
            p => Err(format!("processes {p:?}, wanted {expected:?}")),
        }
    });

    copy_atomically(&good, &service.plugin);
    let (ok, out, err) = reload(&service.pid_file);
    assert!(ok, "the next reload failed: {err}");
    assert!(out.contains("generation 2 is serving"), "{out}");
    assert_eq!(identity(&http_get(addr).unwrap()).0, 2);
}

#[test]
fn reload_to_a_corrupt_plugin_fails_and_the_old_generation_serves() {
    assert_reload_fails(
        &[],
        &[],
        |plugin| {
            let bytes = std::fs::read(plugin).unwrap();
            std::fs::write(plugin, &bytes[..4096]).unwrap(); // an ELF header, then nothing
        },
        "is truncated",
    );
}

#[test]
fn reload_to_a_missing_plugin_fails_and_the_old_generation_serves() {
    assert_reload_fails(
        &[],
        &[],
        |plugin| std::fs::remove_file(plugin).unwrap(),
        "no such file",
    );
}

#[test]
fn reload_to_an_abi_mismatched_plugin_fails_and_the_old_generation_serves() {
    let dir = temp_dir();
    let mismatch = build_plugin("abi-mismatch", None, &dir.path().join("mismatch.so"));
    assert_reload_fails(
        &[],
        &[],
        |plugin| copy_atomically(&mismatch, plugin),
        "built against plugin-api 1.0.0",
    );
}

/// `assert_reload_fails` where the new plugin is `faulty` in `mode`;
/// returns the test's directory, which holds faulty's event file.
fn assert_reload_to_faulty_fails(mode: &str, extra: &[&str], reason: &str) -> tempfile::TempDir {
    let dir = temp_dir();
    let faulty = build_plugin("faulty", None, &dir.path().join("faulty.so"));
    let mode_file = dir.path().join("mode");
    std::fs::write(&mode_file, mode).unwrap();
    assert_reload_fails(
        extra,
        &[("FAULTY_MODE_FILE", mode_file.to_str().unwrap())],
        |plugin| copy_atomically(&faulty, plugin),
        reason,
    );
    dir
}

#[test]
fn reload_to_a_plugin_whose_constructor_panics_fails_and_the_old_generation_serves() {
    assert_reload_to_faulty_fails("panic-in-new", &[], "the plugin constructor panicked at");
}

#[test]
fn reload_to_a_plugin_that_hangs_before_ready_times_out_and_the_old_generation_serves() {
    let dir = assert_reload_to_faulty_fails(
        "hang-before-ready",
        &["--reload-timeout", "2"],
        "did not take over within 2s",
    );
    let hung = faulty_pids(&dir.path().join("mode.events"), "mode=hang-before-ready");
    assert!(!hung.is_empty(), "the hanging worker started");
    for pid in hung {
        eventually("the hanging worker to be killed", LONG, || {
            (!alive(pid)).then_some(())
        });
    }
}

#[test]
fn the_old_generation_steps_aside_only_once_its_workers_took_the_stop() {
    let dir = temp_dir();
    let service = start_service(dir.path(), &[], &[]);
    let addr = service.host.listen_addr();
    let (_, old_worker) = identity(&http_get(addr).unwrap());

    // A worker that has not yet taken the stop may still accept: the old
    // generation waits for it (up to a bound) before it lets the new one
    // take charge. A stopped process never takes it in time.
    signal(old_worker, Signal::SIGSTOP);
    let (ok, out, err) = reload(&service.pid_file);
    signal(old_worker, Signal::SIGCONT);
    assert!(ok, "the reload failed: {err}");
    assert!(out.contains("generation 2 is serving"), "{out}");
    service.host.wait_for_log(
        &format!("worker pid {old_worker} did not confirm that it stopped accepting"),
        LONG,
    );

    // Woken up, it may accept once more before it takes the stop, and
    // serves what it accepts; then it exits.
    http_get(addr).unwrap();
    eventually("the old worker to exit", LONG, || {
        (!alive(old_worker)).then_some(())
    });
    assert_eq!(identity(&http_get(addr).unwrap()).0, 2);
}

#[test]
fn after_host_reload_returns_only_the_new_generation_accepts() {
    let dir = temp_dir();
    let service = start_service(dir.path(), &["--workers", "2"], &[]);
    let addr = service.host.listen_addr();
    for generation in 2..=11 {
        let (ok, out, err) = reload(&service.pid_file);
        assert!(ok, "reload to generation {generation} failed: {err}");
        assert!(
            out.contains(&format!("generation {generation} is serving")),
            "{out}"
        );
        for _ in 0..5 {
            assert_eq!(identity(&http_get(addr).unwrap()).0, generation);
        }
    }
}

/// The nice value of every thread of `pid` (none once it is gone).
fn thread_nice_values(pid: u32) -> Vec<i32> {
    thread_files(pid, "stat")
        .into_iter()
        .filter_map(|stat| {
            // After "pid (comm) ": state is field 3, nice field 19.
            let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
            fields.get(16)?.parse().ok()
        })
        .collect()
}

#[test]
fn after_reloads_with_several_workers_nothing_keeps_a_head_start() {
    let dir = temp_dir();
    let service = start_service(dir.path(), &["--workers", "4"], &[]);
    let addr = service.host.listen_addr();
    for generation in 2..=4 {
        let (ok, _, err) = reload(&service.pid_file);
        assert!(ok, "reload to generation {generation} failed: {err}");
        assert_eq!(identity(&http_get(addr).unwrap()).0, generation);
    }
    // The old generations' workers may still be finishing: wait until only
    // the anchor, the supervisor and its four workers serve.
    let processes = eventually("one generation left", LONG, || {
        let p = service.host.serving_processes();
        (p.len() == 6).then_some(p)
    });
    // The host started at the level this test runs at.
    let usual = thread_nice_values(std::process::id())[0];
    for pid in processes {
        let nice = thread_nice_values(pid);
        assert!(
            nice.iter().all(|&n| n == usual),
            "pid {pid} ({:?}) has threads at nice {nice:?}",
            comm(pid)
        );
    }
}

#[test]
fn killing_the_new_supervisor_mid_reload_leaves_the_old_serving() {
    let dir = temp_dir();
    let faulty = build_plugin("faulty", None, &dir.path().join("faulty.so"));
    let mode = dir.path().join("mode");
    std::fs::write(&mode, "hang-before-ready").unwrap();
    let service = start_service(
        dir.path(),
        &[],
        &[("FAULTY_MODE_FILE", mode.to_str().unwrap())],
    );
    let addr = service.host.listen_addr();
    let (_, worker) = identity(&http_get(addr).unwrap());
    copy_atomically(&faulty, &service.plugin);

    signal(service.host.supervisor(), Signal::SIGUSR2);
    let line = service
        .host
        .wait_for_log("generation 2 starting as pid ", LONG);
    let new_supervisor: u32 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let events = dir.path().join("mode.events");
    let new_worker = eventually("the new worker to start", LONG, || {
        faulty_pids(&events, "start").first().copied()
    });
    signal(new_supervisor, Signal::SIGKILL);

    service.host.wait_for_log("reload failed: ", LONG);
    eventually("the new worker to be gone", LONG, || {
        (!alive(new_worker)).then_some(())
    });
    assert_eq!(identity(&http_get(addr).unwrap()), (1, worker));
    assert_eq!(pid_in(&service.pid_file), Some(service.host.supervisor()));
}

#[test]
fn sigusr2_storm_runs_one_reload_at_a_time_and_leaves_no_zombie() {
    let dir = temp_dir();
    let service = start_service(dir.path(), &[], &[]);
    let addr = service.host.listen_addr();
    // A reload takes a few milliseconds: one signal a millisecond makes
    // sure many arrive while one is in flight.
    for _ in 0..400 {
        if let Some(pid) = pid_in(&service.pid_file) {
            signal(pid, Signal::SIGUSR2);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Settle: the live supervisor serves and is not reloading.
    let status_file = dir.path().join("hello.pid.status");
    let serving = || {
        let text = std::fs::read_to_string(&status_file).ok()?;
        let pid = pid_in(&service.pid_file)?;
        let generation = text
            .lines()
            .find_map(|l| l.strip_prefix("generation=")?.parse::<u64>().ok())?;
        (text.contains("state=serving") && text.contains(&format!("pid={pid}\n")))
            .then_some((pid, generation))
    };
    // Settled: the same generation serves twice, 200 ms apart (a last
    // signal may still be on its way when the loop ends).
    let (live, generation) = eventually("the storm to settle", LONG, || {
        let first = serving()?;
        std::thread::sleep(Duration::from_millis(200));
        (serving()? == first).then_some(first)
    });
    let served_by = eventually("a reply from the live generation", LONG, || {
        Some(identity(&http_get(addr).ok()?).0).filter(|&g| g == generation)
    });
    assert!(served_by >= 2, "at least one reload happened");

    // One reload at a time: each generation was started once, in order.
    let log = service.host.log_text();
    let starts: Vec<u64> = log
        .lines()
        .filter_map(|l| {
            l.split("reload: generation ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(
        starts,
        (2..=generation).collect::<Vec<_>>(),
        "generations started"
    );
    assert!(
        log.contains("SIGUSR2 ignored"),
        "some signals arrived during a reload"
    );

    // Every earlier supervisor is gone, and the live one has no zombie child
    // (a worker may end at any time, but it must be reaped).
    eventually_ok(
        "no zombie child of the live supervisor",
        Duration::from_secs(5),
        || {
            let zombies: Vec<u32> = children(live).into_iter().filter(|&p| zombie(p)).collect();
            match zombies.is_empty() {
                true => Ok(()),
                false => Err(format!("zombie children {zombies:?}")),
            }
        },
    );
    let supervisors: Vec<u32> = log
        .lines()
        .filter_map(|l| {
            l.split(" supervisor[gen=")
                .nth(1)?
                .split("pid=")
                .nth(1)?
                .split(']')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    for pid in supervisors.into_iter().filter(|&pid| pid != live) {
        eventually(&format!("old supervisor {pid} to exit"), LONG, || {
            (!alive(pid)).then_some(())
        });
    }
}

#[test]
fn plugin_that_cannot_hot_reload_ignores_sigusr2() {
    let dir = temp_dir();
    let pid_file = dir.path().join("faulty.pid");
    let Faulty { host, .. } = start_faulty(
        dir.path(),
        "no-hot-reload",
        &["--pid-file", pid_file.to_str().unwrap()],
        &[],
    );
    let (ok, _, err) = reload(&pid_file);
    assert!(!ok);
    assert!(
        err.contains("reload ignored: the plugin cannot hot-reload"),
        "{err}"
    );
    signal(host.supervisor(), Signal::SIGUSR2);
    host.wait_for_nth_log("SIGUSR2 ignored: the plugin cannot hot-reload", 2, LONG);
    assert!(
        !host.log_text().contains("generation 2 starting as pid"),
        "no new generation"
    );
    assert_eq!(pid_in(&pid_file), Some(host.supervisor()));
    assert!(alive(host.supervisor()));
}

#[test]
fn rebuilding_the_plugin_in_place_leaves_running_and_respawned_workers_alone() {
    let dir = temp_dir();
    let service = start_service(dir.path(), &["--respawn-delay", "0.1"], &[]);
    let addr = service.host.listen_addr();
    let (_, worker) = identity(&http_get(addr).unwrap());
    // Rewrite the file in place, as a linker may: same inode, new bytes.
    let len = std::fs::metadata(&service.plugin).unwrap().len() as usize;
    std::fs::write(&service.plugin, vec![0xAB; len]).unwrap();
    assert_eq!(
        identity(&http_get(addr).unwrap()),
        (1, worker),
        "the running worker is untouched"
    );
    signal(worker, Signal::SIGKILL);
    let respawned = eventually("a respawned worker to serve", LONG, || {
        let (generation, pid) = identity(&http_get(addr).ok()?);
        (pid != worker).then_some((generation, pid))
    });
    assert_eq!(
        respawned.0, 1,
        "the respawned worker runs the generation's snapshot"
    );
}

/// `ticker` run by a copy of the host binary in `dir` (which a test may
/// replace or remove), with a pid file, serving: the copy's path, the pid
/// file, the host and the ticks file.
fn ticker_from_a_copy_of_the_host(dir: &Path) -> (PathBuf, PathBuf, Host, PathBuf) {
    let bin = dir.join("host");
    copy_atomically(&host_bin(), &bin);
    let pid_file = dir.join("ticker.pid");
    let (host, ticks) = start_ticker_from(&bin, dir, &["--pid-file", pid_file.to_str().unwrap()]);
    host.wait_serving();
    (bin, pid_file, host, ticks)
}

#[test]
fn reload_execs_a_rebuilt_host_binary_and_survives_a_missing_one() {
    let dir = temp_dir();
    let (bin, pid_file, host, ticks) = ticker_from_a_copy_of_the_host(dir.path());

    // Without the binary, the exec fails and the old generation carries on.
    std::fs::remove_file(&bin).unwrap();
    let (ok, _, err) = reload(&pid_file);
    assert!(!ok);
    assert!(
        err.contains("reload failed: cannot exec") && err.contains("No such file"),
        "{err}"
    );
    assert!(alive(host.supervisor()));
    let worker = eventually("a tick", LONG, || tick_pids(&ticks).first().copied());
    assert!(alive(worker), "the serving worker is untouched");

    // A rebuilt binary (a new file at the same path) is what the next generation runs.
    copy_atomically(&host_bin(), &bin);
    let (ok, _, err) = reload(&pid_file);
    assert!(ok, "{err}");
    let new_pid = pid_in(&pid_file).unwrap();
    let exe = std::fs::read_link(format!("/proc/{new_pid}/exe")).unwrap();
    assert_eq!(
        exe,
        std::fs::canonicalize(&bin).unwrap(),
        "the new generation runs the new file"
    );
}

/// The supervisor in charge keeps the next generation exec'd and waiting (a
/// standby, a batch job named `host-standby`), and a reload starts it rather
/// than a fresh exec: unless the host binary on disk changed since, or the
/// standby was told to stop (it exits). A plugin that cannot hot-reload
/// gets none.
#[test]
fn a_reload_starts_the_standby_unless_the_host_binary_changed_or_it_was_stopped() {
    let dir = temp_dir();
    let (bin, pid_file, host, ticks) = ticker_from_a_copy_of_the_host(dir.path());
    let standby_of = |sup: u32| {
        eventually(&format!("a standby under pid {sup}"), LONG, || {
            let found = standbys(sup);
            (found.len() == 1 && comm(found[0]).as_deref() == Some("host-standby"))
                .then(|| found[0])
        })
    };

    // Started: the standby is generation 2, and no longer a standby.
    let first = standby_of(host.supervisor());
    let (ok, _, err) = reload(&pid_file);
    assert!(ok, "{err}");
    assert_eq!(pid_in(&pid_file), Some(first), "the standby took over");
    assert!(!standby(first), "generation 2 runs as a usual supervisor");
    assert_eq!(comm(first).as_deref(), Some("host"));
    eventually("ticks from generation 2", LONG, || {
        lines(&ticks)
            .iter()
            .any(|l| l.ends_with(" gen=2"))
            .then_some(())
    });

    // A rebuilt binary (a new file at the same path): exec'd afresh, and
    // the standby, which runs the old one, is killed.
    let second = standby_of(first);
    copy_atomically(&host_bin(), &bin);
    let (ok, _, err) = reload(&pid_file);
    assert!(ok, "{err}");
    let third_sup = pid_in(&pid_file).unwrap();
    assert_ne!(third_sup, second, "a fresh exec took over");
    wait_gone("the stale standby", second, LONG);
    let exe = std::fs::read_link(format!("/proc/{third_sup}/exe")).unwrap();
    assert_eq!(exe, std::fs::canonicalize(&bin).unwrap());

    // A standby told to stop exits; the next reload execs afresh.
    let third = standby_of(third_sup);
    signal(third, Signal::SIGTERM);
    wait_gone("the stopped standby", third, LONG);
    let (ok, _, err) = reload(&pid_file);
    assert!(ok, "{err}");
    let fourth_sup = pid_in(&pid_file).unwrap();
    assert!(![third_sup, third].contains(&fourth_sup));
    standby_of(fourth_sup);
}

/// The standby forks the next generation's first worker ahead of the
/// reload: it waits (no connection reaches it, it holds no pid-file lock),
/// and the reload lets it serve. It ends with its standby.
#[test]
fn a_standby_prepares_the_first_worker_which_serves_after_the_reload() {
    let dir = temp_dir();
    let service = start_service(dir.path(), &[], &[]);
    let addr = service.host.listen_addr();
    let prepared_under = |sup: u32| {
        eventually(
            &format!("a standby under pid {sup}, with its worker"),
            LONG,
            || {
                let standby = *standbys(sup).first()?;
                let worker = *children(standby).first()?;
                (comm(standby).as_deref() == Some("host-standby")).then_some((standby, worker))
            },
        )
    };
    let (standby, prepared) = prepared_under(service.host.supervisor());
    for _ in 0..20 {
        let (generation, pid) = identity(&http_get(addr).unwrap());
        assert_eq!(generation, 1);
        assert_ne!(
            pid, prepared,
            "the prepared worker served before the reload"
        );
    }
    let pid_path = std::fs::canonicalize(&service.pid_file).unwrap();
    for fd in std::fs::read_dir(format!("/proc/{prepared}/fd")).unwrap() {
        let target = std::fs::read_link(fd.unwrap().path()).unwrap_or_default();
        assert_ne!(
            target, pid_path,
            "the prepared worker holds the pid file open"
        );
    }

    let (ok, _, err) = reload(&service.pid_file);
    assert!(ok, "{err}");
    assert_eq!(pid_in(&service.pid_file), Some(standby));
    eventually("a reply from the prepared worker", LONG, || {
        (identity(&http_get(addr).ok()?) == (2, prepared)).then_some(())
    });

    // A standby that is told to stop takes its worker with it.
    let (next, next_prepared) = prepared_under(standby);
    signal(next, Signal::SIGTERM);
    wait_gone("the stopped standby", next, LONG);
    wait_gone("its prepared worker", next_prepared, LONG);
}

#[test]
fn a_plugin_that_cannot_hot_reload_gets_no_standby() {
    let dir = temp_dir();
    let Faulty { host, .. } = start_faulty(dir.path(), "no-hot-reload", &[], &[]);
    host.wait_serving();
    holds_for(
        "no standby",
        Duration::from_millis(300),
        || match standbys(host.supervisor()) {
            s if s.is_empty() => Ok(()),
            s => Err(format!("standbys {s:?}")),
        },
    );
}

/// One datagram from the fake systemd socket (which has `SO_PASSCRED` set):
/// the sender's pid (from its `SCM_CREDENTIALS`) and the text. `None` when
/// nothing came within the socket's read timeout.
fn receive_notification(systemd: &UnixDatagram) -> Option<(u32, String)> {
    let mut buf = [0u8; 4096];
    // Room for the credentials message, aligned as a cmsghdr must be.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at `iov` and `control`, which live across the
    // call, with their true lengths.
    let n = unsafe { libc::recvmsg(systemd.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return None;
    }
    let mut sender = None;
    // SAFETY: the CMSG_* walk stays within the msg_controllen bytes of
    // `control` the kernel filled; the data of an SCM_CREDENTIALS message
    // is a ucred, read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_CREDENTIALS
            {
                let creds: libc::ucred = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                sender = Some(creds.pid as u32);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let sender = sender.expect("SCM_CREDENTIALS with every datagram");
    Some((
        sender,
        String::from_utf8_lossy(&buf[..n as usize]).into_owned(),
    ))
}

/// A fake systemd notification socket: what it heard, in order (the
/// sender's pid and the text), and how far the test has matched.
struct Notifications {
    socket: UnixDatagram,
    heard: Vec<(u32, String)>,
    matched: usize,
}

impl Notifications {
    fn bind(path: &Path) -> Notifications {
        let socket = UnixDatagram::bind(path).unwrap();
        setsockopt(&socket, sockopt::PassCred, &true).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Notifications {
            socket,
            heard: Vec::new(),
            matched: 0,
        }
    }

    /// Waits for the next datagram, after the last one matched, that
    /// contains `needle`; returns its text.
    fn wait_for(&mut self, needle: &str) -> String {
        eventually(&format!("systemd to hear {needle:?}"), LONG, || {
            if let Some(datagram) = receive_notification(&self.socket) {
                self.heard.push(datagram);
            }
            let after = self.heard[self.matched..]
                .iter()
                .position(|(_, m)| m.contains(needle))?;
            self.matched += after + 1;
            Some(self.heard[self.matched - 1].1.clone())
        })
    }

    /// Everything heard, with what is still queued.
    fn all(&mut self) -> &[(u32, String)] {
        while let Some(datagram) = receive_notification(&self.socket) {
            self.heard.push(datagram);
        }
        &self.heard
    }
}

/// Under systemd only the anchor, the main process for the service's whole
/// life, notifies (every datagram's sender, by `SO_PASSCRED`, is the
/// anchor): `READY=1`, then `RELOADING=1` and `READY=1` again on a reload,
/// then `STOPPING=1`, in that order; the main pid never changes.
#[test]
fn systemd_hears_ready_reloading_ready_and_stopping_from_one_main_pid() {
    let dir = temp_dir();
    let socket = dir.path().join("notify.sock");
    let mut systemd = Notifications::bind(&socket);
    let pid_file = dir.path().join("faulty.pid");
    let mut faulty = start_faulty(
        dir.path(),
        "serve",
        &["--pid-file", pid_file.to_str().unwrap()],
        &[("NOTIFY_SOCKET", socket.to_str().unwrap())],
    );
    let anchor = faulty.host.pid();
    assert!(systemd
        .wait_for("READY=1")
        .contains("STATUS=serving (generation 1)"));

    let (ok, _, err) = reload(&pid_file);
    assert!(ok, "{err}");
    assert!(systemd.wait_for("RELOADING=1").contains("MONOTONIC_USEC="));
    assert!(systemd
        .wait_for("READY=1")
        .contains("STATUS=serving (generation 2)"));

    // systemd's MAINPID, the anchor, stays for the service's whole life.
    signal(anchor, Signal::SIGTERM);
    systemd.wait_for("STOPPING=1");
    assert_eq!(faulty.host.wait_exit(LONG).code(), Some(0));
    let heard = systemd.all();
    assert!(
        heard.iter().all(|(pid, _)| *pid == anchor),
        "only the anchor (pid {anchor}) notifies: {heard:?}"
    );
    assert!(
        !heard.iter().any(|(_, m)| m.contains("MAINPID=")),
        "the main pid never changes: {heard:?}"
    );
    let events = lines(&faulty.events);
    assert!(
        !events.is_empty() && events.iter().all(|l| l.ends_with("leaked_vars=0")),
        "{events:?}"
    );
}

#[test]
fn starting_with_reload_if_running_starts_or_reloads() {
    let dir = temp_dir();
    let pid_file = dir.path().join("ticker.pid");
    let extra = [
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--reload-if-running",
    ];
    // Nothing runs yet: it starts.
    let (first, _ticks) = start_ticker(dir.path(), &extra);
    first.wait_serving();
    // Something runs: it reloads that instead, and says so.
    let args = ticker_args(dir.path(), &extra);
    let (status, out, err) =
        host_command(&args.iter().map(String::as_str).collect::<Vec<_>>(), LONG);
    assert!(status.success(), "{err}");
    let new_pid = pid_in(&pid_file).unwrap();
    assert_eq!(
        out.trim(),
        format!(
            "reloaded: generation 2 is serving as pid {new_pid} (was pid {})",
            first.supervisor()
        )
    );
}
