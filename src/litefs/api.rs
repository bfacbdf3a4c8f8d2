//! The local LiteFS as litefs-py talks to it: its databases and their positions (the
//! `<db>-pos` files in its FUSE mount), its HALT lock (`POST`/`DELETE /halt`: LiteFS takes the
//! database's write lock, so local writers wait, and keeps it until released or 30 s), and
//! whether it is primary (`GET /info`, through [`super::info`]). The handoff and the freshest-node
//! check use it; [`LiteFsApi::report`] is what this node tells its peers.
//!
//! The file reads go through LiteFS's FUSE mount, which a hung LiteFS can block: they run on
//! the blocking pool under a timeout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::positions::{Positions, read_positions};
use super::report::LocalReport;
use super::{LiteFsError, info};

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

fn litefs_err(what: String) -> impl FnOnce(reqwest::Error) -> LiteFsError {
    move |e| LiteFsError(format!("{what}: {e}"))
}

impl LiteFsApi {
    pub fn new(lower: PathBuf, http: SocketAddr) -> Result<LiteFsApi, LiteFsError> {
        let client = crate::config::client_builder()
            .no_proxy()
            .build()
            .map_err(|e| LiteFsError(format!("http client: {e}")))?;
        Ok(LiteFsApi {
            lower,
            http,
            client,
        })
    }

    /// `GET /info` `isPrimary`.
    pub async fn is_primary(&self) -> Result<bool, LiteFsError> {
        let addr = self.http.to_string();
        match tokio::time::timeout(CALL_TIMEOUT, info::get(&self.client, &addr)).await {
            Ok(Ok(info)) => Ok(info.is_primary),
            Ok(Err(e)) => Err(LiteFsError(e.to_string())),
            Err(_) => Err(LiteFsError(format!(
                "GET http://{addr}/info: no answer within {CALL_TIMEOUT:?}"
            ))),
        }
    }

    /// This node's LiteFS for a peer asking (`GET` [`super::report::REPORT_PATH`]).
    pub async fn report(&self) -> LocalReport {
        let (primary, positions) = tokio::join!(self.is_primary(), self.positions());
        let errors: Vec<String> = [primary.as_ref().err(), positions.as_ref().err()]
            .into_iter()
            .flatten()
            .map(ToString::to_string)
            .collect();
        LocalReport {
            // LiteFS not answering counts as "not primary": the caller keeps polling.
            is_primary: Some(primary.unwrap_or(false)),
            positions: positions.unwrap_or_default(),
            error: (!errors.is_empty()).then(|| errors.join("; ")),
            stopping: false,
        }
    }

    /// Takes the HALT lock of database `db` with lock id `id` (non-zero): from its answer on, no
    /// transaction commits on it and its position stays put.
    pub async fn halt(&self, db: &str, id: i64) -> Result<(), LiteFsError> {
        self.halt_call(reqwest::Method::POST, db, id, HALT_TIMEOUT)
            .await
    }

    /// Releases the HALT lock `id` of `db`.
    pub async fn unhalt(&self, db: &str, id: i64) -> Result<(), LiteFsError> {
        self.halt_call(reqwest::Method::DELETE, db, id, CALL_TIMEOUT)
            .await
    }

    async fn halt_call(
        &self,
        method: reqwest::Method,
        db: &str,
        id: i64,
        timeout: Duration,
    ) -> Result<(), LiteFsError> {
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
            return Err(LiteFsError(format!("{what}: {status}: {}", body.trim())));
        }
        Ok(())
    }

    /// The databases in LiteFS's mount and their positions.
    pub async fn positions(&self) -> Result<Positions, LiteFsError> {
        let lower = self.lower.clone();
        let read = tokio::task::spawn_blocking(move || read_positions(&lower));
        match tokio::time::timeout(FS_TIMEOUT, read).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(LiteFsError(format!("reading positions: {e}"))),
            Err(_) => Err(LiteFsError(format!(
                "reading positions in {} did not finish within {FS_TIMEOUT:?} (LiteFS hung?)",
                self.lower.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_percent_encoded() {
        assert_eq!(encode("a b/ü.db"), "a%20b%2F%C3%BC.db");
    }
}
