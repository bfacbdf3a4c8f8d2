//! The `raft:` section of litefs-py.yml: the timing knobs of the raft cluster.
//!
//! The trade-off, in one place (docs/configuration.md says the same to operators):
//! - `heartbeat-interval`: how often the leader proves it is alive. Shorter = faster detection
//!   of a dead or cut-off leader, more RPCs (each is one small HTTP request per follower).
//! - `election-timeout-max` is also the lease a follower grants its leader (openraft 0.10 ties
//!   the two): it refuses every vote for that long after the last heartbeat it accepted, and
//!   runs for leader (pre-vote first) only after a further random time in
//!   `[election-timeout-min, election-timeout-max)`, drawn per election so that two survivors do
//!   not keep splitting their votes. A dead leader is therefore replaced `max + [min, max)` after
//!   its last heartbeat: `[700, 800)` ms with the defaults, plus a few ms of election. Shorter =
//!   faster failover; too short = needless elections whenever heartbeats are late (a slow fsync,
//!   a busy host, a congested network); a narrower range = more split votes (each costs one more
//!   timeout).
//! - The primary lease this node claims is derived, not configured: a leader says `primary`
//!   only while its last quorum acknowledgement is younger than `election-timeout-min` minus one
//!   heartbeat interval. Followers refuse to elect anyone else for `election-timeout-max` after
//!   their last heartbeat, so a cut-off leader stops saying `primary` well before a successor can
//!   exist (see [`RaftTiming::lease_bound`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// Bounds that keep the knobs in a range where the lease arithmetic holds and a LAN can keep up.
const MIN_HEARTBEAT: Duration = Duration::from_millis(20);
const MAX_HEARTBEAT: Duration = Duration::from_secs(5);
const MAX_ELECTION: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RaftTiming {
    /// How often the leader sends heartbeats.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A follower that heard nothing from the leader for `election-timeout-max` (its lease of
    /// the leader) plus a random time in `[election-timeout-min, election-timeout-max)` starts an
    /// election.
    #[serde(default = "default_election_min", with = "humantime_serde")]
    pub election_timeout_min: Duration,
    #[serde(default = "default_election_max", with = "humantime_serde")]
    pub election_timeout_max: Duration,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat_interval: default_heartbeat(),
            election_timeout_min: default_election_min(),
            election_timeout_max: default_election_max(),
        }
    }
}

// Failover under 1 s on a LAN: a dead leader is replaced 700–800 ms after its last heartbeat
// (docs/decisions.md, "Raft timing defaults"; measured with `litefs-py-bench failover`).
fn default_heartbeat() -> Duration {
    Duration::from_millis(100)
}

fn default_election_min() -> Duration {
    Duration::from_millis(300)
}

// Not 600 ms: openraft 0.10 campaigns only after lease (= max) + [min, max), so 600 ms meant
// 0.9–1.2 s. With 400 ms a follower still waits at least 700 ms (7 heartbeats) of silence, the
// spread is 100 ms (a split vote needs both survivors to campaign within about one RPC of each
// other), and 200 ms lie between the end of a cut-off leader's claim and the earliest successor.
fn default_election_max() -> Duration {
    Duration::from_millis(400)
}

