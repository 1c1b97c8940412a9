//! `ticker`: a plugin that is a loop, not a server. Every 100 ms it appends
//! `tick pid=<pid> gen=<generation>` to the file named by its one argument,
//! waiting on the stop in between (`StopToken::wait`), so a stop ends the
//! wait at once; on shutdown it appends `shutdown pid=<pid>` once.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::time::{Duration, Instant};

use plugin_api::{export_plugin, tracing, SupervisedProcess, Supervisor};

const PERIOD: Duration = Duration::from_millis(100);

struct Ticker {
    file: File,
}

impl Ticker {
    fn new(args: Vec<String>) -> Result<Self, String> {
        let [path] = args.as_slice() else {
            return Err(format!(
                "ticker takes one argument, the file to append ticks to (got {}); run: host --plugin libticker.so -- ticks.log",
                args.len()
            ));
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open {path} for appending: {e}"))?;
        Ok(Ticker { file })
    }

    fn append(&mut self, line: &str) -> Result<(), String> {
        // One write per line, so lines from several workers never interleave.
        self.file
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| format!("cannot append to the tick file: {e}"))
    }
}

impl SupervisedProcess for Ticker {
    fn supervised_process(&mut self, sup: &Supervisor) -> Result<(), String> {
        sup.ready_to_take_over()?;
        let pid = std::process::id();
        let gen = sup.generation();
        tracing::info!(pid, gen, "ticking every {PERIOD:?}");
        // Wait on the stop, not in sleeps: a stop is noticed at once.
        let stop = sup.stop_token();
        let mut next = Instant::now();
        loop {
            self.append(&format!("tick pid={pid} gen={gen}"))?;
            next += PERIOD;
            if stop.wait(next.saturating_duration_since(Instant::now())) {
                break;
            }
        }
        Ok(())
    }

    fn supervised_shutdown(&mut self) {
        let line = format!("shutdown pid={}", std::process::id());
        if let Err(e) = self.append(&line) {
            tracing::error!("{e}");
        }
    }

    fn can_do_hot_reload(&self) -> bool {
        true
    }
}

export_plugin!(Ticker::new);
