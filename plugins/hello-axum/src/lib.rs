//! `hello-axum`: an axum app served by a `host` plugin, the way that loses
//! no request across hot reloads (see `plugin_api::tokio`). Every request
//! gets `200 OK` and a body whose last line names the build, generation and
//! worker:
//!
//! ```text
//! hello from axum
//! hello-axum 0.1.0 gen=1 pid=4242
//! ```
//!
//! The pattern, for any axum or hyper service:
//!
//! - accept with [`plugin_api::tokio::StopListener::accept`], which returns
//!   `None` at the stop and leaves what is still queued to the next
//!   generation;
//! - serve each accepted connection in its own task with hyper's
//!   `serve_connection` (not `axum::serve(..).with_graceful_shutdown(..)`,
//!   whose shutdown closes a connection accepted a moment ago before its
//!   request is read);
//! - at the stop, let each connection receive its first request before
//!   calling `graceful_shutdown()` on it (which finishes the reply in flight
//!   and closes the connection);
//! - wait for every connection before returning, at most until the
//!   shutdown deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use plugin_api::tokio::StopListener;
use plugin_api::{export_plugin, tracing, StopToken, SupervisedProcess, Supervisor};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// How long a connection accepted before the stop may take to send its
/// first request, when no shutdown deadline is known.
const FIRST_REQUEST_WAIT: Duration = Duration::from_secs(5);

struct HelloAxum;

impl HelloAxum {
    fn new(args: Vec<String>) -> Result<Self, String> {
        if let Some(arg) = args.first() {
            return Err(format!("hello-axum takes no arguments (got '{arg}'); remove what follows -- on the host command line"));
        }
        Ok(HelloAxum)
    }
}

fn app(body: Arc<str>) -> Router {
    Router::new().fallback(get(move || {
        let body = Arc::clone(&body);
        async move { body.to_string() }
    }))
}

impl SupervisedProcess for HelloAxum {
    fn supervised_process(&mut self, sup: &Supervisor) -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
        let listeners = {
            let _in_runtime = runtime.enter();
            sup.tokio_listeners()
                .map_err(|e| format!("cannot use the host's listeners: {e}"))?
        };
        if listeners.is_empty() {
            return Err(
                "hello-axum needs a socket to serve: start the host with --listen 127.0.0.1:8080"
                    .to_owned(),
            );
        }
        let body: Arc<str> = format!(
            "hello from axum\nhello-axum {} gen={} pid={}\n",
            env!("CARGO_PKG_VERSION"),
            sup.generation(),
            std::process::id()
        )
        .into();
        sup.ready_to_take_over()?;
        tracing::info!("serving on {} listener(s)", listeners.len());
        let served = runtime.block_on(serve(listeners, app(body), sup.stop_token()));
        tracing::info!(served, "stopped: every accepted connection answered");
        // Connections still open past the deadline are dropped with it.
        runtime.shutdown_timeout(Duration::from_millis(100));
        Ok(())
    }

    fn can_do_hot_reload(&self) -> bool {
        true
    }
}

/// Accepts until the stop, serves every accepted connection to its end, and
/// returns how many were accepted.
async fn serve(listeners: Vec<StopListener>, app: Router, stop: StopToken) -> u64 {
    let mut accepting = JoinSet::new();
    for listener in listeners {
        let (app, stop) = (app.clone(), stop.clone());
        accepting.spawn(accept_loop(listener, app, stop));
    }
    let mut accepted = 0;
    while let Some(done) = accepting.join_next().await {
        accepted += done.unwrap_or(0);
    }
    accepted
}

async fn accept_loop(listener: StopListener, app: Router, stop: StopToken) -> u64 {
    let mut connections = JoinSet::new();
    let mut accepted = 0;
    loop {
        match listener.accept().await {
            Ok(Some((stream, peer))) => {
                accepted += 1;
                connections.spawn(serve_connection(stream, peer, app.clone(), stop.clone()));
            }
            Ok(None) => break,
            Err(e) => {
                // EMFILE and the like: back off, the connection stays queued.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // Reap finished connections as we go.
        while connections.try_join_next().is_some() {}
    }
    // The drain: every connection accepted gets its reply, until the deadline.
    let drain = async { while connections.join_next().await.is_some() {} };
    match stop.deadline() {
        Some(deadline) => {
            let margin = Duration::from_millis(100);
            let until =
                tokio::time::Instant::from_std(deadline.checked_sub(margin).unwrap_or(deadline));
            if tokio::time::timeout_at(until, drain).await.is_err() {
                tracing::warn!(
                    "{} connection(s) still open at the shutdown deadline",
                    connections.len()
                );
            }
        }
        None => drain.await,
    }
    accepted
}

/// Serves one connection to its end; at the stop, closes it only after its
/// first request has arrived (and then after the reply).
async fn serve_connection(stream: TcpStream, peer: SocketAddr, app: Router, stop: StopToken) {
    let first_request = Arc::new(Notify::new());
    let seen = Arc::clone(&first_request);
    let service = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        // A permit is kept if no one waits yet: `notified()` sees it later.
        seen.notify_one();
        hyper::service::Service::call(&service, request)
    });
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => return report(result, peer),
        () = stop.stopped() => {}
    }
    // Stopping. Never close an accepted connection before answering it: a
    // connection accepted a moment ago has its request on the way.
    let wait = stop
        .deadline()
        .map(|d| d.saturating_duration_since(std::time::Instant::now()) / 2)
        .unwrap_or(FIRST_REQUEST_WAIT);
    tokio::select! {
        result = connection.as_mut() => return report(result, peer),
        () = first_request.notified() => {}
        () = tokio::time::sleep(wait) => {
            tracing::debug!(%peer, "no request within {wait:?} of the stop: closing");
        }
    }
    connection.as_mut().graceful_shutdown();
    report(connection.await, peer)
}

fn report(result: Result<(), hyper::Error>, peer: SocketAddr) {
    if let Err(e) = result {
        tracing::debug!(%peer, "connection ended: {e}");
    }
}

export_plugin!(HelloAxum::new);
