//! The rule for who says `primary`, `replica`, `electing` or `witness`: from raft's state (and,
//! under `litefs-py run`, the lease API's and LiteFS's) to what the virtual files say
//! (`.primary`, `.role`, `.health`). Its inputs are passed in: raft's metrics and peer book,
//! the replicated lease holder ([`Holder`]), the local LiteFS's hold and probe.
//!
//! The lease invariant (docs/architecture.md, "The lease invariant") lives here: this node says `primary` only while it is the
//! raft leader AND its last quorum acknowledgement is younger than the lease bound
//! ([`RaftTiming::lease_bound`]). openraft keeps a cut-off leader in the Leader state, so the
//! state alone would let a partitioned leader and its successor both say `primary`. Freshness is
//! a matter of time passing, so the view is re-evaluated on a short tick as well as on every raft
//! metrics change, and published whenever it differs from the last one.
//!
//! Under `litefs-py run` one more condition holds: the local LiteFS must hold the lease (the
//! lease API granted or renewed it, still valid), else the leader says `electing`; a follower
//! names the leader only once the replicated holder record says the leader's LiteFS holds it.
//! LiteFS's own state (mounted, serving, `.lag`) is merged into `.health`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use litefs_py_fuse::{ClusterView, LiteFsStatus, Primary, StateHandle};
use openraft::async_runtime::{Instant as _, WatchReceiver};
use openraft::{RaftMetrics, ServerState};
use tokio::sync::watch;

use crate::config::RaftTiming;
use crate::litefs::state::{LiteFsProbe, LiteFsState, LocalHold};
use crate::raft::peers::Peers;
use crate::raft::{NodeId, RaftNode, TypeConfig};

/// Who this node is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub id: NodeId,
    pub hostname: String,
    pub witness: bool,
}

/// What raft and the transport say right now, reduced to what the view depends on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Raft state is Leader and the leader is us.
    pub is_leader: bool,
    /// The leader raft believes in (possibly remembered from long ago).
    pub leader: Option<NodeId>,
    pub term: u64,
    /// Time since the last quorum acknowledgement (leaders only).
    pub quorum_ack_age: Option<Duration>,
    /// We are the only voter: our own ack is the quorum, always fresh.
    pub sole_voter: bool,
    /// We are a voter of the effective membership. A leader that has just appended its own
    /// removal keeps leading for a moment (and then hands over): it must not claim primary.
    pub is_voter: bool,
    /// The leader is a witness: it leads only until it has handed over, and is never primary.
    pub leader_is_witness: bool,
    /// Last AppendEntries from `leader` that we accepted.
    pub leader_contact: Option<Instant>,
    pub leader_hostname: Option<String>,
    /// Under `run` only (`None` under `mount`, where LiteFS is not ours).
    pub litefs: Option<LiteFsLease>,
}

/// Under `run`: what the lease API says about LiteFS, for [`compute`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiteFsLease {
    /// The local LiteFS holds the lease (granted or renewed here, still valid).
    pub local: Option<LocalHold>,
    /// The replicated holder record names the leader, written in the current term: the
    /// leader's LiteFS holds the lease.
    pub leader_holds: bool,
}

/// Who the replicated lease holder record names: the node whose LiteFS was granted the lease,
/// and in which term. The lease layer keeps that record and reads it for the publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub node_id: NodeId,
    pub term: u64,
}

/// Under `litefs-py run`: what the publisher follows besides raft.
pub struct RunInputs {
    /// The local LiteFS's hold (from the lease API) and its probe.
    pub litefs: LiteFsState,
    /// The replicated holder record, as applied on this node.
    pub holder: Box<dyn Fn() -> Option<Holder> + Send + Sync>,
}

/// Reads the metrics and the peer book.
pub fn observe(m: &RaftMetrics<TypeConfig>, me: NodeId, witness: bool, peers: &Peers) -> Observed {
    let membership = m.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let sole_voter = voters == [me];
    let leader_is_witness = m.current_leader.is_some_and(|l| {
        if l == me {
            witness
        } else {
            membership.get_node(&l).is_some_and(|n| n.witness) || peers.witness(l) == Some(true)
        }
    });
    let is_leader = m.state == ServerState::Leader && m.current_leader == Some(me);
    let other = m.current_leader.filter(|l| *l != me);
    let leader_hostname = m.current_leader.and_then(|l| {
        membership
            .get_node(&l)
            .map(|n| n.hostname.clone())
            .filter(|h| !h.is_empty())
            .or_else(|| peers.hostname(l))
    });
    Observed {
        is_leader,
        leader: m.current_leader,
        term: m.current_term,
        quorum_ack_age: m.last_quorum_acked.as_ref().map(|t| t.elapsed()),
        sole_voter,
        is_voter: voters.contains(&me),
        leader_is_witness,
        leader_contact: other.and_then(|l| peers.get(l)?.last_leader_append),
        leader_hostname,
        litefs: None,
    }
}

