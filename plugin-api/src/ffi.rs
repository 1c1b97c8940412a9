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
    std_types::{RBox, ROption, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};

/// What the host offers the plugin: implemented by the host's worker, called
/// by the plugin through [`Supervisor`](crate::Supervisor).
///
/// FROZEN as of plugin-api 0.1.0: abi_stable accepts a plugin only if each
/// prefix type it shares with the host (this vtable, the root module) has at
/// least as many fields in the plugin as in the host. A method added here
/// would make every plugin built before it fail to load ("too many
/// fields"). Services added later go in [`HostExtras`].
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

/// Services added after plugin-api 0.1.0, as a table of functions the host
/// fills. It does not travel in the root module (which would change the
/// root's layout, and refuse older plugins): the host publishes a
/// [`HostExtrasHeader`] at an address named by the variable
/// [`HOST_EXTRAS_VAR`], and the plugin checks the table's layout itself,
/// with the plugin's layout as the interface and the host's as the
/// implementation, so the host's table may have more fields than the plugin
/// knows (a newer host), never fewer. To add a service: append a field
/// with `#[sabi(last_prefix_field)]` left where it is (fields after it are
/// optional: a plugin reads `None` from an older host), and bump the patch
/// version of plugin-api.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = HostExtrasRef)))]
#[sabi(missing_field(option))]
pub struct HostExtras {
    /// Why the worker stops: [`STOP_NONE`] while it should not, else one of
    /// the other `STOP_*` codes.
    pub stop_reason: extern "C" fn() -> u8,
    /// Nanoseconds left until the host kills this stopping worker; `RNone`
    /// while it is not stopping, or when no one will kill it.
    pub shutdown_time_left_ns: extern "C" fn() -> ROption<u64>,
    /// The worker's slot, `0..--workers`.
    pub worker_index: extern "C" fn() -> u64,
    /// Ends the worker with a reason: reported to the supervisor at once,
    /// the stop is signalled with [`STOP_FAILED`], and the worker exits at
    /// the latest after `--shutdown-timeout`. Any thread; first reason wins.
    pub fail: extern "C" fn(reason: RStr<'_>),
    /// Whether the host would log an event at `level` for `target`.
    #[sabi(last_prefix_field)]
    pub log_enabled: extern "C" fn(level: u8, target: RStr<'_>) -> bool,
    /// Gives `state` (at most [`MAX_STATE`] bytes) to the worker of the same
    /// slot in the next generation; false if it cannot be sent. (0.1.2)
    pub hand_over_state: extern "C" fn(state: RSlice<'_, u8>) -> bool,
    /// The state the previous generation's worker of this slot handed over,
    /// waiting up to `timeout_ms` for it. (0.1.2)
    pub inherited_state: extern "C" fn(timeout_ms: u64) -> ROption<RVec<u8>>,
}

/// The most bytes a worker can hand over to its successor.
pub const MAX_STATE: usize = 64 * 1024;

/// What [`HOST_EXTRAS_VAR`] points at. Never changes: a new layout would get
/// a new magic and a new variable.
#[repr(C)]
pub struct HostExtrasHeader {
    /// [`HOST_EXTRAS_MAGIC`].
    pub magic: [u8; 8],
    /// The layout of the host's [`HostExtrasRef`].
    pub layout: &'static abi_stable::type_layout::TypeLayout,
    /// The host's table.
    pub extras: HostExtrasRef,
}

/// The first bytes of a [`HostExtrasHeader`].
pub const HOST_EXTRAS_MAGIC: [u8; 8] = *b"hostxt01";

/// The variable by which a worker tells the plugin where its
/// [`HostExtrasHeader`] is: `<pid>:<address in hex>`, set by the worker
/// before it starts any thread. A plugin trusts it only in the process
/// whose pid it names (a child that inherits it ignores it).
pub const HOST_EXTRAS_VAR: &str = "HOST_PLUGIN_EXTRAS";

/// [`HostExtras::stop_reason`]: the worker should keep going.
pub const STOP_NONE: u8 = 0;
/// A newer generation took over.
pub const STOP_RELOAD: u8 = 1;
/// The host stops, or this worker got SIGTERM/SIGINT.
pub const STOP_SHUTDOWN: u8 = 2;
/// The supervisor is gone (killed, or its channel failed).
pub const STOP_SUPERVISOR_GONE: u8 = 3;
/// The plugin called [`HostExtras::fail`].
pub const STOP_FAILED: u8 = 4;

/// The host's extras, if this process has them and their layout is
/// compatible with this plugin's (see [`HostExtras`]).
pub fn host_extras() -> Option<HostExtrasRef> {
    use abi_stable::StableAbi;
    let value = std::env::var(HOST_EXTRAS_VAR).ok()?;
    let (pid, address) = value.split_once(':')?;
    if pid.parse::<u32>().ok()? != std::process::id() {
        return None;
    }
    let address = usize::from_str_radix(address.strip_prefix("0x")?, 16).ok()?;
    if address == 0 || address % std::mem::align_of::<HostExtrasHeader>() != 0 {
        return None;
    }
    // SAFETY: the variable names this process (checked above), and only the
    // worker sets it for its own process: to the address of a header it
    // leaked, so valid, aligned and immutable for the life of the process.
    // The magic guards against a layout of the header itself we do not know.
    let header = unsafe { &*(address as *const HostExtrasHeader) };
    if header.magic != HOST_EXTRAS_MAGIC {
        return None;
    }
    let ours = <HostExtrasRef as StableAbi>::LAYOUT;
    abi_stable::abi_stability::abi_checking::check_layout_compatibility(ours, header.layout)
        .ok()?;
    Some(header.extras)
}

/// The version of this crate (the ABI version, see its `Cargo.toml`): a
/// host loads plugins built against any `0.1.z` of it.
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
