//! `litefs-nemesis`: tries to break a 3-node cluster of `litefs-py run` with real LiteFS
//! (docs/testing.md, "The nemesis"). A continuous writer goes through every node's shim and logs
//! each acknowledged write's unique id; samplers watch LiteFS's `/info` and the shims' `.role`
//! for two primaries at once; a random schedule drawn from `--seed` injects faults for
//! `--duration`: kill -9 of a node's `run` process group (then a plain restart), SIGSTOP and
//! SIGCONT of a daemon, a whole-node freeze (cgroup v1 freezer), planned handoffs, partitions
//! (every node in a network namespace of the harness's own) and a slow disk under raft's data
//! dir (a loop device throttled by a blkio cgroup). Ctrl-C stops the schedule and cleans up.
//!
//! At the end it prints a table: faults by kind, double-primary samples, acknowledged writes
//! lost (in handoffs, and in total), and the longest time without a writable primary after each
//! kind of fault. It exits 1 if a double primary was sampled or a write acknowledged during a
//! handoff was lost (the invariants); losses after a kill -9 of the primary are reported, not
//! failed (LiteFS replicates asynchronously). Not part of `cargo test`; needs root, /dev/fuse and
//! LiteFS.

mod cgroup;
mod disk;
mod faults;
mod netns;
mod observe;
mod report;
mod schedule;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use litefs_py_testkit::cluster::{Options, RunCluster, SLEEPING_APP};
use litefs_py_testkit::{litefs, process, wait};

use crate::cgroup::{Freezer, Throttle};
use crate::disk::Disks;
use crate::faults::{Kind, Stopped};
use crate::netns::Network;
use crate::observe::{DB, Samplers, Writer};
use crate::report::{Fault, Report};
use crate::schedule::Schedule;

#[derive(Debug, Parser)]
#[command(
    name = "litefs-nemesis",
    version,
    about = "Inject random faults into a 3-node litefs-py cluster with real LiteFS and report \
             double primaries, lost acknowledged writes and unavailability"
)]
struct Args {
    /// Seed of the fault schedule (kinds, nodes, durations, pauses) [default: from the clock].
    /// The same seed draws the same schedule; the cluster's own timing still varies.
    #[arg(long)]
    seed: Option<u64>,

    /// How long to inject faults, e.g. 60s, 10m, 1h.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,

    /// The fault kinds to draw from (comma-separated): kill, stop, freeze, handoff, partition,
    /// slowdisk. The first faults are every kind once; the run lasts at least that long.
    #[arg(long, value_delimiter = ',',
          default_value = "kill,stop,freeze,handoff,partition,slowdisk",
          value_parser = Kind::parse)]
    faults: Vec<Kind>,

    /// The longest SIGSTOP, freeze, partition or slow disk.
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    max_pause: Duration,

    /// Print the first N steps the seed draws (kind, aim, pause, ...) and exit: the schedule
    /// is a function of --seed, --faults and --max-pause only.
    #[arg(long, value_name = "N")]
    print_schedule: Option<usize>,

    /// The litefs-py binary [default: litefs-py next to this binary].
    #[arg(long, value_name = "PATH")]
    litefs_py: Option<PathBuf>,

    /// The LiteFS binary [default: the wheel's, else `litefs` on PATH].
    #[arg(long, value_name = "PATH")]
    litefs: Option<PathBuf>,

    /// Where the cluster's directories go while it runs, and the acknowledged-write log and the
    /// nodes' logs (`litefs-nemesis-<seed>-n<id>.log`) stay [default: the temp dir].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// `90`, `90s`, `10m`, `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: a whole number with s, m or h (60s, 10m)"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: the unit is s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

/// How long a fault's aftermath may take before the harness moves on (and reports it).
const RECOVERY: Duration = Duration::from_secs(60);

fn main() {
    if let Err(e) = real_main() {
        eprintln!("litefs-nemesis: {e:#}");
        std::process::exit(2);
    }
}

