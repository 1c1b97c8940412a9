//! Test-only: a perfectly good shared library that is not a plugin (it never
//! calls `export_plugin!`), for the host's "no plugin root module" error.

/// Something to export, so the library is not empty.
#[no_mangle]
pub extern "C" fn not_a_plugin() -> i32 {
    42
}
