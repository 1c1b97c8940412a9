//! One line for why a plugin could not be loaded, naming versions and the fix.

use super::*;

/// One line for why the plugin could not be loaded.
pub(super) fn describe_load_error(err: &LibraryError, snapshot: &Snapshot) -> String {
    tracing::debug!("abi_stable's error, in full: {err}");
    let source = snapshot.source().display();
    let rebuild = format!("rebuild it against plugin-api {API_VERSION}");
    match err {
        LibraryError::OpenError { err, .. } => {
            let detail = err.to_string().replace(&snapshot.load_path().display().to_string(), &source.to_string());
            format!("plugin {source}: cannot be loaded: {detail}")
        }
        LibraryError::GetSymbolError { .. } => {
            format!("plugin {source}: has no plugin root module (does the crate call plugin_api::export_plugin!?)")
        }
        LibraryError::IncompatibleVersionNumber { actual_version, .. } => format!(
            "plugin {source}: was built against plugin-api {actual_version}, incompatible with this host's {API_VERSION} (the versions differ; {accepts}); {rebuild}",
            accepts = accepted_versions()
        ),
        LibraryError::AbiInstability(_) => {
            // abi_stable checks the layout before the version: ask the
            // library which version it was built with, to name it.
            match abi_stable::library::lib_header_from_path(&snapshot.load_path()) {
                Ok(header) => {
                    let theirs = header.version_strings();
                    let what = if same_series(&theirs.to_string()) {
                        "a version this host accepts, but their types differ: a modified plugin-api?"
                    } else {
                        "both the versions and the types differ"
                    };
                    format!(
                        "plugin {source}: was built against plugin-api {theirs}, incompatible with this host's {API_VERSION} ({what}; {accepts}); {rebuild}",
                        accepts = accepted_versions()
                    )
                }
                Err(_) => format!("plugin {source}: was built against an incompatible plugin-api (its types differ from this host's); {rebuild}"),
            }
        }
        LibraryError::InvalidAbiHeader(_) | LibraryError::InvalidCAbi { .. } => {
            format!("plugin {source}: was built with an incompatible abi_stable; {rebuild}")
        }
        LibraryError::RootModule { err, .. } => format!("plugin {source}: its root module failed: {err}"),
        LibraryError::ParseVersionError(e) => format!("plugin {source}: has an unreadable plugin-api version: {e}"),
        LibraryError::Many(errors) => match errors.first() {
            Some(first) => describe_load_error(first, snapshot),
            None => format!("plugin {source}: cannot be loaded"),
        },
    }
}

/// The plugin-api versions this host loads plugins of, in words: abi_stable
/// takes 0.y.z as compatible with every 0.y.*, and x.y.z (x >= 1) with
/// every x.*.
pub(super) fn accepted_versions() -> String {
    let mut parts = API_VERSION.split('.');
    let (major, minor) = (parts.next().unwrap_or("0"), parts.next().unwrap_or("0"));
    if major == "0" {
        format!("this host loads plugins built against plugin-api {major}.{minor}.0 or any later {major}.{minor}.x")
    } else {
        format!(
            "this host loads plugins built against plugin-api {major}.0.0 or any later {major}.x"
        )
    }
}

/// Whether `version` is in the series this host accepts (see `accepted_versions`).
pub(super) fn same_series(version: &str) -> bool {
    let series = |v: &str| {
        let mut parts = v.split('.');
        let major = parts.next().unwrap_or("").to_owned();
        let minor = parts.next().unwrap_or("").to_owned();
        if major == "0" {
            (major, minor)
        } else {
            (major, String::new())
        }
    };
    series(version) == series(API_VERSION)
}
