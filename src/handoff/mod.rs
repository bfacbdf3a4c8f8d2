//! `litefs-py handoff`: moves raft leadership and the LiteFS primary together, with no
//! acknowledged write lost. Runs on the leader (any node forwards the request there):
//!
//! 1. Choose and check the target ([`plan::choose_target`]): a data voter, caught up in raft,
//!    running LiteFS under `litefs-py run` (it answers [`paths::LITEFS_REPORT`]).
//! 2. HALT every database on the local LiteFS (its write lock: commits stop, local writers wait,
//!    every commit acknowledged so far is in the position it answers with).
//! 3. Wait until the target's LiteFS has exactly those positions (`<db>-pos`): it has every
//!    acknowledged write. (Demoting first would be wrong: LiteFS cuts its replication streams
//!    the instant it stops being primary.)
//! 4. Fence the lease ([`crate::lease::LeaseService::fence`]): the local LiteFS's next renewal
//!    is 404 and it demotes; wait until it says `isPrimary: false`. LiteFS drops a HALT lock
//!    30 s after it was taken, so steps 2-4 must fit in that (with a margin), or the handoff is
//!    refused before the fence; after demotion the local positions are read again, and anything
//!    that committed after step 3 must be on the target too, or no record is written.
//! 5. Record through raft that this term ended with no primary ([`HandoffRecord`]), release the
//!    HALT locks (LiteFS is a replica now and must apply what the new primary sends).
//! 6. Transfer raft leadership to the target; its lease API may grant in the next term at once
//!    (the waiver, `crate::lease::handoff`), and its LiteFS becomes primary.
//!
//! Any failure before step 4 undoes the halts; before step 5 also the fence. From step 5 on the
//! fence stays: a lifted fence with a live record could let the next term skip its wait while
//! this node's LiteFS is primary again, and once the record write was attempted it may have
//! committed (even one that failed or timed out). So the fence is lifted only once a deletion of
//! the record is known committed. After `transfer_leader`, openraft refuses client writes from
//! this leader for the rest of its term: if leadership does not move, the deletion fails, this
//! node stays fenced (no primary) for term `t`, and the next election (due within the election
//! timeout) ends it.

pub mod freshest;
pub mod litefs_api;
pub mod plan;

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use openraft::ServerState;
use serde::{Deserialize, Serialize};

use self::litefs_api::LiteFsApi;
use self::plan::{HALT_LOCK_TTL, Member, PlanError, Positions, catch_up_allowance, lagging, moved};
use crate::lease::LeaseService;
use crate::lease::handoff::{HANDOFF_KEY, HandoffRecord};
use crate::lease::raft_facts::NodeFacts;
use crate::raft::network::{CallError, paths};
use crate::raft::{NodeId, RaftNode, Request};

/// How long the target may take to replicate up to the halted positions.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);
/// After the fence, LiteFS demotes at its next renewal (every ttl/2); this much on top.
const DEMOTE_SLACK: Duration = Duration::from_secs(2);
/// After demotion, how long the target may take to show what committed after it was checked
/// (LiteFS cut its streams at demotion: what it has not got by then, it does not get).
const RECHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the raft leadership transfer may take (one retry halfway).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(6);
/// How long the target's LiteFS may take to become primary once its node leads.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(10);
/// One call to the target's report route.
const REPORT_TIMEOUT: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(20);
/// What a forwarded request may take in all.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(90);

