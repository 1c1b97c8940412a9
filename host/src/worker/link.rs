//! The worker's side of the supervisor channel: the link thread, the stop
//! flag `ping_supervisor` reads, and readiness.

use super::*;

/// The worker's side of the supervisor channel, shared by the plugin's
/// thread and the link thread.
pub(super) struct Link {
    pub(super) channel: WorkerEnd,
    pub(super) stop: AtomicBool,
    pub(super) state: Mutex<LinkState>,
    pub(super) changed: Condvar,
    pub(super) stop_read: OwnedFd,
    pub(super) stop_write: OwnedFd,
    /// See `Spec::base_nice`.
    pub(super) base_nice: Option<i32>,
    /// See `Spec::shutdown_timeout`.
    pub(super) shutdown_timeout: Duration,
    /// Set by `plugin_failed`, once: the worker ends with this reason.
    pub(super) failure: Mutex<Option<String>>,
}

#[derive(Default)]
pub(super) struct LinkState {
    /// It may serve: from the start, or, for a reload's new worker, once it
    /// is ready. A worker stopped before that has nothing to finish.
    pub(super) started: bool,
    pub(super) stop: bool,
    pub(super) serving_sent: bool,
    /// Why it stops (`plugin_api::ffi::STOP_*`), from the first stop.
    pub(super) reason: u8,
    /// When it will be killed, if anyone will.
    pub(super) deadline: Option<Instant>,
    /// What the previous generation's worker of this slot handed over,
    /// until the plugin takes it.
    pub(super) inherited: Option<Vec<u8>>,
}

