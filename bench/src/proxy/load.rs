//! The clients of the proxy benchmark: a few threads, each with its own HTTP client (ureq, an
//! agent per thread), sending one kind of request to one address as fast as answers come back,
//! for a bounded time and count. Each request is timed from send to the last byte of the answer.

use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

use super::summary::Round;
use crate::measure::check_stop;

/// How the clients use connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conn {
    /// One connection per client thread, reused (what a pooled client or a browser does).
    KeepAlive,
    /// A new TCP connection per request, closed after the answer (`Connection: close`).
    New,
}

impl Conn {
    pub fn label(self) -> &'static str {
        match self {
            Conn::KeepAlive => "keep-alive",
            Conn::New => "new connection per request",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Conn::KeepAlive => "keep_alive",
            Conn::New => "new_connection",
        }
    }
}

/// What each request is.
#[derive(Debug, Clone)]
pub enum Request {
    /// `GET <path>`.
    Get(&'static str),
    /// `POST /write?id=<prefix>-<client>-<n>` with a body of `body` bytes: one row on the
    /// primary per request, under a request id no other request of the run has.
    Write { prefix: String, body: usize },
}

/// One case's clients: what to send where, how many at once.
#[derive(Debug, Clone)]
pub struct Load {
    /// `host:port`.
    pub addr: String,
    pub request: Request,
    pub conn: Conn,
    pub clients: usize,
    /// Untimed requests per client before the round (connections, caches, the app's pool).
    pub warmup: u64,
    pub duration: Duration,
    /// At most this many timed requests per client.
    pub max_per_client: u64,
}

/// A request the clients wait for at most this long; one that takes longer is an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub fn agent(conn: Conn) -> ureq::Agent {
    let mut b = ureq::Agent::config_builder()
        .timeout_global(Some(REQUEST_TIMEOUT))
        .http_status_as_error(false)
        .proxy(None);
    if conn == Conn::New {
        b = b.max_idle_connections(0).max_idle_connections_per_host(0);
    }
    b.build().into()
}

/// The answer's status and its `x-litefs-py-node`, after reading the body to its end (which a
/// kept-alive connection needs before its next request).
pub fn send(
    agent: &ureq::Agent,
    addr: &str,
    request: &Request,
    conn: Conn,
    id: &str,
) -> Result<(u16, Option<u64>)> {
    let close = conn == Conn::New;
    let result = match request {
        Request::Get(path) => {
            let mut r = agent.get(format!("http://{addr}{path}"));
            if close {
                r = r.header("connection", "close");
            }
            r.call()
        }
        Request::Write { prefix, body } => {
            let mut r = agent.post(format!("http://{addr}/write?id={prefix}-{id}"));
            if close {
                r = r.header("connection", "close");
            }
            r.send(&vec![b'x'; *body][..])
        }
    };
    let mut resp = result.map_err(|e| anyhow!("{e}"))?;
    let node = resp
        .headers()
        .get("x-litefs-py-node")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let status = resp.status().as_u16();
    resp.body_mut()
        .read_to_vec()
        .map_err(|e| anyhow!("reading the answer: {e}"))?;
    Ok((status, node))
}

/// What one client thread did in a round.
struct ClientRun {
    latencies_us: Vec<f64>,
    errors: u64,
    first_error: Option<String>,
    began: Instant,
    ended: Instant,
}

/// One round of `load`; `acked` counts the 2xx answers, warm-up included (the rows check).
pub fn round(load: &Load, acked: &AtomicU64) -> Result<Round> {
    let clients = load.clients.max(1);
    let start = Barrier::new(clients);
    let runs: Vec<Result<ClientRun>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let start = &start;
                s.spawn(move || client(load, c, start, acked))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a client thread panicked")))
            })
            .collect()
    });
    check_stop()?;
    let mut out = Round::default();
    let mut span: Option<(Instant, Instant)> = None;
    for run in runs {
        let run = run?;
        out.latencies_us.extend(run.latencies_us);
        out.errors += run.errors;
        out.first_error = out.first_error.or(run.first_error);
        span = Some(span.map_or((run.began, run.ended), |(b, e)| {
            (b.min(run.began), e.max(run.ended))
        }));
    }
    // The clients leave the barrier together; the round lasts until the last one stopped.
    out.elapsed_s = span.map_or(0.0, |(b, e)| e.duration_since(b).as_secs_f64());
    Ok(out)
}

fn client(load: &Load, c: usize, start: &Barrier, acked: &AtomicU64) -> Result<ClientRun> {
    let agent = agent(load.conn);
    let mut n = 0u64;
    let mut next_id = || {
        n += 1;
        format!("c{c}-{n}")
    };
    // Warm-up (untimed): a failed request counts as an error all the same.
    let (mut errors, mut first) = (0u64, None::<String>);
    // Whether the request was answered with a 2xx; counts it either way.
    let mut tally = |r: Result<(u16, Option<u64>)>| -> bool {
        match r {
            Ok((s, _)) if (200..300).contains(&s) => {
                acked.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Ok((s, _)) => {
                first.get_or_insert_with(|| format!("answered {s}"));
            }
            Err(e) => {
                first.get_or_insert_with(|| format!("{e:#}"));
            }
        }
        errors += 1;
        false
    };
    for _ in 0..load.warmup {
        tally(send(
            &agent,
            &load.addr,
            &load.request,
            load.conn,
            &next_id(),
        ));
    }
    start.wait();
    let began = Instant::now();
    let mut lat = Vec::with_capacity(4096);
    let mut sent = 0u64;
    while sent < load.max_per_client && began.elapsed() < load.duration {
        sent += 1;
        let id = next_id();
        let t = Instant::now();
        let r = send(&agent, &load.addr, &load.request, load.conn, &id);
        let took = t.elapsed();
        if tally(r) {
            lat.push(took.as_nanos() as f64 / 1000.0);
        }
        if sent.is_multiple_of(32) && check_stop().is_err() {
            break;
        }
    }
    Ok(ClientRun {
        latencies_us: lat,
        errors,
        first_error: first,
        began,
        ended: Instant::now(),
    })
}
