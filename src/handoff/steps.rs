//! The handoff run on the leader, as its named steps: [`check`], [`halt`],
//! [`wait_caught_up`], [`fence`] and [`wait_demoted`], [`recheck_late_writes`], [`record`],
//! [`transfer`], [`confirm`]. Each failure before the record undoes what was taken through the
//! [`Rollback`] guard, in one place ([`handoff_here`]).

use std::time::{Duration, Instant};

use openraft::ServerState;

use super::plan::{self, HALT_LOCK_TTL, Member, PlanError, catch_up_allowance, lagging, moved};
use super::rollback::Rollback;
use super::{Handoff, HandoffError, HandoffOutcome, HandoffRequest, Local, Step};
use crate::lease::records::{HANDOFF_KEY, HandoffRecord};
use crate::litefs::positions::Positions;
use crate::litefs::report::{LocalReport, REPORT_PATH};
use crate::poll::poll_until;
use crate::raft::{NodeId, RaftNode, Request};

/// How long the target may take to replicate up to the halted positions.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);
/// After the fence, LiteFS demotes at its next renewal (every ttl/2); this much on top.
const DEMOTE_SLACK: Duration = Duration::from_secs(2);
/// After demotion, how long the target may take to show what committed after it was checked
/// (LiteFS cut its streams at demotion: what it has not got by then, it does not get).
const RECHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the target's LiteFS may take to become primary once its node leads.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(10);
/// One call to the target's report route.
const REPORT_TIMEOUT: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(20);

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// The node handed to, as step 1 chose it.
struct Target {
    id: NodeId,
    raft_addr: String,
    hostname: String,
}

/// How long each step took, for the outcome.
struct Steps {
    done: Vec<Step>,
    since: Instant,
}

impl Steps {
    fn start() -> Steps {
        Steps {
            done: Vec::new(),
            since: Instant::now(),
        }
    }

    fn done(&mut self, what: &str) {
        self.done.push(Step {
            what: what.into(),
            ms: ms(self.since.elapsed()),
        });
        self.since = Instant::now();
    }
}

/// The whole handoff, on the leader.
pub(super) async fn handoff_here(
    h: &Handoff,
    req: HandoffRequest,
) -> Result<HandoffOutcome, HandoffError> {
    let started = Instant::now();
    let node = &*h.raft;
    let me = node.settings.id;
    let local = h.local.as_ref().ok_or_else(|| {
        HandoffError::Refused(format!(
            "the leader (node {me}) runs no LiteFS of its own (not `litefs-py run`): there is no LiteFS primary to hand off"
        ))
    })?;
    let Some(_busy) = local.claim() else {
        return Err(HandoffError::Refused(
            "a handoff is already in progress on the leader".into(),
        ));
    };

    // 1. The target, and whether a handoff can fit in LiteFS's HALT lock time.
    let (target, demote_timeout) = check(node, local, req).await?;
    let mut steps = Steps::start();
    steps.done("checks");

    // 2.-4. Halt, catch up, fence and demote: undone on any failure.
    let mut undo = Rollback::new(&local.litefs, &local.lease);
    let demoted = async {
        let halted_at = Instant::now();
        let mut primary = halt(local, &mut undo).await?;
        steps.done("halt");
        wait_caught_up(node, &target, &primary, halted_at, demote_timeout).await?;
        steps.done("target caught up");
        let term = fence(local, &mut undo)?;
        wait_demoted(local, term, demote_timeout).await?;
        steps.done("old primary demoted");
        let late = recheck_late_writes(node, local, &target, &primary).await?;
        if !late.is_empty() {
            primary.extend(late);
            steps.done("late writes checked");
        }
        Ok::<_, HandoffError>((term, primary))
    }
    .await;
    let (term, primary) = match demoted {
        Ok(done) => done,
        Err(e) => {
            undo.rollback().await;
            return Err(e);
        }
    };

    // 5. The record that lets the next term grant at once; then LiteFS may replicate again.
    record(local, term, me, target.id).await;
    undo.keep_fence().await;
    steps.done("recorded");

    // 6. Leadership to the target, and its LiteFS primary.
    let transferred = transfer(node, local, target.id, term).await;
    steps.done("leadership transferred");
    transferred?;
    confirm(node, &target).await?;
    steps.done("new primary");
    let elapsed = started.elapsed();
    let to = target.id;
    tracing::info!(to, ?elapsed, "handoff complete");
    Ok(HandoffOutcome {
        message: format!(
            "node {to} ({}) is the leader and the LiteFS primary; handed off from node {me} in {} ms",
            target.hostname,
            ms(elapsed)
        ),
        from: me,
        to,
        positions: primary
            .iter()
            .map(|(db, p)| (db.clone(), p.to_string()))
            .collect(),
        steps: steps.done,
        elapsed_ms: ms(elapsed),
    })
}

