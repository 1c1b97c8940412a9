//! The pid file: locked (flock, through fd-lock) for as long as a live
//! supervisor owns it, and holding that supervisor's pid.
//!
//! The lock belongs to the open file description, not to a process. On hot
//! reload the descriptor is inherited by the new generation, so old and new
//! hold the same lock and it never lapses; it is released by the kernel when
//! the last supervisor holding it exits. Workers close it right after fork.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::Error;

/// A pid file whose lock this process holds.
pub struct PidFile {
    path: PathBuf,
    file: File,
}

impl PidFile {
    /// Opens (creating it if needed) and locks the pid file, then writes our
    /// pid. A file left by a dead host (no lock holder) is taken over.
    pub fn acquire(path: &Path) -> Result<PidFile, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(|e| Error::pid_file(path, "cannot open", e))?;
        if !file
            .metadata()
            .map_err(|e| Error::pid_file(path, "cannot stat", e))?
            .file_type()
            .is_file()
        {
            return Err(Error::pid_file(
                path,
                "is not a regular file",
                io::ErrorKind::InvalidInput.into(),
            ));
        }
        lock(&file).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock => Error::AlreadyRunning {
                path: path.to_owned(),
                pid: read_pid_from(&file).map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
            },
            _ => Error::pid_file(path, "cannot lock", e),
        })?;
        let pid_file = PidFile {
            path: path.to_owned(),
            file,
        };
        pid_file
            .write_pid()
            .map_err(|e| Error::pid_file(path, "cannot write", e))?;
        Ok(pid_file)
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

impl AsFd for PidFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
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
    let file = File::open(path)?;
    let probe = fd_lock::RwLock::new(file);
    let locked = match probe.try_read() {
        Ok(_shared) => false,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
        Err(e) => return Err(e),
    };
    let file = probe.into_inner();
    Ok(if locked {
        Holder::Running(read_pid_from(&file))
    } else {
        Holder::NotRunning
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_naming_the_pid_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pid");
        let first = PidFile::acquire(&path).unwrap();
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
}
