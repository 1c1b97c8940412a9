//! What the supervisor tells the outside: the status file and systemd.

use super::runtime::Runtime;
use crate::channel::ToAnchor;
use crate::lifecycle::{Life, Notice};
use crate::reload;
use crate::status::{self, State, Status};

impl Runtime {
    pub(super) fn write_status(&self) {
        let Some(pid_file) = self.pid_file.as_ref().filter(|_| self.machine.in_charge()) else {
            return;
        };
        let state = match &self.machine.life {
            Life::Starting { .. } | Life::TakingOver { .. } => State::Starting,
            Life::Serving { reload: Some(_) } => State::Reloading,
            Life::Serving { reload: None } => State::Serving,
            Life::Stopping { .. } => State::Stopping,
        };
        let status = Status {
            pid: std::process::id(),
            generation: self.machine.generation,
            state,
            reloads: self.machine.reloads,
            last_reload: self.machine.last_reload.clone(),
            listen: self.listeners.local_addrs(),
            crash_looping: self.machine.crash_looping(),
            anchor: self.anchor.pid,
            anchor_since: self.anchor.since,
            // What proves to a control command that `pid` is this host's
            // supervisor (see `control`); written as unknown if unreadable,
            // and then the commands refuse rather than guess.
            instance: reload::instance().to_owned(),
            start_time: status::start_time("self").unwrap_or(0),
            pid_ns: status::own_pid_namespace().unwrap_or_default(),
        };
        if let Err(e) = status::write(&status::path_for(pid_file.path()), &status) {
            tracing::warn!("cannot write the status file: {e}");
        }
    }

    /// Tells the anchor, which alone talks to systemd.
    pub(super) fn notify(&self, notice: Notice) {
        let pid = std::process::id();
        let message = match notice {
            Notice::Serving => ToAnchor::Serving {
                pid,
                generation: self.machine.generation,
            },
            Notice::Reloading {
                generation,
                successor,
            } => ToAnchor::Reloading {
                successor: successor.as_raw() as u32,
                generation,
            },
            Notice::ReloadFailed(reason) => ToAnchor::ReloadFailed(reason),
            Notice::Stopping => ToAnchor::Stopping { pid },
        };
        if let Err(e) = self.anchor.channel.send(&message) {
            tracing::debug!("cannot tell the anchor {message:?}: {e}");
        }
    }
}
