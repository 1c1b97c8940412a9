//! Table tests of the lifecycle: each row puts a machine in a state, feeds
//! it events and checks the effects of the last one and the state it ends
//! in. No process, no descriptor, no clock: time is an `Instant` moved by hand.

use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::*;
use crate::channel::{FromWorker, NewToOld, StopReason, ToWorker};

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

/// Rows: what happens to a generation in a given state on a given event.
#[test]
fn transitions() {
    /// (what it shows, the state, at which second, the events, the check)
    type Row = (
        &'static str,
        fn() -> Given,
        u64,
        Vec<Event>,
        fn(&Given, &[Effect]),
    );
    let rows: Vec<Row> = vec![
        (
            "first generation: a worker that dies before it is ready fails the start",
            || {
                let t0 = Instant::now();
                let mut g = Given { m: Machine::new(1, 1, timing(), None, t0), t0 };
                g.m.start();
                g.when(0, [forked(0)]);
                g
            },
            0,
            vec![from(101, FromWorker::Failed("no --listen".into())), exited(101, "exited with status 1")],
            |g, fx| {
                assert_eq!(fx.last(), Some(&Effect::Exit(Err("no --listen".into()))));
                assert!(is_stopping(&g.m.life, &StopCause::StartFailed("no --listen".into())));
            },
        ),
        (
            "SIGUSR2 while a reload is in flight is ignored",
            || reloading(1),
            2,
            vec![Event::ReloadSignal],
            |g, fx| {
                assert!(fx.is_empty());
                assert_eq!(g.m.reload().map(|r| r.successor), Some(pid(NEW)));
            },
        ),
        (
            "SIGUSR2 to a plugin that cannot hot-reload is ignored, and the status says why",
            || {
                let mut g = serving(1);
                g.m.can_hot_reload = Some(false);
                g
            },
            1,
            vec![Event::ReloadSignal],
            |g, fx| {
                assert_eq!(fx, [Effect::WriteStatus]);
                assert!(g.m.last_reload.contains("can_do_hot_reload() is false"));
                assert_eq!(g.m.life, Life::Serving { reload: None });
            },
        ),
        (
            "a failed exec of the next generation is a failed reload; we keep serving",
            || {
                let mut g = serving(1);
                g.when(1, [Event::ReloadSignal]);
                g
            },
            1,
            vec![Event::Spawned(Err("cannot exec /x: No such file".into()))],
            |g, fx| {
                assert!(fx.contains(&Effect::Notify(Notice::ReloadFailed("cannot exec /x: No such file".into()))));
                assert_eq!(g.m.life, Life::Serving { reload: None });
                assert!(g.m.last_reload.starts_with("failed: cannot exec"));
            },
        ),
        (
            "row a: SIGQUIT to the old generation during a reload stops it and kills the new one; nothing is released",
            || reloading(1),
            3,
            vec![stop("SIGQUIT")],
            |g, fx| {
                assert_eq!(
                    fx[..2],
                    [
                        Effect::KillSuccessor { pid: pid(NEW) },
                        send(101, ToWorker::Stop(StopReason::Shutdown)),
                    ]
                );
                assert!(!fx.contains(&Effect::Release));
                assert!(is_stopping(&g.m.life, &StopCause::Signal { name: "SIGQUIT" }));
            },
        ),
        (
            "row a: the hand-over request comes only from the successor's channel, and only once it is ready",
            || reloading(2),
            3,
            vec![Event::Successor(NewToOld::ReadyToTakeOver)],
            |g, fx| {
                assert_eq!(
                    fx,
                    [
                        send(101, ToWorker::Stop(StopReason::Reload)),
                        send(102, ToWorker::Stop(StopReason::Reload)),
                    ]
                );
                let until = g.at(3) + STOP_TAKEN_WAIT;
                assert_eq!(g.m.reload().map(|r| r.stage), Some(ReloadStage::Releasing { until }));
                assert_eq!(g.m.next_deadline(), Some(until));
                assert_eq!(g.m.draining.len(), 2);
            },
        ),
        (
            "stepping aside: Released only once every worker took the stop or is gone (until then one may accept)",
            || releasing(2),
            2,
            vec![from(101, FromWorker::StopTaken), exited(102, "was killed by SIGKILL")],
            |g, fx| {
                assert_eq!(fx, [Effect::Release]);
                assert_eq!(g.m.reload().map(|r| r.stage), Some(ReloadStage::Released));
            },
        ),
        (
            "stepping aside: a worker still draining from an earlier reload does not hold up the next",
            || {
                // The first reload fails after we stepped aside: worker 101
                // drains (it never confirms), slot 0 gets worker 201.
                let mut g = releasing(1);
                g.when(2, [Event::SuccessorGone { reason: "gone".into() }]);
                g.when(2, [Event::Forked { slot: 0, result: Ok(pid(201)) }]);
                g.when(2, [from(201, FromWorker::Loaded { can_hot_reload: true })]);
                g.when(2, [from(201, FromWorker::Serving)]);
                g.when(3, [Event::ReloadSignal, Event::Spawned(Ok(pid(NEW + 1)))]);
                g.when(4, [Event::Successor(NewToOld::ReadyToTakeOver)]);
                g
            },
            4,
            vec![from(201, FromWorker::StopTaken)],
            |g, fx| {
                assert_eq!(fx, [Effect::Release]);
                assert_eq!(g.m.draining.len(), 2);
            },
        ),
        (
            "stepping aside: one worker's confirmation is not enough",
            || releasing(2),
            2,
            vec![from(102, FromWorker::StopTaken)],
            |g, fx| {
                assert!(fx.is_empty(), "{fx:?}");
                assert!(matches!(g.m.reload().map(|r| r.stage), Some(ReloadStage::Releasing { .. })));
            },
        ),
        (
            "stepping aside: a worker that never confirms holds up the hand-over for STOP_TAKEN_WAIT only",
            || {
                let mut g = releasing(2);
                g.when(2, [from(101, FromWorker::StopTaken)]);
                g
            },
            2 + STOP_TAKEN_WAIT.as_secs(),
            vec![Event::Tick],
            |g, fx| {
                assert_eq!(fx, [Effect::Release]);
                assert_eq!(g.m.reload().map(|r| r.stage), Some(ReloadStage::Released));
            },
        ),
        (
            "stepping aside: a new generation that dies before Released leaves us respawning every worker",
            || releasing(1),
            2,
            vec![Event::SuccessorGone { reason: "pid 60 was killed by SIGKILL".into() }],
            |g, fx| {
                assert!(!fx.contains(&Effect::Release), "{fx:?}");
                assert!(fx.contains(&Effect::ForkWorker { slot: 0, head_start: false }), "{fx:?}");
                assert_eq!(g.m.life, Life::Serving { reload: None });
            },
        ),
        (
            "the old generation stops once the new one confirms, and exits when its workers have",
            || released(1),
            3,
            vec![Event::Successor(NewToOld::TookOver), exited(101, "exited with status 0")],
            |g, fx| {
                assert_eq!(fx, [Effect::Exit(Ok(()))]);
                assert!(is_stopping(&g.m.life, &StopCause::HandedOver { successor: pid(NEW) }));
                assert!(!g.m.in_charge());
            },
        ),
        (
            "row b: a SIGTERM while draining after a hand-over does not kill the workers",
            || {
                let mut g = released(1);
                g.when(3, [Event::Successor(NewToOld::TookOver)]);
                g
            },
            3,
            vec![stop("SIGTERM")],
            |g, fx| {
                assert!(fx.is_empty(), "{fx:?}");
                assert!(!g.m.draining[0].killed);
                assert!(is_stopping(&g.m.life, &StopCause::Signal { name: "SIGTERM" }));
            },
        ),
        (
            "row b: a second stop from the operator kills the draining workers",
            || {
                let mut g = released(1);
                g.when(3, [Event::Successor(NewToOld::TookOver), stop("SIGTERM")]);
                g
            },
            4,
            vec![stop("SIGTERM")],
            |_, fx| assert_eq!(fx, [Effect::Kill { pid: pid(101) }]),
        ),
        (
            "a stopping generation kills what is left at the shutdown deadline, not before",
            || {
                let mut g = serving(2);
                g.when(1, [stop("SIGTERM")]);
                g
            },
            21,
            vec![Event::Tick],
            |g, fx| {
                assert_eq!(fx, [Effect::Kill { pid: pid(101) }, Effect::Kill { pid: pid(102) }]);
                assert!(g.m.draining.iter().all(|d| d.killed));
            },
        ),
        (
            "row d: the successor dies after we released: our workers are respawned at once and we claim the pid file",
            || released(2),
            3,
            vec![Event::SuccessorGone { reason: "the new generation (pid 60) was killed by SIGKILL".into() }],
            |g, fx| {
                let forks: Vec<_> = fx.iter().filter(|e| matches!(e, Effect::ForkWorker { head_start: false, .. })).collect();
                assert_eq!(forks.len(), 2, "{fx:?}");
                assert!(fx.contains(&Effect::ClaimPidFile));
                assert!(fx.contains(&Effect::KillSuccessor { pid: pid(NEW) }));
                assert_eq!(fx.last(), Some(&Effect::WriteStatus));
                assert_eq!(g.m.life, Life::Serving { reload: None });
                assert!(g.m.last_reload.contains("killed by SIGKILL"));
                assert!(g.m.in_charge());
            },
        ),
        (
            "row d: a Failed from the successor after we released resumes the same way",
            || released(1),
            3,
            vec![Event::Successor(NewToOld::Failed("a worker of the new generation is gone".into()))],
            |g, fx| {
                assert!(fx.contains(&Effect::ForkWorker { slot: 0, head_start: false }));
                assert_eq!(g.m.life, Life::Serving { reload: None });
            },
        ),
        (
            "a reload that does not finish within the reload timeout is killed; we keep serving",
            || reloading(1),
            62,
            vec![Event::Tick],
            |g, fx| {
                assert_eq!(fx[0], Effect::KillSuccessor { pid: pid(NEW) });
                assert!(g.m.last_reload.contains("did not take over within 60s"));
                assert_eq!(g.m.life, Life::Serving { reload: None });
            },
        ),
        (
            "a worker that ends while serving is respawned after the delay, not before",
            || {
                let mut g = serving(1);
                g.when(10, [exited(101, "was killed by SIGKILL")]);
                assert!(g.when(14, [Event::Tick]).is_empty());
                g
            },
            15,
            vec![Event::Tick],
            |_, fx| assert_eq!(fx, [Effect::ForkWorker { slot: 0, head_start: false }]),
        ),
        (
            "new generation: a worker that is ready accepts beside the old ones; the predecessor is not asked yet",
            || new_generation_loaded(2),
            1,
            vec![from(101, FromWorker::Serving)],
            |g, fx| {
                assert!(fx.is_empty(), "{fx:?}");
                assert!(matches!(g.m.life, Life::Starting { .. }));
                assert!(!g.m.in_charge());
            },
        ),
        (
            "new generation: once every worker says it accepts, the predecessor is asked to step aside, by message",
            || new_generation_loaded(2),
            1,
            vec![from(101, FromWorker::Serving), from(102, FromWorker::Serving)],
            |g, fx| {
                assert_eq!(fx, [Effect::ToPredecessor(NewToOld::ReadyToTakeOver)]);
                assert!(!g.m.in_charge());
            },
        ),
        (
            "new generation: on Released, tell the anchor, confirm, then the pid file and status",
            || taking_over(2),
            1,
            vec![Event::Released],
            |g, fx| {
                assert_eq!(
                    fx,
                    [
                        Effect::Notify(Notice::Serving),
                        Effect::ToPredecessor(NewToOld::TookOver),
                        Effect::Unboost,
                        Effect::ClaimPidFile,
                        Effect::WriteStatus,
                    ]
                );
                assert!(g.m.in_charge());
            },
        ),
        (
            "row c: a new worker that dies while taking over fails the reload; a late Released changes nothing",
            || taking_over(2),
            1,
            vec![exited(102, "was killed by SIGKILL"), Event::Released],
            |g, fx| {
                assert!(fx.is_empty(), "{fx:?}");
                assert!(matches!(g.m.life, Life::Stopping { cause: StopCause::StartFailed(_), .. }));
                assert!(!g.m.in_charge());
            },
        ),
        (
            "row c: the death is reported to the predecessor, which carries on",
            || taking_over(2),
            1,
            vec![exited(102, "was killed by SIGKILL")],
            |_, fx| {
                assert!(matches!(&fx[0], Effect::ToPredecessor(NewToOld::Failed(why)) if why.contains("was killed by SIGKILL")));
                assert_eq!(fx[1], send(101, ToWorker::Stop(StopReason::Shutdown)));
            },
        ),
        (
            "row g: a new plugin that cannot hot-reload fails the reload at once",
            || new_generation_loaded(1),
            0,
            vec![from(101, FromWorker::Loaded { can_hot_reload: false })],
            |g, fx| {
                assert!(matches!(&fx[0], Effect::ToPredecessor(NewToOld::Failed(why)) if why.contains("can_do_hot_reload() is false")));
                assert!(matches!(g.m.life, Life::Stopping { cause: StopCause::StartFailed(_), .. }));
            },
        ),
        (
            "new generation: SIGTERM before taking over tells the predecessor to carry on",
            || taking_over(1),
            1,
            vec![stop("SIGTERM")],
            |g, fx| {
                assert!(matches!(&fx[0], Effect::ToPredecessor(NewToOld::Failed(why)) if why.contains("SIGTERM")));
                assert!(!g.m.in_charge());
            },
        ),
        (
            "new generation: a predecessor that vanished while we took over leaves us in charge",
            || taking_over(1),
            1,
            vec![Event::PredecessorGone],
            |g, fx| {
                assert_eq!(fx[0], Effect::Notify(Notice::Serving));
                assert!(!fx.iter().any(|e| matches!(e, Effect::ToPredecessor(_))));
                assert_eq!(g.m.life, Life::Serving { reload: None });
            },
        ),
        (
            "the anchor's exit stops the generation gracefully, and a second one changes nothing",
            || {
                let mut g = serving(1);
                g.when(1, [Event::AnchorGone]);
                g
            },
            2,
            vec![Event::AnchorGone],
            |g, fx| {
                assert!(fx.is_empty(), "{fx:?}");
                assert!(!g.m.draining[0].killed);
                assert!(matches!(g.m.life, Life::Stopping { cause: StopCause::Signal { .. }, .. }));
            },
        ),
        (
            "a worker stopped for a reload hands its state over, with its slot, to the next generation",
            || released(2),
            3,
            vec![from(102, FromWorker::State(b"counters".to_vec()))],
            |_, fx| {
                assert_eq!(fx, [Effect::HandState { slot: 1, state: b"counters".to_vec() }]);
            },
        ),
        (
            "the new generation gives the state to its worker of that slot",
            || taking_over(2),
            1,
            vec![Event::Released, Event::InheritedState { slot: 1, state: b"counters".to_vec() }],
            |_, fx| assert_eq!(fx, [send(102, ToWorker::State(b"counters".to_vec()))]),
        ),
        (
            "a worker forked just as the generation stops is told to stop too",
            || {
                let t0 = Instant::now();
                let mut g = Given { m: Machine::new(1, 2, timing(), None, t0), t0 };
                g.m.start();
                g.when(0, [Event::Forked { slot: 0, result: Err("cannot fork a worker: EAGAIN".into()) }]);
                g
            },
            0,
            vec![forked(1)],
            |g, fx| {
                assert_eq!(fx, [send(102, ToWorker::Stop(StopReason::Shutdown))]);
                assert_eq!(g.m.draining.len(), 1);
            },
        ),
    ];
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
