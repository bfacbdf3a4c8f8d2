//! The lease rules without a cluster: every fact is given, every instant chosen.

use std::time::{Duration, Instant};

use super::consul::{Behavior, SessionRequest};
use super::state::{
    AcquireCheck, HolderRecord, LeaseParams, LeaseState, Lost, RaftNow, Refusal, litefs_hold,
    record_is_current,
};
use crate::config::RaftTiming;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn params() -> LeaseParams {
    LeaseParams {
        ttl: ms(3000),
        lock_delay: ms(1000),
        margin: ms(500),
        claim: ms(200),
        vote_lease: ms(400),
        max_sessions: 4,
    }
}

/// The new-leader wait of [`params`], in ms: 3.5 s (LiteFS's hold for a 3 s TTL) - 0.2 s (the
/// vote gap) + 0.5 s, plus 0.1 % of 7.9 s for drift, rounded up.
const WAIT: u64 = 3808;

fn req() -> SessionRequest {
    SessionRequest {
        name: "litefs".into(),
        ttl: ms(3000),
        lock_delay: ms(1000),
        behavior: Behavior::Delete,
    }
}

const VALUE: &str = r#"{"hostname":"node-a","advertise-url":"http://node-a:20202"}"#;

/// A test clock: raft facts at `t0 + offset`.
struct Clock {
    t0: Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock { t0: Instant::now() }
    }
    fn at(&self, offset_ms: u64) -> Instant {
        self.t0 + ms(offset_ms)
    }
    /// Leader of `term` since `since_ms`, fresh quorum ack.
    fn leader(&self, at_ms: u64, term: u64, since_ms: u64) -> RaftNow {
        RaftNow {
            now: self.at(at_ms),
            term,
            leader: Some(1),
            is_leader: true,
            fresh: true,
            leader_since: Some(self.at(since_ms)),
        }
    }
    fn follower(&self, at_ms: u64, term: u64, leader: u64) -> RaftNow {
        RaftNow {
            now: self.at(at_ms),
            term,
            leader: Some(leader),
            is_leader: false,
            fresh: false,
            leader_since: None,
        }
    }
}

fn session(s: &mut LeaseState, name: &str, r: &RaftNow) -> String {
    let id = format!("00000000-0000-4000-8000-{name:0>12}");
    s.create_session(id.clone(), req(), r).unwrap();
    id
}

/// Acquires for `id` at `r`, as the service does: check, (the raft write), finish.
fn acquire(s: &mut LeaseState, id: &str, r: &RaftNow) -> Result<(), AcquireCheck> {
    match s.check_acquire(id, r) {
        AcquireCheck::Grant { term } => s
            .finish_acquire(id, VALUE.into(), term, r)
            .map_err(AcquireCheck::Refuse),
        other => Err(other),
    }
}

#[test]
fn litefs_holds_on_by_its_own_renewal_rule() {
    // LiteFS v0.5.14: renew at ttl/2; on failure retry every 1 s while `since + 1 s <= ttl`,
    // then sleep 1 s and demote. The last attempt, and 1 s after it:
    for (ttl, hold) in [
        (500, 1250),  // 250 (250 + 1000 > 500) -> 1250
        (1000, 1500), // 500 -> 1500
        (1500, 1750), // 750 -> 1750
        (2000, 3000), // 1000 (1000 + 1000 = 2000, not beyond: retried) -> 2000 -> 3000
        (3000, 3500), // 1500 -> 2500 -> 3500 (measured: demoted at r + 3.5 s)
        (10_000, 11_000),
        (60_000, 61_000),
    ] {
        assert_eq!(litefs_hold(ms(ttl)), ms(hold), "ttl {ttl} ms");
        // Never shorter than the TTL: the fencer (which kills at grant + ttl) is no later.
        assert!(litefs_hold(ms(ttl)) >= ms(ttl));
    }
}

