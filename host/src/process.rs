//! Facts about processes that several parts of the host read: how a child
//! ended, a field of `/proc/PID/stat`, and a pidfd.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

/// "exited with status 1", "was killed by SIGKILL (core dumped)".
pub fn describe_exit(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, sig, core) => format!(
            "was killed by {}{}",
            sig.as_str(),
            if core { " (core dumped)" } else { "" }
        ),
        other => format!("changed state: {other:?}"),
    }
}

/// Field `n` (as proc(5) numbers them, from 3 on) of `/proc/PID/stat`;
/// `pid` may be `self`. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from its closing parenthesis.
pub fn stat_field(pid: &str, n: usize) -> io::Result<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(n.checked_sub(3)?))
        .map(str::to_owned)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/stat has no field {n}"),
            )
        })
}

/// A descriptor that becomes readable when process `pid` exits, whoever its
/// parent is, and through which it can be signalled even if its pid is
/// reused (Linux 5.3; `ENOSYS` before).
pub fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // (close-on-exec by default) or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else
    // owns it, and the OwnedFd closes it once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_of_this_process() {
        let me = std::process::id().to_string();
        assert!(
            stat_field("self", 1).is_err(),
            "fields before the name are not read"
        );
        let parent = stat_field(&me, 4).unwrap();
        assert_eq!(parent, std::os::unix::process::parent_id().to_string());
        assert!(stat_field(&me, 22).unwrap().parse::<u64>().is_ok());
    }
}
