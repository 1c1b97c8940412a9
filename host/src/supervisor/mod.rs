//! The supervisor: one thread, one poll loop. `lifecycle` decides what to do;
//! this module sets a generation up (`mod.rs`), turns file descriptors,
//! signals, child exits and timers into events (`runtime`), and performs the
//! effects the lifecycle returns (`effects`, forking workers in `pool`,
//! writing the status file and telling systemd in `report`).
//!
//! The hot-reload protocol it runs is described in the crate docs (`main.rs`),
//! step by step.

mod effects;
mod pool;
mod report;
mod runtime;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::channel::NewToOld;
use crate::cli::RunArgs;
use crate::control;
use crate::error::Error;
use crate::lifecycle::{Machine, Timing};
use crate::listeners::Listeners;
use crate::logging::{self, Role};
use crate::pidfile::PidFile;
use crate::reload::{Inherited, InheritedEnv};
use crate::signals;
use crate::snapshot::Snapshot;

use runtime::Runtime;

/// How the supervisor was asked to run.
pub struct Config {
    pub plugin: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub listen: Vec<SocketAddr>,
    pub workers: usize,
    pub respawn_delay: Duration,
    pub shutdown_timeout: Duration,
    pub reload_timeout: Duration,
    /// Reload a host already running on the pid file instead of failing.
    pub reload_if_running: bool,
    pub plugin_args: Vec<String>,
    /// The host binary, resolved at start: a reload execs this path, so a
    /// rebuilt host is picked up too.
    pub exe: PathBuf,
    /// The original command line, for the next generation.
    pub args: Vec<OsString>,
}

impl Config {
    fn timing(&self) -> Timing {
        Timing {
            respawn_delay: self.respawn_delay,
            shutdown_timeout: self.shutdown_timeout,
            reload_timeout: self.reload_timeout,
        }
    }

    pub fn from_args(run: RunArgs) -> Result<Config, Error> {
        Ok(Config {
            plugin: run
                .plugin
                .ok_or_else(|| Error::Control("--plugin PATH is required".into()))?,
            pid_file: run.pid_file,
            listen: run.listen,
            workers: usize::from(run.workers),
            respawn_delay: run.respawn_delay,
            shutdown_timeout: run.shutdown_timeout,
            reload_timeout: run.reload_timeout,
            reload_if_running: run.reload_if_running,
            plugin_args: run.plugin_args,
            exe: std::env::current_exe()
                .map_err(Error::os("cannot find the host binary's path"))?,
            args: std::env::args_os().collect(),
        })
    }
}

/// Runs a supervisor until it stops: the first generation when `inherited`
/// is `None`, otherwise the generation the previous one started.
pub fn run(config: Config, inherited: Option<InheritedEnv>) -> Result<(), Error> {
    let runtime = match inherited {
        None => {
            logging::set_identity(Role::Supervisor, 1);
            let (reload_if_running, timeout) = (config.reload_if_running, config.reload_timeout);
            match first(config) {
                Err(Error::AlreadyRunning { path, .. }) if reload_if_running => {
                    // Give the running host its whole reload timeout, and some.
                    return control::reload(&path, timeout.saturating_add(Duration::from_secs(30)));
                }
                started => started?,
            }
        }
        Some(env) => {
            let inherited = Inherited::adopt(env)?;
            logging::set_identity(Role::Supervisor, inherited.generation);
            successor(config, inherited)?
        }
    };
    runtime.run()
}

fn first(config: Config) -> Result<Runtime, Error> {
    let started = Instant::now();
    // Lock first, so a second host is told who runs, not that the port is taken.
    let pid_file = config
        .pid_file
        .as_deref()
        .map(PidFile::acquire)
        .transpose()?;
    let snapshot = Snapshot::take(&config.plugin)?;
    tracing::debug!("plugin snapshot taken at {:?}", started.elapsed());
    let listeners = Listeners::bind(&config.listen)?;
    let machine = Machine::new(1, config.workers, config.timing(), None, started);
    Runtime::new(config, machine, snapshot, listeners, pid_file)
}

/// On error, tells the previous generation why before returning it.
fn successor(config: Config, inherited: Inherited) -> Result<Runtime, Error> {
    let started = Instant::now();
    let Inherited {
        generation,
        base_nice,
        listeners,
        pid_file,
        predecessor,
    } = inherited;
    let setup = || {
        let snapshot = Snapshot::take(&config.plugin)?;
        tracing::debug!("plugin snapshot taken at {:?}", started.elapsed());
        let listeners = Listeners::inherit(listeners)?;
        if listeners.len() != config.listen.len() {
            return Err(Error::Inherit(format!(
                "inherited {} listening sockets for {} --listen addresses",
                listeners.len(),
                config.listen.len()
            )));
        }
        let pid_file = match (&config.pid_file, pid_file) {
            (Some(path), Some(fd)) => Some(PidFile::inherit(path, fd)?),
            (None, None) => None,
            _ => {
                return Err(Error::Inherit(
                    "the pid file and its inherited lock do not match".into(),
                ))
            }
        };
        Ok((snapshot, listeners, pid_file))
    };
    let machine = Machine::new(
        generation,
        config.workers,
        config.timing(),
        Some(predecessor.pid),
        started,
    );
    let built = setup().and_then(|(snapshot, listeners, pid_file)| {
        Runtime::new(config, machine, snapshot, listeners, pid_file)
    });
    match built {
        Ok(mut runtime) => {
            // The previous generation exec'd us with every signal blocked;
            // our handlers are installed now.
            signals::restore(&nix::sys::signal::SigSet::empty())
                .map_err(Error::os("cannot unblock signals"))?;
            runtime.adopt_predecessor(predecessor, base_nice);
            Ok(runtime)
        }
        Err(e) => {
            let _ = predecessor.channel.send(&NewToOld::Failed(e.to_string()));
            Err(e)
        }
    }
}
