//! Rows: what happens to a new generation that takes over from a
//! predecessor, on a given event.

use super::*;

#[test]
fn transitions_of_a_new_generation() {
    let rows: Vec<Row> = vec![
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
            "the new generation gives the state to its worker of that slot",
            || taking_over(2),
            1,
            vec![Event::Released, Event::InheritedState { slot: 1, state: b"counters".to_vec() }],
            |_, fx| assert_eq!(fx, [send(102, ToWorker::State(b"counters".to_vec()))]),
        ),
    ];
    check_rows(rows);
}
