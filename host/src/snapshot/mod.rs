//! The plugin snapshot: each generation copies the plugin file once, at
//! start, into a sealed in-memory file, and its workers load that copy.
//!
//! So a plugin rebuilt in place never changes or crashes running workers
//! (the linker may rewrite the file they would otherwise have mapped), a
//! respawned worker runs the same code as its siblings, and each worker
//! loads a file glibc has never seen in that process. The supervisor copies
//! bytes; it never loads the plugin (abi_stable caches one root module per
//! process and never unloads it).
//!
//! The plugin is code the host runs, so, as sshd's `StrictModes` does for
//! its key files, the snapshot is taken only from a file nobody else can
//! change: a regular file owned by the user the host runs as or by root,
//! not writable by group or others, in a directory that is the same. Only
//! the plugin's own directory is checked, not the ones above it.
//! `--insecure-plugin-path` skips the check. It runs for the first start
//! and for every reload, since each generation takes its own snapshot.

use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

use crate::error::{self, shown, Error};

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

/// Seals `memfd` against every change: F_SEAL_WRITE, or, if the kernel
/// gives up waiting for its pages (EBUSY), F_SEAL_FUTURE_WRITE.
///
/// F_SEAL_WRITE first waits, up to about 150 ms, for every page to be free
/// of extra references, then fails with EBUSY. A kernel thread that tries to
/// reclaim pages (DAMON's, on the machine where this was traced) holds such
/// references for a moment, and for longer when it is starved of CPU: a
/// reload under heavy load failed that way once in about 300. What
/// F_SEAL_WRITE adds over F_SEAL_FUTURE_WRITE (denying writable shared
/// mappings that exist already, and writes in flight through pinned pages)
/// cannot apply here: nothing ever mapped this memfd, and no other process
/// holds it. F_SEAL_WRITE stays the first choice because older kernels
/// also refuse, under F_SEAL_FUTURE_WRITE, the forced writes a debugger or
/// a uprobe makes to a private mapping (a breakpoint in plugin code), and
/// kernels before 5.1 do not know it.
fn seal(memfd: &OwnedFd) -> nix::Result<()> {
    let sealed = SealFlag::F_SEAL_SEAL | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW;
    match fcntl(
        memfd,
        FcntlArg::F_ADD_SEALS(sealed | SealFlag::F_SEAL_WRITE),
    ) {
        Err(nix::errno::Errno::EBUSY) => {
            tracing::debug!("pages of the snapshot are busy: sealing it for future writes");
            fcntl(
                memfd,
                FcntlArg::F_ADD_SEALS(sealed | SealFlag::F_SEAL_FUTURE_WRITE),
            )
            .map(drop)
        }
        result => result.map(drop),
    }
}

/// An in-memory file with its pages allocated for a plugin's copy, made
/// ahead of [`Snapshot::take`] (by a standby, see `reload::Standby`):
/// allocating the pages is most of what a copy costs (for hello-http,
/// 0.26 of 0.58 ms, and the copy into allocated pages 0.16 ms).
pub struct Room(OwnedFd);

impl Room {
    /// Room for the plugin at `path` as it is now; `None` if it cannot be
    /// read (the snapshot will say why) or the room cannot be made.
    pub fn reserve(path: &Path) -> Option<Room> {
        let file = File::open(path).ok()?;
        let len = file.metadata().ok()?.len();
        let needed = loaded_extent(&file, len).unwrap_or(len);
        let memfd = new_memfd().ok()?;
        nix::fcntl::posix_fallocate(&memfd, 0, i64::try_from(needed).ok()?).ok()?;
        Some(Room(memfd))
    }
}

