//! The lease's two raft records: who holds the lease ([`HolderRecord`], key
//! [`super::LEASE_KEY`]), and the record a planned handoff leaves behind ([`HandoffRecord`],
//! key [`HANDOFF_KEY`]) with the one rule that reads it.
//!
//! `litefs-py handoff` fences the leader of term `t` (no grant, no renewal for the rest of `t`),
//! waits until its LiteFS has demoted, then writes this record through raft: "term `t` ends with
//! no LiteFS primary, and none can appear in it". The leader of term `t + 1` may then grant its
//! first acquire at once instead of waiting out the new-leader wait: the wait exists only to
//! outlast a primary the previous leadership may have left, and the record proves there is none.
//!
//! Why exactly `t + 1`, and only once the new leader applied an entry of its own term:
//! - Terms between `t` and the new leader's would be leaderships the record says nothing about
//!   (one may have granted); so the waiver holds for the very next term only.
//! - Before its first entry (openraft's blank entry at leadership start) is applied, a new leader's
//!   state machine may lag the committed log: it could still show a record whose deletion (a
//!   cancelled handoff, after which the old leader granted again in `t`) already committed.
//!   Once an entry of its own term is applied, everything committed before it is applied too.
//! - No grant in `t` follows a live record: the old leader lifts its fence only once a deletion
//!   of the record is known committed (a record write that failed or timed out may still have
//!   committed, so a failed write is no reason). And after `transfer_leader`, openraft refuses
//!   client writes from that leader for the rest of `t`: once the transfer was attempted it
//!   cannot delete the record, so it stays fenced until the next election.
//!
//! A leader that finds another node's LiteFS fresher than its own ([`super::freshest`])
//! ends its term the same way, once its wait is over and before it ever granted: fence, record,
//! `transfer_leader`. `fresher_moves` counts such terms in a row, so that a node that keeps
//! failing to take over cannot keep the cluster without a primary forever.

use serde::{Deserialize, Serialize};

use crate::raft::NodeId;
use crate::role::Holder;

/// The holder as replicated through raft (key [`super::LEASE_KEY`]), so that every node's
/// lease API can tell its LiteFS where the primary is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HolderRecord {
    pub node_id: NodeId,
    pub term: u64,
    pub session: String,
    /// LiteFS's JSON, as its primary sent it.
    pub value: String,
}

impl HolderRecord {
    /// The record as stored (JSON), if it parses.
    pub fn parse(stored: &str) -> Option<HolderRecord> {
        serde_json::from_str(stored).ok()
    }

    /// The holder LiteFS's advertise URL, from its JSON (`advertise-url`).
    pub fn advertise_url(&self) -> Option<String> {
        let (info, _) = super::consul::parse_primary_info(self.value.as_bytes()).ok()?;
        Some(info.advertise_url)
    }

    /// What the view needs of it.
    pub fn holder(&self) -> Holder {
        Holder {
            node_id: self.node_id,
            term: self.term,
        }
    }
}

