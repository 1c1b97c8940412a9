//! The ELF checks, the extent copied, and the seals.

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

#[test]
fn the_loaded_extent_ends_with_the_last_segment_not_the_file() {
    let mut exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&exe).unwrap();
    let extent = super::loaded_extent(&file, exe.len() as u64).unwrap();
    assert!(extent <= exe.len() as u64);
    // Padding after the library changes nothing; what is loaded still checks.
    exe.extend(std::iter::repeat_n(0xa5, 1 << 20));
    file.write_all(&[0xa5; 1 << 20]).unwrap();
    assert_eq!(super::loaded_extent(&file, exe.len() as u64), Ok(extent));
    assert!(check(&exe[..extent as usize]).is_ok());
}

/// Sealed against every change, whether copied into a room or not.
#[test]
fn the_snapshot_cannot_be_changed() {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    let exe = std::env::current_exe().unwrap();
    for room in [None, super::Room::reserve(&exe)] {
        let snapshot = super::Snapshot::take(&exe, true, room).unwrap();
        let seals = fcntl(&snapshot.memfd, FcntlArg::F_GET_SEALS).unwrap();
        let seals = SealFlag::from_bits_truncate(seals);
        let want = SealFlag::F_SEAL_SEAL
            | SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_WRITE;
        assert_eq!(seals, want);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(snapshot.load_path())
            .unwrap();
        assert!(file.write_all(b"changed").is_err());
        assert!(file.set_len(1).is_err());
    }
}

/// Pages the kernel will not let go of in time (here, a writable shared
/// mapping: F_SEAL_WRITE refuses at once with EBUSY) still get sealed,
/// for future writes.
#[test]
fn busy_pages_are_sealed_for_future_writes() {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
    use std::num::NonZeroUsize;
    let memfd = super::new_memfd().unwrap();
    let mut file = std::fs::File::from(memfd);
    file.write_all(&[7; 4096]).unwrap();
    let memfd = std::os::fd::OwnedFd::from(file);
    let len = NonZeroUsize::new(4096).unwrap();
    // SAFETY: a fresh shared mapping of a memfd this test owns; nothing
    // else uses it, and it is unmapped below.
    let map = unsafe {
        mmap(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            &memfd,
            0,
        )
    }
    .unwrap();
    super::seal(&memfd).unwrap();
    let seals = SealFlag::from_bits_truncate(fcntl(&memfd, FcntlArg::F_GET_SEALS).unwrap());
    assert!(seals.contains(SealFlag::F_SEAL_FUTURE_WRITE | SealFlag::F_SEAL_SEAL));
    assert!(!seals.contains(SealFlag::F_SEAL_WRITE));
    // SAFETY: `map` is the mapping made above, of `len` bytes, unused since.
    unsafe { munmap(map, len.get()) }.unwrap();
    let mut file = std::fs::File::from(memfd);
    assert!(file.write_all(b"changed").is_err());
}
