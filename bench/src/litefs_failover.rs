//! `litefs-py-bench litefs-failover`: how long a 3-node cluster of `litefs-py run` nodes, each
//! with its real LiteFS, takes from kill -9 of the primary (its `litefs-py run` and its LiteFS)
//! to the first write a new primary accepts, measured as an application sees it: an `INSERT`
//! through a survivor's shim (real SQLite, a fresh connection per attempt) that commits.
//!
//! Before each kill the cluster is steady: exactly one LiteFS says `isPrimary`, the others name
//! it, and the last acknowledged row has reached every replica. After each failover the killed
//! node is restarted and must rejoin as a replica (timed too) before the next kill. While the
//! survivors fail over, their LiteFS `/info` is sampled and two `isPrimary: true` at once is
//! counted (it must never happen). At the end every node must hold every acknowledged row.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use serde_json::{Value, json};

use litefs_py_testkit::cluster::{Options, RunCluster, random_secret};

use crate::failover::{NODES, ms, stats, stats_line};
use crate::measure::{Rng, check_stop};
use crate::{report, sys};

#[derive(Debug, Args)]
pub struct LiteFsFailoverArgs {
    /// Primary kills to measure [default: 20; 3 with --quick].
    #[arg(long, value_name = "N")]
    kills: Option<usize>,

    /// A smoke run: 3 kills.
    #[arg(long)]
    quick: bool,

    /// A failover (or a rejoin) not complete after this many seconds is a failure.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,

    /// Override lease.ttl (e.g. `10s`, Consul's default, for the comparison) [default:
    /// litefs-py's default].
    #[arg(long, value_name = "DURATION")]
    lease_ttl: Option<String>,

    /// The litefs-py binary [default: litefs-py next to this binary].
    #[arg(long, value_name = "PATH")]
    litefs_py: Option<PathBuf>,

    /// The LiteFS binary [default: `litefs` on PATH].
    #[arg(long, value_name = "PATH")]
    litefs: Option<PathBuf>,

