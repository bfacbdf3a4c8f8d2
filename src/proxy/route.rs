//! Where a request goes (docs/proxy.md, "Routing"): a rule over what the node's view says and
//! the proxy addresses recorded in raft, with no I/O, so that it is tested on its own.

use litefs_py_fuse::{ClusterView, Role};

use crate::raft::NodeId;

/// Methods that do not change state (RFC 9110 §9.2.1), served by the node's own app.
pub fn is_safe(method: &axum::http::Method) -> bool {
    use axum::http::Method;
    [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE].contains(method)
}

/// Where an unsafe request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// This node is primary: its own app.
    Local,
    /// The primary's proxy, at this URL.
    Primary { node: NodeId, url: String },
}

/// Why an unsafe request cannot go anywhere yet (it waits, up to `proxy.primary-wait`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoTarget {
    /// An election, a new leader waiting out the old lease, or this node cut off.
    NoPrimary,
    /// The primary is known but has not recorded its proxy's address in raft yet.
    NoAddress(NodeId),
}

impl std::fmt::Display for NoTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoTarget::NoPrimary => f.write_str("no primary is known (an election or a failover)"),
            NoTarget::NoAddress(id) => write!(
                f,
                "the primary (node {id}) has not published its proxy address yet"
            ),
        }
    }
}

/// The target of an unsafe request on a node whose view is `view`; `address` gives a node's
/// recorded proxy URL.
pub fn unsafe_target(
    view: &ClusterView,
    address: impl Fn(NodeId) -> Option<String>,
) -> Result<Target, NoTarget> {
    match view.role() {
        Role::Primary => Ok(Target::Local),
        Role::Replica => match view.leader_id {
            Some(id) if id != view.node_id => address(id)
                .map(|url| Target::Primary { node: id, url })
                .ok_or(NoTarget::NoAddress(id)),
            _ => Err(NoTarget::NoPrimary),
        },
        Role::Electing | Role::Witness => Err(NoTarget::NoPrimary),
    }
}

#[cfg(test)]
mod tests {
    use litefs_py_fuse::Primary;

    use super::*;

    fn view(primary: Primary, leader: Option<NodeId>) -> ClusterView {
        ClusterView {
            node_id: 2,
            primary,
            leader_id: leader,
            ..ClusterView::single_node("node-2")
        }
    }

    fn url(id: NodeId) -> Option<String> {
        (id != 9).then(|| format!("http://node-{id}:8080"))
    }

    #[test]
    fn unsafe_requests_go_to_the_primary_or_wait() {
        assert_eq!(
            unsafe_target(&view(Primary::ThisNode, Some(2)), url),
            Ok(Target::Local)
        );
        let other = |id| Primary::Other {
            hostname: format!("node-{id}"),
        };
        assert_eq!(
            unsafe_target(&view(other(1), Some(1)), url),
            Ok(Target::Primary {
                node: 1,
                url: "http://node-1:8080".into()
            })
        );
        assert_eq!(
            unsafe_target(&view(other(9), Some(9)), url),
            Err(NoTarget::NoAddress(9))
        );
        assert_eq!(
            unsafe_target(&view(Primary::Unknown, Some(1)), url),
            Err(NoTarget::NoPrimary)
        );
        // A replica whose view names no leader, or itself, has no one to forward to.
        assert_eq!(
            unsafe_target(&view(other(1), None), url),
            Err(NoTarget::NoPrimary)
        );
        assert_eq!(
            unsafe_target(&view(other(2), Some(2)), url),
            Err(NoTarget::NoPrimary)
        );
    }

    #[test]
    fn safe_methods() {
        use axum::http::Method;
        for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE] {
            assert!(is_safe(&m), "{m}");
        }
        for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(!is_safe(&m), "{m}");
        }
        assert!(!is_safe(&Method::from_bytes(b"PROPFIND").unwrap()));
    }
}
