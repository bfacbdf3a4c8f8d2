//! `run --migrate CMD` / `run.migrate`: the decision alone, no IO (the supervisor's
//! [`super::migrate_step`] runs commands, reads positions and writes raft).
//!
//! The primary runs the command once per raft term, then records a [`Marker`] in raft's
//! key/value map ([`KEY`]): the term, the node and LiteFS's positions right after the command
//! exited 0. A replica starts its app once a marker of the *current* term is there and its own
//! LiteFS positions have reached the marker's. See docs/decisions.md, "run --migrate".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::litefs::positions::{Pos, Positions};

/// The raft key of the marker: one for the cluster.
pub const KEY: &str = "litefs-py/migrate";

/// What the primary records once its migrate command exited 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Marker {
    /// The raft term the command ran (started and ended) in.
    pub term: u64,
    /// The node that ran it.
    pub node: u64,
    /// LiteFS's positions on that node right after the command: database name -> position.
    pub positions: BTreeMap<String, Pos>,
}

impl Marker {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a marker serialises")
    }

    /// `None` for anything else (an older or foreign value counts as no marker).
    pub fn from_json(text: &str) -> Option<Marker> {
        serde_json::from_str(text).ok()
    }
}

/// This node's role, as the shim's view says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
    /// No primary known (electing, or a witness: never under `run`).
    NoPrimary,
}

/// What the decision looks at.
#[derive(Debug, Clone)]
pub struct Seen<'a> {
    pub role: Role,
    /// The raft term this node is in.
    pub term: u64,
    pub me: u64,
    /// The marker in raft, if any (parsed).
    pub marker: Option<&'a Marker>,
    /// This node's LiteFS positions now.
    pub local: &'a Positions,
    /// The term in which this node's command last exited 0, if any.
    pub migrated_in: Option<u64>,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Run the command (this node is the primary and has not migrated in this term).
    Migrate,
    /// The command succeeded in this term: record the marker (positions read now).
    Record,
    /// Wait; the reason, for the log and the time-out error.
    Wait(String),
    /// The schema is here: the app may start.
    Ready,
}

pub fn decide(s: &Seen<'_>) -> Step {
    match s.role {
        Role::NoPrimary => Step::Wait("no primary is known yet".into()),
        Role::Primary => {
            if s.marker.is_some_and(|m| m.term == s.term && m.node == s.me) {
                Step::Ready
            } else if s.migrated_in == Some(s.term) {
                Step::Record
            } else {
                Step::Migrate
            }
        }
        Role::Replica => match s.marker {
            None => Step::Wait("the primary has not recorded a migration yet".into()),
            Some(m) if m.term != s.term => Step::Wait(format!(
                "the recorded migration is from raft term {} (node {}); waiting for the primary \
                 of term {} to run the migrate command",
                m.term, m.node, s.term
            )),
            Some(m) => match behind(&m.positions, s.local) {
                Some(why) => Step::Wait(why),
                None => Step::Ready,
            },
        },
    }
}

/// Why `local` has not reached `target` yet, if it has not. A database at the same TXID with
/// another checksum has another history (a failover lost writes): not reached.
pub fn behind(target: &BTreeMap<String, Pos>, local: &Positions) -> Option<String> {
    for (db, want) in target {
        match local.get(db) {
            None => return Some(format!("{db} has not replicated here yet")),
            Some(have) if have.txid < want.txid => {
                return Some(format!(
                    "{db} is at TXID {:#x} here, the migration left it at {:#x}",
                    have.txid, want.txid
                ));
            }
            Some(have) if have.txid == want.txid && have.checksum != want.checksum => {
                return Some(format!(
                    "{db} at TXID {:#x} has another checksum here than after the migration \
                     (another history): waiting for a new migration",
                    have.txid
                ));
            }
            Some(_) => {}
        }
    }
    None
}

/// What a finished command means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Exit 0, and this node is still the primary of the term it started in: record.
    Done,
    /// This node lost the primary (or the term moved) while the command ran: its failure, if it
    /// failed, is that (the database refused its writes); look again.
    Again,
    /// A real failure: `run` stops with this status.
    Failed(i32),
}

