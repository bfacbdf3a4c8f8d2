//! Every node must run with the same timing settings, and nothing else makes them agree: each
//! node's config is its own file. The safety arguments compare one node's settings with
//! another's: a leader's `primary` claim (its `election-timeout-min` − `heartbeat-interval`) must
//! end before the followers' vote refusal (their `election-timeout-max`), and a new leader waits
//! out the *old* primary's LiteFS lease with its *own* `lease.ttl`. So every raft RPC, request
//! and answer, carries the sender's settings ([`HEADER_TIMING`]), and a node that sees other
//! values logs an error and shows them in `status` (rate-limited; a rolling change of the
//! settings passes through such a state, so it is not refused).

use std::time::Duration;

use crate::config::RaftTiming;

/// The sender's timing settings on every raft RPC and its answer.
pub const HEADER_TIMING: &str = "x-litefs-py-timing";

/// The settings that must match across nodes. `lease_ttl` is `None` on a witness (no LiteFS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimingStamp {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    pub lease_ttl: Option<Duration>,
}

const KEYS: [&str; 4] = [
    "raft.heartbeat-interval",
    "raft.election-timeout-min",
    "raft.election-timeout-max",
    "lease.ttl",
];

impl TimingStamp {
    pub fn new(raft: &RaftTiming, lease_ttl: Option<Duration>) -> TimingStamp {
        TimingStamp {
            heartbeat: raft.heartbeat_interval,
            election_min: raft.election_timeout_min,
            election_max: raft.election_timeout_max,
            lease_ttl,
        }
    }

    fn values(&self) -> [Option<Duration>; 4] {
        [
            Some(self.heartbeat),
            Some(self.election_min),
            Some(self.election_max),
            self.lease_ttl,
        ]
    }

    /// `key=<ms>` pairs joined by `,` (a witness leaves `lease.ttl` out).
    pub fn header(&self) -> String {
        KEYS.iter()
            .zip(self.values())
            .filter_map(|(k, v)| v.map(|v| format!("{k}={}", v.as_millis())))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `None` for anything that is not a [`TimingStamp::header`] with the three raft values.
    pub fn parse(s: &str) -> Option<TimingStamp> {
        let mut values = [None; 4];
        for pair in s.split(',') {
            let (k, v) = pair.split_once('=')?;
            let i = KEYS.iter().position(|key| *key == k)?;
            values[i] = Some(Duration::from_millis(v.parse().ok()?));
        }
        Some(TimingStamp {
            heartbeat: values[0]?,
            election_min: values[1]?,
            election_max: values[2]?,
            lease_ttl: values[3],
        })
    }

    /// What differs between this node's settings and `theirs`, one entry per setting
    /// (`lease.ttl` only when both have one).
    pub fn differences(&self, theirs: &TimingStamp) -> Vec<String> {
        KEYS.iter()
            .zip(self.values().into_iter().zip(theirs.values()))
            .filter_map(|(k, pair)| match pair {
                (Some(a), Some(b)) if a != b => Some(format!("{k} {a:?} here, {b:?} there")),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn stamp(ttl: Option<u64>) -> TimingStamp {
        TimingStamp {
            heartbeat: ms(100),
            election_min: ms(300),
            election_max: ms(400),
            lease_ttl: ttl.map(ms),
        }
    }

    #[test]
    fn the_header_round_trips() {
        let s = stamp(Some(2000));
        assert_eq!(
            s.header(),
            "raft.heartbeat-interval=100,raft.election-timeout-min=300,raft.election-timeout-max=400,lease.ttl=2000"
        );
        assert_eq!(TimingStamp::parse(&s.header()), Some(s));
        // A witness has no lease.
        let w = stamp(None);
        assert!(!w.header().contains("lease.ttl"));
        assert_eq!(TimingStamp::parse(&w.header()), Some(w));
        for bad in [
            "",
            "raft.heartbeat-interval=100",
            "raft.heartbeat-interval=x,raft.election-timeout-min=300,raft.election-timeout-max=400",
            "nonsense=1,raft.heartbeat-interval=100,raft.election-timeout-min=300,raft.election-timeout-max=400",
        ] {
            assert_eq!(TimingStamp::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn differences_name_each_setting() {
        let a = stamp(Some(2000));
        assert!(a.differences(&a).is_empty());
        // A witness is compared on raft timing only.
        assert!(a.differences(&stamp(None)).is_empty());
        let b = TimingStamp {
            election_max: ms(600),
            lease_ttl: Some(ms(10_000)),
            ..a
        };
        assert_eq!(
            a.differences(&b),
            vec![
                "raft.election-timeout-max 400ms here, 600ms there".to_string(),
                "lease.ttl 2s here, 10s there".to_string(),
            ]
        );
    }
}
