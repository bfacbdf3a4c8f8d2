//! litefs-py's proxy (docs/proxy.md) on three `litefs-py run` nodes with the real LiteFS, the
//! test kit's app behind each proxy (it writes to SQLite in the node's mount, one row per
//! request id): writes forwarded from every replica and committed on the primary, safe
//! requests served locally, a WebSocket and a 100 MB streamed upload through a replica's
//! proxy, a slow client beside fast ones, a failover under a write load through every proxy
//! where every client gets a 2xx or a clear 5xx and no request runs twice, and the primary's app
//! exiting (the node hands off; the replicas' writes all succeed).
//!
//! Needs root, /dev/fuse and a `litefs` binary; without them it says so and passes locally,
//! and fails with `CI=true` (the kit's `prereq`). Every process is ours, stopped by PID.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::proxy_calls::{agent, call, call_with, rows, start_cluster};
use common::serial;
use litefs_py_testkit::cluster::ProxyCluster;
use litefs_py_testkit::prereq;
use litefs_py_testkit::proxy_app::DB;
use litefs_py_testkit::wait::wait_for;

/// Three nodes behind proxies. `primary-wait` is the default, 5 s: longer than a failover
/// takes here, so a write whose primary died waits for the next one.
fn start(litefs: &Path) -> (ProxyCluster, u64) {
    start_cluster(litefs, &[("primary-wait", "5s")])
}

/// Peak RSS (VmHWM) of a process, in kB.
fn peak_rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A body of `len` bytes, made as it is read.
struct Zeros {
    left: u64,
}

impl Read for Zeros {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        buf[..n].fill(b'z');
        self.left -= n as u64;
        Ok(n)
    }
}

