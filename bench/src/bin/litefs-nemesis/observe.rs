//! What the nemesis watches while it breaks things: a continuous writer (one thread per node,
//! each writing through its own node's shim, so that a frozen or stopped node blocks only its
//! own thread), with every acknowledged write's unique id logged; and the double-primary
//! samplers over LiteFS's `/info` and the shims' `.role`.
//!
//! The samplers: one poller thread per node keeps that node's latest answer and when it came;
//! the testkit [`Sampler`] combines them every 3 ms and counts the rounds in which two nodes'
//! answers, each younger than [`FRESH`], said primary. A frozen node gives no answer, so it
//! cannot be counted as primary while frozen; once thawed it answers again and is.
//!
//! An answer is stamped with the instant it was *asked for*, not when it arrived: it describes
//! the node at some instant in between, and `.role`'s content is fixed at the open. A read whose
//! open was answered just before its daemon was stopped arrives after the SIGCONT saying
//! `primary`, about a state seconds old; stamped on arrival it was counted as fresh next to the
//! new primary (seed 101, docs/testing.md). Stamped when asked, it is as old as it is.

use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use litefs_py_testkit::cluster::Sampler;
use rusqlite::Connection;

pub const DB: &str = "nemesis.db";
/// How old a poller's answer may be and still count in a sampling round.
const FRESH: Duration = Duration::from_millis(250);

/// One acknowledged write.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub id: i64,
    pub node: u64,
    pub at: Instant,
}

pub struct Writer {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    threads: Vec<JoinHandle<()>>,
}

fn connect(path: &std::path::Path) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(Duration::from_millis(500))?;
    Ok(c)
}

/// Creates the table on the primary's mount, in rollback-journal mode: in WAL mode SQLite maps
/// the `-shm` file into this process, and the first 60 s run (seed 1) died of SIGBUS ~1 s after
/// a SIGCONT of the primary's daemon (cause not yet confirmed; reported in docs/testing.md, "The
/// nemesis"). A harness that dies cannot report the rest.
pub fn create_table(db: &std::path::Path) -> rusqlite::Result<()> {
    let c = connect(db)?;
    let _: String = c.query_row("PRAGMA journal_mode=delete", [], |r| r.get(0))?;
    c.execute_batch("CREATE TABLE IF NOT EXISTS w(id INTEGER PRIMARY KEY, node INTEGER NOT NULL)")
}

/// Every id in the table, read through `db`.
pub fn ids(db: &std::path::Path) -> rusqlite::Result<std::collections::BTreeSet<i64>> {
    let c = connect(db)?;
    let mut st = c.prepare("SELECT id FROM w")?;
    st.query_map([], |r| r.get(0))?.collect()
}

impl Writer {
    /// One thread per `(node, db path)`; every acknowledged id is also appended to `log`.
    pub fn start(dbs: Vec<(u64, PathBuf)>, log: PathBuf) -> std::io::Result<Writer> {
        let stop = Arc::new(AtomicBool::new(false));
        let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
        let next = Arc::new(AtomicI64::new(1));
        let log = Arc::new(Mutex::new(File::create(log)?));
        let t0 = Instant::now();
        let threads = dbs
            .into_iter()
            .map(|(node, path)| {
                let (stop, acks, next, log) =
                    (stop.clone(), acks.clone(), next.clone(), log.clone());
                std::thread::spawn(move || {
                    let mut conn: Option<Connection> = None;
                    while !stop.load(Ordering::Relaxed) {
                        // Every id is tried once: a failed write never reuses it.
                        let id = next.fetch_add(1, Ordering::Relaxed);
                        if conn.is_none() {
                            conn = connect(&path).ok();
                        }
                        let ok = conn.as_ref().is_some_and(|c| {
                            c.execute("INSERT INTO w(id, node) VALUES (?1, ?2)", (id, node as i64))
                                .is_ok()
                        });
                        if ok {
                            let at = Instant::now();
                            acks.lock().unwrap().push(Ack { id, node, at });
                            let line = format!("{id} node={node} t_ms={}\n", (at - t0).as_millis());
                            let _ = log.lock().unwrap().write_all(line.as_bytes());
                            std::thread::sleep(Duration::from_millis(10));
                        } else {
                            // A replica, a dead mount, a demoting primary: reconnect later.
                            conn = None;
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                })
            })
            .collect();
        Ok(Writer {
            stop,
            acks,
            threads,
        })
    }

    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap().clone()
    }

    /// The first acknowledgement at or after `t`.
    pub fn first_ack_after(&self, t: Instant) -> Option<Instant> {
        self.acks
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.at)
            .filter(|at| *at >= t)
            .min()
    }

