//! Reload benchmark: the host running hello-http, and beside it a peer
//! built on the `ecdysis` crate (`tests/peers/ecdysis-hello`, a hello HTTP
//! server that upgrades itself by fork/exec with inherited listeners), each
//! under the same load in the same run: C client threads, each opening a
//! new connection per request, while the server is reloaded R times.
//!
//! ```text
//! cargo bench -p host --bench reload -- [--clients 8] [--reloads 100] [--workers 1]
//!     [--plugin-size-mb N] [--peer true|false]
//! ```
//!
//! Each server, in turn: start it, warm up, run [`BASELINE`] without any
//! reload (the baseline phase), then reload it R times (SIGUSR2 to the
//! host's supervisor in charge, SIGHUP to the peer's newest process), each
//! time waiting for the new generation to answer (and, for the host, to
//! say it serves), then [`SETTLE`] more. Every request records when it
//! started, when its first reply byte came and when it ended.
//!
//! Figures, per server (the host's with their ratio host / ecdysis):
//!
//! - requests, and failed ones (refused, reset, timed out, short reply);
//! - request latency (start to end) p50 / p99 / max over the whole run;
//! - the same for the requests started within [`AFTER_SIGNAL`] of a reload
//!   signal (p99, max);
//! - reload latency: the signal to the end of the first reply from the new
//!   generation (p50 / p95 / max);
//! - hand-over: the signal to the old generation's last first reply byte
//!   (from then on only the new one takes connections; with many workers
//!   the first reply from the new code comes well before it);
//! - no-accept gap: per reload, the longest interval, from the signal until
//!   the new generation's first reply byte, in which no connection got its
//!   first reply byte; beside it the same over windows of equal length laid
//!   in the baseline phase (the pause a client would feel anyway);
//! - the share of the machine's CPU time left idle in the baseline phase:
//!   near 0 % the clients and the old generation keep every CPU busy, and
//!   a reload's processes get a CPU only by their fair share of it;
//! - host: RSS and open descriptors of the supervisor in charge, of the
//!   anchor and of the standby (the next generation, waiting) before the
//!   first reload and after the last; ecdysis: those of its newest process.
//!
//! `--workers N` runs the host with N workers and the peer with N tokio
//! worker threads; `--plugin-size-mb N` pads the copy of hello-http the host
//! loads to N MB (bytes appended after the ELF content); `--peer false`
//! runs the host alone. The report ends with the issue's targets, met or
//! not, and one `summary:` line of key=value pairs.
//!
//! To see where a reload's time goes: `BENCH_GAPS=1` prints, per reload,
//! when the signal was sent (Unix time, as in the host's log), when the
//! new code first replied and where the longest gap lay (and
//! writes `reload N signal` to the kernel's `trace_marker`, for a
//! `sched_switch` trace); `BENCH_HOST_LOG=debug BENCH_HOST_LOG_COPY=FILE`
//! keeps the host's log, with each step's timestamp and, for the snapshot
//! and the worker's load, its time on a CPU and waiting for one.

mod support;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use support::*;

const DEADLINE: Duration = Duration::from_secs(30);
/// Load before anything is measured.
const WARM_UP: Duration = Duration::from_millis(300);
/// The phase without reloads that the no-accept gaps are compared with.
const BASELINE: Duration = Duration::from_secs(2);
/// Wait after a new generation serves, before the next reload signal.
const SETTLE: Duration = Duration::from_millis(150);
/// Requests started this long after a reload signal count as "during a reload".
const AFTER_SIGNAL: Duration = Duration::from_millis(100);
/// Timeout of each connect, write and read of a request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

struct Options {
    clients: usize,
    reloads: u64,
    workers: usize,
    plugin_size_mb: u64,
    peer: bool,
}

