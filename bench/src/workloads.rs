//! The throughput workloads: SQLite write transactions and point selects, sequential I/O, and
//! file creation/stat/removal. Each runs the same way in every column; only the root differs.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use rusqlite::Connection;
use rusqlite::types::ValueRef;

use crate::measure::{
    Kind, Metric, ReqCounter, Rng, Settings, Target, check_stop, remove_quietly, timed_loop,
};
use crate::sys;

/// The select database's row payload: four rows fill a 4 KiB page, so the database is about
/// `rows` KiB and every lookup reads one leaf page.
const ROW_BYTES: u64 = 1000;
const SEQ_BUF: usize = 1 << 20;

pub fn open_wal(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    ensure!(
        mode.eq_ignore_ascii_case("wal"),
        "journal_mode=WAL gave {mode:?} on {}",
        path.display()
    );
    // Per connection, not persistent: every connection that is timed sets it.
    conn.execute_batch("PRAGMA synchronous=NORMAL")?;
    Ok(conn)
}

pub fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        remove_quietly(Path::new(&p));
    }
}

/// (a) One-row INSERT transactions, each committed, on one WAL connection.
pub fn write_txns(t: &Target, s: &Settings) -> Result<Vec<Metric>> {
    let name = format!("write-{}.db", t.tag);
    let prep = t.prep(&name);
    remove_db(&prep);
    // Created beside the shim so that symlink mode sees an existing database, as an app would.
    open_wal(&prep)?.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")?;
    let result = (|| {
        let conn = open_wal(&t.at(&name))?;
        let mut stmt = conn.prepare("INSERT INTO t(v) VALUES (?1)")?;
        let payload = "x".repeat(100);
        timed_loop(s.loop_time / 10, u64::MAX, |_| {
            stmt.execute([&payload]).map(drop).map_err(Into::into)
        })?;
        let reqs = ReqCounter::start(t);
        let done = timed_loop(s.loop_time, u64::MAX, |_| {
            stmt.execute([&payload]).map(drop).map_err(Into::into)
        })?;
        let per_op = reqs.per_op(done.ops);
        Ok(vec![
            Metric::rate(
                "write_txn",
                "(a) 1-row write txn, WAL, sync=NORMAL",
                "txn/s",
                &done,
            )
            .with_reqs(per_op),
        ])
    })();
    remove_db(&prep);
    result
}

/// Builds the point-select database (about `bytes` in size) in `dir`, bypassing any shim.
pub fn build_select_db(dir: &Path, name: &str, bytes: u64) -> Result<u64> {
    let path = dir.join(name);
    remove_db(&path);
    let rows = (bytes / 1024).max(1000);
    let conn = open_wal(&path)?;
    conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB NOT NULL)")?;
    conn.execute(
        "INSERT INTO t(id, v) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?1)
         SELECT x, randomblob(?2) FROM c",
        [rows, ROW_BYTES],
    )?;
    // Everything into the main file, so that cold reads hit the database and not the WAL.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(rows)
}

fn point_select_loop(
    conn: &Connection,
    rows: u64,
    limit: Duration,
    max_ops: u64,
    seed: u64,
) -> Result<crate::measure::Done> {
    let mut stmt = conn.prepare_cached("SELECT v FROM t WHERE id = ?1")?;
    let mut rng = Rng::new(seed);
    timed_loop(limit, max_ops, |_| {
        let key = rng.below(rows) + 1;
        let found = stmt.query_row([key], |r| {
            Ok(matches!(r.get_ref(0)?, ValueRef::Blob(b) if !b.is_empty()))
        })?;
        ensure!(found, "row {key} came back empty");
        Ok(())
    })
}

/// Reads a file end to end so that its pages are in the page cache.
fn read_through(path: &Path) -> Result<u64> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; SEQ_BUF];
    let mut total = 0;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

/// (b) Point selects at random primary keys with the database in the page cache.
pub fn point_select_warm(t: &Target, s: &Settings, name: &str, rows: u64) -> Result<Vec<Metric>> {
    let path = t.at(name);
    read_through(&path)?;
    let conn = open_wal(&path)?;
    point_select_loop(&conn, rows, s.loop_time / 10, u64::MAX, 7)?;
    let reqs = ReqCounter::start(t);
    let done = point_select_loop(&conn, rows, s.loop_time, u64::MAX, 42)?;
    let m = Metric::rate(
        "select_warm",
        "(b) point select, warm cache",
        "select/s",
        &done,
    );
    Ok(vec![m.with_reqs(reqs.per_op(done.ops))])
}

/// (b) The first rows/10 point selects after dropping every cache: most of them read a leaf
/// page from the disk. A count, not a time, so that each column reads about as many pages.
pub fn point_select_cold(t: &Target, s: &Settings, name: &str, rows: u64) -> Result<Vec<Metric>> {
    let conn = open_wal(&t.at(name))?;
    // Schema loaded and statement prepared before the drop: only row lookups are timed.
    conn.prepare_cached("SELECT v FROM t WHERE id = ?1")?;
    sys::drop_caches()?;
    let reqs = ReqCounter::start(t);
    let done = point_select_loop(&conn, rows, s.cap, (rows / 10).max(100), 99)?;
    let m = Metric::rate(
        "select_cold",
        "(b) point select, cold cache (rows/10)",
        "select/s",
        &done,
    );
    Ok(vec![m.with_reqs(reqs.per_op(done.ops))])
}

