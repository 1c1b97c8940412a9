//! Keeping the long-lived processes small. The anchor and the supervisors
//! run a few code paths of a 3 MB binary and of libc, but the kernel maps
//! file pages around each one touched (fault-around), so most of both
//! files' code would count in their resident set. Right after start, each
//! drops the code pages it has mapped and asks for no fault-around: from
//! then on only the code it runs is resident. The pages stay in the page
//! cache, shared; nothing is read from disk again.

use std::ffi::c_void;

/// Trims the resident set of this process to the file pages it uses.
/// Best effort: a mapping that cannot be advised is left as it is.
pub fn trim() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms), Some(_), Some(_), Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        // Code only (`r-xp`): never written. Read-only data is not safe to
        // drop: RELRO pages were written (relocated) before being made
        // read-only, and their file contents differ from what is mapped.
        if inode == "0" || perms != "r-xp" {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        let (addr, len) = (start as *mut c_void, end - start);
        // SAFETY: the range is a whole private, executable, never-writable
        // file mapping of this process (code), as /proc/self/maps lists it.
        // MADV_RANDOM only changes how later faults read ahead.
        // MADV_DONTNEED drops the pages from this process's page tables;
        // the next access faults the same bytes back from the page cache:
        // code pages are never written (no text relocations in a PIE), and
        // a running executable's file cannot be written (ETXTBSY), so no
        // instruction anyone executes changes.
        unsafe {
            libc::madvise(addr, len, libc::MADV_RANDOM);
            libc::madvise(addr, len, libc::MADV_DONTNEED);
        }
    }
}
