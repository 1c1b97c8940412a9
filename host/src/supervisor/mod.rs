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
mod watchdog;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::channel::{NewToOld, ToAnchor};
use crate::cli::RunArgs;
use crate::error::Error;
use crate::lifecycle::{Machine, Timing};
use crate::listeners::Listeners;
use crate::logging::{self, Role};
use crate::pidfile::PidFile;
use crate::reload::{Anchor, Inherited, InheritedEnv, Predecessor};
use crate::signals;
use crate::snapshot::{Room, Snapshot};
use crate::thread_time::ThreadTime;
use pool::PreparedWorker;

use runtime::Runtime;

/// How the supervisor was asked to run.
pub struct Config {
    pub plugin: PathBuf,
    /// Skip the checks that nobody else can change the plugin file.
    pub insecure_plugin_path: bool,
    pub pid_file: Option<PathBuf>,
    pub listen: Vec<SocketAddr>,
    pub workers: usize,
    pub respawn_delay: Duration,
    pub respawn_delay_max: Duration,
    pub shutdown_timeout: Duration,
    pub reload_timeout: Duration,
    /// Reload a host already running on the pid file instead of failing.
    pub reload_if_running: bool,
    pub daemonize: bool,
    /// Kill a serving worker that does not ping for this long.
    pub watchdog: Option<Duration>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub log_file: Option<PathBuf>,
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
            respawn_delay_max: self.respawn_delay_max,
            shutdown_timeout: self.shutdown_timeout,
            reload_timeout: self.reload_timeout,
        }
    }

    pub fn from_args(run: RunArgs) -> Result<Config, Error> {
        Ok(Config {
            plugin: run
                .plugin
                .ok_or_else(|| Error::Control("--plugin PATH is required".into()))?,
            insecure_plugin_path: run.insecure_plugin_path,
            pid_file: run.pid_file,
            listen: run.listen,
            workers: usize::from(run.workers),
            respawn_delay: run.respawn_delay,
            respawn_delay_max: run.respawn_delay_max,
            shutdown_timeout: run.shutdown_timeout,
            reload_timeout: run.reload_timeout,
            reload_if_running: run.reload_if_running,
            daemonize: run.daemonize,
            watchdog: run.watchdog,
            user: run.user,
            group: run.group,
            log_file: run.log_file,
            plugin_args: run.plugin_args,
            exe: std::env::current_exe()
                .map_err(Error::os("cannot find the host binary's path"))?,
            args: std::env::args_os().collect(),
        })
    }
}

/// Runs one generation's supervisor until it stops: started by the anchor
/// (no predecessor) or by the generation it replaces.
pub fn run(config: Config, env: InheritedEnv) -> Result<(), Error> {
    let mut inherited = Inherited::adopt(env)?;
    let (room, prepared) = match inherited.standby {
        Some(_) => {
            // Room for the snapshot now, and the first worker, which will
            // load it (see `PreparedWorker`); the copy waits for the start,
            // as the plugin may yet change.
            let (room, prepared) = match Room::reserve(&config.plugin) {
                Some(room) => {
                    let listener_fds = inherited.listeners.iter().map(|l| l.as_raw_fd()).collect();
                    let (room, prepared) =
                        PreparedWorker::fork(&config, room, listener_fds, inherited.base_nice)?;
                    (Some(room), prepared)
                }
                None => (None, None),
            };
            if !inherited.await_start()? {
                // The generation that started us stopped, or moved on without us.
                return Ok(());
            }
            (room, prepared)
        }
        None => (None, None),
    };
    logging::set_identity(Role::Supervisor, inherited.generation);
    let started = Instant::now();
    // Only for the debug log (see `thread_time`).
    let thread_started = tracing::enabled!(tracing::Level::DEBUG)
        .then(ThreadTime::now)
        .flatten();
    let Inherited {
        generation,
        standby: _,
        base_nice,
        listeners,
        pid_file,
        anchor,
        predecessor,
    } = inherited;
    let setup = || {
        let snapshot = Snapshot::take(&config.plugin, config.insecure_plugin_path, room)?;
        let spent = thread_started
            .and_then(|then| Some(format!(" ({})", ThreadTime::now()?.since(then))))
            .unwrap_or_default();
        tracing::debug!("plugin snapshot taken at {:?}{spent}", started.elapsed());
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
    let mut machine = Machine::new(
        generation,
        config.workers,
        config.timing(),
        predecessor.as_ref().map(|p| p.pid),
        started,
    );
    // Under a generation that serves meanwhile, one CPU is left to it (on
    // 2 CPUs, starting 2 workers at once doubled the pause its clients
    // felt). With nobody serving, every worker starts at once.
    if predecessor.is_some() {
        machine.start_at_once = std::thread::available_parallelism()
            .map_or(1, |n| n.get().saturating_sub(1))
            .max(1);
    }
    let (snapshot, listeners, pid_file) = match setup() {
        Ok(parts) => parts,
        Err(e) => {
            // Whoever started us hears why: the previous generation carries
            // on; the anchor gives up (first start) or tries again.
            match &predecessor {
                Some(p) => drop(p.channel.send(&NewToOld::Failed(e.to_string()))),
                None => drop(anchor.channel.send(&ToAnchor::Failed(e.to_string()))),
            }
            return Err(e);
        }
    };
    let parts = Parts {
        snapshot,
        listeners,
        pid_file,
        anchor,
        predecessor,
        base_nice,
        prepared,
    };
    let runtime = Runtime::new(config, machine, parts)?;
    // The one who started us blocked every signal across the exec; our
    // handlers are installed now.
    signals::restore(&nix::sys::signal::SigSet::empty())
        .map_err(Error::os("cannot unblock signals"))?;
    runtime.run()
}

/// What a generation runs with, set up before its poll loop starts.
pub struct Parts {
    pub snapshot: Snapshot,
    pub listeners: Listeners,
    pub pid_file: Option<PidFile>,
    pub anchor: Anchor,
    pub predecessor: Option<Predecessor>,
    pub base_nice: Option<i32>,
    pub prepared: Option<PreparedWorker>,
}
