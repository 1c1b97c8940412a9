//! `hello-http`: answers every HTTP/1.x request on the host's listeners with
//! `200 OK`, `Connection: close`, and a body whose last line names the
//! build, generation and worker:
//!
//! ```text
//! hello
//! hello-http 0.1.0 gen=1 pid=4242
//! ```
//!
//! The first line is the banner, set at build time by the environment
//! variable `HELLO_HTTP_BANNER` (default `hello`), so that two builds can be
//! told apart across a hot reload.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use plugin_api::{export_plugin, tracing, SupervisedProcess, Supervisor};

const BANNER: &str = match option_env!("HELLO_HTTP_BANNER") {
    Some(banner) => banner,
    None => "hello",
};
const MAX_HEAD: usize = 16 * 1024;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

struct HelloHttp {
    served: u64,
}

impl HelloHttp {
    fn new(args: Vec<String>) -> Result<Self, String> {
        if let Some(arg) = args.first() {
            return Err(format!("hello-http takes no arguments (got '{arg}'); remove what follows -- on the host command line"));
        }
        Ok(HelloHttp { served: 0 })
    }
}

/// Reads the request head (up to the blank line) and writes the reply.
fn handle(mut conn: TcpStream, body: &str) -> io::Result<()> {
    conn.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    conn.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "client closed before the end of the request head",
            ));
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
    }
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(reply.as_bytes())?;
    conn.flush()
}

impl SupervisedProcess for HelloHttp {
    fn supervised_process(&mut self, sup: &Supervisor) -> Result<(), String> {
        let listeners = sup
            .listeners()
            .map_err(|e| format!("cannot use the host's listeners: {e}"))?;
        if listeners.is_empty() {
            return Err(
                "hello-http needs a socket to serve: start the host with --listen 127.0.0.1:8080"
                    .to_owned(),
            );
        }
        let body = format!(
            "{BANNER}\nhello-http {} gen={} pid={}\n",
            env!("CARGO_PKG_VERSION"),
            sup.generation(),
            std::process::id()
        );
        sup.ready_to_take_over()?;
        tracing::info!("serving on {} listener(s)", listeners.len());
        while sup.ping_supervisor() {
            let Some((conn, peer)) = sup
                .accept(&listeners)
                .map_err(|e| format!("accept failed: {e}"))?
            else {
                break;
            };
            match handle(conn, &body) {
                Ok(()) => self.served += 1,
                Err(e) => tracing::debug!(%peer, "request not served: {e}"),
            }
        }
        Ok(())
    }

    fn supervised_shutdown(&mut self) {
        tracing::info!(served = self.served, "shutting down");
    }

    fn can_do_hot_reload(&self) -> bool {
        true
    }
}

export_plugin!(HelloHttp::new);
