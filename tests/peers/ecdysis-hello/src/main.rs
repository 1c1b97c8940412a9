//! `ecdysis-hello`: the reload benchmark's peer (dev only). A minimal HTTP
//! server built on [`ecdysis`] (Cloudflare's graceful-restart library, the
//! tableflip way) that answers every request on a new connection with
//! `200 OK`, `Connection: close` and a body whose last line names the
//! generation and the process, as hello-http's does:
//!
//! ```text
//! hello
//! ecdysis-hello 0.1.0 gen=1 pid=4242
//! ```
//!
//! ```text
//! ecdysis-hello IP:PORT [THREADS]
//! ```
//!
//! On SIGHUP it upgrades, ecdysis's way: it forks and execs itself with the
//! same arguments and the listening socket inherited; the new process
//! serves at once and says it is ready, and the old one then stops
//! accepting, finishes the connections it holds and exits. Both accept on
//! the shared socket in between. The generation travels in the
//! environment variable `ECDYSIS_HELLO_GEN` (this process's, plus one).
//! SIGTERM or SIGINT stops it gracefully.
//!
//! The port must be given (not 0): a new generation finds the inherited
//! socket by the address it was asked for. `THREADS` (default 1) is the
//! number of tokio worker threads (1: a current-thread runtime).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ecdysis::tokio_ecdysis::{ExitMode, SignalKind, StopOnShutdown, TokioEcdysisBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_stream::StreamExt;

/// This process's generation: the previous one's plus one.
const GEN_VAR: &str = "ECDYSIS_HELLO_GEN";
const MAX_HEAD: usize = 16 * 1024;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time an old generation gets to finish the connections it holds.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || {
        eprintln!("usage: ecdysis-hello IP:PORT [THREADS]");
        ExitCode::from(2)
    };
    let Some(addr) = args.first().and_then(|a| a.parse::<SocketAddr>().ok()) else {
        return usage();
    };
    let threads = match args.get(1).map(|t| t.parse::<usize>()) {
        None => 1,
        Some(Ok(t)) if t > 0 => t,
        Some(_) => return usage(),
    };
    if addr.port() == 0 || args.len() > 2 {
        return usage();
    }
    let generation = std::env::var(GEN_VAR)
        .ok()
        .and_then(|g| g.parse::<u64>().ok())
        .map_or(1, |g| g + 1);
    // While this is the only thread: the next generation inherits it.
    std::env::set_var(GEN_VAR, generation.to_string());

    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let result = runtime
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))
        .and_then(|rt| rt.block_on(serve(addr, generation)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ecdysis-hello gen={generation}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(addr: SocketAddr, generation: u64) -> Result<(), String> {
    let pid = std::process::id();
    let body: Arc<str> = format!(
        "hello\necdysis-hello {} gen={generation} pid={pid}\n",
        env!("CARGO_PKG_VERSION")
    )
    .into();
    let setup = |e: std::io::Error| format!("cannot set up ecdysis: {e}");
    let mut builder = TokioEcdysisBuilder::new(SignalKind::hangup()).map_err(setup)?;
    builder
        .stop_on_signal(SignalKind::terminate())
        .map_err(setup)?;
    builder
        .stop_on_signal(SignalKind::interrupt())
        .map_err(setup)?;
    // Inherited from the previous generation, or bound as the host binds
    // (std's TcpListener: SO_REUSEADDR, the same backlog).
    let mut incoming = builder
        .build_listen_tcp(StopOnShutdown::Yes, addr, |_socket, addr| {
            std::net::TcpListener::bind(addr)
        })
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let server = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        // Ends when a new generation has taken over, or at a stop.
        while let Some(accepted) = incoming.next().await {
            match accepted {
                Ok(conn) => {
                    connections.spawn(handle(conn, Arc::clone(&body)));
                }
                Err(e) => {
                    eprintln!("ecdysis-hello gen={generation}: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            while connections.try_join_next().is_some() {}
        }
        while connections.join_next().await.is_some() {}
    });
    let (_ecdysis, exit) = builder
        .ready()
        .map_err(|e| format!("cannot tell the previous generation: {e}"))?;
    eprintln!("ecdysis-hello gen={generation} pid={pid}: serving on {addr}");
    let (mode, reason) = exit.await?;
    let why = match mode {
        ExitMode::Upgrade => "upgraded",
        _ => "stopping",
    };
    eprintln!("ecdysis-hello gen={generation} pid={pid}: {why} ({reason:?}), draining");
    tokio::time::timeout(DRAIN_TIMEOUT, server)
        .await
        .map_err(|_| format!("connections still open after {DRAIN_TIMEOUT:?}"))?
        .map_err(|e| format!("server task: {e}"))
}

/// Reads the request head (up to the blank line) and writes the reply.
async fn handle(mut conn: TcpStream, body: Arc<str>) {
    let _ = tokio::time::timeout(CLIENT_TIMEOUT, async {
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await?;
            if n == 0 || head.len() + n > MAX_HEAD {
                return Ok(());
            }
            head.extend_from_slice(&buf[..n]);
        }
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(reply.as_bytes()).await?;
        conn.shutdown().await
    })
    .await;
}
