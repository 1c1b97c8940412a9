//! The plugin snapshot: each generation copies the plugin file once, at
//! start, into a sealed in-memory file, and its workers load that copy.
//!
//! So a plugin rebuilt in place never changes or crashes running workers
//! (the linker may rewrite the file they would otherwise have mapped), a
//! respawned worker runs the same code as its siblings, and each worker
//! loads a file glibc has never seen in that process. The supervisor copies
//! bytes; it never loads the plugin (abi_stable caches one root module per
//! process and never unloads it).

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

use crate::error::Error;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ET_DYN: u16 = 3;

/// A sealed in-memory copy of the plugin file.
#[derive(Debug)]
pub struct Snapshot {
    source: PathBuf,
    memfd: OwnedFd,
}

impl Snapshot {
    /// Copies the plugin at `path`, after checking that it is a shared library.
    pub fn take(path: &Path) -> Result<Snapshot, Error> {
        let bad = |problem: String| Error::plugin(path, problem);
        let mut file = File::open(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                bad("no such file (build it first, e.g. `cargo build --release -p NAME`, or fix --plugin)".into())
            }
            _ => bad(format!("cannot open: {e}")),
        })?;
        let meta = file
            .metadata()
            .map_err(|e| bad(format!("cannot stat: {e}")))?;
        if meta.is_dir() {
            return Err(bad(
                "is a directory; pass the library file, e.g. target/release/libNAME.so".into(),
            ));
        }
        let mut header = [0u8; 18];
        let is_elf = file.read_exact(&mut header).is_ok() && header.starts_with(ELF_MAGIC);
        if !is_elf {
            return Err(bad("is not a shared library (no ELF header); pass the .so that cargo builds for a cdylib crate".into()));
        }
        let e_type = match header[5] {
            2 => u16::from_be_bytes([header[16], header[17]]),
            _ => u16::from_le_bytes([header[16], header[17]]),
        };
        if e_type != ET_DYN {
            return Err(bad("is an ELF file but not a shared library; build the plugin with crate-type = [\"cdylib\"]".into()));
        }

        let memfd = memfd_create(
            c"host-plugin",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(|e| bad(format!("cannot create the in-memory snapshot: {e}")))?;
        let mut copy = File::from(memfd);
        let mut file = File::open(path).map_err(|e| bad(format!("cannot reopen: {e}")))?;
        io::copy(&mut file, &mut copy)
            .map_err(|e| bad(format!("cannot copy into the snapshot: {e}")))?;
        let memfd = OwnedFd::from(copy);
        let seals = SealFlag::F_SEAL_SEAL
            | SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_WRITE;
        fcntl(&memfd, FcntlArg::F_ADD_SEALS(seals))
            .map_err(|e| bad(format!("cannot seal the snapshot: {e}")))?;
        Ok(Snapshot {
            source: path.to_owned(),
            memfd,
        })
    }

    /// The plugin file this is a copy of.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// A path that opens the snapshot, valid in this process and its forked children.
    pub fn load_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.memfd.as_raw_fd()))
    }

    pub fn raw_fd(&self) -> RawFd {
        self.memfd.as_raw_fd()
    }
}
