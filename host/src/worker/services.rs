//! The host services handed to the plugin: `HostServices` and the extras
//! table, and the plugin's log records.

use super::*;
use abi_stable::std_types::RSlice;

/// The host services handed to the plugin.
pub(super) struct WorkerServices {
    pub(super) link: Arc<Link>,
    /// The supervisor's heartbeat page, mapped in this process until it
    /// exits (the worker never returns to the code that would unmap it).
    pub(super) heartbeat: Option<&'static Heartbeat>,
    pub(super) generation: u64,
    pub(super) listener_fds: Vec<RawFd>,
    pub(super) max_log_level: u8,
}

impl HostServices for WorkerServices {
    fn ping(&self) -> bool {
        if let Some(heartbeat) = self.heartbeat {
            heartbeat.beat();
        }
        !self.link.stop.load(Ordering::Relaxed)
    }

    fn ready_to_take_over(&self) -> RResult<(), RString> {
        self.link.ready_to_take_over().map_err(RString::from).into()
    }

    fn generation(&self) -> u64 {
        self.generation
    }

    fn stop_fd(&self) -> i32 {
        self.link.stop_read.as_raw_fd()
    }

    fn listener_fds(&self) -> RVec<i32> {
        self.listener_fds.iter().copied().collect()
    }

    fn max_log_level(&self) -> u8 {
        self.max_log_level
    }

    fn log(&self, level: u8, target: RStr<'_>, message: RStr<'_>) {
        plugin_log::log(level, target.as_str(), message.as_str());
    }
}

/// What the `HostExtras` functions (plain functions: the table is static)
/// act on: this process's one worker.
pub(super) struct ExtrasState {
    pub(super) link: Arc<Link>,
    pub(super) slot: usize,
    pub(super) max_log_level: u8,
}

pub(super) static EXTRAS: OnceLock<ExtrasState> = OnceLock::new();

/// Publishes the `HostExtras` table for the plugin (see
/// `plugin_api::ffi::HostExtras`): in `HOST_PLUGIN_EXTRAS`, which must be
/// set while this process has one thread (setenv races with getenv).
pub(super) fn publish_extras(link: &Arc<Link>, spec: &Spec<'_>) {
    let state = ExtrasState {
        link: Arc::clone(link),
        slot: spec.slot,
        max_log_level: logging::max_level(),
    };
    if EXTRAS.set(state).is_err() {
        return;
    }
    let extras = HostExtras {
        stop_reason: extras_stop_reason,
        shutdown_time_left_ns: extras_shutdown_time_left_ns,
        worker_index: extras_worker_index,
        fail: extras_fail,
        log_enabled: extras_log_enabled,
        hand_over_state: extras_hand_over_state,
        inherited_state: extras_inherited_state,
    }
    .leak_into_prefix();
    let header: &'static HostExtrasHeader = Box::leak(Box::new(HostExtrasHeader {
        magic: api::HOST_EXTRAS_MAGIC,
        layout: <HostExtrasRef as abi_stable::StableAbi>::LAYOUT,
        extras,
    }));
    let value = format!(
        "{}:{:#x}",
        std::process::id(),
        header as *const HostExtrasHeader as usize
    );
    std::env::set_var(api::HOST_EXTRAS_VAR, value);
}

extern "C" fn extras_stop_reason() -> u8 {
    let Some(x) = EXTRAS.get() else {
        return api::STOP_NONE;
    };
    let state = x.link.state.lock().unwrap_or_else(PoisonError::into_inner);
    if state.stop {
        state.reason
    } else {
        api::STOP_NONE
    }
}

extern "C" fn extras_shutdown_time_left_ns() -> ROption<u64> {
    let Some(x) = EXTRAS.get() else {
        return ROption::RNone;
    };
    let state = x.link.state.lock().unwrap_or_else(PoisonError::into_inner);
    match state.deadline {
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            ROption::RSome(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX))
        }
        None => ROption::RNone,
    }
}

extern "C" fn extras_hand_over_state(state: RSlice<'_, u8>) -> bool {
    let state = state.as_slice().to_vec();
    // Nothing may unwind into the plugin's frames.
    std::panic::catch_unwind(move || {
        EXTRAS.get().is_some_and(|x| {
            state.len() <= crate::channel::MAX_STATE
                && x.link.channel.send(&FromWorker::State(state)).is_ok()
        })
    })
    .unwrap_or(false)
}

