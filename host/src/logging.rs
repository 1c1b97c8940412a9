//! Log setup: every line says which process wrote it (`supervisor` or
//! `worker`, the generation, the pid), so the interleaved output of several
//! generations stays readable. The pid is read when the line is written, so
//! it is right in forked children without any re-initialisation.
//!
//! Every event is one line: control characters in its message and fields
//! (a newline in a plugin path, in an error a plugin returned, in what a
//! plugin logs) are escaped (`\n`, `\u{1b}`), so no input can forge a line.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// The variable that sets the log filter (`info` by default), in
/// `tracing_subscriber::EnvFilter` syntax.
pub const FILTER_VAR: &str = "HOST_LOG";

static ROLE: AtomicU8 = AtomicU8::new(Role::Host as u8);
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// What the current process is, for the log prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// A control command (`host reload`, ...), before any generation exists.
    Host = 0,
    Supervisor = 1,
    Worker = 2,
    Anchor = 3,
}

/// Sets what this process logs as: called by the supervisor at start and by
/// each worker right after fork.
pub fn set_identity(role: Role, generation: u64) {
    ROLE.store(role as u8, Ordering::Relaxed);
    GENERATION.store(generation, Ordering::Relaxed);
}

/// Installs the global subscriber, writing to stderr.
pub fn init() {
    let asked = std::env::var(FILTER_VAR).ok();
    let (filter, invalid) = match asked.as_deref().map(EnvFilter::try_new) {
        None => (EnvFilter::new("info"), None),
        Some(Ok(filter)) => (filter, None),
        Some(Err(e)) => (EnvFilter::new("info"), Some(e)),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(Prefix)
        .init();
    if let Some(e) = invalid {
        tracing::warn!(
            "{FILTER_VAR}={:?} is not a valid filter ({e}); logging at info. Use e.g. {FILTER_VAR}=info,my_plugin=debug",
            asked.unwrap_or_default()
        );
    }
}

/// The most verbose level enabled, as plugin-api numbers it (0 off .. 5 trace).
pub fn max_level() -> u8 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => 1,
        LevelFilter::WARN => 2,
        LevelFilter::INFO => 3,
        LevelFilter::DEBUG => 4,
        _ => 5,
    }
}

struct Prefix;

impl<S, N> FormatEvent<S, N> for Prefix
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        SystemTime.format_time(&mut writer)?;
        let pid = std::process::id();
        let generation = GENERATION.load(Ordering::Relaxed);
        let level = event.metadata().level();
        match ROLE.load(Ordering::Relaxed) {
            r if r == Role::Supervisor as u8 => write!(
                writer,
                " {level:>5} supervisor[gen={generation} pid={pid}]: "
            )?,
            r if r == Role::Anchor as u8 => write!(writer, " {level:>5} anchor[pid={pid}]: ")?,
            r if r == Role::Worker as u8 => {
                write!(writer, " {level:>5} worker[gen={generation} pid={pid}]: ")?
            }
            _ => write!(writer, " {level:>5} host[pid={pid}]: ")?,
        }
        // The fields go through a buffer, to be escaped on the way out.
        let mut fields = String::new();
        ctx.format_fields(Writer::new(&mut fields), event)?;
        writeln!(writer, "{}", escape(&fields))
    }
}

/// `text` with its control characters escaped as Rust writes them (`\n`,
/// `\r`, `\t`, `\u{1b}`), so that it prints on one line and cannot pass
/// for another line of the log or move a terminal's cursor. Everything else,
/// backslashes included, is kept as is.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c.is_control() {
            true => {
                let _ = write!(out, "{}", c.escape_debug());
            }
            false => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escape("plain /a b\\c é"), "plain /a b\\c é");
        assert_eq!(
            escape("a\nb\r\tc\u{1b}[2Jd\u{7f}"),
            "a\\nb\\r\\tc\\u{1b}[2Jd\\u{7f}"
        );
    }
}