/// Step 1: this node still leads, its LiteFS is primary and its lease API past its wait; the
/// target is a fit data voter running LiteFS of its own; the lease TTL leaves time for a
/// handoff inside LiteFS's HALT lock time. Returns the target and how long demotion may take.
async fn check(
    node: &RaftNode,
    local: &Local,
    req: HandoffRequest,
) -> Result<(Target, Duration), HandoffError> {
    let me = node.settings.id;
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
    let mut refused = Vec::new();
    let mut chosen = None;
    for to in plan::candidates(me, req.to, &members, m.last_log_index)? {
        let target_node = membership.get_node(&to).ok_or(PlanError::Unknown(to))?;
        let target = Target {
            id: to,
            raft_addr: target_node.raft_addr.clone(),
            hostname: Some(target_node.hostname.clone())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| format!("node {to}")),
        };
        let report = match target_report(node, &target).await {
            Ok(r) => r,
            Err(e) if req.to.is_some() => return Err(e),
            Err(e) => {
                refused.push(e.to_string());
                continue;
            }
        };
        if report.is_primary.is_none() {
            refused.push(format!(
                "node {to} runs no LiteFS of its own (it is not started with `litefs-py run`)"
            ));
        } else if report.stopping {
            refused.push(format!("node {to} is stopping"));
        } else {
            chosen = Some(target);
            break;
        }
    }
    let Some(target) = chosen else {
        return Err(HandoffError::Refused(match req.to {
            Some(_) => refused.join("; "),
            None => format!("no other data voter can take over: {}", refused.join("; ")),
        }));
    };
    if !local.litefs.is_primary().await? {
        return Err(HandoffError::Refused(format!(
            "the local LiteFS (node {me}) is not primary yet: nothing to hand off; retry in a moment"
        )));
    }
    if local.lease.status().grant_in_ms != Some(0) {
        return Err(HandoffError::Refused(
            "this leader is still waiting out the previous primary's lease; retry in a few seconds"
                .into(),
        ));
    }
    // LiteFS drops a HALT lock 30 s after it was taken: the halts must hold until the old
    // primary has demoted, so the catch-up and the demotion must both fit in that time.
    let ttl = local.lease.params().ttl;
    let demote_timeout = ttl / 2 + DEMOTE_SLACK;
    if catch_up_allowance(Duration::ZERO, demote_timeout).is_none() {
        return Err(HandoffError::Refused(format!(
            "the lease TTL ({ttl:?}) is too long for a handoff: the old primary may take up to {demote_timeout:?} to demote, and LiteFS drops a HALT lock {HALT_LOCK_TTL:?} after it was taken"
        )));
    }
    Ok((target, demote_timeout))
}

