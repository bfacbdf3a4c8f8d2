//! The order of a run: per section, the baseline column first, then one shim mount per
//! data-path mode, each running the same workloads.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};

use litefs_py_testkit::litefs::StaticLiteFs;
use litefs_py_testkit::mount::is_mounted;

use crate::measure::{Col, Kind, Metric, Settings, Target, check_stop};
use crate::mounts::{Shim, ShimOptions};
use crate::primary_check::{Counts, How};
use crate::report::Section;
use crate::requests::{self, ReqKind};
use crate::{micro, sys, workloads};

const SELECT_DB: &str = "select.db";
const MODES: [(Col, &str); 2] = [(Col::Passthrough, "passthrough"), (Col::Symlink, "symlink")];

pub struct ShimBinary<'a> {
    pub path: &'a Path,
    pub threads: Option<u16>,
}

/// Runs one workload and files its outcome; stops the run if it was interrupted.
fn step(
    sec: &mut Section,
    t: &Target,
    key: &str,
    name: &str,
    f: impl FnOnce() -> Result<Vec<Metric>>,
) -> Result<()> {
    check_stop()?;
    eprintln!("litefs-py-bench: [{}] {name}", sec.columns[t.col as usize]);
    // Without its mount, a shim column would silently measure the empty mountpoint dir.
    if t.is_shim() && !is_mounted(&t.root) {
        sec.record(
            t.col,
            key,
            name,
            Err(anyhow!("the shim's mount is gone (did the daemon die?)")),
        );
        return Ok(());
    }
    sec.record(t.col, key, name, f());
    check_stop()
}

fn memory(pid: u32, who: &str, key: &str) -> Result<Vec<Metric>> {
    let mib = |field| {
        sys::proc_status_kib(pid, field)
            .map(|k| k as f64 / 1024.0)
            .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
    };
    Ok(vec![
        Metric::new(
            &format!("{key}_rss"),
            &format!("{who} VmRSS after workloads"),
            "MiB",
            Kind::Info,
            mib("VmRSS")?,
        ),
        Metric::new(
            &format!("{key}_hwm"),
            &format!("{who} VmHWM (peak RSS)"),
            "MiB",
            Kind::Info,
            mib("VmHWM")?,
        ),
    ])
}

/// The point-select database, built once per section, directly on the baseline.
type SelectDb = Result<u64, String>;

fn selects(sec: &mut Section, t: &Target, s: &Settings, db: &SelectDb) -> Result<()> {
    let rows = |db: &SelectDb| {
        db.clone()
            .map_err(|e| anyhow!("building the select database failed: {e}"))
    };
    step(
        sec,
        t,
        "select_warm",
        "(b) point select, warm cache",
        || workloads::point_select_warm(t, s, SELECT_DB, rows(db)?),
    )?;
    step(
        sec,
        t,
        "select_cold",
        "(b) point select, cold cache",
        || workloads::point_select_cold(t, s, SELECT_DB, rows(db)?),
    )
}

/// Everything the plain-dir section measures, in one column.
fn plain_column(sec: &mut Section, t: &Target, s: &Settings, db: &SelectDb) -> Result<()> {
    step(sec, t, "write_txn", "(a) 1-row write txn", || {
        workloads::write_txns(t, s)
    })?;
    selects(sec, t, s, db)?;
    step(sec, t, "seq_write", "(c) sequential write/read", || {
        workloads::seq_io(t, s)
    })?;
    step(
        sec,
        t,
        "files_create",
        "(d) create/stat/unlink files",
        || workloads::files(t, s),
    )?;
    step(sec, t, "stat_p50", "stat() latency", || micro::stat(t, s))?;
    step(sec, t, "fstat_p50", "fstat() latency", || {
        micro::fstat(t, s)
    })?;
    step(sec, t, "pread_p50", "pread() latency", || {
        micro::pread(t, s)
    })?;
    step(sec, t, "open_close_p50", "open()+close() latency", || {
        micro::open_close(t, s)
    })?;
    step(sec, t, "lock_op_p50", "fcntl lock latency", || {
        micro::lock(t, s)
    })?;
    if t.is_shim() {
        step(sec, t, "role_read_p50", ".role read latency", || {
            micro::role_read(t, s)
        })?;
    }
    step(
        sec,
        t,
        "primary_lookup_p50",
        ".primary lookup latency",
        || micro::primary_lookup(t, s),
    )?;
    if let Some(pid) = t.shim_pid {
        step(sec, t, "shim_rss", "shim memory", || {
            memory(pid, "shim", "shim")
        })?;
    }
    Ok(())
}

fn mkdir(p: PathBuf) -> Result<PathBuf> {
    std::fs::create_dir_all(&p)?;
    Ok(p.canonicalize()?)
}

