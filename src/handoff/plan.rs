//! The handoff's plain decisions, without I/O: which node to hand to, whether it is fit, and
//! whether its LiteFS has everything the old primary acknowledged.

use std::time::Duration;

use crate::litefs::positions::Positions;
use crate::raft::NodeId;

/// A target may be at most this many raft log entries behind the leader (a few heartbeats of
/// lease-record writes): further behind, it is not keeping up and would lose the election.
pub const MAX_LOG_LAG: u64 = 16;

/// The databases on which `target` does not (yet) have exactly the primary's position, with
/// what it has: missing, behind, or diverged (same TXID, another checksum).
pub fn lagging(primary: &Positions, target: &Positions) -> Vec<String> {
    primary
        .iter()
        .filter_map(|(db, want)| match target.get(db) {
            Some(have) if have == want => None,
            Some(have) => Some(format!("{db}: {have} (primary {want})")),
            None => Some(format!("{db}: missing (primary {want})")),
        })
        .collect()
}

/// LiteFS drops a HALT lock this long after it was taken (v0.5.14, `DefaultHaltLockTTL`): from
/// then on writers may commit again on the old primary.
pub const HALT_LOCK_TTL: Duration = Duration::from_secs(30);
/// The halts must still hold this long after the old primary is known to have demoted.
pub const HALT_MARGIN: Duration = Duration::from_secs(5);

/// How long the target may still take to catch up, given that the first HALT was taken
/// `halted_for` ago and demotion may then take up to `demote_timeout`: the halts must outlive
/// both by [`HALT_MARGIN`]. `None`: no time is left; the handoff must be refused before fencing.
pub fn catch_up_allowance(halted_for: Duration, demote_timeout: Duration) -> Option<Duration> {
    let left = HALT_LOCK_TTL
        .checked_sub(HALT_MARGIN)?
        .checked_sub(demote_timeout)?
        .checked_sub(halted_for)?;
    (!left.is_zero()).then_some(left)
}

/// The databases whose position in `after` is not the one in `before` (moved on, or new): what
/// committed on the old primary after the target was checked.
pub fn moved(before: &Positions, after: &Positions) -> Positions {
    after
        .iter()
        .filter(|(db, p)| before.get(*db) != Some(*p))
        .map(|(db, p)| (db.clone(), *p))
        .collect()
}

/// What the leader knows of one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub voter: bool,
    pub witness: bool,
    /// The last log index the leader knows it has (replication metrics).
    pub matched: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("node {0} is not a member of the cluster")]
    Unknown(NodeId),
    #[error("node {0} is already the leader and primary: nothing to hand off")]
    IsLeader(NodeId),
    #[error("node {0} is a learner, not a voter: it cannot lead")]
    NotVoter(NodeId),
    #[error("node {0} is a witness: it runs no LiteFS and is never primary")]
    Witness(NodeId),
    #[error("node {id} is not healthy: {why}")]
    Unhealthy { id: NodeId, why: String },
    #[error("no other data voter is healthy enough to take over ({0})")]
    NoCandidate(String),
}

fn fitness(m: &Member, last_log: Option<u64>) -> Result<(), PlanError> {
    if !m.voter {
        return Err(PlanError::NotVoter(m.id));
    }
    if m.witness {
        return Err(PlanError::Witness(m.id));
    }
    let last = last_log.unwrap_or(0);
    match m.matched {
        None => Err(PlanError::Unhealthy {
            id: m.id,
            why: "the leader has no replication progress for it (unreachable?)".into(),
        }),
        Some(i) if last.saturating_sub(i) > MAX_LOG_LAG => Err(PlanError::Unhealthy {
            id: m.id,
            why: format!("its raft log is {} entries behind", last - i),
        }),
        Some(_) => Ok(()),
    }
}

/// The node to hand to: `to` if it is fit, else (no `to`) the fit data voter furthest along.
#[cfg(test)]
pub fn choose_target(
    me: NodeId,
    to: Option<NodeId>,
    members: &[Member],
    last_log: Option<u64>,
) -> Result<NodeId, PlanError> {
    candidates(me, to, members, last_log).map(|c| c[0])
}