impl RaftTiming {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let hb = self.heartbeat_interval;
        if hb < MIN_HEARTBEAT || hb > MAX_HEARTBEAT {
            return Err(invalid(
                "raft.heartbeat-interval",
                format!("{hb:?} is outside {MIN_HEARTBEAT:?}..={MAX_HEARTBEAT:?}"),
            ));
        }
        if !hb.as_nanos().is_multiple_of(1_000_000) {
            return Err(invalid(
                "raft.heartbeat-interval",
                format!("{hb:?}: use whole milliseconds"),
            ));
        }
        // Three heartbeats per minimum timeout: one late heartbeat must not start an election,
        // and the derived lease (min - one heartbeat) must outlast a heartbeat round trip.
        if self.election_timeout_min < hb * 3 {
            return Err(invalid(
                "raft.election-timeout-min",
                format!(
                    "{:?} must be at least 3 x raft.heartbeat-interval ({:?})",
                    self.election_timeout_min,
                    hb * 3
                ),
            ));
        }
        if self.election_timeout_max <= self.election_timeout_min {
            return Err(invalid(
                "raft.election-timeout-max",
                format!(
                    "{:?} must be greater than raft.election-timeout-min ({:?}): the spread is what keeps two candidates from splitting the vote forever",
                    self.election_timeout_max, self.election_timeout_min
                ),
            ));
        }
        if self.election_timeout_max > MAX_ELECTION {
            return Err(invalid(
                "raft.election-timeout-max",
                format!("{:?} is above {MAX_ELECTION:?}", self.election_timeout_max),
            ));
        }
        for (key, d) in [
            ("raft.election-timeout-min", self.election_timeout_min),
            ("raft.election-timeout-max", self.election_timeout_max),
        ] {
            if !d.as_nanos().is_multiple_of(1_000_000) {
                return Err(invalid(key, format!("{d:?}: use whole milliseconds")));
            }
        }
        Ok(())
    }

    /// How long after its last quorum acknowledgement a leader may still call itself primary.
    ///
    /// Followers reject every vote for `election-timeout-max` after the last heartbeat they
    /// accepted, and the ack timestamp is the heartbeat's *send* time, so no successor can be
    /// elected before `ack + election-timeout-max`. We stop at `ack + election-timeout-min -
    /// heartbeat-interval`: the margin (at least one heartbeat, plus the min/max spread) absorbs
    /// the publishing tick and scheduling delays.
    pub fn lease_bound(&self) -> Duration {
        self.election_timeout_min - self.heartbeat_interval
    }

    /// How often the published view is re-evaluated even when raft reports nothing new:
    /// freshness is a matter of time passing, so a tick small against the lease margin.
    pub fn publish_tick(&self) -> Duration {
        (self.heartbeat_interval / 5).clamp(Duration::from_millis(5), Duration::from_millis(20))
    }

    /// A follower believes in a leader it heard from within this window.
    pub fn leader_contact_window(&self) -> Duration {
        self.election_timeout_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const BASE: &str = "
node:
  id: 1
  hostname: node-a
  raft-addr: 127.0.0.1:20301
  http-addr: 127.0.0.1:20311
";

    fn parse(raft: &str) -> Result<Config, String> {
        Config::parse(&format!("{BASE}raft:\n{raft}")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_derived_values() {
        let c = Config::parse(BASE).unwrap();
        assert_eq!(c.raft, RaftTiming::default());
        assert_eq!(c.raft.lease_bound(), Duration::from_millis(200));
        assert!(c.raft.publish_tick() <= c.raft.heartbeat_interval);
        // A dead leader is replaced within max + [min, max) of its last heartbeat (openraft's
        // lease is election-timeout-max): the defaults must keep that under a second.
        assert!(c.raft.election_timeout_max * 2 < Duration::from_millis(900));
        assert!(c.raft.election_timeout_max > c.raft.lease_bound() + c.raft.heartbeat_interval);
        let c = parse("  heartbeat-interval: 50ms\n  election-timeout-min: 150ms\n  election-timeout-max: 300ms\n").unwrap();
        assert_eq!(c.raft.lease_bound(), Duration::from_millis(100));
        assert_eq!(c.raft.publish_tick(), Duration::from_millis(10));
    }

    #[test]
    fn errors_name_the_key() {
        assert!(
            parse("  heartbeat-interval: 5ms\n")
                .unwrap_err()
                .starts_with("raft.heartbeat-interval:")
        );
        assert!(
            parse("  election-timeout-min: 200ms\n")
                .unwrap_err()
                .starts_with("raft.election-timeout-min: 200ms must be at least 3 x")
        );
        assert!(
            parse("  election-timeout-max: 300ms\n")
                .unwrap_err()
                .starts_with("raft.election-timeout-max:")
        );
        assert!(
            parse("  heartbeat: 1s\n")
                .unwrap_err()
                .contains("unknown field `heartbeat`")
        );
        assert!(
            parse("  heartbeat-interval: 100500us\n")
                .unwrap_err()
                .contains("whole milliseconds")
        );
    }
}
