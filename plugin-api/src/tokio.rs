//! Async support, with the `tokio` feature of `plugin-api` (off by default):
//! [`StopToken::stopped`], and the host's listeners as [`StopListener`]s,
//! tokio listeners whose accept ends at the stop.
//!
//! # Serving HTTP (axum, hyper) without losing a request
//!
//! The rule of every plugin: **never close an accepted connection before
//! answering it.** At a hot reload the old generation stops accepting, and
//! whatever waits in the listeners' backlog is accepted by the new one; but
//! a connection the old worker has already accepted is its own to answer.
//!
//! `axum::serve(..).with_graceful_shutdown(..)` breaks that rule: at the
//! shutdown signal, hyper closes every connection that is idle, and a
//! connection accepted a moment ago whose request has not been read yet
//! counts as idle. Under load, that loses a request or two per reload.
//! Instead:
//!
//! 1. accept with [`StopListener::accept`], which returns `None` at the stop
//!    and never takes a connection still queued;
//! 2. serve each accepted connection in its own task with hyper's
//!    `serve_connection` (axum's `Router` through
//!    `hyper_util::service::TowerToHyperService`);
//! 3. at the stop, let each connection first receive its first request (a
//!    fresh connection's request is on its way), then call
//!    `graceful_shutdown()` on it: the reply in flight is finished (with
//!    `connection: close`), an idle keep-alive connection is closed;
//! 4. wait for the connection tasks before returning from
//!    `supervised_process`, at most until [`StopToken::deadline`].
//!
//! `plugins/hello-axum` does exactly this, and its test makes 20 hot reloads
//! under load without a failed request.

use std::io;
use std::net::SocketAddr;

use ::tokio::io::unix::AsyncFd;
use ::tokio::net::{TcpListener, TcpStream};

use crate::{StopToken, Supervisor};

impl StopToken {
    /// Completes once the worker should stop (at once if it should already).
    /// Needs a tokio runtime with IO enabled. Cancel-safe.
    pub async fn stopped(&self) {
        if self.is_stopped() {
            return;
        }
        // A private copy of the stop descriptor, registered with this
        // runtime: it stays readable from the stop on, and is never read.
        let fd = match self.as_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(_) => return self.poll_slowly().await,
        };
        // SAFETY: the `OwnedFd` is a valid descriptor that the `AsyncFd`
        // owns: it stays open, and names the same pipe, until dropped with it.
        let registered =
            unsafe { AsyncFd::register_with_interest(fd, ::tokio::io::Interest::READABLE) };
        let fd = match registered {
            Ok(fd) => fd,
            Err(_) => return self.poll_slowly().await,
        };
        while !self.is_stopped() {
            match fd.readable().await {
                // Readable stays true: nothing to clear.
                Ok(_guard) => {}
                Err(_) => return self.poll_slowly().await,
            }
        }
    }

    /// The fallback when the descriptor cannot be watched (no descriptor
    /// left to copy it, say): check every 10 ms.
    async fn poll_slowly(&self) {
        while !self.is_stopped() {
            ::tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

/// One of the host's listening sockets as a tokio listener whose
/// [`accept`](StopListener::accept) ends at the stop: from
/// [`Supervisor::tokio_listeners`].
#[derive(Debug)]
pub struct StopListener {
    inner: TcpListener,
    stop: StopToken,
}

impl StopListener {
    /// Waits for a connection or for the stop, whichever comes first:
    /// `Ok(None)` at the stop. A stop wins over a waiting connection, which
    /// stays queued for the next generation. Cancel-safe.
    pub async fn accept(&self) -> io::Result<Option<(TcpStream, SocketAddr)>> {
        if self.stop.is_stopped() {
            return Ok(None);
        }
        ::tokio::select! {
            biased;
            () = self.stop.stopped() => Ok(None),
            accepted = self.inner.accept() => accepted.map(Some),
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The stop this listener watches.
    pub fn stop_token(&self) -> &StopToken {
        &self.stop
    }

    /// The tokio listener inside. Its `accept` does not end at the stop:
    /// race it against [`StopToken::stopped`] yourself.
    pub fn into_inner(self) -> TcpListener {
        self.inner
    }
}

impl Supervisor {
    /// The host's `--listen` sockets as [`StopListener`]s, in command-line
    /// order. Call it inside a tokio runtime with IO enabled (in
    /// `block_on`, or after `Runtime::enter`). Each call returns new
    /// descriptors for the same shared sockets; they stay non-blocking
    /// (never change that: it would change it for every worker).
    pub fn tokio_listeners(&self) -> io::Result<Vec<StopListener>> {
        self.listeners()?
            .into_iter()
            .map(|listener| {
                Ok(StopListener {
                    inner: TcpListener::from_std(listener)?,
                    stop: self.stop_token(),
                })
            })
            .collect()
    }
}
