//! The pid file: locked (flock, through fd-lock) for as long as a live
//! supervisor owns it, and holding that supervisor's pid.
//!
//! The lock belongs to the open file description, not to a process. On hot
//! reload the descriptor is inherited by the new generation, so old and new
//! hold the same lock and it never lapses; it is released by the kernel when
//! the last supervisor holding it exits. Workers close it right after fork.
//!
//! The anchor opens it without following a symbolic link, refuses one owned
//! by another user who is not root (its owner could make it name any
//! process), and creates it with mode 0644. A file this start-up created is
//! removed again, with the status file beside it, if the start-up fails
//! (see [`PidFile::commit`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{self, Error};
use crate::status;

/// How often `acquire` starts over when the file it opened is removed or
/// replaced before it is locked (another host's start-up failing at the
/// same moment): each time means another process changed the directory.
const ATTEMPTS: u32 = 10;

/// A pid file whose lock this process holds.
pub struct PidFile {
    path: PathBuf,
    file: File,
    /// This start-up created the file and has not committed it: dropping
    /// the `PidFile` removes it, and the status file beside it.
    remove_on_drop: bool,
}

impl PidFile {
    /// Opens (creating it if needed, mode 0644) and locks the pid file, then
    /// writes our pid. A file left by a dead host (no lock holder) is taken
    /// over. A symbolic link, anything but a regular file, and a file owned
    /// by another user who is not root are refused.
    pub fn acquire(path: &Path) -> Result<PidFile, Error> {
        for _ in 0..ATTEMPTS {
            let (file, created) = open(path)?;
            let mut pid_file = PidFile {
                path: path.to_owned(),
                file,
                remove_on_drop: false,
            };
            let meta = pid_file
                .file
                .metadata()
                .map_err(|e| Error::pid_file(path, "cannot stat", e))?;
            check_trusted(path, &meta)?;
            // (A file we created but another host locked first is its own.)
            lock(&pid_file.file).map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock => Error::AlreadyRunning {
                    path: path.to_owned(),
                    pid: read_pid_from(&pid_file.file)
                        .map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
                },
                _ => Error::pid_file(path, "cannot lock", e),
            })?;
            // Locked, but is it still the file at `path`? A start-up that
            // failed may have removed it in between: a lock on a removed
            // file guards nothing. Then start over.
            if !pid_file.is_at_path() {
                continue;
            }
            // Ours: from here on, if this start-up fails, a file it created
            // is removed again.
            pid_file.remove_on_drop = created;
            pid_file
                .write_pid()
                .map_err(|e| Error::pid_file(path, "cannot write", e))?;
            return Ok(pid_file);
        }
        Err(Error::pid_file_refused(
            path,
            "keeps being removed or replaced while the host locks it; stop whatever does that, or choose another --pid-file",
        ))
    }

    /// Keeps the file when this `PidFile` is dropped: call once the
    /// service has started (a failed start-up removes the files it made).
    pub fn commit(&mut self) {
        self.remove_on_drop = false;
    }

    /// Whether `path` still names the file this holds open.
    fn is_at_path(&self) -> bool {
        match (fs::symlink_metadata(&self.path), self.file.metadata()) {
            (Ok(at_path), Ok(ours)) => at_path.dev() == ours.dev() && at_path.ino() == ours.ino(),
            _ => false,
        }
    }

    /// Adopts the pid file descriptor inherited from the previous generation,
    /// which already holds the lock. Call [`PidFile::take_over`] to claim it.
    pub fn inherit(path: &Path, fd: OwnedFd) -> Result<PidFile, Error> {
        let file = File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| Error::pid_file(path, "inherited descriptor", e))?;
        if !meta.file_type().is_file() {
            return Err(Error::pid_file(
                path,
                "inherited descriptor is not a file",
                io::ErrorKind::InvalidInput.into(),
            ));
        }
        Ok(PidFile {
            path: path.to_owned(),
            file,
            remove_on_drop: false,
        })
    }

    /// Re-asserts the lock on the shared descriptor (it cannot fail while any
    /// generation still holds it) and writes our pid.
    pub fn take_over(&self) -> Result<(), Error> {
        lock(&self.file)
            .map_err(|e| Error::pid_file(&self.path, "cannot lock the inherited pid file", e))?;
        self.write_pid()
            .map_err(|e| Error::pid_file(&self.path, "cannot write", e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes our pid over the old contents, then cuts what is left of
    /// them: a reader sees the old pid, the new one, or the new one followed
    /// by a blank line, never an empty file. No fsync: a pid file only
    /// matters while its writer lives.
    fn write_pid(&self) -> io::Result<()> {
        let text = format!("{}\n", std::process::id());
        self.file.write_all_at(text.as_bytes(), 0)?;
        self.file.set_len(text.len() as u64)
    }
}

impl Drop for PidFile {
    /// Removes the files of a start-up that failed (see [`PidFile::commit`]):
    /// the status file first, then the pid file, while the lock is still
    /// held, and only if the path still names the file this start-up made.
    fn drop(&mut self) {
        if self.remove_on_drop && self.is_at_path() {
            let _ = fs::remove_file(status::path_for(&self.path));
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl AsFd for PidFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Opens the pid file without following a symbolic link, creating it (mode
/// 0644, whatever the umask) if there is none; says whether it created it.
fn open(path: &Path) -> Result<(File, bool), Error> {
    let refuse = |e: io::Error| {
        match e.raw_os_error() {
        Some(libc::ELOOP) => Error::pid_file_refused(
            path,
            "is a symbolic link; refusing to follow it (the host would write over the file it points to): remove the link, or pass the real file as --pid-file",
        ),
        _ => Error::pid_file(path, "cannot open", e),
    }
    };
    for _ in 0..ATTEMPTS {
        let created = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path);
        match created {
            Ok(file) => {
                file.set_permissions(fs::Permissions::from_mode(0o644))
                    .map_err(|e| Error::pid_file(path, "cannot set the mode (0644) of", e))?;
                return Ok((file, true));
            }
            // Something is there (a file, or a link: O_EXCL never follows one).
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(refuse(e)),
        }
        let existing = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path);
        match existing {
            Ok(file) => return Ok((file, false)),
            // Removed since: try creating it again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(refuse(e)),
        }
    }
    Err(Error::pid_file_refused(
        path,
        "keeps appearing and disappearing while the host opens it; stop whatever does that, or choose another --pid-file",
    ))
}

/// Refuses a pid file that is not a regular file, or that is owned by
/// another user who is not root.
fn check_trusted(path: &Path, meta: &fs::Metadata) -> Result<(), Error> {
    if !meta.file_type().is_file() {
        return Err(Error::pid_file_refused(
            path,
            "is not a regular file; remove it, or choose another --pid-file",
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(Error::pid_file_refused(
            path,
            format!(
                "is owned by {}, neither you nor root: its owner could make it name any process; remove it, or choose another --pid-file",
                error::user(meta.uid())
            ),
        ));
    }
    Ok(())
}

/// Takes the exclusive lock without blocking and keeps it for as long as the
/// open file description lives (in this process or any that inherits it).
fn lock(file: &File) -> io::Result<()> {
    let mut lock = fd_lock::RwLock::new(file);
    // Forgetting the guard keeps the lock: fd-lock would unlock on drop, and
    // an explicit unlock would also drop it for the next generation, which
    // shares this open file description.
    std::mem::forget(lock.try_write()?);
    Ok(())
}

fn read_pid_from(mut file: &File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// What a pid file says about the host it names.
#[derive(Debug, PartialEq, Eq)]
pub enum Holder {
    /// The file is locked: a host runs, with this pid (if the file says).
    Running(Option<u32>),
    /// Nobody holds the lock: no host runs (the file may be stale).
    NotRunning,
}

/// Looks at a pid file without disturbing its owner.
pub fn holder(path: &Path) -> io::Result<Holder> {
    inspect(path).map(|(holder, _)| holder)
}

/// Looks at a pid file without disturbing its owner, and without following
/// a symbolic link (an error, `ELOOP`: no host makes one): who holds it,
/// and the uid that owns the file.
pub fn inspect(path: &Path) -> io::Result<(Holder, u32)> {
    // Non-blocking: opening a FIFO planted there must not hang.
    let file = OpenOptions::new()
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
    let probe = fd_lock::RwLock::new(file);
    let locked = match probe.try_read() {
        Ok(_shared) => false,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
        Err(e) => return Err(e),
    };
    let file = probe.into_inner();
    let holder = if locked {
        Holder::Running(read_pid_from(&file))
    } else {
        Holder::NotRunning
    };
    Ok((holder, meta.uid()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_naming_the_pid_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pid");
        let mut first = PidFile::acquire(&path).unwrap();
        first.commit();
        assert_eq!(
            holder(&path).unwrap(),
            Holder::Running(Some(std::process::id()))
        );
        match PidFile::acquire(&path) {
            Err(Error::AlreadyRunning { pid, .. }) => {
                assert_eq!(pid, std::process::id().to_string())
            }
            other => panic!("expected AlreadyRunning, got {:?}", other.map(|_| ())),
        }
        drop(first);
        assert_eq!(holder(&path).unwrap(), Holder::NotRunning);
        let _again = PidFile::acquire(&path).unwrap();
    }

    #[test]
    fn an_uncommitted_file_is_removed_on_drop_with_its_status_but_not_one_found_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pid");
        let status = status::path_for(&path);
        let created = PidFile::acquire(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        fs::write(&status, "pid=1\n").unwrap();
        drop(created);
        assert!(!path.exists() && !status.exists());

        fs::write(&path, "999999\n").unwrap();
        drop(PidFile::acquire(&path).unwrap());
        assert!(path.exists(), "a file it did not create is kept");
    }

    #[test]
    fn a_symbolic_link_is_refused_and_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (path, victim) = (dir.path().join("x.pid"), dir.path().join("victim"));
        fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let message = PidFile::acquire(&path).err().unwrap().to_string();
        assert!(message.contains("symbolic link"), "{message}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert!(holder(&path).is_err(), "a control command refuses it too");
    }
}
