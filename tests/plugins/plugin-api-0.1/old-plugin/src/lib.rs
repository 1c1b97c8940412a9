//! A plugin built against the frozen plugin-api 0.1.0: answers every HTTP
//! request with `200 OK` and a body whose last line is
//! `old-api-plugin 0.1.0 gen=<g> pid=<p>`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use plugin_api::{export_plugin, SupervisedProcess, Supervisor};

struct OldApi;

fn handle(mut conn: TcpStream, body: &str) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(reply.as_bytes())
}

impl SupervisedProcess for OldApi {
    fn supervised_process(&mut self, sup: &Supervisor) -> Result<(), String> {
        let listeners = sup.listeners().map_err(|e| e.to_string())?;
        let body = format!(
            "old api\nold-api-plugin {} gen={} pid={}\n",
            env!("CARGO_PKG_VERSION"),
            sup.generation(),
            std::process::id()
        );
        sup.ready_to_take_over()?;
        while let Some((conn, _)) = sup.accept(&listeners).map_err(|e| e.to_string())? {
            let _ = handle(conn, &body);
        }
        Ok(())
    }

    fn can_do_hot_reload(&self) -> bool {
        true
    }
}

export_plugin!(|_args: Vec<String>| Ok::<_, String>(OldApi));
