//! HTTP on `node.http-addr`: what operators and tools talk to.
//!
//! - `GET /status`: [`StatusReport`](super::status::StatusReport) as JSON. Open, read-only.
//!   `?litefs=true` adds every member's LiteFS positions and lag (each member asked on its raft
//!   address, bounded: see [`super::litefs_status`]).
//! - `GET /metrics`: Prometheus text. Open, read-only.
//! - `POST /cluster/add` `{"id":4,"raft_addr":"host:port"}`, `POST /cluster/remove` `{"id":4}`:
//!   membership changes; they require `Authorization: Bearer <cluster secret>`.
//! - `POST /cluster/handoff` `{"to":2}` (or `{}`): the planned leadership + primary move (see
//!   [`crate::handoff`]); the secret too.
//! - `GET`/`PUT /test/faults` `{"blocked":[2,3],"elect":true}`: TEST-ONLY, routed only when the
//!   daemon started with `LITEFS_PY_TEST_FAULTS=1` (see `crate::raft::faults`); secret required
//!   too.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use litefs_py_fuse::StateHandle;
use serde::{Deserialize, Serialize};

use crate::handoff::{Handoff, HandoffRequest};
use crate::raft::membership::{AddRequest, RemoveRequest};
use crate::raft::network::LogLimiter;
use crate::raft::server::{authorized, log_rejection, parse};
use crate::raft::{NodeId, RaftNode};

/// Paths on `node.http-addr` (the CLI uses them too).
pub mod paths {
    pub const STATUS: &str = "/status";
    pub const METRICS: &str = "/metrics";
    pub const CLUSTER_ADD: &str = "/cluster/add";
    pub const CLUSTER_REMOVE: &str = "/cluster/remove";
    pub const CLUSTER_HANDOFF: &str = "/cluster/handoff";
    pub const TEST_FAULTS: &str = "/test/faults";
}

/// The body of `/test/faults`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FaultsBody {
    pub blocked: BTreeSet<NodeId>,
    /// Whether this node runs for leader when its leader goes silent (it still votes, and a
    /// leadership transfer still makes it run). Tests turn it off to decide who wins.
    #[serde(default = "elect_default")]
    pub elect: bool,
}

fn elect_default() -> bool {
    true
}

#[derive(Clone)]
struct ApiState {
    node: Arc<RaftNode>,
    state: StateHandle,
    handoff: Arc<Handoff>,
    rejections: Arc<LogLimiter>,
}

pub(super) fn router(node: Arc<RaftNode>, state: StateHandle, handoff: Arc<Handoff>) -> Router {
    let faults = node.transport.faults.enabled();
    let state = ApiState {
        node,
        state,
        handoff,
        rejections: Arc::default(),
    };
    let mut router = Router::new()
        .route(paths::STATUS, get(status))
        .route(paths::METRICS, get(metrics))
        .route(paths::CLUSTER_ADD, post(cluster_add))
        .route(paths::CLUSTER_REMOVE, post(cluster_remove))
        .route(paths::CLUSTER_HANDOFF, post(cluster_handoff));
    if faults {
        router = router.route(paths::TEST_FAULTS, get(faults_get).put(faults_put));
    }
    router.with_state(state)
}

struct Unauthorized;

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        (
            StatusCode::UNAUTHORIZED,
            "wrong or missing cluster secret\n",
        )
            .into_response()
    }
}

/// The management routes' gate: the cluster secret, else 401 and a log line naming the caller.
fn check(
    st: &ApiState,
    peer: SocketAddr,
    headers: &HeaderMap,
    what: &str,
) -> Result<(), Unauthorized> {
    if authorized(&st.node, headers) {
        return Ok(());
    }
    st.node.peers.count_rejected();
    log_rejection(&st.rejections, peer, what, None);
    Err(Unauthorized)
}

/// The query of `GET /status`.
#[derive(Debug, Default, Deserialize)]
struct StatusQuery {
    /// Also ask every member for its LiteFS positions (off by default: the test kit and
    /// scrapers poll `/status` often, and the plain report asks no peer).
    #[serde(default)]
    litefs: bool,
}

async fn status(State(st): State<ApiState>, Query(q): Query<StatusQuery>) -> Response {
    let report = if q.litefs {
        super::status::status_with_litefs(&st.node, &st.state, &st.handoff).await
    } else {
        super::status::status(&st.node, &st.state)
    };
    axum::Json(report).into_response()
}

async fn metrics(State(st): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        super::status::prometheus(&st.node, &st.state),
    )
        .into_response()
}

async fn cluster_add(
    State(st): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(resp) = check(&st, peer, &headers, "a cluster add request") {
        return resp.into_response();
    }
    match parse::<AddRequest>(&body) {
        Ok(req) => st.node.add_node(req).await.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn cluster_remove(
    State(st): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(resp) = check(&st, peer, &headers, "a cluster remove request") {
        return resp.into_response();
    }
    match parse::<RemoveRequest>(&body) {
        Ok(req) => st.node.remove_node(req).await.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn cluster_handoff(
    State(st): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(resp) = check(&st, peer, &headers, "a handoff request") {
        return resp.into_response();
    }
    match parse::<HandoffRequest>(&body) {
        Ok(req) => st.handoff.handoff(req).await.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn faults_get(
    State(st): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(resp) = check(&st, peer, &headers, "a test fault request") {
        return resp.into_response();
    }
    axum::Json(FaultsBody {
        blocked: st.node.transport.faults.blocked(),
        elect: st.node.transport.faults.elect(),
    })
    .into_response()
}

async fn faults_put(
    State(st): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(resp) = check(&st, peer, &headers, "a test fault request") {
        return resp.into_response();
    }
    match parse::<FaultsBody>(&body) {
        Ok(req) => {
            st.node.transport.faults.set_blocked(req.blocked.clone());
            if st.node.transport.faults.set_elect(req.elect) {
                st.node.raft.runtime_config().elect(req.elect);
            }
            axum::Json(req).into_response()
        }
        Err(e) => e.into_response(),
    }
}
