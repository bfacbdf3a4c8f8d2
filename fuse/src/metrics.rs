//! Per-operation counters of the FUSE requests the shim serves: requests, errors and time.
//!
//! They answer "which requests does an application cause, and what do they cost" (issue 10
//! counts FUSE requests per HTTP request). The hot path is an `Instant::now()` when a request
//! starts, and another with up to three `Relaxed` atomic adds when it ends: a fixed array
//! indexed by [`Op`], no map, no lock, no allocation. Each operation's counters sit on their own cache lines, so
//! workers serving different operations do not contend.
//!
//! A request is counted when its handler returns, after its answer was sent (its time includes
//! sending the answer): a client can see its answer a moment before the count moves.
//!
//! One [`FuseMetrics`] belongs to a [`StateHandle`](crate::StateHandle), so the daemon reads
//! the counters from the handle it already holds, and they keep counting across a remount.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::virtual_files::VirtualFile;

/// Declares [`Op`] with its metric label (the FUSE operation's name, as fuser names it).
macro_rules! ops {
    ($($variant:ident => $name:literal,)*) => {
        /// A FUSE operation the shim serves.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Op {
            $($variant,)*
        }

        impl Op {
            /// Every operation, in the order of the metrics output.
            pub const ALL: &'static [Op] = &[$(Op::$variant,)*];

            /// The label value: `op="lookup"`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Op::$variant => $name,)*
                }
            }
        }
    };
}

ops! {
    Lookup => "lookup",
    Forget => "forget",
    Getattr => "getattr",
    Setattr => "setattr",
    Readlink => "readlink",
    Mknod => "mknod",
    Mkdir => "mkdir",
    Unlink => "unlink",
    Rmdir => "rmdir",
    Symlink => "symlink",
    Rename => "rename",
    Link => "link",
    Open => "open",
    Read => "read",
    Write => "write",
    Flush => "flush",
    Release => "release",
    Fsync => "fsync",
    Opendir => "opendir",
    Readdir => "readdir",
    Readdirplus => "readdirplus",
    Releasedir => "releasedir",
    Fsyncdir => "fsyncdir",
    Statfs => "statfs",
    Setxattr => "setxattr",
    Getxattr => "getxattr",
    Listxattr => "listxattr",
    Removexattr => "removexattr",
    Access => "access",
    Create => "create",
    Getlk => "getlk",
    Setlk => "setlk",
    // FUSE_SETLKW: a blocking lock request; its time includes the wait for the lock.
    Setlkw => "setlkw",
    Ioctl => "ioctl",
    Fallocate => "fallocate",
    Lseek => "lseek",
    CopyFileRange => "copy_file_range",
}

const N_OPS: usize = Op::ALL.len();

/// One operation's counters. 128-byte aligned: x86 prefetches cache lines in pairs, so 64
/// would still let two operations' counters share what the CPU moves as one unit.
#[derive(Default)]
#[repr(align(128))]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    nanos: AtomicU64,
    /// Syscalls the shim made on the lower dir while serving these requests.
    lower: AtomicU64,
}

/// The counters of every FUSE operation, shared by the FUSE workers (writers) and whoever
/// reports them (readers).
pub struct FuseMetrics {
    ops: [Counters; N_OPS],
    /// Opens of each virtual file ([`VirtualFile::ALL`] order): the role checks that reach the
    /// shim (a reader of the shared state page makes none).
    virtual_opens: [AtomicU64; 3],
}

/// One operation's totals at the time of a [`FuseMetrics::snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpStats {
    pub op: &'static str,
    /// Requests answered (or, for `forget`, received: it has no answer).
    pub requests: u64,
    /// Of those, answered with an errno.
    pub errors: u64,
    /// Total time from receiving the request to sending the answer, in nanoseconds.
    pub nanos: u64,
    /// Syscalls the shim made on the lower dir to serve them ("forwarded"): over LiteFS, each
    /// is at least one request to LiteFS's own FUSE server. Closing descriptors is not counted.
    pub lower_calls: u64,
}

impl Default for FuseMetrics {
    fn default() -> Self {
        FuseMetrics {
            ops: std::array::from_fn(|_| Counters::default()),
            virtual_opens: Default::default(),
        }
    }
}

impl std::fmt::Debug for FuseMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let requests: u64 = Op::ALL.iter().map(|&op| self.stats(op).requests).sum();
        f.debug_struct("FuseMetrics")
            .field("requests", &requests)
            .finish_non_exhaustive()
    }
}