    /// Stops the threads; a thread blocked on a frozen mount is left behind (it ends with us).
    pub fn stop(mut self, wait: Duration) -> Vec<Ack> {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + wait;
        for t in self.threads.drain(..) {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        self.acks()
    }
}

/// What the samplers saw: rounds, and when two nodes said primary at once (the first few
/// described).
pub struct Sampled {
    pub rounds: u64,
    pub info_doubles: Vec<Instant>,
    pub role_doubles: Vec<Instant>,
    pub info_examples: Vec<String>,
    pub role_examples: Vec<String>,
}

/// A node's latest answer: primary or not, and when it came.
#[derive(Clone, Copy)]
struct Answer {
    primary: bool,
    at: Instant,
}

/// The double-primary samplers: `/info` and `.role`.
pub struct Samplers {
    stop: Arc<AtomicBool>,
    pollers: Vec<JoinHandle<()>>,
    info: Sampler,
    role: Sampler,
    info_doubles: Arc<Mutex<Vec<Instant>>>,
    role_doubles: Arc<Mutex<Vec<Instant>>>,
    rounds: Arc<AtomicU64>,
}

type Latest = Arc<Mutex<Vec<Option<Answer>>>>;

fn combine(
    ids: Vec<u64>,
    latest: Latest,
    doubles: Arc<Mutex<Vec<Instant>>>,
    rounds: Option<Arc<AtomicU64>>,
) -> Sampler {
    Sampler::every(Duration::from_millis(3), move || {
        let now = Instant::now();
        let said: Vec<u64> = latest
            .lock()
            .unwrap()
            .iter()
            .zip(&ids)
            .filter(|(a, _)| a.is_some_and(|a| a.primary && now - a.at < FRESH))
            .map(|(_, id)| *id)
            .collect();
        if said.len() > 1 {
            doubles.lock().unwrap().push(now);
        }
        if let Some(r) = &rounds {
            r.fetch_add(1, Ordering::Relaxed);
        }
        said
    })
}

impl Samplers {
    /// `nodes`: (id, LiteFS HTTP address, shim mount).
    pub fn start(nodes: Vec<(u64, String, PathBuf)>) -> Samplers {
        let stop = Arc::new(AtomicBool::new(false));
        let n = nodes.len();
        let info_latest: Latest = Arc::new(Mutex::new(vec![None; n]));
        let role_latest: Latest = Arc::new(Mutex::new(vec![None; n]));
        let mut pollers = Vec::new();
        for (i, (_, addr, mnt)) in nodes.iter().cloned().enumerate() {
            let (s, l) = (stop.clone(), info_latest.clone());
            pollers.push(std::thread::spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let asked = Instant::now();
                    let primary = litefs_py_testkit::litefs::is_primary(&addr) == Some(true);
                    l.lock().unwrap()[i] = Some(Answer { primary, at: asked });
                    std::thread::sleep(Duration::from_millis(3));
                }
            }));
            let (s, l) = (stop.clone(), role_latest.clone());
            pollers.push(std::thread::spawn(move || {
                let mut buf = String::new();
                while !s.load(Ordering::Relaxed) {
                    buf.clear();
                    let asked = Instant::now();
                    let primary = File::open(mnt.join(".role"))
                        .and_then(|mut f| f.read_to_string(&mut buf))
                        .is_ok()
                        && buf == "primary\n";
                    l.lock().unwrap()[i] = Some(Answer { primary, at: asked });
                    std::thread::sleep(Duration::from_millis(3));
                }
            }));
        }
        let ids: Vec<u64> = nodes.iter().map(|(id, _, _)| *id).collect();
        let info_doubles: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let role_doubles: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let rounds = Arc::new(AtomicU64::new(0));
        Samplers {
            info: combine(
                ids.clone(),
                info_latest,
                info_doubles.clone(),
                Some(rounds.clone()),
            ),
            role: combine(ids, role_latest, role_doubles.clone(), None),
            stop,
            pollers,
            info_doubles,
            role_doubles,
            rounds,
        }
    }

    /// Stops every thread (a poller blocked on a frozen mount is left behind).
    pub fn finish(self) -> Sampled {
        self.stop.store(true, Ordering::Relaxed);
        let (_, info_examples) = self.info.finish();
        let (_, role_examples) = self.role.finish();
        for p in self.pollers {
            if p.is_finished() {
                let _ = p.join();
            }
        }
        Sampled {
            rounds: self.rounds.load(Ordering::Relaxed),
            info_doubles: std::mem::take(&mut *self.info_doubles.lock().unwrap()),
            role_doubles: std::mem::take(&mut *self.role_doubles.lock().unwrap()),
            info_examples,
            role_examples,
        }
    }
}
