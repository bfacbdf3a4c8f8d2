//! A double-primary sampler: on its own thread, for a whole test, it asks which nodes say they
//! are primary, every few ms, and records every round in which two or more did at once.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest a sampling round may take and still be judged as one instant.
pub const MAX_ROUND: Duration = Duration::from_millis(250);

pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(u64, Vec<String>)>>,
}

impl Sampler {
    /// Every shim's `.role` every 2 ms (a dead or restarting node's file is missing or
    /// unreadable: not primary).
    pub fn roles(mounts: Vec<(u64, PathBuf)>) -> Sampler {
        let mut buf = String::new();
        Sampler::every(Duration::from_millis(2), move || {
            mounts
                .iter()
                .filter(|(_, mnt)| {
                    buf.clear();
                    File::open(mnt.join(".role"))
                        .and_then(|mut f| f.read_to_string(&mut buf))
                        .is_ok()
                        && buf == "primary\n"
                })
                .map(|(id, _)| *id)
                .collect()
        })
    }

    /// Every LiteFS's `/info` every 3 ms, by its HTTP address (one that does not answer, dead
    /// or restarting, is not primary).
    pub fn litefs(addrs: Vec<(u64, String)>) -> Sampler {
        Sampler::every(Duration::from_millis(3), move || {
            addrs
                .iter()
                .filter(|(_, a)| crate::litefs::is_primary(a) == Some(true))
                .map(|(id, _)| *id)
                .collect()
        })
    }

    /// `primaries` (the ids that say primary right now), then a pause of `pause`, until stopped.
    pub fn every(
        pause: Duration,
        mut primaries: impl FnMut() -> Vec<u64> + Send + 'static,
    ) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut rounds = 0u64;
            let mut violations = Vec::new();
            let mut slow = 0u64;
            while !s.load(Ordering::Relaxed) {
                let started = Instant::now();
                let p = primaries();
                let took = started.elapsed();
                // A round's answers count as one instant only if the round was quick: a read
                // held up (a `.role` opened just before its daemon was stopped arrives after the
                // SIGCONT with the content of its open) describes a state from long before the
                // others. Real overlaps last longer than this and show in the quick rounds.
                if took > MAX_ROUND {
                    slow += 1;
                } else if p.len() > 1 && violations.len() < 20 {
                    violations.push(format!(
                        "round {rounds}: {p:?} all said primary (the round took {took:?})"
                    ));
                }
                rounds += 1;
                std::thread::sleep(pause);
            }
            if slow > 0 {
                eprintln!("sampler: {slow} of {rounds} rounds took over {MAX_ROUND:?}, not judged");
            }
            (rounds, violations)
        });
        Sampler {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops it; returns (rounds, violations seen).
    pub fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_rounds_with_two_primaries() {
        let mut n = 0u64;
        let s = Sampler::every(Duration::from_millis(1), move || {
            n += 1;
            if n == 5 { vec![1, 2] } else { vec![1] }
        });
        std::thread::sleep(Duration::from_millis(100));
        let (rounds, violations) = s.finish();
        assert!(rounds > 5, "{rounds}");
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("[1, 2]"));
    }

    #[test]
    fn a_slow_round_is_not_judged() {
        let mut n = 0u64;
        let s = Sampler::every(Duration::from_millis(1), move || {
            n += 1;
            if n == 3 {
                std::thread::sleep(MAX_ROUND + Duration::from_millis(20));
                vec![1, 2]
            } else {
                vec![2]
            }
        });
        std::thread::sleep(MAX_ROUND + Duration::from_millis(200));
        let (rounds, violations) = s.finish();
        assert!(rounds > 3, "{rounds}");
        assert!(violations.is_empty(), "{violations:?}");
    }
}