impl FuseMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts timing one request; it is counted when the returned guard drops.
    #[inline]
    pub fn start(&self, op: Op) -> InFlight<'_> {
        InFlight {
            metrics: self,
            op,
            start: Instant::now(),
            failed: false,
            armed: true,
        }
    }

    /// Counts one request of `op` that took `elapsed`.
    #[inline]
    pub fn record(&self, op: Op, elapsed: Duration, failed: bool) {
        let c = &self.ops[op as usize];
        c.requests.fetch_add(1, Ordering::Relaxed);
        // The lower calls this thread made since its last request: this request's.
        let lower = crate::sys::take_lower_calls();
        if lower > 0 {
            c.lower.fetch_add(u64::from(lower), Ordering::Relaxed);
        }
        if failed {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
        // u64 nanoseconds overflow after 584 years of cumulated request time.
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        c.nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// One operation's totals. The three numbers are read one after the other, not as one
    /// atomic snapshot: a request finishing meanwhile may show in one and not yet in another.
    pub fn stats(&self, op: Op) -> OpStats {
        let c = &self.ops[op as usize];
        OpStats {
            op: op.name(),
            requests: c.requests.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            nanos: c.nanos.load(Ordering::Relaxed),
            lower_calls: c.lower.load(Ordering::Relaxed),
        }
    }

    /// Counts one open of a virtual file.
    #[inline]
    pub(crate) fn virtual_open(&self, f: VirtualFile) {
        self.virtual_opens[f as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Opens of each virtual file so far, by name.
    pub fn virtual_opens(&self) -> [(&'static str, u64); 3] {
        VirtualFile::ALL.map(|f| {
            (
                f.name(),
                self.virtual_opens[f as usize].load(Ordering::Relaxed),
            )
        })
    }

    /// Every operation's totals, in [`Op::ALL`] order, including those never requested.
    pub fn snapshot(&self) -> Vec<OpStats> {
        Op::ALL.iter().map(|&op| self.stats(op)).collect()
    }

    /// Appends the counters to `out` in the Prometheus text exposition format (0.0.4).
    ///
    /// Every operation is written, also with 0 requests: the set of operations is fixed and
    /// known in advance, and a series that appears only after its first request makes
    /// `rate()` and `increase()` miss that first request and alerts on absence misfire
    /// (Prometheus's instrumentation guide: initialise label values known in advance).
    pub fn render_prometheus(&self, out: &mut String) {
        let snap = self.snapshot();
        for family in FAMILIES {
            let name = family.name;
            // Writing to a String cannot fail.
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} counter");
            for s in &snap {
                let _ = writeln!(out, "{name}{{op=\"{}\"}} {}", s.op, (family.value)(s));
            }
        }
        let name = "litefs_py_fuse_virtual_opens_total";
        let _ = writeln!(
            out,
            "# HELP {name} Opens of the shim's virtual files (role checks that reached the shim)."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        for (file, n) in self.virtual_opens() {
            let _ = writeln!(out, "{name}{{file=\"{file}\"}} {n}");
        }
    }
}

/// One metric family of the Prometheus rendering: a counter, one sample per operation.
struct Family {
    name: &'static str,
    help: &'static str,
    value: fn(&OpStats) -> f64,
}

const FAMILIES: [Family; 4] = [
    Family {
        name: "litefs_py_fuse_requests_total",
        help: "FUSE requests served by the litefs-py shim, by operation.",
        value: |s| s.requests as f64,
    },
    Family {
        name: "litefs_py_fuse_errors_total",
        help: "FUSE requests the litefs-py shim answered with an error, by operation.",
        value: |s| s.errors as f64,
    },
    Family {
        name: "litefs_py_fuse_request_seconds_total",
        help: "Total time the litefs-py shim spent serving FUSE requests, by operation.",
        value: |s| s.nanos as f64 / 1e9,
    },
    Family {
        name: "litefs_py_fuse_lower_calls_total",
        help: "Syscalls the litefs-py shim made on its lower dir (over LiteFS: requests to \
               LiteFS's FUSE server) while serving FUSE requests, by operation.",
        value: |s| s.lower_calls as f64,
    },
];

/// A request being served. Dropping it counts the request, its time, and whether it failed,
/// so every exit path of a handler is counted exactly once.
#[must_use = "the request is counted when this guard drops"]
pub struct InFlight<'a> {
    metrics: &'a FuseMetrics,
    op: Op,
    start: Instant,
    failed: bool,
    armed: bool,
}

impl InFlight<'_> {
    pub fn op(&self) -> Op {
        self.op
    }

    /// Marks the request as answered with an error.
    pub fn fail(&mut self) {
        self.failed = true;
    }

    /// Stops counting here: for a request answered later, elsewhere (a blocking lock is
    /// answered by its waiter thread), which records it with [`FuseMetrics::record`].
    pub fn detach(mut self) -> (Op, Instant) {
        self.armed = false;
        (self.op, self.start)
    }
}

impl Drop for InFlight<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.armed {
            self.metrics
                .record(self.op, self.start.elapsed(), self.failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_has_its_own_slot_and_name() {
        for (i, &op) in Op::ALL.iter().enumerate() {
            assert_eq!(op as usize, i, "{op:?} is out of order in Op::ALL");
        }
        let mut names: Vec<_> = Op::ALL.iter().map(|op| op.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), N_OPS, "two ops share a label");
        assert_eq!(std::mem::align_of::<Counters>(), 128);
    }

    #[test]
    fn guards_count_requests_errors_and_time() {
        let m = FuseMetrics::new();
        {
            let _ok = m.start(Op::Lookup);
            std::thread::sleep(Duration::from_millis(2));
        }
        {
            let mut failed = m.start(Op::Lookup);
            failed.fail();
        }
        drop(m.start(Op::Getattr));
        let lookup = m.stats(Op::Lookup);
        assert_eq!(
            (lookup.op, lookup.requests, lookup.errors),
            ("lookup", 2, 1)
        );
        assert!(lookup.nanos >= 2_000_000, "{lookup:?}");
        assert_eq!(m.stats(Op::Getattr).requests, 1);
        assert_eq!(m.stats(Op::Getattr).errors, 0);
        assert_eq!(
            m.stats(Op::Read),
            OpStats {
                op: "read",
                requests: 0,
                errors: 0,
                nanos: 0,
                lower_calls: 0
            }
        );
    }

    #[test]
    fn a_detached_request_is_counted_once_where_it_ends() {
        let m = FuseMetrics::new();
        let (op, start) = m.start(Op::Setlkw).detach();
        assert_eq!(m.stats(Op::Setlkw).requests, 0, "counted on detach");
        m.record(op, start.elapsed(), true);
        let s = m.stats(Op::Setlkw);
        assert_eq!((s.requests, s.errors), (1, 1));
    }

    #[test]
    fn counts_from_many_threads_add_up() {
        let m = FuseMetrics::new();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        drop(m.start(Op::Getattr));
                    }
                });
            }
        });
        assert_eq!(m.stats(Op::Getattr).requests, 40_000);
    }

    #[test]
    fn snapshot_lists_every_op_in_order() {
        let m = FuseMetrics::new();
        m.record(Op::Write, Duration::from_micros(3), false);
        let snap = m.snapshot();
        assert_eq!(snap.len(), N_OPS);
        assert_eq!(snap[0].op, "lookup");
        let write = snap.iter().find(|s| s.op == "write").unwrap();
        assert_eq!((write.requests, write.nanos), (1, 3_000));
    }

    #[test]
    fn prometheus_text_format() {
        let m = FuseMetrics::new();
        m.record(Op::Lookup, Duration::from_millis(1500), false);
        m.record(Op::Lookup, Duration::from_millis(500), true);
        let mut out = String::from("# other metrics first\n");
        m.render_prometheus(&mut out);
        assert!(out.starts_with("# other metrics first\n"), "appends");
        assert!(out.ends_with('\n'));
        let lines: Vec<&str> = out.lines().collect();
        for needle in [
            "# HELP litefs_py_fuse_requests_total FUSE requests served by the litefs-py shim, by operation.",
            "# TYPE litefs_py_fuse_requests_total counter",
            "# TYPE litefs_py_fuse_errors_total counter",
            "# TYPE litefs_py_fuse_request_seconds_total counter",
            "litefs_py_fuse_requests_total{op=\"lookup\"} 2",
            "litefs_py_fuse_errors_total{op=\"lookup\"} 1",
            "litefs_py_fuse_request_seconds_total{op=\"lookup\"} 2",
            "litefs_py_fuse_requests_total{op=\"copy_file_range\"} 0",
            "litefs_py_fuse_request_seconds_total{op=\"read\"} 0",
        ] {
            assert!(lines.contains(&needle), "missing {needle:?} in:\n{out}");
        }
        // One sample per op and family (and one per virtual file), each family's HELP and
        // TYPE before its samples.
        let samples = lines.iter().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples, 4 * N_OPS + 3);
        for family in [
            "litefs_py_fuse_requests_total",
            "litefs_py_fuse_errors_total",
            "litefs_py_fuse_request_seconds_total",
            "litefs_py_fuse_lower_calls_total",
            "litefs_py_fuse_virtual_opens_total",
        ] {
            let at = |p: &dyn Fn(&str) -> bool| lines.iter().position(|l| p(l)).unwrap();
            let help = at(&|l| l.starts_with(&format!("# HELP {family} ")));
            let typ = at(&|l| l == format!("# TYPE {family} counter"));
            let first = at(&|l| l.starts_with(&format!("{family}{{")));
            assert!(help < typ && typ < first, "{family}: HELP, TYPE, samples");
        }
        // Every sample value parses as a number, as a scraper would read it.
        for l in lines.iter().filter(|l| !l.starts_with('#')) {
            let value = l.rsplit(' ').next().unwrap();
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value in {l:?}"));
        }
    }

    #[test]
    fn fractional_seconds() {
        let m = FuseMetrics::new();
        m.record(Op::Read, Duration::from_nanos(1_234_500), false);
        let mut out = String::new();
        m.render_prometheus(&mut out);
        assert!(
            out.contains("litefs_py_fuse_request_seconds_total{op=\"read\"} 0.0012345\n"),
            "{out}"
        );
    }
}