/// The nodes to hand to, best first (never empty): `to` alone if it is fit, else (no `to`)
/// every fit data voter, furthest along first. The caller takes the first one whose own
/// report agrees (it runs LiteFS, it is not stopping).
pub fn candidates(
    me: NodeId,
    to: Option<NodeId>,
    members: &[Member],
    last_log: Option<u64>,
) -> Result<Vec<NodeId>, PlanError> {
    if let Some(to) = to {
        if to == me {
            return Err(PlanError::IsLeader(me));
        }
        let m = members
            .iter()
            .find(|m| m.id == to)
            .ok_or(PlanError::Unknown(to))?;
        fitness(m, last_log)?;
        return Ok(vec![to]);
    }
    let mut why = Vec::new();
    let mut fit: Vec<&Member> = members
        .iter()
        .filter(|m| m.id != me)
        .filter(|m| match fitness(m, last_log) {
            Ok(()) => true,
            Err(e) => {
                why.push(e.to_string());
                false
            }
        })
        .collect();
    // Furthest along first; the lower id on a tie, so the choice is predictable.
    fit.sort_by_key(|m| (std::cmp::Reverse(m.matched), m.id));
    if fit.is_empty() {
        return Err(PlanError::NoCandidate(if why.is_empty() {
            "no other member".into()
        } else {
            why.join("; ")
        }));
    }
    Ok(fit.into_iter().map(|m| m.id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::litefs::positions::Pos;

    fn m(id: NodeId, voter: bool, witness: bool, matched: Option<u64>) -> Member {
        Member {
            id,
            voter,
            witness,
            matched,
        }
    }

    #[test]
    fn positions_parse_and_compare() {
        let p = Pos::parse("0000000000000003/8a1b2c3d4e5f6071\n").unwrap();
        assert_eq!((p.txid, p.checksum), (3, 0x8a1b_2c3d_4e5f_6071));
        assert_eq!(p.to_string(), "0000000000000003/8a1b2c3d4e5f6071");
        for bad in [
            "",
            "3/4",
            "000000000000000g/0000000000000000",
            "0000000000000003",
        ] {
            assert_eq!(Pos::parse(bad), None, "{bad:?}");
        }
        let pos = |t, c| Pos {
            txid: t,
            checksum: c,
        };
        let primary: Positions = [("a.db".into(), pos(5, 9)), ("b.db".into(), pos(2, 1))].into();
        assert!(lagging(&primary, &primary).is_empty());
        let mut target = primary.clone();
        target.insert("c.db".into(), pos(1, 1)); // extra databases do not matter
        assert!(lagging(&primary, &target).is_empty());
        target.insert("a.db".into(), pos(4, 8));
        target.remove("b.db");
        let l = lagging(&primary, &target);
        assert_eq!(l.len(), 2);
        assert!(l[0].starts_with("a.db: 0000000000000004/"), "{l:?}");
        assert!(l[1].starts_with("b.db: missing"), "{l:?}");
        // Same TXID, another checksum: diverged, not caught up.
        target.insert("a.db".into(), pos(5, 7));
        target.insert("b.db".into(), pos(2, 1));
        assert_eq!(lagging(&primary, &target).len(), 1);
    }

    #[test]
    fn an_explicit_target_must_be_a_fit_data_voter() {
        let members = [
            m(1, true, false, Some(100)),
            m(2, true, false, Some(99)),
            m(3, true, true, Some(100)),
            m(4, false, false, Some(100)),
            m(5, true, false, None),
            m(6, true, false, Some(10)),
        ];
        let last = Some(100);
        assert_eq!(choose_target(1, Some(2), &members, last), Ok(2));
        assert_eq!(
            choose_target(1, Some(1), &members, last),
            Err(PlanError::IsLeader(1))
        );
        assert_eq!(
            choose_target(1, Some(9), &members, last),
            Err(PlanError::Unknown(9))
        );
        assert_eq!(
            choose_target(1, Some(3), &members, last),
            Err(PlanError::Witness(3))
        );
        assert_eq!(
            choose_target(1, Some(4), &members, last),
            Err(PlanError::NotVoter(4))
        );
        let e = choose_target(1, Some(5), &members, last).unwrap_err();
        assert!(e.to_string().contains("unreachable"), "{e}");
        let e = choose_target(1, Some(6), &members, last).unwrap_err();
        assert_eq!(
            e.to_string(),
            "node 6 is not healthy: its raft log is 90 entries behind"
        );
    }

    #[test]
    fn without_a_target_the_furthest_fit_data_voter() {
        let members = [
            m(1, true, false, Some(100)),
            m(2, true, false, Some(98)),
            m(3, true, false, Some(99)),
            m(4, true, true, Some(100)),
        ];
        assert_eq!(choose_target(1, None, &members, Some(100)), Ok(3));
        assert_eq!(candidates(1, None, &members, Some(100)), Ok(vec![3, 2]));
        assert_eq!(candidates(1, Some(2), &members, Some(100)), Ok(vec![2]));
        let tie = [
            m(1, true, false, None),
            m(3, true, false, Some(5)),
            m(2, true, false, Some(5)),
        ];
        assert_eq!(choose_target(1, None, &tie, Some(5)), Ok(2));
        let none = [m(1, true, false, Some(5)), m(2, true, true, Some(5))];
        let e = choose_target(1, None, &none, Some(5)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no other data voter is healthy enough to take over (node 2 is a witness: it runs no LiteFS and is never primary)"
        );
        assert!(matches!(
            choose_target(1, None, &none[..1], Some(5)),
            Err(PlanError::NoCandidate(w)) if w == "no other member"
        ));
    }

    #[test]
    fn catch_up_allowance_keeps_the_halts_alive_through_demotion() {
        let s = Duration::from_secs;
        // ttl 10 s: demotion up to 7 s; 30 - 5 - 7 = 18 s, of which 1 s is gone.
        assert_eq!(catch_up_allowance(s(1), s(7)), Some(s(17)));
        // ttl 60 s: demotion up to 32 s, longer than a HALT lock lives: refused.
        assert_eq!(catch_up_allowance(Duration::ZERO, s(32)), None);
        // ttl 46 s: 25 s of demotion leave nothing.
        assert_eq!(catch_up_allowance(Duration::ZERO, s(25)), None);
        // Time already spent halted counts.
        assert_eq!(catch_up_allowance(s(18), s(7)), None);
        assert_eq!(catch_up_allowance(s(20), s(7)), None);
    }

    #[test]
    fn moved_positions() {
        let p = |t: u64| Pos {
            txid: t,
            checksum: t * 7,
        };
        let before: Positions = [("a.db".to_string(), p(3)), ("b.db".to_string(), p(5))].into();
        assert!(moved(&before, &before).is_empty());
        let after: Positions = [
            ("a.db".to_string(), p(3)),
            ("b.db".to_string(), p(6)),
            ("c.db".to_string(), p(1)),
        ]
        .into();
        let m = moved(&before, &after);
        assert_eq!(m.keys().collect::<Vec<_>>(), ["b.db", "c.db"]);
        assert_eq!(m["b.db"], p(6));
    }
}
