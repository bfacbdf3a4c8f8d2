//! LiteFS's event stream (`GET /events` on its HTTP API): one JSON object per line, pushed as
//! things happen. `durability: replicated` follows it on every node for the local positions
//! (docs/proxy.md, "Replicated durability"): a transaction LiteFS commits (primary) or applies
//! (replica) arrives as a `tx` event with its TXID and post-apply checksum, with no polling.
//!
//! A subscription starts with an `init` event and then carries only what happens after it; so
//! once `init` arrives, the `<db>-pos` files are read for the databases' positions so far, and
//! the events carry on from there. A subscriber that falls 1,024 events behind is disconnected
//! by LiteFS; [`follow`] then subscribes again, and reads the files again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::LiteFsError;
use super::positions::{Pos, Positions, read_positions};

/// What [`follow`] tells its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Every database's position as its `<db>-pos` file says, read right after (re)subscribing:
    /// the positions before the events that follow.
    Snapshot(Positions),
    /// A transaction LiteFS committed or applied.
    Tx { db: String, pos: Pos },
}

/// One line of the stream. Only `tx` events are used; `init` marks the start.
#[derive(Debug, Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    db: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

/// A `tx` event's data: TXID and checksum as LiteFS writes them, 16 hex digits in a string.
#[derive(Debug, Deserialize)]
struct RawTx {
    #[serde(rename = "txID")]
    txid: String,
    #[serde(rename = "postApplyChecksum")]
    checksum: String,
}

/// What one line of the stream means: `Ok(None)` for events that say nothing about positions.
fn parse_line(line: &[u8]) -> Result<Option<Update>, String> {
    let raw: RawEvent = serde_json::from_slice(line).map_err(|e| {
        format!(
            "not a LiteFS event ({e}): {:?}",
            String::from_utf8_lossy(line)
        )
    })?;
    if raw.kind != "tx" {
        return Ok(None);
    }
    let (Some(db), Some(data)) = (raw.db, raw.data) else {
        return Err("a tx event without its database or data".into());
    };
    let data: RawTx =
        serde_json::from_value(data).map_err(|e| format!("a tx event of {db}: {e}"))?;
    let pos = Pos::parse(&format!("{}/{}", data.txid, data.checksum))
        .ok_or_else(|| format!("a tx event of {db} with a bad position: {data:?}"))?;
    Ok(Some(Update::Tx { db, pos }))
}

/// Splits complete lines off the front of `buf`, leaving a partial last line there.
fn take_lines(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
        return Vec::new();
    };
    let rest = buf.split_off(end + 1);
    let done = std::mem::replace(buf, rest);
    done.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// A stream line longer than this is not LiteFS's: the connection is dropped and made again.
const MAX_LINE: usize = 64 * 1024;
/// How long to wait before subscribing again after the stream ended or failed (LiteFS not up
/// yet, restarting, or it dropped a slow subscriber).
const RETRY: Duration = Duration::from_millis(200);

/// Follows the local LiteFS's positions, for ever: `on` gets a [`Update::Snapshot`] after each
/// (re)subscription, then every transaction. Returns only when `on` returns `false`.
pub async fn follow(http: SocketAddr, lower: PathBuf, mut on: impl FnMut(Update) -> bool) {
    // No overall timeout: the response is a stream that lasts as long as LiteFS does.
    let client = match crate::config::client_builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("LiteFS's event stream: no HTTP client: {e}");
            return;
        }
    };
    let mut last_error = String::new();
    loop {
        match subscribe(&client, http, &lower, &mut on).await {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => {
                if e.0 != last_error {
                    tracing::debug!("{e}; subscribing again");
                    last_error = e.0;
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// One subscription: `Ok(true)` when the stream ended, `Ok(false)` when `on` asked to stop.
async fn subscribe(
    client: &reqwest::Client,
    http: SocketAddr,
    lower: &std::path::Path,
    on: &mut impl FnMut(Update) -> bool,
) -> Result<bool, LiteFsError> {
    let url = format!("http://{http}/events");
    let fail = |e: String| LiteFsError(format!("GET {url}: {e}"));
    let mut resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(fail(resp.status().to_string()));
    }
    let mut buf = Vec::new();
    let mut started = false;
    while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
        buf.extend_from_slice(&chunk);
        for line in take_lines(&mut buf) {
            if !started {
                // The first event is `init`: from here on nothing is missed, so the files now
                // say where the events start from.
                started = true;
                let lower = lower.to_path_buf();
                let snapshot = tokio::task::spawn_blocking(move || read_positions(&lower))
                    .await
                    .map_err(|e| fail(e.to_string()))??;
                if !on(Update::Snapshot(snapshot)) {
                    return Ok(false);
                }
            }
            match parse_line(&line) {
                Ok(Some(u)) => {
                    if !on(u) {
                        return Ok(false);
                    }
                }
                Ok(None) => {}
                Err(e) => return Err(fail(e)),
            }
        }
        if buf.len() > MAX_LINE {
            return Err(fail(format!("a line longer than {MAX_LINE} bytes")));
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_events_carry_positions_and_others_are_skipped() {
        let tx = br#"{"type":"tx","db":"app.db","data":{"txID":"00000000000000a1","postApplyChecksum":"8000000000000001","pageSize":4096,"commit":2,"timestamp":"2026-12-04T10:00:00Z"}}"#;
        assert_eq!(
            parse_line(tx).unwrap(),
            Some(Update::Tx {
                db: "app.db".into(),
                pos: Pos {
                    txid: 0xa1,
                    checksum: 0x8000_0000_0000_0001
                }
            })
        );
        let init = br#"{"type":"init","data":{"isPrimary":true}}"#;
        assert_eq!(parse_line(init).unwrap(), None);
        let change = br#"{"type":"primaryChange","data":{"isPrimary":false,"hostname":"n1"}}"#;
        assert_eq!(parse_line(change).unwrap(), None);
        assert!(parse_line(b"{nope").is_err());
        let bad = br#"{"type":"tx","db":"a","data":{"txID":"xyz","postApplyChecksum":"1"}}"#;
        assert!(parse_line(bad).unwrap_err().contains("bad position"));
    }

    #[test]
    fn lines_are_split_off_and_a_partial_one_waits() {
        let mut buf = b"{\"a\":1}\n{\"b\":2}\n{\"c\"".to_vec();
        let lines = take_lines(&mut buf);
        assert_eq!(lines, vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]);
        assert_eq!(buf, b"{\"c\"".to_vec());
        buf.extend_from_slice(b":3}\n");
        assert_eq!(take_lines(&mut buf), vec![b"{\"c\":3}".to_vec()]);
        assert!(buf.is_empty());
        assert!(take_lines(&mut buf).is_empty());
    }
}
