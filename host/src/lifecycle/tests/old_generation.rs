//! Rows: what happens to a generation that serves, or stops, or hands
//! over to the next one, on a given event.

use super::*;

#[test]
fn transitions_of_a_serving_generation() {
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
    check_rows(rows);
}
