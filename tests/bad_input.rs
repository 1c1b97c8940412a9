//! Every bad input gets one clear line naming the thing and the fix, and a
//! non-zero exit: never a panic or a backtrace.

mod support;

use std::net::TcpListener;
use std::time::Duration;

use support::*;

/// Runs the host and returns its one error line, after checking the exit
/// status and that nothing panicked.
fn error_line(args: &[&str], env: &[(&str, &str)]) -> String {
    let (status, log) = run_host(args, env, Duration::from_secs(20));
    assert!(!status.success(), "host {args:?} succeeded; log:\n{log}");
    assert!(
        !log.contains("panicked at") || log.contains("host: error:"),
        "{log}"
    );
    assert!(
        !log.contains("RUST_BACKTRACE") && !log.contains("stack backtrace"),
        "{log}"
    );
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("host: error: ") || l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "exactly one error line in:\n{log}");
    errors[0].to_owned()
}

fn assert_mentions(line: &str, parts: &[&str]) {
    for part in parts {
        assert!(line.contains(part), "{line:?} should mention {part:?}");
    }
}

#[test]
fn missing_plugin() {
    let line = error_line(&["--plugin", "/nonexistent/libnothing.so"], &[]);
    assert_mentions(
        &line,
        &["/nonexistent/libnothing.so", "no such file", "cargo build"],
    );
}

#[test]
fn plugin_is_a_directory() {
    let dir = temp_dir();
    let line = error_line(&["--plugin", dir.path().to_str().unwrap()], &[]);
    assert_mentions(&line, &["is a directory", "libNAME.so"]);
}

#[test]
fn plugin_is_not_a_shared_library() {
    let dir = temp_dir();
    let text = dir.path().join("libfake.so");
    std::fs::write(&text, "this is text\n").unwrap();
    let line = error_line(&["--plugin", text.to_str().unwrap()], &[]);
    assert_mentions(&line, &["libfake.so", "not a shared library"]);
}

#[test]
fn library_without_a_plugin_root_module() {
    let dir = temp_dir();
    let lib = build_plugin("no-root-module", None, &dir.path().join("libnoroot.so"));
    let line = error_line(&["--plugin", lib.to_str().unwrap()], &[]);
    assert_mentions(
        &line,
        &["libnoroot.so", "no plugin root module", "export_plugin!"],
    );
}

#[test]
fn plugin_built_against_an_incompatible_plugin_api() {
    let dir = temp_dir();
    let lib = build_plugin("abi-mismatch", None, &dir.path().join("libmismatch.so"));
    let line = error_line(&["--plugin", lib.to_str().unwrap()], &[]);
    assert_mentions(
        &line,
        &["libmismatch.so", "plugin-api 1.0.0", "0.1.0", "rebuild it"],
    );
}

#[test]
fn constructor_returns_an_error() {
    let dir = temp_dir();
    let lib = build_plugin("ticker", None, &dir.path().join("libticker.so"));
    let line = error_line(&["--plugin", lib.to_str().unwrap()], &[]);
    assert_mentions(&line, &["constructor failed", "ticker takes one argument"]);
}

#[test]
fn constructor_panics() {
    let dir = temp_dir();
    let lib = build_plugin("faulty", None, &dir.path().join("libfaulty.so"));
    let mode = dir.path().join("mode");
    std::fs::write(&mode, "panic-in-new").unwrap();
    let line = error_line(
        &["--plugin", lib.to_str().unwrap()],
        &[("FAULTY_MODE_FILE", mode.to_str().unwrap())],
    );
    assert_mentions(&line, &["constructor panicked", "told to panic"]);
}

#[test]
fn listen_address_that_does_not_parse() {
    let line = error_line(&["--plugin", "/x.so", "--listen", "localhost-8080"], &[]);
    assert_mentions(&line, &["localhost-8080", "IP:PORT", "127.0.0.1:8080"]);
}

