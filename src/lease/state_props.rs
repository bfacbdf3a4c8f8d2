//! A model test of the lease rules: three nodes, each with its own [`LeaseState`] and its own
//! LiteFS, driven by random sequences of LiteFS calls (create, acquire, renew, release,
//! destroy), raft events (heartbeats that refresh the leader's quorum ack, partitions that
//! stop them, elections that may skip terms, nodes that learn of a new term late) and planned
//! handoffs (fence, the handoff record, the next leader's waiver through `records::waives`).
//!
//! Raft is modelled by what it guarantees, not by how: a leader's quorum ack is fresh only in
//! the newest term, and a new term's leader is elected only after the previous leader's ack
//! went stale (docs/architecture.md, "The lease invariant"). Under any such history:
//! - no two sessions, on any nodes, are granted the lock while the other's LiteFS may still
//!   believe it is primary (its last grant or renewal + TTL + LiteFS's 1 s request timeout,
//!   or until it was told otherwise: a 404, a release, a destroy);
//! - a grant or renewal happens only on the leader of the newest term with a fresh quorum ack;
//! - only the holder's session is renewed, and only in the term it was granted in;
//! - a handoff record waives the wait of the very next term only (`waives`).
//!
//! The wait a new leader keeps is not asserted as a number: how it is counted may change; what
//! it must achieve (the first invariant) may not.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::consul::{Behavior, SessionRequest};
use super::records::{HandoffRecord, waives};
use super::state::{AcquireCheck, LeaseParams, LeaseState, RaftNow};

const NODES: usize = 3;
const TTL_MS: u64 = 2000;
/// LiteFS sleeps its 1 s request timeout before demoting after its last renewal's TTL.
const LITEFS_SLACK_MS: u64 = 1000;
/// How long one quorum ack keeps the leader fresh (the lease bound of the default timing).
const ACK_MS: u64 = 200;

fn params() -> LeaseParams {
    LeaseParams::new(
        Duration::from_millis(TTL_MS),
        &crate::config::RaftTiming::default(),
    )
}

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    /// The leader of the newest term gets a quorum ack (if it knows it leads).
    Heartbeat,
    /// A partition: the leader's ack stops being fresh now.
    Partition,
    /// A new leader (node) in the newest term + 1 + skip (skipped terms had no leader).
    Elect(usize, u64),
    /// A node learns the newest term.
    Learn(usize),
    Create(usize, bool),
    /// Acquire with the node's n-th session; the raft write takes `delay` ms.
    Acquire(usize, usize, u64),
    Renew(usize, usize),
    Release(usize, usize),
    Destroy(usize, usize),
    /// `litefs-py handoff` on the node: fence, then (a later op) the record.
    Fence(usize),
    WriteRecord(usize),
    Unfence(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let node = 0..NODES;
    prop_oneof![
        6 => prop_oneof![0..300u64, 300..3000u64, Just(4600u64)].prop_map(Op::Advance),
        6 => Just(Op::Heartbeat),
        1 => Just(Op::Partition),
        2 => (node.clone(), 0..3u64).prop_map(|(n, s)| Op::Elect(n, s)),
        3 => node.clone().prop_map(Op::Learn),
        3 => (node.clone(), any::<bool>()).prop_map(|(n, half)| Op::Create(n, half)),
        6 => (node.clone(), 0..3usize, prop_oneof![Just(0u64), 1..400u64]).prop_map(|(n, s, d)| Op::Acquire(n, s, d)),
        5 => (node.clone(), 0..3usize).prop_map(|(n, s)| Op::Renew(n, s)),
        1 => (node.clone(), 0..3usize).prop_map(|(n, s)| Op::Release(n, s)),
        1 => (node.clone(), 0..3usize).prop_map(|(n, s)| Op::Destroy(n, s)),
        1 => node.clone().prop_map(Op::Fence),
        1 => node.clone().prop_map(Op::WriteRecord),
        1 => node.prop_map(Op::Unfence),
    ]
}

/// What the model knows of one LiteFS session.
#[derive(Debug)]
struct SessionModel {
    node: usize,
    ttl_ms: u64,
    /// Until when its LiteFS may believe it is primary (ms), once granted.
    believed_until: Option<u64>,
}

