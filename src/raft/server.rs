//! The server half of the raft transport: HTTP on `node.raft-addr`.
//!
//! The node layer adds routes of its own (membership changes and the handoff forwarded to the
//! leader, the LiteFS report), which pass the same guard.
//!
//! Every route requires the cluster secret; a wrong or missing one is answered 401 and logged
//! with the caller's address. Request bodies are parsed here, and a body that does not parse is
//! a 400 — nothing a peer sends can panic the daemon. The routes hand the decoded request to
//! openraft and return its answer as JSON.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, TransferLeaderRequest, VoteRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::faults::FAULT_HEADER;
use super::network::{
    HEADER_FROM, HEADER_HOSTNAME, HEADER_TO, HEADER_WITNESS, Hello, LogLimiter, SnapshotBody,
    paths, witness_header,
};
use super::node::RaftNode;
use super::timing_check::HEADER_TIMING;
use super::{NodeId, Snapshot, TypeConfig};

#[derive(Clone)]
struct RpcState {
    node: Arc<RaftNode>,
    rejections: Arc<LogLimiter>,
}

/// The router for `node.raft-addr`, with `more` routes of the node layer behind the same guard.
/// Serve it with connect info (the 401 log names the caller).
pub fn router(node: Arc<RaftNode>, more: Router) -> Router {
    let state = RpcState {
        node,
        rejections: Arc::default(),
    };
    Router::new()
        .route(paths::APPEND, post(append))
        .route(paths::VOTE, post(vote))
        .route(paths::PRE_VOTE, post(pre_vote))
        .route(paths::SNAPSHOT, post(snapshot))
        .route(paths::TRANSFER_LEADER, post(transfer_leader))
        .route(paths::HELLO, get(hello))
        .with_state(state.clone())
        .merge(more)
        .layer(middleware::from_fn_with_state(state, guard))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether `headers` carry `Authorization: Bearer <secret>`. No secret configured: nobody does.
pub fn authorized(node: &RaftNode, headers: &HeaderMap) -> bool {
    let Some(secret) = node.transport.secret.as_ref() else {
        return false;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|presented| secret.matches(presented))
}

/// Logs a rejected request once per caller address and interval.
pub fn log_rejection(limiter: &LogLimiter, peer: SocketAddr, what: &str, from: Option<&str>) {
    if limiter.should_log(&peer.ip().to_string()) {
        tracing::warn!(
            "rejected {what} from {peer} (claims node {}): wrong or missing cluster secret (401)",
            from.unwrap_or("?")
        );
    }
}

/// Runs before every route: secret, intended receiver, test faults; stamps our identity on the
/// answer.
async fn guard(
    State(st): State<RpcState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let node = &st.node;
    let headers = req.headers();
    let from_raw = header_str(headers, HEADER_FROM);
    if !authorized(node, headers) {
        node.peers.count_rejected();
        log_rejection(&st.rejections, peer, "a raft request", from_raw);
        return (
            StatusCode::UNAUTHORIZED,
            "wrong or missing cluster secret\n",
        )
            .into_response();
    }
    let from: Option<NodeId> = from_raw.and_then(|s| s.parse().ok());
    if let Some(to) = header_str(headers, HEADER_TO).and_then(|s| s.parse::<NodeId>().ok())
        && to != node.settings.id
    {
        let msg = format!("this is node {}, not node {to}\n", node.settings.id);
        return (StatusCode::MISDIRECTED_REQUEST, msg).into_response();
    }
    if let Some(from) = from {
        if node.transport.faults.is_blocked(from) {
            let mut resp = (
                StatusCode::SERVICE_UNAVAILABLE,
                "blocked by the test fault layer\n",
            )
                .into_response();
            resp.headers_mut()
                .insert(FAULT_HEADER, HeaderValue::from_static("blocked"));
            return resp;
        }
        let hostname = header_str(headers, HEADER_HOSTNAME);
        let witness = witness_header(header_str(headers, HEADER_WITNESS));
        node.peers.contact(from, hostname, witness, Instant::now());
        node.transport
            .check_timing(from, header_str(headers, HEADER_TIMING));
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(HEADER_FROM, HeaderValue::from(node.settings.id));
    if let Ok(v) = HeaderValue::from_str(&node.settings.hostname) {
        h.insert(HEADER_HOSTNAME, v);
    }
    let witness = if node.settings.witness { "1" } else { "0" };
    h.insert(HEADER_WITNESS, HeaderValue::from_static(witness));
    if let Ok(v) = HeaderValue::from_str(node.transport.timing_header()) {
        h.insert(HEADER_TIMING, v);
    }
    resp
}

/// A body that does not decode: 400 with serde's message.
pub struct BadRequest(String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        (
            StatusCode::BAD_REQUEST,
            format!("cannot decode the request: {}\n", self.0),
        )
            .into_response()
    }
}

pub fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, BadRequest> {
    serde_json::from_slice(body).map_err(|e| BadRequest(e.to_string()))
}

pub fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// openraft refuses only when it is stopping (a fatal error or shutdown).
fn raft_stopped(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("raft is not running: {e}\n"),
    )
        .into_response()
}

fn respond<T: Serialize, E: std::fmt::Display>(result: Result<T, E>) -> Response {
    match result {
        Ok(v) => json(&v),
        Err(e) => raft_stopped(e),
    }
}

async fn append(State(st): State<RpcState>, body: Bytes) -> Response {
    let received = Instant::now();
    let req: AppendEntriesRequest<TypeConfig> = match parse(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let leader = req.vote.leader_id.node_id;
    let established = req.vote.is_committed();
    let result = st.node.raft.append_entries(req).await;
    // An established leader whose authority we accepted (anything but "your vote is stale"):
    // this is the contact that makes a follower say `replica`.
    if let Ok(resp) = &result
        && established
        && !matches!(resp, AppendEntriesResponse::HigherVote(_))
    {
        st.node.peers.leader_append(leader, received);
    }
    respond(result)
}

async fn vote(State(st): State<RpcState>, body: Bytes) -> Response {
    match parse::<VoteRequest<TypeConfig>>(&body) {
        Ok(req) => {
            // A restarted node has forgotten when it last heard a leader: it votes only once
            // a whole leader lease has passed since it started (RaftNode::vote_lease_until).
            tokio::time::sleep_until(st.node.vote_lease_until().into()).await;
            respond(st.node.raft.vote(req).await)
        }
        Err(e) => e.into_response(),
    }
}

async fn pre_vote(State(st): State<RpcState>, body: Bytes) -> Response {
    match parse::<VoteRequest<TypeConfig>>(&body) {
        Ok(req) => respond(st.node.raft.pre_vote(req).await),
        Err(e) => e.into_response(),
    }
}

async fn snapshot(State(st): State<RpcState>, body: Bytes) -> Response {
    let body: SnapshotBody = match parse(&body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let snapshot = Snapshot {
        meta: body.meta,
        snapshot: body.snapshot,
    };
    respond(
        st.node
            .raft
            .install_full_snapshot(body.vote, snapshot)
            .await,
    )
}

async fn transfer_leader(State(st): State<RpcState>, body: Bytes) -> Response {
    match parse::<TransferLeaderRequest<TypeConfig>>(&body) {
        Ok(req) => respond(st.node.raft.handle_transfer_leader(req).await),
        Err(e) => e.into_response(),
    }
}

async fn hello(State(st): State<RpcState>) -> Response {
    let s = &st.node.settings;
    json(&Hello {
        id: s.id,
        hostname: s.hostname.clone(),
        witness: s.witness,
        initialized: st.node.raft.is_initialized().await.ok(),
    })
}