fn options() -> Options {
    let mut o = Options {
        clients: 8,
        reloads: 100,
        workers: 1,
        plugin_size_mb: 0,
        peer: true,
    };
    let usage = || -> ! {
        eprintln!(
            "usage: cargo bench -p host --bench reload -- [--clients N] [--reloads N] [--workers N] [--plugin-size-mb N] [--peer true|false]"
        );
        std::process::exit(2)
    };
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some(value) = it.next() else { usage() };
        let number = || value.parse::<u64>().ok().filter(|&v| v > 0);
        match flag.as_str() {
            "--clients" => o.clients = number().unwrap_or_else(|| usage()) as usize,
            "--reloads" => o.reloads = number().unwrap_or_else(|| usage()),
            "--workers" => o.workers = number().unwrap_or_else(|| usage()) as usize,
            "--plugin-size-mb" => o.plugin_size_mb = number().unwrap_or_else(|| usage()),
            "--peer" => o.peer = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    o
}

/// One request on a new connection.
struct Sample {
    start: Instant,
    /// When the first byte of the reply came, if one came.
    first_byte: Option<Instant>,
    end: Instant,
    /// The generation and pid that answered, or why the request failed.
    outcome: Result<(u64, u32), &'static str>,
}

fn classify(e: std::io::Error) -> &'static str {
    match e.kind() {
        ErrorKind::ConnectionRefused => "refused",
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            "reset"
        }
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timed out",
        _ => "other error",
    }
}

/// `GET /` on a new connection, timed.
fn request(addr: SocketAddr) -> Sample {
    let start = Instant::now();
    let mut first_byte = None;
    let outcome = exchange(addr, &mut first_byte);
    Sample {
        start,
        first_byte,
        end: Instant::now(),
        outcome,
    }
}

fn exchange(
    addr: SocketAddr,
    first_byte: &mut Option<Instant>,
) -> Result<(u64, u32), &'static str> {
    let mut conn = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT).map_err(classify)?;
    conn.set_read_timeout(Some(REQUEST_TIMEOUT))
        .map_err(classify)?;
    conn.set_write_timeout(Some(REQUEST_TIMEOUT))
        .map_err(classify)?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .map_err(classify)?;
    let mut reply = vec![0u8; 512];
    let n = conn.read(&mut reply).map_err(classify)?;
    if n == 0 {
        return Err("short reply");
    }
    *first_byte = Some(Instant::now());
    reply.truncate(n);
    conn.read_to_end(&mut reply).map_err(classify)?;
    let reply = String::from_utf8_lossy(&reply);
    let (head, body) = reply.split_once("\r\n\r\n").ok_or("short reply")?;
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|n| n.trim().parse::<usize>().ok());
    if !head.starts_with("HTTP/1.1 200 OK") || length != Some(body.len()) {
        return Err("short reply");
    }
    let last = body.lines().last().ok_or("short reply")?;
    let field = |key: &str| last.split_whitespace().find_map(|w| w.strip_prefix(key));
    match (
        field("gen=").and_then(|g| g.parse().ok()),
        field("pid=").and_then(|p| p.parse().ok()),
    ) {
        (Some(generation), Some(pid)) => Ok((generation, pid)),
        _ => Err("short reply"),
    }
}

