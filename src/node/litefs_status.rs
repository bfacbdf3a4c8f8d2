//! The LiteFS part of `GET /status?litefs=true` (what `litefs-py status` shows): every member's
//! LiteFS positions and each database's lag against the primary's position.
//!
//! Each member is asked what the handoff and the freshest-node check ask it (`GET /raft/litefs`
//! on its raft address, behind the cluster secret; this node answers for itself), all at once,
//! each within [`ASK_WITHIN`]: a member that is down, stopped or cut off costs the status call
//! that bound and shows as unknown with the reason, never a hang. A witness is not asked: it
//! runs no LiteFS. See docs/operations.md, "Status".

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::handoff::Handoff;
use crate::litefs::lag::{DbPosition, against};
use crate::litefs::positions::Positions;
use crate::litefs::report::{LocalReport, REPORT_PATH};
use crate::raft::network::CallError;
use crate::raft::{NodeId, RaftNode};

/// How long the status call waits for any one member's LiteFS report (its own included).
pub const ASK_WITHIN: Duration = Duration::from_secs(1);
/// The backstop over a peer call, past the transport's own [`ASK_WITHIN`].
const BACKSTOP_MARGIN: Duration = Duration::from_millis(500);

/// One member's LiteFS in `/status` (`members[].litefs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MemberLiteFs {
    /// It runs no LiteFS of its own: a witness, or a `litefs-py mount` node.
    None,
    /// Its positions are not known: it did not answer within the bound, could not be reached,
    /// or its LiteFS did not answer it. `reason` says which.
    Unknown { reason: String },
    /// Its LiteFS answered: whether it is primary, and every database's position and lag.
    Known {
        is_primary: bool,
        databases: BTreeMap<String, DbPosition>,
    },
}

/// The cluster-wide part (`litefs` in `/status`): whose positions the lags count from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiteFsSummary {
    /// The member whose LiteFS says it is primary.
    pub primary: Option<NodeId>,
    /// Why no lag is known (no LiteFS that answered says it is primary); `None` when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_unknown: Option<String>,
    /// How long each member was given to answer.
    pub asked_within_ms: u64,
}

/// What asking one member gave: its report, or why there is none.
pub type Asked = Result<LocalReport, String>;

/// Every member's LiteFS against the primary's positions. Pure: the reports are gathered by
/// [`gather`].
pub fn assemble(asked: BTreeMap<NodeId, Asked>) -> (LiteFsSummary, BTreeMap<NodeId, MemberLiteFs>) {
    // First what each member said, positions still raw.
    let said: BTreeMap<NodeId, Said> = asked
        .into_iter()
        .map(|(id, a)| (id, Said::from(a)))
        .collect();
    let primaries: Vec<NodeId> = said
        .iter()
        .filter(|(_, s)| {
            matches!(
                s,
                Said::Known {
                    is_primary: true,
                    ..
                }
            )
        })
        .map(|(id, _)| *id)
        .collect();
    let (primary, lag_unknown) = match primaries.as_slice() {
        [one] => (Some(*one), None),
        [] => {
            let unknown: Vec<String> = said
                .iter()
                .filter_map(|(id, s)| match s {
                    Said::Unknown(why) => Some(format!("node {id}: {why}")),
                    _ => None,
                })
                .collect();
            let why = if unknown.is_empty() {
                "no LiteFS says it is primary (an election or a handoff under way?)".to_string()
            } else {
                format!(
                    "no LiteFS that answered says it is primary; not known: {}",
                    unknown.join("; ")
                )
            };
            (None, Some(why))
        }
        many => {
            let ids: Vec<String> = many.iter().map(|id| format!("node {id}")).collect();
            (
                None,
                Some(format!(
                    "the LiteFS of {} all say they are primary",
                    ids.join(", ")
                )),
            )
        }
    };
    let primary_positions = primary.and_then(|p| match &said[&p] {
        Said::Known { positions, .. } => Some(positions.clone()),
        _ => None,
    });
    let members = said
        .into_iter()
        .map(|(id, s)| {
            let m = match s {
                Said::None => MemberLiteFs::None,
                Said::Unknown(reason) => MemberLiteFs::Unknown { reason },
                Said::Known {
                    is_primary,
                    positions,
                } => MemberLiteFs::Known {
                    is_primary,
                    databases: against(primary_positions.as_ref(), &positions),
                },
            };
            (id, m)
        })
        .collect();
    let summary = LiteFsSummary {
        primary,
        lag_unknown,
        asked_within_ms: ASK_WITHIN.as_millis() as u64,
    };
    (summary, members)
}

enum Said {
    None,
    Unknown(String),
    Known {
        is_primary: bool,
        positions: Positions,
    },
}

impl From<Asked> for Said {
    fn from(a: Asked) -> Said {
        match a {
            Err(why) => Said::Unknown(why),
            Ok(LocalReport {
                is_primary: None, ..
            }) => Said::None,
            // Its LiteFS did not answer it (`/info` or the `<db>-pos` files): its positions
            // or its role may be wrong.
            Ok(LocalReport { error: Some(e), .. }) => Said::Unknown(e),
            Ok(LocalReport {
                is_primary: Some(is_primary),
                positions,
                ..
            }) => Said::Known {
                is_primary,
                positions,
            },
        }
    }
}

