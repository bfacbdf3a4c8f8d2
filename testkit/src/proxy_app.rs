//! The small app the proxy tests put behind each node's proxy (axum on a runtime of its own, in
//! the test process): it writes to SQLite in the node's mount, so a write that reaches a
//! replica's app fails as it would for a real app (LiteFS refuses it), and every write carries
//! the client's unique request id, so a request executed twice shows as two rows.
//!
//! Routes:
//! - `POST /init`: creates the table (WAL) in [`DB`]; idempotent.
//! - `POST /write?id=ID`: reads the body to its end, streaming (never held whole), inserts
//!   `(ID, node, bytes)`; answers `{"node":N,"id":ID,"bytes":B}`.
//! - `GET /rows`: how many rows this node's copy of the database has.
//! - `GET /has?id=ID`: whether this node's copy has the row of request ID.
//! - `GET /whoami`: `{"node":N}`.
//! - `GET /sleep?ms=N`: answers after N ms (a slow request).
//! - `GET /ws`: a WebSocket that echoes every message, prefixed with the node id.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use serde::Deserialize;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// The database the app writes, in the node's mount.
pub const DB: &str = "proxy.db";

struct AppState {
    node: u64,
    db: PathBuf,
    gate: Gate,
}

/// Held (read) by every SQLite call of the app; `true` once its node was killed: the calls that
/// waited answer 503 without touching the database.
type Gate = Arc<tokio::sync::RwLock<bool>>;

/// A running app; stopped on drop.
pub struct App {
    rt: Option<tokio::runtime::Runtime>,
    stop: watch::Sender<bool>,
    gate: Gate,
    pub addr: SocketAddr,
}

impl App {
    /// Serves node `node`'s app on `addr`, writing to `mount`/[`DB`].
    pub fn start(addr: &str, node: u64, mount: PathBuf) -> Result<App> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(Error::io("the app's runtime"))?;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .map_err(Error::io(format!("the app binding {addr}")))?;
        let addr = listener.local_addr().map_err(Error::io("local addr"))?;
        let gate = Gate::default();
        let state = Arc::new(AppState {
            node,
            db: mount.join(DB),
            gate: gate.clone(),
        });
        let router = Router::new()
            .route("/init", post(init))
            .route("/write", post(write))
            .route("/rows", get(rows))
            .route("/has", get(has))
            .route("/whoami", get(whoami))
            .route("/sleep", get(sleep))
            .route("/ws", get(ws))
            .with_state(state);
        let (stop, mut rx) = watch::channel(false);
        rt.spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await;
        });
        Ok(App {
            rt: Some(rt),
            stop,
            gate,
            addr,
        })
    }

    /// Runs `kill` (a kill -9 of this app's node) while no SQLite call of the app is in progress:
    /// calls in flight finish first, new ones wait, and once `kill` returned they answer 503
    /// without touching the database (their clients went with the node's proxy). The app runs
    /// in the test process: a call that read the mapped WAL index (`-shm`) of the dead LiteFS
    /// would die of SIGBUS and take every test with it (seen in the durability test).
    pub fn while_frozen<T>(&self, kill: impl FnOnce() -> T) -> T {
        let rt = self.rt.as_ref().expect("running");
        let held = rt.block_on(self.gate.clone().write_owned());
        let out = kill();
        let mut held = held;
        *held = true;
        drop(held);
        // Fair: the calls queued before this take their turn (and see `true`) first.
        let mut reopened = rt.block_on(self.gate.clone().write_owned());
        *reopened = false;
        out
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

fn open(path: &std::path::Path) -> rusqlite::Result<rusqlite::Connection> {
    let c = rusqlite::Connection::open(path)?;
    c.busy_timeout(Duration::from_secs(5))?;
    Ok(c)
}

fn fail(e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
}

async fn blocking<T: Send + 'static>(
    st: &AppState,
    f: impl FnOnce() -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, Response> {
    let gate = st.gate.clone().read_owned().await;
    if *gate {
        return Err((StatusCode::SERVICE_UNAVAILABLE, "this node was killed\n").into_response());
    }
    let held = move || {
        let _gate = gate;
        f()
    };
    match tokio::task::spawn_blocking(held).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(fail(e)),
        Err(e) => Err(fail(e)),
    }
}

