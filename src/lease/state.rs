//! The lease rules as a plain state machine: no clock, no raft, no I/O. Every operation is given
//! what raft says at that instant ([`RaftNow`]) and answers from it, so the rules are tested
//! without a cluster (see `state_tests.rs`).
//!
//! The invariant: at no instant do two LiteFS nodes both believe they are primary.
//! - An acquire or renew succeeds only while this node is raft leader with a quorum ack younger
//!   than the lease bound (`RaftNow::fresh`). A leader that loses it stops renewing at once:
//!   its LiteFS gets 404 and demotes itself at its next renewal.
//! - A grant decided at `g` had a quorum ack sent at `s > g - lease bound`; every quorum that
//!   elects a successor shares a voter with it, and that voter votes only `election-timeout-max`
//!   after its last contact (`>= s`). So `g` lies at least the vote gap
//!   ([`LeaseParams::vote_gap`], 200 ms by default) before any successor's leadership starts.
//! - A LiteFS (v0.5.14) that last heard a grant at `g` believes it is primary until at most
//!   `g + litefs_hold(ttl)` ([`litefs_hold`]: its renewal and retry schedule, then its 1 s
//!   sleep), and the fencer kills it by `g + ttl`, earlier. So a new leader grants its first
//!   acquire at `leadership start + litefs_hold(ttl) - vote gap + margin + drift`
//!   ([`LeaseParams::new_leader_wait`]; docs/architecture.md, "The lease invariant").
//! - A session belongs to the leadership (term) in which it acquired the lock: a renewal in a
//!   later term is 404, even on the same node.
//! - A planned handoff (`litefs-py handoff`) fences the leader for the rest of its term: no grant,
//!   no renewal. Once its LiteFS has demoted, it records through raft that term `t` ended with no
//!   primary (`super::handoff`); the leader of term `t + 1` may then grant at once (the waiver).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::consul::{SessionEntry, SessionRequest};
pub use super::records::HolderRecord;
use super::{
    DRIFT_PPM, GRANT_MARGIN, LITEFS_RENEW_RETRY, LITEFS_RENEW_TIMEOUT, LOCK_DELAY, LeaseError,
    MAX_SESSIONS,
};
use crate::config::RaftTiming;
use crate::litefs::state::LocalHold;
use crate::litefs::yaml::go_duration;
use crate::raft::NodeId;

/// The numbers the rules run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseParams {
    /// `lease.ttl`: the longest TTL a session may have (LiteFS's, from the generated litefs.yml).
    pub ttl: Duration,
    /// Applied after a holder's session is invalidated (expiry, destroy), as in Consul.
    pub lock_delay: Duration,
    /// Slack for scheduling: between our answer and LiteFS acting on it, LiteFS's timers firing
    /// late, the fencer's wake-up.
    pub margin: Duration,
    /// The raft lease bound (`RaftTiming::lease_bound`): a leader grants only within this of a
    /// quorum ack's send time.
    pub claim: Duration,
    /// `raft.election-timeout-max`: a voter grants no vote for this long after its last
    /// contact with the leader (openraft's leader lease).
    pub vote_lease: Duration,
    pub max_sessions: usize,
}

/// How long a LiteFS v0.5.14 may go on believing it is primary after the last answer that
/// granted or renewed its lease, if no later renewal succeeds (its `monitorLeaseAsPrimary`):
/// it renews `ttl / 2` after that answer; a 404 demotes it at once; any other failure is retried
/// every 1 s until `time since the answer + 1 s > ttl`, and then it sleeps 1 s and demotes. So
/// the last failed attempt is at the first offset `ttl / 2 + k × 1 s` (k = 0, 1, ...) beyond
/// `ttl - 1 s`, and demotion 1 s later: 1.5 s for a 1 s TTL, 3 s for 2 s, 3.5 s for 3 s, ttl + 1 s
/// from there. Scheduling delays only add (they are the margin's), and a hung request is the
/// fencer's.
pub fn litefs_hold(ttl: Duration) -> Duration {
    let mut last_attempt = ttl / 2;
    while last_attempt + LITEFS_RENEW_TIMEOUT <= ttl {
        last_attempt += LITEFS_RENEW_RETRY;
    }
    last_attempt + LITEFS_RENEW_TIMEOUT
}

