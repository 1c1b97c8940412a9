//! The `--listen` sockets: bound once by the first generation, shared by all
//! its workers, and inherited (never re-bound) by every later generation, so
//! that the kernel keeps queueing connections across a reload.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{getsockopt, sockopt, SockType};
use nix::sys::stat::{fstat, SFlag};

use crate::error::Error;

/// The host's listening sockets, in `--listen` order.
#[derive(Debug, Default)]
pub struct Listeners(Vec<TcpListener>);

impl Listeners {
    /// Binds each address. The sockets are made non-blocking, once for all
    /// workers and generations (the flag lives in the shared socket).
    pub fn bind(addrs: &[SocketAddr]) -> Result<Listeners, Error> {
        let mut listeners = Vec::with_capacity(addrs.len());
        for addr in addrs {
            let listener = TcpListener::bind(addr).map_err(|e| Error::listen(*addr, e))?;
            listener
                .set_nonblocking(true)
                .map_err(|e| Error::listen(*addr, e))?;
            listeners.push(listener);
        }
        Ok(Listeners(listeners))
    }

    /// Adopts sockets inherited from the previous generation, after checking
    /// that each is a listening TCP socket, and marks them close-on-exec again.
    pub fn inherit(fds: Vec<OwnedFd>) -> Result<Listeners, Error> {
        fds.into_iter()
            .map(|fd| {
                validate(&fd).map_err(|e| {
                    Error::Inherit(format!("listening socket fd {}: {e}", fd.as_raw_fd()))
                })?;
                Ok(TcpListener::from(fd))
            })
            .collect::<Result<_, _>>()
            .map(Listeners)
    }

    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.0.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// The bound addresses (with the real port where `:0` was asked for).
    pub fn local_addrs(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|l| {
                l.local_addr()
                    .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string())
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

fn validate(fd: &OwnedFd) -> io::Result<()> {
    let stat = fstat(fd.as_fd())?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a socket"));
    }
    if getsockopt(fd, sockopt::SockType)? != SockType::Stream {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a stream socket",
        ));
    }
    if !getsockopt(fd, sockopt::AcceptConn)? {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not listening"));
    }
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}
