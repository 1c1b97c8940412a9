//! Forwards the plugin's `tracing` events, and its `log` records, to the
//! host's logger.
//!
//! A plugin library has its own copy of `tracing`'s (and `log`'s) global
//! state, so a subscriber set by the host never sees the plugin's events.
//! The subscriber installed here, in the plugin when it is built, hands each
//! event to the host with its target (so `HOST_LOG=warn,my_plugin=debug`
//! works), its fields, and the fields of the spans it is in (as
//! `span{a=1}:inner{b=2}: message c=3`). `log` records come in through
//! `tracing-log` with their own target. The host escapes control characters
//! (a newline in a message cannot start a new log line) and adds the
//! worker's pid and generation.

use std::fmt::{self, Write as _};
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::Supervisor;

struct Forward {
    sup: Supervisor,
    max_level: u8,
}

/// Installs the forwarding subscriber as the plugin's global default, unless
/// the plugin set one of its own first, and the `log` bridge, unless the
/// plugin set a `log` logger.
pub(crate) fn install(host: Arc<crate::ffi::HostBox>) {
    let max_level = host.max_log_level();
    let forward = Forward {
        sup: Supervisor::new(host),
        max_level,
    };
    let subscriber = tracing_subscriber::registry().with(forward);
    // An error means the plugin already chose a subscriber: keep it.
    let _ = tracing::subscriber::set_global_default(subscriber);
    let _ = tracing_log::LogTracer::builder()
        .with_max_level(log_level_filter(max_level))
        .init();
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

fn log_level_filter(max_level: u8) -> log::LevelFilter {
    match max_level {
        0 => log::LevelFilter::Off,
        1 => log::LevelFilter::Error,
        2 => log::LevelFilter::Warn,
        3 => log::LevelFilter::Info,
        4 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

/// Renders `message` first, then `name=value` for the other fields.
/// `log.*` fields (the `log` record's origin, added by tracing-log) are
/// left out: the target is passed on as the target.
#[derive(Default)]
struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name().starts_with("log.") {
            return;
        }
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

/// The rendered fields of a span, kept in its extensions.
struct SpanFields(String);

impl Forward {
    fn wanted(&self, metadata: &Metadata<'_>) -> bool {
        let level = level_number(metadata.level());
        level <= self.max_level && self.sup.log_enabled(level, metadata.target())
    }
}

impl<S> Layer<S> for Forward
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        // Spans are always wanted: their fields show in the events they hold.
        if metadata.is_span() || self.wanted(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        metadata.is_span() || self.wanted(metadata)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(level_filter(self.max_level))
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Line::default();
        attrs.record(&mut fields);
        span.extensions_mut().insert(SpanFields(fields.0));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(SpanFields(fields)) = extensions.get_mut::<SpanFields>() {
            let mut more = Line(std::mem::take(fields));
            values.record(&mut more);
            *fields = more.0;
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let normalized = event.normalized_metadata();
        let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut line = String::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                line.push_str(span.name());
                if let Some(SpanFields(fields)) = span.extensions().get::<SpanFields>() {
                    if !fields.is_empty() {
                        let _ = write!(line, "{{{fields}}}");
                    }
                }
                line.push_str(": ");
            }
        }
        let mut fields = Line(line);
        let start = fields.0.len();
        event.record(&mut fields);
        // `Line` puts a space before every field but the first of a string.
        if fields.0.len() > start && fields.0.as_bytes()[start] == b' ' {
            fields.0.remove(start);
        }
        self.sup
            .log(level_number(metadata.level()), metadata.target(), &fields.0);
    }
}