    /// Parent of the temporary node dirs [default: $TMPDIR, else /tmp].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Where the JSON goes [default: target/bench of the workspace this binary was built in].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// Time between write attempts on the survivors.
const POLL: Duration = Duration::from_millis(2);
/// How often the survivors' LiteFS `/info` is sampled for two primaries at once.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// Between a rejoin and the next kill: a fixed part plus a random one, so that kills land at
/// every phase of the lease renewals.
const SETTLE: Duration = Duration::from_millis(300);
const SETTLE_JITTER_MS: u64 = 700;
/// The first steady state after start-up (bootstrap, first lease).
const FIRST_STEADY: Duration = Duration::from_secs(60);
const DB: &str = "bench.db";

#[derive(Debug, Default)]
struct Kill {
    primary: u64,
    new_primary: Option<u64>,
    failover: Option<Duration>,
    /// Write attempts made on the survivors before one committed.
    attempts: u64,
    rejoin: Option<Duration>,
    error: Option<String>,
}

impl Kill {
    fn to_json(&self, n: usize) -> Value {
        json!({
            "kill": n,
            "primary": self.primary,
            "new_primary": self.new_primary,
            "failover_ms": self.failover.map(ms),
            "write_attempts": self.attempts,
            "rejoin_ms": self.rejoin.map(ms),
            "error": self.error,
        })
    }
}

/// What the run counted besides the times.
#[derive(Debug, Default)]
struct Tally {
    acked: i64,
    double_primary: Vec<String>,
}

fn open(mnt: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let c = rusqlite::Connection::open(mnt.join(DB))?;
    c.busy_timeout(Duration::from_millis(100))?;
    Ok(c)
}

/// One `INSERT` through the shim at `mnt`, on a fresh connection: whether it committed.
fn try_write(mnt: &Path, kill: i64) -> Result<()> {
    let c = open(mnt)?;
    c.execute("INSERT INTO t(kill) VALUES (?1)", [kill])?;
    Ok(())
}

fn count(mnt: &Path) -> Result<i64> {
    Ok(open(mnt)?.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?)
}

pub fn run(args: LiteFsFailoverArgs, target: &Path, exe_dir: &Path) -> Result<bool> {
    let started = Instant::now();
    let unix_time = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let kills = args.kills.unwrap_or(if args.quick { 3 } else { 20 });
    ensure!(kills > 0, "--kills must be at least 1");
    let timeout = Duration::from_secs(args.timeout.max(1));
    let binary = args
        .litefs_py
        .clone()
        .unwrap_or_else(|| exe_dir.join("litefs-py"));
    ensure!(
        binary.is_file(),
        "no litefs-py binary at {} (run `cargo build --release --workspace`, or pass --litefs-py PATH)",
        binary.display()
    );
    let litefs = litefs_py_testkit::litefs::find_binary(args.litefs.as_deref())
        .map_err(anyhow::Error::msg)?;
    let opts = Options {
        parent: args.dir.clone(),
        secret: random_secret()?,
        test_faults: false,
        lease_ttl: args.lease_ttl.clone(),
        spawn: crate::mounts::spawn_options(),
        ..Options::run(&binary)
    };
    let mut cluster = RunCluster::create(opts, &litefs, NODES.len() as u64)?;
    let lease = cluster.effective("lease")?;
    let raft = cluster.effective("raft")?;
    let version = litefs_py_testkit::process::version_line(&binary);
    let litefs_version = litefs_py_testkit::process::version_line(&litefs);
    println!(
        "litefs-py-bench litefs-failover ({kills} kills): {version}, LiteFS {litefs_version}, \
         kernel {}, {} CPUs; 3 `litefs-py run` nodes on loopback; lease ttl {}",
        sys::kernel_release(),
        sys::online_cpus(),
        lease.get("ttl").map_or("?", String::as_str),
    );

    let mut tally = Tally::default();
    let outcome = measure(&mut cluster, kills, timeout, &mut tally);
    // Every acknowledged row on every node (the cluster is steady after the last rejoin).
    let rows = match &outcome {
        Ok(_) => NODES
            .iter()
            .map(|id| (*id, count(&cluster.mnt(*id)).ok()))
            .collect::<Vec<_>>(),
        Err(_) => Vec::new(),
    };
    let cleanup = cluster.shutdown();
    let (records, aborted) = match outcome {
        Ok(r) => (r, None),
        Err((r, e)) if check_stop().is_err() => {
            eprintln!(
                "litefs-py-bench: interrupted after {} kills; nothing saved",
                r.len()
            );
            cleanup?;
            return Err(e);
        }
        Err((r, e)) => (r, Some(format!("{e:#}"))),
    };

    let failovers: Vec<f64> = records.iter().filter_map(|k| k.failover.map(ms)).collect();
    let rejoins: Vec<f64> = records.iter().filter_map(|k| k.rejoin.map(ms)).collect();
    let failed = records.iter().filter(|k| k.failover.is_none()).count();
    let rejoin_failed = records.iter().filter(|k| k.rejoin.is_none()).count();
    let rows_missing: Vec<String> = rows
        .iter()
        .filter(|(_, n)| *n != Some(tally.acked))
        .map(|(id, n)| format!("node {id}: {n:?} of {} rows", tally.acked))
        .collect();
    let (fs, rs) = (stats(&failovers), stats(&rejoins));
    println!(
        "\nfailover: kill -9 of the primary's litefs-py run + LiteFS -> first INSERT committed \
         through a survivor's shim\n  {}\n  kills {}, failed {failed} (none within {timeout:?})",
        stats_line(&fs),
        records.len()
    );
    println!(
        "rejoin: restart of the killed node -> a replica of the new primary, caught up\n  {}\n  \
         failed {rejoin_failed}",
        stats_line(&rs)
    );
    println!(
        "two LiteFS primaries at once: {} samples; acknowledged rows {}, on every node: {}",
        tally.double_primary.len(),
        tally.acked,
        if rows_missing.is_empty() && !rows.is_empty() {
            "yes".to_string()
        } else {
            format!("NO ({})", rows_missing.join(", "))
        }
    );
    for d in tally.double_primary.iter().take(5) {
        println!("  {d}");
    }
    report::print_kill_errors(records.iter().map(|k| k.error.as_ref()), aborted.as_ref());

    let elapsed = started.elapsed().as_secs_f64();
    let mut machine = report::machine(&version, &binary);
    machine.insert("litefs".into(), json!(litefs_version));
    machine.insert("sqlite".into(), json!(rusqlite::version()));
    let doc = json!({
        "schema": 1,
        "benchmark": "litefs-failover",
        "unix_time": unix_time,
        "elapsed_s": elapsed,
        "machine": machine,
        "settings": {
            "nodes": NODES.len(),
            "kills": kills,
            "quick": args.quick,
            "timeout_s": timeout.as_secs(),
            "poll_ms": ms(POLL),
            "settle_ms": [ms(SETTLE), ms(SETTLE) + SETTLE_JITTER_MS as f64],
            "lease": lease,
            "raft": raft,
        },
        "failover_ms": fs,
        "failover_failures": failed,
        "rejoin_ms": rs,
        "rejoin_failures": rejoin_failed,
        "double_primary_samples": tally.double_primary.len(),
        "double_primary_examples": tally.double_primary.iter().take(20).collect::<Vec<_>>(),
        "acknowledged_rows": tally.acked,
        "rows_per_node": rows.iter().map(|(id, n)| json!({"node": id, "rows": n})).collect::<Vec<_>>(),
        "aborted": aborted,
        "kills": records.iter().enumerate().map(|(i, k)| k.to_json(i + 1)).collect::<Vec<_>>(),
    });
    let out = args.out.unwrap_or_else(|| target.join("bench"));
    let path = report::write_json(&out, "litefs-failover", unix_time, &doc)?;
    println!(
        "\nJSON: {} (and litefs-failover-latest.json); {elapsed:.0} s in all",
        path.display()
    );
    cleanup?;
    Ok(failed == 0
        && rejoin_failed == 0
        && tally.double_primary.is_empty()
        && rows_missing.is_empty()
        && aborted.is_none())
}

type Partial = (Vec<Kill>, anyhow::Error);

fn measure(
    c: &mut RunCluster,
    kills: usize,
    timeout: Duration,
    tally: &mut Tally,
) -> Result<Vec<Kill>, Partial> {
    let mut records = Vec::new();
    let r = (|| -> Result<()> {
        let t = Instant::now();
        for id in NODES {
            c.start_node(id)?;
        }
        let first = steady(c, FIRST_STEADY, tally, true)?;
        eprintln!(
            "litefs-py-bench: cluster up, {} is primary ({:.1?} after the first start)",
            c.hostname(first),
            t.elapsed()
        );
        let mut rng = Rng::new(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64),
        );
        for n in 1..=kills {
            check_stop()?;
            std::thread::sleep(SETTLE + Duration::from_millis(rng.below(SETTLE_JITTER_MS)));
            let k = one_kill(c, n as i64, timeout, tally)?;
            eprintln!(
                "litefs-py-bench: kill {n}/{kills}: {} -> {} in {} ({} attempts); rejoin {}",
                c.hostname(k.primary),
                k.new_primary.map_or("?".into(), |p| c.hostname(p)),
                k.failover
                    .map_or("FAILED".into(), |d| format!("{:.0} ms", ms(d))),
                k.attempts,
                k.rejoin
                    .map_or("FAILED".into(), |d| format!("{:.0} ms", ms(d))),
            );
            let give_up = k.rejoin.is_none();
            records.push(k);
            if give_up {
                bail!("the cluster did not recover from kill {n}; stopping");
            }
        }
        Ok(())
    })();
    match r {
        Ok(()) => Ok(records),
        Err(e) => Err((records, e)),
    }
}

