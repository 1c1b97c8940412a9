//! A plugin built with `panic = "abort"` whose worker panics once it
//! serves: the host must log the panic (message and location) before the
//! worker dies by SIGABRT, and respawn it.

use std::time::Duration;

use plugin_api::{export_plugin, tracing, SupervisedProcess, Supervisor};

struct PanicAbort;

impl SupervisedProcess for PanicAbort {
    fn supervised_process(&mut self, sup: &Supervisor) -> Result<(), String> {
        sup.ready_to_take_over()?;
        tracing::info!(pid = std::process::id(), "panic-abort plugin serving");
        // Serve a moment, then panic (unless stopped first).
        if sup.stop_token().wait(Duration::from_millis(100)) {
            return Ok(());
        }
        panic!("panic-abort plugin: deliberate panic number {}", 42); // PANIC-HERE
    }

    fn can_do_hot_reload(&self) -> bool {
        true
    }
}

export_plugin!(|_args: Vec<String>| Ok::<_, String>(PanicAbort));
