//! Test-only: a plugin that exercises the plugin API on request, for
//! tests/plugin_api.rs. It reads its mode, when it is built, from the file
//! named by `API_PROBE_MODE_FILE`, and appends events to
//! `API_PROBE_MODE_FILE.events`, one line each:
//!
//! - every mode: `start pid=<p> gen=<g> index=<slot> nonblocking=<bool>`
//!   (whether its first listener is non-blocking at start, if it has one);
//! - `serve`: waits on the stop (`StopToken::wait` on a thread of its own,
//!   which holds a clone of the token), then records
//!   `stopped pid=<p> reason=<StopReason> deadline_ms=<ms left or none>`;
//! - `fail`: a thread calls `StopToken::fail("told to fail")` after 100 ms;
//!   the main thread records `stopped` as above when the stop comes;
//! - `thread-panic`: a thread panics ("pool thread told to panic"); the
//!   main thread records `stopped` as above;
//! - `logs`: logs through `tracing` (target `probe_target`, fields, a span
//!   from `#[instrument]`, a message of two lines) and `log`, then serves;
//! - `make-blocking`: turns its copy of the listener blocking (which turns
//!   the shared socket blocking), then fails: the next worker must find it
//!   non-blocking again;
//! - `raw-accept`: accepts with a textbook `TcpListener::accept` and ends
//!   with its error (EAGAIN on the non-blocking socket, when no client waits).

use std::io::Write;
use std::time::{Duration, Instant};

use plugin_api::{export_plugin, log, StopToken, SupervisedProcess, Supervisor};

struct Probe {
    mode: String,
    events: Option<String>,
}

impl Probe {
    fn new(_args: Vec<String>) -> Result<Self, String> {
        let file = std::env::var("API_PROBE_MODE_FILE").ok();
        let mode = file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .map(|m| m.trim().to_owned())
            .unwrap_or_else(|| "serve".to_owned());
        Ok(Probe {
            mode,
            events: file.map(|f| format!("{f}.events")),
        })
    }

    fn event(&self, line: &str) {
        if let Some(path) = &self.events {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = f.write_all(format!("{line}\n").as_bytes());
            }
        }
    }

    fn record_stop(&self, stop: &StopToken) {
        let stopped_at = Instant::now();
        let deadline = match stop.deadline() {
            Some(d) => d
                .saturating_duration_since(stopped_at)
                .as_millis()
                .to_string(),
            None => "none".to_owned(),
        };
        let reason = stop.reason().map(|r| format!("{r:?}")).unwrap_or_default();
        self.event(&format!(
            "stopped pid={} reason={reason} deadline_ms={deadline}",
            std::process::id()
        ));
    }
}

#[tracing::instrument(fields(answer = 42))]
fn in_a_span(request: u32) {
    tracing::info!(target: "probe_target", user = "ann", "inside the span");
}

fn nonblocking(listener: &std::net::TcpListener) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: F_GETFL takes and returns integers, on a descriptor we hold.
    let flags = unsafe { libc_fcntl_getfl(listener.as_raw_fd()) };
    flags & 0o4000 != 0 // O_NONBLOCK on Linux
}

extern "C" {
    #[link_name = "fcntl"]
    fn fcntl(fd: i32, cmd: i32, ...) -> i32;
}

/// `fcntl(fd, F_GETFL)`.
///
/// # Safety
/// Only integers cross: safe for any `fd` (a bad one gives -1).
unsafe fn libc_fcntl_getfl(fd: i32) -> i32 {
    const F_GETFL: i32 = 3;
    // SAFETY: see the function's contract: F_GETFL takes no pointer.
    unsafe { fcntl(fd, F_GETFL) }
}

impl SupervisedProcess for Probe {
    fn supervised_process(&mut self, sup: &Supervisor) -> Result<(), String> {
        let listeners = sup.listeners().map_err(|e| e.to_string())?;
        let nb = listeners
            .first()
            .map(|l| nonblocking(l).to_string())
            .unwrap_or_else(|| "none".to_owned());
        self.event(&format!(
            "start pid={} gen={} index={} nonblocking={nb}",
            std::process::id(),
            sup.generation(),
            sup.worker_index()
        ));
        sup.ready_to_take_over()?;
        let stop = sup.stop_token();
        match self.mode.as_str() {
            "fail" => {
                let token = stop.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(100));
                    token.fail("told to fail");
                });
            }
            "thread-panic" => {
                std::thread::Builder::new()
                    .name("pool-1".into())
                    .spawn(|| {
                        std::thread::sleep(Duration::from_millis(100));
                        panic!("pool thread told to panic");
                    })
                    .map_err(|e| e.to_string())?;
            }
            "logs" => {
                tracing::debug!(target: "probe_target", "a debug event for the probe target");
                tracing::debug!(target: "other_target", "a debug event for another target");
                tracing::warn!(target: "probe_target", "two\nlines");
                in_a_span(7);
                log::warn!(target: "probe_log", "a log record n={}", 5);
            }
            "make-blocking" => {
                if let Some(l) = listeners.first() {
                    l.set_nonblocking(false).map_err(|e| e.to_string())?;
                }
                return Err("made the listener blocking".to_owned());
            }
            "raw-accept" => {
                let l = listeners.first().ok_or("no listener")?;
                let (_conn, _peer) = l.accept().map_err(|e| format!("accept failed: {e}"))?;
            }
            _ => {}
        }
        // The stop, waited for on a thread that holds its own token.
        let waiter = {
            let token = stop.clone();
            std::thread::spawn(move || while !token.wait(Duration::from_secs(3600)) {})
        };
        let _ = waiter.join();
        self.record_stop(&stop);
        Ok(())
    }

    fn can_do_hot_reload(&self) -> bool {
        true
    }
}

export_plugin!(Probe::new);