#[test]
fn the_wait_is_litefs_hold_less_the_vote_gap_plus_margins() {
    // The defaults: ttl 1 s, heartbeat 100 ms, election timeout 300-400 ms, so the old leader's
    // last grant lies at least 400 - 200 = 200 ms before our leadership start, and its LiteFS
    // believes for at most 1.5 s after it: 1.5 - 0.2 + 0.2 (margin) + 4 ms (0.1 % of 3.6 s).
    let p = LeaseParams::new(ms(1000), &RaftTiming::default());
    assert_eq!(p.vote_gap(), ms(200));
    assert_eq!(p.new_leader_wait(), ms(1504));
    assert_eq!(params().new_leader_wait(), ms(WAIT));
    // The old rule (ttl + 1 s + 0.5 s from the leadership start) was 2.5 s here.
    assert!(p.new_leader_wait() < ms(2500));
    // A longer TTL waits out LiteFS's longer hold: 3 s for 2 s.
    let two = LeaseParams::new(ms(2000), &RaftTiming::default());
    assert_eq!(two.new_leader_wait(), ms(3007));
    // Wider raft timing widens the gap: 1 s max against a 500 ms claim (600 min - 100 hb).
    let slow = RaftTiming {
        heartbeat_interval: ms(100),
        election_timeout_min: ms(600),
        election_timeout_max: ms(1000),
    };
    let p = LeaseParams::new(ms(1000), &slow);
    assert_eq!(p.vote_gap(), ms(500));
    // 1.5 - 0.5 + 0.2 s, plus 0.1 % of 4.2 s (rounded up to 5 ms).
    assert_eq!(p.new_leader_wait(), ms(1205));
    // A gap longer than the hold leaves only the drift allowance (0.1 % of 63.5 s): the old
    // leader's LiteFS gave up before this leadership began.
    let odd = LeaseParams {
        claim: ms(0),
        vote_lease: ms(60_000),
        ..params()
    };
    assert_eq!(odd.vote_gap(), ms(60_000));
    assert_eq!(odd.new_leader_wait(), ms(64));
}

#[test]
fn a_new_leader_waits_out_the_previous_lease_then_grants() {
    let c = Clock::new();
    let mut s = LeaseState::new(params());
    // LiteFS creates its session right before it acquires.
    let a = session(&mut s, "a", &c.leader(WAIT - 500, 5, 0));
    // Before the wait is over: told when to come back, not refused outright.
    assert_eq!(
        s.check_acquire(&a, &c.leader(WAIT - 1, 5, 0)),
        AcquireCheck::WaitUntil(c.at(WAIT))
    );
    acquire(&mut s, &a, &c.leader(WAIT, 5, 0)).unwrap();
    assert_eq!(s.holder(&c.leader(WAIT, 5, 0)).unwrap().term, 5);
    // Re-acquiring with the holder's own session (LiteFS's AcquireExisting) is fine.
    acquire(&mut s, &a, &c.leader(WAIT + 100, 5, 0)).unwrap();
}

#[test]
fn a_leadership_start_ahead_of_now_is_waited_from() {
    // A node elected within a leader lease of its process start reports its leadership as
    // starting at the lease's end (raft_facts): the wait counts from there, not from now.
    let c = Clock::new();
    let mut s = LeaseState::new(params());
    let a = session(&mut s, "a", &c.leader(100, 2, 400));
    assert_eq!(
        s.check_acquire(&a, &c.leader(100, 2, 400)),
        AcquireCheck::WaitUntil(c.at(400 + WAIT))
    );
    acquire(&mut s, &a, &c.leader(400 + WAIT, 2, 400)).unwrap();
}

#[test]
fn grants_and_renewals_need_a_fresh_quorum_ack() {
    let c = Clock::new();
    let mut s = LeaseState::new(params());
    let a = session(&mut s, "a", &c.leader(5000, 2, 0));
    let mut stale = c.leader(5000, 2, 0);
    stale.fresh = false;
    assert_eq!(
        s.check_acquire(&a, &stale),
        AcquireCheck::Refuse(Refusal::StaleQuorum)
    );
    let mut other = LeaseState::new(params());
    let f = session(&mut other, "f", &c.follower(5000, 2, 3));
    assert_eq!(
        other.check_acquire(&f, &c.follower(5000, 2, 3)),
        AcquireCheck::Refuse(Refusal::NotLeader)
    );
    // Back to a fresh ack in the same term: granted (no other leader can have existed).
    let b = session(&mut s, "b", &c.leader(5000, 2, 0));
    acquire(&mut s, &b, &c.leader(5000, 2, 0)).unwrap();
    s.renew(&b, &c.leader(6000, 2, 0)).unwrap();
    // The ack goes stale: the renewal is refused and the holder forgotten at once.
    let mut stale = c.leader(7000, 2, 0);
    stale.fresh = false;
    assert_eq!(s.renew(&b, &stale), Err(Lost::StaleQuorum));
    assert!(s.holder(&c.leader(7001, 2, 0)).is_none());
    // Same term, fresh again: the same LiteFS may take it back without a wait.
    acquire(&mut s, &b, &c.leader(7100, 2, 0)).unwrap();
}

