//! The socketpair protocol: between a supervisor and each of its workers,
//! and between a generation and the one replacing it.
//!
//! `SOCK_SEQPACKET` keeps message boundaries, so a message is one tag byte,
//! plus UTF-8 text for `Failed`. A peer that dies closes its end, which the
//! other side sees as `Closed` (or a poll hang-up): that is how the death of
//! a supervisor, a worker or a new generation is noticed without any timer.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};

/// Longest `Failed` reason sent; longer ones are cut.
const MAX_TEXT: usize = 4096;

/// One message on a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// worker -> supervisor: the plugin is built; it says whether it can hot-reload.
    Loaded { can_hot_reload: bool },
    /// worker -> supervisor: the plugin called `ready_to_take_over`.
    Ready,
    /// supervisor -> worker: serve (`ready_to_take_over` returns Ok).
    Go,
    /// supervisor -> worker: stop (`ping_supervisor` turns false).
    Stop,
    /// worker -> supervisor, or new generation -> old: why it is giving up.
    Failed(String),
    /// old generation -> new: my workers are told to stop; take over.
    Released,
}

/// What a non-blocking receive found.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    Message(Message),
    Empty,
    Closed,
}

/// One end of a channel.
#[derive(Debug)]
pub struct Channel(OwnedFd);

impl Channel {
    /// A connected pair, both ends close-on-exec.
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((Channel(a), Channel(b)))
    }

    /// Adopts an inherited descriptor.
    pub fn from_fd(fd: OwnedFd) -> Channel {
        Channel(fd)
    }

    pub fn send(&self, message: &Message) -> io::Result<()> {
        let mut buf = Vec::with_capacity(16);
        match message {
            Message::Loaded { can_hot_reload } => buf.extend([b'L', u8::from(*can_hot_reload)]),
            Message::Ready => buf.push(b'R'),
            Message::Go => buf.push(b'G'),
            Message::Stop => buf.push(b'S'),
            Message::Released => buf.push(b'H'),
            Message::Failed(reason) => {
                buf.push(b'F');
                let mut end = reason.len().min(MAX_TEXT);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                buf.extend_from_slice(&reason.as_bytes()[..end]);
            }
        }
        loop {
            // MSG_NOSIGNAL: a dead peer is an error to handle, not a SIGPIPE.
            match send(self.0.as_raw_fd(), &buf, MsgFlags::MSG_NOSIGNAL) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receives one message without blocking.
    pub fn try_recv(&self) -> io::Result<Received> {
        self.recv_with(MsgFlags::MSG_DONTWAIT)
    }

    /// Receives one message, blocking until one arrives or the peer is gone.
    #[cfg(test)]
    pub fn recv(&self) -> io::Result<Received> {
        self.recv_with(MsgFlags::empty())
    }

    fn recv_with(&self, flags: MsgFlags) -> io::Result<Received> {
        let mut buf = [0u8; MAX_TEXT + 1];
        let n = loop {
            match recv(self.0.as_raw_fd(), &mut buf, flags) {
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
        let message = match (buf[0], &buf[1..n]) {
            (b'L', [flag]) => Message::Loaded {
                can_hot_reload: *flag != 0,
            },
            (b'R', []) => Message::Ready,
            (b'G', []) => Message::Go,
            (b'S', []) => Message::Stop,
            (b'H', []) => Message::Released,
            (b'F', text) => Message::Failed(String::from_utf8_lossy(text).into_owned()),
            (tag, rest) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "unknown channel message: tag {tag:#04x}, {} bytes",
                        rest.len()
                    ),
                ))
            }
        };
        Ok(Received::Message(message))
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let (a, b) = Channel::pair().unwrap();
        let all = [
            Message::Loaded {
                can_hot_reload: true,
            },
            Message::Loaded {
                can_hot_reload: false,
            },
            Message::Ready,
            Message::Go,
            Message::Stop,
            Message::Released,
            Message::Failed("plugin panicked: ünïcode".into()),
        ];
        for m in &all {
            a.send(m).unwrap();
            assert_eq!(b.recv().unwrap(), Received::Message(m.clone()));
        }
        assert_eq!(b.try_recv().unwrap(), Received::Empty);
        drop(a);
        assert_eq!(b.try_recv().unwrap(), Received::Closed);
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let (a, b) = Channel::pair().unwrap();
        a.send(&Message::Failed("é".repeat(MAX_TEXT))).unwrap();
        let Received::Message(Message::Failed(text)) = b.recv().unwrap() else {
            panic!("no Failed")
        };
        assert!(text.len() <= MAX_TEXT && text.chars().all(|c| c == 'é'));
    }
}
