//! The only crate a `host` plugin depends on.
//!
//! A plugin is a `cdylib` that implements [`SupervisedProcess`] and exports
//! its constructor with [`export_plugin!`]. The `host` supervisor forks
//! workers; each worker loads a private snapshot of the plugin library,
//! builds the plugin object from the arguments after `--` on the host's
//! command line, and calls [`SupervisedProcess::supervised_process`] with a
//! [`Supervisor`] handle. When the loop returns, the worker calls
//! [`SupervisedProcess::supervised_shutdown`] once and exits.
//!
//! A complete plugin (`Cargo.toml` needs `crate-type = ["cdylib"]` and a
//! dependency on `plugin-api`):
//!
//! ```no_run
//! use std::io::Write;
//! use std::time::Duration;
//!
//! use plugin_api::{export_plugin, tracing, SupervisedProcess, Supervisor};
//!
//! struct Hello {
//!     greeting: String,
//! }
//!
//! impl Hello {
//!     fn new(args: Vec<String>) -> Result<Self, String> {
//!         let greeting = args.first().cloned().unwrap_or_else(|| "hello".to_owned());
//!         Ok(Hello { greeting })
//!     }
//! }
//!
//! impl SupervisedProcess for Hello {
//!     fn supervised_process(&mut self, sup: &Supervisor) -> Result<(), String> {
//!         // Initialise first, then say so: the worker serves from then on
//!         // (in a hot reload, beside the old generation's until they stop).
//!         sup.ready_to_take_over()?;
//!         let listeners = sup.listeners().map_err(|e| e.to_string())?;
//!         while sup.ping_supervisor() {
//!             if let Some((mut conn, _peer)) = sup.accept(&listeners).map_err(|e| e.to_string())? {
//!                 let _ = write!(conn, "{} from generation {}\n", self.greeting, sup.generation());
//!             }
//!         }
//!         Ok(())
//!     }
//!
//!     fn supervised_shutdown(&mut self) {
//!         tracing::info!("bye");
//!     }
//!
//!     fn can_do_hot_reload(&self) -> bool {
//!         true
//!     }
//! }
//!
//! export_plugin!(Hello::new);
//! # fn main() { let _ = Duration::ZERO; }
//! ```
//!
//! # The stop
//!
//! [`Supervisor::stop_token`] gives the stop as a value, a [`StopToken`]:
//! cloneable and `'static`, for the plugin's threads and tasks. It says
//! whether the worker should stop ([`StopToken::is_stopped`]), waits for it
//! ([`StopToken::wait`], [`StopToken::as_fd`] for a `poll` set, or
//! `stopped().await` with the `tokio` feature), says why
//! ([`StopReason`]: a hot reload, a shutdown, the supervisor gone, a
//! failure) and until when the worker may drain ([`StopToken::deadline`]:
//! the stop's arrival plus `--shutdown-timeout`). [`StopToken::fail`] ends
//! the worker, from any thread, with a reason the host logs.
//!
//! Draining: at the stop, stop accepting (what waits in the shared
//! listeners goes to the next generation), and finish what you hold.
//! **Never close an accepted connection before answering it.** For async
//! servers (axum, hyper) see the `tokio` module (feature `tokio`).
//!
//! # Logging
//!
//! `tracing` events from the plugin (use the re-exported [`tracing`]) and
//! `log` records (the re-exported [`log`]) come out of the host's logger
//! with their target, fields and span fields, tagged with the worker's pid
//! and generation: `HOST_LOG=info,my_plugin=debug` filters them by target.
//!
//! # Panics
//!
//! Panics in plugin code are caught before they cross the library boundary;
//! the worker ends, the host logs the panic message, and respawns it. A
//! panic on another thread of the plugin ends the worker too, unless the
//! plugin chose otherwise with [`on_thread_panic`]. In a plugin built with
//! `panic = "abort"` the panic message is logged through the host before
//! the abort.
//!
//! # ABI versions
//!
//! The host and a plugin must be built against compatible versions of this
//! crate (its own version, not the workspace's): every `0.1.z` plugin loads
//! in every `0.1.*` host. The types shared through the root module are
//! frozen; services added since 0.1.0 travel in [`ffi::HostExtras`], which a
//! plugin finds and checks at run time (and does without in an older host).
#![deny(missing_docs)]

