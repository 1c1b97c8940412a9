//! The plugin side of the boundary: what `export_plugin!` expands to calls
//! into here. Catches panics before they reach the FFI boundary (where
//! abi_stable would abort the worker without a word), so the host can log
//! the panic message as the reason the worker ended.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt::Display;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RString, RVec};

use crate::ffi::{
    HostBox, PluginBox, PluginModule, PluginModuleRef, PluginObject, PluginObject_TO,
};
use crate::{forward_log, SupervisedProcess, Supervisor};

thread_local! {
    /// While this thread runs plugin code on behalf of the host: what it runs.
    static GUARDED: Cell<Option<&'static str>> = const { Cell::new(None) };
    /// The last panic seen on this thread while guarded.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Whether a panic on a thread of the plugin's own ends the worker.
static THREAD_PANIC_ENDS_WORKER: AtomicBool = AtomicBool::new(true);

/// What a panic on a thread the plugin started (or a pool, a runtime it
/// uses started) does: see [`on_thread_panic`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ThreadPanic {
    /// The default: the panic is logged, and the worker ends with it as the
    /// reason ([`StopToken::fail`](crate::StopToken::fail)): the supervisor
    /// respawns it. A panic leaves shared state unknown, and a pool that
    /// lost a thread would otherwise look healthy.
    EndWorker,
    /// The panic is logged, nothing more: for code that recovers from
    /// panics on its threads itself (a tokio runtime catches a task's
    /// panic and hands it to whoever awaits the task's `JoinHandle`).
    LogOnly,
}

/// Sets what a panic on any thread other than the one running
/// `supervised_process` does ([`ThreadPanic::EndWorker`] by default). A
/// panic on the thread that runs the plugin's hooks always ends the worker
/// with the panic message as the reason, and so does any panic in a plugin
/// built with `panic = "abort"` (which logs it through the host first).
pub fn on_thread_panic(policy: ThreadPanic) {
    THREAD_PANIC_ENDS_WORKER.store(policy == ThreadPanic::EndWorker, Ordering::Relaxed);
}

/// Builds the root module around the plugin's `new_plugin` function.
pub fn root_module(
    new_plugin: extern "C" fn(RVec<RString>, HostBox) -> RResult<PluginBox, RString>,
) -> PluginModuleRef {
    PluginModule { new_plugin }.leak_into_prefix()
}

/// Builds the plugin object: installs log forwarding and panic capture, then
/// calls the author's constructor with the plugin's arguments.
pub fn new_plugin<P, E, F>(
    args: RVec<RString>,
    host: HostBox,
    constructor: F,
) -> RResult<PluginBox, RString>
where
    P: SupervisedProcess,
    E: Display,
    F: FnOnce(Vec<String>) -> Result<P, E>,
{
    let host = Arc::new(host);
    crate::supervisor::init_extras();
    install_panic_hook(&host);
    forward_log::install(Arc::clone(&host));
    let args = args.into_iter().map(String::from).collect();
    let result = match guarded("the plugin constructor", || constructor(args)) {
        Ok(Ok(process)) => Ok(PluginObject_TO::from_value(
            Adapter {
                process,
                sup: Supervisor::new(host),
                panicked: false,
            },
            TD_Opaque,
        )),
        Ok(Err(e)) => Err(format!("the plugin constructor failed: {e}")),
        Err(panicked) => Err(panicked),
    };
    result.map_err(RString::from).into()
}

struct Adapter<P> {
    process: P,
    sup: Supervisor,
    /// After a panic the plugin's state is unknown: skip its shutdown.
    panicked: bool,
}

impl<P: SupervisedProcess> PluginObject for Adapter<P> {
    fn can_do_hot_reload(&self) -> bool {
        guarded("can_do_hot_reload", || self.process.can_do_hot_reload()).unwrap_or(false)
    }

    fn run(&mut self) -> RResult<(), RString> {
        let Adapter { process, sup, .. } = self;
        match guarded("supervised_process", || process.supervised_process(sup)) {
            Ok(Ok(())) => RResult::ROk(()),
            Ok(Err(e)) => {
                RResult::RErr(format!("supervised_process returned an error: {e}").into())
            }
            Err(panicked) => {
                self.panicked = true;
                RResult::RErr(panicked.into())
            }
        }
    }

    fn shutdown(&mut self) -> RResult<(), RString> {
        if self.panicked {
            return RResult::ROk(());
        }
        guarded("supervised_shutdown", || self.process.supervised_shutdown())
            .map_err(RString::from)
            .into()
    }
}

/// Runs `f`, turning a panic into `Err("<what> panicked at <where>: <message>")`.
fn guarded<T>(what: &'static str, f: impl FnOnce() -> T) -> Result<T, String> {
    LAST_PANIC.with(|p| p.borrow_mut().take());
    let outer = GUARDED.with(|g| g.replace(Some(what)));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    result.map_err(|payload| {
        let detail = LAST_PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| payload_message(payload.as_ref()));
        format!("{what} panicked at {detail}")
    })
}

fn payload_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// A panic on a guarded thread is kept for `guarded` to report; one on any
/// other plugin thread is logged through the host, since nothing else will,
/// and ends the worker unless the plugin said otherwise
/// ([`on_thread_panic`]). In a plugin built with `panic = "abort"`, nothing
/// unwinds to `guarded`: the hook logs and reports every panic, before the
/// abort.
fn install_panic_hook(host: &Arc<HostBox>) {
    static ONCE: Once = Once::new();
    let sup = Supervisor::new(Arc::clone(host));
    ONCE.call_once(move || {
        panic::set_hook(Box::new(move |info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_else(|| "an unknown place".to_owned());
            let detail = format!("{location}: {}", payload_message(info.payload()));
            let aborts = cfg!(panic = "abort");
            match GUARDED.with(|g| g.get()) {
                Some(_) if !aborts => LAST_PANIC.with(|p| *p.borrow_mut() = Some(detail)),
                Some(what) => {
                    let reason = format!("{what} panicked at {detail} (the plugin is built with panic = \"abort\": the worker aborts)");
                    sup.log(1, "plugin", &reason);
                    sup.fail(reason);
                }
                None => {
                    let thread = std::thread::current();
                    let name = thread.name().unwrap_or("unnamed");
                    let reason = format!("plugin thread '{name}' panicked at {detail}");
                    sup.log(1, "plugin", &reason);
                    if aborts || THREAD_PANIC_ENDS_WORKER.load(Ordering::Relaxed) {
                        sup.fail(reason);
                    }
                }
            }
        }));
    });
}
