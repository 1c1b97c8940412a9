//! `--daemonize`: detach from the terminal the way daemons do (fork,
//! `setsid`, fork, `chdir /`, standard streams to `/dev/null` or
//! `--log-file`), while the command that started it waits on a pipe and
//! exits only with the outcome: 0 once the service serves, non-zero with
//! the reason otherwise. So `host --daemonize ... && curl ...` is reliable.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::unistd::{fork, setsid, ForkResult};

use crate::error::Error;

/// The daemon's end of the pipe to the waiting command.
pub struct Readiness(File);

impl Readiness {
    pub fn serving(mut self) {
        let _ = self.0.write_all(b"ok\n");
    }

    pub fn failed(mut self, why: &str) {
        let _ = write!(self.0, "error: {}", why.replace('\n', " "));
    }
}

/// Detaches. Returns in the daemon only; the command that called it exits
/// with the outcome. Call while the process has one thread, before any
/// path is used relative to the working directory (it becomes `/`).
pub fn daemonize(log_file: Option<&Path>) -> Result<Readiness, Error> {
    // Opened before anything forks, so a bad path is an error here.
    let log = match log_file {
        Some(path) => OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)
            .map_err(|e| Error::Os {
                what: "--log-file: cannot open it",
                source: e,
            })?,
        None => File::options()
            .write(true)
            .open("/dev/null")
            .map_err(Error::os("cannot open /dev/null"))?,
    };
    let null = File::open("/dev/null").map_err(Error::os("cannot open /dev/null"))?;
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| Error::os("cannot create a pipe")(e.into()))?;
    // SAFETY: the process has one thread (main calls this before starting
    // any), so the child is a faithful copy with no lock held elsewhere.
    match unsafe { fork() }.map_err(|e| Error::os("cannot fork")(e.into()))? {
        ForkResult::Parent { .. } => {
            drop(write);
            std::process::exit(wait_for_outcome(read))
        }
        ForkResult::Child => {}
    }
    drop(read);
    setsid().map_err(|e| Error::os("setsid failed")(e.into()))?;
    // SAFETY: still one thread, as above. The second fork makes sure the
    // daemon, no longer a session leader, never gets a controlling terminal.
    match unsafe { fork() }.map_err(|e| Error::os("cannot fork")(e.into()))? {
        // SAFETY: _exit skips atexit handlers and buffers the daemon owns.
        ForkResult::Parent { .. } => unsafe { libc::_exit(0) },
        ForkResult::Child => {}
    }
    std::env::set_current_dir("/").map_err(Error::os("cannot change directory to /"))?;
    for (from, to) in [
        (null.as_raw_fd(), 0),
        (log.as_raw_fd(), 1),
        (log.as_raw_fd(), 2),
    ] {
        // SAFETY: both descriptors are open (`from` is owned by a File that
        // lives until the end of this function); dup2 makes `to` a copy,
        // closing what it was, and no Rust handle owns 0, 1 or 2.
        if unsafe { libc::dup2(from, to) } < 0 {
            return Err(Error::os("cannot redirect a standard stream")(
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(Readiness(File::from(write)))
}

/// In the command that started the daemon: the exit code, after printing
/// the daemon's error if it failed.
fn wait_for_outcome(read: OwnedFd) -> i32 {
    let mut said = String::new();
    let _ = File::from(read).read_to_string(&mut said);
    if said.starts_with("ok") {
        return 0;
    }
    let why = said
        .strip_prefix("error: ")
        .filter(|w| !w.is_empty())
        .unwrap_or("the daemon exited before serving (see --log-file)");
    crate::print_error(why);
    1
}

/// `path` made absolute against the working directory (as it is, if that fails).
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// The arguments, with the paths the host reads (`--plugin`, `--pid-file`,
/// `--log-file`) made absolute, so they still work from `/`.
pub fn absolute_args(args: &[OsString]) -> Vec<OsString> {
    const PATH_FLAGS: [&str; 3] = ["--plugin", "--pid-file", "--log-file"];
    let absolute =
        |p: &OsString| std::path::absolute(p).map_or_else(|_| p.clone(), |a| a.into_os_string());
    let mut out = Vec::with_capacity(args.len());
    let mut next_is_path = false;
    for (i, arg) in args.iter().enumerate() {
        let text = arg.to_string_lossy();
        if text == "--" {
            out.extend(args[i..].iter().cloned());
            break;
        }
        if next_is_path {
            out.push(absolute(arg));
            next_is_path = false;
        } else if PATH_FLAGS.contains(&text.as_ref()) {
            out.push(arg.clone());
            next_is_path = true;
        } else if let Some((flag, value)) = text
            .split_once('=')
            .filter(|(flag, _)| PATH_FLAGS.contains(flag))
        {
            let mut joined = OsString::from(format!("{flag}="));
            joined.push(absolute(&OsString::from(value)));
            out.push(joined);
        } else {
            out.push(arg.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_flags_become_absolute_and_plugin_args_stay() {
        let args: Vec<OsString> = [
            "host",
            "--plugin",
            "lib.so",
            "--pid-file=x.pid",
            "--listen",
            "a:1",
            "--",
            "rel",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let cwd = std::env::current_dir().unwrap();
        let out = absolute_args(&args);
        assert_eq!(out[2], cwd.join("lib.so").into_os_string());
        assert_eq!(
            out[3],
            OsString::from(format!("--pid-file={}", cwd.join("x.pid").display()))
        );
        assert_eq!(out[4..], args[4..]);
    }
}
