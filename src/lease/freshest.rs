//! Which node's LiteFS has the newest data: asked by a new leader before its first grant.
//!
//! Raft elects the node with the most complete *raft* log, and LiteFS's data is not in it. So
//! after a double failure raft may elect a node that is behind: replica A down, the primary
//! commits a transaction that only replica B receives, the primary dies, A comes back and wins.
//! LiteFS on B would then follow A's history and drop that transaction, although a live node
//! had it. To prevent that, a leader's lease API ([`super::LeaseService`]) surveys the
//! reachable data voters' LiteFS positions (`GET /raft/litefs`, their `<db>-pos` files) right
//! before its first grant in a term, when every LiteFS position is final (the previous primary
//! has surely demoted), and if another node's LiteFS is fresher it hands raft leadership to
//! that node instead of granting.
//!
//! What it cannot save: data on a node that is down or cut off at that moment (waiting for it
//! would leave the cluster without a primary for as long as it stays away).
//!
//! Here: the survey ([`survey`]), the decision ([`decide`], pure), and the lease service's part
//! ([`LeaseService::freshest_here`]): when to ask, and ending the term for a fresher node.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use openraft::async_runtime::Instant as _;

use super::records::{HANDOFF_KEY, HandoffRecord};
use super::{LeaseService, RaftFacts};
use crate::litefs::api::LiteFsApi;
use crate::litefs::positions::Positions;
use crate::litefs::report::{LocalReport, REPORT_PATH};
use crate::raft::{NodeId, RaftNode, Request};

/// Peers the leader heard from within this long are asked; others are down or cut off, and
/// asking them would only delay the grant by a timeout.
const REACHABLE_WITHIN: Duration = Duration::from_secs(1);
/// One peer's answer may take this long (it reads its `<db>-pos` files and LiteFS's `/info`).
const SURVEY_TIMEOUT: Duration = Duration::from_secs(1);

/// What a reachable data voter said of its LiteFS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerLiteFs {
    /// Its LiteFS's databases and positions.
    Known(Positions),
    /// It runs LiteFS, but its positions are not known right now (LiteFS starting, not
    /// answering, or the call failed), or its LiteFS still says it is primary.
    Unknown(String),
}

/// This node's LiteFS positions and what the reachable data voters said of theirs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Survey {
    pub mine: Positions,
    pub peers: BTreeMap<NodeId, PeerLiteFs>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No reachable LiteFS is fresher: this node's LiteFS may become primary.
    Here,
    /// Some reachable data voter's LiteFS has not reported: ask again shortly.
    Wait(String),
    /// `to`'s LiteFS has data this node's lacks: leadership should move there.
    MoveTo { to: NodeId, why: String },
}

/// A LiteFS's freshness: on how many databases it has the newest TXID of all, then the sum of
/// its TXIDs. Any node ranks the same positions the same way, and leadership only ever moves to
/// a strictly higher rank, so it cannot go round in circles.
fn rank(p: &Positions, newest: &BTreeMap<&str, u64>) -> (usize, u128) {
    let at_newest = newest
        .iter()
        .filter(|(db, txid)| p.get(**db).is_some_and(|have| have.txid == **txid))
        .count();
    let sum = p.values().map(|pos| u128::from(pos.txid)).sum();
    (at_newest, sum)
}

/// Where the primary should be. `stop_waiting`: peers that did not report are ignored (they had
/// long enough).
pub fn decide(s: &Survey, stop_waiting: bool) -> Verdict {
    let known: Vec<(NodeId, &Positions)> = s
        .peers
        .iter()
        .filter_map(|(id, p)| match p {
            PeerLiteFs::Known(p) => Some((*id, p)),
            PeerLiteFs::Unknown(_) => None,
        })
        .collect();
    let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
    for p in known.iter().map(|(_, p)| *p).chain([&s.mine]) {
        for (db, pos) in p {
            let n = newest.entry(db.as_str()).or_default();
            *n = (*n).max(pos.txid);
        }
    }
    let mine = rank(&s.mine, &newest);
    // The highest rank; the lower id on a tie, so every leader picks the same node.
    let best = known
        .iter()
        .map(|(id, p)| (rank(p, &newest), std::cmp::Reverse(*id), *id, *p))
        .max_by_key(|(r, rev, _, _)| (*r, *rev));
    if let Some((r, _, to, theirs)) = best
        && r > mine
    {
        let why = theirs
            .iter()
            .filter_map(|(db, pos)| match s.mine.get(db) {
                Some(have) if have.txid >= pos.txid => None,
                Some(have) => Some(format!("{db}: TXID {} there, {} here", pos.txid, have.txid)),
                None => Some(format!("{db}: TXID {} there, missing here", pos.txid)),
            })
            .collect::<Vec<_>>()
            .join("; ");
        return Verdict::MoveTo { to, why };
    }
    let unknown: Vec<String> = s
        .peers
        .iter()
        .filter_map(|(id, p)| match p {
            PeerLiteFs::Unknown(why) => Some(format!("node {id}: {why}")),
            PeerLiteFs::Known(_) => None,
        })
        .collect();
    if !unknown.is_empty() && !stop_waiting {
        return Verdict::Wait(unknown.join("; "));
    }
    Verdict::Here
}

