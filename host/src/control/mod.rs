//! `host reload | status | stop`: control a running host through its pid
//! file (whose lock says whether it runs) and status file (what it does).
//! A command acts only on a process proven to be the host of that pid file
//! (see `checked`), and otherwise refuses, signalling nothing.

mod checked;

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::cli::Command;
use crate::error::Error;
use crate::pidfile::{self, Holder};
use crate::status::{self, State};

use checked::{checked_host, Host};

/// How often a waiting command looks again.
const POLL: Duration = Duration::from_millis(5);

pub fn run(command: Command) -> Result<(), Error> {
    match command {
        Command::Reload { pid_file, timeout } => reload(&pid_file, timeout),
        Command::Status { pid_file } => show_status(&pid_file),
        Command::Stop { pid_file, timeout } => stop(&pid_file, timeout),
    }
}

/// Hot-reloads the host running on `pid_file` and waits for the outcome.
pub fn reload(pid_file: &Path, timeout: Duration) -> Result<(), Error> {
    let host = checked_host(pid_file)?;
    let old = host.pid;
    let before = host.status;
    if before.pid != old {
        return Err(Error::Control(format!(
            "pid {old} cannot reload now: it is starting"
        )));
    }
    let status_path = status::path_for(pid_file);
    match before.state {
        State::Serving => {}
        State::Reloading => {
            return Err(Error::Control(format!(
                "pid {old} is already reloading; wait for it"
            )))
        }
        other => {
            return Err(Error::Control(
                format!("pid {old} cannot reload now: it is {other:?}").to_lowercase(),
            ))
        }
    }
    host.process.signal(Signal::SIGUSR2)?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        std::thread::sleep(POLL);
        match pidfile::holder(pid_file) {
            Ok(Holder::Running(Some(pid))) if pid != old => {
                if let Some(now) = status::read(&status_path).filter(|s| s.pid == pid) {
                    println!(
                        "reloaded: generation {} is serving as pid {pid} (was pid {old})",
                        now.generation
                    );
                    return Ok(());
                }
            }
            Ok(Holder::NotRunning) => {
                return Err(Error::Control(format!(
                    "the host (pid {old}) exited during the reload"
                )));
            }
            _ => {}
        }
        if let Some(now) = status::read(&status_path).filter(|s| s.pid == old) {
            // The old supervisor writes the outcome only when it stays in
            // charge: the reload failed or was ignored.
            if now.reloads > before.reloads && now.state != State::Reloading {
                return Err(Error::Control(format!("reload {}", now.last_reload)));
            }
        }
    }
    Err(Error::Control(format!(
        "no outcome from pid {old} within {timeout:?}; see its log"
    )))
}

fn show_status(pid_file: &Path) -> Result<(), Error> {
    let Host { pid, status: s, .. } = checked_host(pid_file)?;
    if s.pid != pid {
        println!(
            "starting: anchor pid {pid}, generation {} starting as pid {}",
            s.generation, s.pid
        );
        return Ok(());
    }
    let state = format!("{:?}", s.state).to_lowercase();
    let listen = if s.listen.is_empty() {
        String::new()
    } else {
        format!(", listening on {}", s.listen.join(" "))
    };
    let last = if s.last_reload.is_empty() {
        String::new()
    } else {
        format!(", last reload: {}", s.last_reload)
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let up = now.saturating_sub(s.anchor_since);
    let looping = match s.crash_looping {
        0 => String::new(),
        n => format!(", {n} worker slot(s) crash-looping"),
    };
    println!(
        "running: pid {pid}, generation {}, {state}{listen}{last}{looping}; anchor pid {}, up {up}s",
        s.generation, s.anchor
    );
    Ok(())
}

fn stop(pid_file: &Path, timeout: Duration) -> Result<(), Error> {
    let host = checked_host(pid_file)?;
    let pid = host.pid;
    host.process.signal(Signal::SIGTERM)?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match pidfile::holder(pid_file) {
            // Unlocked, or removed by a host that stopped before it served.
            Ok(Holder::NotRunning) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            _ => {
                std::thread::sleep(POLL);
                continue;
            }
        }
        println!("stopped: pid {pid}");
        return Ok(());
    }
    Err(Error::Control(format!(
        "pid {pid} still runs {timeout:?} after SIGTERM; see its log"
    )))
}