#[test]
fn renewals_fail_after_leadership_is_lost_or_changes_term() {
    let c = Clock::new();
    let mut s = LeaseState::new(params());
    let a = session(&mut s, "a", &c.leader(4500, 3, 0));
    acquire(&mut s, &a, &c.leader(4500, 3, 0)).unwrap();
    let entry = s.renew(&a, &c.leader(6000, 3, 0)).unwrap();
    assert_eq!(entry.ttl, "3s");
    assert_eq!(entry.lock_delay, 1_000_000_000);
    // Deposed: the next renewal is 404 and nothing is held here any more.
    assert_eq!(s.renew(&a, &c.follower(6500, 4, 2)), Err(Lost::NotHolder));
    assert!(s.desired_record(1).is_none());
    // Leader again, in a later term: the old session stays refused, and a new acquire waits
    // a full new-leader wait counted from the new leadership (not from the first one).
    assert_eq!(s.renew(&a, &c.leader(7000, 6, 7000)), Err(Lost::NotHolder));
    assert_eq!(
        s.check_acquire(&a, &c.leader(7000, 6, 7000)),
        AcquireCheck::WaitUntil(c.at(7000 + WAIT))
    );
    // The wait counts from when the loss was seen, even if raft reports an earlier start.
    let mut s = LeaseState::new(params());
    let a = session(&mut s, "a", &c.leader(0, 3, 0));
    s.sync(&c.follower(1000, 4, 2));
    assert_eq!(
        s.check_acquire(&a, &c.leader(2000, 5, 500)),
        AcquireCheck::WaitUntil(c.at(1000 + WAIT))
    );
}

#[test]
fn one_holder_at_a_time() {
    let c = Clock::new();
    let mut s = LeaseState::new(params());
    let r = c.leader(5000, 1, 0);
    let a = session(&mut s, "a", &r);
    let b = session(&mut s, "b", &r);
    acquire(&mut s, &a, &r).unwrap();
    assert_eq!(s.check_acquire(&b, &r), AcquireCheck::Refuse(Refusal::Held));
    assert_eq!(s.renew(&b, &r), Err(Lost::NotHolder));
    // A release by a non-holder changes nothing.
    assert!(!s.release(&b, &r));
    assert_eq!(s.holder(&r).unwrap().session, a);
    assert_eq!(
        s.check_acquire("00000000-0000-4000-8000-00000000000z", &r),
        AcquireCheck::Refuse(Refusal::UnknownSession)
    );
}

#[test]
fn release_frees_at_once_destroy_and_expiry_after_the_lock_delay() {
    let c = Clock::new();
    let mut s = LeaseState::new(params());
    let a = session(&mut s, "a", &c.leader(5000, 1, 0));
    acquire(&mut s, &a, &c.leader(5000, 1, 0)).unwrap();
    // Released: the next acquire is granted immediately (LiteFS released after demoting).
    assert!(s.release(&a, &c.leader(5100, 1, 0)));
    assert!(s.destroy(&a, &c.leader(5100, 1, 0)));
    let b = session(&mut s, "b", &c.leader(5100, 1, 0));
    acquire(&mut s, &b, &c.leader(5100, 1, 0)).unwrap();
    // Destroyed while holding: the lock is blocked for the lock delay.
    assert!(s.destroy(&b, &c.leader(5200, 1, 0)));
    let d = session(&mut s, "d", &c.leader(5200, 1, 0));
    assert_eq!(
        s.check_acquire(&d, &c.leader(5300, 1, 0)),
        AcquireCheck::WaitUntil(c.at(6200))
    );
    acquire(&mut s, &d, &c.leader(6200, 1, 0)).unwrap();
    // A late renewal (past the TTL, within twice the TTL, as Consul allows) still counts.
    s.renew(&d, &c.leader(9700, 1, 0)).unwrap();
    // Not renewed within twice its TTL: expired, forgotten, and the lock blocked until
    // expiry + lock delay.
    let e = session(&mut s, "e", &c.leader(15_600, 1, 0));
    assert_eq!(
        s.renew(&d, &c.leader(15_700, 1, 0)),
        Err(Lost::UnknownSession)
    );
    assert!(s.holder(&c.leader(15_700, 1, 0)).is_none());
    assert_eq!(
        s.check_acquire(&e, &c.leader(15_700, 1, 0)),
        AcquireCheck::WaitUntil(c.at(16_700))
    );
    // Unknown sessions: destroy says so, release is idempotent.
    assert!(!s.destroy(&d, &c.leader(15_800, 1, 0)));
    assert!(!s.release(&d, &c.leader(15_800, 1, 0)));
}

