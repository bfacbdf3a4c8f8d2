//! The proxy's listener: one task per connection (a slow client holds its own task only),
//! HTTP/1.1 by hyper with upgrades, and a bounded drain at shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::{DRAIN, Shared, handler};

/// A client gets this long to send a request's headers (a slowloris holds one task, not more).
/// It also bounds an idle keep-alive connection: the wait for its next request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Open client connections at most (each holds a task and a descriptor). At the limit the proxy
/// stops accepting, and the kernel's backlog holds newcomers until a connection ends: a flood
/// of idle connections cannot take every descriptor the node's own servers and LiteFS need.
const MAX_CONNECTIONS: usize = 4096;

pub async fn serve(listener: TcpListener, sh: Arc<Shared>, stop: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let stopping = stopped(stop.clone());
    tokio::pin!(stopping);
    loop {
        // Waits here while MAX_CONNECTIONS are open (the semaphore is never closed).
        let permit = tokio::select! {
            () = &mut stopping => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        tokio::select! {
            () = &mut stopping => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let (sh, stop) = (sh.clone(), stop.clone());
                    conns.spawn(async move {
                        connection(stream, peer, sh, stop).await;
                        drop(permit);
                    });
                }
                // Out of file descriptors and the like: logged, and a moment to recover.
                Err(e) => {
                    tracing::warn!("the proxy's accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connections as we go, so the set stays small.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let drained =
        tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            open = conns.len(),
            "proxy connections still open after {DRAIN:?}: closed"
        );
        conns.abort_all();
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    sh: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |req| {
        let sh = sh.clone();
        async move { Ok::<_, Infallible>(handler::handle(sh, req, peer).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let stopping = stopped(stop);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = stopping => {
            // The request in flight finishes; the connection closes after it.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "a proxy connection ended: {e}");
    }
}

/// Returns once `stop` says true (or its sender is gone).
pub(super) async fn stopped(mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}
