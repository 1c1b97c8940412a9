//! Round trips, limits and garbage, for every message type.
use super::*;

fn round_trip<S, R>(a: &Channel<S, R>, b: &Channel<R, S>, all: &[S])
where
    S: Wire + Clone + PartialEq + std::fmt::Debug,
    R: Wire,
{
    for m in all {
        a.send(m).unwrap();
        assert_eq!(b.recv().unwrap(), Received::Message(m.clone()));
    }
}

#[test]
fn every_message_round_trips() {
    let (sup, worker) = ToWorkerEnd::pair().unwrap();
    round_trip(
        &sup,
        &worker,
        &[
            ToWorker::Stop(StopReason::Reload),
            ToWorker::Stop(StopReason::Shutdown),
            ToWorker::Go { generation: 7 },
            ToWorker::Go {
                generation: u64::MAX,
            },
        ],
    );
    round_trip(
        &worker,
        &sup,
        &[
            FromWorker::Loaded {
                can_hot_reload: true,
            },
            FromWorker::Loaded {
                can_hot_reload: false,
            },
            FromWorker::Serving,
            FromWorker::StopTaken,
            FromWorker::State(vec![0, 1, 2]),
            FromWorker::Failed("plugin panicked: ünïcode".into()),
        ],
    );
    let (new, old) = NewEnd::pair().unwrap();
    round_trip(
        &new,
        &old,
        &[
            NewToOld::ReadyToTakeOver,
            NewToOld::TookOver,
            NewToOld::Failed("x".into()),
        ],
    );
    round_trip(
        &old,
        &new,
        &[OldToNew::Start { generation: 7 }, OldToNew::Released],
    );
    let (generation, anchor) = ToAnchorEnd::pair().unwrap();
    round_trip(
        &generation,
        &anchor,
        &[
            ToAnchor::Serving {
                pid: 7,
                generation: 3,
            },
            ToAnchor::Reloading {
                successor: 8,
                generation: 4,
            },
            ToAnchor::ReloadFailed("bad plugin".into()),
            ToAnchor::Stopping { pid: 7 },
            ToAnchor::Failed("no --listen".into()),
        ],
    );
    assert_eq!(sup.try_recv().unwrap(), Received::Empty);
    drop(worker);
    assert_eq!(sup.try_recv().unwrap(), Received::Closed);
}

#[test]
fn long_reasons_are_cut_on_a_char_boundary() {
    let (a, b) = WorkerEnd::pair().unwrap();
    a.send(&FromWorker::Failed("é".repeat(MAX_TEXT))).unwrap();
    let Received::Message(FromWorker::Failed(text)) = b.recv().unwrap() else {
        panic!("no Failed")
    };
    assert!(text.len() <= MAX_TEXT && text.chars().all(|c| c == 'é'));
}

#[test]
fn garbage_frames_are_errors_not_messages() {
    let (a, b) = WorkerEnd::pair().unwrap();
    for frame in [&b"Z"[..], b"L\x07", b"Rx", b"Gx"] {
        send(a.as_raw_fd(), frame, MsgFlags::empty()).unwrap();
        let err = b.recv().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
    send(a.as_raw_fd(), &vec![b'F'; MAX_STATE + 6], MsgFlags::empty()).unwrap();
    assert_eq!(b.recv().unwrap_err().kind(), io::ErrorKind::InvalidData);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn frame() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..MAX_TEXT + 64)
    }

    proptest! {
        /// Any frame a peer can send decodes to a message or to an
        /// error, never a panic, whatever the type.
        #[test]
        fn any_frame_decodes_or_is_refused(bytes in frame()) {
            if let Some((&tag, payload)) = bytes.split_first() {
                let _ = FromWorker::decode(tag, payload);
                let _ = ToWorker::decode(tag, payload);
                let _ = NewToOld::decode(tag, payload);
                let _ = OldToNew::decode(tag, payload);
                let _ = ToAnchor::decode(tag, payload);
            }
        }

        /// Garbage on a real channel is an error for that channel, and
        /// the next good message still arrives.
        #[test]
        fn garbage_then_a_message(bytes in frame()) {
            let (a, b) = WorkerEnd::pair().unwrap();
            if !bytes.is_empty() {
                send(a.as_raw_fd(), &bytes, MsgFlags::empty()).unwrap();
                let _ = b.recv();
            }
            a.send(&FromWorker::Serving).unwrap();
            prop_assert_eq!(b.recv().unwrap(), Received::Message(FromWorker::Serving));
        }

        #[test]
        fn failure_reasons_round_trip(reason in ".{0,200}") {
            let (a, b) = WorkerEnd::pair().unwrap();
            a.send(&FromWorker::Failed(reason.clone())).unwrap();
            prop_assert_eq!(b.recv().unwrap(), Received::Message(FromWorker::Failed(reason)));
        }
    }
}
