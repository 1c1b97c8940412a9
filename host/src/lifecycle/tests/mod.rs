//! Table tests of the lifecycle: each row puts a machine in a state, feeds
//! it events and checks the effects of the last one and the state it ends
//! in. No process, no descriptor, no clock: time is an `Instant` moved by hand.

use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::*;
use crate::channel::{FromWorker, NewToOld, StopReason, ToWorker};

mod new_generation;
mod old_generation;

const SEC: Duration = Duration::from_secs(1);

fn timing() -> Timing {
    Timing {
        respawn_delay: 5 * SEC,
        respawn_delay_max: 60 * SEC,
        shutdown_timeout: 20 * SEC,
        reload_timeout: 60 * SEC,
    }
}

fn pid(n: i32) -> Pid {
    Pid::from_raw(n)
}

/// Worker pids are 101, 102, ...; the old generation is pid 50, the new 60.
const OLD: i32 = 50;
const NEW: i32 = 60;

/// A machine with a clock: `at(s)` is `s` seconds after its start.
struct Given {
    m: Machine,
    t0: Instant,
}

impl Given {
    fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }

    /// Feeds events at second `secs`; returns the effects of the last one.
    fn when(&mut self, secs: u64, events: impl IntoIterator<Item = Event>) -> Vec<Effect> {
        let now = self.at(secs);
        let mut last = Vec::new();
        for event in events {
            last = self.m.handle(event, now);
        }
        last
    }
}

fn forked(slot: usize) -> Event {
    Event::Forked {
        slot,
        result: Ok(pid(101 + slot as i32)),
    }
}

fn from(worker: i32, message: FromWorker) -> Event {
    Event::Worker {
        pid: pid(worker),
        message,
    }
}

fn loaded(worker: i32) -> Event {
    from(
        worker,
        FromWorker::Loaded {
            can_hot_reload: true,
        },
    )
}

fn exited(worker: i32, how: &str) -> Event {
    Event::WorkerExited {
        pid: pid(worker),
        exit: Exit {
            how: how.into(),
            clean: false,
        },
    }
}

fn stop(name: &'static str) -> Event {
    Event::StopSignal { name }
}

fn send(worker: i32, message: ToWorker) -> Effect {
    Effect::Send {
        pid: pid(worker),
        message,
    }
}

/// The first generation, `workers` workers forked, loaded and ready: serving.
fn serving(workers: usize) -> Given {
    let t0 = Instant::now();
    let mut g = Given {
        m: Machine::new(1, workers, timing(), None, t0),
        t0,
    };
    g.m.start();
    for slot in 0..workers {
        let w = 101 + slot as i32;
        g.when(0, [forked(slot), loaded(w), from(w, FromWorker::Serving)]);
    }
    assert_eq!(g.m.life, Life::Serving { reload: None });
    g
}

/// `serving(workers)` after SIGUSR2: generation 2 (pid NEW) is starting.
fn reloading(workers: usize) -> Given {
    let mut g = serving(workers);
    assert_eq!(
        g.when(1, [Event::ReloadSignal]),
        [Effect::SpawnSuccessor { generation: 2 }]
    );
    g.when(1, [Event::Spawned(Ok(pid(NEW)))]);
    g
}

/// `reloading(workers)` after the new generation asked us to step aside,
/// our workers (101..) told to stop.
fn releasing(workers: usize) -> Given {
    let mut g = reloading(workers);
    g.when(2, [Event::Successor(NewToOld::ReadyToTakeOver)]);
    g
}

/// `releasing(workers)` once every worker took the stop: `Released` sent.
fn released(workers: usize) -> Given {
    let mut g = releasing(workers);
    for slot in 0..workers {
        g.when(2, [from(101 + slot as i32, FromWorker::StopTaken)]);
    }
    assert_eq!(g.m.reload().map(|r| r.stage), Some(ReloadStage::Released));
    g
}

