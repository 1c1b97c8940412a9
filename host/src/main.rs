//! `host`: a process supervisor that runs worker code from a plugin and
//! swaps in a rebuilt plugin with zero downtime. The protocol is described
//! in `supervisor.rs`; each module below does one job.

mod channel;
mod cli;
mod control;
mod error;
mod listeners;
mod logging;
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
    let cli = cli::Cli::parse();
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
