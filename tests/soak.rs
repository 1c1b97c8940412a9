//! Soak: many hot reloads under light load, with the host's footprint
//! sampled at reloads 1, 10, 100, 1000 (those within the count): the
//! supervisor in charge's fds, RSS and threads, the anchor's, and how many
//! processes the host has. Everything must stay flat.
//!
//! CI runs 50 reloads. For the full run:
//!
//! ```text
//! HOST_SOAK_RELOADS=1000 cargo test --release -p host --test soak -- --nocapture
//! ```

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;

const LONG: Duration = Duration::from_secs(30);

/// One process's footprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Footprint {
    fds: usize,
    rss_kib: u64,
    threads: u64,
}

fn footprint(pid: u32) -> Footprint {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Footprint {
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()),
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
    }
}

/// Waits until the pid file names a supervisor other than `old` whose
/// status says it serves; returns it.
fn next_serving(pid_file: &Path, old: u32) -> u32 {
    let status_file = pid_file.with_extension("pid.status");
    eventually("the new generation to serve", LONG, || {
        let pid = pid_in(pid_file).filter(|&p| p != old)?;
        let text = std::fs::read_to_string(&status_file).ok()?;
        (text.contains(&format!("pid={pid}\n")) && text.contains("state=serving")).then_some(pid)
    })
}

#[test]
fn many_reloads_leave_the_footprint_flat() {
    let reloads: u64 = std::env::var("HOST_SOAK_RELOADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50);
    let dir = temp_dir();
    let plugin = build_plugin("hello-http", None, &dir.path().join("libhello.so"));
    let Served {
        host,
        pid_file,
        addr,
    } = serve_plugin(dir.path(), &plugin, &[], &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let client = {
        let (stop, failed) = (Arc::clone(&stop), Arc::clone(&failed));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if http_get(addr).is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let mut supervisor = host.supervisor();
    let mut samples = Vec::new();
    for n in 1..=reloads {
        signal(supervisor, Signal::SIGUSR2);
        supervisor = next_serving(&pid_file, supervisor);
        if [1, 10, 100, 1000].contains(&n) || n == reloads {
            // The old generation drains and exits, and the new one has its
            // standby for the next reload, exec'd and waiting (named so: the
            // supervisor holds descriptors of its own while it execs one),
            // before the sample.
            eventually("one generation left, with its standby", LONG, || {
                let waiting = |p: &u32| comm(*p).as_deref() == Some("host-standby");
                (children(host.pid()) == [supervisor]
                    && standbys(supervisor).iter().filter(|p| waiting(p)).count() == 1)
                    .then_some(())
            });
            // Settled: the same twice in a row (the supervisor closes the
            // previous generation's channel once it sees it hang up).
            let settled = |pid: u32| {
                eventually("a settled footprint", LONG, || {
                    let first = footprint(pid);
                    std::thread::sleep(Duration::from_millis(10));
                    (footprint(pid).fds == first.fds).then_some(first)
                })
            };
            let sample = (
                n,
                settled(supervisor),
                settled(host.pid()),
                host.processes().len(),
            );
            println!(
                "soak reload={:<5} supervisor fds={} rss={}KiB threads={}  anchor fds={} rss={}KiB threads={}  processes={}",
                sample.0,
                sample.1.fds,
                sample.1.rss_kib,
                sample.1.threads,
                sample.2.fds,
                sample.2.rss_kib,
                sample.2.threads,
                sample.3
            );
            samples.push(sample);
        }
    }
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed");

    // From reload 10 on (the first may still be settling): flat fds,
    // threads and process count; RSS within 512 KiB.
    let settled: Vec<_> = samples.iter().filter(|s| s.0 >= 10).collect();
    for s in &settled {
        let first = settled[0];
        assert_eq!(
            (s.1.fds, s.1.threads, s.2.fds, s.2.threads, s.3),
            (
                first.1.fds,
                first.1.threads,
                first.2.fds,
                first.2.threads,
                first.3
            ),
            "footprint at reload {} differs from reload {}",
            s.0,
            first.0
        );
        assert!(
            s.1.rss_kib <= first.1.rss_kib + 512 && s.2.rss_kib <= first.2.rss_kib + 512,
            "RSS grew: {samples:?}"
        );
    }
}