/// Waits until exactly one LiteFS is primary and the others name it, writes one row through
/// the primary's shim (creating the table on the first call) and waits until every replica has
/// every acknowledged row. Returns the primary.
fn steady(c: &RunCluster, timeout: Duration, tally: &mut Tally, first: bool) -> Result<u64> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    let primary = loop {
        let primaries: Vec<u64> = NODES
            .iter()
            .copied()
            .filter(|id| c.litefs_is_primary(*id) == Some(true))
            .collect();
        if let [p] = primaries[..] {
            let named = NODES
                .iter()
                .filter(|id| **id != p)
                .all(|id| c.litefs_primary(*id).as_deref() == Some(c.hostname(p).as_str()));
            let wrote = named
                && (|| -> Result<()> {
                    let mnt = c.mnt(p);
                    if first {
                        let conn = open(&mnt)?;
                        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
                        conn.execute(
                            "CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, kill INTEGER)",
                            [],
                        )?;
                    }
                    try_write(&mnt, 0)
                })()
                .map_err(|e| last = format!("write on node {p}: {e:#}"))
                .is_ok();
            if wrote {
                tally.acked += 1;
                break p;
            }
        } else {
            last = format!("LiteFS primaries: {primaries:?}");
        }
        if Instant::now() > deadline {
            bail!("no steady primary within {timeout:?}: {last}");
        }
        check_stop()?;
        std::thread::sleep(Duration::from_millis(50));
    };
    for id in NODES.iter().filter(|id| **id != primary) {
        loop {
            let n = count(&c.mnt(*id)).ok();
            if n == Some(tally.acked) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "node {id} has {n:?} of {} acknowledged rows after {timeout:?}",
                    tally.acked
                );
            }
            check_stop()?;
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(primary)
}