mod export;
pub mod ffi;
mod forward_log;
mod stop;
mod supervisor;
#[cfg(feature = "tokio")]
pub mod tokio;
mod wake;

pub use export::{on_thread_panic, ThreadPanic};
/// The `log` crate: its records reach the host's log too, with their target.
pub use log;
pub use stop::{StopReason, StopToken};
pub use supervisor::Supervisor;
/// The `tracing` crate, whose events (and span fields) reach the host's log.
/// Its macros (`tracing::info!`, `span!`) work through this re-export; the
/// `#[tracing::instrument]` attribute expands to `::tracing` paths, so a
/// plugin that uses it adds `tracing = "0.1"` to its own dependencies (the
/// same crate: cargo unifies it with this one).
pub use tracing;

/// The code a worker runs. Implement it for your plugin type and export the
/// type's constructor with [`export_plugin!`].
pub trait SupervisedProcess: Send + 'static {
    /// The worker's main loop. Call [`Supervisor::ping_supervisor`] often
    /// (between jobs, between accepts) and return once it says false.
    /// Returning `Err` ends the worker with that reason logged; the
    /// supervisor respawns it after its respawn delay.
    fn supervised_process(&mut self, sup: &Supervisor) -> Result<(), String>;

    /// Called exactly once after `supervised_process` returns, on the same
    /// thread: flush, close, say goodbye. Not called after a panic.
    fn supervised_shutdown(&mut self) {}

    /// Whether a new generation of this plugin may take over from a running
    /// one (hot reload on SIGUSR2). Say yes only if two generations can
    /// overlap for a moment, and if `supervised_process` calls
    /// [`Supervisor::ready_to_take_over`].
    fn can_do_hot_reload(&self) -> bool {
        false
    }
}

/// Exports a plugin: pass the constructor of your [`SupervisedProcess`]
/// type, a function or closure taking the plugin's arguments
/// (`Vec<String>`, everything after `--` on the host's command line) and
/// returning `Result<YourType, E>` with `E: Display`.
#[macro_export]
macro_rules! export_plugin {
    ($constructor:expr) => {
        const _: () = {
            use $crate::__private as p;

            extern "C" fn new_plugin(
                args: p::RVec<p::RString>,
                host: p::HostBox,
            ) -> p::RResult<p::PluginBox, p::RString> {
                p::new_plugin(args, host, $constructor)
            }

            fn root_module() -> p::PluginModuleRef {
                p::root_module(new_plugin)
            }

            extern "C" fn erased_root_module() -> p::RootModuleResult {
                p::__call_root_module_loader(root_module)
            }

            // The name is abi_stable's root-module symbol
            // (`plugin_api::ffi::ROOT_MODULE_SYMBOL`, checked by a test).
            #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
            pub static ROOT_MODULE_LOADER: p::LibHeader =
                // SAFETY: `erased_root_module` returns the module built by
                // `root_module`, a `PluginModuleRef`, which is the type named here.
                unsafe {
                    p::LibHeader::from_constructor::<p::PluginModuleRef>(
                        erased_root_module,
                        p::CheckTypeLayout::Yes,
                    )
                };
        };
    };
}

#[doc(hidden)]
pub mod __private {
    pub use crate::export::{new_plugin, root_module};
    pub use crate::ffi::{HostBox, PluginBox, PluginModuleRef};
    pub use abi_stable::library::{
        __call_root_module_loader, CheckTypeLayout, LibHeader, RootModuleResult,
    };
    pub use abi_stable::std_types::{RResult, RString, RVec};
}
