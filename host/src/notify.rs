//! systemd readiness notification, when systemd started the host
//! (`NOTIFY_SOCKET` is set; `Type=notify` or `Type=notify-reload`). The live
//! supervisor reports `READY=1` once serving, `RELOADING=1` while a new
//! generation starts, and `STOPPING=1` when it stops; on handing over, the
//! old supervisor names the new one with `MAINPID=`, which systemd accepts
//! from the main process with the default `NotifyAccess=main`. Workers never
//! see `NOTIFY_SOCKET`; new generations get it through the environment.
//! Without `NOTIFY_SOCKET` every call here does nothing.

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

pub fn handed_over(pid: u32, generation: u64) {
    let status = format!("serving (generation {generation})");
    send(&[
        NotifyState::MainPid(pid),
        NotifyState::Ready,
        NotifyState::Status(&status),
    ]);
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
