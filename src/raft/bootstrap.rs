//! Who creates the cluster, decided from what the peers answer (`GET /raft/hello`).
//!
//! Safe by construction, not by the operator remembering which node says `bootstrap: true`:
//! a node creates the cluster only after a majority of the voters (itself included) said they
//! belong to no cluster, and none said it does. A cluster that ever elected a leader committed
//! its membership on a majority, and two majorities share a member, so a node re-created with
//! an empty volume always hears of the cluster it belonged to and joins it instead of starting
//! a second one. With `auto`, only the lowest-id data node may create it, so two nodes never
//! create one each (docs/decisions.md, "One config for every node").

use std::collections::BTreeMap;

use super::NodeId;
use crate::config::Bootstrap;

/// What a peer said about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// It belongs to no cluster yet.
    Uninitialized { witness: bool },
    /// It belongs to a cluster.
    Initialized,
    /// No answer (down, starting, or too old to say).
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Create the cluster with every configured peer as a voter.
    Initialize,
    /// A cluster exists or another node creates it: wait for its leader to reach this node.
    Join(String),
    /// Not enough is known yet: ask again.
    Wait(String),
}

/// `answers` has every configured peer except `me`.
pub fn decide(
    me: NodeId,
    me_witness: bool,
    mode: Bootstrap,
    answers: &BTreeMap<NodeId, Answer>,
) -> Decision {
    if let Some(id) = answers
        .iter()
        .find_map(|(id, a)| (*a == Answer::Initialized).then_some(*id))
    {
        return Decision::Join(format!(
            "node {id} already belongs to a cluster: waiting for its leader to reach this node"
        ));
    }
    match mode {
        Bootstrap::Never => {
            return Decision::Join(
                "cluster.bootstrap is false: waiting for the leader to add this node".into(),
            );
        }
        Bootstrap::This => {}
        Bootstrap::Auto => {
            if me_witness {
                return Decision::Join(
                    "a witness never creates the cluster: waiting for the lowest-id data node"
                        .into(),
                );
            }
            for (id, a) in answers.range(..me) {
                match a {
                    Answer::Uninitialized { witness: true } => {}
                    Answer::Uninitialized { witness: false } => {
                        return Decision::Join(format!(
                            "node {id} has the lowest id and creates the cluster (cluster.bootstrap: auto)"
                        ));
                    }
                    Answer::Unknown | Answer::Initialized => {
                        return Decision::Wait(format!(
                            "node {id} has a lower id and has not answered: if it is a data node, it creates the cluster"
                        ));
                    }
                }
            }
        }
    }
    let voters = answers.len() + 1;
    let empty = 1 + answers
        .values()
        .filter(|a| matches!(a, Answer::Uninitialized { .. }))
        .count();
    if empty * 2 > voters {
        Decision::Initialize
    } else {
        Decision::Wait(format!(
            "{empty} of {voters} voters (this node included) said they belong to no cluster; \
             a majority must, before the cluster is created"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: Answer = Answer::Uninitialized { witness: false };
    const WITNESS: Answer = Answer::Uninitialized { witness: true };

    fn peers(list: &[(NodeId, Answer)]) -> BTreeMap<NodeId, Answer> {
        list.iter().copied().collect()
    }

    #[test]
    fn an_existing_cluster_always_wins() {
        for mode in [Bootstrap::This, Bootstrap::Auto, Bootstrap::Never] {
            let d = decide(
                1,
                false,
                mode,
                &peers(&[(2, Answer::Initialized), (3, DATA)]),
            );
            assert!(
                matches!(d, Decision::Join(ref r) if r.contains("node 2 already")),
                "{d:?}"
            );
        }
    }

    #[test]
    fn a_majority_must_have_answered_empty() {
        let d = decide(
            1,
            false,
            Bootstrap::This,
            &peers(&[(2, Answer::Unknown), (3, Answer::Unknown)]),
        );
        assert!(
            matches!(d, Decision::Wait(ref r) if r.contains("1 of 3")),
            "{d:?}"
        );
        assert_eq!(
            decide(
                1,
                false,
                Bootstrap::This,
                &peers(&[(2, DATA), (3, Answer::Unknown)])
            ),
            Decision::Initialize
        );
        // Five voters: three must be empty.
        let five = peers(&[
            (2, DATA),
            (3, Answer::Unknown),
            (4, Answer::Unknown),
            (5, Answer::Unknown),
        ]);
        assert!(matches!(
            decide(1, false, Bootstrap::Auto, &five),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn auto_leaves_it_to_the_lowest_data_node() {
        assert_eq!(
            decide(
                1,
                false,
                Bootstrap::Auto,
                &peers(&[(2, DATA), (3, Answer::Unknown)])
            ),
            Decision::Initialize
        );
        let d = decide(2, false, Bootstrap::Auto, &peers(&[(1, DATA), (3, DATA)]));
        assert!(
            matches!(d, Decision::Join(ref r) if r.contains("node 1 has the lowest id")),
            "{d:?}"
        );
        let d = decide(
            2,
            false,
            Bootstrap::Auto,
            &peers(&[(1, Answer::Unknown), (3, DATA)]),
        );
        assert!(
            matches!(d, Decision::Wait(ref r) if r.contains("node 1 has a lower id")),
            "{d:?}"
        );
        // A witness with the lowest id passes the job to the next data node.
        assert_eq!(
            decide(
                2,
                false,
                Bootstrap::Auto,
                &peers(&[(1, WITNESS), (3, Answer::Unknown)])
            ),
            Decision::Initialize
        );
        assert!(matches!(
            decide(1, true, Bootstrap::Auto, &peers(&[(2, DATA), (3, DATA)])),
            Decision::Join(_)
        ));
    }

    #[test]
    fn exactly_one_node_creates_the_cluster_whatever_the_answers() {
        // Every combination of answers three data-or-witness nodes can give one another: at most
        // one of them decides to initialize from any consistent set of answers.
        let kinds = [DATA, Answer::Unknown];
        for w1 in [false, true] {
            for a in kinds {
                for b in kinds {
                    for c in kinds {
                        let ans = |id: NodeId, w: bool| -> Answer {
                            match id {
                                1 if a == DATA => Answer::Uninitialized { witness: w },
                                2 if b == DATA => DATA,
                                3 if c == DATA => DATA,
                                _ => Answer::Unknown,
                            }
                        };
                        let deciders: Vec<NodeId> = (1..=3)
                            .filter(|me| {
                                let others = (1..=3)
                                    .filter(|id| id != me)
                                    .map(|id| (id, ans(id, w1)))
                                    .collect();
                                let me_witness = *me == 1 && w1;
                                decide(*me, me_witness, Bootstrap::Auto, &others)
                                    == Decision::Initialize
                            })
                            .collect();
                        assert!(
                            deciders.len() <= 1,
                            "{deciders:?} (w1 {w1}, {a:?} {b:?} {c:?})"
                        );
                    }
                }
            }
        }
    }
}
