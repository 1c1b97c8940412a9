//! Hardening (issue 10): the files the host creates and reads cannot be
//! turned against it or against another process, control commands act
//! only on the host of their pid file, the plugin file must be one nobody
//! else can change, and no input can forge a log line.
//!
//! Tests that need another user run processes as `nobody` (uid 65534) and
//! `chown` files to it; they expect to run as root.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use support::*;

const LONG: Duration = Duration::from_secs(30);
const NOBODY: u32 = 65534;

/// The forged log line the injection tests try to produce.
const FORGED: &str = "2026-01-01T00:00:00Z  INFO supervisor[gen=1 pid=1]: forged";

// ---- helpers ----

/// Runs the host to completion and returns its one error line, after
/// checking that it failed, did not panic, and printed exactly one.
fn error_line(args: &[&str]) -> String {
    let (status, log) = run_host(args, &[], LONG);
    assert!(!status.success(), "host {args:?} succeeded; log:\n{log}");
    assert!(!log.contains("panicked at"), "{log}");
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("host: error: ") || l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "exactly one error line in:\n{log}");
    errors[0].to_owned()
}

fn assert_mentions(line: &str, parts: &[&str]) {
    for part in parts {
        assert!(line.contains(part), "{line:?} should mention {part:?}");
    }
}

