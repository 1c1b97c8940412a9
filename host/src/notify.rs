//! systemd readiness notification, when systemd started the host
//! (`NOTIFY_SOCKET` is set; `Type=notify` or `Type=notify-reload`). Only the
//! anchor, the main process for the service's whole life, sends: `READY=1`
//! once a generation serves, `RELOADING=1` while a new one starts (and
//! `READY=1` again when it serves or the reload fails), `STOPPING=1` when
//! the service stops. `NotifyAccess=main` suffices. Supervisors and workers
//! never see `NOTIFY_SOCKET`. Without it every call here does nothing.

use sd_notify::NotifyState;

pub fn serving(generation: u64) {
    let status = format!("serving (generation {generation})");
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

pub fn reloading(next_generation: u64) {
    let status = format!("reloading (starting generation {next_generation})");
    let mut states = vec![NotifyState::Reloading, NotifyState::Status(&status)];
    // systemd wants the reload's start time with RELOADING=1.
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

pub fn reload_failed(reason: &str) {
    let status = format!("serving; reload failed: {reason}");
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}
