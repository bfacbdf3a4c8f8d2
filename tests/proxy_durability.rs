//! `proxy.durability: replicated` (docs/proxy.md, "Replicated durability") on three `litefs-py
//! run` nodes with the real LiteFS and the test kit's app behind each proxy:
//!
//! - a write is answered once a replica's LiteFS has it, and the row is then on a replica;
//!   with the replicas' LiteFS stopped (SIGSTOP), a write gets a 504 that says it is not
//!   replicated, and the app's wait (`litefs.wait_replicated()`, the Python client, against the
//!   real proxy) raises; after SIGCONT both work again;
//! - kill -9 of the primary (its run and its LiteFS) under a write load through every proxy,
//!   right after its replicas' LiteFS fell 300 ms behind (SIGSTOP, then SIGCONT with the
//!   kill), again and again: with `replicated` every acknowledged write is on the new primary;
//!   with `async` the lost ones are counted, for comparison.
//!
//! Needs root, /dev/fuse and a `litefs` binary; without them it says so and passes locally,
//! and fails with `CI=true` (the kit's `prereq`). Every process is ours, stopped by PID.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::proxy_calls::{Answer, agent, call, rows, start_cluster};
use common::serial;
use litefs_py_testkit::cluster::{ProxyCluster, SLEEPING_APP};
use litefs_py_testkit::prereq;
use litefs_py_testkit::proxy_app::DB;
use litefs_py_testkit::wait::wait_for;

const START: Duration = Duration::from_secs(60);

/// Primary kills per durability (the issue asks for at least 20 with `replicated`);
/// `LITEFS_PY_TEST_KILLS` changes it for a longer soak.
fn kills() -> usize {
    std::env::var("LITEFS_PY_TEST_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

fn start(litefs: &Path, durability: &str) -> (ProxyCluster, u64) {
    let extra = [
        ("durability", durability),
        ("primary-wait", "3s"),
        ("replica-wait", "2s"),
    ];
    start_cluster(litefs, &extra)
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a PID of ours.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// `litefs.wait_replicated()` of the Python package, against node `id`'s proxy, in a child:
/// its exit status and output (`OK <replicas>` or `NotReplicated: ...`).
fn python_wait(proxy: &str, timeout_s: f64) -> (bool, String) {
    const WAIT: &str = "import sys, litefs\n\
        try:\n    r = litefs.wait_replicated(float(sys.argv[2]), proxy=sys.argv[1])\n\
        except litefs.NotReplicated as e:\n    print('NotReplicated:', e, e.replicas, e.needed)\n    sys.exit(3)\n\
        print('OK', list(r.replicas), r.needed, r.positions)";
    let python = std::env::var("LITEFS_PY_TEST_PYTHON").unwrap_or_else(|_| {
        // The repository's venv (scripts/setup installs the package there).
        concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").to_string()
    });
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            WAIT,
            &format!("http://{proxy}"),
            &timeout_s.to_string(),
        ])
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("No module named 'litefs'"),
        "{python} has no litefs package: scripts/test builds the wheel and installs it there \
         first (or set LITEFS_PY_TEST_PYTHON)"
    );
    (out.status.success(), text)
}