/// What one peer's report says for the survey; `None`: it runs no LiteFS of its own.
fn peer_answer(report: LocalReport) -> Option<PeerLiteFs> {
    match report {
        LocalReport {
            is_primary: None, ..
        } => None,
        LocalReport { error: Some(e), .. } => Some(PeerLiteFs::Unknown(e)),
        LocalReport {
            is_primary: Some(true),
            ..
        } => Some(PeerLiteFs::Unknown(
            "its LiteFS still says it is primary".into(),
        )),
        LocalReport { positions, .. } => Some(PeerLiteFs::Known(positions)),
    }
}

/// This node's LiteFS positions and those of every data voter the leader heard from lately,
/// asked at once. `Ok(None)`: this node runs no LiteFS of its own (`local` is `None`: not
/// `litefs-py run`), so there is nothing to compare. `Err`: the local positions cannot be read.
pub async fn survey(node: &RaftNode, local: Option<&LiteFsApi>) -> Result<Option<Survey>, String> {
    let Some(local) = local else {
        return Ok(None);
    };
    let me = node.settings.id;
    let m = node.metrics();
    let membership = m.membership_config.membership();
    let heard_lately = |id: &NodeId| {
        m.heartbeat
            .as_ref()
            .and_then(|h| h.get(id).cloned().flatten())
            .is_some_and(|at| at.elapsed() < REACHABLE_WITHIN)
    };
    let asks = membership
        .voter_ids()
        .filter(|id| *id != me && !node.is_witness(*id) && heard_lately(id))
        .filter_map(|id| {
            let addr = membership.get_node(&id)?.raft_addr.clone();
            Some(async move {
                let answer = node
                    .transport
                    .call::<(), LocalReport>(id, &addr, REPORT_PATH, None, SURVEY_TIMEOUT)
                    .await
                    .map_or_else(|e| Some(PeerLiteFs::Unknown(e.to_string())), peer_answer);
                (id, answer)
            })
        });
    let (mine, answers) = tokio::join!(local.positions(), futures_util::future::join_all(asks));
    let mine = mine.map_err(|e| e.to_string())?;
    let peers = answers
        .into_iter()
        .filter_map(|(id, a)| Some((id, a?)))
        .collect();
    Ok(Some(Survey { mine, peers }))
}

/// The freshness check of one term: whether it passed, and since when it has been tried.
#[derive(Debug, Clone, Copy)]
pub(super) struct Freshness {
    term: u64,
    passed: bool,
    since: Instant,
}

/// How long a new leader waits for reachable data voters whose LiteFS has not reported its
/// positions (starting, hung) before it grants without them.
pub(super) const WAIT_FOR_SILENT_PEERS: Duration = Duration::from_secs(10);

/// After this many terms in a row that ended by moving leadership to a fresher LiteFS that never
/// took over, a leader grants anyway: a cluster without a primary is worse.
const MAX_FRESHER_MOVES: u32 = 3;

impl<F: RaftFacts> LeaseService<F> {
    pub(super) fn freshness_passed(&self, term: u64) -> bool {
        self.freshness
            .lock()
            .is_some_and(|f| f.term == term && f.passed)
    }