/// Step 2: HALT every database; from here on nothing commits on the old primary (for
/// [`HALT_LOCK_TTL`] from the first halt). Returns the halted positions.
async fn halt(local: &Local, undo: &mut Rollback<'_>) -> Result<Positions, HandoffError> {
    let dbs: Vec<String> = local.litefs.positions().await?.into_keys().collect();
    for db in &dbs {
        local.litefs.halt(db, undo.lock_id()).await?;
        undo.halted(db.clone());
    }
    let mut primary = local.litefs.positions().await?;
    // A database created after the listing is not halted: it is not compared either (it has
    // no acknowledged write that the halted ones could order before).
    primary.retain(|db, _| dbs.contains(db));
    Ok(primary)
}

/// Step 3: the target has every acknowledged write, in time for the halts to outlive the
/// demotion.
async fn wait_caught_up(
    node: &RaftNode,
    target: &Target,
    primary: &Positions,
    halted_at: Instant,
    demote_timeout: Duration,
) -> Result<(), HandoffError> {
    let catch_up = catch_up_allowance(halted_at.elapsed(), demote_timeout)
        .unwrap_or_default()
        .min(CATCH_UP_TIMEOUT);
    poll_until(Instant::now() + catch_up, POLL, || {
        target_has(node, target, primary)
    })
    .await
    .map_err(|behind| HandoffError::Timeout {
        what: format!("node {}'s LiteFS catching up with the primary", target.id),
        timeout: catch_up,
        detail: format!(": {}", behind.join("; ")),
    })?;
    // The last report may have taken a while: the halts must still outlive the demotion.
    if catch_up_allowance(halted_at.elapsed(), demote_timeout).is_none() {
        return Err(HandoffError::Refused(format!(
            "the handoff took too long before demoting the primary ({:?} since the HALT; LiteFS drops a HALT lock after {HALT_LOCK_TTL:?}, and demotion may take up to {demote_timeout:?}); nothing was changed, retry",
            halted_at.elapsed()
        )));
    }
    Ok(())
}

/// Step 4: fence the lease; the local LiteFS demotes at its next renewal. Returns the fenced
/// term.
fn fence(local: &Local, undo: &mut Rollback<'_>) -> Result<u64, HandoffError> {
    let term = local.lease.fence().map_err(|why| {
        HandoffError::Refused(format!("cannot fence the lease: {}", why.as_str()))
    })?;
    undo.fenced();
    Ok(term)
}

/// Step 4, continued: the fenced lease has no holder left and the local LiteFS says it is not
/// primary.
async fn wait_demoted(local: &Local, term: u64, timeout: Duration) -> Result<(), HandoffError> {
    poll_until(Instant::now() + timeout, POLL, || async move {
        let demoted = local.lease.fenced_and_released(term)
            && !local.litefs.is_primary().await.unwrap_or(true);
        if demoted { Ok(()) } else { Err(()) }
    })
    .await
    .map_err(|()| HandoffError::Timeout {
        what: "the local LiteFS giving up the primary lease".into(),
        timeout,
        detail: " (it stays primary)".into(),
    })
}

/// Step 4, last: had a HALT lock expired anyway, writes may have committed after the target was
/// checked, and LiteFS cut replication at demotion: the target must have them, or no record.
/// Returns what moved (empty: nothing).
async fn recheck_late_writes(
    node: &RaftNode,
    local: &Local,
    target: &Target,
    primary: &Positions,
) -> Result<Positions, HandoffError> {
    let me = node.settings.id;
    let to = target.id;
    let after = local.litefs.positions().await.map_err(|e| {
        HandoffError::LiteFs(format!(
            "re-reading the positions after demotion: {e}; the handoff was abandoned and node {me} becomes primary again"
        ))
    })?;
    let late = moved(primary, &after);
    if late.is_empty() {
        return Ok(late);
    }
    tracing::warn!(?late, "handoff: the primary's positions moved while halted");
    poll_until(Instant::now() + RECHECK_TIMEOUT, POLL, || {
        target_has(node, target, &late)
    })
    .await
    .map_err(|behind| {
        HandoffError::Refused(format!(
            "writes committed on node {me} after node {to} was checked (a HALT lock expired?), and node {to} does not have them ({}); the handoff was abandoned and node {me} becomes primary again",
            behind.join("; ")
        ))
    })?;
    Ok(late)
}

