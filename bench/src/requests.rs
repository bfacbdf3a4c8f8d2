//! The plain request pattern of an app without Django (issue 10): per request a new SQLite
//! connection, a primary check, two SELECTs or one `BEGIN IMMEDIATE` INSERT, close; from
//! several OS processes at once (POSIX locks are per process, so threads would not do).
//!
//! The workers are this binary again (`litefs-py-bench req-worker`, hidden). Each warms up,
//! prints `ready` and waits for SIGUSR1, so that every worker starts its timed window together
//! and the shim's FUSE requests are counted across exactly those windows; then it prints one
//! `result {json}` line and exits. Workers are test-kit guards: stopped and reaped on every
//! exit path, and sent SIGTERM if the benchmark dies.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use litefs_py_testkit::process::Proc;
use rusqlite::Connection;

use crate::measure::{Kind, Metric, ReqCounter, Rng, Settings, Target, timed_loop};
use crate::primary_check::{Counts, How, PrimaryCheck};
use crate::workloads::{open_wal, remove_db};

/// Rows of the table the requests read, each with a payload of `PAYLOAD` bytes.
const ROWS: u64 = 1000;
const PAYLOAD: usize = 100;
/// How long a worker waits for its start signal, and the parent for a worker beyond its window.
const SLACK: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReqKind {
    /// Two SELECTs: a point select and a count.
    Read,
    /// `BEGIN IMMEDIATE; INSERT ...; COMMIT`.
    Write,
}

impl ReqKind {
    pub fn key(self) -> &'static str {
        match self {
            ReqKind::Read => "req_read",
            ReqKind::Write => "req_write",
        }
    }

    pub fn name(self, procs: usize) -> String {
        match self {
            ReqKind::Read => format!("plain request, 2 selects ({procs} procs)"),
            ReqKind::Write => format!("plain request, BEGIN IMMEDIATE insert ({procs} procs)"),
        }
    }

    fn arg(self) -> &'static str {
        match self {
            ReqKind::Read => "read",
            ReqKind::Write => "write",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            ReqKind::Read => "reads",
            ReqKind::Write => "writes",
        }
    }
}

/// What the parent needs to start workers.
pub struct Plan {
    /// This binary.
    pub exe: PathBuf,
    pub procs: usize,
    /// Where the workers' logs go.
    pub logs: PathBuf,
}

