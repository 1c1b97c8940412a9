//! Test-only: a plugin built against an incompatible plugin-api. It exports
//! a root module under the same name as plugin-api's, but claims version
//! 1.0.0 and has a different layout, as a plugin built against a future
//! plugin-api would. The host must refuse it with an error naming versions.

// sabi's derive expands to impls of abi_stable traits inside the item.
#![allow(non_local_definitions)]

use abi_stable::library::RootModule;
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::RString;
use abi_stable::{declare_root_module_statics, export_root_module, StableAbi};

#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    #[sabi(last_prefix_field)]
    pub describe: extern "C" fn() -> RString,
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "host_plugin";
    const NAME: &'static str = "host_plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("1.0.0");
}

extern "C" fn describe() -> RString {
    "a plugin from the future".into()
}

#[export_root_module]
pub fn root_module() -> PluginModuleRef {
    PluginModule { describe }.leak_into_prefix()
}