/// What the local node's LiteFS handoff needs, installed by `litefs-py run`'s daemon.
pub struct Local {
    pub litefs: LiteFsApi,
    /// Weak: the service holds the node, which holds this.
    pub lease: Weak<LeaseService<NodeFacts>>,
    pub ttl: Duration,
    /// A handoff is running on this node: a second one is refused.
    pub busy: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HandoffRequest {
    /// The node to hand to; `None`: the fittest data voter.
    pub to: Option<NodeId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub what: String,
    pub ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandoffOutcome {
    pub message: String,
    pub from: NodeId,
    pub to: NodeId,
    /// Database -> position handed over (what the new primary starts from).
    pub positions: BTreeMap<String, String>,
    pub steps: Vec<Step>,
    pub elapsed_ms: u64,
}

impl IntoResponse for HandoffOutcome {
    fn into_response(self) -> Response {
        axum::Json(self).into_response()
    }
}

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
}

impl LocalReport {
    /// `what`, with the target's own error if it had one.
    fn with_error(&self, what: String) -> String {
        match &self.error {
            Some(e) => format!("{what} ({e})"),
            None => what,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("no leader is known right now; retry in a moment")]
    NoLeader,
    #[error("{0}")]
    Refused(String),
    #[error("LiteFS: {0}")]
    LiteFs(String),
    #[error("{0}")]
    Peer(String),
    #[error("{0}")]
    Internal(String),
    #[error("{what} did not happen within {timeout:?}{detail}")]
    Timeout {
        what: String,
        timeout: Duration,
        detail: String,
    },
}

impl HandoffError {
    fn status(&self) -> StatusCode {
        match self {
            HandoffError::Plan(PlanError::Unknown(_)) => StatusCode::NOT_FOUND,
            HandoffError::Plan(_) | HandoffError::Refused(_) => StatusCode::CONFLICT,
            HandoffError::NoLeader => StatusCode::SERVICE_UNAVAILABLE,
            HandoffError::LiteFs(_) | HandoffError::Peer(_) => StatusCode::BAD_GATEWAY,
            HandoffError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            HandoffError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for HandoffError {
    fn into_response(self) -> Response {
        (self.status(), format!("{self}\n")).into_response()
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// This node's LiteFS report (the target side of step 3).
pub async fn report(node: &RaftNode) -> LocalReport {
    let Some(local) = node.handoff.get() else {
        return LocalReport {
            is_primary: None,
            positions: Positions::new(),
            error: None,
        };
    };
    let (primary, positions) = tokio::join!(local.litefs.is_primary(), local.litefs.positions());
    let errors: Vec<String> = [primary.as_ref().err(), positions.as_ref().err()]
        .into_iter()
        .flatten()
        .map(ToString::to_string)
        .collect();
    LocalReport {
        // LiteFS not answering counts as "not primary": the caller keeps polling.
        is_primary: Some(primary.unwrap_or(false)),
        positions: positions.unwrap_or_default(),
        error: (!errors.is_empty()).then(|| errors.join("; ")),
    }
}

/// `handoff` on any node: here if this node leads, else forwarded to the leader.
pub async fn handoff(
    node: &Arc<RaftNode>,
    req: HandoffRequest,
) -> Result<HandoffOutcome, HandoffError> {
    let m = node.metrics();
    let leader = m.current_leader.ok_or(HandoffError::NoLeader)?;
    if leader == node.settings.id && m.state == ServerState::Leader {
        // On a task of its own: a client that goes away (Ctrl-C, its timeout) drops this
        // request's future, and a handoff stopped halfway would leave HALT locks or the fence.
        let node = node.clone();
        return tokio::spawn(async move { handoff_here(&node, req).await })
            .await
            .unwrap_or_else(|e| {
                Err(HandoffError::Internal(format!(
                    "the handoff task failed: {e}; see the leader's log and `litefs-py status`"
                )))
            });
    }
    let addr = m
        .membership_config
        .membership()
        .get_node(&leader)
        .map(|n| n.raft_addr.clone())
        .ok_or(HandoffError::NoLeader)?;
    node.transport
        .call(
            leader,
            &addr,
            paths::ADMIN_HANDOFF,
            Some(&req),
            FORWARD_TIMEOUT,
        )
        .await
        .map_err(|e| match e {
            CallError::Http { status, body, .. } if status != 503 || !body.is_empty() => {
                HandoffError::Peer(format!("the leader (node {leader}): {}", body.trim()))
            }
            other => {
                HandoffError::Peer(format!("forwarding to the leader (node {leader}): {other}"))
            }
        })
}

async fn target_report(
    node: &RaftNode,
    to: NodeId,
    addr: &str,
) -> Result<LocalReport, HandoffError> {
    node.transport
        .call::<(), LocalReport>(to, addr, paths::LITEFS_REPORT, None, REPORT_TIMEOUT)
        .await
        .map_err(|e| HandoffError::Peer(format!("node {to}: {e}")))
}

/// What the target still lacks of `want` (one line per database, with the target's own error
/// if it reported one); empty once it has caught up.
async fn target_behind(node: &RaftNode, to: NodeId, addr: &str, want: &Positions) -> Vec<String> {
    match target_report(node, to, addr).await {
        Ok(r) => lagging(want, &r.positions)
            .into_iter()
            .map(|l| r.with_error(l))
            .collect(),
        Err(e) => vec![e.to_string()],
    }
}

/// The halts taken so far, released on every way out of the handoff.
struct Halts<'a> {
    api: &'a LiteFsApi,
    id: i64,
    dbs: Vec<String>,
}

impl Halts<'_> {
    async fn release(&mut self) {
        for db in self.dbs.drain(..) {
            if let Err(e) = self.api.unhalt(&db, self.id).await {
                // LiteFS drops a HALT lock 30 s after it was taken anyway.
                tracing::warn!(db, "handoff: releasing the HALT lock: {e}");
            }
        }
    }
}

fn lock_id() -> i64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as i64);
    ((nanos ^ (i64::from(std::process::id()) << 40)) & i64::MAX).max(1)
}

async fn handoff_here(
    node: &Arc<RaftNode>,
    req: HandoffRequest,
) -> Result<HandoffOutcome, HandoffError> {
    let started = Instant::now();
    let mut steps = Vec::new();
    let mut step = |what: &str, since: &mut Instant| {
        steps.push(Step {
            what: what.into(),
            ms: ms(since.elapsed()),
        });
        *since = Instant::now();
    };
    let me = node.settings.id;
    let local = node.handoff.get().ok_or_else(|| {
        HandoffError::Refused(format!(
            "the leader (node {me}) runs no LiteFS of its own (not `litefs-py run`): there is no LiteFS primary to hand off"
        ))
    })?;
    let lease = local
        .lease
        .upgrade()
        .ok_or_else(|| HandoffError::Refused("the lease API is shutting down".into()))?;
    use std::sync::atomic::Ordering;
    if local.busy.swap(true, Ordering::AcqRel) {
        return Err(HandoffError::Refused(
            "a handoff is already in progress on the leader".into(),
        ));
    }
    struct Busy<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Busy<'_> {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Release);
        }
    }
    let _busy = Busy(&local.busy);

