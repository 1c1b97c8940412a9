//! Keeping the long-lived processes small. The anchor and the supervisors
//! run a few code paths of a 4 MB binary and of libc, but the kernel maps
//! file pages around each one touched (fault-around), so most of both
//! files' code and read-only data would count in their resident set. Right
//! after start, each drops the file pages it has mapped and never wrote,
//! and asks for no fault-around: from then on only what it uses is
//! resident. The pages stay in the page cache, shared; nothing is read from
//! disk again.

use std::ffi::c_void;

/// Trims the resident set of this process to the file pages it uses.
/// Best effort: a mapping that cannot be advised is left as it is.
pub fn trim() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    for (addr, len) in unwritten_file_mappings(&smaps) {
        // SAFETY: the range is a whole private, read-only file mapping of
        // this process in which no page was ever copied on write (none is
        // anonymous, swapped out or a private huge page, as
        // /proc/self/smaps lists it), so every page mapped there is the
        // page cache's page of the file. MADV_RANDOM only changes how later
        // faults read ahead. MADV_DONTNEED only removes those pages from
        // this process's page tables; the next access maps the same page
        // cache pages again, so nothing anyone reads there changes. The
        // anchor and the supervisors trim while single-threaded, and load
        // no library, so no page is copied between the read and the call.
        // (Relocated read-only data, RELRO, has copied pages: it is left
        // alone, as dropping it would bring back the unrelocated bytes.)
        unsafe {
            libc::madvise(addr, len, libc::MADV_RANDOM);
            libc::madvise(addr, len, libc::MADV_DONTNEED);
        }
    }
}

/// The private, read-only file mappings (code, read-only data) in `smaps`
/// of which no page was ever copied on write: address and length of each.
/// A copied page shows as `Anonymous` while resident, as `Swap` once
/// swapped out (and a private huge page as `Private_Hugetlb`): all three
/// must be zero.
fn unwritten_file_mappings(smaps: &str) -> Vec<(*mut c_void, usize)> {
    let mut found = Vec::new();
    // The mapping being read: its range, if it qualifies so far.
    let mut current: Option<(usize, usize)> = None;
    let mut finish = |current: &mut Option<(usize, usize)>| {
        if let Some((start, end)) = current.take() {
            found.push((start as *mut c_void, end - start));
        }
    };
    for line in smaps.lines() {
        if let Some((key, value)) = line.split_once(':') {
            if !key.contains(' ') && !key.contains('-') {
                // A field of the current mapping, `Key:   N kB`.
                if matches!(key, "Anonymous" | "Swap" | "Private_Hugetlb") {
                    let kb = value.trim().trim_end_matches("kB").trim();
                    if kb != "0" {
                        current = None;
                    }
                }
                continue;
            }
        }
        // A mapping's header line: `start-end perms offset dev inode [path]`.
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
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        finish(&mut current);
        current = (inode != "0" && matches!(perms, "r-xp" | "r--p")).then_some((start, end));
    }
    finish(&mut current);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unwritten_read_only_file_mappings_are_dropped() {
        let smaps = "\
1000-3000 r--p 00000000 08:01 42 /bin/host
Rss:                   8 kB
Anonymous:             0 kB
3000-5000 r-xp 00002000 08:01 42 /bin/host
Anonymous:             0 kB
5000-6000 r--p 00004000 08:01 42 /bin/host
Anonymous:             4 kB
6000-7000 rw-p 00005000 08:01 42 /bin/host
Anonymous:             0 kB
7000-8000 r--p 00000000 00:00 0
Anonymous:             0 kB
8000-9000 r--p 00006000 08:01 42 /bin/host
Anonymous:             0 kB
Swap:                  4 kB
9000-a000 r--p 00007000 08:01 42 /bin/host
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd mr mw me
";
        let found: Vec<(usize, usize)> = unwritten_file_mappings(smaps)
            .into_iter()
            .map(|(a, l)| (a as usize, l))
            .collect();
        assert_eq!(
            found,
            [(0x1000, 0x2000), (0x3000, 0x2000), (0x9000, 0x1000)]
        );
    }
}
