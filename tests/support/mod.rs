//! Helpers for the integration tests: build and copy plugins, start real
//! `host` processes with their log in a file, wait for conditions with a
//! deadline, talk HTTP, read pid, status and event files, and kill every
//! process a test started even when the test fails.
//!
//! Every host a test starts gets its own `HOST_TEST_INSTANCE=<tag>` variable.
//! Its workers, the generations it execs and whatever a plugin forks inherit
//! it (the host removes only its own `HOST_INHERIT_*` and `NOTIFY_SOCKET`),
//! so `/proc/*/environ` names every process that belongs to the host, at any
//! log level: that is how [`Host::processes`] finds them and how dropping a
//! [`Host`] cleans up.
//!
//! Hosts run at the default log level (`info`). A test that needs another
//! passes `HOST_LOG` in its `env`; to see debug lines of every host while
//! investigating, run the tests with `HOST_TEST_LOG=debug`.
#![allow(dead_code)] // each test file uses a different part

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The host binary cargo built for these tests.
pub fn host_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_host"))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_owned()
}

/// Where cargo put the host binary, and so where it puts the plugins.
fn profile_dir() -> PathBuf {
    host_bin()
        .parent()
        .expect("the binary is in a directory")
        .to_owned()
}

/// Builds the workspace's plugin libraries (with `HELLO_HTTP_BANNER` set to
/// `banner`, if given) and copies `lib<name>.so` to `dest`. Serialised across
/// test processes by a file lock, since builds overwrite the same files.
pub fn build_plugin(name: &str, banner: Option<&str>, dest: &Path) -> PathBuf {
    let lock_path = profile_dir().join("host-tests-build.lock");
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap();
    let mut lock = fd_lock::RwLock::new(lock_file);
    let _guard = lock.write().expect("build lock");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(workspace_root())
        .args(["build", "--quiet", "--workspace", "--lib"]);
    if profile_dir().ends_with("release") {
        build.arg("--release");
    }
    match banner {
        Some(b) => build.env("HELLO_HTTP_BANNER", b),
        None => build.env_remove("HELLO_HTTP_BANNER"),
    };
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "cargo build of the plugins failed");
    let built = profile_dir().join(format!("lib{}.so", name.replace('-', "_")));
    copy_atomically(&built, dest);
    dest.to_owned()
}

/// Copies a file so that a reader never sees half of it (copy, then rename),
/// as a rebuilt plugin appears.
pub fn copy_atomically(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp");
    fs::copy(from, &tmp)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), tmp.display()));
    fs::rename(&tmp, to).unwrap();
}

/// A test's private directory.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("host-test-")
        .tempdir()
        .unwrap()
}

