//! Which replicas have a write (docs/proxy.md, "Replicated durability"): the rule, with no I/O.
//!
//! A replica reports its LiteFS positions (TXID and post-apply checksum per database). A report
//! confirms a target position when, for every database of the target, the replica is at or past
//! the target's TXID *and* its (TXID, checksum) is a state this node's own LiteFS went through.
//! The second part matters after a failover that lost writes: a replica still on the old
//! primary's history can be at a higher TXID than the new primary without having the new
//! primary's transactions. A TXID alone would count it; its checksum does not match.
//!
//! This node's own states come from its LiteFS's event stream: every transaction in order,
//! within one subscription. A new subscription starts a new history (what happened while
//! unsubscribed is not known), and so does a position that goes back or changes at the same
//! TXID (LiteFS restored a snapshot from another primary).

use std::collections::{BTreeMap, VecDeque};

use crate::litefs::positions::{Pos, Positions};
use crate::raft::NodeId;

/// This node's own recent states kept per database: a replica reporting an older one is far
/// behind anyway (and is checked again when it reports a newer one).
const HISTORY: usize = 16 * 1024;

#[derive(Debug, Default)]
pub struct Ledger {
    /// Per database, this node's states in TXID order.
    history: BTreeMap<String, VecDeque<Pos>>,
    /// Each replica's last report.
    reports: BTreeMap<NodeId, Positions>,
}

impl Ledger {
    /// A new subscription to this node's LiteFS: its positions now start a new history.
    pub fn restart(&mut self, now: &Positions) {
        self.history.clear();
        for (db, pos) in now {
            self.record(db, *pos);
        }
    }

    /// A transaction this node's LiteFS committed or applied.
    pub fn record(&mut self, db: &str, pos: Pos) {
        let h = self.history.entry(db.to_string()).or_default();
        match h.back() {
            Some(last) if *last == pos => return,
            // Went back, or another state at the same TXID: not the same history any more.
            Some(last) if pos.txid <= last.txid => h.clear(),
            _ => {}
        }
        h.push_back(pos);
        if h.len() > HISTORY {
            h.pop_front();
        }
    }

    /// Node `from`'s LiteFS is at `positions`.
    pub fn report(&mut self, from: NodeId, positions: Positions) {
        self.reports.insert(from, positions);
    }

    /// Whether `pos` of `db` is one of this node's own states.
    fn lived(&self, db: &str, pos: &Pos) -> bool {
        let Some(h) = self.history.get(db) else {
            return false;
        };
        // TXIDs grow along the deque: a binary search by TXID.
        h.binary_search_by_key(&pos.txid, |p| p.txid)
            .is_ok_and(|i| h[i].checksum == pos.checksum)
    }

    fn confirms(&self, report: &Positions, target: &Positions) -> bool {
        target.iter().all(|(db, want)| {
            report
                .get(db)
                .is_some_and(|have| have.txid >= want.txid && self.lived(db, have))
        })
    }

    /// The replicas whose last report confirms `target`, in id order.
    pub fn confirmations(&self, target: &Positions) -> Vec<NodeId> {
        self.reports
            .iter()
            .filter(|(_, report)| self.confirms(report, target))
            .map(|(id, _)| *id)
            .collect()
    }
}