/// Kills the primary, measures until a survivor's shim commits a write, restarts the killed
/// node and waits for a steady cluster again. A failover or rejoin that times out is recorded;
/// an error means the run cannot go on.
fn one_kill(c: &mut RunCluster, n: i64, timeout: Duration, tally: &mut Tally) -> Result<Kill> {
    let primary = steady(c, timeout, tally, false).context("before the kill")?;
    let survivors: Vec<u64> = NODES.iter().copied().filter(|id| *id != primary).collect();
    let mut k = Kill {
        primary,
        ..Kill::default()
    };
    let killed_at = c.signal_kill(primary)?;
    let mut sampled = killed_at;
    'wait: loop {
        for s in &survivors {
            k.attempts += 1;
            if try_write(&c.mnt(*s), n).is_ok() {
                let at = Instant::now();
                tally.acked += 1;
                k.new_primary = Some(*s);
                k.failover = Some(at.duration_since(killed_at));
                break 'wait;
            }
        }
        let now = Instant::now();
        if now.duration_since(sampled) >= SAMPLE_EVERY {
            sampled = now;
            let both: Vec<u64> = survivors
                .iter()
                .copied()
                .filter(|id| c.litefs_is_primary(*id) == Some(true))
                .collect();
            if both.len() > 1 {
                tally.double_primary.push(format!(
                    "kill {n}: LiteFS on {both:?} both said isPrimary, {:.0} ms after the kill",
                    ms(now.duration_since(killed_at))
                ));
            }
        }
        if now.duration_since(killed_at) > timeout {
            let logs: Vec<String> = survivors
                .iter()
                .map(|id| format!("--- node {id} log ---\n{}", c.node(*id).log_tail(15)))
                .collect();
            k.error = Some(format!(
                "no survivor accepted a write within {timeout:?}\n{}",
                logs.join("\n")
            ));
            break;
        }
        check_stop()?;
        std::thread::sleep(POLL);
    }
    c.reap(primary)?;
    let restarted = Instant::now();
    let rejoined = c
        .start_node(primary)
        .map_err(anyhow::Error::from)
        .and_then(|()| steady(c, timeout, tally, false));
    match rejoined {
        Ok(p) => {
            k.rejoin = Some(restarted.elapsed());
            if k.new_primary.is_some_and(|np| np != p) {
                k.error = Some(format!(
                    "the primary moved to node {p} when node {primary} rejoined"
                ));
            }
        }
        Err(e) => {
            let msg = format!("rejoin of node {primary}: {e:#}");
            k.error = Some(k.error.map_or(msg.clone(), |prev| format!("{prev}\n{msg}")));
        }
    }
    Ok(k)
}
