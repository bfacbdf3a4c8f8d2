//! The FUSE request counters on a real mount: a known sequence of file operations moves them
//! by known amounts. Deltas, not absolute values, and lower bounds where the kernel decides
//! (its lookups and attribute refreshes depend on its caches and on timing). Needs root and
//! /dev/fuse; the mount is unmounted by `MountedShim`'s drop, also when an assertion fails.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use litefs_py_fuse::{
    ClusterView, FuseMetrics, MountOptions, Op, OpStats, PassthroughState, StateHandle, mount,
};

/// How much each operation's counters moved between two snapshots.
fn deltas(before: &[OpStats], after: &[OpStats]) -> Vec<OpStats> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            assert_eq!(a.op, b.op);
            assert!(a.requests >= b.requests && a.errors >= b.errors && a.nanos >= b.nanos);
            OpStats {
                op: a.op,
                requests: a.requests - b.requests,
                errors: a.errors - b.errors,
                nanos: a.nanos - b.nanos,
                lower_calls: a.lower_calls - b.lower_calls,
            }
        })
        .collect()
}

fn of(d: &[OpStats], op: Op) -> OpStats {
    *d.iter().find(|s| s.op == op.name()).unwrap()
}

/// `statx` with `AT_STATX_FORCE_SYNC`: the kernel must ask the filesystem (a GETATTR) rather
/// than answer from its attribute cache.
fn statx_sync(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `statx` is plain data, valid when zeroed.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-pointer.
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_STATX_FORCE_SYNC,
            libc::STATX_BASIC_STATS,
            &mut stx,
        )
    };
    assert_eq!(r, 0, "statx: {}", std::io::Error::last_os_error());
}

/// Waits until the counters satisfy `what`.
fn eventually(metrics: &FuseMetrics, what: impl Fn(&FuseMetrics) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if what(metrics) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn a_known_sequence_moves_the_counters_by_known_amounts() {
    let dir = tempfile::tempdir().unwrap();
    let (lower, mnt) = (dir.path().join("lower"), dir.path().join("mnt"));
    fs::create_dir(&lower).unwrap();
    fs::create_dir(&mnt).unwrap();
    fs::write(lower.join("db"), b"hello").unwrap();
    let state = StateHandle::new(ClusterView::single_node("node-a"));
    let mut opts = MountOptions::new(&lower, &mnt);
    opts.threads = 2;
    let shim = mount(&opts, state.clone()).expect("mount");
    let metrics = shim.metrics();
    assert!(
        Arc::ptr_eq(&metrics, &state.fuse_metrics()),
        "the daemon's handle and the mount share one set of counters"
    );
    let before = metrics.snapshot();

    // stat of a file: at least one LOOKUP (nothing is cached yet), one GETATTR when forced.
    fs::metadata(mnt.join("db")).unwrap();
    statx_sync(&mnt.join("db"));
    // open, read, close of a file: one OPEN, one FLUSH (close waits for it), one RELEASE.
    let reads_before = metrics.stats(Op::Read).requests;
    let mut data = String::new();
    File::open(mnt.join("db"))
        .unwrap()
        .read_to_string(&mut data)
        .unwrap();
    assert_eq!(data, "hello");
    let db_reads = metrics.stats(Op::Read).requests - reads_before;
    // .role: a virtual file, answered by the shim itself (its data too).
    assert_eq!(fs::read_to_string(mnt.join(".role")).unwrap(), "primary\n");
    // A missing file: a LOOKUP answered with ENOENT.
    assert!(fs::metadata(mnt.join("missing")).is_err());

    // A request is counted once its answer is sent, so the client can be a moment ahead; and
    // RELEASE follows close() asynchronously. Wait for the counts the sequence must reach.
    let at_least = |m: &FuseMetrics, op: Op, requests: u64, errors: u64| {
        let (now, then) = (m.stats(op), before[op as usize]);
        now.requests >= then.requests + requests && now.errors >= then.errors + errors
    };
    assert!(
        eventually(&metrics, |m| {
            at_least(m, Op::Lookup, 3, 1)
                && [Op::Open, Op::Flush, Op::Release]
                    .into_iter()
                    .all(|op| at_least(m, op, 2, 0))
        }),
        "the sequence's requests were not all counted: {:?}",
        deltas(&before, &metrics.snapshot())
    );
    let after = metrics.snapshot();
    let d = deltas(&before, &after);
    let (lookup, getattr) = (of(&d, Op::Lookup), of(&d, Op::Getattr));
    // db, .role, missing; the kernel may revalidate (zero TTL) with more.
    assert!(lookup.requests >= 3, "{lookup:?}");
    assert!(lookup.errors >= 1, "the missing file: {lookup:?}");
    assert!(lookup.nanos > 0, "{lookup:?}");
    assert!(getattr.requests >= 1, "{getattr:?}");
    assert_eq!(getattr.errors, 0, "{getattr:?}");
    for (op, n) in [(Op::Open, 2), (Op::Flush, 2), (Op::Release, 2)] {
        let s = of(&d, op);
        assert_eq!((s.requests, s.errors), (n, 0), "{s:?}");
    }
    if shim.fs().passthrough_state() == PassthroughState::Active {
        // Kernel passthrough: db's data went from the kernel to the lower file directly.
        assert_eq!(db_reads, 0);
    } else {
        assert!(db_reads >= 1);
    }
    let read = of(&d, Op::Read);
    assert!(
        read.requests > db_reads,
        ".role's data is the shim's: {read:?}"
    );
    // Nothing else happened, and nothing failed but the missing file's lookups.
    for op in [
        Op::Write,
        Op::Create,
        Op::Mkdir,
        Op::Unlink,
        Op::Setlk,
        Op::Setlkw,
    ] {
        assert_eq!(of(&d, op).requests, 0, "{op:?}");
    }
    let errors: u64 = d.iter().map(|s| s.errors).sum();
    assert_eq!(errors, lookup.errors, "{d:?}");
    // Forwarded: db's lookup and open reach the lower dir; .role's open does not.
    assert!(lookup.lower_calls >= 2, "{lookup:?}");
    assert!(of(&d, Op::Open).lower_calls >= 1, "{d:?}");
    assert_eq!(
        metrics
            .virtual_opens()
            .iter()
            .find(|(f, _)| *f == ".role")
            .unwrap()
            .1,
        1,
        "one open of .role"
    );

    // The Prometheus rendering shows the same totals.
    let mut text = String::new();
    metrics.render_prometheus(&mut text);
    let total = after[Op::Lookup as usize].requests;
    assert!(
        text.contains(&format!(
            "litefs_py_fuse_requests_total{{op=\"lookup\"}} {total}\n"
        )),
        "{text}"
    );
    assert!(
        text.contains("litefs_py_fuse_virtual_opens_total{file=\".role\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("litefs_py_fuse_lower_calls_total{op=\"open\"}"),
        "{text}"
    );
    drop(shim);
}