#[test]
fn the_grant_is_checked_again_after_the_raft_write() {
    let c = Clock::new();
    let mut s = LeaseState::new(params());
    let a = session(&mut s, "a", &c.leader(5000, 1, 0));
    let AcquireCheck::Grant { term } = s.check_acquire(&a, &c.leader(5000, 1, 0)) else {
        panic!("expected a grant");
    };
    // Leadership moved while the record was being written.
    assert_eq!(
        s.finish_acquire(&a, VALUE.into(), term, &c.follower(5010, 2, 2)),
        Err(Refusal::NotLeader)
    );
    assert!(s.holder(&c.follower(5010, 2, 2)).is_none());
    // Leader again in a newer term by the time the write returned: refused too.
    let a = session(&mut s, "a2", &c.leader(20_000, 3, 10_000));
    let AcquireCheck::Grant { term } = s.check_acquire(&a, &c.leader(20_000, 3, 10_000)) else {
        panic!("expected a grant");
    };
    assert_eq!(term, 3);
    assert_eq!(
        s.finish_acquire(&a, VALUE.into(), 3, &c.leader(20_001, 4, 20_001)),
        Err(Refusal::Waiting)
    );
}

#[test]
fn the_record_follows_the_holder_and_is_read_only_when_current() {
    let c = Clock::new();
    let mut s = LeaseState::new(params());
    let a = session(&mut s, "a", &c.leader(5000, 7, 0));
    acquire(&mut s, &a, &c.leader(5000, 7, 0)).unwrap();
    let record = s.desired_record(1).unwrap();
    assert_eq!(
        record,
        HolderRecord {
            node_id: 1,
            term: 7,
            session: a.clone(),
            value: VALUE.into(),
        }
    );
    // A follower of node 1 in term 7 believes it; in another term, or under another leader,
    // or with no leader known, it does not.
    assert!(record_is_current(&record, &c.follower(0, 7, 1)));
    assert!(!record_is_current(&record, &c.follower(0, 8, 1)));
    assert!(!record_is_current(&record, &c.follower(0, 7, 2)));
    let mut none = c.follower(0, 7, 1);
    none.leader = None;
    assert!(!record_is_current(&record, &none));
    assert!(s.release(&a, &c.leader(5100, 7, 0)));
    assert!(s.desired_record(1).is_none());
}

#[test]
fn sessions_are_bounded() {
    let c = Clock::new();
    let mut s = LeaseState::new(params());
    let r = c.leader(0, 1, 0);
    for i in 0..4 {
        session(&mut s, &i.to_string(), &r);
    }
    let id = "00000000-0000-4000-8000-000000000009".to_string();
    assert!(s.create_session(id.clone(), req(), &r).is_err());
    // Expired ones (twice the TTL) make room.
    assert!(
        s.create_session(id.clone(), req(), &c.leader(5999, 1, 0))
            .is_err()
    );
    assert!(s.create_session(id, req(), &c.leader(6000, 1, 0)).is_ok());
    assert_eq!(s.status(&c.leader(6000, 1, 0)).sessions.len(), 1);
}

#[test]
fn the_local_hold_follows_grants_renewals_and_losses() {
    let c = Clock::new();
    let mut s = LeaseState::new(params());
    let a = session(&mut s, "a", &c.leader(4500, 3, 0));
    assert_eq!(s.local_hold(), None, "a session alone holds nothing");
    acquire(&mut s, &a, &c.leader(4500, 3, 0)).unwrap();
    let h = s.local_hold().unwrap();
    // Until LiteFS's own bound for the session's TTL (3 s: 3.5 s), not the TTL.
    assert_eq!((h.term, h.until), (3, c.at(4500 + 3500)));
    // A renewal pushes it forward by as much.
    s.renew(&a, &c.leader(6000, 3, 0)).unwrap();
    assert_eq!(s.local_hold().unwrap().until, c.at(6000 + 3500));
    // A refused renewal, a release or a lost leadership ends it at once.
    assert!(s.renew(&a, &c.follower(6500, 4, 2)).is_err());
    assert_eq!(s.local_hold(), None);
    let mut s = LeaseState::new(params());
    let a = session(&mut s, "a", &c.leader(4500, 3, 0));
    acquire(&mut s, &a, &c.leader(4500, 3, 0)).unwrap();
    assert!(s.release(&a, &c.leader(5000, 3, 0)));
    assert_eq!(s.local_hold(), None);
    acquire(&mut s, &a, &c.leader(5000, 3, 0)).unwrap();
    s.sync(&c.follower(5500, 4, 2));
    assert_eq!(s.local_hold(), None);
}