fn new_memfd() -> nix::Result<OwnedFd> {
    memfd_create(
        c"host-plugin",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
}

impl Snapshot {
    /// Copies the plugin at `path` (into `room`, if given), after checking
    /// that nobody else can change it (unless `insecure`, see the module
    /// docs) and that it is a shared library.
    pub fn take(path: &Path, insecure: bool, room: Option<Room>) -> Result<Snapshot, Error> {
        let bad = |problem: String| Error::plugin(path, problem);
        let file = File::open(path).map_err(|e| match e.kind() {
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
        if !meta.is_file() {
            return Err(bad(
                "is not a regular file; pass the library file, e.g. target/release/libNAME.so"
                    .into(),
            ));
        }
        if !insecure {
            check_trusted(path, &meta)?;
        }
        let memfd = match room {
            Some(Room(memfd)) => memfd,
            None => new_memfd()
                .map_err(|e| bad(format!("cannot create the in-memory snapshot: {e}")))?,
        };
        // Only what the loader maps: the ELF and program headers and the
        // segments. Section headers, symbol tables and debug information
        // past them are never read by dlopen, and for a large plugin they
        // are most of the file. (If the headers cannot be read here, the
        // whole file is copied and the check below says why.)
        let needed = loaded_extent(&file, meta.len()).unwrap_or(meta.len());
        // One copy, in the kernel (copy_file_range or sendfile); the checks
        // read only headers.
        let mut copy = File::from(memfd);
        let len = io::copy(&mut (&file).take(needed), &mut copy)
            .map_err(|e| bad(format!("cannot copy into the snapshot: {e}")))?;
        // A room made for a larger plugin keeps no bytes past the copy.
        copy.set_len(len)
            .map_err(|e| bad(format!("cannot size the snapshot: {e}")))?;
        // The copy itself must hold together: the file may have been
        // rewritten between the two reads.
        check_elf(&copy, len).map_err(|problem| bad(problem.into()))?;
        let memfd = OwnedFd::from(copy);
        seal(&memfd).map_err(|e| bad(format!("cannot seal the snapshot: {e}")))?;
        Ok(Snapshot {
            source: path.to_owned(),
            memfd,
        })
    }

    /// The snapshot of `source` that will be copied into `room`, for a
    /// worker forked before the copy (see `supervisor::pool::PreparedWorker`),
    /// which holds the same in-memory file and loads it only once told the
    /// copy is made and sealed.
    pub fn pending(source: &Path, room: Room) -> Snapshot {
        Snapshot {
            source: source.to_owned(),
            memfd: room.0,
        }
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

/// Checks that nobody but the user the host runs as, or root, can change
/// the plugin at `path` (whose metadata is `file`) or replace it in its
/// directory.
fn check_trusted(path: &Path, file: &Metadata) -> Result<(), Error> {
    const OVERRIDE: &str = "or pass --insecure-plugin-path to load it anyway";
    let me = nix::unistd::geteuid().as_raw();
    if let Err(problem) = private(file, me) {
        let (who, fix) = match problem {
            Problem::Owner(_) => ("its owner", "make it yours or root's (`chown`)".to_owned()),
            Problem::Writable(_) => (
                "whoever can write it",
                format!("fix it with `chmod go-w {}`", shown(path)),
            ),
        };
        return Err(Error::plugin(
            path,
            format!("{problem}: {who} can change the code the host runs; {fix}, {OVERRIDE}"),
        ));
    }
    let resolved = fs::canonicalize(path)
        .map_err(|e| Error::plugin(path, format!("cannot resolve its path: {e}")))?;
    let Some(dir) = resolved.parent() else {
        return Ok(());
    };
    let dir_meta = fs::metadata(dir)
        .map_err(|e| Error::plugin(path, format!("cannot stat its directory: {e}")))?;
    if let Err(problem) = private(&dir_meta, me) {
        let (who, fix) = match problem {
            Problem::Owner(_) => (
                "its owner",
                "make the directory yours or root's (`chown`)".to_owned(),
            ),
            Problem::Writable(_) => (
                "whoever can write there",
                format!("`chmod go-w {}`", shown(dir)),
            ),
        };
        return Err(Error::plugin(
            path,
            format!(
                "its directory {} {problem}: {who} can replace the plugin (only the plugin's own directory is checked, not those above it); move the plugin to a directory only you or root can write, or {fix}, {OVERRIDE}",
                shown(dir)
            ),
        ));
    }
    Ok(())
}

/// Why a file or directory is not private to its owner.
#[derive(Clone, Copy, Debug)]
enum Problem {
    /// Owned by this uid, neither the host's user nor root.
    Owner(u32),
    /// Writable by group or others: these are its mode bits.
    Writable(u32),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Owner(uid) => {
                write!(f, "is owned by {}, neither you nor root", error::user(*uid))
            }
            Problem::Writable(mode) => {
                write!(f, "is writable by group or others (mode {mode:04o})")
            }
        }
    }
}

/// Checks that `meta` is owned by `me` or root and not writable by group
/// or others.
fn private(meta: &Metadata, me: u32) -> Result<(), Problem> {
    if meta.uid() != 0 && meta.uid() != me {
        return Err(Problem::Owner(meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(Problem::Writable(meta.mode() & 0o7777));
    }
    Ok(())
}

/// Checks that `file` (of `len` bytes) is a whole 64-bit little-endian ELF
/// shared library: the header says so, and every program header and
/// segment lies inside the file. (dlopen maps a truncated library without
/// complaint, and the first access past its end kills the process with
/// SIGBUS.)
fn check_elf(file: &File, len: u64) -> Result<(), &'static str> {
    loaded_extent(file, len).map(|_| ())
}

/// The length of the part of `file` (of `len` bytes) that the loader
/// reads: the headers and every segment; an error if the file is not a
/// whole library (see [`check_elf`]).
fn loaded_extent(file: &File, len: u64) -> Result<u64, &'static str> {
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
    let table_size = u64::from(phentsize) * u64::from(phnum);
    let table = read(phoff, table_size).ok_or(TRUNCATED)?;
    let mut extent = phoff + table_size;
    for entry in table.chunks_exact(usize::from(phentsize)) {
        let (offset, filesz) = (u64_at(entry, 8), u64_at(entry, 32));
        match offset.checked_add(filesz) {
            Some(end) if end <= len => extent = extent.max(end),
            _ => return Err(TRUNCATED),
        }
    }
    Ok(extent.max(64))
}

#[cfg(test)]
mod tests;