/// `code`: the command's exit status (shell convention); `started_in`: the term it started in.
pub fn finished(code: i32, started_in: u64, role: Role, term: u64) -> Finished {
    let still = role == Role::Primary && term == started_in;
    match (code, still) {
        (0, true) => Finished::Done,
        (_, false) => Finished::Again,
        (c, true) => Finished::Failed(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(txid: u64, checksum: u64) -> Pos {
        Pos { txid, checksum }
    }

    fn positions(list: &[(&str, Pos)]) -> Positions {
        list.iter().map(|(d, p)| (d.to_string(), *p)).collect()
    }

    fn marker(term: u64, node: u64, list: &[(&str, Pos)]) -> Marker {
        Marker {
            term,
            node,
            positions: positions(list),
        }
    }

    fn seen<'a>(
        role: Role,
        term: u64,
        marker: Option<&'a Marker>,
        local: &'a Positions,
        migrated_in: Option<u64>,
    ) -> Seen<'a> {
        Seen {
            role,
            term,
            me: 2,
            marker,
            local,
            migrated_in,
        }
    }

    #[test]
    fn the_primary_migrates_once_per_term_then_records() {
        let none = Positions::new();
        let s = seen(Role::Primary, 5, None, &none, None);
        assert_eq!(decide(&s), Step::Migrate);
        // Migrated in an older term (this node was primary before): again.
        let s = seen(Role::Primary, 5, None, &none, Some(4));
        assert_eq!(decide(&s), Step::Migrate);
        let s = seen(Role::Primary, 5, None, &none, Some(5));
        assert_eq!(decide(&s), Step::Record);
        let mine = marker(5, 2, &[]);
        assert_eq!(
            decide(&seen(Role::Primary, 5, Some(&mine), &none, Some(5))),
            Step::Ready
        );
        // Another node's marker of an older term: this new primary migrates itself.
        let old = marker(4, 1, &[("app.db", pos(9, 1))]);
        assert_eq!(
            decide(&seen(Role::Primary, 5, Some(&old), &none, None)),
            Step::Migrate
        );
    }

    #[test]
    fn a_replica_waits_for_a_marker_of_this_term_and_its_positions() {
        let m = marker(5, 1, &[("app.db", pos(9, 0xaa))]);
        let behind_ = positions(&[("app.db", pos(8, 0x11))]);
        let there = positions(&[("app.db", pos(9, 0xaa)), ("other.db", pos(1, 1))]);
        let past = positions(&[("app.db", pos(12, 0x33))]);
        let no_primary = decide(&seen(Role::NoPrimary, 5, Some(&m), &there, None));
        assert!(matches!(no_primary, Step::Wait(_)));
        assert!(matches!(
            decide(&seen(Role::Replica, 5, None, &there, None)),
            Step::Wait(w) if w.contains("not recorded")
        ));
        assert!(matches!(
            decide(&seen(Role::Replica, 5, Some(&m), &Positions::new(), None)),
            Step::Wait(w) if w.contains("not replicated")
        ));
        assert!(matches!(
            decide(&seen(Role::Replica, 5, Some(&m), &behind_, None)),
            Step::Wait(w) if w.contains("TXID 0x8")
        ));
        assert_eq!(
            decide(&seen(Role::Replica, 5, Some(&m), &there, None)),
            Step::Ready
        );
        assert_eq!(
            decide(&seen(Role::Replica, 5, Some(&m), &past, None)),
            Step::Ready
        );
        // A marker of an older term (a restarted cluster, a failover): even reached positions
        // do not count, the primary of this term migrates first.
        assert!(matches!(
            decide(&seen(Role::Replica, 6, Some(&m), &there, None)),
            Step::Wait(w) if w.contains("term 5")
        ));
    }

    #[test]
    fn the_same_txid_with_another_checksum_is_another_history() {
        let target = positions(&[("app.db", pos(9, 0xaa))]);
        let other = positions(&[("app.db", pos(9, 0xbb))]);
        assert!(behind(&target, &other).unwrap().contains("another history"));
        assert_eq!(behind(&BTreeMap::new(), &other), None);
    }

    #[test]
    fn a_finished_command() {
        assert_eq!(finished(0, 5, Role::Primary, 5), Finished::Done);
        assert_eq!(finished(1, 5, Role::Primary, 5), Finished::Failed(1));
        // Lost the role or the term meanwhile: whatever the status, look again.
        assert_eq!(finished(1, 5, Role::Replica, 5), Finished::Again);
        assert_eq!(finished(0, 5, Role::Primary, 6), Finished::Again);
        assert_eq!(finished(0, 5, Role::NoPrimary, 5), Finished::Again);
    }

    #[test]
    fn markers_round_trip_and_foreign_values_are_none() {
        let m = marker(3, 1, &[("app.db", pos(2, 0xff))]);
        assert_eq!(Marker::from_json(&m.to_json()), Some(m));
        assert_eq!(Marker::from_json("{\"url\":\"x\"}"), None);
    }
}