extern "C" fn extras_inherited_state(timeout_ms: u64) -> ROption<RVec<u8>> {
    std::panic::catch_unwind(|| {
        let x = EXTRAS.get()?;
        let timeout = Duration::from_millis(timeout_ms.min(u64::from(u32::MAX)));
        let state = x.link.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut state, _) = x
            .link
            .changed
            .wait_timeout_while(state, timeout, |s| s.inherited.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        state.inherited.take()
    })
    .ok()
    .flatten()
    .map(RVec::from)
    .into()
}

extern "C" fn extras_worker_index() -> u64 {
    EXTRAS.get().map_or(0, |x| x.slot as u64)
}

extern "C" fn extras_fail(reason: RStr<'_>) {
    let reason = reason.as_str().to_owned();
    // Nothing may unwind into the plugin's frames.
    let failed = std::panic::catch_unwind(|| {
        if let Some(x) = EXTRAS.get() {
            x.link.plugin_failed(reason);
        }
    });
    if failed.is_err() {
        exit_now(EXIT_PLUGIN_FAILED);
    }
}

extern "C" fn extras_log_enabled(level: u8, target: RStr<'_>) -> bool {
    let Some(x) = EXTRAS.get() else {
        return false;
    };
    level <= x.max_log_level
        && std::panic::catch_unwind(|| plugin_log::enabled(level, target.as_str())).unwrap_or(false)
}

/// The plugin's events in the host's log, under the plugin's own target, so
/// that `HOST_LOG=warn,my_plugin=debug` filters them. `tracing`'s macros
/// need a target known at compile time: as `tracing-log` does for `log`
/// records, the filter is asked with metadata naming the plugin's target,
/// and the event is then dispatched through one fixed callsite per level
/// (whose target, `plugin`, no one filters on: the line names the real one).
pub(super) mod plugin_log {
    use tracing::callsite::{Callsite, Identifier};
    use tracing::field::{FieldSet, Value};
    use tracing::metadata::Kind;
    use tracing::subscriber::Interest;
    use tracing::{Event, Level, Metadata};

    struct PluginCallsite(fn() -> &'static Metadata<'static>);

    impl Callsite for PluginCallsite {
        fn set_interest(&self, _: Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            (self.0)()
        }
    }

    macro_rules! callsite {
        ($cs:ident, $meta:ident, $level:expr) => {
            static $cs: PluginCallsite = PluginCallsite(|| &$meta);
            static $meta: Metadata<'static> = Metadata::new(
                "plugin event",
                "plugin",
                $level,
                None,
                None,
                None,
                FieldSet::new(&["message"], Identifier(&$cs)),
                Kind::EVENT,
            );
        };
    }
    callsite!(ERROR_CS, ERROR_META, Level::ERROR);
    callsite!(WARN_CS, WARN_META, Level::WARN);
    callsite!(INFO_CS, INFO_META, Level::INFO);
    callsite!(DEBUG_CS, DEBUG_META, Level::DEBUG);
    callsite!(TRACE_CS, TRACE_META, Level::TRACE);

    pub(super) fn fixed(level: u8) -> &'static Metadata<'static> {
        match level {
            0 | 1 => &ERROR_META,
            2 => &WARN_META,
            3 => &INFO_META,
            4 => &DEBUG_META,
            _ => &TRACE_META,
        }
    }

    /// Whether the host's filter lets an event at `level` for `target` through.
    pub fn enabled(level: u8, target: &str) -> bool {
        let fixed = fixed(level);
        let asked = Metadata::new(
            "plugin event",
            target,
            *fixed.level(),
            None,
            None,
            None,
            FieldSet::new(&["message"], fixed.callsite()),
            Kind::EVENT,
        );
        tracing::dispatcher::get_default(|d| d.enabled(&asked))
    }

    pub fn log(level: u8, target: &str, message: &str) {
        if !enabled(level, target) {
            return;
        }
        let meta = fixed(level);
        let Some(field) = meta.fields().field("message") else {
            return;
        };
        let text = format!("{target}: {message}");
        let values = [(&field, Some(&format_args!("{text}") as &dyn Value))];
        Event::dispatch(meta, &meta.fields().value_set(&values));
    }
}