#[test]
fn a_replicated_write_is_answered_once_a_replica_has_it_and_never_before() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let (c, primary) = start(&litefs, "replicated");
    let a = agent(Duration::from_secs(10));
    let ids = c.cluster.ids();
    let replicas: Vec<u64> = ids.iter().copied().filter(|id| *id != primary).collect();

    // Through every proxy: answered replicated, and then on a replica already.
    for (i, id) in ids.iter().enumerate() {
        let rid = format!("r{i}");
        let r = call(&a, "POST", c.proxy(*id), &format!("/write?id={rid}")).unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.durability.as_deref(), Some("replicated"), "{r:?}");
        let on: Vec<u64> = replicas
            .iter()
            .copied()
            .filter(|rep| rows(&c.cluster.db(*rep, DB)).unwrap().contains(&rid))
            .collect();
        assert!(!on.is_empty(), "{rid} acknowledged but on no replica");
    }
    // A safe request is not held, and says nothing of durability.
    let r = call(&a, "GET", c.proxy(primary), "/whoami").unwrap();
    assert_eq!((r.status, r.durability.as_deref()), (200, None), "{r:?}");
    let (ok, out) = python_wait(c.proxy(primary), 5.0);
    assert!(ok && out.starts_with("OK ["), "{out}");
    // On a replica there is nothing to wait for: refused, saying why.
    let (ok, out) = python_wait(c.proxy(replicas[0]), 1.0);
    assert!(!ok && out.contains("not the primary"), "{out}");

    // The replicas' LiteFS stop (raft goes on: the primary stays primary).
    let stopped: Vec<i32> = replicas
        .iter()
        .map(|id| c.cluster.node(*id).litefs_pid().unwrap())
        .collect();
    for pid in &stopped {
        signal(*pid, libc::SIGSTOP);
    }
    let t0 = Instant::now();
    let r = call(&a, "POST", c.proxy(primary), "/write?id=unreplicated").unwrap();
    let waited = t0.elapsed();
    let (py_ok, py_out) = python_wait(c.proxy(primary), 0.5);
    for pid in &stopped {
        signal(*pid, libc::SIGCONT);
    }
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.outcome.as_deref(), Some("not-replicated"), "{r:?}");
    assert_eq!(r.durability.as_deref(), Some("not-replicated"), "{r:?}");
    assert!(r.body.contains("not replicated"), "{r:?}");
    assert!(
        waited >= Duration::from_millis(1900),
        "answered after {waited:?}"
    );
    assert!(!py_ok && py_out.starts_with("NotReplicated"), "{py_out}");
    println!("replicas stopped: a write got 504 not-replicated after {waited:?}; {py_out}");

    // Thawed: replicated again (the replicas catch up, then confirm).
    wait_for(Duration::from_secs(30), "a replicated write again", || {
        call(&a, "POST", c.proxy(primary), "/write?id=again")
            .ok()
            .filter(|r| r.status == 200)
    });
    c.shutdown().unwrap();
}

/// What one round of writes through every proxy got.
#[derive(Default)]
struct Tally {
    acked: Vec<String>,
    clear_5xx: usize,
    refused: usize,
}

/// One writer's requests: (request id, what came back).
type Calls = Vec<(String, Result<Answer, String>)>;

/// Writes through every proxy until `stop`, each with a unique id.
fn writers(
    c: &ProxyCluster,
    round: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<(u64, Calls)>> {
    c.cluster
        .ids()
        .into_iter()
        .map(|id| {
            let proxy = c.proxy(id).to_string();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let a = agent(Duration::from_secs(20));
                let mut results = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let rid = format!("k{round}-n{id}-{i}");
                    i += 1;
                    let r = call(&a, "POST", &proxy, &format!("/write?id={rid}"));
                    // While there is no primary, a client backs off a little.
                    let failed = r.as_ref().map_or(true, |a| a.status != 200);
                    results.push((rid, r));
                    if failed {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                (id, results)
            })
        })
        .collect()
}

/// kill -9 of the primary under writes, `kills()` times; returns (acknowledged, lost).
fn kill_rounds(net: &Netns, durability: &str) -> (usize, usize) {
    let Some(litefs) = prereq::litefs() else {
        return (0, 0);
    };
    let (mut c, mut primary) = start(&litefs, durability);
    let (mut acked_total, mut lost_total) = (0, 0);
    for round in 0..kills() {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = writers(&c, round, &stop);
        let survivors: Vec<u64> = c
            .cluster
            .ids()
            .into_iter()
            .filter(|id| *id != primary)
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        // The primary's LiteFS stream to its replicas stalls (its packets dropped) while the
        // primary goes on committing; then the primary dies, and what was in the stream dies
        // with it. What it acknowledged meanwhile is on no replica: `async` loses it,
        // `replicated` never acknowledged it.
        let port = c
            .cluster
            .node(primary)
            .ports
            .litefs
            .rsplit_once(':')
            .unwrap()
            .1
            .to_string();
        net.stall(&port);
        std::thread::sleep(Duration::from_millis(400));
        c.kill9(primary).unwrap();
        let new_primary = c
            .cluster
            .wait_one_primary(&survivors, Duration::from_secs(30))
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let mut t = Tally::default();
        for th in threads {
            let (id, results) = th.join().unwrap();
            for (rid, r) in results {
                match r {
                    Ok(a) if a.status == 200 => {
                        if durability == "replicated" {
                            assert_eq!(a.durability.as_deref(), Some("replicated"), "{a:?}");
                        }
                        t.acked.push(rid);
                    }
                    Ok(a) if a.status >= 500 && a.outcome.is_some() => t.clear_5xx += 1,
                    Err(_) if id == primary => t.refused += 1,
                    other => panic!(
                        "round {round}: {rid} through node {id}: not a 2xx or a clear 5xx: \
                         {other:?}"
                    ),
                }
            }
        }
        let on_new: BTreeSet<String> = rows(&c.cluster.db(new_primary, DB))
            .unwrap()
            .into_iter()
            .collect();
        let lost: Vec<&String> = t.acked.iter().filter(|r| !on_new.contains(*r)).collect();
        println!(
            "{durability} round {round}: node {primary} killed, node {new_primary} primary; \
             {} acknowledged, {} lost, {} clear 5xx, {} refused",
            t.acked.len(),
            lost.len(),
            t.clear_5xx,
            t.refused
        );
        if durability == "replicated" {
            assert!(
                lost.is_empty(),
                "round {round}: acknowledged replicated writes missing on the new primary \
                 (node {new_primary}): {lost:?}"
            );
        }
        acked_total += t.acked.len();
        lost_total += lost.len();
        // The killed node comes back (its LiteFS on the same port) as a replica.
        net.unstall();
        c.cluster.node_mut(primary).start(SLEEPING_APP).unwrap();
        let ids = c.cluster.ids();
        let agreed = c.cluster.wait_one_primary(&ids, START).unwrap();
        assert_eq!(agreed, new_primary, "the restarted node took over");
        primary = new_primary;
    }
    println!(
        "{durability}: {} kills of the primary, {acked_total} writes acknowledged, {lost_total} \
         of them missing on the new primary",
        kills()
    );
    c.shutdown().unwrap();
    (acked_total, lost_total)
}

