//! HTTP on `lease.addr`: the Consul calls LiteFS v0.5.14 makes, and nothing else.
//!
//! | route | answer |
//! |---|---|
//! | `PUT /v1/session/create` | `{"ID":"<uuid>"}` |
//! | `PUT /v1/session/renew/<id>` | 200 + `[session]`; 404 = lease lost |
//! | `PUT /v1/session/destroy/<id>` | `true` |
//! | `PUT /v1/kv/<key>?acquire=<id>` | `true` / `false` |
//! | `PUT /v1/kv/<key>?release=<id>` | `true` |
//! | `GET /v1/kv/<key>` | `[KV pair]` (value: base64 of LiteFS's JSON) or 404 |
//! | `GET`/`PUT /v1/kv/<key>/clusterid` | `[KV pair]` (`?raw`: the id) or 404 / `true` |
//! | `PUT /v1/catalog/register` | `true` |
//! | `GET /litefs-py/lease` | this API's state, JSON (not Consul's), without session ids |
//!
//! Every request must carry this node's lease token, as `X-Consul-Token` (what LiteFS's Consul
//! client sends, from `$CONSUL_HTTP_TOKEN`) or `Authorization: Bearer`; without it the answer is
//! 403 and says what is missing. Any local process could otherwise release the lease or take it
//! for an advertise URL of its own (docs/architecture.md, "LiteFS's Consul client").
//!
//! A malformed body, id or query is 400; an unknown route is 404 and a log line; nothing a
//! client sends can panic the daemon. No answer carries a session id: a KV pair's `Session` is
//! left out (LiteFS reads only the value).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::consul::KvPair;
use super::{LEASE_KEY, LeaseError, LeaseService, RaftFacts};
use crate::config::{CONSUL_TOKEN_ENV, LeaseToken};
use crate::raft::network::{LogLimiter, Secret};
use crate::raft::serve::{self, Limits};

/// The header LiteFS's Consul client puts its token in.
pub const TOKEN_HEADER: &str = "x-consul-token";

/// Bodies are a few hundred bytes; anything near this is not LiteFS.
const BODY_LIMIT: usize = 64 * 1024;

impl IntoResponse for LeaseError {
    fn into_response(self) -> Response {
        let status = match &self {
            LeaseError::BadRequest(_) => StatusCode::BAD_REQUEST,
            LeaseError::TooManySessions(_) => StatusCode::TOO_MANY_REQUESTS,
            LeaseError::Conflict(_) => StatusCode::CONFLICT,
            LeaseError::Forbidden(_) => StatusCode::FORBIDDEN,
            LeaseError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        tracing::debug!(status = status.as_u16(), "lease API: {self}");
        (status, format!("{self}\n")).into_response()
    }
}

struct Api<F> {
    service: Arc<LeaseService<F>>,
    unknown: LogLimiter,
}

type St<F> = State<Arc<Api<F>>>;

/// Consul answers booleans and JSON with these headers; the Go client reads `X-Consul-*` but
/// needs none of them.
fn json(body: String) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
    h.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
    r
}

fn boolean(b: bool) -> Response {
    json(if b { "true" } else { "false" }.into())
}

fn kv_answer(pair: Option<KvPair>, raw: bool) -> Response {
    let Some(mut pair) = pair else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if raw {
        return (StatusCode::OK, pair.raw_value().unwrap_or_default()).into_response();
    }
    // The holder's session id is the lease's handle: it stays with the holder.
    pair.session = None;
    let mut r = json(serde_json::to_string(&[&pair]).expect("plain struct"));
    r.headers_mut()
        .insert("X-Consul-Index", HeaderValue::from(pair.modify_index));
    r
}

/// Which token a request presented, if any.
fn presented(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .get(TOKEN_HEADER)
        .map(HeaderValue::as_bytes)
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        })
}

/// Refuses every request without this node's token (403, saying what is missing).
async fn require_token(State(guard): State<Arc<TokenGuard>>, req: Request, next: Next) -> Response {
    let why = match presented(req.headers()) {
        Some(t) if guard.token.matches(t) => return next.run(req).await,
        Some(_) => "wrong lease token",
        None => "missing lease token",
    };
    if guard.refusals.should_log(why) {
        tracing::warn!(
            "lease API: refused {} {}: {why} (403); only the LiteFS this node starts (or one given ${CONSUL_TOKEN_ENV}) may call it",
            req.method(),
            req.uri().path()
        );
    }
    let body = format!(
        "403: {why}: send this node's lease token as X-Consul-Token (LiteFS reads it from ${CONSUL_TOKEN_ENV}; `litefs-py run` sets it for the LiteFS it starts, `litefs-py mount` keeps it in lease.token-file)\n"
    );
    (StatusCode::FORBIDDEN, body).into_response()
}

