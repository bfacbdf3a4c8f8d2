//! `litefs-py-bench`: what the litefs-py FUSE shim costs. Every workload runs directly on a
//! lower dir and through the shim (one `litefs-py mount` child per data-path mode) in the same
//! run; optionally the same over a single-node LiteFS, where the plain request pattern of an
//! app (a new connection per request, from several processes) runs too (see `requests.rs`).
//! Prints tables, writes JSON.
//!
//! `litefs-py-bench failover` measures something else: how long a 3-node cluster takes to agree
//! on a new primary after kill -9 of the current one (see `failover.rs`);
//! `litefs-py-bench litefs-failover` the same with `litefs-py run` and real LiteFS, up to the
//! first write the new primary accepts (see `litefs_failover.rs`);
//! `litefs-py-bench proxy` what litefs-py's HTTP proxy costs reads and writes on 3 such nodes,
//! and what `durability: replicated` adds (see `proxy/`).

mod failover;
mod litefs_failover;
mod measure;
mod micro;
mod mounts;
mod primary_check;
mod proxy;
mod report;
mod requests;
mod run;
mod sys;
mod workloads;

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use serde_json::json;

use crate::measure::Settings;
use crate::report::{Machine, Section};

#[derive(Debug, Parser)]
#[command(
    name = "litefs-py-bench",
    version,
    about = "Benchmark the litefs-py FUSE shim against its lower dir",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    mode: Option<Mode>,

    /// Small sizes and ~1 s loops: a smoke run that takes well under a minute.
    #[arg(long)]
    quick: bool,

    /// The litefs-py binary [default: litefs-py next to this binary].
    #[arg(long, value_name = "PATH")]
    litefs_py: Option<PathBuf>,

    /// LiteFS binary for the LiteFS baseline [default: `litefs` on PATH].
    #[arg(long, value_name = "PATH")]
    litefs: Option<PathBuf>,

    /// Skip the LiteFS baseline even if LiteFS is installed.
    #[arg(long, conflicts_with = "litefs")]
    no_litefs: bool,

    /// FUSE worker threads for the shim [default: the shim's default].
    #[arg(long, value_name = "N")]
    threads: Option<u16>,

    /// Parent of the temporary lower dirs and mountpoints, i.e. the disk being measured
    /// [default: $TMPDIR, else /tmp].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Pin the benchmark and every daemon it starts to this CPU. A FUSE round trip then costs
    /// no cross-CPU wake-up, which isolates the shim's own cost from the machine's.
    #[arg(long, value_name = "N")]
    cpu: Option<usize>,

    /// Processes making the plain requests over LiteFS (a new connection, a primary check,
    /// two selects or one insert, close; each process loops).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    request_procs: u16,

    /// Where the JSON goes [default: target/bench of the workspace this binary was built in].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Mode {
    /// Failover time of a 3-node cluster: kill -9 of the primary until every survivor's
    /// `.primary` names the new one; p50/p90/p99 over many kills, JSON as failover-*.json.
    Failover(failover::FailoverArgs),
    /// Failover of 3 `litefs-py run` nodes with real LiteFS: kill -9 of the primary (its
    /// `litefs-py run` and its LiteFS) until a survivor's shim commits a write; p50/p99 over
    /// many kills, the killed node rejoining before the next; JSON as litefs-failover-*.json.
    LitefsFailover(litefs_failover::LiteFsFailoverArgs),
    /// The HTTP proxy on 3 `litefs-py run` nodes with real LiteFS: reads through a proxy vs
    /// straight to the app, writes forwarded from a replica vs sent to the primary, and what
    /// `durability: replicated` adds over `async`; JSON as proxy-*.json (or --json PATH).
    Proxy(proxy::ProxyArgs),
    /// One process of the plain-request workload (started by the benchmark itself).
    #[command(hide = true)]
    ReqWorker(requests::WorkerArgs),
}

fn main() {
    let mut args = Args::parse();
    if let Some(Mode::ReqWorker(w)) = args.mode.take_if(|m| matches!(m, Mode::ReqWorker(_))) {
        // No handlers here: the benchmark stops its workers with SIGTERM, which must end them.
        if let Err(e) = requests::worker(w) {
            eprintln!("litefs-py-bench req-worker: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = install_signal_handlers() {
        eprintln!("litefs-py-bench: {e:#}");
        std::process::exit(1);
    }
    // Every guard (children, mounts, temp dirs) lives inside `run`, so it is dropped before exit.
    let result = match args.mode.take() {
        None => run(args),
        Some(Mode::Failover(f)) => run_failover(f),
        Some(Mode::LitefsFailover(f)) => run_litefs_failover(f),
        Some(Mode::Proxy(p)) => run_proxy(p),
        Some(Mode::ReqWorker(_)) => unreachable!("handled above"),
    };
    if let Err(e) = result {
        eprintln!("litefs-py-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run_failover(args: failover::FailoverArgs) -> Result<()> {
    let exe_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let clean = failover::run(args, &target_dir()?, &exe_dir)?;
    ensure!(
        clean,
        "failover: some kills failed or the safety check fired (see above)"
    );
    Ok(())
}

fn run_litefs_failover(args: litefs_failover::LiteFsFailoverArgs) -> Result<()> {
    let exe_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let clean = litefs_failover::run(args, &target_dir()?, &exe_dir)?;
    ensure!(
        clean,
        "litefs-failover: some kills failed, a check fired or rows are missing (see above)"
    );
    Ok(())
}

fn run_proxy(args: proxy::ProxyArgs) -> Result<()> {
    let exe_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let clean = proxy::run(args, &target_dir()?, &exe_dir)?;
    ensure!(
        clean,
        "proxy: a section or a case failed (see above; the JSON has the errors)"
    );
    Ok(())
}

/// The first Ctrl-C asks the run to stop at the next loop check and clean up; a second one
/// exits at once (the children then get SIGTERM through PR_SET_PDEATHSIG).
fn install_signal_handlers() -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = measure::stop_flag().clone();
    // Every wait of the test kit (node start-ups, agreements) ends on the first Ctrl-C too.
    litefs_py_testkit::wait::abort_on(flag.clone());
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, flag.clone())?;
        signal_hook::flag::register(sig, flag.clone())?;
    }
    Ok(())
}

/// `<target>/release/litefs-py-bench` → `<target>`.
fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let profile = exe.parent().context("binary has no parent dir")?;
    Ok(profile
        .parent()
        .context("profile dir has no parent")?
        .to_path_buf())
}

