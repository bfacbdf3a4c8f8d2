//! `litefs-py-bench proxy`: what litefs-py's HTTP proxy (docs/proxy.md) costs the requests that
//! go through it, on 3 `litefs-py run` nodes with real LiteFS on loopback and the test kit's app
//! behind each proxy (issue 11, "Benchmark"). In one run, each figure against its baseline
//! measured in the same run:
//!
//! - reads through a replica's proxy vs straight to that replica's app (kept-alive connections,
//!   and a new connection per request), and the same through LiteFS's own proxy on a second
//!   cluster, running at the same time (litefs-py refuses both proxies on one node);
//! - p50/p99 of a write forwarded from a replica vs one sent to the primary's proxy, and one
//!   sent straight to the primary's app (the floor);
//! - what `proxy.durability: replicated` adds over `async`: the writes again on a fresh cluster
//!   per durability.
//!
//! A section that cannot run (a cluster that does not start, e.g. a durability this litefs-py
//! refuses) is reported as that section's error, in the output and the JSON, and makes the run
//! exit non-zero; the other sections still run.

mod cases;
mod cluster;
mod load;
mod summary;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use clap::Args;
use serde_json::{Value, json};

use crate::measure::check_stop;
use crate::{report, sys};
use cases::Plan;
use cluster::{Durability, Ready, Setup};

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Client threads sending requests at once, in every case.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    clients: u16,

    /// Rounds per case; the cases alternate round by round [default: 3; 1 with --quick].
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,

    /// Length of one round of one case, in ms [default: 2000; 500 with --quick].
    #[arg(long, value_name = "MS")]
    round_ms: Option<u64>,

    /// At most this many timed requests per client and round (bounds a very fast machine).
    #[arg(long, value_name = "N", default_value_t = 50_000)]
    max_requests: u64,

    /// The durabilities whose writes are measured, each on a fresh cluster, in this order; the
    /// reads run on the first one's cluster.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "async,replicated"
    )]
    durability: Vec<Durability>,

    /// Bytes in the body of each write.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    body_bytes: usize,

    /// Another `proxy:` key for every node, as KEY=VALUE (e.g. `primary-wait=2s`); repeatable.
    #[arg(long = "proxy-set", value_name = "KEY=VALUE", value_parser = cluster::parse_proxy_set)]
    proxy_set: Vec<(String, String)>,

    /// A `proxy:` key for the `replicated` cluster only (e.g. `min-replicas=1`,
    /// `replica-wait=2s`); repeatable.
    #[arg(long = "replicated-set", value_name = "KEY=VALUE", value_parser = cluster::parse_proxy_set)]
    replicated_set: Vec<(String, String)>,

    /// Reads without the baseline of LiteFS's own proxy (a second cluster of 3 nodes with
    /// `litefs.proxy` in front of the same app, measured in the same rounds).
    #[arg(long)]
    without_litefs_proxy: bool,

    /// A smoke run: one round of 0.5 s per case.
    #[arg(long)]
    quick: bool,

    /// The litefs-py binary [default: litefs-py next to this binary].
    #[arg(long, value_name = "PATH")]
    litefs_py: Option<PathBuf>,

    /// The LiteFS binary [default: `litefs` on PATH].
    #[arg(long, value_name = "PATH")]
    litefs: Option<PathBuf>,

    /// Parent of the temporary node dirs [default: $TMPDIR, else /tmp].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Where the JSON goes [default: target/bench/proxy-<time>.json of the workspace this
    /// binary was built in, and proxy-latest.json beside it].
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

