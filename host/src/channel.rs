//! The socketpair protocol: between a supervisor and each of its workers,
//! and between a generation and the one replacing it.
//!
//! `SOCK_SEQPACKET` keeps message boundaries, so a message is one tag byte,
//! plus UTF-8 text for `Failed`. A peer that dies closes its end, which the
//! other side sees as `Closed` (or a poll hang-up): that is how the death of
//! a supervisor, a worker or a new generation is noticed without any timer.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};

/// Longest `Failed` reason sent; longer ones are cut.
const MAX_TEXT: usize = 4096;

/// supervisor -> worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToWorker {
    /// Serve: `ready_to_take_over` returns Ok.
    Go,
    /// Stop accepting, finish what you hold, return (`ping_supervisor` turns false).
    Stop(StopReason),
    /// The state the previous generation's worker of this slot handed over.
    State(Vec<u8>),
}

/// Why a worker is told to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A new generation took over.
    Reload,
    /// The host stops (an operator's signal, or its start failed).
    Shutdown,
}

/// worker -> supervisor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromWorker {
    /// The plugin is built; it says whether it can hot-reload.
    Loaded { can_hot_reload: bool },
    /// The plugin called `ready_to_take_over`.
    Ready,
    /// Why the worker is giving up.
    Failed(String),
    /// State for the next generation's worker of the same slot.
    State(Vec<u8>),
}

/// new generation -> the one it replaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NewToOld {
    /// Every worker is ready: step aside (stop accepting, answer `Released`).
    ReadyToTakeOver,
    /// Our workers got `Go` and serve: finish and exit.
    TookOver,
    /// This generation gives up, and why: carry on.
    Failed(String),
}

/// old generation -> the one replacing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OldToNew {
    /// My workers stopped accepting; take over.
    Released,
    /// What my worker in `slot` handed over, for yours.
    State { slot: u32, state: Vec<u8> },
}

/// a supervisor -> the anchor (every generation holds a copy of one end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToAnchor {
    /// This supervisor is in charge and serves.
    Serving { pid: u32, generation: u64 },
    /// This supervisor started the next generation, `successor`.
    Reloading { successor: u32, generation: u64 },
    /// The reload failed; this supervisor stays in charge.
    ReloadFailed(String),
    /// The supervisor in charge stops the service (an operator asked).
    Stopping { pid: u32 },
    /// A generation could not start, and why.
    Failed(String),
}

/// No message: the type of what the anchor sends (it only listens, and a
/// generation sees its exit as the channel's hang-up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nothing {}

/// A message type's encoding: one tag byte, then its payload.
pub trait Wire: Sized {
    fn encode(&self, buf: &mut Vec<u8>);
    /// `None` for a frame that is not a message of this type.
    fn decode(tag: u8, payload: &[u8]) -> Option<Self>;
}

fn push_text(buf: &mut Vec<u8>, text: &str) {
    let mut end = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    buf.extend_from_slice(&text.as_bytes()[..end]);
}

/// The most bytes of state a worker hands over (plugin-api's `MAX_STATE`).
pub const MAX_STATE: usize = plugin_api::ffi::MAX_STATE;

fn push_state(buf: &mut Vec<u8>, state: &[u8]) {
    buf.push(b'T');
    buf.extend(&state[..state.len().min(MAX_STATE)]);
}

fn text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

impl Wire for ToWorker {
    fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            ToWorker::Go => buf.push(b'G'),
            ToWorker::Stop(StopReason::Reload) => buf.extend([b'S', b'r']),
            ToWorker::Stop(StopReason::Shutdown) => buf.extend([b'S', b's']),
            ToWorker::State(state) => push_state(buf, state),
        }
    }

    fn decode(tag: u8, payload: &[u8]) -> Option<Self> {
        match (tag, payload) {
            (b'G', []) => Some(ToWorker::Go),
            (b'S', [b'r']) => Some(ToWorker::Stop(StopReason::Reload)),
            (b'S', [b's']) => Some(ToWorker::Stop(StopReason::Shutdown)),
            (b'T', state) => Some(ToWorker::State(state.to_vec())),
            _ => None,
        }
    }
}