fn real_main() -> Result<()> {
    let args = Args::parse();
    if args.faults.is_empty() {
        bail!("--faults: name at least one kind");
    }
    let mut kinds = args.faults.clone();
    kinds.sort();
    kinds.dedup();
    if let (Some(n), Some(seed)) = (args.print_schedule, args.seed) {
        let mut s = Schedule::new(seed, &kinds, 3, args.max_pause);
        for i in 0..n {
            println!("{i:>4} {:?}", s.next_step());
        }
        return Ok(());
    }
    if args.print_schedule.is_some() {
        bail!("--print-schedule needs --seed");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/dev/fuse").exists() {
        bail!(
            "needs root and /dev/fuse (it mounts FUSE filesystems, freezes cgroups and creates \
             network namespaces)"
        );
    }
    if kinds.contains(&Kind::Freeze) {
        Freezer::check().context("freeze (leave it out with --faults)")?;
    }
    if kinds.contains(&Kind::SlowDisk) {
        Throttle::check().context("slowdisk (leave it out with --faults)")?;
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let binary = match &args.litefs_py {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("litefs-py"),
    };
    if !binary.exists() {
        bail!(
            "{} not found: build it (cargo build) or pass --litefs-py",
            binary.display()
        );
    }
    let litefs_bin = litefs::find_binary(args.litefs.as_deref()).map_err(anyhow::Error::msg)?;
    // Ctrl-C or SIGTERM: the schedule stops and everything below is undone (a second one exits
    // at once). The testkit's waits give up too.
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, interrupted.clone())?;
        signal_hook::flag::register(sig, interrupted.clone())?;
    }
    wait::abort_on(interrupted.clone());

    eprintln!(
        "nemesis: seed {seed}, {:?} of faults ({}), LiteFS {}",
        args.duration,
        kinds.iter().map(|k| k.flag()).collect::<Vec<_>>().join(","),
        process::version_line(&litefs_bin)
    );
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let ids: Vec<u64> = vec![1, 2, 3];
    // Declared before the cluster: dropped after its nodes stopped. The harness joins the hub
    // namespace now, before any thread of its own starts.
    let mut net = Network::new(&ids, kinds.contains(&Kind::Partition))?;
    net.enter_hub()?;
    let mut disks = if kinds.contains(&Kind::SlowDisk) {
        Some(Disks::new(&parent)?)
    } else {
        None
    };
    let mut opts = Options::run(&binary);
    // Its own process group per node: kill -9 of the group is what systemd and Kubernetes do.
    opts.spawn.own_group = true;
    opts.log_level = Some("info".into());
    opts.parent = args.dir.clone();
    opts.nets = ids.iter().map(|id| (*id, net.node_net(*id))).collect();
    let mut c = RunCluster::create(opts, &litefs_bin, 3).context("creating the cluster")?;
    if let Some(d) = disks.as_mut() {
        for &id in &ids {
            let raft = c.node(id).path("raft");
            d.attach(id, &raft)
                .with_context(|| format!("node {id}'s raft disk"))?;
            c.node_mut(id).data_mount(&raft);
        }
    }
    // Declared after the cluster: the nodes' logs are copied out before its dir goes.
    let logs = SaveLogs(
        ids.iter()
            .map(|id| {
                let to = parent.join(format!("litefs-nemesis-{seed}-n{id}.log"));
                (c.node(*id).path("run.log"), to)
            })
            .collect(),
    );
    for &id in &ids {
        c.node_mut(id)
            .start(SLEEPING_APP)
            .with_context(|| format!("starting node {id}"))?;
    }
    let first = c
        .wait_one_primary(&ids, Duration::from_secs(90))
        .context("the first primary")?;
    observe::create_table(&c.db(first, DB)).context("creating the table")?;
    // Declared after the cluster so that they are dropped (everything thawed, unthrottled)
    // before the cluster's guards stop the nodes: a frozen node cannot be stopped.
    let mut freezer = if kinds.contains(&Kind::Freeze) {
        let f = Freezer::new()?;
        eprintln!("nemesis: freezes in {}", f.describe());
        Some(f)
    } else {
        None
    };
    let mut throttle = if kinds.contains(&Kind::SlowDisk) {
        Some(Throttle::new()?)
    } else {
        None
    };
    let ack_log = parent.join(format!("litefs-nemesis-{seed}-acks.log"));
    let writer = Writer::start(
        ids.iter().map(|id| (*id, c.db(*id, DB))).collect(),
        ack_log.clone(),
    )
    .context("starting the writer")?;
    let samplers = Samplers::start(
        c.nodes
            .values()
            .map(|n| (n.id, n.ports.litefs.clone(), n.mnt()))
            .collect(),
    );
    let mut stopped = Stopped::default();
    let mut schedule = Schedule::new(seed, &kinds, ids.len(), args.max_pause);
    let mut faults: Vec<Fault> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let started = Instant::now();
    let started_wall = std::time::SystemTime::now();
    let stop_now = || interrupted.load(Ordering::Relaxed);
    // Sleeps `d`, or less once interrupted (so that a fault is undone at once).
    let nap = |d: Duration| {
        let end = Instant::now() + d;
        while Instant::now() < end && !stop_now() {
            std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
        }
    };

    while (started.elapsed() < args.duration || !schedule.first_round_done()) && !stop_now() {
        let step = schedule.next_step();
        let kind = step.kind;
        let primary = current_primary(&c, &ids);
        // Most faults hit the primary: that is where they hurt.
        let node = match primary {
            Some(p) if step.at_primary => p,
            _ => ids[step.other],
        };
        let pause = step.pause;
        // When the fault took effect: after the signal, or once the freezer answered (a write
        // acknowledged before that is no sign of a writable primary after the fault).
        let mut at = Instant::now();
        let mut note = String::new();
        match kind {
            Kind::Kill => {
                let pid = c.node_mut(node).pid().context("a running node")?;
                // SAFETY: the process group of our unreaped child `pid` (own_group: pgid = pid).
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                at = Instant::now();
                if let Err(e) = c.reap(node) {
                    note = format!("after kill -9: {e}");
                }
                if let Err(e) = c.start_node(node) {
                    problems.push(format!("node {node}: restart after kill -9 failed: {e}"));
                    note.push_str(" restart failed");
                    // Keep going with what is left; try once more after detaching.
                    let _ = litefs_py_testkit::mount::detach(&c.mnt(node));
                    let _ = c.node_mut(node).wait_exit(Duration::from_secs(30));
                    if let Err(e) = c.start_node(node) {
                        bail!("node {node} cannot be restarted: {e}");
                    }
                }
            }
            Kind::StopDaemon => {
                let pid = c.node_mut(node).pid().context("a running node")?;
                stopped.stop(pid);
                at = Instant::now();
                nap(pause);
                stopped.cont_all();
                note = format!("{pause:?}");
            }
            Kind::Freeze => {
                let pid = c.node_mut(node).pid().context("a running node")?;
                let tree = faults::process_tree(pid);
                let f = freezer.as_mut().expect("freezes only with a freezer");
                let frozen = f.freeze(node, &tree)?;
                at = Instant::now();
                nap(pause);
                f.thaw(node)?;
                note = format!("{pause:?}, {} processes", tree.len());
                if !frozen {
                    note.push_str(", stuck FREEZING: a task in an uninterruptible wait");
                    problems.push(format!(
                        "node {node}: the freezer stayed FREEZING (not FROZEN) for {pause:?}"
                    ));
                }
            }
            Kind::Handoff => {
                let via = ids[step.via];
                if let Err(e) = faults::handoff(&binary, &c.node(via).config_path()) {
                    note = format!("refused: {e}");
                }
            }
            Kind::Partition => {
                net.partition(node)?;
                at = Instant::now();
                nap(pause);
                net.heal(node)?;
                note = format!("{pause:?}");
            }
            Kind::SlowDisk => {
                let pid = c.node_mut(node).pid().context("a running node")?;
                let tree = faults::process_tree(pid);
                let dev = disks
                    .as_ref()
                    .and_then(|d| d.dev(node))
                    .context("a raft disk")?
                    .to_string();
                let t = throttle.as_mut().expect("slow disks only with a throttle");
                t.slow(node, &dev, &tree, step.iops)?;
                at = Instant::now();
                nap(pause);
                t.restore(node)?;
                note = format!("{pause:?} at {} IO/s", step.iops);
            }
        }
        let ended = Instant::now();
        // The aftermath: until a write is acknowledged after the fault ended, bounded; a node
        // that exits meanwhile (a fenced LiteFS makes `run` exit 73) is restarted, as its
        // supervisor would.
        let deadline = ended + RECOVERY;
        while writer.first_ack_after(ended).is_none() && Instant::now() < deadline && !stop_now() {
            supervise(&mut c, &ids, &mut note)?;
            std::thread::sleep(Duration::from_millis(20));
        }
        supervise(&mut c, &ids, &mut note)?;
        let recovered = writer.first_ack_after(at);
        let fault = Fault {
            kind,
            node,
            was_primary: primary == Some(node),
            at,
            ended,
            first_ack: recovered,
            recovered_after_end: writer.first_ack_after(ended).is_some(),
            note,
        };
        eprintln!("nemesis: {}", fault.line(started));
        faults.push(fault);
        nap(step.quiet);
        supervise(&mut c, &ids, &mut String::new())?;
    }
    if stop_now() {
        problems.push("interrupted: the schedule was cut short".into());
    }

    // Settle: one primary agreed by all, then every acknowledged id must be in its database.
    let last = c.wait_one_primary(&ids, Duration::from_secs(90));
    let acks = writer.stop(Duration::from_secs(5));
    let sampled = samplers.finish();
    let final_primary = last.context("one primary after the schedule")?;
    let present = observe::ids(&c.db(final_primary, DB)).context("reading the table")?;
    let report = Report {
        seed,
        t0: started,
        t0_wall: started_wall,
        duration: started.elapsed(),
        faults,
        acks,
        present,
        sampled,
        problems,
    };
    let failed = report.print();
    drop(stopped);
    drop(throttle);
    drop(freezer);
    drop(logs);
    c.shutdown().context("stopping the cluster")?;
    drop(disks);
    drop(net);
    eprintln!(
        "nemesis: acknowledged writes logged in {}, the nodes' logs next to it",
        ack_log.display()
    );
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

