//! Reload benchmark: hello-http under load from C concurrent clients (a new
//! connection per request) while the host is hot-reloaded R times.
//!
//! ```text
//! cargo bench -p host --bench reload -- [--clients 8] [--reloads 100] [--workers 1]
//! ```
//!
//! Prints requests made, requests failed (refused, reset, timed out, short
//! reply), reload latency (SIGUSR2 to the first reply from the new
//! generation) p50/p95/max, and the RSS and open descriptors of the
//! supervisor in charge and of the anchor, before the first reload and
//! after the last.

mod support;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::*;

const DEADLINE: Duration = Duration::from_secs(30);

struct Options {
    clients: usize,
    reloads: u64,
    workers: usize,
}

fn options() -> Options {
    let mut o = Options {
        clients: 8,
        reloads: 100,
        workers: 1,
    };
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().and_then(|v| v.parse::<u64>().ok());
        match (flag.as_str(), value) {
            ("--clients", Some(v)) => o.clients = v as usize,
            ("--reloads", Some(v)) => o.reloads = v,
            ("--workers", Some(v)) => o.workers = v as usize,
            _ => {
                eprintln!("usage: cargo bench -p host --bench reload -- [--clients N] [--reloads N] [--workers N]");
                std::process::exit(2);
            }
        }
    }
    o
}

#[derive(Default)]
struct Tally {
    requests: u64,
    failures: HashMap<&'static str, u64>,
    /// When each generation first answered.
    first_reply: HashMap<u64, Instant>,
}

/// One request on a new connection; the generation that answered, or why it failed.
fn request(addr: SocketAddr) -> Result<u64, &'static str> {
    let classify = |e: std::io::Error| match e.kind() {
        ErrorKind::ConnectionRefused => "refused",
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            "reset"
        }
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timed out",
        _ => "other error",
    };
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(classify)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(classify)?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .map_err(classify)?;
    let mut reply = Vec::with_capacity(256);
    conn.read_to_end(&mut reply).map_err(classify)?;
    let reply = String::from_utf8_lossy(&reply);
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or("short reply")?;
    if !reply.starts_with("HTTP/1.1 200 OK") || !body.ends_with('\n') {
        return Err("short reply");
    }
    let last = body.lines().last().ok_or("short reply")?;
    last.split_whitespace()
        .find_map(|w| w.strip_prefix("gen=")?.parse().ok())
        .ok_or("short reply")
}

/// VmRSS in KiB and the number of open descriptors of `pid`.
fn footprint(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn wait_serving(status_file: &Path, pid_file: &Path, old: u32) -> u32 {
    eventually("the new generation to serve", DEADLINE, || {
        let pid = pid_in(pid_file).filter(|&p| p != old)?;
        let text = std::fs::read_to_string(status_file).ok()?;
        (text.contains(&format!("pid={pid}\n")) && text.contains("state=serving")).then_some(pid)
    })
}

fn main() {
    let o = options();
    let dir = temp_dir();
    let plugin = build_plugin("hello-http", None, &dir.path().join("libhello.so"));
    let pid_file = dir.path().join("bench.pid");
    let status_file = dir.path().join("bench.pid.status");
    let workers = o.workers.to_string();
    let mut host = start_host(
        dir.path(),
        &[
            "--plugin",
            plugin.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--workers",
            &workers,
        ],
        &[("HOST_LOG", "info")],
    );
    host.wait_serving();
    let addr = host.listen_addr();
    println!(
        "reload benchmark: {} clients (new connection per request), {} reloads, {} workers, host {}",
        o.clients,
        o.reloads,
        o.workers,
        host_bin().display()
    );

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..o.clients)
        .map(|_| {
            let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let outcome = request(addr);
                    let now = Instant::now();
                    let mut t = tally.lock().unwrap();
                    t.requests += 1;
                    match outcome {
                        Ok(generation) => {
                            t.first_reply.entry(generation).or_insert(now);
                        }
                        Err(kind) => *t.failures.entry(kind).or_default() += 1,
                    }
                }
            })
        })
        .collect();

    let anchor = host.pid();
    let mut supervisor = host.supervisor();
    std::thread::sleep(Duration::from_millis(200)); // warm up
    let before = footprint(supervisor);
    let anchor_before = footprint(anchor);
    let mut latencies = Vec::with_capacity(o.reloads as usize);
    for generation in 2..o.reloads + 2 {
        let triggered = Instant::now();
        signal(supervisor, Signal::SIGUSR2);
        let answered = eventually(
            &format!("a reply from generation {generation}"),
            DEADLINE,
            || tally.lock().unwrap().first_reply.get(&generation).copied(),
        );
        latencies.push(answered.saturating_duration_since(triggered));
        supervisor = wait_serving(&status_file, &pid_file, supervisor);
    }
    std::thread::sleep(Duration::from_millis(200)); // let the last old generation go
    let after = footprint(supervisor);
    let anchor_after = footprint(anchor);
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }

    signal(anchor, Signal::SIGTERM);
    let _ = host.wait_exit(DEADLINE);

    let t = tally.lock().unwrap();
    let failed: u64 = t.failures.values().sum();
    latencies.sort();
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    println!("requests: {}", t.requests);
    println!("failed:   {failed} {:?}", t.failures);
    println!(
        "reload latency (SIGUSR2 to first reply from the new generation): p50 {}  p95 {}  max {}",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 95.0)),
        ms(*latencies.last().unwrap())
    );
    println!(
        "supervisor RSS: {} KiB before, {} KiB after",
        before.0, after.0
    );
    println!(
        "supervisor open fds: {} before, {} after",
        before.1, after.1
    );
    println!(
        "anchor RSS: {} KiB before, {} KiB after; open fds: {} before, {} after",
        anchor_before.0, anchor_after.0, anchor_before.1, anchor_after.1
    );
}
