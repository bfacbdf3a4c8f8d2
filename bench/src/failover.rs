//! `litefs-py-bench failover`: how long a 3-node cluster of real `litefs-py mount --config`
//! processes takes to agree on a new primary after kill -9 of the current one, measured the way
//! an application sees it: from the kill until every survivor's `.primary` names the same new
//! node (the new primary's own `.primary` being absent). Then the killed node is restarted and
//! the time until it is a replica of the new primary is measured too. Every wait is bounded: a
//! failover that does not complete in `--timeout` is a failure, reported, never a hang.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use serde_json::{Value, json};

use litefs_py_testkit::cluster::{MountCluster, Options, random_secret};
use litefs_py_testkit::config::Raft;

use crate::measure::{Rng, check_stop, percentile};
use crate::{report, sys};

/// A 3-node cluster of `litefs-py mount --config` processes (the test kit's).
pub const NODES: [u64; 3] = [1, 2, 3];

#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// Leader kills to measure [default: 30; 5 with --quick].
    #[arg(long, value_name = "N")]
    kills: Option<usize>,

    /// A smoke run: 5 kills.
    #[arg(long)]
    quick: bool,

    /// A failover (or a rejoin) not complete after this many seconds is a failure.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    timeout: u64,

    /// Override raft.heartbeat-interval (ms) [default: litefs-py's default].
    #[arg(long, value_name = "MS")]
    heartbeat_interval: Option<u64>,

    /// Override raft.election-timeout-min (ms).
    #[arg(long, value_name = "MS")]
    election_timeout_min: Option<u64>,

    /// Override raft.election-timeout-max (ms).
    #[arg(long, value_name = "MS")]
    election_timeout_max: Option<u64>,

    /// The litefs-py binary [default: litefs-py next to this binary].
    #[arg(long, value_name = "PATH")]
    litefs_py: Option<PathBuf>,

    /// Parent of the temporary node dirs [default: $TMPDIR, else /tmp].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Where the JSON goes [default: target/bench of the workspace this binary was built in].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// How often the survivors' files are read while waiting.
const POLL: Duration = Duration::from_millis(1);
/// Time between a rejoin and the next kill: a fixed part plus a random part, so that kills land
/// at every phase of the heartbeat.
const SETTLE: Duration = Duration::from_millis(300);
const SETTLE_JITTER_MS: u64 = 200;
/// The first agreement after start-up (bootstrap included).
const FIRST_AGREEMENT: Duration = Duration::from_secs(30);

/// One kill.
#[derive(Debug, Default)]
struct Kill {
    leader: u64,
    new_leader: Option<u64>,
    failover: Option<Duration>,
    rejoin: Option<Duration>,
    /// The restarted node's return moved the primary (it must not).
    moved_on_rejoin: bool,
    error: Option<String>,
}

