//! The socketpair protocol: between a supervisor and each of its workers,
//! and between a generation and the one replacing it.
//!
//! `SOCK_SEQPACKET` keeps message boundaries, so a message is one tag byte,
//! plus UTF-8 text for `Failed`. A peer that dies closes its end, which the
//! other side sees as `Closed` (or a poll hang-up): that is how the death of
//! a supervisor, a worker or a new generation is noticed without any timer.

#[cfg(test)]
mod tests;
mod wire;

pub use wire::{Wire, MAX_STATE};

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
    /// Stop accepting, finish what you hold, return (`ping_supervisor` turns false).
    Stop(StopReason),
    /// The state the previous generation's worker of this slot handed over.
    State(Vec<u8>),
    /// To a worker forked ahead of the start (a standby's first): load the
    /// snapshot now, as this generation's worker.
    Go { generation: u64 },
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
    /// The plugin called `ready_to_take_over`, which returns: it is
    /// initialised and accepts from now on.
    Serving,
    /// It took a `Stop`: its stop flag is set and its stop fd readable, so
    /// a plugin that checks the stop before each accept accepts no more
    /// (best effort: a thread already past that check, or woken for a
    /// connection that came before the stop, still accepts that one).
    StopTaken,
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
    /// Our workers serve and we are in charge: finish and exit.
    TookOver,
    /// This generation gives up, and why: carry on.
    Failed(String),
}

/// old generation -> the one replacing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OldToNew {
    /// To a standby (see `reload::spawn_standby`): start now, as
    /// generation `generation`.
    Start { generation: u64 },
    /// My workers took the stop (or did not within a bounded wait, see
    /// `STOP_TAKEN_WAIT`): take over.
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