/// Adds what the lease API says about LiteFS to `o` (under `run`).
pub fn observe_litefs(o: &mut Observed, litefs: &LiteFsState, holder: Option<Holder>) {
    o.litefs = Some(LiteFsLease {
        local: litefs.hold(),
        leader_holds: holder.is_some_and(|h| h.term == o.term && o.leader == Some(h.node_id)),
    });
}

/// LiteFS's own state in `.health`: whether it is mounted and serving, and its replication lag
/// from its `.lag` file instead of raft's idea of it (under `run`, once probed).
pub fn merge_probe(view: &mut ClusterView, probe: Option<LiteFsProbe>) {
    if let Some(p) = probe {
        view.litefs = Some(LiteFsStatus {
            mounted: p.mounted,
            serving: p.serving,
            primary: p.is_primary,
        });
        view.lag_ms = p.lag_ms;
    }
}

/// The view for `o` at time `now`. Pure, so the rules are tested without a cluster.
pub fn compute(me: &Identity, timing: &RaftTiming, o: &Observed, now: Instant) -> ClusterView {
    let last_quorum_ack = o.quorum_ack_age.and_then(|age| now.checked_sub(age));
    let mut view = ClusterView {
        node_id: me.id,
        hostname: me.hostname.clone(),
        witness: me.witness,
        primary: Primary::Unknown,
        term: o.term,
        leader_id: o.leader,
        quorum_ok: false,
        last_quorum_ack: None,
        last_leader_contact: None,
        lag_ms: None,
        litefs: None,
        primary_until: None,
    };
    if o.is_leader {
        let fresh = o.sole_voter
            || o.quorum_ack_age
                .is_some_and(|age| age < timing.lease_bound());
        view.quorum_ok = fresh;
        view.last_quorum_ack = last_quorum_ack;
        view.lag_ms = Some(0);
        // Under `run`, raft's permission is not enough: LiteFS must have taken the lease too
        // (a new leader waits out the previous lease first, and LiteFS may be slow or dead).
        let litefs_holds = o
            .litefs
            .as_ref()
            .is_none_or(|l| l.local.is_some_and(|h| h.valid(o.term, now)));
        if fresh && o.is_voter && !o.leader_is_witness && litefs_holds {
            view.primary = Primary::ThisNode;
            // The answer carries its own end (docs/architecture.md, "Virtual files"): readers
            // see `electing` past it even if this publisher stalls and publishes nothing more.
            view.primary_until = expires(timing, o, now);
        }
        return view;
    }
    view.last_leader_contact = o.leader_contact;
    let heard_recently = o
        .leader_contact
        .is_some_and(|t| now.saturating_duration_since(t) < timing.leader_contact_window());
    if o.leader_is_witness {
        // Leadership is on its way to a data node; until then nobody is primary.
        view.quorum_ok = heard_recently;
        return view;
    }
    if let (Some(_), true, Some(hostname)) = (o.leader, heard_recently, &o.leader_hostname) {
        view.quorum_ok = true;
        // Under `run`, the leader is the primary once its LiteFS holds the lease (until then
        // LiteFS's replicas have no primary to follow either).
        if o.litefs.as_ref().is_none_or(|l| l.leader_holds) {
            view.primary = Primary::Other {
                hostname: hostname.clone(),
            };
        }
    }
    view
}