/// Polls `f` every 5 ms until it returns `Some`, or panics after `timeout`
/// naming `what`.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Like [`eventually`], for a condition that can say why it does not hold
/// yet: polls `f` every 5 ms until it returns `Ok`, or panics after
/// `timeout` naming `what` and the last reason.
pub fn eventually_ok<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let why = match f() {
            Ok(value) => return value,
            Err(why) => why,
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last: {why}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Checks that `f` holds, every 5 ms, for `duration` (a state that must
/// last, not one seen in passing); panics naming `what` and the reason at
/// the first check that fails.
pub fn holds_for(what: &str, duration: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let end = Instant::now() + duration;
    loop {
        if let Err(why) = f() {
            panic!("{what} stopped holding: {why}");
        }
        if Instant::now() >= end {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until `pid` is gone (a zombie counts as gone), naming `what`.
pub fn wait_gone(what: &str, pid: u32, timeout: Duration) {
    eventually(&format!("{what} (pid {pid}) to exit"), timeout, || {
        (!alive(pid)).then_some(())
    });
}

/// Whether `pid` is a live process (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => !status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(_) => false,
    }
}

pub fn signal(pid: u32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

/// The variable that tags every process of one test host.
pub const TAG_VAR: &str = "HOST_TEST_INSTANCE";

/// A running `host` supervisor started by a test.
pub struct Host {
    pub child: Child,
    pub log: PathBuf,
    pub exit: Option<ExitStatus>,
    /// The value of [`TAG_VAR`] in the environment of every process of this host.
    tag: String,
    /// The first generation's supervisor, once looked up.
    first_supervisor: std::sync::OnceLock<u32>,
    /// `--pid-file`, if given.
    pid_file: Option<PathBuf>,
}

/// Starts `host ARGS` with its stderr in `dir/host-N.log`, at the default
/// log level, tagged (see the module docs).
pub fn start_host(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Host {
    start_host_from(&host_bin(), dir, args, env)
}

/// [`start_host`], from a given copy of the host binary.
pub fn start_host_from(bin: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Host {
    let id = unique();
    let log = dir.join(format!("host-{id}.log"));
    let mut command = Command::new(bin);
    command
        .args(args)
        .env(TAG_VAR, &id)
        // Not from the environment the tests run in: the default level,
        // and no service manager to notify, unless a test says otherwise.
        .env_remove("HOST_LOG")
        .env_remove("NOTIFY_SOCKET");
    if let Some(level) = std::env::var_os("HOST_TEST_LOG") {
        command.env("HOST_LOG", level);
    }
    let child = command
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("start host");
    Host {
        child,
        log,
        exit: None,
        tag: id,
        first_supervisor: std::sync::OnceLock::new(),
        pid_file: args
            .iter()
            .position(|a| *a == "--pid-file")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from),
    }
}

/// Unique across the tests of all test processes running at once: the pid of
/// this process, a counter, and the time.
fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The live processes (zombies excluded) whose environment holds
/// `TAG_VAR=tag`, in pid order.
fn tagged_processes(tag: &str) -> Vec<u32> {
    let wanted = format!("{TAG_VAR}={tag}");
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| {
            // Unreadable (not ours, or gone meanwhile) means not ours.
            fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|&b| b == 0)
                    .any(|var| var == wanted.as_bytes())
            })
        })
        .filter(|&pid| alive(pid))
        .collect();
    pids.sort_unstable();
    pids
}

/// The children of `pid`, zombies included.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            fs::read_to_string(format!("/proc/{child}/status")).is_ok_and(|status| {
                status.lines().any(|l| {
                    l.strip_prefix("PPid:")
                        .is_some_and(|p| p.trim() == pid.to_string())
                })
            })
        })
        .collect()
}

/// Whether `pid` is a supervisor's standby for the next reload: a batch
/// job (SCHED_BATCH, `/proc/PID/stat` field 41) from just after its fork
/// until it is started, named `host-standby` once it runs; not the worker
/// it prepared (see [`prepared_worker`]), which is a batch job too.
pub fn standby(pid: u32) -> bool {
    waits_for_a_reload(pid) && !parent(pid).is_some_and(waits_for_a_reload)
}

/// Whether `pid` is the worker a standby forked ahead of the reload, for
/// the next generation's first slot.
pub fn prepared_worker(pid: u32) -> bool {
    parent(pid).is_some_and(standby)
}

/// A standby, or the worker it prepared: a batch job, or `host-standby`.
fn waits_for_a_reload(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let Some((comm, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") "))
        else {
            return false;
        };
        // Fields from the 3rd (state) on; the policy is the 41st.
        comm == "host-standby" || rest.split_whitespace().nth(41 - 3) == Some("3")
    })
}

/// The live standbys among the children of `pid` (see [`standby`]).
pub fn standbys(pid: u32) -> Vec<u32> {
    children(pid)
        .into_iter()
        .filter(|&c| alive(c) && standby(c))
        .collect()
}

/// The file `name` (`stat`, `status`, ...) of each thread of `pid`, as
/// text: one entry per thread (none once the process is gone).
pub fn thread_files(pid: u32, name: &str) -> Vec<String> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join(name)).ok())
        .collect()
}

/// The name the kernel shows for `pid` (`/proc/PID/comm`).
pub fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_owned())
}

/// Whether `pid` is a zombie (exited, not reaped yet).
pub fn zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
        status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}