struct TokenGuard {
    token: Secret,
    refusals: LogLimiter,
}

/// The router for `lease.addr`: every route behind `token`.
pub fn router<F: RaftFacts>(service: Arc<LeaseService<F>>, token: &LeaseToken) -> Router {
    let api = Arc::new(Api {
        service,
        unknown: LogLimiter::default(),
    });
    let guard = Arc::new(TokenGuard {
        token: Secret::new(token.as_str()),
        refusals: LogLimiter::default(),
    });
    Router::new()
        .route("/v1/session/create", put(session_create::<F>))
        .route("/v1/session/renew/{id}", put(session_renew::<F>))
        .route("/v1/session/destroy/{id}", put(session_destroy::<F>))
        .route("/v1/kv/{*key}", get(kv_get::<F>).put(kv_put::<F>))
        .route("/v1/catalog/register", put(catalog_register))
        .route("/litefs-py/lease", get(status::<F>))
        .fallback(unknown::<F>)
        .method_not_allowed_fallback(not_allowed::<F>)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(api)
        .layer(middleware::from_fn_with_state(guard, require_token))
}

async fn session_create<F: RaftFacts>(State(api): St<F>, body: Bytes) -> Response {
    match api.service.create_session(&body) {
        Ok(entry) => json(serde_json::json!({ "ID": entry.id }).to_string()),
        Err(e) => e.into_response(),
    }
}

