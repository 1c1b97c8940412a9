//! `host reload | status | stop`: control a running host through its pid
//! file (whose lock says whether it runs) and status file (what it does).

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cli::Command;
use crate::error::Error;
use crate::pidfile::{self, Holder};
use crate::status::{self, State};

/// How often a waiting command looks again.
const POLL: Duration = Duration::from_millis(5);

pub fn run(command: Command) -> Result<(), Error> {
    match command {
        Command::Reload { pid_file, timeout } => reload(&pid_file, timeout),
        Command::Status { pid_file } => show_status(&pid_file),
        Command::Stop { pid_file, timeout } => stop(&pid_file, timeout),
    }
}

/// The pid of the host that holds `pid_file`, or an error saying why there is none.
fn running_pid(pid_file: &Path) -> Result<u32, Error> {
    let shown = pid_file.display();
    match pidfile::holder(pid_file) {
        Ok(Holder::Running(Some(pid))) => Ok(pid),
        Ok(Holder::Running(None)) => Err(Error::Control(format!(
            "pid file {shown}: locked, but holds no pid yet (the host is starting; try again)"
        ))),
        Ok(Holder::NotRunning) => Err(Error::Control(format!(
            "pid file {shown}: no host is running (the file is stale); start one with `host --plugin ... --pid-file {shown}`"
        ))),
        Err(e) => Err(Error::Control(format!("pid file {shown}: {e} (is the path right?)"))),
    }
}

fn signal(pid: u32, sig: Signal) -> Result<(), Error> {
    let target =
        i32::try_from(pid).map_err(|_| Error::Control(format!("pid {pid} is out of range")))?;
    kill(Pid::from_raw(target), sig)
        .map_err(|e| Error::Control(format!("cannot send {sig} to pid {pid}: {e}")))
}

/// Hot-reloads the host running on `pid_file` and waits for the outcome.
pub fn reload(pid_file: &Path, timeout: Duration) -> Result<(), Error> {
    let old = running_pid(pid_file)?;
    let status_path = status::path_for(pid_file);
    let before = status::read(&status_path)
        .filter(|s| s.pid == old)
        .ok_or_else(|| {
            Error::Control(format!(
                "{}: missing or not written by pid {old}",
                status_path.display()
            ))
        })?;
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
    signal(old, Signal::SIGUSR2)?;
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
    let pid = running_pid(pid_file)?;
    let status = status::read(&status::path_for(pid_file)).filter(|s| s.pid == pid);
    match status {
        Some(s) => {
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
        }
        None => println!("running: pid {pid}"),
    }
    Ok(())
}

fn stop(pid_file: &Path, timeout: Duration) -> Result<(), Error> {
    let pid = running_pid(pid_file)?;
    signal(pid, Signal::SIGTERM)?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Holder::NotRunning) = pidfile::holder(pid_file) {
            println!("stopped: pid {pid}");
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
    Err(Error::Control(format!(
        "pid {pid} still runs {timeout:?} after SIGTERM; see its log"
    )))
}