impl Host {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a log line containing `needle`, and returns it.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        eventually(&format!("log line containing {needle:?}"), timeout, || {
            self.log_text()
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_owned)
        })
    }

    /// Waits for the `n`th (1-based) log line containing `needle`.
    pub fn wait_for_nth_log(&self, needle: &str, n: usize, timeout: Duration) -> String {
        eventually(
            &format!("{n} log lines containing {needle:?}"),
            timeout,
            || {
                self.log_text()
                    .lines()
                    .filter(|l| l.contains(needle))
                    .nth(n - 1)
                    .map(str::to_owned)
            },
        )
    }

    /// The first listening address the host logged.
    pub fn listen_addr(&self) -> SocketAddr {
        let line = self.wait_for_log("listening on ", Duration::from_secs(10));
        let addr = line
            .split("listening on ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        addr.parse().unwrap()
    }

    /// Waits until the first generation serves.
    pub fn wait_serving(&self) {
        self.wait_for_log("serving, started in", Duration::from_secs(20));
        let supervisor = self.supervisor();
        // The line is logged as the generation serves, just before it
        // writes the files that `host reload` and `host status` read.
        if let Some(pid_file) = &self.pid_file {
            eventually(
                "the status file to say serving",
                Duration::from_secs(20),
                || read_status(pid_file).filter(|s| s.serving(supervisor, 1)),
            );
        }
    }

    /// The first generation's supervisor: the child the anchor (the process
    /// the test started, [`Host::pid`]) started first. Look it up before a
    /// reload ([`Host::wait_serving`] does), while it is the only child.
    pub fn supervisor(&self) -> u32 {
        *self.first_supervisor.get_or_init(|| {
            eventually(
                "the anchor to start a supervisor",
                Duration::from_secs(20),
                || children(self.pid()).into_iter().min(),
            )
        })
    }

    /// Waits for the supervisor to exit and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        let status = eventually("the host to exit", timeout, || {
            self.child.try_wait().unwrap()
        });
        self.exit = Some(status);
        status
    }

    /// The live processes of this host (zombies excluded): the supervisor
    /// the test started, its workers, the generations it started and their
    /// workers, and any process these forked.
    pub fn processes(&self) -> Vec<u32> {
        tagged_processes(&self.tag)
    }

    /// [`Host::processes`] but the standby for the next reload, if the
    /// supervisor in charge has one, and the worker it prepared (see
    /// [`standby`]).
    pub fn serving_processes(&self) -> Vec<u32> {
        let mut p = self.processes();
        p.retain(|&p| !standby(p) && !prepared_worker(p));
        p
    }

    /// The value of [`TAG_VAR`] this host's processes carry.
    pub fn tag(&self) -> &str {
        &self.tag
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The test failed: its output is shown, with the host's story.
            eprintln!(
                "---- log of the host started as pid {} ({}) ----\n{}----",
                self.pid(),
                self.log.display(),
                self.log_text()
            );
        }
        kill_tagged(&self.tag);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills (SIGKILL) every live process whose environment holds
/// `TAG_VAR=tag`, again until none is left (a supervisor may fork between
/// the scan and its kill), for at most 10 s. The tag is unique, so only the
/// processes of one test host are hit: also those the test holds no
/// [`Child`] for, such as a daemon (`--daemonize`) or the processes in a
/// pid namespace.
pub fn kill_tagged(tag: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = tagged_processes(tag);
        if pids.is_empty() || Instant::now() >= deadline {
            break;
        }
        for pid in pids {
            signal(pid, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Kills every process tagged `tag` when dropped (see [`kill_tagged`]):
/// cleanup for processes started without [`start_host`].
pub struct KillTaggedOnDrop(pub String);

impl Drop for KillTaggedOnDrop {
    fn drop(&mut self) {
        kill_tagged(&self.0);
    }
}

/// Runs `host ARGS` to completion (with a deadline); returns its exit
/// status and stderr.
pub fn run_host(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> (ExitStatus, String) {
    let dir = temp_dir();
    let mut host = start_host(dir.path(), args, env);
    let status = host.wait_exit(timeout);
    (status, host.log_text())
}

/// `GET /` over a new connection; returns the body of a `200 OK` reply.
pub fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    http_get_within(addr, Duration::from_secs(5))
}

/// [`http_get`], with `timeout` for the connect, the write and each read
/// (long enough, under load, for a request that waits in the backlog while
/// no generation accepts).
pub fn http_get_within(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let mut conn = TcpStream::connect_timeout(&addr, timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("short reply: {reply:?}"),
        )
    })?;
    if !head.starts_with("HTTP/1.1 200 OK") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not 200: {head:?}"),
        ));
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(usize::MAX);
    if body.len() != length {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("short body: {body:?}"),
        ));
    }
    Ok(body.to_owned())
}

