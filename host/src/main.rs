//! `host`: a process supervisor that runs worker code from a plugin and
//! swaps in a rebuilt plugin with zero downtime. Each module below does one
//! job; `supervisor` runs the show.
//!
//! The hot-reload protocol, in terms of `supervisor`'s `Phase` states (g is the
//! running one, g+1 the one SIGUSR2 starts):
//!
//! 1. g, `Serving`, gets SIGUSR2. Unless a reload is in flight or the plugin
//!    said it cannot hot-reload, it forks and execs g+1 (`reload::spawn`),
//!    handing over the listening sockets, the pid-file lock and one end of a
//!    handover channel. g keeps serving.
//! 2. g+1 starts in `Starting`: it copies the plugin, forks its workers, and
//!    waits until every one has called `ready_to_take_over`.
//! 3. g+1 sends SIGQUIT to g and enters `TakingOver`. g tells its workers to
//!    stop (they stop accepting at once and finish what they hold), sends
//!    `Released` on the handover channel, and enters `Stopping`.
//! 4. g+1, on `Released` (or on seeing g gone), re-asserts the pid-file lock
//!    (shared with g since exec, so it never lapses), writes its pid, sends
//!    `Go` to its workers, writes the status file, and is `Serving`. g exits
//!    once its workers have.
//! 5. If g+1 fails first, it sends `Failed(reason)` and exits; g logs
//!    `reload failed: <reason>` and is ready for the next SIGUSR2 at once.
//!    If g hears nothing within `--reload-timeout`, or g+1 dies without a
//!    word, g kills g+1's whole process group and carries on.
//!
//! The pid-file lock is never released in between: it belongs to the open
//! file description, which g+1 inherits (see `pidfile`). A new generation's
//! start-up runs with a CPU head start when allowed (see `priority`).

mod channel;
mod cli;
mod control;
mod error;
mod lifecycle;
mod listeners;
mod logging;
mod notify;
mod pidfile;
mod priority;
mod reload;
mod signals;
mod snapshot;
mod status;
mod supervisor;
mod worker;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before anything else, while this is the only thread: no later code,
    // and no process we start, may see the variables of a hot reload.
    let inherited = reload::take_inherited_env();
    let cli = cli::Cli::try_parse().unwrap_or_else(|e| {
        if let Some(env) = &inherited {
            let first_line = e.to_string().lines().next().unwrap_or_default().to_owned();
            env.report_failure(&format!("the new host's command line: {first_line}"));
        }
        e.exit()
    });
    logging::init();
    let result = match cli.command {
        Some(command) => control::run(command),
        None => supervisor::Config::from_args(cli.run)
            .and_then(|config| supervisor::run(config, inherited)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("host: error: {e}");
            ExitCode::FAILURE
        }
    }
}
