//! How long a peer has not answered, for the log: peers start in any order and restart one by
//! one in a rolling update, so a peer that does not answer for a while is normal operation
//! (logged at debug). Only a peer silent for longer than [`QUIET`] is worth a warning, which
//! names it and says what to check, and is repeated at most every [`REPEAT`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::NodeId;

/// How long a peer may not answer before it is warned about: a node's start (raft, LiteFS,
/// the shim) or a restart takes seconds, a pod's start in Kubernetes a little more.
pub const QUIET: Duration = Duration::from_secs(30);
/// How often the warning about a peer that stays silent is repeated.
pub const REPEAT: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Silence {
    /// Per peer: failing since, and when it was last warned about.
    peers: Mutex<HashMap<NodeId, (Instant, Option<Instant>)>>,
}

impl Silence {
    /// A call to `peer` got no answer at `now`: `Some(how long it has been silent)` when that
    /// is to be warned about now, `None` when it is to be logged at debug only.
    pub fn failed(&self, peer: NodeId, now: Instant) -> Option<Duration> {
        let mut peers = self.peers.lock();
        let (since, warned) = peers.entry(peer).or_insert((now, None));
        let silent = now.saturating_duration_since(*since);
        if silent < QUIET || warned.is_some_and(|w| now.saturating_duration_since(w) < REPEAT) {
            return None;
        }
        *warned = Some(now);
        Some(silent)
    }

    /// `peer` answered: it is silent no more (a later silence is quiet again at first).
    pub fn answered(&self, peer: NodeId) {
        let mut peers = self.peers.lock();
        if !peers.is_empty() {
            peers.remove(&peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_at_first_then_one_warning_then_every_repeat() {
        let s = Silence::default();
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert_eq!(s.failed(1, at(0)), None);
        assert_eq!(s.failed(1, at(29)), None, "still within QUIET");
        assert_eq!(s.failed(2, at(29)), None, "each peer on its own");
        assert_eq!(s.failed(1, at(30)), Some(Duration::from_secs(30)));
        assert_eq!(s.failed(1, at(31)), None, "said once");
        assert_eq!(s.failed(1, at(89)), None);
        assert_eq!(s.failed(1, at(90)), Some(Duration::from_secs(90)));
        // It answered: the next silence is quiet again.
        s.answered(1);
        assert_eq!(s.failed(1, at(100)), None);
        assert_eq!(s.failed(1, at(129)), None);
        assert_eq!(s.failed(1, at(130)), Some(Duration::from_secs(30)));
        assert_eq!(s.failed(2, at(59)), Some(Duration::from_secs(30)));
    }
}