async fn init(State(st): State<Arc<AppState>>) -> Response {
    let db = st.db.clone();
    match blocking(&st, move || {
        let c = open(&db)?;
        c.query_row("PRAGMA journal_mode=wal", [], |r| r.get::<_, String>(0))?;
        c.execute_batch(
            "CREATE TABLE IF NOT EXISTS requests(id TEXT NOT NULL, node INTEGER NOT NULL, bytes INTEGER NOT NULL)",
        )
    })
    .await
    {
        Ok(()) => format!("{{\"node\":{}}}", st.node).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct WriteQuery {
    id: String,
}

async fn write(
    State(st): State<Arc<AppState>>,
    Query(q): Query<WriteQuery>,
    req: Request,
) -> Response {
    // Streamed: each frame is counted and dropped.
    let mut body = req.into_body();
    let mut bytes: i64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    bytes += d.len() as i64;
                }
            }
            Err(e) => return (StatusCode::BAD_REQUEST, format!("body: {e}\n")).into_response(),
        }
    }
    let (db, id, node) = (st.db.clone(), q.id.clone(), st.node);
    match blocking(&st, move || {
        open(&db)?.execute(
            "INSERT INTO requests(id, node, bytes) VALUES (?1, ?2, ?3)",
            rusqlite::params![id, node as i64, bytes],
        )
    })
    .await
    {
        Ok(_) => (
            [(header::CONTENT_TYPE, "application/json")],
            format!(
                "{{\"node\":{},\"id\":{:?},\"bytes\":{bytes}}}",
                st.node, q.id
            ),
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn rows(State(st): State<Arc<AppState>>) -> Response {
    let db = st.db.clone();
    match blocking(&st, move || {
        open(&db)?.query_row("SELECT count(*) FROM requests", [], |r| r.get::<_, i64>(0))
    })
    .await
    {
        Ok(n) => format!("{{\"node\":{},\"rows\":{n}}}", st.node).into_response(),
        Err(r) => r,
    }
}

async fn has(State(st): State<Arc<AppState>>, Query(q): Query<WriteQuery>) -> Response {
    let db = st.db.clone();
    let found = blocking(&st, move || {
        open(&db)?.query_row("SELECT count(*) FROM requests WHERE id = ?1", [q.id], |r| {
            r.get::<_, i64>(0)
        })
    })
    .await;
    match found {
        Ok(n) => format!("{{\"node\":{},\"found\":{}}}", st.node, n > 0).into_response(),
        Err(r) => r,
    }
}

async fn whoami(State(st): State<Arc<AppState>>) -> String {
    format!("{{\"node\":{}}}", st.node)
}

#[derive(Deserialize)]
struct SleepQuery {
    ms: u64,
}

async fn sleep(State(st): State<Arc<AppState>>, Query(q): Query<SleepQuery>) -> String {
    tokio::time::sleep(Duration::from_millis(q.ms.min(60_000))).await;
    format!("{{\"node\":{},\"slept\":{}}}", st.node, q.ms)
}

/// A WebSocket server by hand on hyper's upgrade (axum's `ws` feature is not built): the 101
/// with the accept key, then tungstenite's framing on the upgraded connection.
async fn ws(State(st): State<Arc<AppState>>, mut req: Request) -> Response {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return (StatusCode::BAD_REQUEST, "not a WebSocket request\n").into_response();
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let node = st.node;
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            io,
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            use tokio_tungstenite::tungstenite::Message;
            let reply = match msg {
                Message::Text(t) => Message::text(format!("node {node}: {t}")),
                Message::Binary(b) => Message::Binary(b),
                Message::Close(_) => break,
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-accept", accept)
        .body(Body::empty())
        .expect("a valid response")
}