/// Generation 2 (predecessor pid OLD) with `workers` workers forked and loaded.
fn new_generation_loaded(workers: usize) -> Given {
    let t0 = Instant::now();
    let mut g = Given {
        m: Machine::new(2, workers, timing(), Some(pid(OLD)), t0),
        t0,
    };
    let start = g.m.start();
    assert!(start.iter().all(|e| matches!(
        e,
        Effect::ForkWorker {
            head_start: true,
            ..
        }
    )));
    for slot in 0..workers {
        g.when(0, [forked(slot), loaded(101 + slot as i32)]);
    }
    g
}

/// `new_generation_loaded(workers)` once all are ready: taking over.
fn taking_over(workers: usize) -> Given {
    let mut g = new_generation_loaded(workers);
    for slot in 0..workers {
        g.when(0, [from(101 + slot as i32, FromWorker::Serving)]);
    }
    assert_eq!(
        g.m.life,
        Life::TakingOver {
            predecessor: pid(OLD)
        }
    );
    g
}

fn is_stopping(life: &Life, want: &StopCause) -> bool {
    matches!(life, Life::Stopping { cause, .. } if cause == want)
}

#[test]
fn first_generation_serves_once_every_worker_is_ready_or_cannot_hot_reload() {
    let t0 = Instant::now();
    let mut m = Machine::new(1, 2, timing(), None, t0);
    assert_eq!(
        m.start(),
        [
            Effect::WriteStatus,
            Effect::ForkWorker {
                slot: 0,
                head_start: false
            },
            Effect::ForkWorker {
                slot: 1,
                head_start: false
            },
        ]
    );
    m.handle(forked(0), t0);
    m.handle(forked(1), t0);
    m.handle(loaded(101), t0);
    assert!(m.handle(from(101, FromWorker::Serving), t0).is_empty());
    let no_reload = from(
        102,
        FromWorker::Loaded {
            can_hot_reload: false,
        },
    );
    assert_eq!(
        m.handle(no_reload, t0),
        [
            Effect::Notify(Notice::Serving),
            Effect::ClaimPidFile,
            Effect::WriteStatus,
        ]
    );
    assert_eq!(m.life, Life::Serving { reload: None });
}

/// A row: (what it shows, the state, at which second, the events, the
/// check).
type Row = (
    &'static str,
    fn() -> Given,
    u64,
    Vec<Event>,
    fn(&Given, &[Effect]),
);

/// Runs each row on a fresh machine, naming the row that fails.
fn check_rows(rows: Vec<Row>) {
    for (name, given, at, events, check) in rows {
        let mut g = given();
        let fx = g.when(at, events);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&g, &fx)));
        if let Err(e) = outcome {
            panic!(
                "row {name:?} failed; effects {fx:?}; life {:?}: {e:?}",
                g.m.life
            );
        }
    }
}

#[test]
fn durations_far_in_the_future_never_overflow() {
    let huge = Timing {
        respawn_delay: Duration::MAX,
        respawn_delay_max: Duration::MAX,
        shutdown_timeout: Duration::MAX,
        reload_timeout: Duration::MAX,
    };
    let t0 = Instant::now();
    let mut m = Machine::new(1, 1, huge, None, t0);
    m.start();
    m.handle(forked(0), t0);
    m.handle(loaded(101), t0);
    m.handle(from(101, FromWorker::Serving), t0);
    m.handle(Event::ReloadSignal, t0);
    m.handle(Event::Spawned(Ok(pid(NEW))), t0);
    m.handle(Event::Tick, t0);
    m.handle(exited(101, "was killed by SIGKILL"), t0);
    m.handle(stop("SIGTERM"), t0);
    assert!(m.next_deadline().is_none_or(|d| d > t0));
}