/// Parses `hello-http <version> gen=<g> pid=<p>` from a hello-http body.
pub fn identity(body: &str) -> (u64, u32) {
    let last = body.lines().last().unwrap_or_default();
    let field = |key: &str| {
        last.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
    };
    match (field("gen="), field("pid=")) {
        (Some(g), Some(p)) => (g, p as u32),
        _ => panic!("no identity line in {body:?}"),
    }
}

/// Lines of a file (empty if it does not exist yet).
pub fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The pids that appear as `tick pid=N` in a ticker file.
pub fn tick_pids(path: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for line in lines(path) {
        if let Some(pid) = line
            .strip_prefix("tick pid=")
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
        {
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Runs `host ARGS` (a control command) to completion with a deadline;
/// returns its exit status, stdout and stderr. Kills it if it overruns.
pub fn host_command(args: &[&str], timeout: Duration) -> (ExitStatus, String, String) {
    let dir = temp_dir();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let child = Command::new(host_bin())
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .expect("start host command");
    // Killed and reaped if the deadline passes (the panic drops it).
    struct Reaped(Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let mut child = Reaped(child);
    let status = eventually(&format!("host {args:?} to finish"), timeout, || {
        child.0.try_wait().unwrap()
    });
    (
        status,
        fs::read_to_string(out).unwrap(),
        fs::read_to_string(err).unwrap(),
    )
}

/// The pid a pid file names.
pub fn pid_in(pid_file: &Path) -> Option<u32> {
    fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// What the status file beside a pid file (`FILE.status`) says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusFile {
    pub pid: u32,
    pub generation: u64,
    /// `starting`, `serving`, `reloading` or `stopping`.
    pub state: String,
    pub reloads: u64,
    pub last_reload: String,
}

impl StatusFile {
    /// Whether it says that `pid`, of `generation`, serves.
    pub fn serving(&self, pid: u32, generation: u64) -> bool {
        self.pid == pid && self.generation == generation && self.state == "serving"
    }
}

/// Reads `FILE.status` for the pid file `pid_file`; `None` if it is missing
/// or does not parse.
pub fn read_status(pid_file: &Path) -> Option<StatusFile> {
    let mut path = pid_file.as_os_str().to_owned();
    path.push(".status");
    let text = fs::read_to_string(path).ok()?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    };
    Some(StatusFile {
        pid: field("pid")?.parse().ok()?,
        generation: field("generation")?.parse().ok()?,
        state: field("state")?.to_owned(),
        reloads: field("reloads")?.parse().ok()?,
        last_reload: field("last_reload")?.to_owned(),
    })
}

/// One `key=value` field of `FILE.status` for the pid file `pid_file`
/// (such as `anchor` or `listen`, which [`StatusFile`] leaves out).
pub fn status_field(pid_file: &Path, key: &str) -> Option<String> {
    let mut path = pid_file.as_os_str().to_owned();
    path.push(".status");
    let text = fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
}

/// The parent of `pid` (`PPid` in its status), if it lives.
pub fn parent(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// Whether `host status --pid-file FILE` says a host runs (exits 0).
pub fn host_runs_on(pid_file: &Path) -> bool {
    let (status, _, _) = host_command(
        &["status", "--pid-file", pid_file.to_str().unwrap()],
        Duration::from_secs(10),
    );
    status.success()
}

/// A host serving `plugin` on a fresh port, with a pid file.
pub struct Served {
    pub host: Host,
    pub pid_file: PathBuf,
    pub addr: SocketAddr,
}

/// Starts `plugin` with `--listen 127.0.0.1:0 --pid-file dir/<stem>.pid`,
/// the host flags `extra` and the environment `env`, and waits until it
/// serves.
pub fn serve_plugin(dir: &Path, plugin: &Path, extra: &[&str], env: &[(&str, &str)]) -> Served {
    let stem = plugin.file_stem().unwrap().to_string_lossy().into_owned();
    let pid_file = dir.join(format!("{stem}.pid"));
    let mut args = vec![
        "--plugin",
        plugin.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--pid-file",
        pid_file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let host = start_host(dir, &args, env);
    host.wait_serving();
    let addr = host.listen_addr();
    Served {
        host,
        pid_file,
        addr,
    }
}

/// A host running the test-only `faulty` plugin.
pub struct Faulty {
    pub host: Host,
    /// The file `faulty` reads its mode from (rewrite it before a reload).
    pub mode: PathBuf,
    /// The file `faulty` appends its start and shutdown events to.
    pub events: PathBuf,
}

/// Starts `faulty` in `mode`, with `extra` host arguments and environment
/// `env`, and waits until the host serves.
pub fn start_faulty(dir: &Path, mode: &str, extra: &[&str], env: &[(&str, &str)]) -> Faulty {
    let plugin = build_plugin("faulty", None, &dir.join("libfaulty.so"));
    let mode_file = dir.join("mode");
    fs::write(&mode_file, mode).unwrap();
    let mut args = vec!["--plugin", plugin.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut env = env.to_vec();
    env.push(("FAULTY_MODE_FILE", mode_file.to_str().unwrap()));
    let host = start_host(dir, &args, &env);
    host.wait_serving();
    Faulty {
        host,
        events: dir.join("mode.events"),
        mode: mode_file,
    }
}

/// One line of `faulty`'s events file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultyEvent {
    /// `start`, `shutdown`, `ready`, `stopping`, ...
    pub what: String,
    pub mode: String,
    pub pid: u32,
    pub generation: u64,
}

/// The events in a `faulty` events file, in order (lines that do not parse,
/// such as `ping ns=...`, are left out).
pub fn faulty_events(events: &Path) -> Vec<FaultyEvent> {
    lines(events)
        .iter()
        .filter_map(|l| {
            let mut words = l.split(' ');
            let what = words.next()?.to_owned();
            let mut field = |key: &str| words.next()?.strip_prefix(key).map(str::to_owned);
            Some(FaultyEvent {
                what,
                mode: field("mode=")?,
                pid: field("pid=")?.parse().ok()?,
                generation: field("gen=")?.parse().ok()?,
            })
        })
        .collect()
}

/// The pids of the `faulty` workers of `generation` that recorded `what`, in order.
pub fn faulty_event_pids(events: &Path, what: &str, generation: u64) -> Vec<u32> {
    faulty_events(events)
        .into_iter()
        .filter(|e| e.what == what && e.generation == generation)
        .map(|e| e.pid)
        .collect()
}

/// The worker pids in `faulty` event lines that contain `filter`, in order.
pub fn faulty_pids(events: &Path, filter: &str) -> Vec<u32> {
    lines(events)
        .iter()
        .filter(|l| l.contains(filter))
        .filter_map(|l| l.split("pid=").nth(1)?.split(' ').next()?.parse().ok())
        .collect()
}

/// Host arguments that run `ticker` (built into `dir`) with the host flags
/// `extra`, ticking into `dir/ticks.log`.
pub fn ticker_args(dir: &Path, extra: &[&str]) -> Vec<String> {
    let plugin = build_plugin("ticker", None, &dir.join("libticker.so"));
    let ticks = dir.join("ticks.log");
    let mut args = vec!["--plugin".to_owned(), plugin.to_string_lossy().into_owned()];
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend(["--".to_owned(), ticks.to_string_lossy().into_owned()]);
    args
}

/// Starts `host` from `bin` with [`ticker_args`]; returns it and the tick file.
pub fn start_ticker_from(bin: &Path, dir: &Path, extra: &[&str]) -> (Host, PathBuf) {
    let args = ticker_args(dir, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (start_host_from(bin, dir, &args, &[]), dir.join("ticks.log"))
}

/// [`start_ticker_from`] the host binary cargo built.
pub fn start_ticker(dir: &Path, extra: &[&str]) -> (Host, PathBuf) {
    start_ticker_from(&host_bin(), dir, extra)
}

/// Builds the binary of the workspace package `package` (a dev-only peer
/// program such as `ecdysis-hello`) in the profile of these tests and
/// returns its path. Serialised with [`build_plugin`] by the same file lock.
pub fn build_binary(package: &str) -> PathBuf {
    let lock_path = profile_dir().join("host-tests-build.lock");
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap();
    let mut lock = fd_lock::RwLock::new(lock_file);
    let _guard = lock.write().expect("build lock");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(workspace_root())
        .args(["build", "--quiet", "--bins", "-p", package]);
    if profile_dir().ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "cargo build -p {package} failed");
    profile_dir().join(package)
}

/// The live processes (zombies excluded) whose environment holds
/// `TAG_VAR=tag`: the processes of something a test started with that tag
/// itself, without [`start_host`].
pub fn tagged_pids(tag: &str) -> Vec<u32> {
    tagged_processes(tag)
}
