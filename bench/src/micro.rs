//! Per-operation latencies: what one FUSE request, one lock operation and one virtual-file read
//! cost, and which operations reach the daemon at all (requests per operation).

use std::io;

use anyhow::{Context, Result, ensure};

use crate::measure::{
    Kind, Metric, ReqCounter, Settings, Target, percentile, remove_quietly, samples,
};
use crate::sys;

/// Enough for a stable median and p99 without letting the fastest loops run long.
const MAX_SAMPLES: usize = 200_000;

/// Samples `op` and returns its p50 (and p99 if asked) with requests per operation.
fn latency(
    t: &Target,
    s: &Settings,
    key: &str,
    name: &str,
    with_p99: bool,
    op: impl FnMut() -> Result<()>,
) -> Result<Vec<Metric>> {
    let mut op = op;
    let reqs = ReqCounter::start(t);
    let mut ops = 0u64;
    let v = samples(s.sample_time, MAX_SAMPLES, || {
        ops += 1;
        op()
    })?;
    let per_op = reqs.per_op(ops);
    let mut out = vec![
        Metric::new(
            &format!("{key}_p50"),
            &format!("{name} p50"),
            "µs",
            Kind::Latency,
            percentile(&v, 50.0),
        )
        .with_reqs(per_op),
    ];
    if with_p99 {
        out.push(Metric::new(
            &format!("{key}_p99"),
            &format!("{name} p99"),
            "µs",
            Kind::Latency,
            percentile(&v, 99.0),
        ));
    }
    Ok(out)
}

/// A fixture file created in the lower dir, removed on drop.
struct Fixture(std::path::PathBuf);

impl Fixture {
    fn new(t: &Target, name: &str, len: usize) -> Result<Self> {
        let p = t.prep(&format!("{name}-{}", t.tag));
        std::fs::write(&p, vec![7u8; len]).with_context(|| format!("creating {}", p.display()))?;
        Ok(Fixture(p))
    }

    fn name(&self) -> &str {
        self.0
            .file_name()
            .and_then(|n| n.to_str())
            .expect("fixture names are ASCII")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        remove_quietly(&self.0);
    }
}

/// An fd closed on drop, so an error mid-loop does not leak it into the next column's mount.
struct Fd(i32);

impl Drop for Fd {
    fn drop(&mut self) {
        let _ = sys::close(self.0);
    }
}

/// stat(2) of an existing file by path: the cost of path lookup + attributes.
pub fn stat(t: &Target, s: &Settings) -> Result<Vec<Metric>> {
    let f = Fixture::new(t, "stat", 4096)?;
    let path = sys::cstr(&t.at(f.name()));
    latency(t, s, "stat", "stat() existing file", false, || {
        sys::stat(&path).map_err(|e| io::Error::from_raw_os_error(e).into())
    })
}

/// fstat(2) on an open fd: whether attributes still come from the daemon under passthrough.
pub fn fstat(t: &Target, s: &Settings) -> Result<Vec<Metric>> {
    let f = Fixture::new(t, "fstat", 4096)?;
    let fd = Fd(sys::open(&sys::cstr(&t.at(f.name())), libc::O_RDONLY, 0)?);
    latency(t, s, "fstat", "fstat() open fd", false, || {
        // SAFETY: a zeroed `stat` is a valid out-buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is open for the closure's life; `st` is a valid out-pointer.
        let rc = unsafe { libc::fstat(fd.0, &mut st) };
        ensure!(rc == 0, "fstat: {}", io::Error::last_os_error());
        Ok(())
    })
}

