//! Forwards the plugin's `tracing` events to the host's logger.
//!
//! A plugin library has its own copy of `tracing`'s global state, so a
//! subscriber set by the host never sees the plugin's events. This one,
//! installed in the plugin when it is built, hands each event to the host,
//! which logs it with the worker's pid and generation.

use std::fmt::{self, Write as _};
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use crate::Supervisor;

struct Forward {
    sup: Supervisor,
    max_level: u8,
}

/// Installs the forwarding subscriber as the plugin's global default, unless
/// the plugin set one of its own first.
pub(crate) fn install(host: Arc<crate::ffi::HostBox>) {
    let max_level = host.max_log_level();
    let forward = Forward {
        sup: Supervisor::new(host),
        max_level,
    };
    // An error means the plugin already chose a subscriber: keep it.
    let _ = tracing::subscriber::set_global_default(forward);
}

pub(crate) fn level_number(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

fn level_filter(max_level: u8) -> tracing::level_filters::LevelFilter {
    use tracing::level_filters::LevelFilter;
    match max_level {
        0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// Renders `message` first, then `name=value` for the other fields.
#[derive(Default)]
struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }
}

impl Subscriber for Forward {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        level_number(metadata.level()) <= self.max_level
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(level_filter(self.max_level))
    }

    // Spans are not forwarded: only events reach the host.
    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = Line::default();
        event.record(&mut line);
        let metadata = event.metadata();
        self.sup
            .log(level_number(metadata.level()), metadata.target(), &line.0);
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}
