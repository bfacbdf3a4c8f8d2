//! Read-your-writes (docs/proxy.md, "Read-your-writes"): after an unsafe request, the
//! primary's proxy sets a cookie with the positions (TXIDs) its LiteFS has committed and the
//! raft term they belong to. A replica that gets a safe request with that cookie serves it once
//! its own LiteFS has caught up, within a bound; else it sends it to the primary.
//!
//! Why the term: TXIDs restart or go back when a failover loses writes (the new primary's
//! history is shorter). Within one term the primary is one LiteFS whose TXIDs only grow; a mark
//! from another term is not comparable, so it neither makes a replica wait nor lets its state
//! through: the request goes to the primary, which is the truth after a failover.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use axum::http::header::COOKIE;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use litefs_py_fuse::{ClusterView, Role};

use crate::litefs::positions::Positions;

/// The cookie's name (LiteFS's own is `__txid`, one TXID of one database).
pub const COOKIE_NAME: &str = "__litefs_py_pos";
/// How long a browser keeps it: long enough for the next page, as LiteFS's 5 minutes.
pub const COOKIE_MAX_AGE_S: u64 = 300;

/// What a client's cookie says: the raft term and the TXID of each database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub term: u64,
    pub txids: BTreeMap<String, u64>,
}

impl Mark {
    pub fn new(term: u64, positions: &Positions) -> Mark {
        Mark {
            term,
            txids: positions
                .iter()
                .map(|(db, p)| (db.clone(), p.txid))
                .collect(),
        }
    }

    /// `<term>.<base64url of the JSON map>`: cookie-safe whatever the database names are.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(&self.txids).expect("a map serialises");
        format!("{}.{}", self.term, URL_SAFE_NO_PAD.encode(json))
    }

    pub fn decode(value: &str) -> Option<Mark> {
        let (term, rest) = value.split_once('.')?;
        let json = URL_SAFE_NO_PAD.decode(rest).ok()?;
        Some(Mark {
            term: term.parse().ok()?,
            txids: serde_json::from_slice(&json).ok()?,
        })
    }

    /// The mark in a request's `Cookie` headers, if one parses.
    pub fn from_headers(headers: &HeaderMap) -> Option<Mark> {
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(name, _)| *name == COOKIE_NAME)
            .and_then(|(_, v)| Mark::decode(v))
    }

    /// Whether `local` has every database of the mark at or past its TXID.
    pub fn reached_by(&self, local: &Positions) -> bool {
        self.txids
            .iter()
            .all(|(db, txid)| local.get(db).is_some_and(|p| p.txid >= *txid))
    }
}

/// What a safe request with a mark does on a node whose view is `view`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPlan {
    /// Served here at once: no mark, or this node is primary.
    Local,
    /// Served here once the local positions reach the mark, within the bound; else the primary.
    WaitThenPrimary,
    /// The mark is from another term: the primary serves it.
    Primary,
}

pub fn plan(mark: Option<&Mark>, view: &ClusterView) -> ReadPlan {
    match mark {
        None => ReadPlan::Local,
        Some(_) if view.role() == Role::Primary => ReadPlan::Local,
        Some(m) if m.term != view.term => ReadPlan::Primary,
        Some(_) => ReadPlan::WaitThenPrimary,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use litefs_py_fuse::Primary;

    use super::*;
    use crate::litefs::positions::Pos;

    fn positions(pairs: &[(&str, u64)]) -> Positions {
        pairs
            .iter()
            .map(|(db, txid)| {
                (
                    db.to_string(),
                    Pos {
                        txid: *txid,
                        checksum: 7,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_mark_round_trips_through_a_cookie_header() {
        let m = Mark::new(4, &positions(&[("app.db", 12), ("a b;=.db", 3)]));
        let v = m.encode();
        assert!(
            v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "{v}"
        );
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_str(&format!("sid=x; {COOKIE_NAME}={v}; other=1")).unwrap(),
        );
        assert_eq!(Mark::from_headers(&h), Some(m));
        h.insert(COOKIE, HeaderValue::from_static("__litefs_py_pos=4.!!"));
        assert_eq!(Mark::from_headers(&h), None);
    }

    #[test]
    fn caught_up_means_every_database_at_or_past_its_txid() {
        let m = Mark::new(4, &positions(&[("app.db", 12), ("b.db", 3)]));
        assert!(m.reached_by(&positions(&[("app.db", 12), ("b.db", 9)])));
        assert!(!m.reached_by(&positions(&[("app.db", 11), ("b.db", 9)])));
        // A database the replica does not have yet: not caught up.
        assert!(!m.reached_by(&positions(&[("app.db", 12)])));
    }

    #[test]
    fn a_mark_of_another_term_goes_to_the_primary() {
        let m = Mark::new(4, &positions(&[("app.db", 12)]));
        let replica = ClusterView {
            node_id: 2,
            term: 4,
            leader_id: Some(1),
            primary: Primary::Other {
                hostname: "node-1".into(),
            },
            ..ClusterView::single_node("node-2")
        };
        assert_eq!(plan(None, &replica), ReadPlan::Local);
        assert_eq!(plan(Some(&m), &replica), ReadPlan::WaitThenPrimary);
        let later = ClusterView {
            term: 5,
            ..replica.clone()
        };
        assert_eq!(plan(Some(&m), &later), ReadPlan::Primary);
        let primary = ClusterView {
            term: 9,
            ..ClusterView::single_node("node-1")
        };
        assert_eq!(plan(Some(&m), &primary), ReadPlan::Local);
    }
}