/// Pins this process; threads and children started later inherit the mask.
fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET bounds-checks against its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            anyhow::bail!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    if let Some(cpu) = args.cpu {
        pin_to_cpu(cpu)?;
    }
    let unix_time = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let s = Settings::new(args.quick);
    let target = target_dir()?;
    let exe_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let shim_bin = args
        .litefs_py
        .clone()
        .unwrap_or_else(|| exe_dir.join("litefs-py"));
    ensure!(
        shim_bin.is_file(),
        "no litefs-py binary at {} (run `cargo build --release --workspace`, or pass --litefs-py PATH)",
        shim_bin.display()
    );
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("litefs-py-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temp dir in {}", parent.display()))?;

    let litefs_bin = if args.no_litefs {
        Err("--no-litefs given".to_string())
    } else {
        litefs_py_testkit::litefs::find_binary(args.litefs.as_deref())
    };
    let machine = Machine {
        kernel: sys::kernel_release(),
        nproc: sys::online_cpus(),
        cpu: sys::cpu_model(),
        mem_total_mib: sys::mem_total_kib().map(|k| k >> 10),
        bench_dir: tmp.path().display().to_string(),
        bench_dir_fstype: litefs_py_testkit::mount::fstype_of(tmp.path()),
        litefs_py: litefs_py_testkit::process::version_line(&shim_bin),
        litefs_py_binary: shim_bin.display().to_string(),
        sqlite: rusqlite::version().to_string(),
        litefs: litefs_bin
            .as_ref()
            .ok()
            .map(|b| litefs_py_testkit::process::version_line(b)),
    };
    println!(
        "litefs-py-bench ({}{}): {}, kernel {}, {} CPUs, {} on {}",
        if s.quick { "quick" } else { "full" },
        args.cpu
            .map_or(String::new(), |c| format!(", pinned to CPU {c}")),
        machine.litefs_py,
        machine.kernel,
        machine.nproc,
        machine.bench_dir,
        machine.bench_dir_fstype.as_deref().unwrap_or("?"),
    );

    let bin = run::ShimBinary {
        path: &shim_bin,
        threads: args.threads,
    };
    let plan = requests::Plan {
        exe: std::env::current_exe().context("locating this binary")?,
        procs: usize::from(args.request_procs),
        logs: tmp.path().to_path_buf(),
    };
    let plain = run::plain(&s, &bin, tmp.path())?;
    let (litefs_sec, litefs_status): (Option<Section>, String) = match &litefs_bin {
        Err(why) => (None, format!("skipped: {why}")),
        Ok(b) => match run::over_litefs(&s, &bin, b, tmp.path(), &plan) {
            Ok(sec) => (Some(sec), format!("ran with {}", b.display())),
            Err(e) if measure::check_stop().is_err() => return Err(e),
            Err(e) => (None, format!("failed: {e:#}")),
        },
    };

    plain.print();
    match &litefs_sec {
        Some(sec) => sec.print(),
        None => println!("\nLiteFS baseline {litefs_status}"),
    }
    let elapsed = started.elapsed().as_secs_f64();
    let doc = json!({
        "schema": 1,
        "unix_time": unix_time,
        "elapsed_s": elapsed,
        "machine": machine,
        "settings": {
            "quick": s.quick,
            "loop_s": s.loop_time.as_secs_f64(),
            "sample_s": s.sample_time.as_secs_f64(),
            "cap_s": s.cap.as_secs_f64(),
            "select_db_bytes": s.db_bytes,
            "seq_bytes": s.seq_bytes,
            "files": s.files,
            "shim_threads": args.threads,
            "pinned_cpu": args.cpu,
            "request_procs": args.request_procs,
        },
        "sections": std::iter::once(&plain).chain(litefs_sec.as_ref()).map(Section::to_json).collect::<Vec<_>>(),
        "litefs_baseline": litefs_status,
    });
    let out = args.out.unwrap_or_else(|| target.join("bench"));
    drop(tmp);
    let path = report::write_json(&out, "shim", unix_time, &doc)?;
    println!(
        "\nJSON: {} (and shim-latest.json); {elapsed:.0} s in all",
        path.display()
    );
    Ok(())
}