#[test]
fn writes_from_every_replica_reach_the_primary_and_the_rest_streams() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let (mut c, primary) = start(&litefs);
    let a = agent(Duration::from_secs(10));
    let ids = c.cluster.ids();

    // Unsafe requests through every proxy, the primary's own included: served by the
    // primary's app, committed there, each answered.
    const PER_NODE: usize = 20;
    let mut sent = Vec::new();
    for id in &ids {
        for i in 0..PER_NODE {
            let rid = format!("n{id}-{i}");
            let r = call(&a, "POST", c.proxy(*id), &format!("/write?id={rid}")).unwrap();
            assert_eq!(r.status, 200, "POST through node {id}'s proxy: {r:?}");
            assert_eq!(r.node, Some(primary), "{r:?}");
            assert!(r.body.contains(&format!("\"node\":{primary}")), "{r:?}");
            sent.push(rid);
        }
    }
    let on_primary = rows(&c.cluster.db(primary, DB)).unwrap();
    assert_eq!(on_primary.len(), sent.len(), "every POST is one row");
    for rid in &sent {
        assert!(on_primary.contains(rid), "{rid} missing on the primary");
    }
    println!(
        "{} POSTs through 3 proxies ({} forwarded from replicas): all committed on node {primary}",
        sent.len(),
        2 * PER_NODE
    );

    // Safe requests are served by each node's own app.
    for id in &ids {
        let r = call(&a, "GET", c.proxy(*id), "/whoami").unwrap();
        assert_eq!((r.status, r.node), (200, Some(*id)), "{r:?}");
    }

    let replica = *ids.iter().find(|id| **id != primary).unwrap();
    let proxy = c.proxy(replica).to_string();

    // A WebSocket through a replica's proxy (a GET: its own app answers).
    {
        let stream = TcpStream::connect(&proxy).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let (mut ws, resp) =
            tungstenite::client::client(format!("ws://{proxy}/ws"), stream).unwrap();
        assert_eq!(resp.status().as_u16(), 101);
        for msg in ["hello", "again"] {
            ws.send(tungstenite::Message::text(msg)).unwrap();
            let back = ws.read().unwrap();
            assert_eq!(back.to_text().unwrap(), format!("node {replica}: {msg}"));
        }
        ws.close(None).unwrap();
        println!("WebSocket through node {replica}'s proxy: echoed");
    }

    // A slow client (headers and part of a body, then nothing) holds its own connection
    // only: requests beside it, forwarded ones included, are answered at once.
    {
        let mut slow = TcpStream::connect(&proxy).unwrap();
        slow.write_all(
            b"POST /write?id=slow HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\nzzzz",
        )
        .unwrap();
        let slow_get = {
            let proxy = proxy.clone();
            std::thread::spawn(move || {
                call(
                    &agent(Duration::from_secs(10)),
                    "GET",
                    &proxy,
                    "/sleep?ms=3000",
                )
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        let t0 = Instant::now();
        for i in 0..10 {
            let r = call(&a, "GET", &proxy, "/whoami").unwrap();
            assert_eq!(r.status, 200);
            let r = call(&a, "POST", &proxy, &format!("/write?id=beside-slow-{i}")).unwrap();
            assert_eq!(r.status, 200, "{r:?}");
        }
        let took = t0.elapsed();
        assert!(
            took < Duration::from_secs(3),
            "20 requests beside a slow client and a slow request took {took:?}"
        );
        assert_eq!(slow_get.join().unwrap().unwrap().status, 200);
        drop(slow);
        println!("20 requests beside a stalled upload and a 3 s request: {took:?}");
    }

    // 100 MB streamed up through the replica's proxy to the primary's app: neither
    // litefs-py run holds it (their peak RSS stays flat).
    {
        const SIZE: u64 = 100 << 20;
        let pids: BTreeMap<u64, i32> = [replica, primary]
            .iter()
            .map(|id| (*id, c.cluster.node_mut(*id).pid().unwrap()))
            .collect();
        let before: BTreeMap<u64, u64> =
            pids.iter().map(|(id, p)| (*id, peak_rss_kb(*p))).collect();
        let up = agent(Duration::from_secs(120));
        let t0 = Instant::now();
        let mut resp = up
            .post(format!("http://{proxy}/write?id=upload"))
            .send(ureq::SendBody::from_owned_reader(Zeros { left: SIZE }))
            .unwrap();
        let took = t0.elapsed();
        assert_eq!(resp.status().as_u16(), 200);
        let body = resp.body_mut().read_to_string().unwrap();
        assert!(body.contains(&format!("\"bytes\":{SIZE}")), "{body}");
        for (id, pid) in &pids {
            let grew = peak_rss_kb(*pid).saturating_sub(before[id]);
            println!("100 MB upload: node {id}'s peak RSS grew {grew} kB");
            assert!(
                grew < 32 * 1024,
                "node {id}'s litefs-py run grew by {grew} kB during a 100 MB upload"
            );
        }
        println!("100 MB through node {replica}'s proxy to node {primary}'s app in {took:?}");
    }

    c.shutdown().unwrap();
}

#[test]
fn a_failover_under_writes_through_every_proxy_runs_nothing_twice() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let (mut c, primary) = start(&litefs);
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for id in c.cluster.ids() {
        let proxy = c.proxy(id).to_string();
        let stop = stop.clone();
        writers.push(std::thread::spawn(move || {
            let a = agent(Duration::from_secs(20));
            let mut results = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let rid = format!("w{id}-{i}");
                i += 1;
                let r = call(&a, "POST", &proxy, &format!("/write?id={rid}"));
                results.push((rid, r));
                std::thread::sleep(Duration::from_millis(20));
            }
            (id, results)
        }));
    }
    std::thread::sleep(Duration::from_secs(2));
    c.kill9(primary).unwrap();
    let killed_at = Instant::now();
    let survivors: Vec<u64> = c
        .cluster
        .ids()
        .into_iter()
        .filter(|id| *id != primary)
        .collect();
    let new_primary = c
        .cluster
        .wait_one_primary(&survivors, Duration::from_secs(30))
        .unwrap();
    println!(
        "node {new_primary} primary {:?} after the kill",
        killed_at.elapsed()
    );
    // Writes keep coming through the new primary for a while.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);

    let mut acked = Vec::new();
    let (mut clear_5xx, mut refused) = (0, 0);
    let mut not_executed_by_survivors = Vec::new();
    for w in writers {
        let (id, results) = w.join().unwrap();
        for (rid, r) in results {
            match r {
                Ok(a) if a.status == 200 => acked.push(rid),
                Ok(a) if a.status >= 500 && a.outcome.is_some() => {
                    assert!(
                        matches!(a.outcome.as_deref(), Some("not-executed" | "unknown")),
                        "{a:?}"
                    );
                    if id != primary && a.outcome.as_deref() == Some("not-executed") {
                        not_executed_by_survivors.push((rid.clone(), a.body.clone()));
                    }
                    clear_5xx += 1;
                }
                // The killed node's own proxy is gone: its clients cannot connect.
                Err(e) if id == primary => {
                    let _ = e;
                    refused += 1;
                }
                other => {
                    panic!("{rid} through node {id}'s proxy: not a 2xx or a clear 5xx: {other:?}")
                }
            }
        }
    }
    let on_new = rows(&c.cluster.db(new_primary, DB)).unwrap();
    let mut seen = BTreeMap::new();
    for rid in &on_new {
        *seen.entry(rid.as_str()).or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "requests executed twice: {twice:?}");
    let lost = acked
        .iter()
        .filter(|r| !seen.contains_key(r.as_str()))
        .count();
    let after: usize = acked
        .iter()
        .filter(|r| !r.starts_with(&format!("w{primary}-")))
        .count();
    assert!(
        after > 0,
        "no write was acknowledged through the surviving proxies"
    );
    println!(
        "failover under writes: {} acknowledged ({lost} not on the new primary: async \
         durability), {clear_5xx} clear 5xx, {refused} refused by the killed node's port, \
         0 executed twice ({} rows)",
        acked.len(),
        on_new.len()
    );
    // A survivor's proxy that found the dead primary's port closed sent nothing, so it waited
    // for the next primary (within `primary-wait`, longer than this failover) rather than
    // answering `not-executed`: only requests in flight at the kill may have failed.
    assert!(
        not_executed_by_survivors.is_empty(),
        "writes through a surviving proxy answered not-executed during the failover: \
         {not_executed_by_survivors:?}"
    );

    // The new primary dies too: the last node has no quorum, so no primary. A write waits
    // `primary-wait` (5 s) and gets a 503 saying it was not executed; reads are still served.
    c.kill9(new_primary).unwrap();
    let last = *survivors.iter().find(|id| **id != new_primary).unwrap();
    // Until it notices (no heartbeat for election-timeout-max), its proxy names the dead
    // primary, whose port refuses; then it knows no primary.
    wait_for(
        Duration::from_secs(10),
        "the last node to say electing",
        || (c.cluster.role(last).as_deref() == Some("electing")).then_some(()),
    );
    let a = agent(Duration::from_secs(20));
    let t0 = Instant::now();
    let r = call(&a, "POST", c.proxy(last), "/write?id=no-primary").unwrap();
    let waited = t0.elapsed();
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.outcome.as_deref(), Some("not-executed"), "{r:?}");
    assert!(
        waited >= Duration::from_millis(4900) && waited < Duration::from_secs(12),
        "answered after {waited:?}"
    );
    let r = call(&a, "GET", c.proxy(last), "/whoami").unwrap();
    assert_eq!((r.status, r.node), (200, Some(last)), "{r:?}");
    println!("no quorum: a write waited {waited:?} and got 503 not-executed; reads served");
    c.shutdown().unwrap();
}

