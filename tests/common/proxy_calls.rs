//! What the proxy tests start, send and read: three nodes behind proxies ready for writes,
//! requests through a proxy with what its answer says (`x-litefs-py-*` headers, the positions
//! cookie), and the request ids in a node's database.

use std::path::Path;
use std::time::Duration;

use litefs_py_testkit::cluster::ProxyCluster;
use litefs_py_testkit::wait::wait_for;

/// Three `litefs-py run` nodes with the kit's app behind each proxy, `extra` in their `proxy:`
/// section; returns once a primary is known and a write goes through every proxy (the table
/// is created through each of them, idempotent: which waits until every proxy knows the
/// primary's address from raft). Also returns the primary.
pub fn start_cluster(litefs: &Path, extra: &[(&str, &str)]) -> (ProxyCluster, u64) {
    let mut c = ProxyCluster::start(super::run_options(), litefs, 3, extra).unwrap();
    let primary = c.wait_ready(Duration::from_secs(60)).unwrap();
    let a = agent(Duration::from_secs(10));
    for id in c.cluster.ids() {
        let proxy = c.proxy(id).to_string();
        wait_for(
            Duration::from_secs(30),
            "POST /init through every proxy",
            || {
                call(&a, "POST", &proxy, "/init")
                    .ok()
                    .filter(|r| r.status == 200)
            },
        );
    }
    (c, primary)
}

pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into()
}

/// What one request got.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// `x-litefs-py-node`: the node whose app answered (or whose proxy refused).
    pub node: Option<u64>,
    /// `x-litefs-py-outcome` on the proxy's own errors.
    pub outcome: Option<String>,
    /// The read-your-writes cookie (`name=value`), if one was set.
    pub cookie: Option<String>,
    /// `x-litefs-py-durability` (`durability: replicated`).
    pub durability: Option<String>,
    pub body: String,
}

pub fn call(agent: &ureq::Agent, method: &str, addr: &str, path: &str) -> Result<Answer, String> {
    call_with(agent, method, addr, path, None)
}

pub fn call_with(
    agent: &ureq::Agent,
    method: &str,
    addr: &str,
    path: &str,
    cookie: Option<&str>,
) -> Result<Answer, String> {
    let url = format!("http://{addr}{path}");
    let mut req = ureq::http::Request::builder().method(method).uri(&url);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let req = req.body(Vec::new()).map_err(|e| e.to_string())?;
    let mut resp = agent.run(req).map_err(|e| format!("{method} {url}: {e}"))?;
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let node = header("x-litefs-py-node").and_then(|v| v.parse().ok());
    let outcome = header("x-litefs-py-outcome");
    let durability = header("x-litefs-py-durability");
    let cookie = header("set-cookie")
        .and_then(|c| c.split(';').next().map(str::to_string))
        .filter(|c| c.starts_with("__litefs_py_pos="));
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    Ok(Answer {
        status,
        node,
        outcome,
        cookie,
        durability,
        body,
    })
}

/// The request ids in a node's database, read by a child process: SQLite maps the database's
/// WAL index (`-shm`, LiteFS's own file) into the reader, and a read of that mapping can die of
/// SIGBUS while LiteFS rewrites the file (seen once in CI; docs/limits.md). The child dies
/// then, not the test, and the read is tried again.
pub fn rows(db: &Path) -> Result<Vec<String>, String> {
    const READ: &str = "import sqlite3, sys\n\
        c = sqlite3.connect(sys.argv[1], timeout=5)\n\
        print('\\n'.join(r[0] for r in c.execute('SELECT id FROM requests')))";
    let mut last = String::new();
    for _ in 0..5 {
        let out = std::process::Command::new("python3")
            .args(["-c", READ])
            .arg(db)
            .output()
            .map_err(|e| format!("python3: {e}"))?;
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            return Ok(text
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect());
        }
        last = format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr));
        if std::os::unix::process::ExitStatusExt::signal(&out.status) != Some(libc::SIGBUS) {
            break;
        }
        eprintln!("reading {} died of SIGBUS; again", db.display());
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(last)
}
