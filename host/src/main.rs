//! `host`: a process supervisor that runs worker code from a plugin and
//! swaps in a rebuilt plugin with zero downtime. Each module below does one
//! job.
//!
//! The processes, top down:
//!
//! - the **anchor** (`anchor`): the process the user, systemd or Docker
//!   started, for the service's whole life. It binds the listening sockets,
//!   locks the pid file, reaps orphans (child subreaper), forwards TERM,
//!   INT, QUIT, USR2 and HUP to the supervisor in charge, alone talks to
//!   systemd, and starts a new generation when the one in charge dies
//!   without having said it stops. It never loads the plugin.
//! - a **supervisor** per generation (`supervisor`, its states in
//!   `lifecycle`): forks the workers, respawns them, reloads, stops. The
//!   anchor starts generation 1; each later one is started by the one it
//!   replaces. Every generation inherits the sockets, the pid-file lock and
//!   one end of the anchor channel; the anchor's exit is that channel's
//!   hang-up, and every supervisor then stops gracefully.
//! - the **workers** (`worker`): forked by their supervisor; each loads the
//!   generation's plugin snapshot and runs `supervised_process`.
//!
//! The hot-reload protocol, in terms of the `lifecycle` states (g is the
//! generation in charge, g+1 the one SIGUSR2 starts). Every message travels
//! on the hand-over channel, a socketpair only g and g+1 hold, so no signal
//! from anyone else can trigger a hand-over.
//!
//! 0. g, once `Serving` with no reload in flight and a plugin that can
//!    hot-reload, starts a **standby** for g+1 (`reload::spawn_standby`):
//!    the same exec as below, ahead of time, as a batch job named
//!    `host-standby`. It parses its command line, adopts what it inherits,
//!    reserves the pages for the plugin's copy, forks the worker for its
//!    first slot (which prepares, then sleeps until the copy is made:
//!    `supervisor::pool::PreparedWorker`), and waits on the hand-over
//!    channel. It exits when g goes away, and g kills it when it stops; its
//!    worker exits with it.
//! 1. g, `Serving`, gets SIGUSR2. Unless a reload is in flight or its plugin
//!    cannot hot-reload, it starts g+1: it sends the standby `Start` if the
//!    host binary on disk is still the file the standby was exec'd from, and
//!    otherwise kills the standby and execs the binary afresh
//!    (`reload::spawn`: `Command` with a `pre_exec` that keeps the listening
//!    sockets, the pid-file lock and one end of the hand-over channel open
//!    across exec, in a process group of its own). An exec error comes back
//!    at once. g keeps serving.
//! 2. g+1 starts in `Starting`: it copies the plugin (only what the loader
//!    maps), lets its prepared worker load it (a standby's), and forks the
//!    others, one fewer at a time than there are CPUs
//!    (at least one): one CPU stays with g, which serves meanwhile. A plugin
//!    whose `can_do_hot_reload()` is false fails the reload here, at once.
//! 3. Each worker that calls `ready_to_take_over` says `Serving` and accepts
//!    from then on, beside g's workers (no moment passes with nobody
//!    accepting); its head start (see `priority`) ends there. Every
//!    worker serving, g+1 sends `ReadyToTakeOver` and is `TakingOver`. g
//!    tells its workers to stop accepting (`Stop(Reload)`). Once each says
//!    it took the stop (`StopTaken`: its stop flag is set and its stop fd
//!    readable) or is gone, or after `STOP_TAKEN_WAIT` (1 s), g answers
//!    `Released`, so that no old worker still accepts once g+1 is in charge,
//!    and waits for the confirmation.
//! 4. g+1, on `Released`, checks that every slot still has a live worker,
//!    tells the anchor it serves, confirms with `TookOver`, and only then
//!    rewrites the pid file (never empty for a reader) and the status file:
//!    `Serving`. g, on `TookOver`, is `Stopping` (cause: handed over): its
//!    workers finish what they hold within `--shutdown-timeout`, a first
//!    operator stop does not cut that short, and g exits once they are gone.
//! 5. Until `TookOver`, g is in charge. If g+1 fails (it sends `Failed`), dies
//!    (its channel closes or it is reaped) or does not confirm within
//!    `--reload-timeout`, g kills g+1's process group and carries on: if it
//!    had released its workers, it respawns them at once and claims the pid
//!    file again. `host reload` reads the reason in the status file.
//!
//! 6. The supervisor in charge tells the anchor when it serves, reloads, a
//!    reload fails, or it stops the service; the anchor passes that on to
//!    systemd, so MAINPID never changes. If it dies unasked, the anchor lets
//!    a successor already starting take charge, or starts a new generation.
//!
//! A SIGTERM, SIGINT or SIGQUIT is always a graceful stop. g+1 that gets
//! one before taking over tells g to carry on. The pid-file lock is never
//! released in between: it belongs to the open file description, which g+1
//! inherits (see `pidfile`). A new generation's workers load the plugin
//! with a CPU head start when allowed (see `priority`).

mod anchor;
mod channel;
mod cli;
mod control;
mod daemon;
mod error;
mod footprint;
mod heartbeat;
mod lifecycle;
mod listeners;
mod logging;
mod notify;
mod pidfile;
mod priority;
mod privileges;
mod process;
mod reload;
mod signals;
mod snapshot;
mod status;
mod supervisor;
mod thread_time;
mod worker;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before anything else, while this is the only thread: no later code,
    // and no process we start, may see the variables of a generation.
    let inherited = reload::take_inherited_env();
    let cli = cli::Cli::try_parse().unwrap_or_else(|e| {
        if let Some(env) = &inherited {
            let first_line = e.to_string().lines().next().unwrap_or_default().to_owned();
            env.report_failure(&format!("the new host's command line: {first_line}"));
        }
        e.exit()
    });
    let result = match (cli.command, inherited) {
        (Some(command), _) => {
            logging::init();
            control::run(command).map(|()| 0)
        }
        // Started by the anchor or by the generation it replaces.
        (None, Some(env)) => {
            logging::init();
            supervisor::Config::from_args(cli.run)
                .and_then(|config| supervisor::run(config, env))
                .map(|()| 0)
        }
        // Started by the user: the anchor.
        (None, None) => supervisor::Config::from_args(cli.run).and_then(run_anchor),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            print_error(&e.to_string());
            ExitCode::FAILURE
        }
    }
}

fn run_anchor(mut config: supervisor::Config) -> Result<i32, error::Error> {
    let readiness = if config.daemonize {
        // Paths must survive the move to `/`.
        config.args = daemon::absolute_args(&config.args);
        config.plugin = daemon::absolute(&config.plugin);
        config.pid_file = config.pid_file.as_deref().map(daemon::absolute);
        config.log_file = config.log_file.as_deref().map(daemon::absolute);
        // One thread yet: logging starts after the forks.
        Some(daemon::daemonize(config.log_file.as_deref())?)
    } else {
        None
    };
    logging::init();
    anchor::run(config, readiness)
}

/// Prints `host: error: MESSAGE` in one write: other processes of the host
/// (the anchor, a supervisor) may be logging to the same stderr, and a line
/// written in pieces could be interleaved with theirs.
pub fn print_error(message: &str) {
    use std::io::Write;
    let line = format!("host: error: {message}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