/// The primary's app exits on its own (here: the kit's HTTP app, served from this process, stops,
/// then the run's child exits): the run hands off, then stops with the app's status. Writes
/// through the replicas' proxies meanwhile all succeed: the old primary's proxy answers
/// `not-executed` for its missing app, and they send the write to the next primary.
#[test]
fn the_primarys_app_exiting_hands_off_and_replicas_writes_go_on() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let (mut c, primary) = start(&litefs);
    let replicas: Vec<u64> = c
        .cluster
        .ids()
        .into_iter()
        .filter(|id| *id != primary)
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    // Each write holds it shared; the app is stopped holding it alone, so that no write is in
    // flight at the app as it goes (one would rightly get `502 unknown`, not what is tested).
    let gate = Arc::new(std::sync::RwLock::new(()));
    let writers: Vec<_> = replicas
        .iter()
        .map(|id| {
            let (proxy, stop, id) = (c.proxy(*id).to_string(), stop.clone(), *id);
            let gate = gate.clone();
            std::thread::spawn(move || {
                let a = agent(Duration::from_secs(20));
                let mut results = Vec::new();
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let rid = format!("x{id}-{i}");
                    let _write = gate.read().unwrap();
                    results.push((
                        rid.clone(),
                        call(&a, "POST", &proxy, &format!("/write?id={rid}")),
                    ));
                    drop(_write);
                    std::thread::sleep(Duration::from_millis(20));
                }
                results
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    {
        let _alone = gate.write().unwrap();
        // The HTTP app goes first: its port refuses, as a crashed app's does. A moment for the
        // proxy's pool to see its kept connections to the app closed.
        drop(c.apps.remove(&primary));
        std::thread::sleep(Duration::from_millis(200));
    }
    let app = c
        .cluster
        .node(primary)
        .app_pid()
        .expect("the primary's app runs");
    // SAFETY: the app our run started (its LITEFS_DIR checked by app_pid); SIGUSR1 ends it.
    unsafe { libc::kill(app, libc::SIGUSR1) };
    let status = c
        .cluster
        .node_mut(primary)
        .wait_exit(Duration::from_secs(60))
        .unwrap();
    let log = c.cluster.node(primary).log_tail(80);
    assert_eq!(status.code(), Some(128 + libc::SIGUSR1), "{log}");
    let new_primary = c
        .cluster
        .wait_one_primary(&replicas, Duration::from_secs(30))
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        for (rid, r) in w.join().unwrap() {
            match r {
                Ok(a) if a.status == 200 => acked.push(rid),
                other => panic!("{rid}: not a 2xx during the handoff: {other:?}\n{log}"),
            }
        }
    }
    let on_new = rows(&c.cluster.db(new_primary, DB)).unwrap();
    let missing: Vec<&String> = acked.iter().filter(|r| !on_new.contains(r)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged, not on node {new_primary}: {missing:?}"
    );
    let node = c.cluster.node(primary);
    let handing = node.log_pos("the app exited; this node is the primary: handing it off");
    let handed = node.log_pos(&format!("handed off before stopping: node {new_primary} "));
    assert!(
        handing < handed && handed < node.log_pos("the proxy stopped"),
        "{log}"
    );
    println!(
        "the primary's app exited: {} writes through the replicas' proxies, all 2xx and on \
         node {new_primary}",
        acked.len()
    );
    c.shutdown().unwrap();
}

#[test]
fn read_your_writes_through_replicas_with_the_cookie_and_without() {
    let Some(litefs) = prereq::litefs() else {
        return;
    };
    let _serial = serial();
    let (c, primary) = start(&litefs);
    let a = agent(Duration::from_secs(10));
    let ids = c.cluster.ids();
    let replicas: Vec<u64> = ids.iter().copied().filter(|id| *id != primary).collect();
    const PAIRS: usize = 1000;
    // Each write through a node in turn, the read at once through a replica.
    // A write that fails (on a loaded host the primary's LiteFS can lose its lease for a moment,
    // and the app's write fails) makes no pair; they are counted and must stay rare.
    let mut failed = 0;
    let mut run = |with_jar: bool| {
        let (mut stale, mut via_primary) = (0, 0);
        for i in 0..PAIRS {
            let rid = format!("ryw-{with_jar}-{i}");
            let w = call(
                &a,
                "POST",
                c.proxy(ids[i % ids.len()]),
                &format!("/write?id={rid}"),
            )
            .unwrap();
            if w.status != 200 {
                eprintln!("write {rid} failed: {w:?}");
                failed += 1;
                continue;
            }
            let jar = if with_jar {
                Some(w.cookie.clone().expect("a write sets the positions cookie"))
            } else {
                None
            };
            let replica = replicas[i % replicas.len()];
            let r = call_with(
                &a,
                "GET",
                c.proxy(replica),
                &format!("/has?id={rid}"),
                jar.as_deref(),
            )
            .unwrap();
            assert_eq!(r.status, 200, "{r:?}");
            if r.node == Some(primary) {
                via_primary += 1;
            }
            if !r.body.contains("\"found\":true") {
                stale += 1;
            }
        }
        (stale, via_primary)
    };
    let (stale_jar, primary_jar) = run(true);
    let (stale_nojar, _) = run(false);
    println!(
        "read-your-writes, {PAIRS} write-then-read pairs through replicas: with the cookie \
         {stale_jar} stale ({primary_jar} served by the primary after the wait); without it \
         {stale_nojar} stale; {failed} writes failed (no pair)"
    );
    assert!(failed < PAIRS / 10, "{failed} writes failed");
    assert_eq!(stale_jar, 0, "stale reads despite the cookie");
    c.shutdown().unwrap();
}
