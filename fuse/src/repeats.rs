//! Repeated identical request failures, logged once and then counted: after LiteFS dies, every
//! `getattr` the app sends fails with ENOTCONN, hundreds a second, and a log that repeats one
//! line that often hides everything else. The first failure of a kind is logged; those that
//! follow within [`EVERY`] are counted, and the next one after it is logged with the count.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often a failure that keeps repeating is logged again, with how many were not.
pub const EVERY: Duration = Duration::from_secs(10);

/// What to do with one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` identical ones were not logged since the last one that was.
    Log { suppressed: u64 },
    /// Count it only.
    Quiet,
}

/// A kind of failure: the request's name and the errno.
type Kind = (&'static str, i32);

/// Failures by kind: when each was last logged, and how many were counted since.
#[derive(Debug, Default)]
pub struct Repeats {
    seen: Mutex<HashMap<Kind, (Instant, u64)>>,
}

impl Repeats {
    pub fn check(&self, op: &'static str, errno: i32, now: Instant) -> Verdict {
        let mut seen = self.seen.lock();
        match seen.get_mut(&(op, errno)) {
            Some((logged, count)) if now.saturating_duration_since(*logged) < EVERY => {
                *count += 1;
                Verdict::Quiet
            }
            Some((logged, count)) => {
                let suppressed = std::mem::take(count);
                *logged = now;
                Verdict::Log { suppressed }
            }
            None => {
                seen.insert((op, errno), (now, 0));
                Verdict::Log { suppressed: 0 }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_logged_then_a_count_every_interval() {
        let r = Repeats::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(
            r.check("getattr", 107, at(0)),
            Verdict::Log { suppressed: 0 }
        );
        for i in 1..=500 {
            assert_eq!(r.check("getattr", 107, at(i * 10)), Verdict::Quiet);
        }
        // Another request or another errno is another kind.
        assert_eq!(
            r.check("lookup", 107, at(5)),
            Verdict::Log { suppressed: 0 }
        );
        assert_eq!(r.check("getattr", 5, at(5)), Verdict::Log { suppressed: 0 });
        assert_eq!(
            r.check("getattr", 107, at(10_000)),
            Verdict::Log { suppressed: 500 }
        );
        assert_eq!(r.check("getattr", 107, at(10_001)), Verdict::Quiet);
        // After a quiet spell the next one is logged at once, with what was counted.
        assert_eq!(
            r.check("getattr", 107, at(60_000)),
            Verdict::Log { suppressed: 1 }
        );
    }
}