fn status_path(pid_file: &Path) -> PathBuf {
    let mut name = pid_file.as_os_str().to_owned();
    name.push(".status");
    PathBuf::from(name)
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A tag unique to this test process and call, for [`KillTaggedOnDrop`].
fn new_tag() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "hardening-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Starts `program ARGS` tagged with `tag` (so that dropping the tag's
/// [`KillTaggedOnDrop`] kills it and what it forks), as `uid` if given.
fn spawn_tagged(tag: &str, uid: Option<u32>, program: &str, args: &[&str]) -> Child {
    let mut command = Command::new(program);
    command
        .args(args)
        .env(TAG_VAR, tag)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    command.spawn().unwrap()
}

/// Whether a process holds a lock on `path` (a shared lock cannot be had).
fn locked(path: &Path) -> bool {
    let Ok(file) = fs::File::open(path) else {
        return false;
    };
    let lock = fd_lock::RwLock::new(file);
    let held = lock.try_read().is_err();
    held
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks
/// since boot.
fn start_time(pid: u32) -> String {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = stat.rsplit_once(')').unwrap().1;
    // Field 3 (the state) is the first after the command name.
    after_comm.split_whitespace().nth(19).unwrap().to_owned()
}

fn our_pid_namespace() -> String {
    fs::read_link("/proc/self/ns/pid")
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// A status file as a host would write it for `pid` (start time, pid
/// namespace and all), with an instance id that `pid` does not carry: what
/// someone who wants `host stop` to hit `pid` would plant.
fn forged_status(pid: u32) -> String {
    format!(
        "pid={pid}\ngeneration=1\nstate=serving\nreloads=0\nlast_reload=\nlisten=\ncrash_looping=0\nanchor={pid}\nanchor_since=1700000000\ninstance=0123456789abcdef0123456789abcdef\nstart_time={}\npid_ns={}\n",
        start_time(pid),
        our_pid_namespace()
    )
}

fn control(command: &str, pid_file: &Path) -> (bool, String, String) {
    let mut args = vec![command, "--pid-file", pid_file.to_str().unwrap()];
    if command != "status" {
        // Without the fix a stop or reload would wait this long for an
        // outcome that never comes.
        args.extend(["--timeout", "1"]);
    }
    let (status, out, err) = host_command(&args, LONG);
    (status.success(), out, err)
}

// ---- 1. the pid file ----

/// A pid file that is a symbolic link is refused with one line naming it
/// and the fix, and the file it points to is left alone.
#[test]
fn pid_file_that_is_a_symlink_is_refused_and_its_target_left_alone() {
    let dir = temp_dir();
    let victim = dir.path().join("victim");
    fs::write(&victim, "precious\n").unwrap();
    let link = dir.path().join("host.pid");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let line = error_line(&[
        "--plugin",
        "/nonexistent/libnothing.so",
        "--pid-file",
        link.to_str().unwrap(),
    ]);
    assert_mentions(
        &line,
        &[link.to_str().unwrap(), "symbolic link", "--pid-file"],
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
}

/// The pid file is created with mode 0644 even under a umask of 077.
#[test]
fn pid_file_is_created_0644_whatever_the_umask() {
    let dir = temp_dir();
    let pid_file = dir.path().join("ticker.pid");
    let args = ticker_args(dir.path(), &["--pid-file", pid_file.to_str().unwrap()]);
    let mut sh_args = vec![
        "-c".to_owned(),
        "umask 077; exec \"$0\" \"$@\"".to_owned(),
        host_bin().to_string_lossy().into_owned(),
    ];
    sh_args.extend(args);
    let sh_args: Vec<&str> = sh_args.iter().map(String::as_str).collect();
    let host = start_host_from(Path::new("sh"), dir.path(), &sh_args, &[]);
    host.wait_serving();
    assert_eq!(mode_of(&pid_file), 0o644, "the pid file's mode");
    assert_eq!(pid_in(&pid_file), Some(host.supervisor()));
}

/// A pid file owned by another user who is not root is refused: the error
/// names the owner and the fix.
#[test]
fn pid_file_owned_by_another_user_is_refused_naming_the_owner() {
    let dir = temp_dir();
    let pid_file = dir.path().join("host.pid");
    fs::write(&pid_file, "").unwrap();
    std::os::unix::fs::chown(&pid_file, Some(NOBODY), Some(NOBODY)).unwrap();
    let line = error_line(&[
        "--plugin",
        "/nonexistent/libnothing.so",
        "--pid-file",
        pid_file.to_str().unwrap(),
    ]);
    assert_mentions(
        &line,
        &[
            pid_file.to_str().unwrap(),
            "owned by",
            "nobody",
            "remove it",
        ],
    );
    assert_eq!(fs::read_to_string(&pid_file).unwrap(), "", "left unwritten");
}

/// A start that fails after the anchor created the pid file (the
/// `--listen` address is taken; the plugin's constructor fails) leaves
/// neither the pid file nor the status file behind.
#[test]
fn start_that_fails_after_creating_the_pid_file_leaves_no_pid_or_status_file() {
    let dir = temp_dir();
    let plugin = build_plugin("ticker", None, &dir.path().join("libticker.so"));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();

    let pid_file = dir.path().join("listen.pid");
    let line = error_line(&[
        "--plugin",
        plugin.to_str().unwrap(),
        "--listen",
        &addr,
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--",
        "ticks.log",
    ]);
    assert_mentions(&line, &[&addr, "in use"]);
    assert!(!pid_file.exists(), "the pid file is left behind");
    assert!(!status_path(&pid_file).exists(), "the status file is left");

    // Without arguments, ticker's constructor fails: generation 1 got as
    // far as starting its workers.
    let pid_file = dir.path().join("constructor.pid");
    let line = error_line(&[
        "--plugin",
        plugin.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
    ]);
    assert_mentions(&line, &["ticker takes one argument"]);
    assert!(!pid_file.exists(), "the pid file is left behind");
    assert!(!status_path(&pid_file).exists(), "the status file is left");
}

/// A failed start removes only what it created: a stale pid file that was
/// there before stays.
#[test]
fn start_that_fails_keeps_a_pid_file_it_did_not_create() {
    let dir = temp_dir();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let pid_file = dir.path().join("stale.pid");
    fs::write(&pid_file, "999999\n").unwrap();
    let line = error_line(&[
        "--plugin",
        "/nonexistent/libnothing.so",
        "--listen",
        &addr,
        "--pid-file",
        pid_file.to_str().unwrap(),
    ]);
    assert_mentions(&line, &[&addr, "in use"]);
    assert!(
        pid_file.exists(),
        "a pid file the host did not create is gone"
    );
}

// ---- 2. the status file ----

/// Plants `FILE.status.tmp<N>`, a symlink to `victim`, for the next `count`
/// pids this pid namespace will hand out.
fn plant_temporaries(pid_file: &Path, victim: &Path, count: u32) {
    let last: u32 = fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for i in 1..=count {
        // The kernel wraps to 300 after pid_max.
        let mut pid = last + i;
        if pid >= max {
            pid = 300 + (pid - max);
        }
        let mut name = status_path(pid_file).into_os_string();
        name.push(format!(".tmp{pid}"));
        // An earlier round may have planted this one already.
        let _ = std::os::unix::fs::symlink(victim, PathBuf::from(name));
    }
}

/// Symlinks planted at every name the old temporary status file could have
/// (`FILE.status.tmp<pid>`) are never followed, at start or on a reload:
/// the file they point to is unchanged, and the status file is a regular
/// file the host wrote.
#[test]
fn status_file_is_never_written_through_a_planted_temporary() {
    let dir = temp_dir();
    let victim = dir.path().join("victim");
    fs::write(&victim, "precious\n").unwrap();
    let pid_file = dir.path().join("faulty.pid");
    let plugin = build_plugin("faulty", None, &dir.path().join("libfaulty.so"));
    let mode = dir.path().join("mode");
    fs::write(&mode, "serve").unwrap();

    plant_temporaries(&pid_file, &victim, 5000);
    let host = start_host(
        dir.path(),
        &[
            "--plugin",
            plugin.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
        &[("FAULTY_MODE_FILE", mode.to_str().unwrap())],
    );
    host.wait_serving();
    let sup = host.supervisor();
    eventually_ok(
        "the status file to say generation 1 serves",
        LONG,
        || match read_status(&pid_file) {
            Some(s) if s.serving(sup, 1) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");

    plant_temporaries(&pid_file, &victim, 5000);
    let (status, out, err) =
        host_command(&["reload", "--pid-file", pid_file.to_str().unwrap()], LONG);
    assert!(status.success(), "reload: {out}{err}");
    let new_sup = pid_in(&pid_file).unwrap();
    eventually_ok(
        "the status file to say generation 2 serves",
        LONG,
        || match read_status(&pid_file) {
            Some(s) if s.serving(new_sup, 2) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    let meta = fs::symlink_metadata(status_path(&pid_file)).unwrap();
    assert!(
        meta.file_type().is_file(),
        "the status file is a regular file"
    );
    // No temporary of the host's is left: every other `.status.` name is
    // one of the planted links.
    for entry in fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("faulty.pid.status.") {
            assert!(
                entry.file_type().unwrap().is_symlink(),
                "{name} is left behind"
            );
        }
    }
}

// ---- 3. control commands check their target ----

/// Another user (nobody) pre-creates, in a shared 1777 directory, a pid
/// file naming a victim process (a `sleep`), with a status file as a host
/// would write it, and holds the lock: `host stop` refuses and the victim
/// survives.
#[test]
fn stop_refuses_another_users_pid_file_naming_a_victim() {
    let dir = temp_dir();
    let shared = dir.path().join("shared");
    fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o1777);
    let tag = new_tag();
    let _cleanup = KillTaggedOnDrop(tag.clone());
    let mut victim = spawn_tagged(&tag, None, "sleep", &["60"]);
    let pid_file = shared.join("service.pid");
    let script = "printf '%s\\n' \"$1\" > \"$2\" && printf '%s' \"$3\" > \"$2.status\" && exec flock \"$2\" sleep 60";
    let victim_pid = victim.id().to_string();
    let status_text = forged_status(victim.id());
    let mut attacker = spawn_tagged(
        &tag,
        Some(NOBODY),
        "sh",
        &[
            "-c",
            script,
            "sh",
            &victim_pid,
            pid_file.to_str().unwrap(),
            &status_text,
        ],
    );
    eventually("nobody to lock the pid file", LONG, || {
        locked(&pid_file).then_some(())
    });
    assert_eq!(fs::metadata(&pid_file).unwrap().uid(), NOBODY);

    let (ok, out, err) = control("stop", &pid_file);
    assert!(!ok, "host stop succeeded: {out}{err}");
    assert_eq!(err.lines().count(), 1, "one error line: {err}");
    assert!(err.contains(pid_file.to_str().unwrap()), "{err}");
    assert!(
        victim.try_wait().unwrap().is_none(),
        "the victim was signalled"
    );
    assert!(attacker.try_wait().unwrap().is_none());
}

/// An unrelated process (a `flock`) holds the lock on a pid file that names
/// it, beside a status file as a host would write it: `host stop` and
/// `host reload` refuse, and it survives both.
#[test]
fn stop_and_reload_refuse_an_unrelated_process_holding_the_lock() {
    let dir = temp_dir();
    let tag = new_tag();
    let _cleanup = KillTaggedOnDrop(tag.clone());
    let pid_file = dir.path().join("service.pid");
    fs::write(&pid_file, "").unwrap();
    let mut flock = spawn_tagged(
        &tag,
        None,
        "flock",
        &[pid_file.to_str().unwrap(), "sleep", "60"],
    );
    eventually("flock to lock the pid file", LONG, || {
        locked(&pid_file).then_some(())
    });
    fs::write(&pid_file, format!("{}\n", flock.id())).unwrap();
    fs::write(status_path(&pid_file), forged_status(flock.id())).unwrap();

    for command in ["stop", "reload"] {
        let (ok, out, err) = control(command, &pid_file);
        assert!(!ok, "host {command} succeeded: {out}{err}");
        assert_eq!(err.lines().count(), 1, "one error line: {err}");
        assert_mentions(&err, &[&format!("pid {}", flock.id()), "not its host"]);
        assert!(
            flock.try_wait().unwrap().is_none(),
            "flock was signalled by host {command}"
        );
    }
}

/// The host runs as PID 1 of its own pid namespace; `host status` and
/// `host stop` from outside refuse, saying so (the pids in its files are
/// not this namespace's), and the host keeps running.
#[test]
fn control_from_outside_the_hosts_pid_namespace_is_refused() {
    let dir = temp_dir();
    let args = ticker_args(dir.path(), &[]);
    let pid_file = dir.path().join("ticker.pid");
    let bin = fs::canonicalize(host_bin()).unwrap();
    let mut unshare_args = vec![
        "--pid".to_owned(),
        "--fork".to_owned(),
        "--mount-proc".to_owned(),
        bin.to_string_lossy().into_owned(),
        "--pid-file".to_owned(),
        pid_file.to_string_lossy().into_owned(),
    ];
    unshare_args.extend(args);
    let unshare_args: Vec<&str> = unshare_args.iter().map(String::as_str).collect();
    let mut unshare = start_host_from(Path::new("unshare"), dir.path(), &unshare_args, &[]);
    unshare.wait_for_log("serving, started in", LONG);
    eventually_ok(
        "the status file to say a generation serves",
        LONG,
        || match read_status(&pid_file) {
            Some(s) if s.state == "serving" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    let (ok, out, err) = control("status", &pid_file);
    assert!(!ok, "host status succeeded from outside: {out}{err}");
    assert!(!out.contains("running"), "{out}");
    assert_mentions(&err, &["another pid namespace", "inside it"]);

    let (ok, out, err) = control("stop", &pid_file);
    assert!(!ok, "host stop succeeded from outside: {out}{err}");
    assert_mentions(&err, &["another pid namespace"]);
    assert!(unshare.child.try_wait().unwrap().is_none(), "the host runs");
    assert_eq!(
        read_status(&pid_file).map(|s| s.state),
        Some("serving".to_owned())
    );
}

// ---- 4. plugin file trust ----

#[test]
fn plugin_writable_by_group_or_others_is_refused() {
    let dir = temp_dir();
    let plugin = build_plugin("ticker", None, &dir.path().join("libticker.so"));
    chmod(&plugin, 0o666);
    let line = error_line(&["--plugin", plugin.to_str().unwrap()]);
    assert_mentions(
        &line,
        &[
            plugin.to_str().unwrap(),
            "writable by group or others",
            "chmod go-w",
            "--insecure-plugin-path",
        ],
    );
}

#[test]
fn plugin_in_a_directory_writable_by_others_is_refused() {
    let dir = temp_dir();
    let open = dir.path().join("open");
    fs::create_dir(&open).unwrap();
    chmod(&open, 0o1777);
    let plugin = build_plugin("ticker", None, &open.join("libticker.so"));
    chmod(&plugin, 0o755);
    let line = error_line(&["--plugin", plugin.to_str().unwrap()]);
    assert_mentions(
        &line,
        &[
            open.to_str().unwrap(),
            "directory",
            "writable by group or others",
            "chmod go-w",
            "--insecure-plugin-path",
        ],
    );
}

#[test]
fn plugin_owned_by_another_user_is_refused() {
    let dir = temp_dir();
    let plugin = build_plugin("ticker", None, &dir.path().join("libticker.so"));
    std::os::unix::fs::chown(&plugin, Some(NOBODY), Some(NOBODY)).unwrap();
    let line = error_line(&["--plugin", plugin.to_str().unwrap()]);
    assert_mentions(
        &line,
        &[
            plugin.to_str().unwrap(),
            "owned by",
            "nobody",
            "--insecure-plugin-path",
        ],
    );
}

#[test]
fn insecure_plugin_path_accepts_such_a_plugin() {
    let dir = temp_dir();
    let args = ticker_args(dir.path(), &["--insecure-plugin-path"]);
    chmod(&dir.path().join("libticker.so"), 0o666);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let host = start_host(dir.path(), &args, &[]);
    host.wait_serving();
    eventually("a tick", LONG, || {
        tick_pids(&dir.path().join("ticks.log")).first().copied()
    });
}

/// A reload to a plugin file that has become writable by others fails
/// with the reason, and the running generation carries on; once fixed,
/// the next reload works.
#[test]
fn reload_to_a_plugin_made_writable_by_others_fails_and_the_old_generation_serves() {
    let dir = temp_dir();
    let pid_file = dir.path().join("faulty.pid");
    let faulty = start_faulty(
        dir.path(),
        "serve",
        &["--pid-file", pid_file.to_str().unwrap()],
        &[],
    );
    let sup = faulty.host.supervisor();
    let plugin = dir.path().join("libfaulty.so");
    chmod(&plugin, 0o646);
    let (status, out, err) =
        host_command(&["reload", "--pid-file", pid_file.to_str().unwrap()], LONG);
    assert!(!status.success(), "the reload succeeded: {out}{err}");
    assert_mentions(&err, &["writable by group or others", "chmod go-w"]);
    assert!(read_status(&pid_file).unwrap().serving(sup, 1));

    chmod(&plugin, 0o644);
    let (status, out, err) =
        host_command(&["reload", "--pid-file", pid_file.to_str().unwrap()], LONG);
    assert!(status.success(), "the reload failed: {out}{err}");
}

// ---- 5. log hygiene ----

/// Checks that no line of `log` starts with the forged text.
fn assert_not_forged(log: &str) {
    assert!(
        !log.lines().any(|l| l.starts_with(FORGED)),
        "a forged line in:\n{log}"
    );
}

/// A plugin path holding a newline and a fake log line comes out escaped,
/// on the error path (no such file) and in a serving host's log.
#[test]
fn plugin_path_with_a_newline_cannot_forge_a_log_line() {
    let dir = temp_dir();
    let missing = format!("{}/missing\n{FORGED}", dir.path().display());
    let (status, log) = run_host(&["--plugin", &missing], &[], LONG);
    assert!(!status.success(), "{log}");
    assert!(log.contains("host: error: "), "{log}");
    assert_not_forged(&log);

    let evil = dir.path().join(format!("evil\n{FORGED}"));
    let plugin = build_plugin("ticker", None, &evil);
    let ticks = dir.path().join("ticks.log");
    let host = start_host(
        dir.path(),
        &[
            "--plugin",
            plugin.to_str().unwrap(),
            "--",
            ticks.to_str().unwrap(),
        ],
        &[],
    );
    host.wait_serving();
    host.wait_for_log("evil\\n2026", LONG);
    assert_not_forged(&host.log_text());
}

/// Text a plugin supplies (here ticker's constructor error, which quotes
/// its argument) cannot forge a log line either.
#[test]
fn plugin_text_with_a_newline_cannot_forge_a_log_line() {
    let dir = temp_dir();
    let plugin = build_plugin("ticker", None, &dir.path().join("libticker.so"));
    let arg = format!("/nonexistent/ticks\n{FORGED}");
    let (status, log) = run_host(
        &["--plugin", plugin.to_str().unwrap(), "--", &arg],
        &[],
        LONG,
    );
    assert!(!status.success(), "{log}");
    assert!(log.contains("cannot open /nonexistent/ticks"), "{log}");
    assert_not_forged(&log);
}

/// A status file whose start time is not the process's (the host died and
/// its pid was reused, say) makes `host stop` refuse: the host is not
/// signalled.
#[test]
fn stop_refuses_a_pid_whose_start_time_is_not_the_recorded_one() {
    let dir = temp_dir();
    let pid_file = dir.path().join("faulty.pid");
    let faulty = start_faulty(
        dir.path(),
        "serve",
        &["--pid-file", pid_file.to_str().unwrap()],
        &[],
    );
    let sup = faulty.host.supervisor();
    eventually_ok(
        "the status file to say generation 1 serves",
        LONG,
        || match read_status(&pid_file) {
            Some(s) if s.serving(sup, 1) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let text = fs::read_to_string(status_path(&pid_file)).unwrap();
    let recorded = format!("start_time={}\n", start_time(sup));
    assert!(text.contains(&recorded), "{text}");
    fs::write(
        status_path(&pid_file),
        text.replace(&recorded, "start_time=1\n"),
    )
    .unwrap();
    let (ok, out, err) = control("stop", &pid_file);
    assert!(!ok, "host stop succeeded: {out}{err}");
    assert_mentions(&err, &[&format!("pid {sup}"), "started at"]);
    assert!(alive(sup), "the supervisor was stopped");
}

/// While the first generation starts, the pid file names the anchor: `host
/// status` says so, and `host stop` stops the host through it.
#[test]
fn status_and_stop_during_start_up_act_on_the_anchor() {
    let dir = temp_dir();
    let pid_file = dir.path().join("faulty.pid");
    let plugin = build_plugin("faulty", None, &dir.path().join("libfaulty.so"));
    let mode = dir.path().join("mode");
    fs::write(&mode, "hang-before-ready").unwrap();
    let mut host = start_host(
        dir.path(),
        &[
            "--plugin",
            plugin.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
        &[("FAULTY_MODE_FILE", mode.to_str().unwrap())],
    );
    let anchor = host.pid();
    let sup = host.supervisor();
    eventually_ok(
        "the status file to say generation 1 starts",
        LONG,
        || match read_status(&pid_file) {
            Some(s) if s.pid == sup && s.state == "starting" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(pid_in(&pid_file), Some(anchor));
    let (ok, out, err) = control("status", &pid_file);
    assert!(ok, "host status: {out}{err}");
    assert!(
        out.contains(&format!(
            "starting: anchor pid {anchor}, generation 1 starting as pid {sup}"
        )),
        "{out}"
    );
    let (status, out, err) =
        host_command(&["stop", "--pid-file", pid_file.to_str().unwrap()], LONG);
    assert!(status.success(), "host stop: {out}{err}");
    host.wait_exit(LONG);
    assert!(!alive(sup));
}