impl LeaseParams {
    pub fn new(ttl: Duration, raft: &RaftTiming) -> LeaseParams {
        LeaseParams {
            ttl,
            lock_delay: LOCK_DELAY,
            margin: GRANT_MARGIN,
            claim: raft.lease_bound(),
            vote_lease: raft.election_timeout_max,
            max_sessions: MAX_SESSIONS,
        }
    }

    /// How much earlier than any successor's leadership start the previous leader's last grant
    /// lay: `election-timeout-max - lease bound` (docs/decisions.md, "Lease: a new leader waits
    /// from the old leader's last possible grant").
    pub fn vote_gap(&self) -> Duration {
        self.vote_lease.saturating_sub(self.claim)
    }

    /// How long a new leader waits, from its leadership start, before its first grant: by then
    /// every LiteFS an earlier leadership granted has demoted itself or been killed by its
    /// fencer. `litefs_hold(ttl) - vote gap + margin`, plus [`DRIFT_PPM`] of every interval the
    /// argument adds up on different hosts' clocks.
    pub fn new_leader_wait(&self) -> Duration {
        let hold = litefs_hold(self.ttl);
        let base = (hold + self.margin).saturating_sub(self.vote_gap());
        let spans = hold + self.claim + self.vote_lease + base;
        let drift_ns = spans.as_nanos() * u128::from(DRIFT_PPM) / 1_000_000;
        // Rounded up to whole milliseconds: the drift allowance is never less than computed.
        let drift = Duration::from_millis(drift_ns.div_ceil(1_000_000) as u64);
        base + drift
    }
}

/// What raft says at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftNow {
    pub now: Instant,
    pub term: u64,
    /// The leader raft believes in (possibly this node).
    pub leader: Option<NodeId>,
    /// This node is raft leader in `term`.
    pub is_leader: bool,
    /// ...and a quorum acknowledged it within the lease bound: the rule `.role` uses for
    /// `primary` (a cut-off leader keeps openraft's Leader state, so `is_leader` is not enough).
    pub fresh: bool,
    /// When this node's leadership in `term` began, as first observed, but never before a
    /// leader lease after this process started (so it can lie in the future).
    pub leader_since: Option<Instant>,
}

#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub req: SessionRequest,
    /// Created, renewed, or granted the lock: the session expires [`EXPIRY_TTLS`] TTLs after.
    pub renewed: Instant,
    pub index: u64,
}

/// A session expires this many TTLs after its last renewal, as in Consul (which never expires a
/// session before its TTL and in practice waits twice as long). LiteFS renews every TTL/2, so a
/// renewal delayed by a loaded host is not a lost primary. Safety does not depend on it: another
/// node's LiteFS is only granted the lock after a new leadership's wait, and on this node a
/// new holder after expiry + lock delay, later than the old one can still believe it holds it.
const EXPIRY_TTLS: u32 = 2;

impl Session {
    fn expires(&self) -> Instant {
        self.renewed + self.req.ttl * EXPIRY_TTLS
    }

    pub fn entry(&self) -> SessionEntry {
        SessionEntry {
            id: self.id.clone(),
            name: self.req.name.clone(),
            node: String::new(),
            lock_delay: u64::try_from(self.req.lock_delay.as_nanos()).unwrap_or(u64::MAX),
            behavior: self.req.behavior.as_str().into(),
            ttl: go_duration(self.req.ttl),
            checks: Vec::new(),
            node_checks: Vec::new(),
            service_checks: Vec::new(),
            create_index: self.index,
            modify_index: self.index,
        }
    }
}

/// The session holding the lock, and LiteFS's value (its hostname and advertise URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub session: String,
    /// The raft term the lock was granted in.
    pub term: u64,
    pub value: String,
    pub index: u64,
}

/// Why an acquire was answered `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnknownSession,
    /// Another live session holds the lock.
    Held,
    NotLeader,
    StaleQuorum,
    /// A new leader waiting out the previous lease, or a lock delay.
    Waiting,
    /// This leader is handing the primary to another node.
    HandingOff,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownSession => "unknown or expired session",
            Refusal::Held => "held by another session",
            Refusal::NotLeader => "this node is not the raft leader",
            Refusal::StaleQuorum => "no fresh quorum acknowledgement",
            Refusal::Waiting => "waiting out the previous lease",
            Refusal::HandingOff => "this node is handing the primary lease to another node",
        }
    }
}