    /// Whether the local LiteFS may become primary as far as data goes: no reachable data
    /// voter's LiteFS is fresher. Asked once the wait is over (every position is final then) and
    /// until it passes once in the term. A fresher node gets raft leadership instead; a peer
    /// that has not reported yet is waited for, up to [`WAIT_FOR_SILENT_PEERS`].
    pub(super) async fn freshest_here(&self) -> bool {
        let r = self.facts.now();
        let since = {
            let mut f = self.freshness.lock();
            match *f {
                Some(f) if f.term == r.term && f.passed => return true,
                Some(f) if f.term == r.term => f.since,
                _ => {
                    *f = Some(Freshness {
                        term: r.term,
                        passed: false,
                        since: r.now,
                    });
                    r.now
                }
            }
        };
        let survey = match self.facts.survey_litefs().await {
            Ok(Some(survey)) => survey,
            Ok(None) => return self.pass_freshness(r.term),
            Err(e) => {
                tracing::warn!("acquire refused: reading this node's LiteFS positions: {e}");
                return false;
            }
        };
        let stop_waiting = r.now.saturating_duration_since(since) >= self.silent_peer_wait;
        match decide(&survey, stop_waiting) {
            Verdict::Here => {
                let silent: Vec<String> = survey
                    .peers
                    .iter()
                    .filter(|(_, p)| matches!(p, PeerLiteFs::Unknown(_)))
                    .map(|(id, _)| format!("node {id}"))
                    .collect();
                if !silent.is_empty() {
                    tracing::warn!(
                        "granting without the LiteFS positions of {} (no report within {:?}): a transaction only they have would be lost",
                        silent.join(", "),
                        self.silent_peer_wait
                    );
                }
                self.pass_freshness(r.term)
            }
            Verdict::Wait(why) => {
                tracing::info!("acquire refused: waiting for peers' LiteFS positions: {why}");
                false
            }
            Verdict::MoveTo { to, why } => self.move_to_fresher(r.term, to, &why).await,
        }
    }

    fn pass_freshness(&self, term: u64) -> bool {
        let mut f = self.freshness.lock();
        if let Some(f) = f.as_mut().filter(|f| f.term == term) {
            f.passed = true;
        }
        true
    }

