//! What the handoff asks of the local LiteFS: its databases and their positions (the
//! `<db>-pos` files in its FUSE mount), its HALT lock (`POST`/`DELETE /halt`: LiteFS takes the
//! database's write lock, so local writers wait, and keeps it until released or 30 s), and
//! whether it is primary (`GET /info`).
//!
//! The file reads go through LiteFS's FUSE mount, which a hung LiteFS can block: they run on
//! the blocking pool under a timeout.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::HandoffError;
use super::plan::{Pos, Positions};

/// One call to LiteFS's HTTP API. The HALT lock waits up to LiteFS's own 10 s for the write
/// lock (a long transaction), so that call gets longer.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
const HALT_TIMEOUT: Duration = Duration::from_secs(12);
const FS_TIMEOUT: Duration = Duration::from_secs(2);

/// The LiteFS of this node, as `litefs-py run` started it.
#[derive(Debug, Clone)]
pub struct LiteFsApi {
    pub lower: PathBuf,
    pub http: SocketAddr,
    client: reqwest::Client,
}

/// Percent-encodes a query value (database names are file names: anything but `/`).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn litefs_err(what: String) -> impl FnOnce(reqwest::Error) -> HandoffError {
    move |e| HandoffError::LiteFs(format!("{what}: {e}"))
}

impl LiteFsApi {
    pub fn new(lower: PathBuf, http: SocketAddr) -> Result<LiteFsApi, HandoffError> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| HandoffError::LiteFs(format!("http client: {e}")))?;
        Ok(LiteFsApi {
            lower,
            http,
            client,
        })
    }

    /// `GET /info` `isPrimary`.
    pub async fn is_primary(&self) -> Result<bool, HandoffError> {
        let url = format!("http://{}/info", self.http);
        let what = format!("GET {url}");
        let body: serde_json::Value = self
            .client
            .get(&url)
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(litefs_err(what.clone()))?
            .error_for_status()
            .map_err(litefs_err(what.clone()))?
            .json()
            .await
            .map_err(litefs_err(what.clone()))?;
        body["isPrimary"]
            .as_bool()
            .ok_or_else(|| HandoffError::LiteFs(format!("{what}: no isPrimary in {body}")))
    }

    /// Takes the HALT lock of database `db` with lock id `id` (non-zero): from its answer on, no
    /// transaction commits on it and its position stays put.
    pub async fn halt(&self, db: &str, id: i64) -> Result<(), HandoffError> {
        self.halt_call(reqwest::Method::POST, db, id, HALT_TIMEOUT)
            .await
    }

    /// Releases the HALT lock `id` of `db`.
    pub async fn unhalt(&self, db: &str, id: i64) -> Result<(), HandoffError> {
        self.halt_call(reqwest::Method::DELETE, db, id, CALL_TIMEOUT)
            .await
    }

    async fn halt_call(
        &self,
        method: reqwest::Method,
        db: &str,
        id: i64,
        timeout: Duration,
    ) -> Result<(), HandoffError> {
        // No `Litefs-Id` header: LiteFS refuses a halt "from itself", and we are not a node.
        let url = format!("http://{}/halt?name={}&id={id}", self.http, encode(db));
        let what = format!("{method} {url}");
        let resp = self
            .client
            .request(method, &url)
            .timeout(timeout)
            .send()
            .await
            .map_err(litefs_err(what.clone()))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(HandoffError::LiteFs(format!(
                "{what}: {status}: {}",
                body.trim()
            )));
        }
        Ok(())
    }

    /// The databases in LiteFS's mount and their positions.
    pub async fn positions(&self) -> Result<Positions, HandoffError> {
        let lower = self.lower.clone();
        let read = tokio::task::spawn_blocking(move || read_positions(&lower));
        match tokio::time::timeout(FS_TIMEOUT, read).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(HandoffError::LiteFs(format!("reading positions: {e}"))),
            Err(_) => Err(HandoffError::LiteFs(format!(
                "reading positions in {} did not finish within {FS_TIMEOUT:?} (LiteFS hung?)",
                self.lower.display()
            ))),
        }
    }
}

/// Every `<db>-pos` file in `lower` (LiteFS's mount), parsed.
pub fn read_positions(lower: &Path) -> Result<Positions, HandoffError> {
    let fail = |what: &str, p: &Path, e: std::io::Error| {
        HandoffError::LiteFs(format!("{what} {}: {e}", p.display()))
    };
    let mut out = Positions::new();
    for entry in std::fs::read_dir(lower).map_err(|e| fail("listing", lower, e))? {
        let entry = entry.map_err(|e| fail("listing", lower, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(db) = name.strip_suffix("-pos").filter(|d| !d.is_empty()) else {
            continue;
        };
        let path = entry.path();
        let text = std::fs::read_to_string(&path).map_err(|e| fail("reading", &path, e))?;
        let pos = Pos::parse(&text).ok_or_else(|| {
            HandoffError::LiteFs(format!(
                "{}: not a LiteFS position: {text:?}",
                path.display()
            ))
        })?;
        out.insert(db.to_string(), pos);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_from_a_directory() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("app.db"), b"").unwrap();
        std::fs::write(
            d.path().join("app.db-pos"),
            "0000000000000002/00000000000000ff\n",
        )
        .unwrap();
        std::fs::write(d.path().join(".primary"), "node-1\n").unwrap();
        let p = read_positions(d.path()).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p["app.db"].txid, 2);
        std::fs::write(d.path().join("x.db-pos"), "garbage").unwrap();
        let e = read_positions(d.path()).unwrap_err().to_string();
        assert!(e.contains("not a LiteFS position"), "{e}");
        assert_eq!(encode("a b/ü.db"), "a%20b%2F%C3%BC.db");
    }
}