/// When the view computed from `o` stops being true by the passage of time alone (a leader's
/// lease runs out, a follower's leader contact gets too old). The publisher wakes up exactly
/// then, so `primary` ends at the lease bound and not up to one tick after it.
pub fn expires(timing: &RaftTiming, o: &Observed, now: Instant) -> Option<Instant> {
    if o.is_leader {
        // Under `run`, the local LiteFS's hold runs out on its own too.
        let hold = o
            .litefs
            .as_ref()
            .and_then(|l| l.local)
            .filter(|h| h.valid(o.term, now))
            .map(|h| h.until);
        let lease = if o.sole_voter {
            None
        } else {
            let ack = now.checked_sub(o.quorum_ack_age?)?;
            Some(ack + timing.lease_bound()).filter(|t| *t > now)
        };
        return match (lease, hold) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    o.leader_contact
        .map(|t| t + timing.leader_contact_window())
        .filter(|t| *t > now)
}

/// The view before raft has said anything: nobody is known to be primary.
pub fn initial(me: &Identity) -> ClusterView {
    compute(
        me,
        &RaftTiming::default(),
        &Observed::default(),
        Instant::now(),
    )
}

/// Publishes the view into `state` (what the FUSE shim serves) until `stop`. Also counts
/// leader changes for /metrics.
pub async fn publish(
    node: Arc<RaftNode>,
    state: StateHandle,
    run: Option<RunInputs>,
    mut stop: watch::Receiver<bool>,
) {
    let s = &node.settings;
    let me = Identity {
        id: s.id,
        hostname: s.hostname.clone(),
        witness: s.witness,
    };
    let timing = s.timing;
    let mut metrics = node.raft.metrics();
    let mut tick = tokio::time::interval(timing.publish_tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<ClusterView> = None;
    let mut last_leader: Option<NodeId> = None;
    let mut last_role = None;
    let mut expiry: Option<Instant> = None;
    let mut litefs_changes = run.as_ref().map(|r| r.litefs.subscribe());
    let mut no_cluster_id = StuckWatch::default();
    loop {
        let mut raft_gone = false;
        let wake = expiry.map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            changed = metrics.changed() => raft_gone = changed.is_err(),
            _ = tick.tick() => {}
            _ = async { tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)).await }, if wake.is_some() => {}
            _ = async { litefs_changes.as_mut().expect("checked").changed().await }, if litefs_changes.is_some() => {}
        }
        let mut observed = {
            let m = metrics.borrow_watched();
            if m.running_state.is_err() {
                raft_gone = true;
            }
            observe(&m, me.id, me.witness, &node.peers)
        };
        if let Some(run) = &run {
            observe_litefs(&mut observed, &run.litefs, (run.holder)());
        }
        let now = Instant::now();
        let mut view = if raft_gone {
            // A stopped raft knows nothing: never leave `primary` up behind it.
            compute(&me, &timing, &Observed::default(), now)
        } else {
            compute(&me, &timing, &observed, now)
        };
        if let Some(run) = &run {
            let probe = run.litefs.probe();
            merge_probe(&mut view, probe);
            // The leader's LiteFS never reached a primary, and the cluster has an id: LiteFS
            // will not take the lease, so no node can become primary (docs/operations.md,
            // "A new cluster whose first primary died early").
            let stuck = observed.is_leader
                && probe.is_some_and(|p| p.serving && !p.is_primary && !p.has_cluster_id)
                && node.state_machine.cluster_id().is_some();
            if no_cluster_id.stuck_long_enough(stuck, observed.term, now) {
                tracing::warn!(
                    term = observed.term,
                    "this node is the raft leader, but its LiteFS has no cluster id (it never \
                     reached a primary since its data dir was created), and LiteFS will not \
                     become primary without one: no primary until a node whose LiteFS has \
                     reached one is leader. Start the node that was primary again \
                     (docs/operations.md, \"A new cluster whose first primary died early\")"
                );
            }
        }
        expiry = expires(&timing, &observed, now);
        if let Some(l) = observed.leader
            && last_leader != Some(l)
        {
            last_leader = Some(l);
            node.peers.count_leader_change();
        }
        if last.as_ref() != Some(&view) {
            if last_role != Some(view.role()) {
                tracing::info!(
                    role = view.role().as_str(),
                    term = view.term,
                    leader = ?view.leader_id,
                    "cluster view"
                );
                last_role = Some(view.role());
            }
            state.publish(view.clone());
            last = Some(view);
        }
        if raft_gone {
            tracing::error!("raft stopped; this node shows no primary");
            break;
        }
    }
}

/// How long a condition must hold before [`StuckWatch`] says so: longer than an election and
/// the wait for the previous lease, so a leader that is about to take the lease is not named.
const STUCK_FOR: Duration = Duration::from_secs(15);

