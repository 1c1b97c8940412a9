//! The status file beside the pid file (`FILE.status`): what the live
//! supervisor is doing, for `host status` and `host reload`. Written whole
//! and renamed into place, so a reader never sees half of it.
//!
//! ```text
//! pid=4242
//! generation=3
//! state=serving
//! reloads=2
//! last_reload=failed: plugin /srv/libfoo.so: not a shared library
//! listen=127.0.0.1:8080
//! crash_looping=0
//! anchor=4200
//! anchor_since=1795000000
//! ```

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// What the live supervisor is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Starting,
    Serving,
    Reloading,
    Stopping,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Serving => "serving",
            State::Reloading => "reloading",
            State::Stopping => "stopping",
        }
    }

    fn parse(s: &str) -> Option<State> {
        [
            State::Starting,
            State::Serving,
            State::Reloading,
            State::Stopping,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// The contents of a status file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub pid: u32,
    pub generation: u64,
    pub state: State,
    /// Reloads this supervisor has been asked for (started, failed or ignored).
    pub reloads: u64,
    /// Why the last one did not happen (`failed: ...` or `ignored: ...`);
    /// empty if none has failed. A successful reload writes a new status.
    pub last_reload: String,
    pub listen: Vec<String>,
    /// How many worker slots back off because their workers keep dying young.
    pub crash_looping: usize,
    /// The anchor's pid, and when it started (seconds since the Unix epoch).
    pub anchor: u32,
    pub anchor_since: u64,
}

impl Status {
    fn render(&self) -> String {
        format!(
            "pid={}\ngeneration={}\nstate={}\nreloads={}\nlast_reload={}\nlisten={}\ncrash_looping={}\nanchor={}\nanchor_since={}\n",
            self.pid,
            self.generation,
            self.state.as_str(),
            self.reloads,
            self.last_reload.replace('\n', " "),
            self.listen.join(" "),
            self.crash_looping,
            self.anchor,
            self.anchor_since
        )
    }

    fn parse(text: &str) -> Option<Status> {
        let field = |key: &str| {
            text.lines().find_map(|line| {
                line.strip_prefix(key)
                    .and_then(|rest| rest.strip_prefix('='))
            })
        };
        Some(Status {
            pid: field("pid")?.parse().ok()?,
            generation: field("generation")?.parse().ok()?,
            state: State::parse(field("state")?)?,
            reloads: field("reloads")?.parse().ok()?,
            last_reload: field("last_reload")?.to_owned(),
            listen: field("listen")?
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            crash_looping: field("crash_looping")?.parse().ok()?,
            anchor: field("anchor")?.parse().ok()?,
            anchor_since: field("anchor_since")?.parse().ok()?,
        })
    }
}

/// Where the status file of a pid file lives.
pub fn path_for(pid_file: &Path) -> PathBuf {
    let mut name = pid_file.as_os_str().to_owned();
    name.push(".status");
    PathBuf::from(name)
}

/// Writes the status file atomically (temporary file, then rename).
pub fn write(path: &Path, status: &Status) -> io::Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let mut file = fs::File::create(&tmp)?;
    file.write_all(status.render().as_bytes())?;
    drop(file);
    fs::rename(&tmp, path)
}

/// Reads a status file; `None` if it is missing or unreadable as a status.
pub fn read(path: &Path) -> Option<Status> {
    Status::parse(&fs::read_to_string(path).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("a.pid"));
        let status = Status {
            pid: 7,
            generation: 3,
            state: State::Reloading,
            reloads: 2,
            last_reload: "failed: plugin x: bad\nsecond line".into(),
            listen: vec!["127.0.0.1:1".into(), "[::1]:2".into()],
            crash_looping: 1,
            anchor: 5,
            anchor_since: 1_700_000_000,
        };
        write(&path, &status).unwrap();
        let read_back = read(&path).unwrap();
        assert_eq!(read_back.last_reload, "failed: plugin x: bad second line");
        assert_eq!(
            Status {
                last_reload: status.last_reload.replace('\n', " "),
                ..status
            },
            read_back
        );
    }
}