    // 1. The target.
    let m = node.metrics();
    if m.state != ServerState::Leader {
        return Err(HandoffError::Refused(
            "this node is no longer the leader; retry".into(),
        ));
    }
    let membership = m.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let members: Vec<Member> = membership
        .nodes()
        .map(|(id, _)| Member {
            id: *id,
            voter: voters.contains(id),
            witness: node.is_witness(*id),
            matched: m
                .replication
                .as_ref()
                .and_then(|r| r.get(id))
                .and_then(|l| l.as_ref().map(|l| l.index)),
        })
        .collect();
    let to = plan::choose_target(me, req.to, &members, m.last_log_index)?;
    let addr = membership
        .get_node(&to)
        .map(|n| n.raft_addr.clone())
        .ok_or(PlanError::Unknown(to))?;
    let report = target_report(node, to, &addr).await?;
    if report.is_primary.is_none() {
        return Err(HandoffError::Refused(format!(
            "node {to} runs no LiteFS of its own (it is not started with `litefs-py run`)"
        )));
    }
    if !local.litefs.is_primary().await? {
        return Err(HandoffError::Refused(format!(
            "the local LiteFS (node {me}) is not primary yet: nothing to hand off; retry in a moment"
        )));
    }
    if lease.status().grant_in_ms != Some(0) {
        return Err(HandoffError::Refused(
            "this leader is still waiting out the previous primary's lease; retry in a few seconds"
                .into(),
        ));
    }
    // LiteFS drops a HALT lock 30 s after it was taken: the halts must hold until the old
    // primary has demoted, so the catch-up and the demotion must both fit in that time.
    let demote_timeout = local.ttl / 2 + DEMOTE_SLACK;
    if catch_up_allowance(Duration::ZERO, demote_timeout).is_none() {
        return Err(HandoffError::Refused(format!(
            "the lease TTL ({:?}) is too long for a handoff: the old primary may take up to {demote_timeout:?} to demote, and LiteFS drops a HALT lock {HALT_LOCK_TTL:?} after it was taken",
            local.ttl
        )));
    }
    let mut t = Instant::now();
    step("checks", &mut t);

    // 2. HALT every database: from here on nothing commits on the old primary (for
    // HALT_LOCK_TTL from the first halt).
    let halted_at = Instant::now();
    let mut halts = Halts {
        api: &local.litefs,
        id: lock_id(),
        dbs: Vec::new(),
    };
    let dbs: Vec<String> = local.litefs.positions().await?.into_keys().collect();
    for db in &dbs {
        if let Err(e) = local.litefs.halt(db, halts.id).await {
            halts.release().await;
            return Err(e);
        }
        halts.dbs.push(db.clone());
    }
    let mut primary = match local.litefs.positions().await {
        Ok(p) => p,
        Err(e) => {
            halts.release().await;
            return Err(e);
        }
    };
    // A database created after the listing is not halted: it is not compared either (it has
    // no acknowledged write that the halted ones could order before).
    primary.retain(|db, _| dbs.contains(db));
    step("halt", &mut t);