/// A condition that should pass, said once per raft term when it has held for [`STUCK_FOR`].
#[derive(Debug, Default)]
struct StuckWatch {
    since: Option<Instant>,
    said_in: Option<u64>,
}

impl StuckWatch {
    fn stuck_long_enough(&mut self, stuck: bool, term: u64, now: Instant) -> bool {
        if !stuck {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert(now);
        if now.duration_since(since) < STUCK_FOR || self.said_in == Some(term) {
            return false;
        }
        self.said_in = Some(term);
        true
    }
}

#[cfg(test)]
mod tests {
    use litefs_py_fuse::Role;

    use super::*;

    fn me() -> Identity {
        Identity {
            id: 1,
            hostname: "node-a".into(),
            witness: false,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_leader_is_primary_only_with_a_fresh_quorum_ack() {
        let t = RaftTiming::default();
        let now = Instant::now();
        let mut o = Observed {
            is_leader: true,
            is_voter: true,
            leader: Some(1),
            term: 3,
            quorum_ack_age: Some(ms(50)),
            ..Observed::default()
        };
        let v = compute(&me(), &t, &o, now);
        assert_eq!(v.primary, Primary::ThisNode);
        assert!(v.quorum_ok);
        assert_eq!(v.last_quorum_ack, Some(now - ms(50)));
        // The answer carries its end: the lease bound after the ack.
        assert_eq!(v.primary_until, Some(now - ms(50) + t.lease_bound()));
        // Cut off: openraft still says Leader, the ack ages past the bound.
        o.quorum_ack_age = Some(t.lease_bound());
        let v = compute(&me(), &t, &o, now);
        assert_eq!(v.role(), Role::Electing);
        assert!(!v.quorum_ok);
        assert_eq!(v.primary_until, None);
        // Just removed itself from the voters: leads a moment longer, but is not primary.
        o.quorum_ack_age = Some(ms(50));
        o.is_voter = false;
        assert_eq!(compute(&me(), &t, &o, now).primary, Primary::Unknown);
        o.is_voter = true;
        // Never acknowledged yet.
        o.quorum_ack_age = None;
        assert_eq!(compute(&me(), &t, &o, now).primary, Primary::Unknown);
        // Alone in the cluster: always fresh.
        o.sole_voter = true;
        let v = compute(&me(), &t, &o, now);
        assert_eq!(v.primary, Primary::ThisNode);
        assert_eq!(v.primary_until, None, "no time bound");
        assert_eq!(expires(&t, &o, now), None);
        // The publisher wakes exactly when the lease runs out.
        o.sole_voter = false;
        o.quorum_ack_age = Some(ms(50));
        assert_eq!(expires(&t, &o, now), Some(now - ms(50) + t.lease_bound()));
    }

    #[test]
    fn a_follower_names_a_leader_it_heard_from_recently() {
        let t = RaftTiming::default();
        let now = Instant::now();
        let mut o = Observed {
            leader: Some(2),
            term: 4,
            leader_contact: Some(now - ms(100)),
            leader_hostname: Some("node-b".into()),
            ..Observed::default()
        };
        let v = compute(&me(), &t, &o, now);
        assert_eq!(
            v.primary,
            Primary::Other {
                hostname: "node-b".into()
            }
        );
        assert_eq!(v.leader_id, Some(2));
        // Silent for longer than the window: a remembered leader is not a known primary.
        o.leader_contact = Some(now - t.leader_contact_window());
        assert_eq!(compute(&me(), &t, &o, now).primary, Primary::Unknown);
        // No contact at all, or no name for it.
        o.leader_contact = None;
        assert_eq!(compute(&me(), &t, &o, now).primary, Primary::Unknown);
        o.leader_contact = Some(now);
        o.leader_hostname = None;
        assert_eq!(compute(&me(), &t, &o, now).primary, Primary::Unknown);
        // A witness leading for a moment is never anyone's primary.
        o.leader_hostname = Some("witness".into());
        o.leader_is_witness = true;
        let v = compute(&me(), &t, &o, now);
        assert_eq!(v.primary, Primary::Unknown);
        assert!(v.quorum_ok);
    }

    #[test]
    fn under_run_the_leader_is_primary_only_while_its_litefs_holds_the_lease() {
        let t = RaftTiming::default();
        let now = Instant::now();
        let mut o = Observed {
            is_leader: true,
            is_voter: true,
            leader: Some(1),
            term: 3,
            quorum_ack_age: Some(ms(50)),
            litefs: Some(LiteFsLease::default()),
            ..Observed::default()
        };
        // Raft allows it, LiteFS has not taken the lease (yet): electing.
        let v = compute(&me(), &t, &o, now);
        assert_eq!(v.role(), Role::Electing);
        assert!(v.quorum_ok);
        let hold = LocalHold {
            term: 3,
            until: now + ms(1000),
        };
        o.litefs = Some(LiteFsLease {
            local: Some(hold),
            leader_holds: true,
        });
        assert_eq!(compute(&me(), &t, &o, now).primary, Primary::ThisNode);
        // The publisher wakes when either the quorum lease or the hold runs out first.
        assert_eq!(expires(&t, &o, now), Some(now - ms(50) + t.lease_bound()));
        o.sole_voter = true;
        assert_eq!(expires(&t, &o, now), Some(hold.until));
        // A hold runs out, and belongs to its term.
        assert_eq!(
            compute(&me(), &t, &o, hold.until).role(),
            Role::Electing,
            "expired hold"
        );
        o.term = 4;
        assert_eq!(compute(&me(), &t, &o, now).role(), Role::Electing);
        // Raft's condition still applies on its own.
        o.term = 3;
        o.sole_voter = false;
        o.quorum_ack_age = Some(t.lease_bound());
        assert_eq!(compute(&me(), &t, &o, now).role(), Role::Electing);
    }

    #[test]
    fn under_run_a_follower_names_the_leader_once_its_litefs_holds_the_lease() {
        let t = RaftTiming::default();
        let now = Instant::now();
        let mut o = Observed {
            leader: Some(2),
            term: 4,
            leader_contact: Some(now - ms(10)),
            leader_hostname: Some("node-b".into()),
            ..Observed::default()
        };
        let state = LiteFsState::new();
        let record = |node_id, term| Some(Holder { node_id, term });
        observe_litefs(&mut o, &state, None);
        let v = compute(&me(), &t, &o, now);
        assert_eq!(v.role(), Role::Electing);
        assert!(v.quorum_ok);
        // A record of an earlier term, or of another node, is a leftover.
        observe_litefs(&mut o, &state, record(2, 3));
        assert_eq!(compute(&me(), &t, &o, now).role(), Role::Electing);
        observe_litefs(&mut o, &state, record(3, 4));
        assert_eq!(compute(&me(), &t, &o, now).role(), Role::Electing);
        observe_litefs(&mut o, &state, record(2, 4));
        assert_eq!(compute(&me(), &t, &o, now).role(), Role::Replica);
    }

    #[test]
    fn the_probe_goes_into_health() {
        let mut v = initial(&me());
        merge_probe(&mut v, None);
        assert_eq!((v.litefs, v.lag_ms), (None, None));
        let p = LiteFsProbe {
            mounted: true,
            serving: false,
            lag_ms: Some(12),
            ..Default::default()
        };
        merge_probe(&mut v, Some(p));
        assert_eq!(
            v.litefs,
            Some(LiteFsStatus {
                mounted: true,
                serving: false,
                primary: false,
            })
        );
        assert_eq!(v.lag_ms, Some(12));
    }

    #[test]
    fn a_stuck_leader_is_named_once_per_term_after_the_bound() {
        let mut w = StuckWatch::default();
        let t0 = Instant::now();
        assert!(!w.stuck_long_enough(true, 3, t0));
        assert!(!w.stuck_long_enough(true, 3, t0 + STUCK_FOR - ms(1)));
        assert!(w.stuck_long_enough(true, 3, t0 + STUCK_FOR));
        assert!(
            !w.stuck_long_enough(true, 3, t0 + STUCK_FOR * 2),
            "once per term"
        );
        // Unstuck, then stuck again in a new term: the bound starts over.
        assert!(!w.stuck_long_enough(false, 4, t0 + STUCK_FOR * 2));
        let t1 = t0 + STUCK_FOR * 3;
        assert!(!w.stuck_long_enough(true, 4, t1));
        assert!(w.stuck_long_enough(true, 4, t1 + STUCK_FOR));
    }

    #[test]
    fn a_witness_says_witness() {
        let mut id = me();
        id.witness = true;
        let v = initial(&id);
        assert_eq!(v.role(), Role::Witness);
        assert_eq!(v.primary, Primary::Unknown);
    }
}
