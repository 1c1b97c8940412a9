//! Test-only: a plugin that misbehaves on request, to drive the host's
//! failure paths. It reads its mode, when it is built, from the file named
//! by the environment variable `FAULTY_MODE_FILE` (a test rewrites that file
//! between generations, since a reload keeps the arguments and environment):
//!
//! - `serve` (also: no variable, no file): loop until told to stop;
//! - `no-hot-reload`: the same, but `can_do_hot_reload()` is false;
//! - `error-in-new` / `panic-in-new`: the constructor fails / panics;
//! - `panic-in-run`: `supervised_process` panics after `ready_to_take_over`;
//! - `exit-in-run`: the worker process exits with status 7;
//! - `hang-before-ready`: never calls `ready_to_take_over` (but stops when asked).
//!
//! Every start and every shutdown appends a line to `FAULTY_MODE_FILE.events`.

use std::io::Write;
use std::time::Duration;

use plugin_api::{export_plugin, SupervisedProcess, Supervisor};

struct Faulty {
    mode: String,
    events: Option<String>,
}

impl Faulty {
    fn new(_args: Vec<String>) -> Result<Self, String> {
        let file = std::env::var("FAULTY_MODE_FILE").ok();
        let mode = file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "serve".to_owned());
        let faulty = Faulty {
            mode,
            events: file.map(|f| format!("{f}.events")),
        };
        match faulty.mode.as_str() {
            "error-in-new" => Err("told to fail (mode error-in-new)".to_owned()),
            "panic-in-new" => panic!("told to panic (mode panic-in-new)"),
            _ => Ok(faulty),
        }
    }

    fn event(&self, what: &str) {
        if let Some(path) = &self.events {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{what} mode={} pid={}", self.mode, std::process::id());
            }
        }
    }
}

impl SupervisedProcess for Faulty {
    fn supervised_process(&mut self, sup: &Supervisor) -> Result<(), String> {
        self.event("start");
        if self.mode != "hang-before-ready" {
            sup.ready_to_take_over()?;
        }
        match self.mode.as_str() {
            "panic-in-run" => panic!("told to panic (mode panic-in-run)"),
            "exit-in-run" => std::process::exit(7),
            _ => {}
        }
        while sup.ping_supervisor() {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    fn supervised_shutdown(&mut self) {
        self.event("shutdown");
    }

    fn can_do_hot_reload(&self) -> bool {
        self.mode != "no-hot-reload"
    }
}

export_plugin!(Faulty::new);
