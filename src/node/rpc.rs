//! The node's routes on `node.raft-addr`, next to raft's own RPC and behind the same guard
//! (the cluster secret): requests a non-leader forwards to the leader (membership changes, the
//! handoff), and this node's LiteFS report.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::handoff::{FORWARD_PATH, Handoff, HandoffRequest};
use crate::litefs::report::REPORT_PATH;
use crate::raft::RaftNode;
use crate::raft::membership::{AddRequest, RemoveRequest};
use crate::raft::network::paths;
use crate::raft::server::{json, parse};

#[derive(Clone)]
struct RpcState {
    raft: Arc<RaftNode>,
    handoff: Arc<Handoff>,
}

pub(super) fn router(raft: Arc<RaftNode>, handoff: Arc<Handoff>) -> Router {
    Router::new()
        .route(paths::ADMIN_ADD, post(admin_add))
        .route(paths::ADMIN_REMOVE, post(admin_remove))
        .route(FORWARD_PATH, post(admin_handoff))
        .route(REPORT_PATH, get(litefs_report))
        .with_state(RpcState { raft, handoff })
}

/// A membership change forwarded by another node: handled here only if this node leads (no
/// second forward, so two nodes with different ideas of the leader cannot loop).
async fn admin_add(State(st): State<RpcState>, body: Bytes) -> Response {
    match parse::<AddRequest>(&body) {
        Ok(req) => st.raft.add_node_here(req).await.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn admin_remove(State(st): State<RpcState>, body: Bytes) -> Response {
    match parse::<RemoveRequest>(&body) {
        Ok(req) => st.raft.remove_node_here(req).await.into_response(),
        Err(e) => e.into_response(),
    }
}

/// A handoff forwarded by another node: only handled if this node leads (no second forward).
async fn admin_handoff(State(st): State<RpcState>, body: Bytes) -> Response {
    match parse::<HandoffRequest>(&body) {
        Ok(req) => st.handoff.forwarded(req).await.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn litefs_report(State(st): State<RpcState>) -> Response {
    json(&st.handoff.report().await)
}
