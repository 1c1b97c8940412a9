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
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
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
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut bytes)
            .map_err(|e| bad(format!("cannot read: {e}")))?;
        check_elf(&bytes).map_err(|problem| bad(problem.into()))?;

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

/// Checks that `bytes` is a whole 64-bit little-endian ELF shared library:
/// the header says so, and every program header and segment lies inside the
/// file. (dlopen maps a truncated library without complaint, and the first
/// access past its end kills the process with SIGBUS.)
fn check_elf(bytes: &[u8]) -> Result<(), &'static str> {
    const NOT_A_LIBRARY: &str = "is not a shared library (no ELF header); pass the .so that cargo builds for a cdylib crate";
    const TRUNCATED: &str =
        "is truncated or corrupt (its ELF headers point past the end of the file); rebuild it";
    if bytes.len() < 64 || !bytes.starts_with(ELF_MAGIC) {
        return Err(NOT_A_LIBRARY);
    }
    if bytes[4] != ELFCLASS64 || bytes[5] != ELFDATA2LSB {
        return Err("is an ELF file for another kind of machine (not 64-bit little-endian)");
    }
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if u16_at(16) != Some(ET_DYN) {
        return Err("is an ELF file but not a shared library; build the plugin with crate-type = [\"cdylib\"]");
    }
    let len = bytes.len() as u64;
    let (phoff, phentsize, phnum) = (
        u64_at(32).ok_or(TRUNCATED)?,
        u16_at(54).ok_or(TRUNCATED)?,
        u16_at(56).ok_or(TRUNCATED)?,
    );
    let table_end = u64::from(phentsize)
        .checked_mul(u64::from(phnum))
        .and_then(|size| size.checked_add(phoff));
    if table_end.is_none_or(|end| end > len) || phentsize < 56 {
        return Err(TRUNCATED);
    }
    for i in 0..u64::from(phnum) {
        let header = (phoff + i * u64::from(phentsize)) as usize;
        let (offset, filesz) = (
            u64_at(header + 8).ok_or(TRUNCATED)?,
            u64_at(header + 32).ok_or(TRUNCATED)?,
        );
        if offset.checked_add(filesz).is_none_or(|end| end > len) {
            return Err(TRUNCATED);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_elf;

    #[test]
    fn the_host_binary_is_elf_but_not_a_library_and_truncation_is_caught() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries are position-independent executables: ET_DYN too,
        // so they pass the type check; cutting one short must not.
        assert!(check_elf(&exe).is_ok());
        assert!(check_elf(&exe[..4096]).unwrap_err().contains("truncated"));
        assert!(check_elf(
            b"not an elf file at all, just some text that is long enough to be read"
        )
        .unwrap_err()
        .contains("not a shared library"));
    }
}
