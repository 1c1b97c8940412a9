//! The status file beside the pid file (`FILE.status`): what the live
//! supervisor is doing, for `host status` and `host reload`, and what proves
//! that a pid is that supervisor (see `control`). Written whole into a
//! temporary file nobody else can have planted (created exclusively, under a
//! random name, never through a symbolic link) and renamed into place, so a
//! reader never sees half of it.
//!
//! ```text
//! pid=4242
//! generation=3
//! state=serving
//! reloads=2
//! last_reload=failed: plugin /srv/libfoo.so: not a shared library
//! listen=127.0.0.1:8080
//! crash_looping=0
//! anchor=4200
//! anchor_since=1795000000
//! instance=5f0c1e9a8b7d6c5e4f3a2b1c0d9e8f7a
//! start_time=1234567
//! pid_ns=pid:[4026531836]
//! ```
//!
//! `instance` is the id the anchor made at start, which every generation
//! carries in its environment; `start_time` is when the supervisor `pid`
//! started (field 22 of `/proc/PID/stat`, in clock ticks since boot), and
//! `pid_ns` the pid namespace it runs in, which numbers `pid` and `anchor`.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::logging::escape;

/// What the live supervisor is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Starting,
    Serving,
    Reloading,
    Stopping,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Serving => "serving",
            State::Reloading => "reloading",
            State::Stopping => "stopping",
        }
    }

    fn parse(s: &str) -> Option<State> {
        [
            State::Starting,
            State::Serving,
            State::Reloading,
            State::Stopping,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// The contents of a status file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub pid: u32,
    pub generation: u64,
    pub state: State,
    /// Reloads this supervisor has been asked for (started, failed or ignored).
    pub reloads: u64,
    /// Why the last one did not happen (`failed: ...` or `ignored: ...`);
    /// empty if none has failed. A successful reload writes a new status.
    pub last_reload: String,
    pub listen: Vec<String>,
    /// How many worker slots back off because their workers keep dying young.
    pub crash_looping: usize,
    /// The anchor's pid, and when it started (seconds since the Unix epoch).
    pub anchor: u32,
    pub anchor_since: u64,
    /// The host's instance id (see the module docs).
    pub instance: String,
    /// When the supervisor `pid` started, in clock ticks since boot.
    pub start_time: u64,
    /// The pid namespace of the supervisor, as `readlink /proc/self/ns/pid`
    /// says (`pid:[4026531836]`).
    pub pid_ns: String,
}

impl Status {
    fn render(&self) -> String {
        format!(
            "pid={}\ngeneration={}\nstate={}\nreloads={}\nlast_reload={}\nlisten={}\ncrash_looping={}\nanchor={}\nanchor_since={}\ninstance={}\nstart_time={}\npid_ns={}\n",
            self.pid,
            self.generation,
            self.state.as_str(),
            self.reloads,
            escape(&self.last_reload.replace('\n', " ")),
            self.listen.join(" "),
            self.crash_looping,
            self.anchor,
            self.anchor_since,
            escape(&self.instance),
            self.start_time,
            escape(&self.pid_ns),
        )
    }

    fn parse(text: &str) -> Option<Status> {
        let field = |key: &str| {
            text.lines().find_map(|line| {
                line.strip_prefix(key)
                    .and_then(|rest| rest.strip_prefix('='))
            })
        };
        Some(Status {
            pid: field("pid")?.parse().ok()?,
            generation: field("generation")?.parse().ok()?,
            state: State::parse(field("state")?)?,
            reloads: field("reloads")?.parse().ok()?,
            last_reload: field("last_reload")?.to_owned(),
            listen: field("listen")?
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            crash_looping: field("crash_looping")?.parse().ok()?,
            anchor: field("anchor")?.parse().ok()?,
            anchor_since: field("anchor_since")?.parse().ok()?,
            instance: field("instance")?.to_owned(),
            start_time: field("start_time")?.parse().ok()?,
            pid_ns: field("pid_ns")?.to_owned(),
        })
    }
}

/// Where the status file of a pid file lives.
pub fn path_for(pid_file: &Path) -> PathBuf {
    let mut name = pid_file.as_os_str().to_owned();
    name.push(".status");
    PathBuf::from(name)
}

/// Writes the status file atomically: into a new temporary file beside it,
/// then renamed into place. The temporary is created exclusively (never an
/// existing file, never through a symbolic link) under a random name, so
/// nobody can have planted it; it is mode 0644 whatever the umask.
pub fn write(path: &Path, status: &Status) -> io::Result<()> {
    let (tmp, mut file) = create_temporary(path)?;
    let written = file
        .set_permissions(fs::Permissions::from_mode(0o644))
        .and_then(|()| file.write_all(status.render().as_bytes()));
    drop(file);
    match written.and_then(|()| fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Creates `PATH.<random>.tmp`, exclusively and without following a link.
fn create_temporary(path: &Path) -> io::Result<(PathBuf, fs::File)> {
    let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
    // A random name is taken only if someone planted it: a few tries.
    for _ in 0..8 {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{}.tmp", random_id()));
        let tmp = PathBuf::from(name);
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp);
        match created {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// 128 random bits, in hex: from getrandom(2), or `/dev/urandom`. For names
/// that must be unique and not known in advance (an id is not a secret: the
/// status file shows the host's).
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer
    // it is given, a live, writable local array of exactly that length.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if usize::try_from(got).ok() != Some(bytes.len()) {
        let read = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
        if read.is_err() {
            // No randomness at all (no getrandom, no /dev): unique still,
            // from the time and the pid.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            bytes = (nanos ^ (u128::from(std::process::id()) << 96)).to_le_bytes();
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// When process `pid` (or `self`) started: field 22 of `/proc/PID/stat`, in
/// clock ticks since boot. With the pid, it names one process: a pid reused
/// later has another start time.
pub fn start_time(pid: &str) -> io::Result<u64> {
    crate::process::stat_field(pid, 22)?.parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat holds no start time"),
        )
    })
}

/// This process's pid namespace, as `readlink /proc/self/ns/pid` says it:
/// `pid:[4026531836]`.
pub fn own_pid_namespace() -> io::Result<String> {
    Ok(fs::read_link("/proc/self/ns/pid")?
        .to_string_lossy()
        .into_owned())
}

/// Reads a status file; `None` if it is missing, a symbolic link (the host
/// never makes one), or unreadable as a status.
pub fn read(path: &Path) -> Option<Status> {
    read_with_owner(path).ok()?.0
}

/// Reads a status file, never through a symbolic link (an error, `ELOOP`),
/// and says who owns it: the status (`None` if it does not parse) and the
/// owner's uid.
pub fn read_with_owner(path: &Path) -> io::Result<(Option<Status>, u32)> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok((Status::parse(&text), meta.uid()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("a.pid"));
        let status = Status {
            pid: 7,
            generation: 3,
            state: State::Reloading,
            reloads: 2,
            last_reload: "failed: plugin x: bad\nsecond line".into(),
            listen: vec!["127.0.0.1:1".into(), "[::1]:2".into()],
            crash_looping: 1,
            anchor: 5,
            anchor_since: 1_700_000_000,
            instance: "00112233445566778899aabbccddeeff".into(),
            start_time: 123_456,
            pid_ns: "pid:[4026531836]".into(),
        };
        write(&path, &status).unwrap();
        let read_back = read(&path).unwrap();
        assert_eq!(read_back.last_reload, "failed: plugin x: bad second line");
        assert_eq!(
            Status {
                last_reload: status.last_reload.replace('\n', " "),
                ..status
            },
            read_back
        );
        // Nothing else is left in the directory: the temporary was renamed.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_link_at_the_old_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("a.pid"));
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        // The name it had: PATH.tmp<pid>.
        let mut old = path.as_os_str().to_owned();
        old.push(format!(".tmp{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &old).unwrap();
        let status = Status {
            pid: 7,
            generation: 1,
            state: State::Serving,
            reloads: 0,
            last_reload: String::new(),
            listen: Vec::new(),
            crash_looping: 0,
            anchor: 5,
            anchor_since: 1,
            instance: random_id(),
            start_time: start_time("self").unwrap(),
            pid_ns: own_pid_namespace().unwrap(),
        };
        write(&path, &status).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(read(&path), Some(status));
        assert_eq!(random_id().len(), 32);
        assert_ne!(random_id(), random_id());
    }
}