impl Link {
    pub(super) fn new(
        channel: WorkerEnd,
        head_start: bool,
        base_nice: Option<i32>,
        shutdown_timeout: Duration,
    ) -> Result<Link, (WorkerEnd, nix::Error)> {
        let (stop_read, stop_write) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(pipe) => pipe,
            Err(e) => return Err((channel, e)),
        };
        Ok(Link {
            channel,
            stop: AtomicBool::new(false),
            state: Mutex::new(LinkState {
                started: !head_start,
                ..LinkState::default()
            }),
            changed: Condvar::new(),
            stop_read,
            stop_write,
            base_nice,
            shutdown_timeout,
            failure: Mutex::new(None),
        })
    }

    /// Starts the link thread.
    pub(super) fn watch(self: &Arc<Self>, signal_fd: SignalFd) -> std::io::Result<()> {
        let link = Arc::clone(self);
        std::thread::Builder::new()
            .name("host-link".into())
            .spawn(move || link.watch_loop(signal_fd))?;
        Ok(())
    }

    pub(super) fn watch_loop(&self, signal_fd: SignalFd) {
        loop {
            let mut fds = [
                PollFd::new(self.channel.as_fd(), PollFlags::POLLIN),
                PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    return self.request_stop(
                        &format!("cannot watch the supervisor channel: {e}"),
                        api::STOP_SUPERVISOR_GONE,
                    )
                }
            }
            if fds[1].any().unwrap_or(false) {
                let (name, watching) = match signal_fd.read_signal() {
                    Ok(Some(info)) => (signals::name(info.ssi_signo as i32), true),
                    Ok(None) => continue,
                    Err(_) => ("a signal", false),
                };
                self.exit_if_never_served(name);
                self.request_stop(&format!("{name} received"), api::STOP_SHUTDOWN);
                if !watching {
                    return;
                }
                // Still listening: a `Stop` that follows is confirmed.
                continue;
            }
            if fds[0].any().unwrap_or(false) {
                match self.channel.try_recv() {
                    Ok(Received::Message(ToWorker::State(state))) => {
                        self.update(|s| s.inherited = Some(state))
                    }
                    Ok(Received::Message(ToWorker::Stop(reason))) => {
                        match reason {
                            StopReason::Reload => {
                                self.request_stop("a new generation took over", api::STOP_RELOAD)
                            }
                            StopReason::Shutdown => {
                                self.request_stop("the host is stopping", api::STOP_SHUTDOWN)
                            }
                        }
                        // The old generation hands over once every worker
                        // says this: a plugin polling its stop fd before an
                        // accept sees it from now on.
                        if let Err(e) = self.channel.send(&FromWorker::StopTaken) {
                            tracing::debug!("cannot confirm the stop: {e}");
                        }
                        return;
                    }
                    Ok(Received::Closed) => {
                        self.exit_if_never_served("the supervisor is gone");
                        return self
                            .request_stop("the supervisor is gone", api::STOP_SUPERVISOR_GONE);
                    }
                    // Only a prepared worker's first message (see `run_prepared`).
                    Ok(Received::Message(ToWorker::Go { .. })) | Ok(Received::Empty) => {}
                    Err(e) => {
                        return self.request_stop(
                            &format!("the supervisor channel failed: {e}"),
                            api::STOP_SUPERVISOR_GONE,
                        )
                    }
                }
            }
        }
    }

    /// A worker of a generation abandoned before it served (its supervisor
    /// was killed, or a signal came before it was ready) has nothing to finish, and
    /// a plugin stuck in its start-up must not linger: it exits at once.
    pub(super) fn exit_if_never_served(&self, why: &str) {
        if self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .started
        {
            return;
        }
        tracing::debug!("{why} before this worker could serve: exiting");
        exit_now(EXIT_NOT_STARTED)
    }

    pub(super) fn update(&self, change: impl FnOnce(&mut LinkState)) {
        change(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
        self.changed.notify_all();
    }

    /// Signals the stop, for `reason` (`plugin_api::ffi::STOP_*`); the
    /// first stop's reason and deadline stay.
    pub(super) fn request_stop(&self, why: &str, reason: u8) {
        tracing::debug!("stopping: {why}");
        let timeout = self.shutdown_timeout;
        self.update(|s| {
            if !s.stop {
                s.stop = true;
                s.reason = reason;
                // Nobody kills the worker of a supervisor that is gone.
                s.deadline = (reason != api::STOP_SUPERVISOR_GONE)
                    .then(|| Instant::now().checked_add(timeout))
                    .flatten();
            }
        });
        self.stop.store(true, Ordering::SeqCst);
        // The pipe stays readable from now on: a plugin polling it wakes up.
        let _ = nix::unistd::write(&self.stop_write, b"s");
    }

    /// The worker accepts from now on, beside the old generation's until
    /// they stop (which they do once every new worker said this).
    pub(super) fn ready_to_take_over(&self) -> Result<(), String> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.stop {
            return Err("this worker was asked to stop before it could take over".to_owned());
        }
        if !state.started {
            // Before the plugin goes on: a thread it starts from then on
            // must not inherit the head start.
            if let Some(nice) = self.base_nice {
                if let Err(e) = priority::set_all_threads(nice) {
                    tracing::warn!("cannot return to nice {nice}: {e}");
                }
            }
            state.started = true;
        }
        if !state.serving_sent {
            state.serving_sent = true;
            self.channel
                .send(&FromWorker::Serving)
                .map_err(|e| format!("cannot tell the supervisor: {e}"))?;
        }
        Ok(())
    }

    /// The plugin ends the worker (`StopToken::fail`, or a panic on one of
    /// its threads): the supervisor hears the reason at once, the plugin
    /// gets the stop, and the worker exits when `supervised_process` and
    /// `supervised_shutdown` have returned, or at `--shutdown-timeout`.
    pub(super) fn plugin_failed(&self, reason: String) {
        {
            let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
            if failure.is_some() {
                return;
            }
            *failure = Some(reason.clone());
        }
        if self
            .channel
            .send(&FromWorker::Failed(reason.clone()))
            .is_err()
        {
            tracing::error!("{reason}");
        }
        self.request_stop(&format!("the plugin failed: {reason}"), api::STOP_FAILED);
        let timeout = self.shutdown_timeout;
        let enforce = std::thread::Builder::new()
            .name("host-fail".into())
            .spawn(move || {
                std::thread::sleep(timeout);
                tracing::error!("the plugin did not return within --shutdown-timeout ({timeout:?}) after failing: exiting");
                exit_now(EXIT_PLUGIN_FAILED)
            });
        if enforce.is_err() {
            exit_now(EXIT_PLUGIN_FAILED);
        }
    }

    pub(super) fn failed(&self) -> bool {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Reports a failure to the supervisor and returns the exit code.
    pub(super) fn fail(&self, code: i32, reason: String) -> i32 {
        if self
            .channel
            .send(&FromWorker::Failed(reason.clone()))
            .is_err()
        {
            tracing::error!("{reason}");
        }
        code
    }
}

/// Ends the process at once, from any thread.
pub(super) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process at once without running destructors or
    // atexit handlers, which plugin threads may be using concurrently;
    // nothing of this worker needs flushing (the log writes unbuffered).
    unsafe { libc::_exit(code) }
}