/// Asks every member for its LiteFS report, at once, each within [`ASK_WITHIN`].
pub async fn gather(node: &RaftNode, handoff: &Handoff) -> BTreeMap<NodeId, Asked> {
    let me = node.settings.id;
    let members: Vec<(NodeId, String)> = node
        .metrics()
        .membership_config
        .membership()
        .nodes()
        .map(|(id, m)| (*id, m.raft_addr.clone()))
        .collect();
    let asks = members.into_iter().map(|(id, addr)| async move {
        let answer = if node.is_witness(id) {
            Ok(LocalReport::none())
        } else if id == me {
            // Bounded here: a hung LiteFS mount can hold the `<db>-pos` reads for 2 s.
            tokio::time::timeout(ASK_WITHIN, handoff.report())
                .await
                .map_err(|_| format!("this node's LiteFS did not report within {ASK_WITHIN:?}"))
        } else {
            let call =
                node.transport
                    .call::<(), LocalReport>(id, &addr, REPORT_PATH, None, ASK_WITHIN);
            // The transport bounds its call and says so with the address; this is a backstop
            // only, a little later so that the transport's own answer wins the race.
            tokio::time::timeout(ASK_WITHIN + BACKSTOP_MARGIN, call)
                .await
                .unwrap_or_else(|_| {
                    Err(CallError::Timeout {
                        addr: addr.clone(),
                        timeout: ASK_WITHIN,
                    })
                })
                .map_err(|e| e.to_string())
        };
        (id, answer)
    });
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::litefs::positions::Pos;

    fn report(is_primary: Option<bool>, dbs: &[(&str, u64)], error: Option<&str>) -> Asked {
        Ok(LocalReport {
            is_primary,
            positions: dbs
                .iter()
                .map(|(db, txid)| {
                    (
                        db.to_string(),
                        Pos {
                            txid: *txid,
                            checksum: 1,
                        },
                    )
                })
                .collect(),
            error: error.map(String::from),
            stopping: false,
        })
    }

    fn lags(m: &MemberLiteFs) -> Vec<(String, Option<u64>, Option<i64>)> {
        match m {
            MemberLiteFs::Known { databases, .. } => databases
                .iter()
                .map(|(db, p)| (db.clone(), p.txid, p.lag))
                .collect(),
            other => panic!("not known: {other:?}"),
        }
    }

    #[test]
    fn every_member_against_the_primary() {
        let asked = BTreeMap::from([
            (1, report(Some(false), &[("app.db", 9)], None)),
            (2, report(Some(true), &[("app.db", 12)], None)),
            (3, Err("127.0.0.1:20303 did not answer within 1s".into())),
            (4, report(None, &[], None)),
            (
                5,
                report(Some(false), &[], Some("LiteFS: connection refused")),
            ),
        ]);
        let (summary, members) = assemble(asked);
        assert_eq!(summary.primary, Some(2));
        assert_eq!(summary.lag_unknown, None);
        assert_eq!(lags(&members[&1]), [("app.db".into(), Some(9), Some(3))]);
        assert_eq!(lags(&members[&2]), [("app.db".into(), Some(12), Some(0))]);
        assert_eq!(
            members[&3],
            MemberLiteFs::Unknown {
                reason: "127.0.0.1:20303 did not answer within 1s".into()
            }
        );
        assert_eq!(members[&4], MemberLiteFs::None);
        assert_eq!(
            members[&5],
            MemberLiteFs::Unknown {
                reason: "LiteFS: connection refused".into()
            }
        );
    }

    #[test]
    fn a_primary_that_cannot_be_asked_leaves_every_lag_unknown_and_says_why() {
        let asked = BTreeMap::from([
            (
                1,
                Err("cannot reach 127.0.0.1:20301: connection refused".into()),
            ),
            (2, report(Some(false), &[("app.db", 12)], None)),
        ]);
        let (summary, members) = assemble(asked);
        assert_eq!(summary.primary, None);
        assert_eq!(
            summary.lag_unknown.as_deref(),
            Some(
                "no LiteFS that answered says it is primary; not known: node 1: cannot reach 127.0.0.1:20301: connection refused"
            )
        );
        assert_eq!(lags(&members[&2]), [("app.db".into(), Some(12), None)]);
    }

    #[test]
    fn no_primary_or_two_primaries_is_said() {
        let (s, _) = assemble(BTreeMap::from([(1, report(Some(false), &[], None))]));
        assert!(s.lag_unknown.unwrap().starts_with("no LiteFS says"));
        let (s, _) = assemble(BTreeMap::from([
            (1, report(Some(true), &[], None)),
            (2, report(Some(true), &[], None)),
        ]));
        assert_eq!(s.primary, None);
        assert_eq!(
            s.lag_unknown.as_deref(),
            Some("the LiteFS of node 1, node 2 all say they are primary")
        );
    }

    #[test]
    fn the_json_is_tagged_by_state() {
        let (summary, members) = assemble(BTreeMap::from([
            (1, report(Some(true), &[("app.db", 3)], None)),
            (2, Err("no answer".into())),
            (3, report(None, &[], None)),
        ]));
        let json = serde_json::to_value(&members).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "1": {"state": "known", "is_primary": true, "databases": {
                    "app.db": {"txid": 3, "checksum": "0000000000000001", "lag": 0}}},
                "2": {"state": "unknown", "reason": "no answer"},
                "3": {"state": "none"},
            })
        );
        assert_eq!(
            serde_json::to_value(&summary).unwrap(),
            serde_json::json!({"primary": 1, "asked_within_ms": 1000})
        );
    }
}
