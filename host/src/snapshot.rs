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
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
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
        let memfd = memfd_create(
            c"host-plugin",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(|e| bad(format!("cannot create the in-memory snapshot: {e}")))?;
        // One copy, in the kernel (sendfile); the checks read only headers.
        let mut copy = File::from(memfd);
        let len = io::copy(&mut file, &mut copy)
            .map_err(|e| bad(format!("cannot copy into the snapshot: {e}")))?;
        check_elf(&copy, len).map_err(|problem| bad(problem.into()))?;
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

/// Checks that `file` (of `len` bytes) is a whole 64-bit little-endian ELF
/// shared library: the header says so, and every program header and
/// segment lies inside the file. (dlopen maps a truncated library without
/// complaint, and the first access past its end kills the process with
/// SIGBUS.)
fn check_elf(file: &File, len: u64) -> Result<(), &'static str> {
    const NOT_A_LIBRARY: &str =
        "is not a shared library (no ELF header); pass the .so that cargo builds for a cdylib crate";
    const TRUNCATED: &str =
        "is truncated or corrupt (its ELF headers point past the end of the file); rebuild it";
    let read = |at: u64, size: u64| -> Option<Vec<u8>> {
        let end = at.checked_add(size).filter(|&end| end <= len)?;
        let mut buf = vec![0; usize::try_from(end - at).ok()?];
        file.read_exact_at(&mut buf, at).ok()?;
        Some(buf)
    };
    let header = read(0, 64).ok_or(NOT_A_LIBRARY)?;
    if !header.starts_with(ELF_MAGIC) {
        return Err(NOT_A_LIBRARY);
    }
    if header[4] != ELFCLASS64 || header[5] != ELFDATA2LSB {
        return Err("is an ELF file for another kind of machine (not 64-bit little-endian)");
    }
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u64_at =
        |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    if u16_at(&header, 16) != ET_DYN {
        return Err("is an ELF file but not a shared library; build the plugin with crate-type = [\"cdylib\"]");
    }
    let (phoff, phentsize, phnum) = (
        u64_at(&header, 32),
        u16_at(&header, 54),
        u16_at(&header, 56),
    );
    if phentsize < 56 {
        return Err(TRUNCATED);
    }
    let table = read(phoff, u64::from(phentsize) * u64::from(phnum)).ok_or(TRUNCATED)?;
    for entry in table.chunks_exact(usize::from(phentsize)) {
        let (offset, filesz) = (u64_at(entry, 8), u64_at(entry, 32));
        if offset.checked_add(filesz).is_none_or(|end| end > len) {
            return Err(TRUNCATED);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_elf;
    use std::io::Write;

    fn check(bytes: &[u8]) -> Result<(), &'static str> {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        check_elf(&file, bytes.len() as u64)
    }

    #[test]
    fn whole_libraries_pass_and_truncated_or_foreign_files_do_not() {
        // Test binaries are position-independent executables: ET_DYN, like a library.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(check(&exe).is_ok());
        assert!(check(&exe[..4096]).unwrap_err().contains("truncated"));
        assert!(
            check(b"not an elf file at all, just some text that is long enough to be read")
                .unwrap_err()
                .contains("not a shared library")
        );
        assert!(check(b"\x7fELF")
            .unwrap_err()
            .contains("not a shared library"));
    }
}
