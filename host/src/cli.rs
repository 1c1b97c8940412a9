//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Runs worker code from a plugin (`.so`) in supervised, forked workers,
/// and swaps in a rebuilt plugin with zero downtime on SIGUSR2.
///
/// Signals to the supervisor: SIGTERM or SIGINT stop gracefully; SIGUSR2
/// hot-reloads (a new host generation with a fresh copy of the plugin takes
/// over); SIGQUIT is how a new generation tells the old one to step aside.
#[derive(Debug, Parser)]
#[command(
    name = "host",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub run: RunArgs,
}

/// Control commands for a running host.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Hot-reload the running host and wait for the outcome: exits 0 when the
    /// new generation has taken over, non-zero with the reason otherwise.
    Reload {
        /// The running host's pid file.
        #[arg(long, value_name = "FILE")]
        pid_file: PathBuf,
        /// Give up after this many seconds.
        #[arg(long, value_name = "SECS", default_value = "90", value_parser = parse_secs)]
        timeout: Duration,
    },
    /// Show whether the host is running, its pid, generation and state.
    Status {
        /// The running host's pid file.
        #[arg(long, value_name = "FILE")]
        pid_file: PathBuf,
    },
    /// Stop the running host gracefully (SIGTERM) and wait until it is gone.
    Stop {
        /// The running host's pid file.
        #[arg(long, value_name = "FILE")]
        pid_file: PathBuf,
        /// Give up after this many seconds.
        #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
        timeout: Duration,
    },
}

/// Running the supervisor.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// The plugin library to run (a cdylib that calls plugin_api::export_plugin!).
    /// Each generation runs a private copy, so rebuilding it in place is safe.
    #[arg(long, value_name = "PATH", required = true)]
    pub plugin: Option<PathBuf>,

    /// Load the plugin even if someone else could change it: by default it
    /// must be a regular file owned by you or root and not writable by group
    /// or others, in a directory that is the same (only its own directory
    /// is checked, not the ones above).
    #[arg(long)]
    pub insecure_plugin_path: bool,

    /// Lock this file for the supervisor's life and write its pid into it;
    /// a second host on the same file is refused. Needed by `host reload`.
    /// [default: none]
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,

    /// Bind a TCP listening socket at IP:PORT (repeatable; port 0 picks a
    /// free one). Bound once, shared by all workers, and handed to every
    /// new generation, so a reload never refuses a connection.
    #[arg(long = "listen", value_name = "ADDR", value_parser = parse_listen)]
    pub listen: Vec<SocketAddr>,

    /// How many workers to run.
    #[arg(long, value_name = "N", default_value = "1", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: u16,

    /// Seconds to wait before respawning a worker that ended (fractions allowed).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    pub respawn_delay: Duration,

    /// The longest wait between respawns of a worker that keeps dying young
    /// (within 10 s of its start): the delay doubles from --respawn-delay up
    /// to this, and returns to --respawn-delay once a worker lives longer.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs)]
    pub respawn_delay_max: Duration,

    /// Seconds a stopping worker gets to finish its work and run its shutdown
    /// before it is killed.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub shutdown_timeout: Duration,

    /// Seconds a new generation gets to take over after SIGUSR2 before it is
    /// killed and the running generation carries on.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs)]
    pub reload_timeout: Duration,

    /// If a host already runs on --pid-file, hot-reload it instead of
    /// failing (it keeps the arguments it was started with), and exit with
    /// the outcome as `host reload` does. Otherwise start as usual.
    #[arg(long, requires = "pid_file")]
    pub reload_if_running: bool,

    /// Kill (and respawn) a serving worker that has not called
    /// ping_supervisor() for SECS: a hung worker. Off by default. Each ping
    /// bumps a counter in memory shared with the supervisor: no system call.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub watchdog: Option<Duration>,

    /// Started as root: after binding --listen and opening --pid-file, run
    /// as this user (with its groups) from then on; no worker ever runs as
    /// root. The pid file's directory must be writable by it (for FILE.status).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// With or without --user: run as this group (default: the user's own).
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,

    /// Detach into the background (own session, working directory /), and
    /// return only once the service serves: exit 0 then, or non-zero with
    /// the reason. Give plugin arguments as absolute paths.
    #[arg(long)]
    pub daemonize: bool,

    /// With --daemonize: append the log to FILE (default: discard it).
    #[arg(long, value_name = "FILE", requires = "daemonize")]
    pub log_file: Option<PathBuf>,

    /// Arguments for the plugin's constructor (write them after `--`).
    #[arg(last = true, value_name = "PLUGIN_ARGS")]
    pub plugin_args: Vec<String>,
}

/// The longest duration any flag takes: one day. Longer waits are surely a
/// typo, and bounding them keeps every deadline computable.
const MAX_SECS: f64 = 86_400.0;

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs = s
        .parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs >= 0.0)
        .ok_or_else(|| format!("'{s}' is not a number of seconds (use e.g. 5 or 0.5)"))?;
    if secs > MAX_SECS {
        return Err(format!(
            "'{s}' seconds is more than one day; use at most {MAX_SECS} (e.g. 60)"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("'{s}' is not an IP:PORT address (use e.g. 127.0.0.1:8080 or [::1]:0)")
    })
}