/// Runs the benchmark; `Ok(false)` when a section or a case failed (the JSON says which).
pub fn run(args: ProxyArgs, target: &Path, exe_dir: &Path) -> Result<bool> {
    let started = Instant::now();
    let unix_time = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    ensure!(
        !args.durability.is_empty(),
        "--durability needs at least one of async, replicated"
    );
    let binary = args
        .litefs_py
        .clone()
        .unwrap_or_else(|| exe_dir.join("litefs-py"));
    cluster::require_binary(&binary)?;
    let litefs = litefs_py_testkit::litefs::find_binary(args.litefs.as_deref())
        .map_err(anyhow::Error::msg)?;
    let plan = Plan {
        clients: usize::from(args.clients),
        rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 3 }).max(1),
        round: Duration::from_millis(args.round_ms.unwrap_or(if args.quick { 500 } else { 2000 })),
        max_per_client: args.max_requests.max(1),
        warmup: 10,
        body: args.body_bytes,
    };
    ensure!(
        plan.round >= Duration::from_millis(100),
        "--round-ms {} is too short to time anything: give 100 or more",
        plan.round.as_millis()
    );
    let setup = Setup {
        binary: binary.clone(),
        litefs: litefs.clone(),
        dir: args.dir.clone(),
        proxy_extra: args.proxy_set.clone(),
        replicated_extra: args.replicated_set.clone(),
    };
    let version = litefs_py_testkit::process::version_line(&binary);
    let litefs_version = litefs_py_testkit::process::version_line(&litefs);
    println!(
        "litefs-py-bench proxy: {version}, LiteFS {litefs_version}, kernel {}, {} CPUs; \
         3 `litefs-py run` nodes on loopback, the kit's app behind each proxy (in this process); \
         {} clients, {} rounds of {:?} per case",
        sys::kernel_release(),
        sys::online_cpus(),
        plan.clients,
        plan.rounds,
        plan.round,
    );

    let mut reads: Option<Value> = None;
    let mut writes = serde_json::Map::new();
    let mut summaries = Vec::new();
    for (i, d) in args.durability.iter().enumerate() {
        check_stop()?;
        eprintln!(
            "litefs-py-bench: starting 3 nodes, durability {}",
            d.as_str()
        );
        let ready = match cluster::start(&setup, *d) {
            Ok(r) => r,
            Err(e) if check_stop().is_err() => return Err(e),
            Err(e) => {
                let msg = format!("{e:#}");
                println!("\nwrites, durability {}: ERROR: {msg}", d.as_str());
                if i == 0 {
                    reads = Some(json!({ "error": format!("no cluster: {msg}") }));
                }
                writes.insert(d.as_str().into(), json!({ "error": msg }));
                continue;
            }
        };
        let measured = (|| -> Result<()> {
            if i == 0 {
                reads = Some(measure_reads(
                    &setup,
                    &ready,
                    &plan,
                    !args.without_litefs_proxy,
                )?);
                check_stop()?;
            }
            let (doc, sums) = cases::writes(&ready, &plan, d.as_str())?;
            writes.insert(d.as_str().into(), doc);
            summaries.push((*d, sums));
            Ok(())
        })();
        let shutdown = ready.shutdown();
        if check_stop().is_err() {
            eprintln!("litefs-py-bench: interrupted; nothing saved");
            shutdown?;
            return Err(measured
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("interrupted")));
        }
        if let Err(e) = measured {
            let msg = format!("{e:#}");
            println!("\nwrites, durability {}: ERROR: {msg}", d.as_str());
            writes.insert(d.as_str().into(), json!({ "error": msg }));
        }
        if let Err(e) = shutdown {
            // Everything is stopped by now, but something was left: not a clean run.
            writes
                .entry(d.as_str())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .map(|w| w.insert("shutdown_error".into(), json!(format!("{e:#}"))));
        }
    }
    let durability_cost = durability_cost(&args.durability, &summaries, &writes);

    let elapsed = started.elapsed().as_secs_f64();
    let mut machine = report::machine(&version, &binary);
    machine.insert("litefs".into(), json!(litefs_version));
    machine.insert("loadavg".into(), json!(sys_loadavg()));
    let doc = json!({
        "schema": 1,
        "benchmark": "proxy",
        "unix_time": unix_time,
        "elapsed_s": elapsed,
        "machine": machine,
        "settings": {
            "nodes": cluster::NODES,
            "clients": plan.clients,
            "rounds": plan.rounds,
            "round_ms": plan.round.as_millis() as u64,
            "max_requests_per_client_round": plan.max_per_client,
            "warmup_per_client_round": plan.warmup,
            "write_body_bytes": plan.body,
            "durabilities": args.durability,
            "proxy_set": pairs(&args.proxy_set),
            "replicated_set": pairs(&args.replicated_set),
            "quick": args.quick,
        },
        "reads": reads,
        "writes": writes,
        "replicated_vs_async": durability_cost,
    });
    let path = match &args.json {
        Some(p) => {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(p, serde_json::to_string_pretty(&doc)? + "\n")
                .with_context(|| format!("writing {}", p.display()))?;
            p.clone()
        }
        None => report::write_json(&target.join("bench"), "proxy", unix_time, &doc)?,
    };
    println!("\nJSON: {}; {elapsed:.0} s in all", path.display());
    Ok(!has_error(&doc))
}