impl Wire for FromWorker {
    fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            FromWorker::Loaded { can_hot_reload } => buf.extend([b'L', u8::from(*can_hot_reload)]),
            FromWorker::Ready => buf.push(b'R'),
            FromWorker::Failed(reason) => {
                buf.push(b'F');
                push_text(buf, reason);
            }
            FromWorker::State(state) => push_state(buf, state),
        }
    }

    fn decode(tag: u8, payload: &[u8]) -> Option<Self> {
        match (tag, payload) {
            (b'L', [flag @ (0 | 1)]) => Some(FromWorker::Loaded {
                can_hot_reload: *flag == 1,
            }),
            (b'R', []) => Some(FromWorker::Ready),
            (b'F', reason) => Some(FromWorker::Failed(text(reason))),
            (b'T', state) => Some(FromWorker::State(state.to_vec())),
            _ => None,
        }
    }
}

impl Wire for NewToOld {
    fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            NewToOld::ReadyToTakeOver => buf.push(b'R'),
            NewToOld::TookOver => buf.push(b'T'),
            NewToOld::Failed(reason) => {
                buf.push(b'F');
                push_text(buf, reason);
            }
        }
    }

    fn decode(tag: u8, payload: &[u8]) -> Option<Self> {
        match (tag, payload) {
            (b'R', []) => Some(NewToOld::ReadyToTakeOver),
            (b'T', []) => Some(NewToOld::TookOver),
            (b'F', reason) => Some(NewToOld::Failed(text(reason))),
            _ => None,
        }
    }
}

impl Wire for OldToNew {
    fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            OldToNew::Released => buf.push(b'H'),
            OldToNew::State { slot, state } => {
                buf.push(b'T');
                buf.extend(slot.to_le_bytes());
                buf.extend(&state[..state.len().min(MAX_STATE)]);
            }
        }
    }

    fn decode(tag: u8, payload: &[u8]) -> Option<Self> {
        match (tag, payload) {
            (b'H', []) => Some(OldToNew::Released),
            (b'T', [a, b, c, d, state @ ..]) => Some(OldToNew::State {
                slot: u32::from_le_bytes([*a, *b, *c, *d]),
                state: state.to_vec(),
            }),
            _ => None,
        }
    }
}

impl Wire for ToAnchor {
    fn encode(&self, buf: &mut Vec<u8>) {
        let (tag, text) = match self {
            ToAnchor::Serving { pid, generation } => (b'S', format!("{pid} {generation}")),
            ToAnchor::Reloading {
                successor,
                generation,
            } => (b'R', format!("{successor} {generation}")),
            ToAnchor::ReloadFailed(reason) => (b'E', reason.clone()),
            ToAnchor::Stopping { pid } => (b'X', pid.to_string()),
            ToAnchor::Failed(reason) => (b'F', reason.clone()),
        };
        buf.push(tag);
        push_text(buf, &text);
    }

    fn decode(tag: u8, payload: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(payload).ok();
        let pair = || {
            let (a, b) = text?.split_once(' ')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        };
        match tag {
            b'S' => pair().map(|(pid, generation)| ToAnchor::Serving { pid, generation }),
            b'R' => pair().map(|(successor, generation)| ToAnchor::Reloading {
                successor,
                generation,
            }),
            b'E' => Some(ToAnchor::ReloadFailed(
                String::from_utf8_lossy(payload).into(),
            )),
            b'X' => Some(ToAnchor::Stopping {
                pid: text?.parse().ok()?,
            }),
            b'F' => Some(ToAnchor::Failed(String::from_utf8_lossy(payload).into())),
            _ => None,
        }
    }
}

impl Wire for Nothing {
    fn encode(&self, _: &mut Vec<u8>) {
        match *self {}
    }

    fn decode(_: u8, _: &[u8]) -> Option<Self> {
        None
    }
}

