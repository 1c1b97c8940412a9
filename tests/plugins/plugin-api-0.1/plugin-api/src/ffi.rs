//! The types that cross the host/plugin boundary. Everything here is
//! `StableAbi`, so abi_stable checks at load time that host and plugin agree
//! on every layout, and refuses the plugin with a clear error when they do not.
//!
//! Plugin authors never touch this module: `export_plugin!` and
//! [`Supervisor`](crate::Supervisor) wrap it.

// sabi_trait expands to impls of abi_stable traits for the generated types, which
// this lint flags inside the macro output; nothing here is ours to move.
#![allow(non_local_definitions)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RResult, RStr, RString, RVec},
    StableAbi,
};

/// What the host offers the plugin: implemented by the host's worker, called
/// by the plugin through [`Supervisor`](crate::Supervisor).
#[sabi_trait]
pub trait HostServices: Send + Sync {
    /// False once the worker should stop (supervisor gone or stop asked).
    fn ping(&self) -> bool;
    /// Announce readiness, block until this worker may serve.
    fn ready_to_take_over(&self) -> RResult<(), RString>;
    /// The host generation this worker belongs to (1 for the first).
    fn generation(&self) -> u64;
    /// A descriptor that becomes readable, and stays readable, once the worker should stop.
    fn stop_fd(&self) -> i32;
    /// The host's listening sockets (non-blocking), owned by the host.
    fn listener_fds(&self) -> RVec<i32>;
    /// The most verbose level the host logs: 0 off, 1 error .. 5 trace.
    fn max_log_level(&self) -> u8;
    /// Log one event through the host's logger.
    #[sabi(last_prefix_field)]
    fn log(&self, level: u8, target: RStr<'_>, message: RStr<'_>);
}

/// The host services as the plugin holds them.
pub type HostBox = HostServices_TO<'static, RBox<()>>;

/// What the plugin offers the host: built by `export_plugin!` around the
/// author's [`SupervisedProcess`](crate::SupervisedProcess).
#[sabi_trait]
pub trait PluginObject: Send {
    /// See [`SupervisedProcess::can_do_hot_reload`](crate::SupervisedProcess::can_do_hot_reload).
    fn can_do_hot_reload(&self) -> bool;
    /// Runs `supervised_process`; a panic comes back as an error naming it.
    fn run(&mut self) -> RResult<(), RString>;
    /// Runs `supervised_shutdown`; a panic comes back as an error naming it.
    #[sabi(last_prefix_field)]
    fn shutdown(&mut self) -> RResult<(), RString>;
}

/// A plugin object as the host holds it.
pub type PluginBox = PluginObject_TO<'static, RBox<()>>;

/// The root module every plugin exports. A prefix type: later versions of
/// `plugin-api` may append fields without breaking older plugins.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// Builds the plugin object from the plugin's arguments.
    #[sabi(last_prefix_field)]
    pub new_plugin:
        extern "C" fn(args: RVec<RString>, host: HostBox) -> RResult<PluginBox, RString>,
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "host_plugin";
    const NAME: &'static str = "host_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The version of this crate, which a plugin and the host must agree on.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The symbol abi_stable looks up in a plugin library. `export_plugin!` emits
/// it by name, so plugin crates need no direct abi_stable dependency.
pub const ROOT_MODULE_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

#[cfg(test)]
mod tests {
    #[test]
    fn root_module_symbol_matches_abi_stable() {
        assert_eq!(
            super::ROOT_MODULE_SYMBOL,
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }
}
