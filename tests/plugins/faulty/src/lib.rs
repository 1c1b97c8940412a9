//! Test-only: a plugin that misbehaves on request, to drive the host's
//! failure paths. It reads its mode, when it is built, from the file named
//! by the environment variable `FAULTY_MODE_FILE` (a test rewrites that file
//! between generations, since a reload keeps the arguments and environment):
//!
//! - `serve` (also: no variable, no file): loop until told to stop;
//! - `no-hot-reload`: the same, but `can_do_hot_reload()` is false;
//! - `no-hot-reload-no-ready`: the same, and it never calls
//!   `ready_to_take_over` either (as a plugin that never reloads may not);
//! - `error-in-new` / `panic-in-new`: the constructor fails / panics;
//! - `panic-in-run`: `supervised_process` panics after `ready_to_take_over`;
//! - `exit-in-run`: the worker process exits with status 7;
//! - `garbage-to-supervisor`: after `ready_to_take_over`, writes a frame of
//!   garbage on its channel to the supervisor (the one SEQPACKET socket it
//!   holds), then serves;
//! - `setsid-fork-and-exit`: like `fork-and-exit`, but the child first
//!   leaves the worker's session and process group (`setsid`);
//! - `state`: serves; a worker stopped for a reload hands over
//!   `state-of-pid-<its pid>`, and every worker records what it inherited
//!   as `inherited <state> by pid=<pid> gen=<g>`;
//! - `fork-and-exit`: the worker forks a child that sleeps forever (holding
//!   every descriptor the worker had, the listening sockets too), records it
//!   as a `child pid=N` event, then exits with status 7;
//! - `hang-before-ready`: never calls `ready_to_take_over` (but stops when asked);
//! - `ignore-stop`: never returns from `supervised_process`;
//! - `ping-cost`: times 10 million `ping_supervisor` calls, records the cost
//!   of one as a `ping ns=...` event, then serves;
//! - `slow-ready`: sleeps 300 ms after its `start` event, then records a
//!   `ready` event, then calls `ready_to_take_over` and serves (a window in
//!   which a test can act between a new worker's start and its readiness);
//! - `slow-shutdown`: serves; once told to stop, `supervised_shutdown`
//!   records a `stopping` event, sleeps 1.5 s, then records its `shutdown`
//!   event (a worker that is still draining while a test acts);
//! - `http`: like `serve`, but answers HTTP on the host's `--listen` sockets
//!   (fails before `ready_to_take_over` without one) the way `hello-http`
//!   does: every request gets `200 OK`, `Connection: close`, and a body
//!   whose last line is `faulty <mode> gen=<g> pid=<p>`, so that a test
//!   under load can tell which generation and worker answered;
//! - `http-slow-ready`, `http-slow-shutdown`: `slow-ready`, `slow-shutdown`,
//!   answering HTTP as `http` does (a test that kills a process at a chosen
//!   step of a reload, and counts the requests that fail).
//!
//! Every start and every shutdown (and the events above) appends a line to
//! `FAULTY_MODE_FILE.events`:
//!
//! ```text
//! start mode=serve pid=4242 gen=1 leaked_vars=0
//! ```
//!
//! with what happened, the mode, the worker's pid and generation, and how
//! many of the supervisor's own variables (`HOST_INHERIT_*`, `NOTIFY_SOCKET`)
//! the worker can see (there should be none).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use plugin_api::{export_plugin, StopReason, SupervisedProcess, Supervisor};

struct Faulty {
    /// The mode as written in the mode file (events record it).
    mode: String,
    /// The mode without its `http-` prefix (`http` alone is `serve`): what
    /// the worker does besides answering HTTP.
    base: String,
    /// Whether it answers HTTP (an `http` mode).
    http: bool,
    events: Option<String>,
    generation: u64,
}

impl Faulty {
    fn new(_args: Vec<String>) -> Result<Self, String> {
        let file = std::env::var("FAULTY_MODE_FILE").ok();
        let mode = file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "serve".to_owned());
        let (http, base) = match mode.as_str() {
            "http" => (true, "serve".to_owned()),
            m => match m.strip_prefix("http-") {
                Some(base) => (true, base.to_owned()),
                None => (false, m.to_owned()),
            },
        };
        let faulty = Faulty {
            mode,
            base,
            http,
            events: file.map(|f| format!("{f}.events")),
            generation: 0,
        };
        match faulty.base.as_str() {
            "error-in-new" => Err("told to fail (mode error-in-new)".to_owned()),
            "panic-in-new" => panic!("told to panic (mode panic-in-new)"),
            _ => Ok(faulty),
        }
    }

    fn event(&self, what: &str, generation: u64) {
        let leaked = std::env::vars_os()
            .filter(|(k, _)| {
                k.to_string_lossy().starts_with("HOST_INHERIT_") || k == "NOTIFY_SOCKET"
            })
            .count();
        let Some(path) = &self.events else { return };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let (mode, pid) = (&self.mode, std::process::id());
            // One write per line: the workers of a host append at once, and
            // `writeln!` on a `File` may write a line in pieces.
            let line =
                format!("{what} mode={mode} pid={pid} gen={generation} leaked_vars={leaked}\n");
            let _ = f.write_all(line.as_bytes());
        }
    }
}

