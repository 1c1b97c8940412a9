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
        // this process that has no anonymous (copied-on-write) page, as
        // /proc/self/smaps lists it: every page in it is the file's own
        // bytes. MADV_RANDOM only changes how later faults read ahead.
        // MADV_DONTNEED drops the pages from this process's page tables;
        // the next access faults the same bytes back from the page cache.
        // A running executable's or library's file cannot be written
        // (ETXTBSY for the binary; the loader's libraries are replaced,
        // not rewritten, by package managers), so nothing anyone reads
        // changes. (Relocated read-only data, RELRO, has anonymous pages:
        // it is left alone, as dropping it would bring back the
        // unrelocated bytes.)
        unsafe {
            libc::madvise(addr, len, libc::MADV_RANDOM);
            libc::madvise(addr, len, libc::MADV_DONTNEED);
        }
    }
}

/// The private, read-only file mappings (code, read-only data) in `smaps`
/// that have no anonymous page: address and length of each.
fn unwritten_file_mappings(smaps: &str) -> Vec<(*mut c_void, usize)> {
    let mut found = Vec::new();
    // The mapping being read: its range, if it qualifies so far.
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        if let Some(anon) = line.strip_prefix("Anonymous:") {
            let anon_kb: u64 = anon
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(u64::MAX);
            if let Some((start, end)) = current.take() {
                if anon_kb == 0 {
                    found.push((start as *mut c_void, end - start));
                }
            }
            continue;
        }
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
        // A mapping's header line: `start-end perms offset dev inode [path]`.
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        current = (inode != "0" && matches!(perms, "r-xp" | "r--p")).then_some((start, end));
    }
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
";
        let found: Vec<(usize, usize)> = unwritten_file_mappings(smaps)
            .into_iter()
            .map(|(a, l)| (a as usize, l))
            .collect();
        assert_eq!(found, [(0x1000, 0x2000), (0x3000, 0x2000)]);
    }
}
