//! What a node tells its peers about its LiteFS: whether it is primary and its database
//! positions. A handing-off leader asks its target; a new leader asks every reachable data
//! voter before its first grant (see docs/architecture.md, "Handoff" and "Freshest node
//! first").

use serde::{Deserialize, Serialize};

use super::positions::Positions;

/// Where a node answers it, on `node.raft-addr` (behind the cluster secret).
pub const REPORT_PATH: &str = "/raft/litefs";

/// A node's LiteFS as `GET /raft/litefs` answers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalReport {
    /// `None`: this node runs no LiteFS of its own (`mount`, `witness`).
    pub is_primary: Option<bool>,
    pub positions: Positions,
    /// Why `is_primary` or `positions` may be wrong (LiteFS did not answer): for the caller's
    /// timeout message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// This node's `run` is stopping (a stop signal came): it must not be handed the primary.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopping: bool,
}

impl LocalReport {
    /// The report of a node that runs no LiteFS of its own.
    pub fn none() -> LocalReport {
        LocalReport {
            is_primary: None,
            positions: Positions::new(),
            error: None,
            stopping: false,
        }
    }

    /// `what`, with the reporting node's own error if it had one.
    pub fn with_error(&self, what: String) -> String {
        match &self.error {
            Some(e) => format!("{what} ({e})"),
            None => what,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_carries_its_error() {
        let r = LocalReport {
            is_primary: Some(false),
            positions: Positions::new(),
            error: Some("LiteFS: connection refused".into()),
            stopping: false,
        };
        assert_eq!(
            r.with_error("app.db: missing".into()),
            "app.db: missing (LiteFS: connection refused)"
        );
        // An older node's report (no `error`) still parses.
        let old: LocalReport =
            serde_json::from_str(r#"{"is_primary":true,"positions":{}}"#).unwrap();
        assert!(old.error.is_none());
        assert!(!old.stopping);
    }
}