    /// Node `to`'s LiteFS is fresher: ends this term with no primary as a handoff does (fence,
    /// record, `transfer_leader`), so `to` leads the next term and may grant at once. Returns
    /// whether to grant here after all (`to` failed to take over [`MAX_FRESHER_MOVES`] times).
    async fn move_to_fresher(&self, term: u64, to: NodeId, why: &str) -> bool {
        let me = self.facts.node_id();
        let moves = self
            .facts
            .get(HANDOFF_KEY)
            .and_then(|v| serde_json::from_str::<HandoffRecord>(&v).ok())
            .filter(|rec| rec.released_term.checked_add(1) == Some(term))
            .map_or(0, |rec| rec.fresher_moves);
        if moves >= MAX_FRESHER_MOVES {
            tracing::error!(
                "node {to}'s LiteFS is fresher ({why}), but leadership moved there {moves} terms in a row without it taking over: granting here; what only node {to} has will be lost"
            );
            return self.pass_freshness(term);
        }
        let r = self.facts.now();
        if r.term != term {
            return false;
        }
        if let Err(refusal) = self.state.lock().fence(&r) {
            tracing::info!(
                "acquire refused: cannot end the term for node {to}: {}",
                refusal.as_str()
            );
            return false;
        }
        self.report_hold();
        tracing::warn!(
            term,
            "node {to}'s LiteFS has transactions this node's lacks ({why}): moving raft leadership to node {to} instead of becoming primary"
        );
        let record = HandoffRecord {
            released_term: term,
            from: me,
            to,
            fresher_moves: moves + 1,
        };
        let request = Request::Set {
            key: HANDOFF_KEY.into(),
            value: serde_json::to_string(&record).expect("plain struct"),
        };
        if let Err(e) = self.write(request).await {
            // Fenced for the rest of the term either way; without the record node `to` just
            // waits out the lease as after a failure.
            tracing::warn!("recording the end of term {term}: {e}; it may still commit");
        }
        self.facts.transfer_leadership(to, term);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::litefs::positions::Pos;

    fn at(dbs: &[(&str, u64)]) -> Positions {
        dbs.iter()
            .map(|(db, txid)| {
                let pos = Pos {
                    txid: *txid,
                    checksum: txid * 7,
                };
                (db.to_string(), pos)
            })
            .collect()
    }

    fn survey(mine: Positions, peers: &[(NodeId, PeerLiteFs)]) -> Survey {
        Survey {
            mine,
            peers: peers.iter().cloned().collect(),
        }
    }

    #[test]
    fn a_node_as_fresh_as_every_reachable_peer_stays() {
        let s = survey(
            at(&[("app.db", 6)]),
            &[
                (2, PeerLiteFs::Known(at(&[("app.db", 6)]))),
                (3, PeerLiteFs::Known(at(&[("app.db", 4)]))),
            ],
        );
        assert_eq!(decide(&s, false), Verdict::Here);
        // Nobody else: nothing to compare with.
        assert_eq!(decide(&survey(at(&[]), &[]), false), Verdict::Here);
        // A fresh cluster: no database anywhere.
        let s = survey(at(&[]), &[(2, PeerLiteFs::Known(at(&[])))]);
        assert_eq!(decide(&s, false), Verdict::Here);
    }

    #[test]
    fn leadership_moves_to_the_peer_with_newer_transactions() {
        // The double failure: this node (restarted) lacks TXID 7, which node 3 received.
        let s = survey(
            at(&[("app.db", 6)]),
            &[(3, PeerLiteFs::Known(at(&[("app.db", 7)])))],
        );
        assert_eq!(
            decide(&s, false),
            Verdict::MoveTo {
                to: 3,
                why: "app.db: TXID 7 there, 6 here".into()
            }
        );
        // A database this node does not have at all.
        let s = survey(
            at(&[("app.db", 6)]),
            &[(2, PeerLiteFs::Known(at(&[("app.db", 6), ("new.db", 1)])))],
        );
        assert_eq!(
            decide(&s, true),
            Verdict::MoveTo {
                to: 2,
                why: "new.db: TXID 1 there, missing here".into()
            }
        );
    }

    #[test]
    fn the_freshest_of_several_wins_and_ties_go_to_the_lower_id() {
        let s = survey(
            at(&[("a.db", 1)]),
            &[
                (2, PeerLiteFs::Known(at(&[("a.db", 5)]))),
                (3, PeerLiteFs::Known(at(&[("a.db", 9)]))),
                (4, PeerLiteFs::Known(at(&[("a.db", 9)]))),
            ],
        );
        assert!(matches!(decide(&s, false), Verdict::MoveTo { to: 3, .. }));
        // Each ahead on a different database: the rank (databases at the newest TXID, then the
        // TXID sum) decides, the same way on every node, so leadership cannot ping-pong.
        let mine = at(&[("a.db", 10), ("b.db", 5)]);
        let peer = at(&[("a.db", 11), ("b.db", 4)]);
        let s = survey(mine.clone(), &[(2, PeerLiteFs::Known(peer.clone()))]);
        assert_eq!(decide(&s, false), Verdict::Here, "a tie stays");
        let s = survey(peer, &[(1, PeerLiteFs::Known(mine))]);
        assert_eq!(
            decide(&s, false),
            Verdict::Here,
            "and from the other side too"
        );
        let s = survey(
            at(&[("a.db", 10), ("b.db", 5)]),
            &[(2, PeerLiteFs::Known(at(&[("a.db", 11), ("b.db", 5)])))],
        );
        assert!(matches!(decide(&s, false), Verdict::MoveTo { to: 2, .. }));
    }

    #[test]
    fn a_silent_peer_is_waited_for_until_told_to_stop() {
        let s = survey(
            at(&[("app.db", 6)]),
            &[
                (2, PeerLiteFs::Known(at(&[("app.db", 6)]))),
                (3, PeerLiteFs::Unknown("LiteFS: connection refused".into())),
            ],
        );
        assert_eq!(
            decide(&s, false),
            Verdict::Wait("node 3: LiteFS: connection refused".into())
        );
        assert_eq!(decide(&s, true), Verdict::Here);
        // A known fresher peer does not wait for the silent one.
        let s = survey(
            at(&[("app.db", 6)]),
            &[
                (2, PeerLiteFs::Known(at(&[("app.db", 8)]))),
                (3, PeerLiteFs::Unknown("starting".into())),
            ],
        );
        assert!(matches!(decide(&s, false), Verdict::MoveTo { to: 2, .. }));
    }

    #[test]
    fn reports_become_answers() {
        let report = |is_primary, error: Option<&str>| LocalReport {
            is_primary,
            positions: at(&[("app.db", 3)]),
            error: error.map(Into::into),
            stopping: false,
        };
        assert_eq!(
            peer_answer(report(None, None)),
            None,
            "no LiteFS of its own"
        );
        assert_eq!(
            peer_answer(report(Some(false), None)),
            Some(PeerLiteFs::Known(at(&[("app.db", 3)])))
        );
        assert!(matches!(
            peer_answer(report(Some(false), Some("GET /info: refused"))),
            Some(PeerLiteFs::Unknown(e)) if e.contains("refused")
        ));
        assert!(matches!(
            peer_answer(report(Some(true), None)),
            Some(PeerLiteFs::Unknown(e)) if e.contains("still says it is primary")
        ));
    }
}