/// What a non-blocking receive found.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<M> {
    Message(M),
    Empty,
    Closed,
}

/// One end of a channel: sends `S`, receives `R`.
#[derive(Debug)]
pub struct Channel<S, R> {
    fd: OwnedFd,
    types: PhantomData<fn(S) -> R>,
}

/// The supervisor's end of a worker channel.
pub type ToWorkerEnd = Channel<ToWorker, FromWorker>;
/// The worker's end.
pub type WorkerEnd = Channel<FromWorker, ToWorker>;
/// The new generation's end of the handover channel.
pub type NewEnd = Channel<NewToOld, OldToNew>;
/// The old generation's end.
pub type OldEnd = Channel<OldToNew, NewToOld>;
/// A supervisor's end of the anchor channel.
pub type ToAnchorEnd = Channel<ToAnchor, Nothing>;
/// The anchor's end.
pub type AnchorEnd = Channel<Nothing, ToAnchor>;

impl<S: Wire, R: Wire> Channel<S, R> {
    /// A connected pair, both ends close-on-exec.
    pub fn pair() -> io::Result<(Channel<S, R>, Channel<R, S>)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((Channel::from_fd(a), Channel::from_fd(b)))
    }

    /// Adopts an inherited descriptor.
    pub fn from_fd(fd: OwnedFd) -> Channel<S, R> {
        Channel {
            fd,
            types: PhantomData,
        }
    }

    pub fn send(&self, message: &S) -> io::Result<()> {
        let mut buf = Vec::with_capacity(16);
        message.encode(&mut buf);
        loop {
            // MSG_NOSIGNAL: a dead peer is an error to handle, not a SIGPIPE.
            match send(self.fd.as_raw_fd(), &buf, MsgFlags::MSG_NOSIGNAL) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receives one message without blocking.
    pub fn try_recv(&self) -> io::Result<Received<R>> {
        self.recv_with(MsgFlags::MSG_DONTWAIT)
    }

    /// Receives one message, blocking until one arrives or the peer is gone.
    #[cfg(test)]
    pub fn recv(&self) -> io::Result<Received<R>> {
        self.recv_with(MsgFlags::empty())
    }

    fn recv_with(&self, flags: MsgFlags) -> io::Result<Received<R>> {
        // Room for the longest valid frame (a tag, a slot, the state) and
        // one byte more, so an oversized frame shows as such.
        let mut buf = vec![0u8; MAX_STATE + 6];
        let n = loop {
            match recv(self.fd.as_raw_fd(), &mut buf, flags) {
                Ok(n) => break n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(Received::Empty),
                Err(Errno::ECONNRESET) => return Ok(Received::Closed),
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            return Ok(Received::Closed);
        }
        let (tag, payload) = (buf[0], &buf[1..n]);
        if payload.len() > MAX_STATE + 4 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("oversized channel message: {n} bytes"),
            ));
        }
        R::decode(tag, payload)
            .map(Received::Message)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "unknown channel message: tag {tag:#04x}, {} bytes",
                        payload.len()
                    ),
                )
            })
    }
}

impl<S, R> AsFd for Channel<S, R> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl<S, R> AsRawFd for Channel<S, R> {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
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
                ToWorker::Go,
                ToWorker::Stop(StopReason::Reload),
                ToWorker::Stop(StopReason::Shutdown),
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
                FromWorker::Ready,
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
        round_trip(&old, &new, &[OldToNew::Released]);
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
                a.send(&FromWorker::Ready).unwrap();
                prop_assert_eq!(b.recv().unwrap(), Received::Message(FromWorker::Ready));
            }

            #[test]
            fn failure_reasons_round_trip(reason in ".{0,200}") {
                let (a, b) = WorkerEnd::pair().unwrap();
                a.send(&FromWorker::Failed(reason.clone())).unwrap();
                prop_assert_eq!(b.recv().unwrap(), Received::Message(FromWorker::Failed(reason)));
            }
        }
    }
}