#[test]
fn listen_address_in_use() {
    let dir = temp_dir();
    let lib = build_plugin("hello-http", None, &dir.path().join("libhello.so"));
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let line = error_line(&["--plugin", lib.to_str().unwrap(), "--listen", &addr], &[]);
    assert_mentions(&line, &[&addr, "in use", "another port"]);
}

#[test]
fn zero_workers() {
    let line = error_line(&["--plugin", "/x.so", "--workers", "0"], &[]);
    assert_mentions(&line, &["--workers", "0"]);
}

#[test]
fn unknown_option() {
    let line = error_line(&["--plugin", "/x.so", "--frobnicate"], &[]);
    assert_mentions(&line, &["--frobnicate"]);
}

#[test]
fn server_plugin_without_a_listen_address() {
    let dir = temp_dir();
    let lib = build_plugin("hello-http", None, &dir.path().join("libhello.so"));
    let line = error_line(&["--plugin", lib.to_str().unwrap()], &[]);
    assert_mentions(
        &line,
        &["hello-http needs a socket", "--listen 127.0.0.1:8080"],
    );
}

/// A duration flag over one day (86400 s) is refused with one line naming
/// the flag and the bound, instead of overflowing an `Instant` later.
fn assert_over_a_day_is_refused(args: &[&str], flag: &str) {
    let line = error_line(args, &[]);
    assert_mentions(&line, &[flag]);
    assert!(
        line.contains("86400") || line.contains("one day"),
        "{line:?} should name the bound (86400 s, one day)"
    );
}

#[test]
fn respawn_delay_over_a_day() {
    let dir = temp_dir();
    let plugin = dir.path().join("libnothing.so");
    assert_over_a_day_is_refused(
        &[
            "--plugin",
            plugin.to_str().unwrap(),
            "--respawn-delay",
            "1e19",
        ],
        "--respawn-delay",
    );
}

#[test]
fn shutdown_timeout_over_a_day() {
    let dir = temp_dir();
    let plugin = dir.path().join("libnothing.so");
    assert_over_a_day_is_refused(
        &[
            "--plugin",
            plugin.to_str().unwrap(),
            "--shutdown-timeout",
            "1e19",
        ],
        "--shutdown-timeout",
    );
}

#[test]
fn reload_timeout_over_a_day() {
    let dir = temp_dir();
    let plugin = dir.path().join("libnothing.so");
    assert_over_a_day_is_refused(
        &[
            "--plugin",
            plugin.to_str().unwrap(),
            "--reload-timeout",
            "1e19",
        ],
        "--reload-timeout",
    );
}

/// `host reload|stop --timeout` over a day, against a running host: refused
/// before the command signals it.
fn assert_command_timeout_over_a_day_is_refused(command: &str) {
    let dir = temp_dir();
    let pid_file = dir.path().join("ticker.pid");
    let (host, _ticks) = start_ticker(dir.path(), &["--pid-file", pid_file.to_str().unwrap()]);
    host.wait_serving();
    assert_over_a_day_is_refused(
        &[
            command,
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--timeout",
            "1e19",
        ],
        "--timeout",
    );
    let status = read_status(&pid_file).expect("a status file");
    assert!(
        status.serving(host.supervisor(), 1) && status.reloads == 0 && alive(host.supervisor()),
        "the host was left alone: {status:?}"
    );
}

#[test]
fn reload_command_timeout_over_a_day() {
    assert_command_timeout_over_a_day_is_refused("reload");
}

#[test]
fn stop_command_timeout_over_a_day() {
    assert_command_timeout_over_a_day_is_refused("stop");
}

/// An invalid `HOST_LOG` is not silently ignored: a warning names it and an
/// example, and the host logs at info.
#[test]
fn invalid_log_filter_is_warned_about() {
    let (status, log) = run_host(
        &["--plugin", "/nonexistent/libnothing.so"],
        &[("HOST_LOG", "info,[[")],
        Duration::from_secs(20),
    );
    assert!(!status.success());
    assert!(
        log.contains("HOST_LOG=\"info,[[\" is not a valid filter")
            && log.contains("HOST_LOG=info,my_plugin=debug"),
        "{log}"
    );
}