#[test]
fn replicated_writes_survive_every_kill_of_the_primary_and_async_ones_are_counted() {
    let _serial = serial();
    let Some(net) = Netns::enter() else {
        return;
    };
    let (acked, lost) = kill_rounds(&net, "replicated");
    assert_eq!(lost, 0);
    if prereq::litefs().is_some() {
        assert!(acked > 0, "no write was acknowledged");
    }
    let (acked_async, lost_async) = kill_rounds(&net, "async");
    println!(
        "comparison over {} kills each: replicated lost 0 of {acked}; async lost {lost_async} \
         of {acked_async}",
        kills()
    );
}

/// A network namespace of this test's own, loopback up; the calling thread moves into it, and
/// everything it starts afterwards (nodes, LiteFS, the apps, clients) lives there. So the
/// packet filter below touches nothing of the host's.
struct Netns {
    name: String,
}

impl Netns {
    const TABLE: &str = "litefs_py_stall";

    const PREFIX: &str = "lfpy-durability-";

    fn enter() -> Option<Netns> {
        Self::sweep();
        let name = format!("{}{}", Self::PREFIX, std::process::id());
        if !run("ip", &["netns", "add", &name]) {
            prereq::skip_or_fail(
                "cannot create a network namespace (ip netns add): needs root and iproute2",
            );
            return None;
        }
        let net = Netns { name };
        assert!(run("ip", &["-n", &net.name, "link", "set", "lo", "up"]));
        let f = std::fs::File::open(format!("/run/netns/{}", net.name)).unwrap();
        // SAFETY: setns(2) of this thread into a namespace file we opened.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        Some(net)
    }

    /// Deletes the namespaces an earlier run of this test left when its process died without
    /// unwinding (kill -9, a signal): ours by name, the PID in it no longer running.
    fn sweep() {
        let Ok(dir) = std::fs::read_dir("/run/netns") else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(Self::PREFIX)
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                eprintln!("deleting the network namespace {name} of a dead earlier run");
                run("ip", &["netns", "delete", &name]);
            }
        }
    }

    /// Drops every packet sent from TCP port `port` (in this namespace, with nft).
    fn stall(&self, port: &str) {
        let t = Self::TABLE;
        assert!(run("nft", &["add", "table", "inet", t]));
        assert!(run(
            "nft",
            &[
                "add",
                "chain",
                "inet",
                t,
                "out",
                "{ type filter hook output priority 0; }"
            ]
        ));
        assert!(run(
            "nft",
            &[
                "add", "rule", "inet", t, "out", "tcp", "sport", port, "drop"
            ]
        ));
    }

    fn unstall(&self) {
        assert!(run("nft", &["delete", "table", "inet", Self::TABLE]));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The nodes are stopped by then (the cluster's shutdown, or its drop on a panic).
        run("ip", &["netns", "delete", &self.name]);
    }
}

fn run(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}