async fn session_renew<F: RaftFacts>(State(api): St<F>, Path(id): Path<String>) -> Response {
    match api.service.renew(&id) {
        Ok(Ok(entry)) => json(serde_json::to_string(&[entry]).expect("plain struct")),
        // The Go client turns a 404 into "no session": LiteFS's ErrLeaseExpired.
        Ok(Err(lost)) => (StatusCode::NOT_FOUND, format!("{}\n", lost.as_str())).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn session_destroy<F: RaftFacts>(State(api): St<F>, Path(id): Path<String>) -> Response {
    match api.service.destroy(&id) {
        Ok(b) => boolean(b),
        Err(e) => e.into_response(),
    }
}

/// The query of a KV call: `acquire`, `release`, `raw`; Consul's others (`dc`, `ns`,
/// `flags`...) are accepted and ignored.
struct KvQuery {
    acquire: Option<String>,
    release: Option<String>,
    raw: bool,
}

fn kv_query(
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<KvQuery, LeaseError> {
    let Query(pairs) = q.map_err(|e| LeaseError::BadRequest(format!("query: {e}")))?;
    let mut out = KvQuery {
        acquire: None,
        release: None,
        raw: false,
    };
    for (k, v) in pairs {
        let slot = match k.as_str() {
            "acquire" => &mut out.acquire,
            "release" => &mut out.release,
            "raw" => {
                out.raw = true;
                continue;
            }
            _ => continue,
        };
        if slot.replace(v).is_some() {
            return Err(LeaseError::BadRequest(format!("query: {k} given twice")));
        }
    }
    Ok(out)
}

enum KvKey {
    Lease,
    ClusterId,
}

fn kv_key(key: &str) -> Option<KvKey> {
    match key.strip_prefix(LEASE_KEY) {
        Some("") => Some(KvKey::Lease),
        Some("/clusterid") => Some(KvKey::ClusterId),
        _ => None,
    }
}

async fn kv_get<F: RaftFacts>(
    State(api): St<F>,
    Path(key): Path<String>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let Some(which) = kv_key(&key) else {
        return log_unknown(&api, &Method::GET, &format!("/v1/kv/{key}"));
    };
    let q = match kv_query(q) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    match which {
        KvKey::Lease => kv_answer(api.service.primary(), q.raw),
        KvKey::ClusterId => {
            let pair = api
                .service
                .cluster_id()
                .map(|id| KvPair::new(&key, id.as_bytes(), None, 1));
            kv_answer(pair, q.raw)
        }
    }
}

async fn kv_put<F: RaftFacts>(
    State(api): St<F>,
    Path(key): Path<String>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
    body: Bytes,
) -> Response {
    let Some(which) = kv_key(&key) else {
        return log_unknown(&api, &Method::PUT, &format!("/v1/kv/{key}"));
    };
    let q = match kv_query(q) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let result = match (which, q.acquire, q.release) {
        (_, Some(_), Some(_)) => Err(LeaseError::BadRequest(
            "query: acquire and release together".into(),
        )),
        (KvKey::Lease, Some(id), None) => api.service.acquire(&id, &body).await,
        (KvKey::Lease, None, Some(id)) => api.service.release(&id),
        (KvKey::Lease, None, None) => Err(LeaseError::BadRequest(format!(
            "{LEASE_KEY} is written only with ?acquire= or ?release="
        ))),
        (KvKey::ClusterId, None, None) => api.service.set_cluster_id(&body).await.map(|()| true),
        (KvKey::ClusterId, _, _) => Err(LeaseError::BadRequest(
            "the cluster id is not a lock".into(),
        )),
    };
    match result {
        Ok(b) => boolean(b),
        Err(e) => e.into_response(),
    }
}

/// Only called when the Consul URL has a path prefix, which the generated litefs.yml never
/// has; answered for completeness.
async fn catalog_register() -> Response {
    boolean(true)
}

/// `GET /litefs-py/lease`: the state without the session ids.
#[derive(Debug, Serialize)]
struct PublicStatus {
    leader_term: Option<u64>,
    grant_in_ms: Option<u64>,
    /// A session holds the lease (through this node, its leader).
    held: bool,
    /// LiteFS's primary info (hostname, advertise URL) of the holder.
    holder_value: Option<String>,
    sessions: usize,
    handing_off: bool,
}

async fn status<F: RaftFacts>(State(api): St<F>) -> Response {
    let s = api.service.status();
    let public = PublicStatus {
        leader_term: s.leader_term,
        grant_in_ms: s.grant_in_ms,
        held: s.holder.is_some(),
        holder_value: s.holder_value,
        sessions: s.sessions.len(),
        handing_off: s.handing_off,
    };
    json(serde_json::to_string(&public).expect("plain struct"))
}

fn log_unknown<F>(api: &Api<F>, method: &Method, path: &str) -> Response {
    if api.unknown.should_log(&format!("{method} {path}")) {
        tracing::warn!("lease API: no such route: {method} {path} (404)");
    }
    (
        StatusCode::NOT_FOUND,
        "not a route of litefs-py's lease API\n",
    )
        .into_response()
}

async fn unknown<F: RaftFacts>(State(api): St<F>, method: Method, uri: Uri) -> Response {
    log_unknown(&api, &method, uri.path())
}

async fn not_allowed<F: RaftFacts>(State(api): St<F>, method: Method, uri: Uri) -> Response {
    if api.unknown.should_log(&format!("{method} {}", uri.path())) {
        tracing::warn!(
            "lease API: method not allowed: {method} {} (405)",
            uri.path()
        );
    }
    StatusCode::METHOD_NOT_ALLOWED.into_response()
}

/// The running lease API: its HTTP server and the service's background task.
pub struct LeaseServer {
    /// Where it listens (the tests bind port 0 and connect here).
    #[cfg_attr(not(test), allow(dead_code))]
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Binds `addr` (loopback only) and serves the lease API from `facts`, for LiteFS at
/// `advertise_url`, behind `token`.
#[cfg(test)]
pub async fn start<F: RaftFacts>(
    facts: F,
    params: super::LeaseParams,
    addr: SocketAddr,
    advertise_url: &str,
    token: &LeaseToken,
) -> Result<(LeaseServer, Arc<LeaseService<F>>), LeaseError> {
    let service = LeaseService::new(facts, params, advertise_url.to_string());
    start_service(service, addr, token).await
}

/// Binds `addr` (loopback only) and serves `service`, built by the caller, behind `token`.
pub async fn start_service<F: RaftFacts>(
    service: LeaseService<F>,
    addr: SocketAddr,
    token: &LeaseToken,
) -> Result<(LeaseServer, Arc<LeaseService<F>>), LeaseError> {
    let params = service.params();
    if !addr.ip().is_loopback() {
        return Err(LeaseError::NotLoopback(addr));
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| LeaseError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| LeaseError::Bind { addr, source })?;
    let service = Arc::new(service);
    let (stop, _) = watch::channel(false);
    let app = router(service.clone(), token);
    let rx = stop.subscribe();
    // LiteFS keeps one connection; the limit only bounds what other local processes can hold.
    let http = tokio::spawn(serve::serve(
        listener,
        app,
        Limits::LOOPBACK,
        None,
        "lease.addr",
        rx,
    ));
    let s = service.clone();
    let rx = stop.subscribe();
    let background = tokio::spawn(async move { s.run(rx).await });
    tracing::info!(%addr, ttl = ?params.ttl, "lease API (Consul-compatible, for LiteFS) listening");
    Ok((
        LeaseServer {
            addr,
            stop,
            tasks: vec![http, background],
        },
        service,
    ))
}

impl LeaseServer {
    /// Whether a task of the API ended (the server or the background loop) without
    /// [`LeaseServer::shutdown`]: it serves no more.
    pub fn ended(&self) -> bool {
        self.tasks.iter().any(JoinHandle::is_finished)
    }

    /// Stops serving; bounded: a request still held (an acquire waiting) is abandoned.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                tracing::debug!("a lease API task did not stop within 2s");
                abort.abort();
            }
        }
    }
}