/// The clients: each thread requests in a loop and keeps its samples.
struct Load {
    stop: Arc<AtomicBool>,
    /// The pid of each generation that answered, from its first reply.
    seen: Arc<Mutex<HashMap<u64, u32>>>,
    threads: Vec<JoinHandle<Vec<Sample>>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
                std::thread::spawn(move || {
                    let mut samples = Vec::with_capacity(1 << 16);
                    let mut newest = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let sample = request(addr);
                        if let Ok((generation, pid)) = sample.outcome {
                            if generation > newest {
                                newest = generation;
                                seen.lock().unwrap().entry(generation).or_insert(pid);
                            }
                        }
                        samples.push(sample);
                    }
                    samples
                })
            })
            .collect();
        Load {
            stop,
            seen,
            threads,
        }
    }

    /// The pid that answered for `generation`, once one did.
    fn pid_of(&self, generation: u64) -> Option<u32> {
        self.seen.lock().unwrap().get(&generation).copied()
    }

    /// Waits (polling every 0.5 ms) until `generation` answers; its pid.
    fn wait_for(&self, generation: u64) -> u32 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(pid) = self.pid_of(generation) {
                return pid;
            }
            assert!(
                Instant::now() < deadline,
                "no reply from generation {generation} within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Stops the clients; every sample, in the order they started.
    fn finish(&mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all: Vec<Sample> = std::mem::take(&mut self.threads)
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort_by_key(|s| s.start);
        all
    }
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

/// A server under test, reloaded by the benchmark.
trait Server {
    fn addr(&self) -> SocketAddr;
    /// Asks generation `current` (which answered as `load` saw) for a reload.
    fn signal_reload(&mut self, load: &Load, current: u64);
    /// Waits, once `generation` has answered, until it is in charge.
    fn settle(&mut self, generation: u64);
    /// The processes whose footprint is reported, named, while `generation` is in charge.
    fn processes(&self, load: &Load, generation: u64) -> Vec<(&'static str, u32)>;
    fn stop(&mut self, load: &Load, generation: u64);
}

struct HostServer {
    host: Host,
    addr: SocketAddr,
    pid_file: PathBuf,
    /// The supervisor in charge.
    supervisor: u32,
}

impl Server for HostServer {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn signal_reload(&mut self, _: &Load, _: u64) {
        signal(self.supervisor, Signal::SIGUSR2);
    }

    fn settle(&mut self, generation: u64) {
        let old = self.supervisor;
        self.supervisor = eventually("the new generation to serve", DEADLINE, || {
            let pid = pid_in(&self.pid_file).filter(|&p| p != old)?;
            read_status(&self.pid_file)
                .filter(|s| s.serving(pid, generation))
                .map(|_| pid)
        });
    }

    fn processes(&self, _: &Load, _: u64) -> Vec<(&'static str, u32)> {
        let mut p = vec![("supervisor", self.supervisor), ("anchor", self.host.pid())];
        // The next generation, exec'd and waiting (see the README).
        p.extend(standbys(self.supervisor).first().map(|&s| ("standby", s)));
        p
    }

    fn stop(&mut self, _: &Load, _: u64) {
        signal(self.host.pid(), Signal::SIGTERM);
        let _ = self.host.wait_exit(DEADLINE);
    }
}

struct PeerServer {
    child: Child,
    addr: SocketAddr,
    tag: String,
}

impl Server for PeerServer {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn signal_reload(&mut self, load: &Load, current: u64) {
        let pid = load.pid_of(current).expect("the generation answered");
        signal(pid, Signal::SIGHUP);
    }

    fn settle(&mut self, _: u64) {
        // It answered: it told the previous generation that it is ready.
    }

    fn processes(&self, load: &Load, generation: u64) -> Vec<(&'static str, u32)> {
        vec![("process", load.pid_of(generation).expect("it answered"))]
    }

    fn stop(&mut self, load: &Load, generation: u64) {
        if let Some(pid) = load.pid_of(generation) {
            signal(pid, Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !tagged_pids(&self.tag).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.reap(load);
    }
}

impl PeerServer {
    /// Kills what is left and reaps every generation (they are re-parented
    /// to this process, a child subreaper, when their parent exits).
    fn reap(&mut self, load: &Load) {
        kill_tagged(&self.tag);
        let _ = self.child.kill();
        let _ = self.child.wait();
        for &pid in load.seen.lock().unwrap().values() {
            let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
        }
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        kill_tagged(&self.tag);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free at the time of asking (the peer needs a fixed one).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_peer(dir: &Path, bin: &Path, threads: usize) -> PeerServer {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let tag = format!("reload-bench-peer-{}-{nanos}", std::process::id());
    let child = Command::new(bin)
        .args([addr.to_string(), threads.to_string()])
        .env(TAG_VAR, &tag)
        .env_remove("ECDYSIS_HELLO_GEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("ecdysis-hello.log")).unwrap())
        .spawn()
        .expect("start ecdysis-hello");
    eventually("ecdysis-hello to answer", DEADLINE, || {
        http_get_within(addr, Duration::from_secs(1)).ok()
    });
    PeerServer { child, addr, tag }
}

/// Appends pseudo-random bytes to `path` until it is `mb` MiB long (after
/// the ELF content, which the loader never reads past).
fn pad(path: &Path, mb: u64) {
    let target = mb << 20;
    let len = std::fs::metadata(path).unwrap().len();
    if target <= len {
        return;
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..target - len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(&bytes).unwrap();
}

/// What one server's run gave.
struct Run {
    samples: Vec<Sample>,
    /// How long the clients ran.
    duration: Duration,
    baseline: (Instant, Instant),
    /// The machine's CPU time left idle in the baseline phase, in percent.
    baseline_idle: Option<f64>,
    signals: Vec<Instant>,
    before: Vec<(&'static str, (u64, usize))>,
    after: Vec<(&'static str, (u64, usize))>,
}

fn run(server: &mut dyn Server, o: &Options) -> Run {
    let mut load = Load::start(server.addr(), o.clients);
    let started = Instant::now();
    load.wait_for(1);
    std::thread::sleep(WARM_UP);
    let baseline_start = Instant::now();
    let ticks_before = cpu_ticks();
    std::thread::sleep(BASELINE);
    let baseline = (baseline_start, Instant::now());
    let baseline_idle = idle_percent(ticks_before, cpu_ticks());
    let measure = |generation| {
        server
            .processes(&load, generation)
            .into_iter()
            .map(|(name, pid)| (name, footprint(pid)))
            .collect::<Vec<_>>()
    };
    let before = measure(1);
    let mut signals = Vec::with_capacity(o.reloads as usize);
    for generation in 2..o.reloads + 2 {
        signals.push(Instant::now());
        if std::env::var_os("BENCH_GAPS").is_some() {
            let _ = std::fs::write(
                "/sys/kernel/tracing/trace_marker",
                format!("reload {} signal", generation - 2),
            );
        }
        server.signal_reload(&load, generation - 1);
        load.wait_for(generation);
        server.settle(generation);
        std::thread::sleep(SETTLE);
    }
    std::thread::sleep(Duration::from_millis(200)); // let the last old generation go
    let last = o.reloads + 1;
    let after = server
        .processes(&load, last)
        .into_iter()
        .map(|(name, pid)| (name, footprint(pid)))
        .collect();
    let samples = load.finish();
    let duration = started.elapsed();
    server.stop(&load, last);
    Run {
        samples,
        duration,
        baseline,
        baseline_idle,
        signals,
        before,
        after,
    }
}

/// The machine's idle and total CPU time so far, in clock ticks (the
/// `cpu` line of `/proc/stat`; idle counts `iowait` too).
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let times: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let idle = times.get(3)? + times.get(4)?;
    Some((idle, times.iter().sum()))
}

/// The idle share, in percent, between two [`cpu_ticks`] readings.
fn idle_percent(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((idle0, total0), (idle1, total1)) = (before?, after?);
    let total = total1.checked_sub(total0).filter(|&t| t > 0)?;
    Some(100.0 * idle1.saturating_sub(idle0) as f64 / total as f64)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50, p95 (or p99), max of `values`.
fn spread(mut values: Vec<Duration>, p: f64) -> (Duration, Duration, Duration) {
    values.sort();
    (
        percentile(&values, 50.0),
        percentile(&values, p),
        values.last().copied().unwrap_or_default(),
    )
}

/// The longest interval within `[from, to]` in which no event of `events`
/// (sorted) happened, the ends of the window counting as events.
fn longest_gap(events: &[Instant], from: Instant, to: Instant) -> Duration {
    longest_gap_at(events, from, to).1
}

/// [`longest_gap`], and where it starts.
fn longest_gap_at(events: &[Instant], from: Instant, to: Instant) -> (Instant, Duration) {
    let first = events.partition_point(|&e| e <= from);
    let last = events.partition_point(|&e| e < to);
    let mut previous = from;
    let mut longest = (from, Duration::ZERO);
    for &e in events[first..last].iter().chain([&to]) {
        if e.saturating_duration_since(previous) > longest.1 {
            longest = (previous, e.saturating_duration_since(previous));
        }
        previous = e;
    }
    longest
}

/// The figures of one server's run.
struct Figures {
    requests: u64,
    /// Requests per second.
    rate: f64,
    failed: u64,
    failures: HashMap<&'static str, u64>,
    /// p50, p99, max.
    latency: (Duration, Duration, Duration),
    /// p99, max of the requests started within AFTER_SIGNAL of a signal, and how many.
    during_reload: (Duration, Duration, usize),
    /// p50, p95, max.
    reload: (Duration, Duration, Duration),
    /// p50, p95, max of the hand-over: the signal to the old generation's
    /// last first reply byte (it no longer takes new connections).
    takeover: (Duration, Duration, Duration),
    gap: (Duration, Duration, Duration),
    gap_baseline: (Duration, Duration, Duration),
    baseline_idle: Option<f64>,
    before: Vec<(&'static str, (u64, usize))>,
    after: Vec<(&'static str, (u64, usize))>,
}

fn figures(run: Run) -> Figures {
    let Run {
        samples,
        duration,
        baseline,
        baseline_idle,
        signals,
        before,
        after,
    } = run;
    let mut failures: HashMap<&'static str, u64> = HashMap::new();
    let mut latencies = Vec::with_capacity(samples.len());
    let mut during = Vec::new();
    // The first reply byte, and the end of the first reply, of each generation.
    let mut first: HashMap<u64, (Instant, Instant)> = HashMap::new();
    // The last first reply byte of each generation.
    let mut last: HashMap<u64, Instant> = HashMap::new();
    let mut events: Vec<Instant> = samples.iter().filter_map(|s| s.first_byte).collect();
    events.sort();
    for s in &samples {
        let (generation, _) = match s.outcome {
            Ok(answer) => answer,
            Err(kind) => {
                *failures.entry(kind).or_default() += 1;
                continue;
            }
        };
        let latency = s.end - s.start;
        latencies.push(latency);
        let i = signals.partition_point(|&t| t <= s.start);
        if i > 0 && s.start - signals[i - 1] <= AFTER_SIGNAL {
            during.push(latency);
        }
        let fb = s.first_byte.expect("a reply has a first byte");
        let entry = first.entry(generation).or_insert((fb, s.end));
        entry.0 = entry.0.min(fb);
        entry.1 = entry.1.min(s.end);
        let latest = last.entry(generation).or_insert(fb);
        *latest = (*latest).max(fb);
    }
    let mut reloads = Vec::new();
    let mut takeovers = Vec::new();
    let mut gaps = Vec::new();
    let mut baseline_gaps = Vec::new();
    let (base_from, base_to) = baseline;
    let base_len = base_to - base_from;
    for (i, &signal) in signals.iter().enumerate() {
        let (fb, end) = first[&(i as u64 + 2)];
        reloads.push(end.saturating_duration_since(signal));
        if let Some(old) = last.get(&(i as u64 + 1)) {
            takeovers.push(old.saturating_duration_since(signal));
        }
        gaps.push(longest_gap(&events, signal, fb));
        if std::env::var_os("BENCH_GAPS").is_some() {
            let (at, len) = longest_gap_at(&events, signal, fb);
            eprintln!(
                "gap reload {i}: signal at {:.6} s (Unix time, to line up with the host's log), first reply {:.3} ms, gap {:.3} ms from {:.3} ms",
                wall_clock(signal),
                ms(fb - signal),
                ms(len),
                ms(at - signal)
            );
        }
        // A window as long, laid in the baseline phase (spread evenly by
        // the golden ratio).
        let len = fb.saturating_duration_since(signal).min(base_len);
        let offset = (i as f64 * 0.618_033_988_75).fract();
        let from = base_from + (base_len - len).mul_f64(offset);
        baseline_gaps.push(longest_gap(&events, from, from + len));
    }
    let during_count = during.len();
    let (_, p99, max) = spread(during, 99.0);
    Figures {
        requests: samples.len() as u64,
        rate: samples.len() as f64 / duration.as_secs_f64(),
        failed: failures.values().sum(),
        failures,
        latency: spread(latencies, 99.0),
        during_reload: (p99, max, during_count),
        reload: spread(reloads, 95.0),
        takeover: spread(takeovers, 95.0),
        gap: spread(gaps, 95.0),
        gap_baseline: spread(baseline_gaps, 95.0),
        baseline_idle,
        before,
        after,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Prints one row: label, host value, ecdysis value, ratio.
fn row(label: &str, host: f64, peer: Option<f64>, unit: &str, decimals: usize) {
    let cell = |v: f64| format!("{v:.decimals$}{unit}");
    let (peer_cell, ratio) = match peer {
        Some(p) if p > 0.0 => (cell(p), format!("{:.2}x", host / p)),
        Some(p) => (cell(p), "-".to_owned()),
        None => (String::new(), String::new()),
    };
    println!("{label:<44} {:>12} {peer_cell:>12} {ratio:>10}", cell(host));
}

/// Whether this process may raise CPU priority (the host raises a new
/// generation's only then): CAP_SYS_NICE, or an RLIMIT_NICE above 20.
fn may_raise_priority() -> &'static str {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_sys_nice = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 23) != 0);
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let rlimit_nice = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max nice priority"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok())
        .is_some_and(|n| n > 20);
    match (cap_sys_nice, rlimit_nice) {
        (true, _) => "yes (CAP_SYS_NICE)",
        (false, true) => "yes (RLIMIT_NICE)",
        (false, false) => "no",
    }
}

/// An instant and the wall-clock time then, taken together at start:
/// what [`wall_clock`] converts from.
static CLOCKS: std::sync::OnceLock<(Instant, std::time::SystemTime)> = std::sync::OnceLock::new();

/// `t` as seconds of Unix time.
fn wall_clock(t: Instant) -> f64 {
    let (instant, system) = *CLOCKS.get_or_init(|| (Instant::now(), std::time::SystemTime::now()));
    let at = match t.checked_duration_since(instant) {
        Some(after) => system + after,
        None => system - instant.duration_since(t),
    };
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn main() {
    CLOCKS.get_or_init(|| (Instant::now(), std::time::SystemTime::now()));
    let o = options();
    // Every generation of the peer is re-parented here when its parent
    // exits, to be reaped (nothing else may reap them).
    nix::sys::prctl::set_child_subreaper(true).expect("become a child subreaper");
    let dir = temp_dir();
    let plugin = build_plugin("hello-http", None, &dir.path().join("libhello.so"));
    if o.plugin_size_mb > 0 {
        pad(&plugin, o.plugin_size_mb);
    }
    let plugin_mb = std::fs::metadata(&plugin).unwrap().len() as f64 / f64::from(1 << 20);
    let peer_bin = o.peer.then(|| build_binary("ecdysis-hello"));

    println!(
        "reload benchmark: {} clients (new connection per request), {} reloads ({} ms apart once each serves), baseline {} ms without reloads",
        o.clients,
        o.reloads,
        SETTLE.as_millis(),
        BASELINE.as_millis()
    );
    println!(
        "host: {} --workers {}, plugin hello-http {plugin_mb:.1} MB{}; may raise CPU priority: {}",
        host_bin().display(),
        o.workers,
        if o.plugin_size_mb > 0 {
            " (padded)"
        } else {
            ""
        },
        may_raise_priority()
    );
    if let Some(bin) = &peer_bin {
        println!(
            "ecdysis: {} (ecdysis 1.1.1, tokio, {} thread{}), upgraded by SIGHUP",
            bin.display(),
            o.workers,
            if o.workers == 1 { "" } else { "s" }
        );
    }

    let pid_file = dir.path().join("bench.pid");
    let workers = o.workers.to_string();
    let host = start_host(
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
        &[(
            "HOST_LOG",
            &std::env::var("BENCH_HOST_LOG").unwrap_or_else(|_| "info".into()),
        )],
    );
    host.wait_serving();

    let mut host = HostServer {
        addr: host.listen_addr(),
        supervisor: host.supervisor(),
        pid_file,
        host,
    };
    let host_figures = figures(run(&mut host, &o));
    if let Some(to) = std::env::var_os("BENCH_HOST_LOG_COPY") {
        let _ = std::fs::copy(&host.host.log, to);
    }
    drop(host);

    let peer_figures = peer_bin.map(|bin| {
        let mut peer = start_peer(dir.path(), &bin, o.workers);
        figures(run(&mut peer, &o))
    });
    report(&o, &host_figures, peer_figures.as_ref());
}

fn report(o: &Options, h: &Figures, p: Option<&Figures>) {
    let pm = |f: fn(&Figures) -> Duration| p.map(|p| ms(f(p)));
    println!();
    println!(
        "{:<44} {:>12} {:>12} {:>10}",
        "",
        "host",
        if p.is_some() { "ecdysis" } else { "" },
        if p.is_some() { "host/ecd." } else { "" }
    );
    row(
        "requests",
        h.requests as f64,
        p.map(|p| p.requests as f64),
        "",
        0,
    );
    row("requests per second", h.rate, p.map(|p| p.rate), "", 0);
    row("failed", h.failed as f64, p.map(|p| p.failed as f64), "", 0);
    row(
        "request latency p50",
        ms(h.latency.0),
        pm(|f| f.latency.0),
        " ms",
        3,
    );
    row(
        "request latency p99",
        ms(h.latency.1),
        pm(|f| f.latency.1),
        " ms",
        3,
    );
    row(
        "request latency max",
        ms(h.latency.2),
        pm(|f| f.latency.2),
        " ms",
        3,
    );
    row(
        "  started <=100 ms after a signal: p99",
        ms(h.during_reload.0),
        pm(|f| f.during_reload.0),
        " ms",
        3,
    );
    row(
        "  started <=100 ms after a signal: max",
        ms(h.during_reload.1),
        pm(|f| f.during_reload.1),
        " ms",
        3,
    );
    row(
        "reload latency p50",
        ms(h.reload.0),
        pm(|f| f.reload.0),
        " ms",
        3,
    );
    row(
        "reload latency p95",
        ms(h.reload.1),
        pm(|f| f.reload.1),
        " ms",
        3,
    );
    row(
        "reload latency max",
        ms(h.reload.2),
        pm(|f| f.reload.2),
        " ms",
        3,
    );
    row(
        "hand-over (old generation's last reply) p50",
        ms(h.takeover.0),
        pm(|f| f.takeover.0),
        " ms",
        3,
    );
    row(
        "hand-over (old generation's last reply) p95",
        ms(h.takeover.1),
        pm(|f| f.takeover.1),
        " ms",
        3,
    );
    row("no-accept gap p50", ms(h.gap.0), pm(|f| f.gap.0), " ms", 3);
    row("no-accept gap p95", ms(h.gap.1), pm(|f| f.gap.1), " ms", 3);
    row("no-accept gap max", ms(h.gap.2), pm(|f| f.gap.2), " ms", 3);
    row(
        "  same windows, no reload: p50",
        ms(h.gap_baseline.0),
        pm(|f| f.gap_baseline.0),
        " ms",
        3,
    );
    row(
        "  same windows, no reload: p95",
        ms(h.gap_baseline.1),
        pm(|f| f.gap_baseline.1),
        " ms",
        3,
    );
    row(
        "  same windows, no reload: max",
        ms(h.gap_baseline.2),
        pm(|f| f.gap_baseline.2),
        " ms",
        3,
    );
    if let Some(idle) = h.baseline_idle {
        row(
            "CPU idle, no-reload phase (whole machine)",
            idle,
            p.and_then(|p| p.baseline_idle),
            " %",
            1,
        );
    }
    // The peer's one process stands against each host process.
    let peer_rss = |f: &Vec<(&'static str, (u64, usize))>| f.first().map(|(_, (rss, _))| *rss);
    let peer_fds = |f: &Vec<(&'static str, (u64, usize))>| f.first().map(|(_, (_, fds))| *fds);
    for (when, host_side, peer_side) in [
        ("before", &h.before, p.map(|p| &p.before)),
        ("after", &h.after, p.map(|p| &p.after)),
    ] {
        for (name, (rss, fds)) in host_side {
            row(
                &format!("{name} RSS {when}"),
                *rss as f64 / 1024.0,
                peer_side.and_then(peer_rss).map(|r| r as f64 / 1024.0),
                " MB",
                2,
            );
            row(
                &format!("{name} open fds {when}"),
                *fds as f64,
                peer_side.and_then(peer_fds).map(|f| f as f64),
                "",
                0,
            );
        }
    }
    if p.is_some() {
        println!("(RSS and fds, ecdysis column: its newest process, against each host process)");
    }
    let kinds = |f: &Figures| {
        let mut k: Vec<_> = f.failures.iter().collect();
        k.sort();
        format!("{k:?}")
    };
    if h.failed > 0 || p.is_some_and(|p| p.failed > 0) {
        println!(
            "failures: host {}; ecdysis {}",
            kinds(h),
            p.map(kinds).unwrap_or_default()
        );
    }
    println!(
        "(requests started <=100 ms after a signal: host {}, ecdysis {})",
        h.during_reload.2,
        p.map_or(0, |p| p.during_reload.2)
    );

    println!();
    println!("targets (issue 11):");
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let failed = h.failed + p.map_or(0, |p| p.failed);
    println!("  no failed request: {}", verdict(failed == 0));
    if let Some(p) = p {
        let r50 = ms(h.reload.0) / ms(p.reload.0);
        let r95 = ms(h.reload.1) / ms(p.reload.1);
        println!(
            "  host reload p50 <= 0.6x ecdysis: {} ({r50:.2}x)",
            verdict(r50 <= 0.6)
        );
        println!(
            "  host reload p95 <= 0.8x ecdysis: {} ({r95:.2}x)",
            verdict(r95 <= 0.8)
        );
        if o.workers == 4 {
            println!(
                "  with --workers 4, reload p95 <= 1.0x ecdysis: {} ({r95:.2}x)",
                verdict(r95 <= 1.0)
            );
        }
    }
    let gap_excess = ms(h.gap.1) - ms(h.gap_baseline.1);
    println!(
        "  host no-accept gap p95 within 1 ms of the no-reload run: {} (+{gap_excess:.3} ms)",
        verdict(gap_excess <= 1.0)
    );
    let rss_max = |name: &str| {
        h.before
            .iter()
            .chain(&h.after)
            .filter(|(n, _)| *n == name)
            .map(|(_, (rss, _))| *rss)
            .max()
            .unwrap_or(0)
    };
    for name in ["supervisor", "anchor"] {
        let mb = rss_max(name) as f64 / 1024.0;
        println!("  {name} RSS <= 3 MB: {} ({mb:.2} MB)", verdict(mb <= 3.0));
    }
    println!("  (a 10 MB plugin <= 1 ms slower, 16 workers <= 2x slower than 1: compare runs)");

    // One line to collect runs from.
    let mut summary = format!(
        "summary: clients={} reloads={} workers={} plugin_mb={} host_requests={} host_rps={:.0} host_failed={} host_lat_p50={:.3} host_lat_p99={:.3} host_lat_max={:.3} host_sig_p99={:.3} host_sig_max={:.3} host_reload_p50={:.3} host_reload_p95={:.3} host_reload_max={:.3} host_takeover_p50={:.3} host_takeover_p95={:.3} host_gap_p50={:.3} host_gap_p95={:.3} host_gap_max={:.3} host_base_gap_p50={:.3} host_base_gap_p95={:.3} host_base_gap_max={:.3}",
        o.clients,
        o.reloads,
        o.workers,
        o.plugin_size_mb,
        h.requests,
        h.rate,
        h.failed,
        ms(h.latency.0),
        ms(h.latency.1),
        ms(h.latency.2),
        ms(h.during_reload.0),
        ms(h.during_reload.1),
        ms(h.reload.0),
        ms(h.reload.1),
        ms(h.reload.2),
        ms(h.takeover.0),
        ms(h.takeover.1),
        ms(h.gap.0),
        ms(h.gap.1),
        ms(h.gap.2),
        ms(h.gap_baseline.0),
        ms(h.gap_baseline.1),
        ms(h.gap_baseline.2),
    );
    if let Some(idle) = h.baseline_idle {
        summary += &format!(" host_base_idle_pct={idle:.1}");
    }
    for (when, side) in [("before", &h.before), ("after", &h.after)] {
        for (name, (rss, fds)) in side {
            summary += &format!(" host_{name}_rss_kib_{when}={rss} host_{name}_fds_{when}={fds}");
        }
    }
    if let Some(p) = p {
        summary += &format!(
            " ecd_requests={} ecd_rps={:.0} ecd_failed={} ecd_lat_p50={:.3} ecd_lat_p99={:.3} ecd_lat_max={:.3} ecd_sig_p99={:.3} ecd_sig_max={:.3} ecd_reload_p50={:.3} ecd_reload_p95={:.3} ecd_reload_max={:.3} ecd_takeover_p50={:.3} ecd_takeover_p95={:.3} ecd_gap_p50={:.3} ecd_gap_p95={:.3} ecd_gap_max={:.3} ecd_base_gap_p50={:.3} ecd_base_gap_p95={:.3} ecd_base_gap_max={:.3} ecd_rss_kib_before={} ecd_rss_kib_after={}",
            p.requests,
            p.rate,
            p.failed,
            ms(p.latency.0),
            ms(p.latency.1),
            ms(p.latency.2),
            ms(p.during_reload.0),
            ms(p.during_reload.1),
            ms(p.reload.0),
            ms(p.reload.1),
            ms(p.reload.2),
            ms(p.takeover.0),
            ms(p.takeover.1),
            ms(p.gap.0),
            ms(p.gap.1),
            ms(p.gap.2),
            ms(p.gap_baseline.0),
            ms(p.gap_baseline.1),
            ms(p.gap_baseline.2),
            peer_rss(&p.before).unwrap_or(0),
            peer_rss(&p.after).unwrap_or(0),
        );
    }
    println!("{summary}");
}