impl SupervisedProcess for Faulty {
    fn supervised_process(&mut self, sup: &Supervisor) -> Result<(), String> {
        self.generation = sup.generation();
        self.event("start", self.generation);
        let listeners = match self.http {
            true => Some(http_listeners(sup)?),
            false => None,
        };
        if self.base == "slow-ready" {
            std::thread::sleep(Duration::from_millis(300));
            self.event("ready", self.generation);
        }
        if !matches!(
            self.base.as_str(),
            "hang-before-ready" | "no-hot-reload-no-ready"
        ) {
            sup.ready_to_take_over()?;
        }
        match self.base.as_str() {
            "panic-in-run" => panic!("told to panic (mode panic-in-run)"),
            "exit-in-run" => std::process::exit(7),
            "garbage-to-supervisor" => {
                for fd in 3..256 {
                    let mut kind: libc::c_int = 0;
                    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                    // SAFETY: getsockopt writes at most `len` bytes into `kind`,
                    // a local of that size; any fd number is safe to ask about.
                    let ok = unsafe {
                        libc::getsockopt(
                            fd,
                            libc::SOL_SOCKET,
                            libc::SO_TYPE,
                            (&mut kind as *mut libc::c_int).cast(),
                            &mut len,
                        )
                    } == 0;
                    if ok && kind == libc::SOCK_SEQPACKET {
                        let garbage = b"\x7fnot a message";
                        // SAFETY: sends from a live buffer of the given length.
                        unsafe { libc::send(fd, garbage.as_ptr().cast(), garbage.len(), 0) };
                        self.event("garbage sent", self.generation);
                    }
                }
            }
            "fork-and-exit" | "setsid-fork-and-exit" => {
                let leave = self.mode == "setsid-fork-and-exit";
                // SAFETY: the child only calls setsid and sleeps (a plain system call) until
                // it is killed; it touches no lock or allocation of the
                // parent's other threads.
                match unsafe { libc::fork() } {
                    0 => loop {
                        if leave {
                            // SAFETY: setsid is a plain system call.
                            unsafe { libc::setsid() };
                        }
                        // SAFETY: pause() only waits for a signal.
                        unsafe { libc::pause() };
                    },
                    child => {
                        // Exit only once the child has left, so the host
                        // sees a descendant outside the worker's group.
                        // SAFETY: getsid only reads a process attribute.
                        while leave && unsafe { libc::getsid(child) == libc::getsid(0) } {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        self.event(&format!("child pid={child}"), self.generation);
                        std::process::exit(7)
                    }
                }
            }
            "ping-cost" => {
                const CALLS: u32 = 10_000_000;
                let started = std::time::Instant::now();
                let alive = (0..CALLS).filter(|_| sup.ping_supervisor()).count();
                let ns = started.elapsed().as_secs_f64() * 1e9 / f64::from(CALLS);
                self.event(&format!("ping ns={ns:.2} alive={alive}"), self.generation);
            }
            "ignore-stop" => loop {
                std::thread::sleep(Duration::from_millis(5));
            },
            _ => {}
        }
        if let Some(listeners) = listeners {
            let body = format!(
                "faulty\nfaulty {} gen={} pid={}\n",
                self.mode,
                self.generation,
                std::process::id()
            );
            // Until told to stop: what waits then stays queued for the next
            // generation.
            while let Some((conn, _)) = sup
                .accept(&listeners)
                .map_err(|e| format!("accept failed: {e}"))?
            {
                let _ = answer(conn, &body);
            }
            return Ok(());
        }
        if self.mode == "state" {
            // What the previous worker of this slot handed over, if any.
            let (sup2, events) = (sup.clone(), self.events.clone());
            let generation = self.generation;
            std::thread::spawn(move || {
                if let (Some(state), Some(path)) =
                    (sup2.inherited_state(Duration::from_secs(10)), events)
                {
                    let line = format!(
                        "inherited {} by pid={} gen={generation}\n",
                        String::from_utf8_lossy(&state),
                        std::process::id()
                    );
                    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) {
                        let _ = f.write_all(line.as_bytes());
                    }
                }
            });
        }
        while sup.ping_supervisor() {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.mode == "state" && sup.stop_reason() == Some(StopReason::Reload) {
            let state = format!("state-of-pid-{}", std::process::id());
            sup.hand_over_state(state.as_bytes())?;
        }
        Ok(())
    }

    fn supervised_shutdown(&mut self) {
        if self.base == "slow-shutdown" {
            self.event("stopping", self.generation);
            std::thread::sleep(Duration::from_millis(1500));
        }
        self.event("shutdown", self.generation);
    }

    fn can_do_hot_reload(&self) -> bool {
        !matches!(
            self.base.as_str(),
            "no-hot-reload" | "no-hot-reload-no-ready"
        )
    }
}

/// The host's listening sockets, for an `http` mode: at least one.
fn http_listeners(sup: &Supervisor) -> Result<Vec<TcpListener>, String> {
    let listeners = sup
        .listeners()
        .map_err(|e| format!("cannot use the host's listeners: {e}"))?;
    match listeners.is_empty() {
        true => Err("an http mode needs a socket: start the host with --listen".to_owned()),
        false => Ok(listeners),
    }
}

/// Reads a request head (up to the blank line) and answers `200 OK` with `body`.
fn answer(mut conn: TcpStream, body: &str) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let (mut head, mut buf) = (Vec::new(), [0u8; 4096]);
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 || head.len() > 16 * 1024 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(reply.as_bytes())
}

export_plugin!(Faulty::new);