/// Runs `column` on the shim mounted over `lower` in each data-path mode, one mount at a time.
fn shim_columns(
    sec: &mut Section,
    bin: &ShimBinary<'_>,
    lower: &Path,
    mountpoint: &Path,
    tags: [&'static str; 2],
    mut column: impl FnMut(&mut Section, &Target) -> Result<()>,
) -> Result<()> {
    for ((col, mode), tag) in MODES.into_iter().zip(tags) {
        let log = mountpoint.with_extension(format!("{mode}.log"));
        let opts = ShimOptions {
            binary: bin.path,
            lower,
            mountpoint,
            data_path: mode,
            threads: bin.threads,
            log: &log,
        };
        let shim = match Shim::start(&opts) {
            Ok(shim) => shim,
            Err(e) => {
                sec.record(col, "mount", "litefs-py mount", Err(e));
                continue;
            }
        };
        let t = Target {
            col,
            tag,
            root: shim.mountpoint.clone(),
            lower: lower.to_path_buf(),
            shim_pid: Some(shim.pid()),
        };
        column(sec, &t)?;
        if let Err(e) = shim.finish() {
            sec.notes.push(format!("shim ({mode}) shutdown: {e:#}"));
            eprintln!("litefs-py-bench: shim ({mode}) shutdown: {e:#}");
        }
    }
    Ok(())
}

/// Section 1: a plain directory on the benchmark disk, and the shim over it.
pub fn plain(s: &Settings, bin: &ShimBinary<'_>, base: &Path) -> Result<Section> {
    let mut sec = Section::new(
        "shim over a plain directory",
        ["direct", "passthrough", "symlink"],
    );
    let lower = mkdir(base.join("lower"))?;
    let mnt = mkdir(base.join("mnt"))?;
    eprintln!(
        "litefs-py-bench: building the {} MB select database",
        s.db_bytes >> 20
    );
    let db =
        workloads::build_select_db(&lower, SELECT_DB, s.db_bytes).map_err(|e| format!("{e:#}"));
    let direct = Target {
        col: Col::Base,
        tag: "direct",
        root: lower.clone(),
        lower: lower.clone(),
        shim_pid: None,
    };
    plain_column(&mut sec, &direct, s, &db)?;
    shim_columns(&mut sec, bin, &lower, &mnt, ["pt", "sym"], |sec, t| {
        plain_column(sec, t, s, &db)
    })?;
    sec.add_delta(
        "stat_p50",
        "stat_added",
        "stat() added by the shim, p50",
        false,
    );
    sec.add_delta(
        "stat_p50",
        "stat_per_req",
        "stat() added per FUSE request",
        true,
    );
    sec.add_delta(
        "lock_op_p50",
        "lock_added",
        "lock op added by the shim, p50",
        false,
    );
    Ok(sec)
}

/// The plain request pattern (see `requests`), reads then writes; notes what the primary
/// checks read, so that the table says which check each column did.
fn plain_requests(
    sec: &mut Section,
    t: &Target,
    s: &Settings,
    plan: &requests::Plan,
) -> Result<()> {
    let how = if t.is_shim() {
        How::ShimRole
    } else {
        How::LitefsPrimaryFile
    };
    for kind in [ReqKind::Read, ReqKind::Write] {
        let mut seen = Counts::default();
        let name = kind.name(plan.procs);
        step(sec, t, kind.key(), &name, || {
            let (m, c) = requests::run(t, s, plan, how, kind)?;
            seen = c;
            Ok(m)
        })?;
        if seen != Counts::default() {
            sec.notes.push(format!(
                "plain request, {} [{}]: primary check = {}; in the timed window: {} state page reads, {} .role, {} .health, {} .primary",
                kind.label(),
                sec.columns[t.col as usize],
                how.describe(),
                seen.page,
                seen.role_file,
                seen.health,
                seen.primary_file,
            ));
        }
    }
    Ok(())
}

/// What the LiteFS section measures in one column: (a), (b), plain requests, and `.primary`.
fn litefs_column(
    sec: &mut Section,
    t: &Target,
    s: &Settings,
    db: &SelectDb,
    litefs_pid: u32,
    plan: &requests::Plan,
) -> Result<()> {
    step(sec, t, "write_txn", "(a) 1-row write txn", || {
        workloads::write_txns(t, s)
    })?;
    selects(sec, t, s, db)?;
    plain_requests(sec, t, s, plan)?;
    step(
        sec,
        t,
        "primary_lookup_p50",
        ".primary lookup latency",
        || micro::primary_lookup(t, s),
    )?;
    if let Some(pid) = t.shim_pid {
        step(sec, t, "shim_rss", "shim memory", || {
            memory(pid, "shim", "shim")
        })?;
    }
    step(sec, t, "litefs_rss", "LiteFS memory", || {
        memory(litefs_pid, "LiteFS", "litefs")
    })
}

/// Section 2: LiteFS itself, and the shim mounted over LiteFS's FUSE dir.
pub fn over_litefs(
    s: &Settings,
    bin: &ShimBinary<'_>,
    litefs_bin: &Path,
    base: &Path,
    plan: &requests::Plan,
) -> Result<Section> {
    let mut sec = Section::new("shim over LiteFS", ["litefs", "passthrough", "symlink"]);
    let dir = mkdir(base.join("litefs"))?;
    let mnt = mkdir(base.join("litefs-mnt"))?;
    let lfs = StaticLiteFs::start(litefs_bin, &dir, crate::mounts::spawn_options())?;
    let lower = lfs.fuse_dir.clone();
    eprintln!(
        "litefs-py-bench: building the {} MB select database on LiteFS",
        s.db_bytes >> 20
    );
    // LiteFS keeps databases only at the root of its mount.
    let db =
        workloads::build_select_db(&lower, SELECT_DB, s.db_bytes).map_err(|e| format!("{e:#}"));
    let pid = lfs.pid();
    let base_t = Target {
        col: Col::Base,
        tag: "litefs",
        root: lower.clone(),
        lower: lower.clone(),
        shim_pid: None,
    };
    let result = litefs_column(&mut sec, &base_t, s, &db, pid, plan).and_then(|()| {
        shim_columns(
            &mut sec,
            bin,
            &lower,
            &mnt,
            ["lfs-pt", "lfs-sym"],
            |sec, t| litefs_column(sec, t, s, &db, pid, plan),
        )
    });
    // Shims are down by now (each is stopped inside shim_columns); LiteFS goes last.
    if let Err(e) = lfs.finish() {
        sec.notes.push(format!("{e:#}"));
    }
    result.map(|()| sec)
}
