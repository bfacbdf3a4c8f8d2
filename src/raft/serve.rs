//! Serving a router with bounds: at most so many connections at once, a deadline for each
//! request's headers (which also closes an idle keep-alive connection), a TLS handshake
//! deadline, and a bounded graceful shutdown. Used by every server of the node: raft
//! (`node.raft-addr`), status and admin (`node.http-addr`) and the lease API (`lease.addr`).
//!
//! Built from hyper's HTTP/1 connection builder and hyper-util's tokio glue and graceful
//! shutdown, because `axum::serve` has no header timeout and no connection limit; the
//! connection limit is a tokio semaphore whose permit each connection task holds.
//!
//! hyper starts the header timer whenever the connection waits for a request head, also
//! between two requests, so `header_read_timeout` is the idle timeout as well.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use super::network::LogLimiter;

/// The bounds of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; one more is closed at once (and logged).
    pub max_connections: usize,
    /// A request's headers must arrive within this, counted from when the connection starts
    /// waiting for them (so also the longest a keep-alive connection may sit idle).
    pub header_read_timeout: Duration,
    /// The TLS handshake must end within this.
    pub handshake_timeout: Duration,
}

impl Limits {
    /// Raft and admin: a few connections per peer (each peer's client pools them) and the
    /// CLI. Peers send a heartbeat every 100 ms or so; their pools keep connections idle for
    /// 30 s at most, and a connection we close is simply reopened.
    pub const PEERS: Limits = Limits {
        max_connections: 256,
        header_read_timeout: Duration::from_secs(20),
        handshake_timeout: Duration::from_secs(5),
    };

    /// The lease API: one LiteFS (a connection or two); the bound is for other local callers.
    pub const LOOPBACK: Limits = Limits {
        max_connections: 32,
        header_read_timeout: Duration::from_secs(20),
        handshake_timeout: Duration::from_secs(5),
    };
}

/// How long a graceful shutdown waits for requests in flight before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Serves `router` on `listener` until `stop` says so; `what` names the server in logs (the
/// config key of its address). With `tls`, every connection is TLS first (the server config
/// decides whether a client certificate is required). Handlers see the caller's address as
/// [`ConnectInfo<SocketAddr>`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    what: &'static str,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let refusals = LogLimiter::default();
    let acceptor = tls.map(TlsAcceptor::from);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let builder = Arc::new(builder);
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and the like: pause instead of spinning on the error.
                if refusals.should_log("accept") {
                    tracing::warn!("{what}: accept failed: {e}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if refusals.should_log("limit") {
                tracing::warn!(
                    "{what}: {} connections already open: closing the one from {peer}",
                    limits.max_connections
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = router
            .clone()
            .map_request(move |mut req: axum::http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
        let service = TowerToHyperService::new(service);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                None => serve_connection(&builder, stream, service, watcher, what, peer).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream))
                            .await;
                    match handshake {
                        Ok(Ok(tls)) => {
                            serve_connection(&builder, tls, service, watcher, what, peer).await
                        }
                        Ok(Err(e)) => {
                            tracing::warn!("{what}: TLS handshake with {peer} failed: {e}")
                        }
                        Err(_) => tracing::debug!("{what}: TLS handshake with {peer} timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("{what}: requests still in flight after {SHUTDOWN_GRACE:?}: dropped");
    }
}

async fn serve_connection<I, S>(
    builder: &hyper::server::conn::http1::Builder,
    io: I,
    service: S,
    watcher: Watcher,
    what: &'static str,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming> + Send,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder.serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        // A header timeout, a peer that went away: routine, the peer reconnects.
        tracing::debug!("{what}: connection from {peer} ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn server(limits: Limits) -> (SocketAddr, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route(
            "/who",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        );
        let (stop, rx) = watch::channel(false);
        tokio::spawn(serve(listener, router, limits, None, "test", rx));
        (addr, stop)
    }

    /// Reads until the server closes the connection; what it sent.
    async fn read_to_close(s: &mut tokio::net::TcpStream) -> String {
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the server did not close the connection");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_header_timeout() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(200),
            ..Limits::LOOPBACK
        };
        let (addr, _stop) = server(limits).await;
        // Half a request line, then nothing (a slowloris).
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /who HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let answer = read_to_close(&mut s).await;
        assert!(!answer.contains("200 OK"), "{answer}");
        // A whole request is answered, with the caller's address.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let me = s.local_addr().unwrap();
        s.write_all(b"GET /who HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Then the connection idles: closed by the same timer.
        let answer = read_to_close(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with(&me.to_string()), "{answer}");
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_closed() {
        let limits = Limits {
            max_connections: 2,
            ..Limits::LOOPBACK
        };
        let (addr, stop) = server(limits).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /who HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 12];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"HTTP/1.1 200");
            held.push(s);
        }
        // A third one is accepted by the kernel, then closed unanswered.
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = third
            .write_all(b"GET /who HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        assert_eq!(read_to_close(&mut third).await, "");
        // Once one closes, there is room again.
        drop(held.pop());
        let mut answered = false;
        for _ in 0..100 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _ = s
                .write_all(b"GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await;
            if read_to_close(&mut s).await.starts_with("HTTP/1.1 200") {
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(answered, "no room after a connection closed");
        let _ = stop.send(true);
    }
}
