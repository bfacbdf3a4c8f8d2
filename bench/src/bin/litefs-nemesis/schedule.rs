//! The fault schedule: a pure function of the seed and the flags. Every step draws the same
//! numbers whatever the cluster does, so a seed gives the same sequence of faults (kinds,
//! whether each aims at the primary or at which node, pauses, slow-disk rates) on every run;
//! only the cluster's own timing, and so which node is primary when a step aims at it, varies.
//! The first steps are every kind once, in a seeded order, so that even a short run (CI) covers
//! them all.

use std::time::Duration;

use crate::faults::Kind;

/// splitmix64: reproducible from the seed without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo) + 1))
    }
}

/// One drawn fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub kind: Kind,
    /// Aim at the node that is primary when the step runs (70 %), if there is one.
    pub at_primary: bool,
    /// Otherwise (and when no node is primary) this one, an index into the node ids.
    pub other: usize,
    /// The node a handoff is asked through, an index into the node ids.
    pub via: usize,
    /// How long a SIGSTOP, freeze, partition or slow disk lasts.
    pub pause: Duration,
    /// The slow disk's reads and writes a second.
    pub iops: u64,
    /// The pause after the fault's aftermath.
    pub quiet: Duration,
}

pub struct Schedule {
    rng: Rng,
    kinds: Vec<Kind>,
    /// The first round: every kind once, in a seeded order (consumed from the back).
    first_round: Vec<Kind>,
    nodes: usize,
    max_pause: Duration,
}

impl Schedule {
    pub fn new(seed: u64, kinds: &[Kind], nodes: usize, max_pause: Duration) -> Schedule {
        let mut rng = Rng::new(seed);
        let mut first_round = kinds.to_vec();
        // Fisher-Yates.
        for i in (1..first_round.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            first_round.swap(i, j);
        }
        first_round.reverse();
        Schedule {
            rng,
            kinds: kinds.to_vec(),
            first_round,
            nodes,
            max_pause,
        }
    }

    /// Whether every kind has been drawn once.
    pub fn first_round_done(&self) -> bool {
        self.first_round.is_empty()
    }

    pub fn next_step(&mut self) -> Step {
        let r = &mut self.rng;
        let drawn = self.kinds[r.below(self.kinds.len() as u64) as usize];
        let kind = self.first_round.pop().unwrap_or(drawn);
        let max = (self.max_pause.as_millis() as u64).max(1000);
        Step {
            kind,
            at_primary: r.below(10) < 7,
            other: r.below(self.nodes as u64) as usize,
            via: r.below(self.nodes as u64) as usize,
            pause: r.millis(1000, max),
            iops: 2 + r.below(19),
            quiet: r.millis(1000, 4000),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(seed: u64, kinds: &[Kind], n: usize) -> Vec<Step> {
        let mut s = Schedule::new(seed, kinds, 3, Duration::from_secs(8));
        (0..n).map(|_| s.next_step()).collect()
    }

    #[test]
    fn a_seed_draws_the_same_schedule_every_time() {
        let a = steps(42, &Kind::ALL, 200);
        assert_eq!(a, steps(42, &Kind::ALL, 200));
        assert_ne!(a, steps(43, &Kind::ALL, 200));
    }

    #[test]
    fn the_first_round_has_every_kind_once_then_all_kinds_come_up() {
        for seed in 0..50 {
            let s = steps(seed, &Kind::ALL, 300);
            let mut first: Vec<Kind> = s[..Kind::ALL.len()].iter().map(|s| s.kind).collect();
            first.sort();
            assert_eq!(first, Kind::ALL.to_vec(), "seed {seed}");
            for k in Kind::ALL {
                assert!(
                    s[Kind::ALL.len()..].iter().filter(|s| s.kind == k).count() > 10,
                    "seed {seed}: {k:?}"
                );
            }
        }
    }

    #[test]
    fn draws_stay_in_their_ranges() {
        for st in steps(7, &[Kind::Partition, Kind::SlowDisk], 500) {
            assert!(st.other < 3 && st.via < 3);
            assert!(st.pause >= Duration::from_secs(1) && st.pause <= Duration::from_secs(8));
            assert!((2..=20).contains(&st.iops));
            assert!(st.quiet >= Duration::from_secs(1) && st.quiet <= Duration::from_secs(4));
            assert!(matches!(st.kind, Kind::Partition | Kind::SlowDisk));
        }
    }
}