/// Step 5: the record through raft. From here on it may be committed, whatever this write
/// returns.
async fn record(local: &Local, term: u64, from: NodeId, to: NodeId) {
    let record = HandoffRecord {
        released_term: term,
        from,
        to,
        fresher_moves: 0,
    };
    let recorded = local
        .lease
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
}

/// Step 6: raft leadership to the target. If it does not move, the handoff is abandoned
/// ([`abandon`]).
async fn transfer(
    node: &RaftNode,
    local: &Local,
    to: NodeId,
    term: u64,
) -> Result<(), HandoffError> {
    match node.transfer_leader(to, term).await {
        Ok(()) => Ok(()),
        Err(e) => Err(abandon(node, local, term, e.into()).await),
    }
}

/// Step 6, last: the target's LiteFS says it is primary.
async fn confirm(node: &RaftNode, target: &Target) -> Result<(), HandoffError> {
    let to = target.id;
    poll_until(Instant::now() + PROMOTE_TIMEOUT, POLL, || async move {
        match target_report(node, target).await {
            Ok(LocalReport {
                is_primary: Some(true),
                ..
            }) => Ok(()),
            Ok(r) => Err(r.error.map(|e| format!("node {to}'s LiteFS: {e}"))),
            Err(e) => Err(Some(e.to_string())),
        }
    })
    .await
    .map_err(|last| HandoffError::Timeout {
        what: format!("node {to} leads the cluster, but its LiteFS becoming primary"),
        timeout: PROMOTE_TIMEOUT,
        detail: format!(
            "{}; it should still get there (see `litefs-py status`)",
            last.map_or_else(String::new, |e| format!(" (last: {e})"))
        ),
    })
}

/// Leadership did not move. The record write was attempted, so it may have committed: the
/// fence is lifted only if this node still leads the fenced term and a deletion of the record
/// commits. After `transfer_leader` openraft refuses this leader's writes for the rest of the
/// term, so that normally fails and the node stays fenced until the next election. Returns the
/// error to report.
async fn abandon(node: &RaftNode, local: &Local, term: u64, e: HandoffError) -> HandoffError {
    let me = node.settings.id;
    let m = node.metrics();
    if m.state != ServerState::Leader || m.current_term != term {
        // Someone else leads a later term: their lease API decides from here.
        return e;
    }
    let deleted = local
        .lease
        .write_record(Request::Delete {
            key: HANDOFF_KEY.into(),
        })
        .await;
    match deleted {
        Ok(_) => {
            local.lease.unfence();
            HandoffError::Refused(format!(
                "{e}; the leadership transfer failed, the handoff record was withdrawn and node {me} becomes primary again"
            ))
        }
        Err(w) => HandoffError::Refused(format!(
            "{e}; the leadership transfer failed: node {me} stays fenced (no LiteFS primary) for term {term} (withdrawing the handoff record: {w}); a new election is due within the election timeout, and its leader grants the primary lease"
        )),
    }
}

async fn target_report(node: &RaftNode, target: &Target) -> Result<LocalReport, HandoffError> {
    let to = target.id;
    node.transport
        .call::<(), LocalReport>(to, &target.raft_addr, REPORT_PATH, None, REPORT_TIMEOUT)
        .await
        .map_err(|e| HandoffError::Peer(format!("node {to}: {e}")))
}

/// `Ok` once the target has exactly `want`; else what it still lacks (one line per database,
/// with the target's own error if it reported one).
async fn target_has(node: &RaftNode, target: &Target, want: &Positions) -> Result<(), Vec<String>> {
    let behind: Vec<String> = match target_report(node, target).await {
        Ok(r) => lagging(want, &r.positions)
            .into_iter()
            .map(|l| r.with_error(l))
            .collect(),
        Err(e) => vec![e.to_string()],
    };
    if behind.is_empty() {
        Ok(())
    } else {
        Err(behind)
    }
}