/// What a supervisor (systemd's `Restart=on-failure`) does: every node whose `litefs-py run`
/// exited is cleaned up after and restarted; said in `note`.
fn supervise(c: &mut RunCluster, ids: &[u64], note: &mut String) -> Result<()> {
    for &id in ids {
        let Some(status) = c.node_mut(id).exited() else {
            continue;
        };
        if let Err(e) = c.reap(id) {
            eprintln!("nemesis: node {id} after it exited: {e}");
        }
        for d in ["mnt", "lower"] {
            let _ = litefs_py_testkit::mount::detach(&c.node(id).path(d));
        }
        c.start_node(id)
            .with_context(|| format!("restarting node {id} after it exited ({status})"))?;
        let code = status.code().map_or(status.to_string(), |c| c.to_string());
        note.push_str(&format!(
            "{}node {id} exited {code}, restarted",
            if note.is_empty() { "" } else { "; " }
        ));
    }
    Ok(())
}

/// Copies each node's log (from, to) out of the cluster's dir on drop, also when the run fails.
struct SaveLogs(Vec<(PathBuf, PathBuf)>);

impl Drop for SaveLogs {
    fn drop(&mut self) {
        for (from, to) in &self.0 {
            if let Err(e) = std::fs::copy(from, to) {
                eprintln!("nemesis: saving {}: {e}", from.display());
            }
        }
    }
}

/// The node whose `.role` says primary (the first one, if several do).
fn current_primary(c: &RunCluster, ids: &[u64]) -> Option<u64> {
    ids.iter()
        .copied()
        .find(|id| c.role(*id).as_deref() == Some("primary"))
}