/// (c) Sequential write (1 MiB writes, then fsync) and, after dropping caches, sequential read.
pub fn seq_io(t: &Target, s: &Settings) -> Result<Vec<Metric>> {
    let name = format!("seq-{}.bin", t.tag);
    let prep = t.prep(&name);
    File::create(&prep).with_context(|| format!("creating {}", prep.display()))?;
    let result = seq_io_on(t, s, &name);
    remove_quietly(&prep);
    result
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

fn seq_io_on(t: &Target, s: &Settings, name: &str) -> Result<Vec<Metric>> {
    let path = t.at(name);
    let buf: Vec<u8> = (0..SEQ_BUF).map(|i| (i % 251) as u8 + 1).collect();
    // Earlier dirty data must not be written back inside this measurement.
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    let reqs = ReqCounter::start(t);
    let start = Instant::now();
    let mut f = File::options().write(true).truncate(true).open(&path)?;
    let mut written = 0u64;
    while written < s.seq_bytes && start.elapsed() < s.cap {
        f.write_all(&buf)?;
        written += buf.len() as u64;
        check_stop()?;
    }
    f.sync_all()?;
    drop(f);
    let write = mb_per_s(written, start.elapsed());
    let write_reqs = reqs.per_op(written / SEQ_BUF as u64);

    sys::drop_caches()?;
    let reqs = ReqCounter::start(t);
    let start = Instant::now();
    let mut f = File::open(&path)?;
    let mut rbuf = vec![0u8; SEQ_BUF];
    let mut read = 0u64;
    while start.elapsed() < s.cap {
        let n = f.read(&mut rbuf)?;
        if n == 0 {
            break;
        }
        read += n as u64;
        check_stop()?;
    }
    let read_rate = mb_per_s(read, start.elapsed());
    let read_reqs = reqs.per_op(read.div_ceil(SEQ_BUF as u64));
    ensure!(
        read == written || start.elapsed() >= s.cap,
        "read {read} bytes back, wrote {written}"
    );
    Ok(vec![
        Metric::new(
            "seq_write",
            "(c) sequential write 1 MiB + fsync",
            "MB/s",
            Kind::Rate,
            write,
        )
        .with_reqs(write_reqs),
        Metric::new(
            "seq_read",
            "(c) sequential read, cold cache",
            "MB/s",
            Kind::Rate,
            read_rate,
        )
        .with_reqs(read_reqs),
    ])
}

/// (d) Create (open O_CREAT|O_EXCL + close), stat, then unlink `files` files in one directory.
pub fn files(t: &Target, s: &Settings) -> Result<Vec<Metric>> {
    let dir = format!("files-{}", t.tag);
    let prep = t.prep(&dir);
    let _ = std::fs::remove_dir_all(&prep);
    std::fs::create_dir(&prep).with_context(|| format!("creating {}", prep.display()))?;
    let result = files_in(t, s, &dir);
    let _ = std::fs::remove_dir_all(&prep);
    result
}

fn files_in(t: &Target, s: &Settings, dir: &str) -> Result<Vec<Metric>> {
    let root = t.at(dir);
    let names: Vec<_> = (0..s.files)
        .map(|i| sys::cstr(&root.join(format!("f{i:06}"))))
        .collect();
    let mut out = Vec::new();

    let reqs = ReqCounter::start(t);
    let created = timed_loop(s.cap, names.len() as u64, |i| {
        let fd = sys::open(
            &names[i as usize],
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
            0o644,
        )?;
        sys::close(fd)?;
        Ok(())
    })?;
    out.push(
        Metric::rate("files_create", "(d) create + close", "ops/s", &created)
            .with_reqs(reqs.per_op(created.ops)),
    );
    let made = &names[..created.ops as usize];

    let reqs = ReqCounter::start(t);
    let statted = timed_loop(s.cap, made.len() as u64, |i| {
        sys::stat(&made[i as usize]).map_err(|e| std::io::Error::from_raw_os_error(e).into())
    })?;
    out.push(
        Metric::rate("files_stat", "(d) stat", "ops/s", &statted)
            .with_reqs(reqs.per_op(statted.ops)),
    );

    let reqs = ReqCounter::start(t);
    let unlinked = timed_loop(s.cap, made.len() as u64, |i| {
        // SAFETY: valid path.
        if unsafe { libc::unlink(made[i as usize].as_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    })?;
    out.push(
        Metric::rate("files_unlink", "(d) unlink", "ops/s", &unlinked)
            .with_reqs(reqs.per_op(unlinked.ops)),
    );
    Ok(out)
}