    // 3. The target has every acknowledged write.
    let catch_up = catch_up_allowance(halted_at.elapsed(), demote_timeout)
        .unwrap_or_default()
        .min(CATCH_UP_TIMEOUT);
    let deadline = Instant::now() + catch_up;
    loop {
        let behind = target_behind(node, to, &addr, &primary).await;
        if behind.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            halts.release().await;
            return Err(HandoffError::Timeout {
                what: format!("node {to}'s LiteFS catching up with the primary"),
                timeout: catch_up,
                detail: format!(": {}", behind.join("; ")),
            });
        }
        tokio::time::sleep(POLL).await;
    }
    step("target caught up", &mut t);
    // The last report may have taken a while: the halts must still outlive the demotion.
    if catch_up_allowance(halted_at.elapsed(), demote_timeout).is_none() {
        halts.release().await;
        return Err(HandoffError::Refused(format!(
            "the handoff took too long before demoting the primary ({:?} since the HALT; LiteFS drops a HALT lock after {HALT_LOCK_TTL:?}, and demotion may take up to {demote_timeout:?}); nothing was changed, retry",
            halted_at.elapsed()
        )));
    }

    // 4. Fence the lease; the local LiteFS demotes at its next renewal.
    let term = match lease.fence() {
        Ok(term) => term,
        Err(why) => {
            halts.release().await;
            return Err(HandoffError::Refused(format!(
                "cannot fence the lease: {}",
                why.as_str()
            )));
        }
    };
    let deadline = Instant::now() + demote_timeout;
    loop {
        if lease.fenced_and_released(term) && !local.litefs.is_primary().await.unwrap_or(true) {
            break;
        }
        if Instant::now() >= deadline {
            lease.unfence();
            halts.release().await;
            return Err(HandoffError::Timeout {
                what: "the local LiteFS giving up the primary lease".into(),
                timeout: demote_timeout,
                detail: " (it stays primary)".into(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
    step("old primary demoted", &mut t);

    // Had a HALT lock expired anyway, writes may have committed after the target was checked,
    // and LiteFS cut replication at demotion: the target must have them, or no record.
    let after = match local.litefs.positions().await {
        Ok(p) => p,
        Err(e) => {
            lease.unfence();
            halts.release().await;
            return Err(HandoffError::LiteFs(format!(
                "re-reading the positions after demotion: {e}; the handoff was abandoned and node {me} becomes primary again"
            )));
        }
    };
    let late = moved(&primary, &after);
    if !late.is_empty() {
        tracing::warn!(?late, "handoff: the primary's positions moved while halted");
        let deadline = Instant::now() + RECHECK_TIMEOUT;
        loop {
            let behind = target_behind(node, to, &addr, &late).await;
            if behind.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                lease.unfence();
                halts.release().await;
                return Err(HandoffError::Refused(format!(
                    "writes committed on node {me} after node {to} was checked (a HALT lock expired?), and node {to} does not have them ({}); the handoff was abandoned and node {me} becomes primary again",
                    behind.join("; ")
                )));
            }
            tokio::time::sleep(POLL).await;
        }
        primary.extend(late);
        step("late writes checked", &mut t);
    }

    // 5. The record that lets the next term grant at once; then LiteFS may replicate again.
    let record = HandoffRecord {
        released_term: term,
        from: me,
        to,
        fresher_moves: 0,
    };
    // From here on the record may be committed, whatever this call returns.
    let recorded = lease
        .write_record(Request::Set {
            key: HANDOFF_KEY.into(),
            value: serde_json::to_string(&record).expect("plain struct"),
        })
        .await;
    if let Err(e) = &recorded {
        // Fenced for the rest of the term either way; without the record the next leader just
        // waits out the lease as after a failure.
        tracing::warn!(
            "handoff: writing the record: {e}; it may still commit (else the new leader waits out the lease)"
        );
    }
    halts.release().await;
    step("recorded", &mut t);

    // 6. Leadership to the target.
    let transferred = transfer(node, to, term).await;
    step("leadership transferred", &mut t);
    if let Err(e) = transferred {
        return Err(abandon(node, &lease, term, e).await);
    }
    let deadline = Instant::now() + PROMOTE_TIMEOUT;
    loop {
        let last = match target_report(node, to, &addr).await {
            Ok(LocalReport {
                is_primary: Some(true),
                ..
            }) => break,
            Ok(r) => r.error.map(|e| format!("node {to}'s LiteFS: {e}")),
            Err(e) => Some(e.to_string()),
        };
        if Instant::now() >= deadline {
            return Err(HandoffError::Timeout {
                what: format!("node {to} leads the cluster, but its LiteFS becoming primary"),
                timeout: PROMOTE_TIMEOUT,
                detail: format!(
                    "{}; it should still get there (see `litefs-py status`)",
                    last.map_or_else(String::new, |e| format!(" (last: {e})"))
                ),
            });
        }
        tokio::time::sleep(POLL).await;
    }
    step("new primary", &mut t);
    let hostname = membership
        .get_node(&to)
        .map(|n| n.hostname.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("node {to}"));
    let elapsed = started.elapsed();
    tracing::info!(to, ?elapsed, "handoff complete");
    Ok(HandoffOutcome {
        message: format!(
            "node {to} ({hostname}) is the leader and the LiteFS primary; handed off from node {me} in {} ms",
            ms(elapsed)
        ),
        from: me,
        to,
        positions: primary
            .iter()
            .map(|(db, p)| (db.clone(), p.to_string()))
            .collect(),
        steps,
        elapsed_ms: ms(elapsed),
    })
}

/// Asks openraft to hand leadership to `to` and waits until `to` leads a later term.
pub(crate) async fn transfer(node: &RaftNode, to: NodeId, term: u64) -> Result<(), HandoffError> {
    let deadline = Instant::now() + TRANSFER_TIMEOUT;
    let mut retried = false;
    node.raft
        .trigger()
        .transfer_leader(to)
        .await
        .map_err(|e| HandoffError::Refused(format!("raft: {e}")))?;
    loop {
        let m = node.metrics();
        if m.current_leader == Some(to) && m.current_term > term {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HandoffError::Timeout {
                what: format!("raft leadership moving to node {to}"),
                timeout: TRANSFER_TIMEOUT,
                detail: format!(
                    " (leader now: {})",
                    m.current_leader
                        .map_or("none".into(), |l| format!("node {l}"))
                ),
            });
        }
        if !retried && left < TRANSFER_TIMEOUT / 2 && m.state == ServerState::Leader {
            retried = true;
            let _ = node.raft.trigger().transfer_leader(to).await;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Leadership did not move. The record write was attempted, so it may have committed: the
/// fence is lifted only if this node still leads the fenced term and a deletion of the record
/// commits. After `transfer_leader` openraft refuses this leader's writes for the rest of the
/// term, so that normally fails and the node stays fenced until the next election. Returns the
/// error to report.
async fn abandon(
    node: &RaftNode,
    lease: &LeaseService<NodeFacts>,
    term: u64,
    e: HandoffError,
) -> HandoffError {
    let me = node.settings.id;
    let m = node.metrics();
    if m.state != ServerState::Leader || m.current_term != term {
        // Someone else leads a later term: their lease API decides from here.
        return e;
    }
    let deleted = lease
        .write_record(Request::Delete {
            key: HANDOFF_KEY.into(),
        })
        .await;
    match deleted {
        Ok(_) => {
            lease.unfence();
            HandoffError::Refused(format!(
                "{e}; the leadership transfer failed, the handoff record was withdrawn and node {me} becomes primary again"
            ))
        }
        Err(w) => HandoffError::Refused(format!(
            "{e}; the leadership transfer failed: node {me} stays fenced (no LiteFS primary) for term {term} (withdrawing the handoff record: {w}); a new election is due within the election timeout, and its leader grants the primary lease"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicked_handoff_is_a_500_and_a_report_carries_its_error() {
        assert_eq!(
            HandoffError::Internal("the handoff task failed".into()).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let r = LocalReport {
            is_primary: Some(false),
            positions: Positions::new(),
            error: Some("LiteFS: connection refused".into()),
        };
        assert_eq!(
            r.with_error("app.db: missing".into()),
            "app.db: missing (LiteFS: connection refused)"
        );
        // An older node's report (no `error`) still parses.
        let old: LocalReport =
            serde_json::from_str(r#"{"is_primary":true,"positions":{}}"#).unwrap();
        assert!(old.error.is_none());
    }
}