struct World {
    t0: Instant,
    now: u64,
    states: Vec<LeaseState>,
    /// Newest term and its leader (None: no leader elected in it yet).
    term: u64,
    leader: Option<usize>,
    leader_start: BTreeMap<u64, u64>,
    leaders: BTreeMap<u64, usize>,
    /// The term each node believes is current.
    seen: [u64; NODES],
    /// The leader of `term` is fresh until this instant (ms).
    fresh_until: u64,
    sessions: BTreeMap<String, SessionModel>,
    /// Each node's sessions, oldest first (the index the ops use).
    by_node: [Vec<String>; NODES],
    /// The term a handoff fenced (and on which node), and the record it wrote.
    record: Option<HandoffRecord>,
    fenced: [Option<u64>; NODES],
    next_id: u64,
}

impl World {
    fn new() -> World {
        World {
            t0: Instant::now(),
            now: 0,
            states: (0..NODES).map(|_| LeaseState::new(params())).collect(),
            term: 0,
            leader: None,
            leader_start: BTreeMap::new(),
            leaders: BTreeMap::new(),
            seen: [0; NODES],
            fresh_until: 0,
            sessions: BTreeMap::new(),
            by_node: Default::default(),
            record: None,
            fenced: [None; NODES],
            next_id: 0,
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// What raft tells node `n` now. The one place a [`RaftNow`] is built.
    fn raft(&self, n: usize) -> RaftNow {
        let term = self.seen[n];
        let leader = self.leaders.get(&term).copied();
        let is_leader = leader == Some(n);
        RaftNow {
            now: self.at(self.now),
            term,
            leader: leader.map(|l| l as u64 + 1),
            is_leader,
            fresh: self.is_fresh(n),
            leader_since: is_leader.then(|| self.at(self.leader_start[&term])),
        }
    }

    /// Raft's guarantee: only the newest term's leader, knowing it, can have a fresh ack.
    fn is_fresh(&self, n: usize) -> bool {
        self.leader == Some(n) && self.seen[n] == self.term && self.now < self.fresh_until
    }

    fn session(&self, n: usize, i: usize) -> Option<String> {
        self.by_node[n].get(i).cloned()
    }

    /// LiteFS of `id` stops believing it is primary now (it was told so, or gave up).
    fn demote(&mut self, id: &str) {
        let now = self.now;
        if let Some(s) = self.sessions.get_mut(id) {
            s.believed_until = s.believed_until.map(|u| u.min(now));
        }
    }

    /// A grant or successful renewal of `id` on node `n`: the checks every one must pass.
    fn granted(&mut self, n: usize, id: &str, what: &str) {
        assert!(
            self.is_fresh(n),
            "{what} of {id} on node {n} at {} ms without a fresh quorum ack in the newest term \
             (term {}, node sees {}, leader {:?}, fresh until {})",
            self.now,
            self.term,
            self.seen[n],
            self.leader,
            self.fresh_until
        );
        for (other, s) in &self.sessions {
            if other != id
                && let Some(until) = s.believed_until
            {
                assert!(
                    until <= self.now,
                    "{what} of {id} on node {n} at {} ms while {other} (node {}) may believe it \
                     is primary until {until} ms",
                    self.now,
                    s.node
                );
            }
        }
        let now = self.now;
        let s = self.sessions.get_mut(id).expect("a modelled session");
        s.believed_until = Some(now + s.ttl_ms + LITEFS_SLACK_MS);
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Advance(ms) => self.now += ms,
            Op::Heartbeat => {
                if let Some(l) = self.leader
                    && self.seen[l] == self.term
                {
                    self.fresh_until = self.now + ACK_MS;
                }
            }
            Op::Partition => self.fresh_until = self.fresh_until.min(self.now),
            Op::Elect(n, skip) => {
                // A quorum elected `n` only after the old leader's ack went stale.
                self.fresh_until = self.fresh_until.min(self.now);
                self.term += 1 + skip;
                self.leader = Some(n);
                self.leaders.insert(self.term, n);
                self.leader_start.insert(self.term, self.now);
                self.seen[n] = self.term;
                self.fresh_until = self.now + ACK_MS;
                // The service reads the handoff record once an entry of its own term is applied
                // (at once here) and waives this term's wait if the record allows it.
                if let Some(rec) = &self.record {
                    if waives(rec, self.term, Some(self.term)) {
                        assert_eq!(rec.released_term + 1, self.term);
                        self.states[n].waive_wait(self.term);
                    }
                    assert!(!waives(rec, self.term, None), "waived before applying");
                }
            }
            Op::Learn(n) => self.seen[n] = self.term,
            Op::Create(n, half) => {
                self.next_id += 1;
                let id = format!("00000000-0000-4000-8000-{:012x}", self.next_id);
                let ttl_ms = if half { TTL_MS / 2 } else { TTL_MS };
                let req = SessionRequest {
                    name: "litefs".into(),
                    ttl: Duration::from_millis(ttl_ms),
                    lock_delay: Duration::from_secs(1),
                    behavior: Behavior::Delete,
                };
                let r = self.raft(n);
                if self.states[n].create_session(id.clone(), req, &r).is_ok() {
                    self.sessions.insert(
                        id.clone(),
                        SessionModel {
                            node: n,
                            ttl_ms,
                            believed_until: None,
                        },
                    );
                    self.by_node[n].push(id);
                }
            }
            Op::Acquire(n, i, delay) => {
                let Some(id) = self.session(n, i) else { return };
                let r = self.raft(n);
                let AcquireCheck::Grant { term } = self.states[n].check_acquire(&id, &r) else {
                    return;
                };
                // The holder record's raft write: time passes, and the world may not wait.
                self.now += delay;
                let r = self.raft(n);
                let value = format!(r#"{{"hostname":"node-{n}","advertise-url":"x"}}"#);
                if self.states[n].finish_acquire(&id, value, term, &r).is_ok() {
                    assert_eq!(term, self.term, "granted in an old term");
                    assert_ne!(self.fenced[n], Some(term), "granted in a fenced term");
                    self.granted(n, &id, "grant");
                }
            }
            Op::Renew(n, i) => {
                let Some(id) = self.session(n, i) else { return };
                let r = self.raft(n);
                let holder = self.states[n].holder(&r);
                match self.states[n].renew(&id, &r) {
                    Ok(_) => {
                        let h = holder.expect("renewed without a holder");
                        assert_eq!(h.session, id, "a session that is not the holder renewed");
                        assert_eq!(h.term, self.term, "renewed in a later term than granted");
                        self.granted(n, &id, "renewal");
                    }
                    // 404: LiteFS demotes on this answer.
                    Err(_) => self.demote(&id),
                }
            }
            Op::Release(n, i) => {
                let Some(id) = self.session(n, i) else { return };
                // LiteFS releases only after it demoted.
                self.demote(&id);
                let r = self.raft(n);
                self.states[n].release(&id, &r);
            }
            Op::Destroy(n, i) => {
                let Some(id) = self.session(n, i) else { return };
                self.demote(&id);
                let r = self.raft(n);
                self.states[n].destroy(&id, &r);
            }
            Op::Fence(n) => {
                let r = self.raft(n);
                if let Ok(term) = self.states[n].fence(&r) {
                    assert!(r.is_leader && r.fresh, "fenced without a fresh leadership");
                    self.fenced[n] = Some(term);
                }
            }
            Op::WriteRecord(n) => {
                // The record is written only once the fenced leader's LiteFS demoted, through
                // raft: so only by the leader of the newest term.
                let Some(term) = self.fenced[n] else { return };
                let r = self.raft(n);
                if term == self.term
                    && self.is_fresh(n)
                    && self.states[n].fenced_without_holder(term, &r)
                {
                    self.record = Some(HandoffRecord {
                        released_term: term,
                        from: n as u64 + 1,
                        to: 0,
                        fresher_moves: 0,
                    });
                }
            }
            Op::Unfence(n) => {
                // Allowed only while no record of the fenced term can be acted on.
                if self.fenced[n].is_some()
                    && self.record.as_ref().map(|r| r.released_term) != self.fenced[n]
                {
                    self.states[n].unfence();
                    self.fenced[n] = None;
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_lease_rules_hold_under_any_raft_history(
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let mut w = World::new();
        // Node 0 leads term 1 from the start: most histories then have a primary to lose.
        w.step(Op::Elect(0, 0));
        for op in ops {
            w.step(op);
        }
    }

    #[test]
    fn a_handoff_record_waives_the_next_term_only(
        released in 0..u64::MAX,
        term in any::<u64>(),
        applied in proptest::option::of(any::<u64>()),
    ) {
        let rec = HandoffRecord { released_term: released, from: 1, to: 2, fresher_moves: 0 };
        prop_assert_eq!(
            waives(&rec, term, applied),
            term == released + 1 && applied == Some(term)
        );
    }
}