/// Why a renewal was answered 404 (LiteFS: "lease expired", it demotes itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    UnknownSession,
    NotHolder,
    StaleQuorum,
    OldTerm,
    HandingOff,
}

impl Lost {
    pub fn as_str(self) -> &'static str {
        match self {
            Lost::UnknownSession => "unknown or expired session",
            Lost::NotHolder => "the session does not hold the lock (leadership changed?)",
            Lost::StaleQuorum => "no fresh quorum acknowledgement",
            Lost::OldTerm => "the lock was granted in an earlier raft term",
            Lost::HandingOff => "the primary is being handed to another node",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireCheck {
    Grant {
        term: u64,
    },
    Refuse(Refusal),
    /// Nothing but time stands in the way: ask again at this instant.
    WaitUntil(Instant),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Epoch {
    term: u64,
    since: Instant,
}

/// For the lease API's own status route.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseStatus {
    pub leader_term: Option<u64>,
    /// Milliseconds until a new leader may grant (0: it may).
    pub grant_in_ms: Option<u64>,
    pub holder: Option<String>,
    pub holder_value: Option<String>,
    pub sessions: Vec<String>,
    /// A planned handoff fenced this leader: it grants nothing more in its term.
    #[serde(default)]
    pub handing_off: bool,
}

#[derive(Debug)]
pub struct LeaseState {
    params: LeaseParams,
    sessions: BTreeMap<String, Session>,
    holder: Option<Holder>,
    epoch: Option<Epoch>,
    /// When this node last stopped being leader: a later leadership waits from after it.
    last_loss: Option<Instant>,
    /// Lock delay after an invalidated holder.
    blocked_until: Option<Instant>,
    /// Consul's modify index, for the answers' `*Index` fields.
    index: u64,
    /// A handoff fenced this leadership (its term): no grant, no renewal in it.
    fence: Option<u64>,
    /// The term whose new-leader wait a committed handoff record waived.
    waived: Option<u64>,
}

impl LeaseState {
    pub fn new(params: LeaseParams) -> LeaseState {
        LeaseState {
            params,
            sessions: BTreeMap::new(),
            holder: None,
            epoch: None,
            last_loss: None,
            blocked_until: None,
            index: 0,
            fence: None,
            waived: None,
        }
    }

    pub fn params(&self) -> &LeaseParams {
        &self.params
    }

    fn next_index(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    fn block(&mut self, until: Instant) {
        self.blocked_until = Some(self.blocked_until.map_or(until, |b| b.max(until)));
    }

    /// Brings the state up to `r`: a new leadership starts its wait and forgets the previous
    /// holder, a lost one forgets it too, and sessions not renewed for [`EXPIRY_TTLS`] TTLs
    /// expire (a holder's expiry blocks the lock for its lock delay, as in Consul).
    pub fn sync(&mut self, r: &RaftNow) {
        if r.is_leader {
            if self.epoch.map(|e| e.term) != Some(r.term) {
                // May lie ahead of `now`: a leadership won within a leader lease of this
                // process's start counts from the lease's end (`RaftNode::vote_lease_until`).
                let observed = r.leader_since.unwrap_or(r.now);
                let since = self.last_loss.map_or(observed, |l| observed.max(l));
                self.epoch = Some(Epoch {
                    term: r.term,
                    since,
                });
                self.holder = None;
            }
        } else if self.epoch.take().is_some() {
            self.last_loss = Some(r.now);
            self.holder = None;
        }
        let expired: Vec<Session> = self
            .sessions
            .values()
            .filter(|s| s.expires() <= r.now)
            .cloned()
            .collect();
        for s in expired {
            self.sessions.remove(&s.id);
            if self.holder.as_ref().is_some_and(|h| h.session == s.id) {
                self.holder = None;
                let delay = s.req.lock_delay.max(self.params.lock_delay);
                self.block(s.expires() + delay);
            }
        }
    }

    pub fn create_session(
        &mut self,
        id: String,
        req: SessionRequest,
        r: &RaftNow,
    ) -> Result<SessionEntry, LeaseError> {
        self.sync(r);
        if self.sessions.len() >= self.params.max_sessions {
            return Err(LeaseError::TooManySessions(self.params.max_sessions));
        }
        let index = self.next_index();
        let session = Session {
            id: id.clone(),
            req,
            renewed: r.now,
            index,
        };
        let entry = session.entry();
        self.sessions.insert(id, session);
        Ok(entry)
    }

    /// Whether session `id` may take the lock now.
    pub fn check_acquire(&mut self, id: &str, r: &RaftNow) -> AcquireCheck {
        self.sync(r);
        if !self.sessions.contains_key(id) {
            return AcquireCheck::Refuse(Refusal::UnknownSession);
        }
        if self.holder.as_ref().is_some_and(|h| h.session != id) {
            return AcquireCheck::Refuse(Refusal::Held);
        }
        let Some(epoch) = self.epoch.filter(|_| r.is_leader) else {
            return AcquireCheck::Refuse(Refusal::NotLeader);
        };
        if !r.fresh {
            return AcquireCheck::Refuse(Refusal::StaleQuorum);
        }
        if self.fence == Some(epoch.term) {
            return AcquireCheck::Refuse(Refusal::HandingOff);
        }
        let ready = self.ready_at(epoch);
        if r.now < ready {
            return AcquireCheck::WaitUntil(ready);
        }
        AcquireCheck::Grant { term: r.term }
    }

    /// Takes the lock for `id` after the holder record was written through raft in `term`:
    /// everything is checked again at `r`, the instant of the answer.
    pub fn finish_acquire(
        &mut self,
        id: &str,
        value: String,
        term: u64,
        r: &RaftNow,
    ) -> Result<(), Refusal> {
        match self.check_acquire(id, r) {
            AcquireCheck::Grant { term: now_term } if now_term == term => {}
            AcquireCheck::Grant { .. } => return Err(Refusal::NotLeader),
            AcquireCheck::WaitUntil(_) => return Err(Refusal::Waiting),
            AcquireCheck::Refuse(why) => return Err(why),
        }
        let index = self.next_index();
        // The grant counts as a renewal: it was made under the same conditions, and LiteFS
        // renews TTL/2 after it.
        if let Some(s) = self.sessions.get_mut(id) {
            s.renewed = r.now;
        }
        self.holder = Some(Holder {
            session: id.to_string(),
            term,
            value,
            index,
        });
        Ok(())
    }

    /// Renews session `id`: only the holder, in the term it was granted in, while fresh.
    pub fn renew(&mut self, id: &str, r: &RaftNow) -> Result<SessionEntry, Lost> {
        self.sync(r);
        if !self.sessions.contains_key(id) {
            return Err(Lost::UnknownSession);
        }
        let Some(holder) = self.holder.as_ref().filter(|h| h.session == id) else {
            return Err(Lost::NotHolder);
        };
        let lost = if holder.term != r.term {
            Some(Lost::OldTerm)
        } else if !(r.is_leader && r.fresh) {
            Some(Lost::StaleQuorum)
        } else if self.fence == Some(r.term) {
            Some(Lost::HandingOff)
        } else {
            None
        };
        if let Some(lost) = lost {
            // No lock delay: LiteFS demotes itself on this very answer, before anything else.
            self.holder = None;
            return Err(lost);
        }
        let session = self.sessions.get_mut(id).expect("checked above");
        session.renewed = r.now;
        Ok(session.entry())
    }

    /// Releases the lock if `id` holds it (no lock delay: an explicit release, as in Consul).
    /// Returns whether it held it.
    pub fn release(&mut self, id: &str, r: &RaftNow) -> bool {
        self.sync(r);
        if self.holder.as_ref().is_some_and(|h| h.session == id) {
            self.holder = None;
            return true;
        }
        false
    }

    /// Destroys session `id`; a holder's lock is then blocked for its lock delay. Returns
    /// whether the session existed.
    pub fn destroy(&mut self, id: &str, r: &RaftNow) -> bool {
        self.sync(r);
        let Some(s) = self.sessions.remove(id) else {
            return false;
        };
        if self.holder.as_ref().is_some_and(|h| h.session == id) {
            self.holder = None;
            self.block(r.now + s.req.lock_delay.max(self.params.lock_delay));
        }
        true
    }

    /// The holder, as the leader's own GET answers it.
    pub fn holder(&mut self, r: &RaftNow) -> Option<Holder> {
        self.sync(r);
        self.holder.clone()
    }

    /// The holder as `.role` and the fencer need it under `run`: the term it was granted in and
    /// until when its LiteFS may believe it: its last grant or renewal + [`litefs_hold`] of its
    /// session's TTL, LiteFS's own bound (1.5 s for a 1 s TTL). Not + TTL: with the 1 s default a
    /// renewal 250 ms late would make the fencer kill a healthy LiteFS; the new leader's wait
    /// already covers `litefs_hold` (docs/decisions.md, "The fencer's deadline"). Call after an
    /// operation (they all sync first).
    pub fn local_hold(&self) -> Option<LocalHold> {
        self.epoch?;
        let h = self.holder.as_ref()?;
        let s = self.sessions.get(&h.session)?;
        Some(LocalHold {
            term: h.term,
            until: s.renewed + litefs_hold(s.req.ttl),
        })
    }

    /// What the replicated record should say, once synced: the holder while this node leads
    /// and one holds the lock, else nothing.
    pub fn desired_record(&self, me: NodeId) -> Option<HolderRecord> {
        self.epoch?;
        let h = self.holder.as_ref()?;
        Some(HolderRecord {
            node_id: me,
            term: h.term,
            session: h.session.clone(),
            value: h.value.clone(),
        })
    }

    pub fn status(&mut self, r: &RaftNow) -> LeaseStatus {
        self.sync(r);
        let grant_at = self.epoch.map(|e| self.ready_at(e));
        LeaseStatus {
            leader_term: self.epoch.map(|e| e.term),
            grant_in_ms: grant_at.map(|t| t.saturating_duration_since(r.now).as_millis() as u64),
            holder: self.holder.as_ref().map(|h| h.session.clone()),
            holder_value: self.holder.as_ref().map(|h| h.value.clone()),
            sessions: self.sessions.keys().cloned().collect(),
            handing_off: self.epoch.is_some_and(|e| self.fence == Some(e.term)),
        }
    }

    /// The first instant leadership `epoch` may grant: after the new-leader wait (unless a
    /// handoff record waived it for this term) and any lock delay.
    fn ready_at(&self, epoch: Epoch) -> Instant {
        let ready = if self.waived == Some(epoch.term) {
            epoch.since
        } else {
            epoch.since + self.params.new_leader_wait()
        };
        self.blocked_until.map_or(ready, |b| b.max(ready))
    }

    /// Fences the leadership in `r`'s term for a handoff: every later acquire is refused and
    /// the holder's next renewal is 404 (its LiteFS demotes on it). Only a fresh leader whose
    /// own wait is over may hand off: then no LiteFS of an earlier leadership can still be
    /// primary, and once its own holder is gone no LiteFS is. Returns the fenced term.
    pub fn fence(&mut self, r: &RaftNow) -> Result<u64, Refusal> {
        self.sync(r);
        let Some(epoch) = self.epoch.filter(|_| r.is_leader) else {
            return Err(Refusal::NotLeader);
        };
        if !r.fresh {
            return Err(Refusal::StaleQuorum);
        }
        if r.now < self.ready_at(epoch) {
            return Err(Refusal::Waiting);
        }
        self.fence = Some(epoch.term);
        Ok(epoch.term)
    }

    /// Lifts the fence: only once no handoff record for its term can be acted on (it was never
    /// written, or its deletion committed).
    pub fn unfence(&mut self) {
        self.fence = None;
    }

    /// Whether the local LiteFS's grant is gone in the fenced term `term` (the 404 was answered:
    /// LiteFS demotes on reading it).
    pub fn fenced_without_holder(&mut self, term: u64, r: &RaftNow) -> bool {
        self.sync(r);
        self.fence == Some(term) && self.holder.is_none()
    }

    /// Waives the new-leader wait of `term`: a committed handoff record says the previous term
    /// ended with no LiteFS primary (see `super::records::waives`).
    pub fn waive_wait(&mut self, term: u64) {
        if self.waived != Some(term) {
            tracing::info!(term, "handoff record: the new-leader wait is waived");
        }
        self.waived = Some(term);
    }
}

/// Whether a replicated record names the primary as this node (a follower) sees the cluster
/// now: written by the leader raft believes in, in the current term. Anything else is a leftover
/// of an earlier leadership, which a new leader deletes.
pub fn record_is_current(record: &HolderRecord, r: &RaftNow) -> bool {
    record.term == r.term && r.leader == Some(record.node_id)
}
