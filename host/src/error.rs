//! The host's errors. Each message names the thing, says what is wrong and,
//! where there is one, the fix; `main` prints it as one line.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("plugin {}: {problem}", path.display())]
    Plugin { path: PathBuf, problem: String },

    #[error("plugin failed to start: {0}")]
    Start(String),

    #[error("pid file {}: already running as pid {pid} (stop it with `host stop --pid-file {}`, or choose another --pid-file)", path.display(), path.display())]
    AlreadyRunning { path: PathBuf, pid: String },

    #[error("pid file {}: {action}: {source}", path.display())]
    PidFile {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },

    #[error("--listen {addr}: {source}{hint}")]
    Listen {
        addr: SocketAddr,
        source: io::Error,
        hint: &'static str,
    },

    #[error("cannot take over from the previous generation: {0}")]
    Inherit(String),

    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        source: io::Error,
    },

    /// A control command's failure, already worded for the user.
    #[error("{0}")]
    Control(String),
}

impl Error {
    pub fn plugin(path: &Path, problem: impl Into<String>) -> Error {
        Error::Plugin {
            path: path.to_owned(),
            problem: problem.into(),
        }
    }

    pub fn pid_file(path: &Path, action: &'static str, source: io::Error) -> Error {
        Error::PidFile {
            path: path.to_owned(),
            action,
            source,
        }
    }

    pub fn listen(addr: SocketAddr, source: io::Error) -> Error {
        let hint = match source.kind() {
            io::ErrorKind::AddrInUse => {
                " (another process listens there: stop it or choose another port)"
            }
            io::ErrorKind::AddrNotAvailable => " (no interface of this machine has that address)",
            io::ErrorKind::PermissionDenied => {
                " (ports below 1024 need privileges: choose a higher port)"
            }
            _ => "",
        };
        Error::Listen { addr, source, hint }
    }

    /// Wraps a failed system call the user cannot fix by changing arguments.
    pub fn os(what: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Os { what, source }
    }
}
