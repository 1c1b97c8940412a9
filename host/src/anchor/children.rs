//! The anchor's children ending: the service's end when it was asked to
//! stop, a crash to recover from (a new generation, with backoff) when not.

use super::*;

impl Anchor {
    pub(super) fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => self.child_exited(status),
                Err(Errno::EINTR) => continue,
                Err(e) => return tracing::warn!("waitpid failed: {e}"),
            }
        }
    }

    pub(super) fn child_exited(&mut self, status: WaitStatus) {
        let Some(pid) = status.pid() else { return };
        let code = match status {
            WaitStatus::Exited(_, code) => code,
            WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
            _ => return,
        };
        // Its last words, if it said why it failed.
        self.read_messages();
        if self.in_charge.is_some_and(|g| g.pid == pid) {
            self.supervisor_gone(code, &describe_exit(status));
        } else if self.starting.is_some_and(|g| g.pid == pid) {
            self.starting = None;
            if !self.served || self.stopping {
                // The first generation could not start: the service ends
                // with its status (it printed why).
                self.stopping = true;
                self.exit_code = if code == 0 { 1 } else { code };
                return;
            }
            tracing::warn!("generation starting as pid {pid} {}", describe_exit(status));
            self.schedule_restart();
        } else if self.successor == Some(pid) {
            self.successor = None;
            if self.in_charge.is_none() && !self.stopping {
                tracing::warn!("the new generation (pid {pid}) {}", describe_exit(status));
                self.schedule_restart();
            }
        } else {
            tracing::debug!("reaped pid {pid} ({})", describe_exit(status));
        }
    }

    /// The pidfd of the supervisor in charge is readable: it exited. If it
    /// is our child, its status is there to reap; if not (the previous
    /// generation started it), its parent reaps it and all we know is that
    /// it is gone.
    pub(super) fn in_charge_exited(&mut self) {
        let Some(g) = self.in_charge else { return };
        // The poll may have seen a supervisor that a message since replaced.
        let Some(fd) = &self.in_charge_fd else { return };
        let mut still = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        if !matches!(poll(&mut still, PollTimeout::ZERO), Ok(1)) {
            return;
        }
        match waitpid(g.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                self.child_exited(status)
            }
            _ => self.supervisor_gone(0, "exited"),
        }
    }

    /// The supervisor in charge is gone: the end of the service if it said
    /// it stops, else a crash to recover from.
    pub(super) fn supervisor_gone(&mut self, code: i32, how: &str) {
        let Some(gone) = self.in_charge.take() else {
            return;
        };
        self.in_charge_fd = None;
        let pid = gone.pid;
        if self.stopping {
            self.exit_code = code;
            return tracing::info!("supervisor pid {pid} {how}");
        }
        tracing::warn!(
            "supervisor pid {pid} (generation {}) died unasked ({how})",
            gone.number
        );
        if gone.since.elapsed() >= STABLE {
            self.restarts = 0;
        }
        match self.successor {
            // It takes charge on its own, now that its predecessor is gone.
            Some(successor) => tracing::info!("waiting for pid {successor} to take over"),
            None => self.schedule_restart(),
        }
    }

    /// Restarts at once the first time, then backs off, doubling up to
    /// `MAX_RESTART_DELAY`, while generations keep dying young.
    pub(super) fn schedule_restart(&mut self) {
        if self.stopping {
            return;
        }
        let delay = match self.restarts {
            0 => Duration::ZERO,
            n => (Duration::from_millis(100) * 2u32.saturating_pow(n - 1)).min(MAX_RESTART_DELAY),
        };
        self.restarts = self.restarts.saturating_add(1);
        tracing::info!(
            "starting generation {} in {delay:?}",
            self.last_generation + 1
        );
        self.restart_at = Some(Instant::now() + delay);
    }
}