/// The raft key the record lives under.
pub const HANDOFF_KEY: &str = "litefs-py/handoff";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct HandoffRecord {
    /// The term that ended with no LiteFS primary (the handing-off leader's).
    pub released_term: u64,
    pub from: NodeId,
    /// The intended new leader. Not needed for safety (any leader of the next term may use the
    /// waiver); kept for the log and `status`.
    pub to: NodeId,
    /// How many terms in a row ended by moving leadership to a fresher LiteFS, this one
    /// included; 0 for a planned handoff.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fresher_moves: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Whether a leader of `term`, whose state machine has applied up to an entry of `applied_term`,
/// may skip the new-leader wait because of `record`.
pub fn waives(record: &HandoffRecord, term: u64, applied_term: Option<u64>) -> bool {
    record.released_term.checked_add(1) == Some(term) && applied_term == Some(term)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::super::consul::{Behavior, SessionRequest};
    use super::super::state::{AcquireCheck, LeaseParams, LeaseState, Lost, RaftNow, Refusal};
    use super::*;

    const VALUE: &str = r#"{"hostname":"node-a","advertise-url":"http://node-a:20202"}"#;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn leader(t0: Instant, at: u64, term: u64, since: u64) -> RaftNow {
        RaftNow {
            now: t0 + ms(at),
            term,
            leader: Some(1),
            is_leader: true,
            fresh: true,
            leader_since: Some(t0 + ms(since)),
        }
    }

    fn session(s: &mut LeaseState, name: &str, r: &RaftNow) -> String {
        let id = format!("00000000-0000-4000-8000-{name:0>12}");
        let req = SessionRequest {
            name: "litefs".into(),
            ttl: ms(2000),
            lock_delay: ms(1000),
            behavior: Behavior::Delete,
        };
        s.create_session(id.clone(), req, r).unwrap();
        id
    }

    fn grant(s: &mut LeaseState, id: &str, r: &RaftNow) -> AcquireCheck {
        let check = s.check_acquire(id, r);
        if let AcquireCheck::Grant { term } = check {
            s.finish_acquire(id, VALUE.into(), term, r).unwrap();
        }
        check
    }

    #[test]
    fn a_fence_refuses_grants_and_renewals_for_the_rest_of_the_term() {
        let t0 = Instant::now();
        let mut s = LeaseState::new(LeaseParams::new(ms(2000), &Default::default()));
        // Not before the leader's own wait is over (an older primary may still believe).
        assert_eq!(s.fence(&leader(t0, 100, 4, 0)), Err(Refusal::Waiting));
        let a = session(&mut s, "a", &leader(t0, 3500, 4, 0));
        assert!(matches!(
            grant(&mut s, &a, &leader(t0, 3500, 4, 0)),
            AcquireCheck::Grant { .. }
        ));
        let mut stale = leader(t0, 3600, 4, 0);
        stale.fresh = false;
        assert_eq!(s.fence(&stale), Err(Refusal::StaleQuorum));
        assert_eq!(s.fence(&leader(t0, 3600, 4, 0)), Ok(4));
        assert!(
            !s.fenced_without_holder(4, &leader(t0, 3601, 4, 0)),
            "still held"
        );
        // The holder's next renewal is 404: its LiteFS demotes on it.
        assert_eq!(s.renew(&a, &leader(t0, 4500, 4, 0)), Err(Lost::HandingOff));
        assert!(s.fenced_without_holder(4, &leader(t0, 4501, 4, 0)));
        // Nobody gets it again in this term.
        let b = session(&mut s, "b", &leader(t0, 4600, 4, 0));
        assert_eq!(
            grant(&mut s, &b, &leader(t0, 4600, 4, 0)),
            AcquireCheck::Refuse(Refusal::HandingOff)
        );
        assert!(s.status(&leader(t0, 4600, 4, 0)).handing_off);
        // A fence belongs to its term: the next leadership of this node is not fenced (it
        // waits out the lease as usual).
        let later = leader(t0, 16_000, 6, 15_000);
        let d = session(&mut s, "d", &later);
        assert_eq!(
            s.check_acquire(&d, &later),
            AcquireCheck::WaitUntil(t0 + ms(15_000) + s.params().new_leader_wait())
        );
        // Unfenced (the handoff abandoned, its record withdrawn): grants again at once.
        let mut u = LeaseState::new(LeaseParams::new(ms(2000), &Default::default()));
        let c = session(&mut u, "c", &leader(t0, 3500, 4, 0));
        assert_eq!(u.fence(&leader(t0, 3500, 4, 0)), Ok(4));
        u.unfence();
        assert!(matches!(
            grant(&mut u, &c, &leader(t0, 3600, 4, 0)),
            AcquireCheck::Grant { .. }
        ));
    }

    #[test]
    fn a_waived_term_grants_at_once_and_only_that_term() {
        let t0 = Instant::now();
        let mut s = LeaseState::new(LeaseParams::new(ms(2000), &Default::default()));
        let a = session(&mut s, "a", &leader(t0, 10, 8, 0));
        assert_eq!(
            s.check_acquire(&a, &leader(t0, 10, 8, 0)),
            AcquireCheck::WaitUntil(t0 + s.params().new_leader_wait())
        );
        s.waive_wait(8);
        assert!(matches!(
            grant(&mut s, &a, &leader(t0, 20, 8, 0)),
            AcquireCheck::Grant { term: 8 }
        ));
        assert_eq!(s.status(&leader(t0, 20, 8, 0)).grant_in_ms, Some(0));
        // A later leadership of the same node waits again.
        let b = session(&mut s, "b", &leader(t0, 5000, 9, 5000));
        assert_eq!(
            s.check_acquire(&b, &leader(t0, 5000, 9, 5000)),
            AcquireCheck::WaitUntil(t0 + ms(5000) + s.params().new_leader_wait())
        );
    }

    #[test]
    fn only_the_next_term_once_it_applied_its_own_entry() {
        let r = HandoffRecord {
            released_term: 7,
            from: 1,
            to: 2,
            fresher_moves: 0,
        };
        assert!(waives(&r, 8, Some(8)));
        // Not yet applied an entry of its own term: the record may be stale.
        assert!(!waives(&r, 8, Some(7)));
        assert!(!waives(&r, 8, None));
        // A term in between may have had a leader that granted.
        assert!(!waives(&r, 9, Some(9)));
        // The fenced term itself, and earlier ones: never.
        assert!(!waives(&r, 7, Some(7)));
        assert!(!waives(&r, 3, Some(3)));
        let max = HandoffRecord {
            released_term: u64::MAX,
            ..r
        };
        assert!(!waives(&max, 0, Some(0)));
    }
}