/// Whether any database moved between `before` and `after` (a new database counts): if none
/// did, a request in between committed nothing and has nothing to wait for.
pub fn committed_between(before: &Positions, after: &Positions) -> bool {
    after.iter().any(|(db, p)| before.get(db) != Some(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(txid: u64, checksum: u64) -> Pos {
        Pos { txid, checksum }
    }

    fn at(pairs: &[(&str, u64, u64)]) -> Positions {
        pairs
            .iter()
            .map(|(db, t, c)| (db.to_string(), pos(*t, *c)))
            .collect()
    }

    #[test]
    fn a_replica_confirms_once_it_reached_a_state_this_node_lived() {
        let mut l = Ledger::default();
        l.restart(&at(&[("app.db", 10, 100)]));
        for t in 11..=13 {
            l.record("app.db", pos(t, 100 + t));
        }
        let target = at(&[("app.db", 12, 112)]);
        assert!(l.confirmations(&target).is_empty(), "no report yet");
        l.report(2, at(&[("app.db", 11, 111)]));
        assert!(l.confirmations(&target).is_empty(), "behind");
        l.report(2, at(&[("app.db", 13, 113)]));
        l.report(3, at(&[("app.db", 12, 112)]));
        assert_eq!(l.confirmations(&target), vec![2, 3]);
        // Ahead of what this node has seen so far (its own event not in yet): not yet.
        l.report(3, at(&[("app.db", 14, 114)]));
        assert_eq!(l.confirmations(&target), vec![2]);
        l.record("app.db", pos(14, 114));
        assert_eq!(l.confirmations(&target), vec![2, 3]);
    }

    #[test]
    fn a_replica_on_another_history_does_not_confirm_whatever_its_txid() {
        let mut l = Ledger::default();
        l.restart(&at(&[("app.db", 95, 1)]));
        l.record("app.db", pos(96, 2));
        // Node 3 still has the old primary's transactions 96..=98 (other checksums).
        l.report(3, at(&[("app.db", 98, 777)]));
        l.report(2, at(&[("app.db", 96, 778)]));
        assert!(l.confirmations(&at(&[("app.db", 96, 2)])).is_empty());
        l.report(2, at(&[("app.db", 96, 2)]));
        assert_eq!(l.confirmations(&at(&[("app.db", 96, 2)])), vec![2]);
    }

    #[test]
    fn every_database_of_the_target_must_be_there() {
        let mut l = Ledger::default();
        l.restart(&at(&[("a.db", 5, 5), ("b.db", 7, 7)]));
        let target = at(&[("a.db", 5, 5), ("b.db", 7, 7)]);
        l.report(2, at(&[("a.db", 5, 5)]));
        assert!(l.confirmations(&target).is_empty());
        l.report(2, at(&[("a.db", 5, 5), ("b.db", 7, 7)]));
        assert_eq!(l.confirmations(&target), vec![2]);
    }

    #[test]
    fn a_history_that_goes_back_or_restarts_forgets_the_old_states() {
        let mut l = Ledger::default();
        l.restart(&at(&[("app.db", 10, 10)]));
        l.record("app.db", pos(11, 11));
        // Restored to an older state (a snapshot from another primary): 11 is no longer lived.
        l.record("app.db", pos(9, 99));
        l.report(2, at(&[("app.db", 11, 11)]));
        assert!(l.confirmations(&at(&[("app.db", 9, 99)])).is_empty());
        // The same TXID with another checksum: also a new history.
        l.record("app.db", pos(9, 98));
        l.report(2, at(&[("app.db", 9, 99)]));
        assert!(l.confirmations(&at(&[("app.db", 9, 98)])).is_empty());
        // A new subscription: only what it starts from.
        l.restart(&at(&[("app.db", 20, 20)]));
        l.report(2, at(&[("app.db", 9, 98)]));
        assert!(l.confirmations(&at(&[("app.db", 9, 98)])).is_empty());
        l.report(2, at(&[("app.db", 20, 20)]));
        assert_eq!(l.confirmations(&at(&[("app.db", 20, 20)])), vec![2]);
    }

    #[test]
    fn the_history_is_bounded() {
        let mut l = Ledger::default();
        l.restart(&Positions::new());
        for t in 1..=(HISTORY as u64 + 10) {
            l.record("app.db", pos(t, t));
        }
        assert_eq!(l.history["app.db"].len(), HISTORY);
        assert!(!l.lived("app.db", &pos(1, 1)));
        assert!(l.lived("app.db", &pos(HISTORY as u64 + 10, HISTORY as u64 + 10)));
    }

    #[test]
    fn only_a_moved_database_means_something_was_committed() {
        let before = at(&[("a.db", 5, 5)]);
        assert!(!committed_between(&before, &at(&[("a.db", 5, 5)])));
        assert!(committed_between(&before, &at(&[("a.db", 6, 6)])));
        assert!(committed_between(
            &before,
            &at(&[("a.db", 5, 5), ("b.db", 1, 1)])
        ));
    }
}