/// A worker that dies young, again and again: 5 s, 10 s, 20 s, 40 s, then
/// 60 s (the maximum); one that lived past `YOUNG` resets the slot to 5 s.
#[test]
fn a_slot_whose_workers_die_young_backs_off_and_recovers() {
    let mut g = serving(1);
    let mut now = 100;
    let mut worker = 101;
    let mut waits = Vec::new();
    for _ in 0..6 {
        g.when(now, [exited(worker, "was killed by SIGSEGV")]);
        let at = g.m.next_deadline().unwrap();
        waits.push((at - g.at(now)).as_secs());
        now += (at - g.at(now)).as_secs();
        assert_eq!(
            g.when(now, [Event::Tick]),
            [Effect::ForkWorker {
                slot: 0,
                head_start: false
            }]
        );
        worker += 1;
        g.when(
            now,
            [Event::Forked {
                slot: 0,
                result: Ok(pid(worker)),
            }],
        );
    }
    // The first death comes 100 s after the start: not young.
    assert_eq!(waits, [5, 5, 10, 20, 40, 60]);
    assert_eq!(g.m.crash_looping(), 1);
    // This one lives past YOUNG: the next death waits the base delay again.
    now += YOUNG.as_secs();
    g.when(now, [exited(worker, "exited with status 1")]);
    assert_eq!(g.m.next_deadline(), Some(g.at(now + 5)));
    assert_eq!(g.m.crash_looping(), 0);
}

#[test]
fn a_zero_respawn_delay_still_backs_off() {
    let timing = Timing {
        respawn_delay: Duration::ZERO,
        ..timing()
    };
    let delays: Vec<u128> = (0..5)
        .map(|c| timing.respawn_delay(c).as_millis())
        .collect();
    assert_eq!(delays, [0, 0, 200, 400, 800]);
}

/// A standby for the next reload is wanted only in charge, with no reload
/// in flight, and a plugin that can hot-reload.
#[test]
fn a_standby_is_wanted_only_while_serving_idle_with_a_plugin_that_can_hot_reload() {
    type Step = fn(&mut Given);
    let rows: [(&str, Step, bool); 5] = [
        ("serving", |_| {}, true),
        (
            "a reload in flight",
            |g| drop(g.when(1, [Event::ReloadSignal, Event::Spawned(Ok(pid(NEW)))])),
            false,
        ),
        (
            "the reload failed",
            |g| {
                g.when(1, [Event::ReloadSignal, Event::Spawned(Ok(pid(NEW)))]);
                g.when(2, [Event::Successor(NewToOld::Failed("no".into()))]);
            },
            true,
        ),
        ("stopping", |g| drop(g.when(1, [stop("SIGTERM")])), false),
        (
            "a plugin that cannot hot-reload",
            |g| g.m.can_hot_reload = Some(false),
            false,
        ),
    ];
    for (name, step, wanted) in rows {
        let mut g = serving(1);
        step(&mut g);
        assert_eq!(g.m.wants_standby(), wanted, "{name}");
    }
    let mut starting = Machine::new(1, 1, timing(), None, Instant::now());
    starting.start();
    assert!(!starting.wants_standby(), "starting");
}

/// A generation starts at most `start_at_once` workers loading at a time:
/// each one ready (or built, if it cannot hot-reload) lets the next start.
#[test]
fn workers_start_a_few_at_a_time() {
    let t0 = Instant::now();
    let mut m = Machine::new(2, 4, timing(), Some(pid(OLD)), t0);
    m.start_at_once = 2;
    let forks = |fx: &[Effect]| -> Vec<usize> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::ForkWorker {
                    slot,
                    head_start: true,
                } => Some(*slot),
                _ => None,
            })
            .collect()
    };
    assert_eq!(forks(&m.start()), [0, 1]);
    // Each fork is answered before any other event (see `supervisor::effects`).
    m.handle(forked(0), t0);
    m.handle(forked(1), t0);
    for w in [101, 102] {
        assert_eq!(forks(&m.handle(loaded(w), t0)), [] as [usize; 0]);
    }
    let fx = m.handle(from(101, FromWorker::Serving), t0);
    assert_eq!(forks(&fx), [2]);
    m.handle(forked(2), t0);
    let fx = m.handle(from(102, FromWorker::Serving), t0);
    assert_eq!(forks(&fx), [3]);
    m.handle(forked(3), t0);
    // Nothing left to start.
    assert_eq!(
        forks(&m.handle(from(103, FromWorker::Serving), t0)),
        [] as [usize; 0]
    );
}
