//! HTTP at the node's edge: serving a router, and the one place where domain errors and
//! answers become HTTP statuses and bodies (the layers below return plain errors).

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::handoff::plan::PlanError;
use crate::handoff::{HandoffError, HandoffOutcome};
use crate::raft::NodeError;
use crate::raft::membership::MembershipOutcome;

/// Serves `router` on `listener` (with the caller's address, for the 401 log) until `stop`,
/// within the peers' connection limits and timeouts, over mutual TLS with `cluster.tls`.
/// `what`: the address's config key, for the logs.
pub(super) async fn serve(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    what: &'static str,
    stop: watch::Receiver<bool>,
) {
    use crate::raft::serve::{Limits, serve};
    serve(listener, router, Limits::PEERS, tls, what, stop).await;
}

fn node_status(e: &NodeError) -> StatusCode {
    match e {
        NodeError::Invalid(_) => StatusCode::BAD_REQUEST,
        NodeError::Refused(_) => StatusCode::CONFLICT,
        NodeError::NoLeader => StatusCode::SERVICE_UNAVAILABLE,
        NodeError::Peer(_) | NodeError::Remote(_) => StatusCode::BAD_GATEWAY,
        NodeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn handoff_status(e: &HandoffError) -> StatusCode {
    match e {
        HandoffError::Plan(PlanError::Unknown(_)) => StatusCode::NOT_FOUND,
        HandoffError::Plan(_) | HandoffError::Refused(_) => StatusCode::CONFLICT,
        HandoffError::NoLeader => StatusCode::SERVICE_UNAVAILABLE,
        HandoffError::LiteFs(_) | HandoffError::Peer(_) => StatusCode::BAD_GATEWAY,
        HandoffError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        HandoffError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for NodeError {
    fn into_response(self) -> Response {
        (node_status(&self), format!("{self}\n")).into_response()
    }
}

impl IntoResponse for HandoffError {
    fn into_response(self) -> Response {
        (handoff_status(&self), format!("{self}\n")).into_response()
    }
}

impl IntoResponse for MembershipOutcome {
    fn into_response(self) -> Response {
        axum::Json(self).into_response()
    }
}

impl IntoResponse for HandoffOutcome {
    fn into_response(self) -> Response {
        axum::Json(self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicked_handoff_is_a_500() {
        assert_eq!(
            handoff_status(&HandoffError::Internal("the handoff task failed".into())),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            handoff_status(&HandoffError::Plan(PlanError::Unknown(9))),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            node_status(&NodeError::NoLeader),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
