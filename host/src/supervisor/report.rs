//! What the supervisor tells the outside: the status file and systemd.

use super::runtime::Runtime;
use crate::lifecycle::{Life, Notice};
use crate::notify;
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
        };
        if let Err(e) = status::write(&status::path_for(pid_file.path()), &status) {
            tracing::warn!("cannot write the status file: {e}");
        }
    }

    pub(super) fn notify(&self, notice: Notice) {
        match notice {
            Notice::Serving => notify::serving(self.machine.generation),
            Notice::Reloading { generation } => notify::reloading(generation),
            Notice::ReloadFailed(reason) => notify::reload_failed(&reason),
            Notice::HandedOver { pid, generation } => {
                notify::handed_over(pid.as_raw() as u32, generation)
            }
            Notice::Stopping => notify::stopping(),
        }
    }
}
