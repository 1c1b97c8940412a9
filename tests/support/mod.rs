//! Helpers for the integration tests: build and copy plugins, start real
//! `host` processes with their log in a file, wait for conditions with a
//! deadline, talk HTTP, and kill every process a test started (found in the
//! host's debug log, by pid) even when the test fails.
#![allow(dead_code)] // each test file uses a different part

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
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

/// A running `host` supervisor started by a test.
pub struct Host {
    pub child: Child,
    pub log: PathBuf,
    pub exit: Option<ExitStatus>,
    /// The binary it was started from.
    bin: PathBuf,
}

/// Starts `host ARGS` with its stderr in `dir/host-N.log` and debug logging
/// (which names every process it starts, for cleanup).
pub fn start_host(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Host {
    start_host_from(&host_bin(), dir, args, env)
}

/// [`start_host`], from a given copy of the host binary.
pub fn start_host_from(bin: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Host {
    let log = dir.join(format!("host-{}.log", unique()));
    let child = Command::new(bin)
        .args(args)
        .env("HOST_LOG", "debug")
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
        bin: bin.to_owned(),
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
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

    /// Every pid the log names as a supervisor or worker of this host: the
    /// `[gen=G pid=P]` prefixes, and the supervisors' debug lines about the
    /// processes they start.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid()];
        for line in self.log_text().lines() {
            let found = [
                line.split_once("[gen=")
                    .and_then(|(_, rest)| rest.split_once(" pid="))
                    .map(|(_, rest)| rest),
                line.split_once("worker pid ")
                    .filter(|(_, rest)| rest.contains(" started in slot"))
                    .map(|(_, r)| r),
                line.split_once("starting as pid ").map(|(_, rest)| rest),
            ];
            for rest in found.into_iter().flatten() {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                if let Ok(pid) = digits.parse() {
                    if !pids.contains(&pid) {
                        pids.push(pid);
                    }
                }
            }
        }
        pids
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let host = self.bin.to_string_lossy();
        for pid in self.pids() {
            // Only our own processes: a pid in the log may have been reused.
            let ours = fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmd| String::from_utf8_lossy(&cmd).contains(host.as_ref()))
                .unwrap_or(false);
            if ours {
                signal(pid, Signal::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
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
/// returns its exit status, stdout and stderr.
pub fn host_command(args: &[&str], timeout: Duration) -> (ExitStatus, String, String) {
    let dir = temp_dir();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new(host_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .expect("start host command");
    let status = eventually(&format!("host {args:?} to finish"), timeout, || {
        child.try_wait().unwrap()
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
