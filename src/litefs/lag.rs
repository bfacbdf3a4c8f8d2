//! How far a node's LiteFS is behind the primary's, database by database: the TXID difference
//! of their `<db>-pos` positions. `litefs-py status` shows it per member (docs/operations.md,
//! "Status").
//!
//! The positions come from separate reports read at slightly different moments, so a replica
//! can look a transaction ahead of a busy primary; it is shown as it is (a negative lag), not
//! hidden. Equal TXIDs with different checksums are not lag but divergent histories (after a
//! failover that lost writes, before LiteFS resets the node).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::positions::{Pos, Positions};

/// One database of one node, against the primary's position of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbPosition {
    /// Its TXID here; `None`: the primary has this database and this node does not (yet).
    pub txid: Option<u64>,
    /// The post-apply checksum of that transaction, 16 hex digits as in `<db>-pos`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// The primary's TXID minus this node's (a missing database counts as TXID 0). Negative:
    /// this node is ahead. `None`: unknown (the primary's positions are not known, or the
    /// primary has no such database).
    pub lag: Option<i64>,
    /// Same TXID as the primary, another checksum: the histories differ.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub diverged: bool,
}

/// `mine` against `primary` (`None`: the primary's positions are unknown): every database
/// either has, the primary's ones included when this node lacks them.
pub fn against(primary: Option<&Positions>, mine: &Positions) -> BTreeMap<String, DbPosition> {
    let mut out: BTreeMap<String, DbPosition> = mine
        .iter()
        .map(|(db, pos)| {
            let theirs = primary.and_then(|p| p.get(db));
            (db.clone(), position(Some(pos), theirs))
        })
        .collect();
    for (db, theirs) in primary.into_iter().flatten() {
        out.entry(db.clone())
            .or_insert_with(|| position(None, Some(theirs)));
    }
    out
}

fn position(mine: Option<&Pos>, primary: Option<&Pos>) -> DbPosition {
    let txid = mine.map(|p| p.txid);
    let lag = primary.map(|p| diff(p.txid, txid.unwrap_or(0)));
    DbPosition {
        txid,
        checksum: mine.map(|p| format!("{:016x}", p.checksum)),
        lag,
        diverged: matches!((mine, primary), (Some(m), Some(p)) if m.txid == p.txid && m.checksum != p.checksum),
    }
}

/// `a - b`, saturated into an `i64` (TXIDs are counters; no real LiteFS gets near 2^63).
fn diff(a: u64, b: u64) -> i64 {
    if a >= b {
        i64::try_from(a - b).unwrap_or(i64::MAX)
    } else {
        i64::try_from(b - a).map_or(i64::MIN, |d| -d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positions(dbs: &[(&str, u64, u64)]) -> Positions {
        dbs.iter()
            .map(|(db, txid, checksum)| {
                (
                    db.to_string(),
                    Pos {
                        txid: *txid,
                        checksum: *checksum,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn lag_is_the_primarys_txid_minus_this_nodes() {
        let primary = positions(&[("app.db", 12, 7), ("cache.db", 3, 1), ("new.db", 5, 9)]);
        let mine = positions(&[("app.db", 10, 4), ("cache.db", 3, 1), ("old.db", 2, 2)]);
        let got = against(Some(&primary), &mine);
        let lags: Vec<(&str, Option<u64>, Option<i64>)> = got
            .iter()
            .map(|(db, p)| (db.as_str(), p.txid, p.lag))
            .collect();
        assert_eq!(
            lags,
            [
                ("app.db", Some(10), Some(2)),
                ("cache.db", Some(3), Some(0)),
                // Missing here: all of the primary's transactions are missing.
                ("new.db", None, Some(5)),
                // Not on the primary: no lag to speak of.
                ("old.db", Some(2), None),
            ]
        );
        assert_eq!(got["app.db"].checksum.as_deref(), Some("0000000000000004"));
        assert_eq!(got["new.db"].checksum, None);
        assert!(got.values().all(|p| !p.diverged));
    }

    #[test]
    fn the_primary_against_itself_lags_zero() {
        let p = positions(&[("app.db", 12, 7)]);
        assert_eq!(against(Some(&p), &p)["app.db"].lag, Some(0));
    }

    #[test]
    fn ahead_is_negative_and_a_checksum_mismatch_at_the_same_txid_is_divergence() {
        let primary = positions(&[("a.db", 5, 1), ("b.db", 8, 1)]);
        let mine = positions(&[("a.db", 7, 1), ("b.db", 8, 2)]);
        let got = against(Some(&primary), &mine);
        assert_eq!(got["a.db"].lag, Some(-2));
        assert!(!got["a.db"].diverged);
        assert_eq!(got["b.db"].lag, Some(0));
        assert!(got["b.db"].diverged);
    }

    #[test]
    fn without_the_primarys_positions_every_lag_is_unknown() {
        let mine = positions(&[("app.db", 10, 4)]);
        let got = against(None, &mine);
        assert_eq!(got["app.db"].txid, Some(10));
        assert_eq!(got["app.db"].lag, None);
    }

    #[test]
    fn differences_saturate() {
        assert_eq!(diff(u64::MAX, 0), i64::MAX);
        assert_eq!(diff(0, u64::MAX), i64::MIN);
        assert_eq!(diff(3, 5), -2);
    }
}