/// pread(2) of 4 KiB from a cached file: should never reach the daemon under passthrough.
pub fn pread(t: &Target, s: &Settings) -> Result<Vec<Metric>> {
    let f = Fixture::new(t, "pread", 1 << 20)?;
    let fd = Fd(sys::open(&sys::cstr(&t.at(f.name())), libc::O_RDONLY, 0)?);
    let mut buf = vec![0u8; 4096];
    let mut off = 0i64;
    latency(t, s, "pread", "pread() 4 KiB, cached", false, || {
        // SAFETY: buf is writable for its length; fd is open.
        let n = unsafe { libc::pread(fd.0, buf.as_mut_ptr().cast(), buf.len(), off) };
        ensure!(
            n == 4096,
            "pread returned {n}: {}",
            io::Error::last_os_error()
        );
        off = (off + 4096) % (1 << 20);
        Ok(())
    })
}

/// open(2) + close(2) of an existing file.
pub fn open_close(t: &Target, s: &Settings) -> Result<Vec<Metric>> {
    let f = Fixture::new(t, "open", 4096)?;
    let path = sys::cstr(&t.at(f.name()));
    latency(
        t,
        s,
        "open_close",
        "open()+close() existing file",
        false,
        || {
            sys::close(sys::open(&path, libc::O_RDWR, 0)?)?;
            Ok(())
        },
    )
}

/// One lock operation: F_SETLK write lock, then F_UNLCK, on one byte; reported per fcntl call.
pub fn lock(t: &Target, s: &Settings) -> Result<Vec<Metric>> {
    let f = Fixture::new(t, "lock", 4096)?;
    let fd = Fd(sys::open(&sys::cstr(&t.at(f.name())), libc::O_RDWR, 0)?);
    let mut pair = latency(
        t,
        s,
        "lock",
        "fcntl F_SETLK lock+unlock pair",
        false,
        || {
            sys::setlk(fd.0, libc::F_WRLCK, 100)?;
            sys::setlk(fd.0, libc::F_UNLCK, 100)?;
            Ok(())
        },
    )?;
    let m = pair.remove(0);
    Ok(vec![Metric {
        key: "lock_op_p50".into(),
        name: "fcntl F_SETLK, per lock op p50".into(),
        value: m.value / 2.0,
        req_per_op: m.req_per_op.map(|r| r / 2.0),
        ..m
    }])
}

/// `.role`: open + read + close, the way a health check or a load balancer probe reads it.
pub fn role_read(t: &Target, s: &Settings) -> Result<Vec<Metric>> {
    let path = sys::cstr(&t.at(".role"));
    let mut buf = [0u8; 64];
    let read_once = |buf: &mut [u8]| -> Result<usize> {
        let fd = Fd(sys::open(&path, libc::O_RDONLY, 0)?);
        // SAFETY: buf is writable for its length; fd is open.
        let n = unsafe { libc::read(fd.0, buf.as_mut_ptr().cast(), buf.len()) };
        ensure!(n >= 0, "read .role: {}", io::Error::last_os_error());
        Ok(n as usize)
    };
    let n = read_once(&mut buf)?;
    ensure!(
        &buf[..n] == b"primary\n",
        ".role reads {:?}, expected \"primary\\n\"",
        String::from_utf8_lossy(&buf[..n])
    );
    latency(t, s, "role_read", ".role open+read+close", true, || {
        read_once(&mut buf).map(drop)
    })
}

/// `.primary` lookup: ENOENT on the primary, for the shim as for LiteFS.
pub fn primary_lookup(t: &Target, s: &Settings) -> Result<Vec<Metric>> {
    let path = sys::cstr(&t.at(".primary"));
    match sys::stat(&path) {
        Err(libc::ENOENT) => {}
        Ok(()) => anyhow::bail!(".primary exists on a single-node primary (expected ENOENT)"),
        Err(e) => anyhow::bail!("stat .primary: {}", io::Error::from_raw_os_error(e)),
    }
    latency(
        t,
        s,
        "primary_lookup",
        ".primary lookup (ENOENT)",
        true,
        || match sys::stat(&path) {
            Err(libc::ENOENT) => Ok(()),
            other => anyhow::bail!("stat .primary changed its answer: {other:?}"),
        },
    )
}