/// The `reads` section, with LiteFS's proxy on a second cluster unless `without_litefs`; that
/// cluster is stopped before the writes. A baseline that cannot start is the section's
/// `litefs_proxy_error` (the run exits non-zero); the reads still run.
fn measure_reads(setup: &Setup, ready: &Ready, plan: &Plan, with_litefs: bool) -> Result<Value> {
    let mut front_error = None;
    let front = if with_litefs {
        eprintln!("litefs-py-bench: starting 3 nodes with LiteFS's own proxy, for the reads");
        match cluster::start_litefs_front(setup) {
            Ok(f) => Some(f),
            Err(e) => {
                check_stop()?;
                println!("\nreads through LiteFS's proxy: ERROR: {e:#}");
                front_error = Some(format!("{e:#}"));
                None
            }
        }
    } else {
        None
    };
    let mut reads = cases::reads(ready, front.as_ref(), plan).unwrap_or_else(|e| {
        println!("\nreads: ERROR: {e:#}");
        json!({ "error": format!("{e:#}") })
    });
    if let Some(f) = front
        && let Err(e) = f.c.shutdown()
    {
        front_error = Some(format!("stopping the cluster of LiteFS's proxy: {e:#}"));
    }
    if let Some(e) = front_error {
        reads["litefs_proxy_error"] = json!(e);
    }
    Ok(reads)
}

/// The `replicated_vs_async` section: the comparison when both ran, else why not.
fn durability_cost(
    asked: &[Durability],
    summaries: &[(Durability, cases::WriteSummaries)],
    writes: &serde_json::Map<String, Value>,
) -> Value {
    let find = |d: Durability| summaries.iter().find(|(x, _)| *x == d).map(|(_, s)| s);
    match (find(Durability::Async), find(Durability::Replicated)) {
        (Some(a), Some(r)) => cases::durability_cost(a, r),
        _ => {
            let missing: Vec<String> = [Durability::Async, Durability::Replicated]
                .into_iter()
                .filter(|d| find(*d).is_none())
                .map(
                    |d| match writes.get(d.as_str()).and_then(|w| w.get("error")) {
                        Some(e) => format!("{} failed: {}", d.as_str(), e.as_str().unwrap_or("?")),
                        None if !asked.contains(&d) => format!("{} not asked for", d.as_str()),
                        None => format!("{} has no figures", d.as_str()),
                    },
                )
                .collect();
            let msg = format!("not measured: {}", missing.join("; "));
            println!("\nreplicated vs async: {msg}");
            if asked.contains(&Durability::Async) && asked.contains(&Durability::Replicated) {
                json!({ "error": msg })
            } else {
                json!({ "skipped": msg })
            }
        }
    }
}

fn pairs(kv: &[(String, String)]) -> Vec<String> {
    kv.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Whether any section or case of the report has an error.
fn has_error(v: &Value) -> bool {
    match v {
        Value::Object(m) => m
            .iter()
            .any(|(k, v)| (k.ends_with("error") && !v.is_null()) || has_error(v)),
        Value::Array(a) => a.iter().any(has_error),
        _ => false,
    }
}

/// /proc/loadavg's first three fields: how busy the machine was when the run ended.
fn sys_loadavg() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_anywhere_in_the_report_count() {
        assert!(!has_error(
            &json!({"reads": {"cases": [{"app": {"p50_ms": 1.0}}]}})
        ));
        assert!(!has_error(&json!({"writes": {"async": {"error": null}}})));
        assert!(has_error(
            &json!({"writes": {"replicated": {"error": "refused"}}})
        ));
        assert!(has_error(
            &json!({"reads": {"cases": [{"proxy": {"error": "x"}}]}})
        ));
        assert!(has_error(&json!({"w": {"shutdown_error": "left a mount"}})));
    }
}
