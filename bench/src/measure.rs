//! What a measurement is run against and what it returns, plus the timing primitives every
//! workload shares: time-bounded loops, per-operation latency samples, and FUSE request counts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::sys;

/// Set by SIGINT/SIGTERM; every loop polls it so that an interrupted run still cleans up.
pub fn stop_flag() -> &'static Arc<AtomicBool> {
    static STOP: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    STOP.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

pub fn check_stop() -> Result<()> {
    if stop_flag().load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// The three columns of a section: the baseline (a plain dir, or LiteFS) and the shim over it
/// in each data-path mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Col {
    Base = 0,
    Passthrough = 1,
    Symlink = 2,
}

/// Where one column's measurements run.
#[derive(Debug, Clone)]
pub struct Target {
    pub col: Col,
    /// Distinguishes this column's files from the others' in the shared lower dir.
    pub tag: &'static str,
    /// Where the workload opens its files (the lower dir itself, or the shim's mountpoint).
    pub root: PathBuf,
    /// Where fixtures are prepared, bypassing the shim, so that symlink mode sees existing
    /// regular files (as an app's database would be) rather than files it just created.
    pub lower: PathBuf,
    /// The shim daemon, whose FUSE requests are counted.
    pub shim_pid: Option<u32>,
}

impl Target {
    pub fn at(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn prep(&self, name: &str) -> PathBuf {
        self.lower.join(name)
    }

    pub fn is_shim(&self) -> bool {
        self.col != Col::Base
    }
}

/// Sizes and durations; `--quick` shrinks them all.
#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    /// Each throughput loop.
    pub loop_time: Duration,
    /// Each latency-sampling loop.
    pub sample_time: Duration,
    /// Upper bound for loops whose natural end is a count (sequential I/O, files, cold reads).
    pub cap: Duration,
    pub db_bytes: u64,
    pub seq_bytes: u64,
    pub files: usize,
}

impl Settings {
    pub fn new(quick: bool) -> Self {
        if quick {
            Settings {
                quick,
                loop_time: Duration::from_secs(1),
                sample_time: Duration::from_millis(250),
                cap: Duration::from_secs(10),
                db_bytes: 10 << 20,
                seq_bytes: 64 << 20,
                files: 1_000,
            }
        } else {
            Settings {
                quick,
                loop_time: Duration::from_secs(3),
                sample_time: Duration::from_secs(1),
                cap: Duration::from_secs(30),
                db_bytes: 100 << 20,
                seq_bytes: 1 << 30,
                files: 10_000,
            }
        }
    }
}

/// How a row's numbers compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Throughput: higher is better; ratio shown.
    Rate,
    /// Latency: lower is better; ratio shown.
    Latency,
    /// A fact (memory, an added cost): no ratio.
    Info,
}

#[derive(Debug, Clone)]
pub struct Metric {
    pub key: String,
    pub name: String,
    pub unit: &'static str,
    pub kind: Kind,
    pub value: f64,
    /// FUSE requests the shim daemon received per operation (shim columns only).
    pub req_per_op: Option<f64>,
    /// (slowest, fastest) slice of a throughput loop.
    pub spread: Option<(f64, f64)>,
}

impl Metric {
    pub fn new(key: &str, name: &str, unit: &'static str, kind: Kind, value: f64) -> Self {
        Metric {
            key: key.into(),
            name: name.into(),
            unit,
            kind,
            value,
            req_per_op: None,
            spread: None,
        }
    }

    /// A throughput metric from a timed loop, with its slice spread.
    pub fn rate(key: &str, name: &str, unit: &'static str, done: &Done) -> Self {
        Metric {
            spread: done.spread(),
            ..Metric::new(key, name, unit, Kind::Rate, done.per_sec())
        }
    }

    pub fn with_reqs(mut self, r: Option<f64>) -> Self {
        self.req_per_op = r;
        self
    }
}

/// Counts the shim daemon's FUSE requests across a measured stretch.
pub struct ReqCounter {
    pid: Option<u32>,
    start: Option<u64>,
}

impl ReqCounter {
    pub fn start(t: &Target) -> Self {
        ReqCounter {
            pid: t.shim_pid,
            start: t.shim_pid.and_then(sys::proc_syscr),
        }
    }

    pub fn per_op(&self, ops: u64) -> Option<f64> {
        let (now, start) = (sys::proc_syscr(self.pid?)?, self.start?);
        (ops > 0).then(|| now.saturating_sub(start) as f64 / ops as f64)
    }
}

/// A throughput loop is timed in this many slices as well, so that a run whose rate swings
/// (scheduling, CPU wake-ups) shows it instead of hiding it in one average.
const SLICES: u32 = 6;

#[derive(Debug, Clone)]
pub struct Done {
    pub ops: u64,
    pub elapsed: Duration,
    /// Rates of the complete slices, in ops/s.
    pub slice_rates: Vec<f64>,
}

impl Done {
    pub fn per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// (slowest, fastest) slice rate, when at least two slices completed.
    pub fn spread(&self) -> Option<(f64, f64)> {
        if self.slice_rates.len() < 2 {
            return None;
        }
        let min = self
            .slice_rates
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let max = self.slice_rates.iter().copied().fold(0.0, f64::max);
        Some((min, max))
    }
}

/// Calls `op(i)` until `limit` has passed or `max_ops` calls were made, whichever is first.
pub fn timed_loop(
    limit: Duration,
    max_ops: u64,
    mut op: impl FnMut(u64) -> Result<()>,
) -> Result<Done> {
    let start = Instant::now();
    let slice = limit / SLICES;
    let (mut ops, mut mark_ops, mut mark) = (0, 0, start);
    let mut slice_rates = Vec::new();
    while ops < max_ops {
        op(ops)?;
        ops += 1;
        if ops % 64 == 0 {
            check_stop()?;
        }
        let now = Instant::now();
        if now - mark >= slice {
            slice_rates.push((ops - mark_ops) as f64 / (now - mark).as_secs_f64());
            (mark_ops, mark) = (ops, now);
        }
        if now - start >= limit {
            break;
        }
    }
    Ok(Done {
        ops,
        elapsed: start.elapsed(),
        slice_rates,
    })
}

/// Times each call of `op` for `limit` (at most `max` samples); returns µs, sorted.
pub fn samples(
    limit: Duration,
    max: usize,
    mut op: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    // The first calls fault in code and caches on both sides; they are not the steady state.
    for _ in 0..50 {
        op()?;
    }
    let start = Instant::now();
    let mut out = Vec::with_capacity(max.min(1 << 20));
    while out.len() < max && start.elapsed() < limit {
        let t = Instant::now();
        op()?;
        out.push(t.elapsed().as_nanos() as f64 / 1000.0);
        if out.len() % 256 == 0 {
            check_stop()?;
        }
    }
    anyhow::ensure!(!out.is_empty(), "no samples taken");
    out.sort_by(f64::total_cmp);
    Ok(out)
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A small deterministic PRNG (xorshift64*): the same key sequence in every column, without a
/// dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// Removes a fixture file, ignoring its absence.
pub fn remove_quietly(p: &Path) {
    let _ = std::fs::remove_file(p);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 51.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
    }

    #[test]
    fn timed_loop_stops_at_count() {
        let d = timed_loop(Duration::from_secs(10), 5, |_| Ok(())).unwrap();
        assert_eq!(d.ops, 5);
    }
}
