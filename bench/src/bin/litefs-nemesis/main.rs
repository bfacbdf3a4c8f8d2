//! `litefs-nemesis`: tries to break a 3-node cluster of `litefs-py run` with real LiteFS
//! (docs/testing.md, "The nemesis"). A continuous writer goes through every node's shim and logs
//! each acknowledged write's unique id; samplers watch LiteFS's `/info` and the shims' `.role`
//! for two primaries at once; a random schedule drawn from `--seed` injects faults for
//! `--duration`: kill -9 of a node's `run` process group (then a plain restart), SIGSTOP and
//! SIGCONT of a daemon, a whole-node freeze (cgroup v1 freezer) and planned handoffs.
//!
//! At the end it prints a table: faults by kind, double-primary samples, acknowledged writes
//! lost (in handoffs, and in total), and the longest time without a writable primary after each
//! kind of fault. It exits 1 if a double primary was sampled or a write acknowledged during a
//! handoff was lost (the invariants); losses after a kill -9 of the primary are reported, not
//! failed (LiteFS replicates asynchronously). Not part of `cargo test`; needs root, /dev/fuse and
//! LiteFS.

mod faults;
mod observe;
mod report;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use litefs_py_testkit::cluster::{Options, RunCluster};
use litefs_py_testkit::{litefs, process};

use crate::faults::{Freezer, Kind, Stopped};
use crate::observe::{DB, Samplers, Writer};
use crate::report::{Fault, Report};

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

    /// The fault kinds to draw from (comma-separated): kill, stop, freeze, handoff.
    #[arg(long, value_delimiter = ',', default_value = "kill,stop,freeze,handoff",
          value_parser = Kind::parse)]
    faults: Vec<Kind>,

    /// The longest SIGSTOP or freeze.
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    max_pause: Duration,

    /// The litefs-py binary [default: litefs-py next to this binary].
    #[arg(long, value_name = "PATH")]
    litefs_py: Option<PathBuf>,

    /// The LiteFS binary [default: the wheel's, else `litefs` on PATH].
    #[arg(long, value_name = "PATH")]
    litefs: Option<PathBuf>,

    /// Where the cluster's directories and the acknowledged-write log go [default: a temp dir,
    /// kept if the run fails].
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

/// splitmix64: the schedule's random numbers, reproducible from the seed without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo) + 1))
    }
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
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/dev/fuse").exists() {
        bail!("needs root and /dev/fuse (it mounts FUSE filesystems and freezes cgroups)");
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
    let mut opts = Options::run(&binary);
    // Its own process group per node: kill -9 of the group is what systemd and Kubernetes do.
    opts.spawn.own_group = true;
    opts.log_level = Some("info".into());
    opts.parent = args.dir.clone();
    let freezer_mounted = std::path::Path::new("/sys/fs/cgroup/freezer/cgroup.procs").exists();
    if args.faults.contains(&Kind::Freeze) && !freezer_mounted {
        eprintln!("nemesis: no cgroup v1 freezer at /sys/fs/cgroup/freezer: no freezes");
    }
    let kinds: Vec<Kind> = args
        .faults
        .iter()
        .copied()
        .filter(|k| *k != Kind::Freeze || freezer_mounted)
        .collect();

    eprintln!(
        "nemesis: seed {seed}, {:?} of faults ({}), LiteFS {}",
        args.duration,
        kinds.iter().map(|k| k.flag()).collect::<Vec<_>>().join(","),
        process::version_line(&litefs_bin)
    );
    let mut c = RunCluster::start(opts, &litefs_bin, 3).context("starting the cluster")?;
    let ids = c.ids();
    let first = c
        .wait_one_primary(&ids, Duration::from_secs(90))
        .context("the first primary")?;
    observe::create_table(&c.db(first, DB)).context("creating the table")?;
    // Declared after the cluster so that it is dropped (everything thawed) before the cluster's
    // guards stop the nodes: a frozen node cannot be stopped.
    let mut freezer = if kinds.contains(&Kind::Freeze) {
        Freezer::new()?
    } else {
        None
    };
    let ack_log = args
        .dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("litefs-nemesis-{seed}-acks.log"));
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
    let mut rng = Rng(seed);
    let mut faults: Vec<Fault> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let started = Instant::now();

    while started.elapsed() < args.duration {
        let kind = kinds[rng.below(kinds.len() as u64) as usize];
        let primary = current_primary(&c, &ids);
        // Most faults hit the primary: that is where they hurt.
        let node = match primary {
            Some(p) if rng.below(10) < 7 => p,
            _ => ids[rng.below(ids.len() as u64) as usize],
        };
        let pause = rng.millis(1000, args.max_pause.as_millis() as u64);
        let quiet = rng.millis(1000, 4000);
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
                std::thread::sleep(pause);
                stopped.cont_all();
                note = format!("{pause:?}");
            }
            Kind::Freeze => {
                let pid = c.node_mut(node).pid().context("a running node")?;
                let tree = faults::process_tree(pid);
                let f = freezer.as_mut().expect("freezes only with a freezer");
                let frozen = f.freeze(node, &tree)?;
                at = Instant::now();
                std::thread::sleep(pause);
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
                let via = ids[rng.below(ids.len() as u64) as usize];
                if let Err(e) = faults::handoff(&binary, &c.node(via).config_path()) {
                    note = format!("refused: {e}");
                }
            }
        }
        let ended = Instant::now();
        // The aftermath: until a write is acknowledged after the fault ended, bounded.
        let deadline = ended + RECOVERY;
        while writer.first_ack_after(ended).is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
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
        std::thread::sleep(quiet);
    }

    // Settle: one primary agreed by all, then every acknowledged id must be in its database.
    let last = c.wait_one_primary(&ids, Duration::from_secs(90));
    let acks = writer.stop(Duration::from_secs(5));
    let sampled = samplers.finish();
    let final_primary = last.context("one primary after the schedule")?;
    let present = observe::ids(&c.db(final_primary, DB)).context("reading the table")?;
    let report = Report {
        seed,
        duration: started.elapsed(),
        faults,
        acks,
        present,
        sampled,
        problems,
    };
    let failed = report.print();
    drop(stopped);
    drop(freezer);
    c.shutdown().context("stopping the cluster")?;
    eprintln!(
        "nemesis: acknowledged writes logged in {}",
        ack_log.display()
    );
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

/// The node whose `.role` says primary (the first one, if several do).
fn current_primary(c: &RunCluster, ids: &[u64]) -> Option<u64> {
    ids.iter()
        .copied()
        .find(|id| c.role(*id).as_deref() == Some("primary"))
}