impl Kill {
    fn to_json(&self, n: usize) -> Value {
        json!({
            "kill": n,
            "leader": self.leader,
            "new_leader": self.new_leader,
            "failover_ms": self.failover.map(ms),
            "rejoin_ms": self.rejoin.map(ms),
            "moved_on_rejoin": self.moved_on_rejoin,
            "error": self.error,
        })
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// min/p50/p90/p99/max/mean of `xs` (ms), nearest rank as in the shim benchmark: with fewer
/// than 100 samples, p99 is the maximum.
pub(crate) fn stats(xs: &[f64]) -> Value {
    if xs.is_empty() {
        return json!({ "n": 0 });
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let r = |x: f64| (x * 10.0).round() / 10.0;
    json!({
        "n": v.len(),
        "min": r(v[0]),
        "p50": r(percentile(&v, 50.0)),
        "p90": r(percentile(&v, 90.0)),
        "p99": r(percentile(&v, 99.0)),
        "max": r(v[v.len() - 1]),
        "mean": r(v.iter().sum::<f64>() / v.len() as f64),
    })
}

pub(crate) fn stats_line(s: &Value) -> String {
    if s["n"] == 0 {
        return "no samples".into();
    }
    let f = |k: &str| format!("{k} {:.0}", s[k].as_f64().unwrap_or(f64::NAN));
    format!(
        "n={}  {}  {}  {}  {}  {}  ({}) ms",
        s["n"],
        f("min"),
        f("p50"),
        f("p90"),
        f("p99"),
        f("max"),
        f("mean")
    )
}

pub fn run(args: FailoverArgs, target: &Path, exe_dir: &Path) -> Result<bool> {
    let started = Instant::now();
    let unix_time = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let kills = args.kills.unwrap_or(if args.quick { 5 } else { 30 });
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
    let opts = Options {
        parent: args.dir.clone(),
        hostname_prefix: "bench-node-".into(),
        secret: random_secret()?,
        test_faults: false,
        raft: Raft::from_ms(
            args.heartbeat_interval,
            args.election_timeout_min,
            args.election_timeout_max,
        ),
        spawn: crate::mounts::spawn_options(),
        ..Options::mount(&binary)
    };
    let mut cluster = MountCluster::of_mounts(opts, &NODES)?;
    let effective = cluster.effective("raft")?;
    let version = litefs_py_testkit::process::version_line(&binary);
    println!(
        "litefs-py-bench failover ({kills} kills): {version}, kernel {}, {} CPUs; 3 nodes on \
         loopback; raft {}",
        sys::kernel_release(),
        sys::online_cpus(),
        effective
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut doubles = Vec::new();
    let outcome = measure(&mut cluster, kills, timeout, &mut doubles);
    // Clean-up first (checked), whatever happened; then the report.
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
    let rejoin_failed = records
        .iter()
        .filter(|k| k.failover.is_some() && k.rejoin.is_none())
        .count();
    let moved = records.iter().filter(|k| k.moved_on_rejoin).count();
    let (fs, rs) = (stats(&failovers), stats(&rejoins));
    println!(
        "\nfailover: kill -9 of the primary -> every survivor's .primary names the new one\n  \
         {}\n  kills {}, failed {failed} (no agreement within {timeout:?})",
        stats_line(&fs),
        records.len(),
    );
    println!(
        "rejoin: restart of the killed node -> it is a replica of the new primary\n  {}\n  \
         failed {rejoin_failed}, primary moved by the rejoin {moved}",
        stats_line(&rs)
    );
    println!("two primaries at once: {} sweeps", doubles.len());
    for d in doubles.iter().take(5) {
        println!("  {d}");
    }
    report::print_kill_errors(records.iter().map(|k| k.error.as_ref()), aborted.as_ref());

    let elapsed = started.elapsed().as_secs_f64();
    let doc = json!({
        "schema": 1,
        "benchmark": "failover",
        "unix_time": unix_time,
        "elapsed_s": elapsed,
        "machine": report::machine(&version, &binary),
        "settings": {
            "nodes": NODES.len(),
            "kills": kills,
            "quick": args.quick,
            "timeout_s": timeout.as_secs(),
            "poll_ms": ms(POLL),
            "settle_ms": [ms(SETTLE), ms(SETTLE) + SETTLE_JITTER_MS as f64],
            "raft": effective,
        },
        "failover_ms": fs,
        "failover_failures": failed,
        "rejoin_ms": rs,
        "rejoin_failures": rejoin_failed,
        "moved_on_rejoin": moved,
        "double_primary_sweeps": doubles.len(),
        "double_primary_examples": doubles.iter().take(20).collect::<Vec<_>>(),
        "aborted": aborted,
        "kills": records.iter().enumerate().map(|(i, k)| k.to_json(i + 1)).collect::<Vec<_>>(),
    });
    let out = args.out.unwrap_or_else(|| target.join("bench"));
    let path = report::write_json(&out, "failover", unix_time, &doc)?;
    println!(
        "\nJSON: {} (and failover-latest.json); {elapsed:.0} s in all",
        path.display()
    );
    cleanup?;
    Ok(failed == 0 && rejoin_failed == 0 && moved == 0 && doubles.is_empty() && aborted.is_none())
}

type Partial = (Vec<Kill>, anyhow::Error);

/// Starts the cluster and runs the kills. On an error that stops the run, returns what was
/// measured so far with it.
fn measure(
    c: &mut MountCluster,
    kills: usize,
    timeout: Duration,
    doubles: &mut Vec<String>,
) -> Result<Vec<Kill>, Partial> {
    let mut records = Vec::new();
    let r = (|| -> Result<()> {
        let t = Instant::now();
        c.start_all()?;
        let (first, _) = wait_agreement(c, &NODES, FIRST_AGREEMENT, doubles)?;
        eprintln!(
            "litefs-py-bench: cluster up, {} is primary ({:.0?} after the first start)",
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
            let k = one_kill(c, timeout, doubles)?;
            eprintln!(
                "litefs-py-bench: kill {n}/{kills}: {} -> {} in {}; rejoin {}",
                c.hostname(k.leader),
                k.new_leader.map_or("?".into(), |l| c.hostname(l)),
                k.failover
                    .map_or("FAILED".into(), |d| format!("{:.0} ms", ms(d))),
                k.rejoin
                    .map_or("FAILED".into(), |d| format!("{:.0} ms", ms(d))),
            );
            let give_up = k.new_leader.is_none() && k.rejoin.is_none();
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

/// Kills the current primary, measures the failover, restarts the killed node and measures its
/// rejoin. A failover or rejoin that times out is recorded in the result; an error means the
/// run cannot go on.
fn one_kill(c: &mut MountCluster, timeout: Duration, doubles: &mut Vec<String>) -> Result<Kill> {
    // The cluster must agree right now: the previous rejoin ended in agreement.
    let (leader, _) = wait_agreement(c, &NODES, timeout, doubles).context("before the kill")?;
    let survivors: Vec<u64> = NODES.iter().copied().filter(|id| *id != leader).collect();
    let mut k = Kill {
        leader,
        ..Kill::default()
    };
    let killed_at = c.signal_kill(leader)?;
    match wait_new_primary(c, &survivors, leader, killed_at, timeout, doubles) {
        Ok((new, at)) => {
            k.new_leader = Some(new);
            k.failover = Some(at.duration_since(killed_at));
        }
        Err(e) => {
            let logs: Vec<String> = survivors
                .iter()
                .map(|id| format!("--- node {id} log ---\n{}", c.log_tail(*id, 15)))
                .collect();
            k.error = Some(format!("{e:#}\n{}", logs.join("\n")));
        }
    }
    c.reap(leader)?;
    let restarted_at = Instant::now();
    c.start(leader)?;
    match wait_agreement(c, &NODES, timeout, doubles) {
        Ok((p, at)) => {
            k.rejoin = Some(at.duration_since(restarted_at));
            k.moved_on_rejoin = k.new_leader.is_some_and(|n| n != p);
            if k.new_leader.is_none() {
                k.new_leader = Some(p);
            }
        }
        Err(e) => {
            let msg = format!("rejoin of node {leader}: {e:#}");
            k.error = Some(k.error.map_or(msg.clone(), |prev| format!("{prev}\n{msg}")));
        }
    }
    Ok(k)
}

/// Polls `ids` every [`POLL`] until they agree on a primary, or `timeout` passes. Counts
/// double-primary sweeps into `doubles`.
fn wait_agreement(
    c: &MountCluster,
    ids: &[u64],
    timeout: Duration,
    doubles: &mut Vec<String>,
) -> Result<(u64, Instant)> {
    let started = Instant::now();
    let mut buf = String::new();
    loop {
        let s = c.sweep(ids, &mut buf);
        let now = Instant::now();
        if let Some(p) = s.double_primary {
            doubles.push(format!("nodes {p:?} all said primary"));
        }
        if let Some(p) = s.agreed {
            return Ok((p, now));
        }
        if now.duration_since(started) > timeout {
            bail!(
                "nodes {ids:?} did not agree on a primary within {timeout:?}: {}",
                c.describe(ids)
            );
        }
        check_stop()?;
        std::thread::sleep(POLL);
    }
}

/// Polls the survivors until they agree on a primary other than `old`.
fn wait_new_primary(
    c: &MountCluster,
    survivors: &[u64],
    old: u64,
    since: Instant,
    timeout: Duration,
    doubles: &mut Vec<String>,
) -> Result<(u64, Instant)> {
    let mut buf = String::new();
    let mut last_views: BTreeMap<u64, String> = BTreeMap::new();
    loop {
        let s = c.sweep(survivors, &mut buf);
        let now = Instant::now();
        if let Some(p) = s.double_primary {
            doubles.push(format!(
                "survivors {p:?} both said primary after node {old} died"
            ));
        }
        if let Some(p) = s.agreed.filter(|p| *p != old) {
            return Ok((p, now));
        }
        if now.duration_since(since) > timeout {
            for id in survivors {
                last_views.insert(*id, format!("{:?}", c.primary_view(*id, &mut buf)));
            }
            bail!(
                "the survivors did not agree on a new primary within {timeout:?}: {last_views:?}"
            );
        }
        check_stop()?;
        std::thread::sleep(POLL);
    }
}
