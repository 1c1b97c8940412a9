//! The host's errors. Each message names the thing, says what is wrong and,
//! where there is one, the fix; `main` prints it as one line. Paths and
//! text from outside (a plugin's error, say) are escaped (see
//! `logging::escape`), so that a newline in them cannot start another line.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::logging::escape;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("plugin {}: {}", shown(path), escape(problem))]
    Plugin { path: PathBuf, problem: String },

    #[error("plugin failed to start: {}", escape(.0))]
    Start(String),

    #[error("pid file {}: already running as pid {pid} (stop it with `host stop --pid-file {}`, or choose another --pid-file)", shown(path), shown(path))]
    AlreadyRunning { path: PathBuf, pid: String },

    #[error("pid file {}: {action}: {source}", shown(path))]
    PidFile {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },

    /// A pid file the host will not use, with the reason and the fix.
    #[error("pid file {}: {}", shown(path), escape(problem))]
    PidFileRefused { path: PathBuf, problem: String },

    #[error("--listen {addr}: {source}{hint}")]
    Listen {
        addr: SocketAddr,
        source: io::Error,
        hint: &'static str,
    },

    #[error("cannot take over from the previous generation: {}", escape(.0))]
    Inherit(String),

    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        source: io::Error,
    },

    /// A control command's failure, already worded for the user.
    #[error("{}", escape(.0))]
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

    pub fn pid_file_refused(path: &Path, problem: impl Into<String>) -> Error {
        Error::PidFileRefused {
            path: path.to_owned(),
            problem: problem.into(),
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

/// A path as error messages show it: lossy UTF-8, control characters escaped.
pub fn shown(path: &Path) -> String {
    escape(&path.to_string_lossy()).into_owned()
}

/// A user as messages name them: `user nobody (uid 65534)`, or `uid 4242`
/// when the user database does not know the uid.
pub fn user(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("user {} (uid {uid})", escape(&user.name)),
        _ => format!("uid {uid}"),
    }
}
