//! Log setup: every line says which process wrote it (`supervisor` or
//! `worker`, the generation, the pid), so the interleaved output of several
//! generations stays readable. The pid is read when the line is written, so
//! it is right in forked children without any re-initialisation.

use std::fmt;
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
    let filter = EnvFilter::try_from_env(FILTER_VAR).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(Prefix)
        .init();
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
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