/// Runs `kind` requests from `plan.procs` workers on a database prepared in `t`'s lower dir;
/// returns the rate, and what the primary checks read (for the section's notes).
pub fn run(
    t: &Target,
    s: &Settings,
    plan: &Plan,
    how: How,
    kind: ReqKind,
) -> Result<(Vec<Metric>, Counts)> {
    let name = format!("req-{}-{}.db", t.tag, kind.arg());
    let prep = t.prep(&name);
    remove_db(&prep);
    // Created beside the shim, so that symlink mode sees an existing database, as an app would.
    // WAL is stored in the database: the requests' connections need not set it.
    let conn = open_wal(&prep)?;
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")?;
    conn.execute(
        "INSERT INTO t(id, v) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?1)
         SELECT x, hex(randomblob(?2)) FROM c",
        [ROWS, PAYLOAD as u64 / 2],
    )?;
    drop(conn);
    let result = run_workers(t, s, plan, how, kind, &t.at(&name));
    remove_db(&prep);
    result
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct WorkerResult {
    ops: u64,
    elapsed_s: f64,
    slice_rates: Vec<f64>,
    checks: Counts,
}

fn run_workers(
    t: &Target,
    s: &Settings,
    plan: &Plan,
    how: How,
    kind: ReqKind,
    db: &Path,
) -> Result<(Vec<Metric>, Counts)> {
    let how_arg = match how {
        How::LitefsPrimaryFile => "litefs-primary-file",
        How::ShimRole => "shim-role",
    };
    let mut workers = Vec::with_capacity(plan.procs);
    for i in 0..plan.procs {
        let mut cmd = Command::new(&plan.exe);
        cmd.arg("req-worker")
            .arg("--db")
            .arg(db)
            .arg("--mount")
            .arg(&t.root)
            .args(["--check", how_arg, "--kind", kind.arg()])
            .arg("--warmup-ms")
            .arg((s.loop_time / 10).as_millis().to_string())
            .arg("--run-ms")
            .arg(s.loop_time.as_millis().to_string())
            .arg("--seed")
            .arg((i + 1).to_string());
        let log = plan
            .logs
            .join(format!("req-{}-{}-{i}.log", t.tag, kind.arg()));
        let name = format!("request worker {i}");
        workers.push(Proc::spawn(
            &name,
            cmd,
            &log,
            crate::mounts::spawn_options(),
        )?);
    }
    let failed = |w: &Proc, what: &str| anyhow!("{} {what}:\n{}", w.name(), w.log_tail(10));
    litefs_py_testkit::wait::try_poll_until(
        s.loop_time / 10 + SLACK,
        Duration::from_millis(10),
        "the request workers to warm up",
        || {
            let mut ready = true;
            for w in &mut workers {
                if let Some(st) = w.exited() {
                    return Err(litefs_py_testkit::Error::failed(format!(
                        "{} exited during warm-up ({st}):\n{}",
                        w.name(),
                        w.log_tail(10)
                    )));
                }
                ready &= w.log().lines().any(|l| l == "ready");
            }
            Ok(ready.then_some(()))
        },
    )?;
    let reqs = ReqCounter::start(t);
    for w in &workers {
        w.signal(libc::SIGUSR1);
    }
    let mut results = Vec::with_capacity(workers.len());
    for w in &mut workers {
        let st = w.wait_exit(s.loop_time + SLACK)?;
        if !st.success() {
            return Err(failed(w, &format!("failed ({st})")));
        }
        let log = w.log();
        let line = log
            .lines()
            .find_map(|l| l.strip_prefix("result "))
            .ok_or_else(|| failed(w, "printed no result"))?;
        results.push(serde_json::from_str::<WorkerResult>(line)?);
    }
    let ops: u64 = results.iter().map(|r| r.ops).sum();
    let per_op = reqs.per_op(ops);
    let rate: f64 = results
        .iter()
        .map(|r| r.ops as f64 / r.elapsed_s.max(1e-9))
        .sum();
    // The workers' slices line up in time (they start together): summed, they are the rate of
    // all of them in that slice. A worker with fewer slices had a request span a boundary, and
    // its slices no longer line up: then no spread rather than a wrong one.
    let n = results.first().map_or(0, |r| r.slice_rates.len());
    let n = if results.iter().all(|r| r.slice_rates.len() == n) {
        n
    } else {
        0
    };
    let slices: Vec<f64> = (0..n)
        .map(|i| results.iter().map(|r| r.slice_rates[i]).sum())
        .collect();
    let spread = (n >= 2).then(|| {
        let lo = slices.iter().copied().fold(f64::INFINITY, f64::min);
        (lo, slices.iter().copied().fold(0.0, f64::max))
    });
    let mut checks = Counts::default();
    for r in &results {
        checks.add(r.checks);
    }
    let m = Metric {
        spread,
        ..Metric::new(
            kind.key(),
            &kind.name(plan.procs),
            "req/s",
            Kind::Rate,
            rate,
        )
    };
    Ok((vec![m.with_reqs(per_op)], checks))
}

/// One worker process (hidden subcommand `req-worker`).
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    db: PathBuf,
    /// The mount whose role is checked (the shim's, or LiteFS's).
    #[arg(long)]
    mount: PathBuf,
    #[arg(long, value_enum)]
    check: How,
    #[arg(long, value_enum)]
    kind: ReqKind,
    #[arg(long)]
    warmup_ms: u64,
    #[arg(long)]
    run_ms: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// The worker: warm up, `ready`, wait for SIGUSR1, run the timed window, print the result.
pub fn worker(a: WorkerArgs) -> Result<()> {
    let go = block_start_signal()?;
    let mut check = PrimaryCheck::new(&a.mount, a.check);
    let mut rng = Rng::new(a.seed);
    let payload = "y".repeat(PAYLOAD);
    // The database is WAL since it was made; checked once here, not per request.
    let mode: String =
        Connection::open(&a.db)?.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    ensure!(mode.eq_ignore_ascii_case("wal"), "journal_mode is {mode:?}");
    timed_loop(Duration::from_millis(a.warmup_ms), u64::MAX, |_| {
        request(&a, &mut check, &mut rng, &payload)
    })?;
    let before = check.counts;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    wait_start_signal(&go)?;
    let done = timed_loop(Duration::from_millis(a.run_ms), u64::MAX, |_| {
        request(&a, &mut check, &mut rng, &payload)
    })?;
    let r = WorkerResult {
        ops: done.ops,
        elapsed_s: done.elapsed.as_secs_f64(),
        slice_rates: done.slice_rates,
        checks: check.counts.since(before),
    };
    writeln!(out, "result {}", serde_json::to_string(&r)?)?;
    out.flush()?;
    Ok(())
}

/// One request, as an app with a new connection per request makes it.
fn request(a: &WorkerArgs, check: &mut PrimaryCheck, rng: &mut Rng, payload: &str) -> Result<()> {
    let conn = Connection::open(&a.db).with_context(|| format!("opening {}", a.db.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    if !check.is_primary()? {
        bail!("{} says this node is not the primary", a.mount.display());
    }
    match a.kind {
        ReqKind::Read => {
            let key = rng.below(ROWS) + 1;
            let v: String = conn.query_row("SELECT v FROM t WHERE id = ?1", [key], |r| r.get(0))?;
            ensure!(v.len() == PAYLOAD, "row {key} has {} bytes", v.len());
            let n: u64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
            ensure!(n >= ROWS, "count(*) says {n} rows");
        }
        ReqKind::Write => {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            conn.execute("INSERT INTO t(v) VALUES (?1)", [payload])?;
            conn.execute_batch("COMMIT")?;
        }
    }
    conn.close().map_err(|(_, e)| e.into())
}

/// Blocks SIGUSR1 (whose default action would end the process) so that it waits, pending,
/// for `sigtimedwait`. Before `ready` is printed: the parent signals only after it.
fn block_start_signal() -> Result<libc::sigset_t> {
    // SAFETY: a zeroed sigset_t is initialised by sigemptyset; the calls get valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        ensure!(
            r == 0,
            "blocking SIGUSR1: {}",
            std::io::Error::from_raw_os_error(r)
        );
        Ok(set)
    }
}

fn wait_start_signal(set: &libc::sigset_t) -> Result<()> {
    let ts = libc::timespec {
        tv_sec: SLACK.as_secs() as libc::time_t,
        tv_nsec: 0,
    };
    loop {
        // SAFETY: valid set and timeout; no siginfo wanted.
        let r = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
        if r == libc::SIGUSR1 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            bail!("no start signal within {SLACK:?}: {e}");
        }
    }
}
